//! Setting a private cluster up: `initdb`, the access rules
//! (`pg_hba.conf`: TCP over TLS only when TLS is on, the certificate role),
//! the server's certificate files from the development PKI, and the
//! certificate-authenticated role.

use super::host::chown;
use super::{PrivateCluster, CERT_USER, SUPERUSER};
use anyhow::{bail, Context as _};
use std::path::Path;
use std::process::Stdio;

impl PrivateCluster {
    /// Writes `pg_hba.conf` and, with TLS, the server's certificate files
    /// (re-issued on every start, owned by the server user, key mode 0600).
    pub(super) fn configure(&mut self) -> anyhow::Result<()> {
        let method = if self.options.tls { "hostssl" } else { "host" };
        let mut hba = String::from("local all all trust\nlocal replication all trust\n");
        if self.options.tls {
            hba.push_str(&format!("hostssl all {CERT_USER} 127.0.0.1/32 cert\n"));
        }
        hba.push_str(&format!("{method} all all 127.0.0.1/32 trust\n{method} replication all 127.0.0.1/32 trust\n"));
        let hba_path = self.data.join("pg_hba.conf");
        std::fs::write(&hba_path, hba)?;
        if let Some((uid, gid)) = self.run_as {
            chown(&hba_path, uid, gid)?;
        }
        if !self.options.tls {
            return Ok(());
        }
        let dir = self.data.parent().context("cluster directory")?.join("tls");
        std::fs::create_dir_all(&dir)?;
        let pki_state = self.options.pki_state_dir.clone().unwrap_or_else(|| dir.clone());
        let pki = crate::pki::Pki::new(&pki_state);
        pki.init()?;
        let mut issue = crate::pki::IssueOptions::client(None);
        issue.server = true;
        let issued = pki.issue_custom("postgres-server", &issue)?;
        for (from, to) in [(&issued.cert, "server.pem"), (&issued.key, "server-key.pem"), (&issued.ca, "ca.pem")] {
            let to = dir.join(to);
            std::fs::copy(from, &to).with_context(|| format!("copying {}", from.display()))?;
            if let Some((uid, gid)) = self.run_as {
                chown(&to, uid, gid)?;
            }
        }
        if let Some((uid, gid)) = self.run_as {
            chown(&dir, uid, gid)?;
        }
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.join("server-key.pem"), std::fs::Permissions::from_mode(0o600))?;
        let setting = |k: &str, v: &Path| (k.to_string(), v.display().to_string());
        self.options.settings.retain(|(k, _)| !k.starts_with("ssl"));
        self.options.settings.extend([
            ("ssl".to_string(), "on".to_string()),
            setting("ssl_cert_file", &dir.join("server.pem")),
            setting("ssl_key_file", &dir.join("server-key.pem")),
            setting("ssl_ca_file", &dir.join("ca.pem")),
        ]);
        self.ca = Some(pki.ca_path());
        Ok(())
    }

    /// Creates [`CERT_USER`] unless it exists (primaries only).
    pub(super) fn ensure_cert_user(&self) -> anyhow::Result<()> {
        let out = self
            .command("psql")
            .args(["-h"])
            .arg(&self.socket_dir)
            .args(["-p", &self.port.to_string(), "-U", SUPERUSER, "-d", "postgres", "-qAtX", "-v", "ON_ERROR_STOP=1"])
            .args(["-c", &format!(
                "DO $$BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{CERT_USER}') THEN CREATE ROLE {CERT_USER} LOGIN; END IF; END$$"
            )])
            .stdin(Stdio::null())
            .output()
            .context("running psql")?;
        if !out.status.success() {
            bail!("creating the role {CERT_USER} failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(())
    }

    /// Initialises the data directory (superuser [`SUPERUSER`], trust on the socket).
    pub(super) fn initdb(&self) -> anyhow::Result<()> {
        let out = self
            .command("initdb")
            .arg("-D")
            .arg(&self.data)
            .args(["-U", SUPERUSER, "--auth=trust", "--no-locale", "-E", "UTF8", "--no-sync"])
            .stdin(Stdio::null())
            .output()
            .context("running initdb")?;
        if !out.status.success() {
            bail!("initdb failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(())
    }
}
