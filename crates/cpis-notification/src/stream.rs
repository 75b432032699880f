//! One subscriber's stream: reads the council's alerts from the table
//! after its cursor, a page at a time, and yields them to tonic.
//!
//! The cursor is the whole state. Backlog and live alerts take the same path
//! (`sequence > cursor ORDER BY sequence`), so the hand-over from replay to
//! live can neither skip nor repeat an alert. The stream is polled by the
//! HTTP/2 stream that carries it, and only when that stream has room to
//! send (its flow-control window): the next page is read only after the
//! last one was handed over, so a stalled subscriber costs one parked
//! stream, a cursor and at most one page, never a growing queue, and never
//! holds up anyone else.
//!
//! An idle stream costs no query and no task of its own: it waits on its
//! council's latest sequence in memory ([`crate::fanout`]), sends heartbeats
//! from there, and reads the table only when the council has something
//! newer than its cursor. Its whole state is one small boxed future, about
//! the size of [`Pump`] (10,000 idle streams are measured by the benchmark).
//!
//! A stream the server ends (shutdown, database failure) yields a non-OK
//! status, `UNAVAILABLE`, after every alert it already read, and then
//! nothing: it never ends with OK, which some clients read as "done".

use crate::fanout::{Change, Latest};
use crate::listen::StreamQueries;
use crate::store::Store;
use cpis_proto::notification::v1 as pb;
use cpis_runtime::server::CancellationToken;
use cpis_runtime::ApiError;
use futures::Stream;
use pb::subscribe_response::Event;
use std::collections::VecDeque;
use std::time::Duration;
use tokio::time::Instant;
use tonic::Status;
use tracing::Instrument as _;

/// What the stream yields to tonic.
pub type Item = Result<pb::SubscribeResponse, Status>;

/// Timing and sizing of one stream.
#[derive(Debug, Clone, Copy)]
pub struct StreamSettings {
    /// A heartbeat is sent after this long without anything sent.
    pub heartbeat: Duration,
    /// Most alerts read from the table at once (and so held by the stream).
    pub page_size: i64,
}

/// One subscription, ready to run.
#[derive(Debug)]
pub struct Subscription {
    /// The caller's council: the only alerts this stream ever reads.
    pub council: String,
    /// Names the stream in its log lines and read spans.
    pub id: uuid::Uuid,
    /// The last sequence delivered (or skipped on request).
    pub cursor: i64,
    /// The council's latest sequence, registered before the first read.
    pub latest: Latest,
}

/// What a stream needs from its instance.
#[derive(Debug, Clone)]
pub struct StreamContext {
    /// The alert log.
    pub store: Store,
    /// Fires when the service stops.
    pub stop: CancellationToken,
    /// The instance's stream metrics.
    pub metrics: StreamMetrics,
}

/// The stream of `sub`: its alerts in order, heartbeats while idle, and a
/// last `UNAVAILABLE` when the service stops or loses its database (the
/// client reconnects and resumes from its last sequence). Dropping it (the
/// client went away) ends it.
pub fn subscribe(
    cx: StreamContext,
    mut sub: Subscription,
    settings: StreamSettings,
) -> impl Stream<Item = Item> + Send {
    cx.metrics.open.inc();
    let target = sub.latest.get();
    let pump = Pump {
        cx,
        sub,
        settings,
        page: VecDeque::new(),
        last_sent: Instant::now(),
        target,
        looked_for: 0,
        catching_up: true,
        ended: false,
    };
    futures::stream::unfold(pump, |mut pump| async move {
        if pump.ended {
            return None;
        }
        match pump.next().await {
            Ok(message) => Some((Ok(message), pump)),
            Err(end) => {
                pump.ended = true;
                let cursor = pump.sub.cursor;
                let (council, stream) = (&pump.sub.council, pump.sub.id);
                match &end {
                    End::Stopping => tracing::debug!(%council, %stream, cursor, "subscription ended by shutdown"),
                    End::Failed(e) => tracing::warn!(%council, %stream, cursor, error = %e, "subscription failed"),
                }
                Some((Err(Status::from(end.into_error())), pump))
            }
        }
    })
}

/// Why the server ends a stream.
#[derive(Debug)]
enum End {
    /// The service is shutting down.
    Stopping,
    /// The database failed, or the instance lost sight of it.
    Failed(ApiError),
}

impl End {
    fn into_error(self) -> ApiError {
        match self {
            End::Stopping => ApiError::Unavailable(
                "the service is shutting down; reconnect and resume from your last sequence".to_string(),
            ),
            End::Failed(e) => e,
        }
    }
}

impl From<ApiError> for End {
    fn from(e: ApiError) -> Self {
        End::Failed(e)
    }
}

/// The state of one stream between two messages.
struct Pump {
    cx: StreamContext,
    sub: Subscription,
    settings: StreamSettings,
    /// Alerts read and not yet handed over, in order.
    page: VecDeque<pb::Alert>,
    /// When the last message was handed over (heartbeats count from here).
    last_sent: Instant,
    /// The council's latest sequence when the current catch-up began.
    target: i64,
    /// The highest latest sequence the table was already read for: a value
    /// in memory that the table does not bear out (a restored database) is
    /// looked for once, never in a loop.
    looked_for: i64,
    /// Reading pages until one comes back short.
    catching_up: bool,
    /// The last status was yielded: nothing follows.
    ended: bool,
}

impl Drop for Pump {
    fn drop(&mut self) {
        self.cx.metrics.open.dec();
        if !self.ended {
            tracing::debug!(council = %self.sub.council, stream = %self.sub.id, cursor = self.sub.cursor, "subscriber left");
        }
    }
}

impl Pump {
    /// The next message: an alert (from the page, or a new page once it is
    /// empty), or a heartbeat after `heartbeat` of silence while idle.
    async fn next(&mut self) -> Result<pb::SubscribeResponse, End> {
        loop {
            if let Some(alert) = self.page.pop_front() {
                self.last_sent = Instant::now();
                return Ok(event(Event::Alert(alert)));
            }
            if self.cx.stop.is_cancelled() {
                return Err(End::Stopping);
            }
            if self.catching_up {
                self.read_page().await?;
                continue;
            }
            // Caught up: wait, from memory, until the council has something newer.
            let latest = self.sub.latest.get();
            if latest > self.sub.cursor && latest > self.looked_for {
                self.target = latest;
                self.catching_up = true;
                continue;
            }
            tokio::select! {
                biased;
                _ = self.cx.stop.cancelled() => return Err(End::Stopping),
                change = self.sub.latest.changed() => if change == Change::Lost {
                    return Err(End::Failed(ApiError::Unavailable(
                        "this instance lost its database; reconnect and resume from your last sequence".to_string(),
                    )));
                },
                _ = tokio::time::sleep_until(self.last_sent + self.settings.heartbeat) => {
                    self.last_sent = Instant::now();
                    return Ok(event(Event::Heartbeat(pb::Heartbeat {
                        sent_at: Some(cpis_domain::time::to_timestamp(chrono::Utc::now())),
                        latest_sequence: latest.max(self.sub.cursor),
                    })));
                }
            }
        }
    }

    /// Reads the next page after the cursor into `page`; a short page ends
    /// the catch-up.
    async fn read_page(&mut self) -> Result<(), ApiError> {
        let (sub, metrics, limit) = (&mut self.sub, &self.cx.metrics, self.settings.page_size);
        metrics.db_queries.inc("read");
        // Boxed: the query's state (and its span) lives on the heap only
        // while it runs, not in every idle stream.
        let span =
            tracing::info_span!("subscription.read", council = %sub.council, stream = %sub.id, after = sub.cursor);
        let page =
            Box::pin(self.cx.store.traced_alerts_after(&sub.council, sub.cursor, limit).instrument(span)).await?;
        if (page.len() as i64) < limit {
            self.catching_up = false;
            self.looked_for = self.looked_for.max(self.target);
        }
        for (alert, traceparent) in page {
            sent(&alert, traceparent.as_deref(), metrics);
            sub.cursor = alert.sequence;
            self.page.push_back(alert);
        }
        Ok(())
    }
}
/// Records one alert handed to a subscriber's stream: a span in the
/// check-in's trace, and the delivery lag since the alert was stored.
fn sent(alert: &pb::Alert, traceparent: Option<&str>, metrics: &StreamMetrics) {
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

fn event(event: Event) -> pb::SubscribeResponse {
    pb::SubscribeResponse { event: Some(event) }
}
