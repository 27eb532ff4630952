//! A reconciler that dies and comes back: the agent reconnects by itself within its backoff, with a bounded
//! number of dial attempts, each logged with its cause.

use std::time::{Duration, Instant};

use sdp_e2e::*;

#[test]
fn the_agent_comes_back_after_a_reconciler_restart_without_a_dial_storm() {
    let mut cluster = Cluster::start();
    let yaml = cluster.agent_yaml("micro-rc", "micro", &[], "");
    let agent = cluster.start_agent(&yaml, "micro-rc");

    // The reconciler dies hard, stays away for a while, and comes back on the same port.
    cluster.serve.kill();
    let before = cluster.agents[agent].output();
    let died = Instant::now();
    std::thread::sleep(Duration::from_secs(6));
    cluster.restart_serve();
    let api = cluster.api.clone();
    wait_for("the agent to reconnect", Duration::from_secs(60), || {
        let nodes = get_json(&format!("{api}/api/v1/nodes"))?;
        if nodes.as_array().is_some_and(|n| !n.is_empty()) {
            Ok(())
        } else {
            Err(nodes.to_string())
        }
    });
    let window = died.elapsed();

    let log = cluster.agents[agent].output();
    let after = &log[before.len()..];
    let failed = after.matches("cannot talk to the reconciler").count();
    eprintln!("{failed} failed dial attempts in {window:?}");
    assert!(failed >= 1, "the loss was not even noticed:\n{after}");
    // Exponential backoff from 0.5 s: over ~6 s of downtime that is a handful of attempts, never a storm.
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
