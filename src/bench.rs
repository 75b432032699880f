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

#[path = "bench_council.rs"]
mod council;
#[path = "bench_data.rs"]
mod data;
#[path = "bench_load.rs"]
mod load;
#[path = "bench_procs.rs"]
mod procs;

use anyhow::{bail, Context as _};
use clap::Args;
use cpis_devkit::pgcluster::{ClusterOptions, PrivateCluster};
use cpis_devkit::pki::Pki;
use cpis_domain::identity::{Caller, CallerKind};
use cpis_proto::attendance::v1::{attendance_service_client::AttendanceServiceClient, CheckInRequest, CheckInResponse};
use cpis_proto::common::v1::SettingType;
use cpis_proto::notification::v1::{
    notification_service_client::NotificationServiceClient, subscribe_response::Event, SubscribeRequest,
};
use data::{People, PeopleSizes, Segment};
use load::{closed_loop, peak, Latency, LevelResult, Op};
use procs::{CpuMeter, CpuShare, Launch, Rss, RssSampler, Services};
use serde::Serialize;
use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tonic::transport::Channel;

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
}

const PHASES: &[&str] =
    &["framework", "database", "not-flagged", "flagged", "alerts", "streams", "bulk", "council-load", "scaling"];

/// The council whose national-size list is synced in (6).
const BULK_COUNCIL: &str = "E10000016";

/// Most connections (each its own setting identity) a load level uses.
const MAX_CONNECTIONS: usize = 8;

/// Idle subscriptions per council identity in (8): under the services'
/// default cap of 64 requests and streams in flight per caller.
const STREAMS_PER_COUNCIL: usize = 50;

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

/// Channels to the services, one per (port, identity), made on first use.
struct Net {
    pki: Pki,
    trust_domain: String,
    cache: Mutex<HashMap<String, Channel>>,
}

impl Net {
    /// A channel to `port` presenting `caller`'s certificate, shared by
    /// everyone asking for the same pair (one HTTP/2 connection).
    fn channel(&self, port: u16, caller: &Caller) -> anyhow::Result<Channel> {
        let key = format!("{port}/{}/{}", caller.kind().as_str(), caller.code());
        let mut cache = self.cache.lock().map_err(|_| anyhow::anyhow!("channel cache poisoned"))?;
        if let Some(ch) = cache.get(&key) {
            return Ok(ch.clone());
        }
        let ch = self.fresh_channel(port, caller)?;
        cache.insert(key, ch.clone());
        Ok(ch)
    }

    /// A new channel (its own connection) to `port` as `caller`.
    fn fresh_channel(&self, port: u16, caller: &Caller) -> anyhow::Result<Channel> {
        let tls = self.pki.ensure(caller, &self.trust_domain)?;
        cpis_runtime::client::channel(&format!("https://localhost:{port}"), &tls, None)
    }

    /// The channel of load connection `slot` in round `round` (see [`Flagged`]).
    fn setting(&self, port: u16, slot: usize, round: usize) -> anyhow::Result<Channel> {
        self.channel(port, &setting_caller(slot, round)?)
    }

    fn council(&self, port: u16, code: &str) -> anyhow::Result<Channel> {
        self.channel(port, &Caller::from_parts(CallerKind::Council, code)?)
    }
}

/// The setting identity of load connection `slot` in round `round`: an ODS
/// format code such as `B03R00`.
fn setting_caller(slot: usize, round: usize) -> anyhow::Result<Caller> {
    anyhow::ensure!(slot < 100 && round < 100, "setting slot {slot} round {round} out of range");
    Ok(Caller::from_parts(CallerKind::Setting, &format!("B{slot:02}R{round:02}"))?)
}

/// Registered people handed out for flagged check-ins. Person `i` of the
/// list is used at most once per setting: the n-th pass over the list
/// ("round") checks in at settings of round n, so every flagged check-in
/// is a new episode and publishes a new alert.
struct Flagged {
    people: Vec<String>,
    next: AtomicUsize,
}

impl Flagged {
    fn new(people: &[String]) -> Arc<Flagged> {
        Arc::new(Flagged { people: people.to_vec(), next: AtomicUsize::new(0) })
    }

    /// The next person and round.
    fn take(&self) -> (String, usize) {
        let i = self.next.fetch_add(1, Ordering::Relaxed);
        (self.people[i % self.people.len()].clone(), i / self.people.len())
    }

    /// How many have been handed out.
    fn used(&self) -> usize {
        self.next.load(Ordering::Relaxed)
    }
}

fn status_text(s: &tonic::Status) -> String {
    format!("{:?}: {}", s.code(), s.message())
}

/// One CheckIn with a fresh request id, a 10 s deadline and arrival now.
async fn check_in(channel: Channel, nhs_number: String, worker: usize) -> Result<CheckInResponse, String> {
    let mut request = tonic::Request::new(CheckInRequest {
        request_id: uuid::Uuid::new_v4().to_string(),
        nhs_number,
        arrived_at: Some(cpis_domain::time::to_timestamp(chrono::Utc::now())),
        setting_type: SettingType::EmergencyDepartment as i32,
        user_id: format!("bench-user-{worker}"),
    });
    request.set_timeout(Duration::from_secs(10));
    let mut client = AttendanceServiceClient::new(channel);
    client.check_in(request).await.map(|r| r.into_inner()).map_err(|s| status_text(&s))
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
    fn slots(concurrency: usize) -> usize {
        concurrency.clamp(1, MAX_CONNECTIONS)
    }

    fn health_op(&self, slots: usize) -> Op {
        use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest};
        let (net, port) = (self.net.clone(), self.attendance_port);
        Arc::new(move |w| {
            let net = net.clone();
            Box::pin(async move {
                let channel = net.setting(port, w % slots, 0).map_err(|e| e.to_string())?;
                let mut request = tonic::Request::new(HealthCheckRequest { service: String::new() });
                request.set_timeout(Duration::from_secs(10));
                let status = HealthClient::new(channel).check(request).await.map_err(|s| status_text(&s))?;
                match status.into_inner().status {
                    1 => Ok(()),
                    other => Err(format!("health status {other}")),
                }
            })
        })
    }

    fn not_flagged_op(&self, slots: usize) -> Op {
        let (net, port, numbers) = (self.net.clone(), self.attendance_port, self.unregistered.clone());
        let next = Arc::new(AtomicUsize::new(0));
        Arc::new(move |w| {
            let (net, numbers, next) = (net.clone(), numbers.clone(), next.clone());
            Box::pin(async move {
                let nhs = numbers[next.fetch_add(1, Ordering::Relaxed) % numbers.len()].clone();
                let channel = net.setting(port, w % slots, 0).map_err(|e| e.to_string())?;
                let r = check_in(channel, nhs, w).await?;
                if r.flagged {
                    return Err("an unregistered person was flagged".into());
                }
                Ok(())
            })
        })
    }

    fn flagged_op(&self, slots: usize, people: Arc<Flagged>) -> Op {
        let (net, port) = (self.net.clone(), self.attendance_port);
        Arc::new(move |w| {
            let (net, people) = (net.clone(), people.clone());
            Box::pin(async move {
                let (nhs, round) = people.take();
                let channel = net.setting(port, w % slots, round).map_err(|e| e.to_string())?;
                let r = check_in(channel, nhs, w).await?;
                if !r.flagged || r.episode_id.is_empty() {
                    return Err("a registered person was not flagged".into());
                }
                Ok(())
            })
        })
    }

    /// One durable single-row INSERT (its own transaction). `prepared`: a
    /// statement cached on the connection; otherwise the SQL text, which
    /// tokio-postgres prepares as an unnamed statement on every call (one
    /// more round trip, parse and plan each time).
    fn db_op(pool: cpis_runtime::db::DbPool, prepared: bool) -> Op {
        const INSERT: &str =
            "INSERT INTO bench.scratch (id, nhs_number, setting_code, arrived_at) VALUES ($1, $2, $3, $4)";
        Arc::new(move |w| {
            let pool = pool.clone();
            Box::pin(async move {
                let db = pool.get().await.map_err(|e| format!("pool: {e}"))?;
                let setting = format!("B{:02}R00", w % MAX_CONNECTIONS);
                let (id, now) = (uuid::Uuid::now_v7(), chrono::Utc::now());
                let params: [&(dyn tokio_postgres::types::ToSql + Sync); 4] = [&id, &"9990000018", &setting, &now];
                let done = if prepared {
                    let insert = db.prepare_cached(INSERT).await.map_err(|e| cpis_runtime::db::describe(&e))?;
                    db.execute(&insert, &params).await
                } else {
                    db.execute(INSERT, &params).await
                };
                done.map_err(|e| cpis_runtime::db::describe(&e))?;
                Ok(())
            })
        })
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

/// What the whole run measured.
#[derive(Debug, Default, Serialize)]
struct Report {
    version: &'static str,
    build: &'static str,
    command: String,
    machine: Machine,
    shape: Option<Shape>,
    footprint_idle_start: Rss,
    framework_ceiling: Vec<LevelResult>,
    database_ceiling: Vec<LevelResult>,
    /// (2) with the INSERT sent as text (prepared anew on every call).
    database_unprepared: Vec<LevelResult>,
    check_in_not_flagged: Vec<LevelResult>,
    check_in_flagged: Vec<FlaggedLevel>,
    footprint_under_flagged_load: Option<Rss>,
    alerts: Option<AlertResult>,
    streams: Option<StreamsResult>,
    bulk_sync: Vec<BulkPass>,
    council_load: Option<council::CouncilLoadResult>,
    scaling: Vec<ScalingPoint>,
    footprint_idle_end: Rss,
    footprint_peak_over_run: Rss,
    goals: Vec<Goal>,
    /// CPU used by this run and by everything else, phase by phase.
    cpu: Vec<PhaseCpu>,
    seconds_total: f64,
}

/// CPU shares of one phase.
#[derive(Debug, Serialize)]
struct PhaseCpu {
    phase: String,
    #[serde(flatten)]
    share: CpuShare,
}

/// The machine the run was on.
#[derive(Debug, Default, Serialize)]
struct Machine {
    cpus: usize,
    cpu_model: String,
    memory_total_kib: u64,
    postgres: String,
    open_files_limit: Option<u64>,
}

impl Machine {
    fn read() -> Machine {
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
struct FlaggedLevel {
    #[serde(flatten)]
    level: LevelResult,
    /// Alerts the Notification service stored per second during the window.
    alerts_published_per_sec: f64,
    /// The pipeline's sustained rate: the slower of check-ins and alerts.
    end_to_end_per_sec: f64,
    /// Alerts still in the outbox when the level's window closed.
    outbox_backlog_at_end: i64,
    /// Seconds until the outbox was empty after the window closed.
    outbox_drain_secs: f64,
    /// False when the outbox did not empty within the limit.
    outbox_drained: bool,
}

/// What (5) measured.
#[derive(Debug, Default, Serialize)]
struct AlertResult {
    subscribers: usize,
    rate_per_sec: f64,
    check_ins_sent: u64,
    check_ins_failed: u64,
    first_error: Option<String>,
    /// Flagged check-ins that returned: each must produce one alert.
    alerts_expected: u64,
    alerts_received: u64,
    alerts_missing: u64,
    alerts_duplicated: u64,
    /// Alerts whose check-in never returned (e.g. timed out after storing).
    alerts_unmatched: u64,
    /// Alerts that reached a council other than the one subscribed: must be 0.
    alerts_to_wrong_council: u64,
    /// Alerts that arrived before their CheckIn had returned (latency 0).
    alerts_before_response: u64,
    streams_ended_early: u64,
    latency: Latency,
    check_in_latency: Latency,
    drive_secs: f64,
}

/// What (8) measured.
#[derive(Debug, Default, Serialize)]
struct StreamsResult {
    requested: usize,
    opened: usize,
    open_failures: usize,
    first_error: Option<String>,
    open_secs: f64,
    connections: usize,
    council_identities: usize,
    notification_rss_before_kib: u64,
    notification_rss_open_kib: u64,
    notification_rss_after_window_kib: u64,
    notification_rss_after_close_kib: u64,
    bytes_per_stream: f64,
    heartbeat_interval_secs: u64,
    window_secs: f64,
    streams_with_heartbeat: usize,
    heartbeats_min_per_stream: usize,
    heartbeats_median_per_stream: usize,
    /// Per stream, the longest time without a heartbeat inside the window
    /// (window edges included): percentiles over the streams.
    longest_gap: Latency,
    streams_ended_early: usize,
}

/// One pass of (6).
#[derive(Debug, Default, Serialize)]
struct BulkPass {
    pass: &'static str,
    rows: usize,
    seconds: f64,
    plans_per_sec: f64,
    created: i64,
    updated: i64,
    unchanged: i64,
    ended: i64,
    registry_rss_before_kib: u64,
    registry_rss_peak_sampled_kib: u64,
    /// VmHWM after resetting it just before the pass; 0 when the reset failed.
    registry_rss_peak_hwm_kib: u64,
}

/// One end of (7).
#[derive(Debug, Serialize)]
struct ScalingPoint {
    plans_registered: i64,
    not_flagged: LevelResult,
    flagged: LevelResult,
}

/// One goal of the issue and where the run stands.
#[derive(Debug, Serialize)]
struct Goal {
    figure: &'static str,
    goal: &'static str,
    measured: String,
    met: Option<bool>,
}

fn mb(kib: u64) -> f64 {
    kib as f64 * 1024.0 / 1_000_000.0
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
    let outcome = measure(&shape, &mut services, pki, trust_domain, database_url, &meter, &mut report).await;
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
    report.goals = goals(&report);

    print_report(&report);
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

async fn measure(
    shape: &Shape,
    services: &mut Services,
    pki: Pki,
    trust_domain: String,
    database_url: String,
    meter: &CpuMeter,
    report: &mut Report,
) -> anyhow::Result<()> {
    let db = data::connect(&database_url).await?;
    report.machine.postgres = db.query_one("SHOW server_version", &[]).await?.get(0);
    let people = People::new(PeopleSizes {
        unregistered: shape.unregistered,
        first: shape.first_register,
        working: shape.working_register,
        bulk: shape.bulk_rows,
    })?;
    let ctx = Ctx {
        shape: shape.clone(),
        net: Arc::new(Net { pki, trust_domain, cache: Mutex::new(HashMap::new()) }),
        registry_port: services.registry.port,
        attendance_port: services.attendance.port,
        notification_port: services.notification.port,
        db,
        database_url,
        councils: data::councils(),
        unregistered: Arc::new(people.unregistered.clone()),
        people,
    };

    // (9) idle, before anything else.
    meter.phase("(9) idle");
    tokio::time::sleep(Duration::from_secs(3)).await;
    report.footprint_idle_start = services.rss_kib();

    // The first register: the small end of (7).
    let first = Segment { prefix: "A", people: &ctx.people.first };
    meter.phase("register (setup)");
    let t = Instant::now();
    let n = data::register(|c| ctx.net.council(ctx.registry_port, c), &ctx.councils, &[first], 4).await?;
    progress(&format!("registered {n} plans (SyncPlans, 153 councils) in {:.1} s", t.elapsed().as_secs_f64()));
    data::settle(&ctx.db).await?;
    if shape.runs("scaling") {
        meter.phase("(7) small register");
        let point = scaling_point(&ctx, Flagged::new(&ctx.people.first)).await?;
        report.scaling.push(point);
    }
    services.check_alive()?;

    // The working register: national size, all councils.
    let half = ctx.people.working.len() / 2;
    let working = Segment { prefix: "C", people: &ctx.people.working };
    meter.phase("register (setup)");
    let t = Instant::now();
    let n = data::register(|c| ctx.net.council(ctx.registry_port, c), &ctx.councils, &[first, working], 4).await?;
    progress(&format!("registered {n} more plans (SyncPlans, 153 councils) in {:.1} s", t.elapsed().as_secs_f64()));
    data::settle(&ctx.db).await?;
    let flagged_people = Flagged::new(&ctx.people.working[..half]);

    if shape.runs("framework") {
        meter.phase("(1) framework ceiling");
        report.framework_ceiling = levels(&ctx, "(1) Health/Check", |c| ctx.health_op(Ctx::slots(c))).await;
    }
    if shape.runs("database") {
        meter.phase("(2) database ceiling");
        ctx.db
            .batch_execute(
                "CREATE SCHEMA IF NOT EXISTS bench;
                 CREATE TABLE IF NOT EXISTS bench.scratch (
                     id uuid PRIMARY KEY, nhs_number text NOT NULL, setting_code text NOT NULL,
                     arrived_at timestamptz NOT NULL)",
            )
            .await?;
        let pool = cpis_runtime::db::pool(&ctx.database_url, 16)?;
        report.database_ceiling = levels(&ctx, "(2) durable INSERT", |_| Ctx::db_op(pool.clone(), true)).await;
        report.database_unprepared = levels(&ctx, "(2b) same, unprepared", |_| Ctx::db_op(pool.clone(), false)).await;
        ctx.db.batch_execute("DROP TABLE bench.scratch; CHECKPOINT").await?;
    }
    services.check_alive()?;
    if shape.runs("not-flagged") {
        meter.phase("(3) CheckIn not flagged");
        report.check_in_not_flagged =
            levels(&ctx, "(3) CheckIn not flagged", |c| ctx.not_flagged_op(Ctx::slots(c))).await;
    }
    if shape.runs("flagged") {
        meter.phase("(4) CheckIn flagged");
        let sampler = RssSampler::start(services, Duration::from_millis(100));
        for &c in &shape.levels {
            // Alerts stored by Notification during the measured window.
            let published = {
                let (url, warmup, duration) = (ctx.database_url.clone(), shape.warmup(), shape.duration());
                tokio::spawn(async move {
                    let db = data::connect(&url).await?;
                    tokio::time::sleep(warmup).await;
                    let before = data::alerts_stored(&db).await?;
                    let t = Instant::now();
                    tokio::time::sleep(duration).await;
                    let after = data::alerts_stored(&db).await?;
                    Ok::<f64, anyhow::Error>((after - before) as f64 / t.elapsed().as_secs_f64())
                })
            };
            let level =
                closed_loop(c, shape.warmup(), shape.duration(), ctx.flagged_op(Ctx::slots(c), flagged_people.clone()))
                    .await;
            let alerts_published_per_sec = published.await.context("alert counter")??;
            let backlog = data::outbox_pending(&ctx.db).await?;
            let (drain_secs, drained) = data::drain_outbox(&ctx.db, Duration::from_secs(120)).await?;
            let end_to_end_per_sec = level.per_second.min(alerts_published_per_sec);
            progress(&format!(
                "(4) CheckIn flagged c={c}: {:.0}/s p50 {:.2} ms p99 {:.2} ms errors {}; alerts published {alerts_published_per_sec:.0}/s; \
                 outbox {backlog} queued at the end, empty after {drain_secs:.1} s",
                level.per_second, level.latency.p50_ms, level.latency.p99_ms, level.errors
            ));
            report.check_in_flagged.push(FlaggedLevel {
                level,
                alerts_published_per_sec,
                end_to_end_per_sec,
                outbox_backlog_at_end: backlog,
                outbox_drain_secs: drain_secs,
                outbox_drained: drained,
            });
        }
        report.footprint_under_flagged_load = Some(sampler.finish().await);
        progress(&format!("    flagged people used so far: {}", flagged_people.used()));
    }
    services.check_alive()?;
    if shape.runs("alerts") {
        meter.phase("(5) alert latency");
        report.alerts = Some(alert_latency(&ctx, flagged_people.clone()).await?);
    }
    services.check_alive()?;
    if shape.runs("streams") {
        meter.phase("(8) idle streams");
        report.streams = Some(idle_streams(&ctx, services).await?);
    }
    services.check_alive()?;
    if shape.runs("bulk") {
        meter.phase("(6) bulk sync");
        report.bulk_sync = bulk_sync(&ctx, services, &[first, working]).await?;
    }
    services.check_alive()?;
    if shape.runs("council-load") {
        meter.phase("(10) check-in under council load");
        report.council_load = Some(council::council_load(&ctx, flagged_people.clone(), &[first, working]).await?);
    }
    services.check_alive()?;
    if shape.runs("scaling") {
        meter.phase("fill register (setup)");
        let t = Instant::now();
        let added = data::fill_register(&ctx.db, &ctx.councils, &ctx.people.filler, shape.large_register).await?;
        data::settle(&ctx.db).await?;
        progress(&format!(
            "filled the register with {added} plans (COPY, setup) in {:.1} s",
            t.elapsed().as_secs_f64()
        ));
        meter.phase("(7) large register");
        let point = scaling_point(&ctx, Flagged::new(&ctx.people.working[half..])).await?;
        report.scaling.push(point);
    }
    services.check_alive()?;
    meter.phase("(9) idle");
    data::drain_outbox(&ctx.db, Duration::from_secs(60)).await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    report.footprint_idle_end = services.rss_kib();
    Ok(())
}

/// (7) at the register's current size: not-flagged and flagged CheckIn at
/// one concurrency.
async fn scaling_point(ctx: &Ctx, people: Arc<Flagged>) -> anyhow::Result<ScalingPoint> {
    let plans_registered: i64 = ctx.db.query_one("SELECT count(*) FROM registry.plans", &[]).await?.get(0);
    let c = ctx.shape.scaling_concurrency;
    let slots = Ctx::slots(c);
    let (warmup, duration) = (ctx.shape.warmup(), ctx.shape.duration());
    let not_flagged = closed_loop(c, warmup, duration, ctx.not_flagged_op(slots)).await;
    let flagged = closed_loop(c, warmup, duration, ctx.flagged_op(slots, people)).await;
    data::drain_outbox(&ctx.db, Duration::from_secs(120)).await?;
    progress(&format!(
        "(7) {plans_registered} plans, c={c}: not flagged p50 {:.2} p99 {:.2} ms; flagged p50 {:.2} p99 {:.2} ms (errors {}+{})",
        not_flagged.latency.p50_ms,
        not_flagged.latency.p99_ms,
        flagged.latency.p50_ms,
        flagged.latency.p99_ms,
        not_flagged.errors,
        flagged.errors
    ));
    Ok(ScalingPoint { plans_registered, not_flagged, flagged })
}

/// Arrival and return times of one episode's check-in and alert.
#[derive(Debug, Default, Clone, Copy)]
struct Track {
    returned: Option<Instant>,
    arrived: Option<Instant>,
}

#[derive(Debug, Default)]
struct AlertCounters {
    received: AtomicU64,
    duplicated: AtomicU64,
    wrong_council: AtomicU64,
    ended_early: AtomicU64,
}

/// (5): a subscriber per council, check-ins at a fixed rate, every alert
/// matched to its check-in by episode id.
async fn alert_latency(ctx: &Ctx, people: Arc<Flagged>) -> anyhow::Result<AlertResult> {
    data::drain_outbox(&ctx.db, Duration::from_secs(120)).await?;
    let latest = ctx.latest_sequences().await?;
    let tracks: Arc<Mutex<HashMap<String, Track>>> = Arc::default();
    let counters = Arc::new(AlertCounters::default());

    // Each council resumes after its latest alert, as its case system would.
    let mut opening = Vec::new();
    for code in &ctx.councils {
        let channel = ctx.net.fresh_channel(ctx.notification_port, &Caller::from_parts(CallerKind::Council, code)?)?;
        let after = latest.get(code).copied().unwrap_or(0);
        let code = code.clone();
        opening.push(async move {
            let mut client = NotificationServiceClient::new(channel);
            let stream = client.subscribe(SubscribeRequest { after_sequence: after, replay: false }).await;
            (code, stream)
        });
    }
    let opened = tokio::time::timeout(Duration::from_secs(60), futures::future::join_all(opening))
        .await
        .context("opening the council subscriptions took over 60 s")?;
    let mut readers = Vec::new();
    for (code, stream) in opened {
        let mut stream = stream.map_err(|s| anyhow::anyhow!("Subscribe as {code}: {}", status_text(&s)))?.into_inner();
        let (tracks, counters) = (tracks.clone(), counters.clone());
        readers.push(tokio::spawn(async move {
            loop {
                match stream.message().await {
                    Ok(Some(msg)) => {
                        let Some(Event::Alert(alert)) = msg.event else { continue };
                        let now = Instant::now();
                        counters.received.fetch_add(1, Ordering::Relaxed);
                        if alert.council_code != code {
                            counters.wrong_council.fetch_add(1, Ordering::Relaxed);
                        }
                        let episode = alert.episode.map(|e| e.episode_id).unwrap_or_default();
                        let Ok(mut tracks) = tracks.lock() else { return };
                        let track = tracks.entry(episode).or_default();
                        if track.arrived.is_some() {
                            counters.duplicated.fetch_add(1, Ordering::Relaxed);
                        } else {
                            track.arrived = Some(now);
                        }
                    }
                    Ok(None) | Err(_) => {
                        counters.ended_early.fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    progress(&format!(
        "(5) {} subscriptions open; checking in {} flagged people a second for {} s",
        readers.len(),
        ctx.shape.alert_rate,
        ctx.shape.alert_secs
    ));

    // Open loop: a check-in every 1/rate seconds, whatever the answers do.
    let total = (ctx.shape.alert_rate * ctx.shape.alert_secs).round() as u64;
    let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / ctx.shape.alert_rate));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut tasks = tokio::task::JoinSet::new();
    let began = Instant::now();
    for n in 0..total {
        ticker.tick().await;
        let (net, port, people, tracks) = (ctx.net.clone(), ctx.attendance_port, people.clone(), tracks.clone());
        tasks.spawn(async move {
            let slot = n as usize % MAX_CONNECTIONS;
            let (nhs, round) = people.take();
            let channel = net.setting(port, slot, round).map_err(|e| e.to_string())?;
            let sent = Instant::now();
            let r = check_in(channel, nhs, slot).await?;
            let returned = Instant::now();
            if !r.flagged || r.episode_id.is_empty() {
                return Err("a registered person was not flagged".to_string());
            }
            let mut tracks = tracks.lock().map_err(|_| "tracker poisoned".to_string())?;
            tracks.entry(r.episode_id).or_default().returned = Some(returned);
            Ok(load::micros(returned - sent))
        });
    }
    let drive_secs = began.elapsed().as_secs_f64();
    let mut result = AlertResult {
        subscribers: readers.len(),
        rate_per_sec: ctx.shape.alert_rate,
        check_ins_sent: total,
        drive_secs,
        ..Default::default()
    };
    let mut check_in_samples = Vec::new();
    let answers = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(joined) = tasks.join_next().await {
            match joined {
                Ok(Ok(us)) => check_in_samples.push(us),
                Ok(Err(e)) => {
                    result.check_ins_failed += 1;
                    result.first_error.get_or_insert(e);
                }
                Err(e) => {
                    result.check_ins_failed += 1;
                    result.first_error.get_or_insert(e.to_string());
                }
            }
        }
    })
    .await;
    if answers.is_err() {
        result.check_ins_failed += tasks.len() as u64;
        result.first_error.get_or_insert("check-ins unanswered 60 s after the last was sent".into());
        tasks.abort_all();
    }
    result.check_in_latency = Latency::of(check_in_samples);

    // Every returned flagged check-in must produce its alert.
    let wait_limit = Duration::from_secs(if ctx.shape.quick { 20 } else { 30 });
    let deadline = Instant::now() + wait_limit;
    loop {
        let missing = {
            let tracks = tracks.lock().map_err(|_| anyhow::anyhow!("tracker poisoned"))?;
            tracks.values().filter(|t| t.returned.is_some() && t.arrived.is_none()).count()
        };
        if missing == 0 || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for r in &readers {
        r.abort();
    }
    let tracks = tracks.lock().map_err(|_| anyhow::anyhow!("tracker poisoned"))?.clone();
    let mut samples = Vec::new();
    for t in tracks.values() {
        match (t.returned, t.arrived) {
            (Some(returned), Some(arrived)) => {
                result.alerts_expected += 1;
                if arrived < returned {
                    result.alerts_before_response += 1;
                }
                samples.push(load::micros(arrived.saturating_duration_since(returned)));
            }
            (Some(_), None) => {
                result.alerts_expected += 1;
                result.alerts_missing += 1;
            }
            (None, Some(_)) => result.alerts_unmatched += 1,
            (None, None) => {}
        }
    }
    result.alerts_received = counters.received.load(Ordering::Relaxed);
    result.alerts_duplicated = counters.duplicated.load(Ordering::Relaxed);
    result.alerts_to_wrong_council = counters.wrong_council.load(Ordering::Relaxed);
    result.streams_ended_early = counters.ended_early.load(Ordering::Relaxed);
    result.latency = Latency::of(samples);
    progress(&format!(
        "(5) alert latency p50 {:.2} p99 {:.2} max {:.2} ms; expected {} received {} missing {}",
        result.latency.p50_ms,
        result.latency.p99_ms,
        result.latency.max_ms,
        result.alerts_expected,
        result.alerts_received,
        result.alerts_missing
    ));
    Ok(result)
}

/// What one idle subscription saw.
#[derive(Debug, Default)]
struct StreamLog {
    heartbeats: Vec<Instant>,
    ended_early: bool,
}

/// (8): many idle subscriptions; the Notification service's RSS before and
/// after opening them, and whether each keeps receiving heartbeats.
async fn idle_streams(ctx: &Ctx, services: &Services) -> anyhow::Result<StreamsResult> {
    let latest = Arc::new(ctx.latest_sequences().await?);
    let n = ctx.shape.streams;
    let mut result = StreamsResult {
        requested: n,
        heartbeat_interval_secs: ctx.shape.heartbeat_secs,
        window_secs: ctx.shape.heartbeat_window_secs,
        ..Default::default()
    };
    // One connection per council identity (its certificate), each carrying
    // that council's share of the streams as HTTP/2 streams. The services
    // cap each caller at 64 requests and streams in flight (limits.rs), so
    // beyond 153 x STREAMS_PER_COUNCIL streams the real councils are joined
    // by synthetic ones with codes in the GSS format (E0699xxxx).
    let identities = n.div_ceil(STREAMS_PER_COUNCIL).max(ctx.councils.len());
    let codes: Vec<String> =
        ctx.councils.iter().cloned().chain((0..).map(|i| format!("E0699{i:04}"))).take(identities).collect();
    let mut channels = Vec::new();
    for code in &codes {
        channels.push(ctx.net.fresh_channel(ctx.notification_port, &Caller::from_parts(CallerKind::Council, code)?)?);
    }
    result.connections = channels.len();
    result.council_identities = codes.len();
    tokio::time::sleep(Duration::from_secs(2)).await;
    result.notification_rss_before_kib = services.notification.rss_kib().unwrap_or(0);

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let t = Instant::now();
    let opens = futures::stream::iter((0..n).map(|i| {
        let council = i % codes.len();
        let code = codes[council].clone();
        let channel = channels[council].clone();
        let after = latest.get(&code).copied().unwrap_or(0);
        let mut stop = stop_rx.clone();
        async move {
            let mut client = NotificationServiceClient::new(channel);
            let mut stream = client
                .subscribe(SubscribeRequest { after_sequence: after, replay: false })
                .await
                .map_err(|s| status_text(&s))?
                .into_inner();
            Ok::<_, String>(tokio::spawn(async move {
                let mut log = StreamLog::default();
                loop {
                    tokio::select! {
                        _ = stop.changed() => return log,
                        msg = stream.message() => match msg {
                            Ok(Some(m)) => {
                                if let Some(Event::Heartbeat(_)) = m.event {
                                    log.heartbeats.push(Instant::now());
                                }
                            }
                            Ok(None) | Err(_) => {
                                log.ended_early = true;
                                return log;
                            }
                        },
                    }
                }
            }))
        }
    }));
    use futures::StreamExt as _;
    let opened: Vec<Result<_, String>> =
        tokio::time::timeout(Duration::from_secs(120), opens.buffer_unordered(256).collect::<Vec<_>>())
            .await
            .context("opening the idle subscriptions took over 120 s")?;
    result.open_secs = t.elapsed().as_secs_f64();
    let mut readers = Vec::new();
    for o in opened {
        match o {
            Ok(handle) => readers.push(handle),
            Err(e) => {
                result.open_failures += 1;
                result.first_error.get_or_insert(e);
            }
        }
    }
    result.opened = readers.len();
    progress(&format!(
        "(8) {} subscriptions open in {:.1} s over {} connections",
        result.opened,
        result.open_secs,
        channels.len()
    ));

    // Settle: every stream has had time for a heartbeat or two.
    tokio::time::sleep(Duration::from_secs((2 * ctx.shape.heartbeat_secs).max(3))).await;
    result.notification_rss_open_kib = services.notification.rss_kib().unwrap_or(0);
    let window_start = Instant::now();
    tokio::time::sleep(Duration::from_secs_f64(ctx.shape.heartbeat_window_secs)).await;
    let window_end = Instant::now();
    result.notification_rss_after_window_kib = services.notification.rss_kib().unwrap_or(0);
    let _ = stop_tx.send(true);
    let mut counts = Vec::new();
    let mut gaps = Vec::new();
    for r in readers {
        let Ok(log) = r.await else { continue };
        if log.ended_early {
            result.streams_ended_early += 1;
        }
        let inside: Vec<Instant> =
            log.heartbeats.into_iter().filter(|&h| h >= window_start && h <= window_end).collect();
        if !inside.is_empty() {
            result.streams_with_heartbeat += 1;
        }
        counts.push(inside.len());
        let mut last = window_start;
        let mut longest = Duration::ZERO;
        for h in inside.iter().copied().chain([window_end]) {
            longest = longest.max(h - last);
            last = h;
        }
        gaps.push(load::micros(longest));
    }
    drop(channels);
    counts.sort_unstable();
    result.heartbeats_min_per_stream = counts.first().copied().unwrap_or(0);
    result.heartbeats_median_per_stream = counts.get(counts.len() / 2).copied().unwrap_or(0);
    result.longest_gap = Latency::of(gaps);
    let grown = result.notification_rss_open_kib.saturating_sub(result.notification_rss_before_kib);
    result.bytes_per_stream = if result.opened > 0 { grown as f64 * 1024.0 / result.opened as f64 } else { 0.0 };
    tokio::time::sleep(Duration::from_secs(3)).await;
    result.notification_rss_after_close_kib = services.notification.rss_kib().unwrap_or(0);
    progress(&format!(
        "(8) {:.0} bytes per idle stream; {} of {} streams had heartbeats (min {} per stream, longest gap {:.0} ms)",
        result.bytes_per_stream,
        result.streams_with_heartbeat,
        result.opened,
        result.heartbeats_min_per_stream,
        result.longest_gap.max_ms
    ));
    Ok(result)
}

/// (6): the bulk council's complete list, national size, twice: first
/// upload (its few existing plans unchanged, the rest created), then the
/// same list again (all unchanged: the routine re-send).
async fn bulk_sync(ctx: &Ctx, services: &Services, registered: &[Segment<'_>]) -> anyhow::Result<Vec<BulkPass>> {
    let council = ctx.councils.iter().position(|c| c == BULK_COUNCIL).context("the bulk council is not listed")?;
    let existing = data::council_plans(council, ctx.councils.len(), registered);
    let new = ctx.shape.bulk_rows.saturating_sub(existing.len());
    let bulk: Arc<Vec<String>> = Arc::new(ctx.people.bulk[..new].to_vec());
    let channel = ctx.net.council(ctx.registry_port, BULK_COUNCIL)?;
    let mut passes = Vec::new();
    for pass in ["first upload", "re-send"] {
        let bulk = bulk.clone();
        let plans = existing
            .clone()
            .into_iter()
            .chain((0..new).map(move |j| data::plan(format!("KNT-BULK-{j:07}"), bulk[j].clone(), j)));
        let registry = &services.registry;
        let registry_rss_before_kib = registry.rss_kib().unwrap_or(0);
        let reset = registry.reset_peak();
        let sampler = RssSampler::start(services, Duration::from_millis(50));
        let t = Instant::now();
        let r = tokio::time::timeout(Duration::from_secs(600), data::sync(channel.clone(), plans))
            .await
            .context("the bulk SyncPlans took over 600 s")??;
        let seconds = t.elapsed().as_secs_f64();
        let peak = sampler.finish().await;
        let rows = existing.len() + new;
        let result = BulkPass {
            pass,
            rows,
            seconds,
            plans_per_sec: rows as f64 / seconds,
            created: r.created,
            updated: r.updated,
            unchanged: r.unchanged,
            ended: r.ended,
            registry_rss_before_kib,
            registry_rss_peak_sampled_kib: peak.registry_kib,
            registry_rss_peak_hwm_kib: if reset { registry.peak_kib().unwrap_or(0) } else { 0 },
        };
        progress(&format!(
            "(6) {pass}: {rows} plans in {seconds:.1} s = {:.0}/s (created {}, unchanged {}); registry peak RSS {:.1} MB",
            result.plans_per_sec,
            r.created,
            r.unchanged,
            mb(result.registry_rss_peak_hwm_kib.max(result.registry_rss_peak_sampled_kib))
        ));
        passes.push(result);
        data::settle(&ctx.db).await?;
    }
    Ok(passes)
}

fn goals(r: &Report) -> Vec<Goal> {
    let mut goals = Vec::new();
    let fw = peak(&r.framework_ceiling).map(|l| l.per_second);
    let dbc = peak(&r.database_ceiling).map(|l| l.per_second);
    let nf = peak(&r.check_in_not_flagged).map(|l| l.per_second);
    let fl = r.check_in_flagged.iter().map(|f| f.end_to_end_per_sec).max_by(f64::total_cmp);
    if let (Some(nf), Some(fw)) = (nf, fw) {
        let ratio = nf / fw;
        goals.push(Goal {
            figure: "(3) CheckIn not flagged / (1) framework ceiling",
            goal: ">= 50%",
            measured: format!("{:.0}% ({nf:.0}/s of {fw:.0}/s, best levels)", ratio * 100.0),
            met: Some(ratio >= 0.5),
        });
    }
    if let (Some(fl), Some(dbc)) = (fl, dbc) {
        let ratio = fl / dbc;
        goals.push(Goal {
            figure: "(4) CheckIn flagged / (2) database ceiling",
            goal: ">= 25%",
            measured: format!(
                "{:.0}% ({fl:.0}/s of {dbc:.0}/s, best levels; end to end: check-ins and their alerts)",
                ratio * 100.0
            ),
            met: Some(ratio >= 0.25),
        });
    }
    if let Some(a) = &r.alerts {
        goals.push(Goal {
            figure: "(5) alert latency at the fixed rate",
            goal: "p99 < 20 ms, 0 missing",
            measured: format!(
                "p99 {:.1} ms at {:.0}/s, {} missing of {}",
                a.latency.p99_ms, a.rate_per_sec, a.alerts_missing, a.alerts_expected
            ),
            met: Some(a.latency.p99_ms < 20.0 && a.alerts_missing == 0 && a.alerts_expected > 0),
        });
    }
    if let Some(first) = r.bulk_sync.first() {
        let peak_kib = r
            .bulk_sync
            .iter()
            .map(|p| p.registry_rss_peak_hwm_kib.max(p.registry_rss_peak_sampled_kib))
            .max()
            .unwrap_or(0);
        let slowest = r.bulk_sync.iter().map(|p| p.plans_per_sec).fold(f64::INFINITY, f64::min);
        goals.push(Goal {
            figure: "(6) bulk SyncPlans",
            goal: ">= 20,000 plans/s, registry RSS < 200 MB",
            measured: format!(
                "{:.0} plans/s first upload, {:.0}/s re-send ({} rows); registry peak {:.0} MB",
                first.plans_per_sec,
                r.bulk_sync.get(1).map_or(0.0, |p| p.plans_per_sec),
                first.rows,
                mb(peak_kib)
            ),
            met: Some(slowest >= 20_000.0 && mb(peak_kib) < 200.0),
        });
    }
    if let [small, large] = r.scaling.as_slice() {
        let nf = large.not_flagged.latency.p99_ms / small.not_flagged.latency.p99_ms;
        let fl = large.flagged.latency.p99_ms / small.flagged.latency.p99_ms;
        goals.push(Goal {
            figure: "(7) CheckIn p99, large / small register",
            goal: "<= 1.2x",
            measured: format!(
                "{} vs {} plans: not flagged {nf:.2}x ({:.2} vs {:.2} ms), flagged {fl:.2}x ({:.2} vs {:.2} ms)",
                large.plans_registered,
                small.plans_registered,
                large.not_flagged.latency.p99_ms,
                small.not_flagged.latency.p99_ms,
                large.flagged.latency.p99_ms,
                small.flagged.latency.p99_ms
            ),
            met: Some(nf <= 1.2 && fl <= 1.2),
        });
    }
    if let Some(s) = &r.streams {
        goals.push(Goal {
            figure: "(8) memory per idle subscription",
            goal: "< 20 KB",
            measured: format!(
                "{:.1} KB with {} open; heartbeats on {} of {}",
                s.bytes_per_stream / 1000.0,
                s.opened,
                s.streams_with_heartbeat,
                s.opened
            ),
            met: Some(s.bytes_per_stream < 20_000.0 && s.opened == s.requested),
        });
    }
    if let Some(c) = &r.council_load {
        goals.push(council::goal(c));
    }
    let idle = r.footprint_idle_start;
    goals.push(Goal {
        figure: "(9) RSS of each service, idle",
        goal: "< 30 MB each",
        measured: format!(
            "registry {:.1}, attendance {:.1}, notification {:.1} MB",
            mb(idle.registry_kib),
            mb(idle.attendance_kib),
            mb(idle.notification_kib)
        ),
        met: Some([idle.registry_kib, idle.attendance_kib, idle.notification_kib].iter().all(|&k| mb(k) < 30.0)),
    });
    goals
}

fn print_levels(title: &str, levels: &[LevelResult], ceiling: Option<(&str, &[LevelResult])>) {
    if levels.is_empty() {
        return;
    }
    println!("\n{title}");
    println!(
        "  {:>5} {:>10} {:>9} {:>9} {:>9} {:>9} {:>9} {:>7} {:>12}",
        "conc", "per sec", "p50 ms", "p90 ms", "p99 ms", "p99.9 ms", "max ms", "errors", "vs ceiling"
    );
    for l in levels {
        let vs = ceiling
            .and_then(|(name, c)| c.iter().find(|x| x.concurrency == l.concurrency).map(|x| (name, x)))
            .filter(|(_, x)| x.per_second > 0.0)
            .map(|(name, x)| format!("{:.0}% of {name}", 100.0 * l.per_second / x.per_second))
            .unwrap_or_default();
        println!(
            "  {:>5} {:>10.0} {:>9.2} {:>9.2} {:>9.2} {:>9.2} {:>9.2} {:>7} {:>12}",
            l.concurrency,
            l.per_second,
            l.latency.p50_ms,
            l.latency.p90_ms,
            l.latency.p99_ms,
            l.latency.p999_ms,
            l.latency.max_ms,
            l.errors,
            vs
        );
        if let Some(e) = &l.first_error {
            println!("        first error: {e}");
        }
    }
}

fn print_report(r: &Report) {
    let m = &r.machine;
    println!(
        "\ncpis bench {} ({} build{}): {} CPUs ({}), {:.1} GiB RAM, PostgreSQL {} (default settings), {:.0} s",
        r.version,
        r.build,
        if r.shape.as_ref().is_some_and(|s| s.quick) { ", --quick" } else { "" },
        m.cpus,
        m.cpu_model,
        m.memory_total_kib as f64 / 1024.0 / 1024.0,
        m.postgres,
        r.seconds_total
    );
    print_levels("(1) framework ceiling: grpc.health.v1.Health/Check over mutual TLS", &r.framework_ceiling, None);
    print_levels("(2) database ceiling: durable single-row INSERT through the pool", &r.database_ceiling, None);
    print_levels(
        "(2b) the same INSERT sent as SQL text (tokio-postgres prepares it anew on every call)",
        &r.database_unprepared,
        Some(("(2)", r.database_ceiling.as_slice())),
    );
    print_levels("(3) CheckIn, not flagged", &r.check_in_not_flagged, Some(("(1)", r.framework_ceiling.as_slice())));
    let flagged: Vec<LevelResult> = r.check_in_flagged.iter().map(|f| f.level.clone()).collect();
    print_levels(
        "(4) CheckIn, flagged (lookup + episode + audit + outbox; relay + publish after)",
        &flagged,
        Some(("(2)", r.database_ceiling.as_slice())),
    );
    for f in &r.check_in_flagged {
        println!(
            "        c={}: alerts published {:.0}/s in the window, end to end {:.0}/s ({:.0}% of (2)); \
             outbox held {} when the window closed, empty {:.1} s later{}",
            f.level.concurrency,
            f.alerts_published_per_sec,
            f.end_to_end_per_sec,
            r.database_ceiling
                .iter()
                .find(|d| d.concurrency == f.level.concurrency && d.per_second > 0.0)
                .map_or(0.0, |d| 100.0 * f.end_to_end_per_sec / d.per_second),
            f.outbox_backlog_at_end,
            f.outbox_drain_secs,
            if f.outbox_drained { "" } else { " (NOT drained)" }
        );
    }
    if let Some(a) = &r.alerts {
        println!(
            "\n(5) alert latency, {} subscribers, {:.0} check-ins/s for {:.0} s",
            a.subscribers, a.rate_per_sec, a.drive_secs
        );
        println!(
            "  CheckIn return -> alert on the stream: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms ({} alerts)",
            a.latency.p50_ms, a.latency.p99_ms, a.latency.max_ms, a.latency.samples
        );
        println!(
            "  expected {}, received {}, MISSING {}, duplicated {}, wrong council {}, before the answer {}, failed check-ins {}",
            a.alerts_expected,
            a.alerts_received,
            a.alerts_missing,
            a.alerts_duplicated,
            a.alerts_to_wrong_council,
            a.alerts_before_response,
            a.check_ins_failed
        );
        println!(
            "  CheckIn latency at this rate: p50 {:.2} ms, p99 {:.2} ms",
            a.check_in_latency.p50_ms, a.check_in_latency.p99_ms
        );
    }
    if !r.bulk_sync.is_empty() {
        println!("\n(6) bulk SyncPlans, one council ({BULK_COUNCIL})");
        for p in &r.bulk_sync {
            println!(
                "  {:<13} {:>7} rows in {:>6.1} s = {:>7.0} plans/s; registry RSS {:.1} MB before, peak {:.1} MB (sampled {:.1})",
                p.pass,
                p.rows,
                p.seconds,
                p.plans_per_sec,
                mb(p.registry_rss_before_kib),
                mb(p.registry_rss_peak_hwm_kib),
                mb(p.registry_rss_peak_sampled_kib)
            );
        }
    }
    if let Some(c) = &r.council_load {
        council::print(c);
    }
    if !r.scaling.is_empty() {
        println!("\n(7) scaling: CheckIn latency by register size");
        for s in &r.scaling {
            println!(
                "  {:>8} plans, c={}: not flagged p50 {:.2} p99 {:.2} ms ({:.0}/s); flagged p50 {:.2} p99 {:.2} ms ({:.0}/s)",
                s.plans_registered,
                s.not_flagged.concurrency,
                s.not_flagged.latency.p50_ms,
                s.not_flagged.latency.p99_ms,
                s.not_flagged.per_second,
                s.flagged.latency.p50_ms,
                s.flagged.latency.p99_ms,
                s.flagged.per_second
            );
        }
    }
    if let Some(s) = &r.streams {
        println!(
            "\n(8) idle subscriptions: {} requested, {} open in {:.1} s over {} connections (one per council identity){}",
            s.requested,
            s.opened,
            s.open_secs,
            s.connections,
            s.first_error.as_deref().map(|e| format!("; first failure: {e}")).unwrap_or_default()
        );
        println!(
            "  notification RSS {:.1} MB before, {:.1} MB open ({:.1} KB per stream), {:.1} MB after {:.0} s, {:.1} MB after closing",
            mb(s.notification_rss_before_kib),
            mb(s.notification_rss_open_kib),
            s.bytes_per_stream / 1000.0,
            mb(s.notification_rss_after_window_kib),
            s.window_secs,
            mb(s.notification_rss_after_close_kib)
        );
        println!(
            "  heartbeat every {} s: {} of {} streams got heartbeats in the {:.0} s window (min {}, median {} each); longest silence p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
            s.heartbeat_interval_secs,
            s.streams_with_heartbeat,
            s.opened,
            s.window_secs,
            s.heartbeats_min_per_stream,
            s.heartbeats_median_per_stream,
            s.longest_gap.p50_ms,
            s.longest_gap.p99_ms,
            s.longest_gap.max_ms
        );
    }
    println!("\n(9) footprint: RSS of each service process, MB");
    let row = |name: &str, x: Rss| {
        println!(
            "  {name:<28} registry {:>6.1}   attendance {:>6.1}   notification {:>6.1}",
            mb(x.registry_kib),
            mb(x.attendance_kib),
            mb(x.notification_kib)
        )
    };
    row("idle, at start", r.footprint_idle_start);
    if let Some(x) = r.footprint_under_flagged_load {
        row("peak under load (4)", x);
    }
    row("idle, at the end", r.footprint_idle_end);
    row("peak over the whole run", r.footprint_peak_over_run);

    if !r.cpu.is_empty() {
        println!("\nCPU by phase, % of the machine ({} CPUs): this run's processes vs everything else (noise)", m.cpus);
        for p in &r.cpu {
            println!(
                "  {:<26} {:>6.0} s   busy {:>5.1}%   ours {:>5.1}%   others {:>5.1}%",
                p.phase, p.share.seconds, p.share.busy_pct, p.share.ours_pct, p.share.others_pct
            );
        }
    }

    println!(
        "\nGoals (issue 7){}",
        if r.shape.as_ref().is_some_and(|s| s.quick) { ": a --quick run is too small to judge them" } else { "" }
    );
    for g in &r.goals {
        let status = match g.met {
            Some(true) => "met",
            Some(false) => "MISSED",
            None => "-",
        };
        println!("  {:<50} {:<42} {:<7} {}", g.figure, g.goal, status, g.measured);
    }
}
