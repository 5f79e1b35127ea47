//! Connectors: the app catalog, and the code that creates and removes accounts in apps.
//!
//! This crate knows how to talk to apps; it never decides domain rules (who may have an
//! account is the engine's aggregate's call). Start with [`catalog`].

pub mod catalog;
