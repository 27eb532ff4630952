//! `sdp serve` on 127.0.0.1 as the binary runs it (`serve_on`, stopped by a value), over a config repo in a temp
//! dir; fake agents that speak the real protocol over the real WebSocket with the real token; and the HTTP reads
//! the tests make of it.

#![allow(dead_code)]

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use sdp_protocol::{AgentFrame, Hello, PROTOCOL_VERSION, ReconcilerFrame, Role};
use sdp_reconciler::serve::{ServeConfig, serve_on};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use super::repo::Repo;

pub const TOKEN: &str = "test-token-0123456789abcdef";

/// Long enough for anything on a loaded machine; the tests never wait this long when SDP is right.
pub const DEADLINE: Duration = Duration::from_secs(30);

/// A running `sdp serve`; stopped (through its shutdown value) when dropped.
pub struct Server {
    /// `127.0.0.1:port`.
    pub addr: SocketAddr,
    /// Where everything is served (`basePath`).
    pub base: String,
    pub repo: Repo,
    stop: Option<oneshot::Sender<()>>,
    done: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
    _data: tempfile::TempDir,
}

impl Server {
    /// Serves `repo` with the defaults a test wants (anonymous reads, a resync that never comes during a test),
    /// changed by `tweak`.
    pub async fn start(repo: Repo, tweak: impl FnOnce(&mut ServeConfig)) -> Server {
        let data = tempfile::tempdir().unwrap();
        let token = data.path().join("token");
        std::fs::write(&token, TOKEN).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut config = ServeConfig {
            listen: addr,
            allow_anonymous: true,
            resync_secs: 3600,
            ..ServeConfig::new(repo.dir.display().to_string(), data.path().join("data"), token)
        };
        tweak(&mut config);
        let base = config.base_path.clone();
        let (stop, stopped) = oneshot::channel::<()>();
        let done = tokio::spawn(serve_on(listener, config, async {
            let _ = stopped.await;
        }));
        Server {
            addr,
            base,
            repo,
            stop: Some(stop),
            done: Some(done),
            _data: data,
        }
    }

    /// `path` under the base path, as an http URL.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}{path}", self.addr, self.base)
    }

    /// The agents' WebSocket.
    pub fn ws(&self) -> String {
        format!("ws://{}{}/ws/agent", self.addr, self.base)
    }

    /// Stops the server and checks that it ended without an error.
    pub async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        let done = self.done.take().unwrap();
        let result = tokio::time::timeout(DEADLINE, done).await.expect("stopped in time");
        result.unwrap().unwrap();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// A config repo of the examples, changed by `edit` and committed.
pub fn examples_with(edit: impl FnOnce(&Repo)) -> Repo {
    let repo = Repo::new();
    edit(&repo);
    repo.git(&["add", "-A"]);
    repo.git(&["commit", "-qm", "test changes", "--allow-empty"]);
    repo
}

/// Waits until `check` says yes, at most `DEADLINE`; panics with `what` otherwise.
pub async fn until<F: Future<Output = bool>>(what: &str, mut check: impl FnMut() -> F) {
    let give_up = tokio::time::Instant::now() + DEADLINE;
    while !check().await {
        assert!(tokio::time::Instant::now() < give_up, "waited {DEADLINE:?} for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A GET: status, content type and body.
pub async fn get(url: String) -> (u16, String, String) {
    tokio::task::spawn_blocking(move || {
        let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
        let mut r = agent.get(&url).call().unwrap();
        let kind = r
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default();
        (r.status().as_u16(), kind, r.body_mut().read_to_string().unwrap())
    })
    .await
    .unwrap()
}

/// A GET answered 200, as JSON.
pub async fn json(url: String) -> serde_json::Value {
    let (code, _, body) = get(url.clone()).await;
    assert_eq!(code, 200, "{url}: {body}");
    serde_json::from_str(&body).unwrap()
}

/// The counter `name` of `/metrics`.
pub async fn metric(server: &Server, name: &str) -> u64 {
    let (_, _, body) = get(server.url("/metrics")).await;
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in /metrics:\n{body}"))
}

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Opens the agents' WebSocket at `url` with `token` as the bearer token (none: no header).
pub async fn dial(url: &str, token: Option<&str>) -> Result<Ws, tungstenite::Error> {
    let mut request = url.into_client_request().unwrap();
    if let Some(t) = token {
        request
            .headers_mut()
            .insert("Authorization", format!("Bearer {t}").parse().unwrap());
    }
    tokio_tungstenite::connect_async(request).await.map(|(ws, _)| ws)
}

/// The Hello of an agent of `role` named `node`, serving `repos`, speaking `PROTOCOL_VERSION`.
pub fn hello(node: &str, role: Role, repos: &[&str]) -> Hello {
    Hello {
        node: node.into(),
        role,
        protocol_version: PROTOCOL_VERSION,
        agent_version: "test".into(),
        address: "127.0.0.1".into(),
        repos: repos.iter().map(|r| r.to_string()).collect(),
        images: vec![],
    }
}

/// A frame as the agents send it.
pub fn message(frame: &AgentFrame) -> Message {
    Message::Text(sdp_protocol::encode(frame).into())
}

/// Sends `frame` as the agent does to a reconciler that reads deflated frames: a report deflated, anything else as
/// text, in fragments when long.
pub async fn send(ws: &mut Ws, frame: AgentFrame) {
    let mut frames = futures_util::stream::iter(sdp_protocol::agent_frames(&frame, true).into_iter().map(Ok));
    ws.send_all(&mut frames).await.unwrap();
}

/// Sends `frame` as text, as an agent of a release before deflated frames does: in fragments when it is long.
pub async fn send_text(ws: &mut Ws, frame: AgentFrame) {
    let mut frames = futures_util::stream::iter(sdp_protocol::frames(sdp_protocol::encode(&frame)).map(Ok));
    ws.send_all(&mut frames).await.unwrap();
}

/// The next frame from the reconciler, within `DEADLINE`.
pub async fn next_frame(ws: &mut Ws) -> ReconcilerFrame {
    loop {
        match tokio::time::timeout(DEADLINE, ws.next())
            .await
            .expect("a frame in time")
        {
            Some(Ok(Message::Text(t))) => return sdp_protocol::decode(&t).unwrap(),
            Some(Ok(_)) => continue,
            other => panic!("connection ended: {other:?}"),
        }
    }
}

/// An agent that said `hello` and was welcomed (it has not reported yet).
pub async fn connected(url: &str, hello: Hello) -> Ws {
    let mut ws = dial(url, Some(TOKEN)).await.unwrap();
    send(&mut ws, AgentFrame::Hello(hello)).await;
    let welcome = next_frame(&mut ws).await;
    assert!(
        matches!(
            welcome,
            ReconcilerFrame::Welcome {
                reads_deflated: true,
                ..
            }
        ),
        "{welcome:?}"
    );
    ws
}

/// The data of an SSE body's plain events (not `event: end` and the like), in order.
pub fn sse_data(body: &str) -> Vec<String> {
    body.split("\n\n")
        .filter(|event| !event.lines().any(|l| l.starts_with("event:")))
        .filter_map(|event| {
            let data: Vec<&str> = event.lines().filter_map(|l| l.strip_prefix("data: ")).collect();
            (!data.is_empty()).then(|| data.join("\n"))
        })
        .collect()
}
