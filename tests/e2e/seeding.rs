//! `cpis_registry::seed`: plans bulk-loaded for a benchmark are served
//! exactly like plans a council uploaded.

use cpis_domain::identity::ServiceName;
use cpis_proto::registry::v1::*;
use cpis_registry::model::validate_plan;
use cpis_registry::seed::{copy_plans, plan_count, SeedPlan};
use cpis_testkit::*;

#[tokio::test]
async fn seeded_plans_are_served_like_uploaded_ones() {
    let ts = TestSuite::start().await;
    let db = ts.db().await;
    let today = chrono::Utc::now().date_naive();
    let mut quoted = plan("SEED-2", &nhs(902));
    quoted.contact.as_mut().expect("contact").team_name = "O'Brien \"North\", Front Door".into();
    let plans = [plan("SEED-1", &nhs(901)), quoted].map(|p| SeedPlan {
        council_code: MANCHESTER.into(),
        plan: validate_plan(Some(&p), "plan", today).expect("a valid plan"),
    });
    assert_eq!(copy_plans(&db, plans, "test/seed").await.unwrap(), 2);
    assert_eq!(plan_count(&db).await.unwrap(), 2);

    let got = ts
        .registry(&council(MANCHESTER))
        .get_plan(GetPlanRequest { local_reference: "SEED-2".into() })
        .await
        .unwrap()
        .into_inner()
        .plan
        .expect("the plan");
    assert_eq!((got.version, got.contact.expect("contact").team_name.as_str()), (1, "O'Brien \"North\", Front Door"));
    let found = ts
        .registry(&service(ServiceName::Attendance))
        .lookup_flags(LookupFlagsRequest { nhs_number: nhs(901), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(found.local_references, vec!["SEED-1".to_string()]);
    let history: i64 = db
        .query_one(
            "SELECT count(*) FROM registry.plan_changes WHERE action = 'created' AND changed_by = 'test/seed'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(history, 2);

    // A reference already live in the council fails the whole load.
    let again = [SeedPlan {
        council_code: MANCHESTER.into(),
        plan: validate_plan(Some(&plan("SEED-1", &nhs(903))), "plan", today).expect("a valid plan"),
    }];
    assert!(copy_plans(&db, again, "test/seed").await.is_err());
    assert_eq!(plan_count(&db).await.unwrap(), 2);
}
