//! Builders shared by the tests: ids, commits, engines on each backend, and a standard
//! organization to provision into.

use std::str::FromStr;
use std::sync::Arc;

use qm_engine::handler::{Engine, EngineConfig, Executed, Request};
use qm_engine::log::EventLog;
use qm_engine::log::embedded::EmbeddedLog;
use qm_engine::log::jetstream::{JetStreamConfig, JetStreamLog};
use qm_engine::org::Command;
use qm_engine::sealing::{KvKeyStore, MasterKey, RedbKeyStore, Sealer, Secret};
use qm_proto::*;

/// Parses a test id; test ids are valid by construction.
pub fn id<T: FromStr>(raw: &str) -> T
where
    T::Err: std::fmt::Debug,
{
    raw.parse().expect("test ids are valid")
}

pub fn person(raw: &str) -> Actor {
    Actor::Person(id(raw))
}

pub fn provisioner() -> Actor {
    Actor::Service("provisioner".into())
}

/// The master key every test engine uses.
pub fn master_key() -> MasterKey {
    MasterKey::from_hex(&"5a".repeat(32)).expect("a valid test key")
}

/// A commit with one `OrganizationCreated` event, linked to `prev_hash`.
pub fn commit(org: &str, command_id: &str, prev_hash: Hash) -> Commit {
    Commit {
        schema_version: SCHEMA_VERSION,
        org: id(org),
        event_id: 1,
        recorded_at: Timestamp(1_700_000_000_000_000),
        actor: person("alice"),
        command_id: id(command_id),
        correlation_id: command_id.into(),
        causation_id: None,
        prev_hash,
        events: vec![Event::TeamCreated(TeamCreated { team: id("t"), name: command_id.into() })],
    }
}

/// An engine on the embedded log in `dir`.
pub fn embedded_engine(dir: &std::path::Path) -> anyhow::Result<(Engine, Arc<EmbeddedLog>)> {
    let log = Arc::new(EmbeddedLog::open(dir.join("log.redb"))?);
    let keys = Arc::new(RedbKeyStore::new(log.database()));
    let sealer = Arc::new(Sealer::new(master_key(), keys));
    let engine = Engine::new(log.clone(), sealer, EngineConfig::default());
    Ok((engine, log))
}

/// An engine with its own connection to JetStream at `url`.
pub async fn jetstream_engine(
    url: &str,
    replicas: usize,
) -> anyhow::Result<(Engine, Arc<JetStreamLog>)> {
    let config = JetStreamConfig { replicas, ..JetStreamConfig::default() };
    let log = Arc::new(JetStreamLog::connect(url, config).await?);
    let keys = Arc::new(KvKeyStore::open(log.context(), "QM_KEYS", replicas).await?);
    let sealer = Arc::new(Sealer::new(master_key(), keys));
    let engine = Engine::new(log.clone(), sealer, EngineConfig::default());
    Ok((engine, log))
}

pub async fn run(
    engine: &Engine,
    org: &str,
    actor: &Actor,
    command: Command,
) -> anyhow::Result<Executed> {
    Ok(engine.execute(Request::new(id(org), actor.clone(), command)).await?)
}

/// Creates `org` with admin `admin`, team `eng` holding `members` people (`p0`, `p1`, …), and
/// an authorized custom SCIM app `crm` with `seats` seats sealed with `token`.
pub async fn standard_org(
    engine: &Engine,
    org: &str,
    members: usize,
    seats: Option<u32>,
    token: &str,
) -> anyhow::Result<Position> {
    let admin = person("admin");
    run(
        engine,
        org,
        &admin,
        Command::CreateOrganization {
            name: format!("Org {org}"),
            admin_email: "admin@example.com".into(),
            admin_display_name: "Admin".into(),
        },
    )
    .await?;
    run(engine, org, &admin, Command::CreateTeam { team: id("eng"), name: "Engineering".into() })
        .await?;
    for i in 0..members {
        let p: PersonId = id(&format!("p{i}"));
        let add = Command::AddMember {
            person: p.clone(),
            email: format!("p{i}@example.com"),
            display_name: format!("Person {i}"),
            role: Role::Member,
        };
        run(engine, org, &admin, add).await?;
        run(engine, org, &admin, Command::AddTeamMember { team: id("eng"), person: p }).await?;
    }
    let credentials = engine.seal_credentials(&id(org), &id("crm"), &Secret::new(token)).await?;
    run(
        engine,
        org,
        &admin,
        Command::AddIntegratedApp {
            app: id("crm"),
            catalog_app: "custom-scim".into(),
            display_name: "CRM".into(),
            base_url: "https://scim.crm.example/v2".into(),
            credentials,
            seat_limit: seats,
        },
    )
    .await?;
    let done =
        run(engine, org, &provisioner(), Command::RecordAppAuthorized { app: id("crm") }).await?;
    Ok(done.position)
}

/// The state of `org` folded from its whole history, ignoring every cache and snapshot.
pub async fn replayed_state(
    log: &dyn EventLog,
    org: &str,
) -> anyhow::Result<qm_engine::org::OrgState> {
    let mut state = qm_engine::org::OrgState::default();
    qm_engine::handler::catch_up(log, &id(org), &mut state).await?;
    Ok(state)
}
