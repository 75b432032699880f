//! The statements of NHS number changes: recording one (idempotent by the
//! feed's event id, with the plans on the number when first recorded), and
//! reading the changes of some numbers (what a council must act on).

use chrono::NaiveDate;
use cpis_domain::demographics::NhsNumberChange;
use cpis_runtime::ApiError;
use std::collections::{HashMap, HashSet};
use tokio_postgres::GenericClient;

/// One plan on a changed number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Affected {
    /// The council holding it.
    pub council_code: String,
    /// Its case reference.
    pub local_reference: String,
    /// Its `PlanType`.
    pub plan_type: i16,
}

/// A change as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredChange {
    /// The number that changed.
    pub nhs_number: String,
    /// `superseded` or `inactive`.
    pub kind: String,
    /// The replacement of a superseded number.
    pub replacement: Option<String>,
    /// When it took effect.
    pub effective_date: NaiveDate,
    /// The feed's event id.
    pub event_id: String,
    /// The plans in scope on the number when it was first recorded.
    pub affected: Vec<Affected>,
}

/// Records `change` unless its event id was recorded before, with the plans
/// in scope on the number on `day` (an unborn plan until `unborn_days` after
/// its expected delivery); answers the stored change and whether it was new.
pub async fn record(
    client: &impl GenericClient,
    change: &NhsNumberChange,
    day: NaiveDate,
    unborn_days: u32,
) -> Result<(StoredChange, bool), ApiError> {
    let days = i32::try_from(unborn_days).unwrap_or(i32::MAX);
    let inserted = client
        .query_opt(
            "WITH affected AS (
                 SELECT council_code, local_reference, plan_type FROM registry.plans
                 WHERE nhs_number = $2 AND deleted_at IS NULL AND start_date <= $6
                   AND (end_date IS NULL OR $6 < (end_date + interval '12 months')::date)
                   AND (date_of_birth IS NULL OR $6 < (date_of_birth + interval '18 years')::date)
                   AND (expected_delivery_date IS NULL OR $6 <= expected_delivery_date + $7::int))
             INSERT INTO registry.nhs_number_changes
                 (event_id, nhs_number, kind, replacement_nhs_number, effective_date,
                  affected_councils, affected_references, affected_plan_types)
             SELECT $1, $2, $3, $4, $5,
                    COALESCE(array_agg(council_code ORDER BY council_code, local_reference), '{}'),
                    COALESCE(array_agg(local_reference ORDER BY council_code, local_reference), '{}'),
                    COALESCE(array_agg(plan_type ORDER BY council_code, local_reference), '{}')
             FROM affected
             ON CONFLICT (event_id) DO NOTHING
             RETURNING event_id",
            &[
                &change.event_id,
                &change.nhs_number.as_str(),
                &change.kind.as_str(),
                &change.kind.replacement().map(|n| n.as_str()),
                &change.effective_date,
                &day,
                &days,
            ],
        )
        .await?;
    let stored =
        find(client, &change.event_id).await?.ok_or_else(|| ApiError::internal("a recorded change vanished"))?;
    Ok((stored, inserted.is_some()))
}

/// The change recorded under `event_id`, if any.
pub async fn find(client: &impl GenericClient, event_id: &str) -> Result<Option<StoredChange>, ApiError> {
    let row = client
        .query_opt(
            "SELECT nhs_number, kind, replacement_nhs_number, effective_date, event_id,
                    affected_councils, affected_references, affected_plan_types
             FROM registry.nhs_number_changes WHERE event_id = $1",
            &[&event_id],
        )
        .await?;
    Ok(row.map(|r| {
        let councils: Vec<String> = r.get(5);
        let references: Vec<String> = r.get(6);
        let types: Vec<i16> = r.get(7);
        StoredChange {
            nhs_number: r.get(0),
            kind: r.get(1),
            replacement: r.get(2),
            effective_date: r.get(3),
            event_id: r.get(4),
            affected: councils
                .into_iter()
                .zip(references)
                .zip(types)
                .map(|((council_code, local_reference), plan_type)| Affected {
                    council_code,
                    local_reference,
                    plan_type,
                })
                .collect(),
        }
    }))
}

/// The latest change of each of `numbers` that has one.
pub async fn of_numbers(
    client: &impl GenericClient,
    numbers: &[&str],
) -> Result<HashMap<String, StoredChange>, ApiError> {
    if numbers.is_empty() {
        return Ok(HashMap::new());
    }
    let rows = client
        .query(
            "SELECT DISTINCT ON (nhs_number) nhs_number, kind, replacement_nhs_number, effective_date, event_id
             FROM registry.nhs_number_changes WHERE nhs_number = ANY($1)
             ORDER BY nhs_number, effective_date DESC, recorded_at DESC",
            &[&numbers],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| {
            let change = StoredChange {
                nhs_number: r.get(0),
                kind: r.get(1),
                replacement: r.get(2),
                effective_date: r.get(3),
                event_id: r.get(4),
                affected: Vec::new(),
            };
            (change.nhs_number.clone(), change)
        })
        .collect())
}

/// Of `numbers`: the superseded ones, with the replacement their latest
/// superseding change gives, and the ones ever made inactive; the same
/// judgement [`refuse_superseded_rows`] and [`inactive_rows`] make of staged rows.
pub async fn number_flags(
    client: &impl GenericClient,
    numbers: &[&str],
) -> Result<(HashMap<String, String>, HashSet<String>), ApiError> {
    let (mut superseded, mut inactive) = (HashMap::new(), HashSet::new());
    if numbers.is_empty() {
        return Ok((superseded, inactive));
    }
    let rows = client
        .query(
            "SELECT DISTINCT ON (nhs_number, kind) nhs_number, kind, replacement_nhs_number
             FROM registry.nhs_number_changes
             WHERE nhs_number = ANY($1) AND kind IN ('superseded', 'inactive')
             ORDER BY nhs_number, kind, effective_date DESC, recorded_at DESC",
            &[&numbers],
        )
        .await?;
    for r in &rows {
        let (number, kind): (String, String) = (r.get(0), r.get(1));
        if kind == "superseded" {
            superseded.insert(number, r.get::<_, Option<String>>(2).unwrap_or_default());
        } else {
            inactive.insert(number);
        }
    }
    Ok((superseded, inactive))
}

/// Refuses an upload's staged rows whose NHS number was superseded (they
/// then protect their reference like any refused row); answers
/// `(row number, reference, replacement)` of each.
pub async fn refuse_superseded_rows(
    tx: &impl GenericClient,
    sync_id: uuid::Uuid,
) -> Result<Vec<(i64, String, String)>, ApiError> {
    let rows = tx
        .query(
            "UPDATE registry.sync_rows s SET rejected = true
             FROM (SELECT DISTINCT ON (nhs_number) nhs_number, replacement_nhs_number
                   FROM registry.nhs_number_changes WHERE kind = 'superseded'
                   ORDER BY nhs_number, effective_date DESC, recorded_at DESC) c
             WHERE s.sync_id = $1 AND NOT s.rejected AND s.nhs_number = c.nhs_number
             RETURNING s.row_no, s.local_reference, c.replacement_nhs_number",
            &[&sync_id],
        )
        .await?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1), r.get(2))).collect())
}

/// An upload's staged rows whose NHS number was made inactive:
/// `(row number, reference)`, in row order.
pub async fn inactive_rows(tx: &impl GenericClient, sync_id: uuid::Uuid) -> Result<Vec<(i64, String)>, ApiError> {
    let rows = tx
        .query(
            "SELECT s.row_no, s.local_reference FROM registry.sync_rows s
             WHERE s.sync_id = $1 AND NOT s.rejected
               AND EXISTS (SELECT 1 FROM registry.nhs_number_changes c
                           WHERE c.nhs_number = s.nhs_number AND c.kind = 'inactive')
             ORDER BY s.row_no",
            &[&sync_id],
        )
        .await?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}
