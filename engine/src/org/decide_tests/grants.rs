//! Decision tests for integrated apps, provisioning and the provisioner's outcomes.

use qm_proto::*;

use super::*;

// Integrated apps.

fn add_app(app: &str, catalog: &str, url: &str, seats: Option<u32>) -> Command {
    Command::AddIntegratedApp {
        app: id(app),
        catalog_app: catalog.into(),
        display_name: "App".into(),
        base_url: url.into(),
        credentials: sealed(),
        seat_limit: seats,
    }
}

#[test]
fn an_admin_attaches_a_catalog_app_which_waits_for_authorization() {
    let state = then(
        &given(&history()),
        &alice(),
        add_app("sf", "salesforce", "https://acme.my.salesforce.com/services/scim/v2", Some(10)),
    );
    assert_eq!(state.apps[&id::<AppId>("sf")].status, AppStatus::Authorizing);
}

#[test]
fn rejects_apps_that_are_not_in_the_catalog_or_point_elsewhere() {
    let state = given(&history());
    let err = when(&state, &alice(), add_app("x", "myspace", "https://x.test", None)).unwrap_err();
    assert!(matches!(err, DecideError::Invalid { field: "catalog_app", .. }));
    let err = when(&state, &alice(), add_app("x", "slack", "https://evil.test/scim/v2", None))
        .unwrap_err();
    assert!(matches!(err, DecideError::Invalid { field: "base_url", .. }));
    let err =
        when(&state, &alice(), add_app("x", "slack", "https://api.slack.com/scim/v2", Some(0)))
            .unwrap_err();
    assert!(matches!(err, DecideError::Invalid { field: "seat_limit", .. }));
    let err =
        when(&state, &alice(), add_app("crm", "slack", "https://api.slack.com/scim/v2", None))
            .unwrap_err();
    assert_eq!(err.to_string(), "app crm is already attached to acme");
}

#[test]
fn rejects_credentials_that_were_not_sealed() {
    let err = when(
        &given(&history()),
        &alice(),
        Command::UpdateAppCredentials {
            app: id("crm"),
            credentials: SealedCredentials {
                key_id: 1,
                nonce: vec![],
                ciphertext: b"token".to_vec(),
            },
        },
    )
    .unwrap_err();
    assert!(matches!(err, DecideError::Invalid { field: "credentials", .. }));
}

#[test]
fn new_credentials_must_be_verified_again() {
    let state = then(
        &given(&history()),
        &alice(),
        Command::UpdateAppCredentials { app: id("crm"), credentials: sealed() },
    );
    assert_eq!(state.apps[&id::<AppId>("crm")].status, AppStatus::Authorizing);
    let err = when(&state, &alice(), provision("bob", "g1")).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::FailedPrecondition);
}

#[test]
fn the_seat_limit_never_drops_below_the_seats_in_use() {
    let mut events = with_grant("bob", "g1");
    events.push(Event::GrantRequested(GrantRequested {
        grant: id("g2"),
        app: id("crm"),
        person: id("carol"),
    }));
    let state = given(&events);
    let err = when(&state, &alice(), Command::SetSeatLimit { app: id("crm"), seat_limit: Some(1) })
        .unwrap_err();
    assert_eq!(err.to_string(), "crm of acme has 2 seats in use, more than the limit 1");
    let state = then(&state, &alice(), Command::SetSeatLimit { app: id("crm"), seat_limit: None });
    assert_eq!(state.apps[&id::<AppId>("crm")].seat_limit, None);
    let same = when(&state, &alice(), Command::SetSeatLimit { app: id("crm"), seat_limit: None });
    assert_eq!(same, Ok(vec![]));
}

#[test]
fn removing_an_app_deprovisions_its_grants_and_it_leaves_once_they_are_revoked() {
    let state = given(&with_grant("bob", "g1"));
    let events = when(&state, &alice(), Command::RemoveIntegratedApp { app: id("crm") }).unwrap();
    assert_eq!(events[0], deprovisioning("g1", DeprovisionCause::AppRemoved));
    let state = then(&state, &alice(), Command::RemoveIntegratedApp { app: id("crm") });
    assert!(matches!(
        when(&state, &alice(), provision("carol", "g2")),
        Err(DecideError::AppNotFound { .. })
    ));
    assert!(state.apps.contains_key(&id::<AppId>("crm")), "still holds g1's credentials");
    let state =
        then(&state, &provisioner(), Command::RecordAccountDeprovisioned { grant: id("g1") });
    assert!(!state.apps.contains_key(&id::<AppId>("crm")));
}

#[test]
fn rejects_removing_an_app_that_is_not_attached() {
    let err = when(&given(&history()), &alice(), Command::RemoveIntegratedApp { app: id("zz") })
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound);
}

// Provisioning.

#[test]
fn an_admin_provisions_a_team_member() {
    let events = when(&given(&history()), &alice(), provision("bob", "g1")).unwrap();
    assert_eq!(
        events,
        vec![Event::GrantRequested(GrantRequested {
            grant: id("g1"),
            app: id("crm"),
            person: id("bob"),
        })]
    );
}

#[test]
fn rejects_provisioning_without_a_team() {
    let err = when(&given(&history()), &alice(), provision("dave", "g1")).unwrap_err();
    assert_eq!(err.to_string(), "dave is in no team of acme");
    assert_eq!(err.kind(), ErrorKind::FailedPrecondition);
}

#[test]
fn rejects_provisioning_a_non_member() {
    let err = when(&given(&history()), &alice(), provision("zed", "g1")).unwrap_err();
    assert!(matches!(err, DecideError::MemberNotFound { .. }));
}

#[test]
fn rejects_provisioning_by_a_non_admin() {
    let err =
        when(&given(&history()), &Actor::Person(id("bob")), provision("bob", "g1")).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::PermissionDenied);
}

#[test]
fn rejects_provisioning_into_an_app_that_is_not_attached_or_authorized() {
    let mut events = history();
    events.pop();
    let err = when(&given(&events), &alice(), provision("bob", "g1")).unwrap_err();
    assert_eq!(err.to_string(), "app crm of acme is not authorized (credentials not verified yet)");
    events.push(Event::AppAuthorizationFailed(AppAuthorizationFailed {
        app: id("crm"),
        reason: "401 from the app".into(),
    }));
    let err = when(&given(&events), &alice(), provision("bob", "g1")).unwrap_err();
    assert!(err.to_string().contains("401 from the app"));
    let err = when(
        &given(&history()),
        &alice(),
        Command::ProvisionUser { app: id("nope"), person: id("bob"), grant: id("g1") },
    )
    .unwrap_err();
    assert!(matches!(err, DecideError::AppNotFound { .. }));
}

#[test]
fn rejects_a_second_live_grant_for_the_same_person_and_app() {
    let err = when(&given(&with_grant("bob", "g1")), &alice(), provision("bob", "g2")).unwrap_err();
    assert_eq!(err.to_string(), "bob already has grant g1 for crm");
}

#[test]
fn rejects_provisioning_past_the_seat_limit() {
    let mut events = with_grant("bob", "g1");
    events.push(Event::GrantRequested(GrantRequested {
        grant: id("g2"),
        app: id("crm"),
        person: id("carol"),
    }));
    events.push(in_team("ops", "dave"));
    let err = when(&given(&events), &alice(), provision("dave", "g3")).unwrap_err();
    assert_eq!(err.to_string(), "acme has no free seat for crm (limit 2)");
}

#[test]
fn rejects_reusing_a_grant_id() {
    let err =
        when(&given(&with_grant("bob", "g1")), &alice(), provision("carol", "g1")).unwrap_err();
    assert!(matches!(err, DecideError::GrantAlreadyExists { .. }));
}

#[test]
fn deprovisioning_is_requested_once() {
    let state = given(&with_grant("bob", "g1"));
    let deprovision = || Command::DeprovisionUser { app: id("crm"), person: id("bob") };
    let events = when(&state, &alice(), deprovision()).unwrap();
    assert_eq!(events, vec![deprovisioning("g1", DeprovisionCause::Requested)]);
    let state = then(&state, &alice(), deprovision());
    assert!(matches!(
        when(&state, &alice(), deprovision()),
        Err(DecideError::GrantWrongState { .. })
    ));
    let err =
        when(&state, &alice(), Command::DeprovisionUser { app: id("crm"), person: id("carol") })
            .unwrap_err();
    assert_eq!(err.to_string(), "carol has no live grant for crm");
}

#[test]
fn an_active_grant_is_suspended_and_resumed() {
    let state = given(&with_grant("bob", "g1"));
    let err = when(&state, &alice(), Command::SuspendGrant { grant: id("g1") }).unwrap_err();
    assert_eq!(err.to_string(), "grant g1 is requested, so it cannot be suspended");
    let state = then(
        &state,
        &provisioner(),
        Command::RecordAccountProvisioned {
            grant: id("g1"),
            account: ExternalAccount { id: "u-1".into(), user_name: "bob".into(), open_url: None },
        },
    );
    let state = then(&state, &alice(), Command::SuspendGrant { grant: id("g1") });
    assert_eq!(state.grants[&id::<GrantId>("g1")].state, GrantState::Suspended);
    assert!(when(&state, &alice(), Command::SuspendGrant { grant: id("g1") }).is_err());
    let state = then(&state, &alice(), Command::ResumeGrant { grant: id("g1") });
    assert_eq!(state.grants[&id::<GrantId>("g1")].state, GrantState::Active);
    assert!(when(&state, &alice(), Command::ResumeGrant { grant: id("g1") }).is_err());
    assert!(matches!(
        when(&state, &alice(), Command::SuspendGrant { grant: id("g9") }),
        Err(DecideError::GrantNotFound { .. })
    ));
}

// Provisioner outcomes.

#[test]
fn only_services_record_outcomes() {
    let err = when(&given(&history()), &alice(), Command::RecordAppAuthorized { app: id("crm") })
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::PermissionDenied);
}

#[test]
fn authorization_outcomes_set_the_app_status() {
    let state = then(
        &given(&history()),
        &provisioner(),
        Command::RecordAuthorizationFailed { app: id("crm"), reason: "401".into() },
    );
    assert!(matches!(
        state.apps[&id::<AppId>("crm")].status,
        AppStatus::AuthorizationFailed { .. }
    ));
    let state = then(&state, &provisioner(), Command::RecordAppAuthorized { app: id("crm") });
    assert_eq!(state.apps[&id::<AppId>("crm")].status, AppStatus::Authorized);
}

#[test]
fn failures_are_retried_then_quarantined_and_an_admin_re_arms_them() {
    let fail = |attempt: u32, retry: Option<Timestamp>| Command::RecordProvisioningFailed {
        grant: id("g1"),
        attempt,
        deprovisioning: false,
        reason: "http 503".into(),
        next_retry_at: retry,
    };
    let state = given(&with_grant("bob", "g1"));
    let state = then(&state, &provisioner(), fail(1, Some(Timestamp(10))));
    assert_eq!(state.grants[&id::<GrantId>("g1")].state, GrantState::Failed);
    let late = when(&state, &provisioner(), fail(1, Some(Timestamp(20)))).unwrap_err();
    assert!(matches!(late, DecideError::GrantWrongState { .. }), "an attempt fails once");
    let wrong_phase = Command::RecordProvisioningFailed {
        grant: id("g1"),
        attempt: 2,
        deprovisioning: true,
        reason: "http 503".into(),
        next_retry_at: None,
    };
    let err = when(&state, &provisioner(), wrong_phase).unwrap_err();
    assert!(
        matches!(err, DecideError::GrantWrongState { .. }),
        "a create's failure is not a removal's"
    );
    let events = when(&state, &provisioner(), fail(2, None)).unwrap();
    assert!(matches!(&events[0], Event::ProvisioningFailed(f) if f.attempt == 2));
    assert!(matches!(&events[1], Event::GrantQuarantined(_)));
    let state = then(&state, &provisioner(), fail(2, None));
    assert_eq!(state.grants[&id::<GrantId>("g1")].state, GrantState::Quarantined);
    assert!(matches!(
        when(&state, &provisioner(), fail(3, None)),
        Err(DecideError::GrantWrongState { .. })
    ));
    let state = then(&state, &alice(), Command::RetryGrant { grant: id("g1") });
    assert_eq!(state.grants[&id::<GrantId>("g1")].state, GrantState::Requested);
    assert!(when(&state, &alice(), Command::RetryGrant { grant: id("g1") }).is_err());
}

#[test]
fn a_confirmed_deprovisioning_revokes_the_grant_and_frees_the_seat() {
    let state = given(&with_grant("bob", "g1"));
    let err = when(&state, &provisioner(), Command::RecordAccountDeprovisioned { grant: id("g1") })
        .unwrap_err();
    assert!(matches!(err, DecideError::GrantWrongState { .. }));
    let state =
        then(&state, &alice(), Command::DeprovisionUser { app: id("crm"), person: id("bob") });
    let state =
        then(&state, &provisioner(), Command::RecordAccountDeprovisioned { grant: id("g1") });
    assert!(state.grants.is_empty());
    assert_eq!(state.apps[&id::<AppId>("crm")].seats_used, 0);
    then(&state, &alice(), provision("bob", "g2"));
}

#[test]
fn an_account_created_after_deprovisioning_was_requested_is_still_taken_away() {
    let state = given(&with_grant("bob", "g1"));
    let state =
        then(&state, &alice(), Command::DeprovisionUser { app: id("crm"), person: id("bob") });
    let state = then(
        &state,
        &provisioner(),
        Command::RecordAccountProvisioned {
            grant: id("g1"),
            account: ExternalAccount { id: "u-1".into(), user_name: "bob".into(), open_url: None },
        },
    );
    let grant = &state.grants[&id::<GrantId>("g1")];
    assert_eq!(grant.state, GrantState::Deprovisioning);
    assert!(grant.account.is_some());
}

#[test]
fn rejects_an_outcome_with_an_empty_reason() {
    let err = when(
        &given(&with_grant("bob", "g1")),
        &provisioner(),
        Command::RecordProvisioningFailed {
            grant: id("g1"),
            attempt: 1,
            deprovisioning: false,
            reason: "".into(),
            next_retry_at: None,
        },
    )
    .unwrap_err();
    assert!(matches!(err, DecideError::Invalid { field: "reason", .. }));
}

// The circuit breaker.

fn held(grant: &str) -> Command {
    Command::RecordDeprovisioningHeld { grant: id(grant), reason: "6 of 10 accounts".into() }
}

#[test]
fn a_held_deprovisioning_waits_for_an_admin_then_goes_on_once() {
    let state = given(&with_grant("bob", "g1"));
    let err = when(&state, &provisioner(), held("g1")).unwrap_err();
    assert!(matches!(err, DecideError::GrantWrongState { .. }), "only a deprovisioning is held");
    let state =
        then(&state, &alice(), Command::DeprovisionUser { app: id("crm"), person: id("bob") });
    let err = when(&state, &alice(), held("g1")).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::PermissionDenied, "only the provisioner holds");
    let state = then(&state, &provisioner(), held("g1"));
    assert_eq!(state.grants[&id::<GrantId>("g1")].state, GrantState::Held);
    assert_eq!(state.apps[&id::<AppId>("crm")].seats_used, 1, "a held grant keeps its seat");
    let err = when(&state, &provisioner(), Command::RecordAccountDeprovisioned { grant: id("g1") })
        .unwrap_err();
    assert!(matches!(err, DecideError::GrantWrongState { .. }), "nothing goes while held");

    let confirm = Command::ConfirmDeprovisionings { app: id("crm") };
    let err = when(&state, &provisioner(), confirm.clone()).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::PermissionDenied, "an admin confirms, not a service");
    let events = when(&state, &alice(), confirm.clone()).unwrap();
    assert_eq!(
        events,
        vec![Event::DeprovisioningConfirmed(DeprovisioningConfirmed { grant: id("g1") })]
    );
    let state = then(&state, &alice(), confirm.clone());
    let grant = &state.grants[&id::<GrantId>("g1")];
    assert_eq!((grant.state, grant.deprovision_confirmed), (GrantState::Deprovisioning, true));
    assert!(when(&state, &alice(), confirm).unwrap().is_empty(), "nothing is left to confirm");
    let err = when(&state, &provisioner(), held("g1")).unwrap_err();
    assert!(
        matches!(err, DecideError::GrantWrongState { .. }),
        "a confirmed one is not held again"
    );
    let state =
        then(&state, &provisioner(), Command::RecordAccountDeprovisioned { grant: id("g1") });
    assert!(state.grants.is_empty());
}

#[test]
fn confirming_needs_an_app_of_the_organization() {
    let err = when(&given(&history()), &alice(), Command::ConfirmDeprovisionings { app: id("zz") })
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound);
}
