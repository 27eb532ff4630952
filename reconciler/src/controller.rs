//! The controller: a scheduler keyed by sandbox that runs reconcile passes.
//!
//! Triggers (a config commit, an agent report, a retry after backoff, the resync timer) put a sandbox in the
//! queue; a sandbox already queued is not queued twice, and one that is running is run once more after its pass.
//! At most `concurrency` passes run at a time, and never two of one sandbox. A failed action backs its resource
//! off exponentially with jitter (2 s up to 5 min); a sandbox is resynced every `resync` even without events.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use sdp_protocol::{Action, ContainerState, GATEWAY, Role, labels};
use serde::Serialize;
use tokio::sync::{Notify, broadcast};
use tracing::Instrument;

use crate::desired::{Allocations, Clock, Desired, DesiredSandbox, Mode, Settings, compile};
use crate::hub::{Hub, now_ms};
use crate::plan::{Step, plan};
use crate::source::Snapshot;
use crate::store::{Deployment, DeploymentState, Store};

/// Backoff after the first failure, and its ceiling.
pub const BACKOFF_MIN: Duration = Duration::from_secs(2);
pub const BACKOFF_MAX: Duration = Duration::from_secs(300);

/// How long an agent has for one action: builds take a while, the rest is quick.
fn deadline(action: &Action) -> Duration {
    match action {
        Action::DeployService(_) | Action::DeployGateway(_) => Duration::from_secs(900),
        _ => Duration::from_secs(120),
    }
}

/// The sync status of a sandbox, as Argo CD users know it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Sync {
    Synced,
    OutOfSync,
    Progressing,
    Failed,
    Suspended,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Health {
    Healthy,
    Degraded,
    Unhealthy,
    /// Nothing is meant to run (suspended), or nothing is known yet.
    Unknown,
}

/// What the API shows of a sandbox besides its desired and actual state.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Status {
    pub sync: Sync,
    pub health: Health,
    /// The drift: what the next pass would do, with reasons.
    pub pending: Vec<PendingStep>,
    /// The action running now.
    pub in_flight: Option<String>,
    pub last_error: Option<String>,
    /// Unix milliseconds of the last pass.
    pub last_pass_ms: Option<u64>,
}

/// A step of the pending plan as the API shows it: what, where and why, without the deploy's body (a thousand
/// sandboxes' worth of environment maps would be kept in memory for nothing).
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PendingStep {
    pub role: Role,
    pub resource: String,
    pub action: PendingAction,
    pub reason: crate::plan::Reason,
}

#[derive(Clone, Debug, Serialize)]
pub struct PendingAction {
    pub kind: &'static str,
}

impl From<&Step> for PendingStep {
    fn from(step: &Step) -> PendingStep {
        let kind = match step.action {
            Action::EnsureNetwork { .. } => "ensureNetwork",
            Action::DeployService(_) => "deployService",
            Action::DeployGateway(_) => "deployGateway",
            Action::SetRoutes { .. } => "setRoutes",
            Action::Stop { .. } => "stop",
            Action::RemoveContainer { .. } => "removeContainer",
            Action::RemoveNetwork { .. } => "removeNetwork",
            Action::RemoveWorktree { .. } => "removeWorktree",
        };
        PendingStep {
            role: step.role,
            resource: step.resource.clone(),
            action: PendingAction { kind },
            reason: step.reason.clone(),
        }
    }
}

/// The desired side of the world, replaced whole on every compile.
#[derive(Clone, Default)]
pub struct World {
    pub snapshot: Arc<Snapshot>,
    pub desired: Arc<Desired>,
}

/// One resource's failures.
#[derive(Clone, Debug)]
struct Backoff {
    failures: u32,
    until: Instant,
    /// What the last failure said, shown for as long as the resource waits (a pass in between, woken by
    /// something else, must not hide it).
    error: String,
}

/// Exponential delay with jitter for the `failures`-th failure in a row: 2 s, 4 s, 8 s … 5 min, each ±20 %.
pub fn backoff_delay(failures: u32, jitter: f64) -> Duration {
    let base = BACKOFF_MIN.as_secs_f64() * 2f64.powi(failures.saturating_sub(1).min(16) as i32);
    let capped = base.min(BACKOFF_MAX.as_secs_f64());
    Duration::from_secs_f64((capped * (0.8 + 0.4 * jitter.clamp(0.0, 1.0))).min(BACKOFF_MAX.as_secs_f64()))
}

/// A cheap, good-enough jitter source: no crate for one random number.
fn jitter() -> f64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(now_ms());
    (h.finish() % 10_000) as f64 / 10_000.0
}

#[derive(Default)]
struct Queue {
    order: VecDeque<String>,
    /// Queued, with the reason(s) merged into one.
    queued: HashMap<String, String>,
    running: HashSet<String>,
    /// Triggered while running: run again after.
    again: HashMap<String, String>,
}

/// Counters for `/metrics`.
#[derive(Default)]
pub struct Metrics {
    pub passes: AtomicU64,
    pub pass_micros: AtomicU64,
    pub actions: Mutex<BTreeMap<(String, &'static str), u64>>,
}

/// A log line as the API streams it: of a deployment (with its line number) or of a container.
#[derive(Clone, Debug)]
pub enum LiveLog {
    Deployment { id: u64, line_no: u64, line: String },
    Container { name: String, seq: u64, line: String },
}

/// Everything the passes, the API and the source loop share.
pub struct Controller {
    pub hub: Arc<Hub>,
    pub store: Store,
    pub settings: Settings,
    pub resync: Duration,
    world: RwLock<World>,
    status: RwLock<BTreeMap<String, Status>>,
    queue: Mutex<Queue>,
    wake: Notify,
    backoff: Mutex<HashMap<String, Backoff>>,
    allocations: Mutex<Arc<Allocations>>,
    activity: Mutex<BTreeMap<String, u64>>,
    pub metrics: Metrics,
    pub logs: broadcast::Sender<LiveLog>,
    /// Counts status changes (sync, health, drift, in-flight, errors): live pages wake on it.
    pub changes: tokio::sync::watch::Sender<u64>,
    /// Recent lines of each container, for `sdp logs SANDBOX/SERVICE`.
    pub container_logs: Mutex<HashMap<String, VecDeque<(u64, String)>>>,
    /// Deployment logs held open while lines come in.
    log_writers: Mutex<HashMap<u64, crate::store::LogWriter>>,
    /// Why the config repo cannot be followed now (cannot fetch, diverged clone), for `/healthz` and the
    /// dashboard; `None` when the last attempt worked.
    pub source_error: RwLock<Option<String>>,
    /// Itself, for retries that trigger a pass later.
    me: std::sync::Weak<Controller>,
}

/// How many lines of each container's output are kept in memory.
pub const CONTAINER_LOG_LINES: usize = 1000;

impl Controller {
    pub fn new(hub: Arc<Hub>, store: Store, settings: Settings, resync: Duration) -> anyhow::Result<Arc<Controller>> {
        let allocations = Arc::new(store.allocations()?);
        let activity = store.activity()?;
        let (logs, _) = broadcast::channel(4096);
        Ok(Arc::new_cyclic(|me| Controller {
            hub,
            store,
            settings,
            resync,
            world: RwLock::default(),
            status: RwLock::default(),
            queue: Mutex::default(),
            wake: Notify::new(),
            source_error: RwLock::default(),
            backoff: Mutex::default(),
            allocations: Mutex::new(allocations),
            activity: Mutex::new(activity),
            metrics: Metrics::default(),
            logs,
            changes: tokio::sync::watch::Sender::new(0),
            container_logs: Mutex::default(),
            log_writers: Mutex::default(),
            me: me.clone(),
        }))
    }

    pub fn world(&self) -> World {
        self.world.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn status(&self, name: &str) -> Option<Status> {
        self.status.read().unwrap_or_else(|e| e.into_inner()).get(name).cloned()
    }

    pub fn statuses(&self) -> BTreeMap<String, Status> {
        self.status.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Every sandbox known to git or present on a VM.
    pub fn sandbox_names(&self) -> BTreeSet<String> {
        let world = self.world();
        let mut names: BTreeSet<String> = world.desired.sandboxes.keys().cloned().collect();
        names.extend(world.desired.held.keys().cloned());
        names.extend(world.snapshot.errors.keys().cloned());
        names.extend(self.hub.actual().sandboxes());
        names
    }

    /// A new snapshot from the source: remember activity, compile, and wake every sandbox.
    pub fn set_snapshot(&self, snapshot: Snapshot) {
        let now = now_ms() / 1000;
        {
            let old = self.world().snapshot;
            let mut activity = self.activity.lock().unwrap_or_else(|e| e.into_inner());
            for sb in &snapshot.sandboxes {
                let before = old.sandboxes.iter().find(|o| o.metadata.name == sb.metadata.name);
                if before != Some(sb) {
                    activity.insert(sb.metadata.name.clone(), now);
                }
            }
            activity.retain(|name, _| snapshot.sandboxes.iter().any(|s| &s.metadata.name == name));
            if let Err(e) = self.store.set_activity(&activity) {
                tracing::error!("cannot store activity: {e:#}");
            }
        }
        let commit = snapshot.commit.clone();
        let author = snapshot.author.clone();
        {
            let mut world = self.world.write().unwrap_or_else(|e| e.into_inner());
            world.snapshot = Arc::new(snapshot);
        }
        self.recompile();
        let _ = self.store.event(
            now_ms(),
            None,
            format!("config commit {} by {author}", crate::plan::short(&commit)),
        );
        self.trigger_all("config commit");
    }

    /// Compiles the current snapshot with the stored allocations and the micro agent's address.
    pub fn recompile(&self) {
        let snapshot = self.world().snapshot;
        let mut settings = self.settings.clone();
        if let Some(address) = self.hub.address(Role::Micro) {
            settings.micro_address = address;
        }
        let clock = Clock {
            now: now_ms() / 1000,
            last_activity: self.activity.lock().unwrap_or_else(|e| e.into_inner()).clone(),
        };
        let mut allocations = self.allocations.lock().unwrap_or_else(|e| e.into_inner());
        let desired = compile(
            &snapshot.sandboxes,
            &snapshot.environments,
            &allocations,
            &settings,
            &clock,
        );
        if !Arc::ptr_eq(&desired.allocations, &allocations) {
            match self.store.set_allocations(&desired.allocations) {
                Ok(()) => *allocations = desired.allocations.clone(),
                Err(e) => tracing::error!("cannot store port allocations: {e:#}"),
            }
        }
        drop(allocations);
        let mut world = self.world.write().unwrap_or_else(|e| e.into_inner());
        world.desired = Arc::new(desired);
    }

    pub fn trigger_all(&self, reason: &str) {
        for name in self.sandbox_names() {
            self.trigger(&name, reason);
        }
    }

    /// Wakes the sandboxes whose part of the reports differs between `before` and now.
    pub fn trigger_changed(&self, before: &crate::plan::Actual, reason: &str) {
        let now = self.hub.actual();
        let (old, new) = (before.views(), now.views());
        let names: BTreeSet<&str> = old.keys().chain(new.keys()).copied().collect();
        for name in names {
            let differs = match (old.get(name), new.get(name)) {
                (Some(a), Some(b)) => a != b,
                _ => true,
            };
            if differs {
                self.trigger(name, reason);
            }
        }
    }

    /// Queues a pass of `name`; merged with one already queued, or run again after one running.
    pub fn trigger(&self, name: &str, reason: &str) {
        let mut q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        if q.running.contains(name) {
            q.again.entry(name.to_string()).or_insert_with(|| reason.to_string());
            return;
        }
        if let Some(r) = q.queued.get_mut(name) {
            if !r.split(", ").any(|x| x == reason) {
                r.push_str(", ");
                r.push_str(reason);
            }
            return;
        }
        q.queued.insert(name.to_string(), reason.to_string());
        q.order.push_back(name.to_string());
        drop(q);
        self.wake.notify_one();
    }

    async fn next(&self) -> (String, String) {
        loop {
            {
                let mut q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
                if let Some(name) = q.order.pop_front() {
                    let reason = q.queued.remove(&name).unwrap_or_default();
                    q.running.insert(name.clone());
                    return (name, reason);
                }
            }
            self.wake.notified().await;
        }
    }

    fn finished(&self, name: &str) {
        let again = {
            let mut q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
            q.running.remove(name);
            q.again.remove(name)
        };
        if let Some(reason) = again {
            self.trigger(name, &reason);
        }
        // Another worker may be waiting for this one's sandbox to be free.
        self.wake.notify_one();
    }

    /// Runs `concurrency` workers and the resync timer, forever.
    pub fn spawn(self: &Arc<Controller>, concurrency: usize) {
        for _ in 0..concurrency.max(1) {
            let me = self.clone();
            tokio::spawn(async move {
                loop {
                    let (name, reason) = me.next().await;
                    let span = tracing::info_span!("pass", sandbox = %name, trigger = %reason);
                    // A pass that panics (a bug, or input nobody foresaw) must not take its worker, or its
                    // sandbox, with it: the sandbox shows the failure and is retried with backoff.
                    let pass = std::panic::AssertUnwindSafe(me.pass_for(&name, &reason).instrument(span));
                    if let Err(panic) = futures_util::FutureExt::catch_unwind(pass).await {
                        let what = panic
                            .downcast_ref::<&str>()
                            .map(|s| s.to_string())
                            .or_else(|| panic.downcast_ref::<String>().cloned())
                            .unwrap_or_default();
                        let error = format!("the reconcile pass failed unexpectedly: {what}");
                        tracing::error!(sandbox = %name, "{error}");
                        let wait = me.fail(&format!("pass of {name}"), &error);
                        me.set_status(&name, |s| {
                            s.sync = Sync::Failed;
                            s.in_flight = None;
                            s.last_error = Some(error.clone());
                        });
                        me.retry_later(&name, wait);
                    }
                    me.finished(&name);
                }
            });
        }
        let me = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(me.resync);
            tick.tick().await;
            loop {
                tick.tick().await;
                // Time passes for expireAfter even when nothing else happens.
                me.recompile();
                me.trigger_all("resync");
            }
        });
    }

    fn set_status(&self, name: &str, change: impl FnOnce(&mut Status)) {
        let mut all = self.status.write().unwrap_or_else(|e| e.into_inner());
        let status = all.entry(name.to_string()).or_insert_with(|| Status {
            sync: Sync::OutOfSync,
            health: Health::Unknown,
            pending: Vec::new(),
            in_flight: None,
            last_error: None,
            last_pass_ms: None,
        });
        let before = shown(status);
        change(status);
        let after = shown(status);
        drop(all);
        if before != after {
            self.changes.send_modify(|n| *n += 1);
        }
    }

    /// One reconcile pass of one sandbox, asked for by hand (tests).
    pub async fn pass(&self, name: &str) {
        self.pass_for(name, "requested").await
    }

    /// One reconcile pass of one sandbox: plan, then run the steps in order until one fails. `trigger` is why the
    /// pass runs (the merged reasons of its queue entry); deployments record it.
    pub async fn pass_for(&self, name: &str, trigger: &str) {
        let started = Instant::now();
        self.metrics.passes.fetch_add(1, Ordering::Relaxed);
        let world = self.world();
        let desired = world.desired.sandboxes.get(name);
        let held = world.desired.held.get(name);
        let config_errors = world.snapshot.errors.get(name);

        if let Some(reason) = held {
            // Nothing is done to a held sandbox: what runs keeps running.
            let reason = reason.clone();
            self.set_status(name, |s| {
                s.sync = Sync::Failed;
                s.pending.clear();
                s.last_error = Some(reason);
                s.last_pass_ms = Some(now_ms());
            });
            return;
        }
        if desired.is_none() && config_errors.is_some() {
            // Never valid: nothing to run, nothing to remove that it could own.
            let errors = config_errors.map(|e| e.join("; "));
            self.set_status(name, |s| {
                s.sync = Sync::Failed;
                s.last_error = errors;
                s.last_pass_ms = Some(now_ms());
            });
            return;
        }

        let actual = self.hub.actual();
        let steps = plan(name, desired, &actual.view(name));
        // Steps run in order. A step that cannot run blocks only what depends on it: a role whose agent is
        // missing or whose network failed skips its other steps, a failed gateway deploy skips the routes; the
        // other role and the other services go on.
        let mut problems: Vec<String> = Vec::new();
        let mut failures = 0;
        let mut blocked: BTreeSet<Role> = BTreeSet::new();
        let mut gateway_failed = false;
        for step in &steps {
            if blocked.contains(&step.role) || (gateway_failed && matches!(step.action, Action::SetRoutes { .. })) {
                continue;
            }
            if self.hub.address(step.role).is_none() {
                // Not a failure of the resource: the agent's return triggers every sandbox again.
                problems.push(format!("waiting for a {} agent to connect", step.role));
                blocked.insert(step.role);
                continue;
            }
            let ok = match self.backing_off(&step.resource) {
                Some((wait, error)) => {
                    failures += 1;
                    problems.push(format!(
                        "{} is backing off for {:.1} s after a failure: {error}",
                        step.resource,
                        wait.as_secs_f64()
                    ));
                    self.retry_later(name, wait);
                    false
                }
                None => {
                    let label = step.to_string();
                    self.set_status(name, |s| {
                        s.sync = Sync::Progressing;
                        s.in_flight = Some(label.clone());
                    });
                    tracing::info!("{label}");
                    match self.run_step(name, desired, step, &world.snapshot, trigger).await {
                        Ok(()) => {
                            self.backoff
                                .lock()
                                .unwrap_or_else(|e| e.into_inner())
                                .remove(&step.resource);
                            self.count(step, "succeeded");
                            true
                        }
                        Err(e) => {
                            self.count(step, "failed");
                            let wait = self.fail(&step.resource, &e);
                            tracing::warn!("{label} failed: {e}; retry in {:.1} s", wait.as_secs_f64());
                            let _ = self.store.event(now_ms(), Some(name), format!("{label} failed: {e}"));
                            failures += 1;
                            problems.push(format!("{label} failed: {e}"));
                            self.retry_later(name, wait);
                            false
                        }
                    }
                }
            };
            if !ok {
                match step.action {
                    Action::EnsureNetwork { .. } => {
                        blocked.insert(step.role);
                    }
                    Action::DeployGateway(_) => gateway_failed = true,
                    _ => {}
                }
            }
        }
        let failed = (!problems.is_empty()).then(|| problems.join("; "));

        // What is left, for the API: plan again against the reports as they are now.
        let actual = self.hub.actual();
        let view = actual.view(name);
        let pending = plan(name, desired, &view);
        let health = health(desired, &view);
        // The config repo's errors first: they are what the user must fix.
        let error = match (config_errors.map(|e| e.join("; ")), failed) {
            (Some(c), Some(f)) => Some(format!("{c}; {f}")),
            (c, f) => c.or(f),
        };
        let suspended = desired.is_some_and(|d| d.mode != Mode::Active);
        let connected = |role: Role| self.hub.address(role).is_some();
        let sync = if pending.is_empty() {
            if suspended { Sync::Suspended } else { Sync::Synced }
        } else if failures > 0 {
            Sync::Failed
        } else if suspended && pending.iter().all(|p| !connected(p.role)) {
            // Stopped wherever an agent can stop it; the rest waits for its agent.
            Sync::Suspended
        } else if !steps.is_empty() && pending.len() < steps.len() {
            Sync::Progressing
        } else {
            Sync::OutOfSync
        };
        let gone = desired.is_none() && pending.is_empty();
        self.set_status(name, |s| {
            s.sync = sync;
            s.health = health;
            s.pending = pending.iter().map(PendingStep::from).collect();
            s.in_flight = None;
            s.last_error = error;
            s.last_pass_ms = Some(now_ms());
        });
        if gone {
            self.status.write().unwrap_or_else(|e| e.into_inner()).remove(name);
        }
        self.metrics
            .pass_micros
            .fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
    }

    async fn run_step(
        &self,
        name: &str,
        desired: Option<&DesiredSandbox>,
        step: &Step,
        snapshot: &Snapshot,
        trigger: &str,
    ) -> Result<(), String> {
        let deploy = match &step.action {
            Action::DeployService(d) | Action::DeployGateway(d) => Some(d),
            _ => None,
        };
        let Some(deploy) = deploy else {
            let result = self
                .hub
                .dispatch(step.role, step.action.clone(), None, deadline(&step.action))
                .await;
            if result.is_ok() {
                let _ = self.store.event(now_ms(), Some(name), step.to_string());
            }
            return result;
        };
        let spec = snapshot.sandboxes.iter().find(|s| s.metadata.name == name);
        let environments = spec
            .and_then(|s| match deploy.service.as_str() {
                GATEWAY => Some(&s.spec.gateway.environments),
                service => s.spec.services.get(service).map(|s| &s.environments),
            })
            .cloned()
            .unwrap_or_default();
        // Who changed this sandbox: the last commit that touched its own file, not whatever HEAD is.
        let (config_commit, config_author) = match snapshot.changes.get(name) {
            Some(change) => (change.commit.clone(), change.author.clone()),
            None => (snapshot.commit.clone(), snapshot.author.clone()),
        };
        let record = Deployment {
            id: 0,
            sandbox: name.to_string(),
            service: deploy.service.clone(),
            repo: deploy.service.clone(),
            branch: deploy.branch.clone(),
            commit: deploy.commit.clone(),
            config_commit,
            config_author,
            environments,
            reason: step.reason.to_string(),
            trigger: trigger.to_string(),
            started_ms: now_ms(),
            ended_ms: None,
            state: DeploymentState::Running,
            stages: Vec::new(),
            error: None,
        };
        let record = self
            .store
            .start_deployment(record)
            .map_err(|e| format!("cannot record the deployment: {e:#}"))?;
        let result = self
            .hub
            .dispatch(
                step.role,
                step.action.clone(),
                Some(record.id.to_string()),
                deadline(&step.action),
            )
            .await;
        // The commit the agent checked out, from its report.
        let actual = self.hub.actual();
        let commit = actual
            .of(step.role)
            .containers
            .iter()
            .find(|c| c.name == deploy.container)
            .and_then(|c| c.labels.get(labels::COMMIT).cloned());
        let _ = self.store.update_deployment(record.id, |d| {
            d.ended_ms = Some(now_ms());
            d.state = if result.is_ok() {
                DeploymentState::Succeeded
            } else {
                DeploymentState::Failed
            };
            d.error = result.clone().err();
            if d.commit.is_none() {
                d.commit = commit;
            }
        });
        if result.is_ok() {
            if let Some(hash) = deploy.labels.get(labels::SPEC_HASH) {
                let _ = self.store.set_applied(&deploy.container, hash);
            }
            let _ = self.store.event(
                now_ms(),
                Some(name),
                format!(
                    "deployed {} ({}), deployment {}",
                    deploy.container, step.reason, record.id
                ),
            );
            if let Some(d) = desired {
                self.activity
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(d.name.clone(), now_ms() / 1000);
            }
        }
        result
    }

    fn count(&self, step: &Step, outcome: &'static str) {
        let kind = PendingStep::from(step).action.kind.to_string();
        *self
            .metrics
            .actions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry((kind, outcome))
            .or_default() += 1;
    }

    fn backing_off(&self, resource: &str) -> Option<(Duration, String)> {
        let backoff = self.backoff.lock().unwrap_or_else(|e| e.into_inner());
        let b = backoff.get(resource)?;
        let now = Instant::now();
        (b.until > now).then(|| (b.until - now, b.error.clone()))
    }

    /// Records a failure of `resource` and says how long it now waits.
    fn fail(&self, resource: &str, error: &str) -> Duration {
        let mut backoff = self.backoff.lock().unwrap_or_else(|e| e.into_inner());
        let entry = backoff.entry(resource.to_string()).or_insert(Backoff {
            failures: 0,
            until: Instant::now(),
            error: String::new(),
        });
        entry.failures += 1;
        entry.error = error.to_string();
        let wait = backoff_delay(entry.failures, jitter());
        entry.until = Instant::now() + wait;
        wait
    }

    /// The number of failures in a row of `resource` (for tests and the API).
    pub fn failures(&self, resource: &str) -> u32 {
        self.backoff
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(resource)
            .map_or(0, |b| b.failures)
    }

    fn retry_later(&self, name: &str, wait: Duration) {
        let Some(me) = self.me.upgrade() else { return };
        let name = name.to_string();
        tokio::spawn(async move {
            tokio::time::sleep(wait).await;
            me.trigger(&name, "retry after backoff");
        });
    }

    /// Progress of a deployment, from an agent.
    pub fn progress(&self, p: sdp_protocol::Progress) {
        let Ok(id) = p.deployment_id.parse::<u64>() else { return };
        let _ = self
            .store
            .update_deployment(id, |d| match d.stages.iter_mut().find(|s| s.stage == p.stage) {
                Some(s) => {
                    s.state = p.state;
                    s.elapsed_ms = p.elapsed_ms;
                }
                None => d.stages.push(crate::store::StageRecord {
                    stage: p.stage,
                    state: p.state,
                    elapsed_ms: p.elapsed_ms,
                }),
            });
    }

    /// A log line from an agent: into the deployment's log file, or the container's recent lines; and to every
    /// live reader.
    pub fn log(&self, l: sdp_protocol::LogLine) {
        let mut line = l.line;
        if l.dropped_before > 0 {
            line = format!(
                "[sdp: {} lines dropped under pressure before this one] {line}",
                l.dropped_before
            );
        }
        if let Some(id) = l.deployment_id.and_then(|d| d.parse::<u64>().ok()) {
            let written = {
                let mut writers = self.log_writers.lock().unwrap_or_else(|e| e.into_inner());
                if !writers.contains_key(&id) {
                    // A few deployments write at once; older handles are closed rather than kept forever.
                    if writers.len() >= 32 {
                        writers.clear();
                    }
                    match self.store.log(id).writer() {
                        Ok(w) => {
                            writers.insert(id, w);
                        }
                        Err(e) => tracing::error!("cannot open the log of deployment {id}: {e:#}"),
                    }
                }
                writers.get_mut(&id).map(|w| w.append(&line))
            };
            let line_no = match written {
                Some(Ok(n)) => n,
                Some(Err(e)) => {
                    tracing::error!("cannot write the log of deployment {id}: {e:#}");
                    return;
                }
                None => return,
            };
            let _ = self.logs.send(LiveLog::Deployment { id, line_no, line });
        } else if let Some(name) = l.container {
            {
                let mut all = self.container_logs.lock().unwrap_or_else(|e| e.into_inner());
                let lines = all.entry(name.clone()).or_default();
                lines.push_back((l.seq, line.clone()));
                while lines.len() > CONTAINER_LOG_LINES {
                    lines.pop_front();
                }
            }
            let _ = self.logs.send(LiveLog::Container { name, seq: l.seq, line });
        }
    }
}

/// What a page shows of a status: a change of it wakes the live pages.
fn shown(s: &Status) -> (Sync, Health, Option<String>, Option<String>, usize) {
    (
        s.sync,
        s.health,
        s.in_flight.clone(),
        s.last_error.clone(),
        s.pending.len(),
    )
}

/// Health from the containers: all running (and answering their health path, where they have one) is Healthy;
/// some down, restarting often or failing their probe is Degraded; none running is Unhealthy.
pub fn health(desired: Option<&DesiredSandbox>, view: &crate::plan::View) -> Health {
    let Some(d) = desired else { return Health::Unknown };
    if d.mode != Mode::Active {
        return Health::Unknown;
    }
    let wanted: Vec<(&str, Role)> = d
        .services
        .values()
        .map(|c| (c.container.as_str(), Role::Micro))
        .chain([(d.gateway.container.as_str(), Role::Gateway)])
        .collect();
    let mut up = 0;
    let mut flapping = false;
    let mut failing = false;
    for (container, role) in &wanted {
        if let Some(c) = view.of(*role).containers.iter().find(|c| c.name == *container) {
            if c.state == ContainerState::Running {
                up += 1;
            }
            flapping |= c.restart_count >= 3;
            failing |= c.probe.as_ref().is_some_and(|p| !p.ok);
        }
    }
    match up {
        0 => Health::Unhealthy,
        n if n == wanted.len() && !flapping && !failing => Health::Healthy,
        _ => Health::Degraded,
    }
}
