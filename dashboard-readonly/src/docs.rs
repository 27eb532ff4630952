//! The JSON API's documents, defined once: the reconciler serialises them (`/api/v1/...`), the dashboard renders
//! them, and `sdp get` deserialises them. A field renamed here is renamed for all three, and a reader that uses
//! a field the API no longer sends does not compile.
//!
//! Why here, in `sdp-dashboard`: the reconciler depends on this crate (it implements `View` and serves the
//! pages), so the API and the CLI, which live in the reconciler, can use these types without a cycle; and the
//! dashboard, which cannot depend on the reconciler, needs them to render. `sdp-protocol` would be reachable too,
//! but it is the agents' wire format, versioned by `PROTOCOL_VERSION`: the API's answers to people and scripts are
//! another contract, and changing one should not look like changing the other. The parts that the agents report
//! (`Container`, `Worktree`, `BranchHead`, `GoBuild`, `Role`, stages) are the protocol's own types, served as the
//! agents sent them.
//!
//! These are plain data. Where the reconciler keeps exactly what the API shows, it uses these types themselves
//! (the controller's `Status`, the plan's `Reason`, a sandbox's `Mode`, a commit's `Change`, a connected `Agent`).
//! Where it keeps more or keeps it longer, it converts its own types into them, in one place
//! (`sdp_reconciler::api::docs`): the desired state, and the store's deployments and events, so that the store's
//! records and the API can change without each other. Field names are the wire format that users' scripts read:
//! rename one only when it is wrong.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use sdp_protocol::{ActualState, BranchHead, Container, GoBuild, Role, Stage, StageState, Worktree};
use serde::{Deserialize, Serialize};

/// One line of `GET /api/v1/sandboxes`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SandboxSummary {
    pub name: String,
    pub owner: Option<String>,
    pub sync: Sync,
    pub health: Health,
    /// The URL to put into the mobile app.
    pub gateway_url: Option<String>,
    pub services: usize,
    /// The last commit that changed this sandbox's file (HEAD's when git cannot say).
    pub last_commit: String,
    pub last_author: String,
    /// Its commit time, unix seconds.
    pub last_time: u64,
    pub error: Option<String>,
}

/// `GET /api/v1/sandboxes/{name}`: everything about one sandbox.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SandboxDoc {
    pub name: String,
    /// What git says should run; `None` when the sandbox is held, invalid or only on the VMs.
    pub desired: Option<DesiredSandbox>,
    /// Why the sandbox cannot be compiled (a port taken, an environment gone): what runs keeps running.
    pub held: Option<String>,
    /// Why its manifest does not validate.
    pub config_errors: Option<Vec<String>>,
    /// The URL to put into the mobile app.
    pub gateway_url: Option<String>,
    pub status: Status,
    /// What the agents report of this sandbox.
    pub actual: Actual,
    /// The manifest as committed.
    pub manifest: Option<String>,
    /// The SandboxSet that made this sandbox from a branch (annotation `sdp/generatedBy`): it is no file in the
    /// repo, and goes when its branch does.
    #[serde(default)]
    pub generated_by: Option<String>,
    /// The config commit the VMs follow.
    pub config_commit: String,
    pub config_author: String,
    /// The last commit that changed this sandbox's own file.
    pub last_change: Option<Change>,
    /// Newest first.
    pub events: Vec<Event>,
    /// Newest first.
    pub deployments: Vec<DeploymentDoc>,
}

/// The sync status of a sandbox, as Argo CD users know it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Sync {
    Synced,
    /// Also a sandbox before its first pass.
    #[default]
    OutOfSync,
    Progressing,
    Failed,
    Suspended,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Health {
    Healthy,
    Degraded,
    Unhealthy,
    /// Nothing is meant to run (suspended), or nothing is known yet (or a word this version does not know).
    #[default]
    #[serde(other)]
    Unknown,
}

/// What the API shows of a sandbox besides its desired and actual state; the controller keeps one per sandbox.
/// The default is a sandbox before its first pass: out of sync, health unknown, nothing pending.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Status {
    pub sync: Sync,
    pub health: Health,
    /// The drift: what the next pass would do, with reasons.
    pub pending: Vec<PendingStep>,
    /// The action running now.
    pub in_flight: Option<String>,
    pub last_error: Option<String>,
    /// Unix milliseconds of the last pass.
    pub last_pass_ms: Option<u64>,
}

/// A step of the pending plan: what, where and why, without the deploy's body (a thousand sandboxes' worth of
/// environment maps would be kept in the controller's memory for nothing).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PendingStep {
    pub role: Role,
    /// A container's name, or what else the step is about (`routes of qa-login-error`).
    pub resource: String,
    pub action: PendingAction,
    pub reason: Reason,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PendingAction {
    /// `ensureNetwork`, `deployService`, `deployGateway`, `setRoutes`, `stop`, `removeContainer`…: a word the
    /// controller names without allocating, a string when read back from the API.
    pub kind: Cow<'static, str>,
}

/// Why a step is in the plan, in words a user reads on the dashboard. The planner makes it (`Other` it never
/// makes: that is a reason from a newer reconciler, read by an older `sdp`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "kind")]
pub enum Reason {
    Missing,
    SpecChanged,
    BranchMoved {
        commit: String,
    },
    /// The manifest pins a commit that is not the one running.
    Pinned {
        commit: String,
    },
    ContainerNotRunning {
        state: String,
    },
    RoutesDiffer {
        services: Vec<String>,
    },
    RoutesUnknown,
    GatewayRedeployed,
    Suspended,
    NotDesired,
    /// A reason this version does not know (a newer reconciler).
    #[serde(other)]
    Other,
}

/// One sandbox as it should be on the VMs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DesiredSandbox {
    pub name: String,
    pub owner: Option<String>,
    pub mode: Mode,
    /// The Go services by service name.
    pub services: BTreeMap<String, DesiredContainer>,
    pub gateway: DesiredContainer,
    /// The gateway's `<service>_url` values that differ from OCP: `sandbox` and explicit URLs, resolved.
    pub routes: BTreeMap<String, String>,
}

/// Why a sandbox runs nothing although it is in git.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "kind", content = "reason")]
pub enum Mode {
    Active,
    /// Containers stopped, ports kept: `suspend: true`, or idle past `expireAfter`.
    Suspended(String),
}

/// One container as it should be.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DesiredContainer {
    pub sandbox: String,
    /// The service name, or `gateway`.
    pub service: String,
    pub container: String,
    pub branch: String,
    /// The pinned commit (`commit:` in the manifest), which runs whatever the branch's head; `None`: the head.
    #[serde(default)]
    pub commit: Option<String>,
    pub host_port: u16,
    pub env: MergedEnv,
    pub cpus: Option<f64>,
    pub memory_bytes: Option<u64>,
    pub health_path: Option<String>,
    pub build: Option<GoBuild>,
    /// Label `sdp.spec-hash`.
    pub spec_hash: u64,
}

/// A service's environments merged in order, then its inline env.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MergedEnv {
    pub env: BTreeMap<String, String>,
    /// Secret variables as file paths on the VM: references, never values.
    pub secret_files: BTreeMap<String, String>,
    pub files: BTreeMap<String, String>,
}

/// One sandbox's part of the agents' reports.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Actual {
    pub containers: Vec<Container>,
    pub worktrees: Vec<Worktree>,
    /// The gateway's live `<service>_url` map.
    pub routes: Option<BTreeMap<String, String>>,
    /// The OCP value of each `<service>_url` key: what the gateway branch's own config.php held.
    pub route_defaults: Option<BTreeMap<String, String>>,
}

/// One commit.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Change {
    pub commit: String,
    /// `Name <email>`
    pub author: String,
    /// Commit time, unix seconds.
    pub time: u64,
}

/// Something that happened.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Event {
    pub seq: u64,
    /// Unix milliseconds.
    pub at_ms: u64,
    pub sandbox: Option<String>,
    pub message: String,
}

/// `GET /api/v1/deployments/{id}`, and each line of `GET /api/v1/deployments`: one deploy of one container.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeploymentDoc {
    pub id: u64,
    pub sandbox: String,
    pub service: String,
    /// The repository, by the service name the agents know it under.
    pub repo: String,
    pub branch: String,
    /// The service commit, once known.
    pub commit: Option<String>,
    pub config_commit: String,
    pub config_author: String,
    pub environments: Vec<String>,
    /// What the plan found (`branch moved to …`, `spec changed`, `container missing`…).
    pub reason: String,
    /// Why the pass that deployed ran (`config commit`, `agent report`, `resync`…); empty in old records.
    #[serde(default)]
    pub trigger: String,
    /// Unix milliseconds.
    pub started_ms: u64,
    pub ended_ms: Option<u64>,
    pub state: DeploymentState,
    pub stages: Vec<StageRecord>,
    pub error: Option<String>,
}

/// How a deployment ended, or that it has not yet.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum DeploymentState {
    Running,
    Succeeded,
    Failed,
}

/// One stage of a deployment as the agent reported it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StageRecord {
    pub stage: Stage,
    pub state: StageState,
    pub elapsed_ms: u64,
}

/// One line of `GET /api/v1/nodes`: a connected agent with what it reports.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeDoc {
    pub node: Agent,
    /// Managed containers it reports.
    pub containers: usize,
    /// Heads of the remote branches that the desired state tracks.
    pub heads: Vec<BranchHead>,
}

/// A connected agent, as its Hello and heartbeats describe it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Agent {
    pub node: String,
    pub role: Role,
    pub address: String,
    pub agent_version: String,
    pub repos: Vec<String>,
    pub images: Vec<String>,
    /// Unix milliseconds.
    pub connected_ms: u64,
    pub last_seen_ms: u64,
    /// Why the last frame it sent that could not be read was not, while no report was read after it. When that
    /// frame was a report (over the size limit, or with a field of a newer agent), what the reconciler knows of the
    /// node is older than the node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unreadable: Option<Unreadable>,
}

/// A frame from an agent that could not be read.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Unreadable {
    /// Unix milliseconds.
    pub at_ms: u64,
    /// Why, in at most a few hundred characters.
    pub reason: String,
}

/// `GET /api/v1/repos/{repo}/branches`: a repository's branches, listed now by the agent that serves it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BranchesDoc {
    pub repo: String,
    pub branches: Vec<BranchHead>,
}

/// `POST /api/v1/hooks/git`: the config repo is fetched now, and the agents that serve `repository` too.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HookDoc {
    /// Always `started`.
    pub fetch: String,
    pub repository: Option<String>,
    pub agents_asked: bool,
}

/// `GET /api/v1/actual`: what the reconciler compiles and plans with besides the config repo's files, so that
/// `sdp plan` compiles a change with the same allocations, settings and clock and plans it against the same
/// reports. Secret values are not in it: the specs and the reports hold secret file paths only.
///
/// `Ports` is how the reconciler holds `ports` while it writes them: straight from its allocations, 11,000 ports
/// of 1,000 sandboxes, rather than a megabyte of documents made for the moment (it writes them as `PortDoc`s).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ActualDoc<Ports = Vec<PortDoc>> {
    /// The config commit the reconciler follows now.
    pub config_commit: String,
    /// That commit's sandboxes as the reconciler compiles them (a broken one at its last valid spec). Shared
    /// with the reconciler's own, as the reports are: the answer is written from them, not from copies.
    pub sandboxes: Vec<Arc<sdp_manifest::Sandbox>>,
    /// The roles whose agent is connected now; a role without one reports nothing.
    pub connected: Vec<Role>,
    /// When each connected agent's last report came (unix milliseconds), for those that reported since they
    /// connected: a leaving port is given back once its VM reported after it left and publishes it no more.
    #[serde(default)]
    pub reported_ms: BTreeMap<Role, u64>,
    /// The micro agent's last report, as the planner reads it.
    pub micro: Arc<ActualState>,
    /// The gateway agent's last report.
    pub gateway: Arc<ActualState>,
    /// The host ports given out, each kept while its sandbox and service exist.
    pub ports: Ports,
    /// Ports given up, with who had them: not given out again while a container on the VMs still publishes them.
    #[serde(default)]
    pub leaving_ports: Vec<PortDoc>,
    pub settings: CompileSettings,
    /// The reconciler's clock, unix seconds.
    pub now: u64,
    /// When each sandbox last changed or deployed, unix seconds: `expireAfter` counts from it.
    pub last_activity: BTreeMap<String, u64>,
    /// The branches of each repository a SandboxSet needs, as the reconciler last listed them: `sdp plan` makes
    /// the sets' sandboxes from them, as the reconciler does.
    #[serde(default)]
    pub branches: BTreeMap<String, Vec<String>>,
    /// Branches that match a set but have no sandbox, with the reason (over the cap, a name taken).
    #[serde(default)]
    pub skipped: Vec<SkippedDoc>,
}

/// A branch that matches a SandboxSet's pattern but has no sandbox.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SkippedDoc {
    pub set: String,
    pub branch: String,
    pub reason: String,
}

/// One host port given to a sandbox's service (or its `gateway`). Written from borrowed names (`PortDoc<&str>`)
/// where the reconciler writes them from its own.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PortDoc<Name = String> {
    pub sandbox: Name,
    pub service: Name,
    pub port: u16,
    /// For a port leaving: since when (unix milliseconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<u64>,
}

/// The reconciler's settings that compile reads.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CompileSettings {
    /// First and last port given to gateways.
    pub gateway_ports: [u16; 2],
    /// First and last port given to services.
    pub service_ports: [u16; 2],
    /// Where the gateways reach the micro VM's ports: the micro agent's address once it has connected.
    pub micro_address: String,
    /// How long an expired sandbox stays suspended before it is removed, in seconds.
    pub retention_secs: u64,
}

/// `POST /api/v1/login`, the CLI's login: checked with `git ls-remote`, then forgotten. No `Debug`: it holds a
/// password.
#[derive(Clone, Serialize, Deserialize)]
pub struct LoginRequest {
    pub username: String,
    pub password: String,
}

/// The answer to a `LoginRequest` that succeeded: a session token for `Authorization: Bearer`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LoginDoc {
    pub token: String,
    pub user: String,
    pub expires_in_secs: u64,
}

/// Any answer that is not a 2xx: what went wrong, in words a user can act on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorDoc {
    pub error: String,
}

/// A status word as the API writes it (`Synced`, `running`, `micro`…): for badges and tables.
pub fn word(value: &impl Serialize) -> String {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::String(s)) => s,
        Ok(other) => other.to_string(),
        Err(_) => "?".into(),
    }
}

/// A step's reason in words, as the reconciler's events and log say it and `sdp plan` prints it.
impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::Missing => f.write_str("missing"),
            Reason::SpecChanged => f.write_str("spec changed"),
            Reason::BranchMoved { commit } => write!(f, "branch moved to commit {}", short(commit)),
            Reason::Pinned { commit } => write!(f, "pinned to {}", short(commit)),
            Reason::ContainerNotRunning { state } => write!(f, "container {state}"),
            Reason::RoutesDiffer { services } => write!(f, "routes differ: {}", services.join(", ")),
            Reason::RoutesUnknown => f.write_str("routes not reported yet"),
            Reason::GatewayRedeployed => f.write_str("gateway redeployed: its config.php starts from the branch"),
            Reason::Suspended => f.write_str("sandbox suspended"),
            Reason::NotDesired => f.write_str("not desired"),
            Reason::Other => f.write_str("a reason this version does not know"),
        }
    }
}

/// The first 12 characters of a commit id (characters, not bytes: an agent's report is not trusted to hold hex).
pub fn short(commit: &str) -> &str {
    let end = commit.char_indices().nth(12).map_or(commit.len(), |(i, _)| i);
    &commit[..end]
}

impl Reason {
    /// The word the API writes as its `kind` (`specChanged`, `branchMoved`…).
    pub fn kind(&self) -> String {
        serde_json::to_value(self)
            .ok()
            .and_then(|v| v.get("kind")?.as_str().map(str::to_string))
            .unwrap_or_else(|| "?".into())
    }
}

#[cfg(test)]
mod tests {
    use super::{Health, Reason, short, word};

    #[test]
    fn a_word_from_a_newer_reconciler_is_read_not_refused() {
        let reason: Reason = serde_json::from_str(r#"{"kind":"imageMissing","image":"alpine:3.21"}"#).unwrap();
        assert_eq!(reason, Reason::Other);
        let health: Health = serde_json::from_str(r#""Starting""#).unwrap();
        assert_eq!(health, Health::Unknown);
    }

    #[test]
    fn words_are_the_wire_names() {
        assert_eq!(Reason::BranchMoved { commit: "abc".into() }.kind(), "branchMoved");
        assert_eq!(word(&Health::Degraded), "Degraded");
        assert_eq!(word(&sdp_protocol::Role::Gateway), "gateway");
    }

    #[test]
    fn short_commit_ids_cut_on_characters_whatever_an_agent_reports() {
        assert_eq!(short("0123456789abcdef0123"), "0123456789ab");
        assert_eq!(short("abc"), "abc");
        assert_eq!(short(""), "");
        // A report with multi-byte characters once panicked a worker (it sliced bytes).
        assert_eq!(short("ééééééééééééééé"), "éééééééééééé");
        assert_eq!(short("0123456789aé"), "0123456789aé");
    }
}
