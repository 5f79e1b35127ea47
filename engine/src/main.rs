//! The `quartermaster` command: glue between the command line and the engine library.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use qm_engine::bench::append::{AppendBench, run as run_append_bench};
use qm_engine::log::EventLog;
use qm_engine::read_side::{ReadSide, RebuildProgress};
use qm_engine::server::LogConfig;

// Projections and command handling allocate many small rows and ids; mimalloc handles that
// pattern markedly faster than the system allocator (see the projection benchmark).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser, Debug)]
#[command(
    name = "quartermaster",
    version,
    about = "Provisions people with their own accounts in the apps their organization pays for"
)]
struct Cli {
    /// Log format on stderr.
    #[arg(long, global = true, default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
    #[command(subcommand)]
    command: Commands,
}

#[derive(Subcommand, Debug)]
enum Commands {
    /// Benchmarks that print their figures beside the raw systems measured in the same run.
    #[command(subcommand)]
    Bench(BenchCommand),
    /// The read side's views: status, catching up, rebuilding.
    #[command(subcommand)]
    Projections(ProjectionsCommand),
    /// For auditors: whether the event log can be trusted.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Serves the gRPC API: on the embedded log in the data directory by default, on JetStream
    /// with --nats-url.
    Serve(ServeArgs),
    /// Walks through what a new user tries first, over the real API on a loopback port.
    Demo,
    /// Reads a calling service's token on standard input and prints the hash to configure.
    HashToken,
}

/// Settings of `serve`. Each comes from its flag, else its environment variable, else the
/// config file (lines of `QM_NAME=value`, the environment's names), else its default.
#[derive(Args, Debug)]
struct ServeArgs {
    /// A file of `QM_NAME=value` lines.
    #[arg(long, env = "QM_CONFIG")]
    config: Option<PathBuf>,
    /// Address of the gRPC API [default: 127.0.0.1:50051].
    #[arg(long, env = "QM_LISTEN")]
    listen: Option<String>,
    /// Data directory: views, and the embedded log [default: ./.data/quartermaster].
    #[arg(long, env = "QM_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// NATS server URLs, comma-separated; without them the embedded log is used.
    #[arg(long, env = "QM_NATS_URL")]
    nats_url: Option<String>,
    /// Replicas of the event log stream on JetStream [default: 1; 3 in production].
    #[arg(long, env = "QM_NATS_REPLICAS")]
    nats_replicas: Option<usize>,
    /// File holding the master key (64 hex digits) that wraps the data keys.
    #[arg(long, env = "QM_MASTER_KEY_FILE")]
    master_key_file: Option<PathBuf>,
    /// Calling services' tokens as NAME:SHA256HEX, comma-separated (`quartermaster hash-token`).
    #[arg(long, env = "QM_TOKEN_HASHES")]
    token_hashes: Option<String>,
    /// Accept calls without authentication (local development only).
    #[arg(long, env = "QM_NO_AUTH", num_args = 0..=1, default_missing_value = "true")]
    no_auth: Option<bool>,
    /// Server certificate (PEM); with --tls-key, the API is served over TLS.
    #[arg(long, env = "QM_TLS_CERT")]
    tls_cert: Option<PathBuf>,
    #[arg(long, env = "QM_TLS_KEY")]
    tls_key: Option<PathBuf>,
    /// CA (PEM) whose client certificates authenticate callers (mutual TLS).
    #[arg(long, env = "QM_TLS_CLIENT_CA")]
    tls_client_ca: Option<PathBuf>,
    /// Address of the Prometheus metrics endpoint; unset, none is served.
    #[arg(long, env = "QM_METRICS_LISTEN")]
    metrics_listen: Option<String>,
    /// Run no provisioner in this instance (another instance on the same log does the work).
    #[arg(long, env = "QM_NO_PROVISIONER", num_args = 0..=1, default_missing_value = "true")]
    no_provisioner: Option<bool>,
    /// Seconds one call to an app may take [default: 10].
    #[arg(long, env = "QM_PROVISION_TIMEOUT")]
    provision_timeout: Option<f64>,
    /// Milliseconds before the first retry of a failed call, doubling each time [default: 1000].
    #[arg(long, env = "QM_PROVISION_BACKOFF_MS")]
    provision_backoff_ms: Option<u64>,
    /// Failed calls before a grant is quarantined [default: 8].
    #[arg(long, env = "QM_PROVISION_MAX_ATTEMPTS")]
    provision_max_attempts: Option<u32>,
    /// Calls in flight to one integrated app [default: 16].
    #[arg(long, env = "QM_PROVISION_CONCURRENCY")]
    provision_concurrency: Option<usize>,
    /// Calls started per second against one integrated app [default: unpaced].
    #[arg(long, env = "QM_PROVISION_RATE")]
    provision_rate: Option<f64>,
    /// Seconds of silence after which another instance takes over this one's work [default: 30].
    #[arg(long, env = "QM_PROVISION_ACK_WAIT")]
    provision_ack_wait: Option<f64>,
}

/// Where the event log and the views are.
#[derive(Args, Debug, Clone)]
struct Storage {
    /// Directory of the views (and of the embedded log when no NATS URL is given).
    #[arg(long, env = "QM_DATA_DIR", default_value = "./.data/quartermaster")]
    data_dir: PathBuf,
    /// NATS server URLs, comma-separated; without them the embedded log in the data directory is used.
    #[arg(long, env = "QM_NATS_URL")]
    nats_url: Option<String>,
    /// Replicas of the event log stream on JetStream (3 in production).
    #[arg(long, env = "QM_NATS_REPLICAS", default_value_t = 1)]
    nats_replicas: usize,
}

#[derive(Subcommand, Debug)]
enum ProjectionsCommand {
    /// Each view's position, the log's head, the lag and the state.
    Status(Storage),
    /// Brings the views up to the log's head, then exits.
    CatchUp(Storage),
    /// Rebuilds the views from position 0 into a new file, then swaps it in.
    Rebuild(Storage),
}

#[derive(Subcommand, Debug)]
enum AuditCommand {
    /// Reads the whole log and checks every organization's hash chain; exits non-zero, naming
    /// the organization and position, at the first broken link.
    Verify(VerifyArgs),
}

#[derive(Args, Debug)]
struct VerifyArgs {
    #[command(flatten)]
    storage: Storage,
    /// Also print each organization's last position and hash, to compare with a later run.
    #[arg(long)]
    heads: bool,
}

#[derive(Subcommand, Debug)]
enum BenchCommand {
    /// Command throughput and latency on JetStream against raw publishes with the same headers.
    Append(AppendArgs),
    /// Read side catch-up, rebuild, read-your-writes and query latency against raw replay and redb.
    Projection(ProjectionArgs),
    /// ProvisionUser over gRPC against raw JetStream publishes, and GetLaunchpad latency.
    Grpc(GrpcArgs),
    /// Grants provisioned end to end into a SCIM server against its raw create rate.
    Provision(ProvisionArgs),
}

#[derive(Args, Debug)]
struct ProvisionArgs {
    #[arg(long, env = "QM_NATS_URL", default_value = "nats://127.0.0.1:4222")]
    nats_url: String,
    /// The SCIM 2.0 base URL of a server to create the accounts in (https, or http on loopback).
    #[arg(long)]
    scim_url: String,
    /// The bearer token the SCIM server accepts.
    #[arg(long, env = "QM_BENCH_SCIM_TOKEN", default_value = "bench")]
    scim_token: String,
    #[arg(long, default_value_t = 2000)]
    grants: usize,
    /// Organizations the grants are spread over, each with its own integrated app.
    #[arg(long, default_value_t = 2)]
    orgs: usize,
    /// Calls in flight to one integrated app; the raw baseline keeps orgs x this many in
    /// flight too. (Small by default: scim2-server's listen backlog is 5 connections.)
    #[arg(long, default_value_t = 4)]
    per_app_concurrency: usize,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
struct GrpcArgs {
    #[arg(long, env = "QM_NATS_URL", default_value = "nats://127.0.0.1:4222")]
    nats_url: String,
    #[arg(long, default_value_t = 1000)]
    orgs: usize,
    #[arg(long, default_value_t = 256)]
    in_flight: usize,
    #[arg(long, default_value_t = 50_000)]
    count: usize,
    #[arg(long, default_value_t = 2000)]
    latency_samples: usize,
    /// GetLaunchpad queries per second for query_p99_us.
    #[arg(long, default_value_t = 5000)]
    query_rate: usize,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
struct ProjectionArgs {
    #[arg(long, env = "QM_NATS_URL", default_value = "nats://127.0.0.1:4222")]
    nats_url: String,
    #[arg(long, default_value_t = 1_000_000)]
    events: usize,
    #[arg(long, default_value_t = 1000)]
    orgs: usize,
    #[arg(long, default_value_t = 20_000)]
    queries: usize,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
struct AppendArgs {
    #[arg(long, env = "QM_NATS_URL", default_value = "nats://127.0.0.1:4222")]
    nats_url: String,
    #[arg(long, default_value_t = 1000)]
    orgs: usize,
    #[arg(long, default_value_t = 256)]
    in_flight: usize,
    #[arg(long, default_value_t = 100_000)]
    count: usize,
    /// Commits in the long history the short one is compared with.
    #[arg(long, default_value_t = 100_000)]
    long_history: usize,
    #[arg(long, default_value_t = 2000)]
    latency_samples: usize,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
}

fn init_logging(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("QM_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

#[allow(clippy::print_stdout, reason = "the binary's output is its interface")]
fn print_report<T: serde::Serialize>(report: &T, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string(report)?);
    } else {
        let value = serde_json::to_value(report)?;
        for (key, value) in value.as_object().into_iter().flatten() {
            println!("{key:<26} {value}");
        }
    }
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_logging(&cli.log_format);
    match cli.command {
        Commands::Bench(BenchCommand::Append(args)) => {
            anyhow::ensure!(
                args.in_flight > 0 && args.count >= args.in_flight,
                "--count must be at least --in-flight"
            );
            let report = run_append_bench(AppendBench {
                nats_url: args.nats_url,
                orgs: args.orgs,
                in_flight: args.in_flight,
                count: args.count,
                long_history: args.long_history,
                latency_samples: args.latency_samples,
            })
            .await?;
            print_report(&report, args.json)
        }
        Commands::Bench(BenchCommand::Projection(args)) => {
            let report =
                qm_engine::bench::projection::run(qm_engine::bench::projection::ProjectionBench {
                    nats_url: args.nats_url,
                    events: args.events,
                    orgs: args.orgs,
                    queries: args.queries,
                })
                .await?;
            print_report(&report, args.json)
        }
        Commands::Bench(BenchCommand::Grpc(args)) => {
            anyhow::ensure!(
                args.in_flight > 0 && args.count >= args.in_flight,
                "--count must be at least --in-flight"
            );
            let report = qm_engine::bench::grpc::run(qm_engine::bench::grpc::GrpcBench {
                nats_url: args.nats_url,
                orgs: args.orgs,
                in_flight: args.in_flight,
                count: args.count,
                latency_samples: args.latency_samples,
                query_rate: args.query_rate,
            })
            .await?;
            print_report(&report, args.json)
        }
        Commands::Bench(BenchCommand::Provision(args)) => {
            let report =
                qm_engine::bench::provision::run(qm_engine::bench::provision::ProvisionBench {
                    nats_url: args.nats_url,
                    scim_url: args.scim_url,
                    scim_token: args.scim_token,
                    grants: args.grants,
                    orgs: args.orgs,
                    per_app_concurrency: args.per_app_concurrency,
                })
                .await?;
            print_report(&report, args.json)
        }
        Commands::Projections(command) => projections(command).await,
        Commands::Audit(AuditCommand::Verify(args)) => audit_verify(args).await,
        Commands::Serve(args) => serve(args).await,
        Commands::Demo => qm_engine::demo::run().await,
        Commands::HashToken => {
            let mut token = String::new();
            std::io::stdin().read_line(&mut token)?;
            print_lines(&[qm_engine::api::auth::Auth::hash(token.trim_end_matches(['\r', '\n']))]);
            Ok(())
        }
    }
}

async fn open_log(storage: &Storage) -> anyhow::Result<Arc<dyn EventLog>> {
    let config = match &storage.nats_url {
        Some(urls) => LogConfig::JetStream { urls: urls.clone(), replicas: storage.nats_replicas },
        None => LogConfig::Embedded,
    };
    Ok(config.open(&storage.data_dir).await?.log)
}

async fn projections(command: ProjectionsCommand) -> anyhow::Result<()> {
    let storage = match &command {
        ProjectionsCommand::Status(s)
        | ProjectionsCommand::CatchUp(s)
        | ProjectionsCommand::Rebuild(s) => s,
    };
    let log = open_log(storage).await?;
    match command {
        ProjectionsCommand::Status(_) => {
            // Only look: opening the views without following the log changes nothing.
            let views = qm_projections::Projector::open(
                storage.data_dir.join(qm_engine::read_side::VIEWS_FILE),
            )?;
            let status = views.status();
            let head = log.head().await.ok();
            let head_text = head.map_or("unknown".into(), |h| h.to_string());
            let lag =
                head.map_or("unknown".into(), |h| h.saturating_sub(status.position).to_string());
            print_lines(&[
                format!("views      {}", views.path().display()),
                format!("position   {}", status.position),
                format!("log head   {head_text}"),
                format!("lag        {lag}"),
                format!("state      {:?}", status.state),
            ]);
        }
        ProjectionsCommand::CatchUp(_) => {
            let read_side = ReadSide::start(log.clone(), &storage.data_dir)?;
            let head = log.head().await?;
            let started = std::time::Instant::now();
            let mut applied = read_side.projector().applied();
            loop {
                let position = *applied.borrow_and_update();
                let rate = position as f64 / started.elapsed().as_secs_f64().max(1e-3);
                draw_progress(position, head, rate, false);
                if position >= head {
                    break;
                }
                if let qm_projections::ProjectorState::Failed { error } =
                    read_side.projector().status().state
                {
                    anyhow::bail!("views stopped: {error}");
                }
                let _ = tokio::time::timeout(Duration::from_millis(200), applied.changed()).await;
            }
            read_side.projector().flush()?;
            eprintln!();
        }
        ProjectionsCommand::Rebuild(_) => {
            let read_side = ReadSide::start(log.clone(), &storage.data_dir)?;
            let report = read_side
                .rebuild(|p: &RebuildProgress| {
                    draw_progress(p.applied, p.target, p.commits_per_s, p.done)
                })
                .await?;
            eprintln!();
            print_lines(&[format!(
                "rebuilt {} commits in {:.1} s ({:.0} commits/s) and swapped in",
                report.applied,
                report.elapsed.as_secs_f64(),
                report.commits_per_s
            )]);
        }
    }
    Ok(())
}

async fn audit_verify(args: VerifyArgs) -> anyhow::Result<()> {
    let log = open_log(&args.storage).await?;
    let started = std::time::Instant::now();
    let mut last_drawn = started;
    let verified = qm_engine::audit::verify(log.as_ref(), |position, head| {
        if last_drawn.elapsed() >= Duration::from_millis(200) {
            last_drawn = std::time::Instant::now();
            let rate = position as f64 / started.elapsed().as_secs_f64().max(1e-3);
            draw_progress(position, head, rate, false);
        }
    })
    .await;
    if started.elapsed() >= Duration::from_millis(200) {
        eprintln!();
    }
    let verified = verified?;
    let orgs = verified.organizations.len();
    let mut lines = vec![format!(
        "verified {} commits of {orgs} organization{} up to position {}: every chain is intact",
        verified.commits,
        if orgs == 1 { "" } else { "s" },
        verified.head
    )];
    if args.heads {
        lines.extend(verified.organizations.iter().map(|(org, head)| {
            format!(
                "{org} commits {} last position {} hash {}",
                head.commits,
                head.position,
                hex::encode(head.hash)
            )
        }));
    }
    print_lines(&lines);
    Ok(())
}

#[allow(clippy::print_stdout, reason = "the binary's output is its interface")]
fn print_lines(lines: &[String]) {
    for line in lines {
        println!("{line}");
    }
}

/// One line of progress on stderr, redrawn in place.
fn draw_progress(applied: u64, target: u64, per_s: f64, done: bool) {
    const WIDTH: usize = 30;
    let fraction = if target == 0 { 1.0 } else { (applied as f64 / target as f64).min(1.0) };
    let filled = (fraction * WIDTH as f64) as usize;
    let eta = if per_s > 0.0 && target > applied {
        format!("ETA {:.0} s", (target - applied) as f64 / per_s)
    } else if done {
        "swapped".to_string()
    } else {
        "ETA 0 s".to_string()
    };
    let mut err = std::io::stderr().lock();
    let _ = write!(
        err,
        "\r[{}{}] {:>3.0}%  {applied}/{target} commits  {per_s:.0} commits/s  {eta}   ",
        "#".repeat(filled),
        "-".repeat(WIDTH - filled),
        fraction * 100.0
    );
    let _ = err.flush();
}

/// The settings of a config file: `QM_NAME=value` lines; `#` starts a comment.
fn read_config_file(
    path: Option<&PathBuf>,
) -> anyhow::Result<std::collections::HashMap<String, String>> {
    let mut settings = std::collections::HashMap::new();
    let Some(path) = path else { return Ok(settings) };
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("config file {}: {e}", path.display()))?;
    for (number, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (name, value) = line.split_once('=').ok_or_else(|| {
            anyhow::anyhow!(
                "config file {} line {}: expected QM_NAME=value",
                path.display(),
                number + 1
            )
        })?;
        settings.insert(name.trim().to_string(), value.trim().to_string());
    }
    Ok(settings)
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let file = read_config_file(args.config.as_ref())?;
    let from_file = |name: &str| file.get(name).cloned();
    let provisioner = provisioner_config(&args, &from_file)?;
    let listen =
        args.listen.or_else(|| from_file("QM_LISTEN")).unwrap_or_else(|| "127.0.0.1:50051".into());
    let data_dir = args
        .data_dir
        .or_else(|| from_file("QM_DATA_DIR").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("./.data/quartermaster"));
    let nats_url = args.nats_url.or_else(|| from_file("QM_NATS_URL"));
    let replicas = match args.nats_replicas {
        Some(n) => n,
        None => from_file("QM_NATS_REPLICAS").map(|v| v.parse()).transpose()?.unwrap_or(1),
    };
    let no_auth = match args.no_auth {
        Some(v) => v,
        None => from_file("QM_NO_AUTH").is_some_and(|v| v == "true"),
    };
    let token_hashes: Vec<String> = args
        .token_hashes
        .or_else(|| from_file("QM_TOKEN_HASHES"))
        .map(|v| v.split(',').map(str::trim).filter(|s| !s.is_empty()).map(String::from).collect())
        .unwrap_or_default();
    let tls_cert = args.tls_cert.or_else(|| from_file("QM_TLS_CERT").map(PathBuf::from));
    let tls_key = args.tls_key.or_else(|| from_file("QM_TLS_KEY").map(PathBuf::from));
    let tls_client_ca =
        args.tls_client_ca.or_else(|| from_file("QM_TLS_CLIENT_CA").map(PathBuf::from));
    let master_key_file =
        args.master_key_file.or_else(|| from_file("QM_MASTER_KEY_FILE").map(PathBuf::from));

    let metrics = match args.metrics_listen.or_else(|| from_file("QM_METRICS_LISTEN")) {
        Some(at) => Some(at.parse().map_err(|e| anyhow::anyhow!("--metrics-listen {at:?}: {e}"))?),
        None => None,
    };
    let tls = match (tls_cert, tls_key) {
        (Some(cert), Some(key)) => {
            Some(qm_engine::api::TlsFiles { cert, key, client_ca: tls_client_ca.clone() })
        }
        (None, None) => None,
        _ => anyhow::bail!("--tls-cert and --tls-key go together"),
    };
    let auth = if no_auth {
        tracing::warn!("serving without authentication: every caller is accepted");
        qm_engine::api::auth::Auth::disabled()
    } else {
        anyhow::ensure!(
            !token_hashes.is_empty() || tls_client_ca.is_some(),
            "no way to authenticate callers: set --token-hashes (see `quartermaster hash-token`), \
             --tls-client-ca, or --no-auth for local development"
        );
        qm_engine::api::auth::Auth::with_token_hashes(&token_hashes, tls_client_ca.is_some())?
    };
    let log = match nats_url {
        Some(urls) => qm_engine::server::LogConfig::JetStream { urls, replicas },
        None => qm_engine::server::LogConfig::Embedded,
    };
    let master_key =
        master_key(master_key_file.as_deref(), from_file("QM_MASTER_KEY"), &data_dir, &log)?;
    let running = qm_engine::server::start(qm_engine::server::ServeConfig {
        listen: listen.parse().map_err(|e| anyhow::anyhow!("--listen {listen:?}: {e}"))?,
        data_dir,
        log,
        master_key,
        api: qm_engine::api::ApiConfig { auth, tls, query_wait: qm_engine::server::QUERY_WAIT },
        metrics,
        provisioner,
    })
    .await?;
    eprintln!("quartermaster serving on {}", running.addr);
    if let Some(metrics) = running.metrics_addr {
        eprintln!("metrics on http://{metrics}/metrics");
    }
    running.until_signal().await
}

/// A setting from its flag (or environment variable), else the config file, parsed.
fn setting<T: std::str::FromStr>(
    flag: Option<T>,
    name: &str,
    from_file: &dyn Fn(&str) -> Option<String>,
) -> anyhow::Result<Option<T>>
where
    T::Err: std::fmt::Display,
{
    match flag {
        Some(v) => Ok(Some(v)),
        None => from_file(name)
            .map(|v| v.parse::<T>().map_err(|e| anyhow::anyhow!("{name}={v:?}: {e}")))
            .transpose(),
    }
}

fn provisioner_config(
    args: &ServeArgs,
    from_file: &dyn Fn(&str) -> Option<String>,
) -> anyhow::Result<Option<qm_engine::provisioner::ProvisionerConfig>> {
    if setting(args.no_provisioner, "QM_NO_PROVISIONER", from_file)?.unwrap_or(false) {
        return Ok(None);
    }
    let mut config = qm_engine::provisioner::ProvisionerConfig::default();
    let seconds = |s: f64, name: &str| {
        std::time::Duration::try_from_secs_f64(s)
            .map_err(|_| anyhow::anyhow!("{name} must be a positive number of seconds"))
    };
    if let Some(s) = setting(args.provision_timeout, "QM_PROVISION_TIMEOUT", from_file)? {
        config.call_timeout = seconds(s, "--provision-timeout")?;
    }
    if let Some(ms) = setting(args.provision_backoff_ms, "QM_PROVISION_BACKOFF_MS", from_file)? {
        config.backoff_base = std::time::Duration::from_millis(ms);
    }
    if let Some(n) = setting(args.provision_max_attempts, "QM_PROVISION_MAX_ATTEMPTS", from_file)? {
        anyhow::ensure!(n >= 1, "--provision-max-attempts must be at least 1");
        config.max_attempts = n;
    }
    if let Some(n) = setting(args.provision_concurrency, "QM_PROVISION_CONCURRENCY", from_file)? {
        anyhow::ensure!(n >= 1, "--provision-concurrency must be at least 1");
        config.per_app_concurrency = n;
    }
    if let Some(rate) = setting(args.provision_rate, "QM_PROVISION_RATE", from_file)? {
        anyhow::ensure!(rate > 0.0, "--provision-rate must be positive");
        config.per_app_rate = Some(rate);
    }
    if let Some(s) = setting(args.provision_ack_wait, "QM_PROVISION_ACK_WAIT", from_file)? {
        config.ack_wait = seconds(s, "--provision-ack-wait")?;
    }
    Ok(Some(config))
}

/// The master key: the key file (flag or QM_MASTER_KEY_FILE), else `QM_MASTER_KEY` (hex) from
/// the environment or the config file; on the embedded log without any, a key file created in
/// the data directory on first start.
fn master_key(
    file: Option<&std::path::Path>,
    from_config: Option<String>,
    data_dir: &std::path::Path,
    log: &qm_engine::server::LogConfig,
) -> anyhow::Result<qm_engine::sealing::MasterKey> {
    use qm_engine::sealing::MasterKey;
    if let Some(file) = file {
        let text = std::fs::read_to_string(file)
            .map_err(|e| anyhow::anyhow!("master key file {}: {e}", file.display()))?;
        return Ok(MasterKey::from_hex(&text)?);
    }
    if let Some(hex) = std::env::var("QM_MASTER_KEY").ok().or(from_config) {
        return Ok(MasterKey::from_hex(&hex)?);
    }
    anyhow::ensure!(
        matches!(log, qm_engine::server::LogConfig::Embedded),
        "a master key is required with JetStream: set QM_MASTER_KEY or --master-key-file"
    );
    let path = data_dir.join("master.key");
    if path.exists() {
        return Ok(MasterKey::from_hex(&std::fs::read_to_string(&path)?)?);
    }
    std::fs::create_dir_all(data_dir)?;
    let key = MasterKey::generate();
    write_private(&path, key.to_hex().as_bytes())?;
    tracing::warn!(path = %path.display(), "created a master key beside the embedded log; keep it elsewhere in production");
    Ok(key)
}

/// Writes a file only its owner can read.
fn write_private(path: &std::path::Path, bytes: &[u8]) -> anyhow::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path)?.write_all(bytes)?;
    Ok(())
}
