//! Mutual TLS 1.3 for servers and clients from PEM files (rustls with the
//! `ring` provider, the only one compiled in).
//!
//! The server asks every client for a certificate but checks the chain after
//! the handshake rather than during it, so that a missing, expired or foreign
//! certificate gets a gRPC `UNAUTHENTICATED` with a reason instead of a bare
//! TLS alert the client cannot interpret. Possession of the key is still
//! proven in the handshake, and no request is served without a verified
//! identity (see [`crate::authz`]).

use anyhow::Context as _;
use cpis_domain::identity::{Caller, IdentityError};
use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, DistinguishedName, RootCertStore, ServerConfig, SignatureScheme};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

/// The one crypto provider of the whole program.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Installs [`provider`] as the process default (for libraries that ask for
/// it, such as tonic's client). Safe to call more than once.
pub fn install_default_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// The three PEM files an endpoint needs (settings `CPIS_TLS_CA`,
/// `CPIS_TLS_CERT`, `CPIS_TLS_KEY`).
#[derive(clap::Args, Debug, Clone)]
pub struct TlsPaths {
    /// The CA certificate(s) that issue every identity (PEM).
    #[arg(long = "ca", env = "CPIS_TLS_CA")]
    pub ca: PathBuf,
    /// This endpoint's certificate chain (PEM).
    #[arg(long = "cert", env = "CPIS_TLS_CERT")]
    pub cert: PathBuf,
    /// This endpoint's PKCS#8 private key (PEM).
    #[arg(long = "key", env = "CPIS_TLS_KEY")]
    pub key: PathBuf,
}

/// Reads every certificate of a PEM file.
pub fn read_certs(path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_file_iter(path)
        .with_context(|| format!("reading certificates from {}", path.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("parsing certificates in {}", path.display()))?;
    anyhow::ensure!(!certs.is_empty(), "no certificate in {}", path.display());
    Ok(certs)
}

/// Reads the private key of a PEM file.
pub fn read_key(path: &Path) -> anyhow::Result<PrivateKeyDer<'static>> {
    PrivateKeyDer::from_pem_file(path).with_context(|| format!("reading private key from {}", path.display()))
}

fn root_store(ca: &Path) -> anyhow::Result<Arc<RootCertStore>> {
    let mut roots = RootCertStore::empty();
    for cert in read_certs(ca)? {
        roots.add(cert).context("adding CA certificate")?;
    }
    Ok(Arc::new(roots))
}

/// The server side of mutual TLS: the rustls config, and the verifier used to
/// turn a connection's client certificate into a [`Caller`].
///
/// The trust bundle (CA file) and the optional certificate revocation list
/// are re-read when their files change, like the certificate: an emergency
/// CA rotation or a revocation takes effect without a restart, on open
/// connections too (see [`ServerTls::recheck`]).
#[derive(Clone)]
pub struct ServerTls {
    config: Arc<ServerConfig>,
    verifier: Arc<Reloading<Arc<dyn ClientCertVerifier>>>,
    trust_domain: String,
}

impl fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerTls").field("trust_domain", &self.trust_domain).finish()
    }
}

/// A client chain as verified on one connection: what [`ServerTls::recheck`]
/// needs to check it again on each request.
#[derive(Debug)]
pub struct VerifiedChain {
    chain: Vec<CertificateDer<'static>>,
    not_after: SystemTime,
    /// The verifier that last accepted the chain; a reloaded trust bundle or
    /// revocation list is a different one, and the chain is checked again.
    verified_by: Mutex<Arc<Arc<dyn ClientCertVerifier>>>,
}

impl ServerTls {
    /// Loads the CA, certificate and key; TLS 1.3 only, ALPN `h2`. The
    /// certificate and key are re-read when the files change (cert-manager
    /// rotation) without touching open connections.
    pub fn load(paths: &TlsPaths, trust_domain: &str) -> anyhow::Result<Self> {
        Self::load_with_crl(paths, None, trust_domain)
    }

    /// [`ServerTls::load`], also refusing client certificates listed in the
    /// PEM certificate revocation list at `crl`.
    ///
    /// Fails closed: while a configured list is missing, unreadable or holds
    /// no list (at start-up, or deleted later), [`ServerTls::trust_loaded`]
    /// is false, so the server reports itself not ready and refuses new
    /// handshakes; open connections keep the last list loaded. It is tried
    /// again every couple of seconds, and the server recovers by itself.
    pub fn load_with_crl(paths: &TlsPaths, crl: Option<&Path>, trust_domain: &str) -> anyhow::Result<Self> {
        let provider = provider();
        let mut files = vec![paths.ca.clone()];
        files.extend(crl.map(Path::to_path_buf));
        let (ca, crl_path, verifier_provider) = (paths.ca.clone(), crl.map(Path::to_path_buf), provider.clone());
        let build = move || client_verifier(&ca, crl_path.as_deref(), verifier_provider.clone());
        // Without the list, a stand-in that trusts the CA alone: it verifies
        // nobody, since no handshake is accepted until the list loads.
        let (ca, stand_in_provider) = (paths.ca.clone(), provider.clone());
        let verifier = Reloading::new_or("client trust bundle", files, build, move || {
            client_verifier(&ca, None, stand_in_provider.clone())
        })?;
        let hints = verifier.current().root_hint_subjects().to_vec();
        let resolver = Arc::new(ReloadingCertResolver::new(paths.clone(), provider.clone())?);
        let mut config = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(Arc::new(DeferredClientVerifier { provider, hints }))
            .with_cert_resolver(resolver);
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Self { config: Arc::new(config), verifier: Arc::new(verifier), trust_domain: trust_domain.to_string() })
    }

    /// The same identities with other ALPN protocols (the FHIR port speaks
    /// HTTP/1.1 as well as HTTP/2).
    pub fn with_alpn(&self, protocols: &[&[u8]]) -> Self {
        let mut config = (*self.config).clone();
        config.alpn_protocols = protocols.iter().map(|p| p.to_vec()).collect();
        Self { config: Arc::new(config), ..self.clone() }
    }

    /// The rustls server configuration.
    pub fn config(&self) -> Arc<ServerConfig> {
        self.config.clone()
    }

    /// The configured trust domain.
    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// True when the trust bundle and the configured revocation list are
    /// loaded as they are on disk now; false while either is missing or
    /// unreadable (then no new handshake is accepted, and readiness fails).
    pub fn trust_loaded(&self) -> bool {
        self.verifier.loaded()
    }

    /// Verifies the client's chain against our CA and reads its identity.
    pub fn identify(&self, peer_certs: Option<&[CertificateDer<'_>]>) -> Result<Caller, IdentityError> {
        self.identify_chain(peer_certs).map(|(caller, _)| caller)
    }

    /// [`ServerTls::identify`], also keeping the chain for [`ServerTls::recheck`].
    pub fn identify_chain(
        &self,
        peer_certs: Option<&[CertificateDer<'_>]>,
    ) -> Result<(Caller, VerifiedChain), IdentityError> {
        let certs = peer_certs.filter(|c| !c.is_empty()).ok_or(IdentityError::NoCertificate)?;
        let chain: Vec<CertificateDer<'static>> = certs.iter().map(|c| c.clone().into_owned()).collect();
        if !self.verifier.loaded() {
            return Err(IdentityError::Untrusted(
                "the server cannot check revocation now (its revocation list is not loaded)".into(),
            ));
        }
        let verifier = self.verifier.current();
        verify(&verifier, &chain)?;
        let caller = Caller::from_certificate(&chain[0], &self.trust_domain)?;
        let not_after = not_after(&chain[0]).ok_or(IdentityError::Malformed("certificate does not parse"))?;
        Ok((caller, VerifiedChain { chain, not_after, verified_by: Mutex::new(verifier) }))
    }

    /// Checks a connection's chain again for one request: it has not expired
    /// since the handshake, and when the trust bundle or the revocation list
    /// has changed since it was last verified, it still verifies. Costs a
    /// clock read while nothing changed.
    pub fn recheck(&self, verified: &VerifiedChain) -> Result<(), IdentityError> {
        if SystemTime::now() > verified.not_after {
            return Err(IdentityError::Untrusted("certificate has expired".into()));
        }
        let current = self.verifier.current();
        let mut last = verified.verified_by.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if !Arc::ptr_eq(&current, &last) {
            verify(&current, &verified.chain)?;
            *last = current;
        }
        Ok(())
    }
}

fn verify(verifier: &Arc<dyn ClientCertVerifier>, chain: &[CertificateDer<'static>]) -> Result<(), IdentityError> {
    let (end_entity, intermediates) = chain.split_first().ok_or(IdentityError::NoCertificate)?;
    verifier
        .verify_client_cert(end_entity, intermediates, UnixTime::now())
        .map(|_| ())
        .map_err(|e| IdentityError::Untrusted(describe_cert_error(&e)))
}

/// The end of a certificate's validity.
fn not_after(der: &CertificateDer<'_>) -> Option<SystemTime> {
    use x509_parser::prelude::FromDer as _;
    let (_, cert) = x509_parser::certificate::X509Certificate::from_der(der).ok()?;
    let secs = u64::try_from(cert.validity().not_after.timestamp()).ok()?;
    Some(SystemTime::UNIX_EPOCH + Duration::from_secs(secs))
}

/// The chain verifier for our CA, refusing what the CRL (if any) revokes.
fn client_verifier(
    ca: &Path,
    crl: Option<&Path>,
    provider: Arc<CryptoProvider>,
) -> anyhow::Result<Arc<dyn ClientCertVerifier>> {
    let mut builder = WebPkiClientVerifier::builder_with_provider(root_store(ca)?, provider);
    if let Some(crl) = crl {
        // A configured list that is missing, unreadable or empty fails: a
        // deleted file must never lift every revocation.
        let crls = CertificateRevocationListDer::pem_file_iter(crl)
            .with_context(|| format!("reading the revocation list {}", crl.display()))?
            .collect::<Result<Vec<_>, _>>()
            .with_context(|| format!("parsing the revocation list {}", crl.display()))?;
        anyhow::ensure!(!crls.is_empty(), "no revocation list in {}", crl.display());
        // Only certificates the list's issuer revoked are refused; a chain
        // from another issuer (mid CA rotation) is not refused for want of a list.
        builder = builder.with_crls(crls).allow_unknown_revocation_status();
    }
    builder.build().context("building the client certificate verifier")
}

fn describe_cert_error(e: &rustls::Error) -> String {
    use rustls::CertificateError as C;
    match e {
        rustls::Error::InvalidCertificate(C::Expired | C::ExpiredContext { .. }) => "certificate has expired".into(),
        rustls::Error::InvalidCertificate(C::NotValidYet | C::NotValidYetContext { .. }) => {
            "certificate is not valid yet".into()
        }
        rustls::Error::InvalidCertificate(C::UnknownIssuer) => "certificate was not issued by our CA".into(),
        rustls::Error::InvalidCertificate(C::BadSignature) => {
            "certificate was not issued by our CA (its signature does not verify)".into()
        }
        rustls::Error::InvalidCertificate(C::InvalidPurpose | C::InvalidPurposeContext { .. }) => {
            "certificate is not valid for client authentication".into()
        }
        rustls::Error::InvalidCertificate(C::Revoked) => "certificate has been revoked".into(),
        other => format!("{other}"),
    }
}

/// Requests a client certificate and checks the handshake signature (the
/// client holds the key), but leaves the chain check to [`ServerTls::identify`].
#[derive(Debug)]
struct DeferredClientVerifier {
    provider: Arc<CryptoProvider>,
    /// The CA names sent to clients (from the trust bundle at start-up: a hint only).
    hints: Vec<DistinguishedName>,
}

impl ClientCertVerifier for DeferredClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &self.hints
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

/// A value built from files and rebuilt when they change: their modification
/// times are compared at most every [`RELOAD_CHECK_INTERVAL`], so the hot path
/// (a TLS handshake) costs a clock read. A rebuild that fails (a file caught
/// mid-write) is logged and the previous value kept. Used for the server's
/// certificate and for outgoing connections' client configuration.
pub(crate) struct Reloading<T> {
    what: &'static str,
    files: Vec<PathBuf>,
    build: Box<dyn Fn() -> anyhow::Result<T> + Send + Sync>,
    state: Mutex<ReloadState<T>>,
}

/// What [`Reloading`] holds between two looks at its files.
struct ReloadState<T> {
    /// When the files were last looked at.
    checked: Instant,
    /// Their modification times when the value was last built.
    stamps: Vec<Option<SystemTime>>,
    /// The value last built.
    value: Arc<T>,
    /// False while the files as they are now cannot be built.
    loaded: bool,
}

/// How often [`Reloading`] looks at the files.
const RELOAD_CHECK_INTERVAL: Duration = Duration::from_secs(2);

impl<T> fmt::Debug for Reloading<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reloading").field("what", &self.what).field("files", &self.files).finish()
    }
}

impl<T> Reloading<T> {
    /// Builds the first value (failing start-up when it cannot be built).
    pub(crate) fn new(
        what: &'static str,
        files: Vec<PathBuf>,
        build: impl Fn() -> anyhow::Result<T> + Send + Sync + 'static,
    ) -> anyhow::Result<Self> {
        let value = Arc::new(build()?);
        Ok(Self::with_first(what, files, Box::new(build), value, true))
    }

    /// Builds the first value, or, when the files cannot be built yet, starts
    /// from `stand_in` and not [`Reloading::loaded`] (failing start-up only
    /// when the stand-in cannot be built either).
    pub(crate) fn new_or(
        what: &'static str,
        files: Vec<PathBuf>,
        build: impl Fn() -> anyhow::Result<T> + Send + Sync + 'static,
        stand_in: impl FnOnce() -> anyhow::Result<T>,
    ) -> anyhow::Result<Self> {
        match build() {
            Ok(value) => Ok(Self::with_first(what, files, Box::new(build), Arc::new(value), true)),
            Err(e) => {
                tracing::error!(what, error = %format!("{e:#}"), "files not usable: not ready until they are");
                let value = Arc::new(stand_in()?);
                Ok(Self::with_first(what, files, Box::new(build), value, false))
            }
        }
    }

    fn with_first(
        what: &'static str,
        files: Vec<PathBuf>,
        build: Box<dyn Fn() -> anyhow::Result<T> + Send + Sync>,
        value: Arc<T>,
        loaded: bool,
    ) -> Self {
        // Not loaded: no stamps, so the next look builds again whatever the files say.
        let stamps = if loaded { files.iter().map(|f| mtime(f)).collect() } else { Vec::new() };
        let state = ReloadState { checked: Instant::now(), stamps, value, loaded };
        Self { what, files, build, state: Mutex::new(state) }
    }

    /// The current value, rebuilt first when the files have changed.
    pub(crate) fn current(&self) -> Arc<T> {
        self.look().value.clone()
    }

    /// True when the value was built from the files as they are now; false
    /// while a change to them cannot be built (a file removed, unreadable
    /// or caught mid-write), which is tried again at the next look.
    pub(crate) fn loaded(&self) -> bool {
        self.look().loaded
    }

    fn look(&self) -> MutexGuard<'_, ReloadState<T>> {
        let mut state = self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if state.checked.elapsed() >= RELOAD_CHECK_INTERVAL {
            state.checked = Instant::now();
            let stamps: Vec<_> = self.files.iter().map(|f| mtime(f)).collect();
            if stamps != state.stamps {
                match (self.build)() {
                    Ok(value) => {
                        tracing::info!(what = self.what, "reloaded from changed files");
                        state.stamps = stamps;
                        state.value = Arc::new(value);
                        state.loaded = true;
                    }
                    Err(e) => {
                        if state.loaded {
                            tracing::warn!(
                                what = self.what,
                                error = %format!("{e:#}"),
                                "changed files not usable; keeping the old ones and refusing new handshakes"
                            );
                        }
                        state.loaded = false;
                    }
                }
            }
        }
        state
    }
}

/// Serves the certificate and key from disk as they are now.
#[derive(Debug)]
struct ReloadingCertResolver(Reloading<CertifiedKey>);

impl ReloadingCertResolver {
    fn new(paths: TlsPaths, provider: Arc<CryptoProvider>) -> anyhow::Result<Self> {
        let files = vec![paths.cert.clone(), paths.key.clone()];
        Ok(Self(Reloading::new("server certificate", files, move || load_certified_key(&paths, &provider))?))
    }
}

impl ResolvesServerCert for ReloadingCertResolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.current())
    }
}

fn mtime(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

fn load_certified_key(paths: &TlsPaths, provider: &CryptoProvider) -> anyhow::Result<CertifiedKey> {
    let certs = read_certs(&paths.cert)?;
    let key = read_key(&paths.key)?;
    let signing_key = provider.key_provider.load_private_key(key).context("loading the private key")?;
    let certified = CertifiedKey::new(certs, signing_key);
    certified.keys_match().context("certificate and key do not match")?;
    Ok(certified)
}
