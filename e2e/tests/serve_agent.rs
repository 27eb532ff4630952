//! `sdp serve` with a real `sdp-agent` (micro role) on the real Docker engine: a commit in the config repo
//! reaches the agent as actions, the Go service is built and answers on its published port, a push to its branch
//! replaces only its container, and deleting the manifest removes what SDP made and nothing else.

use std::process::Command;
use std::time::Duration;

use sdp_e2e::*;

const BRANCH: &str = "feature/login-error";

fn sandbox_yaml(name: &str, service_port: u16, gateway_port: u16) -> String {
    format!(
        "apiVersion: sdp/v1\nkind: Sandbox\nmetadata:\n  name: {name}\n  owner: ann\nspec:\n  gateway:\n    branch: develop\n    port: {gateway_port}\n  services:\n    account:\n      branch: {BRANCH}\n      environments: [shared-dev]\n      port: {service_port}\n  routes:\n    account: sandbox\n"
    )
}

fn hub_now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn inspect(container: &str, format: &str) -> Option<String> {
    let out = Command::new("docker")
        .args(["inspect", "-f", format, container])
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

#[test]
fn a_commit_reaches_the_agent_as_actions_and_the_service_answers() {
    let image = runtime_image();
    let bins = binaries();
    let name = format!("it-{}", suffix());
    let _cleanup = DockerCleanup { sandbox: name.clone() };
    let mut cluster = Cluster::start();
    let api = cluster.api.clone();
    let account = ServiceRepo::new(cluster.path(), "account", BRANCH);
    let yaml = cluster.agent_yaml(
        "micro-it",
        "micro",
        &[("account", &account.clone)],
        "containerPort: 8080\n",
    );
    let agent = cluster.start_agent(&yaml, "micro-it");

    // The commit: a sandbox with one service on ports the test picked.
    let service_port = cluster.service_port();
    let gateway_port = cluster.gateway_port();
    cluster.commit(
        &format!("sandboxes/{name}.yaml"),
        &sandbox_yaml(&name, service_port, gateway_port),
        "a sandbox",
    );

    let first = git(&account.origin, &["rev-parse", BRANCH]);
    let url = format!("http://127.0.0.1:{service_port}/");
    let answer = wait_for(
        "the service to answer on its published port",
        Duration::from_secs(120),
        || get_text(&url).map_err(|e| format!("{e}\nagent log:\n{}", cluster.agents[agent].output())),
    );
    assert_eq!(answer.trim(), format!("account {name} {BRANCH} {first}"));

    let container = format!("sandbox-{name}-account");
    assert_eq!(
        inspect(&container, "{{index .Config.Labels \"sdp.managed\"}}").as_deref(),
        Some("true")
    );
    assert_eq!(
        inspect(&container, "{{index .Config.Labels \"sdp.commit\"}}").as_deref(),
        Some(first.as_str())
    );
    assert_eq!(
        inspect(&container, "{{.HostConfig.NetworkMode}}").as_deref(),
        Some(format!("sandbox-{name}").as_str())
    );
    let first_id = inspect(&container, "{{.Id}}").unwrap();

    // The audit trail: one deployment of account at that commit, with its stages and a log.
    let deployments = wait_for(
        "the deployment to be recorded as succeeded",
        Duration::from_secs(10),
        || {
            let list = get_json(&format!("{api}/api/v1/deployments?sandbox={name}&service=account"))?;
            let done = list
                .as_array()
                .is_some_and(|l| l.iter().any(|d| d["state"] == "succeeded"));
            if done { Ok(list) } else { Err(list.to_string()) }
        },
    );
    let d = deployments
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["state"] == "succeeded")
        .unwrap();
    assert_eq!(d["commit"], first.as_str());
    assert_eq!(d["configAuthor"], "Ann Tester <ann@example.com>");
    let stages: Vec<&str> = d["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["stage"].as_str().unwrap())
        .collect();
    assert_eq!(stages, ["fetch", "checkout", "build", "start"]);
    let log = get_text(&format!("{api}/api/v1/deployments/{}/logs", d["id"])).unwrap();
    assert!(log.contains("data: Build succeeded"), "{log}\n{deployments}");

    // The container's output reaches `sdp logs`, and `sdp get` shows the sandbox.
    let sdp = |args: &[&str]| run(Command::new(bins.join("sdp")).args(args).args(["--server", &api]));
    let marker = format!("/marker-{}", suffix());
    get_text(&format!("http://127.0.0.1:{service_port}{marker}")).unwrap();
    wait_for("the request's log line in sdp logs", Duration::from_secs(30), || {
        let out = sdp(&["logs", &format!("{name}/account")]);
        if out.contains(&format!("GET {marker}")) {
            Ok(())
        } else {
            Err(out)
        }
    });
    let branches = sdp(&["get", "branches", "account"]);
    assert!(
        branches.contains(BRANCH) && branches.contains(&first),
        "the agent lists the repo's branches: {branches}"
    );
    let listing = sdp(&["get", "sandboxes"]);
    assert!(listing.starts_with("NAME"), "{listing}");
    assert!(listing.contains(&name), "{listing}");
    let one = sdp(&["get", "sandbox", &name]);
    assert!(one.contains("account") && one.contains("running"), "{one}");

    // No gateway agent: the sandbox says what it waits for.
    let sandbox = get_json(&format!("{api}/api/v1/sandboxes/{name}")).unwrap();
    let error = sandbox["status"]["lastError"].as_str().unwrap_or_default().to_string();
    assert!(error.contains("waiting for a gateway agent"), "{sandbox}");

    // A push to the branch: the agent sees the moved head, and only the account container is replaced.
    let second = account.push(BRANCH, "name.go", "package main\n\nconst NAME = \"account-v2\"\n");
    let answer = wait_for(
        "the pushed commit to be deployed",
        Duration::from_secs(120),
        || match get_text(&url) {
            Ok(a) if a.contains(&second) => Ok(a),
            other => Err(format!("{other:?}")),
        },
    );
    assert_eq!(answer.trim(), format!("account-v2 {name} {BRANCH} {second}"));
    assert_ne!(
        inspect(&container, "{{.Id}}").unwrap(),
        first_id,
        "a new container for the new commit"
    );

    // `sdp restart` commits a stamp; the plan replaces that container, with the same commit.
    let before_restart = inspect(&container, "{{.Id}}").unwrap();
    run(Command::new(bins.join("sdp"))
        .args(["restart", &format!("{name}/account"), "--repo"])
        .arg(&cluster.config)
        .env("GIT_AUTHOR_NAME", "Ann Tester")
        .env("GIT_AUTHOR_EMAIL", "ann@example.com")
        .env("GIT_COMMITTER_NAME", "Ann Tester")
        .env("GIT_COMMITTER_EMAIL", "ann@example.com"));
    wait_for(
        "the restart to replace the container",
        Duration::from_secs(60),
        || match inspect(&container, "{{.Id}}") {
            Some(id) if id != before_restart && get_text(&url).is_ok_and(|a| a.contains(&second)) => Ok(()),
            other => Err(format!("{other:?}")),
        },
    );

    // An invalid manifest for the running sandbox: it keeps running unchanged, and the error shows.
    let running_id = inspect(&container, "{{.Id}}").unwrap();
    let broken =
        sandbox_yaml(&name, service_port, gateway_port).replace("    branch: develop\n", "    brnch: develop\n");
    cluster.commit(&format!("sandboxes/{name}.yaml"), &broken, "a typo");
    let committed_at = hub_now_ms();
    let shown = wait_for("the error to show after a pass", Duration::from_secs(30), || {
        let sb = get_json(&format!("{api}/api/v1/sandboxes/{name}"))?;
        let passed = sb["status"]["lastPassMs"].as_u64().unwrap_or(0) > committed_at;
        if passed && !sb["configErrors"].is_null() {
            Ok(sb)
        } else {
            Err(sb.to_string())
        }
    });
    assert!(shown["configErrors"].to_string().contains("brnch"), "{shown}");
    assert!(shown["status"]["lastError"].to_string().contains("brnch"), "{shown}");
    let listing = sdp(&["get", "sandboxes"]);
    assert!(listing.contains("brnch"), "sdp get shows the error: {listing}");
    assert_eq!(
        inspect(&container, "{{.Id}}").unwrap(),
        running_id,
        "the running container is untouched"
    );
    assert!(get_text(&url).unwrap().contains(&second));

    // A container SDP does not own, with SDP's sandbox label: never removed.
    let stranger = format!("stranger-{name}");
    run(Command::new("docker").args([
        "create",
        "--name",
        &stranger,
        "--label",
        &format!("sdp.sandbox={name}"),
        image,
        "sleep",
        "60",
    ]));

    // Deleting the manifest removes the container, the worktree and the network.
    cluster.remove(&format!("sandboxes/{name}.yaml"), "delete the sandbox");
    wait_for("the container and network to go", Duration::from_secs(60), || {
        let container_left = inspect(&container, "{{.Id}}").is_some();
        let network_left = Command::new("docker")
            .args(["network", "inspect", &format!("sandbox-{name}")])
            .output()
            .is_ok_and(|o| o.status.success());
        if !container_left && !network_left {
            Ok(())
        } else {
            Err(format!("container {container_left}, network {network_left}"))
        }
    });
    let worktree = cluster.path().join(format!("agent-micro-it/worktrees/{name}/account"));
    assert!(!worktree.exists(), "the worktree is removed");
    assert!(
        inspect(&stranger, "{{.Id}}").is_some(),
        "the container SDP does not own is still there"
    );
    let _ = Command::new("docker").args(["rm", "-f", &stranger]).output();
}
