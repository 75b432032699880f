//! (12)'s processes, as the production overlay runs them: one Registry and
//! two replicas each of Attendance and Notification, every one its own
//! `cpis serve` process on a database of their own. Attendance replica `i`
//! calls the Registry and publishes to Notification replica `i`; the
//! replicas meet in PostgreSQL (the outbox's leases, the alert log).

use super::procs::{free_port, spawn_service, wait_ready, Launch, ServiceProc};
use cpis_devkit::pki::Pki;
use cpis_domain::identity::{Caller, ServiceName};
use cpis_proto::attendance::v1::attendance_service_server::SERVICE_NAME as ATTENDANCE;
use cpis_proto::notification::v1::notification_service_server::SERVICE_NAME as NOTIFICATION;
use cpis_proto::registry::v1::registry_service_server::SERVICE_NAME as REGISTRY;
use std::time::Duration;

/// The running processes of the national day.
#[derive(Debug)]
pub struct Fleet {
    /// The Registry.
    pub registry: ServiceProc,
    /// Attendance replicas.
    pub attendance: Vec<ServiceProc>,
    /// Notification replicas.
    pub notification: Vec<ServiceProc>,
}

impl Fleet {
    /// Starts every process on free ports (logs `day-*.log` beside the
    /// others) and waits until each is ready.
    pub async fn start(launch: &Launch, pki: &Pki) -> anyhow::Result<Fleet> {
        let url = |port: u16| format!("https://localhost:{port}");
        let registry_port = free_port()?;
        let registry =
            spawn_service(launch, pki, (ServiceName::Registry, "day-registry"), registry_port, REGISTRY, vec![])?;
        let mut notification = Vec::new();
        for label in ["day-notification-1", "day-notification-2"] {
            let heartbeat = vec!["--heartbeat-secs".into(), launch.heartbeat_secs.to_string()];
            let port = free_port()?;
            notification.push(spawn_service(
                launch,
                pki,
                (ServiceName::Notification, label),
                port,
                NOTIFICATION,
                heartbeat,
            )?);
        }
        let mut attendance = Vec::new();
        for (label, publish_to) in ["day-attendance-1", "day-attendance-2"].into_iter().zip(&notification) {
            let peers =
                vec!["--registry-url".into(), url(registry_port), "--notification-url".into(), url(publish_to.port)];
            let port = free_port()?;
            attendance.push(spawn_service(launch, pki, (ServiceName::Attendance, label), port, ATTENDANCE, peers)?);
        }
        let mut fleet = Fleet { registry, attendance, notification };
        let tls = pki.ensure(&Caller::Service(ServiceName::Registry), &launch.trust_domain)?;
        for s in fleet.all_mut() {
            wait_ready(s, &tls).await?;
        }
        Ok(fleet)
    }

    fn all_mut(&mut self) -> Vec<&mut ServiceProc> {
        let mut all = vec![&mut self.registry];
        all.extend(self.notification.iter_mut());
        all.extend(self.attendance.iter_mut());
        all
    }

    /// Every process, the Registry first.
    pub fn all(&self) -> Vec<&ServiceProc> {
        let mut all = vec![&self.registry];
        all.extend(self.notification.iter());
        all.extend(self.attendance.iter());
        all
    }

    /// Fails when any process has exited.
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        for s in self.all_mut() {
            s.check_alive()?;
        }
        Ok(())
    }

    /// Stops the Attendance replicas first (they call the others).
    pub fn stop(&mut self) {
        for s in self.attendance.iter_mut().chain(self.notification.iter_mut()) {
            s.stop(Duration::from_secs(15));
        }
        self.registry.stop(Duration::from_secs(15));
    }
}
