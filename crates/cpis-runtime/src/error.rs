//! One error type for every handler, with one obvious mapping to gRPC codes.
//! Handlers return `Result<_, ApiError>`; internal causes are logged with a
//! reference id and never sent to the caller.

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
            ApiError::Unavailable(_) => Code::Unavailable,
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
            ApiError::Unavailable(m) => Status::unavailable(m),
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

impl From<tokio_postgres::Error> for ApiError {
    fn from(e: tokio_postgres::Error) -> Self {
        if crate::db::is_connection_error(&e) {
            tracing::warn!(cause = %crate::db::describe(&e), "database unavailable");
            ApiError::Unavailable("database unavailable; retry later".into())
        } else {
            ApiError::Internal(format!("database: {}", crate::db::describe(&e)))
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
/// deploy, a restart, a database failover, an overload), so the same call may
/// be retried later with backoff: the one rule used by the relay, the Registry
/// client and the CLI. `INTERNAL` is not transient (a bug does not heal by
/// repetition), nor is anything the caller must change.
pub fn is_transient(code: Code) -> bool {
    matches!(
        code,
        Code::Unavailable
            | Code::DeadlineExceeded
            | Code::Cancelled
            | Code::Unknown
            | Code::ResourceExhausted
            | Code::Aborted
    )
}

/// Builds an `INVALID_ARGUMENT` status for a field, outside a handler.
pub fn invalid_status(field: &str, description: &str) -> Status {
    ApiError::invalid(field, description).into()
}
