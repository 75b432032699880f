//! (12) a national day (issue 27): how many times national load the suite
//! carries on this machine. On a database of its own it starts one Registry
//! and two replicas each of Attendance and Notification ([`fleet`]),
//! registers the day's 250,000 plans (each council's first upload), opens a
//! stream per council and holds them throughout ([`held`]), measures the
//! idle reference, then replays the day ([`national`]) compressed by a
//! factor ([`replay`]) and judges it ([`verdict`]): from 1,000x it doubles
//! while replays pass, halves while they fail (not below 250x), then
//! narrows geometrically until the factors passed and failed are within
//! 25% of each other. The largest factor passed is the headroom.
//!
//! [`fleet`]: super::fleet
//! [`held`]: super::held
//! [`national`]: super::national
//! [`replay`]: super::replay
//! [`verdict`]: super::verdict

use super::data;
use super::fleet::Fleet;
use super::held::Held;
use super::load::micros;
use super::national::{self, Day, DayPeople, DaySpec, Event, Timed};
use super::net::Net;
use super::procs::Launch;
use super::replay::{self, FlaggedPeople, Rig};
use super::verdict::{self, Idle, ReplayResult};
use super::{progress, Shape};
use cpis_devkit::pgcluster::PrivateCluster;
use cpis_devkit::pki::Pki;
use serde::Serialize;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Where the search starts: the goal.
pub const GOAL_FACTOR: f64 = 1_000.0;
/// The search goes no lower (a replay at 250x takes almost six minutes).
const LOWEST_FACTOR: f64 = 250.0;
/// Nor higher.
const HIGHEST_FACTOR: f64 = 64_000.0;
/// Replays of one search at most.
const MAX_REPLAYS: usize = 10;
/// Check-ins a second of the idle reference (alternately flagged and not).
const IDLE_RATE: f64 = 20.0;

/// What (12) measured.
#[derive(Debug, Default, Serialize)]
pub struct NationalDay {
    /// The day's size.
    pub spec: Option<DaySpec>,
    /// Check-ins in the day, and flagged ones.
    pub check_ins_per_day: usize,
    /// Flagged check-ins in the day.
    pub flagged_per_day: usize,
    /// Silent reads in the day.
    pub silent_reads_per_day: usize,
    /// Councils, each with its stream and its nightly upload.
    pub councils: usize,
    /// Seconds the first upload of every council took (setup).
    pub register_secs: f64,
    /// The reference.
    pub idle: Idle,
    /// Every replay, in the order run.
    pub replays: Vec<ReplayResult>,
    /// Whether the factor was searched (not fixed by `--day-factor` or `--quick`).
    pub searched: bool,
    /// The largest factor passed.
    pub headroom: Option<f64>,
    /// The PostgreSQL server's version.
    #[serde(skip)]
    pub postgres: String,
    /// The smallest factor failed.
    pub failed_at: Option<f64>,
}

impl NationalDay {
    /// The replay the chart shows: the one at the headroom, or else the last.
    pub fn charted(&self) -> Option<&ReplayResult> {
        let at_headroom = self.headroom.and_then(|h| self.replays.iter().find(|r| r.passed && r.factor == h));
        at_headroom.or(self.replays.last())
    }

    /// What went wrong with alerts in any replay (missing, repeated, out of
    /// order, to the wrong council): the run fails for it, whatever the speed.
    pub fn alerts_lost(&self) -> Option<String> {
        let (missing, s) = self.replays.iter().fold((0, super::held::Seen::default()), |(m, s), r| {
            let t = r.streams;
            (
                m + r.alerts_missing,
                super::held::Seen {
                    duplicated: s.duplicated + t.duplicated,
                    out_of_order: s.out_of_order + t.out_of_order,
                    wrong_council: s.wrong_council + t.wrong_council,
                    ..s
                },
            )
        });
        (missing + (s.duplicated + s.out_of_order + s.wrong_council) as usize > 0).then(|| {
            format!(
                "{missing} alert(s) missing, {} repeated, {} out of order, {} to the wrong council",
                s.duplicated, s.out_of_order, s.wrong_council
            )
        })
    }

    /// Headroom over national load: the factor times the day's volume.
    pub fn over_national(&self) -> Option<f64> {
        Some(self.headroom? * self.spec.as_ref().map_or(1.0, |s| s.volume))
    }
}

/// Runs (12) on `cluster` with the processes of `launch`; with `perf`, also
/// records a CPU profile of the first replay's upload hour there.
pub async fn national_day(
    shape: &Shape,
    launch: &Launch,
    cluster: &PrivateCluster,
    perf: Option<&std::path::Path>,
) -> anyhow::Result<NationalDay> {
    let spec = DaySpec::new(shape.day_volume);
    let day = Day::new(spec.clone(), data::councils());
    let people = DayPeople::new(&day)?;
    let (check_ins_per_day, flagged_per_day) = day.check_ins();
    let silent_reads_per_day = day.events.iter().filter(|e| matches!(e.event, Event::SilentRead { .. })).count();
    let mut result = NationalDay {
        spec: Some(spec),
        check_ins_per_day,
        flagged_per_day,
        silent_reads_per_day,
        councils: day.councils.len(),
        ..Default::default()
    };
    progress(&format!(
        "(12) the day: {} plans in {} councils ({} to {}), {} settings, {check_ins_per_day} check-ins \
         ({flagged_per_day} flagged), {silent_reads_per_day} silent reads, {} nightly uploads",
        day.spec.plans,
        day.councils.len(),
        day.sizes.iter().max().unwrap_or(&0),
        day.sizes.iter().min().unwrap_or(&0),
        day.unscheduled.len(),
        day.councils.len()
    ));
    cluster.create_database("cpis_day").await?;
    let launch = Launch { database_url: cluster.url("cpis_day"), ..launch.clone() };
    let db = data::connect(&launch.database_url).await?;
    result.postgres = db.query_one("SHOW server_version", &[]).await?.get(0);
    let pki = Pki::new(&launch.dir);
    let mut fleet = Fleet::start(&launch, &pki).await?;
    for s in fleet.all() {
        progress(&format!("  {:<20} pid {} port {}", s.name, s.pid().unwrap_or(0), s.port));
    }
    let net = Arc::new(Net::new(pki, launch.trust_domain.clone()));
    // --perf: the first replay's upload hour (the replicas share a name: a
    // profile tells services apart, not replicas).
    let profiler = perf.map(|dir| super::profile::Profiler::of_services(dir, &fleet.all())).transpose()?;

    let t = Instant::now();
    register(&day, &people, &net, fleet.registry.port).await?;
    result.register_secs = t.elapsed().as_secs_f64();
    progress(&format!(
        "(12) registered {} plans (SyncPlans, every council) in {:.1} s",
        day.spec.plans, result.register_secs
    ));
    data::settle(&db).await?;

    let ports: Vec<u16> = fleet.notification.iter().map(|s| s.port).collect();
    let held = Held::open(&net, &ports, &day.councils).await?;
    let rig = Rig {
        day: &day,
        people: &people,
        net: net.clone(),
        attendance_ports: fleet.attendance.iter().map(|s| s.port).collect(),
        registry_port: fleet.registry.port,
        held: &held,
        flagged: FlaggedPeople::new(&people),
    };
    replay::connect_settings(&rig).await?;
    result.idle = idle(&rig, shape).await?;
    fleet.check_alive()?;
    let searched = shape.day_factor.is_none();
    result.searched = searched;
    let mut factor = shape.day_factor.unwrap_or(GOAL_FACTOR);
    for night in 1..=MAX_REPLAYS {
        let perf = profiler.as_ref().filter(|_| night == 1);
        let r = replay_at(&rig, &db, &result.idle, factor, night, perf).await?;
        fleet.check_alive()?;
        let passed = r.passed;
        result.replays.push(r);
        if passed {
            result.headroom = Some(result.headroom.map_or(factor, |h: f64| h.max(factor)));
        } else {
            result.failed_at = Some(result.failed_at.map_or(factor, |f: f64| f.min(factor)));
        }
        match next_factor(result.headroom, result.failed_at) {
            Some(next) if searched => factor = next,
            _ => break,
        }
    }
    held.close();
    fleet.stop();
    if let Some(p) = &profiler {
        p.finish();
    }
    Ok(result)
}

/// The next factor to try, or `None` when the search is done.
pub fn next_factor(passed: Option<f64>, failed: Option<f64>) -> Option<f64> {
    let round = |f: f64| {
        let magnitude = 10f64.powf(f.log10().floor() - 1.0);
        (f / magnitude).round() * magnitude
    };
    match (passed, failed) {
        (Some(p), None) => (p < HIGHEST_FACTOR).then_some(p * 2.0),
        (None, Some(f)) => (f > LOWEST_FACTOR).then(|| (f / 2.0).max(LOWEST_FACTOR)),
        (Some(p), Some(f)) if f / p > 1.25 => Some(round((p * f).sqrt())),
        _ => None,
    }
}

/// Every council's first upload (night 0), four at a time.
async fn register(day: &Day, people: &DayPeople, net: &Net, port: u16) -> anyhow::Result<()> {
    use futures::StreamExt as _;
    let mut uploads = Vec::new();
    for (c, code) in day.councils.iter().enumerate() {
        let channel = net.council(port, code)?;
        let plans = super::national::council_list(day, people, c, 0)?;
        uploads.push(async move { data::sync(channel, plans.into_iter()).await });
    }
    let results: Vec<_> = futures::stream::iter(uploads).buffer_unordered(4).collect().await;
    for r in results {
        r?;
    }
    Ok(())
}

/// The idle reference: check-ins at [`IDLE_RATE`], alternately flagged and
/// not, across the day's settings, each alert awaited.
async fn idle(rig: &Rig<'_>, shape: &Shape) -> anyhow::Result<Idle> {
    let n = (IDLE_RATE * shape.day_idle_secs).round() as usize;
    let events: Vec<Timed> = (0..n)
        .map(|k| Timed {
            at: k as f64 / IDLE_RATE,
            event: Event::CheckIn { setting: k % rig.day.unscheduled.len(), flagged: k % 2 == 0 },
        })
        .collect();
    let o = replay::play(rig, &events, 1.0, 0).await?;
    let missing = replay::await_alerts(rig.held, &o, Duration::from_secs(20)).await;
    let alerts = alert_latencies(rig.held, &o);
    let pick = |flagged: bool| o.check_ins.iter().filter(|s| s.flagged == flagged).map(|s| s.micros).collect();
    let idle = Idle {
        rate_per_sec: IDLE_RATE,
        seconds: o.seconds,
        not_flagged: super::load::Latency::of(pick(false)),
        flagged: super::load::Latency::of(pick(true)),
        alerts: super::load::Latency::of(alerts),
        errors: o.errors.len() + missing,
        first_error: o
            .errors
            .first()
            .cloned()
            .or_else(|| (missing > 0).then(|| format!("{missing} alerts never arrived"))),
    };
    progress(&format!(
        "(12) idle: CheckIn not flagged p99 {:.2} ms, flagged p99 {:.2} ms, alert p99 {:.2} ms ({} samples each, {} errors)",
        idle.not_flagged.p99_ms, idle.flagged.p99_ms, idle.alerts.p99_ms, idle.flagged.samples, idle.errors
    ));
    anyhow::ensure!(idle.errors == 0, "(12) the idle reference failed: {:?}", idle.first_error);
    Ok(idle)
}

/// CheckIn answered to alert arrived, for each flagged check-in of `o` whose alert came.
fn alert_latencies(held: &Held, o: &replay::Outcome) -> Vec<u64> {
    o.episodes
        .iter()
        .filter_map(|(e, returned)| held.arrival(e).map(|a| micros(a.saturating_duration_since(*returned))))
        .collect()
}

/// One replay of the day at `factor` (night `night`'s uploads), judged;
/// then the outbox is emptied and the database settled for the next.
async fn replay_at(
    rig: &Rig<'_>,
    db: &tokio_postgres::Client,
    idle: &Idle,
    factor: f64,
    night: usize,
    perf: Option<&super::profile::Profiler>,
) -> anyhow::Result<ReplayResult> {
    progress(&format!("(12) replaying the day at {factor:.0}x ({:.1} s)", 86_400.0 / factor));
    let before = rig.held.seen();
    // --perf: from the first upload, for the upload hour (at most 8 s).
    let (from, hour) = (national::UPLOAD_WINDOW.0 / factor, 3_600.0 / factor);
    let recording = perf.map(|p| {
        p.window("national-day-uploads", Duration::from_secs_f64(from), Duration::from_secs_f64(hour.min(8.0)))
    });
    let o = replay::play(rig, &rig.day.events, factor, night).await?;
    if let Some(recording) = recording {
        let _ = recording.await;
    }
    let missing = replay::await_alerts(rig.held, &o, Duration::from_secs(30)).await;
    let after = rig.held.seen();
    let streams = super::held::Seen {
        received: after.received - before.received,
        duplicated: after.duplicated - before.duplicated,
        out_of_order: after.out_of_order - before.out_of_order,
        wrong_council: after.wrong_council - before.wrong_council,
        reopened: after.reopened - before.reopened,
    };
    let r = verdict::judge(&o, idle, alert_latencies(rig.held, &o), missing, streams);
    progress(&format!(
        "(12) {factor:.0}x: {}; check-in p99 not flagged {:.2} ms (worst window {:.2}), flagged {:.2} ms (worst {:.2}); \
         alerts {} of {} (p99 {:.2} ms); uploads {} late of {}, last at {:.0} s of the day",
        if r.passed { "passed".to_string() } else { format!("missed: {}", r.reasons.join("; ")) },
        r.not_flagged.whole.p99_ms,
        r.not_flagged.worst.p99_ms,
        r.flagged.whole.p99_ms,
        r.flagged.worst.p99_ms,
        r.alerts_expected - r.alerts_missing,
        r.alerts_expected,
        r.alert_latency.p99_ms,
        r.uploads_late,
        r.uploads,
        r.last_upload_at
    ));
    data::drain_outbox(db, Duration::from_secs(120)).await?;
    data::settle(db).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    Ok(r)
}

/// The printed section of the report.
pub fn print(d: &NationalDay) {
    let volume = d.spec.as_ref().map_or(1.0, |s| s.volume);
    println!(
        "\n(12) A national day{}: {} check-ins ({} flagged), {} silent reads and {} nightly uploads a day; \
         1 Registry, 2 Attendance, 2 Notification; first uploads of every council {:.1} s",
        if volume < 1.0 { format!(" at {volume} of the national volume") } else { String::new() },
        d.check_ins_per_day,
        d.flagged_per_day,
        d.silent_reads_per_day,
        d.councils,
        d.register_secs
    );
    let i = &d.idle;
    println!(
        "  idle ({:.0}/s): CheckIn not flagged p99 {:.2} ms, flagged p99 {:.2} ms, alert p99 {:.2} ms",
        i.rate_per_sec, i.not_flagged.p99_ms, i.flagged.p99_ms, i.alerts.p99_ms
    );
    println!(
        "  {:>8} {:>7} {:>22} {:>22} {:>16} {:>14} {:>7}  verdict",
        "factor", "secs", "not flagged p99/worst", "flagged p99/worst", "alerts p99", "uploads late", "errors"
    );
    for r in &d.replays {
        println!(
            "  {:>7.0}x {:>7.1} {:>10.2} / {:>9.2} {:>10.2} / {:>9.2} {:>9.2} ({}) {:>9} of {} {:>7}  {}",
            r.factor,
            r.seconds,
            r.not_flagged.whole.p99_ms,
            r.not_flagged.worst.p99_ms,
            r.flagged.whole.p99_ms,
            r.flagged.worst.p99_ms,
            r.alert_latency.p99_ms,
            r.alerts_expected - r.alerts_missing,
            r.uploads_late,
            r.uploads,
            r.errors,
            if r.passed { "passed".to_string() } else { format!("missed: {}", r.reasons.join("; ")) }
        );
        if let Some(e) = r.first_error.as_ref().or(r.upload_first_error.as_ref()) {
            println!("        first error: {e}");
        }
    }
    match (d.headroom, d.over_national()) {
        (Some(h), Some(n)) => println!("  largest factor that held: {h:.0}x ({n:.0}x national load)"),
        _ => println!("  no factor held (the lowest tried: {:.0}x)", d.failed_at.unwrap_or(0.0)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_search_doubles_halves_then_narrows_to_25_percent() {
        assert_eq!(next_factor(Some(1_000.0), None), Some(2_000.0));
        assert_eq!(next_factor(None, Some(1_000.0)), Some(500.0));
        assert_eq!(next_factor(None, Some(250.0)), None);
        assert_eq!(next_factor(Some(64_000.0), None), None);
        assert_eq!(next_factor(Some(2_000.0), Some(4_000.0)), Some(2_800.0));
        assert_eq!(next_factor(Some(2_800.0), Some(3_400.0)), None);
    }
}
