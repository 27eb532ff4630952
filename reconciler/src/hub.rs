//! The agent hub: agents connect to `/ws/agent` with a bearer token, say Hello, and from then on report their
//! actual state and answer requests (`Hub::ask`, any `sdp_protocol::Request`: actions, branch listings). The hub
//! never waits forever on an agent: every request has a deadline, a silent agent is dropped after `SILENCE`, and
//! when an agent drops, its requests in flight fail at once with "agent X disconnected" (the controller retries
//! them by backoff when it is back).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::ws::{Message, WebSocket};
use futures_util::{SinkExt, StreamExt};
use sdp_protocol::{
    Action, ActionRequest, ActualState, AgentFrame, Ask, BranchHead, Hello, ListBranches, LogLine, PROTOCOL_VERSION,
    Progress, ReconcilerFrame, Request, Role,
};
use tokio::sync::{mpsc, oneshot};

use crate::plan::Actual;

pub use sdp_protocol::timing::{PING_EVERY, SILENCE, now_ms};
/// How long an agent has to say Hello after the upgrade.
const HELLO_WITHIN: Duration = Duration::from_secs(10);

/// What the hub tells the controller.
#[derive(Debug)]
pub enum HubEvent {
    /// An agent's report changed what is on its VM.
    Reported(Role),
    /// A connection's first report: what waited for it can be planned now.
    FirstReport(Role),
    Connected(Role),
    Disconnected(Role),
    Progress(Progress),
    Log(LogLine),
}

/// A connected agent: the API's type, as the API shows it.
pub use sdp_dashboard::docs::Agent as NodeInfo;

struct Agent {
    info: NodeInfo,
    conn: u64,
    tx: mpsc::UnboundedSender<Message>,
    /// Whether this connection has sent its report yet: until then, what the hub holds of its role may be stale
    /// or empty (a reconciler that just started), and nothing of that role is planned against it.
    reported: bool,
    /// When its last report came (unix milliseconds), equal to the one before or not.
    reported_at: u64,
    /// Told when a newer connection of the role replaces this one: its reading stops at once.
    replaced: Arc<tokio::sync::Notify>,
}

/// Whether the agent of `role` is connected and has reported on this connection.
fn readiness(state: &State, role: Role) -> Readiness {
    match state.agents.get(&role) {
        None => Readiness::NotConnected,
        Some(a) if !a.reported => Readiness::NoReportYet,
        Some(_) => Readiness::Ready,
    }
}

/// Whether a role's agent can be acted on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Readiness {
    NotConnected,
    /// Connected, its first report not in yet (an agent busy with an action sends it when the action ends).
    NoReportYet,
    Ready,
}

/// Why a request to an agent got no good answer: the caller decides by the kind (wait for the agent, or back off).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AskError {
    /// No agent that could answer is connected (the message says which).
    NoAgent(String),
    /// The agent dropped before it answered.
    Disconnected { node: String },
    /// No answer within the deadline.
    TimedOut {
        node: String,
        /// The request's kind (`Request::KIND`).
        kind: &'static str,
        deadline: Duration,
    },
    /// The agent answered with an error, or with an answer that could not be read.
    Failed(String),
}

impl std::fmt::Display for AskError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AskError::NoAgent(message) => f.write_str(message),
            AskError::Disconnected { node } => write!(f, "agent {node} disconnected"),
            AskError::TimedOut { node, kind, deadline } => {
                write!(f, "agent {node} did not answer {kind} within {} s", deadline.as_secs())
            }
            AskError::Failed(error) => f.write_str(error),
        }
    }
}

impl std::error::Error for AskError {}

/// An answer the hub waits for, on one connection: its body as it came, read as the request's `Answer` by the
/// `ask` that waits.
struct Pending {
    conn: u64,
    done: oneshot::Sender<Result<serde_json::Value, String>>,
    /// The deployment a request runs (`Request::deployment`): only its agent, and only while it runs, may write
    /// into its log and stages.
    deployment: Option<String>,
}

/// Which agent a request goes to.
#[derive(Clone, Copy, Debug)]
pub enum Pick<'a> {
    /// The agent of a role.
    Role(Role),
    /// The agent that serves a repository (by the names of its Hello's `repos`).
    Serving(&'a str),
}

impl Pick<'_> {
    fn agent<'s>(&self, agents: &'s BTreeMap<Role, Agent>) -> Result<&'s Agent, AskError> {
        match *self {
            Pick::Role(role) => agents
                .get(&role)
                .ok_or_else(|| AskError::NoAgent(format!("no {role} agent is connected"))),
            Pick::Serving(repo) => agents
                .values()
                .find(|a| a.info.repos.iter().any(|r| r == repo))
                .ok_or_else(|| AskError::NoAgent(format!("no connected agent serves a repository named {repo}"))),
        }
    }
}

/// At most this many frames are read at once, each on the blocking pool, so that one holds up no other task (a
/// report takes 20 ms as text, 40 ms deflated, for 10,000 containers): each may hold what `MAX_FRAME_BYTES` of text
/// decode to.
static READING: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(2);

/// A deflated frame may inflate to this many times what has come of it (a report of 10,000 containers inflates 4
/// to 8 times, 1,000 gateway route maps 16 times; 8 MB of spaces 1,000 times), and to `MAX_FRAME_BYTES` at most.
/// It holds for every part of the frame as it comes, its first piece too: level-1 deflate of JSON never nears it.
const INFLATES_AT_MOST: usize = 256;

/// Each piece of a deflated frame comes within this time of the one before, or the frame is dropped (with the
/// reading turn it holds). Every piece but the last is whole (`PIECE_BYTES`), so a frame is at most 512 pieces.
const PIECE_WITHIN: Duration = Duration::from_secs(30);

/// An error of reading a frame says what went wrong in at most this many characters: serde quotes what it could
/// not read, which may be megabytes.
const ERROR_CHARS: usize = 300;

fn said(e: serde_json::Error) -> String {
    cut(&e.to_string())
}

/// `text` in at most `ERROR_CHARS` characters, passwords in URLs taken out (it is logged, and shown with its node).
/// Scrubbed before it is cut, and a URL the cut goes through goes whole: a cut must not leave a password without
/// the `@` that marks it.
fn cut(text: &str) -> String {
    let head = text
        .char_indices()
        .nth(4 * ERROR_CHARS)
        .map_or(text, |(i, _)| &text[..i]);
    let mut said = sdp_protocol::scrub(head);
    if let Some((cut, _)) = said.char_indices().nth(ERROR_CHARS) {
        said.truncate(cut);
        let last_word = said.rfind(char::is_whitespace).map_or(0, |i| i + 1);
        if said[last_word..].contains("://") {
            said.truncate(last_word);
        }
        said.push_str("...");
    }
    said
}

/// Reads an agent's text message, sharing what it can with `previous`, the report of its role: a long one on the
/// blocking pool, in its turn (`READING`). The connection's next message waits for it, so frames keep their order.
async fn read_text(text: axum::extract::ws::Utf8Bytes, previous: Arc<ActualState>) -> Result<AgentFrame, String> {
    const LONG_TEXT: usize = 64 << 10;
    let long = text.len() > LONG_TEXT;
    let read = move || AgentFrame::decode_after(&text, &previous).map_err(said);
    if !long {
        return read();
    }
    let _turn = READING.acquire().await.map_err(|e| e.to_string())?;
    read_on_the_pool(tokio::task::spawn_blocking(read)).await
}

/// The frame a reader on the blocking pool read, or why it has none.
async fn read_on_the_pool(reader: tokio::task::JoinHandle<Result<AgentFrame, String>>) -> Result<AgentFrame, String> {
    reader
        .await
        .unwrap_or_else(|e| Err(cut(&format!("reading it failed: {e}"))))
}

/// A deflated frame being read as its pieces come (`sdp_protocol::pieces`): on the blocking pool, in its turn
/// (`READING`), from a channel of a few pieces, so that neither the whole message nor its text is ever held.
struct Inflating {
    pieces: mpsc::Sender<axum::body::Bytes>,
    read: tokio::task::JoinHandle<Result<AgentFrame, String>>,
    /// The bytes of it that came.
    came: Arc<std::sync::atomic::AtomicUsize>,
    last_piece: std::time::Instant,
}

impl Inflating {
    async fn start(previous: Arc<ActualState>) -> Inflating {
        let (pieces, rx) = mpsc::channel(4);
        let came = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let turn = READING.acquire().await;
        let read = {
            let came = came.clone();
            tokio::task::spawn_blocking(move || {
                let _turn = turn;
                let max_text = || {
                    let came = came.load(Ordering::Relaxed);
                    // Each piece is counted before the reader can have it.
                    MAX_FRAME_BYTES.min(came.saturating_mul(INFLATES_AT_MOST))
                };
                let pieces = Pieces {
                    rx,
                    current: axum::body::Bytes::new(),
                };
                AgentFrame::inflate_from(pieces, &previous, max_text).map_err(said)
            })
        };
        Inflating {
            pieces,
            read,
            came,
            last_piece: std::time::Instant::now(),
        }
    }

    /// Hands the reader one piece (a binary message): the frame still being read, or (as an error) the frame read
    /// when that was the last piece or the reading ended.
    async fn push(
        mut self,
        message: axum::body::Bytes,
    ) -> Result<Inflating, impl Future<Output = Result<AgentFrame, String>>> {
        let Some((&more, _)) = message.split_first() else {
            return Err(self.end(Some("an empty binary message".into())));
        };
        let whole = 1 + sdp_protocol::PIECE_BYTES;
        if message.len() > whole || (more == sdp_protocol::MORE && message.len() != whole) {
            return Err(self.end(Some(format!(
                "a piece of a deflated frame of {} bytes: each but the last is {whole}, the last at most that",
                message.len()
            ))));
        }
        self.last_piece = std::time::Instant::now();
        let came = self.came.fetch_add(message.len() - 1, Ordering::Relaxed) + message.len() - 1;
        if came > MAX_FRAME_BYTES {
            return Err(self.end(Some(format!("a deflated frame longer than {MAX_FRAME_BYTES} bytes"))));
        }
        // The reader takes no more once it failed: its answer says why.
        if self.pieces.send(message.slice(1..)).await.is_err() || more != sdp_protocol::MORE {
            return Err(self.end(None));
        }
        Ok(self)
    }

    /// The frame read, once the reader has what came (the pieces end here); `failed` says why it ends early.
    fn end(self, failed: Option<String>) -> impl Future<Output = Result<AgentFrame, String>> {
        drop(self.pieces);
        let read = self.read;
        async move {
            let read = read_on_the_pool(read).await;
            match failed {
                Some(why) => Err(why),
                None => read,
            }
        }
    }

    fn overdue(&self) -> bool {
        self.next_piece_within().is_zero()
    }

    /// How long the next piece may take yet.
    fn next_piece_within(&self) -> Duration {
        PIECE_WITHIN.saturating_sub(self.last_piece.elapsed())
    }
}

/// The pieces of a deflated frame as one stream, as they come; it ends with the pieces.
struct Pieces {
    rx: mpsc::Receiver<axum::body::Bytes>,
    current: axum::body::Bytes,
}

impl std::io::Read for Pieces {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = {
            let from = std::io::BufRead::fill_buf(self)?;
            let n = from.len().min(buf.len());
            buf[..n].copy_from_slice(&from[..n]);
            n
        };
        std::io::BufRead::consume(self, n);
        Ok(n)
    }
}

impl std::io::BufRead for Pieces {
    fn fill_buf(&mut self) -> std::io::Result<&[u8]> {
        while self.current.is_empty() {
            match self.rx.blocking_recv() {
                Some(piece) => self.current = piece,
                None => break,
            }
        }
        Ok(&self.current)
    }

    fn consume(&mut self, n: usize) {
        self.current = self.current.slice(n..);
    }
}

/// The largest message an agent may send (a report of a busy node is a few MB of text), and the longest text a
/// deflated one may inflate to.
pub const MAX_FRAME_BYTES: usize = 32 << 20;

#[derive(Default)]
struct State {
    agents: BTreeMap<Role, Agent>,
    actual: Arc<Actual>,
    pending: HashMap<u64, Pending>,
}

/// The hub. Shared by the HTTP handlers and the controller.
/// The shortest time between two webhook fetches of one repository.
pub const FETCH_EVERY: Duration = Duration::from_secs(3);

pub struct Hub {
    /// When agents were last asked to fetch each repository (see `fetch`).
    fetch_asked: Mutex<HashMap<String, std::time::Instant>>,
    /// Sent in every Welcome (see `Store::installation`); empty until `set_installation`.
    installation: std::sync::RwLock<String>,
    token: String,
    state: Mutex<State>,
    next_id: AtomicU64,
    events: mpsc::Sender<HubEvent>,
    /// Frames from agents that could not be read (each also logged, with its agent and why).
    unreadable: AtomicU64,
}

impl Hub {
    pub fn new(token: String, events: mpsc::Sender<HubEvent>) -> Hub {
        Hub {
            fetch_asked: Mutex::default(),
            installation: std::sync::RwLock::default(),
            token,
            state: Mutex::new(State::default()),
            next_id: AtomicU64::new(1),
            events,
            unreadable: AtomicU64::new(0),
        }
    }

    /// How many frames from agents could not be read since the start: a report among them is lost, and the role's
    /// last report stands.
    pub fn unreadable_frames(&self) -> u64 {
        self.unreadable.load(Ordering::Relaxed)
    }

    pub fn set_installation(&self, id: String) {
        *self.installation.write().unwrap_or_else(|e| e.into_inner()) = id;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Checks an `Authorization` header value. Compared in constant time, so the answer time says nothing.
    pub fn authorize(&self, header: Option<&str>) -> Result<(), &'static str> {
        let Some(value) = header else {
            return Err("missing bearer token: agents send `Authorization: Bearer <token>`");
        };
        let Some(given) = value.strip_prefix("Bearer ") else {
            return Err("the Authorization header is not a bearer token");
        };
        let (a, b) = (given.trim().as_bytes(), self.token.as_bytes());
        let mut diff = u8::from(a.len() != b.len());
        for (x, y) in a.iter().zip(b) {
            diff |= x ^ y;
        }
        if diff == 0 {
            Ok(())
        } else {
            Err("bad token: the agent's token file does not match the reconciler's")
        }
    }

    /// What every agent reported last.
    pub fn actual(&self) -> Arc<Actual> {
        self.lock().actual.clone()
    }

    pub fn nodes(&self) -> Vec<NodeInfo> {
        self.lock().agents.values().map(|a| a.info.clone()).collect()
    }

    /// The address of the connected agent of `role`.
    pub fn address(&self, role: Role) -> Option<String> {
        self.lock().agents.get(&role).map(|a| a.info.address.clone())
    }

    /// Both reports, with when each agent that reported on its connection did: read together, so that a report
    /// is never paired with the time of another.
    pub fn actual_and_reported(&self) -> (Arc<Actual>, BTreeMap<Role, u64>) {
        let state = self.lock();
        let reported = state
            .agents
            .iter()
            .filter(|(_, a)| a.reported)
            .map(|(role, a)| (*role, a.reported_at))
            .collect();
        (state.actual.clone(), reported)
    }

    /// What every agent reported last, and whether each role was ready when it was read: one read, so that a role
    /// found ready has its first report of the connection in what is returned (a pass that planned from a report
    /// read before the first one was stored, then found the role ready, redeployed what ran).
    pub fn actual_and_readiness(&self) -> (Arc<Actual>, impl Fn(Role) -> Readiness + use<>) {
        let state = self.lock();
        let (micro, gateway) = (readiness(&state, Role::Micro), readiness(&state, Role::Gateway));
        let roles = move |role| match role {
            Role::Micro => micro,
            Role::Gateway => gateway,
        };
        (state.actual.clone(), roles)
    }

    /// What the agent of `role` reported last, with when, if it has reported since it connected.
    pub fn last_report(&self, role: Role) -> Option<crate::desired::Seen> {
        let state = self.lock();
        let agent = state.agents.get(&role).filter(|a| a.reported)?;
        Some(crate::desired::Seen::of(state.actual.of(role), agent.reported_at))
    }

    /// Sends an action to the agent of `role` and waits for its result, at most `deadline`.
    pub async fn dispatch(
        &self,
        role: Role,
        action: Action,
        deployment_id: Option<String>,
        deadline: Duration,
    ) -> Result<(), AskError> {
        let request = ActionRequest { deployment_id, action };
        self.ask(Pick::Role(role), request, deadline).await
    }

    /// The branches of `repo`, listed by the agent that serves it (`git ls-remote`), at most `deadline`.
    pub async fn branches(&self, repo: &str, deadline: Duration) -> Result<Vec<BranchHead>, AskError> {
        let request = ListBranches { repo: repo.to_string() };
        self.ask(Pick::Serving(repo), request, deadline).await
    }

    /// Asks every connected agent to fetch `repo` now (each fetches it only if it serves it), at most once per
    /// repository every `FETCH_EVERY`: the webhook is open to anyone, and a flood of calls must not become a flood
    /// of fetches against Bitbucket with the service credential. Says whether the agents were asked.
    pub fn fetch(&self, repo: &str) -> bool {
        {
            let mut asked = self.fetch_asked.lock().unwrap_or_else(|e| e.into_inner());
            let now = std::time::Instant::now();
            if asked.get(repo).is_some_and(|at| now.duration_since(*at) < FETCH_EVERY) {
                return false;
            }
            if asked.len() >= 1024 {
                asked.retain(|_, at| now.duration_since(*at) < FETCH_EVERY);
            }
            asked.insert(repo.to_string(), now);
        }
        let text = sdp_protocol::encode(&ReconcilerFrame::Fetch { repo: repo.to_string() });
        let state = self.lock();
        for agent in state.agents.values() {
            let _ = agent.tx.send(Message::Text(text.clone().into()));
        }
        true
    }

    /// Sends `request` with a new request id to the agent `pick` chooses and waits for its answer, at most
    /// `deadline`; an agent that drops fails the wait at once (see `unregister`).
    pub async fn ask<R: Request>(&self, pick: Pick<'_>, request: R, deadline: Duration) -> Result<R::Answer, AskError> {
        let request_id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (done, wait) = oneshot::channel();
        let node = {
            let mut state = self.lock();
            let agent = pick.agent(&state.agents)?;
            let (node, conn) = (agent.info.node.clone(), agent.conn);
            let text = sdp_protocol::encode(&ReconcilerFrame::Ask(Ask::new(request_id, &request)));
            if agent.tx.send(Message::Text(text.into())).is_err() {
                return Err(AskError::Disconnected { node });
            }
            let deployment = request.deployment().map(str::to_string);
            state.pending.insert(request_id, Pending { conn, done, deployment });
            node
        };
        let body = match tokio::time::timeout(deadline, wait).await {
            Ok(Ok(answer)) => answer.map_err(AskError::Failed)?,
            Ok(Err(_)) => return Err(AskError::Disconnected { node }),
            Err(_) => {
                self.lock().pending.remove(&request_id);
                return Err(AskError::TimedOut {
                    node,
                    kind: R::KIND,
                    deadline,
                });
            }
        };
        sdp_protocol::read_answer::<R>(&body).map_err(|e| AskError::Failed(format!("agent {node} sent an {e}")))
    }

    /// Runs one agent connection to its end. `peer` is where it connects from (the proxy's `X-Forwarded-For` when
    /// the peer is this machine or a trusted proxy), to check the address it announces.
    pub async fn serve(self: Arc<Hub>, socket: WebSocket, peer: Option<std::net::IpAddr>) {
        let (mut sink, mut stream) = socket.split();
        let hello = match tokio::time::timeout(HELLO_WITHIN, stream.next()).await {
            Ok(Some(Ok(Message::Text(text)))) => match sdp_protocol::decode::<AgentFrame>(&text) {
                Ok(AgentFrame::Hello(h)) => h,
                Ok(_) => return refuse(&mut sink, "the first frame must be Hello".into()).await,
                Err(e) => return refuse(&mut sink, format!("unreadable Hello: {e}")).await,
            },
            Ok(Some(Ok(Message::Binary(_)))) => {
                return refuse(&mut sink, "the first frame must be a Hello, as a text message".into()).await;
            }
            _ => {
                tracing::warn!(
                    "an agent connected but sent no Hello within {} s",
                    HELLO_WITHIN.as_secs()
                );
                return;
            }
        };
        if let Err(e) = sdp_protocol::check_version(hello.protocol_version) {
            tracing::warn!(node = %hello.node, "refused: {e}");
            return refuse(&mut sink, e.to_string()).await;
        }
        if let Err(why) = check_hello(&hello, peer) {
            tracing::warn!(node = %hello.node, "refused: {why}");
            return refuse(&mut sink, why).await;
        }
        let welcome = ReconcilerFrame::Welcome {
            protocol_version: PROTOCOL_VERSION,
            installation: self.installation.read().unwrap_or_else(|e| e.into_inner()).clone(),
            reads_deflated: true,
        };
        if sink
            .send(Message::Text(sdp_protocol::encode(&welcome).into()))
            .await
            .is_err()
        {
            return;
        }

        let (tx, mut rx) = mpsc::unbounded_channel::<Message>();
        let conn = self.next_id.fetch_add(1, Ordering::Relaxed);
        let role = hello.role;
        let node = hello.node.clone();
        let replaced = Arc::new(tokio::sync::Notify::new());
        self.register(&hello, conn, tx.clone(), replaced.clone());
        tracing::info!(node = %node, role = %role, version = %hello.agent_version, "agent connected");
        let _ = self.events.send(HubEvent::Connected(role)).await;

        // Writer: actions and pings, until the reader ends.
        let mut writer = tokio::spawn(async move {
            let mut ping = tokio::time::interval(PING_EVERY);
            ping.tick().await;
            loop {
                tokio::select! {
                    msg = rx.recv() => match msg {
                        Some(m) => if sink.send(m).await.is_err() { break },
                        None => break,
                    },
                    _ = ping.tick() => if sink.send(Message::Ping(Vec::new().into())).await.is_err() { break },
                }
            }
            let _ = sink.close().await;
        });

        // A deflated frame being read, when its last piece has not come yet; and whether the pieces that come are
        // the rest of one that ended early (unreadable), to be passed over up to its last.
        let mut inflating: Option<Inflating> = None;
        let mut skipping = false;
        loop {
            if inflating.as_ref().is_some_and(Inflating::overdue) {
                tracing::warn!(node = %node, "no piece of a deflated frame within {} s: it is dropped", PIECE_WITHIN.as_secs());
                inflating = None;
                skipping = true;
            }
            let wait = inflating.as_ref().map_or(SILENCE, Inflating::next_piece_within);
            let next = tokio::select! {
                _ = replaced.notified() => break,
                next = tokio::time::timeout(wait, stream.next()) => next,
            };
            let next = match next {
                Ok(Some(Ok(m))) => m,
                Ok(Some(Err(e))) => {
                    tracing::warn!(node = %node, "agent connection failed: {e}");
                    break;
                }
                Ok(None) => break,
                Err(_) if inflating.is_some() => continue,
                Err(_) => {
                    tracing::warn!(node = %node, "agent silent for {} s: dropped", SILENCE.as_secs());
                    break;
                }
            };
            if !self.seen(role, conn) {
                // Replaced by a newer connection of the role: what this one still sends is not read (a report
                // decoded now could overwrite the newer connection's).
                break;
            }
            // A report shares the containers it has in common with the role's last one. The message (megabytes of
            // text for a report) goes before the frame is handled, not after.
            let read = match next {
                Message::Binary(piece) => {
                    let more = piece.first() == Some(&sdp_protocol::MORE);
                    if std::mem::replace(&mut skipping, more) || piece.is_empty() {
                        continue;
                    }
                    let frame = match inflating.take() {
                        Some(going) => going,
                        None => {
                            let previous = self.lock().actual.shared_of(role).clone();
                            Inflating::start(previous).await
                        }
                    };
                    match frame.push(piece).await {
                        Ok(going) => {
                            inflating = Some(going);
                            skipping = false;
                            continue;
                        }
                        // Ended: at its last piece, or early (then `skipping` passes over the rest of it).
                        Err(done) => done.await,
                    }
                }
                Message::Text(text) => {
                    skipping = false;
                    if inflating.take().is_some() {
                        tracing::warn!(node = %node, "a text frame came before the last piece of a deflated one: that one is dropped");
                    }
                    let previous = self.lock().actual.shared_of(role).clone();
                    read_text(text, previous).await
                }
                Message::Close(_) => break,
                _ => continue,
            };
            match read {
                Ok(frame) => self.handle(role, conn, frame).await,
                Err(e) => {
                    self.unreadable.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(node = %node, "unreadable frame from agent: {e}");
                    // Shown with the node (`/nodes`) until a report is read again.
                    if let Some(a) = self.lock().agents.get_mut(&role).filter(|a| a.conn == conn) {
                        a.info.unreadable = Some(sdp_dashboard::docs::Unreadable {
                            at_ms: now_ms(),
                            reason: e,
                        });
                    }
                }
            }
        }
        drop(inflating);
        self.unregister(role, conn);
        // What is queued for the agent (the Refused of a replaced connection) goes before the connection closes:
        // with every sender gone, the writer ends once it has sent it, or at once on a dead connection.
        drop(tx);
        if tokio::time::timeout(Duration::from_secs(1), &mut writer).await.is_err() {
            writer.abort();
        }
        tracing::info!(node = %node, role = %role, "agent disconnected");
        let _ = self.events.send(HubEvent::Disconnected(role)).await;
    }

    fn register(
        &self,
        hello: &Hello,
        conn: u64,
        tx: mpsc::UnboundedSender<Message>,
        replaced: Arc<tokio::sync::Notify>,
    ) {
        let now = now_ms();
        let mut state = self.lock();
        if let Some(old) = state.agents.get(&hello.role) {
            tracing::warn!(
                old = %old.info.node, new = %hello.node, role = %hello.role,
                "a second {} agent connected: it replaces the first (two agents with one role fight; stop one)",
                hello.role
            );
            let reason = format!(
                "replaced by a newer connection of a {} agent (node {})",
                hello.role, hello.node
            );
            let _ = old.tx.send(Message::Text(
                sdp_protocol::encode(&ReconcilerFrame::Refused { reason }).into(),
            ));
            let _ = old.tx.send(Message::Close(None));
            old.replaced.notify_one();
        }
        state.agents.insert(
            hello.role,
            Agent {
                info: NodeInfo {
                    node: hello.node.clone(),
                    role: hello.role,
                    address: hello.address.clone(),
                    agent_version: hello.agent_version.clone(),
                    repos: hello.repos.clone(),
                    images: hello.images.clone(),
                    connected_ms: now,
                    last_seen_ms: now,
                    unreadable: None,
                },
                conn,
                tx,
                reported: false,
                reported_at: 0,
                replaced,
            },
        );
    }

    /// Notes that the connection `conn` of `role` was heard from; false when it is no longer the role's (a newer
    /// connection replaced it).
    fn seen(&self, role: Role, conn: u64) -> bool {
        match self.lock().agents.get_mut(&role).filter(|a| a.conn == conn) {
            Some(a) => {
                a.info.last_seen_ms = now_ms();
                true
            }
            None => false,
        }
    }

    fn unregister(&self, role: Role, conn: u64) {
        let mut state = self.lock();
        if state.agents.get(&role).is_some_and(|a| a.conn == conn) {
            state.agents.remove(&role);
        }
        // Dropping a waiter's sender ends its wait at once as "disconnected".
        state.pending.retain(|_, p| p.conn != conn);
    }

    async fn handle(&self, role: Role, conn: u64, frame: AgentFrame) {
        match frame {
            AgentFrame::ActualState(report) => {
                // Stored before the connection counts as reported: whoever finds the role ready finds this report.
                // Only the role's current connection's: a replaced one's report, read meanwhile, is older.
                if self.lock().agents.get(&role).is_none_or(|a| a.conn != conn) {
                    return;
                }
                let changed = self.store_report(role, report);
                let first = {
                    let mut state = self.lock();
                    match state.agents.get_mut(&role) {
                        Some(a) if a.conn == conn => {
                            a.reported_at = now_ms();
                            a.info.unreadable = None;
                            !std::mem::replace(&mut a.reported, true)
                        }
                        _ => false,
                    }
                };
                // The first report of a connection wakes what waited for it, even when it says nothing new.
                if first {
                    let _ = self.events.send(HubEvent::FirstReport(role)).await;
                } else if changed {
                    let _ = self.events.send(HubEvent::Reported(role)).await;
                }
            }
            AgentFrame::Answer(answer) => match self.answered(answer.request_id, conn) {
                Some(done) => {
                    let _ = done.send(answer.result);
                }
                None => tracing::debug!(request = answer.request_id, "an answer no longer waited for"),
            },
            AgentFrame::Progress(p) => {
                if self.runs(conn, Some(&p.deployment_id)) {
                    let _ = self.events.send(HubEvent::Progress(p)).await;
                }
            }
            AgentFrame::LogLine(mut l) => {
                if l.deployment_id.is_some() && !self.runs(conn, l.deployment_id.as_deref()) {
                    tracing::debug!("a log line for a deployment this agent does not run: dropped");
                    return;
                }
                sdp_protocol::cut_line(&mut l.line, 0);
                let _ = self.events.send(HubEvent::Log(l)).await;
            }
            AgentFrame::Hello(_) => tracing::warn!("a second Hello on one connection is ignored"),
        }
    }

    /// Whether the action of `deployment` waits on this connection.
    fn runs(&self, conn: u64, deployment: Option<&str>) -> bool {
        let Some(deployment) = deployment else { return false };
        self.lock()
            .pending
            .values()
            .any(|p| p.conn == conn && p.deployment.as_deref() == Some(deployment))
    }

    /// The waiter of `request_id`, when it waits on this connection.
    fn answered(&self, request_id: u64, conn: u64) -> Option<oneshot::Sender<Result<serde_json::Value, String>>> {
        let mut state = self.lock();
        match state.pending.get(&request_id) {
            Some(p) if p.conn == conn => state.pending.remove(&request_id).map(|p| p.done),
            _ => None,
        }
    }

    /// Replaces one role's report; says whether anything changed. The other role's report is shared with the
    /// `Actual` before, not copied.
    fn store_report(&self, role: Role, mut report: ActualState) -> bool {
        if self.lock().actual.of(role) == &report {
            return false;
        }
        // Kept until the next report: without the room its lists grew into while being read.
        report.containers.shrink_to_fit();
        // The worktrees are the last report's list itself when unchanged: that one is left as it is.
        if let Some(worktrees) = Arc::get_mut(&mut report.worktrees) {
            worktrees.shrink_to_fit();
        }
        report.networks.shrink_to_fit();
        report.heads.shrink_to_fit();
        let mut state = self.lock();
        state.actual = Arc::new(state.actual.with_report(role, report).indexed_after(&state.actual));
        true
    }
}

/// What a Hello may say: a node name of at most 63 plain characters, and an address that is a plain host and, when
/// it is an IP address and the agent connects from another machine, the one it connects from (the routes of every
/// sandbox point at the micro agent's address: a token holder must not point them elsewhere).
pub fn check_hello(hello: &Hello, peer: Option<std::net::IpAddr>) -> Result<(), String> {
    let plain = |s: &str| {
        s.bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
    };
    if hello.node.is_empty() || hello.node.len() > 63 || !plain(&hello.node) {
        return Err("the node name must be 1 to 63 letters, digits, `-`, `_` or `.`".into());
    }
    if !plain_host(&hello.address) {
        return Err(format!("address {:?} is not an IP address or host name", hello.address));
    }
    if let (Ok(said), Some(peer)) = (hello.address.parse::<std::net::IpAddr>(), peer)
        && !peer.is_loopback()
        && said != peer
    {
        return Err(format!(
            "this agent says its address is {said} but connects from {peer}: set `address: {peer}` in its config \
             (or give a host name)"
        ));
    }
    Ok(())
}

/// Whether an agent's `Hello.address` is a plain host: an IP address or a DNS name, nothing that could change the
/// URL it goes into (`http://{address}:{port}`).
pub fn plain_host(address: &str) -> bool {
    address.parse::<std::net::IpAddr>().is_ok()
        || (!address.is_empty()
            && address.len() <= 253
            && address
                .split('.')
                .all(|l| !l.is_empty() && l.len() <= 63 && l.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-')))
}

async fn refuse(sink: &mut futures_util::stream::SplitSink<WebSocket, Message>, reason: String) {
    let frame = ReconcilerFrame::Refused { reason };
    let _ = sink.send(Message::Text(sdp_protocol::encode(&frame).into())).await;
    let _ = sink.close().await;
}

#[cfg(test)]
mod tests {
    use super::{ERROR_CHARS, cut};

    #[test]
    fn an_error_is_cut_short_and_shows_no_password() {
        let said = cut("cannot fetch https://bob:hunter2@bitbucket.example/config.git: refused");
        assert!(!said.contains("hunter2"), "{said}");
        assert!(said.contains("bitbucket.example"), "{said}");
        // A URL the cut goes through, its `@` beyond it: the URL goes whole.
        let long = format!("{} https://bob:{}@host", "x".repeat(ERROR_CHARS - 20), "s".repeat(5000));
        let said = cut(&long);
        assert!(said.chars().count() <= ERROR_CHARS + 3, "{}", said.len());
        assert!(!said.contains("bob") && !said.contains("sss"), "{said}");
    }
}
