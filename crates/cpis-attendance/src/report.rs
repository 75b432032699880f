//! `ReportAccesses`: a council's access figures per month (its own), or
//! every council's for an analyst with counts of 1 to 4 withheld. Every
//! month of the range has a row for a council asking; the national report
//! lists the councils with any access.

use crate::store::report::{access_figures, AccessFigures};
use cpis_domain::report::{month_label, range};
use cpis_domain::validate::Violations;
use cpis_proto::attendance::v1 as pb;
use cpis_runtime::db::DbPool;
use cpis_runtime::report::Audience;
use cpis_runtime::ApiError;
use std::collections::BTreeMap;

/// `ReportAccesses` for `audience`, over `pool`.
pub async fn report(
    pool: &DbPool,
    audience: &Audience,
    req: &pb::ReportAccessesRequest,
) -> Result<pb::ReportAccessesResponse, ApiError> {
    let mut v = Violations::new();
    let months = range(&mut v, &req.from_month, &req.to_month);
    v.finish()?;
    let months = months.ok_or_else(|| ApiError::internal("validated range missing"))?;
    let db = pool.get().await?;
    let figures = access_figures(&db, audience.council(), months.first, months.end_exclusive()).await?;
    let mut rows: BTreeMap<(String, String), Vec<&AccessFigures>> = BTreeMap::new();
    if let Some(council) = audience.council() {
        for m in months.months() {
            rows.entry((council.to_string(), month_label(m))).or_default();
        }
    }
    for f in &figures {
        rows.entry((f.council_code.clone(), month_label(f.month))).or_default().push(f);
    }
    let months = rows
        .into_iter()
        .map(|((council_code, month), figures)| {
            let by_type = |count: fn(&AccessFigures) -> i64| -> Vec<pb::SettingTypeCount> {
                figures
                    .iter()
                    .filter(|f| count(f) > 0)
                    .map(|f| pb::SettingTypeCount {
                        setting_type: f.setting_type,
                        count: Some(audience.count(count(f))),
                    })
                    .collect()
            };
            pb::AccessMonth {
                council_code,
                month,
                check_ins: by_type(|f| f.check_ins),
                silent_reads: by_type(|f| f.silent_reads),
                missed_appointments: Some(audience.count(figures.iter().map(|f| f.missed).sum())),
            }
        })
        .collect();
    Ok(pb::ReportAccessesResponse { months })
}
