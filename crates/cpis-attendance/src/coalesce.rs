//! The coalescing queue shared by the flag look-ups ([`crate::registry`]),
//! the replay look-ups ([`crate::replays`]) and the group commit of flagged
//! check-ins (`checkin::group`): a look-up asked while none is in flight
//! (fewer than the queue's parallel batches) goes at once, alone (a lone
//! check-in waits for nothing); look-ups asked while one is in flight queue,
//! and go together when it returns, at most [`MAX_COALESCED`] at a time (a
//! queue that fills up goes at once, in parallel).

use futures::FutureExt;
use std::future::Future;
use std::sync::{Mutex, MutexGuard, PoisonError};

/// Most look-ups sent together (the Registry's `LookupFlagsBatch` takes 256).
pub const MAX_COALESCED: usize = 128;

/// Look-ups of type `W` waiting for the batch in flight to return.
#[derive(Debug)]
pub struct Coalescer<W> {
    queue: Mutex<Queue<W>>,
    /// Batches sent at the same time before look-ups queue (1 by default).
    parallel: usize,
}

#[derive(Debug)]
struct Queue<W> {
    /// Batches under way.
    in_flight: usize,
    /// Look-ups asked since, in order.
    waiting: Vec<W>,
}

impl<W> Default for Coalescer<W> {
    fn default() -> Self {
        Self::with_parallel(1)
    }
}

impl<W> Coalescer<W> {
    /// A queue that sends up to `parallel` batches at the same time: a
    /// waiter asked while fewer are in flight goes at once, alone.
    pub fn with_parallel(parallel: usize) -> Self {
        Self { queue: Mutex::new(Queue { in_flight: 0, waiting: Vec::new() }), parallel: parallel.max(1) }
    }

    fn queue(&self) -> MutexGuard<'_, Queue<W>> {
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues `waiter`; returns what to send now, if anything: the waiter
    /// alone when fewer batches than allowed are in flight (one by
    /// default), or the whole queue once it is full. What it returns goes
    /// to [`Coalescer::drain`].
    pub fn enqueue(&self, waiter: W) -> Option<Vec<W>> {
        let parallel = self.parallel;
        let mut q = self.queue();
        if q.in_flight < parallel {
            q.in_flight += 1;
            return Some(vec![waiter]);
        }
        q.waiting.push(waiter);
        if q.waiting.len() < MAX_COALESCED {
            return None;
        }
        q.in_flight += 1;
        Some(std::mem::take(&mut q.waiting))
    }

    /// Sends `batch` with `send`, then whatever queued meanwhile, until the
    /// queue is empty. A panic in `send` drops the batch (its callers get an
    /// error from their dropped answers) and the queue keeps moving; `what`
    /// names the look-up in the log line that says so.
    pub async fn drain<F, Fut>(&self, mut batch: Vec<W>, what: &'static str, send: F)
    where
        F: Fn(Vec<W>) -> Fut,
        Fut: Future<Output = ()>,
    {
        loop {
            if std::panic::AssertUnwindSafe(send(batch)).catch_unwind().await.is_err() {
                tracing::error!(lookup = what, "a look-up batch panicked");
            }
            let mut q = self.queue();
            if q.waiting.is_empty() {
                q.in_flight -= 1;
                return;
            }
            let n = q.waiting.len().min(MAX_COALESCED);
            batch = q.waiting.drain(..n).collect();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lone_look_up_goes_at_once_and_a_full_queue_goes_together() {
        let c = Coalescer::default();
        assert_eq!(c.enqueue(0), Some(vec![0]));
        for i in 1..MAX_COALESCED {
            assert_eq!(c.enqueue(i), None);
        }
        assert_eq!(c.enqueue(MAX_COALESCED).map(|b| b.len()), Some(MAX_COALESCED));
    }

    #[test]
    fn with_two_in_flight_two_lone_waiters_go_at_once_and_the_third_waits_for_either() {
        let c = Coalescer::with_parallel(2);
        assert_eq!(c.enqueue(1), Some(vec![1]));
        assert_eq!(c.enqueue(2), Some(vec![2]));
        assert_eq!(c.enqueue(3), None);
        assert_eq!(c.enqueue(4), None);
        // The first batch returns: the queued ones go together on its turn.
        let sent = std::sync::Mutex::new(Vec::new());
        futures::executor::block_on(c.drain(vec![1], "test", |b| {
            sent.lock().unwrap().push(b);
            async {}
        }));
        assert_eq!(*sent.lock().unwrap(), vec![vec![1], vec![3, 4]]);
        // One batch is still in flight (2): a new waiter goes at once again.
        assert_eq!(c.enqueue(5), Some(vec![5]));
        assert_eq!(c.enqueue(6), None);
    }
}
