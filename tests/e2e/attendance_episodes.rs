//! End-to-end tests of the Attendance service's episodes: what counts as
//! one (replays, the same visit, repeats, concurrent check-ins), the
//! previous episodes a setting sees, and the alerts each council receives.

use crate::attendance::{
    accesses_of, alerts_of, arrival, bounded, check_in, check_in_as, count, list_episodes, outbox_drained, register,
    rows_mentioning, try_check_in, violated_fields,
};
use chrono::{TimeDelta, Utc};
use cpis_proto::common::v1::{PlanType, SettingType};
use cpis_proto::notification::v1::AlertPriority;
use cpis_proto::registry::v1::DeletePlanRequest;
use cpis_testkit::*;
use std::collections::BTreeSet;
use tonic::Code;

#[tokio::test]
async fn previous_episodes_are_the_25_most_recent_and_list_episodes_pages_through_the_same_25() {
    bounded(async {
        let ts = TestSuite::start_accepting_arrivals_from(60).await;
        let child = nhs(301);
        register(&ts, KENT, "KENT-301", &child, PlanType::ChildProtection).await;
        let now = Utc::now();
        // 28 attendances 25 hours apart (so each is its own episode), oldest
        // first, alternating between two settings.
        let mut episode_ids = Vec::new();
        for k in 0..28i64 {
            let at = now - TimeDelta::hours(25 * (27 - k));
            let where_ = if k % 2 == 0 { ALDER_HEY } else { OTHER_SETTING };
            let answer = check_in(&ts, where_, arrival(&format!("hist-{k}"), &child, at)).await;
            assert!(answer.flagged);
            assert_eq!(answer.previous_episodes.len(), (k as usize).min(25), "check-in {k}");
            episode_ids.push(answer.episode_id);
        }
        let newest_first: Vec<String> = episode_ids.iter().rev().cloned().collect();

        // The last answer: the 25 episodes before it, most recent first.
        let last = check_in(
            &ts,
            OTHER_SETTING,
            arrival("hist-27", &child, now), // a replay of the last one
        )
        .await;
        let shown: Vec<String> = last.previous_episodes.iter().map(|e| e.episode_id.clone()).collect();
        assert_eq!(shown, newest_first[1..26].to_vec());
        let times: Vec<i64> =
            last.previous_episodes.iter().map(|e| e.arrived_at.as_ref().expect("arrived_at").seconds).collect();
        assert!(times.windows(2).all(|w| w[0] > w[1]), "most recent first");
        assert!(last.previous_episodes.iter().all(|e| !e.setting_code.is_empty() && e.setting_type != 0));

        // ListEpisodes: the 25 most recent, never more (need to know), in the
        // same order, page by page.
        let mut listed = Vec::new();
        let mut token = String::new();
        let mut pages = 0;
        loop {
            let (episodes, next) =
                list_episodes(&ts, &setting(ALDER_HEY), &child, 10, &token).await.expect("ListEpisodes");
            pages += 1;
            listed.extend(episodes.into_iter().map(|e| e.episode_id));
            if next.is_empty() {
                break;
            }
            token = next;
        }
        assert_eq!(pages, 3);
        assert_eq!(listed, newest_first[..25].to_vec());
        let (default_page, _) = list_episodes(&ts, &setting(ALDER_HEY), &child, 0, "").await.expect("ListEpisodes");
        assert_eq!(default_page.len(), 25, "page_size 0 means 25");
        ts.suite.stop().await.unwrap();
    })
    .await
}

#[tokio::test]
async fn a_replayed_request_id_returns_the_first_answer_and_publishes_nothing_new() {
    bounded(async {
        let ts = TestSuite::start().await;
        let child = nhs(401);
        register(&ts, MANCHESTER, "MAN-401", &child, PlanType::ChildProtection).await;
        let request = arrival("once-401", &child, Utc::now());
        let first = check_in(&ts, ALDER_HEY, request.clone()).await;
        assert!(first.flagged);
        outbox_drained(&ts).await;

        // Meanwhile another council takes a flag on: a replay still shows the
        // first answer, and no council is alerted again.
        register(&ts, LIVERPOOL, "LIV-401", &child, PlanType::LookedAfter).await;
        for _ in 0..3 {
            assert_eq!(check_in(&ts, ALDER_HEY, request.clone()).await, first);
        }
        outbox_drained(&ts).await;
        assert_eq!(alerts_of(&ts, MANCHESTER).await.len(), 1);
        assert!(alerts_of(&ts, LIVERPOOL).await.is_empty());
        assert_eq!(count(&ts, "SELECT count(*) FROM attendance.accesses").await, 1);

        // The same request_id with another body is refused, naming the field.
        let mut changed = request.clone();
        changed.setting_type = SettingType::UrgentTreatmentCentre as i32;
        let err = try_check_in(&ts, ALDER_HEY, changed).await.expect_err("reused request_id");
        assert_eq!(violated_fields(&err), ["request_id"]);
        assert!(!err.message().contains(&child));

        // request_ids belong to one setting: another setting's is a new check-in.
        let elsewhere = check_in(&ts, OTHER_SETTING, request.clone()).await;
        assert_ne!(elsewhere.episode_id, first.episode_id);
        assert_eq!(elsewhere.flags.len(), 2);
        outbox_drained(&ts).await;
        assert_eq!(alerts_of(&ts, MANCHESTER).await.len(), 2);
        assert_eq!(alerts_of(&ts, LIVERPOOL).await.len(), 1);
        ts.suite.stop().await.unwrap();
    })
    .await
}

#[tokio::test]
async fn the_same_person_at_the_same_setting_within_24_hours_is_one_episode() {
    bounded(async {
        let ts = TestSuite::start().await;
        let child = nhs(501);
        register(&ts, MANCHESTER, "MAN-501", &child, PlanType::ChildProtection).await;
        let t0 = Utc::now() - TimeDelta::hours(30);

        let triage = check_in(&ts, ALDER_HEY, arrival("v-1", &child, t0)).await;
        let second_view = arrival("v-2", &child, t0 + TimeDelta::hours(2));
        let (review, _) = check_in_as(&ts, ALDER_HEY, "Paediatric Registrar", second_view).await;
        assert_eq!(review.episode_id, triage.episode_id, "one visit, one episode");
        assert!(review.previous_episodes.is_empty(), "this episode is excluded");

        // Another setting the same day is another episode.
        let elsewhere = check_in(&ts, OTHER_SETTING, arrival("v-3", &child, t0 + TimeDelta::hours(3))).await;
        assert_ne!(elsewhere.episode_id, triage.episode_id);
        // The first setting again, 25 hours later: a new episode.
        let later = check_in(&ts, ALDER_HEY, arrival("v-4", &child, t0 + TimeDelta::hours(25))).await;
        assert_ne!(later.episode_id, triage.episode_id);
        let previous: Vec<&str> = later.previous_episodes.iter().map(|e| e.episode_id.as_str()).collect();
        assert_eq!(previous, [elsewhere.episode_id.as_str(), triage.episode_id.as_str()]);

        outbox_drained(&ts).await;
        let alerted: Vec<String> =
            alerts_of(&ts, MANCHESTER).await.into_iter().map(|a| a.episode.expect("episode").episode_id).collect();
        assert_eq!(
            alerted,
            [triage.episode_id.clone(), elsewhere.episode_id.clone(), later.episode_id.clone()],
            "one alert per episode, none for the second view"
        );
        // ...but every view is audited, newest first.
        let accesses = accesses_of(&ts, MANCHESTER, &child).await;
        let users: Vec<String> = accesses.iter().map(|a| a.viewer.clone().expect("viewer").name).collect();
        assert_eq!(users, [TEST_CLINICIAN, TEST_CLINICIAN, "Paediatric Registrar", TEST_CLINICIAN]);
        assert_eq!(accesses[2].episode_id, triage.episode_id);
        assert_eq!(accesses[3].episode_id, triage.episode_id);
        ts.suite.stop().await.unwrap();
    })
    .await
}

#[tokio::test]
async fn the_third_episode_within_30_days_is_a_repeat_attendance() {
    bounded(async {
        let ts = TestSuite::start_accepting_arrivals_from(60).await;
        let child = nhs(601);
        register(&ts, LIVERPOOL, "LIV-601", &child, PlanType::ChildProtection).await;
        let now = Utc::now();
        // Broken rib here, dislocated shoulder there: the first episode falls
        // outside the 30 days of the others and does not count.
        let visits = [
            (ALDER_HEY, now - TimeDelta::days(45)),
            (OTHER_SETTING, now - TimeDelta::days(10)),
            (ALDER_HEY, now - TimeDelta::days(5)),
            (OTHER_SETTING, now - TimeDelta::minutes(1)),
        ];
        let mut episode_ids = Vec::new();
        for (i, (where_, at)) in visits.iter().enumerate() {
            let answer = check_in(&ts, where_, arrival(&format!("r-{i}"), &child, *at)).await;
            episode_ids.push(answer.episode_id);
        }
        // A second view of the last visit changes nothing.
        check_in(&ts, OTHER_SETTING, arrival("r-again", &child, now)).await;

        outbox_drained(&ts).await;
        let alerts = alerts_of(&ts, LIVERPOOL).await;
        let got: Vec<(String, i32)> =
            alerts.iter().map(|a| (a.episode.clone().expect("episode").episode_id, a.priority)).collect();
        let routine = AlertPriority::Routine as i32;
        let repeat = AlertPriority::RepeatAttendance as i32;
        let want: Vec<(String, i32)> = episode_ids.iter().cloned().zip([routine, routine, routine, repeat]).collect();
        assert_eq!(got, want);
        ts.suite.stop().await.unwrap();
    })
    .await
}

#[tokio::test]
async fn a_child_flagged_by_two_councils_alerts_each_of_them_once() {
    bounded(async {
        let ts = TestSuite::start().await;
        let child = nhs(701);
        register(&ts, MANCHESTER, "MAN-701", &child, PlanType::ChildProtection).await;
        register(&ts, LIVERPOOL, "LIV-701", &child, PlanType::LookedAfter).await;

        let answer = check_in(&ts, ALDER_HEY, arrival("two-701", &child, Utc::now())).await;
        let councils: BTreeSet<&str> = answer.flags.iter().map(|f| f.council_code.as_str()).collect();
        assert_eq!(councils, BTreeSet::from([LIVERPOOL, MANCHESTER]));

        outbox_drained(&ts).await;
        for (code, reference, plan_type) in
            [(MANCHESTER, "MAN-701", PlanType::ChildProtection), (LIVERPOOL, "LIV-701", PlanType::LookedAfter)]
        {
            let alerts = alerts_of(&ts, code).await;
            assert_eq!(alerts.len(), 1, "{code}");
            assert_eq!(alerts[0].council_code, code);
            assert_eq!(alerts[0].local_reference, reference);
            assert_eq!(alerts[0].plan_type, plan_type as i32);
            assert_eq!(alerts[0].episode.as_ref().expect("episode").episode_id, answer.episode_id);
            assert_eq!(accesses_of(&ts, code, &child).await.len(), 1, "{code}");
            // Each council holding a flag may read the history.
            let (episodes, _) = list_episodes(&ts, &council(code), &child, 0, "")
                .await
                .expect("a council holding a flag lists episodes");
            assert_eq!(episodes.len(), 1);
        }
        assert!(alerts_of(&ts, KENT).await.is_empty());
        assert!(accesses_of(&ts, KENT, "").await.is_empty());

        // A council without a flag may not, and is not told the number back.
        let denied = list_episodes(&ts, &council(KENT), &child, 0, "").await.expect_err("Kent holds no flag");
        assert_eq!(denied.code(), Code::PermissionDenied);
        assert!(!denied.message().contains(&child));

        // A plan entered in error stops giving access at once.
        ts.registry(&council(MANCHESTER))
            .delete_plan(DeletePlanRequest { local_reference: "MAN-701".into() })
            .await
            .expect("DeletePlan");
        let denied = list_episodes(&ts, &council(MANCHESTER), &child, 0, "")
            .await
            .expect_err("Manchester no longer holds a flag");
        assert_eq!(denied.code(), Code::PermissionDenied);
        // The audit record of what was shown stays.
        assert_eq!(accesses_of(&ts, MANCHESTER, &child).await.len(), 1);
        ts.suite.stop().await.unwrap();
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_check_ins_of_one_visit_make_one_episode_and_one_alert() {
    bounded(async {
        let ts = TestSuite::start().await;
        let (a, b) = (nhs(1201), nhs(1202));
        register(&ts, KENT, "KENT-1201", &a, PlanType::ChildProtection).await;
        register(&ts, KENT, "KENT-1202", &b, PlanType::ChildProtection).await;
        let now = Utc::now();

        // The same request sent eight times at once (a client retrying hard).
        let same = arrival("burst", &a, now);
        let answers = futures::future::join_all((0..8).map(|_| check_in(&ts, ALDER_HEY, same.clone()))).await;
        assert!(answers.iter().all(|x| *x == answers[0]));

        // Eight staff opening the same visit at once.
        let answers = futures::future::join_all(
            (0..8).map(|i| check_in(&ts, ALDER_HEY, arrival(&format!("staff-{i}"), &b, now))),
        )
        .await;
        assert!(answers.iter().all(|x| x.episode_id == answers[0].episode_id));

        outbox_drained(&ts).await;
        assert_eq!(alerts_of(&ts, KENT).await.len(), 2, "one alert per person");
        assert_eq!(accesses_of(&ts, KENT, &a).await.len(), 1);
        assert_eq!(accesses_of(&ts, KENT, &b).await.len(), 8);
        assert_eq!(count(&ts, "SELECT count(*) FROM attendance.episodes").await, 2);
        ts.suite.stop().await.unwrap();
    })
    .await
}

#[tokio::test]
async fn one_request_id_sent_at_once_for_two_people_records_only_one_of_them() {
    bounded(async {
        let ts = TestSuite::start().await;
        let (a, b) = (nhs(1301), nhs(1302));
        register(&ts, KENT, "KENT-1301", &a, PlanType::ChildProtection).await;
        register(&ts, KENT, "KENT-1302", &b, PlanType::ChildProtection).await;
        let now = Utc::now();
        let mut winners = std::collections::BTreeSet::new();
        for round in 0..4 {
            let id = format!("shared-{round}");
            let (for_a, for_b) = tokio::join!(
                try_check_in(&ts, ALDER_HEY, arrival(&id, &a, now)),
                try_check_in(&ts, ALDER_HEY, arrival(&id, &b, now)),
            );
            // The first to store its answer keeps the request_id; the other
            // is refused naming it, and nothing of its check-in remains.
            let (winner, answer, refused) = match (for_a, for_b) {
                (Ok(answer), Err(refused)) => (&a, answer, refused),
                (Err(refused), Ok(answer)) => (&b, answer, refused),
                other => panic!("expected one answer and one refusal, got {other:?}"),
            };
            assert!(answer.flagged);
            assert_eq!(refused.code(), Code::InvalidArgument);
            assert_eq!(violated_fields(&refused), ["request_id"]);
            winners.insert(winner.clone());
        }
        outbox_drained(&ts).await;
        let people = winners.len() as i64;
        assert_eq!(count(&ts, "SELECT count(*) FROM attendance.check_in_requests").await, 4);
        assert_eq!(count(&ts, "SELECT count(*) FROM attendance.accesses").await, 4);
        assert_eq!(count(&ts, "SELECT count(*) FROM attendance.episodes").await, people, "one episode per winner");
        assert_eq!(alerts_of(&ts, KENT).await.len() as i64, people, "one alert per winner's episode");
        for person in [&a, &b] {
            if !winners.contains(person) {
                assert_eq!(rows_mentioning(&ts, person).await, 0, "a refused check-in leaves no row");
            }
        }
        ts.suite.stop().await.unwrap();
    })
    .await
}
