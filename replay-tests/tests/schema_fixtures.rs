//! Golden byte fixtures: every wire form of every event, and a commit envelope, as released.
//! They must decode forever, and the current forms must still encode to the same bytes.
//!
//! A new wire variant needs a sample below (the exhaustive `match` in `variant` will not
//! compile without one) and a fixture: run with `QM_BLESS_FIXTURES=1` to write fixtures that
//! are missing. Existing fixtures are never rewritten.

use std::path::PathBuf;

use anyhow::{Context, ensure};
use qm_proto::wire::{ProvisioningFailedV1, WireEvent};
use qm_proto::*;
use qm_replay_tests::fixtures::id;

const VARIANTS: usize = 27;

/// The wire index of each variant; exhaustive, so a new variant cannot be forgotten here.
fn variant(event: &WireEvent) -> usize {
    use WireEvent::*;
    match event {
        OrganizationCreated(_) => 0,
        MemberAdded(_) => 1,
        MemberRemoved(_) => 2,
        MemberRoleChanged(_) => 3,
        TeamCreated(_) => 4,
        TeamDeleted(_) => 5,
        TeamMemberAdded(_) => 6,
        TeamMemberRemoved(_) => 7,
        IntegratedAppAdded(_) => 8,
        AppCredentialsUpdated(_) => 9,
        SeatLimitChanged(_) => 10,
        AppAuthorized(_) => 11,
        AppAuthorizationFailed(_) => 12,
        IntegratedAppRemoved(_) => 13,
        GrantRequested(_) => 14,
        AccountProvisioned(_) => 15,
        ProvisioningFailedV1(_) => 16,
        GrantQuarantined(_) => 17,
        GrantSuspended(_) => 18,
        GrantResumed(_) => 19,
        DeprovisioningRequested(_) => 20,
        AccountDeprovisioned(_) => 21,
        GrantRevoked(_) => 22,
        GrantRetried(_) => 23,
        ProvisioningFailed(_) => 24,
        DeprovisioningHeld(_) => 25,
        DeprovisioningConfirmed(_) => 26,
    }
}

fn samples() -> Vec<WireEvent> {
    let sealed = SealedCredentials { key_id: 1, nonce: vec![3; 24], ciphertext: vec![4; 48] };
    let account = ExternalAccount {
        id: "2819c223-7f76-453a-919d-413861904646".into(),
        user_name: "bjensen@example.com".into(),
        open_url: Some("https://crm.example.com/login".into()),
    };
    vec![
        WireEvent::OrganizationCreated(OrganizationCreated {
            org: id("acme"),
            name: "Acme Corp".into(),
        }),
        WireEvent::MemberAdded(MemberAdded {
            person: id("bjensen"),
            email: "bjensen@example.com".into(),
            display_name: "Barbara Jensen".into(),
            role: Role::Member,
        }),
        WireEvent::MemberRemoved(MemberRemoved { person: id("bjensen") }),
        WireEvent::MemberRoleChanged(MemberRoleChanged {
            person: id("bjensen"),
            role: Role::Admin,
        }),
        WireEvent::TeamCreated(TeamCreated { team: id("eng"), name: "Engineering".into() }),
        WireEvent::TeamDeleted(TeamDeleted { team: id("eng") }),
        WireEvent::TeamMemberAdded(TeamMemberAdded { team: id("eng"), person: id("bjensen") }),
        WireEvent::TeamMemberRemoved(TeamMemberRemoved { team: id("eng"), person: id("bjensen") }),
        WireEvent::IntegratedAppAdded(IntegratedAppAdded {
            app: id("crm"),
            catalog_app: "salesforce".into(),
            display_name: "Salesforce".into(),
            base_url: "https://acme.my.salesforce.com/services/scim/v2".into(),
            credentials: sealed.clone(),
            seat_limit: Some(20),
        }),
        WireEvent::AppCredentialsUpdated(AppCredentialsUpdated {
            app: id("crm"),
            credentials: sealed,
        }),
        WireEvent::SeatLimitChanged(SeatLimitChanged { app: id("crm"), seat_limit: None }),
        WireEvent::AppAuthorized(AppAuthorized { app: id("crm") }),
        WireEvent::AppAuthorizationFailed(AppAuthorizationFailed {
            app: id("crm"),
            reason: "401 Unauthorized".into(),
        }),
        WireEvent::IntegratedAppRemoved(IntegratedAppRemoved { app: id("crm") }),
        WireEvent::GrantRequested(GrantRequested {
            grant: id("g1"),
            app: id("crm"),
            person: id("bjensen"),
        }),
        WireEvent::AccountProvisioned(AccountProvisioned { grant: id("g1"), account }),
        WireEvent::ProvisioningFailedV1(ProvisioningFailedV1 {
            grant: id("g1"),
            attempt: 2,
            reason: "http 503".into(),
        }),
        WireEvent::GrantQuarantined(GrantQuarantined {
            grant: id("g1"),
            reason: "http 400: bad userName".into(),
        }),
        WireEvent::GrantSuspended(GrantSuspended { grant: id("g1") }),
        WireEvent::GrantResumed(GrantResumed { grant: id("g1") }),
        WireEvent::DeprovisioningRequested(DeprovisioningRequested {
            grant: id("g1"),
            cause: DeprovisionCause::LeftLastTeam,
        }),
        WireEvent::AccountDeprovisioned(AccountDeprovisioned { grant: id("g1") }),
        WireEvent::GrantRevoked(GrantRevoked {
            grant: id("g1"),
            cause: DeprovisionCause::MemberRemoved,
        }),
        WireEvent::GrantRetried(GrantRetried { grant: id("g1") }),
        WireEvent::ProvisioningFailed(ProvisioningFailed {
            grant: id("g1"),
            attempt: 3,
            reason: "timeout".into(),
            next_retry_at: Some(Timestamp(1_764_000_000_000_000)),
        }),
        WireEvent::DeprovisioningHeld(DeprovisioningHeld {
            grant: id("g1"),
            reason: "12 of 40 accounts of crm on their way out within 10 minutes".into(),
        }),
        WireEvent::DeprovisioningConfirmed(DeprovisioningConfirmed { grant: id("g1") }),
    ]
}

fn sample_commit() -> Commit {
    Commit {
        schema_version: 1,
        org: id("acme"),
        event_id: 0x0192_3b4c_5d6e_7f80_9102_a3b4_c5d6_e7f8,
        recorded_at: Timestamp(1_764_000_000_000_000),
        actor: Actor::Person(id("alice")),
        command_id: id("0192a3b4-c5d6-7e8f-9012-a3b4c5d6e7f8"),
        correlation_id: "req-42".into(),
        causation_id: Some("req-41".into()),
        prev_hash: [0xab; 32],
        // The events the fixture was written with: every variant up to ProvisioningFailed (24).
        events: samples()
            .into_iter()
            .filter(|e| variant(e) <= 24 && !matches!(e, WireEvent::ProvisioningFailedV1(_)))
            .map(WireEvent::upcast)
            .collect(),
    }
}

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures")
}

/// The fixture's bytes; with `QM_BLESS_FIXTURES=1`, a missing fixture is written first.
fn golden(path: PathBuf, current: &[u8]) -> anyhow::Result<Vec<u8>> {
    if !path.exists() && std::env::var_os("QM_BLESS_FIXTURES").is_some() {
        std::fs::write(&path, current)?;
    }
    std::fs::read(&path).with_context(|| {
        format!("missing fixture {} (QM_BLESS_FIXTURES=1 writes it)", path.display())
    })
}

#[test]
fn every_wire_variant_has_a_sample() {
    let mut seen: Vec<usize> = samples().iter().map(variant).collect();
    seen.sort();
    assert_eq!(seen, (0..VARIANTS).collect::<Vec<_>>());
}

#[test]
fn every_event_fixture_decodes_and_current_forms_encode_the_same() -> anyhow::Result<()> {
    for sample in samples() {
        let name = sample.name();
        let bytes = golden(dir().join("events").join(format!("{name}.bin")), &sample.to_bytes())?;
        let decoded =
            WireEvent::from_bytes(&bytes).with_context(|| format!("{name} no longer decodes"))?;
        ensure!(decoded == sample, "{name} decodes to {decoded:?}");
        ensure!(bytes[0] as usize == variant(&sample), "{name} moved in the wire order");
        let upcast = decoded.upcast();
        if !matches!(sample, WireEvent::ProvisioningFailedV1(_)) {
            ensure!(
                WireEvent::from_event(&upcast).to_bytes() == bytes,
                "{name} encodes differently now"
            );
        }
    }
    Ok(())
}

#[test]
fn the_v1_commit_fixture_decodes_and_encodes_the_same() -> anyhow::Result<()> {
    let commit = sample_commit();
    let bytes = golden(dir().join("commits").join("v1.bin"), &commit.encode())?;
    ensure!(Commit::decode(&bytes)? == commit);
    ensure!(commit.encode() == bytes, "the v1 envelope encodes differently now");
    Ok(())
}

#[test]
fn the_v1_provisioning_failure_upcasts_without_a_retry_time() -> anyhow::Result<()> {
    let bytes = std::fs::read(dir().join("events").join("ProvisioningFailedV1.bin"))?;
    let Event::ProvisioningFailed(failed) = WireEvent::from_bytes(&bytes)?.upcast() else {
        anyhow::bail!("V1 did not upcast to ProvisioningFailed");
    };
    ensure!(failed.attempt == 2 && failed.next_retry_at.is_none());
    Ok(())
}
