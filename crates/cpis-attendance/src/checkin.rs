//! `CheckIn`: validate, replay an earlier answer, look the flags up, and
//! record a flagged arrival (episode, access audit, alerts) in one
//! transaction with the flagged check-ins arriving at the same time
//! ([`group`]): the store runs the statements and `crate::rules`
//! decides what they write. An unflagged person leaves no trace.

use crate::convert;
use crate::model::{RecordedViewer, StoredRequest};
use crate::registry::{CallerDeadline, FlagLookup};
use crate::replays::ReplayLookup;
use crate::rules::EpisodeRules;
use crate::settings::ArrivalWindow;
use chrono::{DateTime, Utc};
use cpis_domain::time::from_timestamp;
use cpis_domain::user::{Access, Viewer};
use cpis_domain::validate::{NhsNumber, Violations};
use cpis_proto::attendance::v1::{CheckInRequest, CheckInResponse};
use cpis_proto::common::v1::SettingType;
use cpis_runtime::db::DbPool;
use cpis_runtime::ApiError;
use futures::future::Either;
use group::GroupCommit;
use prost::Message;
use sha2::{Digest, Sha256};
use std::sync::Arc;
use tokio::sync::Notify;

mod group;

/// Longest accepted `request_id`, in characters.
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
    pub viewer: RecordedViewer,
    /// SHA-256 of the request body without its request_id, with the
    /// viewer's id for the deprecated user_id: a replay must match it.
    pub fingerprint: Vec<u8>,
}

/// Checks every field, reporting all violations at once. The person shown
/// the answer is `viewer` (the deprecated `user_id` field is the layer's
/// business: see `cpis_runtime::users::viewer`).
pub fn validate(
    req: &CheckInRequest,
    viewer: &Viewer,
    now: DateTime<Utc>,
    window: ArrivalWindow,
) -> Result<ValidCheckIn, ApiError> {
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
    let setting_type = setting_type(
        &mut v,
        req.setting_type,
        false,
        "is a scheduled-care setting: scheduled care makes a silent read (SilentRead)",
    );
    v.finish()?;
    let (Some(nhs_number), Some(arrived_at), Some(setting_type)) = (nhs_number, arrived_at, setting_type) else {
        return Err(ApiError::internal("validation passed without values"));
    };
    Ok(ValidCheckIn {
        request_id: req.request_id.clone(),
        nhs_number,
        arrived_at,
        setting_type,
        viewer: RecordedViewer::from(viewer),
        fingerprint: fingerprint(req, viewer.user_id()),
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

/// The request's `setting_type`, checked to be known and of the care the
/// call is for (`scheduled` or not; `wrong_care` says why otherwise): the
/// one check behind `CheckIn`, `SilentRead` and `RecordWasNotBrought`.
pub fn setting_type(v: &mut Violations, raw: i32, scheduled: bool, wrong_care: &str) -> Option<SettingType> {
    match SettingType::try_from(raw) {
        Ok(SettingType::Unspecified) => {
            v.add("setting_type", "is required");
            None
        }
        Ok(t) if is_scheduled(t) != scheduled => {
            v.add("setting_type", wrong_care);
            None
        }
        Ok(t) => Some(t),
        Err(_) => {
            v.add("setting_type", "is not a known setting type");
            None
        }
    }
}

/// The start of the protobuf `Timestamp` range (0001-01-01T00:00:00Z).
const EARLIEST_TIMESTAMP: i64 = -62_135_596_800;

/// SHA-256 of the request's encoding without its request_id, with the
/// viewer's id in place of the deprecated user_id (a retry is the same
/// person's).
#[allow(deprecated)] // user_id: the one place the replay key is built
fn fingerprint(req: &CheckInRequest, viewer_id: &str) -> Vec<u8> {
    let body = CheckInRequest { request_id: String::new(), user_id: viewer_id.to_string(), ..req.clone() };
    Sha256::digest(body.encode_to_vec()).to_vec()
}

/// The check-in operation and everything it runs on.
#[derive(Debug, Clone)]
pub struct CheckIns {
    flags: FlagLookup,
    replays: ReplayLookup,
    /// Writes flagged check-ins, grouped.
    group: GroupCommit,
    arrival_window: ArrivalWindow,
}

impl CheckIns {
    /// Check-ins stored in `pool`, looking flags up with `flags`, waking the
    /// relay with `wake_relay`.
    pub fn new(
        pool: DbPool,
        flags: FlagLookup,
        rules: EpisodeRules,
        arrival_window: ArrivalWindow,
        wake_relay: Arc<Notify>,
    ) -> Self {
        Self {
            replays: ReplayLookup::new(pool.clone()),
            group: GroupCommit::new(pool, rules, wake_relay),
            flags,
            arrival_window,
        }
    }

    /// Handles one check-in from the setting `setting_code`, shown to `viewer`.
    pub async fn check_in(
        &self,
        setting_code: &str,
        viewer: &Viewer,
        req: CheckInRequest,
        deadline: CallerDeadline,
    ) -> Result<CheckInResponse, ApiError> {
        crate::admitted::may(viewer, Access::NotifyingRead)?;
        let valid = validate(&req, viewer, Utc::now(), self.arrival_window)?;
        self.check_in_valid(setting_code, valid, deadline).await
    }

    /// A check-in arriving now, for callers that do not state an arrival
    /// time (the FHIR notifying read). Its replay key ignores the arrival
    /// time, so a retry with the same `request_id` gets the first answer again.
    pub async fn check_in_now(
        &self,
        setting_code: &str,
        viewer: &Viewer,
        req: CheckInRequest,
        deadline: CallerDeadline,
    ) -> Result<CheckInResponse, ApiError> {
        crate::admitted::may(viewer, Access::NotifyingRead)?;
        let now = Utc::now();
        let timed = CheckInRequest { arrived_at: Some(cpis_domain::time::to_timestamp(now)), ..req.clone() };
        let mut valid = validate(&timed, viewer, now, self.arrival_window)?;
        valid.fingerprint = fingerprint(&CheckInRequest { arrived_at: None, ..req }, viewer.user_id());
        self.check_in_valid(setting_code, valid, deadline).await
    }

    async fn check_in_valid(
        &self,
        setting_code: &str,
        valid: ValidCheckIn,
        deadline: CallerDeadline,
    ) -> Result<CheckInResponse, ApiError> {
        // The client's key identifies the request in logs (only once it is
        // known to be short, printable text); the person never does.
        tracing::Span::current().record("request_id", valid.request_id.as_str());

        // A retry is answered from the store, even while the Registry is
        // down. The store and the Registry are asked at once (a lone
        // check-in waits for the slower of the two, not their sum); a stored
        // answer wins over whatever the Registry says.
        // The day of the arrival in England, not UTC (they differ after midnight in summer).
        let day = cpis_domain::time::london_date(valid.arrived_at);
        let found = {
            let earlier = std::pin::pin!(self.replays.find(setting_code, &valid.request_id));
            let lookup = std::pin::pin!(self.flags.lookup(&valid.nhs_number, Some(day), deadline));
            match futures::future::select(earlier, lookup).await {
                Either::Left((earlier, lookup)) => match earlier? {
                    Some(earlier) => return replayed(&earlier, &valid.fingerprint),
                    None => lookup.await,
                },
                Either::Right((found, earlier)) => match earlier.await? {
                    Some(earlier) => return replayed(&earlier, &valid.fingerprint),
                    None => found,
                },
            }?
        };
        if found.flags.is_empty() {
            // Nothing about the person is stored, not even the request; and
            // no log line says how it went (beside the vendor's request id,
            // an outcome would tell the log's readers who is flagged).
            return Ok(CheckInResponse::default());
        }
        let recorded = self.group.record(setting_code, valid, found).await?;
        if recorded.replayed {
            tracing::info!(replay = true, "check-in answered from a concurrent request");
        }
        Ok(recorded.response)
    }
}

/// [`replay`] of an answer found before the flag look-up.
fn replayed(earlier: &StoredRequest, fingerprint: &[u8]) -> Result<CheckInResponse, ApiError> {
    tracing::info!(replay = true, "check-in answered from an earlier request");
    replay(earlier, fingerprint)
}

/// The first answer again, if `fingerprint` is the same request body.
pub(crate) fn replay(earlier: &StoredRequest, fingerprint: &[u8]) -> Result<CheckInResponse, ApiError> {
    if earlier.fingerprint != fingerprint {
        return Err(ApiError::invalid("request_id", "was already used by this setting for a different check-in"));
    }
    convert::stored_check_in(&earlier.response)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request() -> CheckInRequest {
        CheckInRequest {
            request_id: "req-1".into(),
            nhs_number: "9990000018".into(),
            arrived_at: Some(cpis_domain::time::to_timestamp(Utc::now())),
            setting_type: SettingType::EmergencyDepartment as i32,
            ..Default::default()
        }
    }

    fn nurse(id: &str) -> Viewer {
        Viewer::Unverified { user_id: id.into() }
    }

    fn check(r: &CheckInRequest) -> Result<ValidCheckIn, ApiError> {
        validate(r, &nurse("nurse-7"), Utc::now(), ArrivalWindow::default())
    }

    fn fields(e: ApiError) -> Vec<String> {
        match e {
            ApiError::InvalidArgument(v) => v.into_iter().map(|v| v.field).collect(),
            other => panic!("expected INVALID_ARGUMENT, got {other:?}"),
        }
    }

    #[test]
    fn a_good_request_passes_and_every_bad_field_is_named() {
        assert!(check(&request()).is_ok());
        assert_eq!(
            fields(check(&CheckInRequest::default()).unwrap_err()),
            ["request_id", "nhs_number", "arrived_at", "setting_type"]
        );
        let mut future = request();
        future.arrived_at = Some(cpis_domain::time::to_timestamp(Utc::now() + chrono::TimeDelta::minutes(6)));
        future.setting_type = 42;
        assert_eq!(fields(check(&future).unwrap_err()), ["arrived_at", "setting_type"]);
        let scheduled = CheckInRequest { setting_type: SettingType::GpPractice as i32, ..request() };
        assert_eq!(fields(check(&scheduled).unwrap_err()), ["setting_type"]);
        let mut ancient = request();
        ancient.arrived_at = Some(prost_types::Timestamp { seconds: i64::MIN, nanos: 0 });
        assert_eq!(fields(check(&ancient).unwrap_err()), ["arrived_at"]);
    }

    #[test]
    fn the_fingerprint_ignores_the_request_id_and_follows_the_viewer() {
        let first = request();
        let print = |r: &CheckInRequest, who: &str| {
            validate(r, &nurse(who), Utc::now(), ArrivalWindow::default()).unwrap().fingerprint
        };
        let other_id = CheckInRequest { request_id: "req-2".into(), ..first.clone() };
        assert_eq!(print(&first, "nurse-7"), print(&other_id, "nurse-7"));
        assert_ne!(print(&first, "nurse-7"), print(&first, "nurse-8"));
        let other_type = CheckInRequest { setting_type: SettingType::WalkInCentre as i32, ..first.clone() };
        assert_ne!(print(&first, "nurse-7"), print(&other_type, "nurse-7"));
    }
}
