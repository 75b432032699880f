//! CP-IS's own FHIR R4 API beside gRPC, on its own port, so a clinical system
//! vendor's existing FHIR client works by changing its base URL and client
//! certificate: `GET /FHIR/R4/metadata`, `GET /FHIR/R4/CareTeam` and
//! `GET /FHIR/R4/AuditEvent`.
//!
//! The invariant this module keeps: the FHIR port is the gRPC port in another
//! dress. The same mutual-TLS acceptor identifies the caller, the same tower
//! layers (telemetry and metrics, the `POLICY` authorization table, the
//! in-flight limits) run around every request, and a CareTeam search runs
//! the same code as `CheckIn` (notifying read) or `SilentRead` (silent read).
//! Only the outermost layer is FHIR's own: it turns any refusal by the inner
//! layers into an `OperationOutcome` with the HTTP status that fits.
//!
//! Here: the listener and routes. `search`: the two searches, read into the
//! contract's requests and run by the same operations as gRPC. `outcome`:
//! every error answer, from one table of codes to HTTP statuses. `resources`:
//! the FHIR JSON.

mod outcome;
mod resources;
mod search;

use crate::Attendance;
use axum::http::{HeaderMap, HeaderValue, Request, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use cpis_runtime::authz::{AuthzLayer, Surface};
use cpis_runtime::limits::{LimitLayer, Limits};
use cpis_runtime::metrics::Metrics;
use cpis_runtime::server::{ConnectionLimits, PeerInfo, Shutdown};
use cpis_runtime::telemetry::GrpcTraceLayer;
use cpis_runtime::tls::ServerTls;
use futures::StreamExt;
pub use outcome::{Outcome, OutcomeLayer};
use resources::HEADERS_DOC;
pub use resources::{NHS_NUMBER_SYSTEM, SETTING_TYPES};
use serde_json::Value;
use std::time::Duration;
use tokio::net::TcpListener;
use tonic::transport::server::Connected;
use tower::{ServiceBuilder, ServiceExt};

/// The FHIR base path.
pub const BASE_PATH: &str = "/FHIR/R4";

/// The FHIR JSON media type of every answer.
pub const FHIR_JSON: &str = "application/fhir+json; charset=utf-8";

/// The header that chooses a notifying (`true`) or a silent (`false`) read.
pub const UNSCHEDULED_HEADER: &str = "isunscheduledaccessevent";
/// The header naming the user shown the answer.
pub const USER_HEADER: &str = "x-user-id";
/// The idempotency key of a notifying read (also the request id in logs).
pub const REQUEST_ID_HEADER: &str = "x-request-id";
/// The kind of setting, when it is not the default.
pub const SETTING_TYPE_HEADER: &str = "x-setting-type";
/// A caller's trace id, returned on the response.
pub const CORRELATION_HEADER: &str = "x-correlation-id";

/// How long a client may take to send its request headers (HTTP/1.1).
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Settings of the FHIR listener.
#[derive(Debug, Clone)]
pub struct FhirOptions {
    /// Where request metrics are counted (the service's own registry).
    pub metrics: Metrics,
    /// Caps on requests in flight, per caller and in all.
    pub limits: Limits,
    /// How long in-flight requests may take to finish once stopping.
    pub shutdown_grace: Duration,
    /// Caps on connections and TLS handshakes in progress on this listener.
    pub connections: ConnectionLimits,
    /// Verifies the people behind the searches (the gRPC port's verifier).
    pub users: Option<cpis_runtime::users::UserAuth>,
}

/// Serves the FHIR API of `svc` on `listener` with mutual TLS until
/// `shutdown` is stopping and open requests have finished (or the grace
/// period has passed).
pub async fn serve(
    listener: TcpListener,
    tls: ServerTls,
    svc: Attendance,
    options: FhirOptions,
    shutdown: Shutdown,
) -> anyhow::Result<()> {
    let tls = tls.with_alpn(&[b"h2", b"http/1.1"]);
    let stack = ServiceBuilder::new()
        .layer(OutcomeLayer)
        .layer(GrpcTraceLayer::fhir("attendance", options.metrics.clone()))
        .layer(AuthzLayer::new(Surface::Combined))
        .layer(LimitLayer::new(options.limits))
        .layer(cpis_runtime::users::UserLayer::new(options.users.clone()))
        .map_response(to_tonic_body as fn(Response) -> http::Response<tonic::body::Body>)
        .service(router(svc));
    let mut incoming =
        cpis_runtime::server::mtls_incoming(listener, tls, options.connections, shutdown.stopping().clone());
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    while let Some(conn) = incoming.next().await {
        let Ok(stream) = conn else { continue };
        let peer: PeerInfo = stream.connect_info();
        let stack = stack.clone();
        let service = hyper::service::service_fn(move |mut req: Request<hyper::body::Incoming>| {
            req.extensions_mut().insert(peer.clone());
            stack.clone().oneshot(req)
        });
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let mut builder = hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
            // A client that never finishes its request headers cannot hold a connection.
            builder.http1().timer(hyper_util::rt::TokioTimer::new()).header_read_timeout(HEADER_READ_TIMEOUT);
            builder
                .http2()
                .timer(hyper_util::rt::TokioTimer::new())
                .keep_alive_interval(Some(Duration::from_secs(30)))
                .keep_alive_timeout(Duration::from_secs(20));
            let conn = builder.serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            if let Err(e) = watcher.watch(conn).await {
                tracing::debug!(error = %e, "FHIR connection ended with an error");
            }
        });
    }
    // The acceptor stops when shutdown is stopping: let open requests finish.
    tokio::select! {
        _ = graceful.shutdown() => {}
        _ = tokio::time::sleep(options.shutdown_grace) => {
            tracing::warn!("FHIR connections still open after the shutdown grace period; closing them");
        }
    }
    Ok(())
}

/// An axum answer as the body type the tower layers share.
fn to_tonic_body(response: Response) -> http::Response<tonic::body::Body> {
    response.map(tonic::body::Body::new)
}

fn router(svc: Attendance) -> Router {
    Router::new()
        .route(&format!("{BASE_PATH}/metadata"), get(metadata))
        .route(&format!("{BASE_PATH}/CareTeam"), get(search::care_team))
        .route(&format!("{BASE_PATH}/AuditEvent"), get(search::audit_event))
        .with_state(svc)
}

/// A FHIR JSON answer.
fn fhir(status: StatusCode, body: &Value) -> Response {
    let mut response = (status, body.to_string()).into_response();
    response.headers_mut().insert(http::header::CONTENT_TYPE, HeaderValue::from_static(FHIR_JSON));
    response
}

/// The base URL as the caller addressed us.
fn base_url(uri: &Uri, headers: &HeaderMap) -> String {
    let host = uri
        .authority()
        .map(|a| a.as_str().to_string())
        .or_else(|| headers.get(http::header::HOST).and_then(|h| h.to_str().ok()).map(str::to_string))
        .filter(|h| h.bytes().all(|b| b.is_ascii_graphic()))
        .unwrap_or_else(|| "localhost".into());
    format!("https://{host}{BASE_PATH}")
}

async fn metadata(uri: Uri, headers: HeaderMap) -> Response {
    fhir(StatusCode::OK, &resources::capability_statement(&base_url(&uri, &headers)))
}

/// For the README and the CLI: what the request headers mean.
pub fn headers_documentation() -> &'static str {
    HEADERS_DOC
}
