//! `SyncPlans`: a council streams its complete list; the registry makes its
//! register match it. Rows are validated as they arrive and staged in
//! batches (bounded memory whatever the upload's size); once the stream ends
//! with its completion message, the whole snapshot is applied in one
//! transaction — or, when it would end too many plans without
//! `allow_mass_end`, not at all.
//!
//! All or nothing: an upload without a completion message stating the number
//! of rows received (a crash, a cut connection, a file error) changes nothing.
//! One upload per council at a time, across replicas: an upload is a row of
//! `registry.sync_uploads`, kept fresh while messages arrive; an abandoned one
//! (its replica died) is swept by its own staleness, never by the age of its rows.
//!
//! A row identical to the council's plan is not staged, only counted ([`known`]).
//!
//! Staging overlaps receiving: while one batch is written (in a transaction
//! that also marks the upload alive, on a connection of its own), the next
//! is received and validated; at most one batch is in flight, so batches
//! reach the database in file order.
//!
//! A refused row changes nothing: an existing plan with its reference is
//! neither updated nor ended. Rows are staged and judged in file order: of two
//! rows with the same reference the first counts, whatever the batch size.
//!
//! A snapshot never undoes a change it did not see: a plan that UpsertPlan,
//! EndPlan or DeletePlan changed after the upload was claimed is left as it
//! stands and reported as a conflict; and the mass-end guard counts every
//! way the snapshot would end plans ([`crate::snapshot`]).

mod known;

use crate::model::{validate_plan, PlanInput};
use crate::share::CouncilConn;
use crate::snapshot;
use crate::store::{changes, lock_council, uploads};
use chrono::NaiveDate;
use cpis_proto::registry::v1 as pb;
use cpis_runtime::ApiError;
use known::{KnownPlans, Sighting};
use std::collections::HashSet;
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;
use tokio_postgres::GenericClient;
use uuid::Uuid;

/// Rows staged per round trip (the default).
pub const BATCH: usize = 1000;
/// Rejections listed in the response; `rejected` counts them all.
pub const MAX_LISTED_REJECTIONS: usize = 1000;
/// Longest reason listed for one rejection, in characters.
pub const MAX_REASON_CHARS: usize = 300;
/// References listed per kind of change (created, updated, ended).
pub const MAX_LISTED_REFERENCES: i32 = 1000;

/// What a sync did (or, for a dry run, would do).
#[derive(Debug, Default)]
pub struct Outcome {
    /// Rows received.
    pub received: i64,
    /// Plans created.
    pub created: i64,
    /// Plans changed.
    pub updated: i64,
    /// Rows identical to the stored plan.
    pub unchanged: i64,
    /// Open plans absent from the snapshot, now ended.
    pub ended: i64,
    /// Rows refused.
    pub rejected: i64,
    /// The first [`MAX_LISTED_REJECTIONS`] refusals, in row order.
    pub rejections: Vec<pb::SyncRejection>,
    /// References of created plans (the first [`MAX_LISTED_REFERENCES`]).
    pub created_references: Vec<String>,
    /// References of updated plans (the first [`MAX_LISTED_REFERENCES`]).
    pub updated_references: Vec<String>,
    /// References of ended plans (the first [`MAX_LISTED_REFERENCES`]).
    pub ended_references: Vec<String>,
    /// Plans changed by another call after the upload started, left alone
    /// (the first [`MAX_LISTED_REFERENCES`]).
    pub conflicts: Vec<pb::SyncConflict>,
    /// Conflicts in all.
    pub conflicted: i64,
    /// Rows accepted but needing the council's attention (inactive NHS numbers).
    pub warnings: Vec<pb::PlanWarning>,
}

/// How a staged snapshot is applied.
#[derive(Debug, Clone, Copy)]
pub struct ApplyOptions<'a> {
    /// Who the changes are recorded as.
    pub by: &'a str,
    /// The request allows ending more than `mass_end_share` of the open plans.
    pub allow_mass_end: bool,
    /// The share of open plans a snapshot may end without `allow_mass_end`.
    pub mass_end_share: f64,
    /// Change nothing; report what would change.
    pub dry_run: bool,
    /// Days an unborn plan stays in scope after the expected delivery.
    pub unborn_scope_days: u32,
}

/// One row waiting to be staged.
enum Pending {
    /// A valid plan.
    Valid(PlanInput),
    /// A refused row whose reference is well-formed: it protects that
    /// reference from being ended, nothing else.
    Refused(String),
}

/// One upload in progress.
pub struct Sync {
    sync_id: Uuid,
    council: String,
    today: NaiveDate,
    batch_size: usize,
    batch: Vec<(i64, Pending)>,
    /// References in `batch`: the first row of a reference wins within a
    /// batch here, across batches in the database.
    batch_refs: HashSet<String>,
    /// Rows accepted into staging so far.
    staged: i64,
    /// The council's plans at the claim.
    known: KnownPlans,
    /// The batch being staged in the background, if any.
    inflight: Option<JoinHandle<Result<Staged, ApiError>>>,
    last_touch: Instant,
    /// What happened so far.
    pub outcome: Outcome,
}

impl Sync {
    /// Starts an upload for `council`, staging `batch_size` rows per round trip.
    pub fn new(council: &str, today: NaiveDate, batch_size: usize) -> Self {
        let batch_size = batch_size.max(1);
        Self {
            sync_id: Uuid::new_v4(),
            council: council.to_string(),
            today,
            batch_size,
            batch: Vec::with_capacity(batch_size.min(BATCH)),
            batch_refs: HashSet::new(),
            staged: 0,
            known: KnownPlans::default(),
            inflight: None,
            last_touch: Instant::now(),
            outcome: Outcome::default(),
        }
    }

    /// Rows received so far.
    pub fn received(&self) -> i64 {
        self.outcome.received
    }

    /// Registers this upload as the council's only one, and what it has seen
    /// of the council's plans (under the council's exclusive lock, so that no
    /// change is half made). `stale_after`: an upload of the council not
    /// heard of for that long is abandoned and swept (with its rows) first.
    pub async fn claim(
        &mut self,
        client: &mut deadpool_postgres::Client,
        stale_after: Duration,
    ) -> Result<(), ApiError> {
        uploads::sweep_abandoned(crate::pg(client), stale_after).await?;
        let tx = client.transaction().await?;
        lock_council(&*tx, &self.council, true).await?;
        let claimed = uploads::claim(&*tx, self.sync_id, &self.council).await?;
        tx.commit().await?;
        if claimed {
            match KnownPlans::load(crate::pg(client), &self.council).await {
                Ok(known) => self.known = known,
                Err(e) => {
                    let _ = uploads::discard(crate::pg(client), self.sync_id).await;
                    return Err(e);
                }
            }
            self.last_touch = Instant::now();
            return Ok(());
        }
        let since = uploads::started_at(crate::pg(client), &self.council).await?.unwrap_or_default();
        Err(ApiError::Aborted(format!(
            "another SyncPlans upload of this council is in progress (since {since}): only one runs at a time; \
             nothing was changed; resend when it has finished"
        )))
    }

    /// Counts a refusal and keeps it among the listed ones while it is one
    /// of the first [`MAX_LISTED_REJECTIONS`] in row order (refusals of
    /// duplicates arrive out of row order, once their batch is staged).
    fn reject(&mut self, row: i64, reference: &str, field: &str, reason: &str) {
        self.outcome.rejected += 1;
        let listed = &mut self.outcome.rejections;
        listed.push(pb::SyncRejection {
            local_reference: reference.chars().take(crate::model::MAX_LOCAL_REFERENCE).collect(),
            reason: reason.chars().take(MAX_REASON_CHARS).collect(),
            row,
            field: field.to_string(),
            replacement_nhs_number: String::new(),
        });
        if listed.len() >= 2 * MAX_LISTED_REJECTIONS {
            listed.sort_by_key(|r| r.row);
            listed.truncate(MAX_LISTED_REJECTIONS);
        }
    }

    /// Validates one row and keeps it for the next batch.
    pub fn push(&mut self, plan: Option<&pb::Plan>) {
        self.outcome.received += 1;
        let row = self.outcome.received;
        match validate_plan(plan, "plan", self.today) {
            Ok(input) => {
                if self.batch_refs.contains(&input.local_reference) {
                    self.reject_duplicate(row, &input.local_reference);
                    return;
                }
                match self.known.see_valid(row, &input) {
                    Sighting::Duplicate => self.reject_duplicate(row, &input.local_reference),
                    Sighting::Unchanged => {}
                    Sighting::Stage => {
                        self.batch_refs.insert(input.local_reference.clone());
                        self.batch.push((row, Pending::Valid(input)));
                    }
                }
            }
            Err(violations) => {
                let reference = plan.map(|p| p.local_reference.clone()).unwrap_or_default();
                let field = violations.list().first().map(|v| v.field.clone()).unwrap_or_default();
                let reason: Vec<String> =
                    violations.list().iter().map(|v| format!("{}: {}", v.field, v.description)).collect();
                self.reject(row, &reference, &field, &reason.join("; "));
                let mut probe = cpis_domain::validate::Violations::new();
                if crate::model::local_reference(&mut probe, "plan.local_reference", &reference) {
                    self.known.see_refused(&reference);
                    if self.batch_refs.insert(reference.clone()) {
                        self.batch.push((row, Pending::Refused(reference)));
                    }
                }
            }
        }
    }

    fn reject_duplicate(&mut self, row: i64, reference: &str) {
        self.reject(
            row,
            reference,
            "plan.local_reference",
            "plan.local_reference: appears more than once in this upload (the first row counts)",
        );
    }

    /// True when the pending rows should be staged now: a full batch, or
    /// `keepalive` since the upload last told the database it is alive.
    pub fn should_flush(&self, keepalive: Duration) -> bool {
        self.batch.len() >= self.batch_size || self.last_touch.elapsed() >= keepalive
    }

    /// Starts staging the pending rows on `client` in the background and
    /// marks the upload alive; call [`Sync::settle`] first (one batch in
    /// flight at a time keeps the batches in file order).
    pub fn flush(&mut self, mut client: CouncilConn) {
        debug_assert!(self.inflight.is_none(), "settle before flushing");
        self.last_touch = Instant::now();
        let batch = self.take_batch();
        self.inflight = Some(tokio::spawn(async move { batch.stage(&mut client).await }));
    }

    /// Waits for the batch being staged, if any, and refuses its rows whose
    /// reference an earlier row had staged already.
    pub async fn settle(&mut self) -> Result<(), ApiError> {
        let Some(inflight) = self.inflight.take() else {
            return Ok(());
        };
        let staged = inflight.await.map_err(|_| ApiError::internal("staging a batch of the upload failed"))??;
        self.absorb(staged);
        Ok(())
    }

    fn take_batch(&mut self) -> Batch {
        self.batch_refs.clear();
        let mut batch =
            Batch { sync_id: self.sync_id, refused: Vec::new(), valid: Vec::with_capacity(self.batch.len()) };
        for (row, p) in std::mem::take(&mut self.batch) {
            match p {
                Pending::Valid(p) => batch.valid.push((row, p)),
                Pending::Refused(r) => batch.refused.push((row, r)),
            }
        }
        batch
    }

    fn absorb(&mut self, staged: Staged) {
        self.staged += staged.staged;
        for (row, reference) in staged.duplicates {
            self.reject_duplicate(row, &reference);
        }
    }

    /// Applies the staged snapshot in one transaction (rolled back for a dry
    /// run), unless it would end more than `mass_end_share` of the council's
    /// open plans without `allow_mass_end`. Removes the upload and its staged
    /// rows either way.
    pub async fn apply(
        mut self,
        client: &mut deadpool_postgres::Client,
        options: ApplyOptions<'_>,
    ) -> Result<Outcome, ApiError> {
        let flushed = match self.settle().await {
            Ok(()) => self.take_batch().stage(client).await.map(|staged| self.absorb(staged)),
            Err(e) => Err(e),
        };
        let result = match flushed {
            Ok(()) => self.apply_staged(client, options).await,
            Err(e) => Err(e),
        };
        // Staged rows are scratch data: drop them whatever happened.
        let _ = uploads::discard(crate::pg(client), self.sync_id).await;
        result?;
        self.outcome.rejections.sort_by_key(|r| r.row);
        self.outcome.rejections.truncate(MAX_LISTED_REJECTIONS);
        Ok(self.outcome)
    }

    async fn apply_staged(
        &mut self,
        client: &mut deadpool_postgres::Client,
        options: ApplyOptions<'_>,
    ) -> Result<(), ApiError> {
        let tx = client.transaction().await?;
        // A whole register (up to the row cap) is applied in this one
        // transaction: allow it longer than the per-statement limit that
        // every other statement keeps (CPIS_DB_STATEMENT_TIMEOUT_MS).
        tx.batch_execute("SET LOCAL statement_timeout = '15min'").await?;
        lock_council(&*tx, &self.council, true).await?;
        // Hold this upload's row while applying: a sweep (which skips locked
        // uploads) can then never remove its staged rows mid-way.
        if !uploads::lock(&*tx, self.sync_id).await? {
            return Err(idle_too_long());
        }
        self.check_numbers(&*tx).await?;
        let (id, council) = (self.sync_id, self.council.as_str());
        // What other calls changed since the upload started stays as they left it.
        let changed = uploads::changed_since_claim(&*tx, id, council).await?;
        let left_alone: Vec<&str> = changed.iter().map(|c| c.local_reference.as_str()).collect();
        let unborn_days = i32::try_from(options.unborn_scope_days).unwrap_or(i32::MAX);
        let absent = self.known.absent();
        let (open, ending) =
            uploads::open_and_ending(&*tx, id, council, self.today, (&left_alone, &absent), unborn_days).await?;
        if snapshot::mass_end_refused(ending, open, options.mass_end_share, options.allow_mass_end) {
            return Err(ApiError::FailedPrecondition(snapshot::mass_end_refusal(ending, open, options.mass_end_share)));
        }
        let how = (options.by, MAX_LISTED_REFERENCES, left_alone.as_slice());
        let (ended, ended_refs) = uploads::end_absent(&*tx, id, council, self.today, how, &absent).await?;
        let (updated, updated_refs) = uploads::update_changed(&*tx, id, council, how).await?;
        let (created, created_refs) = uploads::create_new(&*tx, id, council, how).await?;
        let rows_left_alone =
            changed.iter().filter(|c| c.staged || self.known.had_unchanged_row(&c.local_reference)).count() as i64;
        self.outcome.ended = ended;
        self.outcome.updated = updated;
        self.outcome.created = created;
        self.outcome.unchanged = self.staged + self.known.unchanged() - updated - created - rows_left_alone;
        self.outcome.conflicted = changed.len() as i64;
        self.outcome.conflicts = changed
            .into_iter()
            .take(MAX_LISTED_REFERENCES as usize)
            .map(|c| snapshot::conflict(c.local_reference, &c.actions))
            .collect();
        if self.outcome.conflicted > 0 {
            tracing::info!(council, conflicts = self.outcome.conflicted, "plans changed during the upload left alone");
        }
        self.outcome.ended_references = ended_refs;
        self.outcome.updated_references = updated_refs;
        self.outcome.created_references = created_refs;
        if options.dry_run {
            tx.rollback().await?;
        } else {
            tx.commit().await?;
        }
        Ok(())
    }

    /// Refuses the staged rows whose NHS number was superseded (the national
    /// result "superseded NHS number", the replacement in its own field) and
    /// warns of those whose number was made inactive.
    async fn check_numbers(&mut self, tx: &impl GenericClient) -> Result<(), ApiError> {
        let superseded = changes::refuse_superseded_rows(tx, self.sync_id).await?;
        self.staged -= superseded.len() as i64;
        self.outcome.rejected += superseded.len() as i64;
        self.outcome.rejections.extend(
            superseded
                .into_iter()
                .map(|(row, reference, replacement)| known::superseded_rejection(row, reference, replacement)),
        );
        let (refused, unchanged_inactive) = self.known.check_numbers(tx).await?;
        self.outcome.rejected += refused.len() as i64;
        self.outcome.rejections.extend(refused);
        let mut inactive = changes::inactive_rows(tx, self.sync_id).await?;
        inactive.extend(unchanged_inactive);
        inactive.sort_unstable_by_key(|(row, _)| *row);
        self.outcome.warnings = inactive
            .into_iter()
            .take(MAX_LISTED_REJECTIONS)
            .map(|(row, local_reference)| pb::PlanWarning {
                row,
                local_reference,
                field: "plan.nhs_number".into(),
                reason: crate::demographics::INACTIVE_WARNING.into(),
            })
            .collect();
        Ok(())
    }

    /// Removes this upload and its staged rows (it failed; nothing applied).
    pub async fn discard(&self, client: &impl GenericClient) -> Result<(), ApiError> {
        uploads::discard(client, self.sync_id).await
    }

    /// A guard that drops this upload (and its staged rows) if it never
    /// completes — including when the handler itself is cancelled because
    /// the client went away, which runs no code after the current `.await`.
    pub fn staging_guard(&self, pool: deadpool_postgres::Pool) -> StagingGuard {
        StagingGuard { pool, sync_id: self.sync_id }
    }
}

/// Rows taken from the upload for staging, owned, so that they are written
/// while the next batch is received.
struct Batch {
    sync_id: Uuid,
    /// Refused rows `(row number, reference)` that protect their reference.
    refused: Vec<(i64, String)>,
    /// Valid rows `(row number, plan)`.
    valid: Vec<(i64, PlanInput)>,
}

/// What staging one batch did.
struct Staged {
    /// Valid rows staged.
    staged: i64,
    /// Valid rows `(row number, reference)` not staged: an earlier row had their reference.
    duplicates: Vec<(i64, String)>,
}

impl Batch {
    /// Stages the rows in one transaction that first marks the upload alive
    /// (and holds its row, so that a discard waits for this batch and then
    /// removes it too, never leaving rows behind).
    async fn stage(self, client: &mut deadpool_postgres::Client) -> Result<Staged, ApiError> {
        let tx = client.transaction().await?;
        if !uploads::mark_alive(&*tx, self.sync_id).await? {
            return Err(idle_too_long());
        }
        if !self.refused.is_empty() {
            let refused: Vec<(i64, &str)> = self.refused.iter().map(|(n, r)| (*n, r.as_str())).collect();
            uploads::stage_refused(&*tx, self.sync_id, &refused).await?;
        }
        let mut out = Staged { staged: 0, duplicates: Vec::new() };
        if !self.valid.is_empty() {
            let valid: Vec<(i64, &PlanInput)> = self.valid.iter().map(|(n, p)| (*n, p)).collect();
            let staged = uploads::stage_valid(&*tx, self.sync_id, &valid).await?;
            out.staged = staged.len() as i64;
            if staged.len() < valid.len() {
                let kept: HashSet<i64> = staged.into_iter().collect();
                out.duplicates = self
                    .valid
                    .into_iter()
                    .filter(|(row, _)| !kept.contains(row))
                    .map(|(row, p)| (row, p.local_reference))
                    .collect();
            }
        }
        tx.commit().await?;
        Ok(out)
    }
}

fn idle_too_long() -> ApiError {
    ApiError::Aborted("this upload was idle too long and has been discarded: nothing was changed; resend it".into())
}

/// See [`Sync::staging_guard`]. Dropping it removes the upload and its staged
/// rows in the background (a no-op once the upload was applied).
pub struct StagingGuard {
    pool: deadpool_postgres::Pool,
    sync_id: Uuid,
}

impl Drop for StagingGuard {
    fn drop(&mut self) {
        let (pool, sync_id) = (self.pool.clone(), self.sync_id);
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                if let Ok(client) = pool.get().await {
                    let _ = uploads::discard(crate::pg(&client), sync_id).await;
                }
            });
        }
    }
}
