//! `sdp demo`: SDP as it runs in production, on one host. A reconciler, a micro agent and a gateway agent; a
//! local config repo made from `examples/`; tiny Go services that say who and which branch they are; a PHP
//! gateway whose config.php points at a local stand-in for OCP. Missing offline images are built first.
//! `sdp demo --down` removes everything it made, and nothing else.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use sdp_dashboard::docs::{SandboxSummary, Sync, word};

use crate::serve::ServeConfig;

pub const RUNTIME_IMAGE: &str = "sdp-demo/busybox:latest";
pub const PHP_IMAGE: &str = "sdp-demo/php-apache:latest";
const OCP_CONTAINER: &str = "sdp-demo-ocp";
const TOKEN: &str = "sdp-demo-token-not-for-production";

const EXAMPLES: [(&str, &str); 5] = [
    (
        "sandboxes/qa-login-error.yaml",
        include_str!("../../examples/sandboxes/qa-login-error.yaml"),
    ),
    (
        "templates/qa-default.yaml",
        include_str!("../../examples/templates/qa-default.yaml"),
    ),
    (
        "templates/account-testing.yaml",
        include_str!("../../examples/templates/account-testing.yaml"),
    ),
    (
        "environments/account-dev.yaml",
        include_str!("../../examples/environments/account-dev.yaml"),
    ),
    (
        "environments/shared-dev.yaml",
        include_str!("../../examples/environments/shared-dev.yaml"),
    ),
];
const SERVICE_GO: &str = include_str!("../demo/service.go");
const GATEWAY_INDEX: &str = include_str!("../demo/gateway-index.php");
const GATEWAY_HTACCESS: &str = include_str!("../demo/gateway-htaccess");
const BUSYBOX_SH: &str = include_str!("../demo/images/busybox.sh");
const PHP_SH: &str = include_str!("../demo/images/php.sh");

/// The services of the demo, each with the branch its repo holds.
const SERVICES: [(&str, &str); 3] = [
    ("account", "feature/login-error"),
    ("payment", "main"),
    ("user", "main"),
];

fn say(what: &str) {
    println!("==> {what}");
}

fn sh(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("cannot run {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn git(dir: &Path, args: &[&str]) -> Result<String> {
    sh(Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .env("GIT_AUTHOR_NAME", "SDP demo")
        .env("GIT_AUTHOR_EMAIL", "demo@sdp.invalid")
        .env("GIT_COMMITTER_NAME", "SDP demo")
        .env("GIT_COMMITTER_EMAIL", "demo@sdp.invalid"))
}

fn ok(cmd: &mut Command) -> bool {
    cmd.stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// What the demo needs, each missing piece said with how to get it.
fn preflight() -> Result<()> {
    let mut missing = Vec::new();
    if !ok(Command::new("git").arg("--version")) {
        missing.push("git: apt-get install git");
    }
    if !ok(Command::new("docker").arg("info")) {
        missing.push(
            "a Docker engine that answers `docker info`: apt-get install docker.io, then start dockerd \
             (systemctl start docker), and run the demo as a user who may use it",
        );
    }
    if !ok(Command::new("go").arg("version")) {
        missing.push("Go, to build the demo services: apt-get install golang-go");
    }
    if !missing.is_empty() {
        bail!(
            "the demo needs:\n  - {}\n`deploy/install-deps.sh demo` installs them all (or, without root, names them in \
             one apt-get line)",
            missing.join("\n  - ")
        );
    }
    Ok(())
}

fn image_present(image: &str) -> bool {
    ok(Command::new("docker").args(["image", "inspect", image]))
}

fn build_image(image: &str, script: &str, what: &str, dir: &Path) -> Result<()> {
    if image_present(image) {
        return Ok(());
    }
    say(&format!("building {image} offline ({what})"));
    let started = Instant::now();
    let file = dir.join(format!("build-{}.sh", image.replace(['/', ':'], "-")));
    std::fs::write(&file, script)?;
    let status = Command::new("bash").arg(&file).arg(image).status()?;
    if !status.success() {
        bail!("building {image} failed (see above)");
    }
    say(&format!("built {image} in {:.0} s", started.elapsed().as_secs_f64()));
    Ok(())
}

/// The host's address on Docker's default bridge, which containers on any network reach published ports at.
pub fn docker_host_ip() -> String {
    sh(Command::new("ip").args(["-4", "-o", "addr", "show", "docker0"]))
        .ok()
        .and_then(|out| {
            out.split_whitespace()
                .skip_while(|w| *w != "inet")
                .nth(1)
                .and_then(|c| c.split('/').next().map(str::to_string))
        })
        .unwrap_or_else(|| "172.17.0.1".into())
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A repository with one branch holding `files`: a bare origin and the clone an agent is configured with.
fn repo(dir: &Path, name: &str, branch: &str, files: &[(&str, String)]) -> Result<PathBuf> {
    let work = dir.join("work").join(name);
    std::fs::create_dir_all(&work)?;
    git(&work, &["init", "-q", "-b", branch])?;
    for (path, text) in files {
        let p = work.join(path);
        std::fs::create_dir_all(p.parent().expect("has a parent"))?;
        std::fs::write(p, text)?;
    }
    git(&work, &["add", "-A"])?;
    git(&work, &["commit", "-qm", &format!("{name} for the SDP demo")])?;
    let origin = dir.join("origins").join(format!("{name}.git"));
    sh(Command::new("git")
        .args(["clone", "-q", "--bare"])
        .arg(&work)
        .arg(&origin))?;
    let clone = dir.join("clones").join(name);
    sh(Command::new("git").args(["clone", "-q"]).arg(&origin).arg(&clone))?;
    Ok(clone)
}

fn sandbox_names(config: &Path) -> Vec<String> {
    std::fs::read_dir(config.join("sandboxes"))
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter_map(|e| std::fs::read_to_string(e.path()).ok())
                .filter_map(|text| {
                    text.lines()
                        .find_map(|l| l.trim().strip_prefix("name:").map(|n| n.trim().to_string()))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The OCP stand-in's command (`sh -c`): busybox httpd on port 8080 answering `ocp <service>` under
/// `/<service>/`.
pub fn ocp_stand_in_script(services: &[&str]) -> String {
    let mut script = String::from("mkdir -p /www");
    for s in services {
        script.push_str(&format!(
            " && mkdir -p /www/{s} && echo 'ocp {s}' > /www/{s}/index.html"
        ));
    }
    script.push_str(" && exec httpd -f -p 8080 -h /www");
    script
}

/// A gateway branch's config.php, shaped like CodeIgniter 3's `application/config/production/config.php`: the
/// BASEPATH guard, an empty `base_url`, other settings, each service's `_url` to OCP at `{ocp_url}/{service}`,
/// and a commented-out route that must stay a comment.
pub fn ocp_config_php(services: &[&str], ocp_url: &str) -> String {
    let mut php = String::from(
        "<?php\ndefined('BASEPATH') OR exit('No direct script access allowed');\n\n\
         /*\n| Base Site URL: empty, so CodeIgniter guesses it from the request\n*/\n\
         $config['base_url'] = '';\n$config['index_page'] = '';\n$config['uri_protocol']\t= 'REQUEST_URI';\n\
         $config['charset'] = 'UTF-8';\n\n/*\n| Microservices on OCP\n*/\n",
    );
    for s in services {
        php.push_str(&format!("$config['{s}_url'] = '{ocp_url}/{s}'; // OCP\n"));
    }
    php.push_str("// $config['legacy_url'] = 'http://legacy.internal:80';\n$config['sess_driver'] = 'files';\n");
    php
}

/// The gateway repo's files besides config.php: the front controller and Apache's rewrite to it.
pub fn gateway_files() -> [(&'static str, &'static str); 2] {
    [("index.php", GATEWAY_INDEX), (".htaccess", GATEWAY_HTACCESS)]
}

/// Removes what the demo made: its sandboxes' managed containers and networks, the OCP stand-in, the demo dir.
pub fn down(dir: &Path) -> Result<ExitCode> {
    let names = sandbox_names(&dir.join("config"));
    for name in &names {
        let filter = format!("label=sdp.sandbox={name}");
        let ids =
            sh(Command::new("docker").args(["ps", "-aq", "--filter", "label=sdp.managed=true", "--filter", &filter]))
                .unwrap_or_default();
        for id in ids.split_whitespace() {
            let _ = sh(Command::new("docker").args(["rm", "-f", id]));
        }
        let _ = sh(Command::new("docker").args(["network", "rm", &format!("sandbox-{name}")]));
        say(&format!("removed sandbox {name}'s containers and network"));
    }
    if ok(Command::new("docker").args(["inspect", OCP_CONTAINER])) {
        sh(Command::new("docker").args(["rm", "-f", OCP_CONTAINER]))?;
        say("removed the OCP stand-in");
    }
    if dir.join("config").is_dir() {
        std::fs::remove_dir_all(dir).with_context(|| format!("cannot remove {}", dir.display()))?;
        say(&format!("removed {}", dir.display()));
    } else if names.is_empty() {
        say(&format!("nothing to remove: {} holds no demo", dir.display()));
    }
    println!("The images {RUNTIME_IMAGE} and {PHP_IMAGE} are kept (`docker rmi` them to free the space).");
    Ok(ExitCode::SUCCESS)
}

/// Runs the demo until Ctrl-C.
pub fn up(dir: &Path, port: u16) -> Result<ExitCode> {
    preflight()?;
    if dir.join("config").exists() {
        say(&format!("{} holds an earlier demo: removing it first", dir.display()));
        down(dir)?;
    }
    std::fs::create_dir_all(dir)?;
    let dir = dir.canonicalize()?;
    build_image(
        RUNTIME_IMAGE,
        BUSYBOX_SH,
        "a static busybox standing in for alpine:3.20, a second",
        &dir,
    )?;
    build_image(
        PHP_IMAGE,
        PHP_SH,
        "Apache with mod_php on a Debian rootfs from mmdebstrap, standing in for php:8.3-apache, about a minute",
        &dir,
    )?;
    let host = docker_host_ip();

    say("making the OCP stand-in, the service repos and the gateway repo");
    let ocp_port = free_port()?;
    let names: Vec<&str> = SERVICES.iter().map(|(s, _)| *s).collect();
    let script = ocp_stand_in_script(&names);
    sh(Command::new("docker").args([
        "run",
        "-d",
        "--name",
        OCP_CONTAINER,
        "--label",
        "sdp.demo=true",
        "-p",
        &format!("{ocp_port}:8080"),
        RUNTIME_IMAGE,
        "sh",
        "-c",
        &script,
    ]))?;
    let repos = dir.join("repos");
    let mut clones = Vec::new();
    for (service, branch) in SERVICES {
        let files = [
            ("go.mod", format!("module {service}\n\ngo 1.19\n")),
            ("main.go", SERVICE_GO.to_string()),
            ("name.go", format!("package main\n\nconst NAME = \"{service}\"\n")),
        ];
        clones.push((service, repo(&repos, service, branch, &files)?));
    }
    let php = ocp_config_php(&names, &format!("http://{host}:{ocp_port}"));
    let gateway = repo(
        &repos,
        "gateway",
        "develop",
        &[("application/config/production/config.php", php)]
            .into_iter()
            .chain(gateway_files().map(|(path, text)| (path, text.to_string())))
            .collect::<Vec<_>>(),
    )?;

    say("making the config repo from examples/");
    let config = dir.join("config");
    let secrets = dir.join("secrets");
    std::fs::create_dir_all(&secrets)?;
    std::fs::write(secrets.join("account-db-password"), "demo-password\n")?;
    for (path, text) in EXAMPLES {
        let p = config.join(path);
        std::fs::create_dir_all(p.parent().expect("has a parent"))?;
        let text = text.replace("/etc/sdp/secrets/", &format!("{}/", secrets.display()));
        std::fs::write(p, text)?;
    }
    git(&config, &["init", "-q", "-b", "main"])?;
    git(&config, &["add", "-A"])?;
    git(&config, &["commit", "-qm", "examples"])?;

    let token = dir.join("token");
    std::fs::write(&token, TOKEN)?;
    let agent_yaml = |node: &str, role: &str, repos: &[(&str, &Path)], image: &str, extra: &str| -> Result<PathBuf> {
        let mut yaml = format!(
            "node: {node}\nrole: {role}\nreconciler: ws://127.0.0.1:{port}/ws/agent\ntokenFile: {}\naddress: {host}\n\
             image: {image}\ndataDir: {}\nfetchSecs: 5\nsecretsDir: {}\nrepos:\n",
            token.display(),
            dir.join("agents").join(node).display(),
            secrets.display()
        );
        for (s, p) in repos {
            yaml.push_str(&format!("  {s}: {}\n", p.display()));
        }
        yaml.push_str(extra);
        let file = dir.join(format!("{node}.yaml"));
        std::fs::write(&file, yaml)?;
        Ok(file)
    };
    let micro_repos: Vec<(&str, &Path)> = clones.iter().map(|(s, p)| (*s, p.as_path())).collect();
    let micro = agent_yaml(
        "demo-micro",
        "micro",
        &micro_repos,
        RUNTIME_IMAGE,
        "containerPort: 8080\n",
    )?;
    let gw = agent_yaml(
        "demo-gateway",
        "gateway",
        &[("gateway", &gateway)],
        PHP_IMAGE,
        // The gateway role's defaults are php:8.3-apache's: port 80, erangel's path, apachectl -k graceful.
        "",
    )?;

    let serve = ServeConfig {
        listen: std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        resync_secs: 10,
        poll_secs: 2,
        micro_address: host.clone(),
        // On 127.0.0.1 with a local config repo: nothing to log in against, and nobody else to keep out.
        allow_anonymous: true,
        ..ServeConfig::new(config.display().to_string(), dir.join("data"), token.clone())
    };
    let logs = dir.join("logs");
    std::fs::create_dir_all(&logs)?;
    let reconciler_log = std::fs::File::create(logs.join("reconciler.log"))?;
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new("info"))
        .with_writer(std::sync::Mutex::new(reconciler_log))
        .with_ansi(false)
        .try_init();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    runtime.spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        flag.store(true, Ordering::SeqCst);
    });
    let server = runtime.spawn(crate::serve::serve(serve));
    let agent_bin = std::env::current_exe()?.with_file_name("sdp-agent");
    if !agent_bin.exists() {
        bail!(
            "{} is missing: build it with `cargo build -p sdp-agent`",
            agent_bin.display()
        );
    }
    let mut agents: Vec<Child> = Vec::new();
    for (yaml, name) in [(&micro, "micro"), (&gw, "gateway")] {
        let log = std::fs::File::create(logs.join(format!("agent-{name}.log")))?;
        agents.push(
            Command::new(&agent_bin)
                .arg("--config")
                .arg(yaml)
                .arg("run")
                .stdout(log.try_clone()?)
                .stderr(log)
                .spawn()?,
        );
    }

    let api = format!("http://127.0.0.1:{port}");
    println!();
    println!(
        "SDP is up.  API and dashboard: {api}/   (logs of the reconciler and agents in {})",
        logs.display()
    );
    println!("Watching the sandboxes converge (Ctrl-C stops SDP; `sdp demo --down` removes everything):");
    let mut last = String::new();
    let started = Instant::now();
    let mut announced = false;
    while !stop.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(500));
        if server.is_finished() {
            break;
        }
        let server = crate::cli::client::Server { server: api.clone() };
        let Ok(list) = crate::cli::client::get_doc::<Vec<SandboxSummary>>(&server, "/api/v1/sandboxes") else {
            continue;
        };
        let line: Vec<String> = list
            .iter()
            .map(|sb| {
                let error = sb.error.as_deref().map(|e| format!(" ({e})")).unwrap_or_default();
                format!("{} {} {}{error}", sb.name, word(&sb.sync), word(&sb.health))
            })
            .collect();
        let line = line.join(", ");
        if line != last {
            println!("  [{:>5.1} s] {line}", started.elapsed().as_secs_f64());
            last = line;
        }
        let synced = !list.is_empty() && list.iter().all(|s| s.sync == Sync::Synced);
        if synced && !announced {
            announced = true;
            println!();
            for sb in &list {
                let url = sb.gateway_url.as_deref().unwrap_or("-");
                println!("Sandbox {} is synced. Its gateway: {url}", sb.name);
                println!("  curl {url}/account/   -> the sandbox's own account service (feature/login-error)");
                println!("  curl {url}/payment/   -> OCP (the stand-in)");
            }
            println!("Try: sdp get sandbox qa-login-error --server {api}");
        }
    }
    say("stopping the agents and the reconciler (the sandboxes' containers keep running)");
    for mut a in agents {
        let _ = a.kill();
        let _ = a.wait();
    }
    runtime.shutdown_timeout(Duration::from_secs(2));
    println!(
        "Stopped. `sdp demo --down --dir {}` removes everything the demo made.",
        dir.display()
    );
    Ok(ExitCode::SUCCESS)
}
