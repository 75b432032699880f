//! The services under test, each in its own process (`cpis serve <name>`,
//! the very code path of a container and of `cpis dev`), so that the memory
//! of each one can be read from `/proc/<pid>/status` without the load
//! generator's.

use anyhow::{bail, Context as _};
use cpis_devkit::pki::Pki;
use cpis_domain::identity::{Caller, ServiceName};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// One service process.
#[derive(Debug)]
pub struct ServiceProc {
    /// `registry`, `attendance` or `notification`.
    pub name: &'static str,
    /// Its gRPC port on 127.0.0.1.
    pub port: u16,
    /// Its gRPC service name (readiness is reported under it).
    pub grpc_name: &'static str,
    /// Its Prometheus metrics port on 127.0.0.1 (plain HTTP, `/metrics`).
    pub metrics_port: u16,
    child: Option<Child>,
    log: PathBuf,
}

impl ServiceProc {
    /// The process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Resident set size now, in KiB.
    pub fn rss_kib(&self) -> Option<u64> {
        self.pid().and_then(|pid| status_kib(pid, "VmRSS"))
    }

    /// Peak resident set size since start (or since [`Self::reset_peak`]), in KiB.
    pub fn peak_kib(&self) -> Option<u64> {
        self.pid().and_then(|pid| status_kib(pid, "VmHWM"))
    }

    /// Resets the kernel's peak-RSS mark (`/proc/<pid>/clear_refs` = 5);
    /// false when the kernel refused.
    pub fn reset_peak(&self) -> bool {
        self.pid().is_some_and(|pid| std::fs::write(format!("/proc/{pid}/clear_refs"), "5").is_ok())
    }

    /// The last lines of its log.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(lines).collect();
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    }

    /// Fails when the process has exited.
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        let exited = match self.child.as_mut() {
            Some(child) => child.try_wait()?,
            None => bail!("{} is not running", self.name),
        };
        if let Some(status) = exited {
            self.child = None;
            bail!("{} exited ({status}); its log ends:\n{}", self.name, self.log_tail(20));
        }
        Ok(())
    }

    /// SIGTERM, then SIGKILL after `grace`; waits for the process.
    pub fn stop(&mut self, grace: Duration) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        // SAFETY: a signal to our own child process, whose id we hold.
        unsafe {
            libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
        }
        let deadline = Instant::now() + grace;
        loop {
            match child.try_wait() {
                Ok(Some(_)) | Err(_) => return,
                Ok(None) if Instant::now() > deadline => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return;
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }
}

impl Drop for ServiceProc {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A `kB` field of `/proc/<pid>/status`.
pub fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(field) && l[field.len()..].starts_with(':'))?;
    line[field.len() + 1..].trim().trim_end_matches("kB").trim().parse().ok()
}

/// The three services.
#[derive(Debug)]
pub struct Services {
    /// Registry.
    pub registry: ServiceProc,
    /// Attendance.
    pub attendance: ServiceProc,
    /// Notification.
    pub notification: ServiceProc,
}

/// How to start the services.
#[derive(Debug, Clone)]
pub struct Launch {
    /// The `cpis` executable.
    pub exe: PathBuf,
    /// Where logs go.
    pub dir: PathBuf,
    /// PostgreSQL connection string.
    pub database_url: String,
    /// SPIFFE trust domain.
    pub trust_domain: String,
    /// Notification heartbeat interval, in whole seconds.
    pub heartbeat_secs: u64,
}

/// A port nobody listens on right now (the kernel's choice).
pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl Services {
    /// Starts registry, notification and attendance (which calls the other
    /// two) on free ports, each as `cpis serve <name>` with the settings
    /// `cpis dev` gives it, and waits until each reports ready.
    pub async fn start(launch: &Launch, pki: &Pki) -> anyhow::Result<Services> {
        let ports = [free_port()?, free_port()?, free_port()?];
        let [registry_port, attendance_port, notification_port] = ports;
        let url = |port: u16| format!("https://localhost:{port}");
        let spawn = |name: ServiceName, port: u16, grpc_name: &'static str, extra: Vec<String>| {
            spawn_service(launch, pki, (name, name.as_str()), port, grpc_name, extra)
        };
        let registry = spawn(
            ServiceName::Registry,
            registry_port,
            cpis_proto::registry::v1::registry_service_server::SERVICE_NAME,
            vec![],
        )?;
        let notification = spawn(
            ServiceName::Notification,
            notification_port,
            cpis_proto::notification::v1::notification_service_server::SERVICE_NAME,
            vec!["--heartbeat-secs".into(), launch.heartbeat_secs.to_string()],
        )?;
        let attendance = spawn(
            ServiceName::Attendance,
            attendance_port,
            cpis_proto::attendance::v1::attendance_service_server::SERVICE_NAME,
            vec!["--registry-url".into(), url(registry_port), "--notification-url".into(), url(notification_port)],
        )?;
        let mut services = Services { registry, attendance, notification };
        let me = Caller::Service(ServiceName::Registry);
        let tls = pki.ensure(&me, &launch.trust_domain)?;
        for s in services.all_mut() {
            wait_ready(s, &tls).await?;
        }
        Ok(services)
    }

    /// All three, registry first.
    pub fn all(&self) -> [&ServiceProc; 3] {
        [&self.registry, &self.attendance, &self.notification]
    }

    fn all_mut(&mut self) -> [&mut ServiceProc; 3] {
        [&mut self.registry, &mut self.attendance, &mut self.notification]
    }

    /// Fails when any of them has exited.
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        for s in self.all_mut() {
            s.check_alive()?;
        }
        Ok(())
    }

    /// Resident set sizes now, in KiB.
    pub fn rss_kib(&self) -> Rss {
        Rss::read(self, ServiceProc::rss_kib)
    }

    /// Stops attendance first (it calls the others), then the other two.
    pub fn stop(&mut self) {
        self.attendance.stop(Duration::from_secs(15));
        self.registry.stop(Duration::from_secs(15));
        self.notification.stop(Duration::from_secs(15));
    }
}

/// The development identity provider beside `pki` (in its state directory).
pub fn users_of(pki: &Pki) -> cpis_devkit::users::DevUsers {
    cpis_devkit::users::DevUsers::new(pki.dir().parent().unwrap_or(pki.dir()))
}

/// Starts `cpis serve <name>` on `port` as `label` (its log is `<label>.log`),
/// with the settings `cpis dev` gives it plus `extra`; does not wait.
pub fn spawn_service(
    launch: &Launch,
    pki: &Pki,
    (name, label): (ServiceName, &'static str),
    port: u16,
    grpc_name: &'static str,
    extra: Vec<String>,
) -> anyhow::Result<ServiceProc> {
    let tls = pki.ensure(&Caller::Service(name), &launch.trust_domain)?;
    let log = launch.dir.join(format!("{label}.log"));
    let out = std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
    let path = |p: &Path| p.display().to_string();
    let metrics_port = free_port()?;
    let mut extra = extra;
    if name == ServiceName::Attendance {
        // The people at settings: tokens of the development identity
        // provider beside the PKI, verified as `cpis dev` verifies them.
        let users = users_of(pki);
        users.init()?;
        extra.extend([
            "--oidc-issuer".into(),
            cpis_devkit::users::DEV_ISSUER.into(),
            "--oidc-audience".into(),
            cpis_devkit::users::DEV_AUDIENCE.into(),
            "--oidc-jwks-file".into(),
            users.jwks_path().display().to_string(),
        ]);
    }
    let mut cmd = Command::new(&launch.exe);
    cmd.arg("serve")
        .arg(name.as_str())
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(["--ca", &path(&tls.ca), "--cert", &path(&tls.cert), "--key", &path(&tls.key)])
        .args(["--trust-domain", &launch.trust_domain])
        .args(["--database-url", &launch.database_url])
        // What `cpis dev` gives each service (suite::dev_common): 16 pooled
        // connections, no drain delay, metrics on a port of their own.
        .args(["--pool-size", "16", "--drain-secs", "0"])
        // Every client of the benchmark is on 127.0.0.1: the per-address
        // share of handshake slots (for stalled clients of one address)
        // would count them all as one.
        .args(["--max-handshakes-per-address", "256"])
        .args(["--metrics-listen", &format!("127.0.0.1:{metrics_port}")])
        .args(extra)
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out);
    // Settings from the caller's environment would skew the comparison:
    // every service runs on its defaults plus the flags above.
    for (key, _) in std::env::vars_os() {
        let key_text = key.to_string_lossy();
        if key_text.starts_with("CPIS_") || key_text.starts_with("DATABASE_URL") {
            cmd.env_remove(&key);
        }
    }
    // Diagnosis only, never a recorded run: `CPIS_BENCH_SERVICE_ENV='K=V K=V'`
    // sets service settings for an A/B of one of them.
    for (key, value) in service_env() {
        cmd.env(key, value);
    }
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::process::CommandExt;
        // SAFETY: prctl is async-signal-safe and touches no memory of ours.
        // The service goes when the benchmark does, even if it is killed.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                Ok(())
            });
        }
    }
    let child = cmd.spawn().with_context(|| format!("starting {} serve {}", launch.exe.display(), name.as_str()))?;
    Ok(ServiceProc { name: label, port, grpc_name, metrics_port, child: Some(child), log })
}

/// Waits until `s` reports its service SERVING (60 s at most).
pub async fn wait_ready(s: &mut ServiceProc, tls: &cpis_runtime::tls::TlsPaths) -> anyhow::Result<()> {
    use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest};
    let channel = cpis_runtime::client::channel(&format!("https://localhost:{}", s.port), tls, None)?;
    let mut client = HealthClient::new(channel);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        s.check_alive()?;
        let ok = client
            .check(HealthCheckRequest { service: s.grpc_name.into() })
            .await
            .map(|r| r.into_inner().status == 1)
            .unwrap_or(false);
        if ok {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{} was not ready within 60 s; its log ends:\n{}", s.name, s.log_tail(20));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Memory of the three services, in KiB (0 when unreadable).
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Rss {
    /// Registry.
    pub registry_kib: u64,
    /// Attendance.
    pub attendance_kib: u64,
    /// Notification.
    pub notification_kib: u64,
}

impl Rss {
    fn read(s: &Services, f: impl Fn(&ServiceProc) -> Option<u64>) -> Rss {
        Rss {
            registry_kib: f(&s.registry).unwrap_or(0),
            attendance_kib: f(&s.attendance).unwrap_or(0),
            notification_kib: f(&s.notification).unwrap_or(0),
        }
    }

    fn max(self, o: Rss) -> Rss {
        Rss {
            registry_kib: self.registry_kib.max(o.registry_kib),
            attendance_kib: self.attendance_kib.max(o.attendance_kib),
            notification_kib: self.notification_kib.max(o.notification_kib),
        }
    }
}

/// Samples the services' RSS in the background and keeps the largest values.
#[derive(Debug)]
pub struct RssSampler {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Rss>,
}

impl RssSampler {
    /// Starts sampling every `every`.
    pub fn start(s: &Services, every: Duration) -> RssSampler {
        let pids = [s.registry.pid(), s.attendance.pid(), s.notification.pid()];
        let (stop, mut stopped) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(async move {
            let read = |pid: Option<u32>| pid.and_then(|p| status_kib(p, "VmRSS")).unwrap_or(0);
            let mut max = Rss::default();
            loop {
                let now =
                    Rss { registry_kib: read(pids[0]), attendance_kib: read(pids[1]), notification_kib: read(pids[2]) };
                max = max.max(now);
                tokio::select! {
                    _ = &mut stopped => return max,
                    _ = tokio::time::sleep(every) => {}
                }
            }
        });
        RssSampler { stop, task }
    }

    /// Stops and returns the largest values seen.
    pub async fn finish(self) -> Rss {
        let _ = self.stop.send(());
        self.task.await.unwrap_or_default()
    }
}

/// The Prometheus text of the metrics endpoint on `port`, over plain HTTP/1.1.
pub async fn scrape(port: u16) -> anyhow::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let fetch = async {
        let mut conn = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
        conn.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").await?;
        let mut body = String::new();
        conn.read_to_string(&mut body).await?;
        anyhow::ensure!(body.starts_with("HTTP/1.1 200"), "metrics endpoint answered {:?}", body.lines().next());
        Ok(body)
    };
    tokio::time::timeout(Duration::from_secs(5), fetch).await.context("metrics endpoint: no answer within 5 s")?
}

/// The sum of every sample of metric `name` (any labels) in a scrape, or
/// `None` when the scrape has no sample of it.
pub fn sample(text: &str, name: &str) -> Option<f64> {
    let values: Vec<f64> = text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.strip_prefix(name).is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{')))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .collect();
    (!values.is_empty()).then(|| values.iter().sum())
}

/// The settings of `CPIS_BENCH_SERVICE_ENV` (`K=V` separated by spaces), announced once.
fn service_env() -> Vec<(String, String)> {
    static ANNOUNCED: std::sync::Once = std::sync::Once::new();
    let pairs: Vec<(String, String)> = std::env::var("CPIS_BENCH_SERVICE_ENV")
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|kv| kv.split_once('=').map(|(k, v)| (k.to_string(), v.to_string())))
        .collect();
    if !pairs.is_empty() {
        ANNOUNCED.call_once(|| {
            super::progress(&format!("service settings (CPIS_BENCH_SERVICE_ENV, diagnosis only): {pairs:?}"))
        });
    }
    pairs
}

#[cfg(test)]
mod tests {
    use super::sample;

    #[test]
    fn samples_are_summed_over_labels_and_absence_is_none() {
        let text = "# HELP x_total X.\n# TYPE x_total counter\nx_total{kind=\"a\"} 2\nx_total{kind=\"b\"} 3\nx_total_other 9\n";
        assert_eq!(sample(text, "x_total"), Some(5.0));
        assert_eq!(sample("y 1\n", "x_total"), None);
        assert_eq!(sample("x_total 0\n", "x_total"), Some(0.0));
    }
}
