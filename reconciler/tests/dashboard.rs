//! The dashboard over HTTP, mounted under a base path as production does: every page answers with what the
//! state holds, links carry the base path, unknown things are 404, nothing but GET is served, and text from git
//! is escaped.

mod common;

use common::server::{self, Server, Ws, connected, get, hello, next_frame, send, until};
use sdp_protocol::{
    Action, ActionRequest, ActualState, AgentFrame, Answer, BranchHead, ListBranches, ReconcilerFrame, Request, Role,
};

const BASE: &str = "/sandbox/credit-card";

/// The examples with an owner whose name needs escaping, served under `BASE`, after one real pass: a micro agent
/// that serves `account` lists its branch `feature/x` (the examples' set makes acct-x from it), fails every
/// deployment, and leaves once qa-login-error's account has failed (so no retry makes another deployment).
/// Answers the server and the id of that failed deployment.
async fn server() -> (Server, u64) {
    let repo = server::examples_with(|repo| {
        let sb = repo.dir.join("sandboxes/qa-login-error.yaml");
        let text = std::fs::read_to_string(&sb).unwrap();
        repo.write(
            "sandboxes/qa-login-error.yaml",
            &text.replace("owner: achmad", "owner: \"<b>achmad</b>\""),
        );
    });
    let s = Server::start(repo, |c| c.base_path = BASE.into()).await;
    let mut ws = connected(&s.ws(), hello("micro-test", Role::Micro, &["account"])).await;
    send(&mut ws, AgentFrame::ActualState(ActualState::default())).await;
    let id = failing_agent(ws).await;
    until("the deployment failed and the agent gone", || async {
        let d = server::json(s.url(&format!("/api/v1/deployments/{id}"))).await;
        let nodes = server::json(s.url("/api/v1/nodes")).await;
        let set = server::get(s.url("/api/v1/sandboxes/acct-x")).await.0;
        d["state"] == "failed" && nodes.as_array().unwrap().is_empty() && set == 200
    })
    .await;
    (s, id)
}

/// Answers until it has listed its branches and failed qa-login-error's account; says that deployment's id.
async fn failing_agent(mut ws: Ws) -> u64 {
    let (mut listed, mut failed) = (false, None);
    while !listed || failed.is_none() {
        let answer = match next_frame(&mut ws).await {
            ReconcilerFrame::Ask(ask) if ask.kind == ListBranches::KIND => {
                listed = true;
                let ListBranches { repo } = ask.read().unwrap();
                let heads = vec![BranchHead {
                    repo,
                    branch: "feature/x".into(),
                    commit: "abcdef0123456789".into(),
                }];
                AgentFrame::Answer(Answer::new::<ListBranches>(ask.request_id, Ok(heads)))
            }
            ReconcilerFrame::Ask(ask) if ask.kind == ActionRequest::KIND => {
                let a: ActionRequest = ask.read().unwrap();
                let error = match &a.action {
                    Action::DeployService(d) => {
                        if d.sandbox == "qa-login-error" && d.service == "account" {
                            failed = a.deployment_id.clone();
                        }
                        Some("image alpine:3.20 is not loaded".to_string())
                    }
                    _ => None,
                };
                AgentFrame::Answer(Answer::new::<ActionRequest>(ask.request_id, error.map_or(Ok(()), Err)))
            }
            _ => continue,
        };
        send(&mut ws, answer).await;
    }
    ws.close(None).await.unwrap();
    failed.unwrap().parse().unwrap()
}

#[tokio::test]
async fn every_page_answers_under_the_base_path() {
    let (s, id) = server().await;
    let page = |path: &str| get(s.url(path));

    let (code, kind, html) = page("/").await;
    assert_eq!(code, 200);
    assert!(kind.starts_with("text/html"), "{kind}");
    assert!(
        html.contains(&format!("href=\"{BASE}/sandboxes/qa-login-error\"")),
        "{html}"
    );
    assert!(html.contains(&format!("href=\"{BASE}/static/sdp.css\"")));
    assert!(
        html.contains("&lt;b&gt;achmad&lt;/b&gt;") && !html.contains("<b>achmad</b>"),
        "escaped"
    );

    let (code, _, html) = page("/sandboxes/qa-login-error").await;
    assert_eq!(code, 200);
    for needle in [
        "Sandbox qa-login-error",
        "feature/login-error",
        "Routes",
        "Drift",
        "Manifest as committed",
        "account",
        "data-logs=\"account\" data-sandbox=\"qa-login-error\"",
        // What to run to change it: the page shows the commands and changes nothing itself.
        "<h2>Change it</h2>",
        "<code class=\"cmd\">sdp suspend qa-login-error</code>",
        "<code class=\"cmd\">sdp branch qa-login-error account=BRANCH</code>",
        "<code class=\"cmd\">sdp branch qa-login-error gateway=BRANCH</code>",
        "<code class=\"cmd\">sdp route qa-login-error account=ocp</code>",
        "<code class=\"cmd\">sdp restart qa-login-error/account</code>",
        "<code class=\"cmd\">sdp logs qa-login-error/gateway -f</code>",
    ] {
        assert!(html.contains(needle), "{needle} missing from the sandbox page");
    }
    assert!(
        html.contains(&format!("href=\"{BASE}/deployments/{id}\"")),
        "the last deployment is linked"
    );

    // A generated sandbox says which set made it, on its page and in its document.
    let (code, _, html) = page("/sandboxes/acct-x").await;
    assert_eq!(code, 200);
    assert!(
        html.contains("Made by SandboxSet <code>account-features</code>"),
        "{html}"
    );
    let (_, _, doc) = page("/api/v1/sandboxes/acct-x").await;
    let doc: serde_json::Value = serde_json::from_str(&doc).unwrap();
    assert_eq!(doc["generatedBy"], "account-features", "{doc}");
    assert_eq!(doc["desired"]["services"]["account"]["branch"], "feature/x");
    let (_, _, html) = page("/sandboxes/qa-login-error").await;
    assert!(
        !html.contains("Made by SandboxSet"),
        "a repo sandbox was made by no set"
    );

    let (code, _, html) = page("/deployments?sandbox=qa-login-error&state=failed").await;
    assert_eq!(code, 200);
    assert!(
        html.contains(&format!("#{id}")) && html.contains("Ann Tester"),
        "{html}"
    );
    let (_, _, html) = page("/deployments?state=succeeded").await;
    assert!(
        !html.contains(&format!(">#{id}<")),
        "the filter leaves the failed deployment out"
    );

    let (code, _, html) = page(&format!("/deployments/{id}")).await;
    assert_eq!(code, 200);
    assert!(html.contains("image alpine:3.20 is not loaded"));
    assert!(html.contains(&format!("id=\"log\" data-id=\"{id}\"")));
    assert!(html.contains("shared-dev, account-dev"));

    let (code, _, html) = page("/nodes").await;
    assert_eq!(code, 200);
    assert!(html.contains("<h1>Nodes</h1>"));

    let (code, kind, js) = page("/static/sdp.js").await;
    assert_eq!((code, kind.starts_with("text/javascript")), (200, true));
    assert!(js.contains("EventSource"));
    assert_eq!(page("/static/sdp.css").await.0, 200);

    assert_eq!(page("/sandboxes/nobody").await.0, 404);
    assert_eq!(page("/deployments/99").await.0, 404);
    // The API and the agents' endpoint live under the same base path.
    assert_eq!(page("/api/v1/sandboxes").await.0, 200);
    assert_eq!(page("/healthz").await.0, 200);
    assert_eq!(
        get(format!("http://{}/healthz", s.addr)).await.0,
        404,
        "nothing outside the base path"
    );
}

#[tokio::test]
async fn nothing_but_get_is_served_besides_the_git_hook_and_the_login() {
    let (s, _) = server().await;
    for path in [
        "/",
        "/sandboxes/qa-login-error",
        "/deployments",
        "/api/v1/sandboxes",
        "/api/v1/deployments",
    ] {
        let url = s.url(path);
        let code = tokio::task::spawn_blocking(move || {
            let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
            agent.post(&url).send("x").unwrap().status().as_u16()
        })
        .await
        .unwrap();
        assert_eq!(code, 405, "POST {path}");
    }
}
