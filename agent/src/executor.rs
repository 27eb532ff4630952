//! What the agent does for each action, and what it reports of its node. It decides nothing: each action says
//! exactly what to make true. Every deploy reports its stages (fetch, checkout, build or composer, start) with
//! timings, streams build output as log lines, and is followed by a fresh report before its result.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use sdp_manifest::rules;
use sdp_protocol::{
    Action, ActualState, AgentFrame, BranchHead, Deploy, GATEWAY, GoBuild, Progress, Role, Stage, StageState, Worktree,
    labels, network_name,
};
use serde::{Deserialize, Serialize};
use tokio::io::AsyncReadExt;
use tokio::sync::Mutex;

use crate::command::{self, DEADLINES};
use crate::config::AgentConfig;
use crate::docker::{Engine, Spec};
use crate::files;
use crate::git::Repo;
use crate::lines::Lines;
use crate::outbox::Outbox;
use crate::routes;

/// What the agent remembers of a worktree (beside it, not inside it: the worktree holds only the commit).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Meta {
    branch: String,
    commit: String,
    /// What the binary was built from (micro): the commit, the build settings and Go's environment, so that a
    /// change of `build:` or `goEnv` rebuilds.
    built: Option<String>,
}

pub struct Executor {
    pub config: Arc<AgentConfig>,
    pub engine: Engine,
    /// Actions running now, and a count that moves at every start and end of one: a scan taken while an action
    /// ran, or across one, could report a half-made container after the action's own report; it is dropped.
    pub busy: std::sync::atomic::AtomicUsize,
    pub generation: std::sync::atomic::AtomicU64,
    /// Running containers whose output is followed, by container id.
    followed: std::sync::Mutex<HashMap<String, tokio::task::JoinHandle<()>>>,
    /// One git operation at a time per repository (worktree add/remove lock the repository).
    repo_locks: Mutex<HashMap<String, Arc<Mutex<()>>>>,
}

impl Executor {
    pub fn new(config: Arc<AgentConfig>, engine: Engine) -> Executor {
        Executor {
            config,
            engine,
            busy: Default::default(),
            generation: Default::default(),
            followed: std::sync::Mutex::default(),
            repo_locks: Mutex::default(),
        }
    }

    /// At start, before any git runs: the index locks a killed git left in the agent's own worktrees.
    pub async fn clear_stale_locks(&self) {
        let owned = self.config.data_dir.join("worktrees");
        for service in self.config.repos.keys() {
            let Ok(repo) = self.repo(service) else { continue };
            for lock in repo.clear_stale_locks(&owned).await {
                tracing::warn!("removed {}, left by a git that was killed mid-checkout", lock.display());
            }
        }
    }

    fn repo(&self, service: &str) -> Result<Repo> {
        let path = self.config.repos.get(service).with_context(|| {
            format!(
                "no repository for {service} is configured on node {}: add it under `repos:` in the agent's config",
                self.config.node
            )
        })?;
        Ok(Repo::new(path.clone(), self.config.git_credentials.clone()))
    }

    async fn repo_lock(&self, service: &str) -> Arc<Mutex<()>> {
        self.repo_locks
            .lock()
            .await
            .entry(service.to_string())
            .or_default()
            .clone()
    }

    fn meta_path(&self, sandbox: &str, service: &str) -> PathBuf {
        self.config
            .data_dir
            .join("meta")
            .join(sandbox)
            .join(format!("{service}.json"))
    }

    fn meta(&self, sandbox: &str, service: &str) -> Option<Meta> {
        let text = std::fs::read_to_string(self.meta_path(sandbox, service)).ok()?;
        serde_json::from_str(&text).ok()
    }

    fn set_meta(&self, sandbox: &str, service: &str, meta: &Meta) -> Result<()> {
        let path = self.meta_path(sandbox, service);
        std::fs::create_dir_all(path.parent().expect("meta paths have a parent"))?;
        files::write_atomically(&path, serde_json::to_string(meta)?.as_bytes())
    }

    fn files_dir(&self, sandbox: &str, service: &str) -> PathBuf {
        self.config.data_dir.join("files").join(sandbox).join(service)
    }

    fn binary_dir(&self, sandbox: &str, service: &str) -> PathBuf {
        self.config.data_dir.join("bin").join(sandbox).join(service)
    }

    fn defaults_path(&self, branch: &str) -> PathBuf {
        let safe: String = branch
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        self.config.data_dir.join("route-defaults").join(format!("{safe}.json"))
    }

    /// Everything SDP manages on this node, as the reconciler should see it.
    pub async fn report(&self) -> Result<ActualState> {
        let listed = self.engine.containers(self.config.role).await?;
        let containers = listed.mine;
        let mut networks = self.engine.networks().await?;
        // On an engine both agents share (the demo, the tests), a sandbox's network is one for both roles: a role
        // that runs nothing of a sandbox whose other role does leaves that network out of its report, so that it
        // never asks to remove what the other role's containers use.
        let mine: std::collections::BTreeSet<&str> = containers
            .iter()
            .filter_map(|c| c.labels.get(labels::SANDBOX))
            .collect();
        let others = &listed.other_role_sandboxes;
        networks.retain(|n| {
            n.strip_prefix("sandbox-")
                .is_none_or(|sandbox| mine.contains(sandbox) || !others.contains(sandbox))
        });
        let mut worktrees = Vec::new();
        let mut routes = BTreeMap::new();
        let mut route_defaults = BTreeMap::new();
        let meta_root = self.config.data_dir.join("meta");
        for sandbox in read_dir_names(&meta_root) {
            for file in read_dir_names(&meta_root.join(&sandbox)) {
                let Some(service) = file.strip_suffix(".json") else {
                    continue;
                };
                let Some(meta) = self.meta(&sandbox, service) else {
                    continue;
                };
                if !self.config.worktree(&sandbox, service).exists() {
                    continue;
                }
                if self.config.role == Role::Gateway && service == GATEWAY {
                    let worktree = self.config.worktree(&sandbox, service);
                    if let Ok(text) = files::read_capped(&worktree, &self.config.config_php, MAX_CONFIG_PHP) {
                        routes.insert(sandbox.clone(), routes::routes(&text).into());
                    }
                    if let Ok(text) = std::fs::read_to_string(self.defaults_path(&meta.branch))
                        && let Ok(map) = serde_json::from_str::<sdp_protocol::Routes>(&text)
                    {
                        route_defaults.insert(sandbox.clone(), map);
                    }
                }
                worktrees.push(Worktree {
                    sandbox: sandbox.as_str().into(),
                    service: service.into(),
                    branch: meta.branch.into(),
                    commit: meta.commit.into(),
                });
            }
        }
        let heads = self.heads(&worktrees).await;
        Ok(ActualState {
            containers: containers.into_iter().map(std::sync::Arc::new).collect(),
            networks,
            worktrees: worktrees.into(),
            routes: routes.into(),
            route_defaults: route_defaults.into(),
            heads,
        })
    }

    /// Heads of the branches deployed here, as of the last fetch.
    async fn heads(&self, worktrees: &[Worktree]) -> Vec<BranchHead> {
        let tracked: BTreeSet<(&str, &str)> = worktrees.iter().map(|w| (&*w.service, &*w.branch)).collect();
        let mut heads = Vec::new();
        for (service, branch) in tracked {
            let Ok(repo) = self.repo(service) else { continue };
            if let Ok(commit) = repo.head(branch).await {
                heads.push(BranchHead {
                    repo: service.to_string(),
                    branch: branch.to_string(),
                    commit,
                });
            }
        }
        heads
    }

    /// Follows the output of every running managed container of `report` (and stops following the others), as
    /// log lines through the outbox: bounded, with drops counted.
    pub fn follow(&self, report: &ActualState, out: &Outbox) {
        let mut followed = self.followed.lock().unwrap_or_else(|e| e.into_inner());
        let running: HashMap<&str, &str> = report
            .containers
            .iter()
            .filter(|c| c.state == sdp_protocol::ContainerState::Running)
            .map(|c| (c.id.as_str(), c.name.as_str()))
            .collect();
        followed.retain(|id, task| {
            let keep = running.contains_key(id.as_str()) && !task.is_finished();
            if !keep {
                task.abort();
            }
            keep
        });
        for (id, name) in running {
            if followed.contains_key(id) {
                continue;
            }
            let (engine, out, id_owned, name) = (self.engine.clone(), out.clone(), id.to_string(), name.to_string());
            let task = tokio::spawn(async move {
                engine
                    .follow_logs(&id_owned, |line| out.log(None, Some(name.clone()), line))
                    .await;
            });
            followed.insert(id.to_string(), task);
        }
    }

    /// Stops following every container (the connection they report to is gone).
    pub fn unfollow_all(&self) {
        for (_, task) in self.followed.lock().unwrap_or_else(|e| e.into_inner()).drain() {
            task.abort();
        }
    }

    /// Fetches every repository with a deployed branch, so that a push shows as a moved head.
    pub async fn fetch_tracked(&self) {
        let services: BTreeSet<String> = self
            .report_worktrees()
            .into_iter()
            .map(|(_, service)| service)
            .collect();
        self.fetch_services(services).await;
    }

    /// Fetches the repositories a push webhook named, by service name or by the last part of their origin URL;
    /// names this node does not serve are ignored.
    pub async fn fetch_named(&self, names: BTreeSet<String>) {
        let mut services = BTreeSet::new();
        for service in self.config.repos.keys() {
            let Ok(repo) = self.repo(service) else { continue };
            let origin = repo.origin_name().await;
            if names.contains(service) || origin.is_some_and(|o| names.contains(&o)) {
                services.insert(service.clone());
            }
        }
        self.fetch_services(services).await;
    }

    async fn fetch_services(&self, services: BTreeSet<String>) {
        for service in services {
            let Ok(repo) = self.repo(&service) else { continue };
            let lock = self.repo_lock(&service).await;
            let _guard = lock.lock().await;
            if let Err(e) = repo.fetch().await {
                tracing::warn!("cannot fetch {service}: {e:#}");
            }
        }
    }

    fn report_worktrees(&self) -> Vec<(String, String)> {
        let meta_root = self.config.data_dir.join("meta");
        read_dir_names(&meta_root)
            .into_iter()
            .flat_map(|sb| {
                read_dir_names(&meta_root.join(&sb))
                    .into_iter()
                    .filter_map(move |f| f.strip_suffix(".json").map(|s| (sb.clone(), s.to_string())))
            })
            .collect()
    }

    /// The branches of one of this node's repositories, as its remote lists them.
    pub async fn branches(&self, service: &str) -> Result<Vec<BranchHead>> {
        let repo = self.repo(service)?;
        let listed = repo.branches().await?;
        Ok(listed
            .into_iter()
            .map(|(branch, commit)| BranchHead {
                repo: service.to_string(),
                branch,
                commit,
            })
            .collect())
    }

    /// Runs one action.
    pub async fn run(&self, action: Action, deployment: Option<String>, out: &Outbox) -> Result<()> {
        use std::sync::atomic::Ordering::SeqCst;
        /// Counts the action out however it ends: also when it is abandoned (its future dropped) by a stop.
        struct Busy<'a>(&'a Executor);
        impl Drop for Busy<'_> {
            fn drop(&mut self) {
                self.0.generation.fetch_add(1, SeqCst);
                self.0.busy.fetch_sub(1, SeqCst);
            }
        }
        self.busy.fetch_add(1, SeqCst);
        self.generation.fetch_add(1, SeqCst);
        let _busy = Busy(self);
        self.run_action(action, deployment, out).await
    }

    /// A report for the periodic scan: `None` when an action ran during the scan (its own report, sent when it
    /// ends, is the one that counts).
    pub async fn quiet_report(&self) -> Option<Result<ActualState>> {
        use std::sync::atomic::Ordering::SeqCst;
        let before = self.generation.load(SeqCst);
        if self.busy.load(SeqCst) > 0 {
            return None;
        }
        let report = self.report().await;
        (self.busy.load(SeqCst) == 0 && self.generation.load(SeqCst) == before).then_some(report)
    }

    async fn run_action(&self, action: Action, deployment: Option<String>, out: &Outbox) -> Result<()> {
        check_action(&action)?;
        match action {
            Action::EnsureNetwork { sandbox } => self.engine.ensure_network(&sandbox).await,
            Action::DeployService(d) | Action::DeployGateway(d) => self.deploy(&d, deployment, out).await,
            Action::SetRoutes { sandbox, routes } => self.set_routes(&sandbox, &routes).await,
            Action::Stop { container } => self.engine.stop(&container).await,
            Action::RemoveContainer { container } => self.engine.remove(&container).await,
            Action::RemoveNetwork { sandbox } => self.engine.remove_network(&sandbox).await,
            Action::RemoveWorktree { sandbox, service } => {
                let repo = self.repo(&service)?;
                let dir = self.config.worktree(&sandbox, &service);
                let lock = self.repo_lock(&service).await;
                let _guard = lock.lock().await;
                repo.remove_worktree(&dir).await?;
                let _ = std::fs::remove_file(self.meta_path(&sandbox, &service));
                let _ = std::fs::remove_dir_all(self.binary_dir(&sandbox, &service));
                let _ = std::fs::remove_dir_all(self.files_dir(&sandbox, &service));
                Ok(())
            }
        }
    }

    async fn deploy(&self, d: &Deploy, deployment: Option<String>, out: &Outbox) -> Result<()> {
        let id = deployment.clone().unwrap_or_default();
        let stage = StageClock {
            out: out.clone(),
            id: id.clone(),
        };
        let repo = self.repo(&d.service)?;
        let dir = self.config.worktree(&d.sandbox, &d.service);
        let lock = self.repo_lock(&d.service).await;

        // Fetch and check out the exact commit.
        let commit = {
            let _guard = lock.lock().await;
            let started = stage.start(Stage::Fetch).await;
            if let Some(c) = d.commit.as_deref().filter(|c| !is_commit_id(c)) {
                bail!("the reconciler asked for commit {c:?}, which is not a commit id");
            }
            let fetched = match repo.fetch().await {
                Ok(()) => match &d.commit {
                    Some(c) => repo.ensure_commit(c).await.map(|()| c.clone()),
                    None => repo.head(&d.branch).await,
                },
                Err(e) => Err(e),
            };
            let commit = stage.end(Stage::Fetch, started, fetched).await?;
            let started = stage.start(Stage::Checkout).await;
            let checked = repo.checkout(&dir, &commit).await;
            stage.end(Stage::Checkout, started, checked).await?;
            commit
        };
        let mut meta = self.meta(&d.sandbox, &d.service).unwrap_or_default();
        meta.branch = d.branch.clone();
        meta.commit = commit.clone();
        self.set_meta(&d.sandbox, &d.service, &meta)?;

        // A Go service only reads its worktree (its binary is built on the host): read-only. The gateway's
        // CodeIgniter writes its cache and logs under the worktree. Either way the worktree holds no git dir the
        // agent trusts (see `Repo::checkout`).
        let mode = if self.config.role == Role::Micro { ":ro" } else { "" };
        let mut binds = vec![format!(
            "{}:{}{mode}",
            dir.display(),
            self.config.mount_point().display()
        )];
        let cmd;
        match self.config.role {
            Role::Micro => {
                let bin_dir = self.binary_dir(&d.sandbox, &d.service);
                let binary = bin_dir.join("app");
                let key = build_key(&commit, d.build.as_ref(), &self.config);
                if meta.built.as_deref() == Some(key.as_str()) && binary.exists() {
                    stage
                        .skip(Stage::Build, "already built at this commit with these settings")
                        .await;
                } else {
                    let started = stage.start(Stage::Build).await;
                    let built = self.go_build(&dir, &binary, d.build.as_ref(), &id, out).await;
                    stage.end(Stage::Build, started, built).await?;
                    meta.built = Some(key);
                    self.set_meta(&d.sandbox, &d.service, &meta)?;
                }
                binds.push(format!("{}:/sdp-bin:ro", bin_dir.display()));
                cmd = Some(match &self.config.command {
                    Some(c) => c.iter().map(|a| a.replace("{binary}", "/sdp-bin/app")).collect(),
                    None => vec!["/sdp-bin/app".to_string()],
                });
            }
            Role::Gateway => {
                let started = stage.start(Stage::Composer).await;
                let composed = self.composer(&dir, &id, out).await;
                match composed {
                    Ok(true) => stage.end(Stage::Composer, started, Ok(())).await?,
                    Ok(false) => {
                        stage
                            .skip(Stage::Composer, "no composer.json, or composer is not installed")
                            .await
                    }
                    Err(e) => stage.end(Stage::Composer, started, Err(e)).await?,
                }
                // The OCP values: what this commit's own config.php holds, before any patch.
                let pristine = repo.show(&commit, &self.config.config_php).await.unwrap_or_default();
                let defaults = routes::routes(&pristine);
                let path = self.defaults_path(&d.branch);
                std::fs::create_dir_all(path.parent().expect("has a parent"))?;
                files::write_atomically(&path, serde_json::to_string(&defaults)?.as_bytes())?;
                cmd = self.config.command.clone();
            }
        }

        let started = stage.start(Stage::Start).await;
        match self.write_files(&d.sandbox, &d.service, &dir, &d.files).await {
            Ok(mounts) => binds.extend(mounts),
            Err(e) => return stage.end(Stage::Start, started, Err(e)).await,
        }
        let mut env: Vec<String> = d.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
        env.push(format!("PORT={}", self.config.container_port()));
        if self.config.role == Role::Gateway {
            env.push(format!(
                "APACHE_DOCUMENT_ROOT={}",
                self.config.document_root().display()
            ));
        }
        env.push(format!("SDP_SANDBOX={}", d.sandbox));
        env.push(format!("SDP_BRANCH={}", d.branch));
        env.push(format!("SDP_COMMIT={commit}"));
        for (name, file) in &d.secret_files {
            // Read now, off the async threads, and sent nowhere but into the container.
            let (dir, n, f) = (self.config.secrets_dir.clone(), name.clone(), file.clone());
            let value = tokio::task::spawn_blocking(move || crate::secrets::read(&dir, &n, &f))
                .await
                .map_err(anyhow::Error::from)
                .and_then(|r| r);
            match value {
                Ok(v) => env.push(format!("{name}={v}")),
                Err(e) => {
                    let e = e.context(format!("on node {}", self.config.node));
                    return stage.end(Stage::Start, started, Err(e)).await;
                }
            }
        }
        let mut labels = d.labels.clone();
        labels.insert(labels::COMMIT.into(), commit.clone());
        labels.insert(labels::INSTALLATION.into(), self.engine.installation());
        let spec = Spec {
            name: d.container.clone(),
            image: self.config.image.clone(),
            cmd,
            env,
            labels,
            binds,
            host_port: d.host_port,
            container_port: self.config.container_port(),
            network: network_name(&d.sandbox),
            cpus: d.cpus,
            memory_bytes: d.memory_bytes,
            working_dir: Some(self.config.mount_point().display().to_string()),
        };
        let result = self.engine.replace(spec).await.map(|_| ());
        stage.end(Stage::Start, started, result).await
    }

    /// `go build` of the service's package into `binary`: static, offline, from `vendor/` when the repo has
    /// one, else from the module cache or proxy that the operator's `goEnv` names.
    async fn go_build(&self, dir: &Path, binary: &Path, build: Option<&GoBuild>, id: &str, out: &Outbox) -> Result<()> {
        std::fs::create_dir_all(binary.parent().expect("has a parent"))?;
        let default = GoBuild::default();
        let build = build.unwrap_or(&default);
        let args = go_build_args(build, dir.join("vendor/modules.txt").is_file())?;
        // go follows links: one out of the worktree would build (or quote in its errors) a file of the VM.
        let root = dir.to_path_buf();
        if let Some(link) = tokio::task::spawn_blocking(move || files::link_leaving(&root)).await?? {
            bail!(
                "the branch has a symbolic link {} that leads out of the repository: SDP does not build it",
                link.display()
            );
        }
        // Built beside the binary and moved over it once whole: the running container's binary is never half
        // written (a build killed at a deadline or by a stop leaves only `app.new`, rebuilt next time).
        let fresh = binary.with_extension("new");
        let mut cmd = tokio::process::Command::new(&self.config.go);
        cmd.current_dir(dir)
            .args(&args[..1])
            .arg("-o")
            .arg(&fresh)
            .args(&args[1..]);
        for (key, value) in go_env(&self.config) {
            cmd.env(key, value);
        }
        // Inherited settings of the agent's own environment never decide a build: only SDP's and the operator's.
        for key in ["GOFLAGS", "GOENV", "GOWORK"] {
            if !self.config.go_env.contains_key(key) {
                cmd.env_remove(key);
            }
        }
        let what = format!("go build {}", build.package);
        run_streamed(cmd, &what, DEADLINES.build, id, out)
            .await
            .map_err(|e| anyhow::anyhow!("{}", first_go_error(&what, &e)))?;
        std::fs::rename(&fresh, binary).with_context(|| format!("cannot move the built binary to {}", binary.display()))
    }

    /// Writes an Environment's `files:` for one container under the data dir (fresh at each deploy) and returns
    /// their read-only mounts, at their paths under the container's working directory. Off the async threads:
    /// each file is synced to disk.
    async fn write_files(
        &self,
        sandbox: &str,
        service: &str,
        worktree: &Path,
        files: &BTreeMap<String, String>,
    ) -> Result<Vec<String>> {
        let root = self.files_dir(sandbox, service);
        let (worktree, files, mount_point) = (worktree.to_path_buf(), files.clone(), self.config.mount_point());
        tokio::task::spawn_blocking(move || write_files(&root, &worktree, &mount_point, &files)).await?
    }

    /// `composer install` when composer and composer.json are there: Ok(false) when skipped.
    async fn composer(&self, dir: &Path, id: &str, out: &Outbox) -> Result<bool> {
        if !dir.join("composer.json").exists() || which(&self.config.composer).is_none() {
            return Ok(false);
        }
        // Where composer writes is decided here, not by the branch's composer.json (`config.vendor-dir` or
        // `bin-dir` could name any folder of the VM, a folder on PATH among them).
        files::no_links(dir, Path::new("vendor"))?;
        let mut cmd = tokio::process::Command::new(&self.config.composer);
        cmd.current_dir(dir)
            .args(["install", "--no-dev", "--no-interaction", "--no-progress"])
            .env("COMPOSER_HOME", self.config.data_dir.join("composer"))
            .env("COMPOSER_VENDOR_DIR", dir.join("vendor"))
            .env("COMPOSER_BIN_DIR", dir.join("vendor/bin"))
            .env("COMPOSER_CACHE_DIR", self.config.data_dir.join("composer-cache"));
        if !self.config.composer_scripts {
            // The branch's scripts and plugins would run here, on the VM: only with the operator's consent.
            cmd.args(["--no-scripts", "--no-plugins"]);
        }
        run_streamed(cmd, "composer install", DEADLINES.build, id, out).await?;
        Ok(true)
    }

    /// Sets the sandbox's routes in its gateway's config.php: the file of the deployed commit, byte for byte, with
    /// only the `<service>_url` values of `wanted` changed. Every other key (`base_url`, keys left on OCP, values
    /// that are empty or not URLs) keeps the branch's own bytes, and a hand edit of the live file is undone.
    async fn set_routes(&self, sandbox: &str, wanted: &BTreeMap<String, String>) -> Result<()> {
        let meta = self
            .meta(sandbox, GATEWAY)
            .with_context(|| format!("the gateway of {sandbox} is not deployed on this node"))?;
        let worktree = self.config.worktree(sandbox, GATEWAY);
        let path = worktree.join(&self.config.config_php);
        // The folders on the way are the branch's and the container's: none is ever followed as a link, also when
        // one is swapped while the agent works (files.rs reaches the folder by descriptor). The file itself may be
        // anything (a container may have replaced it); it is replaced, never followed.
        files::open_dir_beneath(&worktree, self.config.config_php.parent().unwrap_or(Path::new("")))?;
        let live = files::read_capped(&worktree, &self.config.config_php, MAX_CONFIG_PHP).ok();
        let repo = self.repo(GATEWAY)?;
        let pristine = repo
            .show(&meta.commit, &self.config.config_php)
            .await
            .with_context(|| format!("cannot read config.php of the deployed commit {}", meta.commit))?;
        let patched = routes::patch(&pristine, wanted).map_err(anyhow::Error::msg)?;
        if live.as_deref() == Some(patched.as_str()) {
            return Ok(());
        }
        let container = sdp_protocol::container_name(sandbox, GATEWAY);
        files::write_beneath(&worktree, &self.config.config_php, patched.as_bytes())?;
        if let Err(e) = self.php_lint(&container, &path).await {
            // Put the file back as it was: a gateway never runs a file that does not parse.
            if let Some(live) = &live {
                files::write_beneath(&worktree, &self.config.config_php, live.as_bytes())?;
            }
            return Err(e);
        }
        self.reload(&container).await?;
        let back = routes::routes(&files::read_capped(&worktree, &self.config.config_php, MAX_CONFIG_PHP)?);
        let wrong: Vec<&String> = wanted
            .iter()
            .filter(|(k, v)| back.get(*k) != Some(v))
            .map(|(k, _)| k)
            .collect();
        if !wrong.is_empty() {
            bail!("config.php did not take the routes of {wrong:?}");
        }
        Ok(())
    }

    /// `php -l` of the patched file: on the host when php is there, else in the gateway's container.
    async fn php_lint(&self, container: &str, path: &Path) -> Result<()> {
        let output = if which(Path::new("php")).is_some() {
            let mut php = tokio::process::Command::new("php");
            php.arg("-l").arg(path);
            command::output(php, "php -l", DEADLINES.short).await?
        } else {
            let inside = self.config.mount_point().join(&self.config.config_php);
            let mut exec = tokio::process::Command::new("docker");
            exec.args(["exec", container, "php", "-l"]).arg(inside);
            // Killing `docker exec` does not stop what it started in the container; a wedged container is the
            // health checks' business, the action ends either way.
            command::output(exec, "docker exec php -l", DEADLINES.short).await?
        };
        if !output.status.success() {
            bail!(
                "php -l refused the patched config.php: {}",
                String::from_utf8_lossy(&output.stdout).trim()
            );
        }
        Ok(())
    }

    async fn reload(&self, container: &str) -> Result<()> {
        if self.config.reload.is_empty() {
            return Ok(());
        }
        let mut exec = tokio::process::Command::new("docker");
        exec.arg("exec").arg(container).args(&self.config.reload);
        let output = command::output(exec, "the gateway's reload", DEADLINES.short).await?;
        if !output.status.success() {
            bail!(
                "reloading the gateway ({}) failed: {}",
                self.config.reload.join(" "),
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        Ok(())
    }
}

/// `Executor::write_files` on a blocking thread.
fn write_files(
    root: &Path,
    worktree: &Path,
    mount_point: &Path,
    files: &BTreeMap<String, String>,
) -> Result<Vec<String>> {
    if root.exists() {
        std::fs::remove_dir_all(root).with_context(|| format!("cannot clear {}", root.display()))?;
    }
    let mut mounts = Vec::new();
    for (path, content) in files {
        // Checked again here: a frame is not trusted to carry only what the manifest allowed.
        sdp_manifest::rules::relative_file(path).map_err(|b| anyhow::anyhow!("{}", b.message))?;
        let host = root.join(path);
        std::fs::create_dir_all(host.parent().expect("a file under the root has a parent"))?;
        files::write_atomically(&host, content.as_bytes())?;
        files::mount_point_in(worktree, path)?;
        let inside = mount_point.join(path);
        mounts.push(format!("{}:{}:ro", host.display(), inside.display()));
    }
    Ok(mounts)
}

/// Sends Progress frames with timings.
struct StageClock {
    out: Outbox,
    id: String,
}

impl StageClock {
    async fn progress(&self, stage: Stage, state: StageState, elapsed_ms: u64) {
        if self.id.is_empty() {
            return;
        }
        self.out
            .send(AgentFrame::Progress(Progress {
                deployment_id: self.id.clone(),
                stage,
                state,
                elapsed_ms,
            }))
            .await;
    }

    async fn start(&self, stage: Stage) -> Instant {
        self.out.log(Some(self.id.clone()), None, format!("{stage:?} started"));
        self.progress(stage, StageState::Started, 0).await;
        Instant::now()
    }

    async fn end<T>(&self, stage: Stage, started: Instant, result: Result<T>) -> Result<T> {
        let ms = started.elapsed().as_millis() as u64;
        let state = if result.is_ok() {
            StageState::Succeeded
        } else {
            StageState::Failed
        };
        self.progress(stage, state, ms).await;
        let line = match &result {
            Ok(_) => format!("{stage:?} succeeded in {ms} ms"),
            Err(e) => format!("{stage:?} failed after {ms} ms: {e:#}"),
        };
        self.out.log(Some(self.id.clone()), None, line);
        result
    }

    async fn skip(&self, stage: Stage, why: &str) {
        self.out
            .log(Some(self.id.clone()), None, format!("{stage:?} skipped: {why}"));
        self.progress(stage, StageState::Skipped, 0).await;
    }
}

/// A command that ran and failed: its first and last lines of error output (all of it went to the log).
#[derive(Debug)]
struct CommandFailed {
    what: String,
    status: std::process::ExitStatus,
    head: Vec<String>,
    tail: Vec<String>,
}

impl std::fmt::Display for CommandFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} failed ({}): {}", self.what, self.status, self.tail.join(" / "))
    }
}

impl std::error::Error for CommandFailed {}

/// Lines of a failed command's error output kept for its message, from the start and from the end.
const KEPT_LINES: usize = 20;

/// Runs a command within `limit`, its output streamed line by line as the deployment's log.
async fn run_streamed(
    mut cmd: tokio::process::Command,
    what: &str,
    limit: std::time::Duration,
    id: &str,
    out: &Outbox,
) -> Result<()> {
    cmd.stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = command::Child::spawn(cmd, what)?;
    let stdout = child.stdout().expect("piped");
    let stderr = child.stderr().expect("piped");
    let id = (!id.is_empty()).then(|| id.to_string());
    let pump = |stream: Box<dyn tokio::io::AsyncRead + Unpin + Send>| {
        let out = out.clone();
        let id = id.clone();
        tokio::spawn(async move {
            let mut stream = stream;
            let (mut head, mut tail) = (Vec::new(), std::collections::VecDeque::new());
            let mut keep = |line: String| {
                out.log(id.clone(), None, line.clone());
                if head.len() < KEPT_LINES {
                    head.push(line.clone());
                }
                tail.push_back(line);
                if tail.len() > KEPT_LINES {
                    tail.pop_front();
                }
            };
            let (mut lines, mut buffer) = (Lines::default(), vec![0; 8192]);
            while let Ok(n @ 1..) = stream.read(&mut buffer).await {
                lines.push(&buffer[..n], &mut keep);
            }
            if let Some(last) = lines.finish() {
                keep(last);
            }
            (head, Vec::from(tail))
        })
    };
    let a = pump(Box::new(stdout));
    let b = pump(Box::new(stderr));
    // Past the deadline the whole group is killed: the build does not go on behind the agent's back.
    let status = child.wait(limit).await?;
    let _ = a.await;
    let (head, tail) = b.await.unwrap_or_default();
    if !status.success() {
        return Err(CommandFailed {
            what: what.to_string(),
            status,
            head,
            tail,
        }
        .into());
    }
    Ok(())
}

/// The largest config.php read (CodeIgniter's is about 20 KB).
const MAX_CONFIG_PHP: u64 = 1 << 20;

/// A commit id as git prints it: 7 to 64 hex digits (never an option, never a path).
fn is_commit_id(id: &str) -> bool {
    (7..=64).contains(&id.len()) && id.bytes().all(|c| c.is_ascii_hexdigit())
}

/// `go build`'s arguments after `build` and before `-o BINARY` goes in at 1: checked again here (a frame is not
/// trusted to carry only what the manifest allowed), vendored code when the repo has `vendor/modules.txt`.
fn go_build_args(build: &GoBuild, vendored: bool) -> Result<Vec<String>> {
    let refuse = |b: rules::Broken| anyhow::anyhow!("{}", b.message);
    rules::go_package(&build.package).map_err(refuse)?;
    let mut args = vec!["build".to_string(), "-trimpath".into(), "-buildvcs=false".into()];
    if vendored {
        args.push("-mod=vendor".into());
    }
    if !build.tags.is_empty() {
        for tag in &build.tags {
            rules::build_tag(tag).map_err(refuse)?;
        }
        args.push(format!("-tags={}", build.tags.join(",")));
    }
    if let Some(flags) = &build.ldflags {
        rules::ldflags(flags).map_err(refuse)?;
        args.push(format!("-ldflags={flags}"));
    }
    args.push(build.package.clone());
    Ok(args)
}

/// What a binary is built from: the commit, the package, tags and flags, and Go's environment.
fn build_key(commit: &str, build: Option<&GoBuild>, config: &AgentConfig) -> String {
    let env: Vec<String> = go_env(config).into_iter().map(|(k, v)| format!("{k}={v}")).collect();
    format!("{commit} {build:?} {}", env.join(" "))
}

/// Go's environment for a build: SDP's offline defaults, then the operator's `goEnv` on top.
pub fn go_env(config: &AgentConfig) -> BTreeMap<String, String> {
    let data = &config.data_dir;
    let mut env: BTreeMap<String, String> = [
        ("CGO_ENABLED", "0".to_string()),
        ("GOTOOLCHAIN", "local".into()),
        ("GOPROXY", "off".into()),
        ("GOSUMDB", "off".into()),
        (
            "GOCACHE",
            config
                .go_cache
                .clone()
                .unwrap_or_else(|| data.join("go-cache"))
                .display()
                .to_string(),
        ),
        ("GOPATH", data.join("go").display().to_string()),
        ("HOME", data.display().to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    env.extend(config.go_env.clone());
    env
}

/// A failed build's message: go's first error line (`# package` headers and `go: downloading` notes skipped);
/// the whole output is in the deployment log.
fn first_go_error(what: &str, error: &anyhow::Error) -> String {
    let first = error.downcast_ref::<CommandFailed>().and_then(|failed| {
        failed
            .head
            .iter()
            .map(|l| l.trim())
            .find(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with("go: downloading "))
    });
    match first {
        Some(line) => format!("{what} failed: {line} (go's whole output is in the deployment log)"),
        None => format!("{error:#}"),
    }
}

fn read_dir_names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter_map(|e| e.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// The program's path if it can be run.
pub fn which(program: &Path) -> Option<PathBuf> {
    if program.components().count() > 1 {
        return program.exists().then(|| program.to_path_buf());
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join(program))
            .find(|p| p.is_file())
    })
}

/// The names in an action, checked as the manifest checks them before anything is done: they become paths
/// (worktrees, builds, files) and Docker names, so a reconciler, or whoever holds the agent token, that sends
/// `../../victim` gets a refusal, not a path out of the data dir.
fn check_action(action: &Action) -> Result<()> {
    let refuse = |b: rules::Broken| anyhow::anyhow!("refused: {}", b.message);
    let sandbox = |name: &str| rules::object_name("sandbox", name).map_err(refuse);
    let service = |name: &str| {
        if name == GATEWAY {
            Ok(())
        } else {
            rules::service_name(name).map_err(refuse)
        }
    };
    let container = |name: &str| {
        let rest = name.strip_prefix("sandbox-").unwrap_or_default();
        let ok = !rest.is_empty()
            && rest.len() <= 72
            && rest
                .bytes()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-');
        if ok {
            Ok(())
        } else {
            let shown: String = name
                .chars()
                .take(80)
                .map(|c| if c.is_control() { '?' } else { c })
                .collect();
            Err(anyhow::anyhow!(
                "refused: `{shown}` is not the name of a sandbox's container"
            ))
        }
    };
    match action {
        Action::EnsureNetwork { sandbox: s } | Action::RemoveNetwork { sandbox: s } => sandbox(s),
        Action::Stop { container: c } | Action::RemoveContainer { container: c } => container(c),
        Action::RemoveWorktree { sandbox: s, service: v } => sandbox(s).and_then(|_| service(v)),
        Action::SetRoutes { sandbox: s, routes } => {
            sandbox(s)?;
            for (key, url) in routes {
                service(key)?;
                rules::route_url(url).map_err(refuse)?;
            }
            Ok(())
        }
        Action::DeployService(d) | Action::DeployGateway(d) => {
            sandbox(&d.sandbox)?;
            service(&d.service)?;
            if d.container != sdp_protocol::container_name(&d.sandbox, &d.service) {
                bail!(
                    "refused: a deploy of {}/{} names container `{}`",
                    d.sandbox,
                    d.service,
                    d.container
                );
            }
            rules::branch(&d.branch).map_err(refuse)?;
            rules::port(u32::from(d.host_port)).map_err(refuse)?;
            for key in d.env.keys().chain(d.secret_files.keys()) {
                rules::env_var_name(key).map_err(refuse)?;
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_would_leave_the_data_dir_or_name_another_container_are_refused() {
        let deploy = |sandbox: &str, service: &str, container: &str| {
            Action::DeployService(Box::new(sdp_protocol::Deploy {
                sandbox: sandbox.into(),
                service: service.into(),
                branch: "main".into(),
                commit: None,
                container: container.into(),
                host_port: 9001,
                env: BTreeMap::new(),
                secret_files: BTreeMap::new(),
                files: BTreeMap::new(),
                cpus: None,
                memory_bytes: None,
                labels: BTreeMap::new(),
                build: None,
            }))
        };
        assert!(check_action(&deploy("box", "account", "sandbox-box-account")).is_ok());
        assert!(check_action(&deploy("box", "gateway", "sandbox-box-gateway")).is_ok());
        for hostile in [
            Action::RemoveWorktree {
                sandbox: "../../victim".into(),
                service: "account".into(),
            },
            Action::RemoveWorktree {
                sandbox: "box".into(),
                service: "../account".into(),
            },
            Action::EnsureNetwork { sandbox: "Box".into() },
            Action::RemoveNetwork { sandbox: "".into() },
            Action::RemoveContainer {
                container: "bystander".into(),
            },
            Action::Stop {
                container: "sandbox-../x".into(),
            },
            Action::SetRoutes {
                sandbox: "box".into(),
                routes: [("account".into(), "http://x'; system('id');".into())].into(),
            },
            deploy("box", "account", "bystander"),
            deploy("a/b", "account", "sandbox-a/b-account"),
        ] {
            let e = check_action(&hostile).unwrap_err();
            assert!(e.to_string().starts_with("refused: "), "{hostile:?}: {e}");
        }
    }

    fn build(package: &str) -> GoBuild {
        GoBuild {
            package: package.into(),
            ..GoBuild::default()
        }
    }

    #[test]
    fn go_builds_from_vendor_when_the_repo_has_it_with_the_manifests_package_tags_and_flags() {
        let plain = go_build_args(&build("."), false).unwrap();
        assert_eq!(plain, ["build", "-trimpath", "-buildvcs=false", "."]);
        let full = GoBuild {
            package: "./cmd/payment".into(),
            tags: vec!["netgo".into(), "osusergo".into()],
            ldflags: Some("-s -w -X main.version=1.2".into()),
        };
        let args = go_build_args(&full, true).unwrap();
        assert_eq!(
            args,
            [
                "build",
                "-trimpath",
                "-buildvcs=false",
                "-mod=vendor",
                "-tags=netgo,osusergo",
                "-ldflags=-s -w -X main.version=1.2",
                "./cmd/payment"
            ]
        );
    }

    #[test]
    fn a_frame_cannot_smuggle_what_the_manifest_refuses() {
        for bad in [build("../x"), build("-toolexec=sh"), build("/etc")] {
            assert!(go_build_args(&bad, false).is_err(), "{bad:?}");
        }
        let flags = GoBuild {
            ldflags: Some("-linkmode=external -extld=/tmp/x".into()),
            ..build(".")
        };
        assert!(go_build_args(&flags, false).is_err());
        let tags = GoBuild {
            tags: vec!["a -toolexec=sh".into()],
            ..build(".")
        };
        assert!(go_build_args(&tags, false).is_err());
    }

    #[test]
    fn the_operators_go_env_goes_on_top_of_offline_defaults() {
        let text = "node: m\nrole: micro\nreconciler: ws://127.0.0.1:1/ws/agent\ntokenFile: /t\naddress: 127.0.0.1\nimage: i\ndataDir: /var/lib/sdp-agent\n";
        let config = AgentConfig::parse(Path::new("a.yaml"), text).unwrap();
        let env = go_env(&config);
        assert_eq!(env["GOPROXY"], "off");
        assert_eq!(env["CGO_ENABLED"], "0");
        assert_eq!(env["GOPATH"], "/var/lib/sdp-agent/go");
        assert!(
            !env.contains_key("GOFLAGS"),
            "go decides -mod itself (vendor/ or the module cache)"
        );
        let text = format!("{text}goEnv: {{ GOPROXY: 'file:///srv/goproxy', GOMODCACHE: /srv/gomodcache }}\n");
        let config = AgentConfig::parse(Path::new("a.yaml"), &text).unwrap();
        let env = go_env(&config);
        assert_eq!(env["GOPROXY"], "file:///srv/goproxy");
        assert_eq!(env["GOMODCACHE"], "/srv/gomodcache");
    }

    #[test]
    fn a_failed_build_says_gos_first_error() {
        let status = std::process::Command::new("false").status().unwrap();
        let failed = anyhow::Error::from(CommandFailed {
            what: "go build ./cmd/payment".into(),
            status,
            head: vec![
                "go: downloading example.com/greet v1.2.0".into(),
                "# example.com/payment/cmd/payment".into(),
                "cmd/payment/main.go:11:2: module lookup disabled by GOPROXY=off".into(),
            ],
            tail: vec!["last".into()],
        });
        let message = first_go_error("go build ./cmd/payment", &failed);
        assert_eq!(
            message,
            "go build ./cmd/payment failed: cmd/payment/main.go:11:2: module lookup disabled by GOPROXY=off \
             (go's whole output is in the deployment log)"
        );
    }
}
