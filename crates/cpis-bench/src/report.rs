//! What a run of the benchmark measured: every figure, as printed and as
//! written to JSON.

use super::council::CouncilLoadResult;
use super::cpu::CpuShare;
use super::headroom::NationalDay;
use super::load::{Latency, LevelResult};
use super::procs::Rss;
use super::Shape;
use serde::Serialize;

/// What the whole run measured.
#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub version: &'static str,
    pub build: &'static str,
    pub command: String,
    pub machine: Machine,
    pub shape: Option<Shape>,
    pub footprint_idle_start: Rss,
    pub framework_ceiling: Vec<LevelResult>,
    pub database_ceiling: Vec<LevelResult>,
    /// (2) with the INSERT sent as text (prepared anew on every call).
    pub database_unprepared: Vec<LevelResult>,
    pub check_in_not_flagged: Vec<LevelResult>,
    pub check_in_flagged: Vec<FlaggedLevel>,
    pub footprint_under_flagged_load: Option<Rss>,
    pub alerts: Option<AlertResult>,
    pub streams: Option<StreamsResult>,
    /// (6)'s ceiling: a plain COPY of the same rows into an equivalent table.
    pub bulk_copy_ceiling: Option<CopyCeiling>,
    pub bulk_sync: Vec<BulkPass>,
    pub council_load: Option<CouncilLoadResult>,
    pub scaling: Vec<ScalingPoint>,
    /// (12) a national day.
    pub national_day: Option<NationalDay>,
    pub footprint_idle_end: Rss,
    pub footprint_peak_over_run: Rss,
    pub goals: Vec<Goal>,
    /// CPU used by this run and by everything else, phase by phase.
    pub cpu: Vec<PhaseCpu>,
    /// SVG charts written, if any.
    pub charts: Vec<String>,
    pub seconds_total: f64,
}

/// CPU shares of one phase.
#[derive(Debug, Serialize)]
pub struct PhaseCpu {
    pub phase: String,
    #[serde(flatten)]
    pub share: CpuShare,
}

/// The machine the run was on.
#[derive(Debug, Default, Serialize)]
pub struct Machine {
    pub cpus: usize,
    pub cpu_model: String,
    pub memory_total_kib: u64,
    pub postgres: String,
    pub open_files_limit: Option<u64>,
}

impl Machine {
    pub fn read() -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_string())
            .unwrap_or_default();
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let memory_total_kib = meminfo
            .lines()
            .find(|l| l.starts_with("MemTotal:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        Machine {
            cpus: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
            cpu_model,
            memory_total_kib,
            ..Default::default()
        }
    }
}

/// One level of (4), with what the relay did after it.
#[derive(Debug, Serialize)]
pub struct FlaggedLevel {
    #[serde(flatten)]
    pub level: LevelResult,
    /// Alerts the Notification service stored per second during the window.
    pub alerts_published_per_sec: f64,
    /// The pipeline's sustained rate: the slower of check-ins and alerts.
    pub end_to_end_per_sec: f64,
    /// Alerts still in the outbox when the level's window closed.
    pub outbox_backlog_at_end: i64,
    /// Seconds until the outbox was empty after the window closed.
    pub outbox_drain_secs: f64,
    /// False when the outbox did not empty within the limit.
    pub outbox_drained: bool,
}

/// What (5) measured.
#[derive(Debug, Default, Serialize)]
pub struct AlertResult {
    pub subscribers: usize,
    pub rate_per_sec: f64,
    pub check_ins_sent: u64,
    pub check_ins_failed: u64,
    pub first_error: Option<String>,
    /// Flagged check-ins that returned: each must produce one alert.
    pub alerts_expected: u64,
    pub alerts_received: u64,
    pub alerts_missing: u64,
    pub alerts_duplicated: u64,
    /// Alerts whose check-in never returned (e.g. timed out after storing).
    pub alerts_unmatched: u64,
    /// Alerts that reached a council other than the one subscribed: must be 0.
    pub alerts_to_wrong_council: u64,
    /// Alerts that arrived before their CheckIn had returned (latency 0).
    pub alerts_before_response: u64,
    pub streams_ended_early: u64,
    pub latency: Latency,
    pub check_in_latency: Latency,
    pub drive_secs: f64,
    /// Every latency sample, in microseconds (for the chart; not in the JSON).
    #[serde(skip)]
    pub samples_us: Vec<u64>,
}

/// One round of (8)/(10): open the streams, hold them, close them.
#[derive(Debug, Default, Clone, Serialize)]
pub struct StreamRound {
    pub opened: usize,
    pub open_failures: usize,
    pub first_error: Option<String>,
    pub open_secs: f64,
    pub notification_rss_before_kib: u64,
    pub notification_rss_open_kib: u64,
    /// The largest RSS while the round ran (VmHWM after a reset, or sampled).
    pub notification_rss_peak_kib: u64,
    pub notification_rss_after_close_kib: u64,
    pub streams_ended_early: usize,
}

/// What (8) and (10) measured.
#[derive(Debug, Default, Serialize)]
pub struct StreamsResult {
    pub requested: usize,
    pub connections: usize,
    pub council_identities: usize,
    pub heartbeat_interval_secs: u64,
    pub window_secs: f64,
    /// Notification's RSS when idle, at the start of the run ((9)).
    pub notification_rss_idle_kib: u64,
    /// Round 1 (observed for heartbeats) and round 2 (the same again).
    pub rounds: Vec<StreamRound>,
    /// (Open RSS - RSS before) / streams, round 1.
    pub bytes_per_stream: f64,
    pub streams_with_heartbeat: usize,
    pub heartbeats_min_per_stream: usize,
    pub heartbeats_median_per_stream: usize,
    pub heartbeats_in_window: u64,
    /// Per stream, the longest time without a heartbeat inside the window
    /// (window edges included): percentiles over the streams.
    pub longest_gap: Latency,
    /// Streams whose longest silence exceeded the interval by more than 10%.
    pub streams_late: usize,
    /// `cpis_notification_stream_db_queries_total` (all kinds but the
    /// safety poll) grew by this much during the window; `None` when the
    /// service does not export it.
    pub db_queries_in_window: Option<f64>,
    pub db_queries_per_heartbeat: Option<f64>,
    /// The instance's safety polls in the window (`kind="poll"`: one query
    /// for all councils, open streams or not), counted apart.
    pub db_safety_polls_in_window: Option<f64>,
}

/// A plain COPY of (6)'s rows into a table like `registry.plans`.
#[derive(Debug, Default, Serialize)]
pub struct CopyCeiling {
    pub rows: u64,
    pub seconds: f64,
    pub rows_per_sec: f64,
}

/// One pass of (6).
#[derive(Debug, Default, Serialize)]
pub struct BulkPass {
    pub pass: &'static str,
    pub rows: usize,
    pub seconds: f64,
    pub plans_per_sec: f64,
    pub created: i64,
    pub updated: i64,
    pub unchanged: i64,
    pub ended: i64,
    pub registry_rss_before_kib: u64,
    pub registry_rss_peak_sampled_kib: u64,
    /// VmHWM after resetting it just before the pass; 0 when the reset failed.
    pub registry_rss_peak_hwm_kib: u64,
}

/// One end of (7).
#[derive(Debug, Serialize)]
pub struct ScalingPoint {
    pub plans_registered: i64,
    pub not_flagged: LevelResult,
    pub flagged: LevelResult,
}

/// One goal of the issue and where the run stands; `met` is `None` when
/// the run could not measure it.
#[derive(Debug, Serialize)]
pub struct Goal {
    pub figure: &'static str,
    pub goal: &'static str,
    pub measured: String,
    pub met: Option<bool>,
}

/// MB (10^6 bytes) of a KiB figure.
pub fn mb(kib: u64) -> f64 {
    kib as f64 * 1024.0 / 1_000_000.0
}
