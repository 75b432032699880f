//! `cpis serve attendance` takes every Attendance setting from the
//! environment, as a container does: the real binary, started beside an
//! in-process Registry and Notification, with a non-default repeat threshold
//! and window and a non-default Registry deadline, shows their effect; a value
//! that does not parse stops start-up with an error naming its variable.

use cpis_domain::identity::ServiceName;
use cpis_proto::notification::v1::{AlertPriority, SubscribeRequest};
use cpis_proto::registry::v1::UpsertPlanRequest;
use cpis_testkit::*;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tonic::Code;

/// A `cpis serve attendance` process, killed when dropped.
struct Served {
    child: Option<Child>,
    port: u16,
}

impl Served {
    /// Waits for the process to exit by itself.
    fn exit(mut self) -> std::process::Output {
        self.child.take().expect("running").wait_with_output().expect("exit")
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn serve_attendance(ts: &TestSuite, registry_url: &str, env: &[(&str, &str)]) -> Served {
    let port = free_port();
    let tls = ts.identity(&service(ServiceName::Attendance));
    let mut command = Command::new(env!("CARGO_BIN_EXE_cpis"));
    command
        .args(["serve", "attendance"])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("CPIS_LISTEN", format!("127.0.0.1:{port}"))
        .env("CPIS_TLS_CA", &tls.ca)
        .env("CPIS_TLS_CERT", &tls.cert)
        .env("CPIS_TLS_KEY", &tls.key)
        .env("CPIS_TRUST_DOMAIN", TRUST_DOMAIN)
        .env("DATABASE_URL", &ts.database_url)
        .env("CPIS_DRAIN_SECS", "0")
        .env("CPIS_REGISTRY_URL", registry_url)
        .env("CPIS_NOTIFICATION_URL", format!("https://localhost:{}", ts.notification_port()))
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (k, v) in ts.user_auth_env() {
        command.env(k, v);
    }
    for (k, v) in env {
        command.env(k, v);
    }
    Served { child: Some(command.spawn().expect("cpis serve attendance")), port }
}

async fn wait_serving(ts: &TestSuite, served: &mut Served) {
    let started = Instant::now();
    loop {
        if let Some(status) = served.child.as_mut().expect("running").try_wait().unwrap() {
            panic!("cpis serve attendance exited early: {status}");
        }
        if readiness(ts, served.port, cpis_attendance::SERVICE_NAME).await == Some(1) {
            return;
        }
        assert!(started.elapsed() < Duration::from_secs(60), "cpis serve attendance never became ready");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn serve_attendance_honours_its_repeat_and_deadline_settings_from_the_environment() {
    let ts = TestSuite::start().await;
    let person = nhs(8101);
    ts.registry(&council(MANCHESTER))
        .upsert_plan(UpsertPlanRequest { plan: Some(plan("SET-1", &person)), ..Default::default() })
        .await
        .expect("plan");
    let mut stream = ts
        .notification(&council(MANCHESTER))
        .subscribe(SubscribeRequest { after_sequence: 0, ..Default::default() })
        .await
        .expect("subscribe")
        .into_inner();

    // A repeat threshold of 2 (default 3): the second episode in the window is a repeat.
    let registry_url = format!("https://localhost:{}", ts.registry_port());
    let mut served = serve_attendance(
        &ts,
        &registry_url,
        &[("CPIS_REPEAT_THRESHOLD", "2"), ("CPIS_REPEAT_WINDOW_DAYS", "7"), ("CPIS_SAME_EPISODE_HOURS", "1")],
    );
    wait_serving(&ts, &mut served).await;
    let attendance = |setting_code: &str| ts.attendance_on(served.port, &setting(setting_code));
    attendance(ALDER_HEY).check_in(arrival(&person)).await.expect("first check-in");
    let first = next_alert(&mut stream, 20, "the first alert").await;
    assert_eq!(first.priority, AlertPriority::Routine as i32);
    attendance(OTHER_SETTING).check_in(arrival(&person)).await.expect("second check-in");
    let second = next_alert(&mut stream, 20, "the second alert").await;
    assert_eq!(
        second.priority,
        AlertPriority::RepeatAttendance as i32,
        "CPIS_REPEAT_THRESHOLD=2 makes the second episode a repeat"
    );
    drop(served);

    // A Registry that accepts connections and never answers: the look-up
    // gives up after CPIS_REGISTRY_TIMEOUT_MS (300 ms), not the default 2 s.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_url = format!("https://localhost:{}", silent.local_addr().unwrap().port());
    let hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = silent.accept().await {
            held.push(socket);
        }
    });
    let mut served = serve_attendance(&ts, &silent_url, &[("CPIS_REGISTRY_TIMEOUT_MS", "300")]);
    wait_serving(&ts, &mut served).await;
    let mut client = ts.attendance_on(served.port, &setting(ALDER_HEY));
    let started = Instant::now();
    let refused = client.check_in(arrival(&person)).await.expect_err("no registry, no answer");
    let took = started.elapsed();
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    assert!(took < Duration::from_millis(1_500), "the look-up took {took:?}: the 300 ms deadline was not applied");
    drop(served);
    hold.abort();
}

#[tokio::test]
async fn a_setting_that_does_not_parse_stops_start_up_naming_its_variable() {
    let ts = TestSuite::start().await;
    let registry_url = format!("https://localhost:{}", ts.registry_port());
    for (variable, value) in [("CPIS_REPEAT_WINDOW_DAYS", "a fortnight"), ("CPIS_RELAY_RETRY_MAX_MS", "10")] {
        let output = serve_attendance(&ts, &registry_url, &[(variable, value)]).exit();
        assert!(!output.status.success(), "{variable}={value} was accepted");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(variable), "{variable}={value}: the error does not name it: {stderr}");
    }
}
