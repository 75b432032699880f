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
//!
//! A stream follows its caller's identity: before each alert and on each
//! heartbeat tick (and before reading the table, and at once when another
//! call on its connection is refused) it checks the caller's certificate
//! again; once it has expired or been revoked, the stream ends with
//! `UNAUTHENTICATED` and the reason, and nothing more is sent.
//!
//! A stream survives a restore of the database: each read starts at the
//! cursor's own alert (the anchor), so a log that no longer holds the alert
//! the stream delivered last (or holds another under its sequence) is seen
//! at once. The stream then goes back to the last alert stored no later than
//! that one (what the restore kept) and delivers every alert stored since,
//! under whatever sequences they now have: nothing is skipped and nothing
//! is sent twice. A restore seen first by [`crate::fanout`] wakes the stream
//! to make that read.

use crate::alert_log::AlertLog;
use crate::fanout::{Change, Latest};
use crate::stream_metrics::sent;
pub use crate::stream_metrics::StreamMetrics;
use chrono::{DateTime, Utc};
use cpis_proto::notification::v1 as pb;
use cpis_runtime::recheck::Identity;
use cpis_runtime::server::CancellationToken;
use cpis_runtime::ApiError;
use futures::Stream;
use pb::subscribe_response::Event;
use std::collections::VecDeque;
use std::sync::Arc;
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
    /// The caller's identity, checked again as the stream goes.
    pub identity: Identity,
}

/// What a stream needs from its instance.
#[derive(Debug, Clone)]
pub struct StreamContext {
    /// The alert log.
    pub log: Arc<dyn AlertLog>,
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
    let known = sub.latest.get();
    let pump = Pump {
        cx,
        sub,
        settings,
        page: VecDeque::new(),
        last_sent: Instant::now(),
        target: known.latest,
        looked_for: 0,
        catching_up: true,
        ended: false,
        anchor: None,
        restores: known.restores,
        opened_at: Utc::now(),
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
                    End::Failed(e @ ApiError::Unauthenticated(_)) => {
                        tracing::info!(%council, %stream, cursor, reason = %e, "subscription ended: the caller's certificate is no longer valid")
                    }
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
    /// The alert at the cursor, once read: the next read checks it is still there.
    anchor: Option<Anchor>,
    /// The restores of the council's log this stream has answered.
    restores: u64,
    /// When the stream opened (what it delivered before its first alert was
    /// stored no later than this).
    opened_at: DateTime<Utc>,
}

/// The alert at a stream's cursor: its id, and when it was stored.
struct Anchor {
    alert_id: String,
    stored_at: Option<DateTime<Utc>>,
}

impl Anchor {
    fn of(alert: &pb::Alert) -> Self {
        Self {
            alert_id: alert.alert_id.clone(),
            stored_at: alert.created_at.as_ref().and_then(cpis_domain::time::from_timestamp),
        }
    }
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
                self.sub.identity.check()?;
                self.last_sent = Instant::now();
                return Ok(event(Event::Alert(alert)));
            }
            if self.cx.stop.is_cancelled() {
                return Err(End::Stopping);
            }
            if self.catching_up {
                self.sub.identity.check()?;
                self.read_page().await?;
                continue;
            }
            // Caught up: wait, from memory, until the council has something newer.
            let known = self.sub.latest.get();
            let latest = known.latest;
            if known.restores != self.restores {
                // The log went back: read it again from the cursor's alert.
                self.restores = known.restores;
                (self.target, self.looked_for, self.catching_up) = (latest, 0, true);
                continue;
            }
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
                _ = self.sub.identity.refused_elsewhere() => {
                    // The connection closes shortly: end first, with the reason.
                    self.sub.identity.check()?;
                    return Err(End::Failed(ApiError::Unavailable(
                        "the connection is closing; reconnect and resume from your last sequence".to_string(),
                    )));
                }
                _ = tokio::time::sleep_until(self.last_sent + self.settings.heartbeat) => {
                    self.sub.identity.check()?;
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
    /// the catch-up. The read starts at the cursor's own alert: if the log
    /// no longer holds the one delivered there, it was restored ([`Pump::rewind`]).
    async fn read_page(&mut self) -> Result<(), ApiError> {
        let (sub, metrics, limit) = (&mut self.sub, &self.cx.metrics, self.settings.page_size);
        metrics.db_queries.inc("read");
        // Boxed: the query's state (and its span) lives on the heap only
        // while it runs, not in every idle stream.
        let span =
            tracing::info_span!("subscription.read", council = %sub.council, stream = %sub.id, after = sub.cursor);
        let read = self.cx.log.read_from(&sub.council, sub.cursor, limit + 1);
        let mut rows = Box::pin(read.instrument(span)).await?.into_iter().peekable();
        let at_cursor = rows.next_if(|(alert, _)| alert.sequence == sub.cursor);
        match (&self.anchor, at_cursor) {
            (Some(anchor), Some((alert, _))) if alert.alert_id == anchor.alert_id => {}
            (Some(_), _) => return self.rewind().await,
            (None, Some((alert, _))) => self.anchor = Some(Anchor::of(&alert)),
            (None, None) => {}
        }
        let page: Vec<_> = rows.take(limit as usize).collect();
        if (page.len() as i64) < limit {
            self.catching_up = false;
            self.looked_for = self.looked_for.max(self.target);
        }
        if let Some((last, _)) = page.last() {
            self.anchor = Some(Anchor::of(last));
        }
        for (alert, traceparent) in page {
            sent(&alert, traceparent.as_deref(), metrics);
            sub.cursor = alert.sequence;
            self.page.push_back(alert);
        }
        Ok(())
    }

    /// The log no longer holds the alert at the cursor as it was delivered:
    /// the database was restored to an earlier point. Goes back to the last
    /// alert the log holds that was stored no later than that one (what the
    /// restore kept, which the client has), so the next reads deliver every
    /// alert stored since, each once.
    async fn rewind(&mut self) -> Result<(), ApiError> {
        let stored_by = self.anchor.take().and_then(|a| a.stored_at).unwrap_or(self.opened_at);
        let kept = self.cx.log.last_stored_by(&self.sub.council, self.sub.cursor, stored_by).await?;
        tracing::warn!(
            council = %self.sub.council,
            stream = %self.sub.id,
            delivered_through = self.sub.cursor,
            restored_through = kept,
            "the council's alert log was restored: delivering what was stored since"
        );
        self.sub.cursor = kept;
        (self.looked_for, self.catching_up) = (0, true);
        Ok(())
    }
}
fn event(event: Event) -> pb::SubscribeResponse {
    pb::SubscribeResponse { event: Some(event) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alert_log::Traced;
    use crate::fanout::Fanout;
    use cpis_domain::identity::IdentityError;
    use cpis_runtime::server::PeerInfo;
    use futures::StreamExt as _;
    use std::sync::Mutex;

    const COUNCIL: &str = "E08000003";

    /// A council's log in memory: `(sequence, alert id, stored at)`.
    #[derive(Debug, Default)]
    struct Log(Mutex<Vec<(i64, String, DateTime<Utc>)>>);

    impl Log {
        fn store(&self, sequence: i64, id: &str) {
            self.0.lock().unwrap().push((sequence, id.to_string(), Utc::now()));
        }

        /// A restore: everything after `sequence` is gone.
        fn restore_to(&self, sequence: i64) {
            self.0.lock().unwrap().retain(|(s, _, _)| *s <= sequence);
        }
    }

    #[tonic::async_trait]
    impl AlertLog for Log {
        async fn read_from(&self, _council: &str, from: i64, limit: i64) -> Result<Vec<Traced>, ApiError> {
            let alerts = self.0.lock().unwrap();
            Ok(alerts
                .iter()
                .filter(|(s, _, _)| *s >= from)
                .take(limit as usize)
                .map(|(sequence, id, at)| {
                    let alert = pb::Alert {
                        sequence: *sequence,
                        alert_id: id.clone(),
                        council_code: COUNCIL.into(),
                        created_at: Some(cpis_domain::time::to_timestamp(*at)),
                        ..Default::default()
                    };
                    (alert, None)
                })
                .collect())
        }

        async fn last_stored_by(&self, _c: &str, at_most: i64, stored_by: DateTime<Utc>) -> Result<i64, ApiError> {
            let alerts = self.0.lock().unwrap();
            Ok(alerts.iter().filter(|(s, _, at)| *s <= at_most && *at <= stored_by).map(|a| a.0).max().unwrap_or(0))
        }
    }

    fn open(log: &Arc<Log>, fanout: &Fanout, cursor: i64, identity: Identity) -> impl Stream<Item = Item> + Send {
        let cx = StreamContext { log: log.clone(), stop: CancellationToken::new(), metrics: StreamMetrics::new() };
        let sub = Subscription {
            council: COUNCIL.into(),
            id: uuid::Uuid::new_v4(),
            cursor,
            latest: fanout.subscribe(COUNCIL),
            identity,
        };
        subscribe(cx, sub, StreamSettings { heartbeat: Duration::from_secs(60), page_size: 10 })
    }

    async fn next_alert(stream: &mut (impl Stream<Item = Item> + Unpin)) -> pb::Alert {
        let next = tokio::time::timeout(Duration::from_secs(5), stream.next()).await.expect("in time");
        match next.expect("open").expect("no error").event {
            Some(Event::Alert(alert)) => alert,
            other => panic!("expected an alert, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn after_a_restore_to_50_a_waiting_stream_delivers_51_onwards_once_each() {
        let (log, fanout) = (Arc::new(Log::default()), Fanout::new());
        for n in 1..=100 {
            log.store(n, &format!("old-{n}"));
        }
        fanout.advance(COUNCIL, 100);
        let mut stream = Box::pin(open(&log, &fanout, 98, Identity::default()));
        assert_eq!(next_alert(&mut stream).await.sequence, 99);
        assert_eq!(next_alert(&mut stream).await.sequence, 100);
        // The database is restored to sequence 50, and a new alert is stored as 51.
        tokio::time::sleep(Duration::from_millis(5)).await;
        log.restore_to(50);
        log.store(51, "new-51");
        // Seen by the safety poll (a read begun once 100 was known) or a NOTIFY.
        fanout.settle(COUNCIL, 51, 100);
        let first = next_alert(&mut stream).await;
        assert_eq!((first.sequence, first.alert_id.as_str()), (51, "new-51"));
        log.store(52, "new-52");
        fanout.notified(&format!("{COUNCIL}:52"));
        let second = next_alert(&mut stream).await;
        assert_eq!((second.sequence, second.alert_id.as_str()), (52, "new-52"));
    }

    #[tokio::test]
    async fn a_restore_is_seen_by_the_next_read_even_when_the_log_grew_past_the_cursor_meanwhile() {
        let (log, fanout) = (Arc::new(Log::default()), Fanout::new());
        for n in 1..=10 {
            log.store(n, &format!("old-{n}"));
        }
        fanout.advance(COUNCIL, 10);
        let mut stream = Box::pin(open(&log, &fanout, 9, Identity::default()));
        assert_eq!(next_alert(&mut stream).await.alert_id, "old-10");
        tokio::time::sleep(Duration::from_millis(5)).await;
        log.restore_to(5);
        for n in 6..=12 {
            log.store(n, &format!("new-{n}"));
        }
        fanout.advance(COUNCIL, 12);
        for n in 6..=12 {
            assert_eq!(next_alert(&mut stream).await.alert_id, format!("new-{n}"));
        }
    }

    #[tokio::test]
    async fn a_stream_whose_caller_is_no_longer_valid_ends_unauthenticated_without_an_alert() {
        let (log, fanout) = (Arc::new(Log::default()), Fanout::new());
        log.store(1, "a-1");
        fanout.advance(COUNCIL, 1);
        let revoked = PeerInfo::new(None, Err(IdentityError::Untrusted("certificate has been revoked".into())));
        let mut stream = Box::pin(open(&log, &fanout, 0, Identity::from_peer(Some(revoked))));
        let end = stream.next().await.expect("a last status").expect_err("no alert");
        assert_eq!(end.code(), tonic::Code::Unauthenticated);
        assert!(end.message().contains("revoked"), "{}", end.message());
        assert!(stream.next().await.is_none(), "nothing after the status");
    }
}
