//! The read-only dashboard: server-rendered pages over a read-only view of the reconciler's state.
//!
//! - `docs`: the JSON API's documents, defined once for the API that serves them, the pages that render them
//!   and `sdp get`, which reads them.
//! - `View`: what the dashboard reads. The reconciler implements it; the documents are the JSON API's own
//!   answers, so a page never shows anything the API does not (and secrets reach neither: the desired state holds
//!   secret *file paths*, the agents read the values on their VMs).
//! - `router`: the pages `/`, `/sandboxes/{name}`, `/deployments`, `/deployments/{id}`, `/nodes`, and the one
//!   CSS and one JS file, compiled into the binary. No npm, no CDN, no web fonts: the VMs are offline.
//! - `login_page`: the form of `/login`; the server that checks the credentials (the reconciler) serves it and
//!   says who is reading each page by putting a `Viewer` into the request.
//!
//! Nothing here changes state: every page is a GET, and changes go through git.

pub mod docs;
mod html;
mod pages;

use std::convert::Infallible;
use std::sync::Arc;

use crate::docs::{DeploymentDoc, NodeDoc, SandboxDoc, SandboxSummary};
use crate::html::esc;
use axum::Router;
use axum::extract::FromRequestParts;
use axum::http::header;
use axum::http::request::Parts;
use axum::routing::get;

/// The reconciler's state as the dashboard reads it: the JSON API's documents.
pub trait View: Send + Sync + 'static {
    /// `GET /api/v1/sandboxes`
    fn sandboxes(&self) -> Vec<SandboxSummary>;
    /// `GET /api/v1/sandboxes/{name}`, or `None` when no such sandbox is known.
    fn sandbox(&self, name: &str) -> Option<SandboxDoc>;
    /// `GET /api/v1/deployments` with its filters (`sandbox`, `service`, `author`, `state`).
    fn deployments(&self, filter: &Filter) -> Vec<DeploymentDoc>;
    /// `GET /api/v1/deployments/{id}`
    fn deployment(&self, id: u64) -> Option<DeploymentDoc>;
    /// `GET /api/v1/nodes`
    fn nodes(&self) -> Vec<NodeDoc>;
    /// Why the config repo cannot be followed now (a clone that diverged from its upstream, a fetch that fails).
    fn source_error(&self) -> Option<String> {
        None
    }
}

/// Who reads a page: the server's login check puts it into the request; absent, the reader is anonymous (a
/// server started with `--allow-anonymous`), and the header shows no logout button.
#[derive(Clone, Debug, Default)]
pub struct Viewer {
    pub user: Option<String>,
}

impl<S: Send + Sync> FromRequestParts<S> for Viewer {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Viewer, Infallible> {
        Ok(parts.extensions.get::<Viewer>().cloned().unwrap_or_default())
    }
}

/// The login page: the form, with the user name kept after a failure and the reason it failed. `next` is where
/// to go after logging in (a path under `base`, checked by the caller).
pub fn login_page(base: &str, repo: &str, next: &str, user: &str, error: Option<&str>) -> String {
    let error = error
        .map(|e| format!("<p class=\"error\" role=\"alert\">{}</p>", esc(e)))
        .unwrap_or_default();
    let body = format!(
        "<h1>Log in</h1>\n<p>With your Bitbucket username and password: whoever may read the config repo \
         <code>{repo}</code> may read SDP. They are checked with <code>git ls-remote</code>, then forgotten.</p>\n\
         {error}<form class=\"login\" method=\"post\" action=\"{base}/login\">\
         <input type=\"hidden\" name=\"next\" value=\"{next}\">\
         <label for=\"username\">Username</label>\
         <input id=\"username\" name=\"username\" autocomplete=\"username\" required autofocus value=\"{user}\">\
         <label for=\"password\">Password</label>\
         <input id=\"password\" name=\"password\" type=\"password\" autocomplete=\"current-password\" required>\
         <button type=\"submit\">Log in</button></form>",
        repo = esc(repo),
        base = esc(base),
        next = esc(next),
        user = esc(user),
    );
    html::bare_page(base, "Log in", &body)
}

/// The filters of the history page.
#[derive(Clone, Debug, Default, serde::Deserialize)]
pub struct Filter {
    pub sandbox: Option<String>,
    pub service: Option<String>,
    pub author: Option<String>,
    pub state: Option<String>,
}

#[derive(Clone)]
pub(crate) struct Ctx {
    view: Arc<dyn View>,
    /// Where the dashboard is mounted (`/sandbox/credit-card` behind nginx), without a trailing slash.
    base: String,
}

const CSS: &str = include_str!("../static/sdp.css");
const JS: &str = include_str!("../static/sdp.js");

/// The dashboard's routes, to be nested under `base` by the caller (links are written with it): the pages,
/// which show state and belong behind the server's login check, and the assets, which do not.
pub struct Routes {
    pub pages: Router,
    pub assets: Router,
}

pub fn router(view: Arc<dyn View>, base: &str) -> Routes {
    let ctx = Ctx {
        view,
        base: base.trim_end_matches('/').to_string(),
    };
    let pages = Router::new()
        .route("/", get(pages::overview))
        .route("/sandboxes/{name}", get(pages::sandbox))
        .route("/deployments", get(pages::history))
        .route("/deployments/{id}", get(pages::deployment))
        .route("/nodes", get(pages::nodes))
        .with_state(ctx);
    let assets = Router::new()
        .route(
            "/static/sdp.css",
            get(|| async { ([(header::CONTENT_TYPE, "text/css; charset=utf-8")], CSS) }),
        )
        .route(
            "/static/sdp.js",
            get(|| async { ([(header::CONTENT_TYPE, "text/javascript; charset=utf-8")], JS) }),
        );
    Routes { pages, assets }
}
