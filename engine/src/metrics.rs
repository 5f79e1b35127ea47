//! Prometheus metrics: command latency and outcomes, optimistic concurrency conflicts, the
//! provisioner's recorded outcomes, and the views' lag behind the log, served as text on a port
//! of their own.
//!
//! Counters are process-wide atomics, so recording costs a few relaxed additions on the hot
//! path; formatting happens only when scraped.

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::read_side::ReadSide;

/// Upper bounds of the command latency buckets, in seconds.
const BUCKETS: [f64; 12] =
    [0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0];

struct Counters {
    accepted: AtomicU64,
    rejected: AtomicU64,
    failed: AtomicU64,
    conflicts: AtomicU64,
    latency_micros_sum: AtomicU64,
    buckets: [AtomicU64; BUCKETS.len()],
}

static COUNTERS: Counters = Counters {
    accepted: AtomicU64::new(0),
    rejected: AtomicU64::new(0),
    failed: AtomicU64::new(0),
    conflicts: AtomicU64::new(0),
    latency_micros_sum: AtomicU64::new(0),
    buckets: [const { AtomicU64::new(0) }; BUCKETS.len()],
};

/// How a command ended, for the `result` label.
#[derive(Debug, Clone, Copy)]
pub enum Outcome {
    Accepted,
    /// Refused by a rule or bad input: the system worked.
    Rejected,
    /// Storage or concurrency failure.
    Failed,
}

pub fn record_command(outcome: Outcome, took: Duration) {
    let counter = match outcome {
        Outcome::Accepted => &COUNTERS.accepted,
        Outcome::Rejected => &COUNTERS.rejected,
        Outcome::Failed => &COUNTERS.failed,
    };
    counter.fetch_add(1, Ordering::Relaxed);
    COUNTERS.latency_micros_sum.fetch_add(took.as_micros() as u64, Ordering::Relaxed);
    let seconds = took.as_secs_f64();
    if let Some(i) = BUCKETS.iter().position(|b| seconds <= *b) {
        COUNTERS.buckets[i].fetch_add(1, Ordering::Relaxed);
    }
}

pub fn record_conflict() {
    COUNTERS.conflicts.fetch_add(1, Ordering::Relaxed);
}

/// What the provisioner recorded, as the `outcome` label says it.
pub const PROVISIONING_OUTCOMES: [&str; 8] = [
    "authorized",
    "authorization_failed",
    "provisioned",
    "deprovisioned",
    "failed",
    "quarantined",
    "held",
    "other",
];

static PROVISIONING: [AtomicU64; PROVISIONING_OUTCOMES.len()] =
    [const { AtomicU64::new(0) }; PROVISIONING_OUTCOMES.len()];

/// Counts one outcome the provisioner recorded (one of [`PROVISIONING_OUTCOMES`]).
pub fn record_provisioning(outcome: &str) {
    let i = PROVISIONING_OUTCOMES.iter().position(|o| *o == outcome).unwrap_or(7);
    PROVISIONING[i].fetch_add(1, Ordering::Relaxed);
}

/// The metrics in Prometheus' text format.
pub async fn render(read_side: &ReadSide) -> String {
    let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
    let mut out = String::new();
    let _ = writeln!(out, "# HELP quartermaster_commands_total Commands handled, by result.");
    let _ = writeln!(out, "# TYPE quartermaster_commands_total counter");
    for (result, counter) in [
        ("accepted", &COUNTERS.accepted),
        ("rejected", &COUNTERS.rejected),
        ("failed", &COUNTERS.failed),
    ] {
        let _ =
            writeln!(out, "quartermaster_commands_total{{result=\"{result}\"}} {}", load(counter));
    }
    let _ = writeln!(
        out,
        "# HELP quartermaster_command_duration_seconds Time from receiving a command to its answer."
    );
    let _ = writeln!(out, "# TYPE quartermaster_command_duration_seconds histogram");
    let mut cumulative = 0;
    for (bound, counter) in BUCKETS.iter().zip(&COUNTERS.buckets) {
        cumulative += load(counter);
        let _ = writeln!(
            out,
            "quartermaster_command_duration_seconds_bucket{{le=\"{bound}\"}} {cumulative}"
        );
    }
    let count = load(&COUNTERS.accepted) + load(&COUNTERS.rejected) + load(&COUNTERS.failed);
    let _ = writeln!(out, "quartermaster_command_duration_seconds_bucket{{le=\"+Inf\"}} {count}");
    let _ = writeln!(
        out,
        "quartermaster_command_duration_seconds_sum {}",
        load(&COUNTERS.latency_micros_sum) as f64 / 1e6
    );
    let _ = writeln!(out, "quartermaster_command_duration_seconds_count {count}");
    let _ = writeln!(
        out,
        "# HELP quartermaster_conflicts_total Appends that lost an optimistic concurrency race and were decided again."
    );
    let _ = writeln!(out, "# TYPE quartermaster_conflicts_total counter");
    let _ = writeln!(out, "quartermaster_conflicts_total {}", load(&COUNTERS.conflicts));
    let _ = writeln!(
        out,
        "# HELP quartermaster_provisioning_outcomes_total What this instance's provisioner recorded, by outcome."
    );
    let _ = writeln!(out, "# TYPE quartermaster_provisioning_outcomes_total counter");
    for (outcome, counter) in PROVISIONING_OUTCOMES.iter().zip(&PROVISIONING) {
        let _ = writeln!(
            out,
            "quartermaster_provisioning_outcomes_total{{outcome=\"{outcome}\"}} {}",
            load(counter)
        );
    }

    let status = read_side.status().await;
    let _ = writeln!(
        out,
        "# HELP quartermaster_projection_position Position of the last commit the views applied."
    );
    let _ = writeln!(out, "# TYPE quartermaster_projection_position gauge");
    let _ = writeln!(out, "quartermaster_projection_position {}", status.position);
    if let Some(lag) = status.lag {
        let _ = writeln!(
            out,
            "# HELP quartermaster_projection_lag Commits in the log the views have not applied yet."
        );
        let _ = writeln!(out, "# TYPE quartermaster_projection_lag gauge");
        let _ = writeln!(out, "quartermaster_projection_lag {lag}");
    }
    let failed = matches!(status.state, qm_projections::ProjectorState::Failed { .. });
    let _ = writeln!(
        out,
        "# HELP quartermaster_projection_failed 1 when the views stopped on a commit they cannot apply."
    );
    let _ = writeln!(out, "# TYPE quartermaster_projection_failed gauge");
    let _ = writeln!(out, "quartermaster_projection_failed {}", u8::from(failed));
    out
}

/// Answers every HTTP request on `listener` with the metrics; a scraper needs nothing more.
pub async fn serve(listener: tokio::net::TcpListener, read_side: Arc<ReadSide>) {
    loop {
        let mut stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(error) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(%error, "metrics endpoint cannot accept");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let read_side = read_side.clone();
        tokio::spawn(async move {
            // Read the request head; its content does not matter.
            let mut buf = [0u8; 4096];
            let mut seen = Vec::new();
            while !seen.windows(4).any(|w| w == b"\r\n\r\n") && seen.len() < 16 * 1024 {
                match tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await {
                    Ok(Ok(n)) if n > 0 => seen.extend_from_slice(&buf[..n]),
                    _ => return,
                }
            }
            let body = render(&read_side).await;
            let head = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: text/plain; version=0.0.4\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                body.len()
            );
            let _ = stream.write_all(head.as_bytes()).await;
            let _ = stream.write_all(body.as_bytes()).await;
        });
    }
}
