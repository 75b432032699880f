//! The load and the watch: check-ins for three councils retried on the
//! other Attendance replica until answered, the alerts read from the healthy
//! Notification replica, and the ledger that holds what the client side saw.

use crate::{BOUND, COUNCILS, FAULT, PEOPLE, TRUST_DOMAIN};
use cpis_devkit::pki::Pki;
use cpis_domain::identity::{Caller, CallerKind, ServiceName};
use cpis_proto::attendance::v1::{CheckInRequest, CheckInResponse};
use cpis_proto::common::v1::{ContactDetails, PlanType, SettingType};
use cpis_proto::notification::v1::notification_service_client::NotificationServiceClient;
use cpis_proto::notification::v1::ListAlertsRequest;
use cpis_proto::registry::v1::Plan;
use std::cell::RefCell;
use std::collections::HashMap;
use std::time::{Duration, Instant};
use tonic::transport::Channel;

pub(crate) fn council(code: &str) -> Caller {
    Caller::from_parts(CallerKind::Council, code).expect("council")
}

/// A valid test NHS number (999 range), distinct for each `serial`.
pub(crate) fn nhs(serial: u32) -> String {
    (0..10)
        .find_map(|free| cpis_domain::validate::with_nhs_check_digit(&format!("999{free}{serial:05}")))
        .expect("one of ten free digits always gives a check digit")
}

pub(crate) fn person(council: usize, i: usize) -> String {
    nhs(30_000 + (council * PEOPLE + i) as u32)
}

/// What the client side sees, shared by the load and the watcher.
#[derive(Default)]
pub(crate) struct Ledger {
    /// Per council: each check-in's episode, in the order they were answered
    /// (each council's check-ins run one after another: commit order).
    pub(crate) episodes: Vec<Vec<String>>,
    /// When each episode's check-in was answered.
    pub(crate) answered: HashMap<String, Instant>,
    /// When each episode's alert was first seen on the healthy replica.
    pub(crate) seen: HashMap<String, Instant>,
    /// Per council: the last sequence seen.
    pub(crate) last_sequence: Vec<i64>,
    /// Check-in attempts that failed and were retried on the other replica.
    pub(crate) failovers: usize,
}

pub(crate) struct Clients {
    pub(crate) attendance: [cpis_testkit::AttendanceClient; 2],
    /// Per council, a client of the replica that stays healthy.
    pub(crate) notification: Vec<NotificationServiceClient<Channel>>,
}

/// One check-in, retried with the same request id on the other replica
/// until it is answered.
pub(crate) async fn check_in(
    clients: &Clients,
    first: usize,
    request: CheckInRequest,
    ledger: &RefCell<Ledger>,
) -> CheckInResponse {
    let started = Instant::now();
    let mut k = first;
    loop {
        let mut r = tonic::Request::new(request.clone());
        r.set_timeout(Duration::from_secs(2));
        let mut client = clients.attendance[k].clone();
        match tokio::time::timeout(Duration::from_millis(2500), client.check_in(r)).await {
            Ok(Ok(answer)) => return answer.into_inner(),
            Ok(Err(status)) => assert!(
                status.code() != tonic::Code::InvalidArgument && status.code() != tonic::Code::PermissionDenied,
                "{status:?}"
            ),
            Err(_) => {}
        }
        ledger.borrow_mut().failovers += 1;
        assert!(started.elapsed() < Duration::from_secs(60), "a check-in found no working replica for a minute");
        k = 1 - k;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Each council checks in people one after another for `how_long`,
/// alternating replicas; councils in parallel.
pub(crate) async fn load(clients: &Clients, ledger: &RefCell<Ledger>, next: &RefCell<Vec<usize>>, how_long: Duration) {
    let until = Instant::now() + how_long;
    let per_council = (0..COUNCILS.len()).map(|c| async move {
        while Instant::now() < until {
            let i = {
                let mut next = next.borrow_mut();
                next[c] += 1;
                next[c] - 1
            };
            assert!(i < PEOPLE, "more check-ins than people registered");
            let request = CheckInRequest {
                request_id: uuid::Uuid::new_v4().to_string(),
                nhs_number: person(c, i),
                arrived_at: Some(cpis_domain::time::to_timestamp(chrono::Utc::now())),
                setting_type: SettingType::EmergencyDepartment as i32,
                ..Default::default()
            };
            let answer = check_in(clients, i % 2, request, ledger).await;
            assert!(answer.flagged);
            {
                let mut l = ledger.borrow_mut();
                l.answered.insert(answer.episode_id.clone(), Instant::now());
                l.episodes[c].push(answer.episode_id);
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    });
    futures::future::join_all(per_council).await;
}

/// Reads new alerts from the healthy replica until `done` says stop,
/// recording when each was first seen.
pub(crate) async fn watch(clients: &Clients, ledger: &RefCell<Ledger>, done: &RefCell<bool>) {
    while !*done.borrow() {
        for c in 0..COUNCILS.len() {
            let after = ledger.borrow().last_sequence[c];
            let mut client = clients.notification[c].clone();
            let mut r = tonic::Request::new(ListAlertsRequest { after_sequence: after, page_size: 1000, replay: true });
            r.set_timeout(Duration::from_secs(2));
            if let Ok(Ok(page)) = tokio::time::timeout(Duration::from_millis(2500), client.list_alerts(r)).await {
                let now = Instant::now();
                let mut l = ledger.borrow_mut();
                for a in page.into_inner().alerts {
                    l.last_sequence[c] = a.sequence;
                    let episode = a.episode.map(|e| e.episode_id).unwrap_or_default();
                    l.seen.entry(episode).or_insert(now);
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Runs load for [`FAULT`], then waits until every alert answered so far is
/// seen; returns the longest delay from answer to seen.
pub(crate) async fn phase(
    name: &str,
    clients: &Clients,
    ledger: &RefCell<Ledger>,
    next: &RefCell<Vec<usize>>,
) -> Duration {
    let before: std::collections::HashSet<String> = ledger.borrow().answered.keys().cloned().collect();
    let done = RefCell::new(false);
    let wait_all = async {
        load(clients, ledger, next, FAULT).await;
        let deadline = Instant::now() + BOUND + Duration::from_secs(10);
        loop {
            let missing = {
                let l = ledger.borrow();
                l.answered.keys().filter(|e| !l.seen.contains_key(*e)).count()
            };
            if missing == 0 {
                break;
            }
            assert!(Instant::now() < deadline, "{name}: {missing} alerts never reached the healthy replica");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        *done.borrow_mut() = true;
    };
    futures::join!(wait_all, watch(clients, ledger, &done));
    let l = ledger.borrow();
    let during: Vec<Duration> = l
        .answered
        .iter()
        .filter(|(e, _)| !before.contains(*e))
        .map(|(e, at)| l.seen[e].saturating_duration_since(*at))
        .collect();
    let worst = during.iter().max().copied().unwrap_or_default();
    println!(
        "{name}: {} check-ins ({} attempts retried on the other replica so far); \
         the slowest of their alerts reached the healthy replica {worst:?} after its check-in",
        during.len(),
        l.failovers
    );
    worst
}

pub(crate) fn plan(reference: String, nhs_number: String) -> Plan {
    Plan {
        local_reference: reference,
        nhs_number,
        date_of_birth: "2016-04-02".into(),
        plan_type: PlanType::ChildProtection as i32,
        start_date: "2025-01-10".into(),
        contact: Some(ContactDetails {
            team_name: "Children's Services Front Door".into(),
            office_phone: "0161 234 5000".into(),
            emergency_duty_phone: "0161 255 8250".into(),
            email: "mash@example.gov.uk".into(),
        }),
        ..Default::default()
    }
}

pub(crate) async fn wait_serving(pki: &Pki, endpoints: &[(String, &str)]) {
    use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest};
    let tls = pki.ensure(&Caller::Service(ServiceName::Registry), TRUST_DOMAIN).expect("cert");
    for (url, name) in endpoints {
        let mut client = HealthClient::new(cpis_runtime::client::channel(url, &tls, None).expect("channel"));
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let mut r = tonic::Request::new(HealthCheckRequest { service: name.to_string() });
            r.set_timeout(Duration::from_secs(2));
            if matches!(client.check(r).await, Ok(ref s) if s.get_ref().status == 1) {
                break;
            }
            assert!(Instant::now() < deadline, "{name} at {url} never became ready");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}
