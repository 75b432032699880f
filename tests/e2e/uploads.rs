//! Council uploads (`SyncPlans` and `cpis plans sync`): all or nothing, one
//! at a time, bounded, judged in file order (`uploads_under_load.rs`: and
//! never at the expense of a check-in).

use crate::registry::sync_plans;
use cpis::suite::ServiceConfigs;
use cpis_proto::registry::v1::*;
use cpis_testkit::*;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tonic::Code;
use tonic_types::StatusExt;

pub(crate) const CSV_HEADER: &str = "local_reference,nhs_number,date_of_birth,plan_type,start_date,end_date,\
    expected_delivery_date,team_name,office_phone,emergency_duty_phone,email";

pub(crate) fn csv_row(i: u32) -> String {
    format!(
        "CSV-{i:04},{},2016-04-02,CHILD_PROTECTION,2025-01-10,,,Children's Services Front Door,0161 234 5000,\
         0161 255 8250,mash@example.gov.uk",
        nhs(10_000 + i)
    )
}

/// Runs `cpis plans sync` (the real binary) as Manchester against `ts`
/// (off the runtime's thread: the suite serves on this runtime).
pub(crate) async fn cli_sync(ts: &TestSuite, csv: &std::path::Path, extra: &[&str]) -> (bool, String, String) {
    let tls = ts.identity(&council(MANCHESTER));
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_cpis"));
    command
        .args(["plans", "sync", "--council", MANCHESTER, "--csv"])
        .arg(csv)
        .args(["--endpoint", &format!("https://localhost:{}", ts.registry_port())])
        .arg("--cert")
        .arg(&tls.cert)
        .arg("--key")
        .arg(&tls.key)
        .arg("--ca")
        .arg(&tls.ca)
        .args(extra)
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT");
    let out = tokio::task::spawn_blocking(move || command.output()).await.unwrap().expect("running cpis");
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

/// Every plan of Manchester as (reference, version, end_date).
pub(crate) async fn manchester_plans(ts: &TestSuite) -> Vec<(String, i64, Option<chrono::NaiveDate>)> {
    ts.db()
        .await
        .query(
            "SELECT local_reference, version, end_date FROM registry.plans WHERE council_code = $1
             ORDER BY local_reference",
            &[&MANCHESTER],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect()
}

pub(crate) async fn staging_is_empty(ts: &TestSuite) -> bool {
    let db = ts.db().await;
    let rows: i64 = db.query_one("SELECT count(*) FROM registry.sync_rows", &[]).await.unwrap().get(0);
    let uploads: i64 = db.query_one("SELECT count(*) FROM registry.sync_uploads", &[]).await.unwrap().get(0);
    rows == 0 && uploads == 0
}

pub(crate) fn row(p: Plan) -> SyncPlansRequest {
    SyncPlansRequest { plan: Some(p), ..Default::default() }
}

pub(crate) fn completion(plan_rows: i64) -> SyncPlansRequest {
    SyncPlansRequest { completion: Some(SyncCompletion { plan_rows }), ..Default::default() }
}

pub(crate) fn field_of(status: &tonic::Status) -> Vec<String> {
    status
        .get_error_details()
        .bad_request()
        .map(|b| b.field_violations.iter().map(|v| v.field.clone()).collect())
        .unwrap_or_default()
}

#[tokio::test]
async fn a_csv_with_a_blank_row_or_a_stray_quote_ends_nothing_and_reports_the_row() {
    let ts = TestSuite::start().await;
    let dir = tempfile::tempdir().unwrap();
    // The council's register: 1,000 open plans, sent by the CLI itself.
    let rows: Vec<String> = (0..1000).map(csv_row).collect();
    let full = dir.path().join("full.csv");
    std::fs::write(&full, format!("{CSV_HEADER}\n{}\n", rows.join("\n"))).unwrap();
    let (ok, out, err) = cli_sync(&ts, &full, &[]).await;
    assert!(ok, "{out}{err}");
    assert!(out.contains("created 1000"), "{out}");
    let before = manchester_plans(&ts).await;
    assert_eq!(before.len(), 1000);

    // An Excel blank row at line 960: skipped and counted; every plan after it still counts.
    let mut lines = rows.clone();
    lines.insert(958, ",,,,,,,,,,".into()); // header is line 1, so index 958 is line 960
    let blank = dir.path().join("blank.csv");
    std::fs::write(&blank, format!("{CSV_HEADER}\n{}\n", lines.join("\r\n"))).unwrap();
    let (ok, out, err) = cli_sync(&ts, &blank, &[]).await;
    assert!(ok, "{out}{err}");
    assert!(out.contains("unchanged 1000, ended 0, rejected 0 (1 blank row(s) skipped)"), "{out}");
    assert_eq!(manchester_plans(&ts).await, before, "a blank row changes nothing");

    // A stray quote at line 500 (and a bad plan type at 700): the CLI names each
    // row, field and reason and sends nothing; a later row is still judged.
    let mut lines = rows.clone();
    lines[498] = lines[498].replace("Children's Services", "Children\"s Services");
    lines[698] = lines[698].replace("CHILD_PROTECTION", "CHILD_PROTECTON");
    let quote = dir.path().join("quote.csv");
    std::fs::write(&quote, format!("{CSV_HEADER}\n{}\n", lines.join("\n"))).unwrap();
    let (ok, out, err) = cli_sync(&ts, &quote, &[]).await;
    assert!(!ok, "a file with errors must fail: {out}");
    assert!(err.contains("2 row(s) cannot be read; nothing was sent and nothing changed"), "{err}");
    assert!(err.contains("line 500: a quote inside an unquoted field"), "{err}");
    assert!(err.contains("line 700, field plan_type: must be"), "{err}");
    // The dry run refuses the same file.
    let (ok, _, err) = cli_sync(&ts, &quote, &["--dry-run"]).await;
    assert!(!ok && err.contains("line 500"), "{err}");
    assert_eq!(manchester_plans(&ts).await, before, "a broken file changes nothing");

    // A truncated file (the first 950 rows): the dry run lists by reference
    // what would end, and changes nothing.
    let short = dir.path().join("short.csv");
    std::fs::write(&short, format!("{CSV_HEADER}\n{}\n{}\n", rows[..950].join("\n"), csv_row(5000))).unwrap();
    let (ok, out, err) = cli_sync(&ts, &short, &["--dry-run"]).await;
    assert!(ok, "{out}{err}");
    assert!(
        out.starts_with("DRY RUN (nothing changed): received 951: created 1, updated 0, unchanged 950, ended 50"),
        "{out}"
    );
    assert!(out.contains("would create (1):\n    CSV-5000\n"), "{out}");
    assert!(out.contains("would end (50):\n    CSV-0950\n"), "{out}");
    assert!(out.contains("    CSV-0999\n"), "{out}");
    assert_eq!(manchester_plans(&ts).await, before, "a dry run changes nothing");
    assert!(staging_is_empty(&ts).await);
    ts.suite.stop().await.unwrap();
}

#[tokio::test]
async fn an_upload_applies_only_with_a_completion_message_that_matches() {
    let ts = TestSuite::start().await;
    let first: Vec<Plan> = (0..20).map(|i| plan(&format!("M-{i:02}"), &nhs(100 + i))).collect();
    sync_plans(&ts, MANCHESTER, first.clone(), false).await.unwrap();
    let before = manchester_plans(&ts).await;
    let registry = ts.registry(&council(MANCHESTER));

    // Ended cleanly but without the completion message (a CSV error, a crashed
    // producer): refused, with the reason, and nothing changes (not even the
    // plans absent from the partial list).
    let partial: Vec<SyncPlansRequest> = first[..5].iter().cloned().map(row).collect();
    let status = registry.clone().sync_plans(tokio_stream::iter(partial.clone())).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert_eq!(field_of(&status), vec!["completion"]);
    assert!(status.message().contains("without its completion message"), "{}", status.message());
    assert!(status.message().contains("nothing was changed"), "{}", status.message());

    // A completion that states another number of rows: refused whole.
    let mut wrong = partial.clone();
    wrong.push(completion(20));
    let status = registry.clone().sync_plans(tokio_stream::iter(wrong)).await.unwrap_err();
    assert_eq!(field_of(&status), vec!["completion.plan_rows"], "{status:?}");
    assert!(status.message().contains("states 20 plan rows but 5 were received"), "{}", status.message());

    // Rows after the completion message, or a plan inside it: refused.
    let mut late = partial.clone();
    late.push(completion(5));
    late.push(row(plan("M-99", &nhs(199))));
    let status = registry.clone().sync_plans(tokio_stream::iter(late)).await.unwrap_err();
    assert_eq!(field_of(&status), vec!["completion"], "{status:?}");
    let mut inside = completion(1);
    inside.plan = Some(plan("M-99", &nhs(199)));
    let status = registry.clone().sync_plans(tokio_stream::iter(vec![inside])).await.unwrap_err();
    assert_eq!(field_of(&status), vec!["plan"], "{status:?}");

    // The client dies mid-stream, after more than a batch was staged.
    let (tx, rx) = mpsc::channel(16);
    let mut client = registry.clone();
    let call = tokio::spawn(async move { client.sync_plans(tokio_stream::wrappers::ReceiverStream::new(rx)).await });
    for i in 0..1500u32 {
        tx.send(row(plan(&format!("CUT-{i}"), &nhs(4000 + i)))).await.unwrap();
    }
    let db = ts.db().await;
    eventually(10, "a batch is staged", || async {
        db.query_one("SELECT count(*) FROM registry.sync_rows", &[]).await.unwrap().get::<_, i64>(0) > 0
    })
    .await;
    call.abort();
    drop(tx);
    eventually(10, "the cut upload is dropped", || staging_is_empty(&ts)).await;
    assert_eq!(manchester_plans(&ts).await, before, "no upload without completion changed anything");

    // The council can upload again at once, and an empty complete list is a
    // real (guarded) snapshot: it would end all 20 plans.
    let status = registry.clone().sync_plans(tokio_stream::iter(vec![completion(0)])).await.unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    let r = sync_plans(&ts, MANCHESTER, first[..19].to_vec(), false).await.unwrap();
    assert_eq!((r.unchanged, r.ended, r.ended_references.clone()), (19, 1, vec!["M-19".to_string()]));
    ts.suite.stop().await.unwrap();
}

#[tokio::test]
async fn one_upload_per_council_at_a_time_idle_uploads_are_dropped_and_rows_are_capped() {
    let ts = TestSuite::start_with(ServiceConfigs {
        notification: notification_settings(Duration::from_millis(500)),
        registry: cpis_registry::Settings {
            sync_idle: Duration::from_secs(2),
            sync_max_rows: 50,
            ..Default::default()
        },
        ..Default::default()
    })
    .await;
    let registry = ts.registry(&council(MANCHESTER));

    // The first upload starts and sends some rows...
    let (tx, rx) = mpsc::channel(16);
    let mut client = registry.clone();
    let first = tokio::spawn(async move { client.sync_plans(tokio_stream::wrappers::ReceiverStream::new(rx)).await });
    tx.send(row(plan("A-1", &nhs(1)))).await.unwrap();
    let db = ts.db().await;
    eventually(5, "the upload is registered", || async {
        db.query_one("SELECT count(*) FROM registry.sync_uploads", &[]).await.unwrap().get::<_, i64>(0) == 1
    })
    .await;
    // ...a second from the same council is refused while it runs...
    let second = vec![row(plan("B-1", &nhs(2))), completion(1)];
    let status = registry.clone().sync_plans(tokio_stream::iter(second.clone())).await.unwrap_err();
    assert_eq!(status.code(), Code::Aborted, "{status:?}");
    assert!(
        status.message().contains("another SyncPlans upload of this council is in progress"),
        "{}",
        status.message()
    );
    // ...another council is not held up...
    sync_plans(&ts, LIVERPOOL, vec![plan("L-1", &nhs(3))], false).await.unwrap();
    // ...and the first completes normally.
    tx.send(row(plan("A-2", &nhs(4)))).await.unwrap();
    tx.send(completion(2)).await.unwrap();
    drop(tx);
    let r = first.await.unwrap().unwrap().into_inner();
    assert_eq!((r.received, r.created), (2, 2));
    let refs: Vec<String> = manchester_plans(&ts).await.into_iter().map(|p| p.0).collect();
    assert_eq!(refs, vec!["A-1", "A-2"], "the refused upload changed nothing");

    // An upload that goes quiet is dropped after the idle limit, unapplied,
    // and frees the council's slot.
    let (tx, rx) = mpsc::channel(16);
    let mut client = registry.clone();
    let quiet = tokio::spawn(async move { client.sync_plans(tokio_stream::wrappers::ReceiverStream::new(rx)).await });
    tx.send(row(plan("Q-1", &nhs(5)))).await.unwrap();
    let started = Instant::now();
    let status = quiet.await.unwrap().unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert!(status.message().contains("sent nothing for 2 s"), "{}", status.message());
    assert!(started.elapsed() < Duration::from_secs(10));
    drop(tx);
    eventually(5, "the idle upload is dropped", || staging_is_empty(&ts)).await;

    // Uploads left behind by a replica that died are swept by upload, never
    // by row age: Liverpool's slow upload (rows staged 7 hours ago, heard of
    // just now) keeps its rows; Manchester's silent one (3 x the idle limit)
    // goes, rows and all, and frees its slot.
    let (slow, dead) = (uuid::Uuid::new_v4(), uuid::Uuid::new_v4());
    db.execute(
        "INSERT INTO registry.sync_uploads (sync_id, council_code, started_at, last_seen_at) VALUES
             ($1, $3, now() - interval '7 hours', now()), ($2, $4, now() - interval '1 minute', now() - interval '7 seconds')",
        &[&slow, &dead, &LIVERPOOL, &MANCHESTER],
    )
    .await
    .unwrap();
    db.execute(
        "INSERT INTO registry.sync_rows (sync_id, local_reference, row_no, rejected, started_at) VALUES
             ($1, 'L-OLD', 1, true, now() - interval '7 hours'), ($2, 'M-OLD', 1, true, now())",
        &[&slow, &dead],
    )
    .await
    .unwrap();
    sync_plans(&ts, MANCHESTER, vec![plan("A-1", &nhs(1)), plan("A-2", &nhs(4))], false).await.unwrap();
    let left: Vec<String> = db
        .query("SELECT local_reference FROM registry.sync_rows ORDER BY 1", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(left, vec!["L-OLD"], "only the dead upload's rows are swept");
    db.execute("DELETE FROM registry.sync_rows", &[]).await.unwrap();
    db.execute("DELETE FROM registry.sync_uploads", &[]).await.unwrap();

    // Over the row cap (50): refused whole, nothing applied; at the cap: applied.
    let mut over: Vec<SyncPlansRequest> = (0..51).map(|i| row(plan(&format!("C-{i:02}"), &nhs(100 + i)))).collect();
    over.push(completion(51));
    let status = registry.clone().sync_plans(tokio_stream::iter(over)).await.unwrap_err();
    assert_eq!(field_of(&status), vec!["plan"], "{status:?}");
    assert!(status.message().contains("more than 50 plan rows"), "{}", status.message());
    assert_eq!(manchester_plans(&ts).await.len(), 2, "an upload over the cap changes nothing");
    let at_cap: Vec<Plan> = (0..50).map(|i| plan(&format!("C-{i:02}"), &nhs(100 + i))).collect();
    let r = sync_plans(&ts, MANCHESTER, at_cap, true).await.unwrap();
    assert_eq!((r.created, r.ended), (50, 2));
    eventually(5, "staging is empty", || staging_is_empty(&ts)).await;
    ts.suite.stop().await.unwrap();
}

#[tokio::test]
async fn of_two_rows_with_one_reference_the_first_counts_whatever_the_batch_size() {
    for batch in [1, 2, 3, 1000] {
        let ts = TestSuite::start_with(ServiceConfigs {
            notification: notification_settings(Duration::from_millis(500)),
            registry: cpis_registry::Settings { sync_batch: batch, ..Default::default() },
            ..Default::default()
        })
        .await;
        // Existing plans P and Q.
        let mut p_stored = plan("P", &nhs(1));
        p_stored.start_date = "2025-01-01".into();
        sync_plans(&ts, MANCHESTER, vec![p_stored.clone(), plan("Q", &nhs(2))], false).await.unwrap();

        let mut invalid_p = plan("P", &nhs(1));
        invalid_p.nhs_number = "9990000019".into(); // wrong check digit
        let mut a_second = plan("A", &nhs(4));
        a_second.start_date = "2025-03-03".into();
        let rows = vec![
            plan("A", &nhs(3)), // row 1: A, valid: counts
            a_second,           // row 2: A again: refused
            invalid_p,          // row 3: P, invalid: counts, so P is neither updated nor ended
            plan("P", &nhs(1)), // row 4: P again, valid: refused as a duplicate
            plan("Q", &nhs(2)), // row 5: Q unchanged
        ];
        let r = sync_plans(&ts, MANCHESTER, rows, false).await.unwrap();
        let rejected: Vec<(i64, String)> = r.rejections.iter().map(|x| (x.row, x.field.clone())).collect();
        assert_eq!(
            rejected,
            vec![(2, "plan.local_reference".into()), (3, "plan.nhs_number".into()), (4, "plan.local_reference".into())],
            "batch size {batch}"
        );
        assert_eq!((r.created, r.updated, r.unchanged, r.ended), (1, 0, 1, 0), "batch size {batch}");
        let get = |reference: &str| {
            let mut client = ts.registry(&council(MANCHESTER));
            let reference = reference.to_string();
            async move {
                client.get_plan(GetPlanRequest { local_reference: reference }).await.unwrap().into_inner().plan.unwrap()
            }
        };
        let a = get("A").await;
        assert_eq!((a.nhs_number.as_str(), a.start_date.as_str()), (nhs(3).as_str(), "2025-01-10"), "batch {batch}");
        let p = get("P").await;
        assert_eq!((p.version, p.start_date.as_str(), p.end_date.as_str()), (1, "2025-01-01", ""), "batch {batch}");
        ts.suite.stop().await.unwrap();
    }
}
