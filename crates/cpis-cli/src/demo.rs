//! `cpis demo`: the story of DOMAIN.md, end to end against a running suite,
//! narrated as each party sees it. Exits non-zero unless every step saw what
//! it should.

use crate::client::{alert_json, check_in_once, describe_check_in, Connection};
use crate::users::UserToken;
use anyhow::{bail, ensure, Context as _};
use cpis_devkit::users::{DevUsers, TokenSpec};
use cpis_domain::identity::{Caller, CallerKind};
use cpis_domain::user::VIEW_FLAG_NOTIFYING;
use cpis_proto::common::v1::{ContactDetails, PlanType, SettingType};
use cpis_proto::notification::v1::{
    notification_service_client::NotificationServiceClient, subscribe_response::Event, Alert, AlertPriority,
    SubscribeRequest,
};
use cpis_proto::registry::v1::{
    registry_service_client::RegistryServiceClient, ListPlansRequest, Plan, SyncCompletion, SyncPlansRequest,
    UpsertPlanRequest,
};
use std::time::Duration;
use tokio::sync::mpsc;

const MANCHESTER: &str = "E08000003";
const LIVERPOOL: &str = "E08000012";
const KENT: &str = "E10000016";

/// A fresh valid NHS number in the test range (999...), different on every run.
fn fresh_nhs_number(salt: u64) -> String {
    let base = (chrono::Utc::now().timestamp_micros() as u64).wrapping_add(salt * 7919);
    (0..20u64)
        .find_map(|i| cpis_domain::validate::with_nhs_check_digit(&format!("999{:06}", (base + i) % 1_000_000)))
        .expect("a check digit exists for one of any two consecutive numbers")
}

fn contact(team: &str, office: &str, duty: &str, email: &str) -> Option<ContactDetails> {
    Some(ContactDetails {
        team_name: team.into(),
        office_phone: office.into(),
        emergency_duty_phone: duty.into(),
        email: email.into(),
    })
}

async fn register(conn: &Connection, council: &str, plan: Plan) -> anyhow::Result<()> {
    let me = Caller::from_parts(CallerKind::Council, council)?;
    let mut client = RegistryServiceClient::new(conn.channel(0, &me)?);
    client
        .upsert_plan(UpsertPlanRequest { plan: Some(plan), expected_version: 0 })
        .await
        .map_err(|e| anyhow::anyhow!("registering a plan failed: {:?}: {}", e.code(), e.message()))?;
    Ok(())
}

/// Sends `council`'s complete list through `SyncPlans`: its open plans as
/// stored, plus `new_plan`, then the completion message. Nothing may end.
async fn sync_complete_list(conn: &Connection, council: &str, new_plan: Plan) -> anyhow::Result<()> {
    let me = Caller::from_parts(CallerKind::Council, council)?;
    let mut client = RegistryServiceClient::new(conn.channel(0, &me)?);
    let mut plans = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = client
            .list_plans(ListPlansRequest { page_size: 1000, page_token, include_ended: false })
            .await
            .map_err(|e| anyhow::anyhow!("listing plans failed: {:?}: {}", e.code(), e.message()))?
            .into_inner();
        plans.extend(page.plans);
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    plans.push(new_plan);
    let plan_rows = plans.len() as i64;
    let mut rows: Vec<SyncPlansRequest> =
        plans.into_iter().map(|p| SyncPlansRequest { plan: Some(p), ..Default::default() }).collect();
    rows.push(SyncPlansRequest { completion: Some(SyncCompletion { plan_rows }), ..Default::default() });
    let r = client
        .sync_plans(tokio_stream::iter(rows))
        .await
        .map_err(|e| anyhow::anyhow!("SyncPlans failed: {:?}: {}", e.code(), e.message()))?
        .into_inner();
    println!(
        "    SyncPlans: received {}, created {}, updated {}, unchanged {}, ended {}, rejected {}",
        r.received, r.created, r.updated, r.unchanged, r.ended, r.rejected
    );
    ensure!(r.created == 1 && r.ended == 0 && r.rejected == 0, "the upload should create one plan and end none");
    Ok(())
}

/// Holds Manchester's subscription open and hands over alerts as they arrive.
async fn subscribe(conn: &Connection, council: &str) -> anyhow::Result<mpsc::Receiver<Alert>> {
    let me = Caller::from_parts(CallerKind::Council, council)?;
    let mut client = NotificationServiceClient::new(conn.channel(2, &me)?);
    let mut stream = client.subscribe(SubscribeRequest { after_sequence: 0, replay: false }).await?.into_inner();
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        while let Ok(Some(msg)) = stream.message().await {
            if let Some(Event::Alert(a)) = msg.event {
                if tx.send(a).await.is_err() {
                    break;
                }
            }
        }
    });
    Ok(rx)
}

/// Waits for the alert about `nhs_number`, skipping older ones.
async fn alert_for(rx: &mut mpsc::Receiver<Alert>, nhs_number: &str) -> anyhow::Result<Alert> {
    let wait = async {
        while let Some(a) = rx.recv().await {
            if a.nhs_number == nhs_number {
                return Some(a);
            }
        }
        None
    };
    tokio::time::timeout(Duration::from_secs(20), wait)
        .await
        .context("no alert arrived within 20 s")?
        .context("the subscription closed")
}

/// A person at `setting` signed in with a role carrying `activities`: a
/// development token from `cpis dev`'s identity provider (what
/// `cpis users token` prints), as a clinical system holds its user's CIS2 token.
fn person(
    conn: &Connection,
    setting: &str,
    name: &str,
    job_role: &str,
    activities: &[&str],
) -> anyhow::Result<UserToken> {
    let spec = TokenSpec { name: name.into(), job_role: job_role.into(), ..TokenSpec::new(setting, activities) };
    let token = DevUsers::new(&conn.state_dir).token(&spec).context("a development user token (cpis users token)")?;
    Ok(UserToken::new(token.token, token.role_id))
}

fn say(party: &str, text: &str) {
    println!("\n[{party}] {text}");
}

/// Runs the story.
pub async fn run(conn: Connection) -> anyhow::Result<()> {
    let child = fresh_nhs_number(1);
    let other_child = fresh_nhs_number(2);
    let mother = fresh_nhs_number(3);
    let run_id = &uuid::Uuid::new_v4().simple().to_string()[..8];

    say("Manchester", &format!("registers a child on a child protection plan (NHS number {child})."));
    register(
        &conn,
        MANCHESTER,
        Plan {
            local_reference: format!("MCR-DEMO-{run_id}"),
            nhs_number: child.clone(),
            date_of_birth: "2019-05-14".into(),
            plan_type: PlanType::ChildProtection as i32,
            start_date: "2026-02-02".into(),
            contact: contact(
                "Manchester Children's Services Front Door",
                "0161 234 5001",
                "0161 255 8250",
                "mcsreply@manchester.example.gov.uk",
            ),
            ..Default::default()
        },
    )
    .await?;
    say("Liverpool", &format!("registers a looked-after child (NHS number {other_child})."));
    register(
        &conn,
        LIVERPOOL,
        Plan {
            local_reference: format!("LPL-DEMO-{run_id}"),
            nhs_number: other_child.clone(),
            date_of_birth: "2012-11-03".into(),
            plan_type: PlanType::LookedAfter as i32,
            start_date: "2025-09-01".into(),
            contact: contact(
                "Liverpool Careline",
                "0151 233 3700",
                "0151 233 3700",
                "careline@liverpool.example.gov.uk",
            ),
            ..Default::default()
        },
    )
    .await?;
    say(
        "Kent",
        &format!(
            "uploads its complete register with SyncPlans, now including an unborn child protection plan \
             against a pregnant woman's NHS number ({mother}); the upload ends with a completion message \
             stating how many rows it sent, so a cut-off upload could never end plans."
        ),
    );
    sync_complete_list(
        &conn,
        KENT,
        Plan {
            local_reference: format!("KNT-DEMO-{run_id}"),
            nhs_number: mother.clone(),
            plan_type: PlanType::UnbornChildProtection as i32,
            start_date: "2026-08-20".into(),
            expected_delivery_date: "2027-02-10".into(),
            contact: contact(
                "Kent Integrated Children's Services",
                "03000 41 11 11",
                "03000 41 91 91",
                "social.services@kent.example.gov.uk",
            ),
            ..Default::default()
        },
    )
    .await?;

    say("Manchester", "holds its alert subscription open.");
    let mut alerts = subscribe(&conn, MANCHESTER).await?;

    say("Liverpool emergency department (REM01)", "checks in the Manchester child. The receptionist sees:");
    let receptionist = person(&conn, "REM01", "Sam Receptionist (demo)", "R8009", &[VIEW_FLAG_NOTIFYING])?;
    let first = check_in_once(&conn, "REM01", &child, SettingType::EmergencyDepartment, &receptionist, None).await?;
    print!("{}", describe_check_in(&first));
    ensure!(first.flagged, "the child should be flagged");
    ensure!(
        first.flags.iter().any(|f| f.council_code == MANCHESTER && f.council_name == "Manchester"),
        "the flag should name Manchester"
    );

    let alert = alert_for(&mut alerts, &child).await?;
    say("Manchester", "its case system receives the alert:");
    println!("{}", serde_json::to_string_pretty(&alert_json(&alert))?);
    ensure!(alert.priority == AlertPriority::Routine as i32, "the first attendance is routine");
    ensure!(alert.episode.as_ref().is_some_and(|e| e.setting_code == "REM01"), "the alert should say where");
    ensure!(
        alert
            .viewer
            .as_ref()
            .is_some_and(|v| v.verified && v.name == "Sam Receptionist (demo)" && v.job_role_code == "R8009"),
        "the alert should name the verified person who looked, and their job role"
    );

    say("Urgent treatment centre (RWJ01)", "two weeks later in real life, seconds here: the same child again.");
    let triage = person(&conn, "RWJ01", "Alex Triage Nurse (demo)", "R8001", &[VIEW_FLAG_NOTIFYING])?;
    let second = check_in_once(&conn, "RWJ01", &child, SettingType::UrgentTreatmentCentre, &triage, None).await?;
    ensure!(second.previous_episodes.len() == 1, "the UTC should see the ED visit");
    print!("{}", describe_check_in(&second));
    let alert2 = alert_for(&mut alerts, &child).await?;
    println!(
        "[Manchester] alert {} priority {}",
        alert2.sequence,
        AlertPriority::try_from(alert2.priority).map(|p| p.as_str_name()).unwrap_or("?")
    );

    say("Minor injury unit (RVY01)", "and a third time, at a third place.");
    let nurse = person(&conn, "RVY01", "Jo Nurse (demo)", "R8001", &[VIEW_FLAG_NOTIFYING])?;
    let third = check_in_once(&conn, "RVY01", &child, SettingType::MinorInjuryUnit, &nurse, None).await?;
    ensure!(third.previous_episodes.len() == 2, "the MIU should see both earlier visits");
    print!("{}", describe_check_in(&third));
    let alert3 = alert_for(&mut alerts, &child).await?;
    say("Manchester", "receives a REPEAT ATTENDANCE alert: three attendances in 30 days, three places.");
    println!("{}", serde_json::to_string_pretty(&alert_json(&alert3))?);
    ensure!(
        alert3.priority == AlertPriority::RepeatAttendance as i32,
        "the third attendance should raise a repeat-attendance alert"
    );

    say("Walk-in centre (RBQ01)", "an unconscious young woman is brought in. Checking her in shows:");
    let reception = person(&conn, "RBQ01", "Kim Receptionist (demo)", "R8009", &[VIEW_FLAG_NOTIFYING])?;
    let unborn = check_in_once(&conn, "RBQ01", &mother, SettingType::WalkInCentre, &reception, None).await?;
    print!("{}", describe_check_in(&unborn));
    let flag = unborn
        .flags
        .iter()
        .find(|f| f.plan_type == PlanType::UnbornChildProtection as i32)
        .context("the unborn child protection flag should be shown")?;
    ensure!(
        flag.council_name == "Kent" && flag.expected_delivery_date == "2027-02-10",
        "the flag should name Kent and the due date"
    );
    say(
        "Clinician",
        "she is pregnant, and her baby is on a protection plan: the treatment changes, and Kent is alerted.",
    );

    let not_flagged =
        check_in_once(&conn, "RBQ01", &fresh_nhs_number(4), SettingType::WalkInCentre, &reception, None).await?;
    if not_flagged.flagged {
        bail!("a person with no plan must not be flagged");
    }
    say("Walk-in centre (RBQ01)", "a person with no plan: no flag, and nothing about them is stored.");
    println!("\ndemo complete: every step saw what it should");
    Ok(())
}
