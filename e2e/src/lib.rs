//! A harness for end-to-end tests against the real Docker engine, git and Go: temp config repos and service
//! repos, the `sdp` and `sdp-agent` binaries as processes, the reconciler's API, and cleanup of everything a test
//! made (by its sandbox's labels, so nothing else on the engine is touched).

pub mod webdriver;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The image tests run services on: a static busybox, imported offline.
pub const RUNTIME_IMAGE: &str = "sdp-demo/busybox:latest";

/// Runs a command, panicking with its output when it fails.
pub fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

pub fn git(dir: &Path, args: &[&str]) -> String {
    run(Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_AUTHOR_NAME", "Ann Tester")
        .env("GIT_AUTHOR_EMAIL", "ann@example.com")
        .env("GIT_COMMITTER_NAME", "Ann Tester")
        .env("GIT_COMMITTER_EMAIL", "ann@example.com"))
}

/// The workspace's `target/debug`, with `sdp` and `sdp-agent` built from the current sources: `cargo test -p
/// sdp-e2e` alone does not build other packages' binaries, so the harness asks cargo once per test binary (a
/// no-op when they are up to date).
pub fn binaries() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let exe = std::env::current_exe().expect("the test binary has a path");
        let dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("tests run from target/<profile>/deps")
            .to_path_buf();
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut build = Command::new(cargo);
        build.current_dir(env!("CARGO_MANIFEST_DIR")).args([
            "build",
            "-q",
            "-p",
            "sdp-reconciler",
            "-p",
            "sdp-agent",
            "--bins",
        ]);
        // Benchmarks run from target/release: they measure release binaries.
        if dir.ends_with("release") {
            build.arg("--release");
        }
        run(&mut build);
        dir
    })
}

/// The gateway's image in tests: Apache with mod_php on a Debian rootfs from mmdebstrap, standing in for
/// php:8.3-apache (`reconciler/demo/images/php.sh` says what it does not cover).
pub const PHP_IMAGE: &str = sdp_reconciler::demo::PHP_IMAGE;

fn ensure_image(image: &str, script: &str) {
    let present = Command::new("docker")
        .args(["image", "inspect", image])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !present {
        let script = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../reconciler/demo/images")
            .join(script);
        run(Command::new("bash").arg(script).arg(image));
    }
}

/// Makes the runtime image once per machine.
pub fn runtime_image() -> &'static str {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| ensure_image(RUNTIME_IMAGE, "busybox.sh"));
    RUNTIME_IMAGE
}

/// Makes the gateway image once per machine (about a minute the first time).
pub fn php_image() -> &'static str {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| ensure_image(PHP_IMAGE, "php.sh"));
    PHP_IMAGE
}

/// The host's address on Docker's default bridge: what containers on any SDP network reach published ports at,
/// as the gateway VM reaches the micro VM (the demo's own answer).
pub use sdp_reconciler::demo::docker_host_ip;

/// A gateway repository whose config.php sends `services` to `ocp_url` (the branch's OCP values).
pub fn gateway_repo(dir: &Path, branch: &str, services: &[&str], ocp_url: &str) -> ServiceRepo {
    let work = dir.join("gateway-work");
    std::fs::create_dir_all(work.join("application/config/production")).unwrap();
    git(&work, &["init", "-q", "-b", branch]);
    let mut php = sdp_reconciler::demo::ocp_config_php(services, ocp_url);
    php.push_str("$config['log_threshold'] = 1;\n");
    std::fs::write(work.join("application/config/production/config.php"), php).unwrap();
    for (path, text) in sdp_reconciler::demo::gateway_files() {
        std::fs::write(work.join(path), text).unwrap();
    }
    git(&work, &["add", "-A"]);
    git(&work, &["commit", "-qm", "gateway"]);
    let origin = dir.join("gateway.git");
    run(Command::new("git")
        .args(["clone", "-q", "--bare"])
        .arg(&work)
        .arg(&origin));
    let clone = dir.join("gateway-agent");
    run(Command::new("git").args(["clone", "-q"]).arg(&origin).arg(&clone));
    ServiceRepo { origin, clone }
}

/// A stand-in for OCP: busybox httpd answering `ocp <service>` under `/<service>/`, published on a host port.
pub struct OcpStandIn {
    pub name: String,
    pub port: u16,
}

impl OcpStandIn {
    pub fn start(services: &[&str]) -> OcpStandIn {
        let name = format!("sdp-test-ocp-{}", suffix());
        let port = free_port();
        let script = sdp_reconciler::demo::ocp_stand_in_script(services);
        run(Command::new("docker").args([
            "run",
            "-d",
            "--name",
            &name,
            "-p",
            &format!("{port}:8080"),
            runtime_image(),
            "sh",
            "-c",
            &script,
        ]));
        OcpStandIn { name, port }
    }
}

impl Drop for OcpStandIn {
    fn drop(&mut self) {
        let _ = Command::new("docker").args(["rm", "-f", &self.name]).output();
    }
}

/// A free TCP port on 127.0.0.1 (free when asked; tests use it at once).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A short random suffix for names, so that runs never collide.
pub fn suffix() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    format!("{:06x}", h.finish() & 0xff_ffff)
}

/// Polls `check` until it gives `Some`, at most `limit`; panics with `what` and the last state otherwise.
pub fn wait_for<T>(what: &str, limit: Duration, mut check: impl FnMut() -> Result<T, String>) -> T {
    let start = Instant::now();
    let mut last = String::new();
    while start.elapsed() < limit {
        match check() {
            Ok(v) => return v,
            Err(state) => last = state,
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!("timed out after {limit:?} waiting for {what}; last: {last}");
}

/// A Go service's repository: a bare origin with one branch, and the clone an agent is configured with.
pub struct ServiceRepo {
    pub origin: PathBuf,
    pub clone: PathBuf,
}

/// The source of a tiny Go HTTP service that says who and which branch and commit it is.
pub const GO_SERVICE: &str = include_str!("../../reconciler/demo/service.go");

impl ServiceRepo {
    /// `name`'s repo under `dir` with `branch` holding the Go service.
    pub fn new(dir: &Path, name: &str, branch: &str) -> ServiceRepo {
        let work = dir.join(format!("{name}-work"));
        std::fs::create_dir_all(&work).unwrap();
        git(&work, &["init", "-q", "-b", branch]);
        std::fs::write(work.join("go.mod"), format!("module {name}\n\ngo 1.19\n")).unwrap();
        std::fs::write(work.join("main.go"), GO_SERVICE).unwrap();
        std::fs::write(
            work.join("name.go"),
            format!("package main\n\nconst NAME = \"{name}\"\n"),
        )
        .unwrap();
        git(&work, &["add", "-A"]);
        git(&work, &["commit", "-qm", "service"]);
        ServiceRepo::from_work(dir, name, &work)
    }

    /// `name`'s bare origin ("Bitbucket") and agent clone under `dir`, made from the commits of `work`.
    pub fn from_work(dir: &Path, name: &str, work: &Path) -> ServiceRepo {
        let origin = dir.join(format!("{name}.git"));
        run(Command::new("git")
            .args(["clone", "-q", "--bare"])
            .arg(work)
            .arg(&origin));
        let clone = dir.join(format!("{name}-agent"));
        run(Command::new("git").args(["clone", "-q"]).arg(&origin).arg(&clone));
        ServiceRepo { origin, clone }
    }

    /// Commits a change to `branch` of the origin (as a developer's push; a new branch starts from the default
    /// branch); returns the new commit.
    pub fn push(&self, branch: &str, file: &str, text: &str) -> String {
        let work = self.origin.with_extension("push");
        if !work.exists() {
            run(Command::new("git").args(["clone", "-q"]).arg(&self.origin).arg(&work));
        }
        git(&work, &["fetch", "-q", "origin"]);
        // A new branch starts from the default branch's head.
        let remote = format!("origin/{branch}");
        let exists = Command::new("git")
            .arg("-C")
            .arg(&work)
            .args(["rev-parse", "--verify", "-q", &remote])
            .output()
            .is_ok_and(|o| o.status.success());
        let start = if exists { remote } else { "origin/HEAD".to_string() };
        git(&work, &["checkout", "-q", "-B", branch, &start]);
        std::fs::write(work.join(file), text).unwrap();
        git(&work, &["add", "-A"]);
        git(&work, &["commit", "-qm", "change"]);
        git(&work, &["push", "-q", "origin", branch]);
        git(&work, &["rev-parse", "HEAD"])
    }
}

/// A git smart-HTTP server with basic auth for one user on 127.0.0.1 (`git_http_server.py`), serving the bare
/// repos under a directory; stopped when dropped.
pub struct GitServer {
    pub child: Child,
    pub port: u16,
}

impl GitServer {
    pub fn start(root: &Path, user: &str, password: &str) -> GitServer {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("git_http_server.py");
        let mut child = Command::new("python3")
            .arg(script)
            .arg(root)
            .args(["0", user, password])
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 runs the test git server");
        let mut line = String::new();
        std::io::BufRead::read_line(&mut std::io::BufReader::new(child.stdout.take().unwrap()), &mut line).unwrap();
        GitServer {
            port: line.trim().parse().expect("the server prints its port"),
            child,
        }
    }
}

impl Drop for GitServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The Bitbucket of the login tests: a bare `config.git` with one commit under `dir`, served with basic auth
/// for `user`. Returns the server and the repo's URL.
pub fn login_server(dir: &Path, user: &str, password: &str) -> (GitServer, String) {
    let root = dir.join("bitbucket");
    let work = dir.join("bitbucket-work");
    std::fs::create_dir_all(&work).unwrap();
    git(&work, &["init", "-q", "-b", "main"]);
    std::fs::write(work.join("README.md"), "the config repo\n").unwrap();
    git(&work, &["add", "-A"]);
    git(&work, &["commit", "-qm", "config"]);
    std::fs::create_dir_all(&root).unwrap();
    run(Command::new("git")
        .args(["clone", "-q", "--bare"])
        .arg(&work)
        .arg(root.join("config.git")));
    let server = GitServer::start(&root, user, password);
    let url = format!("http://127.0.0.1:{}/config.git", server.port);
    (server, url)
}

/// A child process killed when dropped, its output kept in a file for failure messages.
pub struct Process {
    pub child: Child,
    pub log: PathBuf,
}

impl Process {
    pub fn spawn(cmd: &mut Command, log: PathBuf) -> Process {
        let file = std::fs::File::create(&log).unwrap();
        let child = cmd
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
        Process { child, log }
    }

    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

/// GET `url` as JSON.
pub fn get_json(url: &str) -> Result<serde_json::Value, String> {
    read_json(ureq::get(url), url)
}

/// Sends a GET and reads its answer as JSON.
fn read_json(
    request: ureq::RequestBuilder<ureq::typestate::WithoutBody>,
    url: &str,
) -> Result<serde_json::Value, String> {
    let mut response = request.call().map_err(|e| format!("GET {url}: {e}"))?;
    let text = response.body_mut().read_to_string().map_err(|e| e.to_string())?;
    serde_json::from_str(&text).map_err(|e| format!("GET {url}: {e}: {text}"))
}

/// GET `url` as text.
pub fn get_text(url: &str) -> Result<String, String> {
    let mut response = ureq::get(url).call().map_err(|e| format!("GET {url}: {e}"))?;
    response.body_mut().read_to_string().map_err(|e| e.to_string())
}

/// Removes every container and network labelled with `sandbox` (SDP's own labels), whatever a test left.
pub struct DockerCleanup {
    pub sandbox: String,
}

impl Drop for DockerCleanup {
    fn drop(&mut self) {
        let filter = format!("label=sdp.sandbox={}", self.sandbox);
        let ids = Command::new("docker").args(["ps", "-aq", "--filter", &filter]).output();
        if let Ok(out) = ids {
            for id in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                let _ = Command::new("docker").args(["rm", "-f", id]).output();
            }
        }
        let _ = Command::new("docker")
            .args(["network", "rm", &format!("sandbox-{}", self.sandbox)])
            .output();
    }
}

/// A cluster leaves nothing on the engine: its reconciler and agents are stopped first (a cleanup that ran while
/// they still worked would see them make containers again), then every container and network labelled with its
/// installation goes, and every one labelled with a sandbox it made (a network another installation's agent
/// made on a shared engine, or one made before the installation was known, carries the sandbox's label but not
/// this installation's).
impl Drop for Cluster {
    fn drop(&mut self) {
        let sandboxes = self.sandboxes_made();
        self.serve.kill();
        for agent in &mut self.agents {
            agent.kill();
        }
        let mut labels: Vec<String> = sandboxes.iter().map(|s| format!("label=sdp.sandbox={s}")).collect();
        if let Ok(installation) =
            sdp_reconciler::store::Store::open(&self.tmp.path().join("data")).and_then(|store| store.installation())
        {
            labels.push(format!("label=sdp.installation={installation}"));
        }
        for label in &labels {
            for (list, remove) in [
                (&["ps", "-aq", "--filter"][..], &["rm", "-f"][..]),
                (&["network", "ls", "-q", "--filter"][..], &["network", "rm"][..]),
            ] {
                let Ok(out) = Command::new("docker").args(list).arg(label).output() else {
                    continue;
                };
                for id in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                    let _ = Command::new("docker").args(remove).arg(id).output();
                }
            }
        }
    }
}

/// The agents' token in every test cluster.
pub const TOKEN: &str = "test-token-0123456789abcdef";

/// A reconciler on a temp config repo (with the examples' environments), and the agents a test starts.
pub struct Cluster {
    pub tmp: tempfile::TempDir,
    pub config: PathBuf,
    pub port: u16,
    /// Where the API and the dashboard are: `http://127.0.0.1:PORT` and the base path.
    pub api: String,
    pub token: PathBuf,
    pub serve: Process,
    pub agents: Vec<Process>,
    /// A session token for the API once `log_in` has run (servers started with a login).
    pub bearer: Option<String>,
    serve_args: Vec<String>,
    serves: usize,
    /// What `--repo` says: the config clone's path, or the "Bitbucket" URL of `start_remote`.
    repo: String,
    poll_secs: u64,
    /// This cluster's own gateway and service port ranges (below the kernel's ephemeral ports, and apart from
    /// other clusters that run at the same time), and the ports handed out of them.
    pub gateway_ports: std::ops::RangeInclusive<u16>,
    pub service_ports: std::ops::RangeInclusive<u16>,
    given: std::sync::Mutex<std::collections::BTreeSet<u16>>,
}

/// A random number, for port ranges and names.
fn random() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos(),
    );
    h.finish()
}

impl Cluster {
    /// A reconciler on a local config repo that lets anyone read (`--allow-anonymous`).
    pub fn start() -> Cluster {
        Cluster::start_with("", &["--allow-anonymous".to_string()])
    }

    /// A reconciler served under `base` (empty for the root) with `args` besides the usual ones.
    pub fn start_with(base: &str, args: &[String]) -> Cluster {
        let tmp = tempfile::tempdir().unwrap();
        let config = Cluster::config_repo(tmp.path());
        let repo = config.display().to_string();
        Cluster::launch(tmp, config, repo, 1, base, args)
    }

    /// A reconciler that follows a bare "Bitbucket" repo by URL (`--repo file://...`, polled every `poll_secs`, and
    /// at once on the git hook), with `config` a developer's clone of it.
    pub fn start_remote(poll_secs: u64) -> Cluster {
        let tmp = tempfile::tempdir().unwrap();
        let work = Cluster::config_repo(tmp.path());
        let bare = tmp.path().join("bitbucket/sdp-config.git");
        run(Command::new("git")
            .args(["clone", "-q", "--bare"])
            .arg(&work)
            .arg(&bare));
        let config = tmp.path().join("laptop");
        run(Command::new("git").args(["clone", "-q"]).arg(&bare).arg(&config));
        let repo = format!("file://{}", bare.display());
        Cluster::launch(tmp, config, repo, poll_secs, "", &["--allow-anonymous".to_string()])
    }

    /// The config repo a test starts with: the example environments, committed once.
    fn config_repo(dir: &Path) -> PathBuf {
        let config = dir.join("config");
        std::fs::create_dir_all(config.join("environments")).unwrap();
        std::fs::create_dir_all(config.join("sandboxes")).unwrap();
        let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/environments");
        for env in ["shared-dev.yaml", "account-dev.yaml"] {
            std::fs::copy(examples.join(env), config.join("environments").join(env)).unwrap();
        }
        git(&config, &["init", "-q", "-b", "main"]);
        git(&config, &["add", "-A"]);
        git(&config, &["commit", "-qm", "environments"]);
        config
    }

    fn launch(
        tmp: tempfile::TempDir,
        config: PathBuf,
        repo: String,
        poll_secs: u64,
        base: &str,
        args: &[String],
    ) -> Cluster {
        let token = tmp.path().join("token");
        std::fs::write(&token, format!("{TOKEN}\n")).unwrap();
        let port = free_port();
        let mut serve_args = args.to_vec();
        if !base.is_empty() {
            serve_args.extend(["--base-path".to_string(), base.to_string()]);
        }
        // 28 blocks of 200 ports for gateways in 20000-25599, each with its services' block 6000 above.
        let first = 20000 + (random() % 28) as u16 * 200;
        let (gateway_ports, service_ports) = (first..=first + 199, first + 6000..=first + 6199);
        for (flag, range) in [("--gateway-ports", &gateway_ports), ("--service-ports", &service_ports)] {
            serve_args.extend([flag.to_string(), format!("{}-{}", range.start(), range.end())]);
        }
        let serve = Cluster::spawn_serve(tmp.path(), &repo, poll_secs, port, &token, &serve_args, 1);
        Cluster {
            api: format!("http://127.0.0.1:{port}{base}"),
            tmp,
            config,
            port,
            token,
            serve,
            agents: Vec::new(),
            bearer: None,
            serve_args,
            serves: 1,
            repo,
            poll_secs,
            gateway_ports,
            service_ports,
            given: Default::default(),
        }
    }

    /// A free port for an explicit gateway `port:`, within this cluster's gateway range.
    pub fn gateway_port(&self) -> u16 {
        self.port_in(&self.gateway_ports)
    }

    /// A free port for an explicit service `port:`, within this cluster's service range.
    pub fn service_port(&self) -> u16 {
        self.port_in(&self.service_ports)
    }

    /// From the top of the range down (the reconciler allocates from the bottom up), one not given before and
    /// free now.
    fn port_in(&self, range: &std::ops::RangeInclusive<u16>) -> u16 {
        let mut given = self.given.lock().unwrap();
        let port = range
            .clone()
            .rev()
            .find(|p| !given.contains(p) && TcpListener::bind(("127.0.0.1", *p)).is_ok())
            .expect("a free port in the cluster's range");
        given.insert(port);
        port
    }

    fn spawn_serve(
        dir: &Path,
        repo: &str,
        poll_secs: u64,
        port: u16,
        token: &Path,
        args: &[String],
        n: usize,
    ) -> Process {
        Process::spawn(
            Command::new(binaries().join("sdp"))
                .args(["serve", "--repo", repo])
                .arg("--data")
                .arg(dir.join("data"))
                .args(["--listen", &format!("127.0.0.1:{port}"), "--token-file"])
                .arg(token)
                .args(["--resync-secs", "2", "--poll-secs", &poll_secs.to_string()])
                .args(args)
                // The service account's own git settings, as a test sets them (`gitconfig` in the test's dir).
                .env("GIT_CONFIG_GLOBAL", dir.join("gitconfig")),
            dir.join(format!("serve-{n}.log")),
        )
    }

    /// Starts the reconciler again (after a kill) on the same port and data dir.
    pub fn restart_serve(&mut self) {
        self.serve.kill();
        self.serves += 1;
        self.serve = Cluster::spawn_serve(
            self.tmp.path(),
            &self.repo,
            self.poll_secs,
            self.port,
            &self.token,
            &self.serve_args,
            self.serves,
        );
    }

    /// Logs in through the API (`POST /api/v1/login`) once the server answers; later `get` calls carry the token.
    pub fn log_in(&mut self, user: &str, password: &str) {
        let url = format!("{}/api/v1/login", self.api);
        let body = serde_json::json!({ "username": user, "password": password });
        let answer = wait_for("the login to be accepted", Duration::from_secs(30), || {
            let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
            let mut r = agent
                .post(&url)
                .header("Content-Type", "application/json")
                .send(body.to_string())
                .map_err(|e| e.to_string())?;
            let status = r.status().as_u16();
            let text = r.body_mut().read_to_string().map_err(|e| e.to_string())?;
            if status == 200 {
                Ok(text)
            } else {
                Err(format!("{status}: {text}"))
            }
        });
        let doc: serde_json::Value = serde_json::from_str(&answer).unwrap();
        self.bearer = Some(doc["token"].as_str().expect("a token").to_string());
    }

    /// GET a path of the API (`/api/v1/…`) as JSON, with the session token when there is one.
    pub fn get(&self, path: &str) -> Result<serde_json::Value, String> {
        let url = format!("{}{path}", self.api);
        let mut request = ureq::get(&url);
        if let Some(token) = &self.bearer {
            request = request.header("Authorization", &format!("Bearer {token}"));
        }
        read_json(request, &url)
    }

    pub fn path(&self) -> &Path {
        self.tmp.path()
    }

    /// Writes an agent config, on the role's image (the busybox stand-in for alpine, or the Apache one for
    /// php:8.3-apache); `extra` is appended as YAML lines.
    pub fn agent_yaml(&self, node: &str, role: &str, repos: &[(&str, &Path)], extra: &str) -> PathBuf {
        let image = if role == "gateway" {
            php_image()
        } else {
            runtime_image()
        };
        let mut yaml = format!(
            "node: {node}\nrole: {role}\nreconciler: {}/ws/agent\ntokenFile: {}\naddress: 127.0.0.1\n\
             image: {}\ndataDir: {}\nfetchSecs: 1\ngoCache: {}\n",
            self.api.replacen("http://", "ws://", 1),
            self.token.display(),
            image,
            self.path().join(format!("agent-{node}")).display(),
            std::env::temp_dir().join("sdp-e2e-go-cache").display()
        );
        if !repos.is_empty() {
            yaml.push_str("repos:\n");
            for (service, path) in repos {
                yaml.push_str(&format!("  {service}: {}\n", path.display()));
            }
        }
        yaml.push_str(extra);
        let file = self.path().join(format!("agent-{node}.yaml"));
        std::fs::write(&file, yaml).unwrap();
        file
    }

    /// `agent_yaml` for a micro agent whose `address` is where the gateway's containers reach this host's
    /// published ports (`docker_host_ip`), as routes to `sandbox` need.
    pub fn micro_yaml_reachable(&self, node: &str, repos: &[(&str, &Path)], extra: &str) -> PathBuf {
        let file = self.agent_yaml(node, "micro", repos, extra);
        let yaml = std::fs::read_to_string(&file)
            .unwrap()
            .replace("address: 127.0.0.1", &format!("address: {}", docker_host_ip()));
        std::fs::write(&file, yaml).unwrap();
        file
    }

    /// Starts `sdp-agent` with a config and waits until the reconciler lists its node.
    pub fn start_agent(&mut self, yaml: &Path, node: &str) -> usize {
        let log = self.path().join(format!("{node}.log"));
        self.agents.push(Process::spawn(
            Command::new(binaries().join("sdp-agent"))
                .arg("--config")
                .arg(yaml)
                .arg("run"),
            log,
        ));
        let index = self.agents.len() - 1;
        wait_for(&format!("agent {node} to connect"), Duration::from_secs(30), || {
            let nodes = self.get("/api/v1/nodes")?;
            let ok = nodes
                .as_array()
                .is_some_and(|n| n.iter().any(|n| n["node"]["node"] == node));
            if ok {
                Ok(())
            } else {
                Err(format!("{nodes}\nagent log:\n{}", self.agents[index].output()))
            }
        });
        index
    }

    /// The sandboxes this cluster made: those its reconciler knows (a set's generated ones among them), and every
    /// file ever committed under `sandboxes/` (one deleted since, whose objects a killed test may have left).
    fn sandboxes_made(&self) -> std::collections::BTreeSet<String> {
        let mut names = std::collections::BTreeSet::new();
        if let Ok(list) = self.get("/api/v1/sandboxes") {
            for sb in list.as_array().into_iter().flatten() {
                if let Some(name) = sb["name"].as_str() {
                    names.insert(name.to_string());
                }
            }
        }
        let committed = Command::new("git")
            .arg("-C")
            .arg(&self.config)
            .args(["log", "--all", "--name-only", "--format=", "--", "sandboxes"])
            .output();
        if let Ok(out) = committed {
            for file in String::from_utf8_lossy(&out.stdout).lines() {
                let stem = Path::new(file).file_stem().and_then(|s| s.to_str());
                if let Some(name) = stem.filter(|s| !s.is_empty()) {
                    names.insert(name.to_string());
                }
            }
        }
        names
    }

    /// Writes a file of the config repo and commits it.
    pub fn commit(&self, file: &str, text: &str, message: &str) {
        let path = self.config.join(file);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
        git(&self.config, &["add", "-A"]);
        git(&self.config, &["commit", "-qm", message]);
    }

    /// Removes a file of the config repo and commits the removal.
    pub fn remove(&self, file: &str, message: &str) {
        git(&self.config, &["rm", "-q", file]);
        git(&self.config, &["commit", "-qm", message]);
    }

    /// Every agent's log, for failure messages.
    pub fn logs(&self) -> String {
        let mut out = format!("reconciler:\n{}\n", self.serve.output());
        for a in &self.agents {
            out.push_str(&format!("agent:\n{}\n", a.output()));
        }
        out
    }
}

/// A sandbox manifest: a gateway on `develop` and `services` as (name, branch, port), then `extra` YAML lines.
pub fn sandbox_manifest(name: &str, services: &[(&str, &str, u16)], extra: &str) -> String {
    let mut s = format!(
        "apiVersion: sdp/v1\nkind: Sandbox\nmetadata:\n  name: {name}\nspec:\n  gateway:\n    branch: develop\n  services:\n"
    );
    for (svc, branch, port) in services {
        s.push_str(&format!("    {svc}:\n      branch: {branch}\n      port: {port}\n"));
    }
    s.push_str(extra);
    s
}

/// A check for `wait_for`: the service on `port` answers with a text that holds `needle`.
pub fn answers(port: u16, needle: &str) -> impl FnMut() -> Result<String, String> + '_ {
    move || match get_text(&format!("http://127.0.0.1:{port}/")) {
        Ok(a) if a.contains(needle) => Ok(a),
        other => Err(format!("{other:?}")),
    }
}
