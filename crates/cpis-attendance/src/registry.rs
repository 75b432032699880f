//! Flag look-ups at the Registry (as `service/attendance`), always within the
//! caller's deadline, so a slow or absent Registry turns into a quick
//! `UNAVAILABLE` at the front desk instead of a hung check-in.

use chrono::NaiveDate;
use cpis_domain::validate::NhsNumber;
use cpis_proto::registry::v1::{
    registry_service_client::RegistryServiceClient, LookupFlagsRequest, LookupFlagsResponse,
};
use cpis_runtime::ApiError;
use std::time::Duration;
use tokio::time::Instant;
use tonic::transport::Channel;
use tonic::Code;

/// The deadline the caller of the current request set, if any.
#[derive(Debug, Clone, Copy)]
pub struct CallerDeadline(Option<Instant>);

impl CallerDeadline {
    /// Reads the incoming `grpc-timeout` header; call first thing in a handler.
    pub fn of<T>(request: &tonic::Request<T>) -> Self {
        let timeout = request.metadata().get("grpc-timeout").and_then(|v| v.to_str().ok()).and_then(parse_grpc_timeout);
        CallerDeadline(timeout.map(|t| Instant::now() + t))
    }

    /// No deadline from the caller (outgoing calls take at most their cap).
    pub fn unbounded() -> Self {
        CallerDeadline(None)
    }

    /// How long an outgoing call may take: at most `cap`, and ending a little
    /// before the caller's deadline so that our answer (say, `UNAVAILABLE`)
    /// still reaches the caller in time. `None` when no time is left.
    pub fn budget(&self, cap: Duration) -> Option<Duration> {
        let Some(deadline) = self.0 else {
            return Some(cap);
        };
        let remaining = deadline.saturating_duration_since(Instant::now());
        let margin = (remaining / 10).min(Duration::from_millis(100));
        let budget = remaining.saturating_sub(margin).min(cap);
        (!budget.is_zero()).then_some(budget)
    }
}

/// Parses a gRPC `grpc-timeout` value: up to 8 digits and a unit
/// (`H`, `M`, `S`, `m`, `u`, `n`).
pub fn parse_grpc_timeout(value: &str) -> Option<Duration> {
    if value.len() < 2 || value.len() > 9 || !value.is_ascii() {
        return None;
    }
    let (digits, unit) = value.split_at(value.len() - 1);
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.checked_mul(3600)?),
        "M" => Duration::from_secs(n.checked_mul(60)?),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// The Registry's flag look-up, as this service calls it.
#[derive(Debug, Clone)]
pub struct FlagLookup {
    client: RegistryServiceClient<Channel>,
    timeout: Duration,
}

impl FlagLookup {
    /// Look-ups over `channel`, each taking at most `timeout`.
    pub fn new(channel: Channel, timeout: Duration) -> Self {
        Self { client: RegistryServiceClient::new(channel), timeout }
    }

    /// Every flag in scope for `nhs_number` on `on_date` (today when `None`),
    /// with the owning councils' case references.
    pub async fn lookup(
        &self,
        nhs_number: &NhsNumber,
        on_date: Option<NaiveDate>,
        deadline: CallerDeadline,
    ) -> Result<LookupFlagsResponse, ApiError> {
        let Some(budget) = deadline.budget(self.timeout) else {
            return Err(ApiError::DeadlineExceeded(
                "the call's deadline passed before the flags could be looked up".into(),
            ));
        };
        let mut request = tonic::Request::new(LookupFlagsRequest {
            nhs_number: nhs_number.as_str().to_string(),
            on_date: on_date.map(|d| d.format("%Y-%m-%d").to_string()).unwrap_or_default(),
        });
        // The header tells the Registry; the local timer also bounds
        // connecting, which the header does not.
        request.set_timeout(budget);
        cpis_runtime::telemetry::inject_context(&mut request);
        let mut client = self.client.clone();
        match tokio::time::timeout(budget, client.lookup_flags(request)).await {
            Ok(Ok(response)) => Ok(response.into_inner()),
            Ok(Err(status)) => Err(from_registry_status(&status)),
            Err(_) => {
                tracing::warn!(budget_ms = budget.as_millis() as u64, "registry did not answer LookupFlags in time");
                Err(unavailable())
            }
        }
    }
}

fn unavailable() -> ApiError {
    ApiError::Unavailable("the flag registry is unavailable; retry later".into())
}

/// Maps the Registry's refusal to ours. Its message is not passed on or
/// logged: only the code, which cannot carry personal data.
fn from_registry_status(status: &tonic::Status) -> ApiError {
    match status.code() {
        Code::Unavailable
        | Code::DeadlineExceeded
        | Code::Cancelled
        | Code::Unknown
        | Code::ResourceExhausted
        | Code::Aborted => {
            tracing::warn!(code = ?status.code(), "registry LookupFlags failed");
            unavailable()
        }
        code => ApiError::internal(format!("registry LookupFlags answered {code:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts_parse_in_every_unit() {
        assert_eq!(parse_grpc_timeout("2H"), Some(Duration::from_secs(7200)));
        assert_eq!(parse_grpc_timeout("3M"), Some(Duration::from_secs(180)));
        assert_eq!(parse_grpc_timeout("5S"), Some(Duration::from_secs(5)));
        assert_eq!(parse_grpc_timeout("250m"), Some(Duration::from_millis(250)));
        assert_eq!(parse_grpc_timeout("99999999u"), Some(Duration::from_micros(99_999_999)));
        assert_eq!(parse_grpc_timeout("10n"), Some(Duration::from_nanos(10)));
        for bad in ["", "S", "5", "5s", "-5S", "+5S", "123456789S", "1.5S", "５S"] {
            assert_eq!(parse_grpc_timeout(bad), None, "{bad:?}");
        }
    }

    #[tokio::test]
    async fn budgets_end_before_the_callers_deadline_and_respect_the_cap() {
        let cap = Duration::from_secs(2);
        assert_eq!(CallerDeadline(None).budget(cap), Some(cap));
        let soon = CallerDeadline(Some(Instant::now() + Duration::from_millis(500)));
        let b = soon.budget(cap).unwrap();
        assert!(b < Duration::from_millis(500) && b >= Duration::from_millis(400), "{b:?}");
        let late = CallerDeadline(Some(Instant::now() + Duration::from_secs(60)));
        assert_eq!(late.budget(cap), Some(cap));
        let gone = CallerDeadline(Some(Instant::now()));
        assert_eq!(gone.budget(cap), None);
    }
}
