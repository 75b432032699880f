//! The SQL of `SyncPlans` uploads: the council's one upload slot
//! (`registry.sync_uploads`), staged rows (`registry.sync_rows`), and the
//! statements that apply a staged snapshot to `registry.plans`. The rules
//! (what is refused, when a snapshot ends too much) live in [`crate::sync`].

use super::columns;
use crate::model::PlanInput;
use chrono::NaiveDate;
use cpis_runtime::ApiError;
use std::sync::LazyLock;
use std::time::Duration;
use tokio_postgres::types::ToSql;
use tokio_postgres::GenericClient;
use uuid::Uuid;

/// Registers upload `sync_id` as `council`'s only one, recording the last
/// plan change id handed out so far (run under the council's exclusive lock,
/// so no change of the council is in flight); false when the council
/// already has an upload.
pub async fn claim(client: &impl GenericClient, sync_id: Uuid, council: &str) -> Result<bool, ApiError> {
    let claimed = client
        .execute(
            "INSERT INTO registry.sync_uploads (sync_id, council_code, changes_seen)
             VALUES ($1, $2, coalesce(pg_sequence_last_value('registry.plan_changes_change_id_seq'), 0))
             ON CONFLICT (council_code) DO NOTHING",
            &[&sync_id, &council],
        )
        .await?;
    Ok(claimed == 1)
}

/// One plan another call changed after the upload started.
#[derive(Debug)]
pub struct Changed {
    /// The plan's reference.
    pub local_reference: String,
    /// What its history recorded since, in order (`created`, `updated`, `ended`, `deleted`).
    pub actions: Vec<String>,
    /// The upload has a valid row for it (which is therefore not applied).
    pub staged: bool,
}

/// The council's plans (by reference) that UpsertPlan, EndPlan or
/// DeletePlan changed after upload `sync_id` was claimed, in reference order.
pub async fn changed_since_claim(
    tx: &impl GenericClient,
    sync_id: Uuid,
    council: &str,
) -> Result<Vec<Changed>, ApiError> {
    let seen: Option<i64> = tx
        .query_opt("SELECT changes_seen FROM registry.sync_uploads WHERE sync_id = $1", &[&sync_id])
        .await?
        .and_then(|r| r.get(0));
    let Some(seen) = seen else { return Ok(Vec::new()) };
    // Driven from the council's plans (live ones, then deleted ones: each
    // set on an index of its own), each probing its own history on
    // `plan_changes_plan` (`OFFSET 0` keeps the probe a subquery per plan).
    // Joined the other way round the planner scanned the whole history and
    // the whole register per upload (80-330 ms each, measured in the national
    // day's upload hour), and the history only grows.
    let rows = tx
        .query(
            "SELECT r.local_reference, r.actions,
                    EXISTS (SELECT 1 FROM registry.sync_rows s
                            WHERE s.sync_id = $1 AND s.local_reference = r.local_reference AND NOT s.rejected)
             FROM (SELECT p.local_reference, array_agg(c.action ORDER BY c.change_id) AS actions
                   FROM (SELECT plan_id, local_reference FROM registry.plans
                         WHERE council_code = $2 AND deleted_at IS NULL
                         UNION ALL
                         SELECT plan_id, local_reference FROM registry.plans
                         WHERE council_code = $2 AND deleted_at IS NOT NULL) p
                   CROSS JOIN LATERAL (SELECT c.change_id, c.action FROM registry.plan_changes c
                                       WHERE c.plan_id = p.plan_id AND c.change_id > $3
                                         AND c.action NOT LIKE '%by_sync'
                                       OFFSET 0) c
                   GROUP BY p.local_reference) r
             ORDER BY r.local_reference",
            &[&sync_id, &council, &seen],
        )
        .await?;
    Ok(rows.iter().map(|r| Changed { local_reference: r.get(0), actions: r.get(1), staged: r.get(2) }).collect())
}

/// When `council`'s upload in progress started (UTC, RFC 3339), if it has one.
pub async fn started_at(client: &impl GenericClient, council: &str) -> Result<Option<String>, ApiError> {
    Ok(client
        .query_opt(
            "SELECT to_char(started_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"')
             FROM registry.sync_uploads WHERE council_code = $1",
            &[&council],
        )
        .await?
        .map(|r| r.get(0)))
}

/// Marks the upload alive; false when it was swept meanwhile. In a
/// transaction, holds the upload's row until it ends (a discard waits).
pub async fn mark_alive(client: &impl GenericClient, sync_id: Uuid) -> Result<bool, ApiError> {
    let alive =
        client.execute("UPDATE registry.sync_uploads SET last_seen_at = now() WHERE sync_id = $1", &[&sync_id]).await?;
    Ok(alive == 1)
}

/// Stages refused rows `(row number, reference)`: they only protect their
/// reference from being ended. A reference already staged keeps its first row.
pub async fn stage_refused(client: &impl GenericClient, sync_id: Uuid, rows: &[(i64, &str)]) -> Result<(), ApiError> {
    let refs: Vec<&str> = rows.iter().map(|r| r.1).collect();
    let numbers: Vec<i64> = rows.iter().map(|r| r.0).collect();
    client
        .execute(
            "INSERT INTO registry.sync_rows (sync_id, local_reference, row_no, rejected)
             SELECT $1, r, n, true FROM unnest($2::text[], $3::int8[]) AS t(r, n)
             ON CONFLICT (sync_id, local_reference) DO NOTHING",
            &[&sync_id, &refs, &numbers],
        )
        .await?;
    Ok(())
}

/// `$1` upload, `$2` references, `$3` row numbers, `$4..` one text array per field.
static STAGE_VALID: LazyLock<String> = LazyLock::new(|| {
    let mut n = 3;
    let arrays = columns::each(|_| {
        n += 1;
        format!("${n}::text[]")
    });
    let casts = columns::each(|f| format!("t.{}::{}", f.column, f.sql_type));
    format!(
        "INSERT INTO registry.sync_rows (sync_id, local_reference, row_no, rejected, {fields})
         SELECT $1, t.r, t.n, false, {casts}
         FROM unnest($2::text[], $3::int8[], {arrays}) AS t(r, n, {fields})
         ON CONFLICT (sync_id, local_reference) DO NOTHING
         RETURNING row_no",
        fields = columns::list(""),
    )
});

/// Stages valid rows `(row number, plan)`; returns the row numbers staged
/// (a reference already staged by an earlier row is not).
pub async fn stage_valid(
    client: &impl GenericClient,
    sync_id: Uuid,
    rows: &[(i64, &PlanInput)],
) -> Result<Vec<i64>, ApiError> {
    let refs: Vec<&str> = rows.iter().map(|(_, p)| p.local_reference.as_str()).collect();
    let numbers: Vec<i64> = rows.iter().map(|(n, _)| *n).collect();
    let mut fields: Vec<Vec<Option<String>>> = vec![Vec::with_capacity(rows.len()); columns::FIELDS.len()];
    for (_, p) in rows {
        for (column, value) in fields.iter_mut().zip(columns::values(p)) {
            column.push(value);
        }
    }
    let mut params: Vec<&(dyn ToSql + Sync)> = vec![&sync_id, &refs, &numbers];
    params.extend(fields.iter().map(|f| f as &(dyn ToSql + Sync)));
    let staged = client.query(STAGE_VALID.as_str(), &params).await?;
    Ok(staged.iter().map(|r| r.get(0)).collect())
}

/// Locks the upload's row for the applying transaction (a sweep skips locked
/// uploads); false when it was swept already.
pub async fn lock(tx: &impl GenericClient, sync_id: Uuid) -> Result<bool, ApiError> {
    Ok(tx.query_opt("SELECT 1 FROM registry.sync_uploads WHERE sync_id = $1 FOR UPDATE", &[&sync_id]).await?.is_some())
}

/// `$1` upload, `$2` council, `$3` the day, `$4` references left alone,
/// `$5` days an unborn plan stays in scope after the expected delivery,
/// `$6` references absent from the snapshot.
static OPEN_AND_ENDING: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT count(*) FILTER (WHERE p.end_date IS NULL OR p.end_date > $3),
                count(*) FILTER (WHERE
                    ((p.end_date IS NULL OR p.end_date > $3)
                     AND ((s.local_reference IS NULL AND p.local_reference = ANY($6))
                          OR (NOT s.rejected AND s.end_date <= $3)))
                    OR (NOT s.rejected AND {p_in_scope} AND NOT {s_in_scope}))
         FROM registry.plans p
         LEFT JOIN registry.sync_rows s ON s.sync_id = $1 AND s.local_reference = p.local_reference
         WHERE p.council_code = $2 AND p.deleted_at IS NULL AND p.local_reference <> ALL($4)
           AND (p.end_date IS NULL OR $3 < (p.end_date + interval '12 months')::date)",
        p_in_scope = super::in_scope("p", "$3", "$5"),
        s_in_scope = super::in_scope("s", "$3", "$5"),
    )
});

/// The council's open plans, and how many plans the snapshot would end or
/// take out of scope: open plans `absent` from it (no row, staged or found
/// unchanged, named them), open plans its staged rows end (an `end_date` on
/// or before the day), and plans in scope its staged rows take out of scope.
/// Plans in `left_alone` are not counted. (A row found unchanged ends
/// nothing and changes no scope: it is the plan.)
pub async fn open_and_ending(
    tx: &impl GenericClient,
    sync_id: Uuid,
    council: &str,
    today: NaiveDate,
    (left_alone, absent): (&[&str], &[&str]),
    unborn_scope_days: i32,
) -> Result<(i64, i64), ApiError> {
    let params: [&(dyn ToSql + Sync); 6] = [&sync_id, &council, &today, &left_alone, &unborn_scope_days, &absent];
    let counts = tx.query_one(OPEN_AND_ENDING.as_str(), &params).await?;
    Ok((counts.get(0), counts.get(1)))
}

/// What one applying statement did: how many plans, and the first `listed` references.
pub type Applied = (i64, Vec<String>);

/// Ends the council's open plans `absent` from the snapshot (and not
/// staged), with history: on `today`, or, for a plan not started yet, on its
/// start date (a plan ending on the day it starts never comes into force and
/// flags nobody). Plans in `left_alone` are not touched.
pub async fn end_absent(
    tx: &impl GenericClient,
    sync_id: Uuid,
    council: &str,
    today: NaiveDate,
    (by, listed, left_alone): (&str, i32, &[&str]),
    absent: &[&str],
) -> Result<Applied, ApiError> {
    let row = tx
        .query_one(
            "WITH ended AS (
                 UPDATE registry.plans p SET end_date = GREATEST($3, p.start_date), version = p.version + 1, updated_at = now()
                 WHERE p.council_code = $2 AND p.deleted_at IS NULL AND (p.end_date IS NULL OR p.end_date > $3)
                   AND p.local_reference <> ALL($6) AND p.local_reference = ANY($7)
                   AND NOT EXISTS (SELECT 1 FROM registry.sync_rows s
                                   WHERE s.sync_id = $1 AND s.local_reference = p.local_reference)
                 RETURNING p.plan_id, p.version, p.local_reference),
             hist AS (
                 INSERT INTO registry.plan_changes (plan_id, version, action, changed_fields, changed_by)
                 SELECT plan_id, version, 'ended_by_sync', ARRAY['end_date'], $4 FROM ended RETURNING 1)
             SELECT (SELECT count(*) FROM hist),
                    coalesce((SELECT array_agg(local_reference ORDER BY local_reference) FROM ended)[1:$5], '{}')",
            &[&sync_id, &council, &today, &by, &listed, &left_alone, &absent],
        )
        .await?;
    Ok((row.get(0), row.get(1)))
}

/// `$1` upload, `$2` council, `$3` author, `$4` references listed, `$5` references left alone.
static UPDATE_CHANGED: LazyLock<String> = LazyLock::new(|| {
    format!(
        "WITH diff AS (
             SELECT p.plan_id, {changed} AS fields
             FROM registry.plans p
             JOIN registry.sync_rows s ON s.sync_id = $1 AND s.local_reference = p.local_reference AND NOT s.rejected
             WHERE p.council_code = $2 AND p.deleted_at IS NULL AND p.local_reference <> ALL($5)),
         upd AS (
             UPDATE registry.plans p SET {assign}, version = p.version + 1, updated_at = now()
             FROM diff d, registry.sync_rows s
             WHERE d.plan_id = p.plan_id AND cardinality(d.fields) > 0
               AND s.sync_id = $1 AND s.local_reference = p.local_reference
             RETURNING p.plan_id, p.version, p.local_reference),
         hist AS (
             INSERT INTO registry.plan_changes (plan_id, version, action, changed_fields, changed_by)
             SELECT u.plan_id, u.version, 'updated_by_sync', d.fields, $3 FROM upd u JOIN diff d USING (plan_id)
             RETURNING 1)
         SELECT (SELECT count(*) FROM hist),
                coalesce((SELECT array_agg(local_reference ORDER BY local_reference) FROM upd)[1:$4], '{{}}')",
        changed = columns::changed_fields("p", "s"),
        assign = columns::assign_from("s"),
    )
});

/// Updates the council's plans whose staged row differs, recording which
/// fields changed; plans in `left_alone` are not touched.
pub async fn update_changed(
    tx: &impl GenericClient,
    sync_id: Uuid,
    council: &str,
    (by, listed, left_alone): (&str, i32, &[&str]),
) -> Result<Applied, ApiError> {
    let row = tx.query_one(UPDATE_CHANGED.as_str(), &[&sync_id, &council, &by, &listed, &left_alone]).await?;
    Ok((row.get(0), row.get(1)))
}

/// `$1` upload, `$2` council, `$3` author, `$4` references listed, `$5` references left alone.
static CREATE_NEW: LazyLock<String> = LazyLock::new(|| {
    format!(
        "WITH ins AS (
             INSERT INTO registry.plans (plan_id, council_code, local_reference, {fields}, version)
             SELECT registry.new_plan_id(), $2, s.local_reference, {staged}, 1
             FROM registry.sync_rows s
             WHERE s.sync_id = $1 AND NOT s.rejected AND s.local_reference <> ALL($5)
               AND NOT EXISTS (SELECT 1 FROM registry.plans p WHERE p.council_code = $2
                               AND p.local_reference = s.local_reference AND p.deleted_at IS NULL)
             RETURNING plan_id, local_reference),
         hist AS (
             INSERT INTO registry.plan_changes (plan_id, version, action, changed_fields, changed_by)
             SELECT plan_id, 1, 'created_by_sync', ARRAY[]::text[], $3 FROM ins RETURNING 1)
         SELECT (SELECT count(*) FROM hist),
                coalesce((SELECT array_agg(local_reference ORDER BY local_reference) FROM ins)[1:$4], '{{}}')",
        fields = columns::list(""),
        staged = columns::list("s"),
    )
});

/// Creates plans for staged rows whose reference the council does not
/// have; references in `left_alone` are not created.
pub async fn create_new(
    tx: &impl GenericClient,
    sync_id: Uuid,
    council: &str,
    (by, listed, left_alone): (&str, i32, &[&str]),
) -> Result<Applied, ApiError> {
    let row = tx.query_one(CREATE_NEW.as_str(), &[&sync_id, &council, &by, &listed, &left_alone]).await?;
    Ok((row.get(0), row.get(1)))
}

/// Removes one upload and its staged rows: the upload first (which waits for
/// a batch being staged, see [`mark_alive`]), so no batch can follow.
pub async fn discard(client: &impl GenericClient, sync_id: Uuid) -> Result<(), ApiError> {
    client.execute("DELETE FROM registry.sync_uploads WHERE sync_id = $1", &[&sync_id]).await?;
    client.execute("DELETE FROM registry.sync_rows WHERE sync_id = $1", &[&sync_id]).await?;
    Ok(())
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
