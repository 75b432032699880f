//! How long Attendance keeps what it stored about flagged people, and the
//! purge of what is past it (`cpis purge attendance`). An undelivered alert
//! is never purged, nor an episode anything still refers to.

use cpis_runtime::retention::{PurgeStep, Purged};

/// Retention periods, in days.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Episodes (attendances of flagged people), from the arrival.
    pub episodes_days: u32,
    /// Accesses to flags (the audit of who saw what), from the access.
    pub accesses_days: u32,
    /// The first answer to each request id, kept for retries, from the request.
    pub requests_days: u32,
    /// Alerts already delivered to the Notification service (the outbox
    /// copy), from the delivery.
    pub delivered_outbox_days: u32,
}

impl Default for Retention {
    /// See the README's retention table.
    fn default() -> Self {
        Self { episodes_days: 2922, accesses_days: 2922, requests_days: 7, delivered_outbox_days: 7 }
    }
}

/// Deletes (or, with `dry_run`, counts) what is past `retention`.
pub async fn purge(pool: &deadpool_postgres::Pool, retention: Retention, dry_run: bool) -> anyhow::Result<Vec<Purged>> {
    // `$2` (today) is unused here: these periods run from instants.
    let steps = [
        PurgeStep {
            kind: "request_replay_records",
            sql: "DELETE FROM attendance.check_in_requests
                  WHERE created_at < now() - make_interval(days => $1) AND $2::date IS NOT NULL",
            days: retention.requests_days,
        },
        PurgeStep {
            kind: "delivered_outbox",
            sql: "DELETE FROM attendance.outbox
                  WHERE delivered_at < now() - make_interval(days => $1) AND $2::date IS NOT NULL",
            days: retention.delivered_outbox_days,
        },
        PurgeStep {
            kind: "accesses",
            sql: "DELETE FROM attendance.accesses
                  WHERE accessed_at < now() - make_interval(days => $1) AND $2::date IS NOT NULL",
            days: retention.accesses_days,
        },
        PurgeStep {
            kind: "episodes",
            sql: "DELETE FROM attendance.episodes e
                  WHERE e.arrived_at < now() - make_interval(days => $1) AND $2::date IS NOT NULL
                    AND NOT EXISTS (SELECT 1 FROM attendance.accesses a WHERE a.episode_id = e.episode_id)
                    AND NOT EXISTS (SELECT 1 FROM attendance.check_in_requests r WHERE r.episode_id = e.episode_id)
                    AND NOT EXISTS (SELECT 1 FROM attendance.outbox o WHERE o.episode_id = e.episode_id)",
            days: retention.episodes_days,
        },
    ];
    cpis_runtime::retention::purge(pool, crate::SCHEMA, &steps, cpis_domain::time::today_in_london(), dry_run).await
}
