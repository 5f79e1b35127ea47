//! The event log on NATS JetStream.
//!
//! One stream (default `QM_EVENTS`, subjects `qm.ev.>`), configured as an event log: file
//! storage, limits retention without limits, `discard: new`, deletes and purges denied, no
//! rollups, direct gets allowed, a duplicate window of a few minutes. An existing stream is
//! checked against that, never silently changed.
//!
//! Appends carry `Nats-Expected-Last-Subject-Sequence` (optimistic concurrency per
//! organization) and `Nats-Msg-Id` = the command id (deduplication). Reading an organization's
//! tail uses batched direct gets by subject, so it costs one round trip per thousand commits
//! rather than a consumer. Snapshots live in a KV bucket beside the stream.

use std::error::Error as _;
use std::time::Duration;

use async_nats::jetstream::consumer::DeliverPolicy;
use async_nats::jetstream::consumer::pull::OrderedConfig;
use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::stream::{
    Config as StreamConfig, DiscardPolicy, RetentionPolicy, StorageType, Stream,
};
use async_nats::jetstream::{self, ErrorCode, kv};
use bytes::Bytes;
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use futures::{FutureExt, StreamExt, TryFutureExt};
use qm_proto::{CommandId, OrgId, Position, RecordedCommit};

use super::{
    AppendError, Appended, EventLog, ReadError, SnapshotBytes, org_subject, recorded, unavailable,
};

/// Where the log lives and how the stream is shaped.
#[derive(Debug, Clone)]
pub struct JetStreamConfig {
    pub stream: String,
    /// Commits go to `<subject_prefix>.org.<org>`.
    pub subject_prefix: String,
    pub replicas: usize,
    pub duplicate_window: Duration,
    pub snapshot_bucket: String,
    /// How long an append waits for its acknowledgement before the outcome is unknown.
    pub ack_timeout: Duration,
}

impl Default for JetStreamConfig {
    fn default() -> Self {
        JetStreamConfig {
            stream: "QM_EVENTS".into(),
            subject_prefix: "qm.ev".into(),
            replicas: 1,
            duplicate_window: Duration::from_secs(300),
            snapshot_bucket: "QM_SNAPSHOTS".into(),
            ack_timeout: Duration::from_secs(5),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("cannot reach JetStream: {0}")]
    Unavailable(String),
    #[error("stream {stream} exists with a different configuration: {}", differences.join("; "))]
    StreamMismatch { stream: String, differences: Vec<String> },
}

/// How many times an append whose acknowledgement timed out is sent again.
const UNKNOWN_OUTCOME_RETRIES: usize = 3;
/// Commits per batched direct get.
const DIRECT_BATCH: usize = 1000;

#[derive(Debug, Clone)]
pub struct JetStreamLog {
    client: async_nats::Client,
    js: jetstream::Context,
    stream: Stream,
    snapshots: kv::Store,
    config: JetStreamConfig,
}

impl JetStreamLog {
    /// Connects to `urls` (comma-separated, any node of a cluster) and opens, creating if
    /// needed, the stream and the snapshot bucket.
    pub async fn connect(urls: &str, config: JetStreamConfig) -> Result<JetStreamLog, OpenError> {
        let urls: Vec<&str> = urls.split(',').map(str::trim).filter(|u| !u.is_empty()).collect();
        let client = async_nats::ConnectOptions::new()
            .name("quartermaster")
            .connect(urls)
            .await
            .map_err(|e| OpenError::Unavailable(e.to_string()))?;
        Self::open(client, config).await
    }

    pub async fn open(
        client: async_nats::Client,
        config: JetStreamConfig,
    ) -> Result<JetStreamLog, OpenError> {
        let js = jetstream::ContextBuilder::new()
            .timeout(config.ack_timeout)
            .backpressure_on_inflight(true)
            .build(client.clone());
        let stream = ensure_stream(&js, &config).await?;
        let snapshots = js
            .create_or_update_key_value(kv::Config {
                bucket: config.snapshot_bucket.clone(),
                description: "Quartermaster aggregate snapshots (a cache)".into(),
                history: 1,
                storage: StorageType::File,
                num_replicas: config.replicas,
                ..Default::default()
            })
            .await
            .map_err(|e| OpenError::Unavailable(format!("snapshot bucket: {e}")))?;
        Ok(JetStreamLog { client, js, stream, snapshots, config })
    }

    /// The stream of commits, for consumers of their own (the provisioner's).
    pub fn stream(&self) -> &Stream {
        &self.stream
    }

    pub fn context(&self) -> &jetstream::Context {
        &self.js
    }

    pub fn config(&self) -> &JetStreamConfig {
        &self.config
    }

    /// Reads every message on `subject` from sequence `from`, with batched direct gets.
    async fn read_subject(
        &self,
        subject: &str,
        mut from: u64,
    ) -> Result<Vec<(u64, Bytes)>, ReadError> {
        let api = format!("$JS.API.DIRECT.GET.{}", self.config.stream);
        let mut out = Vec::new();
        loop {
            let inbox = self.client.new_inbox();
            let mut replies = self.client.subscribe(inbox.clone()).await.map_err(unavailable)?;
            let body =
                serde_json::json!({ "seq": from, "next_by_subj": subject, "batch": DIRECT_BATCH });
            self.client
                .publish_with_reply(api.clone(), inbox, body.to_string().into())
                .await
                .map_err(unavailable)?;
            let mut more = false;
            loop {
                let reply = tokio::time::timeout(self.config.ack_timeout, replies.next())
                    .await
                    .map_err(|_| {
                        ReadError::Unavailable(format!("direct get of {subject} timed out"))
                    })?
                    .ok_or_else(|| ReadError::Unavailable("connection closed".into()))?;
                let headers = reply.headers.as_ref();
                let header = |name: &str| -> Option<u64> {
                    headers?.get(name).and_then(|v| v.as_str().parse().ok())
                };
                match reply.status.map(|s| s.as_u16()) {
                    None | Some(200) => {
                        let seq = header("Nats-Sequence").ok_or_else(|| {
                            ReadError::Unavailable("direct get reply without a sequence".into())
                        })?;
                        out.push((seq, reply.payload.clone()));
                        from = seq + 1;
                    }
                    Some(204) => {
                        more = header("Nats-Num-Pending").is_some_and(|n| n > 0);
                        break;
                    }
                    Some(404) => break,
                    Some(code) => {
                        return Err(ReadError::Unavailable(format!(
                            "direct get of {subject} answered {code} {:?}",
                            reply.description
                        )));
                    }
                }
            }
            // Dropping the subscriber unsubscribes; the request is finished either way.
            drop(replies);
            if !more {
                return Ok(out);
            }
        }
    }
}

fn wanted_stream(config: &JetStreamConfig) -> StreamConfig {
    StreamConfig {
        name: config.stream.clone(),
        description: Some("Quartermaster event log".into()),
        subjects: vec![format!("{}.>", config.subject_prefix)],
        storage: StorageType::File,
        retention: RetentionPolicy::Limits,
        discard: DiscardPolicy::New,
        deny_delete: true,
        deny_purge: true,
        allow_rollup: false,
        allow_direct: true,
        duplicate_window: config.duplicate_window,
        num_replicas: config.replicas,
        max_messages: -1,
        max_bytes: -1,
        max_messages_per_subject: -1,
        ..Default::default()
    }
}

async fn ensure_stream(
    js: &jetstream::Context,
    config: &JetStreamConfig,
) -> Result<Stream, OpenError> {
    let want = wanted_stream(config);
    match js.get_stream(&config.stream).await {
        Ok(stream) => {
            let have = &stream.cached_info().config;
            let differences = differences(&want, have);
            if differences.is_empty() {
                Ok(stream)
            } else {
                Err(OpenError::StreamMismatch { stream: config.stream.clone(), differences })
            }
        }
        Err(e) => {
            let not_found = matches!(
                e.kind(),
                jetstream::context::GetStreamErrorKind::JetStream(ref je)
                    if je.error_code() == ErrorCode::STREAM_NOT_FOUND
            );
            if !not_found {
                return Err(OpenError::Unavailable(e.to_string()));
            }
            js.create_stream(want).await.map_err(|e| OpenError::Unavailable(e.to_string()))
        }
    }
}

/// The settings an event log depends on that differ between what we want and what exists.
fn differences(want: &StreamConfig, have: &StreamConfig) -> Vec<String> {
    // Settings compared by value: equal values print the same.
    fn same(
        out: &mut Vec<String>,
        name: &str,
        want: &dyn std::fmt::Debug,
        have: &dyn std::fmt::Debug,
    ) {
        let (want, have) = (format!("{want:?}"), format!("{have:?}"));
        if want != have {
            out.push(format!("{name} is {have}, want {want}"));
        }
    }
    let mut out = Vec::new();
    same(&mut out, "subjects", &want.subjects, &have.subjects);
    same(&mut out, "storage", &want.storage, &have.storage);
    same(&mut out, "retention", &want.retention, &have.retention);
    same(&mut out, "discard", &want.discard, &have.discard);
    let mut check = |name: &str, ok: bool, want: String, have: String| {
        if !ok {
            out.push(format!("{name} is {have}, want {want}"));
        }
    };
    check("deny_delete", have.deny_delete, "true".into(), have.deny_delete.to_string());
    check("deny_purge", have.deny_purge, "true".into(), have.deny_purge.to_string());
    check("allow_rollup", !have.allow_rollup, "false".into(), have.allow_rollup.to_string());
    check("allow_direct", have.allow_direct, "true".into(), have.allow_direct.to_string());
    check(
        "num_replicas",
        have.num_replicas == want.num_replicas,
        want.num_replicas.to_string(),
        have.num_replicas.to_string(),
    );
    let unlimited = |v: i64| v <= 0;
    check(
        "max_msgs",
        unlimited(have.max_messages),
        "unlimited".into(),
        have.max_messages.to_string(),
    );
    check("max_bytes", unlimited(have.max_bytes), "unlimited".into(), have.max_bytes.to_string());
    check(
        "max_msgs_per_subject",
        unlimited(have.max_messages_per_subject),
        "unlimited".into(),
        have.max_messages_per_subject.to_string(),
    );
    check("max_age", have.max_age.is_zero(), "unlimited".into(), format!("{:?}", have.max_age));
    check("duplicate_window", !have.duplicate_window.is_zero(), "a window".into(), "none".into());
    out
}

/// The JetStream API error code behind a publish error, if the server sent one.
fn api_code(e: &jetstream::context::PublishError) -> Option<u64> {
    e.source()?.downcast_ref::<jetstream::Error>().map(|je| je.error_code().0)
}

/// Codes that mean "another commit got there first, or the leader is not ready to tell":
/// wrong last sequence (10071), its clustered forms (10164, 10163), and a concurrent duplicate
/// in flight (10158). Each is resolved by reloading the organization's tail.
const CONFLICT_CODES: [u64; 4] = [10071, 10158, 10163, 10164];

impl EventLog for JetStreamLog {
    fn append<'a>(
        &'a self,
        org: &'a OrgId,
        expected: Position,
        command_id: &'a CommandId,
        bytes: Vec<u8>,
    ) -> BoxFuture<'a, Result<Appended, AppendError>> {
        async move {
            let subject = org_subject(&self.config.subject_prefix, org);
            let publish = PublishMessage::build()
                .payload(bytes.into())
                .message_id(command_id.as_str())
                .expected_last_subject_sequence(expected);
            let mut last_reason = String::new();
            for _ in 0..UNKNOWN_OUTCOME_RETRIES {
                let sent = self.js.send_publish(subject.clone(), publish.clone()).await;
                let acked = match sent {
                    Ok(ack) => ack.await,
                    Err(e) => Err(e),
                };
                match acked {
                    Ok(ack) => {
                        return Ok(Appended { position: ack.sequence, duplicate: ack.duplicate });
                    }
                    Err(e) if e.kind() == PublishErrorKind::WrongLastSequence => {
                        return Err(AppendError::Conflict { org: org.clone(), expected });
                    }
                    Err(e) if api_code(&e).is_some_and(|c| CONFLICT_CODES.contains(&c)) => {
                        return Err(AppendError::Conflict { org: org.clone(), expected });
                    }
                    // The message may have been stored; the same Nats-Msg-Id and expected
                    // sequence make sending it again safe.
                    Err(e) if matches!(e.kind(), PublishErrorKind::TimedOut | PublishErrorKind::BrokenPipe) => {
                        tracing::warn!(%org, command_id = %command_id, error = %e, "append outcome unknown, sending again");
                        last_reason = e.to_string();
                    }
                    Err(e) => return Err(AppendError::Unavailable(e.to_string())),
                }
            }
            Err(AppendError::Unknown { org: org.clone(), reason: last_reason })
        }
        .boxed()
    }

    fn read_org<'a>(
        &'a self,
        org: &'a OrgId,
        after: Position,
    ) -> BoxFuture<'a, Result<Vec<RecordedCommit>, ReadError>> {
        async move {
            let subject = org_subject(&self.config.subject_prefix, org);
            let messages = self.read_subject(&subject, after + 1).await?;
            messages.into_iter().map(|(seq, payload)| recorded(seq, &payload)).collect()
        }
        .boxed()
    }

    fn read_at(
        &self,
        position: Position,
    ) -> BoxFuture<'_, Result<Option<RecordedCommit>, ReadError>> {
        async move {
            use async_nats::jetstream::stream::RawMessageErrorKind;
            match self.stream.get_raw_message(position).await {
                Ok(message) => recorded(position, &message.payload).map(Some),
                Err(e) if e.kind() == RawMessageErrorKind::NoMessageFound => Ok(None),
                Err(e) => Err(unavailable(e)),
            }
        }
        .boxed()
    }

    fn head(&self) -> BoxFuture<'_, Result<Position, ReadError>> {
        self.stream.get_info().map_ok(|info| info.state.last_sequence).map_err(unavailable).boxed()
    }

    fn subscribe(&self, after: Position) -> BoxStream<'static, Result<RecordedCommit, ReadError>> {
        let stream = self.stream.clone();
        let filter_subject = format!("{}.>", self.config.subject_prefix);
        async move {
            let deliver_policy = match after {
                0 => DeliverPolicy::All,
                after => DeliverPolicy::ByStartSequence { start_sequence: after + 1 },
            };
            let consumer = stream
                .create_consumer(OrderedConfig {
                    filter_subject,
                    deliver_policy,
                    ..Default::default()
                })
                .await
                .map_err(unavailable)?;
            let messages = consumer.messages().await.map_err(unavailable)?;
            Ok(messages.map(|message| {
                let message = message.map_err(unavailable)?;
                let info = message.info().map_err(unavailable)?;
                recorded(info.stream_sequence, &message.payload)
            }))
        }
        .try_flatten_stream()
        .boxed()
    }

    fn load_snapshot<'a>(
        &'a self,
        org: &'a OrgId,
    ) -> BoxFuture<'a, Result<Option<SnapshotBytes>, ReadError>> {
        self.snapshots
            .get(super::kv_key(org))
            .map_ok(|v| v.map(|b| b.to_vec()))
            .map_err(unavailable)
            .boxed()
    }

    fn save_snapshot<'a>(
        &'a self,
        org: &'a OrgId,
        bytes: SnapshotBytes,
    ) -> BoxFuture<'a, Result<(), ReadError>> {
        self.snapshots
            .put(super::kv_key(org), bytes.into())
            .map_ok(|_| ())
            .map_err(unavailable)
            .boxed()
    }
}
