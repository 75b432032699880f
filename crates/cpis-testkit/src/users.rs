//! The people at settings in tests: every Attendance client a setting uses
//! sends a user token from the suite's development identity provider, as a
//! clinical system sends its user's CIS2 token; tests of the refusals build
//! their own tokens and headers.

use crate::TestSuite;
use cpis_devkit::users::{DevToken, TokenSpec};
use cpis_domain::identity::Caller;
use cpis_domain::user::{VIEW_FLAG_NOTIFYING, VIEW_FLAG_SILENTLY};
use cpis_proto::attendance::v1::attendance_service_client::AttendanceServiceClient;
use std::time::Duration;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

/// An Attendance client whose requests carry a person's token.
pub type AttendanceClient = AttendanceServiceClient<InterceptedService<Channel, UserHeaders>>;

/// Adds `authorization: Bearer <token>` and `nhsd-session-urid` to every request.
#[derive(Clone, Debug, Default)]
pub struct UserHeaders {
    token: Option<MetadataValue<Ascii>>,
    urid: Option<MetadataValue<Ascii>>,
}

impl UserHeaders {
    /// Headers for `token` (no headers at all for `None`).
    pub fn of(token: Option<&DevToken>) -> Self {
        match token {
            None => Self::default(),
            Some(t) => Self::raw(Some(&format!("Bearer {}", t.token)), Some(&t.role_id)),
        }
    }

    /// The two headers exactly as given (tests of bad tokens).
    pub fn raw(authorization: Option<&str>, urid: Option<&str>) -> Self {
        Self {
            token: authorization.map(|a| a.parse().expect("header text")),
            urid: urid.map(|u| u.parse().expect("header text")),
        }
    }
}

impl tonic::service::Interceptor for UserHeaders {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(token) = &self.token {
            request.metadata_mut().insert("authorization", token.clone());
        }
        if let Some(urid) = &self.urid {
            request.metadata_mut().insert("nhsd-session-urid", urid.clone());
        }
        Ok(request)
    }
}

/// The name of the person every default test token names.
pub const TEST_CLINICIAN: &str = "Test Clinician";

impl TestSuite {
    /// A token of a person at `setting` whose role carries `activities`.
    pub fn user_token(&self, setting: &str, activities: &[&str]) -> DevToken {
        let spec = TokenSpec {
            name: TEST_CLINICIAN.into(),
            ttl: Duration::from_secs(4 * 3600),
            ..TokenSpec::new(setting, activities)
        };
        self.user_token_for(&spec)
    }

    /// A token for the person `spec` describes.
    pub fn user_token_for(&self, spec: &TokenSpec) -> DevToken {
        self.suite.users.token(spec).expect("a development user token")
    }

    /// An Attendance client for `caller`: a setting's requests carry a token
    /// of a clinician there allowed both reads (B0107, B0170); a council's none.
    pub fn attendance(&self, caller: &Caller) -> AttendanceClient {
        let token = match caller {
            Caller::Setting(code) => Some(self.user_token(code, &[VIEW_FLAG_NOTIFYING, VIEW_FLAG_SILENTLY])),
            _ => None,
        };
        self.attendance_with(caller, UserHeaders::of(token.as_ref()))
    }

    /// An Attendance client for `caller` sending `headers` with every request.
    pub fn attendance_with(&self, caller: &Caller, headers: UserHeaders) -> AttendanceClient {
        AttendanceServiceClient::with_interceptor(self.channel(self.attendance_port(), caller), headers)
    }

    /// An Attendance client for `caller` on another Attendance instance's
    /// `port` (a second replica, a `cpis serve` process), with the default
    /// test clinician's token for a setting.
    pub fn attendance_on(&self, port: u16, caller: &Caller) -> AttendanceClient {
        let token = match caller {
            Caller::Setting(code) => Some(self.user_token(code, &[VIEW_FLAG_NOTIFYING, VIEW_FLAG_SILENTLY])),
            _ => None,
        };
        AttendanceServiceClient::with_interceptor(self.channel(port, caller), UserHeaders::of(token.as_ref()))
    }

    /// The environment a `cpis serve attendance` process needs to verify
    /// this suite's development users.
    pub fn user_auth_env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("CPIS_OIDC_ISSUER", cpis_devkit::users::DEV_ISSUER.to_string()),
            ("CPIS_OIDC_AUDIENCE", cpis_devkit::users::DEV_AUDIENCE.to_string()),
            ("CPIS_OIDC_JWKS_FILE", self.suite.users.jwks_path().display().to_string()),
        ]
    }

    /// The FHIR headers carrying the default test clinician's token at `setting`.
    pub fn fhir_user_headers(&self, setting: &str) -> Vec<(String, String)> {
        let token = self.user_token(setting, &[VIEW_FLAG_NOTIFYING, VIEW_FLAG_SILENTLY]);
        vec![("Authorization".into(), format!("Bearer {}", token.token)), ("NHSD-Session-URID".into(), token.role_id)]
    }
}
