//! `sdp plan --server` against a running reconciler with both agents on the real engine: for a change in the
//! config repo's working tree, not yet committed, it lists the actions that the reconciler then performs once the
//! change is committed, no more and no fewer (read back from each sandbox's events and deployments), and the
//! port it says a new sandbox gets is the one it gets; before and after, on a converged world, it says nothing
//! would change.

use std::collections::BTreeMap;
use std::process::{Command, Output};
use std::time::Duration;

use sdp_e2e::*;
use serde_json::Value;

fn manifest(name: &str, branch: &str, service_port: u16, gateway_port: u16, extra_route: &str) -> String {
    format!(
        "apiVersion: sdp/v1\nkind: Sandbox\nmetadata:\n  name: {name}\nspec:\n  gateway:\n    branch: develop\n    port: {gateway_port}\n  services:\n    account:\n      branch: {branch}\n      port: {service_port}\n  routes:\n    account: sandbox\n{extra_route}"
    )
}

fn plan(cluster: &Cluster, format: &str) -> Output {
    Command::new(binaries().join("sdp"))
        .arg("plan")
        .arg(&cluster.config)
        .args(["--server", &cluster.api, "--format", format])
        .output()
        .unwrap()
}

fn said(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The sandbox's events after `seq`, oldest first.
fn events_after(cluster: &Cluster, name: &str, seq: u64) -> Vec<String> {
    let Ok(doc) = cluster.get(&format!("/api/v1/sandboxes/{name}")) else {
        return Vec::new();
    };
    let mut list: Vec<(u64, String)> = doc["events"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["seq"].as_u64().is_some_and(|s| s > seq))
        .map(|e| {
            (
                e["seq"].as_u64().unwrap(),
                e["message"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    list.sort();
    list.into_iter().map(|(_, m)| m).collect()
}

fn last_event(cluster: &Cluster) -> u64 {
    let mut last = 0;
    for sb in cluster.get("/api/v1/sandboxes").unwrap().as_array().unwrap() {
        let doc = cluster
            .get(&format!("/api/v1/sandboxes/{}", sb["name"].as_str().unwrap()))
            .unwrap();
        for e in doc["events"].as_array().unwrap() {
            last = last.max(e["seq"].as_u64().unwrap());
        }
    }
    last
}

/// Waits until every sandbox of `names` has had a pass that ended after `since_ms` on `commit` and is Synced.
fn wait_synced(cluster: &Cluster, names: &[&str], commit: &str, since_ms: u64) {
    wait_for(
        "the sandboxes to converge on the commit",
        Duration::from_secs(240),
        || {
            for name in names {
                let sb = cluster.get(&format!("/api/v1/sandboxes/{name}"))?;
                let done = sb["configCommit"] == commit
                    && sb["status"]["sync"] == "Synced"
                    && sb["status"]["lastPassMs"].as_u64().is_some_and(|t| t > since_ms);
                if !done {
                    return Err(format!("{name}: {}\n{}", sb["status"], cluster.logs()));
                }
            }
            Ok(())
        },
    );
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

#[test]
fn plan_lists_exactly_the_actions_the_reconciler_then_performs() {
    let name = format!("pl-{}", suffix());
    let added = format!("{name}-b");
    // Declared before the cluster, so dropped after it: a reconciler still running would make them again.
    let _cleanup = (
        DockerCleanup { sandbox: name.clone() },
        DockerCleanup { sandbox: added.clone() },
    );
    let mut cluster = Cluster::start();
    let host = docker_host_ip();
    let ocp = OcpStandIn::start(&["account", "payment", "user"]);
    let ocp_url = format!("http://{host}:{}", ocp.port);
    let account = ServiceRepo::new(cluster.path(), "account", "main");
    account.push("feature/two", "two.go", "package main\n");
    let gateway = gateway_repo(cluster.path(), "develop", &["account", "payment", "user"], &ocp_url);
    let micro = cluster.micro_yaml_reachable("micro-pl", &[("account", &account.clone)], "containerPort: 8080\n");
    let gw = cluster.agent_yaml("gateway-pl", "gateway", &[("gateway", &gateway.clone)], "");
    cluster.start_agent(&micro, "micro-pl");
    cluster.start_agent(&gw, "gateway-pl");

    // 1. A sandbox, committed and converged: the plan of the repo as it is says nothing would change.
    let (service_port, gateway_port) = (cluster.service_port(), cluster.gateway_port());
    let file = format!("sandboxes/{name}.yaml");
    let started = now_ms();
    cluster.commit(
        &file,
        &manifest(&name, "main", service_port, gateway_port, ""),
        "a sandbox",
    );
    let head = git(&cluster.config, &["rev-parse", "HEAD"]);
    wait_synced(&cluster, &[&name], &head, started);
    let out = plan(&cluster, "text");
    assert_eq!(out.status.code(), Some(0), "{}", said(&out));
    assert!(said(&out).contains("nothing would change (exit 0)"), "{}", said(&out));

    // 2. The change, in the working tree only: account moves to another branch, user is routed to a URL, and a
    // new sandbox with a gateway only, on a port the reconciler gives out.
    let user_url = format!("{ocp_url}/user-two");
    cluster_write(
        &cluster,
        &file,
        &manifest(
            &name,
            "feature/two",
            service_port,
            gateway_port,
            &format!("    user: {user_url}\n"),
        ),
    );
    cluster_write(
        &cluster,
        &format!("sandboxes/{added}.yaml"),
        &format!(
            "apiVersion: sdp/v1\nkind: Sandbox\nmetadata:\n  name: {added}\nspec:\n  gateway:\n    branch: develop\n  \
             services:\n    account:\n      branch: main\n"
        ),
    );
    let out = plan(&cluster, "json");
    assert_eq!(out.status.code(), Some(2), "{}", said(&out));
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["configCommit"], head.as_str());
    let sandboxes: BTreeMap<String, &Value> = doc["sandboxes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["name"].as_str().unwrap().to_string(), s))
        .collect();
    assert_eq!(sandboxes[&name]["change"], "changed");
    assert_eq!(sandboxes[&added]["change"], "added");
    let planned = |sandbox: &str| -> Vec<String> {
        sandboxes[sandbox]["actions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| {
                let says = a["says"].as_str().unwrap().to_string();
                // A deploy's event names the container and the reason; every other step's event is the step.
                match a["action"].as_str().unwrap() {
                    "deployService" | "deployGateway" => {
                        let reason = says.split_once(" (").unwrap().1;
                        format!("deployed {} ({reason}", a["resource"].as_str().unwrap())
                    }
                    _ => says,
                }
            })
            .collect()
    };
    let (changed_plan, added_plan) = (planned(&name), planned(&added));
    // What the plan must hold, so that the comparison below is not of two empty lists.
    assert_eq!(
        changed_plan,
        [
            format!("deployed sandbox-{name}-account (spec changed)"),
            format!("set routes of {name} on gateway (routes differ: user)"),
        ],
        "{doc:#}"
    );
    assert_eq!(added_plan.len(), 5, "two networks, account, gateway, routes: {doc:#}");
    let ports: BTreeMap<String, u16> = doc["ports"]["added"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            assert_eq!(p["sandbox"], added.as_str(), "{doc:#}");
            (
                p["service"].as_str().unwrap().to_string(),
                p["port"].as_u64().unwrap() as u16,
            )
        })
        .collect();
    assert_eq!(ports.len(), 2, "{doc:#}");
    assert!(cluster.gateway_ports.contains(&ports["gateway"]), "{ports:?}");
    assert!(cluster.service_ports.contains(&ports["account"]), "{ports:?}");
    assert_eq!(doc["ports"]["removed"].as_array().unwrap().len(), 0);
    let deployments_before = cluster.get("/api/v1/deployments").unwrap().as_array().unwrap().len();

    // 3. Committed: the reconciler does exactly that.
    let seq = last_event(&cluster);
    let committed_at = now_ms();
    git(&cluster.config, &["add", "-A"]);
    git(&cluster.config, &["commit", "-qm", "the change"]);
    let head = git(&cluster.config, &["rev-parse", "HEAD"]);
    wait_synced(&cluster, &[&name, &added], &head, committed_at);
    let done_changed = events_after(&cluster, &name, seq);
    let done_added = events_after(&cluster, &added, seq);
    let strip = |events: Vec<String>| -> Vec<String> {
        // `deployed X (reason), deployment N`: the deployment's id is not the plan's to know.
        events
            .into_iter()
            .map(|e| match e.rsplit_once("), deployment ") {
                Some((head, _)) => format!("{head})"),
                None => e,
            })
            .collect()
    };
    assert_eq!(
        deploys_as_sets(strip(done_changed)),
        deploys_as_sets(changed_plan),
        "{}",
        cluster.logs()
    );
    assert_eq!(
        deploys_as_sets(strip(done_added)),
        deploys_as_sets(added_plan),
        "{}",
        cluster.logs()
    );
    let deployments = cluster.get("/api/v1/deployments").unwrap();
    let new: Vec<(String, String, String)> = deployments.as_array().unwrap()
        [..deployments.as_array().unwrap().len() - deployments_before]
        .iter()
        .map(|d| {
            (
                d["sandbox"].as_str().unwrap().to_string(),
                d["service"].as_str().unwrap().to_string(),
                d["reason"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let mut new = new;
    new.sort();
    let mut expected = vec![
        (name.clone(), "account".to_string(), "spec changed".to_string()),
        (added.clone(), "account".to_string(), "missing".to_string()),
        (added.clone(), "gateway".to_string(), "missing".to_string()),
    ];
    expected.sort();
    assert_eq!(new, expected);
    let sb = cluster.get(&format!("/api/v1/sandboxes/{added}")).unwrap();
    // The ports the plan said are the ones given.
    assert_eq!(
        sb["desired"]["gateway"]["hostPort"].as_u64(),
        Some(ports["gateway"] as u64)
    );
    assert_eq!(
        sb["desired"]["services"]["account"]["hostPort"].as_u64(),
        Some(ports["account"] as u64)
    );

    // 4. Converged again: nothing would change.
    let out = plan(&cluster, "json");
    assert_eq!(out.status.code(), Some(0), "{}", said(&out));
}

/// Steps and events in their order, a run of consecutive deploys as one sorted group: the reconciler runs such a
/// run side by side, and they end (and say so) in any order.
fn deploys_as_sets(lines: Vec<String>) -> Vec<Vec<String>> {
    let mut out: Vec<Vec<String>> = Vec::new();
    let mut in_run = false;
    for line in lines {
        let deploy = line.starts_with("deployed ");
        match out.last_mut() {
            Some(run) if deploy && in_run => {
                run.push(line);
                run.sort();
            }
            _ => out.push(vec![line]),
        }
        in_run = deploy;
    }
    out
}

/// Writes a file of the config repo's working tree without committing it.
fn cluster_write(cluster: &Cluster, file: &str, text: &str) {
    let path = cluster.config.join(file);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}
