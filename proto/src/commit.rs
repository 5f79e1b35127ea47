//! The commit envelope: one command's events, written to the log as one message.
//!
//! A commit's bytes are `schema_version` (postcard varint) followed by the envelope of that
//! version. Each commit carries the SHA-256 of the previous commit's bytes on the same
//! organization (`prev_hash`), so an organization's history is a hash chain: changing, removing
//! or reordering any commit breaks every link after it.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::event::{Event, Timestamp};
use crate::ids::{CommandId, OrgId, PersonId};
use crate::wire::WireEvent;

/// The envelope version this code writes.
pub const SCHEMA_VERSION: u16 = 1;

/// A SHA-256 digest.
pub type Hash = [u8; 32];

/// The `prev_hash` of an organization's first commit.
pub const GENESIS_HASH: Hash = [0; 32];

/// The position of a commit in the log: its stream sequence. Positions grow, with gaps.
pub type Position = u64;

/// Who caused a commit.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Actor {
    /// A person acting through a calling service; authorized by the aggregate.
    Person(PersonId),
    /// A part of Quartermaster itself, such as the provisioner recording an outcome.
    Service(String),
}

impl std::fmt::Display for Actor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Actor::Person(p) => write!(f, "person:{p}"),
            Actor::Service(s) => write!(f, "service:{s}"),
        }
    }
}

/// One command's events with the facts an auditor needs about them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Commit {
    pub schema_version: u16,
    pub org: OrgId,
    /// A UUIDv7 naming this commit.
    pub event_id: u128,
    pub recorded_at: Timestamp,
    pub actor: Actor,
    pub command_id: CommandId,
    pub correlation_id: String,
    pub causation_id: Option<String>,
    pub prev_hash: Hash,
    pub events: Vec<Event>,
}

/// A commit as the log returned it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedCommit {
    pub position: Position,
    /// The SHA-256 of the commit's bytes: the next commit's `prev_hash`.
    pub hash: Hash,
    pub commit: Commit,
}

#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("unknown commit schema version {0}")]
    UnknownSchemaVersion(u16),
    #[error("malformed commit")]
    Malformed(#[source] postcard::Error),
}

#[derive(Serialize, Deserialize)]
struct EnvelopeV1 {
    org: OrgId,
    event_id: u128,
    recorded_at: Timestamp,
    actor: Actor,
    command_id: CommandId,
    correlation_id: String,
    causation_id: Option<String>,
    prev_hash: Hash,
    events: Vec<WireEvent>,
}

impl Commit {
    /// The bytes written to the log.
    pub fn encode(&self) -> Vec<u8> {
        let envelope = EnvelopeV1 {
            org: self.org.clone(),
            event_id: self.event_id,
            recorded_at: self.recorded_at,
            actor: self.actor.clone(),
            command_id: self.command_id.clone(),
            correlation_id: self.correlation_id.clone(),
            causation_id: self.causation_id.clone(),
            prev_hash: self.prev_hash,
            events: self.events.iter().map(WireEvent::from_event).collect(),
        };
        let out = postcard::to_stdvec(&SCHEMA_VERSION).expect("postcard encodes a u16");
        postcard::to_extend(&envelope, out).expect("postcard encodes every envelope")
    }

    /// Reads a commit of any known schema version, upcasting old event forms.
    pub fn decode(bytes: &[u8]) -> Result<Commit, DecodeError> {
        let (version, rest) =
            postcard::take_from_bytes::<u16>(bytes).map_err(DecodeError::Malformed)?;
        match version {
            1 => {
                let e: EnvelopeV1 = postcard::from_bytes(rest).map_err(DecodeError::Malformed)?;
                Ok(Commit {
                    schema_version: version,
                    org: e.org,
                    event_id: e.event_id,
                    recorded_at: e.recorded_at,
                    actor: e.actor,
                    command_id: e.command_id,
                    correlation_id: e.correlation_id,
                    causation_id: e.causation_id,
                    prev_hash: e.prev_hash,
                    events: e.events.into_iter().map(WireEvent::upcast).collect(),
                })
            }
            other => Err(DecodeError::UnknownSchemaVersion(other)),
        }
    }
}

/// The hash that links the next commit of the same organization to this one.
pub fn commit_hash(bytes: &[u8]) -> Hash {
    Sha256::digest(bytes).into()
}

/// Where an organization's hash chain breaks.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "hash chain of {org} breaks at position {position}: prev_hash does not match the commit before it"
)]
pub struct ChainBroken {
    pub org: OrgId,
    pub position: Position,
}

/// Checks that `commits`, one organization's history from its first commit in log order, form
/// an unbroken hash chain: each commit's `prev_hash` is the recorded hash of the one before.
/// Recorded hashes are computed from the bytes as read (see the log's readers), so an altered
/// commit breaks the link after it. Returns how many commits were checked.
pub fn verify_chain<'a>(
    commits: impl IntoIterator<Item = &'a RecordedCommit>,
) -> Result<usize, ChainBroken> {
    let mut expected = GENESIS_HASH;
    let mut count = 0;
    for recorded in commits {
        if recorded.commit.prev_hash != expected {
            return Err(ChainBroken {
                org: recorded.commit.org.clone(),
                position: recorded.position,
            });
        }
        expected = recorded.hash;
        count += 1;
    }
    Ok(count)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::*;

    fn sample() -> Commit {
        Commit {
            schema_version: SCHEMA_VERSION,
            org: OrgId::parse("acme").unwrap(),
            event_id: 7,
            recorded_at: Timestamp(1_700_000_000_000_000),
            actor: Actor::Person(PersonId::parse("alice").unwrap()),
            command_id: CommandId::parse("c1").unwrap(),
            correlation_id: "corr".into(),
            causation_id: None,
            prev_hash: GENESIS_HASH,
            events: vec![Event::OrganizationCreated(OrganizationCreated {
                org: OrgId::parse("acme").unwrap(),
                name: "Acme".into(),
            })],
        }
    }

    #[test]
    fn a_commit_reads_back_as_written() {
        let commit = sample();
        assert_eq!(Commit::decode(&commit.encode()).unwrap(), commit);
    }

    #[test]
    fn an_unknown_schema_version_is_reported_not_guessed() {
        let mut bytes = sample().encode();
        bytes[0] = 9;
        assert!(matches!(Commit::decode(&bytes), Err(DecodeError::UnknownSchemaVersion(9))));
    }

    #[test]
    fn a_truncated_commit_is_malformed() {
        let bytes = sample().encode();
        assert!(matches!(
            Commit::decode(&bytes[..bytes.len() - 3]),
            Err(DecodeError::Malformed(_))
        ));
    }
}
