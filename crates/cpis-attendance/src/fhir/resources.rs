//! The FHIR R4 resources this endpoint answers with, built from the
//! contract's types: `CareTeam` (one per flag), `AuditEvent` (one per
//! unscheduled-care episode), `Bundle` (searchset), `OperationOutcome` and
//! the `CapabilityStatement`. Every resource validates against the R4 (and
//! R4B) base definitions; the Python example parses each one with the
//! `fhir.resources` R4B models in CI.

use chrono::{DateTime, SecondsFormat, Utc};
use cpis_proto::common::v1::{Episode, Flag, PlanType, SettingType};
use serde_json::{json, Value};

/// The NHS number identifier system.
pub const NHS_NUMBER_SYSTEM: &str = "https://fhir.nhs.uk/Id/nhs-number";
/// ODS organisation codes (settings).
pub const ODS_SYSTEM: &str = "https://fhir.nhs.uk/Id/ods-organization-code";
/// ONS GSS codes of local authorities (councils).
pub const GSS_SYSTEM: &str = "https://fhir.cpis.local/Id/gss-code";
/// Our code system for plan types.
pub const PLAN_TYPE_SYSTEM: &str = "https://fhir.cpis.local/CodeSystem/plan-type";
/// Our code system for setting types.
pub const SETTING_TYPE_SYSTEM: &str = "https://fhir.cpis.local/CodeSystem/setting-type";
/// Extension: expected delivery date of an unborn child protection plan.
pub const EXPECTED_DELIVERY_DATE: &str = "https://fhir.cpis.local/StructureDefinition/expected-delivery-date";
/// Extension: when a telephone number is answered (`office-hours`, `out-of-hours`).
pub const CONTACT_AVAILABILITY: &str = "https://fhir.cpis.local/StructureDefinition/contact-availability";

/// The plan type's code and display.
pub fn plan_type_code(plan_type: i32) -> (&'static str, &'static str) {
    match PlanType::try_from(plan_type) {
        Ok(PlanType::ChildProtection) => ("child-protection", "Child protection plan"),
        Ok(PlanType::LookedAfter) => ("looked-after", "Looked-after child"),
        Ok(PlanType::UnbornChildProtection) => ("unborn-child-protection", "Unborn child protection plan"),
        _ => ("unknown", "Unknown plan type"),
    }
}

/// Every setting type, with its code on the FHIR port (`X-Setting-Type`) and display.
pub const SETTING_TYPES: &[(SettingType, &str, &str)] = &[
    (SettingType::EmergencyDepartment, "emergency-department", "Emergency department"),
    (SettingType::UrgentTreatmentCentre, "urgent-treatment-centre", "Urgent treatment centre"),
    (SettingType::WalkInCentre, "walk-in-centre", "Walk-in centre"),
    (SettingType::MinorInjuryUnit, "minor-injury-unit", "Minor injury unit"),
    (SettingType::OutOfHoursGp, "out-of-hours-gp", "Out-of-hours GP"),
    (SettingType::GpPractice, "gp-practice", "GP practice"),
    (SettingType::CommunityServices, "community-services", "Community health services"),
    (SettingType::Camhs, "camhs", "Child and adolescent mental health services"),
    (SettingType::ZeroToNineteenServices, "zero-to-nineteen-services", "0-19 services"),
    (SettingType::Dentistry, "dentistry", "Dentistry"),
    (SettingType::SexualHealth, "sexual-health", "Sexual health services"),
    (SettingType::SexualAssaultReferralCentre, "sexual-assault-referral-centre", "Sexual assault referral centre"),
];

/// The setting type named by a code, if it is one.
pub fn setting_type_from_code(code: &str) -> Option<SettingType> {
    SETTING_TYPES.iter().find(|(_, c, _)| c.eq_ignore_ascii_case(code.trim())).map(|(t, _, _)| *t)
}

fn setting_type_coding(setting_type: i32) -> Value {
    let (code, display) = SETTING_TYPES
        .iter()
        .find(|(t, _, _)| *t as i32 == setting_type)
        .map(|(_, c, d)| (*c, *d))
        .unwrap_or(("unknown", "Unknown setting type"));
    json!({ "system": SETTING_TYPE_SYSTEM, "code": code, "display": display })
}

fn instant(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

fn nhs_identifier(nhs_number: &str) -> Value {
    json!({ "system": NHS_NUMBER_SYSTEM, "value": nhs_number })
}

/// A FHIR id for a council's contained Organization.
fn council_ref(council_code: &str) -> String {
    format!("council-{council_code}")
}

/// One CareTeam for one flag: the plan, its period and status, the person,
/// and the responsible council (a contained Organization with its office-hours
/// and emergency-duty telephone numbers) as managing organisation.
pub fn care_team(nhs_number: &str, flag: &Flag) -> Value {
    let (code, display) = plan_type_code(flag.plan_type);
    let mut period = serde_json::Map::new();
    if !flag.start_date.is_empty() {
        period.insert("start".into(), json!(flag.start_date));
    }
    if !flag.end_date.is_empty() {
        period.insert("end".into(), json!(flag.end_date));
    }
    let contact = flag.contact.clone().unwrap_or_default();
    let mut telecom = Vec::new();
    let phone = |value: &str, rank: u32, availability: &str| {
        json!({
            "extension": [{ "url": CONTACT_AVAILABILITY, "valueCode": availability }],
            "system": "phone",
            "value": value,
            "use": "work",
            "rank": rank,
        })
    };
    if !contact.office_phone.is_empty() {
        telecom.push(phone(&contact.office_phone, 1, "office-hours"));
    }
    if !contact.emergency_duty_phone.is_empty() {
        telecom.push(phone(&contact.emergency_duty_phone, 2, "out-of-hours"));
    }
    if !contact.email.is_empty() {
        telecom.push(json!({ "system": "email", "value": contact.email, "use": "work" }));
    }
    let council_name = if flag.council_name.is_empty() { flag.council_code.clone() } else { flag.council_name.clone() };
    let mut organization = json!({
        "resourceType": "Organization",
        "id": council_ref(&flag.council_code),
        "identifier": [{ "system": GSS_SYSTEM, "value": flag.council_code }],
        "name": council_name,
    });
    if !telecom.is_empty() {
        organization["telecom"] = Value::Array(telecom);
    }
    let mut team = json!({
        "resourceType": "CareTeam",
        "id": uuid::Uuid::new_v4().to_string(),
        "contained": [organization],
        "status": if flag.ended { "inactive" } else { "active" },
        "category": [{ "coding": [{ "system": PLAN_TYPE_SYSTEM, "code": code, "display": display }], "text": display }],
        "subject": { "identifier": nhs_identifier(nhs_number) },
        "managingOrganization": [{
            "reference": format!("#{}", council_ref(&flag.council_code)),
            "display": council_name,
        }],
    });
    if !period.is_empty() {
        team["period"] = Value::Object(period);
    }
    if !contact.team_name.is_empty() {
        team["name"] = json!(contact.team_name);
    }
    if !flag.expected_delivery_date.is_empty() {
        team["extension"] = json!([{ "url": EXPECTED_DELIVERY_DATE, "valueDate": flag.expected_delivery_date }]);
    }
    team
}

/// One AuditEvent for one unscheduled-care episode: which setting (and its
/// type), when, whose record.
pub fn audit_event(nhs_number: &str, episode: &Episode) -> Value {
    let at = episode
        .arrived_at
        .as_ref()
        .and_then(cpis_domain::time::from_timestamp)
        .map(instant)
        .unwrap_or_else(|| instant(Utc::now()));
    json!({
        "resourceType": "AuditEvent",
        "id": episode.episode_id,
        "type": {
            "system": "http://terminology.hl7.org/CodeSystem/audit-event-type",
            "code": "rest",
            "display": "RESTful Operation",
        },
        "subtype": [{ "system": "http://hl7.org/fhir/restful-interaction", "code": "search-type", "display": "search-type" }],
        "action": "R",
        "period": { "start": at },
        "recorded": at,
        "outcome": "0",
        "agent": [{
            "type": { "coding": [setting_type_coding(episode.setting_type)] },
            "who": { "identifier": { "system": ODS_SYSTEM, "value": episode.setting_code } },
            "requestor": true,
        }],
        "source": { "observer": { "display": "cpis attendance service" } },
        "entity": [{ "what": { "identifier": nhs_identifier(nhs_number) } }],
    })
}

/// A `searchset` Bundle of `resources`, with its total and self link.
pub fn searchset(self_url: &str, resources: Vec<Value>) -> Value {
    let entries: Vec<Value> = resources
        .into_iter()
        .map(|r| {
            let full_url = format!("urn:uuid:{}", r["id"].as_str().unwrap_or_default());
            json!({ "fullUrl": full_url, "resource": r, "search": { "mode": "match" } })
        })
        .collect();
    let mut bundle = json!({
        "resourceType": "Bundle",
        "id": uuid::Uuid::new_v4().to_string(),
        "meta": { "lastUpdated": instant(Utc::now()) },
        "type": "searchset",
        "total": entries.len(),
        "link": [{ "relation": "self", "url": self_url }],
    });
    if !entries.is_empty() {
        bundle["entry"] = Value::Array(entries);
    }
    bundle
}

/// One issue of an OperationOutcome.
#[derive(Debug, Clone)]
pub struct Issue {
    /// The FHIR issue type (`invalid`, `security`, `not-found`, ...).
    pub code: &'static str,
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
            let mut issue = json!({ "severity": "error", "code": i.code, "diagnostics": i.diagnostics });
            if let Some(e) = &i.expression {
                issue["expression"] = json!([e]);
            }
            issue
        })
        .collect();
    json!({ "resourceType": "OperationOutcome", "id": uuid::Uuid::new_v4().to_string(), "issue": issues })
}

/// The request headers this endpoint reads (documented in the CapabilityStatement).
pub const HEADERS_DOC: &str = "Request headers: `IsUnscheduledAccessEvent: true|false` (required on CareTeam \
searches): `true` is a notifying read from unscheduled care (recorded as a check-in: the access is audited, one \
episode per person per setting per 24 hours, and each responsible council is alerted once); `false` is a silent \
read from scheduled care (audited as silent; no episode, no alert). `X-User-ID` (required, 1 to 128 \
characters): the user shown the answer, for the access audit (an AuditEvent search is audited too). `X-Request-ID` (required for a notifying \
read, up to 64 visible ASCII characters): the idempotency key; the same key from the same setting returns the \
first answer again and alerts no one anew. `X-Setting-Type` (optional): the kind of setting, one of \
emergency-department, urgent-treatment-centre, walk-in-centre, minor-injury-unit, out-of-hours-gp (notifying \
reads; default emergency-department) or gp-practice, community-services, camhs, zero-to-nineteen-services, \
dentistry, sexual-health, sexual-assault-referral-centre (silent reads; default gp-practice). \
`X-Correlation-ID` (optional): a trace id returned on the response; W3C `traceparent` is also honoured. The \
caller is identified by its client certificate (mutual TLS, a `spiffe://<trust-domain>/setting/<ODS code>` URI \
SAN) and nothing else.";

/// The CapabilityStatement: exactly what this endpoint supports.
pub fn capability_statement(base_url: &str) -> Value {
    let patient_param = |doc: &str| {
        json!({
            "name": "patient",
            "definition": "http://hl7.org/fhir/SearchParameter/clinical-patient",
            "type": "reference",
            "documentation": format!("Required, exactly once, as `patient:identifier={NHS_NUMBER_SYSTEM}|{{nhs-number}}` (10 digits, valid check digit). {doc}"),
        })
    };
    json!({
        "resourceType": "CapabilityStatement",
        "id": "cpis-attendance",
        "url": format!("{base_url}/metadata"),
        "name": "CpisAttendanceFhirApi",
        "title": "cpis: child protection information sharing, FHIR R4 API",
        "status": "active",
        "experimental": false,
        "date": "2026-12-01",
        "publisher": "cpis",
        "description": "The flags of children on child protection plans, looked-after children and unborn children on protection plans, and their unscheduled-care access history, for NHS care settings. Notifying reads (unscheduled care) alert the responsible councils; silent reads (scheduled care) are audited only.",
        "kind": "instance",
        "software": { "name": "cpis", "version": env!("CARGO_PKG_VERSION") },
        "implementation": { "description": "cpis Attendance service, FHIR R4 endpoint", "url": base_url },
        "fhirVersion": "4.0.1",
        "format": ["application/fhir+json", "json"],
        "rest": [{
            "mode": "server",
            "documentation": HEADERS_DOC,
            "security": {
                "cors": false,
                "description": "Mutual TLS 1.3 only: the client certificate, issued by the cpis CA, identifies the calling setting. Only settings may search CareTeam and AuditEvent; any authenticated identity may read this statement. Errors are OperationOutcome resources: 400 invalid search or header, 401 no valid identity, 403 identity not allowed, 404 unknown resource type, 429 too many requests in flight, 503 a dependency is down (retry).",
            },
            "resource": [
                {
                    "type": "CareTeam",
                    "documentation": "One CareTeam per plan in scope: plan type (category), period, status (active; inactive when ended within the last 12 months), subject (NHS number; the mother's for an unborn child protection plan, with the expected delivery date extension), and the responsible council as managing organisation (contained Organization with office-hours and out-of-hours telephone numbers). No record is a Bundle with total 0.",
                    "interaction": [{ "code": "search-type" }],
                    "searchParam": [patient_param("A notifying read (IsUnscheduledAccessEvent: true) is a check-in; a silent read (false) is audited only.")],
                },
                {
                    "type": "AuditEvent",
                    "documentation": "The 25 most recent unscheduled-care accesses (one per episode: setting, setting type, time) of a person with a flag in scope, most recent first. A person with no flag in scope gives total 0.",
                    "interaction": [{ "code": "search-type" }],
                    "searchParam": [patient_param("")],
                },
            ],
        }],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unborn_plan_carries_its_expected_delivery_date_and_an_ended_plan_is_inactive() {
        let flag = Flag {
            plan_type: PlanType::UnbornChildProtection as i32,
            start_date: "2026-01-02".into(),
            end_date: "2026-06-30".into(),
            expected_delivery_date: "2026-07-01".into(),
            council_code: "E08000003".into(),
            council_name: "Manchester".into(),
            ended: true,
            ..Default::default()
        };
        let team = care_team("9990000018", &flag);
        assert_eq!(team["status"], "inactive");
        assert_eq!(team["extension"][0]["valueDate"], "2026-07-01");
        assert_eq!(team["period"]["end"], "2026-06-30");
        assert_eq!(team["managingOrganization"][0]["reference"], "#council-E08000003");
        assert_eq!(team["contained"][0]["id"], "council-E08000003");
    }

    #[test]
    fn every_setting_type_code_reads_back() {
        for (t, code, _) in SETTING_TYPES {
            assert_eq!(setting_type_from_code(code), Some(*t));
        }
        assert_eq!(setting_type_from_code("hospital"), None);
    }
}
