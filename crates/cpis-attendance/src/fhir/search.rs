//! The two searches, `CareTeam` and `AuditEvent`: the FHIR request is read
//! into the contract's request and runs the same operation as gRPC
//! (`CheckIn` for a notifying read, `SilentRead` for a silent one, the
//! setting's `ListEpisodes` for the access history).

use super::outcome::FhirError;
use super::resources::{self, NHS_NUMBER_SYSTEM};
use super::{
    base_url, fhir, CORRELATION_HEADER, REQUEST_ID_HEADER, SETTING_TYPE_HEADER, UNSCHEDULED_HEADER, USER_HEADER,
};
use crate::admitted;
use crate::registry::CallerDeadline;
use crate::Attendance;
use axum::extract::{Extension, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use cpis_domain::identity::Caller;
use cpis_domain::validate::NhsNumber;
use cpis_proto::attendance::v1::{CheckInRequest, SilentReadRequest};
use cpis_proto::common::v1::SettingType;
use cpis_runtime::users::UserContext;
use serde_json::Value;

/// `GET CareTeam`: the flags of one person, one CareTeam per flag.
pub async fn care_team(
    State(svc): State<Attendance>,
    Extension(caller): Extension<Caller>,
    user: Option<Extension<UserContext>>,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let result = care_team_search(&svc, &caller, user.as_ref().map(|u| &u.0), &uri, &headers).await;
    correlated(result.map_or_else(IntoResponse::into_response, |b| fhir(StatusCode::OK, &b)), &headers)
}

#[tracing::instrument(skip_all, fields(fhir = "CareTeam", setting, silent))]
async fn care_team_search(
    svc: &Attendance,
    caller: &Caller,
    user: Option<&UserContext>,
    uri: &Uri,
    headers: &HeaderMap,
) -> Result<Value, FhirError> {
    let setting = admitted::setting(caller)?;
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
    // X-User-ID is honoured only without a token, in the migration mode.
    let viewer = cpis_runtime::users::viewer(user, header(headers, USER_HEADER)?.unwrap_or_default(), "X-User-ID")?;
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
            ..Default::default()
        };
        svc.check_ins().check_in_now(setting, &viewer, req, CallerDeadline::unbounded()).await?.flags
    } else {
        let req = SilentReadRequest {
            request_id: if request_id.is_empty() { uuid::Uuid::new_v4().to_string() } else { request_id },
            nhs_number: nhs_number.as_str().to_string(),
            setting_type: setting_type as i32,
            ..Default::default()
        };
        svc.reads().silent_read(setting, &viewer, &req, CallerDeadline::unbounded()).await?.flags
    };
    let teams = flags.iter().map(|f| resources::care_team(nhs_number.as_str(), f)).collect();
    Ok(resources::searchset(&self_link(uri, headers, "CareTeam"), teams))
}

/// `GET AuditEvent`: the person's recent unscheduled-care episodes.
pub async fn audit_event(
    State(svc): State<Attendance>,
    Extension(caller): Extension<Caller>,
    user: Option<Extension<UserContext>>,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let result = audit_event_search(&svc, &caller, user.as_ref().map(|u| &u.0), &uri, &headers).await;
    correlated(result.map_or_else(IntoResponse::into_response, |b| fhir(StatusCode::OK, &b)), &headers)
}

#[tracing::instrument(skip_all, fields(fhir = "AuditEvent", setting))]
async fn audit_event_search(
    svc: &Attendance,
    caller: &Caller,
    user: Option<&UserContext>,
    uri: &Uri,
    headers: &HeaderMap,
) -> Result<Value, FhirError> {
    let setting = admitted::setting(caller)?;
    tracing::Span::current().record("setting", setting);
    let nhs_number = searched_nhs_number(uri)?;
    let viewer = cpis_runtime::users::viewer(user, header(headers, USER_HEADER)?.unwrap_or_default(), "X-User-ID")?;
    // Need to know: the history of a person with no flag in scope is not
    // shown; a read of it is audited like a gRPC ListEpisodes.
    let episodes = svc.reads().episodes_for_setting(setting, &nhs_number, &viewer, CallerDeadline::unbounded()).await?;
    let events =
        episodes.iter().map(|e| resources::audit_event(nhs_number.as_str(), &crate::convert::episode(e))).collect();
    Ok(resources::searchset(&self_link(uri, headers, "AuditEvent"), events))
}

/// The search's own URL (the NHS number stays in the caller's own answer).
fn self_link(uri: &Uri, headers: &HeaderMap, resource: &str) -> String {
    match uri.query() {
        Some(q) => format!("{}/{resource}?{q}", base_url(uri, headers)),
        None => format!("{}/{resource}", base_url(uri, headers)),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fhir::BASE_PATH;

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
}
