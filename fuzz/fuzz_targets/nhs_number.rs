//! The NHS number validator: never panics, and agrees with a plain
//! re-statement of the modulus-11 rule.
#![no_main]

use libfuzzer_sys::fuzz_target;

fn reference(s: &str) -> bool {
    let digits: Vec<u32> = s.chars().filter_map(|c| if c.is_ascii_digit() { c.to_digit(10) } else { None }).collect();
    if s.len() != 10 || digits.len() != 10 {
        return false;
    }
    let sum: u32 = digits[..9].iter().enumerate().map(|(i, d)| d * (10 - i as u32)).sum();
    match 11 - sum % 11 {
        11 => digits[9] == 0,
        10 => false,
        c => digits[9] == c,
    }
}

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        let valid = cpis_domain::validate::is_valid_nhs_number(s);
        assert_eq!(valid, reference(s));
        assert_eq!(cpis_domain::validate::NhsNumber::parse(s).is_some(), valid);
    }
});
