//! The statement of the plan figures of a report: per council and month,
//! over the Registry's own tables only.

use chrono::NaiveDate;
use cpis_runtime::ApiError;
use tokio_postgres::GenericClient;

/// One council's plan figures for one month.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanFigures {
    /// The council.
    pub council_code: String,
    /// The month's first day.
    pub month: NaiveDate,
    /// Plans open at the month's end, by type: child protection, looked after, unborn.
    pub open: [i64; 3],
    /// Plans started in the month.
    pub started: i64,
    /// Plans ended in the month.
    pub ended: i64,
    /// Plans open at the month's end whose number had changed by then.
    pub needing_action: i64,
}

/// The figures of every month from `first` to `last` (first days), of one
/// council or (`None`) of every council with a plan. Plans entered in error
/// count nowhere; "open at the month's end" is active on its last day.
pub async fn plan_figures(
    client: &impl GenericClient,
    council: Option<&str>,
    first: NaiveDate,
    last: NaiveDate,
) -> Result<Vec<PlanFigures>, ApiError> {
    let rows = client
        .query(
            "WITH months AS (
                 SELECT m::date AS m, (m + interval '1 month' - interval '1 day')::date AS m_end
                 FROM generate_series($2::date, $3::date, interval '1 month') AS m),
             councils AS (
                 SELECT $1::text AS council_code WHERE $1::text IS NOT NULL
                 UNION
                 SELECT DISTINCT council_code FROM registry.plans WHERE $1::text IS NULL),
             grid AS (SELECT c.council_code, m.m, m.m_end FROM councils c CROSS JOIN months m),
             figures AS (
                 SELECT g.council_code, g.m, p.plan_type, p.nhs_number,
                        (p.start_date <= g.m_end AND (p.end_date IS NULL OR p.end_date >= g.m_end)) AS open,
                        (p.start_date BETWEEN g.m AND g.m_end) AS started,
                        (p.end_date BETWEEN g.m AND g.m_end) AS ended,
                        g.m_end
                 FROM grid g
                 LEFT JOIN registry.plans p ON p.council_code = g.council_code AND p.deleted_at IS NULL)
             SELECT f.council_code, f.m,
                    count(*) FILTER (WHERE f.open AND f.plan_type = 1),
                    count(*) FILTER (WHERE f.open AND f.plan_type = 2),
                    count(*) FILTER (WHERE f.open AND f.plan_type = 3),
                    count(*) FILTER (WHERE f.started),
                    count(*) FILTER (WHERE f.ended),
                    count(*) FILTER (WHERE f.open AND EXISTS (
                        SELECT 1 FROM registry.nhs_number_changes c
                        WHERE c.nhs_number = f.nhs_number
                          AND c.recorded_at < ((f.m_end + 1)::timestamp AT TIME ZONE 'Europe/London')))
             FROM figures f
             GROUP BY f.council_code, f.m
             ORDER BY f.council_code, f.m",
            &[&council, &first, &last],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| PlanFigures {
            council_code: r.get(0),
            month: r.get(1),
            open: [r.get(2), r.get(3), r.get(4)],
            started: r.get(5),
            ended: r.get(6),
            needing_action: r.get(7),
        })
        .collect())
}
