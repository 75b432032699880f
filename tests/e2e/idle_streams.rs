//! Idle streams cost nothing: heartbeats come on time from the instance's
//! memory of each council's latest sequence, an idle stream reads nothing
//! from the database (the service's own counter of stream queries says so),
//! and an alert still reaches the right streams promptly, whether it was
//! published here, on another instance, or only found by the safety poll.

use cpis_domain::identity::ServiceName;
use cpis_proto::notification::v1::{
    notification_service_client::NotificationServiceClient, subscribe_response::Event, SubscribeRequest,
    SubscribeResponse,
};
use cpis_testkit::*;
use std::time::Duration;
use tokio::time::{timeout, Instant};
use tonic::Streaming;

const HEARTBEAT: Duration = Duration::from_millis(300);
const COUNCILS: [&str; 5] = [MANCHESTER, LIVERPOOL, KENT, "E09000001", "E06000001"];
/// Streams per council (the per-caller limit is 64): 200 in all.
const STREAMS_PER_COUNCIL: usize = 40;
const PATIENCE: Duration = Duration::from_secs(15);

fn configs() -> cpis::suite::ServiceConfigs {
    cpis::suite::ServiceConfigs { notification: notification_settings(HEARTBEAT), ..Default::default() }
}

async fn start() -> TestSuite {
    TestSuite::start_with(configs()).await
}

/// The service's count of database queries made for streams, of `kind`
/// (`read`, `open`, `poll`, `refresh`; empty for all).
async fn stream_queries(ts: &TestSuite, kind: &str) -> f64 {
    let text = scrape(ts.suite.notification.metrics_addr.expect("metrics")).await;
    let label = format!("kind=\"{kind}\"");
    let mut parts = vec!["cpis_notification_stream_db_queries_total"];
    if !kind.is_empty() {
        parts.push(&label);
    }
    sample(&text, &parts)
}

/// Opens `n` streams of `council` (from its acknowledgement) on one connection.
async fn open(ts: &TestSuite, code: &str, n: usize) -> Vec<Streaming<SubscribeResponse>> {
    let client = NotificationServiceClient::new(ts.channel(ts.notification_port(), &council(code)));
    let opening = (0..n).map(|_| {
        let mut client = client.clone();
        async move {
            timeout(PATIENCE, client.subscribe(SubscribeRequest { after_sequence: 0, replay: false }))
                .await
                .expect("subscribe in time")
                .expect("subscribe")
                .into_inner()
        }
    });
    futures::future::join_all(opening).await
}

/// The next event of a stream.
async fn next(stream: &mut Streaming<SubscribeResponse>) -> Event {
    timeout(PATIENCE, stream.message())
        .await
        .expect("an event in time")
        .expect("stream failed")
        .expect("stream open")
        .event
        .expect("event")
}

/// The `sent_at` of the next `n` heartbeats of a stream, in milliseconds,
/// failing on an alert.
async fn heartbeats(stream: &mut Streaming<SubscribeResponse>, n: usize, latest: i64) -> Vec<i64> {
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        match next(stream).await {
            Event::Heartbeat(h) => {
                assert_eq!(h.latest_sequence, latest, "a heartbeat announces the council's latest sequence");
                let at = h.sent_at.expect("sent_at");
                out.push(at.seconds * 1000 + i64::from(at.nanos) / 1_000_000);
            }
            Event::Alert(a) => panic!("an idle stream received alert {}", a.sequence),
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_idle_streams_beat_on_time_without_a_query_and_alerts_still_arrive() {
    let ts = start().await;
    let mut streams = Vec::new();
    for code in COUNCILS {
        streams.push((code, open(&ts, code, STREAMS_PER_COUNCIL).await));
    }
    // Every stream has read its (empty) backlog once it sent a heartbeat.
    for (_, list) in &mut streams {
        futures::future::join_all(list.iter_mut().map(|s| heartbeats(s, 1, 0))).await;
    }
    let reads_before = stream_queries(&ts, "read").await;
    let polls_before = stream_queries(&ts, "poll").await;
    let idle_from = Instant::now();

    // Five beats on every stream: consecutive ones are the configured interval
    // apart, within 10 % (taken from the server's own `sent_at`).
    const BEATS: usize = 5;
    let mut spacings = Vec::new();
    for (_, list) in &mut streams {
        for beats in futures::future::join_all(list.iter_mut().map(|s| heartbeats(s, BEATS, 0))).await {
            spacings.extend(beats.windows(2).map(|w| w[1] - w[0]));
        }
    }
    assert_eq!(spacings.len(), COUNCILS.len() * STREAMS_PER_COUNCIL * (BEATS - 1));
    let interval = HEARTBEAT.as_millis() as i64;
    let off: Vec<i64> = spacings.iter().copied().filter(|s| (s - interval).abs() * 10 > interval).collect();
    assert!(off.is_empty(), "{} of {} heartbeat spacings off by more than 10 %: {off:?}", off.len(), spacings.len());

    // Idle: not one read of the alert table; the safety poll is one query
    // per interval (5 s) for all 200 streams, never one per stream.
    assert_eq!(stream_queries(&ts, "read").await, reads_before, "idle streams read the database");
    let polls = stream_queries(&ts, "poll").await - polls_before;
    let bound = (idle_from.elapsed().as_secs_f64() / 5.0).ceil() + 1.0;
    assert!(polls <= bound, "{polls} polls in {:?}", idle_from.elapsed());

    // An alert for one council, published while all are idle, reaches every
    // stream of that council promptly, and only those.
    let published = Instant::now();
    let mut publisher = ts.notification(&service(ServiceName::Attendance));
    let answer = publisher.publish_alert(alert_for(LIVERPOOL, 1)).await.expect("publish").into_inner();
    let waits =
        streams.iter_mut().flat_map(|(code, list)| list.iter_mut().map(|s| (*code, s))).map(|(code, s)| async move {
            let seen = timeout(Duration::from_millis(2500), async {
                loop {
                    match next(s).await {
                        Event::Alert(a) => return Some(a),
                        Event::Heartbeat(h) if h.latest_sequence > 0 => return None,
                        Event::Heartbeat(_) => {}
                    }
                }
            })
            .await;
            (code, seen)
        });
    for (code, seen) in futures::future::join_all(waits).await {
        if code == LIVERPOOL {
            let alert = seen.expect("promptly").expect("the alert, not a heartbeat announcing it");
            assert_eq!((alert.alert_id.as_str(), alert.sequence), (answer.alert_id.as_str(), 1));
        } else {
            assert!(seen.is_err(), "{code} saw something of Liverpool's");
        }
    }
    assert!(published.elapsed() < Duration::from_secs(4), "{:?}", published.elapsed());
    // The alert cost one read per Liverpool stream, nothing for the others.
    let reads = stream_queries(&ts, "read").await - reads_before;
    assert!(reads <= 2.0 * STREAMS_PER_COUNCIL as f64, "{reads} reads for one alert");
    drop(streams);
    ts.suite.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alert_written_by_another_instance_reaches_an_idle_stream_here() {
    let ts = start().await;
    // Another suite on the same database: another replica of every service.
    let other = TestSuite::start_on(ts.database_url.clone(), configs()).await;
    let mut here = open(&ts, MANCHESTER, 3).await;
    for s in &mut here {
        heartbeats(s, 1, 0).await;
    }
    let mut there = other.notification(&service(ServiceName::Attendance));
    for serial in 0..3u32 {
        let answer = there.publish_alert(alert_for(MANCHESTER, serial)).await.expect("publish").into_inner();
        for s in &mut here {
            let alert = next_alert(s, 3, "the other instance's alert arrives promptly").await;
            assert_eq!((alert.alert_id.as_str(), alert.sequence), (answer.alert_id.as_str(), i64::from(serial) + 1));
        }
    }
    // Idle again, heartbeats announce the latest from memory.
    for s in &mut here {
        heartbeats(s, 2, 3).await;
    }
    drop(here);
    other.suite.stop().await.unwrap();
    ts.suite.stop().await.unwrap();
}

/// Stores an alert the way the service does, but without any notification
/// (as if it were lost), or with a bare council code as payload (as an
/// older publisher sends it).
async fn store_silently(db: &tokio_postgres::Client, code: &str, serial: u32, notify_bare: bool) -> i64 {
    let sequence: i64 = db
        .query_one(
            "INSERT INTO notification.council_sequences AS c (council_code, last_sequence) VALUES ($1, 1)
             ON CONFLICT (council_code) DO UPDATE SET last_sequence = c.last_sequence + 1
             RETURNING last_sequence",
            &[&code],
        )
        .await
        .unwrap()
        .get(0);
    db.execute(
        "INSERT INTO notification.alerts (council_code, sequence, alert_id, episode_id, nhs_number, plan_type,
             local_reference, setting_code, setting_type, arrived_at, priority)
         VALUES ($1, $2, gen_random_uuid(), $3, $4, 1, 'REF', $5, 1, now(), 1)",
        &[&code, &sequence, &format!("silent-{serial}"), &nhs(serial), &ALDER_HEY],
    )
    .await
    .unwrap();
    if notify_bare {
        db.execute("SELECT pg_notify('cpis_notification_alert', $1)", &[&code]).await.unwrap();
    }
    sequence
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_notification_is_made_good_by_the_per_council_poll() {
    let ts = start().await;
    let mut stream = open(&ts, KENT, 1).await.pop().unwrap();
    heartbeats(&mut stream, 1, 0).await;
    let db = ts.db().await;

    // No notification at all: the safety poll (every 5 s) finds it.
    let sequence = store_silently(&db, KENT, 1, false).await;
    let alert = next_alert(&mut stream, 8, "the poll finds an alert nobody announced").await;
    assert_eq!(alert.sequence, sequence);

    // A bare council code (an older publisher): the instance reads the latest at once.
    let sequence = store_silently(&db, KENT, 2, true).await;
    let alert = next_alert(&mut stream, 8, "a notification without a sequence still delivers").await;
    assert_eq!(alert.sequence, sequence);
    heartbeats(&mut stream, 1, sequence).await;
    drop(stream);
    ts.suite.stop().await.unwrap();
}
