//! End-to-end tests of the Notification service as several instances
//! meeting in PostgreSQL: an alert published on one reaches a stream on
//! another, streams end when an instance stops, and a lost LISTEN
//! connection is re-established without missing an alert.

use crate::notification::{next_alert, next_heartbeat, publish, publisher, subscribe, subscribe_on, PATIENCE};
use cpis_domain::identity::ServiceName;
use cpis_proto::notification::v1::notification_service_client::NotificationServiceClient;
use cpis_testkit::*;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::time::{timeout, Instant};
use tonic::Code;

#[tokio::test]
async fn an_alert_published_on_one_instance_reaches_a_subscriber_on_another() {
    let ts = TestSuite::start().await;
    // A long heartbeat on the second instance, so only a wake-up through
    // PostgreSQL (not the heartbeat's or the timer's re-read, 5 s) can bring
    // the alert within the time allowed below.
    let common = cpis::suite::dev_common(&ts.pki, ServiceName::Notification, TRUST_DOMAIN, &ts.database_url).unwrap();
    let second = cpis::suite::start_notification(
        TcpListener::bind("127.0.0.1:0").await.unwrap(),
        &common,
        notification_settings(Duration::from_secs(60)),
    )
    .await
    .unwrap();
    let mut on_second = NotificationServiceClient::new(ts.channel(second.addr.port(), &council(MANCHESTER)));
    let mut on_first = ts.notification(&council(MANCHESTER));

    let mut second_stream = subscribe_on(&mut on_second, 0).await;
    let mut first_stream = subscribe_on(&mut on_first, 0).await;
    // Give the second instance's LISTEN connection time to be established.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let quick = Duration::from_millis(2500);
    for serial in 0..3 {
        let published = Instant::now();
        let answer = publish(&mut publisher(&ts), alert_for(MANCHESTER, serial)).await;
        let alert = timeout(quick, next_alert(&mut second_stream))
            .await
            .expect("alert from the first instance reaches the second promptly");
        assert_eq!(alert.alert_id, answer.alert_id);
        assert_eq!(alert.sequence, i64::from(serial) + 1);
        assert!(published.elapsed() < quick);
        assert_eq!(next_alert(&mut first_stream).await.alert_id, answer.alert_id);
    }

    // And the other way round: published on the second, read on the first.
    let mut publisher_second =
        NotificationServiceClient::new(ts.channel(second.addr.port(), &service(ServiceName::Attendance)));
    let answer = publish(&mut publisher_second, alert_for(MANCHESTER, 3)).await;
    assert_eq!(answer.sequence, 4);
    assert_eq!(next_alert(&mut first_stream).await.alert_id, answer.alert_id);
    assert_eq!(next_alert(&mut second_stream).await.alert_id, answer.alert_id);

    // The second instance ends its streams when it stops.
    second.stop().await.unwrap();
    let end = timeout(PATIENCE, async {
        loop {
            match second_stream.message().await {
                Ok(Some(_)) => continue,
                Ok(None) => return None,
                Err(status) => return Some(status.code()),
            }
        }
    })
    .await
    .expect("the stream ends when its instance stops");
    assert!(matches!(end, None | Some(Code::Unavailable)), "{end:?}");
    ts.suite.stop().await.unwrap();
}

#[tokio::test]
async fn open_streams_end_when_the_service_stops() {
    let ts = TestSuite::start().await;
    let mut stream = subscribe(&ts, MANCHESTER, 0).await;
    next_heartbeat(&mut stream).await;
    let stopping = tokio::spawn(ts.suite.stop());
    let end = timeout(PATIENCE, async {
        loop {
            match stream.message().await {
                Ok(Some(_)) => continue,
                Ok(None) => return None,
                Err(status) => return Some(status.code()),
            }
        }
    })
    .await
    .expect("the stream ends on shutdown");
    // UNAVAILABLE tells the client to reconnect and resume.
    assert_eq!(end, Some(Code::Unavailable));
    timeout(PATIENCE, stopping).await.expect("shutdown completes").unwrap().unwrap();
}

/// How many LISTEN connections of Notification instances this test's database has.
async fn listeners(db: &tokio_postgres::Client) -> i64 {
    db.query_one(
        "SELECT count(*) FROM pg_stat_activity
         WHERE application_name = 'cpis-notification-listen' AND datname = current_database()",
        &[],
    )
    .await
    .expect("pg_stat_activity")
    .get(0)
}

async fn wait_for_listeners(db: &tokio_postgres::Client, n: i64) {
    timeout(PATIENCE, async {
        while listeners(db).await != n {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("LISTEN connections established");
}

#[tokio::test]
async fn a_lost_listen_connection_is_re_established_and_no_alert_is_missed() {
    let ts = TestSuite::start().await;
    // Subscribe on an instance with a long heartbeat, so only the LISTEN
    // path (not the heartbeat's or the 5 s timer's re-read) can be quick.
    let common = cpis::suite::dev_common(&ts.pki, ServiceName::Notification, TRUST_DOMAIN, &ts.database_url).unwrap();
    let second = cpis::suite::start_notification(
        TcpListener::bind("127.0.0.1:0").await.unwrap(),
        &common,
        notification_settings(Duration::from_secs(60)),
    )
    .await
    .unwrap();
    let mut stream =
        subscribe_on(&mut NotificationServiceClient::new(ts.channel(second.addr.port(), &council(MANCHESTER))), 0)
            .await;
    let db = ts.db().await;
    wait_for_listeners(&db, 2).await;

    // Cut both instances' LISTEN connections and publish at once: the alert
    // may be stored while nobody listens, and must still arrive promptly
    // (every stream re-reads after the reconnection).
    let cut: i64 = db
        .query_one(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
             WHERE application_name = 'cpis-notification-listen'
               AND datname = current_database()",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(cut, 2);
    let quick = Duration::from_millis(2500);
    let mut client = publisher(&ts);
    publish(&mut client, alert_for(MANCHESTER, 0)).await;
    let alert = timeout(quick, next_alert(&mut stream)).await.expect("the alert arrives after the reconnection");
    assert_eq!(alert.sequence, 1);

    // Listening again: the next alert comes through NOTIFY.
    wait_for_listeners(&db, 2).await;
    publish(&mut client, alert_for(MANCHESTER, 1)).await;
    let alert = timeout(quick, next_alert(&mut stream)).await.expect("NOTIFY works on the new connection");
    assert_eq!(alert.sequence, 2);

    second.stop().await.unwrap();
    ts.suite.stop().await.unwrap();
}
