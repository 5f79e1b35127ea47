//! `quartermaster bench projection`: catch-up, rebuild, read-your-writes latency and query
//! latency of the read side, beside a raw ordered replay and raw redb inserts of the same size.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::consumer::pull::OrderedConfig;
use futures::StreamExt;
use qm_projections::PageRequest;
use qm_proto::*;
use redb::{Database, TableDefinition};
use serde::Serialize;

use super::history::{Synthetic, publish};
use super::percentile_us;
use crate::handler::{Engine, EngineConfig, Request};
use crate::log::EventLog;
use crate::log::jetstream::JetStreamLog;
use crate::org::Command;
use crate::read_side::ReadSide;
use crate::sealing::{KvKeyStore, MasterKey, Sealer};

#[derive(Debug, Clone)]
pub struct ProjectionBench {
    pub nats_url: String,
    pub events: usize,
    pub orgs: usize,
    pub queries: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct ProjectionReport {
    pub events: usize,
    pub commits: usize,
    /// Events applied per second, following the log from position 0 into empty views.
    pub catchup_per_s: f64,
    /// Messages per second through an ordered consumer alone, same stream, same run.
    pub raw_replay_per_s: f64,
    /// Rows per second, inserted into a fresh redb file in write transactions of the
    /// projector's largest batch.
    pub raw_redb_per_s: f64,
    pub catchup_ratio_to_raw_replay: f64,
    pub rebuild_s: f64,
    pub ack_to_visible_p50_us: f64,
    pub ack_to_visible_p99_us: f64,
    pub query_p99_us: f64,
    pub launchpad_p99_us: f64,
    pub who_has_access_p99_us: f64,
    /// Resident set size once the catch-up is done, after the rebuild's swap, and at the end.
    pub rss_after_catchup_mb: f64,
    pub rss_after_rebuild_mb: f64,
    pub rss_mb: f64,
    /// The most this process held resident at any point of the run, publishing included.
    pub peak_rss_mb: f64,
}

pub async fn run(bench: ProjectionBench) -> anyhow::Result<ProjectionReport> {
    let (tag, config) = super::scratch_config();
    let log = Arc::new(JetStreamLog::connect(&bench.nats_url, config.clone()).await?);
    let keys_bucket = format!("QM_BENCH_KEYS_{tag}");
    let dir = tempfile::tempdir()?;
    let result = measure(&bench, &tag, &log, &keys_bucket, dir.path()).await;
    for name in [
        config.stream.clone(),
        format!("KV_{}", config.snapshot_bucket),
        format!("KV_{keys_bucket}"),
    ] {
        let _ = log.context().delete_stream(&name).await;
    }
    result
}

async fn measure(
    bench: &ProjectionBench,
    tag: &str,
    log: &Arc<JetStreamLog>,
    keys_bucket: &str,
    dir: &std::path::Path,
) -> anyhow::Result<ProjectionReport> {
    let mut history = Synthetic::new(&format!("b{tag}"), bench.orgs);
    tracing::info!(events = bench.events, "publishing a synthetic history");
    let commits = publish(log, &mut history, bench.events).await?;
    let head = log.head().await?;

    tracing::info!("measuring a raw ordered replay and raw redb inserts");
    let raw_replay_per_s = raw_replay(log, head).await?;
    let raw_redb_per_s = raw_redb(&dir.join("raw.redb"), bench.events)?;

    tracing::info!("measuring catch-up");
    let started = Instant::now();
    let read_side = ReadSide::start(log.clone(), &dir.join("views"))?;
    read_side.projector().wait_for(head, Duration::from_secs(600)).await?;
    let catchup_per_s = bench.events as f64 / started.elapsed().as_secs_f64();
    let rss_after_catchup_mb = rss_mb("VmRSS");

    tracing::info!("measuring a rebuild");
    let rebuild = read_side.rebuild(|_| {}).await?;
    let rebuild_s = rebuild.elapsed.as_secs_f64();
    let rss_after_rebuild_mb = rss_mb("VmRSS");

    let keys = Arc::new(KvKeyStore::open(log.context(), keys_bucket, 1).await?);
    let engine = Engine::new(
        log.clone(),
        Arc::new(Sealer::new(MasterKey::generate(), keys)),
        EngineConfig::default(),
    );
    tracing::info!("measuring acknowledgement to visibility and queries");
    let (ack_p50, ack_p99) = ack_to_visible(&engine, &read_side, 1000).await?;

    let orgs: Vec<OrgId> = history.org_ids().cloned().collect();
    let (launchpad_p99_us, who_has_access_p99_us, query_p99_us) =
        queries(&read_side, &orgs, bench.queries)?;

    Ok(ProjectionReport {
        events: bench.events,
        commits,
        catchup_per_s,
        raw_replay_per_s,
        raw_redb_per_s,
        catchup_ratio_to_raw_replay: catchup_per_s / raw_replay_per_s,
        rebuild_s,
        ack_to_visible_p50_us: ack_p50,
        ack_to_visible_p99_us: ack_p99,
        query_p99_us,
        launchpad_p99_us,
        who_has_access_p99_us,
        rss_after_catchup_mb,
        rss_after_rebuild_mb,
        rss_mb: rss_mb("VmRSS"),
        peak_rss_mb: rss_mb("VmHWM"),
    })
}

/// An ordered consumer over the whole stream, messages counted and dropped.
async fn raw_replay(log: &JetStreamLog, head: Position) -> anyhow::Result<f64> {
    let stream = log.context().get_stream(&log.config().stream).await?;
    let started = Instant::now();
    let consumer = stream.create_consumer(OrderedConfig::default()).await?;
    let mut messages = consumer.messages().await?;
    let mut count = 0u64;
    while let Some(message) = messages.next().await {
        let message = message?;
        count += 1;
        if message.info().map_err(|e| anyhow::anyhow!("{e}"))?.stream_sequence >= head {
            break;
        }
    }
    Ok(count as f64 / started.elapsed().as_secs_f64())
}

/// `rows` rows of about a view row's size, in write transactions as large as the projector's
/// and with the same cache.
fn raw_redb(path: &std::path::Path, rows: usize) -> anyhow::Result<f64> {
    const TABLE: TableDefinition<u64, &[u8]> = TableDefinition::new("rows");
    let db = Database::builder().set_cache_size(qm_projections::CACHE_BYTES).create(path)?;
    let value = [0x5au8; 120];
    let started = Instant::now();
    let batch = qm_projections::MAX_BATCH as u64;
    for first in (0..rows as u64).step_by(batch as usize) {
        let write = db.begin_write()?;
        {
            let mut table = write.open_table(TABLE)?;
            for key in first..(first + batch).min(rows as u64) {
                table.insert(key, value.as_slice())?;
            }
        }
        write.commit()?;
    }
    Ok(rows as f64 / started.elapsed().as_secs_f64())
}

/// From a command's acknowledgement until a query with its position answers.
async fn ack_to_visible(
    engine: &Engine,
    read_side: &ReadSide,
    samples: usize,
) -> anyhow::Result<(f64, f64)> {
    let org: OrgId = "ack-to-visible".parse().expect("a valid id");
    let admin = Actor::Person("admin".parse().expect("a valid id"));
    let create = Command::CreateOrganization {
        name: "Ack to visible".into(),
        admin_email: "admin@bench.example".into(),
        admin_display_name: "Admin".into(),
    };
    engine.execute(Request::new(org.clone(), admin.clone(), create)).await?;
    let mut took = Vec::with_capacity(samples);
    for i in 0..samples {
        let team: TeamId = format!("t{i}").parse().expect("a valid id");
        let done = engine
            .execute(Request::new(
                org.clone(),
                admin.clone(),
                Command::CreateTeam { team, name: "T".into() },
            ))
            .await?;
        let acked = Instant::now();
        read_side.views(done.position, Duration::from_secs(10)).await?;
        took.push(acked.elapsed());
    }
    took.sort();
    Ok((percentile_us(&took, 0.5), percentile_us(&took, 0.99)))
}

/// Launchpad and who-has-access queries, one thread, over random organizations and people.
fn queries(read_side: &ReadSide, orgs: &[OrgId], count: usize) -> anyhow::Result<(f64, f64, f64)> {
    let crm: AppId = "crm".parse().expect("a valid id");
    let page = PageRequest::default();
    let (mut launchpad, mut access) =
        (Vec::with_capacity(count / 2), Vec::with_capacity(count / 2));
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    for i in 0..count {
        // xorshift: cheap, deterministic spread over organizations and people.
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let org = &orgs[(seed % orgs.len() as u64) as usize];
        let started = Instant::now();
        let views = read_side.projector().views()?;
        if i % 2 == 0 {
            let person: PersonId =
                format!("{org}-p{}", (seed >> 32) % 64).parse().expect("a valid id");
            views.launchpad(&person, &page)?;
            launchpad.push(started.elapsed());
        } else {
            views.who_has_access(org, &crm, &page)?;
            access.push(started.elapsed());
        }
    }
    launchpad.sort();
    access.sort();
    let mut all: Vec<Duration> = launchpad.iter().chain(&access).copied().collect();
    all.sort();
    Ok((percentile_us(&launchpad, 0.99), percentile_us(&access, 0.99), percentile_us(&all, 0.99)))
}

/// A memory figure of this process from `/proc/self/status` (`VmRSS`, the resident set now;
/// `VmHWM`, its peak), in MiB (Linux; 0 elsewhere).
fn rss_mb(field: &str) -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}
