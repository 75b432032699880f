//! End-to-end tests of the Attendance service when the Registry or the
//! Notification service is down: check-ins are refused in time or their
//! alerts wait in the outbox, and every alert reaches its council once.

use crate::attendance::{
    alerts_of, arrival, bounded, check_in, count, outbox_drained, quick_retries, rebind, register, rows_mentioning,
    stop_in_place, try_check_in,
};
use chrono::Utc;
use cpis::suite::ServiceConfigs;
use cpis_domain::identity::ServiceName;
use cpis_proto::common::v1::PlanType;
use cpis_testkit::*;
use std::time::{Duration, Instant};
use tonic::Code;

#[tokio::test]
async fn check_ins_during_a_notification_outage_all_reach_the_council_once() {
    bounded(async {
        let mut ts = TestSuite::start_with(quick_retries()).await;
        let children: Vec<String> = (0..6).map(|i| nhs(800 + i)).collect();
        for (i, child) in children.iter().enumerate() {
            register(&ts, MANCHESTER, &format!("MAN-80{i}"), child, PlanType::ChildProtection).await;
        }
        // One before the outage.
        let before = check_in(&ts, ALDER_HEY, arrival("out-0", &children[0], Utc::now())).await;
        outbox_drained(&ts).await;

        let addr = ts.suite.notification.addr;
        stop_in_place(&mut ts.suite.notification).await;

        // Check-ins go on, fast, while alerts cannot be published.
        let mut episode_ids = vec![before.episode_id];
        for (i, child) in children.iter().enumerate().skip(1) {
            let started = Instant::now();
            let answer = check_in(&ts, OTHER_SETTING, arrival(&format!("out-{i}"), child, Utc::now())).await;
            assert!(answer.flagged);
            assert!(started.elapsed() < Duration::from_secs(2), "a check-in waited for the Notification service");
            episode_ids.push(answer.episode_id);
        }
        // Let the relay fail a few times.
        tokio::time::sleep(Duration::from_millis(800)).await;
        // Head of line: the council's first queued alert is retried, the
        // others wait behind it (so none can overtake it).
        let queued = count(&ts, "SELECT count(*) FROM attendance.outbox WHERE delivered_at IS NULL").await;
        assert_eq!(queued, 5, "every alert is still queued");
        let tried =
            count(&ts, "SELECT count(*) FROM attendance.outbox WHERE delivered_at IS NULL AND attempts > 0").await;
        assert_eq!(tried, 1, "only the head of the council's line was tried");
        let errors: Vec<String> = ts
            .db()
            .await
            .query(
                "SELECT last_error FROM attendance.outbox WHERE delivered_at IS NULL AND last_error IS NOT NULL
                 UNION ALL SELECT last_error FROM attendance.relay_councils WHERE last_error IS NOT NULL",
                &[],
            )
            .await
            .expect("errors")
            .iter()
            .map(|r| r.get(0))
            .collect();
        for error in &errors {
            assert!(!error.is_empty());
            assert!(children.iter().all(|c| !error.contains(c.as_str())), "last_error holds no NHS number: {error}");
        }

        let common = cpis::suite::dev_common(&ts.pki, ServiceName::Notification, TRUST_DOMAIN, &ts.database_url)
            .expect("common settings");
        ts.suite.notification = cpis::suite::start_notification(
            rebind(addr).await,
            &common,
            notification_settings(Duration::from_millis(500)),
        )
        .await
        .expect("restarting Notification");
        ts.wait_ready().await;

        outbox_drained(&ts).await;
        let alerts = alerts_of(&ts, MANCHESTER).await;
        let sequences: Vec<i64> = alerts.iter().map(|a| a.sequence).collect();
        assert_eq!(sequences, (1..=6).collect::<Vec<i64>>(), "no gaps, none twice");
        let delivered: Vec<String> = alerts.iter().map(|a| a.episode.clone().expect("episode").episode_id).collect();
        assert_eq!(delivered, episode_ids, "sequences follow the check-ins' order after the outage");
        // Nothing more trickles in later.
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert_eq!(alerts_of(&ts, MANCHESTER).await.len(), 6);
        ts.suite.stop().await.unwrap();
    })
    .await
}

#[tokio::test]
async fn with_the_registry_down_check_in_is_unavailable_within_its_deadline_and_stores_nothing() {
    bounded(async {
        let registry_timeout = Duration::from_millis(1500);
        let mut ts = TestSuite::start_with(ServiceConfigs {
            notification: notification_settings(Duration::from_millis(500)),
            attendance: cpis_attendance::Settings { registry_timeout, ..Default::default() },
            ..Default::default()
        })
        .await;
        let child = nhs(901);
        register(&ts, MANCHESTER, "MAN-901", &child, PlanType::ChildProtection).await;

        let addr = ts.suite.registry.addr;
        stop_in_place(&mut ts.suite.registry).await;

        // Refused connections: UNAVAILABLE at once.
        let started = Instant::now();
        let err = try_check_in(&ts, ALDER_HEY, arrival("down-1", &child, Utc::now())).await.expect_err("registry down");
        assert_eq!(err.code(), Code::Unavailable, "{err:?}");
        assert!(started.elapsed() < Duration::from_secs(1), "{:?}", started.elapsed());
        assert!(!err.message().contains(&child));

        // A Registry that accepts connections and never answers: the caller's
        // deadline bounds the wait, and the caller still learns UNAVAILABLE.
        let blackhole = rebind(addr).await;
        let hold = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((socket, _)) = blackhole.accept().await {
                held.push(socket);
            }
        });
        let mut request = tonic::Request::new(arrival("down-2", &child, Utc::now()));
        request.set_timeout(Duration::from_millis(800));
        let started = Instant::now();
        let err = ts.attendance(&setting(ALDER_HEY)).check_in(request).await.expect_err("registry hangs");
        let waited = started.elapsed();
        assert_eq!(err.code(), Code::Unavailable, "{err:?}");
        assert!(waited < Duration::from_millis(800), "{waited:?}");

        // Without a caller deadline, the configured one applies.
        let started = Instant::now();
        let err =
            try_check_in(&ts, ALDER_HEY, arrival("down-3", &child, Utc::now())).await.expect_err("registry hangs");
        let waited = started.elapsed();
        assert_eq!(err.code(), Code::Unavailable, "{err:?}");
        assert!(
            waited >= registry_timeout - Duration::from_millis(100)
                && waited < registry_timeout + Duration::from_secs(1),
            "{waited:?}"
        );
        hold.abort();

        assert_eq!(rows_mentioning(&ts, &child).await, 0, "nothing stored");
        assert_eq!(count(&ts, "SELECT count(*) FROM attendance.check_in_requests").await, 0);
        ts.suite.stop().await.unwrap();
    })
    .await
}
