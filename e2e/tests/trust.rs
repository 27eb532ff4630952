//! Attacks of DESIGN's trust model, each performed on the real engine with real git, each refused with nothing else
//! changed:
//! - a gateway branch pusher commits a symlink at the agent's temp file name beside config.php, pointing at a
//!   file of the VM (it was truncated and overwritten with the patched config.php);
//! - a service branch pusher commits `z.go -> /the/agent/token` (go followed it and quoted its first word in the
//!   build error, which reached the status);
//! - a config-repo committer names the agent's token file as a secret (it reached the container's env).
//!
//! The sandbox's own honest service and routes keep working throughout.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use sdp_e2e::*;

/// Commits a symlink `link -> target` to `branch` of a repo's origin, as a pusher would.
fn push_symlink(origin: &Path, branch: &str, link: &str, target: &Path) -> String {
    let work = origin.with_extension("attacker");
    if !work.exists() {
        run(Command::new("git").args(["clone", "-q"]).arg(origin).arg(&work));
    }
    git(&work, &["checkout", "-q", branch]);
    let at = work.join(link);
    std::fs::create_dir_all(at.parent().unwrap()).unwrap();
    std::os::unix::fs::symlink(target, &at).unwrap();
    git(&work, &["add", "-A"]);
    git(&work, &["commit", "-qm", "innocent change"]);
    git(&work, &["push", "-q", "origin", branch]);
    git(&work, &["rev-parse", "HEAD"])
}

#[test]
fn branches_and_manifests_cannot_make_the_agents_write_or_read_outside_what_sdp_owns() {
    let mut cluster = Cluster::start();
    let name = format!("trust-{}", suffix());
    let _cleanup = DockerCleanup { sandbox: name.clone() };
    let victim = cluster.path().join("victim-authorized_keys");
    std::fs::write(&victim, "ssh-ed25519 AAAA the-operator\n").unwrap();

    let account = ServiceRepo::new(cluster.path(), "account", "main");
    let payment = ServiceRepo::new(cluster.path(), "payment", "main");
    let user = ServiceRepo::new(cluster.path(), "user", "main");
    push_symlink(&payment.origin, "main", "z.go", &cluster.token);
    let gateway = gateway_repo(
        cluster.path(),
        "develop",
        &["account", "payment", "user"],
        "http://ocp.invalid:8080",
    );
    push_symlink(
        &gateway.origin,
        "develop",
        "application/config/production/.config.php.sdp-tmp",
        &victim,
    );

    let secrets = cluster.path().join("secrets");
    std::fs::create_dir_all(&secrets).unwrap();
    let micro = cluster.micro_yaml_reachable(
        "micro-trust",
        &[
            ("account", &account.clone),
            ("payment", &payment.clone),
            ("user", &user.clone),
        ],
        &format!("secretsDir: {}\n", secrets.display()),
    );
    let gw = cluster.agent_yaml("gateway-trust", "gateway", &[("gateway", &gateway.clone)], "");
    cluster.start_agent(&micro, "micro-trust");
    cluster.start_agent(&gw, "gateway-trust");

    let leaky = format!(
        "apiVersion: sdp/v1\nkind: Environment\nmetadata:\n  name: leaky\nspec:\n  secrets:\n    STOLEN_TOKEN: {{ file: {} }}\n",
        cluster.token.display()
    );
    cluster.commit("environments/leaky.yaml", &leaky, "an environment");
    let (gateway_port, account_port) = (cluster.gateway_port(), cluster.service_port());
    let manifest = format!(
        "apiVersion: sdp/v1\nkind: Sandbox\nmetadata:\n  name: {name}\nspec:\n  gateway:\n    branch: develop\n    \
         port: {gateway_port}\n  services:\n    account:\n      branch: main\n      port: {account_port}\n    \
         payment:\n      branch: main\n    user:\n      branch: main\n      environments: [leaky]\n  routes:\n    \
         account: sandbox\n"
    );
    cluster.commit(&format!("sandboxes/{name}.yaml"), &manifest, "a sandbox");

    // The honest part works: account answers through the gateway, so config.php was patched.
    let commit = git(&account.origin, &["rev-parse", "main"]);
    wait_for(
        "account through the gateway",
        Duration::from_secs(240),
        || match get_text(&format!("http://127.0.0.1:{gateway_port}/account/")) {
            Ok(a) if a.contains(&commit) => Ok(()),
            other => Err(format!("{other:?}\n{}", cluster.logs())),
        },
    );
    assert_eq!(
        std::fs::read_to_string(&victim).unwrap(),
        "ssh-ed25519 AAAA the-operator\n",
        "the file behind the planted link was written"
    );

    // The other two are refused, each saying why, and the token appears nowhere.
    let api = cluster.api.clone();
    let status = wait_for("both refusals in the status", Duration::from_secs(180), || {
        let sb = get_json(&format!("{api}/api/v1/sandboxes/{name}"))?;
        let error = sb["status"]["lastError"].as_str().unwrap_or("").to_string();
        if error.contains("symbolic link z.go") && error.contains("outside this node's secrets directory") {
            Ok(sb)
        } else {
            Err(error)
        }
    });
    for answer in [
        status.to_string(),
        get_json(&format!("{api}/api/v1/deployments?sandbox={name}"))
            .unwrap()
            .to_string(),
        cluster.logs(),
    ] {
        assert!(!answer.contains(TOKEN), "the agent token leaked: {answer}");
    }
    for service in ["payment", "user"] {
        let exists = Command::new("docker")
            .args(["inspect", &format!("sandbox-{name}-{service}")])
            .output()
            .unwrap()
            .status
            .success();
        assert!(!exists, "{service} runs although it was refused");
    }
}
