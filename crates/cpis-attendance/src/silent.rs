//! The silent read: a scheduled-care setting (GP, community services, CAMHS,
//! 0-19 services, dentistry, sexual health, sexual assault referral centres)
//! reads a person's flags. The access is audited (who, where, when, and that
//! it was silent) for the councils holding a flag; no episode is created and
//! no council is alerted (`crate::reads`). Here: what a valid request is.

use crate::checkin::setting_type;
use cpis_domain::validate::{NhsNumber, Violations};
use cpis_proto::attendance::v1::SilentReadRequest;
use cpis_proto::common::v1::SettingType;
use cpis_runtime::ApiError;

/// Longest accepted `request_id`, in characters.
const MAX_ID_CHARS: usize = 128;

/// A silent read that passed validation.
#[derive(Debug)]
pub struct ValidSilentRead {
    /// The person.
    pub nhs_number: NhsNumber,
    /// The kind of setting (scheduled care).
    pub setting_type: SettingType,
}

/// Checks every field, reporting all violations at once (the person shown
/// the answer is the verified user, not a field).
pub fn validate(req: &SilentReadRequest) -> Result<ValidSilentRead, ApiError> {
    let mut v = Violations::new();
    v.text("request_id", &req.request_id, MAX_ID_CHARS);
    let nhs_number = v.nhs_number("nhs_number", &req.nhs_number);
    let setting_type = setting_type(
        &mut v,
        req.setting_type,
        true,
        "is an unscheduled-care setting: unscheduled care makes a notifying read (CheckIn)",
    );
    v.finish()?;
    let (Some(nhs_number), Some(setting_type)) = (nhs_number, setting_type) else {
        return Err(ApiError::internal("validation passed without values"));
    };
    Ok(ValidSilentRead { nhs_number, setting_type })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(e: ApiError) -> Vec<String> {
        match e {
            ApiError::InvalidArgument(v) => v.into_iter().map(|v| v.field).collect(),
            other => panic!("expected INVALID_ARGUMENT, got {other:?}"),
        }
    }

    #[test]
    fn only_scheduled_care_reads_silently_and_every_bad_field_is_named() {
        let good = SilentReadRequest {
            request_id: "r-1".into(),
            nhs_number: "9990000018".into(),
            setting_type: SettingType::GpPractice as i32,
            ..Default::default()
        };
        assert!(validate(&good).is_ok());
        let ed = SilentReadRequest { setting_type: SettingType::EmergencyDepartment as i32, ..good.clone() };
        assert_eq!(fields(validate(&ed).unwrap_err()), ["setting_type"]);
        assert_eq!(
            fields(validate(&SilentReadRequest::default()).unwrap_err()),
            ["request_id", "nhs_number", "setting_type"]
        );
    }
}
