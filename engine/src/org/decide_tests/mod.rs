//! Decision tests: given events, when a command, then events or an error. This file holds the
//! shared history and the organization, member and team tests; `grants` holds the app,
//! provisioning and provisioner-outcome tests.

use qm_proto::*;

use super::*;

fn id<T: std::str::FromStr>(raw: &str) -> T
where
    T::Err: std::fmt::Debug,
{
    raw.parse().expect("test ids are valid")
}

fn acme() -> OrgId {
    id("acme")
}
fn alice() -> Actor {
    Actor::Person(id("alice"))
}
fn provisioner() -> Actor {
    Actor::Service("provisioner".into())
}
fn sealed() -> SealedCredentials {
    SealedCredentials { key_id: 1, nonce: vec![1; 24], ciphertext: vec![2; 40] }
}

fn given(events: &[Event]) -> OrgState {
    let mut state = OrgState::default();
    for event in events {
        state.evolve(event);
    }
    state
}

fn when(state: &OrgState, actor: &Actor, command: Command) -> Result<Vec<Event>, DecideError> {
    decide(&acme(), state, actor, &command)
}

fn then(state: &OrgState, actor: &Actor, command: Command) -> OrgState {
    let events = when(state, actor, command).expect("the command is accepted");
    let mut next = state.clone();
    for event in &events {
        next.evolve(event);
    }
    next
}

fn member(person: &str, role: Role) -> Event {
    Event::MemberAdded(MemberAdded {
        person: id(person),
        email: format!("{person}@acme.test"),
        display_name: person.to_uppercase(),
        role,
    })
}

fn in_team(team: &str, person: &str) -> Event {
    Event::TeamMemberAdded(TeamMemberAdded { team: id(team), person: id(person) })
}

/// acme: alice (admin), bob and carol (members) in team eng, dave in no team, and an authorized
/// custom SCIM app `crm` with 2 seats.
fn history() -> Vec<Event> {
    vec![
        Event::OrganizationCreated(OrganizationCreated { org: acme(), name: "Acme".into() }),
        member("alice", Role::Admin),
        member("bob", Role::Member),
        member("carol", Role::Member),
        member("dave", Role::Member),
        Event::TeamCreated(TeamCreated { team: id("eng"), name: "Engineering".into() }),
        Event::TeamCreated(TeamCreated { team: id("ops"), name: "Operations".into() }),
        in_team("eng", "bob"),
        in_team("eng", "carol"),
        in_team("ops", "carol"),
        Event::IntegratedAppAdded(IntegratedAppAdded {
            app: id("crm"),
            catalog_app: "custom-scim".into(),
            display_name: "CRM".into(),
            base_url: "https://scim.crm.test/v2".into(),
            credentials: sealed(),
            seat_limit: Some(2),
        }),
        Event::AppAuthorized(AppAuthorized { app: id("crm") }),
    ]
}

fn with_grant(person: &str, grant: &str) -> Vec<Event> {
    let mut events = history();
    events.push(Event::GrantRequested(GrantRequested {
        grant: id(grant),
        app: id("crm"),
        person: id(person),
    }));
    events
}

fn provision(person: &str, grant: &str) -> Command {
    Command::ProvisionUser { app: id("crm"), person: id(person), grant: id(grant) }
}

fn deprovisioning(grant: &str, cause: DeprovisionCause) -> Event {
    Event::DeprovisioningRequested(DeprovisioningRequested { grant: id(grant), cause })
}

// Organizations.

#[test]
fn creating_an_organization_makes_the_actor_its_first_admin() {
    let events = when(
        &OrgState::default(),
        &alice(),
        Command::CreateOrganization {
            name: "Acme".into(),
            admin_email: "alice@acme.test".into(),
            admin_display_name: "Alice".into(),
        },
    )
    .unwrap();
    assert_eq!(events.len(), 2);
    let state = given(&events);
    assert!(state.is_admin(&id("alice")));
}

#[test]
fn rejects_creating_an_organization_twice() {
    let err = when(
        &given(&history()),
        &alice(),
        Command::CreateOrganization {
            name: "Acme".into(),
            admin_email: "alice@acme.test".into(),
            admin_display_name: "Alice".into(),
        },
    )
    .unwrap_err();
    assert_eq!(err, DecideError::OrgAlreadyExists { org: acme() });
    assert_eq!(err.kind(), ErrorKind::AlreadyExists);
}

#[test]
fn rejects_an_organization_created_by_a_service() {
    let err = when(
        &OrgState::default(),
        &provisioner(),
        Command::CreateOrganization {
            name: "Acme".into(),
            admin_email: "a@acme.test".into(),
            admin_display_name: "A".into(),
        },
    )
    .unwrap_err();
    assert!(matches!(err, DecideError::Invalid { field: "actor", .. }));
}

#[test]
fn rejects_commands_on_an_organization_that_does_not_exist() {
    let err = when(
        &OrgState::default(),
        &alice(),
        Command::CreateTeam { team: id("t"), name: "T".into() },
    )
    .unwrap_err();
    assert_eq!(err.to_string(), "organization acme does not exist");
    assert_eq!(err.kind(), ErrorKind::NotFound);
}

// Members.

#[test]
fn an_admin_adds_a_member() {
    let state = then(
        &given(&history()),
        &alice(),
        Command::AddMember {
            person: id("erin"),
            email: "erin@acme.test".into(),
            display_name: "Erin".into(),
            role: Role::Member,
        },
    );
    assert_eq!(state.members[&id::<PersonId>("erin")].email, "erin@acme.test");
}

#[test]
fn rejects_a_member_added_by_a_non_admin() {
    let err = when(
        &given(&history()),
        &Actor::Person(id("bob")),
        Command::AddMember {
            person: id("erin"),
            email: "erin@acme.test".into(),
            display_name: "Erin".into(),
            role: Role::Member,
        },
    )
    .unwrap_err();
    assert_eq!(err.to_string(), "person:bob is not an admin of acme");
    assert_eq!(err.kind(), ErrorKind::PermissionDenied);
}

#[test]
fn rejects_adding_an_existing_member() {
    let err = when(
        &given(&history()),
        &alice(),
        Command::AddMember {
            person: id("bob"),
            email: "bob@acme.test".into(),
            display_name: "Bob".into(),
            role: Role::Member,
        },
    )
    .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::AlreadyExists);
}

#[test]
fn rejects_a_member_without_a_valid_email_or_name() {
    let add = |email: &str, name: &str| Command::AddMember {
        person: id("erin"),
        email: email.into(),
        display_name: name.into(),
        role: Role::Member,
    };
    let state = given(&history());
    for (email, name, field) in [
        ("erin", "Erin", "email"),
        ("erin@acme", "Erin", "email"),
        ("er in@acme.test", "Erin", "email"),
        ("erin@acme.test", "", "display_name"),
        ("erin@acme.test", "Er\u{7}in", "display_name"),
    ] {
        let err = when(&state, &alice(), add(email, name)).unwrap_err();
        assert!(
            matches!(err, DecideError::Invalid { field: f, .. } if f == field),
            "{email:?}/{name:?} gave {err}"
        );
    }
    let long = "x".repeat(MAX_TEXT + 1);
    assert!(matches!(
        when(&state, &alice(), add("erin@acme.test", &long)),
        Err(DecideError::Invalid { field: "display_name", .. })
    ));
}

#[test]
fn removing_a_member_takes_them_out_of_teams_and_deprovisions_their_grants() {
    let state = given(&with_grant("carol", "g1"));
    let events = when(&state, &alice(), Command::RemoveMember { person: id("carol") }).unwrap();
    assert_eq!(
        events,
        vec![
            Event::TeamMemberRemoved(TeamMemberRemoved { team: id("eng"), person: id("carol") }),
            Event::TeamMemberRemoved(TeamMemberRemoved { team: id("ops"), person: id("carol") }),
            deprovisioning("g1", DeprovisionCause::MemberRemoved),
            Event::MemberRemoved(MemberRemoved { person: id("carol") }),
        ]
    );
    let after = given(&[with_grant("carol", "g1"), events].concat());
    assert!(after.teams.values().all(|t| !t.members.contains(&id::<PersonId>("carol"))));
    assert_eq!(after.grants[&id::<GrantId>("g1")].state, GrantState::Deprovisioning);
}

#[test]
fn rejects_removing_the_last_admin() {
    let err = when(&given(&history()), &alice(), Command::RemoveMember { person: id("alice") })
        .unwrap_err();
    assert_eq!(err.to_string(), "alice is the last admin of acme");
    assert_eq!(err.kind(), ErrorKind::FailedPrecondition);
}

#[test]
fn rejects_removing_someone_who_is_not_a_member() {
    let err = when(&given(&history()), &alice(), Command::RemoveMember { person: id("zed") })
        .unwrap_err();
    assert_eq!(err.to_string(), "zed is not a member of acme");
}

#[test]
fn an_admin_changes_a_role_and_a_repeated_role_changes_nothing() {
    let state = then(
        &given(&history()),
        &alice(),
        Command::SetMemberRole { person: id("bob"), role: Role::Admin },
    );
    assert!(state.is_admin(&id("bob")));
    let again =
        when(&state, &alice(), Command::SetMemberRole { person: id("bob"), role: Role::Admin });
    assert_eq!(again, Ok(vec![]));
}

#[test]
fn rejects_demoting_the_last_admin() {
    let err = when(
        &given(&history()),
        &alice(),
        Command::SetMemberRole { person: id("alice"), role: Role::Member },
    )
    .unwrap_err();
    assert!(matches!(err, DecideError::LastAdmin { .. }));
}

// Teams.

#[test]
fn an_admin_creates_a_team_once() {
    let state = then(
        &given(&history()),
        &alice(),
        Command::CreateTeam { team: id("qa"), name: "QA".into() },
    );
    assert!(state.teams.contains_key(&id::<TeamId>("qa")));
    let err = when(&state, &alice(), Command::CreateTeam { team: id("qa"), name: "QA".into() })
        .unwrap_err();
    assert_eq!(err.to_string(), "team qa already exists in acme");
    let err = when(&state, &alice(), Command::CreateTeam { team: id("qb"), name: " ".into() })
        .unwrap_err();
    assert!(matches!(err, DecideError::Invalid { field: "name", .. }));
}

#[test]
fn deleting_a_team_deprovisions_only_those_for_whom_it_was_the_last_team() {
    let mut events = with_grant("bob", "g1");
    events.push(Event::GrantRequested(GrantRequested {
        grant: id("g2"),
        app: id("crm"),
        person: id("carol"),
    }));
    let decided = when(&given(&events), &alice(), Command::DeleteTeam { team: id("eng") }).unwrap();
    assert_eq!(
        decided,
        vec![
            Event::TeamMemberRemoved(TeamMemberRemoved { team: id("eng"), person: id("bob") }),
            Event::TeamMemberRemoved(TeamMemberRemoved { team: id("eng"), person: id("carol") }),
            deprovisioning("g1", DeprovisionCause::LeftLastTeam),
            Event::TeamDeleted(TeamDeleted { team: id("eng") }),
        ]
    );
}

#[test]
fn rejects_deleting_a_team_that_does_not_exist() {
    let err =
        when(&given(&history()), &alice(), Command::DeleteTeam { team: id("qa") }).unwrap_err();
    assert_eq!(err.to_string(), "team qa does not exist in acme");
}

#[test]
fn adding_a_team_member_needs_the_team_and_the_member_and_happens_once() {
    let state = given(&history());
    let state =
        then(&state, &alice(), Command::AddTeamMember { team: id("ops"), person: id("dave") });
    assert!(state.members[&id::<PersonId>("dave")].teams.contains(&id::<TeamId>("ops")));
    let add =
        |team: &str, person: &str| Command::AddTeamMember { team: id(team), person: id(person) };
    assert!(matches!(
        when(&state, &alice(), add("ops", "dave")),
        Err(DecideError::AlreadyInTeam { .. })
    ));
    assert!(matches!(
        when(&state, &alice(), add("qa", "dave")),
        Err(DecideError::TeamNotFound { .. })
    ));
    assert!(matches!(
        when(&state, &alice(), add("ops", "zed")),
        Err(DecideError::MemberNotFound { .. })
    ));
}

#[test]
fn leaving_the_last_team_deprovisions_grants_but_leaving_another_does_not() {
    let bob = with_grant("bob", "g1");
    let events = when(
        &given(&bob),
        &alice(),
        Command::RemoveTeamMember { team: id("eng"), person: id("bob") },
    )
    .unwrap();
    assert_eq!(events[1], deprovisioning("g1", DeprovisionCause::LeftLastTeam));

    let carol = with_grant("carol", "g2");
    let events = when(
        &given(&carol),
        &alice(),
        Command::RemoveTeamMember { team: id("eng"), person: id("carol") },
    )
    .unwrap();
    assert_eq!(events.len(), 1, "carol is still in ops");
}

#[test]
fn rejects_removing_someone_from_a_team_they_are_not_in() {
    let err = when(
        &given(&history()),
        &alice(),
        Command::RemoveTeamMember { team: id("ops"), person: id("bob") },
    )
    .unwrap_err();
    assert_eq!(err.to_string(), "bob is not in team ops");
}

mod grants;
