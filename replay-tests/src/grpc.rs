//! Setting up organizations through the gRPC API of a running instance, as a calling service
//! would.

use qm_proto::api::v1;
use qm_proto::api::v1::command_service_client::CommandServiceClient;
use tonic::transport::Channel;

/// Creates organization `org` with `admin` as its admin (email `<admin>@<org>.test`), a team
/// `staff`, and each of `people` as a member of it (email `<person>@<org>.test`).
pub async fn organization(
    commands: &mut CommandServiceClient<Channel>,
    admin: &str,
    org: &str,
    people: &[String],
) -> anyhow::Result<()> {
    commands
        .create_organization(v1::CreateOrganizationRequest {
            actor_id: admin.into(),
            org_id: org.into(),
            name: org.into(),
            admin_email: format!("{admin}@{org}.test"),
            admin_display_name: format!("{admin} Admin"),
            ..Default::default()
        })
        .await?;
    commands
        .create_team(v1::CreateTeamRequest {
            actor_id: admin.into(),
            org_id: org.into(),
            team_id: "staff".into(),
            name: "Staff".into(),
            ..Default::default()
        })
        .await?;
    for person in people {
        commands
            .add_member(v1::AddMemberRequest {
                actor_id: admin.into(),
                org_id: org.into(),
                person_id: person.clone(),
                email: format!("{person}@{org}.test"),
                display_name: format!("{person} Tester"),
                role: v1::Role::Member as i32,
                ..Default::default()
            })
            .await?;
        commands
            .add_team_member(v1::AddTeamMemberRequest {
                actor_id: admin.into(),
                org_id: org.into(),
                team_id: "staff".into(),
                person_id: person.clone(),
                ..Default::default()
            })
            .await?;
    }
    Ok(())
}

/// Attaches a custom SCIM 2.0 app at `url` with a bearer token; the provisioner verifies it.
pub async fn attach_custom_scim(
    commands: &mut CommandServiceClient<Channel>,
    admin: &str,
    org: &str,
    app: &str,
    url: &str,
    token: &str,
) -> anyhow::Result<()> {
    commands
        .add_integrated_app(v1::AddIntegratedAppRequest {
            actor_id: admin.into(),
            org_id: org.into(),
            app_id: app.into(),
            catalog_app: "custom-scim".into(),
            display_name: app.into(),
            base_url: url.into(),
            credentials: Some(v1::Credentials { bearer_token: token.into(), ..Default::default() }),
            ..Default::default()
        })
        .await?;
    Ok(())
}
