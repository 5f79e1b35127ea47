//! The `quartermaster` command: glue between the command line and the engine library.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use qm_engine::bench::append::{AppendBench, run as run_append_bench};
use qm_engine::log::EventLog;
use qm_engine::log::embedded::EmbeddedLog;
use qm_engine::log::jetstream::{JetStreamConfig, JetStreamLog};
use qm_engine::read_side::{ReadSide, RebuildProgress};

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
enum BenchCommand {
    /// Command throughput and latency on JetStream against raw publishes with the same headers.
    Append(AppendArgs),
    /// Read side catch-up, rebuild, read-your-writes and query latency against raw replay and redb.
    Projection(ProjectionArgs),
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
        Commands::Projections(command) => projections(command).await,
    }
}

async fn open_log(storage: &Storage) -> anyhow::Result<Arc<dyn EventLog>> {
    Ok(match &storage.nats_url {
        Some(url) => {
            let config =
                JetStreamConfig { replicas: storage.nats_replicas, ..JetStreamConfig::default() };
            Arc::new(JetStreamLog::connect(url, config).await?)
        }
        None => {
            std::fs::create_dir_all(&storage.data_dir)?;
            Arc::new(EmbeddedLog::open(storage.data_dir.join("log.redb"))?)
        }
    })
}

async fn projections(command: ProjectionsCommand) -> anyhow::Result<()> {
    let storage = match &command {
        ProjectionsCommand::Status(s)
        | ProjectionsCommand::CatchUp(s)
        | ProjectionsCommand::Rebuild(s) => s,
    };
    let log = open_log(storage).await?;
    let read_side = ReadSide::start(log.clone(), &storage.data_dir)?;
    match command {
        ProjectionsCommand::Status(_) => {
            let status = read_side.status().await;
            let head = status.head.map_or("unknown".into(), |h| h.to_string());
            let lag = status.lag.map_or("unknown".into(), |l| l.to_string());
            print_lines(&[
                format!(
                    "views      {}",
                    storage.data_dir.join(qm_engine::read_side::VIEWS_FILE).display()
                ),
                format!("position   {}", status.position),
                format!("log head   {head}"),
                format!("lag        {lag}"),
                format!("state      {:?}", status.state),
            ]);
        }
        ProjectionsCommand::CatchUp(_) => {
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
