//! The replay look-up of `CheckIn` (was this `request_id` answered before
//! at this setting?), coalesced as the flag look-ups are
//! ([`crate::registry`]): a look-up asked while none is in flight goes at
//! once, alone (a lone check-in waits for nothing); look-ups asked while one
//! is in flight queue, and go together as one query when it returns
//! ([`crate::coalesce`]).
//!
//! Every check-in asks, and almost every answer is "no" (only flagged
//! check-ins are stored), so one query per check-in was most of the
//! database's work for an unflagged person. Coalescing changes no answer:
//! each look-up is a read of committed rows made after its check-in arrived,
//! as before, and a flagged check-in still re-checks inside its transaction.

use crate::coalesce::Coalescer;
use crate::model::StoredRequest;
use crate::store::checkin as store;
use cpis_runtime::db::DbPool;
use cpis_runtime::ApiError;
use std::sync::Arc;
use tokio::sync::oneshot;

type Answer = Result<Option<StoredRequest>, ApiError>;

/// Replay look-ups in the check-in store.
#[derive(Debug, Clone)]
pub struct ReplayLookup {
    pool: DbPool,
    queue: Arc<Coalescer<Waiter>>,
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
        if let Some(batch) = self.queue.enqueue(waiter) {
            let this = self.clone();
            tokio::spawn(async move { this.queue.drain(batch, "replay", |b| this.send(b)).await });
        }
        answered.await.unwrap_or_else(|_| Err(ApiError::internal("the replay look-up was dropped unanswered")))
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
        ApiError::Contention(m) => ApiError::Contention(m.clone()),
        ApiError::DeadlineExceeded(m) => ApiError::DeadlineExceeded(m.clone()),
        ApiError::Internal(m) => ApiError::Internal(m.clone()),
        other => ApiError::internal(format!("replay look-up: {other}")),
    }
}
