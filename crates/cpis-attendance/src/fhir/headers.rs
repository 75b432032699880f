//! The request headers: the national guide's (`IsUnscheduledAccessEvent`,
//! `TraceID`; `Authorization` and `NHSD-Session-URID` are the user layer's)
//! and cpis's own optional ones, which a client written to the guide never
//! needs to send (`X-Request-ID`, `X-Setting-Type`, `X-Correlation-ID`, and
//! `X-User-ID` in the migration mode only).
//!
//! `TraceID` is put on the request's trace only when it is a UUID (as the
//! guide recommends): anything else is accepted but recorded nowhere, since
//! a free-text reference could carry a person's details into the logs.

use super::outcome::FhirError;
use axum::http::{HeaderMap, Request};
use cpis_proto::common::v1::SettingType;
use futures::future::BoxFuture;
use std::task::{Context, Poll};
use tower::{Layer, Service};
use tracing::Instrument;

/// The guide's header choosing a notifying (`true`, or absent) or a silent (`false`) read.
pub const UNSCHEDULED_HEADER: &str = "isunscheduledaccessevent";
/// The guide's header: the caller's own reference of the request (a UUID recommended).
pub const TRACE_ID_HEADER: &str = "traceid";
/// Migration mode only (`CPIS_USER_AUTH=optional`): the user shown the answer when no token is sent.
pub const USER_HEADER: &str = "x-user-id";
/// Optional: the idempotency key of a notifying read (also the request id in logs).
pub const REQUEST_ID_HEADER: &str = "x-request-id";
/// Optional: the kind of setting, when it is not the default.
pub const SETTING_TYPE_HEADER: &str = "x-setting-type";
/// Optional: a caller's correlation id, returned on the response.
pub const CORRELATION_HEADER: &str = "x-correlation-id";

/// A header's value as text, if present.
pub fn text<'a>(headers: &'a HeaderMap, name: &str) -> Result<Option<&'a str>, FhirError> {
    match headers.get(name) {
        None => Ok(None),
        Some(v) => {
            v.to_str().map(|s| Some(s.trim())).map_err(|_| FhirError::header(name, format!("{name} must be text")))
        }
    }
}

/// `IsUnscheduledAccessEvent`: `true` or absent is unscheduled care (a
/// notifying read), `false` scheduled care (a silent read); anything else is
/// refused (PRECONDITION_FAILED).
pub fn unscheduled(headers: &HeaderMap) -> Result<bool, FhirError> {
    match text(headers, UNSCHEDULED_HEADER)?.map(str::to_ascii_lowercase).as_deref() {
        None | Some("true") => Ok(true),
        Some("false") => Ok(false),
        Some(_) => Err(FhirError::header(
            "IsUnscheduledAccessEvent",
            "IsUnscheduledAccessEvent must be true (unscheduled care; also when absent) or false (scheduled care)",
        )),
    }
}

/// Every setting type, with its code in `X-Setting-Type` (the CLI's `--setting-type` names).
pub const SETTING_TYPES: &[(SettingType, &str)] = &[
    (SettingType::EmergencyDepartment, "emergency-department"),
    (SettingType::UrgentTreatmentCentre, "urgent-treatment-centre"),
    (SettingType::WalkInCentre, "walk-in-centre"),
    (SettingType::MinorInjuryUnit, "minor-injury-unit"),
    (SettingType::OutOfHoursGp, "out-of-hours-gp"),
    (SettingType::GpPractice, "gp-practice"),
    (SettingType::CommunityServices, "community-services"),
    (SettingType::Camhs, "camhs"),
    (SettingType::ZeroToNineteenServices, "zero-to-nineteen-services"),
    (SettingType::Dentistry, "dentistry"),
    (SettingType::SexualHealth, "sexual-health"),
    (SettingType::SexualAssaultReferralCentre, "sexual-assault-referral-centre"),
];

/// The kind of setting: `X-Setting-Type`, else an emergency department for
/// a notifying read and a GP practice for a silent one.
pub fn setting_type(headers: &HeaderMap, unscheduled: bool) -> Result<SettingType, FhirError> {
    match text(headers, SETTING_TYPE_HEADER)? {
        None | Some("") if unscheduled => Ok(SettingType::EmergencyDepartment),
        None | Some("") => Ok(SettingType::GpPractice),
        Some(code) => {
            SETTING_TYPES.iter().find(|(_, c)| c.eq_ignore_ascii_case(code)).map(|(t, _)| *t).ok_or_else(|| {
                FhirError::header(
                    "X-Setting-Type",
                    "X-Setting-Type is not a known setting type: see the CapabilityStatement",
                )
            })
        }
    }
}

/// The `TraceID` of a request, when it is a UUID (in its canonical form).
pub fn trace_id(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(TRACE_ID_HEADER)?.to_str().ok()?.trim();
    uuid::Uuid::try_parse(value).ok().map(|id| id.hyphenated().to_string())
}

/// Tower layer (inside the telemetry layer): each request runs in a
/// `fhir.request` span carrying its `TraceID` when that is a UUID, so the
/// caller's reference is on the request's trace and its log lines.
#[derive(Debug, Clone, Copy, Default)]
pub struct TraceIdLayer;

impl<S> Layer<S> for TraceIdLayer {
    type Service = TraceId<S>;

    fn layer(&self, inner: S) -> Self::Service {
        TraceId { inner }
    }
}

/// The service made by [`TraceIdLayer`].
#[derive(Debug, Clone)]
pub struct TraceId<S> {
    inner: S,
}

impl<S, B> Service<Request<B>> for TraceId<S>
where
    S: Service<Request<B>> + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let trace_id = trace_id(req.headers());
        let fut = self.inner.call(req);
        Box::pin(async move {
            // Made when first polled, inside the telemetry layer's request span.
            let span = tracing::info_span!("fhir.request", trace_ref = tracing::field::Empty);
            if let Some(id) = &trace_id {
                span.record("trace_ref", id.as_str());
            }
            fut.instrument(span).await
        })
    }
}

/// The request headers, for the CapabilityStatement and the README.
pub const HEADERS_DOC: &str = "Request headers, as the national CP-IS guide defines them: `Authorization: Bearer \
<CIS2 access token>` and `NHSD-Session-URID: <role profile id>` (the person shown the answer and the role they \
selected; required), `IsUnscheduledAccessEvent` (CareTeam: `true` or absent is a notifying read from unscheduled \
care: recorded as a check-in, the access audited, one episode per person per setting per 24 hours, each \
responsible council alerted once; `false` is a silent read from scheduled care, audited as silent, no episode, no \
alert; any other value is refused with PRECONDITION_FAILED; accepted and checked the same way on AuditEvent), \
`TraceID` (your reference of the request, a UUID: recorded on the request's trace; a value that is not a UUID is \
accepted and recorded nowhere). Optional and cpis's own, never needed by a client following the guide: \
`X-Request-ID` (up to 64 visible ASCII characters: makes a notifying read idempotent, the same key from the same \
setting returning the first answer and alerting no one anew; without it a repeated read joins the same episode \
within 24 hours and alerts no one anew), `X-Setting-Type` (the kind of setting: emergency-department, \
urgent-treatment-centre, walk-in-centre, minor-injury-unit, out-of-hours-gp for notifying reads, default \
emergency-department; gp-practice, community-services, camhs, zero-to-nineteen-services, dentistry, sexual-health, \
sexual-assault-referral-centre for silent reads, default gp-practice), `X-Correlation-ID` (returned on the \
response; W3C `traceparent` also joins the trace), and `X-User-ID` (only while CPIS_USER_AUTH=optional, for a \
request without a token: the user id the setting asserts, recorded as not verified).";

#[cfg(test)]
mod tests {
    use super::super::outcome::ErrorCode;
    use super::*;
    use axum::http::HeaderValue;

    fn with(name: &'static str, value: &'static str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(name, HeaderValue::from_static(value));
        h
    }

    #[test]
    fn is_unscheduled_access_event_true_or_absent_is_a_notifying_read() {
        assert_eq!(unscheduled(&HeaderMap::new()).ok(), Some(true));
        assert_eq!(unscheduled(&with(UNSCHEDULED_HEADER, "true")).ok(), Some(true));
        assert_eq!(unscheduled(&with(UNSCHEDULED_HEADER, "TRUE")).ok(), Some(true));
        assert_eq!(unscheduled(&with(UNSCHEDULED_HEADER, "false")).ok(), Some(false));
        for bad in ["yes", "", "1"] {
            let h = with(UNSCHEDULED_HEADER, bad);
            let e = unscheduled(&h).unwrap_err();
            assert_eq!(e.issues[0].error, ErrorCode::PreconditionFailed, "{bad:?}");
        }
    }

    #[test]
    fn only_a_uuid_trace_id_is_kept() {
        let id = "6ede3b9d-a81b-4c75-9d77-e1d64d85c323";
        assert_eq!(trace_id(&with(TRACE_ID_HEADER, id)).as_deref(), Some(id));
        assert_eq!(trace_id(&with(TRACE_ID_HEADER, "patient 9990000018")), None);
        assert_eq!(trace_id(&HeaderMap::new()), None);
    }

    #[test]
    fn every_setting_type_code_reads_back_and_the_defaults_follow_the_read() {
        for (t, code) in SETTING_TYPES {
            let mut h = HeaderMap::new();
            h.insert(SETTING_TYPE_HEADER, HeaderValue::from_static(code));
            assert_eq!(setting_type(&h, true).ok(), Some(*t));
        }
        assert_eq!(setting_type(&HeaderMap::new(), true).ok(), Some(SettingType::EmergencyDepartment));
        assert_eq!(setting_type(&HeaderMap::new(), false).ok(), Some(SettingType::GpPractice));
        assert!(setting_type(&with(SETTING_TYPE_HEADER, "hospital"), true).is_err());
    }
}
