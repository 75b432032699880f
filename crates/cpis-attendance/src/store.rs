//! The service's SQL, one function per statement (its schema is in
//! `migrations/`): the relay's statements here, the
//! check-in's in [`checkin`], the reads' in [`reads`], the access history's
//! in [`history`]. Rules (what the rows
//! mean) are in `crate::rules`; the contract's messages are built in
//! `crate::convert`. (The relay's claim still returns the `PublishAlertRequest`
//! it sends: it changes with the relay's batch publishing.)
//!
//! Only flagged people are ever written here: an unflagged check-in never
//! reaches this module.

pub mod checkin;
pub mod grouped;
pub mod history;
pub mod keyed;
pub mod reads;
pub mod relay;
pub mod report;

use chrono::{DateTime, Utc};
use cpis_domain::time::to_timestamp;
use cpis_proto::common::v1::Episode;
use cpis_proto::notification::v1::PublishAlertRequest;
use prost::Message as _;
use std::time::Duration;
use uuid::Uuid;

/// One outbox row claimed for publishing.
#[derive(Debug, Clone)]
pub struct PendingAlert {
    /// The row's id.
    pub outbox_id: i64,
    /// What to publish.
    pub request: cpis_proto::notification::v1::PublishAlertRequest,
    /// The check-in's trace context.
    pub traceparent: Option<String>,
    /// Its place in the council's order (check-in commit order).
    pub position: i64,
}

/// Leases up to `limit` councils that have undelivered alerts, are due (no
/// retry pending) and are not leased by a live relay: `holder` publishes
/// them until `lease` from now unless it renews. One statement, so no lock
/// outlives it; two relays racing for a council cannot both win (the upsert
/// re-checks the lease on the row it waited for).
pub async fn lease_councils(
    db: &impl deadpool_postgres::GenericClient,
    holder: Uuid,
    lease: Duration,
    limit: i64,
) -> Result<Vec<LeasedCouncil>, tokio_postgres::Error> {
    let rows = db
        .query(
            "INSERT INTO attendance.relay_councils AS r (council_code, holder, lease_until)
             SELECT p.council_code, $1, now() + make_interval(secs => $2::float8)
             FROM attendance.outbox_positions p
             LEFT JOIN attendance.relay_councils c USING (council_code)
             -- A probe per council on its position index (LATERAL: never a
             -- scan of the whole outbox as a semi-join).
             CROSS JOIN LATERAL (SELECT 1 FROM attendance.outbox o
                                 WHERE o.council_code = p.council_code
                                   AND o.position > COALESCE(c.delivered_through, 0)
                                   AND o.delivered_at IS NULL
                                 ORDER BY o.position LIMIT 1) due
             WHERE p.last_position > COALESCE(c.delivered_through, 0)
               AND (c.council_code IS NULL
                    OR (COALESCE(c.lease_until, '-infinity') < now() AND c.next_attempt_at <= now()))
             ORDER BY c.next_attempt_at NULLS FIRST, p.council_code
             LIMIT $3
             ON CONFLICT (council_code) DO UPDATE
                 SET holder = EXCLUDED.holder, lease_until = EXCLUDED.lease_until
                 WHERE COALESCE(r.lease_until, '-infinity') < now() AND r.next_attempt_at <= now()
             RETURNING council_code, attempts",
            &[&holder, &secs(lease), &limit],
        )
        .await?;
    Ok(rows.iter().map(|r| LeasedCouncil { council_code: r.get(0), attempts: r.get(1) }).collect())
}

/// A council a relay holds the lease of.
#[derive(Debug, Clone)]
pub struct LeasedCouncil {
    /// The council's GSS code.
    pub council_code: String,
    /// Failed attempts at its head-of-line alert since its last delivery.
    pub attempts: i32,
}

/// The first `limit` undelivered alerts of `council`, in position order
/// (its check-ins' commit order).
pub async fn pending_for_council(
    db: &impl deadpool_postgres::GenericClient,
    council: &str,
    limit: i64,
) -> Result<Vec<PendingAlert>, tokio_postgres::Error> {
    let rows = db
        .query(
            "SELECT outbox_id, attempts, council_code, nhs_number, plan_type, local_reference,
                    episode_id, setting_code, setting_type, arrived_at, priority, traceparent, position, viewer,
                    request
             FROM attendance.outbox
             WHERE council_code = $1 AND delivered_at IS NULL
               AND position > COALESCE((SELECT delivered_through FROM attendance.relay_councils
                                        WHERE council_code = $1), 0)
             ORDER BY position
             LIMIT $2",
            &[&council, &limit],
        )
        .await?;
    Ok(rows.iter().map(|r| pending_from_row(r, 0)).collect())
}

/// The columns `outbox_id, attempts, council_code, nhs_number, plan_type,
/// local_reference, episode_id, setting_code, setting_type, arrived_at,
/// priority, traceparent, position, viewer, request` of `r`, starting at column `at`.
pub(crate) fn pending_from_row(r: &tokio_postgres::Row, at: usize) -> PendingAlert {
    // An alert of another kind than an attendance was queued whole.
    let queued: Option<Vec<u8>> = r.get(at + 14);
    let request = match queued.and_then(|b| PublishAlertRequest::decode(b.as_slice()).ok()) {
        Some(request) => request,
        None => {
            let episode_id: Option<Uuid> = r.get(at + 6);
            let arrived_at: Option<DateTime<Utc>> = r.get(at + 9);
            PublishAlertRequest {
                council_code: r.get(at + 2),
                nhs_number: r.get(at + 3),
                plan_type: r.get(at + 4),
                local_reference: r.get(at + 5),
                episode: Some(Episode {
                    episode_id: episode_id.map(|id| id.to_string()).unwrap_or_default(),
                    setting_code: r.get::<_, Option<String>>(at + 7).unwrap_or_default(),
                    setting_type: r.get::<_, Option<i32>>(at + 8).unwrap_or_default(),
                    arrived_at: arrived_at.map(to_timestamp),
                }),
                priority: r.get(at + 10),
                // Written by this service from a `Viewer` it encoded; absent on
                // rows queued before verified users existed.
                viewer: r
                    .get::<_, Option<Vec<u8>>>(at + 13)
                    .and_then(|b| cpis_proto::common::v1::Viewer::decode(b.as_slice()).ok()),
                ..Default::default()
            }
        }
    };
    PendingAlert { outbox_id: r.get(at), request, traceparent: r.get(at + 11), position: r.get(at + 12) }
}

/// Marks outbox rows delivered (the Notification service has stored them:
/// one alert, or every row of one `PublishAlerts` batch, which it stores all
/// or nothing), moves their council's `delivered_through` up to them (they
/// are its next rows in position order) and renews `holder`'s lease of the
/// council in the same statement. Returns false when `holder` no longer holds the lease (it
/// expired and another relay took the council over): the caller then stops.
pub async fn mark_delivered(
    db: &impl deadpool_postgres::GenericClient,
    outbox_ids: &[i64],
    holder: Uuid,
    lease: Duration,
) -> Result<bool, tokio_postgres::Error> {
    let renewed = db
        .query(
            "WITH delivered AS (
                 UPDATE attendance.outbox
                 SET delivered_at = COALESCE(delivered_at, now()), attempts = attempts + 1, last_error = NULL
                 WHERE outbox_id = ANY($1)
                 RETURNING council_code, position)
             UPDATE attendance.relay_councils r
             SET delivered_through = GREATEST(r.delivered_through, d.through),
                 lease_until = CASE WHEN r.holder = $2 THEN now() + make_interval(secs => $3::float8)
                                    ELSE r.lease_until END,
                 attempts = CASE WHEN r.holder = $2 THEN 0 ELSE r.attempts END,
                 last_error = CASE WHEN r.holder = $2 THEN NULL ELSE r.last_error END
             FROM (SELECT council_code, max(position) AS through FROM delivered GROUP BY council_code) d
             WHERE r.council_code = d.council_code
             RETURNING r.holder = $2",
            &[&outbox_ids, &holder, &secs(lease)],
        )
        .await?;
    Ok(renewed.iter().any(|r| r.get::<_, Option<bool>>(0) == Some(true)))
}

/// Records a failed attempt at a council's head-of-line alert and gives the
/// council up until `retry_in` from now: the whole council waits, so no
/// later alert can overtake it. `error` must hold no personal data.
pub async fn mark_failed(
    db: &impl deadpool_postgres::GenericClient,
    outbox_id: i64,
    holder: Uuid,
    retry_in: Duration,
    error: &str,
) -> Result<(), tokio_postgres::Error> {
    db.execute(
        "WITH failed AS (
             UPDATE attendance.outbox SET attempts = attempts + 1, last_error = $4
             WHERE outbox_id = $1
             RETURNING council_code)
         UPDATE attendance.relay_councils r
         SET holder = NULL, lease_until = NULL, attempts = r.attempts + 1,
             next_attempt_at = now() + make_interval(secs => $3::float8), last_error = $4
         FROM failed f
         WHERE r.council_code = f.council_code AND r.holder = $2",
        &[&outbox_id, &holder, &secs(retry_in), &error],
    )
    .await?;
    Ok(())
}

/// Gives up every lease `holder` holds (a relay stopping), so the other
/// replicas carry on at once instead of after the lease runs out.
pub async fn release_all(
    db: &impl deadpool_postgres::GenericClient,
    holder: Uuid,
) -> Result<u64, tokio_postgres::Error> {
    let released = db
        .execute("UPDATE attendance.relay_councils SET holder = NULL, lease_until = NULL WHERE holder = $1", &[&holder])
        .await?;
    db.execute("DELETE FROM attendance.relays WHERE relay_id = $1", &[&holder]).await?;
    Ok(released)
}

/// Gives up `holder`'s lease of `council`, so any relay may take it at once.
pub async fn release_council(
    db: &impl deadpool_postgres::GenericClient,
    council: &str,
    holder: Uuid,
) -> Result<(), tokio_postgres::Error> {
    db.execute(
        "UPDATE attendance.relay_councils SET holder = NULL, lease_until = NULL
         WHERE council_code = $1 AND holder = $2",
        &[&council, &holder],
    )
    .await?;
    Ok(())
}

/// What waits in the outbox: one scan of the undelivered rows.
#[derive(Debug, Clone, Copy)]
pub struct Backlog {
    /// Undelivered rows.
    pub depth: i64,
    /// Age in seconds of the oldest (0 when none).
    pub oldest_age: f64,
    /// How long until the next one is due (zero when one is due now), or
    /// `None` when none is waiting.
    pub next_due_in: Option<Duration>,
}

/// Reads the outbox's [`Backlog`]; a council falls due when its retry
/// delay and any other relay's lease have both passed.
pub async fn backlog(db: &impl deadpool_postgres::GenericClient) -> Result<Backlog, tokio_postgres::Error> {
    let row = db
        .query_one(
            "WITH pending AS (
                 SELECT p.council_code, q.n, q.oldest
                 FROM attendance.outbox_positions p
                 LEFT JOIN attendance.relay_councils c USING (council_code)
                 CROSS JOIN LATERAL (
                     SELECT count(*) AS n, min(o.created_at) AS oldest FROM attendance.outbox o
                     WHERE o.council_code = p.council_code AND o.position > COALESCE(c.delivered_through, 0)
                       AND o.delivered_at IS NULL) q
                 WHERE p.last_position > COALESCE(c.delivered_through, 0) AND q.n > 0)
             SELECT COALESCE(sum(p.n), 0)::bigint,
                    COALESCE(extract(epoch FROM now() - min(p.oldest))::float8, 0),
                    extract(epoch FROM min(GREATEST(COALESCE(r.next_attempt_at, now()),
                                                    COALESCE(r.lease_until, now()))) - now())::float8
             FROM pending p LEFT JOIN attendance.relay_councils r USING (council_code)",
            &[],
        )
        .await?;
    let due: Option<f64> = row.get(2);
    Ok(Backlog {
        depth: row.get(0),
        oldest_age: row.get(1),
        next_due_in: due.map(|s| Duration::try_from_secs_f64(s.max(0.0)).unwrap_or(Duration::ZERO)),
    })
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}
