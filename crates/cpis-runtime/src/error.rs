//! One error type for every handler, with one obvious mapping to gRPC codes.
//! Handlers return `Result<_, ApiError>`; internal causes are logged with a
//! reference id and never sent to the caller.
//!
//! Every `UNAVAILABLE` carries `google.rpc.RetryInfo`: the same call may be
//! repeated after that delay (with the same request id for check-ins, so a
//! repeat never does the work twice). Transient database conditions (a lock
//! or statement timeout, a deadlock, a serialization failure, a lost
//! connection, a failover) are `UNAVAILABLE`, never `INTERNAL`, which is for
//! bugs: [`crate::db::is_transient_error`] is the one list of them, and
//! [`is_transient`] the one list of codes a client retries as they are.

use std::time::Duration;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

pub use cpis_domain::validate::{FieldViolation, Invalid};

/// Everything a handler can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Bad input: `INVALID_ARGUMENT` with `google.rpc.BadRequest` details.
    #[error("invalid argument")]
    InvalidArgument(Vec<FieldViolation>),
    /// Bad input whose remedy is a value the caller needs and no message may
    /// carry (an NHS number): `INVALID_ARGUMENT` with a `google.rpc.BadRequest`
    /// violation and a `google.rpc.ErrorInfo` whose metadata holds the value.
    #[error("invalid argument")]
    InvalidWithInfo {
        /// The field and why.
        violation: FieldViolation,
        /// `ErrorInfo.reason`, e.g. `SUPERSEDED_NHS_NUMBER`.
        reason: &'static str,
        /// `ErrorInfo.metadata`.
        metadata: Vec<(String, String)>,
    },
    /// The thing asked for does not exist for this caller.
    #[error("{0} not found")]
    NotFound(&'static str),
    /// Optimistic concurrency failed; re-read and retry.
    #[error("{0}")]
    Aborted(String),
    /// The system is not in a state to do this (e.g. a mass end without consent).
    #[error("{0}")]
    FailedPrecondition(String),
    /// No verified client identity (or it expired or was revoked since the handshake).
    #[error("{0}")]
    Unauthenticated(String),
    /// A known identity asked for something it may not have.
    #[error("{0}")]
    PermissionDenied(String),
    /// The caller sent too much, too fast.
    #[error("{0}")]
    ResourceExhausted(String),
    /// A dependency (PostgreSQL, another service) is down; the call may be retried.
    #[error("{0}")]
    Unavailable(String),
    /// A transient database condition (a lock or statement timeout, a
    /// deadlock, a serialization failure): `UNAVAILABLE`, to be retried soon.
    #[error("{0}")]
    Contention(String),
    /// The call's deadline passed before it finished.
    #[error("{0}")]
    DeadlineExceeded(String),
    /// A bug or an unexpected failure: logged, never detailed to the caller.
    #[error("internal error")]
    Internal(String),
}

impl ApiError {
    /// `INVALID_ARGUMENT` for a single field.
    pub fn invalid(field: impl Into<String>, description: impl Into<String>) -> Self {
        ApiError::InvalidArgument(vec![FieldViolation::new(field, description)])
    }

    /// The gRPC code this error is answered with.
    pub fn code(&self) -> Code {
        match self {
            ApiError::InvalidArgument(_) | ApiError::InvalidWithInfo { .. } => Code::InvalidArgument,
            ApiError::NotFound(_) => Code::NotFound,
            ApiError::Aborted(_) => Code::Aborted,
            ApiError::FailedPrecondition(_) => Code::FailedPrecondition,
            ApiError::Unauthenticated(_) => Code::Unauthenticated,
            ApiError::PermissionDenied(_) => Code::PermissionDenied,
            ApiError::ResourceExhausted(_) => Code::ResourceExhausted,
            ApiError::Unavailable(_) | ApiError::Contention(_) => Code::Unavailable,
            ApiError::DeadlineExceeded(_) => Code::DeadlineExceeded,
            ApiError::Internal(_) => Code::Internal,
        }
    }

    /// An internal error with a description safe to log (no personal data).
    pub fn internal(what: impl Into<String>) -> Self {
        ApiError::Internal(what.into())
    }
}

impl From<ApiError> for Status {
    fn from(e: ApiError) -> Status {
        match e {
            ApiError::InvalidArgument(violations) => {
                let summary =
                    violations.iter().map(|v| format!("{}: {}", v.field, v.description)).collect::<Vec<_>>().join("; ");
                let mut details = ErrorDetails::new();
                for v in violations {
                    details.add_bad_request_violation(v.field, v.description);
                }
                Status::with_error_details(Code::InvalidArgument, summary, details)
            }
            ApiError::InvalidWithInfo { violation, reason, metadata } => {
                let summary = format!("{}: {}", violation.field, violation.description);
                let mut details = ErrorDetails::new();
                details.add_bad_request_violation(violation.field, violation.description);
                details.set_error_info(
                    reason,
                    "cpis",
                    metadata.into_iter().collect::<std::collections::HashMap<_, _>>(),
                );
                Status::with_error_details(Code::InvalidArgument, summary, details)
            }
            ApiError::NotFound(what) => Status::not_found(format!("{what} not found")),
            ApiError::Aborted(m) => Status::aborted(m),
            ApiError::FailedPrecondition(m) => Status::failed_precondition(m),
            ApiError::Unauthenticated(m) => Status::unauthenticated(m),
            ApiError::PermissionDenied(m) => Status::permission_denied(m),
            ApiError::ResourceExhausted(m) => Status::resource_exhausted(m),
            ApiError::Unavailable(m) => retry_later(m, RETRY_AFTER_OUTAGE),
            ApiError::Contention(m) => retry_later(m, RETRY_AFTER_CONTENTION),
            ApiError::DeadlineExceeded(m) => Status::deadline_exceeded(m),
            ApiError::Internal(what) => {
                let reference = uuid::Uuid::new_v4();
                tracing::error!(%reference, cause = %what, "internal error");
                Status::internal(format!("internal error (reference {reference})"))
            }
        }
    }
}

impl From<Invalid> for ApiError {
    fn from(e: Invalid) -> Self {
        ApiError::InvalidArgument(e.0)
    }
}

/// How long a client should wait before repeating a call that met an
/// outage (a dependency down, a lost database connection, a failover).
pub const RETRY_AFTER_OUTAGE: Duration = Duration::from_secs(1);

/// How long a client should wait before repeating a call that met
/// contention in the database (a lock wait timed out, a deadlock, a
/// serialization failure): the other transaction is usually done by then.
pub const RETRY_AFTER_CONTENTION: Duration = Duration::from_millis(200);

/// `UNAVAILABLE` with `google.rpc.RetryInfo` saying when to repeat the call.
fn retry_later(message: String, delay: Duration) -> Status {
    let mut details = ErrorDetails::new();
    details.set_retry_info(Some(delay));
    Status::with_error_details(Code::Unavailable, message, details)
}

/// The delay a status asks for before the same call is repeated: its
/// `RetryInfo`, or `fallback` for a transient code without one; `None` when
/// the call must not be repeated as it is ([`is_transient`]).
pub fn retry_delay(status: &Status, fallback: Duration) -> Option<Duration> {
    if !is_transient(status.code()) {
        return None;
    }
    let asked = status.get_details_retry_info().and_then(|r| r.retry_delay);
    Some(asked.unwrap_or(fallback))
}

impl From<tokio_postgres::Error> for ApiError {
    fn from(e: tokio_postgres::Error) -> Self {
        match crate::db::is_transient_error(&e) {
            Some(crate::db::Transient::Outage) => {
                tracing::warn!(cause = %crate::db::describe(&e), "database unavailable");
                ApiError::Unavailable("database unavailable; retry later".into())
            }
            Some(crate::db::Transient::Contention) => {
                tracing::warn!(cause = %crate::db::describe(&e), "database busy");
                ApiError::Contention("the database is busy (a lock or statement timed out); retry shortly".into())
            }
            None => ApiError::Internal(format!("database: {}", crate::db::describe(&e))),
        }
    }
}

impl From<deadpool_postgres::PoolError> for ApiError {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        match e {
            deadpool_postgres::PoolError::Backend(e) => e.into(),
            other => {
                tracing::warn!(cause = %other, "database pool unavailable");
                ApiError::Unavailable("database unavailable; retry later".into())
            }
        }
    }
}

/// True for the codes that say the peer or the network is having a moment (a
/// deploy, a restart, a database failover or lock wait, an overload), so the
/// same call may be repeated later with backoff: the one rule used by the
/// relay, the Registry client and the CLI, and the README's table of codes.
/// `INTERNAL` is not transient (a bug does not heal by repetition), nor is
/// `ABORTED` (the client must read again first: a version moved on, another
/// upload runs), nor anything the caller must change.
pub fn is_transient(code: Code) -> bool {
    matches!(
        code,
        Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Unknown | Code::ResourceExhausted
    )
}

/// Builds an `INVALID_ARGUMENT` status for a field, outside a handler.
pub fn invalid_status(field: &str, description: &str) -> Status {
    ApiError::invalid(field, description).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transient_errors_are_unavailable_with_a_retry_delay_and_bugs_are_not() {
        let busy = Status::from(ApiError::Contention("busy".into()));
        assert_eq!(busy.code(), Code::Unavailable);
        assert_eq!(retry_delay(&busy, Duration::from_secs(9)), Some(RETRY_AFTER_CONTENTION));
        let down = Status::from(ApiError::Unavailable("down".into()));
        assert_eq!(retry_delay(&down, Duration::from_secs(9)), Some(RETRY_AFTER_OUTAGE));
        let bare = Status::deadline_exceeded("late");
        assert_eq!(retry_delay(&bare, Duration::from_secs(9)), Some(Duration::from_secs(9)));
        for code in [Code::Internal, Code::Aborted, Code::InvalidArgument, Code::FailedPrecondition] {
            assert!(!is_transient(code), "{code:?}");
            assert_eq!(retry_delay(&Status::new(code, "x"), Duration::from_secs(1)), None);
        }
    }
}
