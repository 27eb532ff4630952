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

/// The lines the last commit removed and added (`-...` and `+...`, without the file headers), and the files it
/// touched.
fn last_commit_lines(repo: &Repo) -> (Vec<String>, String) {
    let diff = repo.git(&["show", "-U0", "--format=", "HEAD"]);
    let lines = diff
        .lines()
        .filter(|l| (l.starts_with('+') || l.starts_with('-')) && !l.starts_with("+++") && !l.starts_with("---"))
        .map(str::to_string)
        .collect();
    let files = repo
        .git(&["show", "--name-only", "--format=", "HEAD"])
        .trim()
        .to_string();
    (lines, files)
}

const QA: &str = "sandboxes/qa-login-error.yaml";

#[test]
fn suspend_and_resume_commit_one_line_and_keep_every_other_byte() {
    let repo = Repo::new();
    let original = fs::read_to_string(repo.dir.join(QA)).unwrap();
    let out = repo.sdp(&["suspend", "qa-login-error"]);
    says(&out, 0, "+  suspend: true");
    says(&out, 0, "Sandbox qa-login-error: suspended");
    assert_eq!(
        last_commit_lines(&repo),
        (vec!["+  suspend: true".to_string()], QA.to_string())
    );
    assert_eq!(
        fs::read_to_string(repo.dir.join(QA)).unwrap(),
        original.replace("  expireAfter: 14d\n", "  expireAfter: 14d\n  suspend: true\n"),
        "comments and layout are kept"
    );
    assert_eq!(
        repo.git(&["log", "-1", "--format=%an|%s"]).trim(),
        "Ann Tester|suspend qa-login-error"
    );

    // Suspending again changes nothing and says so.
    let head = repo.head();
    says(&repo.sdp(&["suspend", "qa-login-error"]), 0, "unchanged");
    assert_eq!(repo.head(), head);

    let out = repo.sdp(&["resume", "qa-login-error", "-m", "QA-2: back on"]);
    says(&out, 0, "Sandbox qa-login-error: resumed");
    assert_eq!(
        last_commit_lines(&repo),
        (
            vec!["-  suspend: true".to_string(), "+  suspend: false".to_string()],
            QA.to_string()
        )
    );
    assert_eq!(repo.git(&["log", "-1", "--format=%s"]).trim(), "QA-2: back on");
    assert_eq!(repo.status(), "");
}

#[test]
fn route_and_branch_replace_only_their_values_and_comments_stay_in_their_column() {
    let repo = Repo::new();
    let out = repo.sdp(&[
        "route",
        "qa-login-error",
        "account=ocp",
        "payment=http://172.18.136.92:9106",
    ]);
    says(&out, 0, "route account sandbox -> ocp");
    says(&out, 0, "route payment ocp -> http://172.18.136.92:9106");
    assert_eq!(
        last_commit_lines(&repo),
        (
            vec![
                "-    account: sandbox                  # to this sandbox's own container".to_string(),
                "-    payment: ocp                      # to OCP (also the default for any service not listed)"
                    .to_string(),
                "+    account: ocp                      # to this sandbox's own container".to_string(),
                "+    payment: http://172.18.136.92:9106 # to OCP (also the default for any service not listed)"
                    .to_string(),
            ],
            QA.to_string()
        )
    );
    // A service the file does not route yet gets a line at the end of routes.
    says(
        &repo.sdp(&["route", "qa-login-error", "card=http://10.0.0.7:80"]),
        0,
        "route card ocp -> http://10.0.0.7:80",
    );
    assert_eq!(last_commit_lines(&repo).0, ["+    card: http://10.0.0.7:80"]);
    let text = fs::read_to_string(repo.dir.join(QA)).unwrap();
    assert!(
        text.contains(
            "    user: http://172.18.136.92:9105   # to an explicit URL\n    card: http://10.0.0.7:80\n  expireAfter"
        ),
        "{text}"
    );

    let out = repo.sdp(&[
        "branch",
        "qa-login-error",
        "account=feature/login-fix",
        "gateway=release/7",
    ]);
    says(
        &out,
        0,
        "service account moves from feature/login-error to feature/login-fix",
    );
    says(&out, 0, "gateway moves from develop to release/7");
    assert_eq!(
        last_commit_lines(&repo),
        (
            vec![
                "-    branch: develop".to_string(),
                "+    branch: release/7".to_string(),
                "-      branch: feature/login-error".to_string(),
                "+      branch: feature/login-fix".to_string(),
            ],
            QA.to_string()
        )
    );
    assert_eq!(repo.git(&["log", "-1", "--format=%s"]).trim(), "branch qa-login-error");
    says(&repo.sdp(&["validate", "."]), 0, "valid");
    assert_eq!(repo.status(), "");
}

#[test]
fn refused_one_line_changes_leave_the_repo_as_it_was() {
    let repo = Repo::new();
    let head = repo.head();
    let unchanged = |repo: &Repo| {
        assert_eq!(repo.head(), head, "no commit");
        assert_eq!(repo.status(), "", "no changed file");
    };
    says(
        &repo.sdp(&["suspend", "nobody"]),
        2,
        "sandbox nobody is not in the config repo",
    );
    unchanged(&repo);
    says(
        &repo.sdp(&["branch", "qa-login-error", "payment=main"]),
        2,
        "has no service payment; its services are: account, gateway",
    );
    unchanged(&repo);
    says(
        &repo.sdp(&["branch", "qa-login-error", "account"]),
        2,
        "write it as SERVICE=BRANCH",
    );
    unchanged(&repo);
    // Valid YAML, but the repo would not validate: a route to a container the sandbox does not run, a branch git
    // refuses.
    says(
        &repo.sdp(&["route", "qa-login-error", "payment=sandbox"]),
        1,
        "route `payment: sandbox` points at a service this sandbox does not run",
    );
    unchanged(&repo);
    says(
        &repo.sdp(&["branch", "qa-login-error", "account=-x"]),
        1,
        "starts with '-'",
    );
    unchanged(&repo);
    says(&repo.sdp(&["route", "qa-login-error", "user=ftp://x"]), 1, "refused");
    unchanged(&repo);

    // Someone's edit in progress on the file is never overwritten.
    let mine = fs::read_to_string(repo.dir.join(QA)).unwrap() + "# mine, not committed\n";
    repo.write(QA, &mine);
    says(&repo.sdp(&["suspend", "qa-login-error"]), 2, "uncommitted changes");
    assert_eq!(fs::read_to_string(repo.dir.join(QA)).unwrap(), mine);
    assert_eq!(repo.head(), head);
    assert_eq!(repo.status(), format!(" M {QA}\n"));
}

/// The golden file of `sdp plan --format json` on the examples against an empty world; `UPDATE_GOLDEN=1`
/// writes it anew.
fn golden(name: &str, actual: &str) {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(name);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(&path, actual).unwrap();
    }
    let expected =
        fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e} (UPDATE_GOLDEN=1 makes it)", path.display()));
    assert_eq!(
        actual, expected,
        "sdp plan's JSON changed; if that is meant, run with UPDATE_GOLDEN=1"
    );
}

#[test]
fn plan_exits_two_when_something_would_change_zero_when_nothing_and_one_on_invalid_input() {
    let repo = Repo::new();
    // No --server: an empty world, and the text says so.
    let out = repo.sdp(&["plan"]);
    says(&out, 2, "Planned against an empty world");
    says(&out, 2, "deploy sandbox-qa-login-error-account on micro (missing)");
    says(&out, 2, "+ 9001 qa-login-error/account");

    // A suspended sandbox (ports given, nothing started) and a held one (a port outside the ranges) beside it.
    repo.write(
        "sandboxes/qa-paused.yaml",
        "apiVersion: sdp/v1\nkind: Sandbox\nmetadata:\n  name: qa-paused\nspec:\n  gateway:\n    branch: develop\n  services:\n    payment:\n      branch: main\n  suspend: true\n",
    );
    repo.write(
        "sandboxes/qa-held.yaml",
        "apiVersion: sdp/v1\nkind: Sandbox\nmetadata:\n  name: qa-held\nspec:\n  gateway:\n    branch: develop\n    port: 7000\n",
    );
    let out = repo.sdp(&["plan", ".", "--format", "json"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let json = String::from_utf8(out.stdout).unwrap();
    golden("plan-examples.json", &json);
    // Stable: the same answer twice.
    let again = repo.sdp(&["plan", ".", "--format", "json"]);
    assert_eq!(String::from_utf8(again.stdout).unwrap(), json);

    // The working tree is planned, as CI checks it out: an invalid file is exit 1, with its place.
    let broken = fs::read_to_string(repo.dir.join(QA))
        .unwrap()
        .replace("branch: develop", "branch: -x");
    repo.write(QA, &broken);
    let out = repo.sdp(&["plan", "--format", "json"]);
    says(
        &out,
        1,
        "sandboxes/qa-login-error.yaml:10:13: branch `-x` starts with '-'",
    );
    let answer: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(answer["valid"], false);
    says(&repo.sdp(&["plan", "/nonexistent"]), 1, "is not a config repo");
    // A reconciler that cannot be reached is no plan, not a change.
    repo.git(&["checkout", "--", QA]);
    says(
        &repo.sdp(&["plan", "--server", "http://127.0.0.1:9"]),
        1,
        "cannot reach the reconciler",
    );
    let out = repo.sdp(&["plan"]);
    says(
        &out,
        2,
        "sandbox qa-held (added)\n  held, nothing is done to it: port 7000 of gateway is outside",
    );
    says(&out, 2, "sandbox qa-paused (added, suspended: suspend: true)");
    fs::remove_file(repo.dir.join("sandboxes/qa-held.yaml")).unwrap();
    fs::remove_file(repo.dir.join("sandboxes/qa-paused.yaml")).unwrap();

    // No sandbox at all: nothing would change.
    repo.git(&["rm", "-q", QA]);
    let out = repo.sdp(&["plan"]);
    says(&out, 0, "nothing would change (exit 0)");
}

#[test]
fn the_bitbucket_pipeline_runs_validate_and_plan_with_flags_sdp_knows() {
    let path = examples().join("ci/bitbucket-pipelines.yml");
    let yaml = fs::read_to_string(&path).unwrap();
    let pipeline: serde_json::Value = serde_saphyr::from_str(&yaml).unwrap();
    let step = &pipeline["pipelines"]["pull-requests"]["**"][0]["step"];
    let script: Vec<&str> = step["script"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l.as_str().unwrap())
        .collect();
    assert!(script.contains(&"sdp validate ."), "{script:?}");
    assert!(
        script.iter().any(|l| l.contains("sdp plan . --server \"$SDP_SERVER\"")),
        "{script:?}"
    );
    // Each `sdp ...` command as the shell would run it, against a server that is not there: refused for that,
    // never for a flag or subcommand sdp does not know.
    let repo = Repo::new();
    for line in script {
        for part in line.split([';', '|', '>']) {
            let Some(command) = part.trim().strip_prefix("sdp ") else {
                continue;
            };
            let args: Vec<String> = command
                .split_whitespace()
                .map(|w| {
                    w.replace("\"$SDP_SERVER\"", "http://127.0.0.1:9")
                        .replace("\"$SDP_USER\"", "ann")
                })
                .collect();
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let out = repo.sdp(&args);
            let said = text(&out);
            assert!(
                !said.contains("unexpected argument") && !said.contains("unrecognized subcommand"),
                "sdp {command}: {said}"
            );
        }
    }
}
