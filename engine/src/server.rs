//! A running Quartermaster instance: the event log, the write side, the read side and the gRPC
//! facade, wired together. `quartermaster serve` and `quartermaster demo` start one; tests
//! start them in-process on loopback.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::api::{self, ApiConfig};
use crate::handler::{Engine, EngineConfig};
use crate::log::EventLog;
use crate::log::embedded::EmbeddedLog;
use crate::log::jetstream::{JetStreamConfig, JetStreamLog};
use crate::provisioner::{
    EmbeddedQueue, JetStreamQueue, Provisioner, ProvisionerConfig, WorkQueue,
};
use crate::read_side::ReadSide;
use crate::sealing::{KeyStore, KvKeyStore, MasterKey, RedbKeyStore, Sealer};

/// Where the event log lives.
#[derive(Debug, Clone)]
pub enum LogConfig {
    /// The embedded log in `<data_dir>/log.redb`: the zero-setup default.
    Embedded,
    JetStream {
        urls: String,
        replicas: usize,
    },
}

/// An opened event log with what lives beside it.
#[derive(Debug, Clone)]
pub struct Backend {
    pub log: Arc<dyn EventLog>,
    /// The organizations' data keys.
    pub keys: Arc<dyn KeyStore>,
    work: WorkSource,
}

#[derive(Debug, Clone)]
enum WorkSource {
    Embedded(Arc<redb::Database>),
    JetStream(JetStreamLog),
}

/// The durable consumer all instances' provisioners share.
pub const PROVISIONER_CONSUMER: &str = "qm-provisioner";

impl Backend {
    /// The provisioner's queue of work: the shared durable consumer on JetStream, a cursor
    /// beside the embedded log.
    pub fn work_queue(&self, ack_wait: Duration, in_flight: usize) -> Arc<dyn WorkQueue> {
        match &self.work {
            WorkSource::Embedded(db) => Arc::new(EmbeddedQueue::new(self.log.clone(), db.clone())),
            WorkSource::JetStream(log) => Arc::new(JetStreamQueue::new(
                log.stream().clone(),
                PROVISIONER_CONSUMER,
                &log.config().subject_prefix,
                ack_wait,
                in_flight,
            )),
        }
    }
}

impl LogConfig {
    /// Opens the event log, and the store of data keys kept beside it.
    pub async fn open(&self, data_dir: &std::path::Path) -> anyhow::Result<Backend> {
        Ok(match self {
            LogConfig::Embedded => {
                std::fs::create_dir_all(data_dir)?;
                let log = Arc::new(EmbeddedLog::open(data_dir.join("log.redb"))?);
                let keys = Arc::new(RedbKeyStore::new(log.database()));
                Backend { work: WorkSource::Embedded(log.database()), log, keys }
            }
            LogConfig::JetStream { urls, replicas } => {
                let js_config =
                    JetStreamConfig { replicas: *replicas, ..JetStreamConfig::default() };
                let log = JetStreamLog::connect(urls, js_config).await?;
                let keys = Arc::new(KvKeyStore::open(log.context(), "QM_KEYS", *replicas).await?);
                Backend { log: Arc::new(log.clone()), keys, work: WorkSource::JetStream(log) }
            }
        })
    }
}

#[derive(Debug)]
pub struct ServeConfig {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub log: LogConfig,
    pub master_key: MasterKey,
    pub api: ApiConfig,
    /// Where Prometheus scrapes the metrics; `None` serves none.
    pub metrics: Option<SocketAddr>,
    /// `None` runs no provisioner in this instance (others on the same log may).
    pub provisioner: Option<ProvisionerConfig>,
}

/// A started instance; dropping it does not stop it, [`Running::stop`] does.
#[derive(Debug)]
pub struct Running {
    pub addr: SocketAddr,
    pub metrics_addr: Option<SocketAddr>,
    metrics: Option<JoinHandle<()>>,
    provisioner: Option<JoinHandle<()>>,
    pub engine: Arc<Engine>,
    pub read_side: Arc<ReadSide>,
    stop: oneshot::Sender<()>,
    task: JoinHandle<anyhow::Result<()>>,
}

impl Running {
    /// Stops serving, lets open calls finish, and makes the views durable.
    pub async fn stop(self) -> anyhow::Result<()> {
        for task in [&self.metrics, &self.provisioner].into_iter().flatten() {
            task.abort();
        }
        let _ = self.stop.send(());
        self.task.await??;
        self.read_side.projector().flush()?;
        Ok(())
    }

    /// Serves until the process is asked to stop (Ctrl-C or SIGTERM).
    pub async fn until_signal(self) -> anyhow::Result<()> {
        shutdown_signal().await;
        tracing::info!("stopping");
        self.stop().await
    }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("a process can listen for SIGTERM");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

/// Opens the log, the key store, the views, and serves the API.
pub async fn start(config: ServeConfig) -> anyhow::Result<Running> {
    std::fs::create_dir_all(&config.data_dir)?;
    let backend = config.log.open(&config.data_dir).await?;
    let sealer = Arc::new(Sealer::new(config.master_key, backend.keys.clone()));
    let engine = Arc::new(Engine::new(backend.log.clone(), sealer, EngineConfig::default()));
    let read_side = ReadSide::start(backend.log.clone(), &config.data_dir)?;
    let provisioner = config.provisioner.map(|provisioning| {
        // Retries waiting out their backoff count as pending: leave room for many.
        let queue = backend.work_queue(provisioning.ack_wait, provisioning.in_flight.max(10_000));
        tokio::spawn(Provisioner::new(engine.clone(), provisioning).run(queue))
    });

    let (metrics_addr, metrics) = match config.metrics {
        Some(at) => {
            let listener = tokio::net::TcpListener::bind(at).await?;
            let bound = listener.local_addr()?;
            tracing::info!(addr = %bound, "serving metrics");
            (Some(bound), Some(tokio::spawn(crate::metrics::serve(listener, read_side.clone()))))
        }
        None => (None, None),
    };
    let listener = tokio::net::TcpListener::bind(config.listen).await?;
    let addr = listener.local_addr()?;
    let (stop, stopped) = oneshot::channel::<()>();
    let task =
        tokio::spawn(api::serve(engine.clone(), read_side.clone(), config.api, listener, async {
            let _ = stopped.await;
        }));
    tracing::info!(%addr, "serving");
    Ok(Running { addr, metrics_addr, metrics, provisioner, engine, read_side, stop, task })
}

/// The default query wait for `min_position`.
pub const QUERY_WAIT: Duration = Duration::from_secs(5);
