//! AuditEvent: one unscheduled-care access to a person's flags (a notifying
//! read), in the national guide's shape (`cpis-auditevent-bundle-01`):
//!
//! - `type`: iso-21089-lifecycle `access` (Access/View Record Lifecycle Event);
//! - `recorded`: when the person looked (the guide's "Date & Time");
//! - an agent of v3-RoleClass `PAT` whose `who.identifier` is the NHS number;
//! - an agent of v3-RoleClass `ASSIGNED`, the requestor, referring to the
//!   PractitionerRole of the person who looked;
//! - `source.observer`: that PractitionerRole too, as the guide shows it;
//!   `source.site`: the ODS code of the setting the access was made from.
//!
//! Built from the access audit row, the same one `ListAccesses` converts.

use super::{practitioner_role, NHS_NUMBER_SYSTEM};
use crate::model::Access;
use chrono::SecondsFormat;
use serde_json::{json, Value};

/// The lifecycle event type code system (ISO 21089).
pub const LIFECYCLE_SYSTEM: &str = "http://terminology.hl7.org/CodeSystem/iso-21089-lifecycle";
/// HL7 v3 RoleClass: the agents' types.
pub const ROLE_CLASS_SYSTEM: &str = "http://terminology.hl7.org/CodeSystem/v3-RoleClass";

/// The AuditEvent of `access`, whose viewer's PractitionerRole has the id `role_id`.
pub fn audit_event(access: &Access, role_id: &str) -> Value {
    let role = format!("PractitionerRole/{role_id}");
    let agent_type = |code: &str, display: &str| json!({ "coding": [{ "system": ROLE_CLASS_SYSTEM, "code": code, "display": display }] });
    json!({
        "resourceType": "AuditEvent",
        "id": access.access_id.to_string(),
        "type": { "system": LIFECYCLE_SYSTEM, "code": "access", "display": "Access/View Record Lifecycle Event" },
        "recorded": access.accessed_at.to_rfc3339_opts(SecondsFormat::Millis, true),
        "agent": [
            {
                "type": agent_type("PAT", "patient"),
                "who": { "identifier": { "system": NHS_NUMBER_SYSTEM, "value": access.nhs_number } },
                "requestor": false,
            },
            {
                "type": agent_type("ASSIGNED", "assigned entity"),
                "who": { "reference": role },
                "requestor": true,
            },
        ],
        "source": { "site": access.setting_code, "observer": { "reference": role } },
    })
}

/// The AuditEvents of `accesses` (in their order) and, when `include_roles`,
/// the PractitionerRoles they refer to, each once.
pub fn history(accesses: &[Access], include_roles: bool) -> (Vec<Value>, Vec<Value>) {
    let mut events = Vec::with_capacity(accesses.len());
    let mut roles: Vec<Value> = Vec::new();
    for access in accesses {
        let viewer = crate::convert::viewer(&access.viewer);
        let id = practitioner_role::id(&viewer, &access.setting_code);
        events.push(audit_event(access, &id));
        if include_roles && !roles.iter().any(|r| r["id"] == id.as_str()) {
            roles.push(practitioner_role::practitioner_role(&viewer, &access.setting_code));
        }
    }
    (events, roles)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::RecordedViewer;
    use chrono::Utc;

    fn access(user: &str) -> Access {
        Access {
            access_id: uuid::Uuid::now_v7(),
            episode_id: Some(uuid::Uuid::now_v7()),
            nhs_number: "9990000018".into(),
            setting_code: "RBQ01".into(),
            setting_type: 1,
            viewer: RecordedViewer {
                user_id: user.into(),
                name: "Alex Example".into(),
                role_profile_id: "555254240100".into(),
                role_code: "S8000:G8000:R8001".into(),
                job_role_name: "Nurse Access Role".into(),
                org_code: "RBQ".into(),
                org_name: "Alder Hey".into(),
                verified: true,
            },
            accessed_at: Utc::now(),
            silent: false,
            episodes_read: false,
            was_not_brought: false,
            appointment_at: None,
        }
    }

    /// What the guide's `cpis-auditevent-bundle-01` shows, element for element.
    #[test]
    fn an_access_has_the_guides_shape() {
        let (events, roles) = history(&[access("910000000001")], true);
        let e = &events[0];
        assert_eq!(e["type"]["system"], "http://terminology.hl7.org/CodeSystem/iso-21089-lifecycle");
        assert_eq!(e["type"]["code"], "access");
        assert_eq!(e["agent"][0]["type"]["coding"][0]["code"], "PAT");
        assert_eq!(e["agent"][0]["who"]["identifier"]["value"], "9990000018");
        assert_eq!(e["agent"][0]["requestor"], false);
        assert_eq!(e["agent"][1]["type"]["coding"][0]["code"], "ASSIGNED");
        assert_eq!(e["agent"][1]["requestor"], true);
        let reference = format!("PractitionerRole/{}", roles[0]["id"].as_str().unwrap());
        assert_eq!(e["agent"][1]["who"]["reference"], reference.as_str());
        assert_eq!(e["source"]["observer"]["reference"], reference.as_str());
    }

    #[test]
    fn each_person_is_included_once_and_only_when_asked() {
        let (events, roles) = history(&[access("a"), access("a"), access("b")], true);
        assert_eq!((events.len(), roles.len()), (3, 2));
        let (_, none) = history(&[access("a")], false);
        assert!(none.is_empty());
    }
}
