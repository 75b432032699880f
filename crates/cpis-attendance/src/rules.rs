//! The check-in rules as plain functions, decided on rows the store read
//! (no database here, so each rule is tested directly):
//! - which councils are alerted, with which case reference;
//! - the same-episode rule: arrivals of one person at one setting closer than
//!   the window (24 hours) are one episode, alerted once per council;
//! - the repeat count and the alerts' priority;
//! - which previous episodes a check-in answer shows.

use crate::model::{AlertTarget, Episode};
use chrono::{DateTime, TimeDelta, Utc};
use cpis_proto::notification::v1::AlertPriority;
use cpis_proto::registry::v1::LookupFlagsResponse;
use std::time::Duration;
use uuid::Uuid;

/// The most previous episodes a check-in answer carries (the contract's 25).
pub const PREVIOUS_EPISODES: usize = 25;

/// The rules that decide episodes and priorities.
#[derive(Debug, Clone, Copy)]
pub struct EpisodeRules {
    /// Arrivals at one setting closer than this are one episode.
    pub same_episode_window: Duration,
    /// Episodes within this window are counted for a repeat attendance.
    pub repeat_window: Duration,
    /// This many episodes within the window (the current one included) make
    /// a repeat attendance.
    pub repeat_threshold: u32,
}

impl EpisodeRules {
    /// The earliest arrival a decision about an arrival at `arrived_at` can
    /// depend on: the store reads the person's episodes from here on (and
    /// their most recent ones, for the answer).
    pub fn history_since(&self, arrived_at: DateTime<Utc>) -> DateTime<Utc> {
        minus(minus(stored_precision(arrived_at), self.same_episode_window), self.repeat_window)
    }
}

/// What the person's history decides about one flagged arrival.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// The episode the arrival belongs to.
    pub episode: Episode,
    /// True when the episode is new, false when the arrival joins an earlier one.
    pub new_episode: bool,
    /// The priority of the alerts.
    pub priority: AlertPriority,
    /// The person's most recent other episodes, most recent first (at most 25).
    pub previous: Vec<Episode>,
}

/// Decides a flagged arrival at `setting_code` from the person's `history`
/// (every episode since [`EpisodeRules::history_since`], and at least their
/// 26 most recent, in any order). `new_id` names the episode if it is new.
pub fn decide(
    history: &[Episode],
    setting_code: &str,
    setting_type: i32,
    arrived_at: DateTime<Utc>,
    rules: EpisodeRules,
    new_id: Uuid,
) -> Decision {
    let arrived_at = stored_precision(arrived_at);
    let (episode, new_episode) = match same_episode(history, setting_code, arrived_at, rules.same_episode_window) {
        Some(earlier) => (earlier.clone(), false),
        None => {
            (Episode { episode_id: new_id, setting_code: setting_code.to_string(), setting_type, arrived_at }, true)
        }
    };
    let count = repeat_count(history, &episode, new_episode, rules.repeat_window);
    Decision {
        priority: priority(count, rules.repeat_threshold),
        previous: previous_episodes(history, episode.episode_id),
        episode,
        new_episode,
    }
}

/// The person's episode at `setting_code` that an arrival at `arrived_at`
/// belongs to: the latest one arriving less than `window` before or after.
pub fn same_episode<'a>(
    history: &'a [Episode],
    setting_code: &str,
    arrived_at: DateTime<Utc>,
    window: Duration,
) -> Option<&'a Episode> {
    let (from, until) = (minus(arrived_at, window), plus(arrived_at, window));
    history
        .iter()
        .filter(|e| e.setting_code == setting_code)
        .filter(|e| e.arrived_at > from && e.arrived_at < until)
        .max_by_key(|e| (e.arrived_at, e.episode_id))
}

/// How many of the person's episodes (at any setting) arrived within
/// `window` up to and including `episode`, counting `episode` itself (once,
/// also when it is new and not yet in `history`) and nothing after it.
pub fn repeat_count(history: &[Episode], episode: &Episode, new_episode: bool, window: Duration) -> u64 {
    let from = minus(episode.arrived_at, window);
    let earlier = history.iter().filter(|e| e.arrived_at > from && e.arrived_at <= episode.arrived_at).count();
    earlier as u64 + u64::from(new_episode)
}

/// `RepeatAttendance` from `threshold` episodes in the window, else `Routine`.
pub fn priority(count: u64, threshold: u32) -> AlertPriority {
    if count >= u64::from(threshold) {
        AlertPriority::RepeatAttendance
    } else {
        AlertPriority::Routine
    }
}

/// The person's 25 most recent episodes other than `current`, most recent first.
pub fn previous_episodes(history: &[Episode], current: Uuid) -> Vec<Episode> {
    let mut others: Vec<&Episode> = history.iter().filter(|e| e.episode_id != current).collect();
    others.sort_by_key(|e| std::cmp::Reverse((e.arrived_at, e.episode_id)));
    others.dedup_by_key(|e| e.episode_id);
    others.into_iter().take(PREVIOUS_EPISODES).cloned().collect()
}

/// One council per distinct council holding a flag, in council-code order
/// (the order their outbox counters are locked in, so two check-ins never
/// wait for each other's), with the case reference of its plan (an active
/// plan before an ended one).
pub fn alert_targets(found: &LookupFlagsResponse) -> Vec<AlertTarget> {
    let mut targets: Vec<(AlertTarget, bool)> = Vec::new();
    for (i, flag) in found.flags.iter().enumerate() {
        let target = AlertTarget {
            council_code: flag.council_code.clone(),
            plan_type: flag.plan_type,
            local_reference: found.local_references.get(i).cloned().unwrap_or_default(),
        };
        match targets.iter_mut().find(|(t, _)| t.council_code == flag.council_code) {
            // The council's ended plan gives way to its active one.
            Some(existing) if existing.1 && !flag.ended => *existing = (target, flag.ended),
            Some(_) => {}
            None => targets.push((target, flag.ended)),
        }
    }
    let mut targets: Vec<AlertTarget> = targets.into_iter().map(|(t, _)| t).collect();
    targets.sort_by(|x, y| x.council_code.cmp(&y.council_code));
    targets
}

/// Each council holding one of the flags found, once, in the Registry's order.
pub fn flag_councils(found: &LookupFlagsResponse) -> Vec<&str> {
    let mut councils: Vec<&str> = Vec::new();
    for flag in &found.flags {
        if !councils.contains(&flag.council_code.as_str()) {
            councils.push(flag.council_code.as_str());
        }
    }
    councils
}

/// An instant as PostgreSQL keeps it (whole microseconds), so the rules
/// compare what the store compares.
pub fn stored_precision(t: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(t.timestamp_micros()).unwrap_or(t)
}

/// `t - d`, saturating at the earliest instant.
fn minus(t: DateTime<Utc>, d: Duration) -> DateTime<Utc> {
    TimeDelta::from_std(d).ok().and_then(|d| t.checked_sub_signed(d)).unwrap_or(DateTime::<Utc>::MIN_UTC)
}

/// `t + d`, saturating at the latest instant.
fn plus(t: DateTime<Utc>, d: Duration) -> DateTime<Utc> {
    TimeDelta::from_std(d).ok().and_then(|d| t.checked_add_signed(d)).unwrap_or(DateTime::<Utc>::MAX_UTC)
}

#[cfg(test)]
mod tests {
    use super::*;
    use cpis_proto::common::v1::Flag;

    const HOUR: i64 = 3600;

    fn rules() -> EpisodeRules {
        EpisodeRules {
            same_episode_window: Duration::from_secs(24 * 3600),
            repeat_window: Duration::from_secs(30 * 24 * 3600),
            repeat_threshold: 3,
        }
    }

    fn at(hours: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_764_000_000 + hours * HOUR, 0).unwrap()
    }

    fn episode(n: u128, setting: &str, hours: i64) -> Episode {
        Episode { episode_id: Uuid::from_u128(n), setting_code: setting.into(), setting_type: 1, arrived_at: at(hours) }
    }

    fn decide_at(history: &[Episode], setting: &str, hours: i64) -> Decision {
        decide(history, setting, 2, at(hours), rules(), Uuid::from_u128(999))
    }

    #[test]
    fn an_arrival_within_24_hours_at_the_same_setting_joins_the_latest_episode() {
        let history = [episode(1, "RBQ01", 0), episode(2, "RBQ01", 10), episode(3, "RXX99", 20)];
        let d = decide_at(&history, "RBQ01", 30);
        assert!(!d.new_episode);
        assert_eq!(d.episode, history[1], "the latest episode at this setting, with its own arrival and type");
        // 24 hours apart exactly is a new episode; so is another setting.
        assert!(decide_at(&history, "RBQ01", 34).new_episode);
        assert!(decide_at(&[episode(1, "RBQ01", 0)], "RXX99", 1).new_episode);
        // A late report of an earlier arrival joins a later episode as well.
        assert_eq!(decide_at(&[episode(5, "RBQ01", 10)], "RBQ01", 0).episode.episode_id, Uuid::from_u128(5));
    }

    #[test]
    fn a_new_episode_takes_the_new_id_the_setting_type_and_the_arrival_to_the_microsecond() {
        let arrival = at(0) + TimeDelta::nanoseconds(1_234_567);
        let d = decide(&[], "RBQ01", 4, arrival, rules(), Uuid::from_u128(7));
        assert!(d.new_episode);
        assert_eq!(d.episode.episode_id, Uuid::from_u128(7));
        assert_eq!(d.episode.setting_type, 4);
        assert_eq!(d.episode.arrived_at, at(0) + TimeDelta::microseconds(1_234));
        assert_eq!(d.priority, AlertPriority::Routine);
        assert!(d.previous.is_empty());
    }

    #[test]
    fn the_third_episode_in_30_days_is_a_repeat_attendance() {
        let two = [episode(1, "A", 0), episode(2, "B", 24 * 20)];
        assert_eq!(decide_at(&two, "C", 24 * 29).priority, AlertPriority::RepeatAttendance);
        // The first has left the window (exactly 30 days is outside).
        assert_eq!(decide_at(&two, "C", 24 * 30).priority, AlertPriority::Routine);
        // Joining an episode counts it once, and nothing after it.
        let joined = [episode(1, "A", 0), episode(2, "B", 24 * 20), episode(3, "A", 24 * 25)];
        let d = decide_at(&joined, "B", 24 * 20 + 5);
        assert!(!d.new_episode);
        assert_eq!(repeat_count(&joined, &d.episode, false, rules().repeat_window), 2);
        assert_eq!(d.priority, AlertPriority::Routine);
    }

    #[test]
    fn priority_follows_the_threshold() {
        assert_eq!(priority(2, 3), AlertPriority::Routine);
        assert_eq!(priority(3, 3), AlertPriority::RepeatAttendance);
        assert_eq!(priority(1, 1), AlertPriority::RepeatAttendance);
    }

    #[test]
    fn the_answer_shows_the_25_most_recent_other_episodes_newest_first() {
        let history: Vec<Episode> = (0..30).map(|i| episode(i as u128 + 1, "A", i * 48)).collect();
        let d = decide_at(&history, "B", 30 * 48);
        assert_eq!(d.previous.len(), 25);
        assert_eq!(d.previous[0].episode_id, Uuid::from_u128(30));
        assert_eq!(d.previous[24].episode_id, Uuid::from_u128(6));
        // The episode joined is not among its own previous ones; ties go by id.
        let tied = [episode(1, "A", 0), episode(2, "A", 0), episode(3, "B", 0)];
        let d = decide_at(&tied, "A", 1);
        assert_eq!(d.episode.episode_id, Uuid::from_u128(2));
        let ids: Vec<u128> = d.previous.iter().map(|e| e.episode_id.as_u128()).collect();
        assert_eq!(ids, [3, 1]);
    }

    #[test]
    fn one_alert_per_council_preferring_an_active_plan_in_council_order() {
        let flag = |council: &str, plan_type: i32, ended: bool| Flag {
            council_code: council.into(),
            plan_type,
            ended,
            ..Default::default()
        };
        let found = LookupFlagsResponse {
            flags: vec![
                flag("E08000012", 1, false),
                flag("E08000003", 2, true),
                flag("E08000003", 3, false),
                flag("E08000012", 2, false),
            ],
            local_references: vec!["L-1".into(), "M-old".into(), "M-new".into(), "L-2".into()],
        };
        let targets = alert_targets(&found);
        let summary: Vec<(&str, i32, &str)> =
            targets.iter().map(|t| (t.council_code.as_str(), t.plan_type, t.local_reference.as_str())).collect();
        assert_eq!(summary, [("E08000003", 3, "M-new"), ("E08000012", 1, "L-1")]);
        assert_eq!(flag_councils(&found), ["E08000012", "E08000003"]);
    }
}
