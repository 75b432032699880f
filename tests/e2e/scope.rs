//! Which day it is and when scope ends: days in Europe/London, no flag on an
//! adult from a child's plan, unborn plans ending after the expected
//! delivery, and arrivals reported as they happen.

use chrono::{DateTime, Datelike, NaiveDate, TimeDelta, TimeZone, Utc};
use cpis_proto::attendance::v1::CheckInRequest;
use cpis_proto::common::v1::PlanType;
use cpis_proto::registry::v1::{Plan, UpsertPlanRequest};
use cpis_testkit::*;
use tonic::Code;
use tonic_types::StatusExt;

async fn register(ts: &TestSuite, plan: Plan) {
    ts.registry(&council(MANCHESTER))
        .upsert_plan(UpsertPlanRequest { plan: Some(plan), expected_version: 0 })
        .await
        .expect("UpsertPlan");
}

fn arriving(nhs_number: &str, at: DateTime<Utc>) -> CheckInRequest {
    CheckInRequest { arrived_at: Some(cpis_domain::time::to_timestamp(at)), ..arrival(nhs_number) }
}

async fn flagged(ts: &TestSuite, request: CheckInRequest) -> bool {
    ts.attendance(&setting(ALDER_HEY)).check_in(request).await.expect("CheckIn").into_inner().flagged
}

#[tokio::test]
async fn an_arrival_at_half_past_midnight_in_summer_time_on_the_start_date_is_flagged() {
    let ts = TestSuite::start_accepting_arrivals_from(800).await;
    let child = nhs(3001);
    let last_summer = Utc::now().year() - 1;
    let start = NaiveDate::from_ymd_opt(last_summer, 7, 1).unwrap();
    register(&ts, Plan { start_date: start.to_string(), ..plan("M-3001", &child) }).await;
    // 00:30 BST on 1 July is 23:30 UTC on 30 June: in England it is the start date.
    let half_past_midnight = Utc.with_ymd_and_hms(last_summer, 6, 30, 23, 30, 0).unwrap();
    assert!(flagged(&ts, arriving(&child, half_past_midnight)).await, "flagged on its first day in England");
    // The evening before (22:30 BST) is still 30 June in England.
    let evening_before = Utc.with_ymd_and_hms(last_summer, 6, 30, 21, 30, 0).unwrap();
    assert!(!flagged(&ts, arriving(&child, evening_before)).await, "not flagged the day before");
    ts.suite.stop().await.unwrap();
}

#[tokio::test]
async fn an_open_ended_plan_stops_flagging_at_the_eighteenth_birthday() {
    let ts = TestSuite::start().await;
    let today = cpis_domain::time::today_in_london();
    let eighteen_today = today.with_year(today.year() - 18).unwrap_or(today - TimeDelta::days(365 * 18 + 4));
    let adult = nhs(3002);
    let minor = nhs(3003);
    register(&ts, Plan { date_of_birth: eighteen_today.to_string(), ..plan("M-3002", &adult) }).await;
    register(&ts, Plan { date_of_birth: (eighteen_today + TimeDelta::days(1)).to_string(), ..plan("M-3003", &minor) })
        .await;
    assert!(!flagged(&ts, arrival(&adult)).await, "an 18-year-old is not flagged by a child's plan");
    assert!(flagged(&ts, arrival(&minor)).await, "a 17-year-old still is");
    for plan_type in [PlanType::LookedAfter] {
        let adult_in_care = nhs(3004);
        register(
            &ts,
            Plan {
                plan_type: plan_type as i32,
                date_of_birth: eighteen_today.to_string(),
                ..plan("M-3004", &adult_in_care)
            },
        )
        .await;
        assert!(!flagged(&ts, arrival(&adult_in_care)).await, "leaving care at 18 ends the flag");
    }
    ts.suite.stop().await.unwrap();
}

#[tokio::test]
async fn an_unborn_plan_stops_flagging_28_days_after_the_expected_delivery() {
    let ts = TestSuite::start().await;
    let today = cpis_domain::time::today_in_london();
    let unborn = |reference: &str, nhs_number: &str, edd: NaiveDate| Plan {
        plan_type: PlanType::UnbornChildProtection as i32,
        date_of_birth: String::new(),
        start_date: (edd - TimeDelta::days(200)).to_string(),
        expected_delivery_date: edd.to_string(),
        ..plan(reference, nhs_number)
    };
    let days = i64::from(cpis_registry::DEFAULT_UNBORN_SCOPE_DAYS);
    assert_eq!(days, 28, "the national service's 28 days");
    let (past, within) = (nhs(3005), nhs(3006));
    register(&ts, unborn("M-3005", &past, today - TimeDelta::days(days + 1))).await;
    register(&ts, unborn("M-3006", &within, today - TimeDelta::days(days))).await;
    assert!(!flagged(&ts, arrival(&past)).await, "out of scope 29 days after the expected delivery");
    assert!(flagged(&ts, arrival(&within)).await, "in scope until then");
    ts.suite.stop().await.unwrap();
}

#[tokio::test]
async fn an_arrival_backdated_beyond_the_window_is_refused_naming_arrived_at() {
    let ts = TestSuite::start().await;
    let child = nhs(3007);
    register(&ts, plan("M-3007", &child)).await;
    let mut attendance = ts.attendance(&setting(ALDER_HEY));
    let status = attendance
        .check_in(arriving(&child, Utc::now() - TimeDelta::hours(73)))
        .await
        .expect_err("73 hours back is outside the 72-hour window");
    assert_eq!(status.code(), Code::InvalidArgument);
    let fields: Vec<String> = status
        .get_details_bad_request()
        .expect("field violations")
        .field_violations
        .into_iter()
        .map(|v| v.field)
        .collect();
    assert_eq!(fields, ["arrived_at"]);
    assert!(!status.message().contains(&child));
    // Nothing was stored, and an arrival within the window is served.
    assert!(flagged(&ts, arriving(&child, Utc::now() - TimeDelta::hours(71))).await);
    let episodes: i64 = ts.db().await.query_one("SELECT count(*) FROM attendance.episodes", &[]).await.unwrap().get(0);
    assert_eq!(episodes, 1);
    ts.suite.stop().await.unwrap();
}
