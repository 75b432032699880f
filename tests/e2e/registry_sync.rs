//! End-to-end tests of `SyncPlans`: a council's whole list reconciled
//! (counts, rejections, mass ends refused), and an upload that breaks off
//! changing nothing.

use crate::registry::{sync_plans, sync_with};
use cpis_proto::registry::v1::*;
use cpis_testkit::*;
use tonic::Code;

#[tokio::test]
async fn sync_plans_reconciles_counts_rejections_and_refuses_mass_ends() {
    let ts = TestSuite::start().await;
    let first: Vec<Plan> = (0..20u32).map(|i| plan(&format!("S-{i:02}"), &nhs(3000 + i))).collect();
    let r = sync_plans(&ts, MANCHESTER, first.clone(), false).await.unwrap();
    assert_eq!((r.received, r.created, r.updated, r.unchanged, r.ended, r.rejected), (20, 20, 0, 0, 0, 0));

    // Second snapshot: S-00 changed, S-01 missing (1 of 20 = 5%: allowed),
    // two new, S-02 sent with a bad NHS number (refused: kept as it was),
    // one bad date, one duplicate of S-03.
    let mut second: Vec<Plan> = first[3..].to_vec();
    let mut changed = first[0].clone();
    changed.contact.as_mut().unwrap().email = "new@example.gov.uk".into();
    second.push(changed);
    let mut bad_nhs = first[2].clone();
    bad_nhs.nhs_number = "9990000019".into();
    second.push(bad_nhs);
    second.push(plan("S-NEW-1", &nhs(3100)));
    second.push(plan("S-NEW-2", &nhs(3101)));
    let mut bad_date = plan("S-BAD", &nhs(3102));
    bad_date.start_date = "2025-02-30".into();
    second.push(bad_date);
    let mut dup = first[3].clone();
    dup.contact.as_mut().unwrap().team_name = "Duplicate".into();
    second.push(dup);

    let dry = sync_with(&ts, MANCHESTER, second.clone(), false, true).await.unwrap();
    assert!(dry.dry_run);
    assert_eq!((dry.created, dry.updated, dry.unchanged, dry.ended, dry.rejected), (2, 1, 17, 1, 3));
    let untouched = ts.registry(&council(MANCHESTER)).get_plan(GetPlanRequest { local_reference: "S-01".into() }).await;
    assert!(untouched.unwrap().into_inner().plan.unwrap().end_date.is_empty(), "a dry run changes nothing");

    let r = sync_plans(&ts, MANCHESTER, second, false).await.unwrap();
    assert_eq!((r.received, r.created, r.updated, r.unchanged, r.ended, r.rejected), (23, 2, 1, 17, 1, 3));
    let mut rejected: Vec<(i64, String, String)> =
        r.rejections.iter().map(|x| (x.row, x.local_reference.clone(), x.field.clone())).collect();
    rejected.sort();
    assert_eq!(
        rejected,
        [
            (19, "S-02".to_string(), "plan.nhs_number".to_string()),
            (22, "S-BAD".to_string(), "plan.start_date".to_string()),
            (23, "S-03".to_string(), "plan.local_reference".to_string()),
        ]
    );
    assert!(r.rejections.iter().all(|x| !x.reason.contains("9990000019")));
    let mut registry = ts.registry(&council(MANCHESTER));
    let get = |r: &str| GetPlanRequest { local_reference: r.into() };
    let s01 = registry.get_plan(get("S-01")).await.unwrap().into_inner().plan.unwrap();
    assert_eq!(s01.end_date, chrono::Utc::now().date_naive().to_string(), "absent plans are ended today");
    let s02 = registry.get_plan(get("S-02")).await.unwrap().into_inner().plan.unwrap();
    assert!(s02.end_date.is_empty() && s02.version == 1, "a refused row changes nothing and is not ended");
    let s03 = registry.get_plan(get("S-03")).await.unwrap().into_inner().plan.unwrap();
    assert_ne!(s03.contact.unwrap().team_name, "Duplicate", "the first of two duplicates counts");

    // A truncated file (5 of 21 open plans) must never wipe the register.
    let truncated: Vec<Plan> = first[3..8].to_vec();
    let err = sync_plans(&ts, MANCHESTER, truncated.clone(), false).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    let open = registry
        .list_plans(ListPlansRequest { page_size: 1000, ..Default::default() })
        .await
        .unwrap()
        .into_inner()
        .plans
        .iter()
        .filter(|p| p.end_date.is_empty())
        .count();
    assert_eq!(open, 21, "the refused snapshot changed nothing");
    let r = sync_plans(&ts, MANCHESTER, truncated, true).await.unwrap();
    assert_eq!((r.ended, r.unchanged), (16, 5));

    // Another council's sync never touches Manchester's plans.
    let r = sync_plans(&ts, LIVERPOOL, vec![plan("S-00", &nhs(3200))], false).await.unwrap();
    assert_eq!((r.created, r.ended), (1, 0));
    let history: i64 = ts
        .db()
        .await
        .query_one("SELECT count(*) FROM registry.plan_changes WHERE action LIKE '%_by_sync'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(history, 20 + 2 + 1 + 1 + 16 + 1);
    let staged: i64 = ts.db().await.query_one("SELECT count(*) FROM registry.sync_rows", &[]).await.unwrap().get(0);
    assert_eq!(staged, 0, "no staging rows left behind");
    ts.suite.stop().await.unwrap();
}

#[tokio::test]
async fn an_upload_that_breaks_off_changes_nothing() {
    let ts = TestSuite::start().await;
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    let mut client = ts.registry(&council(MANCHESTER));
    let call = tokio::spawn(async move { client.sync_plans(tokio_stream::wrappers::ReceiverStream::new(rx)).await });
    // More than a batch, so that rows are staged before the stream ends.
    for i in 0..1500u32 {
        let row = SyncPlansRequest { plan: Some(plan(&format!("CUT-{i}"), &nhs(4000 + i))), ..Default::default() };
        tx.send(row).await.unwrap();
    }
    let db = ts.db().await;
    eventually(5, "a batch is staged", || async {
        db.query_one("SELECT count(*) FROM registry.sync_rows", &[]).await.unwrap().get::<_, i64>(0) > 0
    })
    .await;
    // The client goes away mid-upload (its process died, its network broke).
    call.abort();
    drop(tx);
    eventually(5, "the staged rows are dropped", || async {
        db.query_one("SELECT count(*) FROM registry.sync_rows", &[]).await.unwrap().get::<_, i64>(0) == 0
    })
    .await;
    let plans: i64 = db.query_one("SELECT count(*) FROM registry.plans", &[]).await.unwrap().get(0);
    assert_eq!(plans, 0, "a broken-off upload applies nothing");
    ts.suite.stop().await.unwrap();
}
