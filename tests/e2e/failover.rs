//! Database failover, the way an operator does it: a primary with a
//! synchronous streaming standby, the services on a multi-host URL with
//! `target_session_attrs=read-write`; check-ins and an alert stream running
//! while the primary is stopped and the standby promoted. The services carry
//! on against the new primary by themselves, and nothing acknowledged is lost.

use cpis::suite::ServiceConfigs;
use cpis_devkit::pgcluster::{ClusterOptions, PrivateCluster};
use cpis_proto::notification::v1::{subscribe_response::Event, Alert, SubscribeRequest};
use cpis_proto::registry::v1::UpsertPlanRequest;
use cpis_testkit::*;
use std::collections::HashSet;
use std::time::Duration;
use tokio::time::Instant;
use tonic::Code;

/// How long after the primary stops the services must be taking check-ins
/// again on the new primary (promotion included).
const RECOVERY_BOUND: Duration = Duration::from_secs(20);
const PEOPLE: u32 = 24;

/// Durable commits (the point of synchronous replication), no fsync (speed: nothing crashes here).
fn options(pki_dir: &std::path::Path) -> ClusterOptions {
    let settings = vec![("fsync".to_string(), "off".to_string())];
    ClusterOptions { settings, pki_state_dir: Some(pki_dir.to_path_buf()), ..Default::default() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_services_follow_a_promoted_synchronous_standby_and_lose_nothing() {
    let dir = tempfile::Builder::new().prefix("cpis-failover").tempdir().unwrap();
    let pki_dir = dir.path().join("db-pki");
    let mut primary = PrivateCluster::start(&dir.path().join("primary"), options(&pki_dir)).expect("the primary");
    primary.create_database("cpis").await.unwrap();
    let standby = PrivateCluster::start_standby(&dir.path().join("standby"), &primary, "standby1", options(&pki_dir))
        .expect("the standby");
    // Synchronous from now on: a commit is acknowledged only once the standby
    // has flushed it (set once the standby is attached, or set-up would wait for it).
    let admin = cpis_runtime::db::connect(&primary.url("postgres")).await.unwrap();
    admin.batch_execute("ALTER SYSTEM SET synchronous_standby_names = 'standby1'").await.unwrap();
    admin.batch_execute("SELECT pg_reload_conf()").await.unwrap();
    eventually(20, "the standby streams synchronously", || async {
        admin
            .query_opt(
                "SELECT 1 FROM pg_stat_replication WHERE application_name = 'standby1' \
                 AND state = 'streaming' AND sync_state = 'sync'",
                &[],
            )
            .await
            .unwrap()
            .is_some()
    })
    .await;
    drop(admin);

    let ca = primary.ca_path().expect("TLS is on").display().to_string();
    let url = format!(
        "host=localhost,localhost port={},{} user=cpis dbname=cpis target_session_attrs=read-write \
         sslmode=verify-full sslrootcert='{ca}'",
        primary.port(),
        standby.port()
    );
    let ts = TestSuite::start_on(
        url,
        ServiceConfigs {
            notification: notification_settings(Duration::from_millis(500)),
            attendance: cpis_attendance::Settings {
                retry_initial: Duration::from_millis(50),
                retry_max: Duration::from_millis(400),
                ..Default::default()
            },
            ..Default::default()
        },
    )
    .await;
    let mut registry = ts.registry(&council(MANCHESTER));
    for i in 0..PEOPLE {
        registry
            .upsert_plan(UpsertPlanRequest {
                plan: Some(plan(&format!("MCR-F{i}"), &nhs(4200 + i))),
                expected_version: 0,
            })
            .await
            .unwrap();
    }

    // The council's system: one stream, resumed from its last sequence whenever it ends.
    let notification = ts.notification(&council(MANCHESTER));
    let subscriber = tokio::spawn(async move {
        let mut seen: Vec<Alert> = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        while seen.len() < PEOPLE as usize && Instant::now() < deadline {
            let after = seen.last().map_or(0, |a| a.sequence);
            if let Ok(response) =
                notification.clone().subscribe(SubscribeRequest { after_sequence: after, replay: false }).await
            {
                let mut stream = response.into_inner();
                while let Ok(Ok(Some(message))) = tokio::time::timeout(Duration::from_secs(5), stream.message()).await {
                    if let Some(Event::Alert(alert)) = message.event {
                        seen.push(alert);
                    }
                    if seen.len() >= PEOPLE as usize {
                        break;
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        seen
    });

    // The setting's system: check-ins one after another, each retried with
    // the same request id until acknowledged.
    let attendance = ts.attendance(&setting(ALDER_HEY));
    let (progress, mut acknowledged_so_far) = tokio::sync::watch::channel(0usize);
    let check_ins = tokio::spawn(async move {
        let mut acknowledged: Vec<(String, Instant)> = Vec::new();
        let mut refused = 0u32;
        for i in 0..PEOPLE {
            let request = arrival(&nhs(4200 + i));
            loop {
                let mut call = tonic::Request::new(request.clone());
                call.set_timeout(Duration::from_secs(5));
                match attendance.clone().check_in(call).await {
                    Ok(response) => {
                        let response = response.into_inner();
                        assert!(response.flagged);
                        acknowledged.push((response.episode_id, Instant::now()));
                        break;
                    }
                    Err(status) => {
                        assert!(
                            matches!(status.code(), Code::Unavailable | Code::DeadlineExceeded),
                            "a failover is a transient failure: {status:?}"
                        );
                        refused += 1;
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
            progress.send_replace(acknowledged.len());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        (acknowledged, refused)
    });

    acknowledged_so_far.wait_for(|n| *n >= PEOPLE as usize / 3).await.unwrap();
    let stopped_at = Instant::now();
    tokio::task::block_in_place(|| primary.stop());
    assert!(!primary.is_running());
    standby.promote().await.expect("promoting the standby");
    println!("primary stopped and standby promoted in {:?}", stopped_at.elapsed());

    let (acknowledged, refused) =
        tokio::time::timeout(Duration::from_secs(60), check_ins).await.expect("check-ins finish").unwrap();
    let recovered = acknowledged
        .iter()
        .map(|(_, at)| *at)
        .find(|at| *at > stopped_at)
        .expect("check-ins were acknowledged after the failover");
    println!(
        "first check-in acknowledged {:?} after the primary stopped; {refused} calls refused meanwhile",
        recovered - stopped_at
    );
    assert!(recovered - stopped_at < RECOVERY_BOUND, "took {:?}", recovered - stopped_at);

    // Readiness comes back by itself.
    for (port, name) in ts.ports_and_names() {
        eventually(RECOVERY_BOUND.as_secs(), "readiness SERVING on the new primary", || async {
            readiness(&ts, port, name).await == Some(1)
        })
        .await;
    }

    // Every acknowledged check-in's alert arrives, in order, gapless.
    let seen = tokio::time::timeout(Duration::from_secs(60), subscriber).await.expect("the stream finishes").unwrap();
    let sequences: Vec<i64> = seen.iter().map(|a| a.sequence).collect();
    assert_eq!(sequences, (1..=i64::from(PEOPLE)).collect::<Vec<_>>(), "gapless, in order, no repeats");
    let alerted: HashSet<String> = seen.iter().map(|a| a.episode.clone().unwrap().episode_id).collect();
    let episodes: HashSet<String> = acknowledged.into_iter().map(|(e, _)| e).collect();
    assert_eq!(alerted, episodes, "one alert for each acknowledged check-in");

    // On the new primary: the LISTEN connection has re-subscribed, and the
    // pools hold fresh connections, all over TLS.
    let new_primary = cpis_runtime::db::connect(&standby.url("cpis")).await.unwrap();
    eventually(RECOVERY_BOUND.as_secs(), "the LISTEN connection on the new primary", || async {
        new_primary
            .query_opt(
                "SELECT 1 FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid) \
                 WHERE a.application_name = 'cpis-notification-listen' AND s.ssl",
                &[],
            )
            .await
            .unwrap()
            .is_some()
    })
    .await;
    let plaintext: i64 = new_primary
        .query_one(
            "SELECT count(*) FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid) \
             WHERE a.datname = 'cpis' AND a.client_port IS NOT NULL AND a.client_port <> -1 AND NOT s.ssl",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(plaintext, 0);
    // A live alert after the failover reaches a fresh stream.
    let mut stream = ts
        .notification(&council(MANCHESTER))
        .subscribe(SubscribeRequest { after_sequence: i64::from(PEOPLE), replay: false })
        .await
        .unwrap()
        .into_inner();
    registry
        .upsert_plan(UpsertPlanRequest { plan: Some(plan("MCR-F-LATE", &nhs(4299))), expected_version: 0 })
        .await
        .unwrap();
    ts.attendance(&setting(ALDER_HEY)).check_in(arrival(&nhs(4299))).await.unwrap();
    let late = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let Some(Event::Alert(a)) = stream.message().await.unwrap().unwrap().event {
                return a.sequence;
            }
        }
    })
    .await
    .expect("a new alert arrives live");
    assert_eq!(late, i64::from(PEOPLE) + 1);
    drop(stream);
    ts.suite.stop().await.unwrap();
    drop(standby);
}
