//! The alert log in PostgreSQL: the schema, and every query the service runs.
//!
//! The table is the truth. Each council has a counter row; publishing bumps
//! it (which locks the row) and inserts the alert in one transaction, so
//! sequences are gapless (a rollback undoes the bump, unlike a `SEQUENCE`)
//! and an alert is visible before the next sequence is even handed out.
//! That transaction is a single statement (a function run by the server), so
//! the lock is never held while waiting on the network.

use crate::alert::NewAlert;
use cpis_domain::time::to_timestamp;
use cpis_proto::common::v1::Episode;
use cpis_proto::notification::v1 as pb;
use cpis_runtime::db::{DbPool, Migration};
use cpis_runtime::ApiError;
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
    Migration { version: 4, name: "publish in one statement", sql: PUBLISH_FUNCTION },
];

/// `notification.publish_alert`: the whole of `PublishAlert` in one
/// statement. The repeat check, the counter bump (the council's row lock) and
/// the insert run inside the server, so the lock lasts as long as the
/// statement and never across a round trip to a client that may vanish. A
/// concurrent repeat of the same episode that commits while this one waits
/// for the counter makes the insert fail; the block then undoes its bump (no
/// gap) and answers with the stored alert.
pub const PUBLISH_FUNCTION: &str = r#"
CREATE FUNCTION notification.publish_alert(
    p_council text, p_alert_id uuid, p_episode text, p_nhs_number text, p_plan_type integer,
    p_local_reference text, p_setting_code text, p_setting_type integer, p_arrived_at timestamptz,
    p_priority integer, p_traceparent text)
RETURNS TABLE (o_alert_id uuid, o_sequence bigint, o_created boolean)
LANGUAGE plpgsql AS $fn$
DECLARE
    v_sequence bigint;
BEGIN
    RETURN QUERY SELECT a.alert_id, a.sequence, false FROM notification.alerts a
        WHERE a.council_code = p_council AND a.episode_id = p_episode;
    IF FOUND THEN
        RETURN;
    END IF;
    BEGIN
        INSERT INTO notification.council_sequences AS c (council_code, last_sequence)
        VALUES (p_council, 1)
        ON CONFLICT (council_code) DO UPDATE SET last_sequence = c.last_sequence + 1
        RETURNING c.last_sequence INTO v_sequence;
        INSERT INTO notification.alerts (council_code, sequence, alert_id, episode_id, nhs_number,
            plan_type, local_reference, setting_code, setting_type, arrived_at, priority, traceparent)
        VALUES (p_council, v_sequence, p_alert_id, p_episode, p_nhs_number, p_plan_type,
            p_local_reference, p_setting_code, p_setting_type, p_arrived_at, p_priority, p_traceparent);
    EXCEPTION WHEN unique_violation THEN
        RETURN QUERY SELECT a.alert_id, a.sequence, false FROM notification.alerts a
            WHERE a.council_code = p_council AND a.episode_id = p_episode;
        RETURN;
    END;
    PERFORM pg_notify('cpis_notification_alert', p_council);
    RETURN QUERY SELECT p_alert_id, v_sequence, true;
END
$fn$;
"#;

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
    /// (on every replica) when it commits. A repeat of the same council and
    /// episode returns the original alert and wakes nobody.
    ///
    /// One statement, one round trip ([`PUBLISH_FUNCTION`]): the council's
    /// counter row is locked only while the server runs it, never while a
    /// packet is in flight, so a publisher that loses its connection (even
    /// silently) cannot leave the counter locked and stall the council.
    pub async fn publish(&self, alert: &NewAlert) -> Result<Published, ApiError> {
        let client = self.pool.get().await?;
        let stmt = client
            .prepare_cached(
                "SELECT o_alert_id, o_sequence, o_created
                 FROM notification.publish_alert($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
            )
            .await?;
        let row = client
            .query_one(
                &stmt,
                &[
                    &alert.council_code,
                    &Uuid::now_v7(),
                    &alert.episode_id,
                    &alert.nhs_number.as_str(),
                    &alert.plan_type,
                    &alert.local_reference,
                    &alert.setting_code,
                    &alert.setting_type,
                    &alert.arrived_at,
                    &alert.priority,
                    &cpis_runtime::telemetry::current_traceparent(),
                ],
            )
            .await?;
        Ok(Published { alert_id: row.get(0), sequence: row.get(1), created: row.get(2) })
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
