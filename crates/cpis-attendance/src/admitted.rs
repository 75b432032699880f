//! Who a handler serves, as the authorization layer (`POLICY`) already
//! decided it: these are not role checks but the values behind them. A
//! caller `POLICY` does not admit to a method never reaches its handler, so
//! meeting one here is a bug (an internal error), not a refusal. The one
//! refusal decided here is the person's: whether their selected role carries
//! the national RBAC activity the access needs ([`may`]).

use cpis_domain::user::{Access, Viewer};
use cpis_runtime::{ApiError, Caller};

/// Whether `viewer` may make `access` (its national RBAC activity):
/// `PERMISSION_DENIED` naming the activity otherwise. Called before anything
/// is looked up or stored.
pub fn may(viewer: &Viewer, access: Access) -> Result<(), ApiError> {
    viewer.may(access).map_err(|refusal| ApiError::PermissionDenied(refusal.to_string()))
}

/// The setting calling a method `POLICY` opens to settings only.
pub fn setting(caller: &Caller) -> Result<&str, ApiError> {
    match caller {
        Caller::Setting(code) => Ok(code),
        other => Err(not_admitted(other)),
    }
}

/// The council calling a method `POLICY` opens to councils only.
pub fn council(caller: &Caller) -> Result<&str, ApiError> {
    match caller {
        Caller::Council(code) => Ok(code),
        other => Err(not_admitted(other)),
    }
}

/// The error for a caller that `POLICY` should have refused.
pub fn not_admitted(caller: &Caller) -> ApiError {
    ApiError::internal(format!(
        "a {} caller passed the authorization layer of a method not open to it",
        caller.kind().as_str()
    ))
}
