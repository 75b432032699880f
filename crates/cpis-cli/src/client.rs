//! Client commands for people and scripts: `cpis plans ...`, `cpis check-in`,
//! `cpis subscribe`, `cpis audit`. Each connects with mutual TLS, by default
//! as a development identity from `--state-dir` (override with `--cert`,
//! `--key`, `--ca`), to `localhost` at `--port-base` (override with `--endpoint`).

use anyhow::{bail, Context as _};
use clap::{Args, Subcommand};
use cpis_devkit::pki::Pki;
use cpis_domain::identity::{Caller, CallerKind};
use cpis_proto::attendance::v1::{
    attendance_service_client::AttendanceServiceClient, CheckInRequest, CheckInResponse, ListAccessesRequest,
    ListEpisodesRequest, SilentReadRequest,
};
use cpis_proto::common::v1::{Episode, Flag, PlanType, SettingType};
use cpis_proto::notification::v1::{
    notification_service_client::NotificationServiceClient, subscribe_response::Event, AckAlertsRequest, Alert,
    AlertPriority, SubscribeRequest,
};
use cpis_proto::registry::v1::{
    registry_service_client::RegistryServiceClient, DeletePlanRequest, EndPlanRequest, GetPlanRequest,
    ListPlansRequest, Plan, SyncCompletion, SyncPlansRequest,
};
use cpis_runtime::tls::TlsPaths;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tonic::transport::Channel;

/// Where to connect and as whom.
#[derive(Args, Debug, Clone)]
pub struct Connection {
    /// Development state directory holding `pki/`.
    #[arg(long, global = true, env = "CPIS_STATE_DIR", default_value = ".cpis")]
    pub state_dir: PathBuf,
    /// Registry port of `cpis dev`; attendance is +1, notification +2.
    #[arg(long, global = true, default_value_t = 50051)]
    pub port_base: u16,
    /// The service's URL (overrides --port-base), e.g. https://registry.example:50051.
    #[arg(long, global = true)]
    pub endpoint: Option<String>,
    /// Client certificate (PEM); defaults to the dev PKI's certificate of the identity.
    #[arg(long, global = true)]
    pub cert: Option<PathBuf>,
    /// Client key (PEM, PKCS#8).
    #[arg(long, global = true)]
    pub key: Option<PathBuf>,
    /// CA certificate (PEM).
    #[arg(long, global = true)]
    pub ca: Option<PathBuf>,
}

impl Connection {
    fn tls(&self, default: &Caller) -> anyhow::Result<TlsPaths> {
        let dev = Pki::new(&self.state_dir).paths_for(default);
        let paths = TlsPaths {
            ca: self.ca.clone().unwrap_or(dev.ca),
            cert: self.cert.clone().unwrap_or(dev.cert),
            key: self.key.clone().unwrap_or(dev.key),
        };
        for p in [&paths.ca, &paths.cert, &paths.key] {
            if !p.exists() {
                bail!("{} does not exist: pass --cert/--key/--ca, or issue it with `cpis certs issue`", p.display());
            }
        }
        Ok(paths)
    }

    /// A channel to the service at `offset` from the port base.
    pub fn channel(&self, offset: u16, as_who: &Caller) -> anyhow::Result<Channel> {
        let url = match &self.endpoint {
            Some(url) => url.clone(),
            None => format!("https://localhost:{}", self.port_base + offset),
        };
        cpis_runtime::client::channel(&url, &self.tls(as_who)?, None)
    }
}

fn council(code: &str) -> anyhow::Result<Caller> {
    Ok(Caller::from_parts(CallerKind::Council, code)?)
}

fn setting(code: &str) -> anyhow::Result<Caller> {
    Ok(Caller::from_parts(CallerKind::Setting, code)?)
}

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

fn status_error(e: tonic::Status) -> anyhow::Error {
    use tonic_types::StatusExt;
    let mut message = format!("{:?}: {}", e.code(), e.message());
    if let Some(bad) = e.get_error_details().bad_request() {
        for v in &bad.field_violations {
            message.push_str(&format!("\n  {}: {}", v.field, v.description));
        }
    }
    anyhow::anyhow!(message)
}

/// Largest response `cpis plans` decodes: a sync's answer lists up to 1,000
/// rejections and 3 × 1,000 references, far below this.
const MAX_RESPONSE_BYTES: usize = 64 * 1024 * 1024;

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
            .map(|x| json!({"line": line_of(x.row), "row": x.row, "local_reference": x.local_reference, "field": x.field, "reason": x.reason}))
            .collect();
        println!(
            "{}",
            json!({"received": r.received, "created": r.created, "updated": r.updated,
                   "unchanged": r.unchanged, "ended": r.ended, "rejected": r.rejected,
                   "blank_rows_skipped": check.blank_rows, "dry_run": r.dry_run, "rejections": rejections,
                   "created_references": r.created_references, "updated_references": r.updated_references,
                   "ended_references": r.ended_references})
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
    }
    if (r.rejections.len() as i64) < r.rejected {
        println!("  ... and {} more", r.rejected - r.rejections.len() as i64);
    }
    Ok(())
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

/// `cpis check-in`
#[derive(Args, Debug)]
pub struct CheckInArgs {
    #[command(flatten)]
    conn: Connection,
    /// The setting (ODS code) whose dev certificate to use.
    #[arg(long, default_value = "RBQ01")]
    setting: String,
    /// NHS number of the person arriving.
    #[arg(long)]
    nhs_number: String,
    /// emergency-department (the default), urgent-treatment-centre, walk-in-centre, minor-injury-unit or
    /// out-of-hours-gp; with --silent: gp-practice (the default), community-services, camhs,
    /// zero-to-nineteen-services, dentistry, sexual-health or sexual-assault-referral-centre.
    #[arg(long)]
    setting_type: Option<String>,
    /// A silent read from scheduled care (SilentRead): the flags are shown and the access is
    /// audited, but no episode is recorded and no council is alerted.
    #[arg(long)]
    silent: bool,
    /// Who is viewing the answer (for the access audit).
    #[arg(long, default_value = "cli")]
    user: String,
    /// Idempotency key; a fresh one by default.
    #[arg(long)]
    request_id: Option<String>,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

/// Parses a setting type written like `walk-in-centre`.
pub fn parse_setting_type(s: &str) -> Option<SettingType> {
    let name = format!("SETTING_TYPE_{}", s.trim().to_ascii_uppercase().replace('-', "_"));
    SettingType::from_str_name(&name).filter(|t| *t != SettingType::Unspecified)
}

fn flag_json(f: &Flag) -> Value {
    let c = f.contact.clone().unwrap_or_default();
    json!({"plan_type": PlanType::try_from(f.plan_type).map(|t| t.as_str_name()).unwrap_or("?"),
           "start_date": f.start_date, "end_date": f.end_date, "expected_delivery_date": f.expected_delivery_date,
           "ended": f.ended, "council_code": f.council_code, "council_name": f.council_name,
           "contact": {"team_name": c.team_name, "office_phone": c.office_phone,
                       "emergency_duty_phone": c.emergency_duty_phone, "email": c.email}})
}

fn episode_json(e: &Episode) -> Value {
    json!({"episode_id": e.episode_id, "setting_code": e.setting_code,
           "setting_type": SettingType::try_from(e.setting_type).map(|t| t.as_str_name()).unwrap_or("?"),
           "arrived_at": e.arrived_at.as_ref().and_then(cpis_domain::time::from_timestamp).map(|t| t.to_rfc3339())})
}

/// What a clinician sees, as text.
pub fn describe_check_in(r: &CheckInResponse) -> String {
    if !r.flagged {
        return "No flags: no child protection plan, looked-after status or unborn plan is registered.".into();
    }
    let mut out = String::from("FLAGGED\n");
    for f in &r.flags {
        let kind = match PlanType::try_from(f.plan_type) {
            Ok(PlanType::ChildProtection) => "Child protection plan",
            Ok(PlanType::LookedAfter) => "Looked-after child (in care)",
            Ok(PlanType::UnbornChildProtection) => "Unborn child protection plan (the patient is pregnant)",
            _ => "Plan",
        };
        let c = f.contact.clone().unwrap_or_default();
        out.push_str(&format!("  {kind}{}\n", if f.ended { " (ENDED, still shown for 12 months)" } else { "" }));
        out.push_str(&format!("    council: {} ({})\n", f.council_name, f.council_code));
        out.push_str(&format!(
            "    since {}{}\n",
            f.start_date,
            if f.end_date.is_empty() { String::new() } else { format!(", until {}", f.end_date) }
        ));
        if !f.expected_delivery_date.is_empty() {
            out.push_str(&format!("    expected delivery: {}\n", f.expected_delivery_date));
        }
        out.push_str(&format!(
            "    {}: office hours {}, out of hours {}, {}\n",
            c.team_name, c.office_phone, c.emergency_duty_phone, c.email
        ));
    }
    out.push_str(&format!("  episode {}\n", r.episode_id));
    if r.previous_episodes.is_empty() {
        out.push_str("  no previous unscheduled-care episodes\n");
    } else {
        out.push_str(&format!("  {} previous unscheduled-care episode(s):\n", r.previous_episodes.len()));
        for e in &r.previous_episodes {
            let at = e
                .arrived_at
                .as_ref()
                .and_then(cpis_domain::time::from_timestamp)
                .map(|t| t.to_rfc3339())
                .unwrap_or_default();
            let kind = SettingType::try_from(e.setting_type).map(|t| t.as_str_name()).unwrap_or("?");
            out.push_str(&format!("    {at}  {}  {}\n", e.setting_code, kind.trim_start_matches("SETTING_TYPE_")));
        }
    }
    out
}

/// Checks a person in and returns the answer.
pub async fn check_in_once(
    conn: &Connection,
    setting_code: &str,
    nhs_number: &str,
    setting_type: SettingType,
    user: &str,
    request_id: Option<String>,
) -> anyhow::Result<CheckInResponse> {
    let me = setting(setting_code)?;
    let mut client = AttendanceServiceClient::new(conn.channel(1, &me)?);
    let request = CheckInRequest {
        request_id: request_id.unwrap_or_else(|| uuid::Uuid::new_v4().to_string()),
        nhs_number: nhs_number.to_string(),
        arrived_at: Some(cpis_domain::time::to_timestamp(chrono::Utc::now())),
        setting_type: setting_type as i32,
        user_id: user.to_string(),
    };
    let mut request = tonic::Request::new(request);
    request.set_timeout(Duration::from_secs(10));
    Ok(client.check_in(request).await.map_err(status_error)?.into_inner())
}

/// Runs `cpis check-in`.
pub async fn check_in(args: CheckInArgs) -> anyhow::Result<()> {
    let default_type = if args.silent { "gp-practice" } else { "emergency-department" };
    let type_name = args.setting_type.as_deref().unwrap_or(default_type);
    let setting_type =
        parse_setting_type(type_name).with_context(|| format!("unknown --setting-type {type_name:?}"))?;
    if args.silent {
        return silent_read(&args, setting_type).await;
    }
    let r =
        check_in_once(&args.conn, &args.setting, &args.nhs_number, setting_type, &args.user, args.request_id).await?;
    if args.json {
        println!(
            "{}",
            json!({"flagged": r.flagged, "episode_id": r.episode_id,
                   "flags": r.flags.iter().map(flag_json).collect::<Vec<_>>(),
                   "previous_episodes": r.previous_episodes.iter().map(episode_json).collect::<Vec<_>>()})
        );
    } else {
        print!("{}", describe_check_in(&r));
    }
    Ok(())
}

/// `cpis check-in --silent`: a silent read from scheduled care.
async fn silent_read(args: &CheckInArgs, setting_type: SettingType) -> anyhow::Result<()> {
    let me = setting(&args.setting)?;
    let mut client = AttendanceServiceClient::new(args.conn.channel(1, &me)?);
    let mut request = tonic::Request::new(SilentReadRequest {
        request_id: args.request_id.clone().unwrap_or_else(|| uuid::Uuid::new_v4().to_string()),
        nhs_number: args.nhs_number.clone(),
        setting_type: setting_type as i32,
        user_id: args.user.clone(),
    });
    request.set_timeout(Duration::from_secs(10));
    let r = client.silent_read(request).await.map_err(status_error)?.into_inner();
    if args.json {
        println!(
            "{}",
            json!({"flagged": r.flagged, "silent": true,
                   "flags": r.flags.iter().map(flag_json).collect::<Vec<_>>(),
                   "recent_episodes": r.recent_episodes.iter().map(episode_json).collect::<Vec<_>>()})
        );
    } else {
        let shown = CheckInResponse {
            flagged: r.flagged,
            flags: r.flags,
            episode_id: String::new(),
            previous_episodes: r.recent_episodes,
        };
        let text = describe_check_in(&shown);
        print!("{}", text.replace("  episode \n", "  silent read: audited, no episode, no council alerted\n"));
    }
    Ok(())
}

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
            Err(e) => return Err(status_error(e)),
        };
        loop {
            match stream.message().await {
                Ok(Some(msg)) => {
                    backoff = Duration::from_millis(250);
                    match msg.event {
                        Some(Event::Alert(alert)) => {
                            if alert.sequence <= cursor {
                                continue; // already handled (a resend after a reconnect)
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

/// `cpis audit`
#[derive(Args, Debug)]
pub struct AuditArgs {
    #[command(flatten)]
    conn: Connection,
    /// The council (GSS code) whose dev certificate to use.
    #[arg(long, default_value = "E08000003")]
    council: String,
    /// Only accesses to this person's flags.
    #[arg(long, default_value = "")]
    nhs_number: String,
    /// Also list the person's episodes (needs --nhs-number).
    #[arg(long)]
    episodes: bool,
}

/// Runs `cpis audit`: the council's access history, as JSON lines.
pub async fn audit(args: AuditArgs) -> anyhow::Result<()> {
    let me = council(&args.council)?;
    let mut client = AttendanceServiceClient::new(args.conn.channel(1, &me)?);
    let mut token = String::new();
    loop {
        let page = client
            .list_accesses(ListAccessesRequest {
                nhs_number: args.nhs_number.clone(),
                page_size: 1000,
                page_token: token,
            })
            .await
            .map_err(status_error)?
            .into_inner();
        for a in &page.accesses {
            println!(
                "{}",
                json!({"access_id": a.access_id, "episode_id": a.episode_id, "nhs_number": a.nhs_number,
                       "setting_code": a.setting_code,
                       "setting_type": SettingType::try_from(a.setting_type).map(|t| t.as_str_name()).unwrap_or("?"),
                       "user_id": a.user_id, "silent": a.silent, "episodes_read": a.episodes_read,
                       "accessed_at": a.accessed_at.as_ref().and_then(cpis_domain::time::from_timestamp).map(|t| t.to_rfc3339())})
            );
        }
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    if args.episodes && !args.nhs_number.is_empty() {
        let page = client
            .list_episodes(ListEpisodesRequest {
                nhs_number: args.nhs_number.clone(),
                page_size: 100,
                ..Default::default()
            })
            .await
            .map_err(status_error)?
            .into_inner();
        for e in &page.episodes {
            println!("{}", json!({"episode": episode_json(e)}));
        }
    }
    Ok(())
}
