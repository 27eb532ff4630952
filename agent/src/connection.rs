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
use sdp_protocol::timing::{DIAL, PING_EVERY, SILENCE, random};
use sdp_protocol::{
    ActionRequest, AgentFrame, Answer, Ask, Hello, ListBranches, PROTOCOL_VERSION, ReconcilerFrame, Request,
};
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{self, Message};

use crate::executor::Executor;
use crate::outbox::Outbox;

/// A connection that lived this long resets the backoff.
pub const STABLE_AFTER: Duration = Duration::from_secs(60);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the node is scanned for drift, and fetched for moved branches.
const SCAN_EVERY: Duration = Duration::from_secs(5);
/// On a stop, how long the last frames (results, the final report) may take to reach the reconciler.
const FLUSH_GRACE: Duration = Duration::from_secs(5);

/// The delay before attempt `n` (1-based) after failures: full jitter over an exponential ceiling.
pub fn backoff(n: u32, random: f64) -> Duration {
    DIAL.full_jitter(n, random)
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

/// Dials until `stop` turns true, over `tls` on a `wss://` URL. `attempts` counts dial attempts (for tests and
/// metrics). A stop during a connection lets its actions end (at most the config's `stopGraceSecs`), abandons the
/// rest and says so to the reconciler, then closes the connection.
pub async fn run(
    executor: Arc<Executor>,
    tls: Option<Arc<rustls::ClientConfig>>,
    attempts: Arc<std::sync::atomic::AtomicU64>,
    mut stop: watch::Receiver<bool>,
) {
    let config = executor.config.clone();
    let mut failures: u32 = 0;
    loop {
        if *stop.borrow() {
            return;
        }
        attempts.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let token = match config.token() {
            Ok(t) => t,
            Err(e) => {
                failures += 1;
                let wait = backoff(failures, random());
                tracing::error!("{e:#}; retry in {:.1} s", wait.as_secs_f64());
                sleep_unless_stopped(wait, &mut stop).await;
                continue;
            }
        };
        let started = Instant::now();
        let outcome = session(&executor, tls.clone(), &token, stop.clone()).await;
        if *stop.borrow() {
            return;
        }
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
        sleep_unless_stopped(wait, &mut stop).await;
    }
}

async fn sleep_unless_stopped(wait: Duration, stop: &mut watch::Receiver<bool>) {
    tokio::select! {
        () = tokio::time::sleep(wait) => {}
        _ = stop.wait_for(|stop| *stop) => {}
    }
}

/// One connection, from the dial to its end.
async fn session(
    executor: &Arc<Executor>,
    tls: Option<Arc<rustls::ClientConfig>>,
    token: &str,
    mut stop: watch::Receiver<bool>,
) -> Result<(), String> {
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
    let dial = async {
        tokio::select! {
            dialed = tokio::time::timeout(CONNECT_TIMEOUT, dial) => Some(dialed),
            _ = stop.wait_for(|stop| *stop) => None,
        }
    };
    let Some(dialed) = dial.await else { return Ok(()) };
    let (ws, _) = match dialed {
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
    let reads_deflated = match tokio::time::timeout(CONNECT_TIMEOUT, stream.next()).await {
        Ok(Some(Ok(Message::Text(text)))) => match sdp_protocol::decode::<ReconcilerFrame>(&text) {
            Ok(ReconcilerFrame::Welcome {
                protocol_version,
                installation,
                reads_deflated,
            }) => {
                // The same rule on this side: a reconciler of another version is refused, naming both.
                sdp_protocol::check_version(protocol_version).map_err(|e| e.to_string())?;
                executor.engine.set_installation(&installation);
                reads_deflated
            }
            Ok(ReconcilerFrame::Refused { reason }) => return Err(format!("refused by the reconciler: {reason}")),
            Ok(_) => return Err("the reconciler did not answer Hello".into()),
            Err(e) => return Err(format!("unreadable answer to Hello: {e}")),
        },
        Ok(Some(Err(e))) => return Err(cause(&e)),
        Ok(_) => return Err("the reconciler closed the connection after Hello".into()),
        Err(_) => return Err("no answer to Hello".into()),
    };
    tracing::info!(reconciler = %config.reconciler, "connected");

    // Everything to the reconciler goes through one bounded queue, in order.
    let (outbox, mut queue) = Outbox::new();
    let writer = tokio::spawn(async move {
        let mut ping = tokio::time::interval(PING_EVERY);
        loop {
            tokio::select! {
                frame = queue.next() => match frame {
                    Some(f) => {
                        let mut parts = futures_util::stream::iter(sdp_protocol::agent_frames(&f, reads_deflated).into_iter().map(Ok));
                        if sink.send_all(&mut parts).await.is_err() { break }
                    }
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
                let scan = async {
                    match executor.quiet_report().await? {
                        Ok(report) => Some(report),
                        Err(e) => {
                            tracing::warn!("cannot read the node's state: {e:#}");
                            None
                        }
                    }
                };
                if let Some(report) = outbox.report(scan).await {
                    executor.follow(&report, &outbox);
                }
            }
        })
    };

    // Actions in flight, by request id: a stop waits for them, or abandons them and says so.
    let running = Running::default();
    let result = loop {
        let next = tokio::select! {
            next = tokio::time::timeout(SILENCE, stream.next()) => next,
            _ = stop.wait_for(|stop| *stop) => {
                finish(executor, &running, &outbox).await;
                break Ok(());
            }
        };
        let message = match next {
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
            Ok(ReconcilerFrame::Fetch { repo }) => {
                let mut names = fetch_now.lock().unwrap_or_else(|e| e.into_inner());
                // Bounded: a flood of webhook calls can name at most this many repositories before a fetch.
                if names.len() < 64 {
                    names.insert(repo);
                }
                fetch_wake.notify_one();
            }
            Ok(ReconcilerFrame::Ask(ask)) => serve(executor, &running, &outbox, ask).await,
            Ok(other) => tracing::debug!("ignored frame {other:?}"),
            Err(e) => tracing::warn!("unreadable frame from the reconciler: {e}"),
        }
    };
    reporter.abort();
    executor.unfollow_all();
    if *stop.borrow() {
        // The last results and report go out before the connection closes: the writer ends once every sender
        // is gone.
        drop(outbox);
        if tokio::time::timeout(FLUSH_GRACE, writer).await.is_err() {
            tracing::warn!("the last frames did not reach the reconciler within {FLUSH_GRACE:?}");
        }
    } else {
        writer.abort();
    }
    result
}

/// Serves one request of the reconciler: one arm per `Request` type, each answered by an `Answer` with the request's
/// id. A kind this agent does not know, or a body it cannot read, is answered at once with an error that says so.
async fn serve(executor: &Arc<Executor>, running: &Running, outbox: &Outbox, ask: Ask) {
    let request_id = ask.request_id;
    match ask.kind.as_str() {
        ActionRequest::KIND => match ask.read::<ActionRequest>() {
            Ok(request) => run_action(executor, running, outbox, request_id, request),
            Err(e) => refuse::<ActionRequest>(outbox, request_id, e).await,
        },
        ListBranches::KIND => match ask.read::<ListBranches>() {
            Ok(ListBranches { repo }) => {
                let (executor, outbox) = (executor.clone(), outbox.clone());
                tokio::spawn(async move {
                    let listed = executor.branches(&repo).await.map_err(|e| format!("{e:#}"));
                    outbox
                        .send(AgentFrame::Answer(Answer::new::<ListBranches>(request_id, listed)))
                        .await;
                });
            }
            Err(e) => refuse::<ListBranches>(outbox, request_id, e).await,
        },
        _ => {
            let e = ask.unknown();
            tracing::warn!(request = request_id, "{e}");
            outbox
                .send(AgentFrame::Answer(Answer {
                    request_id,
                    result: Err(e),
                }))
                .await;
        }
    }
}

/// Answers a request whose body could not be read.
async fn refuse<R: Request>(outbox: &Outbox, request_id: u64, error: String) {
    tracing::warn!(request = request_id, "{error}");
    outbox
        .send(AgentFrame::Answer(Answer::new::<R>(request_id, Err(error))))
        .await;
}

/// Runs an action in a task of its own, tracked in `running` so that a stop can wait for it or abandon it. The
/// executor checks every action (`check_action`) before it touches anything.
fn run_action(executor: &Arc<Executor>, running: &Running, outbox: &Outbox, request_id: u64, request: ActionRequest) {
    let executor = executor.clone();
    let outbox = outbox.clone();
    let done = running.clone();
    let task = tokio::spawn(async move {
        let what = serde_json::to_value(&request.action)
            .ok()
            .and_then(|v| v.get("kind").and_then(|k| k.as_str()).map(str::to_string))
            .unwrap_or_default();
        tracing::info!(request = request_id, "action {what}");
        let result = executor.run(request.action, request.deployment_id, &outbox).await;
        if let Err(e) = &result {
            tracing::warn!(request = request_id, "action {what} failed: {e:#}");
        }
        // The report first, so the reconciler plans against what the action left.
        outbox.report(async { executor.report().await.ok() }).await;
        let result = result.map_err(|e| format!("{e:#}"));
        outbox
            .send(AgentFrame::Answer(Answer::new::<ActionRequest>(request_id, result)))
            .await;
        done.remove(request_id);
    });
    running.add(request_id, task.abort_handle());
}

/// The actions a connection runs, by request id.
#[derive(Clone, Default)]
struct Running(
    Arc<(
        std::sync::Mutex<std::collections::HashMap<u64, tokio::task::AbortHandle>>,
        tokio::sync::Notify,
    )>,
);

impl Running {
    fn add(&self, id: u64, task: tokio::task::AbortHandle) {
        // A task that ended before it was added is not kept.
        if !task.is_finished() {
            self.0.0.lock().unwrap_or_else(|e| e.into_inner()).insert(id, task);
        }
    }

    fn remove(&self, id: u64) {
        self.0.0.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
        self.0.1.notify_waiters();
    }

    fn is_empty(&self) -> bool {
        let mut all = self.0.0.lock().unwrap_or_else(|e| e.into_inner());
        all.retain(|_, task| !task.is_finished());
        all.is_empty()
    }

    fn take(&self) -> Vec<(u64, tokio::task::AbortHandle)> {
        self.0.0.lock().unwrap_or_else(|e| e.into_inner()).drain().collect()
    }
}

/// A stop: the actions in flight may end within `stopGraceSecs`; what still runs then is abandoned (its programs
/// killed with their groups; a build's binary and config.php are only ever replaced whole, and a checkout's
/// stale lock is cleared at the next start) and each gets an answer that says so; then a last report.
async fn finish(executor: &Arc<Executor>, running: &Running, outbox: &Outbox) {
    let grace = Duration::from_secs(executor.config.stop_grace_secs);
    tracing::info!("stopping: waiting up to {grace:?} for the actions in flight");
    let deadline = tokio::time::Instant::now() + grace;
    loop {
        let notified = running.0.1.notified();
        tokio::pin!(notified);
        // Registered before looking, so an action that ends in between wakes this wait.
        notified.as_mut().enable();
        if running.is_empty() || tokio::time::timeout_at(deadline, notified).await.is_err() {
            break;
        }
    }
    for (request_id, task) in running.take() {
        task.abort();
        tracing::warn!(request = request_id, "action abandoned: the agent is stopping");
        let abandoned = "the agent was stopped (SIGTERM) during this action and abandoned it; it is done again when \
                         the agent is back";
        outbox
            .send(AgentFrame::Answer(Answer::new::<ActionRequest>(
                request_id,
                Err(abandoned.into()),
            )))
            .await;
    }
    outbox.report(async { executor.report().await.ok() }).await;
    tracing::info!("stopped");
}
