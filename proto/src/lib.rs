//! The contracts of Quartermaster: the event schema, and (in `quartermaster/v1`) the gRPC API.
//!
//! Everything here is data and its encoding; nothing does I/O. The event log stores
//! [`Commit`]s: one command's events, encoded with postcard behind a schema version, chained
//! per organization by hash. [`event`] holds the current shape of each event, [`wire`] the
//! frozen shapes as written and the upcasters from old ones. The golden fixtures that pin the
//! wire forms live in `replay-tests/fixtures/events/`.

pub mod api;
pub mod commit;
pub mod event;
pub mod ids;
pub mod wire;

pub use commit::{
    Actor, ChainBroken, Commit, DecodeError, GENESIS_HASH, Hash, Position, RecordedCommit,
    SCHEMA_VERSION, commit_hash, verify_chain,
};
pub use event::*;
pub use ids::{AppId, CommandId, GrantId, InvalidId, MAX_ID_LEN, OrgId, PersonId, TeamId};
