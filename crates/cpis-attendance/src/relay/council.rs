//! The relay's per-council path: a council's alerts read again and
//! published in position order, batch by batch (a lone row in one
//! `PublishAlert`), stopping the council exactly at the first alert that
//! fails and recording the failure on that head-of-line row, so the whole
//! council is retried from it later.

use super::publish::{Failure, MAX_PUBLISH_BATCH};
use super::{backoff, jitter, DbFailure, Relay};
use crate::store::{self, LeasedCouncil, PendingAlert};
use std::time::Duration;
use tokio::time::Instant;
use tracing::Instrument;

impl Relay {
    /// Publishes a leased council's undelivered alerts in position order
    /// until none is left, one fails, or the lease is lost: the rows read at
    /// a time go in one `PublishAlerts` call (one transaction at the
    /// Notification service), a lone row in one `PublishAlert`.
    pub(super) async fn drain_council(&self, council: LeasedCouncil) -> Result<Drained, DbFailure> {
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
    pub(super) async fn record_failure(
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
pub(super) const BATCH_REPROBE: Duration = Duration::from_secs(60);

/// How far a relay got with one council.
#[derive(Debug)]
pub(super) struct Drained {
    /// Alerts delivered.
    pub(super) delivered: usize,
    /// The failure that stopped it, if one did.
    pub(super) stopped: Option<Failure>,
}
