//! The connection to the reconciler: dial, Hello, then reports, actions and heartbeats until it breaks; dial
//! again with exponential backoff and full jitter (0.5 s up to 30 s, reset once a connection has lived a while).
//! Each failed attempt is one log line that names its cause. A reconciler restart or a reset socket never leaves
//! the agent in a tight loop: every path back to dialing goes through the backoff. On a `wss://` URL the TLS
//! handshake comes first (`tls.rs`), so the token in the upgrade request only ever goes to a trusted server.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use futures_util::{SinkExt, StreamExt};
use sdp_protocol::{AgentFrame, Hello, PROTOCOL_VERSION, ReconcilerFrame};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{self, Message};

use crate::executor::Executor;
use crate::outbox::Outbox;

pub const BACKOFF_MIN: Duration = Duration::from_millis(500);
pub const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// A connection that lived this long resets the backoff.
pub const STABLE_AFTER: Duration = Duration::from_secs(60);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const PING_EVERY: Duration = Duration::from_secs(15);
/// A reconciler that sends nothing (not even a ping) for this long is gone.
const SILENCE: Duration = Duration::from_secs(45);
/// How often the node is scanned for drift, and fetched for moved branches.
const SCAN_EVERY: Duration = Duration::from_secs(5);

/// The delay before attempt `n` (1-based) after failures: full jitter over an exponential ceiling.
pub fn backoff(n: u32, random: f64) -> Duration {
    let ceiling =
        (BACKOFF_MIN.as_secs_f64() * 2f64.powi(n.saturating_sub(1).min(16) as i32)).min(BACKOFF_MAX.as_secs_f64());
    // Full jitter, but never below the minimum: a reset must not turn into a hot loop.
    Duration::from_secs_f64((ceiling * random.clamp(0.0, 1.0)).max(BACKOFF_MIN.as_secs_f64()))
}

fn random() -> f64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    (h.finish() % 1_000_000) as f64 / 1_000_000.0
}

/// What went wrong with one attempt, in the words an operator needs.
pub fn cause(e: &tungstenite::Error) -> String {
    match e {
        tungstenite::Error::Io(io) if crate::tls::handshake_error(io).is_some() => crate::tls::handshake_error(io)
            .map(crate::tls::explain)
            .unwrap_or_default(),
        tungstenite::Error::Io(io) => match io.kind() {
            std::io::ErrorKind::ConnectionRefused => {
                "connection refused (is `sdp serve` running and listening?)".into()
            }
            std::io::ErrorKind::ConnectionReset => "connection reset".into(),
            std::io::ErrorKind::TimedOut => "timed out".into(),
            _ => format!("{io}"),
        },
        tungstenite::Error::Http(response) => {
            let body = response
                .body()
                .as_ref()
                .map(|b| String::from_utf8_lossy(b).trim().to_string())
                .unwrap_or_default();
            match response.status().as_u16() {
                401 | 403 => format!("HTTP {}: {body}", response.status()),
                _ => format!("HTTP {} instead of a WebSocket upgrade {body}", response.status()),
            }
        }
        other => other.to_string(),
    }
}

/// Dials forever, over `tls` on a `wss://` URL. `attempts` counts dial attempts (for tests and metrics).
pub async fn run(
    executor: Arc<Executor>,
    tls: Option<Arc<rustls::ClientConfig>>,
    attempts: Arc<std::sync::atomic::AtomicU64>,
) {
    let config = executor.config.clone();
    let mut failures: u32 = 0;
    loop {
        attempts.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let token = match config.token() {
            Ok(t) => t,
            Err(e) => {
                failures += 1;
                let wait = backoff(failures, random());
                tracing::error!("{e:#}; retry in {:.1} s", wait.as_secs_f64());
                tokio::time::sleep(wait).await;
                continue;
            }
        };
        let started = Instant::now();
        let outcome = session(&executor, tls.clone(), &token).await;
        if started.elapsed() >= STABLE_AFTER {
            failures = 0;
        }
        failures += 1;
        let wait = backoff(failures, random());
        match outcome {
            Ok(()) => tracing::warn!(
                "connection to {} closed; reconnecting in {:.1} s",
                config.reconciler,
                wait.as_secs_f64()
            ),
            Err(e) => tracing::warn!(
                "cannot talk to the reconciler at {}: {e}; retry in {:.1} s (attempt {failures})",
                config.reconciler,
                wait.as_secs_f64()
            ),
        }
        tokio::time::sleep(wait).await;
    }
}

/// One connection, from the dial to its end.
async fn session(executor: &Arc<Executor>, tls: Option<Arc<rustls::ClientConfig>>, token: &str) -> Result<(), String> {
    let config = &executor.config;
    let mut request = config
        .reconciler
        .as_str()
        .into_client_request()
        .map_err(|e| e.to_string())?;
    let value = format!("Bearer {token}")
        .parse()
        .map_err(|_| "the token is not a valid header value".to_string())?;
    request.headers_mut().insert("Authorization", value);
    // The handshake (TLS, then the upgrade with the token) in one: tungstenite writes the request only on a
    // stream that `wrap_stream` returned, that is after rustls accepted the server's certificate.
    let connector = tls.map(tokio_tungstenite::Connector::Rustls);
    let dial = tokio_tungstenite::connect_async_tls_with_config(request, None, false, connector);
    let (ws, _) = match tokio::time::timeout(CONNECT_TIMEOUT, dial).await {
        Ok(Ok(ok)) => ok,
        Ok(Err(e)) => return Err(cause(&e)),
        Err(_) => return Err(format!("timed out after {} s", CONNECT_TIMEOUT.as_secs())),
    };
    let (mut sink, mut stream) = ws.split();

    let images = executor.engine.images().await.unwrap_or_default();
    let hello = AgentFrame::Hello(Hello {
        node: config.node.clone(),
        role: config.role,
        protocol_version: PROTOCOL_VERSION,
        agent_version: env!("CARGO_PKG_VERSION").into(),
        address: config.address.clone(),
        repos: config.repos.keys().cloned().collect(),
        images,
    });
    sink.send(Message::Text(sdp_protocol::encode(&hello).into()))
        .await
        .map_err(|e| cause(&e))?;
    match tokio::time::timeout(CONNECT_TIMEOUT, stream.next()).await {
        Ok(Some(Ok(Message::Text(text)))) => match sdp_protocol::decode::<ReconcilerFrame>(&text) {
            Ok(ReconcilerFrame::Welcome {
                protocol_version,
                installation,
            }) => {
                // The same rule on this side: a reconciler of another version is refused, naming both.
                sdp_protocol::check_version(protocol_version).map_err(|e| e.to_string())?;
                executor.engine.set_installation(&installation);
            }
            Ok(ReconcilerFrame::Refused { reason }) => return Err(format!("refused by the reconciler: {reason}")),
            Ok(_) => return Err("the reconciler did not answer Hello".into()),
            Err(e) => return Err(format!("unreadable answer to Hello: {e}")),
        },
        Ok(Some(Err(e))) => return Err(cause(&e)),
        Ok(_) => return Err("the reconciler closed the connection after Hello".into()),
        Err(_) => return Err("no answer to Hello".into()),
    }
    tracing::info!(reconciler = %config.reconciler, "connected");

    // Everything to the reconciler goes through one bounded queue, in order.
    let (outbox, mut queue) = Outbox::new();
    let writer = tokio::spawn(async move {
        let mut ping = tokio::time::interval(PING_EVERY);
        loop {
            tokio::select! {
                frame = queue.next() => match frame {
                    Some(f) => if sink.send(Message::Text(sdp_protocol::encode(&f).into())).await.is_err() { break },
                    None => break,
                },
                _ = ping.tick() => if sink.send(Message::Ping(Vec::new().into())).await.is_err() { break },
            }
        }
        let _ = sink.close().await;
    });

    // Repositories a push webhook named: merged while a fetch runs, fetched by the reporter below.
    let fetch_now: Arc<std::sync::Mutex<BTreeSet<String>>> = Arc::default();
    let fetch_wake = Arc::new(tokio::sync::Notify::new());

    // Reports: one now, then on every change found by a scan.
    let reporter = {
        let executor = executor.clone();
        let outbox = outbox.clone();
        let (fetch_now, fetch_wake) = (fetch_now.clone(), fetch_wake.clone());
        tokio::spawn(async move {
            let mut scan = tokio::time::interval(SCAN_EVERY);
            let mut fetch = tokio::time::interval(Duration::from_secs(executor.config.fetch_secs.max(1)));
            loop {
                tokio::select! {
                    _ = scan.tick() => {},
                    _ = fetch.tick() => executor.fetch_tracked().await,
                    _ = fetch_wake.notified() => {
                        let names = std::mem::take(&mut *fetch_now.lock().unwrap_or_else(|e| e.into_inner()));
                        executor.fetch_named(names).await;
                    }
                }
                let Some(scanned) = executor.quiet_report().await else {
                    continue;
                };
                match scanned {
                    Ok(report) => {
                        executor.follow(&report, &outbox);
                        outbox.report(report).await;
                    }
                    Err(e) => tracing::warn!("cannot read the node's state: {e:#}"),
                }
            }
        })
    };

    let result = loop {
        let message = match tokio::time::timeout(SILENCE, stream.next()).await {
            Ok(Some(Ok(m))) => m,
            Ok(Some(Err(e))) => break Err(cause(&e)),
            Ok(None) => break Ok(()),
            Err(_) => break Err(format!("the reconciler was silent for {} s", SILENCE.as_secs())),
        };
        let text = match message {
            Message::Text(t) => t,
            Message::Close(_) => break Ok(()),
            _ => continue,
        };
        match sdp_protocol::decode::<ReconcilerFrame>(&text) {
            Ok(ReconcilerFrame::Refused { reason }) => {
                break Err(format!("the reconciler closed this connection: {reason}"));
            }
            Ok(ReconcilerFrame::ListBranches { request_id, repo }) => {
                let (executor, outbox) = (executor.clone(), outbox.clone());
                tokio::spawn(async move {
                    let listed = executor.branches(&repo).await;
                    let frame = sdp_protocol::BranchList {
                        request_id,
                        repo,
                        error: listed.as_ref().err().map(|e| format!("{e:#}")),
                        branches: listed.unwrap_or_default(),
                    };
                    outbox.send(AgentFrame::Branches(frame)).await;
                });
            }
            Ok(ReconcilerFrame::Fetch { repo }) => {
                let mut names = fetch_now.lock().unwrap_or_else(|e| e.into_inner());
                // Bounded: a flood of webhook calls can name at most this many repositories before a fetch.
                if names.len() < 64 {
                    names.insert(repo);
                }
                fetch_wake.notify_one();
            }
            Ok(ReconcilerFrame::Action(request)) => {
                let executor = executor.clone();
                let outbox = outbox.clone();
                tokio::spawn(async move {
                    let what = serde_json::to_value(&request.action)
                        .ok()
                        .and_then(|v| v.get("kind").and_then(|k| k.as_str()).map(str::to_string))
                        .unwrap_or_default();
                    tracing::info!(request = request.request_id, "action {what}");
                    let result = executor.run(request.action, request.deployment_id, &outbox).await;
                    if let Err(e) = &result {
                        tracing::warn!(request = request.request_id, "action {what} failed: {e:#}");
                    }
                    // The report first, so the reconciler plans against what the action left.
                    if let Ok(report) = executor.report().await {
                        outbox.report(report).await;
                    }
                    outbox
                        .send(AgentFrame::ActionResult(sdp_protocol::ActionResult {
                            request_id: request.request_id,
                            error: result.err().map(|e| format!("{e:#}")),
                        }))
                        .await;
                });
            }
            Ok(other) => tracing::debug!("ignored frame {other:?}"),
            Err(e) => tracing::warn!("unreadable frame from the reconciler: {e}"),
        }
    };
    reporter.abort();
    executor.unfollow_all();
    writer.abort();
    result
}
