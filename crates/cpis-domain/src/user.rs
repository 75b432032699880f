//! The person behind a setting's request: a second identity beside the
//! system's certificate. People at NHS settings sign in with the NHS Care
//! Identity Service (CIS2); each of their roles is held at one organisation
//! and carries national RBAC activity codes, and the role in use is chosen
//! per session (`NHSD-Session-URID`). This module holds the rules, free of
//! any token format: which access needs which activity, and which roles
//! belong to a calling setting. Verifying the token is `cpis-runtime`'s.

use std::fmt;

/// National RBAC activity "View CP-IS Flag": a notifying read (the council is told).
pub const VIEW_FLAG_NOTIFYING: &str = "B0107";
/// National RBAC activity for viewing a flag without notification (scheduled care).
pub const VIEW_FLAG_SILENTLY: &str = "B0170";

/// One role of a person, as the token's `nhsid_nrbac_roles` carries it.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Role {
    /// SDS role profile id (`person_roleid`): what `NHSD-Session-URID` names.
    pub role_profile_id: String,
    /// SDS id of the person's organisation link (`person_orgid`).
    pub person_org_id: String,
    /// ODS code of the organisation the role is held at (`org_code`).
    pub org_code: String,
    /// Job category and role, colon-separated (`role_code`, e.g. `S8000:G8000:R8000`).
    pub role_code: String,
    /// The role's name (`role_name`, in CIS2 the quoted category path).
    pub role_name: String,
    /// National RBAC activity codes of the role (`activity_codes`).
    pub activity_codes: Vec<String>,
}

impl Role {
    /// The job role's own code: the last part of `role_code` (`R8000`).
    pub fn job_role_code(&self) -> &str {
        self.role_code.rsplit(':').next().unwrap_or_default()
    }

    /// The job role's name: the last quoted part of a CIS2 `role_name`
    /// (`"Clinical":"Clinical Provision":"Nurse Access Role"` gives `Nurse Access Role`),
    /// or the name as given.
    pub fn job_role_name(&self) -> String {
        let last = if self.role_name.contains("\":\"") {
            self.role_name.rsplit("\":\"").next().unwrap_or_default()
        } else {
            self.role_name.as_str()
        };
        last.trim().trim_matches('"').to_string()
    }

    /// True when the role carries `activity`.
    pub fn has(&self, activity: &str) -> bool {
        self.activity_codes.iter().any(|a| a == activity)
    }
}

impl fmt::Debug for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Ids of a person's role, never their name: safe in a log line.
        f.debug_struct("Role")
            .field("org_code", &self.org_code)
            .field("role_code", &self.role_code)
            .field("activity_codes", &self.activity_codes)
            .finish_non_exhaustive()
    }
}

/// A person whose token verified, with the role they selected.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct User {
    /// The token's subject (`sub`).
    pub subject: String,
    /// SDS user id (`nhsid_useruid`).
    pub user_id: String,
    /// The person's name (`name`). Personal data: never logged.
    pub name: String,
    /// The selected role.
    pub role: Role,
    /// Name of the role's organisation, when the token says (`nhsid_user_orgs`).
    pub org_name: String,
}

impl fmt::Debug for User {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("User").field("role", &self.role).finish_non_exhaustive()
    }
}

/// Who is shown an answer, as recorded with the access.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Viewer {
    /// A person named by a verified token.
    Verified(Box<User>),
    /// Only in the migration mode (`CPIS_USER_AUTH=optional`), a request
    /// without a token: the id the setting asserted, marked unverified
    /// wherever it is shown.
    Unverified {
        /// The request's `user_id`.
        user_id: String,
    },
}

impl Viewer {
    /// The id recorded as the viewer's: the SDS user id, or the asserted one.
    pub fn user_id(&self) -> &str {
        match self {
            Viewer::Verified(user) => &user.user_id,
            Viewer::Unverified { user_id } => user_id,
        }
    }

    /// Whether this viewer may make `access`; the refusal names the reason.
    /// An unverified viewer (migration mode) is trusted as the setting asserts it.
    pub fn may(&self, access: Access) -> Result<(), Refusal> {
        match self {
            Viewer::Verified(user) => access.allowed_for(&user.role),
            Viewer::Unverified { .. } => Ok(()),
        }
    }
}

/// The kinds of access to a person's flags and history, each needing its activity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Unscheduled care: the flags are shown and the council is told (`CheckIn`,
    /// FHIR CareTeam with `IsUnscheduledAccessEvent` true or absent). Needs B0107.
    NotifyingRead,
    /// Scheduled care: the flags are shown, audited, nobody told (`SilentRead`,
    /// FHIR CareTeam with `IsUnscheduledAccessEvent: false`). Needs B0170 or B0107.
    SilentRead,
    /// A read of the person's unscheduled-care history (`ListEpisodes`, FHIR
    /// AuditEvent). Needs B0170 or B0107.
    EpisodeRead,
    /// Scheduled care records that the person was not brought to an
    /// appointment (`RecordWasNotBrought`); no flag is shown. Needs B0170 or B0107.
    WasNotBrought,
}

impl Access {
    /// The activities any one of which allows this access.
    pub fn activities(self) -> &'static [&'static str] {
        match self {
            Access::NotifyingRead => &[VIEW_FLAG_NOTIFYING],
            Access::SilentRead | Access::EpisodeRead | Access::WasNotBrought => {
                &[VIEW_FLAG_SILENTLY, VIEW_FLAG_NOTIFYING]
            }
        }
    }

    /// What the access is called in a refusal.
    fn describe(self) -> &'static str {
        match self {
            Access::NotifyingRead => "a notifying read (the council is told)",
            Access::SilentRead => "a silent read",
            Access::EpisodeRead => "a read of the access history",
            Access::WasNotBrought => "a record that the person was not brought",
        }
    }

    /// Whether `role` allows this access.
    pub fn allowed_for(self, role: &Role) -> Result<(), Refusal> {
        if self.activities().iter().any(|a| role.has(a)) {
            Ok(())
        } else {
            Err(Refusal::MissingActivity { access: self.describe(), needs: self.activities().join(" or ") })
        }
    }
}

/// Why a verified person may not make a call: `PERMISSION_DENIED`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The selected role is held at another organisation than the calling setting's.
    #[error(
        "the selected role (NHSD-Session-URID) belongs to organisation {role_org}, not to this setting ({setting})"
    )]
    OtherOrganisation {
        /// The role's ODS code.
        role_org: String,
        /// The calling setting's ODS code.
        setting: String,
    },
    /// The selected role lacks the activity the access needs.
    #[error("the selected role may not make {access}: it needs the national RBAC activity {needs}")]
    MissingActivity {
        /// The access asked for.
        access: &'static str,
        /// The activity codes, any one of which would do.
        needs: String,
    },
}

/// Whether a role held at `org_code` may act for the setting `setting_code`:
/// the setting's own ODS code, or the organisation the site belongs to (the
/// first three characters of a five-character site code, e.g. `RBQ` for `RBQ01`).
pub fn role_belongs_to_setting(org_code: &str, setting_code: &str) -> Result<(), Refusal> {
    let parent = (setting_code.len() == 5).then(|| &setting_code[..3]);
    if org_code.eq_ignore_ascii_case(setting_code) || parent.is_some_and(|p| org_code.eq_ignore_ascii_case(p)) {
        Ok(())
    } else {
        Err(Refusal::OtherOrganisation { role_org: org_code.chars().take(16).collect(), setting: setting_code.into() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn role(activities: &[&str]) -> Role {
        Role {
            role_profile_id: "555254240100".into(),
            org_code: "RBQ".into(),
            role_code: "S8000:G8000:R8001".into(),
            role_name: "\"Clinical\":\"Clinical Provision\":\"Nurse Access Role\"".into(),
            activity_codes: activities.iter().map(|a| a.to_string()).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn each_access_needs_its_activity() {
        let notifying = role(&[VIEW_FLAG_NOTIFYING]);
        let silent = role(&[VIEW_FLAG_SILENTLY]);
        let neither = role(&["B0264"]);
        for access in [Access::NotifyingRead, Access::SilentRead, Access::EpisodeRead] {
            assert_eq!(access.allowed_for(&notifying), Ok(()), "{access:?} with B0107");
            assert!(access.allowed_for(&neither).is_err(), "{access:?} without either");
        }
        assert!(Access::NotifyingRead.allowed_for(&silent).is_err());
        assert_eq!(Access::SilentRead.allowed_for(&silent), Ok(()));
        assert_eq!(Access::EpisodeRead.allowed_for(&silent), Ok(()));
        let refusal = Access::NotifyingRead.allowed_for(&silent).unwrap_err().to_string();
        assert!(refusal.contains("B0107"), "{refusal}");
    }

    #[test]
    fn a_role_belongs_to_its_site_or_the_sites_organisation() {
        assert_eq!(role_belongs_to_setting("RBQ01", "RBQ01"), Ok(()));
        assert_eq!(role_belongs_to_setting("RBQ", "RBQ01"), Ok(()));
        assert_eq!(role_belongs_to_setting("Y01234", "Y01234"), Ok(()));
        // Only a five-character site code has a parent organisation.
        assert!(role_belongs_to_setting("RBQ", "RBQ0").is_err());
        assert!(role_belongs_to_setting("RWJ", "RBQ01").is_err());
        assert!(role_belongs_to_setting("Y0123", "Y01234").is_err());
        assert!(role_belongs_to_setting("RBQ", "RBQ").is_ok());
    }

    #[test]
    fn job_role_code_and_name_come_from_the_cis2_forms() {
        let r = role(&[]);
        assert_eq!(r.job_role_code(), "R8001");
        assert_eq!(r.job_role_name(), "Nurse Access Role");
        let plain = Role { role_name: "Clinical Practitioner Access Role".into(), role_code: "R8000".into(), ..r };
        assert_eq!(plain.job_role_code(), "R8000");
        assert_eq!(plain.job_role_name(), "Clinical Practitioner Access Role");
    }

    #[test]
    fn an_unverified_viewer_is_trusted_as_asserted_and_no_debug_output_names_a_person() {
        let v = Viewer::Unverified { user_id: "nurse-1".into() };
        assert_eq!(v.may(Access::NotifyingRead), Ok(()));
        let user =
            User { name: "Alex Example".into(), user_id: "910000000001".into(), role: role(&[]), ..Default::default() };
        let shown = format!("{:?}", Viewer::Verified(Box::new(user)));
        assert!(!shown.contains("Alex") && !shown.contains("910000000001"), "{shown}");
    }
}
