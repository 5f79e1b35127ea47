//! Command handling: load the aggregate, decide, append, and answer with the position.
//!
//! Decided aggregates stay in memory, one slot per organization, with the position they were
//! decided at. A command locks its organization's slot (commands of one organization are
//! decided one at a time in this process; other organizations proceed in parallel), decides
//! against the cached state, and appends with that position as the expected one. If another
//! process got there first, the append conflicts, and only the tail after the cached position
//! is read before deciding again, a bounded number of times. Cold starts read the newest
//! snapshot and the tail after it, so no command costs O(history).
//!
//! Idempotency: a command id seen among the organization's recent commands, or reported as a
//! duplicate by the log, is answered with the first commit's position and events; nothing is
//! written twice, also when the first answer was lost.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use qm_proto::*;
use serde::{Deserialize, Serialize};
use tracing::Instrument;

use crate::log::{AppendError, EventLog, ReadError};
use crate::org::{Command, DecideError, OrgState, decide};
use crate::sealing::{SealError, Sealer, Secret};

/// Tuning of the command handler.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Decisions per command before giving up on an organization that keeps changing.
    pub max_attempts: usize,
    /// A snapshot is written every this many commits of an organization.
    pub snapshot_every: u64,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig { max_attempts: 32, snapshot_every: 64 }
    }
}

/// A command with the facts its commit records about it.
#[derive(Debug, Clone)]
pub struct Request {
    pub org: OrgId,
    pub actor: Actor,
    /// The idempotency key; the engine picks one when the caller does not.
    pub command_id: Option<CommandId>,
    pub correlation_id: Option<String>,
    pub causation_id: Option<String>,
    pub command: Command,
}

impl Request {
    pub fn new(org: OrgId, actor: Actor, command: Command) -> Request {
        Request { org, actor, command_id: None, correlation_id: None, causation_id: None, command }
    }

    pub fn with_command_id(mut self, command_id: CommandId) -> Request {
        self.command_id = Some(command_id);
        self
    }
}

/// The answer to an accepted command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Executed {
    pub command_id: CommandId,
    /// The position of the commit; for a command that changed nothing, the organization's
    /// current position.
    pub position: Position,
    pub events: Vec<Event>,
    /// This command id was already in the log: this is the first answer, given again.
    pub replayed: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum ExecuteError {
    #[error(transparent)]
    Rejected(#[from] DecideError),
    #[error("{org} kept changing under concurrent commands; gave up after {attempts} decisions")]
    Exhausted { org: OrgId, attempts: usize },
    #[error("command id {command_id} was already used for another command")]
    CommandIdReused { command_id: CommandId },
    #[error(transparent)]
    Append(#[from] AppendError),
    #[error(transparent)]
    Read(#[from] ReadError),
    #[error(transparent)]
    Chain(#[from] ChainBroken),
    #[error(transparent)]
    Seal(#[from] SealError),
}

#[derive(Debug, Default)]
struct Slot {
    state: OrgState,
    loaded: bool,
    snapshot_at: u64,
}

/// What a snapshot holds. `format` changes whenever `OrgState`'s shape does; a snapshot of
/// another format is ignored and the organization is loaded from its history instead.
#[derive(Serialize, Deserialize)]
struct Snapshot {
    format: u16,
    org: OrgId,
    state: OrgState,
}

const SNAPSHOT_FORMAT: u16 = 2;

/// The write side: decides commands and appends their commits.
#[derive(Debug)]
pub struct Engine {
    log: Arc<dyn EventLog>,
    sealer: Arc<Sealer>,
    slots: Mutex<HashMap<OrgId, Arc<tokio::sync::Mutex<Slot>>>>,
    config: EngineConfig,
}

impl Engine {
    pub fn new(log: Arc<dyn EventLog>, sealer: Arc<Sealer>, config: EngineConfig) -> Engine {
        Engine { log, sealer, slots: Mutex::new(HashMap::new()), config }
    }

    pub fn log(&self) -> &Arc<dyn EventLog> {
        &self.log
    }

    /// Seals plaintext credentials for a command that carries them.
    pub async fn seal_credentials(
        &self,
        org: &OrgId,
        app: &AppId,
        secret: &Secret,
    ) -> Result<SealedCredentials, ExecuteError> {
        Ok(self.sealer.seal(org, app, secret).await?)
    }

    /// Opens an app's sealed credentials, for the provisioner's calls to the app.
    pub async fn open_credentials(
        &self,
        org: &OrgId,
        app: &AppId,
        sealed: &SealedCredentials,
    ) -> Result<Secret, SealError> {
        self.sealer.open(org, app, sealed).await
    }

    /// Decides and appends one command.
    pub async fn execute(&self, request: Request) -> Result<Executed, ExecuteError> {
        let command_id = request.command_id.clone().unwrap_or_else(new_command_id);
        let span = tracing::info_span!(
            "command",
            org = %request.org,
            command_id = %command_id,
            command = request.command.name(),
        );
        let started = std::time::Instant::now();
        let result = self.execute_in(request, command_id).instrument(span).await;
        let outcome = match &result {
            Ok(_) => crate::metrics::Outcome::Accepted,
            Err(ExecuteError::Rejected(_) | ExecuteError::CommandIdReused { .. }) => {
                crate::metrics::Outcome::Rejected
            }
            Err(_) => crate::metrics::Outcome::Failed,
        };
        crate::metrics::record_command(outcome, started.elapsed());
        result
    }

    async fn execute_in(
        &self,
        request: Request,
        command_id: CommandId,
    ) -> Result<Executed, ExecuteError> {
        let org = &request.org;
        let slot = self.slot(org);
        let mut slot = slot.lock().await;
        self.ensure_loaded(org, &mut slot).await?;

        // Whether the cached state is known to include the log's tail. An accepted command
        // needs no such check (the append's concurrency check does it), but a rejection or a
        // no-op decided on a cache that another instance's commits have outrun would be wrong.
        let mut fresh = false;
        for _ in 0..self.config.max_attempts {
            if let Some(position) = slot.state.recent_command(&command_id) {
                return self.replay(org, &command_id, position).await;
            }
            let decided = decide(org, &slot.state, &request.actor, &request.command);
            if !fresh && decided.as_ref().map_or(true, Vec::is_empty) {
                fresh = true;
                let before = slot.state.version;
                catch_up(self.log.as_ref(), org, &mut slot.state).await?;
                if slot.state.version != before {
                    continue;
                }
            }
            let events = decided?;
            if events.is_empty() {
                return Ok(Executed {
                    command_id,
                    position: slot.state.version,
                    events,
                    replayed: false,
                });
            }
            let commit = Commit {
                schema_version: SCHEMA_VERSION,
                org: org.clone(),
                event_id: uuid::Uuid::now_v7().as_u128(),
                recorded_at: Timestamp::now(),
                actor: request.actor.clone(),
                command_id: command_id.clone(),
                correlation_id: request
                    .correlation_id
                    .clone()
                    .unwrap_or_else(|| command_id.to_string()),
                causation_id: request.causation_id.clone(),
                prev_hash: slot.state.last_hash,
                events,
            };
            let bytes = commit.encode();
            let hash = commit_hash(&bytes);
            match self.log.append(org, slot.state.version, &command_id, bytes).await {
                Ok(appended) if !appended.duplicate => {
                    let recorded = RecordedCommit { position: appended.position, hash, commit };
                    slot.state.apply(&recorded);
                    self.maybe_snapshot(org, &mut slot);
                    tracing::debug!(position = appended.position, "command appended");
                    return Ok(Executed {
                        command_id,
                        position: appended.position,
                        events: recorded.commit.events,
                        replayed: false,
                    });
                }
                Ok(appended) => {
                    catch_up(self.log.as_ref(), org, &mut slot.state).await?;
                    return self.replay(org, &command_id, appended.position).await;
                }
                Err(AppendError::Conflict { .. }) => {
                    crate::metrics::record_conflict();
                    tracing::debug!(version = slot.state.version, "conflict, reading the tail");
                    catch_up(self.log.as_ref(), org, &mut slot.state).await?;
                    fresh = true;
                }
                Err(e) => return Err(e.into()),
            }
        }
        tracing::warn!(attempts = self.config.max_attempts, "gave up on a busy organization");
        Err(ExecuteError::Exhausted { org: org.clone(), attempts: self.config.max_attempts })
    }

    /// The state this engine decides `org`'s next command against, brought up to date.
    pub async fn org_state(&self, org: &OrgId) -> Result<OrgState, ExecuteError> {
        let slot = self.slot(org);
        let mut slot = slot.lock().await;
        if slot.loaded {
            catch_up(self.log.as_ref(), org, &mut slot.state).await?;
        } else {
            self.ensure_loaded(org, &mut slot).await?;
        }
        Ok(slot.state.clone())
    }

    /// Loads a slot on first use: snapshot and tail, or the whole history.
    async fn ensure_loaded(&self, org: &OrgId, slot: &mut Slot) -> Result<(), ExecuteError> {
        if !slot.loaded {
            slot.state = self.load(org).await?;
            slot.snapshot_at = slot.state.commits;
            slot.loaded = true;
        }
        Ok(())
    }

    fn slot(&self, org: &OrgId) -> Arc<tokio::sync::Mutex<Slot>> {
        // FIXME: slots are never evicted, so memory grows with the number of organizations this
        // instance has served since it started.
        let mut slots = self.slots.lock().expect("slot map lock is never poisoned");
        slots.entry(org.clone()).or_default().clone()
    }

    /// Loads `org` from its newest snapshot and the tail after it; from its whole history when
    /// there is no usable snapshot.
    async fn load(&self, org: &OrgId) -> Result<OrgState, ExecuteError> {
        if let Some(bytes) = self.log.load_snapshot(org).await? {
            match postcard::from_bytes::<Snapshot>(&bytes) {
                Ok(snapshot) if snapshot.format == SNAPSHOT_FORMAT && &snapshot.org == org => {
                    let mut state = snapshot.state;
                    match catch_up(self.log.as_ref(), org, &mut state).await {
                        Ok(()) => return Ok(state),
                        Err(ExecuteError::Chain(e)) => {
                            tracing::warn!(%org, error = %e, "snapshot does not fit the log, loading the history");
                        }
                        Err(e) => return Err(e),
                    }
                }
                _ => tracing::debug!(%org, "ignoring a snapshot of another format"),
            }
        }
        let mut state = OrgState::default();
        catch_up(self.log.as_ref(), org, &mut state).await?;
        Ok(state)
    }

    fn maybe_snapshot(&self, org: &OrgId, slot: &mut Slot) {
        if slot.state.commits < slot.snapshot_at + self.config.snapshot_every {
            return;
        }
        slot.snapshot_at = slot.state.commits;
        let snapshot =
            Snapshot { format: SNAPSHOT_FORMAT, org: org.clone(), state: slot.state.clone() };
        let (log, org) = (self.log.clone(), org.clone());
        tokio::spawn(async move {
            let bytes = postcard::to_stdvec(&snapshot).expect("postcard encodes every state");
            if let Err(e) = log.save_snapshot(&org, bytes).await {
                tracing::warn!(%org, error = %e, "snapshot not saved; the next cold load reads a longer tail");
            }
        });
    }

    /// The first answer to a command id already in the log.
    async fn replay(
        &self,
        org: &OrgId,
        command_id: &CommandId,
        position: Position,
    ) -> Result<Executed, ExecuteError> {
        let reused = || ExecuteError::CommandIdReused { command_id: command_id.clone() };
        let recorded = self.log.read_at(position).await?.ok_or_else(reused)?;
        if &recorded.commit.org != org || &recorded.commit.command_id != command_id {
            return Err(reused());
        }
        Ok(Executed {
            command_id: command_id.clone(),
            position,
            events: recorded.commit.events,
            replayed: true,
        })
    }
}

/// Reads `org`'s commits after `state.version` into `state`, checking that each links to the
/// one before it.
pub async fn catch_up(
    log: &dyn EventLog,
    org: &OrgId,
    state: &mut OrgState,
) -> Result<(), ExecuteError> {
    for recorded in log.read_org(org, state.version).await? {
        if recorded.commit.prev_hash != state.last_hash || &recorded.commit.org != org {
            return Err(ChainBroken { org: org.clone(), position: recorded.position }.into());
        }
        state.apply(&recorded);
    }
    Ok(())
}

/// A fresh command id: a UUIDv7, so ids sort by creation time.
pub fn new_command_id() -> CommandId {
    CommandId::parse(uuid::Uuid::now_v7().to_string()).expect("a UUID is a valid id")
}
