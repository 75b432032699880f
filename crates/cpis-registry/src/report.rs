//! `ReportPlans`: a council's plan figures per month (its own), or every
//! council's for an analyst with counts of 1 to 4 withheld.

use crate::store::report::{plan_figures, PlanFigures};
use crate::Registry;
use cpis_domain::report::{month_label, range};
use cpis_domain::validate::Violations;
use cpis_proto::registry::v1 as pb;
use cpis_runtime::report::Audience;
use cpis_runtime::ApiError;

impl Registry {
    /// `ReportPlans` for `audience`.
    pub(crate) async fn report_plans(
        &self,
        audience: &Audience,
        req: &pb::ReportPlansRequest,
    ) -> Result<pb::ReportPlansResponse, ApiError> {
        let mut v = Violations::new();
        let months = range(&mut v, &req.from_month, &req.to_month);
        v.finish()?;
        let months = months.ok_or_else(|| ApiError::internal("validated range missing"))?;
        let client = self.pool.get().await?;
        let figures = plan_figures(&**client, audience.council(), months.first, months.last).await?;
        Ok(pb::ReportPlansResponse { months: figures.iter().map(|f| plan_month(audience, f)).collect() })
    }
}

/// One row as `audience` may see it.
fn plan_month(audience: &Audience, f: &PlanFigures) -> pb::PlanMonth {
    let open: i64 = f.open.iter().sum();
    let quality = (open > 0).then(|| (open - f.needing_action) as f64 / open as f64);
    pb::PlanMonth {
        council_code: f.council_code.clone(),
        month: month_label(f.month),
        open_child_protection: Some(audience.count(f.open[0])),
        open_looked_after: Some(audience.count(f.open[1])),
        open_unborn: Some(audience.count(f.open[2])),
        started: Some(audience.count(f.started)),
        ended: Some(audience.count(f.ended)),
        needing_action: Some(audience.count(f.needing_action)),
        nhs_number_quality: audience.derived(&[open, f.needing_action, open - f.needing_action], quality),
    }
}
