//! Commands: what an actor asks of one organization. Imperative names; the events they lead to
//! are in `qm_proto::event`.

use qm_proto::*;

/// A command against one organization. Credentials arrive sealed: the handler seals plaintext
/// before anything reaches the aggregate, so decisions never see a secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Creates the organization with the actor as its first admin.
    CreateOrganization {
        name: String,
        admin_email: String,
        admin_display_name: String,
    },
    AddMember {
        person: PersonId,
        email: String,
        display_name: String,
        role: Role,
    },
    RemoveMember {
        person: PersonId,
    },
    SetMemberRole {
        person: PersonId,
        role: Role,
    },
    CreateTeam {
        team: TeamId,
        name: String,
    },
    DeleteTeam {
        team: TeamId,
    },
    AddTeamMember {
        team: TeamId,
        person: PersonId,
    },
    RemoveTeamMember {
        team: TeamId,
        person: PersonId,
    },
    AddIntegratedApp {
        app: AppId,
        catalog_app: String,
        display_name: String,
        base_url: String,
        credentials: SealedCredentials,
        seat_limit: Option<u32>,
    },
    UpdateAppCredentials {
        app: AppId,
        credentials: SealedCredentials,
    },
    SetSeatLimit {
        app: AppId,
        seat_limit: Option<u32>,
    },
    RemoveIntegratedApp {
        app: AppId,
    },
    /// `grant` is the id the new grant will have, chosen by the caller of `decide`.
    ProvisionUser {
        app: AppId,
        person: PersonId,
        grant: GrantId,
    },
    DeprovisionUser {
        app: AppId,
        person: PersonId,
    },
    SuspendGrant {
        grant: GrantId,
    },
    ResumeGrant {
        grant: GrantId,
    },
    RetryGrant {
        grant: GrantId,
    },
    /// Lets every deprovisioning of `app` that the circuit breaker holds go on.
    ConfirmDeprovisionings {
        app: AppId,
    },
    /// Outcomes the provisioner records; only a service actor may send them.
    RecordAppAuthorized {
        app: AppId,
    },
    RecordAuthorizationFailed {
        app: AppId,
        reason: String,
    },
    RecordAccountProvisioned {
        grant: GrantId,
        account: ExternalAccount,
    },
    /// `next_retry_at: None` means the provisioner gives up: the grant is quarantined.
    RecordProvisioningFailed {
        grant: GrantId,
        /// The attempt that failed: the grant's failures so far plus one. A failure of an
        /// attempt the grant has moved past is refused, so a late answer cannot count twice.
        attempt: u32,
        /// Whether the call was taking the account away (else creating it); a failure of the
        /// other phase is refused.
        deprovisioning: bool,
        reason: String,
        next_retry_at: Option<Timestamp>,
    },
    RecordAccountDeprovisioned {
        grant: GrantId,
    },
    /// The circuit breaker holds the grant's deprovisioning until an admin confirms.
    RecordDeprovisioningHeld {
        grant: GrantId,
        reason: String,
    },
}

impl Command {
    /// The command's name, as logs and metrics show it.
    pub fn name(&self) -> &'static str {
        match self {
            Command::CreateOrganization { .. } => "CreateOrganization",
            Command::AddMember { .. } => "AddMember",
            Command::RemoveMember { .. } => "RemoveMember",
            Command::SetMemberRole { .. } => "SetMemberRole",
            Command::CreateTeam { .. } => "CreateTeam",
            Command::DeleteTeam { .. } => "DeleteTeam",
            Command::AddTeamMember { .. } => "AddTeamMember",
            Command::RemoveTeamMember { .. } => "RemoveTeamMember",
            Command::AddIntegratedApp { .. } => "AddIntegratedApp",
            Command::UpdateAppCredentials { .. } => "UpdateAppCredentials",
            Command::SetSeatLimit { .. } => "SetSeatLimit",
            Command::RemoveIntegratedApp { .. } => "RemoveIntegratedApp",
            Command::ProvisionUser { .. } => "ProvisionUser",
            Command::DeprovisionUser { .. } => "DeprovisionUser",
            Command::SuspendGrant { .. } => "SuspendGrant",
            Command::ResumeGrant { .. } => "ResumeGrant",
            Command::RetryGrant { .. } => "RetryGrant",
            Command::ConfirmDeprovisionings { .. } => "ConfirmDeprovisionings",
            Command::RecordAppAuthorized { .. } => "RecordAppAuthorized",
            Command::RecordAuthorizationFailed { .. } => "RecordAuthorizationFailed",
            Command::RecordAccountProvisioned { .. } => "RecordAccountProvisioned",
            Command::RecordProvisioningFailed { .. } => "RecordProvisioningFailed",
            Command::RecordAccountDeprovisioned { .. } => "RecordAccountDeprovisioned",
            Command::RecordDeprovisioningHeld { .. } => "RecordDeprovisioningHeld",
        }
    }

    /// Whether the command records a provisioner outcome rather than a person's wish.
    pub fn is_outcome(&self) -> bool {
        matches!(
            self,
            Command::RecordAppAuthorized { .. }
                | Command::RecordAuthorizationFailed { .. }
                | Command::RecordAccountProvisioned { .. }
                | Command::RecordProvisioningFailed { .. }
                | Command::RecordAccountDeprovisioned { .. }
                | Command::RecordDeprovisioningHeld { .. }
        )
    }
}
