//! Conversions between chrono instants and protobuf timestamps, and the
//! calendar day in England: every rule that speaks of days (today, a plan's
//! start and end, the day of an arrival) means a day in Europe/London, which
//! differs from UTC between 00:00 and 01:00 in summer time.

use chrono::{DateTime, NaiveDate, TimeZone, Utc};
use chrono_tz::Europe::London;

/// The day in England at instant `t`.
pub fn london_date(t: DateTime<Utc>) -> NaiveDate {
    t.with_timezone(&London).date_naive()
}

/// The instant a day begins in England.
pub fn london_start_of_day(day: NaiveDate) -> DateTime<Utc> {
    let midnight = day.and_time(chrono::NaiveTime::MIN);
    // Clocks change at 01:00 or 02:00, never at midnight: the earliest
    // reading of a local midnight always exists; UTC midnight as a fallback.
    London.from_local_datetime(&midnight).earliest().map_or_else(|| midnight.and_utc(), |t| t.with_timezone(&Utc))
}

/// Today in England.
pub fn today_in_london() -> NaiveDate {
    london_date(Utc::now())
}

/// A protobuf timestamp for an instant.
pub fn to_timestamp(t: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp { seconds: t.timestamp(), nanos: t.timestamp_subsec_nanos() as i32 }
}

/// The instant of a protobuf timestamp, if it is a valid one.
pub fn from_timestamp(t: &prost_types::Timestamp) -> Option<DateTime<Utc>> {
    if !(0..1_000_000_000).contains(&t.nanos) {
        return None;
    }
    Utc.timestamp_opt(t.seconds, t.nanos as u32).single()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_day_is_taken_in_london() {
        // 00:30 BST on 1 July is 23:30 UTC on 30 June.
        let t = Utc.with_ymd_and_hms(2026, 6, 30, 23, 30, 0).unwrap();
        assert_eq!(london_date(t), NaiveDate::from_ymd_opt(2026, 7, 1).unwrap());
        // In winter London is UTC.
        let t = Utc.with_ymd_and_hms(2026, 1, 31, 23, 30, 0).unwrap();
        assert_eq!(london_date(t), NaiveDate::from_ymd_opt(2026, 1, 31).unwrap());
    }
}
