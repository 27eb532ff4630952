//! Which sandbox is reconciled next, and when: a delay queue keyed by sandbox, after kube-runtime's scheduler.
//!
//! - One request per key. The earliest wins: a request due sooner replaces one due later (the pass it brings
//!   forward schedules its own follow-up), and a later one is dropped while an earlier waits. Requests due at the
//!   same time, or already due, merge their reasons.
//! - A key handed out by [`Scheduler::next`] is running: it is not handed out again until [`Scheduler::done`].
//!   What is requested meanwhile is kept, by the same rules, and waits for `done`.
//!
//! Time is tokio's, so tests run it paused.

use std::collections::{BTreeSet, HashMap};
use std::hash::Hash;
use std::sync::Mutex;

use tokio::sync::Notify;
use tokio::time::Instant;

use super::trigger::{Trigger, Triggers};

pub struct Scheduler<K> {
    inner: Mutex<Inner<K>>,
    wake: Notify,
}

struct Inner<K> {
    /// Requests of keys that are not running.
    waiting: HashMap<K, Request>,
    /// The same, by when they are due (the sequence number keeps equal times in request order).
    due: BTreeSet<(Instant, u64, K)>,
    /// Running keys, with what was requested while they ran.
    running: HashMap<K, Option<Request>>,
    seq: u64,
}

#[derive(Clone, Debug)]
struct Request {
    at: Instant,
    seq: u64,
    why: Triggers,
}

impl Request {
    /// Folds a new request in by the rules above.
    fn absorb(&mut self, at: Instant, trigger: Trigger, seq: u64, now: Instant) {
        if at < self.at && self.at > now {
            *self = Request {
                at,
                seq,
                why: Triggers::one(trigger),
            };
        } else if at <= self.at.max(now) {
            self.why.insert(trigger);
            self.at = self.at.min(at);
        }
    }
}

impl<K: Clone + Eq + Hash + Ord> Default for Scheduler<K> {
    fn default() -> Self {
        Scheduler {
            inner: Mutex::new(Inner {
                waiting: HashMap::new(),
                due: BTreeSet::new(),
                running: HashMap::new(),
                seq: 0,
            }),
            wake: Notify::new(),
        }
    }
}

impl<K: Clone + Eq + Hash + Ord> Scheduler<K> {
    fn inner(&self) -> std::sync::MutexGuard<'_, Inner<K>> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Asks for a pass of `key` at `at`, for `trigger`.
    pub fn schedule(&self, key: &K, trigger: Trigger, at: Instant) {
        let now = Instant::now();
        let mut inner = self.inner();
        inner.seq += 1;
        let seq = inner.seq;
        if let Some(slot) = inner.running.get_mut(key) {
            match slot {
                Some(request) => request.absorb(at, trigger, seq, now),
                None => {
                    *slot = Some(Request {
                        at,
                        seq,
                        why: Triggers::one(trigger),
                    })
                }
            }
            return;
        }
        let before = inner.waiting.get(key).map(|r| (r.at, r.seq));
        let request = inner.waiting.entry(key.clone()).or_insert(Request {
            at,
            seq,
            why: Triggers::one(trigger),
        });
        request.absorb(at, trigger, seq, now);
        let after = (request.at, request.seq);
        if before != Some(after) {
            if let Some((at, seq)) = before {
                inner.due.remove(&(at, seq, key.clone()));
            }
            inner.due.insert((after.0, after.1, key.clone()));
            drop(inner);
            self.wake.notify_waiters();
        }
    }

    /// Asks for a pass of `key` now.
    pub fn now(&self, key: &K, trigger: Trigger) {
        self.schedule(key, trigger, Instant::now());
    }

    /// The next key that is due and not running, with its reasons; it is running until [`Scheduler::done`].
    pub async fn next(&self) -> (K, Triggers) {
        loop {
            let notified = self.wake.notified();
            tokio::pin!(notified);
            // Registered before looking, so a request made in between wakes this wait.
            notified.as_mut().enable();
            let earliest = {
                let mut inner = self.inner();
                match inner.due.first().cloned() {
                    Some((at, seq, key)) if at <= Instant::now() => {
                        inner.due.remove(&(at, seq, key.clone()));
                        let request = inner.waiting.remove(&key).expect("every due entry is waiting");
                        inner.running.insert(key.clone(), None);
                        return (key, request.why);
                    }
                    Some((at, _, _)) => Some(at),
                    None => None,
                }
            };
            match earliest {
                Some(at) => {
                    tokio::select! {
                        () = tokio::time::sleep_until(at) => {}
                        () = &mut notified => {}
                    }
                }
                None => notified.await,
            }
        }
    }

    /// `key`'s pass is over: what was asked for meanwhile waits its turn.
    pub fn done(&self, key: &K) {
        let mut inner = self.inner();
        let Some(Some(request)) = inner.running.remove(key) else {
            return;
        };
        inner.due.insert((request.at, request.seq, key.clone()));
        inner.waiting.insert(key.clone(), request);
        drop(inner);
        self.wake.notify_waiters();
    }

    /// When `key` is due next, if it is waiting.
    pub fn due_at(&self, key: &K) -> Option<Instant> {
        self.inner().waiting.get(key).map(|r| r.at)
    }

    /// Keys waiting or running.
    pub fn len(&self) -> usize {
        let inner = self.inner();
        inner.waiting.len() + inner.running.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    /// `next` within `limit` of paused time, or `None`.
    async fn next_within(s: &Scheduler<&'static str>, limit: Duration) -> Option<(&'static str, String)> {
        tokio::time::timeout(limit, s.next())
            .await
            .ok()
            .map(|(k, why)| (k, why.to_string()))
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_is_handed_out_when_due_and_not_before() {
        let s = Scheduler::default();
        let t0 = Instant::now();
        s.schedule(&"a", Trigger::Resync, t0 + secs(60));
        assert_eq!(next_within(&s, secs(59)).await, None);
        let (key, why) = next_within(&s, secs(2)).await.unwrap();
        assert_eq!((key, why.as_str()), ("a", "resync"));
        assert!(Instant::now() >= t0 + secs(60));
    }

    #[tokio::test(start_paused = true)]
    async fn the_earliest_request_wins_and_due_reasons_merge() {
        let s = Scheduler::default();
        let t0 = Instant::now();
        s.schedule(&"a", Trigger::Resync, t0 + secs(60));
        // Sooner: replaces the resync, which the pass it brings forward will schedule again.
        s.schedule(&"a", Trigger::RetryAfterError, t0 + secs(5));
        // Later than what waits: dropped.
        s.schedule(&"a", Trigger::Resync, t0 + secs(30));
        assert_eq!(s.due_at(&"a"), Some(t0 + secs(5)));
        // Now: replaces again; more of now merge.
        s.now(&"a", Trigger::ConfigCommit);
        s.now(&"a", Trigger::AgentReport);
        s.now(&"a", Trigger::ConfigCommit);
        let got = next_within(&s, secs(1)).await.unwrap();
        assert_eq!(got, ("a", "config commit, agent report".to_string()));
        assert_eq!(Instant::now(), t0, "handed out at once");
        s.done(&"a");
        assert_eq!(next_within(&s, secs(3600)).await, None, "one pass for all of them");
    }

    #[tokio::test(start_paused = true)]
    async fn a_running_key_is_not_handed_out_again_until_done() {
        let s = Scheduler::default();
        s.now(&"a", Trigger::ConfigCommit);
        s.now(&"b", Trigger::ConfigCommit);
        let (first, _) = next_within(&s, secs(1)).await.unwrap();
        assert_eq!(first, "a");
        s.now(&"a", Trigger::AgentReport);
        s.now(&"a", Trigger::BranchMoved);
        let (second, _) = next_within(&s, secs(1)).await.unwrap();
        assert_eq!(second, "b", "a runs: b goes first");
        assert_eq!(next_within(&s, secs(60)).await, None, "a waits for its pass to end");
        s.done(&"a");
        assert_eq!(
            next_within(&s, secs(1)).await.unwrap(),
            ("a", "branch moved, agent report".to_string())
        );
        assert_eq!(s.len(), 2, "a and b are running");
        s.done(&"a");
        s.done(&"b");
        assert!(s.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_wait_ends_for_a_request_made_while_waiting() {
        let s = std::sync::Arc::new(Scheduler::default());
        let t0 = Instant::now();
        s.schedule(&"late", Trigger::Resync, t0 + secs(600));
        let waiter = tokio::spawn({
            let s = s.clone();
            async move { s.next().await.0 }
        });
        tokio::time::sleep(secs(10)).await;
        s.now(&"soon", Trigger::AgentConnected);
        assert_eq!(waiter.await.unwrap(), "soon");
        assert!(Instant::now() < t0 + secs(11));
    }
}
