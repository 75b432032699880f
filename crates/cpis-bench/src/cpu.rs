//! The CPU meter of the benchmark: how much of the machine this run's
//! process tree used, phase by phase, and how much everything else did.

use serde::Serialize;
use std::time::{Duration, Instant};

/// CPU use during one phase, as shares of the machine's capacity (all CPUs).
#[derive(Debug, Clone, Default, Serialize)]
pub struct CpuShare {
    /// Wall-clock seconds observed.
    pub seconds: f64,
    /// Share of capacity in use by anything.
    pub busy_pct: f64,
    /// Share used by this benchmark, its services and its PostgreSQL.
    pub ours_pct: f64,
    /// Share used by every other process on the machine: noise.
    pub others_pct: f64,
}

#[derive(Debug, Default, Clone, Copy)]
struct Ticks {
    total: u64,
    busy: u64,
    ours: u64,
}

/// Measures, phase by phase, how much CPU this benchmark's process tree
/// used and how much everything else on the machine did (`/proc/stat` and
/// `/proc/<pid>/stat`), so that a figure taken while another job was
/// busy can be recognised.
#[derive(Debug)]
pub struct CpuMeter {
    phase: std::sync::Arc<std::sync::Mutex<String>>,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Vec<(String, CpuShare)>>,
}

impl CpuMeter {
    /// Starts measuring, attributing time to `phase` until [`Self::phase`] changes it.
    pub fn start(phase: &str) -> CpuMeter {
        let label = std::sync::Arc::new(std::sync::Mutex::new(phase.to_string()));
        let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
        let current = label.clone();
        let task = tokio::spawn(async move {
            let me = std::process::id();
            let mut per_pid = HashMapU32::new();
            let mut last = sample(me, &mut per_pid);
            let mut last_at = Instant::now();
            let mut phases: Vec<(String, Ticks, f64)> = Vec::new();
            loop {
                let done = tokio::select! {
                    _ = &mut stopped => true,
                    _ = tokio::time::sleep(Duration::from_millis(500)) => false,
                };
                let now = sample(me, &mut per_pid);
                let elapsed = last_at.elapsed().as_secs_f64();
                last_at = Instant::now();
                let name = current.lock().map(|p| p.clone()).unwrap_or_default();
                let delta = Ticks {
                    total: now.total.saturating_sub(last.total),
                    busy: now.busy.saturating_sub(last.busy),
                    ours: now.ours,
                };
                last = now;
                match phases.iter_mut().find(|(n, _, _)| *n == name) {
                    Some((_, t, secs)) => {
                        t.total += delta.total;
                        t.busy += delta.busy;
                        t.ours += delta.ours;
                        *secs += elapsed;
                    }
                    None => phases.push((name, delta, elapsed)),
                }
                if done {
                    break;
                }
            }
            phases
                .into_iter()
                .map(|(name, t, seconds)| {
                    let pct = |x: u64| if t.total == 0 { 0.0 } else { 100.0 * x as f64 / t.total as f64 };
                    let ours = t.ours.min(t.busy);
                    let share = CpuShare {
                        seconds,
                        busy_pct: pct(t.busy),
                        ours_pct: pct(ours),
                        others_pct: pct(t.busy - ours),
                    };
                    (name, share)
                })
                .collect()
        });
        CpuMeter { phase: label, stop, task }
    }

    /// Attributes time from now on to `name`.
    pub fn phase(&self, name: &str) {
        if let Ok(mut p) = self.phase.lock() {
            *p = name.to_string();
        }
    }

    /// Stops and returns the shares, phase by phase, in order of appearance.
    pub async fn finish(self) -> Vec<(String, CpuShare)> {
        let _ = self.stop.send(());
        self.task.await.unwrap_or_default()
    }
}

type HashMapU32 = std::collections::HashMap<u32, u64>;

/// Machine ticks now, and the ticks our process tree used since the last
/// sample (`per_pid` remembers each process's total; a process first seen
/// now counts whole, having started since).
fn sample(me: u32, per_pid: &mut HashMapU32) -> Ticks {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let fields: Vec<u64> =
        stat.lines().next().unwrap_or_default().split_whitespace().skip(1).filter_map(|v| v.parse().ok()).collect();
    let total: u64 = fields.iter().take(8).sum();
    let idle = fields.get(3).copied().unwrap_or(0) + fields.get(4).copied().unwrap_or(0);
    // pid -> (parent, utime + stime + reaped children's time).
    let mut procs: std::collections::HashMap<u32, (u32, u64)> = std::collections::HashMap::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for entry in dir.flatten() {
            let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
            let Ok(text) = std::fs::read_to_string(entry.path().join("stat")) else { continue };
            let Some(close) = text.rfind(')') else { continue };
            let rest: Vec<&str> = text[close + 1..].split_whitespace().collect();
            let num = |i: usize| rest.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
            procs.insert(pid, (num(1) as u32, num(11) + num(12) + num(13) + num(14)));
        }
    }
    let mut ours = 0;
    let mut seen = HashMapU32::new();
    for (&pid, &(_, ticks)) in &procs {
        // Ours: this process and everything below it.
        let mut p = pid;
        let mut is_ours = false;
        for _ in 0..64 {
            if p == me {
                is_ours = true;
                break;
            }
            match procs.get(&p) {
                Some(&(parent, _)) if parent != 0 && parent != p => p = parent,
                _ => break,
            }
        }
        if is_ours {
            ours += ticks.saturating_sub(per_pid.get(&pid).copied().unwrap_or(0));
            seen.insert(pid, ticks);
        }
    }
    let first = per_pid.is_empty();
    *per_pid = seen;
    Ticks { total, busy: total.saturating_sub(idle), ours: if first { 0 } else { ours } }
}
