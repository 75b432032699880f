//! NHS number changes from the national demographics service's change feed
//! (`RecordNhsNumberChange`, for the `demographics` service identity only):
//! the Registry records the change (it then flags a superseded number's
//! plans on the replacement too, and refuses uploads of the old number) and
//! answers which plans are on the number; here every council holding one is
//! alerted once, through the outbox, in its ordered stream, under the
//! event's id: a repeat of the event changes nothing and alerts nobody again.
//!
//! The feed's follower gets its answer only once both the change and the
//! alerts are stored, so it retries until then; every retry gives the same
//! plans (the Registry keeps the first answer) and the same alerts.

use crate::store::keyed::{self as store, KeyedAlert};
use cpis_domain::demographics::{self, ChangeFields};
use cpis_domain::validate::Violations;
use cpis_proto::attendance::v1::{RecordNhsNumberChangeRequest, RecordNhsNumberChangeResponse};
use cpis_proto::common::v1::NhsNumberChange;
use cpis_proto::notification::v1::{AlertKind, AlertPriority, NhsNumberNotice, PublishAlertRequest};
use cpis_proto::registry::v1 as registry;
use cpis_proto::registry::v1::registry_service_client::RegistryServiceClient;
use cpis_runtime::db::DbPool;
use cpis_runtime::ApiError;
use prost::Message as _;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;
use tonic::transport::Channel;

/// The longest the Registry may take to record a change.
const REGISTRY_TIMEOUT: Duration = Duration::from_secs(10);

/// The operation and what it runs on.
#[derive(Debug, Clone)]
pub struct NhsNumberChanges {
    pool: DbPool,
    registry: RegistryServiceClient<Channel>,
    wake_relay: Arc<Notify>,
}

impl NhsNumberChanges {
    /// Changes recorded at the Registry over `registry`, alerts queued in `pool`.
    pub fn new(pool: DbPool, registry: Channel, wake_relay: Arc<Notify>) -> Self {
        Self { pool, registry: RegistryServiceClient::new(registry), wake_relay }
    }

    /// Records one change and alerts the councils with plans on the number.
    pub async fn record(&self, req: &RecordNhsNumberChangeRequest) -> Result<RecordNhsNumberChangeResponse, ApiError> {
        let change = req.change.clone().unwrap_or_default();
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
        tracing::Span::current().record("event_id", valid.event_id.as_str());

        let mut request = tonic::Request::new(registry::RecordNhsNumberChangeRequest { change: Some(change.clone()) });
        request.set_timeout(REGISTRY_TIMEOUT);
        cpis_runtime::telemetry::inject_context(&mut request);
        let mut client = self.registry.clone();
        let answer = match tokio::time::timeout(REGISTRY_TIMEOUT, client.record_nhs_number_change(request)).await {
            Ok(Ok(answer)) => answer.into_inner(),
            Ok(Err(status)) => return Err(from_registry(status)),
            Err(_) => return Err(ApiError::Unavailable("the Registry did not answer in time; retry".into())),
        };
        let alerts = notices(&change, &answer.plans);
        let mut db = self.pool.get().await?;
        let tx = db.transaction().await?;
        let traceparent = cpis_runtime::telemetry::current_traceparent();
        let queued = store::queue(&tx, &alerts, traceparent.as_deref()).await?;
        tx.commit().await?;
        if queued > 0 {
            self.wake_relay.notify_one();
        }
        Ok(RecordNhsNumberChangeResponse {
            plans: i32::try_from(answer.plans.len()).unwrap_or(i32::MAX),
            councils_alerted: i32::try_from(alerts.len()).unwrap_or(i32::MAX),
            repeated: answer.repeated && queued == 0,
        })
    }
}

/// One alert per council with a plan on the changed number (its first plan's
/// reference and type on the alert, every reference in the notice).
pub fn notices(change: &NhsNumberChange, plans: &[registry::AffectedPlan]) -> Vec<KeyedAlert> {
    let kind = if change.kind == demographics::SUPERSEDED {
        AlertKind::NhsNumberSuperseded
    } else {
        AlertKind::NhsNumberInactive
    };
    let mut councils: Vec<&str> = plans.iter().map(|p| p.council_code.as_str()).collect();
    councils.sort_unstable();
    councils.dedup();
    councils
        .into_iter()
        .filter_map(|council| {
            let theirs: Vec<&registry::AffectedPlan> = plans.iter().filter(|p| p.council_code == council).collect();
            let first = theirs.first()?;
            let notice = NhsNumberNotice {
                kind: change.kind,
                replacement_nhs_number: change.replacement_nhs_number.clone(),
                effective_date: change.effective_date.clone(),
                event_id: change.event_id.clone(),
                local_references: theirs.iter().map(|p| p.local_reference.clone()).collect(),
            };
            let request = PublishAlertRequest {
                council_code: council.to_string(),
                nhs_number: change.nhs_number.clone(),
                plan_type: first.plan_type,
                local_reference: first.local_reference.clone(),
                priority: AlertPriority::Routine as i32,
                kind: kind as i32,
                nhs_number_change: Some(notice),
                ..Default::default()
            };
            Some(KeyedAlert {
                council_code: council.to_string(),
                nhs_number: change.nhs_number.clone(),
                plan_type: first.plan_type,
                local_reference: first.local_reference.clone(),
                kind: kind as i32,
                priority: AlertPriority::Routine as i32,
                key: format!("nhs-number:{}", change.event_id),
                request: request.encode_to_vec(),
            })
        })
        .collect()
}

/// The Registry's answer as ours: its refusals of the change pass through,
/// anything else is a dependency's trouble (retry).
fn from_registry(status: tonic::Status) -> ApiError {
    use tonic::Code;
    match status.code() {
        Code::InvalidArgument => ApiError::invalid("change", status.message()),
        Code::FailedPrecondition => ApiError::FailedPrecondition(status.message().to_string()),
        Code::AlreadyExists | Code::Aborted => ApiError::Aborted(status.message().to_string()),
        _ => ApiError::Unavailable(format!("the Registry answered {:?}; retry", status.code())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_council_with_a_plan_on_the_number_gets_one_notice_listing_its_plans() {
        let change = NhsNumberChange {
            nhs_number: "9990000018".into(),
            kind: demographics::SUPERSEDED,
            replacement_nhs_number: "9990000026".into(),
            effective_date: "2026-11-30".into(),
            event_id: "ev-7".into(),
        };
        let plan = |council: &str, reference: &str| registry::AffectedPlan {
            council_code: council.into(),
            local_reference: reference.into(),
            plan_type: 1,
        };
        let plans = [plan("E08000012", "LIV-1"), plan("E08000003", "MCR-1"), plan("E08000003", "MCR-2")];
        let alerts = notices(&change, &plans);
        let councils: Vec<&str> = alerts.iter().map(|a| a.council_code.as_str()).collect();
        assert_eq!(councils, ["E08000003", "E08000012"]);
        assert!(alerts.iter().all(|a| a.key == "nhs-number:ev-7" && a.kind == AlertKind::NhsNumberSuperseded as i32));
        let sent = PublishAlertRequest::decode(alerts[0].request.as_slice()).unwrap();
        assert_eq!(sent.nhs_number_change.unwrap().local_references, ["MCR-1", "MCR-2"]);
        assert_eq!(sent.local_reference, "MCR-1");
    }
}
