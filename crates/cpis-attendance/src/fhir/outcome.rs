//! Every FHIR error answer, built one way: an `ApiError` or a gRPC status
//! code becomes an `OperationOutcome` with the HTTP status and issue type of
//! one table ([`http_status`]). Also the outermost layer of the FHIR port,
//! which turns any answer that is not already FHIR (a refusal by the
//! authorization or limit layers, a 404 or 405 from the router) into one.

use super::resources::{self, Issue};
use super::{fhir, to_tonic_body, BASE_PATH, CORRELATION_HEADER};
use axum::http::{HeaderValue, Method, Request, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use cpis_runtime::server::PeerInfo;
use cpis_runtime::ApiError;
use futures::future::BoxFuture;
use std::convert::Infallible;
use std::task::{Context, Poll};
use tonic::Code;
use tower::{Layer, Service};

/// What an unauthenticated request for an unknown path is logged and counted as.
const UNKNOWN_PATH: &str = "/FHIR/R4/_unknown";

/// The HTTP status and FHIR issue type of a gRPC code: the one table.
pub fn http_status(code: Code) -> (StatusCode, &'static str) {
    match code {
        Code::InvalidArgument | Code::OutOfRange => (StatusCode::BAD_REQUEST, "invalid"),
        Code::Unauthenticated => (StatusCode::UNAUTHORIZED, "login"),
        Code::PermissionDenied => (StatusCode::FORBIDDEN, "forbidden"),
        Code::NotFound => (StatusCode::NOT_FOUND, "not-found"),
        Code::Aborted | Code::AlreadyExists => (StatusCode::CONFLICT, "conflict"),
        Code::FailedPrecondition => (StatusCode::PRECONDITION_FAILED, "business-rule"),
        Code::ResourceExhausted => (StatusCode::TOO_MANY_REQUESTS, "throttled"),
        Code::Unavailable => (StatusCode::SERVICE_UNAVAILABLE, "transient"),
        Code::DeadlineExceeded => (StatusCode::GATEWAY_TIMEOUT, "timeout"),
        Code::Unimplemented => (StatusCode::NOT_IMPLEMENTED, "not-supported"),
        _ => (StatusCode::INTERNAL_SERVER_ERROR, "exception"),
    }
}

/// A FHIR error: the gRPC code it is counted under (which decides the HTTP
/// status and issue type) and its issues.
#[derive(Debug)]
pub struct FhirError {
    /// The code the telemetry layer counts the request under.
    pub code: Code,
    /// What went wrong, one issue per field.
    pub issues: Vec<Issue>,
}

impl FhirError {
    /// An error with one issue of the type `code` maps to.
    pub fn new(code: Code, diagnostics: impl Into<String>, expression: Option<String>) -> Self {
        let issue = Issue { code: http_status(code).1, diagnostics: diagnostics.into(), expression };
        FhirError { code, issues: vec![issue] }
    }

    /// A bad search parameter or header, named by `expression`.
    pub fn invalid(expression: &str, diagnostics: impl Into<String>) -> Self {
        Self::new(Code::InvalidArgument, diagnostics, Some(expression.into()))
    }
}

impl IntoResponse for FhirError {
    fn into_response(self) -> Response {
        let mut response = fhir(http_status(self.code).0, &resources::operation_outcome(&self.issues));
        // For the telemetry layer's metrics and logs; removed by OutcomeLayer.
        response.headers_mut().insert("grpc-status", HeaderValue::from(self.code as i32));
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
            let issues = violations
                .into_iter()
                .map(|v| {
                    let at = fhir_location(&v.field).to_string();
                    Issue { code: "invalid", diagnostics: format!("{at}: {}", v.description), expression: Some(at) }
                })
                .collect();
            return FhirError { code: Code::InvalidArgument, issues };
        }
        // The service's one error -> Status mapping (it logs internal causes
        // with a reference), so both ports say the same.
        let status = tonic::Status::from(e);
        FhirError::new(status.code(), status.message(), None)
    }
}

/// The outermost layer of the FHIR port: a request for a path with no rule
/// in `POLICY` (an unknown resource type) from an authenticated caller is
/// 404; any answer that is not already FHIR becomes an OperationOutcome with
/// the HTTP status that fits.
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
            let error = FhirError::new(Code::NotFound, diagnostics, None);
            return Box::pin(async move { Ok(finish(to_tonic_body(error.into_response()))) });
        }
        let fut = self.inner.call(req);
        Box::pin(async move { Ok(finish(fut.await?)) })
    }
}

/// Makes any answer a FHIR one and removes the gRPC status headers.
pub fn finish(mut response: http::Response<tonic::body::Body>) -> http::Response<tonic::body::Body> {
    let is_fhir =
        response.headers().get(http::header::CONTENT_TYPE).is_some_and(|v| v.as_bytes() == super::FHIR_JSON.as_bytes());
    let grpc = response
        .headers()
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i32>().ok())
        .map(Code::from_i32);
    let message = response
        .headers()
        .get("grpc-message")
        .map(|m| percent_encoding::percent_decode(m.as_bytes()).decode_utf8_lossy().into_owned());
    if !is_fhir {
        let (status, code, diagnostics) = match grpc {
            Some(code) if code != Code::Ok => {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_by_the_inner_layers_become_operation_outcomes_with_the_http_status() {
        for (code, status) in [
            (Code::Unauthenticated, 401),
            (Code::PermissionDenied, 403),
            (Code::ResourceExhausted, 429),
            (Code::Unavailable, 503),
        ] {
            let grpc = tonic::Status::new(code, "refused").into_http::<tonic::body::Body>();
            let answer = finish(grpc);
            assert_eq!(answer.status().as_u16(), status, "{code:?}");
            assert_eq!(answer.headers()[http::header::CONTENT_TYPE], super::super::FHIR_JSON);
            assert!(answer.headers().get("grpc-status").is_none(), "no gRPC headers leak");
        }
    }

    #[test]
    fn errors_of_the_operations_take_the_same_table() {
        let denied = FhirError::from(ApiError::PermissionDenied("no".into()));
        assert_eq!((denied.code, denied.issues[0].code), (Code::PermissionDenied, "forbidden"));
        let invalid = FhirError::from(ApiError::invalid("user_id", "is too long"));
        assert_eq!(invalid.issues[0].expression.as_deref(), Some("X-User-ID"));
        assert_eq!(invalid.into_response().status(), StatusCode::BAD_REQUEST);
        let busy = FhirError::from(ApiError::Unavailable("retry".into())).into_response();
        assert_eq!(busy.status(), StatusCode::SERVICE_UNAVAILABLE);
    }
}
