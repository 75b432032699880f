//! `cpis plans ...`: a council keeps its register (sync a CSV, list, get, end, delete).

use super::*;
use anyhow::{bail, Context as _};
use clap::{Args, Subcommand};
use cpis_proto::common::v1::PlanType;
use cpis_proto::registry::v1::{
    registry_service_client::RegistryServiceClient, DeletePlanRequest, EndPlanRequest, GetPlanRequest,
    ListPlansRequest, Plan, SyncCompletion, SyncConflict, SyncConflictChange, SyncPlansRequest,
};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use tonic::transport::Channel;

/// `cpis plans ...`
#[derive(Args, Debug)]
pub struct PlansArgs {
    #[command(flatten)]
    conn: Connection,
    /// The council (GSS code) whose dev certificate to use.
    #[arg(long, global = true, default_value = "E08000003")]
    council: String,
    /// Print JSON instead of text.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: PlansCommand,
}

#[derive(Subcommand, Debug)]
enum PlansCommand {
    /// Stream a CSV file of the council's complete list through SyncPlans.
    Sync {
        /// The CSV file (format in README).
        #[arg(long)]
        csv: PathBuf,
        /// Validate and count, change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Allow the snapshot to end more than the configured share of open plans.
        #[arg(long)]
        allow_mass_end: bool,
    },
    /// List the council's plans.
    List {
        /// Include plans whose end date has passed.
        #[arg(long)]
        include_ended: bool,
    },
    /// Show one plan.
    Get {
        /// The council's case reference.
        local_reference: String,
    },
    /// Set a plan's end date.
    End {
        /// The council's case reference.
        local_reference: String,
        /// YYYY-MM-DD.
        #[arg(long)]
        end_date: String,
    },
    /// Delete a plan entered in error.
    Delete {
        /// The council's case reference.
        local_reference: String,
    },
}

fn plan_json(p: &Plan) -> Value {
    let c = p.contact.clone().unwrap_or_default();
    json!({
        "plan_id": p.plan_id, "council_code": p.council_code, "local_reference": p.local_reference,
        "nhs_number": p.nhs_number, "date_of_birth": p.date_of_birth,
        "plan_type": PlanType::try_from(p.plan_type).map(|t| t.as_str_name()).unwrap_or("?"),
        "start_date": p.start_date, "end_date": p.end_date, "expected_delivery_date": p.expected_delivery_date,
        "contact": {"team_name": c.team_name, "office_phone": c.office_phone,
                    "emergency_duty_phone": c.emergency_duty_phone, "email": c.email},
        "version": p.version,
    })
}

/// Problems listed before `plans sync` stops listing them.
const MAX_LISTED_CSV_ERRORS: usize = 100;

/// What a first pass over a council's CSV found.
struct CsvCheck {
    rows: i64,
    blank_rows: u64,
    errors: Vec<crate::plan_csv::CsvError>,
    error_count: usize,
}

fn open_csv(csv: &Path) -> anyhow::Result<crate::plan_csv::PlanReader<std::io::BufReader<std::fs::File>>> {
    let file = std::fs::File::open(csv).with_context(|| format!("opening {}", csv.display()))?;
    crate::plan_csv::PlanReader::new(std::io::BufReader::new(file))
        .map_err(|e| anyhow::anyhow!("{}: {e}", csv.display()))
}

/// Reads the whole file once, without sending anything: every row's file
/// problems, and the number of plan rows to state in the completion message.
fn check_csv(csv: &Path) -> anyhow::Result<CsvCheck> {
    let mut reader = open_csv(csv)?;
    let mut check = CsvCheck { rows: 0, blank_rows: 0, errors: Vec::new(), error_count: 0 };
    for (_, row) in reader.by_ref() {
        match row {
            Ok(_) => check.rows += 1,
            Err(e) => {
                check.error_count += 1;
                if check.errors.len() < MAX_LISTED_CSV_ERRORS {
                    check.errors.push(e);
                }
            }
        }
    }
    check.blank_rows = reader.blank_rows();
    Ok(check)
}

/// `cpis plans sync`: checks the whole file first (any problem stops it
/// before anything is sent), then streams it and ends with the completion
/// message; a file that changes between the two readings is never completed,
/// so the Registry applies nothing.
async fn sync_csv(
    client: &mut RegistryServiceClient<Channel>,
    csv: &Path,
    dry_run: bool,
    allow_mass_end: bool,
    json_out: bool,
) -> anyhow::Result<()> {
    let check = {
        let csv = csv.to_path_buf();
        tokio::task::spawn_blocking(move || check_csv(&csv)).await??
    };
    if check.error_count > 0 {
        let mut message = format!(
            "{}: {} row(s) cannot be read; nothing was sent and nothing changed. Fix the file and run again:",
            csv.display(),
            check.error_count
        );
        for e in &check.errors {
            message.push_str(&format!("\n  {e}"));
        }
        if check.error_count > check.errors.len() {
            message.push_str(&format!("\n  ... and {} more", check.error_count - check.errors.len()));
        }
        bail!(message);
    }
    let reader = open_csv(csv)?;
    let plan_rows = check.rows;
    // Rows go out as they are read; the file is never held in memory.
    // Each message's position in the stream maps back to its CSV line.
    let (tx, rx) = tokio::sync::mpsc::channel::<SyncPlansRequest>(256);
    let (lines_tx, lines_rx) = std::sync::mpsc::channel::<u64>();
    let name = csv.display().to_string();
    let producer = tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        let mut sent = 0i64;
        for (line, plan) in reader {
            // The file changed since it was checked: stop without the
            // completion message, so the Registry applies nothing.
            let plan = plan.map_err(|e| anyhow::anyhow!("{name} changed while being sent: {e}"))?;
            let _ = lines_tx.send(line);
            sent += 1;
            if tx
                .blocking_send(SyncPlansRequest { plan: Some(plan), allow_mass_end, dry_run, completion: None })
                .is_err()
            {
                return Ok(());
            }
        }
        if sent != plan_rows {
            bail!("{name} changed while being sent ({plan_rows} rows when checked, {sent} now)");
        }
        let completion = Some(SyncCompletion { plan_rows });
        let _ = tx.blocking_send(SyncPlansRequest { plan: None, allow_mass_end, dry_run, completion });
        Ok(())
    });
    let result = client.sync_plans(tokio_stream::wrappers::ReceiverStream::new(rx)).await;
    producer.await??;
    let r = result.map_err(status_error)?.into_inner();
    let lines: Vec<u64> = lines_rx.try_iter().collect();
    let line_of = |row: i64| lines.get((row - 1).max(0) as usize).copied().unwrap_or(0);
    if json_out {
        let rejections: Vec<Value> = r
            .rejections
            .iter()
            .map(|x| json!({"line": line_of(x.row), "row": x.row, "local_reference": x.local_reference, "field": x.field, "reason": x.reason,
                            "replacement_nhs_number": x.replacement_nhs_number}))
            .collect();
        let warnings: Vec<Value> = r
            .warnings
            .iter()
            .map(|w| json!({"line": line_of(w.row), "row": w.row, "local_reference": w.local_reference, "field": w.field, "reason": w.reason}))
            .collect();
        println!(
            "{}",
            json!({"received": r.received, "created": r.created, "updated": r.updated,
                   "unchanged": r.unchanged, "ended": r.ended, "rejected": r.rejected,
                   "blank_rows_skipped": check.blank_rows, "dry_run": r.dry_run, "rejections": rejections,
                   "created_references": r.created_references, "updated_references": r.updated_references,
                   "ended_references": r.ended_references, "conflicted": r.conflicted,
                   "conflicts": r.conflicts.iter().map(conflict_json).collect::<Vec<_>>(), "warnings": warnings})
        );
        return Ok(());
    }
    println!(
        "{}received {}: created {}, updated {}, unchanged {}, ended {}, rejected {}{}",
        if r.dry_run { "DRY RUN (nothing changed): " } else { "" },
        r.received,
        r.created,
        r.updated,
        r.unchanged,
        r.ended,
        r.rejected,
        if check.blank_rows > 0 { format!(" ({} blank row(s) skipped)", check.blank_rows) } else { String::new() }
    );
    let verb = |done: &'static str, would: &'static str| if r.dry_run { would } else { done };
    for (label, refs, total) in [
        (verb("created", "would create"), &r.created_references, r.created),
        (verb("updated", "would update"), &r.updated_references, r.updated),
        (verb("ended", "would end"), &r.ended_references, r.ended),
    ] {
        if total == 0 {
            continue;
        }
        println!("  {label} ({total}):");
        for reference in refs {
            println!("    {reference}");
        }
        if (refs.len() as i64) < total {
            println!("    ... and {} more", total - refs.len() as i64);
        }
    }
    for x in &r.rejections {
        println!("  line {} ({}): {}", line_of(x.row), x.local_reference, x.reason);
        if !x.replacement_nhs_number.is_empty() {
            // The council's own upload: the replacement is what to send instead.
            println!("    send it with the replacement NHS number {}", x.replacement_nhs_number);
        }
    }
    for w in &r.warnings {
        println!("  line {} ({}): warning: {}", line_of(w.row), w.local_reference, w.reason);
    }
    if (r.rejections.len() as i64) < r.rejected {
        println!("  ... and {} more", r.rejected - r.rejections.len() as i64);
    }
    if r.conflicted > 0 {
        println!("  left as they stand: changed by another call while this upload ran ({}):", r.conflicted);
        for c in &r.conflicts {
            println!("    {} ({}): {}", c.local_reference, conflict_change(c.change), c.reason);
        }
        if (r.conflicts.len() as i64) < r.conflicted {
            println!("    ... and {} more", r.conflicted - r.conflicts.len() as i64);
        }
    }
    Ok(())
}

/// What another call did to a plan during an upload, as a word.
fn conflict_change(change: i32) -> &'static str {
    match SyncConflictChange::try_from(change) {
        Ok(SyncConflictChange::Created) => "created",
        Ok(SyncConflictChange::Updated) => "updated",
        Ok(SyncConflictChange::Ended) => "ended",
        Ok(SyncConflictChange::Deleted) => "deleted",
        _ => "changed",
    }
}

/// One conflict for `--json`.
fn conflict_json(c: &SyncConflict) -> Value {
    json!({"local_reference": c.local_reference, "change": conflict_change(c.change), "reason": c.reason})
}

/// Runs `cpis plans ...`.
pub async fn plans(args: PlansArgs) -> anyhow::Result<()> {
    let me = council(&args.council)?;
    let mut client =
        RegistryServiceClient::new(args.conn.channel(0, &me)?).max_decoding_message_size(MAX_RESPONSE_BYTES);
    match args.command {
        PlansCommand::Sync { csv, dry_run, allow_mass_end } => {
            sync_csv(&mut client, &csv, dry_run, allow_mass_end, args.json).await?;
        }
        PlansCommand::List { include_ended } => {
            let mut token = String::new();
            loop {
                let page = client
                    .list_plans(ListPlansRequest { page_size: 1000, page_token: token, include_ended })
                    .await
                    .map_err(status_error)?
                    .into_inner();
                for p in &page.plans {
                    if args.json {
                        println!("{}", plan_json(p));
                    } else {
                        let kind = PlanType::try_from(p.plan_type).map(|t| t.as_str_name()).unwrap_or("?");
                        let end = if p.end_date.is_empty() { "open" } else { &p.end_date };
                        println!(
                            "{}\t{}\t{}\t{} .. {}\tv{}",
                            p.local_reference, p.nhs_number, kind, p.start_date, end, p.version
                        );
                    }
                }
                if page.next_page_token.is_empty() {
                    break;
                }
                token = page.next_page_token;
            }
        }
        PlansCommand::Get { local_reference } => {
            let p = client.get_plan(GetPlanRequest { local_reference }).await.map_err(status_error)?.into_inner();
            let p = p.plan.unwrap_or_default();
            println!(
                "{}",
                if args.json { plan_json(&p).to_string() } else { serde_json::to_string_pretty(&plan_json(&p))? }
            );
        }
        PlansCommand::End { local_reference, end_date } => {
            let p = client.end_plan(EndPlanRequest { local_reference, end_date }).await.map_err(status_error)?;
            let p = p.into_inner().plan.unwrap_or_default();
            println!("ended {} on {} (version {})", p.local_reference, p.end_date, p.version);
        }
        PlansCommand::Delete { local_reference } => {
            client
                .delete_plan(DeletePlanRequest { local_reference: local_reference.clone() })
                .await
                .map_err(status_error)?;
            println!("deleted {local_reference} (entered in error; kept in the change history)");
        }
    }
    Ok(())
}
