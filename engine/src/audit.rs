//! Verifying the event log for an auditor: each organization's commits form one hash chain
//! (every commit names the SHA-256 of the organization's commit before it), so a commit removed,
//! altered or slipped in anywhere but at an organization's very end breaks it. The heads it
//! returns are for an auditor to keep and compare with a later run's, which covers the end.

use std::collections::BTreeMap;

use futures::StreamExt;
use qm_proto::{GENESIS_HASH, Hash, OrgId, Position};

use crate::log::{EventLog, ReadError};

/// The end of one organization's chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainHead {
    pub commits: u64,
    pub position: Position,
    pub hash: Hash,
}

/// A log whose every chain is intact, up to `head`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub commits: u64,
    pub head: Position,
    pub organizations: BTreeMap<OrgId, ChainHead>,
}

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error(
        "the chain of organization {org} is broken at position {position}: the commit names \
         {named} as the hash of the one before it, but the organization's commit before it \
         ({before}) has {actual}"
    )]
    Broken { org: OrgId, position: Position, named: String, before: String, actual: String },
    #[error("the log ended at position {reached}, short of its head {head}")]
    Ended { reached: Position, head: Position },
    #[error(transparent)]
    Log(#[from] ReadError),
}

/// Reads the whole log in order, up to its head when the verification began, and checks every
/// link: the rule of [`qm_proto::verify_chain`], applied in one pass to every organization's
/// commits as they interleave in the log. `progress` hears each position reached, with the
/// head.
pub async fn verify(
    log: &dyn EventLog,
    mut progress: impl FnMut(Position, Position),
) -> Result<Verified, AuditError> {
    let head = log.head().await?;
    let mut verified = Verified { commits: 0, head, organizations: BTreeMap::new() };
    let mut commits = log.subscribe(0);
    let mut reached = 0;
    while reached < head {
        let Some(recorded) = commits.next().await else {
            return Err(AuditError::Ended { reached, head });
        };
        let recorded = recorded?;
        let commit = &recorded.commit;
        let before = verified.organizations.get(&commit.org);
        let expected = before.map_or(GENESIS_HASH, |b| b.hash);
        if commit.prev_hash != expected {
            return Err(AuditError::Broken {
                org: commit.org.clone(),
                position: recorded.position,
                named: hex::encode(commit.prev_hash),
                before: before.map_or("none: it should be the first".into(), |b| {
                    format!("position {}", b.position)
                }),
                actual: hex::encode(expected),
            });
        }
        let chain = verified.organizations.entry(commit.org.clone()).or_insert(ChainHead {
            commits: 0,
            position: 0,
            hash: GENESIS_HASH,
        });
        chain.commits += 1;
        chain.position = recorded.position;
        chain.hash = recorded.hash;
        verified.commits += 1;
        reached = recorded.position;
        progress(reached, head);
    }
    Ok(verified)
}
