//! End-to-end tests of the Registry service: councils keep their register;
//! and the helpers the other Registry files share (`registry_lookups.rs`: flag look-ups; `registry_sync.rs`:
//! `SyncPlans`).

use cpis_domain::identity::ServiceName;
use cpis_proto::common::v1::PlanType;
use cpis_proto::registry::v1::*;
use cpis_testkit::*;
use std::collections::HashSet;
use tonic::Code;
use tonic_types::StatusExt;

/// A valid unborn child protection plan held against `nhs`.
pub fn unborn_plan(reference: &str, nhs_number: &str) -> Plan {
    Plan {
        date_of_birth: String::new(),
        plan_type: PlanType::UnbornChildProtection as i32,
        start_date: "2026-06-01".into(),
        expected_delivery_date: "2027-01-15".into(),
        ..plan(reference, nhs_number)
    }
}

pub(crate) async fn upsert(ts: &TestSuite, council_code: &str, p: Plan) -> Result<Plan, tonic::Status> {
    ts.registry(&council(council_code))
        .upsert_plan(UpsertPlanRequest { plan: Some(p), expected_version: 0 })
        .await
        .map(|r| r.into_inner().plan.expect("plan"))
}

pub(crate) async fn lookup(ts: &TestSuite, nhs_number: &str, on_date: &str) -> LookupFlagsResponse {
    ts.registry(&service(ServiceName::Attendance))
        .lookup_flags(LookupFlagsRequest { nhs_number: nhs_number.into(), on_date: on_date.into() })
        .await
        .expect("lookup")
        .into_inner()
}

pub(crate) fn field_paths(status: &tonic::Status) -> Vec<String> {
    status
        .get_error_details()
        .bad_request()
        .map(|b| b.field_violations.iter().map(|v| v.field.clone()).collect())
        .unwrap_or_default()
}

/// Streams `plans` through SyncPlans as `council_code`.
pub async fn sync_plans(
    ts: &TestSuite,
    council_code: &str,
    plans: Vec<Plan>,
    allow_mass_end: bool,
) -> Result<SyncPlansResponse, tonic::Status> {
    sync_with(ts, council_code, plans, allow_mass_end, false).await
}

pub(crate) async fn sync_with(
    ts: &TestSuite,
    council_code: &str,
    plans: Vec<Plan>,
    allow_mass_end: bool,
    dry_run: bool,
) -> Result<SyncPlansResponse, tonic::Status> {
    let plan_rows = plans.len() as i64;
    let mut requests: Vec<SyncPlansRequest> = plans
        .into_iter()
        .map(|p| SyncPlansRequest { plan: Some(p), allow_mass_end, dry_run, ..Default::default() })
        .collect();
    requests.push(SyncPlansRequest {
        allow_mass_end,
        dry_run,
        completion: Some(SyncCompletion { plan_rows }),
        ..Default::default()
    });
    ts.registry(&council(council_code)).sync_plans(tokio_stream::iter(requests)).await.map(|r| r.into_inner())
}

#[tokio::test]
async fn upsert_is_idempotent_and_versions_only_real_changes() {
    let ts = TestSuite::start().await;
    let created = upsert(&ts, MANCHESTER, plan("MCR-1", &nhs(1))).await.unwrap();
    assert_eq!(created.version, 1);
    assert_eq!(created.council_code, MANCHESTER);
    assert!(!created.plan_id.is_empty());
    assert!(created.updated_at.is_some());

    let again = upsert(&ts, MANCHESTER, plan("MCR-1", &nhs(1))).await.unwrap();
    assert_eq!(again.version, 1, "the same body twice changes nothing");
    assert_eq!(again.plan_id, created.plan_id);

    let mut changed = plan("MCR-1", &nhs(1));
    changed.contact.as_mut().unwrap().office_phone = "0161 234 5999".into();
    let v2 = upsert(&ts, MANCHESTER, changed.clone()).await.unwrap();
    assert_eq!(v2.version, 2);
    assert_eq!(v2.contact.unwrap().office_phone, "0161 234 5999");

    // Server-owned fields sent by the client are ignored.
    let mut sneaky = changed.clone();
    sneaky.council_code = LIVERPOOL.into();
    sneaky.version = 99;
    sneaky.plan_id = "x".into();
    let same = upsert(&ts, MANCHESTER, sneaky).await.unwrap();
    assert_eq!((same.version, same.council_code.as_str()), (2, MANCHESTER));

    let mut client = ts.registry(&council(MANCHESTER));
    let mut third = changed.clone();
    third.end_date = "2026-12-31".into();
    let err = client
        .upsert_plan(UpsertPlanRequest { plan: Some(third.clone()), expected_version: 1 })
        .await
        .expect_err("stale expected_version");
    assert_eq!(err.code(), Code::Aborted);
    let ok = client.upsert_plan(UpsertPlanRequest { plan: Some(third), expected_version: 2 }).await.unwrap();
    assert_eq!(ok.into_inner().plan.unwrap().version, 3);
    let err = client
        .upsert_plan(UpsertPlanRequest { plan: Some(plan("MCR-NEW", &nhs(2))), expected_version: 4 })
        .await
        .expect_err("expected_version on a plan that does not exist");
    assert_eq!(err.code(), Code::Aborted);

    // The history kept every change: created, updated (twice).
    let db = ts.db().await;
    let rows = db
        .query(
            "SELECT action, changed_fields, changed_by FROM registry.plan_changes c
             JOIN registry.plans p USING (plan_id) WHERE p.local_reference = 'MCR-1' ORDER BY change_id",
            &[],
        )
        .await
        .unwrap();
    let actions: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
    assert_eq!(actions, ["created", "updated", "updated"]);
    let fields: Vec<String> = rows[1].get(1);
    assert_eq!(fields, ["contact.office_phone"]);
    let by: String = rows[0].get(2);
    assert_eq!(by, format!("council/{MANCHESTER}"));
    let err = db.execute("DELETE FROM registry.plan_changes", &[]).await.expect_err("history is append-only");
    assert!(err.to_string().contains("append-only") || err.as_db_error().is_some());
    ts.suite.stop().await.unwrap();
}

/// A change that makes a valid plan invalid.
type Mutation = Box<dyn Fn(&mut Plan)>;

#[tokio::test]
async fn every_validation_rule_names_its_field() {
    let ts = TestSuite::start().await;
    let mut client = ts.registry(&council(MANCHESTER));
    let valid = plan("MCR-V", &nhs(7));
    let tomorrow = (chrono::Utc::now().date_naive() + chrono::Days::new(1)).to_string();
    let cases: Vec<(&str, Mutation, &str)> = vec![
        ("bad check digit", Box::new(|p| p.nhs_number = "9990000019".into()), "plan.nhs_number"),
        ("nine digits", Box::new(|p| p.nhs_number = "999000001".into()), "plan.nhs_number"),
        ("letters", Box::new(|p| p.nhs_number = "99900000AB".into()), "plan.nhs_number"),
        ("spaces", Box::new(|p| p.nhs_number = "999 000 0018".into()), "plan.nhs_number"),
        ("missing nhs", Box::new(|p| p.nhs_number.clear()), "plan.nhs_number"),
        ("no such day", Box::new(|p| p.start_date = "2025-02-30".into()), "plan.start_date"),
        ("bad format", Box::new(|p| p.start_date = "10/01/2025".into()), "plan.start_date"),
        ("missing start", Box::new(|p| p.start_date.clear()), "plan.start_date"),
        ("end before start", Box::new(|p| p.end_date = "2024-12-31".into()), "plan.end_date"),
        ("unspecified type", Box::new(|p| p.plan_type = 0), "plan.plan_type"),
        ("type out of range", Box::new(|p| p.plan_type = 42), "plan.plan_type"),
        ("dob missing", Box::new(|p| p.date_of_birth.clear()), "plan.date_of_birth"),
        (
            "dob in future",
            {
                let t = tomorrow.clone();
                Box::new(move |p| {
                    p.date_of_birth = t.clone();
                    p.start_date = t.clone();
                })
            },
            "plan.date_of_birth",
        ),
        ("adult at start", Box::new(|p| p.date_of_birth = "2001-01-01".into()), "plan.date_of_birth"),
        ("start before birth", Box::new(|p| p.start_date = "2015-01-01".into()), "plan.start_date"),
        (
            "edd on a born child",
            Box::new(|p| p.expected_delivery_date = "2026-01-01".into()),
            "plan.expected_delivery_date",
        ),
        ("empty reference", Box::new(|p| p.local_reference.clear()), "plan.local_reference"),
        ("long reference", Box::new(|p| p.local_reference = "R".repeat(65)), "plan.local_reference"),
        ("control chars", Box::new(|p| p.local_reference = "A\u{0}B".into()), "plan.local_reference"),
        ("no contact", Box::new(|p| p.contact = None), "plan.contact"),
        ("no team", Box::new(|p| p.contact.as_mut().unwrap().team_name = " ".into()), "plan.contact.team_name"),
        (
            "bad phone",
            Box::new(|p| p.contact.as_mut().unwrap().office_phone = "call us".into()),
            "plan.contact.office_phone",
        ),
        (
            "no duty phone",
            Box::new(|p| p.contact.as_mut().unwrap().emergency_duty_phone.clear()),
            "plan.contact.emergency_duty_phone",
        ),
        (
            "bad email",
            Box::new(|p| p.contact.as_mut().unwrap().email = "mash.example.gov.uk".into()),
            "plan.contact.email",
        ),
        (
            "huge team",
            Box::new(|p| p.contact.as_mut().unwrap().team_name = "T".repeat(1_000_000)),
            "plan.contact.team_name",
        ),
    ];
    for (name, mutate, field) in &cases {
        let mut p = valid.clone();
        mutate(&mut p);
        let err =
            client.upsert_plan(UpsertPlanRequest { plan: Some(p.clone()), expected_version: 0 }).await.expect_err(name);
        assert_eq!(err.code(), Code::InvalidArgument, "{name}: {err:?}");
        assert!(field_paths(&err).contains(&field.to_string()), "{name}: {:?}", field_paths(&err));
        assert!(!err.message().contains(&p.nhs_number) || p.nhs_number.is_empty(), "{name} echoed the NHS number");
    }
    // Unborn plans: no date of birth, and an expected delivery date.
    let mut u = unborn_plan("MCR-U", &nhs(8));
    u.expected_delivery_date.clear();
    let err = client.upsert_plan(UpsertPlanRequest { plan: Some(u), expected_version: 0 }).await.unwrap_err();
    assert!(field_paths(&err).contains(&"plan.expected_delivery_date".to_string()));
    let mut u = unborn_plan("MCR-U", &nhs(8));
    u.date_of_birth = "2016-01-01".into();
    let err = client.upsert_plan(UpsertPlanRequest { plan: Some(u), expected_version: 0 }).await.unwrap_err();
    assert!(field_paths(&err).contains(&"plan.date_of_birth".to_string()));
    let err = client.upsert_plan(UpsertPlanRequest { plan: None, expected_version: 0 }).await.unwrap_err();
    assert_eq!(field_paths(&err), ["plan"]);

    // Nothing was stored by any of it.
    let stored: i64 = ts.db().await.query_one("SELECT count(*) FROM registry.plans", &[]).await.unwrap().get(0);
    assert_eq!(stored, 0);
    assert!(upsert(&ts, MANCHESTER, unborn_plan("MCR-U", &nhs(8))).await.is_ok());
    ts.suite.stop().await.unwrap();
}

#[tokio::test]
async fn councils_see_only_their_own_plans() {
    let ts = TestSuite::start().await;
    upsert(&ts, MANCHESTER, plan("SHARED-REF", &nhs(10))).await.unwrap();
    let mut liverpool = ts.registry(&council(LIVERPOOL));
    let err = liverpool.get_plan(GetPlanRequest { local_reference: "SHARED-REF".into() }).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "another council's plan is NOT_FOUND, never PERMISSION_DENIED");
    let err = liverpool
        .end_plan(EndPlanRequest { local_reference: "SHARED-REF".into(), end_date: "2026-01-01".into() })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let err = liverpool.delete_plan(DeletePlanRequest { local_reference: "SHARED-REF".into() }).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let page = liverpool.list_plans(ListPlansRequest { include_ended: true, ..Default::default() }).await.unwrap();
    assert!(page.into_inner().plans.is_empty());
    // The same reference is independent per council.
    let lpl = upsert(&ts, LIVERPOOL, plan("SHARED-REF", &nhs(11))).await.unwrap();
    assert_eq!(lpl.version, 1);
    let mcr = ts.registry(&council(MANCHESTER)).get_plan(GetPlanRequest { local_reference: "SHARED-REF".into() }).await;
    assert_eq!(mcr.unwrap().into_inner().plan.unwrap().nhs_number, nhs(10));
    ts.suite.stop().await.unwrap();
}

#[tokio::test]
async fn end_and_delete_plans() {
    let ts = TestSuite::start().await;
    let mut client = ts.registry(&council(MANCHESTER));
    upsert(&ts, MANCHESTER, plan("MCR-E", &nhs(30))).await.unwrap();
    let ended = client
        .end_plan(EndPlanRequest { local_reference: "MCR-E".into(), end_date: "2025-09-30".into() })
        .await
        .unwrap()
        .into_inner()
        .plan
        .unwrap();
    assert_eq!((ended.end_date.as_str(), ended.version), ("2025-09-30", 2));
    let err = client
        .end_plan(EndPlanRequest { local_reference: "MCR-E".into(), end_date: "2024-01-01".into() })
        .await
        .unwrap_err();
    assert_eq!(field_paths(&err), ["end_date"]);
    let err = client.end_plan(EndPlanRequest { local_reference: "MCR-E".into(), end_date: String::new() }).await;
    assert_eq!(err.unwrap_err().code(), Code::InvalidArgument);

    client.delete_plan(DeletePlanRequest { local_reference: "MCR-E".into() }).await.unwrap();
    let err = client.delete_plan(DeletePlanRequest { local_reference: "MCR-E".into() }).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    // The reference is free again after a deletion.
    assert_eq!(upsert(&ts, MANCHESTER, plan("MCR-E", &nhs(31))).await.unwrap().version, 1);
    ts.suite.stop().await.unwrap();
}

#[tokio::test]
async fn list_plans_pages_without_gaps_or_repeats_while_plans_change() {
    let ts = TestSuite::start().await;
    let mut sync = Vec::new();
    for i in 0..250u32 {
        sync.push(plan(&format!("REF-{i:04}"), &nhs(1000 + i)));
    }
    sync_plans(&ts, MANCHESTER, sync, false).await.unwrap();
    let original: HashSet<String> = (0..250).map(|i| format!("REF-{i:04}")).collect();

    let mut client = ts.registry(&council(MANCHESTER));
    let mut seen = Vec::new();
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let page = client
            .list_plans(ListPlansRequest { page_size: 40, page_token: token.clone(), include_ended: false })
            .await
            .unwrap()
            .into_inner();
        pages += 1;
        seen.extend(page.plans.iter().map(|p| p.local_reference.clone()));
        // Plans change between pages: new ones before and after the cursor, one updated.
        upsert(&ts, MANCHESTER, plan(&format!("AAA-{pages}"), &nhs(2000 + pages))).await.unwrap();
        upsert(&ts, MANCHESTER, plan(&format!("ZZZ-{pages}"), &nhs(2100 + pages))).await.unwrap();
        let mut changed = plan("REF-0100", &nhs(1100));
        changed.contact.as_mut().unwrap().team_name = format!("Team {pages}");
        upsert(&ts, MANCHESTER, changed).await.unwrap();
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    let unique: HashSet<String> = seen.iter().cloned().collect();
    assert_eq!(unique.len(), seen.len(), "no plan appears twice");
    assert!(original.is_subset(&unique), "every plan that existed throughout appears");

    let err = client.list_plans(ListPlansRequest { page_size: 1001, ..Default::default() }).await.unwrap_err();
    assert_eq!(field_paths(&err), ["page_size"]);
    let err = client
        .list_plans(ListPlansRequest { page_token: "not-a-token".into(), ..Default::default() })
        .await
        .unwrap_err();
    assert_eq!(field_paths(&err), ["page_token"]);

    // Ended plans are listed only when asked for.
    client
        .end_plan(EndPlanRequest { local_reference: "REF-0000".into(), end_date: "2025-02-01".into() })
        .await
        .unwrap();
    let all = |include_ended| {
        let mut c = client.clone();
        async move {
            c.list_plans(ListPlansRequest { page_size: 1000, page_token: String::new(), include_ended })
                .await
                .unwrap()
                .into_inner()
                .plans
                .into_iter()
                .map(|p| p.local_reference)
                .collect::<HashSet<_>>()
        }
    };
    assert!(!all(false).await.contains("REF-0000"));
    assert!(all(true).await.contains("REF-0000"));
    ts.suite.stop().await.unwrap();
}
