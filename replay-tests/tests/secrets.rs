//! Rule 7: credentials never appear in plaintext in the JetStream store, the embedded file, or
//! debug-level logs.

use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};

use anyhow::ensure;
use qm_replay_tests::fixtures::*;
use qm_replay_tests::nats::NatsServer;

const TOKEN: &str = "scim-token-7f3a9c2e51d84b06";

/// Everything the engine logs, at debug level, for the whole test binary.
fn captured_logs() -> Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let logs = Arc::new(Mutex::new(Vec::new()));
        let sink = logs.clone();
        tracing_subscriber::fmt()
            .with_max_level(tracing::Level::DEBUG)
            .with_writer(move || Sink(sink.clone()))
            .init();
        logs
    })
    .clone()
}

struct Sink(Arc<Mutex<Vec<u8>>>);

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("log buffer lock").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle.as_bytes())
}

/// Every file under `dir` that contains `needle`.
fn files_containing(dir: &Path, needle: &str) -> anyhow::Result<(usize, Vec<String>)> {
    let (mut scanned, mut found) = (0, Vec::new());
    let mut pending = vec![dir.to_path_buf()];
    while let Some(path) = pending.pop() {
        if path.is_dir() {
            pending.extend(
                std::fs::read_dir(&path)?
                    .map(|e| e.map(|e| e.path()))
                    .collect::<Result<Vec<_>, _>>()?,
            );
        } else {
            scanned += 1;
            if contains(&std::fs::read(&path)?, needle) {
                found.push(path.display().to_string());
            }
        }
    }
    Ok((scanned, found))
}

#[tokio::test]
async fn the_token_is_nowhere_in_the_jetstream_store_or_the_logs() -> anyhow::Result<()> {
    let logs = captured_logs();
    let server = NatsServer::start().await?;
    let (engine, _) = jetstream_engine(&server.url(), 1).await?;
    standard_org(&engine, "secretive-js", 2, Some(5), TOKEN).await?;

    let (scanned, leaks) = files_containing(server.store_dir(), TOKEN)?;
    // The scan must be able to see what was stored: the organization's name is in plain text.
    let (_, visible) = files_containing(server.store_dir(), "Org secretive-js")?;
    ensure!(!visible.is_empty(), "the scan of {scanned} files saw no events at all");
    ensure!(leaks.is_empty(), "token found in {leaks:?}");
    let logs = logs.lock().expect("log buffer lock").clone();
    ensure!(contains(&logs, "command"), "debug logs were captured");
    ensure!(!contains(&logs, TOKEN), "token found in the logs");
    Ok(())
}

#[tokio::test]
async fn the_token_is_nowhere_in_the_embedded_file_or_the_logs() -> anyhow::Result<()> {
    let logs = captured_logs();
    let dir = tempfile::tempdir()?;
    {
        let (engine, _) = embedded_engine(dir.path())?;
        standard_org(&engine, "secretive-db", 2, Some(5), TOKEN).await?;
    }
    let (_, leaks) = files_containing(dir.path(), TOKEN)?;
    let (_, visible) = files_containing(dir.path(), "Org secretive-db")?;
    ensure!(!visible.is_empty(), "the scan saw no events at all");
    ensure!(leaks.is_empty(), "token found in {leaks:?}");
    ensure!(!contains(&logs.lock().expect("log buffer lock"), TOKEN), "token found in the logs");
    Ok(())
}
