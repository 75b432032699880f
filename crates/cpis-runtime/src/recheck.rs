//! Long-lived calls follow their caller's identity. The authorization layer
//! checks the certificate once per call; a stream or an upload may outlive
//! it (a revocation, an expiry), so these calls check it again as they go:
//!
//! - a handler keeps the call's [`Identity`] and checks it before each thing
//!   it hands over (`Subscribe`: before each alert and on each heartbeat
//!   tick; `SyncPlans`: before each batch and before the apply);
//! - the answers of the [`LONG_LIVED`] methods are wrapped ([`Guarded`]) so
//!   that no message leaves after the caller's certificate stopped being
//!   valid, whatever the handler does: the call ends with `UNAUTHENTICATED`
//!   and the reason instead.
//!
//! Checking costs a clock read while the trust bundle and the revocation
//! list are unchanged (see [`crate::tls::ServerTls::recheck`]).

use crate::error::ApiError;
use crate::peer::PeerInfo;
use bytes::Bytes;
use http_body::Frame;
use pin_project_lite::pin_project;
use std::pin::Pin;
use std::task::{Context, Poll};
use tonic::Status;

/// The methods whose answers stream for as long as the caller likes.
pub const LONG_LIVED: &[&str] = &[
    "/cpis.notification.v1.NotificationService/Subscribe",
    "/grpc.health.v1.Health/Watch",
    "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
];

/// The identity a call was admitted with, to check again while it lasts.
#[derive(Debug, Clone, Default)]
pub struct Identity {
    peer: Option<PeerInfo>,
}

impl Identity {
    /// The identity of `request`'s connection (none outside the server, e.g. in unit tests).
    pub fn of<T>(request: &tonic::Request<T>) -> Self {
        Self { peer: request.extensions().get::<PeerInfo>().cloned() }
    }

    /// The identity of a connection.
    pub fn from_peer(peer: Option<PeerInfo>) -> Self {
        Self { peer }
    }

    /// Resolves once another call on the same connection was refused for
    /// want of a valid identity: check again then (never, without a connection).
    pub async fn refused_elsewhere(&self) {
        match &self.peer {
            Some(peer) => peer.closing().await,
            None => std::future::pending().await,
        }
    }

    /// `Ok` while the caller's certificate is still valid now (not expired,
    /// not revoked, still issued by a trusted CA); `UNAUTHENTICATED` with the
    /// reason once it is not.
    pub fn check(&self) -> Result<(), ApiError> {
        match &self.peer {
            Some(peer) => peer.caller_now().map(drop).map_err(|e| ApiError::Unauthenticated(e.to_string())),
            None => Ok(()),
        }
    }
}

pin_project! {
    /// An answer's body that ends with `UNAUTHENTICATED` instead of sending
    /// a message once its caller's certificate is no longer valid.
    pub struct Guarded<B> {
        #[pin]
        inner: B,
        identity: Identity,
        ended: bool,
    }
}

impl<B> Guarded<B> {
    /// Guards `inner` with `identity`.
    pub fn new(inner: B, identity: Identity) -> Self {
        Self { inner, identity, ended: false }
    }
}

impl<B> http_body::Body for Guarded<B>
where
    B: http_body::Body<Data = Bytes, Error = Status>,
{
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let this = self.project();
        if *this.ended {
            return Poll::Ready(None);
        }
        let frame = std::task::ready!(this.inner.poll_frame(cx));
        if let Some(Ok(data)) = &frame {
            if data.is_data() {
                if let Err(refusal) = this.identity.check() {
                    *this.ended = true;
                    let status = Status::from(refusal);
                    tracing::info!(
                        reason = status.message(),
                        "long-lived call ended: the caller's certificate is no longer valid"
                    );
                    let mut trailers = http::HeaderMap::new();
                    let _ = status.add_header(&mut trailers);
                    return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
                }
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.ended || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cpis_domain::identity::IdentityError;
    use http_body_util::BodyExt as _;

    #[tokio::test]
    async fn a_revoked_caller_gets_unauthenticated_instead_of_the_next_message() {
        let revoked = PeerInfo::new(None, Err(IdentityError::Untrusted("certificate has been revoked".into())));
        let identity = Identity::from_peer(Some(revoked));
        assert_eq!(identity.check().unwrap_err().code(), tonic::Code::Unauthenticated);
        let body = http_body_util::Full::new(Bytes::from_static(b"alert")).map_err(|never| match never {});
        let collected = Guarded::new(body, identity).collect().await.unwrap();
        let trailers = collected.trailers().cloned().expect("trailers");
        assert_eq!(trailers.get("grpc-status").unwrap(), "16");
        assert!(collected.to_bytes().is_empty(), "nothing was sent");
        assert!(Identity::default().check().is_ok(), "no connection: nothing to check");
    }
}
