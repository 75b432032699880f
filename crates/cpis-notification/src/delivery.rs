//! Per-council delivery visibility for operators: how many alerts each
//! council has not acknowledged, how old the oldest of them is, and how many
//! subscriptions it holds on this instance.
//!
//! Council codes are not personal data and there are at most ~153 of them,
//! so they are safe and bounded as a label. The backlog comes from the alert
//! log (the same value on every replica: alert on `max by (council)`); the
//! subscriptions are this instance's (sum them across replicas).

use crate::fanout::Fanout;
use crate::store::Store;
use cpis_runtime::server::CancellationToken;
use prometheus::{GaugeVec, IntGaugeVec, Opts};
use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The per-council gauges (exported as `cpis_notification_council_*`).
#[derive(Debug, Clone)]
pub struct CouncilMetrics {
    /// Alerts stored after the council's acknowledgement.
    pub unacked: IntGaugeVec,
    /// Seconds since the oldest unacknowledged alert was stored.
    pub oldest_unacked_age: GaugeVec,
    /// Subscribe streams the council holds open on this instance.
    pub subscriptions: IntGaugeVec,
    /// Councils seen in the log, so each shows 0 subscriptions rather than no series.
    known: Arc<Mutex<BTreeSet<String>>>,
}

impl CouncilMetrics {
    /// Fresh, unregistered gauges.
    pub fn new() -> Self {
        Self {
            unacked: IntGaugeVec::new(
                Opts::new("notification_council_unacked_alerts", "Alerts stored after the council's acknowledgement"),
                &["council"],
            )
            .expect("static metric"),
            oldest_unacked_age: GaugeVec::new(
                Opts::new(
                    "notification_council_oldest_unacked_age_seconds",
                    "Age of the council's oldest unacknowledged alert (0 when none)",
                ),
                &["council"],
            )
            .expect("static metric"),
            subscriptions: IntGaugeVec::new(
                Opts::new(
                    "notification_council_subscriptions",
                    "Subscribe streams the council holds open on this instance",
                ),
                &["council"],
            )
            .expect("static metric"),
            known: Arc::default(),
        }
    }

    /// Registers the gauges; the subscription counts are sampled from
    /// `fanout` at every scrape.
    pub fn register(&self, metrics: &cpis_runtime::metrics::Metrics, fanout: Fanout) {
        metrics.register(self.unacked.clone());
        metrics.register(self.oldest_unacked_age.clone());
        metrics.register(self.subscriptions.clone());
        let this = self.clone();
        metrics.on_scrape(move || this.sample_subscriptions(&fanout));
    }

    fn sample_subscriptions(&self, fanout: &Fanout) {
        let streams = fanout.streams_by_council();
        self.subscriptions.reset();
        if let Ok(known) = self.known.lock() {
            for council in known.iter() {
                self.subscriptions.with_label_values(&[council]).set(0);
            }
        }
        for (council, n) in streams {
            self.subscriptions.with_label_values(&[&council]).set(n as i64);
        }
    }

    /// Reads every council's backlog once and sets the gauges.
    pub async fn refresh(&self, store: &Store) -> Result<(), cpis_runtime::ApiError> {
        let backlogs = store.council_backlogs().await?;
        for b in &backlogs {
            self.unacked.with_label_values(&[&b.council]).set(b.unacked);
            self.oldest_unacked_age.with_label_values(&[&b.council]).set(b.oldest_unacked_age);
        }
        if let Ok(mut known) = self.known.lock() {
            known.extend(backlogs.into_iter().map(|b| b.council));
        }
        Ok(())
    }

    /// Refreshes the backlog gauges every `every` until `stop` fires.
    pub async fn run(self, store: Store, every: Duration, stop: CancellationToken) {
        loop {
            if let Err(e) = self.refresh(&store).await {
                tracing::debug!(error = %e, "council backlog metrics not refreshed");
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(every) => {}
            }
        }
    }
}

impl Default for CouncilMetrics {
    fn default() -> Self {
        Self::new()
    }
}
