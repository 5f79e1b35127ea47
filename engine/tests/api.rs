//! The gRPC API end to end: a tonic client over a real socket against a running instance.

use std::time::Duration;

use anyhow::ensure;
use proptest::prelude::*;
use qm_engine::api::ApiConfig;
use qm_engine::api::auth::Auth;
use qm_engine::handler::Request as EngineRequest;
use qm_engine::org::Command;
use qm_engine::sealing::MasterKey;
use qm_engine::server::{LogConfig, Running, ServeConfig, start};
use qm_proto::api::v1;
use qm_proto::api::v1::command_service_client::CommandServiceClient;
use qm_proto::api::v1::query_service_client::QueryServiceClient;
use qm_proto::{Actor, ExternalAccount};
use tonic::Code;
use tonic::metadata::MetadataValue;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

const TOKEN: &str = "test-token-0123456789";

type Bearer =
    Box<dyn FnMut(tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> + Send + Sync>;

struct Instance {
    running: Running,
    commands: CommandServiceClient<InterceptedService<Channel, Bearer>>,
    queries: QueryServiceClient<InterceptedService<Channel, Bearer>>,
    _dir: tempfile::TempDir,
}

fn bearer(token: &str) -> Bearer {
    let value: MetadataValue<_> = format!("Bearer {token}").parse().expect("a valid header");
    Box::new(move |mut r: tonic::Request<()>| {
        r.metadata_mut().insert("authorization", value.clone());
        Ok(r)
    })
}

async fn instance(log: LogConfig) -> anyhow::Result<Instance> {
    let dir = tempfile::tempdir()?;
    let auth = Auth::with_token_hashes(&[format!("tests:{}", Auth::hash(TOKEN))], false)?;
    let running = start(ServeConfig {
        listen: "127.0.0.1:0".parse()?,
        data_dir: dir.path().to_path_buf(),
        log,
        master_key: MasterKey::from_hex(&"42".repeat(32))?,
        api: ApiConfig { auth, tls: None, query_wait: Duration::from_millis(300) },
        metrics: Some("127.0.0.1:0".parse()?),
        // These tests record the app's answers themselves (engine/tests/provisioning.rs has
        // the provisioner's).
        provisioner: None,
    })
    .await?;
    let channel = Channel::from_shared(format!("http://{}", running.addr))?.connect().await?;
    Ok(Instance {
        commands: CommandServiceClient::with_interceptor(channel.clone(), bearer(TOKEN)),
        queries: QueryServiceClient::with_interceptor(channel, bearer(TOKEN)),
        running,
        _dir: dir,
    })
}

fn create_org(org: &str) -> v1::CreateOrganizationRequest {
    v1::CreateOrganizationRequest {
        actor_id: "alice".into(),
        org_id: org.into(),
        name: "Acme".into(),
        admin_email: "alice@acme.example".into(),
        admin_display_name: "Alice".into(),
        ..Default::default()
    }
}

fn add_member(org: &str, person: &str) -> v1::AddMemberRequest {
    v1::AddMemberRequest {
        actor_id: "alice".into(),
        org_id: org.into(),
        person_id: person.into(),
        email: format!("{person}@acme.example"),
        display_name: person.into(),
        role: v1::Role::Member as i32,
        ..Default::default()
    }
}

fn add_app(org: &str) -> v1::AddIntegratedAppRequest {
    v1::AddIntegratedAppRequest {
        actor_id: "alice".into(),
        org_id: org.into(),
        app_id: "crm".into(),
        catalog_app: "slack".into(),
        display_name: "Slack".into(),
        base_url: "https://api.slack.com/scim/v2".into(),
        credentials: Some(v1::Credentials {
            bearer_token: "xoxp-secret".into(),
            ..Default::default()
        }),
        seat_limit: Some(1),
        ..Default::default()
    }
}

/// Acme with Alice (admin), Bob in team sales, Carol in no team, and an authorized app `crm`
/// with one seat. Returns the last position.
async fn acme(i: &mut Instance, org: &str) -> anyhow::Result<u64> {
    i.commands.create_organization(create_org(org)).await?;
    let team = v1::CreateTeamRequest {
        actor_id: "alice".into(),
        org_id: org.into(),
        team_id: "sales".into(),
        name: "Sales".into(),
        ..Default::default()
    };
    i.commands.create_team(team).await?;
    for person in ["bob", "carol"] {
        i.commands.add_member(add_member(org, person)).await?;
    }
    let join = v1::AddTeamMemberRequest {
        actor_id: "alice".into(),
        org_id: org.into(),
        team_id: "sales".into(),
        person_id: "bob".into(),
        ..Default::default()
    };
    i.commands.add_team_member(join).await?;
    i.commands.add_integrated_app(add_app(org)).await?;
    // No provisioner runs here: the app's answer is recorded as the provisioner records it.
    let authorized = EngineRequest::new(
        org.parse()?,
        Actor::Service("provisioner".into()),
        Command::RecordAppAuthorized { app: "crm".parse()? },
    );
    Ok(i.running.engine.execute(authorized).await?.position)
}

fn provision(org: &str, person: &str) -> v1::ProvisionUserRequest {
    v1::ProvisionUserRequest {
        actor_id: "alice".into(),
        org_id: org.into(),
        app_id: "crm".into(),
        person_id: person.into(),
        ..Default::default()
    }
}

#[tokio::test]
async fn the_walkthrough_provisions_a_member_onto_their_launchpad() -> anyhow::Result<()> {
    let mut i = instance(LogConfig::Embedded).await?;
    acme(&mut i, "acme").await?;
    let grant = i.commands.provision_user(provision("acme", "bob")).await?.into_inner();
    ensure!(!grant.grant_id.is_empty());
    let account = ExternalAccount { id: "U123".into(), user_name: "bob".into(), open_url: None };
    let recorded = EngineRequest::new(
        "acme".parse()?,
        Actor::Service("provisioner".into()),
        Command::RecordAccountProvisioned { grant: grant.grant_id.parse()?, account },
    );
    let position = i.running.engine.execute(recorded).await?.position;

    let pad = i
        .queries
        .get_launchpad(v1::GetLaunchpadRequest {
            person_id: "bob".into(),
            min_position: position,
            ..Default::default()
        })
        .await?
        .into_inner();
    ensure!(pad.entries.len() == 1, "{pad:?}");
    ensure!(
        pad.entries[0].state == v1::GrantState::Active as i32
            && pad.entries[0].open_url == "https://slack.com/signin"
    );
    let access = i
        .queries
        .who_has_access(v1::WhoHasAccessRequest {
            org_id: "acme".into(),
            app_id: "crm".into(),
            min_position: position,
            ..Default::default()
        })
        .await?
        .into_inner();
    ensure!(access.grants.len() == 1 && access.grants[0].external_account_id == "U123");
    let apps = i
        .queries
        .list_integrated_apps(v1::ListIntegratedAppsRequest {
            org_id: "acme".into(),
            min_position: position,
            ..Default::default()
        })
        .await?
        .into_inner();
    ensure!(apps.apps[0].seats_used == 1 && apps.apps[0].seat_limit == Some(1));
    let members = i
        .queries
        .list_members(v1::ListMembersRequest {
            org_id: "acme".into(),
            min_position: position,
            page_size: 2,
            ..Default::default()
        })
        .await?
        .into_inner();
    ensure!(members.members.len() == 2 && !members.next_page_token.is_empty());
    i.running.stop().await
}

#[tokio::test]
async fn a_command_id_sent_twice_answers_the_same() -> anyhow::Result<()> {
    let mut i = instance(LogConfig::Embedded).await?;
    acme(&mut i, "acme").await?;
    let request =
        v1::ProvisionUserRequest { command_id: "prov-bob-1".into(), ..provision("acme", "bob") };
    let first = i.commands.provision_user(request.clone()).await?.into_inner();
    let again = i.commands.provision_user(request).await?.into_inner();
    ensure!(first == again, "{first:?} vs {again:?}");
    i.running.stop().await
}

#[tokio::test]
async fn calls_without_a_known_token_are_unauthenticated() -> anyhow::Result<()> {
    let i = instance(LogConfig::Embedded).await?;
    let channel = Channel::from_shared(format!("http://{}", i.running.addr))?.connect().await?;
    let mut anonymous = CommandServiceClient::new(channel.clone());
    let err = anonymous.create_organization(create_org("x")).await.unwrap_err();
    ensure!(err.code() == Code::Unauthenticated, "{err:?}");
    let mut wrong = QueryServiceClient::with_interceptor(channel, bearer("not-the-token"));
    let err = wrong.list_catalog_apps(v1::ListCatalogAppsRequest::default()).await.unwrap_err();
    ensure!(err.code() == Code::Unauthenticated, "{err:?}");
    i.running.stop().await
}

#[tokio::test]
async fn each_kind_of_failure_has_its_code() -> anyhow::Result<()> {
    let mut i = instance(LogConfig::Embedded).await?;
    acme(&mut i, "acme").await?;
    let code = |r: Result<tonic::Response<_>, tonic::Status>| -> (Code, String) {
        let e = r.map(|_: tonic::Response<()>| ()).unwrap_err();
        (e.code(), e.message().to_string())
    };
    let cases: Vec<(Code, &str, Result<(), tonic::Status>)> = vec![
        (
            Code::NotFound,
            "does not exist",
            i.commands
                .create_team(v1::CreateTeamRequest {
                    actor_id: "alice".into(),
                    org_id: "nowhere".into(),
                    team_id: "t".into(),
                    name: "T".into(),
                    ..Default::default()
                })
                .await
                .map(|_| ()),
        ),
        (
            Code::PermissionDenied,
            "bob is not an admin of acme",
            i.commands
                .add_member(v1::AddMemberRequest {
                    actor_id: "bob".into(),
                    ..add_member("acme", "dave")
                })
                .await
                .map(|_| ()),
        ),
        (
            Code::FailedPrecondition,
            "carol is in no team of acme",
            i.commands.provision_user(provision("acme", "carol")).await.map(|_| ()),
        ),
        (
            Code::AlreadyExists,
            "bob is already a member of acme",
            i.commands.add_member(add_member("acme", "bob")).await.map(|_| ()),
        ),
        (
            Code::NotFound,
            "grant",
            i.queries
                .get_grant(v1::GetGrantRequest {
                    org_id: "acme".into(),
                    grant_id: "nope".into(),
                    ..Default::default()
                })
                .await
                .map(|_| ()),
        ),
        (
            Code::Unavailable,
            "not 1000000",
            i.queries
                .get_organization(v1::GetOrganizationRequest {
                    org_id: "acme".into(),
                    min_position: 1_000_000,
                })
                .await
                .map(|_| ()),
        ),
    ];
    for (want, text, got) in cases {
        let (code, message) = code(got.map(tonic::Response::new));
        ensure!(
            code == want && message.contains(text),
            "wanted {want:?} with {text:?}, got {code:?}: {message}"
        );
    }
    i.commands.provision_user(provision("acme", "bob")).await?;
    let join = v1::AddTeamMemberRequest {
        actor_id: "alice".into(),
        org_id: "acme".into(),
        team_id: "sales".into(),
        person_id: "carol".into(),
        ..Default::default()
    };
    i.commands.add_team_member(join).await?;
    let err = i.commands.provision_user(provision("acme", "carol")).await.unwrap_err();
    ensure!(
        err.code() == Code::FailedPrecondition && err.message().contains("no free seat"),
        "{err:?}"
    );
    i.running.stop().await
}

#[tokio::test]
async fn bad_input_is_invalid_argument_naming_the_field() -> anyhow::Result<()> {
    let mut i = instance(LogConfig::Embedded).await?;
    acme(&mut i, "acme").await?;
    let long = "x".repeat(300);
    let huge = "y".repeat(200_000);
    let member = |f: &dyn Fn(&mut v1::AddMemberRequest)| {
        let mut r = add_member("acme", "dave");
        f(&mut r);
        r
    };
    let members: Vec<(&str, v1::AddMemberRequest)> = vec![
        ("actor_id", member(&|r| r.actor_id.clear())),
        ("org_id", member(&|r| r.org_id = "acme corp".into())),
        ("person_id", member(&|r| r.person_id = "dave.smith".into())),
        ("person_id", member(&|r| r.person_id = long.clone())),
        ("email", member(&|r| r.email = "dave".into())),
        ("display_name", member(&|r| r.display_name.clear())),
        ("display_name", member(&|r| r.display_name = long.clone())),
        ("display_name", member(&|r| r.display_name = huge.clone())),
        ("role", member(&|r| r.role = 0)),
        ("role", member(&|r| r.role = 99)),
        ("command_id", member(&|r| r.command_id = "a b".into())),
    ];
    for (field, request) in members {
        let err = i.commands.add_member(request).await.unwrap_err();
        ensure!(
            err.code() == Code::InvalidArgument
                && err.message().starts_with(&format!("invalid {field}:")),
            "{field}: {err:?}"
        );
    }
    let apps: Vec<(&str, v1::AddIntegratedAppRequest)> = vec![
        (
            "seat_limit",
            v1::AddIntegratedAppRequest {
                seat_limit: Some(-5),
                app_id: "a2".into(),
                ..add_app("acme")
            },
        ),
        (
            "catalog_app",
            v1::AddIntegratedAppRequest {
                catalog_app: "myspace".into(),
                app_id: "a2".into(),
                ..add_app("acme")
            },
        ),
        (
            "base_url",
            v1::AddIntegratedAppRequest {
                base_url: "https://evil.example/scim".into(),
                app_id: "a2".into(),
                ..add_app("acme")
            },
        ),
        (
            "credentials",
            v1::AddIntegratedAppRequest {
                credentials: None,
                app_id: "a2".into(),
                ..add_app("acme")
            },
        ),
        (
            "credentials.bearer_token",
            v1::AddIntegratedAppRequest {
                credentials: Some(v1::Credentials::default()),
                app_id: "a2".into(),
                ..add_app("acme")
            },
        ),
    ];
    for (field, request) in apps {
        let err = i.commands.add_integrated_app(request).await.unwrap_err();
        ensure!(
            err.code() == Code::InvalidArgument
                && err.message().starts_with(&format!("invalid {field}:")),
            "{field}: {err:?}"
        );
    }
    let err = i
        .queries
        .list_members(v1::ListMembersRequest {
            org_id: "acme".into(),
            page_size: 5000,
            ..Default::default()
        })
        .await
        .unwrap_err();
    ensure!(err.code() == Code::InvalidArgument && err.message().contains("page_size"), "{err:?}");
    let err = i
        .queries
        .list_members(v1::ListMembersRequest {
            org_id: "acme".into(),
            page_token: "zz".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    ensure!(err.code() == Code::InvalidArgument && err.message().contains("page_token"), "{err:?}");
    i.running.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_serve_processes_on_one_jetstream_see_each_others_commands() -> anyhow::Result<()> {
    use qm_replay_tests::serve;
    let server = qm_replay_tests::nats::NatsServer::start().await?;
    let binary = std::path::Path::new(env!("CARGO_BIN_EXE_quartermaster"));
    let (dir_one, dir_two) = (tempfile::tempdir()?, tempfile::tempdir()?);
    let (port_one, port_two) =
        (qm_replay_tests::nats::free_port(), qm_replay_tests::nats::free_port());
    let _one = serve::spawn(binary, &server.url(), dir_one.path(), port_one, &[])?;
    let _two = serve::spawn(binary, &server.url(), dir_two.path(), port_two, &[])?;
    let (one, two) = (serve::channel(port_one).await?, serve::channel(port_two).await?);
    let created = CommandServiceClient::new(one.clone())
        .create_organization(create_org("shared"))
        .await?
        .into_inner();
    let seen = QueryServiceClient::new(two.clone())
        .get_organization(v1::GetOrganizationRequest {
            org_id: "shared".into(),
            min_position: created.position,
        })
        .await?
        .into_inner();
    ensure!(seen.organization.is_some_and(|o| o.name == "Acme"));
    let added =
        CommandServiceClient::new(two).add_member(add_member("shared", "bob")).await?.into_inner();
    let members = QueryServiceClient::new(one)
        .list_members(v1::ListMembersRequest {
            org_id: "shared".into(),
            min_position: added.position,
            ..Default::default()
        })
        .await?
        .into_inner();
    ensure!(members.members.iter().any(|m| m.person_id == "bob"));
    Ok(())
}

fn any_text() -> impl Strategy<Value = String> {
    prop_oneof![Just(String::new()), "[a-z]{1,8}", "\\PC{0,40}", ".{0,300}"]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Whatever the fields hold, the answer is a deliberate status, never a panic or INTERNAL.
    #[test]
    fn random_requests_never_cause_an_internal_error(
        actor in any_text(), org in any_text(), person in any_text(), email in any_text(),
        name in any_text(), role in any::<i32>(), seats in proptest::option::of(any::<i64>()),
        catalog in any_text(), url in any_text(), token in any_text(), page_size in any::<u32>(),
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let outcome: anyhow::Result<()> = runtime.block_on(async {
            let mut i = instance(LogConfig::Embedded).await?;
            let mut codes = Vec::new();
            let created = i.commands.create_organization(v1::CreateOrganizationRequest {
                actor_id: actor.clone(), org_id: org.clone(), name: name.clone(), admin_email: email.clone(),
                admin_display_name: name.clone(), ..Default::default()
            }).await;
            codes.push(created.err().map(|e| e.code()));
            let member = i.commands.add_member(v1::AddMemberRequest {
                actor_id: actor.clone(), org_id: org.clone(), person_id: person.clone(), email: email.clone(),
                display_name: name.clone(), role, ..Default::default()
            }).await;
            codes.push(member.err().map(|e| e.code()));
            let app = i.commands.add_integrated_app(v1::AddIntegratedAppRequest {
                actor_id: actor.clone(), org_id: org.clone(), app_id: person.clone(), catalog_app: catalog.clone(),
                display_name: name.clone(), base_url: url.clone(), seat_limit: seats,
                credentials: Some(v1::Credentials { bearer_token: token.clone(), ..Default::default() }),
                ..Default::default()
            }).await;
            codes.push(app.err().map(|e| e.code()));
            let listed = i.queries.list_members(v1::ListMembersRequest {
                org_id: org.clone(), page_size, page_token: token.clone(), ..Default::default()
            }).await;
            codes.push(listed.err().map(|e| e.code()));
            for code in codes.into_iter().flatten() {
                ensure!(!matches!(code, Code::Internal | Code::Unknown | Code::DataLoss), "got {code:?}");
            }
            i.running.stop().await
        });
        prop_assert!(outcome.is_ok(), "{:?}", outcome.err());
    }
}

/// The buf CLI installed by `deploy/dev/tools`.
fn buf() -> anyhow::Result<std::path::PathBuf> {
    let path = match std::env::var("QM_BUF") {
        Ok(path) => std::path::PathBuf::from(path),
        Err(_) => std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../.tools/buf/bin/buf"),
    };
    ensure!(
        path.exists(),
        "buf not found: run deploy/dev/tools (or deploy/dev/test), or set QM_BUF"
    );
    Ok(path)
}

#[tokio::test]
async fn a_generic_client_discovers_the_services_by_reflection_and_reads_a_launchpad()
-> anyhow::Result<()> {
    let mut i = instance(LogConfig::Embedded).await?;
    let position = acme(&mut i, "acme").await?;
    i.commands.provision_user(provision("acme", "bob")).await?;
    let url = format!("http://{}", i.running.addr);
    let curl = |args: &[&str]| {
        let mut command = tokio::process::Command::new(buf().expect("buf is installed"));
        command
            .args(["curl", "--protocol", "grpc", "--http2-prior-knowledge"])
            .args(args)
            .kill_on_drop(true);
        command
    };

    let listed = curl(&["--list-services", &url]).output().await?;
    let services = String::from_utf8_lossy(&listed.stdout);
    ensure!(listed.status.success(), "{}", String::from_utf8_lossy(&listed.stderr));
    for service in [
        "quartermaster.v1.CommandService",
        "quartermaster.v1.QueryService",
        "quartermaster.v1.AdminService",
        "grpc.health.v1.Health",
    ] {
        ensure!(services.contains(service), "{service} missing from {services}");
    }

    let body = format!(r#"{{"person_id":"bob","min_position":{}}}"#, position + 1);
    let header = format!("Authorization: Bearer {TOKEN}");
    let called = curl(&[
        "-H",
        &header,
        "-d",
        &body,
        &format!("{url}/quartermaster.v1.QueryService/GetLaunchpad"),
    ])
    .output()
    .await?;
    ensure!(called.status.success(), "{}", String::from_utf8_lossy(&called.stderr));
    let answer: serde_json::Value = serde_json::from_slice(&called.stdout)?;
    ensure!(answer["entries"][0]["appName"] == "Slack", "{answer}");
    ensure!(answer["entries"][0]["state"] == "GRANT_STATE_REQUESTED", "{answer}");
    i.running.stop().await
}

#[tokio::test]
async fn metrics_show_command_latency_conflicts_and_projection_lag() -> anyhow::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut i = instance(LogConfig::Embedded).await?;
    acme(&mut i, "acme").await?;
    let _ = i.commands.provision_user(provision("acme", "carol")).await;
    let at = i.running.metrics_addr.expect("the test instance serves metrics");
    let mut stream = tokio::net::TcpStream::connect(at).await?;
    stream.write_all(b"GET /metrics HTTP/1.1\r\nhost: test\r\n\r\n").await?;
    let mut text = String::new();
    stream.read_to_string(&mut text).await?;
    ensure!(text.starts_with("HTTP/1.1 200 OK"), "{text}");
    for name in [
        "quartermaster_commands_total{result=\"accepted\"}",
        "quartermaster_commands_total{result=\"rejected\"}",
        "quartermaster_command_duration_seconds_bucket{le=\"+Inf\"}",
        "quartermaster_conflicts_total",
        "quartermaster_projection_lag",
    ] {
        ensure!(text.contains(name), "{name} missing from:\n{text}");
    }
    let accepted: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("quartermaster_commands_total{result=\"accepted\"} "))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    ensure!(accepted >= 7, "accepted commands counted: {accepted}");
    i.running.stop().await
}
