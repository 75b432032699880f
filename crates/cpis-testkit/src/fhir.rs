//! The FHIR port in tests: one GET over HTTPS/1.1 with mutual TLS, as a
//! vendor's FHIR client or curl makes it, answered as status, headers and JSON.

use crate::{TestSuite, TRUST_DOMAIN};
use cpis_domain::identity::Caller;
use cpis_runtime::tls::TlsPaths;
use std::time::Duration;

/// One answer of the FHIR port.
#[derive(Debug)]
pub struct FhirAnswer {
    pub status: u16,
    pub content_type: String,
    pub body: serde_json::Value,
    pub raw: String,
}

/// `GET path` on the FHIR port over HTTPS/1.1, presenting `tls` (or no
/// client certificate), with the given request headers; a setting's request
/// without an `Authorization` header also carries the default test
/// clinician's token (see [`fhir_get_raw`] for exactly the headers given).
pub async fn fhir_get(ts: &TestSuite, tls: Option<&TlsPaths>, path: &str, headers: &[(&str, &str)]) -> FhirAnswer {
    let setting = tls
        .and_then(|p| cpis_runtime::tls::read_certs(&p.cert).ok())
        .and_then(|certs| certs.first().and_then(|c| Caller::from_certificate(c, TRUST_DOMAIN).ok()));
    let mut all: Vec<(String, String)> = headers.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect();
    if let Some(Caller::Setting(code)) = setting {
        if !headers.iter().any(|(n, _)| n.eq_ignore_ascii_case("authorization")) {
            all.extend(ts.fhir_user_headers(&code));
        }
    }
    let borrowed: Vec<(&str, &str)> = all.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
    fhir_get_raw(ts, tls, path, &borrowed).await
}

/// `GET path` on the FHIR port over HTTPS/1.1, presenting `tls` (or no
/// client certificate), with exactly the given request headers.
pub async fn fhir_get_raw(ts: &TestSuite, tls: Option<&TlsPaths>, path: &str, headers: &[(&str, &str)]) -> FhirAnswer {
    let port = ts.suite.attendance.fhir_addr.expect("the suite serves the FHIR API").port();
    let mut roots = rustls::RootCertStore::empty();
    for cert in cpis_runtime::tls::read_certs(&ts.pki.ca_path()).unwrap() {
        roots.add(cert).unwrap();
    }
    let builder = rustls::ClientConfig::builder_with_provider(cpis_runtime::tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots);
    let mut config = match tls {
        Some(paths) => builder
            .with_client_auth_cert(
                cpis_runtime::tls::read_certs(&paths.cert).unwrap(),
                cpis_runtime::tls::read_key(&paths.key).unwrap(),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let mut conn = connector.connect("localhost".try_into().unwrap(), tcp).await.expect("TLS handshake");
    let mut request = format!("GET {path} HTTP/1.1\r\nHost: localhost:{port}\r\nAccept: application/fhir+json\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("Connection: close\r\n\r\n");
    tokio::io::AsyncWriteExt::write_all(&mut conn, request.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(20), tokio::io::AsyncReadExt::read_to_end(&mut conn, &mut raw))
        .await
        .expect("an answer");
    let raw = String::from_utf8(raw).expect("UTF-8");
    let (head, body) = raw.split_once("\r\n\r\n").expect("an HTTP answer");
    let status: u16 = head.split(' ').nth(1).and_then(|s| s.parse().ok()).expect("a status line");
    let header = |name: &str| {
        head.lines()
            .filter_map(|l| l.split_once(':'))
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim().to_string())
            .unwrap_or_default()
    };
    let body = if header("transfer-encoding").eq_ignore_ascii_case("chunked") { dechunk(body) } else { body.into() };
    FhirAnswer {
        status,
        content_type: header("content-type"),
        body: serde_json::from_str(&body).unwrap_or(serde_json::Value::Null),
        raw: raw.clone(),
    }
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).expect("chunk size");
        if n == 0 {
            break;
        }
        out.push_str(&rest[..n]);
        body = &rest[n + 2..];
    }
    out
}
