//! Outgoing gRPC channels over mutual TLS, with keepalives suited to
//! long-lived streams behind load balancers.

use crate::tls::{client_tls, TlsPaths};
use anyhow::Context as _;
use std::time::Duration;
use tonic::transport::{Channel, Endpoint};

/// A lazily connecting channel to `url` (`https://host:port`), presenting
/// the certificate in `tls`. `domain` overrides the name checked in the
/// server's certificate (defaults to the URL's host).
pub fn channel(url: &str, tls: &TlsPaths, domain: Option<&str>) -> anyhow::Result<Channel> {
    Ok(endpoint(url, tls, domain)?.connect_lazy())
}

/// The endpoint behind [`channel`], for callers that tune it further.
pub fn endpoint(url: &str, tls: &TlsPaths, domain: Option<&str>) -> anyhow::Result<Endpoint> {
    Ok(Endpoint::from_shared(url.to_string())
        .with_context(|| format!("bad endpoint {url}"))?
        .tls_config(client_tls(tls, domain)?)?
        .connect_timeout(Duration::from_secs(3))
        .tcp_nodelay(true)
        .tcp_keepalive(Some(Duration::from_secs(60)))
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(20))
        .keep_alive_while_idle(true))
}
