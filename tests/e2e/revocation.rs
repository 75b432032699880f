//! Identity is followed for the whole life of a call, and revocation fails
//! closed: a revoked council's open alert stream ends with `UNAUTHENTICATED`
//! and delivers nothing made after the revocation, while another council's
//! stream keeps receiving; a certificate that expires ends its stream the
//! same way; a revocation list that goes missing or empty makes the service
//! unready and refuses new connections until it is back.

use cpis_devkit::pki::IssueOptions;
use cpis_domain::identity::ServiceName;
use cpis_proto::notification::v1::notification_service_client::NotificationServiceClient;
use cpis_proto::notification::v1::subscribe_response::Event;
use cpis_proto::notification::v1::{ListAlertsRequest, SubscribeRequest, SubscribeResponse};
use cpis_proto::registry::v1::{ListPlansRequest, UpsertPlanRequest};
use cpis_testkit::*;
use std::time::{Duration, Instant};
use tonic::{Code, Streaming};
use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest};

async fn subscribe(client: &mut NotificationServiceClient<tonic::transport::Channel>) -> Streaming<SubscribeResponse> {
    client.subscribe(SubscribeRequest { after_sequence: 0, replay: false }).await.expect("subscribe").into_inner()
}

/// Reads a stream to its end (within `secs`): the alerts it delivered and
/// the status it ended with.
async fn read_to_end(stream: &mut Streaming<SubscribeResponse>, secs: u64) -> (Vec<i64>, tonic::Status) {
    let mut alerts = Vec::new();
    let end = tokio::time::timeout(Duration::from_secs(secs), async {
        loop {
            match stream.message().await {
                Ok(Some(SubscribeResponse { event: Some(Event::Alert(a)) })) => alerts.push(a.sequence),
                Ok(Some(_)) => {}
                Ok(None) => return tonic::Status::ok("ended without a status"),
                Err(status) => return status,
            }
        }
    })
    .await
    .expect("the stream ends");
    (alerts, end)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_councils_open_stream_ends_unauthenticated_and_gets_no_alert_made_after_while_another_continues() {
    let ts = TestSuite::start().await;
    let (mcr_child, lpl_child) = (nhs(6601), nhs(6602));
    for (code, reference, child) in [(MANCHESTER, "M-1", &mcr_child), (LIVERPOOL, "L-1", &lpl_child)] {
        ts.registry(&council(code))
            .upsert_plan(UpsertPlanRequest { plan: Some(plan(reference, child)), expected_version: 0 })
            .await
            .unwrap();
    }
    let mut mcr_stream = subscribe(&mut ts.notification(&council(MANCHESTER))).await;
    let mut lpl_stream = subscribe(&mut ts.notification(&council(LIVERPOOL))).await;
    let mut alder_hey = ts.attendance(&setting(ALDER_HEY));
    alder_hey.check_in(arrival(&mcr_child)).await.unwrap();
    assert_eq!(next_alert(&mut mcr_stream, 20, "Manchester's alert before the revocation").await.sequence, 1);

    ts.pki.revoke(&council(MANCHESTER)).expect("revoking");
    // Once the Notification service has loaded the list (it looks every 2 s;
    // asked on connections of their own, so the stream's stays open)...
    eventually(10, "the revocation is loaded", || {
        let mut probe = ts.notification(&council(MANCHESTER));
        async move {
            let request = ListAlertsRequest { after_sequence: 0, page_size: 1, replay: true };
            matches!(probe.list_alerts(request).await, Err(s) if s.code() == Code::Unauthenticated)
        }
    })
    .await;
    // ...a new attendance of the Manchester child is not delivered to its open stream.
    ts.attendance(&setting(OTHER_SETTING)).check_in(arrival(&mcr_child)).await.unwrap();
    alder_hey.check_in(arrival(&lpl_child)).await.unwrap();
    let lpl_alert = next_alert(&mut lpl_stream, 20, "Liverpool's stream continues").await;
    assert_eq!(lpl_alert.council_code, LIVERPOOL);
    let (after, end) = read_to_end(&mut mcr_stream, 10).await;
    assert!(after.is_empty(), "alerts delivered after the revocation: {after:?}");
    assert_eq!(end.code(), Code::Unauthenticated, "{end:?}");
    assert!(end.message().contains("revoked"), "{}", end.message());
    // Liverpool's stream is untouched: it still has its heartbeats.
    let next = tokio::time::timeout(Duration::from_secs(5), lpl_stream.message()).await.expect("in time");
    assert!(matches!(next, Ok(Some(_))), "{next:?}");
    ts.suite.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_refused_on_a_streams_connection_ends_that_stream_with_unauthenticated_not_a_cut() {
    // A long heartbeat: the stream learns of the revocation from the refusal.
    let ts = TestSuite::start_with(cpis::suite::ServiceConfigs {
        notification: notification_settings(Duration::from_secs(60)),
        ..Default::default()
    })
    .await;
    let mut manchester = ts.notification(&council(MANCHESTER));
    let mut stream = subscribe(&mut manchester).await;
    ts.pki.revoke(&council(MANCHESTER)).expect("revoking");
    // The council's case system acknowledges on the stream's connection.
    eventually(10, "the revocation is loaded", || {
        let mut manchester = manchester.clone();
        async move {
            let request = ListAlertsRequest { after_sequence: 0, page_size: 1, replay: true };
            matches!(manchester.list_alerts(request).await, Err(s) if s.code() == Code::Unauthenticated)
        }
    })
    .await;
    let (alerts, end) = read_to_end(&mut stream, 10).await;
    assert!(alerts.is_empty());
    assert_eq!(end.code(), Code::Unauthenticated, "{end:?}");
    assert!(end.message().contains("revoked"), "{}", end.message());
    ts.suite.stop().await.unwrap();
}

#[tokio::test]
async fn a_stream_whose_certificate_expires_ends_unauthenticated_within_a_heartbeat() {
    let ts = TestSuite::start().await;
    let mut options = IssueOptions::client(Some(council(KENT).spiffe_id(TRUST_DOMAIN)));
    // Certificate times have one-second resolution: expire in three, on a
    // whole second (the certificate would otherwise say up to a second
    // earlier than `expires`, and the stream rightly end before it).
    let expires =
        (time::OffsetDateTime::now_utc() + time::Duration::seconds(3)).replace_nanosecond(0).expect("a whole second");
    options.not_after = expires;
    let short = ts.custom_identity("council-kent-short-lived", options);
    let mut kent = NotificationServiceClient::new(ts.channel_with(ts.notification_port(), &short));
    let mut stream = subscribe(&mut kent).await;
    let (alerts, end) = read_to_end(&mut stream, 15).await;
    let ended_at = time::OffsetDateTime::now_utc();
    assert!(alerts.is_empty());
    assert_eq!(end.code(), Code::Unauthenticated, "{end:?}");
    assert!(end.message().contains("expired"), "{}", end.message());
    assert!(ended_at >= expires, "ended before the certificate expired");
    // The suite's heartbeat is 0.5 s: the stream ended well within a few of them.
    assert!(ended_at - expires < time::Duration::seconds(3), "ended {} after expiry", ended_at - expires);
    ts.suite.stop().await.unwrap();
}

#[tokio::test]
async fn a_missing_or_empty_revocation_list_makes_the_service_unready_and_refuses_new_connections_until_it_is_back() {
    let ts = TestSuite::start().await;
    let port = ts.registry_port();
    let name = cpis_registry::SERVICE_NAME;
    // A connection made before, and the readiness probe on it.
    let mut health = HealthClient::new(ts.channel(port, &service(ServiceName::Registry)));
    let mut kent = ts.registry(&council(KENT));
    kent.list_plans(ListPlansRequest::default()).await.expect("served");
    let status = |health: &HealthClient<tonic::transport::Channel>| {
        let mut health = health.clone();
        async move {
            let r = health.check(HealthCheckRequest { service: name.into() }).await;
            r.map(|r| r.into_inner().status).unwrap_or(-1)
        }
    };
    assert_eq!(status(&health).await, 1);

    let crl = ts.pki.crl_path();
    for emptied in [false, true] {
        if emptied {
            std::fs::write(&crl, "").unwrap();
        } else {
            std::fs::remove_file(&crl).unwrap();
        }
        eventually(10, "the service is not ready", || {
            let now = status(&health);
            async move { now.await == 2 }
        })
        .await;
        let started = Instant::now();
        let refused = ts.registry(&council(MANCHESTER)).list_plans(ListPlansRequest::default()).await.unwrap_err();
        assert_eq!(refused.code(), Code::Unavailable, "a new connection is refused: {refused:?}");
        assert!(started.elapsed() < Duration::from_secs(5));
        // Open connections keep the list they were checked against.
        kent.list_plans(ListPlansRequest::default()).await.expect("an open connection continues");
        let _ = std::fs::remove_file(&crl);
        ts.pki.init().expect("the list is written again");
        eventually(10, "the service is ready again", || {
            let now = status(&health);
            async move { now.await == 1 }
        })
        .await;
        ts.registry(&council(MANCHESTER)).list_plans(ListPlansRequest::default()).await.expect("new connections");
    }
    health.check(HealthCheckRequest { service: name.into() }).await.unwrap();
    ts.suite.stop().await.unwrap();
}
