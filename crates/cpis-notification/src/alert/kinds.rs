//! What each kind of alert must carry: an attendance its episode, a missed
//! appointment its record, an NHS number change its notice. Each names its
//! idempotency key, so a repeat of the same event for the same council is
//! the same alert.

use chrono::{DateTime, Utc};
use cpis_domain::validate::{is_setting_code, Violations};
use cpis_proto::common::v1::{NhsNumberChangeKind, SettingType};
use cpis_proto::notification::v1 as pb;
use prost::Message as _;

/// Longest accepted episode id, record id or event id.
const MAX_ID: usize = 128;
/// Most references an NHS number notice lists.
const MAX_REFERENCES: usize = 100;

/// What a kind contributes to the stored alert.
pub struct Checked {
    /// The kind as stored (never unspecified).
    pub kind: pb::AlertKind,
    /// The idempotency key.
    pub key: String,
    /// The setting, for attendances and missed appointments.
    pub setting_code: Option<String>,
    /// The setting's kind.
    pub setting_type: Option<i32>,
    /// When the person arrived, or the missed appointment was.
    pub at: Option<DateTime<Utc>>,
    /// The kind's details, encoded.
    pub detail: Option<Vec<u8>>,
}

/// Checks the kind's own fields of `r`, recording violations in `v`;
/// `None` when something was wrong.
pub fn check(r: &pb::PublishAlertRequest, v: &mut Violations) -> Option<Checked> {
    match pb::AlertKind::try_from(r.kind) {
        Ok(pb::AlertKind::Unspecified | pb::AlertKind::Attendance | pb::AlertKind::RepeatAttendance) => {
            attendance(r, v)
        }
        Ok(pb::AlertKind::WasNotBrought) => was_not_brought(r, v),
        Ok(kind @ (pb::AlertKind::NhsNumberSuperseded | pb::AlertKind::NhsNumberInactive)) => {
            nhs_number_change(kind, r, v)
        }
        Err(_) => {
            v.add("kind", "is not a known alert kind");
            None
        }
    }
}

/// An attendance: the episode is required; an unspecified kind is taken
/// from the priority (what publishers sent before kinds existed).
fn attendance(r: &pb::PublishAlertRequest, v: &mut Violations) -> Option<Checked> {
    let Some(e) = &r.episode else {
        v.add("episode", "is required");
        return None;
    };
    let id_ok = v.text("episode.episode_id", &e.episode_id, MAX_ID);
    let code_ok = setting_code(v, "episode.setting_code", &e.setting_code);
    let type_ok = setting_type(v, "episode.setting_type", e.setting_type, false);
    let at = timestamp(v, "episode.arrived_at", e.arrived_at.as_ref());
    let kind = match pb::AlertKind::try_from(r.kind) {
        Ok(pb::AlertKind::Unspecified) if r.priority == pb::AlertPriority::RepeatAttendance as i32 => {
            pb::AlertKind::RepeatAttendance
        }
        Ok(pb::AlertKind::Unspecified) => pb::AlertKind::Attendance,
        Ok(kind) => kind,
        Err(_) => return None,
    };
    (id_ok && code_ok && type_ok).then_some(())?;
    Some(Checked {
        kind,
        key: e.episode_id.clone(),
        setting_code: Some(e.setting_code.clone()),
        setting_type: Some(e.setting_type),
        at: Some(at?),
        detail: None,
    })
}

/// A missed appointment: its record, at a scheduled-care setting.
fn was_not_brought(r: &pb::PublishAlertRequest, v: &mut Violations) -> Option<Checked> {
    let Some(m) = &r.was_not_brought else {
        v.add("was_not_brought", "is required for ALERT_KIND_WAS_NOT_BROUGHT");
        return None;
    };
    let id_ok = v.text("was_not_brought.record_id", &m.record_id, MAX_ID);
    let code_ok = setting_code(v, "was_not_brought.setting_code", &m.setting_code);
    let type_ok = setting_type(v, "was_not_brought.setting_type", m.setting_type, true);
    let at = timestamp(v, "was_not_brought.appointment_at", m.appointment_at.as_ref());
    if m.missed_in_last_90_days < 1 {
        v.add("was_not_brought.missed_in_last_90_days", "must be at least 1 (this appointment)");
        return None;
    }
    (id_ok && code_ok && type_ok).then_some(())?;
    Some(Checked {
        kind: pb::AlertKind::WasNotBrought,
        key: format!("wnb:{}", m.record_id),
        setting_code: Some(m.setting_code.clone()),
        setting_type: Some(m.setting_type),
        at: Some(at?),
        detail: Some(m.encode_to_vec()),
    })
}

/// A change of the person's NHS number: the notice, matching the kind.
fn nhs_number_change(kind: pb::AlertKind, r: &pb::PublishAlertRequest, v: &mut Violations) -> Option<Checked> {
    let Some(n) = &r.nhs_number_change else {
        v.add("nhs_number_change", "is required for the NHS number alert kinds");
        return None;
    };
    let id_ok = v.text("nhs_number_change.event_id", &n.event_id, MAX_ID);
    let date_ok = v.date("nhs_number_change.effective_date", &n.effective_date).is_some();
    let superseded = kind == pb::AlertKind::NhsNumberSuperseded;
    let expected =
        if superseded { NhsNumberChangeKind::Superseded as i32 } else { NhsNumberChangeKind::Inactive as i32 };
    let kind_ok = n.kind == expected;
    if !kind_ok {
        v.add("nhs_number_change.kind", "must match the alert's kind");
    }
    let replacement_ok = if superseded {
        v.nhs_number("nhs_number_change.replacement_nhs_number", &n.replacement_nhs_number).is_some()
    } else if !n.replacement_nhs_number.is_empty() {
        v.add("nhs_number_change.replacement_nhs_number", "is set for a superseded number only");
        false
    } else {
        true
    };
    let references_ok = n.local_references.len() <= MAX_REFERENCES;
    if !references_ok {
        v.add("nhs_number_change.local_references", format!("must list at most {MAX_REFERENCES} references"));
    }
    (id_ok && date_ok && kind_ok && replacement_ok && references_ok).then_some(())?;
    Some(Checked {
        kind,
        key: format!("nhs-number:{}", n.event_id),
        setting_code: None,
        setting_type: None,
        at: None,
        detail: Some(n.encode_to_vec()),
    })
}

fn setting_code(v: &mut Violations, field: &str, code: &str) -> bool {
    if code.is_empty() {
        v.add(field, "is required");
        false
    } else if !is_setting_code(code) {
        v.add(field, "must be an ODS site code: 3 to 6 upper-case letters and digits");
        false
    } else {
        true
    }
}

/// A known, specified setting type; `scheduled` asks for scheduled care.
fn setting_type(v: &mut Violations, field: &str, value: i32, scheduled: bool) -> bool {
    match SettingType::try_from(value) {
        Ok(SettingType::Unspecified) => v.add(field, "is required"),
        Ok(t) if scheduled && (t as i32) < SettingType::GpPractice as i32 => {
            v.add(field, "must be a scheduled-care setting type")
        }
        Ok(_) => return true,
        Err(_) => v.add(field, "is not a known setting type"),
    }
    false
}

fn timestamp(v: &mut Violations, field: &str, t: Option<&prost_types::Timestamp>) -> Option<DateTime<Utc>> {
    match t {
        None => {
            v.add(field, "is required");
            None
        }
        Some(t) => {
            let at = cpis_domain::time::from_timestamp(t);
            if at.is_none() {
                v.add(field, "is not a valid timestamp");
            }
            at
        }
    }
}

/// The kind stored for a row written before kinds existed (`kind` NULL):
/// an attendance, repeated or not by its priority.
pub fn stored_kind(kind: Option<i32>, priority: i32) -> i32 {
    match kind {
        Some(k) if k != pb::AlertKind::Unspecified as i32 => k,
        _ if priority == pb::AlertPriority::RepeatAttendance as i32 => pb::AlertKind::RepeatAttendance as i32,
        _ => pb::AlertKind::Attendance as i32,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> pb::PublishAlertRequest {
        pb::PublishAlertRequest {
            council_code: "E08000003".into(),
            nhs_number: "9990000018".into(),
            plan_type: 1,
            priority: pb::AlertPriority::Routine as i32,
            ..Default::default()
        }
    }

    fn fields(r: &pb::PublishAlertRequest) -> Vec<String> {
        let mut v = Violations::new();
        check(r, &mut v);
        v.list().iter().map(|f| f.field.clone()).collect()
    }

    #[test]
    fn a_missed_appointment_needs_its_record_at_scheduled_care() {
        let mut r = pb::PublishAlertRequest { kind: pb::AlertKind::WasNotBrought as i32, ..base() };
        assert_eq!(fields(&r), ["was_not_brought"]);
        r.was_not_brought = Some(pb::MissedAppointment {
            record_id: "m-1".into(),
            setting_code: "Y01234".into(),
            setting_type: SettingType::EmergencyDepartment as i32,
            appointment_at: Some(prost_types::Timestamp { seconds: 1_700_000_000, nanos: 0 }),
            missed_in_last_90_days: 1,
        });
        assert_eq!(fields(&r), ["was_not_brought.setting_type"]);
        r.was_not_brought.as_mut().unwrap().setting_type = SettingType::GpPractice as i32;
        let mut v = Violations::new();
        let checked = check(&r, &mut v).expect("valid");
        assert_eq!(checked.key, "wnb:m-1");
    }

    #[test]
    fn an_nhs_number_notice_matches_its_kind_and_names_a_replacement_only_when_superseded() {
        let notice = pb::NhsNumberNotice {
            kind: NhsNumberChangeKind::Superseded as i32,
            replacement_nhs_number: "9990000026".into(),
            effective_date: "2026-11-30".into(),
            event_id: "ev-1".into(),
            local_references: vec!["MCR-1".into()],
        };
        let superseded = pb::PublishAlertRequest {
            kind: pb::AlertKind::NhsNumberSuperseded as i32,
            nhs_number_change: Some(notice.clone()),
            ..base()
        };
        assert!(fields(&superseded).is_empty());
        let wrong_kind =
            pb::PublishAlertRequest { kind: pb::AlertKind::NhsNumberInactive as i32, ..superseded.clone() };
        assert_eq!(fields(&wrong_kind), ["nhs_number_change.kind", "nhs_number_change.replacement_nhs_number"]);
        let mut no_replacement = superseded.clone();
        no_replacement.nhs_number_change.as_mut().unwrap().replacement_nhs_number = "9990000019".into();
        assert_eq!(fields(&no_replacement), ["nhs_number_change.replacement_nhs_number"]);
    }

    #[test]
    fn rows_from_before_kinds_are_attendances_by_priority() {
        assert_eq!(stored_kind(None, pb::AlertPriority::Routine as i32), pb::AlertKind::Attendance as i32);
        assert_eq!(
            stored_kind(None, pb::AlertPriority::RepeatAttendance as i32),
            pb::AlertKind::RepeatAttendance as i32
        );
        assert_eq!(stored_kind(Some(3), 1), 3);
    }
}
