//! The event log: one contract, two backends.
//!
//! Each organization's commits go to one subject; an append states the position of the last
//! commit its decision saw (`expected`, 0 for none), and fails with [`AppendError::Conflict`] if
//! another commit got there first. An append carries its command id, and the same command id
//! appended again within the duplicate window is not written twice: the log answers with the
//! first position and `duplicate: true`.
//!
//! [`jetstream::JetStreamLog`] is the production backend; [`embedded::EmbeddedLog`] keeps the
//! same contract in a local redb file. Both pass the conformance suite in
//! `replay-tests/tests/log_conformance.rs`.

pub mod embedded;
pub mod jetstream;

use futures::future::BoxFuture;
use futures::stream::BoxStream;
use qm_proto::{CommandId, Commit, OrgId, Position, RecordedCommit, commit_hash};

/// What an accepted append returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    pub position: Position,
    /// The command id was already in the log: nothing was written, and `position` is the
    /// position of the earlier commit with that id.
    pub duplicate: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum AppendError {
    /// Another commit of the organization landed after `expected`: reload and decide again.
    #[error("{org} moved past position {expected}")]
    Conflict { org: OrgId, expected: Position },
    /// The append may or may not have been written; retrying with the same command id is safe.
    #[error("append to {org} has an unknown outcome: {reason}")]
    Unknown { org: OrgId, reason: String },
    #[error("event log unavailable: {0}")]
    Unavailable(String),
}

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("event log unavailable: {0}")]
    Unavailable(String),
    #[error("commit at position {position} cannot be read")]
    Decode {
        position: Position,
        #[source]
        source: qm_proto::DecodeError,
    },
}

/// A stored aggregate snapshot.
pub type SnapshotBytes = Vec<u8>;

/// The contract both backends keep.
pub trait EventLog: Send + Sync + std::fmt::Debug + 'static {
    /// Appends one commit to `org` if the organization's last commit is at `expected`.
    fn append<'a>(
        &'a self,
        org: &'a OrgId,
        expected: Position,
        command_id: &'a CommandId,
        bytes: Vec<u8>,
    ) -> BoxFuture<'a, Result<Appended, AppendError>>;

    /// The commits of `org` after position `after`, in order.
    fn read_org<'a>(
        &'a self,
        org: &'a OrgId,
        after: Position,
    ) -> BoxFuture<'a, Result<Vec<RecordedCommit>, ReadError>>;

    /// The commit at `position`, from the authoritative copy.
    fn read_at(
        &self,
        position: Position,
    ) -> BoxFuture<'_, Result<Option<RecordedCommit>, ReadError>>;

    /// The position of the last commit in the whole log, 0 when empty.
    fn head(&self) -> BoxFuture<'_, Result<Position, ReadError>>;

    /// Every commit after `after`, in log order, then new ones as they land. The stream ends
    /// only on an error.
    fn subscribe(&self, after: Position) -> BoxStream<'static, Result<RecordedCommit, ReadError>>;

    /// The newest snapshot of `org`'s aggregate, if any.
    fn load_snapshot<'a>(
        &'a self,
        org: &'a OrgId,
    ) -> BoxFuture<'a, Result<Option<SnapshotBytes>, ReadError>>;

    /// Replaces `org`'s snapshot. Snapshots are a cache: losing one costs only a longer load.
    fn save_snapshot<'a>(
        &'a self,
        org: &'a OrgId,
        bytes: SnapshotBytes,
    ) -> BoxFuture<'a, Result<(), ReadError>>;
}

pub(crate) fn unavailable(e: impl std::fmt::Display) -> ReadError {
    ReadError::Unavailable(e.to_string())
}

/// Decodes a commit read back from the log.
pub(crate) fn recorded(position: Position, bytes: &[u8]) -> Result<RecordedCommit, ReadError> {
    let commit = Commit::decode(bytes).map_err(|source| ReadError::Decode { position, source })?;
    Ok(RecordedCommit { position, hash: commit_hash(bytes), commit })
}

/// An organization's key in a JetStream KV bucket. KV keys allow fewer characters than ids
/// (no '@'); hex keeps every id distinct.
pub fn kv_key(org: &OrgId) -> String {
    hex::encode(org.as_str())
}

/// The subject of an organization's commits in a stream whose subjects are `<prefix>.>`.
pub fn org_subject(prefix: &str, org: &OrgId) -> String {
    format!("{prefix}.org.{org}")
}
