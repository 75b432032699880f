//! The outbox relay: publishes each queued alert to the Notification service
//! until it has durably stored it, so a Notification outage delays alerts but
//! never loses one and never holds up a check-in.
//!
//! Due rows are claimed with `FOR UPDATE SKIP LOCKED` inside a transaction
//! that lasts while they are published: several replicas share the outbox
//! without sending one row at the same time, and a relay that dies simply
//! releases its rows. A row is marked delivered only after `PublishAlert`
//! answered OK; anything else schedules another attempt with exponential
//! backoff. A repeat after a lost answer is absorbed by `PublishAlert`'s
//! idempotency on (council, episode).

use crate::store::{self, PendingAlert};
use cpis_core::db::DbPool;
use cpis_core::server::CancellationToken;
use cpis_proto::notification::v1::notification_service_client::NotificationServiceClient;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;
use tonic::transport::Channel;
use tonic::Code;
use tracing::Instrument;

/// How the relay paces itself.
#[derive(Debug, Clone)]
pub struct RelaySettings {
    /// Rows claimed per transaction.
    pub batch_size: i64,
    /// Deadline of one `PublishAlert` call.
    pub publish_timeout: Duration,
    /// Delay before the first retry; doubles with each failure.
    pub retry_initial: Duration,
    /// Longest delay between retries.
    pub retry_max: Duration,
    /// Longest sleep between passes when nothing wakes the relay.
    pub poll_interval: Duration,
}

/// Metrics of the outbox and its relay.
#[derive(Debug, Clone)]
pub struct RelayMetrics {
    /// Undelivered outbox rows.
    pub depth: prometheus::IntGauge,
    /// Age in seconds of the oldest undelivered row.
    pub oldest_age: prometheus::Gauge,
    /// Alerts the Notification service has stored.
    pub delivered: prometheus::IntCounter,
    /// Failed publish attempts (each retried later).
    pub failed: prometheus::IntCounter,
}

impl RelayMetrics {
    /// Fresh, unregistered metrics.
    pub fn new() -> Self {
        Self {
            depth: prometheus::IntGauge::new("attendance_outbox_depth", "Alerts waiting in the outbox")
                .expect("static metric"),
            oldest_age: prometheus::Gauge::new(
                "attendance_outbox_oldest_age_seconds",
                "Age of the oldest alert waiting in the outbox",
            )
            .expect("static metric"),
            delivered: prometheus::IntCounter::new(
                "attendance_alerts_relayed_total",
                "Alerts relayed to the Notification service",
            )
            .expect("static metric"),
            failed: prometheus::IntCounter::new(
                "attendance_alert_relay_failures_total",
                "Failed attempts to relay an alert (retried)",
            )
            .expect("static metric"),
        }
    }

    /// Registers every metric with `metrics`.
    pub fn register(&self, metrics: &cpis_core::metrics::Metrics) {
        metrics.register(self.depth.clone());
        metrics.register(self.oldest_age.clone());
        metrics.register(self.delivered.clone());
        metrics.register(self.failed.clone());
    }
}

impl Default for RelayMetrics {
    fn default() -> Self {
        Self::new()
    }
}

/// The background worker.
#[derive(Debug, Clone)]
pub struct Relay {
    pool: DbPool,
    client: NotificationServiceClient<Channel>,
    settings: RelaySettings,
    wake: Arc<Notify>,
    metrics: RelayMetrics,
}

impl Relay {
    /// A relay publishing over `channel`; `wake` is notified after a check-in
    /// queues alerts.
    pub fn new(
        pool: DbPool,
        channel: Channel,
        settings: RelaySettings,
        wake: Arc<Notify>,
        metrics: RelayMetrics,
    ) -> Self {
        Self { pool, client: NotificationServiceClient::new(channel), settings, wake, metrics }
    }

    /// Runs until `stop` fires. An interrupted publish leaves its row queued.
    pub fn spawn(self, stop: CancellationToken) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            tokio::select! {
                _ = stop.cancelled() => {}
                _ = self.run() => {}
            }
            tracing::debug!("outbox relay stopped");
        })
    }

    async fn run(self) {
        loop {
            let sleep = match self.pass().await {
                Ok(next_due) => next_due.map_or(self.settings.poll_interval, |d| d.min(self.settings.poll_interval)),
                Err(e) => {
                    tracing::warn!(error = %e, "outbox relay pass failed");
                    self.settings.poll_interval
                }
            };
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(sleep) => {}
            }
        }
    }

    /// Publishes every due row, batch by batch; returns when the next
    /// undelivered row falls due.
    async fn pass(&self) -> Result<Option<Duration>, DbFailure> {
        loop {
            let claimed = self.deliver_batch().await?;
            if claimed < self.settings.batch_size {
                break;
            }
        }
        let db = self.pool.get().await?;
        let backlog = store::backlog(&db).await?;
        self.metrics.depth.set(backlog.depth);
        self.metrics.oldest_age.set(backlog.oldest_age);
        Ok(backlog.next_due_in)
    }

    /// Claims and publishes one batch; returns how many rows it claimed.
    async fn deliver_batch(&self) -> Result<i64, DbFailure> {
        let mut db = self.pool.get().await?;
        let tx = db.transaction().await?;
        let due = store::claim_due_alerts(&tx, self.settings.batch_size).await?;
        let claimed = due.len() as i64;
        // Councils in parallel, each council's alerts one after another in
        // outbox order (its sequence order): one publish waits for the
        // Notification commit, so one at a time capped the relay near 190/s.
        let mut groups: Vec<Vec<&PendingAlert>> = Vec::new();
        for alert in &due {
            match groups.iter_mut().find(|g| g[0].request.council_code == alert.request.council_code) {
                Some(g) => g.push(alert),
                None => groups.push(vec![alert]),
            }
        }
        let outcomes = futures::future::join_all(groups.into_iter().map(|group| async move {
            let mut out = Vec::new();
            let mut outage: Option<Failure> = None;
            for alert in group {
                let result = match &outage {
                    Some(failure) => {
                        Err(Failure { error: format!("not attempted after: {}", failure.error), outage: true })
                    }
                    None => {
                        let span =
                            tracing::info_span!("outbox.relay", otel.name = "relay alert", outbox_id = alert.outbox_id);
                        cpis_core::telemetry::continue_trace(&span, alert.traceparent.as_deref());
                        self.publish(alert).instrument(span).await
                    }
                };
                if let Err(f) = &result {
                    if f.outage && outage.is_none() {
                        outage = Some(f.clone());
                    }
                }
                out.push((alert, result));
            }
            out
        }))
        .await;
        for (alert, result) in outcomes.into_iter().flatten() {
            match result {
                Ok(sequence) => {
                    store::mark_delivered(&tx, alert.outbox_id).await?;
                    self.metrics.delivered.inc();
                    tracing::info!(
                        outbox_id = alert.outbox_id,
                        council = %alert.request.council_code,
                        sequence,
                        "alert delivered"
                    );
                }
                Err(failure) => {
                    self.metrics.failed.inc();
                    let retry_in =
                        backoff(alert.attempts + 1, self.settings.retry_initial, self.settings.retry_max, jitter());
                    store::mark_failed(&tx, alert.outbox_id, retry_in, &failure.error).await?;
                    // Only the first failure of a council's run is worth a line:
                    // the rest of the run was not attempted after it.
                    if !failure.error.starts_with("not attempted") {
                        tracing::warn!(
                            outbox_id = alert.outbox_id,
                            attempts = alert.attempts + 1,
                            retry_in_ms = retry_in.as_millis() as u64,
                            error = %failure.error,
                            "alert not delivered; will retry"
                        );
                    }
                }
            }
        }
        tx.commit().await?;
        Ok(claimed)
    }

    /// One `PublishAlert` call.
    async fn publish(&self, alert: &PendingAlert) -> Result<i64, Failure> {
        let timeout = self.settings.publish_timeout;
        let mut request = tonic::Request::new(alert.request.clone());
        request.set_timeout(timeout);
        cpis_core::telemetry::inject_context(&mut request);
        let mut client = self.client.clone();
        match tokio::time::timeout(timeout, client.publish_alert(request)).await {
            Ok(Ok(response)) => Ok(response.into_inner().sequence),
            // Only the code is kept: a message might quote the request.
            Ok(Err(status)) => Err(Failure {
                error: format!("PublishAlert answered {:?}", status.code()),
                outage: is_outage(status.code()),
            }),
            Err(_) => Err(Failure { error: format!("PublishAlert timed out after {timeout:?}"), outage: true }),
        }
    }
}

/// A database failure of the relay, described without the server's DETAIL
/// (which may quote values such as NHS numbers).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct DbFailure(String);

impl From<tokio_postgres::Error> for DbFailure {
    fn from(e: tokio_postgres::Error) -> Self {
        DbFailure(cpis_core::db::describe(&e))
    }
}

impl From<deadpool_postgres::PoolError> for DbFailure {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        match e {
            deadpool_postgres::PoolError::Backend(e) => e.into(),
            other => DbFailure(format!("connection pool: {other}")),
        }
    }
}

/// Why one alert was not delivered.
#[derive(Debug, Clone)]
struct Failure {
    /// A description without personal data (it is stored as `last_error`).
    error: String,
    /// True when the Notification service, not this alert, is the problem.
    outage: bool,
}

/// True for answers that say the Notification service (not this alert) is
/// the problem.
fn is_outage(code: Code) -> bool {
    matches!(
        code,
        Code::Unavailable
            | Code::DeadlineExceeded
            | Code::Unknown
            | Code::Cancelled
            | Code::Unimplemented
            | Code::ResourceExhausted
    )
}

/// The delay before attempt `attempts + 1`: `initial * 2^(attempts-1)`,
/// capped at `max`, scaled into its upper half by `jitter` (0..=1) so that
/// replicas recovering from the same outage do not retry in lockstep.
pub fn backoff(attempts: i32, initial: Duration, max: Duration, jitter: f64) -> Duration {
    let doublings = attempts.saturating_sub(1).clamp(0, 30) as u32;
    let full = initial.saturating_mul(1u32 << doublings).min(max);
    full.mul_f64(0.5 + 0.5 * jitter.clamp(0.0, 1.0))
}

/// A random number in `0..=1`, from the random bits of a v4 UUID (which
/// already draws from the OS), to avoid another dependency.
fn jitter() -> f64 {
    let b = uuid::Uuid::new_v4().into_bytes();
    f64::from(u32::from_le_bytes([b[12], b[13], b[14], b[15]])) / f64::from(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_within_bounds() {
        let (lo, hi) = (Duration::from_millis(200), Duration::from_secs(30));
        assert_eq!(backoff(1, lo, hi, 1.0), lo);
        assert_eq!(backoff(2, lo, hi, 1.0), Duration::from_millis(400));
        assert_eq!(backoff(4, lo, hi, 1.0), Duration::from_millis(1600));
        assert_eq!(backoff(50, lo, hi, 1.0), hi);
        assert_eq!(backoff(i32::MAX, lo, hi, 1.0), hi);
        assert_eq!(backoff(1, lo, hi, 0.0), Duration::from_millis(100));
        assert_eq!(backoff(0, lo, hi, 1.0), lo);
        for _ in 0..100 {
            let d = backoff(3, lo, hi, jitter());
            assert!(d >= Duration::from_millis(400) && d <= Duration::from_millis(800));
        }
    }
}
