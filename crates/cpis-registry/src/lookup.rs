//! Flag look-ups for the Attendance service: `LookupFlags` for one person,
//! `LookupFlagsBatch` for the look-ups of concurrent check-ins in one indexed
//! query. Both use the connections the council gate leaves free
//! ([`crate::share`]), so council work never starves a front desk.

use crate::{councils, model, store, today, Registry};
use chrono::NaiveDate;
use cpis_domain::validate::Violations;
use cpis_proto::common::v1 as common;
use cpis_proto::registry::v1 as pb;
use cpis_runtime::ApiError;

/// Most look-ups one `LookupFlagsBatch` call may carry.
pub const MAX_LOOKUP_BATCH: usize = 256;

impl Registry {
    /// A connection for a look-up: not through the council gate (the
    /// connections it leaves free are the look-ups' reserve), waiting less
    /// than Attendance's deadline for the call.
    async fn lookup_db(&self) -> Result<deadpool_postgres::Client, ApiError> {
        let timeouts = deadpool_postgres::Timeouts { wait: Some(self.config.lookup_wait), ..self.pool.timeouts() };
        Ok(self.pool.timeout_get(&timeouts).await?)
    }

    /// `LookupFlags`: every flag in scope for one person on one day.
    pub(crate) async fn lookup(&self, req: pb::LookupFlagsRequest) -> Result<pb::LookupFlagsResponse, ApiError> {
        let mut v = Violations::new();
        let nhs = v.nhs_number("nhs_number", &req.nhs_number);
        let day = v.optional_date("on_date", &req.on_date);
        v.finish().map_err(ApiError::from)?;
        let (Some(nhs), Some(day)) = (nhs, day) else {
            return Err(ApiError::internal("validated fields missing"));
        };
        let day = day.unwrap_or_else(today);
        let client = self.lookup_db().await?;
        let found = store::lookup_flags(&client, nhs.as_str(), day, self.config.unborn_scope_days).await?;
        Ok(flags_response(found, day))
    }

    /// `LookupFlagsBatch`: each look-up answered as `LookupFlags` would, in
    /// one query; a bad look-up refuses the call, naming `lookups[i].<field>`.
    pub(crate) async fn lookup_batch(
        &self,
        req: pb::LookupFlagsBatchRequest,
    ) -> Result<pb::LookupFlagsBatchResponse, ApiError> {
        if req.lookups.is_empty() || req.lookups.len() > MAX_LOOKUP_BATCH {
            let held = req.lookups.len();
            return Err(ApiError::invalid(
                "lookups",
                format!("must hold 1 to {MAX_LOOKUP_BATCH} (this one holds {held})"),
            ));
        }
        let mut v = Violations::new();
        let mut valid = Vec::with_capacity(req.lookups.len());
        for (i, lookup) in req.lookups.iter().enumerate() {
            let nhs = v.nhs_number(&format!("lookups[{i}].nhs_number"), &lookup.nhs_number);
            let day = v.optional_date(&format!("lookups[{i}].on_date"), &lookup.on_date);
            if let (Some(nhs), Some(day)) = (nhs, day) {
                valid.push((nhs, day.unwrap_or_else(today)));
            }
        }
        v.finish().map_err(ApiError::from)?;
        let asked: Vec<(&str, NaiveDate)> = valid.iter().map(|(n, d)| (n.as_str(), *d)).collect();
        let client = self.lookup_db().await?;
        let found = store::lookup_flags_batch(&client, &asked, self.config.unborn_scope_days).await?;
        Ok(pb::LookupFlagsBatchResponse {
            results: found.into_iter().zip(&asked).map(|(f, (_, day))| flags_response(f, *day)).collect(),
        })
    }
}

/// The answer to one look-up: the flags, and their plans' case references.
fn flags_response(found: Vec<store::FoundFlag>, day: NaiveDate) -> pb::LookupFlagsResponse {
    pb::LookupFlagsResponse {
        flags: found.iter().map(|f| flag_of(f, day)).collect(),
        local_references: found.into_iter().map(|f| f.local_reference).collect(),
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
