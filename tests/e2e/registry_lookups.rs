//! End-to-end tests of the Registry's flag look-ups: the twelve-month scope
//! across councils, and one index probe however large the register.

use crate::registry::{field_paths, lookup, unborn_plan, upsert};
use cpis_domain::identity::ServiceName;
use cpis_proto::common::v1::PlanType;
use cpis_proto::registry::v1::*;
use cpis_testkit::*;
use tonic::Code;

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
