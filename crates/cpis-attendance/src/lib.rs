//! The Attendance service: a setting checks a person in and sees their flags;
//! the responsible councils are alerted through a durable outbox.
//!
//! Data flow: `CheckIn` -> Registry `LookupFlags` -> (flagged) one transaction
//! storing the episode, the access audit and the outbox rows -> the relay
//! publishes each outbox row to Notification `PublishAlert`.
//!
//! Where things are: the handlers below (caller, one operation, conversion);
//! the operations in `checkin` (the check-in and its transaction), `reads` and
//! `history` (the access history shown to settings);
//! `replays` coalesces the check-in's replay look-ups as `registry` does the
//! flag look-ups; the rules they apply in `rules` (plain functions); one SQL statement per
//! function in `store`; the contract's messages built in `convert`.

mod admitted;
mod checkin;
mod coalesce;
mod convert;
mod demographics;
pub mod fhir;
mod history;
mod missed;
mod model;
mod page;
mod reads;
mod registry;
mod relay;
mod replays;
mod report;
pub mod retention;
mod rules;
pub mod settings;
mod silent;
mod store;

use cpis_proto::attendance::v1 as pb;
use cpis_runtime::db::DbPool;
use cpis_runtime::migrate::{Frozen, Migrations};
use cpis_runtime::server::Shutdown;
use cpis_runtime::Caller;
use registry::{CallerDeadline, FlagLookup};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

pub use settings::{ArrivalWindow, Settings};

/// The gRPC name of this service (readiness is reported under it).
pub const SERVICE_NAME: &str = "cpis.attendance.v1.AttendanceService";

/// The schema this service owns.
pub const SCHEMA: &str = "attendance";

/// Schema migrations (`migrations/V{n}__{name}.sql`), applied in order at start-up.
pub const MIGRATIONS: Migrations = Migrations { schema: SCHEMA, runner: embedded::migrations::runner, frozen: FROZEN };

/// The migrations embedded from `migrations/`.
mod embedded {
    cpis_runtime::migrate::embed_migrations!("migrations");
}

/// The migrations the earlier hand-rolled runner applied, frozen: a database
/// it migrated is adopted with these checksums (see [`cpis_runtime::migrate`]).
const FROZEN: &[Frozen] = &[
    Frozen { version: 1, name: "episodes_accesses_requests_outbox", checksum: 36458882460180646 },
    Frozen { version: 2, name: "outbox_traceparent", checksum: 9802713693609369866 },
    Frozen { version: 3, name: "silent_reads", checksum: 5519955189002530757 },
    Frozen { version: 4, name: "purges", checksum: 17255716432972443069 },
    Frozen { version: 5, name: "episode_reads", checksum: 4774709518595582982 },
    Frozen { version: 6, name: "outbox_order_and_relay_leases", checksum: 15115489201702178432 },
];

/// Database connections of the outbox relay, apart from the check-ins'
/// pool: one for its pass's statements, one for a council's retry path.
pub const RELAY_POOL_SIZE: usize = 2;

/// The Attendance service.
#[derive(Debug, Clone)]
pub struct Attendance {
    check_ins: checkin::CheckIns,
    reads: reads::Reads,
    missed: missed::MissedAppointments,
    changes: demographics::NhsNumberChanges,
    history: history::AccessHistory,
    /// For reports (read-only queries of the access audit).
    pool: DbPool,
    /// The outbox's metrics, shared with the relay.
    relay_metrics: relay::RelayMetrics,
}

impl Attendance {
    /// Migrates the schema, starts the outbox relay (until `shutdown` is
    /// stopping) and builds the service. `registry` and `notification` are
    /// mutual-TLS channels presenting the attendance identity. The relay
    /// works on `relay_pool`, connections of its own
    /// ([`RELAY_POOL_SIZE`]): under a burst of check-ins it must not queue
    /// for a connection behind them, or their alerts wait in the outbox
    /// while the check-ins hold every connection.
    pub async fn new(
        config: Settings,
        pool: DbPool,
        relay_pool: DbPool,
        registry: Channel,
        notification: Channel,
        shutdown: Shutdown,
    ) -> anyhow::Result<Self> {
        MIGRATIONS.run(&pool).await?;
        let wake_relay = Arc::new(Notify::new());
        let relay_metrics = relay::RelayMetrics::new();
        relay::Relay::new(
            relay_pool,
            notification,
            relay::RelaySettings {
                batch_size: config.relay_batch_size.max(1),
                publish_timeout: config.publish_timeout,
                retry_initial: config.retry_initial,
                retry_max: config.retry_max,
                poll_interval: config.relay_poll_interval,
                lease: config.relay_lease.max(config.publish_timeout + Duration::from_secs(1)),
            },
            wake_relay.clone(),
            relay_metrics.clone(),
        )
        .spawn(shutdown.stopping().clone());
        let changes = demographics::NhsNumberChanges::new(pool.clone(), registry.clone(), wake_relay.clone());
        let flags = FlagLookup::new(registry, config.registry_timeout);
        let missed = missed::MissedAppointments::new(pool.clone(), flags.clone(), wake_relay.clone());
        let rules = rules::EpisodeRules {
            same_episode_window: config.same_episode_window,
            repeat_window: config.repeat_window,
            repeat_threshold: config.repeat_threshold,
        };
        let check_ins = checkin::CheckIns::new(pool.clone(), flags.clone(), rules, config.arrival_window, wake_relay);
        let history = history::AccessHistory::new(pool.clone(), flags.clone());
        Ok(Self {
            check_ins,
            reads: reads::Reads::new(pool.clone(), flags),
            history,
            missed,
            changes,
            pool,
            relay_metrics,
        })
    }

    /// Registers this service's own metrics (outbox depth and age, relay counts).
    pub fn register_metrics(&self, metrics: &cpis_runtime::metrics::Metrics) {
        self.relay_metrics.register(metrics);
    }

    /// The gRPC routes of this service.
    pub fn routes(&self) -> tonic::service::Routes {
        tonic::service::Routes::new(
            pb::attendance_service_server::AttendanceServiceServer::new(self.clone())
                .max_decoding_message_size(cpis_runtime::limits::MAX_MESSAGE_BYTES),
        )
    }

    /// The check-in operation (also the FHIR notifying read).
    fn check_ins(&self) -> &checkin::CheckIns {
        &self.check_ins
    }

    /// The read operations (also the FHIR silent read and AuditEvent).
    fn reads(&self) -> &reads::Reads {
        &self.reads
    }

    /// The access history shown to settings (the FHIR AuditEvent search).
    fn history(&self) -> &history::AccessHistory {
        &self.history
    }
}

/// Every handler has one shape: the caller (as the authorization layer
/// admitted it), one operation returning `Result<_, ApiError>`, and the one
/// conversion of its error to a `Status`. Who may call what is `POLICY`'s
/// business; only the data-dependent rule (a council sees episodes only
/// while it holds a flag) is decided in the operation.
#[tonic::async_trait]
impl pb::attendance_service_server::AttendanceService for Attendance {
    #[tracing::instrument(skip_all, fields(rpc = "CheckIn", setting, request_id))]
    async fn check_in(&self, request: Request<pb::CheckInRequest>) -> Result<Response<pb::CheckInResponse>, Status> {
        let (caller, deadline) = (cpis_runtime::authz::caller(&request)?, CallerDeadline::of(&request));
        let setting = admitted::setting(&caller)?;
        tracing::Span::current().record("setting", setting);
        #[allow(deprecated)] // user_id: only without a token, in the migration mode
        let viewer =
            cpis_runtime::users::viewer(cpis_runtime::users::context(&request), &request.get_ref().user_id, "user_id")?;
        // The client's key is recorded once validated.
        self.check_ins()
            .check_in(setting, &viewer, request.into_inner(), deadline)
            .await
            .map(Response::new)
            .map_err(Status::from)
    }

    #[tracing::instrument(skip_all, fields(rpc = "ListEpisodes", caller))]
    async fn list_episodes(
        &self,
        request: Request<pb::ListEpisodesRequest>,
    ) -> Result<Response<pb::ListEpisodesResponse>, Status> {
        let (caller, deadline) = (cpis_runtime::authz::caller(&request)?, CallerDeadline::of(&request));
        tracing::Span::current().record("caller", caller.to_string());
        // A setting's person (a council's system has none).
        #[allow(deprecated)] // user_id: only without a token, in the migration mode
        let viewer = match caller {
            Caller::Setting(_) => Some(cpis_runtime::users::viewer(
                cpis_runtime::users::context(&request),
                &request.get_ref().user_id,
                "user_id",
            )?),
            _ => None,
        };
        self.reads()
            .list_episodes(&caller, viewer.as_ref(), request.get_ref(), deadline)
            .await
            .map(Response::new)
            .map_err(Status::from)
    }

    #[tracing::instrument(skip_all, fields(rpc = "ListAccesses", caller))]
    async fn list_accesses(
        &self,
        request: Request<pb::ListAccessesRequest>,
    ) -> Result<Response<pb::ListAccessesResponse>, Status> {
        let caller = cpis_runtime::authz::caller(&request)?;
        tracing::Span::current().record("caller", caller.to_string());
        let council = admitted::council(&caller)?;
        self.reads().list_accesses(council, request.get_ref()).await.map(Response::new).map_err(Status::from)
    }

    #[tracing::instrument(skip_all, fields(rpc = "SilentRead", setting, request_id))]
    async fn silent_read(
        &self,
        request: Request<pb::SilentReadRequest>,
    ) -> Result<Response<pb::SilentReadResponse>, Status> {
        let (caller, deadline) = (cpis_runtime::authz::caller(&request)?, CallerDeadline::of(&request));
        let setting = admitted::setting(&caller)?;
        // The client's key is recorded once validated.
        tracing::Span::current().record("setting", setting);
        #[allow(deprecated)] // user_id: only without a token, in the migration mode
        let viewer =
            cpis_runtime::users::viewer(cpis_runtime::users::context(&request), &request.get_ref().user_id, "user_id")?;
        self.reads()
            .silent_read(setting, &viewer, request.get_ref(), deadline)
            .await
            .map(Response::new)
            .map_err(Status::from)
    }

    #[tracing::instrument(skip_all, fields(rpc = "RecordWasNotBrought", setting, request_id))]
    async fn record_was_not_brought(
        &self,
        request: Request<pb::RecordWasNotBroughtRequest>,
    ) -> Result<Response<pb::RecordWasNotBroughtResponse>, Status> {
        let (caller, deadline) = (cpis_runtime::authz::caller(&request)?, CallerDeadline::of(&request));
        let setting = admitted::setting(&caller)?;
        tracing::Span::current().record("setting", setting);
        let viewer = cpis_runtime::users::viewer(cpis_runtime::users::context(&request), "", "authorization")?;
        self.missed.record(setting, &viewer, request.get_ref(), deadline).await.map(Response::new).map_err(Status::from)
    }

    #[tracing::instrument(skip_all, fields(rpc = "ReportAccesses", caller))]
    async fn report_accesses(
        &self,
        request: Request<pb::ReportAccessesRequest>,
    ) -> Result<Response<pb::ReportAccessesResponse>, Status> {
        let caller = cpis_runtime::authz::caller(&request)?;
        tracing::Span::current().record("caller", caller.to_string());
        let audience = cpis_runtime::report::Audience::of(&caller)?;
        report::report(&self.pool, &audience, request.get_ref()).await.map(Response::new).map_err(Status::from)
    }

    #[tracing::instrument(skip_all, fields(rpc = "RecordNhsNumberChange", event_id))]
    async fn record_nhs_number_change(
        &self,
        request: Request<pb::RecordNhsNumberChangeRequest>,
    ) -> Result<Response<pb::RecordNhsNumberChangeResponse>, Status> {
        // Only the demographics feed reaches here (POLICY).
        cpis_runtime::authz::caller(&request)?;
        self.changes.record(request.get_ref()).await.map(Response::new).map_err(Status::from)
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
