//! Push benchmark (DESIGN: a push to a service branch answers through the gateway within its `go build` time plus
//! 3 s). Release `sdp serve` and both agents on the real engine: the Apache gateway and the account service with
//! its vendored module (e2e/fixtures/go-services.sh); the micro agent's own periodic fetch is an hour, so only
//! Bitbucket's push webhook explains the reaction. Each round pushes a one-file change to account's branch, calls
//! the hook, and times until the gateway answers with the new commit; beside it, `go build` of that same commit
//! alone, in its own clone, with the agent's flags and a build cache warmed the same way (the previous commit
//! built), so both compile the changed package and link. Run: `cargo bench -p sdp-e2e --bench push`.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use sdp_e2e::*;

const ROUNDS: usize = 5;

fn version_go(round: usize) -> String {
    format!("package main\n\nconst version = \"{round}\"\n")
}

/// `go build` of the checkout at `dir` as the agent runs it (vendored: -mod=vendor), with `cache` as GOCACHE.
fn go_build(dir: &Path, cache: &Path) -> Duration {
    let started = Instant::now();
    run(Command::new("go")
        .current_dir(dir)
        .args(["build", "-trimpath", "-buildvcs=false", "-mod=vendor", "-o"])
        .arg(dir.join("app"))
        .arg(".")
        .env("CGO_ENABLED", "0")
        .env("GOTOOLCHAIN", "local")
        .env("GOPROXY", "off")
        .env("GOSUMDB", "off")
        .env_remove("GOFLAGS")
        .env("GOCACHE", cache));
    started.elapsed()
}

fn median(mut times: Vec<Duration>) -> Duration {
    times.sort();
    times[times.len() / 2]
}

fn main() {
    let mut cluster = Cluster::start();
    let name = format!("push-{}", suffix());
    let _cleanup = DockerCleanup { sandbox: name.clone() };
    let host = docker_host_ip();
    let go = cluster.path().join("go");
    run(Command::new("bash")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/go-services.sh"))
        .arg(&go));
    let account = ServiceRepo::from_work(cluster.path(), "account", &go.join("account"));
    let gateway = gateway_repo(cluster.path(), "develop", &["account"], "http://ocp.invalid:8080");
    let micro_cache = cluster.path().join("agent-go-cache");
    let micro = cluster.agent_yaml("micro-push", "micro", &[("account", &account.clone)], "");
    let text = std::fs::read_to_string(&micro)
        .unwrap()
        .replace("address: 127.0.0.1", &format!("address: {host}"))
        .replace("fetchSecs: 1", "fetchSecs: 3600");
    // The agent's own build cache, so the shared test cache cannot make its builds look faster.
    let text = text
        .lines()
        .map(|l| {
            if l.starts_with("goCache:") {
                format!("goCache: {}", micro_cache.display())
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(&micro, text + "\n").unwrap();
    let gw = cluster.agent_yaml("gateway-push", "gateway", &[("gateway", &gateway.clone)], "");
    cluster.start_agent(&micro, "micro-push");
    cluster.start_agent(&gw, "gateway-push");

    let (gateway_port, account_port) = (cluster.gateway_port(), cluster.service_port());
    let manifest = format!(
        "apiVersion: sdp/v1\nkind: Sandbox\nmetadata:\n  name: {name}\nspec:\n  gateway:\n    branch: develop\n    \
         port: {gateway_port}\n  services:\n    account:\n      branch: main\n      port: {account_port}\n  \
         routes:\n    account: sandbox\n"
    );
    cluster.commit(&format!("sandboxes/{name}.yaml"), &manifest, "bench sandbox");
    let url = format!("http://127.0.0.1:{gateway_port}/account/");
    let first = git(&account.origin, &["rev-parse", "main"]);
    wait_for(
        "the first commit through the gateway",
        Duration::from_secs(300),
        || match get_text(&url) {
            Ok(a) if a.contains(&first) => Ok(()),
            other => Err(format!("{other:?}")),
        },
    );

    // The lone build: its own clone and cache, warmed with the first commit as the agent's is.
    let alone = cluster.path().join("alone");
    run(Command::new("git")
        .args(["clone", "-q"])
        .arg(&account.origin)
        .arg(&alone));
    let alone_cache = cluster.path().join("alone-go-cache");
    go_build(&alone, &alone_cache);

    let hook = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .new_agent();
    let (mut pushes, mut builds) = (Vec::new(), Vec::new());
    for round in 1..=ROUNDS {
        let commit = account.push("main", "version.go", &version_go(round));
        let started = Instant::now();
        hook.post(format!("{}/api/v1/hooks/git", cluster.api))
            .send(r#"{"eventKey":"repo:refs_changed","repository":{"slug":"account"}}"#)
            .unwrap();
        loop {
            if get_text(&url).is_ok_and(|a| a.contains(&commit)) {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(120),
                "commit {commit} never answered"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let push = started.elapsed();
        git(&alone, &["fetch", "-q", "origin"]);
        git(&alone, &["checkout", "-q", "--detach", &commit]);
        let build = go_build(&alone, &alone_cache);
        println!(
            "round {round}: push -> answer {:.2} s, go build alone {:.2} s, difference {:.2} s",
            push.as_secs_f64(),
            build.as_secs_f64(),
            push.as_secs_f64() - build.as_secs_f64()
        );
        pushes.push(push);
        builds.push(build);
    }
    let (push, build) = (median(pushes.clone()), median(builds));
    let worst = pushes.iter().max().copied().unwrap_or_default();
    let over = push.as_secs_f64() - build.as_secs_f64();
    println!(
        "push to a service branch -> new commit through the gateway: median {:.2} s (max {:.2} s) over {ROUNDS} \
         pushes; go build alone median {:.2} s; SDP adds {over:.2} s (target: build + 3 s: {})",
        push.as_secs_f64(),
        worst.as_secs_f64(),
        build.as_secs_f64(),
        if over <= 3.0 { "met" } else { "NOT met" }
    );
}
