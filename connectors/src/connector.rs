//! The `Connector` trait: what the provisioner asks of an app, whatever protocol it speaks.
//!
//! Every call is one attempt. Retrying, backing off and giving up are the provisioner's
//! decisions, taken from the [`ConnectorError`] kinds below; a connector only says what
//! happened and, when the app told, when to come back.

use std::time::Duration;

use futures::future::BoxFuture;

/// The account the provisioner asks an app to create for a grant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewAccount {
    /// The grant id: the key that finds the account again after any failure.
    pub external_id: String,
    /// The person's sign-in name in the app: their email.
    pub user_name: String,
    pub email: String,
    pub display_name: String,
}

/// An account as the app reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    /// The app's own id of the account.
    pub id: String,
    pub user_name: String,
    pub external_id: Option<String>,
    pub active: bool,
}

/// Why a connector call did not succeed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConnectorError {
    /// The app refused the credentials (401/403), or the token exchange failed.
    #[error("the app refused the credentials: {0}")]
    Unauthorized(String),
    /// Worth trying again: a timeout, a refused connection, a 5xx, or a 429. `retry_after` is
    /// the app's own word on when, if it gave one.
    #[error("{reason}")]
    Transient { reason: String, retry_after: Option<Duration> },
    /// The app refused the request itself; sending it again will not help.
    #[error("the app refused the request: {0}")]
    Rejected(String),
}

impl ConnectorError {
    pub fn transient(reason: impl Into<String>) -> ConnectorError {
        ConnectorError::Transient { reason: reason.into(), retry_after: None }
    }

    pub fn is_transient(&self) -> bool {
        matches!(self, ConnectorError::Transient { .. })
    }
}

pub type ConnectorResult<T> = Result<T, ConnectorError>;

/// What Quartermaster does to accounts in one app, for one organization.
pub trait Connector: Send + Sync + std::fmt::Debug {
    /// Checks that the credentials are accepted, without changing anything.
    fn verify(&self) -> BoxFuture<'_, ConnectorResult<()>>;

    /// Creates the account. When the app already holds an account of that user name (SCIM 409),
    /// that account is returned instead, so a retried create never makes a second one.
    fn create<'a>(&'a self, account: &'a NewAccount) -> BoxFuture<'a, ConnectorResult<Account>>;

    /// The account created for `external_id`, if any.
    fn find<'a>(&'a self, external_id: &'a str) -> BoxFuture<'a, ConnectorResult<Option<Account>>>;

    /// Locks the account, keeping it (`active=false`).
    fn deactivate<'a>(&'a self, id: &'a str) -> BoxFuture<'a, ConnectorResult<()>>;

    /// Unlocks a deactivated account and ties it to `external_id`.
    fn reactivate<'a>(
        &'a self,
        id: &'a str,
        external_id: &'a str,
    ) -> BoxFuture<'a, ConnectorResult<()>>;

    /// Deletes the account; one already gone counts as deleted.
    fn delete<'a>(&'a self, id: &'a str) -> BoxFuture<'a, ConnectorResult<()>>;
}
