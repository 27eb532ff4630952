//! The reconciler's own types as the API's documents (`sdp_dashboard::docs`): the compiled desired state (which
//! keeps shared environments and their digest), the store's records (kept apart so that renaming a field of the
//! API cannot make the stored ones unreadable) and the compile settings. Each conversion names every field, so a
//! field added on either side is a compile error here, not a field that silently never reaches the API.
//!
//! What the reconciler holds exactly as the API shows it is the documents' own type, re-exported where the
//! reconciler names it, with nothing to convert: the controller's `Status` (`controller::status`), the plan's
//! `Reason`, the sandbox's `Mode` (`desired`), a commit's `Change` (`git`) and a connected agent (`hub::NodeInfo`).

use std::sync::Arc;

use sdp_dashboard::docs;

use crate::desired::{Allocations, DesiredContainer, DesiredSandbox, Leaving, MergedEnv, Settings};
use crate::store::{Deployment, DeploymentState, Event, StageRecord};

impl From<&DesiredSandbox> for docs::DesiredSandbox {
    fn from(d: &DesiredSandbox) -> docs::DesiredSandbox {
        let DesiredSandbox {
            name,
            owner,
            mode,
            services,
            gateway,
            routes,
        } = d;
        docs::DesiredSandbox {
            name: name.clone(),
            owner: owner.clone(),
            mode: mode.clone(),
            services: services.iter().map(|(k, c)| (k.clone(), c.into())).collect(),
            gateway: gateway.into(),
            routes: routes.clone(),
        }
    }
}

impl From<&DesiredContainer> for docs::DesiredContainer {
    fn from(c: &DesiredContainer) -> docs::DesiredContainer {
        let DesiredContainer {
            sandbox,
            service,
            container,
            branch,
            commit,
            host_port,
            env,
            cpus,
            memory_bytes,
            health_path,
            build,
            spec_hash,
        } = c;
        // The digest is the reconciler's own shortcut, never shown.
        let MergedEnv {
            env,
            secret_files,
            files,
            digest: _,
        } = &**env;
        docs::DesiredContainer {
            sandbox: sandbox.to_string(),
            service: service.clone(),
            container: container.clone(),
            branch: branch.clone(),
            commit: commit.clone(),
            host_port: *host_port,
            env: docs::MergedEnv {
                env: env.clone(),
                secret_files: secret_files.clone(),
                files: files.clone(),
            },
            cpus: *cpus,
            memory_bytes: *memory_bytes,
            health_path: health_path.clone(),
            build: build.clone(),
            spec_hash: *spec_hash,
        }
    }
}

impl From<Event> for docs::Event {
    fn from(e: Event) -> docs::Event {
        let Event {
            seq,
            at_ms,
            sandbox,
            message,
        } = e;
        docs::Event {
            seq,
            at_ms,
            sandbox,
            message,
        }
    }
}

impl From<DeploymentState> for docs::DeploymentState {
    fn from(state: DeploymentState) -> docs::DeploymentState {
        match state {
            DeploymentState::Running => docs::DeploymentState::Running,
            DeploymentState::Succeeded => docs::DeploymentState::Succeeded,
            DeploymentState::Failed => docs::DeploymentState::Failed,
        }
    }
}

impl From<Deployment> for docs::DeploymentDoc {
    fn from(d: Deployment) -> docs::DeploymentDoc {
        let Deployment {
            id,
            sandbox,
            service,
            repo,
            branch,
            commit,
            config_commit,
            config_author,
            environments,
            reason,
            trigger,
            started_ms,
            ended_ms,
            state,
            stages,
            error,
        } = d;
        docs::DeploymentDoc {
            id,
            sandbox,
            service,
            repo,
            branch,
            commit,
            config_commit,
            config_author,
            environments,
            reason,
            trigger,
            started_ms,
            ended_ms,
            state: state.into(),
            stages: stages
                .into_iter()
                .map(
                    |StageRecord {
                         stage,
                         state,
                         elapsed_ms,
                     }| docs::StageRecord {
                        stage,
                        state,
                        elapsed_ms,
                    },
                )
                .collect(),
            error,
        }
    }
}

/// The allocations' ports as `ActualDoc::ports` lists them (`PortDoc`s, in the store's order: sandbox, then
/// service), written from the allocations themselves as the answer is written.
pub struct Ports(pub Arc<Allocations>);

impl serde::Serialize for Ports {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.0.ports.iter().map(|((sandbox, service), port)| docs::PortDoc {
            sandbox: sandbox.as_str(),
            service: service.as_str(),
            port: *port,
            since: None,
        }))
    }
}

/// The ports leaving (given up, not given out again yet) as a list, by port.
pub fn leaving(allocations: &Allocations) -> Vec<docs::PortDoc> {
    allocations
        .leaving
        .iter()
        .map(|(port, who)| docs::PortDoc {
            sandbox: who.sandbox.clone(),
            service: who.service.clone(),
            port: *port,
            since: Some(who.since),
        })
        .collect()
}

/// The lists back into allocations (`sdp plan`).
pub fn allocations(ports: &[docs::PortDoc], leaving: &[docs::PortDoc]) -> Allocations {
    Allocations {
        ports: ports
            .iter()
            .map(|p| ((p.sandbox.clone(), p.service.clone()), p.port))
            .collect(),
        leaving: leaving
            .iter()
            .map(|p| {
                let who = Leaving {
                    sandbox: p.sandbox.clone(),
                    service: p.service.clone(),
                    since: p.since.unwrap_or_default(),
                };
                (p.port, who)
            })
            .collect(),
    }
}

impl From<&Settings> for docs::CompileSettings {
    fn from(s: &Settings) -> docs::CompileSettings {
        let Settings {
            gateway_ports,
            service_ports,
            micro_address,
            retention_secs,
        } = s;
        docs::CompileSettings {
            gateway_ports: [*gateway_ports.start(), *gateway_ports.end()],
            service_ports: [*service_ports.start(), *service_ports.end()],
            micro_address: micro_address.clone(),
            retention_secs: *retention_secs,
        }
    }
}

impl From<&docs::CompileSettings> for Settings {
    fn from(s: &docs::CompileSettings) -> Settings {
        let docs::CompileSettings {
            gateway_ports,
            service_ports,
            micro_address,
            retention_secs,
        } = s;
        Settings {
            gateway_ports: gateway_ports[0]..=gateway_ports[1],
            service_ports: service_ports[0]..=service_ports[1],
            micro_address: micro_address.clone(),
            retention_secs: *retention_secs,
        }
    }
}
