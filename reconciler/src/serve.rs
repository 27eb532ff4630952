//! `sdp serve`: the reconciler as one process. Opens the store, starts the source loop, the controller's workers
//! and the HTTP server on one port, and stops cleanly on Ctrl-C or SIGTERM.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde::Deserialize;
use tokio::sync::{Notify, mpsc};

use crate::api::Api;
use crate::auth::Auth;
use crate::controller::{Controller, Trigger};
use crate::desired::Settings;
use crate::hub::{Hub, HubEvent, now_ms};
use crate::source::{Origin, Source};
use crate::store::Store;

/// How long a stop waits for the steps in flight (a Go build may take longer: its deployment is then failed and
/// retried at the next start).
const STOP_GRACE: Duration = Duration::from_secs(30);

/// Everything `sdp serve` needs; from flags, or from a YAML config file with the same names in camelCase.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServeConfig {
    /// The config repo: a local path or a git URL.
    pub repo: String,
    pub data: PathBuf,
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// A file holding the token agents authenticate with.
    pub token_file: PathBuf,
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
    /// Seconds between resyncs of a converged sandbox.
    #[serde(default = "default_resync")]
    pub resync_secs: u64,
    /// Seconds between fetches of a remote config repo (and checks of a local one besides file events).
    #[serde(default = "default_poll")]
    pub poll_secs: u64,
    #[serde(default = "default_gateway_ports")]
    pub gateway_ports: (u16, u16),
    #[serde(default = "default_service_ports")]
    pub service_ports: (u16, u16),
    /// How gateways reach the micro VM when no micro agent has said its address yet.
    #[serde(default = "default_micro_address")]
    pub micro_address: String,
    /// Where everything is served, for a reverse proxy that mounts SDP under a path (`/sandbox/credit-card`).
    #[serde(default)]
    pub base_path: String,
    /// The http(s) URL of the config repo that logins are checked against (`git ls-remote` with the user's
    /// username and password); by default `repo` itself when that is an http(s) URL.
    #[serde(default)]
    pub login_repo: Option<String>,
    /// No login at all: whoever reaches the port may read the dashboard and the API. For trusted networks and
    /// local demos.
    #[serde(default)]
    pub allow_anonymous: bool,
    /// Proxies on other machines whose `X-Forwarded-For` names the client, for the per-address login limit
    /// (a proxy on this machine, as nginx on the gateway VM, is always trusted).
    #[serde(default)]
    pub trusted_proxies: Vec<std::net::IpAddr>,
    /// Connections served at once (agents' WebSockets are not counted once upgraded); the next ones wait.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Seconds a client has to send a whole request head, before its connection is closed.
    #[serde(default = "default_header_timeout")]
    pub header_timeout_secs: u64,
    /// No failed step is tried again sooner than this; zero leaves the backoff alone (2 s, 4 s … 5 min). Neither
    /// a flag nor read from a config file: a seam for tests that read what one failed pass left behind, and
    /// must not see a retry add to it meanwhile.
    #[serde(skip)]
    pub retry_floor: Duration,
    /// Called at the start of every pass: a seam for tests that make a pass panic (see `PassHook`).
    #[serde(skip)]
    pub before_pass: Option<crate::controller::PassHook>,
}

pub fn default_listen() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 3452))
}
fn default_concurrency() -> usize {
    4
}
fn default_resync() -> u64 {
    60
}
fn default_poll() -> u64 {
    10
}
fn default_gateway_ports() -> (u16, u16) {
    (8080, 8099)
}
fn default_service_ports() -> (u16, u16) {
    (9001, 9099)
}
/// Well below the unit's `LimitNOFILE` (65536), and far above what a team's browsers, `sdp` clients and log
/// streams hold open.
fn default_max_connections() -> usize {
    1024
}
fn default_header_timeout() -> u64 {
    10
}
fn default_micro_address() -> String {
    "127.0.0.1".into()
}

impl ServeConfig {
    /// The three settings nobody can guess, with the defaults for the rest (the same ones a config file gets).
    pub fn new(repo: String, data: PathBuf, token_file: PathBuf) -> ServeConfig {
        ServeConfig {
            repo,
            data,
            listen: default_listen(),
            token_file,
            concurrency: default_concurrency(),
            resync_secs: default_resync(),
            poll_secs: default_poll(),
            gateway_ports: default_gateway_ports(),
            service_ports: default_service_ports(),
            micro_address: default_micro_address(),
            base_path: String::new(),
            login_repo: None,
            allow_anonymous: false,
            trusted_proxies: Vec::new(),
            max_connections: default_max_connections(),
            header_timeout_secs: default_header_timeout(),
            retry_floor: Duration::ZERO,
            before_pass: None,
        }
    }

    /// The URL logins are checked against, or `None` with `allowAnonymous`; refused when there is no http(s)
    /// URL to check them with.
    pub fn login_repo(&self) -> Result<Option<String>> {
        if self.allow_anonymous {
            return Ok(None);
        }
        let is_http = |url: &str| url.starts_with("https://") || url.starts_with("http://");
        match &self.login_repo {
            Some(url) if is_http(url) => Ok(Some(url.clone())),
            Some(url) => bail!(
                "--login-repo must be an http(s) URL (logins are checked with a username and password), not {}",
                crate::source::redact_url(url)
            ),
            None if is_http(&self.repo) => Ok(Some(self.repo.clone())),
            None => bail!(
                "the dashboard needs a login, checked with `git ls-remote` of the config repo over http(s), but \
                 --repo is {}: give --login-repo https://…/config.git (the same repo as Bitbucket serves it), or \
                 --allow-anonymous on a trusted network",
                crate::source::redact_url(&self.repo)
            ),
        }
    }

    /// Who may read: a login against `repo` (from `login_repo`) with its sessions in `store`, or anyone.
    fn auth(&self, repo: Option<String>, store: &Store) -> Result<Auth> {
        let Some(repo) = repo else {
            return Ok(Auth::anonymous(&self.base_path));
        };
        let askpass = std::env::current_exe().context("cannot find this program, which git runs as its askpass")?;
        let mut auth = Auth::login(&repo, &self.data, askpass, &self.base_path, Some(store.clone()))?;
        auth.trusted_proxies = self.trusted_proxies.clone();
        Ok(auth)
    }

    /// Reads a config file, refusing unknown fields with the file, line and column.
    pub fn from_file(path: &Path) -> Result<ServeConfig> {
        let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
        serde_saphyr::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
    }

    fn settings(&self) -> Result<Settings> {
        let (g0, g1) = self.gateway_ports;
        let (s0, s1) = self.service_ports;
        if g0 > g1 || s0 > s1 {
            bail!("a port range runs backwards: gatewayPorts {g0}-{g1}, servicePorts {s0}-{s1}");
        }
        if g0 <= s1 && s0 <= g1 {
            bail!("the gateway range {g0}-{g1} overlaps the service range {s0}-{s1}");
        }
        let own = self.listen.port();
        if (g0..=g1).contains(&own) || (s0..=s1).contains(&own) {
            bail!(
                "SDP listens on port {own}, inside the ports it gives to sandboxes (gatewayPorts {g0}-{g1}, \
                 servicePorts {s0}-{s1}): move `listen` or the ranges"
            );
        }
        Ok(Settings {
            gateway_ports: g0..=g1,
            service_ports: s0..=s1,
            micro_address: self.micro_address.clone(),
            ..Settings::default()
        })
    }
}

fn read_token(path: &Path) -> Result<String> {
    let token = std::fs::read_to_string(path).with_context(|| {
        format!(
            "cannot read the agent token file {}: create one with `head -c 32 /dev/urandom | base64 > {}` and give \
             the same file to every agent",
            path.display(),
            path.display()
        )
    })?;
    let token = token.trim().to_string();
    if token.len() < 16 {
        bail!("the agent token in {} is shorter than 16 characters", path.display());
    }
    Ok(token)
}

/// Runs the reconciler on `config.listen` until Ctrl-C or SIGTERM.
pub async fn serve(config: ServeConfig) -> Result<()> {
    // A config that cannot work is refused before the port is taken.
    config.settings()?;
    let listener = tokio::net::TcpListener::bind(config.listen).await.with_context(|| {
        format!(
            "cannot listen on {}: is another `sdp serve` (or anything else) on that port? `ss -ltnp` shows who",
            config.listen
        )
    })?;
    serve_on(listener, config, shutdown()).await
}

/// Runs the reconciler on `listener` until `shutdown` completes.
pub async fn serve_on(
    listener: tokio::net::TcpListener,
    config: ServeConfig,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<()> {
    let settings = config.settings()?;
    let login_repo = config.login_repo()?;
    let token = read_token(&config.token_file)?;
    let store = Store::open(&config.data)?;
    let auth = Arc::new(config.auth(login_repo, &store)?);
    let failed = store.fail_unfinished(now_ms())?;
    if failed > 0 {
        tracing::warn!("{failed} deployment(s) were running when the reconciler stopped: marked failed, retried");
    }
    let (events_tx, mut events) = mpsc::channel(4096);
    let hub = Arc::new(Hub::new(token, events_tx));
    hub.set_installation(store.installation()?);
    let controller = Controller::new(hub, store, settings, Duration::from_secs(config.resync_secs.max(1)))?;
    controller.set_retry_floor(config.retry_floor);
    if let Some(hook) = config.before_pass.clone() {
        controller.set_before_pass(hook);
    }
    let workers = controller.spawn(config.concurrency);

    let hook = Arc::new(Notify::new());
    let origin = Origin::parse(&config.repo, &config.data);
    tracing::info!("config repo: {}", origin.display());
    spawn_source(controller.clone(), Source::new(origin), hook.clone(), config.poll_secs);

    // Agent events, in order: reports wake the sandboxes they touch.
    let ctl = controller.clone();
    tokio::spawn(async move {
        let mut last = ctl.hub.actual();
        while let Some(event) = events.recv().await {
            match event {
                HubEvent::Reported(_) => {
                    ctl.trigger_changed(&last);
                    last = ctl.hub.actual();
                }
                HubEvent::FirstReport(_) => {
                    ctl.trigger_changed(&last);
                    last = ctl.hub.actual();
                    ctl.trigger_all(Trigger::AgentConnected);
                }
                HubEvent::Connected(role) => {
                    if role == sdp_protocol::Role::Micro {
                        // Routes to `sandbox` use the micro agent's address.
                        ctl.recompile();
                    }
                    ctl.trigger_all(Trigger::AgentConnected);
                }
                HubEvent::Disconnected(_) => {}
                HubEvent::Progress(p) => ctl.progress(p),
                HubEvent::Log(l) => ctl.log(l),
            }
        }
    });

    let app = crate::api::router_at(
        Api {
            controller: controller.clone(),
            hook,
            auth,
        },
        &config.base_path,
    );
    tracing::info!("listening on {}", listener.local_addr()?);
    let limits = crate::http::Limits {
        max_connections: config.max_connections,
        header_timeout: Duration::from_secs(config.header_timeout_secs.max(1)),
    };
    let stop = async {
        shutdown.await;
        tracing::info!("stopping: no new passes; passes in flight end after their current step");
        controller.stop();
    };
    crate::http::run(listener, app, limits, stop).await;
    if tokio::time::timeout(STOP_GRACE, workers).await.is_err() {
        // Its deployment is marked failed at the next start, and retried.
        tracing::warn!("a step was still running after {STOP_GRACE:?}: left to the next start");
    }
    tracing::info!("stopped");
    Ok(())
}

async fn shutdown() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => {
                let _ = ctrl_c.await;
                return;
            }
        };
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

/// The source loop: read HEAD now, then again on a file event (local repo), a git hook call, or every
/// `poll_secs`. A local clone with an upstream is fetched and fast-forwarded first, on a hook call or a tick (not on
/// a file event, which its own fetch makes). A failure is logged once until it changes, shown on `/healthz` and
/// the dashboard, and retried at the next tick.
fn spawn_source(controller: Arc<Controller>, source: Source, hook: Arc<Notify>, poll_secs: u64) {
    let (changed_tx, mut changed) = mpsc::channel::<()>(1);
    let watcher = match source.origin() {
        Origin::Local(path) => watch(path, changed_tx.clone()),
        Origin::Remote { .. } => None,
    };
    tokio::spawn(async move {
        let _watcher = watcher;
        // Held for as long as the loop runs: with no watcher (a remote repo, or a watch that failed) a closed
        // channel would end every wait at once and fetch in a tight loop.
        let _changed_tx = changed_tx;
        let mut source = Some(source);
        let mut last_error = String::new();
        let mut follow = true;
        let mut follow_error: Option<String> = None;
        let mut followed_at = tokio::time::Instant::now();
        loop {
            if follow {
                followed_at = tokio::time::Instant::now();
            }
            let mut src = source.take().expect("the source is put back after each refresh");
            let (src, followed, result) = match tokio::task::spawn_blocking(move || {
                // Following the upstream fails alone: the local HEAD is read all the same.
                let followed = if follow { src.follow_upstream() } else { Ok(()) };
                let r = src.refresh();
                (src, followed, r)
            })
            .await
            {
                Ok(x) => x,
                Err(e) => {
                    tracing::error!("the source task failed: {e}");
                    return;
                }
            };
            source = Some(src);
            let read_error = result.as_ref().err().map(|e| format!("{e:#}"));
            if let Ok(Some(snapshot)) = result {
                tracing::info!(
                    commit = %crate::plan::short(&snapshot.commit),
                    sandboxes = snapshot.sandboxes.len(),
                    problems = snapshot.problems.len(),
                    "config repo read"
                );
                for p in &snapshot.problems {
                    tracing::warn!("{}", p.to_string().replace('\n', " "));
                }
                controller.set_snapshot(snapshot);
            }
            // The sets' branches are listed on the same schedule (a poll, the git hook), in the background.
            {
                let controller = controller.clone();
                tokio::spawn(async move { controller.list_branches().await });
            }
            // A read on a file event did not follow the upstream: what the last attempt said still holds.
            if follow {
                follow_error = followed.err().map(|e| format!("{e:#}"));
            }
            let error = read_error.or_else(|| follow_error.clone());
            *controller.source_error.write().unwrap_or_else(|e| e.into_inner()) = error.clone();
            match error {
                None => last_error.clear(),
                Some(e) if e != last_error => {
                    tracing::error!("cannot follow the config repo: {e}");
                    let _ = controller
                        .store
                        .event(now_ms(), None, format!("cannot follow the config repo: {e}"));
                    last_error = e;
                }
                Some(_) => {}
            }
            follow = tokio::select! {
                _ = hook.notified() => true,
                _ = changed.recv() => false,
                _ = tokio::time::sleep(Duration::from_secs(poll_secs.max(1))) => true,
            };
            // The hook is open to anyone: however often it is called, the upstream is fetched at most once a
            // second (calls in between merge into the next fetch). A file event reads at once.
            if follow {
                tokio::time::sleep_until(followed_at + Duration::from_secs(1)).await;
            }
        }
    });
}

/// Whether a file event in `git_dir` may mean that a commit moved: a change to HEAD, `packed-refs` or a ref, lock
/// files aside. Not a read: every git process, the reconciler's own among them, opens HEAD and the refs, and each
/// of its reads made the next one (25 to 40 a second, idle).
fn moves_a_ref(event: &notify::Event, git_dir: &Path) -> bool {
    use notify::EventKind;
    if !matches!(
        event.kind,
        EventKind::Create(_) | EventKind::Modify(_) | EventKind::Remove(_)
    ) {
        return false;
    }
    event.paths.iter().any(|path| {
        let Ok(inside) = path.strip_prefix(git_dir) else {
            return false;
        };
        path.extension().is_none_or(|e| e != "lock")
            && (inside == Path::new("HEAD") || inside == Path::new("packed-refs") || inside.starts_with("refs"))
    })
}

/// Watches a local repo's git dir (HEAD, refs, packed-refs) for commits, debounced by `SETTLE`: the files one commit
/// writes in a few milliseconds make one read. Nothing needs to wait longer: git moves a ref by renaming a file
/// whole, after the objects it names are written, so a read at any moment sees a whole commit (the one before, at
/// worst, and the next event brings the new one).
fn watch(
    path: &Path,
    tx: mpsc::Sender<()>,
) -> Option<notify_debouncer_full::Debouncer<notify::RecommendedWatcher, notify_debouncer_full::RecommendedCache>> {
    use notify::RecursiveMode;
    let out = std::process::Command::new("git")
        .arg("-C")
        .arg(path)
        .args(["rev-parse", "--absolute-git-dir"])
        .output()
        .ok()?;
    let git_dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    if !out.status.success() || !git_dir.is_dir() {
        return None;
    }
    // 150 ms before: an eighth of the time from a commit to its containers running, waited on every commit.
    const SETTLE: Duration = Duration::from_millis(25);
    let mut debouncer = notify_debouncer_full::new_debouncer(SETTLE, None, {
        let git_dir = git_dir.clone();
        move |result: notify_debouncer_full::DebounceEventResult| {
            if result.is_ok_and(|events| events.iter().any(|e| moves_a_ref(e, &git_dir))) {
                let _ = tx.try_send(());
            }
        }
    })
    .map_err(|e| tracing::warn!("cannot watch {}: {e}; polling only", git_dir.display()))
    .ok()?;
    let watched = debouncer
        .watch(&git_dir, RecursiveMode::NonRecursive)
        .and_then(|_| debouncer.watch(git_dir.join("refs"), RecursiveMode::Recursive));
    if let Err(e) = watched {
        tracing::warn!("cannot watch {}: {e}; polling only", git_dir.display());
        return None;
    }
    Some(debouncer)
}

#[cfg(test)]
mod tests {
    use std::process::Command;
    use std::time::{Duration, Instant};

    use tokio::sync::mpsc;

    use super::watch;

    #[test]
    fn reading_a_repo_is_no_commit_and_a_commit_is_one() {
        let dir = tempfile::tempdir().unwrap();
        let git = |args: &[&str]| {
            let out = Command::new("git")
                .current_dir(dir.path())
                .args(["-c", "user.name=t", "-c", "user.email=t@example.com"])
                .args(args)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "git {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        git(&["init", "-q"]);
        git(&["commit", "-q", "--allow-empty", "-m", "one"]);
        let (tx, mut rx) = mpsc::channel(1);
        let _watching = watch(dir.path(), tx).expect("the git dir is watched");
        // What a read of the repo runs, and what an engineer's tools run beside it: none of it moves a ref.
        for _ in 0..5 {
            git(&["log", "-1", "HEAD"]);
            git(&["ls-tree", "-r", "HEAD"]);
            git(&["status", "--porcelain"]);
        }
        std::thread::sleep(Duration::from_millis(500));
        assert!(rx.try_recv().is_err(), "reading the repo was taken for a commit");
        git(&["commit", "-q", "--allow-empty", "-m", "two"]);
        let started = Instant::now();
        while rx.try_recv().is_err() {
            assert!(started.elapsed() < Duration::from_secs(10), "a commit went unseen");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}
