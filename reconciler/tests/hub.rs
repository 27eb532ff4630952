//! The agent hub and the API over real sockets on 127.0.0.1: tokens, the version rule, actions and their
//! results, in-flight actions when an agent drops, the scheduler's merging, and SSE logs that resume.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use sdp_protocol::{Action, ActionRequest, AgentFrame, Answer, Hello, PROTOCOL_VERSION, ReconcilerFrame, Role};
use sdp_reconciler::api::{Api, router};
use sdp_reconciler::auth::Auth;
use sdp_reconciler::controller::{Controller, Trigger};
use sdp_reconciler::desired::Settings;
use sdp_reconciler::hub::{AskError, Hub, HubEvent};
use sdp_reconciler::store::Store;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

const TOKEN: &str = "test-token-0123456789abcdef";

struct Server {
    url: String,
    controller: Arc<Controller>,
    _data: tempfile::TempDir,
}

async fn server() -> Server {
    let data = tempfile::tempdir().unwrap();
    let (tx, mut events) = tokio::sync::mpsc::channel(256);
    let hub = Arc::new(Hub::new(TOKEN.into(), tx));
    let store = Store::open(data.path()).unwrap();
    let controller = Controller::new(hub, store, Settings::default(), Duration::from_secs(3600)).unwrap();
    let ctl = controller.clone();
    tokio::spawn(async move {
        while let Some(e) = events.recv().await {
            match e {
                HubEvent::Log(l) => ctl.log(l),
                HubEvent::Progress(p) => ctl.progress(p),
                _ => {}
            }
        }
    });
    let app = router(Api {
        controller: controller.clone(),
        hook: Arc::default(),
        auth: Arc::new(Auth::anonymous("")),
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("127.0.0.1:{}", listener.local_addr().unwrap().port());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    Server {
        url,
        controller,
        _data: data,
    }
}

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

async fn dial(url: &str, token: Option<&str>) -> Result<Ws, tungstenite::Error> {
    let mut request = format!("ws://{url}/ws/agent").into_client_request().unwrap();
    if let Some(t) = token {
        request
            .headers_mut()
            .insert("Authorization", format!("Bearer {t}").parse().unwrap());
    }
    tokio_tungstenite::connect_async(request).await.map(|(ws, _)| ws)
}

fn hello(version: u32) -> Message {
    let frame = AgentFrame::Hello(Hello {
        node: "micro-test".into(),
        role: Role::Micro,
        protocol_version: version,
        agent_version: "test".into(),
        address: "127.0.0.1".into(),
        repos: vec!["account".into()],
        images: vec![],
    });
    Message::Text(sdp_protocol::encode(&frame).into())
}

async fn next_frame(ws: &mut Ws) -> ReconcilerFrame {
    loop {
        match tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("a frame within 10 s")
        {
            Some(Ok(Message::Text(t))) => return sdp_protocol::decode(&t).unwrap(),
            Some(Ok(_)) => continue,
            other => panic!("connection ended: {other:?}"),
        }
    }
}

async fn connected(url: &str) -> Ws {
    let mut ws = dial(url, Some(TOKEN)).await.unwrap();
    ws.send(hello(PROTOCOL_VERSION)).await.unwrap();
    assert!(matches!(next_frame(&mut ws).await, ReconcilerFrame::Welcome { .. }));
    ws
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
    let (status, body) = refused_with(dial(&s.url, None).await);
    assert_eq!(status, 401);
    assert!(body.contains("missing bearer token"), "{body}");
    let (status, body) = refused_with(dial(&s.url, Some("wrong-token-0123456789")).await);
    assert_eq!(status, 401);
    assert!(body.contains("bad token"), "{body}");
    assert!(!body.contains(TOKEN));
}

#[tokio::test]
async fn a_version_mismatch_is_refused_naming_both_versions() {
    let s = server().await;
    let mut ws = dial(&s.url, Some(TOKEN)).await.unwrap();
    ws.send(hello(PROTOCOL_VERSION + 41)).await.unwrap();
    let ReconcilerFrame::Refused { reason } = next_frame(&mut ws).await else {
        panic!("not refused")
    };
    assert!(reason.contains(&format!("version {PROTOCOL_VERSION}")), "{reason}");
    assert!(
        reason.contains(&format!("version {}", PROTOCOL_VERSION + 41)),
        "{reason}"
    );
    assert!(s.controller.hub.nodes().is_empty());
}

#[tokio::test]
async fn an_agent_of_protocol_version_1_is_refused_naming_both_versions() {
    let s = server().await;
    let mut ws = dial(&s.url, Some(TOKEN)).await.unwrap();
    // A version-1 agent's Hello as it sends it: Hello did not change with version 2, so the hub reads it and the
    // version rule refuses it, rather than the agent's first `action` frame failing later.
    let old = r#"{"type":"hello","node":"micro-old","role":"micro","protocolVersion":1,"agentVersion":"0.0.9","address":"127.0.0.1","repos":["account"],"images":[]}"#;
    ws.send(Message::Text(old.into())).await.unwrap();
    let ReconcilerFrame::Refused { reason } = next_frame(&mut ws).await else {
        panic!("not refused")
    };
    let both = format!("this side speaks version {PROTOCOL_VERSION}, the other side version 1");
    assert!(reason.contains(&both), "{reason}");
    assert!(s.controller.hub.nodes().is_empty());
}

#[tokio::test]
async fn a_request_gets_its_typed_answer_and_an_unreadable_answer_says_so() {
    use sdp_protocol::{BranchHead, ListBranches};
    let s = server().await;
    let hub = s.controller.hub.clone();
    let none = hub.branches("billing", Duration::from_secs(5)).await;
    assert_eq!(
        none.unwrap_err().to_string(),
        "no connected agent serves a repository named billing"
    );
    let mut ws = connected(&s.url).await;
    let heads = vec![BranchHead {
        repo: "account".into(),
        branch: "feature/login-error".into(),
        commit: "0123456789abcdef0123".into(),
    }];
    // The agent answers the request it read with the answer its type says; then with a body of another shape.
    for sound in [true, false] {
        let h = hub.clone();
        let call = tokio::spawn(async move { h.branches("account", Duration::from_secs(30)).await });
        let ReconcilerFrame::Ask(ask) = next_frame(&mut ws).await else {
            panic!("no request")
        };
        assert_eq!(ask.read::<ListBranches>().unwrap().repo, "account");
        let answer = if sound {
            sdp_protocol::encode(&AgentFrame::Answer(Answer::new::<ListBranches>(
                ask.request_id,
                Ok(heads.clone()),
            )))
        } else {
            format!(
                r#"{{"type":"answer","requestId":{},"result":{{"ok":{{"branches":[]}}}}}}"#,
                ask.request_id
            )
        };
        ws.send(Message::Text(answer.into())).await.unwrap();
        let got = call.await.unwrap();
        if sound {
            assert_eq!(got, Ok(heads.clone()));
        } else {
            let e = got.unwrap_err().to_string();
            assert!(
                e.starts_with(
                    "agent micro-test sent an unreadable answer to a listBranches request: invalid type: map"
                ),
                "{e}"
            );
        }
    }
}

#[tokio::test]
async fn actions_get_their_results_and_fail_when_the_agent_drops() {
    let s = server().await;
    let hub = s.controller.hub.clone();
    let none = hub
        .dispatch(
            Role::Micro,
            Action::EnsureNetwork { sandbox: "a".into() },
            None,
            Duration::from_secs(5),
        )
        .await;
    assert_eq!(none.unwrap_err().to_string(), "no micro agent is connected");

    let mut ws = connected(&s.url).await;
    assert_eq!(hub.nodes()[0].node, "micro-test");
    assert_eq!(hub.address(Role::Micro).as_deref(), Some("127.0.0.1"));

    // A result answers its own request, with the agent's error when there is one.
    for error in [None, Some("image alpine:3.20 is not loaded".to_string())] {
        let h = hub.clone();
        let call = tokio::spawn(async move {
            h.dispatch(
                Role::Micro,
                Action::EnsureNetwork { sandbox: "a".into() },
                None,
                Duration::from_secs(30),
            )
            .await
        });
        let ReconcilerFrame::Ask(ask) = next_frame(&mut ws).await else {
            panic!("no action")
        };
        let request: ActionRequest = ask.read().unwrap();
        assert_eq!(request.action, Action::EnsureNetwork { sandbox: "a".into() });
        let result = AgentFrame::Answer(Answer::new::<ActionRequest>(
            ask.request_id,
            error.clone().map_or(Ok(()), Err),
        ));
        ws.send(Message::Text(sdp_protocol::encode(&result).into()))
            .await
            .unwrap();
        assert_eq!(call.await.unwrap(), error.map_or(Ok(()), |e| Err(AskError::Failed(e))));
    }

    // In flight when the agent goes: it fails at once with the agent's name, not at the deadline.
    let h = hub.clone();
    let call = tokio::spawn(async move {
        h.dispatch(
            Role::Micro,
            Action::RemoveNetwork { sandbox: "a".into() },
            None,
            Duration::from_secs(600),
        )
        .await
    });
    let ReconcilerFrame::Ask(_) = next_frame(&mut ws).await else {
        panic!("no action")
    };
    drop(ws);
    let result = tokio::time::timeout(Duration::from_secs(30), call)
        .await
        .expect("not waiting forever");
    assert_eq!(
        result.unwrap().unwrap_err().to_string(),
        "agent micro-test disconnected"
    );
    assert!(hub.nodes().is_empty());
}

#[tokio::test]
async fn triggers_of_a_queued_sandbox_are_merged_into_one_pass() {
    let s = server().await;
    for i in 0..50 {
        s.controller.trigger(
            "box",
            if i % 2 == 0 {
                Trigger::ConfigCommit
            } else {
                Trigger::AgentReport
            },
        );
    }
    s.controller.spawn(4);
    let passes = || s.controller.metrics.passes.load(Ordering::Relaxed);
    for _ in 0..100 {
        if passes() >= 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(passes(), 1, "fifty triggers of one queued sandbox make one pass");
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

/// A deployment of `box`'s account, running.
fn running_deployment(store: &Store) -> sdp_reconciler::store::Deployment {
    store
        .start_deployment(sdp_reconciler::store::Deployment {
            id: 0,
            sandbox: "box".into(),
            service: "account".into(),
            repo: "account".into(),
            branch: "main".into(),
            commit: None,
            config_commit: "c".into(),
            config_author: "a".into(),
            environments: vec![],
            reason: "missing".into(),
            trigger: "resync".into(),
            started_ms: 0,
            ended_ms: None,
            state: sdp_reconciler::store::DeploymentState::Running,
            stages: vec![],
            error: None,
        })
        .unwrap()
}

#[tokio::test]
async fn deployment_logs_stream_and_resume_from_last_event_id() {
    let s = server().await;
    let store = &s.controller.store;
    let d = running_deployment(store);
    for i in 0..3 {
        s.controller.log(sdp_protocol::LogLine {
            deployment_id: Some(d.id.to_string()),
            container: None,
            seq: i,
            line: format!("line {i}"),
            dropped_before: if i == 2 { 7 } else { 0 },
        });
    }
    store
        .update_deployment(d.id, |d| d.state = sdp_reconciler::store::DeploymentState::Succeeded)
        .unwrap();
    let url = format!("http://{}/api/v1/deployments/{}/logs", s.url, d.id);
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
    let url = format!("http://{}/api/v1/changes", s.url);
    let reader = tokio::task::spawn_blocking(move || {
        use std::io::BufRead;
        let response = ureq::get(&url).call().unwrap();
        let mut lines = std::io::BufReader::new(response.into_body().into_reader()).lines();
        lines
            .find(|l| l.as_ref().is_ok_and(|l| l == "event: changed"))
            .is_some()
    });
    // A pass over a sandbox nobody knew gives it a status: a change.
    tokio::time::sleep(Duration::from_millis(200)).await;
    s.controller.pass("box").await;
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
    let store = &s.controller.store;
    let d = running_deployment(store);
    let mut ws = connected(&s.url).await;
    let line = |deployment_id: Option<String>, container: Option<&str>, line: String| {
        let frame = AgentFrame::LogLine(sdp_protocol::LogLine {
            deployment_id,
            container: container.map(str::to_string),
            seq: 1,
            line,
            dropped_before: 0,
        });
        Message::Text(sdp_protocol::encode(&frame).into())
    };
    // A deployment nobody asked this agent to run.
    ws.send(line(Some(d.id.to_string()), None, "forged".into()))
        .await
        .unwrap();
    // A container line of 10 MB.
    ws.send(line(None, Some("sandbox-box-account"), "x".repeat(10 << 20)))
        .await
        .unwrap();
    let kept = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let lines = s
                .controller
                .logs
                .container_logs
                .lock()
                .unwrap()
                .get("sandbox-box-account")
                .map(|l| l.iter().map(|(_, t)| t.clone()).collect::<Vec<_>>());
            if let Some(lines) = lines {
                return lines;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the container line arrives");
    assert_eq!(kept.len(), 1);
    assert!(kept[0].len() < 17 * 1024, "{} bytes kept", kept[0].len());
    assert!(kept[0].ends_with("more bytes cut]"), "the cut is said");
    assert_eq!(store.log(d.id).len(), 0, "the forged line was written");
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
    let mut ws = connected(&s.url).await;
    let valid = [
        sdp_protocol::encode(&AgentFrame::ActualState(sdp_protocol::ActualState {
            worktrees: vec![sdp_protocol::Worktree {
                sandbox: "box".into(),
                service: "account".into(),
                branch: "main".into(),
                commit: "ééééééééééééééééé".into(),
            }],
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
    // The hub still serves: a pass over a sandbox with those reports runs, and a new agent is welcomed.
    s.controller.pass("box").await;
    let mut again = dial(&s.url, Some(TOKEN)).await.unwrap();
    again.send(hello(PROTOCOL_VERSION)).await.unwrap();
    assert!(matches!(next_frame(&mut again).await, ReconcilerFrame::Welcome { .. }));
    let url = format!("http://{}/healthz", s.url);
    let health = tokio::task::spawn_blocking(move || ureq::get(&url).call().map(|r| r.status().as_u16()))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(health, 200);
}

#[tokio::test]
async fn an_agent_is_acted_on_only_once_its_connection_has_reported() {
    use sdp_reconciler::hub::Readiness;
    let s = server().await;
    let hub = &s.controller.hub;
    assert_eq!(hub.readiness(Role::Micro), Readiness::NotConnected);
    let mut ws = connected(&s.url).await;
    // Connected, nothing reported yet: what the hub holds of the role is no picture of the VM.
    assert_eq!(hub.readiness(Role::Micro), Readiness::NoReportYet);
    let report = AgentFrame::ActualState(sdp_protocol::ActualState::default());
    ws.send(Message::Text(sdp_protocol::encode(&report).into()))
        .await
        .unwrap();
    for _ in 0..100 {
        if hub.readiness(Role::Micro) == Readiness::Ready {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        hub.readiness(Role::Micro),
        Readiness::Ready,
        "an empty report counts: it is one"
    );
    drop(ws);
    for _ in 0..100 {
        if hub.readiness(Role::Micro) == Readiness::NotConnected {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(hub.readiness(Role::Micro), Readiness::NotConnected);
}
