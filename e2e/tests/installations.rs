//! Two SDP installations on one Docker engine (a demo on a VM that runs a real agent; two test clusters): each
//! labels what it makes with its own installation, reports and touches only that, and so neither prunes the
//! other's sandbox as "not desired". Before the label, each removed the other's containers within a resync.

use std::process::Command;
use std::time::Duration;

use sdp_e2e::*;

fn inspect(container: &str, format: &str) -> Result<String, String> {
    let out = Command::new("docker")
        .args(["inspect", "-f", format, container])
        .output()
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// A reconciler with a micro agent running one sandbox of one service; the sandbox's service container.
fn installation(tag: &str) -> (Cluster, DockerCleanup, String) {
    let mut cluster = Cluster::start();
    let name = format!("{tag}-{}", suffix());
    let cleanup = DockerCleanup { sandbox: name.clone() };
    let account = ServiceRepo::new(cluster.path(), "account", "main");
    let node = format!("micro-{tag}");
    let micro = cluster.agent_yaml(&node, "micro", &[("account", &account.clone)], "");
    cluster.start_agent(&micro, &node);
    let manifest = sandbox_manifest(&name, &[("account", "main", cluster.service_port())], "");
    cluster.commit(&format!("sandboxes/{name}.yaml"), &manifest, "a sandbox");
    let container = format!("sandbox-{name}-account");
    wait_for(
        &format!("{container} to run"),
        Duration::from_secs(180),
        || match inspect(&container, "{{.State.Running}}") {
            Ok(r) if r == "true" => Ok(()),
            other => Err(format!("{other:?}\n{}", cluster.logs())),
        },
    );
    (cluster, cleanup, container)
}

#[test]
fn two_installations_on_one_engine_leave_each_other_alone() {
    let (a, _a_cleanup, a_container) = installation("insta");
    let (b, _b_cleanup, b_container) = installation("instb");
    let ids = (
        inspect(&a_container, "{{.Id}}").unwrap(),
        inspect(&b_container, "{{.Id}}").unwrap(),
    );
    let label = "{{index .Config.Labels \"sdp.installation\"}}";
    let (a_owner, b_owner) = (
        inspect(&a_container, label).unwrap(),
        inspect(&b_container, label).unwrap(),
    );
    assert!(a_owner.len() == 16 && b_owner.len() == 16, "{a_owner} {b_owner}");
    assert_ne!(a_owner, b_owner, "each installation has its own id");

    // Several resyncs (every 2 s here) of both: each would have pruned the other's container by now.
    std::thread::sleep(Duration::from_secs(8));
    let now = (
        inspect(&a_container, "{{.Id}}").unwrap_or_default(),
        inspect(&b_container, "{{.Id}}").unwrap_or_default(),
    );
    assert_eq!(
        now,
        ids,
        "a container was removed or replaced\n{}\n{}",
        a.logs(),
        b.logs()
    );
    for (cluster, theirs) in [(&a, &b_container), (&b, &a_container)] {
        let nodes = cluster.get("/api/v1/nodes").unwrap().to_string();
        assert!(
            !nodes.contains(theirs.as_str()),
            "the other installation's container is reported: {nodes}"
        );
    }
}
