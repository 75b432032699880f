//! Who is calling: a typed identity read from the client certificate's URI
//! subject-alternative-name (`spiffe://<trust-domain>/<kind>/<code>`).

use std::fmt;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

/// The three kinds of caller the contract knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CallerKind {
    /// A council's children's social care system.
    Council,
    /// An unscheduled NHS care setting.
    Setting,
    /// One of our own services.
    Service,
    /// An analyst of the national service's use (the national report only).
    Analyst,
}

impl CallerKind {
    /// The path segment used in SPIFFE ids and file names.
    pub fn as_str(self) -> &'static str {
        match self {
            CallerKind::Council => "council",
            CallerKind::Setting => "setting",
            CallerKind::Service => "service",
            CallerKind::Analyst => "analyst",
        }
    }

    /// Parses a path segment (`council`, `setting`, `service`).
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "council" => Some(CallerKind::Council),
            "setting" => Some(CallerKind::Setting),
            "service" => Some(CallerKind::Service),
            "analyst" => Some(CallerKind::Analyst),
            _ => None,
        }
    }
}

/// Our own services, as named in their SPIFFE ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ServiceName {
    /// The Registry service.
    Registry,
    /// The Attendance service.
    Attendance,
    /// The Notification service.
    Notification,
    /// The follower of the national demographics service's change feed
    /// (NHS number changes).
    Demographics,
}

impl ServiceName {
    /// The name used in SPIFFE ids (`registry`, `attendance`, `notification`).
    pub fn as_str(self) -> &'static str {
        match self {
            ServiceName::Registry => "registry",
            ServiceName::Attendance => "attendance",
            ServiceName::Notification => "notification",
            ServiceName::Demographics => "demographics",
        }
    }

    /// Parses a service name.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "registry" => Some(ServiceName::Registry),
            "attendance" => Some(ServiceName::Attendance),
            "notification" => Some(ServiceName::Notification),
            "demographics" => Some(ServiceName::Demographics),
            _ => None,
        }
    }
}

/// The authenticated caller of one request.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Caller {
    /// A council, by ONS GSS code (e.g. `E08000003`).
    Council(String),
    /// A setting, by ODS site code (e.g. `RBQ01`).
    Setting(String),
    /// One of our services.
    Service(ServiceName),
    /// An analyst, by a short code of their organisation (e.g. `NHSE`): sees
    /// the national report, aggregated, and nothing about any person.
    Analyst(String),
}

impl Caller {
    /// The caller's kind.
    pub fn kind(&self) -> CallerKind {
        match self {
            Caller::Council(_) => CallerKind::Council,
            Caller::Setting(_) => CallerKind::Setting,
            Caller::Service(_) => CallerKind::Service,
            Caller::Analyst(_) => CallerKind::Analyst,
        }
    }

    /// The caller's code (GSS code, ODS code or service name).
    pub fn code(&self) -> &str {
        match self {
            Caller::Council(c) | Caller::Setting(c) | Caller::Analyst(c) => c,
            Caller::Service(s) => s.as_str(),
        }
    }

    /// The SPIFFE id of this caller in a trust domain.
    pub fn spiffe_id(&self, trust_domain: &str) -> String {
        format!("spiffe://{trust_domain}/{}/{}", self.kind().as_str(), self.code())
    }

    /// Builds a caller from a kind and code, checking the code's format.
    pub fn from_parts(kind: CallerKind, code: &str) -> Result<Caller, IdentityError> {
        match kind {
            CallerKind::Council if crate::validate::is_council_code(code) => Ok(Caller::Council(code.to_string())),
            CallerKind::Setting if crate::validate::is_setting_code(code) => Ok(Caller::Setting(code.to_string())),
            CallerKind::Service => {
                ServiceName::parse(code).map(Caller::Service).ok_or(IdentityError::Malformed("unknown service name"))
            }
            CallerKind::Analyst if is_analyst_code(code) => Ok(Caller::Analyst(code.to_string())),
            CallerKind::Analyst => {
                Err(IdentityError::Malformed("analyst code is not 2 to 16 upper-case letters and digits"))
            }
            CallerKind::Council => Err(IdentityError::Malformed("council code is not a GSS code")),
            CallerKind::Setting => Err(IdentityError::Malformed("setting code is not an ODS code")),
        }
    }

    /// Parses a SPIFFE id, accepting only the given trust domain.
    pub fn from_spiffe_id(uri: &str, trust_domain: &str) -> Result<Caller, IdentityError> {
        let rest = uri.strip_prefix("spiffe://").ok_or(IdentityError::Malformed("not a spiffe:// URI"))?;
        let mut parts = rest.split('/');
        let domain = parts.next().unwrap_or_default();
        if domain != trust_domain {
            return Err(IdentityError::OtherTrustDomain);
        }
        let (Some(kind), Some(code), None) = (parts.next(), parts.next(), parts.next()) else {
            return Err(IdentityError::Malformed("expected spiffe://<domain>/<kind>/<code>"));
        };
        let kind = CallerKind::parse(kind).ok_or(IdentityError::Malformed("unknown caller kind"))?;
        Caller::from_parts(kind, code)
    }

    /// Reads the caller from a DER client certificate: exactly one `spiffe://`
    /// URI SAN, in our trust domain. The chain must already be verified.
    pub fn from_certificate(der: &[u8], trust_domain: &str) -> Result<Caller, IdentityError> {
        let (_, cert) =
            X509Certificate::from_der(der).map_err(|_| IdentityError::Malformed("certificate does not parse"))?;
        let san =
            cert.subject_alternative_name().map_err(|_| IdentityError::Malformed("subjectAltName does not parse"))?;
        let mut ids = san.iter().flat_map(|ext| ext.value.general_names.iter()).filter_map(|name| match name {
            GeneralName::URI(uri) if uri.starts_with("spiffe://") => Some(*uri),
            _ => None,
        });
        let Some(first) = ids.next() else {
            return Err(IdentityError::NoSpiffeId);
        };
        if ids.next().is_some() {
            return Err(IdentityError::Malformed("more than one spiffe:// URI SAN"));
        }
        Caller::from_spiffe_id(first, trust_domain)
    }
}

impl fmt::Display for Caller {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.kind().as_str(), self.code())
    }
}

/// An analyst's code: 2 to 16 upper-case letters and digits (`NHSE`).
fn is_analyst_code(code: &str) -> bool {
    (2..=16).contains(&code.len()) && code.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
}

/// Why a connection has no usable identity. Every variant is `UNAUTHENTICATED`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    /// The client presented no certificate.
    #[error("no client certificate was presented")]
    NoCertificate,
    /// The certificate chain does not verify against our CA (unknown issuer,
    /// expired, not valid for client authentication, ...).
    #[error("client certificate is not trusted: {0}")]
    Untrusted(String),
    /// The certificate has no `spiffe://` URI SAN.
    #[error("client certificate has no spiffe:// URI SAN")]
    NoSpiffeId,
    /// The SPIFFE id belongs to another trust domain.
    #[error("client certificate belongs to another trust domain")]
    OtherTrustDomain,
    /// The SPIFFE id is not one of ours.
    #[error("client certificate identity is malformed: {0}")]
    Malformed(&'static str),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_each_kind() {
        let td = "cpis.local";
        assert_eq!(
            Caller::from_spiffe_id("spiffe://cpis.local/council/E08000003", td),
            Ok(Caller::Council("E08000003".into()))
        );
        assert_eq!(
            Caller::from_spiffe_id("spiffe://cpis.local/setting/RBQ01", td),
            Ok(Caller::Setting("RBQ01".into()))
        );
        assert_eq!(
            Caller::from_spiffe_id("spiffe://cpis.local/service/attendance", td),
            Ok(Caller::Service(ServiceName::Attendance))
        );
    }

    #[test]
    fn rejects_other_domains_and_malformed_ids() {
        let td = "cpis.local";
        assert_eq!(
            Caller::from_spiffe_id("spiffe://evil.example/council/E08000003", td),
            Err(IdentityError::OtherTrustDomain)
        );
        for bad in [
            "https://cpis.local/council/E08000003",
            "spiffe://cpis.local/council",
            "spiffe://cpis.local/council/E08000003/x",
            "spiffe://cpis.local/mayor/E08000003",
            "spiffe://cpis.local/council/W06000001",
            "spiffe://cpis.local/setting/rbq01",
            "spiffe://cpis.local/service/billing",
        ] {
            assert!(
                matches!(Caller::from_spiffe_id(bad, td), Err(IdentityError::Malformed(_))),
                "{bad} should be malformed"
            );
        }
    }
}
