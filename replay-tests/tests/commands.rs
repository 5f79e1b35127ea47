//! Command handling against real logs: the rules under concurrency, idempotency, lost
//! acknowledgements and cold starts.

use std::sync::Arc;

use anyhow::ensure;
use qm_engine::handler::{ExecuteError, Request};
use qm_engine::log::EventLog;
use qm_engine::org::{Command, DecideError};
use qm_proto::*;
use qm_replay_tests::fixtures::*;
use qm_replay_tests::nats::NatsServer;

fn provision(person: &str, grant: &str) -> Command {
    Command::ProvisionUser { app: id("crm"), person: id(person), grant: id(grant) }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_engines_never_give_out_more_seats_than_the_limit() -> anyhow::Result<()> {
    let server = NatsServer::start().await?;
    let (one, log) = jetstream_engine(&server.url(), 1).await?;
    let (two, _) = jetstream_engine(&server.url(), 1).await?;
    standard_org(&one, "seats", 200, Some(20), "token").await?;
    let (one, two) = (Arc::new(one), Arc::new(two));

    let mut tasks = Vec::new();
    for i in 0..200 {
        let engine = if i % 2 == 0 { one.clone() } else { two.clone() };
        tasks.push(tokio::spawn(async move {
            let command = provision(&format!("p{i}"), &format!("g{i}"));
            engine.execute(Request::new(id("seats"), person("admin"), command)).await
        }));
    }
    let (mut granted, mut no_seat) = (0, 0);
    for task in tasks {
        match task.await? {
            Ok(_) => granted += 1,
            Err(ExecuteError::Rejected(DecideError::NoFreeSeat { .. })) => no_seat += 1,
            Err(other) => anyhow::bail!("a command failed otherwise: {other}"),
        }
    }
    ensure!(granted == 20 && no_seat == 180, "{granted} granted, {no_seat} without a seat");

    let history = log.read_org(&id("seats"), 0).await?;
    let requested = history
        .iter()
        .flat_map(|c| &c.commit.events)
        .filter(|e| matches!(e, Event::GrantRequested(_)))
        .count();
    ensure!(requested == 20, "{requested} grants in the log");
    verify_chain(&history)?;
    Ok(())
}

#[tokio::test]
async fn the_same_command_id_appends_once_and_answers_the_same() -> anyhow::Result<()> {
    let server = NatsServer::start().await?;
    let (one, log) = jetstream_engine(&server.url(), 1).await?;
    let (two, _) = jetstream_engine(&server.url(), 1).await?;
    standard_org(&one, "idem", 3, None, "token").await?;
    two.org_state(&id("idem")).await?;

    let request = Request::new(id("idem"), person("admin"), provision("p0", "g0"))
        .with_command_id(id("provision-p0"));
    let first = one.execute(request.clone()).await?;
    let again = one.execute(request.clone()).await?;
    ensure!(again.replayed && again.position == first.position && again.events == first.events);

    // The second engine's cache predates the first answer, as after a lost acknowledgement
    // when the caller retries through another instance.
    let through_two = two.execute(request).await?;
    ensure!(through_two.replayed && through_two.position == first.position, "{through_two:?}");

    let grants = log
        .read_org(&id("idem"), 0)
        .await?
        .iter()
        .filter(|c| c.commit.command_id == id::<CommandId>("provision-p0"))
        .count();
    ensure!(grants == 1, "{grants} commits for one command id");
    Ok(())
}

#[tokio::test]
async fn a_command_id_reused_in_another_organization_is_refused() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (engine, _) = embedded_engine(dir.path())?;
    standard_org(&engine, "a", 1, None, "t").await?;
    standard_org(&engine, "b", 1, None, "t").await?;
    let cmd = |org: &str| {
        Request::new(
            id(org),
            person("admin"),
            Command::CreateTeam { team: id("x"), name: "X".into() },
        )
        .with_command_id(id("shared-id"))
    };
    engine.execute(cmd("a")).await?;
    let err = engine.execute(cmd("b")).await.unwrap_err();
    ensure!(matches!(err, ExecuteError::CommandIdReused { .. }), "got {err}");
    Ok(())
}

#[tokio::test]
async fn a_command_that_changes_nothing_writes_nothing() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (engine, log) = embedded_engine(dir.path())?;
    let at = standard_org(&engine, "noop", 1, None, "t").await?;
    let same = Command::SetMemberRole { person: id("p0"), role: Role::Member };
    let done = run(&engine, "noop", &person("admin"), same).await?;
    ensure!(done.events.is_empty() && done.position == at);
    ensure!(log.head().await? == at);
    Ok(())
}

#[tokio::test]
async fn a_cold_engine_loads_from_a_snapshot_and_the_tail() -> anyhow::Result<()> {
    let server = NatsServer::start().await?;
    let (warm, log) = jetstream_engine(&server.url(), 1).await?;
    standard_org(&warm, "cold", 50, None, "t").await?;
    for i in 0..50 {
        run(&warm, "cold", &person("admin"), provision(&format!("p{i}"), &format!("g{i}"))).await?;
    }
    // Snapshots are saved in the background; wait until one has landed.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while log.load_snapshot(&id("cold")).await?.is_none() {
        ensure!(std::time::Instant::now() < deadline, "no snapshot was saved");
        tokio::task::yield_now().await;
    }
    let (cold, _) = jetstream_engine(&server.url(), 1).await?;
    let expected = warm.org_state(&id("cold")).await?;
    ensure!(cold.org_state(&id("cold")).await? == expected);
    ensure!(replayed_state(log.as_ref(), "cold").await? == expected);
    let done =
        run(&cold, "cold", &person("admin"), Command::SuspendGrant { grant: id("g1") }).await;
    ensure!(matches!(done, Err(e) if e.to_string().contains("is requested")));
    Ok(())
}
