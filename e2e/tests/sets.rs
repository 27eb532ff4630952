//! A SandboxSet on the real engine with both agents: pushing `feature/a` and `feature/b` of a service makes two
//! sandboxes that converge and answer with their branch's commit, directly and through their own gateways; a third branch is over the cap of 2 and is
//! listed as skipped; deleting `feature/a` removes its sandbox (containers, network, ports) and the cap then makes
//! `feature/c`'s.

use std::process::Command;
use std::time::Duration;

use sdp_e2e::*;

/// The sandbox document of `name` once it is Synced.
fn synced(cluster: &Cluster, name: &str) -> serde_json::Value {
    wait_for(&format!("sandbox {name} to converge"), Duration::from_secs(240), || {
        let sb = cluster.get(&format!("/api/v1/sandboxes/{name}"))?;
        if sb["status"]["sync"] == "Synced" {
            Ok(sb)
        } else {
            Err(format!("{sb}\n{}", cluster.logs()))
        }
    })
}

fn host_port(sb: &serde_json::Value) -> u16 {
    sb["desired"]["services"]["account"]["hostPort"]
        .as_u64()
        .unwrap_or_else(|| panic!("no account port in {sb}")) as u16
}

/// The names of the containers and networks of `sandbox` on the engine.
fn on_engine(sandbox: &str) -> String {
    let filter = format!("label=sdp.sandbox={sandbox}");
    let containers = run(Command::new("docker").args(["ps", "-aq", "--filter", &filter]));
    let networks =
        run(Command::new("docker").args(["network", "ls", "-q", "--filter", &format!("name=^sandbox-{sandbox}$")]));
    format!("{containers}{networks}")
}

#[test]
fn a_set_makes_a_sandbox_per_branch_and_removes_it_with_its_branch() {
    let prefix = format!("set{}", suffix());
    let name = |b: &str| format!("{prefix}-{b}");
    // Declared before the cluster: dropped after it, so no pass makes the containers again.
    let _cleanup: Vec<DockerCleanup> = ["a", "b", "c"]
        .iter()
        .map(|b| DockerCleanup { sandbox: name(b) })
        .collect();
    let mut cluster = Cluster::start();
    let host = docker_host_ip();
    let account = ServiceRepo::new(cluster.path(), "account", "develop");
    let gateway = gateway_repo(cluster.path(), "develop", &["account"], "http://127.0.0.1:9");
    let micro = cluster.agent_yaml(
        "micro-set",
        "micro",
        &[("account", &account.clone)],
        "containerPort: 8080\n",
    );
    let micro_yaml = std::fs::read_to_string(&micro)
        .unwrap()
        .replace("address: 127.0.0.1", &format!("address: {host}"));
    std::fs::write(&micro, micro_yaml).unwrap();
    let gw = cluster.agent_yaml("gateway-set", "gateway", &[("gateway", &gateway.clone)], "");
    cluster.start_agent(&micro, "micro-set");
    cluster.start_agent(&gw, "gateway-set");

    cluster.commit(
        "templates/feature.yaml",
        "apiVersion: sdp/v1\nkind: SandboxTemplate\nmetadata:\n  name: feature\nspec:\n  gateway:\n    branch: develop\n  \
         services:\n    account:\n      branch: develop\n  routes:\n    account: sandbox\n",
        "a template",
    );
    cluster.commit(
        "sandboxsets/features.yaml",
        &format!(
            "apiVersion: sdp/v1\nkind: SandboxSet\nmetadata:\n  name: features\nspec:\n  template: feature\n  service: \
             account\n  branches: feature/*\n  namePrefix: {prefix}\n  max: 2\n  keepIdle: true\n"
        ),
        "a sandbox per feature branch",
    );
    let a = account.push("feature/a", "a.txt", "a\n");
    let b = account.push("feature/b", "b.txt", "b\n");

    // 1. Two sandboxes, each running its branch's commit, made by the set.
    let sb_a = synced(&cluster, &name("a"));
    let sb_b = synced(&cluster, &name("b"));
    assert_eq!(sb_a["generatedBy"], "features", "{sb_a}");
    assert_eq!(sb_a["desired"]["services"]["account"]["branch"], "feature/a");
    assert_eq!(sb_b["desired"]["services"]["account"]["branch"], "feature/b");
    let (port_a, port_b) = (host_port(&sb_a), host_port(&sb_b));
    assert_ne!(port_a, port_b);
    wait_for("feature/a to answer", Duration::from_secs(120), answers(port_a, &a));
    wait_for("feature/b to answer", Duration::from_secs(120), answers(port_b, &b));
    // Each sandbox's own gateway sends account to that sandbox's container.
    for (sb, branch, commit) in [(&sb_a, "a", &a), (&sb_b, "b", &b)] {
        let gateway = sb["desired"]["gateway"]["hostPort"].as_u64().unwrap();
        let answer = wait_for(
            &format!("feature/{branch} through its gateway"),
            Duration::from_secs(120),
            || match get_text(&format!("http://127.0.0.1:{gateway}/account/")) {
                Ok(text) if text.contains(commit.as_str()) => Ok(text),
                other => Err(format!("{other:?}")),
            },
        );
        assert_eq!(
            answer.trim(),
            format!("account {} feature/{branch} {commit}", name(branch))
        );
    }
    let shown =
        run(Command::new(binaries().join("sdp")).args(["get", "sandbox", &name("a"), "--server", &cluster.api]));
    assert!(shown.contains("Made by set: features"), "{shown}");

    // `sdp plan` makes the same sandboxes from the branches the reconciler listed: converged, nothing to do.
    let out = Command::new(binaries().join("sdp"))
        .arg("plan")
        .arg(&cluster.config)
        .args(["--server", &cluster.api, "--format", "json"])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout).to_string();
    let plan: serde_json::Value = serde_json::from_str(&said).unwrap_or_else(|e| panic!("{e}: {said}"));
    for branch in ["a", "b"] {
        let sb = plan["sandboxes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == name(branch).as_str())
            .unwrap_or_else(|| panic!("{} not planned: {said}", name(branch)));
        assert_eq!(sb["generatedBy"], "features", "{sb}");
        assert_eq!(sb["change"], "unchanged", "{sb}");
        assert_eq!(sb["actions"], serde_json::json!([]), "{sb}");
    }
    assert_eq!(out.status.code(), Some(0), "{said}");

    // 2. A third branch is over the cap: skipped, with the reason, and no sandbox.
    let c_commit = account.push("feature/c", "c.txt", "c\n");
    let actual = wait_for("feature/c to be skipped", Duration::from_secs(60), || {
        let actual = cluster.get("/api/v1/actual")?;
        let skipped = actual["skipped"].as_array().cloned().unwrap_or_default();
        if skipped.iter().any(|s| s["branch"] == "feature/c") {
            Ok(actual)
        } else {
            Err(actual["skipped"].to_string())
        }
    });
    let skipped = &actual["skipped"][0];
    assert!(skipped["reason"].as_str().unwrap().contains("cap of 2"), "{skipped}");
    assert!(actual["branches"]["account"].as_array().unwrap().len() >= 4, "{actual}");
    let c = cluster.get(&format!("/api/v1/sandboxes/{}", name("c")));
    assert!(c.is_err() || c.as_ref().unwrap()["desired"].is_null(), "{c:?}");

    // 3. feature/a deleted: its sandbox goes (containers, network, ports), and the cap now makes feature/c's.
    git(&account.origin, &["branch", "-D", "feature/a"]);
    wait_for("feature/a's sandbox to be removed", Duration::from_secs(120), || {
        let left = on_engine(&name("a"));
        if left.trim().is_empty() { Ok(()) } else { Err(left) }
    });
    wait_for("feature/a's ports to be released", Duration::from_secs(60), || {
        let actual = cluster.get("/api/v1/actual")?;
        let ports = actual["ports"].as_array().cloned().unwrap_or_default();
        if ports.iter().any(|p| p["sandbox"] == name("a").as_str()) {
            Err(actual["ports"].to_string())
        } else {
            Ok(())
        }
    });
    let sb_c = synced(&cluster, &name("c"));
    assert_eq!(sb_c["desired"]["services"]["account"]["branch"], "feature/c");
    // The released port may go straight to feature/c's sandbox (the lowest free port): then it answers as c,
    // never as a; otherwise nothing answers on it.
    if host_port(&sb_c) == port_a {
        wait_for(
            "feature/c on a's old port",
            Duration::from_secs(120),
            || match get_text(&format!("http://127.0.0.1:{port_a}/")) {
                Ok(text) if text.contains(a.as_str()) => panic!("port {port_a} answers as removed feature/a: {text}"),
                Ok(text) if text.contains(c_commit.as_str()) => Ok(text),
                other => Err(format!("{other:?}")),
            },
        );
    } else {
        let left = get_text(&format!("http://127.0.0.1:{port_a}/"));
        assert!(left.is_err(), "port {port_a} still answers: {left:?}");
    }
    // feature/b's sandbox was left as it was.
    wait_for(
        "feature/b to answer still",
        Duration::from_secs(30),
        answers(port_b, &b),
    );
    let actual = cluster.get("/api/v1/actual").unwrap();
    assert_eq!(actual["skipped"], serde_json::json!([]), "{actual}");
}
