//! A silent read shows the person's recent episodes, so the council's audit
//! records it as an episode read as well as a silent access.

use cpis_proto::attendance::v1::{ListAccessesRequest, SilentReadRequest};
use cpis_proto::common::v1::SettingType;
use cpis_proto::registry::v1::UpsertPlanRequest;
use cpis_testkit::*;

#[tokio::test]
async fn a_silent_read_is_audited_as_silent_and_as_an_episode_read() {
    let ts = TestSuite::start().await;
    let child = nhs(6701);
    ts.registry(&council(MANCHESTER))
        .upsert_plan(UpsertPlanRequest { plan: Some(plan("MCR-S1", &child)), expected_version: 0 })
        .await
        .unwrap();
    ts.attendance(&setting(ALDER_HEY)).check_in(arrival(&child)).await.unwrap();
    let read = ts
        .attendance(&setting("Y01234"))
        .silent_read(SilentReadRequest {
            request_id: uuid::Uuid::new_v4().to_string(),
            nhs_number: child.clone(),
            setting_type: SettingType::GpPractice as i32,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(read.recent_episodes.len(), 1, "the silent read shows the episodes");
    let accesses = ts
        .attendance(&council(MANCHESTER))
        .list_accesses(ListAccessesRequest { nhs_number: child, page_size: 0, page_token: String::new() })
        .await
        .unwrap()
        .into_inner()
        .accesses;
    let silent: Vec<_> = accesses.iter().filter(|a| a.silent).collect();
    assert_eq!(silent.len(), 1, "{accesses:?}");
    assert!(silent[0].episodes_read, "the silent read is audited as an episode read too: {:?}", silent[0]);
    assert_eq!(silent[0].setting_code, "Y01234");
    ts.suite.stop().await.unwrap();
}
