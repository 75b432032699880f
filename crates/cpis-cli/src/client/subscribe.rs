//! `cpis subscribe`: a council's alerts as JSON lines, acknowledged once written, resumed after restarts.

use super::*;
use anyhow::Context as _;
use clap::Args;
use cpis_proto::common::v1::{NhsNumberChangeKind, PlanType, SettingType};
use cpis_proto::notification::v1::{
    notification_service_client::NotificationServiceClient, subscribe_response::Event, AckAlertsRequest, Alert,
    AlertKind, AlertPriority, SubscribeRequest,
};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::time::Duration;

/// `cpis subscribe`
#[derive(Args, Debug)]
pub struct SubscribeArgs {
    #[command(flatten)]
    conn: Connection,
    /// The council (GSS code) whose dev certificate to use.
    #[arg(long, default_value = "E08000003")]
    council: String,
    /// Keeps the last sequence handled; resumed from after a restart.
    #[arg(long, default_value = ".cpis/subscribe-cursor")]
    cursor_file: PathBuf,
    /// Do not acknowledge alerts (leave that to another system).
    #[arg(long)]
    no_ack: bool,
    /// Stop after this many alerts (0: run until interrupted).
    #[arg(long, default_value_t = 0)]
    count: u64,
    /// Also print heartbeats.
    #[arg(long)]
    heartbeats: bool,
    /// Replay every stored alert from sequence 1, whatever was acknowledged
    /// and whatever the cursor file says (e.g. after restoring the case system from a backup).
    #[arg(long)]
    from_start: bool,
}

/// An alert as a JSON line.
pub fn alert_json(a: &Alert) -> Value {
    json!({"alert_id": a.alert_id, "sequence": a.sequence, "council_code": a.council_code,
           "nhs_number": a.nhs_number, "local_reference": a.local_reference,
           "plan_type": PlanType::try_from(a.plan_type).map(|t| t.as_str_name()).unwrap_or("?"),
           "priority": AlertPriority::try_from(a.priority).map(|t| t.as_str_name()).unwrap_or("?"),
           "episode": a.episode.as_ref().map(episode_json),
           "viewer": a.viewer.as_ref().map(super::viewer_json),
           "kind": AlertKind::try_from(a.kind).map(|k| k.as_str_name()).unwrap_or("?"),
           "was_not_brought": a.was_not_brought.as_ref().map(|m| json!({
               "record_id": m.record_id, "setting_code": m.setting_code,
               "setting_type": SettingType::try_from(m.setting_type).map(|t| t.as_str_name()).unwrap_or("?"),
               "appointment_at": m.appointment_at.as_ref().and_then(cpis_domain::time::from_timestamp).map(|t| t.to_rfc3339()),
               "missed_in_last_90_days": m.missed_in_last_90_days})),
           "nhs_number_change": a.nhs_number_change.as_ref().map(|n| json!({
               "kind": NhsNumberChangeKind::try_from(n.kind).map(|k| k.as_str_name()).unwrap_or("?"),
               "replacement_nhs_number": n.replacement_nhs_number, "effective_date": n.effective_date,
               "event_id": n.event_id, "local_references": n.local_references})),
           "created_at": a.created_at.as_ref().and_then(cpis_domain::time::from_timestamp).map(|t| t.to_rfc3339())})
}

fn read_cursor(path: &PathBuf) -> i64 {
    std::fs::read_to_string(path).ok().and_then(|s| s.trim().parse().ok()).unwrap_or(0)
}

fn write_cursor(path: &PathBuf, sequence: i64) -> anyhow::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    // Write then rename: a crash never leaves a half-written cursor.
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, format!("{sequence}\n"))?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

/// Writes one line to stdout and flushes it: an alert counts as handled only
/// once it is out of this process.
fn emit(line: &Value) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}").context("writing to stdout")?;
    out.flush().context("writing to stdout")?;
    Ok(())
}

/// Runs `cpis subscribe`: prints alerts as JSON lines, acknowledges them,
/// keeps its cursor in a file, and reconnects with backoff. An alert is
/// acknowledged only after its line was written out and the cursor saved;
/// an acknowledgement that fails on a transient error is retried with the
/// next event (acknowledgements are cumulative), never fatal.
pub async fn subscribe(args: SubscribeArgs) -> anyhow::Result<()> {
    let me = council(&args.council)?;
    let channel = args.conn.channel(2, &me)?;
    let mut client = NotificationServiceClient::new(channel);
    // With --from-start the cursor file is ignored at start (and rewritten
    // as alerts arrive); `replay` makes 0 mean "from sequence 1".
    let mut cursor = if args.from_start { 0 } else { read_cursor(&args.cursor_file) };
    let mut printed = 0u64;
    let mut unacked: Option<i64> = None;
    let mut backoff = Duration::from_millis(250);
    let max_backoff = Duration::from_secs(30);
    loop {
        let request = SubscribeRequest { after_sequence: cursor, replay: args.from_start };
        let mut stream = match client.subscribe(request).await {
            Ok(s) => s.into_inner(),
            Err(e) if cpis_runtime::error::is_transient(e.code()) => {
                eprintln!("subscribe: {} ({}); retrying in {:?}", e.message(), e.code(), backoff);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(max_backoff);
                continue;
            }
            Err(e) if cursor > 0 && beyond_the_log(&e) => {
                // The server's log was restored to before our cursor: resume
                // after its acknowledgement (restored with it); alerts written
                // out again keep their alert_id.
                eprintln!(
                    "subscribe: the alert log was restored to before {cursor}; resuming after the acknowledgement"
                );
                cursor = 0;
                continue;
            }
            Err(e) => return Err(status_error(e)),
        };
        loop {
            match stream.message().await {
                Ok(Some(msg)) => {
                    backoff = Duration::from_millis(250);
                    match msg.event {
                        Some(Event::Alert(alert)) => {
                            if alert.sequence <= cursor {
                                // A stream never sends an alert twice: the
                                // server's log was restored, and this one is new.
                                eprintln!(
                                    "subscribe: the alert log was restored: alert {} follows {cursor}",
                                    alert.sequence
                                );
                            }
                            emit(&alert_json(&alert))?;
                            cursor = alert.sequence;
                            write_cursor(&args.cursor_file, cursor)?;
                            if !args.no_ack {
                                unacked = Some(cursor);
                            }
                            printed += 1;
                        }
                        Some(Event::Heartbeat(h)) if args.heartbeats => {
                            emit(&json!({"heartbeat": {"latest_sequence": h.latest_sequence}}))?;
                        }
                        _ => {}
                    }
                    if let Some(up_to) = unacked {
                        match client.ack_alerts(AckAlertsRequest { up_to_sequence: up_to }).await {
                            Ok(_) => unacked = None,
                            Err(e) if cpis_runtime::error::is_transient(e.code()) => {
                                eprintln!(
                                    "subscribe: acknowledging {up_to}: {} ({}); will retry",
                                    e.message(),
                                    e.code()
                                );
                            }
                            Err(e) => return Err(status_error(e)),
                        }
                    }
                    if args.count > 0 && printed >= args.count && unacked.is_none() {
                        return Ok(());
                    }
                }
                Ok(None) => {
                    eprintln!("subscribe: stream closed; resuming after {cursor}");
                    break;
                }
                Err(e) if cpis_runtime::error::is_transient(e.code()) => {
                    eprintln!("subscribe: stream ended: {} ({}); resuming after {cursor}", e.message(), e.code());
                    break;
                }
                Err(e) => return Err(status_error(e)),
            }
        }
        // The server ended the stream (deploy, max connection age, database
        // loss): resume by sequence after a pause.
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(max_backoff);
        if let Some(up_to) = unacked {
            if client.ack_alerts(AckAlertsRequest { up_to_sequence: up_to }).await.is_ok() {
                unacked = None;
            }
        }
        if args.count > 0 && printed >= args.count && unacked.is_none() {
            return Ok(());
        }
    }
}

/// True when `Subscribe` refused a cursor beyond the council's latest
/// alert: the server's log went back (restored from a backup).
fn beyond_the_log(e: &tonic::Status) -> bool {
    use tonic_types::StatusExt;
    e.code() == tonic::Code::InvalidArgument
        && e.get_error_details()
            .bad_request()
            .is_some_and(|b| b.field_violations.iter().any(|v| v.field == "after_sequence"))
}
