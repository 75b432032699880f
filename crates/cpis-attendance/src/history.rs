//! The access history a setting is shown (FHIR `AuditEvent`): the 25 most
//! recent unscheduled-care accesses to a person's flags (notifying reads),
//! each with the person who looked. Need to know as for every read: a person
//! with no flag in scope has no history to show and leaves no trace; a
//! flagged person's history read is itself recorded in the access audit.
//!
//! Repeated views by the same staff within 24 hours count once
//! ([`shown_views`], a plain rule tested without a database).

use crate::model::Access;
use crate::reads::episode_read;
use crate::registry::{CallerDeadline, FlagLookup};
use crate::rules;
use crate::store::history as store;
use chrono::{DateTime, TimeDelta, Utc};
use cpis_domain::user::Viewer;
use cpis_domain::validate::NhsNumber;
use cpis_runtime::db::DbPool;
use cpis_runtime::ApiError;
use std::collections::HashMap;

/// The most accesses shown (the national service's 25).
pub const SHOWN: usize = rules::PREVIOUS_EPISODES;

/// Views by one person at one setting closer than this count once.
pub const REPEATED_VIEW_WINDOW: TimeDelta = TimeDelta::hours(24);

/// How many of a person's most recent notifying reads the rule looks at:
/// far more than a person's 25 shown views collapse from in practice.
const ROWS_READ: i64 = 1_000;

/// The access history operation and what it runs on.
#[derive(Debug, Clone)]
pub struct AccessHistory {
    pool: DbPool,
    flags: FlagLookup,
}

impl AccessHistory {
    /// The history in `pool`, asking the Registry through `flags` whether the person is flagged.
    pub fn new(pool: DbPool, flags: FlagLookup) -> Self {
        Self { pool, flags }
    }

    /// The access history of `nhs_number` for the setting `setting_code`,
    /// shown to `viewer` (who needs B0170 or B0107): most recent first, at
    /// most [`SHOWN`]. Recorded as a read of the history for the councils
    /// holding the person's flags.
    pub async fn for_setting(
        &self,
        setting_code: &str,
        nhs_number: &NhsNumber,
        viewer: &Viewer,
        deadline: CallerDeadline,
    ) -> Result<Vec<Access>, ApiError> {
        let Some(db) = episode_read(&self.pool, &self.flags, setting_code, nhs_number, viewer, deadline).await? else {
            return Ok(Vec::new());
        };
        let recent = store::notifying_reads(&db, nhs_number.as_str(), ROWS_READ).await?;
        Ok(shown_views(recent, REPEATED_VIEW_WINDOW, SHOWN))
    }
}

/// The views shown from `recent` notifying reads (most recent first): a view
/// counts unless the same person (user id) at the same setting had a counted
/// view less than `window` before it; the `limit` most recent counted views,
/// most recent first. A view that counts shows when the person first looked.
pub fn shown_views(recent: Vec<Access>, window: TimeDelta, limit: usize) -> Vec<Access> {
    let mut last_counted: HashMap<(String, String), DateTime<Utc>> = HashMap::new();
    let mut counted = Vec::new();
    for access in recent.into_iter().rev() {
        let staff = (access.viewer.user_id.clone(), access.setting_code.clone());
        if last_counted.get(&staff).is_some_and(|at| access.accessed_at - *at < window) {
            continue;
        }
        last_counted.insert(staff, access.accessed_at);
        counted.push(access);
    }
    counted.into_iter().rev().take(limit).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::RecordedViewer;
    use chrono::TimeZone;
    use uuid::Uuid;

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 3, 10, 12, 0, 0).unwrap()
    }

    fn view(user: &str, setting: &str, hours_ago: i64) -> Access {
        Access {
            access_id: Uuid::now_v7(),
            episode_id: Some(Uuid::now_v7()),
            nhs_number: "9990000018".into(),
            setting_code: setting.into(),
            setting_type: 1,
            viewer: RecordedViewer { user_id: user.into(), ..Default::default() },
            accessed_at: now() - TimeDelta::hours(hours_ago),
            silent: false,
            episodes_read: false,
            was_not_brought: false,
            appointment_at: None,
        }
    }

    fn shown(recent: Vec<Access>, limit: usize) -> Vec<(String, String, i64)> {
        shown_views(recent, REPEATED_VIEW_WINDOW, limit)
            .into_iter()
            .map(|a| (a.viewer.user_id, a.setting_code, (now() - a.accessed_at).num_hours()))
            .collect()
    }

    fn triples(list: &[(&str, &str, i64)]) -> Vec<(String, String, i64)> {
        list.iter().map(|(u, s, h)| (u.to_string(), s.to_string(), *h)).collect()
    }

    #[test]
    fn repeated_views_by_the_same_person_at_the_same_setting_within_24_hours_count_once() {
        // Most recent first, as the store reads them.
        let recent = vec![
            view("nurse-a", "RBQ01", 1),
            view("nurse-b", "RBQ01", 2),
            view("nurse-a", "RBQ01", 3),
            view("nurse-a", "RWJ01", 4),
            view("nurse-a", "RBQ01", 5),
        ];
        assert_eq!(
            shown(recent, 25),
            triples(&[("nurse-b", "RBQ01", 2), ("nurse-a", "RWJ01", 4), ("nurse-a", "RBQ01", 5)]),
            "the first view counts; other staff and other settings count on their own"
        );
    }

    #[test]
    fn a_view_24_hours_after_the_counted_one_counts_again() {
        // One person viewing every 12 hours for two and a half days.
        let recent: Vec<Access> = (0..6).map(|i| view("nurse-a", "RBQ01", i * 12)).collect();
        let hours: Vec<i64> = shown(recent, 25).into_iter().map(|(_, _, h)| h).collect();
        assert_eq!(hours, [12, 36, 60]);
    }

    #[test]
    fn at_most_the_limit_are_shown_most_recent_first() {
        let many: Vec<Access> = (0..30).map(|i| view(&format!("nurse-{i}"), "RBQ01", i)).collect();
        let got = shown(many, 25);
        assert_eq!(got.len(), 25);
        assert_eq!((got[0].0.as_str(), got[24].0.as_str()), ("nurse-0", "nurse-24"));
    }
}
