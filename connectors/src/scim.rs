//! The SCIM 2.0 connector (RFC 7643 resources, RFC 7644 protocol).
//!
//! Accounts are `User` resources: `userName` is the person's email, `externalId` the grant id,
//! `active` whether they may sign in. What real service providers do differently from the RFC
//! is absorbed here: ids sent as numbers, `active` sent as a string, `resources` in lower case,
//! `Retry-After` as seconds or as a date, PATCH refused (then PUT), a trailing `/` on the base.

use std::time::{Duration, Instant};

use futures::FutureExt;
use futures::future::BoxFuture;
use reqwest::{Method, StatusCode, header};
use serde_json::{Value, json};

use crate::connector::{Account, Connector, ConnectorError, ConnectorResult, NewAccount};
use crate::credentials::Credentials;

const USER_SCHEMA: &str = "urn:ietf:params:scim:schemas:core:2.0:User";
const PATCH_SCHEMA: &str = "urn:ietf:params:scim:api:messages:2.0:PatchOp";
const SCIM_JSON: &str = "application/scim+json";

/// An OAuth token is renewed this long before the app said it expires.
const TOKEN_MARGIN: Duration = Duration::from_secs(30);

/// Builds the HTTP client connectors share: rustls, and `timeout` for every whole call.
pub fn http_client(timeout: Duration) -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout)
        .pool_max_idle_per_host(64)
        .user_agent(concat!("quartermaster/", env!("CARGO_PKG_VERSION")))
        .build()
        .expect("the TLS backend is compiled in")
}

/// A SCIM 2.0 service provider, for one organization's integrated app.
pub struct ScimConnector {
    client: reqwest::Client,
    /// The base URL without a trailing `/`.
    base: String,
    credentials: Credentials,
    token: tokio::sync::Mutex<Option<(String, Instant)>>,
}

impl std::fmt::Debug for ScimConnector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The cached OAuth token stays out; the credentials print themselves redacted.
        f.debug_struct("ScimConnector")
            .field("base", &self.base)
            .field("credentials", &self.credentials)
            .finish_non_exhaustive()
    }
}

/// One answer, read whole.
struct Answer {
    status: StatusCode,
    body: Value,
}

impl ScimConnector {
    pub fn new(client: reqwest::Client, base_url: &str, credentials: Credentials) -> ScimConnector {
        ScimConnector {
            client,
            base: base_url.trim_end_matches('/').to_string(),
            credentials,
            token: tokio::sync::Mutex::new(None),
        }
    }

    async fn authorization(&self) -> ConnectorResult<String> {
        match &self.credentials {
            Credentials::Bearer { token } => Ok(format!("Bearer {token}")),
            Credentials::Basic { username, password } => {
                Ok(format!("Basic {}", base64(format!("{username}:{password}").as_bytes())))
            }
            Credentials::OAuthClientCredentials { client_id, client_secret, token_url } => {
                let mut cached = self.token.lock().await;
                if let Some((token, until)) = cached.as_ref()
                    && Instant::now() < *until
                {
                    return Ok(format!("Bearer {token}"));
                }
                let (token, lifetime) =
                    self.fetch_token(client_id, client_secret, token_url).await?;
                let until = Instant::now() + lifetime.saturating_sub(TOKEN_MARGIN);
                *cached = Some((token.clone(), until));
                Ok(format!("Bearer {token}"))
            }
        }
    }

    /// The client-credentials grant of RFC 6749 section 4.4.
    async fn fetch_token(
        &self,
        client_id: &str,
        client_secret: &str,
        token_url: &str,
    ) -> ConnectorResult<(String, Duration)> {
        let response = self
            .client
            .post(token_url)
            .basic_auth(client_id, Some(client_secret))
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body("grant_type=client_credentials")
            .send()
            .await
            .map_err(|e| transport("token request", &e))?;
        let status = response.status();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS {
            return Err(ConnectorError::transient(format!("token endpoint answered {status}")));
        }
        let Some(token) = body.get("access_token").and_then(Value::as_str) else {
            let why = body.get("error").and_then(Value::as_str).unwrap_or("no access_token");
            return Err(ConnectorError::Unauthorized(format!(
                "token endpoint answered {status}: {why}"
            )));
        };
        let lifetime = body.get("expires_in").and_then(Value::as_u64).unwrap_or(3600);
        Ok((token.to_string(), Duration::from_secs(lifetime)))
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> ConnectorResult<Answer> {
        // Reasons end up in the history: the query (a filter on a person's email) stays out.
        let what = format!("{method} {}", path.split('?').next().unwrap_or(path));
        let mut request = self
            .client
            .request(method, format!("{}{path}", self.base))
            .header(header::AUTHORIZATION, self.authorization().await?)
            .header(header::ACCEPT, format!("{SCIM_JSON}, application/json"));
        if let Some(body) = body {
            request = request.header(header::CONTENT_TYPE, SCIM_JSON).body(body.to_string());
        }
        let response = request.send().await.map_err(|e| transport(&what, &e))?;
        let status = response.status();
        let retry_after = response
            .headers()
            .get(header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_retry_after);
        let bytes = response.bytes().await.map_err(|e| transport(&what, &e))?;
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        let answer = Answer { status, body };
        match status {
            s if s.is_success() => Ok(answer),
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                // An OAuth token the app stopped taking is fetched anew next time.
                *self.token.lock().await = None;
                Err(ConnectorError::Unauthorized(describe(&what, &answer)))
            }
            StatusCode::TOO_MANY_REQUESTS | StatusCode::REQUEST_TIMEOUT => {
                Err(ConnectorError::Transient { reason: describe(&what, &answer), retry_after })
            }
            s if s.is_server_error() => {
                Err(ConnectorError::Transient { reason: describe(&what, &answer), retry_after })
            }
            // The caller decides what a 404 or 409 means for its call.
            _ => Ok(answer),
        }
    }

    async fn search(&self, attribute: &str, value: &str) -> ConnectorResult<Option<Account>> {
        let filter =
            format!("{attribute} eq \"{}\"", value.replace('\\', "\\\\").replace('"', "\\\""));
        let path = format!("/Users?filter={}&startIndex=1&count=2", encode(&filter));
        let answer = self.call(Method::GET, &path, None).await?;
        if !answer.status.is_success() {
            return Err(ConnectorError::Rejected(describe(
                &format!("search by {attribute}"),
                &answer,
            )));
        }
        let resources = answer
            .body
            .get("Resources")
            .or_else(|| answer.body.get("resources"))
            .and_then(Value::as_array);
        // A provider that ignores a filter it does not support answers with other users:
        // only an exact match counts.
        let matches = |account: &Account| match attribute {
            "externalId" => account.external_id.as_deref() == Some(value),
            _ => account.user_name.eq_ignore_ascii_case(value),
        };
        Ok(resources.into_iter().flatten().filter_map(account_of).find(matches))
    }

    async fn set_active(
        &self,
        id: &str,
        active: bool,
        external_id: Option<&str>,
    ) -> ConnectorResult<()> {
        let path = format!("/Users/{}", encode(id));
        let mut operations = vec![json!({"op": "replace", "path": "active", "value": active})];
        if let Some(external_id) = external_id {
            operations.push(json!({"op": "replace", "path": "externalId", "value": external_id}));
        }
        let patch = json!({"schemas": [PATCH_SCHEMA], "Operations": operations});
        let answer = self.call(Method::PATCH, &path, Some(patch)).await?;
        match answer.status {
            s if s.is_success() => Ok(()),
            // Nothing left to lock.
            StatusCode::NOT_FOUND if !active => Ok(()),
            // Some providers take no PATCH: replace the whole resource instead.
            StatusCode::METHOD_NOT_ALLOWED | StatusCode::NOT_IMPLEMENTED => {
                let current = self.call(Method::GET, &path, None).await?;
                if current.status == StatusCode::NOT_FOUND && !active {
                    return Ok(());
                }
                if !current.body.is_object() {
                    return Err(ConnectorError::Rejected(describe(
                        &format!("GET {path}"),
                        &current,
                    )));
                }
                let mut resource = current.body;
                let fields = resource.as_object_mut().expect("checked to be an object");
                fields.insert("active".into(), Value::Bool(active));
                if let Some(external_id) = external_id {
                    fields.insert("externalId".into(), Value::String(external_id.into()));
                }
                fields.remove("meta");
                let put = self.call(Method::PUT, &path, Some(resource)).await?;
                if put.status.is_success() {
                    Ok(())
                } else {
                    Err(ConnectorError::Rejected(describe(&format!("PUT {path}"), &put)))
                }
            }
            _ => Err(ConnectorError::Rejected(describe(&format!("PATCH {path}"), &answer))),
        }
    }
}

impl Connector for ScimConnector {
    fn verify(&self) -> BoxFuture<'_, ConnectorResult<()>> {
        async move {
            // ServiceProviderConfig may be served without authentication (RFC 7644 §4): only
            // a read of the users proves the credentials.
            let answer = self.call(Method::GET, "/Users?startIndex=1&count=1", None).await?;
            if answer.status.is_success() {
                Ok(())
            } else {
                Err(ConnectorError::Rejected(describe("GET /Users", &answer)))
            }
        }
        .boxed()
    }

    fn create<'a>(&'a self, account: &'a NewAccount) -> BoxFuture<'a, ConnectorResult<Account>> {
        async move {
            let (given, family) = split_name(&account.display_name);
            let user = json!({
                "schemas": [USER_SCHEMA],
                "externalId": account.external_id,
                "userName": account.user_name,
                "displayName": account.display_name,
                "name": {"formatted": account.display_name, "givenName": given, "familyName": family},
                "emails": [{"value": account.email, "type": "work", "primary": true}],
                "active": true,
            });
            let answer = self.call(Method::POST, "/Users", Some(user)).await?;
            if answer.status.is_success() {
                return account_of(&answer.body).ok_or_else(|| {
                    ConnectorError::Rejected("the created user came back without an id".into())
                });
            }
            if answer.status != StatusCode::CONFLICT {
                return Err(ConnectorError::Rejected(describe("POST /Users", &answer)));
            }
            // The user name is taken: the account exists (a retried create, or the person had
            // one before). Link it, active and tied to this grant.
            let existing = match self.search("userName", &account.user_name).await? {
                Some(found) => found,
                None => self.search("externalId", &account.external_id).await?.ok_or_else(|| {
                    ConnectorError::Rejected(describe("POST /Users (conflict, yet no such user)", &answer))
                })?,
            };
            if !existing.active || existing.external_id.as_deref() != Some(&account.external_id) {
                self.set_active(&existing.id, true, Some(&account.external_id)).await?;
            }
            Ok(Account { active: true, external_id: Some(account.external_id.clone()), ..existing })
        }
        .boxed()
    }

    fn find<'a>(&'a self, external_id: &'a str) -> BoxFuture<'a, ConnectorResult<Option<Account>>> {
        self.search("externalId", external_id).boxed()
    }

    fn deactivate<'a>(&'a self, id: &'a str) -> BoxFuture<'a, ConnectorResult<()>> {
        self.set_active(id, false, None).boxed()
    }

    fn reactivate<'a>(
        &'a self,
        id: &'a str,
        external_id: &'a str,
    ) -> BoxFuture<'a, ConnectorResult<()>> {
        self.set_active(id, true, Some(external_id)).boxed()
    }

    fn delete<'a>(&'a self, id: &'a str) -> BoxFuture<'a, ConnectorResult<()>> {
        async move {
            let path = format!("/Users/{}", encode(id));
            let answer = self.call(Method::DELETE, &path, None).await?;
            match answer.status {
                s if s.is_success() => Ok(()),
                StatusCode::NOT_FOUND => Ok(()),
                _ => Err(ConnectorError::Rejected(describe(&format!("DELETE {path}"), &answer))),
            }
        }
        .boxed()
    }
}

/// A `User` resource as an [`Account`], reading ids sent as numbers and `active` as a string.
fn account_of(user: &Value) -> Option<Account> {
    let text = |v: &Value| match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    };
    let id = user.get("id").and_then(text)?;
    let active = match user.get("active") {
        Some(Value::Bool(b)) => *b,
        Some(Value::String(s)) => !s.eq_ignore_ascii_case("false"),
        _ => true,
    };
    Some(Account {
        id,
        user_name: user.get("userName").and_then(text).unwrap_or_default(),
        external_id: user.get("externalId").and_then(text),
        active,
    })
}

/// "Ada Lovelace" → ("Ada", "Lovelace"); one word is a given name.
fn split_name(display: &str) -> (&str, &str) {
    match display.trim().split_once(' ') {
        Some((given, family)) => (given, family.trim()),
        None => (display.trim(), ""),
    }
}

/// What went wrong, with the SCIM error's own words when there are some.
fn describe(what: &str, answer: &Answer) -> String {
    let detail = answer.body.get("detail").and_then(Value::as_str);
    let scim_type = answer.body.get("scimType").and_then(Value::as_str);
    let mut text = format!("{what} answered {}", answer.status);
    if let Some(scim_type) = scim_type {
        text.push_str(&format!(" ({scim_type})"));
    }
    if let Some(detail) = detail {
        text.push_str(": ");
        text.extend(detail.chars().take(300));
    }
    text
}

fn transport(what: &str, e: &reqwest::Error) -> ConnectorError {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "could not connect"
    } else {
        "failed"
    };
    // `without_url` keeps query strings (filters with user names) out of the reason.
    let mut source: Option<&dyn std::error::Error> = Some(e);
    let mut cause = String::new();
    while let Some(s) = source {
        cause = s.to_string();
        source = s.source();
    }
    ConnectorError::transient(format!("{what} {kind}: {cause}"))
}

/// `Retry-After`: delay-seconds or an HTTP-date (RFC 9110 §10.2.3).
fn parse_retry_after(value: &str) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(std::time::SystemTime::now()).unwrap_or_default())
}

/// Percent-encodes all but the unreserved characters of RFC 3986, for a query value or a path
/// segment.
fn encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n =
            chunk.iter().enumerate().fold(0u32, |n, (i, b)| n | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_quirks_of_real_providers() {
        let numeric = json!({"id": 42, "userName": "ada@x.io", "active": "False"});
        let account = account_of(&numeric).unwrap();
        assert_eq!((account.id.as_str(), account.active), ("42", false));
        assert_eq!(account_of(&json!({"userName": "no id"})), None);
        assert!(account_of(&json!({"id": "a"})).unwrap().active, "no `active` means active");
    }

    #[test]
    fn retry_after_takes_seconds_or_a_date() {
        assert_eq!(parse_retry_after(" 7 "), Some(Duration::from_secs(7)));
        let past = httpdate::fmt_http_date(std::time::UNIX_EPOCH + Duration::from_secs(1));
        assert_eq!(parse_retry_after(&past), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("soon"), None);
    }

    #[test]
    fn encodes_basic_credentials_and_filters() {
        assert_eq!(base64(b"Aladdin:open sesame"), "QWxhZGRpbjpvcGVuIHNlc2FtZQ==");
        assert_eq!(base64(b"ab"), "YWI=");
        assert_eq!(encode(r#"externalId eq "g 1""#), "externalId%20eq%20%22g%201%22");
    }

    #[test]
    fn splits_display_names() {
        assert_eq!(split_name("Ada Lovelace"), ("Ada", "Lovelace"));
        assert_eq!(split_name("Plato"), ("Plato", ""));
    }
}
