//! Benchmarks that print figures next to the raw systems they stand on, measured in the same
//! run, so the ratio says what Quartermaster's own work costs.

pub mod append;
pub mod grpc;
pub mod history;
pub mod projection;
pub mod provision;

use std::time::Duration;

use crate::log::jetstream::JetStreamConfig;

/// A run's own tag and stream settings, so a benchmark never touches a real log; the caller
/// removes the stream and buckets afterwards.
pub(crate) fn scratch_config() -> (String, JetStreamConfig) {
    let tag = format!("{:x}", uuid::Uuid::now_v7().as_u128() & 0xffff_ffff);
    let config = JetStreamConfig {
        stream: format!("QM_BENCH_{tag}"),
        subject_prefix: format!("qmbench.{tag}"),
        snapshot_bucket: format!("QM_BENCH_SNAP_{tag}"),
        ..JetStreamConfig::default()
    };
    (tag, config)
}

/// Latency percentiles in microseconds.
pub(crate) fn percentile_us(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let index = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[index].as_secs_f64() * 1e6
}

pub(crate) fn median(samples: &mut [Duration]) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}
