//! The frozen wire forms of events, and the upcasters that read old forms as current ones.
//!
//! postcard is not self-describing: an enum variant is written as its index and a struct as its
//! fields in order. So the rules are:
//!
//! * a variant of [`WireEvent`] is never removed, reordered or changed once released;
//! * changing an event's shape means adding a new variant at the end (`FooV2`), pointing
//!   [`WireEvent::from_event`] at it, and teaching [`WireEvent::upcast`] to turn the old
//!   variant into the current shape;
//! * every variant has a golden byte fixture in `replay-tests/fixtures/events/`, which must
//!   decode forever.
//!
//! Example in this file: `ProvisioningFailed` first carried no retry time (`ProvisioningFailedV1`,
//! index 16); the current shape (`ProvisioningFailed`, index 24) adds `next_retry_at`, and a V1
//! record reads as a failure with no scheduled retry.

use serde::{Deserialize, Serialize};

use crate::event::*;
use crate::ids::GrantId;

/// The first shape of `ProvisioningFailed`: no retry time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProvisioningFailedV1 {
    pub grant: GrantId,
    pub attempt: u32,
    pub reason: String,
}

/// Every event shape ever written to the log, in wire order. Append only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum WireEvent {
    OrganizationCreated(OrganizationCreated),
    MemberAdded(MemberAdded),
    MemberRemoved(MemberRemoved),
    MemberRoleChanged(MemberRoleChanged),
    TeamCreated(TeamCreated),
    TeamDeleted(TeamDeleted),
    TeamMemberAdded(TeamMemberAdded),
    TeamMemberRemoved(TeamMemberRemoved),
    IntegratedAppAdded(IntegratedAppAdded),
    AppCredentialsUpdated(AppCredentialsUpdated),
    SeatLimitChanged(SeatLimitChanged),
    AppAuthorized(AppAuthorized),
    AppAuthorizationFailed(AppAuthorizationFailed),
    IntegratedAppRemoved(IntegratedAppRemoved),
    GrantRequested(GrantRequested),
    AccountProvisioned(AccountProvisioned),
    ProvisioningFailedV1(ProvisioningFailedV1),
    GrantQuarantined(GrantQuarantined),
    GrantSuspended(GrantSuspended),
    GrantResumed(GrantResumed),
    DeprovisioningRequested(DeprovisioningRequested),
    AccountDeprovisioned(AccountDeprovisioned),
    GrantRevoked(GrantRevoked),
    GrantRetried(GrantRetried),
    ProvisioningFailed(ProvisioningFailed),
    DeprovisioningHeld(DeprovisioningHeld),
    DeprovisioningConfirmed(DeprovisioningConfirmed),
}

impl WireEvent {
    /// The name of the wire variant, which is also the name of its golden fixture.
    pub fn name(&self) -> &'static str {
        match self {
            WireEvent::ProvisioningFailedV1(_) => "ProvisioningFailedV1",
            other => other.clone().upcast().name(),
        }
    }

    /// The current wire form of an event.
    pub fn from_event(event: &Event) -> WireEvent {
        match event.clone() {
            Event::OrganizationCreated(e) => WireEvent::OrganizationCreated(e),
            Event::MemberAdded(e) => WireEvent::MemberAdded(e),
            Event::MemberRemoved(e) => WireEvent::MemberRemoved(e),
            Event::MemberRoleChanged(e) => WireEvent::MemberRoleChanged(e),
            Event::TeamCreated(e) => WireEvent::TeamCreated(e),
            Event::TeamDeleted(e) => WireEvent::TeamDeleted(e),
            Event::TeamMemberAdded(e) => WireEvent::TeamMemberAdded(e),
            Event::TeamMemberRemoved(e) => WireEvent::TeamMemberRemoved(e),
            Event::IntegratedAppAdded(e) => WireEvent::IntegratedAppAdded(e),
            Event::AppCredentialsUpdated(e) => WireEvent::AppCredentialsUpdated(e),
            Event::SeatLimitChanged(e) => WireEvent::SeatLimitChanged(e),
            Event::AppAuthorized(e) => WireEvent::AppAuthorized(e),
            Event::AppAuthorizationFailed(e) => WireEvent::AppAuthorizationFailed(e),
            Event::IntegratedAppRemoved(e) => WireEvent::IntegratedAppRemoved(e),
            Event::GrantRequested(e) => WireEvent::GrantRequested(e),
            Event::AccountProvisioned(e) => WireEvent::AccountProvisioned(e),
            Event::ProvisioningFailed(e) => WireEvent::ProvisioningFailed(e),
            Event::GrantQuarantined(e) => WireEvent::GrantQuarantined(e),
            Event::GrantRetried(e) => WireEvent::GrantRetried(e),
            Event::GrantSuspended(e) => WireEvent::GrantSuspended(e),
            Event::GrantResumed(e) => WireEvent::GrantResumed(e),
            Event::DeprovisioningRequested(e) => WireEvent::DeprovisioningRequested(e),
            Event::AccountDeprovisioned(e) => WireEvent::AccountDeprovisioned(e),
            Event::GrantRevoked(e) => WireEvent::GrantRevoked(e),
            Event::DeprovisioningHeld(e) => WireEvent::DeprovisioningHeld(e),
            Event::DeprovisioningConfirmed(e) => WireEvent::DeprovisioningConfirmed(e),
        }
    }

    /// Reads any wire form as the current shape of its event.
    pub fn upcast(self) -> Event {
        match self {
            WireEvent::OrganizationCreated(e) => Event::OrganizationCreated(e),
            WireEvent::MemberAdded(e) => Event::MemberAdded(e),
            WireEvent::MemberRemoved(e) => Event::MemberRemoved(e),
            WireEvent::MemberRoleChanged(e) => Event::MemberRoleChanged(e),
            WireEvent::TeamCreated(e) => Event::TeamCreated(e),
            WireEvent::TeamDeleted(e) => Event::TeamDeleted(e),
            WireEvent::TeamMemberAdded(e) => Event::TeamMemberAdded(e),
            WireEvent::TeamMemberRemoved(e) => Event::TeamMemberRemoved(e),
            WireEvent::IntegratedAppAdded(e) => Event::IntegratedAppAdded(e),
            WireEvent::AppCredentialsUpdated(e) => Event::AppCredentialsUpdated(e),
            WireEvent::SeatLimitChanged(e) => Event::SeatLimitChanged(e),
            WireEvent::AppAuthorized(e) => Event::AppAuthorized(e),
            WireEvent::AppAuthorizationFailed(e) => Event::AppAuthorizationFailed(e),
            WireEvent::IntegratedAppRemoved(e) => Event::IntegratedAppRemoved(e),
            WireEvent::GrantRequested(e) => Event::GrantRequested(e),
            WireEvent::AccountProvisioned(e) => Event::AccountProvisioned(e),
            WireEvent::ProvisioningFailedV1(e) => Event::ProvisioningFailed(ProvisioningFailed {
                grant: e.grant,
                attempt: e.attempt,
                reason: e.reason,
                next_retry_at: None,
            }),
            WireEvent::GrantQuarantined(e) => Event::GrantQuarantined(e),
            WireEvent::GrantSuspended(e) => Event::GrantSuspended(e),
            WireEvent::GrantResumed(e) => Event::GrantResumed(e),
            WireEvent::DeprovisioningRequested(e) => Event::DeprovisioningRequested(e),
            WireEvent::AccountDeprovisioned(e) => Event::AccountDeprovisioned(e),
            WireEvent::GrantRevoked(e) => Event::GrantRevoked(e),
            WireEvent::DeprovisioningHeld(e) => Event::DeprovisioningHeld(e),
            WireEvent::DeprovisioningConfirmed(e) => Event::DeprovisioningConfirmed(e),
            WireEvent::GrantRetried(e) => Event::GrantRetried(e),
            WireEvent::ProvisioningFailed(e) => Event::ProvisioningFailed(e),
        }
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        postcard::to_stdvec(self).expect("postcard encodes every wire event")
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<WireEvent, postcard::Error> {
        postcard::from_bytes(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_old_provisioning_failure_reads_as_one_without_a_retry() {
        let grant = GrantId::parse("g1").unwrap();
        let old = WireEvent::ProvisioningFailedV1(ProvisioningFailedV1 {
            grant: grant.clone(),
            attempt: 3,
            reason: "http 503".into(),
        });
        let read = WireEvent::from_bytes(&old.to_bytes()).unwrap().upcast();
        assert_eq!(
            read,
            Event::ProvisioningFailed(ProvisioningFailed {
                grant,
                attempt: 3,
                reason: "http 503".into(),
                next_retry_at: None,
            })
        );
    }

    #[test]
    fn current_events_are_written_in_their_newest_form() {
        let event = Event::ProvisioningFailed(ProvisioningFailed {
            grant: GrantId::parse("g1").unwrap(),
            attempt: 1,
            reason: "timeout".into(),
            next_retry_at: Some(Timestamp(5)),
        });
        let wire = WireEvent::from_event(&event);
        assert_eq!(wire.to_bytes()[0], 24, "the V2 variant is appended after every V1 form");
        assert_eq!(wire.upcast(), event);
    }
}
