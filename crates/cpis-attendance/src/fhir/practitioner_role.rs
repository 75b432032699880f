//! PractitionerRole: the person who looked, as an AuditEvent's requestor
//! refers to them and the guide's `_include` brings them into the Bundle
//! (`cpis-auditevent-bundle-01`, the Consumer guide's Data-mapping page:
//! "Viewer's Name" is `practitioner.display`, "Role" is `code.coding.display`,
//! "Organisation" is `organization.display`). Built from the same `Viewer`
//! that access records and alerts carry:
//!
//! - `identifier`: the SDS role profile id (`https://fhir.nhs.uk/Id/sds-role-profile-id`);
//! - `practitioner`: the SDS user id and the verified person's name;
//! - `organization`: the ODS code, and "name (code)" as display;
//! - `code`: the SDS job role (England-SDSJobRoleName, e.g. `R8000`) and its name.
//!
//! An access recorded before verified users existed (or without a token in
//! the migration mode) shows what is known: the user id the setting
//! asserted, marked not verified, and the setting's ODS code.

use super::ODS_SYSTEM;
use cpis_proto::common::v1::Viewer;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

/// SDS role profile ids.
pub const SDS_ROLE_PROFILE_SYSTEM: &str = "https://fhir.nhs.uk/Id/sds-role-profile-id";
/// SDS user ids.
pub const SDS_USER_SYSTEM: &str = "https://fhir.nhs.uk/Id/sds-user-id";
/// SDS job role codes (`R8000`), as NHS England's Healthcare Worker examples code them.
pub const SDS_JOB_ROLE_SYSTEM: &str = "https://fhir.nhs.uk/England/CodeSystem/England-SDSJobRoleName";

/// A stable id of the PractitionerRole of `viewer` at `setting_code`: the
/// same person in the same role, as recorded, is one resource in a Bundle.
pub fn id(viewer: &Viewer, setting_code: &str) -> String {
    let mut hash = Sha256::new();
    for part in [
        viewer.user_id.as_str(),
        viewer.name.as_str(),
        viewer.role_profile_id.as_str(),
        viewer.role_code.as_str(),
        viewer.job_role_name.as_str(),
        viewer.organisation_code.as_str(),
        viewer.organisation_name.as_str(),
        if viewer.verified { "verified" } else { setting_code },
    ] {
        hash.update(part.as_bytes());
        hash.update([0]);
    }
    let digest = hash.finalize();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    uuid::Builder::from_custom_bytes(bytes).into_uuid().to_string()
}

/// The PractitionerRole of `viewer`, who looked from the setting `setting_code`.
pub fn practitioner_role(viewer: &Viewer, setting_code: &str) -> Value {
    let mut role = json!({ "resourceType": "PractitionerRole", "id": id(viewer, setting_code) });
    if !viewer.verified {
        role["practitioner"] = json!({
            "identifier": { "value": viewer.user_id },
            "display": format!("{} (not verified)", viewer.user_id),
        });
        role["organization"] =
            json!({ "identifier": { "system": ODS_SYSTEM, "value": setting_code }, "display": setting_code });
        return role;
    }
    if !viewer.role_profile_id.is_empty() {
        role["identifier"] = json!([{ "system": SDS_ROLE_PROFILE_SYSTEM, "value": viewer.role_profile_id }]);
    }
    let name = if viewer.name.is_empty() { &viewer.user_id } else { &viewer.name };
    role["practitioner"] =
        json!({ "identifier": { "system": SDS_USER_SYSTEM, "value": viewer.user_id }, "display": name });
    let org = &viewer.organisation_code;
    let org_display =
        if viewer.organisation_name.is_empty() { org.clone() } else { format!("{} ({org})", viewer.organisation_name) };
    role["organization"] = json!({ "identifier": { "system": ODS_SYSTEM, "value": org }, "display": org_display });
    let job = &viewer.job_role_name;
    match (viewer.job_role_code.is_empty(), job.is_empty()) {
        (false, _) => {
            let mut coding = json!({ "system": SDS_JOB_ROLE_SYSTEM, "code": viewer.job_role_code });
            if !job.is_empty() {
                coding["display"] = json!(job);
            }
            role["code"] =
                json!([{ "coding": [coding], "text": if job.is_empty() { &viewer.job_role_code } else { job } }]);
        }
        (true, false) => role["code"] = json!([{ "text": job }]),
        (true, true) => {}
    }
    role
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nurse() -> Viewer {
        Viewer {
            user_id: "910000000001".into(),
            name: "Alex Example".into(),
            role_profile_id: "555254240100".into(),
            job_role_code: "R8001".into(),
            job_role_name: "Nurse Access Role".into(),
            organisation_code: "RBQ".into(),
            organisation_name: "Alder Hey Children's NHS Foundation Trust".into(),
            verified: true,
            role_code: "S8000:G8000:R8001".into(),
        }
    }

    #[test]
    fn a_verified_person_has_the_guides_elements() {
        let role = practitioner_role(&nurse(), "RBQ01");
        assert_eq!(role["identifier"][0]["system"], "https://fhir.nhs.uk/Id/sds-role-profile-id");
        assert_eq!(role["identifier"][0]["value"], "555254240100");
        assert_eq!(role["practitioner"]["display"], "Alex Example");
        assert_eq!(role["organization"]["display"], "Alder Hey Children's NHS Foundation Trust (RBQ)");
        assert_eq!(role["code"][0]["coding"][0]["code"], "R8001");
        assert_eq!(role["code"][0]["coding"][0]["display"], "Nurse Access Role");
        assert_eq!(role["id"], id(&nurse(), "RWJ01"), "the same person in the same role is one resource");
        let other = Viewer { role_profile_id: "555254240101".into(), ..nurse() };
        assert_ne!(id(&other, "RBQ01"), id(&nurse(), "RBQ01"));
    }

    #[test]
    fn an_access_before_verified_users_shows_what_is_known() {
        let old = Viewer { user_id: "nurse-7".into(), ..Default::default() };
        let role = practitioner_role(&old, "RBQ01");
        assert_eq!(role["practitioner"]["display"], "nurse-7 (not verified)");
        assert_eq!(role["organization"]["identifier"]["value"], "RBQ01");
        assert!(role.get("identifier").is_none() && role.get("code").is_none());
        assert_ne!(id(&old, "RBQ01"), id(&old, "RWJ01"), "an asserted id is only known at its setting");
    }
}
