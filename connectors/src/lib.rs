//! Connectors: the app catalog, and the code that creates and removes accounts in apps.
//!
//! This crate knows how to talk to apps; it never decides domain rules (who may have an
//! account is the engine's aggregate's call). Start with [`catalog`], then [`Connector`] and
//! its SCIM 2.0 implementation, [`scim::ScimConnector`].

pub mod catalog;
mod connector;
mod credentials;
pub mod scim;

pub use connector::{Account, Connector, ConnectorError, ConnectorResult, NewAccount};
pub use credentials::{Credentials, UnknownCredentials};

use std::sync::Arc;

/// The connector for an integrated app of `catalog_app`, reaching it at `base_url`.
pub fn connector_for(
    catalog_app: &catalog::CatalogApp,
    client: reqwest::Client,
    base_url: &str,
    credentials: Credentials,
) -> Arc<dyn Connector> {
    match catalog_app.connector {
        catalog::ConnectorKind::Scim2 => {
            Arc::new(scim::ScimConnector::new(client, base_url, credentials))
        }
    }
}
