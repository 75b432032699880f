//! (12)'s verdict on one replay against the idle reference: check-in p99
//! (flagged and not) within twice its idle p99 in every window of the day,
//! every alert arrived, once, in sequence order, with p99 within twice
//! idle, and every upload applied before its window closed.
//!
//! A window is the shortest run of whole minutes of the day, from the last
//! window's end, holding at least [`MIN_WINDOW_SAMPLES`] check-ins of the
//! kind (a remainder too small joins the window before it; fewer in the
//! whole day make one window): a p99 needs a hundred samples to be one, and
//! a minute of the national day holds about ten check-ins, one flagged in
//! five minutes. At the factors that matter a window is a few seconds of
//! replay, finer than a minute of it.

use super::held::Seen;
use super::load::Latency;
use super::replay::{Outcome, Sample};
use serde::Serialize;

/// Fewest check-ins of a kind a window's p99 is taken over.
pub const MIN_WINDOW_SAMPLES: usize = 100;

/// How far above its idle p99 a check-in or alert p99 may go.
pub const IDLE_MULTIPLE: f64 = 2.0;

/// The reference: check-ins at a light fixed rate on the same replicas,
/// streams held, nothing else running.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Idle {
    /// Check-ins per second (half of them flagged).
    pub rate_per_sec: f64,
    /// Seconds of check-ins.
    pub seconds: f64,
    /// Check-ins of people not registered.
    pub not_flagged: Latency,
    /// Check-ins of registered people.
    pub flagged: Latency,
    /// CheckIn answered to alert on the council's stream.
    pub alerts: Latency,
    /// Failed calls, and alerts that never came.
    pub errors: usize,
    /// The first failure.
    pub first_error: Option<String>,
}

/// A window of the day and its p99.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Window {
    /// First minute of the day in it.
    pub from_minute: u16,
    /// Last minute in it.
    pub to_minute: u16,
    /// Check-ins in it.
    pub samples: usize,
    /// Their p99.
    pub p99_ms: f64,
}

/// One kind of check-in across the replay.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Kind {
    /// Over the whole day.
    pub whole: Latency,
    /// The bound: twice the idle p99.
    pub bound_ms: f64,
    /// Windows judged.
    pub windows: usize,
    /// Windows whose p99 exceeded the bound.
    pub windows_over: usize,
    /// The window with the highest p99.
    pub worst: Window,
    /// Every window (for the chart; not in the JSON).
    #[serde(skip)]
    pub all: Vec<Window>,
}

/// p99 of each minute of the day that had check-ins (the chart).
#[derive(Debug, Clone, Copy, Default)]
pub struct Minute {
    /// Minute of the day.
    pub minute: u16,
    /// p99 of its not-flagged check-ins.
    pub not_flagged_ms: Option<f64>,
    /// p99 (with so few, the largest) of its flagged ones.
    pub flagged_ms: Option<f64>,
}

/// What one replay came to.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ReplayResult {
    /// The compression factor.
    pub factor: f64,
    /// Seconds the replay took, to its last answer.
    pub seconds: f64,
    /// Check-ins answered, and of them flagged.
    pub check_ins: usize,
    /// Flagged check-ins answered.
    pub flagged_check_ins: usize,
    /// Silent reads answered, and their latency.
    pub silent_reads: usize,
    /// Latency of the silent reads.
    pub silent_read_latency: Latency,
    /// Failed calls.
    pub errors: usize,
    /// The first failure.
    pub first_error: Option<String>,
    /// Not-flagged check-ins.
    pub not_flagged: Kind,
    /// Flagged check-ins.
    pub flagged: Kind,
    /// Alerts the flagged check-ins should have made.
    pub alerts_expected: usize,
    /// Of them, never arrived.
    pub alerts_missing: usize,
    /// CheckIn answered to alert arrived.
    pub alert_latency: Latency,
    /// Twice the idle alert p99.
    pub alert_bound_ms: f64,
    /// What the streams saw during the replay (duplicates, order, wrong council, breaks).
    pub streams: Seen,
    /// Uploads, their rows, and those late or failed.
    pub uploads: usize,
    /// Rows of all uploads.
    pub upload_rows: usize,
    /// Uploads that applied after their window closed.
    pub uploads_late: usize,
    /// Uploads that failed.
    pub upload_errors: usize,
    /// The first upload failure.
    pub upload_first_error: Option<String>,
    /// Uploads sent again after the Registry said it was busy.
    pub upload_retries: usize,
    /// When the last upload finished, in seconds of the day (the window closes at 10,800).
    pub last_upload_at: f64,
    /// Whether every condition held.
    pub passed: bool,
    /// The conditions that did not.
    pub reasons: Vec<String>,
    /// p99 by minute of the day (for the chart; not in the JSON).
    #[serde(skip)]
    pub minutes: Vec<Minute>,
}

/// The windows of `samples` (in any order) and their p99s.
pub fn windows(samples: &[Sample], least: usize) -> Vec<Window> {
    let mut sorted: Vec<&Sample> = samples.iter().collect();
    sorted.sort_by_key(|s| s.minute);
    let mut out: Vec<(u16, u16, Vec<u64>)> = Vec::new();
    let mut current: Option<(u16, u16, Vec<u64>)> = None;
    for s in sorted {
        match current.as_mut() {
            Some(w) if w.2.len() < least || w.1 == s.minute => {
                w.1 = s.minute;
                w.2.push(s.micros);
            }
            _ => {
                out.extend(current.take());
                current = Some((s.minute, s.minute, vec![s.micros]));
            }
        }
    }
    if let Some(last) = current {
        match out.last_mut() {
            Some(before) if last.2.len() < least => {
                before.1 = last.1;
                before.2.extend(last.2);
            }
            _ => out.push(last),
        }
    }
    out.into_iter()
        .map(|(from_minute, to_minute, micros)| Window {
            from_minute,
            to_minute,
            samples: micros.len(),
            p99_ms: Latency::of(micros).p99_ms,
        })
        .collect()
}

fn kind(samples: &[Sample], flagged: bool, idle_p99: f64) -> Kind {
    let mine: Vec<Sample> = samples.iter().filter(|s| s.flagged == flagged).copied().collect();
    let bound_ms = IDLE_MULTIPLE * idle_p99;
    let ws = windows(&mine, MIN_WINDOW_SAMPLES);
    Kind {
        whole: Latency::of(mine.iter().map(|s| s.micros).collect()),
        bound_ms,
        windows: ws.len(),
        windows_over: ws.iter().filter(|w| w.p99_ms > bound_ms).count(),
        worst: ws.iter().copied().max_by(|a, b| a.p99_ms.total_cmp(&b.p99_ms)).unwrap_or_default(),
        all: ws,
    }
}

/// p99 per minute of the day.
pub fn minutes(samples: &[Sample]) -> Vec<Minute> {
    let mut by: Vec<(Vec<u64>, Vec<u64>)> = vec![(Vec::new(), Vec::new()); 1440];
    for s in samples {
        let slot = &mut by[usize::from(s.minute).min(1439)];
        if s.flagged { &mut slot.1 } else { &mut slot.0 }.push(s.micros);
    }
    let p99 = |v: Vec<u64>| (!v.is_empty()).then(|| Latency::of(v).p99_ms);
    by.into_iter()
        .enumerate()
        .filter(|(_, (n, f))| !n.is_empty() || !f.is_empty())
        .map(|(m, (n, f))| Minute { minute: m as u16, not_flagged_ms: p99(n), flagged_ms: p99(f) })
        .collect()
}

/// Judges `o` against `idle`; `alerts` are the replay's alert latencies in
/// microseconds, `missing` the alerts that never came, `streams` what the
/// streams saw during the replay.
pub fn judge(o: &Outcome, idle: &Idle, alerts: Vec<u64>, missing: usize, streams: Seen) -> ReplayResult {
    let not_flagged = kind(&o.check_ins, false, idle.not_flagged.p99_ms);
    let flagged = kind(&o.check_ins, true, idle.flagged.p99_ms);
    let alert_latency = Latency::of(alerts);
    let alert_bound_ms = IDLE_MULTIPLE * idle.alerts.p99_ms;
    let late: Vec<_> = o.uploads.iter().filter(|u| !u.on_time).collect();
    let failed: Vec<_> = o.uploads.iter().filter(|u| u.error.is_some()).collect();
    let mut reasons = Vec::new();
    let mut require = |ok: bool, why: String| {
        if !ok {
            reasons.push(why);
        }
    };
    require(o.errors.is_empty(), format!("{} calls failed", o.errors.len()));
    for (name, k) in [("not flagged", &not_flagged), ("flagged", &flagged)] {
        require(
            k.windows_over == 0,
            format!(
                "check-in {name}: {} of {} windows over {:.2} ms (worst {:.2} ms, minutes {}-{})",
                k.windows_over, k.windows, k.bound_ms, k.worst.p99_ms, k.worst.from_minute, k.worst.to_minute
            ),
        );
    }
    require(missing == 0, format!("{missing} alerts never arrived"));
    require(
        streams.duplicated + streams.out_of_order + streams.wrong_council == 0,
        format!(
            "alerts out of order {}, repeated {}, to the wrong council {}",
            streams.out_of_order, streams.duplicated, streams.wrong_council
        ),
    );
    require(
        alert_latency.p99_ms <= alert_bound_ms,
        format!("alert p99 {:.2} ms over {alert_bound_ms:.2} ms", alert_latency.p99_ms),
    );
    require(late.is_empty(), format!("{} of {} uploads not applied inside the window", late.len(), o.uploads.len()));
    ReplayResult {
        factor: o.factor,
        seconds: o.seconds,
        check_ins: o.check_ins.len(),
        flagged_check_ins: o.check_ins.iter().filter(|s| s.flagged).count(),
        silent_reads: o.silent_reads.len(),
        silent_read_latency: Latency::of(o.silent_reads.iter().map(|s| s.micros).collect()),
        errors: o.errors.len(),
        first_error: o.errors.first().cloned(),
        not_flagged,
        flagged,
        alerts_expected: o.episodes.len(),
        alerts_missing: missing,
        alert_latency,
        alert_bound_ms,
        streams,
        uploads: o.uploads.len(),
        upload_rows: o.uploads.iter().map(|u| u.rows).sum(),
        uploads_late: late.len(),
        upload_errors: failed.len(),
        upload_first_error: failed.first().and_then(|u| u.error.clone()),
        upload_retries: o.uploads.iter().map(|u| u.retries).sum(),
        last_upload_at: o.uploads.iter().map(|u| u.finished_at).fold(0.0, f64::max),
        passed: reasons.is_empty(),
        reasons,
        minutes: minutes(&o.check_ins),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(minute: u16, micros: u64) -> Sample {
        Sample { minute, flagged: false, micros }
    }

    #[test]
    fn windows_hold_enough_samples_and_never_split_a_minute() {
        let mut samples: Vec<Sample> = (0..250).map(|i| at((i / 10) as u16, 1_000)).collect();
        samples.push(at(30, 50_000));
        let ws = windows(&samples, 100);
        assert_eq!(ws.iter().map(|w| w.samples).sum::<usize>(), 251);
        assert!(ws.iter().all(|w| w.samples >= 100), "{ws:?}");
        assert!(ws.windows(2).all(|p| p[0].to_minute < p[1].from_minute));
        assert_eq!(ws.last().map(|w| w.to_minute), Some(30));
        assert_eq!(windows(&samples[..20], 100).len(), 1);
        assert!(windows(&[], 100).is_empty());
    }
}
