//! The plan's columns, listed once. Every statement that reads, writes,
//! stages, copies or compares a plan's fields is built from [`FIELDS`], and
//! "which fields changed" is computed by one SQL expression ([`changed_fields`]).
//!
//! Values travel as text (dates `YYYY-MM-DD`, the plan type as its number)
//! and are cast to the column's type in SQL, so one function ([`values`])
//! turns a plan into parameters for single rows, staged arrays and COPY alike.

use crate::model::{Contact, PlanInput, StoredPlan};
use chrono::{DateTime, Utc};
use cpis_domain::validate::NhsNumber;
use cpis_proto::common::v1 as common;
use cpis_runtime::ApiError;
use std::sync::LazyLock;
use tokio_postgres::Row;

/// One field of a plan: its column (in `registry.plans` and
/// `registry.sync_rows` alike), the column's SQL type, and the field path a
/// change records in `registry.plan_changes.changed_fields`.
#[derive(Debug, Clone, Copy)]
pub struct Field {
    /// Column name.
    pub column: &'static str,
    /// SQL type of the column.
    pub sql_type: &'static str,
    /// Field path in the contract (`contact.email`).
    pub path: &'static str,
}

const fn field(column: &'static str, sql_type: &'static str, path: &'static str) -> Field {
    Field { column, sql_type, path }
}

/// The fields a council sets on a plan (besides its `local_reference`), in
/// the order of [`values`].
pub const FIELDS: [Field; 10] = [
    field("nhs_number", "text", "nhs_number"),
    field("date_of_birth", "date", "date_of_birth"),
    field("plan_type", "int2", "plan_type"),
    field("start_date", "date", "start_date"),
    field("end_date", "date", "end_date"),
    field("expected_delivery_date", "date", "expected_delivery_date"),
    field("team_name", "text", "contact.team_name"),
    field("office_phone", "text", "contact.office_phone"),
    field("emergency_duty_phone", "text", "contact.emergency_duty_phone"),
    field("email", "text", "contact.email"),
];

/// A plan's [`FIELDS`] as text, in order (`None` is SQL NULL).
pub fn values(p: &PlanInput) -> [Option<String>; 10] {
    let date = |d: Option<chrono::NaiveDate>| d.map(|d| d.to_string());
    [
        Some(p.nhs_number.as_str().to_string()),
        date(p.date_of_birth),
        Some((p.plan_type as i16).to_string()),
        Some(p.start_date.to_string()),
        date(p.end_date),
        date(p.expected_delivery_date),
        Some(p.contact.team_name.clone()),
        Some(p.contact.office_phone.clone()),
        Some(p.contact.emergency_duty_phone.clone()),
        Some(p.contact.email.clone()),
    ]
}

/// Reads a plan selected with [`select`] (by column name).
pub fn plan_from_row(row: &Row) -> Result<StoredPlan, ApiError> {
    let nhs: String = row.try_get("nhs_number")?;
    let plan_type: i16 = row.try_get("plan_type")?;
    Ok(StoredPlan {
        plan_id: row.try_get("plan_id")?,
        council_code: row.try_get("council_code")?,
        input: PlanInput {
            local_reference: row.try_get("local_reference")?,
            nhs_number: NhsNumber::parse(&nhs).ok_or_else(|| ApiError::internal("stored NHS number is invalid"))?,
            date_of_birth: row.try_get("date_of_birth")?,
            plan_type: common::PlanType::try_from(i32::from(plan_type))
                .map_err(|_| ApiError::internal("stored plan type is invalid"))?,
            start_date: row.try_get("start_date")?,
            end_date: row.try_get("end_date")?,
            expected_delivery_date: row.try_get("expected_delivery_date")?,
            contact: Contact {
                team_name: row.try_get("team_name")?,
                office_phone: row.try_get("office_phone")?,
                emergency_duty_phone: row.try_get("emergency_duty_phone")?,
                email: row.try_get("email")?,
            },
        },
        version: row.try_get("version")?,
        updated_at: row.try_get::<_, DateTime<Utc>>("updated_at")?,
    })
}

/// `f(field)` for every field, joined with `", "`.
pub fn each(f: impl FnMut(&Field) -> String) -> String {
    FIELDS.iter().map(f).collect::<Vec<_>>().join(", ")
}

/// The field columns, prefixed with `alias.` when one is given.
pub fn list(alias: &str) -> String {
    each(|f| if alias.is_empty() { f.column.to_string() } else { format!("{alias}.{}", f.column) })
}

/// The field values as parameters `$first..`, cast to their types.
pub fn params_from(first: usize) -> String {
    let mut n = first;
    each(|f| {
        let p = format!("${}::text::{}", n, f.sql_type);
        n += 1;
        p
    })
}

/// The field values as parameters `$first..` named as their columns (a row).
pub fn params_as(first: usize) -> String {
    let mut n = first;
    each(|f| {
        let p = format!("${}::text::{} AS {}", n, f.sql_type, f.column);
        n += 1;
        p
    })
}

/// `column = from.column` for every field (an UPDATE's SET list).
pub fn assign_from(from: &str) -> String {
    each(|f| format!("{0} = {from}.{0}", f.column))
}

/// The names of the fields whose values differ between rows `old` and `new`
/// (a `text[]`, empty when nothing changed).
pub fn changed_fields(old: &str, new: &str) -> String {
    let cases =
        each(|f| format!("CASE WHEN {old}.{c} IS DISTINCT FROM {new}.{c} THEN '{p}' END", c = f.column, p = f.path));
    format!("array_remove(ARRAY[{cases}]::text[], NULL)")
}

/// The columns read by [`plan_from_row`], prefixed with `alias.` when one is given.
pub fn select(alias: &str) -> String {
    let a = if alias.is_empty() { String::new() } else { format!("{alias}.") };
    format!("{a}plan_id, {a}council_code, {a}local_reference, {}, {a}version, {a}updated_at", list(alias))
}

/// [`select`] without an alias, built once.
pub static PLAN_COLUMNS: LazyLock<String> = LazyLock::new(|| select(""));

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_name_every_field_once_in_order() {
        assert!(PLAN_COLUMNS.starts_with("plan_id, council_code, local_reference, nhs_number, date_of_birth"));
        assert_eq!(params_from(4).matches("::text::").count(), FIELDS.len());
        assert!(params_from(4).starts_with("$4::text::text, $5::text::date"));
        assert!(changed_fields("p", "s").contains("WHEN p.email IS DISTINCT FROM s.email THEN 'contact.email'"));
    }
}
