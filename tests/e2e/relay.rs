//! The outbox relay's ordering guarantee with two Attendance replicas: after
//! a Notification outage, a backlog of 5,000 alerts for 20 councils drains
//! with every council's sequences in its check-ins' commit order.
//! A backlog of seventy councils, published many councils to a call, keeps
//! each council gapless and in check-in order too.

use cpis::suite::{RunningService, ServiceConfigs};
use cpis_domain::identity::ServiceName;
use cpis_proto::notification::v1::{Alert, ListAlertsRequest};
use cpis_proto::registry::v1::UpsertPlanRequest;
use cpis_testkit::*;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

const COUNCILS: usize = 20;
const PER_COUNCIL: usize = 250;

/// Twenty real GSS codes of English upper-tier councils.
fn councils() -> Vec<String> {
    let mut codes: Vec<String> = (1..=10).map(|i| format!("E0600{i:04}")).collect();
    codes.extend((1..=10).map(|i| format!("E0800{i:04}")));
    codes
}

fn relay_settings() -> cpis_attendance::Settings {
    cpis_attendance::Settings {
        retry_initial: Duration::from_millis(50),
        retry_max: Duration::from_millis(500),
        relay_poll_interval: Duration::from_millis(200),
        // Small reads (two alerts per publish), so each council's backlog
        // takes many round trips and the second replica's probe after the
        // outage comes while the first is still draining: both take part.
        relay_batch_size: 2,
        ..Default::default()
    }
}

async fn stop_in_place(slot: &mut RunningService) {
    slot.shutdown.request();
    let join = std::mem::replace(&mut slot.join, tokio::spawn(async { Ok(()) }));
    join.await.expect("service task").expect("service stopped cleanly");
}

async fn rebind(addr: SocketAddr) -> tokio::net::TcpListener {
    let start = Instant::now();
    loop {
        match tokio::net::TcpListener::bind(addr).await {
            Ok(listener) => return listener,
            Err(e) => {
                assert!(start.elapsed() < Duration::from_secs(10), "cannot bind {addr} again: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Every stored alert of `code`, by sequence (replayed from 1).
async fn alerts_of(ts: &TestSuite, code: &str) -> Vec<Alert> {
    let mut client = ts.notification(&council(code));
    let mut out: Vec<Alert> = Vec::new();
    loop {
        let after = out.last().map_or(0, |a| a.sequence);
        let page = client
            .list_alerts(ListAlertsRequest { after_sequence: after, page_size: 1000, replay: true })
            .await
            .expect("list alerts")
            .into_inner();
        out.extend(page.alerts);
        if !page.has_more {
            return out;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_drain_a_backlog_of_5000_alerts_in_each_councils_check_in_order() {
    tokio::time::timeout(Duration::from_secs(240), async {
        let mut ts = TestSuite::start_with(ServiceConfigs {
            notification: notification_settings(Duration::from_millis(500)),
            attendance: relay_settings(),
            ..Default::default()
        })
        .await;
        // A second Attendance replica on the same database.
        let common =
            cpis::suite::dev_common(&ts.pki, ServiceName::Attendance, TRUST_DOMAIN, &ts.database_url).expect("common");
        let second = cpis::suite::start_attendance(
            tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
            &common,
            cpis_attendance::Settings {
                registry_url: format!("https://localhost:{}", ts.registry_port()),
                notification_url: format!("https://localhost:{}", ts.notification_port()),
                users: ts.suite.users.user_auth_settings(),
                ..relay_settings()
            },
        )
        .await
        .expect("second attendance replica");

        let codes = councils();
        let registered = futures::future::join_all(codes.iter().enumerate().map(|(c, code)| {
            let mut registry = ts.registry(&council(code));
            async move {
                for i in 0..PER_COUNCIL {
                    let serial = (c * PER_COUNCIL + i) as u32;
                    registry
                        .upsert_plan(UpsertPlanRequest {
                            plan: Some(plan(&format!("REF-{i}"), &nhs(20_000 + serial))),
                            expected_version: 0,
                        })
                        .await
                        .expect("plan registered");
                }
            }
        }));
        registered.await;

        let addr = ts.suite.notification.addr;
        stop_in_place(&mut ts.suite.notification).await;

        // Each council's check-ins one after another (so their commit order
        // is known), spread over both replicas; councils in parallel.
        let ports = [ts.attendance_port(), second.addr.port()];
        let started = Instant::now();
        let checked_in = futures::future::join_all(codes.iter().enumerate().map(|(c, _)| {
            let clients = ports.map(|port| ts.attendance_on(port, &setting(ALDER_HEY)));
            async move {
                let mut episodes = Vec::with_capacity(PER_COUNCIL);
                for i in 0..PER_COUNCIL {
                    let serial = (c * PER_COUNCIL + i) as u32;
                    let mut client = clients[i % 2].clone();
                    let answer = client.check_in(arrival(&nhs(20_000 + serial))).await.expect("check-in").into_inner();
                    assert!(answer.flagged);
                    episodes.push(answer.episode_id);
                }
                episodes
            }
        }))
        .await;
        println!("{} check-ins in {:?} with Notification down", COUNCILS * PER_COUNCIL, started.elapsed());
        let db = ts.db().await;
        let queued: i64 = db
            .query_one("SELECT count(*) FROM attendance.outbox WHERE delivered_at IS NULL", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(queued, (COUNCILS * PER_COUNCIL) as i64, "the whole backlog waits in the outbox");

        let notification_common =
            cpis::suite::dev_common(&ts.pki, ServiceName::Notification, TRUST_DOMAIN, &ts.database_url).unwrap();
        ts.suite.notification = cpis::suite::start_notification(
            rebind(addr).await,
            &notification_common,
            notification_settings(Duration::from_millis(500)),
        )
        .await
        .expect("restarting Notification");
        let drain = Instant::now();
        let deadline = drain + Duration::from_secs(120);
        loop {
            let left: i64 = db
                .query_one("SELECT count(*) FROM attendance.outbox WHERE delivered_at IS NULL", &[])
                .await
                .unwrap()
                .get(0);
            if left == 0 {
                break;
            }
            assert!(Instant::now() < deadline, "{left} alerts still queued after two minutes");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        println!("backlog of {} drained in {:?}", COUNCILS * PER_COUNCIL, drain.elapsed());

        for (code, episodes) in codes.iter().zip(&checked_in) {
            let alerts = alerts_of(&ts, code).await;
            let sequences: Vec<i64> = alerts.iter().map(|a| a.sequence).collect();
            assert_eq!(sequences, (1..=PER_COUNCIL as i64).collect::<Vec<_>>(), "{code}: gapless, none twice");
            let order: Vec<String> = alerts.iter().map(|a| a.episode.clone().unwrap().episode_id).collect();
            assert_eq!(&order, episodes, "{code}: sequences follow the check-ins' order");
        }
        // Both replicas took part in the drain.
        for (name, service) in [("first", &ts.suite.attendance), ("second", &second)] {
            let relayed =
                sample(&scrape(service.metrics_addr.unwrap()).await, &["cpis_attendance_alerts_relayed_total"]);
            println!("{name} replica relayed {relayed}");
            assert!(relayed > 0.0, "the {name} replica relayed nothing: the test did not exercise two replicas");
        }
        second.shutdown.request();
        let _ = second.join.await;
        ts.suite.stop().await.unwrap();
    })
    .await
    .expect("test did not finish in time");
}

/// Seventy GSS codes (more councils than one relay pass takes).
fn many_councils() -> Vec<String> {
    (1..=70).map(|i| format!("E1000{i:04}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_of_seventy_councils_goes_out_in_shared_calls_each_council_gapless_in_check_in_order() {
    const PER: usize = 10;
    tokio::time::timeout(Duration::from_secs(240), async {
        let mut ts = TestSuite::start_with(ServiceConfigs {
            notification: notification_settings(Duration::from_millis(500)),
            attendance: cpis_attendance::Settings {
                retry_initial: Duration::from_millis(50),
                retry_max: Duration::from_millis(500),
                relay_poll_interval: Duration::from_millis(200),
                ..Default::default()
            },
            ..Default::default()
        })
        .await;
        let codes = many_councils();
        let serial = |c: usize, i: usize| (40_000 + c * 2 * PER + i) as u32;
        futures::future::join_all(codes.iter().enumerate().map(|(c, code)| {
            let mut registry = ts.registry(&council(code));
            async move {
                for i in 0..2 * PER {
                    registry
                        .upsert_plan(UpsertPlanRequest {
                            plan: Some(plan(&format!("REF-{i}"), &nhs(serial(c, i)))),
                            expected_version: 0,
                        })
                        .await
                        .expect("plan registered");
                }
            }
        }))
        .await;

        let port = ts.attendance_port();
        let clients: Vec<_> = (0..codes.len()).map(|_| ts.attendance_on(port, &setting(ALDER_HEY))).collect();
        // Each council's check-ins one after another, councils in parallel:
        // `from..to` of each council's people; their episodes in order.
        let check_in_all = |from: usize, to: usize| {
            // At most 32 councils at once: one setting's requests in flight are capped.
            futures::StreamExt::collect::<Vec<Vec<String>>>(futures::StreamExt::buffered(
                futures::stream::iter(clients.iter().enumerate().map(move |(c, client)| {
                    let mut client = client.clone();
                    async move {
                        let mut episodes = Vec::new();
                        for i in from..to {
                            let answer =
                                client.check_in(arrival(&nhs(serial(c, i)))).await.expect("check-in").into_inner();
                            assert!(answer.flagged);
                            episodes.push(answer.episode_id);
                        }
                        episodes
                    }
                })),
                32,
            ))
        };

        // A backlog of 700 alerts (more than one call carries) while the
        // Notification service is down...
        let addr = ts.suite.notification.addr;
        stop_in_place(&mut ts.suite.notification).await;
        let mut checked_in = check_in_all(0, PER).await;
        let common =
            cpis::suite::dev_common(&ts.pki, ServiceName::Notification, TRUST_DOMAIN, &ts.database_url).unwrap();
        ts.suite.notification = cpis::suite::start_notification(
            rebind(addr).await,
            &common,
            notification_settings(Duration::from_millis(500)),
        )
        .await
        .expect("restarting Notification");
        // ...and more check-ins while it drains.
        for (all, more) in checked_in.iter_mut().zip(check_in_all(PER, 2 * PER).await) {
            all.extend(more);
        }

        let db = ts.db().await;
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let left: i64 = db
                .query_one("SELECT count(*) FROM attendance.outbox WHERE delivered_at IS NULL", &[])
                .await
                .unwrap()
                .get(0);
            if left == 0 {
                break;
            }
            assert!(Instant::now() < deadline, "{left} alerts still queued after two minutes");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        for (code, episodes) in codes.iter().zip(&checked_in) {
            let alerts = alerts_of(&ts, code).await;
            let sequences: Vec<i64> = alerts.iter().map(|a| a.sequence).collect();
            assert_eq!(sequences, (1..=2 * PER as i64).collect::<Vec<_>>(), "{code}: gapless, none twice");
            assert!(alerts.iter().all(|a| &a.council_code == code), "{code}: only its own alerts");
            let order: Vec<String> = alerts.iter().map(|a| a.episode.clone().unwrap().episode_id).collect();
            assert_eq!(&order, episodes, "{code}: sequences follow the check-ins' order");
        }
        ts.suite.stop().await.unwrap();
    })
    .await
    .expect("test did not finish in time");
}
