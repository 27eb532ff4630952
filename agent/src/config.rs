//! The agent's config file (`/etc/sdp/agent.yaml` by default). A bad file is refused at start with the file,
//! line and field.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use sdp_protocol::Role;
use serde::Deserialize;

pub const DEFAULT_PATH: &str = "/etc/sdp/agent.yaml";

#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AgentConfig {
    /// This node's name, as the dashboard shows it.
    pub node: String,
    pub role: Role,
    /// The reconciler's WebSocket, e.g. `wss://sdp.example.internal/sandbox/credit-card/ws/agent` behind nginx
    /// with TLS, or `ws://172.18.136.90:3452/ws/agent` (the token then travels in clear).
    pub reconciler: String,
    /// A PEM bundle of the CAs trusted for the reconciler's certificate (the company CA) on a `wss://` URL.
    /// Without it, the system's bundle (`/etc/ssl/certs/ca-certificates.crt`, or `SSL_CERT_FILE`) is trusted.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// File with the token shared with the reconciler.
    pub token_file: PathBuf,
    /// The address other machines reach this node's published ports at.
    pub address: String,
    /// Repositories by service name (`gateway` for the gateway's), each a local clone configured by hand.
    #[serde(default)]
    pub repos: BTreeMap<String, PathBuf>,
    /// The pre-loaded runtime image containers run on (`alpine:3.20` for micro, `php:8.3-apache` for gateway).
    pub image: String,
    /// Worktrees, builds and state live here.
    pub data_dir: PathBuf,
    /// A file with `username=...` and `password=...` lines (git's credential format) for fetching over
    /// HTTP(S); never logged, never on a command line, never written by SDP.
    #[serde(default)]
    pub git_credentials: Option<PathBuf>,
    #[serde(default = "default_go")]
    pub go: PathBuf,
    #[serde(default = "default_composer")]
    pub composer: PathBuf,
    /// The gateway's config.php, relative to its repository.
    #[serde(default = "default_config_php")]
    pub config_php: PathBuf,
    /// The command that reloads the gateway gracefully inside its container.
    #[serde(default = "default_reload")]
    pub reload: Vec<String>,
    /// Where the worktree is mounted in the container: `/src` for micro; for the gateway the repo's production
    /// path, `/var/www/html/erangel-ocean`.
    #[serde(default)]
    pub mount: Option<PathBuf>,
    /// The port the service listens on inside its container (the published host port maps to it): 8080 for
    /// micro, 80 (Apache in php:8.3-apache) for the gateway.
    #[serde(default)]
    pub container_port: Option<u16>,
    /// Gateway: the value of `APACHE_DOCUMENT_ROOT` in the container (default: the mount point), which
    /// php:8.3-apache's site configuration serves.
    #[serde(default)]
    pub document_root: Option<PathBuf>,
    /// The only directory secrets are read from (an Environment's `secrets: {X: {file: ...}}` must name a file
    /// inside it).
    #[serde(default = "default_secrets_dir")]
    pub secrets_dir: PathBuf,
    /// Let `composer install` run the branch's scripts and plugins (off: `--no-scripts --no-plugins`, since they
    /// run on this VM as the agent's user, not in a container).
    #[serde(default)]
    pub composer_scripts: bool,
    /// Go's environment for builds on this node, on top of SDP's offline defaults (`GOPROXY=off`, `GOFLAGS`
    /// unset, a private `GOPATH` and module cache under the data dir): `GOPROXY`, `GOFLAGS`, `GOPRIVATE`,
    /// `GONOSUMDB`, `GOSUMDB`, `GOMODCACHE`, `GOPATH`... as the operator sets up the node's module cache or
    /// proxy. Nothing else is ever fetched.
    #[serde(default)]
    pub go_env: BTreeMap<String, String>,
    /// How the container is started; `{binary}` is replaced by the built binary's path in the container.
    #[serde(default)]
    pub command: Option<Vec<String>>,
    /// Go's build cache (default: `go-cache` in the data dir).
    #[serde(default)]
    pub go_cache: Option<PathBuf>,
    /// Seconds between fetches of the repositories with deployed branches, so that a push is seen.
    #[serde(default = "default_fetch_secs")]
    pub fetch_secs: u64,
    /// On SIGTERM, seconds the actions in flight may run on to their end before they are abandoned (a build is
    /// killed and done again when the agent is back). Keep it below systemd's `TimeoutStopSec`.
    #[serde(default = "default_stop_grace_secs")]
    pub stop_grace_secs: u64,
}

fn default_stop_grace_secs() -> u64 {
    20
}

fn default_fetch_secs() -> u64 {
    30
}

fn default_go() -> PathBuf {
    PathBuf::from("go")
}
fn default_composer() -> PathBuf {
    PathBuf::from("composer")
}
fn default_config_php() -> PathBuf {
    PathBuf::from("application/config/production/config.php")
}
fn default_reload() -> Vec<String> {
    vec!["apachectl".into(), "-k".into(), "graceful".into()]
}
fn default_secrets_dir() -> PathBuf {
    PathBuf::from("/etc/sdp/secrets")
}

/// Where the gateway's worktree is mounted by default: erangel's path in production.
pub const GATEWAY_MOUNT: &str = "/var/www/html/erangel-ocean";

impl AgentConfig {
    pub fn load(path: &Path) -> Result<AgentConfig> {
        let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
        AgentConfig::parse(path, &text)
    }

    pub fn parse(path: &Path, text: &str) -> Result<AgentConfig> {
        let config: AgentConfig =
            serde_saphyr::from_str(text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        if !(config.reconciler.starts_with("ws://") || config.reconciler.starts_with("wss://")) {
            bail!(
                "{}: reconciler: `{}` is not a WebSocket URL; write ws://HOST:3452/ws/agent",
                path.display(),
                config.reconciler
            );
        }
        if let Some(ca) = &config.ca_file
            && !config.reconciler.starts_with("wss://")
        {
            bail!(
                "{}: caFile: {} is set, but reconciler `{}` is not a wss:// URL, so no certificate is checked; \
                 write wss:// (the reconciler behind TLS) or remove caFile",
                path.display(),
                ca.display(),
                config.reconciler
            );
        }
        if let Some(file) = &config.git_credentials
            && file.to_string_lossy().contains('\'')
        {
            bail!(
                "{}: gitCredentials: the path must not contain a single quote",
                path.display()
            );
        }
        if config.node.trim().is_empty() {
            bail!("{}: node: must not be empty", path.display());
        }
        for key in config.go_env.keys() {
            let ok = !key.is_empty()
                && key
                    .bytes()
                    .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == b'_');
            if !ok {
                bail!(
                    "{}: goEnv: `{key}` is not an environment variable name such as GOPROXY or GOMODCACHE",
                    path.display()
                );
            }
        }
        Ok(config)
    }

    /// The reconciler's host as written in `reconciler:` (an IPv6 address without its brackets).
    pub fn reconciler_host(&self) -> &str {
        let rest = self
            .reconciler
            .split_once("://")
            .map_or(self.reconciler.as_str(), |(_, r)| r);
        let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
        let authority = authority.rsplit_once('@').map_or(authority, |(_, a)| a);
        match authority.strip_prefix('[') {
            Some(v6) => v6.split(']').next().unwrap_or(""),
            None => authority.split(':').next().unwrap_or(""),
        }
    }

    /// Whether the token travels in clear: a `ws://` URL to a host that is not this machine.
    pub fn token_in_clear(&self) -> bool {
        let host = self.reconciler_host();
        let loopback =
            host.eq_ignore_ascii_case("localhost") || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback());
        self.reconciler.starts_with("ws://") && !loopback
    }

    pub fn token(&self) -> Result<String> {
        let token = std::fs::read_to_string(&self.token_file)
            .with_context(|| format!("cannot read the token file {}", self.token_file.display()))?;
        Ok(token.trim().to_string())
    }

    /// Where a sandbox's worktree of a service lives.
    pub fn worktree(&self, sandbox: &str, service: &str) -> PathBuf {
        self.data_dir.join("worktrees").join(sandbox).join(service)
    }

    /// Where the container sees the worktree.
    pub fn mount_point(&self) -> PathBuf {
        self.mount.clone().unwrap_or_else(|| match self.role {
            Role::Micro => PathBuf::from("/src"),
            Role::Gateway => PathBuf::from(GATEWAY_MOUNT),
        })
    }

    /// The port the service or Apache listens on inside the container.
    pub fn container_port(&self) -> u16 {
        self.container_port.unwrap_or(match self.role {
            Role::Micro => 8080,
            Role::Gateway => 80,
        })
    }

    /// Gateway: `APACHE_DOCUMENT_ROOT` in the container.
    pub fn document_root(&self) -> PathBuf {
        self.document_root.clone().unwrap_or_else(|| self.mount_point())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_field_is_refused_with_file_line_and_name() {
        let text = "node: micro-92\nrole: micro\nreconciler: ws://127.0.0.1:3452/ws/agent\ntokenFile: /t\naddress: 127.0.0.1\nimage: alpine:3.20\ndataDir: /d\nrepoz: {}\n";
        let err = AgentConfig::parse(Path::new("/etc/sdp/agent.yaml"), text)
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("/etc/sdp/agent.yaml:"), "{err}");
        assert!(err.contains("repoz"), "{err}");
        assert!(err.contains("line 8"), "{err}");
        let http = text.replace("ws://", "http://").replace("repoz: {}\n", "");
        let err = AgentConfig::parse(Path::new("a.yaml"), &http).unwrap_err().to_string();
        assert!(err.contains("not a WebSocket URL"), "{err}");
        let ok = AgentConfig::parse(Path::new("a.yaml"), &text.replace("repoz: {}\n", "")).unwrap();
        assert_eq!(ok.role, Role::Micro);
        assert_eq!(ok.mount_point(), PathBuf::from("/src"));
        assert_eq!(ok.container_port(), 8080);
    }

    #[test]
    fn ca_file_needs_wss_and_clear_text_is_only_for_this_machine() {
        let text = "node: micro-92\nrole: micro\nreconciler: ws://127.0.0.1:3452/ws/agent\ntokenFile: /t\naddress: 127.0.0.1\nimage: alpine:3.20\ndataDir: /d\n";
        let parse = |t: &str| AgentConfig::parse(Path::new("/etc/sdp/agent.yaml"), t);
        let err = parse(&format!("{text}caFile: /etc/sdp/company-ca.pem\n"))
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("/etc/sdp/agent.yaml: caFile: /etc/sdp/company-ca.pem"),
            "{err}"
        );
        assert!(err.contains("not a wss:// URL"), "{err}");
        let wss = text.replace("ws://127.0.0.1:3452", "wss://sdp.example.internal");
        let ok = parse(&format!("{wss}caFile: /etc/sdp/company-ca.pem\n")).unwrap();
        assert_eq!(ok.ca_file, Some(PathBuf::from("/etc/sdp/company-ca.pem")));
        assert_eq!(ok.reconciler_host(), "sdp.example.internal");
        assert!(!ok.token_in_clear());

        let clear = |url: &str| parse(&text.replace("ws://127.0.0.1:3452", url)).unwrap();
        assert!(!clear("ws://127.0.0.1:3452").token_in_clear());
        assert!(!clear("ws://localhost:3452").token_in_clear());
        assert!(!clear("ws://[::1]:3452").token_in_clear());
        assert_eq!(clear("ws://[::1]:3452").reconciler_host(), "::1");
        assert!(clear("ws://172.18.136.90:3452").token_in_clear());
        assert!(clear("ws://127.0.0.1.example.com").token_in_clear());
        assert_eq!(clear("ws://172.18.136.90:3452").reconciler_host(), "172.18.136.90");
    }

    #[test]
    fn the_readmes_agent_configs_are_accepted() {
        let readme = include_str!("../../README.md");
        let blocks: Vec<&str> = readme
            .split("```yaml\n")
            .skip(1)
            .filter_map(|b| b.split_once("```").map(|(yaml, _)| yaml))
            .filter(|yaml| yaml.starts_with("node:"))
            .collect();
        assert_eq!(blocks.len(), 2, "the micro and the gateway example");
        for yaml in blocks {
            let config = AgentConfig::parse(Path::new("README.md"), yaml).unwrap();
            if config.reconciler.starts_with("wss://") {
                assert!(config.ca_file.is_some(), "{yaml}");
            }
        }
    }

    #[test]
    fn the_gateway_defaults_are_php_apache_at_erangels_production_path() {
        let text = "node: gw\nrole: gateway\nreconciler: ws://127.0.0.1:3452/ws/agent\ntokenFile: /t\naddress: 127.0.0.1\nimage: php:8.3-apache\ndataDir: /d\n";
        let gw = AgentConfig::parse(Path::new("a.yaml"), text).unwrap();
        assert_eq!(gw.container_port(), 80);
        assert_eq!(gw.mount_point(), PathBuf::from("/var/www/html/erangel-ocean"));
        assert_eq!(gw.document_root(), PathBuf::from("/var/www/html/erangel-ocean"));
        assert_eq!(gw.reload, ["apachectl", "-k", "graceful"]);
        assert_eq!(gw.config_php, PathBuf::from("application/config/production/config.php"));
        let bad = format!("{text}goEnv: {{ 'GOPROXY; rm': x }}\n");
        let err = AgentConfig::parse(Path::new("a.yaml"), &bad).unwrap_err().to_string();
        assert!(err.contains("goEnv"), "{err}");
        let ok = format!("{text}goEnv: {{ GOPROXY: off, GOMODCACHE: /srv/gomodcache }}\n");
        let ok = AgentConfig::parse(Path::new("a.yaml"), &ok).unwrap();
        assert_eq!(ok.go_env["GOMODCACHE"], "/srv/gomodcache");
    }
}
