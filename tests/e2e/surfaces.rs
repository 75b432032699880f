//! Bounded surfaces and live certificate checks: what a client without a
//! certificate can cost a service, the connection cap, and certificates that
//! expire or are revoked while their connection stays open.

use cpis_devkit::pki::IssueOptions;
use cpis_proto::notification::v1::SubscribeRequest;
use cpis_proto::registry::v1::{ListPlansRequest, UpsertPlanRequest};
use cpis_testkit::*;
use futures::StreamExt as _;
use std::time::{Duration, Instant};
use tonic::Code;

/// The number of exported time series (sample lines) in a scrape.
fn series(text: &str) -> usize {
    text.lines().filter(|l| !l.starts_with('#') && !l.is_empty()).count()
}

/// Calls `path` with an empty message on `channel`; the status code, or
/// `None` when the connection went away before an answer.
async fn call_path(channel: tonic::transport::Channel, path: String) -> Option<Code> {
    let mut grpc = tonic::client::Grpc::new(channel);
    if grpc.ready().await.is_err() {
        return None;
    }
    let path = http::uri::PathAndQuery::try_from(path).expect("path");
    let codec = tonic_prost::ProstCodec::<(), ()>::default();
    match grpc.unary(tonic::Request::new(()), path, codec).await {
        Ok(_) => Some(Code::Ok),
        // The server never answers these to a refusal: the connection went
        // away (closed after an earlier refusal) before this one was answered.
        Err(s) if matches!(s.code(), Code::Unknown | Code::Unavailable | Code::Cancelled) => None,
        Err(s) => Some(s.code()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_paths_from_a_client_without_a_certificate_create_no_series_and_cost_no_memory() {
    const REQUESTS: usize = 100_000;
    let ts = TestSuite::start().await;
    let metrics = ts.suite.registry.metrics_addr.expect("metrics address");
    let council_client = ts.registry(&council(MANCHESTER));
    // Warm up: every series the test could legitimately add exists before it.
    council_client.clone().list_plans(ListPlansRequest::default()).await.unwrap();
    let warm = ts.channel_without_certificate(ts.registry_port());
    assert_eq!(call_path(warm, "/warm/up".into()).await, Some(Code::Unauthenticated));
    let series_before = series(&scrape(metrics).await);
    let rss_before = rss_kib();

    let started = Instant::now();
    let port = ts.registry_port();
    let mut answered = 0usize;
    let mut unauthenticated = 0usize;
    let mut slowest_council_call = Duration::ZERO;
    // 100,000 requests, 64 at a time, over connections the server closes
    // after refusing them (a new connection every batch of 64 at most).
    let mut done = 0usize;
    let mut others = std::collections::BTreeMap::new();
    while done < REQUESTS {
        let channel = ts.channel_without_certificate(port);
        let batch = 64.min(REQUESTS - done);
        let codes: Vec<Option<Code>> = futures::stream::iter(0..batch)
            .map(|i| {
                let path = format!("/random.{:x}.Service/M{}", rand_u64(), done + i);
                call_path(channel.clone(), path)
            })
            .buffer_unordered(64)
            .collect()
            .await;
        done += batch;
        answered += codes.iter().filter(|c| c.is_some()).count();
        unauthenticated += codes.iter().filter(|c| **c == Some(Code::Unauthenticated)).count();
        for c in codes.iter().flatten().filter(|c| **c != Code::Unauthenticated) {
            *others.entry(format!("{c:?}")).or_insert(0usize) += 1;
        }
        if done % 12_800 < 64 {
            // Other callers are served meanwhile.
            let t = Instant::now();
            council_client.clone().list_plans(ListPlansRequest::default()).await.expect("a council is still served");
            slowest_council_call = slowest_council_call.max(t.elapsed());
        }
    }
    let after = scrape(metrics).await;
    let grown_series = series(&after).saturating_sub(series_before);
    let grown_mib = rss_kib().saturating_sub(rss_before) / 1024;
    println!(
        "{REQUESTS} requests in {:?}: {answered} answered ({unauthenticated} UNAUTHENTICATED), {grown_series} new series, \
         RSS +{grown_mib} MiB, slowest council call {slowest_council_call:?}",
        started.elapsed()
    );
    assert_eq!(answered, unauthenticated, "every answer is UNAUTHENTICATED, not {others:?}");
    assert!(unauthenticated > 0);
    // The refusals land in the series the warm-up created: nothing new.
    assert_eq!(grown_series, 0, "no new metric series");
    assert!(!after.contains("random."), "no request path in the metrics");
    assert!(
        sample(&after, &["cpis_grpc_requests_total", "method=\"unknown\"", "Unauthenticated"]) >= 1.0,
        "refusals are counted under method=\"unknown\""
    );
    // Bound: 32 MiB for the whole test process (client and server).
    assert!(grown_mib < 32, "memory grew by {grown_mib} MiB");
    ts.suite.stop().await.unwrap();
}

fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(Instant::now().elapsed().as_nanos());
    h.finish()
}

#[tokio::test]
async fn a_connection_without_a_certificate_is_answered_then_closed() {
    let ts = TestSuite::start().await;
    let ca = std::fs::read(ts.pki.ca_path()).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile_certs(&ca) {
        roots.add(cert).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(cpis_runtime::tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let mut config = config;
    config.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", ts.registry_port())).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
        .connect("localhost".try_into().unwrap(), tcp)
        .await
        .unwrap();
    let (mut h2, connection) = h2::client::handshake(tls).await.unwrap();
    let connection = tokio::spawn(connection);
    let request = http::Request::post(format!("https://localhost:{}/grpc.health.v1.Health/Check", ts.registry_port()))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .unwrap();
    let (response, mut send) = h2.send_request(request, false).unwrap();
    send.send_data(bytes::Bytes::from_static(&[0, 0, 0, 0, 0]), true).unwrap();
    let response = response.await.expect("the refusal is answered");
    assert_eq!(response.headers().get("grpc-status").map(|v| v.to_str().unwrap().to_string()), Some("16".into()));
    // Then the server ends the connection (within its short lifetime).
    let ended = tokio::time::timeout(Duration::from_secs(5), connection).await;
    assert!(ended.is_ok(), "the server closed the connection");
    ts.suite.stop().await.unwrap();
}

fn rustls_pemfile_certs(pem: &[u8]) -> Vec<rustls::pki_types::CertificateDer<'static>> {
    use rustls::pki_types::pem::PemObject as _;
    rustls::pki_types::CertificateDer::pem_slice_iter(pem).collect::<Result<Vec<_>, _>>().unwrap()
}

#[tokio::test]
async fn connections_beyond_the_cap_are_refused_while_existing_callers_continue() {
    let ts = TestSuite::start().await;
    let mut common =
        cpis::suite::dev_common(&ts.pki, cpis_domain::identity::ServiceName::Registry, TRUST_DOMAIN, &ts.database_url)
            .unwrap();
    common.connections =
        cpis_runtime::server::ConnectionLimits { max_connections: 3, max_handshakes: 3, max_handshakes_per_address: 3 };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let capped =
        cpis::suite::start_registry(listener, &common, cpis_registry::Settings::default()).await.expect("registry");
    let port = capped.addr.port();
    let name = cpis_registry::SERVICE_NAME;
    eventually(10, "the capped instance is ready", || async { readiness(&ts, port, name).await == Some(1) }).await;

    // Three councils hold a connection each.
    let mut held = Vec::new();
    for code in [MANCHESTER, LIVERPOOL, KENT] {
        let channel = ts.channel(port, &council(code));
        let mut client = cpis_proto::registry::v1::registry_service_client::RegistryServiceClient::new(channel);
        // Retry while the readiness probe's connection is still counted.
        let mut ok = false;
        for _ in 0..50 {
            if client.list_plans(ListPlansRequest::default()).await.is_ok() {
                ok = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(ok, "{code} is served under the cap");
        held.push(client);
    }
    // A fourth connection is closed at once: no answer.
    let mut fourth = cpis_proto::registry::v1::registry_service_client::RegistryServiceClient::new(
        ts.channel(port, &council("E10000014")),
    );
    let refused = fourth.list_plans(ListPlansRequest::default()).await.unwrap_err();
    assert_eq!(refused.code(), Code::Unavailable, "refused at the connection cap: {refused:?}");
    // The three existing callers continue on their connections.
    for client in &mut held {
        client.list_plans(ListPlansRequest::default()).await.expect("existing callers continue");
    }
    // Once one leaves, a newcomer gets in.
    held.pop();
    eventually(10, "a freed place is taken", || {
        let mut fourth = fourth.clone();
        async move { fourth.list_plans(ListPlansRequest::default()).await.is_ok() }
    })
    .await;
    capped.stop().await.unwrap();
    ts.suite.stop().await.unwrap();
}

#[tokio::test]
async fn a_certificate_that_expires_while_its_connection_is_open_is_refused_on_the_next_call() {
    let ts = TestSuite::start().await;
    let mut options = IssueOptions::client(Some(council(MANCHESTER).spiffe_id(TRUST_DOMAIN)));
    // Certificate times have one-second resolution: expire in three.
    options.not_after = time::OffsetDateTime::now_utc() + time::Duration::seconds(3);
    let short = ts.custom_identity("council-short-lived", options);
    let mut client = cpis_proto::registry::v1::registry_service_client::RegistryServiceClient::new(
        ts.channel_with(ts.registry_port(), &short),
    );
    client.list_plans(ListPlansRequest::default()).await.expect("valid now");
    tokio::time::sleep(Duration::from_secs(4)).await;
    let refused = client.list_plans(ListPlansRequest::default()).await.unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated);
    assert!(refused.message().contains("expired"), "{}", refused.message());
    ts.suite.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_council_is_refused_without_a_restart_while_other_streams_continue() {
    let ts = TestSuite::start().await;
    let mut manchester = ts.registry(&council(MANCHESTER));
    manchester
        .upsert_plan(UpsertPlanRequest { plan: Some(plan("M-1", &nhs(2101))), expected_version: 0 })
        .await
        .expect("served before revocation");
    ts.registry(&council(KENT))
        .upsert_plan(UpsertPlanRequest { plan: Some(plan("K-1", &nhs(2102))), expected_version: 0 })
        .await
        .unwrap();
    let mut kent_stream = ts
        .notification(&council(KENT))
        .subscribe(SubscribeRequest { after_sequence: 0, replay: false })
        .await
        .unwrap()
        .into_inner();

    ts.pki.revoke(&council(MANCHESTER)).expect("revoking");
    // Servers look at the revocation list at most every 2 s.
    eventually(10, "the revoked council is refused", || {
        let mut manchester = manchester.clone();
        async move {
            matches!(manchester.list_plans(ListPlansRequest::default()).await,
                Err(s) if s.code() == Code::Unauthenticated && s.message().contains("revoked"))
        }
    })
    .await;
    // Kent's open stream still delivers.
    ts.attendance(&setting(ALDER_HEY)).check_in(arrival(&nhs(2102))).await.unwrap();
    let alert = next_alert(&mut kent_stream, 10, "another council's stream continues").await;
    assert_eq!(alert.council_code, KENT);
    // A new connection with the revoked certificate is refused too.
    let refused = ts.registry(&council(MANCHESTER)).list_plans(ListPlansRequest::default()).await.unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated);
    ts.suite.stop().await.unwrap();
}
