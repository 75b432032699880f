//! One user token, verified: its size, its algorithm (RS256 or ES256 only,
//! fixed by the key that signed it, never by the token), its signature
//! against the identity provider's key named by `kid`, then `iss`, `aud`,
//! `exp` and `nbf` with a small leeway. The claims are read as CIS2 carries
//! them. Every failure is a [`TokenError`] whose message names the problem
//! and never quotes the token or the person.

use super::jwks::{KeyError, KeySet};
use base64::Engine as _;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, Validation};
use serde::Deserialize;
use std::time::Duration;

/// What a token must satisfy besides its signature.
#[derive(Debug, Clone)]
pub struct Expectations {
    /// The accepted `iss`.
    pub issuer: String,
    /// The accepted `aud` (one of the token's).
    pub audience: String,
    /// Clock skew allowed on `exp` and `nbf`.
    pub leeway: Duration,
    /// Longest accepted token, in bytes.
    pub max_bytes: usize,
}

/// Why a token was refused: `UNAUTHENTICATED`, except [`TokenError::KeysUnavailable`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Longer than the limit.
    #[error("the user token is larger than {0} bytes")]
    TooLarge(usize),
    /// Not three base64url parts with a JSON header and claims.
    #[error("the user token is malformed: {0}")]
    Malformed(&'static str),
    /// An algorithm other than RS256/ES256, or one that does not fit its key.
    #[error("the user token's algorithm {0:?} is not allowed (RS256 or ES256 only)")]
    ForbiddenAlgorithm(String),
    /// The header names no key.
    #[error("the user token names no signing key (kid)")]
    NoKeyId,
    /// No key of the identity provider has this `kid`, even after a refresh.
    #[error("the user token's signing key (kid) is not one of the identity provider's")]
    UnknownKey,
    /// The identity provider's keys could not be loaded at all (`UNAVAILABLE`).
    #[error("the identity provider's signing keys are unavailable; retry later")]
    KeysUnavailable,
    /// The signature does not verify.
    #[error("the user token's signature does not verify")]
    BadSignature,
    /// `exp` has passed.
    #[error("the user token has expired")]
    Expired,
    /// `nbf` is still ahead.
    #[error("the user token is not valid yet (nbf)")]
    NotYetValid,
    /// Another issuer.
    #[error("the user token's issuer (iss) is not accepted")]
    WrongIssuer,
    /// Not meant for us.
    #[error("the user token's audience (aud) is not this service")]
    WrongAudience,
    /// A claim we need is missing.
    #[error("the user token has no {0} claim")]
    MissingClaim(String),
}

/// The claims of a CIS2 token that cpis reads.
#[derive(Debug, Clone, Deserialize)]
pub struct Claims {
    /// The token's subject.
    pub sub: String,
    /// When it expires (Unix seconds); verification has checked it.
    pub exp: u64,
    /// SDS user id (scope `nhsperson`).
    #[serde(default)]
    pub nhsid_useruid: Option<String>,
    /// The person's name (scope `profile`).
    #[serde(default)]
    pub name: Option<String>,
    /// The person's roles (scope `nationalrbacaccess`).
    #[serde(default)]
    pub nhsid_nrbac_roles: Vec<RoleClaim>,
    /// The role selected at sign-in (scope `selectedrole`), when no header selects one.
    #[serde(default)]
    pub selected_roleid: Option<String>,
    /// The person's organisations with their names.
    #[serde(default)]
    pub nhsid_user_orgs: Vec<OrgClaim>,
}

/// One element of `nhsid_nrbac_roles`.
#[derive(Debug, Clone, Deserialize)]
pub struct RoleClaim {
    /// SDS id of the person's organisation link.
    #[serde(default)]
    pub person_orgid: String,
    /// SDS role profile id.
    pub person_roleid: String,
    /// ODS code of the organisation.
    pub org_code: String,
    /// Job category and role, colon-separated.
    #[serde(default)]
    pub role_code: String,
    /// The role's name.
    #[serde(default)]
    pub role_name: String,
    /// National RBAC activity codes.
    #[serde(default)]
    pub activity_codes: Vec<String>,
}

/// One element of `nhsid_user_orgs`.
#[derive(Debug, Clone, Deserialize)]
pub struct OrgClaim {
    /// ODS code.
    pub org_code: String,
    /// The organisation's name.
    #[serde(default)]
    pub org_name: String,
}

/// Verifies `token` against `keys` and `expect`, returning its claims.
pub async fn verify(token: &str, keys: &KeySet, expect: &Expectations) -> Result<Claims, TokenError> {
    if token.len() > expect.max_bytes {
        return Err(TokenError::TooLarge(expect.max_bytes));
    }
    let (alg, kid) = read_header(token)?;
    let kid = kid.ok_or(TokenError::NoKeyId)?;
    let (key_alg, key) = keys.key(&kid).await.map_err(|e| match e {
        KeyError::Unknown => TokenError::UnknownKey,
        KeyError::Unavailable => TokenError::KeysUnavailable,
    })?;
    // The key decides the algorithm: a token claiming another (HS256 with
    // the public key as its secret, say) is refused before any check.
    if alg != key_alg {
        return Err(TokenError::ForbiddenAlgorithm(format!("{alg:?}")));
    }
    let mut validation = Validation::new(key_alg);
    validation.leeway = expect.leeway.as_secs();
    validation.validate_nbf = true;
    validation.set_issuer(&[&expect.issuer]);
    validation.set_audience(&[&expect.audience]);
    validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
    jsonwebtoken::decode::<Claims>(token, &key, &validation).map(|data| data.claims).map_err(|e| match e.into_kind() {
        ErrorKind::InvalidSignature => TokenError::BadSignature,
        ErrorKind::ExpiredSignature => TokenError::Expired,
        ErrorKind::ImmatureSignature => TokenError::NotYetValid,
        ErrorKind::InvalidIssuer => TokenError::WrongIssuer,
        ErrorKind::InvalidAudience => TokenError::WrongAudience,
        ErrorKind::MissingRequiredClaim(c) => TokenError::MissingClaim(c),
        ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => {
            TokenError::ForbiddenAlgorithm(format!("{key_alg:?}"))
        }
        ErrorKind::Json(_) => TokenError::Malformed("its claims are not the expected JSON"),
        _ => TokenError::Malformed("it does not decode"),
    })
}

/// The token's algorithm and key id, read before anything else so that a
/// forbidden algorithm (`none`, HMAC) is named as such.
fn read_header(token: &str) -> Result<(Algorithm, Option<String>), TokenError> {
    #[derive(Deserialize)]
    struct Header {
        alg: String,
        #[serde(default)]
        kid: Option<String>,
    }
    let mut parts = token.split('.');
    let (Some(header), Some(_), Some(_), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return Err(TokenError::Malformed("a JWT has three dot-separated parts"));
    };
    let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(header.trim_end_matches('='))
        .map_err(|_| TokenError::Malformed("its header is not base64url"))?;
    let header: Header =
        serde_json::from_slice(&json).map_err(|_| TokenError::Malformed("its header is not a JOSE header"))?;
    let alg = match header.alg.as_str() {
        "RS256" => Algorithm::RS256,
        "ES256" => Algorithm::ES256,
        other => return Err(TokenError::ForbiddenAlgorithm(printable(other))),
    };
    Ok((alg, header.kid.filter(|k| !k.is_empty())))
}

/// At most 16 printable ASCII characters of a value from outside.
fn printable(s: &str) -> String {
    s.chars().filter(|c| c.is_ascii_graphic()).take(16).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(s: &str) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s)
    }

    #[test]
    fn the_header_decides_nothing_but_is_read_first() {
        let token = |h: &str| format!("{}.{}.sig", b64(h), b64("{}"));
        assert_eq!(read_header(&token(r#"{"alg":"RS256","kid":"k1"}"#)), Ok((Algorithm::RS256, Some("k1".into()))));
        assert_eq!(read_header(&token(r#"{"alg":"ES256"}"#)), Ok((Algorithm::ES256, None)));
        assert_eq!(read_header(&token(r#"{"alg":"none"}"#)), Err(TokenError::ForbiddenAlgorithm("none".into())));
        assert_eq!(read_header(&token(r#"{"alg":"HS256"}"#)), Err(TokenError::ForbiddenAlgorithm("HS256".into())));
        assert!(matches!(read_header("a.b"), Err(TokenError::Malformed(_))));
        assert!(matches!(read_header("!!.b.c"), Err(TokenError::Malformed(_))));
        assert!(matches!(read_header(&format!("{}.b.c", b64("[]"))), Err(TokenError::Malformed(_))));
    }
}
