//! Our one extension, and its StructureDefinition: the expected delivery
//! date of an unborn child protection plan, on its CareTeam. The national
//! guide has no element for it; a client following the guide ignores it.
//!
//! Its URL is real: `[base]/StructureDefinition/cpis-expected-delivery-date`
//! on this server, where `GET` answers with the definition; and stable for a
//! deployment, whose public base is fixed by `CPIS_FHIR_BASE_URL`. The
//! CapabilityStatement names it.

use serde_json::{json, Value};

/// The extension's id.
pub const EXPECTED_DELIVERY_DATE_ID: &str = "cpis-expected-delivery-date";

/// The extension's URL on the server whose public base is `base`.
pub fn expected_delivery_date_url(base: &str) -> String {
    format!("{base}/StructureDefinition/{EXPECTED_DELIVERY_DATE_ID}")
}

/// The extension carrying `date` (YYYY-MM-DD).
pub fn expected_delivery_date(base: &str, date: &str) -> Value {
    json!({ "url": expected_delivery_date_url(base), "valueDate": date })
}

/// The StructureDefinition named `id`, if it is one of ours.
pub fn by_id(base: &str, id: &str) -> Option<Value> {
    (id == EXPECTED_DELIVERY_DATE_ID).then(|| expected_delivery_date_definition(base))
}

/// The definition of the expected delivery date extension.
fn expected_delivery_date_definition(base: &str) -> Value {
    let url = expected_delivery_date_url(base);
    json!({
        "resourceType": "StructureDefinition",
        "id": EXPECTED_DELIVERY_DATE_ID,
        "url": url,
        "version": env!("CARGO_PKG_VERSION"),
        "name": "CpisExpectedDeliveryDate",
        "title": "Expected delivery date of an unborn child protection plan",
        "status": "active",
        "publisher": "cpis",
        "description": "The expected delivery date of the unborn child on an unborn child protection plan, as the responsible council registered it. It is on the CareTeam of the plan, whose subject is the pregnant woman (nothing else about the unborn child is carried). Present only on unborn child protection plans.",
        "fhirVersion": "4.0.1",
        "kind": "complex-type",
        "abstract": false,
        "context": [{ "type": "element", "expression": "CareTeam" }],
        "type": "Extension",
        "baseDefinition": "http://hl7.org/fhir/StructureDefinition/Extension",
        "derivation": "constraint",
        "differential": {
            "element": [
                {
                    "id": "Extension",
                    "path": "Extension",
                    "short": "Expected delivery date (unborn child protection plan)",
                    "definition": "The expected delivery date of the unborn child on the plan.",
                    "min": 0,
                    "max": "1",
                },
                { "id": "Extension.extension", "path": "Extension.extension", "max": "0" },
                { "id": "Extension.url", "path": "Extension.url", "fixedUri": url },
                { "id": "Extension.value[x]", "path": "Extension.value[x]", "min": 1, "type": [{ "code": "date" }] },
            ],
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_extension_url_is_where_its_definition_is_served() {
        let base = "https://api.example.nhs.uk/cpis/FHIR/R4";
        let ext = expected_delivery_date(base, "2027-03-01");
        let definition = by_id(base, EXPECTED_DELIVERY_DATE_ID).unwrap();
        assert_eq!(ext["url"], definition["url"]);
        assert_eq!(definition["url"], format!("{base}/StructureDefinition/{}", definition["id"].as_str().unwrap()));
        assert!(by_id(base, "other").is_none());
    }
}
