//! The projector: applies recorded commits to the views, in order, exactly once.
//!
//! Each batch is one redb write transaction that writes the view rows and the checkpoint
//! together, so after any crash the views and the checkpoint agree, and following the log again
//! from the checkpoint applies every commit once. Batches commit without an fsync and a durable
//! commit follows at least every [`DURABLE_EVERY`]: a crash may roll the views back a little,
//! never out of step with their checkpoint.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{Stream, StreamExt};
use qm_proto::{Position, RecordedCommit};
use redb::{Database, Durability, ReadableDatabase, ReadableTable};
use tokio::sync::watch;

use crate::apply::{ApplyError, Batch};
use crate::query::Views;
use crate::views::{META, POSITION_KEY};

/// The longest a projector goes without a durable commit while it applies commits.
pub const DURABLE_EVERY: Duration = Duration::from_millis(500);
/// The most commits one batch takes. Large batches matter: redb copies each page a transaction
/// touches once, so the cost per commit falls as more commits share a transaction (measured:
/// 49k commits/s at 1,000 per batch, 81k at 4,096, 113k at 16,384, 148k at 65,536).
pub const MAX_BATCH: usize = 32_768;
/// A follower that applied a batch this recently is in a stream of commits...
const STREAMING_WITHIN: Duration = Duration::from_millis(5);
/// ...and waits up to this long for a batch to fill to `LINGER_UNTIL` commits. It bounds the
/// delay a commit takes to become visible under load (the target is 5 ms at the median).
const LINGER: Duration = Duration::from_millis(2);
const LINGER_UNTIL: usize = 1024;
/// redb's page cache per views file.
const CACHE_BYTES: usize = 64 * 1024 * 1024;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProjectorState {
    /// Following the log.
    Running,
    /// Stopped on a commit it cannot apply; a person must look.
    Failed { error: ApplyError },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProjectorStatus {
    pub position: Position,
    pub state: ProjectorState,
    pub commits_applied: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("views file {path}: {source}")]
    Storage {
        path: PathBuf,
        #[source]
        source: redb::Error,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum ProjectError {
    #[error(transparent)]
    Apply(#[from] ApplyError),
    #[error("views storage failed: {0}")]
    Storage(String),
}

#[derive(Debug, thiserror::Error)]
pub enum FollowError<E> {
    /// The stream of commits failed; following it again from the checkpoint is safe.
    #[error("commit stream failed: {0}")]
    Source(E),
    #[error(transparent)]
    Project(#[from] ProjectError),
}

/// The views have not applied a position in time.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("views reached position {current}, not {wanted}, within {waited:?}")]
pub struct NotYetApplied {
    pub wanted: Position,
    pub current: Position,
    pub waited: Duration,
}

#[derive(Debug)]
pub struct Projector {
    db: Database,
    path: PathBuf,
    applied: watch::Sender<Position>,
    status: Mutex<ProjectorStatus>,
    last_durable: Mutex<Instant>,
}

impl Projector {
    /// Opens the views in `path`, creating the file and its tables if needed.
    pub fn open(path: impl AsRef<Path>) -> Result<Projector, OpenError> {
        let path = path.as_ref().to_path_buf();
        let storage = |source: redb::Error| OpenError::Storage { path: path.clone(), source };
        let db = Database::builder()
            .set_cache_size(CACHE_BYTES)
            .create(&path)
            .map_err(|e| storage(e.into()))?;
        let write = db.begin_write().map_err(|e| storage(e.into()))?;
        {
            let _tables = Batch::open(&write).map_err(|e| storage(e.into()))?;
            write.open_table(META).map_err(|e| storage(e.into()))?;
        }
        write.commit().map_err(|e| storage(e.into()))?;
        let position = {
            let read = db.begin_read().map_err(|e| storage(e.into()))?;
            let meta = read.open_table(META).map_err(|e| storage(e.into()))?;
            meta.get(POSITION_KEY).map_err(|e| storage(e.into()))?.map(|v| v.value()).unwrap_or(0)
        };
        Ok(Projector {
            db,
            path,
            applied: watch::Sender::new(position),
            status: Mutex::new(ProjectorStatus {
                position,
                state: ProjectorState::Running,
                commits_applied: 0,
            }),
            last_durable: Mutex::new(Instant::now()),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The position of the last commit applied.
    pub fn position(&self) -> Position {
        *self.applied.borrow()
    }

    pub fn status(&self) -> ProjectorStatus {
        self.status.lock().expect("status lock is never poisoned").clone()
    }

    /// A consistent read of the views as of now.
    pub fn views(&self) -> Result<Views, ProjectError> {
        let txn = self.db.begin_read().map_err(|e| ProjectError::Storage(e.to_string()))?;
        Ok(Views::new(txn))
    }

    /// Applies `batch` in one write transaction with the checkpoint. Commits at or before the
    /// checkpoint are skipped, so a batch seen twice is applied once.
    pub fn apply(&self, batch: &[RecordedCommit]) -> Result<Position, ProjectError> {
        let _span = tracing::debug_span!("projection_batch", commits = batch.len()).entered();
        if let ProjectorState::Failed { error } = &self.status().state {
            return Err(error.clone().into());
        }
        let storage = |e: &dyn std::fmt::Display| ProjectError::Storage(e.to_string());
        let mut write = self.db.begin_write().map_err(|e| storage(&e))?;
        let durable =
            self.last_durable.lock().expect("lock is never poisoned").elapsed() >= DURABLE_EVERY;
        if !durable {
            write.set_durability(Durability::None).map_err(|e| storage(&e))?;
        }
        let checkpoint = self.position();
        let mut position = checkpoint;
        let mut applied = 0;
        {
            let mut tables = Batch::open(&write).map_err(|e| storage(&e))?;
            for recorded in batch.iter().filter(|c| c.position > checkpoint) {
                if let Err(error) = tables.apply(recorded) {
                    drop(tables);
                    let _ = write.abort();
                    tracing::error!(%error, "projection stopped on a commit it cannot apply");
                    self.status.lock().expect("status lock is never poisoned").state =
                        ProjectorState::Failed { error: error.clone() };
                    return Err(error.into());
                }
                position = recorded.position;
                applied += 1;
            }
            tables.finish().map_err(|e| storage(&e))?;
            let mut meta = write.open_table(META).map_err(|e| storage(&e))?;
            meta.insert(POSITION_KEY, position).map_err(|e| storage(&e))?;
        }
        write.commit().map_err(|e| storage(&e))?;
        if durable {
            *self.last_durable.lock().expect("lock is never poisoned") = Instant::now();
        }
        {
            let mut status = self.status.lock().expect("status lock is never poisoned");
            status.position = position;
            status.commits_applied += applied;
        }
        self.applied.send_if_modified(|p| std::mem::replace(p, position) != position);
        Ok(position)
    }

    /// Makes everything applied so far durable (used before a swap or a clean stop).
    pub fn flush(&self) -> Result<(), ProjectError> {
        let write = self.db.begin_write().map_err(|e| ProjectError::Storage(e.to_string()))?;
        write.commit().map_err(|e| ProjectError::Storage(e.to_string()))?;
        *self.last_durable.lock().expect("lock is never poisoned") = Instant::now();
        Ok(())
    }

    /// Waits until the views have applied `position`, for at most `timeout`.
    pub async fn wait_for(
        &self,
        position: Position,
        timeout: Duration,
    ) -> Result<Position, NotYetApplied> {
        let mut applied = self.applied.subscribe();
        let reached = tokio::time::timeout(timeout, applied.wait_for(|p| *p >= position)).await;
        match reached {
            Ok(Ok(p)) => Ok(*p),
            _ => Err(NotYetApplied { wanted: position, current: self.position(), waited: timeout }),
        }
    }

    /// A watch of the applied position.
    pub fn applied(&self) -> watch::Receiver<Position> {
        self.applied.subscribe()
    }

    /// Applies `commits`, which must start after [`Projector::position`], until the stream
    /// ends or fails. A reader task keeps pulling commits while a batch is applied; each batch
    /// takes whatever has arrived, up to [`MAX_BATCH`], so catching up gives large batches and
    /// a quiet log applies each commit as it lands.
    pub async fn follow<S, E>(self: &Arc<Self>, commits: S) -> Result<(), FollowError<E>>
    where
        S: Stream<Item = Result<RecordedCommit, E>> + Send + 'static,
        E: Send + 'static,
    {
        let (sender, mut receiver) = tokio::sync::mpsc::channel(MAX_BATCH);
        let reader = tokio::spawn(async move {
            let mut commits = std::pin::pin!(commits);
            while let Some(item) = commits.next().await {
                let failed = item.is_err();
                if sender.send(item).await.is_err() || failed {
                    break;
                }
            }
        });
        // Stop the reader however this function returns.
        let _reader = AbortOnDrop(reader);

        let mut items = Vec::with_capacity(MAX_BATCH);
        let mut last_applied: Option<Instant> = None;
        while receiver.recv_many(&mut items, MAX_BATCH).await > 0 {
            // Under a steady stream of commits, wait a moment for more before applying: one
            // write transaction per commit would cost more than the commits themselves. An
            // idle projector applies at once, so a lone command is visible without delay.
            let streaming = last_applied.is_some_and(|at| at.elapsed() < STREAMING_WITHIN);
            if streaming {
                let deadline = tokio::time::Instant::now() + LINGER;
                while items.len() < LINGER_UNTIL && !items.last().is_some_and(|i| i.is_err()) {
                    let room = MAX_BATCH - items.len();
                    let more = receiver.recv_many(&mut items, room);
                    match tokio::time::timeout_at(deadline, more).await {
                        Ok(n) if n > 0 => {}
                        _ => break,
                    }
                }
            }
            let mut batch = Vec::with_capacity(items.len());
            let mut failed = None;
            for item in items.drain(..) {
                match item {
                    Ok(commit) => batch.push(commit),
                    Err(e) => {
                        failed = Some(e);
                        break;
                    }
                }
            }
            if !batch.is_empty() {
                let projector = self.clone();
                tokio::task::spawn_blocking(move || projector.apply(&batch))
                    .await
                    .expect("applying a batch does not panic")?;
                last_applied = Some(Instant::now());
            }
            if let Some(e) = failed {
                return Err(FollowError::Source(e));
            }
        }
        Ok(())
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
