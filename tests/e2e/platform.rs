//! Platform behaviour: metrics that move, readiness that follows PostgreSQL
//! and graceful shutdown, and faults that lose nothing.

use cpis::suite::ServiceConfigs;
use cpis_devkit::pgcluster::{ClusterOptions, PrivateCluster};
use cpis_proto::notification::v1::{subscribe_response::Event, SubscribeRequest};
use cpis_proto::registry::v1::{GetPlanRequest, UpsertPlanRequest};
use cpis_testkit::*;
use std::time::Duration;
use tonic::Code;

#[tokio::test]
async fn metrics_move_during_a_scenario() {
    let ts = TestSuite::start().await;
    let addr = |s: &cpis::suite::RunningService| s.metrics_addr.expect("metrics are served");
    let (reg, att, not) = (addr(&ts.suite.registry), addr(&ts.suite.attendance), addr(&ts.suite.notification));
    let before = scrape(att).await;
    let check_ins = |t: &str| sample(t, &["cpis_grpc_requests_total", "CheckIn", "code=\"Ok\""]);
    assert_eq!(check_ins(&before), 0.0);
    assert!(sample(&before, &["cpis_db_pool_connections", "state=\"max\""]) > 0.0, "pool usage is exported");

    let child = nhs(700);
    ts.registry(&council(MANCHESTER))
        .upsert_plan(UpsertPlanRequest { plan: Some(plan("MCR-M1", &child)), expected_version: 0 })
        .await
        .unwrap();
    let mut stream = ts
        .notification(&council(MANCHESTER))
        .subscribe(SubscribeRequest { after_sequence: 0, replay: false })
        .await
        .unwrap()
        .into_inner();
    eventually(5, "an open subscription", || async {
        sample(&scrape(not).await, &["cpis_notification_open_subscriptions"]) == 1.0
    })
    .await;
    ts.attendance(&setting(ALDER_HEY)).check_in(arrival(&child)).await.unwrap();
    ts.attendance(&setting(ALDER_HEY)).check_in(arrival(&nhs(701))).await.unwrap();
    let _ = ts.attendance(&setting(ALDER_HEY)).check_in(arrival("123")).await.unwrap_err();
    tokio::time::timeout(Duration::from_secs(10), async {
        while !matches!(stream.message().await.unwrap().unwrap().event, Some(Event::Alert(_))) {}
    })
    .await
    .unwrap();

    let after = scrape(att).await;
    assert_eq!(check_ins(&after), 2.0, "{after}");
    assert_eq!(sample(&after, &["cpis_grpc_requests_total", "CheckIn", "code=\"InvalidArgument\""]), 1.0);
    assert!(sample(&after, &["cpis_grpc_request_duration_seconds_count", "CheckIn"]) >= 3.0);
    assert!(after.contains("cpis_attendance_outbox_depth"));
    assert!(after.contains("cpis_attendance_outbox_oldest_age_seconds"));
    eventually(5, "the relay counted its delivery", || async {
        sample(&scrape(att).await, &["cpis_attendance_alerts_relayed_total"]) == 1.0
    })
    .await;
    let registry = scrape(reg).await;
    assert_eq!(sample(&registry, &["cpis_grpc_requests_total", "LookupFlags", "code=\"Ok\""]), 2.0);
    let notification = scrape(not).await;
    assert_eq!(sample(&notification, &["cpis_notification_alert_delivery_lag_seconds_count"]), 1.0);
    assert_eq!(sample(&notification, &["cpis_grpc_requests_total", "PublishAlert", "code=\"Ok\""]), 1.0);
    for text in [&after, &registry, &notification] {
        assert!(!text.contains(&child), "no NHS number in metrics");
    }
    drop(stream);
    eventually(5, "the subscription is cleaned up", || async {
        sample(&scrape(not).await, &["cpis_notification_open_subscriptions"]) == 0.0
    })
    .await;
    ts.suite.stop().await.unwrap();
}

#[tokio::test]
async fn readiness_goes_not_serving_before_streams_close_on_shutdown() {
    let ts = TestSuite::start().await;
    // A second Notification instance with a drain period, as in Kubernetes.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let draining = cpis::suite::start_notification(
        listener,
        &drain_common(&ts),
        notification_settings(Duration::from_millis(300)),
    )
    .await
    .unwrap();
    let port = draining.addr.port();
    let name = cpis_notification::SERVICE_NAME;
    eventually(10, "the second instance is ready", || async { readiness(&ts, port, name).await == Some(1) }).await;
    let channel = ts.channel(port, &council(MANCHESTER));
    let mut stream = cpis_proto::notification::v1::notification_service_client::NotificationServiceClient::new(channel)
        .subscribe(SubscribeRequest { after_sequence: 0, replay: false })
        .await
        .unwrap()
        .into_inner();

    draining.shutdown.request();
    eventually(2, "readiness NOT_SERVING as soon as shutdown starts", || async {
        readiness(&ts, port, name).await == Some(2)
    })
    .await;
    // Still draining: the open stream is alive (heartbeats keep coming).
    let heartbeat = tokio::time::timeout(Duration::from_secs(1), stream.message()).await.expect("stream alive");
    assert!(matches!(heartbeat.unwrap().unwrap().event, Some(Event::Heartbeat(_))));
    // Then the stream ends, telling the client to reconnect and resume.
    let end = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match stream.message().await {
                Ok(Some(_)) => continue,
                Ok(None) => return None,
                Err(status) => return Some(status.code()),
            }
        }
    })
    .await
    .expect("the stream ends after the drain period");
    assert_eq!(end, Some(Code::Unavailable));
    tokio::time::timeout(Duration::from_secs(15), draining.join).await.unwrap().unwrap().unwrap();
    ts.suite.stop().await.unwrap();
}

fn drain_common(ts: &TestSuite) -> cpis_runtime::settings::ServerSettings {
    let mut common = cpis::suite::dev_common(
        &ts.pki,
        cpis_domain::identity::ServiceName::Notification,
        TRUST_DOMAIN,
        &ts.database_url,
    )
    .unwrap();
    common.drain = Duration::from_secs(2);
    common
}

#[tokio::test]
async fn a_database_outage_turns_readiness_off_gives_unavailable_and_loses_nothing() {
    let dir = tempfile::Builder::new().prefix("cpis-outage").tempdir().unwrap();
    let mut cluster = PrivateCluster::start(dir.path(), ClusterOptions { unsafe_fast: false, ..Default::default() })
        .expect("a private cluster for this test");
    cluster.create_database("cpis").await.unwrap();
    let ts = TestSuite::start_on(
        cluster.url("cpis"),
        ServiceConfigs { notification: notification_settings(Duration::from_millis(500)), ..Default::default() },
    )
    .await;
    let mut registry = ts.registry(&council(MANCHESTER));
    let mut attendance = ts.attendance(&setting(ALDER_HEY));
    let mut acknowledged = Vec::new();
    for i in 0..5u32 {
        let reference = format!("MCR-O{i}");
        registry
            .upsert_plan(UpsertPlanRequest { plan: Some(plan(&reference, &nhs(800 + i))), expected_version: 0 })
            .await
            .unwrap();
        acknowledged.push((reference, nhs(800 + i)));
    }
    attendance.check_in(arrival(&nhs(800))).await.unwrap();

    cluster.stop();
    for (port, name) in ts.ports_and_names() {
        eventually(15, "readiness NOT_SERVING while PostgreSQL is down", || async {
            readiness(&ts, port, name).await == Some(2)
        })
        .await;
        // Liveness stays SERVING: Kubernetes must not restart the pod for this.
        assert_eq!(readiness(&ts, port, "").await, Some(1));
    }
    let err = registry
        .upsert_plan(UpsertPlanRequest { plan: Some(plan("MCR-DOWN", &nhs(850))), expected_version: 0 })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    let err = attendance.check_in(arrival(&nhs(801))).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    let err = ts
        .notification(&council(MANCHESTER))
        .subscribe(SubscribeRequest { after_sequence: 0, replay: false })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");

    cluster.spawn().expect("restarting PostgreSQL");
    for (port, name) in ts.ports_and_names() {
        eventually(30, "readiness SERVING again without a restart", || async {
            readiness(&ts, port, name).await == Some(1)
        })
        .await;
    }
    // Recovered on their own: writes work again, and nothing acknowledged was lost.
    eventually(15, "upserts succeed again", || {
        let mut r = registry.clone();
        async move {
            r.upsert_plan(UpsertPlanRequest { plan: Some(plan("MCR-AFTER", &nhs(851))), expected_version: 0 })
                .await
                .is_ok()
        }
    })
    .await;
    for (reference, number) in &acknowledged {
        let p = registry.get_plan(GetPlanRequest { local_reference: reference.clone() }).await.unwrap();
        assert_eq!(&p.into_inner().plan.unwrap().nhs_number, number);
    }
    let again = attendance.check_in(arrival(&nhs(801))).await.unwrap().into_inner();
    assert!(again.flagged);
    let mut stream = ts
        .notification(&council(MANCHESTER))
        .subscribe(SubscribeRequest { after_sequence: 0, replay: false })
        .await
        .unwrap()
        .into_inner();
    let mut sequences = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), async {
        while sequences.len() < 2 {
            if let Some(Event::Alert(a)) = stream.message().await.unwrap().unwrap().event {
                sequences.push(a.sequence);
            }
        }
    })
    .await
    .expect("both check-ins' alerts arrive");
    assert_eq!(sequences, [1, 2]);
    drop(stream);
    ts.suite.stop().await.unwrap();
    drop(cluster);
}
