//! The `quartermaster` command: glue between the command line and the engine library.

use clap::{Args, Parser, Subcommand};
use qm_engine::bench::append::{AppendBench, run as run_append_bench};

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
}

#[derive(Subcommand, Debug)]
enum BenchCommand {
    /// Command throughput and latency on JetStream against raw publishes with the same headers.
    Append(AppendArgs),
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
    }
}
