//! `cpis bench`: measures the suite against the framework's and the
//! database's own ceilings, in one run, on one machine.
//!
//! The benchmark starts its own PostgreSQL (default, durable settings) in a
//! temporary directory and the three services as `cpis serve <name>`
//! processes (the code path of `cpis dev` and of a container: real mutual
//! TLS, real PostgreSQL, 127.0.0.1), so that each service's memory can be
//! read from `/proc` apart from the load generator's. Then, in order:
//!
//! 1. framework ceiling: `grpc.health.v1.Health/Check` on the Attendance
//!    port (the same TLS, HTTP/2, authorization and tracing layers);
//! 2. database ceiling: single-row durable INSERTs through a pool built by
//!    `cpis_runtime::db::pool` (16 connections, like each service's);
//! 3. CheckIn of people who are not registered;
//! 4. CheckIn of registered people, each the person's first visit to that
//!    setting: registry lookup, episode, access audit, outbox, stored
//!    answer, then the relay publishing the alert; the next level starts
//!    when the outbox is empty;
//! 5. alert latency: one Subscribe per council (153), check-ins at a fixed
//!    rate, from CheckIn returning to the alert arriving, and every alert
//!    accounted for;
//! 6. bulk SyncPlans of a council's national-size list, with the registry's
//!    peak RSS;
//! 7. scaling: CheckIn latency with a small register and a large one;
//! 8. idle subscriptions: memory per stream and heartbeat delivery;
//! 9. footprint: each service's RSS idle and under load (4);
//! 10. check-in under council load: CheckIn p99 (flagged and not) at a fixed
//!     rate while one council uploads a national-size list and another sends
//!     64 concurrent upserts, against the same rate with the Registry idle.
//!
//! Each level has a warm-up and a fixed duration; every wait is bounded.
//! The run fails (exit code 1) when an alert is missing, never for speed.

#[path = "bench_alerts.rs"]
mod alerts;
#[path = "bench_bulk.rs"]
mod bulk;
#[path = "bench_charts.rs"]
mod charts;
#[path = "bench_council.rs"]
mod council;
#[path = "bench_cpu.rs"]
mod cpu;
#[path = "bench_data.rs"]
mod data;
#[path = "bench_goals.rs"]
mod goals;
#[path = "bench_load.rs"]
mod load;
#[path = "bench_net.rs"]
mod net;
#[path = "bench_phases.rs"]
mod phases;
#[path = "bench_print.rs"]
mod print;
#[path = "bench_procs.rs"]
mod procs;
#[path = "bench_report.rs"]
mod report;
#[path = "bench_streams.rs"]
mod streams;

use anyhow::{bail, Context as _};
use clap::Args;
use cpis_devkit::pgcluster::{ClusterOptions, PrivateCluster};
use cpis_devkit::pki::Pki;
use cpu::CpuMeter;
use data::People;
use load::{closed_loop, LevelResult, Op};
use net::Net;
use procs::{Launch, RssSampler, Services};
use report::{Machine, PhaseCpu, Report};
use serde::Serialize;
use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Options of `cpis bench`.
#[derive(Args, Debug)]
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
    /// not-flagged, flagged, alerts, streams, bulk, council-load, scaling); the register
    /// is set up and the footprint read in every run.
    #[arg(long, value_delimiter = ',')]
    pub only: Option<Vec<String>>,
    /// Keep the temporary directory (database, PKI, service logs) afterwards.
    #[arg(long)]
    pub keep: bool,
    /// Where the SVG charts go (created if missing).
    #[arg(long, default_value = "bench-results")]
    pub out: PathBuf,
}

const PHASES: &[&str] =
    &["framework", "database", "not-flagged", "flagged", "alerts", "streams", "bulk", "council-load", "scaling"];

/// Most connections (each its own setting identity) a load level uses.
const MAX_CONNECTIONS: usize = 8;

/// Sizes and durations of one run.
#[derive(Debug, Clone, Serialize)]
struct Shape {
    quick: bool,
    levels: Vec<usize>,
    warmup_secs: f64,
    duration_secs: f64,
    /// Plans registered for the small end of (7).
    first_register: usize,
    /// People registered next (all councils): the flagged check-ins.
    working_register: usize,
    /// Plans registered for the large end of (7).
    large_register: u64,
    /// Rows of the bulk SyncPlans (6).
    bulk_rows: usize,
    /// Check-ins per second in (5).
    alert_rate: f64,
    /// Seconds of check-ins in (5).
    alert_secs: f64,
    /// Idle subscriptions in (8).
    streams: usize,
    /// Notification heartbeat interval.
    heartbeat_secs: u64,
    /// Seconds heartbeats are observed in (8).
    heartbeat_window_secs: f64,
    /// Workers in (7).
    scaling_concurrency: usize,
    /// Numbers never registered, cycled by the not-flagged check-ins.
    unregistered: usize,
    phases: BTreeSet<String>,
}

impl Shape {
    fn new(args: &BenchArgs) -> anyhow::Result<Shape> {
        let quick = args.quick;
        let duration_secs = args.duration_secs.unwrap_or(if quick { 2.0 } else { 10.0 });
        anyhow::ensure!(duration_secs > 0.0 && duration_secs <= 600.0, "--duration-secs must be in (0, 600]");
        let levels = args.concurrency.clone().unwrap_or_else(|| if quick { vec![4, 16] } else { vec![1, 8, 32, 64] });
        anyhow::ensure!(!levels.is_empty() && levels.iter().all(|&c| (1..=1024).contains(&c)), "bad --concurrency");
        anyhow::ensure!((1..=60).contains(&args.heartbeat_secs), "--heartbeat-secs must be 1 to 60");
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
        })
    }

    fn runs(&self, phase: &str) -> bool {
        self.phases.contains(phase)
    }

    fn warmup(&self) -> Duration {
        Duration::from_secs_f64(self.warmup_secs)
    }

    fn duration(&self) -> Duration {
        Duration::from_secs_f64(self.duration_secs)
    }
}

/// Raises the soft open-files limit to the hard one (10,000 streams need
/// sockets on both sides); the services inherit it. Returns the new limit.
fn raise_nofile_limit() -> Option<u64> {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return None;
        }
        limit.rlim_cur = limit.rlim_max;
        if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
            return None;
        }
    }
    Some(limit.rlim_cur)
}

/// Everything the phases share.
struct Ctx {
    shape: Shape,
    net: Arc<Net>,
    registry_port: u16,
    attendance_port: u16,
    notification_port: u16,
    db: tokio_postgres::Client,
    database_url: String,
    councils: Vec<String>,
    people: People,
    unregistered: Arc<Vec<String>>,
}

impl Ctx {
    /// (3) at `slots` load connections.
    fn not_flagged_op(&self, slots: usize) -> Op {
        net::not_flagged_op(self.net.clone(), self.attendance_port, self.unregistered.clone(), slots)
    }

    /// (4) at `slots` load connections, people from `people`.
    fn flagged_op(&self, slots: usize, people: Arc<net::Flagged>) -> Op {
        net::flagged_op(self.net.clone(), self.attendance_port, people, slots)
    }

    /// The latest alert sequence of every council that has one.
    async fn latest_sequences(&self) -> anyhow::Result<HashMap<String, i64>> {
        let rows = self.db.query("SELECT council_code, last_sequence FROM notification.council_sequences", &[]).await?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }
}

/// Runs each level of a closed-loop phase, printing as it goes.
async fn levels(ctx: &Ctx, label: &str, make: impl Fn(usize) -> Op) -> Vec<LevelResult> {
    let mut out = Vec::new();
    for &c in &ctx.shape.levels {
        let r = closed_loop(c, ctx.shape.warmup(), ctx.shape.duration(), make(c)).await;
        progress(&format!(
            "{label} c={c}: {:.0}/s p50 {:.2} ms p99 {:.2} ms errors {}{}",
            r.per_second,
            r.latency.p50_ms,
            r.latency.p99_ms,
            r.errors,
            r.first_error.as_deref().map(|e| format!(" (first: {e})")).unwrap_or_default()
        ));
        out.push(r);
    }
    out
}

fn progress(text: &str) {
    eprintln!("[bench] {text}");
}

/// Runs the benchmarks.
pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    let shape = Shape::new(&args)?;
    let started = Instant::now();
    let meter = CpuMeter::start("setup");
    let open_files_limit = raise_nofile_limit();
    let tmp = tempfile::Builder::new().prefix("cpis-bench").tempdir().context("creating a temporary directory")?;
    let dir = tmp.path().to_path_buf();
    if cfg!(debug_assertions) {
        progress("WARNING: this is a debug build; for real numbers: cargo build --release --bin cpis && target/release/cpis bench");
    }
    progress(&format!("working in {}", dir.display()));
    progress("starting PostgreSQL (default settings: durable commits; TLS, verify-full)");
    let cluster = PrivateCluster::start(&dir.join("pg"), ClusterOptions::default())
        .context("starting the benchmark's PostgreSQL cluster")?;
    cluster.create_database("cpis").await?;
    let database_url = cluster.url("cpis");
    let pki = Pki::new(&dir);
    pki.init()?;
    let trust_domain = "cpis.local".to_string();
    let launch = Launch {
        exe: std::env::current_exe().context("finding the cpis executable")?,
        dir: dir.clone(),
        database_url: database_url.clone(),
        trust_domain: trust_domain.clone(),
        heartbeat_secs: shape.heartbeat_secs,
    };
    progress("starting registry, notification and attendance (cpis serve, mutual TLS)");
    let mut services = Services::start(&launch, &pki).await?;
    for s in services.all() {
        progress(&format!("  {:<12} pid {} port {}", s.name, s.pid().unwrap_or(0), s.port));
    }

    let mut report = Report {
        version: env!("CARGO_PKG_VERSION"),
        build: if cfg!(debug_assertions) { "debug" } else { "release" },
        command: std::env::args().collect::<Vec<_>>().join(" "),
        machine: Machine { open_files_limit, ..Machine::read() },
        ..Default::default()
    };
    let whole_run = RssSampler::start(&services, Duration::from_millis(250));
    let outcome = phases::measure(&shape, &mut services, pki, trust_domain, database_url, &meter, &mut report).await;
    report.footprint_peak_over_run = whole_run.finish().await;
    meter.phase("shutdown");
    services.stop();
    drop(cluster);
    report.cpu = meter.finish().await.into_iter().map(|(phase, share)| PhaseCpu { phase, share }).collect();
    if args.keep {
        let kept = tmp.keep();
        progress(&format!("kept {}", kept.display()));
    }
    outcome?;
    report.shape = Some(shape);
    report.seconds_total = started.elapsed().as_secs_f64();
    report.goals = goals::goals(&report);
    match charts::write_all(&report, &args.out) {
        Ok(files) => report.charts = files.iter().map(|f| f.display().to_string()).collect(),
        Err(e) => progress(&format!("charts not written: {e:#}")),
    }

    print::print_report(&report);
    if !report.charts.is_empty() {
        println!("\nCharts: {}", report.charts.join(", "));
    }
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("writing {}", path.display()))?;
        println!("\nJSON written to {}", path.display());
    }
    if let Some(a) = &report.alerts {
        if a.alerts_missing > 0 || a.alerts_to_wrong_council > 0 {
            bail!(
                "{} alert(s) missing and {} delivered to the wrong council",
                a.alerts_missing,
                a.alerts_to_wrong_council
            );
        }
    }
    Ok(())
}

