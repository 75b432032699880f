//! "Was not brought": a scheduled-care setting records a missed appointment.
//! A flagged child's record alerts each responsible council once, with the
//! count of appointments missed in 90 days and, from the second, the raised
//! priority; an unflagged person leaves nothing, and the answer is the same.

use chrono::{TimeDelta, Utc};
use cpis_devkit::users::TokenSpec;
use cpis_proto::attendance::v1::{ListAccessesRequest, RecordWasNotBroughtRequest};
use cpis_proto::common::v1::SettingType;
use cpis_proto::notification::v1::{Alert, AlertKind, AlertPriority, ListAlertsRequest};
use cpis_proto::registry::v1::UpsertPlanRequest;
use cpis_testkit::*;
use tonic::Code;
use tonic_types::StatusExt;

const GP: &str = "Y01234";
const HEALTH_VISITING: &str = "Y05678";

fn missed(nhs_number: &str, hours_ago: i64, setting_type: SettingType) -> RecordWasNotBroughtRequest {
    RecordWasNotBroughtRequest {
        request_id: uuid::Uuid::new_v4().to_string(),
        nhs_number: nhs_number.into(),
        appointment_at: Some(cpis_domain::time::to_timestamp(Utc::now() - TimeDelta::hours(hours_ago))),
        setting_type: setting_type as i32,
    }
}

/// A client of the scheduled-care setting `code`, as a health visitor whose role allows silent reads (B0170).
fn recorder(ts: &TestSuite, code: &str) -> AttendanceClient {
    let spec =
        TokenSpec { name: "Hana Health Visitor".into(), job_role: "R8003".into(), ..TokenSpec::new(code, &["B0170"]) };
    ts.attendance_with(&setting(code), UserHeaders::of(Some(&ts.user_token_for(&spec))))
}

async fn alerts(ts: &TestSuite, council_code: &str) -> Vec<Alert> {
    let page = ts
        .notification(&council(council_code))
        .list_alerts(ListAlertsRequest { replay: true, page_size: 1000, ..Default::default() })
        .await
        .expect("ListAlerts");
    page.into_inner().alerts
}

async fn mentions(ts: &TestSuite, nhs_number: &str) -> i64 {
    let db = ts.db().await;
    let mut n = 0;
    for table in ["accesses", "outbox", "episodes"] {
        let sql = format!("SELECT count(*) FROM attendance.{table} WHERE nhs_number = $1");
        n += db.query_one(&sql, &[&nhs_number]).await.unwrap().get::<_, i64>(0);
    }
    n
}

#[tokio::test]
async fn a_missed_appointment_alerts_each_council_once_raising_the_priority_from_the_second() {
    let ts = TestSuite::start().await;
    let child = nhs(2621);
    for (code, reference) in [(MANCHESTER, "MCR-WNB-1"), (LIVERPOOL, "LIV-WNB-1")] {
        ts.registry(&council(code))
            .upsert_plan(UpsertPlanRequest { plan: Some(plan(reference, &child)), expected_version: 0 })
            .await
            .unwrap();
    }
    let first = recorder(&ts, GP).record_was_not_brought(missed(&child, 30, SettingType::GpPractice)).await;
    assert_eq!(first.expect("recorded").into_inner(), Default::default(), "an empty answer");
    let second = missed(&child, 2, SettingType::ZeroToNineteenServices);
    recorder(&ts, HEALTH_VISITING).record_was_not_brought(second).await.expect("recorded");

    for (code, reference) in [(MANCHESTER, "MCR-WNB-1"), (LIVERPOOL, "LIV-WNB-1")] {
        eventually(20, "the councils' alerts", || async { alerts(&ts, code).await.len() >= 2 }).await;
        let got = alerts(&ts, code).await;
        let wnb: Vec<&Alert> = got.iter().filter(|a| a.kind == AlertKind::WasNotBrought as i32).collect();
        assert_eq!(wnb.len(), got.len(), "{code}: only missed appointments: {got:?}");
        let counts: Vec<i32> =
            wnb.iter().map(|a| a.was_not_brought.as_ref().expect("the record").missed_in_last_90_days).collect();
        let priorities: Vec<i32> = wnb.iter().map(|a| a.priority).collect();
        let sequences: Vec<i64> = wnb.iter().map(|a| a.sequence).collect();
        assert_eq!(sequences, (1..=wnb.len() as i64).collect::<Vec<_>>(), "{code}: gapless, in order");
        assert_eq!(counts, [1, 2], "{code}: missed appointments in the last 90 days");
        assert_eq!(
            priorities,
            [AlertPriority::Routine as i32, AlertPriority::RepeatAttendance as i32],
            "{code}: raised from the second"
        );
        let last = wnb.last().unwrap();
        assert_eq!(last.local_reference, reference);
        assert!(last.episode.is_none(), "no attendance");
        let record = last.was_not_brought.as_ref().unwrap();
        assert_eq!(
            (record.setting_code.as_str(), record.setting_type),
            (HEALTH_VISITING, SettingType::ZeroToNineteenServices as i32)
        );
        let viewer = last.viewer.as_ref().expect("who recorded it");
        assert_eq!((viewer.name.as_str(), viewer.job_role_code.as_str()), ("Hana Health Visitor", "R8003"));
    }
    // The council sees the records in its access history.
    let history = ts
        .attendance(&council(MANCHESTER))
        .list_accesses(ListAccessesRequest { nhs_number: child.clone(), ..Default::default() })
        .await
        .unwrap()
        .into_inner()
        .accesses;
    let records: Vec<_> = history.iter().filter(|a| a.was_not_brought).collect();
    assert_eq!(records.len(), 2, "one access per record");
    assert!(records.iter().all(|a| a.appointment_at.is_some() && a.episode_id.is_empty()));
    ts.suite.stop().await.unwrap();
}

#[tokio::test]
async fn a_repeat_adds_nothing_an_unflagged_person_leaves_no_trace_and_bad_times_are_refused() {
    let ts = TestSuite::start().await;
    let (child, stranger) = (nhs(2631), nhs(2632));
    ts.registry(&council(KENT))
        .upsert_plan(UpsertPlanRequest { plan: Some(plan("KNT-WNB-1", &child)), expected_version: 0 })
        .await
        .unwrap();
    let at = Utc::now() - TimeDelta::hours(5);
    let request = RecordWasNotBroughtRequest {
        request_id: "wnb-a".into(),
        nhs_number: child.clone(),
        appointment_at: Some(cpis_domain::time::to_timestamp(at)),
        setting_type: SettingType::GpPractice as i32,
    };
    recorder(&ts, GP).record_was_not_brought(request.clone()).await.expect("recorded");
    let again = RecordWasNotBroughtRequest { request_id: "wnb-b".into(), ..request };
    recorder(&ts, GP).record_was_not_brought(again).await.expect("a repeat is answered the same");
    eventually(20, "Kent's alert", || async { !alerts(&ts, KENT).await.is_empty() }).await;
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert_eq!(alerts(&ts, KENT).await.len(), 1, "the same appointment alerts once");

    // Someone with no plan: the same empty answer, and nothing stored.
    let answer = recorder(&ts, GP).record_was_not_brought(missed(&stranger, 3, SettingType::GpPractice)).await;
    assert_eq!(answer.expect("answered").into_inner(), Default::default());
    assert_eq!(mentions(&ts, &stranger).await, 0, "nothing about the person is stored");

    // In the future, or more than 7 days back: refused, naming the field.
    for (hours_ago, what) in [(-2, "in the future"), (8 * 24, "eight days back")] {
        let refused =
            recorder(&ts, GP).record_was_not_brought(missed(&child, hours_ago, SettingType::GpPractice)).await;
        let status = refused.expect_err(what);
        assert_eq!(status.code(), Code::InvalidArgument, "{what}");
        let fields: Vec<String> = status
            .get_error_details()
            .bad_request()
            .unwrap()
            .field_violations
            .iter()
            .map(|v| v.field.clone())
            .collect();
        assert_eq!(fields, ["appointment_at"], "{what}");
        assert!(!status.message().contains(&child));
    }
    // Unscheduled care records no missed appointment; a role without either activity may not.
    let refused = recorder(&ts, GP).record_was_not_brought(missed(&child, 1, SettingType::EmergencyDepartment)).await;
    assert_eq!(refused.unwrap_err().code(), Code::InvalidArgument);
    let no_activity = ts.attendance_with(&setting(GP), UserHeaders::of(Some(&ts.user_token(GP, &["B0264"]))));
    let refused = no_activity.clone().record_was_not_brought(missed(&child, 1, SettingType::GpPractice)).await;
    assert_eq!(refused.unwrap_err().code(), Code::PermissionDenied);
    assert_eq!(alerts(&ts, KENT).await.len(), 1, "refusals alert nobody");
    ts.suite.stop().await.unwrap();
}
