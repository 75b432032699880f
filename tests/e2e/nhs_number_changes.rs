//! NHS number changes from the demographics feed: a superseded number's
//! plans flag on the replacement before any council re-uploads, each council
//! with a plan on it gets exactly one alert in its ordered stream (a repeated
//! event adds none), and a row using the old number is refused naming the
//! new one; an inactive number alerts once and keeps flagging.

use cpis_domain::identity::ServiceName;
use cpis_proto::attendance::v1::attendance_service_client::AttendanceServiceClient;
use cpis_proto::attendance::v1::{RecordNhsNumberChangeRequest, RecordNhsNumberChangeResponse};
use cpis_proto::common::v1::{NhsNumberChange, NhsNumberChangeKind};
use cpis_proto::notification::v1::{Alert, AlertKind, ListAlertsRequest};
use cpis_proto::registry::v1::{GetPlanRequest, SyncCompletion, SyncPlansRequest, UpsertPlanRequest};
use cpis_testkit::*;
use tonic::Code;
use tonic_types::StatusExt;

async fn register(ts: &TestSuite, council_code: &str, reference: &str, nhs_number: &str) {
    ts.registry(&council(council_code))
        .upsert_plan(UpsertPlanRequest { plan: Some(plan(reference, nhs_number)), expected_version: 0 })
        .await
        .expect("plan");
}

fn change(nhs_number: &str, replacement: Option<&str>, event_id: &str) -> NhsNumberChange {
    NhsNumberChange {
        nhs_number: nhs_number.into(),
        kind: if replacement.is_some() {
            NhsNumberChangeKind::Superseded as i32
        } else {
            NhsNumberChangeKind::Inactive as i32
        },
        replacement_nhs_number: replacement.unwrap_or_default().into(),
        effective_date: "2026-11-30".into(),
        event_id: event_id.into(),
    }
}

async fn record(ts: &TestSuite, c: NhsNumberChange) -> Result<RecordNhsNumberChangeResponse, tonic::Status> {
    let channel = ts.channel(ts.attendance_port(), &service(ServiceName::Demographics));
    AttendanceServiceClient::new(channel)
        .record_nhs_number_change(RecordNhsNumberChangeRequest { change: Some(c) })
        .await
        .map(|r| r.into_inner())
}

async fn alerts(ts: &TestSuite, council_code: &str) -> Vec<Alert> {
    let page = ts
        .notification(&council(council_code))
        .list_alerts(ListAlertsRequest { replay: true, page_size: 1000, ..Default::default() })
        .await
        .expect("ListAlerts");
    page.into_inner().alerts
}

/// Waits until the council has `n` alerts, and returns them.
async fn alerts_reach(ts: &TestSuite, council_code: &str, n: usize) -> Vec<Alert> {
    eventually(20, &format!("{n} alerts for {council_code}"), || async { alerts(ts, council_code).await.len() >= n })
        .await;
    alerts(ts, council_code).await
}

#[tokio::test]
async fn a_superseded_number_flags_on_its_replacement_alerts_each_council_once_and_refuses_the_old_number() {
    let ts = TestSuite::start().await;
    let (old, new) = (nhs(2601), nhs(2602));
    register(&ts, MANCHESTER, "MCR-OLD-1", &old).await;
    register(&ts, LIVERPOOL, "LIV-OLD-1", &old).await;
    assert!(!ts.attendance(&setting(ALDER_HEY)).check_in(arrival(&new)).await.unwrap().into_inner().flagged);

    let answer = record(&ts, change(&old, Some(&new), "pds-ev-1")).await.expect("the change is recorded");
    assert_eq!((answer.plans, answer.councils_alerted, answer.repeated), (2, 2, false));

    // Before any council re-uploads, the replacement number is flagged.
    let at_ed = ts.attendance(&setting(ALDER_HEY)).check_in(arrival(&new)).await.unwrap().into_inner();
    assert!(at_ed.flagged, "the replacement number flags the old number's plans");
    let mut councils: Vec<&str> = at_ed.flags.iter().map(|f| f.council_code.as_str()).collect();
    councils.sort_unstable();
    assert_eq!(councils, [MANCHESTER, LIVERPOOL]);

    // Each council: one NHS_NUMBER_SUPERSEDED alert, then the attendance, in sequence order.
    for (code, reference) in [(MANCHESTER, "MCR-OLD-1"), (LIVERPOOL, "LIV-OLD-1")] {
        let got = alerts_reach(&ts, code, 2).await;
        assert_eq!(got.len(), 2, "{code}: {got:?}");
        let (notice, attendance) = (&got[0], &got[1]);
        assert_eq!((notice.sequence, attendance.sequence), (1, 2), "in order, gapless");
        assert_eq!(notice.kind, AlertKind::NhsNumberSuperseded as i32);
        assert_eq!(notice.nhs_number, old);
        assert_eq!(notice.local_reference, reference);
        let n = notice.nhs_number_change.clone().expect("the notice");
        assert_eq!((n.replacement_nhs_number.as_str(), n.event_id.as_str()), (new.as_str(), "pds-ev-1"));
        assert_eq!(n.local_references, [reference]);
        assert_eq!(attendance.kind, AlertKind::Attendance as i32);
        assert_eq!(attendance.nhs_number, new, "the attendance is of the number checked in");
        assert_eq!(attendance.local_reference, reference);
    }

    // The same event again adds nothing; the same id for another change is refused.
    let again = record(&ts, change(&old, Some(&new), "pds-ev-1")).await.expect("a repeat is answered");
    assert!(again.repeated);
    assert_eq!(again.plans, 2);
    let other = record(&ts, change(&old, None, "pds-ev-1")).await.expect_err("another change under the same id");
    assert_eq!(other.code(), Code::InvalidArgument);
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert_eq!(alerts(&ts, MANCHESTER).await.len(), 2, "no second notice");

    // A row with the old number is refused, the replacement given in a field of its own.
    let refused = ts
        .registry(&council(MANCHESTER))
        .upsert_plan(UpsertPlanRequest { plan: Some(plan("MCR-OLD-2", &old)), expected_version: 0 })
        .await
        .expect_err("a superseded number");
    assert_eq!(refused.code(), Code::InvalidArgument);
    assert!(!refused.message().contains(&old) && !refused.message().contains(&new), "no NHS number in a message");
    let info = refused.get_error_details().error_info().cloned().expect("ErrorInfo");
    assert_eq!(info.reason, "SUPERSEDED_NHS_NUMBER");
    assert_eq!(info.metadata.get("replacement_nhs_number"), Some(&new));
    let bad = refused.get_error_details().bad_request().cloned().expect("BadRequest");
    assert_eq!(bad.field_violations[0].field, "plan.nhs_number");

    let rows = vec![
        SyncPlansRequest { plan: Some(plan("MCR-OLD-1", &old)), ..Default::default() },
        SyncPlansRequest { completion: Some(SyncCompletion { plan_rows: 1 }), ..Default::default() },
    ];
    let synced = ts
        .registry(&council(MANCHESTER))
        .sync_plans(futures::stream::iter(rows))
        .await
        .expect("the upload is answered")
        .into_inner();
    assert_eq!((synced.rejected, synced.ended), (1, 0), "refused, and the plan it names is not ended");
    let rejection = &synced.rejections[0];
    assert_eq!(
        (rejection.field.as_str(), rejection.replacement_nhs_number.as_str()),
        ("plan.nhs_number", new.as_str())
    );
    assert!(rejection.reason.starts_with("superseded NHS number"), "{}", rejection.reason);
    assert!(!rejection.reason.contains(&new));

    // The plan shows what the council must do; once it moves the plan to the
    // replacement, the child flags once per council on the new number.
    let stored = ts
        .registry(&council(MANCHESTER))
        .get_plan(GetPlanRequest { local_reference: "MCR-OLD-1".into() })
        .await
        .unwrap()
        .into_inner()
        .plan
        .expect("plan");
    let marked = stored.nhs_number_change.expect("the plan is marked for action");
    assert_eq!(
        (marked.kind, marked.replacement_nhs_number.as_str()),
        (NhsNumberChangeKind::Superseded as i32, new.as_str())
    );
    register(&ts, MANCHESTER, "MCR-OLD-1", &new).await;
    let later = ts.attendance(&setting(OTHER_SETTING)).check_in(arrival(&new)).await.unwrap().into_inner();
    assert_eq!(later.flags.len(), 2, "one flag per council, not two for Manchester");
    ts.suite.stop().await.unwrap();
}

#[tokio::test]
async fn an_inactive_number_alerts_once_keeps_flagging_and_is_accepted_with_a_warning() {
    let ts = TestSuite::start().await;
    let adopted = nhs(2611);
    register(&ts, KENT, "KNT-INACTIVE-1", &adopted).await;
    let answer = record(&ts, change(&adopted, None, "pds-ev-2")).await.expect("recorded");
    assert_eq!((answer.plans, answer.councils_alerted), (1, 1));
    let got = alerts_reach(&ts, KENT, 1).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].kind, AlertKind::NhsNumberInactive as i32);
    assert_eq!(got[0].local_reference, "KNT-INACTIVE-1");
    assert!(got[0].nhs_number_change.as_ref().is_some_and(|n| n.replacement_nhs_number.is_empty()));
    assert!(got[0].episode.is_none(), "no attendance behind it");

    assert!(
        ts.attendance(&setting(ALDER_HEY)).check_in(arrival(&adopted)).await.unwrap().into_inner().flagged,
        "an inactive number keeps flagging"
    );
    let upserted = ts
        .registry(&council(KENT))
        .upsert_plan(UpsertPlanRequest { plan: Some(plan("KNT-INACTIVE-2", &adopted)), expected_version: 0 })
        .await
        .expect("accepted")
        .into_inner();
    assert_eq!(upserted.warnings.len(), 1);
    assert_eq!(upserted.warnings[0].field, "plan.nhs_number");
    assert!(upserted.warnings[0].reason.starts_with("inactive NHS number"));
    assert!(upserted
        .plan
        .and_then(|p| p.nhs_number_change)
        .is_some_and(|c| c.kind == NhsNumberChangeKind::Inactive as i32));

    // Refusals of the feed's own messages name the field.
    let mut bad = change(&adopted, Some(&adopted), "pds-ev-3");
    bad.effective_date = "30/11/2026".into();
    let refused = record(&ts, bad).await.expect_err("bad change");
    assert_eq!(refused.code(), Code::InvalidArgument);
    let fields: Vec<String> =
        refused.get_error_details().bad_request().unwrap().field_violations.iter().map(|v| v.field.clone()).collect();
    assert_eq!(fields, ["change.replacement_nhs_number", "change.effective_date"]);
    // Only the demographics feed may record a change.
    let as_council = AttendanceServiceClient::new(ts.channel(ts.attendance_port(), &council(KENT)))
        .record_nhs_number_change(RecordNhsNumberChangeRequest { change: Some(change(&adopted, None, "pds-ev-4")) })
        .await
        .expect_err("a council");
    assert_eq!(as_council.code(), Code::PermissionDenied);
    ts.suite.stop().await.unwrap();
}
