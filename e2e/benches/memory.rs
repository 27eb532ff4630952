//! Memory benchmark (DESIGN: the reconciler under 64 MB RSS with 1,000 sandboxes; an idle agent under 20 MB).
//! A release `sdp serve` reads a config repo of 1,000 sandboxes of 10 services each (no agent connected, so
//! nothing is deployed: every sandbox waits for its agents, as after a cold start); its RSS is read from /proc
//! once loaded and settled, then after each of three rounds of API and dashboard reads, and again after a pause.
//! Then an idle `sdp-agent` with a reconciler of its own. Run: `cargo bench -p sdp-e2e --bench memory`.

use std::process::Command;
use std::time::{Duration, Instant};

use sdp_e2e::*;

const SANDBOXES: usize = 1000;
const SERVICES: usize = 10;
const TARGET_SERVE_MB: f64 = 64.0;
const TARGET_AGENT_MB: f64 = 20.0;

/// (RSS, peak RSS) in MB of a process, from /proc.
fn rss(pid: u32) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("the process runs");
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|kb| kb.parse::<f64>().ok())
            .map_or(0.0, |kb| kb / 1024.0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn sandbox(i: usize) -> String {
    let mut s = format!(
        "apiVersion: sdp/v1\nkind: Sandbox\nmetadata:\n  name: sb-{i:04}\n  owner: user{}\nspec:\n  gateway:\n    \
         branch: develop\n  services:\n",
        i % 40
    );
    for svc in 0..SERVICES {
        s.push_str(&format!(
            "    svc{svc}:\n      branch: feature/t-{}\n      environments: [shared-dev]\n      env: {{ LOG_LEVEL: debug }}\n",
            i % 7
        ));
    }
    s.push_str("  routes:\n    svc0: sandbox\n    svc1: ocp\n");
    s
}

fn main() {
    let bins = binaries();
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("config");
    std::fs::create_dir_all(config.join("sandboxes")).unwrap();
    std::fs::create_dir_all(config.join("environments")).unwrap();
    std::fs::copy(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/environments/shared-dev.yaml"),
        config.join("environments/shared-dev.yaml"),
    )
    .unwrap();
    for i in 0..SANDBOXES {
        std::fs::write(config.join(format!("sandboxes/sb-{i:04}.yaml")), sandbox(i)).unwrap();
    }
    git(&config, &["init", "-q", "-b", "main"]);
    git(&config, &["add", "-A"]);
    git(&config, &["commit", "-qm", "1000 sandboxes"]);
    let token = tmp.path().join("token");
    std::fs::write(&token, "bench-token-0123456789abcdef\n").unwrap();
    let port = free_port();
    let serve_yaml = tmp.path().join("serve.yaml");
    std::fs::write(
        &serve_yaml,
        format!(
            "repo: {}\ndata: {}\nlisten: 127.0.0.1:{port}\ntokenFile: {}\ngatewayPorts: [20000, 21999]\n\
             servicePorts: [30000, 49999]\nallowAnonymous: true\n",
            config.display(),
            tmp.path().join("data").display(),
            token.display()
        ),
    )
    .unwrap();
    let serve = Process::spawn(
        Command::new(bins.join("sdp"))
            .args(["serve", "--config"])
            .arg(&serve_yaml),
        tmp.path().join("serve.log"),
    );
    let pid = serve.child.id();
    let api = format!("http://127.0.0.1:{port}");
    let started = Instant::now();
    wait_for("1,000 sandboxes loaded", Duration::from_secs(120), || {
        let list = get_json(&format!("{api}/api/v1/sandboxes"))?;
        let n = list.as_array().map_or(0, Vec::len);
        if n == SANDBOXES {
            Ok(())
        } else {
            Err(format!("{n} so far\n{}", serve.output()))
        }
    });
    let loaded_in = started.elapsed();
    std::thread::sleep(Duration::from_secs(5));
    let mut rows = vec![("loaded and settled".to_string(), rss(pid))];

    for round in 1..=3 {
        for path in [
            "/api/v1/sandboxes",
            "/",
            "/deployments",
            "/nodes",
            "/api/v1/nodes",
            "/metrics",
        ] {
            get_text(&format!("{api}{path}")).unwrap();
        }
        for i in (0..SANDBOXES).step_by(50) {
            get_text(&format!("{api}/sandboxes/sb-{i:04}")).unwrap();
            get_text(&format!("{api}/api/v1/sandboxes/sb-{i:04}")).unwrap();
        }
        rows.push((format!("after read round {round}"), rss(pid)));
    }
    std::thread::sleep(Duration::from_secs(5));
    rows.push(("5 s after the reads".to_string(), rss(pid)));
    drop(serve);

    // An idle agent: connected to a reconciler with nothing to do.
    let mut cluster = Cluster::start();
    let yaml = cluster.agent_yaml("micro-mem", "micro", &[], "");
    let agent = cluster.start_agent(&yaml, "micro-mem");
    std::thread::sleep(Duration::from_secs(5));
    let agent_rss = rss(cluster.agents[agent].child.id());

    println!("sdp serve, {SANDBOXES} sandboxes x {SERVICES} services (loaded in {loaded_in:.1?}):");
    println!("  {:<24} {:>8} {:>8}", "when", "RSS MB", "peak MB");
    for (when, (now, peak)) in &rows {
        println!("  {when:<24} {now:>8.1} {peak:>8.1}");
    }
    let worst = rows.iter().map(|(_, (now, _))| *now).fold(0.0, f64::max);
    println!(
        "  highest settled RSS {worst:.1} MB: target < {TARGET_SERVE_MB} MB ({})",
        if worst < TARGET_SERVE_MB { "met" } else { "NOT met" }
    );
    println!(
        "sdp-agent idle: RSS {:.1} MB (peak {:.1} MB): target < {TARGET_AGENT_MB} MB ({})",
        agent_rss.0,
        agent_rss.1,
        if agent_rss.0 < TARGET_AGENT_MB {
            "met"
        } else {
            "NOT met"
        }
    );
}
