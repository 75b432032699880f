//! What a council's case system relies on beyond order: replay from any
//! sequence whatever it acknowledged (`replay`, `cpis subscribe
//! --from-start`), a stream the server ends always ending with a non-OK
//! status, a client that never acknowledges what it has not written out,
//! and per-council delivery metrics for operators.

use cpis_domain::identity::ServiceName;
use cpis_testkit::*;

use cpis_proto::notification::v1::notification_service_client::NotificationServiceClient;
use cpis_proto::notification::v1::{subscribe_response::Event, AckAlertsRequest, ListAlertsRequest, SubscribeRequest};
use std::time::Duration;
use tokio::time::timeout;
use tonic::transport::Channel;
use tonic::Code;

const PATIENCE: Duration = Duration::from_secs(15);

async fn publish(ts: &TestSuite, council: &str, serials: std::ops::Range<u32>) {
    let mut client = ts.notification(&service(ServiceName::Attendance));
    for serial in serials {
        client.publish_alert(alert_for(council, serial)).await.expect("publish");
    }
}

async fn list(client: &mut NotificationServiceClient<Channel>, after: i64, replay: bool) -> Vec<i64> {
    let page = client
        .list_alerts(ListAlertsRequest { after_sequence: after, page_size: 1000, replay })
        .await
        .expect("list")
        .into_inner();
    page.alerts.iter().map(|a| a.sequence).collect()
}

async fn acknowledged(client: &mut NotificationServiceClient<Channel>) -> i64 {
    // Acknowledging 0 changes nothing and answers the stored acknowledgement.
    client.ack_alerts(AckAlertsRequest { up_to_sequence: 0 }).await.expect("ack").into_inner().acknowledged_through
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_reads_acknowledged_alerts_again_from_any_sequence() {
    let ts = TestSuite::start().await;
    publish(&ts, MANCHESTER, 0..4).await;
    let mut client = ts.notification(&council(MANCHESTER));
    client.ack_alerts(AckAlertsRequest { up_to_sequence: 4 }).await.unwrap();

    // 0 keeps its meaning: after the last acknowledged.
    assert_eq!(list(&mut client, 0, false).await, Vec::<i64>::new());
    // Replay: everything from 1, or after any sequence, whatever was acknowledged.
    assert_eq!(list(&mut client, 0, true).await, vec![1, 2, 3, 4]);
    assert_eq!(list(&mut client, 2, true).await, vec![3, 4]);
    let beyond =
        client.list_alerts(ListAlertsRequest { after_sequence: 5, page_size: 10, replay: true }).await.unwrap_err();
    assert_eq!(beyond.code(), Code::InvalidArgument);

    let mut stream = client.subscribe(SubscribeRequest { after_sequence: 0, replay: true }).await.unwrap().into_inner();
    let mut seen = Vec::new();
    timeout(PATIENCE, async {
        while seen.len() < 4 {
            if let Some(Event::Alert(a)) = stream.message().await.unwrap().unwrap().event {
                seen.push(a.sequence);
            }
        }
    })
    .await
    .expect("the replay arrives");
    assert_eq!(seen, vec![1, 2, 3, 4]);
    // A replay acknowledges nothing by itself and never lowers the acknowledgement.
    assert_eq!(acknowledged(&mut client).await, 4);
    drop(stream);
    ts.suite.stop().await.unwrap();
}

/// Runs `cpis subscribe` against the suite's Notification service.
fn cpis_subscribe(ts: &TestSuite, cursor: &std::path::Path, extra: &[&str]) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_cpis"));
    cmd.arg("subscribe")
        .arg("--state-dir")
        .arg(ts.state.path())
        .arg("--endpoint")
        .arg(format!("https://localhost:{}", ts.notification_port()))
        .args(["--council", MANCHESTER])
        .arg("--cursor-file")
        .arg(cursor)
        .args(extra)
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .kill_on_drop(true);
    cmd
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cpis_subscribe_from_start_replays_acknowledged_alerts_from_1() {
    let ts = TestSuite::start().await;
    publish(&ts, MANCHESTER, 0..3).await;
    let mut client = ts.notification(&council(MANCHESTER));
    client.ack_alerts(AckAlertsRequest { up_to_sequence: 3 }).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cursor = dir.path().join("cursor");
    // A cursor file from before the case system was restored says 3.
    std::fs::write(&cursor, "3\n").unwrap();

    let out = timeout(PATIENCE, cpis_subscribe(&ts, &cursor, &["--from-start", "--count", "3"]).output())
        .await
        .expect("cpis subscribe finished")
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let sequences: Vec<i64> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["sequence"].as_i64().unwrap())
        .collect();
    assert_eq!(sequences, vec![1, 2, 3], "every acknowledged alert again, from 1");
    assert_eq!(std::fs::read_to_string(&cursor).unwrap().trim(), "3");
    assert_eq!(acknowledged(&mut client).await, 3);
    ts.suite.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cpis_subscribe_never_acknowledges_an_alert_it_could_not_write_out() {
    let ts = TestSuite::start().await;
    publish(&ts, MANCHESTER, 0..2).await;
    let mut client = ts.notification(&council(MANCHESTER));
    client.ack_alerts(AckAlertsRequest { up_to_sequence: 1 }).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cursor = dir.path().join("cursor");

    // Its output goes nowhere: the reader of the pipe has gone.
    let mut child = cpis_subscribe(&ts, &cursor, &["--count", "1"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let status = timeout(PATIENCE, child.wait()).await.expect("cpis subscribe gave up").unwrap();
    assert!(!status.success(), "writing the alert failed, so the command fails");
    assert_eq!(acknowledged(&mut client).await, 1, "alert 2 was not acknowledged");
    assert!(!cursor.exists() || std::fs::read_to_string(&cursor).unwrap().trim() != "2");
    ts.suite.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_ended_by_shutdown_ends_unavailable_after_its_buffered_alerts() {
    let mut ts = TestSuite::start().await;
    const ALERTS: u32 = 400;
    publish(&ts, LIVERPOOL, 0..ALERTS).await;
    // A client with small HTTP/2 windows, so that what it does not read
    // stays in the server's buffer.
    let (endpoint, connector) = cpis_runtime::client::endpoint(
        &format!("https://localhost:{}", ts.notification_port()),
        &ts.identity(&council(LIVERPOOL)),
        None,
    )
    .unwrap();
    let channel = endpoint
        .initial_stream_window_size(Some(4096))
        .initial_connection_window_size(Some(4096))
        .connect_with_connector_lazy(connector);
    let mut stream = NotificationServiceClient::new(channel)
        .subscribe(SubscribeRequest { after_sequence: 0, replay: true })
        .await
        .unwrap()
        .into_inner();
    // Not reading: the windows and then the server's buffer fill up.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let notification = std::mem::replace(
        &mut ts.suite.notification,
        cpis::suite::RunningService {
            addr: "127.0.0.1:9".parse().unwrap(),
            shutdown: Default::default(),
            join: tokio::spawn(async { Ok(()) }),
            metrics: cpis_runtime::metrics::Metrics::new("placeholder"),
            metrics_addr: None,
            fhir_addr: None,
        },
    );
    notification.shutdown.request();
    let mut alerts = 0;
    let end = timeout(PATIENCE, async {
        loop {
            match stream.message().await {
                Ok(Some(m)) => {
                    if matches!(m.event, Some(Event::Alert(_))) {
                        alerts += 1;
                    }
                }
                Ok(None) => return None,
                Err(status) => return Some(status),
            }
        }
    })
    .await
    .expect("the stream ended");
    let status = end.expect("the stream ended with a status, not OK");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(status.message().contains("shutting down"), "the server's own status, not a broken connection: {status:?}");
    assert!(alerts > 64, "the buffer was full when the stream ended ({alerts} alerts read)");
    let _ = notification.join.await;
    ts.suite.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_see_each_councils_unacknowledged_alerts_and_subscriptions() {
    let ts = TestSuite::start().await;
    publish(&ts, MANCHESTER, 0..3).await;
    publish(&ts, KENT, 10..11).await;
    let mut manchester = ts.notification(&council(MANCHESTER));
    manchester.ack_alerts(AckAlertsRequest { up_to_sequence: 1 }).await.unwrap();
    let stream =
        manchester.subscribe(SubscribeRequest { after_sequence: 3, replay: false }).await.unwrap().into_inner();
    let addr = ts.suite.notification.metrics_addr.expect("metrics");
    let label = |code: &str| format!("council=\"{code}\"");
    let (mcr, kent) = (label(MANCHESTER), label(KENT));
    eventually(15, "per-council backlog metrics", || async {
        let text = scrape(addr).await;
        sample(&text, &["cpis_notification_council_unacked_alerts", &mcr]) == 2.0
            && sample(&text, &["cpis_notification_council_unacked_alerts", &kent]) == 1.0
    })
    .await;
    let text = scrape(addr).await;
    assert!(sample(&text, &["cpis_notification_council_oldest_unacked_age_seconds", &mcr]) >= 0.0);
    assert!(text.contains("cpis_notification_council_oldest_unacked_age_seconds{council=\"E08000003\""), "{text}");
    assert_eq!(sample(&text, &["cpis_notification_council_subscriptions", &mcr]), 1.0);
    assert_eq!(sample(&text, &["cpis_notification_council_subscriptions", &kent]), 0.0);
    assert!(text.contains("cpis_notification_council_subscriptions{council=\"E10000016\""), "{text}");
    for serial in [0, 1, 2, 10] {
        assert!(!text.contains(&nhs(serial)), "no NHS number in metrics");
    }
    drop(stream);
    eventually(5, "the subscription is gone", || async {
        sample(&scrape(addr).await, &["cpis_notification_council_subscriptions", &mcr]) == 0.0
    })
    .await;
    manchester.ack_alerts(AckAlertsRequest { up_to_sequence: 3 }).await.unwrap();
    eventually(15, "the backlog drains", || async {
        let text = scrape(addr).await;
        sample(&text, &["cpis_notification_council_unacked_alerts", &mcr]) == 0.0
            && sample(&text, &["cpis_notification_council_oldest_unacked_age_seconds", &mcr]) == 0.0
    })
    .await;
    ts.suite.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cpis_subscribe_rides_out_a_notification_restart() {
    let mut ts = TestSuite::start().await;
    publish(&ts, MANCHESTER, 0..1).await;
    let dir = tempfile::tempdir().unwrap();
    let cursor = dir.path().join("cursor");
    let child = cpis_subscribe(&ts, &cursor, &["--count", "2"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut client = ts.notification(&council(MANCHESTER));
    eventually(15, "the first alert acknowledged", || {
        let mut client = client.clone();
        async move { acknowledged(&mut client).await == 1 }
    })
    .await;

    // The service goes away (its stream ends UNAVAILABLE) and comes back.
    let addr = ts.suite.notification.addr;
    ts.suite.notification.shutdown.request();
    let join = std::mem::replace(&mut ts.suite.notification.join, tokio::spawn(async { Ok(()) }));
    join.await.unwrap().unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let listener = loop {
        match tokio::net::TcpListener::bind(addr).await {
            Ok(l) => break l,
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    };
    let common = cpis::suite::dev_common(&ts.pki, ServiceName::Notification, TRUST_DOMAIN, &ts.database_url).unwrap();
    ts.suite.notification =
        cpis::suite::start_notification(listener, &common, notification_settings(Duration::from_millis(500)))
            .await
            .unwrap();
    publish(&ts, MANCHESTER, 1..2).await;

    let out =
        timeout(Duration::from_secs(30), child.wait_with_output()).await.expect("cpis subscribe finished").unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let sequences: Vec<i64> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["sequence"].as_i64().unwrap())
        .collect();
    assert_eq!(sequences, vec![1, 2], "each alert once, across the restart");
    assert!(stderr.contains("resuming after 1"), "it reconnected from its cursor: {stderr}");
    assert_eq!(acknowledged(&mut client).await, 2);
    ts.suite.stop().await.unwrap();
}
