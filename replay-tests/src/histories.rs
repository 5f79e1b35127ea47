//! Random command sequences for property tests: a few people, teams, apps and grant ids, so
//! that random commands collide often enough to exercise every rule.

use proptest::prelude::*;
use qm_engine::org::Command;
use qm_proto::*;

use crate::fixtures::id;

pub const PEOPLE: usize = 5;
const TEAMS: usize = 2;
const APPS: usize = 2;

fn pick_person() -> impl Strategy<Value = PersonId> {
    (0..PEOPLE).prop_map(|i| id(&format!("p{i}")))
}
fn pick_team() -> impl Strategy<Value = TeamId> {
    (0..TEAMS).prop_map(|i| id(&format!("t{i}")))
}
fn pick_app() -> impl Strategy<Value = AppId> {
    (0..APPS).prop_map(|i| id(&format!("a{i}")))
}
fn pick_grant() -> impl Strategy<Value = GrantId> {
    (0..12usize).prop_map(|i| id(&format!("g{i}")))
}
fn pick_role() -> impl Strategy<Value = Role> {
    prop_oneof![Just(Role::Admin), Just(Role::Member)]
}

fn sealed() -> SealedCredentials {
    SealedCredentials { key_id: 1, nonce: vec![7; 24], ciphertext: vec![9; 32] }
}

/// A command, with `None` standing for "sent by the provisioner" and `Some(i)` for person `pi`.
pub fn any_step() -> impl Strategy<Value = (Option<usize>, Command)> {
    let command = prop_oneof![
        (pick_person(), pick_role()).prop_map(|(person, role)| Command::AddMember {
            email: format!("{person}@example.com"),
            display_name: person.to_string(),
            person,
            role,
        }),
        pick_person().prop_map(|person| Command::RemoveMember { person }),
        (pick_person(), pick_role())
            .prop_map(|(person, role)| Command::SetMemberRole { person, role }),
        pick_team().prop_map(|team| Command::CreateTeam { name: team.to_string(), team }),
        pick_team().prop_map(|team| Command::DeleteTeam { team }),
        (pick_team(), pick_person())
            .prop_map(|(team, person)| Command::AddTeamMember { team, person }),
        (pick_team(), pick_person())
            .prop_map(|(team, person)| Command::RemoveTeamMember { team, person }),
        (pick_app(), proptest::option::of(1..4u32)).prop_map(|(app, seat_limit)| {
            Command::AddIntegratedApp {
                app,
                catalog_app: "custom-scim".into(),
                display_name: "App".into(),
                base_url: "https://scim.example.com/v2".into(),
                credentials: sealed(),
                seat_limit,
            }
        }),
        (pick_app(), proptest::option::of(1..4u32))
            .prop_map(|(app, seat_limit)| Command::SetSeatLimit { app, seat_limit }),
        pick_app().prop_map(|app| Command::RemoveIntegratedApp { app }),
        (pick_app(), pick_person(), pick_grant())
            .prop_map(|(app, person, grant)| Command::ProvisionUser { app, person, grant }),
        (pick_app(), pick_person(), pick_grant())
            .prop_map(|(app, person, grant)| Command::ProvisionUser { app, person, grant }),
        (pick_app(), pick_person())
            .prop_map(|(app, person)| Command::DeprovisionUser { app, person }),
        pick_grant().prop_map(|grant| Command::SuspendGrant { grant }),
        pick_grant().prop_map(|grant| Command::ResumeGrant { grant }),
        pick_grant().prop_map(|grant| Command::RetryGrant { grant }),
        pick_app().prop_map(|app| Command::RecordAppAuthorized { app }),
        pick_app().prop_map(|app| Command::RecordAppAuthorized { app }),
        pick_grant().prop_map(|grant| Command::RecordAccountProvisioned {
            account: ExternalAccount {
                id: format!("u-{grant}"),
                user_name: grant.to_string(),
                open_url: None
            },
            grant,
        }),
        (pick_grant(), any::<bool>()).prop_map(|(grant, retry)| {
            Command::RecordProvisioningFailed {
                grant,
                reason: "http 503".into(),
                next_retry_at: retry.then_some(Timestamp(1)),
            }
        }),
        pick_grant().prop_map(|grant| Command::RecordAccountDeprovisioned { grant }),
    ];
    // p0 founds the organization; weighting it keeps histories from stalling on permission errors.
    let actor = prop_oneof![2 => Just(None), 3 => Just(Some(0)), 3 => (1..PEOPLE).prop_map(Some)];
    (actor, command)
}

