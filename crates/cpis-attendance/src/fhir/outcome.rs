//! Every FHIR error answer, built one way, in the shape of the national
//! guide's `cpis-opoutcome-01.json`: an OperationOutcome whose issue has a
//! severity, a FHIR issue type, `details.coding` from NHS England's
//! England-SpineErrorOrWarningCode code system, and a human-readable
//! `diagnostics` (never personal data). One table ([`http_status`]) gives
//! each gRPC code its HTTP status, issue type and Spine code.
//!
//! Also the outermost layer of the FHIR port, which turns any answer that is
//! not already FHIR (a refusal by the authorization, limit or user layers, a
//! 404 or 405 from the router) into one.

use super::{fhir, to_tonic_body, BASE_PATH, CORRELATION_HEADER};
use axum::http::{HeaderValue, Method, Request, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use cpis_runtime::server::PeerInfo;
use cpis_runtime::ApiError;
use futures::future::BoxFuture;
use serde_json::{json, Value};
use std::convert::Infallible;
use std::task::{Context, Poll};
use tonic::Code;
use tower::{Layer, Service};

/// NHS England's Spine error and warning codes (the guide's `details.coding` system).
pub const SPINE_SYSTEM: &str = "https://fhir.nhs.uk/CodeSystem/England-SpineErrorOrWarningCode";
/// NHS England's API platform error codes: only for what the Spine system has no concept of (rate limits).
pub const API_SYSTEM: &str = "https://fhir.nhs.uk/CodeSystem/England-APIErrorOrWarningCode";

/// What went wrong, as a client following the guide matches it: one concept
/// of NHS England's published code systems each (none of our own).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// 400: an invalid NHS number or a malformed search.
    InvalidSearchData,
    /// 400: a missing or invalid header; 412 for a failed precondition.
    PreconditionFailed,
    /// 401 (no valid identity or user token) and 403 (not allowed).
    AccessDenied,
    /// 404: an endpoint that does not exist; 501.
    UnsupportedService,
    /// 404: a resource read by id (our resources are only searched or included).
    ResourceNotFound,
    /// 405: a method other than GET.
    InvalidMethod,
    /// 429: too many requests in flight (England-APIErrorOrWarningCode).
    TooManyRequests,
    /// 503 and 504: a dependency is down or did not answer in time (retry).
    UnableToCallService,
    /// 409 and 500: the request could not be completed.
    FailureToProcessMessage,
}

impl ErrorCode {
    /// The code's system, code and display, as published.
    pub fn coding(self) -> (&'static str, &'static str, &'static str) {
        match self {
            ErrorCode::InvalidSearchData => (SPINE_SYSTEM, "INVALID_SEARCH_DATA", "Invalid search data"),
            ErrorCode::PreconditionFailed => (SPINE_SYSTEM, "PRECONDITION_FAILED", "Precondition failed"),
            ErrorCode::AccessDenied => {
                (SPINE_SYSTEM, "ACCESS_DENIED", "Access has been denied to process this request")
            }
            ErrorCode::UnsupportedService => (SPINE_SYSTEM, "UNSUPPORTED_SERVICE", "Unsupported service"),
            ErrorCode::ResourceNotFound => (SPINE_SYSTEM, "RESOURCE_NOT_FOUND", "Resource not found"),
            ErrorCode::InvalidMethod => (SPINE_SYSTEM, "INVALID_METHOD", "Invalid method"),
            ErrorCode::TooManyRequests => {
                (API_SYSTEM, "TOO_MANY_REQUESTS", "Your connection has exceeded the rate limit")
            }
            ErrorCode::UnableToCallService => (SPINE_SYSTEM, "UNABLE_TO_CALL_SERVICE", "Unable to call service"),
            ErrorCode::FailureToProcessMessage => {
                (SPINE_SYSTEM, "FAILURE_TO_PROCESS_MESSAGE", "Failure to process message")
            }
        }
    }
}

/// The HTTP status, FHIR issue type and error code of a gRPC code: the one
/// table. An `INVALID_ARGUMENT` about a header is PRECONDITION_FAILED instead
/// (see [`FhirError::header`]).
pub fn http_status(code: Code) -> (StatusCode, &'static str, ErrorCode) {
    use ErrorCode as E;
    match code {
        Code::InvalidArgument | Code::OutOfRange => (StatusCode::BAD_REQUEST, "invalid", E::InvalidSearchData),
        Code::Unauthenticated => (StatusCode::UNAUTHORIZED, "login", E::AccessDenied),
        Code::PermissionDenied => (StatusCode::FORBIDDEN, "forbidden", E::AccessDenied),
        Code::NotFound => (StatusCode::NOT_FOUND, "not-found", E::UnsupportedService),
        Code::Aborted | Code::AlreadyExists => (StatusCode::CONFLICT, "conflict", E::FailureToProcessMessage),
        Code::FailedPrecondition => (StatusCode::PRECONDITION_FAILED, "business-rule", E::PreconditionFailed),
        Code::ResourceExhausted => (StatusCode::TOO_MANY_REQUESTS, "throttled", E::TooManyRequests),
        Code::Unavailable => (StatusCode::SERVICE_UNAVAILABLE, "transient", E::UnableToCallService),
        Code::DeadlineExceeded => (StatusCode::GATEWAY_TIMEOUT, "timeout", E::UnableToCallService),
        Code::Unimplemented => (StatusCode::NOT_IMPLEMENTED, "not-supported", E::UnsupportedService),
        _ => (StatusCode::INTERNAL_SERVER_ERROR, "exception", E::FailureToProcessMessage),
    }
}

/// One issue of an OperationOutcome.
#[derive(Debug, Clone)]
pub struct Issue {
    /// The FHIR issue type (`invalid`, `login`, `forbidden`, ...).
    pub code: &'static str,
    /// The Spine (or API platform) error code in `details.coding`.
    pub error: ErrorCode,
    /// What went wrong, for a person; never personal data.
    pub diagnostics: String,
    /// Where: a search parameter or header name.
    pub expression: Option<String>,
}

/// An OperationOutcome with `issues` (all errors).
pub fn operation_outcome(issues: &[Issue]) -> Value {
    let issues: Vec<Value> = issues
        .iter()
        .map(|i| {
            let (system, code, display) = i.error.coding();
            let mut issue = json!({
                "severity": "error",
                "code": i.code,
                "details": { "coding": [{ "system": system, "code": code, "display": display }] },
                "diagnostics": i.diagnostics,
            });
            if let Some(e) = &i.expression {
                issue["expression"] = json!([e]);
            }
            issue
        })
        .collect();
    json!({ "resourceType": "OperationOutcome", "id": uuid::Uuid::new_v4().to_string(), "issue": issues })
}

/// A FHIR error: the gRPC code it is counted under (which decides the HTTP
/// status) and its issues.
#[derive(Debug)]
pub struct FhirError {
    /// The code the telemetry layer counts the request under.
    pub code: Code,
    /// What went wrong, one issue per field.
    pub issues: Vec<Issue>,
}

impl FhirError {
    /// An error with one issue of the type and error code `code` maps to.
    pub fn new(code: Code, diagnostics: impl Into<String>, expression: Option<String>) -> Self {
        let (_, issue_type, error) = http_status(code);
        Self::with(code, error, issue_type, diagnostics, expression)
    }

    fn with(
        code: Code,
        error: ErrorCode,
        issue_type: &'static str,
        diagnostics: impl Into<String>,
        expression: Option<String>,
    ) -> Self {
        FhirError { code, issues: vec![Issue { code: issue_type, error, diagnostics: diagnostics.into(), expression }] }
    }

    /// An invalid NHS number or a malformed search (INVALID_SEARCH_DATA), at `expression`.
    pub fn search(expression: &str, diagnostics: impl Into<String>) -> Self {
        Self::with(Code::InvalidArgument, ErrorCode::InvalidSearchData, "invalid", diagnostics, Some(expression.into()))
    }

    /// A missing or invalid header (PRECONDITION_FAILED), named by `header`.
    pub fn header(header: &str, diagnostics: impl Into<String>) -> Self {
        Self::with(Code::InvalidArgument, ErrorCode::PreconditionFailed, "invalid", diagnostics, Some(header.into()))
    }
}

/// A read by id of one of our resource types: RESOURCE_NOT_FOUND (404).
pub fn not_found(resource: &str) -> FhirError {
    FhirError::with(
        Code::NotFound,
        ErrorCode::ResourceNotFound,
        "not-found",
        format!("no such {resource}: {resource} resources are not read by id; see {BASE_PATH}/metadata"),
        None,
    )
}

impl IntoResponse for FhirError {
    fn into_response(self) -> Response {
        let mut response = fhir(http_status(self.code).0, &operation_outcome(&self.issues));
        // For the telemetry layer's metrics and logs; removed by OutcomeLayer.
        response.headers_mut().insert("grpc-status", HeaderValue::from(self.code as i32));
        response
    }
}

/// Where a contract field comes from on the FHIR port, and whether it is a header.
fn fhir_location(field: &str) -> (&str, bool) {
    match field {
        "nhs_number" => ("patient:identifier", false),
        "request_id" => ("X-Request-ID", true),
        "user_id" => ("X-User-ID", true),
        "setting_type" => ("X-Setting-Type", true),
        other => (other, false),
    }
}

impl From<ApiError> for FhirError {
    fn from(e: ApiError) -> Self {
        if let ApiError::InvalidArgument(violations) = e {
            let issues = violations
                .into_iter()
                .map(|v| {
                    let (at, header) = fhir_location(&v.field);
                    let error = if header { ErrorCode::PreconditionFailed } else { ErrorCode::InvalidSearchData };
                    let diagnostics = format!("{at}: {}", v.description);
                    Issue { code: "invalid", error, diagnostics, expression: Some(at.to_string()) }
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

/// What an unauthenticated request for an unknown path is logged and counted as.
const UNKNOWN_PATH: &str = "/FHIR/R4/_unknown";

/// The outermost layer of the FHIR port: a request for a path with no rule
/// in `POLICY` from an authenticated caller is 404 (RESOURCE_NOT_FOUND for a
/// read by id of one of our resource types, UNSUPPORTED_SERVICE otherwise);
/// any answer that is not already FHIR becomes an OperationOutcome.
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

/// Our resource types, which may be named in a read by id.
const OUR_TYPES: &[&str] = &["CareTeam", "AuditEvent", "PractitionerRole", "StructureDefinition"];

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
            let error = unknown_path(req.method(), path);
            return Box::pin(async move { Ok(finish(to_tonic_body(error.into_response()))) });
        }
        let fut = self.inner.call(req);
        Box::pin(async move { Ok(finish(fut.await?)) })
    }
}

/// The answer to an authenticated request for a path outside the API.
fn unknown_path(method: &Method, path: &str) -> FhirError {
    let rest = path.strip_prefix(BASE_PATH).unwrap_or(path).trim_start_matches('/');
    // Resource types are letters: nothing else is echoed (a path may hold an NHS number).
    let what: String =
        rest.split('/').next().unwrap_or_default().chars().filter(char::is_ascii_alphabetic).take(40).collect();
    if *method != Method::GET {
        let diagnostics = format!("{method} is not supported: see {BASE_PATH}/metadata");
        return FhirError::with(Code::NotFound, ErrorCode::UnsupportedService, "not-supported", diagnostics, None);
    }
    match OUR_TYPES.iter().find(|t| **t == what) {
        Some(resource) if rest.contains('/') => not_found(resource),
        _ => FhirError::new(
            Code::NotFound,
            format!("unknown or unsupported resource type {what:?}: see {BASE_PATH}/metadata"),
            None,
        ),
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
        let issue = match grpc {
            Some(code) if code != Code::Ok => {
                let (_, issue_type, error) = http_status(code);
                let diagnostics = message.unwrap_or_else(|| format!("{code:?}"));
                (http_status(code).0, Issue { code: issue_type, error, diagnostics, expression: None })
            }
            _ if response.status() == StatusCode::METHOD_NOT_ALLOWED => {
                let diagnostics = format!("only GET is supported: see {BASE_PATH}/metadata");
                let error = ErrorCode::InvalidMethod;
                (StatusCode::METHOD_NOT_ALLOWED, Issue { code: "not-supported", error, diagnostics, expression: None })
            }
            _ if response.status() == StatusCode::NOT_FOUND => {
                let diagnostics = format!("unknown resource: see {BASE_PATH}/metadata");
                let error = ErrorCode::UnsupportedService;
                (StatusCode::NOT_FOUND, Issue { code: "not-found", error, diagnostics, expression: None })
            }
            _ => {
                let diagnostics = "the request could not be handled".to_string();
                let error = ErrorCode::FailureToProcessMessage;
                (response.status(), Issue { code: "exception", error, diagnostics, expression: None })
            }
        };
        let (status, issue) = issue;
        let mut fresh = fhir(status, &operation_outcome(&[issue]));
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

    fn spine(response: http::Response<tonic::body::Body>) -> (u16, String) {
        let status = response.status().as_u16();
        (status, response.headers().get(http::header::CONTENT_TYPE).map(|v| v.to_str().unwrap().to_string()).unwrap())
    }

    #[test]
    fn refusals_by_the_inner_layers_become_operation_outcomes_with_the_http_status_and_spine_code() {
        for (code, status, error) in [
            (Code::Unauthenticated, 401, "ACCESS_DENIED"),
            (Code::PermissionDenied, 403, "ACCESS_DENIED"),
            (Code::ResourceExhausted, 429, "TOO_MANY_REQUESTS"),
            (Code::Unavailable, 503, "UNABLE_TO_CALL_SERVICE"),
        ] {
            let grpc = tonic::Status::new(code, "refused").into_http::<tonic::body::Body>();
            let answer = finish(grpc);
            assert!(answer.headers().get("grpc-status").is_none(), "no gRPC headers leak");
            assert_eq!(spine(answer), (status, super::super::FHIR_JSON.to_string()), "{code:?}");
            assert_eq!(http_status(code).2.coding().1, error, "{code:?}");
        }
    }

    #[test]
    fn errors_of_the_operations_take_the_same_table_and_headers_are_preconditions() {
        let denied = FhirError::from(ApiError::PermissionDenied("no".into()));
        assert_eq!((denied.code, denied.issues[0].code), (Code::PermissionDenied, "forbidden"));
        assert_eq!(denied.issues[0].error, ErrorCode::AccessDenied);
        let header = FhirError::from(ApiError::invalid("request_id", "is too long"));
        assert_eq!(header.issues[0].expression.as_deref(), Some("X-Request-ID"));
        assert_eq!(header.issues[0].error, ErrorCode::PreconditionFailed);
        let search = FhirError::from(ApiError::invalid("nhs_number", "is not valid"));
        assert_eq!(search.issues[0].error, ErrorCode::InvalidSearchData);
        assert_eq!(search.into_response().status(), StatusCode::BAD_REQUEST);
        let busy = FhirError::from(ApiError::Unavailable("retry".into())).into_response();
        assert_eq!(busy.status(), StatusCode::SERVICE_UNAVAILABLE);
    }

    #[test]
    fn an_unknown_path_is_an_unsupported_service_and_a_read_by_id_is_not_found() {
        let code = |method: Method, path: &str| unknown_path(&method, path).issues[0].error;
        assert_eq!(code(Method::GET, "/FHIR/R4/Patient"), ErrorCode::UnsupportedService);
        assert_eq!(code(Method::GET, "/FHIR/R4/Patient/9990000018"), ErrorCode::UnsupportedService);
        assert_eq!(code(Method::GET, "/FHIR/R4/CareTeam/0b7e"), ErrorCode::ResourceNotFound);
        assert_eq!(code(Method::GET, "/FHIR/R4/PractitionerRole/0b7e"), ErrorCode::ResourceNotFound);
        assert_eq!(code(Method::POST, "/FHIR/R4/Patient"), ErrorCode::UnsupportedService);
        let said = &unknown_path(&Method::GET, "/FHIR/R4/Patient9990000018").issues[0].diagnostics;
        assert!(!said.contains("9990000018"), "{said}");
    }

    #[test]
    fn the_outcome_has_the_guides_shape() {
        let outcome = operation_outcome(&FhirError::header("IsUnscheduledAccessEvent", "bad").issues);
        let issue = &outcome["issue"][0];
        assert_eq!(issue["severity"], "error");
        assert_eq!(issue["code"], "invalid");
        assert_eq!(issue["details"]["coding"][0]["system"], SPINE_SYSTEM);
        assert_eq!(issue["details"]["coding"][0]["code"], "PRECONDITION_FAILED");
        assert_eq!(issue["diagnostics"], "bad");
    }
}
