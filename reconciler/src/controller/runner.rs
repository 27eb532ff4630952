//! The workers, after kube-runtime's runner: at most `workers` passes at once, never two of one key (the
//! scheduler sees to that), a pass that panics caught and turned into a retry, and a stop that lets the passes
//! in flight end.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;
use tokio::sync::watch;
use tokio::time::Instant;

use super::scheduler::Scheduler;
use super::trigger::{Trigger, Triggers};

/// What a pass asks for next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Requeue {
    /// Another pass after this long, for this reason (a backoff running out, the resync).
    After(Duration, Trigger),
    /// Nothing until an event wakes the key (the sandbox is gone).
    Never,
}

/// What the runner drives: one pass of a key, and what to do when a pass panicked.
pub trait Reconcile<K>: Send + Sync + 'static {
    fn reconcile(self: Arc<Self>, key: K, why: Triggers) -> impl Future<Output = Requeue> + Send;

    /// The pass of `key` panicked with `message`: show it, and say when to try again.
    fn panicked(&self, key: &K, message: &str) -> Requeue;
}

/// Runs `workers` workers until `stop` turns true; returns once the passes in flight have ended.
pub async fn run<K, R>(scheduler: Arc<Scheduler<K>>, reconciler: Arc<R>, workers: usize, stop: watch::Receiver<bool>)
where
    K: Clone + Eq + std::hash::Hash + Ord + Send + Sync + 'static,
    R: Reconcile<K>,
{
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..workers.max(1) {
        let (scheduler, reconciler, mut stop) = (scheduler.clone(), reconciler.clone(), stop.clone());
        tasks.spawn(async move {
            loop {
                let (key, why) = tokio::select! {
                    biased;
                    _ = stop.wait_for(|stop| *stop) => break,
                    next = scheduler.next() => next,
                };
                // A bug, or input nobody foresaw, must take neither the worker nor the key with it.
                let pass = std::panic::AssertUnwindSafe(reconciler.clone().reconcile(key.clone(), why));
                let requeue = match pass.catch_unwind().await {
                    Ok(requeue) => requeue,
                    Err(panic) => reconciler.panicked(&key, &panic_message(&*panic)),
                };
                if let Requeue::After(wait, trigger) = requeue {
                    scheduler.schedule(&key, trigger, Instant::now() + wait);
                }
                scheduler.done(&key);
            }
        });
    }
    while tasks.join_next().await.is_some() {}
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "no message".into())
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    /// Counts passes per key and how many run at once; `boom` panics on its first pass.
    #[derive(Default)]
    struct Probe {
        passes: Mutex<HashMap<&'static str, Vec<String>>>,
        running: AtomicUsize,
        most: AtomicUsize,
        panics: Mutex<Vec<String>>,
    }

    impl Reconcile<&'static str> for Probe {
        async fn reconcile(self: Arc<Self>, key: &'static str, why: Triggers) -> Requeue {
            let n = {
                let mut passes = self.passes.lock().unwrap();
                let list = passes.entry(key).or_default();
                list.push(why.to_string());
                list.len()
            };
            let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
            self.most.fetch_max(now, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_secs(1)).await;
            self.running.fetch_sub(1, Ordering::SeqCst);
            if key == "boom" && n == 1 {
                panic!("index out of bounds in {key}");
            }
            Requeue::After(Duration::from_secs(60), Trigger::Resync)
        }

        fn panicked(&self, key: &&'static str, message: &str) -> Requeue {
            self.panics.lock().unwrap().push(format!("{key}: {message}"));
            Requeue::After(Duration::from_secs(2), Trigger::RetryAfterError)
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_pass_that_panics_is_retried_and_the_workers_go_on() {
        let scheduler = Arc::new(Scheduler::default());
        let probe = Arc::new(Probe::default());
        for key in ["boom", "a", "b", "c", "d"] {
            scheduler.now(&key, Trigger::ConfigCommit);
        }
        let (stop_tx, stop) = watch::channel(false);
        let runner = tokio::spawn(run(scheduler.clone(), probe.clone(), 2, stop));
        tokio::time::sleep(Duration::from_secs(30)).await;
        {
            let passes = probe.passes.lock().unwrap();
            assert_eq!(
                passes["boom"],
                ["config commit", "retry after error"],
                "retried after its panic"
            );
            for key in ["a", "b", "c", "d"] {
                assert_eq!(passes[key], ["config commit"], "{key}: the panic stopped no worker");
            }
        }
        assert_eq!(*probe.panics.lock().unwrap(), ["boom: index out of bounds in boom"]);
        assert_eq!(probe.most.load(Ordering::SeqCst), 2, "two workers, two passes at once");

        // The resync comes per key, 60 s after each one's own pass.
        tokio::time::sleep(Duration::from_secs(45)).await;
        assert_eq!(probe.passes.lock().unwrap()["a"], ["config commit", "resync"]);

        // A stop lets the passes in flight end and takes no new ones.
        scheduler.now(&"a", Trigger::Requested);
        tokio::time::sleep(Duration::from_millis(10)).await;
        stop_tx.send(true).unwrap();
        runner.await.unwrap();
        assert_eq!(probe.running.load(Ordering::SeqCst), 0, "nothing cut off mid-pass");
        assert_eq!(probe.passes.lock().unwrap()["a"].len(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn triggers_during_a_pass_give_one_more_pass_after_it_never_two_at_once() {
        let scheduler = Arc::new(Scheduler::default());
        let probe = Arc::new(Probe::default());
        scheduler.now(&"a", Trigger::ConfigCommit);
        let (_stop_tx, stop) = watch::channel(false);
        tokio::spawn(run(scheduler.clone(), probe.clone(), 4, stop));
        tokio::time::sleep(Duration::from_millis(500)).await;
        for _ in 0..50 {
            scheduler.now(&"a", Trigger::AgentReport);
        }
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert_eq!(
            probe.passes.lock().unwrap()["a"],
            ["config commit", "agent report"],
            "fifty triggers during a pass: one more pass"
        );
        assert_eq!(probe.most.load(Ordering::SeqCst), 1, "never two passes of one key");
    }
}
