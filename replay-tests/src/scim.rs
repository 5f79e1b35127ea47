//! A real SCIM 2.0 server for tests, and a proxy that injects faults in front of it.
//!
//! The server is the PyPI package `scim2-server`, which `deploy/dev/tools` installs into
//! `.tools/scim` with a launcher at `.tools/scim/run` (or `QM_SCIM_SERVER` names one). It keeps
//! its users in memory, on a free loopback port, and is stopped when dropped.
//!
//! [`FaultProxy`] forwards HTTP/1.1 requests to it, except those a test scripted to fail: an
//! error status, a 429 with `Retry-After`, an answer slower than the client waits, a refused
//! connection, or a request passed on whose answer never comes back.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use crate::nats::free_port;

/// One scim2-server process.
#[derive(Debug)]
pub struct ScimServer {
    pub port: u16,
    pub token: String,
    child: Child,
    log: PathBuf,
    _dir: tempfile::TempDir,
    http: reqwest::Client,
}

fn launcher() -> anyhow::Result<PathBuf> {
    if let Ok(path) = std::env::var("QM_SCIM_SERVER") {
        return Ok(PathBuf::from(path));
    }
    let local = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.tools/scim/run");
    if local.exists() {
        return Ok(local);
    }
    bail!(
        "scim2-server not found: run deploy/dev/tools (or deploy/dev/test), or set QM_SCIM_SERVER"
    )
}

impl ScimServer {
    /// Starts a server that accepts `Bearer <token>` only, and waits until it answers.
    pub async fn start(token: &str) -> anyhow::Result<ScimServer> {
        let dir = tempfile::tempdir()?;
        let port = free_port();
        let log = dir.path().join("scim.log");
        let out = std::fs::File::create(&log)?;
        let child = Command::new(launcher()?)
            .args(["--hostname", "127.0.0.1", "--port", &port.to_string(), "--bearer-token", token])
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .context("starting scim2-server")?;
        let mut server = ScimServer {
            port,
            token: token.to_string(),
            child,
            log,
            _dir: dir,
            http: reqwest::Client::new(),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = server.child.try_wait()? {
                bail!("scim2-server exited with {status}:\n{}", server.log_text());
            }
            if server.get("/ServiceProviderConfig").await.is_ok() {
                return Ok(server);
            }
            if Instant::now() > deadline {
                bail!("scim2-server did not answer in time:\n{}", server.log_text());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    async fn get(&self, path: &str) -> anyhow::Result<Value> {
        let response = self
            .http
            .get(format!("{}{path}", self.url()))
            .bearer_auth(&self.token)
            .send()
            .await?
            .error_for_status()?;
        Ok(response.json().await?)
    }

    /// Every user the server holds.
    pub async fn users(&self) -> anyhow::Result<Vec<Value>> {
        let mut users = Vec::new();
        loop {
            let page =
                self.get(&format!("/Users?startIndex={}&count=500", users.len() + 1)).await?;
            let resources = page["Resources"].as_array().cloned().unwrap_or_default();
            if resources.is_empty() {
                return Ok(users);
            }
            users.extend(resources);
            if users.len() as u64 >= page["totalResults"].as_u64().unwrap_or(0) {
                return Ok(users);
            }
        }
    }

    /// The users whose `externalId` is `external_id`.
    pub async fn users_with_external_id(&self, external_id: &str) -> anyhow::Result<Vec<Value>> {
        let filter = format!("externalId eq \"{external_id}\"");
        let page = self
            .http
            .get(format!("{}/Users", self.url()))
            .query(&[("filter", filter.as_str())])
            .bearer_auth(&self.token)
            .send()
            .await?
            .error_for_status()?
            .json::<Value>()
            .await?;
        Ok(page["Resources"].as_array().cloned().unwrap_or_default())
    }
}

impl Drop for ScimServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What the proxy does with one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// Answers this status without asking the server.
    Status(u16),
    /// Answers 429 with `Retry-After: <seconds>`.
    TooManyRequests { retry_after_secs: u64 },
    /// Waits this long before forwarding.
    Slow(Duration),
    /// Closes the connection without an answer.
    Drop,
}

/// Which requests a fault applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Matching {
    Any,
    /// `POST /Users`: account creations.
    Creates,
}

#[derive(Debug, Default)]
struct Script {
    faults: VecDeque<(Matching, Fault)>,
    /// Every request matching this is forwarded and its answer withheld forever.
    hold: Option<Matching>,
    /// Every request matching this gets this fault, until cleared.
    always: Option<(Matching, Fault)>,
    requests: Vec<String>,
    /// When each request arrived, in order.
    arrivals: Vec<Instant>,
    held: usize,
    /// Requests being answered now, and the most there ever were at once.
    in_flight: usize,
    most_in_flight: usize,
}

/// An HTTP/1.1 proxy in front of a [`ScimServer`], failing requests as scripted.
#[derive(Debug)]
pub struct FaultProxy {
    pub port: u16,
    upstream: String,
    script: Arc<Mutex<Script>>,
    /// The accepting task; it owns the connections' tasks, so aborting it closes them all.
    accept: Mutex<Option<JoinHandle<()>>>,
}

impl FaultProxy {
    pub async fn start(upstream: &str) -> anyhow::Result<FaultProxy> {
        let port = free_port();
        let proxy = FaultProxy {
            port,
            upstream: upstream.to_string(),
            script: Arc::default(),
            accept: Mutex::new(None),
        };
        proxy.listen().await?;
        Ok(proxy)
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The next request that matches gets `fault`; faults queue in order.
    pub fn then(&self, matching: Matching, fault: Fault) {
        self.script().faults.push_back((matching, fault));
    }

    /// Every matching request gets `fault` until [`FaultProxy::heal`].
    pub fn always(&self, matching: Matching, fault: Fault) {
        self.script().always = Some((matching, fault));
    }

    /// Matching requests reach the server, and their answers never come back.
    pub fn hold(&self, matching: Matching) {
        self.script().hold = Some(matching);
    }

    /// Clears every scripted fault and hold.
    pub fn heal(&self) {
        let mut script = self.script();
        script.faults.clear();
        script.always = None;
        script.hold = None;
    }

    /// How many requests were held so far.
    pub fn held(&self) -> usize {
        self.script().held
    }

    /// The most requests the proxy was answering at one time.
    pub fn most_in_flight(&self) -> usize {
        self.script().most_in_flight
    }

    /// When each request arrived, in the order of [`FaultProxy::requests`].
    pub fn arrivals(&self) -> Vec<Instant> {
        self.script().arrivals.clone()
    }

    /// "METHOD path" of every request received, in order.
    pub fn requests(&self) -> Vec<String> {
        self.script().requests.clone()
    }

    /// Stops listening: connections are refused until [`FaultProxy::reopen`].
    pub fn refuse(&self) {
        if let Some(task) = self.accept.lock().expect("no panic holds this lock").take() {
            task.abort();
        }
    }

    pub async fn reopen(&self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match self.listen().await {
                Ok(()) => return Ok(()),
                Err(e) if Instant::now() > deadline => return Err(e),
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    }

    fn script(&self) -> std::sync::MutexGuard<'_, Script> {
        self.script.lock().expect("no panic holds this lock")
    }

    async fn listen(&self) -> anyhow::Result<()> {
        let listener = TcpListener::bind(("127.0.0.1", self.port)).await?;
        let (script, upstream) = (self.script.clone(), self.upstream.clone());
        let task = tokio::spawn(async move {
            let http = reqwest::Client::new();
            let mut connections = tokio::task::JoinSet::new();
            while let Ok((socket, _)) = listener.accept().await {
                let (script, upstream, http) = (script.clone(), upstream.clone(), http.clone());
                connections.spawn(async move {
                    let _ = serve(socket, script, &upstream, &http).await;
                });
                while connections.try_join_next().is_some() {}
            }
        });
        *self.accept.lock().expect("no panic holds this lock") = Some(task);
        Ok(())
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.refuse();
    }
}

/// What the proxy decided for one request.
enum Plan {
    Forward,
    Fault(Fault),
    Hold,
}

async fn serve(
    socket: TcpStream,
    script: Arc<Mutex<Script>>,
    upstream: &str,
    http: &reqwest::Client,
) -> anyhow::Result<()> {
    let mut socket = BufReader::new(socket);
    loop {
        let mut line = String::new();
        if socket.read_line(&mut line).await? == 0 {
            return Ok(());
        }
        let mut parts = line.split_whitespace();
        let (method, target) =
            (parts.next().unwrap_or("").to_string(), parts.next().unwrap_or("/").to_string());
        let mut headers = Vec::new();
        let mut length = 0usize;
        loop {
            let mut header = String::new();
            socket.read_line(&mut header).await?;
            let header = header.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    length = value.trim().parse()?;
                }
                headers.push((name.trim().to_string(), value.trim().to_string()));
            }
        }
        let mut body = vec![0; length];
        socket.read_exact(&mut body).await?;

        let is_create = method == "POST" && target.trim_end_matches('/').ends_with("/Users");
        let plan = {
            let mut script = script.lock().expect("no panic holds this lock");
            script.requests.push(format!("{method} {target}"));
            script.arrivals.push(Instant::now());
            script.in_flight += 1;
            script.most_in_flight = script.most_in_flight.max(script.in_flight);
            let applies = |m: Matching| m == Matching::Any || (m == Matching::Creates && is_create);
            if script.hold.is_some_and(applies) {
                script.held += 1;
                Plan::Hold
            } else if let Some(i) = script.faults.iter().position(|(m, _)| applies(*m)) {
                Plan::Fault(script.faults.remove(i).expect("found just above").1)
            } else if let Some((_, fault)) = script.always.clone().filter(|(m, _)| applies(*m)) {
                Plan::Fault(fault)
            } else {
                Plan::Forward
            }
        };
        let answering = Answering(script.clone());
        let reply = match plan {
            Plan::Fault(Fault::Status(status)) => error_reply(status, &[]),
            Plan::Fault(Fault::TooManyRequests { retry_after_secs }) => {
                error_reply(429, &[("Retry-After", retry_after_secs.to_string())])
            }
            Plan::Fault(Fault::Drop) => return Ok(()),
            Plan::Fault(Fault::Slow(delay)) => {
                tokio::time::sleep(delay).await;
                forward(http, upstream, &method, &target, &headers, body).await?
            }
            Plan::Hold => {
                forward(http, upstream, &method, &target, &headers, body).await?;
                std::future::pending::<()>().await;
                unreachable!("a held answer is never sent")
            }
            Plan::Forward => forward(http, upstream, &method, &target, &headers, body).await?,
        };
        drop(answering);
        socket.get_mut().write_all(&reply).await?;
    }
}

/// One request being answered; counted out however its answer ends.
struct Answering(Arc<Mutex<Script>>);

impl Drop for Answering {
    fn drop(&mut self) {
        self.0.lock().expect("no panic holds this lock").in_flight -= 1;
    }
}

fn error_reply(status: u16, extra: &[(&str, String)]) -> Vec<u8> {
    let body = format!(
        r#"{{"schemas":["urn:ietf:params:scim:api:messages:2.0:Error"],"status":"{status}","detail":"injected by the test proxy"}}"#
    );
    let mut head = format!(
        "HTTP/1.1 {status} Injected\r\ncontent-type: application/scim+json\r\ncontent-length: {}\r\n",
        body.len()
    );
    for (name, value) in extra {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    [head.into_bytes(), body.into_bytes()].concat()
}

async fn forward(
    http: &reqwest::Client,
    upstream: &str,
    method: &str,
    target: &str,
    headers: &[(String, String)],
    body: Vec<u8>,
) -> anyhow::Result<Vec<u8>> {
    let mut request = http.request(method.parse()?, format!("{upstream}{target}")).body(body);
    for (name, value) in headers {
        let lower = name.to_ascii_lowercase();
        if !matches!(lower.as_str(), "host" | "content-length" | "connection") {
            request = request.header(name, value);
        }
    }
    let response = request.send().await?;
    let status = response.status();
    let mut head =
        format!("HTTP/1.1 {} {}\r\n", status.as_u16(), status.canonical_reason().unwrap_or(""));
    for (name, value) in response.headers() {
        let lower = name.as_str();
        if !matches!(lower, "content-length" | "transfer-encoding" | "connection") {
            head.push_str(&format!("{name}: {}\r\n", value.to_str().unwrap_or("")));
        }
    }
    let bytes = response.bytes().await?;
    head.push_str(&format!("content-length: {}\r\n\r\n", bytes.len()));
    Ok([head.into_bytes(), bytes.to_vec()].concat())
}
