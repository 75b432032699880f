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
//! A refused row changes nothing: an existing plan with its reference is
//! neither updated nor ended. Rows are staged and judged in file order: of two
//! rows with the same reference the first counts, whatever the batch size.

use crate::model::{validate_plan, PlanInput};
use crate::store::lock_council;
use chrono::NaiveDate;
use cpis_proto::registry::v1 as pb;
use cpis_runtime::ApiError;
use std::collections::HashSet;
use std::time::{Duration, Instant};
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
            last_touch: Instant::now(),
            outcome: Outcome::default(),
        }
    }

    /// Rows received so far.
    pub fn received(&self) -> i64 {
        self.outcome.received
    }

    /// Registers this upload as the council's only one. `stale_after`: an
    /// upload of the council not heard of for that long is abandoned and
    /// swept (with its rows) first.
    pub async fn claim(&mut self, client: &impl GenericClient, stale_after: Duration) -> Result<(), ApiError> {
        sweep_abandoned(client, stale_after).await?;
        let claimed = client
            .execute(
                "INSERT INTO registry.sync_uploads (sync_id, council_code) VALUES ($1, $2)
                 ON CONFLICT (council_code) DO NOTHING",
                &[&self.sync_id, &self.council],
            )
            .await?;
        if claimed == 1 {
            self.last_touch = Instant::now();
            return Ok(());
        }
        let since = client
            .query_opt(
                "SELECT to_char(started_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"')
                 FROM registry.sync_uploads WHERE council_code = $1",
                &[&self.council],
            )
            .await?
            .map(|r| r.get::<_, String>(0))
            .unwrap_or_default();
        Err(ApiError::Aborted(format!(
            "another SyncPlans upload of this council is in progress (since {since}): only one runs at a time; \
             nothing was changed; resend when it has finished"
        )))
    }

    fn reject(&mut self, row: i64, reference: &str, field: &str, reason: &str) {
        self.outcome.rejected += 1;
        if self.outcome.rejections.len() < MAX_LISTED_REJECTIONS {
            self.outcome.rejections.push(pb::SyncRejection {
                local_reference: reference.chars().take(crate::model::MAX_LOCAL_REFERENCE).collect(),
                reason: reason.chars().take(MAX_REASON_CHARS).collect(),
                row,
                field: field.to_string(),
            });
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
                } else {
                    self.batch_refs.insert(input.local_reference.clone());
                    self.batch.push((row, Pending::Valid(input)));
                }
            }
            Err(violations) => {
                let reference = plan.map(|p| p.local_reference.clone()).unwrap_or_default();
                let field = violations.list().first().map(|v| v.field.clone()).unwrap_or_default();
                let reason: Vec<String> =
                    violations.list().iter().map(|v| format!("{}: {}", v.field, v.description)).collect();
                self.reject(row, &reference, &field, &reason.join("; "));
                let mut probe = cpis_domain::validate::Violations::new();
                if crate::model::local_reference(&mut probe, "plan.local_reference", &reference)
                    && self.batch_refs.insert(reference.clone())
                {
                    self.batch.push((row, Pending::Refused(reference)));
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

    /// Stages the pending rows (references already staged by earlier rows are
    /// refused) and marks the upload alive.
    pub async fn flush(&mut self, client: &impl GenericClient) -> Result<(), ApiError> {
        let alive = client
            .execute("UPDATE registry.sync_uploads SET last_seen_at = now() WHERE sync_id = $1", &[&self.sync_id])
            .await?;
        if alive != 1 {
            return Err(ApiError::Aborted(
                "this upload was idle too long and has been discarded: nothing was changed; resend it".into(),
            ));
        }
        self.last_touch = Instant::now();
        self.batch_refs.clear();
        let batch = std::mem::take(&mut self.batch);
        if batch.is_empty() {
            return Ok(());
        }
        let (mut refused_refs, mut refused_rows) = (Vec::new(), Vec::new());
        let mut valid = Vec::with_capacity(batch.len());
        for (row, p) in &batch {
            match p {
                Pending::Valid(p) => valid.push((*row, p)),
                Pending::Refused(r) => {
                    refused_refs.push(r.as_str());
                    refused_rows.push(*row);
                }
            }
        }
        if !refused_refs.is_empty() {
            client
                .execute(
                    "INSERT INTO registry.sync_rows (sync_id, local_reference, row_no, rejected)
                     SELECT $1, r, n, true FROM unnest($2::text[], $3::int8[]) AS t(r, n)
                     ON CONFLICT (sync_id, local_reference) DO NOTHING",
                    &[&self.sync_id, &refused_refs, &refused_rows],
                )
                .await?;
        }
        if valid.is_empty() {
            return Ok(());
        }
        let mut refs = Vec::with_capacity(valid.len());
        let mut rows = Vec::with_capacity(valid.len());
        let mut nhs = Vec::with_capacity(valid.len());
        let mut dob = Vec::with_capacity(valid.len());
        let mut kind = Vec::with_capacity(valid.len());
        let mut start = Vec::with_capacity(valid.len());
        let mut end = Vec::with_capacity(valid.len());
        let mut edd = Vec::with_capacity(valid.len());
        let mut team = Vec::with_capacity(valid.len());
        let mut office = Vec::with_capacity(valid.len());
        let mut duty = Vec::with_capacity(valid.len());
        let mut email = Vec::with_capacity(valid.len());
        for (row, p) in &valid {
            refs.push(p.local_reference.as_str());
            rows.push(*row);
            nhs.push(p.nhs_number.as_str());
            dob.push(p.date_of_birth);
            kind.push(p.plan_type as i16);
            start.push(p.start_date);
            end.push(p.end_date);
            edd.push(p.expected_delivery_date);
            team.push(p.contact.team_name.as_str());
            office.push(p.contact.office_phone.as_str());
            duty.push(p.contact.emergency_duty_phone.as_str());
            email.push(p.contact.email.as_str());
        }
        let inserted = client
            .query(
                "INSERT INTO registry.sync_rows (sync_id, local_reference, row_no, rejected, nhs_number, date_of_birth,
                     plan_type, start_date, end_date, expected_delivery_date, team_name, office_phone,
                     emergency_duty_phone, email)
                 SELECT $1, t.*  FROM unnest($2::text[], $3::int8[], array_fill(false, ARRAY[cardinality($2::text[])]),
                     $4::text[], $5::date[], $6::int2[], $7::date[], $8::date[], $9::date[], $10::text[], $11::text[],
                     $12::text[], $13::text[]) AS t
                 ON CONFLICT (sync_id, local_reference) DO NOTHING
                 RETURNING row_no",
                &[&self.sync_id, &refs, &rows, &nhs, &dob, &kind, &start, &end, &edd, &team, &office, &duty, &email],
            )
            .await?;
        self.staged += inserted.len() as i64;
        if inserted.len() < valid.len() {
            let kept: HashSet<i64> = inserted.iter().map(|r| r.get(0)).collect();
            let lost: Vec<(i64, String)> = valid
                .iter()
                .filter(|(row, _)| !kept.contains(row))
                .map(|(row, p)| (*row, p.local_reference.clone()))
                .collect();
            for (row, reference) in lost {
                self.reject_duplicate(row, &reference);
            }
        }
        Ok(())
    }

    /// Applies the staged snapshot in one transaction (rolled back for a dry
    /// run), unless it would end more than `mass_end_share` of the council's
    /// open plans without `allow_mass_end`. Removes the upload and its staged
    /// rows either way.
    pub async fn apply(
        mut self,
        client: &mut deadpool_postgres::Client,
        by: &str,
        allow_mass_end: bool,
        mass_end_share: f64,
        dry_run: bool,
    ) -> Result<Outcome, ApiError> {
        let flushed = self.flush(crate::pg(client)).await;
        let result = match flushed {
            Ok(()) => self.apply_staged(client, by, allow_mass_end, mass_end_share, dry_run).await,
            Err(e) => Err(e),
        };
        // Staged rows are scratch data: drop them whatever happened.
        let _ = discard(crate::pg(client), self.sync_id).await;
        result?;
        self.outcome.rejections.sort_by_key(|r| r.row);
        Ok(self.outcome)
    }

    async fn apply_staged(
        &mut self,
        client: &mut deadpool_postgres::Client,
        by: &str,
        allow_mass_end: bool,
        mass_end_share: f64,
        dry_run: bool,
    ) -> Result<(), ApiError> {
        let tx = client.transaction().await?;
        // A whole register (up to the row cap) is applied in this one
        // transaction: allow it longer than the per-statement limit that
        // every other statement keeps (CPIS_DB_STATEMENT_TIMEOUT_MS).
        tx.batch_execute("SET LOCAL statement_timeout = '15min'").await?;
        lock_council(&*tx, &self.council, true).await?;
        // Hold this upload's row while applying: a sweep (which skips locked
        // uploads) can then never remove its staged rows mid-way.
        let mine =
            tx.query_opt("SELECT 1 FROM registry.sync_uploads WHERE sync_id = $1 FOR UPDATE", &[&self.sync_id]).await?;
        if mine.is_none() {
            return Err(ApiError::Aborted(
                "this upload was idle too long and has been discarded: nothing was changed; resend it".into(),
            ));
        }
        let (id, council, today) = (&self.sync_id, self.council.as_str(), &self.today);

        let counts = tx
            .query_one(
                "SELECT count(*),
                        count(*) FILTER (WHERE NOT EXISTS (
                            SELECT 1 FROM registry.sync_rows s WHERE s.sync_id = $1 AND s.local_reference = p.local_reference))
                 FROM registry.plans p
                 WHERE p.council_code = $2 AND p.deleted_at IS NULL AND (p.end_date IS NULL OR p.end_date > $3)",
                &[id, &council, today],
            )
            .await?;
        let (open, to_end): (i64, i64) = (counts.get(0), counts.get(1));
        if to_end > 0 && !allow_mass_end && (to_end as f64) > mass_end_share * (open as f64) {
            return Err(ApiError::FailedPrecondition(format!(
                "this snapshot would end {to_end} of the council's {open} open plans, more than {:.0}%: \
                 nothing was changed; if the list is complete and this is intended, resend it with allow_mass_end",
                mass_end_share * 100.0
            )));
        }

        let ended = tx
            .query_one(
                "WITH ended AS (
                     UPDATE registry.plans p SET end_date = GREATEST($3, p.start_date), version = p.version + 1, updated_at = now()
                     WHERE p.council_code = $2 AND p.deleted_at IS NULL AND (p.end_date IS NULL OR p.end_date > $3)
                       AND NOT EXISTS (SELECT 1 FROM registry.sync_rows s
                                       WHERE s.sync_id = $1 AND s.local_reference = p.local_reference)
                     RETURNING p.plan_id, p.version, p.local_reference),
                 hist AS (
                     INSERT INTO registry.plan_changes (plan_id, version, action, changed_fields, changed_by)
                     SELECT plan_id, version, 'ended_by_sync', ARRAY['end_date'], $4 FROM ended RETURNING 1)
                 SELECT (SELECT count(*) FROM hist),
                        coalesce((SELECT array_agg(local_reference ORDER BY local_reference) FROM ended)[1:$5], '{}')",
                &[id, &council, today, &by, &MAX_LISTED_REFERENCES],
            )
            .await?;
        let (ended, ended_refs): (i64, Vec<String>) = (ended.get(0), ended.get(1));

        let updated = tx
            .query_one(
                "WITH diff AS (
                     SELECT p.plan_id, array_remove(ARRAY[
                         CASE WHEN p.nhs_number IS DISTINCT FROM s.nhs_number THEN 'nhs_number' END,
                         CASE WHEN p.date_of_birth IS DISTINCT FROM s.date_of_birth THEN 'date_of_birth' END,
                         CASE WHEN p.plan_type IS DISTINCT FROM s.plan_type THEN 'plan_type' END,
                         CASE WHEN p.start_date IS DISTINCT FROM s.start_date THEN 'start_date' END,
                         CASE WHEN p.end_date IS DISTINCT FROM s.end_date THEN 'end_date' END,
                         CASE WHEN p.expected_delivery_date IS DISTINCT FROM s.expected_delivery_date THEN 'expected_delivery_date' END,
                         CASE WHEN p.team_name IS DISTINCT FROM s.team_name THEN 'contact.team_name' END,
                         CASE WHEN p.office_phone IS DISTINCT FROM s.office_phone THEN 'contact.office_phone' END,
                         CASE WHEN p.emergency_duty_phone IS DISTINCT FROM s.emergency_duty_phone THEN 'contact.emergency_duty_phone' END,
                         CASE WHEN p.email IS DISTINCT FROM s.email THEN 'contact.email' END
                     ], NULL) AS fields
                     FROM registry.plans p
                     JOIN registry.sync_rows s ON s.sync_id = $1 AND s.local_reference = p.local_reference AND NOT s.rejected
                     WHERE p.council_code = $2 AND p.deleted_at IS NULL),
                 upd AS (
                     UPDATE registry.plans p SET nhs_number = s.nhs_number, date_of_birth = s.date_of_birth,
                         plan_type = s.plan_type, start_date = s.start_date, end_date = s.end_date,
                         expected_delivery_date = s.expected_delivery_date, team_name = s.team_name,
                         office_phone = s.office_phone, emergency_duty_phone = s.emergency_duty_phone,
                         email = s.email, version = p.version + 1, updated_at = now()
                     FROM diff d, registry.sync_rows s
                     WHERE d.plan_id = p.plan_id AND cardinality(d.fields) > 0
                       AND s.sync_id = $1 AND s.local_reference = p.local_reference
                     RETURNING p.plan_id, p.version, p.local_reference),
                 hist AS (
                     INSERT INTO registry.plan_changes (plan_id, version, action, changed_fields, changed_by)
                     SELECT u.plan_id, u.version, 'updated_by_sync', d.fields, $3 FROM upd u JOIN diff d USING (plan_id)
                     RETURNING 1)
                 SELECT (SELECT count(*) FROM hist),
                        coalesce((SELECT array_agg(local_reference ORDER BY local_reference) FROM upd)[1:$4], '{}')",
                &[id, &council, &by, &MAX_LISTED_REFERENCES],
            )
            .await?;
        let (updated, updated_refs): (i64, Vec<String>) = (updated.get(0), updated.get(1));

        let created = tx
            .query_one(
                "WITH ins AS (
                     INSERT INTO registry.plans (plan_id, council_code, local_reference, nhs_number, date_of_birth,
                         plan_type, start_date, end_date, expected_delivery_date, team_name, office_phone,
                         emergency_duty_phone, email, version)
                     SELECT gen_random_uuid(), $2, s.local_reference, s.nhs_number, s.date_of_birth, s.plan_type,
                         s.start_date, s.end_date, s.expected_delivery_date, s.team_name, s.office_phone,
                         s.emergency_duty_phone, s.email, 1
                     FROM registry.sync_rows s
                     WHERE s.sync_id = $1 AND NOT s.rejected
                       AND NOT EXISTS (SELECT 1 FROM registry.plans p WHERE p.council_code = $2
                                       AND p.local_reference = s.local_reference AND p.deleted_at IS NULL)
                     RETURNING plan_id, local_reference),
                 hist AS (
                     INSERT INTO registry.plan_changes (plan_id, version, action, changed_fields, changed_by)
                     SELECT plan_id, 1, 'created_by_sync', ARRAY[]::text[], $3 FROM ins RETURNING 1)
                 SELECT (SELECT count(*) FROM hist),
                        coalesce((SELECT array_agg(local_reference ORDER BY local_reference) FROM ins)[1:$4], '{}')",
                &[id, &council, &by, &MAX_LISTED_REFERENCES],
            )
            .await?;
        let (created, created_refs): (i64, Vec<String>) = (created.get(0), created.get(1));

        self.outcome.ended = ended;
        self.outcome.updated = updated;
        self.outcome.created = created;
        self.outcome.unchanged = self.staged - updated - created;
        self.outcome.ended_references = ended_refs;
        self.outcome.updated_references = updated_refs;
        self.outcome.created_references = created_refs;
        if dry_run {
            tx.rollback().await?;
        } else {
            tx.commit().await?;
        }
        Ok(())
    }
}

impl Sync {
    /// Removes this upload and its staged rows (it failed; nothing applied).
    pub async fn discard(&self, client: &impl GenericClient) -> Result<(), ApiError> {
        discard(client, self.sync_id).await
    }

    /// A guard that drops this upload (and its staged rows) if it never
    /// completes — including when the handler itself is cancelled because
    /// the client went away, which runs no code after the current `.await`.
    pub fn staging_guard(&self, pool: deadpool_postgres::Pool) -> StagingGuard {
        StagingGuard { pool, sync_id: self.sync_id }
    }
}

/// Removes one upload and its staged rows.
async fn discard(client: &impl GenericClient, sync_id: Uuid) -> Result<(), ApiError> {
    client.execute("DELETE FROM registry.sync_rows WHERE sync_id = $1", &[&sync_id]).await?;
    client.execute("DELETE FROM registry.sync_uploads WHERE sync_id = $1", &[&sync_id]).await?;
    Ok(())
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
                    let _ = discard(crate::pg(&client), sync_id).await;
                }
            });
        }
    }
}

/// Removes uploads not heard of for `stale_after` (their client went away
/// on a replica that then crashed), with their staged rows: by upload, never
/// by the age of single rows, so a slow but live upload keeps all of its rows.
pub async fn sweep_abandoned(client: &impl GenericClient, stale_after: Duration) -> Result<(), ApiError> {
    let secs = stale_after.as_secs_f64();
    client
        .execute(
            "WITH gone AS (
                 DELETE FROM registry.sync_uploads WHERE sync_id IN (
                     SELECT sync_id FROM registry.sync_uploads
                     WHERE last_seen_at < now() - make_interval(secs => $1)
                     FOR UPDATE SKIP LOCKED)
                 RETURNING sync_id)
             DELETE FROM registry.sync_rows WHERE sync_id IN (SELECT sync_id FROM gone)",
            &[&secs],
        )
        .await?;
    Ok(())
}
