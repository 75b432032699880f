//! Wake-ups: one dedicated `LISTEN` connection per service instance, fanned
//! out in-process to the streams of each council.
//!
//! A wake-up carries no alert, only "council X may have something new"; the
//! stream then reads the table from its own cursor. Wake-ups for one council
//! coalesce (a `watch` channel keeps only "changed"), so a burst of a
//! thousand alerts costs a stream a few reads, and a stalled stream holds no
//! queue at all. A notification missed while the connection was down costs
//! latency, never an alert: after every (re)connection all streams re-read,
//! and each stream also re-reads on a timer.

use crate::store::CHANNEL;
use cpis_runtime::server::CancellationToken;
use futures::StreamExt;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::watch;
use tokio_postgres::AsyncMessage;

/// The in-process registry of wake-up channels, one per council with at
/// least one open stream on this instance.
#[derive(Debug, Clone, Default)]
pub struct Fanout {
    councils: Arc<Mutex<HashMap<String, watch::Sender<u64>>>>,
}

impl Fanout {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, watch::Sender<u64>>> {
        // The map stays consistent even if a holder panicked: every critical
        // section is a single insert, lookup or removal.
        self.councils.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers one stream of `council`; it is woken until the result is dropped.
    pub fn subscribe(&self, council: &str) -> Wakeups {
        let rx = self.lock().entry(council.to_string()).or_insert_with(|| watch::channel(0).0).subscribe();
        Wakeups { rx: Some(rx), council: council.to_string(), fanout: self.clone() }
    }

    /// Wakes every stream of `council` on this instance.
    pub fn wake(&self, council: &str) {
        if let Some(tx) = self.lock().get(council) {
            tx.send_modify(|n| *n = n.wrapping_add(1));
        }
    }

    /// Wakes every stream on this instance (after the LISTEN connection was
    /// (re)established, when notifications may have been missed).
    pub fn wake_all(&self) {
        for tx in self.lock().values() {
            tx.send_modify(|n| *n = n.wrapping_add(1));
        }
    }

    /// How many councils have an open stream on this instance.
    pub fn councils_watched(&self) -> usize {
        self.lock().len()
    }

    /// Each council with an open stream on this instance, and how many.
    pub fn streams_by_council(&self) -> Vec<(String, usize)> {
        self.lock().iter().map(|(council, tx)| (council.clone(), tx.receiver_count())).collect()
    }
}

/// One stream's wake-up signal; leaving deregisters it, and the council's
/// entry goes with its last stream.
#[derive(Debug)]
pub struct Wakeups {
    // Always `Some` until `drop`, which must release it under the map lock.
    rx: Option<watch::Receiver<u64>>,
    council: String,
    fanout: Fanout,
}

impl Wakeups {
    /// Resolves once the council may have new alerts since the last call
    /// (immediately if a wake-up arrived in between).
    pub async fn wait(&mut self) {
        let changed = match self.rx.as_mut() {
            Some(rx) => rx.changed().await.is_ok(),
            None => false,
        };
        if !changed {
            // The sender lives while any receiver does, so this cannot
            // happen; never spin if it somehow did: the stream's timer still
            // re-reads.
            std::future::pending::<()>().await;
        }
    }
}

impl Drop for Wakeups {
    fn drop(&mut self) {
        let mut councils = self.fanout.lock();
        // Release our receiver under the lock, so the count below is exact
        // even when several streams of the council leave at once.
        drop(self.rx.take());
        if councils.get(&self.council).is_some_and(|tx| tx.receiver_count() == 0) {
            councils.remove(&self.council);
        }
    }
}

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

/// Runs the LISTEN connection until `stop` fires: connects, listens, wakes
/// every stream, then turns each notification into a wake-up of its council;
/// when the connection drops, reconnects with exponential backoff.
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
                // the table: make every stream look.
                fanout.wake_all();
            }
            message = messages.next() => match message {
                Some(Ok(AsyncMessage::Notification(n))) => fanout.wake(n.payload()),
                Some(Ok(_)) => {} // notices: nothing to do
                Some(Err(e)) => return Err(e.into()),
                None => return Err(ListenError::Closed),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_council_entry_lives_as_long_as_its_streams() {
        let fanout = Fanout::new();
        let a = fanout.subscribe("E08000003");
        let b = fanout.subscribe("E08000003");
        let c = fanout.subscribe("E08000012");
        assert_eq!(fanout.councils_watched(), 2);
        drop(a);
        assert_eq!(fanout.councils_watched(), 2);
        drop(b);
        assert_eq!(fanout.councils_watched(), 1);
        drop(c);
        assert_eq!(fanout.councils_watched(), 0);
    }

    #[tokio::test]
    async fn wake_ups_reach_only_the_council_named() {
        let fanout = Fanout::new();
        let mut manchester = fanout.subscribe("E08000003");
        let mut liverpool = fanout.subscribe("E08000012");
        fanout.wake("E08000003");
        fanout.wake("E08000003"); // coalesces with the first
        let quick = Duration::from_millis(50);
        assert!(tokio::time::timeout(quick, manchester.wait()).await.is_ok());
        assert!(tokio::time::timeout(quick, manchester.wait()).await.is_err());
        assert!(tokio::time::timeout(quick, liverpool.wait()).await.is_err());
        fanout.wake("E10000016"); // nobody streaming: nothing happens
        fanout.wake_all();
        assert!(tokio::time::timeout(quick, manchester.wait()).await.is_ok());
        assert!(tokio::time::timeout(quick, liverpool.wait()).await.is_ok());
    }
}
