//! The development PKI (`cpis certs init|issue`): a CA under
//! `<state-dir>/pki/` and one certificate per identity, with the identity in
//! a `spiffe://` URI SAN. Service certificates also name `localhost` and
//! `127.0.0.1`, so clients connect with full hostname verification.

use crate::identity::{Caller, CallerKind};
use crate::tls::TlsPaths;
use anyhow::Context as _;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    SanType,
};
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use time::{Duration, OffsetDateTime};

/// A development PKI rooted at `<state-dir>/pki`.
#[derive(Debug, Clone)]
pub struct Pki {
    dir: PathBuf,
}

/// What to put in a certificate issued by [`Pki::issue_custom`] (tests use it
/// for hostile identities: no URI SAN, expired, another trust domain).
#[derive(Debug, Clone)]
pub struct IssueOptions {
    /// The URI SAN, if any.
    pub uri: Option<String>,
    /// Also valid as a server for `localhost` / `127.0.0.1`.
    pub server: bool,
    /// Start of validity.
    pub not_before: OffsetDateTime,
    /// End of validity.
    pub not_after: OffsetDateTime,
}

impl IssueOptions {
    /// A client certificate for `uri`, valid from yesterday for a year.
    pub fn client(uri: Option<String>) -> Self {
        let now = OffsetDateTime::now_utc();
        Self { uri, server: false, not_before: now - Duration::days(1), not_after: now + Duration::days(365) }
    }
}

impl Pki {
    /// The PKI under `state_dir`.
    pub fn new(state_dir: &Path) -> Self {
        Self { dir: state_dir.join("pki") }
    }

    /// The folder holding every PEM file.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The CA certificate.
    pub fn ca_path(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    fn ca_key_path(&self) -> PathBuf {
        self.dir.join("ca-key.pem")
    }

    /// True when the CA exists.
    pub fn exists(&self) -> bool {
        self.ca_path().exists() && self.ca_key_path().exists()
    }

    /// Creates the CA unless it exists. Returns whether it was created.
    pub fn init(&self) -> anyhow::Result<bool> {
        if self.exists() {
            return Ok(false);
        }
        std::fs::create_dir_all(&self.dir).with_context(|| format!("creating {}", self.dir.display()))?;
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages =
            vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        params.distinguished_name.push(DnType::CommonName, "cpis development CA");
        params.distinguished_name.push(DnType::OrganizationName, "cpis (development only)");
        let now = OffsetDateTime::now_utc();
        params.not_before = now - Duration::days(1);
        params.not_after = now + Duration::days(3650);
        let cert = params.self_signed(&key)?;
        write_private(&self.ca_key_path(), &key.serialize_pem())?;
        std::fs::write(self.ca_path(), cert.pem())?;
        Ok(true)
    }

    /// Where the certificate of `caller` lives.
    pub fn paths_for(&self, caller: &Caller) -> TlsPaths {
        let stem = format!("{}-{}", caller.kind().as_str(), caller.code());
        self.paths_named(&stem)
    }

    /// Where a certificate named `stem` lives.
    pub fn paths_named(&self, stem: &str) -> TlsPaths {
        TlsPaths {
            ca: self.ca_path(),
            cert: self.dir.join(format!("{stem}.pem")),
            key: self.dir.join(format!("{stem}-key.pem")),
        }
    }

    /// Issues (or re-issues) the certificate of `caller` in `trust_domain`.
    pub fn issue(&self, caller: &Caller, trust_domain: &str) -> anyhow::Result<TlsPaths> {
        let mut options = IssueOptions::client(Some(caller.spiffe_id(trust_domain)));
        options.server = caller.kind() == CallerKind::Service;
        let stem = format!("{}-{}", caller.kind().as_str(), caller.code());
        self.issue_custom(&stem, &options)
    }

    /// Issues the certificate of `caller` unless one exists already.
    pub fn ensure(&self, caller: &Caller, trust_domain: &str) -> anyhow::Result<TlsPaths> {
        let paths = self.paths_for(caller);
        if paths.cert.exists() && paths.key.exists() {
            return Ok(paths);
        }
        self.issue(caller, trust_domain)
    }

    /// Issues the certificate of service `caller`, also valid as a server at
    /// `addresses` (a service reached by IP address, e.g. across the network
    /// namespaces of the fault tests).
    pub fn issue_service_at(
        &self,
        caller: &Caller,
        trust_domain: &str,
        addresses: &[IpAddr],
    ) -> anyhow::Result<TlsPaths> {
        let mut options = IssueOptions::client(Some(caller.spiffe_id(trust_domain)));
        options.server = true;
        let stem = format!("{}-{}", caller.kind().as_str(), caller.code());
        self.issue_with(&stem, &options, addresses)
    }

    /// Issues a certificate named `stem` as `options` say.
    pub fn issue_custom(&self, stem: &str, options: &IssueOptions) -> anyhow::Result<TlsPaths> {
        self.issue_with(stem, options, &[])
    }

    fn issue_with(&self, stem: &str, options: &IssueOptions, addresses: &[IpAddr]) -> anyhow::Result<TlsPaths> {
        anyhow::ensure!(self.exists(), "no CA under {}: run `cpis certs init` first", self.dir.display());
        let ca_key = KeyPair::from_pem(&std::fs::read_to_string(self.ca_key_path())?)?;
        let issuer = Issuer::from_ca_cert_pem(&std::fs::read_to_string(self.ca_path())?, ca_key)?;

        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name.push(DnType::CommonName, stem);
        if let Some(uri) = &options.uri {
            params.subject_alt_names.push(SanType::URI(uri.as_str().try_into()?));
        }
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        if options.server {
            params.extended_key_usages.push(ExtendedKeyUsagePurpose::ServerAuth);
            params.subject_alt_names.push(SanType::DnsName("localhost".try_into()?));
            params.subject_alt_names.push(SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)));
            params.subject_alt_names.extend(addresses.iter().map(|a| SanType::IpAddress(*a)));
        }
        params.not_before = options.not_before;
        params.not_after = options.not_after;
        params.use_authority_key_identifier_extension = true;
        let cert = params.signed_by(&key, &issuer)?;

        let paths = self.paths_named(stem);
        std::fs::write(&paths.cert, cert.pem())?;
        write_private(&paths.key, &key.serialize_pem())?;
        Ok(paths)
    }
}

/// Writes a file readable by its owner only.
fn write_private(path: &Path, contents: &str) -> anyhow::Result<()> {
    use std::io::Write;
    #[cfg(unix)]
    use std::os::unix::fs::OpenOptionsExt;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    options.mode(0o600);
    let mut f = options.open(path).with_context(|| format!("writing {}", path.display()))?;
    f.write_all(contents.as_bytes())?;
    Ok(())
}
