//! The plan as the registry understands it: validation of what a council
//! sends, and the rules of scope.

use chrono::{DateTime, Datelike, Months, NaiveDate, Utc};
use cpis_domain::validate::{NhsNumber, Violations};
use cpis_proto::common::v1 as common;
use cpis_proto::registry::v1 as pb;

/// Longest `local_reference` accepted.
pub const MAX_LOCAL_REFERENCE: usize = 64;
/// Longest team name accepted.
pub const MAX_TEAM_NAME: usize = 200;
/// Longest email address accepted (RFC 5321 path limit).
pub const MAX_EMAIL: usize = 254;

/// A council's contact details, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Contact {
    /// The team's name.
    pub team_name: String,
    /// Office-hours telephone.
    pub office_phone: String,
    /// Out-of-hours (emergency duty) telephone.
    pub emergency_duty_phone: String,
    /// Secure email.
    pub email: String,
}

/// A plan as sent by a council, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanInput {
    /// The council's case reference.
    pub local_reference: String,
    /// The person's NHS number (the pregnant woman's for unborn plans).
    pub nhs_number: NhsNumber,
    /// Date of birth; none for unborn plans.
    pub date_of_birth: Option<NaiveDate>,
    /// The kind of plan.
    pub plan_type: common::PlanType,
    /// When the plan started.
    pub start_date: NaiveDate,
    /// When it ended or will end.
    pub end_date: Option<NaiveDate>,
    /// Expected delivery date (unborn plans only).
    pub expected_delivery_date: Option<NaiveDate>,
    /// How to reach the council's team.
    pub contact: Contact,
}

/// A plan as stored.
#[derive(Debug, Clone)]
pub struct StoredPlan {
    /// Server-assigned id.
    pub plan_id: uuid::Uuid,
    /// The owning council.
    pub council_code: String,
    /// The plan's fields.
    pub input: PlanInput,
    /// Version, incremented on every real change.
    pub version: i64,
    /// When it last changed.
    pub updated_at: DateTime<Utc>,
}

impl StoredPlan {
    /// The wire form.
    pub fn to_proto(&self) -> pb::Plan {
        let p = &self.input;
        pb::Plan {
            plan_id: self.plan_id.to_string(),
            council_code: self.council_code.clone(),
            local_reference: p.local_reference.clone(),
            nhs_number: p.nhs_number.as_str().to_string(),
            date_of_birth: fmt_date(p.date_of_birth),
            plan_type: p.plan_type as i32,
            start_date: p.start_date.to_string(),
            end_date: fmt_date(p.end_date),
            expected_delivery_date: fmt_date(p.expected_delivery_date),
            contact: Some(p.contact.to_proto()),
            version: self.version,
            updated_at: Some(cpis_domain::time::to_timestamp(self.updated_at)),
            // Set from the number's changes where they are read (`demographics::mark`).
            nhs_number_change: None,
        }
    }
}

impl Contact {
    /// The wire form.
    pub fn to_proto(&self) -> common::ContactDetails {
        common::ContactDetails {
            team_name: self.team_name.clone(),
            office_phone: self.office_phone.clone(),
            emergency_duty_phone: self.emergency_duty_phone.clone(),
            email: self.email.clone(),
        }
    }
}

/// `YYYY-MM-DD`, or empty for none.
pub fn fmt_date(d: Option<NaiveDate>) -> String {
    d.map(|d| d.to_string()).unwrap_or_default()
}

/// The last day a plan ending on `end` is still in scope: it stays visible
/// while it ended less than 12 months before the day asked about.
pub fn last_day_in_scope(end: NaiveDate) -> NaiveDate {
    end.checked_add_months(Months::new(12)).and_then(|d| d.pred_opt()).unwrap_or(NaiveDate::MAX)
}

/// True when a plan is in scope on `day`: started, and either not ended or
/// ended less than 12 months before, after the day it started (a plan that
/// ends on its start date never comes into force and flags nobody).
pub fn in_scope_on(start: NaiveDate, end: Option<NaiveDate>, day: NaiveDate) -> bool {
    start <= day && end.is_none_or(|e| e > start && day <= last_day_in_scope(e))
}

fn plan_type(v: &mut Violations, field: &str, value: i32) -> Option<common::PlanType> {
    match common::PlanType::try_from(value) {
        Ok(common::PlanType::Unspecified) => {
            v.add(field, "is required");
            None
        }
        Ok(t) => Some(t),
        Err(_) => {
            v.add(field, format!("{value} is not a PlanType"));
            None
        }
    }
}

fn phone(v: &mut Violations, field: &str, value: &str) {
    if !v.text(field, value, 32) {
        return;
    }
    let digits = value.chars().filter(char::is_ascii_digit).count();
    let allowed = value.chars().all(|c| c.is_ascii_digit() || " +()-".contains(c));
    if !allowed || !(6..=15).contains(&digits) {
        v.add(field, "must be a telephone number: 6 to 15 digits, with spaces, +, ( ) or - only");
    }
}

fn email(v: &mut Violations, field: &str, value: &str) {
    if !v.text(field, value, MAX_EMAIL) {
        return;
    }
    let ok = match value.split_once('@') {
        Some((local, domain)) => {
            !local.is_empty()
                && domain.contains('.')
                && !domain.starts_with('.')
                && !domain.ends_with('.')
                && !value.contains(char::is_whitespace)
                && !domain.contains('@')
        }
        None => false,
    };
    if !ok {
        v.add(field, "must be an email address");
    }
}

/// Checks a `local_reference`: present, bounded, no control characters.
pub fn local_reference(v: &mut Violations, field: &str, value: &str) -> bool {
    v.text(field, value, MAX_LOCAL_REFERENCE)
}

/// Validates a plan sent by a council; `prefix` is its field path
/// (e.g. `plan`), `today` the day "the future" starts after.
pub fn validate_plan(plan: Option<&pb::Plan>, prefix: &str, today: NaiveDate) -> Result<PlanInput, Violations> {
    let mut v = Violations::new();
    let Some(plan) = plan else {
        v.add(prefix, "is required");
        return Err(v);
    };
    let f = |name: &str| format!("{prefix}.{name}");

    local_reference(&mut v, &f("local_reference"), &plan.local_reference);
    let nhs_number = v.nhs_number(&f("nhs_number"), &plan.nhs_number);
    let plan_type = plan_type(&mut v, &f("plan_type"), plan.plan_type);
    let start_date = v.date(&f("start_date"), &plan.start_date);
    let end_date = v.optional_date(&f("end_date"), &plan.end_date);
    let dob = v.optional_date(&f("date_of_birth"), &plan.date_of_birth);
    let edd = v.optional_date(&f("expected_delivery_date"), &plan.expected_delivery_date);

    if let (Some(start), Some(Some(end))) = (start_date, end_date) {
        if end < start {
            v.add(f("end_date"), "must not be before start_date");
        }
    }
    if let Some(start) = start_date {
        if start.year() < 1990 {
            v.add(f("start_date"), "must not be before 1990");
        } else if start > today.checked_add_months(Months::new(12)).unwrap_or(NaiveDate::MAX) {
            v.add(f("start_date"), "must not be more than a year in the future");
        }
    }

    match plan_type {
        Some(common::PlanType::UnbornChildProtection) => {
            if let Some(Some(_)) = dob {
                v.add(
                    f("date_of_birth"),
                    "must be empty for an unborn child protection plan (the NHS number is the pregnant woman's)",
                );
            }
            match (edd, start_date) {
                (Some(None), _) => {
                    v.add(f("expected_delivery_date"), "is required for an unborn child protection plan")
                }
                (Some(Some(edd)), Some(start)) => {
                    let latest = start.checked_add_months(Months::new(12)).unwrap_or(NaiveDate::MAX);
                    if edd < start || edd > latest {
                        v.add(f("expected_delivery_date"), "must be within a year after start_date");
                    }
                }
                _ => {}
            }
        }
        Some(_) => {
            if let Some(Some(_)) = edd {
                v.add(f("expected_delivery_date"), "must be empty unless the plan is an unborn child protection plan");
            }
            match dob {
                Some(None) => v.add(f("date_of_birth"), "is required for this plan type"),
                Some(Some(dob)) => {
                    if dob > today {
                        v.add(f("date_of_birth"), "must not be in the future");
                    }
                    if let Some(start) = start_date {
                        let eighteenth = dob.checked_add_months(Months::new(18 * 12)).unwrap_or(NaiveDate::MAX);
                        if start < dob {
                            v.add(f("start_date"), "must not be before date_of_birth");
                        } else if start >= eighteenth {
                            v.add(f("date_of_birth"), "the child must be under 18 at start_date");
                        }
                    }
                }
                None => {}
            }
        }
        None => {}
    }

    let contact = match &plan.contact {
        None => {
            v.add(f("contact"), "is required");
            None
        }
        Some(c) => {
            v.text(&f("contact.team_name"), &c.team_name, MAX_TEAM_NAME);
            phone(&mut v, &f("contact.office_phone"), &c.office_phone);
            phone(&mut v, &f("contact.emergency_duty_phone"), &c.emergency_duty_phone);
            email(&mut v, &f("contact.email"), &c.email);
            Some(Contact {
                team_name: c.team_name.trim().to_string(),
                office_phone: c.office_phone.trim().to_string(),
                emergency_duty_phone: c.emergency_duty_phone.trim().to_string(),
                email: c.email.trim().to_string(),
            })
        }
    };

    match (v.is_empty(), nhs_number, plan_type, start_date, end_date, dob, edd, contact) {
        (
            true,
            Some(nhs_number),
            Some(plan_type),
            Some(start_date),
            Some(end_date),
            Some(dob),
            Some(edd),
            Some(contact),
        ) => Ok(PlanInput {
            local_reference: plan.local_reference.clone(),
            nhs_number,
            date_of_birth: dob,
            plan_type,
            start_date,
            end_date,
            expected_delivery_date: edd,
            contact,
        }),
        _ => Err(v),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> NaiveDate {
        cpis_domain::validate::parse_date(s).unwrap()
    }

    #[test]
    fn scope_lasts_twelve_months_after_the_end() {
        let start = d("2024-01-01");
        let end = Some(d("2025-03-15"));
        assert!(!in_scope_on(start, end, d("2023-12-31")));
        assert!(in_scope_on(start, end, d("2025-03-15")));
        assert!(in_scope_on(start, end, d("2026-03-14")));
        assert!(!in_scope_on(start, end, d("2026-03-15")));
        assert!(in_scope_on(start, None, d("2040-01-01")));
        // Ended on the day it started (a plan not yet started left out of a snapshot): never in force.
        assert!(!in_scope_on(d("2030-05-01"), Some(d("2030-05-01")), d("2030-05-01")));
        assert!(!in_scope_on(d("2030-05-01"), Some(d("2030-05-01")), d("2030-09-01")));
        // A plan ending on 29 February stays in scope until 27 February the next year.
        assert_eq!(last_day_in_scope(d("2024-02-29")), d("2025-02-27"));
    }
}
