//! The Attendance service: a setting checks a person in and sees their flags;
//! the responsible councils are alerted through a durable outbox.
//!
//! Data flow: `CheckIn` -> Registry `LookupFlags` -> (flagged) one transaction
//! storing the episode, the access audit and the outbox rows -> the relay
//! publishes each outbox row to Notification `PublishAlert`.

mod checkin;
pub mod fhir;
mod page;
mod registry;
mod relay;
pub mod retention;
pub mod settings;
mod silent;
mod store;

use cpis_domain::validate::{NhsNumber, Violations};
use cpis_proto::attendance::v1 as pb;
use cpis_runtime::db::{DbPool, Migration};
use cpis_runtime::server::Shutdown;
use cpis_runtime::{ApiError, Caller};
use page::{paginate, Cursor};
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

/// Schema migrations, applied in order at start-up.
pub const MIGRATIONS: &[Migration] = store::MIGRATIONS;

/// The Attendance service.
#[derive(Debug, Clone)]
pub struct Attendance {
    pool: DbPool,
    config: Settings,
    flags: FlagLookup,
    /// Wakes the relay as soon as a check-in has queued alerts.
    wake_relay: Arc<Notify>,
    /// The outbox's metrics, shared with the relay.
    relay_metrics: relay::RelayMetrics,
}

impl Attendance {
    /// Migrates the schema, starts the outbox relay (until `shutdown` is
    /// stopping) and builds the service. `registry` and `notification` are
    /// mutual-TLS channels presenting the attendance identity.
    pub async fn new(
        config: Settings,
        pool: DbPool,
        registry: Channel,
        notification: Channel,
        shutdown: Shutdown,
    ) -> anyhow::Result<Self> {
        cpis_runtime::db::migrate(&pool, SCHEMA, MIGRATIONS).await?;
        let wake_relay = Arc::new(Notify::new());
        let relay_metrics = relay::RelayMetrics::new();
        relay::Relay::new(
            pool.clone(),
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
        Ok(Self { pool, flags: FlagLookup::new(registry, config.registry_timeout), config, wake_relay, relay_metrics })
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

    fn config(&self) -> &Settings {
        &self.config
    }

    fn rules(&self) -> store::EpisodeRules {
        store::EpisodeRules {
            same_episode_window: self.config.same_episode_window,
            repeat_window: self.config.repeat_window,
            repeat_threshold: i64::from(self.config.repeat_threshold),
        }
    }

    async fn list_episodes(
        &self,
        caller: &Caller,
        req: &pb::ListEpisodesRequest,
        deadline: CallerDeadline,
    ) -> Result<pb::ListEpisodesResponse, ApiError> {
        let mut v = Violations::new();
        let nhs_number = v.nhs_number("nhs_number", &req.nhs_number);
        let size = v.page_size("page_size", req.page_size, 25, 100);
        let after = page_token(&mut v, &req.page_token);
        if matches!(caller, Caller::Setting(_)) {
            v.text("user_id", &req.user_id, 128);
        }
        v.finish()?;
        let nhs_number = nhs_number.ok_or_else(|| ApiError::internal("validated NHS number"))?;

        // Need to know, decided on every call by the Registry, never cached:
        // the person must hold a flag in scope now. Otherwise the answer is
        // the one for a person without episodes, so existence does not leak.
        let found = self.flags.lookup(&nhs_number, None, deadline).await?;
        let db = self.pool.get().await?;
        let since = match caller {
            Caller::Setting(setting_code) => {
                if found.flags.is_empty() {
                    return Ok(pb::ListEpisodesResponse::default());
                }
                store::record_episodes_read(&db, setting_code, nhs_number.as_str(), &req.user_id, &found).await?;
                None
            }
            // A council sees the episodes since its own plan began.
            Caller::Council(code) => {
                let starts = found.flags.iter().filter(|f| &f.council_code == code);
                let Some(start) = starts.filter_map(|f| cpis_domain::validate::parse_date(&f.start_date)).min() else {
                    return Err(ApiError::PermissionDenied(
                        "the calling council holds no flag in scope for this person".into(),
                    ));
                };
                Some(cpis_domain::time::london_start_of_day(start))
            }
            Caller::Service(_) => return Err(ApiError::PermissionDenied("services may not list episodes".into())),
        };
        // At most the 25 most recent, paged within them.
        let recent = store::list_episodes(&db, nhs_number.as_str(), None, since, store::PREVIOUS_EPISODES).await?;
        let rows: Vec<_> = match &after {
            Some(cursor) => recent.into_iter().filter(|(_, c)| (c.at, c.id) < (cursor.at, cursor.id)).collect(),
            None => recent,
        };
        let (episodes, next_page_token) = paginate(rows.into_iter().take(size as usize + 1).collect(), size);
        Ok(pb::ListEpisodesResponse { episodes, next_page_token })
    }

    async fn list_accesses(
        &self,
        caller: &Caller,
        req: &pb::ListAccessesRequest,
    ) -> Result<pb::ListAccessesResponse, ApiError> {
        let Caller::Council(council) = caller else {
            return Err(ApiError::PermissionDenied("only councils may list accesses".into()));
        };
        let mut v = Violations::new();
        let nhs_number: Option<NhsNumber> =
            if req.nhs_number.is_empty() { None } else { v.nhs_number("nhs_number", &req.nhs_number) };
        let size = v.page_size("page_size", req.page_size, 100, 1000);
        let after = page_token(&mut v, &req.page_token);
        v.finish()?;

        let db = self.pool.get().await?;
        let rows =
            store::list_accesses(&db, council, nhs_number.as_ref().map(NhsNumber::as_str), after.as_ref(), size + 1)
                .await?;
        let (accesses, next_page_token) = paginate(rows, size);
        Ok(pb::ListAccessesResponse { accesses, next_page_token })
    }
}

/// Reads an optional page token, recording a violation when it is not ours.
fn page_token(v: &mut Violations, token: &str) -> Option<Cursor> {
    if token.is_empty() {
        return None;
    }
    let cursor = Cursor::decode(token);
    if cursor.is_none() {
        v.add("page_token", "is not a token from a previous page");
    }
    cursor
}

#[tonic::async_trait]
impl pb::attendance_service_server::AttendanceService for Attendance {
    #[tracing::instrument(skip_all, fields(rpc = "CheckIn", setting, request_id))]
    async fn check_in(&self, request: Request<pb::CheckInRequest>) -> Result<Response<pb::CheckInResponse>, Status> {
        let deadline = CallerDeadline::of(&request);
        let Caller::Setting(setting) = cpis_runtime::authz::caller(&request)? else {
            return Err(ApiError::PermissionDenied("only settings may check people in".into()).into());
        };
        tracing::Span::current().record("setting", setting.as_str());
        // The client's key is recorded once validated (checkin::validate).
        checkin::check_in(self, &setting, request.into_inner(), deadline).await.map(Response::new).map_err(Status::from)
    }

    #[tracing::instrument(skip_all, fields(rpc = "ListEpisodes", caller))]
    async fn list_episodes(
        &self,
        request: Request<pb::ListEpisodesRequest>,
    ) -> Result<Response<pb::ListEpisodesResponse>, Status> {
        let deadline = CallerDeadline::of(&request);
        let caller = cpis_runtime::authz::caller(&request)?;
        tracing::Span::current().record("caller", caller.to_string());
        self.list_episodes(&caller, request.get_ref(), deadline).await.map(Response::new).map_err(Status::from)
    }

    #[tracing::instrument(skip_all, fields(rpc = "ListAccesses", caller))]
    async fn list_accesses(
        &self,
        request: Request<pb::ListAccessesRequest>,
    ) -> Result<Response<pb::ListAccessesResponse>, Status> {
        let caller = cpis_runtime::authz::caller(&request)?;
        tracing::Span::current().record("caller", caller.to_string());
        self.list_accesses(&caller, request.get_ref()).await.map(Response::new).map_err(Status::from)
    }

    #[tracing::instrument(skip_all, fields(rpc = "SilentRead", setting, request_id))]
    async fn silent_read(
        &self,
        request: Request<pb::SilentReadRequest>,
    ) -> Result<Response<pb::SilentReadResponse>, Status> {
        let deadline = CallerDeadline::of(&request);
        let Caller::Setting(setting) = cpis_runtime::authz::caller(&request)? else {
            return Err(ApiError::PermissionDenied("only settings may read flags".into()).into());
        };
        let span = tracing::Span::current();
        span.record("setting", setting.as_str());
        span.record("request_id", request.get_ref().request_id.as_str());
        silent::silent_read(self, &setting, request.get_ref(), deadline).await.map(Response::new).map_err(Status::from)
    }
}
