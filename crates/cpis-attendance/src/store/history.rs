//! The statement of the access history a setting is shown (FHIR
//! `AuditEvent`): a person's notifying reads, most recent first.

use super::reads::{access_from_row, ACCESS_COLUMNS};
use crate::model::Access;
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
            &format!(
                "SELECT {ACCESS_COLUMNS}
             FROM attendance.accesses
             WHERE nhs_number = $1 AND episode_id IS NOT NULL AND NOT silent AND NOT episodes_read
             ORDER BY accessed_at DESC, access_id DESC
             LIMIT $2"
            ),
            &[&nhs_number, &limit],
        )
        .await?;
    Ok(rows.iter().map(access_from_row).collect())
}
