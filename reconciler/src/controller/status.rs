//! What the API and the pages show of a sandbox: sync and health as Argo CD users know them, the pending plan
//! with its reasons, the step in flight and the last error.

use sdp_protocol::{Action, ContainerState, Role};

use crate::desired::{DesiredSandbox, Mode};
use crate::plan::Step;

/// The API's documents are the controller's status: one type, served as the controller keeps it.
pub use sdp_dashboard::docs::{Health, PendingAction, PendingStep, Status, Sync};

/// A step of the plan as the status keeps it: its body (a deploy's spec and environment) left out.
impl From<&Step> for PendingStep {
    fn from(step: &Step) -> PendingStep {
        PendingStep {
            role: step.role,
            resource: step.resource.clone(),
            action: PendingAction {
                kind: kind(&step.action).into(),
            },
            reason: step.reason.clone(),
        }
    }
}

/// An action's kind as the API writes it (`deployService`).
pub fn kind(action: &Action) -> &'static str {
    match action {
        Action::EnsureNetwork { .. } => "ensureNetwork",
        Action::DeployService(_) => "deployService",
        Action::DeployGateway(_) => "deployGateway",
        Action::SetRoutes { .. } => "setRoutes",
        Action::Stop { .. } => "stop",
        Action::RemoveContainer { .. } => "removeContainer",
        Action::RemoveNetwork { .. } => "removeNetwork",
        Action::RemoveWorktree { .. } => "removeWorktree",
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
