//! Projection tests: given commits, then what each view shows.

use qm_projections::*;
use qm_proto::*;

fn id<T: std::str::FromStr>(raw: &str) -> T
where
    T::Err: std::fmt::Debug,
{
    raw.parse().expect("test ids are valid")
}

/// Builds recorded commits with growing positions and times.
struct History {
    commits: Vec<RecordedCommit>,
    position: Position,
}

impl History {
    fn new() -> History {
        History { commits: Vec::new(), position: 0 }
    }

    fn at(&mut self, org: &str, events: Vec<Event>) -> &mut Self {
        self.position += 3;
        let commit = Commit {
            schema_version: SCHEMA_VERSION,
            org: id(org),
            event_id: self.position as u128,
            recorded_at: Timestamp(self.position as i64 * 1_000_000),
            actor: Actor::Person(id("alice")),
            command_id: id(&format!("c{}", self.position)),
            correlation_id: String::new(),
            causation_id: None,
            prev_hash: GENESIS_HASH,
            events,
        };
        self.commits.push(RecordedCommit { position: self.position, hash: [0; 32], commit });
        self
    }
}

fn org_with_app(h: &mut History, org: &str) {
    h.at(
        org,
        vec![
            Event::OrganizationCreated(OrganizationCreated {
                org: id(org),
                name: format!("{org} Inc"),
            }),
            Event::MemberAdded(MemberAdded {
                person: id("alice"),
                email: "a@x.io".into(),
                display_name: "Alice".into(),
                role: Role::Admin,
            }),
            Event::MemberAdded(MemberAdded {
                person: id("bob"),
                email: "b@x.io".into(),
                display_name: "Bob".into(),
                role: Role::Member,
            }),
            Event::TeamCreated(TeamCreated { team: id("eng"), name: "Engineering".into() }),
            Event::TeamMemberAdded(TeamMemberAdded { team: id("eng"), person: id("bob") }),
            Event::IntegratedAppAdded(IntegratedAppAdded {
                app: id("crm"),
                catalog_app: "salesforce".into(),
                display_name: "Salesforce".into(),
                base_url: "https://x.my.salesforce.com/services/scim/v2".into(),
                credentials: SealedCredentials {
                    key_id: 1,
                    nonce: vec![1; 24],
                    ciphertext: b"sealed-secret".to_vec(),
                },
                seat_limit: Some(5),
            }),
            Event::AppAuthorized(AppAuthorized { app: id("crm") }),
        ],
    );
}

fn grant(h: &mut History, org: &str, grant: &str, person: &str) {
    h.at(
        org,
        vec![Event::GrantRequested(GrantRequested {
            grant: id(grant),
            app: id("crm"),
            person: id(person),
        })],
    );
}

fn provisioned(h: &mut History, org: &str, grant: &str) {
    let account = ExternalAccount {
        id: format!("u-{grant}"),
        user_name: format!("{grant}@app"),
        open_url: Some("https://open".into()),
    };
    h.at(org, vec![Event::AccountProvisioned(AccountProvisioned { grant: id(grant), account })]);
}

fn project(h: &History) -> (tempfile::TempDir, Projector) {
    let dir = tempfile::tempdir().unwrap();
    let projector = Projector::open(dir.path().join("views.redb")).unwrap();
    projector.apply(&h.commits).unwrap();
    (dir, projector)
}

fn all() -> PageRequest {
    PageRequest::default()
}

#[test]
fn organizations_show_members_roles_and_teams() {
    let mut h = History::new();
    org_with_app(&mut h, "acme");
    let (_dir, p) = project(&h);
    let views = p.views().unwrap();
    let org = views.organization(&id("acme")).unwrap().unwrap();
    assert_eq!((org.name.as_str(), org.members, org.teams), ("acme Inc", 2, 1));
    let bob = views.member(&id("acme"), &id("bob")).unwrap().unwrap();
    assert_eq!((bob.role, bob.teams.clone()), (Role::Member, vec![id("eng")]));
    let teams = views.teams(&id("acme"), &all()).unwrap();
    assert_eq!(teams.items[0].members, vec![id::<PersonId>("bob")]);
}

#[test]
fn role_changes_team_changes_and_removals_show() {
    let mut h = History::new();
    org_with_app(&mut h, "acme");
    h.at(
        "acme",
        vec![
            Event::MemberRoleChanged(MemberRoleChanged { person: id("bob"), role: Role::Admin }),
            Event::TeamCreated(TeamCreated { team: id("ops"), name: "Ops".into() }),
            Event::TeamMemberAdded(TeamMemberAdded { team: id("ops"), person: id("bob") }),
            Event::TeamMemberRemoved(TeamMemberRemoved { team: id("eng"), person: id("bob") }),
        ],
    );
    let (_dir, p) = project(&h);
    let bob = p.views().unwrap().member(&id("acme"), &id("bob")).unwrap().unwrap();
    assert_eq!((bob.role, bob.teams), (Role::Admin, vec![id("ops")]));

    h.at(
        "acme",
        vec![
            Event::TeamDeleted(TeamDeleted { team: id("ops") }),
            Event::MemberRemoved(MemberRemoved { person: id("bob") }),
        ],
    );
    let (_dir, p) = project(&h);
    let views = p.views().unwrap();
    assert!(views.member(&id("acme"), &id("bob")).unwrap().is_none());
    assert_eq!(views.teams(&id("acme"), &all()).unwrap().items.len(), 1);
    assert_eq!(views.organization(&id("acme")).unwrap().unwrap().members, 1);
}

#[test]
fn apps_show_status_and_seats_but_never_credentials() {
    let mut h = History::new();
    org_with_app(&mut h, "acme");
    grant(&mut h, "acme", "g1", "bob");
    h.at(
        "acme",
        vec![
            Event::SeatLimitChanged(SeatLimitChanged { app: id("crm"), seat_limit: Some(9) }),
            Event::AppCredentialsUpdated(AppCredentialsUpdated {
                app: id("crm"),
                credentials: SealedCredentials {
                    key_id: 1,
                    nonce: vec![2; 24],
                    ciphertext: b"sealed-secret-2".to_vec(),
                },
            }),
        ],
    );
    let (dir, p) = project(&h);
    let app = p.views().unwrap().app(&id("acme"), &id("crm")).unwrap().unwrap();
    assert_eq!(
        (app.status.clone(), app.seat_limit, app.seats_used),
        (AppStatusView::Authorizing, Some(9), 1)
    );
    h.at(
        "acme",
        vec![Event::AppAuthorizationFailed(AppAuthorizationFailed {
            app: id("crm"),
            reason: "401".into(),
        })],
    );
    let (_dir2, p2) = project(&h);
    let app = p2.views().unwrap().app(&id("acme"), &id("crm")).unwrap().unwrap();
    assert_eq!(app.status, AppStatusView::AuthorizationFailed { reason: "401".into() });
    drop(p);
    let file = std::fs::read(dir.path().join("views.redb")).unwrap();
    assert!(!file.windows(13).any(|w| w == b"sealed-secret"), "credentials entered a view");
}

#[test]
fn grants_follow_their_lifecycle_in_who_has_access() {
    let mut h = History::new();
    org_with_app(&mut h, "acme");
    grant(&mut h, "acme", "g1", "bob");
    h.at(
        "acme",
        vec![Event::ProvisioningFailed(ProvisioningFailed {
            grant: id("g1"),
            attempt: 1,
            reason: "503".into(),
            next_retry_at: Some(Timestamp(99)),
        })],
    );
    let (_d, p) = project(&h);
    let g = p.views().unwrap().grant(&id("acme"), &id("g1")).unwrap().unwrap();
    assert_eq!(
        (g.status, g.attempts, g.last_error.as_deref(), g.next_retry_at),
        (GrantStatus::Failed, 1, Some("503"), Some(Timestamp(99)))
    );

    h.at(
        "acme",
        vec![
            Event::ProvisioningFailed(ProvisioningFailed {
                grant: id("g1"),
                attempt: 2,
                reason: "400".into(),
                next_retry_at: None,
            }),
            Event::GrantQuarantined(GrantQuarantined { grant: id("g1"), reason: "400".into() }),
        ],
    );
    let (_d, p) = project(&h);
    assert_eq!(
        p.views().unwrap().grant(&id("acme"), &id("g1")).unwrap().unwrap().status,
        GrantStatus::Quarantined
    );

    h.at("acme", vec![Event::GrantRetried(GrantRetried { grant: id("g1") })]);
    provisioned(&mut h, "acme", "g1");
    let (_d, p) = project(&h);
    let who = p.views().unwrap().who_has_access(&id("acme"), &id("crm"), &all()).unwrap();
    assert_eq!(who.items.len(), 1);
    assert_eq!((who.items[0].status, who.items[0].attempts), (GrantStatus::Active, 0));
    assert_eq!(who.items[0].account.as_ref().unwrap().id, "u-g1");

    h.at("acme", vec![Event::GrantSuspended(GrantSuspended { grant: id("g1") })]);
    let (_d, p) = project(&h);
    assert_eq!(
        p.views().unwrap().grant(&id("acme"), &id("g1")).unwrap().unwrap().status,
        GrantStatus::Suspended
    );
    h.at("acme", vec![Event::GrantResumed(GrantResumed { grant: id("g1") })]);
    h.at(
        "acme",
        vec![Event::DeprovisioningRequested(DeprovisioningRequested {
            grant: id("g1"),
            cause: DeprovisionCause::LeftLastTeam,
        })],
    );
    let (_d, p) = project(&h);
    let g = p.views().unwrap().grant(&id("acme"), &id("g1")).unwrap().unwrap();
    assert_eq!(
        (g.status, g.deprovision_cause),
        (GrantStatus::Deprovisioning, Some(DeprovisionCause::LeftLastTeam))
    );

    h.at(
        "acme",
        vec![
            Event::AccountDeprovisioned(AccountDeprovisioned { grant: id("g1") }),
            Event::GrantRevoked(GrantRevoked {
                grant: id("g1"),
                cause: DeprovisionCause::LeftLastTeam,
            }),
        ],
    );
    let (_d, p) = project(&h);
    let views = p.views().unwrap();
    assert!(views.who_has_access(&id("acme"), &id("crm"), &all()).unwrap().items.is_empty());
    assert_eq!(views.grant(&id("acme"), &id("g1")).unwrap().unwrap().status, GrantStatus::Revoked);
    assert_eq!(views.app(&id("acme"), &id("crm")).unwrap().unwrap().seats_used, 0);
}

#[test]
fn the_launchpad_spans_organizations_and_empties_when_access_ends() {
    let mut h = History::new();
    org_with_app(&mut h, "acme");
    org_with_app(&mut h, "beta");
    grant(&mut h, "acme", "g1", "bob");
    grant(&mut h, "beta", "g2", "bob");
    provisioned(&mut h, "beta", "g2");
    let (_d, p) = project(&h);
    let pad = p.views().unwrap().launchpad(&id("bob"), &all()).unwrap();
    let seen: Vec<_> =
        pad.items.iter().map(|e| (e.org_name.as_str(), e.app_name.as_str(), e.status)).collect();
    assert_eq!(
        seen,
        vec![
            ("acme Inc", "Salesforce", GrantStatus::Requested),
            ("beta Inc", "Salesforce", GrantStatus::Active)
        ]
    );
    assert_eq!(pad.items[1].open_url.as_deref(), Some("https://open"));

    h.at("acme", vec![Event::IntegratedAppRemoved(IntegratedAppRemoved { app: id("crm") })]);
    h.at(
        "acme",
        vec![Event::GrantRevoked(GrantRevoked {
            grant: id("g1"),
            cause: DeprovisionCause::AppRemoved,
        })],
    );
    h.at(
        "beta",
        vec![Event::GrantRevoked(GrantRevoked {
            grant: id("g2"),
            cause: DeprovisionCause::MemberRemoved,
        })],
    );
    let (_d, p) = project(&h);
    let views = p.views().unwrap();
    assert!(views.launchpad(&id("bob"), &all()).unwrap().items.is_empty());
    assert_eq!(views.app(&id("acme"), &id("crm")).unwrap().unwrap().status, AppStatusView::Removed);
}

#[test]
fn access_intervals_answer_who_had_access_at_an_instant() {
    let mut h = History::new();
    org_with_app(&mut h, "acme");
    grant(&mut h, "acme", "g1", "bob");
    provisioned(&mut h, "acme", "g1"); // position 9: t = 9 s
    h.at("acme", vec![Event::GrantSuspended(GrantSuspended { grant: id("g1") })]); // 12
    h.at("acme", vec![Event::GrantResumed(GrantResumed { grant: id("g1") })]); // 15
    h.at(
        "acme",
        vec![Event::DeprovisioningRequested(DeprovisioningRequested {
            grant: id("g1"),
            cause: DeprovisionCause::Requested,
        })],
    ); // 18
    h.at(
        "acme",
        vec![
            Event::AccountDeprovisioned(AccountDeprovisioned { grant: id("g1") }),
            Event::GrantRevoked(GrantRevoked {
                grant: id("g1"),
                cause: DeprovisionCause::Requested,
            }),
        ],
    ); // 21
    let (_d, p) = project(&h);
    let views = p.views().unwrap();
    let intervals = views.access_intervals(&id("acme"), &id("crm")).unwrap();
    let spans: Vec<_> =
        intervals.iter().map(|i| (i.from_position, i.to_position, i.ended_by)).collect();
    assert_eq!(
        spans,
        vec![
            (9, Some(12), Some(IntervalEnd::Suspended)),
            (15, Some(21), Some(IntervalEnd::Deprovisioned(DeprovisionCause::Requested))),
        ]
    );
    let sec = |s: i64| Timestamp(s * 1_000_000);
    assert_eq!(views.access_at(&id("acme"), &id("crm"), sec(10)).unwrap().len(), 1);
    assert!(views.access_at(&id("acme"), &id("crm"), sec(13)).unwrap().is_empty());
    assert_eq!(
        views.access_at(&id("acme"), &id("crm"), sec(19)).unwrap().len(),
        1,
        "still had the account while it was being removed"
    );
    assert!(views.access_at(&id("acme"), &id("crm"), sec(21)).unwrap().is_empty());
}

#[test]
fn lists_page_in_key_order() {
    let mut h = History::new();
    org_with_app(&mut h, "acme");
    for i in 0..7 {
        h.at(
            "acme",
            vec![Event::MemberAdded(MemberAdded {
                person: id(&format!("m{i}")),
                email: "m@x.io".into(),
                display_name: "M".into(),
                role: Role::Member,
            })],
        );
    }
    let (_d, p) = project(&h);
    let views = p.views().unwrap();
    let mut seen = Vec::new();
    let mut page = PageRequest { size: 4, token: None };
    loop {
        let got = views.members(&id("acme"), &page).unwrap();
        seen.extend(got.items.into_iter().map(|m| m.person.to_string()));
        match got.next_token {
            Some(token) => page.token = Some(token),
            None => break,
        }
    }
    assert_eq!(seen.len(), 9);
    assert!(seen.windows(2).all(|w| w[0] < w[1]));
    assert!(matches!(
        views.members(&id("acme"), &PageRequest { size: 2, token: Some("zz".into()) }),
        Err(QueryError::BadPageToken)
    ));
}

#[test]
fn a_batch_seen_twice_is_applied_once_and_the_checkpoint_survives_reopening() {
    let mut h = History::new();
    org_with_app(&mut h, "acme");
    grant(&mut h, "acme", "g1", "bob");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("views.redb");
    {
        let p = Projector::open(&path).unwrap();
        p.apply(&h.commits).unwrap();
        assert_eq!(p.apply(&h.commits).unwrap(), h.position);
        p.flush().unwrap();
    }
    let p = Projector::open(&path).unwrap();
    assert_eq!(p.position(), h.position);
    p.apply(&h.commits).unwrap();
    assert_eq!(p.views().unwrap().app(&id("acme"), &id("crm")).unwrap().unwrap().seats_used, 1);
}

#[test]
fn an_event_that_does_not_fit_stops_the_projector_with_its_position() {
    let mut h = History::new();
    org_with_app(&mut h, "acme");
    h.at("acme", vec![Event::GrantSuspended(GrantSuspended { grant: id("ghost") })]);
    let dir = tempfile::tempdir().unwrap();
    let p = Projector::open(dir.path().join("views.redb")).unwrap();
    let err = p.apply(&h.commits).unwrap_err();
    assert_eq!(
        err.to_string(),
        "cannot apply GrantSuspended at position 6: grant ghost is not in the views"
    );
    assert!(matches!(p.status().state, ProjectorState::Failed { .. }));
    assert_eq!(p.position(), 0, "nothing of the failed batch was applied");
}

#[tokio::test]
async fn waiting_for_a_position_ends_when_it_is_applied_or_names_the_current_one() {
    let mut h = History::new();
    org_with_app(&mut h, "acme");
    let dir = tempfile::tempdir().unwrap();
    let p = std::sync::Arc::new(Projector::open(dir.path().join("views.redb")).unwrap());
    let err = p.wait_for(3, std::time::Duration::from_millis(20)).await.unwrap_err();
    assert_eq!((err.wanted, err.current), (3, 0));
    let waiter = {
        let p = p.clone();
        tokio::spawn(async move { p.wait_for(3, std::time::Duration::from_secs(10)).await })
    };
    p.apply(&h.commits).unwrap();
    assert_eq!(waiter.await.unwrap(), Ok(3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn following_catches_up_then_applies_live_commits_and_stops_on_a_broken_stream() {
    use futures::SinkExt;
    use std::time::Duration;

    let mut h = History::new();
    for o in 0..40 {
        let org = format!("o{o}");
        org_with_app(&mut h, &org);
        for g in 0..5 {
            grant(&mut h, &org, &format!("g{o}x{g}"), "bob");
        }
    }
    let (backlog, live) = h.commits.split_at(h.commits.len() - 10);
    let head = backlog.last().unwrap().position;
    let dir = tempfile::tempdir().unwrap();
    let p = std::sync::Arc::new(Projector::open(dir.path().join("views.redb")).unwrap());

    // The head given is past anything the stream will bring before the live commits: the
    // views must not wait for it to show what they have.
    let (mut sender, commits) =
        futures::channel::mpsc::channel::<Result<RecordedCommit, String>>(8);
    let follower = {
        let p = p.clone();
        tokio::spawn(async move { p.follow(commits, head + 1_000).await })
    };
    for commit in backlog {
        sender.send(Ok(commit.clone())).await.unwrap();
    }
    assert_eq!(p.wait_for(head, Duration::from_secs(10)).await, Ok(head));
    for commit in live {
        sender.send(Ok(commit.clone())).await.unwrap();
        let at = commit.position;
        assert_eq!(p.wait_for(at, Duration::from_secs(10)).await, Ok(at), "live commit {at}");
    }
    sender.send(Err("the log went away".into())).await.unwrap();
    match follower.await.unwrap() {
        Err(FollowError::Source(e)) => assert_eq!(e, "the log went away"),
        other => panic!("expected the stream's error, got {:?}", other.map_err(|e| e.to_string())),
    }
    assert_eq!(p.position(), h.position, "everything before the error is applied");

    let (_dir, whole) = project(&h);
    assert_eq!(p.views().unwrap().dump().unwrap(), whole.views().unwrap().dump().unwrap());
}
