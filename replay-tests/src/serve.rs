//! `quartermaster serve` as a child process on loopback, for tests that need a real process:
//! killed with SIGKILL, or several of them sharing one JetStream.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::ensure;
use tonic::transport::Channel;

/// Starts `binary serve` without authentication on JetStream at `nats_url`, listening on
/// `127.0.0.1:port`, with `extra` flags. The process is killed when the handle is dropped.
pub fn spawn(
    binary: &Path,
    nats_url: &str,
    data_dir: &Path,
    port: u16,
    extra: &[&str],
) -> anyhow::Result<tokio::process::Child> {
    let child = tokio::process::Command::new(binary)
        .args(["serve", "--no-auth", "--nats-url", nats_url, "--listen"])
        .arg(format!("127.0.0.1:{port}"))
        .arg("--data-dir")
        .arg(data_dir)
        .args(extra)
        .env("QM_MASTER_KEY", "17".repeat(32))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    Ok(child)
}

/// Polls `probe` until it gives a value, for at most a minute.
pub async fn until<T>(what: &str, mut probe: impl AsyncFnMut() -> Option<T>) -> anyhow::Result<T> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(found) = probe().await {
            return Ok(found);
        }
        ensure!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// A channel to the instance on `port`, once it listens.
pub async fn channel(port: u16) -> anyhow::Result<Channel> {
    let endpoint = Channel::from_shared(format!("http://127.0.0.1:{port}"))?;
    until("the instance to listen", async || endpoint.connect().await.ok()).await
}
