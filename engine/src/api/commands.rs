//! `CommandService`: each handler converts the request, calls the engine, converts back.

use std::sync::Arc;

use qm_proto::api::v1::command_service_server::CommandService;
use qm_proto::api::v1::*;
use qm_proto::{Event, GrantId};
use tonic::{Request, Response, Status};

use super::validate::{self, id};
use crate::handler::{Engine, Executed};
use crate::org::Command;

#[derive(Debug, Clone)]
pub struct Commands {
    engine: Arc<Engine>,
}

impl Commands {
    pub fn new(engine: Arc<Engine>) -> Commands {
        Commands { engine }
    }

    async fn run(
        &self,
        actor: &str,
        command_id: &str,
        org: &str,
        command: Command,
    ) -> Result<Executed, Status> {
        let request = validate::envelope(actor, command_id, org, command)?;
        Ok(self.engine.execute(request).await?)
    }

    /// Seals credentials for `app` of `org` after checking them against the catalog app.
    async fn seal(
        &self,
        org: &str,
        app: &str,
        catalog: &qm_connectors::catalog::CatalogApp,
        given: Option<&Credentials>,
    ) -> Result<qm_proto::SealedCredentials, Status> {
        let secret = validate::credentials(catalog, given)?;
        let (org, app) = (id("org_id", org)?, id("app_id", app)?);
        Ok(self.engine.seal_credentials(&org, &app, &secret).await?)
    }
}

fn deprovisioned(done: &Executed) -> Vec<String> {
    done.events
        .iter()
        .filter_map(|e| match e {
            Event::DeprovisioningRequested(d) => Some(d.grant.to_string()),
            _ => None,
        })
        .collect()
}

fn grant_of(done: &Executed) -> String {
    done.events
        .iter()
        .find_map(|e| match e {
            Event::GrantRequested(g) => Some(g.grant.to_string()),
            Event::DeprovisioningRequested(d) => Some(d.grant.to_string()),
            _ => None,
        })
        .unwrap_or_default()
}

/// The `position` and `command_id` every response carries, plus its own fields.
macro_rules! answer {
    ($response:ident, $done:expr $(, $field:ident: $value:expr)*) => {{
        let done = $done;
        Ok(Response::new($response {
            position: done.position,
            command_id: done.command_id.to_string(),
            $($field: $value,)*
        }))
    }};
}

#[tonic::async_trait]
impl CommandService for Commands {
    async fn create_organization(
        &self,
        r: Request<CreateOrganizationRequest>,
    ) -> Result<Response<CreateOrganizationResponse>, Status> {
        let r = r.into_inner();
        let command = Command::CreateOrganization {
            name: r.name,
            admin_email: r.admin_email,
            admin_display_name: r.admin_display_name,
        };
        answer!(
            CreateOrganizationResponse,
            self.run(&r.actor_id, &r.command_id, &r.org_id, command).await?
        )
    }

    async fn add_member(
        &self,
        r: Request<AddMemberRequest>,
    ) -> Result<Response<AddMemberResponse>, Status> {
        let r = r.into_inner();
        let command = Command::AddMember {
            person: id("person_id", &r.person_id)?,
            email: r.email,
            display_name: r.display_name,
            role: validate::role("role", r.role)?,
        };
        answer!(AddMemberResponse, self.run(&r.actor_id, &r.command_id, &r.org_id, command).await?)
    }

    async fn remove_member(
        &self,
        r: Request<RemoveMemberRequest>,
    ) -> Result<Response<RemoveMemberResponse>, Status> {
        let r = r.into_inner();
        let command = Command::RemoveMember { person: id("person_id", &r.person_id)? };
        let done = self.run(&r.actor_id, &r.command_id, &r.org_id, command).await?;
        answer!(RemoveMemberResponse, &done, deprovisioned_grant_ids: deprovisioned(&done))
    }

    async fn set_member_role(
        &self,
        r: Request<SetMemberRoleRequest>,
    ) -> Result<Response<SetMemberRoleResponse>, Status> {
        let r = r.into_inner();
        let command = Command::SetMemberRole {
            person: id("person_id", &r.person_id)?,
            role: validate::role("role", r.role)?,
        };
        answer!(
            SetMemberRoleResponse,
            self.run(&r.actor_id, &r.command_id, &r.org_id, command).await?
        )
    }

    async fn create_team(
        &self,
        r: Request<CreateTeamRequest>,
    ) -> Result<Response<CreateTeamResponse>, Status> {
        let r = r.into_inner();
        let command = Command::CreateTeam { team: id("team_id", &r.team_id)?, name: r.name };
        answer!(CreateTeamResponse, self.run(&r.actor_id, &r.command_id, &r.org_id, command).await?)
    }

    async fn delete_team(
        &self,
        r: Request<DeleteTeamRequest>,
    ) -> Result<Response<DeleteTeamResponse>, Status> {
        let r = r.into_inner();
        let command = Command::DeleteTeam { team: id("team_id", &r.team_id)? };
        let done = self.run(&r.actor_id, &r.command_id, &r.org_id, command).await?;
        answer!(DeleteTeamResponse, &done, deprovisioned_grant_ids: deprovisioned(&done))
    }

    async fn add_team_member(
        &self,
        r: Request<AddTeamMemberRequest>,
    ) -> Result<Response<AddTeamMemberResponse>, Status> {
        let r = r.into_inner();
        let command = Command::AddTeamMember {
            team: id("team_id", &r.team_id)?,
            person: id("person_id", &r.person_id)?,
        };
        answer!(
            AddTeamMemberResponse,
            self.run(&r.actor_id, &r.command_id, &r.org_id, command).await?
        )
    }

    async fn remove_team_member(
        &self,
        r: Request<RemoveTeamMemberRequest>,
    ) -> Result<Response<RemoveTeamMemberResponse>, Status> {
        let r = r.into_inner();
        let command = Command::RemoveTeamMember {
            team: id("team_id", &r.team_id)?,
            person: id("person_id", &r.person_id)?,
        };
        let done = self.run(&r.actor_id, &r.command_id, &r.org_id, command).await?;
        answer!(RemoveTeamMemberResponse, &done, deprovisioned_grant_ids: deprovisioned(&done))
    }

    async fn add_integrated_app(
        &self,
        r: Request<AddIntegratedAppRequest>,
    ) -> Result<Response<AddIntegratedAppResponse>, Status> {
        let r = r.into_inner();
        // Everything but the credentials is checked before they are sealed, so a bad request
        // never creates a data key.
        validate::envelope_ids(&r.actor_id, &r.command_id, &r.org_id)?;
        id::<qm_proto::AppId>("app_id", &r.app_id)?;
        let catalog = validate::catalog_app(&r.catalog_app)?;
        catalog
            .check_base_url(&r.base_url)
            .map_err(|e| super::errors::InvalidField::new("base_url", e))?;
        let seat_limit = validate::seat_limit(r.seat_limit)?;
        let credentials = self.seal(&r.org_id, &r.app_id, catalog, r.credentials.as_ref()).await?;
        let command = Command::AddIntegratedApp {
            app: id("app_id", &r.app_id)?,
            catalog_app: r.catalog_app,
            display_name: r.display_name,
            base_url: r.base_url,
            credentials,
            seat_limit,
        };
        answer!(
            AddIntegratedAppResponse,
            self.run(&r.actor_id, &r.command_id, &r.org_id, command).await?
        )
    }

    async fn update_app_credentials(
        &self,
        r: Request<UpdateAppCredentialsRequest>,
    ) -> Result<Response<UpdateAppCredentialsResponse>, Status> {
        let r = r.into_inner();
        let (_, _, org) = validate::envelope_ids(&r.actor_id, &r.command_id, &r.org_id)?;
        let app: qm_proto::AppId = id("app_id", &r.app_id)?;
        // The catalog app decides which credentials are needed; the aggregate knows which it is.
        let state = self.engine.org_state(&org).await?;
        let attached = state.apps.get(&app).filter(|a| !a.removed);
        let catalog =
            attached.and_then(|a| qm_connectors::catalog::find(&a.catalog_app)).ok_or_else(
                || Status::not_found(format!("app {} is not attached to {}", r.app_id, r.org_id)),
            )?;
        let credentials = self.seal(&r.org_id, &r.app_id, catalog, r.credentials.as_ref()).await?;
        let command = Command::UpdateAppCredentials { app, credentials };
        answer!(
            UpdateAppCredentialsResponse,
            self.run(&r.actor_id, &r.command_id, &r.org_id, command).await?
        )
    }

    async fn set_seat_limit(
        &self,
        r: Request<SetSeatLimitRequest>,
    ) -> Result<Response<SetSeatLimitResponse>, Status> {
        let r = r.into_inner();
        let command = Command::SetSeatLimit {
            app: id("app_id", &r.app_id)?,
            seat_limit: validate::seat_limit(r.seat_limit)?,
        };
        answer!(
            SetSeatLimitResponse,
            self.run(&r.actor_id, &r.command_id, &r.org_id, command).await?
        )
    }

    async fn remove_integrated_app(
        &self,
        r: Request<RemoveIntegratedAppRequest>,
    ) -> Result<Response<RemoveIntegratedAppResponse>, Status> {
        let r = r.into_inner();
        let command = Command::RemoveIntegratedApp { app: id("app_id", &r.app_id)? };
        let done = self.run(&r.actor_id, &r.command_id, &r.org_id, command).await?;
        answer!(RemoveIntegratedAppResponse, &done, deprovisioned_grant_ids: deprovisioned(&done))
    }

    async fn provision_user(
        &self,
        r: Request<ProvisionUserRequest>,
    ) -> Result<Response<ProvisionUserResponse>, Status> {
        let r = r.into_inner();
        let grant = GrantId::parse(uuid::Uuid::now_v7().to_string()).expect("a UUID is a valid id");
        let command = Command::ProvisionUser {
            app: id("app_id", &r.app_id)?,
            person: id("person_id", &r.person_id)?,
            grant,
        };
        let done = self.run(&r.actor_id, &r.command_id, &r.org_id, command).await?;
        answer!(ProvisionUserResponse, &done, grant_id: grant_of(&done))
    }

    async fn deprovision_user(
        &self,
        r: Request<DeprovisionUserRequest>,
    ) -> Result<Response<DeprovisionUserResponse>, Status> {
        let r = r.into_inner();
        let command = Command::DeprovisionUser {
            app: id("app_id", &r.app_id)?,
            person: id("person_id", &r.person_id)?,
        };
        let done = self.run(&r.actor_id, &r.command_id, &r.org_id, command).await?;
        answer!(DeprovisionUserResponse, &done, grant_id: grant_of(&done))
    }

    async fn suspend_grant(
        &self,
        r: Request<SuspendGrantRequest>,
    ) -> Result<Response<SuspendGrantResponse>, Status> {
        let r = r.into_inner();
        let command = Command::SuspendGrant { grant: id("grant_id", &r.grant_id)? };
        answer!(
            SuspendGrantResponse,
            self.run(&r.actor_id, &r.command_id, &r.org_id, command).await?
        )
    }

    async fn resume_grant(
        &self,
        r: Request<ResumeGrantRequest>,
    ) -> Result<Response<ResumeGrantResponse>, Status> {
        let r = r.into_inner();
        let command = Command::ResumeGrant { grant: id("grant_id", &r.grant_id)? };
        answer!(
            ResumeGrantResponse,
            self.run(&r.actor_id, &r.command_id, &r.org_id, command).await?
        )
    }

    async fn retry_grant(
        &self,
        r: Request<RetryGrantRequest>,
    ) -> Result<Response<RetryGrantResponse>, Status> {
        let r = r.into_inner();
        let command = Command::RetryGrant { grant: id("grant_id", &r.grant_id)? };
        answer!(RetryGrantResponse, self.run(&r.actor_id, &r.command_id, &r.org_id, command).await?)
    }

    async fn confirm_deprovisionings(
        &self,
        r: Request<ConfirmDeprovisioningsRequest>,
    ) -> Result<Response<ConfirmDeprovisioningsResponse>, Status> {
        let r = r.into_inner();
        let command = Command::ConfirmDeprovisionings { app: id("app_id", &r.app_id)? };
        let done = self.run(&r.actor_id, &r.command_id, &r.org_id, command).await?;
        let grant_ids = done
            .events
            .iter()
            .filter_map(|e| match e {
                Event::DeprovisioningConfirmed(c) => Some(c.grant.to_string()),
                _ => None,
            })
            .collect();
        answer!(ConfirmDeprovisioningsResponse, done, grant_ids: grant_ids)
    }
}
