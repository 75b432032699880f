//! The alert log in PostgreSQL: the schema, and every query the service runs.
//!
//! The table is the truth. Each council has a counter row; publishing bumps
//! it (which locks the row) and inserts the alert in one transaction, so
//! sequences are gapless (a rollback undoes the bump, unlike a `SEQUENCE`)
//! and an alert is visible before the next sequence is even handed out.

use crate::alert::NewAlert;
use cpis_core::db::{DbPool, Migration};
use cpis_core::time::to_timestamp;
use cpis_core::ApiError;
use cpis_proto::common::v1::Episode;
use cpis_proto::notification::v1 as pb;
use tokio_postgres::Row;
use uuid::Uuid;

/// The `LISTEN/NOTIFY` channel; the payload is a council code, nothing more.
pub const CHANNEL: &str = "cpis_notification_alert";

/// Schema migrations of the `notification` schema, applied in order at start-up.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "alert log, counters and acknowledgements",
        sql: "
        -- One row per council: the last sequence handed out. Updating it takes
        -- the row lock that serialises publishers of one council.
        CREATE TABLE notification.council_sequences (
            council_code  text PRIMARY KEY,
            last_sequence bigint NOT NULL CHECK (last_sequence >= 1)
        );

        -- The alert log. Streams read it by (council_code, sequence).
        CREATE TABLE notification.alerts (
            council_code    text NOT NULL,
            sequence        bigint NOT NULL CHECK (sequence >= 1),
            alert_id        uuid NOT NULL UNIQUE,
            episode_id      text NOT NULL,
            nhs_number      text NOT NULL,
            plan_type       integer NOT NULL,
            local_reference text NOT NULL,
            setting_code    text NOT NULL,
            setting_type    integer NOT NULL,
            arrived_at      timestamptz NOT NULL,
            priority        integer NOT NULL,
            created_at      timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (council_code, sequence),
            -- PublishAlert is idempotent by council and episode.
            CONSTRAINT alerts_council_episode_key UNIQUE (council_code, episode_id)
        );

        -- One row per council: everything up to here has been received.
        CREATE TABLE notification.acks (
            council_code         text PRIMARY KEY,
            acknowledged_through bigint NOT NULL CHECK (acknowledged_through >= 0),
            updated_at           timestamptz NOT NULL DEFAULT now()
        );
    ",
    },
    Migration {
        version: 2,
        name: "trace context of each alert",
        // The W3C traceparent of the PublishAlert call, so the stream send to
        // the council joins the check-in's trace. Ids only: no personal data.
        sql: "ALTER TABLE notification.alerts ADD COLUMN traceparent text;",
    },
    Migration {
        version: 3,
        name: "record of purges",
        // `cpis purge`: what kind, how many, when (see crate::retention).
        sql: "CREATE TABLE notification.purges (
            purge_id       bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            kind           text NOT NULL,
            count          bigint NOT NULL,
            retention_days integer NOT NULL,
            purged_at      timestamptz NOT NULL DEFAULT now()
        );",
    },
];

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
        plan_type, local_reference, setting_code, setting_type, arrived_at, priority, created_at, traceparent
    FROM notification.alerts";

impl Store {
    /// A store over `pool`.
    pub fn new(pool: DbPool) -> Self {
        Self { pool }
    }

    /// Stores `alert` with the council's next sequence and wakes its streams
    /// (on every replica) when the transaction commits. A repeat of the same
    /// council and episode returns the original alert and wakes nobody.
    pub async fn publish(&self, alert: &NewAlert) -> Result<Published, ApiError> {
        let mut client = self.pool.get().await?;
        // Fast path for retries: no counter lock taken.
        if let Some(existing) = find_by_episode(&client, alert).await? {
            return Ok(existing);
        }
        let tx = client.transaction().await?;
        // Locks the council's counter row until commit: publishers of one
        // council queue here, publishers of other councils do not.
        let sequence: i64 = tx
            .query_one(
                &tx.prepare_cached(
                    "INSERT INTO notification.council_sequences (council_code, last_sequence)
                 VALUES ($1, 1)
                 ON CONFLICT (council_code)
                 DO UPDATE SET last_sequence = notification.council_sequences.last_sequence + 1
                 RETURNING last_sequence",
                )
                .await?,
                &[&alert.council_code],
            )
            .await?
            .get(0);
        let alert_id = Uuid::now_v7();
        let inserted = tx
            .query_opt(
                &tx.prepare_cached(
                    "INSERT INTO notification.alerts (council_code, sequence, alert_id, episode_id,
                     nhs_number, plan_type, local_reference, setting_code, setting_type,
                     arrived_at, priority, traceparent)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
                 ON CONFLICT ON CONSTRAINT alerts_council_episode_key DO NOTHING
                 RETURNING alert_id",
                )
                .await?,
                &[
                    &alert.council_code,
                    &sequence,
                    &alert_id,
                    &alert.episode_id,
                    &alert.nhs_number.as_str(),
                    &alert.plan_type,
                    &alert.local_reference,
                    &alert.setting_code,
                    &alert.setting_type,
                    &alert.arrived_at,
                    &alert.priority,
                    &cpis_core::telemetry::current_traceparent(),
                ],
            )
            .await;
        match inserted {
            Ok(Some(_)) => {
                // Delivered to listeners only when (and if) the commit succeeds.
                tx.execute(&tx.prepare_cached("SELECT pg_notify($1, $2)").await?, &[&CHANNEL, &alert.council_code])
                    .await?;
                tx.commit().await?;
                Ok(Published { alert_id, sequence, created: true })
            }
            // A concurrent repeat of this episode committed first (we waited
            // for it on the counter lock). Roll back, so the sequence we took
            // is handed out again and no gap appears, and answer with its row.
            Ok(None) => {
                tx.rollback().await?;
                self.reread(&client, alert).await
            }
            Err(e) if cpis_core::db::is_unique_violation(&e) => {
                tracing::warn!(cause = %cpis_core::db::describe(&e), "publish raced; re-reading");
                tx.rollback().await?;
                self.reread(&client, alert).await
            }
            Err(e) => Err(e.into()),
        }
    }

    /// The stored alert of a repeat that lost the race to insert.
    async fn reread(&self, client: &deadpool_postgres::Client, alert: &NewAlert) -> Result<Published, ApiError> {
        find_by_episode(client, alert)
            .await?
            .ok_or_else(|| ApiError::internal("alert vanished after a unique-key conflict"))
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
        let client = self.pool.get().await?;
        let rows = client
            .query(
                &format!(
                    "{SELECT_ALERT} WHERE council_code = $1 AND sequence > $2
                     ORDER BY sequence LIMIT $3"
                ),
                &[&council, &after, &limit],
            )
            .await?;
        Ok(rows.iter().map(|r| (alert_from_row(r), r.get("traceparent"))).collect())
    }

    /// The council's latest sequence (0 before its first alert).
    pub async fn latest_sequence(&self, council: &str) -> Result<i64, ApiError> {
        let client = self.pool.get().await?;
        Ok(client
            .query_opt("SELECT last_sequence FROM notification.council_sequences WHERE council_code = $1", &[&council])
            .await?
            .map_or(0, |r| r.get(0)))
    }

    /// The highest sequence the council has acknowledged (0 when none).
    pub async fn acknowledged(&self, council: &str) -> Result<i64, ApiError> {
        let client = self.pool.get().await?;
        Ok(client
            .query_opt("SELECT acknowledged_through FROM notification.acks WHERE council_code = $1", &[&council])
            .await?
            .map_or(0, |r| r.get(0)))
    }

    /// Records that the council holds everything up to `up_to`; a lower value
    /// than the current one changes nothing. Returns the acknowledgement now
    /// stored.
    pub async fn acknowledge(&self, council: &str, up_to: i64) -> Result<i64, AckError> {
        let client = self.pool.get().await.map_err(ApiError::from)?;
        // One statement: the bound check and the monotonic upsert together.
        let row = client
            .query_opt(
                "WITH latest AS (
                     SELECT COALESCE((SELECT last_sequence FROM notification.council_sequences
                                      WHERE council_code = $1), 0) AS seq
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

/// The wire form of one row of `notification.alerts`.
fn alert_from_row(r: &Row) -> pb::Alert {
    pb::Alert {
        alert_id: r.get::<_, Uuid>("alert_id").to_string(),
        sequence: r.get("sequence"),
        council_code: r.get("council_code"),
        nhs_number: r.get("nhs_number"),
        plan_type: r.get("plan_type"),
        local_reference: r.get("local_reference"),
        episode: Some(Episode {
            episode_id: r.get("episode_id"),
            setting_code: r.get("setting_code"),
            setting_type: r.get("setting_type"),
            arrived_at: Some(to_timestamp(r.get("arrived_at"))),
        }),
        priority: r.get("priority"),
        created_at: Some(to_timestamp(r.get("created_at"))),
    }
}

/// The alert already stored for this council and episode, if any (a
/// statement prepared once per connection: it runs on every publish).
async fn find_by_episode(client: &deadpool_postgres::Client, alert: &NewAlert) -> Result<Option<Published>, ApiError> {
    let stmt = client
        .prepare_cached(
            "SELECT alert_id, sequence FROM notification.alerts WHERE council_code = $1 AND episode_id = $2",
        )
        .await?;
    Ok(client.query_opt(&stmt, &[&alert.council_code, &alert.episode_id]).await?.map(|r| Published {
        alert_id: r.get(0),
        sequence: r.get(1),
        created: false,
    }))
}
