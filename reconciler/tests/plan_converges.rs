//! Property: whatever the agents report, applying the plan with a pure model of the actions reaches the desired
//! state in one go, and planning again gives nothing. Unmanaged containers survive every plan.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;

use proptest::prelude::*;
use sdp_manifest::{GatewaySpec, Kind, Metadata, Route, Sandbox, SandboxSpec, ServiceSpec};
use sdp_protocol::{BranchHead, Container, ContainerState, GATEWAY, Role, labels};
use sdp_reconciler::desired::{Clock, Desired, Settings, compile, compile_again};
use sdp_reconciler::plan::{Actual, plan};

const SANDBOXES: [&str; 4] = ["alpha", "beta", "gamma", "delta"];
const SERVICES: [&str; 3] = ["account", "payment", "user"];
const BRANCHES: [&str; 3] = ["main", "develop", "feature/x"];
/// Commits a service or gateway may be pinned to: not any branch's head, so only the pin can put them there.
const PINS: [&str; 2] = [
    "1111111111111111111111111111111111111111",
    "2222222222222222222222222222222222222222",
];

fn sandbox_strategy() -> impl Strategy<Value = Option<Sandbox>> {
    let pin = proptest::option::of(0..2usize);
    let service = (0..3usize, 0..3usize, pin.clone()).prop_map(|(branch, level, pin)| ServiceSpec {
        branch: BRANCHES[branch].into(),
        commit: pin.map(|p| PINS[p].to_string()),
        environments: vec![],
        env: [("LOG_LEVEL".to_string(), ["debug", "info", "warn"][level].to_string())].into(),
        port: None,
        resources: None,
        health_path: None,
        build: None,
    });
    let services = proptest::collection::btree_map(0..3usize, service, 0..=3);
    let routes = proptest::collection::btree_map(0..3usize, 0..3usize, 0..=3);
    proptest::option::weighted(
        0.8,
        (
            (0..3usize, pin),
            services,
            routes,
            any::<bool>(),
            proptest::option::of("[a-z0-9]{1,4}"),
        ),
    )
    .prop_map(|o| o.map(|(gw, services, routes, suspend, restart)| build(gw, services, routes, suspend, restart)))
}

fn build(
    (gw, gw_pin): (usize, Option<usize>),
    services: BTreeMap<usize, ServiceSpec>,
    routes: BTreeMap<usize, usize>,
    suspend: bool,
    restart: Option<String>,
) -> Sandbox {
    let services: BTreeMap<String, ServiceSpec> = services
        .into_iter()
        .map(|(i, s)| (SERVICES[i].to_string(), s))
        .collect();
    let routes = routes
        .into_iter()
        .map(|(i, r)| {
            let svc = SERVICES[i].to_string();
            let route = match r {
                0 if services.contains_key(&svc) => Route::Sandbox,
                2 => Route::Url(format!("http://10.0.0.{i}:80")),
                _ => Route::Ocp,
            };
            (svc, route)
        })
        .collect();
    Sandbox {
        api_version: "sdp/v1".into(),
        kind: Kind::Sandbox,
        metadata: Metadata {
            name: String::new(),
            owner: None,
            annotations: restart
                .map(|r| ("sdp/restartedAt".to_string(), r))
                .into_iter()
                .collect(),
        },
        spec: SandboxSpec {
            gateway: GatewaySpec {
                branch: BRANCHES[gw].into(),
                commit: gw_pin.map(|p| PINS[p].to_string()),
                port: None,
                environments: Vec::new(),
                env: Default::default(),
            },
            services,
            routes,
            suspend,
            expire_after: None,
        },
    }
}

fn config_strategy() -> impl Strategy<Value = Vec<Sandbox>> {
    proptest::collection::vec(sandbox_strategy(), 4).prop_map(|all| {
        all.into_iter()
            .zip(SANDBOXES)
            .filter_map(|(sb, name)| {
                sb.map(|mut sb| {
                    sb.metadata.name = name.into();
                    sb
                })
            })
            .collect()
    })
}

/// Something that happens on a VM behind SDP's back.
#[derive(Clone, Debug)]
enum Drift {
    RemoveContainer(usize),
    SetState(usize, u8),
    ChangeHash(usize),
    RemoveNetwork(usize),
    EditRoute(usize, usize),
    MoveHead(usize, usize),
    StrayManaged(usize, usize),
    Unmanaged(usize),
}

fn drift_strategy() -> impl Strategy<Value = Vec<(bool, Drift)>> {
    let one = prop_oneof![
        any::<usize>().prop_map(Drift::RemoveContainer),
        (any::<usize>(), 0..5u8).prop_map(|(i, s)| Drift::SetState(i, s)),
        any::<usize>().prop_map(Drift::ChangeHash),
        any::<usize>().prop_map(Drift::RemoveNetwork),
        (any::<usize>(), 0..3usize).prop_map(|(i, s)| Drift::EditRoute(i, s)),
        (0..3usize, 0..3usize).prop_map(|(s, b)| Drift::MoveHead(s, b)),
        (0..4usize, 0..4usize).prop_map(|(sb, svc)| Drift::StrayManaged(sb, svc)),
        (0..4usize).prop_map(Drift::Unmanaged),
    ];
    proptest::collection::vec((any::<bool>(), one), 0..8)
}

fn container(name: String, sandbox: &str, service: &str, managed: bool) -> Container {
    let mut labels: BTreeMap<String, String> = [
        (labels::SANDBOX.to_string(), sandbox.to_string()),
        (labels::SERVICE.to_string(), service.to_string()),
        (labels::SPEC_HASH.to_string(), "stale".to_string()),
    ]
    .into();
    if managed {
        labels.insert(labels::MANAGED.into(), "true".into());
    }
    Container {
        name,
        id: "x".into(),
        labels: labels.into(),
        state: ContainerState::Running,
        ports: vec![],
        restart_count: 0,
        exit_code: None,
        probe: None,
    }
}

fn drift(actual: &mut Actual, changes: &[(bool, Drift)]) {
    for (gateway, change) in changes {
        let state = actual.of_mut(if *gateway { Role::Gateway } else { Role::Micro });
        let n = state.containers.len().max(1);
        match change {
            Drift::RemoveContainer(i) if !state.containers.is_empty() => {
                state.containers.remove(i % n);
            }
            Drift::SetState(i, s) if !state.containers.is_empty() => {
                std::sync::Arc::make_mut(&mut state.containers[i % n]).state = [
                    ContainerState::Exited,
                    ContainerState::Dead,
                    ContainerState::Created,
                    ContainerState::Restarting,
                    ContainerState::Unknown,
                ][*s as usize];
            }
            Drift::ChangeHash(i) if !state.containers.is_empty() => {
                std::sync::Arc::make_mut(&mut state.containers[i % n])
                    .labels
                    .insert(labels::SPEC_HASH, "edited");
            }
            Drift::RemoveNetwork(i) if !state.networks.is_empty() => {
                let n = state.networks.len();
                state.networks.remove(i % n);
            }
            Drift::EditRoute(i, svc) if !state.routes.is_empty() => {
                let key = state.routes.keys().nth(i % state.routes.len()).cloned().unwrap();
                state
                    .routes
                    .get_mut(&key)
                    .unwrap()
                    .insert(SERVICES[*svc], "http://by-hand:1");
            }
            Drift::MoveHead(svc, branch) => {
                let repo = if *gateway { GATEWAY } else { SERVICES[*svc] };
                state
                    .heads
                    .retain(|h| !(h.repo == repo && h.branch == BRANCHES[*branch]));
                state.heads.push(BranchHead {
                    repo: repo.into(),
                    branch: BRANCHES[*branch].into(),
                    commit: format!("moved-{svc}-{branch}"),
                });
            }
            Drift::StrayManaged(sb, svc) => {
                let service = ["account", "payment", "user", "old"][*svc];
                let name = format!("sandbox-{}-{service}-stray", SANDBOXES[*sb]);
                state
                    .containers
                    .push(container(name, SANDBOXES[*sb], service, true).into());
            }
            Drift::Unmanaged(sb) => {
                let name = format!("hand-made-{sb}-{}", state.containers.len());
                state
                    .containers
                    .push(container(name, SANDBOXES[*sb], "account", false).into());
            }
            _ => {}
        }
    }
}

fn desired(sandboxes: &[Sandbox]) -> Desired {
    compile(sandboxes, &[], &Arc::default(), &Settings::default(), &Clock::default())
}

fn plan_all(desired: &Desired, actual: &Actual) -> Vec<sdp_reconciler::plan::Step> {
    let mut names: Vec<String> = desired.sandboxes.keys().cloned().collect();
    names.extend(actual.sandboxes());
    names.sort();
    names.dedup();
    names
        .iter()
        .flat_map(|n| plan(n, desired.sandbox(n), &actual.view(n)))
        .collect()
}

fn unmanaged(actual: &Actual) -> Vec<String> {
    let mut out: Vec<String> = [&actual.micro, &actual.gateway]
        .iter()
        .flat_map(|s| s.containers.iter())
        .filter(|c| !c.labels.contains_key(labels::MANAGED))
        .map(|c| c.name.clone())
        .collect();
    out.sort();
    out
}

/// What differs between the VMs and the desired state, judged without the planner: running containers with the
/// desired spec hash and their pin or else the branch's head, stopped ones when suspended, networks, the gateway's routes, and
/// nothing managed that is not desired.
fn violations(desired: &Desired, actual: &Actual) -> Vec<String> {
    let mut out = Vec::new();
    let mut expected = std::collections::BTreeSet::new();
    for d in desired.sandboxes.values() {
        let active = d.mode == sdp_reconciler::desired::Mode::Active;
        let deploys = d
            .services
            .values()
            .map(|s| (&actual.micro, s))
            .chain([(&actual.gateway, &d.gateway)]);
        for (state, deploy) in deploys {
            expected.insert(deploy.container.clone());
            let found = state.containers.iter().find(|c| c.name == deploy.container);
            let head = state
                .heads
                .iter()
                .find(|h| h.repo == deploy.service && h.branch == deploy.branch);
            match found {
                None if active => out.push(format!("{} missing", deploy.container)),
                None => {}
                Some(c) if !active && c.state == ContainerState::Running => {
                    out.push(format!("{} runs in a suspended sandbox", c.name))
                }
                Some(_) if !active => {}
                Some(c) => {
                    if c.state != ContainerState::Running {
                        out.push(format!("{} is {:?}", c.name, c.state));
                    }
                    if c.labels.get(labels::SPEC_HASH) != Some(deploy.spec_hash_label().as_str()) {
                        out.push(format!("{} has an old spec", c.name));
                    }
                    match &deploy.commit {
                        Some(pin) if c.labels.get(labels::COMMIT) != Some(pin.as_str()) => {
                            out.push(format!("{} is not at its pin {pin}", c.name))
                        }
                        Some(_) => {}
                        None if head.is_some_and(|h| c.labels.get(labels::COMMIT) != Some(h.commit.as_str())) => {
                            out.push(format!("{} is not at its branch head", c.name))
                        }
                        None => {}
                    }
                }
            }
        }
        let network = sdp_protocol::network_name(&d.name);
        if !actual.gateway.networks.contains(&network)
            || (!d.services.is_empty() && !actual.micro.networks.contains(&network))
        {
            out.push(format!("{network} missing"));
        }
        if active {
            let want = sdp_reconciler::plan::expected_routes(d, actual.gateway.route_defaults.get(&d.name));
            let live = actual.gateway.routes.get(&d.name).cloned().unwrap_or_default();
            if want.iter().any(|(k, v)| live.get(k) != Some(v)) {
                out.push(format!("routes of {} are {live:?}, not {want:?}", d.name));
            }
        }
    }
    for state in [&actual.micro, &actual.gateway] {
        for c in &state.containers {
            if c.labels.contains_key(labels::MANAGED) && !expected.contains(&c.name) {
                out.push(format!("{} is managed but not desired", c.name));
            }
        }
        for n in &state.networks {
            let sandbox = n.trim_start_matches("sandbox-");
            if !desired.sandboxes.contains_key(sandbox) {
                out.push(format!("network {n} is not desired"));
            }
        }
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn one_plan_converges_and_the_next_is_empty(
        before in config_strategy(),
        other in config_strategy(),
        unchanged in any::<bool>(),
        changes in drift_strategy(),
    ) {
        // Half the cases keep the repo as it was, so that only drift is healed.
        let after = if unchanged { before.clone() } else { other };
        // The VMs as SDP left them for `before`, then drifted.
        let mut actual = Actual::default();
        for step in plan_all(&desired(&before), &actual) {
            common::apply(&step, &mut actual);
        }
        prop_assert!(plan_all(&desired(&before), &actual).is_empty());
        let converged_indexed = actual.clone().indexed();
        prop_assert_eq!(converged_indexed.views(), actual.views());
        drift(&mut actual, &changes);
        let hand_made = unmanaged(&actual);
        // The hub indexes each report after the one before, sharing that one's index when every sandbox's objects
        // are where they were: read through it, the drifted reports are cut as a walk cuts them.
        let after_drift = actual.clone().indexed_after(&converged_indexed);
        prop_assert_eq!(after_drift.views(), actual.views());
        // A pass reads one sandbox's view; it is that sandbox's part of the whole cut, whatever drifted.
        let cut = actual.views();
        for (name, view) in &cut {
            prop_assert_eq!(&actual.view(name), view);
        }
        // The hub's reports are indexed: read through the index, they are cut the same.
        let indexed = actual.clone().indexed();
        prop_assert_eq!(&indexed.views(), &cut);
        for name in cut.keys().copied().chain(["not-there"]) {
            prop_assert_eq!(indexed.view(name), actual.view(name));
            // Every reported head is found the same through the index as by a walk.
            for role in [sdp_protocol::Role::Micro, sdp_protocol::Role::Gateway] {
                let (fast, slow) = (indexed.view(name), actual.view(name));
                prop_assert!(fast.of(role).heads_by.is_some() && slow.of(role).heads_by.is_none());
                for h in &actual.of(role).heads {
                    prop_assert_eq!(fast.of(role).head(&h.repo, &h.branch), slow.of(role).head(&h.repo, &h.branch));
                }
            }
        }

        // Now the repo says `after`.
        let target = desired(&after);
        for step in plan_all(&target, &actual) {
            common::apply(&step, &mut actual);
        }
        let again = plan_all(&target, &actual);
        prop_assert!(again.is_empty(), "still planned after one pass: {:#?}", again);
        let wrong = violations(&target, &actual);
        prop_assert!(wrong.is_empty(), "the plan left the VMs wrong: {:#?}", wrong);
        prop_assert_eq!(unmanaged(&actual), hand_made);
    }
}

/// `config` with a gateway port set where `ports` says (8080-8082 of the 8080-8099 range, so that two sandboxes
/// may want one port and one of them is held).
fn with_ports(mut config: Vec<Sandbox>, ports: &[Option<u16>]) -> Vec<Sandbox> {
    for (sb, port) in config.iter_mut().zip(ports) {
        sb.spec.gateway.port = port.map(u32::from);
    }
    config
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// The controller compiles from its last answer; that must give exactly what a fresh compile gives, whatever
    /// changed in between: sandboxes added, removed or edited (as the same `Arc` or an equal copy), explicit
    /// ports taken from one another, allocations lost, the micro agent's address, the clock.
    #[test]
    fn compiling_from_the_last_answer_gives_what_a_fresh_compile_gives(
        before in config_strategy(),
        other in config_strategy(),
        keep in proptest::collection::vec(0..4u8, 4),
        ports_before in proptest::collection::vec(proptest::option::of(8080u16..8083), 4),
        ports_after in proptest::collection::vec(proptest::option::of(8080u16..8083), 4),
        address in 0..2usize,
        expire in proptest::option::of(0..3usize),
        lost in any::<bool>(),
    ) {
        // An expiry on alpha, before and after, so that only the clock moves it into suspension or removal.
        let expiring = |mut config: Vec<Sandbox>| {
            for sb in config.iter_mut().filter(|s| s.metadata.name == "alpha") {
                sb.spec.expire_after = expire.map(|e| ["1h", "2h", "3d"][e].to_string());
            }
            config
        };
        let before: Vec<Arc<Sandbox>> =
            expiring(with_ports(before, &ports_before)).into_iter().map(Arc::new).collect();
        let other = expiring(with_ports(other, &ports_after));
        // Each sandbox of the second config: the same Arc as before (0), an equal copy (1), the same sandbox edited
        // without asking for other ports (3: other branches, suspended or woken), or the other config's.
        let mut after: Vec<Arc<Sandbox>> = Vec::new();
        for (i, name) in SANDBOXES.into_iter().enumerate() {
            let old = before.iter().find(|s| s.metadata.name == name);
            let new = other.iter().find(|s| s.metadata.name == name);
            let sb = match (keep[i], old, new) {
                (0, Some(old), _) => Some(old.clone()),
                (1, Some(old), _) => Some(Arc::new((**old).clone())),
                (3, Some(old), _) => {
                    let mut edited = (**old).clone();
                    edited.spec.gateway.branch.push_str("-edited");
                    for service in edited.spec.services.values_mut().step_by(2) {
                        service.branch.push_str("-edited");
                    }
                    edited.spec.suspend ^= i % 2 == 0;
                    Some(Arc::new(edited))
                }
                (_, _, Some(new)) => Some(Arc::new(new.clone())),
                _ => None,
            };
            after.extend(sb);
        }
        let settings = Settings::default();
        let later = Settings {
            micro_address: ["127.0.0.1", "10.1.2.3"][address].into(),
            ..Settings::default()
        };
        let clock = Clock {
            now: 10_000,
            last_activity: [("alpha".to_string(), 0)].into(),
        };
        let last = compile_again(&Desired::default(), &before, &[], &Arc::default(), &settings, &Clock::default());
        // The allocations as stored: the last answer's, or none when storing them failed (ports may then move).
        let stored = if lost { Arc::default() } else { last.allocations.clone() };
        let again = compile_again(&last, &after, &[], &stored, &later, &clock);
        let fresh = compile(&after, &[], &stored, &later, &clock);
        prop_assert_eq!(&again.sandboxes, &fresh.sandboxes);
        prop_assert_eq!(&again.held, &fresh.held);
        prop_assert_eq!(&again.expired, &fresh.expired);
        prop_assert_eq!(&again.allocations, &fresh.allocations);
        // Compiled again with nothing changed (the clock's recompile at every resync): the same answer, every
        // sandbox the same value.
        let steady = compile_again(&again, &after, &[], &again.allocations, &later, &clock);
        prop_assert_eq!(&steady.sandboxes, &fresh.sandboxes);
        prop_assert_eq!(&steady.held, &fresh.held);
        prop_assert_eq!(&steady.expired, &fresh.expired);
        prop_assert_eq!(&steady.allocations, &fresh.allocations);
        for (name, d) in steady.sandboxes.iter() {
            prop_assert!(Arc::ptr_eq(d, &again.sandboxes[name]), "{name} was compiled again");
        }
        // What did not change is the same value, not compiled again.
        for (name, d) in again.sandboxes.iter() {
            let same_manifest = after
                .iter()
                .find(|s| &s.metadata.name == name)
                .is_some_and(|a| before.iter().any(|b| Arc::ptr_eq(a, b)));
            if same_manifest && address == 0 && last.sandboxes.get(name) == Some(d) && !name.starts_with("alpha") {
                prop_assert!(Arc::ptr_eq(d, &last.sandboxes[name]), "{name} was compiled again");
            }
        }
    }
}
