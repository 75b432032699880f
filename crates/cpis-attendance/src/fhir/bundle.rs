//! The searchset Bundle every search answers with, as the national guide
//! shows it: `total` (the matches, not the included resources), a `self`
//! link, and one entry per resource with an absolute `fullUrl`
//! (`[base]/{type}/{id}`) and its `search.mode` (`match`, or `include` for a
//! resource an `_include` brought in). No match is a Bundle with total 0 and
//! no entries.

use chrono::{SecondsFormat, Utc};
use serde_json::{json, Value};

/// A searchset Bundle of `matches` and `included` resources, whose URLs
/// start at `base`; `self_url` is the search as the client sent it.
pub fn searchset(base: &str, self_url: &str, matches: Vec<Value>, included: Vec<Value>) -> Value {
    let total = matches.len();
    let entries: Vec<Value> = matches
        .into_iter()
        .map(|r| (r, "match"))
        .chain(included.into_iter().map(|r| (r, "include")))
        .map(|(resource, mode)| json!({ "fullUrl": full_url(base, &resource), "resource": resource, "search": { "mode": mode } }))
        .collect();
    let mut bundle = json!({
        "resourceType": "Bundle",
        "id": uuid::Uuid::new_v4().to_string(),
        "meta": { "lastUpdated": Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true) },
        "type": "searchset",
        "total": total,
        "link": [{ "relation": "self", "url": self_url }],
    });
    if !entries.is_empty() {
        bundle["entry"] = Value::Array(entries);
    }
    bundle
}

/// The resource's absolute URL on this server: `[base]/{resourceType}/{id}`.
pub fn full_url(base: &str, resource: &Value) -> String {
    let kind = resource["resourceType"].as_str().unwrap_or_default();
    let id = resource["id"].as_str().unwrap_or_default();
    format!("{base}/{kind}/{id}")
}

/// The search's own URL (the client's query, as sent) for the `self` link.
pub fn self_link(base: &str, resource: &str, query: Option<&str>) -> String {
    match query {
        Some(q) if !q.is_empty() => format!("{base}/{resource}?{q}"),
        _ => format!("{base}/{resource}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn total_counts_the_matches_and_every_entry_has_an_absolute_full_url() {
        let base = "https://api.example.nhs.uk/cpis/FHIR/R4";
        let event = json!({ "resourceType": "AuditEvent", "id": "a1" });
        let role = json!({ "resourceType": "PractitionerRole", "id": "r1" });
        let b = searchset(base, &self_link(base, "AuditEvent", Some("patient:identifier=x")), vec![event], vec![role]);
        assert_eq!(b["total"], 1);
        assert_eq!(b["link"][0]["url"], format!("{base}/AuditEvent?patient:identifier=x"));
        assert_eq!(b["entry"][0]["fullUrl"], format!("{base}/AuditEvent/a1"));
        assert_eq!(b["entry"][0]["search"]["mode"], "match");
        assert_eq!(b["entry"][1]["fullUrl"], format!("{base}/PractitionerRole/r1"));
        assert_eq!(b["entry"][1]["search"]["mode"], "include");
        let empty = searchset(base, base, vec![], vec![]);
        assert_eq!(empty["total"], 0);
        assert!(empty.get("entry").is_none());
    }
}
