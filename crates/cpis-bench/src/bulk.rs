//! (6) bulk SyncPlans: one council's national-size list, first upload and
//! re-send, with the Registry's peak memory; and the ceiling it is judged
//! against, a plain `COPY` of the same rows into a table like
//! `registry.plans` (same columns, constraints and indexes), in the same run.

use super::data;
use super::procs::{RssSampler, Services};
use super::report::{mb, BulkPass, CopyCeiling};
use super::{progress, Ctx};
use anyhow::Context as _;
use bytes::Bytes;
use cpis_proto::registry::v1::Plan;
use futures::SinkExt as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The council whose national-size list is synced.
pub const BULK_COUNCIL: &str = "E10000016";

/// The bulk council's complete list: its registered plans, then new ones up
/// to the bulk size.
fn bulk_list(ctx: &Ctx, registered: &[data::Segment<'_>]) -> anyhow::Result<Vec<Plan>> {
    let council = ctx.councils.iter().position(|c| c == BULK_COUNCIL).context("the bulk council is not listed")?;
    let mut plans = data::council_plans(council, ctx.councils.len(), registered);
    let new = ctx.shape.bulk_rows.saturating_sub(plans.len());
    plans.extend((0..new).map(|j| data::plan(format!("KNT-BULK-{j:07}"), ctx.people.bulk[j].clone(), j)));
    Ok(plans)
}

/// Runs (6): the COPY ceiling, then the two passes.
pub async fn bulk_sync(
    ctx: &Ctx,
    services: &Services,
    registered: &[data::Segment<'_>],
) -> anyhow::Result<(CopyCeiling, Vec<BulkPass>)> {
    let list = Arc::new(bulk_list(ctx, registered)?);
    let ceiling = copy_ceiling(&ctx.db, &list).await?;
    progress(&format!(
        "(6) ceiling: COPY of {} plan rows into a table like registry.plans in {:.1} s = {:.0}/s",
        ceiling.rows, ceiling.seconds, ceiling.rows_per_sec
    ));
    data::settle(&ctx.db).await?;
    let channel = ctx.net.council(ctx.registry_port, BULK_COUNCIL)?;
    let mut passes = Vec::new();
    for pass in ["first upload", "re-send"] {
        let rows = list.len();
        let plans = {
            let list = list.clone();
            (0..rows).map(move |i| list[i].clone())
        };
        let registry = &services.registry;
        let registry_rss_before_kib = registry.rss_kib().unwrap_or(0);
        let reset = registry.reset_peak();
        let sampler = RssSampler::start(services, Duration::from_millis(50));
        // --perf: the first seconds of the first upload (its length is not known in advance).
        let recording = match &ctx.profiler {
            Some(p) if pass == "first upload" => {
                Some(p.window("bulk-first-upload", Duration::from_millis(300), Duration::from_secs(4)))
            }
            _ => None,
        };
        let t = Instant::now();
        let r = tokio::time::timeout(Duration::from_secs(600), data::sync(channel.clone(), plans))
            .await
            .context("the bulk SyncPlans took over 600 s")??;
        let seconds = t.elapsed().as_secs_f64();
        if let Some(recording) = recording {
            let _ = recording.await;
        }
        let peak = sampler.finish().await;
        let result = BulkPass {
            pass,
            rows,
            seconds,
            plans_per_sec: rows as f64 / seconds,
            created: r.created,
            updated: r.updated,
            unchanged: r.unchanged,
            ended: r.ended,
            registry_rss_before_kib,
            registry_rss_peak_sampled_kib: peak.registry_kib,
            registry_rss_peak_hwm_kib: if reset { registry.peak_kib().unwrap_or(0) } else { 0 },
        };
        progress(&format!(
            "(6) {pass}: {rows} plans in {seconds:.1} s = {:.0}/s (created {}, unchanged {}); registry peak RSS {:.1} MB",
            result.plans_per_sec,
            r.created,
            r.unchanged,
            mb(result.registry_rss_peak_hwm_kib.max(result.registry_rss_peak_sampled_kib))
        ));
        passes.push(result);
        data::settle(&ctx.db).await?;
    }
    Ok((ceiling, passes))
}

/// One plan as a COPY text row of `registry.plans`' columns.
fn copy_row(council: &str, p: &Plan, out: &mut String) {
    let contact = p.contact.clone().unwrap_or_default();
    let dob = if p.date_of_birth.is_empty() { "\\N" } else { p.date_of_birth.as_str() };
    out.push_str(&format!(
        "{}\t{council}\t{}\t{}\t{dob}\t{}\t{}\t{}\t{}\t{}\t{}\t1\n",
        uuid::Uuid::new_v4(),
        p.local_reference,
        p.nhs_number,
        p.plan_type,
        p.start_date,
        contact.team_name,
        contact.office_phone,
        contact.emergency_duty_phone,
        contact.email
    ));
}

/// A plain `COPY` of `plans` into `bench.plans_copy`, created `LIKE
/// registry.plans INCLUDING ALL` (columns, defaults, constraints, indexes),
/// timed from the statement to its end, text rows made on the fly as a
/// client would; the table is dropped afterwards.
async fn copy_ceiling(db: &tokio_postgres::Client, plans: &[Plan]) -> anyhow::Result<CopyCeiling> {
    db.batch_execute(
        "CREATE SCHEMA IF NOT EXISTS bench;
         DROP TABLE IF EXISTS bench.plans_copy;
         CREATE TABLE bench.plans_copy (LIKE registry.plans INCLUDING ALL);
         CHECKPOINT",
    )
    .await?;
    let t = Instant::now();
    let sink = db
        .copy_in(
            "COPY bench.plans_copy (plan_id, council_code, local_reference, nhs_number, date_of_birth, plan_type,
                 start_date, team_name, office_phone, emergency_duty_phone, email, version) FROM STDIN",
        )
        .await?;
    futures::pin_mut!(sink);
    let mut buf = String::with_capacity(1 << 20);
    for p in plans {
        copy_row(BULK_COUNCIL, p, &mut buf);
        if buf.len() > (1 << 20) - 512 {
            sink.send(Bytes::from(std::mem::take(&mut buf))).await?;
            buf.reserve(1 << 20);
        }
    }
    if !buf.is_empty() {
        sink.send(Bytes::from(buf)).await?;
    }
    let rows = sink.finish().await.context("COPY into bench.plans_copy")?;
    let seconds = t.elapsed().as_secs_f64();
    db.batch_execute("DROP TABLE bench.plans_copy; CHECKPOINT").await?;
    Ok(CopyCeiling { rows, seconds, rows_per_sec: rows as f64 / seconds })
}
