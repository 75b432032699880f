//! Retention: `cpis purge` removes exactly the records past their retention
//! period, never one still in scope, records what it did, and a second run
//! removes nothing more.

use cpis::purge::PurgeArgs;
use cpis_domain::identity::ServiceName;
use cpis_proto::notification::v1::{AckAlertsRequest, ListAlertsRequest};
use cpis_proto::registry::v1::{DeletePlanRequest, EndPlanRequest, UpsertPlanRequest};
use cpis_testkit::*;
use std::collections::BTreeMap;

fn args(ts: &TestSuite, dry_run: bool) -> PurgeArgs {
    PurgeArgs {
        service: "all".into(),
        dry_run,
        database_url: Some(ts.database_url.clone()),
        database_url_file: None,
        ended_plans_days: 2922,
        episodes_days: 2922,
        accesses_days: 2922,
        requests_days: 7,
        delivered_outbox_days: 7,
        alerts_days: 730,
    }
}

async fn purge_all(ts: &TestSuite, dry_run: bool) -> BTreeMap<String, u64> {
    let pool = cpis_runtime::db::pool(&ts.database_url, 2).unwrap();
    let mut counts = BTreeMap::new();
    for service in [ServiceName::Registry, ServiceName::Attendance, ServiceName::Notification] {
        for p in cpis::purge::purge(&pool, service, &args(ts, dry_run)).await.unwrap() {
            counts.insert(p.kind.to_string(), p.count);
        }
    }
    counts
}

async fn count(db: &tokio_postgres::Client, sql: &str) -> i64 {
    db.query_one(sql, &[]).await.unwrap().get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purge_removes_exactly_what_is_past_retention_and_is_idempotent() {
    let ts = TestSuite::start().await;
    let mut registry = ts.registry(&council(MANCHESTER));
    // Five plans: ended nine years ago; ended six months ago (still in
    // scope); active; deleted nine years ago; deleted last month.
    for (i, reference) in ["OLD-END", "RECENT-END", "ACTIVE", "OLD-DEL", "RECENT-DEL"].iter().enumerate() {
        registry
            .upsert_plan(UpsertPlanRequest { plan: Some(plan(reference, &nhs(4001 + i as u32))), expected_version: 0 })
            .await
            .unwrap();
    }
    // Attendances of the active child: one nine years ago (by date, kept
    // referenced by nothing after its access goes), and one today.
    for _ in 0..2 {
        ts.attendance(&setting(ALDER_HEY)).check_in(arrival(&nhs(4003))).await.unwrap();
    }
    ts.attendance(&setting(OTHER_SETTING)).check_in(arrival(&nhs(4003))).await.unwrap();
    for reference in ["OLD-END", "RECENT-END"] {
        registry
            .end_plan(EndPlanRequest { local_reference: reference.into(), end_date: "2026-01-01".into() })
            .await
            .unwrap();
    }
    for reference in ["OLD-DEL", "RECENT-DEL"] {
        registry.delete_plan(DeletePlanRequest { local_reference: reference.into() }).await.unwrap();
    }
    // Manchester has both alerts; it acknowledges the first only.
    let mut notification = ts.notification(&council(MANCHESTER));
    eventually(10, "both alerts stored", || {
        let mut n = notification.clone();
        async move {
            n.list_alerts(ListAlertsRequest { after_sequence: 0, page_size: 10, replay: false })
                .await
                .unwrap()
                .into_inner()
                .alerts
                .len()
                == 2
        }
    })
    .await;
    notification.ack_alerts(AckAlertsRequest { up_to_sequence: 1 }).await.unwrap();
    eventually(10, "the outbox is delivered", || async {
        count(&ts.db().await, "SELECT count(*) FROM attendance.outbox WHERE delivered_at IS NULL").await == 0
    })
    .await;

    // Age the records as the calendar would.
    let db = ts.db().await;
    db.batch_execute(
        "UPDATE registry.plans SET start_date = DATE '2016-01-01', end_date = (now() - interval '9 years')::date
             WHERE local_reference = 'OLD-END';
         UPDATE registry.plans SET end_date = (now() - interval '6 months')::date WHERE local_reference = 'RECENT-END';
         UPDATE registry.plans SET deleted_at = now() - interval '9 years' WHERE local_reference = 'OLD-DEL';
         UPDATE registry.plans SET deleted_at = now() - interval '1 month' WHERE local_reference = 'RECENT-DEL';
         -- The Alder Hey episode (two accesses) happened nine years ago.
         UPDATE attendance.episodes SET arrived_at = now() - interval '9 years' WHERE setting_code = 'RBQ01';
         UPDATE attendance.accesses SET accessed_at = now() - interval '9 years' WHERE setting_code = 'RBQ01';
         -- Its replay records and outbox copy are older than a week.
         UPDATE attendance.check_in_requests SET created_at = now() - interval '8 days' WHERE setting_code = 'RBQ01';
         UPDATE attendance.outbox SET delivered_at = now() - interval '8 days' WHERE setting_code = 'RBQ01';
         -- Both alerts are three years old; only the first is acknowledged.
         UPDATE notification.alerts SET created_at = now() - interval '3 years';
         -- And so is the acknowledgement of the first.
         UPDATE notification.ack_history SET acked_at = now() - interval '3 years';",
    )
    .await
    .unwrap();

    let expected: BTreeMap<String, u64> = [
        ("plan_history", 4), // OLD-END: created, ended; OLD-DEL: created, deleted
        ("ended_plans", 2),
        ("request_replay_records", 2),
        ("delivered_outbox", 1),
        ("accesses", 2),
        ("episodes", 1),
        ("alerts", 1),
        ("acknowledgements", 1),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let before = (
        count(&db, "SELECT count(*) FROM registry.plans").await,
        count(&db, "SELECT count(*) FROM attendance.episodes").await,
        count(&db, "SELECT count(*) FROM notification.alerts").await,
    );
    assert_eq!(purge_all(&ts, true).await, expected, "a dry run counts");
    let after_dry_run = (
        count(&db, "SELECT count(*) FROM registry.plans").await,
        count(&db, "SELECT count(*) FROM attendance.episodes").await,
        count(&db, "SELECT count(*) FROM notification.alerts").await,
    );
    assert_eq!(before, after_dry_run, "a dry run changes nothing");
    assert_eq!(count(&db, "SELECT count(*) FROM registry.purges").await, 0, "a dry run is not recorded");

    assert_eq!(purge_all(&ts, false).await, expected);
    // What stays: plans in scope or recently deleted, today's episode and its
    // access, the unacknowledged alert.
    let left: Vec<String> = db
        .query("SELECT local_reference FROM registry.plans ORDER BY local_reference", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(left, ["ACTIVE", "RECENT-DEL", "RECENT-END"]);
    assert_eq!(count(&db, "SELECT count(*) FROM attendance.episodes WHERE setting_code = 'RWJ01'").await, 1);
    assert_eq!(count(&db, "SELECT count(*) FROM attendance.episodes").await, 1);
    assert_eq!(count(&db, "SELECT count(*) FROM notification.alerts").await, 1);
    assert_eq!(count(&db, "SELECT min(sequence) FROM notification.alerts").await, 2, "the unacknowledged alert stays");
    // The history of the remaining plans is intact and still append-only.
    assert!(count(&db, "SELECT count(*) FROM registry.plan_changes").await >= 3);
    assert!(db.execute("DELETE FROM registry.plan_changes", &[]).await.is_err(), "history stays append-only");
    // The purge is recorded: one row per kind in each schema.
    let recorded: i64 = count(&db, "SELECT sum(count)::bigint FROM registry.purges").await
        + count(&db, "SELECT sum(count)::bigint FROM attendance.purges").await
        + count(&db, "SELECT sum(count)::bigint FROM notification.purges").await;
    assert_eq!(recorded as u64, expected.values().sum::<u64>());
    // The registry still answers for what is left, and a second purge removes nothing.
    let still = ts.attendance(&setting(ALDER_HEY)).check_in(arrival(&nhs(4003))).await.unwrap().into_inner();
    assert!(still.flagged);
    let again = purge_all(&ts, false).await;
    assert!(again.values().all(|&n| n == 0), "idempotent: {again:?}");
    ts.suite.stop().await.unwrap();
}
