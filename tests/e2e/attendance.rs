//! End-to-end tests of the Attendance service: check-in as a setting sees it,
//! the alerts councils receive, the access audit, and what happens when the
//! Registry or the Notification service is down.
//!
//! One file per service's contract, so a reader finds every Attendance behaviour in one place (over
//! 400 lines).

use chrono::{DateTime, TimeDelta, Utc};
use cpis::suite::{RunningService, ServiceConfigs};
use cpis_domain::identity::ServiceName;
use cpis_domain::time::{from_timestamp, to_timestamp};
use cpis_proto::attendance::v1::{
    AccessRecord, CheckInRequest, CheckInResponse, ListAccessesRequest, ListEpisodesRequest,
};
use cpis_proto::common::v1::{ContactDetails, Episode, PlanType, SettingType};
use cpis_proto::notification::v1::{
    subscribe_response::Event, Alert, AlertPriority, ListAlertsRequest, SubscribeRequest,
};
use cpis_proto::registry::v1::{DeletePlanRequest, Plan, UpsertPlanRequest};
use cpis_testkit::*;
use std::collections::BTreeSet;
use std::future::Future;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tonic::Code;
use tonic_types::StatusExt;

/// No test may run longer than this.
const TEST_LIMIT: Duration = Duration::from_secs(120);

/// How long to wait for something asynchronous (an alert) to happen.
const WAIT: Duration = Duration::from_secs(30);

async fn bounded(test: impl Future<Output = ()>) {
    tokio::time::timeout(TEST_LIMIT, test).await.expect("test did not finish in time");
}

/// Settings that make the relay retry quickly, so outage tests are short.
fn quick_retries() -> ServiceConfigs {
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

fn plan(local_reference: &str, nhs_number: &str, plan_type: PlanType) -> Plan {
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
async fn register(ts: &TestSuite, council_code: &str, local_reference: &str, nhs_number: &str, plan_type: PlanType) {
    ts.registry(&council(council_code))
        .upsert_plan(UpsertPlanRequest {
            plan: Some(plan(local_reference, nhs_number, plan_type)),
            expected_version: 0,
        })
        .await
        .expect("UpsertPlan");
}

fn arrival(request_id: &str, nhs_number: &str, arrived_at: DateTime<Utc>) -> CheckInRequest {
    CheckInRequest {
        request_id: request_id.into(),
        nhs_number: nhs_number.into(),
        arrived_at: Some(to_timestamp(arrived_at)),
        setting_type: SettingType::EmergencyDepartment as i32,
        user_id: "receptionist-1".into(),
    }
}

async fn try_check_in(
    ts: &TestSuite,
    setting_code: &str,
    request: CheckInRequest,
) -> Result<CheckInResponse, tonic::Status> {
    ts.attendance(&setting(setting_code)).check_in(request).await.map(|r| r.into_inner())
}

async fn check_in(ts: &TestSuite, setting_code: &str, request: CheckInRequest) -> CheckInResponse {
    try_check_in(ts, setting_code, request).await.expect("CheckIn")
}

/// Every alert stored for a council (nobody acknowledges in these tests, so
/// `after_sequence = 0` is everything).
async fn alerts_of(ts: &TestSuite, council_code: &str) -> Vec<Alert> {
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
async fn outbox_drained(ts: &TestSuite) {
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
async fn rows_mentioning(ts: &TestSuite, nhs_number: &str) -> i64 {
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

async fn count(ts: &TestSuite, sql: &str) -> i64 {
    ts.db().await.query_one(sql, &[]).await.expect("count").get(0)
}

async fn list_episodes(
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
            user_id: "receptionist-1".into(),
        })
        .await
        .map(|r| {
            let r = r.into_inner();
            (r.episodes, r.next_page_token)
        })
}

async fn accesses_of(ts: &TestSuite, council_code: &str, nhs_number: &str) -> Vec<AccessRecord> {
    ts.attendance(&council(council_code))
        .list_accesses(ListAccessesRequest { nhs_number: nhs_number.into(), page_size: 0, page_token: String::new() })
        .await
        .expect("ListAccesses")
        .into_inner()
        .accesses
}

/// The violated field paths of an INVALID_ARGUMENT status.
fn violated_fields(status: &tonic::Status) -> Vec<String> {
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    status
        .get_error_details()
        .bad_request()
        .map(|b| b.field_violations.iter().map(|v| v.field.clone()).collect())
        .unwrap_or_default()
}

/// Stops one service of the suite in place; the suite's own `stop` later
/// finds it already stopped. A new service may then be put in its slot.
async fn stop_in_place(slot: &mut RunningService) {
    slot.shutdown.request();
    let join = std::mem::replace(&mut slot.join, tokio::spawn(async { Ok(()) }));
    join.await.expect("service task").expect("service stopped cleanly");
}

/// Binds `addr` again once the stopped server has released it.
async fn rebind(addr: SocketAddr) -> tokio::net::TcpListener {
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
        let mut request = arrival("adm-101", &child, arrived_at);
        request.user_id = "dr-jones".into();
        let answer = check_in(&ts, ALDER_HEY, request).await;

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
        assert_eq!(accesses[0].user_id, "dr-jones");
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
        changed.user_id = "someone-else".into();
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
        let mut second_view = arrival("v-2", &child, t0 + TimeDelta::hours(2));
        second_view.user_id = "paediatric-registrar".into();
        let review = check_in(&ts, ALDER_HEY, second_view).await;
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
        let users: Vec<&str> = accesses.iter().map(|a| a.user_id.as_str()).collect();
        assert_eq!(users, ["receptionist-1", "receptionist-1", "paediatric-registrar", "receptionist-1"]);
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

#[tokio::test]
async fn check_ins_during_a_notification_outage_all_reach_the_council_once() {
    bounded(async {
        let mut ts = TestSuite::start_with(quick_retries()).await;
        let children: Vec<String> = (0..6).map(|i| nhs(800 + i)).collect();
        for (i, child) in children.iter().enumerate() {
            register(&ts, MANCHESTER, &format!("MAN-80{i}"), child, PlanType::ChildProtection).await;
        }
        // One before the outage.
        let before = check_in(&ts, ALDER_HEY, arrival("out-0", &children[0], Utc::now())).await;
        outbox_drained(&ts).await;

        let addr = ts.suite.notification.addr;
        stop_in_place(&mut ts.suite.notification).await;

        // Check-ins go on, fast, while alerts cannot be published.
        let mut episode_ids = vec![before.episode_id];
        for (i, child) in children.iter().enumerate().skip(1) {
            let started = Instant::now();
            let answer = check_in(&ts, OTHER_SETTING, arrival(&format!("out-{i}"), child, Utc::now())).await;
            assert!(answer.flagged);
            assert!(started.elapsed() < Duration::from_secs(2), "a check-in waited for the Notification service");
            episode_ids.push(answer.episode_id);
        }
        // Let the relay fail a few times.
        tokio::time::sleep(Duration::from_millis(800)).await;
        // Head of line: the council's first queued alert is retried, the
        // others wait behind it (so none can overtake it).
        let queued = count(&ts, "SELECT count(*) FROM attendance.outbox WHERE delivered_at IS NULL").await;
        assert_eq!(queued, 5, "every alert is still queued");
        let tried =
            count(&ts, "SELECT count(*) FROM attendance.outbox WHERE delivered_at IS NULL AND attempts > 0").await;
        assert_eq!(tried, 1, "only the head of the council's line was tried");
        let errors: Vec<String> = ts
            .db()
            .await
            .query(
                "SELECT last_error FROM attendance.outbox WHERE delivered_at IS NULL AND last_error IS NOT NULL
                 UNION ALL SELECT last_error FROM attendance.relay_councils WHERE last_error IS NOT NULL",
                &[],
            )
            .await
            .expect("errors")
            .iter()
            .map(|r| r.get(0))
            .collect();
        for error in &errors {
            assert!(!error.is_empty());
            assert!(children.iter().all(|c| !error.contains(c.as_str())), "last_error holds no NHS number: {error}");
        }

        let common = cpis::suite::dev_common(&ts.pki, ServiceName::Notification, TRUST_DOMAIN, &ts.database_url)
            .expect("common settings");
        ts.suite.notification = cpis::suite::start_notification(
            rebind(addr).await,
            &common,
            notification_settings(Duration::from_millis(500)),
        )
        .await
        .expect("restarting Notification");
        ts.wait_ready().await;

        outbox_drained(&ts).await;
        let alerts = alerts_of(&ts, MANCHESTER).await;
        let sequences: Vec<i64> = alerts.iter().map(|a| a.sequence).collect();
        assert_eq!(sequences, (1..=6).collect::<Vec<i64>>(), "no gaps, none twice");
        let delivered: Vec<String> = alerts.iter().map(|a| a.episode.clone().expect("episode").episode_id).collect();
        assert_eq!(delivered, episode_ids, "sequences follow the check-ins' order after the outage");
        // Nothing more trickles in later.
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert_eq!(alerts_of(&ts, MANCHESTER).await.len(), 6);
        ts.suite.stop().await.unwrap();
    })
    .await
}

#[tokio::test]
async fn with_the_registry_down_check_in_is_unavailable_within_its_deadline_and_stores_nothing() {
    bounded(async {
        let registry_timeout = Duration::from_millis(1500);
        let mut ts = TestSuite::start_with(ServiceConfigs {
            notification: notification_settings(Duration::from_millis(500)),
            attendance: cpis_attendance::Settings { registry_timeout, ..Default::default() },
            ..Default::default()
        })
        .await;
        let child = nhs(901);
        register(&ts, MANCHESTER, "MAN-901", &child, PlanType::ChildProtection).await;

        let addr = ts.suite.registry.addr;
        stop_in_place(&mut ts.suite.registry).await;

        // Refused connections: UNAVAILABLE at once.
        let started = Instant::now();
        let err = try_check_in(&ts, ALDER_HEY, arrival("down-1", &child, Utc::now())).await.expect_err("registry down");
        assert_eq!(err.code(), Code::Unavailable, "{err:?}");
        assert!(started.elapsed() < Duration::from_secs(1), "{:?}", started.elapsed());
        assert!(!err.message().contains(&child));

        // A Registry that accepts connections and never answers: the caller's
        // deadline bounds the wait, and the caller still learns UNAVAILABLE.
        let blackhole = rebind(addr).await;
        let hold = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((socket, _)) = blackhole.accept().await {
                held.push(socket);
            }
        });
        let mut request = tonic::Request::new(arrival("down-2", &child, Utc::now()));
        request.set_timeout(Duration::from_millis(800));
        let started = Instant::now();
        let err = ts.attendance(&setting(ALDER_HEY)).check_in(request).await.expect_err("registry hangs");
        let waited = started.elapsed();
        assert_eq!(err.code(), Code::Unavailable, "{err:?}");
        assert!(waited < Duration::from_millis(800), "{waited:?}");

        // Without a caller deadline, the configured one applies.
        let started = Instant::now();
        let err =
            try_check_in(&ts, ALDER_HEY, arrival("down-3", &child, Utc::now())).await.expect_err("registry hangs");
        let waited = started.elapsed();
        assert_eq!(err.code(), Code::Unavailable, "{err:?}");
        assert!(
            waited >= registry_timeout - Duration::from_millis(100)
                && waited < registry_timeout + Duration::from_secs(1),
            "{waited:?}"
        );
        hold.abort();

        assert_eq!(rows_mentioning(&ts, &child).await, 0, "nothing stored");
        assert_eq!(count(&ts, "SELECT count(*) FROM attendance.check_in_requests").await, 0);
        ts.suite.stop().await.unwrap();
    })
    .await
}

#[tokio::test]
async fn invalid_requests_are_refused_with_field_paths() {
    bounded(async {
        let ts = TestSuite::start().await;
        let err = try_check_in(&ts, ALDER_HEY, CheckInRequest::default()).await.expect_err("empty request");
        assert_eq!(violated_fields(&err), ["request_id", "nhs_number", "arrived_at", "setting_type", "user_id"]);

        let bad_check_digit = "9990000019";
        let mut request = arrival(&"r".repeat(129), bad_check_digit, Utc::now() + TimeDelta::minutes(10));
        request.setting_type = 99;
        request.user_id = "   ".into();
        let err = try_check_in(&ts, ALDER_HEY, request).await.expect_err("bad fields");
        assert_eq!(violated_fields(&err), ["request_id", "nhs_number", "arrived_at", "setting_type", "user_id"]);
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
            let mut request = arrival(&format!("acc-{i}"), &ours, Utc::now());
            request.user_id = format!("user-{i}");
            check_in(&ts, ALDER_HEY, request).await;
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
            users.extend(page.accesses.into_iter().map(|a| a.user_id));
            if page.next_page_token.is_empty() {
                break;
            }
            token = page.next_page_token;
        }
        assert_eq!(users, ["user-2", "user-1", "user-0"], "most recent first");
        assert!(accesses_of(&ts, MANCHESTER, &theirs).await.is_empty());
        assert_eq!(accesses_of(&ts, LIVERPOOL, "").await.len(), 1);
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
