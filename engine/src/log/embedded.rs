//! The embedded log: the event log contract on a local redb file.
//!
//! It is the zero-setup default, the demo's log, and the way to audit an exported history
//! offline. One file holds the commits in position order, an index of each organization's
//! commits, each organization's last position (the optimistic concurrency check), every
//! command id (deduplication, kept forever here), and aggregate snapshots. Every append is one
//! durable write transaction, so an acknowledged commit survives a crash.

use std::collections::VecDeque;
use std::path::Path;
use std::sync::Arc;

use futures::future::BoxFuture;
use futures::stream::BoxStream;
use futures::{FutureExt, StreamExt};
use qm_proto::{CommandId, OrgId, Position, RecordedCommit};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use tokio::sync::watch;

use super::{AppendError, Appended, EventLog, ReadError, SnapshotBytes, recorded, unavailable};

const COMMITS: TableDefinition<u64, &[u8]> = TableDefinition::new("commits");
const ORG_COMMITS: TableDefinition<(&str, u64), ()> = TableDefinition::new("org_commits");
const ORG_LAST: TableDefinition<&str, u64> = TableDefinition::new("org_last");
const COMMAND_IDS: TableDefinition<&str, u64> = TableDefinition::new("command_ids");
const SNAPSHOTS: TableDefinition<&str, &[u8]> = TableDefinition::new("snapshots");

/// How many commits one read of a subscription takes at a time.
const READ_BATCH: usize = 1024;

#[derive(Debug, Clone)]
pub struct EmbeddedLog {
    db: Arc<Database>,
    head: watch::Sender<Position>,
}

impl EmbeddedLog {
    /// Opens the log in `path`, creating the file if needed.
    pub fn open(path: impl AsRef<Path>) -> Result<EmbeddedLog, redb::Error> {
        let db = Database::create(path)?;
        let write = db.begin_write()?;
        {
            write.open_table(COMMITS)?;
            write.open_table(ORG_COMMITS)?;
            write.open_table(ORG_LAST)?;
            write.open_table(COMMAND_IDS)?;
            write.open_table(SNAPSHOTS)?;
        }
        write.commit()?;
        let head = {
            let read = db.begin_read()?;
            let commits = read.open_table(COMMITS)?;
            commits.last()?.map(|(k, _)| k.value()).unwrap_or(0)
        };
        Ok(EmbeddedLog { db: Arc::new(db), head: watch::Sender::new(head) })
    }

    /// The redb database, for stores that keep their tables beside the log (data keys).
    pub fn database(&self) -> Arc<Database> {
        self.db.clone()
    }

    fn append_blocking(
        db: &Database,
        org: &OrgId,
        expected: Position,
        command_id: &CommandId,
        bytes: &[u8],
    ) -> Result<Option<Appended>, redb::Error> {
        // `None` is a conflict: the organization's last commit is not `expected`.
        let write = db.begin_write()?;
        let appended = {
            let mut ids = write.open_table(COMMAND_IDS)?;
            if let Some(first) = ids.get(command_id.as_str())? {
                return Ok(Some(Appended { position: first.value(), duplicate: true }));
            }
            let mut last = write.open_table(ORG_LAST)?;
            let current = last.get(org.as_str())?.map(|v| v.value()).unwrap_or(0);
            if current != expected {
                return Ok(None);
            }
            let mut commits = write.open_table(COMMITS)?;
            let position = commits.last()?.map(|(k, _)| k.value()).unwrap_or(0) + 1;
            commits.insert(position, bytes)?;
            write.open_table(ORG_COMMITS)?.insert((org.as_str(), position), ())?;
            last.insert(org.as_str(), position)?;
            ids.insert(command_id.as_str(), position)?;
            Appended { position, duplicate: false }
        };
        write.commit()?;
        Ok(Some(appended))
    }

    fn read_org_blocking(
        db: &Database,
        org: &OrgId,
        after: Position,
    ) -> Result<Vec<RecordedCommit>, ReadError> {
        let read = db.begin_read().map_err(unavailable)?;
        let index = read.open_table(ORG_COMMITS).map_err(unavailable)?;
        let commits = read.open_table(COMMITS).map_err(unavailable)?;
        let mut out = Vec::new();
        let range = (org.as_str(), after.saturating_add(1))..=(org.as_str(), u64::MAX);
        for entry in index.range(range).map_err(unavailable)? {
            let (key, _) = entry.map_err(unavailable)?;
            let position = key.value().1;
            let bytes = commits.get(position).map_err(unavailable)?.ok_or_else(|| {
                ReadError::Unavailable(format!("index names missing commit {position}"))
            })?;
            out.push(recorded(position, bytes.value())?);
        }
        Ok(out)
    }

    fn read_range_blocking(
        db: &Database,
        after: Position,
        limit: usize,
    ) -> Result<Vec<RecordedCommit>, ReadError> {
        let read = db.begin_read().map_err(unavailable)?;
        let commits = read.open_table(COMMITS).map_err(unavailable)?;
        let mut out = Vec::new();
        for entry in commits.range(after.saturating_add(1)..).map_err(unavailable)?.take(limit) {
            let (key, bytes) = entry.map_err(unavailable)?;
            out.push(recorded(key.value(), bytes.value())?);
        }
        Ok(out)
    }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.expect("redb calls do not panic")
}

impl EventLog for EmbeddedLog {
    fn append<'a>(
        &'a self,
        org: &'a OrgId,
        expected: Position,
        command_id: &'a CommandId,
        bytes: Vec<u8>,
    ) -> BoxFuture<'a, Result<Appended, AppendError>> {
        async move {
            let (db, o, c) = (self.db.clone(), org.clone(), command_id.clone());
            let result =
                blocking(move || Self::append_blocking(&db, &o, expected, &c, &bytes)).await;
            match result {
                Ok(Some(appended)) => {
                    if !appended.duplicate {
                        self.head.send_if_modified(|head| {
                            let moved = appended.position > *head;
                            *head = (*head).max(appended.position);
                            moved
                        });
                    }
                    Ok(appended)
                }
                Ok(None) => Err(AppendError::Conflict { org: org.clone(), expected }),
                Err(e) => Err(AppendError::Unavailable(e.to_string())),
            }
        }
        .boxed()
    }

    fn read_org<'a>(
        &'a self,
        org: &'a OrgId,
        after: Position,
    ) -> BoxFuture<'a, Result<Vec<RecordedCommit>, ReadError>> {
        let (db, org) = (self.db.clone(), org.clone());
        blocking(move || Self::read_org_blocking(&db, &org, after)).boxed()
    }

    fn read_at(
        &self,
        position: Position,
    ) -> BoxFuture<'_, Result<Option<RecordedCommit>, ReadError>> {
        let db = self.db.clone();
        blocking(move || {
            let read = db.begin_read().map_err(unavailable)?;
            let commits = read.open_table(COMMITS).map_err(unavailable)?;
            let bytes = commits.get(position).map_err(unavailable)?;
            bytes.map(|b| recorded(position, b.value())).transpose()
        })
        .boxed()
    }

    fn head(&self) -> BoxFuture<'_, Result<Position, ReadError>> {
        let head = *self.head.borrow();
        async move { Ok(head) }.boxed()
    }

    fn subscribe(&self, after: Position) -> BoxStream<'static, Result<RecordedCommit, ReadError>> {
        struct Cursor {
            db: Arc<Database>,
            head: watch::Receiver<Position>,
            after: Position,
            buffer: VecDeque<RecordedCommit>,
        }
        let cursor = Cursor {
            db: self.db.clone(),
            head: self.head.subscribe(),
            after,
            buffer: VecDeque::new(),
        };
        futures::stream::unfold(Some(cursor), |cursor| async move {
            let mut cursor = cursor?;
            loop {
                if let Some(next) = cursor.buffer.pop_front() {
                    cursor.after = next.position;
                    return Some((Ok(next), Some(cursor)));
                }
                if *cursor.head.borrow_and_update() <= cursor.after {
                    // The sender lives as long as the log; a closed channel means the log is gone.
                    if cursor.head.changed().await.is_err() {
                        return None;
                    }
                    continue;
                }
                let (db, after) = (cursor.db.clone(), cursor.after);
                match blocking(move || Self::read_range_blocking(&db, after, READ_BATCH)).await {
                    Ok(batch) => cursor.buffer.extend(batch),
                    Err(e) => return Some((Err(e), None)),
                }
            }
        })
        .boxed()
    }

    fn load_snapshot<'a>(
        &'a self,
        org: &'a OrgId,
    ) -> BoxFuture<'a, Result<Option<SnapshotBytes>, ReadError>> {
        let (db, org) = (self.db.clone(), org.clone());
        blocking(move || {
            let read = db.begin_read().map_err(unavailable)?;
            let table = read.open_table(SNAPSHOTS).map_err(unavailable)?;
            Ok(table.get(org.as_str()).map_err(unavailable)?.map(|v| v.value().to_vec()))
        })
        .boxed()
    }

    fn save_snapshot<'a>(
        &'a self,
        org: &'a OrgId,
        bytes: SnapshotBytes,
    ) -> BoxFuture<'a, Result<(), ReadError>> {
        let (db, org) = (self.db.clone(), org.clone());
        blocking(move || {
            let mut write = db.begin_write().map_err(unavailable)?;
            // A snapshot is a cache: it need not be forced to disk, the next durable commit is.
            write.set_durability(redb::Durability::None).map_err(unavailable)?;
            write
                .open_table(SNAPSHOTS)
                .map_err(unavailable)?
                .insert(org.as_str(), bytes.as_slice())
                .map_err(unavailable)?;
            write.commit().map_err(unavailable)
        })
        .boxed()
    }
}
