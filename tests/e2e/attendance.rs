//! End-to-end tests of the Attendance service: check-in as a setting sees it,
//! the alerts councils receive, the access audit, and the helpers the other
//! Attendance files share (`attendance_episodes.rs`: what counts as an
//! episode; `attendance_outages.rs`: the Registry or the Notification service
//! down).

use chrono::{DateTime, TimeDelta, Utc};
use cpis::suite::{RunningService, ServiceConfigs};
use cpis_domain::time::{from_timestamp, to_timestamp};
use cpis_proto::attendance::v1::{
    AccessRecord, CheckInRequest, CheckInResponse, ListAccessesRequest, ListEpisodesRequest,
};
use cpis_proto::common::v1::{ContactDetails, Episode, PlanType, SettingType};
use cpis_proto::notification::v1::{
    subscribe_response::Event, Alert, AlertPriority, ListAlertsRequest, SubscribeRequest,
};
use cpis_proto::registry::v1::{Plan, UpsertPlanRequest};
use cpis_testkit::*;
use std::future::Future;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tonic::Code;
use tonic_types::StatusExt;

/// No test may run longer than this.
pub(crate) const TEST_LIMIT: Duration = Duration::from_secs(120);

/// How long to wait for something asynchronous (an alert) to happen.
pub(crate) const WAIT: Duration = Duration::from_secs(30);

pub(crate) async fn bounded(test: impl Future<Output = ()>) {
    tokio::time::timeout(TEST_LIMIT, test).await.expect("test did not finish in time");
}

/// Settings that make the relay retry quickly, so outage tests are short.
pub(crate) fn quick_retries() -> ServiceConfigs {
    ServiceConfigs {
        notification: notification_settings(Duration::from_millis(500)),
        attendance: cpis_attendance::Settings {
            retry_initial: Duration::from_millis(50),
            retry_max: Duration::from_millis(400),
            relay_poll_interval: Duration::from_millis(200),
            ..Default::default()
        },
        ..Default::default()
    }
}

pub(crate) fn plan(local_reference: &str, nhs_number: &str, plan_type: PlanType) -> Plan {
    // An unborn child's plan is held against the mother and has a due date
    // instead of a date of birth.
    let unborn = plan_type == PlanType::UnbornChildProtection;
    Plan {
        local_reference: local_reference.into(),
        nhs_number: nhs_number.into(),
        date_of_birth: if unborn { "" } else { "2015-03-01" }.into(),
        expected_delivery_date: if unborn { "2027-02-01" } else { "" }.into(),
        plan_type: plan_type as i32,
        start_date: if unborn { "2026-06-01" } else { "2025-01-10" }.into(),
        contact: Some(ContactDetails {
            team_name: "Children's Services Front Door".into(),
            office_phone: "0161 234 5000".into(),
            emergency_duty_phone: "0161 255 8250".into(),
            email: "front.door@council.example.gov.uk".into(),
        }),
        ..Default::default()
    }
}

/// Registers a plan for `nhs_number` with `council_code`.
pub(crate) async fn register(
    ts: &TestSuite,
    council_code: &str,
    local_reference: &str,
    nhs_number: &str,
    plan_type: PlanType,
) {
    ts.registry(&council(council_code))
        .upsert_plan(UpsertPlanRequest {
            plan: Some(plan(local_reference, nhs_number, plan_type)),
            expected_version: 0,
        })
        .await
        .expect("UpsertPlan");
}

pub(crate) fn arrival(request_id: &str, nhs_number: &str, arrived_at: DateTime<Utc>) -> CheckInRequest {
    CheckInRequest {
        request_id: request_id.into(),
        nhs_number: nhs_number.into(),
        arrived_at: Some(to_timestamp(arrived_at)),
        setting_type: SettingType::EmergencyDepartment as i32,
        ..Default::default()
    }
}

pub(crate) async fn try_check_in(
    ts: &TestSuite,
    setting_code: &str,
    request: CheckInRequest,
) -> Result<CheckInResponse, tonic::Status> {
    ts.attendance(&setting(setting_code)).check_in(request).await.map(|r| r.into_inner())
}

pub(crate) async fn check_in(ts: &TestSuite, setting_code: &str, request: CheckInRequest) -> CheckInResponse {
    try_check_in(ts, setting_code, request).await.expect("CheckIn")
}

/// A check-in shown to `name` (a clinician at the setting whose role allows
/// notifying reads), with that person's token; returns the answer and the token.
pub(crate) async fn check_in_as(
    ts: &TestSuite,
    setting_code: &str,
    name: &str,
    request: CheckInRequest,
) -> (CheckInResponse, cpis_devkit::users::DevToken) {
    let spec = cpis_devkit::users::TokenSpec {
        name: name.into(),
        job_role: "R8001".into(),
        ..cpis_devkit::users::TokenSpec::new(setting_code, &["B0107"])
    };
    let token = ts.user_token_for(&spec);
    let answer = ts
        .attendance_with(&setting(setting_code), cpis_testkit::UserHeaders::of(Some(&token)))
        .check_in(request)
        .await
        .expect("CheckIn")
        .into_inner();
    (answer, token)
}

/// Every alert stored for a council (nobody acknowledges in these tests, so
/// `after_sequence = 0` is everything).
pub(crate) async fn alerts_of(ts: &TestSuite, council_code: &str) -> Vec<Alert> {
    let mut client = ts.notification(&council(council_code));
    let mut all = Vec::new();
    let mut after = 0;
    loop {
        let page = client
            .list_alerts(ListAlertsRequest { after_sequence: after, page_size: 1000, replay: false })
            .await
            .expect("ListAlerts")
            .into_inner();
        after = page.alerts.last().map_or(after, |a| a.sequence);
        all.extend(page.alerts);
        if !page.has_more {
            return all;
        }
    }
}

/// Waits until the relay has delivered every queued alert.
pub(crate) async fn outbox_drained(ts: &TestSuite) {
    let db = ts.db().await;
    let start = Instant::now();
    loop {
        let pending: i64 = db
            .query_one("SELECT count(*) FROM attendance.outbox WHERE delivered_at IS NULL", &[])
            .await
            .expect("outbox count")
            .get(0);
        if pending == 0 {
            return;
        }
        assert!(start.elapsed() < WAIT, "{pending} alerts still undelivered after {WAIT:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Rows anywhere in the attendance schema that mention `nhs_number`, as
/// text or as the hex of its bytes (inside an encoded bytea).
pub(crate) async fn rows_mentioning(ts: &TestSuite, nhs_number: &str) -> i64 {
    let db = ts.db().await;
    let hex: String = nhs_number.bytes().map(|b| format!("{b:02x}")).collect();
    let tables = db
        .query(
            "SELECT table_name::text FROM information_schema.tables
             WHERE table_schema = 'attendance'",
            &[],
        )
        .await
        .expect("tables");
    assert!(tables.len() >= 4, "the attendance schema has its tables");
    let mut total = 0;
    for table in tables {
        let name: String = table.get(0);
        let n: i64 = db
            .query_one(
                &format!(
                    "SELECT count(*) FROM attendance.\"{name}\" AS x
                     WHERE strpos(x::text, $1) > 0 OR strpos(x::text, $2) > 0"
                ),
                &[&nhs_number, &hex],
            )
            .await
            .expect("search")
            .get(0);
        total += n;
    }
    total
}

pub(crate) async fn count(ts: &TestSuite, sql: &str) -> i64 {
    ts.db().await.query_one(sql, &[]).await.expect("count").get(0)
}

pub(crate) async fn list_episodes(
    ts: &TestSuite,
    caller: &cpis_runtime::Caller,
    nhs_number: &str,
    page_size: i32,
    page_token: &str,
) -> Result<(Vec<Episode>, String), tonic::Status> {
    ts.attendance(caller)
        .list_episodes(ListEpisodesRequest {
            nhs_number: nhs_number.into(),
            page_size,
            page_token: page_token.into(),
            ..Default::default()
        })
        .await
        .map(|r| {
            let r = r.into_inner();
            (r.episodes, r.next_page_token)
        })
}

pub(crate) async fn accesses_of(ts: &TestSuite, council_code: &str, nhs_number: &str) -> Vec<AccessRecord> {
    ts.attendance(&council(council_code))
        .list_accesses(ListAccessesRequest { nhs_number: nhs_number.into(), page_size: 0, page_token: String::new() })
        .await
        .expect("ListAccesses")
        .into_inner()
        .accesses
}

/// The violated field paths of an INVALID_ARGUMENT status.
pub(crate) fn violated_fields(status: &tonic::Status) -> Vec<String> {
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    status
        .get_error_details()
        .bad_request()
        .map(|b| b.field_violations.iter().map(|v| v.field.clone()).collect())
        .unwrap_or_default()
}

/// Stops one service of the suite in place; the suite's own `stop` later
/// finds it already stopped. A new service may then be put in its slot.
pub(crate) async fn stop_in_place(slot: &mut RunningService) {
    slot.shutdown.request();
    let join = std::mem::replace(&mut slot.join, tokio::spawn(async { Ok(()) }));
    join.await.expect("service task").expect("service stopped cleanly");
}

/// Binds `addr` again once the stopped server has released it.
pub(crate) async fn rebind(addr: SocketAddr) -> tokio::net::TcpListener {
    let start = Instant::now();
    loop {
        match tokio::net::TcpListener::bind(addr).await {
            Ok(listener) => return listener,
            Err(e) if start.elapsed() < Duration::from_secs(10) => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("cannot bind {addr} again: {e}"),
        }
    }
}

#[tokio::test]
async fn a_flagged_check_in_shows_the_flag_and_alerts_the_council() {
    bounded(async {
        let ts = TestSuite::start().await;
        let child = nhs(101);
        register(&ts, MANCHESTER, "MAN-101", &child, PlanType::ChildProtection).await;
        let mut stream = ts
            .notification(&council(MANCHESTER))
            .subscribe(SubscribeRequest { after_sequence: 0, replay: false })
            .await
            .expect("Subscribe")
            .into_inner();

        let arrived_at = Utc::now() - TimeDelta::minutes(3);
        let request = arrival("adm-101", &child, arrived_at);
        let (answer, nurse) = check_in_as(&ts, ALDER_HEY, "Dr Jones", request).await;

        assert!(answer.flagged);
        assert_eq!(answer.flags.len(), 1);
        let flag = &answer.flags[0];
        assert_eq!(flag.council_code, MANCHESTER);
        assert_eq!(flag.plan_type, PlanType::ChildProtection as i32);
        assert_eq!(flag.start_date, "2025-01-10");
        assert!(!flag.ended);
        let contact = flag.contact.as_ref().expect("contact details");
        assert_eq!(contact.emergency_duty_phone, "0161 255 8250");
        assert!(uuid::Uuid::parse_str(&answer.episode_id).is_ok());
        assert!(answer.previous_episodes.is_empty());

        // The council hears of it live, with its own case reference.
        let alert = tokio::time::timeout(WAIT, async {
            loop {
                match stream.message().await.expect("stream").expect("open") {
                    cpis_proto::notification::v1::SubscribeResponse { event: Some(Event::Alert(alert)) } => {
                        return alert
                    }
                    _ => continue,
                }
            }
        })
        .await
        .expect("the alert reached the subscribed council");
        assert_eq!(alert.council_code, MANCHESTER);
        assert_eq!(alert.nhs_number, child);
        assert_eq!(alert.local_reference, "MAN-101");
        assert_eq!(alert.plan_type, PlanType::ChildProtection as i32);
        assert_eq!(alert.priority, AlertPriority::Routine as i32);
        // The alert names the verified person who looked, so the social
        // worker knows whom to call back.
        let viewer = alert.viewer.clone().expect("the alert names who looked");
        assert!(viewer.verified);
        assert_eq!(
            (viewer.name.as_str(), viewer.user_id.as_str(), viewer.role_profile_id.as_str()),
            ("Dr Jones", nurse.user_id.as_str(), nurse.role_id.as_str())
        );
        assert_eq!((viewer.job_role_code.as_str(), viewer.job_role_name.as_str()), ("R8001", "Nurse Access Role"));
        assert_eq!(viewer.organisation_code, ALDER_HEY);
        let episode = alert.episode.expect("episode");
        assert_eq!(episode.episode_id, answer.episode_id);
        assert_eq!(episode.setting_code, ALDER_HEY);
        assert_eq!(episode.setting_type, SettingType::EmergencyDepartment as i32);
        let when = from_timestamp(&episode.arrived_at.expect("arrived_at")).expect("timestamp");
        assert!((when - arrived_at).abs() < TimeDelta::milliseconds(1));

        // The access is audited and visible to the council holding the flag only.
        let accesses = accesses_of(&ts, MANCHESTER, "").await;
        assert_eq!(accesses.len(), 1);
        assert_eq!(accesses[0].episode_id, answer.episode_id);
        assert_eq!(accesses[0].nhs_number, child);
        assert_eq!(accesses[0].setting_code, ALDER_HEY);
        assert_eq!(accesses[0].user_id, nurse.user_id);
        assert_eq!(accesses[0].viewer.as_ref(), Some(&viewer), "the audit names the same person");
        assert!(accesses_of(&ts, LIVERPOOL, "").await.is_empty());
        assert!(alerts_of(&ts, LIVERPOOL).await.is_empty());

        let (episodes, next) =
            list_episodes(&ts, &setting(OTHER_SETTING), &child, 0, "").await.expect("a setting lists episodes");
        assert_eq!(episodes.len(), 1);
        assert_eq!(episodes[0].episode_id, answer.episode_id);
        assert!(next.is_empty());
        ts.suite.stop().await.unwrap();
    })
    .await
}

#[tokio::test]
async fn an_unflagged_check_in_leaves_no_trace_of_the_person() {
    bounded(async {
        let ts = TestSuite::start().await;
        // A flagged person first, so the search below is shown to find rows.
        let flagged = nhs(201);
        register(&ts, MANCHESTER, "MAN-201", &flagged, PlanType::LookedAfter).await;
        check_in(&ts, ALDER_HEY, arrival("a-201", &flagged, Utc::now())).await;
        assert!(rows_mentioning(&ts, &flagged).await > 0);

        let stranger = nhs(202);
        let answer = check_in(&ts, ALDER_HEY, arrival("a-202", &stranger, Utc::now())).await;
        assert_eq!(answer, CheckInResponse::default(), "not flagged, nothing shown");
        // A retry of the same request is simply evaluated again.
        let again = check_in(&ts, ALDER_HEY, arrival("a-202", &stranger, Utc::now())).await;
        assert!(!again.flagged);
        assert_eq!(rows_mentioning(&ts, &stranger).await, 0);
        assert_eq!(count(&ts, "SELECT count(*) FROM attendance.check_in_requests WHERE request_id = 'a-202'").await, 0);

        // Nothing stored means a later flag is seen on the very same request_id.
        register(&ts, LIVERPOOL, "LIV-202", &stranger, PlanType::ChildProtection).await;
        let now_flagged = check_in(&ts, ALDER_HEY, arrival("a-202", &stranger, Utc::now())).await;
        assert!(now_flagged.flagged);
        assert_eq!(now_flagged.flags[0].council_code, LIVERPOOL);
        ts.suite.stop().await.unwrap();
    })
    .await
}

#[tokio::test]
async fn invalid_requests_are_refused_with_field_paths() {
    bounded(async {
        let ts = TestSuite::start().await;
        let err = try_check_in(&ts, ALDER_HEY, CheckInRequest::default()).await.expect_err("empty request");
        assert_eq!(violated_fields(&err), ["request_id", "nhs_number", "arrived_at", "setting_type"]);

        let bad_check_digit = "9990000019";
        let mut request = arrival(&"r".repeat(129), bad_check_digit, Utc::now() + TimeDelta::minutes(10));
        request.setting_type = 99;
        let err = try_check_in(&ts, ALDER_HEY, request).await.expect_err("bad fields");
        assert_eq!(violated_fields(&err), ["request_id", "nhs_number", "arrived_at", "setting_type"]);
        assert!(!err.message().contains(bad_check_digit));

        // A few minutes of clock skew are fine.
        let skewed = arrival("skew", &nhs(1001), Utc::now() + TimeDelta::minutes(4));
        assert!(!check_in(&ts, ALDER_HEY, skewed).await.flagged);

        let err = list_episodes(&ts, &setting(ALDER_HEY), "123", 101, "not-a-token").await.expect_err("bad listing");
        assert_eq!(violated_fields(&err), ["nhs_number", "page_size", "page_token"]);
        let err = ts
            .attendance(&council(MANCHESTER))
            .list_accesses(ListAccessesRequest { nhs_number: "12345".into(), page_size: -1, page_token: String::new() })
            .await
            .expect_err("bad listing");
        assert_eq!(violated_fields(&err), ["nhs_number", "page_size"]);

        // Who may call what.
        let err = ts
            .attendance(&council(MANCHESTER))
            .check_in(arrival("c", &nhs(1002), Utc::now()))
            .await
            .expect_err("councils do not check in");
        assert_eq!(err.code(), Code::PermissionDenied);
        let err = ts
            .attendance(&setting(ALDER_HEY))
            .list_accesses(ListAccessesRequest::default())
            .await
            .expect_err("settings do not list accesses");
        assert_eq!(err.code(), Code::PermissionDenied);
        ts.suite.stop().await.unwrap();
    })
    .await
}

#[tokio::test]
async fn councils_page_through_accesses_to_their_own_children() {
    bounded(async {
        let ts = TestSuite::start().await;
        let (ours, theirs) = (nhs(1101), nhs(1102));
        register(&ts, MANCHESTER, "MAN-1101", &ours, PlanType::UnbornChildProtection).await;
        register(&ts, LIVERPOOL, "LIV-1102", &theirs, PlanType::ChildProtection).await;
        for i in 0..3 {
            let request = arrival(&format!("acc-{i}"), &ours, Utc::now());
            check_in_as(&ts, ALDER_HEY, &format!("User {i}"), request).await;
        }
        check_in(&ts, ALDER_HEY, arrival("acc-x", &theirs, Utc::now())).await;

        let mut client = ts.attendance(&council(MANCHESTER));
        let mut users = Vec::new();
        let mut token = String::new();
        loop {
            let page = client
                .list_accesses(ListAccessesRequest {
                    nhs_number: String::new(),
                    page_size: 2,
                    page_token: token.clone(),
                })
                .await
                .expect("ListAccesses")
                .into_inner();
            assert!(page.accesses.len() <= 2);
            assert!(page.accesses.iter().all(|a| a.nhs_number == ours));
            users.extend(page.accesses.into_iter().map(|a| a.viewer.expect("viewer").name));
            if page.next_page_token.is_empty() {
                break;
            }
            token = page.next_page_token;
        }
        assert_eq!(users, ["User 2", "User 1", "User 0"], "most recent first");
        assert!(accesses_of(&ts, MANCHESTER, &theirs).await.is_empty());
        assert_eq!(accesses_of(&ts, LIVERPOOL, "").await.len(), 1);
        ts.suite.stop().await.unwrap();
    })
    .await
}
