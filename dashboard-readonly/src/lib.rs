//! The read-only dashboard: server-rendered pages over a read-only view of the reconciler's state.
//!
//! - `View`: what the dashboard reads. The reconciler implements it; the documents are the JSON API's own
//!   answers, so a page never shows anything the API does not (and secrets reach neither: the desired state holds
//!   secret *file paths*, the agents read the values on their VMs).
//! - `router`: the pages `/`, `/sandboxes/{name}`, `/deployments`, `/deployments/{id}`, `/nodes`, and the one
//!   CSS and one JS file, compiled into the binary. No npm, no CDN, no web fonts: the VMs are offline.
//!
//! Nothing here changes state: every page is a GET, and changes go through git.

mod html;
mod pages;

use std::sync::Arc;

use axum::Router;
use axum::http::header;
use axum::routing::get;
use serde_json::Value;

/// The reconciler's state as the dashboard reads it: the JSON API's documents.
pub trait View: Send + Sync + 'static {
    /// `GET /api/v1/sandboxes`
    fn sandboxes(&self) -> Value;
    /// `GET /api/v1/sandboxes/{name}`, or `None` when no such sandbox is known.
    fn sandbox(&self, name: &str) -> Option<Value>;
    /// `GET /api/v1/deployments` with its filters (`sandbox`, `service`, `author`, `state`).
    fn deployments(&self, filter: &Filter) -> Value;
    /// `GET /api/v1/deployments/{id}`
    fn deployment(&self, id: u64) -> Option<Value>;
    /// `GET /api/v1/nodes`
    fn nodes(&self) -> Value;
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

/// The dashboard's routes, to be nested under `base` by the caller (links are written with it).
pub fn router(view: Arc<dyn View>, base: &str) -> Router {
    let ctx = Ctx {
        view,
        base: base.trim_end_matches('/').to_string(),
    };
    Router::new()
        .route("/", get(pages::overview))
        .route("/sandboxes/{name}", get(pages::sandbox))
        .route("/deployments", get(pages::history))
        .route("/deployments/{id}", get(pages::deployment))
        .route("/nodes", get(pages::nodes))
        .route(
            "/static/sdp.css",
            get(|| async { ([(header::CONTENT_TYPE, "text/css; charset=utf-8")], CSS) }),
        )
        .route(
            "/static/sdp.js",
            get(|| async { ([(header::CONTENT_TYPE, "text/javascript; charset=utf-8")], JS) }),
        )
        .with_state(ctx)
}
