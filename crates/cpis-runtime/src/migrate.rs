//! Schema migrations: each service keeps versioned `.sql` files
//! (`migrations/V{n}__{name}.sql` in its crate) for the one schema it owns,
//! embedded at build time and run by refinery, which records each applied
//! migration with a checksum in `{schema}.schema_migrations`.
//!
//! What start-up guarantees:
//! - an applied migration edited afterwards (content or name) stops start-up
//!   with an error naming it, and so does a database that has a migration this
//!   build does not know;
//! - replicas starting together serialise on one advisory lock per schema (the
//!   same lock the earlier hand-rolled runner took, so old and new binaries
//!   serialise too during a rolling upgrade), and the pending migrations are
//!   applied in one transaction, all or nothing;
//! - migrations run without the session's statement and lock timeouts;
//! - a database migrated by the earlier runner (a `schema_migrations` table
//!   without checksums) is adopted once: its rows get the checksums frozen in
//!   [`Frozen`] for the SQL that runner applied, so later edits of those files
//!   are caught like any other.

use crate::db::DbPool;
use anyhow::Context as _;
use refinery::error::Kind;

pub use refinery::{embed_migrations, Migration, Runner};

/// The refinery checksum of a migration as the earlier hand-rolled runner
/// applied it: a database that runner migrated is adopted with these.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frozen {
    /// The version it was applied under.
    pub version: i32,
    /// Its file name without `V{n}__` and `.sql`.
    pub name: &'static str,
    /// refinery's checksum of that name, version and SQL.
    pub checksum: u64,
}

/// One service's migrations.
#[derive(Clone, Copy)]
pub struct Migrations {
    /// The schema the service owns (and where its history table lives).
    pub schema: &'static str,
    /// The embedded migrations (`embedded::migrations::runner` from [`embed_migrations!`]).
    pub runner: fn() -> Runner,
    /// The migrations the earlier runner may have applied, with their checksums.
    pub frozen: &'static [Frozen],
}

impl std::fmt::Debug for Migrations {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Migrations").field("schema", &self.schema).finish_non_exhaustive()
    }
}

/// The history table of `schema`.
pub fn history_table(schema: &str) -> String {
    format!("{schema}.schema_migrations")
}

impl Migrations {
    /// Checks that the embedded files of the frozen versions are still the
    /// ones frozen (a unit test of each service calls this).
    pub fn check_frozen(&self) -> Result<(), String> {
        let runner = (self.runner)();
        let mut wrong = Vec::new();
        for f in self.frozen {
            match runner.get_migrations().iter().find(|m| m.version() == f.version) {
                None => wrong.push(format!("V{}__{} is frozen but has no file", f.version, f.name)),
                Some(m) if m.name() != f.name || m.checksum() != f.checksum => wrong.push(format!(
                    "{m} has checksum {} but V{}__{} was frozen with {}",
                    m.checksum(),
                    f.version,
                    f.name,
                    f.checksum
                )),
                Some(_) => {}
            }
        }
        if wrong.is_empty() {
            Ok(())
        } else {
            Err(wrong.join("; "))
        }
    }

    /// Applies the pending migrations, once, even when several replicas start
    /// together; fails, naming the migration, when an applied one was edited.
    pub async fn run(&self, pool: &DbPool) -> anyhow::Result<()> {
        let schema = self.schema;
        // A connection of its own, closed afterwards: its session settings
        // and its session-level lock never return to the pool.
        let object = pool.get().await.map_err(crate::db::connect_failure)?;
        let mut client = deadpool_postgres::Object::take(object);
        // Replicas starting together wait here for the first one's migrations,
        // and a migration may rewrite a large table: no session timeouts apply.
        client
            .batch_execute("SET lock_timeout = 0; SET statement_timeout = 0")
            .await
            .map_err(|e| sql_failure(schema, "preparing to migrate", &e))?;
        let lock = format!("cpis-migrate-{schema}");
        client
            .execute("SELECT pg_advisory_lock(hashtext($1))", &[&lock])
            .await
            .map_err(|e| sql_failure(schema, "waiting for the migration lock", &e))?;
        let result = self.run_locked(&mut client).await;
        // Closing the connection would release the lock as well.
        let _ = client.execute("SELECT pg_advisory_unlock(hashtext($1))", &[&lock]).await;
        result
    }

    async fn run_locked(&self, client: &mut tokio_postgres::Client) -> anyhow::Result<()> {
        let schema = self.schema;
        client
            .batch_execute(&format!("CREATE SCHEMA IF NOT EXISTS {schema}"))
            .await
            .map_err(|e| sql_failure(schema, "creating the schema", &e))?;
        self.adopt_earlier_history(client).await?;
        let mut runner = (self.runner)().set_grouped(true).set_abort_divergent(true).set_abort_missing(true);
        runner.set_migration_table_name(history_table(schema));
        let report = runner.run_async(client).await.map_err(|e| explain(schema, e))?;
        for m in report.applied_migrations() {
            tracing::info!(schema, migration = %m, "applied migration");
        }
        Ok(())
    }

    /// Turns the earlier runner's `schema_migrations` (version, name,
    /// applied_at; no checksums) into refinery's table, in place and once:
    /// every version it lists must be one of [`Migrations::frozen`].
    async fn adopt_earlier_history(&self, client: &mut tokio_postgres::Client) -> anyhow::Result<()> {
        let schema = self.schema;
        let table = history_table(schema);
        let failed = |e: tokio_postgres::Error| sql_failure(schema, "adopting the earlier migration history", &e);
        let tx = client.transaction().await.map_err(failed)?;
        let shape = tx
            .query_one(
                "SELECT to_regclass($1) IS NOT NULL,
                        EXISTS (SELECT 1 FROM information_schema.columns
                                WHERE table_schema = $2 AND table_name = 'schema_migrations'
                                  AND column_name = 'checksum')",
                &[&table, &schema],
            )
            .await
            .map_err(failed)?;
        let (exists, has_checksums): (bool, bool) = (shape.get(0), shape.get(1));
        if !exists || has_checksums {
            return Ok(());
        }
        let versions: Vec<i32> = tx
            .query(&format!("SELECT version FROM {table} ORDER BY version"), &[])
            .await
            .map_err(failed)?
            .iter()
            .map(|r| r.get(0))
            .collect();
        tx.batch_execute(&format!(
            "ALTER TABLE {table} ALTER COLUMN name DROP NOT NULL, ALTER COLUMN name TYPE varchar(255),
                 ADD COLUMN applied_on varchar(255), ADD COLUMN checksum varchar(255)"
        ))
        .await
        .map_err(failed)?;
        for version in &versions {
            let frozen = self.frozen.iter().find(|f| f.version == *version).with_context(|| {
                format!(
                    "{table} lists migration {version}, which this build does not know: was this database \
                     migrated by a newer version of cpis?"
                )
            })?;
            tx.execute(
                &format!(
                    "UPDATE {table} SET name = $2, checksum = $3,
                         applied_on = to_char(applied_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"')
                     WHERE version = $1"
                ),
                &[version, &frozen.name, &frozen.checksum.to_string()],
            )
            .await
            .map_err(failed)?;
        }
        tx.batch_execute(&format!("ALTER TABLE {table} DROP COLUMN applied_at")).await.map_err(failed)?;
        tx.commit().await.map_err(failed)?;
        tracing::info!(schema, adopted = versions.len(), "adopted the migration history of the earlier runner");
        Ok(())
    }
}

/// A database failure while migrating: the SQLSTATE and the server's message,
/// never its DETAIL (which may quote row values).
fn sql_failure(schema: &str, what: &str, e: &tokio_postgres::Error) -> anyhow::Error {
    let cause = match e.as_db_error() {
        Some(db) => format!("sqlstate={}: {}", db.code().code(), db.message()),
        None => crate::db::describe(e),
    };
    anyhow::anyhow!("{schema} schema: {what}: {cause}")
}

/// refinery's error, saying which migration and what to do.
fn explain(schema: &str, e: refinery::Error) -> anyhow::Error {
    let table = history_table(schema);
    match e.kind() {
        Kind::DivergentVersion(applied, file) => anyhow::anyhow!(
            "{schema} schema: migration {file} was changed after it was applied to this database (recorded in {table} \
             as {applied} with checksum {}, this build's has {}): an applied migration must never be edited; \
             restore it and put the change in a new migration",
            applied.checksum(),
            file.checksum()
        ),
        Kind::MissingVersion(m) if m.sql().is_none() => anyhow::anyhow!(
            "{schema} schema: migration {m} is applied to this database ({table}) but this build does not have it: \
             was this database migrated by a newer version of cpis?"
        ),
        Kind::MissingVersion(m) => anyhow::anyhow!(
            "{schema} schema: migration {m} is older than the newest migration applied to this database ({table}) \
             but was never applied: give it a version above the newest"
        ),
        Kind::Connection(what, source) => {
            let cause = match source.downcast_ref::<tokio_postgres::Error>() {
                Some(pg) => match pg.as_db_error() {
                    Some(db) => format!("sqlstate={}: {}", db.code().code(), db.message()),
                    None => crate::db::describe(pg),
                },
                None => source.to_string(),
            };
            anyhow::anyhow!("{schema} schema: {what}: {cause}")
        }
        other => anyhow::anyhow!("{schema} schema: {other}"),
    }
}
