//! The API's documents over real HTTP on 127.0.0.1, with two agents connected over the real WebSocket: what
//! `sdp serve` answers deserialises into the same types `sdp get` reads, and those types write back exactly
//! the JSON that was served (no field lost, renamed or added on the way).

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::server::{self, Server, connected, hello, json, send, until};
use futures_util::{SinkExt, StreamExt};
use sdp_dashboard::docs::{
    ActualDoc, BranchesDoc, DeploymentDoc, DeploymentState, NodeDoc, Reason, SandboxDoc, SandboxSummary, Sync,
};
use sdp_protocol::{
    ActionRequest, ActualState, AgentFrame, Answer, BranchHead, Container, ContainerState, ListBranches, Probe,
    ReconcilerFrame, Request, Role, Worktree,
};
use sdp_reconciler::cli::client;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio_tungstenite::tungstenite::Message;

const SANDBOX: &str = "qa-login-error";

/// The examples (without their set), a sandbox that does not validate and one whose port is taken (held).
fn config_repo() -> common::repo::Repo {
    server::examples_with(|repo| {
        repo.git(&["rm", "-rq", "sandboxsets"]);
        let example = std::fs::read_to_string(repo.dir.join("sandboxes/qa-login-error.yaml")).unwrap();
        repo.write(
            "sandboxes/twin.yaml",
            &example.replace("name: qa-login-error", "name: twin"),
        );
        repo.write(
            "sandboxes/broken.yaml",
            &example
                .replace("name: qa-login-error", "name: broken")
                .replace("branch: feature/login-error", "brnch: feature/login-error"),
        );
    })
}

/// An agent that reports one sandbox's containers, worktrees and routes, lists branches, and fails every
/// action it is sent (so a pass leaves pending steps, an error and failed deployments behind).
async fn agent(s: &Server, role: Role) {
    let (node, repo, service) = match role {
        Role::Micro => ("micro-test", "account", "account"),
        Role::Gateway => ("gateway-test", "gateway", "gateway"),
    };
    let mut ws = connected(
        &s.ws(),
        sdp_protocol::Hello {
            images: vec!["alpine:3.20".into()],
            ..hello(node, role, &[repo])
        },
    )
    .await;
    let container = sdp_protocol::container_name(SANDBOX, service);
    let mut report = ActualState {
        containers: vec![
            Container {
                name: container,
                id: format!("{node}-id"),
                labels: sdp_protocol::Labels::from([
                    (sdp_protocol::labels::MANAGED, "true"),
                    (sdp_protocol::labels::SANDBOX, SANDBOX),
                    (sdp_protocol::labels::SERVICE, service),
                    (sdp_protocol::labels::COMMIT, "0123456789abcdef0123"),
                ]),
                state: ContainerState::Running,
                ports: vec![9001],
                restart_count: 2,
                exit_code: None,
                probe: Some(Probe {
                    ok: false,
                    detail: "HTTP 503".into(),
                }),
            }
            .into(),
        ],
        networks: vec![sdp_protocol::network_name(SANDBOX)],
        worktrees: vec![Worktree {
            sandbox: SANDBOX.into(),
            service: service.into(),
            branch: "develop".into(),
            commit: "0123456789abcdef0123".into(),
        }]
        .into(),
        heads: vec![BranchHead {
            repo: repo.into(),
            branch: "develop".into(),
            commit: "0123456789abcdef0123".into(),
        }],
        ..ActualState::default()
    };
    if role == Role::Gateway {
        let routes = BTreeMap::from([("account".to_string(), "http://172.18.136.92:9105".to_string())]);
        report.routes.insert(SANDBOX.into(), routes.clone().into());
        report.route_defaults.insert(SANDBOX.into(), routes.into());
    }
    send(&mut ws, AgentFrame::ActualState(report)).await;
    tokio::spawn(async move {
        while let Some(Ok(message)) = ws.next().await {
            let Message::Text(text) = message else { continue };
            let answer = match sdp_protocol::decode::<ReconcilerFrame>(&text).unwrap() {
                ReconcilerFrame::Ask(ask) if ask.kind == ActionRequest::KIND => {
                    AgentFrame::Answer(Answer::new::<ActionRequest>(
                        ask.request_id,
                        Err("this test agent does nothing".into()),
                    ))
                }
                ReconcilerFrame::Ask(ask) if ask.kind == ListBranches::KIND => {
                    let ListBranches { repo } = ask.read().unwrap();
                    let heads = vec![BranchHead {
                        repo,
                        branch: "develop".into(),
                        commit: "0123456789abcdef0123".into(),
                    }];
                    AgentFrame::Answer(Answer::new::<ListBranches>(ask.request_id, Ok(heads)))
                }
                _ => continue,
            };
            if ws.send(server::message(&answer)).await.is_err() {
                return;
            }
        }
    });
}

/// `sdp serve` once each agent has failed the deployment the reconciler's passes sent it. Retries are held off for
/// the test's length (`retry_floor`), so that what the test reads is what those passes left behind.
async fn server() -> Server {
    let s = Server::start(config_repo(), |c| c.retry_floor = Duration::from_secs(3600)).await;
    let failed = |n: usize| {
        let s = &s;
        move || async move {
            let list = json(s.url("/api/v1/deployments")).await;
            let list = list.as_array().unwrap().clone();
            list.len() == n && list.iter().all(|d| d["state"] == "failed")
        }
    };
    // The config repo read first: a pass before it would find nothing desired.
    until("the config repo to be read", || async {
        server::get(s.url(&format!("/api/v1/sandboxes/{SANDBOX}"))).await.0 == 200
    })
    .await;
    // One agent after the other, so that the micro agent's deployment is the first.
    agent(&s, Role::Micro).await;
    until("the micro agent's deployment to fail", failed(1)).await;
    agent(&s, Role::Gateway).await;
    until("the gateway agent's deployment to fail", failed(2)).await;
    until("the pass to end", || async {
        let sb = json(s.url(&format!("/api/v1/sandboxes/{SANDBOX}"))).await;
        sb.pointer("/status/inFlight").is_none_or(|f| f.is_null()) && sb.pointer("/actual/routes/account").is_some()
    })
    .await;
    s
}

/// The raw answer of a GET, as JSON.
async fn raw(url: String) -> serde_json::Value {
    tokio::task::spawn_blocking(move || {
        let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
        let mut r = agent.get(&url).call().unwrap();
        assert_eq!(r.status().as_u16(), 200, "{url}");
        serde_json::from_str(&r.body_mut().read_to_string().unwrap()).unwrap()
    })
    .await
    .unwrap()
}

/// What `sdp get` reads from `path`: the CLI's own request, into the CLI's own type.
async fn cli<T: DeserializeOwned + Send + 'static>(s: &Server, path: &str) -> anyhow::Result<T> {
    let server = client::Server { server: s.url("") };
    let path = path.to_string();
    tokio::task::spawn_blocking(move || client::get_doc::<T>(&server, &path))
        .await
        .unwrap()
}

/// The document of `path` as `sdp get` reads it, after checking that it writes back exactly what was served.
async fn round_trip<T: DeserializeOwned + Serialize + Send + 'static>(s: &Server, path: &str) -> T {
    let served = raw(s.url(path)).await;
    let read: T = cli(s, path).await.unwrap();
    assert_eq!(
        serde_json::to_value(&read).unwrap(),
        served,
        "{path}: what sdp get read is not what the API served"
    );
    read
}

#[tokio::test]
async fn what_the_api_serves_sdp_get_reads_whole() {
    let s = server().await;

    let list: Vec<SandboxSummary> = round_trip(&s, "/api/v1/sandboxes").await;
    let names: Vec<&str> = list.iter().map(|sb| sb.name.as_str()).collect();
    assert_eq!(names, ["broken", "qa-login-error", "twin"]);
    assert_eq!(list[1].sync, Sync::Failed);
    assert_eq!(list[1].gateway_url.as_deref(), Some("http://127.0.0.1:8081"));
    // The metric counts the controller's statuses: the failed one at least, never more than are listed.
    let out_of_sync = server::metric(&s, "sdp_sandboxes_out_of_sync").await;
    assert!(
        (1..=list.len() as u64).contains(&out_of_sync),
        "{out_of_sync} of {}",
        list.len()
    );

    let sb: SandboxDoc = round_trip(&s, "/api/v1/sandboxes/qa-login-error").await;
    let desired = sb.desired.as_ref().expect("the example compiles");
    assert_eq!(desired.services["account"].host_port, 9001);
    assert_eq!(
        desired.services["account"].env.secret_files["DB_PASSWORD"], "/etc/sdp/secrets/account-db-password",
        "a secret is its file path"
    );
    assert_eq!(sb.status.sync, Sync::Failed);
    assert!(sb.status.last_pass_ms.is_some());
    assert!(
        sb.status
            .pending
            .iter()
            .any(|p| p.action.kind == "deployService" && p.reason == Reason::SpecChanged),
        "{:?}",
        sb.status.pending
    );
    assert_eq!(sb.actual.containers.len(), 2);
    assert_eq!(sb.actual.containers[0].probe.as_ref().unwrap().detail, "HTTP 503");
    assert!(sb.actual.routes.as_ref().unwrap().contains_key("account"));
    assert_eq!(sb.deployments.len(), 2);
    assert!(
        sb.events
            .iter()
            .any(|e| e.message.contains("this test agent does nothing"))
    );
    let table = client::sandbox_table(&sb);
    for line in [
        "Sync:     Failed",
        "Health:   Degraded",
        "deployService sandbox-qa-login-error-account on micro (specChanged)",
        "running (health: HTTP 503)",
    ] {
        assert!(table.contains(line), "{line} missing from:\n{table}");
    }

    let broken: SandboxDoc = round_trip(&s, "/api/v1/sandboxes/broken").await;
    assert!(broken.desired.is_none());
    assert!(broken.config_errors.unwrap()[0].contains("brnch"));

    let deployments: Vec<DeploymentDoc> = round_trip(&s, "/api/v1/deployments").await;
    assert_eq!(deployments.len(), 2);
    assert!(deployments.iter().all(|d| d.state == DeploymentState::Failed));
    let one: DeploymentDoc = round_trip(&s, "/api/v1/deployments/1").await;
    assert_eq!(one.environments, ["shared-dev", "account-dev"]);

    let nodes: Vec<NodeDoc> = round_trip(&s, "/api/v1/nodes").await;
    let roles: Vec<Role> = nodes.iter().map(|n| n.node.role).collect();
    assert_eq!(roles, [Role::Micro, Role::Gateway]);
    assert_eq!(nodes[0].heads[0].repo, "account");

    let branches: BranchesDoc = round_trip(&s, "/api/v1/repos/account/branches").await;
    assert_eq!(branches.branches[0].branch, "develop");

    // What `sdp plan` compiles and plans with: both agents' reports, the ports given, the settings, the specs.
    let actual: ActualDoc = round_trip(&s, "/api/v1/actual").await;
    assert_eq!(actual.connected, [Role::Micro, Role::Gateway]);
    // Both reported on these connections: `sdp plan` gives back a leaving port when the reconciler would.
    assert_eq!(
        actual.reported_ms.keys().copied().collect::<Vec<_>>(),
        [Role::Micro, Role::Gateway]
    );
    assert_eq!(actual.micro.containers[0].name, "sandbox-qa-login-error-account");
    assert_eq!(actual.micro.heads[0].repo, "account");
    assert!(actual.gateway.routes.contains_key(SANDBOX), "{actual:?}");
    assert!(
        actual
            .ports
            .iter()
            .any(|p| p.sandbox == SANDBOX && p.service == "account" && p.port == 9001),
        "{:?}",
        actual.ports
    );
    assert_eq!(actual.settings.service_ports, [9001, 9099]);
    let names: Vec<&str> = actual.sandboxes.iter().map(|s| s.metadata.name.as_str()).collect();
    assert_eq!(names, [SANDBOX], "the valid sandboxes, as the reconciler compiles them");
    assert!(actual.last_activity.contains_key(SANDBOX));
}

/// Renaming a field in the documents would still round-trip (both ends use the same type): these are the
/// names that the e2e tests and users' scripts read, checked on the wire.
#[tokio::test]
async fn the_wire_keeps_the_names_scripts_read() {
    let s = server().await;
    let sb = raw(s.url("/api/v1/sandboxes/qa-login-error")).await;
    for pointer in [
        "/configCommit",
        "/configAuthor",
        "/configErrors",
        "/gatewayUrl",
        "/lastChange",
        "/status/sync",
        "/status/lastError",
        "/status/lastPassMs",
        "/status/inFlight",
        "/status/pending/0/action/kind",
        "/status/pending/0/reason/kind",
        "/actual/routes/account",
        "/actual/routeDefaults/account",
        "/desired/services/account/hostPort",
        "/desired/mode/kind",
        "/events/0/atMs",
        "/deployments/0/configAuthor",
        "/manifest",
    ] {
        assert!(sb.pointer(pointer).is_some(), "{pointer} missing: {sb:#}");
    }
    let list = raw(s.url("/api/v1/sandboxes")).await;
    for pointer in [
        "/0/name",
        "/0/sync",
        "/0/health",
        "/0/lastCommit",
        "/0/lastTime",
        "/0/error",
    ] {
        assert!(list.pointer(pointer).is_some(), "{pointer} missing: {list:#}");
    }
    let d = raw(s.url("/api/v1/deployments/1")).await;
    for pointer in [
        "/commit",
        "/configCommit",
        "/stages",
        "/trigger",
        "/startedMs",
        "/endedMs",
        "/state",
    ] {
        assert!(d.pointer(pointer).is_some(), "{pointer} missing: {d:#}");
    }
    let actual = raw(s.url("/api/v1/actual")).await;
    for pointer in [
        "/configCommit",
        "/sandboxes/0/metadata/name",
        "/connected/0",
        "/micro/containers/0/labels",
        "/gateway/routes",
        "/ports/0/sandbox",
        "/settings/gatewayPorts/1",
        "/settings/microAddress",
        "/settings/retentionSecs",
        "/now",
        "/lastActivity",
    ] {
        assert!(actual.pointer(pointer).is_some(), "{pointer} missing: {actual:#}");
    }
    let nodes = raw(s.url("/api/v1/nodes")).await;
    for pointer in [
        "/0/node/node",
        "/0/node/lastSeenMs",
        "/0/containers",
        "/0/heads/0/commit",
    ] {
        assert!(nodes.pointer(pointer).is_some(), "{pointer} missing: {nodes:#}");
    }
}

#[tokio::test]
async fn an_error_reaches_sdp_get_as_the_servers_words() {
    let s = server().await;
    let e = cli::<SandboxDoc>(&s, "/api/v1/sandboxes/nobody").await.unwrap_err();
    assert_eq!(e.to_string(), "no sandbox nobody in the config repo or on the VMs");
    let e = cli::<BranchesDoc>(&s, "/api/v1/repos/nothing/branches")
        .await
        .unwrap_err();
    assert_eq!(e.to_string(), "no connected agent serves a repository named nothing");
    // A document of another kind is refused with a hint, not read as an empty one.
    let e = cli::<SandboxDoc>(&s, "/api/v1/sandboxes").await.unwrap_err();
    assert!(e.to_string().contains("cannot read: is it another version?"), "{e:#}");
}
