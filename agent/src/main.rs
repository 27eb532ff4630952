//! `sdp-agent`: the only part of SDP that touches a VM: git worktrees, Go builds, Docker and the gateway's
//! config.php. One binary, two roles (micro and gateway) chosen in its config file.

mod command;
mod config;
mod connection;
mod docker;
mod doctor;
mod executor;
mod files;
mod git;
mod lines;
mod outbox;
mod routes;
mod secrets;
mod tls;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "sdp-agent",
    version = concat!(env!("CARGO_PKG_VERSION"), " (commit ", env!("SDP_COMMIT"), ")"),
    about = "SDP's agent: runs sandboxes on this VM for the reconciler"
)]
struct Cli {
    /// The agent's config file.
    #[arg(long, global = true, default_value = config::DEFAULT_PATH)]
    config: PathBuf,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Connect to the reconciler and do what it asks (the default).
    Run,
    /// Check, step by step, everything the agent needs: the reconciler (TCP, HTTP, WebSocket, token), Docker, the
    /// runtime image, the repositories and their credentials. Exit 1 when a step fails.
    Doctor,
    /// Read or patch the `<service>_url` entries of a gateway config.php.
    Routes {
        #[command(subcommand)]
        what: RoutesCommand,
    },
}

#[derive(Subcommand)]
enum RoutesCommand {
    /// Print the routes as JSON, keyed by service name.
    Show {
        #[arg(long)]
        file: PathBuf,
    },
    /// Set SERVICE=URL entries in place; every other byte of the file stays as it is.
    Set {
        #[arg(long)]
        file: PathBuf,
        #[arg(required = true)]
        routes: Vec<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command.unwrap_or(Command::Run) {
        Command::Run => run(&cli.config),
        Command::Routes { what } => routes_command(what),
        Command::Doctor => doctor(&cli.config),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn routes_command(what: RoutesCommand) -> Result<ExitCode> {
    match what {
        RoutesCommand::Show { file } => {
            let text = std::fs::read_to_string(&file).with_context(|| format!("cannot read {}", file.display()))?;
            println!("{}", serde_json::to_string_pretty(&routes::routes(&text))?);
        }
        RoutesCommand::Set { file, routes: pairs } => {
            let text = std::fs::read_to_string(&file).with_context(|| format!("cannot read {}", file.display()))?;
            let mut wanted = std::collections::BTreeMap::new();
            for pair in pairs {
                let (service, url) = pair
                    .split_once('=')
                    .with_context(|| format!("`{pair}` is not SERVICE=URL"))?;
                wanted.insert(service.to_string(), url.to_string());
            }
            let patched = routes::patch(&text, &wanted).map_err(anyhow::Error::msg)?;
            files::write_atomically(&file, patched.as_bytes())?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn doctor(config_path: &std::path::Path) -> Result<ExitCode> {
    let config = config::AgentConfig::load(config_path)?;
    let tls = tls::client(&config, config_path)?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let ok = runtime.block_on(doctor::run(&config, tls));
    Ok(if ok { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

fn run(config_path: &std::path::Path) -> Result<ExitCode> {
    let config = Arc::new(config::AgentConfig::load(config_path)?);
    let tls = tls::client(&config, config_path)?;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    if config.token_in_clear() {
        tracing::warn!(
            "reconciler {} is plain ws:// to another machine: the agent token travels in clear; serve the \
             reconciler behind TLS and write wss:// (see deploy/nginx/sdp-tls.conf)",
            config.reconciler
        );
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let engine = docker::Engine::connect().await?;
        std::fs::create_dir_all(&config.data_dir)
            .with_context(|| format!("cannot create the data dir {}", config.data_dir.display()))?;
        tracing::info!(node = %config.node, role = %config.role, "sdp-agent {} starting", env!("CARGO_PKG_VERSION"));
        let executor = Arc::new(executor::Executor::new(config, engine));
        executor.clear_stale_locks().await;
        let attempts = Arc::default();
        // SIGTERM (systemd) or Ctrl-C: the connection lets its actions end, or abandons them saying so, and
        // closes; a second signal stops at once.
        let (stop_tx, stop) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            stopped().await;
            tracing::info!("stop asked for");
            stop_tx.send_replace(true);
            stopped().await;
            tracing::warn!("second stop signal: exiting now");
            std::process::exit(1);
        });
        connection::run(executor, tls, attempts, stop).await;
        Ok::<_, anyhow::Error>(())
    })?;
    Ok(ExitCode::SUCCESS)
}

/// The next SIGTERM or Ctrl-C.
async fn stopped() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(term) => term,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
