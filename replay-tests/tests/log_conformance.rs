//! The event log contract, checked against every backend: the embedded log, JetStream on one
//! node (R1), and JetStream on a three-node cluster (R3).

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, ensure};
use futures::StreamExt;
use qm_engine::log::embedded::EmbeddedLog;
use qm_engine::log::jetstream::{JetStreamConfig, JetStreamLog, OpenError};
use qm_engine::log::{AppendError, EventLog};
use qm_proto::*;
use qm_replay_tests::fixtures::{commit, id};
use qm_replay_tests::nats::{NatsCluster, NatsServer};

/// Runs every case of the contract against `log`, naming the case that fails.
async fn conformance(log: Arc<dyn EventLog>) -> anyhow::Result<()> {
    appends_chain_and_read_back(&*log).await.context("appends_chain_and_read_back")?;
    stale_expectations_conflict(&*log).await.context("stale_expectations_conflict")?;
    a_command_id_is_written_once(&*log).await.context("a_command_id_is_written_once")?;
    one_of_concurrent_appends_wins(log.clone()).await.context("one_of_concurrent_appends_wins")?;
    long_histories_read_in_full(&*log).await.context("long_histories_read_in_full")?;
    subscriptions_see_everything_in_order(&*log)
        .await
        .context("subscriptions_see_everything_in_order")?;
    snapshots_round_trip(&*log).await.context("snapshots_round_trip")?;
    Ok(())
}

async fn append(
    log: &dyn EventLog,
    org: &str,
    expected: Position,
    cmd: &str,
    prev: Hash,
) -> anyhow::Result<Position> {
    let appended =
        log.append(&id(org), expected, &id(cmd), commit(org, cmd, prev).encode()).await?;
    ensure!(!appended.duplicate, "{cmd} was reported as a duplicate");
    Ok(appended.position)
}

async fn appends_chain_and_read_back(log: &dyn EventLog) -> anyhow::Result<()> {
    let first = append(log, "c1-a", 0, "c1-1", GENESIS_HASH).await?;
    let other = append(log, "c1-b", 0, "c1-2", GENESIS_HASH).await?;
    let history = log.read_org(&id("c1-a"), 0).await?;
    ensure!(history.len() == 1 && history[0].position == first, "read {history:?}");
    let second = append(log, "c1-a", first, "c1-3", history[0].hash).await?;
    ensure!(first < other && other < second, "positions grow: {first} {other} {second}");

    let history = log.read_org(&id("c1-a"), 0).await?;
    ensure!(history.iter().map(|c| c.position).collect::<Vec<_>>() == vec![first, second]);
    ensure!(verify_chain(&history)? == 2);
    ensure!(history[1].hash == commit_hash(&commit("c1-a", "c1-3", history[0].hash).encode()));
    let tail = log.read_org(&id("c1-a"), first).await?;
    ensure!(tail.len() == 1 && tail[0].position == second, "tail after {first}: {tail:?}");
    ensure!(log.read_org(&id("c1-a"), second).await?.is_empty());
    ensure!(log.read_org(&id("c1-none"), 0).await?.is_empty());

    let at = log.read_at(other).await?.context("commit at its position")?;
    ensure!(at.commit.org == id::<OrgId>("c1-b"));
    ensure!(log.read_at(second + 1000).await?.is_none());
    ensure!(log.head().await? >= second);
    Ok(())
}

async fn stale_expectations_conflict(log: &dyn EventLog) -> anyhow::Result<()> {
    let first = append(log, "c2", 0, "c2-1", GENESIS_HASH).await?;
    let again =
        log.append(&id("c2"), 0, &id("c2-2"), commit("c2", "c2-2", GENESIS_HASH).encode()).await;
    ensure!(matches!(again, Err(AppendError::Conflict { .. })), "create twice gave {again:?}");
    let prev = log.read_org(&id("c2"), 0).await?[0].hash;
    append(log, "c2", first, "c2-3", prev).await?;
    let stale =
        log.append(&id("c2"), first, &id("c2-4"), commit("c2", "c2-4", prev).encode()).await;
    ensure!(matches!(stale, Err(AppendError::Conflict { .. })), "stale append gave {stale:?}");
    ensure!(log.read_org(&id("c2"), 0).await?.len() == 2, "a conflict writes nothing");
    Ok(())
}

async fn a_command_id_is_written_once(log: &dyn EventLog) -> anyhow::Result<()> {
    let first = append(log, "c3", 0, "c3-1", GENESIS_HASH).await?;
    // The same command sent again, as after a lost acknowledgement. With the same expectation,
    // the log may answer either way: a duplicate, or a conflict (the first write moved the
    // organization on); the handler resolves both. It never writes it twice.
    let bytes = commit("c3", "c3-1", GENESIS_HASH).encode();
    match log.append(&id("c3"), 0, &id("c3-1"), bytes.clone()).await {
        Ok(again) => {
            ensure!(again.duplicate && again.position == first, "second send gave {again:?}")
        }
        Err(AppendError::Conflict { .. }) => {}
        Err(e) => return Err(e.into()),
    }
    // With an expectation that still holds, the id alone must stop it.
    let again = log.append(&id("c3"), first, &id("c3-1"), bytes).await?;
    ensure!(again.duplicate && again.position == first, "third send gave {again:?}");
    ensure!(log.read_org(&id("c3"), 0).await?.len() == 1, "nothing written twice");
    Ok(())
}

async fn one_of_concurrent_appends_wins(log: Arc<dyn EventLog>) -> anyhow::Result<()> {
    let mut tasks = Vec::new();
    for i in 0..8 {
        let log = log.clone();
        tasks.push(tokio::spawn(async move {
            let cmd = format!("c4-{i}");
            log.append(&id("c4"), 0, &id(&cmd), commit("c4", &cmd, GENESIS_HASH).encode()).await
        }));
    }
    let mut won = 0;
    for task in tasks {
        match task.await? {
            Ok(_) => won += 1,
            Err(AppendError::Conflict { .. }) => {}
            Err(e) => return Err(e.into()),
        }
    }
    ensure!(won == 1, "{won} concurrent creations won");
    ensure!(log.read_org(&id("c4"), 0).await?.len() == 1);
    Ok(())
}

async fn long_histories_read_in_full(log: &dyn EventLog) -> anyhow::Result<()> {
    // More than one batch of the JetStream backend's batched reads, interleaved with another org.
    let (mut position, mut prev) = (0, GENESIS_HASH);
    for i in 0..2100 {
        let cmd = format!("c5-{i}");
        position = append(log, "c5", position, &cmd, prev).await?;
        prev = commit_hash(&commit("c5", &cmd, prev).encode());
        if i % 500 == 0 {
            append(log, &format!("c5-other-{i}"), 0, &format!("c5-o-{i}"), GENESIS_HASH).await?;
        }
    }
    let history = log.read_org(&id("c5"), 0).await?;
    ensure!(history.len() == 2100, "read {} of 2100", history.len());
    ensure!(verify_chain(&history)? == 2100);
    Ok(())
}

async fn subscriptions_see_everything_in_order(log: &dyn EventLog) -> anyhow::Result<()> {
    let head = log.head().await?;
    let mut all = log.subscribe(0);
    let mut seen = Vec::new();
    while seen.last().copied().unwrap_or(0) < head {
        let next = tokio::time::timeout(Duration::from_secs(10), all.next())
            .await?
            .context("stream ended")??;
        seen.push(next.position);
    }
    ensure!(seen.windows(2).all(|w| w[0] < w[1]), "positions in order");

    let mut live = log.subscribe(head);
    let landed = append(log, "c6", 0, "c6-1", GENESIS_HASH).await?;
    let next = tokio::time::timeout(Duration::from_secs(10), live.next())
        .await?
        .context("stream ended")??;
    ensure!(next.position == landed, "live commit {} vs {landed}", next.position);
    Ok(())
}

async fn snapshots_round_trip(log: &dyn EventLog) -> anyhow::Result<()> {
    ensure!(log.load_snapshot(&id("c7")).await?.is_none());
    log.save_snapshot(&id("c7"), vec![1, 2, 3]).await?;
    log.save_snapshot(&id("c7"), vec![4, 5]).await?;
    ensure!(log.load_snapshot(&id("c7")).await? == Some(vec![4, 5]));
    Ok(())
}

#[tokio::test]
async fn the_embedded_log_keeps_the_contract() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    conformance(Arc::new(EmbeddedLog::open(dir.path().join("log.redb"))?)).await
}

#[tokio::test]
async fn the_embedded_log_survives_reopening() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("log.redb");
    let first = {
        let log = EmbeddedLog::open(&path)?;
        let appended =
            log.append(&id("r"), 0, &id("r-1"), commit("r", "r-1", GENESIS_HASH).encode()).await?;
        appended.position
    };
    let log = EmbeddedLog::open(&path)?;
    ensure!(log.head().await? == first);
    ensure!(log.read_org(&id("r"), 0).await?.len() == 1);
    let again =
        log.append(&id("r"), 0, &id("r-1"), commit("r", "r-1", GENESIS_HASH).encode()).await?;
    ensure!(again.duplicate);
    Ok(())
}

#[tokio::test]
async fn jetstream_r1_keeps_the_contract() -> anyhow::Result<()> {
    let server = NatsServer::start().await?;
    let log = JetStreamLog::connect(&server.url(), JetStreamConfig::default()).await?;
    conformance(Arc::new(log)).await
}

#[tokio::test]
async fn jetstream_r3_keeps_the_contract() -> anyhow::Result<()> {
    let cluster = NatsCluster::start().await?;
    let config = JetStreamConfig { replicas: 3, ..JetStreamConfig::default() };
    let log = JetStreamLog::connect(&cluster.urls(), config).await?;
    conformance(Arc::new(log)).await
}

#[tokio::test]
async fn an_existing_stream_with_other_settings_is_reported_not_changed() -> anyhow::Result<()> {
    let server = NatsServer::start().await?;
    let client = async_nats::connect(server.url()).await?;
    let js = async_nats::jetstream::new(client.clone());
    js.create_stream(async_nats::jetstream::stream::Config {
        name: "QM_EVENTS".into(),
        subjects: vec!["qm.ev.>".into()],
        max_age: Duration::from_secs(3600),
        ..Default::default()
    })
    .await?;
    let err = JetStreamLog::open(client, JetStreamConfig::default()).await.unwrap_err();
    let OpenError::StreamMismatch { differences, .. } = &err else { anyhow::bail!("got {err}") };
    let text = differences.join("; ");
    for setting in ["discard", "deny_delete", "deny_purge", "allow_direct", "max_age"] {
        ensure!(text.contains(setting), "{setting} missing from: {text}");
    }
    let info = js.get_stream("QM_EVENTS").await?.cached_info().config.clone();
    ensure!(
        !info.deny_delete && info.max_age == Duration::from_secs(3600),
        "the stream was left as it was"
    );
    Ok(())
}
