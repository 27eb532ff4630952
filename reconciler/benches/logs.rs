//! Log path benchmark (DESIGN.md: a line reaches an SSE client in under 250 ms at p99, and at least 10,000
//! lines/s pass without loss, or with the loss counted). A real reconciler on 127.0.0.1 with a WebSocket agent
//! that sends a deployment's lines as fast as it can, and an SSE client reading them back; prints lines/s, lines
//! lost, and the latency percentiles of line arrival. Run: `cargo bench -p sdp-reconciler --bench logs`.

use std::io::BufRead;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::SinkExt;
use sdp_protocol::{AgentFrame, Hello, LogLine, PROTOCOL_VERSION, Role};
use sdp_reconciler::api::{Api, router};
use sdp_reconciler::auth::Auth;
use sdp_reconciler::controller::Controller;
use sdp_reconciler::desired::Settings;
use sdp_reconciler::hub::{Hub, HubEvent};
use sdp_reconciler::store::{Deployment, DeploymentState, Store};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const LINES: u64 = 50_000;
const TOKEN: &str = "bench-token-0123456789abcdef";

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let data = tempfile::tempdir().unwrap();
    let (url, id, controller) = runtime.block_on(async {
        let (tx, mut events) = tokio::sync::mpsc::channel(4096);
        let hub = Arc::new(Hub::new(TOKEN.into(), tx));
        let store = Store::open(data.path()).unwrap();
        let controller = Controller::new(hub, store, Settings::default(), Duration::from_secs(3600)).unwrap();
        let ctl = controller.clone();
        tokio::spawn(async move {
            while let Some(e) = events.recv().await {
                if let HubEvent::Log(l) = e {
                    ctl.log(l);
                }
            }
        });
        let d = controller
            .store
            .start_deployment(Deployment {
                id: 0,
                sandbox: "bench".into(),
                service: "account".into(),
                repo: "account".into(),
                branch: "main".into(),
                commit: None,
                config_commit: "c".into(),
                config_author: "a".into(),
                environments: vec![],
                reason: "bench".into(),
                trigger: "resync".into(),
                started_ms: 0,
                ended_ms: None,
                state: DeploymentState::Running,
                stages: vec![],
                error: None,
            })
            .unwrap();
        let app = router(Api {
            controller: controller.clone(),
            hook: Arc::default(),
            auth: Arc::new(Auth::anonymous("")),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("127.0.0.1:{}", listener.local_addr().unwrap().port());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (url, d.id, controller)
    });

    // The reader: an SSE client that notes when each line arrives.
    let sse = format!("http://{url}/api/v1/deployments/{id}/logs");
    let reader = std::thread::spawn(move || {
        let response = ureq::get(&sse).call().unwrap();
        let mut arrivals: Vec<(u64, Instant)> = Vec::with_capacity(LINES as usize);
        for line in std::io::BufReader::new(response.into_body().into_reader()).lines() {
            let line = line.unwrap();
            if let Some(data) = line.strip_prefix("data: ") {
                if let Some(n) = data
                    .strip_prefix("line ")
                    .and_then(|n| n.split(' ').next()?.parse().ok())
                {
                    arrivals.push((n, Instant::now()));
                }
            } else if line == "event: end" {
                break;
            }
        }
        arrivals
    });
    std::thread::sleep(Duration::from_millis(300));

    // The writer: an agent sending the deployment's lines as fast as the socket takes them.
    // The agent's connection stays open until every line has landed: closing a socket with unread data resets
    // it, and the peer then drops what it had not read yet (a real agent's connection stays open).
    let (sent, ws) = runtime.block_on(async {
        let mut request = format!("ws://{url}/ws/agent").into_client_request().unwrap();
        request
            .headers_mut()
            .insert("Authorization", format!("Bearer {TOKEN}").parse().unwrap());
        let (mut ws, _) = tokio_tungstenite::connect_async(request).await.unwrap();
        let hello = AgentFrame::Hello(Hello {
            node: "bench".into(),
            role: Role::Micro,
            protocol_version: PROTOCOL_VERSION,
            agent_version: "bench".into(),
            address: "127.0.0.1".into(),
            repos: vec![],
            images: vec![],
        });
        ws.send(Message::Text(sdp_protocol::encode(&hello).into()))
            .await
            .unwrap();
        let mut sent = Vec::with_capacity(LINES as usize);
        for n in 0..LINES {
            let frame = AgentFrame::LogLine(LogLine {
                deployment_id: Some(id.to_string()),
                container: None,
                seq: n,
                line: format!("line {n} go: downloading example.com/module v1.2.3 and building it"),
                dropped_before: 0,
            });
            sent.push(Instant::now());
            ws.send(Message::Text(sdp_protocol::encode(&frame).into()))
                .await
                .unwrap();
        }
        (sent, ws)
    });
    let written = sent[sent.len() - 1].duration_since(sent[0]);
    // Let every line land (the count stops growing), then end the deployment so the SSE stream closes.
    let mut count = controller.store.log(id).len();
    loop {
        std::thread::sleep(Duration::from_millis(500));
        let now = controller.store.log(id).len();
        if now == count {
            break;
        }
        count = now;
    }
    controller
        .store
        .update_deployment(id, |d| d.state = DeploymentState::Succeeded)
        .unwrap();
    drop(ws);
    let arrivals = reader.join().unwrap();

    let mut latencies: Vec<Duration> = arrivals
        .iter()
        .filter_map(|(n, at)| sent.get(*n as usize).map(|s| at.duration_since(*s)))
        .collect();
    latencies.sort();
    let pct = |p: f64| latencies[((latencies.len() as f64 - 1.0) * p) as usize];
    let last = arrivals.last().map(|(_, t)| *t).unwrap();
    let through = last.duration_since(sent[0]);
    println!(
        "{} lines sent in {:.2} s ({:.0} lines/s from the agent's socket)",
        LINES,
        written.as_secs_f64(),
        LINES as f64 / written.as_secs_f64()
    );
    println!(
        "{} lines read back over SSE ({} lost), {:.0} lines/s end to end",
        arrivals.len(),
        LINES - arrivals.len() as u64,
        arrivals.len() as f64 / through.as_secs_f64()
    );
    println!(
        "line latency agent -> SSE client: p50 {:?}, p99 {:?}, max {:?} (target p99 < 250 ms)",
        pct(0.5),
        pct(0.99),
        latencies[latencies.len() - 1]
    );
    println!("log file holds {} lines", controller.store.log(id).len());
}
