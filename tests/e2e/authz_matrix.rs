//! Every identity against every method: the authorization matrix in one
//! table. A new RPC in the contract that is missing here fails the test.

use cpis_devkit::pki::IssueOptions;
use cpis_domain::identity::ServiceName;
use cpis_proto::attendance::v1::{
    attendance_service_client::AttendanceServiceClient, CheckInRequest, ListAccessesRequest, ListEpisodesRequest,
    RecordNhsNumberChangeRequest, RecordWasNotBroughtRequest, SilentReadRequest,
};
use cpis_proto::common::v1::{Episode, NhsNumberChange, NhsNumberChangeKind, PlanType, SettingType};
use cpis_proto::notification::v1::{
    notification_service_client::NotificationServiceClient, AckAlertsRequest, AlertPriority, ListAlertsRequest,
    PublishAlertRequest, PublishAlertsRequest, SubscribeRequest,
};
use cpis_proto::registry::v1::{
    registry_service_client::RegistryServiceClient, DeletePlanRequest, EndPlanRequest, GetPlanRequest,
    ListPlansRequest, LookupFlagsBatchRequest, LookupFlagsRequest, SyncCompletion, SyncPlansRequest, UpsertPlanRequest,
};
use cpis_runtime::tls::TlsPaths;
use cpis_testkit::*;
use tonic::transport::Channel;
use tonic::Code;

/// Who calls, in the table's column order.
#[derive(Debug, Clone, Copy)]
enum Who {
    /// Manchester: owns the test plan and holds the flag.
    Council,
    /// Liverpool: a council with no business with Manchester's child.
    OtherCouncil,
    /// An emergency department.
    Setting,
    /// Our own services.
    Registry,
    Attendance,
    Notification,
    /// The demographics feed's follower.
    Demographics,
    /// Hostile or broken certificates.
    ForeignCa,
    OtherDomain,
    NoUriSan,
    Expired,
    NoCertificate,
}

const WHO: [Who; 12] = [
    Who::Council,
    Who::OtherCouncil,
    Who::Setting,
    Who::Registry,
    Who::Attendance,
    Who::Notification,
    Who::Demographics,
    Who::ForeignCa,
    Who::OtherDomain,
    Who::NoUriSan,
    Who::Expired,
    Who::NoCertificate,
];

const OK: Code = Code::Ok;
const PD: Code = Code::PermissionDenied;
const NF: Code = Code::NotFound;
const UA: Code = Code::Unauthenticated;

/// The matrix. Columns: council, other council, setting, service/registry,
/// service/attendance, service/notification, service/demographics, certificate from another CA,
/// another trust domain, no URI SAN, expired, no certificate.
#[rustfmt::skip]
const MATRIX: &[(&str, [Code; 12])] = &[
    //                                                  council other  setting reg  att  notif demo foreign domain nosan expired none
    ("/cpis.registry.v1.RegistryService/UpsertPlan",   [OK, OK, PD, PD, PD, PD, PD, UA, UA, UA, UA, UA]),
    ("/cpis.registry.v1.RegistryService/EndPlan",      [OK, NF, PD, PD, PD, PD, PD, UA, UA, UA, UA, UA]),
    ("/cpis.registry.v1.RegistryService/DeletePlan",   [OK, NF, PD, PD, PD, PD, PD, UA, UA, UA, UA, UA]),
    ("/cpis.registry.v1.RegistryService/GetPlan",      [OK, NF, PD, PD, PD, PD, PD, UA, UA, UA, UA, UA]),
    ("/cpis.registry.v1.RegistryService/ListPlans",    [OK, OK, PD, PD, PD, PD, PD, UA, UA, UA, UA, UA]),
    ("/cpis.registry.v1.RegistryService/SyncPlans",    [OK, OK, PD, PD, PD, PD, PD, UA, UA, UA, UA, UA]),
    ("/cpis.registry.v1.RegistryService/LookupFlags",  [PD, PD, PD, PD, OK, PD, PD, UA, UA, UA, UA, UA]),
    ("/cpis.registry.v1.RegistryService/RecordNhsNumberChange", [PD, PD, PD, PD, OK, PD, PD, UA, UA, UA, UA, UA]),
    ("/cpis.registry.v1.RegistryService/ReportPlans",  [OK, OK, PD, PD, PD, PD, PD, UA, UA, UA, UA, UA]),
    ("/cpis.registry.v1.RegistryService/LookupFlagsBatch", [PD, PD, PD, PD, OK, PD, PD, UA, UA, UA, UA, UA]),
    ("/cpis.attendance.v1.AttendanceService/CheckIn",  [PD, PD, OK, PD, PD, PD, PD, UA, UA, UA, UA, UA]),
    ("/cpis.attendance.v1.AttendanceService/ListEpisodes", [OK, PD, OK, PD, PD, PD, PD, UA, UA, UA, UA, UA]),
    ("/cpis.attendance.v1.AttendanceService/ListAccesses", [OK, OK, PD, PD, PD, PD, PD, UA, UA, UA, UA, UA]),
    ("/cpis.attendance.v1.AttendanceService/RecordWasNotBrought", [PD, PD, OK, PD, PD, PD, PD, UA, UA, UA, UA, UA]),
    ("/cpis.attendance.v1.AttendanceService/RecordNhsNumberChange", [PD, PD, PD, PD, PD, PD, OK, UA, UA, UA, UA, UA]),
    ("/cpis.attendance.v1.AttendanceService/ReportAccesses", [OK, OK, PD, PD, PD, PD, PD, UA, UA, UA, UA, UA]),
    ("/cpis.attendance.v1.AttendanceService/SilentRead",   [PD, PD, OK, PD, PD, PD, PD, UA, UA, UA, UA, UA]),
    ("/cpis.notification.v1.NotificationService/Subscribe",    [OK, OK, PD, PD, PD, PD, PD, UA, UA, UA, UA, UA]),
    ("/cpis.notification.v1.NotificationService/AckAlerts",    [OK, OK, PD, PD, PD, PD, PD, UA, UA, UA, UA, UA]),
    ("/cpis.notification.v1.NotificationService/ListAlerts",   [OK, OK, PD, PD, PD, PD, PD, UA, UA, UA, UA, UA]),
    ("/cpis.notification.v1.NotificationService/PublishAlert", [PD, PD, PD, PD, OK, PD, PD, UA, UA, UA, UA, UA]),
    ("/cpis.notification.v1.NotificationService/PublishAlerts", [PD, PD, PD, PD, OK, PD, PD, UA, UA, UA, UA, UA]),
    ("/cpis.notification.v1.NotificationService/ReportAlerts", [OK, OK, PD, PD, PD, PD, PD, UA, UA, UA, UA, UA]),
    ("/grpc.health.v1.Health/Check",                           [OK, OK, OK, OK, OK, OK, OK, UA, UA, UA, UA, UA]),
];

const CHILD_REF: &str = "MCR-MATRIX";

/// A change of NHS number of someone with no plan (a new event each time).
fn inactive_change() -> NhsNumberChange {
    NhsNumberChange {
        nhs_number: nhs(902),
        kind: NhsNumberChangeKind::Inactive as i32,
        replacement_nhs_number: String::new(),
        effective_date: "2026-11-30".into(),
        event_id: uuid::Uuid::new_v4().to_string(),
    }
}
const DELETE_REF: &str = "MCR-MATRIX-DEL";

struct Identities {
    foreign: TlsPaths,
    other_domain: TlsPaths,
    no_san: TlsPaths,
    expired: TlsPaths,
}

fn channel(ts: &TestSuite, ids: &Identities, who: Who, port: u16) -> Channel {
    match who {
        Who::Council => ts.channel(port, &council(MANCHESTER)),
        Who::OtherCouncil => ts.channel(port, &council(LIVERPOOL)),
        Who::Setting => ts.channel(port, &setting(ALDER_HEY)),
        Who::Registry => ts.channel(port, &service(ServiceName::Registry)),
        Who::Attendance => ts.channel(port, &service(ServiceName::Attendance)),
        Who::Notification => ts.channel(port, &service(ServiceName::Notification)),
        Who::Demographics => ts.channel(port, &service(ServiceName::Demographics)),
        Who::ForeignCa => ts.channel_with(port, &ids.foreign),
        Who::OtherDomain => ts.channel_with(port, &ids.other_domain),
        Who::NoUriSan => ts.channel_with(port, &ids.no_san),
        Who::Expired => ts.channel_with(port, &ids.expired),
        Who::NoCertificate => ts.channel_without_certificate(port),
    }
}

/// Makes one call of `rpc` as `who` with a request that is valid for the
/// rightful caller, and returns its status code.
async fn call(ts: &TestSuite, ids: &Identities, rpc: &str, who: Who, child: &str) -> Code {
    let method = rpc.rsplit('/').next().unwrap();
    let code = |r: Result<(), tonic::Status>| r.err().map_or(Code::Ok, |s| s.code());
    let registry = || RegistryServiceClient::new(channel(ts, ids, who, ts.registry_port()));
    // Every caller sends a user token of a clinician at the setting: only a
    // setting's calls need one, and it decides nothing for anyone else.
    let user = UserHeaders::of(Some(&ts.user_token(ALDER_HEY, &["B0107", "B0170"])));
    let attendance =
        || AttendanceServiceClient::with_interceptor(channel(ts, ids, who, ts.attendance_port()), user.clone());
    let notification = || NotificationServiceClient::new(channel(ts, ids, who, ts.notification_port()));
    match method {
        "UpsertPlan" => {
            // Only the owner re-sends the child's plan; anyone else registers
            // someone else, so no other council ever holds this child's flag.
            let p = match who {
                Who::Council => plan(CHILD_REF, child),
                _ => plan(&format!("OTHER-{who:?}"), &nhs(901)),
            };
            code(registry().upsert_plan(UpsertPlanRequest { plan: Some(p), expected_version: 0 }).await.map(drop))
        }
        "EndPlan" => code(
            registry()
                .end_plan(EndPlanRequest { local_reference: CHILD_REF.into(), end_date: "2027-12-31".into() })
                .await
                .map(drop),
        ),
        "DeletePlan" => {
            code(registry().delete_plan(DeletePlanRequest { local_reference: DELETE_REF.into() }).await.map(drop))
        }
        "GetPlan" => code(registry().get_plan(GetPlanRequest { local_reference: CHILD_REF.into() }).await.map(drop)),
        "ListPlans" => code(registry().list_plans(ListPlansRequest::default()).await.map(drop)),
        "SyncPlans" => {
            // A dry run: counts, changes nothing.
            let first = SyncPlansRequest {
                plan: Some(plan(CHILD_REF, child)),
                allow_mass_end: true,
                dry_run: true,
                ..Default::default()
            };
            let done = SyncPlansRequest { completion: Some(SyncCompletion { plan_rows: 1 }), ..Default::default() };
            let rows = vec![first, done];
            code(registry().sync_plans(tokio_stream::iter(rows)).await.map(drop))
        }
        "LookupFlags" => code(
            registry()
                .lookup_flags(LookupFlagsRequest { nhs_number: child.into(), on_date: String::new() })
                .await
                .map(drop),
        ),
        "LookupFlagsBatch" => code(
            registry()
                .lookup_flags_batch(LookupFlagsBatchRequest {
                    lookups: vec![LookupFlagsRequest { nhs_number: child.into(), on_date: String::new() }],
                })
                .await
                .map(drop),
        ),
        "CheckIn" => code(
            attendance()
                .check_in(CheckInRequest {
                    request_id: uuid::Uuid::new_v4().to_string(),
                    nhs_number: child.into(),
                    arrived_at: Some(cpis_domain::time::to_timestamp(chrono::Utc::now())),
                    setting_type: SettingType::EmergencyDepartment as i32,
                    ..Default::default()
                })
                .await
                .map(drop),
        ),
        "ListEpisodes" => code(
            attendance()
                .list_episodes(ListEpisodesRequest {
                    nhs_number: child.into(),
                    page_size: 0,
                    page_token: String::new(),
                    ..Default::default()
                })
                .await
                .map(drop),
        ),
        "ListAccesses" => code(attendance().list_accesses(ListAccessesRequest::default()).await.map(drop)),
        "SilentRead" => code(
            attendance()
                .silent_read(SilentReadRequest {
                    request_id: uuid::Uuid::new_v4().to_string(),
                    nhs_number: child.into(),
                    setting_type: SettingType::GpPractice as i32,
                    ..Default::default()
                })
                .await
                .map(drop),
        ),
        "RecordWasNotBrought" => code(
            attendance()
                .record_was_not_brought(RecordWasNotBroughtRequest {
                    request_id: uuid::Uuid::new_v4().to_string(),
                    nhs_number: child.into(),
                    appointment_at: Some(cpis_domain::time::to_timestamp(
                        chrono::Utc::now() - chrono::TimeDelta::hours(1),
                    )),
                    setting_type: SettingType::GpPractice as i32,
                })
                .await
                .map(drop),
        ),
        "RecordNhsNumberChange" if rpc.contains("registry") => code(
            registry()
                .record_nhs_number_change(cpis_proto::registry::v1::RecordNhsNumberChangeRequest {
                    change: Some(inactive_change()),
                })
                .await
                .map(drop),
        ),
        "RecordNhsNumberChange" => code(
            attendance()
                .record_nhs_number_change(RecordNhsNumberChangeRequest { change: Some(inactive_change()) })
                .await
                .map(drop),
        ),
        "ReportPlans" => code(
            registry()
                .report_plans(cpis_proto::registry::v1::ReportPlansRequest {
                    from_month: "2026-01".into(),
                    to_month: "2026-02".into(),
                })
                .await
                .map(drop),
        ),
        "ReportAccesses" => code(
            attendance()
                .report_accesses(cpis_proto::attendance::v1::ReportAccessesRequest {
                    from_month: "2026-01".into(),
                    to_month: "2026-02".into(),
                })
                .await
                .map(drop),
        ),
        "ReportAlerts" => code(
            notification()
                .report_alerts(cpis_proto::notification::v1::ReportAlertsRequest {
                    from_month: "2026-01".into(),
                    to_month: "2026-02".into(),
                })
                .await
                .map(drop),
        ),
        "Subscribe" => {
            code(notification().subscribe(SubscribeRequest { after_sequence: 0, replay: false }).await.map(drop))
        }
        "AckAlerts" => code(notification().ack_alerts(AckAlertsRequest { up_to_sequence: 0 }).await.map(drop)),
        "ListAlerts" => code(notification().list_alerts(ListAlertsRequest::default()).await.map(drop)),
        "PublishAlert" => code(
            notification()
                .publish_alert(PublishAlertRequest {
                    council_code: MANCHESTER.into(),
                    nhs_number: child.into(),
                    plan_type: PlanType::ChildProtection as i32,
                    local_reference: CHILD_REF.into(),
                    episode: Some(Episode {
                        episode_id: uuid::Uuid::new_v4().to_string(),
                        setting_code: ALDER_HEY.into(),
                        setting_type: SettingType::EmergencyDepartment as i32,
                        arrived_at: Some(cpis_domain::time::to_timestamp(chrono::Utc::now())),
                    }),
                    priority: AlertPriority::Routine as i32,
                    ..Default::default()
                })
                .await
                .map(drop),
        ),
        "PublishAlerts" => code(
            notification()
                .publish_alerts(PublishAlertsRequest {
                    alerts: vec![PublishAlertRequest {
                        council_code: MANCHESTER.into(),
                        nhs_number: child.into(),
                        plan_type: PlanType::ChildProtection as i32,
                        local_reference: CHILD_REF.into(),
                        episode: Some(Episode {
                            episode_id: uuid::Uuid::new_v4().to_string(),
                            setting_code: ALDER_HEY.into(),
                            setting_type: SettingType::EmergencyDepartment as i32,
                            arrived_at: Some(cpis_domain::time::to_timestamp(chrono::Utc::now())),
                        }),
                        priority: AlertPriority::Routine as i32,
                        ..Default::default()
                    }],
                })
                .await
                .map(drop),
        ),
        "Check" => {
            use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest};
            let mut worst = Code::Ok;
            for port in [ts.registry_port(), ts.attendance_port(), ts.notification_port()] {
                let r = HealthClient::new(channel(ts, ids, who, port))
                    .check(HealthCheckRequest { service: String::new() })
                    .await
                    .map(drop);
                if let Err(s) = r {
                    worst = s.code();
                }
            }
            worst
        }
        other => panic!("the matrix has a row for {other} but the test cannot call it"),
    }
}

#[tokio::test]
async fn every_identity_against_every_method() {
    let ts = TestSuite::start().await;
    for rpc in cpis_proto::all_rpc_paths() {
        assert!(MATRIX.iter().any(|(p, _)| *p == rpc), "{rpc} is not in the authorization matrix: add a row");
    }
    let child = nhs(900);
    let mut manchester = ts.registry(&council(MANCHESTER));
    for reference in [CHILD_REF, DELETE_REF] {
        manchester
            .upsert_plan(UpsertPlanRequest { plan: Some(plan(reference, &child)), expected_version: 0 })
            .await
            .unwrap();
    }
    let spiffe = |kind: &str, code: &str| format!("spiffe://{TRUST_DOMAIN}/{kind}/{code}");
    let mut expired = IssueOptions::client(Some(spiffe("council", MANCHESTER)));
    expired.not_before = time::OffsetDateTime::now_utc() - time::Duration::days(30);
    expired.not_after = time::OffsetDateTime::now_utc() - time::Duration::days(1);
    let ids = Identities {
        foreign: ts.foreign_ca_identity(&council(MANCHESTER)),
        other_domain: ts.custom_identity(
            "other-domain",
            IssueOptions::client(Some(format!("spiffe://evil.example/council/{MANCHESTER}"))),
        ),
        no_san: ts.custom_identity("no-san", IssueOptions::client(None)),
        expired: ts.custom_identity("expired", expired),
    };

    let mut failures = Vec::new();
    for (rpc, expected) in MATRIX {
        for (who, want) in WHO.iter().zip(expected) {
            let got = call(&ts, &ids, rpc, *who, &child).await;
            if got != *want {
                failures.push(format!("{rpc} as {who:?}: expected {want:?}, got {got:?}"));
            }
        }
    }
    assert!(failures.is_empty(), "authorization matrix mismatches:\n{}", failures.join("\n"));

    // The internal listener: with CPIS_INTERNAL_LISTEN, LookupFlags and
    // PublishAlert leave the public port.
    let internal = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let internal_addr = internal.local_addr().unwrap();
    drop(internal);
    let mut common = cpis::suite::dev_common(&ts.pki, ServiceName::Registry, TRUST_DOMAIN, &ts.database_url).unwrap();
    common.internal_listen = Some(internal_addr);
    let split = cpis::suite::start_registry(
        tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
        &common,
        Default::default(),
    )
    .await
    .unwrap();
    let lookup = LookupFlagsRequest { nhs_number: child.clone(), on_date: String::new() };
    let att = service(ServiceName::Attendance);
    let public = RegistryServiceClient::new(ts.channel(split.addr.port(), &att)).lookup_flags(lookup.clone()).await;
    assert_eq!(public.unwrap_err().code(), Code::PermissionDenied, "not on the public port");
    let flags = RegistryServiceClient::new(ts.channel(internal_addr.port(), &att)).lookup_flags(lookup).await;
    assert_eq!(flags.unwrap().into_inner().flags.len(), 1, "served on the internal port");
    let get = RegistryServiceClient::new(ts.channel(internal_addr.port(), &council(MANCHESTER)))
        .get_plan(GetPlanRequest { local_reference: CHILD_REF.into() })
        .await;
    assert_eq!(get.unwrap_err().code(), Code::PermissionDenied, "council methods are not on the internal port");
    split.stop().await.unwrap();
    ts.suite.stop().await.unwrap();
}
