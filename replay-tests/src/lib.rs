//! Support for Quartermaster's whole-history tests: real servers and shared fixtures.
//!
//! This crate ships nothing; its tests live in `tests/`. [`nats`] starts real nats-server
//! processes; [`scim`] a real SCIM 2.0 server and a fault-injecting proxy in front of it;
//! [`serve`] `quartermaster serve` as a child process, and [`grpc`] organizations set up through
//! its API;
//! [`fixtures`] builds commits and histories the tests share.

pub mod fixtures;
pub mod grpc;
pub mod histories;
pub mod nats;
pub mod scim;
pub mod serve;
