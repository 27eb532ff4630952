//! What the API and the pages show of a sandbox: sync and health as Argo CD users know them, the pending plan
//! with its reasons, the step in flight and the last error.

use sdp_protocol::{Action, ContainerState, Role};
use serde::Serialize;

use crate::desired::{DesiredSandbox, Mode};
use crate::plan::Step;

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

impl Status {
    /// A sandbox before its first pass.
    pub fn new() -> Status {
        Status {
            sync: Sync::OutOfSync,
            health: Health::Unknown,
            pending: Vec::new(),
            in_flight: None,
            last_error: None,
            last_pass_ms: None,
        }
    }
}

impl Default for Status {
    fn default() -> Status {
        Status::new()
    }
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

/// What a page shows of a status: a change of it wakes the live pages.
pub(super) fn shown(s: &Status) -> (Sync, Health, Option<String>, Option<String>, usize) {
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
