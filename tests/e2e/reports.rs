//! Reports: a council's figures equal the counts of what happened, and the
//! national report for an analyst withholds counts of 1 to 4 (a
//! council-month count of 3 is suppressed, one of 7 shown). Each part comes
//! from the service that owns the data.

use cpis_domain::identity::{Caller, CallerKind, ServiceName};
use cpis_proto::attendance::v1::attendance_service_client::AttendanceServiceClient;
use cpis_proto::attendance::v1::{
    AccessMonth, RecordNhsNumberChangeRequest, RecordWasNotBroughtRequest, ReportAccessesRequest, SilentReadRequest,
};
use cpis_proto::common::v1::{Count, NhsNumberChange, NhsNumberChangeKind, PlanType, SettingType};
use cpis_proto::notification::v1::notification_service_client::NotificationServiceClient;
use cpis_proto::notification::v1::{AckAlertsRequest, AlertKind, ListAlertsRequest, ReportAlertsRequest};
use cpis_proto::registry::v1::registry_service_client::RegistryServiceClient;
use cpis_proto::registry::v1::{EndPlanRequest, Plan, ReportPlansRequest, UpsertPlanRequest};
use cpis_testkit::*;
use tonic::Code;

fn exact(n: i64) -> Option<Count> {
    Some(Count { value: n, suppressed: false })
}

fn withheld() -> Option<Count> {
    Some(Count { value: 0, suppressed: true })
}

async fn register(ts: &TestSuite, council_code: &str, p: Plan) {
    ts.registry(&council(council_code))
        .upsert_plan(UpsertPlanRequest { plan: Some(p), expected_version: 0 })
        .await
        .expect("plan");
}

async fn alert_count(ts: &TestSuite, council_code: &str) -> usize {
    let page = ts
        .notification(&council(council_code))
        .list_alerts(ListAlertsRequest { replay: true, page_size: 1000, ..Default::default() })
        .await
        .unwrap();
    page.into_inner().alerts.len()
}

fn by_type(month: &AccessMonth, unscheduled: bool, t: SettingType) -> Option<Count> {
    let list = if unscheduled { &month.check_ins } else { &month.silent_reads };
    list.iter().find(|c| c.setting_type == t as i32).and_then(|c| c.count)
}

#[tokio::test]
async fn a_councils_report_counts_what_happened_and_the_national_report_withholds_small_counts() {
    let ts = TestSuite::start().await;
    let today = cpis_domain::time::today_in_london();
    let month =
        cpis_domain::report::month_label(cpis_domain::report::parse_month(&today.format("%Y-%m").to_string()).unwrap());
    let started = |reference: &str, nhs_number: &str, plan_type: PlanType| Plan {
        plan_type: plan_type as i32,
        start_date: today.to_string(),
        date_of_birth: if plan_type == PlanType::UnbornChildProtection { String::new() } else { "2016-04-02".into() },
        expected_delivery_date: if plan_type == PlanType::UnbornChildProtection {
            (today + chrono::TimeDelta::days(100)).to_string()
        } else {
            String::new()
        },
        ..plan(reference, nhs_number)
    };
    // Manchester: 5 child protection, 1 looked-after and 1 unborn plan started
    // this month, and an older plan ended this month.
    let children: Vec<String> = (0..7).map(|i| nhs(2701 + i)).collect();
    for (i, child) in children.iter().enumerate() {
        let kind = match i {
            5 => PlanType::LookedAfter,
            6 => PlanType::UnbornChildProtection,
            _ => PlanType::ChildProtection,
        };
        register(&ts, MANCHESTER, started(&format!("MCR-R-{i}"), child, kind)).await;
    }
    register(&ts, MANCHESTER, plan("MCR-R-OLD", &nhs(2710))).await;
    ts.registry(&council(MANCHESTER))
        .end_plan(EndPlanRequest { local_reference: "MCR-R-OLD".into(), end_date: today.to_string() })
        .await
        .unwrap();
    // Liverpool: 3 child protection plans this month.
    let theirs: Vec<String> = (0..3).map(|i| nhs(2721 + i)).collect();
    for (i, child) in theirs.iter().enumerate() {
        register(&ts, LIVERPOOL, started(&format!("LIV-R-{i}"), child, PlanType::ChildProtection)).await;
    }
    // One Manchester number made inactive: that plan needs action.
    AttendanceServiceClient::new(ts.channel(ts.attendance_port(), &service(ServiceName::Demographics)))
        .record_nhs_number_change(RecordNhsNumberChangeRequest {
            change: Some(NhsNumberChange {
                nhs_number: children[0].clone(),
                kind: NhsNumberChangeKind::Inactive as i32,
                effective_date: today.to_string(),
                event_id: "report-ev-1".into(),
                ..Default::default()
            }),
        })
        .await
        .unwrap();

    // 7 check-ins of Manchester's children at an emergency department, one
    // more at a walk-in centre; 3 of Liverpool's; 2 silent reads; 1 missed appointment.
    for child in &children {
        ts.attendance(&setting(ALDER_HEY)).check_in(arrival(child)).await.unwrap();
    }
    let mut walk_in = arrival(&children[1]);
    walk_in.setting_type = SettingType::WalkInCentre as i32;
    ts.attendance(&setting(OTHER_SETTING)).check_in(walk_in).await.unwrap();
    for child in &theirs {
        ts.attendance(&setting(ALDER_HEY)).check_in(arrival(child)).await.unwrap();
    }
    for child in &children[2..4] {
        let read = SilentReadRequest {
            request_id: uuid::Uuid::new_v4().to_string(),
            nhs_number: child.clone(),
            setting_type: SettingType::GpPractice as i32,
            ..Default::default()
        };
        ts.attendance(&setting("Y01234")).silent_read(read).await.unwrap();
    }
    let missed = RecordWasNotBroughtRequest {
        request_id: "report-wnb".into(),
        nhs_number: children[4].clone(),
        appointment_at: Some(cpis_domain::time::to_timestamp(chrono::Utc::now() - chrono::TimeDelta::minutes(30))),
        setting_type: SettingType::GpPractice as i32,
    };
    ts.attendance(&setting("Y01234")).record_was_not_brought(missed).await.unwrap();
    // Manchester: 8 attendances, 1 missed appointment, 1 NHS number notice.
    eventually(30, "Manchester's 10 alerts", || async { alert_count(&ts, MANCHESTER).await == 10 }).await;
    eventually(30, "Liverpool's 3 alerts", || async { alert_count(&ts, LIVERPOOL).await == 3 }).await;
    ts.notification(&council(MANCHESTER)).ack_alerts(AckAlertsRequest { up_to_sequence: 6 }).await.unwrap();

    let range = || (month.clone(), month.clone());
    // Manchester's own report: exact.
    let (from_month, to_month) = range();
    let plans = ts
        .registry(&council(MANCHESTER))
        .report_plans(ReportPlansRequest { from_month, to_month })
        .await
        .unwrap()
        .into_inner()
        .months;
    assert_eq!(plans.len(), 1, "one row: Manchester, this month");
    let p = &plans[0];
    assert_eq!((p.council_code.as_str(), p.month.as_str()), (MANCHESTER, month.as_str()));
    assert_eq!((p.open_child_protection, p.open_looked_after, p.open_unborn), (exact(5), exact(1), exact(1)));
    assert_eq!((p.started, p.ended, p.needing_action), (exact(7), exact(1), exact(1)));
    assert!((p.nhs_number_quality.expect("quality") - 6.0 / 7.0).abs() < 1e-9);

    let (from_month, to_month) = range();
    let accesses = ts
        .attendance(&council(MANCHESTER))
        .report_accesses(ReportAccessesRequest { from_month, to_month })
        .await
        .unwrap()
        .into_inner()
        .months;
    let a = &accesses[0];
    assert_eq!(by_type(a, true, SettingType::EmergencyDepartment), exact(7));
    assert_eq!(by_type(a, true, SettingType::WalkInCentre), exact(1));
    assert_eq!(by_type(a, false, SettingType::GpPractice), exact(2));
    assert_eq!(a.missed_appointments, exact(1));

    let (from_month, to_month) = range();
    let alerts = ts
        .notification(&council(MANCHESTER))
        .report_alerts(ReportAlertsRequest { from_month, to_month })
        .await
        .unwrap()
        .into_inner()
        .months;
    let n = &alerts[0];
    assert_eq!((n.sent, n.acknowledged), (exact(10), exact(6)));
    let kinds: Vec<(i32, Option<Count>)> = n.by_kind.iter().map(|k| (k.kind, k.count)).collect();
    assert_eq!(
        kinds,
        [
            (AlertKind::Attendance as i32, exact(8)),
            (AlertKind::WasNotBrought as i32, exact(1)),
            (AlertKind::NhsNumberInactive as i32, exact(1))
        ]
    );
    let (median, p95) = (n.median_seconds_to_acknowledge.expect("median"), n.p95_seconds_to_acknowledge.expect("p95"));
    assert!(0.0 <= median && median <= p95 && p95 < 120.0, "median {median} s, p95 {p95} s");

    // The national report: every council, counts of 1 to 4 withheld.
    let analyst = Caller::from_parts(CallerKind::Analyst, "NHSE").unwrap();
    let (from_month, to_month) = range();
    let national = RegistryServiceClient::new(ts.channel(ts.registry_port(), &analyst))
        .report_plans(ReportPlansRequest { from_month, to_month })
        .await
        .unwrap()
        .into_inner()
        .months;
    let liverpool = national.iter().find(|m| m.council_code == LIVERPOOL).expect("Liverpool's row");
    assert_eq!(liverpool.open_child_protection, withheld(), "a count of 3 is suppressed");
    let manchester = national.iter().find(|m| m.council_code == MANCHESTER).expect("Manchester's row");
    assert_eq!(manchester.started, exact(7), "a count of 7 is shown");
    assert_eq!(manchester.open_child_protection, exact(5));
    assert_eq!(manchester.needing_action, withheld());
    assert_eq!(manchester.nhs_number_quality, None, "a share that would disclose a withheld count is left out");
    let (from_month, to_month) = range();
    let national = AttendanceServiceClient::new(ts.channel(ts.attendance_port(), &analyst))
        .report_accesses(ReportAccessesRequest { from_month, to_month })
        .await
        .unwrap()
        .into_inner()
        .months;
    let manchester = national.iter().find(|m| m.council_code == MANCHESTER).unwrap();
    let liverpool = national.iter().find(|m| m.council_code == LIVERPOOL).unwrap();
    assert_eq!(by_type(manchester, true, SettingType::EmergencyDepartment), exact(7), "7 shown");
    assert_eq!(by_type(liverpool, true, SettingType::EmergencyDepartment), withheld(), "3 suppressed");
    let (from_month, to_month) = range();
    let national = NotificationServiceClient::new(ts.channel(ts.notification_port(), &analyst))
        .report_alerts(ReportAlertsRequest { from_month, to_month })
        .await
        .unwrap()
        .into_inner()
        .months;
    let liverpool = national.iter().find(|m| m.council_code == LIVERPOOL).unwrap();
    assert_eq!(liverpool.sent, withheld());
    assert_eq!(liverpool.median_seconds_to_acknowledge, None);

    // A council sees only its own; settings see no report; bad months are named.
    let (from_month, to_month) = range();
    let own = ts
        .registry(&council(LIVERPOOL))
        .report_plans(ReportPlansRequest { from_month, to_month })
        .await
        .unwrap()
        .into_inner()
        .months;
    assert!(own.iter().all(|m| m.council_code == LIVERPOOL) && own[0].open_child_protection == exact(3));
    let refused = ts
        .attendance(&setting(ALDER_HEY))
        .report_accesses(ReportAccessesRequest { from_month: month.clone(), to_month: month.clone() })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied);
    let bad = ts
        .registry(&council(MANCHESTER))
        .report_plans(ReportPlansRequest { from_month: "2026-13".into(), to_month: month.clone() })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);
    assert!(bad.message().contains("from_month"), "{}", bad.message());
    ts.suite.stop().await.unwrap();
}
