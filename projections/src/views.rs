//! The rows of the views, and the redb tables that hold them.
//!
//! Rows are postcard-encoded view types; keys are ids joined by NUL (see [`key`]) so that each
//! query is one range scan. Credentials never enter a view: an integrated app's row has no field for them.

use qm_proto::*;
use redb::TableDefinition;
use serde::{Deserialize, Serialize};

/// `"position"` → the position of the last commit applied.
pub(crate) const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// org → [`OrganizationView`].
pub(crate) const ORGS: TableDefinition<&str, &[u8]> = TableDefinition::new("orgs");
/// org·person → [`MemberView`].
pub(crate) const MEMBERS: TableDefinition<&str, &[u8]> = TableDefinition::new("members");
/// org·team → [`TeamView`].
pub(crate) const TEAMS: TableDefinition<&str, &[u8]> = TableDefinition::new("teams");
/// org·app → [`AppView`].
pub(crate) const APPS: TableDefinition<&str, &[u8]> = TableDefinition::new("apps");
/// org·grant → [`GrantView`], revoked grants included.
pub(crate) const GRANTS: TableDefinition<&str, &[u8]> = TableDefinition::new("grants");
/// org·app·person → grant: who has access, live grants only.
pub(crate) const BY_APP: TableDefinition<&str, &str> = TableDefinition::new("grants_by_app");
/// person·org·app → grant: a person's live grants, across organizations.
pub(crate) const BY_PERSON: TableDefinition<&str, &str> = TableDefinition::new("grants_by_person");
/// org·app·person·opened-at-position → [`AccessInterval`].
pub(crate) const INTERVALS: TableDefinition<&str, &[u8]> = TableDefinition::new("access_intervals");

/// Joins key parts. Ids never contain NUL and it sorts below every id character, so keys sort
/// as the tuples of their parts would, and every prefix of parts is one contiguous range.
pub(crate) fn key(parts: &[&str]) -> String {
    parts.join("\0")
}

/// The range of keys that start with `parts`: `start..end`.
pub(crate) fn prefix_range(parts: &[&str]) -> (String, String) {
    let mut start = key(parts);
    start.push('\0');
    let mut end = start.clone();
    // Above every id character: ids are printable ASCII below 0x7f.
    end.push('\u{7f}');
    (start, end)
}

/// The parts of a key.
pub(crate) fn parts(key: &str) -> Vec<&str> {
    key.split('\0').collect()
}

/// An interval key's position part, fixed-width so positions sort numerically.
pub(crate) fn position_part(position: Position) -> String {
    format!("{position:020}")
}

pub(crate) const POSITION_KEY: &str = "position";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrganizationView {
    pub org: OrgId,
    pub name: String,
    pub created_at: Timestamp,
    pub members: u32,
    pub teams: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberView {
    pub person: PersonId,
    pub email: String,
    pub display_name: String,
    pub role: Role,
    pub teams: Vec<TeamId>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TeamView {
    pub team: TeamId,
    pub name: String,
    pub members: Vec<PersonId>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AppStatusView {
    Authorizing,
    Authorized,
    AuthorizationFailed {
        reason: String,
    },
    /// Detached; its grants are being (or have been) deprovisioned.
    Removed,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppView {
    pub app: AppId,
    pub catalog_app: String,
    pub display_name: String,
    pub base_url: String,
    pub status: AppStatusView,
    pub seat_limit: Option<u32>,
    pub seats_used: u32,
}

/// Where a grant is, as the views show it; `Revoked` grants stay in the history.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum GrantStatus {
    Requested,
    Active,
    Suspended,
    Failed,
    Quarantined,
    Deprovisioning,
    Revoked,
    /// Deprovisioning held by the circuit breaker until an admin confirms. (Appended: the
    /// views store statuses by index.)
    Held,
}

impl GrantStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            GrantStatus::Requested => "requested",
            GrantStatus::Active => "active",
            GrantStatus::Suspended => "suspended",
            GrantStatus::Failed => "failed",
            GrantStatus::Quarantined => "quarantined",
            GrantStatus::Deprovisioning => "deprovisioning",
            GrantStatus::Revoked => "revoked",
            GrantStatus::Held => "held",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GrantView {
    pub grant: GrantId,
    pub org: OrgId,
    pub app: AppId,
    pub person: PersonId,
    pub status: GrantStatus,
    pub account: Option<ExternalAccount>,
    pub attempts: u32,
    pub last_error: Option<String>,
    pub next_retry_at: Option<Timestamp>,
    pub deprovision_cause: Option<DeprovisionCause>,
    pub requested_at: Timestamp,
    pub updated_at: Timestamp,
    /// The position of the last commit that changed the grant.
    pub position: Position,
    /// The position that opened the grant's current access interval, while one is open.
    pub access_since: Option<Position>,
}

/// One app account on a person's launchpad.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LaunchpadEntry {
    pub org: OrgId,
    pub org_name: String,
    pub app: AppId,
    pub app_name: String,
    pub catalog_app: String,
    pub grant: GrantId,
    pub status: GrantStatus,
    pub user_name: Option<String>,
    /// Where the app said the account opens; when `None`, the catalog's sign-in page.
    pub open_url: Option<String>,
}

/// Why an access interval ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum IntervalEnd {
    Suspended,
    Deprovisioned(DeprovisionCause),
}

/// A span of time during which a person had a working account in an app: from the app
/// confirming the account (or a resume) to a suspension or the app confirming its removal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessInterval {
    pub org: OrgId,
    pub app: AppId,
    pub person: PersonId,
    pub grant: GrantId,
    pub from: Timestamp,
    pub from_position: Position,
    pub to: Option<Timestamp>,
    pub to_position: Option<Position>,
    pub ended_by: Option<IntervalEnd>,
}

pub(crate) fn encode<T: Serialize>(row: &T) -> Vec<u8> {
    postcard::to_stdvec(row).expect("postcard encodes every view row")
}
