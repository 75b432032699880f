//! `cpis-bench` (`cargo run -p cpis-bench --release -- [OPTIONS]`):
//! measures the suite against the framework's and the database's own
//! ceilings, in one run, on one machine, and prints each goal of issue 17 as
//! met or missed. A development tool: it is not in the container image.
//!
//! The benchmark starts its own PostgreSQL (default, durable settings) in a
//! temporary directory and the three services as `cpis serve <name>`
//! processes of the `cpis` binary (the code path of `cpis dev` and of a container: real mutual
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
//! 8. idle subscriptions: memory per stream, heartbeats on time, database
//!    queries they cause;
//! 9. footprint: each service's RSS idle and under load (4);
//! 10. memory after 10,000 streams close, and a second round of them;
//! 11. check-in under council load (issue 13): CheckIn p99 (flagged and not) at a fixed
//!     rate while one council uploads a national-size list and another sends
//!     64 concurrent upserts, against the same rate with the Registry idle.
//! 12. a national day (issue 27): the main services stopped, one Registry
//!     and two replicas each of Attendance and Notification on a database of
//!     their own replay a synthetic day of England compressed by a factor;
//!     the largest factor at which check-ins, alerts and uploads keep their
//!     bounds is the headroom over national load.
//!
//! Each level has a warm-up and a fixed duration; every wait is bounded.
//! The run fails (exit code 1) when an alert is missing, never for speed.
//! The figures are also drawn as SVG charts (`--out`).

mod alerts;
mod bulk;
mod charts;
mod council;
mod cpu;
mod data;
mod day_chart;
mod fleet;
mod goals;
mod headroom;
mod held;
mod load;
mod national;
mod net;
mod phases;
mod print;
mod procs;
mod profile;
mod replay;
mod report;
mod shape;
mod streams;
mod verdict;

use anyhow::{bail, Context as _};
use clap::Parser as _;
use cpis_devkit::pgcluster::{ClusterOptions, PrivateCluster};
use cpis_devkit::pki::Pki;
use cpu::CpuMeter;
use data::People;
use load::{closed_loop, LevelResult, Op};
use net::Net;
use procs::{Launch, RssSampler, Services};
use report::{Machine, PhaseCpu, Report};
use shape::{BenchArgs, Shape, MAX_CONNECTIONS};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[tokio::main]
async fn main() -> std::process::ExitCode {
    cpis_runtime::tls::install_default_provider();
    match run(BenchArgs::parse()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// The `cpis` executable to measure: `--cpis-bin`, or the one beside this
/// program. Run through cargo (`cargo run -p cpis-bench`), it is built
/// first with the same profile, so that the services measured are the
/// code of this checkout and never a stale binary.
fn cpis_binary(explicit: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(path) = explicit {
        anyhow::ensure!(path.is_file(), "--cpis-bin {}: no such file", path.display());
        return Ok(path.to_path_buf());
    }
    let me = std::env::current_exe().context("finding this executable")?;
    let beside = me.with_file_name(format!("cpis{}", std::env::consts::EXE_SUFFIX));
    if let Some(cargo) = std::env::var_os("CARGO") {
        let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../Cargo.toml");
        let mut build = std::process::Command::new(cargo);
        build.args(["build", "--bin", "cpis", "--manifest-path"]).arg(&manifest);
        if !cfg!(debug_assertions) {
            build.arg("--release");
        }
        progress("building the cpis binary it measures (cargo build --bin cpis)");
        let status = build.status().context("running cargo build --bin cpis")?;
        anyhow::ensure!(status.success(), "cargo build --bin cpis failed ({status})");
    }
    anyhow::ensure!(
        beside.is_file(),
        "{} not found: build it (cargo build --release --bin cpis) or pass --cpis-bin",
        beside.display()
    );
    Ok(beside)
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
    /// `--perf`: CPU profiles of chosen windows.
    profiler: Option<profile::Profiler>,
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

/// Runs each level of a closed-loop phase, printing as it goes; with
/// `--perf`, profiles the last (busiest) level's measured window as `perf`.
async fn levels(ctx: &Ctx, label: &str, perf: Option<&str>, make: impl Fn(usize) -> Op) -> Vec<LevelResult> {
    let mut out = Vec::new();
    for (i, &c) in ctx.shape.levels.iter().enumerate() {
        let last = i + 1 == ctx.shape.levels.len();
        let recording = match (&ctx.profiler, perf) {
            (Some(p), Some(name)) if last => Some(p.window(name, ctx.shape.warmup(), ctx.shape.duration())),
            _ => None,
        };
        let r = closed_loop(c, ctx.shape.warmup(), ctx.shape.duration(), make(c)).await;
        if let Some(recording) = recording {
            let _ = recording.await;
        }
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
async fn run(args: BenchArgs) -> anyhow::Result<()> {
    let shape = Shape::new(&args)?;
    let exe = cpis_binary(args.cpis_bin.as_deref())?;
    let started = Instant::now();
    let meter = CpuMeter::start("setup");
    let open_files_limit = raise_nofile_limit();
    let tmp = tempfile::Builder::new().prefix("cpis-bench").tempdir().context("creating a temporary directory")?;
    let dir = tmp.path().to_path_buf();
    if cfg!(debug_assertions) {
        progress("WARNING: this is a debug build; for real numbers: cargo run -p cpis-bench --release");
    }
    progress(&format!("working in {}", dir.display()));
    progress("starting PostgreSQL (default settings: durable commits; TLS, verify-full)");
    // Extra server settings for diagnosis (e.g. `shared_preload_libraries=pg_stat_statements`),
    // `name=value` separated by `;`: never in a recorded run, whose settings are the defaults.
    let settings: Vec<(String, String)> = std::env::var("CPIS_BENCH_PG_SETTINGS")
        .unwrap_or_default()
        .split(';')
        .filter_map(|kv| kv.split_once('=').map(|(k, v)| (k.trim().to_string(), v.trim().to_string())))
        .collect();
    if !settings.is_empty() {
        progress(&format!("extra PostgreSQL settings (CPIS_BENCH_PG_SETTINGS): {settings:?}"));
    }
    let cluster = PrivateCluster::start(&dir.join("pg"), ClusterOptions { settings, ..ClusterOptions::default() })
        .context("starting the benchmark's PostgreSQL cluster")?;
    cluster.create_database("cpis").await?;
    let database_url = cluster.url("cpis");
    let pki = Pki::new(&dir);
    pki.init()?;
    let trust_domain = "cpis.local".to_string();
    let launch = Launch {
        exe,
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
    let profiler = match &args.perf {
        Some(dir) => Some(profile::Profiler::of_services(dir, &services.all())?),
        None => None,
    };
    let outcome = if shape.runs_main() {
        phases::measure(&shape, &mut services, pki, trust_domain, database_url, profiler, &meter, &mut report).await
    } else {
        Ok(())
    };
    let outcome = match outcome {
        Ok(()) if shape.runs("national-day") => {
            services.stop();
            meter.phase("(12) national day");
            headroom::national_day(&shape, &launch, &cluster, args.perf.as_deref()).await.map(|day| {
                if report.machine.postgres.is_empty() {
                    report.machine.postgres.clone_from(&day.postgres);
                }
                report.national_day = Some(day);
            })
        }
        other => other,
    };
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
    if let Some(lost) = report.national_day.as_ref().and_then(headroom::NationalDay::alerts_lost) {
        bail!("(12) {lost}");
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
