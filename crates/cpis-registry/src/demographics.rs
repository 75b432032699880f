//! NHS number changes at the Registry: `RecordNhsNumberChange` (from the
//! Attendance service, which alerts the councils), and what a change means
//! for the plans on the number. A superseded number's plans flag on the
//! replacement as well (the look-ups follow it) until the council updates
//! them; a plan sent with a superseded number is refused, naming the
//! replacement in a field of its own (never in a message); one sent with an
//! inactive number is accepted with a warning; every plan shows its
//! number's change (`Plan.nhs_number_change`) for the council's action.

use crate::store::changes::{self, StoredChange};
use crate::{today, Registry};
use cpis_domain::demographics::{self, ChangeFields, INACTIVE, SUPERSEDED};
use cpis_domain::validate::Violations;
use cpis_proto::common::v1 as common;
use cpis_proto::registry::v1 as pb;
use cpis_runtime::ApiError;
use tokio_postgres::GenericClient;

impl Registry {
    /// `RecordNhsNumberChange`: the change recorded once per event id, and
    /// the plans in scope on the number when it was first recorded.
    pub(crate) async fn record_nhs_number_change(
        &self,
        req: pb::RecordNhsNumberChangeRequest,
    ) -> Result<pb::RecordNhsNumberChangeResponse, ApiError> {
        let change = req.change.unwrap_or_default();
        let mut v = Violations::new();
        let fields = ChangeFields {
            nhs_number: &change.nhs_number,
            kind: change.kind,
            replacement: &change.replacement_nhs_number,
            effective_date: &change.effective_date,
            event_id: &change.event_id,
        };
        let valid = demographics::check(&mut v, "change", fields);
        v.finish()?;
        let valid = valid.ok_or_else(|| ApiError::internal("validation passed without values"))?;
        let client = self.pool.get().await?;
        let (stored, new) = changes::record(&**client, &valid, today(), self.config.unborn_scope_days).await?;
        let same = stored.nhs_number == valid.nhs_number.as_str()
            && stored.kind == valid.kind.as_str()
            && stored.replacement.as_deref() == valid.kind.replacement().map(|n| n.as_str())
            && stored.effective_date == valid.effective_date;
        if !same {
            return Err(ApiError::invalid("change.event_id", "was recorded before for a different change"));
        }
        Ok(pb::RecordNhsNumberChangeResponse {
            plans: stored
                .affected
                .iter()
                .map(|a| pb::AffectedPlan {
                    council_code: a.council_code.clone(),
                    local_reference: a.local_reference.clone(),
                    plan_type: i32::from(a.plan_type),
                })
                .collect(),
            repeated: !new,
        })
    }
}

/// A change as the contract carries it.
pub fn to_proto(c: &StoredChange) -> common::NhsNumberChange {
    common::NhsNumberChange {
        nhs_number: c.nhs_number.clone(),
        kind: if c.kind == "superseded" { SUPERSEDED } else { INACTIVE },
        replacement_nhs_number: c.replacement.clone().unwrap_or_default(),
        effective_date: c.effective_date.to_string(),
        event_id: c.event_id.clone(),
    }
}

/// Sets each plan's `nhs_number_change` from the changes of its number.
pub async fn mark(client: &impl GenericClient, plans: &mut [pb::Plan]) -> Result<(), ApiError> {
    let numbers: Vec<&str> = plans.iter().map(|p| p.nhs_number.as_str()).collect();
    let found = changes::of_numbers(client, &numbers).await?;
    for plan in plans.iter_mut() {
        plan.nhs_number_change = found.get(&plan.nhs_number).map(to_proto);
    }
    Ok(())
}

/// What the Registry says of a plan row with this number: refused when it
/// was superseded (the replacement given apart from the message), a warning
/// when it was made inactive, nothing otherwise.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NumberStatus {
    /// Nothing known against the number.
    Current,
    /// Superseded: send the row with the replacement.
    Superseded {
        /// The replacement number.
        replacement: String,
    },
    /// Made inactive: accepted, but the council should check the child's number.
    Inactive,
}

impl NumberStatus {
    /// The status of a number from its latest change.
    pub fn of(change: Option<&StoredChange>) -> Self {
        match change {
            Some(c) if c.kind == "superseded" => {
                NumberStatus::Superseded { replacement: c.replacement.clone().unwrap_or_default() }
            }
            Some(_) => NumberStatus::Inactive,
            None => NumberStatus::Current,
        }
    }
}

/// The reason given for a row with a superseded number (the national
/// result "superseded NHS number"); the replacement goes in its own field.
pub const SUPERSEDED_REASON: &str =
    "superseded NHS number: the national demographics service replaced it; send the row with the replacement (replacement_nhs_number)";

/// The warning given for a row with an inactive number.
pub const INACTIVE_WARNING: &str =
    "inactive NHS number: the national demographics service made it inactive; the plan is accepted and flags, but check the child's current number";
