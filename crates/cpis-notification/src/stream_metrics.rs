//! What the streams of one instance are measured by: open streams, alerts
//! handed over, the delay from storing to handing over, and the queries
//! made for streams.

use crate::listen::StreamQueries;
use cpis_proto::notification::v1 as pb;

/// Records one alert handed to a subscriber's stream: a span in the
/// check-in's trace, and the delivery lag since the alert was stored.
pub fn sent(alert: &pb::Alert, traceparent: Option<&str>, metrics: &StreamMetrics) {
    let span = tracing::info_span!("alert.stream_send", otel.name = "stream send", sequence = alert.sequence);
    cpis_runtime::telemetry::continue_trace(&span, traceparent);
    let _entered = span.enter();
    if let Some(created) = alert.created_at.as_ref().and_then(cpis_domain::time::from_timestamp) {
        let lag = (chrono::Utc::now() - created).num_microseconds().unwrap_or(0).max(0) as f64 / 1e6;
        metrics.delivery_lag.observe(lag);
    }
    metrics.delivered.inc();
}

/// Metrics of the streams of one instance.
#[derive(Debug, Clone)]
pub struct StreamMetrics {
    /// Subscriptions open now.
    pub open: prometheus::IntGauge,
    /// Alerts handed to streams.
    pub delivered: prometheus::IntCounter,
    /// Seconds from an alert being stored to its being handed to a stream.
    pub delivery_lag: prometheus::Histogram,
    /// Database queries made on behalf of streams.
    pub db_queries: StreamQueries,
}

impl StreamMetrics {
    /// Fresh, unregistered metrics.
    pub fn new() -> Self {
        Self {
            open: prometheus::IntGauge::new(
                "notification_open_subscriptions",
                "Subscribe streams open on this instance",
            )
            .expect("static metric"),
            delivered: prometheus::IntCounter::new(
                "notification_alerts_streamed_total",
                "Alerts handed to subscriber streams",
            )
            .expect("static metric"),
            delivery_lag: prometheus::Histogram::with_opts(
                prometheus::HistogramOpts::new(
                    "notification_alert_delivery_lag_seconds",
                    "Time from an alert being stored to its being handed to a subscriber stream",
                )
                .buckets(vec![0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0, 300.0]),
            )
            .expect("static metric"),
            db_queries: StreamQueries::new(),
        }
    }
}

impl Default for StreamMetrics {
    fn default() -> Self {
        Self::new()
    }
}
