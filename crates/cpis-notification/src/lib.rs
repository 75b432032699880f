//! The Notification service: a durable, ordered alert log per council, and
//! resumable server-streaming subscriptions fed from it.

use cpis_core::db::{DbPool, Migration};
use cpis_core::server::Shutdown;
use cpis_proto::notification::v1 as pb;
use std::pin::Pin;
use std::time::Duration;
use tonic::{Request, Response, Status};

/// The gRPC name of this service (readiness is reported under it).
pub const SERVICE_NAME: &str = "cpis.notification.v1.NotificationService";

/// The schema this service owns.
pub const SCHEMA: &str = "notification";

/// Schema migrations, applied in order at start-up.
pub const MIGRATIONS: &[Migration] = &[];

/// Settings of the Notification service.
#[derive(Debug, Clone)]
pub struct Config {
    /// Heartbeat interval on idle subscriptions.
    pub heartbeat: Duration,
    /// Connection string for the dedicated LISTEN connection.
    pub database_url: String,
}

impl Config {
    /// Defaults, with the LISTEN connection going to `database_url`.
    pub fn new(database_url: impl Into<String>) -> Self {
        Self { heartbeat: Duration::from_secs(15), database_url: database_url.into() }
    }
}

/// The Notification service.
#[derive(Debug, Clone)]
pub struct Notification {
    #[allow(dead_code)]
    pool: DbPool,
    #[allow(dead_code)]
    config: Config,
    #[allow(dead_code)]
    shutdown: Shutdown,
}

impl Notification {
    /// Migrates the schema and builds the service.
    pub async fn new(config: Config, pool: DbPool, shutdown: Shutdown) -> anyhow::Result<Self> {
        cpis_core::db::migrate(&pool, SCHEMA, MIGRATIONS).await?;
        Ok(Self {
            pool,
            config,
            shutdown,
        })
    }

    /// The gRPC routes of this service.
    pub fn routes(&self) -> tonic::service::Routes {
        tonic::service::Routes::new(
            pb::notification_service_server::NotificationServiceServer::new(self.clone()),
        )
    }
}

type EventStream =
    Pin<Box<dyn futures::Stream<Item = Result<pb::SubscribeResponse, Status>> + Send>>;

#[tonic::async_trait]
impl pb::notification_service_server::NotificationService for Notification {
    type SubscribeStream = EventStream;

    async fn subscribe(
        &self,
        _r: Request<pb::SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        Err(Status::unimplemented("Subscribe is not implemented yet"))
    }
    async fn ack_alerts(
        &self,
        _r: Request<pb::AckAlertsRequest>,
    ) -> Result<Response<pb::AckAlertsResponse>, Status> {
        Err(Status::unimplemented("AckAlerts is not implemented yet"))
    }
    async fn list_alerts(
        &self,
        _r: Request<pb::ListAlertsRequest>,
    ) -> Result<Response<pb::ListAlertsResponse>, Status> {
        Err(Status::unimplemented("ListAlerts is not implemented yet"))
    }
    async fn publish_alert(
        &self,
        _r: Request<pb::PublishAlertRequest>,
    ) -> Result<Response<pb::PublishAlertResponse>, Status> {
        Err(Status::unimplemented("PublishAlert is not implemented yet"))
    }
}
