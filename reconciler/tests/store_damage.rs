//! A store file that is damaged, locked or unreadable: `Store::open` and `sdp serve` say which, where and what to
//! do, never panic, and leave the file as they found it.

use std::fs;
use std::path::Path;
use std::process::{Command, Output};

use sdp_reconciler::store::{Deployment, DeploymentState, Store};

fn deployment(sandbox: &str) -> Deployment {
    Deployment {
        id: 0,
        sandbox: sandbox.into(),
        service: "account".into(),
        repo: "account".into(),
        branch: "main".into(),
        commit: None,
        config_commit: "c0ffee".into(),
        config_author: "Ann <ann@example.com>".into(),
        environments: vec![],
        reason: "missing".into(),
        trigger: "resync".into(),
        started_ms: 1,
        ended_ms: None,
        state: DeploymentState::Succeeded,
        stages: vec![],
        error: None,
    }
}

/// A data dir whose store holds a few deployments and events, closed cleanly; the bytes of its redb file.
fn filled(data: &Path) -> Vec<u8> {
    let store = Store::open(data).unwrap();
    for sandbox in ["first-box", "second-box", "third-box"] {
        store.start_deployment(deployment(sandbox)).unwrap();
        store.event(1, Some(sandbox), format!("deployed {sandbox}")).unwrap();
    }
    drop(store);
    fs::read(data.join("sdp.redb")).unwrap()
}

fn random(n: usize) -> Vec<u8> {
    let mut bytes = vec![0u8; n];
    std::io::Read::read_exact(&mut fs::File::open("/dev/urandom").unwrap(), &mut bytes).unwrap();
    bytes
}

/// Opening `data` fails; the message is the one about a damaged file, with its path, and the file is unchanged.
fn refused_as_damaged(data: &Path, case: &str) {
    let path = data.join("sdp.redb");
    let before = fs::read(&path).unwrap();
    let err = match Store::open(data) {
        Ok(_) => panic!("{case}: a damaged store was opened"),
        Err(e) => format!("{e:#}"),
    };
    assert!(err.contains(&format!("{} is damaged", path.display())), "{case}: {err}");
    assert!(err.contains("deploy/RUNBOOK.md"), "{case}: says how to restore: {err}");
    assert!(!err.contains("another `sdp serve`"), "{case}: not a lock: {err}");
    assert_eq!(
        fs::read(&path).unwrap(),
        before,
        "{case}: the damaged file is left as it was"
    );
}

#[test]
fn a_truncated_store_is_damaged_not_locked() {
    let dir = tempfile::tempdir().unwrap();
    let good = filled(dir.path());
    // Cuts inside the header, inside the data, and of one last byte (redb asserts on the last two).
    for cut in [4, 100, good.len() / 2, good.len() - 1] {
        fs::write(dir.path().join("sdp.redb"), &good[..cut]).unwrap();
        refused_as_damaged(dir.path(), &format!("cut at {cut} of {}", good.len()));
    }
}

#[test]
fn random_bytes_are_not_a_store() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("sdp.redb"), random(64 * 1024)).unwrap();
    refused_as_damaged(dir.path(), "random bytes");
    let err = format!("{:#}", Store::open(dir.path()).err().unwrap());
    assert!(err.contains("not a redb database file"), "{err}");
}

#[test]
fn a_redb_header_followed_by_garbage_is_damaged() {
    let dir = tempfile::tempdir().unwrap();
    let good = filled(dir.path());
    // The real header, so redb reads on, and random bytes from the first page on.
    let mut bytes = good[..4096].to_vec();
    bytes.extend(random(good.len() - 4096));
    fs::write(dir.path().join("sdp.redb"), &bytes).unwrap();
    refused_as_damaged(dir.path(), "header then garbage");
}

#[test]
fn a_damaged_deployment_is_named_when_asked_for_and_left_out_of_lists() {
    let dir = tempfile::tempdir().unwrap();
    let mut bytes = filled(dir.path());
    // Deployment 2's JSON, as the store wrote it, made unreadable in place (same length, same page).
    let needle = br#"{"id":2,"sandbox":"second-box""#;
    let mut hits = 0;
    for at in 0..bytes.len() - needle.len() {
        if &bytes[at..at + needle.len()] == needle {
            bytes[at] = b'#';
            hits += 1;
        }
    }
    assert!(hits > 0, "deployment 2 is stored as plain JSON");
    let path = dir.path().join("sdp.redb");
    fs::write(&path, &bytes).unwrap();

    let store = Store::open(dir.path()).unwrap();
    let err = format!("{:#}", store.deployment(2).unwrap_err());
    assert!(err.contains("deployment 2 (table deployments)"), "{err}");
    assert!(err.contains(&path.display().to_string()), "{err}");
    assert!(err.contains("deploy/RUNBOOK.md"), "{err}");
    assert!(store.update_deployment(2, |d| d.error = None).is_err());
    let listed: Vec<u64> = store.deployments(|_| true, 10).unwrap().iter().map(|d| d.id).collect();
    assert_eq!(listed, [3, 1], "the readable ones, newest first");
    assert_eq!(store.deployment(3).unwrap().unwrap().sandbox, "third-box");
    drop(store);
    // The file opens (redb rewrites its header on every open and close), but the value stays as it was found.
    let damaged = [b"#".as_slice(), &needle[1..]].concat();
    let after = fs::read(&path).unwrap();
    assert_eq!(
        after
            .windows(damaged.len())
            .filter(|w| *w == damaged.as_slice())
            .count(),
        hits
    );
}

#[test]
fn a_store_open_elsewhere_is_locked_not_damaged() {
    let dir = tempfile::tempdir().unwrap();
    let held = Store::open(dir.path()).unwrap();
    let path = dir.path().join("sdp.redb");
    let before = fs::read(&path).unwrap();
    // redb locks the file with flock(2), which a second open in the same process meets as well.
    let err = format!("{:#}", Store::open(dir.path()).err().unwrap());
    assert!(err.contains(&path.display().to_string()), "{err}");
    assert!(err.contains("another `sdp serve`"), "{err}");
    assert!(!err.contains("damaged"), "{err}");
    assert_eq!(fs::read(&path).unwrap(), before);
    drop(held);
    Store::open(dir.path()).expect("opens once the other has closed it");
}

#[test]
fn a_data_dir_that_is_a_file_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    fs::write(&data, "not a dir").unwrap();
    let err = format!("{:#}", Store::open(&data).err().unwrap());
    assert!(
        err.contains(&format!("cannot create the data dir {}", data.display())),
        "{err}"
    );
}

/// `sdp serve` on `data` (it opens the store before it listens), with what it needs to get that far.
fn serve(data: &Path) -> Output {
    let token = data.parent().unwrap().join("token");
    fs::write(&token, "0123456789abcdef0123").unwrap();
    Command::new(env!("CARGO_BIN_EXE_sdp"))
        .args([
            "serve",
            "--repo",
            "/nonexistent/config",
            "--allow-anonymous",
            "--listen",
            "127.0.0.1:0",
        ])
        .arg("--data")
        .arg(data)
        .arg("--token-file")
        .arg(&token)
        .output()
        .unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn serve_on_a_damaged_store_exits_with_the_message_and_no_panic() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let good = filled(&data);
    let path = data.join("sdp.redb");
    fs::write(&path, &good[..good.len() / 2]).unwrap();
    let out = serve(&data);
    let said = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{said}");
    assert!(
        said.contains(&format!("error: {} is damaged", path.display())),
        "{said}"
    );
    assert!(said.contains("deploy/RUNBOOK.md"), "{said}");
    assert!(
        !said.contains("panicked"),
        "redb's panic is caught and not printed: {said}"
    );
    assert_eq!(fs::read(&path).unwrap(), &good[..good.len() / 2]);
}

#[test]
fn serve_on_a_store_another_process_holds_exits_with_the_lock_message() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let held = Store::open(&data).unwrap();
    let path = data.join("sdp.redb");
    let before = fs::read(&path).unwrap();
    let out = serve(&data);
    let said = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{said}");
    assert!(said.contains(&format!("cannot open {}", path.display())), "{said}");
    assert!(said.contains("another `sdp serve`"), "{said}");
    assert_eq!(fs::read(&path).unwrap(), before);
    drop(held);
}

#[test]
fn a_store_left_by_a_killed_serve_is_repaired_not_refused() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    filled(&data);
    let token = dir.path().join("token");
    fs::write(&token, "0123456789abcdef0123").unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_sdp"))
        .args([
            "serve",
            "--repo",
            "/nonexistent/config",
            "--allow-anonymous",
            "--listen",
            "127.0.0.1:0",
        ])
        .arg("--data")
        .arg(&data)
        .arg("--token-file")
        .arg(&token)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // It listens only once the store is open (and marked in use): killed then, it leaves the file unclean.
    let mut lines = std::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let listening = lines.by_ref().map_while(Result::ok).any(|l| l.contains("listening on"));
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(listening, "sdp serve started");
    // The kill leaves the file unclean. Whether it needs redb's full repair or only the allocator state its last
    // commit saved depends on which write was last (redb 4 reads that state when a commit left it): both are a
    // file a killed serve leaves, and the store must open either. Any other error is damage the kill should not
    // cause.
    // A `git` the serve was starting may still hold the file's lock for a moment: forked, it shares the serve's
    // descriptors until it execs, and the kill does not stop it. Only that is waited for, a second at most.
    let mut tries = 0;
    loop {
        match redb::ReadOnlyDatabase::open(data.join("sdp.redb")) {
            Ok(_) | Err(redb::DatabaseError::RepairAborted) => break,
            Err(redb::DatabaseError::DatabaseAlreadyOpen) if tries < 100 => {
                tries += 1;
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            Err(e) => panic!("the kill damaged the file: {e}"),
        }
    }

    let store = Store::open(&data).expect("redb repairs an unclean file on open");
    let sandboxes: Vec<String> = store
        .deployments(|_| true, 10)
        .unwrap()
        .into_iter()
        .map(|d| d.sandbox)
        .collect();
    assert_eq!(sandboxes, ["third-box", "second-box", "first-box"]);
}

/// A store with deployment 5's log holding `line 0`..`line 2`; the paths of its text and index.
fn log_of_three(data: &Path) -> (Store, std::path::PathBuf, std::path::PathBuf) {
    let store = Store::open(data).unwrap();
    store
        .log(5)
        .append(&["line 0".into(), "line 1".into(), "line 2".into()])
        .unwrap();
    (store, data.join("logs/5.log"), data.join("logs/5.idx"))
}

fn append_bytes(path: &Path, bytes: &[u8]) {
    use std::io::Write;
    fs::OpenOptions::new()
        .append(true)
        .open(path)
        .unwrap()
        .write_all(bytes)
        .unwrap();
}

#[test]
fn a_torn_log_line_is_never_read_and_is_cut_off_before_the_next_line() {
    let dir = tempfile::tempdir().unwrap();
    let (store, text, index) = log_of_three(dir.path());
    // The crash: part of a fourth line reached the disk, its index entry did not.
    append_bytes(&text, b"line 3 was cut he");
    let before = (fs::read(&text).unwrap(), fs::read(&index).unwrap());
    let log = store.log(5);
    assert_eq!(log.len(), 3);
    assert_eq!(log.read_from(0, 10).unwrap(), ["line 0", "line 1", "line 2"]);
    assert_eq!(log.tail(1).unwrap(), ["line 2"]);
    assert_eq!(
        (fs::read(&text).unwrap(), fs::read(&index).unwrap()),
        before,
        "reading changes nothing"
    );

    let mut writer = log.writer().unwrap();
    assert_eq!(writer.append("line 3").unwrap(), 3);
    assert_eq!(log.read_from(2, 10).unwrap(), ["line 2", "line 3"]);
    assert_eq!(fs::read_to_string(&text).unwrap(), "line 0\nline 1\nline 2\nline 3\n");
    assert_eq!(fs::read(&index).unwrap().len(), 4 * 8);
}

#[test]
fn a_whole_line_that_lost_its_index_entry_keeps_its_place() {
    let dir = tempfile::tempdir().unwrap();
    let (store, text, _) = log_of_three(dir.path());
    append_bytes(&text, b"line 3\n");
    let log = store.log(5);
    assert_eq!(log.tail(1).unwrap(), ["line 2"], "not indexed yet");
    assert_eq!(log.writer().unwrap().append("line 4").unwrap(), 4);
    assert_eq!(
        log.read_from(0, 10).unwrap(),
        ["line 0", "line 1", "line 2", "line 3", "line 4"]
    );
}

#[test]
fn a_torn_index_entry_is_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _, index) = log_of_three(dir.path());
    append_bytes(&index, &[9, 9, 9]);
    let log = store.log(5);
    assert_eq!(log.len(), 3);
    assert_eq!(log.tail(3).unwrap(), ["line 0", "line 1", "line 2"]);
    assert_eq!(log.writer().unwrap().append("line 3").unwrap(), 3);
    assert_eq!(log.read_from(3, 1).unwrap(), ["line 3"]);
    assert_eq!(fs::read(&index).unwrap().len(), 4 * 8);
}

#[test]
fn an_index_entry_that_does_not_start_a_line_is_an_error_not_a_wrong_line() {
    for (case, offset) in [("past the text", 1_000_000u64), ("inside a line", 3)] {
        let dir = tempfile::tempdir().unwrap();
        let (store, text, index) = log_of_three(dir.path());
        append_bytes(&index, &offset.to_le_bytes());
        let before = (fs::read(&text).unwrap(), fs::read(&index).unwrap());
        let log = store.log(5);
        assert_eq!(log.len(), 4);
        for err in [log.tail(1).unwrap_err(), log.read_from(0, 10).unwrap_err()] {
            let err = format!("{err:#}");
            assert!(
                err.contains(&format!("{} does not match its index", text.display())),
                "{case}: {err}"
            );
            assert!(err.contains("at line 3"), "{case}: {err}");
        }
        assert_eq!(log.read_from(1, 2).unwrap(), ["line 1", "line 2"], "{case}");
        assert_eq!((fs::read(&text).unwrap(), fs::read(&index).unwrap()), before, "{case}");
        // Writing mends the index from the text.
        assert_eq!(log.writer().unwrap().append("line 3").unwrap(), 3, "{case}");
        assert_eq!(log.tail(2).unwrap(), ["line 2", "line 3"], "{case}");
    }
}
