//! What the agent and the reconciler must agree on about time, in one place: how often each side pings, how long
//! a silent peer is given, the shape of both backoffs, and the clock and the random numbers their jitter uses.

use std::time::Duration;

/// How often each side pings the other over an idle connection.
pub const PING_EVERY: Duration = Duration::from_secs(15);
/// An agent sends its report again this long after the last, even unchanged: what the reconciler holds back
/// until a report newer than a change says so (a port given up, `Allocations::settled`) is released on a quiet
/// node too.
pub const REPORT_AGAIN_AFTER: Duration = Duration::from_secs(60);
/// A peer that sends nothing (not even a pong) for this long is gone: three pings missed.
pub const SILENCE: Duration = Duration::from_secs(3 * PING_EVERY.as_secs());

/// An exponential backoff: `min` doubled for each failure in a row, up to `max`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    pub min: Duration,
    pub max: Duration,
}

/// The agent's dial backoff: 0.5 s up to 30 s, full jitter (many agents must not dial a restarted reconciler at
/// once).
pub const DIAL: Backoff = Backoff {
    min: Duration::from_millis(500),
    max: Duration::from_secs(30),
};

/// The reconciler's backoff of a failing resource: 2 s up to 5 min, ±20 % (a resource retried on time, but not in
/// step with all the others).
pub const RESOURCE: Backoff = Backoff {
    min: Duration::from_secs(2),
    max: Duration::from_secs(300),
};

impl Backoff {
    /// The ceiling for the `failures`-th failure in a row (1-based).
    pub fn ceiling(&self, failures: u32) -> Duration {
        let base = self.min.as_secs_f64() * 2f64.powi(failures.saturating_sub(1).min(16) as i32);
        Duration::from_secs_f64(base.min(self.max.as_secs_f64()))
    }

    /// Full jitter over the ceiling, never below `min`: a reset must not turn into a hot loop. `random` in [0, 1].
    pub fn full_jitter(&self, failures: u32, random: f64) -> Duration {
        let wait = self.ceiling(failures).as_secs_f64() * random.clamp(0.0, 1.0);
        Duration::from_secs_f64(wait.max(self.min.as_secs_f64()))
    }

    /// The ceiling ±20 %, never above `max`. `random` in [0, 1].
    pub fn spread(&self, failures: u32, random: f64) -> Duration {
        let wait = self.ceiling(failures).as_secs_f64() * (0.8 + 0.4 * random.clamp(0.0, 1.0));
        Duration::from_secs_f64(wait.min(self.max.as_secs_f64()))
    }
}

/// Unix milliseconds now.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A random number in [0, 1) for jitter: std's per-process random keys over the clock, no crate for one number.
pub fn random() -> f64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    (h.finish() % 1_000_000) as f64 / 1_000_000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_backoffs_grow_to_their_ceiling_and_stay_within_their_jitter() {
        assert_eq!(RESOURCE.spread(1, 0.5), Duration::from_secs(2));
        assert_eq!(RESOURCE.spread(2, 0.5), Duration::from_secs(4));
        assert_eq!(RESOURCE.spread(30, 0.5), Duration::from_secs(300));
        assert!(RESOURCE.spread(30, 1.0) <= RESOURCE.max);
        assert_eq!(DIAL.full_jitter(1, 0.0), DIAL.min, "never below the minimum");
        assert_eq!(DIAL.full_jitter(30, 1.0), DIAL.max);
        for n in 1..20 {
            assert!(DIAL.full_jitter(n, 1.0) <= DIAL.max && RESOURCE.spread(n, 0.0) >= RESOURCE.min.mul_f64(0.8));
        }
        for _ in 0..1000 {
            let r = random();
            assert!((0.0..1.0).contains(&r));
        }
    }
}
