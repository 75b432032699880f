//! `cpis audit`: the history of accesses to a council's children's flags.

use super::*;
use clap::Args;
use cpis_proto::attendance::v1::{
    attendance_service_client::AttendanceServiceClient, ListAccessesRequest, ListEpisodesRequest,
};
use cpis_proto::common::v1::SettingType;
use serde_json::json;

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

/// The person who looked, as the audit and the alert stream print them.
pub fn viewer_json(v: &cpis_proto::common::v1::Viewer) -> serde_json::Value {
    json!({"verified": v.verified, "name": v.name, "user_id": v.user_id, "role_profile_id": v.role_profile_id,
           "job_role_code": v.job_role_code, "job_role_name": v.job_role_name,
           "organisation_code": v.organisation_code, "organisation_name": v.organisation_name})
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
                       "user_id": a.user_id, "viewer": a.viewer.as_ref().map(viewer_json),
                       "silent": a.silent, "episodes_read": a.episodes_read,
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
