//! A development identity provider (`cpis users token`, `cpis dev`, tests,
//! benchmark): a signing key and its JSON Web Key Set under
//! `<state-dir>/users/`, and tokens shaped as the NHS Care Identity Service
//! (CIS2) issues them, so the Attendance service verifies development users
//! exactly as it verifies real ones. Nothing here runs in a service.
//!
//! Files: `users/jwks.json` (what the Attendance service reads,
//! `CPIS_OIDC_JWKS_FILE`), and one `users/key-<kid>.pem` (PKCS#8) per
//! signing key; the newest (`users/current`) signs.

use anyhow::Context as _;
use base64::Engine as _;
use chrono::Utc;
use cpis_runtime::users::UserAuthSettings;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The development issuer (`iss`), as `cpis dev` configures the Attendance service.
pub const DEV_ISSUER: &str = "https://localhost/cpis-dev-identity";
/// The development audience (`aud`).
pub const DEV_AUDIENCE: &str = "cpis";

/// A signing key with its public half as a JWK.
#[derive(Debug, Clone)]
pub struct SigningKey {
    /// Its key id.
    pub kid: String,
    /// RS256 or ES256.
    pub alg: Algorithm,
    /// The private key, PKCS#8 PEM.
    pub pem: String,
    /// The public key as a JWK (with `kid`, `alg`, `use`).
    pub jwk: Value,
}

impl SigningKey {
    /// A new ECDSA P-256 key (ES256).
    pub fn generate_es256() -> anyhow::Result<Self> {
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let point = pair.public_key_raw();
        anyhow::ensure!(point.len() == 65 && point[0] == 4, "unexpected P-256 public key encoding");
        let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
        let kid = format!("dev-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
        let jwk = json!({"kty": "EC", "crv": "P-256", "use": "sig", "alg": "ES256", "kid": kid,
                         "x": b64(&point[1..33]), "y": b64(&point[33..])});
        Ok(Self { kid, alg: Algorithm::ES256, pem: pair.serialize_pem(), jwk })
    }

    /// Signs `claims` with this key (header: its algorithm and `kid`).
    pub fn sign(&self, claims: &Value) -> anyhow::Result<String> {
        let key = match self.alg {
            Algorithm::ES256 => EncodingKey::from_ec_pem(self.pem.as_bytes())?,
            Algorithm::RS256 => EncodingKey::from_rsa_pem(self.pem.as_bytes())?,
            other => anyhow::bail!("development keys are RS256 or ES256, not {other:?}"),
        };
        let mut header = Header::new(self.alg);
        header.kid = Some(self.kid.clone());
        Ok(jsonwebtoken::encode(&header, claims, &key)?)
    }
}

/// What a development token says about its person.
#[derive(Debug, Clone)]
pub struct TokenSpec {
    /// ODS code of the organisation the role is held at (the setting's own).
    pub setting: String,
    /// The person's name.
    pub name: String,
    /// SDS role profile id (`person_roleid`, what `NHSD-Session-URID` names); derived when `None`.
    pub role_profile: Option<String>,
    /// Job role: `R8000` (category filled in) or a whole `S..:G..:R..` code.
    pub job_role: String,
    /// National RBAC activity codes (`B0107`, `B0170`).
    pub activities: Vec<String>,
    /// How long the token is valid.
    pub ttl: Duration,
}

impl TokenSpec {
    /// A clinician at `setting` with `activities`, valid for 15 minutes.
    pub fn new(setting: &str, activities: &[&str]) -> Self {
        Self {
            setting: setting.into(),
            name: "Dev Clinician".into(),
            role_profile: None,
            job_role: "R8000".into(),
            activities: activities.iter().map(|a| a.to_string()).collect(),
            ttl: Duration::from_secs(15 * 60),
        }
    }
}

/// A signed development token and the role to send with it.
#[derive(Debug, Clone)]
pub struct DevToken {
    /// The JWT (`authorization: Bearer <token>`).
    pub token: String,
    /// The selected role (`NHSD-Session-URID`).
    pub role_id: String,
    /// The SDS user id it names.
    pub user_id: String,
    /// When it expires.
    pub expires_at: chrono::DateTime<Utc>,
}

/// The development identity provider under `<state-dir>/users`.
#[derive(Debug, Clone)]
pub struct DevUsers {
    dir: PathBuf,
}

impl DevUsers {
    /// The provider under `state_dir`.
    pub fn new(state_dir: &Path) -> Self {
        Self { dir: state_dir.join("users") }
    }

    /// The key set the Attendance service reads.
    pub fn jwks_path(&self) -> PathBuf {
        self.dir.join("jwks.json")
    }

    /// Creates a signing key and the key set unless they exist.
    pub fn init(&self) -> anyhow::Result<()> {
        if self.dir.join("current").exists() && self.jwks_path().exists() {
            return Ok(());
        }
        self.add_key(&SigningKey::generate_es256()?)
    }

    /// Publishes `key` in the key set (keeping the others, as a provider
    /// rotating its keys does) and makes it the one that signs.
    pub fn add_key(&self, key: &SigningKey) -> anyhow::Result<()> {
        std::fs::create_dir_all(&self.dir).with_context(|| format!("creating {}", self.dir.display()))?;
        write_private(&self.dir.join(format!("key-{}.pem", key.kid)), &key.pem)?;
        let mut set = self.key_set().unwrap_or_else(|_| json!({"keys": []}));
        if let Some(keys) = set["keys"].as_array_mut() {
            keys.retain(|k| k["kid"] != key.jwk["kid"]);
            keys.push(key.jwk.clone());
        }
        // Written whole, then renamed: a reader never sees half a file.
        let tmp = self.dir.join("jwks.json.tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(&set)?)?;
        std::fs::rename(&tmp, self.jwks_path())?;
        std::fs::write(self.dir.join("current"), format!("{}\n{:?}\n", key.kid, key.alg))?;
        Ok(())
    }

    fn key_set(&self) -> anyhow::Result<Value> {
        Ok(serde_json::from_slice(&std::fs::read(self.jwks_path())?)?)
    }

    /// The key that signs now.
    pub fn signing_key(&self) -> anyhow::Result<SigningKey> {
        let current = std::fs::read_to_string(self.dir.join("current")).with_context(|| {
            format!("no development signing key under {}: run `cpis dev` first", self.dir.display())
        })?;
        let mut lines = current.lines();
        let kid = lines.next().unwrap_or_default().to_string();
        let alg = if lines.next() == Some("RS256") { Algorithm::RS256 } else { Algorithm::ES256 };
        let pem = std::fs::read_to_string(self.dir.join(format!("key-{kid}.pem")))?;
        let jwk = self
            .key_set()?
            .get("keys")
            .and_then(Value::as_array)
            .and_then(|keys| keys.iter().find(|k| k["kid"] == kid.as_str()).cloned())
            .context("the signing key is not in the key set")?;
        Ok(SigningKey { kid, alg, pem, jwk })
    }

    /// Signs arbitrary claims with the current key (tests craft bad tokens with it).
    pub fn sign(&self, claims: &Value) -> anyhow::Result<String> {
        self.signing_key()?.sign(claims)
    }

    /// A token for the person `spec` describes.
    pub fn token(&self, spec: &TokenSpec) -> anyhow::Result<DevToken> {
        let claims = claims(spec, Utc::now());
        let token = self.sign(&claims)?;
        Ok(DevToken {
            token,
            role_id: claims["selected_roleid"].as_str().unwrap_or_default().to_string(),
            user_id: claims["nhsid_useruid"].as_str().unwrap_or_default().to_string(),
            expires_at: Utc::now() + chrono::TimeDelta::from_std(spec.ttl).unwrap_or_default(),
        })
    }

    /// How the Attendance service verifies these tokens.
    pub fn user_auth_settings(&self) -> UserAuthSettings {
        UserAuthSettings {
            issuer: Some(DEV_ISSUER.into()),
            audience: Some(DEV_AUDIENCE.into()),
            jwks_file: Some(self.jwks_path()),
            jwks_min_refresh: Duration::from_secs(1),
            ..UserAuthSettings::default()
        }
    }
}

/// The CIS2-shaped claims of a development token issued at `now`.
pub fn claims(spec: &TokenSpec, now: chrono::DateTime<Utc>) -> Value {
    let user_id = digits(&format!("user:{}", spec.name), "5550");
    let role_id = spec.role_profile.clone().unwrap_or_else(|| {
        digits(&format!("role:{}:{}:{}", spec.name, spec.setting, spec.activities.join(",")), "5551")
    });
    let role_code =
        if spec.job_role.contains(':') { spec.job_role.clone() } else { format!("S8000:G8000:{}", spec.job_role) };
    let job_role = role_code.rsplit(':').next().unwrap_or_default();
    let ttl = i64::try_from(spec.ttl.as_secs()).unwrap_or(i64::MAX / 2);
    json!({
        "iss": DEV_ISSUER,
        "aud": DEV_AUDIENCE,
        "sub": user_id,
        "iat": now.timestamp(),
        "nbf": now.timestamp(),
        "exp": now.timestamp().saturating_add(ttl),
        "nhsid_useruid": user_id,
        "name": spec.name,
        "selected_roleid": role_id,
        "nhsid_nrbac_roles": [{
            "person_orgid": digits(&format!("org:{}:{}", spec.name, spec.setting), "5552"),
            "person_roleid": role_id,
            "org_code": spec.setting,
            "role_code": role_code,
            "role_name": format!("\"Clinical\":\"Clinical Provision\":\"{}\"", job_role_name(job_role)),
            "activity_codes": spec.activities,
        }],
        "nhsid_user_orgs": [{"org_code": spec.setting, "org_name": format!("Development organisation {}", spec.setting)}],
    })
}

/// The national RBAC name of a job role code (the common access roles).
pub fn job_role_name(code: &str) -> String {
    match code {
        "R8000" => "Clinical Practitioner Access Role".into(),
        "R8001" => "Nurse Access Role".into(),
        "R8003" => "Health Professional Access Role".into(),
        "R8004" => "Healthcare Student Access Role".into(),
        "R8006" => "Medical Secretary Access Role".into(),
        "R8008" => "Admin/Clinical Support Access Role".into(),
        "R8009" => "Receptionist Access Role".into(),
        "R8010" => "Clerical Access Role".into(),
        other => format!("Job role {other}"),
    }
}

/// A stable 12-digit id from `seed`, starting with `prefix` (SDS ids are 12 digits).
fn digits(seed: &str, prefix: &str) -> String {
    let hash = seed.bytes().fold(0xcbf29ce484222325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100000001b3));
    let width = 12 - prefix.len();
    format!("{prefix}{:0width$}", hash % 10u64.pow(width as u32))
}

/// Writes a private key readable by its owner only.
fn write_private(path: &Path, pem: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    file.write_all(pem.as_bytes())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_stable_twelve_digit_numbers() {
        assert_eq!(digits("user:A", "5550"), digits("user:A", "5550"));
        assert_ne!(digits("user:A", "5550"), digits("user:B", "5550"));
        assert_eq!(digits("x", "5551").len(), 12);
        assert!(digits("x", "5551").bytes().all(|b| b.is_ascii_digit()));
    }

    #[test]
    fn a_token_is_signed_by_the_key_in_the_set() {
        let dir = tempfile::tempdir().unwrap();
        let users = DevUsers::new(dir.path());
        users.init().unwrap();
        let token = users.token(&TokenSpec::new("RBQ01", &["B0107"])).unwrap();
        let keys = cpis_runtime::users::jwks::parse(&std::fs::read(users.jwks_path()).unwrap()).unwrap();
        let header = jsonwebtoken::decode_header(&token.token).unwrap();
        let (alg, key) = &keys[header.kid.as_deref().unwrap()];
        let mut validation = jsonwebtoken::Validation::new(*alg);
        validation.set_audience(&[DEV_AUDIENCE]);
        let data = jsonwebtoken::decode::<Value>(&token.token, key, &validation).unwrap();
        assert_eq!(data.claims["nhsid_nrbac_roles"][0]["person_roleid"], token.role_id.as_str());
        // A second key joins the set; the first stays.
        users.add_key(&SigningKey::generate_es256().unwrap()).unwrap();
        assert_eq!(cpis_runtime::users::jwks::parse(&std::fs::read(users.jwks_path()).unwrap()).unwrap().len(), 2);
    }
}
