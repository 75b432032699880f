//! `CheckIn`: validate, replay an earlier answer, look the flags up, and
//! record a flagged arrival (episode, access audit, alerts) in one
//! transaction. An unflagged person leaves no trace.

use crate::registry::CallerDeadline;
use crate::settings::ArrivalWindow;
use crate::store::{self, AlertTarget, FlaggedCheckIn, Recorded};
use crate::Attendance;
use chrono::{DateTime, Utc};
use cpis_domain::time::from_timestamp;
use cpis_domain::validate::{NhsNumber, Violations};
use cpis_proto::attendance::v1::{CheckInRequest, CheckInResponse};
use cpis_proto::common::v1::SettingType;
use cpis_proto::registry::v1::LookupFlagsResponse;
use cpis_runtime::ApiError;
use prost::Message;
use sha2::{Digest, Sha256};

/// Longest accepted `request_id` and `user_id`, in characters.
const MAX_ID_CHARS: usize = 128;

/// A check-in request that passed validation.
#[derive(Debug)]
pub struct ValidCheckIn {
    /// The client's idempotency key.
    pub request_id: String,
    /// The person.
    pub nhs_number: NhsNumber,
    /// When they arrived.
    pub arrived_at: DateTime<Utc>,
    /// The kind of setting.
    pub setting_type: SettingType,
    /// Who is shown the answer.
    pub user_id: String,
    /// SHA-256 of the request body without its request_id: a replay must
    /// match it.
    pub fingerprint: Vec<u8>,
}

/// Checks every field, reporting all violations at once.
pub fn validate(req: &CheckInRequest, now: DateTime<Utc>, window: ArrivalWindow) -> Result<ValidCheckIn, ApiError> {
    let mut v = Violations::new();
    v.text("request_id", &req.request_id, MAX_ID_CHARS);
    let nhs_number = v.nhs_number("nhs_number", &req.nhs_number);
    let arrived_at = match &req.arrived_at {
        None => {
            v.add("arrived_at", "is required");
            None
        }
        Some(ts) => match from_timestamp(ts).filter(|t| t.timestamp() >= EARLIEST_TIMESTAMP) {
            None => {
                v.add("arrived_at", "must be a valid timestamp");
                None
            }
            Some(t) if t > now + window.future => {
                v.add("arrived_at", format!("must not be more than {} in the future", minutes(window.future)));
                None
            }
            Some(t) if t < now - window.past => {
                v.add("arrived_at", format!("must not be more than {} in the past", minutes(window.past)));
                None
            }
            Some(t) => Some(t),
        },
    };
    let setting_type = match SettingType::try_from(req.setting_type) {
        Ok(SettingType::Unspecified) => {
            v.add("setting_type", "is required");
            None
        }
        Ok(t) if is_scheduled(t) => {
            v.add("setting_type", "is a scheduled-care setting: scheduled care makes a silent read (SilentRead)");
            None
        }
        Ok(t) => Some(t),
        Err(_) => {
            v.add("setting_type", "is not a known setting type");
            None
        }
    };
    v.text("user_id", &req.user_id, MAX_ID_CHARS);
    v.finish()?;
    let (Some(nhs_number), Some(arrived_at), Some(setting_type)) = (nhs_number, arrived_at, setting_type) else {
        return Err(ApiError::internal("validation passed without values"));
    };
    Ok(ValidCheckIn {
        request_id: req.request_id.clone(),
        nhs_number,
        arrived_at,
        setting_type,
        user_id: req.user_id.clone(),
        fingerprint: fingerprint(req),
    })
}

/// A duration as people say it ("72 hours", "5 minutes").
fn minutes(d: chrono::TimeDelta) -> String {
    let m = d.num_minutes();
    if m % 60 == 0 {
        format!("{} hours", m / 60)
    } else {
        format!("{m} minutes")
    }
}

/// True for the scheduled-care setting types (a silent read), false for
/// unscheduled care (a notifying read, `CheckIn`).
pub fn is_scheduled(t: SettingType) -> bool {
    (t as i32) >= SettingType::GpPractice as i32
}

/// The start of the protobuf `Timestamp` range (0001-01-01T00:00:00Z).
const EARLIEST_TIMESTAMP: i64 = -62_135_596_800;

/// SHA-256 of the request's encoding without its request_id.
fn fingerprint(req: &CheckInRequest) -> Vec<u8> {
    let body = CheckInRequest { request_id: String::new(), ..req.clone() };
    Sha256::digest(body.encode_to_vec()).to_vec()
}

/// One council per distinct council holding a flag, in the Registry's order,
/// with the case reference of its plan (an active plan before an ended one).
pub fn alert_targets(found: &LookupFlagsResponse) -> Vec<AlertTarget> {
    let mut targets: Vec<(AlertTarget, bool)> = Vec::new();
    for (i, flag) in found.flags.iter().enumerate() {
        let target = AlertTarget {
            council_code: flag.council_code.clone(),
            plan_type: flag.plan_type,
            local_reference: found.local_references.get(i).cloned().unwrap_or_default(),
        };
        match targets.iter_mut().find(|(t, _)| t.council_code == flag.council_code) {
            // The council's ended plan gives way to its active one.
            Some(existing) if existing.1 && !flag.ended => *existing = (target, flag.ended),
            Some(_) => {}
            None => targets.push((target, flag.ended)),
        }
    }
    targets.into_iter().map(|(t, _)| t).collect()
}

/// Handles one check-in from the setting `setting_code`.
pub async fn check_in(
    svc: &Attendance,
    setting_code: &str,
    req: CheckInRequest,
    deadline: CallerDeadline,
) -> Result<CheckInResponse, ApiError> {
    let valid = validate(&req, Utc::now(), svc.config().arrival_window)?;
    check_in_valid(svc, setting_code, valid, deadline).await
}

/// A check-in arriving now, for callers that do not state an arrival time
/// (the FHIR notifying read). Its replay key ignores the arrival time, so a
/// retry with the same `request_id` gets the first answer again.
pub async fn check_in_now(
    svc: &Attendance,
    setting_code: &str,
    req: CheckInRequest,
    deadline: CallerDeadline,
) -> Result<CheckInResponse, ApiError> {
    let now = Utc::now();
    let timed = CheckInRequest { arrived_at: Some(cpis_domain::time::to_timestamp(now)), ..req.clone() };
    let mut valid = validate(&timed, now, svc.config().arrival_window)?;
    valid.fingerprint = fingerprint(&CheckInRequest { arrived_at: None, ..req });
    check_in_valid(svc, setting_code, valid, deadline).await
}

async fn check_in_valid(
    svc: &Attendance,
    setting_code: &str,
    valid: ValidCheckIn,
    deadline: CallerDeadline,
) -> Result<CheckInResponse, ApiError> {
    // The client's key identifies the request in logs (only once it is known
    // to be short, printable text); the person never does.
    tracing::Span::current().record("request_id", valid.request_id.as_str());

    // A retry is answered from the store, even while the Registry is down.
    let earlier = {
        let db = svc.pool.get().await?;
        store::find_request(&db, setting_code, &valid.request_id).await?
    };
    if let Some(earlier) = earlier {
        tracing::info!(replay = true, "check-in answered from an earlier request");
        return earlier.replay(&valid.fingerprint);
    }

    // The day of the arrival in England, not UTC (they differ after midnight in summer).
    let day = cpis_domain::time::london_date(valid.arrived_at);
    let found = svc.flags.lookup(&valid.nhs_number, Some(day), deadline).await?;
    if found.flags.is_empty() {
        // Nothing about the person is stored, not even the request; and no
        // log line says how it went (beside the vendor's request id, an
        // outcome would tell the log's readers who is flagged).
        return Ok(CheckInResponse::default());
    }

    let alerts = alert_targets(&found);
    let record = FlaggedCheckIn {
        setting_code,
        request_id: &valid.request_id,
        fingerprint: &valid.fingerprint,
        nhs_number: valid.nhs_number.as_str(),
        setting_type: valid.setting_type as i32,
        arrived_at: valid.arrived_at,
        user_id: &valid.user_id,
        flags: &found.flags,
        alerts: &alerts,
    };
    let mut db = svc.pool.get().await?;
    match store::record_flagged(&mut db, &record, svc.rules()).await? {
        Recorded::New { response, alerts_queued } => {
            if alerts_queued > 0 {
                svc.wake_relay.notify_one();
            }
            Ok(response)
        }
        Recorded::Earlier(earlier) => {
            tracing::info!(replay = true, "check-in answered from a concurrent request");
            earlier.replay(&valid.fingerprint)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cpis_proto::common::v1::Flag;

    fn request() -> CheckInRequest {
        CheckInRequest {
            request_id: "req-1".into(),
            nhs_number: "9990000018".into(),
            arrived_at: Some(cpis_domain::time::to_timestamp(Utc::now())),
            setting_type: SettingType::EmergencyDepartment as i32,
            user_id: "nurse-7".into(),
        }
    }

    fn fields(e: ApiError) -> Vec<String> {
        match e {
            ApiError::InvalidArgument(v) => v.into_iter().map(|v| v.field).collect(),
            other => panic!("expected INVALID_ARGUMENT, got {other:?}"),
        }
    }

    #[test]
    fn a_good_request_passes_and_every_bad_field_is_named() {
        assert!(validate(&request(), Utc::now(), ArrivalWindow::default()).is_ok());
        let empty = CheckInRequest::default();
        assert_eq!(
            fields(validate(&empty, Utc::now(), ArrivalWindow::default()).unwrap_err()),
            ["request_id", "nhs_number", "arrived_at", "setting_type", "user_id"]
        );
        let mut future = request();
        future.arrived_at = Some(cpis_domain::time::to_timestamp(Utc::now() + chrono::TimeDelta::minutes(6)));
        future.setting_type = 42;
        future.user_id = "x".repeat(129);
        assert_eq!(
            fields(validate(&future, Utc::now(), ArrivalWindow::default()).unwrap_err()),
            ["arrived_at", "setting_type", "user_id"]
        );
        let scheduled = CheckInRequest { setting_type: SettingType::GpPractice as i32, ..request() };
        assert_eq!(fields(validate(&scheduled, Utc::now(), ArrivalWindow::default()).unwrap_err()), ["setting_type"]);
        let mut ancient = request();
        ancient.arrived_at = Some(prost_types::Timestamp { seconds: i64::MIN, nanos: 0 });
        assert_eq!(fields(validate(&ancient, Utc::now(), ArrivalWindow::default()).unwrap_err()), ["arrived_at"]);
    }

    #[test]
    fn the_fingerprint_ignores_the_request_id_only() {
        let first = request();
        let print = |r: &CheckInRequest| validate(r, Utc::now(), ArrivalWindow::default()).unwrap().fingerprint;
        let other_id = CheckInRequest { request_id: "req-2".into(), ..first.clone() };
        assert_eq!(print(&first), print(&other_id));
        let other_user = CheckInRequest { user_id: "nurse-8".into(), ..first.clone() };
        assert_ne!(print(&first), print(&other_user));
        let other_type = CheckInRequest { setting_type: SettingType::WalkInCentre as i32, ..first.clone() };
        assert_ne!(print(&first), print(&other_type));
    }

    #[test]
    fn one_alert_per_council_preferring_an_active_plan() {
        let flag = |council: &str, plan_type: i32, ended: bool| Flag {
            council_code: council.into(),
            plan_type,
            ended,
            ..Default::default()
        };
        let found = LookupFlagsResponse {
            flags: vec![
                flag("E08000003", 2, true),
                flag("E08000003", 3, false),
                flag("E08000012", 1, false),
                flag("E08000012", 2, false),
            ],
            local_references: vec!["M-old".into(), "M-new".into(), "L-1".into(), "L-2".into()],
        };
        let targets = alert_targets(&found);
        let summary: Vec<(&str, i32, &str)> =
            targets.iter().map(|t| (t.council_code.as_str(), t.plan_type, t.local_reference.as_str())).collect();
        assert_eq!(summary, [("E08000003", 3, "M-new"), ("E08000012", 1, "L-1")]);
    }
}
