//! The circuit breaker: holds an app's deprovisionings when an unusual share of its accounts
//! would go at once, until an admin confirms them.
//!
//! What counts as going: the app's grants waiting to be deprovisioned (or held) in the
//! aggregate, unconfirmed, plus the accounts this instance took away within the window. A mass
//! change (a team deleted, an app detached) shows in the aggregate at once, whichever instance
//! looks; a trickle spread over several instances is seen by each only in its own share.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use qm_proto::{AppId, OrgId};

use crate::org::{GrantState, OrgState};

/// When deprovisionings are held for an admin's confirmation.
#[derive(Debug, Clone)]
pub struct BreakerConfig {
    /// The share of an app's accounts that may go within `window` without a confirmation.
    pub share: f64,
    pub window: Duration,
    /// Below this many accounts going, the breaker never trips (one person leaving a small
    /// app is not a mass deletion).
    pub min_accounts: usize,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig { share: 0.2, window: Duration::from_secs(600), min_accounts: 5 }
    }
}

#[derive(Debug)]
pub(crate) struct Breaker {
    config: BreakerConfig,
    /// When this instance took accounts away, per app, within the window.
    taken: Mutex<HashMap<(OrgId, AppId), VecDeque<Instant>>>,
}

impl Breaker {
    pub(crate) fn new(config: BreakerConfig) -> Breaker {
        Breaker { config, taken: Mutex::new(HashMap::new()) }
    }

    /// Notes an account of `app` taken away. A confirmed deprovisioning means an admin saw the
    /// wave and let it go: the window starts afresh.
    pub(crate) fn taken(&self, org: &OrgId, app: &AppId, confirmed: bool) {
        let mut taken = self.taken.lock().expect("no panic holds this lock");
        let times = taken.entry((org.clone(), app.clone())).or_default();
        if confirmed {
            times.clear();
        } else {
            times.push_back(Instant::now());
        }
    }

    /// Why the next deprovisioning of `app` must wait for an admin, if it must.
    pub(crate) fn trips(&self, org: &OrgId, state: &OrgState, app: &AppId) -> Option<String> {
        let config = &self.config;
        let recent = {
            let mut taken = self.taken.lock().expect("no panic holds this lock");
            let times = taken.entry((org.clone(), app.clone())).or_default();
            while times.front().is_some_and(|t| t.elapsed() > config.window) {
                times.pop_front();
            }
            times.len()
        };
        let of_app = || state.grants.values().filter(|g| &g.app == app);
        let leaving = of_app()
            .filter(|g| {
                !g.deprovision_confirmed
                    && matches!(g.state, GrantState::Deprovisioning | GrantState::Held)
            })
            .count();
        // The accounts the app had when the window opened, as near as this instance knows.
        let accounts = of_app().count() + recent;
        let going = leaving + recent;
        let trips = going >= config.min_accounts && going as f64 > config.share * accounts as f64;
        trips.then(|| {
            format!(
                "{going} of {accounts} accounts of {app} would go within {} min; held until an \
                 admin confirms (ConfirmDeprovisionings)",
                config.window.as_secs().div_ceil(60)
            )
        })
    }
}
