//! What a stream reads: its council's alerts from the table ([`Store`]),
//! behind a trait so that the stream's rules run in unit tests over a list.

use crate::store::Store;
use chrono::{DateTime, Utc};
use cpis_proto::notification::v1 as pb;
use cpis_runtime::ApiError;
use std::fmt;

/// One alert as a stream reads it, with the trace context it was stored with.
pub type Traced = (pb::Alert, Option<String>);

/// A council's alert log, as streams read it.
#[tonic::async_trait]
pub trait AlertLog: Send + Sync + fmt::Debug {
    /// Up to `limit` alerts of `council` from sequence `from` on, in order
    /// (`from` itself included: a stream checks the alert at its cursor is
    /// still the one it delivered).
    async fn read_from(&self, council: &str, from: i64, limit: i64) -> Result<Vec<Traced>, ApiError>;

    /// The highest sequence of `council` at or below `at_most` whose alert
    /// was stored no later than `stored_by` (0 when none).
    async fn last_stored_by(&self, council: &str, at_most: i64, stored_by: DateTime<Utc>) -> Result<i64, ApiError>;
}

#[tonic::async_trait]
impl AlertLog for Store {
    async fn read_from(&self, council: &str, from: i64, limit: i64) -> Result<Vec<Traced>, ApiError> {
        self.traced_alerts_from(council, from, limit).await
    }

    async fn last_stored_by(&self, council: &str, at_most: i64, stored_by: DateTime<Utc>) -> Result<i64, ApiError> {
        Store::last_stored_by(self, council, at_most, stored_by).await
    }
}
