//! compile + plan for 1,000 sandboxes of 10 services each, in the cases that matter: the steady state
//! (everything converged, nothing to do: the controller compiles again from its last answer at every resync), a
//! commit that edits one sandbox, a cold start (nothing on the VMs yet, nothing compiled before); and one sandbox's
//! pass after an agent report (its view of the reports, then its plan). The reports are realistic: every container with the
//! labels the agents report, and the heads of 10 repositories x 7 branches.
//!
//! After criterion's own figures, a summary prints the medians against issue 14's targets: compile + plan
//! converged under 5 ms, one sandbox's pass under 50 us. Run: `cargo bench -p sdp-reconciler --bench plan`.

use std::collections::BTreeMap;
use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group};
use sdp_manifest::{
    Environment, EnvironmentSpec, GatewaySpec, Kind, Metadata, Route, Sandbox, SandboxSpec, ServiceSpec,
};
use sdp_protocol::{Action, BranchHead, Container, ContainerState, Worktree, labels, network_name};
use sdp_reconciler::desired::{Clock, Desired, Settings, compile, compile_again};
use sdp_reconciler::plan::{Actual, Step, plan};

// The allocator `sdp` runs with, set as it sets it.
sdp_reconciler::global_allocator!();

const SANDBOXES: usize = 1000;
const SERVICES: usize = 10;

/// The sandboxes as the source holds them: a sandbox that a commit did not change stays the same `Arc`.
fn shared(sandboxes: &[Sandbox]) -> Vec<Arc<Sandbox>> {
    sandboxes.iter().cloned().map(Arc::new).collect()
}

/// `sandboxes` after a commit that moves sandbox 500's first service to another branch.
fn one_edited(sandboxes: &[Arc<Sandbox>]) -> Vec<Arc<Sandbox>> {
    let mut after = sandboxes.to_vec();
    let edited = Arc::make_mut(&mut after[500]);
    edited.spec.services.get_mut("svc-0").expect("svc-0").branch = "feature/f-6".into();
    after
}

fn config() -> (Vec<Sandbox>, Vec<Environment>) {
    let env = Environment {
        api_version: "sdp/v1".into(),
        kind: Kind::Environment,
        metadata: Metadata {
            name: "shared-dev".into(),
            owner: None,
            annotations: BTreeMap::new(),
        },
        spec: EnvironmentSpec {
            variables: (0..10).map(|i| (format!("VAR_{i}"), format!("value-{i}"))).collect(),
            ..EnvironmentSpec::default()
        },
    };
    let sandboxes = (0..SANDBOXES)
        .map(|i| Sandbox {
            api_version: "sdp/v1".into(),
            kind: Kind::Sandbox,
            metadata: Metadata {
                name: format!("sb-{i:04}"),
                owner: Some("qa".into()),
                annotations: BTreeMap::new(),
            },
            spec: SandboxSpec {
                gateway: GatewaySpec {
                    branch: "develop".into(),
                    commit: None,
                    port: None,
                    environments: Vec::new(),
                    env: Default::default(),
                },
                services: (0..SERVICES)
                    .map(|s| {
                        let spec = ServiceSpec {
                            branch: format!("feature/f-{}", (i + s) % 7),
                            commit: None,
                            environments: vec!["shared-dev".into()],
                            env: [("LOG_LEVEL".to_string(), "debug".to_string())].into(),
                            port: None,
                            resources: None,
                            health_path: None,
                            build: None,
                        };
                        (format!("svc-{s}"), spec)
                    })
                    .collect(),
                routes: (0..SERVICES).map(|s| (format!("svc-{s}"), Route::Sandbox)).collect(),
                suspend: false,
                expire_after: None,
            },
        })
        .collect();
    (sandboxes, vec![env])
}

fn settings() -> Settings {
    // 1,000 gateways and 10,000 services need wider ranges than the defaults.
    Settings {
        gateway_ports: 20000..=21999,
        service_ports: 30000..=45000,
        ..Settings::default()
    }
}

/// Every sandbox's plan, as the controller's passes make them after a resync: each reads its own view of the reports
/// (through the hub's index when `actual` is indexed). `views` then `plan`, the way this bench read them before
/// (all views cut first, kept in a map), is printed beside it.
fn plan_everything(desired: &Desired, actual: &Actual) -> Vec<Step> {
    let mut steps = Vec::new();
    for (name, d) in desired.sandboxes.iter() {
        steps.extend(plan(name, Some(d), &actual.view(name)));
    }
    steps
}

/// Every sandbox's plan from all views cut first.
fn plan_from_views(desired: &Desired, actual: &Actual) -> Vec<Step> {
    let views = actual.views();
    let empty = actual.empty_view();
    let mut steps = Vec::new();
    for (name, d) in desired.sandboxes.iter() {
        steps.extend(plan(name, Some(d), views.get(name.as_str()).unwrap_or(&empty)));
    }
    steps
}

/// What the agents report once everything has been deployed.
fn converged(desired: &Desired) -> Actual {
    let mut actual = Actual::default();
    for step in plan_everything(desired, &Actual::default()) {
        let state = actual.of_mut(step.role);
        match step.action {
            Action::EnsureNetwork { sandbox } => state.networks.push(network_name(&sandbox)),
            Action::DeployService(d) | Action::DeployGateway(d) => {
                let mut l = d.labels.clone();
                l.insert(labels::COMMIT.into(), "c0ffee".into());
                Arc::make_mut(&mut state.worktrees).push(Worktree {
                    sandbox: d.sandbox.as_str().into(),
                    service: d.service.as_str().into(),
                    branch: d.branch.as_str().into(),
                    commit: "c0ffee".into(),
                });
                state.containers.push(
                    Container {
                        name: d.container.clone(),
                        id: d.container.clone(),
                        labels: l.into(),
                        state: ContainerState::Running,
                        ports: vec![d.host_port],
                        restart_count: 0,
                        exit_code: None,
                        probe: None,
                    }
                    .into(),
                );
            }
            Action::SetRoutes { sandbox, routes } => {
                state.routes.insert(sandbox, routes.into());
            }
            _ => {}
        }
    }
    actual
}

/// The heads the agents report: every branch the sandboxes track, of every repository (10 services and the
/// gateway's), at one commit each.
fn with_heads(mut actual: Actual) -> Actual {
    let repos = (0..SERVICES).map(|s| format!("svc-{s}"));
    let mut micro = Vec::new();
    for repo in repos {
        for b in 0..7 {
            micro.push(BranchHead {
                repo: repo.clone(),
                branch: format!("feature/f-{b}"),
                commit: "c0ffee".into(),
            });
        }
    }
    actual.of_mut(sdp_protocol::Role::Micro).heads = micro;
    actual.of_mut(sdp_protocol::Role::Gateway).heads = vec![BranchHead {
        repo: "gateway".into(),
        branch: "develop".into(),
        commit: "c0ffee".into(),
    }];
    actual
}

/// One sandbox's pass after an agent report: the controller cuts its view from the reports and plans it.
fn one_pass(desired: &Desired, actual: &Actual, name: &str) -> Vec<Step> {
    plan(name, desired.sandbox(name), &actual.view(name))
}

/// The median time of `f` over `runs` runs, after one warm-up.
fn median<T>(runs: usize, mut f: impl FnMut() -> T) -> Duration {
    black_box(f());
    let mut times: Vec<Duration> = (0..runs)
        .map(|_| {
            let start = Instant::now();
            black_box(f());
            start.elapsed()
        })
        .collect();
    times.sort();
    times[runs / 2]
}

/// Everything the cases read: the config, its first compile (the controller's last answer), the converged
/// reports, and the config after a commit that edits one sandbox.
struct Fixture {
    sandboxes: Vec<Sandbox>,
    envs: Vec<Environment>,
    /// As the source holds them.
    inputs: Vec<Arc<Sandbox>>,
    edited: Vec<Arc<Sandbox>>,
    last: Desired,
    actual: Actual,
}

impl Fixture {
    fn new() -> Fixture {
        let (sandboxes, envs) = config();
        let inputs = shared(&sandboxes);
        let last = compile_again(
            &Desired::default(),
            &inputs,
            &envs,
            &Arc::default(),
            &settings(),
            &Clock::default(),
        );
        assert_eq!(last.sandboxes.len(), SANDBOXES, "held: {:?}", last.held.iter().next());
        // Indexed, as the hub keeps each report.
        let actual = with_heads(converged(&last)).indexed();
        let edited = one_edited(&inputs);
        Fixture {
            sandboxes,
            envs,
            inputs,
            edited,
            last,
            actual,
        }
    }

    /// The controller's compile of `inputs`, from its last answer.
    fn again(&self, inputs: &[Arc<Sandbox>]) -> Desired {
        let clock = Clock::default();
        compile_again(
            &self.last,
            inputs,
            &self.envs,
            &self.last.allocations,
            &settings(),
            &clock,
        )
    }

    /// A compile of the config with nothing compiled before (a start), with the stored allocations or none.
    fn scratch(&self, allocations: &Arc<sdp_reconciler::desired::Allocations>) -> Desired {
        compile(&self.sandboxes, &self.envs, allocations, &settings(), &Clock::default())
    }
}

fn bench(c: &mut Criterion) {
    let f = Fixture::new();
    assert!(
        plan_everything(&f.last, &f.actual).is_empty(),
        "the steady state must plan nothing"
    );
    assert!(one_pass(&f.last, &f.actual, "sb-0500").is_empty());
    let edited = f.again(&f.edited);
    assert!(!plan_everything(&edited, &f.actual).is_empty());
    assert_eq!(
        format!("{:?}", plan_everything(&edited, &f.actual)),
        format!("{:?}", plan_from_views(&edited, &f.actual)),
        "a view at a time plans what the views cut first plan"
    );

    let mut group = c.benchmark_group("plan");
    group.sample_size(20);
    group.bench_function("compile+plan 1000x10, converged", |b| {
        b.iter(|| black_box(plan_everything(&f.again(&f.inputs), &f.actual)))
    });
    group.bench_function("compile+plan 1000x10, one sandbox edited", |b| {
        b.iter(|| black_box(plan_everything(&f.again(&f.edited), &f.actual)))
    });
    group.bench_function("compile+plan 1000x10, nothing compiled before, empty VMs", |b| {
        b.iter(|| black_box(plan_everything(&f.scratch(&Arc::default()), &Actual::default())))
    });
    group.bench_function("compile only, from the last answer", |b| {
        b.iter(|| black_box(f.again(&f.inputs)))
    });
    group.bench_function("compile only, nothing compiled before", |b| {
        b.iter(|| black_box(f.scratch(&f.last.allocations)))
    });
    group.bench_function("cut reports by sandbox only", |b| {
        b.iter(|| black_box(f.actual.views().len()))
    });
    group.bench_function("one sandbox's pass after a report", |b| {
        b.iter(|| black_box(one_pass(&f.last, &f.actual, "sb-0500")))
    });
    group.finish();
}

/// The figures issue 14 sets, measured again outside criterion so that they print side by side.
fn summary() {
    let f = Fixture::new();
    let converged = median(31, || plan_everything(&f.again(&f.inputs), &f.actual));
    let compile_only = median(31, || f.again(&f.inputs));
    let plan_only = median(31, || plan_everything(&f.last, &f.actual));
    let from_views = median(31, || plan_from_views(&f.again(&f.inputs), &f.actual));
    let commit = median(31, || plan_everything(&f.again(&f.edited), &f.actual));
    let scratch = median(31, || plan_everything(&f.scratch(&f.last.allocations), &f.actual));
    let pass = median(1001, || one_pass(&f.last, &f.actual, "sb-0500"));
    let verdict = |t: Duration, target: Duration| if t < target { "met" } else { "NOT met" };
    println!("\nsummary (medians; targets from issue 14)");
    println!(
        "  compile+plan 1000x10, converged: {:>10.3?}  target < 5 ms   {}",
        converged,
        verdict(converged, Duration::from_millis(5))
    );
    println!("  ... of which compile {compile_only:>10.3?}, plan {plan_only:>10.3?}");
    println!("  ... with all views cut first:    {from_views:>10.3?}  (as this bench planned before)");
    println!(
        "  ... after a commit editing one:  {:>10.3?}  target < 5 ms   {}",
        commit,
        verdict(commit, Duration::from_millis(5))
    );
    println!("  ... compiled from nothing:       {scratch:>10.3?}  (a start, or new environments or settings)");
    println!(
        "  one sandbox's pass after report: {:>10.3?}  target < 50 us  {}",
        pass,
        verdict(pass, Duration::from_micros(50))
    );
}

criterion_group!(benches, bench);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    summary();
}
