//! Both agents on the real engine: a sandbox's gateway sends its routed service to the sandbox's container and
//! the others to the OCP stand-in; moving a route changes config.php and the traffic without restarting any
//! container; a hand edit of config.php is drift, reported and healed.

use std::process::Command;
use std::time::Duration;

use sdp_e2e::*;

fn manifest(name: &str, account_route: &str, service_port: u16, gateway_port: u16) -> String {
    format!(
        "apiVersion: sdp/v1\nkind: Sandbox\nmetadata:\n  name: {name}\nspec:\n  gateway:\n    branch: develop\n    port: {gateway_port}\n  services:\n    account:\n      branch: main\n      port: {service_port}\n  routes:\n    account: {account_route}\n    payment: ocp\n"
    )
}

fn container_id(name: &str) -> String {
    run(Command::new("docker").args(["inspect", "-f", "{{.Id}}", name]))
}

fn through(gateway_port: u16, path: &str) -> Result<String, String> {
    get_text(&format!("http://127.0.0.1:{gateway_port}{path}"))
}

#[test]
fn the_gateway_routes_to_the_sandbox_or_ocp_and_follows_the_manifest() {
    let mut cluster = Cluster::start();
    let name = format!("gw-{}", suffix());
    let _cleanup = DockerCleanup { sandbox: name.clone() };
    let host = docker_host_ip();
    let ocp = OcpStandIn::start(&["account", "payment", "user"]);
    let ocp_url = format!("http://{host}:{}", ocp.port);

    let account = ServiceRepo::new(cluster.path(), "account", "main");
    let gateway = gateway_repo(cluster.path(), "develop", &["account", "payment", "user"], &ocp_url);
    let micro = cluster.micro_yaml_reachable("micro-gw", &[("account", &account.clone)], "containerPort: 8080\n");
    let gw = cluster.agent_yaml(
        "gateway-gw",
        "gateway",
        &[("gateway", &gateway.clone)],
        // The gateway role's defaults: php:8.3-apache's port 80, erangel's mount, apachectl -k graceful.
        "",
    );
    cluster.start_agent(&micro, "micro-gw");
    cluster.start_agent(&gw, "gateway-gw");

    let (service_port, gateway_port) = (cluster.service_port(), cluster.gateway_port());
    let file = format!("sandboxes/{name}.yaml");
    // `sdp apply --wait` commits the sandbox and follows it until it is synced.
    let mine = cluster.path().join(format!("{name}.yaml"));
    std::fs::write(&mine, manifest(&name, "sandbox", service_port, gateway_port)).unwrap();
    let applied = run(Command::new(binaries().join("sdp"))
        .args(["apply", "-f"])
        .arg(&mine)
        .arg("--repo")
        .arg(&cluster.config)
        .args(["--wait", "--wait-secs", "180", "--server", &cluster.api])
        .env("GIT_AUTHOR_NAME", "Ann Tester")
        .env("GIT_AUTHOR_EMAIL", "ann@example.com")
        .env("GIT_COMMITTER_NAME", "Ann Tester")
        .env("GIT_COMMITTER_EMAIL", "ann@example.com"));
    assert!(applied.contains("step(s) left"), "progress is shown: {applied}");
    assert!(applied.contains("synced in"), "{applied}");

    // 1. The routed service reaches the sandbox's container; an unrouted one reaches OCP.
    let commit = git(&account.origin, &["rev-parse", "main"]);
    let answer = wait_for(
        "account through the gateway",
        Duration::from_secs(180),
        || match through(gateway_port, "/account/") {
            Ok(a) if a.contains(&commit) => Ok(a),
            other => Err(format!("{other:?}\n{}", cluster.logs())),
        },
    );
    assert_eq!(answer.trim(), format!("account {name} main {commit}"));
    assert_eq!(through(gateway_port, "/payment/").unwrap().trim(), "ocp payment");
    assert_eq!(through(gateway_port, "/user/").unwrap().trim(), "ocp user");

    // The API shows the live routes, and they match.
    let api = cluster.api.clone();
    let sandbox = wait_for("the sandbox to be synced", Duration::from_secs(60), || {
        let sb = get_json(&format!("{api}/api/v1/sandboxes/{name}"))?;
        if sb["status"]["sync"] == "Synced" {
            Ok(sb)
        } else {
            Err(sb["status"].to_string())
        }
    });
    assert_eq!(
        sandbox["actual"]["routes"]["account"],
        format!("http://{host}:{service_port}")
    );
    assert_eq!(
        sandbox["actual"]["routeDefaults"]["account"],
        format!("{ocp_url}/account")
    );
    assert_eq!(sandbox["gatewayUrl"], format!("http://127.0.0.1:{gateway_port}"));

    let ids = (
        container_id(&format!("sandbox-{name}-account")),
        container_id(&format!("sandbox-{name}-gateway")),
    );
    let worktree = cluster
        .path()
        .join(format!("agent-gateway-gw/worktrees/{name}/gateway"));
    let config_php = worktree.join("application/config/production/config.php");
    let branch_file = git(
        &gateway.clone,
        &["show", "origin/develop:application/config/production/config.php"],
    );

    // 3. The route moves to OCP in the manifest: config.php follows, traffic follows, nothing restarts.
    cluster.commit(
        &file,
        &manifest(&name, "ocp", service_port, gateway_port),
        "account back to OCP",
    );
    wait_for("account to go to OCP", Duration::from_secs(60), || {
        match through(gateway_port, "/account/") {
            Ok(a) if a.trim() == "ocp account" => Ok(()),
            other => Err(format!("{other:?}")),
        }
    });
    let now = std::fs::read_to_string(&config_php).unwrap();
    assert_eq!(
        now.trim_end(),
        branch_file.trim_end(),
        "config.php is the branch's own file again, byte for byte"
    );
    assert_eq!(
        (
            container_id(&format!("sandbox-{name}-account")),
            container_id(&format!("sandbox-{name}-gateway"))
        ),
        ids,
        "no container was restarted"
    );

    // 4. A hand edit of config.php is drift: seen, then healed.
    let edited = now.replace(&format!("{ocp_url}/payment"), "http://someone-else:1");
    std::fs::write(&config_php, &edited).unwrap();
    wait_for("the hand edit to be healed", Duration::from_secs(60), || {
        let text = std::fs::read_to_string(&config_php).unwrap();
        if text.contains(&format!("{ocp_url}/payment")) {
            Ok(())
        } else {
            Err(text)
        }
    });
    let events = get_json(&format!("{api}/api/v1/sandboxes/{name}")).unwrap()["events"].to_string();
    assert!(events.contains("routes"), "the healing is in the events: {events}");
    assert_eq!(through(gateway_port, "/payment/").unwrap().trim(), "ocp payment");
}
