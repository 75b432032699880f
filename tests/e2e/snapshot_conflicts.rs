//! A snapshot never undoes what it did not see, and never ends plans by
//! the back door: changes made while an upload streams stand and are
//! reported as conflicts; ends that come from the rows' own `end_date`s
//! count toward the mass-end guard; a plan not yet started that a snapshot
//! leaves out ends on its start date and flags nobody.

use crate::registry::sync_plans;
use cpis_domain::identity::ServiceName;
use cpis_proto::registry::v1::registry_service_client::RegistryServiceClient;
use cpis_proto::registry::v1::*;
use cpis_testkit::*;
use tokio::sync::mpsc;
use tonic::transport::Channel;
use tonic::Code;

fn row(p: Plan) -> SyncPlansRequest {
    SyncPlansRequest { plan: Some(p), ..Default::default() }
}

async fn upsert(registry: &mut RegistryServiceClient<Channel>, p: Plan) {
    registry.upsert_plan(UpsertPlanRequest { plan: Some(p), expected_version: 0 }).await.expect("UpsertPlan");
}

async fn get(registry: &mut RegistryServiceClient<Channel>, reference: &str) -> Result<Plan, tonic::Status> {
    let request = GetPlanRequest { local_reference: reference.into() };
    registry.get_plan(request).await.map(|r| r.into_inner().plan.expect("a plan"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upserts_ends_and_deletes_made_while_an_upload_streams_stand_and_are_listed_as_conflicts() {
    let ts = TestSuite::start().await;
    let mut worker = ts.registry(&council(MANCHESTER));
    // A, B, X and twenty more: one plan absent is well within the mass-end share.
    let register: Vec<Plan> = [("A", 6101), ("B", 6102), ("X", 6103)]
        .into_iter()
        .map(|(reference, serial)| plan(reference, &nhs(serial)))
        .chain((0..20).map(|i| plan(&format!("F-{i:02}"), &nhs(6110 + i))))
        .collect();
    for p in &register {
        upsert(&mut worker, p.clone()).await;
    }
    // The nightly upload of the register starts streaming...
    let (tx, rx) = mpsc::channel(64);
    let mut uploader = ts.registry(&council(MANCHESTER));
    let upload =
        tokio::spawn(async move { uploader.sync_plans(tokio_stream::wrappers::ReceiverStream::new(rx)).await });
    for p in &register {
        tx.send(row(p.clone())).await.unwrap();
    }
    let db = ts.db().await;
    eventually(10, "the upload has started", || async {
        db.query_one("SELECT count(*) FROM registry.sync_uploads", &[]).await.unwrap().get::<_, i64>(0) == 1
    })
    .await;
    // ...while a social worker registers an emergency plan C, ends B and
    // deletes X (entered in error), on a connection of their own.
    upsert(&mut worker, plan("C", &nhs(6104))).await;
    worker.end_plan(EndPlanRequest { local_reference: "B".into(), end_date: "2025-06-01".into() }).await.unwrap();
    worker.delete_plan(DeletePlanRequest { local_reference: "X".into() }).await.unwrap();
    tx.send(SyncPlansRequest { completion: Some(SyncCompletion { plan_rows: 23 }), ..Default::default() })
        .await
        .unwrap();
    drop(tx);
    let answer = upload.await.unwrap().expect("the upload applies").into_inner();

    // Every change stands: C stays open, B stays ended, X stays deleted.
    assert_eq!(get(&mut worker, "C").await.expect("C is kept").end_date, "", "C was ended by the upload");
    assert_eq!(get(&mut worker, "B").await.unwrap().end_date, "2025-06-01", "B was re-opened by the upload");
    assert_eq!(get(&mut worker, "X").await.unwrap_err().code(), Code::NotFound, "X was re-created by the upload");
    // And the answer lists each as a conflict, with what happened.
    let listed: Vec<(String, i32)> = answer.conflicts.iter().map(|c| (c.local_reference.clone(), c.change)).collect();
    assert_eq!(
        listed,
        [
            ("B".to_string(), SyncConflictChange::Ended as i32),
            ("C".to_string(), SyncConflictChange::Created as i32),
            ("X".to_string(), SyncConflictChange::Deleted as i32),
        ]
    );
    assert_eq!(answer.conflicted, 3);
    assert!(answer.conflicts.iter().all(|c| !c.reason.is_empty()));
    assert_eq!((answer.created, answer.updated, answer.ended, answer.unchanged), (0, 0, 0, 21), "{answer:?}");

    // The next snapshot, which knows of the changes, meets no conflict.
    let mut known: Vec<Plan> = register.iter().filter(|p| p.local_reference != "X").cloned().collect();
    known.push(plan("C", &nhs(6104)));
    known[1].end_date = "2025-06-01".into();
    let next = sync_plans(&ts, MANCHESTER, known, false).await.unwrap();
    assert_eq!((next.conflicted, next.ended, next.updated, next.unchanged), (0, 0, 0, 23), "{next:?}");
    ts.suite.stop().await.unwrap();
}

#[tokio::test]
async fn a_snapshot_that_ends_every_plan_through_its_end_date_column_is_refused_without_allow_mass_end() {
    let ts = TestSuite::start().await;
    let mut registry = ts.registry(&council(MANCHESTER));
    let plans: Vec<Plan> = (0..10).map(|i| plan(&format!("MCR-{i}"), &nhs(6200 + i))).collect();
    for p in &plans {
        upsert(&mut registry, p.clone()).await;
    }
    // The end_date column was mis-mapped: every row ends on its start date.
    let mis_mapped: Vec<Plan> = plans.iter().map(|p| Plan { end_date: p.start_date.clone(), ..p.clone() }).collect();
    let refused = sync_plans(&ts, MANCHESTER, mis_mapped.clone(), false).await.expect_err("a mass end");
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    assert!(refused.message().contains("would end 10 of the council's 10 open plans"), "{}", refused.message());
    for p in &plans {
        assert_eq!(get(&mut registry, &p.local_reference).await.unwrap().end_date, "", "nothing changed");
    }
    // One row taking a plan out of scope among ten is within the share.
    let one = [vec![mis_mapped[0].clone()], plans[1..].to_vec()].concat();
    let r = sync_plans(&ts, MANCHESTER, one, false).await.expect("one in ten is not a mass end");
    assert_eq!(r.updated, 1);
    // Said on purpose, the same snapshot applies.
    let r = sync_plans(&ts, MANCHESTER, mis_mapped, true).await.expect("allowed");
    assert_eq!(r.updated, 9);
    ts.suite.stop().await.unwrap();
}

#[tokio::test]
async fn a_plan_not_yet_started_that_a_snapshot_leaves_out_ends_on_its_start_date_and_flags_nobody() {
    let ts = TestSuite::start().await;
    let mut registry = ts.registry(&council(MANCHESTER));
    let start = cpis_domain::time::today_in_london() + chrono::Days::new(30);
    let future = Plan { start_date: start.to_string(), ..plan("FUTURE-1", &nhs(6301)) };
    upsert(&mut registry, future).await;
    upsert(&mut registry, plan("NOW-1", &nhs(6302))).await;
    let lookups = ts.registry(&service(ServiceName::Attendance));
    let flags_on = |day: chrono::NaiveDate| {
        let mut lookups = lookups.clone();
        async move {
            let request = LookupFlagsRequest { nhs_number: nhs(6301), on_date: day.to_string() };
            lookups.lookup_flags(request).await.unwrap().into_inner().flags.len()
        }
    };
    let later = start + chrono::Days::new(60);
    assert_eq!(flags_on(later).await, 1, "flagged once started");

    let r = sync_plans(&ts, MANCHESTER, vec![plan("NOW-1", &nhs(6302))], true).await.unwrap();
    assert_eq!(r.ended_references, ["FUTURE-1"]);
    assert_eq!(get(&mut registry, "FUTURE-1").await.unwrap().end_date, start.to_string(), "ends on its start date");
    for day in [start, start + chrono::Days::new(1), later, start + chrono::Days::new(300)] {
        assert_eq!(flags_on(day).await, 0, "a plan that never came into force flags nobody on {day}");
    }
    ts.suite.stop().await.unwrap();
}
