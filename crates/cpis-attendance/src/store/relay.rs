//! The relay's common case in two statements a pass: [`lease_and_read`]
//! leases this relay's share of the due councils and reads their next rows,
//! and [`settle`] marks what the Notification service stored as delivered
//! and gives the councils back. (The per-council statements, used when a
//! batch fails, are in the parent module.)

use super::{pending_from_row, LeasedCouncil, PendingAlert};
use std::time::Duration;
use uuid::Uuid;

/// A council leased by [`lease_and_read`] and its next undelivered alerts,
/// in position order (empty if another relay delivered them meanwhile).
#[derive(Debug, Clone)]
pub struct LeasedRows {
    /// The council and its failed attempts.
    pub council: LeasedCouncil,
    /// Its first undelivered alerts, a prefix of its queue.
    pub alerts: Vec<PendingAlert>,
}

/// In one statement: renews `holder`'s presence among the live relays,
/// leases up to `max_councils` councils that have undelivered alerts, are due
/// (no retry pending) and are not leased by a live relay, but no more than
/// this relay's share (those councils divided by the live relays, rounded
/// up), least recently served first; and reads the first `per_council`
/// undelivered alerts of each, at most `max_rows` in all (each council's a
/// prefix of its queue, by position, and at least its first since
/// `max_councils <= max_rows`). As [`super::lease_councils`], two relays
/// racing for a council cannot both win, and no lock outlives the statement.
pub async fn lease_and_read(
    db: &impl deadpool_postgres::GenericClient,
    holder: Uuid,
    lease: Duration,
    max_councils: i64,
    per_council: i64,
    max_rows: i64,
) -> Result<Vec<LeasedRows>, tokio_postgres::Error> {
    let stmt = db
        .prepare_cached(
            "WITH present AS (
                 INSERT INTO attendance.relays (relay_id, alive_until)
                 VALUES ($1, now() + make_interval(secs => $2::float8))
                 ON CONFLICT (relay_id) DO UPDATE SET alive_until = EXCLUDED.alive_until
                 RETURNING 1),
             pending AS (
                 SELECT p.council_code FROM attendance.outbox_positions p
                 LEFT JOIN attendance.relay_councils c USING (council_code)
                 -- A probe per council on its position index (LATERAL, so
                 -- never a scan of the whole outbox as a semi-join).
                 CROSS JOIN LATERAL (SELECT 1 FROM attendance.outbox o
                                     WHERE o.council_code = p.council_code
                                       AND o.position > COALESCE(c.delivered_through, 0)
                                       AND o.delivered_at IS NULL
                                     ORDER BY o.position LIMIT 1) due
                 WHERE p.last_position > COALESCE(c.delivered_through, 0)),
             share AS (
                 SELECT LEAST($3::bigint, ceil((SELECT count(*) FROM pending)::float8
                     / (1 + (SELECT count(*) FROM attendance.relays
                             WHERE alive_until > now() AND relay_id <> $1)))::bigint) AS n),
             leased AS (
                 INSERT INTO attendance.relay_councils AS r (council_code, holder, lease_until)
                 SELECT p.council_code, $1, now() + make_interval(secs => $2::float8)
                 FROM pending p LEFT JOIN attendance.relay_councils c USING (council_code)
                 WHERE c.council_code IS NULL
                    OR (COALESCE(c.lease_until, '-infinity') < now() AND c.next_attempt_at <= now())
                 ORDER BY GREATEST(c.next_attempt_at, c.lease_until) NULLS FIRST, p.council_code
                 LIMIT (SELECT n FROM share)
                 ON CONFLICT (council_code) DO UPDATE
                     SET holder = EXCLUDED.holder, lease_until = EXCLUDED.lease_until
                     WHERE COALESCE(r.lease_until, '-infinity') < now() AND r.next_attempt_at <= now()
                 RETURNING council_code, attempts, delivered_through),
             due AS (
                 SELECT o.*, row_number() OVER (PARTITION BY o.council_code ORDER BY o.position) AS rn
                 FROM leased l
                 CROSS JOIN LATERAL (
                     SELECT outbox_id, attempts, council_code, nhs_number, plan_type, local_reference,
                            episode_id, setting_code, setting_type, arrived_at, priority, traceparent, position,
                            viewer, request
                     FROM attendance.outbox
                     WHERE council_code = l.council_code AND position > l.delivered_through
                       AND delivered_at IS NULL
                     ORDER BY position
                     LIMIT $4) o),
             taken AS (SELECT * FROM due ORDER BY rn, council_code LIMIT $5)
             SELECT l.council_code, l.attempts,
                    t.outbox_id, t.attempts, t.council_code, t.nhs_number, t.plan_type, t.local_reference,
                    t.episode_id, t.setting_code, t.setting_type, t.arrived_at, t.priority, t.traceparent,
                    t.position, t.viewer, t.request
             FROM leased l LEFT JOIN taken t ON t.council_code = l.council_code
             ORDER BY l.council_code, t.position",
        )
        .await?;
    let rows = db.query(&stmt, &[&holder, &lease.as_secs_f64(), &max_councils, &per_council, &max_rows]).await?;
    let mut out: Vec<LeasedRows> = Vec::new();
    for r in &rows {
        let code: String = r.get(0);
        if out.last().is_none_or(|l| l.council.council_code != code) {
            out.push(LeasedRows {
                council: LeasedCouncil { council_code: code, attempts: r.get(1) },
                alerts: Vec::new(),
            });
        }
        let present: Option<i64> = r.get(2);
        if let (Some(_), Some(last)) = (present, out.last_mut()) {
            last.alerts.push(pending_from_row(r, 2));
        }
    }
    Ok(out)
}

/// In one statement: marks `delivered` (outbox ids the Notification service
/// has stored) delivered, moves each council's `delivered_through` up to
/// the last of them (they are the council's next rows in position order,
/// so everything up to there is delivered), and gives up `holder`'s lease
/// of each of `councils` (those it leased for the pass), clearing the
/// failure count of the ones that had an alert delivered. A council whose
/// lease another relay took meanwhile stays with that relay; the rows are
/// delivered either way. The mark changes no indexed column, so it is a
/// HOT update (the outbox keeps room on its pages for it).
pub async fn settle(
    db: &impl deadpool_postgres::GenericClient,
    delivered: &[i64],
    councils: &[&str],
    holder: Uuid,
) -> Result<(), tokio_postgres::Error> {
    let stmt = db
        .prepare_cached(
            "WITH delivered AS (
                 UPDATE attendance.outbox
                 SET delivered_at = COALESCE(delivered_at, now()), attempts = attempts + 1, last_error = NULL
                 WHERE outbox_id = ANY($1)
                 RETURNING council_code, position),
             served AS (SELECT council_code, max(position) AS through FROM delivered GROUP BY council_code),
             touched AS (
                 SELECT COALESCE(c.code, s.council_code) AS code, c.code IS NOT NULL AS leased, s.through
                 FROM unnest($2::text[]) AS c(code) FULL JOIN served s ON s.council_code = c.code)
             UPDATE attendance.relay_councils r
             SET delivered_through = GREATEST(r.delivered_through, COALESCE(t.through, 0)),
                 holder = CASE WHEN t.leased AND r.holder = $3 THEN NULL ELSE r.holder END,
                 lease_until = CASE WHEN t.leased AND r.holder = $3 THEN now() ELSE r.lease_until END,
                 attempts = CASE WHEN t.leased AND r.holder = $3 AND t.through IS NOT NULL THEN 0
                                 ELSE r.attempts END,
                 last_error = CASE WHEN t.leased AND r.holder = $3 AND t.through IS NOT NULL THEN NULL
                                   ELSE r.last_error END
             FROM touched t
             WHERE r.council_code = t.code",
        )
        .await?;
    db.execute(&stmt, &[&delivered, &councils, &holder]).await?;
    Ok(())
}
