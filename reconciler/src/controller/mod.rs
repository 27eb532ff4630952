//! The controller: what makes the VMs look like the config repo, one sandbox at a time.
//!
//! The loop in one page:
//! - **Triggers** ([`trigger::Trigger`]): a config commit, a branch that moved, an agent's report or connection,
//!   expiry, a retry after an error, the resync. Each asks the [`scheduler`] for a pass of one sandbox at some
//!   time; requests of one sandbox merge (the earliest wins, the reasons of what is due are kept together).
//! - **Runner** ([`runner`]): `concurrency` workers take what is due; never two passes of one sandbox at once; a
//!   pass that panics is caught, shown and retried with backoff.
//! - **Pass** ([`pass`]): plan the sandbox against the agents' reports and run the steps in order. A failed
//!   action backs its resource off ([`backoff`]: 2 s up to 5 min) while the rest goes on; a missing or
//!   disconnected agent is waited for (its return wakes every sandbox), not backed off; a failing store fails
//!   the pass. The status ([`status`]) is written once, at the end of every pass, and the pass says what comes
//!   next: a retry when a backoff runs out, else a resync after `resync` (±10 %, so that a thousand sandboxes do
//!   not all come at once), or nothing when the sandbox is gone, held or invalid (a commit wakes it).
//! - **Logs** ([`logs`]): agents' log lines and deployment progress, to files and live readers.
//! - **Sets** ([`crate::sets`]): the SandboxSets' sandboxes are made from the branches the agents last listed
//!   ([`Controller::list_branches`], on every poll of the source and on the git hook); a new list recompiles, and a
//!   sandbox whose branch is gone leaves the desired state, so its pass removes it. A failed listing keeps the last
//!   list (stored, so a restart keeps it too).
//! - **Stop**: [`Controller::stop`] makes the workers take no new pass and each pass stop after its current
//!   step; [`Controller::run`] returns when the passes in flight have.

pub mod backoff;
pub mod logs;
pub mod pass;
pub mod runner;
pub mod scheduler;
pub mod status;
pub mod trigger;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use sdp_protocol::Role;
use tokio::time::Instant;

use crate::desired::{Allocations, Clock, Desired, Settings, compile_again, note_changes};
use crate::hub::{Hub, now_ms};
use crate::sets::{Branches, Generated};
use crate::source::Snapshot;
use crate::store::Store;

pub use backoff::{BACKOFF_MAX, BACKOFF_MIN, backoff_delay};
pub use logs::{CONTAINER_LOG_LINES, LiveLog};
pub use runner::Requeue;
pub use status::{Health, PendingAction, PendingStep, Status, Sync, health, kind};
pub use trigger::{Trigger, Triggers};

/// The desired side of the world, replaced whole on every compile.
#[derive(Clone, Default)]
pub struct World {
    pub snapshot: Arc<Snapshot>,
    /// The SandboxSets' sandboxes, made from the snapshot's sets and the branches last listed.
    pub generated: Arc<Generated>,
    pub desired: Arc<Desired>,
}

impl World {
    /// What compile reads: the config repo's sandboxes, then the generated ones.
    pub fn sandboxes(&self) -> std::borrow::Cow<'_, [Arc<sdp_manifest::Sandbox>]> {
        if self.generated.sandboxes.is_empty() {
            std::borrow::Cow::Borrowed(&self.snapshot.sandboxes)
        } else {
            std::borrow::Cow::Owned(crate::sets::with_generated(&self.snapshot.sandboxes, &self.generated))
        }
    }

    /// The spec of sandbox `name`, from the repo or a set.
    pub fn sandbox(&self, name: &str) -> Option<&sdp_manifest::Sandbox> {
        self.snapshot
            .sandboxes
            .iter()
            .chain(&self.generated.sandboxes)
            .find(|s| s.metadata.name == name)
            .map(|s| &**s)
    }
}

/// Counters for `/metrics`.
#[derive(Default)]
pub struct Metrics {
    pub passes: AtomicU64,
    pub pass_micros: AtomicU64,
    pub actions: Mutex<BTreeMap<(String, &'static str), u64>>,
}

/// Everything the passes, the API and the source loop share.
pub struct Controller {
    pub hub: Arc<Hub>,
    pub store: Store,
    pub settings: Settings,
    /// How long a converged sandbox waits for its next pass when nothing happens.
    pub resync: Duration,
    world: RwLock<World>,
    status: RwLock<BTreeMap<String, Status>>,
    scheduler: Arc<scheduler::Scheduler<String>>,
    backoff: backoff::Backoffs,
    /// Port allocations as last stored, and when each sandbox last changed (for `expireAfter`).
    allocations: Mutex<Arc<Allocations>>,
    activity: Mutex<BTreeMap<String, u64>>,
    /// The branches of each repository a set needs, as last listed (stored).
    branches: Mutex<Branches>,
    /// True while a listing of branches runs: a poll that comes meanwhile does not start another.
    listing: std::sync::atomic::AtomicBool,
    pub metrics: Metrics,
    pub logs: logs::Logs,
    /// Counts status changes (sync, health, drift, in-flight, errors, a deployment's stages): live pages wake on
    /// it.
    pub changes: tokio::sync::watch::Sender<u64>,
    /// Why the config repo cannot be followed now (cannot fetch, diverged clone), for `/healthz` and the
    /// dashboard; `None` when the last attempt worked.
    pub source_error: RwLock<Option<String>>,
    /// True once a stop was asked for.
    stop: tokio::sync::watch::Sender<bool>,
    /// Called with the sandbox's name at the start of every pass; unset in production (see [`PassHook`]).
    before_pass: std::sync::OnceLock<PassHook>,
}

/// A seam for tests: a function called with the sandbox's name at the start of every pass, that may panic as a
/// bug nobody foresaw would, so that a test sees the panic shown and the sandbox retried by the real pass,
/// runner and scheduler. Neither a flag nor read from a config file.
#[derive(Clone)]
pub struct PassHook(pub Arc<dyn Fn(&str) + Send + std::marker::Sync>);

impl std::fmt::Debug for PassHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PassHook")
    }
}

impl Controller {
    pub fn new(hub: Arc<Hub>, store: Store, settings: Settings, resync: Duration) -> anyhow::Result<Arc<Controller>> {
        let allocations = Arc::new(store.allocations()?);
        let activity = store.activity()?;
        let branches = store.branches()?;
        Ok(Arc::new(Controller {
            hub,
            store,
            settings,
            resync,
            world: RwLock::default(),
            status: RwLock::default(),
            scheduler: Arc::default(),
            backoff: backoff::Backoffs::default(),
            allocations: Mutex::new(allocations),
            activity: Mutex::new(activity),
            branches: Mutex::new(branches),
            listing: std::sync::atomic::AtomicBool::new(false),
            metrics: Metrics::default(),
            logs: logs::Logs::default(),
            changes: tokio::sync::watch::Sender::new(0),
            source_error: RwLock::default(),
            stop: tokio::sync::watch::Sender::new(false),
            before_pass: std::sync::OnceLock::new(),
        }))
    }

    /// Calls `hook` at the start of every pass (see [`PassHook`]); only the first hook set is kept.
    pub fn set_before_pass(&self, hook: PassHook) {
        let _already_set = self.before_pass.set(hook);
    }

    /// No failed resource is tried again sooner than `floor` (see `ServeConfig::retry_floor`).
    pub fn set_retry_floor(&self, floor: Duration) {
        self.backoff.set_floor(floor);
    }

    pub fn world(&self) -> World {
        self.world.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn status(&self, name: &str) -> Option<Status> {
        self.status.read().unwrap_or_else(|e| e.into_inner()).get(name).cloned()
    }

    /// How many sandboxes' statuses are `which`, counted where they are (a copy of 1,000 statuses, their errors
    /// among them, is a megabyte or more).
    pub fn count_statuses(&self, which: impl Fn(&Status) -> bool) -> usize {
        self.status
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .filter(|s| which(s))
            .count()
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

    /// A new snapshot from the source: make the sets' sandboxes, remember activity, compile, and wake every
    /// sandbox.
    pub fn set_snapshot(&self, snapshot: impl Into<Arc<Snapshot>>) {
        let snapshot = snapshot.into();
        let commit = snapshot.commit.clone();
        let author = snapshot.author.clone();
        self.set_world(Some(snapshot));
        self.recompile();
        if let Err(e) = self.store.event(
            now_ms(),
            None,
            format!("config commit {} by {author}", crate::plan::short(&commit)),
        ) {
            tracing::error!("cannot record an event: {e:#}");
        }
        self.trigger_all(Trigger::ConfigCommit);
    }

    /// The sandboxes the sets of `snapshot` make from the branches last listed.
    fn generate(&self, snapshot: &Snapshot) -> Arc<Generated> {
        let branches = self.branches.lock().unwrap_or_else(|e| e.into_inner());
        Arc::new(crate::sets::generate(
            &snapshot.sets,
            &snapshot.templates,
            &branches,
            &snapshot.sandboxes,
        ))
    }

    /// Replaces the snapshot (when given) and makes the sets' sandboxes again; a sandbox whose spec differs from
    /// before (or that is new) counts as changed now, for `expireAfter`. Says whether the generated sandboxes
    /// changed.
    fn set_world(&self, snapshot: Option<Arc<Snapshot>>) -> bool {
        let now = now_ms() / 1000;
        let mut world = self.world.write().unwrap_or_else(|e| e.into_inner());
        let old = world.clone();
        if let Some(snapshot) = snapshot {
            world.snapshot = snapshot;
        }
        let generated = self.generate(&world.snapshot);
        if generated == old.generated && Arc::ptr_eq(&world.snapshot, &old.snapshot) {
            return false;
        }
        world.generated = generated;
        let mut activity = self.activity.lock().unwrap_or_else(|e| e.into_inner());
        note_changes(&old.sandboxes(), &world.sandboxes(), &mut activity, now);
        if let Err(e) = self.store.set_activity(&activity) {
            tracing::error!("cannot store activity: {e:#}");
        }
        world.generated != old.generated
    }

    /// The branches of each repository a set needs, as last listed.
    pub fn branches(&self) -> Branches {
        self.branches.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// A new list of `repo`'s branches: when it differs from the last, store it, make the sets' sandboxes again,
    /// recompile and wake the sandboxes whose desired state changed (a sandbox made or gone among them).
    pub fn set_branches(&self, repo: &str, mut list: Vec<String>) {
        list.sort();
        list.dedup();
        {
            let mut branches = self.branches.lock().unwrap_or_else(|e| e.into_inner());
            if branches.get(repo) == Some(&list) {
                return;
            }
            branches.insert(repo.to_string(), list);
            if let Err(e) = self.store.set_branches(&branches) {
                tracing::error!("cannot store the branches of {repo}: {e:#}");
            }
        }
        if !self.set_world(None) {
            return;
        }
        tracing::info!(repo, "branches changed: the sets' sandboxes were made again");
        for name in self.recompile() {
            self.trigger(&name, Trigger::BranchesListed);
        }
    }

    /// Asks the agents for the branches of every repository a set needs (`git ls-remote`), and takes each
    /// answer; a failed listing keeps the last list, so an error never removes a sandbox. At most one listing
    /// runs at a time.
    pub async fn list_branches(&self) {
        use std::sync::atomic::Ordering;
        if self.listing.swap(true, Ordering::AcqRel) {
            return;
        }
        let repos = crate::sets::repositories(&self.world().snapshot.sets);
        for repo in repos {
            match self.hub.branches(&repo, Duration::from_secs(30)).await {
                Ok(heads) => self.set_branches(&repo, heads.into_iter().map(|h| h.branch).collect()),
                Err(e) => tracing::warn!(repo, "cannot list branches, the last list is kept: {e}"),
            }
        }
        self.listing.store(false, Ordering::Release);
    }

    /// Compiles the current snapshot with the stored allocations and the micro agent's address; says which
    /// sandboxes' desired state changed (by the clock: `expireAfter`, retention; or by the micro agent's address).
    pub fn recompile(&self) -> Vec<String> {
        let world = self.world();
        let settings = self.compile_settings();
        let clock = self.clock();
        let mut allocations = self.allocations.lock().unwrap_or_else(|e| e.into_inner());
        // Ports leaving that no container publishes any more go back to the ranges.
        if let Some(settled) = allocations.settled(|role| self.hub.last_report(role)) {
            match self.store.set_allocations(&settled) {
                Ok(()) => *allocations = Arc::new(settled),
                Err(e) => tracing::error!("cannot store port allocations: {e:#}"),
            }
        }
        // From the last answer: what did not change is reused, not compiled again.
        let mut desired = compile_again(
            &world.desired,
            &world.sandboxes(),
            &world.snapshot.environments,
            &allocations,
            &settings,
            &clock,
        );
        if !Arc::ptr_eq(&desired.allocations, &allocations) {
            // To the millisecond: a report that comes a moment later says whether the port is free.
            Arc::make_mut(&mut desired.allocations).stamp_leaving(&allocations, now_ms());
            match self.store.set_allocations(&desired.allocations) {
                Ok(()) => *allocations = desired.allocations.clone(),
                Err(e) => tracing::error!("cannot store port allocations: {e:#}"),
            }
        }
        drop(allocations);
        let mut world = self.world.write().unwrap_or_else(|e| e.into_inner());
        let old = std::mem::replace(&mut world.desired, Arc::new(desired));
        let new = &world.desired;
        let names: BTreeSet<&String> = old.sandboxes.keys().chain(new.sandboxes.keys()).collect();
        names
            .into_iter()
            .filter(|n| old.differs(new, n) || old.held.get(*n) != new.held.get(*n))
            .cloned()
            .collect()
    }

    /// The settings compile reads: the reconciler's own, with the micro agent's address once it has connected.
    pub fn compile_settings(&self) -> Settings {
        let mut settings = self.settings.clone();
        if let Some(address) = self.hub.address(Role::Micro) {
            settings.micro_address = address;
        }
        settings
    }

    /// Now, and when each sandbox last changed or deployed: what compile reads for `expireAfter`.
    pub fn clock(&self) -> Clock {
        Clock {
            now: now_ms() / 1000,
            last_activity: self.activity.lock().unwrap_or_else(|e| e.into_inner()).clone(),
        }
    }

    /// The port allocations as last stored.
    pub fn allocations(&self) -> Arc<Allocations> {
        self.allocations.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Asks for a pass of `name` now.
    pub fn trigger(&self, name: &str, trigger: Trigger) {
        self.scheduler.now(&name.to_string(), trigger);
    }

    pub fn trigger_all(&self, trigger: Trigger) {
        for name in self.sandbox_names() {
            self.trigger(&name, trigger);
        }
    }

    /// Wakes the sandboxes whose part of the reports differs between `before` and now: a branch head that moved
    /// wakes the sandboxes that run that branch, any other difference (containers, networks, worktrees, routes)
    /// the sandbox it belongs to. Forgets the recent output of containers that are gone.
    pub fn trigger_changed(&self, before: &crate::plan::Actual) {
        let now = self.hub.actual();
        // A sandbox at a time: both reports cut whole by sandbox were a megabyte each, for the moment of a report.
        // A sandbox in one of them only has objects there, and none in the other's view.
        let mut names = before.names();
        names.extend(now.names());
        for name in names {
            if !crate::plan::same_objects(&before.view(name), &now.view(name)) {
                self.trigger(name, Trigger::AgentReport);
            }
        }
        let desired = self.world().desired;
        for role in [Role::Micro, Role::Gateway] {
            let (was, is) = (&before.of(role).heads, &now.of(role).heads);
            if was == is {
                continue;
            }
            let moved: BTreeSet<(&str, &str)> = is
                .iter()
                .filter(|h| !was.contains(h))
                .map(|h| (h.repo.as_str(), h.branch.as_str()))
                .collect();
            for (name, sandbox) in desired.sandboxes.iter() {
                let containers = match role {
                    Role::Micro => sandbox.services.values().collect::<Vec<_>>(),
                    Role::Gateway => vec![&sandbox.gateway],
                };
                if containers
                    .iter()
                    .any(|c| moved.contains(&(c.service.as_str(), c.branch.as_str())))
                {
                    self.trigger(name, Trigger::BranchMoved);
                }
            }
        }
        self.logs.forget_all_but(&now);
    }

    /// Runs `concurrency` workers, and a clock that recompiles every `resync` (time passes for `expireAfter`),
    /// until [`Controller::stop`]; returns when the passes in flight have ended.
    pub async fn run(self: Arc<Controller>, concurrency: usize) {
        let clock = {
            let me = self.clone();
            let mut stop = self.stop.subscribe();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(me.resync);
                tick.tick().await;
                loop {
                    tokio::select! {
                        _ = stop.wait_for(|stop| *stop) => break,
                        _ = tick.tick() => {}
                    }
                    for name in me.recompile() {
                        me.trigger(&name, Trigger::Expiry);
                    }
                }
            })
        };
        runner::run(self.scheduler.clone(), self.clone(), concurrency, self.stop.subscribe()).await;
        let _ = clock.await;
    }

    /// Runs the workers in the background (tests, and `serve` until it stops them).
    pub fn spawn(self: &Arc<Controller>, concurrency: usize) -> tokio::task::JoinHandle<()> {
        tokio::spawn(self.clone().run(concurrency))
    }

    /// Asks the workers to take no new pass, and each pass to stop after its current step.
    pub fn stop(&self) {
        self.stop.send_replace(true);
    }

    pub fn stopping(&self) -> bool {
        *self.stop.borrow()
    }

    /// When the next resync of a converged sandbox comes: `resync` ±10 %, so that sandboxes spread out.
    fn resync_after(&self) -> Requeue {
        let spread = 0.9 + 0.2 * backoff::jitter();
        Requeue::After(self.resync.mul_f64(spread), Trigger::Resync)
    }

    /// When `name` is due for its next pass, if it waits for one.
    pub fn next_pass(&self, name: &str) -> Option<Duration> {
        let at = self.scheduler.due_at(&name.to_string())?;
        Some(at.saturating_duration_since(Instant::now()))
    }

    /// The number of failures in a row of `resource` (for tests and the API).
    pub fn failures(&self, resource: &str) -> u32 {
        self.backoff.failures(resource)
    }

    fn set_status(&self, name: &str, change: impl FnOnce(&mut Status)) {
        let mut all = self.status.write().unwrap_or_else(|e| e.into_inner());
        let status = all.entry(name.to_string()).or_default();
        let before = status::shown(status);
        change(status);
        let after = status::shown(status);
        drop(all);
        if before != after {
            self.changes.send_modify(|n| *n += 1);
        }
    }

    fn set_in_flight(&self, name: &str, step: Option<String>) {
        self.set_status(name, |s| {
            if step.is_some() {
                s.sync = Sync::Progressing;
            }
            s.in_flight = step;
        });
    }

    fn forget_status(&self, name: &str) {
        self.status.write().unwrap_or_else(|e| e.into_inner()).remove(name);
    }

    /// A deploy of `name` succeeded: it counts as activity for `expireAfter`.
    fn touch(&self, name: &str) {
        self.activity
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(name.to_string(), now_ms() / 1000);
    }
}

impl runner::Reconcile<String> for Controller {
    async fn reconcile(self: Arc<Self>, name: String, why: Triggers) -> Requeue {
        let span = tracing::info_span!("pass", sandbox = %name, trigger = %why);
        tracing::Instrument::instrument(self.run_pass(&name, &why), span).await
    }

    fn panicked(&self, name: &String, message: &str) -> Requeue {
        let error = format!("the reconcile pass failed unexpectedly: {message}");
        tracing::error!(sandbox = %name, "{error}");
        if let Err(e) = self
            .store
            .event(now_ms(), Some(name), format!("{error}; it is tried again"))
        {
            tracing::error!("cannot record an event: {e:#}");
        }
        let wait = self.backoff.fail(&pass::pass_resource(name), &error);
        self.set_status(name, |s| {
            s.sync = Sync::Failed;
            s.in_flight = None;
            s.last_error = Some(error.clone());
        });
        Requeue::After(wait, Trigger::RetryAfterError)
    }
}
