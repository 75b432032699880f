//! The outbox relay: publishes each queued alert to the Notification service
//! until it has durably stored it, so a Notification outage delays alerts but
//! never loses one and never holds up a check-in. (Over 400 lines: the
//! order and liveness rules below are kept by the code right under them.)
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
//! - the relay publishes a council's rows strictly by position, in batches.
//!   In the common case one pass reads the next rows (a prefix of the
//!   queue, up to [`RelaySettings::batch_size`]) of every council it leased
//!   and sends all of them, council by council, in one `PublishAlerts` call,
//!   which the Notification service stores in one transaction, all or
//!   nothing, giving each council's alerts consecutive sequences in request
//!   order. A council's next rows go only in a later pass, after the call
//!   before answered OK (and so was stored), and a batch's rows are marked
//!   delivered together only then. If that call fails, the pass's councils
//!   go their own ways ([`Relay::drain_council`]): each council's rows read
//!   again and sent in its own `PublishAlerts` call (a lone row in one
//!   `PublishAlert`); a failure stops the council at the batch's first row,
//!   and the whole council is retried later from that row (head of line
//!   first), never a single row on its own schedule. A batch refused as a
//!   whole for a reason other than an outage is retried one row at a time,
//!   so the rows before the one refused still go and the council stops
//!   exactly there; an outage stops every council of the pass at its head;
//! - one relay at a time works on a council (a lease), and even two relays
//!   that both believe they hold it (a lease expired under a stalled relay)
//!   cannot reorder: each publishes only after the row before is stored, and
//!   a repeat is absorbed by `PublishAlert`'s idempotency on (council,
//!   episode), answering the sequence it already has.
//!
//! # Liveness
//!
//! No database transaction or row lock is held across a `PublishAlert` call:
//! a pass leases councils and reads their rows in one statement
//! (`relay_councils.lease_until`), publishes, and marks the rows delivered
//! and gives the councils back in one statement (the per-council path marks
//! each batch delivered in one statement that also renews the lease). A
//! relay takes at most its share of the councils with undelivered alerts
//! (divided by the relays alive, `attendance.relays`), least recently
//! served first, so replicas share the work. A relay that vanishes (crash,
//! partition, lost node: no FIN, no RST) loses its leases after
//! [`RelaySettings::lease`], and another replica carries on from the first
//! undelivered row; the alerts it was sending are neither lost nor
//! duplicated. Every database connection sets `lock_timeout`,
//! `idle_in_transaction_session_timeout` and TCP keepalives
//! ([`cpis_runtime::db::SessionSettings`]), and the Notification
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
//! in order, none lost or repeated), and `tests/e2e/relay.rs` again (a
//! backlog of many councils published across councils in shared calls,
//! each council gapless, in check-in order, nothing twice).

mod batch;
mod publish;

use crate::store::{self, LeasedCouncil, PendingAlert};
use cpis_runtime::db::DbPool;
use cpis_runtime::server::CancellationToken;
use publish::{Failure, Publisher, MAX_PUBLISH_BATCH};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Mutex, Notify};
use tokio::time::Instant;
use tonic::transport::Channel;
use tracing::Instrument;
use uuid::Uuid;

/// Most councils one relay works on at once (England has about 153).
const MAX_COUNCILS_PER_PASS: i64 = 64;

/// How often the backlog (metrics, next due council) is read while alerts flow.
const BACKLOG_EVERY: Duration = Duration::from_secs(1);

/// How often at most the backlog is read while passes find nothing to do.
const IDLE_BACKLOG_EVERY: Duration = Duration::from_millis(200);

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
    publisher: Publisher,
    settings: RelaySettings,
    wake: Arc<Notify>,
    metrics: RelayMetrics,
    /// This relay's identity as a lease holder.
    id: Uuid,
    /// Whether this relay is pausing after outages.
    breaker: Arc<Mutex<Breaker>>,
    /// Until when this relay publishes one by one (the Notification service
    /// answered `PublishAlerts` with UNIMPLEMENTED: an older version).
    no_batches_until: Arc<std::sync::Mutex<Option<Instant>>>,
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
            publisher: Publisher::new(channel, settings.publish_timeout),
            settings,
            wake,
            metrics,
            id: Uuid::new_v4(),
            breaker: Arc::default(),
            no_batches_until: Arc::default(),
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
        // The outbox's depth and age (metrics) and when a council next falls
        // due are read at most every BACKLOG_EVERY while alerts flow, at most
        // every IDLE_BACKLOG_EVERY while passes find nothing (a wake-up per
        // check-in), and after every pass that met a failure.
        let mut backlog_read: Option<Instant> = None;
        let mut due_at: Option<Instant> = None;
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
            let outcome = self.pass(limit).await;
            let since_read = backlog_read.map(|t| t.elapsed());
            let read_now = match outcome {
                Ok(o) if o.outages > 0 || o.rejections > 0 => true,
                Ok(o) if o.delivered > 0 => since_read.is_none_or(|e| e >= BACKLOG_EVERY),
                // Nothing to do: the cached due time serves unless it is old
                // or says a council is due now (which this pass did not find).
                Ok(_) => {
                    since_read.is_none_or(|e| e >= IDLE_BACKLOG_EVERY) || due_at.is_some_and(|t| t <= Instant::now())
                }
                Err(_) => true,
            };
            if read_now {
                match self.read_backlog().await {
                    Ok(due) => due_at = due.map(|d| Instant::now() + d),
                    Err(e) => tracing::warn!(error = %e, "cannot read the outbox backlog"),
                }
                backlog_read = Some(Instant::now());
            }
            let sleep = match outcome {
                // Work was done: look again at once (more rows may wait, or
                // have arrived while this pass published).
                Ok(outcome) if outcome.delivered > 0 && outcome.outages == 0 => {
                    self.pause_after(outcome).await;
                    Duration::ZERO
                }
                Ok(outcome) => {
                    let due = due_at.map_or(self.settings.poll_interval, |t| {
                        t.saturating_duration_since(Instant::now()).min(self.settings.poll_interval)
                    });
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

    /// Reads the outbox's backlog into the metrics; returns when the next
    /// council falls due.
    async fn read_backlog(&self) -> Result<Option<Duration>, DbFailure> {
        let db = self.pool.get().await?;
        let backlog = store::backlog(&db).await?;
        self.metrics.depth.set(backlog.depth);
        self.metrics.oldest_age.set(backlog.oldest_age);
        Ok(backlog.next_due_in)
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

    /// One pass over up to `limit` councils: all in one `PublishAlerts`
    /// call ([`Relay::batched_pass`]), or, while the Notification service
    /// has no `PublishAlerts`, council by council.
    async fn pass(&self, limit: i64) -> Result<PassOutcome, DbFailure> {
        if !self.batches_refused() {
            return self.batched_pass(limit).await;
        }
        let leased = {
            let db = self.pool.get().await?;
            store::lease_councils(&db, self.id, self.settings.lease, limit).await?
        };
        let results = futures::future::join_all(leased.into_iter().map(|c| self.drain_council(c))).await;
        let mut outcome = PassOutcome::default();
        for r in results {
            outcome.add(r?);
        }
        Ok(outcome)
    }

    /// Publishes a leased council's undelivered alerts in position order
    /// until none is left, one fails, or the lease is lost: the rows read at
    /// a time go in one `PublishAlerts` call (one transaction at the
    /// Notification service), a lone row in one `PublishAlert`.
    async fn drain_council(&self, council: LeasedCouncil) -> Result<Drained, DbFailure> {
        let code = council.council_code.as_str();
        let mut delivered = 0;
        'read: loop {
            let due = {
                let db = self.pool.get().await?;
                store::pending_for_council(&db, code, self.settings.batch_size).await?
            };
            if due.is_empty() {
                let db = self.pool.get().await?;
                store::release_council(&db, code, self.id).await?;
                return Ok(Drained { delivered, stopped: None });
            }
            let per_call = if self.batches_refused() { 1 } else { MAX_PUBLISH_BATCH };
            for chunk in due.chunks(per_call) {
                let step = match chunk {
                    [alert] => self.deliver_one(&council, alert).await?,
                    _ => match self.deliver_batch(&council, chunk).await? {
                        // An old Notification service (during a rolling
                        // deploy): read again and go one by one for a while.
                        Step::Unsupported => continue 'read,
                        // Refused as a whole: one by one, so every row before
                        // the one refused is still delivered, in order, and
                        // the council stops exactly at that row.
                        Step::Failed(f) if !f.outage => self.deliver_singly(&council, chunk).await?,
                        step => step,
                    },
                };
                match step {
                    Step::Delivered(n) => delivered += n,
                    Step::LeaseLost(n) => {
                        // The lease ran out while we were slow and another
                        // relay has the council now: it carries on from here.
                        tracing::warn!(council = %code, "council lease lost; leaving it to the relay holding it");
                        return Ok(Drained { delivered: delivered + n, stopped: None });
                    }
                    Step::Failed(failure) => return Ok(Drained { delivered, stopped: Some(failure) }),
                    Step::Stopped(n, failure) => {
                        return Ok(Drained { delivered: delivered + n, stopped: Some(failure) })
                    }
                    Step::Unsupported => continue 'read,
                }
            }
        }
    }

    /// [`Relay::deliver_one`] for each alert of `chunk` in order, until one
    /// fails or the lease is lost.
    async fn deliver_singly(&self, council: &LeasedCouncil, chunk: &[PendingAlert]) -> Result<Step, DbFailure> {
        let mut delivered = 0;
        for alert in chunk {
            match self.deliver_one(council, alert).await? {
                Step::Delivered(n) => delivered += n,
                Step::LeaseLost(n) => return Ok(Step::LeaseLost(delivered + n)),
                Step::Failed(f) | Step::Stopped(_, f) => return Ok(Step::Stopped(delivered, f)),
                // deliver_one never answers this (it does not batch).
                Step::Unsupported => return Ok(Step::Unsupported),
            }
        }
        Ok(Step::Delivered(delivered))
    }

    /// Publishes one alert and records the outcome.
    async fn deliver_one(&self, council: &LeasedCouncil, alert: &PendingAlert) -> Result<Step, DbFailure> {
        let code = council.council_code.as_str();
        let span = tracing::info_span!(
            "outbox.relay",
            otel.name = "relay alert",
            outbox_id = alert.outbox_id,
            council = %code,
            position = alert.position
        );
        cpis_runtime::telemetry::continue_trace(&span, alert.traceparent.as_deref());
        let started = Instant::now();
        let result = self.publisher.one(alert).instrument(span).await;
        let db = self.pool.get().await?;
        match result {
            Ok(sequence) => {
                let still_held = store::mark_delivered(&db, &[alert.outbox_id], self.id, self.settings.lease).await?;
                self.metrics.delivered.inc();
                tracing::info!(
                    outbox_id = alert.outbox_id,
                    council = %code,
                    position = alert.position,
                    sequence,
                    "alert delivered"
                );
                Ok(if still_held { Step::Delivered(1) } else { Step::LeaseLost(1) })
            }
            Err(failure) => {
                self.record_failure(&db, council, alert, started, &failure).await?;
                Ok(Step::Failed(failure))
            }
        }
    }

    /// Publishes `chunk` (a council's next alerts, in position order) in one
    /// `PublishAlerts` call, which stores all of them or none; marks them
    /// delivered together only once it answered OK.
    async fn deliver_batch(&self, council: &LeasedCouncil, chunk: &[PendingAlert]) -> Result<Step, DbFailure> {
        let (Some(head), Some(last)) = (chunk.first(), chunk.last()) else {
            return Ok(Step::Delivered(0));
        };
        let code = council.council_code.as_str();
        let span = tracing::info_span!(
            "outbox.relay",
            otel.name = "relay alerts",
            council = %code,
            alerts = chunk.len(),
            first_position = head.position,
            last_position = last.position
        );
        // Linked to every check-in's trace, and a child of the first one's
        // (the last call of continue_trace sets the parent).
        for alert in chunk.iter().rev() {
            cpis_runtime::telemetry::continue_trace(&span, alert.traceparent.as_deref());
        }
        let started = Instant::now();
        let result = self.publisher.batch(chunk).instrument(span).await;
        let db = self.pool.get().await?;
        match result {
            Ok(sequences) => {
                let ids: Vec<i64> = chunk.iter().map(|a| a.outbox_id).collect();
                let still_held = store::mark_delivered(&db, &ids, self.id, self.settings.lease).await?;
                self.metrics.delivered.inc_by(chunk.len() as u64);
                tracing::info!(
                    council = %code,
                    alerts = chunk.len(),
                    first_position = head.position,
                    last_position = last.position,
                    first_sequence = sequences.first().copied().unwrap_or_default(),
                    last_sequence = sequences.last().copied().unwrap_or_default(),
                    "alerts delivered"
                );
                Ok(if still_held { Step::Delivered(chunk.len()) } else { Step::LeaseLost(chunk.len()) })
            }
            Err(failure) if failure.unimplemented => {
                tracing::warn!(council = %code, "the Notification service has no PublishAlerts; publishing one by one");
                self.refuse_batches_for(BATCH_REPROBE);
                Ok(Step::Unsupported)
            }
            // Not this relay's concern which row was refused: the caller
            // retries one by one and finds it.
            Err(failure) if !failure.outage => Ok(Step::Failed(failure)),
            Err(failure) => {
                self.record_failure(&db, council, head, started, &failure).await?;
                Ok(Step::Failed(failure))
            }
        }
    }

    /// Records a failed attempt at the council's head-of-line `alert`; the
    /// whole council waits and retries from it.
    async fn record_failure(
        &self,
        db: &deadpool_postgres::Client,
        council: &LeasedCouncil,
        alert: &PendingAlert,
        started: Instant,
        failure: &Failure,
    ) -> Result<(), DbFailure> {
        self.metrics.failed.inc();
        let retry_in =
            backoff(council.attempts.saturating_add(1), self.settings.retry_initial, self.settings.retry_max, jitter());
        store::mark_failed(db, alert.outbox_id, self.id, retry_in, &failure.error).await?;
        tracing::warn!(
            outbox_id = alert.outbox_id,
            council = %council.council_code,
            position = alert.position,
            attempts = council.attempts + 1,
            after_ms = started.elapsed().as_millis() as u64,
            retry_in_ms = retry_in.as_millis() as u64,
            error = %failure.error,
            "alert not delivered; the council waits and retries from it"
        );
        Ok(())
    }

    /// True while this relay publishes one by one because the Notification
    /// service answered `PublishAlerts` with UNIMPLEMENTED.
    fn batches_refused(&self) -> bool {
        let until = *self.no_batches_until.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        until.is_some_and(|t| Instant::now() < t)
    }

    fn refuse_batches_for(&self, pause: Duration) {
        *self.no_batches_until.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(Instant::now() + pause);
    }
}

/// What one publish (of one alert or a batch) came to.
#[derive(Debug)]
enum Step {
    /// This many alerts delivered; the lease is still held.
    Delivered(usize),
    /// This many alerts delivered, but the lease went to another relay.
    LeaseLost(usize),
    /// Nothing delivered: the council stops here (the failure is recorded,
    /// except for a batch refused as a whole, which is retried one by one).
    Failed(Failure),
    /// This many delivered one by one, then a failure stopped the council.
    Stopped(usize, Failure),
    /// The Notification service has no `PublishAlerts`.
    Unsupported,
}

/// How long a relay publishes one by one after an UNIMPLEMENTED answer to
/// `PublishAlerts`, before trying a batch again.
const BATCH_REPROBE: Duration = Duration::from_secs(60);

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
