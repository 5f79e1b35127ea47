//! `quartermaster bench provision`: grants provisioned end to end (ProvisionUser through the
//! engine, the provisioner's durable consumer, the SCIM connector, the recorded outcome)
//! against the same SCIM server's raw create rate, measured in the same run with the same
//! number of calls in flight.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use qm_proto::*;
use serde::Serialize;

use super::append::id;
use crate::handler::{Engine, EngineConfig, Request};
use crate::log::jetstream::JetStreamLog;
use crate::org::{AppStatus, Command, GrantState};
use crate::provisioner::{JetStreamQueue, Provisioner, ProvisionerConfig};
use crate::sealing::{KvKeyStore, MasterKey, Sealer, Secret};

#[derive(Debug, Clone)]
pub struct ProvisionBench {
    pub nats_url: String,
    /// The SCIM 2.0 base URL (a server that accepts `scim_token`, or any token).
    pub scim_url: String,
    pub scim_token: String,
    pub grants: usize,
    /// Organizations the grants are spread over, each with its own integrated app.
    pub orgs: usize,
    /// Calls in flight to one integrated app (the provisioner's per-app limit).
    pub per_app_concurrency: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct ProvisionReport {
    pub grants: usize,
    pub orgs: usize,
    pub calls_in_flight: usize,
    pub grants_per_s: f64,
    pub raw_scim_posts_per_s: f64,
    pub ratio: f64,
    /// From ProvisionUser accepted to the grant recorded active.
    pub p50_ms: f64,
    pub p99_ms: f64,
}

pub async fn run(bench: ProvisionBench) -> anyhow::Result<ProvisionReport> {
    anyhow::ensure!(
        bench.orgs > 0 && bench.grants >= bench.orgs,
        "--grants must be at least --orgs"
    );
    let calls_in_flight = bench.orgs * bench.per_app_concurrency;
    let (tag, config) = super::scratch_config();
    let raw_scim_posts_per_s = raw_creates(&bench, &tag, calls_in_flight).await?;

    let log = JetStreamLog::connect(&bench.nats_url, config.clone()).await?;
    let keys_bucket = format!("QM_BENCH_KEYS_{tag}");
    let keys = Arc::new(KvKeyStore::open(log.context(), &keys_bucket, 1).await?);
    let js = log.context().clone();
    let sealer = Arc::new(Sealer::new(MasterKey::generate(), keys));
    let engine = Arc::new(Engine::new(Arc::new(log.clone()), sealer, EngineConfig::default()));
    let provisioning = ProvisionerConfig {
        per_app_concurrency: bench.per_app_concurrency,
        in_flight: calls_in_flight.max(64),
        ..ProvisionerConfig::default()
    };
    let queue = Arc::new(JetStreamQueue::new(
        log.stream().clone(),
        &format!("qm-bench-provisioner-{tag}"),
        &config.subject_prefix,
        provisioning.ack_wait,
        provisioning.in_flight.max(10_000),
    ));
    let provisioner = tokio::spawn(Provisioner::new(engine.clone(), provisioning).run(queue));

    let result = measure(&bench, &engine, &tag).await;
    provisioner.abort();
    for stream in [
        config.stream.clone(),
        format!("KV_{}", config.snapshot_bucket),
        format!("KV_{keys_bucket}"),
    ] {
        let _ = js.delete_stream(&stream).await;
    }
    let (grants_per_s, mut latencies) = result?;
    latencies.sort();
    Ok(ProvisionReport {
        grants: bench.grants,
        orgs: bench.orgs,
        calls_in_flight,
        grants_per_s,
        raw_scim_posts_per_s,
        ratio: grants_per_s / raw_scim_posts_per_s,
        p50_ms: super::percentile_us(&latencies, 0.5) / 1000.0,
        p99_ms: super::percentile_us(&latencies, 0.99) / 1000.0,
    })
}

/// The server's create rate with nothing in between: `POST /Users`, `in_flight` at a time.
async fn raw_creates(bench: &ProvisionBench, tag: &str, in_flight: usize) -> anyhow::Result<f64> {
    let client = qm_connectors::scim::http_client(Duration::from_secs(30));
    let url = format!("{}/Users", bench.scim_url.trim_end_matches('/'));
    let started = Instant::now();
    let results: Vec<anyhow::Result<()>> = futures::stream::iter(0..bench.grants)
        .map(|n| {
            let user = serde_json::json!({
                "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"],
                "externalId": format!("raw-{tag}-{n}"),
                "userName": format!("raw-{tag}-{n}@bench.test"),
                "displayName": format!("Raw {n}"),
                "name": {"formatted": format!("Raw {n}"), "givenName": "Raw", "familyName": n.to_string()},
                "emails": [{"value": format!("raw-{tag}-{n}@bench.test"), "type": "work", "primary": true}],
                "active": true,
            });
            let request = client
                .post(&url)
                .bearer_auth(&bench.scim_token)
                .header("content-type", "application/scim+json")
                .body(user.to_string());
            async move {
                let response = request.send().await?;
                anyhow::ensure!(response.status().is_success(), "raw create answered {}", response.status());
                Ok(())
            }
        })
        .buffer_unordered(in_flight)
        .collect()
        .await;
    let elapsed = started.elapsed();
    results.into_iter().collect::<anyhow::Result<Vec<()>>>()?;
    Ok(bench.grants as f64 / elapsed.as_secs_f64())
}

/// Sets up the organizations (not timed), then provisions every grant and waits until all are
/// recorded active. Returns grants per second and each grant's latency.
async fn measure(
    bench: &ProvisionBench,
    engine: &Arc<Engine>,
    tag: &str,
) -> anyhow::Result<(f64, Vec<Duration>)> {
    let admin = Actor::Person(id("admin"));
    let orgs: Vec<OrgId> = (0..bench.orgs).map(|o| id(&format!("p{tag}-o{o}"))).collect();
    let per_org = bench.grants.div_ceil(bench.orgs);
    let run = |org: &OrgId, command: Command| {
        engine.execute(Request::new(org.clone(), admin.clone(), command))
    };
    let mut people = Vec::new();
    for org in &orgs {
        run(
            org,
            Command::CreateOrganization {
                name: format!("Bench {org}"),
                admin_email: "admin@bench.test".into(),
                admin_display_name: "Admin".into(),
            },
        )
        .await?;
        run(org, Command::CreateTeam { team: id("eng"), name: "Engineering".into() }).await?;
        let secret =
            Secret::new(serde_json::json!({ "bearer_token": bench.scim_token }).to_string());
        let credentials = engine.seal_credentials(org, &id("app"), &secret).await?;
        run(
            org,
            Command::AddIntegratedApp {
                app: id("app"),
                catalog_app: qm_connectors::catalog::CUSTOM_SCIM.into(),
                display_name: "SCIM".into(),
                base_url: bench.scim_url.clone(),
                credentials,
                seat_limit: None,
            },
        )
        .await?;
        for k in 0..per_org {
            if people.len() == bench.grants {
                break;
            }
            let person: PersonId = id(&format!("u{k}"));
            run(
                org,
                Command::AddMember {
                    person: person.clone(),
                    email: format!("{org}-u{k}@bench.test"),
                    display_name: format!("User {k}"),
                    role: Role::Member,
                },
            )
            .await?;
            run(org, Command::AddTeamMember { team: id("eng"), person: person.clone() }).await?;
            people.push((org.clone(), person));
        }
    }
    for org in &orgs {
        wait_until(engine, org, Duration::from_secs(30), |state| {
            state.apps.values().all(|a| a.status == AppStatus::Authorized)
        })
        .await
        .map_err(|_| {
            anyhow::anyhow!(
                "the SCIM app of {org} was not authorized: check --scim-url and --scim-token"
            )
        })?;
    }

    let started = Instant::now();
    let requested: Vec<anyhow::Result<(OrgId, GrantId, Instant)>> = futures::stream::iter(people)
        .map(|(org, person)| async move {
            let grant: GrantId = id(&uuid::Uuid::now_v7().to_string());
            let command = Command::ProvisionUser { app: id("app"), person, grant: grant.clone() };
            run(&org, command).await?;
            Ok((org, grant, Instant::now()))
        })
        .buffer_unordered(256)
        .collect()
        .await;
    let requested = requested.into_iter().collect::<anyhow::Result<Vec<_>>>()?;
    let mut latencies = Vec::with_capacity(requested.len());
    let mut waiting = requested;
    let deadline = Instant::now() + Duration::from_secs(600);
    while !waiting.is_empty() {
        anyhow::ensure!(Instant::now() < deadline, "{} grants never became active", waiting.len());
        let mut states = std::collections::HashMap::new();
        for org in &orgs {
            states.insert(org.clone(), engine.org_state(org).await?);
        }
        let now = Instant::now();
        for (org, grant, _) in &waiting {
            let g = &states[org].grants[grant];
            if g.state == GrantState::Quarantined {
                let why = g.last_error.clone().unwrap_or_default();
                anyhow::bail!("grant {grant} was quarantined: {why}");
            }
        }
        waiting.retain(|(org, grant, at)| {
            let active = states[org].grants[grant].state == GrantState::Active;
            if active {
                latencies.push(now - *at);
            }
            !active
        });
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let elapsed = started.elapsed();
    Ok((bench.grants as f64 / elapsed.as_secs_f64(), latencies))
}

async fn wait_until(
    engine: &Engine,
    org: &OrgId,
    limit: Duration,
    done: impl Fn(&crate::org::OrgState) -> bool,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
    loop {
        if done(&engine.org_state(org).await?) {
            return Ok(());
        }
        anyhow::ensure!(Instant::now() < deadline, "timed out");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
