//! The development PKI (`cpis certs init|issue`): a CA under
//! `<state-dir>/pki/` and one certificate per identity, with the identity in
//! a `spiffe://` URI SAN. Service certificates also name `localhost` and
//! `127.0.0.1`, so clients connect with full hostname verification.

use anyhow::Context as _;
use cpis_domain::identity::{Caller, CallerKind};
use cpis_runtime::tls::TlsPaths;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, RevocationReason, RevokedCertParams, SanType, SerialNumber,
};
use rustls::pki_types::pem::PemObject as _;
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

    /// Creates the CA unless it exists, and its revocation list (empty at
    /// first) unless that exists: servers configured with a list refuse
    /// every handshake while it is missing. Returns whether the CA was created.
    pub fn init(&self) -> anyhow::Result<bool> {
        if self.exists() {
            if !self.crl_path().exists() {
                self.write_crl(&[])?;
            }
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
        self.write_crl(&[])?;
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

impl Pki {
    /// The certificate revocation list the development servers read
    /// (written, empty, with the CA).
    pub fn crl_path(&self) -> PathBuf {
        self.dir.join("crl.pem")
    }

    fn revoked_list_path(&self) -> PathBuf {
        self.dir.join("revoked-serials.txt")
    }

    /// Revokes the current certificate of `caller`: its serial number joins
    /// the CA's revocation list, which is written anew (servers re-read it).
    pub fn revoke(&self, caller: &Caller) -> anyhow::Result<PathBuf> {
        anyhow::ensure!(self.exists(), "no CA under {}: run `cpis certs init` first", self.dir.display());
        let cert_path = self.paths_for(caller).cert;
        let pem = std::fs::read(&cert_path).with_context(|| format!("reading {}", cert_path.display()))?;
        let der = rustls::pki_types::CertificateDer::from_pem_slice(&pem)
            .with_context(|| format!("parsing {}", cert_path.display()))?;
        let (_, cert) = x509_parser::parse_x509_certificate(&der).context("parsing the certificate")?;
        let serial = hex(cert.raw_serial());

        let mut serials: Vec<String> = std::fs::read_to_string(self.revoked_list_path())
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .filter(|l| !l.is_empty())
            .collect();
        if !serials.contains(&serial) {
            serials.push(serial);
        }
        std::fs::write(self.revoked_list_path(), serials.join("\n") + "\n")?;
        self.write_crl(&serials)
    }

    /// Writes the CA's revocation list of `serials` (hex), signed now.
    fn write_crl(&self, serials: &[String]) -> anyhow::Result<PathBuf> {
        let ca_key = KeyPair::from_pem(&std::fs::read_to_string(self.ca_key_path())?)?;
        let issuer = Issuer::from_ca_cert_pem(&std::fs::read_to_string(self.ca_path())?, ca_key)?;
        let now = OffsetDateTime::now_utc();
        let revoked_certs = serials
            .iter()
            .map(|s| {
                Ok(RevokedCertParams {
                    serial_number: SerialNumber::from(unhex(s)?),
                    revocation_time: now,
                    reason_code: Some(RevocationReason::KeyCompromise),
                    invalidity_date: None,
                })
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let params = CertificateRevocationListParams {
            this_update: now - Duration::minutes(1),
            next_update: now + Duration::days(7),
            crl_number: SerialNumber::from(u64::try_from(now.unix_timestamp()).unwrap_or_default()),
            issuing_distribution_point: None,
            revoked_certs,
            key_identifier_method: rcgen::KeyIdMethod::Sha256,
        };
        let crl = params.signed_by(&issuer)?;
        // Written beside and renamed, so a server never reads half a file.
        let tmp = self.dir.join("crl.pem.tmp");
        std::fs::write(&tmp, crl.pem()?)?;
        std::fs::rename(&tmp, self.crl_path())?;
        Ok(self.crl_path())
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> anyhow::Result<Vec<u8>> {
    anyhow::ensure!(s.len().is_multiple_of(2) && s.is_ascii(), "malformed serial in the revoked list");
    (0..s.len()).step_by(2).map(|i| Ok(u8::from_str_radix(&s[i..i + 2], 16)?)).collect()
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
