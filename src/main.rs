//! `cpis`: the development launcher, the container entry point, the
//! development PKI, and client commands.
//!
//! Long (about 410 lines) because it declares every command's arguments in one place.
//!

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use cpis::suite::{self, ServiceConfigs, Suite, SuiteOptions};
use cpis_devkit::pgcluster::{ClusterOptions, PrivateCluster};
use cpis_devkit::pki::Pki;
use cpis_domain::identity::{Caller, CallerKind, ServiceName};
use cpis_runtime::settings::{DatabaseSettings, ServerSettings};
use cpis_runtime::tls::TlsPaths;
use std::path::PathBuf;
use std::time::Duration;

// jemalloc, not glibc's per-thread arenas (which keep a service at its peak
// after 10,000 streams close); background purging returns freed pages within ~1 s.
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;
#[cfg(not(target_env = "msvc"))]
#[export_name = "_rjem_malloc_conf"]
static MALLOC_CONF: &[u8; 43] = b"background_thread:true,dirty_decay_ms:1000\0";

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
    Serve {
        #[command(subcommand)]
        service: Box<ServeCommand>,
    },
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
        database: DatabaseSettings,
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
    /// Council (its own) or analyst (national, small counts withheld): figures per month.
    Report(cpis_cli::client::ReportArgs),
    /// Scheduled care: record that a child was not brought to an appointment.
    WasNotBrought(cpis_cli::client::WasNotBroughtArgs),
    /// The demographics feed: record one NHS number change (operators and tests).
    Demographics {
        #[command(subcommand)]
        command: DemographicsCommand,
    },
    /// Development users: signed tokens shaped as the NHS Care Identity Service issues them.
    Users {
        #[command(subcommand)]
        command: cpis_cli::users::UsersCommand,
    },
    /// Against a running `cpis dev`: the whole story, end to end, narrated.
    Demo(cpis_cli::client::Connection),
    /// Check a service's gRPC health over mutual TLS: exit 0 when SERVING
    /// (Kubernetes exec probes: kubelet's own gRPC probes cannot present a
    /// client certificate).
    Probe(ProbeArgs),
}

/// `cpis demographics ...`
#[derive(Subcommand, Debug)]
enum DemographicsCommand {
    /// Send one NHS number change as `service/demographics` (idempotent by --event-id).
    Record(cpis_cli::client::DemographicsRecordArgs),
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
    database: DatabaseSettings,
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

/// `cpis serve <service>`: one service, configured from the environment.
// Parsed once at start-up (and already boxed in `Command`): the variants'
// sizes do not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand, Debug)]
enum ServeCommand {
    /// The Registry service.
    Registry {
        #[command(flatten)]
        server: ServerSettings,
        #[command(flatten)]
        settings: cpis_registry::Settings,
    },
    /// The Attendance service (gRPC, and FHIR R4 when CPIS_FHIR_LISTEN is set).
    Attendance {
        #[command(flatten)]
        server: ServerSettings,
        #[command(flatten)]
        settings: cpis_attendance::Settings,
    },
    /// The Notification service.
    Notification {
        #[command(flatten)]
        server: ServerSettings,
        #[command(flatten)]
        settings: cpis_notification::Settings,
    },
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
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        // A value from the environment that does not parse: name the variable.
        Err(e) => match cpis_runtime::settings::explain(&<Cli as clap::CommandFactory>::command(), &e) {
            Some(message) => anyhow::bail!(message),
            None => e.exit(),
        },
    };
    match cli.command {
        Command::Dev(args) => dev(args).await,
        Command::Serve { service } => serve(*service).await,
        Command::Certs { command } => certs(command),
        Command::Migrate { service, database } => migrate(&service, &database.required()?).await,
        Command::Probe(args) => probe(args).await,
        Command::Purge(args) => cpis::purge::run(args).await,
        Command::Plans(args) => cpis_cli::client::plans(args).await,
        Command::CheckIn(args) => cpis_cli::client::check_in(args).await,
        Command::Subscribe(args) => cpis_cli::client::subscribe(args).await,
        Command::Audit(args) => cpis_cli::client::audit(args).await,
        Command::Users { command } => cpis_cli::users::users(command),
        Command::WasNotBrought(args) => cpis_cli::client::was_not_brought(args).await,
        Command::Report(args) => cpis_cli::client::report(args).await,
        Command::Demographics { command: DemographicsCommand::Record(args) } => {
            cpis_cli::client::demographics_record(args).await
        }
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
    // Scheduled care (a GP practice): silent reads, missed appointments.
    (CallerKind::Setting, "Y01234"),
    // The demographics feed's follower (NHS number changes).
    (CallerKind::Service, "demographics"),
    // An analyst (the national report).
    (CallerKind::Analyst, "NHSE"),
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
    let (database_url, cluster) = match args.database.optional()? {
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
        configs: ServiceConfigs {
            notification: cpis_notification::Settings {
                heartbeat: Duration::from_secs(args.heartbeat_secs),
                ..Default::default()
            },
            ..Default::default()
        },
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
    println!(
        "  users         tokens required on check-in, silent read, episodes and FHIR searches; keys {}",
        suite.users.jwks_path().display()
    );
    println!(
        "                cpis users token --state-dir {} --setting RBQ01 --activity B0107[,B0170]",
        state_dir.display()
    );

    cpis_runtime::server::wait_for_signal().await;
    println!("stopping");
    suite.stop().await?;
    drop(cluster);
    println!("stopped");
    Ok(())
}

async fn serve(command: ServeCommand) -> anyhow::Result<()> {
    let (name, server) = match &command {
        ServeCommand::Registry { server, .. } => ("registry", server),
        ServeCommand::Attendance { server, .. } => ("attendance", server),
        ServeCommand::Notification { server, .. } => ("notification", server),
    };
    server.validate()?;
    let listener =
        tokio::net::TcpListener::bind(&server.listen).await.with_context(|| format!("binding {}", server.listen))?;
    let running = match command {
        ServeCommand::Registry { server, settings } => suite::start_registry(listener, &server, settings).await?,
        ServeCommand::Attendance { server, settings } => suite::start_attendance(listener, &server, settings).await?,
        ServeCommand::Notification { server, settings } => {
            suite::start_notification(listener, &server, settings).await?
        }
    };
    tracing::info!(service = name, addr = %running.addr, "serving");
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
            let kind = CallerKind::parse(&kind).context("--kind must be council, setting, service or analyst")?;
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
            let kind = CallerKind::parse(&kind).context("--kind must be council, setting, service or analyst")?;
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
    let migrations = match ServiceName::parse(service) {
        Some(ServiceName::Registry) => cpis_registry::MIGRATIONS,
        Some(ServiceName::Attendance) => cpis_attendance::MIGRATIONS,
        Some(ServiceName::Notification) => cpis_notification::MIGRATIONS,
        Some(ServiceName::Demographics) | None => {
            anyhow::bail!("unknown service {service:?}: expected registry, attendance or notification")
        }
    };
    migrations.run(&pool).await?;
    println!("{}: migrations applied", migrations.schema);
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

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory as _;

    fn env_vars(command: &clap::Command, out: &mut Vec<String>) {
        for arg in command.get_arguments() {
            if let Some(env) = arg.get_env() {
                out.push(env.to_string_lossy().into_owned());
            }
        }
        for sub in command.get_subcommands() {
            env_vars(sub, out);
        }
    }

    #[test]
    fn every_setting_of_every_service_is_in_the_readme_table() {
        let readme = include_str!("../README.md");
        let cli = Cli::command();
        let serve = cli.find_subcommand("serve").expect("serve");
        let mut vars = Vec::new();
        env_vars(serve, &mut vars);
        assert!(vars.len() > 30, "{vars:?}");
        for var in vars {
            assert!(readme.contains(&format!("| `{var}` |")), "{var} is not in the README's settings table");
        }
    }

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }
}
