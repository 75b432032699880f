//! The Notification service: a durable, ordered alert log per council, and
//! resumable server-streaming subscriptions fed from it.
//!
//! How an alert travels: `PublishAlert` or, many at a time in one
//! transaction, `PublishAlerts` (the Attendance service only) stores it with the council's next gapless sequence and sends `NOTIFY` with the
//! council code and that sequence in the same transaction ([`store`]). Every
//! instance holds one `LISTEN` connection and one safety poll ([`listen`])
//! that keep each council's latest sequence in memory ([`fanout`]); a stream
//! whose council has something newer than its cursor reads the table after
//! the cursor a page at a time, as fast as the client takes them, and an
//! idle one sends heartbeats from memory without a query ([`stream`]). The table is the truth, the
//! notification only a wake-up, so any number of replicas can serve any
//! council.
//!
//! Every handler has one shape: the trait method takes the caller the
//! authorization layer verified (which also guarantees the caller's kind),
//! calls one operation returning `Result<_, ApiError>`, and converts.
//!
//! # Long-lived streams behind load balancers
//!
//! Idle TCP connections are cut by load balancers (AWS NLB after about
//! 350 s, classic ELB after 60 s), and Kubernetes only rebalances on new
//! connections. The settings for this live where the connections are made:
//!
//! - server side, [`cpis_runtime::server::serve`] with
//!   [`cpis_runtime::server::ServeOptions`]: HTTP/2 keepalive pings every 30 s
//!   (`http2_keepalive`, 20 s timeout), TCP keepalive on every accepted
//!   socket (idle 60 s, probes every 15 s), and `max_connection_age` from
//!   `CPIS_MAX_CONNECTION_AGE_SECS` (off by default; 1800 s is a sensible
//!   production value) with a 30 s grace, after which streams end and
//!   clients reconnect, possibly to a new replica;
//! - client side, [`cpis_runtime::client::endpoint`]: TCP keepalive 60 s,
//!   HTTP/2 keepalive 30 s with a 20 s timeout, also while idle;
//! - in the stream itself, a heartbeat every [`Settings::heartbeat`] (default
//!   15 s) while idle, so proxies that ignore HTTP/2 pings still see traffic
//!   and a client that misses two or three heartbeats knows to reconnect.
//!
//! A stream the server ends (shutdown, database failure) always ends with a
//! non-OK status, `UNAVAILABLE`, sent after every alert already buffered, so
//! a full buffer cannot swallow it and no client reads the end as "done". A
//! client that reconnects (after a deploy, a `max_connection_age` cut, or
//! such an end) resumes with `after_sequence` = the last sequence it holds,
//! or 0 after acknowledging, and loses nothing. With `replay` set,
//! `after_sequence` is taken as given whatever was acknowledged (0: from
//! sequence 1), for a case system that lost what it had received.
//!
//! Operators see each council's unacknowledged alerts, the age of the oldest
//! and its open subscriptions ([`delivery`]).

pub mod alert;
pub mod alert_log;
pub mod delivery;
pub mod fanout;
pub mod listen;
mod report;
pub mod retention;
pub mod settings;
pub mod store;
pub mod stream;
pub mod stream_metrics;

use crate::alert::NewAlert;
use crate::fanout::Fanout;
use crate::listen::ListenerConfig;
use crate::store::{AckError, Store};
use crate::stream::{StreamContext, StreamSettings, Subscription};
use cpis_domain::identity::Caller;
use cpis_domain::validate::Violations;
use cpis_proto::notification::v1 as pb;
use cpis_runtime::db::DbPool;
use cpis_runtime::migrate::{Frozen, Migrations};
use cpis_runtime::recheck::Identity;
use cpis_runtime::server::Shutdown;
use cpis_runtime::ApiError;
use std::pin::Pin;
use std::sync::Arc;
use tonic::{Request, Response, Status};
use tracing::Instrument;

/// The gRPC name of this service (readiness is reported under it).
pub const SERVICE_NAME: &str = "cpis.notification.v1.NotificationService";

/// The schema this service owns.
pub const SCHEMA: &str = "notification";

/// Schema migrations (`migrations/V{n}__{name}.sql`), applied in order at start-up.
pub const MIGRATIONS: Migrations = Migrations { schema: SCHEMA, runner: embedded::migrations::runner, frozen: FROZEN };

/// The migrations embedded from `migrations/`.
mod embedded {
    cpis_runtime::migrate::embed_migrations!("migrations");
}

/// The migrations the earlier hand-rolled runner applied, frozen: a database
/// it migrated is adopted with these checksums (see [`cpis_runtime::migrate`]).
const FROZEN: &[Frozen] = &[
    Frozen { version: 1, name: "alert_log", checksum: 2190899616022051400 },
    Frozen { version: 2, name: "alert_traceparent", checksum: 1125584586275494508 },
    Frozen { version: 3, name: "purges", checksum: 2893424490802475844 },
    Frozen { version: 4, name: "publish_function", checksum: 9704832628326661016 },
];

/// `ListAlerts` page size when the request says 0.
const DEFAULT_LIST_PAGE: i32 = 100;

/// Largest `ListAlerts` page.
const MAX_LIST_PAGE: i32 = 1000;

pub use settings::Settings;

/// The Notification service.
#[derive(Debug, Clone)]
pub struct Notification {
    store: Store,
    fanout: Fanout,
    config: Settings,
    shutdown: Shutdown,
    metrics: stream::StreamMetrics,
    council_metrics: delivery::CouncilMetrics,
}

impl Notification {
    /// Migrates the schema, starts this instance's LISTEN connection to
    /// `database_url` (the pool's own database; it runs until `shutdown` stops
    /// the service) and builds the service.
    pub async fn new(config: Settings, pool: DbPool, database_url: &str, shutdown: Shutdown) -> anyhow::Result<Self> {
        MIGRATIONS.run(&pool).await?;
        // Parsed here so a bad URL fails start-up instead of looping in the listener.
        let listener = ListenerConfig::new(database_url, config.reconnect_backoff_max)?;
        let fanout = Fanout::new();
        tokio::spawn(
            listen::listen(listener, fanout.clone(), shutdown.stopping().clone())
                .instrument(tracing::info_span!("alert_listener")),
        );
        let store = Store::new(pool);
        let metrics = stream::StreamMetrics::new();
        tokio::spawn(
            listen::poll(
                store.clone(),
                fanout.clone(),
                config.poll_interval,
                metrics.db_queries.clone(),
                shutdown.stopping().clone(),
            )
            .instrument(tracing::info_span!("latest_poll")),
        );
        let council_metrics = delivery::CouncilMetrics::new();
        tokio::spawn(council_metrics.clone().run(
            store.clone(),
            config.council_metrics_interval,
            shutdown.stopping().clone(),
        ));
        Ok(Self { store, fanout, config, shutdown, metrics, council_metrics })
    }

    /// Registers this service's own metrics (open subscriptions, delivery
    /// lag, and per council: unacknowledged alerts, the oldest one's age, subscriptions).
    pub fn register_metrics(&self, metrics: &cpis_runtime::metrics::Metrics) {
        self.council_metrics.register(metrics, self.fanout.clone());
        metrics.register(self.metrics.open.clone());
        metrics.register(self.metrics.delivered.clone());
        metrics.register(self.metrics.delivery_lag.clone());
        metrics.register(self.metrics.db_queries.collector());
    }

    /// The gRPC routes of this service.
    pub fn routes(&self) -> tonic::service::Routes {
        tonic::service::Routes::new(
            pb::notification_service_server::NotificationServiceServer::new(self.clone())
                .max_decoding_message_size(cpis_runtime::limits::MAX_MESSAGE_BYTES),
        )
    }

    /// How many councils have an open stream on this instance.
    pub fn councils_streaming(&self) -> usize {
        self.fanout.councils_watched()
    }

    /// The sequence to read after: `after` itself, or the council's
    /// acknowledgement when it is 0 and `replay` is not set (with `replay`,
    /// 0 means from sequence 1). Refuses negative values and values beyond
    /// the latest sequence (a client ahead of the log has lost track, e.g.
    /// after a database restore, and must not silently skip alerts).
    async fn start_after(&self, council: &str, after: i64, replay: bool) -> Result<i64, ApiError> {
        if after < 0 {
            return Err(ApiError::invalid("after_sequence", "must not be negative"));
        }
        if after == 0 {
            return if replay { Ok(0) } else { self.store.acknowledged(council).await };
        }
        let latest = self.store.latest_sequence(council).await?;
        if after > latest {
            return Err(ApiError::invalid("after_sequence", format!("is beyond the latest sequence ({latest})")));
        }
        Ok(after)
    }

    /// `Subscribe`: the council's stream from the requested sequence on,
    /// for as long as the caller's identity stays valid.
    async fn open_stream(
        &self,
        council: String,
        identity: Identity,
        r: pb::SubscribeRequest,
    ) -> Result<EventStream, ApiError> {
        self.metrics.db_queries.inc("open");
        let cursor = self.start_after(&council, r.after_sequence, r.replay).await?;
        // Registered before the stream's first read, so no new sequence falls between.
        let latest = self.fanout.subscribe(&council);
        let settings =
            StreamSettings { heartbeat: self.config.heartbeat, page_size: self.config.stream_buffer.max(1) as i64 };
        // No span is held open for the stream's life: 10,000 idle streams
        // would keep 10,000 spans (and their formatted fields) in memory.
        // The stream's events and reads carry its council and id instead.
        let id = uuid::Uuid::new_v4();
        tracing::debug!(council = %council, stream = %id, from = cursor, replay = r.replay, "subscribed");
        let subscription = Subscription { council, id, cursor, latest, identity };
        let cx = StreamContext {
            log: Arc::new(self.store.clone()),
            stop: self.shutdown.stopping().clone(),
            metrics: self.metrics.clone(),
        };
        Ok(Box::pin(stream::subscribe(cx, subscription, settings)))
    }

    /// `AckAlerts`: the acknowledgement now stored.
    async fn acknowledge(&self, council: &str, r: pb::AckAlertsRequest) -> Result<pb::AckAlertsResponse, ApiError> {
        if r.up_to_sequence < 0 {
            return Err(ApiError::invalid("up_to_sequence", "must not be negative"));
        }
        match self.store.acknowledge(council, r.up_to_sequence).await {
            Ok(acknowledged_through) => Ok(pb::AckAlertsResponse { acknowledged_through }),
            Err(e @ AckError::BeyondLatest { .. }) => Err(ApiError::invalid("up_to_sequence", e.to_string())),
            Err(AckError::Api(e)) => Err(e),
        }
    }

    /// `ListAlerts`: one page of the council's log.
    async fn list(&self, council: &str, r: pb::ListAlertsRequest) -> Result<pb::ListAlertsResponse, ApiError> {
        let mut v = Violations::new();
        let page_size = v.page_size("page_size", r.page_size, DEFAULT_LIST_PAGE, MAX_LIST_PAGE);
        if r.after_sequence < 0 {
            v.add("after_sequence", "must not be negative");
        }
        v.finish()?;
        let after = self.start_after(council, r.after_sequence, r.replay).await?;
        // One more than asked tells whether more follow.
        let mut alerts = self.store.alerts_after(council, after, page_size + 1).await?;
        let has_more = alerts.len() as i64 > page_size;
        alerts.truncate(page_size as usize);
        Ok(pb::ListAlertsResponse { alerts, has_more })
    }

    /// `PublishAlert` (the Attendance service): stores one alert.
    async fn publish(&self, r: pb::PublishAlertRequest) -> Result<pb::PublishAlertResponse, ApiError> {
        let alert = NewAlert::from_request(&r)?;
        let published = self.store.publish(&alert).await?;
        tracing::info!(
            council = %alert.council_code,
            key = %alert.key,
            alert_id = %published.alert_id,
            sequence = published.sequence,
            repeat = !published.created,
            "alert published"
        );
        Ok(pb::PublishAlertResponse { alert_id: published.alert_id.to_string(), sequence: published.sequence })
    }

    async fn publish_batch(&self, r: pb::PublishAlertsRequest) -> Result<pb::PublishAlertsResponse, ApiError> {
        let alerts = alert::batch_from_request(&r)?;
        let published = self.store.publish_batch(&alerts).await?;
        let created = published.iter().filter(|p| p.created).count();
        tracing::info!(alerts = alerts.len(), created, repeats = alerts.len() - created, "alert batch published");
        Ok(pb::PublishAlertsResponse {
            results: published
                .into_iter()
                .map(|p| pb::PublishAlertResponse { alert_id: p.alert_id.to_string(), sequence: p.sequence })
                .collect(),
        })
    }
}

/// The calling council, from the identity the authorization layer verified.
/// That layer admits only councils to the methods that ask (its policy
/// table), so anything else here is a wiring fault, not a caller's error.
fn council_of<T>(request: &Request<T>) -> Result<String, ApiError> {
    match cpis_runtime::authz::caller(request)? {
        Caller::Council(code) => Ok(code),
        _ => Err(ApiError::internal("a council method was reached without a verified council caller")),
    }
}

/// The stream type of `Subscribe`.
type EventStream = Pin<Box<dyn futures::Stream<Item = stream::Item> + Send>>;

#[tonic::async_trait]
impl pb::notification_service_server::NotificationService for Notification {
    type SubscribeStream = EventStream;

    async fn subscribe(&self, r: Request<pb::SubscribeRequest>) -> Result<Response<Self::SubscribeStream>, Status> {
        let (council, identity) = (council_of(&r)?, Identity::of(&r));
        Ok(Response::new(self.open_stream(council, identity, r.into_inner()).await?))
    }

    async fn ack_alerts(&self, r: Request<pb::AckAlertsRequest>) -> Result<Response<pb::AckAlertsResponse>, Status> {
        let council = council_of(&r)?;
        Ok(Response::new(self.acknowledge(&council, r.into_inner()).await?))
    }

    async fn list_alerts(&self, r: Request<pb::ListAlertsRequest>) -> Result<Response<pb::ListAlertsResponse>, Status> {
        let council = council_of(&r)?;
        Ok(Response::new(self.list(&council, r.into_inner()).await?))
    }

    // The Attendance service only, which the authorization layer guarantees.
    async fn publish_alert(
        &self,
        r: Request<pb::PublishAlertRequest>,
    ) -> Result<Response<pb::PublishAlertResponse>, Status> {
        Ok(Response::new(self.publish(r.into_inner()).await?))
    }

    async fn publish_alerts(
        &self,
        r: Request<pb::PublishAlertsRequest>,
    ) -> Result<Response<pb::PublishAlertsResponse>, Status> {
        Ok(Response::new(self.publish_batch(r.into_inner()).await?))
    }

    // Councils (their own) and analysts (all), which POLICY guarantees.
    async fn report_alerts(
        &self,
        r: Request<pb::ReportAlertsRequest>,
    ) -> Result<Response<pb::ReportAlertsResponse>, Status> {
        let audience = cpis_runtime::report::Audience::of(&cpis_runtime::authz::caller(&r)?)?;
        Ok(Response::new(report::report(self.store.pool(), &audience, r.get_ref()).await?))
    }
}

#[cfg(test)]
mod migration_tests {
    /// A migration file the earlier runner may have applied is never edited.
    #[test]
    fn frozen_migrations_are_unchanged() {
        super::MIGRATIONS.check_frozen().unwrap();
    }
}
