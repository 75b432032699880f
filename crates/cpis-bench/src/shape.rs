//! The options of a run and the sizes and durations they give.

use clap::Parser;
use serde::Serialize;
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

/// `cargo run -p cpis-bench --release -- [OPTIONS]`: measures the cpis
/// suite against the framework's and the database's ceilings, in one run.
#[derive(Parser, Debug)]
#[command(name = "cpis-bench", version, about)]
pub struct BenchArgs {
    /// Small sizes and short durations: a smoke test for CI (about a minute).
    #[arg(long)]
    pub quick: bool,
    /// Also write every figure as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Measured seconds per level (default 10, quick 2); each level also
    /// has a warm-up of a fifth of this (at least half a second).
    #[arg(long)]
    pub duration_secs: Option<f64>,
    /// Concurrency levels, comma-separated (default 1,8,32,64; quick 4,16).
    #[arg(long, value_delimiter = ',')]
    pub concurrency: Option<Vec<usize>>,
    /// Heartbeat interval of the Notification service, in seconds.
    #[arg(long, default_value_t = 1)]
    pub heartbeat_secs: u64,
    /// Run only these phases (comma-separated: framework, database,
    /// not-flagged, flagged, alerts, streams, bulk, council-load, scaling,
    /// national-day); the register is set up and the footprint read in every
    /// run that has one of the first nine.
    #[arg(long, value_delimiter = ',')]
    pub only: Option<Vec<String>>,
    /// Keep the temporary directory (database, PKI, service logs) afterwards.
    #[arg(long)]
    pub keep: bool,
    /// Where the SVG charts go (created if missing).
    #[arg(long, default_value = "bench-results")]
    pub out: PathBuf,
    /// Record CPU profiles (Linux `perf`, machine-wide) of the busiest
    /// level of (3) and (4), of (5)'s window and of (6)'s first upload, and
    /// draw them as flame graphs in this directory (needs `perf` and
    /// `cargo install inferno`). Sampling costs CPU: a profiled run's
    /// figures are not comparable with an unprofiled one's.
    #[arg(long, value_name = "DIR")]
    pub perf: Option<PathBuf>,
    /// (12): replay the national day once at this compression factor
    /// instead of searching for the largest that holds (`--quick`: 2,880 at
    /// a tenth of the day's volume).
    #[arg(long, value_name = "FACTOR")]
    pub day_factor: Option<f64>,
    /// The `cpis` executable whose `cpis serve` is measured. Default: the
    /// one beside this program (built first when run through cargo).
    #[arg(long, env = "CPIS_BIN")]
    pub cpis_bin: Option<PathBuf>,
}

const PHASES: &[&str] = &[
    "framework",
    "database",
    "not-flagged",
    "flagged",
    "alerts",
    "streams",
    "bulk",
    "council-load",
    "scaling",
    "national-day",
];

/// Most connections (each its own setting identity) a load level uses.
pub const MAX_CONNECTIONS: usize = 8;

/// Sizes and durations of one run.
#[derive(Debug, Clone, Serialize)]
pub struct Shape {
    pub quick: bool,
    pub levels: Vec<usize>,
    pub warmup_secs: f64,
    pub duration_secs: f64,
    /// Plans registered for the small end of (7).
    pub first_register: usize,
    /// People registered next (all councils): the flagged check-ins.
    pub working_register: usize,
    /// Plans registered for the large end of (7).
    pub large_register: u64,
    /// Rows of the bulk SyncPlans (6).
    pub bulk_rows: usize,
    /// Check-ins per second in (5).
    pub alert_rate: f64,
    /// Seconds of check-ins in (5).
    pub alert_secs: f64,
    /// Idle subscriptions in (8).
    pub streams: usize,
    /// Notification heartbeat interval.
    pub heartbeat_secs: u64,
    /// Seconds heartbeats are observed in (8).
    pub heartbeat_window_secs: f64,
    /// Workers in (7).
    pub scaling_concurrency: usize,
    /// Numbers never registered, cycled by the not-flagged check-ins.
    pub unregistered: usize,
    pub phases: BTreeSet<String>,
    /// (12): share of the national day's volume (1; quick 0.1).
    pub day_volume: f64,
    /// (12): a fixed compression factor, or `None` to search.
    pub day_factor: Option<f64>,
    /// (12): seconds of the idle reference.
    pub day_idle_secs: f64,
}

impl Shape {
    pub fn new(args: &BenchArgs) -> anyhow::Result<Shape> {
        let quick = args.quick;
        let duration_secs = args.duration_secs.unwrap_or(if quick { 2.0 } else { 10.0 });
        anyhow::ensure!(duration_secs > 0.0 && duration_secs <= 600.0, "--duration-secs must be in (0, 600]");
        let levels = args.concurrency.clone().unwrap_or_else(|| if quick { vec![4, 16] } else { vec![1, 8, 32, 64] });
        anyhow::ensure!(!levels.is_empty() && levels.iter().all(|&c| (1..=1024).contains(&c)), "bad --concurrency");
        anyhow::ensure!((1..=60).contains(&args.heartbeat_secs), "--heartbeat-secs must be 1 to 60");
        if let Some(f) = args.day_factor {
            anyhow::ensure!((1.0..=1_000_000.0).contains(&f), "--day-factor must be 1 to 1,000,000");
        }
        let phases: BTreeSet<String> = match &args.only {
            Some(list) => {
                for p in list {
                    anyhow::ensure!(PHASES.contains(&p.as_str()), "unknown phase {p:?}: expected one of {PHASES:?}");
                }
                list.iter().cloned().collect()
            }
            None => PHASES.iter().map(|p| p.to_string()).collect(),
        };
        Ok(Shape {
            quick,
            levels,
            warmup_secs: (duration_secs / 5.0).max(0.5),
            duration_secs,
            first_register: 10_000,
            working_register: if quick { 10_000 } else { 190_000 },
            large_register: if quick { 100_000 } else { 1_000_000 },
            bulk_rows: if quick { 20_000 } else { 200_000 },
            alert_rate: if quick { 50.0 } else { 200.0 },
            alert_secs: if quick { 4.0 } else { 30.0 },
            streams: if quick { 1_000 } else { 10_000 },
            heartbeat_secs: args.heartbeat_secs,
            heartbeat_window_secs: (if quick { 3.0_f64 } else { 10.0 }).max(3.0 * args.heartbeat_secs as f64),
            scaling_concurrency: 8,
            unregistered: 10_000,
            phases,
            day_volume: if quick { 0.1 } else { 1.0 },
            day_factor: args.day_factor.or(if quick { Some(2_880.0) } else { None }),
            day_idle_secs: if quick { 5.0 } else { 30.0 },
        })
    }

    pub fn runs(&self, phase: &str) -> bool {
        self.phases.contains(phase)
    }

    /// True when a phase other than (12) runs (they share the main register).
    pub fn runs_main(&self) -> bool {
        self.phases.iter().any(|p| p != "national-day")
    }

    pub fn warmup(&self) -> Duration {
        Duration::from_secs_f64(self.warmup_secs)
    }

    pub fn duration(&self) -> Duration {
        Duration::from_secs_f64(self.duration_secs)
    }
}
