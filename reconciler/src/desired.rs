//! The desired state: what the config repo says should run, compiled into the exact deploys, routes and ports that
//! the agents are asked for. `compile` is pure: the same snapshot, allocations and settings give the same answer.

use std::borrow::Borrow;
use std::collections::{BTreeMap, BTreeSet};
use std::ops::RangeInclusive;
use std::sync::Arc;

use sdp_manifest::rules;
use sdp_manifest::{Environment, Resources, Route, Sandbox, Vars};
use sdp_protocol::{Deploy, GATEWAY, GoBuild, Role, container_name, labels};
use serde::{Deserialize, Serialize};

/// Annotation that `sdp restart SANDBOX` writes: a change of its value replaces every container of the sandbox.
pub const RESTART_ANNOTATION: &str = "sdp/restartedAt";
/// Prefix of the annotation that `sdp restart SANDBOX/SERVICE` writes (`sdp/restartedAt.account`).
pub const RESTART_SERVICE_PREFIX: &str = "sdp/restartedAt.";

/// The knobs of compilation, from the reconciler's config.
#[derive(Clone, Debug, PartialEq)]
pub struct Settings {
    pub gateway_ports: RangeInclusive<u16>,
    pub service_ports: RangeInclusive<u16>,
    /// How the gateway reaches the micro VM's published ports (the micro agent's advertised address).
    pub micro_address: String,
    /// How long an expired sandbox stays suspended before it is removed.
    pub retention_secs: u64,
}

impl Default for Settings {
    fn default() -> Settings {
        Settings {
            gateway_ports: 8080..=8099,
            service_ports: 9001..=9099,
            micro_address: "127.0.0.1".into(),
            retention_secs: 7 * 24 * 3600,
        }
    }
}

/// Host ports by (sandbox, service), the gateway under the service name `gateway`. Stored, so ports stay stable
/// across restarts of the reconciler; an entry goes when its sandbox or service goes.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Allocations {
    pub ports: BTreeMap<(String, String), u16>,
    /// Ports given up (their sandbox or service went, or it moved to another port), with who had them: not given
    /// out again until no container on the VMs publishes them any more (`settled`). The old container runs until
    /// its sandbox's pass removes it: a new sandbox (a renamed one, often, in the same commit) given its port at
    /// once failed to start on it, or had its gateway route to the old container meanwhile. An explicit `port`
    /// may still take one: its deploy is retried until the port is free.
    #[serde(default)]
    pub leaving: BTreeMap<u16, Leaving>,
}

/// Who had a port that is leaving, and since when (unix milliseconds: a report that came a moment later counts).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Leaving {
    pub sandbox: String,
    pub service: String,
    pub since: u64,
}

/// What the agent of a role last reported, as releasing a port reads it.
#[derive(Clone, Debug, Default)]
pub struct Seen {
    /// When the report came (unix milliseconds).
    pub at: u64,
    /// The host ports its containers publish.
    pub ports: BTreeSet<u16>,
    /// The (sandbox, service) of each of its containers, running or not: a stopped or restarting container
    /// publishes nothing, and takes its port again when it starts.
    pub containers: BTreeSet<(String, String)>,
}

impl Seen {
    /// What `Allocations::settled` reads of `report`, which came at `at` (unix milliseconds).
    pub fn of(report: &sdp_protocol::ActualState, at: u64) -> Seen {
        Seen {
            at,
            ports: report.containers.iter().flat_map(|c| c.ports.iter().copied()).collect(),
            containers: report
                .containers
                .iter()
                .filter_map(|c| {
                    let key = (c.labels.get(labels::SANDBOX)?, c.labels.get(labels::SERVICE)?);
                    Some((key.0.to_string(), key.1.to_string()))
                })
                .collect(),
        }
    }
}

impl Allocations {
    /// The ports that started leaving since `before` (compile stamps them with the start of its second) stamped
    /// with `now_ms`, the moment they were given up.
    pub fn stamp_leaving(&mut self, before: &Allocations, now_ms: u64) {
        for (port, who) in &mut self.leaving {
            let known = before
                .leaving
                .get(port)
                .is_some_and(|b| b.sandbox == who.sandbox && b.service == who.service);
            if !known {
                who.since = now_ms;
            }
        }
    }

    /// These allocations without the leaving ports that are free on their VM now, or `None` when none is
    /// released. A port is free when the agent of the VM that had it reported after the port started leaving,
    /// and its report has no container of the key that had it and none that publishes it. `seen(role)` is that
    /// agent's last report, or `None` when it is not known (no agent, or no report since it connected): then
    /// nothing of that VM is released.
    pub fn settled(&self, seen: impl Fn(Role) -> Option<Seen>) -> Option<Allocations> {
        if self.leaving.is_empty() {
            return None;
        }
        let [micro, gateway] = [Role::Micro, Role::Gateway].map(&seen);
        let leaving: BTreeMap<u16, Leaving> = self
            .leaving
            .iter()
            .filter(|(port, who)| {
                let on = if who.service == GATEWAY { &gateway } else { &micro };
                on.as_ref().is_none_or(|seen| {
                    seen.at <= who.since
                        || seen.ports.contains(port)
                        || seen.containers.contains(&(who.sandbox.clone(), who.service.clone()))
                })
            })
            .map(|(port, who)| (*port, who.clone()))
            .collect();
        (leaving.len() != self.leaving.len()).then(|| Allocations {
            ports: self.ports.clone(),
            leaving,
        })
    }
}

/// What compile reads besides the manifests: when each sandbox last changed or deployed, and now (unix seconds).
#[derive(Clone, Debug, Default)]
pub struct Clock {
    pub now: u64,
    pub last_activity: BTreeMap<String, u64>,
}

/// `expireAfter` counts from a sandbox's last change: each sandbox of `new` whose spec differs from `old`'s (or
/// that `old` lacks) changed at `now`; a sandbox no longer in `new` is forgotten.
pub fn note_changes(old: &[Arc<Sandbox>], new: &[Arc<Sandbox>], activity: &mut BTreeMap<String, u64>, now: u64) {
    let before: BTreeMap<&str, &Arc<Sandbox>> = old.iter().map(|o| (o.metadata.name.as_str(), o)).collect();
    for sb in new {
        let same = before
            .get(sb.metadata.name.as_str())
            .is_some_and(|o| Arc::ptr_eq(o, sb) || o == &sb);
        if !same {
            activity.insert(sb.metadata.name.clone(), now);
        }
    }
    let now_in: BTreeSet<&str> = new.iter().map(|s| s.metadata.name.as_str()).collect();
    activity.retain(|name, _| now_in.contains(name.as_str()));
}

/// Why a sandbox runs nothing although it is in git: the API's type, as the API and `sdp plan` show it.
pub use sdp_dashboard::docs::Mode;

/// Variables, secret file references and files of a service: its environments merged in order, then its inline
/// env. Shared between the services that name the same environments with the same inline env.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MergedEnv {
    pub env: BTreeMap<String, String>,
    /// Secret variables as file paths on the VM: references, never values.
    pub secret_files: BTreeMap<String, String>,
    pub files: BTreeMap<String, String>,
    /// A digest of the three maps, computed once for every service that shares them.
    #[serde(skip)]
    pub digest: u64,
}

/// One container as it should be.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DesiredContainer {
    pub sandbox: Arc<str>,
    /// The service name, or `gateway`.
    pub service: String,
    pub container: String,
    pub branch: String,
    /// The pinned commit (`commit:` in the manifest): what runs whatever the branch's head. `None`: the head.
    /// Not part of the spec hash: it is the commit wanted, compared with the container's `sdp.commit`, so pinning
    /// the commit that already runs (or unpinning it while it is still the head) replaces nothing.
    pub commit: Option<String>,
    pub host_port: u16,
    pub env: Arc<MergedEnv>,
    pub cpus: Option<f64>,
    pub memory_bytes: Option<u64>,
    /// The HTTP path the agent probes for health (label `sdp.health-path`).
    pub health_path: Option<String>,
    /// How a Go service is built; `None` for the defaults (`go build .`) and for the gateway.
    pub build: Option<GoBuild>,
    /// A digest of everything above but the pinned commit: label `sdp.spec-hash`, as 16 hex digits.
    pub spec_hash: u64,
}

impl DesiredContainer {
    /// The value of label `sdp.spec-hash`.
    pub fn spec_hash_label(&self) -> String {
        format!("{:016x}", self.spec_hash)
    }

    /// Whether a container's `sdp.spec-hash` label is this spec's, without allocating.
    pub fn has_spec(&self, label: Option<&str>) -> bool {
        label.is_some_and(|l| l.len() == 16 && u64::from_str_radix(l, 16) == Ok(self.spec_hash))
    }

    /// The deploy an agent is sent: the container at `commit` (when known), with the labels of DESIGN.md.
    pub fn deploy(&self, commit: Option<String>) -> Deploy {
        let labels = [
            (labels::MANAGED, "true".to_string()),
            (labels::SANDBOX, self.sandbox.to_string()),
            (labels::SERVICE, self.service.clone()),
            (labels::SPEC_HASH, self.spec_hash_label()),
        ]
        .into_iter()
        .chain(self.health_path.clone().map(|p| (labels::HEALTH_PATH, p)))
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        Deploy {
            sandbox: self.sandbox.to_string(),
            service: self.service.clone(),
            branch: self.branch.clone(),
            commit,
            container: self.container.clone(),
            host_port: self.host_port,
            env: self.env.env.clone(),
            secret_files: self.env.secret_files.clone(),
            files: self.env.files.clone(),
            cpus: self.cpus,
            memory_bytes: self.memory_bytes,
            labels,
            build: self.build.clone(),
        }
    }
}

/// One sandbox as it should be on the VMs.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DesiredSandbox {
    pub name: String,
    pub owner: Option<String>,
    pub mode: Mode,
    /// The Go services by service name, for the micro agent.
    pub services: BTreeMap<String, DesiredContainer>,
    /// The sandbox's gateway, for the gateway agent.
    pub gateway: DesiredContainer,
    /// The gateway's `<service>_url` values that differ from OCP: `sandbox` and explicit URLs, resolved.
    pub routes: BTreeMap<String, String>,
}

/// The whole desired state.
/// Cloned whole by every compile that changes nothing (the clock's at each resync): its maps of 1,000 sandboxes are
/// shared, not copied (a copy was 2,000 names and their nodes, 0.1-0.3 ms).
#[derive(Clone, Debug, Default)]
pub struct Desired {
    /// Shared: a sandbox whose inputs did not change is the same `Arc` from one compile to the next.
    pub sandboxes: Arc<BTreeMap<String, Arc<DesiredSandbox>>>,
    /// Sandboxes that cannot be compiled (no free port, a port taken, an environment gone), with the reason.
    /// Nothing is done to them: what runs keeps running.
    pub held: BTreeMap<String, String>,
    /// Sandboxes removed after their retention: in git, but nothing of them may run.
    pub expired: Vec<String>,
    /// The allocations to store: the same `Arc` as `previous` when nothing changed.
    pub allocations: Arc<Allocations>,
    /// What `sandboxes` were compiled from, for the next compile to reuse what did not change.
    inputs: Arc<Inputs>,
}

/// What a compile read, besides the ports: the next compile reuses a sandbox when its manifest and these are the
/// same and its ports did not move.
#[derive(Clone, Debug, Default)]
struct Inputs {
    environments: Vec<Environment>,
    settings: Option<Settings>,
    /// The manifest of each compiled sandbox.
    manifests: BTreeMap<String, Arc<Sandbox>>,
}

impl Desired {
    /// Sandbox `name` as it should be.
    pub fn sandbox(&self, name: &str) -> Option<&DesiredSandbox> {
        self.sandboxes.get(name).map(|d| &**d)
    }

    /// Whether sandbox `name` is desired differently here than in `other` (or is in one of them only).
    pub fn differs(&self, other: &Desired, name: &str) -> bool {
        match (self.sandboxes.get(name), other.sandboxes.get(name)) {
            (Some(a), Some(b)) => !Arc::ptr_eq(a, b) && a != b,
            (a, b) => a.is_some() != b.is_some(),
        }
    }
}

/// Compiles the valid sandboxes into deploys. `previous` are the stored allocations; the answer's allocations
/// are the ones to store.
pub fn compile<S: Borrow<Sandbox>>(
    sandboxes: &[S],
    environments: &[Environment],
    previous: &Arc<Allocations>,
    settings: &Settings,
    clock: &Clock,
) -> Desired {
    let sandboxes: Vec<Arc<Sandbox>> = sandboxes.iter().map(|s| Arc::new(s.borrow().clone())).collect();
    compile_again(&Desired::default(), &sandboxes, environments, previous, settings, clock)
}

/// [`compile`], reusing what `last` (the previous answer) compiled of each sandbox whose manifest, mode, ports,
/// environments and settings are the same: the answer is the one `compile` gives, made in a fraction of the time
/// when little changed (the clock's recompile every resync, a commit that touches one sandbox). A manifest is
/// compared by pointer first, then by value.
pub fn compile_again(
    last: &Desired,
    sandboxes: &[Arc<Sandbox>],
    environments: &[Environment],
    previous: &Arc<Allocations>,
    settings: &Settings,
    clock: &Clock,
) -> Desired {
    let envs: BTreeMap<&str, &Environment> = environments.iter().map(|e| (e.metadata.name.as_str(), e)).collect();
    let mut out = Desired::default();

    // Which sandboxes take part, and in which mode.
    let mut live: Vec<(&Arc<Sandbox>, Mode)> = Vec::new();
    for sb in sandboxes {
        let name = &sb.metadata.name;
        let expire = sb
            .spec
            .expire_after
            .as_deref()
            .and_then(|e| rules::duration_secs(e).ok());
        let idle = clock
            .last_activity
            .get(name)
            .map(|at| clock.now.saturating_sub(*at))
            .unwrap_or(0);
        match expire {
            Some(limit) if idle >= limit.saturating_add(settings.retention_secs) => {
                out.expired.push(name.clone());
                continue;
            }
            Some(limit) if idle >= limit => live.push((
                sb,
                Mode::Suspended(format!("idle for {} (expireAfter {})", human(idle), human(limit))),
            )),
            _ if sb.spec.suspend => live.push((sb, Mode::Suspended("suspend: true".into()))),
            _ => live.push((sb, Mode::Active)),
        }
    }

    // By name: the order of the last answer's maps and of the stored allocations.
    let mut by_name: Vec<&(&Arc<Sandbox>, Mode)> = live.iter().collect();
    if !by_name.is_sorted_by(|a, b| a.0.metadata.name <= b.0.metadata.name) {
        by_name.sort_by(|a, b| a.0.metadata.name.cmp(&b.0.metadata.name));
    }
    let same_context = last.inputs.settings.as_ref() == Some(settings) && last.inputs.environments == environments;
    if same_context && let Some(changed) = last.changed_in_place(&by_name, &out.expired, previous) {
        if changed.is_empty() {
            // The steady state (the clock's recompile at every resync): nothing changed, so the last answer stands.
            return last.clone();
        }
        // A commit that edits sandboxes without asking for other ports (a branch, a variable): those are compiled
        // again, the others and the ports stand.
        return last.with_recompiled(changed, previous, &envs, settings);
    }

    // Ports: keep what each (sandbox, service) had, honour explicit ports, then fill from the ranges.
    // Sorted by (sandbox, service), the order of the stored allocations, so that the ports each key had are
    // found in one walk of both rather than a search per key.
    let mut wanted: Vec<Wanted> = Vec::with_capacity(by_name.len() * 11);
    for (sb, _) in by_name {
        let name = sb.metadata.name.as_str();
        let gateway = ((name, GATEWAY), sb.spec.gateway.port.map(|p| p as u16));
        // The services are in name order already; the gateway goes where its name sorts among them.
        let mut services = sb.spec.services.iter().peekable();
        while let Some((svc, s)) = services.next_if(|(svc, _)| svc.as_str() < GATEWAY) {
            wanted.push(((name, svc.as_str()), s.port.map(|p| p as u16)));
        }
        wanted.push(gateway);
        wanted.extend(services.map(|(svc, s)| ((name, svc.as_str()), s.port.map(|p| p as u16))));
    }
    wanted.dedup_by(|a, b| a.0 == b.0);
    // The port each wanted key had, in the order of `wanted`.
    let mut had: Vec<Option<u16>> = Vec::with_capacity(wanted.len());
    // Ports given up now: of keys no longer wanted (found on the same walk), or moved by an explicit `port`.
    let mut given_up: Vec<u16> = Vec::new();
    let mut stored = previous.ports.iter().peekable();
    for (key, _) in &wanted {
        while let Some((_, port)) = stored.next_if(|((sb, svc), _)| (sb.as_str(), svc.as_str()) < *key) {
            given_up.push(*port);
        }
        had.push(
            stored
                .next_if(|((sb, svc), _)| (sb.as_str(), svc.as_str()) == *key)
                .map(|(_, p)| *p),
        );
    }
    given_up.extend(stored.map(|(_, port)| *port));
    let mut ports: BTreeMap<(&str, &str), u16> = wanted
        .iter()
        .zip(&had)
        .filter_map(|((key, _), port)| port.map(|p| (*key, p)))
        .collect();
    // Who holds each port, kept up to date as ports are given out.
    let mut holders: BTreeMap<u16, (&str, &str)> = ports.iter().map(|(k, p)| (*p, *k)).collect();
    // Explicit ports, a sandbox at a time, each claim by its index in `wanted`. A port outside its range may be
    // another program's on the VM (a database, SDP's own): only the ranges are SDP's to give.
    let mut claims: Vec<Vec<usize>> = Vec::new();
    for (i, (key, explicit)) in wanted.iter().enumerate() {
        let Some(port) = explicit else { continue };
        let (range, what) = if key.1 == GATEWAY {
            (&settings.gateway_ports, "gateway")
        } else {
            (&settings.service_ports, "service")
        };
        if !range.contains(port) {
            let reason = format!(
                "port {port} of {} is outside the {what} ports {}-{} this reconciler gives out: pick one in that \
                 range or leave `port` out",
                key.1,
                range.start(),
                range.end()
            );
            out.held.entry(key.0.to_string()).or_insert(reason);
            continue;
        }
        if had[i] == Some(*port) {
            continue;
        }
        match claims.last_mut() {
            Some(mine) if wanted[mine[0]].0.0 == key.0 => mine.push(i),
            _ => claims.push(vec![i]),
        }
    }
    // A held sandbox keeps what it had: none of its ports moves.
    claims.retain(|mine| !out.held.contains_key(wanted[mine[0]].0.0));
    // A sandbox takes all its claims at once, or none: once every port it claims is free, or is left by another
    // of its own keys that moves too. A move frees ports that other sandboxes may be waiting for, so the claims
    // are tried until none moves, whatever their order; a sandbox still waiting then is held, keeping its ports
    // (so nothing it had can be given to another sandbox meanwhile).
    loop {
        let waiting = claims.len();
        claims.retain(|mine| {
            if blocked(&wanted, mine, &holders).is_some() {
                return true;
            }
            for &i in mine {
                let (key, port) = (wanted[i].0, wanted[i].1.expect("a claim is explicit"));
                if let Some(old) = ports.insert(key, port)
                    && holders.get(&old) == Some(&key)
                {
                    holders.remove(&old);
                    given_up.push(old);
                }
                holders.insert(port, key);
                had[i] = Some(port);
            }
            false
        });
        if claims.len() == waiting {
            break;
        }
    }
    for mine in &claims {
        let (key, port, holder) = blocked(&wanted, mine, &holders).expect("still waiting");
        let reason = match holder {
            Some(other) if other.0 != key.0 => format!(
                "port {port} of {} is in use by sandbox {}, {}: pick another port or leave `port` out",
                key.1, other.0, other.1
            ),
            _ => format!(
                "port {port} of {} is another service's of this sandbox: give each its own port or leave `port` out",
                key.1
            ),
        };
        out.held.entry(key.0.to_string()).or_insert(reason);
    }
    // Not given out: the ports leaving, and the ones given up now (held by nobody any more).
    let reserved: BTreeSet<u16> = previous.leaving.keys().copied().chain(given_up).collect();
    // The lowest free port of each range, searched from where the last search stopped.
    let mut next_gateway = *settings.gateway_ports.start();
    let mut next_service = *settings.service_ports.start();
    for ((key, explicit), had) in wanted.iter().zip(&had) {
        // `had`: the key's port, kept or explicit; whether it is in `ports`, without a search.
        if explicit.is_some() || had.is_some() || out.held.contains_key(key.0) {
            continue;
        }
        let (range, next) = if key.1 == GATEWAY {
            (&settings.gateway_ports, &mut next_gateway)
        } else {
            (&settings.service_ports, &mut next_service)
        };
        match (*next..=*range.end()).find(|p| !holders.contains_key(p) && !reserved.contains(p)) {
            Some(port) => {
                ports.insert(*key, port);
                holders.insert(port, *key);
                *next = port.saturating_add(1);
            }
            None => {
                *next = range.end().saturating_add(1);
                let reason = format!(
                    "no free port for {} in {}-{}: every port of the range is allocated",
                    key.1,
                    range.start(),
                    range.end()
                );
                out.held.entry(key.0.to_string()).or_insert(reason);
            }
        }
    }

    let mut merged = EnvCache::default();
    let mut sandboxes = BTreeMap::new();
    let mut manifests = BTreeMap::new();
    for (sb, mode) in live {
        let name = &sb.metadata.name;
        if out.held.contains_key(name) {
            continue;
        }
        if same_context && let Some(reused) = last.reusable(sb, &mode, &ports) {
            manifests.insert(name.clone(), sb.clone());
            sandboxes.insert(name.clone(), reused.clone());
            continue;
        }
        match compile_one(sb, mode, &envs, &ports, &mut merged, settings) {
            Ok(d) => {
                manifests.insert(name.clone(), sb.clone());
                sandboxes.insert(name.clone(), Arc::new(d));
            }
            Err(reason) => {
                out.held.insert(name.clone(), reason);
            }
        }
    }
    // A held sandbox keeps the ports it had, so that it comes back where it was, and takes no new ones; but not
    // a port another sandbox was given meanwhile (its service went in this commit, and another asked for the
    // port by name): one port is never two keys'.
    if !out.held.is_empty() {
        ports.retain(|k, _| !out.held.contains_key(k.0));
        let given: BTreeSet<u16> = ports.values().copied().collect();
        for ((sb, svc), port) in &previous.ports {
            if out.held.contains_key(sb) && !given.contains(port) {
                ports.insert((sb, svc), *port);
            }
        }
    }
    out.sandboxes = Arc::new(sandboxes);
    out.inputs = Arc::new(Inputs {
        environments: environments.to_vec(),
        settings: Some(settings.clone()),
        manifests,
    });
    let unchanged = ports.len() == previous.ports.len()
        && ports
            .iter()
            .zip(&previous.ports)
            .all(|((k, p), ((sb, svc), q))| k.0 == sb && k.1 == svc && p == q);
    out.allocations = if unchanged {
        previous.clone()
    } else {
        // What was leaving and what was given up now, but a port given out again (an explicit `port` took it).
        let given: BTreeSet<u16> = ports.values().copied().collect();
        let mut leaving = previous.leaving.clone();
        for ((sandbox, service), port) in &previous.ports {
            if !given.contains(port) {
                let who = Leaving {
                    sandbox: sandbox.clone(),
                    service: service.clone(),
                    since: clock.now.saturating_mul(1000),
                };
                leaving.insert(*port, who);
            }
        }
        leaving.retain(|port, _| !given.contains(port));
        Arc::new(Allocations {
            ports: ports
                .into_iter()
                .map(|((sb, svc), p)| ((sb.to_string(), svc.to_string()), p))
                .collect(),
            leaving,
        })
    };
    out
}

impl Desired {
    /// The sandboxes of `by_name` (those that take part, with their modes, by name; in the same context) whose
    /// manifest or mode changed since this answer, when nothing else did: the same sandboxes by name, none held, the
    /// same expired, `allocations` the ones this answer gave, and each changed manifest asking for the ports it asked
    /// for before (the same services, the same explicit ports). A whole compile would then give every key the port
    /// it has. Empty when this answer is the one a compile gives; None when anything else changed, and the whole
    /// compile decides. Unchanged manifests are compared by pointer only: no name is compared.
    fn changed_in_place<'b>(
        &self,
        by_name: &[&'b (&'b Arc<Sandbox>, Mode)],
        expired: &[String],
        allocations: &Arc<Allocations>,
    ) -> Option<Vec<&'b (&'b Arc<Sandbox>, Mode)>> {
        if !self.held.is_empty()
            || self.expired != expired
            || !Arc::ptr_eq(&self.allocations, allocations)
            || by_name.len() != self.inputs.manifests.len()
            || self.sandboxes.len() != self.inputs.manifests.len()
        {
            return None;
        }
        // Both maps are by name, and every compiled sandbox is in both (none is held).
        let made = self.inputs.manifests.values().zip(self.sandboxes.values());
        let mut changed = Vec::new();
        for (now, (from, d)) in by_name.iter().copied().zip(made) {
            let (sb, mode) = now;
            if Arc::ptr_eq(sb, from) && d.mode == *mode {
                continue;
            }
            if sb.metadata.name != from.metadata.name || !asks_same_ports(sb, from) {
                return None;
            }
            changed.push(now);
        }
        Some(changed)
    }

    /// This answer with `changed` (from `changed_in_place`) compiled again with the ports they have.
    fn with_recompiled(
        &self,
        changed: Vec<&(&Arc<Sandbox>, Mode)>,
        allocations: &Arc<Allocations>,
        envs: &BTreeMap<&str, &Environment>,
        settings: &Settings,
    ) -> Desired {
        let mut sandboxes = (*self.sandboxes).clone();
        let mut manifests = self.inputs.manifests.clone();
        let mut held = BTreeMap::new();
        let mut merged = EnvCache::default();
        for (sb, mode) in changed {
            let name = &sb.metadata.name;
            let before = manifests.insert(name.clone(), (*sb).clone());
            let made = sandboxes.get(name);
            if made.is_some_and(|d| d.mode == *mode) && before.is_some_and(|from| from == **sb) {
                continue;
            }
            let ports: BTreeMap<Key<'_>, u16> = allocations
                .ports
                .range((name.clone(), String::new())..)
                .take_while(|((sandbox, _), _)| sandbox == name)
                .map(|((sandbox, service), port)| ((sandbox.as_str(), service.as_str()), *port))
                .collect();
            match compile_one(sb, mode.clone(), envs, &ports, &mut merged, settings) {
                Ok(d) => {
                    sandboxes.insert(name.clone(), Arc::new(d));
                }
                Err(reason) => {
                    // Held as the whole compile holds it: nothing compiled, its ports kept.
                    sandboxes.remove(name);
                    manifests.remove(name);
                    held.insert(name.clone(), reason);
                }
            }
        }
        Desired {
            sandboxes: Arc::new(sandboxes),
            held,
            expired: self.expired.clone(),
            allocations: allocations.clone(),
            inputs: Arc::new(Inputs {
                environments: self.inputs.environments.clone(),
                settings: self.inputs.settings.clone(),
                manifests,
            }),
        }
    }

    /// What this compile made of `sb`, when it was made from the same manifest in the same mode and with the same
    /// ports as `ports` now gives it.
    fn reusable(
        &self,
        sb: &Arc<Sandbox>,
        mode: &Mode,
        ports: &BTreeMap<(&str, &str), u16>,
    ) -> Option<&Arc<DesiredSandbox>> {
        let name = sb.metadata.name.as_str();
        let made = self.sandboxes.get(name)?;
        let from = self.inputs.manifests.get(name)?;
        if made.mode != *mode || !(Arc::ptr_eq(from, sb) || from == sb) {
            return None;
        }
        // Both in service order: one walk of each.
        let mut services = made.services.iter();
        let mut count = 0;
        for ((_, service), port) in ports
            .range((name, "")..)
            .take_while(|((sandbox, _), _)| *sandbox == name)
        {
            count += 1;
            let had = if *service == GATEWAY {
                made.gateway.host_port
            } else {
                match services.next() {
                    Some((s, c)) if s == service => c.host_port,
                    _ => return None,
                }
            };
            if had != *port {
                return None;
            }
        }
        // Every container of it had a port: as many ports, all the same, is the same allocation.
        (count == made.services.len() + 1).then_some(made)
    }
}

/// Whether `a` and `b` ask for the same ports: the same services, each with the same explicit port or none, and
/// the same explicit gateway port or none.
fn asks_same_ports(a: &Sandbox, b: &Sandbox) -> bool {
    a.spec.gateway.port == b.spec.gateway.port
        && a.spec.services.len() == b.spec.services.len()
        && a.spec
            .services
            .iter()
            .zip(&b.spec.services)
            .all(|((m, s), (n, t))| m == n && s.port == t.port)
}

/// A (sandbox, service) key.
type Key<'a> = (&'a str, &'a str);

/// A key with its explicit port, if any.
type Wanted<'a> = (Key<'a>, Option<u16>);

/// The first claim of `mine` (indexes into `wanted`, one sandbox's explicit ports) that cannot be taken now: its
/// key, its port, and who holds that port. A port is free when nobody holds it, or when a key of the same sandbox
/// that moves too holds it; never when two of the claims want it.
fn blocked<'a>(
    wanted: &[Wanted<'a>],
    mine: &[usize],
    holders: &BTreeMap<u16, Key<'a>>,
) -> Option<(Key<'a>, u16, Option<Key<'a>>)> {
    mine.iter().find_map(|&i| {
        let (key, port) = (wanted[i].0, wanted[i].1.expect("a claim is explicit"));
        let twice = mine.iter().any(|&j| j != i && wanted[j].1 == Some(port));
        let free = match holders.get(&port) {
            None => true,
            Some(holder) => holder.0 == key.0 && mine.iter().any(|&j| wanted[j].0 == *holder),
        };
        (twice || !free).then(|| (key, port, holders.get(&port).copied()))
    })
}

/// Merged environments by (environment names, inline env): most services of a repo share a few combinations.
#[derive(Default)]
struct EnvCache<'a> {
    merged: BTreeMap<EnvKey<'a>, Arc<MergedEnv>>,
}

/// A service's environment names and inline env.
type EnvKey<'a> = (&'a [String], &'a Vars);

impl<'a> EnvCache<'a> {
    fn get(
        &mut self,
        names: &'a [String],
        inline: &'a Vars,
        envs: &BTreeMap<&str, &Environment>,
    ) -> Result<Arc<MergedEnv>, String> {
        if let Some(m) = self.merged.get(&(names, inline)) {
            return Ok(m.clone());
        }
        let mut m = MergedEnv::default();
        for env_name in names {
            let Some(e) = envs.get(env_name.as_str()) else {
                return Err(format!("environment {env_name} is not in the config repo"));
            };
            // Later wins, whether plain or secret: a name is either a variable or a secret file, never both.
            for (k, v) in &e.spec.variables {
                m.secret_files.remove(k);
                m.env.insert(k.clone(), v.clone());
            }
            for (k, v) in &e.spec.secrets {
                m.env.remove(k);
                m.secret_files.insert(k.clone(), v.file.clone());
            }
            m.files.extend(e.spec.files.iter().map(|(k, v)| (k.clone(), v.clone())));
        }
        for (k, v) in inline {
            m.secret_files.remove(k);
            m.env.insert(k.clone(), v.clone());
        }
        let mut h = Fnv::new();
        h.map(&m.env);
        h.map(&m.secret_files);
        h.map(&m.files);
        m.digest = h.0;
        let m = Arc::new(m);
        self.merged.insert((names, inline), m.clone());
        Ok(m)
    }
}

fn compile_one<'a>(
    sb: &'a Sandbox,
    mode: Mode,
    envs: &BTreeMap<&str, &Environment>,
    ports: &BTreeMap<(&str, &str), u16>,
    merged: &mut EnvCache<'a>,
    settings: &Settings,
) -> Result<DesiredSandbox, String> {
    let name = &sb.metadata.name;
    let shared_name: Arc<str> = Arc::from(name.as_str());
    let restart_all = sb.metadata.annotations.get(RESTART_ANNOTATION).map(String::as_str);
    // This sandbox's ports, found once: a handful of entries, searched by service below.
    let mine: Vec<(&str, u16)> = ports
        .range((name.as_str(), "")..)
        .take_while(|((sandbox, _), _)| *sandbox == name.as_str())
        .map(|((_, service), port)| (*service, *port))
        .collect();
    let container = |service: &str,
                     branch: &str,
                     commit: Option<&String>,
                     env: Arc<MergedEnv>,
                     resources: Option<&Resources>,
                     health_path: Option<&String>,
                     build: Option<GoBuild>| {
        let host_port = mine
            .iter()
            .find(|(s, _)| *s == service)
            .map(|(_, p)| *p)
            .ok_or_else(|| format!("no port allocated for {service}"))?;
        let restart_one = sb
            .metadata
            .annotations
            .iter()
            .find(|(k, _)| k.strip_prefix(RESTART_SERVICE_PREFIX) == Some(service))
            .map(|(_, v)| v.as_str());
        let mut c = DesiredContainer {
            sandbox: shared_name.clone(),
            service: service.to_string(),
            container: container_name(name, service),
            branch: branch.to_string(),
            commit: commit.cloned(),
            host_port,
            env,
            cpus: resources.and_then(|r| r.cpus),
            memory_bytes: resources
                .and_then(|r| r.memory.as_deref())
                .and_then(|m| rules::memory_bytes(m).ok()),
            health_path: health_path.cloned(),
            build,
            spec_hash: 0,
        };
        c.spec_hash = spec_hash(&c, &[restart_all, restart_one]);
        Ok::<_, String>(c)
    };

    let mut services = BTreeMap::new();
    for (svc, spec) in &sb.spec.services {
        let env = merged
            .get(&spec.environments, &spec.env, envs)
            .map_err(|e| format!("service {svc}: {e}"))?;
        let c = container(
            svc,
            &spec.branch,
            spec.commit.as_ref(),
            env,
            spec.resources.as_ref(),
            spec.health_path.as_ref(),
            spec.build.as_ref().map(go_build),
        )?;
        services.insert(svc.clone(), c);
    }
    let gw = &sb.spec.gateway;
    // A gateway without environments or env keeps the empty env (digest 0) it always had, so its spec hash, and
    // so its container, stay what they were before the gateway could have any.
    let gateway_env = if gw.environments.is_empty() && gw.env.is_empty() {
        Arc::default()
    } else {
        merged
            .get(&gw.environments, &gw.env, envs)
            .map_err(|e| format!("gateway: {e}"))?
    };
    let gateway = container(GATEWAY, &gw.branch, gw.commit.as_ref(), gateway_env, None, None, None)?;

    let mut routes = BTreeMap::new();
    for (svc, route) in &sb.spec.routes {
        match route {
            Route::Ocp => {}
            Route::Url(url) => {
                routes.insert(svc.clone(), url.clone());
            }
            Route::Sandbox => {
                let target = services
                    .get(svc)
                    .ok_or_else(|| format!("route {svc}: sandbox needs a service {svc}"))?;
                routes.insert(
                    svc.clone(),
                    format!("http://{}:{}", settings.micro_address, target.host_port),
                );
            }
        }
    }

    Ok(DesiredSandbox {
        name: name.clone(),
        owner: sb.metadata.owner.clone(),
        mode,
        services,
        gateway,
        routes,
    })
}

/// The protocol's build settings of a service; the package defaults to GoBuild's (`.`).
fn go_build(build: &sdp_manifest::Build) -> GoBuild {
    let default = GoBuild::default();
    GoBuild {
        package: build.package.clone().unwrap_or(default.package),
        tags: build.tags.clone(),
        ldflags: build.ldflags.clone(),
    }
}

/// FNV-1a-style, 64 bits, over every field in a fixed order with lengths, so that no two specs share a stream.
/// Written out here rather than taken from std, whose hasher may change between Rust releases: the hash is stored
/// in container labels and must mean the same thing after an upgrade.
struct Fnv(u64);

impl Fnv {
    fn new() -> Fnv {
        Fnv(0xcbf2_9ce4_8422_2325)
    }

    fn bytes(&mut self, bytes: &[u8]) {
        self.word(bytes.len() as u64);
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            self.word(u64::from_le_bytes(chunk.try_into().expect("chunks of eight")));
        }
        let mut tail = [0u8; 8];
        tail[..chunks.remainder().len()].copy_from_slice(chunks.remainder());
        self.word(u64::from_le_bytes(tail));
    }

    /// One step of FNV-1a over a 64-bit word (a word at a time rather than a byte: the lengths written before
    /// every field keep distinct inputs distinct).
    fn word(&mut self, w: u64) {
        self.0 ^= w;
        self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
    }

    fn str(&mut self, s: &str) {
        self.bytes(s.as_bytes());
    }

    fn map(&mut self, map: &BTreeMap<String, String>) {
        self.bytes(&(map.len() as u64).to_le_bytes());
        for (k, v) in map {
            self.str(k);
            self.str(v);
        }
    }
}

/// Everything that makes the container what it is, except the commit (a moved branch or a new pin is its own
/// reason).
fn spec_hash(c: &DesiredContainer, restart: &[Option<&str>]) -> u64 {
    let mut h = Fnv::new();
    for field in [&*c.sandbox, &c.service, &c.branch, &c.container] {
        h.str(field);
    }
    h.bytes(&c.host_port.to_le_bytes());
    h.bytes(&c.env.digest.to_le_bytes());
    h.bytes(&c.cpus.map_or(u64::MAX, f64::to_bits).to_le_bytes());
    h.bytes(&c.memory_bytes.unwrap_or(u64::MAX).to_le_bytes());
    for stamp in restart {
        h.str(stamp.unwrap_or(""));
    }
    // Only when set, so that the hashes of containers without one stay what they were before the field existed
    // (an upgrade redeploys nothing).
    if let Some(path) = &c.health_path {
        h.str("health");
        h.str(path);
    }
    if let Some(build) = &c.build {
        h.str("build");
        h.str(&build.package);
        h.bytes(&(build.tags.len() as u64).to_le_bytes());
        for tag in &build.tags {
            h.str(tag);
        }
        h.str(build.ldflags.as_deref().unwrap_or(""));
    }
    h.0
}

/// `14d`, `3h`, `25m`, `40s`: the largest whole unit.
pub fn human(secs: u64) -> String {
    match secs {
        s if s >= 86400 && s % 86400 == 0 => format!("{}d", s / 86400),
        s if s >= 86400 => format!("{}d{}h", s / 86400, s % 86400 / 3600),
        s if s >= 3600 => format!("{}h{}m", s / 3600, s % 3600 / 60),
        s if s >= 60 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}
