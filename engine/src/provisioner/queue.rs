//! Where the provisioner's work comes from: every commit of the log, delivered at least once,
//! each to one provisioner at a time, until it is acknowledged.
//!
//! On JetStream this is a durable pull consumer that every engine instance binds to: the
//! server hands each commit to one of them, redelivers what is not acknowledged within the ack
//! wait (an instance that died), and holds back a commit asked to be retried later. The
//! embedded log, which one process owns, keeps the same promise with a cursor stored beside
//! the log: everything after the oldest unacknowledged commit is delivered again after a
//! restart.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream::AckKind;
use async_nats::jetstream::consumer::{AckPolicy, Consumer, DeliverPolicy, pull};
use async_nats::jetstream::stream::Stream;
use futures::stream::BoxStream;
use futures::{StreamExt, TryFutureExt, TryStreamExt};
use qm_proto::{Position, RecordedCommit};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use tokio::sync::mpsc;

use crate::log::{EventLog, ReadError, recorded, unavailable};

/// One delivered commit and the means to settle it.
#[derive(Debug)]
pub struct Delivery {
    pub commit: RecordedCommit,
    /// Whether the commit may have been worked on before (handed out earlier, or delivered
    /// again after a restart): work that is not idempotent by itself looks first.
    pub redelivered: bool,
    handle: Handle,
}

#[derive(Debug)]
enum Handle {
    JetStream(async_nats::jetstream::Message),
    Embedded(Arc<EmbeddedShared>),
}

impl Delivery {
    /// The commit is handled: it is not delivered again.
    pub async fn ack(self) {
        match self.handle {
            Handle::JetStream(message) => {
                if let Err(e) = message.ack().await {
                    tracing::warn!(position = self.commit.position, error = %e, "ack not sent");
                }
            }
            Handle::Embedded(shared) => shared.settle(self.commit.position),
        }
    }

    /// Delivers the commit again after `delay`, to any provisioner.
    pub async fn retry_after(self, delay: Duration) {
        match self.handle {
            Handle::JetStream(message) => {
                if let Err(e) = message.ack_with(AckKind::Nak(Some(delay))).await {
                    tracing::warn!(position = self.commit.position, error = %e, "nak not sent");
                }
            }
            Handle::Embedded(shared) => {
                let sender = shared.redeliver.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(delay).await;
                    let _ = sender.send(self.commit);
                });
            }
        }
    }

    /// Tells the queue the commit is still being worked on, so it is not handed to another
    /// provisioner meanwhile.
    pub async fn still_working(&self) {
        if let Handle::JetStream(message) = &self.handle
            && let Err(e) = message.ack_with(AckKind::Progress).await
        {
            tracing::warn!(position = self.commit.position, error = %e, "progress not sent");
        }
    }
}

/// A source of deliveries.
pub trait WorkQueue: Send + Sync + std::fmt::Debug + 'static {
    /// The commits to work on, as long as the queue lives; the stream ends on an error, after
    /// which the caller asks again.
    fn deliveries(&self) -> BoxStream<'static, Result<Delivery, ReadError>>;

    /// How long a delivery may go without a sign of progress before it is handed to another
    /// provisioner.
    fn ack_wait(&self) -> Duration;
}

/// The durable JetStream consumer every instance shares.
#[derive(Debug, Clone)]
pub struct JetStreamQueue {
    stream: Stream,
    config: pull::Config,
}

impl JetStreamQueue {
    /// `durable` names the consumer; instances that give the same name share the work.
    pub fn new(
        stream: Stream,
        durable: &str,
        subject_prefix: &str,
        ack_wait: Duration,
        max_pending: usize,
    ) -> JetStreamQueue {
        let config = pull::Config {
            durable_name: Some(durable.to_string()),
            description: Some("Quartermaster provisioner: grant work".into()),
            filter_subject: format!("{subject_prefix}.>"),
            deliver_policy: DeliverPolicy::All,
            ack_policy: AckPolicy::Explicit,
            ack_wait,
            max_deliver: -1,
            max_ack_pending: max_pending as i64,
            ..Default::default()
        };
        JetStreamQueue { stream, config }
    }
}

impl WorkQueue for JetStreamQueue {
    fn deliveries(&self) -> BoxStream<'static, Result<Delivery, ReadError>> {
        let (stream, config) = (self.stream.clone(), self.config.clone());
        async move {
            let name = config.durable_name.clone().unwrap_or_default();
            let consumer: Consumer<pull::Config> =
                stream.get_or_create_consumer(&name, config).await.map_err(unavailable)?;
            // A small batch: prefetched messages get no progress signal while they wait.
            let messages = consumer
                .stream()
                .max_messages_per_batch(PULL_BATCH)
                .messages()
                .await
                .map_err(unavailable)?;
            Ok(messages.filter_map(|message| async move {
                let message = match message {
                    Ok(message) => message,
                    Err(e) => return Some(Err(unavailable(e))),
                };
                let position = match message.info() {
                    Ok(info) => info.stream_sequence,
                    Err(e) => return Some(Err(unavailable(e))),
                };
                let redelivered = message.info().map(|i| i.delivered > 1).unwrap_or(true);
                match recorded(position, &message.payload) {
                    Ok(commit) => Some(Ok(Delivery {
                        commit,
                        redelivered,
                        handle: Handle::JetStream(message),
                    })),
                    Err(e) => {
                        // Redelivering it would fail the same way forever; the read side and
                        // every aggregate load report it too.
                        tracing::error!(position, error = %e, "a commit the provisioner cannot read is skipped");
                        let _ = message.ack_with(AckKind::Term).await;
                        None
                    }
                }
            }))
        }
        .try_flatten_stream()
        .boxed()
    }

    fn ack_wait(&self) -> Duration {
        self.config.ack_wait
    }
}

/// Messages one pull asks for.
const PULL_BATCH: usize = 64;

const CURSOR: TableDefinition<&str, u64> = TableDefinition::new("provisioner_cursor");
const CURSOR_KEY: &str = "settled_through";
/// The cursor is written at most this often; a crash redelivers what settled since.
const CURSOR_EVERY: Duration = Duration::from_millis(200);

/// The embedded log's equivalent of the durable consumer.
#[derive(Debug)]
pub struct EmbeddedQueue {
    log: Arc<dyn EventLog>,
    db: Arc<Database>,
}

#[derive(Debug)]
struct EmbeddedShared {
    db: Arc<Database>,
    redeliver: mpsc::UnboundedSender<RecordedCommit>,
    progress: Mutex<Progress>,
}

#[derive(Debug)]
struct Progress {
    /// Delivered and not yet acknowledged.
    open: BTreeSet<Position>,
    /// The newest position delivered.
    delivered: Position,
    /// Every commit up to here is settled, as last written.
    stored: Position,
    written_at: Instant,
}

impl EmbeddedQueue {
    pub fn new(log: Arc<dyn EventLog>, db: Arc<Database>) -> EmbeddedQueue {
        EmbeddedQueue { log, db }
    }

    fn stored_cursor(db: &Database) -> Result<Position, redb::Error> {
        let read = db.begin_read()?;
        match read.open_table(CURSOR) {
            Ok(table) => Ok(table.get(CURSOR_KEY)?.map(|v| v.value()).unwrap_or(0)),
            Err(redb::TableError::TableDoesNotExist(_)) => Ok(0),
            Err(e) => Err(e.into()),
        }
    }
}

impl EmbeddedShared {
    fn deliver(&self, position: Position) {
        let mut progress = self.progress.lock().expect("no panic holds this lock");
        progress.open.insert(position);
        progress.delivered = progress.delivered.max(position);
    }

    fn settle(&self, position: Position) {
        let through = {
            let mut progress = self.progress.lock().expect("no panic holds this lock");
            progress.open.remove(&position);
            let through = match progress.open.first() {
                Some(oldest) => oldest - 1,
                None => progress.delivered,
            };
            if through <= progress.stored || progress.written_at.elapsed() < CURSOR_EVERY {
                return;
            }
            progress.stored = through;
            progress.written_at = Instant::now();
            through
        };
        let write = || -> Result<(), redb::Error> {
            let mut tx = self.db.begin_write()?;
            tx.set_durability(redb::Durability::None)?;
            tx.open_table(CURSOR)?.insert(CURSOR_KEY, through)?;
            tx.commit()?;
            Ok(())
        };
        if let Err(e) = write() {
            tracing::warn!(error = %e, "provisioner cursor not written");
        }
    }
}

impl WorkQueue for EmbeddedQueue {
    fn deliveries(&self) -> BoxStream<'static, Result<Delivery, ReadError>> {
        let after = match Self::stored_cursor(&self.db) {
            Ok(after) => after,
            Err(e) => return futures::stream::once(async move { Err(unavailable(e)) }).boxed(),
        };
        let (redeliver, again) = mpsc::unbounded_channel();
        let shared = Arc::new(EmbeddedShared {
            db: self.db.clone(),
            redeliver,
            progress: Mutex::new(Progress {
                open: BTreeSet::new(),
                delivered: after,
                stored: after,
                written_at: Instant::now(),
            }),
        });
        let again = futures::stream::unfold(again, |mut again| async move {
            again.recv().await.map(|commit| (Ok((commit, true)), again))
        });
        let log = self.log.clone();
        async move {
            // What the log held at start may have been worked on before a crash.
            let head = log.head().await?;
            let shared_new = shared.clone();
            let new = log.subscribe(after).map_ok(move |commit| {
                shared_new.deliver(commit.position);
                let redelivered = commit.position <= head;
                (commit, redelivered)
            });
            Ok(futures::stream::select(new, again).map_ok(move |(commit, redelivered)| Delivery {
                commit,
                redelivered,
                handle: Handle::Embedded(shared.clone()),
            }))
        }
        .try_flatten_stream()
        .boxed()
    }

    fn ack_wait(&self) -> Duration {
        // One process owns the embedded log: nothing is handed elsewhere, and the in-progress
        // signal is a no-op; an hour keeps it rare.
        Duration::from_secs(3600)
    }
}
