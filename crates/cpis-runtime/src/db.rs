//! PostgreSQL: a deadpool pool from a connection string and error
//! descriptions that are safe to log (migrations: [`crate::migrate`]).
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
    pool_with(url, max_size, SessionSettings::from_env()?)
}

/// [`pool`] with these session settings instead of the environment's.
pub fn pool_with(url: &str, max_size: usize, session: SessionSettings) -> anyhow::Result<Pool> {
    pool_committing(url, max_size, session, Commit::Durable)
}

/// When a commit on a pool's connections returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Commit {
    /// Once its WAL record is on disk (`synchronous_commit` as the server
    /// sets it, on by default): what every answer to a caller relies on.
    Durable,
    /// At once, the WAL record flushed by the server's WAL writer within
    /// about `3 × wal_writer_delay` (`synchronous_commit = off`). A database
    /// crash may lose the last such commits, never leave one half done, and
    /// never lose one that a later durable commit depends on (the WAL is
    /// flushed in order). Only for statements whose loss is harmless: the
    /// outbox relay's leases (a lost one expires), delivery marks (a lost one
    /// republishes, which `PublishAlert` absorbs by council and key) and
    /// retry schedules.
    Early,
}

/// [`pool_with`], its commits returning as `commit` says.
pub fn pool_committing(url: &str, max_size: usize, session: SessionSettings, commit: Commit) -> anyhow::Result<Pool> {
    let target = DbTarget::parse(url).context("DATABASE_URL")?;
    let tls = target.tls()?;
    let mut config = target.config;
    if config.get_application_name().is_none() {
        config.application_name("cpis");
    }
    config.connect_timeout(Duration::from_secs(5));
    session.apply(&mut config);
    if commit == Commit::Early {
        let options = format!("{} -c synchronous_commit=off", config.get_options().unwrap_or_default());
        config.options(&options);
    }
    let manager = Manager::from_config(config, tls, ManagerConfig { recycling_method: RecyclingMethod::Fast });
    Ok(Pool::builder(manager)
        .max_size(max_size)
        .runtime(Runtime::Tokio1)
        .wait_timeout(Some(Duration::from_secs(5)))
        .create_timeout(Some(Duration::from_secs(5)))
        .recycle_timeout(Some(Duration::from_secs(5)))
        .build()?)
}

/// What every connection to PostgreSQL sets, so that a client that vanishes
/// without FIN or RST (node loss, partition) cannot hold locks for the two
/// hours PostgreSQL's default TCP keepalives take to notice, and no statement
/// or lock wait runs unbounded.
///
/// The server settings travel in the startup packet (`options`), so they hold
/// from the first statement, on pool connections and the LISTEN connection
/// alike, at no extra round trip. Each is read from the environment (see
/// [`SessionSettings::from_env`]); 0 turns a timeout off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionSettings {
    /// `statement_timeout`: the longest one statement may run.
    pub statement_timeout: Duration,
    /// `lock_timeout`: the longest one statement waits for a lock.
    pub lock_timeout: Duration,
    /// `idle_in_transaction_session_timeout`: a session idle inside a
    /// transaction this long is ended by the server, releasing its locks.
    pub idle_in_transaction_timeout: Duration,
    /// Client-side TCP keepalive: idle time before the first probe.
    pub keepalives_idle: Duration,
    /// Client-side TCP keepalive: time between probes.
    pub keepalives_interval: Duration,
    /// Client-side TCP keepalive: unanswered probes before the connection is dropped.
    pub keepalives_retries: u32,
    /// `TCP_USER_TIMEOUT`: the longest sent data may stay unacknowledged
    /// before the connection is dropped (keepalives cover idle connections only).
    pub tcp_user_timeout: Duration,
}

impl Default for SessionSettings {
    fn default() -> Self {
        Self {
            statement_timeout: Duration::from_secs(60),
            lock_timeout: Duration::from_secs(5),
            idle_in_transaction_timeout: Duration::from_secs(15),
            keepalives_idle: Duration::from_secs(30),
            keepalives_interval: Duration::from_secs(10),
            keepalives_retries: 3,
            tcp_user_timeout: Duration::from_secs(30),
        }
    }
}

/// The environment variables of [`SessionSettings`], with their units.
pub const SESSION_ENV: &[&str] = &[
    "CPIS_DB_STATEMENT_TIMEOUT_MS",
    "CPIS_DB_LOCK_TIMEOUT_MS",
    "CPIS_DB_IDLE_IN_TRANSACTION_TIMEOUT_MS",
    "CPIS_DB_KEEPALIVES_IDLE_SECS",
    "CPIS_DB_KEEPALIVES_INTERVAL_SECS",
    "CPIS_DB_KEEPALIVES_RETRIES",
    "CPIS_DB_TCP_USER_TIMEOUT_MS",
];

impl SessionSettings {
    /// The defaults, overridden by `CPIS_DB_STATEMENT_TIMEOUT_MS`,
    /// `CPIS_DB_LOCK_TIMEOUT_MS`, `CPIS_DB_IDLE_IN_TRANSACTION_TIMEOUT_MS`,
    /// `CPIS_DB_KEEPALIVES_IDLE_SECS`, `CPIS_DB_KEEPALIVES_INTERVAL_SECS`,
    /// `CPIS_DB_KEEPALIVES_RETRIES` and `CPIS_DB_TCP_USER_TIMEOUT_MS` when set.
    pub fn from_env() -> anyhow::Result<Self> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Like [`SessionSettings::from_env`], reading variables through `get`.
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> anyhow::Result<Self> {
        let d = Self::default();
        let num = |name: &str, default: u64| -> anyhow::Result<u64> {
            match get(name) {
                None => Ok(default),
                Some(v) if v.trim().is_empty() => Ok(default),
                Some(v) => v.trim().parse().map_err(|_| anyhow::anyhow!("{name} must be a whole number, not {v:?}")),
            }
        };
        let ms = |name: &str, default: Duration| num(name, default.as_millis() as u64).map(Duration::from_millis);
        let secs = |name: &str, default: Duration| num(name, default.as_secs()).map(Duration::from_secs);
        Ok(Self {
            statement_timeout: ms(SESSION_ENV[0], d.statement_timeout)?,
            lock_timeout: ms(SESSION_ENV[1], d.lock_timeout)?,
            idle_in_transaction_timeout: ms(SESSION_ENV[2], d.idle_in_transaction_timeout)?,
            keepalives_idle: secs(SESSION_ENV[3], d.keepalives_idle)?.max(Duration::from_secs(1)),
            keepalives_interval: secs(SESSION_ENV[4], d.keepalives_interval)?.max(Duration::from_secs(1)),
            keepalives_retries: u32::try_from(num(SESSION_ENV[5], u64::from(d.keepalives_retries))?)
                .unwrap_or(u32::MAX)
                .max(1),
            tcp_user_timeout: ms(SESSION_ENV[6], d.tcp_user_timeout)?,
        })
    }

    /// The `-c name=value` startup options that set the server-side timeouts,
    /// and `jit=off`: every statement of these services is a short indexed
    /// one, and a misestimated plan that crosses `jit_above_cost` spends
    /// longer compiling than running (measured: 100-800 ms stalls of the
    /// Registry's upload statements in the national day, issue 27).
    pub fn options(&self) -> String {
        format!(
            "-c statement_timeout={} -c lock_timeout={} -c idle_in_transaction_session_timeout={} -c jit=off",
            self.statement_timeout.as_millis(),
            self.lock_timeout.as_millis(),
            self.idle_in_transaction_timeout.as_millis()
        )
    }

    /// Applies these settings to `config` (after any `options` the
    /// connection string already carries, which they override).
    pub fn apply(&self, config: &mut tokio_postgres::Config) {
        let options = match config.get_options() {
            Some(existing) if !existing.trim().is_empty() => format!("{existing} {}", self.options()),
            _ => self.options(),
        };
        config
            .options(&options)
            .keepalives(true)
            .keepalives_idle(self.keepalives_idle)
            .keepalives_interval(self.keepalives_interval)
            .keepalives_retries(self.keepalives_retries);
        if !self.tcp_user_timeout.is_zero() {
            config.tcp_user_timeout(self.tcp_user_timeout);
        }
    }
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

/// Why a database error is worth repeating the whole operation for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transient {
    /// The database is out of reach, restarting, failing over or full.
    Outage,
    /// Another transaction was in the way: a lock or statement timeout, a
    /// deadlock, a serialization failure.
    Contention,
}

/// Which SQLSTATEs are transient: the one list (the README's table of codes
/// follows it). Everything else is a bug or bad data, not worth repeating.
pub fn transient_sqlstate(code: &str) -> Option<Transient> {
    match code {
        // 40001 serialization_failure, 40P01 deadlock_detected, 55P03
        // lock_not_available (lock_timeout), 57014 query_canceled
        // (statement_timeout, mostly a wait on a lock).
        "40001" | "40P01" | "55P03" | "57014" => Some(Transient::Contention),
        // Class 08 connection exception; 57P01-57P05 shutdown, crash,
        // cannot connect now, idle session timeout; 53300 too many
        // connections; 25006 read_only_sql_transaction (connected to a
        // standby during a failover); 58030 io_error.
        c if c.starts_with("08") || c.starts_with("57P") => Some(Transient::Outage),
        "53300" | "25006" | "58030" => Some(Transient::Outage),
        _ => None,
    }
}

/// Whether (and why) an operation that failed with `e` may be repeated.
pub fn is_transient_error(e: &tokio_postgres::Error) -> Option<Transient> {
    if e.is_closed() {
        return Some(Transient::Outage);
    }
    match e.code() {
        Some(code) => transient_sqlstate(code.code()),
        // No SQLSTATE: an I/O or protocol failure before the server answered.
        None if e.as_db_error().is_none() => Some(Transient::Outage),
        None => None,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_settings_come_from_the_environment_with_defaults() {
        let none = SessionSettings::from_lookup(|_| None).unwrap();
        assert_eq!(none, SessionSettings::default());
        let set = SessionSettings::from_lookup(|name| match name {
            "CPIS_DB_LOCK_TIMEOUT_MS" => Some("1500".into()),
            "CPIS_DB_IDLE_IN_TRANSACTION_TIMEOUT_MS" => Some("0".into()),
            "CPIS_DB_KEEPALIVES_IDLE_SECS" => Some("2".into()),
            _ => None,
        })
        .unwrap();
        assert_eq!(set.lock_timeout, Duration::from_millis(1500));
        assert_eq!(set.idle_in_transaction_timeout, Duration::ZERO);
        assert_eq!(set.keepalives_idle, Duration::from_secs(2));
        assert_eq!(
            set.options(),
            "-c statement_timeout=60000 -c lock_timeout=1500 -c idle_in_transaction_session_timeout=0 -c jit=off"
        );
        let bad = SessionSettings::from_lookup(|name| (name == "CPIS_DB_LOCK_TIMEOUT_MS").then(|| "5s".into()));
        assert!(bad.unwrap_err().to_string().contains("CPIS_DB_LOCK_TIMEOUT_MS"));
    }

    #[test]
    fn lock_waits_and_failovers_are_transient_and_bad_statements_are_not() {
        for code in ["40001", "40P01", "55P03", "57014"] {
            assert_eq!(transient_sqlstate(code), Some(Transient::Contention), "{code}");
        }
        for code in ["08006", "57P01", "53300", "25006"] {
            assert_eq!(transient_sqlstate(code), Some(Transient::Outage), "{code}");
        }
        for code in ["23505", "42P01", "22P02", "XX000"] {
            assert_eq!(transient_sqlstate(code), None, "{code}");
        }
    }

    #[test]
    fn session_settings_keep_options_of_the_connection_string() {
        let mut config: tokio_postgres::Config = "host=localhost options='-c search_path=x'".parse().unwrap();
        SessionSettings::default().apply(&mut config);
        let options = config.get_options().unwrap();
        assert!(options.starts_with("-c search_path=x -c statement_timeout="), "{options}");
        assert!(config.get_keepalives());
        assert_eq!(config.get_keepalives_idle(), Duration::from_secs(30));
    }
}
