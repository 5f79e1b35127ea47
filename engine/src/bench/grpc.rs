//! `quartermaster bench grpc`: ProvisionUser over the gRPC API on JetStream, against raw
//! pipelined JetStream publishes with the same headers, and GetLaunchpad latency at a steady
//! query rate.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::join_all;
use qm_proto::api::v1;
use qm_proto::api::v1::command_service_client::CommandServiceClient;
use qm_proto::api::v1::query_service_client::QueryServiceClient;
use qm_proto::*;
use serde::Serialize;
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;

use super::append::{AppendBench, id, raw_publish};
use super::percentile_us;
use crate::api::ApiConfig;
use crate::api::auth::Auth;
use crate::handler::{Engine, Request};
use crate::org::Command;
use crate::sealing::{MasterKey, Secret};
use crate::server::{LogConfig, ServeConfig, start};

#[derive(Debug, Clone)]
pub struct GrpcBench {
    pub nats_url: String,
    pub orgs: usize,
    pub in_flight: usize,
    pub count: usize,
    pub latency_samples: usize,
    /// GetLaunchpad queries per second for `query_p99_us`.
    pub query_rate: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct GrpcReport {
    pub command: &'static str,
    pub count: usize,
    pub orgs: usize,
    pub in_flight: usize,
    pub ops_per_s: f64,
    pub raw_ops_per_s: f64,
    pub ratio: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub query_rate: usize,
    pub query_p50_us: f64,
    pub query_p99_us: f64,
}

const TOKEN: &str = "bench-token";

pub async fn run(bench: GrpcBench) -> anyhow::Result<GrpcReport> {
    let dir = tempfile::tempdir()?;
    let auth = Auth::with_token_hashes(&[format!("bench:{}", Auth::hash(TOKEN))], false)?;
    let running = start(ServeConfig {
        listen: "127.0.0.1:0".parse().expect("a valid address"),
        data_dir: dir.path().to_path_buf(),
        log: LogConfig::JetStream { urls: bench.nats_url.clone(), replicas: 1 },
        master_key: MasterKey::generate(),
        api: ApiConfig { auth, tls: None, query_wait: Duration::from_secs(10) },
        metrics: None,
        provisioner: None,
    })
    .await?;
    let result = measure(&bench, &running.engine, &running.read_side, running.addr).await;
    running.stop().await?;
    result
}

/// Organizations `g<tag>-o<i>` with `members` people in a team and an authorized app without
/// a seat limit, set up through the engine (not timed).
async fn setup(engine: &Arc<Engine>, orgs: &[OrgId], members: usize) -> anyhow::Result<()> {
    let admin = Actor::Person(id("admin"));
    for chunk in orgs.chunks(64) {
        let setups = chunk.iter().map(|org| {
            let (engine, admin) = (engine.clone(), admin.clone());
            async move {
                let run = |actor: &Actor, command: Command| {
                    engine.execute(Request::new(org.clone(), actor.clone(), command))
                };
                let create = Command::CreateOrganization {
                    name: format!("Bench {org}"),
                    admin_email: "admin@bench.example".into(),
                    admin_display_name: "Admin".into(),
                };
                run(&admin, create).await?;
                run(&admin, Command::CreateTeam { team: id("eng"), name: "Engineering".into() })
                    .await?;
                for k in 0..members {
                    let person: PersonId = id(&format!("{org}-p{k}"));
                    let add = Command::AddMember {
                        person: person.clone(),
                        email: format!("{org}-p{k}@bench.example"),
                        display_name: format!("Person {k}"),
                        role: Role::Member,
                    };
                    run(&admin, add).await?;
                    run(&admin, Command::AddTeamMember { team: id("eng"), person }).await?;
                }
                let credentials = engine
                    .seal_credentials(org, &id("crm"), &Secret::new("{\"bearer_token\":\"t\"}"))
                    .await?;
                let app = Command::AddIntegratedApp {
                    app: id("crm"),
                    catalog_app: "slack".into(),
                    display_name: "Slack".into(),
                    base_url: "https://api.slack.com/scim/v2".into(),
                    credentials,
                    seat_limit: None,
                };
                run(&admin, app).await?;
                run(
                    &Actor::Service("provisioner".into()),
                    Command::RecordAppAuthorized { app: id("crm") },
                )
                .await?;
                anyhow::Ok(())
            }
        });
        join_all(setups).await.into_iter().collect::<anyhow::Result<Vec<_>>>()?;
    }
    Ok(())
}

async fn measure(
    bench: &GrpcBench,
    engine: &Arc<Engine>,
    read_side: &crate::read_side::ReadSide,
    addr: std::net::SocketAddr,
) -> anyhow::Result<GrpcReport> {
    let tag = format!("{:x}", uuid::Uuid::now_v7().as_u128() & 0xffff_ffff);
    let orgs: Vec<OrgId> = (0..bench.orgs).map(|i| id(&format!("g{tag}-o{i}"))).collect();
    // Each worker provisions person k of each of its organizations in turn; the worker with the
    // fewest organizations needs the most people per organization.
    let per_org = (bench.count / bench.in_flight).div_ceil((bench.orgs / bench.in_flight).max(1));
    tracing::info!(orgs = orgs.len(), members = per_org, "setting up");
    setup(engine, &orgs, per_org).await?;
    let latency_org: OrgId = id(&format!("g{tag}-latency"));
    setup(engine, std::slice::from_ref(&latency_org), bench.latency_samples).await?;

    // The views follow the log in the same process; let them catch up with the setup first.
    let caught_up = |position| read_side.views(position, Duration::from_secs(300));
    caught_up(engine.log().head().await?).await?;
    let channels = connect(addr, 4).await?;
    let bearer: MetadataValue<_> = format!("Bearer {TOKEN}").parse()?;
    let provision = |channel: Channel, org: &OrgId, person: usize| {
        let mut client = CommandServiceClient::new(channel);
        let mut request = tonic::Request::new(v1::ProvisionUserRequest {
            actor_id: "admin".into(),
            org_id: org.to_string(),
            app_id: "crm".into(),
            person_id: format!("{org}-p{person}"),
            ..Default::default()
        });
        request.metadata_mut().insert("authorization", bearer.clone());
        async move { client.provision_user(request).await }
    };

    // Throughput: `in_flight` workers, each owning some organizations.
    let per_worker = bench.count / bench.in_flight;
    tracing::info!(count = per_worker * bench.in_flight, "measuring throughput");
    let started = Instant::now();
    let workers = (0..bench.in_flight).map(|w| {
        let mine: Vec<OrgId> = orgs.iter().skip(w).step_by(bench.in_flight).cloned().collect();
        let channel = channels[w % channels.len()].clone();
        let provision = &provision;
        async move {
            anyhow::ensure!(!mine.is_empty(), "more workers than organizations");
            for i in 0..per_worker {
                let (org, person) = (&mine[i % mine.len()], i / mine.len());
                provision(channel.clone(), org, person).await?;
            }
            anyhow::Ok(())
        }
    });
    join_all(workers).await.into_iter().collect::<anyhow::Result<Vec<_>>>()?;
    let ops_per_s = (per_worker * bench.in_flight) as f64 / started.elapsed().as_secs_f64();

    // Light load: one command at a time, once the views have applied the burst above.
    caught_up(engine.log().head().await?).await?;
    tracing::info!(samples = bench.latency_samples, "measuring latency at light load");
    let mut took = Vec::with_capacity(bench.latency_samples);
    for k in 0..bench.latency_samples {
        let started = Instant::now();
        provision(channels[0].clone(), &latency_org, k).await?;
        took.push(started.elapsed());
    }
    took.sort();
    let (p50_us, p99_us) = (percentile_us(&took, 0.5), percentile_us(&took, 0.99));

    let position = engine.log().head().await?;
    caught_up(position).await?;
    tracing::info!(rate = bench.query_rate, "measuring GetLaunchpad latency");
    let (query_p50_us, query_p99_us) =
        launchpad_latency(&channels, &bearer, &orgs, position, bench.query_rate).await?;

    let raw = AppendBench {
        nats_url: bench.nats_url.clone(),
        orgs: bench.orgs,
        in_flight: bench.in_flight,
        count: bench.count,
        long_history: 0,
        latency_samples: 0,
    };
    let log =
        crate::log::jetstream::JetStreamLog::connect(&bench.nats_url, Default::default()).await?;
    let payload = provision_commit_size(engine, &orgs[0]).await?;
    tracing::info!("measuring raw JetStream publishes");
    let raw_ops_per_s = raw_publish(&log, &tag, &raw, payload).await?;
    let _ = log.context().delete_stream(format!("QM_BENCH_RAW_{tag}")).await;

    Ok(GrpcReport {
        command: "ProvisionUser",
        count: per_worker * bench.in_flight,
        orgs: bench.orgs,
        in_flight: bench.in_flight,
        ops_per_s,
        raw_ops_per_s,
        ratio: ops_per_s / raw_ops_per_s,
        p50_us,
        p99_us,
        query_rate: bench.query_rate,
        query_p50_us,
        query_p99_us,
    })
}

async fn connect(addr: std::net::SocketAddr, count: usize) -> anyhow::Result<Vec<Channel>> {
    let mut channels = Vec::with_capacity(count);
    for _ in 0..count {
        channels.push(
            Channel::from_shared(format!("http://{addr}"))?.tcp_nodelay(true).connect().await?,
        );
    }
    Ok(channels)
}

/// The size of a ProvisionUser commit as written.
async fn provision_commit_size(engine: &Engine, org: &OrgId) -> anyhow::Result<usize> {
    let history = engine.log().read_org(org, 0).await?;
    let last = history.last().ok_or_else(|| anyhow::anyhow!("the organization has no history"))?;
    Ok(last.commit.encode().len())
}

/// GetLaunchpad at a steady `rate` per second for two seconds, for people with an account.
/// Queries are sent evenly spaced by a thread of their own: the runtime's timers tick once a
/// millisecond, which would send them in bursts.
async fn launchpad_latency(
    channels: &[Channel],
    bearer: &MetadataValue<tonic::metadata::Ascii>,
    orgs: &[OrgId],
    position: Position,
    rate: usize,
) -> anyhow::Result<(f64, f64)> {
    let total = rate * 2;
    let interval = Duration::from_secs_f64(1.0 / rate as f64);
    let queries: Vec<_> = (0..total)
        .map(|k| {
            let client = QueryServiceClient::new(channels[k % channels.len()].clone());
            let mut request = tonic::Request::new(v1::GetLaunchpadRequest {
                // People provisioned above: the first person of each organization.
                person_id: format!("{}-p0", orgs[k % orgs.len()]),
                min_position: position,
                ..Default::default()
            });
            request.metadata_mut().insert("authorization", bearer.clone());
            (client, request)
        })
        .collect();
    let runtime = tokio::runtime::Handle::current();
    let sent = tokio::task::spawn_blocking(move || {
        let start = Instant::now();
        let mut sent = Vec::with_capacity(queries.len());
        for (k, (mut client, request)) in queries.into_iter().enumerate() {
            let due = start + interval.mul_f64(k as f64);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            sent.push(runtime.spawn(async move {
                let started = Instant::now();
                client.get_launchpad(request).await.map(|_| started.elapsed())
            }));
        }
        sent
    })
    .await?;
    let mut took = Vec::with_capacity(total);
    for query in sent {
        took.push(query.await??);
    }
    took.sort();
    Ok((percentile_us(&took, 0.5), percentile_us(&took, 0.99)))
}
