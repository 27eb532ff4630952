//! Per-resource backoff: a resource whose action failed waits 2 s, 4 s, 8 s … up to 5 min (each ±20 %) before
//! it is tried again, while the rest of its sandbox goes on. Kept per resource rather than per sandbox (as
//! kube-runtime does) so that one failing service holds up only itself.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sdp_protocol::timing::RESOURCE;
pub use sdp_protocol::timing::random as jitter;

/// Backoff after the first failure, and its ceiling.
pub const BACKOFF_MIN: Duration = RESOURCE.min;
pub const BACKOFF_MAX: Duration = RESOURCE.max;

/// Exponential delay with jitter for the `failures`-th failure in a row: 2 s, 4 s, 8 s … 5 min, each ±20 %.
pub fn backoff_delay(failures: u32, jitter: f64) -> Duration {
    RESOURCE.spread(failures, jitter)
}

/// One resource's failures.
#[derive(Clone, Debug)]
struct Entry {
    failures: u32,
    until: Instant,
    /// What the last failure said, shown for as long as the resource waits (a pass in between, woken by
    /// something else, must not hide it).
    error: String,
}

/// The failing resources, by name.
#[derive(Default)]
pub struct Backoffs {
    entries: Mutex<HashMap<String, Entry>>,
    /// No wait is shorter than this (see `ServeConfig::retry_floor`); zero unless set.
    floor: Mutex<Duration>,
}

impl Backoffs {
    fn entries(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn set_floor(&self, floor: Duration) {
        *self.floor.lock().unwrap_or_else(|e| e.into_inner()) = floor;
    }

    /// How long `resource` still waits, with its last error; `None` when it may be tried.
    pub fn waiting(&self, resource: &str) -> Option<(Duration, String)> {
        let entries = self.entries();
        let entry = entries.get(resource)?;
        let now = Instant::now();
        (entry.until > now).then(|| (entry.until - now, entry.error.clone()))
    }

    /// Records a failure of `resource` and says how long it now waits.
    pub fn fail(&self, resource: &str, error: &str) -> Duration {
        let mut entries = self.entries();
        let entry = entries.entry(resource.to_string()).or_insert(Entry {
            failures: 0,
            until: Instant::now(),
            error: String::new(),
        });
        entry.failures += 1;
        entry.error = error.to_string();
        let floor = *self.floor.lock().unwrap_or_else(|e| e.into_inner());
        let wait = backoff_delay(entry.failures, jitter()).max(floor);
        entry.until = Instant::now() + wait;
        wait
    }

    pub fn succeeded(&self, resource: &str) {
        self.entries().remove(resource);
    }

    /// The number of failures in a row of `resource`.
    pub fn failures(&self, resource: &str) -> u32 {
        self.entries().get(resource).map_or(0, |e| e.failures)
    }
}
