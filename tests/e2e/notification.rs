//! End-to-end tests of the Notification service: durable, ordered,
//! resumable alert streams per council, and the helpers the other
//! Notification files share (`notification_publishing.rs`: publishing and
//! the log; `notification_instances.rs`: several instances and restarts).

use cpis_domain::identity::ServiceName;
use cpis_proto::notification::v1::{
    notification_service_client::NotificationServiceClient, subscribe_response::Event, AckAlertsRequest, Alert,
    Heartbeat, ListAlertsRequest, PublishAlertRequest, PublishAlertResponse, SubscribeRequest, SubscribeResponse,
};
use cpis_testkit::*;
use std::time::Duration;
use tokio::time::{timeout, Instant};
use tonic::transport::Channel;
use tonic::{Code, Streaming};
use tonic_types::StatusExt;

/// Longest wait for anything a test expects to happen.
pub(crate) const PATIENCE: Duration = Duration::from_secs(15);

/// The Attendance service's client, the only identity allowed to publish.
pub(crate) fn publisher(ts: &TestSuite) -> NotificationServiceClient<Channel> {
    ts.notification(&service(ServiceName::Attendance))
}

pub(crate) async fn publish(
    client: &mut NotificationServiceClient<Channel>,
    request: PublishAlertRequest,
) -> PublishAlertResponse {
    timeout(PATIENCE, client.publish_alert(request)).await.expect("publish timed out").expect("publish").into_inner()
}

/// Publishes alerts `serials` for `council` one after another.
pub(crate) async fn publish_many(ts: &TestSuite, council: &str, serials: std::ops::Range<u32>) {
    let mut client = publisher(ts);
    for serial in serials {
        publish(&mut client, alert_for(council, serial)).await;
    }
}

/// Publishes alerts `0..count` for `council` from `publishers` concurrent
/// clients; returns the sequences the service answered.
pub(crate) async fn publish_concurrently(ts: &TestSuite, council: &str, count: u32, publishers: u32) -> Vec<i64> {
    let tasks: Vec<_> = (0..publishers)
        .map(|p| {
            let mut client = publisher(ts);
            let council = council.to_string();
            tokio::spawn(async move {
                let mut sequences = Vec::new();
                for serial in (p..count).step_by(publishers as usize) {
                    sequences.push(publish(&mut client, alert_for(&council, serial)).await.sequence);
                }
                sequences
            })
        })
        .collect();
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.expect("publisher task"));
    }
    all
}

pub(crate) async fn subscribe_on(
    client: &mut NotificationServiceClient<Channel>,
    after_sequence: i64,
) -> Streaming<SubscribeResponse> {
    timeout(PATIENCE, client.subscribe(SubscribeRequest { after_sequence, replay: false }))
        .await
        .expect("subscribe timed out")
        .expect("subscribe")
        .into_inner()
}

pub(crate) async fn subscribe(ts: &TestSuite, council_code: &str, after: i64) -> Streaming<SubscribeResponse> {
    subscribe_on(&mut ts.notification(&council(council_code)), after).await
}

/// The next event of a stream (heartbeats included).
pub(crate) async fn next_event(stream: &mut Streaming<SubscribeResponse>) -> Event {
    timeout(PATIENCE, stream.message())
        .await
        .expect("no event in time")
        .expect("stream failed")
        .expect("stream ended")
        .event
        .expect("empty event")
}

/// The next alert of a stream, skipping heartbeats.
pub(crate) async fn next_alert(stream: &mut Streaming<SubscribeResponse>) -> Alert {
    loop {
        match next_event(stream).await {
            Event::Alert(alert) => return alert,
            Event::Heartbeat(_) => continue,
        }
    }
}

/// The next heartbeat, failing if an alert comes first.
pub(crate) async fn next_heartbeat(stream: &mut Streaming<SubscribeResponse>) -> Heartbeat {
    match next_event(stream).await {
        Event::Heartbeat(h) => h,
        Event::Alert(a) => panic!("expected a heartbeat, got alert {}", a.sequence),
    }
}

pub(crate) async fn next_sequences(stream: &mut Streaming<SubscribeResponse>, n: usize) -> Vec<i64> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(next_alert(stream).await.sequence);
    }
    out
}

pub(crate) fn seqs(range: std::ops::RangeInclusive<i64>) -> Vec<i64> {
    range.collect()
}

pub(crate) async fn list(
    ts: &TestSuite,
    council_code: &str,
    after_sequence: i64,
    page_size: i32,
) -> Result<(Vec<i64>, bool), tonic::Status> {
    let page = ts
        .notification(&council(council_code))
        .list_alerts(ListAlertsRequest { after_sequence, page_size, replay: false })
        .await?
        .into_inner();
    Ok((page.alerts.iter().map(|a| a.sequence).collect(), page.has_more))
}

pub(crate) async fn ack(ts: &TestSuite, council_code: &str, up_to_sequence: i64) -> Result<i64, tonic::Status> {
    Ok(ts
        .notification(&council(council_code))
        .ack_alerts(AckAlertsRequest { up_to_sequence })
        .await?
        .into_inner()
        .acknowledged_through)
}

pub(crate) async fn stored_alerts(ts: &TestSuite) -> i64 {
    ts.db().await.query_one("SELECT count(*) FROM notification.alerts", &[]).await.expect("count").get(0)
}

/// The field paths of an `INVALID_ARGUMENT`'s `BadRequest` details.
pub(crate) fn violated_fields(status: &tonic::Status) -> Vec<String> {
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    status
        .get_error_details()
        .bad_request()
        .expect("BadRequest details")
        .field_violations
        .iter()
        .map(|v| v.field.clone())
        .collect()
}

#[tokio::test]
async fn backlog_is_replayed_then_live_alerts_follow_in_order() {
    let ts = TestSuite::start().await;
    let mut client = publisher(&ts);
    let mut published = Vec::new();
    for serial in 0..5 {
        published.push(publish(&mut client, alert_for(MANCHESTER, serial)).await);
    }

    let mut stream = subscribe(&ts, MANCHESTER, 0).await;
    for (serial, answer) in published.iter().enumerate() {
        let alert = next_alert(&mut stream).await;
        let sent = alert_for(MANCHESTER, serial as u32);
        assert_eq!(alert.sequence, serial as i64 + 1);
        assert_eq!(alert.sequence, answer.sequence);
        assert_eq!(alert.alert_id, answer.alert_id);
        assert_eq!(alert.council_code, MANCHESTER);
        assert_eq!(alert.nhs_number, sent.nhs_number);
        assert_eq!(alert.plan_type, sent.plan_type);
        assert_eq!(alert.local_reference, sent.local_reference);
        assert_eq!(alert.episode, sent.episode);
        assert_eq!(alert.priority, sent.priority);
        assert!(alert.created_at.is_some());
    }

    // Live: published after the replay, delivered on the same stream.
    for serial in 5..8 {
        publish(&mut client, alert_for(MANCHESTER, serial)).await;
    }
    assert_eq!(next_sequences(&mut stream, 3).await, seqs(6..=8));
    // Nothing else: the next event is a heartbeat saying 8 is the latest.
    assert_eq!(next_heartbeat(&mut stream).await.latest_sequence, 8);
    ts.suite.stop().await.unwrap();
}

#[tokio::test]
async fn resuming_after_a_disconnect_delivers_exactly_the_missing_alerts() {
    let ts = TestSuite::start().await;
    publish_many(&ts, MANCHESTER, 0..3).await;
    let mut stream = subscribe(&ts, MANCHESTER, 0).await;
    assert_eq!(next_sequences(&mut stream, 3).await, seqs(1..=3));
    drop(stream);

    // Published while the council is away.
    publish_many(&ts, MANCHESTER, 3..7).await;

    let mut stream = subscribe(&ts, MANCHESTER, 3).await;
    assert_eq!(next_sequences(&mut stream, 4).await, seqs(4..=7));
    assert_eq!(next_heartbeat(&mut stream).await.latest_sequence, 7);

    // Resuming from the middle works too.
    let mut stream = subscribe(&ts, MANCHESTER, 5).await;
    assert_eq!(next_sequences(&mut stream, 2).await, seqs(6..=7));
    assert_eq!(next_heartbeat(&mut stream).await.latest_sequence, 7);
    ts.suite.stop().await.unwrap();
}

#[tokio::test]
async fn after_an_ack_subscribing_from_zero_resumes_after_it_and_acks_never_go_back() {
    let ts = TestSuite::start().await;
    publish_many(&ts, MANCHESTER, 0..5).await;

    assert_eq!(ack(&ts, MANCHESTER, 0).await.unwrap(), 0);
    assert_eq!(ack(&ts, MANCHESTER, 3).await.unwrap(), 3);
    // Monotonic: a lower (late, duplicated) ack changes nothing.
    assert_eq!(ack(&ts, MANCHESTER, 2).await.unwrap(), 3);
    assert_eq!(ack(&ts, MANCHESTER, 0).await.unwrap(), 3);

    let mut stream = subscribe(&ts, MANCHESTER, 0).await;
    assert_eq!(next_sequences(&mut stream, 2).await, seqs(4..=5));
    assert_eq!(next_heartbeat(&mut stream).await.latest_sequence, 5);
    assert_eq!(list(&ts, MANCHESTER, 0, 0).await.unwrap(), (seqs(4..=5), false));
    // An explicit sequence still reaches behind the ack.
    assert_eq!(list(&ts, MANCHESTER, 1, 0).await.unwrap(), (seqs(2..=5), false));

    // Out of range acks are refused and change nothing.
    for bad in [-1, 6] {
        let err = ack(&ts, MANCHESTER, bad).await.expect_err("out of range");
        assert_eq!(violated_fields(&err), ["up_to_sequence"]);
    }
    // Another council's alerts do not make room for Liverpool's acks.
    let err = ack(&ts, LIVERPOOL, 1).await.expect_err("nothing to ack");
    assert_eq!(violated_fields(&err), ["up_to_sequence"]);
    assert_eq!(ack(&ts, MANCHESTER, 5).await.unwrap(), 5);

    // Everything acknowledged: a fresh stream starts with live alerts only.
    let mut stream = subscribe(&ts, MANCHESTER, 0).await;
    assert_eq!(next_heartbeat(&mut stream).await.latest_sequence, 5);
    publish_many(&ts, MANCHESTER, 5..6).await;
    assert_eq!(next_alert(&mut stream).await.sequence, 6);
    ts.suite.stop().await.unwrap();
}

#[tokio::test]
async fn a_council_only_ever_sees_its_own_alerts() {
    let ts = TestSuite::start().await;
    let mut liverpool = subscribe(&ts, LIVERPOOL, 0).await;
    let mut manchester = subscribe(&ts, MANCHESTER, 0).await;
    publish_many(&ts, MANCHESTER, 0..3).await;
    publish_many(&ts, LIVERPOOL, 100..101).await;
    publish_many(&ts, MANCHESTER, 3..5).await;

    // Sequences are per council: Liverpool's first alert is its number 1.
    let alert = next_alert(&mut liverpool).await;
    assert_eq!((alert.council_code.as_str(), alert.sequence), (LIVERPOOL, 1));
    assert_eq!(alert.nhs_number, nhs(100));
    // Then only heartbeats, for a while.
    let until = Instant::now() + Duration::from_millis(1500);
    while Instant::now() < until {
        assert_eq!(next_heartbeat(&mut liverpool).await.latest_sequence, 1);
    }
    for expected in 1..=5 {
        let alert = next_alert(&mut manchester).await;
        assert_eq!((alert.council_code.as_str(), alert.sequence), (MANCHESTER, expected));
    }
    assert_eq!(list(&ts, LIVERPOOL, 0, 0).await.unwrap(), (vec![1], false));
    let err = list(&ts, LIVERPOOL, 2, 0).await.expect_err("beyond Liverpool's log");
    assert_eq!(violated_fields(&err), ["after_sequence"]);

    // Neither settings nor services can read a council's alerts, and
    // councils cannot publish.
    let err = ts
        .notification(&setting(ALDER_HEY))
        .subscribe(SubscribeRequest { after_sequence: 0, replay: false })
        .await
        .expect_err("a setting may not subscribe");
    assert_eq!(err.code(), Code::PermissionDenied);
    let err =
        publisher(&ts).list_alerts(ListAlertsRequest::default()).await.expect_err("a service may not list alerts");
    assert_eq!(err.code(), Code::PermissionDenied);
    let err = ts
        .notification(&council(LIVERPOOL))
        .publish_alert(alert_for(LIVERPOOL, 7))
        .await
        .expect_err("a council may not publish");
    assert_eq!(err.code(), Code::PermissionDenied);
    ts.suite.stop().await.unwrap();
}

#[tokio::test]
async fn a_stalled_subscriber_does_not_delay_another_councils_alerts() {
    let ts = TestSuite::start().await;
    // A Manchester system that opens a stream and stops reading. A tiny
    // HTTP/2 window makes the stall reach the server at once, so its buffer
    // fills and its task waits, as a real stalled client's would.
    let (endpoint, connector) = cpis_runtime::client::endpoint(
        &format!("https://localhost:{}", ts.notification_port()),
        &ts.identity(&council(MANCHESTER)),
        None,
    )
    .unwrap();
    let stalled_channel = endpoint.initial_stream_window_size(Some(1024)).connect_with_connector_lazy(connector);
    let mut stalled = subscribe_on(&mut NotificationServiceClient::new(stalled_channel), 0).await;
    let mut liverpool = subscribe(&ts, LIVERPOOL, 0).await;

    let flood = publish_concurrently(&ts, MANCHESTER, 600, 8).await;
    assert_eq!(flood.len(), 600);

    // Liverpool's alerts still flow promptly, one after another.
    let mut client = publisher(&ts);
    for serial in 0..5 {
        let started = Instant::now();
        publish(&mut client, alert_for(LIVERPOOL, 1000 + serial)).await;
        let alert = timeout(Duration::from_secs(2), next_alert(&mut liverpool))
            .await
            .expect("Liverpool's alert is not held up by Manchester's stalled stream");
        assert_eq!(alert.sequence, i64::from(serial) + 1);
        assert!(started.elapsed() < Duration::from_secs(2));
    }

    // When the stalled system reads again it gets everything, in order: the
    // stream caught up from the table rather than from a queue.
    assert_eq!(next_sequences(&mut stalled, 600).await, seqs(1..=600));
    assert_eq!(next_heartbeat(&mut stalled).await.latest_sequence, 600);
    ts.suite.stop().await.unwrap();
}

#[tokio::test]
async fn heartbeats_arrive_while_idle() {
    let ts = TestSuite::start().await;
    let mut stream = subscribe(&ts, MANCHESTER, 0).await;
    let started = Instant::now();
    for _ in 0..3 {
        let beat = next_heartbeat(&mut stream).await;
        assert_eq!(beat.latest_sequence, 0);
        let sent_at = beat.sent_at.expect("sent_at");
        let now = chrono::Utc::now().timestamp();
        assert!((sent_at.seconds - now).abs() <= 5, "sent_at is the current time");
    }
    // The harness configures 500 ms: three beats take about 1.5 s.
    let elapsed = started.elapsed();
    assert!(elapsed >= Duration::from_millis(1200), "{elapsed:?}");
    assert!(elapsed < Duration::from_secs(5), "{elapsed:?}");

    publish_many(&ts, MANCHESTER, 0..1).await;
    assert_eq!(next_alert(&mut stream).await.sequence, 1);
    assert_eq!(next_heartbeat(&mut stream).await.latest_sequence, 1);
    ts.suite.stop().await.unwrap();
}
