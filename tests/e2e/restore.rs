//! After the database is restored to an earlier point while the
//! Notification service stays up, a council's open stream wakes and
//! delivers the alerts stored since the restore, each once, although they
//! reuse sequences the stream had already passed.

use cpis_domain::identity::ServiceName;
use cpis_proto::notification::v1::SubscribeRequest;
use cpis_testkit::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_delivers_what_is_stored_after_a_restore_that_took_its_council_back() {
    let ts = TestSuite::start().await;
    let mut publisher = ts.notification(&service(ServiceName::Attendance));
    let mut stream = ts
        .notification(&council(MANCHESTER))
        .subscribe(SubscribeRequest { after_sequence: 0, replay: false })
        .await
        .unwrap()
        .into_inner();
    for serial in 1..=5 {
        publisher.publish_alert(alert_for(MANCHESTER, serial)).await.unwrap();
    }
    for sequence in 1..=5 {
        assert_eq!(next_alert(&mut stream, 20, "before the restore").await.sequence, sequence);
    }
    // A point-in-time restore takes Manchester's log back to sequence 3.
    let db = ts.db().await;
    db.batch_execute(&format!(
        "DELETE FROM notification.alerts WHERE council_code = '{MANCHESTER}' AND sequence > 3;
         UPDATE notification.council_sequences SET last_sequence = 3 WHERE council_code = '{MANCHESTER}';"
    ))
    .await
    .unwrap();
    // New alerts are stored as 4 and 5 again: the open stream delivers them.
    let fourth = publisher.publish_alert(alert_for(MANCHESTER, 6)).await.unwrap().into_inner();
    assert_eq!(fourth.sequence, 4);
    let alert = next_alert(&mut stream, 20, "the first alert after the restore").await;
    assert_eq!((alert.sequence, alert.alert_id), (4, fourth.alert_id));
    let fifth = publisher.publish_alert(alert_for(MANCHESTER, 7)).await.unwrap().into_inner();
    let alert = next_alert(&mut stream, 20, "the next one").await;
    assert_eq!((alert.sequence, alert.alert_id), (5, fifth.alert_id), "each once, in order");
    ts.suite.stop().await.unwrap();
}
