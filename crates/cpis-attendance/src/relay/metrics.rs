//! Metrics of the outbox and its relay: depth, age of the oldest alert,
//! alerts delivered and failed attempts.

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
