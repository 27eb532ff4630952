//! Scenarios of issue 5 on the real engine: two sandboxes run two branches of one service side by side; a push
//! replaces only the containers of that branch; a container removed by hand comes back; suspend stops and resume
//! restarts on the same ports. (One test per file: two SDP installations on one engine would see each other's
//! containers, and cargo runs the tests of one file in parallel.)

use std::process::Command;
use std::time::Duration;

use sdp_e2e::*;

fn id(container: &str) -> Option<String> {
    let out = Command::new("docker")
        .args(["inspect", "-f", "{{.Id}}", container])
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn state(container: &str) -> Option<String> {
    let out = Command::new("docker")
        .args(["inspect", "-f", "{{.State.Status}}", container])
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

const LONG: Duration = Duration::from_secs(120);

#[test]
fn two_sandboxes_side_by_side_drift_and_suspend() {
    let mut cluster = Cluster::start();
    let (a, b) = (format!("sa-{}", suffix()), format!("sb-{}", suffix()));
    let _clean = (
        DockerCleanup { sandbox: a.clone() },
        DockerCleanup { sandbox: b.clone() },
    );
    let account = ServiceRepo::new(cluster.path(), "account", "main");
    let payment = ServiceRepo::new(cluster.path(), "payment", "main");
    let feature = account.push("feature/x", "name.go", "package main\n\nconst NAME = \"account-x\"\n");
    let yaml = cluster.agent_yaml(
        "micro-sc",
        "micro",
        &[("account", &account.clone), ("payment", &payment.clone)],
        "containerPort: 8080\n",
    );
    cluster.start_agent(&yaml, "micro-sc");

    let (a_account, a_payment, b_account) = (cluster.service_port(), cluster.service_port(), cluster.service_port());
    cluster.commit(
        &format!("sandboxes/{a}.yaml"),
        &sandbox_manifest(
            &a,
            &[("account", "main", a_account), ("payment", "main", a_payment)],
            "",
        ),
        "a",
    );
    cluster.commit(
        &format!("sandboxes/{b}.yaml"),
        &sandbox_manifest(&b, &[("account", "feature/x", b_account)], ""),
        "b",
    );

    // 6. Two branches of one service, side by side, on their own ports.
    let main = git(&account.origin, &["rev-parse", "main"]);
    let a_says = wait_for("sandbox a's account", LONG, || {
        answers(a_account, &main)().map_err(|e| format!("{e}\n{}", cluster.logs()))
    });
    assert!(a_says.starts_with(&format!("account {a} main ")), "{a_says}");
    let b_says = wait_for("sandbox b's account", LONG, answers(b_account, &feature));
    assert!(b_says.starts_with(&format!("account-x {b} feature/x ")), "{b_says}");
    wait_for("sandbox a's payment", LONG, answers(a_payment, "payment"));
    let ids = |names: &[&str]| names.iter().map(|n| id(n)).collect::<Vec<_>>();
    let (acc_a, pay_a, acc_b) = (
        format!("sandbox-{a}-account"),
        format!("sandbox-{a}-payment"),
        format!("sandbox-{b}-account"),
    );
    let before = ids(&[&acc_a, &pay_a, &acc_b]);

    // 2. A push to main replaces a's account only: a's payment and b's account (feature/x) keep their ids.
    let pushed = account.push("main", "name.go", "package main\n\nconst NAME = \"account-2\"\n");
    wait_for("the push to reach a's account", LONG, answers(a_account, &pushed));
    let after = ids(&[&acc_a, &pay_a, &acc_b]);
    assert_ne!(after[0], before[0]);
    assert_eq!(
        after[1..],
        before[1..],
        "only the pushed branch's container was replaced"
    );

    // 4. A container removed by hand is drift: it comes back.
    run(Command::new("docker").args(["rm", "-f", &pay_a]));
    wait_for("a's payment to come back", LONG, answers(a_payment, "payment"));

    // 9. Suspend stops a's containers and keeps its ports; resume brings them back on the same ports.
    let file = format!("sandboxes/{a}.yaml");
    let spec = |extra: &str| {
        sandbox_manifest(
            &a,
            &[("account", "main", a_account), ("payment", "main", a_payment)],
            extra,
        )
    };
    cluster.commit(&file, &spec("  suspend: true\n"), "suspend a");
    wait_for("a's containers to stop", LONG, || {
        let s = (state(&acc_a), state(&pay_a));
        if s == (Some("exited".into()), Some("exited".into())) {
            Ok(())
        } else {
            Err(format!("{s:?}"))
        }
    });
    let api = cluster.api.clone();
    let sb = wait_for("the API to say Suspended", LONG, || {
        let sb = get_json(&format!("{api}/api/v1/sandboxes/{a}"))?;
        if sb["status"]["sync"] == "Suspended" {
            Ok(sb)
        } else {
            Err(sb["status"].to_string())
        }
    });
    assert_eq!(sb["desired"]["services"]["account"]["hostPort"], a_account);
    assert!(
        get_text(&format!("http://127.0.0.1:{b_account}/")).is_ok(),
        "b is not touched"
    );
    cluster.commit(&file, &spec(""), "resume a");
    wait_for("a's account back on its port", LONG, answers(a_account, &pushed));
    wait_for("a's payment back on its port", LONG, answers(a_payment, "payment"));
}
