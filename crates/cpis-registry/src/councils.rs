//! The reference table of English councils with children's social care
//! duties (ONS GSS code -> name), shipped with the service in
//! `data/councils.csv`. An unknown code is shown as the code itself.

use std::collections::HashMap;
use std::sync::OnceLock;

const CSV: &str = include_str!("../data/councils.csv");

fn table() -> &'static HashMap<&'static str, String> {
    static TABLE: OnceLock<HashMap<&'static str, String>> = OnceLock::new();
    TABLE.get_or_init(|| {
        CSV.lines()
            .skip(1)
            .filter_map(|line| {
                let (code, name) = line.split_once(',')?;
                Some((code, name.trim_matches('"').to_string()))
            })
            .collect()
    })
}

/// The council's name, or its code when the table does not know it.
pub fn name_of(code: &str) -> String {
    table().get(code).cloned().unwrap_or_else(|| code.to_string())
}

/// How many councils the table knows.
pub fn count() -> usize {
    table().len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn knows_every_upper_tier_council() {
        assert_eq!(count(), 153);
        assert_eq!(name_of("E08000003"), "Manchester");
        assert_eq!(name_of("E08000012"), "Liverpool");
        assert_eq!(name_of("E10000016"), "Kent");
        assert_eq!(name_of("E06000058"), "Bournemouth, Christchurch and Poole");
        assert_eq!(name_of("E06999999"), "E06999999");
        for code in table().keys() {
            assert!(cpis_domain::validate::is_council_code(code), "{code}");
        }
    }
}
