//! "Was not brought": a scheduled-care setting records that a person missed
//! an appointment. For a flagged person the record is kept (in the access
//! audit, marked `was_not_brought`) and each responsible council is alerted
//! through the outbox, with the count of appointments missed in the 90 days
//! up to this one; from the second, the alert carries the raised priority.
//! For anyone else nothing is stored, and the answer is the same: the
//! setting learns nothing about flags from it.

use crate::convert;
use crate::model::RecordedViewer;
use crate::registry::{CallerDeadline, FlagLookup};
use crate::rules;
use crate::store::keyed::{self as store, KeyedAlert, Missed};
use chrono::{DateTime, TimeDelta, Utc};
use cpis_domain::time::{from_timestamp, to_timestamp};
use cpis_domain::user::{Access, Viewer};
use cpis_domain::validate::{NhsNumber, Violations};
use cpis_proto::attendance::v1::{RecordWasNotBroughtRequest, RecordWasNotBroughtResponse};
use cpis_proto::common::v1::SettingType;
use cpis_proto::notification::v1::{AlertKind, AlertPriority, MissedAppointment, PublishAlertRequest};
use cpis_runtime::db::DbPool;
use cpis_runtime::ApiError;
use prost::Message as _;
use std::sync::Arc;
use tokio::sync::Notify;

/// How far back a missed appointment may be recorded.
pub const MAX_AGE: TimeDelta = TimeDelta::days(7);
/// The window of missed appointments an alert counts.
pub const COUNT_WINDOW: TimeDelta = TimeDelta::days(90);
/// Longest accepted `request_id`, in characters.
const MAX_ID_CHARS: usize = 128;

/// A record that passed validation.
#[derive(Debug)]
pub struct ValidMissed {
    /// The person.
    pub nhs_number: NhsNumber,
    /// When the appointment was.
    pub appointment_at: DateTime<Utc>,
    /// The kind of setting (scheduled care).
    pub setting_type: SettingType,
}

/// Checks every field, reporting all violations at once: the appointment is
/// in the past (a few minutes of clock skew allowed) and at most 7 days back.
pub fn validate(req: &RecordWasNotBroughtRequest, now: DateTime<Utc>) -> Result<ValidMissed, ApiError> {
    let mut v = Violations::new();
    v.text("request_id", &req.request_id, MAX_ID_CHARS);
    let nhs_number = v.nhs_number("nhs_number", &req.nhs_number);
    let appointment_at = match req.appointment_at.as_ref().map(from_timestamp) {
        None => {
            v.add("appointment_at", "is required");
            None
        }
        Some(None) => {
            v.add("appointment_at", "must be a valid timestamp");
            None
        }
        Some(Some(t)) if t > now + TimeDelta::minutes(5) => {
            v.add("appointment_at", "must be in the past: a missed appointment is recorded after it");
            None
        }
        Some(Some(t)) if t < now - MAX_AGE => {
            v.add("appointment_at", "must be at most 7 days ago");
            None
        }
        Some(Some(t)) => Some(rules::stored_precision(t)),
    };
    let setting_type = crate::checkin::setting_type(
        &mut v,
        req.setting_type,
        true,
        "is an unscheduled-care setting: missed appointments are scheduled care's",
    );
    v.finish()?;
    let (Some(nhs_number), Some(appointment_at), Some(setting_type)) = (nhs_number, appointment_at, setting_type)
    else {
        return Err(ApiError::internal("validation passed without values"));
    };
    Ok(ValidMissed { nhs_number, appointment_at, setting_type })
}

/// The priority of an alert for the `count`-th missed appointment in the
/// window: raised (as for repeat attendance) from the second.
pub fn priority(count: i64) -> AlertPriority {
    if count >= 2 {
        AlertPriority::RepeatAttendance
    } else {
        AlertPriority::Routine
    }
}

/// The operation and what it runs on.
#[derive(Debug, Clone)]
pub struct MissedAppointments {
    pool: DbPool,
    flags: FlagLookup,
    wake_relay: Arc<Notify>,
}

impl MissedAppointments {
    /// Records in `pool`, looking flags up with `flags`, waking the relay.
    pub fn new(pool: DbPool, flags: FlagLookup, wake_relay: Arc<Notify>) -> Self {
        Self { pool, flags, wake_relay }
    }

    /// `RecordWasNotBrought` from the setting `setting_code`, recorded by `viewer`.
    pub async fn record(
        &self,
        setting_code: &str,
        viewer: &Viewer,
        req: &RecordWasNotBroughtRequest,
        deadline: CallerDeadline,
    ) -> Result<RecordWasNotBroughtResponse, ApiError> {
        crate::admitted::may(viewer, Access::WasNotBrought)?;
        let valid = validate(req, Utc::now())?;
        tracing::Span::current().record("request_id", req.request_id.as_str());
        let found = self.flags.lookup(&valid.nhs_number, None, deadline).await?;
        if found.flags.is_empty() {
            // Nothing about the person is stored, and the answer is the same.
            return Ok(RecordWasNotBroughtResponse::default());
        }
        let targets = rules::alert_targets(&found);
        let councils = rules::flag_councils(&found);
        let recorded = RecordedViewer::from(viewer);
        let nhs_number = valid.nhs_number.as_str();
        let mut db = self.pool.get().await?;
        let tx = db.transaction().await?;
        store::lock_person(&tx, nhs_number).await?;
        let missed = Missed {
            nhs_number,
            setting_code,
            setting_type: valid.setting_type as i32,
            appointment_at: valid.appointment_at,
            viewer: &recorded,
            council_codes: &councils,
        };
        let Some(record_id) = store::record_missed(&tx, &missed).await? else {
            // Recorded before: nothing new, no second alert.
            tx.rollback().await?;
            return Ok(RecordWasNotBroughtResponse::default());
        };
        let count =
            store::count_missed(&tx, nhs_number, valid.appointment_at - COUNT_WINDOW, valid.appointment_at).await?;
        let detail = MissedAppointment {
            record_id: record_id.to_string(),
            setting_code: setting_code.to_string(),
            setting_type: valid.setting_type as i32,
            appointment_at: Some(to_timestamp(valid.appointment_at)),
            missed_in_last_90_days: i32::try_from(count).unwrap_or(i32::MAX),
        };
        let priority = priority(count) as i32;
        let alerts: Vec<KeyedAlert> = targets
            .iter()
            .map(|t| {
                let request = PublishAlertRequest {
                    council_code: t.council_code.clone(),
                    nhs_number: nhs_number.to_string(),
                    plan_type: t.plan_type,
                    local_reference: t.local_reference.clone(),
                    priority,
                    viewer: Some(convert::viewer(&recorded)),
                    kind: AlertKind::WasNotBrought as i32,
                    was_not_brought: Some(detail.clone()),
                    ..Default::default()
                };
                KeyedAlert {
                    council_code: t.council_code.clone(),
                    nhs_number: nhs_number.to_string(),
                    plan_type: t.plan_type,
                    local_reference: t.local_reference.clone(),
                    kind: AlertKind::WasNotBrought as i32,
                    priority,
                    key: format!("wnb:{record_id}"),
                    request: request.encode_to_vec(),
                }
            })
            .collect();
        let traceparent = cpis_runtime::telemetry::current_traceparent();
        let queued = store::queue(&tx, &alerts, traceparent.as_deref()).await?;
        tx.commit().await?;
        if queued > 0 {
            self.wake_relay.notify_one();
        }
        Ok(RecordWasNotBroughtResponse::default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(at: DateTime<Utc>) -> RecordWasNotBroughtRequest {
        RecordWasNotBroughtRequest {
            request_id: "wnb-1".into(),
            nhs_number: "9990000018".into(),
            appointment_at: Some(to_timestamp(at)),
            setting_type: SettingType::GpPractice as i32,
        }
    }

    fn fields(e: ApiError) -> Vec<String> {
        match e {
            ApiError::InvalidArgument(v) => v.into_iter().map(|v| v.field).collect(),
            other => panic!("expected INVALID_ARGUMENT, got {other:?}"),
        }
    }

    #[test]
    fn the_appointment_is_in_the_past_and_at_most_seven_days_back() {
        let now = Utc::now();
        assert!(validate(&request(now - TimeDelta::hours(2)), now).is_ok());
        assert!(validate(&request(now - TimeDelta::days(7) + TimeDelta::minutes(1)), now).is_ok());
        assert_eq!(fields(validate(&request(now + TimeDelta::hours(1)), now).unwrap_err()), ["appointment_at"]);
        assert_eq!(fields(validate(&request(now - TimeDelta::days(8)), now).unwrap_err()), ["appointment_at"]);
        let unscheduled =
            RecordWasNotBroughtRequest { setting_type: SettingType::EmergencyDepartment as i32, ..request(now) };
        assert_eq!(fields(validate(&unscheduled, now).unwrap_err()), ["setting_type"]);
        assert_eq!(
            fields(validate(&RecordWasNotBroughtRequest::default(), now).unwrap_err()),
            ["request_id", "nhs_number", "appointment_at", "setting_type"]
        );
    }

    #[test]
    fn the_second_missed_appointment_raises_the_priority() {
        assert_eq!(priority(1), AlertPriority::Routine);
        assert_eq!(priority(2), AlertPriority::RepeatAttendance);
        assert_eq!(priority(5), AlertPriority::RepeatAttendance);
    }
}
