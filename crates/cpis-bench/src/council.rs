//! (11) check-in under council load (issue 13): CheckIn latency at a fixed rate (flagged
//! and not), first with the Registry idle, then while one council uploads a
//! national-size list through `SyncPlans` and another sends 64 concurrent
//! upserts. The goal is that council traffic never slows a check-in much:
//! p99 under load at most twice the idle p99.

use super::data::{self, Segment};
use super::load::{micros, Latency};
use super::net::{self, check_in, Flagged};
use super::{progress, Ctx};
use anyhow::Context as _;
use cpis_proto::registry::v1::{registry_service_client::RegistryServiceClient, UpsertPlanRequest};
use serde::Serialize;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The council whose list is uploaded under load (Liverpool).
const SYNC_COUNCIL: &str = "E08000012";
/// The council sending the concurrent upserts (Manchester).
const UPSERT_COUNCIL: &str = "E08000003";
/// Concurrent upserts: a council's whole per-caller allowance.
const UPSERTS: usize = 64;

/// Check-in latency of one window.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Window {
    /// Seconds of check-ins.
    pub seconds: f64,
    /// Flagged check-ins.
    pub flagged: Latency,
    /// Check-ins of people not registered.
    pub not_flagged: Latency,
    /// Failed check-ins (any status, or a wrong answer).
    pub errors: u64,
    /// The first failure, if any.
    pub first_error: Option<String>,
}

/// What (11) measured.
#[derive(Debug, Clone, Serialize)]
pub struct CouncilLoadResult {
    /// Check-ins per second in both windows (half flagged).
    pub rate_per_sec: f64,
    /// With the Registry otherwise idle.
    pub idle: Window,
    /// While the upload and the upserts run.
    pub under_load: Window,
    /// Rows of the upload.
    pub sync_rows: usize,
    /// How long the upload took, streaming and applying.
    pub sync_seconds: f64,
    /// Upserts that succeeded / were refused (RESOURCE_EXHAUSTED and the like) during the load.
    pub upserts_ok: u64,
    /// Upserts refused.
    pub upserts_refused: u64,
}

/// Check-ins at `rate` until `until` says stop (checked before each one).
async fn check_ins(ctx: &Ctx, people: &Arc<Flagged>, rate: f64, until: impl Fn() -> bool) -> Window {
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let started = Instant::now();
    let mut calls = Vec::new();
    let mut k = 0usize;
    while !until() {
        tick.tick().await;
        let flagged = k.is_multiple_of(2);
        let (nhs, round) =
            if flagged { people.take() } else { (ctx.unregistered[k / 2 % ctx.unregistered.len()].clone(), 0) };
        let channel = ctx.net.setting(ctx.attendance_port, k % super::MAX_CONNECTIONS, round);
        k += 1;
        calls.push(tokio::spawn(async move {
            let t = Instant::now();
            let answer = match channel {
                Ok(channel) => check_in(channel, nhs).await,
                Err(e) => Err(e.to_string()),
            };
            let took = t.elapsed();
            let result = match answer {
                Ok(r) if r.flagged == flagged => Ok(()),
                Ok(r) => Err(format!("flagged {} where {flagged} was expected", r.flagged)),
                Err(e) => Err(e),
            };
            (flagged, took, result)
        }));
    }
    let seconds = started.elapsed().as_secs_f64();
    let (mut fl, mut nf, mut errors, mut first_error) = (Vec::new(), Vec::new(), 0, None);
    for call in calls {
        match call.await {
            Ok((flagged, took, Ok(()))) => (if flagged { &mut fl } else { &mut nf }).push(micros(took)),
            Ok((_, _, Err(e))) => {
                errors += 1;
                first_error.get_or_insert(e);
            }
            Err(e) => {
                errors += 1;
                first_error.get_or_insert(format!("task: {e}"));
            }
        }
    }
    Window { seconds, flagged: Latency::of(fl), not_flagged: Latency::of(nf), errors, first_error }
}

/// Runs (11). `registered` is what the councils hold already, so that the
/// upload is the sync council's complete list (it ends nothing).
pub async fn council_load(
    ctx: &Ctx,
    people: Arc<Flagged>,
    registered: &[Segment<'_>],
) -> anyhow::Result<CouncilLoadResult> {
    let quick = ctx.shape.quick;
    let rate = if quick { 40.0 } else { 100.0 };
    let idle_secs = if quick { 3.0 } else { 10.0 };

    let t = Instant::now();
    let idle = check_ins(ctx, &people, rate, || t.elapsed().as_secs_f64() >= idle_secs).await;
    report_window("idle", &idle);

    // The upload: the council's complete list, plus new plans up to the bulk size.
    let council = ctx.councils.iter().position(|c| c == SYNC_COUNCIL).context("the sync council is not listed")?;
    let existing = data::council_plans(council, ctx.councils.len(), registered);
    let new = ctx.shape.bulk_rows.saturating_sub(existing.len());
    let bulk: Arc<Vec<String>> = Arc::new(ctx.people.bulk[..new].to_vec());
    let rows = existing.len() + new;
    let plans =
        existing.into_iter().chain((0..new).map(move |j| data::plan(format!("LPL-LOAD-{j:07}"), bulk[j].clone(), j)));
    let channel = ctx.net.council(ctx.registry_port, SYNC_COUNCIL)?;
    let done = Arc::new(AtomicBool::new(false));
    let sync_started = Instant::now();
    let sync = {
        let done = done.clone();
        tokio::spawn(async move {
            let r = tokio::time::timeout(Duration::from_secs(600), data::sync(channel, plans)).await;
            done.store(true, Ordering::Relaxed);
            r
        })
    };

    // 64 concurrent upserts of another council (its own connection, so that
    // HTTP/2 flow control of the upload does not pace them).
    let (ok, refused) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let mut upserters = Vec::new();
    let upsert_channel = ctx.net.fresh_channel(ctx.registry_port, &net::council(UPSERT_COUNCIL)?)?;
    for w in 0..UPSERTS {
        let (done, ok, refused) = (done.clone(), ok.clone(), refused.clone());
        let mut client = RegistryServiceClient::new(upsert_channel.clone());
        let nhs: Vec<String> = ctx.people.bulk.iter().skip(w).step_by(UPSERTS).take(50).cloned().collect();
        upserters.push(tokio::spawn(async move {
            let mut n = 0usize;
            while !done.load(Ordering::Relaxed) && !nhs.is_empty() {
                // Cycles 50 plans per worker: creates first, then real updates.
                let mut p = data::plan(format!("MCR-UPS-{w:02}-{:02}", n % nhs.len()), nhs[n % nhs.len()].clone(), n);
                if let Some(c) = p.contact.as_mut() {
                    c.team_name = format!("Front Door {}", n / nhs.len());
                }
                n += 1;
                let mut request = tonic::Request::new(UpsertPlanRequest { plan: Some(p), expected_version: 0 });
                request.set_timeout(Duration::from_secs(10));
                match client.upsert_plan(request).await {
                    Ok(_) => ok.fetch_add(1, Ordering::Relaxed),
                    Err(_) => refused.fetch_add(1, Ordering::Relaxed),
                };
            }
        }));
    }

    // --perf: 8 s from the second second under load (the upload lasts about 13 s).
    let recording =
        ctx.profiler.as_ref().map(|p| p.window("council-load", Duration::from_secs(1), Duration::from_secs(8)));
    let under_load = check_ins(ctx, &people, rate, || done.load(Ordering::Relaxed)).await;
    if let Some(recording) = recording {
        let _ = recording.await;
    }
    let synced = sync.await.context("the upload task")?.context("the upload took over 600 s")??;
    let sync_seconds = sync_started.elapsed().as_secs_f64();
    for u in upserters {
        u.await.context("an upsert worker")?;
    }
    report_window("under council load", &under_load);
    let (upserts_ok, upserts_refused) = (ok.load(Ordering::Relaxed), refused.load(Ordering::Relaxed));
    progress(&format!(
        "(11) upload of {rows} rows in {sync_seconds:.1} s (created {}, unchanged {}, ended {}); \
         upserts {upserts_ok} ok, {upserts_refused} refused",
        synced.created, synced.unchanged, synced.ended
    ));
    data::settle(&ctx.db).await?;
    Ok(CouncilLoadResult {
        rate_per_sec: rate,
        idle,
        under_load,
        sync_rows: rows,
        sync_seconds,
        upserts_ok,
        upserts_refused,
    })
}

fn report_window(label: &str, w: &Window) {
    progress(&format!(
        "(11) CheckIn {label}: flagged p50 {:.2} p99 {:.2} ms, not flagged p50 {:.2} p99 {:.2} ms, {} errors{}",
        w.flagged.p50_ms,
        w.flagged.p99_ms,
        w.not_flagged.p50_ms,
        w.not_flagged.p99_ms,
        w.errors,
        w.first_error.as_deref().map(|e| format!(" (first: {e})")).unwrap_or_default()
    ));
}

/// The printed section of the report.
pub fn print(r: &CouncilLoadResult) {
    println!(
        "\n(11) CheckIn under council load: {:.0}/s (half flagged); a {}-row SyncPlans ({:.1} s) and {UPSERTS} \
         concurrent upserts ({} ok, {} refused)",
        r.rate_per_sec, r.sync_rows, r.sync_seconds, r.upserts_ok, r.upserts_refused
    );
    for (label, w) in [("idle", &r.idle), ("under load", &r.under_load)] {
        println!(
            "  {label:<11} flagged p50 {:>7.2} p99 {:>7.2} max {:>7.2} ms ({} ok); not flagged p50 {:>7.2} p99 {:>7.2} \
             max {:>7.2} ms ({} ok); errors {}",
            w.flagged.p50_ms,
            w.flagged.p99_ms,
            w.flagged.max_ms,
            w.flagged.samples,
            w.not_flagged.p50_ms,
            w.not_flagged.p99_ms,
            w.not_flagged.max_ms,
            w.not_flagged.samples,
            w.errors
        );
        if let Some(e) = &w.first_error {
            println!("        first error: {e}");
        }
    }
}
