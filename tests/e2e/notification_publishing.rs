//! End-to-end tests of publishing to the Notification service and of its
//! log: numbering under concurrency, idempotency, validation, paging.

use crate::notification::{
    ack, list, next_sequences, publish, publish_concurrently, publisher, seqs, stored_alerts, subscribe,
    violated_fields,
};
use cpis_proto::common::v1::{Episode, PlanType, SettingType};
use cpis_proto::notification::v1::{PublishAlertRequest, SubscribeRequest};
use cpis_testkit::*;
use std::time::Duration;
use tokio::time::timeout;

#[tokio::test]
async fn a_thousand_concurrent_alerts_arrive_numbered_1_to_1000_on_every_stream() {
    let ts = TestSuite::start().await;
    // Two subscriptions of one council (two case-system nodes): each gets it all.
    let streams = [subscribe(&ts, MANCHESTER, 0).await, subscribe(&ts, MANCHESTER, 0).await];
    let readers: Vec<_> = streams
        .into_iter()
        .map(|mut stream| tokio::spawn(async move { next_sequences(&mut stream, 1000).await }))
        .collect();

    let mut answered = publish_concurrently(&ts, MANCHESTER, 1000, 16).await;
    answered.sort_unstable();
    assert_eq!(answered, seqs(1..=1000), "gapless, each sequence once");

    for reader in readers {
        let received =
            timeout(Duration::from_secs(60), reader).await.expect("all alerts in time").expect("reader task");
        assert_eq!(received, seqs(1..=1000), "in order, no gaps, no repeats");
    }
    assert_eq!(stored_alerts(&ts).await, 1000);
    ts.suite.stop().await.unwrap();
}

#[tokio::test]
async fn publishing_an_episode_twice_returns_the_original_alert() {
    let ts = TestSuite::start().await;
    let mut client = publisher(&ts);
    let first = publish(&mut client, alert_for(MANCHESTER, 1)).await;
    let again = publish(&mut client, alert_for(MANCHESTER, 1)).await;
    assert_eq!((first.sequence, &first.alert_id), (1, &again.alert_id));
    assert_eq!(again.sequence, 1);

    // Concurrent repeats of a new episode all get one alert.
    let tasks: Vec<_> = (0..12)
        .map(|_| {
            let mut client = publisher(&ts);
            tokio::spawn(async move { publish(&mut client, alert_for(MANCHESTER, 2)).await })
        })
        .collect();
    let mut answers = Vec::new();
    for task in tasks {
        answers.push(task.await.unwrap());
    }
    assert!(answers.iter().all(|a| a.alert_id == answers[0].alert_id && a.sequence == 2));
    assert_eq!(stored_alerts(&ts).await, 2);

    // The repeats left no gap behind them.
    assert_eq!(publish(&mut client, alert_for(MANCHESTER, 3)).await.sequence, 3);
    // The same episode id for another council is another alert.
    let mut other = alert_for(LIVERPOOL, 1);
    other.episode = alert_for(MANCHESTER, 1).episode;
    let liverpool = publish(&mut client, other).await;
    assert_eq!(liverpool.sequence, 1);
    assert_ne!(liverpool.alert_id, first.alert_id);
    assert_eq!(list(&ts, MANCHESTER, 0, 0).await.unwrap(), (seqs(1..=3), false));
    ts.suite.stop().await.unwrap();
}

#[tokio::test]
async fn invalid_requests_are_refused_with_field_paths_and_store_nothing() {
    let ts = TestSuite::start().await;
    let mut client = publisher(&ts);
    let bad_nhs = {
        let good = nhs(5);
        let last = good.as_bytes()[9] - b'0';
        format!("{}{}", &good[..9], (last + 1) % 10)
    };
    let cases: Vec<(PublishAlertRequest, &[&str])> = vec![
        (PublishAlertRequest { council_code: "W06000001".into(), ..alert_for(MANCHESTER, 1) }, &["council_code"]),
        (PublishAlertRequest { council_code: String::new(), ..alert_for(MANCHESTER, 1) }, &["council_code"]),
        (PublishAlertRequest { nhs_number: bad_nhs.clone(), ..alert_for(MANCHESTER, 1) }, &["nhs_number"]),
        (
            PublishAlertRequest { plan_type: PlanType::Unspecified as i32, priority: 99, ..alert_for(MANCHESTER, 1) },
            &["plan_type", "priority"],
        ),
        (PublishAlertRequest { local_reference: "R".repeat(65), ..alert_for(MANCHESTER, 1) }, &["local_reference"]),
        (PublishAlertRequest { episode: None, ..alert_for(MANCHESTER, 1) }, &["episode"]),
        (
            PublishAlertRequest {
                episode: Some(Episode {
                    episode_id: String::new(),
                    setting_code: "rbq01".into(),
                    setting_type: SettingType::Unspecified as i32,
                    arrived_at: None,
                }),
                ..alert_for(MANCHESTER, 1)
            },
            &["episode.episode_id", "episode.setting_code", "episode.setting_type", "episode.arrived_at"],
        ),
        (
            PublishAlertRequest {
                episode: Some(Episode {
                    arrived_at: Some(prost_types::Timestamp { seconds: 0, nanos: -1 }),
                    ..alert_for(MANCHESTER, 1).episode.unwrap()
                }),
                ..alert_for(MANCHESTER, 1)
            },
            &["episode.arrived_at"],
        ),
    ];
    for (request, expected) in cases {
        let err = client.publish_alert(request).await.expect_err("invalid alert accepted");
        assert_eq!(violated_fields(&err), expected);
        assert!(!err.message().contains(&bad_nhs), "{}", err.message());
    }
    assert_eq!(stored_alerts(&ts).await, 0);
    assert_eq!(list(&ts, MANCHESTER, 0, 0).await.unwrap(), (vec![], false));

    // Requests of councils are checked too.
    for page_size in [-1, 1001] {
        let err = list(&ts, MANCHESTER, 0, page_size).await.expect_err("page size");
        assert_eq!(violated_fields(&err), ["page_size"]);
    }
    let err = list(&ts, MANCHESTER, -1, 0).await.expect_err("negative");
    assert_eq!(violated_fields(&err), ["after_sequence"]);
    for after_sequence in [-1, 1] {
        let err = ts
            .notification(&council(MANCHESTER))
            .subscribe(SubscribeRequest { after_sequence, replay: false })
            .await
            .expect_err("out of range");
        assert_eq!(violated_fields(&err), ["after_sequence"]);
    }
    ts.suite.stop().await.unwrap();
}

#[tokio::test]
async fn list_alerts_pages_through_the_log() {
    let ts = TestSuite::start().await;
    publish_concurrently(&ts, MANCHESTER, 250, 4).await;

    let (page, more) = list(&ts, MANCHESTER, 0, 0).await.unwrap();
    assert_eq!((page, more), (seqs(1..=100), true), "0 means 100");
    let (page, more) = list(&ts, MANCHESTER, 100, 100).await.unwrap();
    assert_eq!((page, more), (seqs(101..=200), true));
    let (page, more) = list(&ts, MANCHESTER, 200, 100).await.unwrap();
    assert_eq!((page, more), (seqs(201..=250), false));
    let (page, more) = list(&ts, MANCHESTER, 200, 50).await.unwrap();
    assert_eq!((page, more), (seqs(201..=250), false), "an exact fit has no more");
    let (page, more) = list(&ts, MANCHESTER, 0, 1000).await.unwrap();
    assert_eq!((page, more), (seqs(1..=250), false));
    assert_eq!(list(&ts, MANCHESTER, 250, 10).await.unwrap(), (vec![], false));

    // Pull mode with acks: 0 starts after the acknowledgement.
    assert_eq!(ack(&ts, MANCHESTER, 240).await.unwrap(), 240);
    assert_eq!(list(&ts, MANCHESTER, 0, 5).await.unwrap(), (seqs(241..=245), true));
    ts.suite.stop().await.unwrap();
}
