//! `cpis purge`: applies the retention periods of one service (or all three)
//! to its schema, printing what it removed (or, with `--dry-run`, would
//! remove) per kind of record. Run by a Kubernetes CronJob; each purge is
//! recorded in the service's `<schema>.purges` table.

use anyhow::Context as _;
use clap::Args;
use cpis_domain::identity::ServiceName;
use cpis_runtime::retention::Purged;

/// Arguments of `cpis purge`.
#[derive(Args, Debug)]
pub struct PurgeArgs {
    /// registry, attendance, notification or all.
    pub service: String,
    /// Count what would be removed, change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// PostgreSQL connection string (as `cpis serve`).
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// A file holding the connection string (e.g. a mounted Secret's `uri`).
    #[arg(long, env = "DATABASE_URL_FILE")]
    pub database_url_file: Option<std::path::PathBuf>,
    /// Ended plans (from the end date) and deleted plans (from the deletion), with their history.
    #[arg(long, env = "CPIS_RETAIN_ENDED_PLANS_DAYS", default_value_t = cpis_registry::retention::Retention::default().ended_plans_days)]
    pub ended_plans_days: u32,
    /// Episodes of flagged people, from the arrival.
    #[arg(long, env = "CPIS_RETAIN_EPISODES_DAYS", default_value_t = cpis_attendance::retention::Retention::default().episodes_days)]
    pub episodes_days: u32,
    /// Accesses to flags (the audit trail), from the access.
    #[arg(long, env = "CPIS_RETAIN_ACCESSES_DAYS", default_value_t = cpis_attendance::retention::Retention::default().accesses_days)]
    pub accesses_days: u32,
    /// Request replay records (first answers kept for retries), from the request.
    #[arg(long, env = "CPIS_RETAIN_REQUESTS_DAYS", default_value_t = cpis_attendance::retention::Retention::default().requests_days)]
    pub requests_days: u32,
    /// Delivered alerts' outbox copies, from the delivery.
    #[arg(long, env = "CPIS_RETAIN_DELIVERED_OUTBOX_DAYS", default_value_t = cpis_attendance::retention::Retention::default().delivered_outbox_days)]
    pub delivered_outbox_days: u32,
    /// Acknowledged alerts, from their creation.
    #[arg(long, env = "CPIS_RETAIN_ALERTS_DAYS", default_value_t = cpis_notification::retention::Retention::default().alerts_days)]
    pub alerts_days: u32,
}

/// Runs `cpis purge`.
pub async fn run(args: PurgeArgs) -> anyhow::Result<()> {
    let services: Vec<ServiceName> = match args.service.as_str() {
        "all" => vec![ServiceName::Registry, ServiceName::Attendance, ServiceName::Notification],
        other => vec![ServiceName::parse(other).with_context(|| {
            format!("unknown service {other:?}: expected registry, attendance, notification or all")
        })?],
    };
    let url = cpis_runtime::db_tls::required_url_from(args.database_url.clone(), args.database_url_file.as_deref())?;
    let pool = cpis_runtime::db::pool(&url, 2)?;
    for service in services {
        let purged = purge(&pool, service, &args).await?;
        for Purged { kind, count } in purged {
            let verb = if args.dry_run { "would purge" } else { "purged" };
            println!("{}: {verb} {count} {kind}", service.as_str());
        }
    }
    Ok(())
}

/// Purges one service's records past retention.
pub async fn purge(
    pool: &cpis_runtime::db::DbPool,
    service: ServiceName,
    args: &PurgeArgs,
) -> anyhow::Result<Vec<Purged>> {
    match service {
        ServiceName::Registry => {
            let retention = cpis_registry::retention::Retention { ended_plans_days: args.ended_plans_days };
            cpis_registry::retention::purge(pool, retention, args.dry_run).await
        }
        ServiceName::Attendance => {
            let retention = cpis_attendance::retention::Retention {
                episodes_days: args.episodes_days,
                accesses_days: args.accesses_days,
                requests_days: args.requests_days,
                delivered_outbox_days: args.delivered_outbox_days,
            };
            cpis_attendance::retention::purge(pool, retention, args.dry_run).await
        }
        ServiceName::Notification => {
            let retention = cpis_notification::retention::Retention { alerts_days: args.alerts_days };
            cpis_notification::retention::purge(pool, retention, args.dry_run).await
        }
        ServiceName::Demographics => anyhow::bail!("the demographics feed keeps no schema of its own"),
    }
}
