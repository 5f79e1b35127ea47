//! Replay equivalence: for random histories, views built incrementally in random batch sizes
//! equal views rebuilt from scratch, and both say what the aggregate says.

use proptest::prelude::*;
use qm_engine::handler::{Engine, Request};
use qm_engine::org::{AppStatus, GrantState, OrgState};
use qm_projections::*;
use qm_proto::*;
use qm_replay_tests::fixtures::*;
use qm_replay_tests::histories::{any_step, prelude};

fn status_of(state: GrantState) -> GrantStatus {
    match state {
        GrantState::Requested => GrantStatus::Requested,
        GrantState::Active => GrantStatus::Active,
        GrantState::Suspended => GrantStatus::Suspended,
        GrantState::Failed => GrantStatus::Failed,
        GrantState::Quarantined => GrantStatus::Quarantined,
        GrantState::Deprovisioning => GrantStatus::Deprovisioning,
        GrantState::Held => GrantStatus::Held,
    }
}

/// The views agree with the aggregate on everything both know.
fn agree(org: &OrgId, state: &OrgState, views: &Views) -> Result<(), String> {
    let all = PageRequest { size: 1000, token: None };
    let members = views.members(org, &all).map_err(|e| e.to_string())?.items;
    if members.len() != state.members.len() {
        return Err(format!(
            "{} members in the views, {} in the aggregate",
            members.len(),
            state.members.len()
        ));
    }
    for view in &members {
        let member =
            state.members.get(&view.person).ok_or(format!("{} is no member", view.person))?;
        let teams: Vec<TeamId> = member.teams.iter().cloned().collect();
        if (view.role, &view.email, &view.teams) != (member.role, &member.email, &teams) {
            return Err(format!("member {} differs: {view:?} vs {member:?}", view.person));
        }
    }
    let teams = views.teams(org, &all).map_err(|e| e.to_string())?.items;
    if teams.len() != state.teams.len() {
        return Err("team count differs".into());
    }
    let mut live = 0;
    for (app_id, app) in &state.apps {
        let view = views
            .app(org, app_id)
            .map_err(|e| e.to_string())?
            .ok_or(format!("app {app_id} missing"))?;
        let status_agrees = match (&app.status, &view.status, app.removed) {
            (_, AppStatusView::Removed, true) => true,
            (AppStatus::Authorizing, AppStatusView::Authorizing, false) => true,
            (AppStatus::Authorized, AppStatusView::Authorized, false) => true,
            (
                AppStatus::AuthorizationFailed { reason: a },
                AppStatusView::AuthorizationFailed { reason: b },
                false,
            ) => a == b,
            _ => false,
        };
        if !status_agrees || view.seats_used != app.seats_used || view.seat_limit != app.seat_limit
        {
            return Err(format!("app {app_id} differs: {view:?} vs {app:?}"));
        }
        for grant in views.who_has_access(org, app_id, &all).map_err(|e| e.to_string())?.items {
            live += 1;
            let decided =
                state.grants.get(&grant.grant).ok_or(format!("{} is not live", grant.grant))?;
            if grant.status != status_of(decided.state) || grant.person != decided.person {
                return Err(format!("grant {} differs: {grant:?} vs {decided:?}", grant.grant));
            }
        }
    }
    if live != state.grants.len() {
        return Err(format!(
            "{live} live grants in the views, {} in the aggregate",
            state.grants.len()
        ));
    }
    Ok(())
}

async fn check(
    steps: Vec<(Option<usize>, qm_engine::org::Command)>,
    chunks: Vec<usize>,
) -> Result<(), String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let (engine, log) = embedded_engine(dir.path()).map_err(|e| e.to_string())?;
    let org: OrgId = id("prop");
    play(&engine, &org, steps).await;
    let commits = {
        use qm_engine::log::EventLog;
        log.read_org(&org, 0).await.map_err(|e| e.to_string())?
    };

    let incremental =
        Projector::open(dir.path().join("incremental.redb")).map_err(|e| e.to_string())?;
    let mut rest = commits.as_slice();
    for size in chunks.iter().cycle() {
        if rest.is_empty() {
            break;
        }
        let (batch, tail) = rest.split_at((*size).min(rest.len()));
        incremental.apply(batch).map_err(|e| e.to_string())?;
        rest = tail;
    }
    let rebuilt = Projector::open(dir.path().join("rebuilt.redb")).map_err(|e| e.to_string())?;
    rebuilt.apply(&commits).map_err(|e| e.to_string())?;

    let (a, b) = (
        incremental.views().map_err(|e| e.to_string())?,
        rebuilt.views().map_err(|e| e.to_string())?,
    );
    if a.dump().map_err(|e| e.to_string())? != b.dump().map_err(|e| e.to_string())? {
        return Err("incremental and rebuilt views differ".into());
    }
    let state = engine.org_state(&org).await.map_err(|e| e.to_string())?;
    agree(&org, &state, &a)
}

async fn play(engine: &Engine, org: &OrgId, steps: Vec<(Option<usize>, qm_engine::org::Command)>) {
    for (actor, command) in prelude().into_iter().chain(steps) {
        let actor = actor.map_or_else(provisioner, |i| person(&format!("p{i}")));
        // Rejections are part of a random history; what landed is what the views must show.
        let _ = engine.execute(Request::new(org.clone(), actor, command)).await;
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn incremental_views_equal_rebuilt_views_and_the_aggregate(
        steps in proptest::collection::vec(any_step(), 1..80),
        chunks in proptest::collection::vec(1..7usize, 1..6),
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let outcome = runtime.block_on(check(steps, chunks));
        prop_assert!(outcome.is_ok(), "{}", outcome.unwrap_err());
    }
}
