//! Retries keep data: a check-in held up by the database past its lock
//! timeout is answered `UNAVAILABLE` with `google.rpc.RetryInfo` (never
//! `INTERNAL`), and repeating it with the same request id records it once.

use cpis::suite::ServiceConfigs;
use cpis_proto::notification::v1::ListAlertsRequest;
use cpis_proto::registry::v1::UpsertPlanRequest;
use cpis_runtime::db::SessionSettings;
use cpis_testkit::*;
use std::time::Duration;
use tonic::Code;
use tonic_types::StatusExt;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_check_in_held_on_a_lock_past_the_lock_timeout_is_unavailable_with_retry_info_and_its_retry_counts_once() {
    let session = SessionSettings { lock_timeout: Duration::from_millis(300), ..Default::default() };
    let ts = TestSuite::start_with(ServiceConfigs {
        notification: notification_settings(Duration::from_millis(500)),
        db_session: Some(session),
        ..Default::default()
    })
    .await;
    let child = nhs(6501);
    ts.registry(&council(MANCHESTER))
        .upsert_plan(UpsertPlanRequest { plan: Some(plan("MCR-R1", &child)), expected_version: 0 })
        .await
        .unwrap();

    // Something else holds the lock a check-in of this child here takes
    // (as a slow synchronous commit during a standby failover would).
    let holder = ts.db().await;
    let key = format!("attendance-episode:{ALDER_HEY}:{child}");
    holder.execute("SELECT pg_advisory_lock(hashtextextended($1::text, 0::bigint))", &[&key]).await.unwrap();
    let mut attendance = ts.attendance(&setting(ALDER_HEY));
    let request = arrival(&child);
    let busy = attendance.check_in(request.clone()).await.expect_err("held past the lock timeout");
    assert!(matches!(busy.code(), Code::Unavailable | Code::Aborted), "a transient condition, not a bug: {busy:?}");
    let retry = busy.get_details_retry_info().expect("google.rpc.RetryInfo in the status details");
    let delay = retry.retry_delay.expect("a retry delay");
    assert!(delay <= Duration::from_secs(5), "{delay:?}");
    assert!(cpis_runtime::error::is_transient(busy.code()));
    holder.execute("SELECT pg_advisory_unlock_all()", &[]).await.unwrap();

    // A client that follows the README retries with the same request id.
    tokio::time::sleep(delay).await;
    let first = attendance.check_in(request.clone()).await.expect("the retry goes through").into_inner();
    assert!(first.flagged);
    let again = attendance.check_in(request.clone()).await.expect("a repeat is answered").into_inner();
    assert_eq!(again.episode_id, first.episode_id);

    // One episode, one access in the audit, one alert.
    let db = ts.db().await;
    assert_eq!(count(&db, "SELECT count(*) FROM attendance.episodes").await, 1);
    assert_eq!(count(&db, "SELECT count(*) FROM attendance.accesses").await, 1);
    let mut notification = ts.notification(&council(MANCHESTER));
    eventually(20, "the alert is published", || {
        let mut notification = notification.clone();
        async move {
            let request = ListAlertsRequest { after_sequence: 0, page_size: 10, replay: true };
            !notification.list_alerts(request).await.unwrap().into_inner().alerts.is_empty()
        }
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let request = ListAlertsRequest { after_sequence: 0, page_size: 10, replay: true };
    let alerts = notification.list_alerts(request).await.unwrap().into_inner().alerts;
    assert_eq!(alerts.len(), 1, "one alert");
    ts.suite.stop().await.unwrap();
}

async fn count(db: &tokio_postgres::Client, sql: &str) -> i64 {
    db.query_one(sql, &[]).await.unwrap().get(0)
}
