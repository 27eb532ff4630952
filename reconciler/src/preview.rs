//! What a config repo would make the reconciler do, before anyone commits it: the controller's own compile and
//! plan, for every sandbox, against the inputs the reconciler has (`GET /api/v1/actual`: the agents' reports,
//! the port allocations, the settings and clock) or against an empty world. Pure: `sdp plan` fetches the inputs
//! and prints the answer.

use std::collections::BTreeSet;
use std::sync::Arc;

use sdp_dashboard::docs::ActualDoc;
use sdp_manifest::{Environment, Sandbox};
use sdp_protocol::Role;

use crate::desired::{Allocations, Clock, Desired, Mode, Seen, Settings, compile_again, note_changes};
use crate::plan::{Actual, Step, plan};

/// What the reconciler compiles and plans with besides the config repo's files.
#[derive(Clone, Debug, Default)]
pub struct Inputs {
    /// The sandboxes the reconciler compiles now: a sandbox of the change that differs from its own counts as
    /// changed now (for `expireAfter`), as when the reconciler reads a commit.
    pub current: Vec<Arc<Sandbox>>,
    pub actual: Actual,
    pub allocations: Arc<Allocations>,
    pub settings: Settings,
    pub clock: Clock,
    /// The branches the reconciler last listed for the SandboxSets' repositories.
    pub branches: crate::sets::Branches,
}

/// What a running reconciler plans with (`GET /api/v1/actual`): `sdp plan --server` and the memory benchmark's
/// stand-in agents read it.
impl From<ActualDoc> for Inputs {
    fn from(doc: ActualDoc) -> Inputs {
        // The reconciler gives back the leaving ports that are free on their VM before it compiles, as here.
        let mut allocations = crate::api::docs::allocations(&doc.ports, &doc.leaving_ports);
        let seen = |role: Role| {
            let report = if role == Role::Micro { &doc.micro } else { &doc.gateway };
            Some(Seen::of(report, *doc.reported_ms.get(&role)?))
        };
        if let Some(settled) = allocations.settled(seen) {
            allocations = settled;
        }
        Inputs {
            current: doc.sandboxes,
            actual: Actual::shared(doc.micro, doc.gateway),
            allocations: Arc::new(allocations),
            settings: Settings::from(&doc.settings),
            clock: Clock {
                now: doc.now,
                last_activity: doc.last_activity,
            },
            branches: doc.branches,
        }
    }
}

/// What the change does to a sandbox in git.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    Added,
    Removed,
    Changed,
    Unchanged,
}

impl Change {
    pub fn as_str(self) -> &'static str {
        match self {
            Change::Added => "added",
            Change::Removed => "removed",
            Change::Changed => "changed",
            Change::Unchanged => "unchanged",
        }
    }
}

/// One sandbox's part of the preview.
#[derive(Clone, Debug)]
pub struct SandboxPreview {
    pub name: String,
    pub change: Change,
    /// `None`: nothing of it should run (removed, expired, held).
    pub mode: Option<Mode>,
    /// Why it cannot be compiled: nothing is done to it.
    pub held: Option<String>,
    /// What the next pass would do, in order, each with its reason.
    pub steps: Vec<Step>,
}

/// One port allocation.
pub type Port = (String, String, u16);

/// Every sandbox in git (before or after) or on a VM, by name, and the ports given out or taken back.
#[derive(Clone, Debug, Default)]
pub struct Preview {
    pub sandboxes: Vec<SandboxPreview>,
    pub ports_added: Vec<Port>,
    pub ports_removed: Vec<Port>,
}

impl Preview {
    /// Whether anything would change on the VMs or in the allocations.
    pub fn changes_anything(&self) -> bool {
        !self.ports_added.is_empty()
            || !self.ports_removed.is_empty()
            || self
                .sandboxes
                .iter()
                .any(|s| !s.steps.is_empty() || matches!(s.change, Change::Added | Change::Removed))
    }
}

/// The controller's compile of `sandboxes` and `environments` with `inputs`, and its plan of every sandbox.
pub fn preview(sandboxes: &[Arc<Sandbox>], environments: &[Environment], inputs: &Inputs) -> Preview {
    let mut clock = inputs.clock.clone();
    note_changes(&inputs.current, sandboxes, &mut clock.last_activity, clock.now);
    let desired = compile_again(
        &Desired::default(),
        sandboxes,
        environments,
        &inputs.allocations,
        &inputs.settings,
        &clock,
    );
    let views = inputs.actual.views();
    let mut names: BTreeSet<&str> = desired.sandboxes.keys().map(String::as_str).collect();
    names.extend(desired.held.keys().map(String::as_str));
    names.extend(sandboxes.iter().map(|s| s.metadata.name.as_str()));
    names.extend(inputs.current.iter().map(|s| s.metadata.name.as_str()));
    names.extend(views.keys().copied());
    let empty = inputs.actual.empty_view();
    let out = names
        .into_iter()
        .map(|name| {
            let new = sandboxes.iter().find(|s| s.metadata.name == name);
            let old = inputs.current.iter().find(|s| s.metadata.name == name);
            let change = match (old, new) {
                (None, Some(_)) => Change::Added,
                (Some(_), None) => Change::Removed,
                (Some(a), Some(b)) if a != b => Change::Changed,
                _ => Change::Unchanged,
            };
            let held = desired.held.get(name).cloned();
            let d = desired.sandbox(name);
            // A held sandbox is left as it is, as the controller's pass leaves it.
            let steps = if held.is_some() {
                Vec::new()
            } else {
                plan(name, d, views.get(name).unwrap_or(&empty))
            };
            SandboxPreview {
                name: name.to_string(),
                change,
                mode: d.map(|d| d.mode.clone()),
                held,
                steps,
            }
        })
        .collect();
    let list = |a: &Allocations, b: &Allocations| -> Vec<Port> {
        a.ports
            .iter()
            .filter(|(k, p)| b.ports.get(*k) != Some(*p))
            .map(|((sb, svc), p)| (sb.clone(), svc.clone(), *p))
            .collect()
    };
    Preview {
        sandboxes: out,
        ports_added: list(&desired.allocations, &inputs.allocations),
        ports_removed: list(&inputs.allocations, &desired.allocations),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use sdp_dashboard::docs::{ActualDoc, PortDoc};
    use sdp_protocol::{ActualState, Container, ContainerState, Role, labels};

    use super::Inputs;
    use crate::desired::Settings;

    /// A reconciler's answer with port 9001 leaving since `since`, and the micro agent's report (none when
    /// `reported` is `None`), with `container` when it publishes the port.
    fn doc(since: u64, reported: Option<u64>, container: bool) -> ActualDoc {
        let mut micro = ActualState::default();
        if container {
            micro.containers.push(Arc::new(Container {
                name: "sandbox-old-account".into(),
                id: "c0ffee".into(),
                labels: [(labels::SANDBOX, "old"), (labels::SERVICE, "account")].into(),
                state: ContainerState::Running,
                ports: vec![9001],
                restart_count: 0,
                exit_code: None,
                probe: None,
            }));
        }
        ActualDoc {
            config_commit: "c0ffee".into(),
            sandboxes: vec![],
            connected: vec![Role::Micro],
            reported_ms: reported.map(|at| (Role::Micro, at)).into_iter().collect(),
            micro: Arc::new(micro),
            gateway: Arc::default(),
            ports: vec![],
            leaving_ports: vec![PortDoc {
                sandbox: "old".into(),
                service: "account".into(),
                port: 9001,
                since: Some(since),
            }],
            settings: (&Settings::default()).into(),
            now: 0,
            last_activity: BTreeMap::new(),
            branches: BTreeMap::new(),
            skipped: vec![],
        }
    }

    #[test]
    fn sdp_plan_gives_back_a_leaving_port_when_the_reconciler_would() {
        let leaving = |doc: ActualDoc| Inputs::from(doc).allocations.leaving.len();
        // Its VM reported after it left, and nothing there publishes it: free, as the reconciler finds it.
        assert_eq!(leaving(doc(1_000, Some(2_000), false)), 0);
        // Not yet: no report since it connected, a report from before the port left, the container still there.
        assert_eq!(leaving(doc(1_000, None, false)), 1);
        assert_eq!(leaving(doc(1_000, Some(500), false)), 1);
        assert_eq!(leaving(doc(1_000, Some(2_000), true)), 1);
    }
}
