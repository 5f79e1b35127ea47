//! `quartermaster demo`: the first walk through, over the real gRPC API on a loopback port, on
//! an embedded log in a temporary directory.
//!
//! Admin Alice creates organization Acme with a team, attaches Salesforce from the catalog with
//! its credentials and ten seats, and provisions Bob; Bob's launchpad and Salesforce's "who has
//! access" then show his account. Talking to Salesforce itself is the provisioner's job; the
//! demo has no Salesforce to talk to, so it records the app's answers itself, as the
//! provisioner would, and says so.
#![allow(clippy::print_stdout, reason = "the demo's output is its purpose")]

use std::sync::Arc;

use qm_proto::api::v1;
use qm_proto::api::v1::command_service_client::CommandServiceClient;
use qm_proto::api::v1::query_service_client::QueryServiceClient;
use qm_proto::*;
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;

use crate::api::ApiConfig;
use crate::api::auth::Auth;
use crate::handler::{Engine, Request};
use crate::org::Command;
use crate::sealing::MasterKey;
use crate::server::{LogConfig, ServeConfig, start};

pub async fn run() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let token = MasterKey::generate().to_hex();
    let auth = Auth::with_token_hashes(&[format!("demo:{}", Auth::hash(&token))], false)?;
    let running = start(ServeConfig {
        listen: "127.0.0.1:0".parse().expect("a valid address"),
        data_dir: dir.path().to_path_buf(),
        log: LogConfig::Embedded,
        master_key: MasterKey::generate(),
        api: ApiConfig { auth, tls: None, query_wait: crate::server::QUERY_WAIT },
        metrics: None,
        provisioner: None,
    })
    .await?;
    println!(
        "Quartermaster is serving its gRPC API on {} (embedded log in {})\n",
        running.addr,
        dir.path().display()
    );

    let result = walk(running.addr, &token, running.engine.clone()).await;
    running.stop().await?;
    result?;
    println!("\nDone. Run `quartermaster serve` to keep a server up.");
    Ok(())
}

fn step(n: usize, what: &str) {
    println!("{n}. {what}");
}

async fn walk(addr: std::net::SocketAddr, token: &str, engine: Arc<Engine>) -> anyhow::Result<()> {
    let channel = Channel::from_shared(format!("http://{addr}"))?.connect().await?;
    let bearer: MetadataValue<_> = format!("Bearer {token}").parse()?;
    let auth = move |mut r: tonic::Request<()>| {
        r.metadata_mut().insert("authorization", bearer.clone());
        Ok(r)
    };
    let mut commands = CommandServiceClient::with_interceptor(channel.clone(), auth.clone());
    let mut queries = QueryServiceClient::with_interceptor(channel, auth);
    let (org, alice) = ("acme", "alice");

    step(1, "Alice creates the organization Acme; she is its first admin.");
    commands
        .create_organization(v1::CreateOrganizationRequest {
            actor_id: alice.into(),
            org_id: org.into(),
            name: "Acme Corp".into(),
            admin_email: "alice@acme.example".into(),
            admin_display_name: "Alice Smith".into(),
            ..Default::default()
        })
        .await?;
    commands
        .create_team(v1::CreateTeamRequest {
            actor_id: alice.into(),
            org_id: org.into(),
            team_id: "sales".into(),
            name: "Sales".into(),
            ..Default::default()
        })
        .await?;
    println!("   team Sales created");

    step(2, "Alice adds Bob to Acme and to the Sales team.");
    commands
        .add_member(v1::AddMemberRequest {
            actor_id: alice.into(),
            org_id: org.into(),
            person_id: "bob".into(),
            email: "bob@acme.example".into(),
            display_name: "Bob Jones".into(),
            role: v1::Role::Member as i32,
            ..Default::default()
        })
        .await?;
    commands
        .add_team_member(v1::AddTeamMemberRequest {
            actor_id: alice.into(),
            org_id: org.into(),
            team_id: "sales".into(),
            person_id: "bob".into(),
            ..Default::default()
        })
        .await?;

    step(3, "Alice opens the catalog of apps that give each person an account.");
    let catalog =
        queries.list_catalog_apps(v1::ListCatalogAppsRequest::default()).await?.into_inner();
    let names: Vec<_> = catalog.apps.iter().map(|a| a.name.as_str()).collect();
    println!("   {} apps: {}", names.len(), names.join(", "));

    step(4, "Alice attaches Salesforce with Acme's credentials and 10 seats.");
    let added = commands
        .add_integrated_app(v1::AddIntegratedAppRequest {
            actor_id: alice.into(),
            org_id: org.into(),
            app_id: "salesforce".into(),
            catalog_app: "salesforce".into(),
            display_name: "Salesforce".into(),
            base_url: "https://acme.my.salesforce.com/services/scim/v2".into(),
            credentials: Some(v1::Credentials {
                client_id: "acme-quartermaster".into(),
                client_secret: "demo-client-secret".into(),
                token_url: "https://login.salesforce.com/services/oauth2/token".into(),
                ..Default::default()
            }),
            seat_limit: Some(10),
            ..Default::default()
        })
        .await?
        .into_inner();
    println!(
        "   attached at position {}; the credentials were sealed before they were stored",
        added.position
    );
    record(&engine, org, Command::RecordAppAuthorized { app: "salesforce".parse()? }).await?;
    println!("   (demo) Salesforce accepted the credentials: recorded as the provisioner would");

    step(5, "Alice provisions Bob with his own Salesforce account.");
    let provisioned = commands
        .provision_user(v1::ProvisionUserRequest {
            actor_id: alice.into(),
            org_id: org.into(),
            app_id: "salesforce".into(),
            person_id: "bob".into(),
            ..Default::default()
        })
        .await?
        .into_inner();
    println!("   grant {} requested at position {}", provisioned.grant_id, provisioned.position);
    let account = ExternalAccount {
        id: "005Hs00000AbCdE".into(),
        user_name: "bob@acme.example".into(),
        open_url: Some("https://acme.my.salesforce.com".into()),
    };
    let done = record(
        &engine,
        org,
        Command::RecordAccountProvisioned { grant: provisioned.grant_id.parse()?, account },
    )
    .await?;
    println!(
        "   (demo) Salesforce created account 005Hs00000AbCdE: recorded as the provisioner would"
    );

    step(6, "Bob opens his launchpad.");
    let launchpad = queries
        .get_launchpad(v1::GetLaunchpadRequest {
            person_id: "bob".into(),
            min_position: done,
            ..Default::default()
        })
        .await?
        .into_inner();
    for entry in &launchpad.entries {
        println!(
            "   {} at {} as {} ({}) -> {}",
            entry.app_name,
            entry.org_name,
            entry.user_name,
            v1::GrantState::try_from(entry.state).map_or("unknown", |s| s.as_str_name()),
            entry.open_url
        );
    }
    anyhow::ensure!(launchpad.entries.len() == 1, "Bob's launchpad should show one account");

    step(7, "Alice checks who has access to Salesforce.");
    let access = queries
        .who_has_access(v1::WhoHasAccessRequest {
            org_id: org.into(),
            app_id: "salesforce".into(),
            min_position: done,
            ..Default::default()
        })
        .await?
        .into_inner();
    for grant in &access.grants {
        println!(
            "   {} ({}), account {}",
            grant.person_id,
            v1::GrantState::try_from(grant.state).map_or("unknown", |s| s.as_str_name()),
            grant.external_account_id
        );
    }
    let apps = queries
        .list_integrated_apps(v1::ListIntegratedAppsRequest {
            org_id: org.into(),
            min_position: done,
            ..Default::default()
        })
        .await?
        .into_inner();
    for app in &apps.apps {
        println!(
            "   {}: {} of {} seats used",
            app.display_name,
            app.seats_used,
            app.seat_limit.unwrap_or(0)
        );
    }
    Ok(())
}

/// Records what the app answered, as the provisioner does after calling it.
async fn record(engine: &Engine, org: &str, command: Command) -> anyhow::Result<Position> {
    let request = Request::new(org.parse()?, Actor::Service("demo".into()), command);
    Ok(engine.execute(request).await?.position)
}
