//! How an instance learns what is new: one dedicated `LISTEN` connection,
//! and one safety poll for all the councils that have streams here.
//!
//! Each `NOTIFY` payload carries the council and the sequence just
//! committed, which raise the council's latest sequence in [`Fanout`]. A
//! notification sent while nobody listens is gone, so after every
//! (re)connection every council's latest is read again, in one query. The
//! safety poll reads the latest of every council with a stream on this
//! instance, again in one query, every `poll_interval`: a notification lost
//! any other way costs latency, never an alert, and the cost does not grow
//! with the number of streams. A read that finds a council's log shorter
//! than was known before it began means the database went back (a restore):
//! [`Fanout::settle`] resets that council and wakes its streams. If that poll fails, the instance can no
//! longer tell what is new, and its streams end with `UNAVAILABLE` so their
//! clients resume elsewhere (as a stream's own failed read always did).

use crate::fanout::Fanout;
use crate::store::{Store, CHANNEL};
use cpis_runtime::server::CancellationToken;
use futures::StreamExt;
use std::time::Duration;
use tokio::time::Instant;
use tokio_postgres::AsyncMessage;

/// Settings of the LISTEN connection.
#[derive(Debug, Clone)]
pub struct ListenerConfig {
    /// Where to connect (the service's database).
    pub database: tokio_postgres::Config,
    /// TLS to the database, as the pool does it.
    pub tls: cpis_runtime::db_tls::DbTls,
    /// First delay before reconnecting; doubles on each failure.
    pub backoff_min: Duration,
    /// Longest delay between reconnection attempts.
    pub backoff_max: Duration,
}

impl ListenerConfig {
    /// Settings for `database_url`, with the session settings of every
    /// connection ([`cpis_runtime::db::SessionSettings`]): TCP keepalives short
    /// enough to notice a silently dead connection within about a minute.
    pub fn new(database_url: &str, backoff_max: Duration) -> anyhow::Result<Self> {
        let target = cpis_runtime::db_tls::DbTarget::parse(database_url)?;
        let tls = target.tls()?;
        let mut database = target.config;
        database.application_name("cpis-notification-listen").connect_timeout(Duration::from_secs(5));
        cpis_runtime::db::SessionSettings::from_env()?.apply(&mut database);
        Ok(Self { database, tls, backoff_min: Duration::from_millis(100), backoff_max })
    }
}

/// Runs the LISTEN connection until `stop` fires: connects, listens, asks
/// for every council to be re-read, then turns each notification into the
/// council's new latest sequence; when the connection drops, reconnects
/// with exponential backoff.
pub async fn listen(config: ListenerConfig, fanout: Fanout, stop: CancellationToken) {
    let mut backoff = config.backoff_min;
    loop {
        match listen_once(&config, &fanout, &stop, &mut backoff).await {
            Ok(()) => return,
            Err(e) => tracing::warn!(
                cause = %e,
                retry_in_ms = backoff.as_millis() as u64,
                "LISTEN connection lost; reconnecting"
            ),
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(config.backoff_max);
    }
}

/// Why the LISTEN connection ended.
#[derive(Debug, thiserror::Error)]
enum ListenError {
    /// Connecting, listening or reading failed.
    #[error("{}", cpis_runtime::db::describe(.0))]
    Db(#[from] tokio_postgres::Error),
    /// The server closed the connection.
    #[error("connection closed by the server")]
    Closed,
}

/// One connection's life: `Ok` when stopped, `Err` when the connection failed.
async fn listen_once(
    config: &ListenerConfig,
    fanout: &Fanout,
    stop: &CancellationToken,
    backoff: &mut Duration,
) -> Result<(), ListenError> {
    let (client, mut connection) = tokio::select! {
        _ = stop.cancelled() => return Ok(()),
        connected = config.database.connect(config.tls.clone()) => connected?,
    };
    // The connection must be polled for the LISTEN to complete, and from then
    // on to receive notifications: one loop does both.
    let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
    let statement = format!("LISTEN {CHANNEL}");
    let listen = client.batch_execute(&statement);
    tokio::pin!(listen);
    let mut listening = false;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            done = &mut listen, if !listening => {
                done?;
                listening = true;
                *backoff = config.backoff_min;
                tracing::info!("listening for new alerts");
                // Anything published while we were not listening is only in
                // the table: read every council's latest again.
                fanout.refresh_all();
            }
            message = messages.next() => match message {
                Some(Ok(AsyncMessage::Notification(n))) => fanout.notified(n.payload()),
                Some(Ok(_)) => {} // notices: nothing to do
                Some(Err(e)) => return Err(e.into()),
                None => return Err(ListenError::Closed),
            },
        }
    }
}

/// Database queries made on behalf of streams, by kind (exported as
/// `cpis_notification_stream_db_queries_total`): `read` (a stream reading
/// alerts after its cursor), `open` (opening a stream), `poll` (the safety
/// poll) and `refresh` (re-reads after a reconnection or a notification
/// without a sequence). An idle stream causes none.
#[derive(Debug, Clone)]
pub struct StreamQueries(prometheus::IntCounterVec);

impl StreamQueries {
    /// A fresh, unregistered counter.
    pub fn new() -> Self {
        Self(
            prometheus::IntCounterVec::new(
                prometheus::Opts::new(
                    "notification_stream_db_queries_total",
                    "Database queries made on behalf of Subscribe streams, by kind (read, open, poll, refresh)",
                ),
                &["kind"],
            )
            .expect("static metric"),
        )
    }

    /// Counts one query of `kind`.
    pub fn inc(&self, kind: &'static str) {
        self.0.with_label_values(&[kind]).inc();
    }

    /// The counter, to register.
    pub fn collector(&self) -> prometheus::IntCounterVec {
        self.0.clone()
    }
}

impl Default for StreamQueries {
    fn default() -> Self {
        Self::new()
    }
}

/// Keeps the latest sequences in [`Fanout`] true until `stop` fires: every
/// `every`, one query for the councils with a stream here; at once, one
/// query for what a reconnection or a bare notification asked for.
pub async fn poll(store: Store, fanout: Fanout, every: Duration, queries: StreamQueries, stop: CancellationToken) {
    let mut next = Instant::now() + every;
    // A refresh that failed is retried with the next poll.
    let mut retry_all = false;
    loop {
        let (councils, kind) = tokio::select! {
            biased;
            _ = stop.cancelled() => return,
            _ = fanout.refresh_requested() => match fanout.take_refresh() {
                None => (None, "refresh"),
                Some(stale) if stale.is_empty() => continue,
                Some(stale) => (Some(stale), "refresh"),
            },
            _ = tokio::time::sleep_until(next) => {
                next = Instant::now() + every;
                if std::mem::take(&mut retry_all) {
                    (None, "refresh")
                } else {
                    let watched = fanout.watched();
                    if watched.is_empty() {
                        continue;
                    }
                    (Some(watched), "poll")
                }
            }
        };
        let all = councils.is_none();
        queries.inc(kind);
        // What was known before the read: a read that finds less proves a restore.
        let mut before = fanout.known(councils.as_deref());
        match store.latest_sequences(councils.as_deref()).await {
            Ok(rows) => {
                for (council, sequence) in rows {
                    let known = before.remove(&council).unwrap_or(0);
                    fanout.settle(&council, sequence, known);
                }
                // A council without a row has no alert (any more).
                for (council, known) in before {
                    fanout.settle(&council, 0, known);
                }
            }
            Err(e) => {
                retry_all |= all;
                if kind == "poll" || all {
                    tracing::warn!(error = %e, "cannot read the councils' latest alerts; ending this instance's streams");
                    fanout.lose_database();
                } else {
                    tracing::warn!(error = %e, "cannot read a council's latest alert; the next poll will");
                }
            }
        }
    }
}
