//! Episodes are need-to-know: a setting sees a person's episodes only while
//! the person holds a flag in scope, and each such read is audited; a
//! council sees only episodes since its own plan began.

use chrono::{TimeDelta, Utc};
use cpis_proto::attendance::v1::{CheckInRequest, ListAccessesRequest, ListEpisodesRequest};
use cpis_proto::registry::v1::{Plan, UpsertPlanRequest};
use cpis_testkit::*;

async fn register(ts: &TestSuite, council_code: &str, plan: Plan) {
    ts.registry(&council(council_code))
        .upsert_plan(UpsertPlanRequest { plan: Some(plan), expected_version: 0 })
        .await
        .expect("UpsertPlan");
}

async fn episodes(ts: &TestSuite, caller: &cpis_runtime::Caller, nhs_number: &str) -> Vec<String> {
    ts.attendance(caller)
        .list_episodes(ListEpisodesRequest {
            nhs_number: nhs_number.into(),
            page_size: 0,
            page_token: String::new(),
            ..Default::default()
        })
        .await
        .expect("ListEpisodes")
        .into_inner()
        .episodes
        .into_iter()
        .map(|e| e.episode_id)
        .collect()
}

fn arriving_hours_ago(nhs_number: &str, hours: i64) -> CheckInRequest {
    CheckInRequest {
        arrived_at: Some(cpis_domain::time::to_timestamp(Utc::now() - TimeDelta::hours(hours))),
        ..arrival(nhs_number)
    }
}

#[tokio::test]
async fn a_setting_sees_no_episodes_of_a_person_whose_plan_is_out_of_scope() {
    let ts = TestSuite::start().await;
    let child = nhs(5001);
    register(&ts, MANCHESTER, plan("M-5001", &child)).await;
    let episode = ts.attendance(&setting(ALDER_HEY)).check_in(arrival(&child)).await.unwrap().into_inner().episode_id;
    assert_eq!(episodes(&ts, &setting(OTHER_SETTING), &child).await, [episode], "in scope: shown");
    // The plan ended more than 12 months ago: out of scope.
    let db = ts.db().await;
    db.execute(
        "UPDATE registry.plans SET end_date = (now() - interval '13 months')::date, start_date = DATE '2020-01-01'",
        &[],
    )
    .await
    .unwrap();
    let accesses_before: i64 = db.query_one("SELECT count(*) FROM attendance.accesses", &[]).await.unwrap().get(0);
    assert!(episodes(&ts, &setting(OTHER_SETTING), &child).await.is_empty(), "the same answer as no episodes");
    let accesses_after: i64 = db.query_one("SELECT count(*) FROM attendance.accesses", &[]).await.unwrap().get(0);
    assert_eq!(accesses_before, accesses_after, "nothing recorded about a person out of scope");
    // A person never flagged gets the very same answer.
    assert!(episodes(&ts, &setting(OTHER_SETTING), &nhs(5002)).await.is_empty());
    ts.suite.stop().await.unwrap();
}

#[tokio::test]
async fn a_council_that_registers_a_plan_today_sees_no_episode_from_before_it() {
    let ts = TestSuite::start().await;
    let child = nhs(5003);
    register(&ts, KENT, plan("K-5003", &child)).await;
    // Two days ago, on Kent's plan.
    let before = ts.attendance(&setting(ALDER_HEY)).check_in(arriving_hours_ago(&child, 48)).await.unwrap();
    let before = before.into_inner().episode_id;
    // Liverpool registers the child today.
    let today = cpis_domain::time::today_in_london().to_string();
    register(&ts, LIVERPOOL, Plan { start_date: today, ..plan("L-5003", &child) }).await;
    assert!(episodes(&ts, &council(LIVERPOOL), &child).await.is_empty(), "nothing from before its plan");
    assert_eq!(episodes(&ts, &council(KENT), &child).await, std::slice::from_ref(&before), "Kent's plan covers it");
    let after = ts.attendance(&setting(OTHER_SETTING)).check_in(arrival(&child)).await.unwrap().into_inner().episode_id;
    assert_eq!(episodes(&ts, &council(LIVERPOOL), &child).await, std::slice::from_ref(&after));
    assert_eq!(episodes(&ts, &council(KENT), &child).await, [after, before]);
    ts.suite.stop().await.unwrap();
}

#[tokio::test]
async fn every_read_of_episodes_by_a_setting_is_in_the_councils_access_history() {
    let ts = TestSuite::start().await;
    let child = nhs(5004);
    register(&ts, MANCHESTER, plan("M-5004", &child)).await;
    ts.attendance(&setting(ALDER_HEY)).check_in(arrival(&child)).await.unwrap();
    for _ in 0..3 {
        episodes(&ts, &setting(OTHER_SETTING), &child).await;
    }
    let accesses = ts
        .attendance(&council(MANCHESTER))
        .list_accesses(ListAccessesRequest { nhs_number: child.clone(), page_size: 0, page_token: String::new() })
        .await
        .unwrap()
        .into_inner()
        .accesses;
    let reads: Vec<_> = accesses.iter().filter(|a| a.episodes_read).collect();
    assert_eq!(reads.len(), 3, "each read is an access");
    assert!(reads.iter().all(|a| a.setting_code == OTHER_SETTING
        && a.viewer
            .as_ref()
            .is_some_and(|v| v.verified && v.name == TEST_CLINICIAN && v.organisation_code == OTHER_SETTING)
        && a.episode_id.is_empty()
        && !a.silent
        && a.accessed_at.is_some()));
    assert_eq!(accesses.iter().filter(|a| !a.episodes_read).count(), 1, "and the check-in itself");
    // A setting must say who reads: without a user token, nothing is shown.
    let status = ts
        .attendance_with(&setting(OTHER_SETTING), UserHeaders::default())
        .list_episodes(ListEpisodesRequest { nhs_number: child.clone(), ..Default::default() })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unauthenticated);
    ts.suite.stop().await.unwrap();
}
