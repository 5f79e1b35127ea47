//! Crash: SIGKILL the `quartermaster` process while it catches up on 200k events; after a
//! restart the views equal a full rebuild, so no commit was lost or applied twice.

use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, ensure};
use qm_engine::bench::history::{Synthetic, publish};
use qm_engine::log::EventLog;
use qm_engine::log::jetstream::{JetStreamConfig, JetStreamLog};
use qm_projections::Projector;
use qm_replay_tests::nats::NatsServer;
use tokio::io::AsyncReadExt;

fn catch_up(url: &str, dir: &std::path::Path) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_quartermaster"));
    command
        .args(["projections", "catch-up", "--nats-url", url, "--data-dir"])
        .arg(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    command
}

/// The last "applied/target commits" figure of a progress line.
fn applied(progress: &str) -> Option<u64> {
    let line = progress.rsplit('\r').find(|l| l.contains(" commits "))?;
    line.split_whitespace().find_map(|w| w.split_once('/').and_then(|(a, _)| a.parse().ok()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_catch_up_resumes_to_exactly_the_rebuilt_views() -> anyhow::Result<()> {
    let server = NatsServer::start().await?;
    let log = Arc::new(JetStreamLog::connect(&server.url(), JetStreamConfig::default()).await?);
    let mut history = Synthetic::new("crash", 500);
    publish(&log, &mut history, 200_000).await?;
    let head = log.head().await?;
    let dir = tempfile::tempdir()?;

    // Kill the first catch-up somewhere in the middle.
    let mut child = catch_up(&server.url(), dir.path()).spawn()?;
    let mut stderr = child.stderr.take().context("stderr is piped")?;
    let mut seen = String::new();
    let mut buf = [0u8; 4096];
    let killed_at = loop {
        let n = tokio::time::timeout(Duration::from_secs(60), stderr.read(&mut buf)).await??;
        ensure!(n > 0, "catch-up ended before it could be killed:\n{seen}");
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
        if let Some(at) = applied(&seen).filter(|a| *a > head / 10) {
            child.start_kill()?;
            break at;
        }
    };
    child.wait().await?;
    ensure!(killed_at < head, "killed at {killed_at} of {head}: too late to mean anything");
    {
        let views = Projector::open(dir.path().join("views.redb"))?;
        ensure!(views.position() < head, "the killed process had not finished");
    }

    // Restart it, to the end.
    let status = catch_up(&server.url(), dir.path()).stderr(Stdio::null()).status().await?;
    ensure!(status.success(), "second catch-up failed: {status}");

    let resumed = Projector::open(dir.path().join("views.redb"))?;
    ensure!(resumed.position() == head);
    let rebuilt = Arc::new(Projector::open(dir.path().join("rebuilt.redb"))?);
    // Follow the whole log into fresh views until they reach the head.
    let follow = rebuilt.follow(log.subscribe(0));
    tokio::select! {
        result = follow => anyhow::bail!("following ended early: {:?}", result.err().map(|e| e.to_string())),
        reached = rebuilt.wait_for(head, Duration::from_secs(120)) => { reached?; }
    }
    ensure!(rebuilt.position() == head);
    ensure!(
        resumed.views()?.dump()? == rebuilt.views()?.dump()?,
        "resumed views differ from a full rebuild"
    );
    Ok(())
}
