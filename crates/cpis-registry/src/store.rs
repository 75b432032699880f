//! The registry's SQL, all of it: plans and their history (here), the
//! staging and applying of `SyncPlans` uploads ([`uploads`]), the bulk load
//! for benchmarks ([`crate::seed`]), and `LookupFlags`. Every statement names
//! the `registry` schema; nothing here reads another service's tables. The
//! plan's columns come from one list ([`columns::FIELDS`]).

pub mod changes;
pub mod columns;
pub mod report;
pub mod uploads;

use crate::model::{Contact, PlanInput, StoredPlan};
use chrono::NaiveDate;
use columns::{plan_from_row, PLAN_COLUMNS};
use cpis_runtime::ApiError;
use std::sync::LazyLock;
use tokio_postgres::types::ToSql;
use tokio_postgres::GenericClient;
use uuid::Uuid;

/// Serialises writers of one council: bulk syncs take it exclusively, single
/// changes shared, so a sync never races an upsert of the same council.
pub async fn lock_council(tx: &impl GenericClient, council: &str, exclusive: bool) -> Result<(), ApiError> {
    let sql = if exclusive {
        "SELECT pg_advisory_xact_lock(hashtext('registry-council-' || $1))"
    } else {
        "SELECT pg_advisory_xact_lock_shared(hashtext('registry-council-' || $1))"
    };
    tx.execute(sql, &[&council]).await?;
    Ok(())
}

/// The live plan `reference` of `council`, locked for update when asked.
pub async fn find_plan(
    client: &impl GenericClient,
    council: &str,
    reference: &str,
    for_update: bool,
) -> Result<Option<StoredPlan>, ApiError> {
    let sql = format!(
        "SELECT {} FROM registry.plans
         WHERE council_code = $1 AND local_reference = $2 AND deleted_at IS NULL{}",
        *PLAN_COLUMNS,
        if for_update { " FOR UPDATE" } else { "" }
    );
    client.query_opt(&sql, &[&council, &reference]).await?.as_ref().map(plan_from_row).transpose()
}

/// `$1` plan id, `$2` council, `$3` reference, `$4..` the fields, then the author.
static INSERT_PLAN: LazyLock<String> = LazyLock::new(|| {
    let author = 4 + columns::FIELDS.len();
    format!(
        "WITH ins AS (
             INSERT INTO registry.plans (plan_id, council_code, local_reference, {fields}, version)
             VALUES ($1, $2, $3, {params}, 1)
             RETURNING *),
         hist AS (
             INSERT INTO registry.plan_changes (plan_id, version, action, changed_fields, changed_by)
             SELECT plan_id, 1, 'created', ARRAY[]::text[], ${author} FROM ins)
         SELECT {select} FROM ins",
        fields = columns::list(""),
        params = columns::params_from(4),
        select = *PLAN_COLUMNS,
    )
});

/// Inserts a new plan at version 1 with its `created` history row; `None`
/// when a concurrent insert of the same reference won the race.
pub async fn insert_plan(
    tx: &impl GenericClient,
    council: &str,
    p: &PlanInput,
    by: &str,
) -> Result<Option<StoredPlan>, ApiError> {
    let id = Uuid::new_v4();
    let values = columns::values(p);
    let mut params: Vec<&(dyn ToSql + Sync)> = vec![&id, &council, &p.local_reference];
    params.extend(values.iter().map(|v| v as &(dyn ToSql + Sync)));
    params.push(&by);
    match tx.query_one(INSERT_PLAN.as_str(), &params).await {
        Ok(row) => plan_from_row(&row).map(Some),
        Err(e) if cpis_runtime::db::is_unique_violation(&e) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// `$1` plan id, `$2..` the fields, then the author.
static UPDATE_PLAN: LazyLock<String> = LazyLock::new(|| {
    let author = 2 + columns::FIELDS.len();
    let new_row = columns::params_as(2);
    format!(
        "WITH new AS (SELECT {new_row}),
         diff AS (SELECT p.plan_id, {changed} AS fields FROM registry.plans p, new n WHERE p.plan_id = $1),
         upd AS (
             UPDATE registry.plans p SET {assign}, version = p.version + 1, updated_at = now()
             FROM new n, diff d WHERE p.plan_id = $1 AND cardinality(d.fields) > 0
             RETURNING p.*),
         hist AS (
             INSERT INTO registry.plan_changes (plan_id, version, action, changed_fields, changed_by)
             SELECT u.plan_id, u.version, 'updated', d.fields, ${author} FROM upd u JOIN diff d USING (plan_id))
         SELECT {select} FROM upd",
        changed = columns::changed_fields("p", "n"),
        assign = columns::assign_from("n"),
        select = *PLAN_COLUMNS,
    )
});

/// Overwrites a plan's fields, bumps its version and records which fields
/// changed; `None` (and nothing written) when no field differs.
pub async fn update_plan(
    tx: &impl GenericClient,
    plan_id: Uuid,
    p: &PlanInput,
    by: &str,
) -> Result<Option<StoredPlan>, ApiError> {
    let values = columns::values(p);
    let mut params: Vec<&(dyn ToSql + Sync)> = vec![&plan_id];
    params.extend(values.iter().map(|v| v as &(dyn ToSql + Sync)));
    params.push(&by);
    tx.query_opt(UPDATE_PLAN.as_str(), &params).await?.as_ref().map(plan_from_row).transpose()
}

/// Sets a plan's end date, bumps its version and records the change.
pub async fn set_end_date(
    tx: &impl GenericClient,
    plan_id: Uuid,
    end: NaiveDate,
    by: &str,
) -> Result<StoredPlan, ApiError> {
    let sql = format!(
        "WITH upd AS (
             UPDATE registry.plans SET end_date = $2, version = version + 1, updated_at = now()
             WHERE plan_id = $1 RETURNING *),
         hist AS (
             INSERT INTO registry.plan_changes (plan_id, version, action, changed_fields, changed_by)
             SELECT plan_id, version, 'ended', ARRAY['end_date'], $3 FROM upd)
         SELECT {} FROM upd",
        *PLAN_COLUMNS
    );
    plan_from_row(&tx.query_one(&sql, &[&plan_id, &end, &by]).await?)
}

/// Marks a plan entered in error (it is never shown again) and records it.
pub async fn mark_deleted(tx: &impl GenericClient, plan_id: Uuid, by: &str) -> Result<(), ApiError> {
    tx.execute(
        "WITH upd AS (
             UPDATE registry.plans SET deleted_at = now(), version = version + 1, updated_at = now()
             WHERE plan_id = $1 RETURNING plan_id, version)
         INSERT INTO registry.plan_changes (plan_id, version, action, changed_fields, changed_by)
         SELECT plan_id, version, 'deleted', ARRAY[]::text[], $2 FROM upd",
        &[&plan_id, &by],
    )
    .await?;
    Ok(())
}

/// One page of a council's plans after `after` (by local_reference).
pub async fn list_plans(
    client: &impl GenericClient,
    council: &str,
    after: &str,
    include_ended: bool,
    today: NaiveDate,
    limit: i64,
) -> Result<Vec<StoredPlan>, ApiError> {
    let sql = format!(
        "SELECT {} FROM registry.plans
         WHERE council_code = $1 AND deleted_at IS NULL AND local_reference > $2
           AND ($3 OR end_date IS NULL OR end_date >= $4)
         ORDER BY local_reference
         LIMIT $5",
        *PLAN_COLUMNS
    );
    let rows = client.query(&sql, &[&council, &after, &include_ended, &today, &limit]).await?;
    rows.iter().map(plan_from_row).collect()
}

/// The SQL condition "the plan in row `alias` is in scope on day `day`"
/// (`unborn_days`: days an unborn plan stays in scope after the expected
/// delivery), as [`LOOKUP_FLAGS_SQL`] decides it: started; not ended, or
/// ended less than 12 months before, and after the day it started (a plan
/// ending on its start date never came into force); a child under 18; an
/// unborn plan not long past the expected delivery.
pub fn in_scope(alias: &str, day: &str, unborn_days: &str) -> String {
    format!(
        "({a}.start_date <= {day}
          AND ({a}.end_date IS NULL OR ({day} < ({a}.end_date + interval '12 months')::date AND {a}.end_date > {a}.start_date))
          AND ({a}.date_of_birth IS NULL OR {day} < ({a}.date_of_birth + interval '18 years')::date)
          AND ({a}.expected_delivery_date IS NULL OR {day} <= {a}.expected_delivery_date + {unborn_days}::int))",
        a = alias
    )
}

/// A flag found by [`lookup_flags`], with its plan's case reference.
#[derive(Debug)]
pub struct FoundFlag {
    /// The owning council.
    pub council_code: String,
    /// The council's case reference.
    pub local_reference: String,
    /// The kind of plan.
    pub plan_type: i16,
    /// When it started.
    pub start_date: NaiveDate,
    /// When it ended or will end.
    pub end_date: Option<NaiveDate>,
    /// Expected delivery date (unborn plans).
    pub expected_delivery_date: Option<NaiveDate>,
    /// How to reach the council.
    pub contact: Contact,
}

/// The query of [`lookup_flags`] (`$1` NHS number, `$2` the day, `$3` days
/// an unborn plan stays in scope after the expected delivery date): plans in
/// scope are active, or ended less than 12 months before the day (a plan
/// that ended on its start date never came into force: it flags nobody), on
/// the number or on a number it superseded (until the council moves them);
/// a child protection or looked-after plan never flags an adult (scope ends
/// at the 18th birthday), an unborn plan ends `$3` days after the expected
/// delivery. The same rule as [`in_scope`].
pub const LOOKUP_FLAGS_SQL: &str = "SELECT council_code, local_reference, plan_type, start_date, end_date,
        expected_delivery_date, team_name, office_phone, emergency_duty_phone, email
     FROM registry.plans
     WHERE nhs_number = ANY(ARRAY(
             SELECT $1::text
             UNION ALL
             SELECT c.nhs_number FROM registry.nhs_number_changes c
             WHERE c.replacement_nhs_number = $1 AND c.kind = 'superseded'))
       AND deleted_at IS NULL AND start_date <= $2
       AND (end_date IS NULL OR ($2 < (end_date + interval '12 months')::date AND end_date > start_date))
       AND (date_of_birth IS NULL OR $2 < (date_of_birth + interval '18 years')::date)
       AND (expected_delivery_date IS NULL OR $2 <= expected_delivery_date + $3::int)
     ORDER BY council_code, start_date, local_reference";

/// The query of [`lookup_flags_batch`]: [`LOOKUP_FLAGS_SQL`] for several
/// look-ups at once (`$1` NHS numbers, `$2` their days, `$3` as there), each
/// with the numbers it superseded. The `= ANY(...)` probes the
/// `plans_nhs_number` index once per distinct number;
/// the join back to the look-ups (by ordinality) applies each one's day and
/// tells which look-up a row answers, so one number asked twice is answered twice.
pub const LOOKUP_FLAGS_BATCH_SQL: &str = "WITH q AS (
         SELECT * FROM unnest($1::text[], $2::date[]) WITH ORDINALITY AS q(nhs_number, day, idx)),
     asked AS (
         SELECT q.idx, q.day, q.nhs_number AS plan_number FROM q
         UNION ALL
         SELECT q.idx, q.day, c.nhs_number FROM q
         JOIN registry.nhs_number_changes c ON c.replacement_nhs_number = q.nhs_number AND c.kind = 'superseded')
     SELECT q.idx::int, p.council_code, p.local_reference, p.plan_type,
        p.start_date, p.end_date, p.expected_delivery_date, p.team_name, p.office_phone,
        p.emergency_duty_phone, p.email
     FROM registry.plans p
     JOIN asked q ON q.plan_number = p.nhs_number
     WHERE p.nhs_number = ANY(ARRAY(SELECT plan_number FROM asked))
       AND p.deleted_at IS NULL AND p.start_date <= q.day
       AND (p.end_date IS NULL OR (q.day < (p.end_date + interval '12 months')::date AND p.end_date > p.start_date))
       AND (p.date_of_birth IS NULL OR q.day < (p.date_of_birth + interval '18 years')::date)
       AND (p.expected_delivery_date IS NULL OR q.day <= p.expected_delivery_date + $3::int)
     ORDER BY q.idx, p.council_code, p.start_date, p.local_reference";

/// Every plan in scope for `nhs_number` on `day`, across all councils: one
/// probe of the `plans_nhs_number` index.
pub async fn lookup_flags(
    client: &deadpool_postgres::Client,
    nhs_number: &str,
    day: NaiveDate,
    unborn_scope_days: u32,
) -> Result<Vec<FoundFlag>, ApiError> {
    // Prepared once per connection: planning cost more than the index probe.
    let statement = client.prepare_cached(LOOKUP_FLAGS_SQL).await?;
    let days = i32::try_from(unborn_scope_days).unwrap_or(i32::MAX);
    let rows = client.query(&statement, &[&nhs_number, &day, &days]).await?;
    Ok(rows.iter().map(|r| found_flag(r, 0)).collect())
}

/// [`lookup_flags`] for each `(nhs_number, day)` of `lookups` in one query
/// ([`LOOKUP_FLAGS_BATCH_SQL`]); the answers are in the order of `lookups`.
pub async fn lookup_flags_batch(
    client: &deadpool_postgres::Client,
    lookups: &[(&str, NaiveDate)],
    unborn_scope_days: u32,
) -> Result<Vec<Vec<FoundFlag>>, ApiError> {
    let statement = client.prepare_cached(LOOKUP_FLAGS_BATCH_SQL).await?;
    let days = i32::try_from(unborn_scope_days).unwrap_or(i32::MAX);
    let numbers: Vec<&str> = lookups.iter().map(|(n, _)| *n).collect();
    let dates: Vec<NaiveDate> = lookups.iter().map(|(_, d)| *d).collect();
    let rows = client.query(&statement, &[&numbers, &dates, &days]).await?;
    let mut found: Vec<Vec<FoundFlag>> = lookups.iter().map(|_| Vec::new()).collect();
    for r in &rows {
        let index: i32 = r.get(0);
        let Some(slot) = usize::try_from(index - 1).ok().and_then(|i| found.get_mut(i)) else {
            return Err(ApiError::internal("batch look-up returned an index out of range"));
        };
        slot.push(found_flag(r, 1));
    }
    Ok(found)
}

/// A [`FoundFlag`] from the columns of [`LOOKUP_FLAGS_SQL`], starting at `at`.
fn found_flag(r: &tokio_postgres::Row, at: usize) -> FoundFlag {
    FoundFlag {
        council_code: r.get(at),
        local_reference: r.get(at + 1),
        plan_type: r.get(at + 2),
        start_date: r.get(at + 3),
        end_date: r.get(at + 4),
        expected_delivery_date: r.get(at + 5),
        contact: Contact {
            team_name: r.get(at + 6),
            office_phone: r.get(at + 7),
            emergency_duty_phone: r.get(at + 8),
            email: r.get(at + 9),
        },
    }
}
