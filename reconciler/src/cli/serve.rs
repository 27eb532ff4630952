//! `sdp serve`: flags (or a config file) to a running reconciler.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::Args;

use crate::serve::ServeConfig;

#[derive(Args)]
pub struct ServeArgs {
    /// A YAML file with the settings below (camelCase names); flags given here win over it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// The config repo: a local path (watched) or a git URL (fetched every --poll-secs).
    #[arg(long)]
    repo: Option<String>,
    /// Where the store, logs and the config repo mirror live.
    #[arg(long)]
    data: Option<PathBuf>,
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// File with the token agents authenticate with.
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// Passes that may run at once.
    #[arg(long)]
    concurrency: Option<usize>,
    #[arg(long)]
    resync_secs: Option<u64>,
    #[arg(long)]
    poll_secs: Option<u64>,
    /// Address of the micro VM for routes to `sandbox`, until a micro agent reports its own.
    #[arg(long)]
    micro_address: Option<String>,
    /// Serve everything under this path (behind a proxy that mounts SDP at, e.g., /sandbox/credit-card).
    #[arg(long)]
    base_path: Option<String>,
    /// The http(s) URL of the config repo that dashboard logins are checked against (default: --repo, when it
    /// is an http(s) URL).
    #[arg(long, env = "SDP_LOGIN_REPO")]
    login_repo: Option<String>,
    /// No login: whoever reaches the port may read the dashboard and API. Trusted networks and demos only.
    #[arg(long, env = "SDP_ALLOW_ANONYMOUS")]
    allow_anonymous: bool,
    /// A proxy on another machine whose X-Forwarded-For names the client (repeat for more); one on this machine
    /// is always trusted.
    #[arg(long = "trusted-proxy")]
    trusted_proxies: Vec<std::net::IpAddr>,
    /// Host ports for sandboxes' gateways, FIRST-LAST (default 8080-8099); explicit `port:`s must lie within.
    #[arg(long, value_parser = port_range)]
    gateway_ports: Option<(u16, u16)>,
    /// Host ports for sandboxes' services, FIRST-LAST (default 9001-9099); explicit `port:`s must lie within.
    #[arg(long, value_parser = port_range)]
    service_ports: Option<(u16, u16)>,
}

fn port_range(text: &str) -> Result<(u16, u16), String> {
    let parse = |p: &str| p.trim().parse::<u16>().map_err(|_| format!("`{p}` is not a port"));
    let (first, last) = text
        .split_once('-')
        .ok_or_else(|| format!("`{text}` is not a range: write FIRST-LAST, as 9001-9099"))?;
    Ok((parse(first)?, parse(last)?))
}

fn config(args: ServeArgs) -> Result<ServeConfig> {
    let mut c = match &args.config {
        Some(path) => ServeConfig::from_file(path)?,
        None => {
            let (Some(repo), Some(data), Some(token_file)) =
                (args.repo.clone(), args.data.clone(), args.token_file.clone())
            else {
                bail!("sdp serve needs --repo, --data and --token-file (or --config FILE)");
            };
            ServeConfig::new(repo, data, token_file)
        }
    };
    if let Some(v) = args.repo {
        c.repo = v;
    }
    if let Some(v) = args.data {
        c.data = v;
    }
    if let Some(v) = args.listen {
        c.listen = v;
    }
    if let Some(v) = args.token_file {
        c.token_file = v;
    }
    if let Some(v) = args.concurrency {
        c.concurrency = v;
    }
    if let Some(v) = args.resync_secs {
        c.resync_secs = v;
    }
    if let Some(v) = args.poll_secs {
        c.poll_secs = v;
    }
    if let Some(v) = args.micro_address {
        c.micro_address = v;
    }
    if let Some(v) = args.base_path {
        c.base_path = v;
    }
    if let Some(v) = args.login_repo {
        c.login_repo = Some(v);
    }
    if args.allow_anonymous {
        c.allow_anonymous = true;
    }
    if !args.trusted_proxies.is_empty() {
        c.trusted_proxies = args.trusted_proxies;
    }
    if let Some(v) = args.gateway_ports {
        c.gateway_ports = v;
    }
    if let Some(v) = args.service_ports {
        c.service_ports = v;
    }
    if !c.base_path.is_empty() && !c.base_path.starts_with('/') {
        anyhow::bail!("--base-path must start with `/`, as in /sandbox/credit-card");
    }
    Ok(c)
}

pub fn run(args: ServeArgs) -> Result<ExitCode> {
    let config = config(args)?;
    crate::cli::init_logging();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(crate::serve::serve(config))?;
    Ok(ExitCode::SUCCESS)
}
