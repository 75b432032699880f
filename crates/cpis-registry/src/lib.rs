//! The Registry service: councils keep their register of plans (one at a
//! time or as a complete snapshot); the Attendance service looks flags up.
//!
//! A council only ever sees and changes its own plans: another council's plan
//! is `NOT_FOUND`, so the existence of a plan never leaks.

pub mod councils;
pub mod model;
pub mod retention;
pub mod settings;
pub mod share;
pub mod store;
pub mod sync;

use chrono::NaiveDate;
use cpis_domain::validate::Violations;
use cpis_proto::common::v1 as common;
use cpis_proto::registry::v1 as pb;
use cpis_runtime::authz::caller;
use cpis_runtime::db::{DbPool, Migration};
use cpis_runtime::{ApiError, Caller};
use model::{validate_plan, StoredPlan};
use share::CouncilConn;
use std::sync::Arc;
use tonic::{Request, Response, Status, Streaming};

/// The gRPC name of this service (readiness is reported under it).
pub const SERVICE_NAME: &str = "cpis.registry.v1.RegistryService";

/// The schema this service owns.
pub const SCHEMA: &str = "registry";

/// Schema migrations, applied in order at start-up.
pub const MIGRATIONS: &[Migration] = &[
    Migration { version: 1, name: "plans", sql: include_str!("migrations.sql") },
    Migration { version: 2, name: "retention", sql: include_str!("migrations_2_retention.sql") },
    Migration { version: 3, name: "sync_uploads", sql: include_str!("migrations_3_sync_uploads.sql") },
];

pub use settings::{Settings, DEFAULT_UNBORN_SCOPE_DAYS};

/// The Registry service.
#[derive(Debug, Clone)]
pub struct Registry {
    pool: DbPool,
    config: Settings,
    councils: Arc<share::CouncilGate>,
}

/// Borrows the tokio-postgres client inside a pooled connection.
pub(crate) fn pg(client: &deadpool_postgres::Client) -> &tokio_postgres::Client {
    client
}

fn today() -> NaiveDate {
    cpis_domain::time::today_in_london()
}

/// The caller's council code; the authorization layer has already made sure
/// only councils reach the council methods.
fn council_of<T>(req: &Request<T>) -> Result<String, Status> {
    match caller(req)? {
        Caller::Council(code) => Ok(code),
        other => Err(Status::permission_denied(format!("{} callers may not manage plans", other.kind().as_str()))),
    }
}

/// Encodes a keyset position as an opaque page token.
fn encode_token(reference: &str) -> String {
    reference.bytes().map(|b| format!("{b:02x}")).collect()
}

/// Decodes a page token made by [`encode_token`].
fn decode_token(token: &str) -> Option<String> {
    if !token.len().is_multiple_of(2) || token.len() > 2 * model::MAX_LOCAL_REFERENCE * 4 {
        return None;
    }
    let bytes: Option<Vec<u8>> =
        (0..token.len()).step_by(2).map(|i| u8::from_str_radix(token.get(i..i + 2)?, 16).ok()).collect();
    String::from_utf8(bytes?).ok()
}

impl Registry {
    /// Migrates the schema and builds the service.
    pub async fn new(config: Settings, pool: DbPool) -> anyhow::Result<Self> {
        cpis_runtime::db::migrate(&pool, SCHEMA, MIGRATIONS).await?;
        let (for_councils, per_council) =
            share::split(pool.status().max_size, config.lookup_reserved_connections, config.connections_per_council);
        let councils = Arc::new(share::CouncilGate::new(for_councils, per_council, config.council_wait));
        Ok(Self { pool, config, councils })
    }

    /// A connection for `council`'s work, within its share of the pool.
    async fn council_db(&self, council: &str) -> Result<CouncilConn, ApiError> {
        let permit = self.councils.enter(council).await?;
        Ok(CouncilConn::new(self.pool.get().await?, permit))
    }

    /// The gRPC routes of this service.
    pub fn routes(&self) -> tonic::service::Routes {
        tonic::service::Routes::new(
            pb::registry_service_server::RegistryServiceServer::new(self.clone())
                .max_decoding_message_size(cpis_runtime::limits::MAX_MESSAGE_BYTES),
        )
    }

    async fn upsert(&self, council: &str, req: pb::UpsertPlanRequest) -> Result<StoredPlan, ApiError> {
        let input = validate_plan(req.plan.as_ref(), "plan", today()).map_err(|v| match v.finish() {
            Err(e) => e.into(),
            Ok(()) => ApiError::internal("validation failed without a reason"),
        })?;
        if req.expected_version < 0 {
            return Err(ApiError::invalid("expected_version", "must not be negative"));
        }
        let by = format!("council/{council}");
        // A concurrent first insert of the same reference loses the unique
        // index race; the retry then sees the winner's row.
        for _attempt in 0..3 {
            let mut client = self.council_db(council).await?;
            let tx = client.transaction().await?;
            store::lock_council(&*tx, council, false).await?;
            let existing = store::find_plan(&*tx, council, &input.local_reference, true).await?;
            let stored = match existing {
                None => {
                    if req.expected_version != 0 {
                        return Err(ApiError::Aborted(format!(
                            "plan does not exist (expected_version {} given)",
                            req.expected_version
                        )));
                    }
                    let Some(p) = store::insert_plan(&*tx, council, &input).await? else {
                        continue;
                    };
                    store::record_change(&*tx, p.plan_id, 1, "created", &[], &by).await?;
                    p
                }
                Some(current) => {
                    if req.expected_version != 0 && req.expected_version != current.version {
                        return Err(ApiError::Aborted(format!(
                            "plan is at version {}, not the expected {}",
                            current.version, req.expected_version
                        )));
                    }
                    let fields = store::changed_fields(&current.input, &input);
                    if fields.is_empty() {
                        return Ok(current);
                    }
                    let p = store::update_plan(&*tx, current.plan_id, &input).await?;
                    store::record_change(&*tx, p.plan_id, p.version, "updated", &fields, &by).await?;
                    p
                }
            };
            tx.commit().await?;
            return Ok(stored);
        }
        Err(ApiError::Aborted("concurrent changes to the same plan; retry".into()))
    }
}

impl Registry {
    /// Runs one `SyncPlans` upload: claims the council's single upload slot,
    /// stages rows as they arrive (a connection held only while a batch is
    /// written), and applies the snapshot only after a completion message
    /// that states the number of rows received.
    async fn sync(
        &self,
        council: &str,
        mut stream: Streaming<pb::SyncPlansRequest>,
    ) -> Result<pb::SyncPlansResponse, ApiError> {
        let cfg = &self.config;
        let mut upload = sync::Sync::new(council, today(), cfg.sync_batch);
        // An upload silent for three times the idle limit is abandoned: its
        // replica is gone (a live one is dropped after one idle limit).
        let stale_after = cfg.sync_idle * 3;
        {
            let client = self.council_db(council).await?;
            upload.claim(pg(&client), stale_after).await?;
        }
        // Drops the rows of an upload cancelled mid-way (its client went away).
        let _staged = upload.staging_guard(self.pool.clone());
        let (allow_mass_end, dry_run) = match self.receive(council, &mut upload, &mut stream).await {
            Ok(options) => options,
            Err(e) => {
                // Free the council's upload slot before answering, so that
                // the client may resend at once.
                if let Ok(client) = self.pool.get().await {
                    let _ = upload.discard(pg(&client)).await;
                }
                return Err(e);
            }
        };
        let mut client = self.council_db(council).await?;
        let outcome = upload
            .apply(&mut client, &format!("council/{council}"), allow_mass_end, cfg.mass_end_share, dry_run)
            .await?;
        tracing::info!(
            council = %council,
            received = outcome.received,
            created = outcome.created,
            updated = outcome.updated,
            unchanged = outcome.unchanged,
            ended = outcome.ended,
            rejected = outcome.rejected,
            dry_run,
            "plans synced"
        );
        Ok(pb::SyncPlansResponse {
            created: outcome.created,
            updated: outcome.updated,
            unchanged: outcome.unchanged,
            ended: outcome.ended,
            rejections: outcome.rejections,
            received: outcome.received,
            dry_run,
            rejected: outcome.rejected,
            created_references: outcome.created_references,
            updated_references: outcome.updated_references,
            ended_references: outcome.ended_references,
        })
    }

    /// Reads the upload's messages up to its completion message, staging
    /// rows as they come; returns `(allow_mass_end, dry_run)` of the first message.
    async fn receive(
        &self,
        council: &str,
        upload: &mut sync::Sync,
        stream: &mut Streaming<pb::SyncPlansRequest>,
    ) -> Result<(bool, bool), ApiError> {
        let cfg = &self.config;
        // Staging marks the upload alive at least this often while rows arrive.
        let keepalive = cfg.sync_idle / 4;
        let mut options = None;
        let mut stated = None;
        loop {
            let next = tokio::time::timeout(cfg.sync_idle, stream.message()).await.map_err(|_| {
                ApiError::DeadlineExceeded(format!(
                    "the upload sent nothing for {} s (CPIS_SYNC_IDLE_SECS): nothing was changed",
                    cfg.sync_idle.as_secs()
                ))
            })?;
            let msg = match next {
                Ok(Some(msg)) => msg,
                Ok(None) => break,
                Err(status) => {
                    tracing::info!(council = %council, code = ?status.code(), "upload broke off: nothing applied");
                    return Err(ApiError::Aborted(format!(
                        "the upload broke off ({}): nothing was changed",
                        status.message()
                    )));
                }
            };
            if stated.is_some() {
                return Err(ApiError::invalid(
                    "completion",
                    "the completion message must be the last message of the upload: nothing was changed",
                ));
            }
            if options.is_none() {
                options = Some((msg.allow_mass_end, msg.dry_run));
            }
            if let Some(completion) = msg.completion {
                if msg.plan.is_some() {
                    return Err(ApiError::invalid(
                        "plan",
                        "the completion message carries no plan: send the last plan in its own message",
                    ));
                }
                stated = Some(completion.plan_rows);
                continue;
            }
            if upload.received() >= cfg.sync_max_rows {
                return Err(ApiError::invalid(
                    "plan",
                    format!(
                        "the upload has more than {} plan rows (CPIS_SYNC_MAX_ROWS): it was refused whole and \
                         nothing was changed",
                        cfg.sync_max_rows
                    ),
                ));
            }
            upload.push(msg.plan.as_ref());
            if upload.should_flush(keepalive) {
                let client = self.council_db(council).await?;
                upload.flush(pg(&client)).await?;
            }
        }
        let Some(stated) = stated else {
            return Err(ApiError::invalid(
                "completion",
                format!(
                    "the upload ended after {} plan rows without its completion message, so it may be incomplete: \
                     nothing was changed; send the whole list followed by a completion message stating its number \
                     of plan rows",
                    upload.received()
                ),
            ));
        };
        if stated != upload.received() {
            return Err(ApiError::invalid(
                "completion.plan_rows",
                format!("states {stated} plan rows but {} were received: nothing was changed", upload.received()),
            ));
        }
        Ok(options.unwrap_or((false, false)))
    }
}

fn flag_of(f: &store::FoundFlag, day: NaiveDate) -> common::Flag {
    common::Flag {
        plan_type: i32::from(f.plan_type),
        start_date: f.start_date.to_string(),
        end_date: model::fmt_date(f.end_date),
        expected_delivery_date: model::fmt_date(f.expected_delivery_date),
        council_code: f.council_code.clone(),
        council_name: councils::name_of(&f.council_code),
        contact: Some(f.contact.to_proto()),
        ended: f.end_date.is_some_and(|e| e < day),
    }
}

#[tonic::async_trait]
impl pb::registry_service_server::RegistryService for Registry {
    async fn upsert_plan(
        &self,
        request: Request<pb::UpsertPlanRequest>,
    ) -> Result<Response<pb::UpsertPlanResponse>, Status> {
        let council = council_of(&request)?;
        let plan = self.upsert(&council, request.into_inner()).await?;
        Ok(Response::new(pb::UpsertPlanResponse { plan: Some(plan.to_proto()) }))
    }

    async fn end_plan(&self, request: Request<pb::EndPlanRequest>) -> Result<Response<pb::EndPlanResponse>, Status> {
        let council = council_of(&request)?;
        let req = request.into_inner();
        let mut v = Violations::new();
        model::local_reference(&mut v, "local_reference", &req.local_reference);
        let end = v.date("end_date", &req.end_date);
        v.finish().map_err(ApiError::from)?;
        let end = end.ok_or_else(|| ApiError::invalid("end_date", "is required"))?;

        let mut client = self.council_db(&council).await?;
        let tx = client.transaction().await.map_err(ApiError::from)?;
        store::lock_council(&*tx, &council, false).await?;
        let current =
            store::find_plan(&*tx, &council, &req.local_reference, true).await?.ok_or(ApiError::NotFound("plan"))?;
        if end < current.input.start_date {
            return Err(ApiError::invalid("end_date", "must not be before the plan's start_date").into());
        }
        if current.input.end_date == Some(end) {
            return Ok(Response::new(pb::EndPlanResponse { plan: Some(current.to_proto()) }));
        }
        let plan = store::set_end_date(&*tx, current.plan_id, end).await?;
        store::record_change(&*tx, plan.plan_id, plan.version, "ended", &["end_date"], &format!("council/{council}"))
            .await?;
        tx.commit().await.map_err(ApiError::from)?;
        Ok(Response::new(pb::EndPlanResponse { plan: Some(plan.to_proto()) }))
    }

    async fn delete_plan(
        &self,
        request: Request<pb::DeletePlanRequest>,
    ) -> Result<Response<pb::DeletePlanResponse>, Status> {
        let council = council_of(&request)?;
        let req = request.into_inner();
        let mut v = Violations::new();
        model::local_reference(&mut v, "local_reference", &req.local_reference);
        v.finish().map_err(ApiError::from)?;
        let mut client = self.council_db(&council).await?;
        let tx = client.transaction().await.map_err(ApiError::from)?;
        store::lock_council(&*tx, &council, false).await?;
        let current =
            store::find_plan(&*tx, &council, &req.local_reference, true).await?.ok_or(ApiError::NotFound("plan"))?;
        let version = store::mark_deleted(&*tx, current.plan_id).await?;
        store::record_change(&*tx, current.plan_id, version, "deleted", &[], &format!("council/{council}")).await?;
        tx.commit().await.map_err(ApiError::from)?;
        Ok(Response::new(pb::DeletePlanResponse {}))
    }

    async fn get_plan(&self, request: Request<pb::GetPlanRequest>) -> Result<Response<pb::GetPlanResponse>, Status> {
        let council = council_of(&request)?;
        let req = request.into_inner();
        let mut v = Violations::new();
        model::local_reference(&mut v, "local_reference", &req.local_reference);
        v.finish().map_err(ApiError::from)?;
        let client = self.council_db(&council).await?;
        let plan = store::find_plan(pg(&client), &council, &req.local_reference, false)
            .await?
            .ok_or(ApiError::NotFound("plan"))?;
        Ok(Response::new(pb::GetPlanResponse { plan: Some(plan.to_proto()) }))
    }

    async fn list_plans(
        &self,
        request: Request<pb::ListPlansRequest>,
    ) -> Result<Response<pb::ListPlansResponse>, Status> {
        let council = council_of(&request)?;
        let req = request.into_inner();
        let mut v = Violations::new();
        let limit = v.page_size("page_size", req.page_size, 100, 1000);
        let after = if req.page_token.is_empty() {
            Some(String::new())
        } else {
            let decoded = decode_token(&req.page_token);
            if decoded.is_none() {
                v.add("page_token", "is not a token returned by ListPlans");
            }
            decoded
        };
        v.finish().map_err(ApiError::from)?;
        let after = after.unwrap_or_default();
        let client = self.council_db(&council).await?;
        // One row more than asked tells whether another page follows.
        let mut plans = store::list_plans(pg(&client), &council, &after, req.include_ended, today(), limit + 1).await?;
        let next_page_token = if plans.len() as i64 > limit {
            plans.truncate(limit as usize);
            plans.last().map(|p| encode_token(&p.input.local_reference)).unwrap_or_default()
        } else {
            String::new()
        };
        Ok(Response::new(pb::ListPlansResponse {
            plans: plans.iter().map(StoredPlan::to_proto).collect(),
            next_page_token,
        }))
    }

    async fn sync_plans(
        &self,
        request: Request<Streaming<pb::SyncPlansRequest>>,
    ) -> Result<Response<pb::SyncPlansResponse>, Status> {
        let council = council_of(&request)?;
        let stream = request.into_inner();
        let outcome = self.sync(&council, stream).await?;
        Ok(Response::new(outcome))
    }

    async fn lookup_flags(
        &self,
        request: Request<pb::LookupFlagsRequest>,
    ) -> Result<Response<pb::LookupFlagsResponse>, Status> {
        let req = request.into_inner();
        let mut v = Violations::new();
        let nhs = v.nhs_number("nhs_number", &req.nhs_number);
        let day = v.optional_date("on_date", &req.on_date);
        v.finish().map_err(ApiError::from)?;
        let (Some(nhs), Some(day)) = (nhs, day) else {
            return Err(ApiError::internal("validated fields missing").into());
        };
        let day = day.unwrap_or_else(today);
        // Not through the council gate: the connections it leaves free are
        // this call's reserve, and its wait is shorter than Attendance's deadline.
        let timeouts = deadpool_postgres::Timeouts { wait: Some(self.config.lookup_wait), ..self.pool.timeouts() };
        let client = self.pool.timeout_get(&timeouts).await.map_err(ApiError::from)?;
        let found = store::lookup_flags(&client, nhs.as_str(), day, self.config.unborn_scope_days).await?;
        Ok(Response::new(pb::LookupFlagsResponse {
            flags: found.iter().map(|f| flag_of(f, day)).collect(),
            local_references: found.into_iter().map(|f| f.local_reference).collect(),
        }))
    }
}
