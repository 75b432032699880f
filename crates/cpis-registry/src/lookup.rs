//! `LookupFlags`: every plan in scope for one person on one day, across all
//! councils, for the Attendance service at a front desk.

use crate::{councils, model, store, today, Registry};
use chrono::NaiveDate;
use cpis_domain::validate::Violations;
use cpis_proto::common::v1 as common;
use cpis_proto::registry::v1 as pb;
use cpis_runtime::ApiError;

impl Registry {
    /// `LookupFlags`: not through the council gate, with a connection wait
    /// shorter than Attendance's deadline.
    pub(crate) async fn lookup(&self, req: pb::LookupFlagsRequest) -> Result<pb::LookupFlagsResponse, ApiError> {
        let mut v = Violations::new();
        let nhs = v.nhs_number("nhs_number", &req.nhs_number);
        let day = v.optional_date("on_date", &req.on_date);
        v.finish()?;
        let (Some(nhs), Some(day)) = (nhs, day) else {
            return Err(ApiError::internal("validated fields missing"));
        };
        let day = day.unwrap_or_else(today);
        // Not through the council gate: the connections it leaves free are
        // this call's reserve, and its wait is shorter than Attendance's deadline.
        let timeouts = deadpool_postgres::Timeouts { wait: Some(self.config.lookup_wait), ..self.pool.timeouts() };
        let client = self.pool.timeout_get(&timeouts).await?;
        let found = store::lookup_flags(&client, nhs.as_str(), day, self.config.unborn_scope_days).await?;
        Ok(pb::LookupFlagsResponse {
            flags: found.iter().map(|f| flag_of(f, day)).collect(),
            local_references: found.into_iter().map(|f| f.local_reference).collect(),
        })
    }
}

fn flag_of(f: &store::FoundFlag, day: NaiveDate) -> common::Flag {
    common::Flag {
        plan_type: i32::from(f.plan_type),
        start_date: f.start_date.to_string(),
        end_date: model::fmt_date(f.end_date),
        expected_delivery_date: model::fmt_date(f.expected_delivery_date),
        council_code: f.council_code.clone(),
        council_name: councils::name_of(&f.council_code),
        contact: Some(f.contact.to_proto()),
        ended: f.end_date.is_some_and(|e| e < day),
    }
}
