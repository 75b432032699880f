//! One subscriber's stream: a task that reads the council's alerts from the
//! table after its cursor and feeds them into a bounded channel.
//!
//! The cursor is the whole state. Backlog and live alerts take the same path
//! (`sequence > cursor ORDER BY sequence`), so the hand-over from replay to
//! live can neither skip nor repeat an alert. The task reads the next page
//! only when the channel has room for it: a stalled subscriber costs one
//! parked task and a cursor, never a growing queue, and never holds up
//! anyone else.
//!
//! An idle stream costs no query: it waits on its council's latest sequence
//! in memory ([`crate::fanout`]), sends heartbeats from there, and reads the
//! table only when the council has something newer than its cursor.

use crate::fanout::{Change, Latest};
use crate::listen::StreamQueries;
use crate::store::Store;
use cpis_proto::notification::v1 as pb;
use cpis_runtime::server::CancellationToken;
use cpis_runtime::ApiError;
use pb::subscribe_response::Event;
use std::time::Duration;
use tokio::sync::mpsc::{self, error::TrySendError};
use tokio::time::Instant;
use tonic::Status;
use tracing::Instrument as _;

/// What the stream yields to tonic.
pub type Item = Result<pb::SubscribeResponse, Status>;

/// What the channel carries: one boxed message, so that an idle stream's
/// channel (whose first block of slots is allocated up front) stays small.
pub type Message = Box<pb::SubscribeResponse>;

/// Timing and sizing of one stream.
#[derive(Debug, Clone, Copy)]
pub struct StreamSettings {
    /// A heartbeat is sent after this long without anything sent.
    pub heartbeat: Duration,
    /// Most alerts read from the table at once.
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

/// Why a stream ended without an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// The client went away.
    ClientGone,
    /// The service is shutting down.
    Stopping,
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

/// Feeds `tx` until the client goes away, the service stops or the database
/// fails; returns the status that ends the stream (`UNAVAILABLE` when the
/// client should reconnect and resume from its last sequence), or `None`
/// when the client left. The caller sends it after the buffered alerts.
pub async fn run(
    cx: StreamContext,
    mut sub: Subscription,
    settings: StreamSettings,
    tx: mpsc::Sender<Message>,
) -> Option<Status> {
    cx.metrics.open.inc();
    let _open = OpenGuard(cx.metrics.open.clone());
    let ending = match pump(&cx, &mut sub, settings, &tx).await {
        Ok(End::ClientGone) => {
            tracing::debug!(council = %sub.council, stream = %sub.id, cursor = sub.cursor, "subscriber left");
            return None;
        }
        Ok(End::Stopping) => {
            tracing::debug!(council = %sub.council, stream = %sub.id, cursor = sub.cursor, "subscription ended by shutdown");
            ApiError::Unavailable(
                "the service is shutting down; reconnect and resume from your last sequence".to_string(),
            )
        }
        Err(e) => {
            tracing::warn!(council = %sub.council, stream = %sub.id, cursor = sub.cursor, error = %e, "subscription failed");
            e
        }
    };
    Some(Status::from(ending))
}

async fn pump(
    cx: &StreamContext,
    sub: &mut Subscription,
    settings: StreamSettings,
    tx: &mpsc::Sender<Message>,
) -> Result<End, ApiError> {
    let (store, stop, metrics) = (&cx.store, &cx.stop, &cx.metrics);
    let mut last_sent = Instant::now();
    // The highest latest sequence the table was already read for: a value
    // in memory that the table does not bear out (a restored database) is
    // looked for once, never in a loop.
    let mut looked_for = 0;
    loop {
        let target = sub.latest.get();
        // Catch up: one page at a time, each no bigger than the room left.
        loop {
            let permit = tokio::select! {
                biased;
                _ = stop.cancelled() => return Ok(End::Stopping),
                permit = tx.reserve() => match permit {
                    Ok(permit) => permit,
                    Err(_) => return Ok(End::ClientGone),
                },
            };
            // This task is the only sender, so the room cannot shrink meanwhile.
            let limit = settings.page_size.min(tx.capacity() as i64 + 1);
            metrics.db_queries.inc("read");
            // Boxed: the query's state (and its span) lives on the heap only
            // while it runs, not in every idle stream's task.
            let span =
                tracing::info_span!("subscription.read", council = %sub.council, stream = %sub.id, after = sub.cursor);
            let page = Box::pin(store.traced_alerts_after(&sub.council, sub.cursor, limit).instrument(span)).await?;
            let full = page.len() as i64 == limit;
            let mut alerts = page.into_iter().map(|(alert, traceparent)| {
                sent(&alert, traceparent.as_deref(), metrics);
                alert
            });
            let Some(first) = alerts.next() else {
                break;
            };
            sub.cursor = first.sequence;
            permit.send(event(Event::Alert(first)));
            for alert in alerts {
                sub.cursor = alert.sequence;
                match tx.try_send(event(Event::Alert(alert))) {
                    Ok(()) => {}
                    Err(TrySendError::Closed(_)) => return Ok(End::ClientGone),
                    // Cannot happen (see above); waiting is still correct.
                    Err(TrySendError::Full(item)) => {
                        if tx.send(item).await.is_err() {
                            return Ok(End::ClientGone);
                        }
                    }
                }
            }
            last_sent = Instant::now();
            if !full {
                break;
            }
        }
        looked_for = looked_for.max(target);

        // Caught up: wait, from memory, until the council has something newer.
        loop {
            let latest = sub.latest.get();
            if latest > sub.cursor && latest > looked_for {
                break;
            }
            tokio::select! {
                biased;
                _ = stop.cancelled() => return Ok(End::Stopping),
                _ = tx.closed() => return Ok(End::ClientGone),
                change = sub.latest.changed() => if change == Change::Lost {
                    return Err(ApiError::Unavailable(
                        "this instance lost its database; reconnect and resume from your last sequence".to_string(),
                    ));
                },
                _ = tokio::time::sleep_until(last_sent + settings.heartbeat) => {
                    let heartbeat = pb::Heartbeat {
                        sent_at: Some(cpis_domain::time::to_timestamp(chrono::Utc::now())),
                        latest_sequence: latest.max(sub.cursor),
                    };
                    match tx.try_send(event(Event::Heartbeat(heartbeat))) {
                        // A full buffer means the client is not reading: nothing
                        // to prove to it right now.
                        Ok(()) | Err(TrySendError::Full(_)) => last_sent = Instant::now(),
                        Err(TrySendError::Closed(_)) => return Ok(End::ClientGone),
                    }
                }
            }
        }
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

/// Counts an open subscription for as long as it lives.
struct OpenGuard(prometheus::IntGauge);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

fn event(event: Event) -> Message {
    Box::new(pb::SubscribeResponse { event: Some(event) })
}
