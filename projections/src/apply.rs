//! Folding commits into the views, inside one redb write transaction.
//!
//! A [`Batch`] keeps every row it touches in memory, decoded, until the batch ends, and then
//! writes each changed row once, in key order. A row changed by several commits of one batch is
//! therefore decoded and written once, and the writes walk each table's pages in order.
//!
//! An event that does not fit the views (a grant that was never requested, a row that does not
//! decode) is an [`ApplyError`] naming the position and the event: the projector stops rather
//! than skip it, and the batch's transaction is dropped, so nothing of it is written.

use std::collections::BTreeMap;

use qm_proto::*;
use redb::{ReadableTable, Table, TableDefinition, WriteTransaction};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::views::*;

/// Why a commit could not be applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot apply {event} at position {position}: {reason}")]
pub struct ApplyError {
    pub position: Position,
    pub event: &'static str,
    pub reason: String,
}

type Result<T> = std::result::Result<T, ApplyError>;

/// The facts of the commit an event belongs to.
struct At<'a> {
    org: &'a str,
    position: Position,
    time: Timestamp,
    event: &'static str,
}

impl At<'_> {
    fn fail(&self, reason: impl std::fmt::Display) -> ApplyError {
        ApplyError { position: self.position, event: self.event, reason: reason.to_string() }
    }
}

/// The rows of one table a batch has read or changed; `None` is a deleted row.
struct Rows<'txn, V: redb::Value + 'static, T> {
    table: Table<'txn, &'static str, V>,
    rows: BTreeMap<String, Option<T>>,
}

/// How a row type is stored in its table.
trait Stored: Sized {
    type Value: redb::Value + 'static;
    fn read(bytes: <Self::Value as redb::Value>::SelfType<'_>)
    -> std::result::Result<Self, String>;
    fn insert(
        &self,
        table: &mut Table<'_, &'static str, Self::Value>,
        key: &str,
    ) -> std::result::Result<(), redb::StorageError>;
}

impl<T: Serialize + DeserializeOwned> Stored for Row<T> {
    type Value = &'static [u8];
    fn read(bytes: &[u8]) -> std::result::Result<Self, String> {
        postcard::from_bytes(bytes).map(Row).map_err(|e| e.to_string())
    }
    fn insert(
        &self,
        table: &mut Table<'_, &'static str, &'static [u8]>,
        key: &str,
    ) -> std::result::Result<(), redb::StorageError> {
        table.insert(key, encode(&self.0).as_slice()).map(|_| ())
    }
}

/// A postcard-encoded view row.
struct Row<T>(T);

/// An index entry: the grant id a key points at.
struct Pointer(String);

impl Stored for Pointer {
    type Value = &'static str;
    fn read(value: &str) -> std::result::Result<Self, String> {
        Ok(Pointer(value.to_string()))
    }
    fn insert(
        &self,
        table: &mut Table<'_, &'static str, &'static str>,
        key: &str,
    ) -> std::result::Result<(), redb::StorageError> {
        table.insert(key, self.0.as_str()).map(|_| ())
    }
}

impl<'txn, S: Stored> Rows<'txn, S::Value, S> {
    fn open(
        txn: &'txn WriteTransaction,
        def: TableDefinition<&'static str, S::Value>,
    ) -> std::result::Result<Self, redb::TableError> {
        Ok(Rows { table: txn.open_table(def)?, rows: BTreeMap::new() })
    }

    /// The row at `key`, read from the table on first touch.
    fn get(&mut self, key: &str, at: &At) -> Result<Option<&mut S>> {
        if !self.rows.contains_key(key) {
            let stored = self.table.get(key).map_err(|e| at.fail(e))?;
            let row = stored
                .map(|v| S::read(v.value()))
                .transpose()
                .map_err(|e| at.fail(format!("row {key:?}: {e}")))?;
            self.rows.insert(key.to_string(), row);
        }
        Ok(self.rows.get_mut(key).and_then(Option::as_mut))
    }

    fn put(&mut self, key: String, row: S) {
        self.rows.insert(key, Some(row));
    }

    fn remove(&mut self, key: String) {
        self.rows.insert(key, None);
    }

    /// Writes every touched row, in key order.
    fn flush(mut self) -> std::result::Result<(), redb::StorageError> {
        for (key, row) in std::mem::take(&mut self.rows) {
            match row {
                Some(row) => row.insert(&mut self.table, &key)?,
                None => {
                    self.table.remove(key.as_str())?;
                }
            }
        }
        Ok(())
    }
}

/// One batch of commits being applied.
pub(crate) struct Batch<'txn> {
    orgs: Rows<'txn, &'static [u8], Row<OrganizationView>>,
    members: Rows<'txn, &'static [u8], Row<MemberView>>,
    teams: Rows<'txn, &'static [u8], Row<TeamView>>,
    apps: Rows<'txn, &'static [u8], Row<AppView>>,
    grants: Rows<'txn, &'static [u8], Row<GrantView>>,
    by_app: Rows<'txn, &'static str, Pointer>,
    by_person: Rows<'txn, &'static str, Pointer>,
    intervals: Rows<'txn, &'static [u8], Row<AccessInterval>>,
}

/// The row at `key`, which must exist.
fn must<'r, T>(
    rows: &'r mut Rows<'_, &'static [u8], Row<T>>,
    key: &str,
    what: &str,
    at: &At,
) -> Result<&'r mut T>
where
    T: Serialize + DeserializeOwned,
{
    let id = key.rsplit('\0').next().unwrap_or(key);
    match rows.get(key, at)? {
        Some(row) => Ok(&mut row.0),
        None => Err(at.fail(format!("{what} {id} is not in the views"))),
    }
}

impl<'txn> Batch<'txn> {
    pub(crate) fn open(txn: &'txn WriteTransaction) -> std::result::Result<Self, redb::TableError> {
        Ok(Batch {
            orgs: Rows::open(txn, ORGS)?,
            members: Rows::open(txn, MEMBERS)?,
            teams: Rows::open(txn, TEAMS)?,
            apps: Rows::open(txn, APPS)?,
            grants: Rows::open(txn, GRANTS)?,
            by_app: Rows::open(txn, BY_APP)?,
            by_person: Rows::open(txn, BY_PERSON)?,
            intervals: Rows::open(txn, INTERVALS)?,
        })
    }

    /// Writes everything the batch changed into its transaction.
    pub(crate) fn finish(self) -> std::result::Result<(), redb::StorageError> {
        self.orgs.flush()?;
        self.members.flush()?;
        self.teams.flush()?;
        self.apps.flush()?;
        self.grants.flush()?;
        self.by_app.flush()?;
        self.by_person.flush()?;
        self.intervals.flush()
    }

    pub(crate) fn apply(&mut self, recorded: &RecordedCommit) -> Result<()> {
        let commit = &recorded.commit;
        for event in &commit.events {
            let at = At {
                org: commit.org.as_str(),
                position: recorded.position,
                time: commit.recorded_at,
                event: event.name(),
            };
            self.apply_event(event, &at)?;
        }
        Ok(())
    }

    fn apply_event(&mut self, event: &Event, at: &At) -> Result<()> {
        let org = at.org;
        match event {
            Event::OrganizationCreated(e) => {
                let row = OrganizationView {
                    org: e.org.clone(),
                    name: e.name.clone(),
                    created_at: at.time,
                    members: 0,
                    teams: 0,
                };
                self.orgs.put(org.to_string(), Row(row));
            }
            Event::MemberAdded(e) => {
                let row = MemberView {
                    person: e.person.clone(),
                    email: e.email.clone(),
                    display_name: e.display_name.clone(),
                    role: e.role,
                    teams: Vec::new(),
                };
                self.members.put(key(&[org, e.person.as_str()]), Row(row));
                must(&mut self.orgs, org, "organization", at)?.members += 1;
            }
            Event::MemberRemoved(e) => {
                let member_key = key(&[org, e.person.as_str()]);
                let teams = must(&mut self.members, &member_key, "member", at)?.teams.clone();
                for team in &teams {
                    must(&mut self.teams, &key(&[org, team.as_str()]), "team", at)?
                        .members
                        .retain(|p| p != &e.person);
                }
                self.members.remove(member_key);
                let row = must(&mut self.orgs, org, "organization", at)?;
                row.members = row.members.saturating_sub(1);
            }
            Event::MemberRoleChanged(e) => {
                must(&mut self.members, &key(&[org, e.person.as_str()]), "member", at)?.role =
                    e.role;
            }
            Event::TeamCreated(e) => {
                let row =
                    TeamView { team: e.team.clone(), name: e.name.clone(), members: Vec::new() };
                self.teams.put(key(&[org, e.team.as_str()]), Row(row));
                must(&mut self.orgs, org, "organization", at)?.teams += 1;
            }
            Event::TeamDeleted(e) => {
                let team_key = key(&[org, e.team.as_str()]);
                let members = must(&mut self.teams, &team_key, "team", at)?.members.clone();
                for person in &members {
                    must(&mut self.members, &key(&[org, person.as_str()]), "member", at)?
                        .teams
                        .retain(|t| t != &e.team);
                }
                self.teams.remove(team_key);
                let row = must(&mut self.orgs, org, "organization", at)?;
                row.teams = row.teams.saturating_sub(1);
            }
            Event::TeamMemberAdded(e) => {
                insert_sorted(
                    &mut must(&mut self.teams, &key(&[org, e.team.as_str()]), "team", at)?.members,
                    &e.person,
                );
                insert_sorted(
                    &mut must(&mut self.members, &key(&[org, e.person.as_str()]), "member", at)?
                        .teams,
                    &e.team,
                );
            }
            Event::TeamMemberRemoved(e) => {
                must(&mut self.teams, &key(&[org, e.team.as_str()]), "team", at)?
                    .members
                    .retain(|p| p != &e.person);
                must(&mut self.members, &key(&[org, e.person.as_str()]), "member", at)?
                    .teams
                    .retain(|t| t != &e.team);
            }
            Event::IntegratedAppAdded(e) => {
                let row = AppView {
                    app: e.app.clone(),
                    catalog_app: e.catalog_app.clone(),
                    display_name: e.display_name.clone(),
                    base_url: e.base_url.clone(),
                    status: AppStatusView::Authorizing,
                    seat_limit: e.seat_limit,
                    seats_used: 0,
                };
                self.apps.put(key(&[org, e.app.as_str()]), Row(row));
            }
            Event::AppCredentialsUpdated(e) => {
                self.app(at, &e.app)?.status = AppStatusView::Authorizing
            }
            Event::SeatLimitChanged(e) => self.app(at, &e.app)?.seat_limit = e.seat_limit,
            Event::AppAuthorized(e) => self.app(at, &e.app)?.status = AppStatusView::Authorized,
            Event::AppAuthorizationFailed(e) => {
                self.app(at, &e.app)?.status =
                    AppStatusView::AuthorizationFailed { reason: e.reason.clone() }
            }
            Event::IntegratedAppRemoved(e) => self.app(at, &e.app)?.status = AppStatusView::Removed,
            Event::GrantRequested(e) => {
                let row = GrantView {
                    grant: e.grant.clone(),
                    org: at.org.parse().map_err(|e| at.fail(e))?,
                    app: e.app.clone(),
                    person: e.person.clone(),
                    status: GrantStatus::Requested,
                    account: None,
                    attempts: 0,
                    last_error: None,
                    next_retry_at: None,
                    deprovision_cause: None,
                    requested_at: at.time,
                    updated_at: at.time,
                    position: at.position,
                    access_since: None,
                };
                self.grants.put(key(&[org, e.grant.as_str()]), Row(row));
                let (app, person, grant) = (e.app.as_str(), e.person.as_str(), e.grant.to_string());
                self.by_app.put(key(&[org, app, person]), Pointer(grant.clone()));
                self.by_person.put(key(&[person, org, app]), Pointer(grant));
                self.app(at, &e.app)?.seats_used += 1;
            }
            Event::AccountProvisioned(e) => {
                let grant = self.grant(at, &e.grant)?;
                grant.account = Some(e.account.clone());
                if grant.deprovision_cause.is_none() {
                    grant.status = GrantStatus::Active;
                    grant.attempts = 0;
                    grant.last_error = None;
                    grant.next_retry_at = None;
                }
                self.open_interval(at, &e.grant)?;
            }
            Event::ProvisioningFailed(e) => {
                let grant = self.grant(at, &e.grant)?;
                grant.attempts = e.attempt;
                grant.last_error = Some(e.reason.clone());
                grant.next_retry_at = e.next_retry_at;
                if grant.deprovision_cause.is_none() {
                    grant.status = GrantStatus::Failed;
                }
            }
            Event::GrantQuarantined(e) => {
                let grant = self.grant(at, &e.grant)?;
                grant.status = GrantStatus::Quarantined;
                grant.last_error = Some(e.reason.clone());
                grant.next_retry_at = None;
            }
            Event::GrantRetried(e) => {
                let grant = self.grant(at, &e.grant)?;
                grant.attempts = 0;
                grant.status = match grant.deprovision_cause {
                    Some(_) => GrantStatus::Deprovisioning,
                    None => GrantStatus::Requested,
                };
            }
            Event::GrantSuspended(e) => {
                self.grant(at, &e.grant)?.status = GrantStatus::Suspended;
                self.close_interval(at, &e.grant, IntervalEnd::Suspended)?;
            }
            Event::GrantResumed(e) => {
                self.grant(at, &e.grant)?.status = GrantStatus::Active;
                self.open_interval(at, &e.grant)?;
            }
            Event::DeprovisioningRequested(e) => {
                let grant = self.grant(at, &e.grant)?;
                grant.status = GrantStatus::Deprovisioning;
                grant.deprovision_cause = Some(e.cause);
                grant.attempts = 0;
            }
            Event::DeprovisioningHeld(e) => {
                let grant = self.grant(at, &e.grant)?;
                grant.status = GrantStatus::Held;
                grant.last_error = Some(e.reason.clone());
            }
            Event::DeprovisioningConfirmed(e) => {
                let grant = self.grant(at, &e.grant)?;
                grant.status = GrantStatus::Deprovisioning;
                grant.attempts = 0;
            }
            Event::AccountDeprovisioned(e) => {
                let cause = self
                    .grant(at, &e.grant)?
                    .deprovision_cause
                    .unwrap_or(DeprovisionCause::Requested);
                self.close_interval(at, &e.grant, IntervalEnd::Deprovisioned(cause))?;
            }
            Event::GrantRevoked(e) => {
                let grant = self.grant(at, &e.grant)?;
                grant.status = GrantStatus::Revoked;
                grant.deprovision_cause = Some(e.cause);
                let (app, person) = (grant.app.clone(), grant.person.clone());
                self.close_interval(at, &e.grant, IntervalEnd::Deprovisioned(e.cause))?;
                self.by_app.remove(key(&[org, app.as_str(), person.as_str()]));
                self.by_person.remove(key(&[person.as_str(), org, app.as_str()]));
                let row = self.app(at, &app)?;
                row.seats_used = row.seats_used.saturating_sub(1);
            }
        }
        Ok(())
    }

    fn app(&mut self, at: &At, app: &AppId) -> Result<&mut AppView> {
        must(&mut self.apps, &key(&[at.org, app.as_str()]), "app", at)
    }

    /// A grant, stamped as changed by this event.
    fn grant(&mut self, at: &At, grant: &GrantId) -> Result<&mut GrantView> {
        let row = must(&mut self.grants, &key(&[at.org, grant.as_str()]), "grant", at)?;
        row.updated_at = at.time;
        row.position = at.position;
        Ok(row)
    }

    /// Opens an access interval if the grant is now active and has none open.
    fn open_interval(&mut self, at: &At, grant_id: &GrantId) -> Result<()> {
        let grant = self.grant(at, grant_id)?;
        if grant.status != GrantStatus::Active || grant.access_since.is_some() {
            return Ok(());
        }
        grant.access_since = Some(at.position);
        let row = AccessInterval {
            org: grant.org.clone(),
            app: grant.app.clone(),
            person: grant.person.clone(),
            grant: grant.grant.clone(),
            from: at.time,
            from_position: at.position,
            to: None,
            to_position: None,
            ended_by: None,
        };
        let interval_key =
            key(&[at.org, grant.app.as_str(), grant.person.as_str(), &position_part(at.position)]);
        self.intervals.put(interval_key, Row(row));
        Ok(())
    }

    fn close_interval(&mut self, at: &At, grant_id: &GrantId, end: IntervalEnd) -> Result<()> {
        let grant = self.grant(at, grant_id)?;
        let Some(opened) = grant.access_since.take() else { return Ok(()) };
        let interval_key =
            key(&[at.org, grant.app.as_str(), grant.person.as_str(), &position_part(opened)]);
        let interval = must(&mut self.intervals, &interval_key, "open interval of grant", at)?;
        interval.to = Some(at.time);
        interval.to_position = Some(at.position);
        interval.ended_by = Some(end);
        Ok(())
    }
}

fn insert_sorted<T: Ord + Clone>(list: &mut Vec<T>, item: &T) {
    if let Err(at) = list.binary_search(item) {
        list.insert(at, item.clone());
    }
}
