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

mod resources;

use crate::registry::CallerDeadline;
use crate::Attendance;
use axum::extract::{Extension, State};
use axum::http::{HeaderMap, HeaderValue, Method, Request, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use cpis_domain::identity::Caller;
use cpis_domain::validate::NhsNumber;
use cpis_proto::attendance::v1::{CheckInRequest, SilentReadRequest};
use cpis_proto::common::v1::SettingType;
use cpis_runtime::authz::{AuthzLayer, Surface};
use cpis_runtime::limits::{LimitLayer, Limits};
use cpis_runtime::metrics::Metrics;
use cpis_runtime::server::{ConnectionLimits, PeerInfo, Shutdown};
use cpis_runtime::telemetry::GrpcTraceLayer;
use cpis_runtime::tls::ServerTls;
use cpis_runtime::ApiError;
use futures::future::BoxFuture;
use futures::StreamExt;
use resources::{Issue, HEADERS_DOC};
pub use resources::{NHS_NUMBER_SYSTEM, SETTING_TYPES};
use serde_json::Value;
use std::convert::Infallible;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::net::TcpListener;
use tonic::transport::server::Connected;
use tower::{Layer, Service, ServiceBuilder, ServiceExt};

/// The FHIR base path.
pub const BASE_PATH: &str = "/FHIR/R4";

/// What an unauthenticated request for an unknown path is logged and counted as.
const UNKNOWN_PATH: &str = "/FHIR/R4/_unknown";

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

/// How many accesses an AuditEvent search answers (the national 25).
const ACCESS_HISTORY: i64 = 25;

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
        .layer(GrpcTraceLayer::new("attendance", options.metrics.clone()))
        .layer(AuthzLayer::new(Surface::Combined))
        .layer(LimitLayer::new(options.limits))
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

fn to_tonic_body(response: Response) -> http::Response<tonic::body::Body> {
    response.map(tonic::body::Body::new)
}

fn router(svc: Attendance) -> Router {
    Router::new()
        .route(&format!("{BASE_PATH}/metadata"), get(metadata))
        .route(&format!("{BASE_PATH}/CareTeam"), get(care_team))
        .route(&format!("{BASE_PATH}/AuditEvent"), get(audit_event))
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

/// A FHIR error: the HTTP status, the issues, and the gRPC code the
/// telemetry layer counts it under.
#[derive(Debug)]
struct FhirError {
    status: StatusCode,
    grpc_code: tonic::Code,
    issues: Vec<Issue>,
}

impl FhirError {
    fn invalid(expression: &str, diagnostics: impl Into<String>) -> Self {
        FhirError {
            status: StatusCode::BAD_REQUEST,
            grpc_code: tonic::Code::InvalidArgument,
            issues: vec![Issue {
                code: "invalid",
                diagnostics: diagnostics.into(),
                expression: Some(expression.into()),
            }],
        }
    }
}

impl IntoResponse for FhirError {
    fn into_response(self) -> Response {
        let mut response = fhir(self.status, &resources::operation_outcome(&self.issues));
        // For the telemetry layer's metrics and logs; removed by OutcomeLayer.
        response.headers_mut().insert("grpc-status", HeaderValue::from(self.grpc_code as i32));
        response
    }
}

/// Where a contract field comes from on the FHIR port.
fn fhir_location(field: &str) -> &str {
    match field {
        "nhs_number" => "patient:identifier",
        "request_id" => "X-Request-ID",
        "user_id" => "X-User-ID",
        "setting_type" => "X-Setting-Type",
        other => other,
    }
}

impl From<ApiError> for FhirError {
    fn from(e: ApiError) -> Self {
        if let ApiError::InvalidArgument(violations) = e {
            return FhirError {
                status: StatusCode::BAD_REQUEST,
                grpc_code: tonic::Code::InvalidArgument,
                issues: violations
                    .into_iter()
                    .map(|v| {
                        let at = fhir_location(&v.field).to_string();
                        Issue { code: "invalid", diagnostics: format!("{at}: {}", v.description), expression: Some(at) }
                    })
                    .collect(),
            };
        }
        // The one Status mapping (it logs internal causes with a reference).
        let status = tonic::Status::from(e);
        let (http, code) = http_status(status.code());
        FhirError {
            status: http,
            grpc_code: status.code(),
            issues: vec![Issue { code, diagnostics: status.message().to_string(), expression: None }],
        }
    }
}

/// The HTTP status and FHIR issue type of a gRPC code.
fn http_status(code: tonic::Code) -> (StatusCode, &'static str) {
    use tonic::Code as C;
    match code {
        C::InvalidArgument | C::OutOfRange => (StatusCode::BAD_REQUEST, "invalid"),
        C::Unauthenticated => (StatusCode::UNAUTHORIZED, "login"),
        C::PermissionDenied => (StatusCode::FORBIDDEN, "forbidden"),
        C::NotFound => (StatusCode::NOT_FOUND, "not-found"),
        C::Aborted | C::AlreadyExists => (StatusCode::CONFLICT, "conflict"),
        C::FailedPrecondition => (StatusCode::PRECONDITION_FAILED, "business-rule"),
        C::ResourceExhausted => (StatusCode::TOO_MANY_REQUESTS, "throttled"),
        C::Unavailable => (StatusCode::SERVICE_UNAVAILABLE, "transient"),
        C::DeadlineExceeded => (StatusCode::GATEWAY_TIMEOUT, "timeout"),
        C::Unimplemented => (StatusCode::NOT_IMPLEMENTED, "not-supported"),
        _ => (StatusCode::INTERNAL_SERVER_ERROR, "exception"),
    }
}

/// The query's parameters, percent-decoded, in order.
fn query_params(uri: &Uri) -> Vec<(String, String)> {
    let decode = |s: &str| percent_encoding::percent_decode_str(&s.replace('+', " ")).decode_utf8_lossy().into_owned();
    uri.query()
        .unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (decode(k), decode(v)),
            None => (decode(p), String::new()),
        })
        .collect()
}

/// The NHS number of a search: exactly one
/// `patient:identifier=https://fhir.nhs.uk/Id/nhs-number|{nhs}`, and no
/// parameter this endpoint does not support (a search it would silently
/// widen is refused).
fn searched_nhs_number(uri: &Uri) -> Result<NhsNumber, FhirError> {
    let mut found = None;
    for (name, value) in query_params(uri) {
        match name.as_str() {
            "patient:identifier" => {
                if found.is_some() {
                    return Err(FhirError::invalid("patient:identifier", "patient:identifier must be given once"));
                }
                found = Some(value);
            }
            "_format" if matches!(value.as_str(), "json" | "application/fhir+json" | "application/json") => {}
            other => {
                let shown: String = other.chars().take(40).filter(|c| !c.is_ascii_digit()).collect();
                return Err(FhirError::invalid(
                    "query",
                    format!("unsupported search parameter {shown:?}: see the CapabilityStatement"),
                ));
            }
        }
    }
    let Some(value) = found else {
        return Err(FhirError::invalid("patient:identifier", "patient:identifier is required"));
    };
    let Some((system, nhs)) = value.split_once('|') else {
        return Err(FhirError::invalid(
            "patient:identifier",
            format!("patient:identifier must be {NHS_NUMBER_SYSTEM}|<NHS number>"),
        ));
    };
    if system != NHS_NUMBER_SYSTEM {
        return Err(FhirError::invalid(
            "patient:identifier",
            format!("patient:identifier must use the system {NHS_NUMBER_SYSTEM}"),
        ));
    }
    NhsNumber::parse(nhs).ok_or_else(|| {
        FhirError::invalid(
            "patient:identifier",
            "patient:identifier is not a valid NHS number (10 digits with a valid check digit)",
        )
    })
}

/// A header's value as text, if present.
fn header<'a>(headers: &'a HeaderMap, name: &str) -> Result<Option<&'a str>, FhirError> {
    match headers.get(name) {
        None => Ok(None),
        Some(v) => {
            v.to_str().map(|s| Some(s.trim())).map_err(|_| FhirError::invalid(name, format!("{name} must be text")))
        }
    }
}

/// The setting of a search: only settings reach the handlers (the
/// authorization layer refuses everyone else first).
fn setting_of(caller: &Caller) -> Result<&str, FhirError> {
    match caller {
        Caller::Setting(code) => Ok(code),
        _ => Err(ApiError::PermissionDenied("only settings may search".into()).into()),
    }
}

/// Adds the caller's correlation id to a response.
fn correlated(mut response: Response, headers: &HeaderMap) -> Response {
    if let Some(v) = headers
        .get(CORRELATION_HEADER)
        .filter(|v| !v.is_empty() && v.len() <= 64 && v.as_bytes().iter().all(|b| b.is_ascii_graphic()))
    {
        response.headers_mut().insert(CORRELATION_HEADER, v.clone());
    }
    response
}

async fn care_team(
    State(svc): State<Attendance>,
    Extension(caller): Extension<Caller>,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let result = care_team_search(&svc, &caller, &uri, &headers).await;
    correlated(result.map_or_else(IntoResponse::into_response, |b| fhir(StatusCode::OK, &b)), &headers)
}

#[tracing::instrument(skip_all, fields(fhir = "CareTeam", setting, silent))]
async fn care_team_search(
    svc: &Attendance,
    caller: &Caller,
    uri: &Uri,
    headers: &HeaderMap,
) -> Result<Value, FhirError> {
    let setting = setting_of(caller)?;
    tracing::Span::current().record("setting", setting);
    let nhs_number = searched_nhs_number(uri)?;
    let unscheduled = match header(headers, UNSCHEDULED_HEADER)?.map(str::to_ascii_lowercase).as_deref() {
        Some("true") => true,
        Some("false") => false,
        Some(_) => {
            return Err(FhirError::invalid(
                "IsUnscheduledAccessEvent",
                "IsUnscheduledAccessEvent must be true or false",
            ))
        }
        None => {
            return Err(FhirError::invalid(
                "IsUnscheduledAccessEvent",
                "the IsUnscheduledAccessEvent header is required (true: notifying read, false: silent read)",
            ))
        }
    };
    tracing::Span::current().record("silent", !unscheduled);
    let setting_type = match header(headers, SETTING_TYPE_HEADER)? {
        None | Some("") if unscheduled => SettingType::EmergencyDepartment,
        None | Some("") => SettingType::GpPractice,
        Some(code) => resources::setting_type_from_code(code).ok_or_else(|| {
            FhirError::invalid(
                "X-Setting-Type",
                "X-Setting-Type is not a known setting type: see the CapabilityStatement",
            )
        })?,
    };
    let user_id = header(headers, USER_HEADER)?.unwrap_or_default().to_string();
    let request_id = header(headers, REQUEST_ID_HEADER)?.unwrap_or_default().to_string();

    let flags = if unscheduled {
        if request_id.is_empty() {
            return Err(FhirError::invalid(
                "X-Request-ID",
                "X-Request-ID is required for a notifying read (it makes retries safe)",
            ));
        }
        let req = CheckInRequest {
            request_id,
            nhs_number: nhs_number.as_str().to_string(),
            arrived_at: None,
            setting_type: setting_type as i32,
            user_id,
        };
        crate::checkin::check_in_now(svc, setting, req, CallerDeadline::unbounded()).await?.flags
    } else {
        let req = SilentReadRequest {
            request_id: if request_id.is_empty() { uuid::Uuid::new_v4().to_string() } else { request_id },
            nhs_number: nhs_number.as_str().to_string(),
            setting_type: setting_type as i32,
            user_id,
        };
        crate::silent::silent_read(svc, setting, &req, CallerDeadline::unbounded()).await?.flags
    };
    let teams = flags.iter().map(|f| resources::care_team(nhs_number.as_str(), f)).collect();
    Ok(resources::searchset(&self_link(uri, headers, "CareTeam"), teams))
}

/// The search's own URL (the NHS number stays in the caller's own answer).
fn self_link(uri: &Uri, headers: &HeaderMap, resource: &str) -> String {
    match uri.query() {
        Some(q) => format!("{}/{resource}?{q}", base_url(uri, headers)),
        None => format!("{}/{resource}", base_url(uri, headers)),
    }
}

async fn audit_event(
    State(svc): State<Attendance>,
    Extension(caller): Extension<Caller>,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let result = audit_event_search(&svc, &caller, &uri, &headers).await;
    correlated(result.map_or_else(IntoResponse::into_response, |b| fhir(StatusCode::OK, &b)), &headers)
}

#[tracing::instrument(skip_all, fields(fhir = "AuditEvent", setting))]
async fn audit_event_search(
    svc: &Attendance,
    caller: &Caller,
    uri: &Uri,
    headers: &HeaderMap,
) -> Result<Value, FhirError> {
    let setting = setting_of(caller)?;
    tracing::Span::current().record("setting", setting);
    let nhs_number = searched_nhs_number(uri)?;
    let user_id = header(headers, USER_HEADER)?.unwrap_or_default();
    let mut v = cpis_domain::validate::Violations::new();
    v.text("X-User-ID", user_id, 128);
    v.finish().map_err(ApiError::from)?;
    // Need to know: the history of a person with no flag in scope is not
    // shown; a read of it is audited like a gRPC ListEpisodes.
    let found = svc.flags.lookup(&nhs_number, None, CallerDeadline::unbounded()).await?;
    let events = if found.flags.is_empty() {
        Vec::new()
    } else {
        let db = svc.pool.get().await.map_err(ApiError::from)?;
        crate::store::record_episodes_read(&db, setting, nhs_number.as_str(), user_id, &found).await?;
        crate::store::list_episodes(&db, nhs_number.as_str(), None, None, ACCESS_HISTORY)
            .await?
            .into_iter()
            .map(|(episode, _)| resources::audit_event(nhs_number.as_str(), &episode))
            .collect()
    };
    Ok(resources::searchset(&self_link(uri, headers, "AuditEvent"), events))
}

/// The outermost layer of the FHIR port: a request for a path with no rule
/// in `POLICY` (an unknown resource type) from an authenticated caller is
/// 404; any answer that is not already FHIR (a refusal by the authorization
/// or limit layers, a 404 or 405 from the router) becomes an
/// OperationOutcome with the HTTP status that fits.
#[derive(Debug, Clone, Copy, Default)]
pub struct OutcomeLayer;

impl<S> Layer<S> for OutcomeLayer {
    type Service = Outcome<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Outcome { inner }
    }
}

/// The service made by [`OutcomeLayer`].
#[derive(Debug, Clone)]
pub struct Outcome<S> {
    inner: S,
}

impl<S, B> Service<Request<B>> for Outcome<S>
where
    S: Service<Request<B>, Response = http::Response<tonic::body::Body>, Error = Infallible> + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let authenticated = req.extensions().get::<PeerInfo>().is_some_and(|p| p.caller_now().is_ok());
        let path = req.uri().path();
        if !authenticated && cpis_runtime::authz::rule(path).is_none() {
            // The inner layers answer 401; an arbitrary path (which could hold
            // an NHS number) must not reach their logs, spans or metric labels.
            *req.uri_mut() = Uri::from_static(UNKNOWN_PATH);
        } else if cpis_runtime::authz::rule(path).is_none() {
            let what = path.strip_prefix(BASE_PATH).unwrap_or(path).trim_start_matches('/');
            // Resource types are letters: nothing else is echoed (a path may hold an NHS number).
            let what: String =
                what.split('/').next().unwrap_or_default().chars().filter(char::is_ascii_alphabetic).take(40).collect();
            let diagnostics = if req.method() == Method::GET {
                format!("unknown or unsupported resource type {what:?}: see {BASE_PATH}/metadata")
            } else {
                format!("{} is not supported: see {BASE_PATH}/metadata", req.method())
            };
            let error = FhirError {
                status: StatusCode::NOT_FOUND,
                grpc_code: tonic::Code::NotFound,
                issues: vec![Issue { code: "not-found", diagnostics, expression: None }],
            };
            return Box::pin(async move { Ok(finish(to_tonic_body(error.into_response()))) });
        }
        let fut = self.inner.call(req);
        Box::pin(async move { Ok(finish(fut.await?)) })
    }
}

/// Makes any answer a FHIR one and removes the gRPC status headers.
fn finish(mut response: http::Response<tonic::body::Body>) -> http::Response<tonic::body::Body> {
    let is_fhir =
        response.headers().get(http::header::CONTENT_TYPE).is_some_and(|v| v.as_bytes() == FHIR_JSON.as_bytes());
    let grpc = response
        .headers()
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i32>().ok())
        .map(tonic::Code::from_i32);
    let message = response
        .headers()
        .get("grpc-message")
        .map(|m| percent_encoding::percent_decode(m.as_bytes()).decode_utf8_lossy().into_owned());
    if !is_fhir {
        let (status, code, diagnostics) = match grpc {
            Some(code) if code != tonic::Code::Ok => {
                let (status, issue) = http_status(code);
                (status, issue, message.unwrap_or_else(|| format!("{code:?}")))
            }
            _ if response.status() == StatusCode::METHOD_NOT_ALLOWED => (
                StatusCode::METHOD_NOT_ALLOWED,
                "not-supported",
                format!("only GET is supported: see {BASE_PATH}/metadata"),
            ),
            _ if response.status() == StatusCode::NOT_FOUND => {
                (StatusCode::NOT_FOUND, "not-found", format!("unknown resource: see {BASE_PATH}/metadata"))
            }
            _ => (response.status(), "exception", "the request could not be handled".to_string()),
        };
        let issue = Issue { code, diagnostics, expression: None };
        let mut fresh = fhir(status, &resources::operation_outcome(&[issue]));
        for name in [cpis_runtime::telemetry::REQUEST_ID, CORRELATION_HEADER] {
            if let Some(v) = response.headers().get(name) {
                fresh.headers_mut().insert(name, v.clone());
            }
        }
        response = to_tonic_body(fresh);
    }
    response.headers_mut().remove("grpc-status");
    response.headers_mut().remove("grpc-message");
    response.headers_mut().remove("grpc-status-details-bin");
    response
}

/// For the README and the CLI: what the request headers mean.
pub fn headers_documentation() -> &'static str {
    HEADERS_DOC
}

#[cfg(test)]
mod tests {
    use super::*;

    fn search(query: &str) -> Result<String, String> {
        let uri: Uri = format!("{BASE_PATH}/CareTeam?{query}").parse().unwrap();
        searched_nhs_number(&uri)
            .map(|n| n.as_str().to_string())
            .map_err(|e| e.issues[0].expression.clone().unwrap_or_default())
    }

    #[test]
    fn a_search_names_one_nhs_number_in_the_nhs_number_system_and_nothing_else() {
        let ok = "patient:identifier=https://fhir.nhs.uk/Id/nhs-number%7C9990000018";
        assert_eq!(search(ok).as_deref(), Ok("9990000018"));
        assert_eq!(search(&format!("{ok}&_format=json")).as_deref(), Ok("9990000018"));
        assert_eq!(
            search("patient:identifier=https://fhir.nhs.uk/Id/nhs-number|9990000018").as_deref(),
            Ok("9990000018")
        );
        // Wrong check digit, wrong system, no system, twice, missing, unknown parameter.
        assert_eq!(
            search("patient:identifier=https://fhir.nhs.uk/Id/nhs-number%7C9990000019"),
            Err("patient:identifier".into())
        );
        assert_eq!(search("patient:identifier=urn:other%7C9990000018"), Err("patient:identifier".into()));
        assert_eq!(search("patient:identifier=9990000018"), Err("patient:identifier".into()));
        assert_eq!(search(&format!("{ok}&{ok}")), Err("patient:identifier".into()));
        assert_eq!(search("_count=10"), Err("query".into()));
        assert_eq!(search(""), Err("patient:identifier".into()));
    }

    #[test]
    fn refusals_by_the_inner_layers_become_operation_outcomes_with_the_http_status() {
        for (code, status) in [
            (tonic::Code::Unauthenticated, 401),
            (tonic::Code::PermissionDenied, 403),
            (tonic::Code::ResourceExhausted, 429),
            (tonic::Code::Unavailable, 503),
        ] {
            let grpc = tonic::Status::new(code, "refused").into_http::<tonic::body::Body>();
            let answer = finish(grpc);
            assert_eq!(answer.status().as_u16(), status, "{code:?}");
            assert_eq!(answer.headers()[http::header::CONTENT_TYPE], FHIR_JSON);
            assert!(answer.headers().get("grpc-status").is_none(), "no gRPC headers leak");
        }
    }
}
