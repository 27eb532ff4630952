//! Fetching service repos over HTTP with basic auth (a real git smart-HTTP server on 127.0.0.1): the right
//! credentials fetch and deploy; wrong ones give a clear authentication error; the password appears nowhere in
//! what the agent prints, and the operator's credential file is never changed.

use std::process::Command;
use std::time::Duration;

use sdp_e2e::*;

const PASSWORD: &str = "s3cret-Pa55word";
const WRONG: &str = "wrong-Pa55word";

#[test]
fn credentials_from_a_file_fetch_and_never_show() {
    let mut cluster = Cluster::start();
    let name = format!("cred-{}", suffix());
    let _cleanup = DockerCleanup { sandbox: name.clone() };
    let account = ServiceRepo::new(cluster.path(), "account", "main");
    let server = GitServer::start(account.origin.parent().unwrap(), "bot", PASSWORD);
    let url = format!("http://127.0.0.1:{}/account.git", server.port);
    git(&account.clone, &["remote", "set-url", "origin", &url]);

    let good = cluster.path().join("git-credentials");
    std::fs::write(&good, format!("username=bot\npassword={PASSWORD}\n")).unwrap();
    let bad = cluster.path().join("git-credentials-wrong");
    std::fs::write(&bad, format!("username=bot\npassword={WRONG}\n")).unwrap();

    // doctor with wrong credentials: a clear authentication failure, and no password in what it says.
    let wrong_yaml = cluster.agent_yaml(
        "micro-wrong",
        "micro",
        &[("account", &account.clone)],
        &format!("gitCredentials: {}\n", bad.display()),
    );
    let out = Command::new(binaries().join("sdp-agent"))
        .arg("--config")
        .arg(&wrong_yaml)
        .arg("doctor")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("FAIL git account"), "{text}");
    assert!(text.contains("Authentication failed"), "{text}");
    assert!(
        !text.contains(WRONG) && !text.contains(PASSWORD),
        "a password leaked:\n{text}"
    );
    assert_eq!(
        std::fs::read_to_string(&bad).unwrap(),
        format!("username=bot\npassword={WRONG}\n")
    );

    // The right ones: doctor passes that step, and a deploy fetches over HTTP.
    let yaml = cluster.agent_yaml(
        "micro-cred",
        "micro",
        &[("account", &account.clone)],
        &format!("gitCredentials: {}\ncontainerPort: 8080\n", good.display()),
    );
    let out = Command::new(binaries().join("sdp-agent"))
        .arg("--config")
        .arg(&yaml)
        .arg("doctor")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(text.contains("PASS git account: origin lists 1 branches"), "{text}");
    assert!(!text.contains(PASSWORD));

    let agent = cluster.start_agent(&yaml, "micro-cred");
    let port = cluster.service_port();
    let manifest = format!(
        "apiVersion: sdp/v1\nkind: Sandbox\nmetadata:\n  name: {name}\nspec:\n  gateway:\n    branch: develop\n  services:\n    account:\n      branch: main\n      port: {port}\n"
    );
    cluster.commit(
        &format!("sandboxes/{name}.yaml"),
        &manifest,
        "a sandbox fetched over http",
    );
    let head = git(&account.origin, &["rev-parse", "main"]);
    let answer = wait_for(
        "the service fetched over HTTP to answer",
        Duration::from_secs(120),
        || get_text(&format!("http://127.0.0.1:{port}/")).map_err(|e| format!("{e}\n{}", cluster.logs())),
    );
    assert!(answer.contains(&head), "{answer}");
    let logs = cluster.logs();
    assert!(!logs.contains(PASSWORD), "the password reached a log");
    assert_eq!(
        std::fs::read_to_string(&good).unwrap(),
        format!("username=bot\npassword={PASSWORD}\n")
    );
    drop(cluster.agents.remove(agent));
}
