//! compile and plan as pure functions, over the examples and over hand-made drift.

mod common;

use std::path::Path;
use std::sync::Arc;

use sdp_manifest::{ConfigSet, Environment, InputFile, Kind, Sandbox};
use sdp_protocol::{Action, BranchHead, Container, ContainerState, GATEWAY, Role, labels};
use sdp_reconciler::desired::{Allocations, Clock, Desired, Mode, RESTART_SERVICE_PREFIX, Seen, Settings, compile};
use sdp_reconciler::plan::{Actual, Reason, Step, plan, side_by_side};

fn examples() -> (Vec<Sandbox>, Vec<Environment>) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let set = ConfigSet::load_repo(&root).unwrap();
    assert!(set.is_valid(), "{:?}", set.problems);
    values(set)
}

fn values(set: ConfigSet) -> (Vec<Sandbox>, Vec<Environment>) {
    (
        set.sandboxes.into_iter().map(|o| o.value).collect(),
        set.environments.into_iter().map(|o| o.value).collect(),
    )
}

/// Sandboxes from YAML text, with the examples' environments.
fn sandboxes(yaml: &str) -> (Vec<Sandbox>, Vec<Environment>) {
    let (_, envs) = examples();
    let set = ConfigSet::from_inputs(
        vec![InputFile {
            label: "sandboxes/test.yaml".into(),
            folder: Some(Kind::Sandbox),
            text: yaml.to_string(),
        }],
        false,
    );
    assert!(set.is_valid(), "{:?}", set.problems);
    (values(set).0, envs)
}

fn settings() -> Settings {
    Settings {
        micro_address: "172.18.136.92".into(),
        ..Settings::default()
    }
}

fn compile_now(sb: &[Sandbox], envs: &[Environment], previous: &Arc<Allocations>) -> Desired {
    compile(sb, envs, previous, &settings(), &Clock::default())
}

/// Applies plans with the model until nothing is left; fails if that takes more than a few rounds.
fn converge(desired: &Desired, actual: &mut Actual) -> usize {
    let names: Vec<String> = desired.sandboxes.keys().cloned().chain(actual.sandboxes()).collect();
    let mut total = 0;
    for _ in 0..3 {
        let mut steps = 0;
        for name in &names {
            for step in plan(name, desired.sandbox(name), &actual.view(name)) {
                common::apply(&step, actual);
                steps += 1;
            }
        }
        if steps == 0 {
            return total;
        }
        total += steps;
    }
    panic!("no convergence after 3 rounds");
}

fn sandbox_yaml(name: &str, services: &[(&str, &str)]) -> String {
    let mut s = format!(
        "apiVersion: sdp/v1\nkind: Sandbox\nmetadata:\n  name: {name}\nspec:\n  gateway:\n    branch: develop\n"
    );
    if !services.is_empty() {
        s.push_str("  services:\n");
        for (svc, branch) in services {
            s.push_str(&format!("    {svc}:\n      branch: {branch}\n"));
        }
        s.push_str("  routes:\n");
        for (svc, _) in services {
            s.push_str(&format!("    {svc}: sandbox\n"));
        }
    }
    s
}

fn kinds(steps: &[Step]) -> Vec<String> {
    steps
        .iter()
        .map(|s| {
            let json = serde_json::to_value(&s.action).unwrap();
            format!("{}:{}", s.role, json["kind"].as_str().unwrap())
        })
        .collect()
}

#[test]
fn the_example_compiles_to_the_deploys_and_routes_it_describes() {
    let (sb, envs) = examples();
    let desired = compile_now(&sb, &envs, &Arc::default());
    assert!(desired.held.is_empty(), "{:?}", desired.held);
    let d = &desired.sandboxes["qa-login-error"];
    assert_eq!(d.mode, Mode::Active);
    assert_eq!(d.gateway.host_port, 8081);
    assert_eq!(d.gateway.container, "sandbox-qa-login-error-gateway");
    let account = &d.services["account"];
    assert_eq!(account.container, "sandbox-qa-login-error-account");
    assert_eq!(account.host_port, 9001);
    assert_eq!(account.branch, "feature/login-error");
    // shared-dev, then account-dev, then inline env.
    assert_eq!(account.env.env["APP_ENV"], "sandbox");
    assert_eq!(account.env.env["DB_HOST"], "172.18.136.93");
    assert_eq!(account.env.env["LOG_LEVEL"], "debug");
    assert!(!account.env.env.contains_key("DB_PASSWORD"));
    assert_eq!(
        account.env.secret_files["DB_PASSWORD"],
        "/etc/sdp/secrets/account-db-password"
    );
    assert_eq!(account.cpus, Some(0.5));
    assert_eq!(account.memory_bytes, Some(512 << 20));
    let deploy = account.deploy(None);
    assert_eq!(deploy.labels[labels::MANAGED], "true");
    assert_eq!(deploy.labels[labels::SANDBOX], "qa-login-error");
    assert_eq!(deploy.labels[labels::SERVICE], "account");
    assert_eq!(deploy.labels[labels::SPEC_HASH], format!("{:016x}", account.spec_hash));
    // account goes to the sandbox's container, user to its URL; payment is OCP, i.e. no override.
    let routes: Vec<(&str, &str)> = d.routes.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    assert_eq!(
        routes,
        [
            ("account", "http://172.18.136.92:9001"),
            ("user", "http://172.18.136.92:9105")
        ]
    );
    assert_eq!(desired.allocations.ports.len(), 2);
}

#[test]
fn a_fresh_sandbox_is_planned_in_order_and_a_converged_one_plans_nothing() {
    let (sb, envs) = examples();
    let desired = compile_now(&sb, &envs, &Arc::default());
    let mut actual = Actual::default();
    let steps = plan(
        "qa-login-error",
        desired.sandbox("qa-login-error"),
        &actual.view("qa-login-error"),
    );
    assert_eq!(
        kinds(&steps),
        [
            "micro:ensureNetwork",
            "gateway:ensureNetwork",
            "micro:deployService",
            "gateway:deployGateway",
            "gateway:setRoutes"
        ]
    );
    assert!(steps.iter().take(4).all(|s| s.reason == Reason::Missing));
    assert_eq!(steps[4].reason, Reason::GatewayRedeployed);
    for s in &steps {
        common::apply(s, &mut actual);
    }
    assert_eq!(
        plan(
            "qa-login-error",
            desired.sandbox("qa-login-error"),
            &actual.view("qa-login-error")
        ),
        []
    );
    // And compiling again from the stored allocations changes nothing.
    let again = compile_now(&sb, &envs, &desired.allocations);
    assert_eq!(again.sandboxes, desired.sandboxes);
}

#[test]
fn the_deploys_of_a_fresh_sandbox_go_side_by_side_between_its_networks_and_its_routes() {
    let (sb, envs) = sandboxes(&sandbox_yaml(
        "three",
        &[("account", "main"), ("payment", "main"), ("user", "main")],
    ));
    let desired = compile_now(&sb, &envs, &Arc::default());
    let mut actual = Actual::default();
    let steps = plan("three", desired.sandbox("three"), &actual.view("three"));
    let runs: Vec<Vec<String>> = side_by_side(&steps).into_iter().map(kinds).collect();
    assert_eq!(
        runs,
        [
            vec!["micro:ensureNetwork"],
            vec!["gateway:ensureNetwork"],
            vec![
                "micro:deployService",
                "micro:deployService",
                "micro:deployService",
                "gateway:deployGateway"
            ],
            vec!["gateway:setRoutes"],
        ]
    );
    // Converged, then one container removed by hand and the routes changed: the redeploy runs alone, before
    // the routes.
    converge(&desired, &mut actual);
    actual
        .of_mut(Role::Micro)
        .containers
        .retain(|c| c.name != "sandbox-three-payment");
    actual
        .of_mut(Role::Gateway)
        .routes
        .get_mut("three")
        .unwrap()
        .insert("account", "elsewhere");
    let steps = plan("three", desired.sandbox("three"), &actual.view("three"));
    let runs: Vec<Vec<String>> = side_by_side(&steps).into_iter().map(kinds).collect();
    assert_eq!(runs, [vec!["micro:deployService"], vec!["gateway:setRoutes"]]);
    // Removals never go side by side: a network goes after the containers on it.
    let steps = plan("three", None, &actual.view("three"));
    assert!(side_by_side(&steps).iter().all(|run| run.len() == 1), "{steps:#?}");
}

fn converged_example() -> (Desired, Actual) {
    let (sb, envs) = examples();
    let desired = compile_now(&sb, &envs, &Arc::default());
    let mut actual = Actual::default();
    converge(&desired, &mut actual);
    (desired, actual)
}

fn only_step(desired: &Desired, actual: &Actual) -> Step {
    let steps = plan(
        "qa-login-error",
        desired.sandbox("qa-login-error"),
        &actual.view("qa-login-error"),
    );
    assert_eq!(steps.len(), 1, "{steps:#?}");
    steps.into_iter().next().unwrap()
}

#[test]
fn drift_is_planned_with_its_reason() {
    let (desired, actual) = converged_example();

    let mut exited = actual.clone();
    Arc::make_mut(&mut exited.of_mut(Role::Micro).containers[0]).state = ContainerState::Exited;
    let step = only_step(&desired, &exited);
    assert_eq!(step.reason, Reason::ContainerNotRunning { state: "exited".into() });
    assert!(matches!(step.action, Action::DeployService(_)));

    let mut removed = actual.clone();
    removed.of_mut(Role::Micro).containers.clear();
    assert_eq!(only_step(&desired, &removed).reason, Reason::Missing);

    let mut moved = actual.clone();
    moved.of_mut(Role::Micro).heads.push(BranchHead {
        repo: "account".into(),
        branch: "feature/login-error".into(),
        commit: "c0ffee1234567890".into(),
    });
    let step = only_step(&desired, &moved);
    assert_eq!(step.reason.to_string(), "branch moved to commit c0ffee123456");
    let Action::DeployService(d) = &step.action else {
        panic!("{step:?}")
    };
    assert_eq!(
        d.commit.as_deref(),
        Some("c0ffee1234567890"),
        "the deploy pins the new head"
    );

    let mut edited = actual.clone();
    edited
        .of_mut(Role::Gateway)
        .routes
        .get_mut("qa-login-error")
        .unwrap()
        .insert("account", "http://someone-else:1");
    let step = only_step(&desired, &edited);
    assert_eq!(
        step.reason,
        Reason::RoutesDiffer {
            services: vec!["account".into()]
        }
    );
    assert_eq!(step.role, Role::Gateway);
}

#[test]
fn a_changed_spec_replaces_only_the_changed_container() {
    let (desired, actual) = converged_example();
    let (sb, envs) = examples();
    let mut sb = sb;
    sb[0]
        .spec
        .services
        .get_mut("account")
        .unwrap()
        .env
        .insert("LOG_LEVEL".into(), "info".into());
    let changed = compile_now(&sb, &envs, &desired.allocations);
    let step = only_step(&changed, &actual);
    assert_eq!(step.reason, Reason::SpecChanged);
    assert_eq!(step.resource, "sandbox-qa-login-error-account");

    // A restart stamp for one service changes that service's hash only.
    let (mut sb, _) = examples();
    sb[0].metadata.annotations.insert(
        format!("{RESTART_SERVICE_PREFIX}account"),
        "2026-11-25T10:00:00Z".into(),
    );
    let restarted = compile_now(&sb, &envs, &desired.allocations);
    let step = only_step(&restarted, &actual);
    assert_eq!(
        (step.resource.as_str(), step.reason),
        ("sandbox-qa-login-error-account", Reason::SpecChanged)
    );
}

#[test]
fn a_deleted_sandbox_is_removed_containers_first_and_unmanaged_containers_are_left_alone() {
    let (_, mut actual) = converged_example();
    // A container someone made by hand with a sandbox label but no sdp.managed: never SDP's to remove.
    actual.of_mut(Role::Micro).containers.push(
        Container {
            name: "sandbox-qa-login-error-debug".into(),
            id: "hand-made".into(),
            labels: [(labels::SANDBOX.to_string(), "qa-login-error".to_string())].into(),
            state: ContainerState::Running,
            ports: vec![],
            restart_count: 0,
            exit_code: None,
            probe: None,
        }
        .into(),
    );
    let steps = plan("qa-login-error", None, &actual.view("qa-login-error"));
    assert_eq!(
        kinds(&steps),
        [
            "micro:removeContainer",
            "gateway:removeContainer",
            "micro:removeWorktree",
            "gateway:removeWorktree",
            "micro:removeNetwork",
            "gateway:removeNetwork"
        ]
    );
    assert!(steps.iter().all(|s| s.reason == Reason::NotDesired));
    assert!(steps.iter().all(|s| s.resource != "sandbox-qa-login-error-debug"));
    let first_network = steps
        .iter()
        .position(|s| matches!(s.action, Action::RemoveNetwork { .. }))
        .unwrap();
    let last_container = steps
        .iter()
        .rposition(|s| matches!(s.action, Action::RemoveContainer { .. }))
        .unwrap();
    assert!(last_container < first_network, "{steps:#?}");
    for s in &steps {
        common::apply(s, &mut actual);
    }
    assert_eq!(plan("qa-login-error", None, &actual.view("qa-login-error")), []);
    assert_eq!(
        actual.micro.containers.len(),
        1,
        "the hand-made container is still there"
    );
}

#[test]
fn suspend_stops_containers_and_keeps_ports_and_expiry_suspends_then_removes() {
    let (desired, actual) = converged_example();
    let (mut sb, envs) = examples();
    sb[0].spec.suspend = true;
    let suspended = compile_now(&sb, &envs, &desired.allocations);
    let d = &suspended.sandboxes["qa-login-error"];
    assert_eq!(d.mode, Mode::Suspended("suspend: true".into()));
    assert_eq!(suspended.allocations, desired.allocations, "ports are kept");
    let steps = plan("qa-login-error", Some(d), &actual.view("qa-login-error"));
    assert_eq!(kinds(&steps), ["micro:stop", "gateway:stop"]);
    assert!(steps.iter().all(|s| s.reason == Reason::Suspended));
    let mut stopped = actual.clone();
    for s in &steps {
        common::apply(s, &mut stopped);
    }
    assert_eq!(plan("qa-login-error", Some(d), &stopped.view("qa-login-error")), []);
    // Resumed: the same containers come back on the same ports.
    let (sb, _) = examples();
    let resumed = compile_now(&sb, &envs, &suspended.allocations);
    let steps = plan(
        "qa-login-error",
        resumed.sandbox("qa-login-error"),
        &stopped.view("qa-login-error"),
    );
    assert_eq!(
        kinds(&steps),
        ["micro:deployService", "gateway:deployGateway", "gateway:setRoutes"]
    );

    // expireAfter: 14d. Idle 15 days: suspended; idle 14 + 7 (retention) days: gone, its ports released.
    let day = 86400;
    let clock = |idle_days: u64| Clock {
        now: 100 * day,
        last_activity: [("qa-login-error".to_string(), (100 - idle_days) * day)].into(),
    };
    let idle = compile(&sb, &envs, &desired.allocations, &settings(), &clock(15));
    assert!(matches!(&idle.sandboxes["qa-login-error"].mode, Mode::Suspended(r) if r.contains("idle for 15d")));
    let gone = compile(&sb, &envs, &desired.allocations, &settings(), &clock(21));
    assert!(gone.sandboxes.is_empty());
    assert_eq!(gone.expired, ["qa-login-error"]);
    assert!(gone.allocations.ports.is_empty());
}

#[test]
fn allocated_ports_stay_stable_and_are_released_on_delete() {
    let (a, envs) = sandboxes(&sandbox_yaml("alpha", &[("account", "main"), ("user", "main")]));
    let first = compile_now(&a, &envs, &Arc::default());
    let ports = |d: &Desired, sb: &str, svc: &str| d.allocations.ports[&(sb.to_string(), svc.to_string())];
    assert_eq!(ports(&first, "alpha", GATEWAY), 8080);
    assert_eq!(ports(&first, "alpha", "account"), 9001);
    assert_eq!(ports(&first, "alpha", "user"), 9002);

    // A second sandbox, read first in order, does not move alpha's ports.
    let (mut both, _) = sandboxes(&sandbox_yaml("aaa", &[("account", "x")]));
    both.extend(a.clone());
    let second = compile_now(&both, &envs, &first.allocations);
    assert_eq!(ports(&second, "alpha", "account"), 9001);
    assert_eq!(ports(&second, "aaa", "account"), 9003);
    assert_eq!(ports(&second, "aaa", GATEWAY), 8081);

    // alpha deleted: its ports leave, and are given to nobody while its containers may still publish them.
    let (aaa, _) = sandboxes(&sandbox_yaml("aaa", &[("account", "x")]));
    let third = compile_now(&aaa, &envs, &second.allocations);
    assert_eq!(third.allocations.ports.len(), 2);
    let leaving = |d: &Desired| -> Vec<(u16, String)> {
        d.allocations
            .leaving
            .iter()
            .map(|(p, who)| (*p, format!("{}/{}", who.sandbox, who.service)))
            .collect()
    };
    let alpha_leaving = vec![
        (8080, "alpha/gateway".to_string()),
        (9001, "alpha/account".to_string()),
        (9002, "alpha/user".to_string()),
    ];
    assert_eq!(leaving(&third), alpha_leaving);
    // A sandbox made meanwhile (alpha renamed to beta, say) gets other ports.
    let (mut next, _) = sandboxes(&sandbox_yaml("beta", &[("user", "x")]));
    next.extend(aaa.clone());
    let early = compile_now(&next, &envs, &third.allocations);
    assert_eq!(ports(&early, "beta", "user"), 9004);
    assert_eq!(ports(&early, "beta", GATEWAY), 8082);
    assert_eq!(leaving(&early), alpha_leaving);
    // They stay leaving while the VM that ran them still publishes them or still has a container of theirs
    // (stopped, it publishes nothing, and takes the port again when it starts), while nothing is known of it, and
    // until it reported after they started leaving.
    let seen = |at: u64, ports: &[u16], containers: &[(&str, &str)]| Seen {
        at,
        ports: ports.iter().copied().collect(),
        containers: containers.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect(),
    };
    let unknown_gateway = |role: Role| (role == Role::Micro).then(|| seen(1, &[], &[]));
    let partly = third
        .allocations
        .settled(unknown_gateway)
        .expect("the services' ports went");
    assert_eq!(partly.leaving.into_keys().collect::<Vec<_>>(), [8080]);
    let still = |role: Role| match role {
        Role::Micro => Some(seen(1, &[9001, 9003], &[("alpha", "user")])),
        Role::Gateway => Some(seen(1, &[8080, 8081], &[])),
    };
    assert_eq!(third.allocations.settled(still), None, "nothing was released");
    let before = |_| Some(seen(0, &[], &[]));
    assert_eq!(
        third.allocations.settled(before),
        None,
        "a report from before they left says nothing"
    );
    // The reconciler stamps the ports that started leaving with the moment it gave them up; the others keep theirs.
    let mut stamped = (*early.allocations).clone();
    stamped.stamp_leaving(&third.allocations, 5_000);
    assert!(
        stamped.leaving.values().all(|who| who.since == 0),
        "none new since third"
    );
    let mut stamped = (*third.allocations).clone();
    stamped.stamp_leaving(&second.allocations, 5_000);
    assert!(stamped.leaving.values().all(|who| who.since == 5_000));
    assert_eq!(
        stamped.settled(|_| Some(seen(5_000, &[], &[]))),
        None,
        "a report of that very moment"
    );
    assert!(stamped.settled(|_| Some(seen(5_001, &[], &[]))).is_some());
    // Once no container has them, they are free again and the next sandbox gets the lowest.
    let settled = third
        .allocations
        .settled(|_| Some(seen(1, &[], &[])))
        .expect("released");
    assert!(settled.leaving.is_empty());
    assert_eq!(settled.ports, third.allocations.ports);
    let fourth = compile_now(&next, &envs, &Arc::new(settled));
    assert_eq!(ports(&fourth, "beta", "user"), 9001);
    assert_eq!(ports(&fourth, "beta", GATEWAY), 8080);
    // A port that moves is given up too: the container that had it runs until it is replaced.
    let (moved, _) = sandboxes(
        &sandbox_yaml("aaa", &[("account", "x")]).replace("      branch: x\n", "      branch: x\n      port: 9050\n"),
    );
    let after_move = compile_now(&moved, &envs, &third.allocations);
    assert_eq!(ports(&after_move, "aaa", "account"), 9050);
    assert!(after_move.allocations.leaving.contains_key(&9003));
    // An explicit port may take a leaving one: it is asked for by name (its deploy waits until it is free).
    let (claims, _) = sandboxes(
        &sandbox_yaml("beta", &[("user", "x")]).replace("      branch: x\n", "      branch: x\n      port: 9002\n"),
    );
    let claimed = compile_now(&claims, &envs, &third.allocations);
    assert_eq!(ports(&claimed, "beta", "user"), 9002);
    assert!(!claimed.allocations.leaving.contains_key(&9002));

    // An explicit port already allocated to someone else holds the newcomer, and moves nobody.
    let mut claim = sandbox_yaml("gamma", &[("user", "x")]);
    claim = claim.replace("      branch: x\n", "      branch: x\n      port: 9001\n");
    let (mut with_claim, _) = sandboxes(&claim);
    with_claim.extend(next.clone());
    let fifth = compile_now(&with_claim, &envs, &fourth.allocations);
    assert!(
        fifth.held["gamma"].contains("port 9001 of user is in use by sandbox beta, user"),
        "{:?}",
        fifth.held
    );
    assert!(!fifth.sandboxes.contains_key("gamma"));
    assert_eq!(ports(&fifth, "beta", "user"), 9001);
    assert!(!fifth.allocations.ports.keys().any(|k| k.0 == "gamma"));
}

/// A sandbox whose gateway has `port` (the first `branch: develop` line is the gateway's).
fn gateway_at(name: &str, services: &[(&str, &str)], port: u16) -> String {
    sandbox_yaml(name, services).replacen(
        "    branch: develop\n",
        &format!("    branch: develop\n    port: {port}\n"),
        1,
    )
}

#[test]
fn a_port_another_sandbox_leaves_in_the_same_commit_goes_to_the_one_that_asks_for_it() {
    let envs = Vec::new();
    let ports = |d: &Desired, sb: &str| d.allocations.ports[&(sb.to_string(), GATEWAY.to_string())];
    // delta has the lowest gateway port, 8080.
    let (delta, _) = sandboxes(&sandbox_yaml("delta", &[]));
    let first = compile_now(&delta, &envs, &Arc::default());
    assert_eq!(ports(&first, "delta"), 8080);

    // One commit: alpha asks for 8080, delta moves to 8081, gamma is new. alpha comes before delta in name order,
    // but delta's move frees 8080 for it: nobody is held, and gamma gets a port nobody asked for.
    let mut config = Vec::new();
    for yaml in [
        gateway_at("alpha", &[], 8080),
        gateway_at("delta", &[], 8081),
        sandbox_yaml("gamma", &[]),
    ] {
        config.extend(sandboxes(&yaml).0);
    }
    let second = compile_now(&config, &envs, &first.allocations);
    assert!(second.held.is_empty(), "{:?}", second.held);
    assert_eq!(
        (
            ports(&second, "alpha"),
            ports(&second, "delta"),
            ports(&second, "gamma")
        ),
        (8080, 8081, 8082)
    );
    // And it stays so.
    let third = compile_now(&config, &envs, &second.allocations);
    assert!(third.held.is_empty() && third.allocations == second.allocations);

    // A held sandbox moves none of its ports: epsilon's gateway asks for alpha's port, its service for another;
    // held, it keeps the service port it had, which nobody else may take meanwhile.
    let (mut before, _) = sandboxes(&sandbox_yaml("epsilon", &[("account", "x")]));
    before.extend(config.clone());
    let fourth = compile_now(&before, &envs, &third.allocations);
    let had = fourth.allocations.ports[&("epsilon".to_string(), "account".to_string())];
    let mut after = Vec::new();
    let epsilon = gateway_at("epsilon", &[("account", "x")], 8080)
        .replace("      branch: x\n", "      branch: x\n      port: 9050\n");
    after.extend(sandboxes(&epsilon).0);
    after.extend(config.clone());
    after.extend(sandboxes(&sandbox_yaml("zeta", &[("account", "x")])).0);
    let fifth = compile_now(&after, &envs, &fourth.allocations);
    assert!(
        fifth.held["epsilon"].contains("port 8080 of gateway is in use by sandbox alpha, gateway"),
        "{:?}",
        fifth.held
    );
    assert_eq!(
        fifth.allocations.ports[&("epsilon".to_string(), "account".to_string())],
        had
    );
    let zeta = fifth.allocations.ports[&("zeta".to_string(), "account".to_string())];
    assert_ne!(zeta, had, "zeta was given the port epsilon holds");
}

#[test]
fn a_sandbox_renamed_in_one_commit_gets_other_ports_and_one_port_is_never_two_keys() {
    let envs = Vec::new();
    let ports = |d: &Desired, sb: &str| -> Vec<u16> {
        let mut p: Vec<u16> = d
            .allocations
            .ports
            .iter()
            .filter(|((s, _), _)| s == sb)
            .map(|(_, p)| *p)
            .collect();
        p.sort();
        p
    };
    let (alpha, _) = sandboxes(&sandbox_yaml("alpha", &[("account", "main")]));
    let first = compile_now(&alpha, &envs, &Arc::default());
    assert_eq!(ports(&first, "alpha"), [8080, 9001]);
    // alpha becomes beta in one commit: beta's ports are not alpha's, which its containers still publish.
    let (beta, _) = sandboxes(&sandbox_yaml("beta", &[("account", "main")]));
    let renamed = compile_now(&beta, &envs, &first.allocations);
    assert_eq!(ports(&renamed, "beta"), [8081, 9002]);
    assert_eq!(
        renamed.allocations.leaving.keys().copied().collect::<Vec<_>>(),
        [8080, 9001]
    );

    // In one commit a service moves to an explicit port and a new sandbox comes: the new one does not get the
    // port given up.
    let moved = sandbox_yaml("alpha", &[("account", "main")])
        .replace("      branch: main\n", "      branch: main\n      port: 9050\n");
    let (mut both, _) = sandboxes(&moved);
    both.extend(sandboxes(&sandbox_yaml("gamma", &[("account", "main")])).0);
    let second = compile_now(&both, &envs, &first.allocations);
    assert_eq!(ports(&second, "alpha"), [8080, 9050]);
    assert_eq!(ports(&second, "gamma"), [8081, 9002]);
    assert!(second.allocations.leaving.contains_key(&9001));

    // alpha drops its service and is held in the same commit (its gateway asks for a port out of range) while
    // delta asks for the dropped service's port by name: delta has it, and alpha does not keep it too.
    let held = sandbox_yaml("alpha", &[]).replace("  gateway:\n", "  gateway:\n    port: 9005\n");
    let claims = sandbox_yaml("delta", &[("account", "main")])
        .replace("      branch: main\n", "      branch: main\n      port: 9001\n");
    let (mut config, _) = sandboxes(&held);
    config.extend(sandboxes(&claims).0);
    let third = compile_now(&config, &envs, &first.allocations);
    assert!(third.held.contains_key("alpha"), "{:?}", third.held);
    assert_eq!(ports(&third, "delta"), [8081, 9001]);
    let holders: Vec<_> = third.allocations.ports.iter().filter(|(_, p)| **p == 9001).collect();
    assert_eq!(holders.len(), 1, "{holders:?}");
    assert_eq!(
        ports(&third, "alpha"),
        [8080],
        "the held sandbox keeps its gateway port"
    );
}

#[test]
fn an_explicit_port_outside_its_range_holds_the_sandbox_and_takes_nothing() {
    let envs_only = sandboxes(&sandbox_yaml("ok", &[("account", "x")]));
    for (from, to, needle) in [
        (
            "      branch: x\n",
            "      branch: x\n      port: 5432\n",
            "port 5432 of user is outside the service ports 9001-9099",
        ),
        (
            "      branch: x\n",
            "      branch: x\n      port: 8085\n",
            "port 8085 of user is outside the service ports",
        ),
        (
            "  gateway:\n",
            "  gateway:\n    port: 9005\n",
            "port 9005 of gateway is outside the gateway ports 8080-8099",
        ),
    ] {
        let yaml = sandbox_yaml("rogue", &[("user", "x")]);
        assert!(yaml.contains(from), "{yaml}");
        let (mut all, envs) = sandboxes(&yaml.replacen(from, to, 1));
        all.extend(envs_only.0.clone());
        let desired = compile_now(&all, &envs, &Arc::default());
        assert!(desired.held["rogue"].contains(needle), "{:?}", desired.held);
        assert!(!desired.sandboxes.contains_key("rogue"));
        assert!(
            !desired.allocations.ports.keys().any(|k| k.0 == "rogue"),
            "{:?}",
            desired.allocations
        );
        assert!(desired.sandboxes.contains_key("ok"), "the others compile as before");
    }
}

#[test]
fn an_exhausted_range_holds_the_sandbox_that_does_not_fit() {
    let (mut all, envs) = sandboxes(&sandbox_yaml("one", &[("account", "x")]));
    all.extend(sandboxes(&sandbox_yaml("two", &[("account", "x")])).0);
    let tiny = Settings {
        service_ports: 9001..=9001,
        ..settings()
    };
    let desired = compile(&all, &envs, &Arc::default(), &tiny, &Clock::default());
    assert!(desired.sandboxes.contains_key("one"));
    assert!(
        desired.held["two"].contains("no free port for account in 9001-9001"),
        "{:?}",
        desired.held
    );
}

#[test]
fn health_comes_from_state_restarts_and_the_health_path() {
    use sdp_reconciler::controller::{Health, health};
    let (sb, envs) = examples();
    let mut sb = sb;
    sb[0].spec.services.get_mut("account").unwrap().health_path = Some("/healthz".into());
    let desired = compile_now(&sb, &envs, &Arc::default());
    let d = desired.sandbox("qa-login-error");
    let account = &d.unwrap().services["account"];
    assert_eq!(
        account.deploy(None).labels.get("sdp.health-path").map(String::as_str),
        Some("/healthz"),
        "the agent learns the path from the container's label"
    );
    let mut actual = Actual::default();
    converge(&desired, &mut actual);
    let name = "qa-login-error";
    assert_eq!(health(d, &actual.view(name)), Health::Healthy);

    account_of(&mut actual).probe = Some(sdp_protocol::Probe {
        ok: true,
        detail: "HTTP 200".into(),
    });
    assert_eq!(health(d, &actual.view(name)), Health::Healthy);
    account_of(&mut actual).probe = Some(sdp_protocol::Probe {
        ok: false,
        detail: "HTTP 503".into(),
    });
    assert_eq!(health(d, &actual.view(name)), Health::Degraded, "a failing probe");
    account_of(&mut actual).probe = None;
    account_of(&mut actual).restart_count = 3;
    assert_eq!(health(d, &actual.view(name)), Health::Degraded, "restarting often");
    for c in actual.of_mut(Role::Micro).containers.iter_mut() {
        Arc::make_mut(c).state = ContainerState::Exited;
    }
    for c in actual.of_mut(Role::Gateway).containers.iter_mut() {
        Arc::make_mut(c).state = ContainerState::Exited;
    }
    assert_eq!(health(d, &actual.view(name)), Health::Unhealthy, "nothing runs");

    // Without a health path, a spec hashes as it did before the field existed: the hash lives in the labels of
    // running containers, and a new value would redeploy every sandbox on upgrade.
    let (plain, _) = examples();
    let before = compile_now(&plain, &envs, &Arc::default());
    let hashes: Vec<String> = before.sandboxes["qa-login-error"]
        .services
        .values()
        .map(|c| c.spec_hash_label())
        .collect();
    assert_eq!(
        hashes,
        ["188264037150f4f4"],
        "the example's spec hash changed: every container would be redeployed"
    );
    assert_ne!(
        account.spec_hash,
        before.sandboxes["qa-login-error"].services["account"].spec_hash
    );
}

fn account_of(actual: &mut Actual) -> &mut Container {
    let containers = &mut actual.of_mut(Role::Micro).containers;
    let account = containers
        .iter_mut()
        .find(|c| c.name == "sandbox-qa-login-error-account")
        .unwrap();
    Arc::make_mut(account)
}

#[test]
fn a_pin_is_the_commit_wanted_and_a_moved_branch_does_not_move_it() {
    const PIN: &str = "1234567890abcdef1234567890abcdef12345678";
    const HEAD: &str = "c0ffee1234567890c0ffee1234567890c0ffee12";
    let (desired, mut actual) = converged_example();
    // The branch has a head and the container runs it.
    actual.of_mut(Role::Micro).heads.push(BranchHead {
        repo: "account".into(),
        branch: "feature/login-error".into(),
        commit: HEAD.into(),
    });
    account_of(&mut actual).labels.insert(labels::COMMIT, HEAD);
    assert!(
        plan(
            "qa-login-error",
            desired.sandbox("qa-login-error"),
            &actual.view("qa-login-error")
        )
        .is_empty()
    );

    // Pinned to an older commit: the account container goes there, and only it.
    let (mut sb, envs) = examples();
    sb[0].spec.services.get_mut("account").unwrap().commit = Some(PIN.into());
    let pinned = compile_now(&sb, &envs, &desired.allocations);
    assert_eq!(
        pinned.sandboxes["qa-login-error"].services["account"].spec_hash,
        desired.sandboxes["qa-login-error"].services["account"].spec_hash,
        "a pin is the commit wanted, not a new spec"
    );
    let step = only_step(&pinned, &actual);
    assert_eq!(step.reason, Reason::Pinned { commit: PIN.into() });
    assert_eq!(step.reason.to_string(), "pinned to 1234567890ab");
    let Action::DeployService(d) = &step.action else {
        panic!("{step:?}")
    };
    assert_eq!(
        d.commit.as_deref(),
        Some(PIN),
        "the deploy asks for the pin, not the head"
    );
    common::apply(&step, &mut actual);
    assert!(
        plan(
            "qa-login-error",
            pinned.sandbox("qa-login-error"),
            &actual.view("qa-login-error")
        )
        .is_empty()
    );

    // A push moves the branch: a pinned service stays where it is.
    let head = actual
        .of_mut(Role::Micro)
        .heads
        .iter_mut()
        .find(|h| h.repo == "account")
        .unwrap();
    head.commit = "feedfacefeedfacefeedfacefeedfacefeedface".into();
    assert!(
        plan(
            "qa-login-error",
            pinned.sandbox("qa-login-error"),
            &actual.view("qa-login-error")
        )
        .is_empty(),
        "a pinned container follows no branch"
    );

    // Unpinned, it goes to the branch's head again.
    let step = only_step(&desired, &actual);
    assert_eq!(
        step.reason,
        Reason::BranchMoved {
            commit: "feedfacefeedfacefeedfacefeedfacefeedface".into()
        }
    );

    // The gateway is pinned the same way; before any agent reported a head, the pin is still asked for.
    let (mut sb, envs) = examples();
    sb[0].spec.gateway.commit = Some(PIN.into());
    let gateway_pinned = compile_now(&sb, &envs, &desired.allocations);
    let mut fresh = Actual::default();
    let steps = plan(
        "qa-login-error",
        gateway_pinned.sandbox("qa-login-error"),
        &fresh.view("qa-login-error"),
    );
    let gateway = steps
        .iter()
        .find_map(|s| match &s.action {
            Action::DeployGateway(d) => Some(d.commit.clone()),
            _ => None,
        })
        .expect("the gateway is deployed");
    assert_eq!(gateway.as_deref(), Some(PIN));
    converge(&gateway_pinned, &mut fresh);
    let gw = fresh
        .gateway
        .containers
        .iter()
        .find(|c| c.labels.get(labels::SERVICE) == Some(GATEWAY))
        .unwrap();
    assert_eq!(gw.labels.get(labels::COMMIT), Some(PIN));
}
