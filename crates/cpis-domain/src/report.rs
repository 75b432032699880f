//! The rules of reports: which months a report covers (`YYYY-MM` to
//! `YYYY-MM`, months in England), and which counts the national report
//! withholds. Each service computes its own figures over its own schema;
//! the client puts them together.

use crate::validate::Violations;
use chrono::{Datelike, Months, NaiveDate};

/// Longest range a report may cover, in months.
pub const MAX_MONTHS: u32 = 24;

/// Counts from 1 to this are withheld in the national report (NHS
/// small-number disclosure control: a count of 1 to 4 could single out a
/// child); 0 and larger counts are shown.
pub const SUPPRESS_UP_TO: i64 = 4;

/// True for a count the national report withholds.
pub fn suppressed(n: i64) -> bool {
    (1..=SUPPRESS_UP_TO).contains(&n)
}

/// The months of a report, first to last, as the first day of each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MonthRange {
    /// The first month's first day.
    pub first: NaiveDate,
    /// The last month's first day.
    pub last: NaiveDate,
}

impl MonthRange {
    /// Every month of the range, in order.
    pub fn months(&self) -> Vec<NaiveDate> {
        let mut out = Vec::new();
        let mut m = self.first;
        while m <= self.last {
            out.push(m);
            m = m + Months::new(1);
        }
        out
    }

    /// The first day after the range.
    pub fn end_exclusive(&self) -> NaiveDate {
        self.last + Months::new(1)
    }
}

/// `YYYY-MM` of a month.
pub fn month_label(first_day: NaiveDate) -> String {
    format!("{:04}-{:02}", first_day.year(), first_day.month())
}

/// Parses `YYYY-MM` into the month's first day.
pub fn parse_month(s: &str) -> Option<NaiveDate> {
    let (y, m) = s.split_once('-')?;
    if y.len() != 4 || m.len() != 2 {
        return None;
    }
    NaiveDate::from_ymd_opt(y.parse().ok()?, m.parse().ok()?, 1)
}

/// Checks a report's `from_month` and `to_month`, naming each bad field.
pub fn range(v: &mut Violations, from: &str, to: &str) -> Option<MonthRange> {
    let first = parse_month(from);
    if first.is_none() {
        v.add("from_month", "must be a month, YYYY-MM");
    }
    let last = parse_month(to);
    if last.is_none() {
        v.add("to_month", "must be a month, YYYY-MM");
    }
    let (first, last) = (first?, last?);
    if last < first {
        v.add("to_month", "must not be before from_month");
        return None;
    }
    if last >= first + Months::new(MAX_MONTHS) {
        v.add("to_month", format!("must be at most {MAX_MONTHS} months after from_month"));
        return None;
    }
    Some(MonthRange { first, last })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_range_is_whole_months_at_most_two_years_long() {
        let mut v = Violations::new();
        let r = range(&mut v, "2026-11", "2027-02").unwrap();
        assert_eq!(
            r.months().iter().map(|m| month_label(*m)).collect::<Vec<_>>(),
            ["2026-11", "2026-12", "2027-01", "2027-02"]
        );
        assert_eq!(r.end_exclusive(), NaiveDate::from_ymd_opt(2027, 3, 1).unwrap());
        for (from, to, field) in [
            ("2026-13", "2027-01", "from_month"),
            ("2026-01", "26-02", "to_month"),
            ("2026-05", "2026-04", "to_month"),
            ("2024-01", "2026-01", "to_month"),
        ] {
            let mut v = Violations::new();
            assert!(range(&mut v, from, to).is_none());
            assert_eq!(v.list()[0].field, field, "{from}..{to}");
        }
    }

    #[test]
    fn one_to_four_are_withheld() {
        assert_eq!(
            (0..=8).map(suppressed).collect::<Vec<_>>(),
            [false, true, true, true, true, false, false, false, false]
        );
    }
}
