//! Changes of NHS number from the national demographics service: a number
//! superseded by another (duplicate records merged) or made inactive (an
//! adoption, a death). What a valid change is, checked in one place for the
//! Attendance service that receives it and the Registry that records it.

use crate::validate::{NhsNumber, Violations};
use chrono::NaiveDate;

/// The wire value of a supersession (`NHS_NUMBER_CHANGE_KIND_SUPERSEDED`).
pub const SUPERSEDED: i32 = 1;
/// The wire value of an inactivation (`NHS_NUMBER_CHANGE_KIND_INACTIVE`).
pub const INACTIVE: i32 = 2;

/// Longest accepted event id, in characters.
const MAX_EVENT_ID: usize = 128;

/// What happened to a number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChangeKind {
    /// Superseded by the replacement.
    Superseded(NhsNumber),
    /// Made inactive, no replacement given.
    Inactive,
}

impl ChangeKind {
    /// The stored name (`superseded`, `inactive`).
    pub fn as_str(&self) -> &'static str {
        match self {
            ChangeKind::Superseded(_) => "superseded",
            ChangeKind::Inactive => "inactive",
        }
    }

    /// The replacement, for a supersession.
    pub fn replacement(&self) -> Option<&NhsNumber> {
        match self {
            ChangeKind::Superseded(n) => Some(n),
            ChangeKind::Inactive => None,
        }
    }
}

/// A change that passed validation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NhsNumberChange {
    /// The number that changed.
    pub nhs_number: NhsNumber,
    /// What happened to it.
    pub kind: ChangeKind,
    /// When it took effect.
    pub effective_date: NaiveDate,
    /// The change feed's id of the event.
    pub event_id: String,
}

/// The fields of a change as they arrive.
#[derive(Debug, Clone, Copy)]
pub struct ChangeFields<'a> {
    /// The number that changed.
    pub nhs_number: &'a str,
    /// `SUPERSEDED` or `INACTIVE`.
    pub kind: i32,
    /// The replacement (supersession only).
    pub replacement: &'a str,
    /// `YYYY-MM-DD`.
    pub effective_date: &'a str,
    /// The feed's event id.
    pub event_id: &'a str,
}

/// Checks a change, recording each bad field (named `<prefix>.<field>`) in `v`.
pub fn check(v: &mut Violations, prefix: &str, f: ChangeFields<'_>) -> Option<NhsNumberChange> {
    let field = |name: &str| format!("{prefix}.{name}");
    let nhs_number = v.nhs_number(&field("nhs_number"), f.nhs_number);
    let kind = match f.kind {
        SUPERSEDED => match v.nhs_number(&field("replacement_nhs_number"), f.replacement) {
            Some(r) if nhs_number.as_ref().is_some_and(|n| n == &r) => {
                v.add(field("replacement_nhs_number"), "must differ from the number it replaces");
                None
            }
            other => other.map(ChangeKind::Superseded),
        },
        INACTIVE if !f.replacement.is_empty() => {
            v.add(field("replacement_nhs_number"), "is given for a superseded number only");
            None
        }
        INACTIVE => Some(ChangeKind::Inactive),
        0 => {
            v.add(field("kind"), "is required");
            None
        }
        _ => {
            v.add(field("kind"), "is not a known kind of change");
            None
        }
    };
    let effective_date = v.date(&field("effective_date"), f.effective_date);
    let event_ok = v.text(&field("event_id"), f.event_id, MAX_EVENT_ID);
    let (nhs_number, kind, effective_date) = (nhs_number?, kind?, effective_date?);
    event_ok.then_some(())?;
    Some(NhsNumberChange { nhs_number, kind, effective_date, event_id: f.event_id.to_string() })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(f: ChangeFields<'_>) -> (Option<NhsNumberChange>, Vec<String>) {
        let mut v = Violations::new();
        let c = check(&mut v, "change", f);
        (c, v.list().iter().map(|x| x.field.clone()).collect())
    }

    const OK: ChangeFields<'static> = ChangeFields {
        nhs_number: "9990000018",
        kind: SUPERSEDED,
        replacement: "9990000026",
        effective_date: "2026-11-30",
        event_id: "ev-1",
    };

    #[test]
    fn a_supersession_names_another_valid_number_and_an_inactivation_none() {
        let (c, bad) = fields(OK);
        assert!(bad.is_empty());
        assert_eq!(c.unwrap().kind.replacement().map(NhsNumber::as_str), Some("9990000026"));
        assert_eq!(fields(ChangeFields { replacement: "9990000018", ..OK }).1, ["change.replacement_nhs_number"]);
        assert_eq!(fields(ChangeFields { replacement: "", ..OK }).1, ["change.replacement_nhs_number"]);
        assert_eq!(fields(ChangeFields { kind: INACTIVE, ..OK }).1, ["change.replacement_nhs_number"]);
        assert!(fields(ChangeFields { kind: INACTIVE, replacement: "", ..OK }).0.is_some());
        assert_eq!(
            fields(ChangeFields { kind: 0, effective_date: "30/11/2026", event_id: "", ..OK }).1,
            ["change.kind", "change.effective_date", "change.event_id"]
        );
    }
}
