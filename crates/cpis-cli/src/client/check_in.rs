//! `cpis check-in`: a setting checks a person in (or reads silently) and prints what the clinician sees.

use super::*;
use crate::users::UserToken;
use anyhow::Context as _;
use clap::Args;
use cpis_proto::attendance::v1::{
    attendance_service_client::AttendanceServiceClient, CheckInRequest, CheckInResponse, SilentReadRequest,
};
use cpis_proto::common::v1::{Episode, Flag, PlanType, SettingType};
use serde_json::{json, Value};
use std::time::Duration;

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
    /// The person viewing the answer: their token and role (`cpis users token`).
    #[command(flatten)]
    user: UserToken,
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

pub(crate) fn flag_json(f: &Flag) -> Value {
    let c = f.contact.clone().unwrap_or_default();
    json!({"plan_type": PlanType::try_from(f.plan_type).map(|t| t.as_str_name()).unwrap_or("?"),
           "start_date": f.start_date, "end_date": f.end_date, "expected_delivery_date": f.expected_delivery_date,
           "ended": f.ended, "council_code": f.council_code, "council_name": f.council_name,
           "contact": {"team_name": c.team_name, "office_phone": c.office_phone,
                       "emergency_duty_phone": c.emergency_duty_phone, "email": c.email}})
}

pub(crate) fn episode_json(e: &Episode) -> Value {
    json!({"episode_id": e.episode_id, "setting_code": e.setting_code,
           "setting_type": SettingType::try_from(e.setting_type).map(|t| t.as_str_name()).unwrap_or("?"),
           "arrived_at": e.arrived_at.as_ref().and_then(cpis_domain::time::from_timestamp).map(|t| t.to_rfc3339())})
}

/// What a clinician sees, as text.
pub fn describe_check_in(r: &CheckInResponse) -> String {
    if !r.flagged {
        return "No flags: no child protection plan, looked-after status or unborn plan is registered.\n".into();
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

/// Checks a person in, shown to the person `user` names, and returns the answer.
pub async fn check_in_once(
    conn: &Connection,
    setting_code: &str,
    nhs_number: &str,
    setting_type: SettingType,
    user: &UserToken,
    request_id: Option<String>,
) -> anyhow::Result<CheckInResponse> {
    let me = setting(setting_code)?;
    let mut client = AttendanceServiceClient::new(conn.channel(1, &me)?);
    let request = CheckInRequest {
        request_id: request_id.unwrap_or_else(|| uuid::Uuid::new_v4().to_string()),
        nhs_number: nhs_number.to_string(),
        arrived_at: Some(cpis_domain::time::to_timestamp(chrono::Utc::now())),
        setting_type: setting_type as i32,
        ..Default::default()
    };
    // Repeated as it is (the same request_id and body) while the answer says
    // the call may be retried: a repeat never records the arrival twice.
    let mut attempt = 1;
    loop {
        let mut call = tonic::Request::new(request.clone());
        call.set_timeout(Duration::from_secs(10));
        user.attach(&mut call)?;
        match client.check_in(call).await {
            Ok(answer) => return Ok(answer.into_inner()),
            Err(e) => match cpis_runtime::error::retry_delay(&e, Duration::from_secs(1)) {
                Some(delay) if attempt < CHECK_IN_ATTEMPTS => {
                    eprintln!(
                        "check-in: {} ({:?}); retrying in {delay:?} with the same request id",
                        e.message(),
                        e.code()
                    );
                    tokio::time::sleep(delay).await;
                    attempt += 1;
                }
                _ => return Err(status_error(e)),
            },
        }
    }
}

/// How often `cpis check-in` asks before giving up on transient failures.
const CHECK_IN_ATTEMPTS: u32 = 3;

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
        ..Default::default()
    });
    request.set_timeout(Duration::from_secs(10));
    args.user.attach(&mut request)?;
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
