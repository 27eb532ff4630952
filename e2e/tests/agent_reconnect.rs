//! A reconciler that dies and comes back: the agent reconnects by itself within its backoff, with a bounded
//! number of dial attempts, each logged with its cause.

use std::process::Command;
use std::time::{Duration, Instant};

use sdp_e2e::*;

fn serve(bins: &std::path::Path, dir: &std::path::Path, port: u16, log: &str) -> Process {
    Process::spawn(
        Command::new(bins.join("sdp"))
            .args(["serve", "--repo"])
            .arg(dir.join("config"))
            .arg("--data")
            .arg(dir.join("data"))
            .args(["--listen", &format!("127.0.0.1:{port}"), "--token-file"])
            .arg(dir.join("token")),
        dir.join(log),
    )
}

fn connected(api: &str) -> Result<(), String> {
    let nodes = get_json(&format!("{api}/api/v1/nodes"))?;
    if nodes.as_array().is_some_and(|n| !n.is_empty()) {
        Ok(())
    } else {
        Err(nodes.to_string())
    }
}

#[test]
fn the_agent_comes_back_after_a_reconciler_restart_without_a_dial_storm() {
    let image = runtime_image();
    let bins = binaries();
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("config");
    std::fs::create_dir_all(config.join("sandboxes")).unwrap();
    std::fs::write(config.join("sandboxes/.keep"), "").unwrap();
    git(&config, &["init", "-q", "-b", "main"]);
    git(&config, &["add", "-A"]);
    git(&config, &["commit", "-qm", "empty"]);
    std::fs::write(tmp.path().join("token"), "test-token-0123456789abcdef").unwrap();
    let port = free_port();
    let api = format!("http://127.0.0.1:{port}");
    let mut reconciler = serve(bins, tmp.path(), port, "serve-1.log");
    let agent_yaml = tmp.path().join("agent.yaml");
    std::fs::write(
        &agent_yaml,
        format!(
            "node: micro-rc\nrole: micro\nreconciler: ws://127.0.0.1:{port}/ws/agent\ntokenFile: {}\naddress: 127.0.0.1\nimage: {image}\ndataDir: {}\n",
            tmp.path().join("token").display(),
            tmp.path().join("agent").display()
        ),
    )
    .unwrap();
    let agent = Process::spawn(
        Command::new(bins.join("sdp-agent")).arg("--config").arg(&agent_yaml),
        tmp.path().join("agent.log"),
    );
    wait_for("the first connection", Duration::from_secs(30), || connected(&api));

    // The reconciler dies hard, stays away for a while, and comes back on the same port.
    reconciler.kill();
    let before = agent.output();
    let down = Duration::from_secs(6);
    let died = Instant::now();
    std::thread::sleep(down);
    let _reconciler = serve(bins, tmp.path(), port, "serve-2.log");
    wait_for("the agent to reconnect", Duration::from_secs(60), || connected(&api));
    let window = died.elapsed();

    let log = agent.output();
    let after = &log[before.len()..];
    let failed = after.matches("cannot talk to the reconciler").count();
    let lost = after.matches("closed; reconnecting").count() + after.matches("silent for").count();
    // Exponential backoff from 0.5 s: over ~6 s of downtime that is a handful of attempts, never a storm.
    eprintln!("{failed} failed dial attempts and {lost} lost connection(s) in {window:?}");
    assert!(failed + lost >= 1, "the loss was not even noticed:\n{after}");
    assert!(
        failed <= 10,
        "{failed} failed dial attempts in {window:?} is a reconnect storm:\n{after}"
    );
    assert!(
        after.contains("connection refused"),
        "each attempt names its cause:\n{after}"
    );
    assert!(after.contains("retry in"), "{after}");
}
