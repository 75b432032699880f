//! Conformance with the guide's errors (`Build/Errorhandling`,
//! `cpis-opoutcome-01.json`): every refusal is an OperationOutcome whose
//! issue has a severity, a FHIR issue type, `details.coding` from
//! England-SpineErrorOrWarningCode, and a `diagnostics` for people, with the
//! HTTP status the guide gives it; nothing is stored and no council is
//! alerted. Each body is kept for the R4B validation in CI.

use super::fhir_conformance::{keep, search_path, ISLINGTON};
use cpis_proto::registry::v1::UpsertPlanRequest;
use cpis_runtime::limits::Limits;
use cpis_testkit::*;
use std::time::Duration;

const SPINE: &str = "https://fhir.nhs.uk/CodeSystem/England-SpineErrorOrWarningCode";
const API: &str = "https://fhir.nhs.uk/CodeSystem/England-APIErrorOrWarningCode";

/// Asserts the guide's OperationOutcome: `status`, issue type `issue`, `system`'s `code`.
fn refused(label: &str, answer: &FhirAnswer, status: u16, issue: &str, system: &str, code: &str) {
    keep(label, answer);
    assert_eq!(answer.status, status, "{label}: {}", answer.raw);
    assert!(answer.content_type.starts_with("application/fhir+json"), "{label}: {}", answer.content_type);
    let body = &answer.body;
    assert_eq!(body["resourceType"], "OperationOutcome", "{label}");
    let i = &body["issue"][0];
    assert_eq!((i["severity"].as_str(), i["code"].as_str()), (Some("error"), Some(issue)), "{label}: {body}");
    let coding = &i["details"]["coding"][0];
    assert_eq!((coding["system"].as_str(), coding["code"].as_str()), (Some(system), Some(code)), "{label}: {body}");
    assert!(coding["display"].as_str().is_some_and(|d| !d.is_empty()), "{label}: a display");
    assert!(i["diagnostics"].as_str().is_some_and(|d| !d.is_empty()), "{label}: a diagnostics for people");
}

async fn stored(ts: &TestSuite) -> i64 {
    let sql = "SELECT (SELECT count(*) FROM attendance.accesses) + (SELECT count(*) FROM attendance.outbox)";
    ts.db().await.query_one(sql, &[]).await.unwrap().get(0)
}

#[tokio::test]
async fn every_error_is_the_guides_operation_outcome_with_its_spine_code() {
    let ts = TestSuite::start().await;
    let child = nhs(2421);
    ts.registry(&council(ISLINGTON))
        .upsert_plan(UpsertPlanRequest { plan: Some(plan("ISL-2421", &child)), expected_version: 0 })
        .await
        .expect("UpsertPlan");
    let ed = ts.identity(&setting(ALDER_HEY));
    let care_team = search_path("CareTeam", &child);

    // 400 INVALID_SEARCH_DATA: an invalid NHS number (not echoed), a malformed search.
    let bad = "9990000019";
    let answer = fhir_get(&ts, Some(&ed), &search_path("CareTeam", bad), &[]).await;
    refused("invalid-nhs-number", &answer, 400, "invalid", SPINE, "INVALID_SEARCH_DATA");
    assert_eq!(answer.body["issue"][0]["expression"][0], "patient:identifier");
    assert!(!answer.raw.contains(bad), "an invalid NHS number is not echoed");
    for (label, path) in [
        ("no-patient", "/FHIR/R4/CareTeam?name=smith".to_string()),
        ("wrong-system", "/FHIR/R4/CareTeam?patient:identifier=urn:x%7C9990000018".to_string()),
        ("careteam-include", format!("{care_team}&_include=AuditEvent:agent")),
        ("unknown-include", format!("{}&_include=AuditEvent:entity", search_path("AuditEvent", &child))),
    ] {
        refused(label, &fhir_get(&ts, Some(&ed), &path, &[]).await, 400, "invalid", SPINE, "INVALID_SEARCH_DATA");
    }

    // 400 PRECONDITION_FAILED: a missing or invalid header.
    let maybe = [("IsUnscheduledAccessEvent", "maybe")];
    for (label, path) in [("careteam-header", &care_team), ("auditevent-header", &search_path("AuditEvent", &child))] {
        let answer = fhir_get(&ts, Some(&ed), path, &maybe).await;
        refused(label, &answer, 400, "invalid", SPINE, "PRECONDITION_FAILED");
        assert_eq!(answer.body["issue"][0]["expression"][0], "IsUnscheduledAccessEvent");
    }
    let setting_type = [("X-Setting-Type", "hospital")];
    let answer = fhir_get(&ts, Some(&ed), &care_team, &setting_type).await;
    refused("setting-type-header", &answer, 400, "invalid", SPINE, "PRECONDITION_FAILED");

    // 401 ACCESS_DENIED: no user token; a role the token does not hold; no client certificate.
    let answer = fhir_get_raw(&ts, Some(&ed), &care_team, &[]).await;
    refused("no-token", &answer, 401, "login", SPINE, "ACCESS_DENIED");
    let token = ts.user_token(ALDER_HEY, &["B0107"]);
    let bearer = format!("Bearer {}", token.token);
    let wrong_role = [("Authorization", bearer.as_str()), ("NHSD-Session-URID", "999999999999")];
    let answer = fhir_get_raw(&ts, Some(&ed), &care_team, &wrong_role).await;
    refused("wrong-role", &answer, 401, "login", SPINE, "ACCESS_DENIED");
    refused("no-certificate", &fhir_get(&ts, None, &care_team, &[]).await, 401, "login", SPINE, "ACCESS_DENIED");

    // 403 ACCESS_DENIED (the guide's example): a role without B0107 making a
    // notifying read; a council's system calling a setting's search.
    let silent_only = ts.user_token(ALDER_HEY, &["B0170"]);
    let bearer = format!("Bearer {}", silent_only.token);
    let headers = [("Authorization", bearer.as_str()), ("NHSD-Session-URID", silent_only.role_id.as_str())];
    let answer = fhir_get_raw(&ts, Some(&ed), &care_team, &headers).await;
    refused("no-b0107", &answer, 403, "forbidden", SPINE, "ACCESS_DENIED");
    assert!(answer.body["issue"][0]["diagnostics"].as_str().unwrap().contains("B0107"));
    let islington = ts.identity(&council(ISLINGTON));
    refused(
        "council",
        &fhir_get(&ts, Some(&islington), &care_team, &[]).await,
        403,
        "forbidden",
        SPINE,
        "ACCESS_DENIED",
    );

    // 404: an unknown resource type (UNSUPPORTED_SERVICE); a read by id of ours (RESOURCE_NOT_FOUND).
    let answer = fhir_get(&ts, Some(&ed), &format!("/FHIR/R4/Patient/{child}"), &[]).await;
    refused("unknown-type", &answer, 404, "not-found", SPINE, "UNSUPPORTED_SERVICE");
    assert!(!answer.raw.contains(&child), "a path is not echoed with its NHS number");
    let read = fhir_get(&ts, Some(&ed), "/FHIR/R4/CareTeam/b3982299-c9cc-4502-a8d5-16d984de735f", &[]).await;
    refused("read-by-id", &read, 404, "not-found", SPINE, "RESOURCE_NOT_FOUND");
    assert_eq!(stored(&ts).await, 0, "no refusal stored anything");

    // 503 UNABLE_TO_CALL_SERVICE: the Registry is down (retry).
    ts.suite.registry.shutdown.request();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let answer = fhir_get(&ts, Some(&ed), &care_team, &[]).await;
    refused("registry-down", &answer, 503, "transient", SPINE, "UNABLE_TO_CALL_SERVICE");
    assert_eq!(stored(&ts).await, 0);
    ts.suite.stop().await.unwrap();
}

#[tokio::test]
async fn too_many_requests_in_flight_is_429_with_the_api_platforms_code() {
    // No setting may have a request in flight: every search is shed.
    let limits = Limits { per_caller: 0, total: 10_000 };
    let ts = TestSuite::start_with(cpis::suite::ServiceConfigs { limits, ..Default::default() }).await;
    let ed = ts.identity(&setting(ALDER_HEY));
    let answer = fhir_get(&ts, Some(&ed), &search_path("CareTeam", &nhs(2422)), &[]).await;
    // England-SpineErrorOrWarningCode has no rate-limit concept: NHS England's API code system does.
    refused("throttled", &answer, 429, "throttled", API, "TOO_MANY_REQUESTS");
    assert_eq!(stored(&ts).await, 0);
    ts.suite.stop().await.unwrap();
}
