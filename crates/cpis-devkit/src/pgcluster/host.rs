//! What this machine provides a private cluster: the server binaries, an
//! unprivileged user to run them when we are root, ownership and traversal
//! of its directories, and a free TCP port.

use anyhow::{bail, Context as _};
use std::path::{Path, PathBuf};
use std::process::Command;

/// A TCP port free on 127.0.0.1 right now.
pub(super) fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind(("127.0.0.1", 0)).context("finding a free port")?;
    Ok(listener.local_addr()?.port())
}

/// Finds the directory holding `initdb` and `postgres`: `$CPIS_PG_BINDIR`,
/// `pg_config --bindir`, the newest `/usr/lib/postgresql/*/bin`, then `PATH`.
pub fn find_bindir() -> anyhow::Result<PathBuf> {
    let has_server = |d: &Path| d.join("initdb").is_file() && d.join("postgres").is_file();
    if let Ok(dir) = std::env::var("CPIS_PG_BINDIR") {
        let dir = PathBuf::from(dir);
        if has_server(&dir) {
            return Ok(dir);
        }
        bail!("CPIS_PG_BINDIR={} has no initdb and postgres", dir.display());
    }
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if out.status.success() && has_server(&dir) {
            return Ok(dir);
        }
    }
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|rd| rd.filter_map(|e| e.ok()).map(|e| e.path().join("bin")).filter(|d| has_server(d)).collect())
        .unwrap_or_default();
    versions.sort_by_key(|p| {
        p.parent().and_then(|v| v.file_name()).and_then(|v| v.to_str()).and_then(|v| v.parse::<u32>().ok()).unwrap_or(0)
    });
    if let Some(dir) = versions.pop() {
        return Ok(dir);
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            if has_server(&dir) {
                return Ok(dir);
            }
        }
    }
    bail!(
        "no PostgreSQL server binaries found (initdb, postgres): install them \
         (Debian: apt-get install postgresql) or set DATABASE_URL"
    )
}

/// When running as root, the uid/gid of the user that will run PostgreSQL
/// (`$CPIS_PG_USER`, default `postgres`, else `nobody`).
pub(super) fn unprivileged_user() -> anyhow::Result<Option<(u32, u32)>> {
    #[cfg(unix)]
    {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Ok(None);
        }
        let wanted = std::env::var("CPIS_PG_USER").ok();
        let candidates: Vec<String> = match wanted {
            Some(u) => vec![u],
            None => vec!["postgres".into(), "nobody".into()],
        };
        for name in &candidates {
            let cname = std::ffi::CString::new(name.as_str())?;
            // SAFETY: getpwnam returns a pointer to static storage or null; we
            // copy the two integers out at once and keep no reference.
            let pw = unsafe { libc::getpwnam(cname.as_ptr()) };
            if !pw.is_null() {
                let (uid, gid) = unsafe { ((*pw).pw_uid, (*pw).pw_gid) };
                return Ok(Some((uid, gid)));
            }
        }
        bail!("running as root, and none of the users {candidates:?} exists to run PostgreSQL: set CPIS_PG_USER")
    }
    #[cfg(not(unix))]
    Ok(None)
}

/// Gives `path` to the server user.
pub(super) fn chown(path: &Path, uid: u32, gid: u32) -> anyhow::Result<()> {
    std::os::unix::fs::chown(path, Some(uid), Some(gid)).with_context(|| format!("chown {}", path.display()))
}

/// Lets other users pass through every ancestor of `dir` (adds `o+x` where
/// missing), so the unprivileged server user can reach its data directory.
pub(super) fn allow_traverse(dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    for ancestor in dir.ancestors().skip(1) {
        let Ok(meta) = std::fs::metadata(ancestor) else {
            continue;
        };
        let mode = meta.permissions().mode();
        if mode & 0o001 == 0 {
            let mut perms = meta.permissions();
            perms.set_mode(mode | 0o011);
            std::fs::set_permissions(ancestor, perms)
                .with_context(|| format!("letting the server user reach {}", ancestor.display()))?;
        }
    }
    Ok(())
}
