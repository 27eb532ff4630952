//! One reconcile pass of one sandbox: plan against the agents' reports, run the steps in order (a run of
//! consecutive deploys side by side), and say what comes next. The status is built once, at the end of every pass,
//! whatever way it ended (as Flux's reconcilers patch their status in a deferred call).

use std::collections::BTreeSet;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use sdp_protocol::{Action, GATEWAY, Role, labels};

use super::runner::Requeue;
use super::status::{PendingStep, Sync, health};
use super::trigger::{Trigger, Triggers};
use super::{Controller, World};
use crate::desired::{DesiredSandbox, Mode};
use crate::hub::{AskError, Readiness, now_ms};
use crate::plan::{Step, plan, side_by_side};
use crate::store::{Deployment, DeploymentState};

/// How long an agent has for one action: builds take a while, the rest is quick.
fn deadline(action: &Action) -> Duration {
    match action {
        Action::DeployService(_) | Action::DeployGateway(_) => Duration::from_secs(900),
        _ => Duration::from_secs(120),
    }
}

/// Why a step did not run to its end.
#[derive(Debug)]
pub enum StepError {
    /// The agent refused, failed or did not answer.
    Agent(AskError),
    /// A record the next passes depend on (a deployment, the applied spec) could not be written.
    Store(anyhow::Error),
}

impl std::fmt::Display for StepError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StepError::Agent(e) => write!(f, "{e}"),
            StepError::Store(e) => write!(f, "the store: {e:#}"),
        }
    }
}

/// Why a pass ended before its plan did.
#[derive(Debug)]
pub enum PassError {
    /// The store failed: nothing more is done until it works again.
    Store(anyhow::Error),
}

impl std::fmt::Display for PassError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PassError::Store(e) => write!(f, "the store failed: {e:#}"),
        }
    }
}

/// What a pass found, for the status.
#[derive(Default)]
struct Findings {
    /// Held by the compiler (no free port ...) or never valid: nothing was planned.
    stopped_early: Option<String>,
    problems: Vec<String>,
    failures: usize,
    planned: usize,
}

impl Controller {
    /// One pass of `name`, asked for by hand (tests, tools).
    pub async fn pass(&self, name: &str) -> Requeue {
        self.run_pass(name, &Triggers::one(Trigger::Requested)).await
    }

    /// One pass of `name` for `why`, with its status written at the end and the error policy applied.
    pub async fn run_pass(&self, name: &str, why: &Triggers) -> Requeue {
        let started = Instant::now();
        self.metrics.passes.fetch_add(1, Ordering::Relaxed);
        if let Some(hook) = self.before_pass.get() {
            (hook.0)(name);
        }
        let world = self.world();
        let mut findings = Findings::default();
        let result = self.reconcile(name, why, &world, &mut findings).await;
        let requeue = match result {
            Ok(requeue) => {
                self.backoff.succeeded(&pass_resource(name));
                requeue
            }
            Err(e) => {
                // The error policy: a failing store backs the whole sandbox off, as a failing action backs off
                // its resource.
                let error = e.to_string();
                tracing::error!(sandbox = name, "{error}");
                let wait = self.backoff.fail(&pass_resource(name), &error);
                findings.problems.push(error);
                findings.failures += 1;
                Requeue::After(wait, Trigger::RetryAfterError)
            }
        };
        let gone = self.finish_status(name, &world, &findings);
        self.metrics
            .pass_micros
            .fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
        if gone {
            return Requeue::Never;
        }
        requeue
    }

    /// Plans and runs the steps: a step that cannot run blocks only what depends on it (a role whose agent is
    /// missing or whose network failed skips its other steps, a failed gateway deploy skips the routes); the
    /// other role and the other services go on.
    async fn reconcile(
        &self,
        name: &str,
        why: &Triggers,
        world: &World,
        findings: &mut Findings,
    ) -> Result<Requeue, PassError> {
        if world.snapshot.commit.is_empty() {
            // The config repo has not been read yet (a slow first clone after a restart): every sandbox would look
            // undesired and be torn down. Nothing is done until the first read, which wakes every sandbox.
            findings.stopped_early = Some("waiting for the first read of the config repo".into());
            return Ok(Requeue::Never);
        }
        let desired = world.desired.sandbox(name);
        if let Some(reason) = world.desired.held.get(name) {
            // Nothing is done to a held sandbox: what runs keeps running. A commit or the clock frees it.
            findings.stopped_early = Some(reason.clone());
            return Ok(Requeue::Never);
        }
        if let (None, Some(errors)) = (desired, world.snapshot.errors.get(name)) {
            // Never valid: nothing to run, nothing to remove that it could own. Waits for a commit.
            findings.stopped_early = Some(errors.join("; "));
            return Ok(Requeue::Never);
        }
        // Readiness as of the report planned from: a role that turned ready since is acted on at the next pass (its
        // first report wakes every sandbox), never from a plan made before its report was in.
        let (actual, readiness) = self.hub.actual_and_readiness();
        let steps = plan(name, desired, &actual.view(name));
        findings.planned = steps.len();
        let mut next = self.resync_after();
        let mut blocked: BTreeSet<Role> = BTreeSet::new();
        let mut gateway_failed = false;
        'runs: for run in side_by_side(&steps) {
            // What of the run may go: each step is checked as if it ran alone (what an earlier step of the same
            // run holds up cannot be in it: a run of several steps is deploys only).
            let mut ready = Vec::with_capacity(run.len());
            for step in run {
                if blocked.contains(&step.role) || (gateway_failed && matches!(step.action, Action::SetRoutes { .. })) {
                    continue;
                }
                if self.stopping() {
                    findings.problems.push("the reconciler is stopping".into());
                    break 'runs;
                }
                match readiness(step.role) {
                    Readiness::Ready => {}
                    // Checked before a deployment is recorded for nothing; the agent's first report wakes every
                    // sandbox. Until it is in, what the hub holds of the role may be empty (a reconciler that just
                    // started) or stale, and acting on it would redeploy what runs.
                    waiting => {
                        findings.problems.push(match waiting {
                            Readiness::NotConnected => format!("waiting for a {} agent to connect", step.role),
                            _ => format!("waiting for the first report of the {} agent", step.role),
                        });
                        blocked.insert(step.role);
                        continue;
                    }
                }
                if let Some((wait, error)) = self.backoff.waiting(&step.resource) {
                    findings.failures += 1;
                    findings.problems.push(format!(
                        "{} is backing off for {:.1} s after a failure: {error}",
                        step.resource,
                        wait.as_secs_f64()
                    ));
                    next = sooner(next, Requeue::After(wait, Trigger::RetryAfterError));
                    blocked_by(step, &mut blocked, &mut gateway_failed);
                    continue;
                }
                ready.push(step);
            }
            if ready.is_empty() {
                continue;
            }
            let labels: Vec<String> = ready.iter().map(|s| s.to_string()).collect();
            self.set_in_flight(name, Some(labels.join("; ")));
            for label in &labels {
                tracing::info!("{label}");
            }
            // Side by side: the agent runs each action in a task of its own. Every deploy records its own
            // deployment and event as it ends; the results are then read in the plan's order.
            let results = join_all(ready.iter().map(|step| self.run_step(name, desired, step, world, why))).await;
            let mut store_failed = None;
            for ((step, label), result) in ready.iter().zip(&labels).zip(results) {
                match result {
                    Ok(()) => {
                        self.backoff.succeeded(&step.resource);
                        self.count(step, "succeeded");
                    }
                    Err(StepError::Agent(AskError::NoAgent(_) | AskError::Disconnected { .. })) => {
                        // Not a failure of the resource: the agent's return wakes every sandbox. (A deployment
                        // that was under way is recorded as failed.) Said once for the steps of a run it held up.
                        if blocked.insert(step.role) {
                            findings
                                .problems
                                .push(format!("waiting for a {} agent to connect", step.role));
                        }
                    }
                    Err(e) => {
                        self.count(step, "failed");
                        let error = e.to_string();
                        let wait = self.backoff.fail(&step.resource, &error);
                        tracing::warn!("{label} failed: {error}; retry in {:.1} s", wait.as_secs_f64());
                        findings.failures += 1;
                        findings.problems.push(format!("{label} failed: {error}"));
                        self.store
                            .event(now_ms(), Some(name), format!("{label} failed: {error}"))
                            .map_err(PassError::Store)?;
                        next = sooner(next, Requeue::After(wait, Trigger::RetryAfterError));
                        blocked_by(step, &mut blocked, &mut gateway_failed);
                        if let StepError::Store(e) = e {
                            // The other steps of the run have ended and are recorded: the pass ends here.
                            store_failed.get_or_insert(e);
                        }
                    }
                }
            }
            if let Some(e) = store_failed {
                return Err(PassError::Store(e));
            }
        }
        Ok(next)
    }

    /// The status, written once at the end of a pass. Says whether the sandbox is gone (nothing desired, nothing
    /// left on the VMs): its status is dropped.
    fn finish_status(&self, name: &str, world: &World, findings: &Findings) -> bool {
        if let Some(reason) = &findings.stopped_early {
            let reason = reason.clone();
            self.set_status(name, |s| {
                s.sync = Sync::Failed;
                s.pending.clear();
                s.in_flight = None;
                s.last_error = Some(reason);
                s.last_pass_ms = Some(now_ms());
            });
            return false;
        }
        let desired = world.desired.sandbox(name);
        // What is left: planned again against the reports as they are now.
        let actual = self.hub.actual();
        let view = actual.view(name);
        let pending = plan(name, desired, &view);
        let health = health(desired, &view);
        let failed = (!findings.problems.is_empty()).then(|| findings.problems.join("; "));
        // The config repo's errors first: they are what the user must fix.
        let error = match (world.snapshot.errors.get(name).map(|e| e.join("; ")), failed) {
            (Some(c), Some(f)) => Some(format!("{c}; {f}")),
            (c, f) => c.or(f),
        };
        let suspended = desired.is_some_and(|d| d.mode != Mode::Active);
        let connected = |role: Role| self.hub.address(role).is_some();
        let sync = if pending.is_empty() {
            if suspended { Sync::Suspended } else { Sync::Synced }
        } else if findings.failures > 0 {
            Sync::Failed
        } else if suspended && pending.iter().all(|p| !connected(p.role)) {
            // Stopped wherever an agent can stop it; the rest waits for its agent.
            Sync::Suspended
        } else if findings.planned > 0 && pending.len() < findings.planned {
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
            self.forget_status(name);
        }
        gone
    }

    async fn run_step(
        &self,
        name: &str,
        desired: Option<&DesiredSandbox>,
        step: &Step,
        world: &super::World,
        why: &Triggers,
    ) -> Result<(), StepError> {
        let deploy = match &step.action {
            Action::DeployService(d) | Action::DeployGateway(d) => Some(d),
            _ => None,
        };
        let Some(deploy) = deploy else {
            self.hub
                .dispatch(step.role, step.action.clone(), None, deadline(&step.action))
                .await
                .map_err(StepError::Agent)?;
            self.store
                .event(now_ms(), Some(name), step.to_string())
                .map_err(StepError::Store)?;
            return Ok(());
        };
        let spec = world.sandbox(name);
        let snapshot = &world.snapshot;
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
            trigger: why.to_string(),
            started_ms: now_ms(),
            ended_ms: None,
            state: DeploymentState::Running,
            stages: Vec::new(),
            error: None,
        };
        let record = self.store.start_deployment(record).map_err(StepError::Store)?;
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
            .and_then(|c| c.labels.get(labels::COMMIT).map(str::to_string));
        self.store
            .update_deployment(record.id, |d| {
                d.ended_ms = Some(now_ms());
                d.state = if result.is_ok() {
                    DeploymentState::Succeeded
                } else {
                    DeploymentState::Failed
                };
                d.error = result.as_ref().err().map(AskError::to_string);
                if d.commit.is_none() {
                    d.commit = commit;
                }
            })
            .map_err(StepError::Store)?;
        result.map_err(StepError::Agent)?;
        if let Some(hash) = deploy.labels.get(labels::SPEC_HASH) {
            // What the next passes compare the container with: a lost write would redeploy it for nothing.
            self.store
                .set_applied(&deploy.container, hash)
                .map_err(StepError::Store)?;
        }
        self.store
            .event(
                now_ms(),
                Some(name),
                format!(
                    "deployed {} ({}), deployment {}",
                    deploy.container, step.reason, record.id
                ),
            )
            .map_err(StepError::Store)?;
        if let Some(d) = desired {
            self.touch(&d.name);
        }
        Ok(())
    }

    fn count(&self, step: &Step, outcome: &'static str) {
        let kind = super::status::kind(&step.action).to_string();
        *self
            .metrics
            .actions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry((kind, outcome))
            .or_default() += 1;
    }
}

/// The backoff key of a sandbox's whole pass (a store that fails, a pass that panicked).
pub(super) fn pass_resource(name: &str) -> String {
    format!("pass of {name}")
}

/// What a failed or waiting step holds up besides itself.
fn blocked_by(step: &Step, blocked: &mut BTreeSet<Role>, gateway_failed: &mut bool) {
    match step.action {
        Action::EnsureNetwork { .. } => {
            blocked.insert(step.role);
        }
        Action::DeployGateway(_) => *gateway_failed = true,
        _ => {}
    }
}

/// The earlier of two requeues.
fn sooner(a: Requeue, b: Requeue) -> Requeue {
    match (a, b) {
        (Requeue::After(x, _), Requeue::After(y, _)) if y < x => b,
        (Requeue::Never, _) => b,
        _ => a,
    }
}
