//! The organization aggregate: the consistency boundary of the write side.
//!
//! Every rule of DESIGN.md is checked here, against one organization's [`OrgState`], by the
//! pure [`decide`]; [`OrgState::apply`] folds recorded commits back in. Nothing in this module
//! does I/O or reads the clock: the handler supplies ids, and the log supplies positions.

mod command;
mod decide;
mod state;

#[cfg(test)]
mod decide_tests;

pub use command::Command;
pub use decide::{DecideError, ErrorKind, MAX_REASON, MAX_SEATS, MAX_TEXT, decide};
pub use state::{
    AppStatus, Grant, GrantState, IntegratedApp, Member, OrgState, RECENT_COMMANDS, Team,
};
