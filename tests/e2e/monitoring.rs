//! The monitoring shipped for platform teams (k8s/monitoring/: alert rules
//! and the Grafana dashboard) queries only metrics the services really
//! export: every `cpis_*` name in those files must appear in a real scrape
//! of the three services' /metrics after a scenario that moves them all.

use cpis_proto::notification::v1::{subscribe_response::Event, SubscribeRequest};
use cpis_proto::registry::v1::UpsertPlanRequest;
use cpis_testkit::*;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Every file under k8s/monitoring/.
fn monitoring_files() -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).expect("k8s/monitoring is readable") {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, out);
            } else {
                out.push(path);
            }
        }
    }
    let mut files = Vec::new();
    walk(&Path::new(env!("CARGO_MANIFEST_DIR")).join("k8s/monitoring"), &mut files);
    files.sort();
    files
}

/// A metric family's name: a histogram's or summary's series suffixes removed.
fn family(name: &str) -> &str {
    ["_bucket", "_sum", "_count"].iter().find_map(|s| name.strip_suffix(s)).unwrap_or(name)
}

/// Every `cpis_...` token in a text (not inside a longer identifier).
fn cpis_names(text: &str) -> BTreeSet<String> {
    let ident = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_';
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("cpis_") {
        let preceded = rest[..at].chars().next_back().is_some_and(|c| ident(c) || c.is_ascii_uppercase());
        let tail = &rest[at..];
        let end = tail.find(|c: char| !ident(c)).unwrap_or(tail.len());
        if !preceded && end > "cpis_".len() {
            names.insert(family(&tail[..end]).to_string());
        }
        rest = &tail[end.max(1)..];
    }
    names
}

/// The metric families of a Prometheus text exposition (`# TYPE` lines and
/// sample names).
fn exported_families(scrape: &str) -> BTreeSet<String> {
    let body = scrape.split("\r\n\r\n").nth(1).unwrap_or(scrape);
    let mut names = BTreeSet::new();
    for line in body.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            names.extend(rest.split_whitespace().next().map(str::to_string));
        } else if !line.starts_with('#') && !line.is_empty() {
            let name = line.split(['{', ' ']).next().unwrap_or_default();
            names.insert(family(name).to_string());
        }
    }
    names
}

#[test]
fn the_name_extraction_finds_what_it_should() {
    let text = "sum(rate(cpis_grpc_request_duration_seconds_bucket{x=\"y\"}[5m])) / xcpis_no \
                cpis_a_total cpis_* cpis_db_pool_connections{state=\"waiting\"}";
    let names: Vec<_> = cpis_names(text).into_iter().collect();
    assert_eq!(names, ["cpis_a_total", "cpis_db_pool_connections", "cpis_grpc_request_duration_seconds"]);
    let scrape = "HTTP/1.1 200 OK\r\n\r\n# TYPE cpis_h histogram\ncpis_h_bucket{le=\"1\"} 0\ncpis_g 1\n";
    assert_eq!(exported_families(scrape).into_iter().collect::<Vec<_>>(), ["cpis_g", "cpis_h"]);
}

#[tokio::test]
async fn every_metric_the_alerts_and_the_dashboard_query_is_exported() {
    let files = monitoring_files();
    let mut queried = BTreeSet::new();
    for file in &files {
        queried.extend(cpis_names(&std::fs::read_to_string(file).unwrap()));
    }
    // The alert rules and the dashboard query the services' own metrics.
    for (file, least) in [("alerts.yaml", 5), ("cpis.json", 8)] {
        let path = files.iter().find(|f| f.ends_with(file)).unwrap_or_else(|| panic!("k8s/monitoring has {file}"));
        let n = cpis_names(&std::fs::read_to_string(path).unwrap()).len();
        assert!(n >= least, "{file} queries only {n} cpis metrics");
    }

    // A scenario that moves every family: a plan, a council's stream, a
    // flagged check-in whose alert is relayed and streamed, a refused one.
    let ts = TestSuite::start().await;
    let addr = |s: &cpis::suite::RunningService| s.metrics_addr.expect("metrics are served");
    let (reg, att, not) = (addr(&ts.suite.registry), addr(&ts.suite.attendance), addr(&ts.suite.notification));
    let child = nhs(720);
    ts.registry(&council(MANCHESTER))
        .upsert_plan(UpsertPlanRequest { plan: Some(plan("MCR-MON1", &child)), expected_version: 0 })
        .await
        .unwrap();
    let mut stream = ts
        .notification(&council(MANCHESTER))
        .subscribe(SubscribeRequest { after_sequence: 0, replay: false })
        .await
        .unwrap()
        .into_inner();
    ts.attendance(&setting(ALDER_HEY)).check_in(arrival(&child)).await.unwrap();
    let _ = ts.attendance(&setting(ALDER_HEY)).check_in(arrival("123")).await.unwrap_err();
    tokio::time::timeout(Duration::from_secs(10), async {
        while !matches!(stream.message().await.unwrap().unwrap().event, Some(Event::Alert(_))) {}
    })
    .await
    .expect("the alert reaches the council's stream");
    eventually(10, "the relay counted its delivery", || async {
        sample(&scrape(att).await, &["cpis_attendance_alerts_relayed_total"]) == 1.0
    })
    .await;

    // The per-council backlog gauges are re-read from the alert log every few seconds.
    eventually(15, "the per-council backlog metrics", || async {
        scrape(not).await.contains("cpis_notification_council_unacked_alerts{")
    })
    .await;

    let mut exported = BTreeSet::new();
    for metrics in [reg, att, not] {
        exported.extend(exported_families(&scrape(metrics).await));
    }
    drop(stream);
    ts.suite.stop().await.unwrap();

    let unknown: Vec<&String> = queried.difference(&exported).collect();
    assert!(
        unknown.is_empty(),
        "k8s/monitoring queries metrics no service exports: {unknown:?}\n(exported: {exported:?})"
    );
}
