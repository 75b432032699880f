//! The load generator of `cpis bench`: closed-loop levels (a fixed number of
//! workers, each sending its next request when the previous one answered),
//! and latency summaries from the recorded samples.

use futures::future::BoxFuture;
use serde::Serialize;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// One request of a load level, given the worker's number; `Err` carries a
/// short description (a status code and message, never personal data).
pub type Op = Arc<dyn Fn(usize) -> BoxFuture<'static, Result<(), String>> + Send + Sync>;

/// The longest a single request may take before it counts as an error (the
/// requests themselves carry a 10 s gRPC deadline; this bounds the phase).
const REQUEST_CAP: Duration = Duration::from_secs(30);

/// Latency percentiles of a set of samples, in milliseconds.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Latency {
    /// How many samples.
    pub samples: usize,
    /// Mean.
    pub mean_ms: f64,
    /// Median.
    pub p50_ms: f64,
    /// 90th percentile.
    pub p90_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// 99.9th percentile.
    pub p999_ms: f64,
    /// Largest sample.
    pub max_ms: f64,
}

impl Latency {
    /// Summarises samples given in microseconds (nearest-rank percentiles).
    pub fn of(mut micros: Vec<u64>) -> Latency {
        if micros.is_empty() {
            return Latency::default();
        }
        micros.sort_unstable();
        let n = micros.len();
        let rank = |q: f64| {
            let i = ((q * n as f64).ceil() as usize).clamp(1, n) - 1;
            micros[i] as f64 / 1000.0
        };
        let sum: u128 = micros.iter().map(|&m| u128::from(m)).sum();
        Latency {
            samples: n,
            mean_ms: sum as f64 / n as f64 / 1000.0,
            p50_ms: rank(0.50),
            p90_ms: rank(0.90),
            p99_ms: rank(0.99),
            p999_ms: rank(0.999),
            max_ms: micros[n - 1] as f64 / 1000.0,
        }
    }
}

/// Microseconds of a duration, for samples.
pub fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// What one closed-loop level measured.
#[derive(Debug, Clone, Serialize)]
pub struct LevelResult {
    /// Workers sending requests at once.
    pub concurrency: usize,
    /// Requests that started inside the measured window and succeeded.
    pub requests: u64,
    /// Requests that started inside the window and failed.
    pub errors: u64,
    /// From the window's start to the last measured answer.
    pub seconds: f64,
    /// Successful requests per second.
    pub per_second: f64,
    /// Latency of the successful requests.
    pub latency: Latency,
    /// The first error seen (warm-up included), if any.
    pub first_error: Option<String>,
}

/// Runs `op` with `concurrency` workers: `warmup` unrecorded, then
/// `duration` recorded. Only requests that start inside the recorded window
/// count; the window closes when the last of them has answered.
pub async fn closed_loop(concurrency: usize, warmup: Duration, duration: Duration, op: Op) -> LevelResult {
    let start = Instant::now() + warmup;
    let end = start + duration;
    let mut workers = Vec::with_capacity(concurrency);
    for w in 0..concurrency {
        let op = op.clone();
        workers.push(tokio::spawn(async move {
            let mut samples = Vec::new();
            let mut errors = 0u64;
            let mut first_error: Option<String> = None;
            let mut last_done = start;
            loop {
                let began = Instant::now();
                if began >= end {
                    break;
                }
                let result = match tokio::time::timeout(REQUEST_CAP, op(w)).await {
                    Ok(r) => r,
                    Err(_) => Err(format!("no answer within {REQUEST_CAP:?}")),
                };
                let done = Instant::now();
                let failed = result.is_err();
                if let Err(e) = result {
                    first_error.get_or_insert(e);
                }
                if began >= start {
                    last_done = last_done.max(done);
                    if failed {
                        errors += 1;
                    } else {
                        samples.push(micros(done - began));
                    }
                }
                if failed {
                    // A failing service must not turn the worker into a busy loop.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
            (samples, errors, first_error, last_done)
        }));
    }
    let mut samples = Vec::new();
    let mut errors = 0;
    let mut first_error = None;
    let mut last_done = start;
    for worker in workers {
        match worker.await {
            Ok((s, e, f, l)) => {
                samples.extend(s);
                errors += e;
                if first_error.is_none() {
                    first_error = f;
                }
                last_done = last_done.max(l);
            }
            Err(e) => {
                errors += 1;
                first_error.get_or_insert(format!("load worker panicked: {e}"));
            }
        }
    }
    let seconds = last_done.saturating_duration_since(start).as_secs_f64().max(duration.as_secs_f64() * 0.5);
    let requests = samples.len() as u64;
    LevelResult {
        concurrency,
        requests,
        errors,
        seconds,
        per_second: requests as f64 / seconds,
        latency: Latency::of(samples),
        first_error,
    }
}

/// The level with the most requests per second.
pub fn peak(levels: &[LevelResult]) -> Option<&LevelResult> {
    levels.iter().max_by(|a, b| a.per_second.total_cmp(&b.per_second))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_the_nearest_rank() {
        let l = Latency::of((1..=1000).map(|i| i * 1000).collect());
        assert_eq!(l.samples, 1000);
        assert_eq!(l.p50_ms, 500.0);
        assert_eq!(l.p99_ms, 990.0);
        assert_eq!(l.p999_ms, 999.0);
        assert_eq!(l.max_ms, 1000.0);
        assert_eq!(Latency::of(vec![]).samples, 0);
        assert_eq!(Latency::of(vec![7000]).p999_ms, 7.0);
    }

    #[tokio::test]
    async fn a_level_counts_only_its_window() {
        let op: Op = Arc::new(|_| {
            Box::pin(async {
                tokio::time::sleep(Duration::from_millis(5)).await;
                Ok(())
            })
        });
        let r = closed_loop(2, Duration::from_millis(200), Duration::from_millis(200), op).await;
        assert_eq!(r.errors, 0);
        // Two workers at 5 ms or more a request: at most 80 in the 200 ms
        // window, up to 160 if the equally long warm-up were counted too.
        assert!(r.requests >= 1 && r.requests <= 85, "{}", r.requests);
        assert!(r.latency.p50_ms >= 5.0);
        assert!(r.seconds >= 0.2);
    }
}
