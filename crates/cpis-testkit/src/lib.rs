//! The test harness: a throwaway PostgreSQL cluster shared by the whole run,
//! a fresh database, PKI and suite per test, and clients for any identity.
//!
//! Long (about 490 lines): the shared fixtures of every end-to-end test, kept in one file so a
//! test's reader finds every helper in one place.
//!

#![allow(dead_code)]

mod fhir;
mod users;
pub use fhir::{fhir_get, fhir_get_raw, FhirAnswer};
pub use users::{AttendanceClient, UserHeaders, TEST_CLINICIAN};

use cpis::suite::{ServiceConfigs, Suite, SuiteOptions};
use cpis_devkit::pgcluster::{ClusterOptions, PrivateCluster};
use cpis_devkit::pki::{IssueOptions, Pki};
use cpis_domain::identity::{Caller, CallerKind, ServiceName};
use cpis_proto::attendance::v1::CheckInRequest;
use cpis_proto::common::v1::{ContactDetails, PlanType, SettingType};
use cpis_proto::notification::v1::notification_service_client::NotificationServiceClient;
use cpis_proto::registry::v1::registry_service_client::RegistryServiceClient;
use cpis_proto::registry::v1::Plan;
use cpis_runtime::tls::TlsPaths;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::Duration;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

pub const MANCHESTER: &str = "E08000003";
pub const LIVERPOOL: &str = "E08000012";
pub const KENT: &str = "E10000016";
pub const ALDER_HEY: &str = "RBQ01";
pub const OTHER_SETTING: &str = "RWJ01";

/// The run's shared cluster: started once, from a thread that lives as long
/// as the test process, so the server dies with the process (PDEATHSIG).
/// It runs with `ssl = on` and the URL asks for `sslmode=verify-full` over
/// TCP to `localhost`, so every test reaches PostgreSQL over verified TLS.
pub struct SharedCluster {
    /// Connection string to its `postgres` database.
    pub url: String,
    /// The PKI that issued its server certificate (`None` with `CPIS_TEST_DATABASE_URL`).
    pub pki: Option<Pki>,
}

pub fn shared_cluster() -> &'static SharedCluster {
    static CLUSTER: OnceLock<SharedCluster> = OnceLock::new();
    CLUSTER.get_or_init(|| {
        if let Ok(url) = std::env::var("CPIS_TEST_DATABASE_URL") {
            return SharedCluster { url, pki: None };
        }
        sweep_stale_clusters();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let dir = tempfile::Builder::new().prefix("cpis-test-pg").tempdir().expect("tempdir");
            let pki_dir = dir.path().join("db-pki");
            let options =
                ClusterOptions { unsafe_fast: true, pki_state_dir: Some(pki_dir.clone()), ..Default::default() };
            match PrivateCluster::start(dir.path(), options) {
                Ok(cluster) => {
                    tx.send(Ok((cluster.url("postgres"), pki_dir))).ok();
                    // Keep the cluster (and its directory) for the life of the process.
                    let _keep = (cluster, dir);
                    loop {
                        std::thread::park();
                    }
                }
                Err(e) => {
                    tx.send(Err(format!("{e:#}"))).ok();
                }
            }
        });
        let (url, pki_dir) = rx.recv().expect("cluster thread").expect("starting the test PostgreSQL cluster");
        SharedCluster { url, pki: Some(Pki::new(&pki_dir)) }
    })
}

/// Removes the cluster directories of earlier test runs: a test process ends
/// without running destructors, so its directory stays behind (its server
/// died with it). A directory is left alone while its server runs, and for
/// ten minutes after it was made (a run still starting its cluster).
fn sweep_stale_clusters() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else { return };
    for entry in entries.flatten() {
        if !entry.file_name().to_string_lossy().starts_with("cpis-test-pg") {
            continue;
        }
        let age = entry.metadata().and_then(|m| m.modified()).ok().and_then(|t| t.elapsed().ok());
        let pid = std::fs::read_to_string(entry.path().join("data/postmaster.pid"))
            .ok()
            .and_then(|s| s.lines().next().map(str::to_string));
        let running = pid.is_some_and(|pid| std::path::Path::new("/proc").join(pid.trim()).exists());
        if age.is_some_and(|a| a > Duration::from_secs(600)) && !running {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// A connection string for a brand-new database.
pub async fn fresh_database() -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    let base = shared_cluster().url.clone();
    let name = format!("t{}_{}", std::process::id(), N.fetch_add(1, Ordering::SeqCst));
    let client = cpis_runtime::db::connect(&base).await.expect("connect");
    client.batch_execute(&format!("CREATE DATABASE {name}")).await.expect("create database");
    drop(client);
    replace_dbname(&base, &name)
}

fn replace_dbname(url: &str, name: &str) -> String {
    let kept: Vec<&str> = url.split_whitespace().filter(|kv| !kv.starts_with("dbname=")).collect();
    format!("{} dbname={name}", kept.join(" "))
}

/// One test's suite.
pub struct TestSuite {
    pub suite: Suite,
    pub pki: Pki,
    pub database_url: String,
    pub state: tempfile::TempDir,
}

pub const TRUST_DOMAIN: &str = "cpis.local";

impl TestSuite {
    /// A fresh database, PKI and suite with default settings.
    pub async fn start() -> TestSuite {
        Self::start_with(ServiceConfigs {
            notification: notification_settings(Duration::from_millis(500)),
            ..Default::default()
        })
        .await
    }

    /// A suite that accepts arrivals up to `days` back (tests that build a
    /// person's history; the default window is 72 hours).
    pub async fn start_accepting_arrivals_from(days: i64) -> TestSuite {
        let mut configs =
            ServiceConfigs { notification: notification_settings(Duration::from_millis(500)), ..Default::default() };
        configs.attendance.arrival_window.past = chrono::TimeDelta::days(days);
        Self::start_with(configs).await
    }

    /// A fresh database, PKI and suite with the given settings.
    pub async fn start_with(configs: ServiceConfigs) -> TestSuite {
        let database_url = fresh_database().await;
        Self::start_on(database_url, configs).await
    }

    /// A fresh PKI and suite on the given database.
    pub async fn start_on(database_url: String, configs: ServiceConfigs) -> TestSuite {
        cpis_runtime::tls::install_default_provider();
        let state = tempfile::Builder::new().prefix("cpis-test").tempdir().expect("tempdir");
        let suite = Suite::start(SuiteOptions {
            state_dir: state.path().to_path_buf(),
            port_base: 0,
            trust_domain: TRUST_DOMAIN.into(),
            database_url: database_url.clone(),
            configs,
        })
        .await
        .expect("starting the suite");
        let pki = suite.pki.clone();
        let ts = TestSuite { suite, pki, database_url, state };
        ts.wait_ready().await;
        ts
    }

    /// Waits until every service reports its readiness as SERVING.
    pub async fn wait_ready(&self) {
        use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest};
        let me = Caller::Service(ServiceName::Registry);
        for (port, name) in self.ports_and_names() {
            let mut client = HealthClient::new(self.channel(port, &me));
            let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
            loop {
                let ok = client
                    .check(HealthCheckRequest { service: name.into() })
                    .await
                    .map(|r| r.into_inner().status == 1)
                    .unwrap_or(false);
                if ok {
                    break;
                }
                assert!(tokio::time::Instant::now() < deadline, "{name} never became ready");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }

    pub fn ports_and_names(&self) -> [(u16, &'static str); 3] {
        [
            (self.suite.registry.addr.port(), cpis_registry::SERVICE_NAME),
            (self.suite.attendance.addr.port(), cpis_attendance::SERVICE_NAME),
            (self.suite.notification.addr.port(), cpis_notification::SERVICE_NAME),
        ]
    }

    /// Certificate files for `caller` (issued on first use).
    pub fn identity(&self, caller: &Caller) -> TlsPaths {
        self.pki.ensure(caller, TRUST_DOMAIN).expect("issuing a certificate")
    }

    /// A channel to `port` presenting `caller`'s certificate.
    pub fn channel(&self, port: u16, caller: &Caller) -> Channel {
        cpis_runtime::client::channel(&format!("https://localhost:{port}"), &self.identity(caller), None)
            .expect("channel")
    }

    /// A channel to `port` presenting the given files (hostile identities).
    pub fn channel_with(&self, port: u16, tls: &TlsPaths) -> Channel {
        cpis_runtime::client::channel(&format!("https://localhost:{port}"), tls, None).expect("channel")
    }

    /// A channel to `port` that presents no client certificate at all.
    pub fn channel_without_certificate(&self, port: u16) -> Channel {
        let ca = std::fs::read(self.pki.ca_path()).expect("ca");
        Endpoint::from_shared(format!("https://localhost:{port}"))
            .expect("endpoint")
            .tls_config(ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca)))
            .expect("tls")
            .connect_lazy()
    }

    pub fn registry_port(&self) -> u16 {
        self.suite.registry.addr.port()
    }

    pub fn attendance_port(&self) -> u16 {
        self.suite.attendance.addr.port()
    }

    pub fn notification_port(&self) -> u16 {
        self.suite.notification.addr.port()
    }

    /// A Registry client for `caller`.
    pub fn registry(&self, caller: &Caller) -> RegistryServiceClient<Channel> {
        RegistryServiceClient::new(self.channel(self.registry_port(), caller))
    }

    /// A Notification client for `caller`.
    pub fn notification(&self, caller: &Caller) -> NotificationServiceClient<Channel> {
        NotificationServiceClient::new(self.channel(self.notification_port(), caller))
    }

    /// A certificate from a CA the suite does not trust.
    pub fn foreign_ca_identity(&self, caller: &Caller) -> TlsPaths {
        let other = Pki::new(&self.state.path().join("other-ca"));
        other.init().expect("other CA");
        let mut paths = other.issue(caller, TRUST_DOMAIN).expect("issue");
        paths.ca = self.pki.ca_path(); // trust the real server, present the foreign cert
        paths
    }

    /// A certificate from our CA with arbitrary contents.
    pub fn custom_identity(&self, stem: &str, options: IssueOptions) -> TlsPaths {
        self.pki.issue_custom(stem, &options).expect("issue")
    }

    /// A direct connection to this test's database.
    pub async fn db(&self) -> tokio_postgres::Client {
        cpis_runtime::db::connect(&self.database_url).await.expect("connect")
    }
}

pub fn council(code: &str) -> Caller {
    Caller::from_parts(CallerKind::Council, code).expect("council code")
}

pub fn setting(code: &str) -> Caller {
    Caller::from_parts(CallerKind::Setting, code).expect("setting code")
}

pub fn service(name: ServiceName) -> Caller {
    Caller::Service(name)
}

/// A valid test NHS number (999 range), distinct for each `serial` below 100,000.
pub fn nhs(serial: u32) -> String {
    assert!(serial < 100_000, "serial out of range");
    // 999 + one free digit + five serial digits + check digit: at most one
    // value of the free digit makes the check digit 10, so one of the first two works.
    (0..10)
        .find_map(|free| cpis_domain::validate::with_nhs_check_digit(&format!("999{free}{serial:05}")))
        .expect("one of ten free digits always gives a check digit")
}

/// The readiness status of the service on `port` (1 SERVING, 2 NOT_SERVING),
/// or `None` when it cannot be asked.
pub async fn readiness(ts: &TestSuite, port: u16, name: &str) -> Option<i32> {
    use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest};
    let mut client = HealthClient::new(ts.channel(port, &Caller::Service(ServiceName::Registry)));
    let mut request = tonic::Request::new(HealthCheckRequest { service: name.into() });
    request.set_timeout(Duration::from_secs(2));
    client.check(request).await.ok().map(|r| r.into_inner().status)
}

/// Waits up to `secs` for `check` to hold.
pub async fn eventually<F, Fut>(secs: u64, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The Prometheus text of a metrics endpoint, fetched over plain HTTP/1.1.
pub async fn scrape(addr: std::net::SocketAddr) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut conn = tokio::net::TcpStream::connect(addr).await.expect("metrics port");
    conn.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").await.unwrap();
    let mut body = String::new();
    conn.read_to_string(&mut body).await.unwrap();
    assert!(body.starts_with("HTTP/1.1 200"), "{body}");
    body
}

/// The value of one sample line (`name{labels} value`) in a scrape, summed
/// over every line whose name and labels contain all of `parts`.
pub fn sample(text: &str, parts: &[&str]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#') && parts.iter().all(|p| l.contains(p)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A valid child protection plan for `nhs_number` (born 2016-04-02, from 2025-01-10).
pub fn plan(reference: &str, nhs_number: &str) -> Plan {
    Plan {
        local_reference: reference.into(),
        nhs_number: nhs_number.into(),
        date_of_birth: "2016-04-02".into(),
        plan_type: PlanType::ChildProtection as i32,
        start_date: "2025-01-10".into(),
        contact: Some(ContactDetails {
            team_name: "Children's Services Front Door".into(),
            office_phone: "0161 234 5000".into(),
            emergency_duty_phone: "0161 255 8250".into(),
            email: "mash@example.gov.uk".into(),
        }),
        ..Default::default()
    }
}

/// A valid check-in of `nhs_number` at an emergency department, now, with a fresh request id.
pub fn arrival(nhs_number: &str) -> CheckInRequest {
    CheckInRequest {
        request_id: uuid::Uuid::new_v4().to_string(),
        nhs_number: nhs_number.into(),
        arrived_at: Some(cpis_domain::time::to_timestamp(chrono::Utc::now())),
        setting_type: SettingType::EmergencyDepartment as i32,
        ..Default::default()
    }
}

/// Notification settings with this heartbeat, every other value at its default.
pub fn notification_settings(heartbeat: Duration) -> cpis_notification::Settings {
    cpis_notification::Settings { heartbeat, ..Default::default() }
}

/// The next alert on an open stream (skipping heartbeats), within `secs`.
pub async fn next_alert(
    stream: &mut tonic::Streaming<cpis_proto::notification::v1::SubscribeResponse>,
    secs: u64,
    what: &str,
) -> cpis_proto::notification::v1::Alert {
    use cpis_proto::notification::v1::subscribe_response::Event;
    tokio::time::timeout(Duration::from_secs(secs), async {
        loop {
            if let Some(Event::Alert(a)) = stream.message().await.expect("stream").expect("stream open").event {
                return a;
            }
        }
    })
    .await
    .expect(what)
}

/// This process's resident memory, in KiB.
pub fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmRSS:")).map(|l| l.to_string()))
        .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        .unwrap_or(0)
}

/// A valid alert for `council`; `serial` picks the person and the episode.
pub fn alert_for(council: &str, serial: u32) -> cpis_proto::notification::v1::PublishAlertRequest {
    cpis_proto::notification::v1::PublishAlertRequest {
        council_code: council.into(),
        nhs_number: nhs(serial),
        plan_type: PlanType::ChildProtection as i32,
        local_reference: format!("REF-{serial}"),
        episode: Some(cpis_proto::common::v1::Episode {
            episode_id: format!("episode-{council}-{serial}"),
            setting_code: ALDER_HEY.into(),
            setting_type: SettingType::EmergencyDepartment as i32,
            arrived_at: Some(prost_types::Timestamp { seconds: 1_760_000_000 + i64::from(serial), nanos: 0 }),
        }),
        priority: cpis_proto::notification::v1::AlertPriority::Routine as i32,
        ..Default::default()
    }
}
