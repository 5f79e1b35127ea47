//! The state of one organization, as its decisions need it, and `evolve`, which folds events in.
//!
//! The state is what the rules of DESIGN.md are checked against: members and their teams,
//! integrated apps with the seats their live grants hold, and live grants. Revoked grants leave
//! the state (the read side keeps their history), so its size follows what is live, not how long
//! the history is. `evolve` never fails: it folds facts the log already holds.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use qm_proto::*;
use serde::{Deserialize, Serialize};

/// How many recent command ids an organization remembers for idempotent answers. A retry of an
/// older command is still caught by the log's duplicate window (see `handler`).
pub const RECENT_COMMANDS: usize = 256;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrgState {
    /// `None` until the organization is created.
    pub name: Option<String>,
    pub members: BTreeMap<PersonId, Member>,
    pub teams: BTreeMap<TeamId, Team>,
    pub apps: BTreeMap<AppId, IntegratedApp>,
    /// Live grants: every grant not yet revoked.
    pub grants: BTreeMap<GrantId, Grant>,
    /// The live grant of each (person, app): rule 5 makes it unique.
    pub live: BTreeMap<(PersonId, AppId), GrantId>,
    /// The position of the last commit folded in; 0 before the first.
    pub version: Position,
    /// The hash of the last commit folded in: the next commit's `prev_hash`.
    pub last_hash: Hash,
    pub commits: u64,
    pub recent_commands: VecDeque<(CommandId, Position)>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub email: String,
    pub display_name: String,
    pub role: Role,
    pub teams: BTreeSet<TeamId>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Team {
    pub name: String,
    pub members: BTreeSet<PersonId>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AppStatus {
    /// Added or credentials changed; the provisioner has not verified them yet.
    Authorizing,
    Authorized,
    AuthorizationFailed {
        reason: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IntegratedApp {
    pub catalog_app: String,
    pub display_name: String,
    pub base_url: String,
    pub credentials: SealedCredentials,
    pub seat_limit: Option<u32>,
    pub status: AppStatus,
    /// Live grants of the app: they all hold a seat, whatever their state (rule 4).
    pub seats_used: u32,
    /// Detached, and waiting for its last grants to be revoked before it leaves the state.
    pub removed: bool,
}

/// Where a grant is in its lifecycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum GrantState {
    /// Waiting for the provisioner to create the account.
    Requested,
    Active,
    Suspended,
    /// The last connector call failed; the provisioner retries.
    Failed,
    /// The provisioner gave up; a person must look, then `RetryGrant`.
    Quarantined,
    /// Waiting for the provisioner to take the account away.
    Deprovisioning,
    /// Its deprovisioning is held by the circuit breaker until an admin confirms it.
    Held,
}

impl GrantState {
    pub fn as_str(self) -> &'static str {
        match self {
            GrantState::Requested => "requested",
            GrantState::Active => "active",
            GrantState::Suspended => "suspended",
            GrantState::Failed => "failed",
            GrantState::Quarantined => "quarantined",
            GrantState::Deprovisioning => "deprovisioning",
            GrantState::Held => "held",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    pub app: AppId,
    pub person: PersonId,
    pub state: GrantState,
    /// Set once a deprovisioning was requested: failures and retries then concern taking the
    /// account away, not creating it.
    pub deprovision_cause: Option<DeprovisionCause>,
    /// An admin confirmed the deprovisioning past the circuit breaker.
    pub deprovision_confirmed: bool,
    pub account: Option<ExternalAccount>,
    pub attempts: u32,
    pub last_error: Option<String>,
}

impl OrgState {
    pub fn exists(&self) -> bool {
        self.name.is_some()
    }

    /// The position of an earlier commit of this command, if it is among the recent ones.
    pub fn recent_command(&self, command: &CommandId) -> Option<Position> {
        self.recent_commands.iter().rev().find(|(id, _)| id == command).map(|(_, p)| *p)
    }

    /// Folds one recorded commit in: its events, then its place in the chain.
    pub fn apply(&mut self, recorded: &RecordedCommit) {
        for event in &recorded.commit.events {
            self.evolve(event);
        }
        self.version = recorded.position;
        self.last_hash = recorded.hash;
        self.commits += 1;
        if self.recent_commands.len() == RECENT_COMMANDS {
            self.recent_commands.pop_front();
        }
        self.recent_commands.push_back((recorded.commit.command_id.clone(), recorded.position));
    }

    /// Folds one event in.
    pub fn evolve(&mut self, event: &Event) {
        match event {
            Event::OrganizationCreated(e) => self.name = Some(e.name.clone()),
            Event::MemberAdded(e) => {
                let member = Member {
                    email: e.email.clone(),
                    display_name: e.display_name.clone(),
                    role: e.role,
                    teams: BTreeSet::new(),
                };
                self.members.insert(e.person.clone(), member);
            }
            Event::MemberRemoved(e) => {
                if let Some(member) = self.members.remove(&e.person) {
                    for team in member.teams {
                        if let Some(team) = self.teams.get_mut(&team) {
                            team.members.remove(&e.person);
                        }
                    }
                }
            }
            Event::MemberRoleChanged(e) => {
                if let Some(member) = self.members.get_mut(&e.person) {
                    member.role = e.role;
                }
            }
            Event::TeamCreated(e) => {
                let team = Team { name: e.name.clone(), members: BTreeSet::new() };
                self.teams.insert(e.team.clone(), team);
            }
            Event::TeamDeleted(e) => {
                if let Some(team) = self.teams.remove(&e.team) {
                    for person in team.members {
                        if let Some(member) = self.members.get_mut(&person) {
                            member.teams.remove(&e.team);
                        }
                    }
                }
            }
            Event::TeamMemberAdded(e) => {
                if let Some(team) = self.teams.get_mut(&e.team) {
                    team.members.insert(e.person.clone());
                }
                if let Some(member) = self.members.get_mut(&e.person) {
                    member.teams.insert(e.team.clone());
                }
            }
            Event::TeamMemberRemoved(e) => {
                if let Some(team) = self.teams.get_mut(&e.team) {
                    team.members.remove(&e.person);
                }
                if let Some(member) = self.members.get_mut(&e.person) {
                    member.teams.remove(&e.team);
                }
            }
            Event::IntegratedAppAdded(e) => {
                let app = IntegratedApp {
                    catalog_app: e.catalog_app.clone(),
                    display_name: e.display_name.clone(),
                    base_url: e.base_url.clone(),
                    credentials: e.credentials.clone(),
                    seat_limit: e.seat_limit,
                    status: AppStatus::Authorizing,
                    seats_used: 0,
                    removed: false,
                };
                self.apps.insert(e.app.clone(), app);
            }
            Event::AppCredentialsUpdated(e) => {
                if let Some(app) = self.apps.get_mut(&e.app) {
                    app.credentials = e.credentials.clone();
                    app.status = AppStatus::Authorizing;
                }
            }
            Event::SeatLimitChanged(e) => {
                if let Some(app) = self.apps.get_mut(&e.app) {
                    app.seat_limit = e.seat_limit;
                }
            }
            Event::AppAuthorized(e) => {
                if let Some(app) = self.apps.get_mut(&e.app) {
                    app.status = AppStatus::Authorized;
                }
            }
            Event::AppAuthorizationFailed(e) => {
                if let Some(app) = self.apps.get_mut(&e.app) {
                    app.status = AppStatus::AuthorizationFailed { reason: e.reason.clone() };
                }
            }
            Event::IntegratedAppRemoved(e) => {
                if let Some(app) = self.apps.get_mut(&e.app) {
                    app.removed = true;
                }
                self.forget_app_if_done(&e.app);
            }
            Event::GrantRequested(e) => {
                let grant = Grant {
                    app: e.app.clone(),
                    person: e.person.clone(),
                    state: GrantState::Requested,
                    deprovision_cause: None,
                    deprovision_confirmed: false,
                    account: None,
                    attempts: 0,
                    last_error: None,
                };
                self.grants.insert(e.grant.clone(), grant);
                self.live.insert((e.person.clone(), e.app.clone()), e.grant.clone());
                if let Some(app) = self.apps.get_mut(&e.app) {
                    app.seats_used += 1;
                }
            }
            Event::AccountProvisioned(e) => {
                if let Some(grant) = self.grants.get_mut(&e.grant) {
                    grant.account = Some(e.account.clone());
                    // An account created after its deprovisioning was requested still has to go.
                    if grant.deprovision_cause.is_none() {
                        grant.state = GrantState::Active;
                        grant.attempts = 0;
                        grant.last_error = None;
                    }
                }
            }
            Event::ProvisioningFailed(e) => {
                if let Some(grant) = self.grants.get_mut(&e.grant) {
                    grant.attempts = e.attempt;
                    grant.last_error = Some(e.reason.clone());
                    if grant.deprovision_cause.is_none() {
                        grant.state = GrantState::Failed;
                    }
                }
            }
            Event::GrantQuarantined(e) => {
                if let Some(grant) = self.grants.get_mut(&e.grant) {
                    grant.state = GrantState::Quarantined;
                    grant.last_error = Some(e.reason.clone());
                }
            }
            Event::GrantRetried(e) => {
                if let Some(grant) = self.grants.get_mut(&e.grant) {
                    grant.attempts = 0;
                    grant.state = match grant.deprovision_cause {
                        Some(_) => GrantState::Deprovisioning,
                        None => GrantState::Requested,
                    };
                }
            }
            Event::GrantSuspended(e) => {
                if let Some(grant) = self.grants.get_mut(&e.grant) {
                    grant.state = GrantState::Suspended;
                }
            }
            Event::GrantResumed(e) => {
                if let Some(grant) = self.grants.get_mut(&e.grant) {
                    grant.state = GrantState::Active;
                }
            }
            Event::DeprovisioningRequested(e) => {
                if let Some(grant) = self.grants.get_mut(&e.grant) {
                    grant.state = GrantState::Deprovisioning;
                    grant.deprovision_cause = Some(e.cause);
                    grant.deprovision_confirmed = false;
                    grant.attempts = 0;
                }
            }
            Event::DeprovisioningHeld(e) => {
                if let Some(grant) = self.grants.get_mut(&e.grant) {
                    grant.state = GrantState::Held;
                    grant.last_error = Some(e.reason.clone());
                }
            }
            Event::DeprovisioningConfirmed(e) => {
                if let Some(grant) = self.grants.get_mut(&e.grant) {
                    grant.state = GrantState::Deprovisioning;
                    grant.deprovision_confirmed = true;
                    grant.attempts = 0;
                }
            }
            Event::AccountDeprovisioned(_) => {}
            Event::GrantRevoked(e) => {
                if let Some(grant) = self.grants.remove(&e.grant) {
                    self.live.remove(&(grant.person, grant.app.clone()));
                    if let Some(app) = self.apps.get_mut(&grant.app) {
                        app.seats_used = app.seats_used.saturating_sub(1);
                    }
                    self.forget_app_if_done(&grant.app);
                }
            }
        }
    }

    /// A removed app leaves the state once its last grant is revoked; its id may then be reused.
    fn forget_app_if_done(&mut self, app: &AppId) {
        if self.apps.get(app).is_some_and(|a| a.removed && a.seats_used == 0) {
            self.apps.remove(app);
        }
    }

    pub fn is_admin(&self, person: &PersonId) -> bool {
        self.members.get(person).is_some_and(|m| m.role == Role::Admin)
    }

    pub fn admin_count(&self) -> usize {
        self.members.values().filter(|m| m.role == Role::Admin).count()
    }

    /// The live grants of one person, in grant id order.
    pub fn grants_of<'a>(
        &'a self,
        person: &'a PersonId,
    ) -> impl Iterator<Item = (&'a GrantId, &'a Grant)> + 'a {
        self.grants.iter().filter(move |(_, g)| &g.person == person)
    }
}
