//! The processes under test: a `cpis serve` process and PostgreSQL (run
//! from a thread inside the database's namespace), each stopped when dropped.

use super::topology::{enter, ip};
use crate::DB;
use cpis_devkit::pgcluster::{ClusterOptions, PrivateCluster};
use std::path::PathBuf;
use std::process::Child;

/// A `cpis serve` process, killed when dropped.
pub(crate) struct Service {
    pub(crate) name: &'static str,
    pub(crate) child: Child,
    pub(crate) log: PathBuf,
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Service {
    pub(crate) fn tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(25)..].join("\n")
    }
}

/// PostgreSQL run from a thread inside the database's namespace (the server
/// process inherits it), stopped when dropped.
pub(crate) struct Database {
    /// A connection string over the server's Unix socket (reachable from any namespace).
    pub(crate) url: String,
    pub(crate) stop: Option<std::sync::mpsc::Sender<()>>,
    pub(crate) thread: Option<std::thread::JoinHandle<()>>,
}

impl Database {
    pub(crate) fn start(ns: String, dir: PathBuf) -> Database {
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<String, String>>();
        let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::spawn(move || {
            enter(&ns);
            let hba_dir = dir.join("hba");
            std::fs::create_dir_all(&hba_dir).expect("hba dir");
            let hba = hba_dir.join("pg_hba.conf");
            std::fs::write(&hba, "local all all trust\nhost all all 10.77.0.0/24 trust\n").expect("pg_hba");
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(&hba_dir, std::fs::Permissions::from_mode(0o755));
            let _ = std::fs::set_permissions(&hba, std::fs::Permissions::from_mode(0o644));
            let settings = [
                ("listen_addresses", ip(DB.1).to_string()),
                ("hba_file", hba.display().to_string()),
                // The server-side keepalives k8s/README.md recommends, shortened.
                ("tcp_keepalives_idle", "2".into()),
                ("tcp_keepalives_interval", "1".into()),
                ("tcp_keepalives_count", "3".into()),
            ];
            let options = ClusterOptions {
                unsafe_fast: true,
                settings: settings.iter().map(|(k, v)| (k.to_string(), v.clone())).collect(),
                die_with_parent: true,
                // Plain TCP inside the test's own namespaces: the faults are
                // the subject here (tests/e2e/database_tls.rs covers TLS).
                tls: false,
                pki_state_dir: None,
                port: Some(5432),
            };
            let cluster = match PrivateCluster::start(&dir.join("pg"), options) {
                Ok(c) => c,
                Err(e) => {
                    ready_tx.send(Err(format!("{e:#}"))).ok();
                    return;
                }
            };
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
            let created = rt
                .block_on(cluster.create_database("cpis"))
                .map(|()| cluster.socket_url("cpis"))
                .map_err(|e| format!("{e:#}"));
            ready_tx.send(created).ok();
            let _ = stop_rx.recv();
            drop(cluster);
        });
        let url = ready_rx.recv().expect("database thread").expect("starting PostgreSQL in its namespace");
        Database { url, stop: Some(stop_tx), thread: Some(thread) }
    }
}

impl Drop for Database {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
