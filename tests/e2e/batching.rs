//! Batching on the check-in path: `PublishAlerts` stores many alerts in one
//! transaction with each council's gapless order intact, and Attendance
//! coalesces concurrent check-ins' flag look-ups into `LookupFlagsBatch`.

use cpis_domain::identity::ServiceName;
use cpis_proto::notification::v1::{
    notification_service_client::NotificationServiceClient, Alert, ListAlertsRequest, PublishAlertRequest,
    PublishAlertResponse, PublishAlertsRequest,
};
use cpis_proto::registry::v1::{LookupFlagsBatchRequest, LookupFlagsRequest, UpsertPlanRequest};
use cpis_testkit::*;
use std::collections::HashMap;
use std::time::Duration;
use tonic::transport::Channel;
use tonic::Code;
use tonic_types::StatusExt;

/// Longest wait for anything a test expects to happen.
const PATIENCE: Duration = Duration::from_secs(20);

fn publisher(ts: &TestSuite) -> NotificationServiceClient<Channel> {
    ts.notification(&service(ServiceName::Attendance))
}

async fn publish_batch(
    client: &mut NotificationServiceClient<Channel>,
    alerts: Vec<PublishAlertRequest>,
) -> Result<Vec<PublishAlertResponse>, tonic::Status> {
    let answer = tokio::time::timeout(PATIENCE, client.publish_alerts(PublishAlertsRequest { alerts }))
        .await
        .expect("PublishAlerts timed out")?;
    Ok(answer.into_inner().results)
}

/// Every stored alert of `code`, by sequence (replayed from 1).
async fn alerts_of(ts: &TestSuite, code: &str) -> Vec<Alert> {
    ts.notification(&council(code))
        .list_alerts(ListAlertsRequest { after_sequence: 0, page_size: 1000, replay: true })
        .await
        .expect("list alerts")
        .into_inner()
        .alerts
}

/// The field paths of an `INVALID_ARGUMENT`'s `BadRequest` details.
fn violated_fields(status: &tonic::Status) -> Vec<String> {
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
async fn a_batch_for_several_councils_keeps_each_councils_gapless_order_and_a_replay_changes_nothing() {
    let ts = TestSuite::start().await;
    let mut client = publisher(&ts);
    // Manchester already has one alert: the batch carries on from it.
    let first = client.publish_alert(alert_for(MANCHESTER, 1)).await.expect("publish").into_inner();
    assert_eq!(first.sequence, 1);

    let councils = [KENT, MANCHESTER, LIVERPOOL];
    let batch: Vec<PublishAlertRequest> = (0..30).map(|i| alert_for(councils[i % 3], 100 + i as u32)).collect();
    let results = publish_batch(&mut client, batch.clone()).await.expect("batch stored");
    assert_eq!(results.len(), batch.len(), "one result per alert, in request order");
    let mut expected_next: HashMap<&str, i64> = HashMap::from([(KENT, 1), (MANCHESTER, 2), (LIVERPOOL, 1)]);
    for (alert, result) in batch.iter().zip(&results) {
        let next = expected_next.get_mut(alert.council_code.as_str()).expect("a council of the batch");
        assert_eq!(result.sequence, *next, "each council's alerts take consecutive sequences in request order");
        *next += 1;
    }
    for code in councils {
        let stored = alerts_of(&ts, code).await;
        let sequences: Vec<i64> = stored.iter().map(|a| a.sequence).collect();
        assert_eq!(sequences, (1..=sequences.len() as i64).collect::<Vec<_>>(), "{code}: gapless from 1");
        let mut sent = batch.iter().zip(&results).filter(|(a, _)| a.council_code == code);
        for a in stored.iter().filter(|a| !(code == MANCHESTER && a.sequence == 1)) {
            let (request, result) = sent.next().expect("a stored alert the batch sent");
            assert_eq!(a.episode, request.episode, "{code}: stored in request order");
            assert_eq!((a.alert_id.as_str(), a.sequence), (result.alert_id.as_str(), result.sequence));
            assert_eq!(a.nhs_number, request.nhs_number);
        }
        assert!(sent.next().is_none(), "{code}: every alert of the batch is stored");
    }

    // A replay answers the original alerts and stores nothing new; a batch
    // mixing repeats with new alerts gives only the new ones new sequences.
    let again = publish_batch(&mut client, batch.clone()).await.expect("replay");
    assert_eq!(again, results, "a replay answers the original alert ids and sequences");
    let mixed = vec![alert_for(MANCHESTER, 1), alert_for(MANCHESTER, 200), batch[0].clone(), alert_for(KENT, 201)];
    let answered = publish_batch(&mut client, mixed).await.expect("mixed batch");
    assert_eq!(answered[0], first, "the earlier single publish is a repeat too");
    assert_eq!(answered[1].sequence, 12, "Manchester had 11");
    assert_eq!(answered[2], results[0]);
    assert_eq!(answered[3].sequence, 11, "Kent had 10");
    assert_eq!(alerts_of(&ts, LIVERPOOL).await.len(), 10);
    assert_eq!(alerts_of(&ts, MANCHESTER).await.len(), 12);
    assert_eq!(alerts_of(&ts, KENT).await.len(), 11);

    // Concurrent batches naming the same councils in opposite orders neither
    // deadlock nor leave gaps.
    let tasks: Vec<_> = (0..8u32)
        .map(|t| {
            let mut client = publisher(&ts);
            let order = if t % 2 == 0 { [LIVERPOOL, KENT] } else { [KENT, LIVERPOOL] };
            tokio::spawn(async move {
                let alerts = (0..20u32).map(|i| alert_for(order[(i / 10) as usize], 1000 + t * 100 + i)).collect();
                publish_batch(&mut client, alerts).await.expect("concurrent batch")
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("task");
    }
    for (code, count) in [(LIVERPOOL, 10 + 80), (KENT, 11 + 80)] {
        let sequences: Vec<i64> = alerts_of(&ts, code).await.iter().map(|a| a.sequence).collect();
        assert_eq!(sequences, (1..=count).collect::<Vec<i64>>(), "{code}: gapless after concurrent batches");
    }
}

#[tokio::test]
async fn a_bad_alert_names_its_index_and_nothing_of_its_batch_is_stored() {
    let ts = TestSuite::start().await;
    let mut client = publisher(&ts);
    let mut bad_number = alert_for(LIVERPOOL, 2);
    bad_number.nhs_number = "9990000019".into();
    let mut bad_setting = alert_for(MANCHESTER, 3);
    if let Some(e) = bad_setting.episode.as_mut() {
        e.setting_code = "rbq01".into();
    }
    let batch = vec![alert_for(MANCHESTER, 1), bad_number, bad_setting, alert_for(KENT, 4)];
    let status = publish_batch(&mut client, batch).await.expect_err("refused");
    assert_eq!(violated_fields(&status), ["alerts[1].nhs_number", "alerts[2].episode.setting_code"]);
    assert!(!status.message().contains("9990000019"), "no NHS number in the error");
    for code in [MANCHESTER, LIVERPOOL, KENT] {
        assert!(alerts_of(&ts, code).await.is_empty(), "{code}: nothing of the refused batch is stored");
    }

    // Too many, or none at all.
    let too_many = (0..501).map(|i| alert_for(KENT, i)).collect();
    assert_eq!(violated_fields(&publish_batch(&mut client, too_many).await.expect_err("over the cap")), ["alerts"]);
    assert_eq!(violated_fields(&publish_batch(&mut client, vec![]).await.expect_err("empty")), ["alerts"]);
    assert!(alerts_of(&ts, KENT).await.is_empty());
    let full = (0..500).map(|i| alert_for(KENT, i)).collect();
    assert_eq!(publish_batch(&mut client, full).await.expect("500 is allowed").len(), 500);
    assert_eq!(alerts_of(&ts, KENT).await.len(), 500);
}

#[tokio::test]
async fn only_the_attendance_service_may_publish_or_look_up_in_batches() {
    let ts = TestSuite::start().await;
    let others =
        [council(MANCHESTER), setting(ALDER_HEY), service(ServiceName::Registry), service(ServiceName::Notification)];
    for who in &others {
        let status = ts
            .notification(who)
            .publish_alerts(PublishAlertsRequest { alerts: vec![alert_for(MANCHESTER, 1)] })
            .await
            .expect_err("refused");
        assert_eq!(status.code(), Code::PermissionDenied, "PublishAlerts as {who:?}");
        let lookup = LookupFlagsRequest { nhs_number: nhs(1), on_date: String::new() };
        let status = ts
            .registry(who)
            .lookup_flags_batch(LookupFlagsBatchRequest { lookups: vec![lookup] })
            .await
            .expect_err("refused");
        assert_eq!(status.code(), Code::PermissionDenied, "LookupFlagsBatch as {who:?}");
    }
    assert!(alerts_of(&ts, MANCHESTER).await.is_empty(), "nothing was stored");
}

#[tokio::test]
async fn a_batch_look_up_answers_each_look_up_as_lookup_flags_would() {
    let ts = TestSuite::start().await;
    let (both, one, nobody) = (nhs(10), nhs(11), nhs(12));
    for (code, reference, who) in [(MANCHESTER, "MCR-1", &both), (LIVERPOOL, "LIV-1", &both), (KENT, "KNT-1", &one)] {
        let plan = Some(plan(reference, who));
        ts.registry(&council(code)).upsert_plan(UpsertPlanRequest { plan, expected_version: 0 }).await.unwrap();
    }
    let ask = |n: &str, on: &str| LookupFlagsRequest { nhs_number: n.into(), on_date: on.into() };
    // Plans start 2025-01-10: before that nobody is flagged.
    let lookups =
        vec![ask(&both, ""), ask(&nobody, ""), ask(&both, "2025-01-01"), ask(&one, "2026-03-01"), ask(&both, "")];
    let mut registry = ts.registry(&service(ServiceName::Attendance));
    let batch = registry
        .lookup_flags_batch(LookupFlagsBatchRequest { lookups: lookups.clone() })
        .await
        .expect("batch look-up")
        .into_inner()
        .results;
    assert_eq!(batch.len(), lookups.len());
    for (lookup, answer) in lookups.iter().zip(&batch) {
        let single = registry.lookup_flags(lookup.clone()).await.expect("look-up").into_inner();
        assert_eq!(answer, &single, "the batch answers as LookupFlags does");
    }
    let councils = |i: usize| batch[i].flags.iter().map(|f| f.council_code.clone()).collect::<Vec<_>>();
    assert_eq!(councils(0), [MANCHESTER, LIVERPOOL]);
    assert!(batch[1].flags.is_empty() && batch[2].flags.is_empty());
    assert_eq!(councils(3), [KENT]);
    assert_eq!(batch[4], batch[0], "one number asked twice is answered twice");

    let status = registry
        .lookup_flags_batch(LookupFlagsBatchRequest {
            lookups: vec![ask(&both, ""), ask("9990000019", ""), ask(&one, "2026-02-30")],
        })
        .await
        .expect_err("refused");
    assert_eq!(violated_fields(&status), ["lookups[1].nhs_number", "lookups[2].on_date"]);
    assert!(!status.message().contains("9990000019"));
    let too_many = (0..257).map(|i| ask(&nhs(i), "")).collect();
    let status = registry.lookup_flags_batch(LookupFlagsBatchRequest { lookups: too_many }).await.expect_err("cap");
    assert_eq!(violated_fields(&status), ["lookups"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_check_ins_share_look_ups_get_their_own_flags_and_alerts_keep_check_in_order() {
    const ROUNDS: u32 = 3;
    const FLAGGED: u32 = 16;
    const UNFLAGGED: u32 = 8;
    let ts = TestSuite::start().await;
    // Flagged person p of round r is serial 2000 + 100r + p: Manchester holds
    // every one, Liverpool every fourth as well.
    let flagged = |r: u32, p: u32| 2000 + 100 * r + p;
    let mut manchester = ts.registry(&council(MANCHESTER));
    let mut liverpool = ts.registry(&council(LIVERPOOL));
    for r in 0..ROUNDS {
        for p in 0..FLAGGED {
            let s = flagged(r, p);
            let mcr = Some(plan(&format!("MCR-{s}"), &nhs(s)));
            manchester.upsert_plan(UpsertPlanRequest { plan: mcr, expected_version: 0 }).await.unwrap();
            if p % 4 == 0 {
                let liv = Some(plan(&format!("LIV-{s}"), &nhs(s)));
                liverpool.upsert_plan(UpsertPlanRequest { plan: liv, expected_version: 0 }).await.unwrap();
            }
        }
    }

    // Rounds one after another, each round's check-ins all at once.
    let mut round_of_episode: HashMap<String, (u32, String)> = HashMap::new();
    for r in 0..ROUNDS {
        let people: Vec<(u32, bool)> = (0..FLAGGED)
            .map(|p| (flagged(r, p), true))
            .chain((0..UNFLAGGED).map(|p| (7000 + 100 * r + p, false)))
            .collect();
        let tasks: Vec<_> = people
            .iter()
            .map(|&(s, _)| {
                let mut client = ts.attendance(&setting(if s % 2 == 0 { ALDER_HEY } else { OTHER_SETTING }));
                tokio::spawn(async move {
                    let mut request = tonic::Request::new(arrival(&nhs(s)));
                    request.set_timeout(PATIENCE);
                    client.check_in(request).await.expect("check-in").into_inner()
                })
            })
            .collect();
        for ((s, is_flagged), task) in people.iter().zip(tasks) {
            let answer = task.await.expect("task");
            assert_eq!(answer.flagged, *is_flagged, "person {s}: flagged exactly when registered");
            let mut councils: Vec<String> = answer.flags.iter().map(|f| f.council_code.clone()).collect();
            councils.sort();
            let expected: Vec<&str> = match (is_flagged, (s % 100) % 4 == 0) {
                (false, _) => vec![],
                (true, false) => vec![MANCHESTER],
                (true, true) => vec![MANCHESTER, LIVERPOOL],
            };
            assert_eq!(councils, expected, "person {s}: their own flags, nobody else's");
            if *is_flagged {
                round_of_episode.insert(answer.episode_id.clone(), (r, nhs(*s)));
            } else {
                assert!(answer.episode_id.is_empty(), "nothing stored for an unflagged person");
            }
        }
    }

    // The look-ups were coalesced: fewer Registry calls than check-ins, and
    // at least one LookupFlagsBatch.
    let registry = scrape(ts.suite.registry.metrics_addr.expect("metrics")).await;
    let batches = sample(&registry, &["cpis_grpc_requests_total", "LookupFlagsBatch\"", "code=\"Ok\""]);
    let singles = sample(&registry, &["cpis_grpc_requests_total", "LookupFlags\"", "code=\"Ok\""]);
    let check_ins = f64::from(ROUNDS * (FLAGGED + UNFLAGGED));
    assert!(batches >= 1.0, "concurrent check-ins shared a LookupFlagsBatch ({singles} single look-ups)");
    assert!(batches + singles < check_ins, "{batches} batches + {singles} single look-ups for {check_ins} check-ins");

    // Every alert arrives, each council's gapless and in check-in order
    // (no alert of a round before one of an earlier round).
    for (code, per_round) in [(MANCHESTER, FLAGGED), (LIVERPOOL, FLAGGED / 4)] {
        let expected = (ROUNDS * per_round) as usize;
        let give_up = tokio::time::Instant::now() + PATIENCE;
        let stored = loop {
            let stored = alerts_of(&ts, code).await;
            if stored.len() >= expected || tokio::time::Instant::now() > give_up {
                break stored;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        assert_eq!(stored.len(), expected, "{code}: one alert per flagged check-in");
        let sequences: Vec<i64> = stored.iter().map(|a| a.sequence).collect();
        assert_eq!(sequences, (1..=expected as i64).collect::<Vec<_>>(), "{code}: gapless");
        let rounds: Vec<u32> = stored
            .iter()
            .map(|a| {
                let episode = a.episode.as_ref().expect("episode");
                let (round, person) = round_of_episode.get(&episode.episode_id).expect("an episode of a check-in");
                assert_eq!(&a.nhs_number, person, "the alert names the person checked in");
                *round
            })
            .collect();
        assert!(rounds.windows(2).all(|w| w[0] <= w[1]), "{code}: alerts in check-in order: {rounds:?}");
    }
}
