//! `SyncPlans`: a council streams its complete list; the registry makes its
//! register match it. Rows are validated as they arrive and staged in
//! batches (bounded memory whatever the upload's size); once the stream ends,
//! the whole snapshot is applied in one transaction — or, when it would end
//! too many plans without `allow_mass_end`, not at all.
//!
//! A refused row changes nothing: an existing plan with its reference is
//! neither updated nor ended. Of two rows with the same reference, the first
//! counts and the later one is refused.

use crate::model::{validate_plan, PlanInput};
use crate::store::lock_council;
use chrono::NaiveDate;
use cpis_core::ApiError;
use cpis_proto::registry::v1 as pb;
use tokio_postgres::GenericClient;
use uuid::Uuid;

/// Rows staged per round trip.
pub const BATCH: usize = 1000;
/// Rejections listed in the response; `rejected` counts them all.
pub const MAX_LISTED_REJECTIONS: usize = 10_000;

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
    /// The first [`MAX_LISTED_REJECTIONS`] refusals.
    pub rejections: Vec<pb::SyncRejection>,
}

/// One upload in progress.
pub struct Sync {
    sync_id: Uuid,
    council: String,
    today: NaiveDate,
    batch: Vec<(i64, PlanInput)>,
    refused_refs: Vec<(i64, String)>,
    /// Rows accepted into staging so far.
    staged: i64,
    /// What happened so far.
    pub outcome: Outcome,
}

impl Sync {
    /// Starts an upload for `council`.
    pub fn new(council: &str, today: NaiveDate) -> Self {
        Self {
            sync_id: Uuid::new_v4(),
            council: council.to_string(),
            today,
            batch: Vec::with_capacity(BATCH),
            refused_refs: Vec::new(),
            staged: 0,
            outcome: Outcome::default(),
        }
    }

    fn reject(&mut self, row: i64, reference: &str, field: &str, reason: &str) {
        self.outcome.rejected += 1;
        if self.outcome.rejections.len() < MAX_LISTED_REJECTIONS {
            self.outcome.rejections.push(pb::SyncRejection {
                local_reference: reference.chars().take(crate::model::MAX_LOCAL_REFERENCE).collect(),
                reason: reason.to_string(),
                row,
                field: field.to_string(),
            });
        }
    }

    /// Validates one row and stages it when the batch is full.
    pub async fn push(&mut self, client: &impl GenericClient, msg: pb::SyncPlansRequest) -> Result<(), ApiError> {
        self.outcome.received += 1;
        let row = self.outcome.received;
        match validate_plan(msg.plan.as_ref(), "plan", self.today) {
            Ok(input) => self.batch.push((row, input)),
            Err(violations) => {
                let reference = msg.plan.as_ref().map(|p| p.local_reference.clone()).unwrap_or_default();
                let field = violations.list().first().map(|v| v.field.clone()).unwrap_or_default();
                let reason: Vec<String> =
                    violations.list().iter().map(|v| format!("{}: {}", v.field, v.description)).collect();
                self.reject(row, &reference, &field, &reason.join("; "));
                let mut probe = cpis_core::validate::Violations::new();
                if crate::model::local_reference(&mut probe, "plan.local_reference", &reference) {
                    self.refused_refs.push((row, reference));
                }
            }
        }
        if self.batch.len() + self.refused_refs.len() >= BATCH {
            self.flush(client).await?;
        }
        Ok(())
    }

    /// Stages the pending rows, refusing references already seen in this upload.
    pub async fn flush(&mut self, client: &impl GenericClient) -> Result<(), ApiError> {
        if !self.refused_refs.is_empty() {
            let refs: Vec<String> = self.refused_refs.iter().map(|(_, r)| r.clone()).collect();
            let rows: Vec<i64> = self.refused_refs.iter().map(|(n, _)| *n).collect();
            client
                .execute(
                    "INSERT INTO registry.sync_rows (sync_id, local_reference, row_no, rejected)
                     SELECT $1, r, n, true FROM unnest($2::text[], $3::int8[]) AS t(r, n)
                     ON CONFLICT (sync_id, local_reference) DO NOTHING",
                    &[&self.sync_id, &refs, &rows],
                )
                .await?;
            self.refused_refs.clear();
        }
        if self.batch.is_empty() {
            return Ok(());
        }
        let batch = std::mem::take(&mut self.batch);
        let mut refs = Vec::with_capacity(batch.len());
        let mut rows = Vec::with_capacity(batch.len());
        let mut nhs = Vec::with_capacity(batch.len());
        let mut dob = Vec::with_capacity(batch.len());
        let mut kind = Vec::with_capacity(batch.len());
        let mut start = Vec::with_capacity(batch.len());
        let mut end = Vec::with_capacity(batch.len());
        let mut edd = Vec::with_capacity(batch.len());
        let mut team = Vec::with_capacity(batch.len());
        let mut office = Vec::with_capacity(batch.len());
        let mut duty = Vec::with_capacity(batch.len());
        let mut email = Vec::with_capacity(batch.len());
        for (row, p) in &batch {
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
        if inserted.len() < batch.len() {
            let kept: std::collections::HashSet<i64> = inserted.iter().map(|r| r.get(0)).collect();
            for (row, p) in &batch {
                if !kept.contains(row) {
                    self.reject(
                        *row,
                        &p.local_reference,
                        "plan.local_reference",
                        "plan.local_reference: appears more than once in this upload (the first row counts)",
                    );
                }
            }
        }
        Ok(())
    }

    /// Applies the staged snapshot in one transaction (rolled back for a dry
    /// run), unless it would end more than `mass_end_share` of the council's
    /// open plans without `allow_mass_end`. Removes the staged rows either way.
    pub async fn apply(
        mut self,
        client: &mut deadpool_postgres::Client,
        by: &str,
        allow_mass_end: bool,
        mass_end_share: f64,
        dry_run: bool,
    ) -> Result<Outcome, ApiError> {
        self.flush(crate::pg(client)).await?;
        let result = self.apply_staged(client, by, allow_mass_end, mass_end_share, dry_run).await;
        // Staged rows are scratch data: drop them whatever happened.
        let _ = client.execute("DELETE FROM registry.sync_rows WHERE sync_id = $1", &[&self.sync_id]).await;
        result?;
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
        lock_council(&*tx, &self.council, true).await?;
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

        let ended: i64 = tx
            .query_one(
                "WITH ended AS (
                     UPDATE registry.plans p SET end_date = GREATEST($3, p.start_date), version = p.version + 1, updated_at = now()
                     WHERE p.council_code = $2 AND p.deleted_at IS NULL AND (p.end_date IS NULL OR p.end_date > $3)
                       AND NOT EXISTS (SELECT 1 FROM registry.sync_rows s
                                       WHERE s.sync_id = $1 AND s.local_reference = p.local_reference)
                     RETURNING p.plan_id, p.version),
                 hist AS (
                     INSERT INTO registry.plan_changes (plan_id, version, action, changed_fields, changed_by)
                     SELECT plan_id, version, 'ended_by_sync', ARRAY['end_date'], $4 FROM ended RETURNING 1)
                 SELECT count(*) FROM hist",
                &[id, &council, today, &by],
            )
            .await?
            .get(0);

        let updated: i64 = tx
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
                     RETURNING p.plan_id, p.version),
                 hist AS (
                     INSERT INTO registry.plan_changes (plan_id, version, action, changed_fields, changed_by)
                     SELECT u.plan_id, u.version, 'updated_by_sync', d.fields, $3 FROM upd u JOIN diff d USING (plan_id)
                     RETURNING 1)
                 SELECT count(*) FROM hist",
                &[id, &council, &by],
            )
            .await?
            .get(0);

        let created: i64 = tx
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
                     RETURNING plan_id),
                 hist AS (
                     INSERT INTO registry.plan_changes (plan_id, version, action, changed_fields, changed_by)
                     SELECT plan_id, 1, 'created_by_sync', ARRAY[]::text[], $3 FROM ins RETURNING 1)
                 SELECT count(*) FROM hist",
                &[id, &council, &by],
            )
            .await?
            .get(0);

        self.outcome.ended = ended;
        self.outcome.updated = updated;
        self.outcome.created = created;
        self.outcome.unchanged = self.staged - updated - created;
        if dry_run {
            tx.rollback().await?;
        } else {
            tx.commit().await?;
        }
        Ok(())
    }
}

impl Sync {
    /// A guard that drops this upload's staged rows if the upload never
    /// completes — including when the handler itself is cancelled because
    /// the client went away, which runs no code after the current `.await`.
    pub fn staging_guard(&self, pool: deadpool_postgres::Pool) -> StagingGuard {
        StagingGuard { pool, sync_id: self.sync_id }
    }
}

/// See [`Sync::staging_guard`]. Dropping it removes the upload's staged rows
/// in the background (a no-op once the upload was applied).
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
                    let _ = client.execute("DELETE FROM registry.sync_rows WHERE sync_id = $1", &[&sync_id]).await;
                }
            });
        }
    }
}

/// Removes staged rows of uploads abandoned long ago (a client that went away
/// mid-stream on a replica that then crashed).
pub async fn sweep_abandoned(client: &impl GenericClient) -> Result<(), ApiError> {
    client.execute("DELETE FROM registry.sync_rows WHERE started_at < now() - interval '6 hours'", &[]).await?;
    Ok(())
}
