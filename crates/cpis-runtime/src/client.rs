//! Outgoing gRPC channels over mutual TLS 1.3, with keepalives suited to
//! long-lived streams behind load balancers.
//!
//! The channel does its own TLS (a small connector instead of tonic's) so
//! that every new connection presents the certificate currently on disk:
//! when cert-manager renews a service's certificate, the service's outgoing
//! calls pick it up on their next connection, with no restart.

use crate::tls::{read_certs, read_key, Reloading, TlsPaths};
use anyhow::Context as _;
use futures::future::BoxFuture;
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, RootCertStore};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::net::TcpStream;
use tonic::transport::{Channel, Endpoint};

/// A lazily connecting channel to `url` (`https://host:port`), presenting
/// the certificate in `tls`. `domain` overrides the name checked in the
/// server's certificate (defaults to the URL's host).
pub fn channel(url: &str, tls: &TlsPaths, domain: Option<&str>) -> anyhow::Result<Channel> {
    let (endpoint, connector) = endpoint(url, tls, domain)?;
    Ok(endpoint.connect_with_connector_lazy(connector))
}

/// The endpoint behind [`channel`] and the connector that secures it.
pub fn endpoint(url: &str, tls: &TlsPaths, domain: Option<&str>) -> anyhow::Result<(Endpoint, MtlsConnector)> {
    let uri: http::Uri = url.parse().with_context(|| format!("bad endpoint {url}"))?;
    anyhow::ensure!(uri.scheme_str() == Some("https"), "endpoint {url} must be https://");
    let host = uri.host().context("endpoint has no host")?.trim_matches(|c| c == '[' || c == ']').to_string();
    let port = uri.port_u16().unwrap_or(443);
    // The connector always speaks TLS; tonic is told "http" so that it does
    // not try to add its own TLS on top.
    let inner = format!("http://{}:{port}", uri.host().unwrap_or_default());
    let connector = MtlsConnector {
        config: Arc::new({
            let paths = tls.clone();
            let files = vec![tls.ca.clone(), tls.cert.clone(), tls.key.clone()];
            Reloading::new("client certificate", files, move || build_client_config(&paths))?
        }),
        server_name: domain.map(str::to_string).unwrap_or(host),
    };
    let endpoint = Endpoint::from_shared(inner)?
        .connect_timeout(Duration::from_secs(3))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(20))
        .keep_alive_while_idle(true);
    Ok((endpoint, connector))
}

/// Connects over TCP, then TLS 1.3 with the current client certificate.
#[derive(Clone)]
pub struct MtlsConnector {
    config: Arc<Reloading<ClientConfig>>,
    server_name: String,
}

impl tower::Service<http::Uri> for MtlsConnector {
    type Response = hyper_util::rt::TokioIo<tokio_rustls::client::TlsStream<TcpStream>>;
    type Error = Box<dyn std::error::Error + Send + Sync>;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let config = self.config.current();
        let server_name = self.server_name.clone();
        Box::pin(async move {
            let host = uri.host().ok_or("no host")?.trim_matches(|c| c == '[' || c == ']').to_string();
            let port = uri.port_u16().unwrap_or(443);
            let tcp = TcpStream::connect((host.as_str(), port)).await?;
            tcp.set_nodelay(true)?;
            let keepalive =
                socket2::TcpKeepalive::new().with_time(Duration::from_secs(60)).with_interval(Duration::from_secs(15));
            let _ = socket2::SockRef::from(&tcp).set_tcp_keepalive(&keepalive);
            let name = ServerName::try_from(server_name)?;
            let tls = tokio_rustls::TlsConnector::from(config).connect(name, tcp).await?;
            Ok(hyper_util::rt::TokioIo::new(tls))
        })
    }
}

/// TLS 1.3 only, ALPN `h2`, our CA as the only root, our certificate.
fn build_client_config(paths: &TlsPaths) -> anyhow::Result<ClientConfig> {
    let mut roots = RootCertStore::empty();
    for cert in read_certs(&paths.ca)? {
        roots.add(cert).context("adding CA certificate")?;
    }
    let mut config = ClientConfig::builder_with_provider(crate::tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots)
        .with_client_auth_cert(read_certs(&paths.cert)?, read_key(&paths.key)?)
        .context("loading the client certificate and key")?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}
