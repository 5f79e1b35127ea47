//! The SCIM 2.0 connector against a real SCIM server (scim2-server), directly and through a
//! fault-injecting proxy.

use std::time::Duration;

use qm_connectors::scim::{ScimConnector, http_client};
use qm_connectors::{Connector, ConnectorError, Credentials, NewAccount};
use qm_replay_tests::scim::{Fault, FaultProxy, Matching, ScimServer};

fn connector(url: &str, token: &str, timeout: Duration) -> ScimConnector {
    ScimConnector::new(http_client(timeout), url, Credentials::Bearer { token: token.into() })
}

fn ada(external_id: &str) -> NewAccount {
    NewAccount {
        external_id: external_id.into(),
        user_name: "ada@acme.test".into(),
        email: "ada@acme.test".into(),
        display_name: "Ada Lovelace".into(),
    }
}

#[tokio::test]
async fn creates_finds_links_deactivates_and_deletes_accounts() -> anyhow::Result<()> {
    let server = ScimServer::start("t0ken").await?;
    // A trailing slash on the base URL is one of the quirks absorbed.
    let scim = connector(&format!("{}/", server.url()), "t0ken", Duration::from_secs(5));
    scim.verify().await?;

    let created = scim.create(&ada("grant-1")).await?;
    let stored = server.users_with_external_id("grant-1").await?;
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0]["id"], created.id.as_str());
    assert_eq!(stored[0]["userName"], "ada@acme.test");
    assert_eq!(stored[0]["emails"][0]["value"], "ada@acme.test");
    assert_eq!(stored[0]["name"]["familyName"], "Lovelace");
    assert_eq!(stored[0]["active"], true);

    let found = scim.find("grant-1").await?.expect("found by externalId");
    assert_eq!(found.id, created.id);
    assert_eq!(scim.find("grant-unknown").await?, None);

    // A second create of the same person (a retry, or a later grant) links the account: the
    // server answers 409 and no second user appears.
    scim.deactivate(&created.id).await?;
    let again = scim.create(&ada("grant-2")).await?;
    assert_eq!(again.id, created.id);
    let users = server.users().await?;
    assert_eq!(users.len(), 1, "{users:#?}");
    assert_eq!(users[0]["externalId"], "grant-2");
    assert_eq!(users[0]["active"], true, "a linked account is active again");

    scim.deactivate(&created.id).await?;
    assert_eq!(server.users_with_external_id("grant-2").await?[0]["active"], false);
    scim.reactivate(&created.id, "grant-2").await?;
    assert_eq!(server.users_with_external_id("grant-2").await?[0]["active"], true);

    scim.delete(&created.id).await?;
    assert!(server.users().await?.is_empty());
    // Already gone counts as deleted; locking a gone account has nothing left to do.
    scim.delete(&created.id).await?;
    scim.deactivate(&created.id).await?;
    Ok(())
}

#[tokio::test]
async fn a_wrong_token_is_unauthorized() -> anyhow::Result<()> {
    let server = ScimServer::start("right").await?;
    let scim = connector(&server.url(), "wrong", Duration::from_secs(5));
    let refused = scim.verify().await.expect_err("a wrong token is refused");
    assert!(matches!(refused, ConnectorError::Unauthorized(_)), "{refused:?}");
    assert!(refused.to_string().contains("401"), "{refused}");
    let create = scim.create(&ada("g")).await.expect_err("and so is a create");
    assert!(matches!(create, ConnectorError::Unauthorized(_)), "{create:?}");
    assert!(server.users().await?.is_empty());
    Ok(())
}

#[tokio::test]
async fn faults_are_told_apart() -> anyhow::Result<()> {
    let server = ScimServer::start("t").await?;
    let proxy = FaultProxy::start(&server.url()).await?;
    let scim = connector(&proxy.url(), "t", Duration::from_millis(500));

    proxy.then(Matching::Any, Fault::Status(503));
    let e = scim.create(&ada("g1")).await.expect_err("503");
    assert!(e.is_transient() && e.to_string().contains("503"), "{e:?}");

    proxy.then(Matching::Any, Fault::TooManyRequests { retry_after_secs: 7 });
    let e = scim.create(&ada("g1")).await.expect_err("429");
    let ConnectorError::Transient { retry_after, .. } = &e else { panic!("{e:?}") };
    assert_eq!(*retry_after, Some(Duration::from_secs(7)));

    proxy.then(Matching::Any, Fault::Slow(Duration::from_secs(2)));
    let e = scim.find("g1").await.expect_err("slower than the timeout");
    assert!(e.is_transient() && e.to_string().contains("timed out"), "{e:?}");

    proxy.then(Matching::Any, Fault::Drop);
    let e = scim.find("g1").await.expect_err("dropped connection");
    assert!(e.is_transient(), "{e:?}");

    proxy.refuse();
    let e = scim.find("g1").await.expect_err("refused connection");
    assert!(e.is_transient() && e.to_string().contains("could not connect"), "{e:?}");
    proxy.reopen().await?;

    proxy.then(Matching::Any, Fault::Status(400));
    let e = scim.create(&ada("g1")).await.expect_err("400");
    assert!(matches!(e, ConnectorError::Rejected(_)), "{e:?}");

    // None of the failed creates reached the server; the next one does.
    assert!(server.users().await?.is_empty());
    scim.create(&ada("g1")).await?;
    assert_eq!(server.users_with_external_id("g1").await?.len(), 1);
    Ok(())
}

/// An OAuth 2.0 token endpoint (client credentials, RFC 6749 §4.4) for the one client whose
/// `Authorization: Basic` value is `basic`, counting the tokens it issued.
async fn token_endpoint(
    basic: &str,
    token: &str,
) -> anyhow::Result<(String, std::sync::Arc<std::sync::atomic::AtomicUsize>)> {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/oauth/token", listener.local_addr()?);
    let issued = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let expected = format!("basic {basic}");
    let (token, counter) = (token.to_string(), issued.clone());
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            let mut socket = BufReader::new(socket);
            let (mut authorized, mut length, mut line) = (false, 0usize, String::new());
            while socket.read_line(&mut line).await.unwrap_or(0) > 0 && line != "\r\n" {
                let lower = line.trim().to_ascii_lowercase();
                authorized |= lower == format!("authorization: {expected}").to_ascii_lowercase();
                if let Some(n) = lower.strip_prefix("content-length:") {
                    length = n.trim().parse().unwrap_or(0);
                }
                line.clear();
            }
            let mut body = vec![0; length];
            let _ = socket.read_exact(&mut body).await;
            let (status, answer) = if authorized && body == b"grant_type=client_credentials" {
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                (
                    "200 OK",
                    format!(
                        r#"{{"access_token":"{token}","token_type":"Bearer","expires_in":3600}}"#
                    ),
                )
            } else {
                ("401 Unauthorized", r#"{"error":"invalid_client"}"#.to_string())
            };
            let reply = format!(
                "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{answer}",
                answer.len()
            );
            let _ = socket.get_mut().write_all(reply.as_bytes()).await;
        }
    });
    Ok((url, issued))
}

#[tokio::test]
async fn oauth_client_credentials_fetch_a_token_once_and_use_it() -> anyhow::Result<()> {
    let server = ScimServer::start("issued-token").await?;
    // "quartermaster:client-s3cret", base64-encoded.
    let basic = "cXVhcnRlcm1hc3RlcjpjbGllbnQtczNjcmV0";
    let (token_url, issued) = token_endpoint(basic, "issued-token").await?;
    let oauth = |secret: &str| Credentials::OAuthClientCredentials {
        client_id: "quartermaster".into(),
        client_secret: secret.into(),
        token_url: token_url.clone(),
    };
    let scim = ScimConnector::new(
        http_client(Duration::from_secs(5)),
        &server.url(),
        oauth("client-s3cret"),
    );
    scim.verify().await?;
    scim.create(&ada("g-oauth")).await?;
    assert!(scim.find("g-oauth").await?.is_some());
    assert_eq!(issued.load(std::sync::atomic::Ordering::SeqCst), 1, "the token is reused");
    assert!(!format!("{scim:?}").contains("issued-token"), "no token in Debug");

    let wrong =
        ScimConnector::new(http_client(Duration::from_secs(5)), &server.url(), oauth("wrong"));
    let e = wrong.verify().await.expect_err("the token endpoint refuses the client");
    assert!(
        matches!(e, ConnectorError::Unauthorized(_)) && e.to_string().contains("invalid_client"),
        "{e:?}"
    );
    assert!(!e.to_string().contains("wrong"), "no secret in the reason: {e}");
    Ok(())
}
