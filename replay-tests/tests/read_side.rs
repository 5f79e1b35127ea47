//! The read side on JetStream: read-your-writes, resuming after nats-server restarts, and
//! rebuilds under load.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, ensure};
use qm_engine::handler::Request;
use qm_engine::org::Command;
use qm_engine::read_side::{ReadSide, ReadSideError};
use qm_projections::PageRequest;
use qm_proto::*;
use qm_replay_tests::fixtures::*;
use qm_replay_tests::nats::NatsServer;

const DEADLINE: Duration = Duration::from_secs(5);

fn add_member(i: usize) -> Command {
    Command::AddMember {
        person: id(&format!("m{i}")),
        email: format!("m{i}@example.com"),
        display_name: format!("Member {i}"),
        role: Role::Member,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_with_the_commands_position_always_sees_the_command() -> anyhow::Result<()> {
    let server = NatsServer::start().await?;
    let (engine, log) = jetstream_engine(&server.url(), 1).await?;
    let dir = tempfile::tempdir()?;
    let read_side = ReadSide::start(log, dir.path())?;
    standard_org(&engine, "ryw", 0, None, "t").await?;
    let org: OrgId = id("ryw");

    let mut misses = 0;
    for i in 0..1000 {
        let done = run(&engine, "ryw", &person("admin"), add_member(i)).await?;
        let views = read_side.views(done.position, DEADLINE).await?;
        if views.member(&org, &id(&format!("m{i}")))?.is_none() {
            misses += 1;
        }
    }
    ensure!(misses == 0, "{misses} of 1000 reads missed their own write");
    Ok(())
}

#[tokio::test]
async fn a_position_not_reached_in_time_is_reported_with_the_current_one() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (_engine, log) = embedded_engine(dir.path())?;
    let read_side = ReadSide::start(log, &dir.path().join("views"))?;
    let err = read_side.views(1_000, Duration::from_millis(50)).await.unwrap_err();
    let ReadSideError::NotYetApplied(not_yet) = err else { anyhow::bail!("got {err}") };
    ensure!(not_yet.wanted == 1_000 && not_yet.current == 0);
    ensure!(not_yet.to_string().contains("reached position 0, not 1000"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_views_resume_by_themselves_after_nats_server_restarts() -> anyhow::Result<()> {
    let mut server = NatsServer::start().await?;
    let (engine, log) = jetstream_engine(&server.url(), 1).await?;
    let dir = tempfile::tempdir()?;
    let read_side = ReadSide::start(log, dir.path())?;
    let before = standard_org(&engine, "resume", 1, None, "t").await?;
    read_side.views(before, DEADLINE).await?;

    server.restart().await?;
    // The client reconnects on its own; commands fail until it has, then land again.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let done = loop {
        match run(&engine, "resume", &person("admin"), add_member(1)).await {
            Ok(done) => break done,
            Err(e) if std::time::Instant::now() < deadline => {
                tracing::debug!(error = %e, "waiting for the connection to come back");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => return Err(e),
        }
    };
    let views = read_side
        .views(done.position, Duration::from_secs(20))
        .await
        .context("views after restart")?;
    ensure!(views.member(&id("resume"), &id("m1"))?.is_some());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebuild_under_load_keeps_serving_and_includes_every_acknowledged_command()
-> anyhow::Result<()> {
    let server = NatsServer::start().await?;
    let (engine, log) = jetstream_engine(&server.url(), 1).await?;
    let engine = Arc::new(engine);
    let dir = tempfile::tempdir()?;
    let read_side = ReadSide::start(log.clone(), dir.path())?;
    standard_org(&engine, "busy", 0, None, "t").await?;
    let mut history = qm_engine::bench::history::Synthetic::new("bg", 50);
    qm_engine::bench::history::publish(&log, &mut history, 20_000).await?;

    // Commands keep landing during the rebuild; queries keep answering.
    let stop = Arc::new(AtomicBool::new(false));
    let acknowledged = Arc::new(AtomicU64::new(0));
    let writer = {
        let (engine, stop, acknowledged) = (engine.clone(), stop.clone(), acknowledged.clone());
        tokio::spawn(async move {
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                let done = engine
                    .execute(Request::new(id("busy"), person("admin"), add_member(i)))
                    .await?;
                acknowledged.store(done.position, Ordering::Relaxed);
                i += 1;
            }
            anyhow::Ok(i)
        })
    };
    let reader = {
        let (read_side, stop) = (read_side.clone(), stop.clone());
        tokio::spawn(async move {
            let mut answered = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let views = read_side.views(0, DEADLINE).await?;
                views.members(&id("busy"), &PageRequest { size: 10, token: None })?;
                answered += 1;
                tokio::task::yield_now().await;
            }
            anyhow::Ok(answered)
        })
    };

    let before = {
        use qm_engine::log::EventLog;
        log.head().await?
    };
    let report = read_side.rebuild(|_| {}).await?;
    ensure!(report.done && report.applied >= before, "{report:?} should reach {before}");
    stop.store(true, Ordering::Relaxed);
    let members = writer.await??;
    let answered = reader.await??;
    ensure!(
        members > 0 && answered > 0,
        "{members} commands and {answered} queries during the rebuild"
    );

    let last = acknowledged.load(Ordering::Relaxed);
    let views = read_side.views(last, DEADLINE).await?;
    for i in 0..members {
        ensure!(
            views.member(&id("busy"), &id(&format!("m{i}")))?.is_some(),
            "m{i} missing after the swap"
        );
    }
    ensure!(
        !dir.path().join("views.redb.rebuild").exists(),
        "the rebuild file took the live one's place"
    );
    Ok(())
}
