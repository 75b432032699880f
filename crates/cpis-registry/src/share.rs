//! Who may use the database, and how much of it. `LookupFlags` (a check-in
//! waiting at a front desk) must always find a connection, whatever councils
//! are doing: council work (uploads, upserts, reads of their own plans) goes
//! through a [`CouncilGate`] that never lets it hold more than the pool minus
//! the connections reserved for look-ups, and never lets one council hold
//! more than its share of that, so one council cannot starve another either.
//!
//! Waiting for a place happens before a connection is taken, so a queue of
//! council calls never holds connections it is not using.

use cpis_runtime::ApiError;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Caps on council database work in one replica.
#[derive(Debug)]
pub struct CouncilGate {
    total: Arc<Semaphore>,
    per_council: usize,
    councils: Mutex<HashMap<String, Arc<Semaphore>>>,
    wait: Duration,
}

/// One council's place: held while its connection is in use.
#[derive(Debug)]
pub struct CouncilPermit {
    _council: OwnedSemaphorePermit,
    _total: OwnedSemaphorePermit,
}

/// How the pool is shared out, from the pool's size and the settings
/// (0 means "choose from the pool size").
pub fn split(pool_size: usize, reserved_for_lookups: usize, per_council: usize) -> (usize, usize) {
    let reserved = if reserved_for_lookups == 0 { (pool_size / 4).max(2) } else { reserved_for_lookups };
    let councils = pool_size.saturating_sub(reserved).max(1);
    let per_council = if per_council == 0 { (councils / 2).max(1) } else { per_council.min(councils) };
    (councils, per_council)
}

impl CouncilGate {
    /// A gate letting councils hold `total` connections in all, `per_council`
    /// each, waiting at most `wait` for a place.
    pub fn new(total: usize, per_council: usize, wait: Duration) -> Self {
        Self {
            total: Arc::new(Semaphore::new(total.max(1))),
            per_council: per_council.max(1),
            councils: Mutex::default(),
            wait,
        }
    }

    /// Waits for a place for `council` (its own share first, then the shared
    /// council capacity).
    pub async fn enter(&self, council: &str) -> Result<CouncilPermit, ApiError> {
        let own = {
            let mut map = self.councils.lock().map_err(|_| ApiError::internal("council gate poisoned"))?;
            // Bounded by the councils holding certificates (about 150).
            map.entry(council.to_string()).or_insert_with(|| Arc::new(Semaphore::new(self.per_council))).clone()
        };
        let deadline = tokio::time::Instant::now() + self.wait;
        let council_permit = tokio::time::timeout_at(deadline, own.acquire_owned())
            .await
            .map_err(|_| {
                ApiError::ResourceExhausted(format!(
                    "this council already has {} database operations running on this replica \
                     (CPIS_DB_CONNECTIONS_PER_COUNCIL); retry with backoff",
                    self.per_council
                ))
            })?
            .map_err(|_| ApiError::internal("council gate closed"))?;
        let total_permit = tokio::time::timeout_at(deadline, self.total.clone().acquire_owned())
            .await
            .map_err(|_| ApiError::Unavailable("the registry is busy with council work; retry with backoff".into()))?
            .map_err(|_| ApiError::internal("council gate closed"))?;
        Ok(CouncilPermit { _council: council_permit, _total: total_permit })
    }
}

/// A pooled connection used for one council's work, with its place.
pub struct CouncilConn {
    client: deadpool_postgres::Client,
    _permit: CouncilPermit,
}

impl CouncilConn {
    /// Pairs a connection with the place it was taken under.
    pub fn new(client: deadpool_postgres::Client, permit: CouncilPermit) -> Self {
        Self { client, _permit: permit }
    }
}

impl std::ops::Deref for CouncilConn {
    type Target = deadpool_postgres::Client;

    fn deref(&self) -> &Self::Target {
        &self.client
    }
}

impl std::ops::DerefMut for CouncilConn {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.client
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookups_keep_a_reserve_and_no_council_takes_all_the_rest() {
        assert_eq!(split(10, 0, 0), (8, 4));
        assert_eq!(split(16, 0, 0), (12, 6));
        assert_eq!(split(4, 0, 0), (2, 1));
        assert_eq!(split(1, 0, 0), (1, 1));
        assert_eq!(split(10, 3, 2), (7, 2));
        assert_eq!(split(10, 3, 20), (7, 7));
    }

    #[tokio::test]
    async fn a_council_over_its_share_waits_and_then_is_refused_while_others_pass() {
        let gate = CouncilGate::new(3, 2, Duration::from_millis(50));
        let a1 = gate.enter("E08000003").await.unwrap();
        let _a2 = gate.enter("E08000003").await.unwrap();
        let err = gate.enter("E08000003").await.unwrap_err();
        assert!(matches!(err, ApiError::ResourceExhausted(_)), "{err:?}");
        let _b = gate.enter("E08000012").await.unwrap();
        // The shared capacity (3) is now full: a third council waits, then UNAVAILABLE.
        let err = gate.enter("E10000016").await.unwrap_err();
        assert!(matches!(err, ApiError::Unavailable(_)), "{err:?}");
        drop(a1);
        gate.enter("E10000016").await.unwrap();
    }
}
