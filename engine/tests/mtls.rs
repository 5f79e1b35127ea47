//! Mutual TLS with real certificates: a CA made for the test signs the server's certificate and
//! a calling service's; a client with that certificate is served, a client without one or with
//! one from another CA is not.

use std::path::Path;
use std::time::Duration;

use anyhow::ensure;
use qm_engine::api::auth::Auth;
use qm_engine::api::{ApiConfig, TlsFiles};
use qm_engine::sealing::MasterKey;
use qm_engine::server::{LogConfig, ServeConfig, start};
use qm_proto::api::v1;
use qm_proto::api::v1::query_service_client::QueryServiceClient;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

/// A certificate authority and the PEM of its certificate.
fn authority(name: &str) -> anyhow::Result<CertifiedIssuer<'static, KeyPair>> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(rcgen::DnType::CommonName, name);
    Ok(CertifiedIssuer::self_signed(params, KeyPair::generate()?)?)
}

/// A leaf certificate for `names`, signed by `ca`: (certificate PEM, key PEM).
fn leaf(
    ca: &CertifiedIssuer<'static, KeyPair>,
    names: &[&str],
) -> anyhow::Result<(String, String)> {
    let key = KeyPair::generate()?;
    let params = CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())?;
    let cert = params.signed_by(&key, ca)?;
    Ok((cert.pem(), key.serialize_pem()))
}

fn write(dir: &Path, name: &str, text: &str) -> anyhow::Result<std::path::PathBuf> {
    let path = dir.join(name);
    std::fs::write(&path, text)?;
    Ok(path)
}

async fn call(
    addr: std::net::SocketAddr,
    ca_pem: &str,
    identity: Option<(String, String)>,
) -> anyhow::Result<v1::ListCatalogAppsResponse> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca_pem))
        .domain_name("localhost");
    if let Some((cert, key)) = identity {
        tls = tls.identity(Identity::from_pem(cert, key));
    }
    let channel = Channel::from_shared(format!("https://{addr}"))?
        .tls_config(tls)?
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(5))
        .connect()
        .await?;
    let mut queries = QueryServiceClient::new(channel);
    Ok(queries.list_catalog_apps(v1::ListCatalogAppsRequest::default()).await?.into_inner())
}

#[tokio::test]
async fn a_client_certificate_from_the_configured_ca_is_the_only_way_in() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let ca = authority("Quartermaster test CA")?;
    let (server_cert, server_key) = leaf(&ca, &["localhost", "127.0.0.1"])?;
    let tls = TlsFiles {
        cert: write(dir.path(), "server.pem", &server_cert)?,
        key: write(dir.path(), "server.key", &server_key)?,
        client_ca: Some(write(dir.path(), "ca.pem", &ca.pem())?),
    };
    let running = start(ServeConfig {
        listen: "127.0.0.1:0".parse()?,
        data_dir: dir.path().join("data"),
        log: LogConfig::Embedded,
        master_key: MasterKey::from_hex(&"42".repeat(32))?,
        api: ApiConfig {
            auth: Auth::with_token_hashes(&[], true)?,
            tls: Some(tls),
            query_wait: Duration::from_secs(1),
        },
        metrics: None,
        provisioner: None,
    })
    .await?;

    let billing = leaf(&ca, &["billing-service"])?;
    let catalog = call(running.addr, &ca.pem(), Some(billing)).await?;
    ensure!(catalog.apps.len() >= 9, "{catalog:?}");

    let anonymous = call(running.addr, &ca.pem(), None).await;
    ensure!(anonymous.is_err(), "no client certificate, no answer: {anonymous:?}");

    let stranger_ca = authority("Some other CA")?;
    let stranger = leaf(&stranger_ca, &["stranger"])?;
    let refused = call(running.addr, &ca.pem(), Some(stranger)).await;
    ensure!(refused.is_err(), "a certificate from another CA is refused: {refused:?}");
    running.stop().await
}
