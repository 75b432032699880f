//! Who a handler serves, as the authorization layer (`POLICY`) already
//! decided it: these are not role checks but the values behind them. A
//! caller `POLICY` does not admit to a method never reaches its handler, so
//! meeting one here is a bug (an internal error), not a refusal.

use cpis_runtime::{ApiError, Caller};

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
