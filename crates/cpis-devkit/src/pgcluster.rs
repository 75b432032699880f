//! A private PostgreSQL cluster under a directory, for `cpis dev`, the tests
//! and the benchmarks: found from the server binaries on this machine,
//! initialised on first use, run as an unprivileged user when we are root
//! (`initdb` and `postgres` refuse root), listening on a Unix socket in the
//! same directory and on 127.0.0.1 (a free port chosen at start), and stopped
//! when dropped. With TLS on (the default) the server presents a certificate
//! from the development PKI (`localhost`, `127.0.0.1`), TCP connections must
//! use TLS (`hostssl` only), and [`PrivateCluster::url`] asks for
//! `sslmode=verify-full`, so everything that uses the cluster exercises the
//! TLS path. It can also be a synchronous streaming standby of another
//! cluster ([`PrivateCluster::start_standby`]), for failover tests.
//!
//! The lifecycle (start, standby, supervise, stop) is read here; its parts
//! live beside it: `setup` (`initdb`, access rules, the server's TLS
//! files, the certificate role) and `host` (what this machine provides:
//! the server binaries, an unprivileged user, ownership, a free port).

mod host;
mod setup;

use anyhow::{bail, Context as _};
pub use host::find_bindir;
use host::{allow_traverse, chown, free_port, unprivileged_user};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Options for [`PrivateCluster::start`].
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// Turn off fsync and synchronous commit: fast, and fine for throwaway test data only.
    pub unsafe_fast: bool,
    /// Extra `-c name=value` server settings.
    pub settings: Vec<(String, String)>,
    /// Ask the kernel to stop the server if this thread's process dies.
    pub die_with_parent: bool,
    /// `ssl = on` with a development certificate, TCP only over TLS.
    pub tls: bool,
    /// The state directory of the PKI that issues the server certificate
    /// (`<dir>/pki`); `None`: a PKI of the cluster's own, under its directory.
    pub pki_state_dir: Option<PathBuf>,
    /// The port (TCP and socket name); `None`: one free on 127.0.0.1 at start.
    pub port: Option<u16>,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        Self {
            unsafe_fast: false,
            settings: Vec::new(),
            die_with_parent: true,
            tls: true,
            pki_state_dir: None,
            port: None,
        }
    }
}

/// A running private cluster.
#[derive(Debug)]
pub struct PrivateCluster {
    bin: PathBuf,
    data: PathBuf,
    socket_dir: PathBuf,
    log: PathBuf,
    port: u16,
    run_as: Option<(u32, u32)>,
    options: ClusterOptions,
    child: Option<Child>,
    ca: Option<PathBuf>,
}

/// The superuser created by `initdb`.
pub const SUPERUSER: &str = "cpis";
/// A role that may log in over TCP only with a client certificate (CN = role
/// name) from the cluster's CA: client-certificate authentication to the database.
pub const CERT_USER: &str = "cpis_cert";

impl PrivateCluster {
    /// Initialises (if needed) and starts a cluster under `dir`.
    pub fn start(dir: &Path, options: ClusterOptions) -> anyhow::Result<Self> {
        let mut cluster = Self::prepare(dir, options)?;
        if !cluster.data.join("PG_VERSION").exists() {
            cluster.initdb()?;
        }
        cluster.configure()?;
        cluster.spawn()?;
        cluster.ensure_cert_user()?;
        Ok(cluster)
    }

    /// Starts a streaming standby of `primary` under `dir` (a fresh
    /// `pg_basebackup` unless one is there), connecting to it as
    /// `application_name` (list that name in the primary's
    /// `synchronous_standby_names` to make it synchronous).
    pub fn start_standby(
        dir: &Path,
        primary: &PrivateCluster,
        application_name: &str,
        options: ClusterOptions,
    ) -> anyhow::Result<Self> {
        let mut cluster = Self::prepare(dir, options)?;
        if !cluster.data.join("PG_VERSION").exists() {
            let out = cluster
                .command("pg_basebackup")
                .arg("-D")
                .arg(&cluster.data)
                .arg("-h")
                .arg(&primary.socket_dir)
                .args([
                    "-p",
                    &primary.port.to_string(),
                    "-U",
                    SUPERUSER,
                    "-X",
                    "stream",
                    "--checkpoint=fast",
                    "--no-sync",
                ])
                .stdin(Stdio::null())
                .output()
                .context("running pg_basebackup")?;
            if !out.status.success() {
                bail!("pg_basebackup failed: {}", String::from_utf8_lossy(&out.stderr));
            }
            let conninfo = format!(
                "host={} port={} user={SUPERUSER} application_name={application_name}",
                primary.socket_dir.display(),
                primary.port
            );
            let auto = cluster.data.join("postgresql.auto.conf");
            let mut text = std::fs::read_to_string(&auto).unwrap_or_default();
            text.push_str(&format!("primary_conninfo = '{}'\n", conninfo.replace('\'', "''")));
            std::fs::write(&auto, text)?;
            std::fs::write(cluster.data.join("standby.signal"), "")?;
            if let Some((uid, gid)) = cluster.run_as {
                chown(&auto, uid, gid)?;
                chown(&cluster.data.join("standby.signal"), uid, gid)?;
            }
        }
        cluster.configure()?;
        cluster.spawn()?;
        Ok(cluster)
    }

    /// Promotes a standby to primary and waits until it accepts writes.
    pub async fn promote(&self) -> anyhow::Result<()> {
        let client = cpis_runtime::db::connect(&self.socket_url("postgres")).await?;
        client.execute("SELECT pg_promote(true, 30)", &[]).await.context("pg_promote")?;
        Ok(())
    }

    fn prepare(dir: &Path, options: ClusterOptions) -> anyhow::Result<Self> {
        let bin = find_bindir()?;
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let dir = dir.canonicalize()?;
        let data = dir.join("data");
        let socket_dir = dir.join("run");
        let log = dir.join("postgres.log");
        let run_as = unprivileged_user()?;
        std::fs::create_dir_all(&socket_dir)?;
        if let Some((uid, gid)) = run_as {
            // The server user must reach the directory and own what it writes.
            allow_traverse(&dir)?;
            chown(&dir, uid, gid)?;
            chown(&socket_dir, uid, gid)?;
            if data.exists() {
                chown(&data, uid, gid)?;
            }
        }
        let port = match options.port {
            Some(port) => port,
            None => free_port()?,
        };
        Ok(Self { bin, data, socket_dir, log, port, run_as, options, child: None, ca: None })
    }

    /// A command running one of the server's programs as the server user.
    fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(self.bin.join(program));
        #[cfg(unix)]
        if let Some((uid, gid)) = self.run_as {
            use std::os::unix::process::CommandExt;
            cmd.uid(uid).gid(gid);
        }
        cmd.env_remove("PGDATA").env("LC_ALL", "C");
        cmd
    }

    /// Starts the server process and waits until it accepts connections.
    pub fn spawn(&mut self) -> anyhow::Result<()> {
        if self.child.is_some() {
            return Ok(());
        }
        let pid_file = self.data.join("postmaster.pid");
        if pid_file.exists() {
            let pid = std::fs::read_to_string(&pid_file).unwrap_or_default();
            let pid = pid.lines().next().unwrap_or_default().trim().to_string();
            if !pid.is_empty() && Path::new(&format!("/proc/{pid}")).exists() {
                bail!(
                    "a PostgreSQL server (pid {pid}) is already running on {}: stop the other `cpis dev` first",
                    self.data.display()
                );
            }
        }
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log)?;
        if let Some((uid, gid)) = self.run_as {
            chown(&self.log, uid, gid)?;
        }
        let mut cmd = self.command("postgres");
        cmd.arg("-D")
            .arg(&self.data)
            .arg("-k")
            .arg(&self.socket_dir)
            .args(["-p", &self.port.to_string()])
            .args(["-c", "listen_addresses=127.0.0.1"])
            .args(["-c", "max_connections=300"]);
        if self.options.unsafe_fast {
            cmd.args(["-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off"]);
        }
        for (k, v) in &self.options.settings {
            cmd.arg("-c").arg(format!("{k}={v}"));
        }
        cmd.stdin(Stdio::null()).stdout(log.try_clone()?).stderr(log);
        #[cfg(target_os = "linux")]
        if self.options.die_with_parent {
            use std::os::unix::process::CommandExt;
            // SAFETY: prctl is async-signal-safe and touches no memory of ours.
            unsafe {
                cmd.pre_exec(|| {
                    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGINT);
                    Ok(())
                });
            }
        }
        let child = cmd.spawn().context("starting postgres")?;
        self.child = Some(child);
        self.wait_ready()
    }

    fn wait_ready(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        let pid_file = self.data.join("postmaster.pid");
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Some(status) = child.try_wait()? {
                    self.child = None;
                    let tail = std::fs::read_to_string(&self.log).unwrap_or_default();
                    let tail: Vec<&str> = tail.lines().rev().take(10).collect();
                    bail!("postgres exited ({status}): {}", tail.into_iter().rev().collect::<Vec<_>>().join("\n"));
                }
            }
            let ready =
                std::fs::read_to_string(&pid_file).map(|s| s.lines().any(|l| l.trim() == "ready")).unwrap_or(false);
            if ready {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("postgres did not become ready within 60 s; see {}", self.log.display());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops the server (fast shutdown: open sessions are rolled back) and waits for it.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        #[cfg(unix)]
        // SAFETY: sending a signal to our own child process.
        unsafe {
            libc::kill(child.id() as libc::pid_t, libc::SIGINT);
        }
        let deadline = Instant::now() + Duration::from_secs(30);
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

    /// True while the server process runs.
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// A `key=value` connection string for `dbname` over TCP to `localhost`:
    /// `sslmode=verify-full` against the cluster's CA with TLS on, else
    /// `sslmode=disable`.
    pub fn url(&self, dbname: &str) -> String {
        let base = format!("host=localhost port={} user={SUPERUSER} dbname={dbname}", self.port);
        match &self.ca {
            Some(ca) => format!("{base} sslmode=verify-full sslrootcert='{}'", ca.display()),
            None => format!("{base} sslmode=disable"),
        }
    }

    /// A connection string over the Unix socket (administration; no TLS there).
    pub fn socket_url(&self, dbname: &str) -> String {
        format!("host={} port={} user={SUPERUSER} dbname={dbname}", self.socket_dir.display(), self.port)
    }

    /// The TCP port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The CA that issued the server's certificate (with TLS on).
    pub fn ca_path(&self) -> Option<&Path> {
        self.ca.as_deref()
    }

    /// Creates `dbname` unless it exists.
    pub async fn create_database(&self, dbname: &str) -> anyhow::Result<()> {
        let client = cpis_runtime::db::connect(&self.socket_url("postgres")).await?;
        let exists = client.query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&dbname]).await?.is_some();
        if !exists {
            // The name is ours (not user input) but quote it all the same.
            client.batch_execute(&format!("CREATE DATABASE \"{}\"", dbname.replace('"', ""))).await?;
        }
        Ok(())
    }
}

impl Drop for PrivateCluster {
    fn drop(&mut self) {
        self.stop();
    }
}
