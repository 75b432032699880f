//! Faults: a service killed in the middle of a burst, a client hoarding
//! streams, and certificates rotated under open streams. Nothing is lost.

use cpis_domain::identity::ServiceName;
use cpis_proto::notification::v1::{subscribe_response::Event, Alert, ListAlertsRequest, SubscribeRequest};
use cpis_proto::registry::v1::UpsertPlanRequest;
use cpis_testkit::*;
use std::collections::{BTreeMap, HashSet};
use std::time::Duration;
use tonic::Code;

async fn all_alerts(ts: &TestSuite, council_code: &str) -> Vec<Alert> {
    let mut client = ts.notification(&council(council_code));
    let mut out = Vec::new();
    let mut after = 0;
    loop {
        // after_sequence 0 means "after the ack"; nothing is acked here.
        let page = client
            .list_alerts(ListAlertsRequest { after_sequence: after, page_size: 1000, replay: false })
            .await
            .unwrap()
            .into_inner();
        out.extend(page.alerts);
        after = out.last().map_or(0, |a| a.sequence);
        if !page.has_more {
            return out;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_notification_mid_burst_loses_and_duplicates_nothing() {
    let mut ts = TestSuite::start_with(cpis::suite::ServiceConfigs {
        notification: notification_settings(Duration::from_millis(500)),
        attendance: cpis_attendance::Settings {
            retry_initial: Duration::from_millis(50),
            retry_max: Duration::from_millis(400),
            ..Default::default()
        },
        ..Default::default()
    })
    .await;
    const PEOPLE: u32 = 40;
    let mut registry = ts.registry(&council(LIVERPOOL));
    for i in 0..PEOPLE {
        registry
            .upsert_plan(UpsertPlanRequest {
                plan: Some(plan(&format!("LPL-{i}"), &nhs(1200 + i))),
                expected_version: 0,
            })
            .await
            .unwrap();
    }
    // The burst runs in the background while the Notification service dies and comes back.
    let attendance = ts.attendance(&setting(ALDER_HEY));
    let burst = tokio::spawn(async move {
        let mut episodes = Vec::new();
        for i in 0..PEOPLE {
            let mut client = attendance.clone();
            let r =
                client.check_in(arrival(&nhs(1200 + i))).await.expect("check-in never fails for a Notification outage");
            episodes.push(r.into_inner().episode_id);
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        episodes
    });
    tokio::time::sleep(Duration::from_millis(250)).await;
    let addr = ts.suite.notification.addr;
    let dead = std::mem::replace(
        &mut ts.suite.notification,
        cpis::suite::RunningService {
            addr,
            shutdown: Default::default(),
            join: tokio::spawn(async { Ok(()) }),
            metrics: cpis_runtime::metrics::Metrics::new("placeholder"),
            metrics_addr: None,
            fhir_addr: None,
        },
    );
    // Abrupt: abort the server task (connections drop mid-call), no drain.
    dead.join.abort();
    dead.shutdown.request();
    tokio::time::sleep(Duration::from_millis(400)).await;
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
    let episodes = burst.await.unwrap();

    eventually(30, "every alert is stored", || async { all_alerts(&ts, LIVERPOOL).await.len() >= PEOPLE as usize })
        .await;
    let alerts = all_alerts(&ts, LIVERPOOL).await;
    let relay = scrape(ts.suite.attendance.metrics_addr.unwrap()).await;
    let failures = sample(&relay, &["cpis_attendance_alert_relay_failures_total"]);
    println!("relay failures during the outage: {failures}");
    assert!(failures > 0.0, "the outage really interrupted publishing");
    let sequences: Vec<i64> = alerts.iter().map(|a| a.sequence).collect();
    assert_eq!(sequences, (1..=i64::from(PEOPLE)).collect::<Vec<_>>(), "gapless, no repeats");
    let by_episode: BTreeMap<String, String> =
        alerts.iter().map(|a| (a.episode.clone().unwrap().episode_id, a.alert_id.clone())).collect();
    assert_eq!(by_episode.len(), PEOPLE as usize, "one alert per episode, never two ids for one");
    assert_eq!(by_episode.keys().cloned().collect::<HashSet<_>>(), episodes.into_iter().collect::<HashSet<_>>());
    // And a subscriber from zero receives exactly the same.
    let mut stream = ts
        .notification(&council(LIVERPOOL))
        .subscribe(SubscribeRequest { after_sequence: 0, replay: false })
        .await
        .unwrap()
        .into_inner();
    let mut seen = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), async {
        while seen.len() < PEOPLE as usize {
            if let Some(Event::Alert(a)) = stream.message().await.unwrap().unwrap().event {
                seen.push(a.sequence);
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(seen, sequences);
    drop(stream);
    ts.suite.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_hoarding_a_thousand_unread_streams_is_capped_and_delays_no_one() {
    let ts = TestSuite::start().await;
    let before = rss_kib();
    let channel = ts.channel(ts.notification_port(), &council(MANCHESTER));
    let mut open = Vec::new();
    let mut refused = 0;
    for _ in 0..1000 {
        let mut client =
            cpis_proto::notification::v1::notification_service_client::NotificationServiceClient::new(channel.clone());
        match client.subscribe(SubscribeRequest { after_sequence: 0, replay: false }).await {
            Ok(s) => open.push(s.into_inner()),
            Err(s) if s.code() == Code::ResourceExhausted => refused += 1,
            Err(s) => panic!("unexpected {s:?}"),
        }
    }
    assert_eq!(open.len(), cpis_runtime::limits::Limits::default().per_caller, "capped per caller");
    assert_eq!(refused, 1000 - open.len());
    // Flood Manchester's hoarded streams, then time Liverpool's alert.
    let mut registry = ts.registry(&council(MANCHESTER));
    for i in 0..20 {
        registry
            .upsert_plan(UpsertPlanRequest { plan: Some(plan(&format!("M-{i}"), &nhs(1300 + i))), expected_version: 0 })
            .await
            .unwrap();
        ts.attendance(&setting(ALDER_HEY)).check_in(arrival(&nhs(1300 + i))).await.unwrap();
    }
    ts.registry(&council(LIVERPOOL))
        .upsert_plan(UpsertPlanRequest { plan: Some(plan("L-1", &nhs(1400))), expected_version: 0 })
        .await
        .unwrap();
    let mut liverpool = ts
        .notification(&council(LIVERPOOL))
        .subscribe(SubscribeRequest { after_sequence: 0, replay: false })
        .await
        .unwrap()
        .into_inner();
    let started = std::time::Instant::now();
    ts.attendance(&setting(ALDER_HEY)).check_in(arrival(&nhs(1400))).await.unwrap();
    tokio::time::timeout(Duration::from_secs(3), async {
        while !matches!(liverpool.message().await.unwrap().unwrap().event, Some(Event::Alert(_))) {}
    })
    .await
    .expect("Liverpool's alert is not held up by Manchester's hoard");
    println!("other council's alert after {:?}", started.elapsed());
    let grown_mib = rss_kib().saturating_sub(before) / 1024;
    assert!(grown_mib < 256, "memory grew by {grown_mib} MiB");
    drop(open);
    ts.suite.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotated_certificates_are_served_without_dropping_open_streams() {
    let ts = TestSuite::start().await;
    let port = ts.notification_port();
    let mut stream = ts
        .notification(&council(KENT))
        .subscribe(SubscribeRequest { after_sequence: 0, replay: false })
        .await
        .unwrap()
        .into_inner();
    let served = || async {
        // What a brand-new TLS connection is shown.
        let mut roots = rustls::RootCertStore::empty();
        for c in cpis_runtime::tls::read_certs(&ts.pki.ca_path()).unwrap() {
            roots.add(c).unwrap();
        }
        let me = ts.identity(&council(KENT));
        let config = rustls::ClientConfig::builder_with_provider(cpis_runtime::tls::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_client_auth_cert(
                cpis_runtime::tls::read_certs(&me.cert).unwrap(),
                cpis_runtime::tls::read_key(&me.key).unwrap(),
            )
            .unwrap();
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config)).connect(name, tcp).await.unwrap();
        tls.get_ref().1.peer_certificates().unwrap()[0].as_ref().to_vec()
    };
    let old = served().await;
    // cert-manager writes new files in place.
    let paths = ts.pki.issue(&service(ServiceName::Notification), TRUST_DOMAIN).unwrap();
    let new = cpis_runtime::tls::read_certs(&paths.cert).unwrap()[0].as_ref().to_vec();
    assert_ne!(old, new);
    eventually(10, "new connections get the new certificate", || async { served().await == new }).await;

    // The stream opened before the rotation still delivers.
    ts.registry(&council(KENT))
        .upsert_plan(UpsertPlanRequest { plan: Some(plan("K-1", &nhs(1500))), expected_version: 0 })
        .await
        .unwrap();
    ts.attendance(&setting(ALDER_HEY)).check_in(arrival(&nhs(1500))).await.unwrap();
    let alert = next_alert(&mut stream, 10, "the open stream survives the rotation").await;
    assert_eq!(alert.council_code, KENT);
    drop(stream);
    ts.suite.stop().await.unwrap();
}
