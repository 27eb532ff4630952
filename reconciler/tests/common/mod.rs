//! A pure model of what each action does on a VM, for tests that check that plans converge.

#![allow(dead_code)]

pub mod repo;
pub mod server;

use std::collections::BTreeMap;

use sdp_protocol::{Action, Container, ContainerState, GATEWAY, Role, Worktree, labels, network_name};
use sdp_reconciler::plan::{Actual, Step};

/// The OCP values a gateway branch's config.php holds in the model.
pub fn ocp_defaults() -> BTreeMap<String, String> {
    ["account", "payment", "user"]
        .iter()
        .map(|s| (s.to_string(), format!("http://{s}.ocp.example:8080")))
        .collect()
}

/// Does to `actual` what an agent does for `step`.
pub fn apply(step: &Step, actual: &mut Actual) {
    let state = actual.of_mut(step.role);
    match &step.action {
        Action::EnsureNetwork { sandbox } => {
            let n = network_name(sandbox);
            if !state.networks.contains(&n) {
                state.networks.push(n);
            }
        }
        Action::DeployService(d) | Action::DeployGateway(d) => {
            state.containers.retain(|c| c.name != d.container);
            let mut labels = d.labels.clone();
            let commit = d.commit.clone().or_else(|| {
                state
                    .heads
                    .iter()
                    .find(|h| h.repo == d.service && h.branch == d.branch)
                    .map(|h| h.commit.clone())
            });
            labels.insert(labels::COMMIT.into(), commit.clone().unwrap_or_else(|| "0000".into()));
            state.containers.push(
                Container {
                    name: d.container.clone(),
                    id: format!("id-{}", d.container),
                    labels: labels.into(),
                    state: ContainerState::Running,
                    ports: vec![d.host_port],
                    restart_count: 0,
                    exit_code: None,
                    probe: None,
                }
                .into(),
            );
            let worktrees = std::sync::Arc::make_mut(&mut state.worktrees);
            worktrees.retain(|w| !(*w.sandbox == *d.sandbox && *w.service == *d.service));
            worktrees.push(Worktree {
                sandbox: d.sandbox.as_str().into(),
                service: d.service.as_str().into(),
                branch: d.branch.as_str().into(),
                commit: commit.unwrap_or_else(|| "0000".into()).into(),
            });
            if step.role == Role::Gateway && d.service == GATEWAY {
                // A fresh checkout: config.php holds the branch's own values again.
                state.route_defaults.insert(d.sandbox.clone(), ocp_defaults().into());
                state.routes.insert(d.sandbox.clone(), ocp_defaults().into());
            }
        }
        Action::SetRoutes { sandbox, routes } => {
            let mut map = state.route_defaults.get(sandbox).cloned().unwrap_or_default();
            map.extend(routes.iter().map(|(k, v)| (k.clone(), v.clone())));
            state.routes.insert(sandbox.clone(), map);
        }
        Action::Stop { container } => {
            for c in state.containers.iter_mut().filter(|c| &c.name == container) {
                std::sync::Arc::make_mut(c).state = ContainerState::Exited;
            }
        }
        Action::RemoveContainer { container } => state.containers.retain(|c| &c.name != container),
        Action::RemoveNetwork { sandbox } => state.networks.retain(|n| *n != network_name(sandbox)),
        Action::RemoveWorktree { sandbox, service } => std::sync::Arc::make_mut(&mut state.worktrees)
            .retain(|w| !(*w.sandbox == **sandbox && *w.service == **service)),
    }
}
