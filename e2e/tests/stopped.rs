//! SIGTERM, as systemd sends it, on the real engine: the agent stopped during a Go build abandons it, says so to
//! the reconciler and exits; the reconciler stopped while a pass waits on a deploy lets it go and exits; neither
//! leaves anything half-written (the service's binary, its worktree, the gateway's config.php, the store), and
//! both come back converged.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use sdp_e2e::*;

const LONG: Duration = Duration::from_secs(300);

/// A Go service whose build takes a while: tens of thousands of small functions.
fn slow_service(dir: &Path) -> ServiceRepo {
    let work = dir.join("account-work");
    std::fs::create_dir_all(&work).unwrap();
    git(&work, &["init", "-q", "-b", "main"]);
    std::fs::write(work.join("go.mod"), "module account\n\ngo 1.19\n").unwrap();
    std::fs::write(work.join("main.go"), GO_SERVICE).unwrap();
    std::fs::write(work.join("name.go"), "package main\n\nconst NAME = \"account\"\n").unwrap();
    git(&work, &["add", "-A"]);
    git(&work, &["commit", "-qm", "service"]);
    ServiceRepo::from_work(dir, "account", &work)
}

/// Unique to the run (`seed`), so that go's build cache never has it.
fn big_file(seed: &str) -> String {
    let mut s = String::from("package main\n\n");
    for i in 0..40_000 {
        s.push_str(&format!(
            "func f{seed}_{i}(x int) int {{ if x > {i} {{ return x * {i} }}; return x + {i} }}\n"
        ));
    }
    s.push_str(&format!("var table{seed} = []func(int) int{{"));
    for i in 0..40_000 {
        s.push_str(&format!("f{seed}_{i},"));
    }
    s.push_str("}\n");
    s
}

fn deployments(api: &str, sandbox: &str) -> Vec<serde_json::Value> {
    get_json(&format!("{api}/api/v1/deployments?sandbox={sandbox}"))
        .ok()
        .and_then(|v| v.as_array().cloned())
        .unwrap_or_default()
}

/// Whether a deployment's build stage has started and not ended.
fn building_now(d: &serde_json::Value) -> bool {
    d["stages"]
        .as_array()
        .is_some_and(|s| s.iter().any(|s| s["stage"] == "build" && s["state"] == "started"))
}

/// Sends SIGTERM and waits for the process to exit on its own; its exit status.
fn terminate(process: &mut Process, within: Duration) -> std::process::ExitStatus {
    run(Command::new("kill").args(["-TERM", &process.child.id().to_string()]));
    let started = Instant::now();
    loop {
        if let Some(status) = process.child.try_wait().unwrap() {
            return status;
        }
        assert!(
            started.elapsed() < within,
            "still running {within:?} after SIGTERM:\n{}",
            process.output()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The deployment `id` once it has ended.
fn ended(api: &str, id: &serde_json::Value) -> serde_json::Value {
    wait_for("the deployment to end", Duration::from_secs(60), || {
        let d = get_json(&format!("{api}/api/v1/deployments/{id}"))?;
        if d["state"] == "running" {
            Err(d.to_string())
        } else {
            Ok(d)
        }
    })
}

#[test]
fn sigterm_mid_build_and_mid_pass_leaves_nothing_half_written_and_both_come_back() {
    let mut cluster = Cluster::start();
    let name = format!("st-{}", suffix());
    let _cleanup = DockerCleanup { sandbox: name.clone() };
    let host = docker_host_ip();
    let ocp = OcpStandIn::start(&["account", "payment"]);
    let account = slow_service(cluster.path());
    let gateway = gateway_repo(
        cluster.path(),
        "develop",
        &["account", "payment"],
        &format!("http://{host}:{}", ocp.port),
    );
    let micro = cluster.micro_yaml_reachable(
        "micro-st",
        &[("account", &account.clone)],
        // A stop abandons what still runs after one second: the build below takes far longer.
        "containerPort: 8080\nstopGraceSecs: 1\n",
    );
    let data_dir = cluster.path().join("agent-micro-st");
    let gw = cluster.agent_yaml("gateway-st", "gateway", &[("gateway", &gateway.clone)], "");
    let micro_agent = cluster.start_agent(&micro, "micro-st");
    cluster.start_agent(&gw, "gateway-st");
    let (account_port, gateway_port) = (cluster.service_port(), cluster.gateway_port());
    cluster.commit(
        &format!("sandboxes/{name}.yaml"),
        &format!(
            "apiVersion: sdp/v1\nkind: Sandbox\nmetadata:\n  name: {name}\nspec:\n  gateway:\n    branch: develop\n    \
             port: {gateway_port}\n  services:\n    account:\n      branch: main\n      port: {account_port}\n  \
             routes:\n    account: sandbox\n    payment: ocp\n"
        ),
        "a sandbox",
    );
    let first = git(&account.origin, &["rev-parse", "main"]);
    wait_for("the first deploy", LONG, || {
        answers(account_port, &first)().map_err(|e| format!("{e}\n{}", cluster.logs()))
    });
    let api = cluster.api.clone();

    // 1. A push whose build is slow; SIGTERM to the agent while `go build` runs.
    let seed = suffix();
    let big = format!("big_{seed}.go");
    let slow = account.push("main", &big, &big_file(&seed));
    let building = wait_for("the build stage to run", LONG, || {
        let d = deployments(&api, &name);
        match d.first() {
            Some(latest)
                if latest["commit"] == slow.as_str() && latest["state"] == "running" && building_now(latest) =>
            {
                Ok(latest["id"].clone())
            }
            _ => Err(format!("{d:?}")),
        }
    });
    let status = terminate(&mut cluster.agents[micro_agent], Duration::from_secs(30));
    assert!(status.success(), "the agent exits cleanly: {status:?}");
    let log = cluster.agents[micro_agent].output();
    assert!(log.contains("action abandoned: the agent is stopping"), "{log}");
    let abandoned = ended(&api, &building);
    assert_eq!(abandoned["state"], "failed", "{abandoned}");
    assert!(
        abandoned["error"]
            .as_str()
            .unwrap_or_default()
            .contains("was stopped (SIGTERM)"),
        "the reconciler was told, not left to find a dropped connection: {abandoned}"
    );
    // Nothing half-written: the running service still has the old commit's whole binary; the new one was never
    // moved into place; no go build is left running.
    let bin = data_dir.join(format!("bin/{name}/account"));
    let dir = std::fs::read_dir(&bin).map(|d| d.count()).unwrap_or(0);
    assert!(dir > 0, "no binary dir at {}", bin.display());
    assert!(
        answers(account_port, &first)().is_ok(),
        "the old container still answers with its binary"
    );
    // `[b]ig_…` matches the compiler's command line, not this shell's.
    let builds = run(Command::new("sh").args(["-c", &format!("pgrep -af '[b]{}' || true", &big[1..])]));
    assert!(builds.trim().is_empty(), "a compiler outlived the agent: {builds}");

    // 2. The agent back: the build runs again and the service converges. While it builds, SIGTERM the
    // reconciler, whose pass waits on that deploy.
    cluster.start_agent(&micro, "micro-st");
    let rebuilding = wait_for("the build to run again", LONG, || {
        let d = deployments(&api, &name);
        match d.first() {
            // The agent has it: its build stage started.
            Some(latest) if latest["id"] != building && latest["state"] == "running" && building_now(latest) => {
                Ok(latest["id"].clone())
            }
            _ => Err(format!("{d:?}\n{}", cluster.logs())),
        }
    });
    let status = terminate(&mut cluster.serve, Duration::from_secs(60));
    assert!(status.success(), "sdp serve exits cleanly: {status:?}");
    cluster.restart_serve();
    wait_for("convergence after both stops", LONG, || {
        answers(account_port, &slow)().map_err(|e| format!("{e}\n{}", cluster.logs()))
    });
    // The store opened whole: the history is there, and the deployment the stop cut off is failed (it was
    // running when the reconciler stopped) rather than running for ever.
    let history = wait_for("the restarted reconciler's history", Duration::from_secs(60), || {
        let history = deployments(&api, &name);
        match history.iter().find(|d| d["id"] == rebuilding) {
            Some(cut) if cut["state"] != "running" => Ok(history),
            _ => Err(format!("{history:#?}\n{}", cluster.logs())),
        }
    });
    // The agent finished the build the old reconciler had asked for; the new one waited for its first report
    // (sent when that action ended) instead of planning against an empty picture, so nothing was redeployed.
    wait_for("the sandbox to be synced", LONG, || {
        let sb = cluster.get(&format!("/api/v1/sandboxes/{name}"))?;
        if sb["status"]["sync"] == "Synced" {
            Ok(())
        } else {
            Err(sb.to_string())
        }
    });
    let later: Vec<_> = deployments(&api, &name)
        .into_iter()
        .filter(|d| d["id"].as_u64() > rebuilding.as_u64())
        .collect();
    assert!(
        later.is_empty(),
        "redeployed after the restart: {later:#?}\n{history:#?}"
    );

    // The worktree holds exactly the deployed commit, nothing else; the gateway's config.php is whole and routes
    // account to the sandbox.
    let worktree = data_dir.join(format!("worktrees/{name}/account"));
    let pointer = std::fs::read_to_string(worktree.join(".git")).unwrap();
    let admin = pointer.trim().strip_prefix("gitdir: ").expect("a gitdir pointer");
    let status = run(Command::new("git")
        .arg(format!("--git-dir={admin}"))
        .arg(format!("--work-tree={}", worktree.display()))
        .args(["status", "--porcelain"]));
    assert!(status.trim().is_empty(), "the worktree has changes: {status}");
    let gateway_container = format!("sandbox-{name}-gateway");
    let lint = run(Command::new("docker").args([
        "exec",
        &gateway_container,
        "php",
        "-l",
        "/var/www/html/erangel-ocean/application/config/production/config.php",
    ]));
    assert!(lint.contains("No syntax errors"), "{lint}");
    let through = get_text(&format!("http://127.0.0.1:{gateway_port}/account/")).unwrap_or_default();
    assert!(
        through.contains(&slow),
        "the gateway routes account to the sandbox's new build: {through}"
    );
}
