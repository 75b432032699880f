//! The statements of a group of flagged check-ins committed together
//! (`crate::checkin` group commit), in the order its transaction runs them: the locks of
//! every person at their setting, the people's histories, and one statement
//! writing every row of the group. Each is the statement of one check-in
//! (`store::checkin`) over arrays; the replay records are read with
//! [`super::checkin::find_requests`].

use crate::model::{AlertTarget, Episode, FlaggedRows, RecordedViewer};
use chrono::{DateTime, Utc};
use cpis_runtime::ApiError;
use deadpool_postgres::GenericClient;
use std::collections::HashMap;
use uuid::Uuid;

/// The advisory lock key of a person at a setting, as
/// [`super::checkin::lock_person_at_setting`] takes it: a check-in alone and
/// a group serialise on the same locks.
pub fn person_at_setting_key(setting_code: &str, nhs_number: &str) -> String {
    format!("attendance-episode:{setting_code}:{nhs_number}")
}

/// Takes the locks of `keys` ([`person_at_setting_key`]) until the
/// transaction ends, in the order of their hashes: two groups (or a group
/// and a check-in alone, which takes one) never wait for each other in a
/// cycle. Repeated keys are taken once.
pub async fn lock_people_at_settings(tx: &impl GenericClient, keys: &[String]) -> Result<(), ApiError> {
    let stmt = tx
        .prepare_cached(
            "SELECT count(pg_advisory_xact_lock(k)) FROM
                 (SELECT DISTINCT hashtextextended(t, 0::bigint) AS k FROM unnest($1::text[]) AS t ORDER BY 1) s",
        )
        .await?;
    tx.query_one(&stmt, &[&keys]).await?;
    Ok(())
}

/// Each person's episodes arriving after their `since`, and their `recent`
/// most recent ones (whenever), keyed by NHS number: what
/// [`super::checkin::person_history`] reads for one person, for all of them
/// in one query. `people` holds each person once.
pub async fn people_histories(
    db: &impl GenericClient,
    people: &[(&str, DateTime<Utc>)],
    recent: i64,
) -> Result<HashMap<String, Vec<Episode>>, ApiError> {
    let stmt = db
        .prepare_cached(
            "SELECT q.nhs_number, e.episode_id, e.setting_code, e.setting_type, e.arrived_at
             FROM unnest($1::text[], $2::timestamptz[]) AS q(nhs_number, since)
             CROSS JOIN LATERAL (
                 SELECT episode_id, setting_code, setting_type, arrived_at FROM attendance.episodes
                 WHERE nhs_number = q.nhs_number AND arrived_at > q.since
                 UNION
                 (SELECT episode_id, setting_code, setting_type, arrived_at FROM attendance.episodes
                  WHERE nhs_number = q.nhs_number
                  ORDER BY arrived_at DESC, episode_id DESC
                  LIMIT $3)) e",
        )
        .await?;
    let numbers: Vec<&str> = people.iter().map(|(n, _)| *n).collect();
    let since: Vec<DateTime<Utc>> = people.iter().map(|(_, s)| *s).collect();
    let rows = db.query(&stmt, &[&numbers, &since, &recent]).await?;
    let mut out: HashMap<String, Vec<Episode>> = HashMap::new();
    for r in &rows {
        out.entry(r.get(0)).or_default().push(Episode {
            episode_id: r.get(1),
            setting_code: r.get(2),
            setting_type: r.get(3),
            arrived_at: r.get(4),
        });
    }
    Ok(out)
}

/// What writing a group's rows did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupInserted {
    /// Outbox rows added.
    pub alerts_queued: i64,
    /// Answers stored for replays; fewer than the group's check-ins when
    /// another request with one of their request ids stored its answer
    /// first (the transaction must then be rolled back).
    pub requests_stored: i64,
}

/// Separates the council codes of one access in a single text (GSS codes
/// are letters and digits).
const CODE_SEPARATOR: &str = ",";

/// Writes the rows of every check-in of a group in one statement: the new
/// episodes, one access audit row each, an outbox row for each council not
/// yet alerted about its episode (the same-episode rule, as one check-in's
/// statement), and each answer for replays. The outbox rows are inserted in
/// council-code order, so the group takes its councils' position counters
/// in the order every check-in does (no two writers wait in a cycle), each
/// council's rows in the group's order. Foreign keys to the new episodes are
/// checked at the end of the statement, when the episodes are there.
pub async fn insert_group(tx: &impl GenericClient, rows: &[FlaggedRows<'_>]) -> Result<GroupInserted, ApiError> {
    let stmt = tx
        .prepare_cached(
            "WITH episode AS (
                 INSERT INTO attendance.episodes (episode_id, nhs_number, setting_code, setting_type, arrived_at)
                 SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::integer[], $5::timestamptz[])
             ), access AS (
                 INSERT INTO attendance.accesses
                     (access_id, episode_id, nhs_number, setting_code, setting_type, user_id, council_codes,
                      viewer_name, role_profile_id, role_code, job_role_name, org_code, org_name, verified)
                 SELECT a.access_id, a.episode_id, a.nhs_number, a.setting_code, a.setting_type, a.user_id,
                        string_to_array(a.codes, $36), a.viewer_name, a.role_profile_id, a.role_code,
                        a.job_role_name, a.org_code, a.org_name, a.verified
                 FROM unnest($6::uuid[], $7::uuid[], $8::text[], $9::text[], $10::integer[], $11::text[],
                             $12::text[], $13::text[], $14::text[], $15::text[], $16::text[], $17::text[],
                             $18::text[], $19::boolean[])
                      AS a(access_id, episode_id, nhs_number, setting_code, setting_type, user_id, codes,
                           viewer_name, role_profile_id, role_code, job_role_name, org_code, org_name, verified)
             ), alerts AS (
                 INSERT INTO attendance.outbox
                     (council_code, nhs_number, plan_type, local_reference, episode_id,
                      setting_code, setting_type, arrived_at, priority, traceparent, viewer)
                 SELECT a.council_code, a.nhs_number, a.plan_type, a.local_reference, a.episode_id,
                        a.setting_code, a.setting_type, a.arrived_at, a.priority, a.traceparent, a.viewer
                 FROM unnest($20::text[], $21::text[], $22::integer[], $23::text[], $24::uuid[], $25::text[],
                             $26::integer[], $27::timestamptz[], $28::integer[], $29::text[], $30::bytea[])
                      WITH ORDINALITY AS a(council_code, nhs_number, plan_type, local_reference, episode_id,
                                           setting_code, setting_type, arrived_at, priority, traceparent,
                                           viewer, n)
                 ORDER BY a.council_code, a.n
                 ON CONFLICT (episode_id, council_code) DO NOTHING
                 RETURNING 1
             ), request AS (
                 INSERT INTO attendance.check_in_requests
                     (setting_code, request_id, fingerprint, response, episode_id)
                 SELECT * FROM unnest($31::text[], $32::text[], $33::bytea[], $34::bytea[], $35::uuid[])
                 ON CONFLICT (setting_code, request_id) DO NOTHING
                 RETURNING 1
             )
             SELECT (SELECT count(*) FROM alerts), (SELECT count(*) FROM request)",
        )
        .await?;
    let new: Vec<&FlaggedRows<'_>> = rows.iter().filter(|r| r.new_episode).collect();
    let episode = |f: fn(&Episode) -> &str| new.iter().map(|r| f(r.episode)).collect::<Vec<&str>>();
    let new_ids: Vec<Uuid> = new.iter().map(|r| r.episode.episode_id).collect();
    let new_people: Vec<&str> = new.iter().map(|r| r.nhs_number).collect();
    let new_settings = episode(|e| &e.setting_code);
    let new_types: Vec<i32> = new.iter().map(|r| r.episode.setting_type).collect();
    let new_arrivals: Vec<DateTime<Utc>> = new.iter().map(|r| r.episode.arrived_at).collect();

    let access_ids: Vec<Uuid> = rows.iter().map(|_| Uuid::now_v7()).collect();
    let episode_ids: Vec<Uuid> = rows.iter().map(|r| r.episode.episode_id).collect();
    let people: Vec<&str> = rows.iter().map(|r| r.nhs_number).collect();
    let settings: Vec<&str> = rows.iter().map(|r| r.setting_code).collect();
    let types: Vec<i32> = rows.iter().map(|r| r.setting_type).collect();
    let codes: Vec<String> = rows
        .iter()
        .map(|r| r.alerts.iter().map(|a| a.council_code.as_str()).collect::<Vec<_>>().join(CODE_SEPARATOR))
        .collect();
    let viewer = |f: fn(&RecordedViewer) -> &str| rows.iter().map(|r| f(r.viewer)).collect::<Vec<&str>>();
    let user_ids = viewer(|v| &v.user_id);
    let names = viewer(|v| &v.name);
    let role_profiles = viewer(|v| &v.role_profile_id);
    let role_codes = viewer(|v| &v.role_code);
    let job_roles = viewer(|v| &v.job_role_name);
    let org_codes = viewer(|v| &v.org_code);
    let org_names = viewer(|v| &v.org_name);
    let verified: Vec<bool> = rows.iter().map(|r| r.viewer.verified).collect();

    let alerts: Vec<(&FlaggedRows<'_>, &AlertTarget)> =
        rows.iter().flat_map(|r| r.alerts.iter().map(move |a| (r, a))).collect();
    let a_councils: Vec<&str> = alerts.iter().map(|(_, a)| a.council_code.as_str()).collect();
    let a_people: Vec<&str> = alerts.iter().map(|(r, _)| r.nhs_number).collect();
    let a_types: Vec<i32> = alerts.iter().map(|(_, a)| a.plan_type).collect();
    let a_refs: Vec<&str> = alerts.iter().map(|(_, a)| a.local_reference.as_str()).collect();
    let a_episodes: Vec<Uuid> = alerts.iter().map(|(r, _)| r.episode.episode_id).collect();
    let a_settings: Vec<&str> = alerts.iter().map(|(r, _)| r.episode.setting_code.as_str()).collect();
    let a_setting_types: Vec<i32> = alerts.iter().map(|(r, _)| r.episode.setting_type).collect();
    let a_arrivals: Vec<DateTime<Utc>> = alerts.iter().map(|(r, _)| r.episode.arrived_at).collect();
    let a_priorities: Vec<i32> = alerts.iter().map(|(r, _)| r.priority).collect();
    let a_traces: Vec<Option<&str>> = alerts.iter().map(|(r, _)| r.traceparent).collect();
    let a_viewers: Vec<&[u8]> = alerts.iter().map(|(r, _)| r.alert_viewer).collect();

    let request_ids: Vec<&str> = rows.iter().map(|r| r.request_id).collect();
    let fingerprints: Vec<&[u8]> = rows.iter().map(|r| r.fingerprint).collect();
    let responses: Vec<&[u8]> = rows.iter().map(|r| r.response).collect();
    let row = tx
        .query_one(
            &stmt,
            &[
                &new_ids,
                &new_people,
                &new_settings,
                &new_types,
                &new_arrivals,
                &access_ids,
                &episode_ids,
                &people,
                &settings,
                &types,
                &user_ids,
                &codes,
                &names,
                &role_profiles,
                &role_codes,
                &job_roles,
                &org_codes,
                &org_names,
                &verified,
                &a_councils,
                &a_people,
                &a_types,
                &a_refs,
                &a_episodes,
                &a_settings,
                &a_setting_types,
                &a_arrivals,
                &a_priorities,
                &a_traces,
                &a_viewers,
                &settings,
                &request_ids,
                &fingerprints,
                &responses,
                &episode_ids,
                &CODE_SEPARATOR,
            ],
        )
        .await?;
    Ok(GroupInserted { alerts_queued: row.get(0), requests_stored: row.get(1) })
}
