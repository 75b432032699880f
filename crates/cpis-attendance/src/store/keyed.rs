//! The statements of alerts without an episode (a missed appointment, a
//! change of NHS number): the missed appointment's access row, the count of
//! a person's missed appointments, and outbox rows queued whole under an
//! idempotency key. They go out by the same relay as attendances, in each
//! council's order.

use crate::model::RecordedViewer;
use chrono::{DateTime, Utc};
use cpis_runtime::ApiError;
use deadpool_postgres::GenericClient;
use uuid::Uuid;

/// Serialises the missed-appointment records of one person until the
/// transaction ends, so that each counts the ones before it.
pub async fn lock_person(tx: &impl GenericClient, nhs_number: &str) -> Result<(), ApiError> {
    let stmt = tx.prepare_cached("SELECT pg_advisory_xact_lock(hashtextextended($1::text, 0::bigint))").await?;
    tx.execute(&stmt, &[&format!("attendance-missed:{nhs_number}")]).await?;
    Ok(())
}

/// One missed appointment for the access audit.
#[derive(Debug)]
pub struct Missed<'a> {
    /// The person (validated).
    pub nhs_number: &'a str,
    /// ODS code of the recording setting.
    pub setting_code: &'a str,
    /// Its kind (scheduled care).
    pub setting_type: i32,
    /// When the appointment was.
    pub appointment_at: DateTime<Utc>,
    /// Who recorded it.
    pub viewer: &'a RecordedViewer,
    /// The councils holding a flag now (they may list the record).
    pub council_codes: &'a [&'a str],
}

/// Records a missed appointment; `None` when the same setting recorded the
/// same person's appointment at that time before (a repeat).
pub async fn record_missed(tx: &impl GenericClient, m: &Missed<'_>) -> Result<Option<Uuid>, ApiError> {
    let stmt = tx
        .prepare_cached(
            "INSERT INTO attendance.accesses
                 (access_id, episode_id, nhs_number, setting_code, setting_type, user_id, council_codes,
                  viewer_name, role_profile_id, role_code, job_role_name, org_code, org_name, verified,
                  was_not_brought, appointment_at)
             VALUES ($1, NULL, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, true, $14)
             ON CONFLICT (setting_code, nhs_number, appointment_at) WHERE was_not_brought DO NOTHING
             RETURNING access_id",
        )
        .await?;
    let v = m.viewer;
    let row = tx
        .query_opt(
            &stmt,
            &[
                &Uuid::now_v7(),
                &m.nhs_number,
                &m.setting_code,
                &m.setting_type,
                &v.user_id,
                &m.council_codes,
                &v.name,
                &v.role_profile_id,
                &v.role_code,
                &v.job_role_name,
                &v.org_code,
                &v.org_name,
                &v.verified,
                &m.appointment_at,
            ],
        )
        .await?;
    Ok(row.map(|r| r.get(0)))
}

/// How many appointments the person was not brought to, anywhere, with a
/// time in `(since, until]`.
pub async fn count_missed(
    db: &impl GenericClient,
    nhs_number: &str,
    since: DateTime<Utc>,
    until: DateTime<Utc>,
) -> Result<i64, ApiError> {
    let stmt = db
        .prepare_cached(
            "SELECT count(*) FROM attendance.accesses
             WHERE nhs_number = $1 AND was_not_brought AND appointment_at > $2 AND appointment_at <= $3",
        )
        .await?;
    Ok(db.query_one(&stmt, &[&nhs_number, &since, &until]).await?.get(0))
}

/// An alert without an episode, queued whole.
#[derive(Debug)]
pub struct KeyedAlert {
    /// The council to alert.
    pub council_code: String,
    /// The person the alert is about.
    pub nhs_number: String,
    /// The kind of the council's plan.
    pub plan_type: i32,
    /// The council's case reference.
    pub local_reference: String,
    /// The `AlertKind`.
    pub kind: i32,
    /// The `AlertPriority`.
    pub priority: i32,
    /// The idempotency key (with the council).
    pub key: String,
    /// The encoded `PublishAlertRequest`.
    pub request: Vec<u8>,
}

/// Queues `alerts` (in council-code order, the order their position
/// counters are locked in); an alert already queued under its key for its
/// council adds nothing. Returns how many were queued.
pub async fn queue(tx: &impl GenericClient, alerts: &[KeyedAlert], traceparent: Option<&str>) -> Result<u64, ApiError> {
    let mut sorted: Vec<&KeyedAlert> = alerts.iter().collect();
    sorted.sort_by(|a, b| a.council_code.cmp(&b.council_code));
    let column = |f: fn(&KeyedAlert) -> &str| sorted.iter().map(|a| f(a)).collect::<Vec<&str>>();
    let councils = column(|a| &a.council_code);
    let nhs_numbers = column(|a| &a.nhs_number);
    let references = column(|a| &a.local_reference);
    let keys = column(|a| &a.key);
    let plan_types: Vec<i32> = sorted.iter().map(|a| a.plan_type).collect();
    let kinds: Vec<i32> = sorted.iter().map(|a| a.kind).collect();
    let priorities: Vec<i32> = sorted.iter().map(|a| a.priority).collect();
    let requests: Vec<&[u8]> = sorted.iter().map(|a| a.request.as_slice()).collect();
    let stmt = tx
        .prepare_cached(
            "INSERT INTO attendance.outbox
                 (council_code, nhs_number, plan_type, local_reference, kind, priority, alert_key, request, traceparent)
             SELECT a.council_code, a.nhs_number, a.plan_type, a.local_reference, a.kind, a.priority, a.alert_key,
                    a.request, $9
             FROM unnest($1::text[], $2::text[], $3::integer[], $4::text[], $5::integer[], $6::integer[],
                         $7::text[], $8::bytea[])
                  WITH ORDINALITY AS a(council_code, nhs_number, plan_type, local_reference, kind, priority,
                                       alert_key, request, n)
             ORDER BY a.n
             ON CONFLICT (alert_key, council_code) WHERE alert_key IS NOT NULL DO NOTHING",
        )
        .await?;
    Ok(tx
        .execute(
            &stmt,
            &[&councils, &nhs_numbers, &plan_types, &references, &kinds, &priorities, &keys, &requests, &traceparent],
        )
        .await?)
}
