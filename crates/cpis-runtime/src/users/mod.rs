//! The person behind a setting's request, verified on every call that shows
//! a flag or a history: a tower layer beside authorization, so gRPC and the
//! FHIR port get it the same way, and handlers receive a [`UserContext`]
//! next to the [`Caller`].
//!
//! A request from a setting to one of [`USER_METHODS`] carries the person's
//! CIS2 token (`authorization: Bearer <JWT>`) and the role selected for the
//! session (`nhsd-session-urid`, else the token's `selected_roleid`). The
//! layer verifies the token ([`token`]) against the identity provider's keys
//! ([`jwks`]), finds the role among the token's `nhsid_nrbac_roles`, and
//! checks that it is held at the calling setting's organisation. A token that
//! fails, or a role that is not the token's, is `UNAUTHENTICATED`; a role of
//! another organisation is `PERMISSION_DENIED`. Which activity an operation
//! needs is the operation's to check (`cpis_domain::user::Access`), since a
//! FHIR search is notifying or silent by a header.
//!
//! Neither the token nor the person's name is ever logged or put on a span.

mod fetch;
pub mod jwks;
pub mod token;
pub mod verified;

use crate::error::ApiError;
use cpis_domain::identity::Caller;
use cpis_domain::user::{Role, User, Viewer};
use futures::future::BoxFuture;
use jwks::{KeySet, KeySource};
use std::path::PathBuf;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use token::{Claims, Expectations, TokenError};
use tower::{Layer, Service};
use verified::VerifiedTokens;

pub use crate::authz::USER_METHODS;

/// The session's role header (lower case, as HTTP/2 carries it).
pub const SESSION_URID_HEADER: &str = "nhsd-session-urid";

/// Whether requests must carry a user token.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum UserAuthMode {
    /// Every setting-facing call needs a verified user token.
    #[default]
    Required,
    /// Migration only: a call without a token uses its request's `user_id`,
    /// and the access is marked unverified wherever it is shown.
    Optional,
}

/// How people's tokens are verified (settings of the Attendance service).
#[derive(clap::Args, Debug, Clone)]
pub struct UserAuthSettings {
    /// Whether setting-facing calls need a user token: `required` (the
    /// default), or `optional` during a migration only.
    #[arg(long = "user-auth", env = "CPIS_USER_AUTH", value_enum, default_value = "required")]
    pub mode: UserAuthMode,
    /// The identity provider's issuer (`iss`), e.g. CIS2's.
    #[arg(long = "oidc-issuer", env = "CPIS_OIDC_ISSUER")]
    pub issuer: Option<String>,
    /// The audience (`aud`) a token must name: this API's client id.
    #[arg(long = "oidc-audience", env = "CPIS_OIDC_AUDIENCE")]
    pub audience: Option<String>,
    /// The identity provider's JSON Web Key Set URL (https://).
    #[arg(long = "oidc-jwks-url", env = "CPIS_OIDC_JWKS_URL")]
    pub jwks_url: Option<String>,
    /// A JSON Web Key Set file, instead of the URL.
    #[arg(long = "oidc-jwks-file", env = "CPIS_OIDC_JWKS_FILE")]
    pub jwks_file: Option<PathBuf>,
    /// PEM roots trusted for the JWKS URL (default: the system's bundle).
    #[arg(long = "oidc-jwks-ca", env = "CPIS_OIDC_JWKS_CA")]
    pub jwks_ca: Option<PathBuf>,
    /// Least seconds between two re-reads of the key set for a token with an unknown key id.
    #[arg(long = "oidc-jwks-refresh-secs", env = "CPIS_OIDC_JWKS_REFRESH_SECS", default_value = "30", value_parser = crate::args::secs)]
    pub jwks_min_refresh: Duration,
    /// Seconds between re-reads of the key set in the background.
    #[arg(long = "oidc-jwks-max-age-secs", env = "CPIS_OIDC_JWKS_MAX_AGE_SECS", default_value = "300", value_parser = crate::args::secs)]
    pub jwks_max_age: Duration,
    /// Clock skew allowed on a token's `exp` and `nbf`, in seconds.
    #[arg(long = "oidc-leeway-secs", env = "CPIS_OIDC_LEEWAY_SECS", default_value = "30", value_parser = crate::args::secs)]
    pub leeway: Duration,
    /// Longest accepted token, in bytes.
    #[arg(long = "oidc-max-token-bytes", env = "CPIS_OIDC_MAX_TOKEN_BYTES", default_value_t = 16_384)]
    pub max_token_bytes: usize,
    /// Verified tokens kept per instance so that a token's signature is
    /// checked once, not on every call, until it expires or the key set
    /// changes (0: verify every call).
    #[arg(long = "oidc-verified-tokens", env = "CPIS_OIDC_VERIFIED_TOKENS", default_value_t = 10_000)]
    pub verified_tokens: usize,
}

impl Default for UserAuthSettings {
    fn default() -> Self {
        crate::args::defaults()
    }
}

/// The system's trust bundle, where Debian and distroless keep it.
const SYSTEM_ROOTS: &str = "/etc/ssl/certs/ca-certificates.crt";

impl UserAuthSettings {
    /// Checks the settings, naming the variable that is wrong.
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(self.issuer.as_deref().is_some_and(|s| !s.is_empty()), "CPIS_OIDC_ISSUER must be set");
        anyhow::ensure!(self.audience.as_deref().is_some_and(|s| !s.is_empty()), "CPIS_OIDC_AUDIENCE must be set");
        match (&self.jwks_url, &self.jwks_file) {
            (Some(_), Some(_)) => anyhow::bail!("set CPIS_OIDC_JWKS_URL or CPIS_OIDC_JWKS_FILE, not both"),
            (None, None) => anyhow::bail!("CPIS_OIDC_JWKS_URL or CPIS_OIDC_JWKS_FILE must be set"),
            (Some(url), None) => {
                anyhow::ensure!(url.starts_with("https://"), "CPIS_OIDC_JWKS_URL must be an https:// URL")
            }
            (None, Some(_)) => {}
        }
        anyhow::ensure!(self.max_token_bytes >= 1024, "CPIS_OIDC_MAX_TOKEN_BYTES must be at least 1024");
        anyhow::ensure!(self.leeway <= Duration::from_secs(300), "CPIS_OIDC_LEEWAY_SECS must be at most 300");
        Ok(())
    }

    fn source(&self) -> anyhow::Result<KeySource> {
        Ok(match (&self.jwks_url, &self.jwks_file) {
            (Some(url), _) => KeySource::Url {
                url: url.clone(),
                ca: self
                    .jwks_ca
                    .clone()
                    .or_else(|| std::env::var_os("SSL_CERT_FILE").map(PathBuf::from))
                    .unwrap_or_else(|| PathBuf::from(SYSTEM_ROOTS)),
            },
            (None, Some(file)) => KeySource::File(file.clone()),
            (None, None) => anyhow::bail!("CPIS_OIDC_JWKS_URL or CPIS_OIDC_JWKS_FILE must be set"),
        })
    }
}

/// The person of a request, as the layer established it.
#[derive(Debug, Clone)]
pub enum UserContext {
    /// A verified token, and the role it selected.
    Verified(Box<User>),
    /// No token, in the migration mode only.
    Unverified,
}

/// Verifies the people behind setting-facing calls: shared by every request.
#[derive(Debug, Clone)]
pub struct UserAuth {
    inner: Arc<Verifier>,
}

#[derive(Debug)]
struct Verifier {
    mode: UserAuthMode,
    keys: KeySet,
    expect: Expectations,
    verified: VerifiedTokens,
}

impl Verifier {
    /// The token's claims: from a verification made earlier under the same
    /// key set while the token is unexpired, else by verifying it now.
    async fn claims(&self, token: &str) -> Result<Arc<Claims>, TokenError> {
        let digest = verified::digest(token);
        // Read before the key is: see `VerifiedTokens::insert`.
        let generation = self.keys.generation();
        let now = unix_now();
        if let Some(claims) = self.verified.get(&digest, generation, now) {
            return Ok(claims);
        }
        let claims = Arc::new(token::verify(token, &self.keys, &self.expect).await?);
        self.verified.insert(digest, claims.clone(), generation, now);
        Ok(claims)
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

impl UserAuth {
    /// Checks `settings`, reads the key set (a file must read; a URL that
    /// cannot be fetched yet is retried on first use) and keeps it fresh
    /// until `stop` fires.
    pub async fn start(settings: &UserAuthSettings, stop: tokio_util::sync::CancellationToken) -> anyhow::Result<Self> {
        settings.validate()?;
        let source = settings.source()?;
        let keys = KeySet::new(source.clone(), settings.jwks_min_refresh);
        match (keys.load().await, &source) {
            (Ok(n), _) => tracing::info!(keys = n, "identity provider keys loaded"),
            (Err(e), KeySource::File(path)) => {
                return Err(e.context(format!("reading CPIS_OIDC_JWKS_FILE {}", path.display())))
            }
            (Err(e), KeySource::Url { .. }) => {
                tracing::warn!(error = %e, "identity provider keys could not be fetched yet; retrying on first use")
            }
        }
        keys.spawn_refresh(settings.jwks_max_age, stop);
        let expect = Expectations {
            issuer: settings.issuer.clone().unwrap_or_default(),
            audience: settings.audience.clone().unwrap_or_default(),
            leeway: settings.leeway,
            max_bytes: settings.max_token_bytes,
        };
        let verified = VerifiedTokens::new(settings.verified_tokens, settings.leeway.as_secs());
        Ok(Self { inner: Arc::new(Verifier { mode: settings.mode, keys, expect, verified }) })
    }

    /// The person behind a request from `setting_code` with these headers.
    pub async fn authenticate(&self, headers: &http::HeaderMap, setting_code: &str) -> Result<UserContext, ApiError> {
        let v = &self.inner;
        let Some(token) = bearer(headers)? else {
            return match v.mode {
                UserAuthMode::Optional => Ok(UserContext::Unverified),
                UserAuthMode::Required => Err(ApiError::Unauthenticated(
                    "no user token: send the person's CIS2 token as the authorization header (Bearer) and their role as NHSD-Session-URID".into(),
                )),
            };
        };
        let claims = v.claims(token).await.map_err(|e| match e {
            TokenError::KeysUnavailable => ApiError::Unavailable(e.to_string()),
            other => ApiError::Unauthenticated(other.to_string()),
        })?;
        let urid = match headers.get(SESSION_URID_HEADER) {
            None => None,
            Some(value) => Some(value.to_str().map_err(|_| invalid_urid())?.trim().to_string()),
        };
        let user = select_role(&claims, urid.as_deref())?;
        cpis_domain::user::role_belongs_to_setting(&user.role.org_code, setting_code)
            .map_err(|refusal| ApiError::PermissionDenied(refusal.to_string()))?;
        Ok(UserContext::Verified(Box::new(user)))
    }
}

/// The national API platform's answer to a role that is not the token's.
fn invalid_urid() -> ApiError {
    ApiError::Unauthenticated("NHSD-Session-URID is invalid".into())
}

/// The bearer token of the `authorization` header, if there is one.
fn bearer(headers: &http::HeaderMap) -> Result<Option<&str>, ApiError> {
    let Some(value) = headers.get(http::header::AUTHORIZATION) else { return Ok(None) };
    let text = value.to_str().map_err(|_| ApiError::Unauthenticated("the authorization header is not text".into()))?;
    let (scheme, token) = text.trim().split_once(' ').unwrap_or((text, ""));
    if !scheme.eq_ignore_ascii_case("bearer") || token.trim().is_empty() {
        return Err(ApiError::Unauthenticated("the authorization header must be `Bearer <token>`".into()));
    }
    Ok(Some(token.trim()))
}

/// The person and the role selected by `urid` (else the token's
/// `selected_roleid`), which must be one of the token's roles.
fn select_role(claims: &Claims, urid: Option<&str>) -> Result<User, ApiError> {
    let wanted = urid.filter(|u| !u.is_empty()).or(claims.selected_roleid.as_deref()).ok_or_else(invalid_urid)?;
    let role = claims.nhsid_nrbac_roles.iter().find(|r| r.person_roleid == wanted).ok_or_else(invalid_urid)?;
    let user_id = claims.nhsid_useruid.clone().filter(|u| !u.is_empty()).ok_or_else(|| {
        ApiError::Unauthenticated("the user token has no nhsid_useruid claim (the nhsperson scope)".into())
    })?;
    let org_name = claims
        .nhsid_user_orgs
        .iter()
        .find(|o| o.org_code.eq_ignore_ascii_case(&role.org_code))
        .map(|o| o.org_name.clone())
        .unwrap_or_default();
    Ok(User {
        subject: claims.sub.clone(),
        user_id,
        name: claims.name.clone().unwrap_or_default(),
        role: Role {
            role_profile_id: role.person_roleid.clone(),
            person_org_id: role.person_orgid.clone(),
            org_code: role.org_code.clone(),
            role_code: role.role_code.clone(),
            role_name: role.role_name.clone(),
            activity_codes: role.activity_codes.clone(),
        },
        org_name,
    })
}

/// The viewer of a request: the verified person, or (migration mode, no
/// token) the `user_id` the request asserted, checked as the field `field`.
pub fn viewer(context: Option<&UserContext>, asserted: &str, field: &str) -> Result<Viewer, ApiError> {
    match context {
        Some(UserContext::Verified(user)) => Ok(Viewer::Verified(user.clone())),
        Some(UserContext::Unverified) => {
            let mut v = cpis_domain::validate::Violations::new();
            v.text(field, asserted, 128);
            v.finish()?;
            Ok(Viewer::Unverified { user_id: asserted.to_string() })
        }
        None => Err(ApiError::Unauthenticated("no verified user on this request".into())),
    }
}

/// The user context the layer put on a gRPC request, if any.
pub fn context<T>(req: &tonic::Request<T>) -> Option<&UserContext> {
    req.extensions().get::<UserContext>()
}

/// Tower layer verifying the person behind [`USER_METHODS`] calls from settings.
#[derive(Debug, Clone, Default)]
pub struct UserLayer {
    auth: Option<UserAuth>,
}

impl UserLayer {
    /// The layer; `None` on services that serve no user method (a setting
    /// reaching one there anyway is refused).
    pub fn new(auth: Option<UserAuth>) -> Self {
        Self { auth }
    }
}

impl<S> Layer<S> for UserLayer {
    type Service = Users<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Users { inner, auth: self.auth.clone() }
    }
}

/// The service made by [`UserLayer`].
#[derive(Debug, Clone)]
pub struct Users<S> {
    inner: S,
    auth: Option<UserAuth>,
}

impl<S, B> Service<http::Request<B>> for Users<S>
where
    S: Service<http::Request<B>, Response = http::Response<tonic::body::Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        let setting = match req.extensions().get::<Caller>() {
            Some(Caller::Setting(code)) if USER_METHODS.contains(&req.uri().path()) => code.clone(),
            _ => return Box::pin(self.inner.call(req)),
        };
        // The inner service was made ready for this call: keep it, and leave
        // a fresh clone in its place (tower's pattern for async work first).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let auth = self.auth.clone();
        Box::pin(async move {
            let decided = match &auth {
                Some(auth) => auth.authenticate(req.headers(), &setting).await,
                None => Err(ApiError::Unauthenticated("this service does not verify users".into())),
            };
            match decided {
                Ok(context) => {
                    req.extensions_mut().insert(context);
                    inner.call(req).await
                }
                Err(refusal) => {
                    let status = tonic::Status::from(refusal);
                    tracing::warn!(method = %req.uri().path(), caller = %format!("setting/{setting}"), code = ?status.code(), reason = status.message(), "user refused");
                    Ok(status.into_http())
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use token::RoleClaim;

    fn claims(roles: &[(&str, &str)], selected: Option<&str>) -> Claims {
        Claims {
            sub: "s".into(),
            exp: 0,
            nhsid_useruid: Some("910000000001".into()),
            name: Some("Alex Example".into()),
            nhsid_nrbac_roles: roles
                .iter()
                .map(|(id, org)| RoleClaim {
                    person_orgid: "1".into(),
                    person_roleid: id.to_string(),
                    org_code: org.to_string(),
                    role_code: "S8000:G8000:R8000".into(),
                    role_name: "Clinical Practitioner Access Role".into(),
                    activity_codes: vec!["B0107".into()],
                })
                .collect(),
            selected_roleid: selected.map(str::to_string),
            nhsid_user_orgs: vec![],
        }
    }

    fn code(r: Result<User, ApiError>) -> Result<String, tonic::Code> {
        r.map(|u| u.role.role_profile_id).map_err(|e| e.code())
    }

    #[test]
    fn the_header_selects_one_of_the_tokens_roles_else_the_claim_does() {
        let two = || claims(&[("111", "RBQ"), ("222", "RWJ")], Some("222"));
        assert_eq!(code(select_role(&two(), Some("111"))), Ok("111".into()));
        assert_eq!(code(select_role(&two(), None)), Ok("222".into()));
        assert_eq!(code(select_role(&two(), Some("333"))), Err(tonic::Code::Unauthenticated));
        assert_eq!(code(select_role(&claims(&[("111", "RBQ")], None), None)), Err(tonic::Code::Unauthenticated));
        let refusal = select_role(&two(), Some("333")).unwrap_err().to_string();
        assert_eq!(refusal, "NHSD-Session-URID is invalid");
    }

    #[test]
    fn bearer_needs_the_scheme_and_a_token() {
        let mut h = http::HeaderMap::new();
        assert_eq!(bearer(&h).unwrap(), None);
        h.insert(http::header::AUTHORIZATION, "Bearer abc".parse().unwrap());
        assert_eq!(bearer(&h).unwrap(), Some("abc"));
        h.insert(http::header::AUTHORIZATION, "bearer  abc ".parse().unwrap());
        assert_eq!(bearer(&h).unwrap(), Some("abc"));
        for bad in ["Basic abc", "Bearer", "abc"] {
            h.insert(http::header::AUTHORIZATION, bad.parse().unwrap());
            assert!(bearer(&h).is_err(), "{bad}");
        }
    }
}
