//! The statements of the reads: the access audit of silent and episode reads,
//! a person's episodes and a council's accesses.

use crate::model::{Access, Episode, RecordedViewer};
use crate::page::Cursor;
use chrono::{DateTime, Utc};
use cpis_runtime::ApiError;
use uuid::Uuid;

/// The columns of an access row, in the order [`access_from_row`] reads them.
pub(crate) const ACCESS_COLUMNS: &str = "access_id, episode_id, nhs_number, setting_code, setting_type, user_id,
        accessed_at, silent, episodes_read, viewer_name, role_profile_id, role_code,
        job_role_name, org_code, org_name, verified, was_not_brought, appointment_at";

/// How a flagged person's record was read without a check-in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadKind {
    /// A silent read by scheduled care (`SilentRead`, a FHIR silent search),
    /// which also reads the person's recent episodes.
    Silent,
    /// A setting's read of the person's episodes (`ListEpisodes`, FHIR `AuditEvent`).
    Episodes,
}

/// One read of a flagged person for the access audit: who, where, when.
#[derive(Debug, Clone)]
pub struct Read<'a> {
    /// Which kind of read.
    pub kind: ReadKind,
    /// ODS code of the calling setting.
    pub setting_code: &'a str,
    /// The person's NHS number (validated).
    pub nhs_number: &'a str,
    /// The kind of setting (0 for an episode read, which does not state it).
    pub setting_type: i32,
    /// Who at the setting is shown the answer.
    pub viewer: &'a RecordedViewer,
    /// The councils holding a flag at that moment (they may list the access).
    pub council_codes: &'a [&'a str],
}

/// Records a read in the access audit: no episode, no outbox row.
pub async fn record_read(db: &tokio_postgres::Client, a: &Read<'_>) -> Result<(), ApiError> {
    db.execute(
        "INSERT INTO attendance.accesses
             (access_id, episode_id, nhs_number, setting_code, setting_type, user_id, council_codes, silent,
              episodes_read, viewer_name, role_profile_id, role_code, job_role_name, org_code, org_name, verified)
         VALUES ($1, NULL, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)",
        &[
            &Uuid::now_v7(),
            &a.nhs_number,
            &a.setting_code,
            &a.setting_type,
            &a.viewer.user_id,
            &a.council_codes,
            &(a.kind == ReadKind::Silent),
            // Every read audited here shows the person's recent episodes.
            &true,
            &a.viewer.name,
            &a.viewer.role_profile_id,
            &a.viewer.role_code,
            &a.viewer.job_role_name,
            &a.viewer.org_code,
            &a.viewer.org_name,
            &a.viewer.verified,
        ],
    )
    .await?;
    Ok(())
}

/// The person's most recent `limit` episodes, most recent first, optionally
/// only those since an instant.
pub async fn list_episodes(
    db: &tokio_postgres::Client,
    nhs_number: &str,
    since: Option<DateTime<Utc>>,
    limit: i64,
) -> Result<Vec<Episode>, ApiError> {
    let rows = db
        .query(
            "SELECT episode_id, setting_code, setting_type, arrived_at FROM attendance.episodes
             WHERE nhs_number = $1
               AND ($3::timestamptz IS NULL OR arrived_at >= $3)
             ORDER BY arrived_at DESC, episode_id DESC
             LIMIT $2",
            &[&nhs_number, &limit, &since],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| Episode { episode_id: r.get(0), setting_code: r.get(1), setting_type: r.get(2), arrived_at: r.get(3) })
        .collect())
}

/// One page of the accesses to flags `council_code` held at the time,
/// optionally of one person, most recent first.
pub async fn list_accesses(
    db: &tokio_postgres::Client,
    council_code: &str,
    nhs_number: Option<&str>,
    after: Option<&Cursor>,
    limit: i64,
) -> Result<Vec<Access>, ApiError> {
    let (at, id) = match after {
        Some(c) => (Some(c.at), Some(c.id)),
        None => (None, None),
    };
    let rows = db
        .query(
            &format!(
                "SELECT {ACCESS_COLUMNS}
             FROM attendance.accesses
             WHERE council_codes @> ARRAY[$1::text]
               AND ($2::text IS NULL OR nhs_number = $2)
               AND ($3::timestamptz IS NULL OR (accessed_at, access_id) < ($3, $4::uuid))
             ORDER BY accessed_at DESC, access_id DESC
             LIMIT $5"
            ),
            &[&council_code, &nhs_number, &at, &id, &limit],
        )
        .await?;
    Ok(rows.iter().map(access_from_row).collect())
}

/// The columns [`ACCESS_COLUMNS`] of one access row.
pub(crate) fn access_from_row(r: &tokio_postgres::Row) -> Access {
    Access {
        access_id: r.get(0),
        episode_id: r.get(1),
        nhs_number: r.get(2),
        setting_code: r.get(3),
        setting_type: r.get(4),
        viewer: RecordedViewer {
            user_id: r.get(5),
            name: r.get(9),
            role_profile_id: r.get(10),
            role_code: r.get(11),
            job_role_name: r.get(12),
            org_code: r.get(13),
            org_name: r.get(14),
            verified: r.get(15),
        },
        accessed_at: r.get(6),
        silent: r.get(7),
        episodes_read: r.get(8),
        was_not_brought: r.get(16),
        appointment_at: r.get(17),
    }
}
