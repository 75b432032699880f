//! The date parser: never panics, accepts only `YYYY-MM-DD`, and what it
//! accepts prints back exactly as given.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        if let Some(date) = cpis_domain::validate::parse_date(s) {
            assert_eq!(s.len(), 10);
            assert_eq!(date.format("%Y-%m-%d").to_string(), s);
        }
        let mut v = cpis_domain::validate::Violations::new();
        let _ = v.date("field", s);
        let _ = v.optional_date("field", s);
    }
});
