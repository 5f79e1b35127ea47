//! Property: random command sequences from random actors never break a rule of DESIGN.md, and
//! folding the log from scratch gives exactly the state the handler decided with.

use std::collections::BTreeMap;

use proptest::prelude::*;
use qm_engine::handler::{Engine, ExecuteError, Request};
use qm_engine::org::{Command, GrantState, OrgState};
use qm_proto::*;
use qm_replay_tests::fixtures::*;
use qm_replay_tests::histories::{any_step, prelude};

/// The rules of DESIGN.md that a state can show.
fn check_rules(state: &OrgState) -> Result<(), String> {
    if state.admin_count() == 0 {
        return Err("no admin left".into());
    }
    let mut seats: BTreeMap<&AppId, u32> = BTreeMap::new();
    for (grant_id, grant) in &state.grants {
        *seats.entry(&grant.app).or_default() += 1;
        if state.live.get(&(grant.person.clone(), grant.app.clone())) != Some(grant_id) {
            return Err(format!("{grant_id} is not the live grant of its person and app (rule 5)"));
        }
        let app = state.apps.get(&grant.app).ok_or(format!("{grant_id} outlived its app"))?;
        if grant.state != GrantState::Deprovisioning && grant.deprovision_cause.is_none() {
            let member = state.members.get(&grant.person);
            if member.is_none_or(|m| m.teams.is_empty()) {
                return Err(format!("{grant_id} is live without a member in a team (rules 2, 6)"));
            }
            if app.removed {
                return Err(format!("{grant_id} is live on a removed app (rule 6)"));
            }
        }
    }
    if state.live.len() != state.grants.len() {
        return Err("two live grants for one person and app (rule 5)".into());
    }
    for (app_id, app) in &state.apps {
        let used = seats.get(app_id).copied().unwrap_or(0);
        if used != app.seats_used {
            return Err(format!("{app_id} counts {} seats but holds {used}", app.seats_used));
        }
        if app.seat_limit.is_some_and(|limit| used > limit) {
            return Err(format!("{app_id} holds {used} seats over its limit (rule 4)"));
        }
    }
    Ok(())
}

async fn run_history(engine: &Engine, steps: Vec<(Option<usize>, Command)>) -> Result<(), String> {
    let org: OrgId = id("prop");
    for (actor, command) in prelude().into_iter().chain(steps) {
        let before = engine.org_state(&org).await.map_err(|e| e.to_string())?;
        let actor = match actor {
            Some(i) => person(&format!("p{i}")),
            None => provisioner(),
        };
        match engine.execute(Request::new(org.clone(), actor.clone(), command.clone())).await {
            Ok(done)
                if !done.events.is_empty()
                    && !command.is_outcome()
                    && !matches!(command, Command::CreateOrganization { .. }) =>
            {
                let Actor::Person(who) = &actor else {
                    return Err("a service acted as an admin".into());
                };
                if !before.is_admin(who) {
                    return Err(format!(
                        "{who} is no admin but {} was accepted (rule 1)",
                        command.name()
                    ));
                }
            }
            Ok(_) | Err(ExecuteError::Rejected(_)) => {}
            Err(other) => return Err(format!("{} failed: {other}", command.name())),
        }
        let after = engine.org_state(&org).await.map_err(|e| e.to_string())?;
        check_rules(&after).map_err(|broken| format!("after {command:?} by {actor}: {broken}"))?;
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn random_histories_keep_every_rule_and_replay_to_the_same_state(
        steps in proptest::collection::vec(any_step(), 1..60)
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let outcome: Result<(), String> = runtime.block_on(async {
            let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
            let (engine, log) = embedded_engine(dir.path()).map_err(|e| e.to_string())?;
            run_history(&engine, steps).await?;
            let decided = engine.org_state(&id("prop")).await.map_err(|e| e.to_string())?;
            let replayed = replayed_state(log.as_ref(), "prop").await.map_err(|e| e.to_string())?;
            if decided != replayed {
                return Err(format!("replay differs:\n{decided:?}\n{replayed:?}"));
            }
            Ok(())
        });
        prop_assert!(outcome.is_ok(), "{}", outcome.unwrap_err());
    }
}
