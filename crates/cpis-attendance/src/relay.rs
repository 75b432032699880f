//! The outbox relay: publishes each queued alert to the Notification service
//! until it has durably stored it, so a Notification outage delays alerts but
//! never loses one and never holds up a check-in. The order and liveness rules below are kept
//! by this module's loop and by its parts: [`batch`] (the common pass, all
//! councils in one call), [`council`] (the per-council path that stops a
//! council exactly where it fails), [`publish`] (the calls), [`backoff`]
//! (retry delays) and [`metrics`].
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
//! check-in order), `tests/e2e/attendance_outages.rs` (order after a Notification
//! outage) and `tests/netfault/` (packets silently dropped between a relay
//! and PostgreSQL in the middle of a pass, a Notification replica and
//! PostgreSQL, a relay and its Notification replica, in Linux network
//! namespaces: alerts reach the healthy replica within 20 s with 3 s leases,
//! in order, none lost or repeated), and `tests/e2e/relay.rs` again (a
//! backlog of many councils published across councils in shared calls,
//! each council gapless, in check-in order, nothing twice).

mod backoff;
mod batch;
mod council;
mod metrics;
mod publish;

pub use backoff::backoff;
use backoff::jitter;
use council::{Drained, BATCH_REPROBE};
pub use metrics::RelayMetrics;

use crate::store;
use cpis_runtime::db::DbPool;
use cpis_runtime::server::CancellationToken;
use publish::{Publisher, MAX_PUBLISH_BATCH};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Mutex, Notify};
use tokio::time::Instant;
use tonic::transport::Channel;
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
