//! The foundation: every port answers health over mutual TLS, serves
//! reflection, and refuses connections without a valid identity.

use cpis_devkit::pki::IssueOptions;
use cpis_domain::identity::ServiceName;
use cpis_proto::registry::v1::{registry_service_client::RegistryServiceClient, GetPlanRequest, LookupFlagsRequest};
use cpis_testkit::*;
use tonic::Code;
use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest};

#[tokio::test]
async fn health_answers_on_every_port_over_mtls() {
    let ts = TestSuite::start().await;
    for (port, name) in ts.ports_and_names() {
        for caller in [council(MANCHESTER), setting(ALDER_HEY), service(ServiceName::Attendance)] {
            let mut health = HealthClient::new(ts.channel(port, &caller));
            for service_name in ["", name] {
                let status = health
                    .check(HealthCheckRequest { service: service_name.into() })
                    .await
                    .expect("health check")
                    .into_inner()
                    .status;
                assert_eq!(status, 1, "{name} ({service_name:?}) should be SERVING");
            }
        }
    }
    ts.suite.stop().await.unwrap();
}

#[tokio::test]
async fn reflection_lists_the_services() {
    use tokio_stream::StreamExt;
    use tonic_reflection::pb::v1::{
        server_reflection_client::ServerReflectionClient, server_reflection_request::MessageRequest,
        server_reflection_response::MessageResponse, ServerReflectionRequest,
    };
    let ts = TestSuite::start().await;
    let mut client = ServerReflectionClient::new(ts.channel(ts.registry_port(), &council(MANCHESTER)));
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = client.server_reflection_info(tokio_stream::once(request)).await.unwrap().into_inner();
    let response = responses.next().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("unexpected reflection answer");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    assert!(names.contains(&"cpis.registry.v1.RegistryService".to_string()), "{names:?}");
    assert!(names.contains(&"grpc.health.v1.Health".to_string()), "{names:?}");
    ts.suite.stop().await.unwrap();
}

async fn get_plan_code(channel: tonic::transport::Channel) -> (Code, String) {
    let err = RegistryServiceClient::new(channel)
        .get_plan(GetPlanRequest { local_reference: "X".into() })
        .await
        .expect_err("must be refused");
    (err.code(), err.message().to_string())
}

#[tokio::test]
async fn connections_without_a_valid_identity_are_refused() {
    let ts = TestSuite::start().await;
    let port = ts.registry_port();

    let (code, msg) = get_plan_code(ts.channel_without_certificate(port)).await;
    assert_eq!(code, Code::Unauthenticated, "{msg}");
    assert!(msg.contains("no client certificate"), "{msg}");

    let foreign = ts.foreign_ca_identity(&council(MANCHESTER));
    let (code, msg) = get_plan_code(ts.channel_with(port, &foreign)).await;
    assert_eq!(code, Code::Unauthenticated, "{msg}");
    assert!(msg.contains("not issued by our CA"), "{msg}");

    let other_domain = ts.custom_identity(
        "other-domain",
        IssueOptions::client(Some(format!("spiffe://evil.example/council/{MANCHESTER}"))),
    );
    let (code, msg) = get_plan_code(ts.channel_with(port, &other_domain)).await;
    assert_eq!(code, Code::Unauthenticated, "{msg}");
    assert!(msg.contains("another trust domain"), "{msg}");

    let no_san = ts.custom_identity("no-san", IssueOptions::client(None));
    let (code, msg) = get_plan_code(ts.channel_with(port, &no_san)).await;
    assert_eq!(code, Code::Unauthenticated, "{msg}");

    let mut expired_opts = IssueOptions::client(Some(format!("spiffe://{TRUST_DOMAIN}/council/{MANCHESTER}")));
    expired_opts.not_before = time::OffsetDateTime::now_utc() - time::Duration::days(30);
    expired_opts.not_after = time::OffsetDateTime::now_utc() - time::Duration::days(1);
    let expired = ts.custom_identity("expired", expired_opts);
    let (code, msg) = get_plan_code(ts.channel_with(port, &expired)).await;
    assert_eq!(code, Code::Unauthenticated, "{msg}");
    assert!(msg.contains("expired"), "{msg}");

    // Health is no exception: no identity, no answer.
    let err = HealthClient::new(ts.channel_without_certificate(port))
        .check(HealthCheckRequest { service: String::new() })
        .await
        .expect_err("health without a certificate");
    assert_eq!(err.code(), Code::Unauthenticated);
    ts.suite.stop().await.unwrap();
}

#[tokio::test]
async fn known_identities_calling_methods_outside_their_role_are_denied() {
    let ts = TestSuite::start().await;
    let err = ts
        .registry(&setting(ALDER_HEY))
        .lookup_flags(LookupFlagsRequest { nhs_number: nhs(1), on_date: String::new() })
        .await
        .expect_err("a setting may not look flags up directly");
    assert_eq!(err.code(), Code::PermissionDenied);
    let err = ts
        .registry(&council(MANCHESTER))
        .lookup_flags(LookupFlagsRequest { nhs_number: nhs(1), on_date: String::new() })
        .await
        .expect_err("a council may not look flags up");
    assert_eq!(err.code(), Code::PermissionDenied);
    let err = ts
        .registry(&service(ServiceName::Notification))
        .get_plan(GetPlanRequest { local_reference: "X".into() })
        .await
        .expect_err("a service may not read plans");
    assert_eq!(err.code(), Code::PermissionDenied);
    ts.suite.stop().await.unwrap();
}

#[test]
fn test_nhs_numbers_are_valid_and_in_the_test_range() {
    let mut seen = std::collections::HashSet::new();
    for i in 0..2000 {
        let n = nhs(i);
        assert!(n.starts_with("999"));
        assert!(cpis_domain::validate::is_valid_nhs_number(&n), "{n}");
        assert!(seen.insert(n));
    }
}
