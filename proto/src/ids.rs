//! Identifiers of the domain, checked once where they enter the system.
//!
//! Every id is a short printable string chosen by the caller (organizations, people, teams,
//! integrated apps) or by the engine (grants, commands). The same rules apply everywhere, so a
//! subject such as `qm.ev.org.<org>` can never be broken by an id: no spaces, no `.`, `*`, `>`.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The longest id accepted, in bytes.
pub const MAX_ID_LEN: usize = 64;

/// Why a string is not a valid id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidId {
    #[error("must not be empty")]
    Empty,
    #[error("must be at most {MAX_ID_LEN} bytes, got {0}")]
    TooLong(usize),
    #[error("must contain only letters, digits, '-', '_' and '@', got {0:?}")]
    BadCharacter(char),
}

fn check_id(raw: &str) -> Result<(), InvalidId> {
    if raw.is_empty() {
        return Err(InvalidId::Empty);
    }
    if raw.len() > MAX_ID_LEN {
        return Err(InvalidId::TooLong(raw.len()));
    }
    // NATS subject tokens must not contain '.', '*', '>' or whitespace; ids become subject tokens.
    match raw.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '@'))) {
        Some(c) => Err(InvalidId::BadCharacter(c)),
        None => Ok(()),
    }
}

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            /// Checks `raw` against the id rules.
            pub fn parse(raw: impl Into<String>) -> Result<Self, InvalidId> {
                let raw = raw.into();
                check_id(&raw)?;
                Ok(Self(raw))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({:?})", stringify!($name), self.0)
            }
        }

        impl std::str::FromStr for $name {
            type Err = InvalidId;

            fn from_str(raw: &str) -> Result<Self, InvalidId> {
                Self::parse(raw)
            }
        }
    };
}

id_type!(
    /// An organization: the consistency boundary of the write side.
    OrgId
);
id_type!(
    /// A person, identified by the calling service's own user id.
    PersonId
);
id_type!(
    /// A team of an organization.
    TeamId
);
id_type!(
    /// An integrated app: a catalog app attached to one organization.
    AppId
);
id_type!(
    /// A grant: one person's account in one integrated app.
    GrantId
);
id_type!(
    /// The idempotency key of a command, chosen by the caller or by the engine.
    CommandId
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_ordinary_ids() {
        assert_eq!(OrgId::parse("acme-corp_2").unwrap().as_str(), "acme-corp_2");
        assert!(PersonId::parse("bob@acme").is_ok());
    }

    #[test]
    fn rejects_ids_that_would_break_a_subject() {
        assert_eq!(OrgId::parse("a.b"), Err(InvalidId::BadCharacter('.')));
        assert_eq!(OrgId::parse("a>"), Err(InvalidId::BadCharacter('>')));
        assert_eq!(OrgId::parse("a b"), Err(InvalidId::BadCharacter(' ')));
        assert_eq!(OrgId::parse(""), Err(InvalidId::Empty));
        assert_eq!(OrgId::parse("x".repeat(65)), Err(InvalidId::TooLong(65)));
    }
}
