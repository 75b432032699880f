//! The replay look-up of `CheckIn` (was this `request_id` answered before
//! at this setting?), coalesced as the flag look-ups are
//! ([`crate::registry`]): a look-up asked while none is in flight goes at
//! once, alone (a lone check-in waits for nothing); look-ups asked while one
//! is in flight queue, and go together as one query when it returns, at most
//! [`MAX_COALESCED`] at a time (a full queue goes at once, in parallel).
//!
//! Every check-in asks, and almost every answer is "no" (only flagged
//! check-ins are stored), so one query per check-in was most of the
//! database's work for an unflagged person. Coalescing changes no answer:
//! each look-up is a read of committed rows made after its check-in arrived,
//! as before, and a flagged check-in still re-checks inside its transaction.

use crate::model::StoredRequest;
use crate::store::checkin as store;
use cpis_runtime::db::DbPool;
use cpis_runtime::ApiError;
use futures::FutureExt;
use std::sync::{Arc, Mutex, PoisonError};
use tokio::sync::oneshot;

/// Most look-ups sent in one query.
pub const MAX_COALESCED: usize = 128;

type Answer = Result<Option<StoredRequest>, ApiError>;

/// Replay look-ups in the check-in store.
#[derive(Debug, Clone)]
pub struct ReplayLookup {
    pool: DbPool,
    queue: Arc<Mutex<Queue>>,
}

/// Look-ups waiting for the one in flight to return.
#[derive(Debug, Default)]
struct Queue {
    /// Queries under way.
    in_flight: usize,
    /// Look-ups asked since, in order.
    waiting: Vec<Waiter>,
}

#[derive(Debug)]
struct Waiter {
    setting_code: String,
    request_id: String,
    answer: oneshot::Sender<Answer>,
}

impl ReplayLookup {
    /// Look-ups in `pool`.
    pub fn new(pool: DbPool) -> Self {
        Self { pool, queue: Arc::default() }
    }

    /// The stored first answer to `request_id` from `setting_code`, if any.
    pub async fn find(&self, setting_code: &str, request_id: &str) -> Answer {
        let (answer, answered) = oneshot::channel();
        let waiter = Waiter { setting_code: setting_code.to_string(), request_id: request_id.to_string(), answer };
        if let Some(batch) = self.enqueue(waiter) {
            tokio::spawn(self.clone().dispatch(batch));
        }
        answered.await.unwrap_or_else(|_| Err(ApiError::internal("the replay look-up was dropped unanswered")))
    }

    fn queue(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues `waiter`; returns what to send now, if anything: the waiter
    /// alone when nothing is in flight, or the whole queue once it is full.
    fn enqueue(&self, waiter: Waiter) -> Option<Vec<Waiter>> {
        let mut q = self.queue();
        if q.in_flight == 0 {
            q.in_flight = 1;
            return Some(vec![waiter]);
        }
        q.waiting.push(waiter);
        if q.waiting.len() < MAX_COALESCED {
            return None;
        }
        q.in_flight += 1;
        Some(std::mem::take(&mut q.waiting))
    }

    /// Sends `batch`, then whatever queued meanwhile, until the queue is empty.
    async fn dispatch(self, mut batch: Vec<Waiter>) {
        loop {
            // A panic drops the batch's senders: its callers get an internal
            // error, and the queue keeps moving.
            if std::panic::AssertUnwindSafe(self.send(batch)).catch_unwind().await.is_err() {
                tracing::error!("a replay look-up batch panicked");
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

    /// One query for the look-ups of `batch` whose callers still wait.
    async fn send(&self, mut batch: Vec<Waiter>) {
        batch.retain(|w| !w.answer.is_closed());
        if batch.is_empty() {
            return;
        }
        let found = async {
            let db = self.pool.get().await?;
            let keys: Vec<(&str, &str)> =
                batch.iter().map(|w| (w.setting_code.as_str(), w.request_id.as_str())).collect();
            store::find_requests(&db, &keys).await
        }
        .await;
        match found {
            Ok(found) => {
                for (w, earlier) in batch.into_iter().zip(found) {
                    let _ = w.answer.send(Ok(earlier));
                }
            }
            Err(e) => {
                for w in batch {
                    let _ = w.answer.send(Err(copy(&e)));
                }
            }
        }
    }
}

/// The same failure for each caller of a failed batch (the error was logged
/// once where it arose; an internal one is logged again with each caller's
/// reference when answered).
fn copy(e: &ApiError) -> ApiError {
    match e {
        ApiError::Unavailable(m) => ApiError::Unavailable(m.clone()),
        ApiError::DeadlineExceeded(m) => ApiError::DeadlineExceeded(m.clone()),
        ApiError::Internal(m) => ApiError::Internal(m.clone()),
        other => ApiError::internal(format!("replay look-up: {other}")),
    }
}
