//! The config repo lives in Bitbucket (here a bare repo the reconciler follows by URL) and changes come from a
//! developer's clone of it: a push is seen at the next poll, and at once when the push webhook is called; `sdp
//! apply --push --wait` from that clone pushes, nudges the reconciler and returns when the sandbox is synced.

use std::process::Command;
use std::time::{Duration, Instant};

use sdp_e2e::*;

fn gateway_only(name: &str, port: u16, mode: &str) -> String {
    format!(
        "apiVersion: sdp/v1\nkind: Sandbox\nmetadata:\n  name: {name}\nspec:\n  gateway:\n    branch: develop\n    \
         port: {port}\n    env:\n      MODE: {mode}\n"
    )
}

/// Commits `text` at `file` in the developer's clone and pushes it to "Bitbucket".
fn push(cluster: &Cluster, file: &str, text: &str) {
    cluster.commit(file, text, "a change from a laptop");
    git(&cluster.config, &["push", "-q", "origin", "main"]);
}

fn known(cluster: &Cluster, name: &str) -> bool {
    cluster
        .get("/api/v1/sandboxes")
        .is_ok_and(|list| list.as_array().is_some_and(|l| l.iter().any(|s| s["name"] == name)))
}

#[test]
fn a_push_is_seen_at_once_on_the_webhook_and_apply_push_wait_returns_synced() {
    // Polling once an hour: within the test, only the webhook can explain the reconciler seeing a push.
    let mut cluster = Cluster::start_remote(3600);
    let name = format!("bb-{}", suffix());
    let _cleanup = DockerCleanup { sandbox: name.clone() };
    let gateway = gateway_repo(cluster.path(), "develop", &["account"], "http://ocp.invalid:8080");
    let gw = cluster.agent_yaml("gateway-bb", "gateway", &[("gateway", &gateway.clone)], "");
    cluster.start_agent(&gw, "gateway-bb");

    let port = cluster.gateway_port();
    let file = format!("sandboxes/{name}.yaml");
    push(&cluster, &file, &gateway_only(&name, port, "first"));
    std::thread::sleep(Duration::from_secs(3));
    assert!(!known(&cluster, &name), "nothing made the reconciler fetch yet");
    let started = Instant::now();
    let answer = ureq::post(format!("{}/api/v1/hooks/git", cluster.api))
        .send(r#"{"eventKey":"repo:refs_changed","repository":{"slug":"sdp-config"}}"#)
        .unwrap()
        .into_body()
        .read_to_string()
        .unwrap();
    assert!(answer.contains("\"fetch\":\"started\""), "{answer}");
    wait_for("the pushed sandbox to be read", Duration::from_secs(20), || {
        known(&cluster, &name).then_some(()).ok_or_else(|| cluster.logs())
    });
    println!("pushed sandbox read {:?} after the webhook", started.elapsed());

    // `sdp apply --push --wait` from the laptop: commits, pushes, and follows the sandbox until it is synced.
    let mine = cluster.path().join("mine.yaml");
    std::fs::write(&mine, gateway_only(&name, port, "second")).unwrap();
    let out = Command::new(binaries().join("sdp"))
        .args(["apply", "-f"])
        .arg(&mine)
        .arg("--repo")
        .arg(&cluster.config)
        .args(["--push", "--wait", "--wait-secs", "180", "--server", &cluster.api])
        .env("GIT_AUTHOR_NAME", "Ann Tester")
        .env("GIT_AUTHOR_EMAIL", "ann@example.com")
        .env("GIT_COMMITTER_NAME", "Ann Tester")
        .env("GIT_COMMITTER_EMAIL", "ann@example.com")
        .output()
        .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{said}\n{}", cluster.logs());
    assert!(said.contains("pushed") && said.contains("synced in"), "{said}");
    let head = git(&cluster.config, &["rev-parse", "HEAD"]);
    let bitbucket = git(&cluster.config, &["rev-parse", "origin/main"]);
    assert_eq!(head, bitbucket, "the commit is in Bitbucket");
    let sandbox = cluster.get(&format!("/api/v1/sandboxes/{name}")).unwrap();
    assert_eq!(sandbox["status"]["sync"], "Synced", "{sandbox:#}");
    let env = run(Command::new("docker").args([
        "inspect",
        "-f",
        "{{range .Config.Env}}{{.}} {{end}}",
        &format!("sandbox-{name}-gateway"),
    ]));
    assert!(env.contains("MODE=second"), "the applied change runs: {env}");
}

#[test]
fn without_a_webhook_a_push_is_seen_at_the_next_poll() {
    let cluster = Cluster::start_remote(2);
    let name = format!("poll-{}", suffix());
    push(
        &cluster,
        &format!("sandboxes/{name}.yaml"),
        &gateway_only(&name, cluster.gateway_port(), "x"),
    );
    // Two polls' worth and some slack; nothing calls the hook.
    wait_for("the pushed sandbox to be read", Duration::from_secs(10), || {
        known(&cluster, &name).then_some(()).ok_or_else(|| cluster.logs())
    });
}
