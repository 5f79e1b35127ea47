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
    (0..6usize).prop_map(|i| id(&format!("g{i}")))
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
        1 => (pick_person(), pick_role()).prop_map(|(person, role)| Command::AddMember {
            email: format!("{person}@example.com"),
            display_name: person.to_string(),
            person,
            role,
        }),
        1 => pick_person().prop_map(|person| Command::RemoveMember { person }),
        1 => (pick_person(), pick_role())
            .prop_map(|(person, role)| Command::SetMemberRole { person, role }),
        1 => pick_team().prop_map(|team| Command::CreateTeam { name: team.to_string(), team }),
        1 => pick_team().prop_map(|team| Command::DeleteTeam { team }),
        1 => (pick_team(), pick_person())
            .prop_map(|(team, person)| Command::AddTeamMember { team, person }),
        1 => (pick_team(), pick_person())
            .prop_map(|(team, person)| Command::RemoveTeamMember { team, person }),
        1 => (pick_app(), proptest::option::of(1..4u32)).prop_map(|(app, seat_limit)| {
            Command::AddIntegratedApp {
                app,
                catalog_app: "custom-scim".into(),
                display_name: "App".into(),
                base_url: "https://scim.example.com/v2".into(),
                credentials: sealed(),
                seat_limit,
            }
        }),
        1 => (pick_app(), proptest::option::of(1..4u32))
            .prop_map(|(app, seat_limit)| Command::SetSeatLimit { app, seat_limit }),
        1 => pick_app().prop_map(|app| Command::RemoveIntegratedApp { app }),
        3 => (pick_app(), pick_person(), pick_grant())
            .prop_map(|(app, person, grant)| Command::ProvisionUser { app, person, grant }),
        1 => (pick_app(), pick_person())
            .prop_map(|(app, person)| Command::DeprovisionUser { app, person }),
        1 => pick_grant().prop_map(|grant| Command::SuspendGrant { grant }),
        1 => pick_grant().prop_map(|grant| Command::ResumeGrant { grant }),
        1 => pick_grant().prop_map(|grant| Command::RetryGrant { grant }),
        1 => pick_app().prop_map(|app| Command::RecordAppAuthorized { app }),
        3 => pick_grant().prop_map(|grant| Command::RecordAccountProvisioned {
            account: ExternalAccount {
                id: format!("u-{grant}"),
                user_name: grant.to_string(),
                open_url: None
            },
            grant,
        }),
        2 => (pick_grant(), any::<bool>(), 1u32..3, any::<bool>()).prop_map(
            |(grant, retry, attempt, deprovisioning)| Command::RecordProvisioningFailed {
                grant,
                attempt,
                deprovisioning,
                reason: "http 503".into(),
                next_retry_at: retry.then_some(Timestamp(1)),
            }
        ),
        2 => pick_grant().prop_map(|grant| Command::RecordAccountDeprovisioned { grant }),
        1 => pick_grant().prop_map(|grant| Command::RecordDeprovisioningHeld {
            grant,
            reason: "breaker".into(),
        }),
        1 => pick_app().prop_map(|app| Command::ConfirmDeprovisionings { app }),
    ];
    // p0 founds the organization; weighting it keeps histories from stalling on permission errors.
    let actor = prop_oneof![2 => Just(None), 3 => Just(Some(0)), 3 => (1..PEOPLE).prop_map(Some)];
    (actor, command)
}

/// The start of every random history: `p0` creates the organization; `p1`..`p3` join team
/// `t0`, `p4` joins no team; app `a0` (2 seats) and `a1` (no limit) are attached and
/// authorized. Random steps then start from a state where most commands can land.
pub fn prelude() -> Vec<(Option<usize>, Command)> {
    let admin = Some(0);
    let mut steps = vec![(
        admin,
        Command::CreateOrganization {
            name: "Prop".into(),
            admin_email: "p0@example.com".into(),
            admin_display_name: "P0".into(),
        },
    )];
    steps.push((admin, Command::CreateTeam { team: id("t0"), name: "T0".into() }));
    for i in 1..PEOPLE {
        let person: PersonId = id(&format!("p{i}"));
        steps.push((
            admin,
            Command::AddMember {
                person: person.clone(),
                email: format!("{person}@example.com"),
                display_name: person.to_string(),
                role: Role::Member,
            },
        ));
        if i < PEOPLE - 1 {
            steps.push((admin, Command::AddTeamMember { team: id("t0"), person }));
        }
    }
    for (app, seats) in [("a0", Some(2)), ("a1", None)] {
        steps.push((
            admin,
            Command::AddIntegratedApp {
                app: id(app),
                catalog_app: "custom-scim".into(),
                display_name: app.into(),
                base_url: "https://scim.example.com/v2".into(),
                credentials: sealed(),
                seat_limit: seats,
            },
        ));
        steps.push((None, Command::RecordAppAuthorized { app: id(app) }));
    }
    steps
}
