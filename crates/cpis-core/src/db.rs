//! PostgreSQL: a deadpool pool from a connection string, a migrations runner
//! (each service owns one schema), and error descriptions that are safe to log.
//! Every connection goes through [`crate::db_tls`] (TLS, `sslmode`).

use crate::db_tls::DbTarget;
use anyhow::Context as _;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use std::time::Duration;

/// Re-exported so services name one pool type.
pub use deadpool_postgres::Pool as DbPool;

/// Builds a pool. `url` is a `postgres://` URL or a `key=value` string.
/// Waiting for a connection is bounded so that a database outage turns into
/// `UNAVAILABLE` quickly instead of hanging callers.
pub fn pool(url: &str, max_size: usize) -> anyhow::Result<Pool> {
    let target = DbTarget::parse(url).context("DATABASE_URL")?;
    let tls = target.tls()?;
    let mut config = target.config;
    if config.get_application_name().is_none() {
        config.application_name("cpis");
    }
    config.connect_timeout(Duration::from_secs(5));
    let manager = Manager::from_config(config, tls, ManagerConfig { recycling_method: RecyclingMethod::Fast });
    Ok(Pool::builder(manager)
        .max_size(max_size)
        .runtime(Runtime::Tokio1)
        .wait_timeout(Some(Duration::from_secs(5)))
        .create_timeout(Some(Duration::from_secs(5)))
        .recycle_timeout(Some(Duration::from_secs(5)))
        .build()?)
}

/// One schema migration: applied once, in version order, inside the
/// migration transaction.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    /// Strictly increasing version number.
    pub version: i32,
    /// Short name for the record.
    pub name: &'static str,
    /// The SQL to run; it should qualify names with the service's schema.
    pub sql: &'static str,
}

/// Applies the pending migrations of `schema`, once, even when several
/// replicas start together (a transaction-scoped advisory lock serialises them).
pub async fn migrate(pool: &Pool, schema: &str, migrations: &[Migration]) -> anyhow::Result<()> {
    let mut client = pool.get().await.map_err(connect_failure)?;
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock(hashtext($1))", &[&format!("cpis-migrate-{schema}")]).await?;
    tx.batch_execute(&format!(
        "CREATE SCHEMA IF NOT EXISTS {schema};
         CREATE TABLE IF NOT EXISTS {schema}.schema_migrations (
             version integer PRIMARY KEY,
             name text NOT NULL,
             applied_at timestamptz NOT NULL DEFAULT now()
         );"
    ))
    .await?;
    let applied: Vec<i32> = tx
        .query(&format!("SELECT version FROM {schema}.schema_migrations"), &[])
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    for m in migrations {
        if applied.contains(&m.version) {
            continue;
        }
        tracing::info!(schema, version = m.version, name = m.name, "applying migration");
        tx.batch_execute(m.sql).await?;
        tx.execute(
            &format!("INSERT INTO {schema}.schema_migrations (version, name) VALUES ($1, $2)"),
            &[&m.version, &m.name],
        )
        .await?;
    }
    tx.commit().await?;
    Ok(())
}

/// One direct connection (outside any pool) for tools and tests, with the
/// same TLS as the services; the connection runs on a spawned task.
pub async fn connect(url: &str) -> anyhow::Result<tokio_postgres::Client> {
    let target = DbTarget::parse(url).context("DATABASE_URL")?;
    let tls = target.tls()?;
    let mut config = target.config.clone();
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(Duration::from_secs(5));
    }
    let (client, connection) = config.connect(tls).await.map_err(|e| {
        let cause = crate::db_tls::explain_tls_failure(&e).unwrap_or_else(|| describe_connect(&e));
        anyhow::anyhow!(
            "connecting to PostgreSQL at {} (sslmode={}): {cause}",
            target.hosts(),
            target.ssl_mode().as_str()
        )
    })?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(cause = %describe(&e), "database connection ended");
        }
    });
    Ok(client)
}

/// Turns a failure to get a pooled connection into an error that says why,
/// naming the TLS cause (wrong CA, wrong host name, no TLS on the server).
pub fn connect_failure(e: deadpool_postgres::PoolError) -> anyhow::Error {
    let cause = crate::db_tls::explain_tls_failure(&e).unwrap_or_else(|| match &e {
        deadpool_postgres::PoolError::Backend(pg) => describe_connect(pg),
        other => other.to_string(),
    });
    anyhow::anyhow!("connecting to PostgreSQL: {cause}")
}

/// A connection failure without the server's DETAIL (it may quote values).
fn describe_connect(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        // Authentication and "database does not exist" messages name no data.
        Some(db) => format!("sqlstate={}: {}", db.code().code(), db.message()),
        // I/O and protocol causes ("Connection refused", a timeout) quote nothing.
        None => {
            let mut text = e.to_string();
            let mut source = std::error::Error::source(e);
            while let Some(cause) = source {
                text.push_str(&format!(": {cause}"));
                source = cause.source();
            }
            text
        }
    }
}

/// True when the error means the database could not be reached or the
/// connection broke (so the caller may retry), not that the query was wrong.
pub fn is_connection_error(e: &tokio_postgres::Error) -> bool {
    if e.is_closed() {
        return true;
    }
    match e.code() {
        // Class 08: connection exception; 57P01-57P03: admin shutdown, crash
        // shutdown, cannot connect now; 53300: too many connections.
        Some(code) => {
            let c = code.code();
            c.starts_with("08") || c.starts_with("57P") || c == "53300"
        }
        // No SQLSTATE: an I/O or protocol failure before the server answered.
        None => e.as_db_error().is_none(),
    }
}

/// A description of a database error that is safe to log: the SQLSTATE,
/// constraint, table and column, never the server's DETAIL (which quotes values).
pub fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!(
            "sqlstate={} constraint={} table={} column={}",
            db.code().code(),
            db.constraint().unwrap_or("-"),
            db.table().unwrap_or("-"),
            db.column().unwrap_or("-"),
        ),
        None if e.is_closed() => "connection closed".to_string(),
        None if crate::db_tls::explain_tls_failure(e).is_some() => {
            format!("TLS: {}", crate::db_tls::explain_tls_failure(e).unwrap_or_default())
        }
        None => match e.code() {
            Some(code) => format!("sqlstate={}", code.code()),
            None => "connection or protocol error".to_string(),
        },
    }
}

/// True when the error is a unique-constraint violation.
pub fn is_unique_violation(e: &tokio_postgres::Error) -> bool {
    e.code() == Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION)
}

/// Checks the database answers a trivial query.
pub async fn ping(pool: &Pool) -> bool {
    let attempt = tokio::time::timeout(Duration::from_secs(3), async {
        let client = pool.get().await.ok()?;
        client.simple_query("SELECT 1").await.ok()
    });
    matches!(attempt.await, Ok(Some(_)))
}
