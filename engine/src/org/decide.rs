//! `decide`: the rules of DESIGN.md, checked against one organization's state.
//!
//! `decide` is pure: the same state, actor and command always give the same events or the same
//! error, so decisions replay deterministically and are tested without any I/O. Offboarding
//! cascades (rule 6) are decided here, in the same commit as their cause, so no state in the log
//! ever has a grant whose person or app is gone without its deprovisioning.

use qm_proto::*;

use super::command::Command;
use super::state::{AppStatus, GrantState, OrgState};

/// The longest name, email or reason accepted, in characters.
pub const MAX_TEXT: usize = 200;
pub const MAX_REASON: usize = 2000;
pub const MAX_SEATS: u32 = 1_000_000;

/// What kind of failure a decision is, for callers that map errors to protocol codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    InvalidArgument,
    PermissionDenied,
    NotFound,
    AlreadyExists,
    FailedPrecondition,
}

/// Why a command was refused. Messages name the rule and the subject.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecideError {
    #[error("invalid {field}: {reason}")]
    Invalid { field: &'static str, reason: String },
    #[error("organization {org} does not exist")]
    OrgNotFound { org: OrgId },
    #[error("organization {org} already exists")]
    OrgAlreadyExists { org: OrgId },
    #[error("{actor} is not an admin of {org}")]
    NotAdmin { actor: Actor, org: OrgId },
    #[error("{actor} may not record provisioning outcomes")]
    NotAService { actor: Actor },
    #[error("{person} is not a member of {org}")]
    MemberNotFound { person: PersonId, org: OrgId },
    #[error("{person} is already a member of {org}")]
    MemberAlreadyExists { person: PersonId, org: OrgId },
    #[error("{person} is the last admin of {org}")]
    LastAdmin { person: PersonId, org: OrgId },
    #[error("team {team} does not exist in {org}")]
    TeamNotFound { team: TeamId, org: OrgId },
    #[error("team {team} already exists in {org}")]
    TeamAlreadyExists { team: TeamId, org: OrgId },
    #[error("{person} is already in team {team}")]
    AlreadyInTeam { person: PersonId, team: TeamId },
    #[error("{person} is not in team {team}")]
    NotInTeam { person: PersonId, team: TeamId },
    #[error("{person} is in no team of {org}")]
    NoTeam { person: PersonId, org: OrgId },
    #[error("app {app} is not attached to {org}")]
    AppNotFound { app: AppId, org: OrgId },
    #[error("app {app} is already attached to {org}")]
    AppAlreadyExists { app: AppId, org: OrgId },
    #[error("app {app} of {org} is not authorized ({status})")]
    AppNotAuthorized { app: AppId, org: OrgId, status: String },
    #[error("{org} has no free seat for {app} (limit {limit})")]
    NoFreeSeat { org: OrgId, app: AppId, limit: u32 },
    #[error("{app} of {org} has {used} seats in use, more than the limit {limit}")]
    SeatLimitBelowUse { org: OrgId, app: AppId, limit: u32, used: u32 },
    #[error("{person} already has grant {grant} for {app}")]
    AlreadyHasGrant { person: PersonId, app: AppId, grant: GrantId },
    #[error("grant {grant} already exists in {org}")]
    GrantAlreadyExists { grant: GrantId, org: OrgId },
    #[error("grant {grant} is not live in {org}")]
    GrantNotFound { grant: GrantId, org: OrgId },
    #[error("{person} has no live grant for {app}")]
    NoLiveGrant { person: PersonId, app: AppId },
    #[error("grant {grant} is {state}, so it cannot be {wanted}")]
    GrantWrongState { grant: GrantId, state: &'static str, wanted: &'static str },
}

impl DecideError {
    pub fn kind(&self) -> ErrorKind {
        use DecideError::*;
        match self {
            Invalid { .. } => ErrorKind::InvalidArgument,
            NotAdmin { .. } | NotAService { .. } => ErrorKind::PermissionDenied,
            OrgNotFound { .. }
            | MemberNotFound { .. }
            | TeamNotFound { .. }
            | AppNotFound { .. }
            | GrantNotFound { .. }
            | NoLiveGrant { .. }
            | NotInTeam { .. } => ErrorKind::NotFound,
            OrgAlreadyExists { .. }
            | MemberAlreadyExists { .. }
            | TeamAlreadyExists { .. }
            | AlreadyInTeam { .. }
            | AppAlreadyExists { .. }
            | AlreadyHasGrant { .. }
            | GrantAlreadyExists { .. } => ErrorKind::AlreadyExists,
            LastAdmin { .. }
            | NoTeam { .. }
            | AppNotAuthorized { .. }
            | NoFreeSeat { .. }
            | SeatLimitBelowUse { .. }
            | GrantWrongState { .. } => ErrorKind::FailedPrecondition,
        }
    }
}

/// Decides what `command`, sent by `actor`, makes true of organization `org` in `state`.
///
/// An empty list means the command changes nothing (such as setting a role a member already
/// has); nothing is then written.
pub fn decide(
    org: &OrgId,
    state: &OrgState,
    actor: &Actor,
    command: &Command,
) -> Result<Vec<Event>, DecideError> {
    check_input(command)?;

    if let Command::CreateOrganization { name, admin_email, admin_display_name } = command {
        if state.exists() {
            return Err(DecideError::OrgAlreadyExists { org: org.clone() });
        }
        let Actor::Person(founder) = actor else {
            return Err(invalid("actor", "an organization is created by a person"));
        };
        return Ok(vec![
            Event::OrganizationCreated(OrganizationCreated {
                org: org.clone(),
                name: name.clone(),
            }),
            Event::MemberAdded(MemberAdded {
                person: founder.clone(),
                email: admin_email.clone(),
                display_name: admin_display_name.clone(),
                role: Role::Admin,
            }),
        ]);
    }

    if !state.exists() {
        return Err(DecideError::OrgNotFound { org: org.clone() });
    }
    authorize(org, state, actor, command)?;
    let d = Decision { org, state };

    match command {
        Command::CreateOrganization { .. } => unreachable!("handled before the organization check"),
        Command::AddMember { person, email, display_name, role } => {
            if state.members.contains_key(person) {
                return Err(DecideError::MemberAlreadyExists {
                    person: person.clone(),
                    org: org.clone(),
                });
            }
            Ok(vec![Event::MemberAdded(MemberAdded {
                person: person.clone(),
                email: email.clone(),
                display_name: display_name.clone(),
                role: *role,
            })])
        }
        Command::RemoveMember { person } => {
            let member = d.member(person)?;
            if member.role == Role::Admin && state.admin_count() == 1 {
                return Err(DecideError::LastAdmin { person: person.clone(), org: org.clone() });
            }
            let mut events: Vec<Event> = member
                .teams
                .iter()
                .map(|team| {
                    Event::TeamMemberRemoved(TeamMemberRemoved {
                        team: team.clone(),
                        person: person.clone(),
                    })
                })
                .collect();
            events.extend(d.deprovision_person(person, DeprovisionCause::MemberRemoved));
            events.push(Event::MemberRemoved(MemberRemoved { person: person.clone() }));
            Ok(events)
        }
        Command::SetMemberRole { person, role } => {
            let member = d.member(person)?;
            if member.role == *role {
                return Ok(vec![]);
            }
            if member.role == Role::Admin && state.admin_count() == 1 {
                return Err(DecideError::LastAdmin { person: person.clone(), org: org.clone() });
            }
            Ok(vec![Event::MemberRoleChanged(MemberRoleChanged {
                person: person.clone(),
                role: *role,
            })])
        }
        Command::CreateTeam { team, name } => {
            if state.teams.contains_key(team) {
                return Err(DecideError::TeamAlreadyExists {
                    team: team.clone(),
                    org: org.clone(),
                });
            }
            Ok(vec![Event::TeamCreated(TeamCreated { team: team.clone(), name: name.clone() })])
        }
        Command::DeleteTeam { team } => {
            let members = &d.team(team)?.members;
            let mut events = Vec::new();
            for person in members {
                events.push(Event::TeamMemberRemoved(TeamMemberRemoved {
                    team: team.clone(),
                    person: person.clone(),
                }));
            }
            for person in members {
                if d.only_team_is(person, team) {
                    events.extend(d.deprovision_person(person, DeprovisionCause::LeftLastTeam));
                }
            }
            events.push(Event::TeamDeleted(TeamDeleted { team: team.clone() }));
            Ok(events)
        }
        Command::AddTeamMember { team, person } => {
            d.team(team)?;
            let member = d.member(person)?;
            if member.teams.contains(team) {
                return Err(DecideError::AlreadyInTeam {
                    person: person.clone(),
                    team: team.clone(),
                });
            }
            Ok(vec![Event::TeamMemberAdded(TeamMemberAdded {
                team: team.clone(),
                person: person.clone(),
            })])
        }
        Command::RemoveTeamMember { team, person } => {
            d.team(team)?;
            let member = d.member(person)?;
            if !member.teams.contains(team) {
                return Err(DecideError::NotInTeam { person: person.clone(), team: team.clone() });
            }
            let mut events = vec![Event::TeamMemberRemoved(TeamMemberRemoved {
                team: team.clone(),
                person: person.clone(),
            })];
            if d.only_team_is(person, team) {
                events.extend(d.deprovision_person(person, DeprovisionCause::LeftLastTeam));
            }
            Ok(events)
        }
        Command::AddIntegratedApp {
            app,
            catalog_app,
            display_name,
            base_url,
            credentials,
            seat_limit,
        } => {
            if state.apps.contains_key(app) {
                return Err(DecideError::AppAlreadyExists { app: app.clone(), org: org.clone() });
            }
            let entry = qm_connectors::catalog::find(catalog_app).ok_or_else(|| {
                invalid("catalog_app", format!("{catalog_app:?} is not in the catalog"))
            })?;
            entry.check_base_url(base_url).map_err(|e| invalid("base_url", e.to_string()))?;
            Ok(vec![Event::IntegratedAppAdded(IntegratedAppAdded {
                app: app.clone(),
                catalog_app: catalog_app.clone(),
                display_name: display_name.clone(),
                base_url: base_url.clone(),
                credentials: credentials.clone(),
                seat_limit: *seat_limit,
            })])
        }
        Command::UpdateAppCredentials { app, credentials } => {
            d.app(app)?;
            Ok(vec![Event::AppCredentialsUpdated(AppCredentialsUpdated {
                app: app.clone(),
                credentials: credentials.clone(),
            })])
        }
        Command::SetSeatLimit { app, seat_limit } => {
            let current = d.app(app)?;
            if let Some(limit) = *seat_limit
                && current.seats_used > limit
            {
                return Err(DecideError::SeatLimitBelowUse {
                    org: org.clone(),
                    app: app.clone(),
                    limit,
                    used: current.seats_used,
                });
            }
            if current.seat_limit == *seat_limit {
                return Ok(vec![]);
            }
            Ok(vec![Event::SeatLimitChanged(SeatLimitChanged {
                app: app.clone(),
                seat_limit: *seat_limit,
            })])
        }
        Command::RemoveIntegratedApp { app } => {
            d.app(app)?;
            let grants = state.grants.iter().filter(|(_, g)| &g.app == app).map(|(id, _)| id);
            let mut events = d.deprovision(grants, DeprovisionCause::AppRemoved);
            events.push(Event::IntegratedAppRemoved(IntegratedAppRemoved { app: app.clone() }));
            Ok(events)
        }
        Command::ProvisionUser { app, person, grant } => {
            let member = d.member(person)?;
            if member.teams.is_empty() {
                return Err(DecideError::NoTeam { person: person.clone(), org: org.clone() });
            }
            let target = d.app(app)?;
            if target.status != AppStatus::Authorized {
                let status = match &target.status {
                    AppStatus::Authorizing => "credentials not verified yet".to_string(),
                    AppStatus::AuthorizationFailed { reason } => {
                        format!("authorization failed: {reason}")
                    }
                    AppStatus::Authorized => unreachable!("checked just above"),
                };
                return Err(DecideError::AppNotAuthorized {
                    app: app.clone(),
                    org: org.clone(),
                    status,
                });
            }
            if let Some(existing) = state.live.get(&(person.clone(), app.clone())) {
                return Err(DecideError::AlreadyHasGrant {
                    person: person.clone(),
                    app: app.clone(),
                    grant: existing.clone(),
                });
            }
            if let Some(limit) = target.seat_limit
                && target.seats_used >= limit
            {
                return Err(DecideError::NoFreeSeat { org: org.clone(), app: app.clone(), limit });
            }
            if state.grants.contains_key(grant) {
                return Err(DecideError::GrantAlreadyExists {
                    grant: grant.clone(),
                    org: org.clone(),
                });
            }
            Ok(vec![Event::GrantRequested(GrantRequested {
                grant: grant.clone(),
                app: app.clone(),
                person: person.clone(),
            })])
        }
        Command::DeprovisionUser { app, person } => {
            let Some(grant) = state.live.get(&(person.clone(), app.clone())) else {
                return Err(DecideError::NoLiveGrant { person: person.clone(), app: app.clone() });
            };
            d.grant_in(
                grant,
                &[
                    GrantState::Requested,
                    GrantState::Active,
                    GrantState::Suspended,
                    GrantState::Failed,
                    GrantState::Quarantined,
                ],
                "deprovisioned",
            )?;
            if state.grants[grant].deprovision_cause.is_some() {
                return Err(DecideError::GrantWrongState {
                    grant: grant.clone(),
                    state: "quarantined while deprovisioning",
                    wanted: "deprovisioned again (retry it instead)",
                });
            }
            Ok(d.deprovision([grant], DeprovisionCause::Requested))
        }
        Command::SuspendGrant { grant } => {
            d.grant_in(grant, &[GrantState::Active], "suspended")?;
            Ok(vec![Event::GrantSuspended(GrantSuspended { grant: grant.clone() })])
        }
        Command::ResumeGrant { grant } => {
            d.grant_in(grant, &[GrantState::Suspended], "resumed")?;
            Ok(vec![Event::GrantResumed(GrantResumed { grant: grant.clone() })])
        }
        Command::RetryGrant { grant } => {
            d.grant_in(grant, &[GrantState::Quarantined], "retried")?;
            Ok(vec![Event::GrantRetried(GrantRetried { grant: grant.clone() })])
        }
        Command::ConfirmDeprovisionings { app } => {
            // A detached app's grants are on their way out too: it need not be attached.
            if !state.apps.contains_key(app) {
                return Err(DecideError::AppNotFound { app: app.clone(), org: org.clone() });
            }
            Ok(state
                .grants
                .iter()
                .filter(|(_, g)| &g.app == app && g.state == GrantState::Held)
                .map(|(id, _)| {
                    Event::DeprovisioningConfirmed(DeprovisioningConfirmed { grant: id.clone() })
                })
                .collect())
        }
        Command::RecordAppAuthorized { app } => {
            d.app(app)?;
            Ok(vec![Event::AppAuthorized(AppAuthorized { app: app.clone() })])
        }
        Command::RecordAuthorizationFailed { app, reason } => {
            d.app(app)?;
            Ok(vec![Event::AppAuthorizationFailed(AppAuthorizationFailed {
                app: app.clone(),
                reason: reason.clone(),
            })])
        }
        Command::RecordAccountProvisioned { grant, account } => {
            let current = d.grant_in(
                grant,
                &[
                    GrantState::Requested,
                    GrantState::Failed,
                    GrantState::Quarantined,
                    GrantState::Deprovisioning,
                ],
                "marked provisioned",
            )?;
            if current.account.is_some() {
                return Err(DecideError::GrantWrongState {
                    grant: grant.clone(),
                    state: "already linked to an account",
                    wanted: "marked provisioned again",
                });
            }
            Ok(vec![Event::AccountProvisioned(AccountProvisioned {
                grant: grant.clone(),
                account: account.clone(),
            })])
        }
        Command::RecordProvisioningFailed {
            grant,
            attempt,
            deprovisioning,
            reason,
            next_retry_at,
        } => {
            let current = d.grant_in(
                grant,
                &[GrantState::Requested, GrantState::Failed, GrantState::Deprovisioning],
                "marked failed",
            )?;
            if current.attempts + 1 != *attempt
                || current.deprovision_cause.is_some() != *deprovisioning
            {
                return Err(DecideError::GrantWrongState {
                    grant: grant.clone(),
                    state: "past that attempt",
                    wanted: "marked failed for it",
                });
            }
            let mut events = vec![Event::ProvisioningFailed(ProvisioningFailed {
                grant: grant.clone(),
                attempt: current.attempts + 1,
                reason: reason.clone(),
                next_retry_at: *next_retry_at,
            })];
            if next_retry_at.is_none() {
                events.push(Event::GrantQuarantined(GrantQuarantined {
                    grant: grant.clone(),
                    reason: reason.clone(),
                }));
            }
            Ok(events)
        }
        Command::RecordAccountDeprovisioned { grant } => {
            let current =
                d.grant_in(grant, &[GrantState::Deprovisioning], "marked deprovisioned")?;
            let cause = current.deprovision_cause.expect("a deprovisioning grant has a cause");
            Ok(vec![
                Event::AccountDeprovisioned(AccountDeprovisioned { grant: grant.clone() }),
                Event::GrantRevoked(GrantRevoked { grant: grant.clone(), cause }),
            ])
        }
        Command::RecordDeprovisioningHeld { grant, reason } => {
            let current = d.grant_in(grant, &[GrantState::Deprovisioning], "held")?;
            if current.deprovision_confirmed {
                return Err(DecideError::GrantWrongState {
                    grant: grant.clone(),
                    state: "confirmed for deprovisioning",
                    wanted: "held",
                });
            }
            Ok(vec![Event::DeprovisioningHeld(DeprovisioningHeld {
                grant: grant.clone(),
                reason: reason.clone(),
            })])
        }
    }
}

/// Rule 1 (admins only) and its counterpart: only services record outcomes.
fn authorize(
    org: &OrgId,
    state: &OrgState,
    actor: &Actor,
    command: &Command,
) -> Result<(), DecideError> {
    match (command.is_outcome(), actor) {
        (true, Actor::Service(_)) => Ok(()),
        (true, Actor::Person(_)) => Err(DecideError::NotAService { actor: actor.clone() }),
        (false, Actor::Person(person)) if state.is_admin(person) => Ok(()),
        (false, _) => Err(DecideError::NotAdmin { actor: actor.clone(), org: org.clone() }),
    }
}

/// Lookups that fail with the error naming what is missing.
struct Decision<'a> {
    org: &'a OrgId,
    state: &'a OrgState,
}

impl<'a> Decision<'a> {
    fn member(&self, person: &PersonId) -> Result<&'a super::state::Member, DecideError> {
        self.state.members.get(person).ok_or_else(|| DecideError::MemberNotFound {
            person: person.clone(),
            org: self.org.clone(),
        })
    }

    fn team(&self, team: &TeamId) -> Result<&'a super::state::Team, DecideError> {
        self.state
            .teams
            .get(team)
            .ok_or_else(|| DecideError::TeamNotFound { team: team.clone(), org: self.org.clone() })
    }

    /// An attached app; one being removed no longer counts as attached (rule 3).
    fn app(&self, app: &AppId) -> Result<&'a super::state::IntegratedApp, DecideError> {
        match self.state.apps.get(app) {
            Some(found) if !found.removed => Ok(found),
            _ => Err(DecideError::AppNotFound { app: app.clone(), org: self.org.clone() }),
        }
    }

    fn grant_in(
        &self,
        grant: &GrantId,
        allowed: &[GrantState],
        wanted: &'static str,
    ) -> Result<&'a super::state::Grant, DecideError> {
        let found = self.state.grants.get(grant).ok_or_else(|| DecideError::GrantNotFound {
            grant: grant.clone(),
            org: self.org.clone(),
        })?;
        if allowed.contains(&found.state) {
            Ok(found)
        } else {
            Err(DecideError::GrantWrongState {
                grant: grant.clone(),
                state: found.state.as_str(),
                wanted,
            })
        }
    }

    fn only_team_is(&self, person: &PersonId, team: &TeamId) -> bool {
        self.state.members.get(person).is_some_and(|m| m.teams.len() == 1 && m.teams.contains(team))
    }

    fn deprovision_person(&self, person: &PersonId, cause: DeprovisionCause) -> Vec<Event> {
        self.deprovision(self.state.grants_of(person).map(|(id, _)| id), cause)
    }

    /// Rule 6: requests the deprovisioning of each grant not already on its way out.
    fn deprovision<'g>(
        &self,
        grants: impl IntoIterator<Item = &'g GrantId>,
        cause: DeprovisionCause,
    ) -> Vec<Event> {
        grants
            .into_iter()
            .filter(|id| self.state.grants.get(*id).is_some_and(|g| g.deprovision_cause.is_none()))
            .map(|id| {
                Event::DeprovisioningRequested(DeprovisioningRequested { grant: id.clone(), cause })
            })
            .collect()
    }
}

fn invalid(field: &'static str, reason: impl Into<String>) -> DecideError {
    DecideError::Invalid { field, reason: reason.into() }
}

/// Text fields: present, bounded, printable.
fn check_text(field: &'static str, value: &str, max: usize) -> Result<(), DecideError> {
    if value.trim().is_empty() {
        return Err(invalid(field, "must not be empty"));
    }
    let chars = value.chars().count();
    if chars > max {
        return Err(invalid(field, format!("must be at most {max} characters, got {chars}")));
    }
    if value.chars().any(char::is_control) {
        return Err(invalid(field, "must not contain control characters"));
    }
    Ok(())
}

fn check_email(field: &'static str, value: &str) -> Result<(), DecideError> {
    check_text(field, value, MAX_TEXT)?;
    let well_formed = value.split_once('@').is_some_and(|(local, domain)| {
        !local.is_empty()
            && domain.contains('.')
            && !domain.contains('@')
            && !domain.starts_with('.')
    });
    if !well_formed || value.contains(char::is_whitespace) {
        return Err(invalid(field, format!("{value:?} is not an email address")));
    }
    Ok(())
}

fn check_input(command: &Command) -> Result<(), DecideError> {
    match command {
        Command::CreateOrganization { name, admin_email, admin_display_name } => {
            check_text("name", name, MAX_TEXT)?;
            check_email("admin_email", admin_email)?;
            check_text("admin_display_name", admin_display_name, MAX_TEXT)
        }
        Command::AddMember { email, display_name, .. } => {
            check_email("email", email)?;
            check_text("display_name", display_name, MAX_TEXT)
        }
        Command::CreateTeam { name, .. } => check_text("name", name, MAX_TEXT),
        Command::AddIntegratedApp { display_name, seat_limit, credentials, .. } => {
            check_text("display_name", display_name, MAX_TEXT)?;
            check_seats(*seat_limit)?;
            check_sealed(credentials)
        }
        Command::UpdateAppCredentials { credentials, .. } => check_sealed(credentials),
        Command::SetSeatLimit { seat_limit, .. } => check_seats(*seat_limit),
        Command::RecordAuthorizationFailed { reason, .. }
        | Command::RecordProvisioningFailed { reason, .. }
        | Command::RecordDeprovisioningHeld { reason, .. } => {
            check_text("reason", reason, MAX_REASON)
        }
        Command::RecordAccountProvisioned { account, .. } => {
            check_text("account.id", &account.id, MAX_REASON)?;
            check_text("account.user_name", &account.user_name, MAX_REASON)
        }
        _ => Ok(()),
    }
}

fn check_seats(seat_limit: Option<u32>) -> Result<(), DecideError> {
    match seat_limit {
        Some(0) => Err(invalid("seat_limit", "must be at least 1 (leave it unset for no limit)")),
        Some(n) if n > MAX_SEATS => {
            Err(invalid("seat_limit", format!("must be at most {MAX_SEATS}")))
        }
        _ => Ok(()),
    }
}

fn check_sealed(credentials: &SealedCredentials) -> Result<(), DecideError> {
    if credentials.ciphertext.is_empty() || credentials.nonce.is_empty() {
        return Err(invalid("credentials", "must be sealed before they reach the aggregate"));
    }
    Ok(())
}
