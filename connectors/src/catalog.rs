//! The catalog: apps that give one account per person, and how Quartermaster reaches them.
//!
//! An admin attaches an integrated app from this list. Each entry says which connector talks
//! to the app, the shape of its API base URL (with `{placeholders}` the admin fills in), how
//! it authenticates, and what deprovisioning means there. The catalog only grows: history
//! refers to entries by key, so a key is never removed or reused.

use serde::Serialize;

/// How Quartermaster authenticates to an app.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum AuthKind {
    /// A long-lived bearer token issued by the app.
    BearerToken,
    /// HTTP basic authentication with a user name and password.
    Basic,
    /// OAuth 2.0 client credentials exchanged for short-lived tokens.
    OAuthClientCredentials,
}

/// What taking an account away means in an app.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum DeprovisionPolicy {
    /// `PATCH active=false`: the account stays, locked, and can be reactivated.
    Deactivate,
    /// `DELETE`: the account is gone.
    Delete,
}

/// The protocol a connector speaks to the app.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum ConnectorKind {
    Scim2,
}

/// One entry of the catalog.
#[derive(Debug, Clone, Serialize)]
pub struct CatalogApp {
    pub key: &'static str,
    pub name: &'static str,
    pub connector: ConnectorKind,
    /// The API base URL, `{name}` standing for a part the admin supplies.
    pub base_url_pattern: &'static str,
    pub auth: AuthKind,
    pub deprovision: DeprovisionPolicy,
    /// Where people sign in, shown on their launchpad.
    pub sign_in_url: &'static str,
}

/// Why a base URL does not fit a catalog entry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{url:?} does not match {pattern:?}")]
pub struct BaseUrlMismatch {
    pub url: String,
    pub pattern: &'static str,
}

const fn scim(
    key: &'static str,
    name: &'static str,
    base_url_pattern: &'static str,
    auth: AuthKind,
    deprovision: DeprovisionPolicy,
    sign_in_url: &'static str,
) -> CatalogApp {
    CatalogApp {
        key,
        name,
        connector: ConnectorKind::Scim2,
        base_url_pattern,
        auth,
        deprovision,
        sign_in_url,
    }
}

use AuthKind::*;
use DeprovisionPolicy::*;

/// The key of the entry that accepts any SCIM 2.0 service provider.
pub const CUSTOM_SCIM: &str = "custom-scim";

static CATALOG: &[CatalogApp] = &[
    scim(
        "salesforce",
        "Salesforce",
        "https://{instance}.my.salesforce.com/services/scim/v2",
        OAuthClientCredentials,
        Deactivate,
        "https://login.salesforce.com",
    ),
    scim(
        "slack",
        "Slack",
        "https://api.slack.com/scim/v2",
        BearerToken,
        Deactivate,
        "https://slack.com/signin",
    ),
    scim(
        "github",
        "GitHub Enterprise",
        "https://api.github.com/scim/v2/enterprises/{enterprise}",
        BearerToken,
        Deactivate,
        "https://github.com/login",
    ),
    scim(
        "zoom",
        "Zoom",
        "https://api.zoom.us/scim2",
        OAuthClientCredentials,
        Deactivate,
        "https://zoom.us/signin",
    ),
    scim(
        "atlassian",
        "Atlassian Cloud",
        "https://api.atlassian.com/scim/directory/{directory}",
        BearerToken,
        Deactivate,
        "https://id.atlassian.com/login",
    ),
    scim(
        "asana",
        "Asana",
        "https://app.asana.com/api/1.0/scim",
        BearerToken,
        Deactivate,
        "https://app.asana.com",
    ),
    scim(
        "figma",
        "Figma",
        "https://www.figma.com/scim/v2/{tenant}",
        BearerToken,
        Deactivate,
        "https://www.figma.com/login",
    ),
    scim(
        "notion",
        "Notion",
        "https://api.notion.com/scim/v2",
        BearerToken,
        Delete,
        "https://www.notion.so/login",
    ),
    scim(
        "miro",
        "Miro",
        "https://miro.com/api/v1/scim",
        BearerToken,
        Deactivate,
        "https://miro.com/login",
    ),
    scim(
        "databricks",
        "Databricks",
        "https://{workspace}.cloud.databricks.com/api/2.0/preview/scim/v2",
        BearerToken,
        Deactivate,
        "https://{workspace}.cloud.databricks.com",
    ),
    scim(
        "snowflake",
        "Snowflake",
        "https://{account}.snowflakecomputing.com/scim/v2",
        BearerToken,
        Deactivate,
        "https://{account}.snowflakecomputing.com",
    ),
    scim(CUSTOM_SCIM, "Custom SCIM 2.0 app", "{url}", BearerToken, Deactivate, ""),
];

/// Every catalog entry, in display order.
pub fn all() -> &'static [CatalogApp] {
    CATALOG
}

/// The entry with this key.
pub fn find(key: &str) -> Option<&'static CatalogApp> {
    CATALOG.iter().find(|app| app.key == key)
}

impl CatalogApp {
    /// Checks that `url` is this app's base URL pattern with every placeholder filled by a
    /// host-safe word. The custom entry takes any `https` URL, and `http` only on loopback.
    pub fn check_base_url(&self, url: &str) -> Result<(), BaseUrlMismatch> {
        let mismatch = || BaseUrlMismatch { url: url.to_string(), pattern: self.base_url_pattern };
        if self.key == CUSTOM_SCIM {
            return if is_custom_url(url) { Ok(()) } else { Err(mismatch()) };
        }
        if matches_pattern(self.base_url_pattern, url.trim_end_matches('/')) {
            Ok(())
        } else {
            Err(mismatch())
        }
    }
}

fn is_custom_url(url: &str) -> bool {
    let rest = if let Some(rest) = url.strip_prefix("https://") {
        rest
    } else if let Some(rest) = url.strip_prefix("http://") {
        // Plain HTTP would send the app's credentials in the clear; only a local app may use it.
        let host = rest.split(['/', ':']).next().unwrap_or("");
        if !(host == "127.0.0.1" || host == "localhost" || rest.starts_with("[::1]")) {
            return false;
        }
        rest
    } else {
        return false;
    };
    !rest.is_empty()
        && rest.len() <= 2000
        && !rest.starts_with('/')
        && rest.chars().all(|c| c.is_ascii_graphic())
}

fn matches_pattern(pattern: &str, url: &str) -> bool {
    match pattern.find('{') {
        None => pattern == url,
        Some(open) => {
            let Some(close) = pattern[open..].find('}').map(|i| open + i) else {
                return false;
            };
            let (prefix, suffix) = (&pattern[..open], &pattern[close + 1..]);
            let Some(rest) = url.strip_prefix(prefix) else { return false };
            // A placeholder is one word: it never spans a '.' or '/', so it cannot move the host.
            let word_len = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '_'))
                .unwrap_or(rest.len());
            word_len > 0 && matches_pattern(suffix, &rest[word_len..])
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn has_at_least_eight_real_apps_and_a_custom_one() {
        assert!(all().iter().filter(|a| a.key != CUSTOM_SCIM).count() >= 8);
        assert!(find(CUSTOM_SCIM).is_some());
    }

    #[test]
    fn keys_are_unique() {
        let mut keys: Vec<_> = all().iter().map(|a| a.key).collect();
        keys.sort();
        keys.dedup();
        assert_eq!(keys.len(), all().len());
    }

    #[test]
    fn base_urls_must_fill_the_pattern_with_one_word() {
        let sf = find("salesforce").unwrap();
        assert!(sf.check_base_url("https://acme.my.salesforce.com/services/scim/v2").is_ok());
        assert!(
            sf.check_base_url("https://evil.com/x.my.salesforce.com/services/scim/v2").is_err()
        );
        assert!(sf.check_base_url("https://a.b.my.salesforce.com/services/scim/v2").is_err());
        assert!(find("slack").unwrap().check_base_url("https://api.slack.com/scim/v2/").is_ok());
    }

    #[test]
    fn custom_apps_use_https_or_loopback_http() {
        let custom = find(CUSTOM_SCIM).unwrap();
        assert!(custom.check_base_url("https://scim.example.com/v2").is_ok());
        assert!(custom.check_base_url("http://127.0.0.1:8080/scim/v2").is_ok());
        assert!(custom.check_base_url("http://scim.example.com/v2").is_err());
        assert!(custom.check_base_url("ftp://x").is_err());
        assert!(custom.check_base_url("https://").is_err());
    }
}
