//! Council uploads never at the expense of a check-in: check-ins get their
//! look-up while councils load the Registry.

use crate::uploads::{completion, row};
use cpis::suite::ServiceConfigs;
use cpis_proto::registry::v1::registry_service_client::RegistryServiceClient;
use cpis_proto::registry::v1::*;
use cpis_testkit::*;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tonic::Code;

/// One council holds 10 idle uploads and 64 concurrent upserts while another
/// council's 200,000-row upload streams and applies; check-ins arrive at a
/// steady rate throughout. Every check-in must succeed (the Attendance
/// service gives the look-up 2 s) and the Registry must stay ready.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_ins_get_their_lookup_while_councils_load_the_registry() {
    const BULK: u32 = 200_000;
    let ts = TestSuite::start_with(ServiceConfigs {
        notification: notification_settings(Duration::from_millis(500)),
        // The manifests' pool size.
        pool_size: Some(10),
        ..Default::default()
    })
    .await;
    // Five flagged people (Kent); unflagged people are in the 99,xxx serials.
    let mut kent = ts.registry(&council(KENT));
    for i in 0..5 {
        let p = plan(&format!("K-{i}"), &nhs(98_000 + i));
        kent.upsert_plan(UpsertPlanRequest { plan: Some(p), expected_version: 0 }).await.unwrap();
    }
    let stop = Arc::new(AtomicBool::new(false));

    // Manchester: 10 uploads opened and left idle (one holds the council's
    // slot, the others are refused at once) ...
    let mut idle = Vec::new();
    let mut idle_senders = Vec::new();
    for _ in 0..10 {
        let (tx, rx) = mpsc::channel::<SyncPlansRequest>(1);
        let mut client = ts.registry(&council(MANCHESTER));
        idle.push(tokio::spawn(
            async move { client.sync_plans(tokio_stream::wrappers::ReceiverStream::new(rx)).await },
        ));
        idle_senders.push(tx);
    }
    // (Nine are refused before the upserts start, so that the council's cap
    // on calls in flight does not refuse them instead.)
    eventually(20, "nine of ten concurrent uploads of one council are refused", || {
        let finished = idle.iter().filter(|h| h.is_finished()).count();
        async move { finished >= 9 }
    })
    .await;
    // ... and 64 concurrent upserts, over and over.
    let mut upserters = Vec::new();
    for w in 0..64u32 {
        let mut client = ts.registry(&council(MANCHESTER));
        let stop = stop.clone();
        upserters.push(tokio::spawn(async move {
            let (mut ok, mut refused) = (0u32, 0u32);
            let mut n = 0u32;
            while !stop.load(Ordering::Relaxed) {
                let p = plan(&format!("U-{w}-{n}"), &nhs(90_000 + (w * 100 + n % 100)));
                n += 1;
                match client.upsert_plan(UpsertPlanRequest { plan: Some(p), expected_version: 0 }).await {
                    Ok(_) => ok += 1,
                    Err(_) => refused += 1,
                }
            }
            (ok, refused)
        }));
    }

    // Liverpool: the 200,000-row upload.
    let bulk = {
        let channel = ts.channel(ts.registry_port(), &council(LIVERPOOL));
        tokio::spawn(async move {
            let (tx, rx) = mpsc::channel::<SyncPlansRequest>(1024);
            let producer = tokio::spawn(async move {
                for i in 0..BULK {
                    let p = plan(&format!("L-{i:06}"), &nhs(i % 90_000));
                    if tx.send(row(p)).await.is_err() {
                        return;
                    }
                }
                let _ = tx.send(completion(i64::from(BULK))).await;
            });
            let mut client = RegistryServiceClient::new(channel).max_decoding_message_size(64 << 20);
            let r = client.sync_plans(tokio_stream::wrappers::ReceiverStream::new(rx)).await;
            producer.await.unwrap();
            r
        })
    };

    // Readiness, polled throughout.
    let readiness_watch = {
        let stop = stop.clone();
        let channel = ts.channel(ts.registry_port(), &service(cpis_domain::identity::ServiceName::Attendance));
        tokio::spawn(async move {
            use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest};
            let mut health = HealthClient::new(channel);
            let mut seen = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let mut request =
                    tonic::Request::new(HealthCheckRequest { service: cpis_registry::SERVICE_NAME.into() });
                request.set_timeout(Duration::from_secs(2));
                seen.push(health.check(request).await.map(|r| r.into_inner().status).unwrap_or(-1));
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            seen
        })
    };

    // Check-ins at a steady rate (10 a second), flagged and not, until the upload is done.
    let mut checkins = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let started = Instant::now();
    let mut k = 0u32;
    while !bulk.is_finished() {
        tick.tick().await;
        assert!(started.elapsed() < Duration::from_secs(600), "the 200,000-row upload took over 10 minutes");
        let flagged = k.is_multiple_of(2);
        let person = if flagged { nhs(98_000 + k % 5) } else { nhs(99_000 + k % 1000) };
        k += 1;
        let mut attendance = ts.attendance(&setting(ALDER_HEY));
        checkins.push(tokio::spawn(async move {
            let mut request = tonic::Request::new(arrival(&person));
            request.set_timeout(Duration::from_secs(3));
            let t = Instant::now();
            let result = attendance.check_in(request).await;
            (
                flagged,
                t.elapsed(),
                result.map(|r| r.into_inner().flagged).map_err(|s| format!("{:?}: {}", s.code(), s.message())),
            )
        }));
    }
    let r = bulk.await.unwrap().expect("the 200,000-row upload").into_inner();
    assert_eq!((r.received, r.created, r.rejected), (i64::from(BULK), i64::from(BULK), 0));
    stop.store(true, Ordering::Relaxed);

    let mut slowest = Duration::ZERO;
    let mut failures = Vec::new();
    let total = checkins.len();
    for c in checkins {
        let (flagged, took, result) = c.await.unwrap();
        slowest = slowest.max(took);
        match result {
            Ok(answer) if answer == flagged => {}
            other => failures.push(format!("flagged={flagged} took {took:?}: {other:?}")),
        }
    }
    assert!(total >= 50, "only {total} check-ins ran");
    assert!(
        failures.is_empty(),
        "{} of {total} check-ins failed under council load: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    eprintln!("{total} check-ins under council load, slowest {slowest:?}");

    let seen = readiness_watch.await.unwrap();
    assert!(seen.iter().all(|s| *s == 1), "the Registry left readiness under council load: {seen:?}");

    let (mut ok, mut refused) = (0, 0);
    for u in upserters {
        let (o, r) = u.await.unwrap();
        ok += o;
        refused += r;
    }
    assert!(ok > 0, "no upsert got through ({refused} refused)");
    drop(idle_senders);
    let mut refused_idle = 0;
    for s in idle {
        if let Err(status) = s.await.unwrap() {
            if status.code() == Code::Aborted {
                refused_idle += 1;
            }
        }
    }
    assert_eq!(refused_idle, 9, "nine of ten concurrent uploads of one council are refused");
    ts.suite.stop().await.unwrap();
}
