//! Scenario 7 of issue 5: a reconciler killed with -9 mid-deploy converges without duplicates or lost history; an
//! agent killed mid-deploy fails the deploy visibly, and it succeeds after the agent returns.

use std::process::Command;
use std::time::{Duration, Instant};

use sdp_e2e::*;

const LONG: Duration = Duration::from_secs(120);

fn deployments(api: &str, sandbox: &str) -> Vec<serde_json::Value> {
    get_json(&format!("{api}/api/v1/deployments?sandbox={sandbox}"))
        .ok()
        .and_then(|v| v.as_array().cloned())
        .unwrap_or_default()
}

#[test]
fn killed_mid_deploy_the_reconciler_and_the_agent_recover() {
    let mut cluster = Cluster::start();
    let name = format!("kd-{}", suffix());
    let _clean = DockerCleanup { sandbox: name.clone() };
    let account = ServiceRepo::new(cluster.path(), "account", "main");
    let yaml = cluster.agent_yaml(
        "micro-kd",
        "micro",
        &[("account", &account.clone)],
        "containerPort: 8080\n",
    );
    let agent = cluster.start_agent(&yaml, "micro-kd");
    let port = cluster.service_port();
    let file = format!("sandboxes/{name}.yaml");
    cluster.commit(
        &file,
        &sandbox_manifest(&name, &[("account", "main", port)], ""),
        "a sandbox",
    );
    let first = git(&account.origin, &["rev-parse", "main"]);
    wait_for("the first deploy", LONG, || {
        answers(port, &first)().map_err(|e| format!("{e}\n{}", cluster.logs()))
    });
    let api = cluster.api.clone();
    let history = deployments(&api, &name).len();

    // 7a. kill -9 the reconciler right after a commit that needs a deploy, then start it again.
    let pushed = account.push("main", "name.go", "package main\n\nconst NAME = \"account-kill\"\n");
    let started = Instant::now();
    wait_for("the redeploy to start", LONG, || {
        let d = deployments(&api, &name);
        if d.len() > history {
            Ok(())
        } else {
            Err(format!("{} deployments", d.len()))
        }
    });
    run(Command::new("kill").args(["-9", &cluster.serve.child.id().to_string()]));
    eprintln!("reconciler killed {:?} after the push", started.elapsed());
    cluster.restart_serve();
    wait_for("convergence after the restart", LONG, answers(port, &pushed));
    let filter = format!("label=sdp.sandbox={name}");
    let listed = run(Command::new("docker").args(["ps", "-aq", "--filter", &filter]));
    assert_eq!(
        listed.lines().count(),
        1,
        "exactly one container for the one service: {listed}"
    );
    let after = deployments(&api, &name);
    assert!(after.len() > history, "the history survived the kill: {after:?}");
    assert!(
        after
            .iter()
            .any(|d| d["commit"] == first.as_str() && d["state"] == "succeeded"),
        "{after:?}"
    );

    // 7b. kill the agent while a deploy runs: that deploy fails visibly, and succeeds once the agent is back.
    let known = deployments(&api, &name).len();
    let third = account.push("main", "main2.go", "package main\n\nfunc init() { _ = 3 }\n");
    let running = wait_for("a deployment to be running", LONG, || {
        let d = deployments(&api, &name);
        match d.first() {
            Some(latest) if d.len() > known && latest["state"] == "running" => Ok(latest["id"].clone()),
            Some(latest) if d.len() > known => Err(format!("the deploy finished before the kill: {latest}")),
            _ => Err("no new deployment yet".into()),
        }
    });
    cluster.agents[agent].kill();
    let failed = wait_for("the deployment to fail", Duration::from_secs(30), || {
        let d = get_json(&format!("{api}/api/v1/deployments/{running}"))?;
        if d["state"] == "failed" {
            Ok(d)
        } else {
            Err(d.to_string())
        }
    });
    assert!(
        failed["error"].as_str().unwrap_or_default().contains("disconnected"),
        "{failed}"
    );
    cluster.start_agent(&yaml, "micro-kd");
    wait_for(
        "the deploy to succeed after the agent returns",
        LONG,
        answers(port, &third),
    );
}
