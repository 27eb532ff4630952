//! Reaction benchmark (DESIGN: a commit in a local config repo is seen in under 1 s through notify; a webhook
//! makes a remote repo be fetched at once). A release `sdp serve` with polling set to 60 s, so that only the
//! file watcher (local repo) or the hook (remote repo) can explain a fast reaction: 20 commits each, the time
//! from `git commit` (or `git push` + `POST /api/v1/hooks/git`) returning until the API shows the new commit.
//! Run: `cargo bench -p sdp-e2e --bench reaction`.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use sdp_e2e::*;

const COMMITS: usize = 20;

fn sandbox(owner: usize) -> String {
    format!(
        "apiVersion: sdp/v1\nkind: Sandbox\nmetadata:\n  name: react\n  owner: owner{owner}\nspec:\n  gateway:\n    \
         branch: develop\n  services:\n    account:\n      branch: main\n"
    )
}

/// Starts `sdp serve` on `repo`, polling only every 60 s; returns the process and its API.
fn serve(dir: &Path, repo: &str, name: &str) -> (Process, String) {
    let token = dir.join("token");
    std::fs::write(&token, "bench-token-0123456789abcdef\n").unwrap();
    let port = free_port();
    let process = Process::spawn(
        Command::new(binaries().join("sdp"))
            .args(["serve", "--repo", repo, "--data"])
            .arg(dir.join(format!("data-{name}")))
            .args(["--listen", &format!("127.0.0.1:{port}"), "--token-file"])
            .arg(&token)
            .args(["--poll-secs", "60", "--allow-anonymous"]),
        dir.join(format!("serve-{name}.log")),
    );
    (process, format!("http://127.0.0.1:{port}"))
}

/// Waits until the API shows `commit` for the sandbox; the time since `from`.
fn seen(api: &str, commit: &str, from: Instant) -> Duration {
    let url = format!("{api}/api/v1/sandboxes/react");
    loop {
        if get_json(&url).is_ok_and(|sb| sb["configCommit"] == commit) {
            return from.elapsed();
        }
        assert!(from.elapsed() < Duration::from_secs(90), "commit {commit} not seen");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn report(what: &str, mut times: Vec<Duration>, target: Duration) {
    times.sort();
    let at = |q: f64| times[((times.len() - 1) as f64 * q).round() as usize];
    println!(
        "{what}: median {:.0} ms, p90 {:.0} ms, max {:.0} ms over {} commits (target < {} ms: {})",
        at(0.5).as_secs_f64() * 1000.0,
        at(0.9).as_secs_f64() * 1000.0,
        at(1.0).as_secs_f64() * 1000.0,
        times.len(),
        target.as_millis(),
        if at(1.0) < target { "met" } else { "NOT met" }
    );
}

fn main() {
    let tmp = tempfile::tempdir().unwrap();

    // A local clone, watched.
    let local = tmp.path().join("local");
    std::fs::create_dir_all(local.join("sandboxes")).unwrap();
    std::fs::write(local.join("sandboxes/react.yaml"), sandbox(0)).unwrap();
    git(&local, &["init", "-q", "-b", "main"]);
    git(&local, &["add", "-A"]);
    git(&local, &["commit", "-qm", "first"]);
    let (_serve, api) = serve(tmp.path(), local.to_str().unwrap(), "local");
    seen(&api, &git(&local, &["rev-parse", "HEAD"]), Instant::now());
    let mut times = Vec::new();
    for i in 1..=COMMITS {
        std::fs::write(local.join("sandboxes/react.yaml"), sandbox(i)).unwrap();
        git(&local, &["add", "-A"]);
        git(&local, &["commit", "-qm", "change"]);
        let from = Instant::now();
        times.push(seen(&api, &git(&local, &["rev-parse", "HEAD"]), from));
        std::thread::sleep(Duration::from_millis(300));
    }
    report("local repo, commit -> seen (notify)", times, Duration::from_secs(1));

    // A remote repo, fetched on the hook.
    let bare = tmp.path().join("config.git");
    run(Command::new("git")
        .args(["clone", "-q", "--bare"])
        .arg(&local)
        .arg(&bare));
    let url = format!("file://{}", bare.display());
    let (_remote_serve, api) = serve(tmp.path(), &url, "remote");
    seen(&api, &git(&local, &["rev-parse", "HEAD"]), Instant::now());
    git(&local, &["remote", "add", "origin", bare.to_str().unwrap()]);
    let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
    let mut times = Vec::new();
    for i in 1..=COMMITS {
        std::fs::write(local.join("sandboxes/react.yaml"), sandbox(100 + i)).unwrap();
        git(&local, &["add", "-A"]);
        git(&local, &["commit", "-qm", "change"]);
        git(&local, &["push", "-q", "origin", "main"]);
        let from = Instant::now();
        agent.post(format!("{api}/api/v1/hooks/git")).send_empty().unwrap();
        times.push(seen(&api, &git(&local, &["rev-parse", "HEAD"]), from));
    }
    report("remote repo, push + hook -> seen", times, Duration::from_secs(1));
}
