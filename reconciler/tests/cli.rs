//! The `sdp` binary against real git repositories in temp dirs: what apply, diff, delete and new do to a config
//! repo, read back with git itself.

mod common;

use std::fs;
use std::process::Command;

use common::repo::{Repo, examples, says, text};

const NEW_BOX: &str = "# my box, kept as written\napiVersion: sdp/v1\nkind: Sandbox\nmetadata:\n  name: my-box\n  owner: ann\nspec:\n  gateway:\n    branch: develop\n  services:\n    payment:\n      branch: feature/refund  # the fix under test\n      environments: [shared-dev]\n  routes:\n    payment: sandbox\n";

#[test]
fn apply_makes_one_commit_with_the_users_identity_and_the_file_as_written() {
    let repo = Repo::new();
    let before = repo.commits();
    let file = repo.write("../my-box.yaml", NEW_BOX);
    let out = repo.sdp(&["apply", "-f", file.to_str().unwrap(), "-m", "QA-1: payment refund box"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("+      branch: feature/refund"),
        "the diff is shown: {}",
        text(&out)
    );
    assert!(text(&out).contains("created"), "{}", text(&out));
    assert_eq!(repo.commits(), before + 1);
    let log = repo.git(&["log", "-1", "--format=%an <%ae>|%s"]);
    assert_eq!(log.trim(), "Ann Tester <ann@example.com>|QA-1: payment refund box");
    assert_eq!(repo.git(&["show", "HEAD:sandboxes/my-box.yaml"]), NEW_BOX);
    assert_eq!(
        repo.git(&["show", "--name-only", "--format=", "HEAD"]).trim(),
        "sandboxes/my-box.yaml"
    );
    assert_eq!(repo.status(), "", "nothing is left uncommitted");

    // The same file again is a no-op: it says so and commits nothing.
    let head = repo.head();
    let again = repo.sdp(&["apply", "-f", file.to_str().unwrap()]);
    assert!(again.status.success(), "{}", text(&again));
    assert!(text(&again).contains("unchanged"), "{}", text(&again));
    assert_eq!(repo.head(), head);
}

#[test]
fn apply_of_a_changed_object_replaces_it_where_it_lives_and_summarises() {
    let repo = Repo::new();
    let original = fs::read_to_string(repo.dir.join("sandboxes/qa-login-error.yaml")).unwrap();
    let edited = original
        .replace("feature/login-error", "feature/login-fix")
        .replace("    account: sandbox ", "    account: ocp     ");
    let file = repo.write("../edited.yaml", &edited);
    let out = repo.sdp(&["apply", "-f", file.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    let said = text(&out);
    assert!(
        said.contains("service account moves from feature/login-error to feature/login-fix"),
        "{said}"
    );
    assert!(said.contains("route account sandbox -> ocp"), "{said}");
    assert_eq!(repo.git(&["show", "HEAD:sandboxes/qa-login-error.yaml"]), edited);
    assert_eq!(
        repo.git(&["log", "-1", "--format=%s"]).trim(),
        "apply sandbox qa-login-error"
    );
}

#[test]
fn a_refused_apply_changes_nothing() {
    let repo = Repo::new();
    let head = repo.head();
    // Valid on its own, but its port is already claimed by qa-login-error: only the whole repo shows it.
    let clash = NEW_BOX.replace(
        "      environments: [shared-dev]\n",
        "      environments: [shared-dev]\n      port: 9001\n",
    );
    let file = repo.write("../clash.yaml", &clash);
    let out = repo.sdp(&["apply", "-f", file.to_str().unwrap()]);
    says(
        &out,
        1,
        "clash.yaml:14:13: port 9001 is already claimed by sandbox qa-login-error",
    );
    assert_eq!(repo.head(), head);
    assert_eq!(repo.status(), "");

    // A broken file is refused before the repo is even read.
    let broken = repo.write("../broken.yaml", &NEW_BOX.replace("branch: develop", "branch: -x"));
    let out = repo.sdp(&["apply", "-f", broken.to_str().unwrap()]);
    says(&out, 1, "broken.yaml:9:13: branch `-x` starts with '-'");
    assert_eq!(repo.head(), head);
    assert_eq!(repo.status(), "");
}

#[test]
fn apply_never_overwrites_uncommitted_work_nor_commits_what_the_user_staged() {
    let repo = Repo::new();
    // Someone's edit in progress on the file apply would write.
    repo.write("sandboxes/qa-login-error.yaml", "# half-edited\n");
    let edited = fs::read_to_string(examples().join("sandboxes/qa-login-error.yaml"))
        .unwrap()
        .replace("owner: achmad", "owner: ann");
    let file = repo.write("../edited.yaml", &edited);
    let head = repo.head();
    let out = repo.sdp(&["apply", "-f", file.to_str().unwrap()]);
    says(&out, 2, "uncommitted changes");
    assert_eq!(
        fs::read_to_string(repo.dir.join("sandboxes/qa-login-error.yaml")).unwrap(),
        "# half-edited\n"
    );
    assert_eq!(repo.head(), head);

    // An unrelated staged file stays staged and out of the commit.
    repo.git(&["checkout", "--", "sandboxes/qa-login-error.yaml"]);
    repo.write("notes.txt", "mine\n");
    repo.git(&["add", "notes.txt"]);
    let out = repo.sdp(&["apply", "-f", file.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        repo.git(&["show", "--name-only", "--format=", "HEAD"]).trim(),
        "sandboxes/qa-login-error.yaml"
    );
    assert_eq!(repo.status(), "A  notes.txt\n");
}

#[test]
fn apply_in_place_after_new_from_template_keeps_the_comments() {
    let repo = Repo::new();
    let out = repo.sdp(&["new", "sandbox", "qa-new", "--from-template", "account-testing"]);
    assert!(out.status.success(), "{}", text(&out));
    let written = fs::read_to_string(repo.dir.join("sandboxes/qa-new.yaml")).unwrap();
    let template = fs::read_to_string(repo.dir.join("templates/account-testing.yaml")).unwrap();
    let expected = template
        .replace("sandboxtemplate.json", "sandbox.json")
        .replace("kind: SandboxTemplate", "kind: Sandbox")
        .replace("name: account-testing", "name: qa-new");
    assert_eq!(
        written, expected,
        "only kind, name and the schema line change; comments stay"
    );
    assert!(written.contains("account: sandbox   # to this sandbox's own container"));

    // Refuses to clobber.
    let again = repo.sdp(&["new", "sandbox", "qa-new", "--from-template", "account-testing"]);
    says(&again, 2, "already exists");
    let unknown = repo.sdp(&["new", "sandbox", "other", "--from-template", "nope"]);
    assert!(
        text(&unknown).contains("known: account-testing, qa-default"),
        "{}",
        text(&unknown)
    );

    let out = repo.sdp(&["apply", "-f", "sandboxes/qa-new.yaml"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(repo.git(&["show", "HEAD:sandboxes/qa-new.yaml"]), expected);
    assert_eq!(repo.status(), "");
}

#[test]
fn diff_shows_the_change_and_exits_one_only_when_there_is_one() {
    let repo = Repo::new();
    let same = repo.sdp(&["diff", "-f", "sandboxes/qa-login-error.yaml"]);
    assert_eq!(same.status.code(), Some(0), "{}", text(&same));
    assert!(text(&same).contains("unchanged"));
    let file = repo.write(
        "../more.yaml",
        &fs::read_to_string(examples().join("sandboxes/qa-login-error.yaml"))
            .unwrap()
            .replace("  routes:\n", "    user:\n      branch: feature/u\n  routes:\n"),
    );
    let out = repo.sdp(&["diff", "-f", file.to_str().unwrap()]);
    says(&out, 1, "--- a/sandboxes/qa-login-error.yaml");
    assert!(text(&out).contains("service user added on feature/u"), "{}", text(&out));
    assert_eq!(repo.status(), "");
}

#[test]
fn delete_commits_the_removal_and_refuses_to_break_references() {
    let repo = Repo::new();
    let out = repo.sdp(&["delete", "environment", "account-dev"]);
    says(&out, 1, "environment `account-dev` does not exist");
    assert!(repo.dir.join("environments/account-dev.yaml").exists());

    let out = repo.sdp(&["delete", "sandbox", "qa-login-error"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(!repo.dir.join("sandboxes/qa-login-error.yaml").exists());
    assert_eq!(
        repo.git(&["log", "-1", "--format=%an|%s"]).trim(),
        "Ann Tester|delete sandbox qa-login-error"
    );
    let stat = repo.git(&["show", "--stat", "--format=", "HEAD"]);
    assert!(stat.contains("sandboxes/qa-login-error.yaml"), "{stat}");
    assert_eq!(repo.status(), "");
}

#[test]
fn apply_push_sends_the_commit_to_the_upstream() {
    let repo = Repo::new();
    let remote = repo.dir.parent().unwrap().join("remote.git");
    let mut init = Command::new("git");
    init.args(["init", "-q", "--bare", "-b", "main"]).arg(&remote);
    repo.env(&mut init);
    assert!(init.status().unwrap().success());
    repo.git(&["remote", "add", "origin", remote.to_str().unwrap()]);
    repo.git(&["push", "-q", "-u", "origin", "main"]);
    let file = repo.write("../my-box.yaml", NEW_BOX);
    let out = repo.sdp(&["apply", "-f", file.to_str().unwrap(), "--push"]);
    assert!(out.status.success(), "{}", text(&out));
    let remote_head = repo.git(&["ls-remote", "origin", "refs/heads/main"]);
    assert!(remote_head.starts_with(&repo.head()), "{remote_head}");
}

#[test]
fn validate_reports_every_problem_as_text_or_json() {
    let repo = Repo::new();
    let ok = repo.sdp(&["validate", "."]);
    assert!(ok.status.success(), "{}", text(&ok));
    assert!(text(&ok).contains("valid: 1 sandboxes, 2 templates, 2 environments"));
    repo.write(
        "sandboxes/bad.yaml",
        "apiVersion: sdp/v1\nkind: Sandbox\nmetadata: {name: Bad}\nspec:\n  gateway: {branch: main, port: 8081}\n",
    );
    let out = repo.sdp(&["validate", ".", "--format", "json"]);
    assert_eq!(out.status.code(), Some(1));
    let answer: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(answer["valid"], false);
    let problems = answer["problems"].as_array().unwrap();
    let at: Vec<String> = problems
        .iter()
        .map(|p| format!("{}:{}:{}", p["file"].as_str().unwrap(), p["line"], p["column"]))
        .collect();
    assert!(at.contains(&"sandboxes/bad.yaml:3:18".to_string()), "{at:?}");
    assert_eq!(problems.len(), 1, "the name is refused first; {problems:?}");
}

#[test]
fn restart_commits_a_stamp_for_one_service_or_the_whole_sandbox() {
    let repo = Repo::new();
    let before = repo.commits();
    let out = repo.sdp(&["restart", "qa-login-error/account"]);
    says(&out, 0, "restart qa-login-error/account");
    assert_eq!(repo.commits(), before + 1);
    let text = fs::read_to_string(repo.dir.join("sandboxes/qa-login-error.yaml")).unwrap();
    let stamp = text
        .lines()
        .find(|l| l.trim_start().starts_with("sdp/restartedAt.account:"))
        .unwrap_or_else(|| panic!("no stamp in:\n{text}"));
    let value = stamp.split('"').nth(1).unwrap();
    assert_eq!(value.len(), "2026-11-25T10:00:00Z".len(), "{value}");
    assert!(value.ends_with('Z') && value.as_bytes()[10] == b'T', "{value}");
    assert_eq!(
        repo.git(&["log", "-1", "--format=%s"]).trim(),
        "restart qa-login-error/account"
    );
    says(&repo.sdp(&["validate", "."]), 0, "valid");

    says(&repo.sdp(&["restart", "qa-login-error"]), 0, "restart qa-login-error");
    let text = fs::read_to_string(repo.dir.join("sandboxes/qa-login-error.yaml")).unwrap();
    assert!(text.contains("sdp/restartedAt: \""), "{text}");

    let before = repo.commits();
    says(&repo.sdp(&["restart", "qa-login-error/nope"]), 2, "has no service nope");
    says(
        &repo.sdp(&["restart", "nobody"]),
        2,
        "sandbox nobody is not in the config repo",
    );
    assert_eq!(repo.commits(), before);
    assert_eq!(repo.status(), "");
}

#[test]
fn serve_refuses_a_taken_port_and_says_who_to_ask() {
    let repo = Repo::new();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let token = repo.dir.join("../token");
    fs::write(&token, "test-token-0123456789abcdef").unwrap();
    let data = repo.dir.join("../data");
    // `sdp serve` on the repo in `.` with the data dir above, a token file and more flags.
    let serve = |token: &str, more: &[&str]| {
        let mut args = vec![
            "serve",
            "--repo",
            ".",
            "--data",
            data.to_str().unwrap(),
            "--token-file",
            token,
        ];
        args.extend(more);
        repo.sdp(&args)
    };
    let listen = format!("127.0.0.1:{port}");
    let out = serve(token.to_str().unwrap(), &["--listen", &listen, "--allow-anonymous"]);
    says(&out, 2, &format!("cannot listen on 127.0.0.1:{port}"));
    says(&out, 2, "ss -ltnp");
    // SDP's own port inside the ranges it hands out: a sandbox could be given it.
    let out = serve(
        token.to_str().unwrap(),
        &["--listen", "127.0.0.1:9050", "--allow-anonymous"],
    );
    says(
        &out,
        2,
        "SDP listens on port 9050, inside the ports it gives to sandboxes",
    );
    // No token file: refused before anything starts, saying how to make one.
    let out = serve("/nonexistent/token", &["--allow-anonymous"]);
    says(&out, 2, "head -c 32 /dev/urandom");
    // A local config repo gives logins nothing to be checked against: refused, saying what to give instead.
    let out = serve(token.to_str().unwrap(), &[]);
    says(&out, 2, "--login-repo https://");
    says(&out, 2, "--allow-anonymous");
}
