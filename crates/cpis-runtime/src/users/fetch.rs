//! One HTTPS GET of the identity provider's key set, with the TLS stack the
//! rest of cpis uses (rustls, ring) and hyper: TLS 1.2 or 1.3 with the
//! host name verified against the given roots, a deadline and a size cap.

use anyhow::Context as _;
use http_body_util::{BodyExt, Empty, Limited};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// Longest wait for the whole fetch.
const TIMEOUT: Duration = Duration::from_secs(10);
/// Largest key set accepted.
const MAX_BYTES: usize = 1024 * 1024;

/// The body of `GET url` (an `https://` URL), trusting the roots in `ca`.
pub async fn get(url: &str, ca: &Path) -> anyhow::Result<Vec<u8>> {
    tokio::time::timeout(TIMEOUT, get_once(url, ca)).await.context("the key set fetch timed out")?
}

async fn get_once(url: &str, ca: &Path) -> anyhow::Result<Vec<u8>> {
    let uri: http::Uri = url.parse().context("the JWKS URL does not parse")?;
    anyhow::ensure!(uri.scheme_str() == Some("https"), "the JWKS URL must be https://");
    let host = uri.host().context("the JWKS URL has no host")?.to_string();
    let port = uri.port_u16().unwrap_or(443);
    let mut roots = rustls::RootCertStore::empty();
    for cert in crate::tls::read_certs(ca).with_context(|| format!("reading the JWKS trust roots {}", ca.display()))? {
        // A bundle may hold certificates rustls cannot use as roots; skip them.
        let _ = roots.add(cert);
    }
    let config = rustls::ClientConfig::builder_with_provider(crate::tls::provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect((host.as_str(), port)).await.context("connecting to the JWKS URL")?;
    let server_name = rustls::pki_types::ServerName::try_from(host.clone()).context("the JWKS host name")?;
    let tls = connector.connect(server_name, tcp).await.context("TLS with the JWKS server")?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls)).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let request = http::Request::get(path)
        .header(http::header::HOST, uri.authority().map(|a| a.as_str()).unwrap_or(&host))
        .header(http::header::ACCEPT, "application/json")
        .body(Empty::<bytes::Bytes>::new())?;
    let response = sender.send_request(request).await.context("the JWKS request")?;
    anyhow::ensure!(response.status().is_success(), "the JWKS URL answered {}", response.status());
    let body = Limited::new(response.into_body(), MAX_BYTES)
        .collect()
        .await
        .map_err(|e| anyhow::anyhow!("reading the key set: {e}"))?;
    Ok(body.to_bytes().to_vec())
}
