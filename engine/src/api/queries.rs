//! `QueryService`: reads of the views, each after waiting for `min_position`.

use std::sync::Arc;
use std::time::Duration;

use qm_projections as views;
use qm_proto::api::v1;
use qm_proto::api::v1::query_service_server::QueryService;
use qm_proto::api::v1::*;
use tonic::{Request, Response, Status};

use super::errors::query;
use super::validate::{self, id};
use crate::read_side::ReadSide;

#[derive(Debug, Clone)]
pub struct Queries {
    read_side: Arc<ReadSide>,
    /// How long a query waits for `min_position`.
    wait: Duration,
}

impl Queries {
    pub fn new(read_side: Arc<ReadSide>, wait: Duration) -> Queries {
        Queries { read_side, wait }
    }

    async fn views(&self, min_position: u64) -> Result<(views::Views, u64), Status> {
        let views = self.read_side.views(min_position, self.wait).await?;
        let position = views.position().map_err(query)?;
        Ok((views, position))
    }
}

pub fn grant_state(status: views::GrantStatus) -> v1::GrantState {
    use views::GrantStatus as S;
    match status {
        S::Requested => v1::GrantState::Requested,
        S::Active => v1::GrantState::Active,
        S::Suspended => v1::GrantState::Suspended,
        S::Failed => v1::GrantState::Failed,
        S::Quarantined => v1::GrantState::Quarantined,
        S::Deprovisioning => v1::GrantState::Deprovisioning,
        S::Revoked => v1::GrantState::Revoked,
        S::Held => v1::GrantState::Held,
    }
}

fn grant(g: views::GrantView) -> v1::Grant {
    v1::Grant {
        grant_id: g.grant.to_string(),
        org_id: g.org.to_string(),
        app_id: g.app.to_string(),
        person_id: g.person.to_string(),
        state: grant_state(g.status) as i32,
        external_account_id: g.account.as_ref().map(|a| a.id.clone()).unwrap_or_default(),
        user_name: g.account.map(|a| a.user_name).unwrap_or_default(),
        last_error: g.last_error.unwrap_or_default(),
        attempts: g.attempts,
        requested_at_micros: g.requested_at.0,
        updated_at_micros: g.updated_at.0,
    }
}

fn app(a: views::AppView) -> v1::IntegratedApp {
    let (status, reason) = match a.status {
        views::AppStatusView::Authorizing => (v1::AppStatus::Authorizing, String::new()),
        views::AppStatusView::Authorized => (v1::AppStatus::Authorized, String::new()),
        views::AppStatusView::AuthorizationFailed { reason } => {
            (v1::AppStatus::AuthorizationFailed, reason)
        }
        views::AppStatusView::Removed => (v1::AppStatus::Removed, String::new()),
    };
    v1::IntegratedApp {
        app_id: a.app.to_string(),
        catalog_app: a.catalog_app,
        display_name: a.display_name,
        base_url: a.base_url,
        status: status as i32,
        status_reason: reason,
        seat_limit: a.seat_limit,
        seats_used: a.seats_used,
    }
}

fn role(r: qm_proto::Role) -> v1::Role {
    match r {
        qm_proto::Role::Admin => v1::Role::Admin,
        qm_proto::Role::Member => v1::Role::Member,
    }
}

pub fn catalog_app(a: &qm_connectors::catalog::CatalogApp) -> v1::CatalogApp {
    use qm_connectors::catalog::{AuthKind as K, DeprovisionPolicy as D};
    v1::CatalogApp {
        key: a.key.to_string(),
        name: a.name.to_string(),
        base_url_pattern: a.base_url_pattern.to_string(),
        auth_kind: match a.auth {
            K::BearerToken => v1::AuthKind::BearerToken,
            K::Basic => v1::AuthKind::Basic,
            K::OAuthClientCredentials => v1::AuthKind::OauthClientCredentials,
        } as i32,
        deprovision_policy: match a.deprovision {
            D::Deactivate => v1::DeprovisionPolicy::Deactivate,
            D::Delete => v1::DeprovisionPolicy::Delete,
        } as i32,
        sign_in_url: a.sign_in_url.to_string(),
    }
}

#[tonic::async_trait]
impl QueryService for Queries {
    async fn get_organization(
        &self,
        r: Request<GetOrganizationRequest>,
    ) -> Result<Response<GetOrganizationResponse>, Status> {
        let r = r.into_inner();
        let org = id("org_id", &r.org_id)?;
        let (views, position) = self.views(r.min_position).await?;
        let found = views
            .organization(&org)
            .map_err(query)?
            .ok_or_else(|| Status::not_found(format!("organization {org} does not exist")))?;
        let organization = v1::Organization {
            org_id: found.org.to_string(),
            name: found.name,
            created_at_micros: found.created_at.0,
            member_count: found.members,
            team_count: found.teams,
        };
        Ok(Response::new(GetOrganizationResponse { organization: Some(organization), position }))
    }

    async fn list_members(
        &self,
        r: Request<ListMembersRequest>,
    ) -> Result<Response<ListMembersResponse>, Status> {
        let r = r.into_inner();
        let (org, page) = (id("org_id", &r.org_id)?, validate::page(r.page_size, &r.page_token)?);
        let (views, position) = self.views(r.min_position).await?;
        let found = views.members(&org, &page).map_err(query)?;
        let members = found
            .items
            .into_iter()
            .map(|m| v1::Member {
                person_id: m.person.to_string(),
                email: m.email,
                display_name: m.display_name,
                role: role(m.role) as i32,
                team_ids: m.teams.iter().map(ToString::to_string).collect(),
            })
            .collect();
        Ok(Response::new(ListMembersResponse {
            members,
            next_page_token: found.next_token.unwrap_or_default(),
            position,
        }))
    }

    async fn list_teams(
        &self,
        r: Request<ListTeamsRequest>,
    ) -> Result<Response<ListTeamsResponse>, Status> {
        let r = r.into_inner();
        let (org, page) = (id("org_id", &r.org_id)?, validate::page(r.page_size, &r.page_token)?);
        let (views, position) = self.views(r.min_position).await?;
        let found = views.teams(&org, &page).map_err(query)?;
        let teams = found
            .items
            .into_iter()
            .map(|t| v1::Team {
                team_id: t.team.to_string(),
                name: t.name,
                person_ids: t.members.iter().map(ToString::to_string).collect(),
            })
            .collect();
        Ok(Response::new(ListTeamsResponse {
            teams,
            next_page_token: found.next_token.unwrap_or_default(),
            position,
        }))
    }

    async fn list_integrated_apps(
        &self,
        r: Request<ListIntegratedAppsRequest>,
    ) -> Result<Response<ListIntegratedAppsResponse>, Status> {
        let r = r.into_inner();
        let (org, page) = (id("org_id", &r.org_id)?, validate::page(r.page_size, &r.page_token)?);
        let (views, position) = self.views(r.min_position).await?;
        let found = views.apps(&org, &page).map_err(query)?;
        let apps = found.items.into_iter().map(app).collect();
        Ok(Response::new(ListIntegratedAppsResponse {
            apps,
            next_page_token: found.next_token.unwrap_or_default(),
            position,
        }))
    }

    async fn list_catalog_apps(
        &self,
        r: Request<ListCatalogAppsRequest>,
    ) -> Result<Response<ListCatalogAppsResponse>, Status> {
        let r = r.into_inner();
        let page = validate::page(r.page_size, &r.page_token)?;
        let all = qm_connectors::catalog::all();
        let start = match &page.token {
            None => 0,
            Some(token) => all
                .iter()
                .position(|a| a.key == token.as_str())
                .map(|i| i + 1)
                .ok_or_else(|| query(qm_projections::QueryError::BadPageToken))?,
        };
        let size = if page.size == 0 { 100 } else { page.size };
        let apps: Vec<_> = all.iter().skip(start).take(size).collect();
        let next_page_token = match apps.last() {
            Some(last) if start + apps.len() < all.len() => last.key.to_string(),
            _ => String::new(),
        };
        let (_, position) = self.views(r.min_position).await?;
        let apps = apps.into_iter().map(catalog_app).collect();
        Ok(Response::new(ListCatalogAppsResponse { apps, next_page_token, position }))
    }

    async fn who_has_access(
        &self,
        r: Request<WhoHasAccessRequest>,
    ) -> Result<Response<WhoHasAccessResponse>, Status> {
        let r = r.into_inner();
        let (org, app) = (id("org_id", &r.org_id)?, id("app_id", &r.app_id)?);
        let page = validate::page(r.page_size, &r.page_token)?;
        let (views, position) = self.views(r.min_position).await?;
        let found = views.who_has_access(&org, &app, &page).map_err(query)?;
        let grants = found.items.into_iter().map(grant).collect();
        Ok(Response::new(WhoHasAccessResponse {
            grants,
            next_page_token: found.next_token.unwrap_or_default(),
            position,
        }))
    }

    async fn who_had_access(
        &self,
        r: Request<WhoHadAccessRequest>,
    ) -> Result<Response<WhoHadAccessResponse>, Status> {
        let r = r.into_inner();
        let (org, app) = (id("org_id", &r.org_id)?, id("app_id", &r.app_id)?);
        let (views, position) = self.views(r.min_position).await?;
        let at = qm_proto::Timestamp(r.at_micros);
        let intervals = views.access_at(&org, &app, at).map_err(query)?;
        let intervals = intervals
            .into_iter()
            .map(|i| v1::AccessInterval {
                person_id: i.person.to_string(),
                grant_id: i.grant.to_string(),
                from_micros: i.from.0,
                from_position: i.from_position,
                to_micros: i.to.map(|t| t.0),
                to_position: i.to_position,
                ended_by: match i.ended_by {
                    None => String::new(),
                    Some(views::IntervalEnd::Suspended) => "suspended".into(),
                    Some(views::IntervalEnd::Deprovisioned(cause)) => cause.as_str().into(),
                },
            })
            .collect();
        Ok(Response::new(WhoHadAccessResponse { intervals, position }))
    }

    async fn list_grants_for_person(
        &self,
        r: Request<ListGrantsForPersonRequest>,
    ) -> Result<Response<ListGrantsForPersonResponse>, Status> {
        let r = r.into_inner();
        let (person, page) =
            (id("person_id", &r.person_id)?, validate::page(r.page_size, &r.page_token)?);
        let (views, position) = self.views(r.min_position).await?;
        let found = views.grants_for_person(&person, &page).map_err(query)?;
        let grants = found.items.into_iter().map(grant).collect();
        Ok(Response::new(ListGrantsForPersonResponse {
            grants,
            next_page_token: found.next_token.unwrap_or_default(),
            position,
        }))
    }

    async fn get_grant(
        &self,
        r: Request<GetGrantRequest>,
    ) -> Result<Response<GetGrantResponse>, Status> {
        let r = r.into_inner();
        let (org, grant_id) = (id("org_id", &r.org_id)?, id("grant_id", &r.grant_id)?);
        let (views, position) = self.views(r.min_position).await?;
        let found = views.grant(&org, &grant_id).map_err(query)?.ok_or_else(|| {
            Status::not_found(format!("grant {grant_id} does not exist in {org}"))
        })?;
        Ok(Response::new(GetGrantResponse { grant: Some(grant(found)), position }))
    }

    async fn get_launchpad(
        &self,
        r: Request<GetLaunchpadRequest>,
    ) -> Result<Response<GetLaunchpadResponse>, Status> {
        let r = r.into_inner();
        let (person, page) =
            (id("person_id", &r.person_id)?, validate::page(r.page_size, &r.page_token)?);
        let (views, position) = self.views(r.min_position).await?;
        let found = views.launchpad(&person, &page).map_err(query)?;
        let entries = found
            .items
            .into_iter()
            .map(|e| {
                // The app's own link when it gave one, else the catalog's sign-in page.
                let open_url = e.open_url.clone().unwrap_or_else(|| {
                    qm_connectors::catalog::find(&e.catalog_app)
                        .map(|c| c.sign_in_url.to_string())
                        .unwrap_or_default()
                });
                v1::LaunchpadEntry {
                    org_id: e.org.to_string(),
                    org_name: e.org_name,
                    app_id: e.app.to_string(),
                    app_name: e.app_name,
                    catalog_app: e.catalog_app,
                    grant_id: e.grant.to_string(),
                    state: grant_state(e.status) as i32,
                    user_name: e.user_name.unwrap_or_default(),
                    open_url,
                }
            })
            .collect();
        Ok(Response::new(GetLaunchpadResponse {
            entries,
            next_page_token: found.next_token.unwrap_or_default(),
            position,
        }))
    }
}
