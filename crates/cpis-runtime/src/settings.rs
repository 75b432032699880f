//! Typed settings from the command line and the environment.
//!
//! Each service has one settings struct deriving `clap::Args` (every field
//! with `env = "CPIS_..."`), and that struct is the configuration the service
//! runs on: there is no second copy to keep in step. This module has what
//! they share: the server's own settings ([`ServerSettings`]: listener, TLS,
//! database, limits), and (from `args`) value parsers for durations written in
//! the unit their variable names (`..._MS`, `..._SECS`), [`defaults`] for the
//! documented defaults, and [`explain`] to name the environment variable
//! behind a value that failed to parse.

use crate::args::defaults_with;
pub use crate::args::{days, defaults, explain, hours, invalid, millis, minutes, secs};
use crate::limits::Limits;
use crate::server::ConnectionLimits;
use crate::tls::TlsPaths;
use clap::Args;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Where PostgreSQL is: a connection string, or a file holding one.
#[derive(Args, Debug, Clone, Default)]
pub struct DatabaseSettings {
    /// PostgreSQL connection string (URL or key=value; sslmode, sslrootcert,
    /// sslcert, sslkey as in libpq).
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// A file holding the connection string (e.g. a mounted Secret's `uri`).
    #[arg(long, env = "DATABASE_URL_FILE")]
    pub database_url_file: Option<PathBuf>,
}

impl DatabaseSettings {
    /// A connection string given directly.
    pub fn url(url: impl Into<String>) -> Self {
        Self { database_url: Some(url.into()), database_url_file: None }
    }

    /// The connection string, if one is set (an error when both are).
    pub fn optional(&self) -> anyhow::Result<Option<String>> {
        crate::db_tls::url_from(self.database_url.clone(), self.database_url_file.as_deref())
    }

    /// The connection string; an error naming both variables when neither is set.
    pub fn required(&self) -> anyhow::Result<String> {
        crate::db_tls::required_url_from(self.database_url.clone(), self.database_url_file.as_deref())
    }
}

/// What every service's server needs: where it listens, its identity, the
/// database, and the caps that protect it.
#[derive(Args, Debug, Clone)]
pub struct ServerSettings {
    /// Address to listen on.
    #[arg(long, env = "CPIS_LISTEN", default_value = "0.0.0.0:50051")]
    pub listen: String,
    /// This service's certificate, key and the CA.
    #[command(flatten)]
    pub tls: TlsPaths,
    /// PEM certificate revocation list of client certificates (re-read when
    /// it changes; absent means nothing is revoked).
    #[arg(long, env = "CPIS_TLS_CRL")]
    pub crl: Option<PathBuf>,
    /// The SPIFFE trust domain accepted from callers.
    #[arg(long, env = "CPIS_TRUST_DOMAIN", default_value = "cpis.local")]
    pub trust_domain: String,
    /// Where PostgreSQL is.
    #[command(flatten)]
    pub database: DatabaseSettings,
    /// Maximum pooled database connections.
    #[arg(long, env = "CPIS_DB_POOL_SIZE", default_value_t = 16)]
    pub pool_size: usize,
    /// Seconds between readiness going NOT_SERVING and connections closing.
    #[arg(long = "drain-secs", env = "CPIS_DRAIN_SECS", default_value = "5", value_parser = secs)]
    pub drain: Duration,
    /// Caps on requests in flight, per caller and in all.
    #[command(flatten)]
    pub limits: Limits,
    /// Caps on connections and TLS handshakes in progress, per listener.
    #[command(flatten)]
    pub connections: ConnectionLimits,
    /// Close client connections after this many seconds so load rebalances (0: never).
    #[arg(long = "max-connection-age-secs", env = "CPIS_MAX_CONNECTION_AGE_SECS", default_value = "0", value_parser = secs)]
    pub max_connection_age: Duration,
    /// Serve Prometheus metrics (plain HTTP, `/metrics`) on this address.
    #[arg(long, env = "CPIS_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
    /// Serve internal methods (LookupFlags, PublishAlert) on this address only.
    #[arg(long, env = "CPIS_INTERNAL_LISTEN")]
    pub internal_listen: Option<SocketAddr>,
    /// Session settings of the service's database connections instead of
    /// the `CPIS_DB_*` environment variables (tests running several suites
    /// in one process).
    #[arg(skip)]
    pub db_session: Option<crate::db::SessionSettings>,
}

impl ServerSettings {
    /// Settings for a server with this identity and database, every other
    /// field at its default (development and tests).
    pub fn new(tls: TlsPaths, database_url: impl Into<String>) -> Self {
        let mut s = defaults_with::<Self>(&["defaults", "--ca", "-", "--cert", "-", "--key", "-"]);
        s.tls = tls;
        s.database = DatabaseSettings::url(database_url);
        s
    }

    /// The PostgreSQL connection string (an error naming the variables when
    /// neither or both are set).
    pub fn database_url(&self) -> anyhow::Result<String> {
        self.database.required()
    }

    /// A pool of `size` connections to the service's database, with its session settings.
    pub fn db_pool(&self, size: usize) -> anyhow::Result<crate::db::DbPool> {
        let session = match self.db_session {
            Some(session) => session,
            None => crate::db::SessionSettings::from_env()?,
        };
        crate::db::pool_with(&self.database_url()?, size, session)
    }

    /// [`ServerSettings::db_pool`] whose commits return before their WAL
    /// record is flushed (`synchronous_commit = off`): only for work whose
    /// loss in a database crash is harmless (see [`crate::db::Commit::Early`]).
    pub fn db_pool_early_commit(&self, size: usize) -> anyhow::Result<crate::db::DbPool> {
        let session = match self.db_session {
            Some(session) => session,
            None => crate::db::SessionSettings::from_env()?,
        };
        crate::db::pool_committing(&self.database_url()?, size, session, crate::db::Commit::Early)
    }

    /// The age after which connections are closed, if any.
    pub fn max_connection_age(&self) -> Option<Duration> {
        (!self.max_connection_age.is_zero()).then_some(self.max_connection_age)
    }

    /// Checks the rules between values, naming the variable that breaks one.
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.pool_size == 0 {
            return Err(invalid("CPIS_DB_POOL_SIZE", "must be at least 1"));
        }
        if self.limits.per_caller == 0 || self.limits.total < self.limits.per_caller {
            return Err(invalid(
                "CPIS_MAX_IN_FLIGHT",
                "must be at least CPIS_MAX_IN_FLIGHT_PER_CALLER, which must be at least 1",
            ));
        }
        if self.connections.max_connections == 0 || self.connections.max_handshakes == 0 {
            return Err(invalid("CPIS_MAX_CONNECTIONS", "and CPIS_MAX_HANDSHAKES must be at least 1"));
        }
        if self.connections.max_handshakes_per_address == 0 {
            return Err(invalid("CPIS_MAX_HANDSHAKES_PER_ADDRESS", "must be at least 1"));
        }
        self.database.required().map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_defaults_are_the_documented_ones() {
        let s = ServerSettings::new(
            TlsPaths { ca: "ca.pem".into(), cert: "c.pem".into(), key: "k.pem".into() },
            "postgres://x",
        );
        assert_eq!(s.listen, "0.0.0.0:50051");
        assert_eq!(s.pool_size, 16);
        assert_eq!(s.drain, Duration::from_secs(5));
        assert_eq!(s.max_connection_age(), None);
        assert_eq!(s.limits.per_caller, 64);
        assert_eq!(s.connections.max_handshakes, 256);
        assert_eq!(s.connections.max_handshakes_per_address, 128);
        s.validate().expect("defaults are valid");
    }
}
