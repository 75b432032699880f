//! Verified users: every way a person's token or role can fail is refused,
//! on gRPC and on FHIR alike, with nothing stored and no alert; and a key
//! rotation at the identity provider needs no restart.

use base64::Engine as _;
use cpis_devkit::users::{claims, DevUsers, SigningKey, TokenSpec, DEV_AUDIENCE, DEV_ISSUER};
use cpis_proto::attendance::v1::{ListEpisodesRequest, SilentReadRequest};
use cpis_proto::common::v1::SettingType;
use cpis_proto::notification::v1::ListAlertsRequest;
use cpis_proto::registry::v1::UpsertPlanRequest;
use cpis_runtime::users::UserAuthSettings;
use cpis_testkit::*;
use serde_json::Value;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tonic::Code;

fn care_team_path(nhs_number: &str) -> String {
    format!("/FHIR/R4/CareTeam?patient:identifier=https://fhir.nhs.uk/Id/nhs-number%7C{nhs_number}")
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// A token signed by `users`' current key with the claims of `spec`, changed by `change`.
fn signed(users: &DevUsers, spec: &TokenSpec, change: impl FnOnce(&mut Value)) -> String {
    let mut c = claims(spec, chrono::Utc::now());
    change(&mut c);
    users.sign(&c).expect("sign")
}

/// A child Manchester holds a plan for (`reference`), NHS number `nhs(serial)`.
pub(crate) async fn registered_child(ts: &TestSuite, serial: u32, reference: &str) -> String {
    let child = nhs(serial);
    ts.registry(&council(MANCHESTER))
        .upsert_plan(UpsertPlanRequest { plan: Some(plan(reference, &child)), expected_version: 0 })
        .await
        .expect("plan");
    child
}

/// `child` checked in at ALDER_HEY by the person of `token`: whether it was flagged.
pub(crate) async fn check_in_as(
    ts: &TestSuite,
    token: &cpis_devkit::users::DevToken,
    child: &str,
) -> Result<bool, tonic::Status> {
    let mut client = ts.attendance_with(&setting(ALDER_HEY), UserHeaders::of(Some(token)));
    client.check_in(arrival(child)).await.map(|r| r.into_inner().flagged)
}

/// One refusal case: the two headers sent, and what must come back.
struct Case {
    name: &'static str,
    authorization: Option<String>,
    urid: Option<String>,
    grpc: Code,
    http: u16,
    /// Words the refusal's message must contain.
    says: &'static str,
}

/// Every refusal of a notifying read by a clinician at ALDER_HEY.
fn cases(ts: &TestSuite) -> Vec<Case> {
    let users = &ts.suite.users;
    let spec = TokenSpec::new(ALDER_HEY, &["B0107"]);
    let good = users.token(&spec).unwrap();
    let role = good.role_id.clone();
    let bearer = |t: String| Some(format!("Bearer {t}"));
    let case = |name, token: Option<String>, urid: Option<String>, grpc, http, says| Case {
        name,
        authorization: token,
        urid,
        grpc,
        http,
        says,
    };
    let unauth =
        |name, token: String, says| case(name, bearer(token), Some(role.clone()), Code::Unauthenticated, 401, says);
    let now = chrono::Utc::now().timestamp();

    // A token whose payload was changed after signing.
    let mut parts: Vec<String> = good.token.split('.').map(str::to_string).collect();
    let mut payload: Value =
        serde_json::from_slice(&base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(&parts[1]).unwrap()).unwrap();
    payload["name"] = "Someone Else".into();
    parts[1] = b64(payload.to_string().as_bytes());
    let tampered = parts.join(".");

    // Signed by a key the identity provider never published.
    let stranger = SigningKey::generate_es256().unwrap();
    let unknown_kid = stranger.sign(&claims(&spec, chrono::Utc::now())).unwrap();

    // `alg: none`, naming the real key.
    let kid = users.signing_key().unwrap().kid;
    let header = serde_json::json!({"alg": "none", "typ": "JWT", "kid": kid});
    let none = format!(
        "{}.{}.",
        b64(header.to_string().as_bytes()),
        b64(claims(&spec, chrono::Utc::now()).to_string().as_bytes())
    );

    // HS256 with the provider's public key as the HMAC secret.
    let public = users.signing_key().unwrap().jwk.to_string();
    let mut hs_header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    hs_header.kid = Some(kid.clone());
    let hs256 = jsonwebtoken::encode(
        &hs_header,
        &claims(&spec, chrono::Utc::now()),
        &jsonwebtoken::EncodingKey::from_secret(public.as_bytes()),
    )
    .unwrap();

    let other_org = users.token(&TokenSpec::new("RWJ", &["B0107"])).unwrap();
    let silent_only = users.token(&TokenSpec::new(ALDER_HEY, &["B0170"])).unwrap();

    vec![
        case("no token", None, None, Code::Unauthenticated, 401, "no user token"),
        unauth("expired", signed(users, &spec, |c| c["exp"] = (now - 120).into()), "expired"),
        unauth("not yet valid", signed(users, &spec, |c| c["nbf"] = (now + 600).into()), "not valid yet"),
        unauth("bad signature", tampered, "signature"),
        unauth("unknown kid", unknown_kid, "signing key"),
        unauth("wrong issuer", signed(users, &spec, |c| c["iss"] = "https://evil.example".into()), "issuer"),
        unauth("wrong audience", signed(users, &spec, |c| c["aud"] = "someone-else".into()), "audience"),
        unauth("alg none", none, "not allowed"),
        unauth("HS256 with the public key", hs256, "not allowed"),
        unauth("oversized", signed(users, &spec, |c| c["padding"] = "x".repeat(20_000).into()), "larger than"),
        case(
            "URID not in the token",
            bearer(good.token.clone()),
            Some("999999999999".into()),
            Code::Unauthenticated,
            401,
            "NHSD-Session-URID is invalid",
        ),
        case(
            "a role of another organisation",
            bearer(other_org.token),
            Some(other_org.role_id),
            Code::PermissionDenied,
            403,
            "organisation RWJ",
        ),
        case(
            "a B0170-only role making a notifying read",
            bearer(silent_only.token),
            Some(silent_only.role_id),
            Code::PermissionDenied,
            403,
            "B0107",
        ),
    ]
}

/// Rows about anyone in the Attendance service's tables.
async fn stored(ts: &TestSuite) -> i64 {
    let db = ts.db().await;
    let mut total = 0;
    for table in ["episodes", "accesses", "outbox", "check_in_requests"] {
        let n: i64 = db.query_one(&format!("SELECT count(*) FROM attendance.{table}"), &[]).await.unwrap().get(0);
        total += n;
    }
    total
}

async fn alerts(ts: &TestSuite) -> usize {
    let mut client = ts.notification(&council(MANCHESTER));
    let page = client.list_alerts(ListAlertsRequest { replay: true, ..Default::default() }).await.unwrap();
    page.into_inner().alerts.len()
}

#[tokio::test]
async fn every_bad_token_or_role_is_refused_on_grpc_and_fhir_and_nothing_is_stored_or_alerted() {
    let ts = TestSuite::start().await;
    let child = registered_child(&ts, 2301, "MCR-USERS-1").await;
    let ed = ts.identity(&setting(ALDER_HEY));

    for (i, case) in cases(&ts).into_iter().enumerate() {
        let headers = UserHeaders::raw(case.authorization.as_deref(), case.urid.as_deref());
        let refused =
            ts.attendance_with(&setting(ALDER_HEY), headers).check_in(arrival(&child)).await.expect_err(case.name);
        assert_eq!(refused.code(), case.grpc, "gRPC, {}: {refused:?}", case.name);
        assert!(refused.message().contains(case.says), "gRPC, {}: {:?}", case.name, refused.message());
        assert!(!refused.message().contains(&child), "a refusal never names the person looked up");

        let mut fhir_headers: Vec<(&str, String)> =
            vec![("IsUnscheduledAccessEvent", "true".into()), ("X-Request-ID", format!("users-{i}"))];
        if let Some(a) = &case.authorization {
            fhir_headers.push(("Authorization", a.clone()));
        }
        if let Some(u) = &case.urid {
            fhir_headers.push(("NHSD-Session-URID", u.clone()));
        }
        let borrowed: Vec<(&str, &str)> = fhir_headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
        let answer = fhir_get_raw(&ts, Some(&ed), &care_team_path(&child), &borrowed).await;
        assert_eq!(answer.status, case.http, "FHIR, {}: {}", case.name, answer.raw);
        assert_eq!(answer.body["resourceType"], "OperationOutcome", "FHIR, {}", case.name);
        assert!(answer.raw.contains(case.says), "FHIR, {}: {}", case.name, answer.raw);
        assert!(!answer.raw.contains(&child));
        assert_eq!(stored(&ts).await, 0, "{}: nothing stored", case.name);
    }
    // The other setting-facing calls need a person too.
    let no_user = || ts.attendance_with(&setting(ALDER_HEY), UserHeaders::default());
    let silent = SilentReadRequest {
        request_id: "s-1".into(),
        nhs_number: child.clone(),
        setting_type: SettingType::GpPractice as i32,
        ..Default::default()
    };
    assert_eq!(no_user().silent_read(silent.clone()).await.unwrap_err().code(), Code::Unauthenticated);
    let episodes = ListEpisodesRequest { nhs_number: child.clone(), ..Default::default() };
    assert_eq!(no_user().list_episodes(episodes.clone()).await.unwrap_err().code(), Code::Unauthenticated);
    // A role without either activity reads nothing; B0170 reads silently.
    let neither = ts.user_token(ALDER_HEY, &["B0264"]);
    let refused = ts
        .attendance_with(&setting(ALDER_HEY), UserHeaders::of(Some(&neither)))
        .list_episodes(episodes)
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    assert_eq!(stored(&ts).await, 0, "nothing stored");
    let silent_only = ts.user_token(ALDER_HEY, &["B0170"]);
    let read = ts.attendance_with(&setting(ALDER_HEY), UserHeaders::of(Some(&silent_only))).silent_read(silent).await;
    assert!(read.expect("B0170 allows a silent read").into_inner().flagged);

    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(alerts(&ts).await, 0, "no alert went out");
    // And a good token at the same time is served (the refusals were the tokens').
    let answer = ts.attendance(&setting(ALDER_HEY)).check_in(arrival(&child)).await.expect("a good token");
    assert!(answer.into_inner().flagged);
    eventually(10, "the good check-in's alert", || async { alerts(&ts).await == 1 }).await;
    ts.suite.stop().await.unwrap();
}

/// Serves `users`' key set over HTTPS (a certificate of `pki`), counting fetches.
async fn serve_jwks(users: DevUsers, pki: &cpis_devkit::pki::Pki, fetches: Arc<AtomicUsize>) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let tls = pki.ensure(&service(cpis_domain::ServiceName::Registry), TRUST_DOMAIN).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(cpis_runtime::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            cpis_runtime::tls::read_certs(&tls.cert).unwrap(),
            cpis_runtime::tls::read_key(&tls.key).unwrap(),
        )
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, users, fetches) = (acceptor.clone(), users.clone(), fetches.clone());
            tokio::spawn(async move {
                let Ok(mut conn) = acceptor.accept(tcp).await else { return };
                let mut buf = vec![0u8; 4096];
                let _ = conn.read(&mut buf).await;
                fetches.fetch_add(1, Ordering::SeqCst);
                let body = std::fs::read(users.jwks_path()).unwrap_or_default();
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = conn.write_all(head.as_bytes()).await;
                let _ = conn.write_all(&body).await;
                let _ = conn.shutdown().await;
            });
        }
    });
    port
}

#[tokio::test]
async fn a_key_rotation_at_the_identity_provider_needs_no_restart_and_old_tokens_last_until_they_expire() {
    cpis_runtime::tls::install_default_provider();
    // The identity provider: its own keys, published at an https:// URL.
    let idp_dir = tempfile::tempdir().unwrap();
    let idp = DevUsers::new(idp_dir.path());
    idp.init().unwrap();
    let idp_pki = cpis_devkit::pki::Pki::new(idp_dir.path());
    idp_pki.init().unwrap();
    let fetches = Arc::new(AtomicUsize::new(0));
    let port = serve_jwks(idp.clone(), &idp_pki, fetches.clone()).await;

    let mut configs = cpis::suite::ServiceConfigs {
        notification: notification_settings(Duration::from_millis(500)),
        ..Default::default()
    };
    configs.attendance.users = UserAuthSettings {
        issuer: Some(DEV_ISSUER.into()),
        audience: Some(DEV_AUDIENCE.into()),
        jwks_url: Some(format!("https://localhost:{port}/jwks.json")),
        jwks_ca: Some(idp_pki.ca_path()),
        jwks_min_refresh: Duration::from_secs(1),
        leeway: Duration::from_secs(1),
        ..UserAuthSettings::default()
    };
    let ts = TestSuite::start_with(configs).await;
    let child = registered_child(&ts, 2302, "MCR-USERS-2").await;
    let spec = |ttl| TokenSpec { ttl, ..TokenSpec::new(ALDER_HEY, &["B0107"]) };

    let old = idp.token(&spec(Duration::from_secs(4))).unwrap();
    assert!(check_in_as(&ts, &old, &child).await.expect("a token of the first key"));
    let after_start = fetches.load(Ordering::SeqCst);
    assert!(after_start >= 1, "the keys came from the URL");

    // The provider publishes a second key and signs with it from now on.
    idp.add_key(&SigningKey::generate_es256().unwrap()).unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let new = idp.token(&spec(Duration::from_secs(600))).unwrap();
    assert_ne!(
        jsonwebtoken::decode_header(&new.token).unwrap().kid,
        jsonwebtoken::decode_header(&old.token).unwrap().kid
    );
    assert!(check_in_as(&ts, &new, &child).await.expect("a token of the new key, without a restart"));
    assert!(check_in_as(&ts, &old, &child).await.expect("the old key still verifies"));

    // A flood of unknown key ids fetches the set at most once per interval.
    let before = fetches.load(Ordering::SeqCst);
    for _ in 0..20 {
        let stranger = SigningKey::generate_es256().unwrap();
        let token = stranger.sign(&claims(&spec(Duration::from_secs(60)), chrono::Utc::now())).unwrap();
        let forged = cpis_devkit::users::DevToken { token, ..new.clone() };
        assert_eq!(check_in_as(&ts, &forged, &child).await.unwrap_err().code(), Code::Unauthenticated);
    }
    let during = fetches.load(Ordering::SeqCst) - before;
    assert!(during <= 2, "20 unknown key ids in well under two seconds made {during} fetches");

    // The old token works until it expires (4 s, plus 1 s of leeway), then not.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let expired = check_in_as(&ts, &old, &child).await.unwrap_err();
    assert_eq!(expired.code(), Code::Unauthenticated);
    assert!(expired.message().contains("expired"), "{expired:?}");
    assert!(check_in_as(&ts, &new, &child).await.expect("the new key's token"));
    ts.suite.stop().await.unwrap();
}

#[tokio::test]
async fn the_migration_mode_takes_the_asserted_user_id_marked_unverified_and_still_verifies_tokens_sent() {
    let mut configs = cpis::suite::ServiceConfigs {
        notification: notification_settings(Duration::from_millis(500)),
        ..Default::default()
    };
    configs.attendance.users.mode = cpis_runtime::users::UserAuthMode::Optional;
    let ts = TestSuite::start_with(configs).await;
    let child = registered_child(&ts, 2303, "MCR-USERS-3").await;
    let legacy = || ts.attendance_with(&setting(ALDER_HEY), UserHeaders::default());
    #[allow(deprecated)] // the migration mode is what reads it
    let asserted = cpis_proto::attendance::v1::CheckInRequest { user_id: "legacy-nurse-1".into(), ..arrival(&child) };
    assert!(legacy().check_in(asserted).await.expect("no token, an asserted user id").into_inner().flagged);
    let refused = legacy().check_in(arrival(&child)).await.expect_err("neither a token nor a user id");
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
    let bad = UserHeaders::raw(Some("Bearer not.a.token"), None);
    let refused = ts.attendance_with(&setting(ALDER_HEY), bad).check_in(arrival(&child)).await.unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated, "a token sent is verified even so");
    ts.attendance(&setting(ALDER_HEY)).check_in(arrival(&child)).await.expect("a verified user");

    let accesses = ts
        .attendance(&council(MANCHESTER))
        .list_accesses(cpis_proto::attendance::v1::ListAccessesRequest::default())
        .await
        .unwrap()
        .into_inner()
        .accesses;
    let shown: Vec<(String, bool)> =
        accesses.iter().map(|a| (a.user_id.clone(), a.viewer.as_ref().is_some_and(|v| v.verified))).collect();
    assert_eq!(shown.len(), 2, "{shown:?}");
    assert!(shown[0].1, "the token's user is verified");
    assert_eq!(shown[1], ("legacy-nurse-1".to_string(), false), "the asserted id is marked unverified");
    ts.suite.stop().await.unwrap();
}

// Multi-threaded: the CLI runs as a blocking child process while the suite serves it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cpis_audit_and_cpis_subscribe_name_the_verified_person_who_looked() {
    let ts = TestSuite::start().await;
    let child = registered_child(&ts, 2304, "MCR-USERS-4").await;
    // `cpis users token` prints the token and the role for a named nurse.
    let cpis = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_cpis"))
            .args(args)
            .arg("--state-dir")
            .arg(ts.state.path())
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .output()
            .expect("cpis");
        assert!(out.status.success(), "cpis {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };
    let printed = cpis(&[
        "users",
        "token",
        "--setting",
        ALDER_HEY,
        "--name",
        "Pat Nurse",
        "--job-role",
        "R8001",
        "--activity",
        "B0107",
        "--json",
    ]);
    let token: Value = serde_json::from_str(&printed).expect("JSON");
    let dev = cpis_devkit::users::DevToken {
        token: token["token"].as_str().unwrap().into(),
        role_id: token["role_id"].as_str().unwrap().into(),
        user_id: token["user_id"].as_str().unwrap().into(),
        expires_at: chrono::Utc::now(),
    };
    let answer = ts.attendance_with(&setting(ALDER_HEY), UserHeaders::of(Some(&dev))).check_in(arrival(&child)).await;
    assert!(answer.expect("the printed token is accepted").into_inner().flagged);

    let endpoint = |port: u16| format!("https://localhost:{port}");
    let audit = cpis(&["audit", "--council", MANCHESTER, "--endpoint", &endpoint(ts.attendance_port())]);
    let line: Value = serde_json::from_str(audit.lines().next().expect("one access")).expect("a JSON line");
    let viewer = &line["viewer"];
    assert_eq!(viewer["name"], "Pat Nurse", "{line}");
    assert_eq!(viewer["verified"], true);
    assert_eq!(viewer["role_profile_id"], dev.role_id.as_str());
    assert_eq!(viewer["user_id"], dev.user_id.as_str());
    assert_eq!(
        (viewer["job_role_code"].as_str(), viewer["job_role_name"].as_str()),
        (Some("R8001"), Some("Nurse Access Role"))
    );
    assert_eq!(viewer["organisation_code"], ALDER_HEY);

    let cursor = ts.state.path().join("cursor");
    let mut subscribe = tokio::process::Command::new(env!("CARGO_BIN_EXE_cpis"));
    subscribe
        .args(["subscribe", "--council", MANCHESTER, "--endpoint", &endpoint(ts.notification_port())])
        .arg("--state-dir")
        .arg(ts.state.path())
        .arg("--cursor-file")
        .arg(&cursor)
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true);
    let mut child_process = subscribe.spawn().expect("cpis subscribe");
    let stdout = child_process.stdout.take().unwrap();
    let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(stdout));
    let first = tokio::time::timeout(Duration::from_secs(20), lines.next_line()).await.expect("an alert line");
    let alert: Value = serde_json::from_str(&first.unwrap().expect("a line")).expect("JSON");
    assert_eq!(alert["viewer"]["name"], "Pat Nurse", "{alert}");
    assert_eq!(alert["viewer"]["job_role_code"], "R8001");
    let _ = child_process.kill().await;
    ts.suite.stop().await.unwrap();
}
