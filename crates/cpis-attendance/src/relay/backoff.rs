//! Retry delays of the relay: exponential, capped, with jitter so that
//! replicas recovering from the same outage do not retry in lockstep.

use std::time::Duration;

/// The delay before attempt `attempts + 1`: `initial * 2^(attempts-1)`,
/// capped at `max`, scaled into its upper half by `jitter` (0..=1) so that
/// replicas recovering from the same outage do not retry in lockstep.
pub fn backoff(attempts: i32, initial: Duration, max: Duration, jitter: f64) -> Duration {
    let doublings = attempts.saturating_sub(1).clamp(0, 30) as u32;
    let full = initial.saturating_mul(1u32 << doublings).min(max);
    full.mul_f64(0.5 + 0.5 * jitter.clamp(0.0, 1.0))
}

/// A random number in `0..=1`, from the random bits of a v4 UUID (which
/// already draws from the OS), to avoid another dependency.
pub(super) fn jitter() -> f64 {
    let b = uuid::Uuid::new_v4().into_bytes();
    f64::from(u32::from_le_bytes([b[12], b[13], b[14], b[15]])) / f64::from(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_within_bounds() {
        let (lo, hi) = (Duration::from_millis(200), Duration::from_secs(30));
        assert_eq!(backoff(1, lo, hi, 1.0), lo);
        assert_eq!(backoff(2, lo, hi, 1.0), Duration::from_millis(400));
        assert_eq!(backoff(4, lo, hi, 1.0), Duration::from_millis(1600));
        assert_eq!(backoff(50, lo, hi, 1.0), hi);
        assert_eq!(backoff(i32::MAX, lo, hi, 1.0), hi);
        assert_eq!(backoff(1, lo, hi, 0.0), Duration::from_millis(100));
        assert_eq!(backoff(0, lo, hi, 1.0), lo);
        for _ in 0..100 {
            let d = backoff(3, lo, hi, jitter());
            assert!(d >= Duration::from_millis(400) && d <= Duration::from_millis(800));
        }
    }
}
