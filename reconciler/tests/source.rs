//! The config-repo source on real git repositories: only committed content counts, a broken file keeps its
//! sandbox at the last valid spec with the error, a deleted one goes, and a remote is mirrored and fetched.

mod common;

use std::fs;

use common::repo::Repo;
use sdp_reconciler::source::{Origin, Source, redact_url};

fn names(s: &sdp_reconciler::source::Snapshot) -> Vec<String> {
    s.sandboxes.iter().map(|sb| sb.metadata.name.clone()).collect()
}

#[test]
fn only_committed_content_counts_and_a_broken_file_keeps_the_last_valid_spec() {
    let repo = Repo::new();
    let mut source = Source::new(Origin::Local(repo.dir.clone()));
    let first = source.refresh().unwrap().expect("a first snapshot");
    assert_eq!(first.commit, repo.head());
    assert_eq!(first.author, "Ann Tester <ann@example.com>");
    assert_eq!(names(&first), ["qa-login-error"]);
    assert!(first.errors.is_empty(), "{:?}", first.errors);
    assert_eq!(first.environments.len(), 2);
    assert!(first.manifests["qa-login-error"].text().contains("feature/login-error"));

    // Unchanged HEAD: nothing new, even with an uncommitted edit in the work tree.
    let path = "sandboxes/qa-login-error.yaml";
    let good = fs::read_to_string(repo.dir.join(path)).unwrap();
    repo.write(path, &good.replace("feature/login-error", "feature/uncommitted"));
    assert!(source.refresh().unwrap().is_none());

    // A committed typo: the sandbox stays, at its last valid spec, with the error and where it is.
    repo.write(path, &good.replace("  gateway:\n", "  gateway:\n    brnch: develop\n"));
    repo.git(&["commit", "-qam", "typo"]);
    let broken = source.refresh().unwrap().expect("a new commit");
    assert_eq!(names(&broken), ["qa-login-error"]);
    let spec = &broken.sandboxes[0].spec;
    assert_eq!(spec.services["account"].branch, "feature/login-error");
    let errors = &broken.errors["qa-login-error"];
    assert!(errors[0].starts_with("sandboxes/qa-login-error.yaml:"), "{errors:?}");
    assert!(errors[0].contains("brnch"), "{errors:?}");
    assert!(
        broken.manifests["qa-login-error"]
            .text()
            .contains("feature/login-error")
    );

    // Broken YAML (no object can be read at all) keeps it too.
    repo.write(path, "apiVersion: sdp/v1\nkind: Sandbox\nmetadata: [unclosed\n");
    repo.git(&["commit", "-qam", "worse"]);
    let worse = source.refresh().unwrap().unwrap();
    assert_eq!(names(&worse), ["qa-login-error"]);
    assert!(!worse.errors["qa-login-error"].is_empty());

    // Fixed: the new spec runs and the error is gone.
    repo.write(path, &good.replace("feature/login-error", "feature/fixed"));
    repo.git(&["commit", "-qam", "fix"]);
    let fixed = source.refresh().unwrap().unwrap();
    assert_eq!(fixed.sandboxes[0].spec.services["account"].branch, "feature/fixed");
    assert!(fixed.errors.is_empty());

    // Deleted: gone.
    repo.git(&["rm", "-q", path]);
    repo.git(&["commit", "-qm", "delete"]);
    let deleted = source.refresh().unwrap().unwrap();
    assert!(deleted.sandboxes.is_empty());
    assert!(deleted.errors.is_empty());
}

#[test]
fn a_new_sandbox_that_never_was_valid_shows_its_error_and_does_not_run() {
    let repo = Repo::new();
    let mut source = Source::new(Origin::Local(repo.dir.clone()));
    source.refresh().unwrap();
    repo.write(
        "sandboxes/new-box.yaml",
        "apiVersion: sdp/v1\nkind: Sandbox\nmetadata:\n  name: new-box\nspec:\n  gateway:\n    branch: develop\n    port: 80\n",
    );
    repo.git(&["add", "-A"]);
    repo.git(&["commit", "-qm", "new box"]);
    let snap = source.refresh().unwrap().unwrap();
    assert_eq!(names(&snap), ["qa-login-error"]);
    assert!(snap.errors["new-box"][0].contains("port"), "{:?}", snap.errors);
}

#[test]
fn a_remote_config_repo_is_mirrored_and_fetched() {
    let repo = Repo::new();
    let data = tempfile::tempdir().unwrap();
    let url = format!("file://{}", repo.dir.display());
    let origin = Origin::parse(&url, data.path());
    assert!(matches!(origin, Origin::Remote { .. }));
    let mut source = Source::new(origin);
    let first = source.refresh().unwrap().unwrap();
    assert_eq!(first.commit, repo.head());
    repo.git(&["rm", "-q", "sandboxes/qa-login-error.yaml"]);
    repo.git(&["commit", "-qm", "delete"]);
    let second = source.refresh().unwrap().unwrap();
    assert_eq!(second.commit, repo.head());
    assert!(second.sandboxes.is_empty());
}

#[test]
fn urls_are_shown_without_their_password() {
    assert_eq!(
        redact_url("https://bot:s3cret@bitbucket.example/scm/cc/config.git"),
        "https://bot:***@bitbucket.example/scm/cc/config.git"
    );
    assert_eq!(
        redact_url("https://bitbucket.example/x.git"),
        "https://bitbucket.example/x.git"
    );
}

#[test]
fn each_sandbox_shows_the_last_commit_that_changed_it() {
    let repo = Repo::new();
    let first = repo.head();
    let path = "sandboxes/qa-login-error.yaml";
    let text = fs::read_to_string(repo.dir.join(path)).unwrap();
    let other = text.replace("name: qa-login-error", "name: qa-other");
    repo.write(
        "sandboxes/qa-other.yaml",
        &other.replace("port: 8081", "port: 8082").replace("9001", "9101"),
    );
    repo.git(&["add", "-A"]);
    repo.git(&[
        "-c",
        "user.name=Bob",
        "-c",
        "user.email=bob@example.com",
        "commit",
        "-qm",
        "bob's sandbox",
    ]);
    let bobs = repo.head();

    let mut source = Source::new(Origin::Local(repo.dir.clone()));
    let snap = source.refresh().unwrap().unwrap();
    assert!(snap.errors.is_empty(), "{:?}", snap.errors);
    assert_eq!(
        snap.changes["qa-login-error"].commit, first,
        "not HEAD: the commit that changed its file"
    );
    assert_eq!(snap.changes["qa-login-error"].author, "Ann Tester <ann@example.com>");
    assert_eq!(snap.changes["qa-other"].commit, bobs);
    assert_eq!(snap.changes["qa-other"].author, "Bob <bob@example.com>");

    // A later commit to one sandbox moves only its own last change (read from the commits since the last one).
    repo.write(path, &text.replace("feature/login-error", "feature/next"));
    repo.git(&[
        "-c",
        "user.name=Cat",
        "-c",
        "user.email=cat@example.com",
        "commit",
        "-qam",
        "cat's change",
    ]);
    let cats = repo.head();
    let snap = source.refresh().unwrap().unwrap();
    assert_eq!(snap.changes["qa-login-error"].commit, cats);
    assert_eq!(snap.changes["qa-login-error"].author, "Cat <cat@example.com>");
    assert_eq!(snap.changes["qa-other"].commit, bobs);
    // A reconciler started now reads the same from the whole history.
    let fresh = Source::new(Origin::Local(repo.dir.clone())).refresh().unwrap().unwrap();
    assert_eq!(fresh.changes, snap.changes);
}

/// A clone of a bare "Bitbucket" repo, as the runbook's local setup has on the reconciler's VM.
fn clone_of(bare: &std::path::Path, dir: &std::path::Path, repo: &Repo) -> std::path::PathBuf {
    let out = std::process::Command::new("git")
        .args(["clone", "-q"])
        .arg(bare)
        .arg(dir)
        .env("HOME", &repo.home)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    for (k, v) in [("user.name", "Bea Reviewer"), ("user.email", "bea@example.com")] {
        let ok = std::process::Command::new("git")
            .arg("-C")
            .arg(dir)
            .args(["config", k, v])
            .status()
            .unwrap();
        assert!(ok.success());
    }
    dir.to_path_buf()
}

fn git_in(dir: &std::path::Path, repo: &Repo, args: &[&str]) -> String {
    let mut cmd = std::process::Command::new("git");
    cmd.current_dir(dir).args(args);
    repo.env(&mut cmd);
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn a_local_clone_follows_its_upstream_and_never_loses_a_local_commit() {
    let repo = Repo::new();
    let tmp = tempfile::tempdir().unwrap();
    let bare = tmp.path().join("bitbucket.git");
    repo.git(&["clone", "-q", "--bare", ".", bare.to_str().unwrap()]);
    let served = clone_of(&bare, &tmp.path().join("served"), &repo);
    let laptop = clone_of(&bare, &tmp.path().join("laptop"), &repo);
    let mut source = Source::new(Origin::Local(served.clone()));
    source.follow_upstream().unwrap();
    let first = source.refresh().unwrap().unwrap();

    // A merged PR: the served clone fast-forwards to it and the reconciler reads it.
    let path = laptop.join("sandboxes/qa-login-error.yaml");
    let text = fs::read_to_string(&path).unwrap();
    fs::write(
        &path,
        text.replace("feature/login-error", "feature/merged-in-bitbucket"),
    )
    .unwrap();
    git_in(&laptop, &repo, &["commit", "-qam", "merged PR"]);
    git_in(&laptop, &repo, &["push", "-q"]);
    source.follow_upstream().unwrap();
    let merged = source.refresh().unwrap().expect("the upstream commit is read");
    assert_ne!(merged.commit, first.commit);
    assert_eq!(merged.commit, git_in(&laptop, &repo, &["rev-parse", "HEAD"]));
    assert!(
        merged.manifests["qa-login-error"]
            .text()
            .contains("feature/merged-in-bitbucket")
    );

    // A commit made on the served clone and another pushed upstream: diverged. The error says so, the local
    // commit stays, and the local HEAD is still what is read.
    fs::write(served.join("sandboxes/local-note.txt"), "local\n").unwrap();
    git_in(&served, &repo, &["add", "-A"]);
    git_in(&served, &repo, &["commit", "-qm", "local only"]);
    let local = git_in(&served, &repo, &["rev-parse", "HEAD"]);
    fs::write(laptop.join("sandboxes/other-note.txt"), "upstream\n").unwrap();
    git_in(&laptop, &repo, &["add", "-A"]);
    git_in(&laptop, &repo, &["commit", "-qm", "upstream only"]);
    git_in(&laptop, &repo, &["push", "-q"]);
    let err = format!("{:#}", source.follow_upstream().unwrap_err());
    assert!(err.contains("diverged"), "{err}");
    assert!(
        err.contains("1 local commit(s)") && err.contains("1 upstream commit(s)"),
        "{err}"
    );
    assert_eq!(
        git_in(&served, &repo, &["rev-parse", "HEAD"]),
        local,
        "the local commit was kept"
    );
    assert_eq!(source.refresh().unwrap().unwrap().commit, local);

    // A clone without an upstream (the demo's, a test's) is read as it is.
    let mut plain = Source::new(Origin::Local(repo.dir.clone()));
    plain.follow_upstream().unwrap();
    assert!(plain.refresh().unwrap().is_some());
}

#[test]
fn a_huge_manifest_is_refused_unread_and_the_others_go_on() {
    let repo = Repo::new();
    // 50 MB of YAML comments: reading it would cost what it weighs, and more to parse.
    let huge = format!(
        "apiVersion: sdp/v1\nkind: Sandbox\n{}",
        "# padding padding padding\n".repeat(2_000_000)
    );
    repo.write("sandboxes/huge.yaml", &huge);
    repo.git(&["add", "-A"]);
    repo.git(&["commit", "-qm", "a huge file"]);
    let mut source = Source::new(Origin::Local(repo.dir.clone()));
    let snap = source.refresh().unwrap().unwrap();
    assert_eq!(names(&snap), ["qa-login-error"], "the valid sandbox goes on");
    let problems: Vec<String> = snap.problems.iter().map(|p| p.to_string()).collect();
    assert!(
        problems
            .iter()
            .any(|p| p.contains("huge.yaml") && p.contains("over the limit")),
        "{problems:#?}"
    );
}
