//! Who may call what: the one table, and the tower layer that enforces it for
//! every RPC of every service before any handler runs.
//!
//! The layer reads the connection's identity (established once per TLS
//! connection by [`crate::server`]), refuses unauthenticated connections with
//! `UNAUTHENTICATED` and callers outside the table with `PERMISSION_DENIED`,
//! and hands the typed [`Caller`] to the handler in the request extensions.
//! The answers of long-lived calls keep checking ([`crate::recheck`]).
//! Finer rules that depend on data (a council sees only its own plans) live
//! in the handlers.

use crate::error::ApiError;
use crate::peer::PeerInfo;
use crate::recheck::{Guarded, Identity, LONG_LIVED};
use cpis_domain::identity::{Caller, ServiceName};
use futures::future::BoxFuture;
use std::task::{Context, Poll};
use tower::{Layer, Service};

/// A class of callers allowed to call a method.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Allow {
    /// Any council.
    Councils,
    /// Any setting.
    Settings,
    /// Any analyst (the national report).
    Analysts,
    /// One of our services.
    Service(ServiceName),
    /// Any authenticated identity (health checks, reflection).
    AnyIdentity,
}

impl Allow {
    fn admits(self, caller: &Caller) -> bool {
        match (self, caller) {
            (Allow::AnyIdentity, _) => true,
            (Allow::Councils, Caller::Council(_)) => true,
            (Allow::Settings, Caller::Setting(_)) => true,
            (Allow::Analysts, Caller::Analyst(_)) => true,
            (Allow::Service(want), Caller::Service(got)) => want == *got,
            _ => false,
        }
    }
}

use Allow::*;

/// The authorization table: every method served on any port, and who may call it.
/// A method absent from this table is refused for everyone.
#[rustfmt::skip]
pub const POLICY: &[(&str, &[Allow])] = &[
    ("/cpis.registry.v1.RegistryService/UpsertPlan",                &[Councils]),
    ("/cpis.registry.v1.RegistryService/EndPlan",                   &[Councils]),
    ("/cpis.registry.v1.RegistryService/DeletePlan",                &[Councils]),
    ("/cpis.registry.v1.RegistryService/GetPlan",                   &[Councils]),
    ("/cpis.registry.v1.RegistryService/ListPlans",                 &[Councils]),
    ("/cpis.registry.v1.RegistryService/SyncPlans",                 &[Councils]),
    ("/cpis.registry.v1.RegistryService/LookupFlags",               &[Service(ServiceName::Attendance)]),
    ("/cpis.registry.v1.RegistryService/LookupFlagsBatch",          &[Service(ServiceName::Attendance)]),
    ("/cpis.registry.v1.RegistryService/RecordNhsNumberChange",     &[Service(ServiceName::Attendance)]),
    ("/cpis.registry.v1.RegistryService/ReportPlans",               &[Councils, Analysts]),
    ("/cpis.attendance.v1.AttendanceService/CheckIn",               &[Settings]),
    // Councils only for people they hold a flag in scope for (checked in the handler).
    ("/cpis.attendance.v1.AttendanceService/ListEpisodes",          &[Settings, Councils]),
    ("/cpis.attendance.v1.AttendanceService/ListAccesses",          &[Councils]),
    ("/cpis.attendance.v1.AttendanceService/SilentRead",            &[Settings]),
    ("/cpis.attendance.v1.AttendanceService/RecordWasNotBrought",   &[Settings]),
    ("/cpis.attendance.v1.AttendanceService/RecordNhsNumberChange", &[Service(ServiceName::Demographics)]),
    ("/cpis.attendance.v1.AttendanceService/ReportAccesses",        &[Councils, Analysts]),
    ("/cpis.notification.v1.NotificationService/Subscribe",         &[Councils]),
    ("/cpis.notification.v1.NotificationService/AckAlerts",         &[Councils]),
    ("/cpis.notification.v1.NotificationService/ListAlerts",        &[Councils]),
    ("/cpis.notification.v1.NotificationService/PublishAlert",      &[Service(ServiceName::Attendance)]),
    ("/cpis.notification.v1.NotificationService/PublishAlerts",     &[Service(ServiceName::Attendance)]),
    ("/cpis.notification.v1.NotificationService/ReportAlerts",      &[Councils, Analysts]),
    // The FHIR R4 endpoint of the Attendance service (its own port): the
    // same identities and the same table. Paths are the resource types.
    ("/FHIR/R4/metadata",                                           &[AnyIdentity]),
    ("/FHIR/R4/CareTeam",                                           &[Settings]),
    ("/FHIR/R4/AuditEvent",                                         &[Settings]),
    // The definition of the FHIR API's one extension, where its URL points.
    ("/FHIR/R4/StructureDefinition/cpis-expected-delivery-date",    &[AnyIdentity]),
    ("/grpc.health.v1.Health/Check",                                &[AnyIdentity]),
    ("/grpc.health.v1.Health/Watch",                                &[AnyIdentity]),
    ("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",      &[AnyIdentity]),
    ("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo", &[AnyIdentity]),
];

/// Methods that show a person's flags or history to a setting: a setting's
/// call to one of them carries the person's verified token
/// ([`crate::users`]), and the access records who they are.
pub const USER_METHODS: &[&str] = &[
    "/cpis.attendance.v1.AttendanceService/CheckIn",
    "/cpis.attendance.v1.AttendanceService/SilentRead",
    "/cpis.attendance.v1.AttendanceService/ListEpisodes",
    "/cpis.attendance.v1.AttendanceService/RecordWasNotBrought",
    "/FHIR/R4/CareTeam",
    "/FHIR/R4/AuditEvent",
];

/// Methods only our own services call. When a service runs with a separate
/// internal listener (`CPIS_INTERNAL_LISTEN`), they are served there and not
/// on the public one, so a Kubernetes NetworkPolicy can close that port to
/// everyone but the attendance pods.
pub const INTERNAL_METHODS: &[&str] = &[
    "/cpis.registry.v1.RegistryService/LookupFlags",
    "/cpis.registry.v1.RegistryService/LookupFlagsBatch",
    "/cpis.registry.v1.RegistryService/RecordNhsNumberChange",
    "/cpis.attendance.v1.AttendanceService/RecordNhsNumberChange",
    "/cpis.notification.v1.NotificationService/PublishAlert",
    "/cpis.notification.v1.NotificationService/PublishAlerts",
];

/// Which methods a listener serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Surface {
    /// Everything (development, tests, single-port deployments).
    #[default]
    Combined,
    /// Everything but [`INTERNAL_METHODS`].
    Public,
    /// Only [`INTERNAL_METHODS`], health and reflection.
    Internal,
}

impl Surface {
    fn serves(self, path: &str) -> bool {
        let internal = INTERNAL_METHODS.contains(&path);
        let infrastructure = path.starts_with("/grpc.health.v1.") || path.starts_with("/grpc.reflection.");
        match self {
            Surface::Combined => true,
            Surface::Public => !internal,
            Surface::Internal => internal || infrastructure,
        }
    }
}

/// The rule for a method path, if the table has one.
pub fn rule(path: &str) -> Option<&'static [Allow]> {
    POLICY.iter().find(|(p, _)| *p == path).map(|(_, allow)| *allow)
}

/// Decides one request: the caller to hand on, or the status to answer with.
pub fn decide(path: &str, peer: Option<&PeerInfo>, surface: Surface) -> Result<Caller, ApiError> {
    let caller = match peer.map(PeerInfo::caller_now) {
        Some(Ok(caller)) => caller,
        Some(Err(e)) => return Err(ApiError::Unauthenticated(e.to_string())),
        None => return Err(ApiError::Unauthenticated("no verified client identity on this connection".into())),
    };
    let Some(allowed) = rule(path) else {
        return Err(ApiError::PermissionDenied("method is not open to any caller".into()));
    };
    if !surface.serves(path) {
        return Err(ApiError::PermissionDenied("method is not served on this port".into()));
    }
    if allowed.iter().any(|a| a.admits(caller)) {
        Ok(caller.clone())
    } else {
        Err(ApiError::PermissionDenied(format!(
            "{} callers may not call {}",
            caller.kind().as_str(),
            path.rsplit('/').next().unwrap_or(path)
        )))
    }
}

/// The caller of a request, as put there by [`AuthzLayer`].
pub fn caller<T>(req: &tonic::Request<T>) -> Result<Caller, ApiError> {
    req.extensions()
        .get::<Caller>()
        .cloned()
        .ok_or_else(|| ApiError::Unauthenticated("no verified client identity".into()))
}

/// Tower layer enforcing [`POLICY`] on one listener's [`Surface`].
#[derive(Debug, Clone, Default)]
pub struct AuthzLayer {
    surface: Surface,
}

impl AuthzLayer {
    /// The layer for a listener serving `surface`.
    pub fn new(surface: Surface) -> Self {
        Self { surface }
    }
}

impl<S> Layer<S> for AuthzLayer {
    type Service = Authz<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Authz { inner, surface: self.surface }
    }
}

/// The service made by [`AuthzLayer`].
#[derive(Debug, Clone)]
pub struct Authz<S> {
    inner: S,
    surface: Surface,
}

impl<S, B> Service<http::Request<B>> for Authz<S>
where
    S: Service<http::Request<B>, Response = http::Response<tonic::body::Body>> + Send + 'static,
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
        let path = req.uri().path().to_string();
        match decide(&path, req.extensions().get::<PeerInfo>(), self.surface) {
            Ok(caller) => {
                req.extensions_mut().insert(caller);
                if !LONG_LIVED.contains(&path.as_str()) {
                    return Box::pin(self.inner.call(req));
                }
                // A stream outlives this check: its messages check again.
                let identity = Identity::from_peer(req.extensions().get::<PeerInfo>().cloned());
                let answer = self.inner.call(req);
                Box::pin(async move {
                    let response = answer.await?;
                    Ok(response.map(|body| tonic::body::Body::new(Guarded::new(body, identity))))
                })
            }
            Err(refusal) => {
                if matches!(refusal, ApiError::Unauthenticated(_)) {
                    // No valid identity (any more): answer, then close the
                    // connection rather than keep serving refusals on it.
                    if let Some(peer) = req.extensions().get::<PeerInfo>() {
                        peer.close_after_answer();
                    }
                }
                let caller = req
                    .extensions()
                    .get::<PeerInfo>()
                    .and_then(|p| p.identity.as_ref().ok())
                    .map(|c| c.to_string())
                    .unwrap_or_else(|| "unauthenticated".into());
                let status = tonic::Status::from(refusal);
                tracing::warn!(method = %path, %caller, code = ?status.code(), "request refused");
                Box::pin(async move { Ok(status.into_http()) })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_rpc_of_the_contract_has_a_rule() {
        for path in cpis_proto::all_rpc_paths() {
            assert!(rule(&path).is_some(), "{path} has no authorization rule");
        }
    }

    #[test]
    fn every_user_method_is_open_to_settings() {
        for path in USER_METHODS {
            assert!(rule(path).is_some_and(|allow| allow.contains(&Settings)), "{path} is not a setting's method");
        }
    }

    #[test]
    fn councils_cannot_look_up_flags() {
        let peer = PeerInfo::new(None, Ok(Caller::Council("E08000003".into())));
        let err = decide("/cpis.registry.v1.RegistryService/LookupFlags", Some(&peer), Surface::Combined).unwrap_err();
        assert_eq!(err.code(), tonic::Code::PermissionDenied);
        let ok = decide("/cpis.registry.v1.RegistryService/GetPlan", Some(&peer), Surface::Combined);
        assert!(ok.is_ok());
    }

    #[test]
    fn internal_methods_stay_on_the_internal_listener() {
        let attendance = PeerInfo::new(None, Ok(Caller::Service(ServiceName::Attendance)));
        let lookup = "/cpis.registry.v1.RegistryService/LookupFlags";
        assert!(decide(lookup, Some(&attendance), Surface::Internal).is_ok());
        assert!(decide(lookup, Some(&attendance), Surface::Public).is_err());
        let council = PeerInfo::new(None, Ok(Caller::Council("E08000003".into())));
        assert!(decide("/cpis.registry.v1.RegistryService/GetPlan", Some(&council), Surface::Internal).is_err());
        assert!(decide("/grpc.health.v1.Health/Check", Some(&council), Surface::Internal).is_ok());
    }
}
