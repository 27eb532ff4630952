//! Both agents on one Docker engine, as the demo runs them: a sandbox with only a gateway converges. Its network
//! is the gateway's; the micro agent, which runs nothing of that sandbox, must not report it and so never be asked
//! to remove a network the gateway's container uses (which looped on "active endpoints").

use std::time::Duration;

use sdp_e2e::*;

#[test]
fn a_gateway_only_sandbox_converges_when_both_agents_share_the_engine() {
    let mut cluster = Cluster::start();
    let name = format!("go-{}", suffix());
    let account = ServiceRepo::new(cluster.path(), "account", "main");
    let gateway = gateway_repo(cluster.path(), "develop", &["account"], "http://127.0.0.1:9");
    let micro = cluster.agent_yaml(
        "micro-sh",
        "micro",
        &[("account", &account.clone)],
        "containerPort: 8080\n",
    );
    let gw = cluster.agent_yaml("gateway-sh", "gateway", &[("gateway", &gateway.clone)], "");
    cluster.start_agent(&micro, "micro-sh");
    cluster.start_agent(&gw, "gateway-sh");
    let port = cluster.gateway_port();
    cluster.commit(
        &format!("sandboxes/{name}.yaml"),
        &format!(
            "apiVersion: sdp/v1\nkind: Sandbox\nmetadata:\n  name: {name}\nspec:\n  gateway:\n    branch: develop\n    \
             port: {port}\n"
        ),
        "a gateway only",
    );
    wait_for("the sandbox to be synced", Duration::from_secs(180), || {
        let sb = cluster.get(&format!("/api/v1/sandboxes/{name}"))?;
        if sb["status"]["sync"] == "Synced" {
            Ok(())
        } else {
            Err(format!("{sb}\n{}", cluster.logs()))
        }
    });
    // And it stays so over a few resyncs (every 2 s here): nothing is left to do on either role.
    std::thread::sleep(Duration::from_secs(6));
    let sb = cluster.get(&format!("/api/v1/sandboxes/{name}")).unwrap();
    assert_eq!(sb["status"]["sync"], "Synced", "{sb:#}");
    assert!(
        !cluster
            .serve
            .output()
            .contains(&format!("remove network sandbox-{name} on micro")),
        "{}",
        cluster.logs()
    );
}
