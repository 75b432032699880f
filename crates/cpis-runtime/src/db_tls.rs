//! Where and how to reach PostgreSQL: one parser for connection strings
//! (`postgres://` URLs and `key=value` strings) that understands the libpq
//! TLS options tokio-postgres does not (`sslmode=verify-ca|verify-full`,
//! `sslrootcert`, `sslcert`, `sslkey`), and the rustls connector (ring
//! provider, like the rest of the program) every connection uses: the pool,
//! the LISTEN connection, migrations and the `cpis` tools.
//!
//! The modes mean what they mean in libpq: `verify-full` checks the server's
//! chain against `sslrootcert` and its name against the host connected to;
//! `verify-ca` checks the chain only; `require` and `prefer` encrypt, and
//! check the chain too when `sslrootcert` is given (as libpq does); `disable`
//! sends everything in clear. TLS does not apply to Unix sockets, so a
//! connection string naming only socket directories connects without it.
//! Nothing here ever prints a password: errors name the option that failed.
//!
//! The contract is read here (the modes, the target, the connector);
//! its parts live beside it: `options` (libpq's option syntax, in URLs
//! and `key=value` strings) and `verify` (the certificate verifiers the
//! modes select, and how a TLS failure is explained).

mod options;
mod verify;

use anyhow::Context as _;
use options::{strip_keyword_options, strip_url_options, SourceText as _, TlsOptions};
use rustls::client::danger::ServerCertVerifier;
use rustls::client::WebPkiServerVerifier;
use rustls::{ClientConfig, RootCertStore};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio_postgres::config::Host;
use tokio_postgres::tls::MakeTlsConnect;
use tokio_postgres_rustls::MakeRustlsConnect;
pub use verify::explain_tls_failure;
use verify::{ChainOnly, EncryptOnly};

/// The connector every PostgreSQL connection of the program uses
/// (tokio-postgres-rustls, configured by [`DbTarget::tls`]).
#[derive(Clone)]
pub struct DbTls(MakeRustlsConnect);

impl fmt::Debug for DbTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DbTls(rustls)")
    }
}

impl<S> MakeTlsConnect<S> for DbTls
where
    MakeRustlsConnect: MakeTlsConnect<S>,
{
    type Stream = <MakeRustlsConnect as MakeTlsConnect<S>>::Stream;
    type TlsConnect = <MakeRustlsConnect as MakeTlsConnect<S>>::TlsConnect;
    type Error = <MakeRustlsConnect as MakeTlsConnect<S>>::Error;

    fn make_tls_connect(&mut self, domain: &str) -> Result<Self::TlsConnect, Self::Error> {
        self.0.make_tls_connect(domain)
    }
}

/// libpq's `sslmode`, all five values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    /// Plaintext only.
    Disable,
    /// TLS when the server offers it, else plaintext.
    Prefer,
    /// TLS or nothing; the chain is checked only when `sslrootcert` is set.
    Require,
    /// TLS with the server's chain checked against `sslrootcert`.
    VerifyCa,
    /// TLS with the chain and the server's host name checked.
    VerifyFull,
}

impl SslMode {
    /// Parses a libpq `sslmode` value.
    pub fn parse(value: &str) -> Result<Self, DbUrlError> {
        Ok(match value {
            "disable" => Self::Disable,
            "prefer" => Self::Prefer,
            "require" => Self::Require,
            "verify-ca" => Self::VerifyCa,
            "verify-full" => Self::VerifyFull,
            // `allow` (plaintext first) is deliberately not offered.
            _ => return Err(DbUrlError::SslMode(value.chars().take(32).collect())),
        })
    }

    /// The libpq spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Disable => "disable",
            Self::Prefer => "prefer",
            Self::Require => "require",
            Self::VerifyCa => "verify-ca",
            Self::VerifyFull => "verify-full",
        }
    }

    /// True when the connection must not go ahead in plaintext.
    pub fn requires_tls(self) -> bool {
        matches!(self, Self::Require | Self::VerifyCa | Self::VerifyFull)
    }
}

/// What is wrong with a connection string (never quoting it: it may hold a password).
#[derive(Debug, thiserror::Error)]
pub enum DbUrlError {
    /// `sslmode` has a value libpq does not know.
    #[error("sslmode={0:?} is not one of disable, prefer, require, verify-ca, verify-full")]
    SslMode(String),
    /// A verifying mode without a CA to verify against.
    #[error("sslmode={0} needs sslrootcert (the CA certificate that issued the server's certificate)")]
    NoRootCert(&'static str),
    /// `sslcert` without `sslkey` or the reverse.
    #[error("sslcert and sslkey must be given together (client certificate authentication)")]
    HalfClientCert,
    /// `sslrootcert=system` (libpq 16) is not supported.
    #[error("sslrootcert=system is not supported: give the path of the CA certificate")]
    SystemRoots,
    /// The string is not a connection string tokio-postgres accepts.
    #[error("invalid connection string: {0}")]
    Syntax(String),
}

/// A parsed connection string: tokio-postgres settings plus the TLS options.
#[derive(Clone)]
pub struct DbTarget {
    /// Everything tokio-postgres understands (its `ssl_mode` set to match [`Self::ssl_mode`]).
    pub config: tokio_postgres::Config,
    ssl_mode: SslMode,
    root_cert: Option<PathBuf>,
    client_cert: Option<(PathBuf, PathBuf)>,
}

impl fmt::Debug for DbTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // No user, password or database name: only where and how.
        f.debug_struct("DbTarget")
            .field("hosts", &self.hosts())
            .field("sslmode", &self.ssl_mode.as_str())
            .field("sslrootcert", &self.root_cert)
            .field("client_cert", &self.client_cert.is_some())
            .finish()
    }
}

impl DbTarget {
    /// Parses a `postgres://` / `postgresql://` URL or a `key=value` string.
    /// `PGSSLMODE`, `PGSSLROOTCERT`, `PGSSLCERT` and `PGSSLKEY` apply when
    /// the string does not say (as in libpq); the default mode is `prefer`.
    pub fn parse(url: &str) -> Result<Self, DbUrlError> {
        Self::parse_with_defaults(url, TlsOptions::from_env())
    }

    fn parse_with_defaults(url: &str, defaults: TlsOptions) -> Result<Self, DbUrlError> {
        let url = url.trim();
        let mut tls = TlsOptions::default();
        let rest = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            strip_url_options(url, &mut tls)?
        } else {
            strip_keyword_options(url, &mut tls)?
        };
        let tls = tls.or(defaults);
        let mut config: tokio_postgres::Config = rest.parse().map_err(|e: tokio_postgres::Error| {
            // tokio-postgres names the option, never the value.
            DbUrlError::Syntax(e.source_text())
        })?;
        if tls.sslrootcert.as_deref() == Some("system") {
            return Err(DbUrlError::SystemRoots);
        }
        let mut ssl_mode = match tls.sslmode.as_deref() {
            Some(v) => SslMode::parse(v)?,
            None => SslMode::Prefer,
        };
        let root_cert = tls.sslrootcert.map(PathBuf::from);
        if root_cert.is_none() && matches!(ssl_mode, SslMode::VerifyCa | SslMode::VerifyFull) {
            return Err(DbUrlError::NoRootCert(ssl_mode.as_str()));
        }
        let client_cert = match (tls.sslcert, tls.sslkey) {
            (Some(c), Some(k)) => Some((PathBuf::from(c), PathBuf::from(k))),
            (None, None) => None,
            _ => return Err(DbUrlError::HalfClientCert),
        };
        let hosts = config.get_hosts();
        if !hosts.is_empty() && hosts.iter().all(|h| matches!(h, Host::Unix(_))) {
            // TLS does not apply to Unix sockets (libpq ignores sslmode there too).
            ssl_mode = SslMode::Disable;
        }
        config.ssl_mode(match ssl_mode {
            SslMode::Disable => tokio_postgres::config::SslMode::Disable,
            SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
            _ => tokio_postgres::config::SslMode::Require,
        });
        Ok(Self { config, ssl_mode, root_cert, client_cert })
    }

    /// The effective `sslmode` (`disable` for Unix sockets).
    pub fn ssl_mode(&self) -> SslMode {
        self.ssl_mode
    }

    /// `host:port` of each host, for messages (no credentials).
    pub fn hosts(&self) -> String {
        let ports = self.config.get_ports();
        self.config
            .get_hosts()
            .iter()
            .enumerate()
            .map(|(i, h)| {
                let port = ports.get(i).or(ports.first()).copied().unwrap_or(5432);
                match h {
                    Host::Tcp(name) => format!("{name}:{port}"),
                    Host::Unix(dir) => format!("{}/.s.PGSQL.{port}", dir.display()),
                }
            })
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The rustls connector for this target (reads the certificate files now,
    /// so a missing or unreadable file fails start-up, naming the option).
    pub fn tls(&self) -> anyhow::Result<DbTls> {
        let provider = crate::tls::provider();
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .context("TLS to PostgreSQL: protocol versions")?;
        let roots = match &self.root_cert {
            Some(path) if self.ssl_mode != SslMode::Disable => {
                let mut roots = RootCertStore::empty();
                let certs =
                    crate::tls::read_certs(path).with_context(|| format!("sslrootcert ({})", path.display()))?;
                for cert in certs {
                    roots
                        .add(cert)
                        .with_context(|| format!("sslrootcert ({}): not a CA certificate", path.display()))?;
                }
                Some(Arc::new(roots))
            }
            _ => None,
        };
        let verifier: Arc<dyn ServerCertVerifier> = match (roots, self.ssl_mode) {
            (Some(roots), SslMode::VerifyFull) => WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
                .build()
                .context("sslrootcert: building the verifier")?,
            // verify-ca, and require/prefer with a CA (libpq checks the chain then too).
            (Some(roots), _) => Arc::new(ChainOnly(
                WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
                    .build()
                    .context("sslrootcert: building the verifier")?,
            )),
            (None, _) => Arc::new(EncryptOnly(provider.clone())),
        };
        let builder = builder.dangerous().with_custom_certificate_verifier(verifier);
        let mut config = match &self.client_cert {
            Some((cert, key)) if self.ssl_mode != SslMode::Disable => {
                let certs = crate::tls::read_certs(cert).with_context(|| format!("sslcert ({})", cert.display()))?;
                let key = crate::tls::read_key(key).with_context(|| format!("sslkey ({})", key.display()))?;
                builder.with_client_auth_cert(certs, key).context("sslcert/sslkey: the key does not fit")?
            }
            _ => builder.with_no_client_auth(),
        };
        // PostgreSQL 17 checks ALPN when the client sends it; older servers ignore it.
        config.alpn_protocols = vec![b"postgresql".to_vec()];
        Ok(DbTls(MakeRustlsConnect::new(config)))
    }
}

/// Reads the connection string from `DATABASE_URL` or the file named by
/// `DATABASE_URL_FILE` (a mounted Secret; surrounding whitespace is
/// dropped). Exactly one may be set; `Ok(None)` when neither is.
pub fn url_from(url: Option<String>, file: Option<&Path>) -> anyhow::Result<Option<String>> {
    match (url.filter(|u| !u.trim().is_empty()), file) {
        (Some(_), Some(_)) => anyhow::bail!("both DATABASE_URL and DATABASE_URL_FILE are set: set only one"),
        (Some(url), None) => Ok(Some(url)),
        (None, Some(path)) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("DATABASE_URL_FILE: reading {}", path.display()))?;
            let text = text.trim();
            anyhow::ensure!(!text.is_empty(), "DATABASE_URL_FILE: {} is empty", path.display());
            Ok(Some(text.to_string()))
        }
        (None, None) => Ok(None),
    }
}

/// Like [`url_from`], for commands that cannot run without a database.
pub fn required_url_from(url: Option<String>, file: Option<&Path>) -> anyhow::Result<String> {
    url_from(url, file)?.context("no database: set DATABASE_URL or DATABASE_URL_FILE")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(url: &str) -> DbTarget {
        DbTarget::parse(url).expect(url)
    }

    #[test]
    fn verify_modes_parse_in_both_forms() {
        let t = parse("host=db.example port=5433 user=app dbname=app sslmode=verify-full sslrootcert=/ca.pem");
        assert_eq!(t.ssl_mode(), SslMode::VerifyFull);
        assert_eq!(t.root_cert.as_deref(), Some(Path::new("/ca.pem")));
        assert_eq!(t.config.get_ssl_mode(), tokio_postgres::config::SslMode::Require);
        assert_eq!(t.hosts(), "db.example:5433");

        let t = parse("postgresql://app:s3cret@db-rw.ns:5432/app?sslmode=verify-ca&sslrootcert=%2Fetc%2Fca.pem&application_name=x");
        assert_eq!(t.ssl_mode(), SslMode::VerifyCa);
        assert_eq!(t.root_cert.as_deref(), Some(Path::new("/etc/ca.pem")));
        assert_eq!(t.config.get_password(), Some(&b"s3cret"[..]));
        assert_eq!(t.config.get_application_name(), Some("x"));
        assert_eq!(t.config.get_dbname(), Some("app"));
    }

    #[test]
    fn quoted_values_and_client_certificates_survive() {
        let t = parse("host='db one' user=app sslmode=require sslcert='/c/my cert.pem' sslkey=/c/key.pem");
        assert_eq!(t.config.get_hosts(), &[Host::Tcp("db one".into())]);
        let t2 = parse(r"host=db password='a\'b c' sslmode=require sslcert=/c.pem sslkey=/k.pem");
        assert_eq!(t2.config.get_password(), Some(&b"a'b c"[..]));
        assert_eq!(t2.client_cert, Some((PathBuf::from("/c.pem"), PathBuf::from("/k.pem"))));
        assert_eq!(t.ssl_mode(), SslMode::Require);
    }

    #[test]
    fn multi_host_urls_keep_every_host_and_the_session_attribute() {
        let t = parse("host=a,b port=5432,5433 target_session_attrs=read-write sslmode=verify-full sslrootcert=/ca");
        assert_eq!(t.hosts(), "a:5432,b:5433");
        let t = parse("postgresql://u@a:1,b:2/db?target_session_attrs=read-write&sslmode=disable");
        assert_eq!(t.hosts(), "a:1,b:2");
        assert_eq!(t.ssl_mode(), SslMode::Disable);
    }

    #[test]
    fn bad_options_are_named_and_passwords_never_quoted() {
        let err = |u: &str| DbTarget::parse(u).unwrap_err().to_string();
        assert!(err("host=h password=hunter2 sslmode=verify-fulll").contains("sslmode=\"verify-fulll\""));
        assert!(err("host=h password=hunter2 sslmode=verify-full").contains("needs sslrootcert"));
        assert!(err("host=h sslmode=require sslcert=/c.pem").contains("sslcert and sslkey"));
        assert!(err("host=h sslrootcert=system sslmode=verify-full").contains("system"));
        for e in [err("host=h password=hunter2 bogus=1"), err("postgresql://u:hunter2@h:notaport/db")] {
            assert!(!e.contains("hunter2"), "{e}");
            assert!(e.starts_with("invalid connection string"), "{e}");
        }
    }

    #[test]
    fn libpq_environment_variables_fill_what_the_string_leaves_out() {
        let env = || TlsOptions {
            sslmode: Some("verify-full".into()),
            sslrootcert: Some("/etc/cpis/db-ca/ca.crt".into()),
            ..Default::default()
        };
        // CloudNativePG's `uri` carries no TLS options: the environment supplies them.
        let t = DbTarget::parse_with_defaults("postgresql://app:pw@cpis-db-rw.cpis.svc:5432/app", env()).unwrap();
        assert_eq!(t.ssl_mode(), SslMode::VerifyFull);
        assert_eq!(t.root_cert.as_deref(), Some(Path::new("/etc/cpis/db-ca/ca.crt")));
        // The string wins where it says something.
        let t = DbTarget::parse_with_defaults("host=h sslmode=verify-ca sslrootcert=/mine.pem", env()).unwrap();
        assert_eq!(t.ssl_mode(), SslMode::VerifyCa);
        assert_eq!(t.root_cert.as_deref(), Some(Path::new("/mine.pem")));
    }

    #[test]
    fn unix_sockets_never_try_tls() {
        let t = parse("host=/run/pg port=5432 user=cpis sslmode=verify-full sslrootcert=/ca");
        assert_eq!(t.ssl_mode(), SslMode::Disable);
        assert_eq!(t.config.get_ssl_mode(), tokio_postgres::config::SslMode::Disable);
    }

    #[test]
    fn missing_certificate_files_fail_naming_the_option() {
        let t = parse("host=h sslmode=verify-full sslrootcert=/nonexistent/ca.pem");
        let e = format!("{:#}", t.tls().unwrap_err());
        assert!(e.contains("sslrootcert"), "{e}");
    }

    #[test]
    fn the_url_comes_from_exactly_one_place() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("uri");
        std::fs::write(&file, "postgresql://app:pw@db:5432/app\n").unwrap();
        assert_eq!(url_from(None, Some(&file)).unwrap().as_deref(), Some("postgresql://app:pw@db:5432/app"));
        assert_eq!(url_from(Some("host=x".into()), None).unwrap().as_deref(), Some("host=x"));
        assert!(url_from(None, None).unwrap().is_none());
        let both = url_from(Some("host=x".into()), Some(&file)).unwrap_err().to_string();
        assert!(both.contains("DATABASE_URL") && both.contains("DATABASE_URL_FILE"), "{both}");
        let neither = required_url_from(None, None).unwrap_err().to_string();
        assert!(neither.contains("DATABASE_URL_FILE"), "{neither}");
        let missing = format!("{:#}", url_from(None, Some(&dir.path().join("absent"))).unwrap_err());
        assert!(missing.contains("DATABASE_URL_FILE"), "{missing}");
    }
}
