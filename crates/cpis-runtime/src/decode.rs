//! The one rewrite of a tonic answer: a request that does not parse as its
//! Protobuf message is answered `INVALID_ARGUMENT`, not tonic's `INTERNAL`.
//! A small tower layer of its own (inside the tracing layer, so spans and
//! metrics see the rewritten code).

use futures::future::BoxFuture;
use std::task::{Context, Poll};
use tower::{Layer, Service};

/// Tower layer answering undecodable requests with `INVALID_ARGUMENT`.
#[derive(Debug, Clone, Copy, Default)]
pub struct UndecodableLayer;

impl<S> Layer<S> for UndecodableLayer {
    type Service = Undecodable<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Undecodable { inner }
    }
}

/// The service made by [`UndecodableLayer`].
#[derive(Debug, Clone)]
pub struct Undecodable<S> {
    inner: S,
}

impl<S, B> Service<http::Request<B>> for Undecodable<S>
where
    S: Service<http::Request<B>, Response = http::Response<tonic::body::Body>> + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let fut = self.inner.call(req);
        Box::pin(async move {
            let mut response = fut.await?;
            undecodable_is_invalid_argument(response.headers_mut());
            Ok(response.map(|body| tonic::body::Body::new(TrailerFix { inner: body })))
        })
    }
}

/// A request that does not parse as its Protobuf message (e.g. a string
/// field holding non-UTF-8 bytes) is the caller's fault: answer
/// `INVALID_ARGUMENT` (tonic says `INTERNAL`, which invites retries). The
/// message keeps prost's description, which names the field.
fn undecodable_is_invalid_argument(headers: &mut http::HeaderMap) {
    // grpc-message is percent-encoded (tonic encodes spaces as %20).
    let undecodable = headers.get("grpc-status").is_some_and(|v| v.as_bytes() == b"13")
        && headers.get("grpc-message").is_some_and(|m| {
            let m = m.as_bytes();
            m.starts_with(b"failed to decode Protobuf message")
                || m.starts_with(b"failed%20to%20decode%20Protobuf%20message")
        });
    if undecodable {
        headers.insert("grpc-status", http::HeaderValue::from_static("3"));
    }
}

pin_project_lite::pin_project! {
    /// Applies [`undecodable_is_invalid_argument`] to the trailers too (where
    /// tonic puts the status of a request it failed to decode mid-body).
    struct TrailerFix {
        #[pin]
        inner: tonic::body::Body,
    }
}

impl http_body::Body for TrailerFix {
    type Data = bytes::Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        self.project().inner.poll_frame(cx).map(|frame| {
            frame.map(|f| {
                f.map(|frame| match frame.into_trailers() {
                    Ok(mut trailers) => {
                        undecodable_is_invalid_argument(&mut trailers);
                        http_body::Frame::trailers(trailers)
                    }
                    Err(frame) => frame,
                })
            })
        })
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}
