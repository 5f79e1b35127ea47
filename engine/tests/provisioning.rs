//! The provisioner end to end: gRPC commands into a running instance, real accounts in a real
//! SCIM 2.0 server (scim2-server), faults injected by a proxy in front of it, JetStream and the
//! embedded log.

use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use qm_engine::api::ApiConfig;
use qm_engine::api::auth::Auth;
use qm_engine::provisioner::ProvisionerConfig;
use qm_engine::sealing::MasterKey;
use qm_engine::server::{LogConfig, Running, ServeConfig, start};
use qm_proto::api::v1;
use qm_proto::api::v1::command_service_client::CommandServiceClient;
use qm_proto::api::v1::query_service_client::QueryServiceClient;
use qm_replay_tests::grpc;
use qm_replay_tests::nats::NatsServer;
use qm_replay_tests::scim::{Fault, FaultProxy, Matching, ScimServer};
use tonic::transport::Channel;

const ADMIN: &str = "alice";
/// Long enough for a slow test machine, short enough to fail a test that hangs.
const DEADLINE: Duration = Duration::from_secs(60);

struct Instance {
    running: Running,
    commands: CommandServiceClient<Channel>,
    queries: QueryServiceClient<Channel>,
    _dir: tempfile::TempDir,
}

fn quick_retries() -> ProvisionerConfig {
    ProvisionerConfig {
        call_timeout: Duration::from_millis(500),
        backoff_base: Duration::from_millis(50),
        backoff_cap: Duration::from_millis(400),
        max_attempts: 6,
        ack_wait: Duration::from_secs(2),
        ..ProvisionerConfig::default()
    }
}

async fn instance(log: LogConfig, provisioner: ProvisionerConfig) -> anyhow::Result<Instance> {
    let dir = tempfile::tempdir()?;
    let running = start(ServeConfig {
        listen: "127.0.0.1:0".parse()?,
        data_dir: dir.path().to_path_buf(),
        log,
        master_key: MasterKey::from_hex(&"42".repeat(32))?,
        api: ApiConfig { auth: Auth::disabled(), tls: None, query_wait: Duration::from_secs(5) },
        metrics: Some("127.0.0.1:0".parse()?),
        provisioner: Some(provisioner),
    })
    .await?;
    let channel = Channel::from_shared(format!("http://{}", running.addr))?.connect().await?;
    Ok(Instance {
        commands: CommandServiceClient::new(channel.clone()),
        queries: QueryServiceClient::new(channel),
        running,
        _dir: dir,
    })
}

fn jetstream(nats: &NatsServer) -> LogConfig {
    LogConfig::JetStream { urls: nats.url(), replicas: 1 }
}

impl Instance {
    /// An organization with team `staff` and `people` in it.
    async fn org(&mut self, org: &str, people: &[String]) -> anyhow::Result<()> {
        grpc::organization(&mut self.commands, ADMIN, org, people).await
    }

    /// Attaches a custom SCIM app at `url` and waits for the provisioner's verdict.
    async fn app(
        &mut self,
        org: &str,
        app: &str,
        url: &str,
        token: &str,
    ) -> anyhow::Result<v1::IntegratedApp> {
        grpc::attach_custom_scim(&mut self.commands, ADMIN, org, app, url, token).await?;
        self.app_once(org, app, |a| a.status != v1::AppStatus::Authorizing as i32).await
    }

    async fn app_once(
        &mut self,
        org: &str,
        app: &str,
        done: impl Fn(&v1::IntegratedApp) -> bool,
    ) -> anyhow::Result<v1::IntegratedApp> {
        let started = Instant::now();
        loop {
            let apps = self
                .queries
                .list_integrated_apps(v1::ListIntegratedAppsRequest {
                    org_id: org.into(),
                    ..Default::default()
                })
                .await?
                .into_inner()
                .apps;
            if let Some(found) = apps.into_iter().find(|a| a.app_id == app)
                && done(&found)
            {
                return Ok(found);
            }
            ensure!(started.elapsed() < DEADLINE, "app {app} never reached the wanted status");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn provision(&mut self, org: &str, app: &str, person: &str) -> anyhow::Result<String> {
        let answer = self
            .commands
            .provision_user(v1::ProvisionUserRequest {
                actor_id: ADMIN.into(),
                org_id: org.into(),
                app_id: app.into(),
                person_id: person.into(),
                ..Default::default()
            })
            .await?
            .into_inner();
        Ok(answer.grant_id)
    }

    async fn grant(&mut self, org: &str, grant: &str) -> anyhow::Result<v1::Grant> {
        let answer = self
            .queries
            .get_grant(v1::GetGrantRequest {
                org_id: org.into(),
                grant_id: grant.into(),
                ..Default::default()
            })
            .await?
            .into_inner();
        answer.grant.context("a grant in the answer")
    }

    /// Polls the grant until `done` holds for it.
    async fn grant_once(
        &mut self,
        org: &str,
        grant: &str,
        done: impl Fn(&v1::Grant) -> bool,
    ) -> anyhow::Result<v1::Grant> {
        let started = Instant::now();
        loop {
            // The views may not hold a grant the command just created.
            let current = match self.grant(org, grant).await {
                Ok(current) => Some(current),
                Err(e)
                    if e.downcast_ref::<tonic::Status>()
                        .is_some_and(|s| s.code() == tonic::Code::NotFound) =>
                {
                    None
                }
                Err(e) => return Err(e),
            };
            if let Some(current) = current.filter(|c| done(c)) {
                return Ok(current);
            }
            if started.elapsed() > DEADLINE {
                bail!(
                    "grant {grant} never reached the wanted state: {:?}",
                    self.grant(org, grant).await
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn is(state: v1::GrantState) -> impl Fn(&v1::Grant) -> bool {
    move |g| g.state == state as i32
}

#[tokio::test]
async fn provisions_then_deprovisions_a_real_account() -> anyhow::Result<()> {
    let scim = ScimServer::start("scim-token-1").await?;
    let mut i = instance(LogConfig::Embedded, quick_retries()).await?;
    i.org("acme", &["bob".into()]).await?;
    let app = i.app("acme", "wiki", &scim.url(), "scim-token-1").await?;
    ensure!(app.status == v1::AppStatus::Authorized as i32, "{app:?}");

    let before = qm_proto::Timestamp::now();
    let grant = i.provision("acme", "wiki", "bob").await?;
    let active = i.grant_once("acme", &grant, is(v1::GrantState::Active)).await?;
    let during = qm_proto::Timestamp::now();
    let users = scim.users_with_external_id(&grant).await?;
    ensure!(users.len() == 1, "{users:?}");
    ensure!(users[0]["userName"] == "bob@acme.test" && users[0]["active"] == true, "{users:?}");
    ensure!(users[0]["id"] == active.external_account_id.as_str(), "{active:?} vs {users:?}");
    let pad = i
        .queries
        .get_launchpad(v1::GetLaunchpadRequest { person_id: "bob".into(), ..Default::default() })
        .await?
        .into_inner();
    ensure!(pad.entries.len() == 1 && pad.entries[0].grant_id == grant, "{pad:?}");

    i.commands
        .deprovision_user(v1::DeprovisionUserRequest {
            actor_id: ADMIN.into(),
            org_id: "acme".into(),
            app_id: "wiki".into(),
            person_id: "bob".into(),
            ..Default::default()
        })
        .await?;
    let revoked = i.grant_once("acme", &grant, is(v1::GrantState::Revoked)).await?;
    let users = scim.users_with_external_id(&grant).await?;
    ensure!(users.len() == 1 && users[0]["active"] == false, "deactivated, not deleted: {users:?}");

    // The audit question: who had an account at an instant of the past.
    let after = qm_proto::Timestamp::now();
    let mut had_access =
        async |at: qm_proto::Timestamp| -> anyhow::Result<Vec<v1::AccessInterval>> {
            let request = v1::WhoHadAccessRequest {
                org_id: "acme".into(),
                app_id: "wiki".into(),
                at_micros: at.0,
                min_position: 0,
            };
            Ok(i.queries.who_had_access(request).await?.into_inner().intervals)
        };
    ensure!(had_access(before).await?.is_empty());
    let then = had_access(during).await?;
    ensure!(then.len() == 1 && then[0].person_id == "bob" && then[0].grant_id == grant, "{then:?}");
    ensure!(then[0].ended_by == "requested" && then[0].to_micros.is_some(), "{then:?}");
    ensure!(then[0].to_micros <= Some(revoked.updated_at_micros), "{then:?} vs {revoked:?}");
    ensure!(had_access(after).await?.is_empty());

    let metrics_at = i.running.metrics_addr.context("metrics are served")?;
    let metrics = reqwest::get(format!("http://{metrics_at}/metrics")).await?.text().await?;
    for outcome in ["authorized", "provisioned", "deprovisioned"] {
        let line = format!("quartermaster_provisioning_outcomes_total{{outcome=\"{outcome}\"}} ");
        let count: u64 = metrics
            .lines()
            .find_map(|l| l.strip_prefix(&line))
            .context("the outcome is exported")?
            .parse()?;
        ensure!(count >= 1, "{outcome}: {count}");
    }
    i.running.stop().await
}

#[tokio::test]
async fn a_wrong_token_fails_authorization_until_credentials_are_fixed() -> anyhow::Result<()> {
    let scim = ScimServer::start("the-right-one").await?;
    let mut i = instance(LogConfig::Embedded, quick_retries()).await?;
    i.org("acme", &["bob".into()]).await?;
    let app = i.app("acme", "wiki", &scim.url(), "a-wrong-one").await?;
    ensure!(app.status == v1::AppStatus::AuthorizationFailed as i32, "{app:?}");
    ensure!(app.status_reason.contains("401"), "the reason says why: {app:?}");
    ensure!(!app.status_reason.contains("a-wrong-one"), "no secret in the reason: {app:?}");
    let refused = i
        .commands
        .provision_user(v1::ProvisionUserRequest {
            actor_id: ADMIN.into(),
            org_id: "acme".into(),
            app_id: "wiki".into(),
            person_id: "bob".into(),
            ..Default::default()
        })
        .await
        .expect_err("an app whose credentials failed takes no grants");
    ensure!(refused.code() == tonic::Code::FailedPrecondition, "{refused:?}");

    i.commands
        .update_app_credentials(v1::UpdateAppCredentialsRequest {
            actor_id: ADMIN.into(),
            org_id: "acme".into(),
            app_id: "wiki".into(),
            credentials: Some(v1::Credentials {
                bearer_token: "the-right-one".into(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await?;
    i.app_once("acme", "wiki", |a| a.status == v1::AppStatus::Authorized as i32).await?;
    i.running.stop().await
}

#[tokio::test]
async fn faults_are_retried_with_backoff_and_quarantined_past_the_cap() -> anyhow::Result<()> {
    let nats = NatsServer::start().await?;
    let scim = ScimServer::start("t").await?;
    let proxy = FaultProxy::start(&scim.url()).await?;
    let mut i = instance(jetstream(&nats), quick_retries()).await?;
    let people: Vec<String> = ["bob", "carol", "dave"].map(String::from).to_vec();
    i.org("acme", &people).await?;
    i.app("acme", "wiki", &proxy.url(), "t").await?;

    // A 500, a 429 asking for a second, an answer slower than the call timeout, a dropped
    // connection: each is one failed attempt, and the grant becomes active after them.
    proxy.then(Matching::Any, Fault::Status(500));
    proxy.then(Matching::Any, Fault::TooManyRequests { retry_after_secs: 1 });
    proxy.then(Matching::Any, Fault::Slow(Duration::from_secs(2)));
    proxy.then(Matching::Any, Fault::Drop);
    let started = Instant::now();
    let bob = i.provision("acme", "wiki", "bob").await?;
    let active = i.grant_once("acme", &bob, is(v1::GrantState::Active)).await?;
    ensure!(started.elapsed() >= Duration::from_secs(1), "Retry-After was honoured");
    ensure!(scim.users_with_external_id(&bob).await?.len() == 1, "one account");
    ensure!(active.attempts == 0 && active.last_error.is_empty(), "{active:?}");

    // Connection refused: the grant fails and waits; once the app is back, it is provisioned.
    proxy.refuse();
    let carol = i.provision("acme", "wiki", "carol").await?;
    let failed = i.grant_once("acme", &carol, |g| g.attempts >= 1).await?;
    ensure!(failed.last_error.contains("could not connect"), "{failed:?}");
    proxy.reopen().await?;
    i.grant_once("acme", &carol, is(v1::GrantState::Active)).await?;

    // An app that keeps failing: after max_attempts the grant is quarantined with the reason.
    proxy.always(Matching::Any, Fault::Status(503));
    let dave = i.provision("acme", "wiki", "dave").await?;
    let quarantined = i.grant_once("acme", &dave, is(v1::GrantState::Quarantined)).await?;
    ensure!(quarantined.last_error.contains("503"), "{quarantined:?}");
    ensure!(quarantined.last_error.contains("gave up after 6 attempts"), "{quarantined:?}");
    ensure!(scim.users_with_external_id(&dave).await?.is_empty());

    // RetryGrant arms it again.
    proxy.heal();
    i.commands
        .retry_grant(v1::RetryGrantRequest {
            actor_id: ADMIN.into(),
            org_id: "acme".into(),
            grant_id: dave.clone(),
            ..Default::default()
        })
        .await?;
    i.grant_once("acme", &dave, is(v1::GrantState::Active)).await?;
    ensure!(scim.users_with_external_id(&dave).await?.len() == 1);
    ensure!(scim.users().await?.len() == 3, "one account each, no duplicates from the retries");
    i.running.stop().await
}

#[tokio::test]
async fn offboarding_a_member_deactivates_each_of_their_accounts() -> anyhow::Result<()> {
    let nats = NatsServer::start().await?;
    let mut i = instance(jetstream(&nats), quick_retries()).await?;
    i.org("acme", &["bob".into()]).await?;
    let mut servers = Vec::new();
    let mut grants = Vec::new();
    for app in ["wiki", "chat", "crm"] {
        let scim = ScimServer::start(app).await?;
        i.app("acme", app, &scim.url(), app).await?;
        grants.push(i.provision("acme", app, "bob").await?);
        servers.push(scim);
    }
    for grant in &grants {
        i.grant_once("acme", grant, is(v1::GrantState::Active)).await?;
    }

    i.commands
        .remove_member(v1::RemoveMemberRequest {
            actor_id: ADMIN.into(),
            org_id: "acme".into(),
            person_id: "bob".into(),
            ..Default::default()
        })
        .await?;
    for (grant, scim) in grants.iter().zip(&servers) {
        i.grant_once("acme", grant, is(v1::GrantState::Revoked)).await?;
        let users = scim.users_with_external_id(grant).await?;
        ensure!(users.len() == 1 && users[0]["active"] == false, "{users:?}");
    }
    let pad = i
        .queries
        .get_launchpad(v1::GetLaunchpadRequest { person_id: "bob".into(), ..Default::default() })
        .await?
        .into_inner();
    ensure!(pad.entries.is_empty(), "{pad:?}");
    i.running.stop().await
}

#[tokio::test]
async fn two_instances_provision_500_grants_exactly_once_each() -> anyhow::Result<()> {
    let nats = NatsServer::start().await?;
    let scim = ScimServer::start("t").await?;
    let config = ProvisionerConfig { ack_wait: Duration::from_secs(10), ..quick_retries() };
    let mut a = instance(jetstream(&nats), config.clone()).await?;
    let mut b = instance(jetstream(&nats), config).await?;
    let people: Vec<String> = (0..500).map(|n| format!("p{n:03}")).collect();
    a.org("acme", &people).await?;
    a.app("acme", "wiki", &scim.url(), "t").await?;
    let mut grants = Vec::new();
    for (n, person) in people.iter().enumerate() {
        let via = if n % 2 == 0 { &mut a } else { &mut b };
        grants.push(via.provision("acme", "wiki", person).await?);
    }
    let started = Instant::now();
    loop {
        let state = a.running.engine.org_state(&"acme".parse()?).await?;
        let active = grants
            .iter()
            .filter(|g| {
                state.grants[&g.parse().expect("a grant id")].state
                    == qm_engine::org::GrantState::Active
            })
            .count();
        if active == grants.len() {
            break;
        }
        ensure!(started.elapsed() < DEADLINE * 2, "{active} of {} active", grants.len());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let users = scim.users().await?;
    ensure!(users.len() == 500, "{} accounts for 500 grants", users.len());
    let mut external: Vec<&str> = users.iter().filter_map(|u| u["externalId"].as_str()).collect();
    external.sort_unstable();
    let mut expected: Vec<&str> = grants.iter().map(String::as_str).collect();
    expected.sort_unstable();
    ensure!(external == expected, "each grant's account exactly once");
    a.running.stop().await?;
    b.running.stop().await
}

#[tokio::test]
async fn the_breaker_holds_a_mass_deprovisioning_until_an_admin_confirms() -> anyhow::Result<()> {
    let scim = ScimServer::start("t").await?;
    let mut i = instance(LogConfig::Embedded, quick_retries()).await?;
    let staff: Vec<String> = (0..8).map(|n| format!("s{n}")).collect();
    i.org("acme", &staff).await?;
    i.app("acme", "wiki", &scim.url(), "t").await?;
    let mut grants = Vec::new();
    for person in &staff {
        grants.push(i.provision("acme", "wiki", person).await?);
    }
    for grant in &grants {
        i.grant_once("acme", grant, is(v1::GrantState::Active)).await?;
    }

    // One bad change: deleting the team takes everyone's last team, so every account would go.
    i.commands
        .delete_team(v1::DeleteTeamRequest {
            actor_id: ADMIN.into(),
            org_id: "acme".into(),
            team_id: "staff".into(),
            ..Default::default()
        })
        .await?;
    for grant in &grants {
        let held = i.grant_once("acme", grant, is(v1::GrantState::Held)).await?;
        ensure!(held.last_error.contains("8 of 8 accounts of wiki"), "{held:?}");
    }
    let users = scim.users().await?;
    ensure!(users.len() == 8 && users.iter().all(|u| u["active"] == true), "nothing taken yet");

    // The app's other work goes on meanwhile.
    i.commands
        .create_team(v1::CreateTeamRequest {
            actor_id: ADMIN.into(),
            org_id: "acme".into(),
            team_id: "ops".into(),
            name: "Ops".into(),
            ..Default::default()
        })
        .await?;
    i.commands
        .add_team_member(v1::AddTeamMemberRequest {
            actor_id: ADMIN.into(),
            org_id: "acme".into(),
            team_id: "ops".into(),
            person_id: ADMIN.into(),
            ..Default::default()
        })
        .await?;
    let alice = i.provision("acme", "wiki", ADMIN).await?;
    i.grant_once("acme", &alice, is(v1::GrantState::Active)).await?;

    let confirmed = i
        .commands
        .confirm_deprovisionings(v1::ConfirmDeprovisioningsRequest {
            actor_id: ADMIN.into(),
            org_id: "acme".into(),
            app_id: "wiki".into(),
            ..Default::default()
        })
        .await?
        .into_inner();
    ensure!(confirmed.grant_ids.len() == 8, "{confirmed:?}");
    for grant in &grants {
        i.grant_once("acme", grant, is(v1::GrantState::Revoked)).await?;
        let users = scim.users_with_external_id(grant).await?;
        ensure!(users.len() == 1 && users[0]["active"] == false, "{users:?}");
    }
    ensure!(scim.users_with_external_id(&alice).await?[0]["active"] == true);
    i.running.stop().await
}

#[tokio::test]
async fn calls_to_one_app_stay_within_its_concurrency_limit() -> anyhow::Result<()> {
    let scim = ScimServer::start("t").await?;
    let proxy = FaultProxy::start(&scim.url()).await?;
    let config = ProvisionerConfig {
        per_app_concurrency: 2,
        call_timeout: Duration::from_secs(5),
        ..quick_retries()
    };
    let mut i = instance(LogConfig::Embedded, config).await?;
    let people: Vec<String> = (0..12).map(|n| format!("p{n}")).collect();
    i.org("acme", &people).await?;
    i.app("acme", "wiki", &proxy.url(), "t").await?;
    // Slow answers keep calls open long enough to overlap if the limit let them.
    proxy.always(Matching::Any, Fault::Slow(Duration::from_millis(150)));
    let mut grants = Vec::new();
    for person in &people {
        grants.push(i.provision("acme", "wiki", person).await?);
    }
    for grant in &grants {
        i.grant_once("acme", grant, is(v1::GrantState::Active)).await?;
    }
    ensure!(
        proxy.most_in_flight() == 2,
        "at most 2 at once, and 2 used: {}",
        proxy.most_in_flight()
    );
    i.running.stop().await
}

#[tokio::test]
async fn calls_to_one_app_are_paced_at_its_rate() -> anyhow::Result<()> {
    let scim = ScimServer::start("t").await?;
    let proxy = FaultProxy::start(&scim.url()).await?;
    let config = ProvisionerConfig { per_app_rate: Some(20.0), ..quick_retries() };
    let mut i = instance(LogConfig::Embedded, config).await?;
    let people: Vec<String> = (0..8).map(|n| format!("p{n}")).collect();
    i.org("acme", &people).await?;
    i.app("acme", "wiki", &proxy.url(), "t").await?;
    let mut grants = Vec::new();
    for person in &people {
        grants.push(i.provision("acme", "wiki", person).await?);
    }
    for grant in &grants {
        i.grant_once("acme", grant, is(v1::GrantState::Active)).await?;
    }
    // Every call after the credentials' check started at least 1/20 s after the one before
    // (a little less allowed for the proxy's own clock reading).
    let arrivals: Vec<_> = proxy
        .requests()
        .into_iter()
        .zip(proxy.arrivals())
        .filter(|(r, _)| r.starts_with("POST"))
        .map(|(_, at)| at)
        .collect();
    ensure!(arrivals.len() == 8, "{:?}", proxy.requests());
    for pair in arrivals.windows(2) {
        let gap = pair[1] - pair[0];
        ensure!(gap >= Duration::from_millis(45), "calls {gap:?} apart at 20/s");
    }
    i.running.stop().await
}
