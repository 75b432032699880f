//! Each council's latest sequence, in memory, shared by every stream of
//! this instance.
//!
//! The table is the truth; this is only what the instance knows of it: the
//! highest sequence seen per council, raised by the `NOTIFY` payloads
//! (`council:sequence`), by one re-read of every council after the `LISTEN`
//! connection (re)connects, and by the safety poll of the councils that
//! have streams here ([`crate::listen`]). Those sources race (a poll's
//! answer may arrive after a newer notification), so a lower value is never
//! taken as it comes: it only asks for the council to be read again, and a
//! read that started after the higher value was known and still finds less
//! proves the database went back (a point-in-time restore). Then, and only
//! then, the value goes down ([`Fanout::settle`]) and the council's streams
//! wake to deliver what the log now holds (see [`crate::stream`]). An idle
//! stream compares the value with its own cursor: heartbeats come from
//! memory, and the table is read only when the council has something newer
//! than the cursor. A burst of a thousand alerts coalesces (a `watch` keeps
//! only the latest), so a stalled stream holds no queue at all.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::{watch, Notify};

/// The in-process registry: one entry per council seen (there are about
/// 153 councils in England, and council codes are validated on the way in).
#[derive(Debug, Clone, Default)]
pub struct Fanout {
    inner: Arc<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    councils: Mutex<HashMap<String, watch::Sender<Known>>>,
    /// Councils whose notification carried no sequence (an older publisher)
    /// or a lower one than known: the poller reads their latest in one query.
    stale: Mutex<HashSet<String>>,
    /// Every council must be re-read (the LISTEN connection (re)connected).
    stale_all: AtomicBool,
    /// Wakes the poller for the two above.
    refresh: Notify,
    /// Bumped when the instance lost sight of the database: streams end.
    lost: watch::Sender<u64>,
}

/// What the instance knows of one council's log.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Known {
    /// The latest sequence.
    pub latest: i64,
    /// How often the log was seen to go back (a restore): a stream that saw
    /// another count reads the log again from its cursor.
    pub restores: u64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section is a single insert, lookup or removal, so the
    // data stays consistent even if a holder panicked.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Fanout {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers one stream of `council`: it sees the council's latest
    /// sequence until the result is dropped.
    pub fn subscribe(&self, council: &str) -> Latest {
        let mut councils = lock(&self.inner.councils);
        let rx = match councils.get(council) {
            Some(tx) => tx.subscribe(),
            None => {
                let (tx, rx) = watch::channel(Known::default());
                councils.insert(council.to_string(), tx);
                rx
            }
        };
        let mut lost = self.inner.lost.subscribe();
        lost.mark_unchanged();
        Latest { rx, lost, _registry: self.clone() }
    }

    /// Records that `council` has `sequence` stored; wakes its streams if
    /// that is new. A lower value changes nothing here (see [`Fanout::settle`]).
    pub fn advance(&self, council: &str, sequence: i64) {
        let mut councils = lock(&self.inner.councils);
        match councils.get(council) {
            Some(tx) => {
                tx.send_if_modified(|known| {
                    let newer = sequence > known.latest;
                    if newer {
                        known.latest = sequence;
                    }
                    newer
                });
            }
            None => {
                let known = Known { latest: sequence, restores: 0 };
                councils.insert(council.to_string(), watch::channel(known).0);
            }
        }
    }

    /// Takes what a read of the table found for `council`, `read`, where
    /// `before` is what was known when the read began (see [`Fanout::known`]):
    /// a higher value is a rise; a lower one proves the log went back (what
    /// was known before the read had committed before it), so the value goes
    /// down and the council's streams wake to read their log again.
    pub fn settle(&self, council: &str, read: i64, before: i64) {
        if read >= before {
            return self.advance(council, read);
        }
        let councils = lock(&self.inner.councils);
        if let Some(tx) = councils.get(council) {
            tracing::warn!(
                council,
                from = before,
                to = read,
                "the council's alert log went back (a restore?): streams read it again"
            );
            tx.send_modify(|known| {
                known.latest = read;
                known.restores += 1;
            });
        }
    }

    /// What is known now of each of `councils` (of every council when
    /// `None`), to [`Fanout::settle`] a read with.
    pub fn known(&self, councils: Option<&[String]>) -> HashMap<String, i64> {
        let all = lock(&self.inner.councils);
        match councils {
            None => all.iter().map(|(c, tx)| (c.clone(), tx.borrow().latest)).collect(),
            Some(wanted) => wanted.iter().map(|c| (c.clone(), all.get(c).map_or(0, |tx| tx.borrow().latest))).collect(),
        }
    }

    /// One `NOTIFY` payload: `council:sequence`, or a bare council code from
    /// a publisher that does not send the sequence (then it is read). A
    /// sequence lower than known is read too: it may be late (a poll saw
    /// more meanwhile) or the first alert after a restore.
    pub fn notified(&self, payload: &str) {
        match payload.split_once(':').map(|(c, s)| (c, s.parse::<i64>())) {
            Some((council, Ok(sequence))) if sequence >= self.latest(council) => self.advance(council, sequence),
            _ => {
                let council = payload.split(':').next().unwrap_or(payload);
                lock(&self.inner.stale).insert(council.to_string());
                self.inner.refresh.notify_one();
            }
        }
    }

    /// Asks for every council's latest sequence to be read again (after the
    /// LISTEN connection was (re)established: notifications may have been missed).
    pub fn refresh_all(&self) {
        self.inner.stale_all.store(true, Ordering::SeqCst);
        self.inner.refresh.notify_one();
    }

    /// Resolves when a refresh was asked for.
    pub(crate) async fn refresh_requested(&self) {
        self.inner.refresh.notified().await
    }

    /// What must be read now: `None` for every council, or the councils named
    /// by bare notifications (empty when nothing was asked).
    pub(crate) fn take_refresh(&self) -> Option<Vec<String>> {
        let stale: Vec<String> = lock(&self.inner.stale).drain().collect();
        if self.inner.stale_all.swap(false, Ordering::SeqCst) {
            None
        } else {
            Some(stale)
        }
    }

    /// Ends every stream of this instance with `UNAVAILABLE`: the instance
    /// can no longer tell what is new, and the client should go elsewhere.
    pub fn lose_database(&self) {
        self.inner.lost.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// The councils with at least one open stream on this instance.
    pub fn watched(&self) -> Vec<String> {
        lock(&self.inner.councils).iter().filter(|(_, tx)| tx.receiver_count() > 0).map(|(c, _)| c.clone()).collect()
    }

    /// How many councils have an open stream on this instance.
    pub fn councils_watched(&self) -> usize {
        lock(&self.inner.councils).values().filter(|tx| tx.receiver_count() > 0).count()
    }

    /// Each council with an open stream on this instance, and how many.
    pub fn streams_by_council(&self) -> Vec<(String, usize)> {
        lock(&self.inner.councils)
            .iter()
            .filter(|(_, tx)| tx.receiver_count() > 0)
            .map(|(council, tx)| (council.clone(), tx.receiver_count()))
            .collect()
    }

    /// The latest sequence known for `council` (0 when none is known).
    pub fn latest(&self, council: &str) -> i64 {
        lock(&self.inner.councils).get(council).map_or(0, |tx| tx.borrow().latest)
    }
}

/// One stream's view of its council's latest sequence.
#[derive(Debug)]
pub struct Latest {
    rx: watch::Receiver<Known>,
    lost: watch::Receiver<u64>,
    // Keeps the senders alive for as long as any stream waits on them.
    _registry: Fanout,
}

/// What woke a waiting stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// The council's latest sequence changed.
    Advanced,
    /// The instance lost sight of the database.
    Lost,
}

impl Latest {
    /// What is known now; marks it seen for [`Latest::changed`].
    pub fn get(&mut self) -> Known {
        *self.rx.borrow_and_update()
    }

    /// Resolves once what is known changed since the last [`Latest::get`]
    /// (at once if it did in between), or when the database is lost.
    pub async fn changed(&mut self) -> Change {
        tokio::select! {
            biased;
            r = self.lost.changed() => match r {
                Ok(()) => Change::Lost,
                Err(_) => std::future::pending().await,
            },
            r = self.rx.changed() => match r {
                Ok(()) => Change::Advanced,
                // `_registry` keeps the sender alive: cannot happen.
                Err(_) => std::future::pending().await,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn a_council_counts_as_watched_as_long_as_its_streams() {
        let fanout = Fanout::new();
        let a = fanout.subscribe("E08000003");
        let b = fanout.subscribe("E08000003");
        let c = fanout.subscribe("E08000012");
        assert_eq!(fanout.councils_watched(), 2);
        drop(a);
        assert_eq!(fanout.councils_watched(), 2);
        drop(b);
        assert_eq!(fanout.councils_watched(), 1);
        assert_eq!(fanout.watched(), vec!["E08000012".to_string()]);
        drop(c);
        assert_eq!(fanout.councils_watched(), 0);
    }

    #[tokio::test]
    async fn notifications_raise_only_the_council_named_and_never_lower_it() {
        let fanout = Fanout::new();
        let mut manchester = fanout.subscribe("E08000003");
        let mut liverpool = fanout.subscribe("E08000012");
        assert_eq!(manchester.get().latest, 0);
        assert_eq!(liverpool.get().latest, 0);
        fanout.notified("E08000003:4");
        fanout.notified("E08000003:5"); // coalesces with the first
        let quick = Duration::from_millis(50);
        assert_eq!(tokio::time::timeout(quick, manchester.changed()).await, Ok(Change::Advanced));
        assert_eq!(manchester.get().latest, 5);
        assert!(tokio::time::timeout(quick, manchester.changed()).await.is_err());
        assert!(tokio::time::timeout(quick, liverpool.changed()).await.is_err());
        fanout.notified("E08000003:3"); // late and lower: nothing changes, it is read again
        assert!(tokio::time::timeout(quick, manchester.changed()).await.is_err());
        assert_eq!(manchester.get().latest, 5);
        assert_eq!(fanout.take_refresh(), Some(vec!["E08000003".to_string()]));
        fanout.notified("E10000016:9"); // nobody streaming: remembered
        assert_eq!(fanout.latest("E10000016"), 9);
        assert_eq!(fanout.take_refresh(), Some(vec![]));
    }

    #[tokio::test]
    async fn a_bare_council_code_asks_for_a_read_and_a_reconnection_for_all() {
        let fanout = Fanout::new();
        fanout.notified("E08000003");
        fanout.notified("E08000003:x");
        assert_eq!(fanout.take_refresh(), Some(vec!["E08000003".to_string()]));
        fanout.refresh_all();
        assert_eq!(fanout.take_refresh(), None);
        assert_eq!(fanout.take_refresh(), Some(vec![]));
    }

    #[tokio::test]
    async fn a_read_below_what_was_known_before_it_resets_the_council_and_wakes_its_streams() {
        let fanout = Fanout::new();
        let mut manchester = fanout.subscribe("E08000003");
        let mut liverpool = fanout.subscribe("E08000012");
        fanout.advance("E08000003", 100);
        fanout.advance("E08000012", 7);
        assert_eq!(manchester.get(), Known { latest: 100, restores: 0 });
        liverpool.get();
        // A late read (begun before 100 was known) is no proof: nothing changes.
        fanout.settle("E08000003", 98, 98);
        let quick = Duration::from_millis(50);
        assert!(tokio::time::timeout(quick, manchester.changed()).await.is_err());
        // A read begun once 100 was known that finds 51: the log went back.
        let before = fanout.known(Some(&["E08000003".to_string()]));
        assert_eq!(before["E08000003"], 100);
        fanout.settle("E08000003", 51, before["E08000003"]);
        assert_eq!(tokio::time::timeout(quick, manchester.changed()).await, Ok(Change::Advanced));
        assert_eq!(manchester.get(), Known { latest: 51, restores: 1 });
        assert!(tokio::time::timeout(quick, liverpool.changed()).await.is_err(), "other councils untouched");
        fanout.notified("E08000003:52");
        assert_eq!(manchester.get(), Known { latest: 52, restores: 1 });
    }

    #[tokio::test]
    async fn losing_the_database_reaches_every_stream() {
        let fanout = Fanout::new();
        let mut a = fanout.subscribe("E08000003");
        fanout.lose_database();
        let mut late = fanout.subscribe("E08000003");
        let quick = Duration::from_millis(50);
        assert_eq!(tokio::time::timeout(quick, a.changed()).await, Ok(Change::Lost));
        assert!(tokio::time::timeout(quick, late.changed()).await.is_err(), "only streams open at the loss");
    }
}
