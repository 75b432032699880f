//! `cpis`: the development launcher, the container entry point, the
//! development PKI, and client commands.

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use cpis::suite::{self, Common, ServiceConfigs, Suite, SuiteOptions};
use cpis_devkit::pgcluster::{ClusterOptions, PrivateCluster};
use cpis_devkit::pki::Pki;
use cpis_domain::identity::{Caller, CallerKind, ServiceName};
use cpis_runtime::tls::TlsPaths;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Parser, Debug)]
#[command(name = "cpis", version, about = "Child protection information sharing")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run all three services on 127.0.0.1 with mutual TLS, a development PKI
    /// and (without DATABASE_URL) a private PostgreSQL cluster.
    Dev(DevArgs),
    /// Run one service, configured from the environment (what a container runs).
    Serve(Box<ServeArgs>),
    /// The development PKI.
    Certs {
        #[command(subcommand)]
        command: CertsCommand,
    },
    /// Apply one service's schema migrations and exit (a Kubernetes init step).
    Migrate {
        /// registry, attendance or notification.
        service: String,
        #[command(flatten)]
        database: DatabaseArgs,
    },
    /// Delete what is past its retention period (one service's schema, or all).
    Purge(cpis::purge::PurgeArgs),
    /// Council: keep the register (sync a CSV, list, get, end, delete).
    Plans(cpis_cli::client::PlansArgs),
    /// Setting: check a person in and print what the clinician sees.
    CheckIn(cpis_cli::client::CheckInArgs),
    /// Council: print alerts as JSON lines, acknowledge them, resume after restarts.
    Subscribe(cpis_cli::client::SubscribeArgs),
    /// Council: the history of accesses to its children's flags.
    Audit(cpis_cli::client::AuditArgs),
    /// Against a running `cpis dev`: the whole story, end to end, narrated.
    Demo(cpis_cli::client::Connection),
    /// Check a service's gRPC health over mutual TLS: exit 0 when SERVING
    /// (Kubernetes exec probes: kubelet's own gRPC probes cannot present a
    /// client certificate).
    Probe(ProbeArgs),
}

#[derive(Args, Debug)]
struct ProbeArgs {
    /// The endpoint to check.
    #[arg(long, env = "CPIS_PROBE_ENDPOINT", default_value = "https://localhost:50051")]
    endpoint: String,
    /// The health service name: empty for liveness, the service's name for readiness.
    #[arg(long, default_value = "")]
    service: String,
    /// CA certificate (PEM).
    #[arg(long, env = "CPIS_TLS_CA")]
    ca: PathBuf,
    /// Client certificate (PEM).
    #[arg(long, env = "CPIS_TLS_CERT")]
    cert: PathBuf,
    /// Client key (PEM).
    #[arg(long, env = "CPIS_TLS_KEY")]
    key: PathBuf,
    /// Seconds before giving up.
    #[arg(long, default_value_t = 3)]
    timeout_secs: u64,
}

/// Where PostgreSQL is: a connection string, or a file holding one.
#[derive(Args, Debug, Clone)]
struct DatabaseArgs {
    /// PostgreSQL connection string (URL or key=value; sslmode, sslrootcert,
    /// sslcert, sslkey as in libpq).
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    database_url: Option<String>,
    /// A file holding the connection string (e.g. a mounted Secret's `uri`).
    #[arg(long, env = "DATABASE_URL_FILE")]
    database_url_file: Option<PathBuf>,
}

impl DatabaseArgs {
    /// The connection string, if one is set (an error when both are).
    fn url(&self) -> anyhow::Result<Option<String>> {
        cpis_runtime::db_tls::url_from(self.database_url.clone(), self.database_url_file.as_deref())
    }

    /// The connection string; an error naming both variables when neither is set.
    fn required_url(&self) -> anyhow::Result<String> {
        cpis_runtime::db_tls::required_url_from(self.database_url.clone(), self.database_url_file.as_deref())
    }
}

#[derive(Args, Debug, Clone)]
struct StateArgs {
    /// Where the PKI (and the private database) live.
    #[arg(long, env = "CPIS_STATE_DIR", default_value = ".cpis")]
    state_dir: PathBuf,
    /// The SPIFFE trust domain of identities.
    #[arg(long, env = "CPIS_TRUST_DOMAIN", default_value = "cpis.local")]
    trust_domain: String,
}

#[derive(Args, Debug)]
struct DevArgs {
    #[command(flatten)]
    state: StateArgs,
    /// Registry port; attendance listens on +1, notification on +2, the
    /// FHIR R4 API on +3.
    #[arg(long, default_value_t = 50051)]
    port_base: u16,
    /// Use this PostgreSQL instead of a private cluster.
    #[command(flatten)]
    database: DatabaseArgs,
    /// Heartbeat interval of idle alert streams, in seconds.
    #[arg(long, default_value_t = 15)]
    heartbeat_secs: u64,
}

#[derive(Subcommand, Debug)]
enum CertsCommand {
    /// Create the development CA unless it exists.
    Init(StateArgs),
    /// Issue a certificate for one identity.
    Issue {
        #[command(flatten)]
        state: StateArgs,
        /// council, setting or service.
        #[arg(long)]
        kind: String,
        /// GSS code, ODS code or service name.
        #[arg(long)]
        code: String,
    },
    /// Revoke the current certificate of one identity: it joins the CA's
    /// revocation list (`pki/crl.pem`), which running servers re-read.
    Revoke {
        #[command(flatten)]
        state: StateArgs,
        /// council, setting or service.
        #[arg(long)]
        kind: String,
        /// GSS code, ODS code or service name.
        #[arg(long)]
        code: String,
    },
}

#[derive(Args, Debug)]
struct ServeArgs {
    /// registry, attendance or notification.
    service: String,
    /// Address to listen on.
    #[arg(long, env = "CPIS_LISTEN", default_value = "0.0.0.0:50051")]
    listen: String,
    /// CA certificate (PEM) that issues every identity.
    #[arg(long, env = "CPIS_TLS_CA")]
    ca: PathBuf,
    /// This service's certificate (PEM).
    #[arg(long, env = "CPIS_TLS_CERT")]
    cert: PathBuf,
    /// This service's private key (PEM, PKCS#8).
    #[arg(long, env = "CPIS_TLS_KEY")]
    key: PathBuf,
    /// The SPIFFE trust domain.
    #[arg(long, env = "CPIS_TRUST_DOMAIN", default_value = "cpis.local")]
    trust_domain: String,
    #[command(flatten)]
    database: DatabaseArgs,
    /// Maximum pooled database connections.
    #[arg(long, env = "CPIS_DB_POOL_SIZE", default_value_t = 16)]
    pool_size: usize,
    /// Seconds between readiness going NOT_SERVING and connections closing.
    #[arg(long, env = "CPIS_DRAIN_SECS", default_value_t = 5)]
    drain_secs: u64,
    /// Requests and streams one council or setting may have in flight.
    #[arg(long, env = "CPIS_MAX_IN_FLIGHT_PER_CALLER", default_value_t = 64)]
    max_in_flight_per_caller: usize,
    /// Requests and streams this service may have in flight in all.
    #[arg(long, env = "CPIS_MAX_IN_FLIGHT", default_value_t = 20_000)]
    max_in_flight: usize,
    /// Open connections per listener; more are closed at once.
    #[arg(long, env = "CPIS_MAX_CONNECTIONS", default_value_t = 16_384)]
    max_connections: usize,
    /// TLS handshakes in progress per listener; more are closed at once.
    #[arg(long, env = "CPIS_MAX_HANDSHAKES", default_value_t = 256)]
    max_handshakes: usize,
    /// PEM certificate revocation list of client certificates (re-read when it changes).
    #[arg(long, env = "CPIS_TLS_CRL")]
    crl: Option<PathBuf>,
    /// Serve Prometheus metrics (plain HTTP, `/metrics`) on this address.
    #[arg(long, env = "CPIS_METRICS_LISTEN")]
    metrics_listen: Option<std::net::SocketAddr>,
    /// Serve internal methods (LookupFlags, PublishAlert) on this address only.
    #[arg(long, env = "CPIS_INTERNAL_LISTEN")]
    internal_listen: Option<std::net::SocketAddr>,
    /// Attendance: serve the FHIR R4 API (base path /FHIR/R4) on this address
    /// with the same mutual TLS; not served when unset.
    #[arg(long, env = "CPIS_FHIR_LISTEN")]
    fhir_listen: Option<std::net::SocketAddr>,
    /// Close client connections after this many seconds so load rebalances (0: never).
    #[arg(long, env = "CPIS_MAX_CONNECTION_AGE_SECS", default_value_t = 0)]
    max_connection_age_secs: u64,
    /// Attendance: the Registry's URL.
    #[arg(long, env = "CPIS_REGISTRY_URL", default_value = "https://registry:50051")]
    registry_url: String,
    /// Attendance: the Notification service's URL.
    #[arg(long, env = "CPIS_NOTIFICATION_URL", default_value = "https://notification:50053")]
    notification_url: String,
    /// Registry: share of active plans a sync may end without `allow_mass_end`.
    #[arg(long, env = "CPIS_MASS_END_SHARE", default_value_t = 0.10)]
    mass_end_share: f64,
    /// Registry: a SyncPlans upload that sends nothing for this many seconds is dropped, unapplied.
    #[arg(long, env = "CPIS_SYNC_IDLE_SECS", default_value_t = 60)]
    sync_idle_secs: u64,
    /// Registry: most plan rows in one SyncPlans upload (more is refused whole).
    #[arg(long, env = "CPIS_SYNC_MAX_ROWS", default_value_t = 1_000_000)]
    sync_max_rows: i64,
    /// Registry: pooled connections reserved for LookupFlags (0: a quarter of the pool, at least 2).
    #[arg(long, env = "CPIS_LOOKUP_RESERVED_CONNECTIONS", default_value_t = 0)]
    lookup_reserved_connections: usize,
    /// Registry: pooled connections one council's work may hold (0: half of what councils may use).
    #[arg(long, env = "CPIS_DB_CONNECTIONS_PER_COUNCIL", default_value_t = 0)]
    connections_per_council: usize,
    /// Registry: milliseconds LookupFlags waits for a connection (keep under Attendance's 2 s deadline).
    #[arg(long, env = "CPIS_LOOKUP_DB_WAIT_MS", default_value_t = 1000)]
    lookup_db_wait_ms: u64,
    /// Registry: days an unborn child protection plan stays in scope after the expected delivery date.
    #[arg(long, env = "CPIS_UNBORN_SCOPE_DAYS", default_value_t = cpis_registry::DEFAULT_UNBORN_SCOPE_DAYS)]
    unborn_scope_days: u32,
    /// Attendance: how far back an arrival may be reported, in hours.
    #[arg(long, env = "CPIS_ARRIVAL_MAX_AGE_HOURS", default_value_t = 72)]
    arrival_max_age_hours: u32,
    /// Attendance: how far ahead an arrival may be (clock skew), in minutes.
    #[arg(long, env = "CPIS_ARRIVAL_MAX_AHEAD_MINUTES", default_value_t = 5)]
    arrival_max_ahead_minutes: u32,
    /// Notification: heartbeat interval of idle streams, in seconds.
    #[arg(long, env = "CPIS_HEARTBEAT_SECS", default_value_t = 15)]
    heartbeat_secs: u64,
    /// Attendance: deadline of one PublishAlert call by the outbox relay, in milliseconds.
    #[arg(long, env = "CPIS_PUBLISH_TIMEOUT_MS", default_value_t = 5000)]
    publish_timeout_ms: u64,
    /// Attendance: first retry delay of a council whose alert was not delivered, in milliseconds (doubles).
    #[arg(long, env = "CPIS_RELAY_RETRY_INITIAL_MS", default_value_t = 200)]
    relay_retry_initial_ms: u64,
    /// Attendance: longest retry delay of a council, in milliseconds.
    #[arg(long, env = "CPIS_RELAY_RETRY_MAX_MS", default_value_t = 30_000)]
    relay_retry_max_ms: u64,
    /// Attendance: how long a council stays with a relay that stopped renewing its lease, in milliseconds.
    #[arg(long, env = "CPIS_RELAY_LEASE_MS", default_value_t = 15_000)]
    relay_lease_ms: u64,
    /// Attendance: longest sleep of the relay between passes, in milliseconds.
    #[arg(long, env = "CPIS_RELAY_POLL_MS", default_value_t = 1000)]
    relay_poll_ms: u64,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    match run().await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run() -> anyhow::Result<()> {
    cpis_runtime::tls::install_default_provider();
    let _telemetry = cpis_runtime::telemetry::init("cpis");
    let cli = Cli::parse();
    match cli.command {
        Command::Dev(args) => dev(args).await,
        Command::Serve(args) => serve(*args).await,
        Command::Certs { command } => certs(command),
        Command::Migrate { service, database } => migrate(&service, &database.required_url()?).await,
        Command::Probe(args) => probe(args).await,
        Command::Purge(args) => cpis::purge::run(args).await,
        Command::Plans(args) => cpis_cli::client::plans(args).await,
        Command::CheckIn(args) => cpis_cli::client::check_in(args).await,
        Command::Subscribe(args) => cpis_cli::client::subscribe(args).await,
        Command::Audit(args) => cpis_cli::client::audit(args).await,
        Command::Demo(conn) => cpis_cli::demo::run(conn).await,
    }
}

/// Identities `cpis dev` issues so that people can call it straight away.
const DEV_IDENTITIES: &[(CallerKind, &str)] = &[
    (CallerKind::Council, "E08000003"),
    (CallerKind::Council, "E08000012"),
    (CallerKind::Council, "E10000016"),
    (CallerKind::Setting, "RBQ01"),
    (CallerKind::Setting, "REM01"),
    (CallerKind::Setting, "RWJ01"),
    (CallerKind::Setting, "RVY01"),
    // Scheduled care (a GP practice): silent reads.
    (CallerKind::Setting, "Y01234"),
];

async fn dev(args: DevArgs) -> anyhow::Result<()> {
    let state_dir = args.state.state_dir.clone();
    std::fs::create_dir_all(&state_dir)?;
    let pki = Pki::new(&state_dir);
    if pki.init()? {
        println!("created a development CA in {}", pki.dir().display());
    }
    for (kind, code) in DEV_IDENTITIES {
        pki.ensure(&Caller::from_parts(*kind, code)?, &args.state.trust_domain)?;
    }

    // Without DATABASE_URL, a private cluster under the state dir; it stops
    // when `cluster` is dropped at the end of this function.
    // It runs with TLS, its certificate issued by the development CA.
    let (database_url, cluster) = match args.database.url()? {
        Some(url) => (url, None),
        None => {
            let options = ClusterOptions { pki_state_dir: Some(state_dir.clone()), ..Default::default() };
            let cluster = PrivateCluster::start(&state_dir.join("pg"), options)
                .context("starting the private PostgreSQL cluster")?;
            cluster.create_database("cpis").await?;
            (cluster.url("cpis"), Some(cluster))
        }
    };

    let suite = Suite::start(SuiteOptions {
        state_dir: state_dir.clone(),
        port_base: args.port_base,
        trust_domain: args.state.trust_domain.clone(),
        database_url: database_url.clone(),
        configs: ServiceConfigs { heartbeat: Some(Duration::from_secs(args.heartbeat_secs)), ..Default::default() },
    })
    .await?;

    println!("cpis dev is running (mutual TLS; Ctrl-C to stop)");
    println!("  registry      https://localhost:{}", suite.registry.addr.port());
    println!("  attendance    https://localhost:{}", suite.attendance.addr.port());
    println!("  notification  https://localhost:{}", suite.notification.addr.port());
    if let Some(fhir) = suite.attendance.fhir_addr {
        println!("  fhir          https://localhost:{}/FHIR/R4  (attendance, FHIR R4)", fhir.port());
    }
    match &cluster {
        Some(_) => {
            println!("  database      {database_url}  (private cluster under {})", state_dir.join("pg").display())
        }
        None => println!("  database      DATABASE_URL"),
    }
    for (name, s) in
        [("registry", &suite.registry), ("attendance", &suite.attendance), ("notification", &suite.notification)]
    {
        if let Some(addr) = s.metrics_addr {
            println!("  metrics       http://{addr}/metrics  ({name})");
        }
    }
    println!("  CA            {}", pki.ca_path().display());
    for (kind, code) in DEV_IDENTITIES {
        let paths = pki.paths_for(&Caller::from_parts(*kind, code)?);
        println!("  {:<8} {:<10} {}  {}", kind.as_str(), code, paths.cert.display(), paths.key.display());
    }
    println!("  more: cpis certs issue --state-dir {} --kind council|setting --code CODE", state_dir.display());

    cpis_runtime::server::wait_for_signal().await;
    println!("stopping");
    suite.stop().await?;
    drop(cluster);
    println!("stopped");
    Ok(())
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let common = Common {
        tls: TlsPaths { ca: args.ca.clone(), cert: args.cert.clone(), key: args.key.clone() },
        trust_domain: args.trust_domain.clone(),
        database_url: args.database.required_url()?,
        pool_size: args.pool_size,
        drain: Duration::from_secs(args.drain_secs),
        max_connection_age: (args.max_connection_age_secs > 0)
            .then(|| Duration::from_secs(args.max_connection_age_secs)),
        internal_listen: args.internal_listen,
        metrics_listen: args.metrics_listen,
        limits: cpis_runtime::limits::Limits { per_caller: args.max_in_flight_per_caller, total: args.max_in_flight },
        fhir_listen: args.fhir_listen,
        connections: cpis_runtime::server::ConnectionLimits {
            max_connections: args.max_connections,
            max_handshakes: args.max_handshakes,
        },
        crl: args.crl.clone(),
    };
    let listener =
        tokio::net::TcpListener::bind(&args.listen).await.with_context(|| format!("binding {}", args.listen))?;
    let running = match ServiceName::parse(&args.service) {
        Some(ServiceName::Registry) => {
            let config = cpis_registry::Config {
                mass_end_share: args.mass_end_share,
                unborn_scope_days: args.unborn_scope_days,
                sync_idle: Duration::from_secs(args.sync_idle_secs.max(1)),
                sync_max_rows: args.sync_max_rows,
                lookup_reserved_connections: args.lookup_reserved_connections,
                connections_per_council: args.connections_per_council,
                lookup_wait: Duration::from_millis(args.lookup_db_wait_ms),
                ..Default::default()
            };
            suite::start_registry(listener, &common, config).await?
        }
        Some(ServiceName::Notification) => {
            suite::start_notification(listener, &common, Some(Duration::from_secs(args.heartbeat_secs))).await?
        }
        Some(ServiceName::Attendance) => {
            let ms = Duration::from_millis;
            let config = cpis_attendance::Config {
                publish_timeout: ms(args.publish_timeout_ms.max(1)),
                retry_initial: ms(args.relay_retry_initial_ms.max(1)),
                retry_max: ms(args.relay_retry_max_ms.max(args.relay_retry_initial_ms).max(1)),
                relay_lease: ms(args.relay_lease_ms),
                relay_poll_interval: ms(args.relay_poll_ms.max(10)),
                arrival_window: cpis_attendance::ArrivalWindow {
                    past: chrono::TimeDelta::hours(args.arrival_max_age_hours.into()),
                    future: chrono::TimeDelta::minutes(args.arrival_max_ahead_minutes.into()),
                },
                ..cpis_attendance::Config::default()
            };
            suite::start_attendance(listener, &common, config, &args.registry_url, &args.notification_url).await?
        }
        None => anyhow::bail!("unknown service {:?}: expected registry, attendance or notification", args.service),
    };
    tracing::info!(service = %args.service, addr = %running.addr, "serving");
    running.shutdown.on_signals();
    running.join.await??;
    Ok(())
}

fn certs(command: CertsCommand) -> anyhow::Result<()> {
    match command {
        CertsCommand::Init(state) => {
            let pki = Pki::new(&state.state_dir);
            if pki.init()? {
                println!("created {}", pki.ca_path().display());
            } else {
                println!("exists {}", pki.ca_path().display());
            }
        }
        CertsCommand::Issue { state, kind, code } => {
            let kind = CallerKind::parse(&kind).context("--kind must be council, setting or service")?;
            let caller = Caller::from_parts(kind, &code)?;
            let pki = Pki::new(&state.state_dir);
            pki.init()?;
            let paths = pki.issue(&caller, &state.trust_domain)?;
            println!("{}", caller.spiffe_id(&state.trust_domain));
            println!("cert {}", paths.cert.display());
            println!("key  {}", paths.key.display());
            println!("ca   {}", paths.ca.display());
        }
        CertsCommand::Revoke { state, kind, code } => {
            let kind = CallerKind::parse(&kind).context("--kind must be council, setting or service")?;
            let caller = Caller::from_parts(kind, &code)?;
            let crl = Pki::new(&state.state_dir).revoke(&caller)?;
            println!("revoked {}", caller.spiffe_id(&state.trust_domain));
            println!("crl  {}", crl.display());
        }
    }
    Ok(())
}

async fn migrate(service: &str, database_url: &str) -> anyhow::Result<()> {
    let pool = cpis_runtime::db::pool(database_url, 2)?;
    let (schema, migrations) = match ServiceName::parse(service) {
        Some(ServiceName::Registry) => (cpis_registry::SCHEMA, cpis_registry::MIGRATIONS),
        Some(ServiceName::Attendance) => (cpis_attendance::SCHEMA, cpis_attendance::MIGRATIONS),
        Some(ServiceName::Notification) => (cpis_notification::SCHEMA, cpis_notification::MIGRATIONS),
        None => anyhow::bail!("unknown service {service:?}: expected registry, attendance or notification"),
    };
    cpis_runtime::db::migrate(&pool, schema, migrations).await?;
    println!("{schema}: migrations applied");
    Ok(())
}

async fn probe(args: ProbeArgs) -> anyhow::Result<()> {
    use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest};
    let tls = TlsPaths { ca: args.ca, cert: args.cert, key: args.key };
    let channel = cpis_runtime::client::channel(&args.endpoint, &tls, None)?;
    let mut client = HealthClient::new(channel);
    let check = client.check(HealthCheckRequest { service: args.service.clone() });
    let status = tokio::time::timeout(Duration::from_secs(args.timeout_secs), check)
        .await
        .context("health check timed out")??
        .into_inner()
        .status;
    // 1 is SERVING in grpc.health.v1.
    anyhow::ensure!(status == 1, "{:?} is not serving (status {status})", args.service);
    Ok(())
}
