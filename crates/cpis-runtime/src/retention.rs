//! Retention: each service deletes the records it owns once their retention
//! period has passed (`cpis purge`). A service lists its purge steps (one
//! `DELETE` per kind of record, each refusing by its own `WHERE` anything
//! still in scope); they run in one transaction, and the run is recorded in
//! the service's `<schema>.purges` table (`kind`, `count`, `retention_days`,
//! `purged_at`). A dry
//! run does the same work and rolls it back, so its counts are exact.

use chrono::NaiveDate;

/// One kind of record and the statement that deletes what is past retention.
/// The statement takes `$1` = the retention period in days (int) and `$2` =
/// today in England (date).
#[derive(Debug, Clone, Copy)]
pub struct PurgeStep {
    /// The kind of record, as reported and recorded (`episodes`, ...).
    pub kind: &'static str,
    /// The `DELETE` statement.
    pub sql: &'static str,
    /// The retention period.
    pub days: u32,
}

/// How many records of one kind a purge removed (or would remove).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Purged {
    /// The kind of record.
    pub kind: &'static str,
    /// How many.
    pub count: u64,
}

/// Runs `steps` in order in one transaction: rolled back when `dry_run`,
/// else committed together with one `<schema>.purges` row per kind.
pub async fn purge(
    pool: &deadpool_postgres::Pool,
    schema: &str,
    steps: &[PurgeStep],
    today: NaiveDate,
    dry_run: bool,
) -> anyhow::Result<Vec<Purged>> {
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    // Lets an append-only table's trigger tell a purge from a rewrite.
    tx.batch_execute("SET LOCAL cpis.purging = 'on'").await?;
    let mut purged = Vec::with_capacity(steps.len());
    for step in steps {
        let days = i32::try_from(step.days).unwrap_or(i32::MAX);
        let count = tx.execute(step.sql, &[&days, &today]).await?;
        if !dry_run {
            tx.execute(
                &format!("INSERT INTO {schema}.purges (kind, count, retention_days) VALUES ($1, $2, $3)"),
                &[&step.kind, &(count as i64), &days],
            )
            .await?;
        }
        purged.push(Purged { kind: step.kind, count });
    }
    if dry_run {
        tx.rollback().await?;
    } else {
        tx.commit().await?;
        for p in &purged {
            tracing::info!(schema, kind = p.kind, count = p.count, "purged records past retention");
        }
    }
    Ok(purged)
}
