//! Benchmarks that print figures next to the raw systems they stand on, measured in the same
//! run, so the ratio says what Quartermaster's own work costs.

pub mod append;
pub mod grpc;
pub mod history;
pub mod projection;

use std::time::Duration;

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
