//! Request validation: every field is checked here or by `decide`, and a bad one is an
//! [`InvalidField`] that names it as the `.proto` file does.

use qm_connectors::catalog::{AuthKind, CatalogApp};
use qm_proto::api::v1;
use qm_proto::*;

use super::errors::InvalidField;
use crate::handler::Request as EngineRequest;
use crate::org::{Command, MAX_SEATS};
use crate::sealing::Secret;

/// The longest credential value accepted, in bytes.
pub const MAX_SECRET: usize = 4096;
pub const MAX_PAGE: u32 = 1000;

/// Parses a required id field.
pub fn id<T: std::str::FromStr<Err = InvalidId>>(
    field: &str,
    raw: &str,
) -> Result<T, InvalidField> {
    raw.parse().map_err(|e: InvalidId| InvalidField::new(field, e))
}

/// The fields every command request carries: the acting person, the optional command id, and
/// the organization.
pub fn envelope_ids(
    actor_id: &str,
    command_id: &str,
    org_id: &str,
) -> Result<(Actor, Option<CommandId>, OrgId), InvalidField> {
    let actor: PersonId = id("actor_id", actor_id)?;
    let command_id = match command_id {
        "" => None,
        raw => Some(id("command_id", raw)?),
    };
    Ok((Actor::Person(actor), command_id, id("org_id", org_id)?))
}

/// A command with the envelope its request carried.
pub fn envelope(
    actor_id: &str,
    command_id: &str,
    org_id: &str,
    command: Command,
) -> Result<EngineRequest, InvalidField> {
    let (actor, command_id, org) = envelope_ids(actor_id, command_id, org_id)?;
    let mut request = EngineRequest::new(org, actor, command);
    request.command_id = command_id;
    Ok(request)
}

pub fn role(field: &str, raw: i32) -> Result<Role, InvalidField> {
    match v1::Role::try_from(raw) {
        Ok(v1::Role::Admin) => Ok(Role::Admin),
        Ok(v1::Role::Member) => Ok(Role::Member),
        Ok(v1::Role::Unspecified) => {
            Err(InvalidField::new(field, "must be ROLE_ADMIN or ROLE_MEMBER"))
        }
        Err(_) => Err(InvalidField::new(field, format!("unknown value {raw}"))),
    }
}

/// An optional seat limit: absent is unlimited; present, between 1 and [`MAX_SEATS`].
pub fn seat_limit(raw: Option<i64>) -> Result<Option<u32>, InvalidField> {
    match raw {
        None => Ok(None),
        Some(n) if n < 1 => Err(InvalidField::new(
            "seat_limit",
            format!("must be at least 1, got {n} (leave it unset for no limit)"),
        )),
        Some(n) if n > MAX_SEATS as i64 => {
            Err(InvalidField::new("seat_limit", format!("must be at most {MAX_SEATS}, got {n}")))
        }
        Some(n) => Ok(Some(n as u32)),
    }
}

/// The credentials a catalog app's auth kind needs, as one secret to seal.
pub fn credentials(
    app: &CatalogApp,
    given: Option<&v1::Credentials>,
) -> Result<Secret, InvalidField> {
    let given = given.ok_or_else(|| InvalidField::new("credentials", "are required"))?;
    let fields: &[(&str, &str)] = &[
        ("bearer_token", &given.bearer_token),
        ("username", &given.username),
        ("password", &given.password),
        ("client_id", &given.client_id),
        ("client_secret", &given.client_secret),
        ("token_url", &given.token_url),
    ];
    let needed: &[&str] = match app.auth {
        AuthKind::BearerToken => &["bearer_token"],
        AuthKind::Basic => &["username", "password"],
        AuthKind::OAuthClientCredentials => &["client_id", "client_secret", "token_url"],
    };
    let mut secret = serde_json::Map::new();
    for (name, value) in fields {
        let field = format!("credentials.{name}");
        if value.len() > MAX_SECRET {
            return Err(InvalidField::new(field, format!("must be at most {MAX_SECRET} bytes")));
        }
        if value.chars().any(char::is_control) {
            return Err(InvalidField::new(field, "must not contain control characters"));
        }
        match (needed.contains(name), value.is_empty()) {
            (true, true) => {
                return Err(InvalidField::new(field, format!("is required by {}", app.name)));
            }
            (false, false) => {
                return Err(InvalidField::new(field, format!("is not used by {}", app.name)));
            }
            (true, false) => {
                secret.insert((*name).to_string(), serde_json::Value::String((*value).to_string()));
            }
            (false, true) => {}
        }
    }
    if let Some(url) = needed.contains(&"token_url").then_some(&given.token_url)
        && !url.starts_with("https://")
    {
        return Err(InvalidField::new("credentials.token_url", "must be an https URL"));
    }
    Ok(Secret::new(serde_json::Value::Object(secret).to_string()))
}

/// The catalog entry named by a request.
pub fn catalog_app(raw: &str) -> Result<&'static CatalogApp, InvalidField> {
    qm_connectors::catalog::find(raw).ok_or_else(|| {
        InvalidField::new(
            "catalog_app",
            format!("{raw:?} is not in the catalog (see ListCatalogApps)"),
        )
    })
}

pub fn page(size: u32, token: &str) -> Result<qm_projections::PageRequest, InvalidField> {
    if size > MAX_PAGE {
        return Err(InvalidField::new(
            "page_size",
            format!("must be at most {MAX_PAGE}, got {size}"),
        ));
    }
    Ok(qm_projections::PageRequest {
        size: size as usize,
        token: (!token.is_empty()).then(|| token.to_string()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seat_limits_must_be_positive_and_bounded() {
        assert_eq!(seat_limit(None), Ok(None));
        assert_eq!(seat_limit(Some(5)), Ok(Some(5)));
        assert_eq!(seat_limit(Some(-1)).unwrap_err().field, "seat_limit");
        assert_eq!(seat_limit(Some(0)).unwrap_err().field, "seat_limit");
        assert!(seat_limit(Some(i64::MAX)).is_err());
    }

    #[test]
    fn credentials_must_fit_the_apps_auth_kind() {
        let slack = qm_connectors::catalog::find("slack").unwrap();
        let token = v1::Credentials { bearer_token: "t".into(), ..Default::default() };
        assert_eq!(credentials(slack, Some(&token)).unwrap().expose(), r#"{"bearer_token":"t"}"#);
        let basic = v1::Credentials { username: "u".into(), ..Default::default() };
        assert_eq!(credentials(slack, Some(&basic)).unwrap_err().field, "credentials.bearer_token");
        assert_eq!(credentials(slack, None).unwrap_err().field, "credentials");
        let both = v1::Credentials {
            bearer_token: "t".into(),
            password: "p".into(),
            ..Default::default()
        };
        assert_eq!(credentials(slack, Some(&both)).unwrap_err().field, "credentials.password");
    }

    #[test]
    fn roles_reject_unspecified_and_unknown_values() {
        assert_eq!(role("role", 1), Ok(Role::Admin));
        assert_eq!(role("role", 0).unwrap_err().field, "role");
        assert!(role("role", 42).unwrap_err().reason.contains("unknown value 42"));
    }
}
