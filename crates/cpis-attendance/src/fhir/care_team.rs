//! CareTeam: one per plan in scope, built from the same `Flag` the gRPC
//! answers carry, in the national guide's shape (`cpis-careteam-bundle-01`,
//! the Consumer guide's Data-mapping page):
//!
//! | flag | CareTeam |
//! |---|---|
//! | plan type | `category`: SNOMED CT from the England-ChildProtectionPlan value set ([`plan_category`]) |
//! | responsible council | `name`: "{council} Local Authority" |
//! | office-hours phone | `telecom` with `use: work` ([`telecom`]) |
//! | emergency duty phone | `telecom` with `use: mobile` |
//! | start and end dates | `period.start`, `period.end` |
//! | NHS number | `subject.identifier` (the mother's for an unborn plan) |
//!
//! Beyond the guide, only in places a client following it ignores: `status`
//! (`inactive` for a plan ended within the last 12 months), the council's
//! GSS code in `managingOrganization`, its team name as a `participant`, its
//! email as a telecom with no `use` (so it is never taken for the office
//! number), and the expected delivery date of an unborn plan as an extension
//! (`structure_definition`).

use super::structure_definition;
use super::NHS_NUMBER_SYSTEM;
use cpis_proto::common::v1::{ContactDetails, Flag, PlanType};
use serde_json::{json, Value};

/// SNOMED CT.
pub const SNOMED: &str = "http://snomed.info/sct";

/// The namespace of ONS GSS codes (a council's code is `{this}/{code}` in ONS linked data).
pub const GSS_SYSTEM: &str = "http://statistics.data.gov.uk/id/statistical-geography";

/// The plan type's SNOMED CT concept and display, from the value set
/// England-ChildProtectionPlan: the one mapping of plan types.
pub fn plan_category(plan_type: i32) -> Option<(&'static str, &'static str)> {
    match PlanType::try_from(plan_type) {
        Ok(PlanType::ChildProtection) => Some(("342191000000101", "Subject to child protection plan")),
        Ok(PlanType::LookedAfter) => Some(("764841000000100", "Looked after child")),
        Ok(PlanType::UnbornChildProtection) => {
            Some(("818901000000100", "Unborn child subject to child protection plan"))
        }
        _ => None,
    }
}

/// The council's contact details as the guide's telecom: the office-hours
/// number `use: work`, the emergency duty number `use: mobile` (where the
/// guide's Data-mapping page has a client look for each), and the email
/// with no `use`. The one mapping of contacts.
pub fn telecom(contact: &ContactDetails) -> Vec<Value> {
    let mut telecom = Vec::new();
    if !contact.office_phone.is_empty() {
        telecom.push(json!({ "system": "phone", "value": contact.office_phone, "use": "work" }));
    }
    if !contact.emergency_duty_phone.is_empty() {
        telecom.push(json!({ "system": "phone", "value": contact.emergency_duty_phone, "use": "mobile" }));
    }
    if !contact.email.is_empty() {
        telecom.push(json!({ "system": "email", "value": contact.email }));
    }
    telecom
}

/// The responsible local authority as the guide names it ("Islington Local Authority").
pub fn local_authority(flag: &Flag) -> String {
    let name = if flag.council_name.is_empty() { &flag.council_code } else { &flag.council_name };
    format!("{name} Local Authority")
}

/// One CareTeam for one flag of the person `nhs_number`; extension URLs start at `base`.
pub fn care_team(base: &str, nhs_number: &str, flag: &Flag) -> Value {
    let category = match plan_category(flag.plan_type) {
        Some((code, display)) => json!([{ "coding": [{ "system": SNOMED, "code": code, "display": display }] }]),
        None => json!([{ "text": "Unknown plan type" }]),
    };
    let name = local_authority(flag);
    let mut team = json!({
        "resourceType": "CareTeam",
        "id": uuid::Uuid::new_v4().to_string(),
        "status": if flag.ended { "inactive" } else { "active" },
        "category": category,
        "name": name,
        "subject": { "identifier": { "system": NHS_NUMBER_SYSTEM, "value": nhs_number } },
        "managingOrganization": [{
            "identifier": { "system": GSS_SYSTEM, "value": flag.council_code },
            "display": name,
        }],
    });
    let mut period = serde_json::Map::new();
    if !flag.start_date.is_empty() {
        period.insert("start".into(), json!(flag.start_date));
    }
    if !flag.end_date.is_empty() {
        period.insert("end".into(), json!(flag.end_date));
    }
    if !period.is_empty() {
        team["period"] = Value::Object(period);
    }
    let contact = flag.contact.clone().unwrap_or_default();
    let telecom = telecom(&contact);
    if !telecom.is_empty() {
        team["telecom"] = Value::Array(telecom);
    }
    if !contact.team_name.is_empty() {
        team["participant"] = json!([{ "member": { "display": contact.team_name } }]);
    }
    if !flag.expected_delivery_date.is_empty() {
        team["extension"] = json!([structure_definition::expected_delivery_date(base, &flag.expected_delivery_date)]);
    }
    team
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flag(plan_type: PlanType) -> Flag {
        Flag {
            plan_type: plan_type as i32,
            start_date: "2022-09-26".into(),
            end_date: "2023-09-26".into(),
            council_code: "E09000019".into(),
            council_name: "Islington".into(),
            contact: Some(ContactDetails {
                team_name: "Children's Services Contact Team".into(),
                office_phone: "020 7527 7400".into(),
                emergency_duty_phone: "020 7226 0992".into(),
                email: "csct@example.gov.uk".into(),
            }),
            ..Default::default()
        }
    }

    /// What the guide's `cpis-careteam-bundle-01` shows, element for element.
    #[test]
    fn a_child_protection_plan_has_the_guides_shape() {
        let team = care_team("https://x/FHIR/R4", "9990000018", &flag(PlanType::ChildProtection));
        assert_eq!(team["category"][0]["coding"][0]["system"], "http://snomed.info/sct");
        assert_eq!(team["category"][0]["coding"][0]["code"], "342191000000101");
        assert_eq!(team["name"], "Islington Local Authority");
        assert_eq!(team["subject"]["identifier"]["system"], "https://fhir.nhs.uk/Id/nhs-number");
        assert_eq!(team["subject"]["identifier"]["value"], "9990000018");
        let by_use = |u: &str| {
            team["telecom"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|t| t["use"] == u)
                .map(|t| t["value"].clone())
                .collect::<Vec<_>>()
        };
        assert_eq!(by_use("work"), [json!("020 7527 7400")], "office hours only: the email has no use");
        assert_eq!(by_use("mobile"), [json!("020 7226 0992")]);
        assert_eq!(team["period"], json!({ "start": "2022-09-26", "end": "2023-09-26" }));
        assert!(team.get("contained").is_none() && team.get("extension").is_none());
    }

    #[test]
    fn each_plan_type_has_its_snomed_concept_and_an_unborn_plan_its_expected_delivery_date() {
        let codes: Vec<&str> = [PlanType::ChildProtection, PlanType::LookedAfter, PlanType::UnbornChildProtection]
            .iter()
            .map(|t| plan_category(*t as i32).unwrap().0)
            .collect();
        assert_eq!(codes, ["342191000000101", "764841000000100", "818901000000100"]);
        let mut unborn = flag(PlanType::UnbornChildProtection);
        unborn.expected_delivery_date = "2027-03-01".into();
        unborn.ended = true;
        let team = care_team("https://x/FHIR/R4", "9990000018", &unborn);
        assert_eq!(team["status"], "inactive");
        assert_eq!(team["extension"][0]["url"], "https://x/FHIR/R4/StructureDefinition/cpis-expected-delivery-date");
        assert_eq!(team["extension"][0]["valueDate"], "2027-03-01");
    }
}
