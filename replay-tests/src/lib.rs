//! Support for Quartermaster's whole-history tests: real servers and shared fixtures.
//!
//! This crate ships nothing; its tests live in `tests/`. [`nats`] starts real nats-server
//! processes; [`fixtures`] builds commits and histories the tests share.

pub mod fixtures;
pub mod histories;
pub mod nats;
