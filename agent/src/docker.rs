//! Docker through the Engine API (bollard, with the API version negotiated: its default is newer than Docker
//! 28's). Only objects labelled `sdp.managed=true` are listed, stopped or removed; nothing is ever pulled.

use std::collections::{BTreeMap, HashMap};

use anyhow::{Context, Result, bail};
use bollard::Docker;
use bollard::models::{
    ContainerCreateBody, ContainerSummaryStateEnum, HostConfig, NetworkCreateRequest, PortBinding, RestartPolicy,
    RestartPolicyNameEnum,
};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, ListContainersOptionsBuilder, ListImagesOptionsBuilder, ListNetworksOptionsBuilder,
    RemoveContainerOptionsBuilder, StopContainerOptionsBuilder,
};
use sdp_protocol::{Container, ContainerState, Probe, labels, network_name};

use crate::lines::Lines;

/// One listing of the engine's managed containers, as an agent of one role sees it.
#[derive(Debug, Default)]
pub struct Listed {
    /// This role's containers, by name.
    pub mine: Vec<Container>,
    /// Sandboxes the other role runs containers of on this engine (one both agents share, as in the demo).
    pub other_role_sandboxes: std::collections::BTreeSet<String>,
}

/// The engine, connected and negotiated.
#[derive(Clone)]
pub struct Engine {
    docker: Docker,
    /// The last probe of each container (by id) and when it was made: probes run every `PROBE_EVERY`, not at
    /// every scan, so a service's log is not filled with health checks.
    probes: std::sync::Arc<std::sync::Mutex<HashMap<String, (std::time::Instant, Probe)>>>,
    /// The installation this agent works for (from the reconciler's Welcome): objects labelled with another
    /// one are somebody else's and never listed, stopped or removed.
    installation: std::sync::Arc<std::sync::RwLock<String>>,
}

/// A container to create.
pub struct Spec {
    pub name: String,
    pub image: String,
    pub cmd: Option<Vec<String>>,
    pub env: Vec<String>,
    pub labels: BTreeMap<String, String>,
    /// `host:container[:ro]`
    pub binds: Vec<String>,
    pub host_port: u16,
    pub container_port: u16,
    pub network: String,
    pub cpus: Option<f64>,
    pub memory_bytes: Option<u64>,
    pub working_dir: Option<String>,
}

/// How often a container's health path is asked.
const PROBE_EVERY: std::time::Duration = std::time::Duration::from_secs(15);
/// How long a health probe may take, connection and status line together.
const PROBE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// GETs `path` on a published port of this VM: an HTTP status below 400 is healthy.
pub async fn probe(port: u16, path: &str) -> Probe {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let attempt = async {
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
        let request = format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\nUser-Agent: sdp-agent\r\n\r\n");
        stream.write_all(request.as_bytes()).await?;
        let mut line = String::new();
        BufReader::new(stream).read_line(&mut line).await?;
        Ok::<_, std::io::Error>(line)
    };
    match tokio::time::timeout(PROBE_TIMEOUT, attempt).await {
        Err(_) => Probe {
            ok: false,
            detail: format!("no answer within {} s", PROBE_TIMEOUT.as_secs()),
        },
        Ok(Err(e)) => Probe {
            ok: false,
            detail: e.to_string(),
        },
        Ok(Ok(line)) => match line.split_whitespace().nth(1).and_then(|c| c.parse::<u16>().ok()) {
            Some(code) => Probe {
                ok: code < 400,
                detail: format!("HTTP {code}"),
            },
            None => Probe {
                ok: false,
                detail: "not an HTTP answer".into(),
            },
        },
    }
}

fn managed_filter() -> HashMap<String, Vec<String>> {
    [("label".to_string(), vec![format!("{}=true", labels::MANAGED)])].into()
}

impl Engine {
    pub async fn connect() -> Result<Engine> {
        let docker = Docker::connect_with_local_defaults()
            .context("cannot reach the Docker engine: is dockerd running, and may this user use its socket?")?;
        let docker = docker
            .negotiate_version()
            .await
            .context("cannot reach the Docker engine: is dockerd running, and may this user use its socket?")?;
        Ok(Engine {
            docker,
            probes: Default::default(),
            installation: Default::default(),
        })
    }

    pub fn set_installation(&self, id: &str) {
        *self.installation.write().unwrap_or_else(|e| e.into_inner()) = id.to_string();
    }

    pub fn installation(&self) -> String {
        self.installation.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Whether labels say SDP manages the object for this installation (unlabeled: made before installations
    /// were labelled, and adopted).
    fn ours<'a>(&self, get: impl Fn(&str) -> Option<&'a str>) -> bool {
        get(labels::MANAGED) == Some("true")
            && get(labels::INSTALLATION).is_none_or(|i| i == self.installation().as_str())
    }

    /// Managed containers of this agent's role, with their restart counts, in one listing of the engine that also
    /// says which sandboxes the other role runs containers of here. The gateway agent owns the `gateway`
    /// containers and the micro agent the others, so that two agents sharing one engine (the demo, the tests)
    /// never report, and so never remove, each other's containers; only this role's are inspected.
    pub async fn containers(&self, role: sdp_protocol::Role) -> Result<Listed> {
        let options = ListContainersOptionsBuilder::new()
            .all(true)
            .filters(&managed_filter())
            .build();
        let list = self.docker.list_containers(Some(options)).await?;
        let mut out = Listed::default();
        for c in list {
            let labels: sdp_protocol::Labels = c.labels.unwrap_or_default().into_iter().collect();
            if !self.ours(|k| labels.get(k)) {
                continue;
            }
            let is_gateway = labels.get(labels::SERVICE) == Some(sdp_protocol::GATEWAY);
            if is_gateway != (role == sdp_protocol::Role::Gateway) {
                out.other_role_sandboxes
                    .extend(labels.get(labels::SANDBOX).map(str::to_string));
                continue;
            }
            let name = c
                .names
                .and_then(|n| n.into_iter().next())
                .map(|n| n.trim_start_matches('/').to_string())
                .unwrap_or_default();
            let id = c.id.unwrap_or_default();
            let (restart_count, exit_code) = match self.docker.inspect_container(&id, None).await {
                Ok(i) => (
                    i.restart_count.unwrap_or(0).max(0) as u32,
                    i.state.and_then(|s| s.exit_code),
                ),
                Err(_) => (0, None),
            };
            let mut ports: Vec<u16> = c
                .ports
                .unwrap_or_default()
                .iter()
                .filter_map(|p| p.public_port)
                .collect();
            ports.sort();
            ports.dedup();
            let state = match c.state {
                Some(ContainerSummaryStateEnum::CREATED) => ContainerState::Created,
                Some(ContainerSummaryStateEnum::RUNNING) => ContainerState::Running,
                Some(ContainerSummaryStateEnum::RESTARTING) => ContainerState::Restarting,
                Some(ContainerSummaryStateEnum::PAUSED) => ContainerState::Paused,
                Some(ContainerSummaryStateEnum::EXITED) => ContainerState::Exited,
                Some(ContainerSummaryStateEnum::DEAD) => ContainerState::Dead,
                _ => ContainerState::Unknown,
            };
            out.mine.push(Container {
                name,
                id,
                labels,
                state,
                ports,
                restart_count,
                exit_code: if state == ContainerState::Running {
                    None
                } else {
                    exit_code
                },
                probe: None,
            });
        }
        out.mine.sort_by(|a, b| a.name.cmp(&b.name));
        // Health paths of running containers: the last answer while it is fresh, else probed now, all at once
        // (each within PROBE_TIMEOUT).
        let now = std::time::Instant::now();
        let known = self.probes.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let probes = out.mine.iter().map(|c| {
            let fresh = known
                .get(&c.id)
                .filter(|(at, _)| now.duration_since(*at) < PROBE_EVERY)
                .map(|(at, p)| (*at, p.clone()));
            async move {
                let path = c.labels.get(labels::HEALTH_PATH)?;
                let port = *c.ports.first()?;
                (c.state == ContainerState::Running).then_some(())?;
                match fresh {
                    Some(answer) => Some(answer),
                    None => Some((std::time::Instant::now(), probe(port, path).await)),
                }
            }
        });
        let results = futures_util::future::join_all(probes).await;
        let mut kept = HashMap::new();
        for (c, result) in out.mine.iter_mut().zip(results) {
            if let Some((at, p)) = result {
                kept.insert(c.id.clone(), (at, p.clone()));
                c.probe = Some(p);
            }
        }
        *self.probes.lock().unwrap_or_else(|e| e.into_inner()) = kept;
        Ok(out)
    }

    /// Managed networks, by name.
    pub async fn networks(&self) -> Result<Vec<String>> {
        let options = ListNetworksOptionsBuilder::new().filters(&managed_filter()).build();
        let mut names: Vec<String> = self
            .docker
            .list_networks(Some(options))
            .await?
            .into_iter()
            .filter(|n| self.ours(|k| n.labels.as_ref().and_then(|l| l.get(k)).map(String::as_str)))
            .filter_map(|n| n.name)
            .collect();
        names.sort();
        Ok(names)
    }

    pub async fn images(&self) -> Result<Vec<String>> {
        let images = self
            .docker
            .list_images(Some(ListImagesOptionsBuilder::new().build()))
            .await?;
        let mut tags: Vec<String> = images.into_iter().flat_map(|i| i.repo_tags).collect();
        tags.sort();
        Ok(tags)
    }

    /// What an image runs (entrypoint and command, joined) and the ports it exposes: read, nothing created.
    pub async fn image_runs(&self, image: &str) -> Result<(String, Vec<String>)> {
        let inspected = self.docker.inspect_image(image).await?;
        let config = inspected.config.unwrap_or_default();
        let runs = config
            .entrypoint
            .unwrap_or_default()
            .into_iter()
            .chain(config.cmd.unwrap_or_default())
            .collect::<Vec<_>>()
            .join(" ");
        let mut ports: Vec<String> = config.exposed_ports.unwrap_or_default().into_iter().collect();
        ports.sort();
        Ok((runs, ports))
    }

    pub async fn has_image(&self, image: &str) -> Result<bool> {
        Ok(self.docker.inspect_image(image).await.is_ok())
    }

    /// Creates the sandbox's network unless it exists. A network of that name that SDP does not own is refused.
    pub async fn ensure_network(&self, sandbox: &str) -> Result<()> {
        let name = network_name(sandbox);
        if let Ok(existing) = self.docker.inspect_network(&name, None).await {
            if self.ours(|k| existing.labels.as_ref().and_then(|l| l.get(k)).map(String::as_str)) {
                return Ok(());
            }
            bail!(
                "a network named {name} exists and belongs to something else (no sdp.managed label, or another SDP \
                 installation's): rename or remove it"
            );
        }
        let labels: HashMap<String, String> = [
            (labels::MANAGED.to_string(), "true".to_string()),
            (labels::SANDBOX.to_string(), sandbox.to_string()),
            (labels::INSTALLATION.to_string(), self.installation()),
        ]
        .into();
        self.docker
            .create_network(NetworkCreateRequest {
                name: name.clone(),
                driver: Some("bridge".into()),
                labels: Some(labels),
                ..Default::default()
            })
            .await
            .with_context(|| format!("cannot create network {name}"))?;
        Ok(())
    }

    pub async fn remove_network(&self, sandbox: &str) -> Result<()> {
        let name = network_name(sandbox);
        match self.docker.inspect_network(&name, None).await {
            Ok(n) if self.ours(|k| n.labels.as_ref().and_then(|l| l.get(k)).map(String::as_str)) => self
                .docker
                .remove_network(&name)
                .await
                .with_context(|| format!("cannot remove network {name}")),
            Ok(_) => bail!("network {name} is not this installation's: left alone"),
            Err(_) => Ok(()),
        }
    }

    /// Whether a container of this name exists, and whether it is this installation's.
    async fn owner(&self, name: &str) -> Option<bool> {
        let c = self.docker.inspect_container(name, None).await.ok()?;
        let labels = c.config.and_then(|c| c.labels).unwrap_or_default();
        Some(self.ours(|k| labels.get(k).map(String::as_str)))
    }

    /// Replaces the managed container `spec.name` by a new one from `spec`, and starts it.
    pub async fn replace(&self, spec: Spec) -> Result<String> {
        if !self.has_image(&spec.image).await? {
            bail!(
                "image {} is not loaded on this node and SDP never pulls: load it with `docker load -i <file>.tar` \
                 (or `docker import`)",
                spec.image
            );
        }
        match self.owner(&spec.name).await {
            Some(false) => bail!(
                "a container named {} exists and belongs to something else (no sdp.managed label, or another SDP \
                 installation's): rename or remove it yourself",
                spec.name
            ),
            Some(true) => self.remove(&spec.name).await?,
            None => {}
        }
        let port_key = format!("{}/tcp", spec.container_port);
        let bindings: HashMap<String, Option<Vec<PortBinding>>> = [(
            port_key.clone(),
            Some(vec![PortBinding {
                host_ip: None,
                host_port: Some(spec.host_port.to_string()),
            }]),
        )]
        .into();
        let host = HostConfig {
            binds: Some(spec.binds.clone()),
            port_bindings: Some(bindings),
            network_mode: Some(spec.network.clone()),
            memory: spec.memory_bytes.map(|m| m as i64),
            nano_cpus: spec.cpus.map(|c| (c * 1e9) as i64),
            restart_policy: Some(RestartPolicy {
                name: Some(RestartPolicyNameEnum::UNLESS_STOPPED),
                maximum_retry_count: None,
            }),
            ..Default::default()
        };
        let body = ContainerCreateBody {
            image: Some(spec.image.clone()),
            cmd: spec.cmd.clone(),
            env: Some(spec.env.clone()),
            labels: Some(spec.labels.clone().into_iter().collect()),
            exposed_ports: Some(vec![port_key]),
            working_dir: spec.working_dir.clone(),
            host_config: Some(host),
            ..Default::default()
        };
        let options = CreateContainerOptionsBuilder::new().name(&spec.name).build();
        let created = self
            .docker
            .create_container(Some(options), body)
            .await
            .with_context(|| format!("cannot create container {}", spec.name))?;
        self.docker
            .start_container(&spec.name, None)
            .await
            .with_context(|| format!("cannot start container {}", spec.name))?;
        Ok(created.id)
    }

    /// Follows a container's output from now on, one call of `line` per line (cut to `MAX_LOG_LINE`; stdout and
    /// stderr each cut into lines of their own), until the container stops.
    pub async fn follow_logs(&self, id: &str, mut line: impl FnMut(String)) {
        use futures_util::StreamExt;
        let since = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i32)
            .unwrap_or(0);
        let options = bollard::query_parameters::LogsOptionsBuilder::new()
            .follow(true)
            .stdout(true)
            .stderr(true)
            .since(since)
            .build();
        let mut stream = self.docker.logs(id, Some(options));
        let (mut out, mut err) = (Lines::default(), Lines::default());
        while let Some(Ok(chunk)) = stream.next().await {
            let lines = match chunk {
                bollard::container::LogOutput::StdErr { .. } => &mut err,
                _ => &mut out,
            };
            lines.push(chunk.as_ref(), &mut line);
        }
        for last in [out.finish(), err.finish()].into_iter().flatten() {
            line(last);
        }
    }

    pub async fn stop(&self, name: &str) -> Result<()> {
        match self.owner(name).await {
            Some(true) => {
                let options = StopContainerOptionsBuilder::new().t(10).build();
                self.docker
                    .stop_container(name, Some(options))
                    .await
                    .with_context(|| format!("cannot stop {name}"))
            }
            Some(false) => bail!("container {name} is not this installation's: left alone"),
            None => Ok(()),
        }
    }

    pub async fn remove(&self, name: &str) -> Result<()> {
        match self.owner(name).await {
            Some(true) => {
                let options = RemoveContainerOptionsBuilder::new().force(true).build();
                self.docker
                    .remove_container(name, Some(options))
                    .await
                    .with_context(|| format!("cannot remove {name}"))
            }
            Some(false) => bail!("container {name} is not this installation's: left alone"),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sdp_protocol::MAX_LOG_LINE;

    /// The real engine (as every VM has, and the e2e suite needs): a container that prints 1 MB without a newline.
    #[tokio::test]
    async fn a_containers_line_without_a_newline_reaches_the_reconciler_cut_and_counted() {
        let engine = Engine::connect().await.expect("the test machine runs Docker");
        let name = format!("sdp-agent-test-follow-{}", std::process::id());
        let body = ContainerCreateBody {
            image: Some("sdp-demo/busybox:latest".into()),
            // Starts printing after the follower has begun (Docker's `since` counts whole seconds).
            cmd: Some(vec![
                "sh".into(),
                "-c".into(),
                "sleep 2; yes | head -c 1000000 | tr -d '\\n'; echo; echo after".into(),
            ]),
            ..Default::default()
        };
        let options = CreateContainerOptionsBuilder::new().name(&name).build();
        engine.docker.create_container(Some(options), body).await.unwrap();
        engine.docker.start_container(&name, None).await.unwrap();
        let mut lines = Vec::new();
        let followed = tokio::time::timeout(
            std::time::Duration::from_secs(60),
            engine.follow_logs(&name, |l| lines.push(l)),
        )
        .await;
        let remove = RemoveContainerOptionsBuilder::new().force(true).build();
        let _ = engine.docker.remove_container(&name, Some(remove)).await;
        followed.expect("the follower ends when the container does");
        assert_eq!(
            lines.len(),
            2,
            "{:?}",
            lines.iter().map(|l| l.len()).collect::<Vec<_>>()
        );
        assert!(lines[0].len() <= MAX_LOG_LINE, "{} bytes", lines[0].len());
        let kept = lines[0].bytes().take_while(|&b| b == b'y').count();
        assert!(kept > MAX_LOG_LINE / 2);
        assert_eq!(
            lines[0][kept..],
            format!(" [sdp: {} more bytes cut]", 500_000 - kept),
            "`yes` prints y and a newline: 500,000 y"
        );
        assert_eq!(lines[1], "after");
    }
}
