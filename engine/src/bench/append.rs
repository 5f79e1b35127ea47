//! `quartermaster bench append`: command throughput and latency on JetStream against raw
//! pipelined publishes with the same headers, and the cost of long histories.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::message::PublishMessage;
use futures::future::join_all;
use qm_proto::*;
use serde::Serialize;

use crate::handler::{Engine, EngineConfig, Request};
use crate::log::EventLog;
use crate::log::jetstream::JetStreamLog;
use crate::org::Command;
use crate::sealing::{KvKeyStore, MasterKey, Sealer, Secret};

use super::{median, percentile_us};

#[derive(Debug, Clone)]
pub struct AppendBench {
    pub nats_url: String,
    pub orgs: usize,
    pub in_flight: usize,
    pub count: usize,
    /// Commits in the long history of `long_history_ratio`.
    pub long_history: usize,
    /// Commands timed one at a time for the latency percentiles.
    pub latency_samples: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct AppendReport {
    pub command: &'static str,
    pub count: usize,
    pub orgs: usize,
    pub in_flight: usize,
    pub payload_bytes: usize,
    pub ops_per_s: f64,
    pub raw_ops_per_s: f64,
    pub ratio: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub raw_p50_us: f64,
    pub raw_p99_us: f64,
    pub long_history_events: usize,
    pub long_history_warm_ratio: f64,
    pub long_history_cold_ratio: f64,
    pub long_history_ratio: f64,
}

/// A run's own stream and buckets, so benchmarks never touch a real log; removed afterwards.
struct Scratch {
    js: async_nats::jetstream::Context,
    names: Vec<String>,
}

impl Scratch {
    async fn remove(self) {
        for name in self.names {
            let _ = self.js.delete_stream(&name).await;
        }
    }
}

pub async fn run(bench: AppendBench) -> anyhow::Result<AppendReport> {
    let (tag, config) = super::scratch_config();
    let log = Arc::new(JetStreamLog::connect(&bench.nats_url, config.clone()).await?);
    let keys_bucket = format!("QM_BENCH_KEYS_{tag}");
    let keys = Arc::new(KvKeyStore::open(log.context(), &keys_bucket, 1).await?);
    let scratch = Scratch {
        js: log.context().clone(),
        names: vec![
            config.stream.clone(),
            format!("KV_{}", config.snapshot_bucket),
            format!("KV_{keys_bucket}"),
            format!("QM_BENCH_RAW_{tag}"),
        ],
    };
    let sealer = Arc::new(Sealer::new(MasterKey::generate(), keys));
    let engine = Arc::new(Engine::new(log.clone(), sealer.clone(), EngineConfig::default()));
    let result = measure(&bench, &tag, &log, &engine, &sealer).await;
    scratch.remove().await;
    result
}

async fn measure(
    bench: &AppendBench,
    tag: &str,
    log: &Arc<JetStreamLog>,
    engine: &Arc<Engine>,
    sealer: &Arc<Sealer>,
) -> anyhow::Result<AppendReport> {
    let orgs: Vec<OrgId> = (0..bench.orgs).map(|i| id(&format!("org{i}"))).collect();
    for chunk in orgs.chunks(bench.in_flight.max(1)) {
        let setups = chunk.iter().map(|org| setup_org(engine, org));
        join_all(setups).await.into_iter().collect::<anyhow::Result<Vec<_>>>()?;
    }
    let payload_bytes = toggle_commit_size(engine, &orgs[0]).await?;

    let raw_ops_per_s = raw_publish(log, tag, bench, payload_bytes).await?;
    let ops_per_s = engine_throughput(engine, &orgs, bench).await?;
    let (p50_us, p99_us) = engine_latency(engine, &orgs[0], bench.latency_samples).await?;
    let (raw_p50_us, raw_p99_us) =
        raw_latency(log, tag, bench.latency_samples, payload_bytes).await?;
    let (warm, cold) = long_history(log, engine, sealer, bench.long_history).await?;

    Ok(AppendReport {
        command: "SuspendGrant/ResumeGrant",
        count: bench.count,
        orgs: bench.orgs,
        in_flight: bench.in_flight,
        payload_bytes,
        ops_per_s,
        raw_ops_per_s,
        ratio: ops_per_s / raw_ops_per_s,
        p50_us,
        p99_us,
        raw_p50_us,
        raw_p99_us,
        long_history_events: bench.long_history,
        long_history_warm_ratio: warm,
        long_history_cold_ratio: cold,
        long_history_ratio: warm.max(cold),
    })
}

pub(crate) fn id<T: std::str::FromStr>(raw: &str) -> T
where
    T::Err: std::fmt::Debug,
{
    raw.parse().expect("benchmark ids are valid")
}

fn admin() -> Actor {
    Actor::Person(id("admin"))
}

/// An organization with one active grant `g`, which the benchmark suspends and resumes.
async fn setup_org(engine: &Engine, org: &OrgId) -> anyhow::Result<()> {
    let run =
        |actor: Actor, command: Command| engine.execute(Request::new(org.clone(), actor, command));
    run(
        admin(),
        Command::CreateOrganization {
            name: format!("Bench {org}"),
            admin_email: "admin@bench.example".into(),
            admin_display_name: "Admin".into(),
        },
    )
    .await?;
    run(admin(), Command::CreateTeam { team: id("eng"), name: "Engineering".into() }).await?;
    run(admin(), Command::AddTeamMember { team: id("eng"), person: id("admin") }).await?;
    let credentials = engine.seal_credentials(org, &id("crm"), &Secret::new("bench-token")).await?;
    run(
        admin(),
        Command::AddIntegratedApp {
            app: id("crm"),
            catalog_app: "custom-scim".into(),
            display_name: "CRM".into(),
            base_url: "https://scim.bench.example/v2".into(),
            credentials,
            seat_limit: Some(10),
        },
    )
    .await?;
    let service = Actor::Service("provisioner".into());
    run(service.clone(), Command::RecordAppAuthorized { app: id("crm") }).await?;
    run(admin(), Command::ProvisionUser { app: id("crm"), person: id("admin"), grant: id("g") })
        .await?;
    let account = ExternalAccount { id: "u-1".into(), user_name: "admin".into(), open_url: None };
    run(service, Command::RecordAccountProvisioned { grant: id("g"), account }).await?;
    Ok(())
}

fn toggle(suspended: bool) -> Command {
    if suspended {
        Command::ResumeGrant { grant: id("g") }
    } else {
        Command::SuspendGrant { grant: id("g") }
    }
}

/// The size of one benchmark commit as written, for the raw baseline's payloads.
async fn toggle_commit_size(engine: &Engine, org: &OrgId) -> anyhow::Result<usize> {
    let first = engine.execute(Request::new(org.clone(), admin(), toggle(false))).await?;
    engine.execute(Request::new(org.clone(), admin(), toggle(true))).await?;
    let recorded = engine
        .log()
        .read_at(first.position)
        .await?
        .ok_or_else(|| anyhow::anyhow!("commit vanished"))?;
    Ok(recorded.commit.encode().len())
}

/// Raw JetStream: `in_flight` publishers, each owning some subjects, each publish carrying a
/// message id and the expected last subject sequence, as the engine's appends do.
pub(crate) async fn raw_publish(
    log: &JetStreamLog,
    tag: &str,
    bench: &AppendBench,
    payload_bytes: usize,
) -> anyhow::Result<f64> {
    let js = log.context().clone();
    let stream = format!("QM_BENCH_RAW_{tag}");
    js.create_stream(async_nats::jetstream::stream::Config {
        name: stream,
        subjects: vec![format!("qmraw.{tag}.>")],
        allow_direct: true,
        discard: async_nats::jetstream::stream::DiscardPolicy::New,
        duplicate_window: Duration::from_secs(300),
        ..Default::default()
    })
    .await?;
    let payload = bytes::Bytes::from(vec![0x5a; payload_bytes]);
    let per_worker = bench.count / bench.in_flight;
    let started = Instant::now();
    let workers = (0..bench.in_flight).map(|w| {
        let (js, payload, tag) = (js.clone(), payload.clone(), tag.to_string());
        let subjects: Vec<usize> = (w..bench.orgs).step_by(bench.in_flight).collect();
        tokio::spawn(async move {
            let subjects =
                if subjects.is_empty() { vec![bench_orgs_overflow(w)] } else { subjects };
            let mut last = vec![0u64; subjects.len()];
            for i in 0..per_worker {
                let s = i % subjects.len();
                let publish = PublishMessage::build()
                    .payload(payload.clone())
                    .message_id(format!("{w}-{i}"))
                    .expected_last_subject_sequence(last[s]);
                let ack = js
                    .send_publish(format!("qmraw.{tag}.org.{}", subjects[s]), publish)
                    .await?
                    .await?;
                last[s] = ack.sequence;
            }
            anyhow::Ok(())
        })
    });
    for worker in join_all(workers).await {
        worker??;
    }
    Ok((per_worker * bench.in_flight) as f64 / started.elapsed().as_secs_f64())
}

/// A subject for a worker that owns no organization (more workers than organizations).
fn bench_orgs_overflow(worker: usize) -> usize {
    1_000_000 + worker
}

async fn engine_throughput(
    engine: &Arc<Engine>,
    orgs: &[OrgId],
    bench: &AppendBench,
) -> anyhow::Result<f64> {
    let per_worker = bench.count / bench.in_flight;
    let started = Instant::now();
    let workers = (0..bench.in_flight).map(|w| {
        let engine = engine.clone();
        let mine: Vec<OrgId> = orgs.iter().skip(w).step_by(bench.in_flight).cloned().collect();
        tokio::spawn(async move {
            anyhow::ensure!(!mine.is_empty(), "more workers than organizations");
            let mut suspended = vec![false; mine.len()];
            for i in 0..per_worker {
                let o = i % mine.len();
                engine
                    .execute(Request::new(mine[o].clone(), admin(), toggle(suspended[o])))
                    .await?;
                suspended[o] = !suspended[o];
            }
            anyhow::Ok(())
        })
    });
    for worker in join_all(workers).await {
        worker??;
    }
    Ok((per_worker * bench.in_flight) as f64 / started.elapsed().as_secs_f64())
}

/// One command at a time on one organization.
async fn engine_latency(
    engine: &Engine,
    org: &OrgId,
    samples: usize,
) -> anyhow::Result<(f64, f64)> {
    let state = engine.org_state(org).await?;
    let mut suspended = state.grants.values().any(|g| g.state == crate::org::GrantState::Suspended);
    let mut took = Vec::with_capacity(samples);
    for _ in 0..samples {
        let started = Instant::now();
        engine.execute(Request::new(org.clone(), admin(), toggle(suspended))).await?;
        took.push(started.elapsed());
        suspended = !suspended;
    }
    took.sort();
    Ok((percentile_us(&took, 0.5), percentile_us(&took, 0.99)))
}

async fn raw_latency(
    log: &JetStreamLog,
    tag: &str,
    samples: usize,
    payload_bytes: usize,
) -> anyhow::Result<(f64, f64)> {
    let js = log.context();
    let payload = bytes::Bytes::from(vec![0x5a; payload_bytes]);
    let mut last = 0;
    let mut took = Vec::with_capacity(samples);
    for i in 0..samples {
        let started = Instant::now();
        let publish = PublishMessage::build()
            .payload(payload.clone())
            .message_id(format!("lat-{i}"))
            .expected_last_subject_sequence(last);
        last = js.send_publish(format!("qmraw.{tag}.latency"), publish).await?.await?.sequence;
        took.push(started.elapsed());
    }
    took.sort();
    Ok((percentile_us(&took, 0.5), percentile_us(&took, 0.99)))
}

/// Command latency on an organization with a long history over one with a short one: warm
/// (cached aggregates), and cold (a fresh engine: snapshot plus tail).
async fn long_history(
    log: &Arc<JetStreamLog>,
    engine: &Arc<Engine>,
    sealer: &Arc<Sealer>,
    events: usize,
) -> anyhow::Result<(f64, f64)> {
    let (long, short): (OrgId, OrgId) = (id("long-history"), id("short-history"));
    setup_org(engine, &long).await?;
    setup_org(engine, &short).await?;
    fill(log, &long, events).await?;
    // Three more commits on the short organization: ten in all.
    for suspended in [false, true, false] {
        engine.execute(Request::new(short.clone(), admin(), toggle(suspended))).await?;
    }

    // Warm: both cached; the long one is caught up once, as any instance would be.
    let mut flags = [
        engine
            .org_state(&long)
            .await?
            .grants
            .values()
            .any(|g| g.state == crate::org::GrantState::Suspended),
        engine
            .org_state(&short)
            .await?
            .grants
            .values()
            .any(|g| g.state == crate::org::GrantState::Suspended),
    ];
    let mut samples = [Vec::new(), Vec::new()];
    for _ in 0..300 {
        for (k, org) in [&long, &short].into_iter().enumerate() {
            let started = Instant::now();
            engine.execute(Request::new(org.clone(), admin(), toggle(flags[k]))).await?;
            samples[k].push(started.elapsed());
            flags[k] = !flags[k];
        }
    }
    let warm = median(&mut samples[0]).as_secs_f64() / median(&mut samples[1]).as_secs_f64();

    // Cold: the snapshot of the long organization is written by the commands above; wait for it.
    let deadline = Instant::now() + Duration::from_secs(10);
    while log.load_snapshot(&long).await?.is_none() {
        anyhow::ensure!(Instant::now() < deadline, "no snapshot of the long history was saved");
        tokio::task::yield_now().await;
    }
    let mut samples = [Vec::new(), Vec::new()];
    for _ in 0..40 {
        for (k, org) in [&long, &short].into_iter().enumerate() {
            let fresh = Engine::new(log.clone(), sealer.clone(), EngineConfig::default());
            let started = Instant::now();
            fresh.execute(Request::new(org.clone(), admin(), toggle(flags[k]))).await?;
            samples[k].push(started.elapsed());
            flags[k] = !flags[k];
        }
    }
    let cold = median(&mut samples[0]).as_secs_f64() / median(&mut samples[1]).as_secs_f64();
    Ok((warm, cold))
}

/// Appends `events` valid suspend/resume commits to `org`, pipelined, as one writer.
async fn fill(log: &JetStreamLog, org: &OrgId, events: usize) -> anyhow::Result<()> {
    let subject = crate::log::org_subject(&log.config().subject_prefix, org);
    let history = log.read_org(org, 0).await?;
    let mut prev = history.last().map(|c| c.hash).unwrap_or(GENESIS_HASH);
    let mut suspended = false;
    let mut pending = Vec::new();
    for i in 0..events {
        let commit = Commit {
            schema_version: SCHEMA_VERSION,
            org: org.clone(),
            event_id: uuid::Uuid::now_v7().as_u128(),
            recorded_at: Timestamp::now(),
            actor: admin(),
            command_id: id(&format!("fill-{i}")),
            correlation_id: format!("fill-{i}"),
            causation_id: None,
            prev_hash: prev,
            events: vec![if suspended {
                Event::GrantResumed(GrantResumed { grant: id("g") })
            } else {
                Event::GrantSuspended(GrantSuspended { grant: id("g") })
            }],
        };
        suspended = !suspended;
        let bytes = commit.encode();
        prev = commit_hash(&bytes);
        let publish =
            PublishMessage::build().payload(bytes.into()).message_id(format!("fill-{org}-{i}"));
        pending.push(log.context().send_publish(subject.clone(), publish).await?);
        if pending.len() >= 4096 {
            for ack in pending.drain(..) {
                ack.await?;
            }
        }
    }
    for ack in pending {
        ack.await?;
    }
    Ok(())
}
