//! End-to-end test of the group commit of flagged check-ins (issue 27, goal
//! 4): check-ins that arrive while others are being written are written
//! together, and each must still be answered, stored and alerted exactly as
//! if it had been written alone, one after another.

use crate::attendance::{accesses_of, alerts_of, arrival, bounded, count, outbox_drained, register};
use chrono::Utc;
use cpis_proto::attendance::v1::CheckInResponse;
use cpis_proto::common::v1::PlanType;
use cpis_testkit::*;
use std::collections::{BTreeMap, BTreeSet};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_flagged_check_ins_written_together_is_stored_and_alerted_as_if_one_by_one() {
    bounded(async {
        let ts = TestSuite::start().await;
        // 20 children of three councils, and one child of two councils: 63
        // check-ins at once, within the 64 a caller may have in flight.
        let councils = [KENT, LIVERPOOL, MANCHESTER];
        let mut children: Vec<(String, Vec<&str>)> = Vec::new();
        for i in 0..20u32 {
            let child = nhs(2700 + i);
            let council = councils[i as usize % 3];
            register(&ts, council, &format!("GC-{i}"), &child, PlanType::ChildProtection).await;
            children.push((child, vec![council]));
        }
        let shared = nhs(2799);
        register(&ts, KENT, "GC-SHARED-K", &shared, PlanType::ChildProtection).await;
        register(&ts, LIVERPOOL, "GC-SHARED-L", &shared, PlanType::LookedAfter).await;
        children.push((shared.clone(), vec![KENT, LIVERPOOL]));

        // For each child at once: two staff opening the same visit (two
        // request ids), and the first one's request sent again (a retry).
        let client = ts.attendance(&setting(ALDER_HEY));
        let now = Utc::now();
        let mut calls = Vec::new();
        for (i, (child, _)) in children.iter().enumerate() {
            for request_id in [format!("gc-{i}-a"), format!("gc-{i}-b"), format!("gc-{i}-a")] {
                let mut client = client.clone();
                let request = arrival(&request_id, child, now);
                calls.push(async move {
                    let answer: CheckInResponse = client.check_in(request).await.expect("CheckIn").into_inner();
                    (i, request_id, answer)
                });
            }
        }
        let answers = futures::future::join_all(calls).await;

        // Every answer shows the child's own flags; the two staff share one
        // episode; a retried request id gets the first answer again.
        let mut episode_of: BTreeMap<usize, String> = BTreeMap::new();
        let mut first_answer: BTreeMap<String, CheckInResponse> = BTreeMap::new();
        for (i, request_id, answer) in &answers {
            assert!(answer.flagged, "child {i} is flagged");
            let councils_shown: BTreeSet<&str> = answer.flags.iter().map(|f| f.council_code.as_str()).collect();
            assert_eq!(councils_shown, children[*i].1.iter().copied().collect(), "child {i}'s own councils");
            let episode = episode_of.entry(*i).or_insert_with(|| answer.episode_id.clone());
            assert_eq!(*episode, answer.episode_id, "child {i}: one visit, one episode");
            match first_answer.get(request_id) {
                Some(first) => assert_eq!(first, answer, "{request_id}: a retry gets the first answer"),
                None => {
                    first_answer.insert(request_id.clone(), answer.clone());
                }
            }
        }
        assert_eq!(episode_of.values().collect::<BTreeSet<_>>().len(), children.len(), "an episode per child");

        // Stored: one episode per child, an access per request id (not per
        // retry), one answer per request id.
        let n = children.len() as i64;
        assert_eq!(count(&ts, "SELECT count(*) FROM attendance.episodes").await, n);
        assert_eq!(count(&ts, "SELECT count(*) FROM attendance.accesses").await, 2 * n);
        assert_eq!(count(&ts, "SELECT count(*) FROM attendance.check_in_requests").await, 2 * n);
        for (child, councils) in &children {
            for council in councils {
                assert_eq!(accesses_of(&ts, council, child).await.len(), 2, "two staff saw the flags");
            }
        }

        // Alerted: each council once per child's episode, about that child,
        // in a gapless sequence.
        outbox_drained(&ts).await;
        for council in councils {
            let alerts = alerts_of(&ts, council).await;
            let expected: BTreeMap<String, String> = children
                .iter()
                .enumerate()
                .filter(|(_, (_, cs))| cs.contains(&council))
                .map(|(i, (child, _))| (child.clone(), episode_of[&i].clone()))
                .collect();
            let got: BTreeMap<String, String> =
                alerts.iter().map(|a| (a.nhs_number.clone(), a.episode.clone().expect("episode").episode_id)).collect();
            assert_eq!(alerts.len(), expected.len(), "{council}: one alert per child's episode");
            assert_eq!(got, expected, "{council}: each alert is about its own child's episode");
            let sequences: Vec<i64> = alerts.iter().map(|a| a.sequence).collect();
            assert_eq!(sequences, (1..=alerts.len() as i64).collect::<Vec<_>>(), "{council}: gapless");
        }
        // The relay's mark of each council reached its last alert, so its
        // next pass reads nothing already delivered.
        let behind = count(
            &ts,
            "SELECT count(*) FROM (SELECT council_code, max(position) AS last FROM attendance.outbox
                                   GROUP BY council_code) o
             LEFT JOIN attendance.relay_councils r USING (council_code)
             WHERE COALESCE(r.delivered_through, 0) <> o.last",
        )
        .await;
        assert_eq!(behind, 0, "every council's delivered_through is at its last alert");
        ts.suite.stop().await.unwrap();
    })
    .await
}
