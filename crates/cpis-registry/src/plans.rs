//! The operations on one council's plans (`UpsertPlan`, `EndPlan`,
//! `DeletePlan`, `GetPlan`, `ListPlans`): validation, the optimistic version
//! check, and one transaction each. A council only ever reaches its own
//! plans: another council's is `NOT_FOUND`.

use crate::demographics::{NumberStatus, INACTIVE_WARNING, SUPERSEDED_REASON};
use crate::model::{self, validate_plan, StoredPlan};
use crate::{pg, store, today, Registry};
use cpis_domain::validate::Violations;
use cpis_proto::registry::v1 as pb;
use cpis_runtime::{ApiError, FieldViolation};

/// Who a council's change is recorded as.
fn author(council: &str) -> String {
    format!("council/{council}")
}

/// Encodes a keyset position as an opaque page token.
fn encode_token(reference: &str) -> String {
    reference.bytes().map(|b| format!("{b:02x}")).collect()
}

/// Decodes a page token made by [`encode_token`].
fn decode_token(token: &str) -> Option<String> {
    if !token.len().is_multiple_of(2) || token.len() > 2 * model::MAX_LOCAL_REFERENCE * 4 {
        return None;
    }
    let bytes: Option<Vec<u8>> =
        (0..token.len()).step_by(2).map(|i| u8::from_str_radix(token.get(i..i + 2)?, 16).ok()).collect();
    String::from_utf8(bytes?).ok()
}

/// A valid `local_reference`, or the field's violation.
fn reference(value: &str) -> Result<(), ApiError> {
    let mut v = Violations::new();
    model::local_reference(&mut v, "local_reference", value);
    Ok(v.finish()?)
}

impl Registry {
    /// `UpsertPlan`: creates the plan or changes it (when `expected_version`
    /// is 0 or matches); an identical plan changes nothing.
    pub(crate) async fn upsert(
        &self,
        council: &str,
        req: pb::UpsertPlanRequest,
    ) -> Result<(pb::Plan, Vec<pb::PlanWarning>), ApiError> {
        let input = validate_plan(req.plan.as_ref(), "plan", today()).map_err(|v| match v.finish() {
            Err(e) => e.into(),
            Ok(()) => ApiError::internal("validation failed without a reason"),
        })?;
        if req.expected_version < 0 {
            return Err(ApiError::invalid("expected_version", "must not be negative"));
        }
        let by = author(council);
        // A concurrent first insert of the same reference loses the unique
        // index race; the retry then sees the winner's row.
        for _attempt in 0..3 {
            let mut client = self.council_db(council).await?;
            let tx = client.transaction().await?;
            store::lock_council(&*tx, council, false).await?;
            let changed = crate::store::changes::of_numbers(&*tx, &[input.nhs_number.as_str()]).await?;
            let warnings = match NumberStatus::of(changed.values().next()) {
                NumberStatus::Superseded { replacement } => {
                    return Err(ApiError::InvalidWithInfo {
                        violation: FieldViolation::new("plan.nhs_number", SUPERSEDED_REASON),
                        reason: "SUPERSEDED_NHS_NUMBER",
                        metadata: vec![("replacement_nhs_number".into(), replacement)],
                    })
                }
                NumberStatus::Inactive => vec![pb::PlanWarning {
                    row: 0,
                    local_reference: input.local_reference.clone(),
                    field: "plan.nhs_number".into(),
                    reason: INACTIVE_WARNING.into(),
                }],
                NumberStatus::Current => Vec::new(),
            };
            let stored = match store::find_plan(&*tx, council, &input.local_reference, true).await? {
                None => {
                    if req.expected_version != 0 {
                        return Err(ApiError::Aborted(format!(
                            "plan does not exist (expected_version {} given)",
                            req.expected_version
                        )));
                    }
                    let Some(p) = store::insert_plan(&*tx, council, &input, &by).await? else {
                        continue;
                    };
                    p
                }
                Some(current) => {
                    if req.expected_version != 0 && req.expected_version != current.version {
                        return Err(ApiError::Aborted(format!(
                            "plan is at version {}, not the expected {}",
                            current.version, req.expected_version
                        )));
                    }
                    match store::update_plan(&*tx, current.plan_id, &input, &by).await? {
                        Some(p) => p,
                        None => return Ok((marked(&*tx, current.to_proto()).await?, warnings)),
                    }
                }
            };
            let plan = marked(&*tx, stored.to_proto()).await?;
            tx.commit().await?;
            return Ok((plan, warnings));
        }
        Err(ApiError::Contention("concurrent changes to the same plan; retry".into()))
    }

    /// `EndPlan`: sets the end date (not before the start); the same end
    /// date again changes nothing.
    pub(crate) async fn end(&self, council: &str, req: pb::EndPlanRequest) -> Result<pb::Plan, ApiError> {
        let mut v = Violations::new();
        model::local_reference(&mut v, "local_reference", &req.local_reference);
        let end = v.date("end_date", &req.end_date);
        v.finish()?;
        let end = end.ok_or_else(|| ApiError::invalid("end_date", "is required"))?;
        let mut client = self.council_db(council).await?;
        let tx = client.transaction().await?;
        store::lock_council(&*tx, council, false).await?;
        let current =
            store::find_plan(&*tx, council, &req.local_reference, true).await?.ok_or(ApiError::NotFound("plan"))?;
        if end < current.input.start_date {
            return Err(ApiError::invalid("end_date", "must not be before the plan's start_date"));
        }
        if current.input.end_date == Some(end) {
            return marked(&*tx, current.to_proto()).await;
        }
        let plan = store::set_end_date(&*tx, current.plan_id, end, &author(council)).await?;
        let plan = marked(&*tx, plan.to_proto()).await?;
        tx.commit().await?;
        Ok(plan)
    }

    /// `DeletePlan`: marks the plan entered in error; it is never shown again.
    pub(crate) async fn delete(&self, council: &str, req: pb::DeletePlanRequest) -> Result<(), ApiError> {
        reference(&req.local_reference)?;
        let mut client = self.council_db(council).await?;
        let tx = client.transaction().await?;
        store::lock_council(&*tx, council, false).await?;
        let current =
            store::find_plan(&*tx, council, &req.local_reference, true).await?.ok_or(ApiError::NotFound("plan"))?;
        store::mark_deleted(&*tx, current.plan_id, &author(council)).await?;
        tx.commit().await?;
        Ok(())
    }

    /// `GetPlan`: one of the council's live plans.
    pub(crate) async fn get(&self, council: &str, req: pb::GetPlanRequest) -> Result<pb::Plan, ApiError> {
        reference(&req.local_reference)?;
        let client = self.council_db(council).await?;
        let plan = store::find_plan(pg(&client), council, &req.local_reference, false)
            .await?
            .ok_or(ApiError::NotFound("plan"))?;
        marked(pg(&client), plan.to_proto()).await
    }

    /// `ListPlans`: one page of the council's plans, by reference.
    pub(crate) async fn list(
        &self,
        council: &str,
        req: pb::ListPlansRequest,
    ) -> Result<pb::ListPlansResponse, ApiError> {
        let mut v = Violations::new();
        let limit = v.page_size("page_size", req.page_size, 100, 1000);
        let after = if req.page_token.is_empty() {
            Some(String::new())
        } else {
            let decoded = decode_token(&req.page_token);
            if decoded.is_none() {
                v.add("page_token", "is not a token returned by ListPlans");
            }
            decoded
        };
        v.finish()?;
        let after = after.unwrap_or_default();
        let client = self.council_db(council).await?;
        // One row more than asked tells whether another page follows.
        let mut plans = store::list_plans(pg(&client), council, &after, req.include_ended, today(), limit + 1).await?;
        let next_page_token = if plans.len() as i64 > limit {
            plans.truncate(limit as usize);
            plans.last().map(|p| encode_token(&p.input.local_reference)).unwrap_or_default()
        } else {
            String::new()
        };
        let mut plans: Vec<pb::Plan> = plans.iter().map(StoredPlan::to_proto).collect();
        crate::demographics::mark(pg(&client), &mut plans).await?;
        Ok(pb::ListPlansResponse { plans, next_page_token })
    }
}

/// `plan` with its number's change, if any (the council's action is needed).
async fn marked(client: &impl tokio_postgres::GenericClient, plan: pb::Plan) -> Result<pb::Plan, ApiError> {
    let mut plans = [plan];
    crate::demographics::mark(client, &mut plans).await?;
    let [plan] = plans;
    Ok(plan)
}
