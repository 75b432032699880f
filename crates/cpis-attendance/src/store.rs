//! The `attendance` schema and every SQL statement of the service: episodes,
//! the access audit, check-in requests kept for idempotency, and the outbox
//! of alerts waiting to be published.
//!
//! Only flagged people are ever written here: an unflagged check-in never
//! reaches this module.

use crate::page::Cursor;
use chrono::{DateTime, Utc};
use cpis_domain::time::to_timestamp;
use cpis_proto::attendance::v1 as pb;
use cpis_proto::common::v1::{Episode, Flag};
use cpis_runtime::db::Migration;
use cpis_runtime::ApiError;
use prost::Message;
use std::time::Duration;
use tokio_postgres::Row;
use uuid::Uuid;

/// The schema, created once at start-up. Every name is qualified with
/// `attendance.` because services never rely on `search_path`.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "episodes, accesses, check-in requests, outbox",
        sql: r#"
CREATE TABLE attendance.episodes (
    episode_id   uuid PRIMARY KEY,
    nhs_number   text NOT NULL,
    setting_code text NOT NULL,
    setting_type integer NOT NULL,
    arrived_at   timestamptz NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now()
);
-- A person's history, most recent first (CheckIn, ListEpisodes, repeat count).
CREATE INDEX episodes_by_person
    ON attendance.episodes (nhs_number, arrived_at DESC, episode_id DESC);

-- Every time a flag was shown: who, where, when, and which councils held a
-- flag at that moment (they may list it later, even after the plan ends).
CREATE TABLE attendance.accesses (
    access_id     uuid PRIMARY KEY,
    episode_id    uuid NOT NULL REFERENCES attendance.episodes (episode_id),
    nhs_number    text NOT NULL,
    setting_code  text NOT NULL,
    setting_type  integer NOT NULL,
    user_id       text NOT NULL,
    accessed_at   timestamptz NOT NULL DEFAULT now(),
    council_codes text[] NOT NULL
);
CREATE INDEX accesses_by_council ON attendance.accesses USING gin (council_codes);
CREATE INDEX accesses_by_time ON attendance.accesses (accessed_at DESC, access_id DESC);
CREATE INDEX accesses_by_person
    ON attendance.accesses (nhs_number, accessed_at DESC, access_id DESC);

-- The first answer to each (setting, request_id), replayed on retries.
-- fingerprint is a SHA-256 of the request body without its request_id.
CREATE TABLE attendance.check_in_requests (
    setting_code text NOT NULL,
    request_id   text NOT NULL,
    fingerprint  bytea NOT NULL,
    response     bytea NOT NULL,
    episode_id   uuid NOT NULL REFERENCES attendance.episodes (episode_id),
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (setting_code, request_id)
);

-- Alerts waiting for the Notification service: one row per council per episode.
-- last_error holds a status code only, never personal data.
CREATE TABLE attendance.outbox (
    outbox_id       bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    council_code    text NOT NULL,
    nhs_number      text NOT NULL,
    plan_type       integer NOT NULL,
    local_reference text NOT NULL,
    episode_id      uuid NOT NULL REFERENCES attendance.episodes (episode_id),
    setting_code    text NOT NULL,
    setting_type    integer NOT NULL,
    arrived_at      timestamptz NOT NULL,
    priority        integer NOT NULL,
    attempts        integer NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    last_error      text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    delivered_at    timestamptz,
    UNIQUE (episode_id, council_code)
);
CREATE INDEX outbox_due ON attendance.outbox (next_attempt_at, outbox_id)
    WHERE delivered_at IS NULL;
"#,
    },
    Migration {
        version: 2,
        name: "trace context of outbox rows",
        // The W3C traceparent of the check-in, so the relay's publish joins the
        // check-in's trace. Ids only: no personal data.
        sql: "ALTER TABLE attendance.outbox ADD COLUMN traceparent text;",
    },
    Migration {
        version: 3,
        name: "silent reads in the access audit",
        // A silent read (scheduled care) is audited without an episode.
        sql: "ALTER TABLE attendance.accesses ALTER COLUMN episode_id DROP NOT NULL,
                  ADD COLUMN silent boolean NOT NULL DEFAULT false;",
    },
    Migration {
        version: 4,
        name: "record of purges",
        // `cpis purge`: what kind, how many, when (see crate::retention).
        sql: "CREATE TABLE attendance.purges (
            purge_id       bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            kind           text NOT NULL,
            count          bigint NOT NULL,
            retention_days integer NOT NULL,
            purged_at      timestamptz NOT NULL DEFAULT now()
        );",
    },
    Migration {
        version: 5,
        name: "episode reads in the access audit",
        // A setting's ListEpisodes is audited as an access without an episode.
        sql: "ALTER TABLE attendance.accesses ADD COLUMN episodes_read boolean NOT NULL DEFAULT false;",
    },
    Migration { version: 6, name: "per-council outbox order and relay leases", sql: OUTBOX_ORDER },
];

/// Each council's outbox rows get a `position` in the order their check-ins
/// commit: a trigger bumps the council's counter row, whose lock is held
/// until the check-in commits, so a later position is never visible before an
/// earlier one. The relay publishes each council's rows by position, one
/// replica at a time per council (a lease in `relay_councils`, which also
/// holds the council's retry schedule: head of line first, never row by row).
const OUTBOX_ORDER: &str = r#"
CREATE TABLE attendance.outbox_positions (
    council_code  text PRIMARY KEY,
    last_position bigint NOT NULL
);
ALTER TABLE attendance.outbox ADD COLUMN position bigint;
UPDATE attendance.outbox o SET position = r.n
FROM (SELECT outbox_id, row_number() OVER (PARTITION BY council_code ORDER BY outbox_id) AS n
      FROM attendance.outbox) r
WHERE r.outbox_id = o.outbox_id;
INSERT INTO attendance.outbox_positions (council_code, last_position)
SELECT council_code, max(position) FROM attendance.outbox GROUP BY council_code;
ALTER TABLE attendance.outbox ALTER COLUMN position SET NOT NULL;
CREATE UNIQUE INDEX outbox_by_council_position ON attendance.outbox (council_code, position);
CREATE INDEX outbox_pending_by_council ON attendance.outbox (council_code, position)
    WHERE delivered_at IS NULL;
DROP INDEX attendance.outbox_due;

CREATE FUNCTION attendance.outbox_position() RETURNS trigger LANGUAGE plpgsql AS $fn$
BEGIN
    INSERT INTO attendance.outbox_positions AS p (council_code, last_position)
    VALUES (NEW.council_code, 1)
    ON CONFLICT (council_code) DO UPDATE SET last_position = p.last_position + 1
    RETURNING p.last_position INTO NEW.position;
    RETURN NEW;
END
$fn$;
CREATE TRIGGER outbox_position BEFORE INSERT ON attendance.outbox
    FOR EACH ROW EXECUTE FUNCTION attendance.outbox_position();

-- One row per council the relay has worked on: which relay holds it until
-- when (a lease, not a lock: nothing is held across a PublishAlert call),
-- and when its head-of-line alert may be tried again.
CREATE TABLE attendance.relay_councils (
    council_code    text PRIMARY KEY,
    holder          uuid,
    lease_until     timestamptz,
    attempts        integer NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    last_error      text
);
"#;

/// The most previous episodes a check-in answer carries (the contract's 25).
pub const PREVIOUS_EPISODES: i64 = 25;

/// A stored first answer to a check-in request.
#[derive(Debug, Clone)]
pub struct StoredRequest {
    /// SHA-256 of the first request's body (without its request_id).
    pub fingerprint: Vec<u8>,
    /// The prost-encoded `CheckInResponse` given the first time.
    pub response: Vec<u8>,
}

impl StoredRequest {
    /// The first answer again, if `fingerprint` is the same request body.
    pub fn replay(&self, fingerprint: &[u8]) -> Result<pb::CheckInResponse, ApiError> {
        if self.fingerprint != fingerprint {
            return Err(ApiError::invalid("request_id", "was already used by this setting for a different check-in"));
        }
        pb::CheckInResponse::decode(self.response.as_slice())
            .map_err(|e| ApiError::internal(format!("stored check-in response: {e}")))
    }
}

/// The stored first answer to `request_id` from `setting_code`, if any
/// (a statement prepared once per connection: it runs on every check-in).
pub async fn find_request(
    db: &impl deadpool_postgres::GenericClient,
    setting_code: &str,
    request_id: &str,
) -> Result<Option<StoredRequest>, ApiError> {
    let stmt = db
        .prepare_cached(
            "SELECT fingerprint, response FROM attendance.check_in_requests
             WHERE setting_code = $1 AND request_id = $2",
        )
        .await?;
    let row = db.query_opt(&stmt, &[&setting_code, &request_id]).await?;
    Ok(row.map(|r| StoredRequest { fingerprint: r.get(0), response: r.get(1) }))
}

/// One council to alert about a flagged arrival.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlertTarget {
    /// The council holding the flag.
    pub council_code: String,
    /// The kind of the council's plan.
    pub plan_type: i32,
    /// The council's case reference of the plan.
    pub local_reference: String,
}

/// Everything needed to record one flagged check-in.
#[derive(Debug, Clone)]
pub struct FlaggedCheckIn<'a> {
    /// ODS code of the calling setting.
    pub setting_code: &'a str,
    /// The client's idempotency key.
    pub request_id: &'a str,
    /// SHA-256 of the request body without its request_id.
    pub fingerprint: &'a [u8],
    /// The person's NHS number (validated).
    pub nhs_number: &'a str,
    /// The kind of setting.
    pub setting_type: i32,
    /// When the person arrived.
    pub arrived_at: DateTime<Utc>,
    /// Who at the setting is shown the flags.
    pub user_id: &'a str,
    /// The flags shown, as the Registry returned them.
    pub flags: &'a [Flag],
    /// One entry per distinct council holding a flag.
    pub alerts: &'a [AlertTarget],
}

/// The rules that decide episodes and priorities.
#[derive(Debug, Clone, Copy)]
pub struct EpisodeRules {
    /// Arrivals at one setting closer than this are one episode.
    pub same_episode_window: Duration,
    /// Episodes within this window are counted for a repeat attendance.
    pub repeat_window: Duration,
    /// This many episodes within the window make a repeat attendance.
    pub repeat_threshold: i64,
}

/// What recording a flagged check-in did.
#[derive(Debug)]
pub enum Recorded {
    /// Stored now; `alerts_queued` outbox rows were added.
    New {
        /// The answer, also stored for replays.
        response: pb::CheckInResponse,
        /// How many alerts are waiting for the relay.
        alerts_queued: u64,
    },
    /// Another call with the same request_id got there first.
    Earlier(StoredRequest),
}

/// Records a flagged check-in in one transaction: the episode (new, or the
/// person's episode at this setting within the same-episode window), an
/// access audit row, an outbox row for each council not yet alerted about
/// the episode, and the answer for replays.
pub async fn record_flagged(
    db: &mut deadpool_postgres::Object,
    c: &FlaggedCheckIn<'_>,
    rules: EpisodeRules,
) -> Result<Recorded, ApiError> {
    let tx = db.transaction().await?;
    // Serialise check-ins of one person at one setting, so that two staff
    // checking the same child in at once make one episode and one alert.
    // A hash collision only serialises two unrelated check-ins.
    tx.execute(
        &tx.prepare_cached("SELECT pg_advisory_xact_lock(hashtextextended($1::text, 0::bigint))").await?,
        &[&format!("attendance-episode:{}:{}", c.setting_code, c.nhs_number)],
    )
    .await?;
    if let Some(earlier) = find_request(&tx, c.setting_code, c.request_id).await? {
        tx.rollback().await?;
        return Ok(Recorded::Earlier(earlier));
    }

    let same_episode = secs(rules.same_episode_window);
    let existing = tx
        .query_opt(
            &tx.prepare_cached(
                "SELECT episode_id, arrived_at FROM attendance.episodes
             WHERE nhs_number = $1 AND setting_code = $2
               AND arrived_at > $3::timestamptz - make_interval(secs => $4::float8)
               AND arrived_at < $3::timestamptz + make_interval(secs => $4::float8)
             ORDER BY arrived_at DESC, episode_id DESC
             LIMIT 1",
            )
            .await?,
            &[&c.nhs_number, &c.setting_code, &c.arrived_at, &same_episode],
        )
        .await?;
    let (episode_id, episode_arrived_at) = match existing {
        Some(row) => (row.get::<_, Uuid>(0), row.get::<_, DateTime<Utc>>(1)),
        None => {
            let id = Uuid::now_v7();
            tx.execute(
                &tx.prepare_cached(
                    "INSERT INTO attendance.episodes
                     (episode_id, nhs_number, setting_code, setting_type, arrived_at)
                 VALUES ($1, $2, $3, $4, $5)",
                )
                .await?,
                &[&id, &c.nhs_number, &c.setting_code, &c.setting_type, &c.arrived_at],
            )
            .await?;
            (id, c.arrived_at)
        }
    };

    let councils: Vec<&str> = c.alerts.iter().map(|a| a.council_code.as_str()).collect();
    tx.execute(
        &tx.prepare_cached(
            "INSERT INTO attendance.accesses
             (access_id, episode_id, nhs_number, setting_code, setting_type, user_id, council_codes)
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .await?,
        &[&Uuid::now_v7(), &episode_id, &c.nhs_number, &c.setting_code, &c.setting_type, &c.user_id, &councils],
    )
    .await?;

    // The repeat count includes this episode and nothing after it.
    let recent: i64 = tx
        .query_one(
            &tx.prepare_cached(
                "SELECT count(*) FROM attendance.episodes
             WHERE nhs_number = $1
               AND arrived_at > $2::timestamptz - make_interval(secs => $3::float8)
               AND arrived_at <= $2::timestamptz",
            )
            .await?,
            &[&c.nhs_number, &episode_arrived_at, &secs(rules.repeat_window)],
        )
        .await?
        .get(0);
    let priority = if recent >= rules.repeat_threshold {
        cpis_proto::notification::v1::AlertPriority::RepeatAttendance
    } else {
        cpis_proto::notification::v1::AlertPriority::Routine
    } as i32;

    // A council already alerted about this episode is not alerted again (the
    // 24-hour rule); a council that took a flag on since is.
    let mut alerts_queued = 0;
    // The relay continues this check-in's trace from here.
    let traceparent = cpis_runtime::telemetry::current_traceparent();
    // Each insert takes its council's position counter (locked until commit):
    // always in council order, so two check-ins never wait for each other's.
    let mut by_council: Vec<_> = c.alerts.iter().collect();
    by_council.sort_by(|x, y| x.council_code.cmp(&y.council_code));
    for a in by_council {
        alerts_queued += tx
            .execute(
                &tx.prepare_cached(
                    "INSERT INTO attendance.outbox
                     (council_code, nhs_number, plan_type, local_reference, episode_id,
                      setting_code, setting_type, arrived_at, priority, traceparent)
                 SELECT $1, $2, $3, $4, e.episode_id, e.setting_code, e.setting_type,
                        e.arrived_at, $6, $7
                 FROM attendance.episodes e WHERE e.episode_id = $5
                 ON CONFLICT (episode_id, council_code) DO NOTHING",
                )
                .await?,
                &[
                    &a.council_code,
                    &c.nhs_number,
                    &a.plan_type,
                    &a.local_reference,
                    &episode_id,
                    &priority,
                    &traceparent,
                ],
            )
            .await?;
    }

    let previous = tx
        .query(
            &tx.prepare_cached(
                "SELECT episode_id, setting_code, setting_type, arrived_at FROM attendance.episodes
             WHERE nhs_number = $1 AND episode_id <> $2
             ORDER BY arrived_at DESC, episode_id DESC
             LIMIT $3",
            )
            .await?,
            &[&c.nhs_number, &episode_id, &PREVIOUS_EPISODES],
        )
        .await?;
    let response = pb::CheckInResponse {
        flagged: true,
        flags: c.flags.to_vec(),
        episode_id: episode_id.to_string(),
        previous_episodes: previous.iter().map(episode).collect(),
    };

    let stored = tx
        .execute(
            &tx.prepare_cached(
                "INSERT INTO attendance.check_in_requests
                 (setting_code, request_id, fingerprint, response, episode_id)
             VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (setting_code, request_id) DO NOTHING",
            )
            .await?,
            &[&c.setting_code, &c.request_id, &c.fingerprint, &response.encode_to_vec(), &episode_id],
        )
        .await?;
    if stored == 0 {
        // The same request_id was used concurrently for another person (the
        // advisory lock covers the same person): the first one wins.
        tx.rollback().await?;
        return match find_request(&*db, c.setting_code, c.request_id).await? {
            Some(earlier) => Ok(Recorded::Earlier(earlier)),
            None => Err(ApiError::Aborted("a concurrent check-in with this request_id did not complete; retry".into())),
        };
    }
    tx.commit().await?;
    Ok(Recorded::New { response, alerts_queued })
}

/// One silent read of a flagged person (scheduled care): who, where, when.
#[derive(Debug, Clone)]
pub struct SilentAccess<'a> {
    /// ODS code of the calling setting.
    pub setting_code: &'a str,
    /// The person's NHS number (validated).
    pub nhs_number: &'a str,
    /// The kind of setting (scheduled care).
    pub setting_type: i32,
    /// Who at the setting is shown the flags.
    pub user_id: &'a str,
    /// The councils holding a flag at that moment (they may list the access).
    pub council_codes: &'a [&'a str],
}

/// Records a silent read in the access audit: no episode, no outbox row.
pub async fn record_silent(db: &tokio_postgres::Client, a: &SilentAccess<'_>) -> Result<(), ApiError> {
    record_read(db, a, true, false).await
}

/// Records a setting's read of a flagged person's episodes (gRPC
/// `ListEpisodes`, FHIR `AuditEvent`) in the access audit, for the councils
/// holding the person's flags: no episode, no outbox row.
pub async fn record_episodes_read(
    db: &tokio_postgres::Client,
    setting_code: &str,
    nhs_number: &str,
    user_id: &str,
    found: &cpis_proto::registry::v1::LookupFlagsResponse,
) -> Result<(), ApiError> {
    let councils = flag_councils(found);
    let access = SilentAccess { setting_code, nhs_number, setting_type: 0, user_id, council_codes: &councils };
    record_read(db, &access, false, true).await
}

/// Each council holding one of the flags found, once, in the Registry's order.
pub fn flag_councils(found: &cpis_proto::registry::v1::LookupFlagsResponse) -> Vec<&str> {
    let mut councils: Vec<&str> = Vec::new();
    for flag in &found.flags {
        if !councils.contains(&flag.council_code.as_str()) {
            councils.push(flag.council_code.as_str());
        }
    }
    councils
}

async fn record_read(
    db: &tokio_postgres::Client,
    a: &SilentAccess<'_>,
    silent: bool,
    episodes_read: bool,
) -> Result<(), ApiError> {
    db.execute(
        "INSERT INTO attendance.accesses
             (access_id, episode_id, nhs_number, setting_code, setting_type, user_id, council_codes, silent,
              episodes_read)
         VALUES ($1, NULL, $2, $3, $4, $5, $6, $7, $8)",
        &[
            &Uuid::now_v7(),
            &a.nhs_number,
            &a.setting_code,
            &a.setting_type,
            &a.user_id,
            &a.council_codes,
            &silent,
            &episodes_read,
        ],
    )
    .await?;
    Ok(())
}

/// One page of a person's episodes, most recent first, optionally only
/// those since an instant.
pub async fn list_episodes(
    db: &tokio_postgres::Client,
    nhs_number: &str,
    after: Option<&Cursor>,
    since: Option<DateTime<Utc>>,
    limit: i64,
) -> Result<Vec<(Episode, Cursor)>, ApiError> {
    let (at, id) = split(after);
    let rows = db
        .query(
            "SELECT episode_id, setting_code, setting_type, arrived_at FROM attendance.episodes
             WHERE nhs_number = $1
               AND ($2::timestamptz IS NULL OR (arrived_at, episode_id) < ($2, $3::uuid))
               AND ($5::timestamptz IS NULL OR arrived_at >= $5)
             ORDER BY arrived_at DESC, episode_id DESC
             LIMIT $4",
            &[&nhs_number, &at, &id, &limit, &since],
        )
        .await?;
    Ok(rows.iter().map(|r| (episode(r), Cursor::new(r.get(3), r.get(0)))).collect())
}

/// One page of the accesses to flags `council_code` held at the time,
/// optionally of one person, most recent first.
pub async fn list_accesses(
    db: &tokio_postgres::Client,
    council_code: &str,
    nhs_number: Option<&str>,
    after: Option<&Cursor>,
    limit: i64,
) -> Result<Vec<(pb::AccessRecord, Cursor)>, ApiError> {
    let (at, id) = split(after);
    let rows = db
        .query(
            "SELECT access_id, episode_id, nhs_number, setting_code, setting_type, user_id,
                    accessed_at, silent, episodes_read
             FROM attendance.accesses
             WHERE council_codes @> ARRAY[$1::text]
               AND ($2::text IS NULL OR nhs_number = $2)
               AND ($3::timestamptz IS NULL OR (accessed_at, access_id) < ($3, $4::uuid))
             ORDER BY accessed_at DESC, access_id DESC
             LIMIT $5",
            &[&council_code, &nhs_number, &at, &id, &limit],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| {
            let access_id: Uuid = r.get(0);
            let episode_id: Option<Uuid> = r.get(1);
            let accessed_at: DateTime<Utc> = r.get(6);
            let record = pb::AccessRecord {
                access_id: access_id.to_string(),
                episode_id: episode_id.map(|id| id.to_string()).unwrap_or_default(),
                nhs_number: r.get(2),
                setting_code: r.get(3),
                setting_type: r.get(4),
                user_id: r.get(5),
                accessed_at: Some(to_timestamp(accessed_at)),
                silent: r.get(7),
                episodes_read: r.get(8),
            };
            (record, Cursor::new(accessed_at, access_id))
        })
        .collect())
}

/// One outbox row claimed for publishing.
#[derive(Debug, Clone)]
pub struct PendingAlert {
    /// The row's id.
    pub outbox_id: i64,
    /// What to publish.
    pub request: cpis_proto::notification::v1::PublishAlertRequest,
    /// The check-in's trace context.
    pub traceparent: Option<String>,
    /// Its place in the council's order (check-in commit order).
    pub position: i64,
}

/// Leases up to `limit` councils that have undelivered alerts, are due (no
/// retry pending) and are not leased by a live relay: `holder` publishes
/// them until `lease` from now unless it renews. One statement, so no lock
/// outlives it; two relays racing for a council cannot both win (the upsert
/// re-checks the lease on the row it waited for).
pub async fn lease_councils(
    db: &impl deadpool_postgres::GenericClient,
    holder: Uuid,
    lease: Duration,
    limit: i64,
) -> Result<Vec<LeasedCouncil>, tokio_postgres::Error> {
    let rows = db
        .query(
            "INSERT INTO attendance.relay_councils AS r (council_code, holder, lease_until)
             SELECT p.council_code, $1, now() + make_interval(secs => $2::float8)
             FROM (SELECT DISTINCT council_code FROM attendance.outbox WHERE delivered_at IS NULL) p
             LEFT JOIN attendance.relay_councils c USING (council_code)
             WHERE c.council_code IS NULL
                OR (COALESCE(c.lease_until, '-infinity') < now() AND c.next_attempt_at <= now())
             ORDER BY c.next_attempt_at NULLS FIRST, p.council_code
             LIMIT $3
             ON CONFLICT (council_code) DO UPDATE
                 SET holder = EXCLUDED.holder, lease_until = EXCLUDED.lease_until
                 WHERE COALESCE(r.lease_until, '-infinity') < now() AND r.next_attempt_at <= now()
             RETURNING council_code, attempts",
            &[&holder, &secs(lease), &limit],
        )
        .await?;
    Ok(rows.iter().map(|r| LeasedCouncil { council_code: r.get(0), attempts: r.get(1) }).collect())
}

/// A council a relay holds the lease of.
#[derive(Debug, Clone)]
pub struct LeasedCouncil {
    /// The council's GSS code.
    pub council_code: String,
    /// Failed attempts at its head-of-line alert since its last delivery.
    pub attempts: i32,
}

/// The first `limit` undelivered alerts of `council`, in position order
/// (its check-ins' commit order).
pub async fn pending_for_council(
    db: &impl deadpool_postgres::GenericClient,
    council: &str,
    limit: i64,
) -> Result<Vec<PendingAlert>, tokio_postgres::Error> {
    let rows = db
        .query(
            "SELECT outbox_id, attempts, council_code, nhs_number, plan_type, local_reference,
                    episode_id, setting_code, setting_type, arrived_at, priority, traceparent, position
             FROM attendance.outbox
             WHERE council_code = $1 AND delivered_at IS NULL
             ORDER BY position
             LIMIT $2",
            &[&council, &limit],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| {
            let episode_id: Uuid = r.get(6);
            let arrived_at: DateTime<Utc> = r.get(9);
            PendingAlert {
                outbox_id: r.get(0),
                request: cpis_proto::notification::v1::PublishAlertRequest {
                    council_code: r.get(2),
                    nhs_number: r.get(3),
                    plan_type: r.get(4),
                    local_reference: r.get(5),
                    episode: Some(Episode {
                        episode_id: episode_id.to_string(),
                        setting_code: r.get(7),
                        setting_type: r.get(8),
                        arrived_at: Some(to_timestamp(arrived_at)),
                    }),
                    priority: r.get(10),
                },
                traceparent: r.get(11),
                position: r.get(12),
            }
        })
        .collect())
}

/// Marks an outbox row delivered (the Notification service has stored it)
/// and renews `holder`'s lease of the row's council in the same statement.
/// Returns false when `holder` no longer holds the lease (it expired and
/// another relay took the council over): the caller then stops.
pub async fn mark_delivered(
    db: &impl deadpool_postgres::GenericClient,
    outbox_id: i64,
    holder: Uuid,
    lease: Duration,
) -> Result<bool, tokio_postgres::Error> {
    let renewed = db
        .query(
            "WITH delivered AS (
                 UPDATE attendance.outbox
                 SET delivered_at = COALESCE(delivered_at, now()), attempts = attempts + 1, last_error = NULL
                 WHERE outbox_id = $1
                 RETURNING council_code)
             UPDATE attendance.relay_councils r
             SET lease_until = now() + make_interval(secs => $3::float8), attempts = 0, last_error = NULL
             FROM delivered d
             WHERE r.council_code = d.council_code AND r.holder = $2
             RETURNING 1",
            &[&outbox_id, &holder, &secs(lease)],
        )
        .await?;
    Ok(!renewed.is_empty())
}

/// Records a failed attempt at a council's head-of-line alert and gives the
/// council up until `retry_in` from now: the whole council waits, so no
/// later alert can overtake it. `error` must hold no personal data.
pub async fn mark_failed(
    db: &impl deadpool_postgres::GenericClient,
    outbox_id: i64,
    holder: Uuid,
    retry_in: Duration,
    error: &str,
) -> Result<(), tokio_postgres::Error> {
    db.execute(
        "WITH failed AS (
             UPDATE attendance.outbox SET attempts = attempts + 1, last_error = $4
             WHERE outbox_id = $1
             RETURNING council_code)
         UPDATE attendance.relay_councils r
         SET holder = NULL, lease_until = NULL, attempts = r.attempts + 1,
             next_attempt_at = now() + make_interval(secs => $3::float8), last_error = $4
         FROM failed f
         WHERE r.council_code = f.council_code AND r.holder = $2",
        &[&outbox_id, &holder, &secs(retry_in), &error],
    )
    .await?;
    Ok(())
}

/// Gives up every lease `holder` holds (a relay stopping), so the other
/// replicas carry on at once instead of after the lease runs out.
pub async fn release_all(
    db: &impl deadpool_postgres::GenericClient,
    holder: Uuid,
) -> Result<u64, tokio_postgres::Error> {
    db.execute("UPDATE attendance.relay_councils SET holder = NULL, lease_until = NULL WHERE holder = $1", &[&holder])
        .await
}

/// Gives up `holder`'s lease of `council`, so any relay may take it at once.
pub async fn release_council(
    db: &impl deadpool_postgres::GenericClient,
    council: &str,
    holder: Uuid,
) -> Result<(), tokio_postgres::Error> {
    db.execute(
        "UPDATE attendance.relay_councils SET holder = NULL, lease_until = NULL
         WHERE council_code = $1 AND holder = $2",
        &[&council, &holder],
    )
    .await?;
    Ok(())
}

/// What waits in the outbox: one scan of the undelivered rows.
#[derive(Debug, Clone, Copy)]
pub struct Backlog {
    /// Undelivered rows.
    pub depth: i64,
    /// Age in seconds of the oldest (0 when none).
    pub oldest_age: f64,
    /// How long until the next one is due (zero when one is due now), or
    /// `None` when none is waiting.
    pub next_due_in: Option<Duration>,
}

/// Reads the outbox's [`Backlog`]; a council falls due when its retry
/// delay and any other relay's lease have both passed.
pub async fn backlog(db: &impl deadpool_postgres::GenericClient) -> Result<Backlog, tokio_postgres::Error> {
    let row = db
        .query_one(
            "WITH pending AS (
                 SELECT council_code, count(*) AS n, min(created_at) AS oldest
                 FROM attendance.outbox WHERE delivered_at IS NULL GROUP BY council_code)
             SELECT COALESCE(sum(p.n), 0)::bigint,
                    COALESCE(extract(epoch FROM now() - min(p.oldest))::float8, 0),
                    extract(epoch FROM min(GREATEST(COALESCE(r.next_attempt_at, now()),
                                                    COALESCE(r.lease_until, now()))) - now())::float8
             FROM pending p LEFT JOIN attendance.relay_councils r USING (council_code)",
            &[],
        )
        .await?;
    let due: Option<f64> = row.get(2);
    Ok(Backlog {
        depth: row.get(0),
        oldest_age: row.get(1),
        next_due_in: due.map(|s| Duration::try_from_secs_f64(s.max(0.0)).unwrap_or(Duration::ZERO)),
    })
}

fn episode(r: &Row) -> Episode {
    let id: Uuid = r.get(0);
    let arrived_at: DateTime<Utc> = r.get(3);
    Episode {
        episode_id: id.to_string(),
        setting_code: r.get(1),
        setting_type: r.get(2),
        arrived_at: Some(to_timestamp(arrived_at)),
    }
}

fn split(cursor: Option<&Cursor>) -> (Option<DateTime<Utc>>, Option<Uuid>) {
    match cursor {
        Some(c) => (Some(c.at), Some(c.id)),
        None => (None, None),
    }
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}
