//! The national CP-IS FHIR R4 API beside gRPC, on its own port, shaped as
//! NHS England's "CP-IS API Consumer" and "CP-IS API Producer" guides publish
//! it, so a vendor's client written to the guide works unchanged apart from
//! its base URL and client certificate: `GET /FHIR/R4/metadata`,
//! `GET /FHIR/R4/CareTeam` and `GET /FHIR/R4/AuditEvent` (with the guide's
//! `_include` of the PractitionerRoles who looked).
//!
//! The invariant this module keeps: the FHIR port is the gRPC port in another
//! dress. The same mutual-TLS acceptor identifies the caller, the same tower
//! layers (telemetry and metrics, the `POLICY` authorization table, the
//! in-flight limits, the verified user) run around every request, and a
//! CareTeam search runs the same code as `CheckIn` (notifying read) or
//! `SilentRead` (silent read). Only the outermost layer is FHIR's own: it
//! turns any refusal by the inner layers into an `OperationOutcome` with the
//! HTTP status and Spine error code that fit.
//!
//! Here: the listener, the routes and the public base URL. One module per
//! resource, each built from the same values the gRPC conversion uses:
//! `care_team` (plan type to SNOMED CT, contact to telecom), `audit_event`,
//! `practitioner_role` (the person who looked), `bundle` (searchsets),
//! `outcome` (every error answer), `capability` (the CapabilityStatement),
//! `structure_definition` (our one extension). `search`: the two searches,
//! read into the contract's requests; `headers`: the request headers.

mod audit_event;
mod bundle;
mod capability;
mod care_team;
mod headers;
mod outcome;
mod practitioner_role;
mod search;
mod structure_definition;

use crate::Attendance;
use axum::extract::{Path, State};
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
pub use headers::{CORRELATION_HEADER, REQUEST_ID_HEADER, SETTING_TYPE_HEADER, TRACE_ID_HEADER, UNSCHEDULED_HEADER};
pub use outcome::{ErrorCode, Outcome, OutcomeLayer};
use serde_json::Value;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tonic::transport::server::Connected;
use tower::{ServiceBuilder, ServiceExt};

/// The FHIR base path.
pub const BASE_PATH: &str = "/FHIR/R4";

/// The FHIR JSON media type of every answer.
pub const FHIR_JSON: &str = "application/fhir+json; charset=utf-8";

/// The NHS number identifier system.
pub const NHS_NUMBER_SYSTEM: &str = "https://fhir.nhs.uk/Id/nhs-number";

/// ODS organisation codes (settings, the organisations of people's roles).
pub const ODS_SYSTEM: &str = "https://fhir.nhs.uk/Id/ods-organization-code";

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
    /// The public base URL (`CPIS_FHIR_BASE_URL`); `None`: the address served.
    pub base_url: Option<String>,
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
    if let Some(base) = &options.base_url {
        check_base_url(base).map_err(|why| anyhow::anyhow!("CPIS_FHIR_BASE_URL: {why}"))?;
    }
    let tls = tls.with_alpn(&[b"h2", b"http/1.1"]);
    let api = Api { svc, base_url: options.base_url.as_deref().map(|b| Arc::from(b.trim_end_matches('/'))) };
    let stack = ServiceBuilder::new()
        .layer(OutcomeLayer)
        .layer(GrpcTraceLayer::fhir("attendance", options.metrics.clone()))
        .layer(headers::TraceIdLayer)
        .layer(AuthzLayer::new(Surface::Combined))
        .layer(LimitLayer::new(options.limits))
        .layer(cpis_runtime::users::UserLayer::new(options.users.clone()))
        .map_response(to_tonic_body as fn(Response) -> http::Response<tonic::body::Body>)
        .service(router(api));
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

/// What the handlers share: the service and the public base URL.
#[derive(Debug, Clone)]
struct Api {
    svc: Attendance,
    base_url: Option<Arc<str>>,
}

impl Api {
    /// The base URL of every absolute URL in an answer: the configured public
    /// base, else the address served as the request's `Host` names it.
    fn base(&self, uri: &Uri, headers: &HeaderMap) -> String {
        match &self.base_url {
            Some(base) => base.to_string(),
            None => served_base(uri, headers),
        }
    }
}

/// An axum answer as the body type the tower layers share.
fn to_tonic_body(response: Response) -> http::Response<tonic::body::Body> {
    response.map(tonic::body::Body::new)
}

fn router(api: Api) -> Router {
    Router::new()
        .route(&format!("{BASE_PATH}/metadata"), get(metadata))
        .route(&format!("{BASE_PATH}/CareTeam"), get(search::care_team))
        .route(&format!("{BASE_PATH}/AuditEvent"), get(search::audit_event))
        .route(&format!("{BASE_PATH}/StructureDefinition/{{id}}"), get(structure_definition))
        .with_state(api)
}

/// A FHIR JSON answer.
fn fhir(status: StatusCode, body: &Value) -> Response {
    let mut response = (status, body.to_string()).into_response();
    response.headers_mut().insert(http::header::CONTENT_TYPE, HeaderValue::from_static(FHIR_JSON));
    response
}

/// The base URL as the caller addressed us: `https://<Host>/FHIR/R4`.
fn served_base(uri: &Uri, headers: &HeaderMap) -> String {
    let host = uri
        .authority()
        .map(|a| a.as_str().to_string())
        .or_else(|| headers.get(http::header::HOST).and_then(|h| h.to_str().ok()).map(str::to_string))
        .filter(|h| h.parse::<http::uri::Authority>().is_ok_and(|a| a.as_str() == h && !h.contains('@')))
        .unwrap_or_else(|| "localhost".into());
    format!("https://{host}{BASE_PATH}")
}

/// Whether `base` can be the public base URL: an absolute `https://` URL
/// with a host, and neither query nor fragment.
pub fn check_base_url(base: &str) -> Result<(), String> {
    let uri: Uri = base.parse().map_err(|_| "is not a URL".to_string())?;
    if uri.scheme_str() != Some("https") {
        return Err("must be an https:// URL".into());
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err("must name a host".into());
    }
    if uri.query().is_some() || base.contains('#') {
        return Err("must have no query or fragment".into());
    }
    Ok(())
}

async fn metadata(State(api): State<Api>, uri: Uri, headers: HeaderMap) -> Response {
    fhir(StatusCode::OK, &capability::capability_statement(&api.base(&uri, &headers)))
}

/// `GET StructureDefinition/{id}`: the definitions of our extensions, where
/// their URLs point.
async fn structure_definition(
    State(api): State<Api>,
    Path(id): Path<String>,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    match structure_definition::by_id(&api.base(&uri, &headers), &id) {
        Some(definition) => fhir(StatusCode::OK, &definition),
        None => outcome::not_found("StructureDefinition").into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_base_is_the_setting_else_the_host_the_request_named() {
        let uri: Uri = "/FHIR/R4/metadata".parse().unwrap();
        let mut headers = HeaderMap::new();
        headers.insert(http::header::HOST, HeaderValue::from_static("localhost:50054"));
        assert_eq!(served_base(&uri, &headers), "https://localhost:50054/FHIR/R4");
        headers.insert(http::header::HOST, HeaderValue::from_static("evil/path?x"));
        assert_eq!(served_base(&uri, &headers), "https://localhost/FHIR/R4", "a Host that is not an authority");
        assert!(check_base_url("https://api.example.nhs.uk/cpis/FHIR/R4").is_ok());
        assert!(check_base_url("http://api.example.nhs.uk/cpis/FHIR/R4").is_err());
        assert!(check_base_url("https://api.example.nhs.uk/FHIR/R4#x").is_err());
    }
}
