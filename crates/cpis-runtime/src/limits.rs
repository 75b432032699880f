//! Overload protection: a cap on the requests (and open streams) each caller
//! may have in flight, so one misbehaving setting or council cannot starve
//! the others, and a cap on everything in flight, so the process sheds load
//! before memory runs out. Both answer `RESOURCE_EXHAUSTED`; a stream holds
//! its place until it ends. Our own services are not capped per caller.

use crate::error::ApiError;
use cpis_domain::identity::Caller;
use futures::future::BoxFuture;
use http_body::{Body as HttpBody, Frame, SizeHint};
use pin_project_lite::pin_project;
use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use tonic::Status;
use tower::{Layer, Service};

/// Largest message any of our services accepts (tonic answers `OUT_OF_RANGE`
/// above it). Room for a 1 MB string, so that such a field is refused by
/// validation with its field path rather than by size.
pub const MAX_MESSAGE_BYTES: usize = 2 * 1024 * 1024;

/// The caps (settings of every server: `CPIS_MAX_IN_FLIGHT*`).
#[derive(clap::Args, Debug, Clone, Copy)]
pub struct Limits {
    /// Requests and streams one council or setting may have in flight.
    #[arg(long = "max-in-flight-per-caller", env = "CPIS_MAX_IN_FLIGHT_PER_CALLER", default_value_t = 64)]
    pub per_caller: usize,
    /// Requests and streams the whole listener may have in flight.
    #[arg(long = "max-in-flight", env = "CPIS_MAX_IN_FLIGHT", default_value_t = 20_000)]
    pub total: usize,
}

impl Default for Limits {
    fn default() -> Self {
        crate::args::defaults()
    }
}

#[derive(Debug, Default)]
struct Counts {
    total: usize,
    per_caller: HashMap<Caller, usize>,
}

/// Holds one place until dropped (at the end of the response body).
struct Permit {
    counts: Arc<Mutex<Counts>>,
    caller: Option<Caller>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        if let Ok(mut c) = self.counts.lock() {
            c.total = c.total.saturating_sub(1);
            if let Some(caller) = &self.caller {
                if let Some(n) = c.per_caller.get_mut(caller) {
                    *n -= 1;
                    if *n == 0 {
                        c.per_caller.remove(caller);
                    }
                }
            }
        }
    }
}

/// Tower layer enforcing [`Limits`] (after [`crate::authz::AuthzLayer`]).
#[derive(Debug, Clone)]
pub struct LimitLayer {
    limits: Limits,
    counts: Arc<Mutex<Counts>>,
}

impl LimitLayer {
    /// A layer with its own counters.
    pub fn new(limits: Limits) -> Self {
        Self { limits, counts: Arc::default() }
    }

    fn admit(&self, caller: Option<&Caller>) -> Result<Permit, ApiError> {
        let mut c = self.counts.lock().map_err(|_| ApiError::internal("limit state poisoned"))?;
        if c.total >= self.limits.total {
            return Err(ApiError::ResourceExhausted("the service is overloaded; retry with backoff".into()));
        }
        // Our own services are trusted to pace themselves (and alerts must flow).
        let capped = caller.filter(|c| !matches!(c, Caller::Service(_))).cloned();
        if let Some(caller) = &capped {
            let n = c.per_caller.entry(caller.clone()).or_insert(0);
            if *n >= self.limits.per_caller {
                return Err(ApiError::ResourceExhausted(format!(
                    "too many requests in flight for this caller (limit {}); retry with backoff",
                    self.limits.per_caller
                )));
            }
            *n += 1;
        }
        c.total += 1;
        Ok(Permit { counts: self.counts.clone(), caller: capped })
    }
}

impl<S> Layer<S> for LimitLayer {
    type Service = Limit<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Limit { inner, layer: self.clone() }
    }
}

/// The service made by [`LimitLayer`].
#[derive(Debug, Clone)]
pub struct Limit<S> {
    inner: S,
    layer: LimitLayer,
}

impl<S, B> Service<http::Request<B>> for Limit<S>
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
        match self.layer.admit(req.extensions().get::<Caller>()) {
            Ok(permit) => {
                let fut = self.inner.call(req);
                Box::pin(async move {
                    let response = fut.await?;
                    Ok(response.map(|body| tonic::body::Body::new(Guarded { inner: body, _permit: permit })))
                })
            }
            Err(refusal) => {
                let status = Status::from(refusal);
                tracing::warn!(code = ?status.code(), "request shed");
                Box::pin(async move { Ok(status.into_http()) })
            }
        }
    }
}

pin_project! {
    /// A response body that keeps its request's place until it ends.
    struct Guarded {
        #[pin]
        inner: tonic::body::Body,
        _permit: Permit,
    }
}

impl HttpBody for Guarded {
    type Data = bytes::Bytes;
    type Error = Status;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        self.project().inner.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
