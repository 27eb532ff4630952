//! The plan: the ordered actions that make one sandbox's actual state what its desired state says, each with the
//! reason it exists. `plan` is pure; a converged sandbox gives an empty plan.
//!
//! Order: networks, services, gateway, routes; removals last. Only objects labelled `sdp.managed=true` are
//! removed, whatever an agent reports.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::Arc;

use sdp_protocol::{
    Action, ActualState, BranchHead, Container, ContainerState, GATEWAY, Role, Routes, Worktree, labels, network_name,
};
use serde::Serialize;

use crate::desired::{DesiredContainer, DesiredSandbox, Mode};

/// Why a step is in the plan: the API's type, so that what the planner says is what the API and `sdp plan` show.
pub use sdp_dashboard::docs::Reason;
/// Commit ids as the plan's reasons print them.
pub use sdp_dashboard::docs::short;

/// One action for one agent role.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Step {
    pub role: Role,
    /// The thing the action changes (`sandbox-x-account`, `network sandbox-x`, `routes`), for backoff and display.
    pub resource: String,
    pub action: Action,
    pub reason: Reason,
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} on {} ({})",
            verb(&self.action),
            self.resource,
            self.role,
            self.reason
        )
    }
}

fn verb(action: &Action) -> &'static str {
    match action {
        Action::EnsureNetwork { .. } => "create",
        Action::DeployService(_) | Action::DeployGateway(_) => "deploy",
        Action::SetRoutes { .. } => "set",
        Action::Stop { .. } => "stop",
        Action::RemoveContainer { .. } | Action::RemoveNetwork { .. } | Action::RemoveWorktree { .. } => "remove",
    }
}

/// What the agents report, by role. A role whose agent has not reported counts as empty: its deploys are
/// planned (and fail at dispatch with "no agent"), nothing of it is removed.
#[derive(Debug, Default)]
pub struct Actual {
    /// Each role's report, shared by the `Actual`s made since it came: a report of one role does not copy the
    /// other's (10,000 containers).
    pub micro: Arc<ActualState>,
    pub gateway: Arc<ActualState>,
    /// Whether `view` and `views` read through `index`: set by `indexed`, for an `Actual` that is no longer
    /// changed (the hub's, behind an `Arc`). `of_mut` and `clone` clear it.
    indexed: bool,
    /// Where each sandbox's objects are in the reports, made on the first `view` of an indexed `Actual` and kept
    /// with it: the hub keeps one `Actual` per report, so a pass after a report reads only its own sandbox's
    /// objects instead of walking every container of the VM.
    index: std::sync::OnceLock<Arc<Index>>,
}

impl Clone for Actual {
    fn clone(&self) -> Actual {
        Actual::shared(self.micro.clone(), self.gateway.clone())
    }
}

/// Positions of one sandbox's objects in one role's report.
#[derive(Debug, Default)]
struct Places {
    containers: Vec<u32>,
    networks: Vec<u32>,
    worktrees: Vec<u32>,
}

/// Positions of each sandbox's objects in the reports, by sandbox and role (micro, gateway), and the sizes of
/// each role's lists when it was made.
#[derive(Debug, Default)]
struct Index {
    places: BTreeMap<String, [Places; 2]>,
    /// Each role's branch heads by repository and branch.
    heads: [HeadIndex; 2],
    sizes: [(usize, usize, usize, usize); 2],
}

/// Positions of branch heads in a report, by repository then branch: the first of each, as a walk finds it.
pub type HeadIndex = BTreeMap<String, BTreeMap<String, u32>>;

/// One sandbox's part of one agent's report, borrowed.
#[derive(Clone, Debug, Default)]
pub struct RoleView<'a> {
    pub containers: Vec<&'a Container>,
    pub networks: Vec<&'a str>,
    pub worktrees: Vec<&'a Worktree>,
    pub routes: Option<&'a Routes>,
    pub route_defaults: Option<&'a Routes>,
    /// Heads of tracked branches: shared by every sandbox.
    pub heads: &'a [BranchHead],
    /// `heads` by repository and branch, when the reports are indexed: a deploy's head is found in a few steps
    /// rather than a walk of every head of every repository, for each container of each sandbox.
    pub heads_by: Option<&'a HeadIndex>,
}

/// Equal when they hold the same objects and heads; `heads_by` is only a faster way to the heads.
impl PartialEq for RoleView<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.containers == other.containers
            && self.networks == other.networks
            && self.worktrees == other.worktrees
            && self.routes == other.routes
            && self.route_defaults == other.route_defaults
            && self.heads == other.heads
    }
}

impl<'a> RoleView<'a> {
    /// The commit at the head of `branch` of `repo`, as reported.
    pub fn head(&self, repo: &str, branch: &str) -> Option<&'a str> {
        let heads = self.heads;
        match self.heads_by {
            Some(by) => by.get(repo)?.get(branch).map(|i| heads[*i as usize].commit.as_str()),
            None => heads
                .iter()
                .find(|h| h.repo == repo && h.branch == branch)
                .map(|h| h.commit.as_str()),
        }
    }
}

/// One sandbox's part of the reports: what `plan` reads.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct View<'a> {
    pub micro: RoleView<'a>,
    pub gateway: RoleView<'a>,
}

/// Whether two views hold the same objects, whatever the branch heads (which every view shares).
pub fn same_objects(a: &View<'_>, b: &View<'_>) -> bool {
    let same = |x: &RoleView<'_>, y: &RoleView<'_>| {
        x.containers == y.containers
            && x.networks == y.networks
            && x.worktrees == y.worktrees
            && x.routes == y.routes
            && x.route_defaults == y.route_defaults
    };
    same(&a.micro, &b.micro) && same(&a.gateway, &b.gateway)
}

impl<'a> View<'a> {
    pub fn of(&self, role: Role) -> &RoleView<'a> {
        match role {
            Role::Micro => &self.micro,
            Role::Gateway => &self.gateway,
        }
    }
}

/// Whether `a` and `b` put every sandbox's objects at the same places, with the same branch heads: an index of one
/// is the other's. Shared containers and worktree lists are the same by pointer; only what changed is compared.
fn same_places(a: &ActualState, b: &ActualState) -> bool {
    let container = |x: &Arc<Container>, y: &Arc<Container>| {
        Arc::ptr_eq(x, y) || x.labels.get(labels::SANDBOX) == y.labels.get(labels::SANDBOX)
    };
    let worktrees = Arc::ptr_eq(&a.worktrees, &b.worktrees)
        || (a.worktrees.len() == b.worktrees.len()
            && a.worktrees
                .iter()
                .zip(b.worktrees.iter())
                .all(|(x, y)| x.sandbox == y.sandbox));
    worktrees
        && a.containers.len() == b.containers.len()
        && a.containers.iter().zip(&b.containers).all(|(x, y)| container(x, y))
        && a.networks == b.networks
        && a.heads == b.heads
}

impl Actual {
    pub fn new(micro: ActualState, gateway: ActualState) -> Actual {
        Actual::shared(Arc::new(micro), Arc::new(gateway))
    }

    /// The reports as they are, shared.
    pub fn shared(micro: Arc<ActualState>, gateway: Arc<ActualState>) -> Actual {
        Actual {
            micro,
            gateway,
            indexed: false,
            index: std::sync::OnceLock::new(),
        }
    }

    /// This `Actual` with the report of `role` replaced, the other role's shared.
    pub fn with_report(&self, role: Role, report: ActualState) -> Actual {
        let report = Arc::new(report);
        match role {
            Role::Micro => Actual::shared(report, self.gateway.clone()),
            Role::Gateway => Actual::shared(self.micro.clone(), report),
        }
    }

    /// This `Actual`, its views read through an index of the reports made once. It must not be changed through its
    /// fields afterwards (`of_mut` is fine: it drops the index).
    pub fn indexed(mut self) -> Actual {
        self.index = std::sync::OnceLock::new();
        self.indexed = true;
        self
    }

    /// `indexed`, sharing the index of `before` when its reports put every sandbox's objects at the same places
    /// (a report of one restarted container does): no second index of 1,000 sandboxes is made for it.
    pub fn indexed_after(self, before: &Actual) -> Actual {
        // Only an index already made, and still true of its reports: none is made here to be compared.
        let reuse = before
            .index
            .get()
            .filter(|index| before.is_fresh(index))
            .filter(|_| same_places(&self.micro, &before.micro) && same_places(&self.gateway, &before.gateway))
            .cloned();
        let indexed = self.indexed();
        if let Some(index) = reuse {
            let _ = indexed.index.set(index);
        }
        indexed
    }

    fn index(&self) -> &Index {
        self.index.get_or_init(|| Arc::new(self.make_index()))
    }

    fn make_index(&self) -> Index {
        let mut index = Index {
            sizes: self.sizes(),
            ..Index::default()
        };
        for (r, role) in [Role::Micro, Role::Gateway].into_iter().enumerate() {
            let state = self.of(role);
            for (i, h) in state.heads.iter().enumerate() {
                let by_branch = index.heads[r].entry(h.repo.clone()).or_default();
                if !by_branch.contains_key(&h.branch) {
                    by_branch.insert(h.branch.clone(), i as u32);
                }
            }
            fn at<'i>(index: &'i mut Index, name: &str, r: usize) -> &'i mut Places {
                if !index.places.contains_key(name) {
                    index.places.insert(name.to_string(), Default::default());
                }
                &mut index.places.get_mut(name).expect("just inserted")[r]
            }
            for (i, c) in state.containers.iter().enumerate() {
                if let Some(sb) = c.labels.get(labels::SANDBOX) {
                    at(&mut index, sb, r).containers.push(i as u32);
                }
            }
            for (i, n) in state.networks.iter().enumerate() {
                if let Some(sb) = n.strip_prefix("sandbox-") {
                    at(&mut index, sb, r).networks.push(i as u32);
                }
            }
            for (i, w) in state.worktrees.iter().enumerate() {
                at(&mut index, &w.sandbox, r).worktrees.push(i as u32);
            }
        }
        index
    }

    pub fn of(&self, role: Role) -> &ActualState {
        self.shared_of(role)
    }

    /// The report of `role`, to hold past this `Actual`.
    pub fn shared_of(&self, role: Role) -> &Arc<ActualState> {
        match role {
            Role::Micro => &self.micro,
            Role::Gateway => &self.gateway,
        }
    }

    /// The report of `role`, to change: copied first when another `Actual` shares it.
    pub fn of_mut(&mut self, role: Role) -> &mut ActualState {
        self.index = std::sync::OnceLock::new();
        self.indexed = false;
        match role {
            Role::Micro => Arc::make_mut(&mut self.micro),
            Role::Gateway => Arc::make_mut(&mut self.gateway),
        }
    }

    /// A view with no objects, only the branch heads: for a sandbox nothing of which is on the VMs yet.
    pub fn empty_view(&self) -> View<'_> {
        View {
            micro: RoleView {
                heads: &self.micro.heads,
                ..RoleView::default()
            },
            gateway: RoleView {
                heads: &self.gateway.heads,
                ..RoleView::default()
            },
        }
    }

    /// The reports cut by sandbox, through the index of the reports (made once per report).
    pub fn views(&self) -> BTreeMap<&str, View<'_>> {
        if self.fresh_index().is_none() {
            return self.walk_views();
        }
        self.names().into_iter().map(|name| (name, self.view(name))).collect()
    }

    /// The sandboxes the reports hold something of: `views`' names, without the views (a view of each of 1,000
    /// sandboxes is a megabyte; a walk that compares two reports needs one at a time).
    pub fn names(&self) -> BTreeSet<&str> {
        let Some(index) = self.fresh_index() else {
            return self.walk_views().into_keys().collect();
        };
        let mut names: BTreeSet<&str> = index.places.keys().map(String::as_str).collect();
        for state in [&self.micro, &self.gateway] {
            names.extend(state.routes.keys().map(String::as_str));
            names.extend(state.route_defaults.keys().map(String::as_str));
        }
        names
    }

    /// One sandbox's view, read through the index of the reports (made once per report), so that a pass reads
    /// only its own sandbox's objects.
    pub fn view(&self, name: &str) -> View<'_> {
        let Some(index) = self.fresh_index() else {
            return self.walk_view(name);
        };
        let mut view = self.empty_view();
        view.micro.heads_by = Some(&index.heads[0]);
        view.gateway.heads_by = Some(&index.heads[1]);
        let places = index.places.get(name);
        for (r, role) in [Role::Micro, Role::Gateway].into_iter().enumerate() {
            let state = self.of(role);
            let part = match role {
                Role::Micro => &mut view.micro,
                Role::Gateway => &mut view.gateway,
            };
            if let Some(places) = places.map(|p| &p[r]) {
                part.containers = places
                    .containers
                    .iter()
                    .map(|i| &*state.containers[*i as usize])
                    .collect();
                part.networks = places
                    .networks
                    .iter()
                    .map(|i| state.networks[*i as usize].as_str())
                    .collect();
                part.worktrees = places.worktrees.iter().map(|i| &state.worktrees[*i as usize]).collect();
            }
            part.routes = state.routes.get(name);
            part.route_defaults = state.route_defaults.get(name);
        }
        view
    }

    /// The index of an indexed `Actual`; none when its lists no longer have the sizes they had when it was made
    /// (it was changed through its fields, against `indexed`'s rule).
    fn fresh_index(&self) -> Option<&Index> {
        if !self.indexed {
            return None;
        }
        let index = self.index();
        self.is_fresh(index).then_some(index)
    }

    /// Whether `index` is still true of this `Actual`'s reports.
    fn is_fresh(&self, index: &Index) -> bool {
        self.indexed && index.sizes == self.sizes()
    }

    /// The lengths of each report's lists, as an index made of them records them.
    fn sizes(&self) -> [(usize, usize, usize, usize); 2] {
        [&self.micro, &self.gateway].map(|s| (s.containers.len(), s.networks.len(), s.worktrees.len(), s.heads.len()))
    }

    /// The reports cut by sandbox in one walk, without the index.
    fn walk_views(&self) -> BTreeMap<&str, View<'_>> {
        let mut out: BTreeMap<&str, View<'_>> = BTreeMap::new();
        for role in [Role::Micro, Role::Gateway] {
            let state = self.of(role);
            for c in &state.containers {
                if let Some(sb) = c.labels.get(labels::SANDBOX) {
                    self.entry(&mut out, sb, role).containers.push(c);
                }
            }
            for n in &state.networks {
                if let Some(sb) = n.strip_prefix("sandbox-") {
                    self.entry(&mut out, sb, role).networks.push(n);
                }
            }
            for w in state.worktrees.iter() {
                self.entry(&mut out, &w.sandbox, role).worktrees.push(w);
            }
            for (sb, map) in &state.routes {
                self.entry(&mut out, sb, role).routes = Some(map);
            }
            for (sb, map) in &state.route_defaults {
                self.entry(&mut out, sb, role).route_defaults = Some(map);
            }
        }
        out
    }

    fn entry<'a, 'm>(
        &'a self,
        out: &'m mut BTreeMap<&'a str, View<'a>>,
        name: &'a str,
        role: Role,
    ) -> &'m mut RoleView<'a> {
        let view = out.entry(name).or_insert_with(|| self.empty_view());
        match role {
            Role::Micro => &mut view.micro,
            Role::Gateway => &mut view.gateway,
        }
    }

    /// One sandbox's view in one walk over the reports, without the index.
    fn walk_view(&self, name: &str) -> View<'_> {
        let mut view = self.empty_view();
        let network = network_name(name);
        for role in [Role::Micro, Role::Gateway] {
            let state = self.of(role);
            let part = match role {
                Role::Micro => &mut view.micro,
                Role::Gateway => &mut view.gateway,
            };
            part.containers = state
                .containers
                .iter()
                .filter(|c| c.labels.get(labels::SANDBOX).is_some_and(|s| s == name))
                .map(|c| &**c)
                .collect();
            part.networks = state
                .networks
                .iter()
                .filter(|n| **n == network)
                .map(String::as_str)
                .collect();
            part.worktrees = state.worktrees.iter().filter(|w| *w.sandbox == *name).collect();
            part.routes = state.routes.get(name);
            part.route_defaults = state.route_defaults.get(name);
        }
        view
    }

    /// Every sandbox that has anything managed on a VM.
    pub fn sandboxes(&self) -> BTreeSet<String> {
        self.views().into_keys().map(str::to_string).collect()
    }
}

/// The steps that bring sandbox `name` from `actual` to `desired` (`None`: it should not exist).
pub fn plan(name: &str, desired: Option<&DesiredSandbox>, actual: &View) -> Vec<Step> {
    let mut steps = Vec::new();
    let mut removals = Vec::new();
    let network = network_name(name);

    if let Some(d) = desired {
        let active = d.mode == Mode::Active;
        // Networks first, on each VM that runs something of the sandbox.
        for role in [Role::Micro, Role::Gateway] {
            if role == Role::Micro && d.services.is_empty() {
                continue;
            }
            if !actual.of(role).networks.contains(&network.as_str()) {
                steps.push(Step {
                    role,
                    resource: format!("network {network}"),
                    action: Action::EnsureNetwork { sandbox: name.into() },
                    reason: Reason::Missing,
                });
            }
        }
        for deploy in d.services.values() {
            container_steps(Role::Micro, deploy, active, actual, &mut steps);
        }
        let gateway_deployed = container_steps(Role::Gateway, &d.gateway, active, actual, &mut steps);
        if active {
            route_steps(d, gateway_deployed, &actual.gateway, &mut steps);
        }
    }

    // Removals: managed containers, worktrees and networks of this sandbox that are not desired.
    let wanted = |role: Role, service: &str| -> bool {
        desired.is_some_and(|d| match role {
            Role::Micro => d.services.contains_key(service),
            Role::Gateway => service == GATEWAY,
        })
    };
    for role in [Role::Micro, Role::Gateway] {
        let state = actual.of(role);
        for c in state.containers.iter().copied() {
            if !is_managed(c) || c.labels.get(labels::SANDBOX) != Some(name) {
                continue;
            }
            let service = c.labels.get(labels::SERVICE).unwrap_or("");
            if !wanted(role, service) || !is_container_name(&c.name, name, service) {
                removals.push(Step {
                    role,
                    resource: c.name.clone(),
                    action: Action::RemoveContainer {
                        container: c.name.clone(),
                    },
                    reason: Reason::NotDesired,
                });
            }
        }
        for w in state.worktrees.iter().copied() {
            if *w.sandbox == *name && !wanted(role, &w.service) {
                removals.push(Step {
                    role,
                    resource: format!("worktree {}/{}", w.sandbox, w.service),
                    action: Action::RemoveWorktree {
                        sandbox: w.sandbox.to_string(),
                        service: w.service.to_string(),
                    },
                    reason: Reason::NotDesired,
                });
            }
        }
        let network_wanted = desired.is_some_and(|d| role == Role::Gateway || !d.services.is_empty());
        if !network_wanted && state.networks.contains(&network.as_str()) {
            removals.push(Step {
                role,
                resource: format!("network {network}"),
                action: Action::RemoveNetwork { sandbox: name.into() },
                reason: Reason::NotDesired,
            });
        }
    }
    // Containers before worktrees before networks: a network in use cannot be removed.
    removals.sort_by_key(|s| match s.action {
        Action::RemoveContainer { .. } => 0,
        Action::RemoveWorktree { .. } => 1,
        _ => 2,
    });
    steps.extend(removals);
    steps
}

/// The plan cut into runs of steps that may go side by side, in the plan's order: a run of consecutive deploys
/// is one (each is its own container; the networks they join come before them and the routes, which need the
/// gateway, after them), every other step runs alone.
pub fn side_by_side(steps: &[Step]) -> Vec<&[Step]> {
    let is_deploy = |s: &Step| matches!(s.action, Action::DeployService(_) | Action::DeployGateway(_));
    let mut runs = Vec::new();
    let mut rest = steps;
    while let Some(first) = rest.first() {
        let len = if is_deploy(first) {
            rest.iter().take_while(|s| is_deploy(s)).count()
        } else {
            1
        };
        let (run, after) = rest.split_at(len);
        runs.push(run);
        rest = after;
    }
    runs
}

/// `name == container_name(sandbox, service)`, without building the name: this runs for every container.
fn is_container_name(name: &str, sandbox: &str, service: &str) -> bool {
    name.strip_prefix("sandbox-")
        .and_then(|rest| rest.strip_prefix(sandbox))
        .and_then(|rest| rest.strip_prefix('-'))
        == Some(service)
}

fn is_managed(c: &Container) -> bool {
    c.labels.get(labels::MANAGED) == Some("true")
}

/// Steps for one desired container; says whether it plans a deploy.
fn container_steps(role: Role, want: &DesiredContainer, active: bool, actual: &View, steps: &mut Vec<Step>) -> bool {
    let state = actual.of(role);
    let current = state
        .containers
        .iter()
        .copied()
        .find(|c| c.name == want.container && is_managed(c));
    if !active {
        if let Some(c) = current
            && matches!(c.state, ContainerState::Running | ContainerState::Restarting)
        {
            steps.push(Step {
                role,
                resource: c.name.clone(),
                action: Action::Stop {
                    container: c.name.clone(),
                },
                reason: Reason::Suspended,
            });
        }
        return false;
    }
    let head = state.head(&want.service, &want.branch);
    // A pin is the commit wanted whatever the branch's head; else the head, once an agent has reported it.
    let wanted = want.commit.as_deref().or(head);
    let reason = match current {
        None => Some(Reason::Missing),
        Some(c) if !want.has_spec(c.labels.get(labels::SPEC_HASH)) => Some(Reason::SpecChanged),
        Some(c) if wanted.is_some() && c.labels.get(labels::COMMIT) != wanted => {
            let commit = wanted.unwrap_or_default().to_string();
            Some(match want.commit {
                Some(_) => Reason::Pinned { commit },
                None => Reason::BranchMoved { commit },
            })
        }
        Some(c) if c.state != ContainerState::Running => Some(Reason::ContainerNotRunning {
            state: format!("{:?}", c.state).to_lowercase(),
        }),
        Some(_) => None,
    };
    let Some(reason) = reason else { return false };
    let deploy = Box::new(want.deploy(wanted.map(str::to_string)));
    let action = match role {
        Role::Micro => Action::DeployService(deploy),
        Role::Gateway => Action::DeployGateway(deploy),
    };
    steps.push(Step {
        role,
        resource: want.container.clone(),
        action,
        reason,
    });
    true
}

/// The gateway's `<service>_url` map this sandbox should have: the branch's OCP values, with the sandbox's
/// routes on top.
pub fn expected_routes(d: &DesiredSandbox, defaults: Option<&Routes>) -> BTreeMap<String, String> {
    let mut map = defaults.map(Routes::to_map).unwrap_or_default();
    map.extend(d.routes.iter().map(|(k, v)| (k.clone(), v.clone())));
    map
}

fn route_steps(d: &DesiredSandbox, gateway_deployed: bool, gateway: &RoleView, steps: &mut Vec<Step>) {
    let live = gateway.routes;
    let reason = if gateway_deployed {
        Some(Reason::GatewayRedeployed)
    } else {
        match live {
            None => Some(Reason::RoutesUnknown),
            Some(live) => {
                // The sandbox's own routes, then the OCP values of every other key: compared in place, since
                // this runs for every sandbox on every pass.
                let defaults = gateway.route_defaults.into_iter().flat_map(Routes::iter);
                let expected = d
                    .routes
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str()))
                    .chain(defaults.filter(|(k, _)| !d.routes.contains_key(*k)));
                let mut differ: Vec<String> = expected
                    .filter(|(k, v)| live.get(k) != Some(*v))
                    .map(|(k, _)| k.to_string())
                    .collect();
                differ.sort();
                (!differ.is_empty()).then_some(Reason::RoutesDiffer { services: differ })
            }
        }
    };
    if let Some(reason) = reason {
        steps.push(Step {
            role: Role::Gateway,
            resource: format!("routes of {}", d.name),
            action: Action::SetRoutes {
                sandbox: d.name.clone(),
                routes: d.routes.clone(),
            },
            reason,
        });
    }
}
