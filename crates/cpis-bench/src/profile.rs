//! `--perf DIR`: CPU profiles of chosen measurement windows, for finding out
//! why a goal is missed (issue 17 asks for a profile of every missed goal).
//!
//! Each window is recorded machine-wide with Linux `perf` (software clock
//! samples, `perf record -a -e cpu-clock --call-graph dwarf`), so the
//! services, PostgreSQL's backends and the load generator all appear, each
//! under its own name. After the run (never while measuring) every recording
//! is folded per process with `inferno-collapse-perf` and drawn as a flame
//! graph with `inferno-flamegraph` (`cargo install inferno`), and a text
//! summary lists each process's share of the samples and its hottest
//! functions. Sampling costs CPU, so a profiled run's figures are not the
//! recorded ones: profile in a separate run, e.g.
//! `cpis-bench --only flagged,alerts --perf docs/bench/profiles`.

use super::progress;
use anyhow::Context as _;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

/// Sampling frequency per CPU: enough for a few thousand stacks a window.
const FREQUENCY_HZ: u32 = 299;

/// Records windows into one directory and turns them into flame graphs.
#[derive(Debug)]
pub struct Profiler {
    dir: PathBuf,
    /// Process id -> service name, so that the three `cpis` processes are told apart.
    names: Vec<(u32, &'static str)>,
    recorded: Mutex<Vec<(String, PathBuf)>>,
}

impl Profiler {
    /// A profiler writing into `dir` (created), or an error when `perf` cannot record here.
    pub fn new(dir: &Path, names: Vec<(u32, &'static str)>) -> anyhow::Result<Profiler> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let probe = Command::new("perf")
            .args(["record", "-q", "-e", "cpu-clock", "-o", "/dev/null", "--", "true"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .context("running perf (Debian: apt-get install linux-perf)")?;
        anyhow::ensure!(probe.success(), "perf cannot record on this machine ({probe})");
        Ok(Profiler { dir: dir.to_path_buf(), names, recorded: Mutex::new(Vec::new()) })
    }

    /// A profiler naming `services` by their pids and this process as the
    /// load generator.
    pub fn of_services(dir: &Path, services: &[&super::procs::ServiceProc]) -> anyhow::Result<Profiler> {
        let mut names: Vec<(u32, &'static str)> = services.iter().filter_map(|s| Some((s.pid()?, s.name))).collect();
        names.push((std::process::id(), "cpis-bench (load)"));
        Profiler::new(dir, names)
    }

    /// Records the whole machine for `length`, starting after `delay`; the
    /// returned task ends when the recording is written.
    pub fn window(&self, label: &str, delay: Duration, length: Duration) -> tokio::task::JoinHandle<()> {
        let data = self.dir.join(format!("{label}.perf.data"));
        self.recorded.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push((label.to_string(), data.clone()));
        let label = label.to_string();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            progress(&format!("perf: recording {label} for {:.1} s", length.as_secs_f64()));
            let status = tokio::process::Command::new("perf")
                .args(["record", "-q", "-a", "-e", "cpu-clock", "-F", &FREQUENCY_HZ.to_string()])
                .args(["--call-graph", "dwarf,16384", "-o"])
                .arg(&data)
                .args(["--", "sleep", &format!("{:.3}", length.as_secs_f64())])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .await;
            if !matches!(status, Ok(s) if s.success()) {
                progress(&format!("perf: recording {label} failed ({status:?})"));
            }
        })
    }

    /// Folds, draws and summarises every recording (after the run).
    pub fn finish(&self) {
        let recorded = std::mem::take(&mut *self.recorded.lock().unwrap_or_else(std::sync::PoisonError::into_inner));
        for (label, data) in recorded {
            match self.render(&label, &data) {
                Ok(svg) => progress(&format!("perf: {label}: {}", svg.display())),
                Err(e) => progress(&format!("perf: {label}: not rendered: {e:#}")),
            }
        }
    }

    fn render(&self, label: &str, data: &Path) -> anyhow::Result<PathBuf> {
        anyhow::ensure!(data.is_file(), "{} was not recorded", data.display());
        progress(&format!("perf: folding {label} (perf script | inferno-collapse-perf; takes a while)"));
        let script = Command::new("perf")
            .args(["script", "--no-inline", "-F", "comm,pid,tid,time,event,ip,sym,dso", "-i"])
            .arg(data)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("perf script")?;
        let folded = Command::new("inferno-collapse-perf")
            .args(["--pid", "--all"])
            .stdin(script.stdout.context("perf script's output")?)
            .output()
            .context("inferno-collapse-perf (cargo install inferno)")?;
        anyhow::ensure!(folded.status.success(), "inferno-collapse-perf failed");
        let folded = self.name_processes(&String::from_utf8_lossy(&folded.stdout));
        let folded_path = self.dir.join(format!("{label}.folded"));
        std::fs::write(&folded_path, &folded)?;
        std::fs::write(self.dir.join(format!("{label}.top.txt")), summary(&folded))?;
        let svg_path = self.dir.join(format!("{label}.svg"));
        let svg = Command::new("inferno-flamegraph")
            .args(["--title", &format!("cpis-bench {label}: CPU samples of every process (perf, cpu-clock)")])
            // Frames narrower than a pixel are left out: the file stays small enough to keep in the repository.
            .args(["--width", "1600", "--minwidth", "1"])
            .arg(&folded_path)
            .output()
            .context("inferno-flamegraph")?;
        anyhow::ensure!(svg.status.success(), "inferno-flamegraph failed");
        std::fs::write(&svg_path, svg.stdout)?;
        // The raw recording is large and machine-specific; the folded stacks keep everything drawn.
        let _ = std::fs::remove_file(data);
        Ok(svg_path)
    }

    /// `cpis-1234;...` -> `attendance;...`; every other process keeps its
    /// command name without the id (`postgres`, `cpis-bench`, ...).
    fn name_processes(&self, folded: &str) -> String {
        let mut out = String::with_capacity(folded.len());
        for line in folded.lines() {
            let (head, rest) = line.split_once(';').unwrap_or((line, ""));
            let (comm, pid) = head.rsplit_once('/').or_else(|| head.rsplit_once('-')).unwrap_or((head, ""));
            let named = pid
                .parse::<u32>()
                .ok()
                .and_then(|pid| self.names.iter().find(|(p, _)| *p == pid).map(|(_, n)| *n))
                .unwrap_or(comm);
            out.push_str(named);
            if !rest.is_empty() {
                out.push(';');
                out.push_str(rest);
            }
            out.push('\n');
        }
        out
    }
}

/// Each process's share of the samples and its ten hottest functions
/// (self time: the innermost frame).
fn summary(folded: &str) -> String {
    let mut per_process: BTreeMap<String, (u64, BTreeMap<String, u64>)> = BTreeMap::new();
    let mut total = 0u64;
    for line in folded.lines() {
        let Some((stack, count)) = line.rsplit_once(' ') else { continue };
        let Ok(count) = count.parse::<u64>() else { continue };
        let process = stack.split(';').next().unwrap_or("?").to_string();
        let leaf = stack.rsplit(';').next().unwrap_or("?").to_string();
        let entry = per_process.entry(process).or_default();
        entry.0 += count;
        *entry.1.entry(leaf).or_default() += count;
        total += count;
    }
    let mut processes: Vec<_> = per_process.into_iter().collect();
    processes.sort_by_key(|(_, (samples, _))| std::cmp::Reverse(*samples));
    let mut out = format!("{total} samples\n");
    for (process, (samples, leaves)) in processes {
        out.push_str(&format!("\n{process}: {:.1}% of samples\n", pct(samples, total)));
        let mut leaves: Vec<_> = leaves.into_iter().collect();
        leaves.sort_by_key(|(_, n)| std::cmp::Reverse(*n));
        for (leaf, n) in leaves.into_iter().take(10) {
            out.push_str(&format!("  {:>5.1}%  {leaf}\n", pct(n, total)));
        }
    }
    out
}

fn pct(n: u64, total: u64) -> f64 {
    if total == 0 {
        0.0
    } else {
        100.0 * n as f64 / total as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn services_are_named_by_process_id_and_others_by_command() {
        let p = Profiler { dir: PathBuf::new(), names: vec![(14492, "attendance")], recorded: Mutex::default() };
        let folded = "tokio-rt-worker-14492;main;poll 7\npostgres-200;exec 3\n";
        assert_eq!(p.name_processes(folded), "attendance;main;poll 7\npostgres;exec 3\n");
        let top = summary(&p.name_processes(folded));
        assert!(top.starts_with("10 samples\n\nattendance: 70.0% of samples\n   70.0%  poll\n"), "{top}");
    }
}
