//! (5) alert latency: one subscriber per council, flagged check-ins at a
//! fixed rate (an open loop), every alert matched to its check-in by
//! episode id; a missing or misdelivered alert fails the run.

use super::data;
use super::load::{self, Latency};
use super::net::{check_in, council, status_text, Flagged};
use super::report::AlertResult;
use super::{progress, Ctx};
use anyhow::Context as _;
use cpis_proto::notification::v1::{
    notification_service_client::NotificationServiceClient, subscribe_response::Event, SubscribeRequest,
};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

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
pub async fn alert_latency(ctx: &Ctx, people: Arc<Flagged>) -> anyhow::Result<AlertResult> {
    data::drain_outbox(&ctx.db, Duration::from_secs(120)).await?;
    let latest = ctx.latest_sequences().await?;
    let tracks: Arc<Mutex<HashMap<String, Track>>> = Arc::default();
    let counters = Arc::new(AlertCounters::default());

    // Each council resumes after its latest alert, as its case system would.
    let mut opening = Vec::new();
    for code in &ctx.councils {
        let channel = ctx.net.fresh_channel(ctx.notification_port, &council(code)?)?;
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
            let slot = n as usize % super::MAX_CONNECTIONS;
            let (nhs, round) = people.take();
            let channel = net.setting(port, slot, round).map_err(|e| e.to_string())?;
            let sent = Instant::now();
            let r = check_in(channel, nhs).await?;
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
    result.latency = Latency::of(samples.clone());
    result.samples_us = samples;
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
