//! Log path benchmark (DESIGN.md: a line reaches an SSE client in under 250 ms at p99, and at least 10,000
//! lines/s pass without loss, or with the loss counted). A real reconciler on 127.0.0.1 with a WebSocket agent
//! that sends a deployment's lines as fast as it can, and an SSE client reading them back; prints lines/s, lines
//! lost, and the latency percentiles of line arrival. Run: `cargo bench -p sdp-reconciler --bench logs`.

use std::io::BufRead;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures_util::SinkExt;
use sdp_protocol::{Action, ActionRequest, ActualState, AgentFrame, Answer, LogLine, ReconcilerFrame, Role};
use tokio_tungstenite::tungstenite::Message;

/// The tests' server and fake-agent wiring, shared.
#[path = "../tests/common/mod.rs"]
mod common;

use common::server::{self, Server, connected, hello, next_frame, send};

// The allocator `sdp` runs with, set as it sets it.
sdp_reconciler::global_allocator!();

const LINES: u64 = 50_000;

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    // `sdp serve` over the examples, and a micro agent that runs qa-login-error's account deployment: the
    // reconciler's own pass records it and sends it; the agent holds it open while it sends its lines.
    let (server, mut ws, id, request_id) = runtime.block_on(async {
        let server = Server::start(common::repo::Repo::new(), |_| {}).await;
        let mut ws = connected(&server.ws(), hello("bench", Role::Micro, &[])).await;
        send(&mut ws, AgentFrame::ActualState(ActualState::default())).await;
        loop {
            let ReconcilerFrame::Ask(ask) = next_frame(&mut ws).await else {
                continue;
            };
            let a: ActionRequest = ask.read().unwrap();
            if let (Action::DeployService(_), Some(id)) = (&a.action, &a.deployment_id) {
                break (server, ws, id.clone(), ask.request_id);
            }
            let done = AgentFrame::Answer(Answer::new::<ActionRequest>(ask.request_id, Ok(())));
            send(&mut ws, done).await;
        }
    });
    let url = server.addr;

    // The reader: an SSE client that notes when each line arrives.
    let sse = format!("http://{url}/api/v1/deployments/{id}/logs");
    let arrived = Arc::new(AtomicUsize::new(0));
    let count = arrived.clone();
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
                    count.store(arrivals.len(), Ordering::Relaxed);
                }
            } else if line == "event: end" {
                break;
            }
        }
        arrivals
    });
    std::thread::sleep(Duration::from_millis(300));

    // The writer: the agent sending the deployment's lines as fast as the socket takes them.
    // The agent's connection stays open until every line has landed: closing a socket with unread data resets
    // it, and the peer then drops what it had not read yet (a real agent's connection stays open).
    let sent = runtime.block_on(async {
        let mut sent = Vec::with_capacity(LINES as usize);
        for n in 0..LINES {
            let frame = AgentFrame::LogLine(LogLine {
                deployment_id: Some(id.clone()),
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
        sent
    });
    let written = sent[sent.len() - 1].duration_since(sent[0]);
    // Let every line land (the count the reader has stops growing), then end the deployment as an agent does
    // (its result), so that the SSE stream closes.
    let mut count = arrived.load(Ordering::Relaxed);
    loop {
        std::thread::sleep(Duration::from_millis(500));
        let now = arrived.load(Ordering::Relaxed);
        if now == count {
            break;
        }
        count = now;
    }
    runtime.block_on(async {
        let done = AgentFrame::Answer(Answer::new::<ActionRequest>(request_id, Ok(())));
        send(&mut ws, done).await;
    });
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
    // What the store kept: the whole log again, read back as a client reads an ended deployment's.
    let (_, _, log) = runtime.block_on(server::get(format!("http://{url}/api/v1/deployments/{id}/logs")));
    let kept = server::sse_data(&log).len();
    println!("log file holds {kept} lines");
    runtime.block_on(async {
        drop(ws);
        server.stop().await;
    });
}
