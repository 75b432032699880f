//! The FHIR R4 API on the Attendance service's own port: real HTTPS with
//! mutual TLS (HTTP/1.1, what vendors' FHIR clients and curl speak), the
//! same check-in code path as gRPC, silent reads, the access history, and
//! refusals as OperationOutcomes.

use cpis_domain::identity::ServiceName;
use cpis_proto::attendance::v1::{ListAccessesRequest, SilentReadRequest};
use cpis_proto::common::v1::{ContactDetails, SettingType};
use cpis_proto::notification::v1::{Alert, ListAlertsRequest};
use cpis_proto::registry::v1::UpsertPlanRequest;
use cpis_testkit::*;
use serde_json::Value;
use std::time::Duration;

fn care_team_path(nhs_number: &str) -> String {
    format!("/FHIR/R4/CareTeam?patient:identifier=https://fhir.nhs.uk/Id/nhs-number%7C{nhs_number}")
}

fn audit_event_path(nhs_number: &str) -> String {
    format!("/FHIR/R4/AuditEvent?patient:identifier=https://fhir.nhs.uk/Id/nhs-number%7C{nhs_number}")
}

/// A notifying read's headers with the given idempotency key.
fn notifying(request_id: &str) -> Vec<(&'static str, String)> {
    vec![
        ("IsUnscheduledAccessEvent", "true".into()),
        ("X-Request-ID", request_id.into()),
        ("X-User-ID", "nurse-fhir".into()),
        ("X-Correlation-ID", "trace-123".into()),
    ]
}

fn silent() -> Vec<(&'static str, String)> {
    vec![
        ("IsUnscheduledAccessEvent", "false".into()),
        ("X-User-ID", "gp-fhir".into()),
        ("X-Setting-Type", "gp-practice".into()),
    ]
}

fn refs<'a>(headers: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    headers.iter().map(|(n, v)| (*n, v.as_str())).collect()
}

/// Asserts a 200 searchset Bundle with `total` entries and returns its resources.
fn bundle(answer: &FhirAnswer, total: u64) -> Vec<Value> {
    assert_eq!(answer.status, 200, "{}", answer.raw);
    assert!(answer.content_type.starts_with("application/fhir+json"), "{}", answer.content_type);
    assert_eq!(answer.body["resourceType"], "Bundle");
    assert_eq!(answer.body["type"], "searchset");
    assert_eq!(answer.body["total"], total, "{}", answer.body);
    let entries = answer.body["entry"].as_array().cloned().unwrap_or_default();
    assert_eq!(entries.len() as u64, total);
    entries.into_iter().map(|e| e["resource"].clone()).collect()
}

/// Asserts an OperationOutcome with `status`, and returns its first issue.
fn outcome(answer: &FhirAnswer, status: u16) -> Value {
    assert_eq!(answer.status, status, "{}", answer.raw);
    assert!(answer.content_type.starts_with("application/fhir+json"), "{}", answer.content_type);
    assert_eq!(answer.body["resourceType"], "OperationOutcome", "{}", answer.raw);
    assert_eq!(answer.body["issue"][0]["severity"], "error");
    answer.body["issue"][0].clone()
}

async fn register(ts: &TestSuite, council_code: &str, reference: &str, nhs_number: &str) {
    let mut p = plan(reference, nhs_number);
    p.contact = Some(ContactDetails {
        team_name: format!("{council_code} front door"),
        office_phone: "0161 234 5000".into(),
        emergency_duty_phone: "0161 255 8250".into(),
        email: "mash@example.gov.uk".into(),
    });
    ts.registry(&council(council_code))
        .upsert_plan(UpsertPlanRequest { plan: Some(p), expected_version: 0 })
        .await
        .expect("UpsertPlan");
}

/// Waits until the relay has delivered every queued alert.
async fn outbox_drained(ts: &TestSuite) {
    let db = ts.db().await;
    eventually(20, "the outbox to drain", || async {
        let row = db.query_one("SELECT count(*) FROM attendance.outbox WHERE delivered_at IS NULL", &[]).await;
        row.map(|r| r.get::<_, i64>(0) == 0).unwrap_or(false)
    })
    .await;
}

async fn alerts(ts: &TestSuite, council_code: &str) -> Vec<Alert> {
    ts.notification(&council(council_code))
        .list_alerts(ListAlertsRequest { page_size: 1000, ..Default::default() })
        .await
        .expect("ListAlerts")
        .into_inner()
        .alerts
}

async fn count(ts: &TestSuite, table: &str) -> i64 {
    ts.db().await.query_one(&format!("SELECT count(*) FROM attendance.{table}"), &[]).await.unwrap().get(0)
}

#[tokio::test]
async fn a_notifying_fhir_read_alerts_each_council_once_and_a_check_in_within_24h_does_not_alert_again() {
    let ts = TestSuite::start().await;
    let child = nhs(1801);
    register(&ts, MANCHESTER, "MCR-FHIR-1", &child).await;
    register(&ts, LIVERPOOL, "LIV-FHIR-1", &child).await;
    let ed = ts.identity(&setting(ALDER_HEY));

    let first = fhir_get(&ts, Some(&ed), &care_team_path(&child), &refs(&notifying("fhir-req-1"))).await;
    assert!(first.raw.to_ascii_lowercase().contains("x-correlation-id: trace-123"), "the trace id travels back");
    let teams = bundle(&first, 2);
    let mut councils: Vec<String> = teams
        .iter()
        .map(|t| t["managingOrganization"][0]["identifier"]["value"].as_str().unwrap().to_string())
        .collect();
    councils.sort();
    assert_eq!(councils, [MANCHESTER, LIVERPOOL]);
    for team in &teams {
        assert_eq!(team["resourceType"], "CareTeam");
        assert_eq!(team["status"], "active");
        assert_eq!(team["category"][0]["coding"][0]["code"], "342191000000101");
        assert_eq!(team["subject"]["identifier"]["value"], child.as_str());
        assert_eq!(team["period"]["start"], "2025-01-10");
        let phones: Vec<&str> =
            team["telecom"].as_array().unwrap().iter().filter_map(|t| t["value"].as_str()).collect();
        assert!(phones.contains(&"0161 234 5000") && phones.contains(&"0161 255 8250"), "{phones:?}");
    }
    // The same request id again: the first answer, nothing new stored or sent.
    let retry = fhir_get(&ts, Some(&ed), &care_team_path(&child), &refs(&notifying("fhir-req-1"))).await;
    bundle(&retry, 2);

    outbox_drained(&ts).await;
    for code in [MANCHESTER, LIVERPOOL] {
        let got = alerts(&ts, code).await;
        assert_eq!(got.len(), 1, "{code} is alerted exactly once");
        assert_eq!(got[0].nhs_number, child);
        assert_eq!(got[0].episode.as_ref().unwrap().setting_code, ALDER_HEY);
    }

    // A gRPC CheckIn of the same person at the same setting within 24 hours:
    // the same episode, no new alert.
    let again = ts.attendance(&setting(ALDER_HEY)).check_in(arrival(&child)).await.expect("CheckIn").into_inner();
    assert!(again.flagged);
    let episode = alerts(&ts, MANCHESTER).await[0].episode.clone().unwrap().episode_id;
    assert_eq!(again.episode_id, episode, "one visit is one episode, whichever door it came through");
    outbox_drained(&ts).await;
    assert_eq!(count(&ts, "outbox").await, 2, "one alert per council, ever, for this episode");
    for code in [MANCHESTER, LIVERPOOL] {
        assert_eq!(alerts(&ts, code).await.len(), 1, "{code} is not alerted again");
    }
    assert_eq!(count(&ts, "episodes").await, 1);
    // One notifying read and one CheckIn: two accesses (the retry is a replay).
    assert_eq!(count(&ts, "accesses").await, 2);
    ts.suite.stop().await.unwrap();
}

#[tokio::test]
async fn a_silent_read_alerts_no_one_and_is_in_the_councils_access_history_marked_silent() {
    let ts = TestSuite::start().await;
    let child = nhs(1802);
    register(&ts, MANCHESTER, "MCR-FHIR-2", &child).await;
    let gp = ts.identity(&setting("Y01234"));

    let read = fhir_get(&ts, Some(&gp), &care_team_path(&child), &refs(&silent())).await;
    let teams = bundle(&read, 1);
    assert_eq!(teams[0]["managingOrganization"][0]["identifier"]["value"], MANCHESTER);

    // The same silent read through gRPC.
    let grpc = ts
        .attendance(&setting("Y01234"))
        .silent_read(SilentReadRequest {
            request_id: "silent-1".into(),
            nhs_number: child.clone(),
            setting_type: SettingType::Camhs as i32,
            ..Default::default()
        })
        .await
        .expect("SilentRead")
        .into_inner();
    assert!(grpc.flagged);
    assert_eq!(grpc.flags.len(), 1);
    // Scheduled care cannot make a notifying read, nor unscheduled care a silent one.
    let mut scheduled = arrival(&child);
    scheduled.setting_type = SettingType::GpPractice as i32;
    let refused = ts.attendance(&setting("Y01234")).check_in(scheduled).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    let mut wrong = silent();
    wrong[2].1 = "emergency-department".into();
    let issue = outcome(&fhir_get(&ts, Some(&gp), &care_team_path(&child), &refs(&wrong)).await, 400);
    assert_eq!(issue["expression"][0], "X-Setting-Type");

    let history = ts
        .attendance(&council(MANCHESTER))
        .list_accesses(ListAccessesRequest { nhs_number: child.clone(), ..Default::default() })
        .await
        .expect("ListAccesses")
        .into_inner()
        .accesses;
    assert_eq!(history.len(), 2, "both silent reads are audited");
    for access in &history {
        assert!(access.silent, "marked silent");
        assert!(access.episode_id.is_empty(), "no episode");
        assert_eq!(access.setting_code, "Y01234");
    }
    // Both name the verified person who looked (the gRPC and the FHIR read).
    assert!(history.iter().all(|a| a
        .viewer
        .as_ref()
        .is_some_and(|v| v.verified && v.name == TEST_CLINICIAN && v.organisation_code == "Y01234")));
    assert_eq!(count(&ts, "episodes").await, 0);
    assert_eq!(count(&ts, "outbox").await, 0);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(alerts(&ts, MANCHESTER).await.is_empty(), "no council is alerted");
    ts.suite.stop().await.unwrap();
}

#[tokio::test]
async fn an_unflagged_person_gives_an_empty_bundle_and_stores_nothing() {
    let ts = TestSuite::start().await;
    let flagged = nhs(1803);
    register(&ts, MANCHESTER, "MCR-FHIR-3", &flagged).await;
    let nobody = nhs(1804);
    let ed = ts.identity(&setting(ALDER_HEY));
    bundle(&fhir_get(&ts, Some(&ed), &care_team_path(&nobody), &refs(&notifying("nobody-1"))).await, 0);
    bundle(&fhir_get(&ts, Some(&ed), &care_team_path(&nobody), &refs(&silent())).await, 0);
    bundle(&fhir_get(&ts, Some(&ed), &audit_event_path(&nobody), &[("X-User-ID", "nurse-fhir")]).await, 0);
    for table in ["episodes", "accesses", "check_in_requests", "outbox"] {
        assert_eq!(count(&ts, table).await, 0, "{table} holds nothing about an unflagged person");
    }
    ts.suite.stop().await.unwrap();
}

#[tokio::test]
async fn the_access_history_is_the_25_most_recent_unscheduled_care_accesses() {
    let ts = TestSuite::start().await;
    let child = nhs(1805);
    register(&ts, MANCHESTER, "MCR-FHIR-4", &child).await;
    // 27 unscheduled-care visits at 27 settings, oldest first.
    let codes: Vec<String> = (0..27).map(|i| format!("S{i:03}")).collect();
    for code in &codes {
        ts.attendance(&setting(code)).check_in(arrival(&child)).await.expect("CheckIn");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // A silent read is not an unscheduled-care access.
    let gp = ts.identity(&setting("Y01234"));
    bundle(&fhir_get(&ts, Some(&gp), &care_team_path(&child), &refs(&silent())).await, 1);

    let ed = ts.identity(&setting(ALDER_HEY));
    let events = bundle(&fhir_get(&ts, Some(&ed), &audit_event_path(&child), &[("X-User-ID", "nurse-fhir")]).await, 25);
    let shown: Vec<&str> = events.iter().map(|e| e["source"]["site"].as_str().unwrap()).collect();
    let expected: Vec<&str> = codes.iter().rev().take(25).map(String::as_str).collect();
    assert_eq!(shown, expected, "the 25 most recent, most recent first");
    for event in &events {
        assert_eq!(event["resourceType"], "AuditEvent");
        assert_eq!(event["agent"][0]["type"]["coding"][0]["code"], "PAT");
        assert_eq!(event["agent"][0]["who"]["identifier"]["value"], child.as_str());
    }
    ts.suite.stop().await.unwrap();
}

#[tokio::test]
async fn councils_services_and_strangers_are_refused_on_the_fhir_port_as_in_grpc() {
    let ts = TestSuite::start().await;
    let child = nhs(1806);
    register(&ts, MANCHESTER, "MCR-FHIR-5", &child).await;
    let manchester = ts.identity(&council(MANCHESTER));
    let attendance = ts.identity(&service(ServiceName::Attendance));
    let foreign = ts.foreign_ca_identity(&setting(ALDER_HEY));
    let headers = notifying("refused-1");
    for path in [care_team_path(&child), audit_event_path(&child)] {
        let issue = outcome(&fhir_get(&ts, Some(&manchester), &path, &refs(&headers)).await, 403);
        assert_eq!(issue["code"], "forbidden");
        outcome(&fhir_get(&ts, Some(&attendance), &path, &refs(&headers)).await, 403);
        let issue = outcome(&fhir_get(&ts, None, &path, &refs(&headers)).await, 401);
        assert_eq!(issue["code"], "login");
        outcome(&fhir_get(&ts, Some(&foreign), &path, &refs(&headers)).await, 401);
    }
    // Nothing was recorded or sent for any of them.
    assert_eq!(count(&ts, "accesses").await, 0);
    assert_eq!(count(&ts, "outbox").await, 0);
    // Any identity may read the CapabilityStatement; strangers may not.
    let metadata = fhir_get(&ts, Some(&manchester), "/FHIR/R4/metadata", &[]).await;
    assert_eq!(metadata.status, 200);
    assert_eq!(metadata.body["resourceType"], "CapabilityStatement");
    assert_eq!(metadata.body["fhirVersion"], "4.0.1");
    outcome(&fhir_get(&ts, None, "/FHIR/R4/metadata", &[]).await, 401);

    // A setting's bad requests: field-level OperationOutcomes that never echo the number.
    let ed = ts.identity(&setting(ALDER_HEY));
    let bad = "9990000019";
    let answer = fhir_get(&ts, Some(&ed), &care_team_path(bad), &refs(&headers)).await;
    let issue = outcome(&answer, 400);
    assert_eq!(issue["expression"][0], "patient:identifier");
    assert!(!answer.raw.contains(bad), "an invalid NHS number is not echoed");
    let maybe = [("IsUnscheduledAccessEvent", "maybe")];
    let issue = outcome(&fhir_get(&ts, Some(&ed), &care_team_path(&child), &maybe).await, 400);
    assert_eq!(issue["expression"][0], "IsUnscheduledAccessEvent");
    outcome(&fhir_get(&ts, Some(&ed), "/FHIR/R4/CareTeam?name=smith", &refs(&headers)).await, 400);
    let issue = outcome(&fhir_get(&ts, Some(&ed), "/FHIR/R4/Patient?identifier=x", &[]).await, 404);
    assert_eq!(issue["code"], "not-found");
    let unknown = fhir_get(&ts, Some(&ed), &format!("/FHIR/R4/Patient/{child}"), &[]).await;
    outcome(&unknown, 404);
    assert!(!unknown.raw.contains(&child), "a path is not echoed with its NHS number");
    outcome(&fhir_get(&ts, None, &format!("/FHIR/R4/Patient/{child}"), &[]).await, 401);
    assert_eq!(count(&ts, "accesses").await, 0, "bad requests change nothing");

    // The Registry down: 503, so the vendor's client knows to retry.
    ts.suite.registry.shutdown.request();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let issue = outcome(&fhir_get(&ts, Some(&ed), &care_team_path(&child), &refs(&notifying("down-1"))).await, 503);
    assert_eq!(issue["code"], "transient");
    ts.suite.stop().await.unwrap();
}
