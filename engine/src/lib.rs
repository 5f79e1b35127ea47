//! The Quartermaster engine: the composition root.
//!
//! It owns the organization aggregate ([`org`]), the event log and its two backends ([`log`]),
//! command handling with its cache of decided aggregates ([`handler`]), and credential sealing
//! ([`sealing`]). The `quartermaster` binary in `main.rs` wires them to the outside world.

pub mod api;
pub mod bench;
pub mod demo;
pub mod handler;
pub mod log;
pub mod metrics;
pub mod org;
pub mod read_side;
pub mod sealing;
pub mod server;
