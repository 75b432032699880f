//! Who a report is for, as the caller decides it: a council sees its own
//! figures, exact; an analyst sees every council's, with counts of 1 to 4
//! withheld (`cpis_domain::report::suppressed`). The same rule in every
//! service that computes a part of a report.

use crate::error::ApiError;
use cpis_domain::identity::Caller;
use cpis_proto::common::v1::Count;

/// The audience of a report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Audience {
    /// One council: its own figures, exact.
    Council(String),
    /// An analyst: every council's figures, small counts withheld.
    National,
}

impl Audience {
    /// The audience of a report asked by `caller` (POLICY admits councils
    /// and analysts only).
    pub fn of(caller: &Caller) -> Result<Self, ApiError> {
        match caller {
            Caller::Council(code) => Ok(Audience::Council(code.clone())),
            Caller::Analyst(_) => Ok(Audience::National),
            other => Err(ApiError::internal(format!(
                "a {} caller reached a report (POLICY admits councils and analysts)",
                other.kind().as_str()
            ))),
        }
    }

    /// The one council whose figures are asked, or `None` for all.
    pub fn council(&self) -> Option<&str> {
        match self {
            Audience::Council(code) => Some(code),
            Audience::National => None,
        }
    }

    /// A count as this audience may see it.
    pub fn count(&self, n: i64) -> Count {
        match self {
            Audience::National if cpis_domain::report::suppressed(n) => Count { value: 0, suppressed: true },
            _ => Count { value: n, suppressed: false },
        }
    }

    /// A figure derived from `counts` (a share, a time), shown only when
    /// none of them is withheld from this audience.
    pub fn derived(&self, counts: &[i64], value: Option<f64>) -> Option<f64> {
        let withheld = matches!(self, Audience::National) && counts.iter().any(|n| cpis_domain::report::suppressed(*n));
        value.filter(|_| !withheld)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_national_report_withholds_small_counts() {
        let council = Audience::Council("E08000003".into());
        assert_eq!(council.count(3), Count { value: 3, suppressed: false });
        assert_eq!(Audience::National.count(3), Count { value: 0, suppressed: true });
        assert_eq!(Audience::National.count(7), Count { value: 7, suppressed: false });
        assert_eq!(Audience::National.count(0), Count { value: 0, suppressed: false });
        assert_eq!(Audience::National.derived(&[10, 3], Some(0.7)), None);
        assert_eq!(council.derived(&[10, 3], Some(0.7)), Some(0.7));
    }
}
