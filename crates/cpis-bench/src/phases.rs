//! The run's phases in order, sharing one register: the idle footprint,
//! the small register's scaling point, the ceilings, CheckIn (not flagged,
//! flagged), alert latency, idle streams, bulk sync, council load, and the
//! large register's scaling point.

use super::data::{self, People, PeopleSizes, Segment};
use super::load::closed_loop;
use super::net::{self, Flagged, Net};
use super::procs::{RssSampler, Services};
use super::report::{FlaggedLevel, Report, ScalingPoint};
use super::{alerts, bulk, council, cpu::CpuMeter, levels, progress, streams, Ctx, Shape};
use anyhow::Context as _;
use cpis_devkit::pki::Pki;
use std::sync::Arc;
use std::time::{Duration, Instant};

// The run's parts, each handed once to the phases' shared context.
#[allow(clippy::too_many_arguments)]
pub async fn measure(
    shape: &Shape,
    services: &mut Services,
    pki: Pki,
    trust_domain: String,
    database_url: String,
    profiler: Option<super::profile::Profiler>,
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
        net: Arc::new(Net::new(pki, trust_domain)),
        registry_port: services.registry.port,
        attendance_port: services.attendance.port,
        notification_port: services.notification.port,
        db,
        database_url,
        councils: data::councils(),
        unregistered: Arc::new(people.unregistered.clone()),
        people,
        profiler,
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
        report.framework_ceiling = levels(&ctx, "(1) Health/Check", None, |c| {
            net::health_op(ctx.net.clone(), ctx.attendance_port, net::slots(c))
        })
        .await;
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
        report.database_ceiling = levels(&ctx, "(2) durable INSERT", None, |_| net::db_op(pool.clone(), true)).await;
        report.database_unprepared =
            levels(&ctx, "(2b) same, unprepared", None, |_| net::db_op(pool.clone(), false)).await;
        ctx.db.batch_execute("DROP TABLE bench.scratch; CHECKPOINT").await?;
    }
    services.check_alive()?;
    if shape.runs("not-flagged") {
        meter.phase("(3) CheckIn not flagged");
        report.check_in_not_flagged =
            levels(&ctx, "(3) CheckIn not flagged", Some("not-flagged"), |c| ctx.not_flagged_op(net::slots(c))).await;
    }
    if shape.runs("flagged") {
        meter.phase("(4) CheckIn flagged");
        let sampler = RssSampler::start(services, Duration::from_millis(100));
        for (i, &c) in shape.levels.iter().enumerate() {
            let recording = match &ctx.profiler {
                Some(p) if i + 1 == shape.levels.len() => Some(p.window("flagged", shape.warmup(), shape.duration())),
                _ => None,
            };
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
                closed_loop(c, shape.warmup(), shape.duration(), ctx.flagged_op(net::slots(c), flagged_people.clone()))
                    .await;
            let alerts_published_per_sec = published.await.context("alert counter")??;
            if let Some(recording) = recording {
                let _ = recording.await;
            }
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
        // (5) measures latency at a fixed rate, not what the phases before it
        // left behind: the database is settled first (their dead rows
        // vacuumed, statistics current, dirty pages written), as (12) does
        // between replays.
        meter.phase("settle");
        data::settle(&ctx.db).await?;
        meter.phase("(5) alert latency");
        // The middle of the fixed-rate window (subscriptions open first).
        let recording = ctx.profiler.as_ref().map(|p| {
            let length = (shape.alert_secs - 6.0).clamp(1.0, 10.0);
            p.window("alerts", Duration::from_secs(4), Duration::from_secs_f64(length))
        });
        report.alerts = Some(alerts::alert_latency(&ctx, flagged_people.clone()).await?);
        if let Some(recording) = recording {
            let _ = recording.await;
        }
    }
    services.check_alive()?;
    if shape.runs("streams") {
        meter.phase("(8) idle streams");
        let idle_kib = report.footprint_idle_start.notification_kib;
        report.streams = Some(streams::idle_streams(&ctx, services, idle_kib).await?);
    }
    services.check_alive()?;
    if shape.runs("bulk") {
        meter.phase("(6) bulk sync");
        let (copy, passes) = bulk::bulk_sync(&ctx, services, &[first, working]).await?;
        report.bulk_copy_ceiling = Some(copy);
        report.bulk_sync = passes;
    }
    services.check_alive()?;
    if shape.runs("council-load") {
        meter.phase("(11) council load");
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
    if let Some(p) = &ctx.profiler {
        p.finish();
    }
    Ok(())
}

/// (7) at the register's current size: not-flagged and flagged CheckIn at
/// one concurrency (with `--perf`, the not-flagged window is profiled).
pub async fn scaling_point(ctx: &Ctx, people: Arc<Flagged>) -> anyhow::Result<ScalingPoint> {
    let plans_registered = cpis_registry::seed::plan_count(&ctx.db).await?;
    let c = ctx.shape.scaling_concurrency;
    let slots = net::slots(c);
    let (warmup, duration) = (ctx.shape.warmup(), ctx.shape.duration());
    // --perf: the not-flagged window at each size, to compare the two.
    let recording = ctx.profiler.as_ref().map(|p| p.window(&format!("scaling-{plans_registered}"), warmup, duration));
    let not_flagged = closed_loop(c, warmup, duration, ctx.not_flagged_op(slots)).await;
    if let Some(recording) = recording {
        let _ = recording.await;
    }
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
