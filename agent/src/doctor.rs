//! `sdp-agent doctor`: the diagnostic ladder an operator climbs when an agent does not connect, as one command.
//! Each step says pass or fail, and how to fix a failure. It does not say Hello, so a running agent's connection
//! is left alone. On a `wss://` URL every step after TCP goes over TLS, with the certificate checked as the agent
//! checks it.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

use crate::config::AgentConfig;
use crate::docker::Engine;
use crate::git::Repo;

struct Step {
    name: String,
    outcome: Outcome,
}

enum Outcome {
    Pass(String),
    /// Works, but an operator should change it: does not fail the doctor.
    Warn(String, String),
    Fail(String, String),
}

fn pass(name: impl Into<String>, detail: impl Into<String>) -> Step {
    Step {
        name: name.into(),
        outcome: Outcome::Pass(detail.into()),
    }
}

fn warn(name: impl Into<String>, detail: impl Into<String>, hint: impl Into<String>) -> Step {
    Step {
        name: name.into(),
        outcome: Outcome::Warn(detail.into(), hint.into()),
    }
}

fn fail(name: impl Into<String>, detail: impl Into<String>, hint: impl Into<String>) -> Step {
    Step {
        name: name.into(),
        outcome: Outcome::Fail(detail.into(), hint.into()),
    }
}

/// `ws://host:port/path` → (host:port, path); the port defaults to 80, or 443 for `wss://`.
fn target(url: &str) -> Option<(String, String)> {
    let (rest, port) = match url.strip_prefix("ws://") {
        Some(rest) => (rest, 80),
        None => (url.strip_prefix("wss://")?, 443),
    };
    let (authority, path) = rest.split_once('/').map_or((rest, "/"), |(a, p)| (a, p));
    let has_port = authority
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.parse::<u16>().is_ok());
    let authority = if has_port {
        authority.to_string()
    } else {
        format!("{authority}:{port}")
    };
    Some((authority, format!("/{}", path.trim_start_matches('/'))))
}

/// How the doctor reaches the reconciler: plain TCP, or TLS to `host` with the agent's trust.
#[derive(Clone)]
enum Transport {
    Plain,
    Tls(Arc<rustls::ClientConfig>, rustls_pki_types::ServerName<'static>),
}

trait Stream: Read + Write {}
impl<T: Read + Write> Stream for T {}

/// A fresh connection, its TLS handshake done.
fn dial(authority: &str, transport: &Transport) -> std::io::Result<Box<dyn Stream>> {
    let addr = authority
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| std::io::Error::other("no address"))?;
    let mut tcp = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    tcp.set_read_timeout(Some(Duration::from_secs(5)))?;
    tcp.set_write_timeout(Some(Duration::from_secs(5)))?;
    match transport {
        Transport::Plain => Ok(Box::new(tcp)),
        Transport::Tls(config, name) => {
            let mut tls = rustls::ClientConnection::new(config.clone(), name.clone()).map_err(std::io::Error::other)?;
            while tls.is_handshaking() {
                tls.complete_io(&mut tcp)?;
            }
            Ok(Box::new(rustls::StreamOwned::new(tls, tcp)))
        }
    }
}

/// An I/O error in an operator's words: a TLS handshake failure says what to check.
fn io_cause(e: &std::io::Error) -> String {
    match e.kind() {
        // What a blocking socket's read timeout reports.
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => "no answer within 5 s".into(),
        _ => crate::tls::handshake_error(e).map_or_else(|| e.to_string(), crate::tls::explain),
    }
}

/// One HTTP/1.1 request on a fresh connection; the status code and the body.
fn http(authority: &str, transport: &Transport, request: &str) -> std::io::Result<(u16, String)> {
    let mut stream = dial(authority, transport)?;
    stream.write_all(request.as_bytes())?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match stream.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                // A 101 keeps the connection open: the head is all there is to read.
                if buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.starts_with(b"HTTP/1.1 101") {
                    break;
                }
            }
            Err(e) if buf.is_empty() => return Err(e),
            Err(_) => break,
        }
    }
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.trim().to_string())
        .unwrap_or_default();
    Ok((status, body))
}

fn upgrade(authority: &str, path: &str, token: Option<&str>) -> String {
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    format!(
        "GET {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: c2RwLWRvY3Rvci1jaGVjaw==\r\n{auth}\r\n"
    )
}

/// The gateway image runs Apache on the container port, as php:8.3-apache does (or the config says its command).
fn gateway_image(config: &AgentConfig, runs: &str, ports: &[String]) -> Step {
    let name = "gateway image";
    let port = format!("{}/tcp", config.container_port());
    if config.command.is_none() && !runs.contains("apache2") {
        return fail(
            name,
            format!("{} runs `{runs}`, not Apache", config.image),
            "load php:8.3-apache (or set `command:` in this config to what starts the gateway)",
        );
    }
    if config.command.is_none() && !ports.contains(&port) {
        return fail(
            name,
            format!("{} exposes {ports:?}, not {port}", config.image),
            "set `containerPort:` to the port Apache listens on in the image",
        );
    }
    pass(
        name,
        format!(
            "runs `{runs}` on {port}; worktree at {} (APACHE_DOCUMENT_ROOT={}), reload `{}`",
            config.mount_point().display(),
            config.document_root().display(),
            config.reload.join(" ")
        ),
    )
}

/// The Go toolchain and where builds find modules: the module cache or proxy that `goEnv` names.
async fn go_steps(config: &AgentConfig) -> Vec<Step> {
    let mut steps = Vec::new();
    let mut version = tokio::process::Command::new(&config.go);
    version.arg("version");
    match crate::command::output(version, "go version", crate::command::DEADLINES.short).await {
        Ok(out) if out.status.success() => {
            steps.push(pass("go", String::from_utf8_lossy(&out.stdout).trim().to_string()))
        }
        _ => {
            steps.push(fail(
                "go",
                format!("`{} version` does not run", config.go.display()),
                "install Go (apt-get install golang-go) or set `go:` to its path",
            ));
            return steps;
        }
    }
    let env = crate::executor::go_env(config);
    let proxy = env.get("GOPROXY").map(String::as_str).unwrap_or("off");
    match env.get("GOMODCACHE") {
        Some(cache) => {
            let download = std::path::Path::new(cache).join("cache/download");
            let modules = std::fs::read_dir(&download).map(|d| d.count()).unwrap_or(0);
            if modules > 0 {
                steps.push(pass(
                    "go modules",
                    format!("module cache {cache} holds {modules} module host(s)"),
                ));
            } else {
                steps.push(fail(
                    "go modules",
                    format!(
                        "module cache {cache} holds no modules ({} is missing or empty)",
                        download.display()
                    ),
                    "fill it on a machine with access (GOMODCACHE=DIR go mod download in each service repo) and \
                     copy it here",
                ));
            }
        }
        None if proxy == "off" => steps.push(pass(
            "go modules",
            "offline, no module cache in goEnv: only repos with vendor/ (or no dependencies) build",
        )),
        None => {}
    }
    for entry in proxy.split([',', '|']).filter(|p| !matches!(*p, "off" | "direct" | "")) {
        if let Some(dir) = entry.strip_prefix("file://") {
            if std::path::Path::new(dir).is_dir() {
                steps.push(pass("go proxy", format!("{entry} is a directory")));
            } else {
                steps.push(fail(
                    "go proxy",
                    format!("{dir} is not a directory"),
                    "copy the module proxy directory there, or fix GOPROXY in goEnv",
                ));
            }
            continue;
        }
        let authority = entry
            .split_once("://")
            .map_or(entry, |(_, rest)| rest)
            .split('/')
            .next()
            .unwrap_or("");
        let authority = match (authority.contains(':'), entry.starts_with("https://")) {
            (true, _) => authority.to_string(),
            (false, true) => format!("{authority}:443"),
            (false, false) => format!("{authority}:80"),
        };
        let reached = authority
            .to_socket_addrs()
            .ok()
            .and_then(|mut a| a.next())
            .map(|addr| TcpStream::connect_timeout(&addr, Duration::from_secs(5)));
        match reached {
            Some(Ok(_)) => steps.push(pass("go proxy", format!("{entry} accepts connections"))),
            _ => steps.push(fail(
                "go proxy",
                format!("{entry} cannot be reached"),
                "builds that need modules will fail: check GOPROXY in goEnv and the network to the proxy",
            )),
        }
    }
    steps
}

pub async fn run(config: &AgentConfig, tls: Option<Arc<rustls::ClientConfig>>) -> bool {
    let mut steps = Vec::new();
    let Some((authority, path)) = target(&config.reconciler) else {
        println!("FAIL config: reconciler `{}` is not a ws:// URL", config.reconciler);
        return false;
    };
    let reconciler = |s: &str| format!("reconciler {s}");
    if config.token_in_clear() {
        steps.push(warn(
            reconciler("transport"),
            format!("{} is plain ws://: the agent token travels in clear", config.reconciler),
            "serve the reconciler behind TLS (deploy/nginx/sdp-tls.conf) and write wss:// with caFile",
        ));
    }
    let transport = match tls {
        None => Transport::Plain,
        Some(tls) => match rustls_pki_types::ServerName::try_from(config.reconciler_host().to_string()) {
            Ok(name) => Transport::Tls(tls, name),
            Err(e) => {
                println!("FAIL config: reconciler `{}`: {e}", config.reconciler);
                return false;
            }
        },
    };

    let tcp = authority
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        // Closed at once: a server that serves one connection at a time must not wait on this one.
        .map(|addr| TcpStream::connect_timeout(&addr, Duration::from_secs(5)).map(drop));
    match tcp {
        Some(Ok(_)) => steps.push(pass(reconciler("tcp"), format!("{authority} accepts connections"))),
        Some(Err(e)) => steps.push(fail(
            reconciler("tcp"),
            format!("{authority}: {e}"),
            "is `sdp serve` running there (systemctl status sdp)? is a firewall between this VM and it?",
        )),
        None => steps.push(fail(
            reconciler("tcp"),
            format!("cannot resolve {authority}"),
            "check the host name",
        )),
    }
    // Without a trusted handshake, the steps over it (and the token) are skipped.
    let mut tls_failed = false;
    if let Transport::Tls(..) = &transport {
        let trusted = match &config.ca_file {
            Some(ca) => format!("caFile {}", ca.display()),
            None => "the system's CA bundle".to_string(),
        };
        match dial(&authority, &transport) {
            Ok(_) => steps.push(pass(
                reconciler("tls"),
                format!("the certificate of {} is trusted ({trusted})", config.reconciler_host()),
            )),
            Err(e) => {
                tls_failed = true;
                steps.push(fail(
                    reconciler("tls"),
                    io_cause(&e),
                    format!(
                        "the agent trusts {trusted}; `openssl s_client -connect {authority}` shows the certificate"
                    ),
                ))
            }
        }
    }
    if !tls_failed {
        // Behind a base path (`/sandbox/credit-card/ws/agent`), /healthz sits under the same prefix.
        let prefix = path.strip_suffix("/ws/agent").unwrap_or("");
        let health = format!("GET {prefix}/healthz HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n");
        match http(&authority, &transport, &health) {
            Ok((200, _)) => steps.push(pass(reconciler("http"), format!("{prefix}/healthz answers 200"))),
            // The reconciler answers, and says what its operator must fix; the agent's connection is not affected.
            Ok((503, body)) if body.starts_with("config repo:") => steps.push(pass(
                reconciler("http"),
                format!("{prefix}/healthz answers, and reports: {body}"),
            )),
            Ok((code, body)) => steps.push(fail(
                reconciler("http"),
                format!("{prefix}/healthz answered {code}: {body}"),
                "something else listens on that port; `ss -ltnp` on the reconciler's VM shows who",
            )),
            Err(e) => steps.push(fail(reconciler("http"), io_cause(&e), "see the tcp and tls steps")),
        }
        match http(&authority, &transport, &upgrade(&authority, &path, None)) {
            Ok((401, _)) => steps.push(pass(reconciler("websocket"), format!("{path} is the agents' endpoint"))),
            Ok((101, _)) => steps.push(fail(
                reconciler("websocket"),
                "upgraded without a token",
                "this reconciler does not check tokens: is it SDP?",
            )),
            Ok((code, body)) => steps.push(fail(
                reconciler("websocket"),
                format!("upgrade answered {code}: {body}"),
                "a proxy in between must pass `Upgrade: websocket`; nginx needs proxy_http_version 1.1 and the \
                 Upgrade/Connection headers",
            )),
            Err(e) => steps.push(fail(
                reconciler("websocket"),
                format!("reset: {}", io_cause(&e)),
                "see the tcp and tls steps",
            )),
        }
        match config.token() {
            Err(e) => steps.push(fail(
                "token",
                format!("{e:#}"),
                "the same file as the reconciler's --token-file",
            )),
            // Sent only over a connection whose TLS handshake succeeded, as the agent does.
            Ok(token) => match http(&authority, &transport, &upgrade(&authority, &path, Some(&token))) {
                Ok((101, _)) => steps.push(pass("token", "accepted")),
                Ok((code, body)) => steps.push(fail(
                    "token",
                    format!("refused with {code}: {body}"),
                    format!("copy the reconciler's token file to {}", config.token_file.display()),
                )),
                Err(e) => steps.push(fail("token", io_cause(&e), "see the tcp and tls steps")),
            },
        }
    }

    match Engine::connect().await {
        Err(e) => steps.push(fail(
            "docker",
            format!("{e:#}"),
            "start dockerd, and run the agent as a user in the docker group",
        )),
        Ok(engine) => {
            steps.push(pass("docker", "the engine answers"));
            match engine.image_runs(&config.image).await {
                Ok((runs, ports)) => {
                    steps.push(pass(format!("image {}", config.image), "present"));
                    if config.role == sdp_protocol::Role::Gateway {
                        steps.push(gateway_image(config, &runs, &ports));
                    }
                }
                Err(_) => steps.push(fail(
                    format!("image {}", config.image),
                    "not loaded",
                    "SDP never pulls: `docker load -i <image>.tar` on this VM",
                )),
            }
        }
    }

    if config.role == sdp_protocol::Role::Micro {
        steps.extend(go_steps(config).await);
    }

    for (service, path) in &config.repos {
        let name = format!("repo {service}");
        if !path.join(".git").exists() && !path.join("HEAD").exists() {
            steps.push(fail(
                name,
                format!("{} is not a git repository", path.display()),
                "clone it there (repositories are configured by hand)",
            ));
            continue;
        }
        steps.push(pass(name, path.display().to_string()));
        let repo = Repo::new(path.clone(), config.git_credentials.clone());
        match repo.ls_remote().await {
            Ok(n) => steps.push(pass(format!("git {service}"), format!("origin lists {n} branches"))),
            Err(e) => steps.push(fail(
                format!("git {service}"),
                format!("{e:#}"),
                "check gitCredentials (a git-credential-store file: https://user:password@host) and the origin URL",
            )),
        }
    }

    let mut ok = true;
    for step in &steps {
        let (word, detail, hint) = match &step.outcome {
            Outcome::Pass(detail) => ("PASS", detail, ""),
            Outcome::Warn(detail, hint) => ("WARN", detail, hint.as_str()),
            Outcome::Fail(detail, hint) => {
                ok = false;
                ("FAIL", detail, hint.as_str())
            }
        };
        println!("{word} {}: {detail}", step.name);
        if !hint.is_empty() {
            println!("     hint: {hint}");
        }
    }
    ok
}
