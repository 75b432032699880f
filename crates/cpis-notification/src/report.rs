//! `ReportAlerts`: a council's alert figures per month (alerts stored that
//! month, in England), its own, or every council's for an analyst with
//! counts of 1 to 4 withheld. The time to acknowledge an alert is the first
//! acknowledgement covering it (`notification.ack_history`) minus its
//! creation; alerts acknowledged before that history was kept count as
//! acknowledged, without a time.

use cpis_domain::report::{month_label, range};
use cpis_domain::validate::Violations;
use cpis_proto::notification::v1 as pb;
use cpis_runtime::db::DbPool;
use cpis_runtime::report::Audience;
use cpis_runtime::ApiError;
use std::collections::BTreeMap;

/// `ReportAlerts` for `audience`, over `pool`.
pub async fn report(
    pool: &DbPool,
    audience: &Audience,
    req: &pb::ReportAlertsRequest,
) -> Result<pb::ReportAlertsResponse, ApiError> {
    let mut v = Violations::new();
    let months = range(&mut v, &req.from_month, &req.to_month);
    v.finish()?;
    let months = months.ok_or_else(|| ApiError::internal("validated range missing"))?;
    let client = pool.get().await?;
    // One row per council, month and kind, with the month's totals repeated.
    let rows = client
        .query(
            "WITH al AS (
                 SELECT a.council_code,
                        date_trunc('month', a.created_at AT TIME ZONE 'Europe/London')::date AS m,
                        COALESCE(NULLIF(a.kind, 0), CASE WHEN a.priority = 2 THEN 2 ELSE 1 END) AS kind,
                        a.sequence <= COALESCE(k.acknowledged_through, 0) AS acked,
                        (SELECT min(h.acked_at) FROM notification.ack_history h
                         WHERE h.council_code = a.council_code AND h.up_to_sequence >= a.sequence) - a.created_at
                            AS took
                 FROM notification.alerts a
                 LEFT JOIN notification.acks k ON k.council_code = a.council_code
                 WHERE ($1::text IS NULL OR a.council_code = $1)
                   AND a.created_at >= ($2::date)::timestamp AT TIME ZONE 'Europe/London'
                   AND a.created_at < ($3::date)::timestamp AT TIME ZONE 'Europe/London'),
             months AS (
                 SELECT council_code, m, count(*) AS sent, count(*) FILTER (WHERE acked) AS acked,
                        percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM took))
                            FILTER (WHERE took IS NOT NULL) AS median,
                        percentile_cont(0.95) WITHIN GROUP (ORDER BY extract(epoch FROM took))
                            FILTER (WHERE took IS NOT NULL) AS p95
                 FROM al GROUP BY council_code, m),
             kinds AS (SELECT council_code, m, kind, count(*) AS n FROM al GROUP BY council_code, m, kind)
             SELECT k.council_code, k.m, k.kind, k.n, mo.sent, mo.acked, mo.median, mo.p95
             FROM kinds k JOIN months mo USING (council_code, m)
             ORDER BY k.council_code, k.m, k.kind",
            &[&audience.council(), &months.first, &months.end_exclusive()],
        )
        .await?;
    let mut out: BTreeMap<(String, String), pb::AlertMonth> = BTreeMap::new();
    if let Some(council) = audience.council() {
        for m in months.months() {
            let key = (council.to_string(), month_label(m));
            out.insert(key.clone(), empty(audience, &key));
        }
    }
    for r in &rows {
        let council: String = r.get(0);
        let month: chrono::NaiveDate = r.get(1);
        let key = (council, month_label(month));
        let (sent, acked): (i64, i64) = (r.get(4), r.get(5));
        let row = out.entry(key.clone()).or_insert_with(|| empty(audience, &key));
        row.sent = Some(audience.count(sent));
        row.acknowledged = Some(audience.count(acked));
        row.median_seconds_to_acknowledge = audience.derived(&[acked], r.get(6));
        row.p95_seconds_to_acknowledge = audience.derived(&[acked], r.get(7));
        row.by_kind.push(pb::AlertKindCount { kind: r.get(2), count: Some(audience.count(r.get(3))) });
    }
    Ok(pb::ReportAlertsResponse { months: out.into_values().collect() })
}

/// A month with no alert.
fn empty(audience: &Audience, (council, month): &(String, String)) -> pb::AlertMonth {
    pb::AlertMonth {
        council_code: council.clone(),
        month: month.clone(),
        sent: Some(audience.count(0)),
        acknowledged: Some(audience.count(0)),
        ..Default::default()
    }
}
