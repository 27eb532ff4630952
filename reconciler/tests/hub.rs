//! The agent hub and the API over real sockets on 127.0.0.1, against `sdp serve` as the binary runs it: tokens, the
//! version rule, actions and their results, in-flight actions when an agent drops, the scheduler's merging, and
//! SSE logs that resume. Everything the tests see comes from the reconciler's own passes over a config repo and
//! from fake agents on the real WebSocket.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::server::{
    self, Server, TOKEN, Ws, connected, dial, get, hello, json, message, metric, next_frame, send, send_text, sse_data,
    until,
};
use futures_util::SinkExt;
use sdp_protocol::{
    Action, ActionRequest, ActualState, AgentFrame, Answer, Container, ContainerState, Hello, PROTOCOL_VERSION,
    ReconcilerFrame, Request, Role, labels,
};
use sdp_reconciler::controller::PassHook;
use sdp_reconciler::hub::{AskError, Hub};
use tokio_tungstenite::tungstenite::{self, Message};

const SANDBOX: &str = "qa-login-error";

/// `sdp serve` over the examples without their set (whose branch listings would come between the actions).
async fn server() -> Server {
    let repo = server::examples_with(|repo| {
        repo.git(&["rm", "-rq", "sandboxsets"]);
    });
    Server::start(repo, |_| {}).await
}

/// The micro agent the tests play, welcomed; it has not reported yet.
async fn micro(s: &Server) -> Ws {
    connected(&s.ws(), hello("micro-test", Role::Micro, &["account"])).await
}

/// The micro agent, welcomed, with an empty report in: it is acted on.
async fn reported(s: &Server) -> Ws {
    let mut ws = micro(s).await;
    send(&mut ws, AgentFrame::ActualState(ActualState::default())).await;
    ws
}

/// The next action the reconciler sends.
/// An action as the agent reads it: its request id and the request.
struct Asked {
    request_id: u64,
    action: Action,
    deployment_id: Option<String>,
}

async fn next_action(ws: &mut Ws) -> Asked {
    loop {
        if let ReconcilerFrame::Ask(ask) = next_frame(ws).await
            && ask.kind == ActionRequest::KIND
        {
            let request: ActionRequest = ask.read().unwrap();
            return Asked {
                request_id: ask.request_id,
                action: request.action,
                deployment_id: request.deployment_id,
            };
        }
    }
}

/// The next action, which must be the first of a pass over an empty VM: the sandbox's network.
async fn network_asked(ws: &mut Ws) -> Asked {
    let first = next_action(ws).await;
    assert_eq!(
        first.action,
        Action::EnsureNetwork {
            sandbox: SANDBOX.into()
        }
    );
    first
}

/// Answers actions as they come until one is a deployment; that one is left unanswered and returned.
async fn next_deployment(ws: &mut Ws) -> Asked {
    loop {
        let a = next_action(ws).await;
        if a.deployment_id.is_some() {
            return a;
        }
        answer(ws, &a, None).await;
    }
}

async fn answer(ws: &mut Ws, request: &Asked, error: Option<&str>) {
    let result = AgentFrame::Answer(Answer::new::<ActionRequest>(
        request.request_id,
        error.map_or(Ok(()), |e| Err(e.to_string())),
    ));
    send(ws, result).await;
}

/// A deployment's document.
async fn deployment(s: &Server, request: &Asked) -> serde_json::Value {
    let id = request.deployment_id.as_deref().unwrap();
    json(s.url(&format!("/api/v1/deployments/{id}"))).await
}

/// Waits until the deployment of `request` has ended; says its document.
async fn ended(s: &Server, request: &Asked) -> serde_json::Value {
    until("the deployment to end", || async {
        deployment(s, request).await["state"] != "running"
    })
    .await;
    deployment(s, request).await
}

async fn nodes(s: &Server) -> Vec<serde_json::Value> {
    json(s.url("/api/v1/nodes")).await.as_array().unwrap().clone()
}

/// What the last pass of the sandbox said went wrong (nothing before the config repo is read).
async fn last_error(s: &Server) -> String {
    let (_, _, body) = get(s.url(&format!("/api/v1/sandboxes/{SANDBOX}"))).await;
    let sb: serde_json::Value = serde_json::from_str(&body).unwrap();
    sb.pointer("/status/lastError")
        .and_then(|e| e.as_str())
        .unwrap_or_default()
        .to_string()
}

/// A container line from an agent; when it is readable from the API, every frame the agent sent before it has been
/// taken in (an agent's frames are handled, and their events delivered, in order).
async fn barrier(s: &Server, ws: &mut Ws, text: &str) {
    let line = AgentFrame::LogLine(sdp_protocol::LogLine {
        deployment_id: None,
        container: Some(sdp_protocol::container_name(SANDBOX, "account")),
        seq: 1 + text.len() as u64,
        line: text.into(),
        dropped_before: 0,
    });
    send(ws, line).await;
    let url = s.url(&format!("/api/v1/sandboxes/{SANDBOX}/logs/account"));
    until("the agent's frames to be taken in", || {
        let url = url.clone();
        async move { sse_data(&get(url).await.2).iter().any(|l| l == text) }
    })
    .await;
}

fn refused_with(result: Result<Ws, tungstenite::Error>) -> (u16, String) {
    match result {
        Err(tungstenite::Error::Http(r)) => (
            r.status().as_u16(),
            String::from_utf8_lossy(r.body().as_deref().unwrap_or_default()).into_owned(),
        ),
        Err(e) => panic!("not an HTTP refusal: {e}"),
        Ok(_) => panic!("the upgrade was accepted"),
    }
}

#[tokio::test]
async fn agents_without_the_right_token_are_refused_and_told_why() {
    let s = server().await;
    let (status, body) = refused_with(dial(&s.ws(), None).await);
    assert_eq!(status, 401);
    assert!(body.contains("missing bearer token"), "{body}");
    let (status, body) = refused_with(dial(&s.ws(), Some("wrong-token-0123456789")).await);
    assert_eq!(status, 401);
    assert!(body.contains("bad token"), "{body}");
    assert!(!body.contains(TOKEN));
}

#[tokio::test]
async fn a_version_mismatch_is_refused_naming_both_versions() {
    let s = server().await;
    let mut ws = dial(&s.ws(), Some(TOKEN)).await.unwrap();
    let mut refused = hello("micro-test", Role::Micro, &["account"]);
    refused.protocol_version = PROTOCOL_VERSION + 41;
    send(&mut ws, AgentFrame::Hello(refused)).await;
    let ReconcilerFrame::Refused { reason } = next_frame(&mut ws).await else {
        panic!("not refused")
    };
    assert!(reason.contains(&format!("version {PROTOCOL_VERSION}")), "{reason}");
    assert!(
        reason.contains(&format!("version {}", PROTOCOL_VERSION + 41)),
        "{reason}"
    );
    assert!(nodes(&s).await.is_empty());
}

#[tokio::test]
async fn an_agent_of_protocol_version_1_is_refused_naming_both_versions() {
    let s = server().await;
    let mut ws = dial(&s.ws(), Some(TOKEN)).await.unwrap();
    // A version-1 agent's Hello as it sends it: Hello did not change with version 2, so the hub reads it and the
    // version rule refuses it, rather than the agent's first `action` frame failing later.
    let old = r#"{"type":"hello","node":"micro-old","role":"micro","protocolVersion":1,"agentVersion":"0.0.9","address":"127.0.0.1","repos":["account"],"images":[]}"#;
    ws.send(Message::Text(old.into())).await.unwrap();
    let ReconcilerFrame::Refused { reason } = next_frame(&mut ws).await else {
        panic!("not refused")
    };
    let both = format!("this side speaks version {PROTOCOL_VERSION}, the other side version 1");
    assert!(reason.contains(&both), "{reason}");
    assert!(nodes(&s).await.is_empty());
}

#[tokio::test]
async fn an_action_for_a_role_nobody_serves_fails_at_once_saying_so() {
    // Passes check that an agent is connected before they act (see the readiness test below), so only a hub
    // asked directly shows this answer.
    let (tx, _rx) = tokio::sync::mpsc::channel(16);
    let hub = Hub::new(TOKEN.into(), tx);
    let none = hub
        .dispatch(
            Role::Micro,
            Action::EnsureNetwork { sandbox: "a".into() },
            None,
            Duration::from_secs(5),
        )
        .await;
    assert_eq!(none.unwrap_err().to_string(), "no micro agent is connected");
}

#[tokio::test]
async fn actions_get_their_results_and_fail_when_the_agent_drops() {
    let s = server().await;
    let mut ws = reported(&s).await;
    let nodes_now = nodes(&s).await;
    assert_eq!(nodes_now[0]["node"]["node"], "micro-test");
    assert_eq!(nodes_now[0]["node"]["address"], "127.0.0.1");

    // The pass's first action; its result lets the pass go on to the deployment.
    let first = network_asked(&mut ws).await;
    answer(&mut ws, &first, None).await;

    // A result answers its own request, with the agent's error when there is one. Each report that says
    // something new wakes the sandbox for another pass, which deploys the container that is still missing.
    for (n, error) in [None, Some(AskError::Failed("image alpine:3.20 is not loaded".into()))]
        .into_iter()
        .enumerate()
    {
        if n > 0 {
            let report = ActualState {
                networks: vec![sdp_protocol::network_name(SANDBOX)],
                ..ActualState::default()
            };
            send(&mut ws, AgentFrame::ActualState(report)).await;
        }
        let request = next_deployment(&mut ws).await;
        let Action::DeployService(d) = &request.action else {
            panic!("not a deployment: {:?}", request.action)
        };
        assert_eq!((d.sandbox.as_str(), d.service.as_str()), (SANDBOX, "account"));
        answer(&mut ws, &request, error.as_ref().map(|e| e.to_string()).as_deref()).await;
        let doc = ended(&s, &request).await;
        let got = match doc["error"].as_str() {
            None => Ok(()),
            Some(e) => Err(AskError::Failed(e.to_string())),
        };
        assert_eq!(got, error.map_or(Ok(()), Err), "{doc}");
        assert_eq!(doc["state"], if n == 0 { "succeeded" } else { "failed" });
    }

    // In flight when the agent goes (the retry after that failure, due in about 2 s): it fails at once with the
    // agent's name, not at the deadline of 15 minutes.
    let request = next_deployment(&mut ws).await;
    drop(ws);
    let doc = ended(&s, &request).await;
    assert_eq!(doc["error"], "agent micro-test disconnected", "{doc}");
    assert!(nodes(&s).await.is_empty());
}

#[tokio::test]
async fn triggers_of_a_sandbox_in_a_pass_are_merged_into_one_pass() {
    let s = server().await;
    let mut ws = reported(&s).await;
    // A pass is under way: the agent holds its first action.
    let held = next_action(&mut ws).await;
    // Fifty reports, each saying something new of the sandbox: fifty triggers while it is in a pass.
    for i in 0..50 {
        let report = ActualState {
            containers: vec![
                Container {
                    name: sdp_protocol::container_name(SANDBOX, "account"),
                    id: "c0ffee".into(),
                    labels: [
                        (labels::MANAGED.to_string(), "true".to_string()),
                        (labels::SANDBOX.to_string(), SANDBOX.to_string()),
                        (labels::SERVICE.to_string(), "account".to_string()),
                    ]
                    .into(),
                    state: ContainerState::Exited,
                    ports: vec![],
                    restart_count: i,
                    exit_code: Some(1),
                    probe: None,
                }
                .into(),
            ],
            ..ActualState::default()
        };
        send(&mut ws, AgentFrame::ActualState(report)).await;
    }
    barrier(&s, &mut ws, "all fifty reports are in").await;
    let passes = metric(&s, "sdp_passes_total").await;
    // The held pass ends; everything else it asks is done at once.
    answer(&mut ws, &held, None).await;
    let agent = tokio::spawn(async move {
        loop {
            let a = next_action(&mut ws).await;
            answer(&mut ws, &a, None).await;
        }
    });
    until("the merged pass", || async {
        metric(&s, "sdp_passes_total").await > passes
    })
    .await;
    until("the passes to end", || async {
        let sb = json(s.url(&format!("/api/v1/sandboxes/{SANDBOX}"))).await;
        sb.pointer("/status/inFlight").is_none_or(|f| f.is_null())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        metric(&s, "sdp_passes_total").await,
        passes + 1,
        "fifty triggers of a sandbox in a pass make one pass after it"
    );
    agent.abort();
}

#[test]
fn backoff_grows_from_two_seconds_to_five_minutes_with_bounded_jitter() {
    use sdp_reconciler::controller::backoff_delay;
    assert_eq!(backoff_delay(1, 0.5), Duration::from_secs(2));
    assert_eq!(backoff_delay(2, 0.5), Duration::from_secs(4));
    assert_eq!(backoff_delay(30, 0.5), Duration::from_secs(300));
    assert!(backoff_delay(30, 1.0) <= Duration::from_secs(300));
    for n in 1..20 {
        let (low, high) = (backoff_delay(n, 0.0), backoff_delay(n, 1.0));
        assert!(
            low < high || high == Duration::from_secs(300),
            "jitter spreads attempt {n}"
        );
        assert!(low >= Duration::from_millis(1600), "never a tight loop: {low:?}");
    }
}

#[tokio::test]
async fn deployment_logs_stream_and_resume_from_last_event_id() {
    let s = server().await;
    let mut ws = reported(&s).await;
    let request = next_deployment(&mut ws).await;
    for i in 0..3 {
        let line = AgentFrame::LogLine(sdp_protocol::LogLine {
            deployment_id: request.deployment_id.clone(),
            container: None,
            seq: i,
            line: format!("line {i}"),
            dropped_before: if i == 2 { 7 } else { 0 },
        });
        send(&mut ws, line).await;
    }
    barrier(&s, &mut ws, "the deployment's lines are in").await;
    answer(&mut ws, &request, None).await;
    assert_eq!(ended(&s, &request).await["state"], "succeeded");
    let id = request.deployment_id.as_deref().unwrap();
    let url = s.url(&format!("/api/v1/deployments/{id}/logs"));
    let body = tokio::task::spawn_blocking(move || {
        let all = ureq::get(&url).call().unwrap().body_mut().read_to_string().unwrap();
        let resumed = ureq::get(&url)
            .header("Last-Event-ID", "0")
            .call()
            .unwrap()
            .body_mut()
            .read_to_string()
            .unwrap();
        (all, resumed)
    })
    .await
    .unwrap();
    let (all, resumed) = body;
    assert!(all.contains("id: 0\ndata: line 0"), "{all}");
    assert!(
        all.contains("data: [sdp: 7 lines dropped under pressure before this one] line 2"),
        "{all}"
    );
    assert!(all.contains("event: end"), "{all}");
    assert!(!resumed.contains("line 0"), "{resumed}");
    assert!(resumed.contains("id: 1\ndata: line 1"), "{resumed}");
}

#[tokio::test]
async fn pages_are_told_when_a_status_changes() {
    let s = server().await;
    let url = s.url("/api/v1/changes");
    let reader = tokio::task::spawn_blocking(move || {
        use std::io::BufRead;
        let response = ureq::get(&url).call().unwrap();
        let mut lines = std::io::BufReader::new(response.into_body().into_reader()).lines();
        lines
            .find(|l| l.as_ref().is_ok_and(|l| l == "event: changed"))
            .is_some()
    });
    // A commit of a sandbox nobody knew: its pass gives it a status, a change.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let example = std::fs::read_to_string(s.repo.dir.join("sandboxes/qa-login-error.yaml")).unwrap();
    s.repo.write(
        "sandboxes/box.yaml",
        &example
            .replace("name: qa-login-error", "name: box")
            .replace("port: 8081", "port: 8082")
            .replace("port: 9001", "port: 9002"),
    );
    s.repo.git(&["add", "-A"]);
    s.repo.git(&["commit", "-qm", "box"]);
    let told = tokio::time::timeout(Duration::from_secs(10), reader)
        .await
        .expect("told within 10 s");
    assert!(told.unwrap());
}

#[test]
fn webhook_fetches_of_one_repository_are_asked_at_most_every_few_seconds() {
    let (tx, _rx) = tokio::sync::mpsc::channel(16);
    let hub = Hub::new(TOKEN.into(), tx);
    assert!(hub.fetch("account"), "the first call asks the agents");
    for _ in 0..1000 {
        assert!(!hub.fetch("account"), "a flood of calls is one fetch");
    }
    assert!(hub.fetch("payment"), "another repository is asked on its own");
}

#[tokio::test]
async fn an_agent_writes_only_into_deployments_it_runs_and_long_lines_are_cut() {
    let s = server().await;
    // The micro agent runs a deployment (held); the gateway agent does not.
    let mut micro = reported(&s).await;
    let request = next_deployment(&mut micro).await;
    let mut ws = connected(&s.ws(), hello("gateway-test", Role::Gateway, &["gateway"])).await;
    let line = |deployment_id: Option<String>, container: Option<&str>, line: String| {
        message(&AgentFrame::LogLine(sdp_protocol::LogLine {
            deployment_id,
            container: container.map(str::to_string),
            seq: 1,
            line,
            dropped_before: 0,
        }))
    };
    // A deployment nobody asked this agent to run.
    ws.send(line(request.deployment_id.clone(), None, "forged".into()))
        .await
        .unwrap();
    // A container line of 10 MB.
    ws.send(line(None, Some("sandbox-box-account"), "x".repeat(10 << 20)))
        .await
        .unwrap();
    let url = s.url("/api/v1/sandboxes/box/logs/account");
    until("the container line arrives", || {
        let url = url.clone();
        async move { get(url).await.0 == 200 }
    })
    .await;
    let kept = sse_data(&get(url).await.2);
    assert_eq!(kept.len(), 1);
    assert!(kept[0].len() < 17 * 1024, "{} bytes kept", kept[0].len());
    assert!(kept[0].ends_with("more bytes cut]"), "the cut is said");
    // The deployment ends; its log holds nothing.
    answer(&mut micro, &request, None).await;
    ended(&s, &request).await;
    let id = request.deployment_id.as_deref().unwrap();
    let log = get(s.url(&format!("/api/v1/deployments/{id}/logs"))).await.2;
    assert_eq!(sse_data(&log).len(), 0, "the forged line was written: {log}");
}

#[test]
fn a_hello_cannot_point_the_routes_elsewhere() {
    use sdp_reconciler::hub::check_hello;
    let hello = |node: &str, address: &str| Hello {
        node: node.into(),
        role: Role::Micro,
        protocol_version: PROTOCOL_VERSION,
        agent_version: "t".into(),
        address: address.into(),
        repos: vec![],
        images: vec![],
    };
    let peer = Some("172.18.136.92".parse().unwrap());
    assert!(check_hello(&hello("micro-92", "172.18.136.92"), peer).is_ok());
    assert!(
        check_hello(&hello("micro-92", "micro-92.internal"), peer).is_ok(),
        "a host name"
    );
    let err = check_hello(&hello("micro-92", "10.9.9.9"), peer).unwrap_err();
    assert!(err.contains("connects from 172.18.136.92"), "{err}");
    // An agent on the reconciler's own machine (the demo, or behind a local proxy that did not say) may say any.
    assert!(check_hello(&hello("m", "172.17.0.1"), Some("127.0.0.1".parse().unwrap())).is_ok());
    for bad in ["evil.example/x?", "a b", "http://x", "", "x'"] {
        assert!(check_hello(&hello("m", bad), peer).is_err(), "{bad:?}");
    }
    for bad in ["", "../x", "a b", &"n".repeat(64)] {
        assert!(check_hello(&hello(bad, "172.18.136.92"), peer).is_err(), "{bad:?}");
    }
}

/// A deterministic stream of bytes (xorshift), so a failing case can be replayed.
fn noise(seed: &mut u64, len: usize) -> Vec<u8> {
    (0..len)
        .map(|_| {
            *seed ^= *seed << 13;
            *seed ^= *seed >> 7;
            *seed ^= *seed << 17;
            *seed as u8
        })
        .collect()
}

#[tokio::test]
async fn random_and_truncated_frames_neither_panic_the_hub_nor_stop_it_serving() {
    let s = server().await;
    let mut ws = micro(&s).await;
    let valid = [
        sdp_protocol::encode(&AgentFrame::ActualState(sdp_protocol::ActualState {
            worktrees: vec![sdp_protocol::Worktree {
                sandbox: "box".into(),
                service: "account".into(),
                branch: "main".into(),
                commit: "ééééééééééééééééé".into(),
            }]
            .into(),
            heads: vec![sdp_protocol::BranchHead {
                repo: "account".into(),
                branch: "main".into(),
                commit: "\u{1F600}".repeat(20),
            }],
            ..Default::default()
        })),
        sdp_protocol::encode(&AgentFrame::Answer(Answer::new::<ActionRequest>(
            u64::MAX,
            Err("x".repeat(1000)),
        ))),
        sdp_protocol::encode(&AgentFrame::LogLine(sdp_protocol::LogLine {
            deployment_id: Some("-1".into()),
            container: Some("../../etc".into()),
            seq: 0,
            line: "\u{0}\u{1b}[2J".into(),
            dropped_before: u64::MAX,
        })),
    ];
    let mut seed = 0x5eed_u64;
    // Bounded: 600 frames, each under 4 KiB.
    for i in 0..600 {
        let frame = match i % 3 {
            0 => String::from_utf8_lossy(&noise(&mut seed, (i * 7) % 4000)).into_owned(),
            1 => {
                let v = &valid[i % valid.len()];
                let cut = noise(&mut seed, 1)[0] as usize * v.len() / 256;
                v.chars().take(cut).collect()
            }
            _ => valid[i % valid.len()].clone(),
        };
        if ws.send(Message::Text(frame.into())).await.is_err() {
            break;
        }
    }
    // And as binary messages, which are read as deflated frames: noise, cut ones and whole ones. Bounded: 300.
    let deflated: Vec<Vec<u8>> = valid
        .iter()
        .map(|text| {
            let deflated = sdp_protocol::deflate(&sdp_protocol::decode(text).unwrap());
            sdp_protocol::pieces(&deflated).next().unwrap()
        })
        .collect();
    for i in 0..300 {
        let frame = match i % 3 {
            0 => noise(&mut seed, (i * 7) % 4000),
            1 => {
                let v = &deflated[i % deflated.len()];
                v[..noise(&mut seed, 1)[0] as usize * v.len() / 256].to_vec()
            }
            _ => deflated[i % deflated.len()].clone(),
        };
        if ws.send(Message::Binary(frame.into())).await.is_err() {
            break;
        }
    }
    // The hub still serves: a new agent is welcomed, and its report wakes passes over the sandboxes with what
    // was reported, which run.
    let passes = metric(&s, "sdp_passes_total").await;
    let mut again = dial(&s.ws(), Some(TOKEN)).await.unwrap();
    again
        .send(message(&AgentFrame::Hello(hello(
            "micro-test",
            Role::Micro,
            &["account"],
        ))))
        .await
        .unwrap();
    assert!(matches!(next_frame(&mut again).await, ReconcilerFrame::Welcome { .. }));
    send(&mut again, AgentFrame::ActualState(ActualState::default())).await;
    until("a pass", || async { metric(&s, "sdp_passes_total").await > passes }).await;
    let health = get(s.url("/healthz")).await.0;
    assert_eq!(health, 200);
}

#[tokio::test]
async fn a_report_longer_than_a_frame_arrives_in_fragments_as_text_or_deflated_and_is_read_whole() {
    let s = server().await;
    let mut ws = micro(&s).await;
    let containers: Vec<Arc<Container>> = (0..2_000)
        .map(|i| {
            Arc::new(Container {
                name: format!("sandbox-other-{i:04}-account"),
                id: format!("{i:064x}"),
                labels: [(labels::SANDBOX.to_string(), format!("other-{i:04}"))].into(),
                state: ContainerState::Running,
                ports: vec![20_000 + i],
                restart_count: 0,
                exit_code: None,
                probe: None,
            })
        })
        .collect();
    // A label of two-byte characters across the end of the first fragment: the cut falls inside one of them.
    let mut report = ActualState {
        containers,
        ..ActualState::default()
    };
    let wide = "é".repeat(40_000);
    for pad in ["", "x"] {
        Arc::make_mut(&mut report.containers[0])
            .labels
            .insert("wide", format!("{pad}{wide}"));
        let text = sdp_protocol::encode(&AgentFrame::ActualState(report.clone()));
        if !text.is_char_boundary(sdp_protocol::FRAGMENT_BYTES) {
            break;
        }
    }
    let report = AgentFrame::ActualState(report);
    let text = sdp_protocol::encode(&report);
    assert!(
        !text.is_char_boundary(sdp_protocol::FRAGMENT_BYTES),
        "a character is cut by the first fragment"
    );
    let fragments = sdp_protocol::fragments(text.len()).count();
    assert!(
        fragments > 3,
        "the report is {fragments} frames: too short to test fragments"
    );
    // As text: an agent of a release before deflated reports.
    send_text(&mut ws, report.clone()).await;
    until("the report to be read", || async {
        let actual = json(s.url("/api/v1/actual")).await;
        actual["micro"]["containers"].as_array().map(Vec::len) == Some(2_000)
    })
    .await;
    let actual = json(s.url("/api/v1/actual")).await;
    assert_eq!(
        actual["micro"]["containers"][1999]["name"],
        "sandbox-other-1999-account"
    );
    assert_eq!(actual["micro"]["containers"][1999]["ports"][0], 21_999);
    let read = actual["micro"]["containers"][0]["labels"]["wide"].as_str().unwrap();
    assert!(read.ends_with(&wide) && read.len() <= wide.len() + 1, "{read:.40}");
    // The connection still serves: the agent is acted on.
    let first = next_action(&mut ws).await;
    assert!(
        matches!(first.action, Action::EnsureNetwork { .. }),
        "{:?}",
        first.action
    );
    // Deflated, as an agent of this release sends it, in fragments too: one container moved.
    let AgentFrame::ActualState(mut report) = report else {
        unreachable!()
    };
    Arc::make_mut(&mut report.containers[1999]).ports = vec![29_999];
    // A label of random hex on each container, which deflating cannot shrink below 64 bytes: over a fragment.
    let mut seed = 0x5eed_u64;
    for c in &mut report.containers {
        let random: String = noise(&mut seed, 64).iter().map(|b| format!("{b:02x}")).collect();
        Arc::make_mut(c).labels.insert("random", random);
    }
    let report = AgentFrame::ActualState(report);
    let deflated = sdp_protocol::deflate(&report);
    let text = sdp_protocol::encode(&report);
    assert!(
        sdp_protocol::pieces(&deflated).count() > 1 && deflated.len() * 3 < text.len(),
        "{} bytes deflated of {}",
        deflated.len(),
        text.len()
    );
    send(&mut ws, report.clone()).await;
    until("the deflated report to be read", || async {
        let actual = json(s.url("/api/v1/actual")).await;
        actual["micro"]["containers"][1999]["ports"][0] == 29_999
    })
    .await;
    let actual = json(s.url("/api/v1/actual")).await;
    assert_eq!(actual["micro"]["containers"].as_array().map(Vec::len), Some(2_000));
    let read = actual["micro"]["containers"][0]["labels"]["wide"].as_str().unwrap();
    assert!(read.ends_with(&wide), "{read:.40}");
    let AgentFrame::ActualState(sent) = report else {
        unreachable!()
    };
    for i in [0, 1000, 1999] {
        assert_eq!(
            actual["micro"]["containers"][i]["labels"]["random"].as_str(),
            sent.containers[i].labels.get("random")
        );
    }
}

#[tokio::test]
async fn an_agent_is_acted_on_only_once_its_connection_has_reported() {
    let s = server().await;
    until("a pass with no agent", || async {
        last_error(&s).await.contains("waiting for a micro agent to connect")
    })
    .await;
    assert!(nodes(&s).await.is_empty());
    let mut ws = micro(&s).await;
    // Connected, nothing reported yet: what the hub holds of the role is no picture of the VM, and the pass the
    // connection wakes does nothing on it.
    assert_eq!(nodes(&s).await.len(), 1);
    until("a pass that waits for the report", || async {
        last_error(&s)
            .await
            .contains("waiting for the first report of the micro agent")
    })
    .await;
    // An empty report counts: it is one, and the agent is acted on.
    send(&mut ws, AgentFrame::ActualState(ActualState::default())).await;
    let first = next_action(&mut ws).await;
    assert_eq!(
        first.action,
        Action::EnsureNetwork {
            sandbox: SANDBOX.into()
        }
    );
    drop(ws);
    until("the agent to be gone", || async { nodes(&s).await.is_empty() }).await;
}

#[tokio::test]
async fn nothing_is_removed_before_the_config_repo_has_been_read() {
    // A config repo that cannot be read yet, as on a restart whose first clone is slow: a sandbox the agent
    // reports must not be planned as undesired and torn down.
    let s = server::Server::start(common::repo::Repo::new(), |c| {
        c.repo = "/nonexistent/sdp-config.git".into()
    })
    .await;
    let mut ws = micro(&s).await;
    let mut running = Container {
        name: sdp_protocol::container_name(SANDBOX, "account"),
        id: "c1".into(),
        labels: Default::default(),
        state: ContainerState::Running,
        ports: vec![30001],
        restart_count: 0,
        exit_code: None,
        probe: None,
    };
    running.labels.insert(labels::MANAGED, "true");
    running.labels.insert(labels::SANDBOX, SANDBOX);
    running.labels.insert(labels::SERVICE, "account");
    let report = ActualState {
        containers: vec![running.into()],
        networks: vec![sdp_protocol::network_name(SANDBOX)],
        ..Default::default()
    };
    send(&mut ws, AgentFrame::ActualState(report)).await;
    until("a pass that waits for the config repo", || async {
        last_error(&s)
            .await
            .contains("waiting for the first read of the config repo")
    })
    .await;
    // The pass has ended: had it planned a removal, its action would be on the wire before its status.
    let more = tokio::time::timeout(Duration::from_millis(200), next_frame(&mut ws)).await;
    assert!(
        !matches!(more, Ok(ReconcilerFrame::Ask(_))),
        "an action was sent before the config repo was read: {more:?}"
    );
}

#[tokio::test]
async fn a_pass_that_panics_is_shown_and_the_sandbox_is_retried() {
    // The next pass of the sandbox panics, as a bug nobody foresaw would; the passes after it do not.
    let armed = Arc::new(AtomicBool::new(false));
    let hook = {
        let armed = armed.clone();
        PassHook(Arc::new(move |name: &str| {
            if name == SANDBOX && armed.swap(false, Ordering::SeqCst) {
                panic!("index out of bounds: a bug nobody foresaw");
            }
        }))
    };
    let repo = server::examples_with(|repo| {
        repo.git(&["rm", "-rq", "sandboxsets"]);
    });
    let s = Server::start(repo, |c| c.before_pass = Some(hook)).await;
    until("the config repo to be read", || async {
        get(s.url(&format!("/api/v1/sandboxes/{SANDBOX}"))).await.0 == 200
    })
    .await;
    armed.store(true, Ordering::SeqCst);
    // The agent's first report wakes the sandbox: that pass panics.
    let mut ws = reported(&s).await;
    until("the panic to be shown in the sandbox's events", || async {
        let sb = json(s.url(&format!("/api/v1/sandboxes/{SANDBOX}"))).await;
        sb["events"].as_array().into_iter().flatten().any(|e| {
            e["message"].as_str().is_some_and(|m| {
                m.contains("the reconcile pass failed unexpectedly: index out of bounds: a bug nobody foresaw")
            })
        })
    })
    .await;
    assert!(!armed.load(Ordering::SeqCst), "the panicking pass ran");
    // The worker survived and the sandbox is tried again: the next pass asks the agent for the sandbox's network.
    let first = network_asked(&mut ws).await;
    answer(&mut ws, &first, None).await;
    let deploy = next_deployment(&mut ws).await;
    assert!(matches!(&deploy.action, Action::DeployService(d) if d.service == "account"));
}

#[tokio::test]
async fn a_removed_sandboxs_ports_are_given_out_again_only_once_no_container_publishes_them() {
    let s = server().await;
    let doc_of = |name: &'static str, sandbox: &'static str| {
        let url = s.url("/api/v1/actual");
        async move {
            let actual = json(url).await;
            let ports: Vec<(String, u64)> = actual[name]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .iter()
                .filter(|p| p["sandbox"] == sandbox)
                .map(|p| (p["service"].as_str().unwrap().to_string(), p["port"].as_u64().unwrap()))
                .collect();
            ports
        }
    };
    let doc = |name: &'static str| doc_of(name, SANDBOX);
    until("the sandbox's ports", || async { !doc("ports").await.is_empty() }).await;
    let given = doc("ports").await;
    let account = given
        .iter()
        .find(|(svc, _)| svc == "account")
        .expect("account has a port")
        .1;
    assert!(given.iter().any(|(svc, _)| svc == "gateway"), "{given:?}");
    // The micro agent reports the sandbox's account container, publishing its port.
    let mut ws = micro(&s).await;
    let running = |ports: Vec<u16>| {
        AgentFrame::ActualState(ActualState {
            containers: vec![Arc::new(Container {
                name: format!("{SANDBOX}-account"),
                id: format!("{:064x}", 1),
                labels: [(labels::SANDBOX, SANDBOX), (labels::SERVICE, "account")].into(),
                state: ContainerState::Running,
                ports,
                restart_count: 0,
                exit_code: None,
                probe: None,
            })],
            ..ActualState::default()
        })
    };
    send(&mut ws, running(vec![account as u16])).await;
    // The sandbox leaves git: its ports leave, given to nobody while its container may still publish them.
    s.repo.git(&["rm", "-q", &format!("sandboxes/{SANDBOX}.yaml")]);
    s.repo.git(&["commit", "-qm", "remove the sandbox"]);
    until("the sandbox's ports to leave", || async {
        doc("ports").await.is_empty()
    })
    .await;
    let mut leaving = doc("leavingPorts").await;
    leaving.sort();
    let mut had = given.clone();
    had.sort();
    assert_eq!(leaving, had);
    // A commit that adds a sandbox (the removed one under another name) recompiles: the account port is still
    // published and the gateway's VM is unknown (no agent), so both stay leaving, and the new sandbox gets neither.
    let text = s.repo.git(&["show", &format!("HEAD~1:sandboxes/{SANDBOX}.yaml")]);
    // Its explicit ports dropped (an explicit port may take a leaving one), as `sdp clone` does.
    let renamed: String = text
        .replace(&format!("name: {SANDBOX}"), "name: qa-renamed")
        .lines()
        .filter(|l| !l.trim_start().starts_with("port:"))
        .map(|l| format!("{l}\n"))
        .collect();
    assert_ne!(renamed, text);
    s.repo.write("sandboxes/qa-renamed.yaml", &renamed);
    s.repo.git(&["add", "-A"]);
    s.repo.git(&["commit", "-qm", "the sandbox under another name"]);
    until("the renamed sandbox's ports", || async {
        !doc_of("ports", "qa-renamed").await.is_empty()
    })
    .await;
    let new_ports = doc_of("ports", "qa-renamed").await;
    assert!(
        new_ports.iter().all(|(_, p)| had.iter().all(|(_, q)| p != q)),
        "{new_ports:?} {had:?}"
    );
    assert_eq!(doc("leavingPorts").await.len(), had.len());
    // The container is gone (a report that came later than the ports left): at the next compile the account port
    // is free again; the gateway's stays leaving.
    send(&mut ws, AgentFrame::ActualState(ActualState::default())).await;
    until("the report without the container to be in", || async {
        json(s.url("/api/v1/actual")).await["micro"]["containers"] == serde_json::json!([])
    })
    .await;
    s.repo.write("README.md", "two\n");
    s.repo.git(&["add", "-A"]);
    s.repo.git(&["commit", "-qm", "another commit"]);
    until("the account port to be released", || async {
        doc("leavingPorts").await.iter().all(|(svc, _)| svc != "account")
    })
    .await;
    assert!(doc("leavingPorts").await.iter().any(|(svc, _)| svc == "gateway"));
}

#[tokio::test]
async fn a_deflated_bomb_is_cut_at_its_cap_and_the_agent_reports_on() {
    let s = server().await;
    let mut ws = micro(&s).await;
    // 8 MiB of spaces inside a report deflate to about 8 KB: far under the 32 MiB of text a frame may be, but more
    // than the 256 times its size a deflated frame may inflate to. It is not read (nor taken as a report).
    let bomb = format!(
        "{{\"type\":\"actualState\",\"networks\":[{}\"sandbox-bomb\"],\"containers\":[],\"worktrees\":[],\"heads\":[]}}",
        " ".repeat(8 << 20)
    );
    let mut deflated = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::best());
    std::io::Write::write_all(&mut deflated, bomb.as_bytes()).unwrap();
    let deflated = deflated.finish().unwrap();
    assert!(deflated.len() * 256 < bomb.len(), "{}", deflated.len());
    for piece in sdp_protocol::pieces(&deflated) {
        ws.send(Message::Binary(piece.into())).await.unwrap();
    }
    barrier(&s, &mut ws, "after the bomb").await;
    let networks = json(s.url("/api/v1/actual")).await["micro"]["networks"].clone();
    assert_ne!(networks, serde_json::json!(["sandbox-bomb"]));
    // It shows, besides the log: an unreadable frame is counted, and the node says why until a report is read.
    assert_eq!(metric(&s, "sdp_agent_frames_unreadable_total").await, 1);
    let reason = json(s.url("/api/v1/nodes")).await[0]["node"]["unreadable"]["reason"].clone();
    assert!(
        reason.as_str().is_some_and(|r| r.contains("inflates to more than")),
        "{reason}"
    );
    let (_, _, page) = server::get(s.url("/nodes")).await;
    assert!(page.contains("its last frame could not be read"), "{page}");
    // The connection serves on: its next report is read.
    let report = ActualState {
        networks: vec!["sandbox-after".into()],
        ..ActualState::default()
    };
    send(&mut ws, AgentFrame::ActualState(report)).await;
    until("the report after the bomb to be read", || async {
        json(s.url("/api/v1/actual")).await["micro"]["networks"] == serde_json::json!(["sandbox-after"])
    })
    .await;
    let node = json(s.url("/api/v1/nodes")).await[0]["node"].clone();
    assert!(node.get("unreadable").is_none(), "{node}");
}

#[tokio::test]
async fn a_replaced_connection_is_read_no_further() {
    let s = server().await;
    let mut old = micro(&s).await;
    let mut new = micro(&s).await;
    // The old connection was told, and what it still sends is not taken: its report does not replace the new one's.
    loop {
        match next_frame(&mut old).await {
            ReconcilerFrame::Refused { reason } => {
                assert!(reason.contains("replaced by a newer connection"), "{reason}");
                break;
            }
            _ => continue,
        }
    }
    let report = |network: &str| {
        AgentFrame::ActualState(ActualState {
            networks: vec![network.into()],
            ..ActualState::default()
        })
    };
    send(&mut new, report("sandbox-new")).await;
    until("the new connection's report", || async {
        json(s.url("/api/v1/actual")).await["micro"]["networks"] == serde_json::json!(["sandbox-new"])
    })
    .await;
    // Unread, the old connection's report stays out: the new one's stands.
    let _ = old.send(message(&report("sandbox-old"))).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        json(s.url("/api/v1/actual")).await["micro"]["networks"],
        serde_json::json!(["sandbox-new"])
    );
}

#[tokio::test]
async fn a_text_frame_amid_the_pieces_of_a_deflated_one_drops_that_one_and_is_read() {
    let s = server().await;
    let mut ws = micro(&s).await;
    let report = |network: &str| {
        AgentFrame::ActualState(ActualState {
            networks: vec![network.into()],
            ..ActualState::default()
        })
    };
    // The first piece of a deflated report, said to be followed by more that never come.
    let deflated = sdp_protocol::deflate(&report("sandbox-cut-short"));
    let mut first = vec![sdp_protocol::MORE];
    first.extend_from_slice(&deflated[..deflated.len() / 2]);
    ws.send(Message::Binary(first.into())).await.unwrap();
    send_text(&mut ws, report("sandbox-text")).await;
    until("the text report to be read", || async {
        json(s.url("/api/v1/actual")).await["micro"]["networks"] == serde_json::json!(["sandbox-text"])
    })
    .await;
    // And the next deflated report is read whole.
    send(&mut ws, report("sandbox-deflated")).await;
    until("the next deflated report to be read", || async {
        json(s.url("/api/v1/actual")).await["micro"]["networks"] == serde_json::json!(["sandbox-deflated"])
    })
    .await;
}
