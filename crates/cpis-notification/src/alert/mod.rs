//! What an alert is: a validated `PublishAlert` request, ready to store.
//! Every kind (attendance, was not brought, NHS number changes) is one row of
//! the same log with the same sequence; what differs is checked in `kinds`.

pub(crate) mod kinds;

use chrono::{DateTime, Utc};
use cpis_domain::validate::{is_council_code, NhsNumber, Violations};
use cpis_proto::common::v1::PlanType;
use cpis_proto::notification::v1 as pb;
use cpis_runtime::ApiError;

/// Longest accepted case reference (the Registry allows 1 to 64 characters).
const MAX_LOCAL_REFERENCE: usize = 64;
/// Longest text of a viewer's field (names, ids, role names), in characters.
const MAX_VIEWER_FIELD: usize = 256;

/// Most alerts one `PublishAlerts` call may carry: enough to drain a
/// council's backlog in a few calls, small enough that one transaction
/// holds the council's counter lock for milliseconds, not seconds.
pub const MAX_BATCH: usize = 500;

/// One alert to store, every field checked. Its `Debug` never shows the NHS
/// number (see [`NhsNumber`]).
#[derive(Debug, Clone)]
pub struct NewAlert {
    /// The council alerted.
    pub council_code: String,
    /// The person the alert is about.
    pub nhs_number: NhsNumber,
    /// The kind of the council's plan (a known, specified `PlanType`).
    pub plan_type: i32,
    /// The council's case reference; may be empty.
    pub local_reference: String,
    /// What the alert is about (`AlertKind`, never unspecified).
    pub kind: i32,
    /// The idempotency key, together with the council: the episode id of an
    /// attendance, `wnb:<record id>`, `nhs-number:<event id>`.
    pub key: String,
    /// ODS code of the setting (attendances and missed appointments).
    pub setting_code: Option<String>,
    /// The kind of setting (a known, specified `SettingType`).
    pub setting_type: Option<i32>,
    /// When the person arrived, or when the missed appointment was.
    pub arrived_at: Option<DateTime<Utc>>,
    /// How urgently to look (a known, specified `AlertPriority`).
    pub priority: i32,
    /// The person at the setting, encoded as a `cpis.common.v1.Viewer`;
    /// `None` when the publisher sent none.
    pub viewer: Option<Vec<u8>>,
    /// The kind's own details, encoded (`MissedAppointment`, `NhsNumberNotice`).
    pub detail: Option<Vec<u8>>,
}

impl NewAlert {
    /// Checks every field of a request, reporting all violations at once.
    pub fn from_request(r: &pb::PublishAlertRequest) -> Result<NewAlert, ApiError> {
        let mut v = Violations::new();
        if r.council_code.is_empty() {
            v.add("council_code", "is required");
        } else if !is_council_code(&r.council_code) {
            v.add(
                "council_code",
                "must be an ONS GSS code of an English upper-tier authority (E06, E08, E09 or E10 and six digits)",
            );
        }
        let nhs_number = v.nhs_number("nhs_number", &r.nhs_number);
        match PlanType::try_from(r.plan_type) {
            Ok(PlanType::Unspecified) => v.add("plan_type", "is required"),
            Ok(_) => {}
            Err(_) => v.add("plan_type", "is not a known plan type"),
        }
        v.bounded("local_reference", &r.local_reference, MAX_LOCAL_REFERENCE);
        match pb::AlertPriority::try_from(r.priority) {
            Ok(pb::AlertPriority::Unspecified) => v.add("priority", "is required"),
            Ok(_) => {}
            Err(_) => v.add("priority", "is not a known alert priority"),
        }
        let what = kinds::check(r, &mut v);
        if let Some(viewer) = &r.viewer {
            for (field, value) in [
                ("viewer.user_id", &viewer.user_id),
                ("viewer.name", &viewer.name),
                ("viewer.role_profile_id", &viewer.role_profile_id),
                ("viewer.job_role_code", &viewer.job_role_code),
                ("viewer.job_role_name", &viewer.job_role_name),
                ("viewer.organisation_code", &viewer.organisation_code),
                ("viewer.organisation_name", &viewer.organisation_name),
                ("viewer.role_code", &viewer.role_code),
            ] {
                v.bounded(field, value, MAX_VIEWER_FIELD);
            }
        }
        v.finish()?;
        // `finish` succeeded, so every optional above is filled in.
        let (Some(nhs_number), Some(what)) = (nhs_number, what) else {
            return Err(ApiError::internal("validated alert lost a field"));
        };
        Ok(NewAlert {
            council_code: r.council_code.clone(),
            nhs_number,
            plan_type: r.plan_type,
            local_reference: r.local_reference.clone(),
            kind: what.kind as i32,
            key: what.key,
            setting_code: what.setting_code,
            setting_type: what.setting_type,
            arrived_at: what.at,
            priority: r.priority,
            viewer: r.viewer.as_ref().map(prost::Message::encode_to_vec),
            detail: what.detail,
        })
    }
}

/// Checks every alert of a `PublishAlertsRequest`, reporting every
/// violation of every alert at once, each named `alerts[i].<field>`; a batch
/// that is empty or holds more than [`MAX_BATCH`] alerts is refused whole.
pub fn batch_from_request(r: &pb::PublishAlertsRequest) -> Result<Vec<NewAlert>, ApiError> {
    if r.alerts.is_empty() || r.alerts.len() > MAX_BATCH {
        return Err(ApiError::invalid(
            "alerts",
            format!("must hold 1 to {MAX_BATCH} alerts (this one holds {})", r.alerts.len()),
        ));
    }
    let mut violations = Vec::new();
    let mut alerts = Vec::with_capacity(r.alerts.len());
    for (i, request) in r.alerts.iter().enumerate() {
        match NewAlert::from_request(request) {
            Ok(alert) => alerts.push(alert),
            Err(ApiError::InvalidArgument(list)) => violations.extend(list.into_iter().map(|mut v| {
                v.field = format!("alerts[{i}].{}", v.field);
                v
            })),
            Err(other) => return Err(other),
        }
    }
    if violations.is_empty() {
        Ok(alerts)
    } else {
        Err(ApiError::InvalidArgument(violations))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cpis_proto::common::v1::{Episode, SettingType};
    use cpis_runtime::FieldViolation;

    fn valid() -> pb::PublishAlertRequest {
        pb::PublishAlertRequest {
            council_code: "E08000003".into(),
            nhs_number: "9990000018".into(),
            plan_type: PlanType::ChildProtection as i32,
            local_reference: "MCR-1".into(),
            episode: Some(Episode {
                episode_id: "ep-1".into(),
                setting_code: "RBQ01".into(),
                setting_type: SettingType::EmergencyDepartment as i32,
                arrived_at: Some(prost_types::Timestamp { seconds: 1_700_000_000, nanos: 0 }),
            }),
            priority: pb::AlertPriority::Routine as i32,
            ..Default::default()
        }
    }

    fn fields(r: &pb::PublishAlertRequest) -> Vec<String> {
        match NewAlert::from_request(r) {
            Err(ApiError::InvalidArgument(v)) => v.into_iter().map(|f: FieldViolation| f.field).collect(),
            Err(e) => panic!("unexpected error {e}"),
            Ok(_) => vec![],
        }
    }

    #[test]
    fn a_valid_request_passes() {
        let a = NewAlert::from_request(&valid()).expect("valid");
        assert_eq!(a.key, "ep-1");
        assert_eq!(a.kind, pb::AlertKind::Attendance as i32, "an unspecified kind is an attendance");
        assert!(!format!("{a:?}").contains("9990000018"));
    }

    #[test]
    fn every_bad_field_is_named() {
        let mut r = valid();
        r.council_code = "W06000001".into();
        r.nhs_number = "9990000019".into();
        r.plan_type = 0;
        r.priority = 9;
        r.local_reference = "x".repeat(65);
        r.episode = Some(Episode {
            episode_id: String::new(),
            setting_code: "rbq01".into(),
            setting_type: 42,
            arrived_at: None,
        });
        assert_eq!(
            fields(&r),
            [
                "council_code",
                "nhs_number",
                "plan_type",
                "local_reference",
                "priority",
                "episode.episode_id",
                "episode.setting_code",
                "episode.setting_type",
                "episode.arrived_at",
            ]
        );
        r.episode = None;
        assert!(fields(&r).contains(&"episode".to_string()));
    }

    #[test]
    fn a_batch_names_the_index_of_each_bad_alert_and_is_bounded() {
        let mut bad = valid();
        bad.nhs_number = "9990000019".into();
        let mut batch = pb::PublishAlertsRequest { alerts: vec![valid(), bad, valid()] };
        batch.alerts[2].episode = None;
        let Err(ApiError::InvalidArgument(v)) = batch_from_request(&batch) else {
            panic!("must fail");
        };
        let named: Vec<&str> = v.iter().map(|f| f.field.as_str()).collect();
        assert_eq!(named, ["alerts[1].nhs_number", "alerts[2].episode"]);
        batch.alerts.truncate(1);
        assert_eq!(batch_from_request(&batch).expect("valid").len(), 1);
        for n in [0, MAX_BATCH + 1] {
            let r = pb::PublishAlertsRequest { alerts: vec![valid(); n] };
            let Err(ApiError::InvalidArgument(v)) = batch_from_request(&r) else {
                panic!("{n} alerts must be refused");
            };
            assert_eq!(v[0].field, "alerts");
        }
        let full = pb::PublishAlertsRequest { alerts: vec![valid(); MAX_BATCH] };
        assert_eq!(batch_from_request(&full).expect("a full batch is valid").len(), MAX_BATCH);
    }

    #[test]
    fn messages_never_echo_the_nhs_number() {
        let mut r = valid();
        r.nhs_number = "9990000019".into();
        let Err(ApiError::InvalidArgument(v)) = NewAlert::from_request(&r) else {
            panic!("must fail");
        };
        assert!(v.iter().all(|f| !f.description.contains("9990000019")));
    }
}
