//! Pins, snapshots and rollback on the real engine with both agents: a pinned service stays at its commit when its
//! branch moves; unpinned it follows the branch again; a snapshot records what runs, and a rollback to it brings
//! the old commit back after the branch has moved on.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use sdp_e2e::*;

const BRANCH: &str = "feature/pins";

fn container_commit(container: &str) -> String {
    run(Command::new("docker").args(["inspect", "-f", "{{index .Config.Labels \"sdp.commit\"}}", container]))
}

fn container_id(container: &str) -> String {
    run(Command::new("docker").args(["inspect", "-f", "{{.Id}}", container]))
}

/// `sdp ARGS --repo CONFIG --server API` as Ann, who commits.
fn sdp(cluster: &Cluster, args: &[&str]) -> String {
    run(Command::new(binaries().join("sdp"))
        .args(args)
        .arg("--repo")
        .arg(&cluster.config)
        .args(["--server", &cluster.api])
        .env("GIT_AUTHOR_NAME", "Ann Tester")
        .env("GIT_AUTHOR_EMAIL", "ann@example.com")
        .env("GIT_COMMITTER_NAME", "Ann Tester")
        .env("GIT_COMMITTER_EMAIL", "ann@example.com"))
}

fn read(config: &Path, file: &str) -> String {
    std::fs::read_to_string(config.join(file)).unwrap()
}

#[test]
fn a_pinned_service_stays_put_and_a_rollback_brings_the_snapshots_commit_back() {
    let mut cluster = Cluster::start();
    let name = format!("pin-{}", suffix());
    let _cleanup = DockerCleanup { sandbox: name.clone() };
    let account = ServiceRepo::new(cluster.path(), "account", BRANCH);
    let gateway = gateway_repo(cluster.path(), "develop", &["account"], "http://127.0.0.1:9");
    let micro = cluster.micro_yaml_reachable("micro-pin", &[("account", &account.clone)], "containerPort: 8080\n");
    let gw = cluster.agent_yaml("gateway-pin", "gateway", &[("gateway", &gateway.clone)], "");
    cluster.start_agent(&micro, "micro-pin");
    cluster.start_agent(&gw, "gateway-pin");

    let (service_port, gateway_port) = (cluster.service_port(), cluster.gateway_port());
    let file = format!("sandboxes/{name}.yaml");
    cluster.commit(
        &file,
        &format!(
            "apiVersion: sdp/v1\nkind: Sandbox\nmetadata:\n  name: {name}\nspec:\n  gateway:\n    branch: develop\n    \
             port: {gateway_port}\n  services:\n    account:\n      branch: {BRANCH}  # under test\n      port: \
             {service_port}\n  routes:\n    account: sandbox\n"
        ),
        "a sandbox",
    );
    let first = git(&account.origin, &["rev-parse", BRANCH]);
    wait_for("the first commit to answer", Duration::from_secs(180), || {
        answers(service_port, &first)().map_err(|e| format!("{e}\n{}", cluster.logs()))
    });
    let container = format!("sandbox-{name}-account");
    let gateway_container = format!("sandbox-{name}-gateway");
    wait_for("the gateway to run", Duration::from_secs(180), || {
        let sb = cluster.get(&format!("/api/v1/sandboxes/{name}"))?;
        if sb["status"]["sync"] == "Synced" {
            Ok(())
        } else {
            Err(format!("{sb}\n{}", cluster.logs()))
        }
    });

    // 1. Pinned to what runs (from the API), the account service stays there when its branch moves.
    let pinned = sdp(&cluster, &["pin", &name, "account", "--wait", "--wait-secs", "180"]);
    assert!(pinned.contains(&format!("pinned to {}", &first[..12])), "{pinned}");
    assert!(read(&cluster.config, &file).contains(&format!("# under test\n      commit: {first}\n")));
    let pinned_id = container_id(&container);
    let second = account.push(BRANCH, "name.go", "package main\n\nconst NAME = \"account-v2\"\n");
    let seen_at = wait_for("the agent to report the moved branch", Duration::from_secs(60), || {
        let nodes = cluster.get("/api/v1/nodes")?;
        let seen = nodes.as_array().into_iter().flatten().any(|n| {
            n["heads"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|h| h["repo"] == "account" && h["commit"] == second.as_str())
        });
        if seen {
            Ok(std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_millis() as u64)
        } else {
            Err(nodes.to_string())
        }
    });
    let after_push = wait_for("a pass after the push was seen", Duration::from_secs(90), || {
        let sb = cluster.get(&format!("/api/v1/sandboxes/{name}"))?;
        if sb["status"]["lastPassMs"].as_u64().unwrap_or(0) > seen_at {
            Ok(sb)
        } else {
            Err(sb.to_string())
        }
    });
    assert_eq!(after_push["status"]["pending"], serde_json::json!([]), "{after_push}");
    assert_eq!(container_commit(&container), first, "the pinned service did not move");
    assert_eq!(container_id(&container), pinned_id, "nor was it replaced");
    assert!(
        get_text(&format!("http://127.0.0.1:{service_port}/"))
            .unwrap()
            .contains(&first)
    );
    let shown = run(Command::new(binaries().join("sdp")).args(["get", "sandbox", &name, "--server", &cluster.api]));
    assert!(shown.contains("PINNED") && shown.contains(&first[..12]), "{shown}");

    // 2. Unpinned, it follows the branch to its head.
    sdp(&cluster, &["unpin", &name, "account", "--wait", "--wait-secs", "180"]);
    wait_for(
        "the branch head to answer",
        Duration::from_secs(180),
        answers(service_port, &second),
    );

    // 3. A snapshot of what runs now; the branch moves on; the rollback brings the snapshot's commit back.
    let gateway_at = container_commit(&gateway_container);
    let snapshot = format!("{name}-snap");
    sdp(&cluster, &["snapshot", &name, &snapshot]);
    let template = read(&cluster.config, &format!("templates/{snapshot}.yaml"));
    assert!(
        template.contains(&format!("commit: {second}")) && template.contains(&format!("commit: {gateway_at}")),
        "{template}"
    );
    let third = account.push(BRANCH, "name.go", "package main\n\nconst NAME = \"account-v3\"\n");
    wait_for(
        "the third commit to answer",
        Duration::from_secs(180),
        answers(service_port, &third),
    );
    let rolled = sdp(
        &cluster,
        &["rollback", &name, "--to", &snapshot, "--wait", "--wait-secs", "180"],
    );
    assert!(
        rolled.contains(&format!("service account pinned to {}", &second[..12])),
        "{rolled}"
    );
    wait_for(
        "the snapshot's commit to answer again",
        Duration::from_secs(180),
        answers(service_port, &second),
    );
    assert_eq!(container_commit(&container), second);
    assert_eq!(container_commit(&gateway_container), gateway_at);
}
