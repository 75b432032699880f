//! The relay's common case: one pass publishes the next alerts of every
//! council it leased in ONE `PublishAlerts` call, between two statements
//! (lease and read; mark delivered and release). A failure sends the pass's
//! councils down the per-council path of the parent module, which stops
//! each council exactly where its own alerts fail.

use super::{DbFailure, Drained, PassOutcome, Relay, MAX_PUBLISH_BATCH};
use crate::store::relay::{self as statements, LeasedRows};
use crate::store::PendingAlert;
use tokio::time::Instant;
use tracing::Instrument;

impl Relay {
    /// One pass over up to `limit` councils: leases this relay's share of
    /// the due councils and reads their next alerts (each council's a prefix
    /// of its queue, by position), publishes all of them in one call (the
    /// Notification service stores them in one transaction, all or nothing,
    /// each council's with consecutive sequences in request order), then
    /// marks them delivered and releases the councils. Councils whose
    /// alerts remain are leased again by the next pass (this relay's or
    /// another's), from their first undelivered alert.
    pub(super) async fn batched_pass(&self, limit: i64) -> Result<PassOutcome, DbFailure> {
        let leased = {
            let db = self.pool.get().await?;
            statements::lease_and_read(
                &db,
                self.id,
                self.settings.lease,
                limit,
                self.settings.batch_size,
                MAX_PUBLISH_BATCH as i64,
            )
            .await?
        };
        if leased.is_empty() {
            return Ok(PassOutcome::default());
        }
        // Council by council, each in position order: the request order
        // that gives each council consecutive sequences in that order.
        let alerts: Vec<PendingAlert> = leased.iter().flat_map(|l| l.alerts.iter().cloned()).collect();
        let councils: Vec<&str> = leased.iter().map(|l| l.council.council_code.as_str()).collect();
        if alerts.is_empty() {
            // Delivered by another relay since: give the councils back.
            let db = self.pool.get().await?;
            statements::settle(&db, &[], &councils, self.id).await?;
            return Ok(PassOutcome::default());
        }
        let started = Instant::now();
        let result = match alerts.as_slice() {
            // A lone alert (the common case at a quiet desk) goes in one
            // `PublishAlert`, in the check-in's own trace.
            [alert] => {
                let council = leased.iter().find(|l| !l.alerts.is_empty()).map(|l| l.council.council_code.as_str());
                let span = tracing::info_span!(
                    "outbox.relay",
                    otel.name = "relay alert",
                    outbox_id = alert.outbox_id,
                    council = council.unwrap_or_default(),
                    position = alert.position
                );
                cpis_runtime::telemetry::continue_trace(&span, alert.traceparent.as_deref());
                self.publisher.one(alert).instrument(span).await.map(|sequence| vec![sequence])
            }
            _ => {
                let span = tracing::info_span!(
                    "outbox.relay",
                    otel.name = "relay alerts",
                    councils = leased.len(),
                    alerts = alerts.len()
                );
                // Linked to every check-in's trace, and a child of the first
                // one's (the last call of continue_trace sets the parent).
                for alert in alerts.iter().rev() {
                    cpis_runtime::telemetry::continue_trace(&span, alert.traceparent.as_deref());
                }
                self.publisher.batch(&alerts).instrument(span).await
            }
        };
        match result {
            Ok(sequences) => {
                let ids: Vec<i64> = alerts.iter().map(|a| a.outbox_id).collect();
                let db = self.pool.get().await?;
                statements::settle(&db, &ids, &councils, self.id).await?;
                self.metrics.delivered.inc_by(alerts.len() as u64);
                tracing::info!(
                    councils = leased.len(),
                    alerts = alerts.len(),
                    after_ms = started.elapsed().as_millis() as u64,
                    "alerts delivered"
                );
                if tracing::enabled!(tracing::Level::DEBUG) {
                    log_councils(&leased, &sequences);
                }
                Ok(PassOutcome { delivered: alerts.len(), ..PassOutcome::default() })
            }
            Err(failure) if failure.outage && !failure.unimplemented => {
                // The service, not an alert: each council waits and retries
                // from its head of line, as a council's own failure would.
                let db = self.pool.get().await?;
                let mut outcome = PassOutcome::default();
                for l in &leased {
                    match l.alerts.first() {
                        Some(head) => {
                            self.record_failure(&db, &l.council, head, started, &failure).await?;
                            outcome.outages += 1;
                        }
                        None => statements::settle(&db, &[], &[l.council.council_code.as_str()], self.id).await?,
                    }
                }
                Ok(outcome)
            }
            Err(failure) => {
                if failure.unimplemented {
                    // An old Notification service (during a rolling deploy):
                    // one by one for a while.
                    tracing::warn!("the Notification service has no PublishAlerts; publishing one by one");
                    self.refuse_batches_for(super::BATCH_REPROBE);
                }
                // Refused as a whole (or not served): each council on its
                // own, whose own failure then stops it exactly at its row.
                let drained =
                    futures::future::join_all(leased.into_iter().map(|l| self.drain_council(l.council))).await;
                let mut outcome = PassOutcome::default();
                for d in drained {
                    outcome.add(d?);
                }
                Ok(outcome)
            }
        }
    }
}

impl PassOutcome {
    /// Counts one council's drain.
    pub(super) fn add(&mut self, drained: Drained) {
        self.delivered += drained.delivered;
        match drained.stopped {
            Some(f) if f.outage => self.outages += 1,
            Some(_) => self.rejections += 1,
            None => {}
        }
    }
}

/// Each council's positions and sequences of one delivered pass, at debug.
fn log_councils(leased: &[LeasedRows], sequences: &[i64]) {
    let mut at = 0;
    for l in leased {
        let n = l.alerts.len();
        let (Some(head), Some(last)) = (l.alerts.first(), l.alerts.last()) else { continue };
        tracing::debug!(
            council = %l.council.council_code,
            alerts = n,
            first_position = head.position,
            last_position = last.position,
            first_sequence = sequences.get(at).copied().unwrap_or_default(),
            last_sequence = sequences.get(at + n - 1).copied().unwrap_or_default(),
            "council's alerts delivered"
        );
        at += n;
    }
}
