//! What a connection proved about its client: established once per connection
//! by [`crate::server`] right after the TLS handshake, read per request by
//! [`crate::authz`] (its own module so that neither imports the other).

use crate::tls::{ServerTls, VerifiedChain};
use cpis_domain::identity::{Caller, IdentityError};
use std::net::SocketAddr;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// What a connection proved about its client, established once per
/// connection right after the TLS handshake.
#[derive(Debug, Clone)]
pub struct PeerInfo {
    /// The client's address.
    pub remote_addr: Option<SocketAddr>,
    /// The verified caller, or why there is none.
    pub identity: Result<Caller, IdentityError>,
    /// The verified chain and the server's trust settings, to check the
    /// chain again on every request.
    pub(crate) recheck: Option<(ServerTls, Arc<VerifiedChain>)>,
    /// Fired when the connection is refused: it closes once the refusal has
    /// been written.
    pub(crate) close: CancellationToken,
}

impl PeerInfo {
    /// A connection's identity as established at the handshake (no per-request re-check).
    pub fn new(remote_addr: Option<SocketAddr>, identity: Result<Caller, IdentityError>) -> Self {
        Self { remote_addr, identity, recheck: None, close: CancellationToken::new() }
    }

    /// The caller of a request made now: the connection's identity, as long
    /// as its certificate has not expired or been revoked since the handshake
    /// and still verifies against the current trust bundle.
    pub fn caller_now(&self) -> Result<&Caller, IdentityError> {
        let caller = self.identity.as_ref().map_err(Clone::clone)?;
        if let Some((tls, chain)) = &self.recheck {
            tls.recheck(chain)?;
        }
        Ok(caller)
    }

    /// Closes the connection once what has been answered so far is written
    /// (used when a request is refused for want of a valid identity).
    pub fn close_after_answer(&self) {
        self.close.cancel();
    }

    /// Resolves once a request on this connection was refused for want of a
    /// valid identity (the connection is about to close).
    pub async fn closing(&self) {
        self.close.cancelled().await
    }
}
