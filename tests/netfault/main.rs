//! Real network faults: PostgreSQL, the Registry, two Attendance replicas and
//! two Notification replicas each in its own Linux network namespace, joined
//! by veth pairs to a bridge, the services being the real `cpis serve`
//! binary. Packets are then silently dropped (nftables `drop`: no FIN, no
//! RST, what a lost node or a partition looks like) between
//!
//! (a) an Attendance replica (its relay) and PostgreSQL,
//! (b) a Notification replica and PostgreSQL (publishes of the replica's
//!     relay in flight, i.e. during its counter-lock statements),
//! (c) an Attendance replica and the Notification replica it publishes to,
//!
//! while check-ins keep arriving for three councils. In each case every
//! alert reaches the healthy Notification replica within [`BOUND`] of its
//! check-in, and in the end nothing is lost or duplicated and each council's
//! sequence order is its check-in commit order.
//!
//! It needs root (network namespaces), `ip` (iproute2) and `nft` (nftables);
//! without them it says so and passes, unless `CPIS_REQUIRE_NETFAULT=1` (CI
//! sets it), when it fails. It creates its namespaces itself, named after its
//! process id, and deletes them when it ends, also when it fails (drop
//! guards). Addresses are in 10.77.0.0/24, which exists only on the veths
//! inside those namespaces.
//!
//! The parts: `topology` (namespaces, bridge, firewall), `processes` (the
//! services and PostgreSQL), `load` (check-ins, the watcher, the ledger).

mod load;
mod processes;
mod topology;

use load::*;
use processes::*;
use topology::*;

use cpis_devkit::pki::Pki;
use cpis_domain::identity::{Caller, CallerKind, ServiceName};
use cpis_proto::attendance::v1::attendance_service_client::AttendanceServiceClient;
use cpis_proto::notification::v1::notification_service_client::NotificationServiceClient;
use cpis_proto::notification::v1::{Alert, ListAlertsRequest};
use cpis_proto::registry::v1::registry_service_client::RegistryServiceClient;
use cpis_proto::registry::v1::UpsertPlanRequest;
use cpis_runtime::tls::TlsPaths;
use std::cell::RefCell;
use std::net::IpAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Every alert must reach the healthy Notification replica within this
/// long of its check-in's answer, faults or not.
const BOUND: Duration = Duration::from_secs(20);

/// How long each fault lasts, with check-ins arriving throughout.
const FAULT: Duration = Duration::from_secs(8);

/// No run may take longer than this.
const LIMIT: Duration = Duration::from_secs(240);

const COUNCILS: [&str; 3] = ["E08000003", "E08000012", "E10000016"];
const PEOPLE: usize = 160;
const SETTING: &str = "RBQ01";
const TRUST_DOMAIN: &str = "cpis.local";

/// The parties and their last address octet.
const DB: (&str, u8) = ("db", 10);
const REGISTRY: (&str, u8) = ("reg", 11);
const A1: (&str, u8) = ("a1", 21);
const A2: (&str, u8) = ("a2", 22);
const N1: (&str, u8) = ("n1", 31);
const N2: (&str, u8) = ("n2", 32);
const CLIENT: (&str, u8) = ("cli", 50);
const PARTIES: [(&str, u8); 7] = [DB, REGISTRY, A1, A2, N1, N2, CLIENT];

/// Cuts attendance-1 off PostgreSQL at a moment when its relay holds
/// councils (in the middle of a pass: it has leased them and is publishing
/// or marking), checked from the database: the lease is still there after
/// the cut, since the relay can no longer release it. Returns how many
/// councils it held.
async fn cut_relay_mid_pass(
    topology: &Topology,
    db: &tokio_postgres::Client,
    relay_id: uuid::Uuid,
    clients: &Clients,
    ledger: &RefCell<Ledger>,
    next: &RefCell<Vec<usize>>,
) -> i64 {
    let held = "SELECT count(*) FROM attendance.relay_councils WHERE holder = $1 AND lease_until > now()";
    for _attempt in 0..20 {
        // Work for the relay: check-ins, half of them on attendance-1.
        let try_cut = async {
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                let n: i64 = db.query_one(held, &[&relay_id]).await.expect("leases").get(0);
                if n > 0 {
                    topology.cut(A1.0, DB.1);
                    return true;
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            false
        };
        let done = RefCell::new(false);
        let (cut, ()) = futures::join!(
            async {
                let cut = try_cut.await;
                *done.borrow_mut() = true;
                cut
            },
            async {
                while !*done.borrow() {
                    load(clients, ledger, next, Duration::from_millis(1)).await;
                }
            }
        );
        if !cut {
            continue;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        let n: i64 = db.query_one(held, &[&relay_id]).await.expect("leases").get(0);
        if n > 0 {
            return n;
        }
        topology.heal(A1.0);
    }
    panic!("attendance-1's relay was never caught holding a council");
}

/// How many publishes attendance-1's relay has logged as failed so far.
fn relay_failures(log: &std::path::Path) -> usize {
    std::fs::read_to_string(log).unwrap_or_default().lines().filter(|l| l.contains("alert not delivered")).count()
}

/// The relay id attendance-1 logged at start-up.
fn relay_id(log: &std::path::Path) -> uuid::Uuid {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let line = text.lines().find(|l| l.contains("outbox relay started")).expect("relay start line");
    let at = line.find("\"relay\":\"").expect("relay field") + 9;
    line[at..at + 36].parse().expect("relay id")
}

/// The scenario, run on a thread inside the client namespace.
async fn scenario(pki: Pki, topology: &Topology, database_url: &str, a1_log: &std::path::Path) {
    let url = |octet: u8, port: u16| format!("https://{}:{port}", ip(octet));
    wait_serving(
        &pki,
        &[
            (url(REGISTRY.1, 50051), cpis_registry::SERVICE_NAME),
            (url(N1.1, 50053), cpis_notification::SERVICE_NAME),
            (url(N2.1, 50053), cpis_notification::SERVICE_NAME),
            (url(A1.1, 50052), cpis_attendance::SERVICE_NAME),
            (url(A2.1, 50052), cpis_attendance::SERVICE_NAME),
        ],
    )
    .await;
    let tls = |caller: &Caller| pki.ensure(caller, TRUST_DOMAIN).expect("cert");
    let channel = |u: String, t: &TlsPaths| cpis_runtime::client::channel(&u, t, None).expect("channel");

    // Each council registers its children.
    let registered = COUNCILS.iter().enumerate().map(|(c, code)| {
        let mut registry = RegistryServiceClient::new(channel(url(REGISTRY.1, 50051), &tls(&council(code))));
        async move {
            for i in 0..PEOPLE {
                registry
                    .upsert_plan(UpsertPlanRequest {
                        plan: Some(plan(format!("NF-{i}"), person(c, i))),
                        expected_version: 0,
                    })
                    .await
                    .expect("plan");
            }
        }
    });
    futures::future::join_all(registered).await;

    let setting = tls(&Caller::from_parts(CallerKind::Setting, SETTING).expect("setting"));
    // The person at the setting: a development token, as a clinical system
    // sends its user's CIS2 token.
    let token = cpis_devkit::users::DevUsers::new(pki.dir().parent().expect("state dir"))
        .token(&cpis_devkit::users::TokenSpec {
            ttl: Duration::from_secs(3600),
            ..cpis_devkit::users::TokenSpec::new(SETTING, &["B0107"])
        })
        .expect("a user token");
    let user = cpis_testkit::UserHeaders::of(Some(&token));
    let clients = Clients {
        attendance: [
            AttendanceServiceClient::with_interceptor(channel(url(A1.1, 50052), &setting), user.clone()),
            AttendanceServiceClient::with_interceptor(channel(url(A2.1, 50052), &setting), user),
        ],
        notification: COUNCILS
            .iter()
            .map(|code| NotificationServiceClient::new(channel(url(N2.1, 50053), &tls(&council(code)))))
            .collect(),
    };
    let ledger = RefCell::new(Ledger {
        episodes: vec![Vec::new(); COUNCILS.len()],
        last_sequence: vec![0; COUNCILS.len()],
        ..Default::default()
    });
    let next = RefCell::new(vec![0usize; COUNCILS.len()]);

    let healthy = phase("no fault", &clients, &ledger, &next).await;
    assert!(healthy < BOUND);

    // (a) A relay loses PostgreSQL in the middle of its work.
    let (db, conn) = tokio_postgres::connect(database_url, tokio_postgres::NoTls).await.expect("database");
    tokio::spawn(conn);
    let held = cut_relay_mid_pass(topology, &db, relay_id(a1_log), &clients, &ledger, &next).await;
    println!("(a) attendance-1 cut off PostgreSQL while its relay held {held} council(s)");
    let worst = phase("(a) attendance-1 <-> PostgreSQL dropped", &clients, &ledger, &next).await;
    topology.heal(A1.0);
    assert!(worst < BOUND, "(a): an alert took {worst:?}");

    // (b) A Notification replica loses PostgreSQL while its publishes (and
    // their counter locks) are in flight.
    let failed_before = relay_failures(a1_log);
    topology.cut(N1.0, DB.1);
    let worst = phase("(b) notification-1 <-> PostgreSQL dropped", &clients, &ledger, &next).await;
    topology.heal(N1.0);
    assert!(worst < BOUND, "(b): an alert took {worst:?}");
    let failed = relay_failures(a1_log) - failed_before;
    println!("(b) attendance-1's publishes to notification-1 that failed meanwhile: {failed}");
    assert!(failed > 0, "(b): attendance-1 was publishing through notification-1 during the fault");

    // (c) A relay loses the Notification replica it publishes to.
    let failed_before = relay_failures(a1_log);
    topology.cut(A1.0, N1.1);
    let worst = phase("(c) attendance-1 <-> notification-1 dropped", &clients, &ledger, &next).await;
    topology.heal(A1.0);
    assert!(worst < BOUND, "(c): an alert took {worst:?}");
    let failed = relay_failures(a1_log) - failed_before;
    println!("(c) attendance-1's publishes that failed meanwhile: {failed}");
    assert!(failed > 0, "(c): attendance-1 was publishing to notification-1 during the fault");

    // Nothing lost, nothing twice, each council in check-in order.
    let episodes = ledger.borrow().episodes.clone();
    for (c, code) in COUNCILS.iter().enumerate() {
        let mut client = clients.notification[c].clone();
        let mut alerts: Vec<Alert> = Vec::new();
        loop {
            let after = alerts.last().map_or(0, |a| a.sequence);
            let page = client
                .list_alerts(ListAlertsRequest { after_sequence: after, page_size: 1000, replay: true })
                .await
                .expect("list")
                .into_inner();
            alerts.extend(page.alerts);
            if !page.has_more {
                break;
            }
        }
        let sequences: Vec<i64> = alerts.iter().map(|a| a.sequence).collect();
        assert_eq!(sequences, (1..=episodes[c].len() as i64).collect::<Vec<_>>(), "{code}: one alert per check-in");
        let order: Vec<String> = alerts.iter().map(|a| a.episode.clone().unwrap().episode_id).collect();
        assert_eq!(order, episodes[c], "{code}: sequence order is check-in commit order");
    }
}

#[test]
fn alerts_keep_flowing_in_order_when_packets_are_silently_dropped() {
    let required = std::env::var("CPIS_REQUIRE_NETFAULT").is_ok_and(|v| v == "1");
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let tools = ["ip", "nft"].iter().all(|t| Command::new(t).arg("-V").output().is_ok_and(|o| o.status.success()));
    if !root || !tools {
        assert!(!required, "CPIS_REQUIRE_NETFAULT=1 but root={root}, ip and nft present={tools}");
        eprintln!("netfault: skipped (needs root, ip and nft; CI runs it with CPIS_REQUIRE_NETFAULT=1)");
        return;
    }
    cpis_runtime::tls::install_default_provider();
    let started = Instant::now();
    let state = tempfile::Builder::new().prefix("cpis-netfault").tempdir().expect("tempdir");
    let topology = Topology::create().expect("creating the network namespaces");
    let database = Database::start(topology.ns(DB.0), state.path().to_path_buf());

    let pki = Pki::new(state.path());
    pki.init().expect("CA");
    let users = cpis_devkit::users::DevUsers::new(state.path());
    users.init().expect("development identity provider");
    let service_cert = |name: ServiceName, octets: &[u8]| {
        let addresses: Vec<IpAddr> = octets.iter().map(|o| IpAddr::V4(ip(*o))).collect();
        pki.issue_service_at(&Caller::Service(name), TRUST_DOMAIN, &addresses).expect("service certificate")
    };
    let certs = [
        (ServiceName::Registry, service_cert(ServiceName::Registry, &[REGISTRY.1])),
        (ServiceName::Attendance, service_cert(ServiceName::Attendance, &[A1.1, A2.1])),
        (ServiceName::Notification, service_cert(ServiceName::Notification, &[N1.1, N2.1])),
    ];
    let cert_of = |name: ServiceName| certs.iter().find(|(n, _)| *n == name).map(|(_, t)| t.clone()).expect("cert");

    let spawn = |name: &'static str, service: ServiceName, party: &str, port: u16, extra: &[(&str, String)]| {
        let tls = cert_of(service);
        let log = state.path().join(format!("{name}.log"));
        let file = std::fs::File::create(&log).expect("log file");
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &topology.ns(party), env!("CARGO_BIN_EXE_cpis"), "serve", service.as_str()])
            .env("CPIS_LISTEN", format!("0.0.0.0:{port}"))
            .env("CPIS_TLS_CA", &tls.ca)
            .env("CPIS_TLS_CERT", &tls.cert)
            .env("CPIS_TLS_KEY", &tls.key)
            .env("DATABASE_URL", format!("host={} port=5432 user=cpis dbname=cpis sslmode=disable", ip(DB.1)))
            .env("CPIS_DB_POOL_SIZE", "8")
            .env("CPIS_DRAIN_SECS", "1")
            // Short session settings, so the test's bounds are short.
            .env("CPIS_DB_LOCK_TIMEOUT_MS", "1000")
            .env("CPIS_DB_IDLE_IN_TRANSACTION_TIMEOUT_MS", "3000")
            .env("CPIS_DB_STATEMENT_TIMEOUT_MS", "10000")
            .env("CPIS_DB_KEEPALIVES_IDLE_SECS", "1")
            .env("CPIS_DB_KEEPALIVES_INTERVAL_SECS", "1")
            .env("CPIS_DB_KEEPALIVES_RETRIES", "2")
            .env("CPIS_DB_TCP_USER_TIMEOUT_MS", "3000")
            .env("CPIS_HEARTBEAT_SECS", "1")
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("log"))
            .stderr(file);
        for (k, v) in extra {
            cmd.env(k, v);
        }
        Service { name, child: cmd.spawn().expect("cpis serve"), log }
    };
    let relay = |notification: u8| {
        vec![
            ("CPIS_OIDC_ISSUER", cpis_devkit::users::DEV_ISSUER.to_string()),
            ("CPIS_OIDC_AUDIENCE", cpis_devkit::users::DEV_AUDIENCE.to_string()),
            ("CPIS_OIDC_JWKS_FILE", users.jwks_path().display().to_string()),
            ("CPIS_REGISTRY_URL", format!("https://{}:50051", ip(REGISTRY.1))),
            ("CPIS_NOTIFICATION_URL", format!("https://{}:50053", ip(notification))),
            ("CPIS_PUBLISH_TIMEOUT_MS", "1500".to_string()),
            ("CPIS_RELAY_LEASE_MS", "3000".to_string()),
            ("CPIS_RELAY_RETRY_INITIAL_MS", "100".to_string()),
            ("CPIS_RELAY_RETRY_MAX_MS", "1500".to_string()),
            ("CPIS_RELAY_POLL_MS", "250".to_string()),
        ]
    };
    let mut services = vec![spawn("registry", ServiceName::Registry, REGISTRY.0, 50051, &[])];
    // Migrations are serialised by an advisory lock; start the rest together.
    services.push(spawn("notification-1", ServiceName::Notification, N1.0, 50053, &[]));
    services.push(spawn("notification-2", ServiceName::Notification, N2.0, 50053, &[]));
    services.push(spawn("attendance-1", ServiceName::Attendance, A1.0, 50052, &relay(N1.1)));
    services.push(spawn("attendance-2", ServiceName::Attendance, A2.0, 50052, &relay(N2.1)));

    let client_ns = topology.ns(CLIENT.0);
    let outcome = std::thread::scope(|s| {
        s.spawn(|| {
            enter(&client_ns);
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
            rt.block_on(async {
                let a1_log = state.path().join("attendance-1.log");
                tokio::time::timeout(LIMIT, scenario(Pki::new(state.path()), &topology, &database.url, &a1_log))
                    .await
                    .expect("the scenario did not finish in time")
            })
        })
        .join()
    });
    if let Err(panic) = outcome {
        for s in &services {
            eprintln!("---- {} (last lines of {})\n{}", s.name, s.log.display(), s.tail());
        }
        drop(services);
        drop(database);
        drop(topology);
        std::panic::resume_unwind(panic);
    }
    println!("netfault: done in {:?}", started.elapsed());
    drop(services);
    drop(database);
    drop(topology);
}
