//! Crashes: SIGKILL the `quartermaster` process while it catches up on 200k events (after a
//! restart the views equal a full rebuild, so no commit was lost or applied twice); SIGKILL a
//! serving instance after the app created an account but before the outcome was recorded
//! (after a restart, exactly one account exists and the grant is active).

use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, ensure};
use qm_engine::bench::history::{Synthetic, publish};
use qm_engine::log::EventLog;
use qm_engine::log::jetstream::{JetStreamConfig, JetStreamLog};
use qm_projections::Projector;
use qm_proto::api::v1;
use qm_proto::api::v1::command_service_client::CommandServiceClient;
use qm_proto::api::v1::query_service_client::QueryServiceClient;
use qm_replay_tests::grpc;
use qm_replay_tests::nats::{NatsServer, free_port};
use qm_replay_tests::scim::{FaultProxy, Matching, ScimServer};
use qm_replay_tests::serve::{self, channel, until};
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
    let follow = rebuilt.follow(log.subscribe(0), head);
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

/// `quartermaster serve` on JetStream, retrying quickly.
fn serve(url: &str, dir: &std::path::Path, port: u16) -> anyhow::Result<tokio::process::Child> {
    let quick = ["--provision-ack-wait", "2", "--provision-backoff-ms", "50"];
    serve::spawn(std::path::Path::new(env!("CARGO_BIN_EXE_quartermaster")), url, dir, port, &quick)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_between_the_apps_create_and_its_record_leaves_exactly_one_account()
-> anyhow::Result<()> {
    let nats = NatsServer::start().await?;
    let scim = ScimServer::start("t").await?;
    let proxy = FaultProxy::start(&scim.url()).await?;
    let dir = tempfile::tempdir()?;
    let port = free_port();
    let mut instance = serve(&nats.url(), dir.path(), port)?;
    let channel = channel(port).await?;
    let mut commands = CommandServiceClient::new(channel.clone());
    let mut queries = QueryServiceClient::new(channel);

    let (org, admin) = ("acme".to_string(), "alice".to_string());
    grpc::organization(&mut commands, &admin, &org, &["bob".into()]).await?;
    grpc::attach_custom_scim(&mut commands, &admin, &org, "wiki", &proxy.url(), "t").await?;
    let list = v1::ListIntegratedAppsRequest { org_id: org.clone(), ..Default::default() };
    until("the app to be authorized", async || {
        let apps = queries.list_integrated_apps(list.clone()).await.ok()?.into_inner().apps;
        apps.iter().any(|a| a.status == v1::AppStatus::Authorized as i32).then_some(())
    })
    .await?;

    // The create reaches the app, and its answer never comes back.
    proxy.hold(Matching::Creates);
    let grant = commands
        .provision_user(v1::ProvisionUserRequest {
            actor_id: admin.clone(),
            org_id: org.clone(),
            app_id: "wiki".into(),
            person_id: "bob".into(),
            ..Default::default()
        })
        .await?
        .into_inner()
        .grant_id;
    until("the app to hold the account", async || {
        let users = scim.users_with_external_id(&grant).await.ok()?;
        (users.len() == 1 && proxy.held() == 1).then_some(())
    })
    .await?;
    instance.start_kill()?;
    instance.wait().await?;

    proxy.heal();
    let _restarted = serve(&nats.url(), dir.path(), port)?;
    let mut queries = QueryServiceClient::new(serve::channel(port).await?);
    let get =
        v1::GetGrantRequest { org_id: org.clone(), grant_id: grant.clone(), ..Default::default() };
    let active = until("the grant to be active", async || {
        let found = queries.get_grant(get.clone()).await.ok()?.into_inner().grant?;
        (found.state == v1::GrantState::Active as i32).then_some(found)
    })
    .await?;
    let users = scim.users().await?;
    ensure!(users.len() == 1, "exactly one account: {users:#?}");
    ensure!(
        users[0]["externalId"] == grant.as_str()
            && users[0]["id"] == active.external_account_id.as_str()
    );
    ensure!(
        proxy.requests().iter().filter(|r| r.starts_with("POST")).count() == 1,
        "{:?}",
        proxy.requests()
    );
    Ok(())
}
