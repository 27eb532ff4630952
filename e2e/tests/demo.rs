//! The README's first command: `sdp demo` brings SDP up with the examples on the local engine, the example
//! sandbox converges and answers through its gateway, Ctrl-C stops it, and `sdp demo --down` removes what it made
//! and nothing else.

use std::process::Command;
use std::time::Duration;

use sdp_e2e::*;

#[test]
fn the_demo_converges_answers_and_cleans_up_after_itself() {
    let bins = binaries();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("demo");
    let port = free_port();
    // Something on the engine the demo must not touch.
    let bystander = format!("bystander-{}", suffix());
    run(Command::new("docker").args(["create", "--name", &bystander, runtime_image(), "true"]));

    let mut demo = Process::spawn(
        Command::new(bins.join("sdp"))
            .args(["demo", "--dir"])
            .arg(&dir)
            .args(["--port", &port.to_string()]),
        tmp.path().join("demo.log"),
    );
    let out = wait_for(
        "the demo to say the sandbox is synced",
        Duration::from_secs(300),
        || {
            let out = demo.output();
            if out.contains("Sandbox qa-login-error is synced") {
                Ok(out)
            } else {
                Err(out)
            }
        },
    );
    assert!(out.contains(&format!("http://127.0.0.1:{port}/")), "{out}");
    // The example pins the gateway to 8081: through it, account is the sandbox's, payment is OCP's.
    let account = get_text("http://127.0.0.1:8081/account/").unwrap();
    assert!(
        account.starts_with("account qa-login-error feature/login-error "),
        "{account}"
    );
    assert_eq!(
        get_text("http://127.0.0.1:8081/payment/").unwrap().trim(),
        "ocp payment"
    );

    // The account service's secret (DB_PASSWORD, from a file named by the account-dev Environment) reached the
    // container, and no page, API answer or log shows its value.
    let env = run(Command::new("docker").args([
        "inspect",
        "-f",
        "{{json .Config.Env}}",
        "sandbox-qa-login-error-account",
    ]));
    assert!(
        env.contains("DB_PASSWORD=demo-password"),
        "the agent read the secret: {env}"
    );
    let api = format!("http://127.0.0.1:{port}");
    let mut seen = String::new();
    for path in [
        "/",
        "/sandboxes/qa-login-error",
        "/deployments",
        "/deployments/1",
        "/nodes",
        "/api/v1/sandboxes",
        "/api/v1/sandboxes/qa-login-error",
        "/api/v1/deployments",
        "/api/v1/deployments/1",
        "/api/v1/nodes",
        "/metrics",
    ] {
        let text = get_text(&format!("{api}{path}")).unwrap_or_else(|e| panic!("{path}: {e}"));
        assert!(!text.contains("demo-password"), "the secret's value is on {path}");
        seen.push_str(&text);
    }
    assert!(
        seen.contains("/secrets/account-db-password"),
        "the secret's file reference is shown, not its value"
    );
    let logs = std::fs::read_dir(dir.join("logs")).unwrap();
    for log in logs {
        let text = std::fs::read_to_string(log.unwrap().path()).unwrap();
        assert!(!text.contains("demo-password"), "the secret's value is in a log");
    }

    // Ctrl-C stops SDP cleanly.
    run(Command::new("kill").args(["-INT", &demo.child.id().to_string()]));
    let status = wait_for("the demo to stop", Duration::from_secs(30), || {
        match demo.child.try_wait() {
            Ok(Some(s)) => Ok(s),
            other => Err(format!("{other:?}")),
        }
    });
    assert!(status.success(), "{}", demo.output());
    assert!(demo.output().contains("sdp demo --down"), "{}", demo.output());

    let down = run(Command::new(bins.join("sdp"))
        .args(["demo", "--down", "--dir"])
        .arg(&dir));
    assert!(down.contains("removed sandbox qa-login-error"), "{down}");
    let left = run(Command::new("docker").args(["ps", "-a", "--format", "{{.Names}}"]));
    assert!(!left.contains("sandbox-qa-login-error"), "{left}");
    assert!(!left.contains("sdp-demo-ocp"), "{left}");
    assert!(
        left.contains(&bystander),
        "the demo removed a container it did not make: {left}"
    );
    assert!(!dir.exists());
    let _ = Command::new("docker").args(["rm", "-f", &bystander]).output();
}
