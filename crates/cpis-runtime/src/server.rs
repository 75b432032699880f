//! Running one gRPC service: the mutual-TLS listener, health and reflection
//! beside the service, the authorization layer around everything, readiness
//! that follows PostgreSQL, and a graceful shutdown a reader can follow:
//!
//! 1. [`Shutdown::request`] (Ctrl-C, SIGTERM, or a test) marks readiness
//!    `NOT_SERVING`, so load balancers stop sending new work;
//! 2. after the drain delay, [`Shutdown::stopping`] fires: the listener stops
//!    accepting, long-lived streams end, and in-flight calls finish;
//! 3. `serve` returns once every connection has closed.

use crate::authz::AuthzLayer;
use crate::handshakes::HandshakeSlots;
use crate::tls::ServerTls;
use deadpool_postgres::Pool;
use pin_project_lite::pin_project;
use std::future::Future as _;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tokio_stream::wrappers::ReceiverStream;
pub use tokio_util::sync::CancellationToken;
use tonic::service::Routes;
use tonic::transport::server::Connected;

pub use crate::peer::PeerInfo;

/// Caps on one listener's connections, refusing the excess before any TLS
/// work (the connection is closed at once).
#[derive(clap::Args, Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// Open connections per listener (handshaken or not); more are closed at once.
    #[arg(long, env = "CPIS_MAX_CONNECTIONS", default_value_t = 16_384)]
    pub max_connections: usize,
    /// TLS handshakes in progress per listener; more are closed at once.
    #[arg(long, env = "CPIS_MAX_HANDSHAKES", default_value_t = 256)]
    pub max_handshakes: usize,
    /// TLS handshakes in progress from one client address (an IPv6 /64) per
    /// listener; more from it are closed at once.
    #[arg(long, env = "CPIS_MAX_HANDSHAKES_PER_ADDRESS", default_value_t = 128)]
    pub max_handshakes_per_address: usize,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        crate::args::defaults()
    }
}

/// Largest HTTP/2 header block a client may send (64 KiB).
const MAX_HEADER_LIST_BYTES: u32 = 64 * 1024;

/// How long a connection without a verified identity stays open: long enough
/// to read the `UNAUTHENTICATED` answer and its reason, no longer.
const UNIDENTIFIED_LIFETIME: Duration = Duration::from_secs(2);

/// How long a connection whose caller was refused for a certificate that
/// stopped being valid (revoked, expired) stays open after the refusal: long
/// enough for its streams to end with their own `UNAUTHENTICATED`.
const REFUSED_CLOSE_GRACE: Duration = Duration::from_secs(1);

pin_project! {
    /// A server-side TLS connection that carries its client's identity.
    pub struct MtlsStream {
        #[pin]
        inner: TlsStream<TcpStream>,
        info: PeerInfo,
        // Its place under the listener's connection cap.
        _permit: OwnedSemaphorePermit,
        // Reads end (EOF, so the server closes the connection) once this
        // fires: set for connections without a verified identity.
        deadline: Option<Pin<Box<tokio::time::Sleep>>>,
        // Set once a refusal has been flushed: reads end.
        closed: bool,
    }
}

impl Connected for MtlsStream {
    type ConnectInfo = PeerInfo;

    fn connect_info(&self) -> PeerInfo {
        self.info.clone()
    }
}

impl AsyncRead for MtlsStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.project();
        if !*this.closed {
            if let Some(deadline) = this.deadline.as_mut() {
                if deadline.as_mut().poll(cx).is_ready() {
                    *this.closed = true;
                }
            }
        }
        if *this.closed {
            return Poll::Ready(Ok(()));
        }
        this.inner.poll_read(cx, buf)
    }
}

impl AsyncWrite for MtlsStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.project().inner.poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.project();
        let flushed = this.inner.poll_flush(cx);
        if flushed.is_ready() && this.info.close.is_cancelled() {
            if this.info.identity.is_err() {
                *this.closed = true;
            } else if this.deadline.is_none() {
                // A caller whose certificate stopped being valid: its open
                // streams end with their own UNAUTHENTICATED first.
                let mut grace = Box::pin(tokio::time::sleep(REFUSED_CLOSE_GRACE));
                let _ = grace.as_mut().poll(cx);
                *this.deadline = Some(grace);
            }
        }
        flushed
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.project().inner.poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// How long a client may take to complete the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Accepts TCP connections and completes TLS handshakes concurrently (a slow
/// client cannot hold up the others), yielding connections that know their
/// caller. Connections beyond `limits` are closed at once. Stops accepting
/// when `stop` fires.
pub fn mtls_incoming(
    listener: TcpListener,
    tls: ServerTls,
    limits: ConnectionLimits,
    stop: CancellationToken,
) -> ReceiverStream<io::Result<MtlsStream>> {
    let (tx, rx) = mpsc::channel(64);
    let acceptor = TlsAcceptor::from(tls.config());
    let connections = Arc::new(Semaphore::new(limits.max_connections));
    let handshakes = HandshakeSlots::new(limits.max_handshakes, limits.max_handshakes_per_address);
    tokio::spawn(async move {
        loop {
            let (tcp, addr) = tokio::select! {
                _ = stop.cancelled() => break,
                _ = tx.closed() => break,
                accepted = listener.accept() => match accepted {
                    Ok(conn) => conn,
                    Err(e) => {
                        // Typically EMFILE: back off instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            // Over a cap: drop the socket before spending anything on it.
            let (Ok(permit), Some(handshake)) =
                (connections.clone().try_acquire_owned(), handshakes.try_acquire(addr.ip()))
            else {
                tracing::debug!(remote = %addr, "connection refused: listener or address at its connection or handshake cap");
                continue;
            };
            // Fail closed: without the revocation list no caller can be
            // verified, so no handshake is started (readiness says why).
            if !tls.trust_loaded() {
                tracing::debug!(remote = %addr, "connection refused: the revocation list is not loaded");
                continue;
            }
            let _ = tcp.set_nodelay(true);
            let keepalive =
                socket2::TcpKeepalive::new().with_time(Duration::from_secs(60)).with_interval(Duration::from_secs(15));
            let _ = socket2::SockRef::from(&tcp).set_tcp_keepalive(&keepalive);
            let (acceptor, tls, tx) = (acceptor.clone(), tls.clone(), tx.clone());
            tokio::spawn(async move {
                let handshaken = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await;
                drop(handshake);
                match handshaken {
                    Ok(Ok(stream)) => {
                        let verified = tls.identify_chain(stream.get_ref().1.peer_certificates());
                        let (identity, recheck, deadline) = match verified {
                            Ok((caller, chain)) => (Ok(caller), Some((tls, Arc::new(chain))), None),
                            Err(e) => {
                                tracing::info!(remote = %addr, reason = %e, "connection without a valid identity");
                                (Err(e), None, Some(Box::pin(tokio::time::sleep(UNIDENTIFIED_LIFETIME))))
                            }
                        };
                        let info =
                            PeerInfo { remote_addr: Some(addr), identity, recheck, close: CancellationToken::new() };
                        let stream = MtlsStream { inner: stream, info, _permit: permit, deadline, closed: false };
                        let _ = tx.send(Ok(stream)).await;
                    }
                    Ok(Err(e)) => {
                        tracing::debug!(remote = %addr, error = %e, "TLS handshake failed")
                    }
                    Err(_) => tracing::debug!(remote = %addr, "TLS handshake timed out"),
                }
            });
        }
    });
    ReceiverStream::new(rx)
}

/// The two phases of shutting down, shared by every service in a process.
#[derive(Debug, Clone, Default)]
pub struct Shutdown {
    requested: CancellationToken,
    stopping: CancellationToken,
}

impl Shutdown {
    /// A fresh shutdown signal.
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts shutting down.
    pub fn request(&self) {
        self.requested.cancel();
    }

    /// Fires when shutdown has been requested (readiness goes `NOT_SERVING`).
    pub fn requested(&self) -> &CancellationToken {
        &self.requested
    }

    /// Fires after the drain delay: listeners close and streams end.
    pub fn stopping(&self) -> &CancellationToken {
        &self.stopping
    }

    /// Requests shutdown on Ctrl-C or SIGTERM.
    pub fn on_signals(&self) {
        let me = self.clone();
        tokio::spawn(async move {
            wait_for_signal().await;
            tracing::info!("shutdown requested");
            me.request();
        });
    }
}

/// Resolves on the first SIGINT or SIGTERM.
pub async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => {
                let _ = ctrl_c.await;
                return;
            }
        };
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

/// Transport settings for one server.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// The gRPC service name whose health is readiness (e.g. `cpis.registry.v1.RegistryService`).
    pub service_name: &'static str,
    /// Delay between readiness going `NOT_SERVING` and connections closing.
    pub drain: Duration,
    /// HTTP/2 keepalive ping interval (keeps idle streams alive through load balancers).
    pub http2_keepalive: Duration,
    /// Close connections after this age so Kubernetes can rebalance; clients reconnect.
    pub max_connection_age: Option<Duration>,
    /// How often readiness re-checks PostgreSQL.
    pub health_interval: Duration,
    /// Which methods this listener serves.
    pub surface: crate::authz::Surface,
    /// Verifies the people behind setting-facing calls (Attendance only).
    pub users: Option<crate::users::UserAuth>,
    /// How long in-flight calls may take to finish once stopping, before
    /// the remaining connections are closed.
    pub shutdown_grace: Duration,
    /// The short name of the service (`registry`, ...) for spans.
    pub component: &'static str,
    /// Where request metrics are counted.
    pub metrics: crate::metrics::Metrics,
    /// Caps on requests in flight, per caller and in all.
    pub limits: crate::limits::Limits,
    /// Caps on connections and handshakes in progress.
    pub connections: ConnectionLimits,
}

impl ServeOptions {
    /// Defaults for a service: no drain delay, 30 s keepalive, no age limit.
    pub fn new(service_name: &'static str, component: &'static str, metrics: crate::metrics::Metrics) -> Self {
        Self {
            service_name,
            component,
            metrics,
            limits: crate::limits::Limits::default(),
            connections: ConnectionLimits::default(),
            drain: Duration::ZERO,
            http2_keepalive: Duration::from_secs(30),
            max_connection_age: None,
            health_interval: Duration::from_secs(2),
            surface: crate::authz::Surface::Combined,
            users: None,
            shutdown_grace: Duration::from_secs(10),
        }
    }
}

/// Serves `routes` (plus health and reflection) on `listener` with mutual TLS
/// until `shutdown` completes. Readiness follows `pool`.
pub async fn serve(
    listener: TcpListener,
    tls: ServerTls,
    routes: Routes,
    pool: Pool,
    options: ServeOptions,
    shutdown: Shutdown,
) -> anyhow::Result<()> {
    let (reporter, health_service) = tonic_health::server::health_reporter();
    // tonic-health reports SERVING for registered names by default: say the
    // truth from the start and let the watcher below decide.
    reporter.set_service_status("", tonic_health::ServingStatus::Serving).await;
    reporter.set_service_status(options.service_name, tonic_health::ServingStatus::NotServing).await;
    tokio::spawn(watch_readiness(reporter, pool, tls.clone(), options.clone(), shutdown.clone()));

    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(cpis_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(cpis_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()?;
    let routes = routes.add_service(health_service).add_service(reflection_v1).add_service(reflection_v1alpha);

    // Drain: readiness goes NOT_SERVING first (watch_readiness), then after
    // the delay the listener and streams stop.
    let drain_shutdown = shutdown.clone();
    let drain = options.drain;
    tokio::spawn(async move {
        drain_shutdown.requested().cancelled().await;
        tokio::time::sleep(drain).await;
        drain_shutdown.stopping().cancel();
    });

    let incoming = mtls_incoming(listener, tls, options.connections, shutdown.stopping().clone());
    let mut builder = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(options.http2_keepalive))
        .http2_keepalive_timeout(Some(Duration::from_secs(20)))
        // Room for a user token (CIS2 tokens carry every role of a person)
        // above its own limit, so an oversized one is refused by the user
        // layer with its reason rather than by HTTP/2 without one.
        .http2_max_header_list_size(MAX_HEADER_LIST_BYTES);
    if let Some(age) = options.max_connection_age {
        builder = builder.max_connection_age(age).max_connection_age_grace(Duration::from_secs(30));
    }
    let stopping = shutdown.stopping().clone();
    let server = builder
        .layer(crate::telemetry::GrpcTraceLayer::new(options.component, options.metrics.clone()))
        .layer(crate::decode::UndecodableLayer)
        .layer(AuthzLayer::new(options.surface))
        .layer(crate::limits::LimitLayer::new(options.limits))
        .layer(crate::users::UserLayer::new(options.users.clone()))
        .add_routes(routes)
        .serve_with_incoming_shutdown(incoming, async move { stopping.cancelled().await });
    // Graceful shutdown waits for every connection to finish; a client that
    // stopped reading would hold it forever. After the grace period the
    // remaining connections are dropped (streams resume by sequence).
    let stopping = shutdown.stopping().clone();
    let grace = options.shutdown_grace;
    tokio::select! {
        result = server => result?,
        _ = async { stopping.cancelled().await; tokio::time::sleep(grace).await } => {
            tracing::warn!(service = options.service_name, "connections still open after the shutdown grace period; closing them");
        }
    }
    Ok(())
}

/// Keeps the readiness status in step with PostgreSQL and the trust
/// bundle (a configured revocation list that cannot be read), and turns it
/// `NOT_SERVING` for good once shutdown is requested.
async fn watch_readiness(
    reporter: tonic_health::server::HealthReporter,
    pool: Pool,
    tls: ServerTls,
    options: ServeOptions,
    shutdown: Shutdown,
) {
    let mut last = None;
    loop {
        let trust = tls.trust_loaded();
        let database = crate::db::ping(&pool).await;
        let now = (trust, database);
        if last != Some(now) {
            if trust && database {
                reporter.set_service_status(options.service_name, tonic_health::ServingStatus::Serving).await;
                tracing::info!(service = options.service_name, "ready: database reachable, revocation list loaded");
            } else {
                reporter.set_service_status(options.service_name, tonic_health::ServingStatus::NotServing).await;
                let why = if trust { "database unreachable" } else { "revocation list or trust bundle not loaded" };
                tracing::warn!(service = options.service_name, why, "not ready");
            }
            last = Some(now);
        }
        tokio::select! {
            _ = shutdown.requested().cancelled() => break,
            _ = tokio::time::sleep(options.health_interval) => {}
        }
    }
    reporter.set_service_status(options.service_name, tonic_health::ServingStatus::NotServing).await;
}
