//! The statement of the access history a setting is shown (FHIR
//! `AuditEvent`): a person's notifying reads, most recent first.

use crate::model::{Access, RecordedViewer};
use cpis_runtime::ApiError;

/// The person's `limit` most recent notifying reads (check-ins: accesses
/// with an episode, neither silent nor a read of the history), most recent
/// first, with the person each was shown to.
pub async fn notifying_reads(
    db: &tokio_postgres::Client,
    nhs_number: &str,
    limit: i64,
) -> Result<Vec<Access>, ApiError> {
    let rows = db
        .query(
            "SELECT access_id, episode_id, nhs_number, setting_code, setting_type, user_id,
                    accessed_at, silent, episodes_read, viewer_name, role_profile_id, role_code,
                    job_role_name, org_code, org_name, verified
             FROM attendance.accesses
             WHERE nhs_number = $1 AND episode_id IS NOT NULL AND NOT silent AND NOT episodes_read
             ORDER BY accessed_at DESC, access_id DESC
             LIMIT $2",
            &[&nhs_number, &limit],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| Access {
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
            // Only accesses with an episode are read here.
            was_not_brought: false,
            appointment_at: None,
        })
        .collect())
}
