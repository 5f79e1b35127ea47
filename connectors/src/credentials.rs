//! An app's credentials, as the provisioner holds them after opening the sealed bytes.

use serde::Deserialize;

/// How to authenticate to one integrated app. `Debug` never shows a secret.
#[derive(Clone, PartialEq, Eq)]
pub enum Credentials {
    Bearer { token: String },
    Basic { username: String, password: String },
    OAuthClientCredentials { client_id: String, client_secret: String, token_url: String },
}

/// The credentials' JSON was not one of the three shapes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "credentials hold none of bearer_token, username/password, client_id/client_secret/token_url"
)]
pub struct UnknownCredentials;

#[derive(Deserialize)]
struct Fields {
    bearer_token: Option<String>,
    username: Option<String>,
    password: Option<String>,
    client_id: Option<String>,
    client_secret: Option<String>,
    token_url: Option<String>,
}

impl Credentials {
    /// Reads the JSON object the facade sealed (`{"bearer_token": …}` and so on).
    pub fn from_json(json: &str) -> Result<Credentials, UnknownCredentials> {
        let f: Fields = serde_json::from_str(json).map_err(|_| UnknownCredentials)?;
        match f {
            Fields { bearer_token: Some(token), .. } => Ok(Credentials::Bearer { token }),
            Fields { username: Some(username), password: Some(password), .. } => {
                Ok(Credentials::Basic { username, password })
            }
            Fields {
                client_id: Some(client_id),
                client_secret: Some(client_secret),
                token_url: Some(token_url),
                ..
            } => Ok(Credentials::OAuthClientCredentials { client_id, client_secret, token_url }),
            _ => Err(UnknownCredentials),
        }
    }
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credentials::Bearer { .. } => f.write_str("Credentials::Bearer(redacted)"),
            Credentials::Basic { username, .. } => {
                write!(f, "Credentials::Basic({username}, redacted)")
            }
            Credentials::OAuthClientCredentials { client_id, token_url, .. } => {
                write!(f, "Credentials::OAuthClientCredentials({client_id}, {token_url}, redacted)")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_each_shape_and_hides_secrets() {
        let bearer = Credentials::from_json(r#"{"bearer_token":"s3cret"}"#).unwrap();
        assert_eq!(bearer, Credentials::Bearer { token: "s3cret".into() });
        let basic = Credentials::from_json(r#"{"username":"u","password":"s3cret"}"#).unwrap();
        assert!(matches!(basic, Credentials::Basic { .. }));
        let oauth = Credentials::from_json(
            r#"{"client_id":"c","client_secret":"s3cret","token_url":"https://t.example/token"}"#,
        )
        .unwrap();
        for c in [&bearer, &basic, &oauth] {
            assert!(!format!("{c:?}").contains("s3cret"), "{c:?}");
        }
        assert_eq!(Credentials::from_json(r#"{"username":"u"}"#), Err(UnknownCredentials));
        assert_eq!(Credentials::from_json("not json"), Err(UnknownCredentials));
    }
}
