//! `sdp pin`, `unpin`, `snapshot`, `rollback` and `clone` against real git repositories in temp dirs, with the
//! deployed commits served by a stand-in for the reconciler's API (the real one is in e2e/tests/pins.rs): each
//! commit holds only the bytes it must, and each refusal leaves the repo as it was.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;

use common::repo::{Repo, says, text};
use sdp_dashboard::docs::{
    Actual, DesiredContainer, DesiredSandbox, Health, MergedEnv, Mode, SandboxDoc, Status, Sync,
};
use sdp_protocol::{Container, ContainerState, labels};

const ACCOUNT_AT: &str = "acc0111111111111111111111111111111111111";
const GATEWAY_AT: &str = "9a7e222222222222222222222222222222222222";
const FILE: &str = "sandboxes/qa-login-error.yaml";

fn desired(service: &str, branch: &str, port: u16) -> DesiredContainer {
    DesiredContainer {
        sandbox: "qa-login-error".into(),
        service: service.into(),
        container: format!("sandbox-qa-login-error-{service}"),
        branch: branch.into(),
        commit: None,
        host_port: port,
        env: MergedEnv::default(),
        cpus: None,
        memory_bytes: None,
        health_path: None,
        build: None,
        spec_hash: 1,
    }
}

fn running(service: &str, commit: &str) -> Container {
    Container {
        name: format!("sandbox-qa-login-error-{service}"),
        id: service.into(),
        labels: [(labels::COMMIT.to_string(), commit.to_string())].into(),
        state: ContainerState::Running,
        ports: vec![],
        restart_count: 0,
        exit_code: None,
        probe: None,
    }
}

/// The example sandbox as a reconciler would show it, its account on `account_branch` running ACCOUNT_AT (when
/// `account_runs`) and its gateway GATEWAY_AT.
fn doc(account_branch: &str, account_runs: bool) -> SandboxDoc {
    let mut containers = vec![running("gateway", GATEWAY_AT)];
    if account_runs {
        containers.push(running("account", ACCOUNT_AT));
    }
    SandboxDoc {
        name: "qa-login-error".into(),
        desired: Some(DesiredSandbox {
            name: "qa-login-error".into(),
            owner: None,
            mode: Mode::Active,
            services: [("account".to_string(), desired("account", account_branch, 9001))].into(),
            gateway: desired("gateway", "develop", 8081),
            routes: BTreeMap::new(),
        }),
        held: None,
        config_errors: None,
        generated_by: None,
        gateway_url: None,
        status: Status {
            sync: Sync::Synced,
            health: Health::Healthy,
            pending: vec![],
            in_flight: None,
            last_error: None,
            last_pass_ms: None,
        },
        actual: Actual {
            containers,
            ..Actual::default()
        },
        manifest: None,
        config_commit: "abcdef0123456789".into(),
        config_author: "ann".into(),
        last_change: None,
        events: vec![],
        deployments: vec![],
    }
}

/// A stand-in for `sdp serve` that answers every request with `doc`; its URL.
fn api(doc: SandboxDoc) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let body = serde_json::to_string(&doc).unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut line = String::new();
            while reader.read_line(&mut line).is_ok_and(|n| n > 0) && line != "\r\n" {
                line.clear();
            }
            let _ = write!(
                stream,
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    url
}

fn read(repo: &Repo, path: &str) -> String {
    fs::read_to_string(repo.dir.join(path)).unwrap()
}

/// HEAD's commit touched exactly `paths`.
fn committed(repo: &Repo, paths: &str) {
    assert_eq!(repo.git(&["show", "--name-only", "--format=", "HEAD"]).trim(), paths);
    assert_eq!(repo.status(), "", "nothing is left uncommitted");
}

#[test]
fn pin_writes_one_line_after_the_branch_and_unpin_takes_exactly_it_away() {
    let repo = Repo::new();
    let original = read(&repo, FILE);
    let out = repo.sdp(&[
        "pin",
        "qa-login-error",
        &format!("account={ACCOUNT_AT}"),
        "-m",
        "QA-9: hold account",
    ]);
    says(&out, 0, "service account pinned to acc011111111");
    assert!(
        text(&out).contains(&format!("+      commit: {ACCOUNT_AT}")),
        "the diff is shown: {}",
        text(&out)
    );
    let pinned = original.replace(
        "      branch: feature/login-error\n",
        &format!("      branch: feature/login-error\n      commit: {ACCOUNT_AT}\n"),
    );
    assert_eq!(repo.git(&["show", &format!("HEAD:{FILE}")]), pinned);
    assert_eq!(
        repo.git(&["log", "-1", "--format=%an|%s"]).trim(),
        "Ann Tester|QA-9: hold account"
    );
    committed(&repo, FILE);

    // The same pin again commits nothing.
    let head = repo.head();
    says(
        &repo.sdp(&["pin", "qa-login-error", &format!("account={ACCOUNT_AT}")]),
        0,
        "unchanged",
    );
    assert_eq!(repo.head(), head);

    let out = repo.sdp(&["unpin", "qa-login-error", "account"]);
    says(&out, 0, "service account unpinned: follows feature/login-error again");
    assert_eq!(repo.git(&["show", &format!("HEAD:{FILE}")]), original);
    assert_eq!(
        repo.git(&["log", "-1", "--format=%s"]).trim(),
        "unpin qa-login-error/account"
    );
    committed(&repo, FILE);
}

#[test]
fn pin_without_a_commit_takes_the_one_that_runs_and_refusals_change_nothing() {
    let repo = Repo::new();
    let server = api(doc("feature/login-error", true));
    let out = repo.sdp(&["pin", "qa-login-error", "gateway", "--server", &server]);
    says(&out, 0, "gateway pinned to 9a7e22222222");
    assert!(
        read(&repo, FILE).contains(&format!(
            "    branch: develop\n    commit: {GATEWAY_AT}\n    port: 8081\n"
        )),
        "{}",
        read(&repo, FILE)
    );
    assert_eq!(
        repo.git(&["log", "-1", "--format=%s"]).trim(),
        "pin qa-login-error/gateway to 9a7e22222222"
    );
    committed(&repo, FILE);

    let head = repo.head();
    let refused = [
        (vec!["pin", "qa-login-error", "account=abc123"], "not a full commit id"),
        (
            vec!["pin", "qa-login-error", "nope=1111111111111111111111111111111111111111"],
            "has no service nope",
        ),
        (
            vec!["pin", "nobody", "account"],
            "sandbox nobody is not in the config repo",
        ),
        (vec!["unpin", "qa-login-error", "nope"], "has no service nope"),
    ];
    for (args, why) in refused {
        says(&repo.sdp(&args), 2, why);
    }
    // No container runs yet: there is no commit to take.
    let empty = api(doc("feature/login-error", false));
    says(
        &repo.sdp(&["pin", "qa-login-error", "account", "--server", &empty]),
        2,
        "account of sandbox qa-login-error runs no container with a commit yet",
    );
    // Someone's edit in progress on the file the pin would write.
    fs::write(repo.dir.join(FILE), "# half-edited\n").unwrap();
    says(
        &repo.sdp(&["pin", "qa-login-error", &format!("account={ACCOUNT_AT}")]),
        2,
        "uncommitted changes",
    );
    assert_eq!(read(&repo, FILE), "# half-edited\n");
    assert_eq!(repo.head(), head);
}

#[test]
fn snapshot_then_rollback_puts_back_what_ran_and_new_from_template_recreates_it() {
    let repo = Repo::new();
    let server = api(doc("feature/login-error", true));
    let out = repo.sdp(&["snapshot", "qa-login-error", "qa-before", "--server", &server]);
    says(&out, 0, "SandboxTemplate qa-before: created");
    committed(&repo, "templates/qa-before.yaml");
    assert_eq!(
        repo.git(&["log", "-1", "--format=%s"]).trim(),
        "snapshot qa-login-error as template qa-before"
    );
    let snapshot = read(&repo, "templates/qa-before.yaml");
    for line in [
        "kind: SandboxTemplate",
        "name: qa-before",
        &format!("commit: {ACCOUNT_AT}"),
        &format!("commit: {GATEWAY_AT}"),
        "branch: feature/login-error",
        "- account-dev",
        "LOG_LEVEL: debug",
        "user: http://172.18.136.92:9105",
    ] {
        assert!(snapshot.contains(line), "{line:?} missing in:\n{snapshot}");
    }
    assert!(!snapshot.contains("port:"), "a template claims no port:\n{snapshot}");
    says(&repo.sdp(&["validate", "."]), 0, "valid");
    // The same name again is refused.
    says(
        &repo.sdp(&["snapshot", "qa-login-error", "qa-before", "--server", &server]),
        2,
        "template qa-before already exists",
    );

    // The sandbox moves on: another branch for account, by hand.
    let original = read(&repo, FILE);
    let moved = original.replace("feature/login-error", "feature/login-v2");
    fs::write(repo.dir.join(FILE), &moved).unwrap();
    repo.git(&["commit", "-qam", "account on v2"]);
    // A snapshot from a reconciler that has not read that commit yet is refused.
    says(
        &repo.sdp(&["snapshot", "qa-login-error", "qa-later", "--server", &server]),
        2,
        "is not what the reconciler deploys",
    );

    let out = repo.sdp(&["rollback", "qa-login-error", "--to", "qa-before"]);
    says(
        &out,
        0,
        "service account moves from feature/login-v2 to feature/login-error",
    );
    let rolled = read(&repo, FILE);
    assert_eq!(
        rolled,
        original
            .replace(
                "      branch: feature/login-error\n",
                &format!("      branch: feature/login-error\n      commit: {ACCOUNT_AT}\n")
            )
            .replace(
                "    branch: develop\n",
                &format!("    branch: develop\n    commit: {GATEWAY_AT}\n")
            ),
        "only the branch and the pins change; comments, ports and layout stay"
    );
    assert_eq!(
        repo.git(&["log", "-1", "--format=%s"]).trim(),
        "rollback qa-login-error to qa-before"
    );
    committed(&repo, FILE);
    says(
        &repo.sdp(&["rollback", "qa-login-error", "--to", "qa-before"]),
        0,
        "unchanged",
    );
    says(
        &repo.sdp(&["rollback", "qa-login-error", "--to", "nope"]),
        2,
        "no valid template nope",
    );

    // The snapshot recreates the sandbox, pins included.
    says(
        &repo.sdp(&["new", "sandbox", "qa-again", "--from-template", "qa-before"]),
        0,
        "wrote",
    );
    let again = read(&repo, "sandboxes/qa-again.yaml");
    assert!(
        again.contains("kind: Sandbox\n") && again.contains(&format!("commit: {ACCOUNT_AT}")),
        "{again}"
    );
    let out = repo.sdp(&["apply", "-f", "sandboxes/qa-again.yaml"]);
    says(&out, 0, "Sandbox qa-again: created");
    committed(&repo, "sandboxes/qa-again.yaml");
}

#[test]
fn clone_copies_the_sandbox_without_its_ports_and_refuses_what_would_clash() {
    let repo = Repo::new();
    let server = api(doc("feature/login-error", true));
    says(
        &repo.sdp(&["pin", "qa-login-error", "account", "--server", &server]),
        0,
        "pinned",
    );
    let source = read(&repo, FILE);
    let out = repo.sdp(&["clone", "qa-login-error", "qa-copy"]);
    says(&out, 0, "Sandbox qa-copy: created");
    committed(&repo, "sandboxes/qa-copy.yaml");
    assert_eq!(
        repo.git(&["log", "-1", "--format=%s"]).trim(),
        "clone qa-login-error as qa-copy"
    );
    assert_eq!(
        read(&repo, "sandboxes/qa-copy.yaml"),
        source
            .replace("  name: qa-login-error\n", "  name: qa-copy\n")
            .replace("    port: 8081\n", "")
            .replace("      port: 9001\n", ""),
        "the same branches, pin, environments, env and routes; comments kept; no explicit port"
    );
    assert_eq!(read(&repo, FILE), source, "the source is untouched");

    let head = repo.head();
    says(
        &repo.sdp(&["clone", "qa-login-error", "qa-copy"]),
        2,
        "sandbox qa-copy already exists",
    );
    says(
        &repo.sdp(&["clone", "qa-login-error", "Bad_Name"]),
        2,
        "is not a DNS label",
    );
    says(
        &repo.sdp(&["clone", "nobody", "x"]),
        2,
        "sandbox nobody is not in the config repo",
    );
    assert_eq!(repo.head(), head);
    assert_eq!(repo.status(), "");
}

#[test]
fn names_taken_elsewhere_and_invalid_snapshots_are_refused_without_a_trace() {
    let repo = Repo::new();
    // A template that claims a port is invalid, so it is no snapshot to roll back to.
    repo.write(
        "templates/broken.yaml",
        "apiVersion: sdp/v1\nkind: SandboxTemplate\nmetadata: {name: broken}\nspec:\n  gateway: {branch: develop, port: 8090}\n",
    );
    // A sandbox whose file is not named after it.
    repo.write(
        "sandboxes/other.yaml",
        "apiVersion: sdp/v1\nkind: Sandbox\nmetadata: {name: taken}\nspec:\n  gateway: {branch: develop}\n",
    );
    repo.git(&["add", "-A"]);
    repo.git(&["commit", "-qm", "a broken template, and taken in other.yaml"]);
    let head = repo.head();
    says(
        &repo.sdp(&["rollback", "qa-login-error", "--to", "broken"]),
        2,
        "no valid template broken",
    );
    says(
        &repo.sdp(&["clone", "qa-login-error", "taken"]),
        2,
        "sandbox taken already exists in sandboxes/other.yaml",
    );
    assert_eq!(repo.head(), head);
    assert_eq!(repo.status(), "");
}
