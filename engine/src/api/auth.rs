//! Caller authentication: a bearer token per calling service, configured as SHA-256 hashes, or
//! a client certificate verified by mutual TLS. The acting person is not authenticated here:
//! the organization's aggregate authorizes them.

use std::sync::Arc;

use sha2::{Digest, Sha256};
use tonic::service::Interceptor;
use tonic::{Request, Status};

/// The calling service, put into each authenticated request's extensions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller(pub String);

#[derive(Debug, Clone)]
pub struct Auth {
    /// (service name, SHA-256 of its token).
    tokens: Arc<Vec<(String, [u8; 32])>>,
    /// Requests over a TLS connection with a verified client certificate are authenticated.
    trust_client_certs: bool,
    disabled: bool,
}

#[derive(Debug, thiserror::Error)]
#[error("invalid token hash {0:?}: expected NAME:SHA256HEX")]
pub struct BadTokenHash(String);

impl Auth {
    /// Tokens as `name:sha256hex` entries.
    pub fn with_token_hashes(
        entries: &[String],
        trust_client_certs: bool,
    ) -> Result<Auth, BadTokenHash> {
        let mut tokens = Vec::new();
        for entry in entries {
            let (name, hash) = entry.split_once(':').ok_or_else(|| BadTokenHash(entry.clone()))?;
            let hash: [u8; 32] = hex::decode(hash.trim())
                .ok()
                .and_then(|h| h.try_into().ok())
                .ok_or_else(|| BadTokenHash(entry.clone()))?;
            tokens.push((name.trim().to_string(), hash));
        }
        Ok(Auth { tokens: Arc::new(tokens), trust_client_certs, disabled: false })
    }

    /// Lets every call through, for local development only.
    pub fn disabled() -> Auth {
        Auth { tokens: Arc::new(Vec::new()), trust_client_certs: false, disabled: true }
    }

    /// The hash to configure for `token`.
    pub fn hash(token: &str) -> String {
        hex::encode(Sha256::digest(token.as_bytes()))
    }

    fn caller_for(&self, token: &str) -> Option<&str> {
        let presented: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        // Every configured hash is compared in full, so timing does not tell which one was close.
        let mut found = None;
        for (name, hash) in self.tokens.iter() {
            let same =
                hash.iter().zip(presented.iter()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0;
            if same {
                found = Some(name.as_str());
            }
        }
        found
    }
}

impl Interceptor for Auth {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if self.disabled {
            request.extensions_mut().insert(Caller("anonymous".into()));
            return Ok(request);
        }
        if self.trust_client_certs && request.peer_certs().is_some_and(|certs| !certs.is_empty()) {
            request.extensions_mut().insert(Caller("client-certificate".into()));
            return Ok(request);
        }
        let token = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::to_string);
        match token.as_deref().and_then(|t| self.caller_for(t)) {
            Some(caller) => {
                let caller = Caller(caller.to_string());
                request.extensions_mut().insert(caller);
                Ok(request)
            }
            None => Err(Status::unauthenticated("missing or unknown bearer token")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_configured_tokens_pass() {
        let auth =
            Auth::with_token_hashes(&[format!("billing:{}", Auth::hash("s3cret"))], false).unwrap();
        assert_eq!(auth.caller_for("s3cret"), Some("billing"));
        assert_eq!(auth.caller_for("s3cret2"), None);
        assert!(Auth::with_token_hashes(&["nohash".into()], false).is_err());
        assert!(Auth::with_token_hashes(&["x:abcd".into()], false).is_err());
    }
}
