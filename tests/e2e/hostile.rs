//! Hostile input: a table of bad requests per RPC, each answered with the
//! right code and field path, no panic, nothing stored, and the services
//! healthy afterwards. Also raw bytes that are not valid Protobuf, oversized
//! messages, and a caller exceeding its in-flight cap.
//!
//! Over 400 lines: the table of bad requests is long by design, one row per field rule.

use bytes::{Buf, BufMut};
use cpis_domain::identity::ServiceName;
use cpis_proto::attendance::v1::{ListAccessesRequest, ListEpisodesRequest};
use cpis_proto::common::v1::{Episode, PlanType, SettingType};
use cpis_proto::notification::v1::{
    AckAlertsRequest, AlertPriority, ListAlertsRequest, PublishAlertRequest, SubscribeRequest,
};
use cpis_proto::registry::v1::{
    EndPlanRequest, GetPlanRequest, ListPlansRequest, LookupFlagsRequest, SyncCompletion, SyncPlansRequest,
    UpsertPlanRequest,
};
use cpis_testkit::*;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::{Code, Status};
use tonic_types::StatusExt;

fn publish(nhs_number: &str) -> PublishAlertRequest {
    PublishAlertRequest {
        council_code: MANCHESTER.into(),
        nhs_number: nhs_number.into(),
        plan_type: PlanType::ChildProtection as i32,
        local_reference: "MCR-1".into(),
        episode: Some(Episode {
            episode_id: uuid::Uuid::new_v4().to_string(),
            setting_code: ALDER_HEY.into(),
            setting_type: SettingType::EmergencyDepartment as i32,
            arrived_at: Some(cpis_domain::time::to_timestamp(chrono::Utc::now())),
        }),
        priority: AlertPriority::Routine as i32,
        ..Default::default()
    }
}

const MB: usize = 1024 * 1024;

/// Every NHS number a hostile or careless client might send.
fn bad_nhs_numbers() -> Vec<String> {
    vec![
        String::new(),
        "999000001".into(),            // nine digits
        "99900000188".into(),          // eleven digits
        "9990000019".into(),           // wrong check digit
        "9990000000".into(),           // check digit would be 10
        "999 000 0018".into(),         // spaces
        "999-000-0018".into(),         // dashes
        "99900000AB".into(),           // letters
        "９９９０００００１８".into(), // full-width digits
        "-999000001".into(),           // a sign
        "9".repeat(MB),                // a megabyte of digits
    ]
}

/// The code and the field paths of a refused call.
fn refusal(status: &Status) -> (Code, Vec<String>) {
    let fields = status
        .get_error_details()
        .bad_request()
        .map(|b| b.field_violations.iter().map(|v| v.field.clone()).collect())
        .unwrap_or_default();
    (status.code(), fields)
}

fn expect_field(what: &str, result: Result<(), Status>, field: &str) {
    let status = result.expect_err(what);
    let (code, fields) = refusal(&status);
    assert_eq!(code, Code::InvalidArgument, "{what}: {status:?}");
    assert!(fields.iter().any(|f| f == field), "{what}: expected a violation on {field}, got {fields:?}");
    assert!(status.message().len() < 4096, "{what}: the message must not echo a huge input");
}

/// Drops the answer, keeping only whether the call failed.
fn ok<T>(r: Result<tonic::Response<T>, Status>) -> Result<(), Status> {
    r.map(drop)
}

#[tokio::test]
async fn bad_requests_get_field_level_errors_and_change_nothing() {
    let ts = TestSuite::start().await;
    let mut registry = ts.registry(&council(MANCHESTER));
    let mut lookup = ts.registry(&service(ServiceName::Attendance));
    let mut attendance = ts.attendance(&setting(ALDER_HEY));
    let mut council_attendance = ts.attendance(&council(MANCHESTER));
    let mut notification = ts.notification(&council(MANCHESTER));
    let mut publisher = ts.notification(&service(ServiceName::Attendance));

    for bad in bad_nhs_numbers() {
        let what = format!("NHS number of {} characters", bad.chars().count());
        expect_field(
            &what,
            ok(registry.upsert_plan(UpsertPlanRequest { plan: Some(plan("R", &bad)), expected_version: 0 }).await),
            "plan.nhs_number",
        );
        expect_field(
            &what,
            ok(lookup.lookup_flags(LookupFlagsRequest { nhs_number: bad.clone(), on_date: String::new() }).await),
            "nhs_number",
        );
        expect_field(&what, ok(attendance.check_in(arrival(&bad)).await), "nhs_number");
        expect_field(
            &what,
            ok(attendance.list_episodes(ListEpisodesRequest { nhs_number: bad.clone(), ..Default::default() }).await),
            "nhs_number",
        );
        expect_field(&what, ok(publisher.publish_alert(publish(&bad)).await), "nhs_number");
    }

    let mut dates = vec!["2026-02-29", "2026-13-01", "2026-00-10", "2026-04-31", "26-01-01", "2026/01/01", "tomorrow"];
    let long_date = "2".repeat(MB);
    dates.push(&long_date);
    for bad in dates {
        let mut p = plan("R", &nhs(1));
        p.start_date = bad.into();
        expect_field(
            bad,
            ok(registry.upsert_plan(UpsertPlanRequest { plan: Some(p), expected_version: 0 }).await),
            "plan.start_date",
        );
        expect_field(
            bad,
            ok(lookup.lookup_flags(LookupFlagsRequest { nhs_number: nhs(1), on_date: bad.into() }).await),
            "on_date",
        );
        expect_field(
            bad,
            ok(registry.end_plan(EndPlanRequest { local_reference: "R".into(), end_date: bad.into() }).await),
            "end_date",
        );
    }
    let mut reversed = plan("R", &nhs(1));
    reversed.end_date = "2024-12-31".into();
    expect_field(
        "reversed dates",
        ok(registry.upsert_plan(UpsertPlanRequest { plan: Some(reversed), expected_version: 0 }).await),
        "plan.end_date",
    );

    // Missing required fields and enums out of range.
    expect_field("no plan", ok(registry.upsert_plan(UpsertPlanRequest::default()).await), "plan");
    let mut p = plan("R", &nhs(1));
    p.plan_type = 1_000_000;
    expect_field(
        "plan type out of range",
        ok(registry.upsert_plan(UpsertPlanRequest { plan: Some(p), expected_version: 0 }).await),
        "plan.plan_type",
    );
    let mut c = arrival(&nhs(1));
    c.setting_type = -3;
    expect_field("setting type out of range", ok(attendance.check_in(c).await), "setting_type");
    let mut c = arrival(&nhs(1));
    c.arrived_at = None;
    expect_field("no arrival time", ok(attendance.check_in(c).await), "arrived_at");
    let mut c = arrival(&nhs(1));
    c.arrived_at = Some(prost_types::Timestamp { seconds: 1, nanos: -5 });
    expect_field("invalid timestamp", ok(attendance.check_in(c).await), "arrived_at");
    let mut c = arrival(&nhs(1));
    c.arrived_at = Some(cpis_domain::time::to_timestamp(chrono::Utc::now() + chrono::Duration::hours(2)));
    expect_field("arrival in the future", ok(attendance.check_in(c).await), "arrived_at");
    let mut c = arrival(&nhs(1));
    c.request_id.clear();
    expect_field("no request id", ok(attendance.check_in(c).await), "request_id");
    let mut c = arrival(&nhs(1));
    c.request_id = "r".repeat(MB);
    expect_field("a megabyte request id", ok(attendance.check_in(c).await), "request_id");
    let mut p = publish(&nhs(1));
    p.episode = None;
    expect_field("no episode", ok(publisher.publish_alert(p).await), "episode");
    let mut p = publish(&nhs(1));
    p.council_code = "W06000001".into();
    expect_field("not an English council", ok(publisher.publish_alert(p).await), "council_code");
    let mut p = publish(&nhs(1));
    p.priority = 77;
    expect_field("priority out of range", ok(publisher.publish_alert(p).await), "priority");
    let mut p = plan("R", &nhs(1));
    p.local_reference = "L".repeat(MB);
    expect_field(
        "a megabyte reference",
        ok(registry.upsert_plan(UpsertPlanRequest { plan: Some(p), expected_version: 0 }).await),
        "plan.local_reference",
    );
    let mut p = plan("R", &nhs(1));
    p.contact.as_mut().unwrap().email = "e".repeat(MB);
    expect_field(
        "a megabyte email",
        ok(registry.upsert_plan(UpsertPlanRequest { plan: Some(p), expected_version: 0 }).await),
        "plan.contact.email",
    );

    // Page sizes, tokens and sequences.
    expect_field(
        "negative page",
        ok(registry.list_plans(ListPlansRequest { page_size: -1, ..Default::default() }).await),
        "page_size",
    );
    expect_field(
        "huge page",
        ok(registry.list_plans(ListPlansRequest { page_size: i32::MAX, ..Default::default() }).await),
        "page_size",
    );
    expect_field(
        "forged token",
        ok(registry.list_plans(ListPlansRequest { page_token: "zz".repeat(1000), ..Default::default() }).await),
        "page_token",
    );
    expect_field(
        "huge episode page",
        ok(attendance
            .list_episodes(ListEpisodesRequest {
                nhs_number: nhs(1),
                page_size: 101,
                page_token: String::new(),
                ..Default::default()
            })
            .await),
        "page_size",
    );
    expect_field(
        "forged episode token",
        ok(attendance
            .list_episodes(ListEpisodesRequest {
                nhs_number: nhs(1),
                page_size: 0,
                page_token: "%%%".into(),
                ..Default::default()
            })
            .await),
        "page_token",
    );
    expect_field(
        "huge access page",
        ok(council_attendance.list_accesses(ListAccessesRequest { page_size: 1_000_000, ..Default::default() }).await),
        "page_size",
    );
    expect_field(
        "negative ack",
        ok(notification.ack_alerts(AckAlertsRequest { up_to_sequence: -1 }).await),
        "up_to_sequence",
    );
    expect_field(
        "ack beyond the log",
        ok(notification.ack_alerts(AckAlertsRequest { up_to_sequence: i64::MAX }).await),
        "up_to_sequence",
    );
    expect_field(
        "negative cursor",
        ok(notification.list_alerts(ListAlertsRequest { after_sequence: -5, page_size: 0, replay: false }).await),
        "after_sequence",
    );
    expect_field(
        "negative stream cursor",
        ok(notification.subscribe(SubscribeRequest { after_sequence: -1, replay: false }).await),
        "after_sequence",
    );
    expect_field(
        "bad get",
        ok(registry.get_plan(GetPlanRequest { local_reference: "\u{7}".into() }).await),
        "local_reference",
    );

    // 10,000 rows of which none is valid: each refused, nothing stored.
    let mut rows: Vec<SyncPlansRequest> = (0..10_000)
        .map(|i| SyncPlansRequest { plan: Some(plan(&format!("BAD-{i}"), "9990000019")), ..Default::default() })
        .collect();
    rows.push(SyncPlansRequest { completion: Some(SyncCompletion { plan_rows: 10_000 }), ..Default::default() });
    let r = registry.sync_plans(tokio_stream::iter(rows)).await.unwrap().into_inner();
    assert_eq!((r.received, r.rejected, r.created), (10_000, 10_000, 0));
    assert!(r.rejections.iter().all(|x| x.field == "plan.nhs_number"));

    // An 8 MB message is refused by size before it is decoded.
    let mut p = plan("R", &nhs(1));
    p.contact.as_mut().unwrap().team_name = "T".repeat(8 * MB);
    let status = registry.upsert_plan(UpsertPlanRequest { plan: Some(p), expected_version: 0 }).await.unwrap_err();
    assert!(matches!(status.code(), Code::OutOfRange | Code::ResourceExhausted), "{status:?}");

    // Nothing was stored by any of it, and every service is still healthy.
    let db = ts.db().await;
    for table in ["registry.plans", "attendance.episodes", "attendance.outbox", "notification.alerts"] {
        let n: i64 = db.query_one(&format!("SELECT count(*) FROM {table}"), &[]).await.unwrap().get(0);
        assert_eq!(n, 0, "{table} must be empty");
    }
    for (port, name) in ts.ports_and_names() {
        assert_eq!(readiness(&ts, port, name).await, Some(1), "{name} healthy afterwards");
    }
    ts.suite.stop().await.unwrap();
}

/// Sends and receives raw bytes, to put what no generated client would on the wire.
#[derive(Debug, Clone, Default)]
struct RawCodec;

impl Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawCodec;
    type Decoder = RawCodec;
    fn encoder(&mut self) -> Self::Encoder {
        RawCodec
    }
    fn decoder(&mut self) -> Self::Decoder {
        RawCodec
    }
}

impl Encoder for RawCodec {
    type Item = Vec<u8>;
    type Error = Status;
    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RawCodec {
    type Item = Vec<u8>;
    type Error = Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, Status> {
        let bytes = src.copy_to_bytes(src.remaining());
        Ok(Some(bytes.to_vec()))
    }
}

async fn raw_call(
    ts: &TestSuite,
    port: u16,
    caller: &cpis_runtime::Caller,
    path: &'static str,
    body: Vec<u8>,
) -> Status {
    let mut grpc = tonic::client::Grpc::new(ts.channel(port, caller));
    grpc.ready().await.unwrap();
    let path = http::uri::PathAndQuery::from_static(path);
    let mut request = tonic::Request::new(body);
    // A setting's person, so that the bytes themselves are what is judged.
    if let cpis_runtime::Caller::Setting(code) = caller {
        let token = ts.user_token(code, &["B0107", "B0170"]);
        request.metadata_mut().insert("authorization", format!("Bearer {}", token.token).parse().unwrap());
        request.metadata_mut().insert("nhsd-session-urid", token.role_id.parse().unwrap());
    }
    grpc.unary(request, path, RawCodec).await.map(drop).unwrap_err()
}

#[tokio::test]
async fn bytes_that_are_not_the_message_are_invalid_arguments() {
    let ts = TestSuite::start().await;
    // Field 2 (nhs_number, a string) holding bytes that are not UTF-8.
    let not_utf8 = vec![0x12, 0x04, 0xff, 0xfe, 0x80, 0x81];
    let status = raw_call(
        &ts,
        ts.attendance_port(),
        &setting(ALDER_HEY),
        "/cpis.attendance.v1.AttendanceService/CheckIn",
        not_utf8,
    )
    .await;
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("nhs_number"), "the message names the field: {}", status.message());
    // Truncated varints and garbage.
    for garbage in [vec![0x0a], vec![0xff; 64], vec![0x12, 0x7f, 0x01]] {
        let status = raw_call(
            &ts,
            ts.registry_port(),
            &council(MANCHESTER),
            "/cpis.registry.v1.RegistryService/UpsertPlan",
            garbage,
        )
        .await;
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    }
    // 10,000 unknown repeated fields are skipped, then validation speaks.
    let mut unknown = Vec::new();
    for _ in 0..10_000 {
        unknown.extend_from_slice(&[0xa0, 0x06, 0x01]); // field 100, varint 1
    }
    let status = raw_call(
        &ts,
        ts.registry_port(),
        &service(ServiceName::Attendance),
        "/cpis.registry.v1.RegistryService/LookupFlags",
        unknown,
    )
    .await;
    assert_eq!(status.code(), Code::InvalidArgument);
    for (port, name) in ts.ports_and_names() {
        assert_eq!(readiness(&ts, port, name).await, Some(1), "{name} healthy afterwards");
    }
    ts.suite.stop().await.unwrap();
}

#[tokio::test]
async fn a_caller_over_its_in_flight_cap_is_refused_while_others_are_served() {
    let configs = cpis::suite::ServiceConfigs {
        notification: notification_settings(std::time::Duration::from_secs(30)),
        limits: cpis_runtime::limits::Limits { per_caller: 8, total: 10_000 },
        ..Default::default()
    };
    let ts = TestSuite::start_with(configs).await;
    // Manchester opens 8 streams and never reads them, then asks for more.
    let mut held = Vec::new();
    for _ in 0..8 {
        held.push(
            ts.notification(&council(MANCHESTER))
                .subscribe(SubscribeRequest { after_sequence: 0, replay: false })
                .await
                .unwrap(),
        );
    }
    let status = ts
        .notification(&council(MANCHESTER))
        .subscribe(SubscribeRequest { after_sequence: 0, replay: false })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted);
    let status = ts.notification(&council(MANCHESTER)).list_alerts(ListAlertsRequest::default()).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted);
    // Everyone else is served normally.
    ts.notification(&council(LIVERPOOL)).list_alerts(ListAlertsRequest::default()).await.unwrap();
    ts.attendance(&setting(ALDER_HEY)).check_in(arrival(&nhs(3))).await.unwrap();
    // Places come back as streams close.
    held.truncate(4);
    eventually(5, "Manchester is served again", || async {
        ts.notification(&council(MANCHESTER)).list_alerts(ListAlertsRequest::default()).await.is_ok()
    })
    .await;
    drop(held);
    ts.suite.stop().await.unwrap();
}
