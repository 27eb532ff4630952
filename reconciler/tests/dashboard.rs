//! The dashboard over HTTP, mounted under a base path as production does: every page answers with what the
//! state holds, links carry the base path, unknown things are 404, nothing but GET is served, and text from git
//! is escaped.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use sdp_reconciler::api::{Api, router_at};
use sdp_reconciler::auth::Auth;
use sdp_reconciler::controller::Controller;
use sdp_reconciler::desired::Settings;
use sdp_reconciler::hub::Hub;
use sdp_reconciler::source::{Origin, Source};
use sdp_reconciler::store::{Deployment, DeploymentState, Store};

const BASE: &str = "/sandbox/credit-card";

struct Server {
    url: String,
    _data: tempfile::TempDir,
}

fn examples() -> BTreeMap<PathBuf, String> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let mut files = BTreeMap::new();
    for dir in ["sandboxes", "templates", "environments", "sandboxsets"] {
        for entry in std::fs::read_dir(root.join(dir)).unwrap() {
            let path = entry.unwrap().path();
            files.insert(
                PathBuf::from(dir).join(path.file_name().unwrap()),
                std::fs::read_to_string(&path).unwrap(),
            );
        }
    }
    files
}

async fn server() -> Server {
    let data = tempfile::tempdir().unwrap();
    let (tx, _rx) = tokio::sync::mpsc::channel(16);
    let hub = Arc::new(Hub::new("test-token-0123456789abcdef".into(), tx));
    let store = Store::open(data.path()).unwrap();
    let controller = Controller::new(hub, store, Settings::default(), Duration::from_secs(3600)).unwrap();
    // The examples as a snapshot, with an owner whose name needs escaping.
    let mut files = examples();
    let sb = PathBuf::from("sandboxes/qa-login-error.yaml");
    let text = files[&sb].replace("owner: achmad", "owner: \"<b>achmad</b>\"");
    files.insert(sb, text);
    let mut source = Source::new(Origin::Local(data.path().to_path_buf()));
    let snapshot = source.read(
        "c0ffee1234567890".into(),
        "Ann Tester <ann@example.com>".into(),
        0,
        files,
    );
    controller.set_snapshot(snapshot);
    // The examples' set makes acct-x from a branch of account.
    controller.set_branches("account", vec!["feature/x".into()]);
    let d = controller
        .store
        .start_deployment(Deployment {
            id: 0,
            sandbox: "qa-login-error".into(),
            service: "account".into(),
            repo: "account".into(),
            branch: "feature/login-error".into(),
            commit: Some("abcdef0123456789".into()),
            config_commit: "c0ffee1234567890".into(),
            config_author: "Ann Tester <ann@example.com>".into(),
            environments: vec!["shared-dev".into(), "account-dev".into()],
            reason: "missing".into(),
            trigger: "resync".into(),
            started_ms: 1_795_600_000_000,
            ended_ms: None,
            state: DeploymentState::Failed,
            stages: vec![],
            error: Some("image alpine:3.20 is not loaded".into()),
        })
        .unwrap();
    assert_eq!(d.id, 1);
    let app = router_at(
        Api {
            controller,
            hook: Arc::default(),
            auth: Arc::new(Auth::anonymous(BASE)),
        },
        BASE,
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://127.0.0.1:{}", listener.local_addr().unwrap().port());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    Server { url, _data: data }
}

async fn get(url: String) -> (u16, String, String) {
    tokio::task::spawn_blocking(move || {
        let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
        let mut r = agent.get(&url).call().unwrap();
        let kind = r
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default();
        (r.status().as_u16(), kind, r.body_mut().read_to_string().unwrap())
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn every_page_answers_under_the_base_path() {
    let s = server().await;
    let page = |path: &str| get(format!("{}{BASE}{path}", s.url));

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
        html.contains(&format!("href=\"{BASE}/deployments/1\"")),
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
    assert!(html.contains("#1") && html.contains("Ann Tester"), "{html}");
    let (_, _, html) = page("/deployments?state=succeeded").await;
    assert!(!html.contains(">#1<"), "the filter leaves the failed deployment out");

    let (code, _, html) = page("/deployments/1").await;
    assert_eq!(code, 200);
    assert!(html.contains("image alpine:3.20 is not loaded"));
    assert!(html.contains("id=\"log\" data-id=\"1\""));
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
        get(format!("{}/healthz", s.url)).await.0,
        404,
        "nothing outside the base path"
    );
}

#[tokio::test]
async fn nothing_but_get_is_served_besides_the_git_hook_and_the_login() {
    let s = server().await;
    for path in [
        "/",
        "/sandboxes/qa-login-error",
        "/deployments",
        "/api/v1/sandboxes",
        "/api/v1/deployments",
    ] {
        let url = format!("{}{BASE}{path}", s.url);
        let code = tokio::task::spawn_blocking(move || {
            let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
            agent.post(&url).send("x").unwrap().status().as_u16()
        })
        .await
        .unwrap();
        assert_eq!(code, 405, "POST {path}");
    }
}
