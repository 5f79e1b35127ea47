//! The events of an organization's history, in their current shape.
//!
//! Events are past-tense facts. This module holds the shapes the engine and the projections
//! work with; how each shape is written to the log, and how older shapes are read back, is
//! `wire`'s business. Changing a struct here that `wire` also uses is a schema change: add a
//! new version there instead (see the module docs of `wire`).

use serde::{Deserialize, Serialize};

use crate::ids::{AppId, GrantId, OrgId, PersonId, TeamId};

/// Microseconds since the Unix epoch, UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Timestamp(pub i64);

impl Timestamp {
    pub fn now() -> Self {
        let since = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("the system clock is after 1970");
        Timestamp(since.as_micros() as i64)
    }

    pub fn plus_micros(self, micros: i64) -> Self {
        Timestamp(self.0.saturating_add(micros))
    }
}

/// What a member may do in an organization.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Role {
    Admin,
    Member,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Member => "member",
        }
    }
}

/// Credentials of an integrated app, sealed with the organization's data key.
///
/// Only these bytes ever enter the log. `key_id` names the data key generation, so a rotated
/// key can still open older credentials.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SealedCredentials {
    pub key_id: u32,
    pub nonce: Vec<u8>,
    pub ciphertext: Vec<u8>,
}

impl std::fmt::Debug for SealedCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SealedCredentials(key {}, {} bytes)", self.key_id, self.ciphertext.len())
    }
}

/// The account an app created for a grant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExternalAccount {
    /// The app's own id of the account (the SCIM `id`).
    pub id: String,
    pub user_name: String,
    /// Where the person opens the account, when the app tells.
    pub open_url: Option<String>,
}

/// Why a grant is being taken away.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum DeprovisionCause {
    /// An admin deprovisioned the person from the app.
    Requested,
    /// The person stopped being a member of the organization.
    MemberRemoved,
    /// The person left, or was removed with, the last team they belonged to.
    LeftLastTeam,
    /// The integrated app was detached from the organization.
    AppRemoved,
}

impl DeprovisionCause {
    pub fn as_str(self) -> &'static str {
        match self {
            DeprovisionCause::Requested => "requested",
            DeprovisionCause::MemberRemoved => "member_removed",
            DeprovisionCause::LeftLastTeam => "left_last_team",
            DeprovisionCause::AppRemoved => "app_removed",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrganizationCreated {
    pub org: OrgId,
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberAdded {
    pub person: PersonId,
    pub email: String,
    pub display_name: String,
    pub role: Role,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberRemoved {
    pub person: PersonId,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberRoleChanged {
    pub person: PersonId,
    pub role: Role,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TeamCreated {
    pub team: TeamId,
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TeamDeleted {
    pub team: TeamId,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TeamMemberAdded {
    pub team: TeamId,
    pub person: PersonId,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TeamMemberRemoved {
    pub team: TeamId,
    pub person: PersonId,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IntegratedAppAdded {
    pub app: AppId,
    /// The catalog entry the app was attached from.
    pub catalog_app: String,
    pub display_name: String,
    /// The app's API base URL for this organization (for SCIM, the service provider base).
    pub base_url: String,
    pub credentials: SealedCredentials,
    /// How many accounts the organization pays for; `None` is unlimited.
    pub seat_limit: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppCredentialsUpdated {
    pub app: AppId,
    pub credentials: SealedCredentials,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeatLimitChanged {
    pub app: AppId,
    pub seat_limit: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppAuthorized {
    pub app: AppId,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppAuthorizationFailed {
    pub app: AppId,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IntegratedAppRemoved {
    pub app: AppId,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GrantRequested {
    pub grant: GrantId,
    pub app: AppId,
    pub person: PersonId,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountProvisioned {
    pub grant: GrantId,
    pub account: ExternalAccount,
}

/// A connector call for the grant failed; the provisioner will try again at `next_retry_at`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProvisioningFailed {
    pub grant: GrantId,
    /// 1 for the first failure of the current operation.
    pub attempt: u32,
    pub reason: String,
    /// `None` when the provisioner gave up (a `GrantQuarantined` follows in the same commit).
    pub next_retry_at: Option<Timestamp>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GrantQuarantined {
    pub grant: GrantId,
    pub reason: String,
}

/// An admin asked for a quarantined grant to be tried again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GrantRetried {
    pub grant: GrantId,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GrantSuspended {
    pub grant: GrantId,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GrantResumed {
    pub grant: GrantId,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeprovisioningRequested {
    pub grant: GrantId,
    pub cause: DeprovisionCause,
}

/// The circuit breaker held the grant's deprovisioning: an unusual share of the app's accounts
/// was on its way out at once. An admin's confirmation lets it go on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeprovisioningHeld {
    pub grant: GrantId,
    pub reason: String,
}

/// An admin confirmed a held deprovisioning.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeprovisioningConfirmed {
    pub grant: GrantId,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountDeprovisioned {
    pub grant: GrantId,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GrantRevoked {
    pub grant: GrantId,
    pub cause: DeprovisionCause,
}

/// One fact of an organization's history, in its current shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    OrganizationCreated(OrganizationCreated),
    MemberAdded(MemberAdded),
    MemberRemoved(MemberRemoved),
    MemberRoleChanged(MemberRoleChanged),
    TeamCreated(TeamCreated),
    TeamDeleted(TeamDeleted),
    TeamMemberAdded(TeamMemberAdded),
    TeamMemberRemoved(TeamMemberRemoved),
    IntegratedAppAdded(IntegratedAppAdded),
    AppCredentialsUpdated(AppCredentialsUpdated),
    SeatLimitChanged(SeatLimitChanged),
    AppAuthorized(AppAuthorized),
    AppAuthorizationFailed(AppAuthorizationFailed),
    IntegratedAppRemoved(IntegratedAppRemoved),
    GrantRequested(GrantRequested),
    AccountProvisioned(AccountProvisioned),
    ProvisioningFailed(ProvisioningFailed),
    GrantQuarantined(GrantQuarantined),
    GrantRetried(GrantRetried),
    GrantSuspended(GrantSuspended),
    GrantResumed(GrantResumed),
    DeprovisioningRequested(DeprovisioningRequested),
    AccountDeprovisioned(AccountDeprovisioned),
    GrantRevoked(GrantRevoked),
    DeprovisioningHeld(DeprovisioningHeld),
    DeprovisioningConfirmed(DeprovisioningConfirmed),
}

impl Event {
    /// The event's type name, as logs and audit views show it.
    pub fn name(&self) -> &'static str {
        match self {
            Event::OrganizationCreated(_) => "OrganizationCreated",
            Event::MemberAdded(_) => "MemberAdded",
            Event::MemberRemoved(_) => "MemberRemoved",
            Event::MemberRoleChanged(_) => "MemberRoleChanged",
            Event::TeamCreated(_) => "TeamCreated",
            Event::TeamDeleted(_) => "TeamDeleted",
            Event::TeamMemberAdded(_) => "TeamMemberAdded",
            Event::TeamMemberRemoved(_) => "TeamMemberRemoved",
            Event::IntegratedAppAdded(_) => "IntegratedAppAdded",
            Event::AppCredentialsUpdated(_) => "AppCredentialsUpdated",
            Event::SeatLimitChanged(_) => "SeatLimitChanged",
            Event::AppAuthorized(_) => "AppAuthorized",
            Event::AppAuthorizationFailed(_) => "AppAuthorizationFailed",
            Event::IntegratedAppRemoved(_) => "IntegratedAppRemoved",
            Event::GrantRequested(_) => "GrantRequested",
            Event::AccountProvisioned(_) => "AccountProvisioned",
            Event::ProvisioningFailed(_) => "ProvisioningFailed",
            Event::GrantQuarantined(_) => "GrantQuarantined",
            Event::GrantRetried(_) => "GrantRetried",
            Event::GrantSuspended(_) => "GrantSuspended",
            Event::GrantResumed(_) => "GrantResumed",
            Event::DeprovisioningRequested(_) => "DeprovisioningRequested",
            Event::AccountDeprovisioned(_) => "AccountDeprovisioned",
            Event::GrantRevoked(_) => "GrantRevoked",
            Event::DeprovisioningHeld(_) => "DeprovisioningHeld",
            Event::DeprovisioningConfirmed(_) => "DeprovisioningConfirmed",
        }
    }
}
