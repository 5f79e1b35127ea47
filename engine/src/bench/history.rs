//! Synthetic histories: deterministic, valid organization histories of any length, for
//! benchmarks and for tests that need many events fast.
//!
//! Organizations take turns, one commit each. Each is created with an admin, a team and an
//! authorized app; then, person after person, a member joins the team, is provisioned, gets an
//! account, is suspended and resumed, and every fourth person is deprovisioned again. Every
//! commit is one the aggregate would accept, and each organization's commits form a hash chain.

use async_nats::jetstream::message::PublishMessage;
use qm_proto::*;

use crate::log::jetstream::JetStreamLog;

#[derive(Debug, Clone)]
struct OrgCursor {
    org: OrgId,
    prev: Hash,
    step: u64,
}

/// An endless sequence of valid commits over `orgs` organizations.
#[derive(Debug, Clone)]
pub struct Synthetic {
    orgs: Vec<OrgCursor>,
    next: usize,
    serial: u64,
    prefix: String,
}

fn id<T: std::str::FromStr>(raw: &str) -> T
where
    T::Err: std::fmt::Debug,
{
    raw.parse().expect("synthetic ids are valid")
}

impl Synthetic {
    /// `prefix` keeps the organization ids and command ids of two runs apart.
    pub fn new(prefix: &str, orgs: usize) -> Synthetic {
        let orgs = (0..orgs.max(1))
            .map(|i| OrgCursor { org: id(&format!("{prefix}-o{i}")), prev: GENESIS_HASH, step: 0 })
            .collect();
        Synthetic { orgs, next: 0, serial: 0, prefix: prefix.to_string() }
    }

    pub fn org_ids(&self) -> impl Iterator<Item = &OrgId> {
        self.orgs.iter().map(|c| &c.org)
    }

    fn events(org: &OrgId, step: u64) -> Vec<Event> {
        let admin: PersonId = id("admin");
        match step {
            0 => vec![
                Event::OrganizationCreated(OrganizationCreated {
                    org: org.clone(),
                    name: format!("Synthetic {org}"),
                }),
                Event::MemberAdded(MemberAdded {
                    person: admin,
                    email: "admin@synthetic.example".into(),
                    display_name: "Admin".into(),
                    role: Role::Admin,
                }),
            ],
            1 => vec![Event::TeamCreated(TeamCreated {
                team: id("eng"),
                name: "Engineering".into(),
            })],
            2 => vec![Event::IntegratedAppAdded(IntegratedAppAdded {
                app: id("crm"),
                catalog_app: "custom-scim".into(),
                display_name: "CRM".into(),
                base_url: "https://scim.synthetic.example/v2".into(),
                credentials: SealedCredentials {
                    key_id: 1,
                    nonce: vec![0; 24],
                    ciphertext: vec![0; 48],
                },
                seat_limit: None,
            })],
            3 => vec![Event::AppAuthorized(AppAuthorized { app: id("crm") })],
            _ => {
                // Eight steps per person; every fourth person is deprovisioned in the last two,
                // the others are suspended and resumed once more.
                let (person, phase) = ((step - 4) / 8, (step - 4) % 8);
                let p: PersonId = id(&format!("{org}-p{person}"));
                let g: GrantId = id(&format!("g{person}"));
                let leaves = person % 4 == 3;
                match phase {
                    0 => vec![Event::MemberAdded(MemberAdded {
                        person: p.clone(),
                        email: format!("{p}@synthetic.example"),
                        display_name: format!("Person {person}"),
                        role: Role::Member,
                    })],
                    1 => {
                        vec![Event::TeamMemberAdded(TeamMemberAdded { team: id("eng"), person: p })]
                    }
                    2 => vec![Event::GrantRequested(GrantRequested {
                        grant: g,
                        app: id("crm"),
                        person: p,
                    })],
                    3 => vec![Event::AccountProvisioned(AccountProvisioned {
                        account: ExternalAccount {
                            id: format!("u-{person}"),
                            user_name: format!("{org}-p{person}@synthetic.example"),
                            open_url: None,
                        },
                        grant: g,
                    })],
                    4 => vec![Event::GrantSuspended(GrantSuspended { grant: g })],
                    5 => vec![Event::GrantResumed(GrantResumed { grant: g })],
                    6 if leaves => vec![Event::DeprovisioningRequested(DeprovisioningRequested {
                        grant: g,
                        cause: DeprovisionCause::Requested,
                    })],
                    7 if leaves => vec![
                        Event::AccountDeprovisioned(AccountDeprovisioned { grant: g.clone() }),
                        Event::GrantRevoked(GrantRevoked {
                            grant: g,
                            cause: DeprovisionCause::Requested,
                        }),
                    ],
                    6 => vec![Event::GrantSuspended(GrantSuspended { grant: g })],
                    _ => vec![Event::GrantResumed(GrantResumed { grant: g })],
                }
            }
        }
    }
}

impl Iterator for Synthetic {
    type Item = (Commit, Vec<u8>);

    /// The next commit and its bytes.
    fn next(&mut self) -> Option<(Commit, Vec<u8>)> {
        let index = self.next;
        self.next = (self.next + 1) % self.orgs.len();
        let cursor = &mut self.orgs[index];
        self.serial += 1;
        let command = format!("{}-c{}", self.prefix, self.serial);
        let commit = Commit {
            schema_version: SCHEMA_VERSION,
            org: cursor.org.clone(),
            event_id: self.serial as u128,
            recorded_at: Timestamp(1_764_000_000_000_000 + self.serial as i64 * 1000),
            actor: Actor::Person(id("admin")),
            command_id: id(&command),
            correlation_id: command,
            causation_id: None,
            prev_hash: cursor.prev,
            events: Self::events(&cursor.org, cursor.step),
        };
        cursor.step += 1;
        let bytes = commit.encode();
        cursor.prev = commit_hash(&bytes);
        Some((commit, bytes))
    }
}

/// Publishes commits until `events` events were written, pipelined, as the only writer.
/// Returns the number of commits.
pub async fn publish(
    log: &JetStreamLog,
    history: &mut Synthetic,
    events: usize,
) -> anyhow::Result<usize> {
    let prefix = &log.config().subject_prefix;
    let (mut written, mut commits) = (0, 0);
    let mut pending = Vec::with_capacity(4096);
    while written < events {
        let (commit, bytes) = history.next().expect("synthetic histories never end");
        written += commit.events.len();
        commits += 1;
        let publish =
            PublishMessage::build().payload(bytes.into()).message_id(commit.command_id.as_str());
        let subject = crate::log::org_subject(prefix, &commit.org);
        pending.push(log.context().send_publish(subject, publish).await?);
        if pending.len() == 4096 {
            for ack in pending.drain(..) {
                ack.await?;
            }
        }
    }
    for ack in pending {
        ack.await?;
    }
    Ok(commits)
}
