//! The two searches of the national guide, read into the contract's
//! requests and run by the same operations as gRPC:
//!
//! - `GET CareTeam?patient:identifier=https://fhir.nhs.uk/Id/nhs-number|{nhs}`:
//!   `CheckIn` for a notifying read (`IsUnscheduledAccessEvent` true or
//!   absent), `SilentRead` for a silent one (`false`); one CareTeam per flag.
//! - `GET AuditEvent?patient:identifier=...[&_include=AuditEvent:entity-type=http://terminology.hl7.org/CodeSystem/v3-RoleClass|ASSIGNED]`:
//!   the access history (`crate::history`), with the PractitionerRoles of the
//!   people who looked when the `_include` asks for them.

use super::outcome::FhirError;
use super::{audit_event, bundle, care_team, fhir, headers, Api, NHS_NUMBER_SYSTEM};
use crate::admitted;
use crate::registry::CallerDeadline;
use axum::extract::{Extension, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use cpis_domain::identity::Caller;
use cpis_domain::validate::NhsNumber;
use cpis_proto::attendance::v1::{CheckInRequest, SilentReadRequest};
use cpis_runtime::users::UserContext;
use serde_json::Value;

/// The `_include` values that bring in the PractitionerRoles of an AuditEvent
/// search: the guide's own, and the standard R4 search parameter `agent`.
pub const ROLE_INCLUDES: &[&str] = &[
    "AuditEvent:entity-type=http://terminology.hl7.org/CodeSystem/v3-RoleClass|ASSIGNED",
    "AuditEvent:agent",
    "AuditEvent:agent:PractitionerRole",
];

/// `GET CareTeam`: the flags of one person, one CareTeam per flag.
pub async fn care_team(
    State(api): State<Api>,
    Extension(caller): Extension<Caller>,
    user: Option<Extension<UserContext>>,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let result = care_team_search(&api, &caller, user.as_ref().map(|u| &u.0), &uri, &headers).await;
    correlated(result.map_or_else(IntoResponse::into_response, |b| fhir(StatusCode::OK, &b)), &headers)
}

#[tracing::instrument(skip_all, fields(fhir = "CareTeam", setting, silent))]
async fn care_team_search(
    api: &Api,
    caller: &Caller,
    user: Option<&UserContext>,
    uri: &Uri,
    headers: &HeaderMap,
) -> Result<Value, FhirError> {
    let setting = admitted::setting(caller)?;
    tracing::Span::current().record("setting", setting);
    let search = searched(uri, &[])?;
    let unscheduled = headers::unscheduled(headers)?;
    tracing::Span::current().record("silent", !unscheduled);
    let setting_type = headers::setting_type(headers, unscheduled)?;
    // X-User-ID is honoured only without a token, in the migration mode.
    let viewer = cpis_runtime::users::viewer(
        user,
        headers::text(headers, headers::USER_HEADER)?.unwrap_or_default(),
        "X-User-ID",
    )?;
    // Without X-Request-ID every read is a check-in of its own: the same
    // person at the same setting within 24 hours is still one episode, and
    // no council is alerted twice for it.
    let request_id = match headers::text(headers, headers::REQUEST_ID_HEADER)? {
        Some(id) if !id.is_empty() => id.to_string(),
        _ => uuid::Uuid::new_v4().to_string(),
    };
    let nhs_number = search.nhs_number.as_str().to_string();
    let svc = &api.svc;
    let flags = if unscheduled {
        let req = CheckInRequest {
            request_id,
            nhs_number,
            arrived_at: None,
            setting_type: setting_type as i32,
            ..Default::default()
        };
        svc.check_ins().check_in_now(setting, &viewer, req, CallerDeadline::unbounded()).await?.flags
    } else {
        let req = SilentReadRequest { request_id, nhs_number, setting_type: setting_type as i32, ..Default::default() };
        svc.reads().silent_read(setting, &viewer, &req, CallerDeadline::unbounded()).await?.flags
    };
    let base = api.base(uri, headers);
    let teams = flags.iter().map(|f| care_team::care_team(&base, search.nhs_number.as_str(), f)).collect();
    Ok(bundle::searchset(&base, &bundle::self_link(&base, "CareTeam", uri.query()), teams, Vec::new()))
}

/// `GET AuditEvent`: the person's recent unscheduled-care accesses, and who looked.
pub async fn audit_event(
    State(api): State<Api>,
    Extension(caller): Extension<Caller>,
    user: Option<Extension<UserContext>>,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let result = audit_event_search(&api, &caller, user.as_ref().map(|u| &u.0), &uri, &headers).await;
    correlated(result.map_or_else(IntoResponse::into_response, |b| fhir(StatusCode::OK, &b)), &headers)
}

#[tracing::instrument(skip_all, fields(fhir = "AuditEvent", setting))]
async fn audit_event_search(
    api: &Api,
    caller: &Caller,
    user: Option<&UserContext>,
    uri: &Uri,
    headers: &HeaderMap,
) -> Result<Value, FhirError> {
    let setting = admitted::setting(caller)?;
    tracing::Span::current().record("setting", setting);
    let search = searched(uri, ROLE_INCLUDES)?;
    // The guide's client sends it here too: checked, and it changes nothing.
    headers::unscheduled(headers)?;
    let viewer = cpis_runtime::users::viewer(
        user,
        headers::text(headers, headers::USER_HEADER)?.unwrap_or_default(),
        "X-User-ID",
    )?;
    // Need to know: the history of a person with no flag in scope is not
    // shown; a read of a flagged person's is audited like a gRPC ListEpisodes.
    let accesses =
        api.svc.history().for_setting(setting, &search.nhs_number, &viewer, CallerDeadline::unbounded()).await?;
    let (events, roles) = audit_event::history(&accesses, search.include_roles);
    let base = api.base(uri, headers);
    Ok(bundle::searchset(&base, &bundle::self_link(&base, "AuditEvent", uri.query()), events, roles))
}

/// A search as its query states it.
#[derive(Debug)]
struct Search {
    /// The person searched for.
    nhs_number: NhsNumber,
    /// Whether an `_include` asks for the PractitionerRoles.
    include_roles: bool,
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

/// The search: exactly one
/// `patient:identifier=https://fhir.nhs.uk/Id/nhs-number|{nhs}`, `_include`
/// only with one of `includes`, and no parameter this endpoint does not
/// support (a search it would silently widen or narrow is refused).
fn searched(uri: &Uri, includes: &[&str]) -> Result<Search, FhirError> {
    let mut found = None;
    let mut include_roles = false;
    for (name, value) in query_params(uri) {
        match name.as_str() {
            "patient:identifier" => {
                if found.is_some() {
                    return Err(FhirError::search("patient:identifier", "patient:identifier must be given once"));
                }
                found = Some(value);
            }
            "_include" if includes.contains(&value.as_str()) => include_roles = true,
            "_include" => {
                return Err(FhirError::search(
                    "_include",
                    "unsupported _include: see the CapabilityStatement (searchInclude)",
                ))
            }
            "_format" if matches!(value.as_str(), "json" | "application/fhir+json" | "application/json") => {}
            other => {
                let shown: String = other.chars().take(40).filter(|c| !c.is_ascii_digit()).collect();
                return Err(FhirError::search(
                    "query",
                    format!("unsupported search parameter {shown:?}: see the CapabilityStatement"),
                ));
            }
        }
    }
    let Some(value) = found else {
        return Err(FhirError::search("patient:identifier", "patient:identifier is required"));
    };
    let Some((system, nhs)) = value.split_once('|') else {
        return Err(FhirError::search(
            "patient:identifier",
            format!("patient:identifier must be {NHS_NUMBER_SYSTEM}|<NHS number>"),
        ));
    };
    if system != NHS_NUMBER_SYSTEM {
        return Err(FhirError::search(
            "patient:identifier",
            format!("patient:identifier must use the system {NHS_NUMBER_SYSTEM}"),
        ));
    }
    let nhs_number = NhsNumber::parse(nhs).ok_or_else(|| {
        FhirError::search("patient:identifier", "Invalid NHS number: 10 digits with a valid check digit")
    })?;
    Ok(Search { nhs_number, include_roles })
}

/// Adds the caller's correlation id to a response.
fn correlated(mut response: Response, headers: &HeaderMap) -> Response {
    if let Some(v) = headers
        .get(headers::CORRELATION_HEADER)
        .filter(|v| !v.is_empty() && v.len() <= 64 && v.as_bytes().iter().all(|b| b.is_ascii_graphic()))
    {
        response.headers_mut().insert(headers::CORRELATION_HEADER, v.clone());
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fhir::BASE_PATH;

    fn search(query: &str, includes: &[&str]) -> Result<(String, bool), String> {
        let uri: Uri = format!("{BASE_PATH}/AuditEvent?{query}").parse().unwrap();
        searched(&uri, includes)
            .map(|s| (s.nhs_number.as_str().to_string(), s.include_roles))
            .map_err(|e| e.issues[0].expression.clone().unwrap_or_default())
    }

    fn nhs(query: &str) -> Result<String, String> {
        search(query, &[]).map(|(n, _)| n)
    }

    #[test]
    fn a_search_names_one_nhs_number_in_the_nhs_number_system_and_nothing_else() {
        let ok = "patient:identifier=https://fhir.nhs.uk/Id/nhs-number%7C9990000018";
        assert_eq!(nhs(ok).as_deref(), Ok("9990000018"));
        assert_eq!(nhs(&format!("{ok}&_format=json")).as_deref(), Ok("9990000018"));
        assert_eq!(nhs("patient:identifier=https://fhir.nhs.uk/Id/nhs-number|9990000018").as_deref(), Ok("9990000018"));
        // Wrong check digit, wrong system, no system, twice, missing, unknown parameter.
        assert_eq!(
            nhs("patient:identifier=https://fhir.nhs.uk/Id/nhs-number%7C9990000019"),
            Err("patient:identifier".into())
        );
        assert_eq!(nhs("patient:identifier=urn:other%7C9990000018"), Err("patient:identifier".into()));
        assert_eq!(nhs("patient:identifier=9990000018"), Err("patient:identifier".into()));
        assert_eq!(nhs(&format!("{ok}&{ok}")), Err("patient:identifier".into()));
        assert_eq!(nhs("_count=10"), Err("query".into()));
        assert_eq!(nhs(""), Err("patient:identifier".into()));
    }

    #[test]
    fn the_guides_include_asks_for_the_practitioner_roles_as_sent_or_encoded() {
        let ok = "patient:identifier=https://fhir.nhs.uk/Id/nhs-number|9990000018";
        let guide = "_include=AuditEvent:entity-type=http://terminology.hl7.org/CodeSystem/v3-RoleClass|ASSIGNED";
        let encoded =
            "_include=AuditEvent%3Aentity-type%3Dhttp%3A%2F%2Fterminology.hl7.org%2FCodeSystem%2Fv3-RoleClass%7CASSIGNED";
        for include in [guide, encoded, "_include=AuditEvent:agent"] {
            assert_eq!(search(&format!("{ok}&{include}"), ROLE_INCLUDES).map(|(_, i)| i), Ok(true), "{include}");
        }
        assert_eq!(search(ok, ROLE_INCLUDES).map(|(_, i)| i), Ok(false));
        assert_eq!(search(&format!("{ok}&_include=AuditEvent:entity"), ROLE_INCLUDES), Err("_include".into()));
        assert_eq!(search(&format!("{ok}&{guide}"), &[]), Err("_include".into()), "CareTeam has no _include");
    }
}
