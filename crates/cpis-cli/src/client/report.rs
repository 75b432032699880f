//! `cpis report`: a council's figures for a range of months (its own), or
//! the national report for an analyst (every council's, counts of 1 to 4
//! withheld), put together from the three services: each computes its part
//! over its own schema (plans: Registry; check-ins, silent reads and missed
//! appointments: Attendance; alerts and acknowledgements: Notification).
//! JSON by default (withheld counts are `null`), CSV with `--csv` (`*`).

use super::*;
use clap::Args;
use cpis_proto::attendance::v1::{attendance_service_client::AttendanceServiceClient, ReportAccessesRequest};
use cpis_proto::common::v1::{Count, SettingType};
use cpis_proto::notification::v1::{
    notification_service_client::NotificationServiceClient, AlertKind, ReportAlertsRequest,
};
use cpis_proto::registry::v1::{registry_service_client::RegistryServiceClient, ReportPlansRequest};
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;

/// `cpis report`
#[derive(Args, Debug)]
pub struct ReportArgs {
    #[command(flatten)]
    conn: Connection,
    /// The council (GSS code) whose report, and whose dev certificate, to use.
    #[arg(long, default_value = "E08000003", conflicts_with = "analyst")]
    council: String,
    /// The national report, as this analyst (dev certificate `analyst-<CODE>`).
    #[arg(long)]
    analyst: Option<String>,
    /// The council's (or analyst's) certificate, instead of the dev PKI's (with --key, --ca).
    #[arg(long)]
    council_cert: Option<std::path::PathBuf>,
    /// First month, YYYY-MM.
    #[arg(long = "from")]
    from_month: String,
    /// Last month, YYYY-MM (at most 24 months after --from).
    #[arg(long = "to")]
    to_month: String,
    /// CSV (one row per council and month) instead of JSON.
    #[arg(long)]
    csv: bool,
}

/// Runs `cpis report`.
pub async fn report(args: ReportArgs) -> anyhow::Result<()> {
    let me = match &args.analyst {
        Some(code) => cpis_domain::Caller::from_parts(cpis_domain::CallerKind::Analyst, code)?,
        None => council(&args.council)?,
    };
    let mut conn = args.conn.clone();
    if args.council_cert.is_some() {
        conn.cert = args.council_cert.clone();
    }
    let (from_month, to_month) = (args.from_month.clone(), args.to_month.clone());
    let plans = RegistryServiceClient::new(conn.channel(0, &me)?)
        .report_plans(ReportPlansRequest { from_month: from_month.clone(), to_month: to_month.clone() })
        .await
        .map_err(status_error)?
        .into_inner();
    let accesses = AttendanceServiceClient::new(conn.channel(1, &me)?)
        .report_accesses(ReportAccessesRequest { from_month: from_month.clone(), to_month: to_month.clone() })
        .await
        .map_err(status_error)?
        .into_inner();
    let alerts = NotificationServiceClient::new(conn.channel(2, &me)?)
        .report_alerts(ReportAlertsRequest { from_month: from_month.clone(), to_month: to_month.clone() })
        .await
        .map_err(status_error)?
        .into_inner();

    let mut rows: BTreeMap<(String, String), Map<String, Value>> = BTreeMap::new();
    for p in &plans.months {
        let r = row(&mut rows, &p.council_code, &p.month);
        for (name, c) in [
            ("open_child_protection", &p.open_child_protection),
            ("open_looked_after", &p.open_looked_after),
            ("open_unborn", &p.open_unborn),
            ("plans_started", &p.started),
            ("plans_ended", &p.ended),
            ("plans_needing_nhs_number_action", &p.needing_action),
        ] {
            r.insert(name.into(), count(c));
        }
        r.insert("nhs_number_quality".into(), json!(p.nhs_number_quality));
    }
    for a in &accesses.months {
        let r = row(&mut rows, &a.council_code, &a.month);
        for (prefix, list) in [("check_ins", &a.check_ins), ("silent_reads", &a.silent_reads)] {
            for t in list {
                r.insert(format!("{prefix}_{}", setting_name(t.setting_type)), count(&t.count));
            }
        }
        r.insert("missed_appointments".into(), count(&a.missed_appointments));
    }
    for a in &alerts.months {
        let r = row(&mut rows, &a.council_code, &a.month);
        r.insert("alerts_sent".into(), count(&a.sent));
        r.insert("alerts_acknowledged".into(), count(&a.acknowledged));
        r.insert("median_seconds_to_acknowledge".into(), json!(a.median_seconds_to_acknowledge));
        r.insert("p95_seconds_to_acknowledge".into(), json!(a.p95_seconds_to_acknowledge));
        for k in &a.by_kind {
            let kind = AlertKind::try_from(k.kind).map(|k| k.as_str_name()).unwrap_or("ALERT_KIND_UNKNOWN");
            r.insert(format!("alerts_{}", kind.trim_start_matches("ALERT_KIND_").to_lowercase()), count(&k.count));
        }
    }
    let rows: Vec<Map<String, Value>> = rows.into_values().collect();
    if args.csv {
        print!("{}", csv(&rows));
    } else {
        let audience = if args.analyst.is_some() { json!("national") } else { json!(args.council) };
        let doc = json!({"from": from_month, "to": to_month, "audience": audience,
                         "withheld": "in the national report, counts of 1 to 4 are withheld (null)",
                         "rows": rows});
        println!("{}", serde_json::to_string_pretty(&doc)?);
    }
    Ok(())
}

/// The row of one council and month, made on first use.
fn row<'a>(
    rows: &'a mut BTreeMap<(String, String), Map<String, Value>>,
    council: &str,
    month: &str,
) -> &'a mut Map<String, Value> {
    rows.entry((council.to_string(), month.to_string())).or_insert_with(|| {
        let mut m = Map::new();
        m.insert("council_code".into(), json!(council));
        m.insert("month".into(), json!(month));
        m
    })
}

/// A count as JSON: its value, or `null` when withheld.
fn count(c: &Option<Count>) -> Value {
    match c {
        Some(Count { suppressed: true, .. }) => Value::Null,
        Some(c) => json!(c.value),
        None => json!(0),
    }
}

fn setting_name(t: i32) -> String {
    SettingType::try_from(t)
        .map(|t| t.as_str_name().trim_start_matches("SETTING_TYPE_").to_lowercase())
        .unwrap_or_else(|_| format!("type_{t}"))
}

/// The rows as CSV: every column any row has, `*` for a withheld count, empty for none.
fn csv(rows: &[Map<String, Value>]) -> String {
    let mut columns: Vec<String> = vec!["council_code".into(), "month".into()];
    for r in rows {
        for k in r.keys() {
            if !columns.contains(k) {
                columns.push(k.clone());
            }
        }
    }
    let mut out = columns.join(",");
    out.push('\n');
    for r in rows {
        let cells: Vec<String> = columns
            .iter()
            .map(|c| match r.get(c) {
                None => "0".to_string(),
                Some(Value::Null) if c.contains("quality") || c.contains("seconds") => String::new(),
                Some(Value::Null) => "*".to_string(),
                Some(Value::String(s)) => s.clone(),
                Some(v) => v.to_string(),
            })
            .collect();
        out.push_str(&cells.join(","));
        out.push('\n');
    }
    out
}
