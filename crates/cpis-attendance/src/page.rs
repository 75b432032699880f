//! Opaque page tokens: a keyset cursor (time, id) of the last row of a page,
//! so pages stay stable while new rows arrive.

use chrono::{DateTime, Utc};
use uuid::Uuid;

/// Where the next page starts: strictly after (older than) this row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    /// The row's time (microsecond precision, as PostgreSQL keeps it).
    pub at: DateTime<Utc>,
    /// The row's id, breaking ties between equal times.
    pub id: Uuid,
}

impl Cursor {
    /// A cursor at one row.
    pub fn new(at: DateTime<Utc>, id: Uuid) -> Self {
        Self { at, id }
    }

    /// The token handed to clients. Hex so that clients treat it as opaque
    /// rather than parse it.
    pub fn encode(&self) -> String {
        let plain = format!("v1:{}:{}", self.at.timestamp_micros(), self.id);
        plain.bytes().map(|b| format!("{b:02x}")).collect()
    }

    /// Reads a token made by [`Cursor::encode`]; `None` for anything else.
    pub fn decode(token: &str) -> Option<Cursor> {
        if !token.len().is_multiple_of(2) || token.len() > 256 {
            return None;
        }
        let bytes = (0..token.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(token.get(i..i + 2)?, 16).ok())
            .collect::<Option<Vec<u8>>>()?;
        let plain = String::from_utf8(bytes).ok()?;
        let mut parts = plain.split(':');
        let (Some("v1"), Some(micros), Some(id), None) = (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return None;
        };
        let at = DateTime::from_timestamp_micros(micros.parse().ok()?)?;
        Some(Cursor::new(at, Uuid::parse_str(id).ok()?))
    }
}

/// Splits `rows` (fetched with one extra row) into a page of at most
/// `size` items and the token of the next page (empty on the last page).
pub fn paginate<T>(mut rows: Vec<(T, Cursor)>, size: i64) -> (Vec<T>, String) {
    let size = usize::try_from(size).unwrap_or(0);
    let next = if rows.len() > size {
        rows.truncate(size);
        rows.last().map(|(_, c)| c.encode()).unwrap_or_default()
    } else {
        String::new()
    };
    (rows.into_iter().map(|(item, _)| item).collect(), next)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_garbage_is_refused() {
        let c = Cursor::new(DateTime::from_timestamp_micros(1_764_000_000_123_456).unwrap(), Uuid::now_v7());
        assert_eq!(Cursor::decode(&c.encode()), Some(c));
        for bad in ["", "zz", "abc", "7631", "v1:1:2", &"00".repeat(200)] {
            assert_eq!(Cursor::decode(bad), None, "{bad}");
        }
        // Non-ASCII input must not panic on a char boundary.
        assert_eq!(Cursor::decode("0é0"), None);
    }

    #[test]
    fn paginate_sets_the_next_token_only_when_more_rows_exist() {
        let at = DateTime::from_timestamp_micros(0).unwrap();
        let rows =
            |n: usize| -> Vec<(usize, Cursor)> { (0..n).map(|i| (i, Cursor::new(at, Uuid::now_v7()))).collect() };
        let (page, next) = paginate(rows(3), 3);
        assert_eq!((page.len(), next.as_str()), (3, ""));
        let all = rows(4);
        let third = all[2].1;
        let (page, next) = paginate(all, 3);
        assert_eq!(page, vec![0, 1, 2]);
        assert_eq!(Cursor::decode(&next), Some(third));
    }
}
