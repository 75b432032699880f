//! The CapabilityStatement (`GET [base]/metadata`): exactly what this
//! endpoint supports. It instantiates the national guide's producer
//! statement (`CPIS-FHIR-API-Producer`): the CareTeam and AuditEvent
//! searches, the `_include` of PractitionerRole, the request headers, the
//! error codes, our one extension, and the security (mutual TLS for the
//! calling system, CIS2 bearer tokens for the person).

use super::headers::HEADERS_DOC;
use super::search::ROLE_INCLUDES;
use super::structure_definition::expected_delivery_date_url;
use super::NHS_NUMBER_SYSTEM;
use serde_json::{json, Value};

/// The national guide's producer CapabilityStatement, which this one instantiates.
pub const NATIONAL_PRODUCER: &str = "https://fhir.nhs.uk/CapabilityStatement/CPIS-FHIR-API-Producer";

/// The errors, as the CapabilityStatement and the README list them.
pub const ERRORS_DOC: &str = "Errors are OperationOutcome resources with `details.coding` from \
https://fhir.nhs.uk/CodeSystem/England-SpineErrorOrWarningCode and a `diagnostics` for people: 400 \
INVALID_SEARCH_DATA (an invalid NHS number or a malformed search, named in `expression`), 400 PRECONDITION_FAILED \
(a missing or invalid header), 401 ACCESS_DENIED (no valid client certificate, user token or role), 403 \
ACCESS_DENIED (an identity or role that may not make the call), 404 UNSUPPORTED_SERVICE (an unknown resource \
type) or RESOURCE_NOT_FOUND (a read by id: these resources are only searched or included), 405 INVALID_METHOD, \
429 TOO_MANY_REQUESTS (from https://fhir.nhs.uk/CodeSystem/England-APIErrorOrWarningCode: the Spine code system \
has no rate-limit code; too many requests in flight, retry with backoff), 503 UNABLE_TO_CALL_SERVICE (a \
dependency is down: retry; for a notifying read, with the same X-Request-ID if one was sent).";

/// The CapabilityStatement of the endpoint whose public base is `base_url`.
pub fn capability_statement(base_url: &str) -> Value {
    let patient_param = |doc: &str| {
        json!({
            "name": "patient",
            "definition": "http://hl7.org/fhir/SearchParameter/clinical-patient",
            "type": "reference",
            "documentation": format!("Required, exactly once, as `patient:identifier={NHS_NUMBER_SYSTEM}|{{nhs-number}}` (10 digits, valid check digit); an invalid one is 400 INVALID_SEARCH_DATA. {doc}"),
        })
    };
    let edd = expected_delivery_date_url(base_url);
    json!({
        "resourceType": "CapabilityStatement",
        "id": "cpis-attendance",
        "url": format!("{base_url}/metadata"),
        "version": env!("CARGO_PKG_VERSION"),
        "name": "CpisFhirApi",
        "title": "cpis: the CP-IS FHIR R4 API (national guide), served by the cpis Attendance service",
        "status": "active",
        "experimental": false,
        "date": "2026-12-01",
        "publisher": "cpis",
        "description": "The national CP-IS FHIR R4 API as NHS England's CP-IS API Consumer and Producer implementation guides publish it: the child protection plans, looked-after child plans and unborn child protection plans in scope for an NHS number (CareTeam), and the 25 most recent unscheduled-care accesses to them with who looked (AuditEvent and PractitionerRole). A notifying read (unscheduled care) alerts the responsible councils; a silent read (scheduled care) is audited only.",
        "instantiates": [NATIONAL_PRODUCER],
        "kind": "instance",
        "software": { "name": "cpis", "version": env!("CARGO_PKG_VERSION") },
        "implementation": { "description": "cpis Attendance service, FHIR R4 endpoint", "url": base_url },
        "fhirVersion": "4.0.1",
        "format": ["application/fhir+json", "json"],
        "rest": [{
            "mode": "server",
            "documentation": format!("{HEADERS_DOC} {ERRORS_DOC}"),
            "security": {
                "cors": false,
                "service": [
                    { "coding": [{ "system": "http://terminology.hl7.org/CodeSystem/restful-security-service", "code": "Certificates" }] },
                    { "coding": [{ "system": "http://terminology.hl7.org/CodeSystem/restful-security-service", "code": "OAuth" }] },
                ],
                "description": "The calling system: mutual TLS 1.3, its client certificate (issued by the cpis CA, URI SAN spiffe://<trust-domain>/setting/<ODS code>) identifies the setting; only settings may search CareTeam and AuditEvent, any identity may read this statement and the StructureDefinitions. The person: a CIS2 user-restricted access token (OIDC) as `Authorization: Bearer <token>`, with the selected role as `NHSD-Session-URID`; the role must be held at the calling setting's organisation and carry national RBAC activity B0107 (View CP-IS Flag) for a notifying read, B0107 or B0170 for a silent read or the access history. The national API platform identifies the system by an API key instead of a certificate; cpis uses mutual TLS.",
            },
            "resource": [
                {
                    "type": "CareTeam",
                    "profile": "http://hl7.org/fhir/StructureDefinition/CareTeam",
                    "documentation": format!("One CareTeam per plan in scope: `category` SNOMED CT from https://fhir.nhs.uk/England/ValueSet/England-ChildProtectionPlan (342191000000101 Subject to child protection plan, 764841000000100 Looked after child, 818901000000100 Unborn child subject to child protection plan); `name` the responsible local authority; `subject.identifier` the NHS number (the mother's for an unborn plan); `telecom` the office-hours number (`use: work`) and the emergency duty number (`use: mobile`), and the council's email (no `use`); `period`. Beyond the guide: `status` (active; inactive when the plan ended within the last 12 months), `managingOrganization.identifier` (the council's ONS GSS code), `participant.member.display` (the council's team), and on unborn plans the extension {edd} (valueDate: the expected delivery date). No record is a Bundle with total 0."),
                    "interaction": [{ "code": "search-type" }],
                    "searchParam": [patient_param("IsUnscheduledAccessEvent: true or absent is a notifying read (a check-in), false a silent read.")],
                },
                {
                    "type": "AuditEvent",
                    "profile": "http://hl7.org/fhir/StructureDefinition/AuditEvent",
                    "documentation": "The 25 most recent unscheduled-care accesses (notifying reads) to the person's flags, most recent first; repeated views by the same person at the same setting within 24 hours count once. Each: `type` iso-21089-lifecycle access, `recorded`, an agent of v3-RoleClass PAT (the NHS number), an agent of v3-RoleClass ASSIGNED (the requestor) and `source.observer` referring to the PractitionerRole of the person who looked, `source.site` the setting's ODS code. A person with no flag in scope gives total 0. The search is itself recorded in the access audit.",
                    "interaction": [{ "code": "search-type" }],
                    "searchInclude": ROLE_INCLUDES,
                    "searchParam": [patient_param("")],
                },
                {
                    "type": "PractitionerRole",
                    "profile": "http://hl7.org/fhir/StructureDefinition/PractitionerRole",
                    "documentation": "Only in an AuditEvent search with an _include (search.mode include), not read by id: `identifier` the SDS role profile id (https://fhir.nhs.uk/Id/sds-role-profile-id), `practitioner` the SDS user id and the verified person's name, `organization` the ODS code and 'name (code)', `code` the SDS job role (https://fhir.nhs.uk/England/CodeSystem/England-SDSJobRoleName). An access recorded before verified users existed shows the user id the setting asserted, marked not verified, and the setting's ODS code.",
                },
                {
                    "type": "StructureDefinition",
                    "profile": "http://hl7.org/fhir/StructureDefinition/StructureDefinition",
                    "documentation": format!("The definitions of this endpoint's extensions, where their URLs point: {edd}."),
                    "interaction": [{ "code": "read" }],
                },
            ],
        }],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_statement_names_the_two_searches_the_include_the_headers_and_the_security() {
        let cs = capability_statement("https://api.example.nhs.uk/cpis/FHIR/R4");
        let rest = &cs["rest"][0];
        let searches: Vec<&str> = rest["resource"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["interaction"][0]["code"] == "search-type")
            .map(|r| r["type"].as_str().unwrap())
            .collect();
        assert_eq!(searches, ["CareTeam", "AuditEvent"]);
        assert_eq!(rest["resource"][1]["searchInclude"][0], ROLE_INCLUDES[0]);
        let doc = rest["documentation"].as_str().unwrap();
        for header in ["IsUnscheduledAccessEvent", "TraceID", "NHSD-Session-URID", "Authorization", "X-Request-ID"] {
            assert!(doc.contains(header), "{header}");
        }
        let security = rest["security"]["description"].as_str().unwrap();
        assert!(security.contains("mutual TLS") && security.contains("Bearer"), "{security}");
        let care_team = rest["resource"][0]["documentation"].as_str().unwrap();
        assert!(care_team
            .contains("https://api.example.nhs.uk/cpis/FHIR/R4/StructureDefinition/cpis-expected-delivery-date"));
    }
}
