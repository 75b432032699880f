//! (8) and (10): many idle subscriptions. Round one opens them, measures
//! the Notification service's memory per stream, watches every stream's
//! heartbeats and counts the database queries the idle streams cause;
//! then closes them and waits for the memory to come back. Round two does
//! the same again, to tell allocator retention from a leak.

use super::load::{micros, Latency};
use super::net::{council, status_text};
use super::procs::{RssSampler, Services};
use super::report::{StreamRound, StreamsResult};
use super::{progress, Ctx};
use anyhow::Context as _;
use cpis_proto::notification::v1::{
    notification_service_client::NotificationServiceClient, subscribe_response::Event, SubscribeRequest,
};
use futures::StreamExt as _;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Idle subscriptions per council identity: under the services' default
/// cap of 64 requests and streams in flight per caller.
const STREAMS_PER_COUNCIL: usize = 50;

/// The Notification service's counter of database queries made for streams.
pub const STREAM_QUERIES_METRIC: &str = "cpis_notification_stream_db_queries_total";

/// What one idle subscription saw.
#[derive(Debug, Default)]
struct StreamLog {
    heartbeats: Vec<Instant>,
    ended_early: bool,
}

/// Runs both rounds. `idle_kib`: Notification's RSS at the start of the run.
pub async fn idle_streams(ctx: &Ctx, services: &Services, idle_kib: u64) -> anyhow::Result<StreamsResult> {
    let latest = Arc::new(ctx.latest_sequences().await?);
    let n = ctx.shape.streams;
    // One connection per council identity (its certificate), each carrying
    // that council's share of the streams as HTTP/2 streams. Beyond 153 x
    // STREAMS_PER_COUNCIL streams the real councils are joined by synthetic
    // ones with codes in the GSS format (E0699xxxx).
    let identities = n.div_ceil(STREAMS_PER_COUNCIL).max(ctx.councils.len());
    let codes: Vec<String> =
        ctx.councils.iter().cloned().chain((0..).map(|i| format!("E0699{i:04}"))).take(identities).collect();
    let mut result = StreamsResult {
        requested: n,
        connections: codes.len(),
        council_identities: codes.len(),
        heartbeat_interval_secs: ctx.shape.heartbeat_secs,
        window_secs: ctx.shape.heartbeat_window_secs,
        notification_rss_idle_kib: idle_kib,
        ..Default::default()
    };
    for number in 1..=2 {
        let (round, logs, window) = round(ctx, services, &codes, &latest, number == 1, idle_kib).await?;
        progress(&format!(
            "(8) round {number}: {} streams open in {:.1} s; notification RSS {:.1} -> {:.1} MB open, peak {:.1}, {:.1} MB after closing",
            round.opened,
            round.open_secs,
            super::report::mb(round.notification_rss_before_kib),
            super::report::mb(round.notification_rss_open_kib),
            super::report::mb(round.notification_rss_peak_kib),
            super::report::mb(round.notification_rss_after_close_kib)
        ));
        if let Some(window) = window {
            let grown = round.notification_rss_open_kib.saturating_sub(round.notification_rss_before_kib);
            result.bytes_per_stream = if round.opened > 0 { grown as f64 * 1024.0 / round.opened as f64 } else { 0.0 };
            heartbeats(&mut result, logs, window);
        }
        result.rounds.push(round);
    }
    progress(&format!(
        "(8) {:.0} bytes per idle stream; {} of {} streams had heartbeats, {} late (longest silence {:.0} ms); \
         stream queries in the window: {}",
        result.bytes_per_stream,
        result.streams_with_heartbeat,
        result.rounds[0].opened,
        result.streams_late,
        result.longest_gap.max_ms,
        result.db_queries_in_window.map_or("not measurable".into(), |q| format!("{q:.0}"))
    ));
    Ok(result)
}

/// The observation window of round one.
struct Window {
    start: Instant,
    end: Instant,
    queries: Option<f64>,
    polls: Option<f64>,
}

/// Opens `ctx.shape.streams` subscriptions, holds them, closes them.
async fn round(
    ctx: &Ctx,
    services: &Services,
    codes: &[String],
    latest: &Arc<HashMap<String, i64>>,
    observe: bool,
    idle_kib: u64,
) -> anyhow::Result<(StreamRound, Vec<StreamLog>, Option<Window>)> {
    let n = ctx.shape.streams;
    let notification = &services.notification;
    let mut channels = Vec::new();
    for code in codes {
        channels.push(ctx.net.fresh_channel(ctx.notification_port, &council(code)?)?);
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut r = StreamRound { notification_rss_before_kib: notification.rss_kib().unwrap_or(0), ..Default::default() };
    let reset = notification.reset_peak();
    let sampler = RssSampler::start(services, Duration::from_millis(100));

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
                                if observe && matches!(m.event, Some(Event::Heartbeat(_))) {
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
    let opened: Vec<Result<_, String>> =
        tokio::time::timeout(Duration::from_secs(120), opens.buffer_unordered(256).collect::<Vec<_>>())
            .await
            .context("opening the idle subscriptions took over 120 s")?;
    r.open_secs = t.elapsed().as_secs_f64();
    let mut readers = Vec::new();
    for o in opened {
        match o {
            Ok(handle) => readers.push(handle),
            Err(e) => {
                r.open_failures += 1;
                r.first_error.get_or_insert(e);
            }
        }
    }
    r.opened = readers.len();

    // Settle: every stream has had time for a heartbeat or two.
    tokio::time::sleep(Duration::from_secs((2 * ctx.shape.heartbeat_secs).max(3))).await;
    r.notification_rss_open_kib = notification.rss_kib().unwrap_or(0);
    let window = if observe {
        let before = stream_queries(notification.metrics_port).await;
        let start = Instant::now();
        tokio::time::sleep(Duration::from_secs_f64(ctx.shape.heartbeat_window_secs)).await;
        let end = Instant::now();
        let after = stream_queries(notification.metrics_port).await;
        let delta = before.zip(after).map(|(b, a)| (a.0 - b.0, a.1 - b.1));
        Some(Window { start, end, queries: delta.map(|d| d.0), polls: delta.map(|d| d.1) })
    } else {
        None
    };
    let _ = stop_tx.send(true);
    let mut logs = Vec::new();
    for reader in readers {
        let Ok(log) = reader.await else { continue };
        r.streams_ended_early += usize::from(log.ended_early);
        logs.push(log);
    }
    drop(channels);

    // Closed: wait (bounded) for the memory to come back within 2x idle.
    let limit = Duration::from_secs(if ctx.shape.quick { 5 } else { 15 });
    let closed = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        r.notification_rss_after_close_kib = notification.rss_kib().unwrap_or(0);
        if r.notification_rss_after_close_kib <= 2 * idle_kib || closed.elapsed() >= limit {
            break;
        }
    }
    let sampled = sampler.finish().await.notification_kib;
    let hwm = if reset { notification.peak_kib().unwrap_or(0) } else { 0 };
    r.notification_rss_peak_kib = sampled.max(hwm);
    Ok((r, logs, window))
}

/// Heartbeat figures of round one, from what each stream saw in `window`.
fn heartbeats(result: &mut StreamsResult, logs: Vec<StreamLog>, window: Window) {
    let limit = Duration::from_secs_f64(1.1 * result.heartbeat_interval_secs as f64);
    let mut counts = Vec::new();
    let mut gaps = Vec::new();
    for log in logs {
        let inside: Vec<Instant> =
            log.heartbeats.into_iter().filter(|&h| h >= window.start && h <= window.end).collect();
        if !inside.is_empty() {
            result.streams_with_heartbeat += 1;
        }
        counts.push(inside.len());
        let mut last = window.start;
        let mut longest = Duration::ZERO;
        for h in inside.iter().copied().chain([window.end]) {
            longest = longest.max(h - last);
            last = h;
        }
        if longest > limit {
            result.streams_late += 1;
        }
        gaps.push(micros(longest));
    }
    result.heartbeats_in_window = counts.iter().map(|&c| c as u64).sum();
    counts.sort_unstable();
    result.heartbeats_min_per_stream = counts.first().copied().unwrap_or(0);
    result.heartbeats_median_per_stream = counts.get(counts.len() / 2).copied().unwrap_or(0);
    result.longest_gap = Latency::of(gaps);
    result.db_queries_in_window = window.queries;
    result.db_safety_polls_in_window = window.polls;
    result.db_queries_per_heartbeat =
        window
            .queries
            .map(|q| if result.heartbeats_in_window > 0 { q / result.heartbeats_in_window as f64 } else { q });
}

/// The Notification service's stream query counter, or `None` when it is
/// not exported (or the metrics endpoint cannot be read): (queries caused by
/// streams, safety polls). The safety poll (`kind="poll"`) is one query per
/// instance for all councils, made whether or not any stream is open, so it
/// is counted apart from the queries streams cause.
async fn stream_queries(metrics_port: u16) -> Option<(f64, f64)> {
    let text = super::procs::scrape(metrics_port).await.ok()?;
    let all = super::procs::sample(&text, STREAM_QUERIES_METRIC)?;
    let poll: f64 = text
        .lines()
        .filter(|l| l.starts_with(STREAM_QUERIES_METRIC) && l.contains("kind=\"poll\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    Some((all - poll, poll))
}
