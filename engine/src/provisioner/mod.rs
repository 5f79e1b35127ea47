//! The provisioner: makes the apps agree with the grants.
//!
//! It reads every commit from a [`WorkQueue`] shared by all instances, and for each fact that
//! asks something of an app (an app added or its credentials changed, a grant requested,
//! retried, or on its way out, a failed call due again) it looks at the organization's current
//! state, calls the app's connector, and records what happened as a command, which the aggregate
//! checks like any other. A commit is acknowledged only once its work is recorded, so a crash
//! at any point means the work is delivered again; calls are idempotent because the account's
//! `externalId` is the grant id, looked up before anything is created.
//!
//! Failures are recorded with the time of the next attempt (exponential backoff with jitter,
//! or the app's `Retry-After`); past `max_attempts`, or when the app refuses the request
//! itself, the grant is quarantined with the reason, and `RetryGrant` arms it again.
//!
//! Deprovisionings pass a circuit breaker (`breaker`): when an unusual share of an app's
//! accounts would go at once, they are held (`DeprovisioningHeld`) until an admin confirms them
//! (`ConfirmDeprovisionings`); the app's other work goes on.

mod breaker;
pub mod queue;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use qm_connectors::catalog::{self, DeprovisionPolicy};
use qm_connectors::{Account, Connector, ConnectorError, Credentials, NewAccount};
use qm_proto::*;
use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;

use crate::handler::{Engine, ExecuteError, Request};
use crate::org::{AppStatus, Command, DecideError, GrantState, OrgState};
use breaker::Breaker;
pub use breaker::BreakerConfig;
pub use queue::{Delivery, EmbeddedQueue, JetStreamQueue, WorkQueue};

/// How the provisioner paces and retries its calls.
#[derive(Debug, Clone)]
pub struct ProvisionerConfig {
    /// The service name its outcomes are recorded under.
    pub actor: String,
    /// The longest one call to an app may take.
    pub call_timeout: Duration,
    /// The delay before the first retry; each further one doubles it, up to `backoff_cap`.
    pub backoff_base: Duration,
    pub backoff_cap: Duration,
    /// Failed calls of one operation before its grant is quarantined.
    pub max_attempts: u32,
    /// Calls in flight to one integrated app.
    pub per_app_concurrency: usize,
    /// Calls started per second against one integrated app; `None` is unpaced.
    pub per_app_rate: Option<f64>,
    /// Commits worked on at once by this instance.
    pub in_flight: usize,
    /// How long a commit handed to this instance may go without a sign of progress before
    /// the queue hands it to another (a crashed instance's work moves on after this).
    pub ack_wait: Duration,
    pub breaker: BreakerConfig,
}

impl Default for ProvisionerConfig {
    fn default() -> Self {
        ProvisionerConfig {
            actor: "provisioner".into(),
            call_timeout: Duration::from_secs(10),
            backoff_base: Duration::from_secs(1),
            backoff_cap: Duration::from_secs(300),
            max_attempts: 8,
            per_app_concurrency: 16,
            per_app_rate: None,
            in_flight: 256,
            ack_wait: Duration::from_secs(30),
            breaker: BreakerConfig::default(),
        }
    }
}

/// What one fact of a commit asks of the provisioner.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Job {
    /// Check the app's credentials.
    Verify { app: AppId, credentials: SealedCredentials },
    /// Bring the grant's account in line with the grant, if the grant has not moved on since:
    /// `attempts` is how many failures the fact had seen (`None` for a late account, which
    /// only ever needs taking away, whatever failed before). `first` marks the request itself,
    /// before which no call for the grant can have been made.
    Grant { grant: GrantId, attempts: Option<u32>, due: Option<Timestamp>, first: bool },
}

fn jobs_of(commit: &Commit) -> Vec<Job> {
    let grant = |grant: &GrantId, attempts, due| Job::Grant {
        grant: grant.clone(),
        attempts,
        due,
        first: false,
    };
    commit
        .events
        .iter()
        .filter_map(|event| match event {
            Event::IntegratedAppAdded(e) => {
                Some(Job::Verify { app: e.app.clone(), credentials: e.credentials.clone() })
            }
            Event::AppCredentialsUpdated(e) => {
                Some(Job::Verify { app: e.app.clone(), credentials: e.credentials.clone() })
            }
            Event::GrantRequested(GrantRequested { grant: g, .. }) => {
                Some(Job::Grant { grant: g.clone(), attempts: Some(0), due: None, first: true })
            }
            Event::GrantRetried(GrantRetried { grant: g })
            | Event::DeprovisioningConfirmed(DeprovisioningConfirmed { grant: g })
            | Event::DeprovisioningRequested(DeprovisioningRequested { grant: g, .. }) => {
                Some(grant(g, Some(0), None))
            }
            // An account that landed after its grant's deprovisioning was asked for must go.
            Event::AccountProvisioned(e) => Some(grant(&e.grant, None, None)),
            Event::ProvisioningFailed(e) => {
                e.next_retry_at.map(|due| grant(&e.grant, Some(e.attempt), Some(due)))
            }
            _ => None,
        })
        .collect()
}

/// Pacing of the calls to one integrated app.
#[derive(Debug)]
struct AppLimit {
    calls: Arc<Semaphore>,
    next_start: tokio::sync::Mutex<Instant>,
}

/// A connector, with the sealed credentials it was built from.
type CachedConnector = (SealedCredentials, Arc<dyn Connector>);

#[derive(Debug)]
pub struct Provisioner {
    engine: Arc<Engine>,
    config: ProvisionerConfig,
    client: reqwest::Client,
    connectors: Mutex<HashMap<(OrgId, AppId), CachedConnector>>,
    limits: Mutex<HashMap<(OrgId, AppId), Arc<AppLimit>>>,
    breaker: Breaker,
}

/// What handling one job came to.
enum Handled {
    Done,
    /// Not due yet: deliver again after this long.
    Later(Duration),
}

impl Provisioner {
    pub fn new(engine: Arc<Engine>, config: ProvisionerConfig) -> Arc<Provisioner> {
        let client = qm_connectors::scim::http_client(config.call_timeout);
        Arc::new(Provisioner {
            engine,
            breaker: Breaker::new(config.breaker.clone()),
            config,
            client,
            connectors: Mutex::new(HashMap::new()),
            limits: Mutex::new(HashMap::new()),
        })
    }

    /// Works through `queue` until the task is aborted (which stops the work in flight too:
    /// unacknowledged, it is delivered again), coming back after any error.
    pub async fn run(self: Arc<Self>, queue: Arc<dyn WorkQueue>) {
        let slots = Arc::new(Semaphore::new(self.config.in_flight));
        let mut working = tokio::task::JoinSet::new();
        let mut pause = Duration::from_millis(100);
        loop {
            let mut deliveries = queue.deliveries();
            while let Some(next) = deliveries.next().await {
                let delivery = match next {
                    Ok(delivery) => delivery,
                    Err(e) => {
                        tracing::warn!(error = %e, "provisioner lost its work queue; reopening");
                        break;
                    }
                };
                pause = Duration::from_millis(100);
                let jobs = jobs_of(&delivery.commit.commit);
                if jobs.is_empty() {
                    delivery.ack().await;
                    continue;
                }
                let slot = slots.clone().acquire_owned().await.expect("never closed");
                let this = self.clone();
                let ack_wait = queue.ack_wait();
                working.spawn(async move {
                    this.handle(delivery, jobs, ack_wait).await;
                    drop(slot);
                });
                while working.try_join_next().is_some() {}
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(5));
        }
    }

    async fn handle(&self, delivery: Delivery, jobs: Vec<Job>, ack_wait: Duration) {
        let org = delivery.commit.commit.org.clone();
        let position = delivery.commit.position;
        let redelivered = delivery.redelivered;
        let work = futures::future::join_all(
            jobs.iter().map(|job| self.job(&org, job, position, redelivered)),
        );
        let outcomes = keep_alive(&delivery, ack_wait, work).await;
        let mut later = None;
        for outcome in outcomes {
            match outcome {
                Ok(Handled::Done) => {}
                Ok(Handled::Later(delay)) => later = Some(later.unwrap_or(delay).min(delay)),
                Err(e) => {
                    // Nothing was recorded: the log or the key store is out of reach.
                    tracing::warn!(%org, position, error = %e, "provisioning work deferred");
                    later = Some(self.config.backoff_base);
                }
            }
        }
        match later {
            Some(delay) => delivery.retry_after(delay).await,
            None => delivery.ack().await,
        }
    }

    async fn job(
        &self,
        org: &OrgId,
        job: &Job,
        trigger: Position,
        redelivered: bool,
    ) -> Result<Handled, ExecuteError> {
        match job {
            Job::Verify { app, credentials } => self.verify(org, app, credentials).await,
            Job::Grant { grant, attempts, due, first } => {
                if let Some(due) = due {
                    let wait = due.0 - Timestamp::now().0;
                    if wait > 0 {
                        return Ok(Handled::Later(Duration::from_micros(wait as u64)));
                    }
                }
                // Before a grant's first call nothing can exist to find: its create goes
                // straight out (a 409 would still link an account that did).
                let look_first = !*first || redelivered;
                self.grant(org, grant, *attempts, trigger, look_first).await
            }
        }
    }

    /// Checks an app's credentials and records the verdict, unless they changed meanwhile.
    async fn verify(
        &self,
        org: &OrgId,
        app: &AppId,
        credentials: &SealedCredentials,
    ) -> Result<Handled, ExecuteError> {
        let state = self.engine.org_state(org).await?;
        let Some(current) = state.apps.get(app) else { return Ok(Handled::Done) };
        if current.status != AppStatus::Authorizing || &current.credentials != credentials {
            return Ok(Handled::Done);
        }
        let verdict = match self.connector(org, app, current).await {
            Ok(connector) => {
                let mut attempt = 1;
                loop {
                    match connector.verify().await {
                        Err(e) if e.is_transient() && attempt < self.config.max_attempts => {
                            tokio::time::sleep(self.backoff(attempt, &e)).await;
                            attempt += 1;
                        }
                        other => break other,
                    }
                }
            }
            Err(e) => Err(e),
        };
        let command = match verdict {
            Ok(()) => Command::RecordAppAuthorized { app: app.clone() },
            Err(e) => {
                Command::RecordAuthorizationFailed { app: app.clone(), reason: e.to_string() }
            }
        };
        let key = format!("verify/{app}/{}", hex::encode(&credentials.nonce));
        self.record(org, &key, command).await
    }

    /// Moves one grant's account forward, if the grant still waits for what `attempts` says.
    async fn grant(
        &self,
        org: &OrgId,
        grant_id: &GrantId,
        attempts: Option<u32>,
        trigger: Position,
        look_first: bool,
    ) -> Result<Handled, ExecuteError> {
        let state = self.engine.org_state(org).await?;
        let Some(grant) = state.grants.get(grant_id) else { return Ok(Handled::Done) };
        // A fact about an older attempt: a newer failure carries the work on.
        if attempts.is_some_and(|a| a != grant.attempts) {
            return Ok(Handled::Done);
        }
        if !state.apps.contains_key(&grant.app) {
            return Ok(Handled::Done);
        }
        match (grant.state, grant.deprovision_cause) {
            (GrantState::Requested | GrantState::Failed, None) if attempts.is_some() => {
                self.provision(org, &state, grant_id, trigger, look_first).await
            }
            (GrantState::Deprovisioning, Some(_)) => {
                self.deprovision(org, &state, grant_id, trigger).await
            }
            _ => Ok(Handled::Done),
        }
    }

    async fn provision(
        &self,
        org: &OrgId,
        state: &OrgState,
        grant_id: &GrantId,
        trigger: Position,
        look_first: bool,
    ) -> Result<Handled, ExecuteError> {
        let grant = &state.grants[grant_id];
        let app = &state.apps[&grant.app];
        let Some(member) = state.members.get(&grant.person) else { return Ok(Handled::Done) };
        let wanted = NewAccount {
            external_id: grant_id.to_string(),
            user_name: member.email.clone(),
            email: member.email.clone(),
            display_name: member.display_name.clone(),
        };
        let connector = match self.connector(org, &grant.app, app).await {
            Ok(connector) => connector,
            Err(e) => return self.record_failure(org, grant_id, grant, trigger, &e).await,
        };
        let created = {
            let _pace = self.pace(org, &grant.app).await;
            ensure_account(connector.as_ref(), &wanted, look_first).await
        };
        let answer = match &created {
            Ok(account) => {
                let command = Command::RecordAccountProvisioned {
                    grant: grant_id.clone(),
                    account: ExternalAccount {
                        id: account.id.clone(),
                        user_name: account.user_name.clone(),
                        open_url: None,
                    },
                };
                self.execute(org, &format!("provisioned/{grant_id}"), command).await
            }
            Err(e) => return self.record_failure(org, grant_id, grant, trigger, e).await,
        };
        if let Err(ExecuteError::Rejected(DecideError::GrantNotFound { .. })) = answer {
            // The grant was revoked while its account was being created (its deprovisioning
            // found nothing yet): take the account away again, or it would be orphaned.
            self.clean_up(org, grant_id, app, connector.as_ref()).await;
            return Ok(Handled::Done);
        }
        settled(answer)
    }

    /// Removes whatever account was made for a grant that is gone, trying as hard as a grant's
    /// own calls would.
    async fn clean_up(
        &self,
        org: &OrgId,
        grant_id: &GrantId,
        app: &crate::org::IntegratedApp,
        connector: &dyn Connector,
    ) {
        let policy = catalog::find(&app.catalog_app).map(|c| c.deprovision);
        let mut attempt = 1;
        loop {
            let removed = async {
                match connector.find(grant_id.as_str()).await? {
                    Some(account) => remove_account(connector, &account.id, policy).await,
                    None => Ok(()),
                }
            }
            .await;
            match removed {
                Ok(()) => return,
                Err(e) if attempt < self.config.max_attempts => {
                    tokio::time::sleep(self.backoff(attempt, &e)).await;
                    attempt += 1;
                }
                Err(e) => {
                    tracing::error!(%org, grant = %grant_id, error = %e,
                        "an account created for a revoked grant could not be removed");
                    return;
                }
            }
        }
    }

    async fn deprovision(
        &self,
        org: &OrgId,
        state: &OrgState,
        grant_id: &GrantId,
        trigger: Position,
    ) -> Result<Handled, ExecuteError> {
        let grant = &state.grants[grant_id];
        let app = &state.apps[&grant.app];
        if !grant.deprovision_confirmed
            && let Some(reason) = self.breaker.trips(org, state, &grant.app)
        {
            tracing::warn!(%org, grant = %grant_id, reason, "deprovisioning held");
            let command = Command::RecordDeprovisioningHeld { grant: grant_id.clone(), reason };
            return self.record(org, &format!("held/{grant_id}"), command).await;
        }
        let policy = catalog::find(&app.catalog_app).map(|c| c.deprovision);
        let result = async {
            let connector = self.connector(org, &grant.app, app).await?;
            let _pace = self.pace(org, &grant.app).await;
            let account_id = match &grant.account {
                Some(account) => Some(account.id.clone()),
                // A create may have landed without being recorded, or be landing now (sent by
                // a provisioner that crashed, or whose call timed out): look again after the
                // longest a call may take before concluding there is none.
                None => match connector.find(grant_id.as_str()).await? {
                    Some(found) => Some(found.id),
                    None => {
                        tokio::time::sleep(self.config.call_timeout).await;
                        connector.find(grant_id.as_str()).await?.map(|a| a.id)
                    }
                },
            };
            match account_id {
                Some(id) => remove_account(connector.as_ref(), &id, policy).await,
                None => Ok(()),
            }
        }
        .await;
        if let Err(e) = result {
            return self.record_failure(org, grant_id, grant, trigger, &e).await;
        }
        self.breaker.taken(org, &grant.app, grant.deprovision_confirmed);
        let command = Command::RecordAccountDeprovisioned { grant: grant_id.clone() };
        self.record(org, &format!("deprovisioned/{grant_id}"), command).await
    }

    /// Records a failed call of the grant's current operation, with its next attempt's time
    /// or, past the cap (or when retrying cannot help), its quarantine.
    async fn record_failure(
        &self,
        org: &OrgId,
        grant_id: &GrantId,
        grant: &crate::org::Grant,
        trigger: Position,
        error: &ConnectorError,
    ) -> Result<Handled, ExecuteError> {
        let attempt = grant.attempts + 1;
        let retry =
            matches!(error, ConnectorError::Transient { .. } | ConnectorError::Unauthorized(_));
        let next_retry_at = (retry && attempt < self.config.max_attempts)
            .then(|| Timestamp::now().plus_micros(self.backoff(attempt, error).as_micros() as i64));
        let reason = match next_retry_at {
            None if retry => format!("gave up after {attempt} attempts: {error}"),
            _ => error.to_string(),
        };
        tracing::info!(%org, grant = %grant_id, attempt, reason, retry = next_retry_at.is_some(),
            "call failed");
        let command = Command::RecordProvisioningFailed {
            grant: grant_id.clone(),
            attempt,
            deprovisioning: grant.deprovision_cause.is_some(),
            reason,
            next_retry_at,
        };
        // Attempts count from 0 again after a retry or a deprovisioning request: the trigger's
        // position keeps each failure's command id its own.
        self.record(org, &format!("failed/{grant_id}/{trigger}/{attempt}"), command).await
    }

    /// Exponential backoff with full jitter in its upper half, never sooner than the app asked.
    fn backoff(&self, attempt: u32, error: &ConnectorError) -> Duration {
        let exp = self.config.backoff_base.saturating_mul(1 << attempt.saturating_sub(1).min(20));
        let ceiling = exp.min(self.config.backoff_cap);
        let jittered = ceiling.mul_f64(0.5 + fastrand::f64() / 2.0);
        match error {
            // The app's word counts, up to the cap: a far-off Retry-After must not park the work.
            ConnectorError::Transient { retry_after: Some(asked), .. } => {
                jittered.max((*asked).min(self.config.backoff_cap))
            }
            _ => jittered,
        }
    }

    async fn record(
        &self,
        org: &OrgId,
        key: &str,
        command: Command,
    ) -> Result<Handled, ExecuteError> {
        settled(self.execute(org, key, command).await)
    }

    /// Executes an outcome under a command id derived from `key`, so that two provisioners
    /// recording the same outcome write it once.
    async fn execute(
        &self,
        org: &OrgId,
        key: &str,
        command: Command,
    ) -> Result<crate::handler::Executed, ExecuteError> {
        let digest = Sha256::digest(format!("{org}/{key}").as_bytes());
        let command_id = CommandId::parse(format!("prov-{}", hex::encode(&digest[..16])))
            .expect("hex is a valid id");
        let outcome = match &command {
            Command::RecordAppAuthorized { .. } => "authorized",
            Command::RecordAuthorizationFailed { .. } => "authorization_failed",
            Command::RecordAccountProvisioned { .. } => "provisioned",
            Command::RecordAccountDeprovisioned { .. } => "deprovisioned",
            Command::RecordProvisioningFailed { next_retry_at: Some(_), .. } => "failed",
            Command::RecordProvisioningFailed { next_retry_at: None, .. } => "quarantined",
            Command::RecordDeprovisioningHeld { .. } => "held",
            _ => "other",
        };
        let actor = Actor::Service(self.config.actor.clone());
        let answer = self
            .engine
            .execute(Request::new(org.clone(), actor, command).with_command_id(command_id))
            .await;
        if matches!(&answer, Ok(executed) if !executed.replayed && !executed.events.is_empty()) {
            crate::metrics::record_provisioning(outcome);
        }
        answer
    }

    /// The connector for an app, built anew when its credentials changed.
    async fn connector(
        &self,
        org: &OrgId,
        app_id: &AppId,
        app: &crate::org::IntegratedApp,
    ) -> Result<Arc<dyn Connector>, ConnectorError> {
        let key = (org.clone(), app_id.clone());
        if let Some((sealed, connector)) =
            self.connectors.lock().expect("no panic holds this lock").get(&key)
            && sealed == &app.credentials
        {
            return Ok(connector.clone());
        }
        let entry = catalog::find(&app.catalog_app).ok_or_else(|| {
            ConnectorError::Rejected(format!("{} is not in the catalog", app.catalog_app))
        })?;
        let secret = self.engine.open_credentials(org, app_id, &app.credentials).await.map_err(
            |e| match e {
                // The key store is out of reach: nothing is wrong with the credentials.
                crate::sealing::SealError::Store(_) => {
                    ConnectorError::transient(format!("credentials cannot be opened now: {e}"))
                }
                other => {
                    ConnectorError::Unauthorized(format!("credentials cannot be opened: {other}"))
                }
            },
        )?;
        let credentials = Credentials::from_json(secret.expose())
            .map_err(|e| ConnectorError::Unauthorized(e.to_string()))?;
        let connector =
            qm_connectors::connector_for(entry, self.client.clone(), &app.base_url, credentials);
        self.connectors
            .lock()
            .expect("no panic holds this lock")
            .insert(key, (app.credentials.clone(), connector.clone()));
        Ok(connector)
    }

    /// Waits for a call slot of the app, and for its turn under the rate limit.
    async fn pace(&self, org: &OrgId, app: &AppId) -> tokio::sync::OwnedSemaphorePermit {
        let limit = self
            .limits
            .lock()
            .expect("no panic holds this lock")
            .entry((org.clone(), app.clone()))
            .or_insert_with(|| {
                Arc::new(AppLimit {
                    calls: Arc::new(Semaphore::new(self.config.per_app_concurrency)),
                    next_start: tokio::sync::Mutex::new(Instant::now()),
                })
            })
            .clone();
        if let Some(rate) = self.config.per_app_rate {
            let start = {
                let mut next = limit.next_start.lock().await;
                let start = (*next).max(Instant::now());
                *next = start + Duration::from_secs_f64(1.0 / rate);
                start
            };
            tokio::time::sleep_until(start.into()).await;
        }
        limit.calls.clone().acquire_owned().await.expect("never closed")
    }
}

/// The account for `wanted`: the one already made for the grant (active again if it was
/// locked), or a new one. `look_first` is false only when no earlier call can have made one.
async fn ensure_account(
    connector: &dyn Connector,
    wanted: &NewAccount,
    look_first: bool,
) -> Result<Account, ConnectorError> {
    let found = if look_first { connector.find(&wanted.external_id).await? } else { None };
    match found {
        Some(found) if found.active => Ok(found),
        Some(found) => {
            connector.reactivate(&found.id, &wanted.external_id).await?;
            Ok(Account { active: true, ..found })
        }
        None => connector.create(wanted).await,
    }
}

/// Takes an account away as the app's policy says (locked by default).
async fn remove_account(
    connector: &dyn Connector,
    id: &str,
    policy: Option<DeprovisionPolicy>,
) -> Result<(), ConnectorError> {
    match policy.unwrap_or(DeprovisionPolicy::Deactivate) {
        DeprovisionPolicy::Deactivate => connector.deactivate(id).await,
        DeprovisionPolicy::Delete => connector.delete(id).await,
    }
}

/// An outcome command's answer as the end of a job. A rejection means the grant moved on
/// (another provisioner recorded first, an admin acted): there is nothing left to do.
fn settled(
    answer: Result<crate::handler::Executed, ExecuteError>,
) -> Result<Handled, ExecuteError> {
    match answer {
        Ok(_) => Ok(Handled::Done),
        Err(ExecuteError::Rejected(e)) => {
            tracing::debug!(error = %e, "outcome not recorded: the grant moved on");
            Ok(Handled::Done)
        }
        Err(ExecuteError::CommandIdReused { .. }) => Ok(Handled::Done),
        Err(e) => Err(e),
    }
}

/// Runs `work`, telling the queue it is still in progress every third of the ack wait.
async fn keep_alive<T>(
    delivery: &Delivery,
    ack_wait: Duration,
    work: impl Future<Output = T>,
) -> T {
    let every = (ack_wait / 3).max(Duration::from_millis(100));
    let mut work = std::pin::pin!(work);
    loop {
        tokio::select! {
            done = &mut work => return done,
            _ = tokio::time::sleep(every) => delivery.still_working().await,
        }
    }
}
