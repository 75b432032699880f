//! The statement of the access figures of a report: per council (each
//! council holding a flag at the time of an access), month (in England) and
//! setting type, over the Attendance service's own access audit.

use chrono::NaiveDate;
use cpis_runtime::ApiError;
use deadpool_postgres::GenericClient;

/// The accesses of one council, month and setting type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessFigures {
    /// The council.
    pub council_code: String,
    /// The month's first day.
    pub month: NaiveDate,
    /// The kind of setting.
    pub setting_type: i32,
    /// Check-ins (notifying reads: an access with an episode).
    pub check_ins: i64,
    /// Silent reads.
    pub silent_reads: i64,
    /// Missed appointments recorded.
    pub missed: i64,
}

/// The figures of the months from `first` to the day before `end` (first
/// days), of one council or (`None`) every council; only months and setting
/// types with accesses appear.
pub async fn access_figures(
    db: &impl GenericClient,
    council: Option<&str>,
    first: NaiveDate,
    end: NaiveDate,
) -> Result<Vec<AccessFigures>, ApiError> {
    let rows = db
        .query(
            "SELECT a.council_code,
                    date_trunc('month', a.accessed_at AT TIME ZONE 'Europe/London')::date AS m,
                    a.setting_type,
                    count(*) FILTER (WHERE a.episode_id IS NOT NULL AND NOT a.silent),
                    count(*) FILTER (WHERE a.silent),
                    count(*) FILTER (WHERE a.was_not_brought)
             FROM (SELECT unnest(council_codes) AS council_code, accessed_at, setting_type, episode_id, silent,
                          was_not_brought
                   FROM attendance.accesses
                   WHERE accessed_at >= ($2::date)::timestamp AT TIME ZONE 'Europe/London'
                     AND accessed_at < ($3::date)::timestamp AT TIME ZONE 'Europe/London') a
             WHERE $1::text IS NULL OR a.council_code = $1
             GROUP BY 1, 2, 3
             ORDER BY 1, 2, 3",
            &[&council, &first, &end],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| AccessFigures {
            council_code: r.get(0),
            month: r.get(1),
            setting_type: r.get(2),
            check_ins: r.get(3),
            silent_reads: r.get(4),
            missed: r.get(5),
        })
        .collect())
}
