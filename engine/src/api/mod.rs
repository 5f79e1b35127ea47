//! The gRPC facade: `CommandService`, `QueryService` and `AdminService` of `quartermaster.v1`,
//! with `grpc.health.v1` and server reflection (v1 and v1alpha) on the same port.
//!
//! Handlers only convert: request → validated command or query → engine or views → response.
//! Errors become statuses in one place ([`errors`]); callers are authenticated by [`auth`].

pub mod admin;
pub mod auth;
pub mod commands;
pub mod errors;
pub mod queries;
pub mod validate;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use qm_proto::api::v1::admin_service_server::AdminServiceServer;
use qm_proto::api::v1::command_service_server::CommandServiceServer;
use qm_proto::api::v1::query_service_server::QueryServiceServer;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};

use crate::handler::Engine;
use crate::read_side::ReadSide;

/// The largest request accepted, in bytes; field limits are far below it, so an oversized
/// field is reported by name rather than cut off by the transport.
pub const MAX_REQUEST_BYTES: usize = 1024 * 1024;

#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// When set, clients must present a certificate signed by this CA (mutual TLS).
    pub client_ca: Option<PathBuf>,
}

#[derive(Debug, Clone)]
pub struct ApiConfig {
    pub auth: auth::Auth,
    pub tls: Option<TlsFiles>,
    /// How long a query waits for its `min_position`.
    pub query_wait: Duration,
}

/// Serves the API on `listener` until `shutdown` completes.
pub async fn serve(
    engine: Arc<Engine>,
    read_side: Arc<ReadSide>,
    config: ApiConfig,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    let commands = CommandServiceServer::new(commands::Commands::new(engine))
        .max_decoding_message_size(MAX_REQUEST_BYTES);
    let queries =
        QueryServiceServer::new(queries::Queries::new(read_side.clone(), config.query_wait))
            .max_decoding_message_size(MAX_REQUEST_BYTES);
    let admin = AdminServiceServer::new(admin::Admin::new(read_side))
        .max_decoding_message_size(MAX_REQUEST_BYTES);

    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<CommandServiceServer<commands::Commands>>().await;
    health.set_serving::<QueryServiceServer<queries::Queries>>().await;
    health.set_serving::<AdminServiceServer<admin::Admin>>().await;
    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(qm_proto::api::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(qm_proto::api::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()?;

    let mut server = Server::builder();
    if let Some(tls) = &config.tls {
        let identity = Identity::from_pem(std::fs::read(&tls.cert)?, std::fs::read(&tls.key)?);
        let mut tls_config = ServerTlsConfig::new().identity(identity);
        if let Some(ca) = &tls.client_ca {
            tls_config = tls_config.client_ca_root(Certificate::from_pem(std::fs::read(ca)?));
        }
        server = server.tls_config(tls_config)?;
    }
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    // Health and reflection stay open, so probes and generic clients can find the services;
    // every Quartermaster service requires an authenticated caller.
    server
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(InterceptedService::new(commands, config.auth.clone()))
        .add_service(InterceptedService::new(queries, config.auth.clone()))
        .add_service(InterceptedService::new(admin, config.auth.clone()))
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await?;
    Ok(())
}
