//! Who may read SDP. Whoever may read the config repo may read the dashboard and the API: a login takes a
//! Bitbucket username and password, checks them with `git ls-remote` of the config repo, and forgets them; what
//! stays is a random session token in an HttpOnly, SameSite=Strict cookie (or, for the CLI, a bearer header) that
//! lives 12 hours or until logout, and survives a restart (the store keeps the token's SHA-256, not the token).
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
//!
//! The files: `check.rs` asks git (and answers its password prompt), `limit.rs` counts failures, `web.rs` is the
//! middleware and the login and logout pages; this one keeps the sessions.

mod check;
pub(crate) mod limit;
mod web;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use tokio::sync::Semaphore;

use crate::store::Store;
pub use check::{ASKPASS_ENV, LoginError, askpass_main, check_credentials};
use limit::Limits;
pub use limit::{Client, RateLimit};
pub use web::{require_login, routes};

/// The name of the session cookie.
pub const COOKIE: &str = "sdp_session";
/// How long a session lives.
pub const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);
/// Sessions kept at most; the oldest go first.
const MAX_SESSIONS: usize = 10_000;

/// The login settings of a server: open to all, or a login checked against a repo.
pub struct Auth {
    login: Option<Login>,
    base: String,
    /// Login attempts by outcome, for `/metrics`: succeeded, rejected, limited, unavailable.
    pub outcomes: [AtomicU64; 4],
    /// Proxies besides this machine whose `X-Forwarded-For` says who the client is (see `Client`).
    pub trusted_proxies: Vec<std::net::IpAddr>,
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

impl Auth {
    /// Everyone may read: for trusted networks and local demos.
    pub fn anonymous(base: &str) -> Auth {
        Auth {
            login: None,
            base: base.trim_end_matches('/').to_string(),
            outcomes: Default::default(),
            trusted_proxies: Vec::new(),
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
                limits: Mutex::new(Limits::new()),
                checks: Semaphore::new(4),
            }),
            base: base.trim_end_matches('/').to_string(),
            outcomes: Default::default(),
            trusted_proxies: Vec::new(),
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
                limits().succeeded(&key, client);
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
            // Browsers drop tabs and newlines from a Location and read `\` as `/`: `/\t/evil.example/` would
            // leave the server. No control character, whitespace or backslash at all, then.
            Some(n)
                if n.starts_with(&home)
                    && !n.starts_with("//")
                    && !n.chars().any(|c| c.is_control() || c.is_whitespace() || c == '\\')
                    && !n.contains("/../")
                    && !n.ends_with("/..") =>
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

#[cfg(test)]
mod tests {
    use super::*;

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
        // With no base path, `/` is home: the tab trick of the review must not pass.
        let root = Auth::anonymous("");
        for bad in [
            "/\t/evil.example/",
            "/\n/evil.example/",
            "/ /evil.example",
            "/\\evil.example/",
            "//evil.example",
        ] {
            assert_eq!(root.next_or_home(Some(bad)), "/", "{bad:?}");
        }
        assert_eq!(root.next_or_home(Some("/sandboxes/qa")), "/sandboxes/qa");
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
}
