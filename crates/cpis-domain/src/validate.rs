//! Validation of what comes in over the wire: NHS numbers, calendar dates,
//! council and setting codes, bounded strings. Each check names the field that
//! failed; no message ever echoes an NHS number.

use chrono::NaiveDate;
use std::fmt;

/// One field that failed validation: its path and a human reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldViolation {
    /// Path of the field, e.g. `plan.nhs_number`.
    pub field: String,
    /// What is wrong with it; never echoes personal data.
    pub description: String,
}

impl FieldViolation {
    /// A violation of `field`.
    pub fn new(field: impl Into<String>, description: impl Into<String>) -> Self {
        Self { field: field.into(), description: description.into() }
    }
}

/// A request that failed validation: every field that failed, at once.
/// The runtime turns it into `INVALID_ARGUMENT` with `BadRequest` details.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid argument")]
pub struct Invalid(pub Vec<FieldViolation>);

/// The modulus-11 check digit of an NHS number's first nine digits (ASCII),
/// or `None` when there is none (the remainder gives 10: no valid number
/// starts with these nine digits). The one check-digit function.
pub fn nhs_check_digit(nine: &[u8]) -> Option<u8> {
    if nine.len() != 9 || !nine.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let sum: u32 = nine.iter().zip((2..=10).rev()).map(|(d, w)| u32::from(d - b'0') * w).sum();
    match 11 - sum % 11 {
        11 => Some(0),
        10 => None,
        c => Some(c as u8),
    }
}

/// Nine digits and their check digit, or `None` when they have none.
pub fn with_nhs_check_digit(nine: &str) -> Option<String> {
    nhs_check_digit(nine.as_bytes()).map(|c| format!("{nine}{c}"))
}

/// True when `s` is ten ASCII digits with a valid modulus-11 check digit.
pub fn is_valid_nhs_number(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 10 && b[9].is_ascii_digit() && nhs_check_digit(&b[..9]) == Some(b[9] - b'0')
}

/// A validated NHS number. Its `Debug` is redacted so it cannot leak into logs
/// by accident; use [`NhsNumber::as_str`] where the number must be stored or sent.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct NhsNumber(String);

impl NhsNumber {
    /// Parses and validates an NHS number.
    pub fn parse(s: &str) -> Option<NhsNumber> {
        is_valid_nhs_number(s).then(|| NhsNumber(s.to_string()))
    }

    /// The ten digits.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for NhsNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("NhsNumber(<redacted>)")
    }
}

/// True for an ONS GSS code of an English upper-tier authority
/// (`E06`, `E08`, `E09` or `E10` followed by six digits).
pub fn is_council_code(s: &str) -> bool {
    let b = s.as_bytes();
    // Bytes, not `&s[..3]`: a 9-byte string with a multi-byte character would
    // panic on a char boundary (reachable through a certificate's URI SAN).
    b.len() == 9 && matches!(&b[..3], b"E06" | b"E08" | b"E09" | b"E10") && b[3..].iter().all(u8::is_ascii_digit)
}

/// True for an ODS site code: 3 to 6 upper-case letters and digits.
pub fn is_setting_code(s: &str) -> bool {
    (3..=6).contains(&s.len()) && s.bytes().all(|c| c.is_ascii_uppercase() || c.is_ascii_digit())
}

/// Parses a calendar date written exactly `YYYY-MM-DD`.
pub fn parse_date(s: &str) -> Option<NaiveDate> {
    let b = s.as_bytes();
    let shape_ok = b.len() == 10
        && b[4] == b'-'
        && b[7] == b'-'
        && b.iter().enumerate().all(|(i, c)| i == 4 || i == 7 || c.is_ascii_digit());
    if !shape_ok {
        return None;
    }
    NaiveDate::parse_from_str(s, "%Y-%m-%d").ok()
}

/// Collects every field violation of one request, so the caller learns all
/// of them at once.
#[derive(Debug, Default)]
pub struct Violations(Vec<FieldViolation>);

impl Violations {
    /// An empty collector.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records a violation of `field`.
    pub fn add(&mut self, field: impl Into<String>, description: impl Into<String>) {
        self.0.push(FieldViolation::new(field, description));
    }

    /// True when nothing failed.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The violations recorded so far.
    pub fn list(&self) -> &[FieldViolation] {
        &self.0
    }

    /// Checks a required NHS number.
    pub fn nhs_number(&mut self, field: &str, value: &str) -> Option<NhsNumber> {
        if value.is_empty() {
            self.add(field, "is required");
            return None;
        }
        let n = NhsNumber::parse(value);
        if n.is_none() {
            self.add(field, "must be 10 digits with a valid modulus-11 check digit");
        }
        n
    }

    /// Checks a required `YYYY-MM-DD` date.
    pub fn date(&mut self, field: &str, value: &str) -> Option<NaiveDate> {
        if value.is_empty() {
            self.add(field, "is required");
            return None;
        }
        self.optional_date(field, value).flatten()
    }

    /// Checks an optional `YYYY-MM-DD` date: `Some(None)` when empty,
    /// `None` when present but invalid.
    pub fn optional_date(&mut self, field: &str, value: &str) -> Option<Option<NaiveDate>> {
        if value.is_empty() {
            return Some(None);
        }
        match parse_date(value) {
            Some(d) => Some(Some(d)),
            None => {
                self.add(field, "must be a real calendar date written YYYY-MM-DD");
                None
            }
        }
    }

    /// Checks a required string of at most `max` characters.
    pub fn text(&mut self, field: &str, value: &str, max: usize) -> bool {
        if value.trim().is_empty() {
            self.add(field, "is required");
            false
        } else {
            self.bounded(field, value, max)
        }
    }

    /// Checks an optional string of at most `max` characters.
    pub fn bounded(&mut self, field: &str, value: &str, max: usize) -> bool {
        let n = value.chars().count();
        if n > max {
            self.add(field, format!("must be at most {max} characters (got {n})"));
            false
        } else if value.chars().any(char::is_control) {
            self.add(field, "must not contain control characters");
            false
        } else {
            true
        }
    }

    /// Checks a page size in `0..=max` (0 means the default).
    pub fn page_size(&mut self, field: &str, value: i32, default: i32, max: i32) -> i64 {
        if value < 0 || value > max {
            self.add(field, format!("must be between 0 and {max}"));
            i64::from(default)
        } else if value == 0 {
            i64::from(default)
        } else {
            i64::from(value)
        }
    }

    /// `Ok` when nothing failed, else every violation.
    pub fn finish(self) -> Result<(), Invalid> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(Invalid(self.0))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn council_codes_with_multibyte_characters_are_refused_not_panics() {
        // Nine bytes each, with a character across byte 3: no slicing inside it.
        assert!(!is_council_code("EE\u{e9}00000"));
        assert!(!is_council_code("\u{e9}\u{e9}\u{e9}000"));
        assert!(is_council_code("E08000003"));
    }

    /// Appends the check digit to nine digits, or `None` when it would be 10.
    fn with_check_digit(nine: &[u8; 9]) -> Option<String> {
        let s: String = nine.iter().map(|d| char::from(b'0' + d)).collect();
        with_nhs_check_digit(&s)
    }

    #[test]
    fn known_numbers() {
        assert!(is_valid_nhs_number("9990000018"));
        assert!(is_valid_nhs_number("9990000026"));
        assert!(!is_valid_nhs_number("9990000019"));
        assert!(!is_valid_nhs_number("999000001"));
        assert!(!is_valid_nhs_number("99900000180"));
        assert!(!is_valid_nhs_number("999 000 0018"));
        assert!(!is_valid_nhs_number("999000001a"));
        assert!(!is_valid_nhs_number(""));
        assert!(!is_valid_nhs_number("９９９００００１８"));
        // 999000000x: the check digit would be 10, so no number starting so is valid.
        assert!((0..10).all(|d| !is_valid_nhs_number(&format!("999000000{d}"))));
    }

    proptest! {
        #[test]
        fn every_valid_number_passes_and_every_single_digit_change_fails(
            nine in proptest::array::uniform9(0u8..10)
        ) {
            if let Some(valid) = with_check_digit(&nine) {
                prop_assert!(is_valid_nhs_number(&valid));
                for pos in 0..10 {
                    for digit in b'0'..=b'9' {
                        let mut bytes = valid.clone().into_bytes();
                        if bytes[pos] == digit { continue; }
                        bytes[pos] = digit;
                        let changed = String::from_utf8(bytes).unwrap();
                        prop_assert!(!is_valid_nhs_number(&changed), "{changed} passed");
                    }
                }
            } else {
                for d in 0..10u8 {
                    let mut s: String = nine.iter().map(|x| char::from(b'0' + x)).collect();
                    s.push(char::from(b'0' + d));
                    prop_assert!(!is_valid_nhs_number(&s));
                }
            }
        }

        #[test]
        fn any_string_never_panics(s in ".{0,20}") {
            let _ = is_valid_nhs_number(&s);
            let _ = parse_date(&s);
        }
    }

    #[test]
    fn dates_are_strict() {
        assert_eq!(parse_date("2024-02-29"), NaiveDate::from_ymd_opt(2024, 2, 29));
        for bad in [
            "2023-02-29",
            "2024-13-01",
            "2024-00-10",
            "2024-1-01",
            "24-01-01",
            "2024/01/01",
            "2024-01-01T00:00:00",
            " 2024-01-01",
            "+2024-01-01",
            "20240-01-0",
        ] {
            assert_eq!(parse_date(bad), None, "{bad}");
        }
    }

    #[test]
    fn codes() {
        assert!(is_council_code("E08000003"));
        assert!(is_council_code("E10000016"));
        assert!(!is_council_code("E07000001"));
        assert!(!is_council_code("W06000001"));
        assert!(!is_council_code("E0800000"));
        assert!(is_setting_code("RBQ01"));
        assert!(!is_setting_code("rbq01"));
        assert!(!is_setting_code("RB"));
        assert!(!is_setting_code("RBQ0123"));
    }

    #[test]
    fn nhs_number_debug_is_redacted() {
        let n = NhsNumber::parse("9990000018").unwrap();
        assert!(!format!("{n:?}").contains("9990000018"));
    }
}
