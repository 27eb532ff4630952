//! The commands that read a running reconciler over its JSON API: `sdp get`, `sdp logs`.
//!
//! The answers are read into the API's own document types (`sdp_dashboard::docs`), the ones the server
//! serialises; `-o json` and `-o yaml` print the answer as it came, fields this version does not know included.

use std::io::{BufRead, BufReader, Write};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand, ValueEnum};
use sdp_dashboard::docs::{
    BranchesDoc, DeploymentDoc, ErrorDoc, NodeDoc, SandboxDoc, SandboxSummary, Sync, short, word,
};
use serde::de::DeserializeOwned;
use serde_json::Value;

/// Where the reconciler is.
#[derive(Args, Clone)]
pub struct Server {
    /// The reconciler's URL (or SDP_SERVER).
    #[arg(long, global = true, env = "SDP_SERVER", default_value = "http://127.0.0.1:3452")]
    pub server: String,
}

#[derive(Subcommand)]
pub enum GetWhat {
    /// Every sandbox with its sync status, health and gateway URL.
    Sandboxes {
        #[arg(short = 'o', long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// One sandbox: services, routes, drift, errors and recent events.
    Sandbox {
        name: String,
        #[arg(short = 'o', long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// Deployments, newest first.
    Deployments {
        #[arg(long)]
        sandbox: Option<String>,
        #[arg(short = 'o', long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// A repository's branches, listed now by the agent that serves it (REPO is the service name, or gateway).
    Branches {
        repo: String,
        #[arg(short = 'o', long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// Connected agents.
    Nodes {
        #[arg(short = 'o', long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Table,
    Json,
    Yaml,
}

pub(super) fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_connect(Some(std::time::Duration::from_secs(5)))
        .build()
        .into()
}

/// Asks the reconciler to fetch its config repo now (the git hook), after `sdp apply --push`: without it the push
/// is seen at the next poll. Best effort: a reconciler that cannot be reached is `--wait`'s to report.
pub fn fetch_now(server: &Server) {
    let url = format!("{}/api/v1/hooks/git", server.server.trim_end_matches('/'));
    let _ = agent().post(&url).send_empty();
}

/// A GET of the API, with the session of `sdp login` when there is one.
fn request(server: &Server, url: &str) -> ureq::RequestBuilder<ureq::typestate::WithoutBody> {
    let request = agent().get(url);
    match super::login::bearer(server) {
        Some(token) => request.header("Authorization", &format!("Bearer {token}")),
        None => request,
    }
}

/// GET a JSON document; a 401, 404 or 5xx answer becomes its `error` message.
pub fn get(server: &Server, path: &str) -> Result<Value> {
    let url = format!("{}{path}", server.server.trim_end_matches('/'));
    let mut response = request(server, &url).call().with_context(|| {
        format!(
            "cannot reach the reconciler at {}: is `sdp serve` running there?",
            server.server
        )
    })?;
    let status = response.status().as_u16();
    let text = response
        .body_mut()
        .read_to_string()
        .context("cannot read the reconciler's answer")?;
    let value: Value = serde_json::from_str(&text).with_context(|| format!("unexpected answer from {url}: {text}"))?;
    if status == 401 {
        return Err(NeedsLogin(server.server.clone()).into());
    }
    if status >= 400 {
        match serde_json::from_value::<ErrorDoc>(value) {
            Ok(e) => bail!("{}", e.error),
            Err(_) => bail!("{text}"),
        }
    }
    Ok(value)
}

/// GET a document of the API as its type (`SandboxDoc`, `Vec<DeploymentDoc>`…).
pub fn get_doc<T: DeserializeOwned>(server: &Server, path: &str) -> Result<T> {
    read(server, path, get(server, path)?)
}

/// An answer of `path` as the document it should be.
fn read<T: DeserializeOwned>(server: &Server, path: &str, value: Value) -> Result<T> {
    serde_json::from_value(value).with_context(|| {
        format!(
            "the reconciler at {} answered {path} with a document this sdp cannot read: is it another version?",
            server.server
        )
    })
}

/// The reconciler wants a login this CLI has not got (or that expired): waiting will not help.
#[derive(Debug)]
pub struct NeedsLogin(String);

impl std::fmt::Display for NeedsLogin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the reconciler at {0} wants a login: log in first with `sdp login --server {0}`",
            self.0
        )
    }
}

impl std::error::Error for NeedsLogin {}

/// GETs `path` and prints it: as it came for `-o json` and `-o yaml`, else read as `T` into a table.
fn show<T: DeserializeOwned>(
    server: &Server,
    path: &str,
    output: Output,
    table: impl FnOnce(T) -> String,
) -> Result<()> {
    let value = get(server, path)?;
    let text = match output {
        Output::Json => serde_json::to_string_pretty(&value)?,
        Output::Yaml => serde_saphyr::to_string(&value).context("cannot write YAML")?,
        Output::Table => table(read(server, path, value)?),
    };
    println!("{}", text.trim_end());
    Ok(())
}

/// A value that may be absent, as a cell: a dash when it is.
fn s(v: Option<&str>) -> String {
    v.unwrap_or("-").to_string()
}

/// Columns padded to their widest cell, as kubectl prints them.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| -> String {
        let last = cells.len() - 1;
        cells
            .iter()
            .enumerate()
            .map(|(i, c)| {
                if i == last {
                    c.clone()
                } else {
                    format!("{c:<w$}", w = widths[i])
                }
            })
            .collect::<Vec<_>>()
            .join("   ")
            .trim_end()
            .to_string()
    };
    let mut out = line(header.iter().map(|h| h.to_string()).collect());
    for row in rows {
        out.push('\n');
        out.push_str(&line(row.clone()));
    }
    out
}

pub fn run_get(server: &Server, what: GetWhat) -> Result<ExitCode> {
    match what {
        GetWhat::Sandboxes { output } => {
            show(server, "/api/v1/sandboxes", output, |list: Vec<SandboxSummary>| {
                let now = crate::hub::now_ms() / 1000;
                let rows: Vec<Vec<String>> = list
                    .iter()
                    .map(|sb| {
                        vec![
                            sb.name.clone(),
                            word(&sb.sync),
                            word(&sb.health),
                            s(sb.gateway_url.as_deref()),
                            sb.services.to_string(),
                            s(sb.owner.as_deref()),
                            crate::desired::human(now.saturating_sub(sb.last_time)),
                            s(sb.error.as_deref()),
                        ]
                    })
                    .collect();
                table(
                    &[
                        "NAME", "SYNC", "HEALTH", "GATEWAY", "SERVICES", "OWNER", "CHANGED", "ERROR",
                    ],
                    &rows,
                )
            })?;
        }
        GetWhat::Sandbox { name, output } => {
            show(
                server,
                &format!("/api/v1/sandboxes/{name}"),
                output,
                |sb: SandboxDoc| sandbox_table(&sb),
            )?;
        }
        GetWhat::Deployments { sandbox, output } => {
            let query = sandbox.map(|s| format!("?sandbox={s}")).unwrap_or_default();
            show(
                server,
                &format!("/api/v1/deployments{query}"),
                output,
                |list: Vec<DeploymentDoc>| {
                    let rows: Vec<Vec<String>> = list
                        .iter()
                        .map(|d| {
                            vec![
                                d.id.to_string(),
                                d.sandbox.clone(),
                                d.service.clone(),
                                d.branch.clone(),
                                s(d.commit.as_deref().map(short)),
                                word(&d.state),
                                d.reason.clone(),
                                s(d.error.as_deref()),
                            ]
                        })
                        .collect();
                    table(
                        &[
                            "ID", "SANDBOX", "SERVICE", "BRANCH", "COMMIT", "STATE", "REASON", "ERROR",
                        ],
                        &rows,
                    )
                },
            )?;
        }
        GetWhat::Branches { repo, output } => {
            show(
                server,
                &format!("/api/v1/repos/{repo}/branches"),
                output,
                |list: BranchesDoc| {
                    let rows: Vec<Vec<String>> = list
                        .branches
                        .iter()
                        .map(|b| vec![b.branch.clone(), b.commit.clone()])
                        .collect();
                    table(&["BRANCH", "COMMIT"], &rows)
                },
            )?;
        }
        GetWhat::Nodes { output } => {
            show(server, "/api/v1/nodes", output, |list: Vec<NodeDoc>| {
                let rows: Vec<Vec<String>> = list
                    .iter()
                    .map(|n| {
                        vec![
                            n.node.node.clone(),
                            word(&n.node.role),
                            n.node.address.clone(),
                            n.containers.to_string(),
                            n.node.images.len().to_string(),
                        ]
                    })
                    .collect();
                table(&["NODE", "ROLE", "ADDRESS", "CONTAINERS", "IMAGES"], &rows)
            })?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `sdp get sandbox NAME`: its status, services, routes, drift and recent events.
pub fn sandbox_table(sb: &SandboxDoc) -> String {
    let mut out = String::new();
    let status = &sb.status;
    out.push_str(&format!(
        "Name:     {}\nSync:     {}\nHealth:   {}\nGateway:  {}\nConfig:   {} by {}\n",
        sb.name,
        word(&status.sync),
        word(&status.health),
        s(sb.gateway_url.as_deref()),
        short(&sb.config_commit),
        sb.config_author,
    ));
    for (label, v) in [
        ("Made by set", sb.generated_by.clone()),
        ("Held", sb.held.clone()),
        ("Error", status.last_error.clone()),
        ("Config errors", sb.config_errors.as_ref().map(|e| e.join("; "))),
    ] {
        if let Some(v) = v {
            out.push_str(&format!("{label}: {v}\n"));
        }
    }
    let containers = &sb.actual.containers;
    let mut services: Vec<(&str, &sdp_dashboard::docs::DesiredContainer)> = Vec::new();
    if let Some(desired) = &sb.desired {
        services.extend(desired.services.iter().map(|(k, v)| (k.as_str(), v)));
        services.push(("gateway", &desired.gateway));
    }
    let rows: Vec<Vec<String>> = services
        .iter()
        .map(|(svc, d)| {
            let c = containers.iter().find(|c| c.name == d.container);
            vec![
                svc.to_string(),
                d.branch.clone(),
                s(c.and_then(|c| c.labels.get(sdp_protocol::labels::COMMIT)).map(short)),
                s(d.commit.as_deref().map(short)),
                c.map_or("missing".into(), |c| match &c.probe {
                    Some(probe) => format!("{} (health: {})", word(&c.state), probe.detail),
                    None => word(&c.state),
                }),
                d.host_port.to_string(),
            ]
        })
        .collect();
    out.push('\n');
    out.push_str(&table(
        &["SERVICE", "BRANCH", "COMMIT", "PINNED", "STATE", "PORT"],
        &rows,
    ));
    let routes = sb.desired.as_ref().map(|d| &d.routes).filter(|m| !m.is_empty());
    let live = sb.actual.routes.as_ref();
    if let Some(map) = routes {
        let rows: Vec<Vec<String>> = map
            .iter()
            .map(|(svc, url)| {
                let now = live.and_then(|l| l.get(svc));
                let matches = match now {
                    None => "unknown",
                    Some(now) if now == url => "yes",
                    Some(_) => "NO",
                };
                vec![svc.clone(), url.clone(), s(now.map(String::as_str)), matches.into()]
            })
            .collect();
        out.push_str("\n\n");
        out.push_str(&table(&["ROUTE", "TARGET", "LIVE", "MATCH"], &rows));
    }
    out.push_str("\n\nDrift: ");
    if status.pending.is_empty() {
        out.push_str("none");
    }
    for p in &status.pending {
        out.push_str(&format!(
            "\n  {} {} on {} ({})",
            p.action.kind,
            p.resource,
            word(&p.role),
            p.reason.kind()
        ));
    }
    if !sb.events.is_empty() {
        out.push_str("\n\nEvents (newest first):");
        for e in sb.events.iter().take(8) {
            out.push_str(&format!("\n  {}", e.message));
        }
    }
    out
}

/// `sdp logs SANDBOX/SERVICE [-f]`: a container's recent output, and with -f its new lines as they come.
pub fn run_logs(server: &Server, target: &str, follow: bool) -> Result<ExitCode> {
    let Some((sandbox, service)) = target.split_once('/') else {
        bail!("write the target as SANDBOX/SERVICE, e.g. qa-login-error/account");
    };
    let url = format!(
        "{}/api/v1/sandboxes/{sandbox}/logs/{service}?follow={follow}",
        server.server.trim_end_matches('/')
    );
    let response = request(server, &url)
        .call()
        .with_context(|| format!("cannot reach the reconciler at {}", server.server))?;
    if response.status().as_u16() >= 400 {
        let mut response = response;
        let text = response.body_mut().read_to_string().unwrap_or_default();
        match serde_json::from_str::<ErrorDoc>(&text) {
            Ok(e) => bail!("{}", e.error),
            Err(_) => bail!("{text}"),
        }
    }
    let reader = BufReader::new(response.into_body().into_reader());
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    for line in reader.lines() {
        let line = line?;
        if let Some(data) = line.strip_prefix("data: ").or_else(|| line.strip_prefix("data:")) {
            writeln!(out, "{}", printable(data))?;
            out.flush()?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// A container's line as a terminal may show it: control characters (escape sequences that would move the cursor,
/// retitle the window or worse) are written as `\u{1b}`, tabs kept.
pub fn printable(line: &str) -> std::borrow::Cow<'_, str> {
    if !line.chars().any(|c| c.is_control() && c != '\t') {
        return std::borrow::Cow::Borrowed(line);
    }
    line.chars()
        .map(|c| {
            if c.is_control() && c != '\t' {
                c.escape_unicode().to_string()
            } else {
                c.to_string()
            }
        })
        .collect::<String>()
        .into()
}

/// `sdp apply --wait`: follows the reconciler until each sandbox runs `commit` (any commit when empty) and is
/// Synced (or Suspended), printing each change of its status; exit 1 when one fails or the time is up.
pub fn wait_for_sync(
    server: &Server,
    sandboxes: &[String],
    commit: &str,
    limit: std::time::Duration,
) -> Result<ExitCode> {
    let started = std::time::Instant::now();
    let mut last: std::collections::BTreeMap<String, String> = Default::default();
    let mut failed_since: std::collections::BTreeMap<String, std::time::Instant> = Default::default();
    println!("waiting for {} to converge on {}", sandboxes.join(", "), server.server);
    loop {
        let mut done = 0;
        for name in sandboxes {
            let line = match get_doc::<SandboxDoc>(server, &format!("/api/v1/sandboxes/{name}")) {
                Err(e) if e.is::<NeedsLogin>() => return Err(e),
                Err(e) => format!("{e:#}"),
                Ok(sb) => {
                    let status = &sb.status;
                    let seen = commit.is_empty() || sb.config_commit == commit;
                    if !seen {
                        "waiting for the reconciler to read the commit".to_string()
                    } else {
                        if matches!(status.sync, Sync::Synced | Sync::Suspended) {
                            done += 1;
                        }
                        if status.sync == Sync::Failed {
                            failed_since.entry(name.clone()).or_insert_with(std::time::Instant::now);
                        } else {
                            failed_since.remove(name);
                        }
                        let doing = status
                            .in_flight
                            .as_deref()
                            .map(|s| format!(": {s}"))
                            .unwrap_or_default();
                        let left = status.pending.len();
                        let error = status
                            .last_error
                            .as_deref()
                            .map(|e| format!(" ({e})"))
                            .unwrap_or_default();
                        format!("{}, {left} step(s) left{doing}{error}", word(&status.sync))
                    }
                }
            };
            if last.get(name) != Some(&line) {
                println!("  [{:>5.1} s] {name}: {line}", started.elapsed().as_secs_f64());
                last.insert(name.clone(), line);
            }
        }
        if done == sandboxes.len() {
            println!("synced in {:.1} s", started.elapsed().as_secs_f64());
            return Ok(ExitCode::SUCCESS);
        }
        // A failure that lasts through a retry or two is the answer; a first failure may be retried.
        if failed_since
            .values()
            .any(|t| t.elapsed() > std::time::Duration::from_secs(30))
        {
            eprintln!("failed: see `sdp get sandbox NAME` and the deployment logs");
            return Ok(ExitCode::from(1));
        }
        if started.elapsed() > limit {
            eprintln!("not synced after {} s", limit.as_secs());
            return Ok(ExitCode::from(1));
        }
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
}

#[cfg(test)]
mod tests {
    use super::printable;

    #[test]
    fn a_containers_escape_sequences_reach_the_terminal_as_text() {
        assert_eq!(printable("plain\ttext"), "plain\ttext");
        assert_eq!(printable("\x1b]0;pwned\x07red"), "\\u{1b}]0;pwned\\u{7}red");
        assert_eq!(printable("a\rb"), "a\\u{d}b");
    }
}
