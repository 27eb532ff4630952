//! A real agent against a hostile reconciler on a real socket: a stand-in server accepts the agent's WebSocket,
//! welcomes it, and sends a bounded stream of random, truncated, oversized, deeply nested and hostile frames (names
//! with `..`, commits that are not hex, a container SDP does not own, request kinds it does not know, bodies of the
//! wrong shape). The agent must stay up, answer every request it could read with an error, touch nothing on the
//! engine, keep its memory bounded, and still answer a sound question afterwards.

use std::net::TcpListener;
use std::process::Command;
use std::time::{Duration, Instant};

use sdp_e2e::*;
use tungstenite::Message;

/// How many frames one run sends.
const FRAMES: u64 = 300;

/// A small deterministic generator: the seed is printed, so a failure can be replayed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
    fn pick<'a>(&mut self, of: &[&'a str]) -> &'a str {
        of[self.below(of.len() as u64) as usize]
    }
}

/// Names no validation may let through, and a container that is not SDP's.
const HOSTILE: &[&str] = &[
    "../../victim",
    "..",
    "",
    "UPPER",
    "a/b",
    "sandbox\n",
    "x\u{0}y",
    "-leading",
    "ŝandbox",
    "a b",
];

fn hostile_action(rng: &mut Rng, bystander: &str) -> serde_json::Value {
    let name = rng.pick(HOSTILE);
    let commit = rng.pick(&["zz", "../HEAD", "0123", "c0ffee; rm -rf /", ""]);
    match rng.below(8) {
        0 => serde_json::json!({ "kind": "ensureNetwork", "sandbox": name }),
        1 => serde_json::json!({ "kind": "removeNetwork", "sandbox": name }),
        2 => serde_json::json!({ "kind": "removeWorktree", "sandbox": name, "service": "account" }),
        3 => serde_json::json!({ "kind": "removeWorktree", "sandbox": "box", "service": name }),
        4 => serde_json::json!({ "kind": "stop", "container": bystander }),
        5 => serde_json::json!({ "kind": "removeContainer", "container": bystander }),
        6 => serde_json::json!({ "kind": "setRoutes", "sandbox": name, "routes": { "account": "http://x" } }),
        _ => serde_json::json!({
            "kind": "deployService",
            "sandbox": name,
            "service": "account",
            "branch": "main",
            "commit": commit,
            "container": format!("sandbox-{name}-account"),
            "hostPort": 1,
            "env": {}, "secretFiles": { "X": "/etc/shadow" }, "files": { "../../etc/cron.d/x": "boom" },
            "labels": {}
        }),
    }
}

/// A whole request the agent can read as a frame but must refuse: a kind it does not know, a body of the wrong
/// shape, or a repository it does not serve.
fn hostile_ask(rng: &mut Rng, id: u64) -> serde_json::Value {
    let (kind, body) = match rng.below(5) {
        0 => ("restartDocker", serde_json::json!({ "now": true })),
        1 => ("listBranches", serde_json::json!({ "repo": 5 })),
        2 => ("listBranches", serde_json::json!({ "repo": rng.pick(HOSTILE) })),
        3 => (
            "action",
            serde_json::json!({ "action": { "kind": "formatDisk", "sandbox": "a" } }),
        ),
        _ => ("action", serde_json::Value::Null),
    };
    serde_json::json!({ "type": "ask", "requestId": id, "kind": kind, "body": body })
}

fn frame(rng: &mut Rng, id: u64, bystander: &str) -> Message {
    match rng.below(10) {
        // Random bytes as text and as binary.
        0 => Message::Text({
            let n = rng.below(4096) as usize;
            String::from_utf8_lossy(&rng.bytes(n)).into_owned().into()
        }),
        1 => {
            let n = rng.below(4096) as usize;
            Message::Binary(rng.bytes(n).into())
        }
        // A hostile action, whole or cut anywhere.
        2..=4 => {
            let text = serde_json::json!({
                "type": "ask",
                "requestId": id,
                "kind": "action",
                "body": { "deploymentId": id.to_string(), "action": hostile_action(rng, bystander) },
            })
            .to_string();
            if rng.below(3) == 0 {
                let cut = rng.below(text.len() as u64) as usize;
                Message::Text(text[..cut].to_string().into())
            } else {
                Message::Text(text.into())
            }
        }
        // Wrong shapes and types.
        5 => Message::Text(
            rng.pick(&[
                r#"{"type":"ask"}"#,
                r#"{"type":"action","requestId":1,"action":{"kind":"stop","container":"x"}}"#,
                r#"{"type":"welcome","protocolVersion":"one"}"#,
                r#"{"type":"ask","requestId":-1,"kind":"listBranches","body":{"repo":"account"}}"#,
                r#"{"type":"fetch","repo":"../../etc"}"#,
                r#"{"type":"nope"}"#,
                "null",
                "[]",
                "\"\"",
            ])
            .to_string()
            .into(),
        ),
        // Deep nesting: a parser that recurses without a limit would overflow its stack.
        6 => Message::Text(format!("{}{}", "[".repeat(100_000), "]".repeat(100_000)).into()),
        // Large: a megabyte of one string.
        7 => Message::Text(format!(r#"{{"type":"fetch","repo":"{}"}}"#, "a".repeat(1 << 20)).into()),
        8 => Message::Text(hostile_ask(rng, id).to_string().into()),
        _ => Message::Ping(rng.bytes(16).into()),
    }
}

/// A container of someone else's, removed when the test ends however it ends.
struct RemoveOnDrop(String);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = Command::new("docker").args(["rm", "-f", &self.0]).output();
    }
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

#[test]
fn an_agent_fed_hostile_frames_stays_up_answers_touches_nothing_and_stays_small() {
    let tmp = tempfile::tempdir().unwrap();
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    eprintln!("seed {seed}");
    let mut rng = Rng(seed);
    let account = ServiceRepo::new(tmp.path(), "account", "main");
    let bystander = format!("bystander-{}", suffix());
    run(Command::new("docker").args(["create", "--name", &bystander, runtime_image(), "true"]));
    let _bystander = RemoveOnDrop(bystander.clone());

    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let token = tmp.path().join("token");
    std::fs::write(&token, "fuzz-token-0123456789abcdef\n").unwrap();
    let yaml = tmp.path().join("agent.yaml");
    std::fs::write(
        &yaml,
        format!(
            "node: micro-fuzz\nrole: micro\nreconciler: ws://127.0.0.1:{port}/ws/agent\ntokenFile: {}\n\
             address: 127.0.0.1\nimage: {}\ndataDir: {}\nrepos:\n  account: {}\n",
            token.display(),
            runtime_image(),
            tmp.path().join("data").display(),
            account.clone.display()
        ),
    )
    .unwrap();
    let log = tmp.path().join("agent.log");
    let mut agent = Process::spawn(
        Command::new(binaries().join("sdp-agent"))
            .arg("--config")
            .arg(&yaml)
            .arg("run"),
        log.clone(),
    );

    let (stream, _) = listener.accept().unwrap();
    stream.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
    let mut ws = tungstenite::accept(stream).unwrap();
    // Hello, then a Welcome with an installation of this test's own.
    let hello = loop {
        match ws.read() {
            Ok(Message::Text(t)) => break t.to_string(),
            Ok(_) => continue,
            Err(tungstenite::Error::Io(e)) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => panic!("no Hello: {e}\n{}", agent.output()),
        }
    };
    assert!(hello.contains("\"hello\""), "{hello}");
    let installation = format!("fuzz-{}", suffix());
    let welcome = serde_json::json!({
        "type": "welcome",
        "protocolVersion": sdp_protocol::PROTOCOL_VERSION,
        "installation": installation,
    });
    ws.send(Message::Text(welcome.to_string().into())).unwrap();

    // Everything the agent says is read as it comes, so that its writes never stall on this side.
    let mut results: Vec<serde_json::Value> = Vec::new();
    let drain = |ws: &mut tungstenite::WebSocket<std::net::TcpStream>, results: &mut Vec<serde_json::Value>| loop {
        match ws.read() {
            Ok(Message::Text(t)) => {
                if let Ok(v) = serde_json::from_str::<serde_json::Value>(&t) {
                    results.push(v);
                }
            }
            Ok(_) => {}
            Err(tungstenite::Error::Io(e)) if e.kind() == std::io::ErrorKind::WouldBlock => return,
            Err(e) => panic!(
                "the agent's connection broke: {e}\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            ),
        }
    };

    let started = Instant::now();
    // The requests sent that the agent can read as frames, by id: each must be answered, with an error.
    let mut sent_asks = std::collections::BTreeMap::new();
    let mut peak = 0;
    for id in 1..=FRAMES {
        let message = frame(&mut rng, id, &bystander);
        if let Message::Text(t) = &message
            && let Ok(sdp_protocol::ReconcilerFrame::Ask(ask)) = sdp_protocol::decode(t)
        {
            assert_eq!(ask.request_id, id);
            sent_asks.insert(id, t.to_string());
        }
        if ws.send(message).is_err() {
            // The agent may close on a frame it will not read: it must then come back and say Hello again.
            break;
        }
        drain(&mut ws, &mut results);
        peak = peak.max(rss_kib(agent.child.id()));
        assert!(started.elapsed() < Duration::from_secs(120), "bounded in time");
    }
    assert!(
        agent.child.try_wait().unwrap().is_none(),
        "the agent died:\n{}",
        agent.output()
    );

    // A sound question is still answered.
    ws.send(Message::Text(
        serde_json::json!({ "type": "ask", "requestId": 999_999, "kind": "listBranches", "body": { "repo": "account" } })
            .to_string()
            .into(),
    ))
    .unwrap();
    let answered = Instant::now();
    loop {
        drain(&mut ws, &mut results);
        if let Some(sound) = results
            .iter()
            .find(|v| v["type"] == "answer" && v["requestId"] == 999_999)
        {
            let heads = sound["result"]["ok"].as_array().unwrap_or_else(|| panic!("{sound}"));
            assert!(heads.iter().any(|h| h["branch"] == "main"), "{sound}");
            break;
        }
        assert!(
            answered.elapsed() < Duration::from_secs(60),
            "no answer to a sound question:\n{}",
            agent.output()
        );
    }
    // Every whole request it was sent gets an answer (actions end in their own time), and every answer is a
    // refusal; a kind it does not know is refused by name.
    let answers = loop {
        drain(&mut ws, &mut results);
        let answers: std::collections::BTreeMap<u64, &serde_json::Value> = results
            .iter()
            .filter(|v| v["type"] == "answer" && v["requestId"] != 999_999)
            .map(|v| (v["requestId"].as_u64().unwrap_or(0), v))
            .collect();
        let missing: Vec<&u64> = sent_asks.keys().filter(|id| !answers.contains_key(id)).collect();
        if missing.is_empty() {
            break answers;
        }
        assert!(
            answered.elapsed() < Duration::from_secs(60),
            "requests never answered: {:?}\n{}",
            missing.iter().map(|id| &sent_asks[id]).collect::<Vec<_>>(),
            agent.output()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(!answers.is_empty(), "no request was answered");
    for (id, a) in &answers {
        let sent = sent_asks.get(id);
        assert!(sent.is_some(), "an answer to nothing sent: {a}");
        let error = a["result"]["error"].as_str();
        assert!(error.is_some(), "a hostile request succeeded: {a} for {sent:?}");
        if sent.is_some_and(|s| s.contains("restartDocker")) {
            assert!(
                error.is_some_and(|e| e.contains(r#"unknown request kind "restartDocker""#)),
                "{a}"
            );
        }
    }
    // Nothing on the engine changed: the bystander is there, no network or container of this installation.
    let state = run(Command::new("docker").args(["inspect", "-f", "{{.State.Status}}", &bystander]));
    assert_eq!(state.trim(), "created");
    let ours = format!("label=sdp.installation={installation}");
    for list in [["network", "ls", "-q"], ["ps", "-aq", "--no-trunc"]] {
        let made = run(Command::new("docker").args(list).args(["--filter", &ours]));
        assert!(
            made.trim().is_empty(),
            "the fuzz made something on the engine ({list:?}): {made}"
        );
    }
    assert!(peak < 200 * 1024, "the agent grew to {peak} KiB");
    eprintln!(
        "{FRAMES} frames, {} requests answered, peak RSS {} MiB",
        answers.len(),
        peak / 1024
    );
    drop(ws);
    agent.kill();
}
