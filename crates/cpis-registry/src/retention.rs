//! How long the Registry keeps plans it no longer shows, and the purge of
//! those past it (`cpis purge registry`). A plan in scope (active, or ended
//! less than 12 months ago) is never purged, whatever the setting.

use cpis_runtime::retention::{PurgeStep, Purged};

/// Retention periods, in days.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Ended plans, counted from the end date (and never within the 12
    /// months in scope); plans deleted as entered in error, from the
    /// deletion. Their change history goes with them.
    pub ended_plans_days: u32,
}

impl Default for Retention {
    /// Eight years (see the README's retention table).
    fn default() -> Self {
        Self { ended_plans_days: 2922 }
    }
}

/// Plans past retention (`$1` days, `$2` today in England): ended, out of
/// scope and ended more than `$1` days ago; or deleted more than `$1` days ago.
macro_rules! doomed_plans {
    () => {
        "SELECT plan_id FROM registry.plans
         WHERE (deleted_at IS NULL AND end_date IS NOT NULL
                AND $2::date >= (end_date + interval '12 months')::date AND end_date < $2::date - $1::int)
            OR (deleted_at IS NOT NULL AND deleted_at < ($2::date - $1::int)::timestamp AT TIME ZONE 'Europe/London')"
    };
}

/// Deletes (or, with `dry_run`, counts) what is past `retention`.
pub async fn purge(pool: &deadpool_postgres::Pool, retention: Retention, dry_run: bool) -> anyhow::Result<Vec<Purged>> {
    let days = retention.ended_plans_days;
    let steps = [
        PurgeStep {
            kind: "plan_history",
            sql: concat!("DELETE FROM registry.plan_changes WHERE plan_id IN (", doomed_plans!(), ")"),
            days,
        },
        PurgeStep {
            kind: "ended_plans",
            sql: concat!("DELETE FROM registry.plans WHERE plan_id IN (", doomed_plans!(), ")"),
            days,
        },
    ];
    cpis_runtime::retention::purge(pool, crate::SCHEMA, &steps, cpis_domain::time::today_in_london(), dry_run).await
}
