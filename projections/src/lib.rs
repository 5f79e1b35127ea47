//! Quartermaster's read models, in redb.
//!
//! The [`Projector`] applies recorded commits to the views in batches, with its checkpoint in
//! the same write transaction; [`Views`] answers queries from one consistent read. Views:
//! organizations with members, roles and teams; integrated apps with seats used (never
//! credentials); grants by app ("who has access") and by person; each person's launchpad across
//! organizations; and access intervals for point-in-time audit.
//!
//! This crate never writes events and knows nothing of NATS: it takes a plain stream of
//! recorded commits (see `qm-engine` for where they come from).

mod apply;
mod projector;
mod query;
mod views;

pub use apply::ApplyError;
pub use projector::{
    CACHE_BYTES, DURABLE_EVERY, FollowError, MAX_BATCH, NotYetApplied, OpenError, ProjectError,
    Projector, ProjectorState, ProjectorStatus,
};
pub use query::{Page, PageRequest, QueryError, Views};
pub use views::{
    AccessInterval, AppStatusView, AppView, GrantStatus, GrantView, IntervalEnd, LaunchpadEntry,
    MemberView, OrganizationView, TeamView,
};
