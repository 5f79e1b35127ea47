//! The Quartermaster engine: the composition root.
//!
//! It owns the organization aggregate ([`org`]), the event log and its two backends ([`log`]),
//! command handling with its cache of decided aggregates ([`handler`]), credential sealing
//! ([`sealing`]), the read side that feeds the views from the log ([`read_side`]), the gRPC
//! facade ([`api`]) and its metrics ([`metrics`]), the provisioner that creates and removes
//! accounts in the apps ([`provisioner`]), a running instance wired together
//! ([`server`]), the verification of the log's hash chains ([`audit`]), the demo ([`demo`]) and
//! the benchmarks ([`bench`]). The `quartermaster` binary
//! in `main.rs` turns the command line into calls of these.

pub mod api;
pub mod audit;
pub mod bench;
pub mod demo;
pub mod handler;
pub mod log;
pub mod metrics;
pub mod org;
pub mod provisioner;
pub mod read_side;
pub mod sealing;
pub mod server;
