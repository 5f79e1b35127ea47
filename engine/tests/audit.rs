//! `quartermaster audit verify` against a real nats-server and the embedded log: an intact log
//! verifies, with each organization's head; a commit slipped in with a wrong link, and a copy of
//! the log with a commit missing from the middle of an organization's history, are each named by
//! organization and position; the log refuses to delete a commit.

use std::process::{Output, Stdio};

use anyhow::ensure;
use futures::StreamExt;
use qm_engine::audit::{self, AuditError};
use qm_engine::log::EventLog;
use qm_engine::log::jetstream::{JetStreamConfig, JetStreamLog};
use qm_proto::{CommandId, Commit, GENESIS_HASH, OrgId, Position, RecordedCommit};
use qm_replay_tests::fixtures::{commit, embedded_engine, id, jetstream_engine, standard_org};
use qm_replay_tests::nats::NatsServer;

async fn verify(storage: &[&str], dir: &std::path::Path) -> anyhow::Result<Output> {
    Ok(tokio::process::Command::new(env!("CARGO_BIN_EXE_quartermaster"))
        .args(["audit", "verify", "--heads", "--data-dir"])
        .arg(dir)
        .args(storage)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await?)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The positions of `org`'s commits, in order.
async fn positions(log: &dyn EventLog, org: &str) -> anyhow::Result<Vec<Position>> {
    Ok(log.read_org(&id(org), 0).await?.iter().map(|c| c.position).collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_links_on_jetstream_are_named_by_organization_and_position() -> anyhow::Result<()> {
    let server = NatsServer::start().await?;
    let (engine, log) = jetstream_engine(&server.url(), 1).await?;
    standard_org(&engine, "acme", 3, Some(10), "{\"bearer_token\":\"t\"}").await?;
    standard_org(&engine, "globex", 2, None, "{\"bearer_token\":\"t\"}").await?;
    let dir = tempfile::tempdir()?;
    let nats = ["--nats-url", &server.url()];

    let intact = verify(&nats, dir.path()).await?;
    let (out, err) = (text(&intact.stdout), text(&intact.stderr));
    ensure!(intact.status.success(), "an intact log failed to verify:\n{out}\n{err}");
    let head = log.head().await?;
    let acme = positions(log.as_ref(), "acme").await?;
    let globex = positions(log.as_ref(), "globex").await?;
    ensure!(acme.len() + globex.len() == head as usize, "only the two organizations' commits");
    ensure!(
        out.contains(&format!(
            "verified {head} commits of 2 organizations up to position {head}: every chain is intact"
        )),
        "{out}"
    );
    let acme_last = log.read_org(&id("acme"), 0).await?.pop().expect("acme has commits");
    ensure!(
        out.contains(&format!(
            "acme commits {} last position {} hash {}",
            acme.len(),
            acme_last.position,
            hex::encode(acme_last.hash)
        )),
        "{out}"
    );

    // A commit appended to globex's subject that does not name globex's last commit.
    let org: OrgId = id("globex");
    let forged: Commit = commit("globex", "forged", GENESIS_HASH);
    let command: CommandId = id("forged");
    let last = *globex.last().expect("globex has commits");
    let at = log.append(&org, last, &command, forged.encode()).await?.position;
    let broken = verify(&nats, dir.path()).await?;
    let err = text(&broken.stderr);
    ensure!(!broken.status.success(), "a forged commit went unnoticed");
    ensure!(
        err.contains(&format!("the chain of organization globex is broken at position {at}")),
        "{err}"
    );
    ensure!(
        err.contains(&format!("the organization's commit before it (position {last})")),
        "{err}"
    );

    // The log refuses to delete a commit; a copy of it without one of acme's commits (a
    // history rewritten elsewhere) breaks at the commit after the missing one.
    let refused = log.stream().delete_message(acme[2]).await;
    ensure!(refused.is_err(), "the event log let a commit be deleted");
    let copy = JetStreamLog::connect(
        &server.url(),
        JetStreamConfig {
            stream: "QM_EVENTS_COPY".into(),
            subject_prefix: "qm.copy".into(),
            snapshot_bucket: "QM_SNAPSHOTS_COPY".into(),
            ..JetStreamConfig::default()
        },
    )
    .await?;
    let mut copied: std::collections::HashMap<OrgId, Position> = Default::default();
    let (mut before_gap, mut after_gap) = (0, 0);
    for recorded in everything(log.as_ref(), head).await? {
        if recorded.position == acme[2] {
            continue;
        }
        let org = recorded.commit.org.clone();
        let expected = copied.get(&org).copied().unwrap_or(0);
        let at = copy
            .append(&org, expected, &recorded.commit.command_id, recorded.commit.encode())
            .await?
            .position;
        if recorded.position == acme[1] {
            before_gap = at;
        }
        if recorded.position == acme[3] {
            after_gap = at;
        }
        copied.insert(org, at);
    }
    match audit::verify(&copy, |_, _| {}).await {
        Err(AuditError::Broken { org, position, before, .. }) => {
            ensure!(org.as_str() == "acme" && position == after_gap, "broken at {org} {position}");
            ensure!(before == format!("position {before_gap}"), "{before}");
        }
        other => anyhow::bail!("a missing commit went unnoticed: {other:?}"),
    }
    Ok(())
}

/// Every commit of `log` up to `head`, in order.
async fn everything(log: &dyn EventLog, head: Position) -> anyhow::Result<Vec<RecordedCommit>> {
    let mut commits = log.subscribe(0);
    let mut all = Vec::new();
    while all.last().is_none_or(|c: &RecordedCommit| c.position < head) {
        let next = tokio::time::timeout(std::time::Duration::from_secs(10), commits.next()).await?;
        all.push(next.ok_or_else(|| anyhow::anyhow!("the log ended early"))??);
    }
    Ok(all)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embedded_log_verifies_too() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let head = {
        let (engine, log) = embedded_engine(dir.path())?;
        standard_org(&engine, "acme", 2, None, "{\"bearer_token\":\"t\"}").await?;
        log.head().await?
    };
    // The engine has closed the log file, as a stopped instance would have.
    let intact = verify(&[], dir.path()).await?;
    let out = text(&intact.stdout);
    ensure!(intact.status.success(), "{out}\n{}", text(&intact.stderr));
    ensure!(
        out.contains(&format!(
            "verified {head} commits of 1 organization up to position {head}: every chain is intact"
        )),
        "{out}"
    );
    Ok(())
}
