//! Telemetry end to end: an in-process OTLP receiver (plain gRPC on
//! loopback, test only) captures every span of a full scenario, and a buffer
//! captures every log line. One trace runs through all three services for a
//! flagged check-in, and no NHS number appears anywhere in spans or logs.
//! A separate test binary: the tracing subscriber and tracer are global.

use cpis_domain::identity::ServiceName;
use cpis_proto::attendance::v1::{CheckInRequest, ListEpisodesRequest, SilentReadRequest};
use cpis_proto::common::v1::{ContactDetails, PlanType, SettingType};
use cpis_proto::notification::v1::{subscribe_response::Event, SubscribeRequest};
use cpis_proto::registry::v1::{Plan, UpsertPlanRequest};
use cpis_testkit::*;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use opentelemetry_proto::tonic::trace::v1::Span;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Collects every exported span.
#[derive(Clone, Default)]
struct Receiver(Arc<Mutex<Vec<Span>>>);

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = self.0.lock().unwrap();
        for rs in request.into_inner().resource_spans {
            for ss in rs.scope_spans {
                spans.extend(ss.spans);
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse { partial_success: None }))
    }
}

/// Collects every log line.
#[derive(Clone, Default)]
struct LogBuffer(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for LogBuffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogBuffer {
    type Writer = LogBuffer;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

fn plan(reference: &str, nhs_number: &str, plan_type: PlanType) -> Plan {
    let unborn = plan_type == PlanType::UnbornChildProtection;
    Plan {
        local_reference: reference.into(),
        nhs_number: nhs_number.into(),
        date_of_birth: if unborn { String::new() } else { "2017-08-21".into() },
        plan_type: plan_type as i32,
        start_date: "2026-03-01".into(),
        expected_delivery_date: if unborn { "2027-01-20".into() } else { String::new() },
        contact: Some(ContactDetails {
            team_name: "Front Door".into(),
            office_phone: "0161 234 5000".into(),
            emergency_duty_phone: "0161 255 8250".into(),
            email: "team@example.gov.uk".into(),
        }),
        ..Default::default()
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_trace_spans_all_three_services_and_no_nhs_number_is_recorded() {
    let receiver = Receiver::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(receiver.clone()))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    // SAFETY (edition 2024 wording): set before any other thread reads the environment.
    std::env::set_var("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://127.0.0.1:{port}"));
    std::env::set_var("RUST_LOG", "debug,h2=warn,hyper=warn,tower=warn,rustls=warn,tokio_postgres=warn");
    let logs = LogBuffer::default();
    let guard = cpis_runtime::telemetry::init_with_writer("cpis-test", logs.clone(), false);

    let ts = TestSuite::start().await;
    let child = nhs(501);
    let mother = nhs(502);
    let stranger = nhs(503);
    let all_numbers = [child.clone(), mother.clone(), stranger.clone()];

    for (council_code, p) in [
        (MANCHESTER, plan("MCR-T1", &child, PlanType::ChildProtection)),
        (KENT, plan("KNT-T1", &mother, PlanType::UnbornChildProtection)),
    ] {
        ts.registry(&council(council_code))
            .upsert_plan(UpsertPlanRequest { plan: Some(p), expected_version: 0 })
            .await
            .unwrap();
    }
    let mut stream = ts
        .notification(&council(MANCHESTER))
        .subscribe(SubscribeRequest { after_sequence: 0, replay: false })
        .await
        .unwrap()
        .into_inner();

    let check_in = |nhs_number: &str| CheckInRequest {
        request_id: uuid::Uuid::new_v4().to_string(),
        nhs_number: nhs_number.into(),
        arrived_at: Some(cpis_domain::time::to_timestamp(chrono::Utc::now())),
        setting_type: SettingType::EmergencyDepartment as i32,
        ..Default::default()
    };
    // A person whose name and token must appear nowhere.
    let spec = cpis_devkit::users::TokenSpec {
        name: "Zyx Telemetry-Person".into(),
        ..cpis_devkit::users::TokenSpec::new(ALDER_HEY, &["B0107", "B0170"])
    };
    let person = ts.user_token_for(&spec);
    let mut attendance = ts.attendance_with(&setting(ALDER_HEY), UserHeaders::of(Some(&person)));
    let flagged = attendance.check_in(check_in(&child)).await.unwrap().into_inner();
    assert!(flagged.flagged);
    assert!(attendance.check_in(check_in(&mother)).await.unwrap().into_inner().flagged);
    assert!(!attendance.check_in(check_in(&stranger)).await.unwrap().into_inner().flagged);
    // A request id is recorded only once validated: an invalid one (here a
    // control character) never reaches a span or a log line.
    let mut bad_id = check_in(&child);
    bad_id.request_id = format!("INJECTED-{}\u{7}", uuid::Uuid::new_v4());
    assert!(attendance.check_in(bad_id).await.is_err());
    // A refused token (its signature broken) is not logged either.
    let broken = UserHeaders::raw(Some(&format!("Bearer {}x", person.token)), Some(&person.role_id));
    let refused = ts.attendance_with(&setting(ALDER_HEY), broken).check_in(check_in(&child)).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unauthenticated);
    // The same for a silent read.
    let bad_silent = SilentReadRequest {
        request_id: format!("INJECTED-{}\u{7}", uuid::Uuid::new_v4()),
        nhs_number: child.clone(),
        setting_type: SettingType::GpPractice as i32,
        ..Default::default()
    };
    assert!(ts.attendance(&setting("Y01234")).silent_read(bad_silent).await.is_err());
    // Failures must not echo the number either.
    let mut bad = check_in(&child);
    bad.setting_type = 99;
    assert!(attendance.check_in(bad).await.is_err());
    let _ = ts
        .attendance(&council(LIVERPOOL))
        .list_episodes(ListEpisodesRequest {
            nhs_number: child.clone(),
            page_size: 0,
            page_token: String::new(),
            ..Default::default()
        })
        .await
        .expect_err("Liverpool holds no flag for this child");
    let _ = ts
        .registry(&service(ServiceName::Attendance))
        .lookup_flags(cpis_proto::registry::v1::LookupFlagsRequest {
            nhs_number: "9990000019".into(),
            on_date: String::new(),
        })
        .await
        .expect_err("invalid check digit");

    // The FHIR port: a silent read, an unflagged notifying read, and failures
    // that carry NHS numbers in the query or the path.
    let nhs_query = |n: &str| format!("/FHIR/R4/CareTeam?patient:identifier=https://fhir.nhs.uk/Id/nhs-number%7C{n}");
    let gp = ts.identity(&setting("Y01234"));
    let ed = ts.identity(&setting(ALDER_HEY));
    let silent = [("IsUnscheduledAccessEvent", "false"), ("X-User-ID", "gp-1")];
    assert_eq!(fhir_get(&ts, Some(&gp), &nhs_query(&mother), &silent).await.body["total"], 1);
    let notifying = [("IsUnscheduledAccessEvent", "true"), ("X-User-ID", "nurse-1"), ("X-Request-ID", "fhir-t-1")];
    assert_eq!(fhir_get(&ts, Some(&ed), &nhs_query(&stranger), &notifying).await.body["total"], 0);
    assert_eq!(fhir_get(&ts, Some(&ed), &nhs_query("9990000019"), &notifying).await.status, 400);
    assert_eq!(fhir_get(&ts, Some(&ed), &format!("/FHIR/R4/Patient/{child}"), &[]).await.status, 404);
    assert_eq!(fhir_get(&ts, None, &format!("/FHIR/R4/Patient/{child}"), &[]).await.status, 401);
    assert_eq!(fhir_get(&ts, None, &nhs_query(&child), &notifying).await.status, 401);
    // The guide's TraceID: a UUID is put on the request's trace; anything
    // else (here carrying an NHS number) is accepted and recorded nowhere.
    let trace_ref = "0b6f9a53-6f1e-4c1d-9a51-3d2f8e7c6b5a";
    let with_ref = [("IsUnscheduledAccessEvent", "false"), ("TraceID", trace_ref)];
    assert_eq!(fhir_get(&ts, Some(&gp), &nhs_query(&mother), &with_ref).await.status, 200);
    let not_uuid = format!("TRACEREF-{mother}");
    let with_text = [("IsUnscheduledAccessEvent", "false"), ("TraceID", not_uuid.as_str())];
    assert_eq!(fhir_get(&ts, Some(&gp), &nhs_query(&mother), &with_text).await.status, 200);

    let alert = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            if let Some(Event::Alert(a)) = stream.message().await.unwrap().unwrap().event {
                return a;
            }
        }
    })
    .await
    .expect("the alert reaches Manchester");
    assert_eq!(alert.nhs_number, child);

    // Let the stream-send span close, then export everything.
    tokio::time::sleep(Duration::from_millis(300)).await;
    guard.flush();
    let spans = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            let spans = receiver.0.lock().unwrap().clone();
            if spans.iter().any(|s| s.name == "stream send") {
                return spans;
            }
            guard.flush();
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await
    .expect("spans are exported");

    // One trace: CheckIn -> LookupFlags -> relay -> PublishAlert -> stream send.
    let check_in_span = spans
        .iter()
        .find(|s| {
            s.name == "cpis.attendance.v1.AttendanceService/CheckIn" && {
                // The flagged child's check-in is the one whose trace reaches the stream.
                spans.iter().any(|t| t.name == "stream send" && t.trace_id == s.trace_id)
            }
        })
        .expect("a CheckIn span whose trace reaches the council's stream");
    let trace = &check_in_span.trace_id;
    let in_trace =
        |name: &str| -> Vec<&Span> { spans.iter().filter(|s| &s.trace_id == trace && s.name == name).collect() };
    let lookup = in_trace("cpis.registry.v1.RegistryService/LookupFlags");
    let relay = in_trace("relay alert");
    let publish = in_trace("cpis.notification.v1.NotificationService/PublishAlert");
    let send = in_trace("stream send");
    assert_eq!(lookup.len(), 1, "the registry look-up is in the check-in's trace");
    assert_eq!(relay.len(), 1, "the relay continues the check-in's trace");
    assert_eq!(publish.len(), 1, "the publish is in the same trace");
    assert!(!send.is_empty(), "the stream send is in the same trace");
    let descends = |span: &Span, ancestor: &Span| {
        let mut parent = span.parent_span_id.clone();
        while !parent.is_empty() {
            if parent == ancestor.span_id {
                return true;
            }
            parent = spans.iter().find(|s| s.span_id == parent).map(|s| s.parent_span_id.clone()).unwrap_or_default();
        }
        false
    };
    assert!(descends(lookup[0], check_in_span), "LookupFlags descends from CheckIn");
    assert!(descends(relay[0], check_in_span), "the relay descends from CheckIn");
    assert!(
        relay[0].links.iter().any(|l| l.span_id == check_in_span.span_id
            || spans.iter().any(|s| s.span_id == l.span_id && descends(s, check_in_span))),
        "the relay links back to the check-in"
    );
    assert!(descends(publish[0], relay[0]), "PublishAlert descends from the relay");
    assert!(descends(send[0], publish[0]), "the stream send descends from PublishAlert");
    println!("trace {} has {} spans", hex(trace), spans.iter().filter(|s| &s.trace_id == trace).count());

    // No NHS number anywhere: names, attributes, events, links of every span, and every log line.
    let everything = format!("{spans:?}");
    let log_text = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    println!("{} log lines captured", log_text.lines().count());
    assert!(log_text.lines().count() > 5, "logs were captured");
    for n in &all_numbers {
        assert!(!everything.contains(n.as_str()), "an NHS number appears in the exported spans");
        assert!(!log_text.contains(n.as_str()), "an NHS number appears in the logs");
    }
    assert!(!everything.contains("9990000019") && !log_text.contains("9990000019"));
    // Nor the person's token or name (nor any part of the token).
    let signature = person.token.rsplit('.').next().unwrap();
    for secret in [person.token.as_str(), signature, "Zyx Telemetry-Person", "Zyx", TEST_CLINICIAN] {
        assert!(!everything.contains(secret), "a user token or name appears in the exported spans");
        assert!(!log_text.contains(secret), "a user token or name appears in the logs");
    }
    assert!(!everything.contains("INJECTED-") && !log_text.contains("INJECTED-"), "an invalid request id is recorded");
    let referenced = spans
        .iter()
        .find(|s| s.name == "fhir.request" && format!("{:?}", s.attributes).contains(trace_ref))
        .expect("a UUID TraceID is on a span of its request");
    assert!(
        spans.iter().any(|s| s.name == "FHIR/R4/CareTeam" && s.span_id == referenced.parent_span_id),
        "the TraceID's span is in the request's trace, under its server span"
    );
    assert!(
        !everything.contains("TRACEREF-") && !log_text.contains("TRACEREF-"),
        "a TraceID that is no UUID is recorded"
    );
    // No per-request outcome: beside a vendor's request id, "flagged" would
    // tell the log's readers who is on a plan.
    assert!(!log_text.contains("flagged"), "a log line says whether a check-in was flagged");
    assert!(!everything.contains("flagged"), "a span says whether a check-in was flagged");
    // JSON log lines carry the request id and the trace id.
    let with_ids = log_text
        .lines()
        .filter(|l| l.contains("\"request_id\"") && l.contains(&format!("\"trace_id\":\"{}\"", hex(trace))))
        .count();
    assert!(with_ids > 0, "log lines carry request and trace ids");
    // Nor in any metric label (the FHIR port's included).
    let scrape = scrape(ts.suite.attendance.metrics_addr.expect("metrics are served")).await;
    assert!(scrape.contains("FHIR/R4/CareTeam"), "the FHIR port is counted");
    for n in &all_numbers {
        assert!(!scrape.contains(n.as_str()), "an NHS number appears in a metric label");
    }
    assert!(!scrape.contains("Zyx") && !scrape.contains(signature), "a user appears in a metric label");
    ts.suite.stop().await.unwrap();
}
