//! The identity provider's signing keys: a JSON Web Key Set read from a file
//! or fetched over HTTPS, kept in memory and refreshed so that a key rotation
//! needs no restart.
//!
//! The invariants: a key is used only with the one algorithm its type allows
//! (RSA: RS256, EC P-256: ES256; symmetric and other keys are ignored, so no
//! HMAC secret is ever accepted); a token naming an unknown `kid` makes at
//! most one re-read per `min_refresh` interval, however many such tokens
//! arrive (they cannot make us hammer the provider); and a failed re-read
//! keeps the keys already held (the provider being down refuses nobody who
//! was accepted before).

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, JwkSet, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{Mutex, RwLock};

/// Where the keys come from.
#[derive(Debug, Clone)]
pub enum KeySource {
    /// A JWKS document on disk (development, or a mounted ConfigMap).
    File(PathBuf),
    /// The provider's `jwks_uri`, fetched over HTTPS trusting these roots.
    Url {
        /// The `https://` URL.
        url: String,
        /// PEM bundle of the roots to trust for it.
        ca: PathBuf,
    },
}

/// Why no key could be had for a `kid`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyError {
    /// Keys are loaded, and none has that `kid`.
    Unknown,
    /// No key set could ever be loaded.
    Unavailable,
}

/// The keys in memory, by `kid`.
type Keys = HashMap<String, (Algorithm, DecodingKey)>;

/// The identity provider's keys, shared by every request.
#[derive(Clone)]
pub struct KeySet {
    inner: Arc<Inner>,
}

struct Inner {
    source: KeySource,
    min_refresh: Duration,
    keys: RwLock<Option<Keys>>,
    /// The SHA-256 of the document the keys were read from.
    document: std::sync::Mutex<Option<[u8; 32]>>,
    /// Bumped whenever a read finds a document unlike the one held.
    generation: AtomicU64,
    /// When a read last started; held while one is in progress (one at a time).
    last_read: Mutex<Option<Instant>>,
}

impl std::fmt::Debug for KeySet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeySet").field("source", &self.inner.source).finish_non_exhaustive()
    }
}

impl KeySet {
    /// A key set read from `source`, re-read for an unknown `kid` at most
    /// once per `min_refresh`. Nothing is read until [`KeySet::load`].
    pub fn new(source: KeySource, min_refresh: Duration) -> Self {
        Self {
            inner: Arc::new(Inner {
                source,
                min_refresh,
                keys: RwLock::new(None),
                document: std::sync::Mutex::new(None),
                generation: AtomicU64::new(0),
                last_read: Mutex::new(None),
            }),
        }
    }

    /// Reads the keys now; on failure the keys held so far are kept.
    pub async fn load(&self) -> anyhow::Result<usize> {
        let mut last = self.inner.last_read.lock().await;
        *last = Some(Instant::now());
        self.read_into_memory().await
    }

    async fn read_into_memory(&self) -> anyhow::Result<usize> {
        let document = match &self.inner.source {
            KeySource::File(path) => tokio::fs::read(path).await?,
            KeySource::Url { url, ca } => super::fetch::get(url, ca).await?,
        };
        let keys = parse(&document)?;
        let n = keys.len();
        let digest: [u8; 32] = Sha256::digest(&document).into();
        let mut held = self.inner.keys.write().await;
        let mut last = self.inner.document.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if *last != Some(digest) {
            *last = Some(digest);
            *held = Some(keys);
            self.inner.generation.fetch_add(1, Ordering::SeqCst);
        }
        Ok(n)
    }

    /// Which key set is held: it changes whenever a read finds a document
    /// unlike the last one, so a token verified under an earlier one (see
    /// [`super::verified`]) is verified again.
    pub fn generation(&self) -> u64 {
        self.inner.generation.load(Ordering::SeqCst)
    }

    /// The key named `kid` and its algorithm, re-reading the set once if
    /// `kid` is unknown and the last read is older than the interval.
    pub async fn key(&self, kid: &str) -> Result<(Algorithm, DecodingKey), KeyError> {
        if let Some(found) = self.lookup(kid).await? {
            return Ok(found);
        }
        {
            let mut last = self.inner.last_read.lock().await;
            // Another request may have re-read while this one waited.
            if let Some(found) = self.lookup(kid).await? {
                return Ok(found);
            }
            if last.is_some_and(|t| t.elapsed() < self.inner.min_refresh) {
                return Err(self.missing().await);
            }
            *last = Some(Instant::now());
            match self.read_into_memory().await {
                Ok(n) => tracing::info!(keys = n, "identity provider keys re-read for an unknown key id"),
                Err(e) => tracing::warn!(error = %e, "identity provider keys could not be re-read; keeping those held"),
            }
        }
        match self.lookup(kid).await? {
            Some(found) => Ok(found),
            None => Err(self.missing().await),
        }
    }

    async fn lookup(&self, kid: &str) -> Result<Option<(Algorithm, DecodingKey)>, KeyError> {
        Ok(self.inner.keys.read().await.as_ref().and_then(|k| k.get(kid).cloned()))
    }

    /// Unknown when a set is held, unavailable when none ever was.
    async fn missing(&self) -> KeyError {
        if self.inner.keys.read().await.is_some() {
            KeyError::Unknown
        } else {
            KeyError::Unavailable
        }
    }

    /// Re-reads the set every `every` until `stop` fires, so that keys the
    /// provider withdrew stop working and new ones are ready before use.
    pub fn spawn_refresh(&self, every: Duration, stop: tokio_util::sync::CancellationToken) {
        let keys = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(every) => {}
                }
                if let Err(e) = keys.load().await {
                    tracing::warn!(error = %e, "identity provider keys could not be re-read; keeping those held");
                }
            }
        });
    }
}

/// The usable signing keys of a JWKS document, by `kid`.
pub fn parse(document: &[u8]) -> anyhow::Result<Keys> {
    let set: JwkSet = serde_json::from_slice(document).map_err(|e| anyhow::anyhow!("not a JWKS document: {e}"))?;
    let mut keys = HashMap::new();
    for jwk in &set.keys {
        let Some(kid) = jwk.common.key_id.clone().filter(|k| !k.is_empty()) else { continue };
        let Some(alg) = algorithm_of(jwk) else { continue };
        match DecodingKey::from_jwk(jwk) {
            Ok(key) => {
                keys.insert(kid, (alg, key));
            }
            Err(e) => tracing::warn!(%kid, error = %e, "a key of the identity provider's set does not decode; skipped"),
        }
    }
    if keys.is_empty() {
        anyhow::bail!("the JWKS document has no RS256 or ES256 signing key with a kid");
    }
    Ok(keys)
}

/// The one algorithm a key may verify: RS256 for RSA, ES256 for EC P-256;
/// `None` for anything else (symmetric keys, other curves, encryption keys).
fn algorithm_of(jwk: &Jwk) -> Option<Algorithm> {
    if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption) | Some(PublicKeyUse::Other(_))) {
        return None;
    }
    let (alg, named) = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => (Algorithm::RS256, KeyAlgorithm::RS256),
        AlgorithmParameters::EllipticCurve(ec) if ec.curve == EllipticCurve::P256 => {
            (Algorithm::ES256, KeyAlgorithm::ES256)
        }
        _ => return None,
    };
    match jwk.common.key_algorithm {
        None => Some(alg),
        Some(stated) if stated == named => Some(alg),
        Some(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EC: &str = r#"{"kty":"EC","crv":"P-256","kid":"ec-1","use":"sig",
        "x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}"#;

    #[test]
    fn only_asymmetric_signing_keys_with_a_kid_are_kept() {
        let doc = format!(
            r#"{{"keys":[{EC},
            {{"kty":"oct","kid":"hmac","k":"c2VjcmV0"}},
            {{"kty":"EC","crv":"P-256","kid":"enc","use":"enc","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}},
            {{"kty":"EC","crv":"P-256","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}}]}}"#
        );
        let keys = parse(doc.as_bytes()).unwrap();
        assert_eq!(keys.keys().collect::<Vec<_>>(), ["ec-1"]);
        assert_eq!(keys["ec-1"].0, Algorithm::ES256);
        assert!(parse(br#"{"keys":[{"kty":"oct","kid":"hmac","k":"c2VjcmV0"}]}"#).is_err());
        assert!(parse(b"not json").is_err());
    }

    #[tokio::test]
    async fn an_unknown_kid_rereads_at_most_once_per_interval() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jwks.json");
        std::fs::write(&path, format!(r#"{{"keys":[{EC}]}}"#)).unwrap();
        let keys = KeySet::new(KeySource::File(path.clone()), Duration::from_secs(3600));
        assert!(keys.key("ec-1").await.is_ok(), "an empty set reads on first use");
        // A new key appears; the interval has not passed since the first read.
        std::fs::write(&path, format!(r#"{{"keys":[{EC},{}]}}"#, EC.replace("ec-1", "ec-2"))).unwrap();
        assert_eq!(keys.key("ec-2").await.err(), Some(KeyError::Unknown));
        let eager = KeySet::new(KeySource::File(path.clone()), Duration::ZERO);
        eager.load().await.unwrap();
        assert!(eager.key("ec-2").await.is_ok());
        // The generation moves only when the document does.
        let generation = eager.generation();
        eager.load().await.unwrap();
        assert_eq!(eager.generation(), generation, "the same document again");
        std::fs::write(&path, format!(r#"{{"keys":[{}]}}"#, EC.replace("ec-1", "ec-2"))).unwrap();
        eager.load().await.unwrap();
        assert_eq!(eager.generation(), generation + 1, "a key withdrawn");
        assert_eq!(eager.key("ec-1").await.err(), Some(KeyError::Unknown));
        // A broken file keeps what is held.
        std::fs::write(&path, "garbage").unwrap();
        assert!(eager.load().await.is_err());
        assert!(eager.key("ec-2").await.is_ok());
        assert_eq!(eager.generation(), generation + 1);
        // Nothing ever loaded: unavailable, not unknown.
        let never = KeySet::new(KeySource::File(dir.path().join("absent.json")), Duration::ZERO);
        assert_eq!(never.key("ec-1").await.err(), Some(KeyError::Unavailable));
    }
}
