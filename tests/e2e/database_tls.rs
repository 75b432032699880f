//! TLS to PostgreSQL: the services reach the database over verified TLS; a
//! wrong CA, a wrong host name or a server without TLS stops start-up with a
//! message naming the cause (and never the password); client-certificate
//! authentication; the connection string read from `DATABASE_URL_FILE`.

use cpis::suite::{ServiceConfigs, SuiteOptions};
use cpis_devkit::pgcluster::{ClusterOptions, PrivateCluster, CERT_USER};
use cpis_devkit::pki::{IssueOptions, Pki};
use cpis_proto::registry::v1::UpsertPlanRequest;
use cpis_testkit::*;
use std::path::Path;

const PASSWORD: &str = "NeverPrinted-4711";

/// `url` (key=value form) with `key` set to `value`, replacing any earlier setting.
fn with_option(url: &str, key: &str, value: &str) -> String {
    let prefix = format!("{key}=");
    let kept: Vec<&str> = url.split_whitespace().filter(|kv| !kv.starts_with(&prefix)).collect();
    format!("{} {key}='{value}'", kept.join(" "))
}

/// Starts the whole suite on `url` and returns why it failed.
async fn start_up_error(url: String) -> String {
    cpis_runtime::tls::install_default_provider();
    let state = tempfile::Builder::new().prefix("cpis-dbtls").tempdir().unwrap();
    let started = cpis::suite::Suite::start(SuiteOptions {
        state_dir: state.path().to_path_buf(),
        port_base: 0,
        trust_domain: TRUST_DOMAIN.into(),
        database_url: url,
        configs: ServiceConfigs::default(),
    })
    .await;
    match started {
        Ok(suite) => {
            suite.stop().await.unwrap();
            panic!("the suite started although it should not have");
        }
        Err(e) => format!("{e:#}"),
    }
}

async fn connect_error(url: &str) -> String {
    match cpis_runtime::db::connect(url).await {
        Ok(_) => panic!("connected although it should not have"),
        Err(e) => format!("{e:#}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_services_reach_postgres_over_tls_with_verify_full() {
    let ts = TestSuite::start().await;
    assert!(ts.database_url.contains("host=localhost"), "TCP, not a socket: {}", ts.database_url);
    assert!(ts.database_url.contains("sslmode=verify-full"), "{}", ts.database_url);
    // A flagged check-in: all three services use their pools.
    ts.registry(&council(MANCHESTER))
        .upsert_plan(UpsertPlanRequest { plan: Some(plan("MCR-TLS", &nhs(4100))), expected_version: 0 })
        .await
        .unwrap();
    let r = ts.attendance(&setting(ALDER_HEY)).check_in(arrival(&nhs(4100))).await.unwrap().into_inner();
    assert!(r.flagged);

    let db = ts.db().await;
    let sessions = || async {
        db.query(
            "SELECT a.application_name, s.ssl, coalesce(s.version, '') FROM pg_stat_activity a \
             JOIN pg_stat_ssl s USING (pid) WHERE a.datname = current_database() AND a.pid <> pg_backend_pid()",
            &[],
        )
        .await
        .unwrap()
    };
    eventually(10, "the LISTEN connection is up", || async {
        sessions().await.iter().any(|r| r.get::<_, String>(0) == "cpis-notification-listen")
    })
    .await;
    let rows = sessions().await;
    assert!(rows.len() >= 4, "three pools and the LISTEN connection: {}", rows.len());
    for row in &rows {
        let (name, ssl, version): (String, bool, String) = (row.get(0), row.get(1), row.get(2));
        assert!(ssl, "{name} is connected without TLS");
        assert!(version.starts_with("TLSv1."), "{name}: {version}");
    }
    ts.suite.stop().await.unwrap();
}

#[tokio::test]
async fn a_wrong_ca_fails_start_up_naming_the_cause() {
    let url = fresh_database().await;
    let dir = tempfile::tempdir().unwrap();
    let other = Pki::new(dir.path());
    other.init().unwrap();
    let wrong =
        with_option(&with_option(&url, "sslrootcert", &other.ca_path().display().to_string()), "password", PASSWORD);
    let err = start_up_error(wrong.clone()).await;
    assert!(err.contains("wrong CA"), "{err}");
    assert!(!err.contains(PASSWORD), "the password is never printed: {err}");
    // verify-ca checks the chain too.
    let err = connect_error(&with_option(&wrong, "sslmode", "verify-ca")).await;
    assert!(err.contains("wrong CA") && !err.contains(PASSWORD), "{err}");
}

#[tokio::test]
async fn a_wrong_host_name_fails_start_up_naming_the_cause() {
    let url = fresh_database().await;
    // Connect to 127.0.0.1 but expect the server to be db.example.invalid.
    let wrong = with_option(
        &with_option(&with_option(&url, "host", "db.example.invalid"), "hostaddr", "127.0.0.1"),
        "password",
        PASSWORD,
    );
    let err = start_up_error(wrong.clone()).await;
    assert!(err.contains("wrong host name"), "{err}");
    assert!(!err.contains(PASSWORD), "{err}");
    // verify-ca checks the chain only: the same target is accepted.
    let db = cpis_runtime::db::connect(&with_option(&wrong, "sslmode", "verify-ca")).await.unwrap();
    let ssl: bool = db.query_one("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()", &[]).await.unwrap().get(0);
    assert!(ssl);
}

#[tokio::test]
async fn plaintext_is_refused_when_the_url_asks_for_tls() {
    // A server without TLS (its own small cluster).
    let dir = tempfile::Builder::new().prefix("cpis-notls").tempdir().unwrap();
    let plain =
        PrivateCluster::start(dir.path(), ClusterOptions { unsafe_fast: true, tls: false, ..Default::default() })
            .expect("a cluster without TLS");
    plain.create_database("cpis").await.unwrap();
    let url = with_option(&plain.url("cpis"), "password", PASSWORD);
    let ca = shared_cluster().pki.as_ref().map(|p| p.ca_path()).expect("the shared cluster's CA");
    let verify_full =
        with_option(&with_option(&url, "sslmode", "verify-full"), "sslrootcert", &ca.display().to_string());
    let err = start_up_error(verify_full).await;
    assert!(err.contains("does not offer TLS") && err.contains("refusing"), "{err}");
    assert!(!err.contains(PASSWORD), "{err}");
    let err = connect_error(&with_option(&url, "sslmode", "require")).await;
    assert!(err.contains("does not offer TLS"), "{err}");
    // `prefer` falls back to plaintext, as in libpq: the refusal above is the mode's doing.
    let db = cpis_runtime::db::connect(&with_option(&url, "sslmode", "prefer")).await.unwrap();
    let ssl: bool = db.query_one("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()", &[]).await.unwrap().get(0);
    assert!(!ssl);
    drop(db);

    // And the TLS cluster refuses plaintext TCP from its side too (hostssl only).
    let shared = fresh_database().await;
    let err = connect_error(&with_option(&shared, "sslmode", "disable")).await;
    assert!(err.contains("28000"), "{err}");
}

#[tokio::test]
async fn a_client_certificate_authenticates_to_the_database() {
    let url = fresh_database().await;
    let pki = shared_cluster().pki.as_ref().expect("the shared cluster's PKI");
    // The server maps the certificate's CN to the role.
    let issued = pki.issue_custom(CERT_USER, &IssueOptions::client(None)).unwrap();
    let as_cert_user = with_option(&url, "user", CERT_USER);
    let with_cert = with_option(
        &with_option(&as_cert_user, "sslcert", &issued.cert.display().to_string()),
        "sslkey",
        &issued.key.display().to_string(),
    );
    let db = cpis_runtime::db::connect(&with_cert).await.unwrap();
    let who: String = db.query_one("SELECT current_user::text", &[]).await.unwrap().get(0);
    assert_eq!(who, CERT_USER);
    let err = connect_error(&as_cert_user).await;
    assert!(err.contains("28000") && err.contains("certificate"), "{err}");
    // sslcert without sslkey is a configuration error, said as such.
    let half = with_option(&as_cert_user, "sslcert", &issued.cert.display().to_string());
    assert!(connect_error(&half).await.contains("sslcert and sslkey"));
}

fn cpis(args: &[&str], env: &[(&str, &Path)], url: Option<&str>) -> std::process::Output {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_cpis"));
    cmd.args(args);
    for var in ["DATABASE_URL", "DATABASE_URL_FILE", "PGSSLMODE", "PGSSLROOTCERT", "PGSSLCERT", "PGSSLKEY"] {
        cmd.env_remove(var);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    if let Some(url) = url {
        cmd.env("DATABASE_URL", url);
    }
    cmd.output().expect("running cpis")
}

#[tokio::test]
async fn cpis_migrate_reads_the_url_from_database_url_file_over_tls() {
    let url = with_option(&fresh_database().await, "password", PASSWORD);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("uri");
    std::fs::write(&file, format!("{url}\n")).unwrap();

    let out = cpis(&["migrate", "registry"], &[("DATABASE_URL_FILE", &file)], None);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let db = cpis_runtime::db::connect(&url).await.unwrap();
    let applied: i64 = db.query_one("SELECT count(*) FROM registry.schema_migrations", &[]).await.unwrap().get(0);
    assert!(applied > 0);

    let both = cpis(&["migrate", "registry"], &[("DATABASE_URL_FILE", &file)], Some(&url));
    let stderr = String::from_utf8_lossy(&both.stderr);
    assert!(!both.status.success() && stderr.contains("DATABASE_URL_FILE") && stderr.contains("only one"), "{stderr}");
    assert!(!stderr.contains(PASSWORD), "{stderr}");
    let neither = cpis(&["migrate", "registry"], &[], None);
    let stderr = String::from_utf8_lossy(&neither.stderr);
    assert!(!neither.status.success() && stderr.contains("DATABASE_URL or DATABASE_URL_FILE"), "{stderr}");

    // The Kubernetes shape: the operator's `uri` has no TLS options; PGSSLMODE
    // and PGSSLROOTCERT (libpq's variables) supply them.
    let bare: Vec<&str> =
        url.split_whitespace().filter(|kv| !kv.starts_with("sslmode=") && !kv.starts_with("sslrootcert=")).collect();
    std::fs::write(&file, bare.join(" ")).unwrap();
    let ca = shared_cluster().pki.as_ref().expect("the shared cluster's PKI").ca_path();
    let env = [
        ("DATABASE_URL_FILE", file.as_path()),
        ("PGSSLROOTCERT", ca.as_path()),
        ("PGSSLMODE", Path::new("verify-full")),
    ];
    let out = cpis(&["migrate", "attendance"], &env, None);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let other = Pki::new(&dir.path().join("other"));
    other.init().unwrap();
    let wrong_ca = other.ca_path();
    let env = [
        ("DATABASE_URL_FILE", file.as_path()),
        ("PGSSLROOTCERT", wrong_ca.as_path()),
        ("PGSSLMODE", Path::new("verify-full")),
    ];
    let out = cpis(&["migrate", "attendance"], &env, None);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("wrong CA") && !stderr.contains(PASSWORD), "{stderr}");
}
