//! The redb store and the deployment logs, on real files in a temp dir.

use sdp_protocol::{Stage, StageState};
use sdp_reconciler::desired::Allocations;
use sdp_reconciler::store::{Deployment, DeploymentState, StageRecord, Store};

fn deployment(sandbox: &str, service: &str) -> Deployment {
    Deployment {
        id: 0,
        sandbox: sandbox.into(),
        service: service.into(),
        repo: service.into(),
        branch: "main".into(),
        commit: None,
        config_commit: "c0ffee".into(),
        config_author: "Ann <ann@example.com>".into(),
        environments: vec!["shared-dev".into()],
        reason: "missing".into(),
        trigger: "resync".into(),
        started_ms: 1,
        ended_ms: None,
        state: DeploymentState::Running,
        stages: vec![],
        error: None,
    }
}

#[test]
fn what_is_stored_survives_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = Store::open(dir.path()).unwrap();
        let mut a = Allocations::default();
        a.ports.insert(("box".into(), "account".into()), 9001);
        a.ports.insert(("box".into(), "gateway".into()), 8080);
        store.set_allocations(&a).unwrap();
        store.set_applied("sandbox-box-account", "00ff").unwrap();
        let d = store.start_deployment(deployment("box", "account")).unwrap();
        assert_eq!(d.id, 1);
        store
            .update_deployment(d.id, |d| {
                d.stages.push(StageRecord {
                    stage: Stage::Build,
                    state: StageState::Succeeded,
                    elapsed_ms: 1200,
                })
            })
            .unwrap();
    }
    let store = Store::open(dir.path()).unwrap();
    assert_eq!(
        store.allocations().unwrap().ports[&("box".to_string(), "account".to_string())],
        9001
    );
    assert_eq!(store.applied("sandbox-box-account").unwrap().as_deref(), Some("00ff"));
    // A deployment the reconciler did not finish (it was killed) is failed on start, and says why.
    assert_eq!(store.fail_unfinished(5).unwrap(), 1);
    let d = store.deployment(1).unwrap().unwrap();
    assert_eq!(d.state, DeploymentState::Failed);
    assert!(d.error.unwrap().contains("stopped during this deployment"));
    assert_eq!(d.stages.len(), 1);
    assert_eq!(
        store.start_deployment(deployment("box", "user")).unwrap().id,
        2,
        "ids go on after a reopen"
    );
}

#[test]
fn deployments_filter_newest_first_and_events_are_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap().with_event_limit(5);
    for (sb, svc) in [("a", "x"), ("b", "x"), ("a", "y"), ("a", "x")] {
        store.start_deployment(deployment(sb, svc)).unwrap();
    }
    let ids: Vec<u64> = store
        .deployments(|d| d.sandbox == "a", 10)
        .unwrap()
        .iter()
        .map(|d| d.id)
        .collect();
    assert_eq!(ids, [4, 3, 1]);
    assert_eq!(store.deployments(|_| true, 2).unwrap().len(), 2);
    for i in 0..12 {
        store
            .event(i, Some(if i % 2 == 0 { "a" } else { "b" }), format!("event {i}"))
            .unwrap();
    }
    let all = store.events(None, 100).unwrap();
    let seqs: Vec<u64> = all.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, [12, 11, 10, 9, 8], "the newest five, newest first");
    assert!(
        store
            .events(Some("a"), 100)
            .unwrap()
            .iter()
            .all(|e| e.sandbox.as_deref() == Some("a"))
    );
}

#[test]
fn a_log_is_read_from_any_line_and_its_tail_without_a_scan() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let log = store.log(7);
    assert!(log.is_empty());
    assert!(log.read_from(0, 10).unwrap().is_empty());
    let lines: Vec<String> = (0..1000).map(|i| format!("line {i}")).collect();
    log.append(&lines[..400]).unwrap();
    log.append(&lines[400..]).unwrap();
    log.append(&["two\nlines stay one".to_string()]).unwrap();
    assert_eq!(log.len(), 1001);
    assert_eq!(
        log.read_from(998, 10).unwrap(),
        ["line 998", "line 999", "two lines stay one"]
    );
    assert_eq!(log.tail(2).unwrap(), ["line 999", "two lines stay one"]);
    assert_eq!(log.read_from(0, 2).unwrap(), ["line 0", "line 1"]);
    assert!(log.read_from(5000, 1).unwrap().is_empty());
}

#[test]
fn a_backup_made_as_the_runbook_says_restores_everything() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    {
        let store = Store::open(&data).unwrap();
        let mut a = Allocations::default();
        a.ports.insert(("box".into(), "account".into()), 9007);
        store.set_allocations(&a).unwrap();
        let d = store.start_deployment(deployment("box", "account")).unwrap();
        store.log(d.id).append(&["go build ok".to_string()]).unwrap();
        store.event(1, Some("box"), "deployed".into()).unwrap();
    }
    // deploy/RUNBOOK.md: `tar -C /var/lib/sdp -czf FILE sdp.redb logs`, then `tar -C /var/lib/sdp -xzf FILE`.
    let archive = dir.path().join("backup.tar.gz");
    let tar = |args: &[&str]| {
        let ok = std::process::Command::new("tar").args(args).status().unwrap().success();
        assert!(ok, "tar {args:?}");
    };
    tar(&[
        "-C",
        data.to_str().unwrap(),
        "-czf",
        archive.to_str().unwrap(),
        "sdp.redb",
        "logs",
    ]);
    let restored = dir.path().join("restored");
    std::fs::create_dir_all(&restored).unwrap();
    tar(&["-C", restored.to_str().unwrap(), "-xzf", archive.to_str().unwrap()]);
    let store = Store::open(&restored).unwrap();
    assert_eq!(
        store.allocations().unwrap().ports[&("box".to_string(), "account".to_string())],
        9007
    );
    assert_eq!(store.deployment(1).unwrap().unwrap().service, "account");
    assert_eq!(store.log(1).tail(1).unwrap(), ["go build ok"]);
    assert_eq!(store.events(Some("box"), 10).unwrap()[0].message, "deployed");
}

#[test]
fn sessions_survive_a_reopen_until_they_expire_or_end() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = Store::open(dir.path()).unwrap();
        store.put_session("h-ann", "ann", 2_000, 1_000).unwrap();
        store.put_session("h-bob", "bob", 1_500, 1_000).unwrap();
        store.put_session("h-eve", "eve", 3_000, 1_000).unwrap();
        store.remove_session("h-eve").unwrap();
    }
    let store = Store::open(dir.path()).unwrap();
    let names = |now| -> Vec<String> { store.sessions(now).unwrap().into_iter().map(|s| s.1).collect() };
    assert_eq!(names(1_200), ["ann", "bob"]);
    assert_eq!(names(1_600), ["ann"], "bob's has expired");
    // Storing another drops the expired ones for good.
    store.put_session("h-cat", "cat", 5_000, 2_500).unwrap();
    assert_eq!(names(0), ["cat"]);
}
