//! The alert log in PostgreSQL: the schema, and every query the service runs.
//!
//! The table is the truth. Each council has a counter row; publishing bumps
//! it (which locks the row) and inserts the alert in one transaction, so
//! sequences are gapless (a rollback undoes the bump, unlike a `SEQUENCE`)
//! and an alert is visible before the next sequence is even handed out.
//! That transaction is a single statement (a function run by the server), so
//! the lock is never held while waiting on the network.

use crate::alert::NewAlert;
use chrono::{DateTime, Utc};
use cpis_domain::time::to_timestamp;
use cpis_proto::common::v1::Episode;
use cpis_proto::notification::v1 as pb;
use cpis_runtime::db::DbPool;
use cpis_runtime::ApiError;
use prost::Message as _;
use tokio_postgres::Row;
use uuid::Uuid;

/// The `LISTEN/NOTIFY` channel; the payload is `council:sequence` (the
/// council code and the sequence just committed), nothing more. A bare
/// council code (from a publisher before migration 5) is also understood.
pub const CHANNEL: &str = "cpis_notification_alert";

/// The identity of a stored alert, as `PublishAlert` answers it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Published {
    /// The alert's id.
    pub alert_id: Uuid,
    /// The alert's per-council sequence.
    pub sequence: i64,
    /// False when the alert was already stored (a repeat).
    pub created: bool,
}

/// Why an acknowledgement was refused.
#[derive(Debug, thiserror::Error)]
pub enum AckError {
    /// The council has no alert with that sequence yet.
    #[error("is beyond the latest sequence ({latest})")]
    BeyondLatest {
        /// The council's latest sequence.
        latest: i64,
    },
    /// The database failed.
    #[error(transparent)]
    Api(#[from] ApiError),
}

/// Queries on the alert log.
#[derive(Debug, Clone)]
pub struct Store {
    pool: DbPool,
}

const SELECT_ALERT: &str = "SELECT council_code, sequence, alert_id, episode_id, nhs_number,
        plan_type, local_reference, setting_code, setting_type, arrived_at, priority, created_at, traceparent, viewer,
        kind, detail
    FROM notification.alerts";

impl Store {
    /// A store over `pool`.
    pub fn new(pool: DbPool) -> Self {
        Self { pool }
    }

    /// The pool, for the reports' read-only queries (`crate::report`).
    pub(crate) fn pool(&self) -> &DbPool {
        &self.pool
    }

    /// Stores `alert` with the council's next sequence and wakes its streams
    /// (on every replica) when it commits. A repeat of the same council and
    /// episode returns the original alert and wakes nobody.
    ///
    /// One statement, one round trip (`notification.publish_alert`, `migrations/V4__publish_function.sql`): the council's
    /// counter row is locked only while the server runs it, never while a
    /// packet is in flight, so a publisher that loses its connection (even
    /// silently) cannot leave the counter locked and stall the council.
    pub async fn publish(&self, alert: &NewAlert) -> Result<Published, ApiError> {
        let client = self.pool.get().await?;
        let stmt = client
            .prepare_cached(
                "SELECT o_alert_id, o_sequence, o_created
                 FROM notification.publish_alert($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)",
            )
            .await?;
        let row = client
            .query_one(
                &stmt,
                &[
                    &alert.council_code,
                    &Uuid::now_v7(),
                    &alert.key,
                    &alert.nhs_number.as_str(),
                    &alert.plan_type,
                    &alert.local_reference,
                    &alert.setting_code,
                    &alert.setting_type,
                    &alert.arrived_at,
                    &alert.priority,
                    &cpis_runtime::telemetry::current_traceparent(),
                    &alert.viewer,
                    &alert.kind,
                    &alert.detail,
                ],
            )
            .await?;
        Ok(Published { alert_id: row.get(0), sequence: row.get(1), created: row.get(2) })
    }

    /// Stores every alert of `alerts` in one transaction (all or nothing),
    /// each as [`Store::publish`] would, and wakes the streams of the
    /// councils that got a new alert when it commits. Answers in the order
    /// of `alerts`. One statement, one round trip (`notification.publish_alerts`, migration V6).
    pub async fn publish_batch(&self, alerts: &[NewAlert]) -> Result<Vec<Published>, ApiError> {
        if alerts.is_empty() {
            return Ok(Vec::new());
        }
        let column = |f: fn(&NewAlert) -> &str| alerts.iter().map(f).collect::<Vec<&str>>();
        let ints = |f: fn(&NewAlert) -> i32| alerts.iter().map(f).collect::<Vec<i32>>();
        let councils = column(|a| &a.council_code);
        let alert_ids: Vec<Uuid> = alerts.iter().map(|_| Uuid::now_v7()).collect();
        let keys = column(|a| &a.key);
        let nhs_numbers = column(|a| a.nhs_number.as_str());
        let plan_types = ints(|a| a.plan_type);
        let local_references = column(|a| &a.local_reference);
        let setting_codes: Vec<Option<&str>> = alerts.iter().map(|a| a.setting_code.as_deref()).collect();
        let setting_types: Vec<Option<i32>> = alerts.iter().map(|a| a.setting_type).collect();
        let arrived_at: Vec<Option<DateTime<Utc>>> = alerts.iter().map(|a| a.arrived_at).collect();
        let priorities = ints(|a| a.priority);
        let viewers: Vec<Option<&[u8]>> = alerts.iter().map(|a| a.viewer.as_deref()).collect();
        let kinds = ints(|a| a.kind);
        let details: Vec<Option<&[u8]>> = alerts.iter().map(|a| a.detail.as_deref()).collect();
        let client = self.pool.get().await?;
        let stmt = client
            .prepare_cached(
                "SELECT o_index, o_alert_id, o_sequence, o_created
                 FROM notification.publish_alerts($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)",
            )
            .await?;
        let rows = client
            .query(
                &stmt,
                &[
                    &councils,
                    &alert_ids,
                    &keys,
                    &nhs_numbers,
                    &plan_types,
                    &local_references,
                    &setting_codes,
                    &setting_types,
                    &arrived_at,
                    &priorities,
                    &cpis_runtime::telemetry::current_traceparent(),
                    &viewers,
                    &kinds,
                    &details,
                ],
            )
            .await?;
        let mut out: Vec<Option<Published>> = vec![None; alerts.len()];
        for r in &rows {
            let index: i32 = r.get(0);
            let slot = usize::try_from(index - 1).ok().and_then(|i| out.get_mut(i));
            let Some(slot) = slot else {
                return Err(ApiError::internal("publish_alerts returned an index out of range"));
            };
            *slot = Some(Published { alert_id: r.get(1), sequence: r.get(2), created: r.get(3) });
        }
        out.into_iter()
            .map(|p| p.ok_or_else(|| ApiError::internal("publish_alerts left an alert unanswered")))
            .collect()
    }

    /// Up to `limit` alerts of `council` with a sequence above `after`, in order.
    pub async fn alerts_after(&self, council: &str, after: i64, limit: i64) -> Result<Vec<pb::Alert>, ApiError> {
        Ok(self.traced_alerts_after(council, after, limit).await?.into_iter().map(|(a, _)| a).collect())
    }

    /// Like [`Store::alerts_after`], with each alert's stored trace context.
    pub async fn traced_alerts_after(
        &self,
        council: &str,
        after: i64,
        limit: i64,
    ) -> Result<Vec<(pb::Alert, Option<String>)>, ApiError> {
        self.traced_alerts_from(council, after + 1, limit).await
    }

    /// Up to `limit` alerts of `council` from sequence `from` on, in order,
    /// each with its stored trace context.
    pub async fn traced_alerts_from(
        &self,
        council: &str,
        from: i64,
        limit: i64,
    ) -> Result<Vec<(pb::Alert, Option<String>)>, ApiError> {
        let client = self.pool.get().await?;
        let rows = client
            .query(
                &format!(
                    "{SELECT_ALERT} WHERE council_code = $1 AND sequence >= $2
                     ORDER BY sequence LIMIT $3"
                ),
                &[&council, &from, &limit],
            )
            .await?;
        Ok(rows.iter().map(|r| (alert_from_row(r), r.get("traceparent"))).collect())
    }

    /// The highest sequence of `council` at or below `at_most` whose alert
    /// was stored no later than `stored_by` (0 when none): after a restore,
    /// the last alert the log still holds of those a stream delivered.
    pub async fn last_stored_by(&self, council: &str, at_most: i64, stored_by: DateTime<Utc>) -> Result<i64, ApiError> {
        let client = self.pool.get().await?;
        let row = client
            .query_one(
                "SELECT coalesce(max(sequence), 0) FROM notification.alerts
                 WHERE council_code = $1 AND sequence <= $2 AND created_at <= $3",
                &[&council, &at_most, &stored_by],
            )
            .await?;
        Ok(row.get(0))
    }

    /// The council's latest sequence (0 before its first alert).
    pub async fn latest_sequence(&self, council: &str) -> Result<i64, ApiError> {
        let client = self.pool.get().await?;
        Ok(client
            .query_opt("SELECT last_sequence FROM notification.council_sequences WHERE council_code = $1", &[&council])
            .await?
            .map_or(0, |r| r.get(0)))
    }

    /// The latest sequence of each of `councils` that has one (of every
    /// council when `None`), in one query.
    pub async fn latest_sequences(&self, councils: Option<&[String]>) -> Result<Vec<(String, i64)>, ApiError> {
        let client = self.pool.get().await?;
        let rows = match councils {
            None => client.query("SELECT council_code, last_sequence FROM notification.council_sequences", &[]).await?,
            Some(councils) => {
                client
                    .query(
                        "SELECT council_code, last_sequence FROM notification.council_sequences
                         WHERE council_code = ANY($1)",
                        &[&councils],
                    )
                    .await?
            }
        };
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    /// The highest sequence the council has acknowledged (0 when none).
    pub async fn acknowledged(&self, council: &str) -> Result<i64, ApiError> {
        let client = self.pool.get().await?;
        Ok(client
            .query_opt("SELECT acknowledged_through FROM notification.acks WHERE council_code = $1", &[&council])
            .await?
            .map_or(0, |r| r.get(0)))
    }

    /// What each council that ever had an alert has not yet acknowledged
    /// (one row per council: at most the ~153 councils of England).
    pub async fn council_backlogs(&self) -> Result<Vec<CouncilBacklog>, ApiError> {
        let client = self.pool.get().await?;
        let rows = client
            .query(
                "SELECT s.council_code,
                        s.last_sequence - COALESCE(a.acknowledged_through, 0),
                        COALESCE(extract(epoch FROM now() - al.created_at)::float8, 0)
                 FROM notification.council_sequences s
                 LEFT JOIN notification.acks a USING (council_code)
                 LEFT JOIN notification.alerts al
                        ON al.council_code = s.council_code
                       AND al.sequence = COALESCE(a.acknowledged_through, 0) + 1",
                &[],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| CouncilBacklog {
                council: r.get(0),
                unacked: r.get(1),
                oldest_unacked_age: r.get::<_, f64>(2).max(0.0),
            })
            .collect())
    }

    /// Records that the council holds everything up to `up_to` (and when, if
    /// it moved the acknowledgement forward); a lower value than the current
    /// one changes nothing. Returns the acknowledgement now
    /// stored.
    pub async fn acknowledge(&self, council: &str, up_to: i64) -> Result<i64, AckError> {
        let client = self.pool.get().await.map_err(ApiError::from)?;
        // One statement: the bound check and the monotonic upsert together.
        let row = client
            .query_opt(
                "WITH latest AS (
                     SELECT COALESCE((SELECT last_sequence FROM notification.council_sequences
                                      WHERE council_code = $1), 0) AS seq
                 ), before AS (
                     SELECT COALESCE((SELECT acknowledged_through FROM notification.acks
                                      WHERE council_code = $1), 0) AS through
                 ), history AS (
                     INSERT INTO notification.ack_history (council_code, up_to_sequence)
                     SELECT $1, $2 FROM latest, before WHERE $2 <= latest.seq AND $2 > before.through
                     ON CONFLICT DO NOTHING
                 ), upserted AS (
                     INSERT INTO notification.acks (council_code, acknowledged_through)
                     SELECT $1, $2 FROM latest WHERE $2 <= latest.seq
                     ON CONFLICT (council_code) DO UPDATE SET
                         acknowledged_through = GREATEST(notification.acks.acknowledged_through,
                                                         EXCLUDED.acknowledged_through),
                         updated_at = now()
                     RETURNING acknowledged_through
                 )
                 SELECT (SELECT acknowledged_through FROM upserted), (SELECT seq FROM latest)",
                &[&council, &up_to],
            )
            .await
            .map_err(ApiError::from)?
            .ok_or_else(|| ApiError::internal("acknowledgement query returned no row"))?;
        let stored: Option<i64> = row.get(0);
        let latest: i64 = row.get(1);
        stored.ok_or(AckError::BeyondLatest { latest })
    }
}

/// One council's unacknowledged alerts.
#[derive(Debug, Clone, PartialEq)]
pub struct CouncilBacklog {
    /// The council's GSS code.
    pub council: String,
    /// Alerts stored after its acknowledgement.
    pub unacked: i64,
    /// Seconds since the oldest of them was stored (0 when none).
    pub oldest_unacked_age: f64,
}

/// The wire form of one row of `notification.alerts`: its kind's own
/// message decoded (written by this service from a validated request).
fn alert_from_row(r: &Row) -> pb::Alert {
    let kind = crate::alert::kinds::stored_kind(r.get("kind"), r.get("priority"));
    let detail: Option<Vec<u8>> = r.get("detail");
    let key: String = r.get("episode_id");
    let mut alert = pb::Alert {
        alert_id: r.get::<_, Uuid>("alert_id").to_string(),
        sequence: r.get("sequence"),
        council_code: r.get("council_code"),
        nhs_number: r.get("nhs_number"),
        plan_type: r.get("plan_type"),
        local_reference: r.get("local_reference"),
        priority: r.get("priority"),
        created_at: Some(to_timestamp(r.get("created_at"))),
        viewer: r
            .get::<_, Option<Vec<u8>>>("viewer")
            .and_then(|b| cpis_proto::common::v1::Viewer::decode(b.as_slice()).ok()),
        kind,
        ..Default::default()
    };
    match pb::AlertKind::try_from(kind) {
        Ok(pb::AlertKind::WasNotBrought) => {
            alert.was_not_brought = detail.and_then(|b| pb::MissedAppointment::decode(b.as_slice()).ok());
        }
        Ok(pb::AlertKind::NhsNumberSuperseded | pb::AlertKind::NhsNumberInactive) => {
            alert.nhs_number_change = detail.and_then(|b| pb::NhsNumberNotice::decode(b.as_slice()).ok());
        }
        _ => {
            let arrived_at: Option<DateTime<Utc>> = r.get("arrived_at");
            alert.episode = Some(Episode {
                episode_id: key,
                setting_code: r.get::<_, Option<String>>("setting_code").unwrap_or_default(),
                setting_type: r.get::<_, Option<i32>>("setting_type").unwrap_or_default(),
                arrived_at: arrived_at.map(to_timestamp),
            });
        }
    }
    alert
}
