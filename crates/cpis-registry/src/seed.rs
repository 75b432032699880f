//! Bulk loading for benchmarks and load tests: plans go straight into the
//! Registry's own tables with `COPY`, each with its `created` history row,
//! bypassing the service (no gate, no per-council lock, no check against
//! the council's live plans). Councils' real data arrives through
//! `SyncPlans`; this is setup only, and the one place outside the service's
//! store that writes `registry.plans`.
//!
//! ```ignore
//! let db = cpis_runtime::db::connect(&database_url).await?; // migrated: the service has started
//! let plan = cpis_registry::model::validate_plan(Some(&wire_plan), "plan", today)?;
//! let added = cpis_registry::seed::copy_plans(&db, [SeedPlan { council_code: "E08000003".into(), plan }], "bench/setup").await?;
//! ```

use crate::model::PlanInput;
use crate::store::columns;
use bytes::Bytes;
use futures::SinkExt;
use uuid::Uuid;

/// One plan to load: its council and its validated fields.
#[derive(Debug, Clone)]
pub struct SeedPlan {
    /// The owning council's code.
    pub council_code: String,
    /// The plan (its `local_reference` must be unused in the council).
    pub plan: PlanInput,
}

/// Rows written per `COPY` message.
const CHUNK: usize = 1 << 20;

/// Loads `plans` at version 1 with one `COPY` (and their history with a
/// second), recorded as changed by `by`; returns the number of plans added.
/// The schema must be migrated (a started Registry, or `cpis migrate registry`).
/// A reference already live in its council fails the whole load.
pub async fn copy_plans(
    client: &tokio_postgres::Client,
    plans: impl IntoIterator<Item = SeedPlan>,
    by: &str,
) -> anyhow::Result<u64> {
    let sink = client
        .copy_in(&format!(
            "COPY registry.plans (plan_id, council_code, local_reference, {}, version) FROM STDIN (FORMAT csv)",
            columns::list("")
        ))
        .await?;
    futures::pin_mut!(sink);
    let mut ids = Vec::new();
    let mut buf = String::with_capacity(CHUNK);
    for p in plans {
        let id = Uuid::new_v4();
        ids.push(id);
        buf.push_str(&id.to_string());
        for value in [Some(p.council_code.clone()), Some(p.plan.local_reference.clone())]
            .into_iter()
            .chain(columns::values(&p.plan))
        {
            buf.push(',');
            csv_field(&mut buf, value.as_deref());
        }
        buf.push_str(",1\n");
        if buf.len() > CHUNK - 4096 {
            sink.send(Bytes::from(std::mem::replace(&mut buf, String::with_capacity(CHUNK)))).await?;
        }
    }
    if !buf.is_empty() {
        sink.send(Bytes::from(buf)).await?;
    }
    let added = sink.finish().await?;

    let history = client
        .copy_in(
            "COPY registry.plan_changes (plan_id, version, action, changed_fields, changed_by)
             FROM STDIN (FORMAT csv)",
        )
        .await?;
    futures::pin_mut!(history);
    let mut author = String::new();
    csv_field(&mut author, Some(by));
    for chunk in ids.chunks(CHUNK / 64) {
        let mut buf = String::with_capacity(chunk.len() * 64);
        for id in chunk {
            buf.push_str(&format!("{id},1,created,{{}},{author}\n"));
        }
        history.send(Bytes::from(buf)).await?;
    }
    history.finish().await?;
    Ok(added)
}

/// The number of plans stored (live, ended and deleted alike).
pub async fn plan_count(client: &tokio_postgres::Client) -> anyhow::Result<i64> {
    Ok(client.query_one("SELECT count(*) FROM registry.plans", &[]).await?.get(0))
}

/// Appends one CSV field: NULL unquoted and empty, anything else quoted.
fn csv_field(buf: &mut String, value: Option<&str>) {
    if let Some(v) = value {
        buf.push('"');
        buf.push_str(&v.replace('"', "\"\""));
        buf.push('"');
    }
}
