//! End-to-end tests of the Registry service: councils keep their register,
//! the attendance service looks flags up.
//!
//! One file per service's contract, so a reader finds every Registry behaviour in one place (over
//! 400 lines).

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

async fn upsert(ts: &TestSuite, council_code: &str, p: Plan) -> Result<Plan, tonic::Status> {
    ts.registry(&council(council_code))
        .upsert_plan(UpsertPlanRequest { plan: Some(p), expected_version: 0 })
        .await
        .map(|r| r.into_inner().plan.expect("plan"))
}

async fn lookup(ts: &TestSuite, nhs_number: &str, on_date: &str) -> LookupFlagsResponse {
    ts.registry(&service(ServiceName::Attendance))
        .lookup_flags(LookupFlagsRequest { nhs_number: nhs_number.into(), on_date: on_date.into() })
        .await
        .expect("lookup")
        .into_inner()
}

fn field_paths(status: &tonic::Status) -> Vec<String> {
    status
        .get_error_details()
        .bad_request()
        .map(|b| b.field_violations.iter().map(|v| v.field.clone()).collect())
        .unwrap_or_default()
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
async fn lookup_flags_applies_the_twelve_month_scope_across_councils() {
    let ts = TestSuite::start().await;
    let child = nhs(20);
    let mut ended = plan("MCR-20", &child);
    ended.end_date = "2025-03-15".into();
    upsert(&ts, MANCHESTER, ended).await.unwrap();
    let mut lac = plan("LPL-20", &child);
    lac.plan_type = PlanType::LookedAfter as i32;
    lac.start_date = "2025-06-01".into();
    upsert(&ts, LIVERPOOL, lac).await.unwrap();

    let before = lookup(&ts, &child, "2024-12-31").await;
    assert!(before.flags.is_empty(), "not in scope before it started");

    let on_end = lookup(&ts, &child, "2025-03-15").await;
    assert_eq!(on_end.flags.len(), 1);
    assert!(!on_end.flags[0].ended, "active on its last day");

    let both = lookup(&ts, &child, "2026-03-14").await;
    assert_eq!(both.flags.len(), 2);
    let mcr = &both.flags[0];
    assert_eq!((mcr.council_code.as_str(), mcr.council_name.as_str()), (MANCHESTER, "Manchester"));
    assert!(mcr.ended, "ended less than 12 months ago: shown, marked ended");
    assert_eq!(mcr.contact.as_ref().unwrap().emergency_duty_phone, "0161 255 8250");
    assert_eq!(both.flags[1].council_name, "Liverpool");
    assert_eq!(both.flags[1].plan_type, PlanType::LookedAfter as i32);
    assert_eq!(both.local_references, ["MCR-20", "LPL-20"]);

    let after = lookup(&ts, &child, "2026-03-15").await;
    assert_eq!(after.flags.len(), 1, "12 months after the end it is out of scope");
    assert_eq!(after.flags[0].council_code, LIVERPOOL);

    // Unborn plans carry the expected delivery date; unknown councils show their code.
    let mother = nhs(21);
    upsert(&ts, KENT, unborn_plan("KNT-1", &mother)).await.unwrap();
    upsert(&ts, "E06999999", plan("X-1", &mother)).await.unwrap();
    let flags = lookup(&ts, &mother, "2026-07-01").await.flags;
    assert_eq!(flags.len(), 2);
    assert_eq!(flags[0].council_name, "E06999999");
    assert_eq!(flags[1].council_name, "Kent");
    assert_eq!(flags[1].expected_delivery_date, "2027-01-15");

    // Deleted plans are never shown again; the audit trail keeps them.
    ts.registry(&council(KENT)).delete_plan(DeletePlanRequest { local_reference: "KNT-1".into() }).await.unwrap();
    let flags = lookup(&ts, &mother, "2026-07-01").await.flags;
    assert_eq!(flags.len(), 1);
    let err =
        ts.registry(&council(KENT)).get_plan(GetPlanRequest { local_reference: "KNT-1".into() }).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let kept: i64 = ts
        .db()
        .await
        .query_one("SELECT count(*) FROM registry.plan_changes WHERE action = 'deleted'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(kept, 1);

    let none = lookup(&ts, &nhs(22), "").await;
    assert!(none.flags.is_empty());
    let err = ts
        .registry(&service(ServiceName::Attendance))
        .lookup_flags(LookupFlagsRequest { nhs_number: "1234567890".into(), on_date: "2026-13-01".into() })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let fields = field_paths(&err);
    assert!(fields.contains(&"nhs_number".to_string()) && fields.contains(&"on_date".to_string()), "{fields:?}");
    assert!(!err.message().contains("1234567890"));
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

/// Streams `plans` through SyncPlans as `council_code`.
pub async fn sync_plans(
    ts: &TestSuite,
    council_code: &str,
    plans: Vec<Plan>,
    allow_mass_end: bool,
) -> Result<SyncPlansResponse, tonic::Status> {
    sync_with(ts, council_code, plans, allow_mass_end, false).await
}

async fn sync_with(
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
async fn sync_plans_reconciles_counts_rejections_and_refuses_mass_ends() {
    let ts = TestSuite::start().await;
    let first: Vec<Plan> = (0..20u32).map(|i| plan(&format!("S-{i:02}"), &nhs(3000 + i))).collect();
    let r = sync_plans(&ts, MANCHESTER, first.clone(), false).await.unwrap();
    assert_eq!((r.received, r.created, r.updated, r.unchanged, r.ended, r.rejected), (20, 20, 0, 0, 0, 0));

    // Second snapshot: S-00 changed, S-01 missing (1 of 20 = 5%: allowed),
    // two new, S-02 sent with a bad NHS number (refused: kept as it was),
    // one bad date, one duplicate of S-03.
    let mut second: Vec<Plan> = first[3..].to_vec();
    let mut changed = first[0].clone();
    changed.contact.as_mut().unwrap().email = "new@example.gov.uk".into();
    second.push(changed);
    let mut bad_nhs = first[2].clone();
    bad_nhs.nhs_number = "9990000019".into();
    second.push(bad_nhs);
    second.push(plan("S-NEW-1", &nhs(3100)));
    second.push(plan("S-NEW-2", &nhs(3101)));
    let mut bad_date = plan("S-BAD", &nhs(3102));
    bad_date.start_date = "2025-02-30".into();
    second.push(bad_date);
    let mut dup = first[3].clone();
    dup.contact.as_mut().unwrap().team_name = "Duplicate".into();
    second.push(dup);

    let dry = sync_with(&ts, MANCHESTER, second.clone(), false, true).await.unwrap();
    assert!(dry.dry_run);
    assert_eq!((dry.created, dry.updated, dry.unchanged, dry.ended, dry.rejected), (2, 1, 17, 1, 3));
    let untouched = ts.registry(&council(MANCHESTER)).get_plan(GetPlanRequest { local_reference: "S-01".into() }).await;
    assert!(untouched.unwrap().into_inner().plan.unwrap().end_date.is_empty(), "a dry run changes nothing");

    let r = sync_plans(&ts, MANCHESTER, second, false).await.unwrap();
    assert_eq!((r.received, r.created, r.updated, r.unchanged, r.ended, r.rejected), (23, 2, 1, 17, 1, 3));
    let mut rejected: Vec<(i64, String, String)> =
        r.rejections.iter().map(|x| (x.row, x.local_reference.clone(), x.field.clone())).collect();
    rejected.sort();
    assert_eq!(
        rejected,
        [
            (19, "S-02".to_string(), "plan.nhs_number".to_string()),
            (22, "S-BAD".to_string(), "plan.start_date".to_string()),
            (23, "S-03".to_string(), "plan.local_reference".to_string()),
        ]
    );
    assert!(r.rejections.iter().all(|x| !x.reason.contains("9990000019")));
    let mut registry = ts.registry(&council(MANCHESTER));
    let get = |r: &str| GetPlanRequest { local_reference: r.into() };
    let s01 = registry.get_plan(get("S-01")).await.unwrap().into_inner().plan.unwrap();
    assert_eq!(s01.end_date, chrono::Utc::now().date_naive().to_string(), "absent plans are ended today");
    let s02 = registry.get_plan(get("S-02")).await.unwrap().into_inner().plan.unwrap();
    assert!(s02.end_date.is_empty() && s02.version == 1, "a refused row changes nothing and is not ended");
    let s03 = registry.get_plan(get("S-03")).await.unwrap().into_inner().plan.unwrap();
    assert_ne!(s03.contact.unwrap().team_name, "Duplicate", "the first of two duplicates counts");

    // A truncated file (5 of 21 open plans) must never wipe the register.
    let truncated: Vec<Plan> = first[3..8].to_vec();
    let err = sync_plans(&ts, MANCHESTER, truncated.clone(), false).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    let open = registry
        .list_plans(ListPlansRequest { page_size: 1000, ..Default::default() })
        .await
        .unwrap()
        .into_inner()
        .plans
        .iter()
        .filter(|p| p.end_date.is_empty())
        .count();
    assert_eq!(open, 21, "the refused snapshot changed nothing");
    let r = sync_plans(&ts, MANCHESTER, truncated, true).await.unwrap();
    assert_eq!((r.ended, r.unchanged), (16, 5));

    // Another council's sync never touches Manchester's plans.
    let r = sync_plans(&ts, LIVERPOOL, vec![plan("S-00", &nhs(3200))], false).await.unwrap();
    assert_eq!((r.created, r.ended), (1, 0));
    let history: i64 = ts
        .db()
        .await
        .query_one("SELECT count(*) FROM registry.plan_changes WHERE action LIKE '%_by_sync'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(history, 20 + 2 + 1 + 1 + 16 + 1);
    let staged: i64 = ts.db().await.query_one("SELECT count(*) FROM registry.sync_rows", &[]).await.unwrap().get(0);
    assert_eq!(staged, 0, "no staging rows left behind");
    ts.suite.stop().await.unwrap();
}

#[tokio::test]
async fn lookup_flags_is_one_index_probe_however_large_the_register() {
    let ts = TestSuite::start().await;
    upsert(&ts, MANCHESTER, plan("MCR-IDX", &nhs(40))).await.unwrap();
    let db = ts.db().await;
    // 200,000 more plans (setup only: straight into the table).
    db.batch_execute(
        "INSERT INTO registry.plans (plan_id, council_code, local_reference, nhs_number, date_of_birth, plan_type,
             start_date, team_name, office_phone, emergency_duty_phone, email, version)
         SELECT gen_random_uuid(), 'E08000012', 'BULK-' || g, lpad(g::text, 10, '0'), '2015-01-01', 1,
             '2025-01-01', 'T', '0151 000 0000', '0151 000 0000', 't@example.gov.uk', 1
         FROM generate_series(1, 200000) AS g;
         ANALYZE registry.plans;",
    )
    .await
    .unwrap();
    let plan_text: Vec<String> = db
        .query(
            &format!("EXPLAIN {}", cpis_registry::store::LOOKUP_FLAGS_SQL),
            &[&nhs(40), &chrono::Utc::now().date_naive(), &(cpis_registry::DEFAULT_UNBORN_SCOPE_DAYS as i32)],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let plan_text = plan_text.join("\n");
    assert!(plan_text.contains("plans_nhs_number"), "LookupFlags must use the NHS number index:\n{plan_text}");
    assert!(!plan_text.contains("Seq Scan"), "no sequential scan:\n{plan_text}");
    assert_eq!(lookup(&ts, &nhs(40), "").await.flags.len(), 1);
    ts.suite.stop().await.unwrap();
}

#[tokio::test]
async fn an_upload_that_breaks_off_changes_nothing() {
    let ts = TestSuite::start().await;
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    let mut client = ts.registry(&council(MANCHESTER));
    let call = tokio::spawn(async move { client.sync_plans(tokio_stream::wrappers::ReceiverStream::new(rx)).await });
    // More than a batch, so that rows are staged before the stream ends.
    for i in 0..1500u32 {
        let row = SyncPlansRequest { plan: Some(plan(&format!("CUT-{i}"), &nhs(4000 + i))), ..Default::default() };
        tx.send(row).await.unwrap();
    }
    let db = ts.db().await;
    eventually(5, "a batch is staged", || async {
        db.query_one("SELECT count(*) FROM registry.sync_rows", &[]).await.unwrap().get::<_, i64>(0) > 0
    })
    .await;
    // The client goes away mid-upload (its process died, its network broke).
    call.abort();
    drop(tx);
    eventually(5, "the staged rows are dropped", || async {
        db.query_one("SELECT count(*) FROM registry.sync_rows", &[]).await.unwrap().get::<_, i64>(0) == 0
    })
    .await;
    let plans: i64 = db.query_one("SELECT count(*) FROM registry.plans", &[]).await.unwrap().get(0);
    assert_eq!(plans, 0, "a broken-off upload applies nothing");
    ts.suite.stop().await.unwrap();
}
