//! The read side: a projector fed from the event log, queries with read-your-writes, and
//! rebuilds without downtime.
//!
//! Each engine instance keeps its own views file (`views.redb` in its data directory) and
//! follows the log from the file's checkpoint, resuming by itself after the log's stream
//! breaks (a restart of nats-server, a network cut). A rebuild projects from position 0 into a
//! new file while the current one keeps serving, then swaps them atomically once the new file
//! has caught up with the live one.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use qm_projections::{FollowError, NotYetApplied, Projector, ProjectorState, Views};
use qm_proto::Position;
use tokio::task::JoinHandle;

use crate::log::EventLog;

pub const VIEWS_FILE: &str = "views.redb";
const REBUILD_FILE: &str = "views.redb.rebuild";
/// The longest pause between two attempts to follow a failing log.
const MAX_BACKOFF: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum ReadSideError {
    #[error(transparent)]
    Open(#[from] qm_projections::OpenError),
    #[error(transparent)]
    NotYetApplied(#[from] NotYetApplied),
    #[error(transparent)]
    Project(#[from] qm_projections::ProjectError),
    #[error("event log unavailable: {0}")]
    Log(String),
    #[error("views directory: {0}")]
    Io(#[from] std::io::Error),
    #[error("a rebuild is already running")]
    RebuildRunning,
    #[error("the rebuild failed: {0}")]
    Rebuild(String),
}

/// How far a rebuild has come.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RebuildProgress {
    pub applied: Position,
    /// The live views' position, which the rebuild must reach.
    pub target: Position,
    pub commits_per_s: f64,
    pub eta: Option<Duration>,
    pub elapsed: Duration,
    pub done: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ReadSideStatus {
    pub position: Position,
    pub head: Option<Position>,
    pub lag: Option<u64>,
    pub state: ProjectorState,
    pub commits_applied: u64,
    pub rebuild: Option<RebuildProgress>,
}

#[derive(Debug)]
pub struct ReadSide {
    log: Arc<dyn EventLog>,
    dir: PathBuf,
    current: RwLock<Arc<Projector>>,
    follower: Mutex<Option<JoinHandle<()>>>,
    rebuild: Mutex<Option<RebuildProgress>>,
}

impl ReadSide {
    /// Opens the views in `dir` and starts following `log` from their checkpoint.
    pub fn start(log: Arc<dyn EventLog>, dir: &Path) -> Result<Arc<ReadSide>, ReadSideError> {
        std::fs::create_dir_all(dir)?;
        let projector = Arc::new(Projector::open(dir.join(VIEWS_FILE))?);
        tracing::info!(position = projector.position(), "views opened");
        let follower = follow(log.clone(), projector.clone());
        Ok(Arc::new(ReadSide {
            log,
            dir: dir.to_path_buf(),
            current: RwLock::new(projector),
            follower: Mutex::new(Some(follower)),
            rebuild: Mutex::new(None),
        }))
    }

    /// The projector serving queries now.
    pub fn projector(&self) -> Arc<Projector> {
        self.current.read().expect("projector lock is never poisoned").clone()
    }

    /// A read of the views that includes `min_position`, waiting up to `deadline` for it.
    pub async fn views(
        &self,
        min_position: Position,
        deadline: Duration,
    ) -> Result<Views, ReadSideError> {
        let until = Instant::now() + deadline;
        loop {
            // Taken afresh each round: a rebuild may swap the projector while we wait.
            let projector = self.projector();
            if projector.position() >= min_position {
                return Ok(projector.views()?);
            }
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                let current = projector.position();
                return Err(
                    NotYetApplied { wanted: min_position, current, waited: deadline }.into()
                );
            }
            let _ = projector.wait_for(min_position, left.min(Duration::from_millis(100))).await;
        }
    }

    pub async fn status(&self) -> ReadSideStatus {
        let projector = self.projector();
        let status = projector.status();
        let head = self.log.head().await.ok();
        ReadSideStatus {
            position: status.position,
            head,
            lag: head.map(|h| h.saturating_sub(status.position)),
            state: status.state,
            commits_applied: status.commits_applied,
            rebuild: self.rebuild.lock().expect("rebuild lock is never poisoned").clone(),
        }
    }

    /// Rebuilds the views from position 0 into a new file while the current one serves, then
    /// swaps them. `progress` is called about every 200 ms.
    pub async fn rebuild(
        &self,
        mut progress: impl FnMut(&RebuildProgress),
    ) -> Result<RebuildProgress, ReadSideError> {
        {
            let mut running = self.rebuild.lock().expect("rebuild lock is never poisoned");
            if running.is_some() {
                return Err(ReadSideError::RebuildRunning);
            }
            *running = Some(RebuildProgress::default());
        }
        let result = self.rebuild_in(&mut progress).await;
        *self.rebuild.lock().expect("rebuild lock is never poisoned") = None;
        result
    }

    async fn rebuild_in(
        &self,
        progress: &mut impl FnMut(&RebuildProgress),
    ) -> Result<RebuildProgress, ReadSideError> {
        let path = self.dir.join(REBUILD_FILE);
        // A file left by a rebuild that was interrupted is useless: start again.
        if path.exists() {
            std::fs::remove_file(&path).map_err(|e| ReadSideError::Rebuild(e.to_string()))?;
        }
        let fresh = Arc::new(Projector::open(&path)?);
        let follower = follow(self.log.clone(), fresh.clone());
        let started = Instant::now();
        tracing::info!("rebuild started");

        // The rebuild must reach what the log held when it started, and then the live views,
        // which keep moving under load; both follow the same log, so it does.
        let start_head = self.log.head().await.map_err(|e| ReadSideError::Log(e.to_string()))?;
        let mut report = RebuildProgress::default();
        let mut applied = fresh.applied();
        loop {
            let live = self.projector();
            report.applied = fresh.position();
            report.target = live.position().max(start_head);
            report.elapsed = started.elapsed();
            report.commits_per_s = report.applied as f64 / report.elapsed.as_secs_f64().max(1e-3);
            report.eta = (report.commits_per_s > 0.0).then(|| {
                Duration::from_secs_f64(
                    report.target.saturating_sub(report.applied) as f64 / report.commits_per_s,
                )
            });
            *self.rebuild.lock().expect("rebuild lock is never poisoned") = Some(report.clone());
            progress(&report);
            if let ProjectorState::Failed { error } = fresh.status().state {
                follower.abort();
                return Err(ReadSideError::Rebuild(error.to_string()));
            }
            if report.applied >= live.position() && report.applied >= report.target {
                break;
            }
            let _ = tokio::time::timeout(Duration::from_millis(200), applied.changed()).await;
        }

        // Swap: the fresh file takes the live file's name and place; readers holding the old
        // projector finish on the old file, which goes when the last of them drops it.
        fresh.flush()?;
        std::fs::rename(&path, self.dir.join(VIEWS_FILE))
            .map_err(|e| ReadSideError::Rebuild(e.to_string()))?;
        *self.current.write().expect("projector lock is never poisoned") = fresh;
        let old = self.follower.lock().expect("follower lock is never poisoned").replace(follower);
        if let Some(old) = old {
            old.abort();
        }
        report.done = true;
        report.elapsed = started.elapsed();
        tracing::info!(
            position = report.applied,
            seconds = report.elapsed.as_secs_f64(),
            "rebuild swapped in"
        );
        progress(&report);
        Ok(report)
    }
}

impl Drop for ReadSide {
    fn drop(&mut self) {
        if let Some(follower) =
            self.follower.lock().expect("follower lock is never poisoned").take()
        {
            follower.abort();
        }
    }
}

/// Follows `log` into `projector` until the projector fails, resuming after stream errors.
fn follow(log: Arc<dyn EventLog>, projector: Arc<Projector>) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut backoff = Duration::from_millis(50);
        loop {
            let from = projector.position();
            // Without the head, the views still follow; they just catch up in smaller batches.
            let head = log.head().await.unwrap_or(from);
            match projector.follow(log.subscribe(from), head).await {
                Ok(()) => {
                    tracing::warn!(position = from, "the log's stream ended; following again")
                }
                Err(FollowError::Source(error)) => {
                    tracing::warn!(%error, position = projector.position(), "log stream broke; following again")
                }
                Err(FollowError::Project(error)) => {
                    tracing::error!(%error, "views stopped; rebuild them once the cause is fixed");
                    return;
                }
            }
            if projector.position() > from {
                backoff = Duration::from_millis(50);
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    })
}
