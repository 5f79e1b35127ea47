//! Real nats-server processes for tests: one node, or a three-node cluster, on free loopback
//! ports with temporary stores, stopped when dropped.
//!
//! The binary comes from `QM_NATS_SERVER`, set by `deploy/dev/test`, or from the workspace's
//! `.tools/`, where `deploy/dev/tools` installs the pinned version.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// One nats-server process with JetStream.
#[derive(Debug)]
pub struct NatsServer {
    name: String,
    port: u16,
    config: PathBuf,
    store: PathBuf,
    log: PathBuf,
    child: Option<Child>,
    // Held so the temporary directory lives as long as the server.
    _dir: Option<tempfile::TempDir>,
}

/// Three nats-server processes forming a JetStream cluster.
#[derive(Debug)]
pub struct NatsCluster {
    pub nodes: Vec<NatsServer>,
}

fn binary() -> anyhow::Result<PathBuf> {
    if let Ok(path) = std::env::var("QM_NATS_SERVER") {
        return Ok(PathBuf::from(path));
    }
    let local = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.tools/python/bin/nats-server");
    if local.exists() {
        return Ok(local);
    }
    bail!("nats-server not found: run deploy/dev/tools (or deploy/dev/test), or set QM_NATS_SERVER")
}

/// A port that was free a moment ago.
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("loopback has free ports");
    listener.local_addr().expect("a bound socket has an address").port()
}

impl NatsServer {
    /// Starts a single JetStream node and waits until it accepts connections.
    pub async fn start() -> anyhow::Result<NatsServer> {
        let dir = tempfile::tempdir()?;
        let port = free_port();
        let config = node_config("n1", port, &dir.path().join("store"), None);
        let mut server = NatsServer::prepare("n1", port, dir, config)?;
        server.spawn()?;
        server.wait_ready().await?;
        Ok(server)
    }

    fn prepare(
        name: &str,
        port: u16,
        dir: tempfile::TempDir,
        config: String,
    ) -> anyhow::Result<NatsServer> {
        let config_path = dir.path().join(format!("{name}.conf"));
        std::fs::write(&config_path, config)?;
        Ok(NatsServer {
            name: name.into(),
            port,
            config: config_path,
            store: dir.path().join("store"),
            log: dir.path().join(format!("{name}.log")),
            child: None,
            _dir: Some(dir),
        })
    }

    fn spawn(&mut self) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log)?;
        let child = Command::new(binary()?)
            .arg("-c")
            .arg(&self.config)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting nats-server")?;
        self.child = Some(child);
        Ok(())
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The JetStream store directory (its files are what the server persisted).
    pub fn store_dir(&self) -> &Path {
        &self.store
    }

    /// What the server printed, for failure messages.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Kills the process at once (SIGKILL): nothing is flushed or handed over.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the process again on the same port and store.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.kill();
        self.spawn()?;
        self.wait_ready().await
    }

    async fn wait_ready(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(child) = self.child.as_mut()
                && let Some(status) = child.try_wait()?
            {
                bail!("nats-server {} exited with {status}:\n{}", self.name, self.log_text());
            }
            if tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await.is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("nats-server {} did not listen in time:\n{}", self.name, self.log_text());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

impl NatsCluster {
    /// Starts three clustered JetStream nodes and waits until JetStream has a meta leader.
    pub async fn start() -> anyhow::Result<NatsCluster> {
        let ports: Vec<(u16, u16)> = (0..3).map(|_| (free_port(), free_port())).collect();
        let mut nodes = Vec::new();
        for (i, (port, cluster_port)) in ports.iter().enumerate() {
            let name = format!("n{}", i + 1);
            let routes: Vec<String> = ports
                .iter()
                .filter(|(_, cp)| cp != cluster_port)
                .map(|(_, cp)| format!("nats-route://127.0.0.1:{cp}"))
                .collect();
            let dir = tempfile::tempdir()?;
            let config =
                node_config(&name, *port, &dir.path().join("store"), Some((*cluster_port, routes)));
            let mut node = NatsServer::prepare(&name, *port, dir, config)?;
            node.spawn()?;
            nodes.push(node);
        }
        for node in &mut nodes {
            node.wait_ready().await?;
        }
        let cluster = NatsCluster { nodes };
        cluster.wait_for_meta_leader().await?;
        Ok(cluster)
    }

    /// Client URLs of every node, comma-separated, for a client that fails over between them.
    pub fn urls(&self) -> String {
        self.nodes.iter().map(NatsServer::url).collect::<Vec<_>>().join(",")
    }

    async fn wait_for_meta_leader(&self) -> anyhow::Result<()> {
        let client =
            async_nats::connect(self.nodes.iter().map(NatsServer::url).collect::<Vec<_>>()).await?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let reply = client.request("$JS.API.INFO", "".into()).await;
            if let Ok(reply) = reply
                && !String::from_utf8_lossy(&reply.payload).contains("\"error\"")
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "the cluster elected no JetStream leader in time:\n{}",
                    self.nodes[0].log_text()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

fn node_config(name: &str, port: u16, store: &Path, cluster: Option<(u16, Vec<String>)>) -> String {
    let mut config = format!(
        "server_name: {name}\nlisten: 127.0.0.1:{port}\n\
         jetstream {{\n  store_dir: {store:?}\n  max_memory_store: 256MB\n  max_file_store: 8GB\n}}\n"
    );
    if let Some((cluster_port, routes)) = cluster {
        config.push_str(&format!(
            "cluster {{\n  name: qm-test\n  listen: 127.0.0.1:{cluster_port}\n  routes: [{}]\n}}\n",
            routes.join(", ")
        ));
    }
    config
}
