//! Flag look-ups at the Registry (as `service/attendance`), always within the
//! caller's deadline, so a slow or absent Registry turns into a quick
//! `UNAVAILABLE` at the front desk instead of a hung check-in.
//!
//! # Coalescing
//!
//! Concurrent check-ins share round trips. A look-up asked while none is in
//! flight goes at once, alone, as `LookupFlags` (no window, so a lone
//! check-in waits for nothing). Look-ups asked while one is in flight queue;
//! when it returns they go together as one `LookupFlagsBatch` (one indexed
//! query at the Registry), at most [`crate::coalesce::MAX_COALESCED`] at a time (a queue that
//! fills up goes at once, in parallel): [`crate::coalesce`]. Each caller keeps its own deadline
//! (it stops waiting when its budget ends, whatever the batch does) and gets
//! its own answer or error; a caller that gave up is left out of the next
//! batch. A Registry without `LookupFlagsBatch` (an older version during a
//! rolling deploy) gets the queued look-ups one by one, in parallel.

use crate::coalesce::Coalescer;
use chrono::NaiveDate;
use cpis_domain::validate::NhsNumber;
use cpis_proto::registry::v1::{
    registry_service_client::RegistryServiceClient, LookupFlagsBatchRequest, LookupFlagsRequest, LookupFlagsResponse,
};
use cpis_runtime::ApiError;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::sync::oneshot;
use tokio::time::Instant;
use tonic::transport::Channel;
use tonic::Code;
use tracing::Instrument;

/// How long look-ups go one by one after the Registry answered
/// `LookupFlagsBatch` with UNIMPLEMENTED, before a batch is tried again.
const BATCH_REPROBE: Duration = Duration::from_secs(60);

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
    queue: Arc<Coalescer<Waiter>>,
    /// Until when look-ups go one by one (no `LookupFlagsBatch` at the Registry).
    no_batches_until: Arc<Mutex<Option<Instant>>>,
}

/// One caller's look-up, waiting for its answer.
#[derive(Debug)]
struct Waiter {
    request: LookupFlagsRequest,
    /// When the caller stops waiting.
    deadline: Instant,
    /// The caller's span, so the call joins its trace.
    span: tracing::Span,
    answer: oneshot::Sender<Result<LookupFlagsResponse, ApiError>>,
}

impl FlagLookup {
    /// Look-ups over `channel`, each taking at most `timeout`.
    pub fn new(channel: Channel, timeout: Duration) -> Self {
        Self {
            client: RegistryServiceClient::new(channel),
            timeout,
            queue: Arc::default(),
            no_batches_until: Arc::default(),
        }
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
        let request = LookupFlagsRequest {
            nhs_number: nhs_number.as_str().to_string(),
            on_date: on_date.map(|d| d.format("%Y-%m-%d").to_string()).unwrap_or_default(),
        };
        let (answer, answered) = oneshot::channel();
        let waiter = Waiter { request, deadline: Instant::now() + budget, span: tracing::Span::current(), answer };
        if let Some(batch) = self.queue.enqueue(waiter) {
            let this = self.clone();
            tokio::spawn(async move { this.queue.drain(batch, "flags", |b| this.send(b)).await });
        }
        match tokio::time::timeout(budget, answered).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(ApiError::internal("the flag look-up was dropped unanswered")),
            // The call (or the batch it joined) logs the timeout it saw.
            Err(_) => Err(unavailable()),
        }
    }

    /// One call for the look-ups of `batch` whose callers still wait.
    async fn send(&self, mut batch: Vec<Waiter>) {
        let now = Instant::now();
        batch.retain(|w| !w.answer.is_closed() && w.deadline > now);
        let Some(latest) = batch.iter().map(|w| w.deadline).max() else {
            return;
        };
        let budget = latest - now;
        if batch.len() == 1 || self.batches_refused(now) {
            let calls = batch.into_iter().map(|w| async move {
                let budget = w.deadline.saturating_duration_since(Instant::now());
                let result = self.call_one(w.request, budget).instrument(w.span).await;
                let _ = w.answer.send(result);
            });
            futures::future::join_all(calls).await;
            return;
        }
        let span = batch[0].span.clone();
        let lookups = batch.iter().map(|w| w.request.clone()).collect();
        let mut request = tonic::Request::new(LookupFlagsBatchRequest { lookups });
        request.set_timeout(budget);
        let mut client = self.client.clone();
        let call = async {
            cpis_runtime::telemetry::inject_context(&mut request);
            tokio::time::timeout(budget, client.lookup_flags_batch(request)).await
        };
        match call.instrument(span).await {
            Ok(Ok(response)) => {
                let results = response.into_inner().results;
                if results.len() != batch.len() {
                    for w in batch {
                        let _ = w.answer.send(Err(ApiError::internal("registry answered a batch of another length")));
                    }
                    return;
                }
                for (w, result) in batch.into_iter().zip(results) {
                    let _ = w.answer.send(Ok(result));
                }
            }
            Ok(Err(status)) if status.code() == Code::Unimplemented => {
                tracing::warn!("the registry has no LookupFlagsBatch; looking up one by one");
                *self.no_batches_until.lock().unwrap_or_else(PoisonError::into_inner) =
                    Some(Instant::now() + BATCH_REPROBE);
                Box::pin(self.send(batch)).await;
            }
            Ok(Err(status)) => {
                for w in batch {
                    let _ = w.answer.send(Err(from_registry_status(&status)));
                }
            }
            Err(_) => {
                tracing::warn!(
                    budget_ms = budget.as_millis() as u64,
                    "registry did not answer LookupFlagsBatch in time"
                );
                for w in batch {
                    let _ = w.answer.send(Err(unavailable()));
                }
            }
        }
    }

    fn batches_refused(&self, now: Instant) -> bool {
        self.no_batches_until.lock().unwrap_or_else(PoisonError::into_inner).is_some_and(|t| now < t)
    }

    /// One `LookupFlags` call taking at most `budget`.
    async fn call_one(&self, request: LookupFlagsRequest, budget: Duration) -> Result<LookupFlagsResponse, ApiError> {
        let mut request = tonic::Request::new(request);
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
        code if cpis_runtime::error::is_transient(code) => {
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
