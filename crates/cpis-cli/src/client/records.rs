//! Two records a council hears of without an attendance:
//! `cpis demographics record` (for operators and tests: one NHS number change
//! as the demographics feed's follower sends it, as `service/demographics`)
//! and `cpis was-not-brought` (a scheduled-care setting records a missed
//! appointment, with its person's token).

use super::*;
use crate::users::UserToken;
use anyhow::Context as _;
use clap::{Args, ValueEnum};
use cpis_domain::identity::ServiceName;
use cpis_proto::attendance::v1::{
    attendance_service_client::AttendanceServiceClient, RecordNhsNumberChangeRequest, RecordWasNotBroughtRequest,
};
use cpis_proto::common::v1::{NhsNumberChange, NhsNumberChangeKind};
use std::time::Duration;

/// What happened to a number.
#[derive(ValueEnum, Debug, Clone, Copy)]
pub enum ChangeKind {
    /// Superseded by a replacement (give --replacement).
    Superseded,
    /// Made inactive (no replacement).
    Inactive,
}

/// `cpis demographics record`
#[derive(Args, Debug)]
pub struct DemographicsRecordArgs {
    #[command(flatten)]
    conn: Connection,
    /// The NHS number that changed.
    #[arg(long = "nhs")]
    nhs_number: String,
    /// superseded or inactive.
    #[arg(long, value_enum)]
    kind: ChangeKind,
    /// The replacement of a superseded number.
    #[arg(long)]
    replacement: Option<String>,
    /// The change feed's id of the event (a repeat changes nothing).
    #[arg(long)]
    event_id: String,
    /// The day the change took effect, YYYY-MM-DD (default: today).
    #[arg(long)]
    effective_date: Option<String>,
}

/// Runs `cpis demographics record`: prints the plans reached and the councils alerted.
pub async fn demographics_record(args: DemographicsRecordArgs) -> anyhow::Result<()> {
    let me = cpis_domain::Caller::Service(ServiceName::Demographics);
    let mut client = AttendanceServiceClient::new(args.conn.channel(1, &me)?);
    let change = NhsNumberChange {
        nhs_number: args.nhs_number.clone(),
        kind: match args.kind {
            ChangeKind::Superseded => NhsNumberChangeKind::Superseded as i32,
            ChangeKind::Inactive => NhsNumberChangeKind::Inactive as i32,
        },
        replacement_nhs_number: args.replacement.clone().unwrap_or_default(),
        effective_date: args
            .effective_date
            .clone()
            .unwrap_or_else(|| cpis_domain::time::london_date(chrono::Utc::now()).to_string()),
        event_id: args.event_id.clone(),
    };
    let mut request = tonic::Request::new(RecordNhsNumberChangeRequest { change: Some(change) });
    request.set_timeout(Duration::from_secs(15));
    let answer = client.record_nhs_number_change(request).await.map_err(status_error)?.into_inner();
    println!(
        "{}",
        serde_json::json!({"event_id": args.event_id, "plans": answer.plans,
                           "councils_alerted": answer.councils_alerted, "repeated": answer.repeated})
    );
    Ok(())
}

/// `cpis was-not-brought`
#[derive(Args, Debug)]
pub struct WasNotBroughtArgs {
    #[command(flatten)]
    conn: Connection,
    /// The scheduled-care setting (ODS code) whose dev certificate to use.
    #[arg(long, default_value = "Y01234")]
    setting: String,
    /// NHS number of the child who was not brought.
    #[arg(long)]
    nhs_number: String,
    /// When the appointment was (RFC 3339, e.g. 2026-12-03T09:30:00Z); default: an hour ago.
    #[arg(long)]
    appointment_at: Option<String>,
    /// gp-practice (the default), community-services, camhs, zero-to-nineteen-services, dentistry, ...
    #[arg(long, default_value = "gp-practice")]
    setting_type: String,
    /// The person recording it: their token and role (`cpis users token`).
    #[command(flatten)]
    user: UserToken,
}

/// Runs `cpis was-not-brought`. The answer is the same whether or not the
/// child is flagged: a setting learns nothing about flags from it.
pub async fn was_not_brought(args: WasNotBroughtArgs) -> anyhow::Result<()> {
    let at = match &args.appointment_at {
        Some(text) => chrono::DateTime::parse_from_rfc3339(text)
            .with_context(|| format!("--appointment-at {text:?} is not an RFC 3339 time"))?
            .with_timezone(&chrono::Utc),
        None => chrono::Utc::now() - chrono::TimeDelta::hours(1),
    };
    let setting_type = parse_setting_type(&args.setting_type)
        .with_context(|| format!("unknown --setting-type {:?}", args.setting_type))?;
    let me = setting(&args.setting)?;
    let mut client = AttendanceServiceClient::new(args.conn.channel(1, &me)?);
    let mut request = tonic::Request::new(RecordWasNotBroughtRequest {
        request_id: uuid::Uuid::new_v4().to_string(),
        nhs_number: args.nhs_number.clone(),
        appointment_at: Some(cpis_domain::time::to_timestamp(at)),
        setting_type: setting_type as i32,
    });
    request.set_timeout(Duration::from_secs(10));
    args.user.attach(&mut request)?;
    client.record_was_not_brought(request).await.map_err(status_error)?;
    println!("recorded: if the child is on a plan, the responsible councils are told");
    Ok(())
}
