//! Folding commits into the views, inside one redb write transaction.
//!
//! Each event touches the rows it changes and nothing else. An event that does not fit the
//! views (a grant that was never requested, a row that does not decode) is an [`ApplyError`]
//! naming the position and the event: the projector stops rather than skip it.

use qm_proto::*;
use redb::{ReadableTable, Table, WriteTransaction};
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

pub(crate) struct Tables<'txn> {
    orgs: Table<'txn, &'static str, &'static [u8]>,
    members: Table<'txn, Key2<'static>, &'static [u8]>,
    teams: Table<'txn, Key2<'static>, &'static [u8]>,
    apps: Table<'txn, Key2<'static>, &'static [u8]>,
    grants: Table<'txn, Key2<'static>, &'static [u8]>,
    by_app: Table<'txn, Key3<'static>, &'static str>,
    by_person: Table<'txn, Key3<'static>, &'static str>,
    intervals: Table<'txn, (&'static str, &'static str, &'static str, u64), &'static [u8]>,
    open_intervals: Table<'txn, Key2<'static>, u64>,
}

/// The facts of the commit an event belongs to.
struct At<'a> {
    org: &'a OrgId,
    position: Position,
    time: Timestamp,
    event: &'static str,
}

impl At<'_> {
    fn fail(&self, reason: impl Into<String>) -> ApplyError {
        ApplyError { position: self.position, event: self.event, reason: reason.into() }
    }
}

type Result<T> = std::result::Result<T, ApplyError>;

fn get<T: DeserializeOwned>(
    table: &Table<'_, Key2<'static>, &'static [u8]>,
    key: (&str, &str),
    at: &At,
) -> Result<Option<T>> {
    let Some(bytes) = table.get(key).map_err(|e| at.fail(e.to_string()))? else { return Ok(None) };
    postcard::from_bytes(bytes.value()).map(Some).map_err(|e| at.fail(format!("row {key:?}: {e}")))
}

fn must<T: DeserializeOwned>(
    table: &Table<'_, Key2<'static>, &'static [u8]>,
    key: (&str, &str),
    what: &str,
    at: &At,
) -> Result<T> {
    get(table, key, at)?.ok_or_else(|| at.fail(format!("{what} {} is not in the views", key.1)))
}

fn put<T: Serialize>(
    table: &mut Table<'_, Key2<'static>, &'static [u8]>,
    key: (&str, &str),
    row: &T,
    at: &At,
) -> Result<()> {
    table.insert(key, encode(row).as_slice()).map_err(|e| at.fail(e.to_string()))?;
    Ok(())
}

impl<'txn> Tables<'txn> {
    pub(crate) fn open(txn: &'txn WriteTransaction) -> std::result::Result<Self, redb::TableError> {
        Ok(Tables {
            orgs: txn.open_table(ORGS)?,
            members: txn.open_table(MEMBERS)?,
            teams: txn.open_table(TEAMS)?,
            apps: txn.open_table(APPS)?,
            grants: txn.open_table(GRANTS)?,
            by_app: txn.open_table(BY_APP)?,
            by_person: txn.open_table(BY_PERSON)?,
            intervals: txn.open_table(INTERVALS)?,
            open_intervals: txn.open_table(OPEN_INTERVALS)?,
        })
    }

    pub(crate) fn apply(&mut self, recorded: &RecordedCommit) -> Result<()> {
        let commit = &recorded.commit;
        for event in &commit.events {
            let at = At {
                org: &commit.org,
                position: recorded.position,
                time: commit.recorded_at,
                event: event.name(),
            };
            self.apply_event(event, &at)?;
        }
        Ok(())
    }

    fn apply_event(&mut self, event: &Event, at: &At) -> Result<()> {
        let org = at.org.as_str();
        match event {
            Event::OrganizationCreated(e) => {
                let row = OrganizationView {
                    org: e.org.clone(),
                    name: e.name.clone(),
                    created_at: at.time,
                    members: 0,
                    teams: 0,
                };
                self.orgs
                    .insert(org, encode(&row).as_slice())
                    .map_err(|e| at.fail(e.to_string()))?;
            }
            Event::MemberAdded(e) => {
                let row = MemberView {
                    person: e.person.clone(),
                    email: e.email.clone(),
                    display_name: e.display_name.clone(),
                    role: e.role,
                    teams: Vec::new(),
                };
                put(&mut self.members, (org, e.person.as_str()), &row, at)?;
                self.count_org(at, 1, 0)?;
            }
            Event::MemberRemoved(e) => {
                let member: MemberView =
                    must(&self.members, (org, e.person.as_str()), "member", at)?;
                for team in &member.teams {
                    self.edit_team(at, team, |t| t.members.retain(|p| p != &e.person))?;
                }
                self.members
                    .remove((org, e.person.as_str()))
                    .map_err(|e| at.fail(e.to_string()))?;
                self.count_org(at, -1, 0)?;
            }
            Event::MemberRoleChanged(e) => self.edit_member(at, &e.person, |m| m.role = e.role)?,
            Event::TeamCreated(e) => {
                let row =
                    TeamView { team: e.team.clone(), name: e.name.clone(), members: Vec::new() };
                put(&mut self.teams, (org, e.team.as_str()), &row, at)?;
                self.count_org(at, 0, 1)?;
            }
            Event::TeamDeleted(e) => {
                let team: TeamView = must(&self.teams, (org, e.team.as_str()), "team", at)?;
                for person in &team.members {
                    self.edit_member(at, person, |m| m.teams.retain(|t| t != &e.team))?;
                }
                self.teams.remove((org, e.team.as_str())).map_err(|e| at.fail(e.to_string()))?;
                self.count_org(at, 0, -1)?;
            }
            Event::TeamMemberAdded(e) => {
                self.edit_team(at, &e.team, |t| insert_sorted(&mut t.members, &e.person))?;
                self.edit_member(at, &e.person, |m| insert_sorted(&mut m.teams, &e.team))?;
            }
            Event::TeamMemberRemoved(e) => {
                self.edit_team(at, &e.team, |t| t.members.retain(|p| p != &e.person))?;
                self.edit_member(at, &e.person, |m| m.teams.retain(|t| t != &e.team))?;
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
                put(&mut self.apps, (org, e.app.as_str()), &row, at)?;
            }
            Event::AppCredentialsUpdated(e) => {
                self.edit_app(at, &e.app, |a| a.status = AppStatusView::Authorizing)?
            }
            Event::SeatLimitChanged(e) => {
                self.edit_app(at, &e.app, |a| a.seat_limit = e.seat_limit)?
            }
            Event::AppAuthorized(e) => {
                self.edit_app(at, &e.app, |a| a.status = AppStatusView::Authorized)?
            }
            Event::AppAuthorizationFailed(e) => self.edit_app(at, &e.app, |a| {
                a.status = AppStatusView::AuthorizationFailed { reason: e.reason.clone() }
            })?,
            Event::IntegratedAppRemoved(e) => {
                self.edit_app(at, &e.app, |a| a.status = AppStatusView::Removed)?
            }
            Event::GrantRequested(e) => {
                let row = GrantView {
                    grant: e.grant.clone(),
                    org: at.org.clone(),
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
                };
                put(&mut self.grants, (org, e.grant.as_str()), &row, at)?;
                let index = |e: redb::StorageError| at.fail(e.to_string());
                self.by_app
                    .insert((org, e.app.as_str(), e.person.as_str()), e.grant.as_str())
                    .map_err(index)?;
                self.by_person
                    .insert((e.person.as_str(), org, e.app.as_str()), e.grant.as_str())
                    .map_err(index)?;
                self.edit_app(at, &e.app, |a| a.seats_used += 1)?;
            }
            Event::AccountProvisioned(e) => {
                let grant = self.edit_grant(at, &e.grant, |g| {
                    g.account = Some(e.account.clone());
                    if g.deprovision_cause.is_none() {
                        g.status = GrantStatus::Active;
                        g.attempts = 0;
                        g.last_error = None;
                        g.next_retry_at = None;
                    }
                })?;
                self.open_interval(at, &grant)?;
            }
            Event::ProvisioningFailed(e) => {
                self.edit_grant(at, &e.grant, |g| {
                    g.attempts = e.attempt;
                    g.last_error = Some(e.reason.clone());
                    g.next_retry_at = e.next_retry_at;
                    if g.deprovision_cause.is_none() {
                        g.status = GrantStatus::Failed;
                    }
                })?;
            }
            Event::GrantQuarantined(e) => {
                self.edit_grant(at, &e.grant, |g| {
                    g.status = GrantStatus::Quarantined;
                    g.last_error = Some(e.reason.clone());
                    g.next_retry_at = None;
                })?;
            }
            Event::GrantRetried(e) => {
                self.edit_grant(at, &e.grant, |g| {
                    g.attempts = 0;
                    g.status = match g.deprovision_cause {
                        Some(_) => GrantStatus::Deprovisioning,
                        None => GrantStatus::Requested,
                    };
                })?;
            }
            Event::GrantSuspended(e) => {
                let grant = self.edit_grant(at, &e.grant, |g| g.status = GrantStatus::Suspended)?;
                self.close_interval(at, &grant, IntervalEnd::Suspended)?;
            }
            Event::GrantResumed(e) => {
                let grant = self.edit_grant(at, &e.grant, |g| g.status = GrantStatus::Active)?;
                self.open_interval(at, &grant)?;
            }
            Event::DeprovisioningRequested(e) => {
                self.edit_grant(at, &e.grant, |g| {
                    g.status = GrantStatus::Deprovisioning;
                    g.deprovision_cause = Some(e.cause);
                    g.attempts = 0;
                })?;
            }
            Event::AccountDeprovisioned(e) => {
                let grant: GrantView = must(&self.grants, (org, e.grant.as_str()), "grant", at)?;
                let cause = grant.deprovision_cause.unwrap_or(DeprovisionCause::Requested);
                self.close_interval(at, &grant, IntervalEnd::Deprovisioned(cause))?;
            }
            Event::GrantRevoked(e) => {
                let grant = self.edit_grant(at, &e.grant, |g| {
                    g.status = GrantStatus::Revoked;
                    g.deprovision_cause = Some(e.cause);
                })?;
                self.close_interval(at, &grant, IntervalEnd::Deprovisioned(e.cause))?;
                let index = |e: redb::StorageError| at.fail(e.to_string());
                let (app, person) = (grant.app.as_str(), grant.person.as_str());
                self.by_app.remove((org, app, person)).map_err(index)?;
                self.by_person.remove((person, org, app)).map_err(index)?;
                self.edit_app(at, &grant.app, |a| a.seats_used = a.seats_used.saturating_sub(1))?;
            }
        }
        Ok(())
    }

    fn count_org(&mut self, at: &At, members: i32, teams: i32) -> Result<()> {
        let org = at.org.as_str();
        let bytes =
            self.orgs.get(org).map_err(|e| at.fail(e.to_string()))?.map(|b| b.value().to_vec());
        let mut row: OrganizationView = match bytes {
            Some(bytes) => postcard::from_bytes(&bytes).map_err(|e| at.fail(e.to_string()))?,
            None => return Err(at.fail(format!("organization {org} is not in the views"))),
        };
        row.members = row.members.saturating_add_signed(members);
        row.teams = row.teams.saturating_add_signed(teams);
        self.orgs.insert(org, encode(&row).as_slice()).map_err(|e| at.fail(e.to_string()))?;
        Ok(())
    }

    fn edit_member(
        &mut self,
        at: &At,
        person: &PersonId,
        f: impl FnOnce(&mut MemberView),
    ) -> Result<()> {
        let key = (at.org.as_str(), person.as_str());
        let mut row: MemberView = must(&self.members, key, "member", at)?;
        f(&mut row);
        put(&mut self.members, key, &row, at)
    }

    fn edit_team(&mut self, at: &At, team: &TeamId, f: impl FnOnce(&mut TeamView)) -> Result<()> {
        let key = (at.org.as_str(), team.as_str());
        let mut row: TeamView = must(&self.teams, key, "team", at)?;
        f(&mut row);
        put(&mut self.teams, key, &row, at)
    }

    fn edit_app(&mut self, at: &At, app: &AppId, f: impl FnOnce(&mut AppView)) -> Result<()> {
        let key = (at.org.as_str(), app.as_str());
        let mut row: AppView = must(&self.apps, key, "app", at)?;
        f(&mut row);
        put(&mut self.apps, key, &row, at)
    }

    fn edit_grant(
        &mut self,
        at: &At,
        grant: &GrantId,
        f: impl FnOnce(&mut GrantView),
    ) -> Result<GrantView> {
        let key = (at.org.as_str(), grant.as_str());
        let mut row: GrantView = must(&self.grants, key, "grant", at)?;
        f(&mut row);
        row.updated_at = at.time;
        row.position = at.position;
        put(&mut self.grants, key, &row, at)?;
        Ok(row)
    }

    fn open_interval(&mut self, at: &At, grant: &GrantView) -> Result<()> {
        if grant.status != GrantStatus::Active {
            return Ok(());
        }
        let org = at.org.as_str();
        let row = AccessInterval {
            org: at.org.clone(),
            app: grant.app.clone(),
            person: grant.person.clone(),
            grant: grant.grant.clone(),
            from: at.time,
            from_position: at.position,
            to: None,
            to_position: None,
            ended_by: None,
        };
        let key = (org, grant.app.as_str(), grant.person.as_str(), at.position);
        let fail = |e: redb::StorageError| at.fail(e.to_string());
        self.intervals.insert(key, encode(&row).as_slice()).map_err(fail)?;
        self.open_intervals.insert((org, grant.grant.as_str()), at.position).map_err(fail)?;
        Ok(())
    }

    fn close_interval(&mut self, at: &At, grant: &GrantView, end: IntervalEnd) -> Result<()> {
        let org = at.org.as_str();
        let fail = |e: redb::StorageError| at.fail(e.to_string());
        let Some(opened) = self.open_intervals.remove((org, grant.grant.as_str())).map_err(fail)?
        else {
            return Ok(());
        };
        let opened = opened.value();
        let key = (org, grant.app.as_str(), grant.person.as_str(), opened);
        let bytes = self.intervals.get(key).map_err(fail)?.map(|b| b.value().to_vec());
        let Some(bytes) = bytes else { return Err(at.fail("open interval row is missing")) };
        let mut row: AccessInterval =
            postcard::from_bytes(&bytes).map_err(|e| at.fail(e.to_string()))?;
        row.to = Some(at.time);
        row.to_position = Some(at.position);
        row.ended_by = Some(end);
        self.intervals.insert(key, encode(&row).as_slice()).map_err(fail)?;
        Ok(())
    }
}

fn insert_sorted<T: Ord + Clone>(list: &mut Vec<T>, item: &T) {
    if let Err(at) = list.binary_search(item) {
        list.insert(at, item.clone());
    }
}
