//! Test data of `cpis bench`: NHS numbers from the 999 range, plans, the
//! councils of England, and the ways the register is filled (SyncPlans
//! through the service, or COPY straight into the table for setup only).

use anyhow::{ensure, Context as _};
use cpis_proto::common::v1::{ContactDetails, PlanType};
use cpis_proto::registry::v1::{
    registry_service_client::RegistryServiceClient, Plan, SyncCompletion, SyncPlansRequest,
};
use std::sync::atomic::{AtomicUsize, Ordering};
use tonic::transport::Channel;

const COUNCILS_CSV: &str = include_str!("../../cpis-registry/data/councils.csv");

/// The GSS codes of the 153 upper-tier councils of England, in file order.
pub fn councils() -> Vec<String> {
    COUNCILS_CSV.lines().skip(1).filter_map(|l| l.split_once(',')).map(|(code, _)| code.to_string()).collect()
}

/// The test NHS number `999` + `k` (six digits) + its check digit, or
/// `None` when no check digit exists for it (one prefix in eleven).
pub fn nhs_number(k: u32) -> Option<String> {
    cpis_domain::validate::with_nhs_check_digit(&format!("999{:06}", k % 1_000_000))
}

/// How many people of each kind the run needs.
#[derive(Debug, Clone, Copy)]
pub struct PeopleSizes {
    /// Never registered: the not-flagged check-ins.
    pub unregistered: usize,
    /// The first register (the small end of the scaling comparison).
    pub first: usize,
    /// Registered next, across all councils: the flagged check-ins.
    pub working: usize,
    /// The bulk council's new plans.
    pub bulk: usize,
}

/// The NHS numbers of the run, disjoint by role. The 999 range holds about
/// 909,000 valid numbers, so filler plans (setup only) share numbers.
#[derive(Debug)]
pub struct People {
    /// Never registered.
    pub unregistered: Vec<String>,
    /// The first register.
    pub first: Vec<String>,
    /// The working register.
    pub working: Vec<String>,
    /// The bulk council's new plans.
    pub bulk: Vec<String>,
    /// Everything left, for filler plans.
    pub filler: Vec<u32>,
}

impl People {
    /// Splits the valid numbers of the 999 range by role, in order.
    pub fn new(sizes: PeopleSizes) -> anyhow::Result<People> {
        let mut valid = (0..1_000_000u32).filter(|&k| nhs_number(k).is_some());
        let mut take = |n: usize| -> Vec<String> { valid.by_ref().take(n).filter_map(nhs_number).collect() };
        let unregistered = take(sizes.unregistered);
        let first = take(sizes.first);
        let working = take(sizes.working);
        let bulk = take(sizes.bulk);
        ensure!(bulk.len() == sizes.bulk, "the 999 range is too small for {sizes:?}");
        let filler: Vec<u32> = valid.collect();
        ensure!(!filler.is_empty(), "no NHS numbers left for filler plans");
        Ok(People { unregistered, first, working, bulk, filler })
    }
}

/// A valid plan, as a council's case system would send it: children on
/// child protection plans and looked-after children, alternately.
pub fn plan(reference: String, nhs_number: String, n: usize) -> Plan {
    let plan_type = if n.is_multiple_of(2) { PlanType::ChildProtection } else { PlanType::LookedAfter };
    Plan {
        local_reference: reference,
        nhs_number,
        date_of_birth: "2016-04-02".into(),
        plan_type: plan_type as i32,
        start_date: "2025-01-10".into(),
        contact: Some(ContactDetails {
            team_name: "Children's Services Front Door".into(),
            office_phone: "0161 234 5000".into(),
            emergency_duty_phone: "0161 255 8250".into(),
            email: "mash@example.gov.uk".into(),
        }),
        ..Default::default()
    }
}

/// A group of registered people: person `i` has one plan, reference
/// `<prefix>-<i>`, held by council `i mod councils`.
#[derive(Debug, Clone, Copy)]
pub struct Segment<'a> {
    /// Case reference prefix.
    pub prefix: &'a str,
    /// Their NHS numbers.
    pub people: &'a [String],
}

/// The plans of `council` (by index among `n_councils`) in `segments`.
pub fn council_plans(council: usize, n_councils: usize, segments: &[Segment<'_>]) -> Vec<Plan> {
    let mut plans = Vec::new();
    for s in segments {
        for (i, nhs) in s.people.iter().enumerate().skip(council).step_by(n_councils) {
            plans.push(plan(format!("{}-{i:07}", s.prefix), nhs.clone(), i));
        }
    }
    plans
}

/// Streams `plans` through `SyncPlans` as the council of `channel`'s
/// certificate; fails unless every row was accepted.
pub async fn sync(
    channel: Channel,
    plans: impl Iterator<Item = Plan> + Send + 'static,
) -> anyhow::Result<cpis_proto::registry::v1::SyncPlansResponse> {
    let (tx, rx) = tokio::sync::mpsc::channel::<SyncPlansRequest>(1024);
    let producer = tokio::spawn(async move {
        let mut plan_rows = 0;
        for p in plans {
            plan_rows += 1;
            if tx.send(SyncPlansRequest { plan: Some(p), ..Default::default() }).await.is_err() {
                return;
            }
        }
        let completion = Some(SyncCompletion { plan_rows });
        let _ = tx.send(SyncPlansRequest { completion, ..Default::default() }).await;
    });
    let mut client = RegistryServiceClient::new(channel).max_decoding_message_size(64 << 20);
    let result = client.sync_plans(tokio_stream::wrappers::ReceiverStream::new(rx)).await;
    let _ = producer.await;
    let r = result.map_err(|s| Refused { code: s.code(), message: s.message().to_string() })?.into_inner();
    ensure!(r.rejected == 0, "SyncPlans rejected {} rows, e.g. {:?}", r.rejected, r.rejections.first());
    Ok(r)
}

/// A `SyncPlans` the Registry answered with an error status.
#[derive(Debug)]
pub struct Refused {
    /// The status code.
    pub code: tonic::Code,
    /// Its message (the services never put personal data in one).
    pub message: String,
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SyncPlans: {:?}: {}", self.code, self.message)
    }
}

impl std::error::Error for Refused {}

impl Refused {
    /// True when `e` is a refusal a council retries with backoff (the
    /// Registry busy with other councils' work).
    pub fn is_transient(e: &anyhow::Error) -> bool {
        e.downcast_ref::<Refused>().is_some_and(|r| {
            matches!(r.code, tonic::Code::Unavailable | tonic::Code::ResourceExhausted | tonic::Code::Aborted)
        })
    }
}

/// Registers `segments` for every council with one `SyncPlans` each (each
/// council's complete list), `parallel` councils at a time.
pub async fn register(
    channel_for: impl Fn(&str) -> anyhow::Result<Channel>,
    councils: &[String],
    segments: &[Segment<'_>],
    parallel: usize,
) -> anyhow::Result<u64> {
    let next = AtomicUsize::new(0);
    let mut jobs = Vec::new();
    for (i, code) in councils.iter().enumerate() {
        jobs.push((channel_for(code)?, council_plans(i, councils.len(), segments)));
    }
    let jobs = std::sync::Mutex::new(jobs.into_iter().map(Some).collect::<Vec<_>>());
    let worker = || async {
        let mut created = 0u64;
        loop {
            let i = next.fetch_add(1, Ordering::Relaxed);
            let job = {
                let mut jobs = jobs.lock().map_err(|_| anyhow::anyhow!("register: lock poisoned"))?;
                match jobs.get_mut(i) {
                    Some(slot) => slot.take(),
                    None => return Ok::<u64, anyhow::Error>(created),
                }
            };
            if let Some((channel, plans)) = job {
                created += sync(channel, plans.into_iter()).await?.created as u64;
            }
        }
    };
    let results = futures::future::join_all((0..parallel.max(1)).map(|_| worker())).await;
    let mut created = 0;
    for r in results {
        created += r?;
    }
    Ok(created)
}

/// A direct connection to the benchmark's database (setup and observation
/// only; the services are measured through their contract).
pub async fn connect(url: &str) -> anyhow::Result<tokio_postgres::Client> {
    cpis_runtime::db::connect(url).await
}

/// Fills the register up to `total` plans through the Registry's own
/// seeding function (`cpis_registry::seed::copy_plans`: COPY with each
/// plan's `created` history row): filler plans spread over every council,
/// sharing the numbers left in the 999 range, each validated as the service
/// validates a plan. Setup, not a measurement: it bypasses the service's
/// gate. Returns the plans added.
pub async fn fill_register(
    db: &tokio_postgres::Client,
    councils: &[String],
    filler: &[u32],
    total: u64,
) -> anyhow::Result<u64> {
    use cpis_registry::seed::{copy_plans, SeedPlan};
    let have = cpis_registry::seed::plan_count(db).await?;
    let missing = total.saturating_sub(have as u64) as usize;
    if missing == 0 {
        return Ok(0);
    }
    let today = chrono::Utc::now().date_naive();
    let mut seeds = Vec::with_capacity(missing);
    for f in 0..missing {
        let nhs = nhs_number(filler[f % filler.len()]).context("filler numbers are valid")?;
        let wire = plan(format!("FILL-{f:07}"), nhs, f);
        let plan = cpis_registry::model::validate_plan(Some(&wire), "plan", today)
            .map_err(|v| anyhow::anyhow!("a filler plan is invalid: {:?}", v.list()))?;
        seeds.push(SeedPlan { council_code: councils[f % councils.len()].clone(), plan });
    }
    copy_plans(db, seeds, "bench/setup").await
}

/// Makes the database state steady before a measurement: fresh planner
/// statistics and visibility maps for every table (the services' cached
/// plans are made again from them), and a checkpoint, so that neither
/// autovacuum, a checkpoint triggered by the setup's writes, nor a plan made
/// while a table was still empty (a sequential scan of what has since grown:
/// the replay look-up and the relay's settle, seen under `auto_explain` in
/// (7)) lands inside the measured window.
pub async fn settle(db: &tokio_postgres::Client) -> anyhow::Result<()> {
    db.batch_execute("VACUUM ANALYZE").await?;
    db.batch_execute("CHECKPOINT").await?;
    Ok(())
}

/// Waits until the attendance outbox has delivered everything, at most
/// `limit`. Returns the seconds waited and whether it emptied.
pub async fn drain_outbox(db: &tokio_postgres::Client, limit: std::time::Duration) -> anyhow::Result<(f64, bool)> {
    let start = std::time::Instant::now();
    loop {
        let pending = outbox_pending(db).await?;
        if pending == 0 {
            return Ok((start.elapsed().as_secs_f64(), true));
        }
        if start.elapsed() > limit {
            return Ok((start.elapsed().as_secs_f64(), false));
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
}

/// Alerts the Notification service has stored, all councils together.
pub async fn alerts_stored(db: &tokio_postgres::Client) -> anyhow::Result<i64> {
    Ok(db
        .query_one("SELECT coalesce(sum(last_sequence), 0)::bigint FROM notification.council_sequences", &[])
        .await?
        .get(0))
}

/// Alerts queued in the attendance outbox and not yet delivered.
pub async fn outbox_pending(db: &tokio_postgres::Client) -> anyhow::Result<i64> {
    Ok(db.query_one("SELECT count(*) FROM attendance.outbox WHERE delivered_at IS NULL", &[]).await?.get(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_valid_and_roles_disjoint() {
        assert_eq!(nhs_number(0), None, "243 mod 11 gives check digit 10");
        assert_eq!(nhs_number(1).as_deref(), Some("9990000018"));
        let valid = (0..1_000_000u32).filter(|&k| nhs_number(k).is_some()).count();
        assert!(valid > 900_000, "{valid}");
        let people =
            People::new(PeopleSizes { unregistered: 100, first: 100, working: 100, bulk: 100 }).expect("people");
        let mut all: Vec<&String> =
            people.unregistered.iter().chain(&people.first).chain(&people.working).chain(&people.bulk).collect();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), 400);
        assert!(all.iter().all(|n| cpis_domain::validate::NhsNumber::parse(n).is_some()));
    }

    #[test]
    fn every_council_is_listed_once_and_every_person_has_one_council() {
        let c = councils();
        assert_eq!(c.len(), 153);
        let people: Vec<String> = (0..1000).filter_map(nhs_number).collect();
        let seg = Segment { prefix: "A", people: &people };
        let total: usize = (0..c.len()).map(|i| council_plans(i, c.len(), &[seg]).len()).sum();
        assert_eq!(total, people.len());
    }
}
