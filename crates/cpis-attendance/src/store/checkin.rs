//! The statements of a flagged check-in, in the order `checkin.rs` runs them
//! in its transaction: the lock of the person at the setting, the replay
//! record, the person's history, and one statement writing every row.

use crate::model::{Episode, FlaggedRows, Inserted, StoredRequest};
use chrono::{DateTime, Utc};
use cpis_runtime::ApiError;
use deadpool_postgres::GenericClient;
use uuid::Uuid;

/// Serialises check-ins of one person at one setting until the transaction
/// ends, so that two staff checking the same child in at once make one
/// episode and one alert. A hash collision only serialises two unrelated
/// check-ins.
pub async fn lock_person_at_setting(
    tx: &impl GenericClient,
    setting_code: &str,
    nhs_number: &str,
) -> Result<(), ApiError> {
    let stmt = tx.prepare_cached("SELECT pg_advisory_xact_lock(hashtextextended($1::text, 0::bigint))").await?;
    tx.execute(&stmt, &[&format!("attendance-episode:{setting_code}:{nhs_number}")]).await?;
    Ok(())
}

/// The stored first answer to `request_id` from `setting_code`, if any.
pub async fn find_request(
    db: &impl GenericClient,
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

/// The stored first answers to several `(setting_code, request_id)` keys in
/// one indexed query (a primary-key probe each), in the order of `keys`:
/// [`find_request`] for the look-ups of concurrent check-ins.
pub async fn find_requests(
    db: &impl GenericClient,
    keys: &[(&str, &str)],
) -> Result<Vec<Option<StoredRequest>>, ApiError> {
    let stmt = db
        .prepare_cached(
            "SELECT q.idx::int, r.fingerprint, r.response
             FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS q(setting_code, request_id, idx)
             JOIN attendance.check_in_requests r
               ON r.setting_code = q.setting_code AND r.request_id = q.request_id",
        )
        .await?;
    let settings: Vec<&str> = keys.iter().map(|(s, _)| *s).collect();
    let requests: Vec<&str> = keys.iter().map(|(_, r)| *r).collect();
    let rows = db.query(&stmt, &[&settings, &requests]).await?;
    let mut found: Vec<Option<StoredRequest>> = keys.iter().map(|_| None).collect();
    for r in &rows {
        let index: i32 = r.get(0);
        let Some(slot) = usize::try_from(index - 1).ok().and_then(|i| found.get_mut(i)) else {
            return Err(ApiError::internal("replay look-up returned an index out of range"));
        };
        *slot = Some(StoredRequest { fingerprint: r.get(1), response: r.get(2) });
    }
    Ok(found)
}

/// The person's episodes arriving after `since`, and their `recent` most
/// recent ones (whenever), in no particular order: everything the check-in
/// rules (`rules::decide`) look at.
pub async fn person_history(
    db: &impl GenericClient,
    nhs_number: &str,
    since: DateTime<Utc>,
    recent: i64,
) -> Result<Vec<Episode>, ApiError> {
    let stmt = db
        .prepare_cached(
            "SELECT episode_id, setting_code, setting_type, arrived_at FROM attendance.episodes
             WHERE nhs_number = $1 AND arrived_at > $2
             UNION
             (SELECT episode_id, setting_code, setting_type, arrived_at FROM attendance.episodes
              WHERE nhs_number = $1
              ORDER BY arrived_at DESC, episode_id DESC
              LIMIT $3)",
        )
        .await?;
    let rows = db.query(&stmt, &[&nhs_number, &since, &recent]).await?;
    Ok(rows
        .iter()
        .map(|r| Episode { episode_id: r.get(0), setting_code: r.get(1), setting_type: r.get(2), arrived_at: r.get(3) })
        .collect())
}

/// Writes a flagged check-in's rows in one statement (one round trip): the
/// episode when it is new, the access audit row, an outbox row for each
/// council not yet alerted about the episode (the same-episode rule: a
/// conflict on (episode, council) adds nothing), and the answer for replays.
///
/// The outbox rows are inserted in the order of `rows.alerts` (council-code
/// order): each takes its council's position counter row, locked until the
/// transaction commits, so positions become visible in commit order. Foreign
/// keys to the new episode are checked at the end of the statement, when the
/// episode is there.
pub async fn insert_flagged(tx: &impl GenericClient, rows: &FlaggedRows<'_>) -> Result<Inserted, ApiError> {
    let stmt = tx
        .prepare_cached(
            "WITH episode AS (
                 INSERT INTO attendance.episodes (episode_id, nhs_number, setting_code, setting_type, arrived_at)
                 SELECT $1, $2, $3, $4, $5 WHERE $6::boolean
             ), access AS (
                 INSERT INTO attendance.accesses
                     (access_id, episode_id, nhs_number, setting_code, setting_type, user_id, council_codes,
                      viewer_name, role_profile_id, role_code, job_role_name, org_code, org_name, verified)
                 VALUES ($7, $1, $2, $8, $9, $10, $11, $19, $20, $21, $22, $23, $24, $25)
             ), alerts AS (
                 INSERT INTO attendance.outbox
                     (council_code, nhs_number, plan_type, local_reference, episode_id,
                      setting_code, setting_type, arrived_at, priority, traceparent, viewer)
                 SELECT a.council_code, $2, a.plan_type, a.local_reference, $1, $3, $4, $5, $12, $13, $26
                 FROM unnest($11::text[], $14::integer[], $15::text[])
                      WITH ORDINALITY AS a(council_code, plan_type, local_reference, n)
                 ORDER BY a.n
                 ON CONFLICT (episode_id, council_code) DO NOTHING
                 RETURNING 1
             ), request AS (
                 INSERT INTO attendance.check_in_requests
                     (setting_code, request_id, fingerprint, response, episode_id)
                 VALUES ($8, $16, $17, $18, $1)
                 ON CONFLICT (setting_code, request_id) DO NOTHING
                 RETURNING 1
             )
             SELECT (SELECT count(*) FROM alerts), (SELECT count(*) FROM request)",
        )
        .await?;
    let councils: Vec<&str> = rows.alerts.iter().map(|a| a.council_code.as_str()).collect();
    let plan_types: Vec<i32> = rows.alerts.iter().map(|a| a.plan_type).collect();
    let references: Vec<&str> = rows.alerts.iter().map(|a| a.local_reference.as_str()).collect();
    let e = rows.episode;
    let row = tx
        .query_one(
            &stmt,
            &[
                &e.episode_id,
                &rows.nhs_number,
                &e.setting_code,
                &e.setting_type,
                &e.arrived_at,
                &rows.new_episode,
                &Uuid::now_v7(),
                &rows.setting_code,
                &rows.setting_type,
                &rows.viewer.user_id,
                &councils,
                &rows.priority,
                &rows.traceparent,
                &plan_types,
                &references,
                &rows.request_id,
                &rows.fingerprint,
                &rows.response,
                &rows.viewer.name,
                &rows.viewer.role_profile_id,
                &rows.viewer.role_code,
                &rows.viewer.job_role_name,
                &rows.viewer.org_code,
                &rows.viewer.org_name,
                &rows.viewer.verified,
                &rows.alert_viewer,
            ],
        )
        .await?;
    let stored: i64 = row.get(1);
    Ok(Inserted { alerts_queued: row.get(0), request_stored: stored > 0 })
}
