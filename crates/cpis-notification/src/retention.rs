//! How long Notification keeps alerts, and the purge of those past it
//! (`cpis purge notification`). An alert the council has not acknowledged
//! is never purged.

use cpis_runtime::retention::{PurgeStep, Purged};

/// Retention periods, in days.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Acknowledged alerts, from their creation.
    pub alerts_days: u32,
}

impl Default for Retention {
    /// Two years (see the README's retention table).
    fn default() -> Self {
        Self { alerts_days: 730 }
    }
}

/// Deletes (or, with `dry_run`, counts) what is past `retention`.
pub async fn purge(pool: &deadpool_postgres::Pool, retention: Retention, dry_run: bool) -> anyhow::Result<Vec<Purged>> {
    let steps = [
        PurgeStep {
            kind: "alerts",
            sql: "DELETE FROM notification.alerts a
              USING notification.acks k
              WHERE k.council_code = a.council_code AND a.sequence <= k.acknowledged_through
                AND a.created_at < now() - make_interval(days => $1) AND $2::date IS NOT NULL",
            days: retention.alerts_days,
        },
        PurgeStep {
            kind: "acknowledgements",
            sql: "DELETE FROM notification.ack_history h
              WHERE h.acked_at < now() - make_interval(days => $1) AND $2::date IS NOT NULL",
            days: retention.alerts_days,
        },
    ];
    cpis_runtime::retention::purge(pool, crate::SCHEMA, &steps, cpis_domain::time::today_in_london(), dry_run).await
}
