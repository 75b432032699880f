//! Starting services: each one alone (`cpis serve`, a Kubernetes pod) or all
//! three together on 127.0.0.1 (`cpis dev`, the tests, the benchmarks).
//! The same code path runs in every case.

use anyhow::Context as _;
use cpis_devkit::pki::Pki;
use cpis_devkit::users::DevUsers;
use cpis_domain::identity::{Caller, ServiceName};
use cpis_runtime::authz::Surface;
use cpis_runtime::db::DbPool;
use cpis_runtime::metrics::Metrics;
use cpis_runtime::server::{ServeOptions, Shutdown};
use cpis_runtime::settings::ServerSettings;
use cpis_runtime::tls::ServerTls;
use cpis_runtime::users::UserAuthSettings;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// Settings of all three services, for running them together.
#[derive(Debug, Clone, Default)]
pub struct ServiceConfigs {
    /// Registry settings.
    pub registry: cpis_registry::Settings,
    /// Attendance settings (its Registry and Notification URLs and FHIR
    /// address are filled in by [`Suite::start`]).
    pub attendance: cpis_attendance::Settings,
    /// Notification settings.
    pub notification: cpis_notification::Settings,
    /// Caps on requests in flight (per caller and in all) for every service.
    pub limits: cpis_runtime::limits::Limits,
    /// Pooled database connections of each service (the default when unset).
    pub pool_size: Option<usize>,
    /// Session settings of every service's database connections (the
    /// `CPIS_DB_*` environment variables when unset).
    pub db_session: Option<cpis_runtime::db::SessionSettings>,
    /// Caps on each listener's connections and handshakes (the defaults when unset).
    pub connections: Option<cpis_runtime::server::ConnectionLimits>,
}

/// One running service.
#[derive(Debug)]
pub struct RunningService {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its shutdown signal.
    pub shutdown: Shutdown,
    /// Resolves when it has stopped.
    pub join: JoinHandle<anyhow::Result<()>>,
    /// Its metrics.
    pub metrics: Metrics,
    /// Where its metrics are served, when they are.
    pub metrics_addr: Option<SocketAddr>,
    /// Attendance: where its FHIR R4 API is served, when it is.
    pub fhir_addr: Option<SocketAddr>,
}

impl RunningService {
    /// Requests shutdown and waits until the service has stopped.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.shutdown.request();
        self.join.await.context("service task panicked")?
    }
}

fn options(name: &'static str, component: &'static str, common: &ServerSettings, metrics: &Metrics) -> ServeOptions {
    let mut options = ServeOptions::new(name, component, metrics.clone());
    options.drain = common.drain;
    options.max_connection_age = common.max_connection_age();
    options.limits = common.limits;
    options.connections = common.connections;
    options
}

/// Serves `routes` on `listener` (and on the internal listener, when
/// configured) until `shutdown` completes.
async fn spawn_serving(
    listener: TcpListener,
    common: &ServerSettings,
    routes: tonic::service::Routes,
    pool: DbPool,
    mut opts: ServeOptions,
    shutdown: Shutdown,
) -> anyhow::Result<JoinHandle<anyhow::Result<()>>> {
    let tls = ServerTls::load_with_crl(&common.tls, common.crl.as_deref(), &common.trust_domain)?;
    opts.metrics.watch_pool(pool.clone());
    // Readiness asks the database on a connection of its own: a pool busy
    // with work is not an outage, and must not take the pod out of its Service.
    let pool = common.db_pool(1)?;
    let Some(internal_addr) = common.internal_listen else {
        return Ok(tokio::spawn(cpis_runtime::server::serve(listener, tls, routes, pool, opts, shutdown)));
    };
    let internal = TcpListener::bind(internal_addr).await.with_context(|| format!("binding {internal_addr}"))?;
    let mut internal_opts = opts.clone();
    opts.surface = Surface::Public;
    internal_opts.surface = Surface::Internal;
    let public =
        cpis_runtime::server::serve(listener, tls.clone(), routes.clone(), pool.clone(), opts, shutdown.clone());
    let internal = cpis_runtime::server::serve(internal, tls, routes, pool, internal_opts, shutdown);
    Ok(tokio::spawn(async move {
        tokio::try_join!(public, internal)?;
        Ok(())
    }))
}

fn pool(common: &ServerSettings) -> anyhow::Result<DbPool> {
    common.db_pool(common.pool_size)
}

/// Serves `metrics` on the configured address until the service stops.
async fn spawn_metrics(
    common: &ServerSettings,
    metrics: &Metrics,
    shutdown: &Shutdown,
) -> anyhow::Result<Option<SocketAddr>> {
    let Some(addr) = common.metrics_listen else { return Ok(None) };
    let listener = TcpListener::bind(addr).await.with_context(|| format!("binding metrics on {addr}"))?;
    let local = listener.local_addr()?;
    tokio::spawn(cpis_runtime::metrics::serve(listener, metrics.clone(), shutdown.stopping().clone()));
    Ok(Some(local))
}

/// Starts the Registry service on `listener`.
pub async fn start_registry(
    listener: TcpListener,
    common: &ServerSettings,
    config: cpis_registry::Settings,
) -> anyhow::Result<RunningService> {
    config.validate()?;
    let pool = pool(common)?;
    let service = cpis_registry::Registry::new(config, pool.clone()).await?;
    let addr = listener.local_addr()?;
    let shutdown = Shutdown::new();
    let metrics = Metrics::new("registry");
    let join = spawn_serving(
        listener,
        common,
        service.routes(),
        pool,
        options(cpis_registry::SERVICE_NAME, "registry", common, &metrics),
        shutdown.clone(),
    )
    .await?;
    let metrics_addr = spawn_metrics(common, &metrics, &shutdown).await?;
    Ok(RunningService { addr, shutdown, join, metrics, metrics_addr, fhir_addr: None })
}

/// Starts the Notification service on `listener`.
pub async fn start_notification(
    listener: TcpListener,
    common: &ServerSettings,
    config: cpis_notification::Settings,
) -> anyhow::Result<RunningService> {
    config.validate()?;
    let pool = pool(common)?;
    let shutdown = Shutdown::new();
    let service =
        cpis_notification::Notification::new(config, pool.clone(), &common.database_url()?, shutdown.clone()).await?;
    let addr = listener.local_addr()?;
    let metrics = Metrics::new("notification");
    service.register_metrics(&metrics);
    let join = spawn_serving(
        listener,
        common,
        service.routes(),
        pool,
        options(cpis_notification::SERVICE_NAME, "notification", common, &metrics),
        shutdown.clone(),
    )
    .await?;
    let metrics_addr = spawn_metrics(common, &metrics, &shutdown).await?;
    Ok(RunningService { addr, shutdown, join, metrics, metrics_addr, fhir_addr: None })
}

/// Starts the Attendance service on `listener`, calling the Registry and
/// Notification services at the `https://` URLs of its settings.
pub async fn start_attendance(
    listener: TcpListener,
    common: &ServerSettings,
    config: cpis_attendance::Settings,
) -> anyhow::Result<RunningService> {
    config.validate()?;
    let pool = pool(common)?;
    let shutdown = Shutdown::new();
    let registry = cpis_runtime::client::channel(&config.registry_url, &common.tls, None)?;
    let notification = cpis_runtime::client::channel(&config.notification_url, &common.tls, None)?;
    let fhir_listen = config.fhir_listen;
    let fhir_base_url = config.fhir_base_url.clone();
    // The people behind setting-facing calls: one verifier (and one key
    // cache) for the gRPC and FHIR ports.
    let users = cpis_runtime::users::UserAuth::start(&config.users, shutdown.stopping().clone()).await?;
    // The relay's statements are all safe to lose in a database crash
    // (leases expire, a lost delivery mark republishes): early commits.
    let relay_pool = common.db_pool_early_commit(cpis_attendance::RELAY_POOL_SIZE)?;
    let service =
        cpis_attendance::Attendance::new(config, pool.clone(), relay_pool, registry, notification, shutdown.clone())
            .await?;
    let addr = listener.local_addr()?;
    let metrics = Metrics::new("attendance");
    service.register_metrics(&metrics);
    let grpc = spawn_serving(
        listener,
        common,
        service.routes(),
        pool,
        ServeOptions {
            users: Some(users.clone()),
            ..options(cpis_attendance::SERVICE_NAME, "attendance", common, &metrics)
        },
        shutdown.clone(),
    )
    .await?;
    // The FHIR R4 API: the same identities, authorization, limits and telemetry.
    let (join, fhir_addr) = match fhir_listen {
        None => (grpc, None),
        Some(fhir_at) => {
            let fhir_listener =
                TcpListener::bind(fhir_at).await.with_context(|| format!("binding the FHIR API on {fhir_at}"))?;
            let fhir_addr = fhir_listener.local_addr()?;
            let options = cpis_attendance::fhir::FhirOptions {
                metrics: metrics.clone(),
                limits: common.limits,
                shutdown_grace: Duration::from_secs(10),
                connections: common.connections,
                users: Some(users),
                base_url: fhir_base_url,
            };
            let fhir = cpis_attendance::fhir::serve(
                fhir_listener,
                ServerTls::load_with_crl(&common.tls, common.crl.as_deref(), &common.trust_domain)?,
                service,
                options,
                shutdown.clone(),
            );
            let join = tokio::spawn(async move {
                let (grpc, fhir) = tokio::join!(grpc, fhir);
                grpc.context("attendance gRPC task panicked")??;
                fhir
            });
            (join, Some(fhir_addr))
        }
    };
    let metrics_addr = spawn_metrics(common, &metrics, &shutdown).await?;
    Ok(RunningService { addr, shutdown, join, metrics, metrics_addr, fhir_addr })
}

/// Where and how to run the whole suite on 127.0.0.1.
#[derive(Debug, Clone)]
pub struct SuiteOptions {
    /// Holds `pki/` (and the private cluster, when the launcher starts one).
    pub state_dir: PathBuf,
    /// Registry port; attendance +1, notification +2, the FHIR API +3. 0
    /// picks free ports.
    pub port_base: u16,
    /// The SPIFFE trust domain.
    pub trust_domain: String,
    /// PostgreSQL connection string.
    pub database_url: String,
    /// Service settings.
    pub configs: ServiceConfigs,
}

/// The three services running together.
#[derive(Debug)]
pub struct Suite {
    /// The Registry service.
    pub registry: RunningService,
    /// The Attendance service.
    pub attendance: RunningService,
    /// The Notification service.
    pub notification: RunningService,
    /// The development PKI.
    pub pki: Pki,
    /// The development identity provider whose tokens Attendance accepts
    /// (unless the settings named another).
    pub users: DevUsers,
}

/// Server settings of one of our services under a development PKI: metrics
/// on a free loopback port, no drain, the PKI's revocation list.
pub fn dev_common(
    pki: &Pki,
    name: ServiceName,
    trust_domain: &str,
    database_url: &str,
) -> anyhow::Result<ServerSettings> {
    let tls = pki.ensure(&Caller::Service(name), trust_domain)?;
    let mut common = ServerSettings::new(tls, database_url);
    common.trust_domain = trust_domain.to_string();
    common.drain = Duration::ZERO;
    common.metrics_listen = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
    common.crl = Some(pki.crl_path());
    Ok(common)
}

fn with_limits(mut common: ServerSettings, options: &SuiteOptions) -> ServerSettings {
    common.limits = options.configs.limits;
    if let Some(size) = options.configs.pool_size {
        common.pool_size = size;
    }
    common.db_session = options.configs.db_session;
    if let Some(connections) = options.configs.connections {
        common.connections = connections;
    }
    common
}

async fn bind(port_base: u16, offset: u16) -> anyhow::Result<TcpListener> {
    let port = if port_base == 0 { 0 } else { port_base + offset };
    TcpListener::bind(("127.0.0.1", port)).await.with_context(|| format!("binding 127.0.0.1:{port}"))
}

impl Suite {
    /// Creates the PKI and the development identity provider if needed and
    /// starts all three services. Attendance verifies the development
    /// provider's tokens unless its settings name an issuer of their own.
    pub async fn start(options: SuiteOptions) -> anyhow::Result<Suite> {
        let pki = Pki::new(&options.state_dir);
        pki.init()?;
        let users = DevUsers::new(&options.state_dir);
        users.init()?;
        let td = &options.trust_domain;
        let db = &options.database_url;
        let registry_l = bind(options.port_base, 0).await?;
        let attendance_l = bind(options.port_base, 1).await?;
        let notification_l = bind(options.port_base, 2).await?;

        let registry = start_registry(
            registry_l,
            &with_limits(dev_common(&pki, ServiceName::Registry, td, db)?, &options),
            options.configs.registry.clone(),
        )
        .await?;
        let notification = start_notification(
            notification_l,
            &with_limits(dev_common(&pki, ServiceName::Notification, td, db)?, &options),
            options.configs.notification.clone(),
        )
        .await?;
        let fhir_port = if options.port_base == 0 { 0 } else { options.port_base + 3 };
        let attendance_common = with_limits(dev_common(&pki, ServiceName::Attendance, td, db)?, &options);
        let mut user_auth = options.configs.attendance.users.clone();
        if user_auth.issuer.is_none() {
            user_auth = UserAuthSettings { mode: user_auth.mode, ..users.user_auth_settings() };
        }
        let attendance_settings = cpis_attendance::Settings {
            users: user_auth,
            registry_url: format!("https://localhost:{}", registry.addr.port()),
            notification_url: format!("https://localhost:{}", notification.addr.port()),
            fhir_listen: Some(SocketAddr::from(([127, 0, 0, 1], fhir_port))),
            ..options.configs.attendance.clone()
        };
        let attendance = start_attendance(attendance_l, &attendance_common, attendance_settings).await?;
        Ok(Suite { registry, attendance, notification, pki, users })
    }

    /// Stops all three services, Attendance first (it calls the others).
    pub async fn stop(self) -> anyhow::Result<()> {
        for s in [&self.attendance, &self.registry, &self.notification] {
            s.shutdown.request();
        }
        self.attendance.join.await??;
        self.registry.join.await??;
        self.notification.join.await??;
        Ok(())
    }

    /// The state directory of the development PKI.
    pub fn pki_dir(&self) -> &Path {
        self.pki.dir()
    }
}
