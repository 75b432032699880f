//! The printed report: every figure per level, then the goals.

use super::bulk::BULK_COUNCIL;
use super::load::LevelResult;
use super::procs::Rss;
use super::report::{mb, Report, StreamsResult};
use super::streams::STREAM_QUERIES_METRIC;

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

pub fn print_report(r: &Report) {
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
        if let Some(c) = &r.bulk_copy_ceiling {
            println!(
                "  ceiling: plain COPY of the same {} rows into a table like registry.plans: {:.1} s = {:.0} rows/s",
                c.rows, c.seconds, c.rows_per_sec
            );
        }
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
        super::council::print(c);
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
        print_streams(s);
    }
    if let Some(d) = &r.national_day {
        super::headroom::print(d);
    }
    println!("\n(9) footprint: RSS of each service process, MB");
    let row = |name: &str, x: Rss| {
        if x.registry_kib + x.attendance_kib + x.notification_kib == 0 {
            return; // not read in this run
        }
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
        "\nGoals (issue 17){}",
        if r.shape.as_ref().is_some_and(|s| s.quick) { ": a --quick run is too small to judge them" } else { "" }
    );
    for g in &r.goals {
        let status = match g.met {
            Some(true) => "met",
            Some(false) => "MISSED",
            None => "n/a",
        };
        println!("  {:<50} {:<42} {:<7} {}", g.figure, g.goal, status, g.measured);
    }
}

fn print_streams(s: &StreamsResult) {
    println!(
        "\n(8) idle subscriptions: {} per round over {} connections (one per council identity), heartbeat every {} s",
        s.requested, s.connections, s.heartbeat_interval_secs
    );
    for (i, round) in s.rounds.iter().enumerate() {
        println!(
            "  round {}: {} open in {:.1} s{}; notification RSS {:.1} MB before, {:.1} MB open, peak {:.1} MB, {:.1} MB after closing",
            i + 1,
            round.opened,
            round.open_secs,
            round.first_error.as_deref().map(|e| format!(" (first failure: {e})")).unwrap_or_default(),
            mb(round.notification_rss_before_kib),
            mb(round.notification_rss_open_kib),
            mb(round.notification_rss_peak_kib),
            mb(round.notification_rss_after_close_kib)
        );
    }
    println!(
        "  {:.1} KB per stream; {} of {} streams got heartbeats in the {:.0} s window (min {}, median {} each), {} late \
         (silence over 110% of the interval); longest silence p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
        s.bytes_per_stream / 1000.0,
        s.streams_with_heartbeat,
        s.rounds.first().map_or(0, |r| r.opened),
        s.window_secs,
        s.heartbeats_min_per_stream,
        s.heartbeats_median_per_stream,
        s.streams_late,
        s.longest_gap.p50_ms,
        s.longest_gap.p99_ms,
        s.longest_gap.max_ms
    );
    match s.db_queries_in_window {
        Some(q) => println!(
            "  database queries for streams in the window ({STREAM_QUERIES_METRIC}): {q:.0}, {:.3} per heartbeat; \
             safety polls (one per instance for all councils) {:.0}",
            s.db_queries_per_heartbeat.unwrap_or(0.0),
            s.db_safety_polls_in_window.unwrap_or(0.0)
        ),
        None => println!("  database queries for streams: not measurable ({STREAM_QUERIES_METRIC} not exported)"),
    }
}
