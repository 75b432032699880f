//! The test's network: one Linux network namespace per party, joined by
//! veth pairs to a bridge, deleted when dropped; the nftables rules that
//! silently drop packets between two parties, and entering a namespace.

use crate::PARTIES;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::process::{Command, Stdio};

pub(crate) fn ip(octet: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 77, 0, octet)
}

pub(crate) fn run(cmd: &mut Command) -> Result<(), String> {
    let out = cmd.stdin(Stdio::null()).output().map_err(|e| format!("{cmd:?}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("{cmd:?}: {}", String::from_utf8_lossy(&out.stderr).trim()))
    }
}

pub(crate) fn ip_cmd(args: &[&str]) -> Result<(), String> {
    run(Command::new("ip").args(args))
}

/// The namespaces of one run, deleted when dropped (a namespace takes its
/// veth ends, addresses and nftables rules with it).
pub(crate) struct Topology {
    pub(crate) prefix: String,
    pub(crate) created: Vec<String>,
}

impl Topology {
    pub(crate) fn ns(&self, party: &str) -> String {
        format!("{}{party}", self.prefix)
    }

    /// Deletes namespaces left by an earlier run that was killed before its
    /// guards ran (its process no longer exists).
    pub(crate) fn remove_stale() {
        let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else { return };
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let name = line.split_whitespace().next().unwrap_or_default();
            let Some(rest) = name.strip_prefix("cpisnf") else { continue };
            let pid: String = rest.chars().take_while(char::is_ascii_digit).collect();
            if !pid.is_empty() && !std::path::Path::new(&format!("/proc/{pid}")).exists() {
                let _ = ip_cmd(&["netns", "del", name]);
            }
        }
    }

    pub(crate) fn create() -> Result<Topology, String> {
        Self::remove_stale();
        let mut t = Topology { prefix: format!("cpisnf{}", std::process::id()), created: Vec::new() };
        let hub = t.ns("hub");
        ip_cmd(&["netns", "add", &hub])?;
        t.created.push(hub.clone());
        ip_cmd(&["-n", &hub, "link", "add", "br0", "type", "bridge"])?;
        ip_cmd(&["-n", &hub, "link", "set", "br0", "up"])?;
        for (i, (party, octet)) in PARTIES.iter().enumerate() {
            let ns = t.ns(party);
            ip_cmd(&["netns", "add", &ns])?;
            t.created.push(ns.clone());
            let port = format!("p{i}");
            ip_cmd(&["-n", &hub, "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns", &ns])?;
            ip_cmd(&["-n", &hub, "link", "set", &port, "master", "br0", "up"])?;
            ip_cmd(&["-n", &ns, "addr", "add", &format!("{}/24", ip(*octet)), "dev", "eth0"])?;
            ip_cmd(&["-n", &ns, "link", "set", "eth0", "up"])?;
            ip_cmd(&["-n", &ns, "link", "set", "lo", "up"])?;
        }
        Ok(t)
    }

    /// Silently drops every packet between `party` and `peer`, both ways,
    /// inside `party`'s namespace.
    pub(crate) fn cut(&self, party: &str, peer: u8) {
        let rules = format!(
            "table inet cpisfault {{\n\
             chain out {{\n type filter hook output priority 0; policy accept;\n ip daddr {peer} drop\n }}\n\
             chain in {{\n type filter hook input priority 0; policy accept;\n ip saddr {peer} drop\n }}\n\
             }}\n",
            peer = ip(peer)
        );
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.ns(party), "nft", "-f", "-"])
            .stdin(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("nft");
        use std::io::Write as _;
        child.stdin.take().expect("stdin").write_all(rules.as_bytes()).expect("nft rules");
        let out = child.wait_with_output().expect("nft");
        assert!(out.status.success(), "nft: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// Lets `party`'s packets through again.
    pub(crate) fn heal(&self, party: &str) {
        run(Command::new("ip").args(["netns", "exec", &self.ns(party), "nft", "delete", "table", "inet", "cpisfault"]))
            .expect("nft delete");
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        for ns in self.created.iter().rev() {
            if let Err(e) = ip_cmd(&["netns", "del", ns]) {
                eprintln!("netfault: could not delete namespace {ns}: {e}");
            }
        }
    }
}

/// Moves the calling thread into namespace `ns`: sockets it creates from now
/// on (and processes it spawns) live there.
pub(crate) fn enter(ns: &str) {
    let f = std::fs::File::open(format!("/var/run/netns/{ns}")).expect("namespace file");
    // SAFETY: setns on a valid namespace fd affects only this thread.
    let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "setns {ns}: {}", std::io::Error::last_os_error());
}
