//! The reconciler's HTTP surface: the agents' WebSocket, the read-only JSON API, SSE logs, `/healthz` and
//! `/metrics`. The only endpoint that is not a GET is the git hook, and all it does is fetch sooner: every change
//! goes through git.
//!
//! Secret values never pass here: the desired state holds secret *file paths*, and agents read the values on
//! their VM.
//!
//! Every answer is a typed document of `sdp_dashboard::docs` (converted from the reconciler's own types in
//! `docs`), the same type the dashboard renders and `sdp get` reads.

pub mod docs;

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, Query, State, WebSocketUpgrade};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::{get, post};
use sdp_dashboard::docs::{
    Actual, ActualDoc, BranchesDoc, DeploymentDoc, ErrorDoc, HookDoc, NodeDoc, SandboxDoc, SandboxSummary,
};
use sdp_protocol::{Role, Routes, labels};
use serde::Deserialize;
use serde_json::Value;
use tokio::sync::{Notify, broadcast, mpsc};

use crate::auth::Auth;
use crate::controller::{Controller, LiveLog, Status, Sync};
use crate::desired::{DesiredSandbox, Mode};
use crate::source::Manifest;
use crate::store::{Deployment, DeploymentState};

/// What the handlers share.
#[derive(Clone)]
pub struct Api {
    pub controller: Arc<Controller>,
    /// Wakes the source loop: a fetch now.
    pub hook: Arc<Notify>,
    /// Who may read: a login, or everyone (`--allow-anonymous`).
    pub auth: Arc<Auth>,
}

/// The API, the agents' endpoint and the dashboard at the root.
pub fn router(api: Api) -> Router {
    router_at(api, "")
}

/// The API, the agents' endpoint and the dashboard, all under `base` (empty, or e.g. `/sandbox/credit-card`).
/// Everything that shows state needs a login (unless the server allows anonymous readers); the health check,
/// the metrics, the agents' WebSocket (its own token), the git hook and the login itself do not.
pub fn router_at(api: Api, base: &str) -> Router {
    let auth = api.auth.clone();
    let dashboard = sdp_dashboard::router(Arc::new(api.clone()), base);
    let guarded = Router::new()
        .route("/api/v1/sandboxes", get(sandboxes))
        .route("/api/v1/sandboxes/{name}", get(sandbox))
        .route("/api/v1/sandboxes/{name}/logs/{service}", get(container_logs))
        .route("/api/v1/deployments", get(deployments))
        .route("/api/v1/deployments/{id}", get(deployment))
        .route("/api/v1/deployments/{id}/logs", get(deployment_logs))
        .route("/api/v1/nodes", get(nodes))
        .route("/api/v1/actual", get(actual))
        .route("/api/v1/changes", get(changes))
        .route("/api/v1/repos/{repo}/branches", get(branches))
        .with_state(api.clone())
        .merge(dashboard.pages)
        .route_layer(axum::middleware::from_fn_with_state(
            auth.clone(),
            crate::auth::require_login,
        ));
    let app = Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/ws/agent", get(ws_agent))
        .route(
            "/api/v1/hooks/git",
            post(git_hook).layer(axum::extract::DefaultBodyLimit::max(64 * 1024)),
        )
        .with_state(api)
        .merge(dashboard.assets)
        .merge(crate::auth::routes(auth))
        .merge(guarded);
    let base = base.trim_end_matches('/');
    if base.is_empty() {
        app
    } else {
        // `{base}/` is the overview too, as the links, a browser and nginx's location block write it: served,
        // not redirected (nginx sends `{base}` to `{base}/`, so a redirect back would loop).
        let root = app.clone();
        Router::new()
            .route(
                &format!("{base}/"),
                axum::routing::any(move |mut request: axum::extract::Request| {
                    let root = root.clone();
                    async move {
                        let query = request.uri().query().map(|q| format!("?{q}")).unwrap_or_default();
                        *request.uri_mut() = format!("/{query}").parse().expect("a path and its query");
                        tower::ServiceExt::oneshot(root, request).await
                    }
                }),
            )
            .nest(base, app)
    }
}

fn error(code: StatusCode, error: String) -> Response {
    (code, Json(ErrorDoc { error })).into_response()
}

fn not_found(what: String) -> Response {
    error(StatusCode::NOT_FOUND, what)
}

fn internal(e: anyhow::Error) -> Response {
    tracing::error!("{e:#}");
    error(StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}"))
}

async fn ws_agent(
    State(api): State<Api>,
    headers: HeaderMap,
    extensions: axum::http::Extensions,
    ws: WebSocketUpgrade,
) -> Response {
    let auth = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    if let Err(why) = api.controller.hub.authorize(auth) {
        tracing::warn!("agent refused: {why}");
        return (StatusCode::UNAUTHORIZED, why).into_response();
    }
    let peer = extensions
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0.ip());
    let peer = crate::auth::limit::client_address(peer, &headers, &api.auth.trusted_proxies)
        .parse()
        .ok()
        .or(peer);
    let hub = api.controller.hub.clone();
    ws.max_message_size(crate::hub::MAX_FRAME_BYTES)
        .max_frame_size(crate::hub::MAX_FRAME_BYTES)
        .on_upgrade(move |socket| hub.serve(socket, peer))
}

fn gateway_url(api: &Api, d: &DesiredSandbox) -> Option<String> {
    let host = api.controller.hub.address(Role::Gateway)?;
    Some(format!("http://{host}:{}", d.gateway.host_port))
}

fn status_or_new(api: &Api, name: &str, desired: Option<&DesiredSandbox>) -> Status {
    api.controller.status(name).unwrap_or_else(|| Status {
        sync: match desired.map(|d| &d.mode) {
            Some(Mode::Suspended(_)) => Sync::Suspended,
            _ => Sync::OutOfSync,
        },
        ..Status::default()
    })
}

async fn sandboxes(State(api): State<Api>) -> Response {
    let list = sandbox_list(&api);
    // 1,000 sandboxes are 400 KB of JSON, written into room made once (grown by doubling, its last two sizes were
    // held at once); room it does not use is never touched, and takes no memory. Not streamed as `actual` is:
    // this answer is short enough to hold, and a slow client then holds no writing turn that others wait for.
    let mut body = Vec::with_capacity(list.len() * 1024 + 2);
    match serde_json::to_writer(&mut body, &list) {
        Ok(()) => ([(header::CONTENT_TYPE, "application/json")], body).into_response(),
        Err(e) => internal(e.into()),
    }
}

/// Every sandbox in git or on a VM, summarised.
pub fn sandbox_list(api: &Api) -> Vec<SandboxSummary> {
    let world = api.controller.world();
    api.controller
        .sandbox_names()
        .into_iter()
        .map(|name| {
            let d = world.desired.sandbox(&name);
            let change = world.snapshot.changes.get(&name);
            let status = status_or_new(api, &name, d);
            let error = world
                .desired
                .held
                .get(&name)
                .cloned()
                .or_else(|| world.snapshot.errors.get(&name).map(|e| e.join("; ")))
                .or(status.last_error.clone());
            SandboxSummary {
                owner: d.and_then(|d| d.owner.clone()),
                sync: status.sync,
                health: status.health,
                gateway_url: d.and_then(|d| gateway_url(api, d)),
                services: d.map_or(0, |d| d.services.len()),
                last_commit: change.map_or_else(|| world.snapshot.commit.clone(), |c| c.commit.clone()),
                last_author: change.map_or_else(|| world.snapshot.author.clone(), |c| c.author.clone()),
                last_time: change.map_or(world.snapshot.time, |c| c.time),
                error,
                name,
            }
        })
        .collect()
}

async fn sandbox(State(api): State<Api>, Path(name): Path<String>) -> Response {
    match sandbox_doc(&api, &name) {
        Some(doc) => Json(doc).into_response(),
        None => not_found(format!("no sandbox {name} in the config repo or on the VMs")),
    }
}

/// Everything about one sandbox: desired, actual, drift, status, errors, manifest, events, deployments.
pub fn sandbox_doc(api: &Api, name: &str) -> Option<SandboxDoc> {
    let name = name.to_string();
    let world = api.controller.world();
    let d = world.desired.sandbox(&name);
    let actual = api.controller.hub.actual();
    let view = actual.view(&name);
    let known = d.is_some()
        || world.desired.held.contains_key(&name)
        || world.snapshot.errors.contains_key(&name)
        || !view.micro.containers.is_empty()
        || !view.gateway.containers.is_empty();
    if !known {
        return None;
    }
    let status = status_or_new(api, &name, d);
    let actual = Actual {
        containers: view
            .micro
            .containers
            .iter()
            .chain(&view.gateway.containers)
            .map(|c| (*c).clone())
            .collect(),
        worktrees: view
            .micro
            .worktrees
            .iter()
            .chain(&view.gateway.worktrees)
            .map(|w| (*w).clone())
            .collect(),
        routes: view.gateway.routes.map(Routes::to_map),
        route_defaults: view.gateway.route_defaults.map(Routes::to_map),
    };
    let events = api.controller.store.events(Some(&name), 50).unwrap_or_default();
    let deployments = api
        .controller
        .store
        .deployments(|dep| dep.sandbox == name, 20)
        .unwrap_or_default();
    Some(SandboxDoc {
        desired: d.map(Into::into),
        held: world.desired.held.get(&name).cloned(),
        config_errors: world.snapshot.errors.get(&name).cloned(),
        gateway_url: d.and_then(|d| gateway_url(api, d)),
        status,
        actual,
        manifest: world.snapshot.manifests.get(&name).map(Manifest::text),
        generated_by: world
            .generated
            .sandboxes
            .iter()
            .find(|s| s.metadata.name == name)
            .and_then(|s| crate::sets::generated_by(s))
            .map(str::to_string),
        config_commit: world.snapshot.commit.clone(),
        config_author: world.snapshot.author.clone(),
        // The last commit that changed this sandbox's own file (`configCommit` is the one the VMs follow).
        last_change: world.snapshot.changes.get(&name).cloned(),
        events: events.into_iter().map(Into::into).collect(),
        deployments: deployments.into_iter().map(Into::into).collect(),
        name,
    })
}

#[derive(Default, Deserialize)]
pub struct DeploymentQuery {
    pub sandbox: Option<String>,
    pub service: Option<String>,
    pub author: Option<String>,
    pub state: Option<DeploymentState>,
    pub limit: Option<usize>,
}

async fn deployments(State(api): State<Api>, Query(q): Query<DeploymentQuery>) -> Response {
    match deployment_list(&api, &q) {
        Ok(list) => Json(list).into_response(),
        Err(e) => internal(e),
    }
}

/// Deployments, newest first, filtered.
pub fn deployment_list(api: &Api, q: &DeploymentQuery) -> anyhow::Result<Vec<DeploymentDoc>> {
    let filter = |d: &Deployment| {
        q.sandbox.as_ref().is_none_or(|s| &d.sandbox == s)
            && q.service.as_ref().is_none_or(|s| &d.service == s)
            && q.author.as_ref().is_none_or(|a| d.config_author.contains(a.as_str()))
            && q.state.is_none_or(|s| d.state == s)
    };
    let list = api
        .controller
        .store
        .deployments(filter, q.limit.unwrap_or(100).min(1000))?;
    Ok(list.into_iter().map(Into::into).collect())
}

async fn deployment(State(api): State<Api>, Path(id): Path<u64>) -> Response {
    match api.controller.store.deployment(id) {
        Ok(Some(d)) => Json(DeploymentDoc::from(d)).into_response(),
        Ok(None) => not_found(format!("no deployment {id}")),
        Err(e) => internal(e),
    }
}

fn sse_from(rx: mpsc::Receiver<Event>) -> Response {
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|e| (Ok::<_, Infallible>(e), rx))
    });
    Sse::new(stream).keep_alive(KeepAlive::default()).into_response()
}

/// A deployment's log as SSE: every line from `Last-Event-ID` on (the id is the 0-based line number), then new
/// lines while the deployment runs; ends once it has ended and every line is sent.
async fn deployment_logs(State(api): State<Api>, Path(id): Path<u64>, headers: HeaderMap) -> Response {
    match api.controller.store.deployment(id) {
        Ok(Some(_)) => {}
        Ok(None) => return not_found(format!("no deployment {id}")),
        Err(e) => return internal(e),
    }
    let mut next: u64 = last_event_id(&headers).map_or(0, |last| last + 1);
    let (tx, rx) = mpsc::channel::<Event>(256);
    let controller = api.controller.clone();
    // Subscribed before the file is read, so no line falls between the two.
    let mut live = controller.logs.subscribe();
    tokio::spawn(async move {
        let log = controller.store.log(id);
        loop {
            // Everything written so far, from the file.
            loop {
                let lines = match log.read_from(next, 500) {
                    Ok(lines) => lines,
                    Err(e) => {
                        // A damaged log ends the stream rather than retrying the same read every second.
                        tracing::warn!("deployment {id}'s log from line {next}: {e:#}");
                        let said = "the rest of this log cannot be read (the reconciler's log says why)";
                        let _ = tx.send(Event::default().event("end").data(said)).await;
                        return;
                    }
                };
                if lines.is_empty() {
                    break;
                }
                for line in lines {
                    let event = Event::default().id(next.to_string()).data(line);
                    if tx.send(event).await.is_err() {
                        return;
                    }
                    next += 1;
                }
            }
            let running = controller
                .store
                .deployment(id)
                .ok()
                .flatten()
                .is_some_and(|d| d.state == DeploymentState::Running);
            if !running && log.len() <= next {
                let _ = tx.send(Event::default().event("end").data("deployment ended")).await;
                return;
            }
            // Wait for a new line of this deployment (or a second, to see it end).
            let wait = tokio::time::timeout(Duration::from_secs(1), async {
                loop {
                    match live.recv().await {
                        Ok(LiveLog::Deployment { id: d, .. }) if d == id => return,
                        Ok(_) => continue,
                        Err(broadcast::error::RecvError::Lagged(_)) => return,
                        Err(broadcast::error::RecvError::Closed) => return,
                    }
                }
            });
            let _ = wait.await;
        }
    });
    sse_from(rx)
}

/// The id of the last event a reconnecting SSE reader saw.
fn last_event_id(headers: &HeaderMap) -> Option<u64> {
    headers.get("last-event-id")?.to_str().ok()?.parse().ok()
}

#[derive(Deserialize)]
struct FollowQuery {
    follow: Option<bool>,
}

/// A container's recent output, then (with `?follow=true`) its new lines, as SSE; a reader that reconnects with
/// `Last-Event-ID` gets only the lines after it.
async fn container_logs(
    State(api): State<Api>,
    Path((name, service)): Path<(String, String)>,
    Query(q): Query<FollowQuery>,
    headers: HeaderMap,
) -> Response {
    let container = sdp_protocol::container_name(&name, &service);
    let seen = last_event_id(&headers).unwrap_or(0);
    let mut live = api.controller.logs.subscribe();
    let recent: Vec<(u64, String)> = api
        .controller
        .logs
        .container_logs
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(&container)
        .map(|l| l.iter().filter(|(seq, _)| *seq > seen).cloned().collect())
        .unwrap_or_default();
    let known = api
        .controller
        .hub
        .actual()
        .view(&name)
        .micro
        .containers
        .iter()
        .any(|c| c.name == container)
        || api
            .controller
            .hub
            .actual()
            .view(&name)
            .gateway
            .containers
            .iter()
            .any(|c| c.name == container);
    if recent.is_empty() && !known {
        return not_found(format!("no container {container} is reported by an agent"));
    }
    let (tx, rx) = mpsc::channel::<Event>(256);
    let follow = q.follow.unwrap_or(false);
    tokio::spawn(async move {
        let mut last = seen;
        for (seq, line) in recent {
            last = seq;
            if tx.send(Event::default().id(seq.to_string()).data(line)).await.is_err() {
                return;
            }
        }
        if !follow {
            return;
        }
        loop {
            match live.recv().await {
                Ok(LiveLog::Container { name, seq, line }) if name == container && seq > last => {
                    last = seq;
                    if tx.send(Event::default().id(seq.to_string()).data(line)).await.is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    let note = format!("[sdp: this reader fell behind and missed {n} lines]");
                    if tx.send(Event::default().data(note)).await.is_err() {
                        return;
                    }
                }
                Err(broadcast::error::RecvError::Closed) => return,
            }
        }
    });
    sse_from(rx)
}

/// SSE: one `changed` event whenever a sandbox's status changes (at most one per 300 ms), so pages update
/// without reloading.
async fn changes(State(api): State<Api>) -> Response {
    let mut watch = api.controller.changes.subscribe();
    let (tx, rx) = mpsc::channel::<Event>(8);
    tokio::spawn(async move {
        while watch.changed().await.is_ok() {
            let n = *watch.borrow_and_update();
            if tx
                .send(Event::default().event("changed").data(n.to_string()))
                .await
                .is_err()
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    });
    sse_from(rx)
}

async fn nodes(State(api): State<Api>) -> Json<Vec<NodeDoc>> {
    Json(node_list(&api))
}

/// The connected agents with what they report.
pub fn node_list(api: &Api) -> Vec<NodeDoc> {
    let actual = api.controller.hub.actual();
    api.controller
        .hub
        .nodes()
        .into_iter()
        .map(|n| {
            let state = actual.of(n.role);
            NodeDoc {
                containers: state.containers.len(),
                heads: state.heads.clone(),
                node: n,
            }
        })
        .collect()
}

async fn actual(State(api): State<Api>) -> Response {
    // Both reports: megabytes of JSON for a busy node, sent as they are written rather than held whole.
    streamed_json(actual_doc(&api))
}

/// `doc` as a JSON answer written piece by piece while the client reads it: what is held meanwhile is a few pieces
/// of `PIECE` bytes, not the whole text (6 MB for `/api/v1/actual` with 11,000 containers reported, which with its
/// buffer's growth added 9 MB to the reconciler's RSS for the moment it was sent). It is written on the blocking
/// pool, `WRITING` answers at once (the others wait their turn without a thread); a client that goes away, or
/// takes no piece for `PIECE_WITHIN`, ends the writing, so that slow clients cannot hold the pool the agents'
/// reports are read on.
fn streamed_json<T: serde::Serialize + Send + 'static>(doc: T) -> Response {
    const PIECE: usize = 64 << 10;
    const PIECE_WITHIN: Duration = Duration::from_secs(30);
    static WRITING: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(2);
    struct Pieces {
        out: mpsc::Sender<Result<axum::body::Bytes, std::io::Error>>,
        runtime: tokio::runtime::Handle,
        piece: Vec<u8>,
    }
    impl Pieces {
        fn send(&mut self) -> std::io::Result<()> {
            let piece = std::mem::replace(&mut self.piece, Vec::with_capacity(PIECE));
            let sent = self
                .runtime
                .block_on(tokio::time::timeout(PIECE_WITHIN, self.out.send(Ok(piece.into()))));
            match sent {
                Ok(Ok(())) => Ok(()),
                Ok(Err(_)) => Err(std::io::Error::other("the client went away")),
                Err(_) => Err(std::io::Error::other(format!(
                    "the client took nothing for {} s",
                    PIECE_WITHIN.as_secs()
                ))),
            }
        }
    }
    impl std::io::Write for Pieces {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.piece.extend_from_slice(buf);
            if self.piece.len() >= PIECE {
                self.send()?;
            }
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            if self.piece.is_empty() { Ok(()) } else { self.send() }
        }
    }
    let (out, mut pieces) = mpsc::channel(2);
    let runtime = tokio::runtime::Handle::current();
    tokio::spawn(async move {
        let Ok(_turn) = WRITING.acquire().await else { return };
        let written = tokio::task::spawn_blocking(move || {
            let mut writer = Pieces {
                out: out.clone(),
                runtime,
                piece: Vec::with_capacity(PIECE),
            };
            let written = serde_json::to_writer(&mut writer, &doc).map_err(std::io::Error::from);
            if let Err(e) = written.and_then(|()| std::io::Write::flush(&mut writer)) {
                // The answer is cut short as an error, not as a shorter document (the client may be gone).
                let _ = out.try_send(Err(e));
            }
        });
        let _ = written.await;
    });
    let body = futures_util::stream::poll_fn(move |cx| pieces.poll_recv(cx));
    (
        [(header::CONTENT_TYPE, "application/json")],
        axum::body::Body::from_stream(body),
    )
        .into_response()
}

/// What the planner reads besides the config repo, for `sdp plan`: the agents' reports, the allocations, the
/// settings and clock that compile reads, and the sandboxes it compiles now.
pub fn actual_doc(api: &Api) -> ActualDoc<docs::Ports> {
    let c = &api.controller;
    let allocations = c.allocations();
    let (actual, reported_ms) = c.hub.actual_and_reported();
    let clock = c.clock();
    ActualDoc {
        config_commit: c.world().snapshot.commit.clone(),
        sandboxes: c.world().sandboxes().iter().cloned().collect(),
        connected: [Role::Micro, Role::Gateway]
            .into_iter()
            .filter(|r| c.hub.address(*r).is_some())
            .collect(),
        reported_ms,
        micro: actual.micro.clone(),
        gateway: actual.gateway.clone(),
        leaving_ports: docs::leaving(&allocations),
        ports: docs::Ports(allocations),
        settings: (&c.compile_settings()).into(),
        now: clock.now,
        last_activity: clock.last_activity,
        branches: c.branches(),
        skipped: c
            .world()
            .generated
            .skipped
            .iter()
            .map(|s| sdp_dashboard::docs::SkippedDoc {
                set: s.set.clone(),
                branch: s.branch.clone(),
                reason: s.reason.clone(),
            })
            .collect(),
    }
}

/// A repository's branches, listed now by the agent that serves it: so engineers pick a branch that exists.
async fn branches(State(api): State<Api>, Path(repo): Path<String>) -> Response {
    match api.controller.hub.branches(&repo, Duration::from_secs(30)).await {
        Ok(branches) => Json(BranchesDoc { repo, branches }).into_response(),
        Err(e) => error(StatusCode::BAD_GATEWAY, e.to_string()),
    }
}

/// A push webhook (Bitbucket Server's `repo:refs_changed`, Bitbucket Cloud's `repo:push`, or any POST): the
/// config repo is fetched now, and when the body names a repository, the agents that serve it fetch it now too.
/// Anyone may call it, so it only makes fetches happen sooner: the body is read up to 64 KiB, only a repository
/// name is taken from it, repeated calls merge into the fetch under way, and agents are asked to fetch one
/// repository at most every `FETCH_EVERY`.
async fn git_hook(State(api): State<Api>, body: axum::body::Bytes) -> Response {
    api.hook.notify_one();
    let repo = hook_repository(&body);
    let agents_asked = repo.as_deref().is_some_and(|r| api.controller.hub.fetch(r));
    let answer = HookDoc {
        fetch: "started".into(),
        repository: repo,
        agents_asked,
    };
    (StatusCode::ACCEPTED, Json(answer)).into_response()
}

/// The repository a push webhook's body names: Bitbucket Server's `repository.slug`, else `repository.name`
/// (Bitbucket Cloud, Gitea, GitHub). Only a plain name is taken: letters, digits, `.`, `_` and `-`.
pub fn hook_repository(body: &[u8]) -> Option<String> {
    let value: Value = serde_json::from_slice(body).ok()?;
    let repository = value.get("repository")?;
    let name = repository.get("slug").or_else(|| repository.get("name"))?.as_str()?;
    let plain = !name.is_empty()
        && name.len() <= 100
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-'));
    plain.then(|| name.to_string())
}

async fn metrics(State(api): State<Api>) -> Response {
    let c = &api.controller;
    let mut out = String::new();
    let passes = c.metrics.passes.load(Ordering::Relaxed);
    let micros = c.metrics.pass_micros.load(Ordering::Relaxed);
    out.push_str("# HELP sdp_passes_total Reconcile passes run.\n# TYPE sdp_passes_total counter\n");
    out.push_str(&format!("sdp_passes_total {passes}\n"));
    out.push_str(
        "# HELP sdp_pass_seconds_total Time spent in reconcile passes.\n# TYPE sdp_pass_seconds_total counter\n",
    );
    out.push_str(&format!("sdp_pass_seconds_total {:.6}\n", micros as f64 / 1e6));
    out.push_str("# HELP sdp_actions_total Actions dispatched to agents, by kind and outcome.\n");
    out.push_str("# TYPE sdp_actions_total counter\n");
    for ((kind, outcome), n) in c.metrics.actions.lock().unwrap_or_else(|e| e.into_inner()).iter() {
        out.push_str(&format!(
            "sdp_actions_total{{kind=\"{kind}\",outcome=\"{outcome}\"}} {n}\n"
        ));
    }
    let out_of_sync = c.count_statuses(|s| matches!(s.sync, Sync::OutOfSync | Sync::Failed | Sync::Progressing));
    out.push_str("# HELP sdp_sandboxes_out_of_sync Sandboxes whose VMs differ from git.\n");
    out.push_str(&format!(
        "# TYPE sdp_sandboxes_out_of_sync gauge\nsdp_sandboxes_out_of_sync {out_of_sync}\n"
    ));
    let world = c.world();
    out.push_str("# HELP sdp_sandboxes Sandboxes in the config repo.\n");
    out.push_str(&format!(
        "# TYPE sdp_sandboxes gauge\nsdp_sandboxes {}\n",
        world.desired.sandboxes.len() + world.desired.held.len()
    ));
    out.push_str("# HELP sdp_agent_frames_unreadable_total Frames from agents that could not be read (a report among them is lost).\n");
    out.push_str(&format!(
        "# TYPE sdp_agent_frames_unreadable_total counter\nsdp_agent_frames_unreadable_total {}\n",
        c.hub.unreadable_frames()
    ));
    out.push_str("# HELP sdp_agents_connected Agents connected now.\n");
    out.push_str(&format!(
        "# TYPE sdp_agents_connected gauge\nsdp_agents_connected {}\n",
        c.hub.nodes().len()
    ));
    let managed = |role: Role| {
        c.hub
            .actual()
            .of(role)
            .containers
            .iter()
            .filter(|ct| ct.labels.contains_key(labels::MANAGED))
            .count()
    };
    out.push_str("# HELP sdp_containers Managed containers reported, by role.\n# TYPE sdp_containers gauge\n");
    for role in [Role::Micro, Role::Gateway] {
        out.push_str(&format!("sdp_containers{{role=\"{role}\"}} {}\n", managed(role)));
    }
    if api.auth.required() {
        out.push_str("# HELP sdp_logins_total Dashboard and CLI login attempts, by outcome.\n");
        out.push_str("# TYPE sdp_logins_total counter\n");
        for (name, n) in crate::auth::OUTCOMES.iter().zip(&api.auth.outcomes) {
            out.push_str(&format!(
                "sdp_logins_total{{outcome=\"{name}\"}} {}\n",
                n.load(Ordering::Relaxed)
            ));
        }
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response()
}

/// `ok`, or 503 when the config repo cannot be followed (a clone that diverged from its upstream, a fetch that
/// fails), so changes in Bitbucket are not seen. Anyone may ask, so the details (paths, hosts) are on the
/// dashboard and in the log, not here.
async fn healthz(State(api): State<Api>) -> Response {
    let failing = api
        .controller
        .source_error
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .is_some();
    if failing {
        let text = "config repo: cannot be followed; the dashboard and the reconciler's log say why\n";
        (StatusCode::SERVICE_UNAVAILABLE, text).into_response()
    } else {
        "ok\n".into_response()
    }
}

/// The dashboard reads what the API answers.
impl sdp_dashboard::View for Api {
    fn source_error(&self) -> Option<String> {
        self.controller
            .source_error
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn sandboxes(&self) -> Vec<SandboxSummary> {
        sandbox_list(self)
    }

    fn sandbox(&self, name: &str) -> Option<SandboxDoc> {
        sandbox_doc(self, name)
    }

    fn deployments(&self, filter: &sdp_dashboard::Filter) -> Vec<DeploymentDoc> {
        let q = DeploymentQuery {
            sandbox: filter.sandbox.clone().filter(|s| !s.is_empty()),
            service: filter.service.clone().filter(|s| !s.is_empty()),
            author: filter.author.clone().filter(|s| !s.is_empty()),
            state: filter
                .state
                .as_deref()
                .and_then(|s| serde_json::from_value(Value::String(s.into())).ok()),
            limit: Some(200),
        };
        deployment_list(self, &q).unwrap_or_default()
    }

    fn deployment(&self, id: u64) -> Option<DeploymentDoc> {
        self.controller.store.deployment(id).ok().flatten().map(Into::into)
    }

    fn nodes(&self) -> Vec<NodeDoc> {
        node_list(self)
    }
}

#[cfg(test)]
mod tests {
    use super::hook_repository;

    #[test]
    fn a_push_webhook_names_its_repository_and_nothing_else_is_taken() {
        let server = br#"{"eventKey":"repo:refs_changed","repository":{"slug":"account","name":"Account Service",
            "project":{"key":"CC"}},"changes":[{"ref":{"id":"refs/heads/feature/x"},"toHash":"abc"}]}"#;
        assert_eq!(hook_repository(server).as_deref(), Some("account"));
        let cloud = br#"{"repository":{"name":"card-limit","full_name":"cc/card-limit"},"push":{"changes":[]}}"#;
        assert_eq!(hook_repository(cloud).as_deref(), Some("card-limit"));
        for body in [
            &b""[..],
            b"not json",
            br#"{"repository":{"slug":"../../etc"}}"#,
            br#"{"repository":{"slug":"a b"}}"#,
            br#"{"repository":{"slug":".git"}}"#,
            br#"{"repository":{"slug":7}}"#,
            br#"{"repo":"account"}"#,
        ] {
            assert_eq!(hook_repository(body), None, "{}", String::from_utf8_lossy(body));
        }
    }
}
