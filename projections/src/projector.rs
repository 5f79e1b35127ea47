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

use futures::{FutureExt, Stream, StreamExt};
use qm_proto::{Position, RecordedCommit};
use redb::{Database, Durability, ReadableDatabase, ReadableTable, WriteTransaction};
use tokio::sync::{mpsc, watch};

use crate::apply::{ApplyError, Batch};
use crate::query::Views;
use crate::views::{META, POSITION_KEY};

/// The longest a projector goes without a durable commit while it applies commits.
pub const DURABLE_EVERY: Duration = Duration::from_millis(500);
/// The most commits one write transaction takes. Large transactions matter: redb copies each
/// page a transaction touches once, so the cost per commit falls as more commits share a
/// transaction (measured: 49k commits/s at 1,000 per batch, 81k at 4,096, 113k at 16,384,
/// 148k at 65,536). The rows a transaction touches stay in memory until it commits.
pub const MAX_BATCH: usize = 65_536;
/// How many decoded commits the reader keeps ahead of the applier. It bounds the memory of
/// the pipeline, not the size of a transaction, which takes many of these in turn.
pub const READ_AHEAD: usize = 4096;
/// The most commits the reader hands over at once.
const CHUNK: usize = 256;
/// A follower that applied more than one commit in a transaction that ended this recently is
/// in a stream of commits...
const STREAMING_WITHIN: Duration = Duration::from_millis(5);
/// ...and waits up to this long for a batch to fill to `LINGER_UNTIL` commits. It bounds the
/// delay a commit takes to become visible under load (the target is 5 ms at the median).
const LINGER: Duration = Duration::from_millis(2);
const LINGER_UNTIL: usize = 1024;
/// While catching up, a write transaction stays open for more commits until it holds
/// [`MAX_BATCH`] of them or has been open this long, so that progress shows.
const CATCH_UP_COMMIT_EVERY: Duration = Duration::from_millis(500);
/// A catching-up follower that receives nothing for this long is caught up, whatever the head
/// it was given said.
const CATCH_UP_GAP: Duration = Duration::from_millis(50);
/// redb's page cache per views file, its write buffer included. A rebuild holds two files
/// open. With catch-up transactions of [`MAX_BATCH`] commits a larger cache buys little
/// (measured at 1M events: 112k commits/s at 32 MiB, 118k at 48 MiB, for 55 MB more).
pub const CACHE_BYTES: usize = 32 * 1024 * 1024;

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
        let (write, mut progress) = self.begin()?;
        {
            let mut tables = Batch::open(&write).map_err(storage)?;
            for recorded in batch {
                self.apply_one(&mut tables, &mut progress, recorded)?;
            }
            tables.finish().map_err(storage)?;
        }
        self.commit(write, progress)
    }

    /// Opens the write transaction of a batch.
    fn begin(&self) -> Result<(WriteTransaction, Progress), ProjectError> {
        if let ProjectorState::Failed { error } = &self.status().state {
            return Err(error.clone().into());
        }
        let mut write = self.db.begin_write().map_err(storage)?;
        let durable =
            self.last_durable.lock().expect("lock is never poisoned").elapsed() >= DURABLE_EVERY;
        if !durable {
            write.set_durability(Durability::None).map_err(storage)?;
        }
        let checkpoint = self.position();
        Ok((write, Progress { checkpoint, position: checkpoint, applied: 0, durable }))
    }

    /// Folds one commit into the batch, unless the checkpoint already has it. A commit that
    /// cannot be applied stops the projector; the caller drops the batch's transaction, so
    /// nothing of the batch is written.
    fn apply_one(
        &self,
        tables: &mut Batch<'_>,
        progress: &mut Progress,
        recorded: &RecordedCommit,
    ) -> Result<(), ProjectError> {
        if recorded.position <= progress.checkpoint {
            return Ok(());
        }
        if let Err(error) = tables.apply(recorded) {
            tracing::error!(%error, "projection stopped on a commit it cannot apply");
            self.status.lock().expect("status lock is never poisoned").state =
                ProjectorState::Failed { error: error.clone() };
            return Err(error.into());
        }
        progress.position = recorded.position;
        progress.applied += 1;
        Ok(())
    }

    /// Writes the checkpoint, commits, and publishes the new position.
    fn commit(
        &self,
        write: WriteTransaction,
        progress: Progress,
    ) -> Result<Position, ProjectError> {
        let _span = tracing::debug_span!("projection_batch", commits = progress.applied).entered();
        let position = progress.position;
        {
            let mut meta = write.open_table(META).map_err(storage)?;
            meta.insert(POSITION_KEY, position).map_err(storage)?;
        }
        write.commit().map_err(storage)?;
        if progress.durable {
            *self.last_durable.lock().expect("lock is never poisoned") = Instant::now();
        }
        {
            let mut status = self.status.lock().expect("status lock is never poisoned");
            status.position = position;
            status.commits_applied += progress.applied;
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
    /// ends or fails. A reader task decodes commits up to [`READ_AHEAD`] ahead while a thread
    /// of its own applies them.
    ///
    /// Up to `catch_up_to` (the log's head when following began) the views are catching up:
    /// write transactions wait for more commits and take up to [`MAX_BATCH`] each, since the
    /// cost per commit falls as a transaction grows. Past it, each transaction takes what has
    /// arrived, so a quiet log applies each commit as it lands.
    pub async fn follow<S, E>(
        self: &Arc<Self>,
        commits: S,
        catch_up_to: Position,
    ) -> Result<(), FollowError<E>>
    where
        S: Stream<Item = Result<RecordedCommit, E>> + Send + 'static,
        E: Send + 'static,
    {
        // Commits travel in chunks of whatever the stream had ready: one hand-over per chunk,
        // not per commit, keeps the two threads from waking each other for every commit.
        let (sender, receiver) = mpsc::channel(READ_AHEAD / CHUNK);
        let reader = tokio::spawn(async move {
            let mut commits = std::pin::pin!(commits);
            while let Some(first) = commits.next().await {
                let mut failed = first.is_err();
                let mut chunk = Vec::with_capacity(CHUNK);
                chunk.push(first);
                while chunk.len() < CHUNK && !failed {
                    let Some(Some(item)) = commits.next().now_or_never() else { break };
                    failed = item.is_err();
                    chunk.push(item);
                }
                if sender.send(chunk).await.is_err() || failed {
                    break;
                }
            }
        });
        // Stop the reader however this function returns; the applier stops once the reader's
        // channel closes, after committing what it has applied.
        let _reader = AbortOnDrop(reader);
        let (projector, runtime) = (self.clone(), tokio::runtime::Handle::current());
        tokio::task::spawn_blocking(move || projector.apply_all(receiver, catch_up_to, &runtime))
            .await
            .expect("applying commits does not panic")
    }

    /// The applier of [`Projector::follow`]: one write transaction after another, each taking
    /// every commit that has arrived by the time the last one was applied.
    fn apply_all<E>(
        &self,
        mut receiver: mpsc::Receiver<Vec<Result<RecordedCommit, E>>>,
        mut catch_up_to: Position,
        runtime: &tokio::runtime::Handle,
    ) -> Result<(), FollowError<E>> {
        // When the last transaction committed, and how many commits it took.
        let mut last: Option<(Instant, u64)> = None;
        while let Some(mut chunk) = receiver.blocking_recv() {
            let (write, mut progress) = self.begin()?;
            // Catching up, wait for more commits until the batch is full. Under a steady
            // stream of commits, wait a moment for more before committing: one write
            // transaction per commit would cost more than the commits themselves. An idle
            // projector, or one fed a commit at a time, commits at once, so a lone command is
            // visible without delay.
            let now = tokio::time::Instant::now();
            let catching_up = progress.position < catch_up_to;
            let (linger, linger_until) = if catching_up {
                (Some(now + CATCH_UP_COMMIT_EVERY), MAX_BATCH)
            } else if last.is_some_and(|(at, n)| n > 1 && at.elapsed() < STREAMING_WITHIN) {
                (Some(now + LINGER), LINGER_UNTIL)
            } else {
                (None, 0)
            };
            let mut failed = None;
            {
                let mut tables = Batch::open(&write).map_err(storage)?;
                loop {
                    for item in chunk {
                        match item {
                            Ok(recorded) => {
                                self.apply_one(&mut tables, &mut progress, &recorded)?
                            }
                            Err(e) => {
                                failed = Some(e);
                                break;
                            }
                        }
                    }
                    if failed.is_some() || progress.applied as usize >= MAX_BATCH {
                        break;
                    }
                    chunk = match receiver.try_recv() {
                        Ok(next) => next,
                        Err(_) => {
                            let Some(deadline) = linger else { break };
                            // Once caught up, what was applied becomes visible at once.
                            let caught_up = catching_up && progress.position >= catch_up_to;
                            if progress.applied as usize >= linger_until || caught_up {
                                break;
                            }
                            // Catching up, a pause in the stream means the head it was
                            // given is not coming soon (a slow log, or a head that counted
                            // more than the stream delivers): stop waiting for it, so that
                            // commits become visible without delay.
                            let wait = if catching_up {
                                deadline.min(tokio::time::Instant::now() + CATCH_UP_GAP)
                            } else {
                                deadline
                            };
                            match runtime.block_on(tokio::time::timeout_at(wait, receiver.recv())) {
                                Ok(Some(next)) => next,
                                Ok(None) => break,
                                Err(_) => {
                                    if catching_up && tokio::time::Instant::now() < deadline {
                                        catch_up_to = progress.position;
                                    }
                                    break;
                                }
                            }
                        }
                    };
                }
                tables.finish().map_err(storage)?;
            }
            let applied = progress.applied;
            self.commit(write, progress)?;
            last = Some((Instant::now(), applied));
            if let Some(e) = failed {
                return Err(FollowError::Source(e));
            }
        }
        Ok(())
    }
}

/// Where a batch's write transaction has got to.
struct Progress {
    /// The views' position when the batch began: commits at or before it are skipped.
    checkpoint: Position,
    /// The last commit applied.
    position: Position,
    applied: u64,
    /// Whether the transaction is committed durably.
    durable: bool,
}

fn storage(e: impl std::fmt::Display) -> ProjectError {
    ProjectError::Storage(e.to_string())
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
