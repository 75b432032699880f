//! The registry's SQL. Every statement names the `registry` schema; nothing
//! here reads another service's tables.

use crate::model::{Contact, PlanInput, StoredPlan};
use chrono::{DateTime, NaiveDate, Utc};
use cpis_domain::validate::NhsNumber;
use cpis_proto::common::v1 as common;
use cpis_runtime::ApiError;
use tokio_postgres::{GenericClient, Row};
use uuid::Uuid;

/// The columns read by [`plan_from_row`], in order.
pub const PLAN_COLUMNS: &str = "plan_id, council_code, local_reference, nhs_number, date_of_birth, plan_type, \
     start_date, end_date, expected_delivery_date, team_name, office_phone, emergency_duty_phone, email, \
     version, updated_at";

/// Reads a plan selected with [`PLAN_COLUMNS`].
pub fn plan_from_row(row: &Row) -> Result<StoredPlan, ApiError> {
    let nhs: String = row.get(3);
    let plan_type: i16 = row.get(5);
    Ok(StoredPlan {
        plan_id: row.get(0),
        council_code: row.get(1),
        input: PlanInput {
            local_reference: row.get(2),
            nhs_number: NhsNumber::parse(&nhs).ok_or_else(|| ApiError::internal("stored NHS number is invalid"))?,
            date_of_birth: row.get(4),
            plan_type: common::PlanType::try_from(i32::from(plan_type))
                .map_err(|_| ApiError::internal("stored plan type is invalid"))?,
            start_date: row.get(6),
            end_date: row.get(7),
            expected_delivery_date: row.get(8),
            contact: Contact {
                team_name: row.get(9),
                office_phone: row.get(10),
                emergency_duty_phone: row.get(11),
                email: row.get(12),
            },
        },
        version: row.get(13),
        updated_at: row.get::<_, DateTime<Utc>>(14),
    })
}

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
        "SELECT {PLAN_COLUMNS} FROM registry.plans
         WHERE council_code = $1 AND local_reference = $2 AND deleted_at IS NULL{}",
        if for_update { " FOR UPDATE" } else { "" }
    );
    client.query_opt(&sql, &[&council, &reference]).await?.as_ref().map(plan_from_row).transpose()
}

/// Inserts a new plan at version 1; `None` when a concurrent insert of the
/// same reference won the race.
pub async fn insert_plan(
    tx: &impl GenericClient,
    council: &str,
    p: &PlanInput,
) -> Result<Option<StoredPlan>, ApiError> {
    let sql = format!(
        "INSERT INTO registry.plans (plan_id, council_code, local_reference, nhs_number, date_of_birth, plan_type,
             start_date, end_date, expected_delivery_date, team_name, office_phone, emergency_duty_phone, email, version)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, 1)
         RETURNING {PLAN_COLUMNS}"
    );
    let row = tx
        .query_one(
            &sql,
            &[
                &Uuid::new_v4(),
                &council,
                &p.local_reference,
                &p.nhs_number.as_str(),
                &p.date_of_birth,
                &(p.plan_type as i16),
                &p.start_date,
                &p.end_date,
                &p.expected_delivery_date,
                &p.contact.team_name,
                &p.contact.office_phone,
                &p.contact.emergency_duty_phone,
                &p.contact.email,
            ],
        )
        .await;
    match row {
        Ok(row) => plan_from_row(&row).map(Some),
        Err(e) if cpis_runtime::db::is_unique_violation(&e) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Overwrites a plan's fields and bumps its version.
pub async fn update_plan(tx: &impl GenericClient, plan_id: Uuid, p: &PlanInput) -> Result<StoredPlan, ApiError> {
    let sql = format!(
        "UPDATE registry.plans SET nhs_number = $2, date_of_birth = $3, plan_type = $4, start_date = $5,
             end_date = $6, expected_delivery_date = $7, team_name = $8, office_phone = $9,
             emergency_duty_phone = $10, email = $11, version = version + 1, updated_at = now()
         WHERE plan_id = $1
         RETURNING {PLAN_COLUMNS}"
    );
    let row = tx
        .query_one(
            &sql,
            &[
                &plan_id,
                &p.nhs_number.as_str(),
                &p.date_of_birth,
                &(p.plan_type as i16),
                &p.start_date,
                &p.end_date,
                &p.expected_delivery_date,
                &p.contact.team_name,
                &p.contact.office_phone,
                &p.contact.emergency_duty_phone,
                &p.contact.email,
            ],
        )
        .await?;
    plan_from_row(&row)
}

/// Sets a plan's end date and bumps its version.
pub async fn set_end_date(tx: &impl GenericClient, plan_id: Uuid, end: NaiveDate) -> Result<StoredPlan, ApiError> {
    let sql = format!(
        "UPDATE registry.plans SET end_date = $2, version = version + 1, updated_at = now()
         WHERE plan_id = $1 RETURNING {PLAN_COLUMNS}"
    );
    plan_from_row(&tx.query_one(&sql, &[&plan_id, &end]).await?)
}

/// Marks a plan entered in error; it is never shown again.
pub async fn mark_deleted(tx: &impl GenericClient, plan_id: Uuid) -> Result<i64, ApiError> {
    let row = tx
        .query_one(
            "UPDATE registry.plans SET deleted_at = now(), version = version + 1, updated_at = now()
             WHERE plan_id = $1 RETURNING version",
            &[&plan_id],
        )
        .await?;
    Ok(row.get(0))
}

/// Appends to a plan's change history.
pub async fn record_change(
    tx: &impl GenericClient,
    plan_id: Uuid,
    version: i64,
    action: &str,
    fields: &[&str],
    by: &str,
) -> Result<(), ApiError> {
    let fields: Vec<String> = fields.iter().map(|f| f.to_string()).collect();
    tx.execute(
        "INSERT INTO registry.plan_changes (plan_id, version, action, changed_fields, changed_by)
         VALUES ($1, $2, $3, $4, $5)",
        &[&plan_id, &version, &action, &fields, &by],
    )
    .await?;
    Ok(())
}

/// The names of the fields that differ between two versions of a plan.
pub fn changed_fields(old: &PlanInput, new: &PlanInput) -> Vec<&'static str> {
    let mut f = Vec::new();
    if old.nhs_number != new.nhs_number {
        f.push("nhs_number");
    }
    if old.date_of_birth != new.date_of_birth {
        f.push("date_of_birth");
    }
    if old.plan_type != new.plan_type {
        f.push("plan_type");
    }
    if old.start_date != new.start_date {
        f.push("start_date");
    }
    if old.end_date != new.end_date {
        f.push("end_date");
    }
    if old.expected_delivery_date != new.expected_delivery_date {
        f.push("expected_delivery_date");
    }
    if old.contact.team_name != new.contact.team_name {
        f.push("contact.team_name");
    }
    if old.contact.office_phone != new.contact.office_phone {
        f.push("contact.office_phone");
    }
    if old.contact.emergency_duty_phone != new.contact.emergency_duty_phone {
        f.push("contact.emergency_duty_phone");
    }
    if old.contact.email != new.contact.email {
        f.push("contact.email");
    }
    f
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
        "SELECT {PLAN_COLUMNS} FROM registry.plans
         WHERE council_code = $1 AND deleted_at IS NULL AND local_reference > $2
           AND ($3 OR end_date IS NULL OR end_date >= $4)
         ORDER BY local_reference
         LIMIT $5"
    );
    let rows = client.query(&sql, &[&council, &after, &include_ended, &today, &limit]).await?;
    rows.iter().map(plan_from_row).collect()
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
/// scope are active, or ended less than 12 months before the day; a child
/// protection or looked-after plan never flags an adult (scope ends at the
/// 18th birthday), an unborn plan ends `$3` days after the expected delivery.
pub const LOOKUP_FLAGS_SQL: &str = "SELECT council_code, local_reference, plan_type, start_date, end_date,
        expected_delivery_date, team_name, office_phone, emergency_duty_phone, email
     FROM registry.plans
     WHERE nhs_number = $1 AND deleted_at IS NULL AND start_date <= $2
       AND (end_date IS NULL OR $2 < (end_date + interval '12 months')::date)
       AND (date_of_birth IS NULL OR $2 < (date_of_birth + interval '18 years')::date)
       AND (expected_delivery_date IS NULL OR $2 <= expected_delivery_date + $3::int)
     ORDER BY council_code, start_date, local_reference";

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
    Ok(rows
        .iter()
        .map(|r| FoundFlag {
            council_code: r.get(0),
            local_reference: r.get(1),
            plan_type: r.get(2),
            start_date: r.get(3),
            end_date: r.get(4),
            expected_delivery_date: r.get(5),
            contact: Contact {
                team_name: r.get(6),
                office_phone: r.get(7),
                emergency_duty_phone: r.get(8),
                email: r.get(9),
            },
        })
        .collect())
}
