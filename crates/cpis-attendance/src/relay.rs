//! The outbox relay: publishes each queued alert to the Notification service
//! until it has durably stored it, so a Notification outage delays alerts but
//! never loses one and never holds up a check-in.
//!
//! # Order
//!
//! A council's alerts receive their sequences in the order their check-ins
//! committed, whatever happens in between (outages, retries, any number of
//! Attendance replicas, backlogs larger than one read):
//!
//! - each outbox row gets a per-council `position` from a counter row that
//!   its check-in's transaction holds locked until it commits, so positions
//!   follow commit order and a later position is never visible before an
//!   earlier one;
//! - the relay publishes a council's rows strictly by position, the next one
//!   only after `PublishAlert` answered OK for the one before (and so stored
//!   it with its sequence); a failure stops the council there, and the whole
//!   council is retried later from that row (head of line first), never a
//!   single row on its own schedule;
//! - one relay at a time works on a council (a lease), and even two relays
//!   that both believe they hold it (a lease expired under a stalled relay)
//!   cannot reorder: each publishes only after the row before is stored, and
//!   a repeat is absorbed by `PublishAlert`'s idempotency on (council,
//!   episode), answering the sequence it already has.
//!
//! # Liveness
//!
//! No database transaction or row lock is held across a `PublishAlert` call:
//! a relay leases councils in one statement (`relay_councils.lease_until`),
//! reads their rows, publishes, and marks each row delivered in one statement
//! that also renews the lease. A relay that vanishes (crash, partition, lost
//! node: no FIN, no RST) loses its leases after [`RelaySettings::lease`], and
//! another replica carries on from the first undelivered row; the alerts it
//! was sending are neither lost nor duplicated. Every database connection
//! sets `lock_timeout`, `idle_in_transaction_session_timeout` and TCP
//! keepalives ([`cpis_runtime::db::SessionSettings`]), and the Notification
//! service holds a council's counter lock only inside one statement, so no
//! silently lost connection can stall a council for longer than those bounds.
//! A relay that cannot reach the Notification service at all (every publish
//! of a pass failed as an outage) pauses with exponential backoff, then tries
//! one council at a time until a publish succeeds, leaving the councils to
//! replicas that can deliver them; a council it failed waits only its own
//! short retry delay. A relay that stops releases its councils at once.
//!
//! The tests that prove this: `tests/e2e/relay.rs` (two replicas drain a
//! backlog of 5,000 alerts for 20 councils after an outage, each council in
//! check-in order), `tests/e2e/attendance.rs` (order after a Notification
//! outage) and `tests/netfault.rs` (packets silently dropped between a relay
//! and PostgreSQL in the middle of a pass, a Notification replica and
//! PostgreSQL, a relay and its Notification replica, in Linux network
//! namespaces: alerts reach the healthy replica within 20 s with 3 s leases,
//! in order, none lost or repeated).

use crate::store::{self, LeasedCouncil, PendingAlert};
use cpis_proto::notification::v1::notification_service_client::NotificationServiceClient;
use cpis_runtime::db::DbPool;
use cpis_runtime::server::CancellationToken;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Mutex, Notify};
use tokio::time::Instant;
use tonic::transport::Channel;
use tonic::Code;
use tracing::Instrument;
use uuid::Uuid;

/// Most councils one relay works on at once (England has about 153).
const MAX_COUNCILS_PER_PASS: i64 = 64;

/// How the relay paces itself.
#[derive(Debug, Clone)]
pub struct RelaySettings {
    /// A council's rows read at a time.
    pub batch_size: i64,
    /// Deadline of one `PublishAlert` call.
    pub publish_timeout: Duration,
    /// Delay before the first retry; doubles with each failure.
    pub retry_initial: Duration,
    /// Longest delay between retries.
    pub retry_max: Duration,
    /// Longest sleep between passes when nothing wakes the relay.
    pub poll_interval: Duration,
    /// How long a council stays with a relay that stops renewing its lease
    /// (renewed with every delivery; must exceed `publish_timeout`).
    pub lease: Duration,
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
    pub fn register(&self, metrics: &cpis_runtime::metrics::Metrics) {
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
    /// This relay's identity as a lease holder.
    id: Uuid,
    /// Whether this relay is pausing after outages.
    breaker: Arc<Mutex<Breaker>>,
}

/// A relay that cannot reach the Notification service stops taking
/// councils for a while (exponentially longer), then tries one council only,
/// so that the councils go to replicas that can deliver them.
#[derive(Debug, Default)]
struct Breaker {
    /// Passes in a row in which every publish failed as an outage.
    outage_passes: i32,
    /// No council is taken before this.
    paused_until: Option<Instant>,
}

/// What one pass did.
#[derive(Debug, Default, Clone, Copy)]
struct PassOutcome {
    /// Alerts the Notification service stored.
    delivered: usize,
    /// Councils stopped by an outage-type failure.
    outages: usize,
    /// Councils stopped by any other failure.
    rejections: usize,
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
        Self {
            pool,
            client: NotificationServiceClient::new(channel),
            settings,
            wake,
            metrics,
            id: Uuid::new_v4(),
            breaker: Arc::default(),
        }
    }

    /// Runs until `stop` fires. An interrupted publish leaves its row queued;
    /// the relay then releases its councils to the other replicas.
    pub fn spawn(self, stop: CancellationToken) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            // The id this relay's leases carry (attendance.relay_councils.holder).
            tracing::info!(relay = %self.id, "outbox relay started");
            let relay = self.clone();
            tokio::select! {
                _ = stop.cancelled() => {}
                _ = relay.run() => {}
            }
            // Hand this relay's councils over now rather than when the
            // leases run out (best effort: a relay that vanishes cannot).
            let release = async {
                let db = self.pool.get().await.ok()?;
                store::release_all(&db, self.id).await.ok()
            };
            let released = tokio::time::timeout(Duration::from_secs(1), release).await.ok().flatten();
            tracing::debug!(released, "outbox relay stopped");
        })
    }

    async fn run(self) {
        loop {
            // A pause holds even against wake-ups from local check-ins.
            let (paused_until, probing) = {
                let b = self.breaker.lock().await;
                (b.paused_until, b.outage_passes > 0)
            };
            if let Some(until) = paused_until {
                tokio::time::sleep_until(until).await;
            }
            let limit = if probing { 1 } else { MAX_COUNCILS_PER_PASS };
            let sleep = match self.pass(limit).await {
                // Work was done: look again at once (rows may have arrived
                // for a council while this relay held it).
                Ok((outcome, _)) if outcome.delivered > 0 && outcome.outages == 0 => {
                    self.pause_after(outcome).await;
                    Duration::ZERO
                }
                Ok((outcome, next_due)) => {
                    let due = next_due.map_or(self.settings.poll_interval, |d| d.min(self.settings.poll_interval));
                    self.pause_after(outcome).await;
                    due
                }
                Err(e) => {
                    tracing::warn!(error = %e, "outbox relay pass failed");
                    self.settings.poll_interval
                }
            };
            if sleep.is_zero() {
                continue;
            }
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(sleep) => {}
            }
        }
    }

    /// Pauses this relay when it cannot reach the Notification service at
    /// all (every council it tried failed as an outage): exponentially
    /// longer, so it leaves its councils to replicas that can; any delivery
    /// ends the pause.
    async fn pause_after(&self, outcome: PassOutcome) {
        let mut b = self.breaker.lock().await;
        if outcome.outages > 0 && outcome.delivered == 0 && outcome.rejections == 0 {
            b.outage_passes = b.outage_passes.saturating_add(1);
            let pause = backoff(b.outage_passes, self.settings.retry_initial, self.settings.retry_max, jitter());
            b.paused_until = Some(Instant::now() + pause);
        } else if outcome.delivered > 0 || outcome.rejections > 0 {
            *b = Breaker::default();
        }
    }

    /// Leases the due councils and publishes each (councils in parallel,
    /// each in order); returns what it did and when the next council falls due.
    async fn pass(&self, limit: i64) -> Result<(PassOutcome, Option<Duration>), DbFailure> {
        let leased = {
            let db = self.pool.get().await?;
            store::lease_councils(&db, self.id, self.settings.lease, limit).await?
        };
        let results = futures::future::join_all(leased.into_iter().map(|c| self.drain_council(c))).await;
        let mut outcome = PassOutcome::default();
        let mut db_failure = None;
        for r in results {
            match r {
                Ok(Drained { delivered, stopped }) => {
                    outcome.delivered += delivered;
                    match stopped {
                        Some(f) if f.outage => outcome.outages += 1,
                        Some(_) => outcome.rejections += 1,
                        None => {}
                    }
                }
                Err(e) => db_failure = Some(e),
            }
        }
        if let Some(e) = db_failure {
            return Err(e);
        }
        let db = self.pool.get().await?;
        let backlog = store::backlog(&db).await?;
        self.metrics.depth.set(backlog.depth);
        self.metrics.oldest_age.set(backlog.oldest_age);
        Ok((outcome, backlog.next_due_in))
    }

    /// Publishes a leased council's undelivered alerts in position order
    /// until none is left, one fails, or the lease is lost.
    async fn drain_council(&self, council: LeasedCouncil) -> Result<Drained, DbFailure> {
        let code = council.council_code.as_str();
        let mut delivered = 0;
        loop {
            let due = {
                let db = self.pool.get().await?;
                store::pending_for_council(&db, code, self.settings.batch_size).await?
            };
            if due.is_empty() {
                let db = self.pool.get().await?;
                store::release_council(&db, code, self.id).await?;
                return Ok(Drained { delivered, stopped: None });
            }
            for alert in &due {
                let span = tracing::info_span!(
                    "outbox.relay",
                    otel.name = "relay alert",
                    outbox_id = alert.outbox_id,
                    council = %code,
                    position = alert.position
                );
                cpis_runtime::telemetry::continue_trace(&span, alert.traceparent.as_deref());
                let started = Instant::now();
                let result = self.publish(alert).instrument(span).await;
                let db = self.pool.get().await?;
                match result {
                    Ok(sequence) => {
                        let still_held =
                            store::mark_delivered(&db, alert.outbox_id, self.id, self.settings.lease).await?;
                        self.metrics.delivered.inc();
                        delivered += 1;
                        tracing::info!(
                            outbox_id = alert.outbox_id,
                            council = %code,
                            position = alert.position,
                            sequence,
                            "alert delivered"
                        );
                        if !still_held {
                            // The lease ran out while we were slow and another
                            // relay has the council now: it carries on from here.
                            tracing::warn!(council = %code, "council lease lost; leaving it to the relay holding it");
                            return Ok(Drained { delivered, stopped: None });
                        }
                    }
                    Err(failure) => {
                        self.metrics.failed.inc();
                        let retry_in = backoff(
                            council.attempts.saturating_add(1),
                            self.settings.retry_initial,
                            self.settings.retry_max,
                            jitter(),
                        );
                        store::mark_failed(&db, alert.outbox_id, self.id, retry_in, &failure.error).await?;
                        tracing::warn!(
                            outbox_id = alert.outbox_id,
                            council = %code,
                            position = alert.position,
                            attempts = council.attempts + 1,
                            after_ms = started.elapsed().as_millis() as u64,
                            retry_in_ms = retry_in.as_millis() as u64,
                            error = %failure.error,
                            "alert not delivered; the council waits and retries from it"
                        );
                        return Ok(Drained { delivered, stopped: Some(failure) });
                    }
                }
            }
        }
    }

    /// One `PublishAlert` call.
    async fn publish(&self, alert: &PendingAlert) -> Result<i64, Failure> {
        let timeout = self.settings.publish_timeout;
        let mut request = tonic::Request::new(alert.request.clone());
        request.set_timeout(timeout);
        cpis_runtime::telemetry::inject_context(&mut request);
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

/// How far a relay got with one council.
#[derive(Debug)]
struct Drained {
    /// Alerts delivered.
    delivered: usize,
    /// The failure that stopped it, if one did.
    stopped: Option<Failure>,
}

/// A database failure of the relay, described without the server's DETAIL
/// (which may quote values such as NHS numbers).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct DbFailure(String);

impl From<tokio_postgres::Error> for DbFailure {
    fn from(e: tokio_postgres::Error) -> Self {
        DbFailure(cpis_runtime::db::describe(&e))
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
