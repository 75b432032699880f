//! Conformance with NHS England's CP-IS FHIR guides: a client written to the
//! guide, sending only what the guide's examples send (`Authorization`,
//! `NHSD-Session-URID`, `TraceID`, `IsUnscheduledAccessEvent`), gets answers
//! element for element as the guide's examples show them:
//!
//! - `cpis-careteam-bundle-01.json`: a searchset Bundle with `total`, a
//!   `self` link, absolute `fullUrl`s and `search.mode: match`; each CareTeam
//!   with a SNOMED CT `category`, the local authority as `name`, the NHS
//!   number as `subject.identifier`, office hours as `telecom` `use: work`,
//!   emergency duty as `use: mobile`, and `period`;
//! - `cpis-empty-bundle-01.json`: no record is total 0;
//! - `cpis-auditevent-bundle-01.json`: AuditEvents (`type` iso-21089-lifecycle
//!   access, `recorded`, agents `PAT` and `ASSIGNED`, `source.observer`) and,
//!   with the `_include`, the PractitionerRoles of the people who looked;
//! - `cpis-opoutcome-01.json` (in `fhir_conformance_errors`): each error an
//!   OperationOutcome with its Spine code.
//!
//! Every answer is also written to `$CPIS_FHIR_BODIES_DIR` when it is set:
//! `.ci/fhir-conformance.sh` validates each file with the `fhir.resources`
//! R4B models.

use cpis_devkit::users::TokenSpec;
use cpis_proto::common::v1::{ContactDetails, PlanType};
use cpis_proto::notification::v1::ListAlertsRequest;
use cpis_proto::registry::v1::{Plan, UpsertPlanRequest};
use cpis_testkit::*;
use serde_json::Value;
use std::sync::atomic::{AtomicUsize, Ordering};

pub const ISLINGTON: &str = "E09000019";
const GUIDE_INCLUDE: &str = "AuditEvent:entity-type=http://terminology.hl7.org/CodeSystem/v3-RoleClass|ASSIGNED";

/// `GET [base]/{resource}?patient:identifier=https://fhir.nhs.uk/Id/nhs-number|{nhs}` as the guide writes it.
pub fn search_path(resource: &str, nhs_number: &str) -> String {
    format!("/FHIR/R4/{resource}?patient:identifier=https://fhir.nhs.uk/Id/nhs-number|{nhs_number}")
}

/// The public base of the suite's FHIR port, as the test client addresses it.
pub fn base(ts: &TestSuite) -> String {
    format!("https://localhost:{}/FHIR/R4", ts.suite.attendance.fhir_addr.expect("FHIR port").port())
}

/// Writes `answer`'s body to `$CPIS_FHIR_BODIES_DIR/{label}-{n}.json` when set (for the R4B validation in CI).
pub fn keep(label: &str, answer: &FhirAnswer) {
    static N: AtomicUsize = AtomicUsize::new(0);
    let Some(dir) = std::env::var_os("CPIS_FHIR_BODIES_DIR") else { return };
    let dir = std::path::PathBuf::from(dir);
    std::fs::create_dir_all(&dir).expect("CPIS_FHIR_BODIES_DIR");
    let n = N.fetch_add(1, Ordering::SeqCst);
    let path = dir.join(format!("{label}-{}-{n}.json", std::process::id()));
    std::fs::write(&path, serde_json::to_vec_pretty(&answer.body).unwrap()).expect("writing a kept body");
}

/// Asserts the guide's searchset Bundle with `total` matches and returns its entries.
pub fn searchset(ts: &TestSuite, answer: &FhirAnswer, resource: &str, total: u64) -> Vec<Value> {
    assert_eq!(answer.status, 200, "{}", answer.raw);
    assert!(answer.content_type.starts_with("application/fhir+json"), "{}", answer.content_type);
    let b = &answer.body;
    assert_eq!((b["resourceType"].as_str(), b["type"].as_str()), (Some("Bundle"), Some("searchset")));
    assert_eq!(b["total"], total, "{b}");
    assert_eq!(b["link"][0]["relation"], "self");
    let self_url = b["link"][0]["url"].as_str().unwrap();
    assert!(self_url.starts_with(&format!("{}/{resource}?patient:identifier=", base(ts))), "{self_url}");
    let entries = b["entry"].as_array().cloned().unwrap_or_default();
    for e in &entries {
        let r = &e["resource"];
        let url = format!("{}/{}/{}", base(ts), r["resourceType"].as_str().unwrap(), r["id"].as_str().unwrap());
        assert_eq!(e["fullUrl"], url.as_str(), "an absolute fullUrl [base]/{{type}}/{{id}}");
    }
    let matches = entries.iter().filter(|e| e["search"]["mode"] == "match").count();
    assert_eq!(matches as u64, total, "total counts the matches");
    entries
}

fn contact(team: &str, office: &str, emergency: &str) -> Option<ContactDetails> {
    Some(ContactDetails {
        team_name: team.into(),
        office_phone: office.into(),
        emergency_duty_phone: emergency.into(),
        email: "team@example.gov.uk".into(),
    })
}

async fn upsert(ts: &TestSuite, council_code: &str, plan: Plan) {
    ts.registry(&council(council_code))
        .upsert_plan(UpsertPlanRequest { plan: Some(plan), expected_version: 0 })
        .await
        .expect("UpsertPlan");
}

async fn count(ts: &TestSuite, sql: &str) -> i64 {
    ts.db().await.query_one(sql, &[]).await.unwrap().get(0)
}

fn day(offset_days: i64) -> String {
    (cpis_domain::time::today_in_london() + chrono::TimeDelta::days(offset_days)).to_string()
}

#[tokio::test]
async fn care_team_is_the_guides_for_every_plan_type_with_the_header_absent_and_a_silent_read() {
    let ts = TestSuite::start().await;
    let (child, mother, nobody) = (nhs(2401), nhs(2402), nhs(2403));
    // A child protection plan (Islington) and an ended looked-after plan
    // still in scope (Manchester) for the child; an unborn plan (Kent) for the mother.
    let cpp = Plan {
        contact: contact("Children's Services Contact Team", "020 7527 7400", "020 7226 0992"),
        ..plan("ISL-2401", &child)
    };
    upsert(&ts, ISLINGTON, cpp).await;
    let lac = Plan {
        plan_type: PlanType::LookedAfter as i32,
        end_date: day(-30),
        contact: contact("Looked After Children", "0161 234 5000", "0161 255 8250"),
        ..plan("MCR-2401", &child)
    };
    upsert(&ts, MANCHESTER, lac).await;
    let unborn = Plan {
        plan_type: PlanType::UnbornChildProtection as i32,
        date_of_birth: String::new(),
        start_date: day(-30),
        expected_delivery_date: day(60),
        contact: contact("Kent Front Door", "03000 411111", "03000 419191"),
        ..plan("KENT-2402", &mother)
    };
    upsert(&ts, KENT, unborn).await;

    // The guide's unscheduled-care client: no IsUnscheduledAccessEvent, no X-Request-ID.
    let ed = ts.identity(&setting(ALDER_HEY));
    let trace = [("TraceID", "6ede3b9d-a81b-4c75-9d77-e1d64d85c323")];
    let answer = fhir_get(&ts, Some(&ed), &search_path("CareTeam", &child), &trace).await;
    keep("careteam-notifying", &answer);
    let entries = searchset(&ts, &answer, "CareTeam", 2);
    let team = |snomed: &str| {
        entries
            .iter()
            .map(|e| &e["resource"])
            .find(|t| t["category"][0]["coding"][0]["code"] == snomed)
            .unwrap_or_else(|| panic!("a CareTeam of category {snomed}: {}", answer.body))
            .clone()
    };
    let cp = team("342191000000101");
    assert_eq!(cp["category"][0]["coding"][0]["system"], "http://snomed.info/sct");
    assert_eq!(cp["category"][0]["coding"][0]["display"], "Subject to child protection plan");
    assert_eq!(cp["name"], "Islington Local Authority");
    assert_eq!(cp["subject"]["identifier"]["system"], "https://fhir.nhs.uk/Id/nhs-number");
    assert_eq!(cp["subject"]["identifier"]["value"], child.as_str());
    assert_eq!(phone(&cp, "work"), ["020 7527 7400"], "office hours: use work");
    assert_eq!(phone(&cp, "mobile"), ["020 7226 0992"], "emergency duty: use mobile");
    assert_eq!(cp["period"]["start"], "2025-01-10");
    assert_eq!(cp["status"], "active");
    let la = team("764841000000100");
    assert_eq!(la["name"], "Manchester Local Authority");
    assert_eq!(la["period"]["end"], day(-30).as_str(), "the ended plan's end date");
    assert_eq!(la["status"], "inactive", "an ended plan still in scope");
    assert_eq!(
        (phone(&la, "work"), phone(&la, "mobile")),
        (vec!["0161 234 5000".into()], vec!["0161 255 8250".into()])
    );
    // It was a notifying read: one episode, Islington alerted.
    assert_eq!(count(&ts, "SELECT count(*) FROM attendance.episodes").await, 1);
    let islington = ts.notification(&council(ISLINGTON));
    eventually(20, "Islington's alert", || {
        let mut c = islington.clone();
        async move {
            c.list_alerts(ListAlertsRequest { page_size: 10, ..Default::default() })
                .await
                .is_ok_and(|r| r.into_inner().alerts.len() == 1)
        }
    })
    .await;
    // The same read again, still without X-Request-ID: the 24-hour episode rule.
    let again = fhir_get(&ts, Some(&ed), &search_path("CareTeam", &child), &[]).await;
    searchset(&ts, &again, "CareTeam", 2);
    assert_eq!(count(&ts, "SELECT count(*) FROM attendance.episodes").await, 1, "the same episode");
    assert_eq!(count(&ts, "SELECT count(*) FROM attendance.outbox").await, 2, "no council alerted again");
    assert_eq!(count(&ts, "SELECT count(*) FROM attendance.accesses WHERE NOT silent").await, 2, "two views");

    // Scheduled care: a silent read of the mother's unborn plan.
    let gp = ts.identity(&setting("Y01234"));
    let silent = [("IsUnscheduledAccessEvent", "false"), ("TraceID", "b2acfb2c-c40e-4f9a-8916-950a2e86fc4e")];
    let answer = fhir_get(&ts, Some(&gp), &search_path("CareTeam", &mother), &silent).await;
    keep("careteam-silent", &answer);
    let entries = searchset(&ts, &answer, "CareTeam", 1);
    let ucp = &entries[0]["resource"];
    assert_eq!(ucp["category"][0]["coding"][0]["code"], "818901000000100");
    assert_eq!(ucp["name"], "Kent Local Authority");
    assert_eq!(ucp["subject"]["identifier"]["value"], mother.as_str(), "the pregnant woman's NHS number");
    let edd_url = format!("{}/StructureDefinition/cpis-expected-delivery-date", base(&ts));
    assert_eq!(ucp["extension"][0]["url"], edd_url.as_str());
    assert_eq!(ucp["extension"][0]["valueDate"], day(60).as_str());
    let silent_reads = "SELECT count(*) FROM attendance.accesses WHERE silent AND setting_code = 'Y01234'";
    assert_eq!(count(&ts, silent_reads).await, 1, "audited as silent");
    assert_eq!(count(&ts, "SELECT count(*) FROM attendance.outbox WHERE council_code = 'E10000016'").await, 0);
    // The extension's URL is real: its definition is served there.
    let path = edd_url.strip_prefix(&format!("https://localhost:{}", ts.suite.attendance.fhir_addr.unwrap().port()));
    let definition = fhir_get(&ts, Some(&gp), path.unwrap(), &[]).await;
    keep("structuredefinition", &definition);
    assert_eq!((definition.status, &definition.body["url"]), (200, &Value::from(edd_url.as_str())));

    // No record: the guide's empty Bundle, and nothing stored.
    let before = count(&ts, "SELECT count(*) FROM attendance.accesses").await;
    let answer = fhir_get(&ts, Some(&ed), &search_path("CareTeam", &nobody), &[]).await;
    keep("careteam-empty", &answer);
    assert!(searchset(&ts, &answer, "CareTeam", 0).is_empty());
    assert!(answer.body.get("entry").is_none());
    assert_eq!(count(&ts, "SELECT count(*) FROM attendance.accesses").await, before);

    let metadata = fhir_get(&ts, Some(&gp), "/FHIR/R4/metadata", &[]).await;
    keep("metadata", &metadata);
    assert_eq!(metadata.body["instantiates"][0], "https://fhir.nhs.uk/CapabilityStatement/CPIS-FHIR-API-Producer");
    assert_eq!(metadata.body["rest"][0]["resource"][1]["searchInclude"][0], GUIDE_INCLUDE);
    ts.suite.stop().await.unwrap();
}

/// The values of a CareTeam's telecom with `use`.
fn phone(team: &Value, use_: &str) -> Vec<String> {
    let all = team["telecom"].as_array().cloned().unwrap_or_default();
    all.iter().filter(|t| t["use"] == use_).map(|t| t["value"].as_str().unwrap().to_string()).collect()
}

#[tokio::test]
async fn audit_event_is_the_guides_with_and_without_the_include_of_who_looked() {
    let ts = TestSuite::start().await;
    let (child, nobody) = (nhs(2411), nhs(2412));
    upsert(&ts, ISLINGTON, plan("ISL-2411", &child)).await;
    // A nurse at the emergency department looks twice within minutes (one view),
    // a doctor at another hospital once, a GP reads silently (not shown).
    let nurse = TokenSpec {
        name: "Nurse Alex Example".into(),
        role_profile: Some("555254240100".into()),
        job_role: "R8001".into(),
        ..TokenSpec::new(ALDER_HEY, &["B0107"])
    };
    let doctor = TokenSpec {
        name: "Dr Sam Example".into(),
        role_profile: Some("555254240200".into()),
        ..TokenSpec::new(OTHER_SETTING, &["B0107"])
    };
    let as_person = |spec: &TokenSpec| {
        let t = ts.user_token_for(spec);
        vec![("Authorization".to_string(), format!("Bearer {}", t.token)), ("NHSD-Session-URID".to_string(), t.role_id)]
    };
    let get = |tls, path: String, headers: Vec<(String, String)>| {
        let ts = &ts;
        async move {
            let h: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
            fhir_get_raw(ts, Some(&tls), &path, &h).await
        }
    };
    let ed = ts.identity(&setting(ALDER_HEY));
    let other = ts.identity(&setting(OTHER_SETTING));
    for _ in 0..2 {
        searchset(&ts, &get(ed.clone(), search_path("CareTeam", &child), as_person(&nurse)).await, "CareTeam", 1);
    }
    searchset(&ts, &get(other.clone(), search_path("CareTeam", &child), as_person(&doctor)).await, "CareTeam", 1);
    let gp = ts.identity(&setting("Y01234"));
    let silent = [("IsUnscheduledAccessEvent", "false")];
    searchset(&ts, &fhir_get(&ts, Some(&gp), &search_path("CareTeam", &child), &silent).await, "CareTeam", 1);
    // An access recorded before verified users existed (as the migration left it).
    let legacy = "INSERT INTO attendance.accesses (access_id, episode_id, nhs_number, setting_code, setting_type,
                         user_id, council_codes, accessed_at)
                  SELECT gen_random_uuid(), episode_id, nhs_number, 'RXL01', 1, 'nurse-legacy',
                         ARRAY['E09000019'], now() - interval '3 days'
                  FROM attendance.episodes LIMIT 1";
    ts.db().await.execute(legacy, &[]).await.expect("a legacy access");

    // The guide's consumer: AuditEvent with the _include, IsUnscheduledAccessEvent and TraceID.
    let path = format!("{}&_include={GUIDE_INCLUDE}", search_path("AuditEvent", &child));
    let guide_headers = [("IsUnscheduledAccessEvent", "true"), ("TraceID", "b2acfb2c-c40e-4f9a-8916-950a2e86fc4e")];
    let reads_before = count(&ts, "SELECT count(*) FROM attendance.accesses WHERE episodes_read").await;
    let answer = fhir_get(&ts, Some(&ed), &path, &guide_headers).await;
    keep("auditevent-include", &answer);
    let entries = searchset(&ts, &answer, "AuditEvent", 3);
    let events: Vec<&Value> =
        entries.iter().filter(|e| e["search"]["mode"] == "match").map(|e| &e["resource"]).collect();
    let roles: Vec<&Value> =
        entries.iter().filter(|e| e["search"]["mode"] == "include").map(|e| &e["resource"]).collect();
    assert_eq!(roles.len(), 3, "one PractitionerRole per person who looked: {}", answer.body);
    let sites: Vec<&str> = events.iter().map(|e| e["source"]["site"].as_str().unwrap()).collect();
    assert_eq!(sites, [OTHER_SETTING, ALDER_HEY, "RXL01"], "most recent first; the nurse's second view counts once");
    for event in &events {
        assert_eq!(event["resourceType"], "AuditEvent");
        assert_eq!(event["type"]["system"], "http://terminology.hl7.org/CodeSystem/iso-21089-lifecycle");
        assert_eq!(event["type"]["code"], "access");
        assert!(event["recorded"].as_str().is_some_and(|r| chrono::DateTime::parse_from_rfc3339(r).is_ok()));
        let agent = |code: &str| {
            event["agent"].as_array().unwrap().iter().find(|a| a["type"]["coding"][0]["code"] == code).cloned().unwrap()
        };
        let patient = agent("PAT");
        assert_eq!(patient["type"]["coding"][0]["system"], "http://terminology.hl7.org/CodeSystem/v3-RoleClass");
        assert_eq!(patient["who"]["identifier"]["system"], "https://fhir.nhs.uk/Id/nhs-number");
        assert_eq!(patient["who"]["identifier"]["value"], child.as_str());
        assert_eq!(patient["requestor"], false);
        let requestor = agent("ASSIGNED");
        assert_eq!(requestor["requestor"], true);
        let reference = requestor["who"]["reference"].as_str().unwrap();
        assert_eq!(event["source"]["observer"]["reference"], reference);
        let id = reference.strip_prefix("PractitionerRole/").expect("a PractitionerRole reference");
        assert_eq!(roles.iter().filter(|r| r["id"] == id).count(), 1, "the referenced role is included once");
    }
    let role_of = |event: &Value| {
        let id = event["agent"][1]["who"]["reference"].as_str().unwrap().trim_start_matches("PractitionerRole/");
        roles.iter().find(|r| r["id"] == id).copied().cloned().unwrap()
    };
    let nurse_role = role_of(events[1]);
    assert_eq!(nurse_role["identifier"][0]["system"], "https://fhir.nhs.uk/Id/sds-role-profile-id");
    assert_eq!(nurse_role["identifier"][0]["value"], "555254240100");
    assert_eq!(nurse_role["practitioner"]["display"], "Nurse Alex Example");
    assert_eq!(nurse_role["organization"]["display"], "Development organisation RBQ01 (RBQ01)");
    assert_eq!(nurse_role["code"][0]["coding"][0]["code"], "R8001");
    assert_eq!(nurse_role["code"][0]["coding"][0]["display"], "Nurse Access Role");
    assert_eq!(role_of(events[0])["practitioner"]["display"], "Dr Sam Example");
    let legacy_role = role_of(events[2]);
    assert_eq!(legacy_role["practitioner"]["display"], "nurse-legacy (not verified)");
    assert_eq!(legacy_role["organization"]["identifier"]["value"], "RXL01");
    // The read itself is audited (for the council), and is not an unscheduled-care access.
    let reads = count(&ts, "SELECT count(*) FROM attendance.accesses WHERE episodes_read").await;
    assert_eq!(reads, reads_before + 1);

    // Without the _include: the same AuditEvents, no PractitionerRole.
    let answer = fhir_get(&ts, Some(&ed), &search_path("AuditEvent", &child), &[]).await;
    keep("auditevent", &answer);
    let plain = searchset(&ts, &answer, "AuditEvent", 3);
    assert_eq!(plain.len(), 3, "matches only");
    let ids = |es: &[&Value]| es.iter().map(|e| e["id"].clone()).collect::<Vec<_>>();
    assert_eq!(ids(&plain.iter().map(|e| &e["resource"]).collect::<Vec<_>>()), ids(&events));

    // A person with no flag in scope: total 0, nothing stored.
    let before = count(&ts, "SELECT count(*) FROM attendance.accesses").await;
    let path = format!("{}&_include={GUIDE_INCLUDE}", search_path("AuditEvent", &nobody));
    let answer = fhir_get(&ts, Some(&ed), &path, &[]).await;
    keep("auditevent-empty", &answer);
    assert!(searchset(&ts, &answer, "AuditEvent", 0).is_empty());
    assert_eq!(count(&ts, "SELECT count(*) FROM attendance.accesses").await, before);
    ts.suite.stop().await.unwrap();
}

#[tokio::test]
async fn behind_a_gateway_every_url_starts_at_the_public_base_url() {
    let public = "https://api.example.nhs.uk/cpis/FHIR/R4";
    let mut configs = cpis::suite::ServiceConfigs::default();
    configs.attendance.fhir_base_url = Some(format!("{public}/"));
    let ts = TestSuite::start_with(configs).await;
    let child = nhs(2431);
    let unborn = Plan {
        plan_type: PlanType::UnbornChildProtection as i32,
        date_of_birth: String::new(),
        start_date: day(-10),
        expected_delivery_date: day(100),
        ..plan("ISL-2431", &child)
    };
    upsert(&ts, ISLINGTON, unborn).await;
    let ed = ts.identity(&setting(ALDER_HEY));
    let answer = fhir_get(&ts, Some(&ed), &search_path("CareTeam", &child), &[]).await;
    keep("careteam-gateway", &answer);
    assert_eq!(answer.status, 200, "{}", answer.raw);
    let b = &answer.body;
    let self_url = b["link"][0]["url"].as_str().unwrap();
    assert!(self_url.starts_with(&format!("{public}/CareTeam?patient:identifier=")), "{self_url}");
    let team = &b["entry"][0]["resource"];
    assert_eq!(b["entry"][0]["fullUrl"], format!("{public}/CareTeam/{}", team["id"].as_str().unwrap()).as_str());
    let edd = format!("{public}/StructureDefinition/cpis-expected-delivery-date");
    assert_eq!(team["extension"][0]["url"], edd.as_str(), "the extension's URL is stable behind the gateway");
    let metadata = fhir_get(&ts, Some(&ed), "/FHIR/R4/metadata", &[]).await;
    assert_eq!(metadata.body["implementation"]["url"], public);
    ts.suite.stop().await.unwrap();
}
