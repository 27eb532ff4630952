//! Who may read SDP. Whoever may read the config repo may read the dashboard and the API: a login takes a
//! Bitbucket username and password, checks them with `git ls-remote` of the config repo, and forgets them; what
//! stays is a random session token in an HttpOnly, SameSite=Strict cookie (or, for the CLI, a bearer header) that
//! lives 12 hours or until logout.
//!
//! - The password reaches git through `GIT_ASKPASS`: git runs `sdp` itself, which asks this process over a unix
//!   socket in a private directory for the one attempt. It is never on a command line, in an environment, on
//!   disk or in a log; no credential helper of the service account is consulted (`credential.helper` is reset),
//!   so an attempt cannot borrow the reconciler's own access or leave anything in a store.
//! - Failed attempts are limited per username (`RateLimit`), below the count at which Bitbucket starts asking for
//!   a CAPTCHA that git cannot answer, and per client address; at most four checks run at once.
//! - `--allow-anonymous` turns all of this off, for trusted networks and local demos.
//!
//! Open without a login: `/login`, `/logout`, `/healthz`, `/metrics`, the static files, the agents' WebSocket
//! (it has its own token) and the git hook (it only makes the next fetch sooner).

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use axum::Router;
use axum::extract::{Form, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{Html, IntoResponse, Json, Redirect, Response};
use axum::routing::{get, post};
use sdp_dashboard::Viewer;
use serde::Deserialize;
use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::sync::Semaphore;

use crate::store::Store;

/// The name of the session cookie.
pub const COOKIE: &str = "sdp_session";
/// How long a session lives.
pub const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);
/// The environment variable that makes `sdp` answer git's password prompt (see `askpass_main`).
pub const ASKPASS_ENV: &str = "SDP_ASKPASS_SOCKET";
/// How long one `git ls-remote` may take.
const CHECK_TIMEOUT: Duration = Duration::from_secs(20);
/// Sessions kept at most; the oldest go first.
const MAX_SESSIONS: usize = 10_000;

/// The login settings of a server: open to all, or a login checked against a repo.
pub struct Auth {
    login: Option<Login>,
    base: String,
    /// Login attempts by outcome, for `/metrics`: succeeded, rejected, limited, unavailable.
    pub outcomes: [AtomicU64; 4],
}

/// The names of `Auth::outcomes`, in order.
pub const OUTCOMES: [&str; 4] = ["succeeded", "rejected", "limited", "unavailable"];

struct Login {
    /// The https (or http) URL of the config repo, without credentials.
    repo: String,
    /// A 0700 directory for the askpass sockets.
    run_dir: PathBuf,
    /// The program git runs as its askpass: this `sdp`.
    askpass: PathBuf,
    /// Live sessions by the SHA-256 of their token (the token itself is kept only by its holder).
    sessions: Mutex<HashMap<String, Session>>,
    /// Where sessions outlive a restart of the reconciler.
    store: Option<Store>,
    limits: Mutex<Limits>,
    checks: Semaphore,
}

struct Session {
    user: String,
    /// Unix milliseconds.
    expires_ms: u64,
}

/// Why a login failed.
#[derive(Debug, PartialEq, Eq)]
pub enum LoginError {
    /// The repo said no: wrong username or password, or no access to the repo.
    Rejected(String),
    /// The repo could not be asked (network, TLS, timeout): nothing is known about the credentials.
    Unavailable(String),
}

impl Auth {
    /// Everyone may read: for trusted networks and local demos.
    pub fn anonymous(base: &str) -> Auth {
        Auth {
            login: None,
            base: base.trim_end_matches('/').to_string(),
            outcomes: Default::default(),
        }
    }

    /// A login checked against `repo`, with askpass sockets under `data/run` and `askpass` as git's askpass
    /// program (this `sdp`; tests that run the server in-process pass the built binary). Sessions are kept in
    /// `store` when there is one, so a restart of the reconciler logs nobody out.
    pub fn login(repo: &str, data: &Path, askpass: PathBuf, base: &str, store: Option<Store>) -> Result<Auth> {
        let run_dir = data.join("run");
        std::fs::create_dir_all(&run_dir).with_context(|| format!("cannot create {}", run_dir.display()))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&run_dir, std::fs::Permissions::from_mode(0o700))
                .with_context(|| format!("cannot make {} private", run_dir.display()))?;
        }
        let sessions = match &store {
            Some(store) => store
                .sessions(now_ms())?
                .into_iter()
                .map(|(hash, user, expires_ms)| (hash, Session { user, expires_ms }))
                .collect(),
            None => HashMap::new(),
        };
        Ok(Auth {
            login: Some(Login {
                // Each user's own name goes with their password: never one written into the URL.
                repo: crate::source::without_userinfo(repo),
                run_dir,
                askpass,
                sessions: Mutex::new(sessions),
                store,
                limits: Mutex::new(Limits {
                    user: RateLimit::new(3, LIMIT_WINDOW),
                    client: RateLimit::new(10, LIMIT_WINDOW),
                }),
                checks: Semaphore::new(4),
            }),
            base: base.trim_end_matches('/').to_string(),
            outcomes: Default::default(),
        })
    }

    /// Whether a login is needed at all.
    pub fn required(&self) -> bool {
        self.login.is_some()
    }

    /// The user a request's session belongs to.
    fn user(&self, headers: &HeaderMap) -> Option<String> {
        let login = self.login.as_ref()?;
        let hash = hash(&session_token(headers)?);
        let mut sessions = login.sessions.lock().unwrap_or_else(|e| e.into_inner());
        match sessions.get(&hash) {
            Some(s) if s.expires_ms > now_ms() => Some(s.user.clone()),
            Some(_) => {
                sessions.remove(&hash);
                None
            }
            None => None,
        }
    }

    /// Checks the credentials (rate limits first) and opens a session: its token. `client` is the address the
    /// attempt came from (see `Client`).
    pub async fn log_in(&self, user: &str, password: &str, client: &str) -> Result<String, Refusal> {
        let result = self.try_log_in(user, password, client).await;
        let outcome = match &result {
            Ok(_) => Some(0),
            Err(Refusal::Rejected(_)) => Some(1),
            Err(Refusal::TooMany(_)) => Some(2),
            Err(Refusal::Unavailable(_)) => Some(3),
            Err(Refusal::Invalid(_)) => None,
        };
        if let Some(i) = outcome {
            self.outcomes[i].fetch_add(1, Ordering::Relaxed);
        }
        result
    }

    async fn try_log_in(&self, user: &str, password: &str, client: &str) -> Result<String, Refusal> {
        let Some(login) = &self.login else {
            return Err(Refusal::Invalid("this server needs no login".into()));
        };
        let user = user.trim();
        if user.is_empty() || password.is_empty() {
            return Err(Refusal::Invalid("give a username and a password".into()));
        }
        if user.contains(['\n', '\r', '\0']) || password.contains(['\n', '\r', '\0']) {
            return Err(Refusal::Invalid(
                "a username or password cannot hold a line break".into(),
            ));
        }
        let key = user.to_lowercase();
        let limits = || login.limits.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(after) = limits().retry_after(&key, client, Instant::now()) {
            return Err(Refusal::TooMany(after));
        }
        let _permit = login.checks.acquire().await.expect("the semaphore is never closed");
        // Checked again: attempts may have failed while this one waited.
        if let Some(after) = limits().retry_after(&key, client, Instant::now()) {
            return Err(Refusal::TooMany(after));
        }
        match check_credentials(&login.repo, user, password, &login.run_dir, &login.askpass).await {
            Ok(()) => {
                limits().user.clear(&key);
                let token = new_token().map_err(|e| Refusal::Unavailable(format!("{e:#}")))?;
                let (hash, now) = (hash(&token), now_ms());
                let expires_ms = now + SESSION_TTL.as_millis() as u64;
                {
                    let mut sessions = login.sessions.lock().unwrap_or_else(|e| e.into_inner());
                    sessions.retain(|_, s| s.expires_ms > now);
                    if sessions.len() >= MAX_SESSIONS
                        && let Some(oldest) = sessions
                            .iter()
                            .min_by_key(|(_, s)| s.expires_ms)
                            .map(|(h, _)| h.clone())
                    {
                        sessions.remove(&oldest);
                    }
                    let session = Session {
                        user: user.to_string(),
                        expires_ms,
                    };
                    sessions.insert(hash.clone(), session);
                }
                if let Some(store) = &login.store
                    && let Err(e) = store.put_session(&hash, user, expires_ms, now)
                {
                    tracing::warn!(
                        user,
                        "the session is not stored (it ends if the reconciler restarts): {e:#}"
                    );
                }
                tracing::info!(user, "logged in");
                Ok(token)
            }
            Err(LoginError::Rejected(why)) => {
                limits().fail(&key, client, Instant::now());
                tracing::warn!(user, client, "login refused: {why}");
                Err(Refusal::Rejected(why))
            }
            Err(LoginError::Unavailable(why)) => {
                tracing::error!(user, "cannot check a login: {why}");
                Err(Refusal::Unavailable(why))
            }
        }
    }

    /// Ends the session of a request, if it has one.
    fn log_out(&self, headers: &HeaderMap) -> Option<String> {
        let login = self.login.as_ref()?;
        let hash = hash(&session_token(headers)?);
        if let Some(store) = &login.store
            && let Err(e) = store.remove_session(&hash)
        {
            tracing::error!("cannot remove a session from the store: {e:#}");
        }
        let session = login.sessions.lock().unwrap_or_else(|e| e.into_inner()).remove(&hash)?;
        tracing::info!(user = session.user, "logged out");
        Some(session.user)
    }

    /// The session cookie; `Secure` when the browser came over https (nginx says so in `X-Forwarded-Proto`).
    fn cookie(&self, token: &str, max_age: u64, headers: &HeaderMap) -> HeaderValue {
        let path = if self.base.is_empty() { "/" } else { &self.base };
        let https = headers
            .get("x-forwarded-proto")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.eq_ignore_ascii_case("https"));
        let secure = if https { "; Secure" } else { "" };
        HeaderValue::from_str(&format!(
            "{COOKIE}={token}; Path={path}; Max-Age={max_age}; HttpOnly; SameSite=Strict{secure}"
        ))
        .expect("a token and a base path are header-safe")
    }

    /// `next` if it is a path on this server under the base path, else the overview: no open redirect.
    fn next_or_home(&self, next: Option<&str>) -> String {
        let home = format!("{}/", self.base);
        match next {
            Some(n)
                if n.starts_with(&home)
                    && !n.starts_with("//")
                    && !n.contains(['\\', '\r', '\n'])
                    && !n.contains("/../") =>
            {
                n.to_string()
            }
            _ => home,
        }
    }
}

/// Why `log_in` said no.
#[derive(Debug)]
pub enum Refusal {
    Invalid(String),
    Rejected(String),
    TooMany(Duration),
    Unavailable(String),
}

impl Refusal {
    fn status(&self) -> StatusCode {
        match self {
            Refusal::Invalid(_) => StatusCode::BAD_REQUEST,
            Refusal::Rejected(_) => StatusCode::UNAUTHORIZED,
            Refusal::TooMany(_) => StatusCode::TOO_MANY_REQUESTS,
            Refusal::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    fn message(&self, repo: &str) -> String {
        match self {
            Refusal::Invalid(why) => why.clone(),
            Refusal::Rejected(why) => format!("Wrong username or password, or no read access to {repo} ({why})."),
            Refusal::TooMany(after) => format!(
                "Too many failed logins for this username or from this address: try again in {} minute(s). (SDP \
                 stops before Bitbucket would ask for a CAPTCHA, which git cannot answer.)",
                after.as_secs().div_ceil(60).max(1)
            ),
            Refusal::Unavailable(why) => format!("Cannot check the login right now: {why}"),
        }
    }

    fn retry_after(&self) -> Option<u64> {
        match self {
            Refusal::TooMany(after) => Some(after.as_secs().max(1)),
            _ => None,
        }
    }
}

/// How long failed attempts count.
const LIMIT_WINDOW: Duration = Duration::from_secs(15 * 60);

/// The two limits on failed logins: per username (3, below Bitbucket's CAPTCHA) and per client address (10, so
/// one machine cannot try a password on many names).
struct Limits {
    user: RateLimit,
    client: RateLimit,
}

impl Limits {
    fn retry_after(&self, user: &str, client: &str, now: Instant) -> Option<Duration> {
        let a = self.user.retry_after(user, now);
        let b = self.client.retry_after(client, now);
        a.max(b)
    }

    fn fail(&mut self, user: &str, client: &str, now: Instant) {
        self.user.fail(user, now);
        self.client.fail(client, now);
    }
}

/// Where a login attempt came from: the peer's address, or, when the peer is this machine (nginx in front), the
/// address nginx appended to `X-Forwarded-For`. A client that reaches SDP directly cannot choose its address.
pub struct Client(pub String);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Client {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, _: &S) -> Result<Client, Self::Rejection> {
        let peer = parts
            .extensions
            .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
            .map(|c| c.0.ip());
        Ok(Client(client_address(peer, &parts.headers)))
    }
}

fn client_address(peer: Option<std::net::IpAddr>, headers: &HeaderMap) -> String {
    let forwarded = || {
        headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .rfind(|v| !v.is_empty())
            .map(str::to_string)
    };
    match peer {
        Some(ip) if ip.is_loopback() => forwarded().unwrap_or_else(|| ip.to_string()),
        Some(ip) => ip.to_string(),
        None => "unknown".into(),
    }
}

/// Failed attempts per key (a lower-cased username, or a client address) in a sliding window: after `max` failures within `window`,
/// the key waits until the oldest of them leaves the window. Pure: the caller says what time it is.
#[derive(Debug)]
pub struct RateLimit {
    max: usize,
    window: Duration,
    failures: HashMap<String, VecDeque<Instant>>,
}

impl RateLimit {
    pub fn new(max: usize, window: Duration) -> RateLimit {
        RateLimit {
            max: max.max(1),
            window,
            failures: HashMap::new(),
        }
    }

    /// How long `key` must wait before its next attempt, or `None` when it may try now.
    pub fn retry_after(&self, key: &str, now: Instant) -> Option<Duration> {
        let recent: Vec<&Instant> = self
            .failures
            .get(key)?
            .iter()
            .filter(|t| now.duration_since(**t) < self.window)
            .collect();
        if recent.len() < self.max {
            return None;
        }
        let oldest = recent[recent.len() - self.max];
        Some(self.window - now.duration_since(*oldest))
    }

    pub fn fail(&mut self, key: &str, now: Instant) {
        let window = self.window;
        self.failures
            .retain(|_, q| q.back().is_some_and(|t| now.duration_since(*t) < window));
        let q = self.failures.entry(key.to_string()).or_default();
        while q.front().is_some_and(|t| now.duration_since(*t) >= window) {
            q.pop_front();
        }
        q.push_back(now);
        while q.len() > self.max {
            q.pop_front();
        }
    }

    pub fn clear(&mut self, key: &str) {
        self.failures.remove(key);
    }
}

/// `git ls-remote` of `repo` as `user`: `Ok` when the repo lets them read it.
pub async fn check_credentials(
    repo: &str,
    user: &str,
    password: &str,
    run_dir: &Path,
    askpass: &Path,
) -> Result<(), LoginError> {
    let token = new_token().map_err(|e| LoginError::Unavailable(format!("{e:#}")))?;
    // A short name: a unix socket path has room for about 100 bytes.
    let socket = run_dir.join(format!("askpass-{}.sock", &token[..16]));
    let listener = tokio::net::UnixListener::bind(&socket)
        .map_err(|e| LoginError::Unavailable(format!("cannot listen on {}: {e}", socket.display())))?;
    let (user_answer, password_answer) = (user.to_string(), password.to_string());
    // Answers git's prompts: "Username for '…': " and "Password for '…': ", a few times at most.
    let answering = tokio::spawn(async move {
        for _ in 0..4 {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let (read, mut write) = stream.into_split();
            let mut prompt = String::new();
            if BufReader::new(read.take(4096)).read_line(&mut prompt).await.is_err() {
                continue;
            }
            let answer = if prompt.trim_start().to_lowercase().starts_with("username") {
                &user_answer
            } else {
                &password_answer
            };
            let _ = write.write_all(format!("{answer}\n").as_bytes()).await;
        }
    });
    let child = tokio::process::Command::new("git")
        .args([
            "-c",
            "credential.helper=",
            "-c",
            "core.askPass=",
            "ls-remote",
            "--heads",
            "--",
        ])
        .arg(repo)
        .env("GIT_ASKPASS", askpass)
        .env(ASKPASS_ENV, &socket)
        .env("GIT_TERMINAL_PROMPT", "0")
        .env_remove("SSH_ASKPASS")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn();
    let result = match child {
        Err(e) => Err(LoginError::Unavailable(format!("cannot run git: {e}"))),
        Ok(child) => match tokio::time::timeout(CHECK_TIMEOUT, child.wait_with_output()).await {
            Err(_) => Err(LoginError::Unavailable(format!(
                "{repo} did not answer within {} s",
                CHECK_TIMEOUT.as_secs()
            ))),
            Ok(Err(e)) => Err(LoginError::Unavailable(format!("git failed: {e}"))),
            Ok(Ok(out)) if out.status.success() => Ok(()),
            Ok(Ok(out)) => Err(classify(&String::from_utf8_lossy(&out.stderr), password)),
        },
    };
    answering.abort();
    let _ = std::fs::remove_file(&socket);
    result
}

/// What git's complaint means: the credentials were refused, or the repo could not be asked. The message is
/// git's last line, with the password cut out should git ever echo it.
fn classify(stderr: &str, password: &str) -> LoginError {
    let line = stderr
        .lines()
        .map(str::trim)
        .rfind(|l| !l.is_empty())
        .unwrap_or("git ls-remote failed")
        .replace(password, "***");
    let line = line.strip_prefix("fatal: ").unwrap_or(&line).to_string();
    let lower = stderr.to_lowercase();
    let refused = [
        "authentication failed",
        "could not read username",
        "could not read password",
        "the requested url returned error: 401",
        "the requested url returned error: 403",
        "the requested url returned error: 404",
        "' not found",
    ];
    if refused.iter().any(|r| lower.contains(r)) {
        LoginError::Rejected(line)
    } else {
        LoginError::Unavailable(line)
    }
}

/// The SHA-256 of a session token, as hex: what the server keeps instead of the token.
fn hash(token: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn now_ms() -> u64 {
    crate::hub::now_ms()
}

/// 32 random bytes from the kernel, as hex.
fn new_token() -> Result<String> {
    use std::io::Read;
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .context("cannot read /dev/urandom")?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// The session token of a request: the cookie, or `Authorization: Bearer` (the CLI).
fn session_token(headers: &HeaderMap) -> Option<String> {
    if let Some(bearer) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    {
        return Some(bearer.trim().to_string());
    }
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.to_string())
}

/// The middleware in front of everything that needs a login: lets a request with a live session through (and
/// tells the pages who reads them); sends a browser to the login page and answers the API with 401.
pub async fn require_login(State(auth): State<Arc<Auth>>, mut request: Request, next: Next) -> Response {
    if !auth.required() {
        request.extensions_mut().insert(Viewer::default());
        return next.run(request).await;
    }
    if let Some(user) = auth.user(request.headers()) {
        request.extensions_mut().insert(Viewer { user: Some(user) });
        let mut response = next.run(request).await;
        // What a login shows stays out of shared caches and the browser's disk.
        response
            .headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("private, no-store"));
        return response;
    }
    // The path below the base path (the router is nested under it).
    let uri = request.uri();
    let wants_page = !uri.path().starts_with("/api/")
        && request
            .headers()
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .is_none_or(|a| a.contains("text/html") || a.contains("*/*"));
    if wants_page {
        let here = format!(
            "{}{}",
            auth.base,
            uri.path_and_query().map_or(uri.path(), |p| p.as_str())
        );
        let to = format!("{}/login?next={}", auth.base, percent_encode(&here));
        return Redirect::to(&to).into_response();
    }
    (
        StatusCode::UNAUTHORIZED,
        Json(json!({ "error": format!(
            "log in first: `sdp login` (CLI) or {}/login (browser)", auth.base
        ) })),
    )
        .into_response()
}

fn percent_encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"/-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `/login` (the form and its POST), `/logout`, and the CLI's `POST /api/v1/login`: to be mounted without
/// `require_login` in front.
pub fn routes(auth: Arc<Auth>) -> Router {
    Router::new()
        .route("/login", get(login_form).post(login_submit))
        .route("/logout", post(logout))
        .route("/api/v1/login", post(api_login))
        .with_state(auth)
}

#[derive(Deserialize)]
struct NextQuery {
    next: Option<String>,
}

fn repo_of(auth: &Auth) -> &str {
    auth.login.as_ref().map_or("", |l| l.repo.as_str())
}

async fn login_form(State(auth): State<Arc<Auth>>, headers: HeaderMap, Query(q): Query<NextQuery>) -> Response {
    let next = auth.next_or_home(q.next.as_deref());
    if !auth.required() || auth.user(&headers).is_some() {
        return Redirect::to(&next).into_response();
    }
    Html(sdp_dashboard::login_page(&auth.base, repo_of(&auth), &next, "", None)).into_response()
}

#[derive(Deserialize)]
struct LoginForm {
    username: String,
    password: String,
    next: Option<String>,
}

async fn login_submit(
    State(auth): State<Arc<Auth>>,
    Client(client): Client,
    headers: HeaderMap,
    Form(form): Form<LoginForm>,
) -> Response {
    let next = auth.next_or_home(form.next.as_deref());
    match auth.log_in(&form.username, &form.password, &client).await {
        Ok(token) => {
            let mut response = Redirect::to(&next).into_response();
            response
                .headers_mut()
                .insert(header::SET_COOKIE, auth.cookie(&token, SESSION_TTL.as_secs(), &headers));
            response
        }
        Err(refusal) => {
            let page = sdp_dashboard::login_page(
                &auth.base,
                repo_of(&auth),
                &next,
                &form.username,
                Some(&refusal.message(repo_of(&auth))),
            );
            let mut response = (refusal.status(), Html(page)).into_response();
            if let Some(secs) = refusal.retry_after() {
                response.headers_mut().insert(header::RETRY_AFTER, secs.into());
            }
            response
        }
    }
}

async fn logout(State(auth): State<Arc<Auth>>, headers: HeaderMap) -> Response {
    auth.log_out(&headers);
    let mut response = Redirect::to(&format!("{}/login", auth.base)).into_response();
    response
        .headers_mut()
        .insert(header::SET_COOKIE, auth.cookie("", 0, &headers));
    response
}

#[derive(Deserialize)]
struct ApiLogin {
    username: String,
    password: String,
}

/// The CLI's login: the same check, the token in the answer instead of a cookie.
async fn api_login(State(auth): State<Arc<Auth>>, Client(client): Client, Json(body): Json<ApiLogin>) -> Response {
    match auth.log_in(&body.username, &body.password, &client).await {
        Ok(token) => Json(json!({
            "token": token,
            "user": body.username.trim(),
            "expiresInSecs": SESSION_TTL.as_secs(),
        }))
        .into_response(),
        Err(refusal) => {
            let mut response = (
                refusal.status(),
                Json(json!({ "error": refusal.message(repo_of(&auth)) })),
            )
                .into_response();
            if let Some(secs) = refusal.retry_after() {
                response.headers_mut().insert(header::RETRY_AFTER, secs.into());
            }
            response
        }
    }
}

/// Git's askpass, when git runs `sdp PROMPT` with `SDP_ASKPASS_SOCKET` set: sends the prompt to the server that
/// started git and prints its answer. Returns `None` when this process is not an askpass call.
pub fn askpass_main() -> Option<std::process::ExitCode> {
    use std::io::{BufRead, Write};
    let socket = std::env::var_os(ASKPASS_ENV)?;
    let prompt = std::env::args().nth(1).unwrap_or_default();
    let answer = (|| -> std::io::Result<String> {
        let mut stream = std::os::unix::net::UnixStream::connect(&socket)?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        stream.write_all(format!("{}\n", prompt.replace('\n', " ")).as_bytes())?;
        let mut line = String::new();
        std::io::BufReader::new(stream).read_line(&mut line)?;
        Ok(line)
    })();
    match answer {
        Ok(line) if !line.is_empty() => {
            print!("{line}");
            Some(std::process::ExitCode::SUCCESS)
        }
        _ => {
            eprintln!("sdp: no answer for git's prompt (the login attempt is over)");
            Some(std::process::ExitCode::FAILURE)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_limit_waits_for_the_oldest_failure_to_leave_the_window() {
        let t0 = Instant::now();
        let mut limit = RateLimit::new(3, Duration::from_secs(900));
        for i in 0..2 {
            limit.fail("ann", t0 + Duration::from_secs(i * 10));
        }
        assert_eq!(limit.retry_after("ann", t0 + Duration::from_secs(30)), None);
        limit.fail("ann", t0 + Duration::from_secs(30));
        assert_eq!(
            limit.retry_after("ann", t0 + Duration::from_secs(40)),
            Some(Duration::from_secs(860))
        );
        assert_eq!(limit.retry_after("bob", t0 + Duration::from_secs(40)), None);
        assert_eq!(limit.retry_after("ann", t0 + Duration::from_secs(900)), None);
        limit.clear("ann");
        assert_eq!(limit.retry_after("ann", t0 + Duration::from_secs(41)), None);
    }

    #[test]
    fn the_login_url_carries_no_credentials() {
        use crate::source::without_userinfo;
        assert_eq!(
            without_userinfo("https://svc:pw@bitbucket.example/scm/cc/config.git"),
            "https://bitbucket.example/scm/cc/config.git"
        );
        assert_eq!(without_userinfo("https://svc@host"), "https://host");
        assert_eq!(without_userinfo("http://host:7990/x.git"), "http://host:7990/x.git");
    }

    #[test]
    fn the_client_is_the_peer_unless_nginx_on_this_machine_says_who() {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static("1.2.3.4, 10.0.0.7"));
        let local = Some("127.0.0.1".parse().unwrap());
        let remote = Some("10.9.9.9".parse().unwrap());
        assert_eq!(client_address(local, &h), "10.0.0.7", "the address nginx appended");
        assert_eq!(
            client_address(remote, &h),
            "10.9.9.9",
            "a remote peer cannot pick its address"
        );
        assert_eq!(client_address(local, &HeaderMap::new()), "127.0.0.1");
        assert_eq!(client_address(None, &h), "unknown");
    }

    #[test]
    fn git_complaints_are_told_apart() {
        let refused = "remote: denied\nfatal: Authentication failed for 'https://bitbucket.example/scm/x.git/'\n";
        assert!(matches!(classify(refused, "pw"), LoginError::Rejected(m) if m.starts_with("Authentication failed")));
        let down = "fatal: unable to access 'https://bitbucket.example/x.git/': Could not resolve host: x\n";
        assert!(matches!(classify(down, "pw"), LoginError::Unavailable(_)));
        let echoed = "fatal: Authentication failed for 'https://ann:s3cret@host/x.git'";
        assert!(matches!(classify(echoed, "s3cret"), LoginError::Rejected(m) if !m.contains("s3cret")));
    }

    #[test]
    fn tokens_come_from_cookies_or_bearer_headers() {
        let mut h = HeaderMap::new();
        h.insert(header::COOKIE, HeaderValue::from_static("a=1; sdp_session=abc; b=2"));
        assert_eq!(session_token(&h).as_deref(), Some("abc"));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer xyz"));
        assert_eq!(session_token(&h).as_deref(), Some("xyz"));
    }

    #[test]
    fn next_stays_on_this_server_under_the_base_path() {
        let auth = Auth::anonymous("/sandbox/credit-card");
        let home = "/sandbox/credit-card/";
        assert_eq!(
            auth.next_or_home(Some("/sandbox/credit-card/nodes")),
            "/sandbox/credit-card/nodes"
        );
        for bad in [
            "https://evil.example/",
            "//evil.example/x",
            "/other/",
            "/sandbox/credit-card/../../x",
            "",
        ] {
            assert_eq!(auth.next_or_home(Some(bad)), home, "{bad}");
        }
        assert_eq!(auth.next_or_home(None), home);
    }
}
