//! The login over HTTP: the middleware in front of everything that shows state, the `/login` form and its POST,
//! `/logout`, and the CLI's `POST /api/v1/login`.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Form, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{Html, IntoResponse, Json, Redirect, Response};
use axum::routing::{get, post};
use sdp_dashboard::Viewer;
use sdp_dashboard::docs::{ErrorDoc, LoginDoc, LoginRequest};
use serde::Deserialize;

use super::{Auth, Client, Refusal, SESSION_TTL};

/// The middleware in front of everything that needs a login: lets a request with a live session through (and
/// tells the pages who reads them); sends a browser to the login page and answers the API with 401.
pub async fn require_login(State(auth): State<Arc<Auth>>, mut request: Request, next: Next) -> Response {
    if !auth.required() {
        request.extensions_mut().insert(Viewer::default());
        return next.run(request).await;
    }
    if let Some(user) = auth.user(request.headers()) {
        request.extensions_mut().insert(Viewer { user: Some(user) });
        let mut response = next.run(request).await;
        // What a login shows stays out of shared caches and the browser's disk.
        response
            .headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("private, no-store"));
        return response;
    }
    // The path below the base path (the router is nested under it).
    let uri = request.uri();
    let wants_page = !uri.path().starts_with("/api/")
        && request
            .headers()
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .is_none_or(|a| a.contains("text/html") || a.contains("*/*"));
    if wants_page {
        let here = format!(
            "{}{}",
            auth.base,
            uri.path_and_query().map_or(uri.path(), |p| p.as_str())
        );
        let to = format!("{}/login?next={}", auth.base, percent_encode(&here));
        return Redirect::to(&to).into_response();
    }
    (
        StatusCode::UNAUTHORIZED,
        Json(ErrorDoc {
            error: format!("log in first: `sdp login` (CLI) or {}/login (browser)", auth.base),
        }),
    )
        .into_response()
}

fn percent_encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"/-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `/login` (the form and its POST), `/logout`, and the CLI's `POST /api/v1/login`: to be mounted without
/// `require_login` in front.
pub fn routes(auth: Arc<Auth>) -> Router {
    Router::new()
        .route("/login", get(login_form).post(login_submit))
        .route("/logout", post(logout))
        .route("/api/v1/login", post(api_login))
        .with_state(auth)
}

#[derive(Deserialize)]
struct NextQuery {
    next: Option<String>,
}

fn repo_of(auth: &Auth) -> &str {
    auth.login.as_ref().map_or("", |l| l.repo.as_str())
}

async fn login_form(State(auth): State<Arc<Auth>>, headers: HeaderMap, Query(q): Query<NextQuery>) -> Response {
    let next = auth.next_or_home(q.next.as_deref());
    if !auth.required() || auth.user(&headers).is_some() {
        return Redirect::to(&next).into_response();
    }
    Html(sdp_dashboard::login_page(&auth.base, repo_of(&auth), &next, "", None)).into_response()
}

#[derive(Deserialize)]
struct LoginForm {
    username: String,
    password: String,
    next: Option<String>,
}

async fn login_submit(
    State(auth): State<Arc<Auth>>,
    Client(client): Client,
    headers: HeaderMap,
    Form(form): Form<LoginForm>,
) -> Response {
    let next = auth.next_or_home(form.next.as_deref());
    match auth.log_in(&form.username, &form.password, &client).await {
        Ok(token) => {
            let mut response = Redirect::to(&next).into_response();
            response
                .headers_mut()
                .insert(header::SET_COOKIE, auth.cookie(&token, SESSION_TTL.as_secs(), &headers));
            response
        }
        Err(refusal) => {
            let page = sdp_dashboard::login_page(
                &auth.base,
                repo_of(&auth),
                &next,
                &form.username,
                Some(&refusal.message(repo_of(&auth))),
            );
            refused(&refusal, Html(page))
        }
    }
}

async fn logout(State(auth): State<Arc<Auth>>, headers: HeaderMap) -> Response {
    auth.log_out(&headers);
    let mut response = Redirect::to(&format!("{}/login", auth.base)).into_response();
    response
        .headers_mut()
        .insert(header::SET_COOKIE, auth.cookie("", 0, &headers));
    response
}

/// The CLI's login: the same check, the token in the answer instead of a cookie.
async fn api_login(State(auth): State<Arc<Auth>>, Client(client): Client, Json(body): Json<LoginRequest>) -> Response {
    match auth.log_in(&body.username, &body.password, &client).await {
        Ok(token) => Json(LoginDoc {
            token,
            user: body.username.trim().to_string(),
            expires_in_secs: SESSION_TTL.as_secs(),
        })
        .into_response(),
        Err(refusal) => refused(
            &refusal,
            Json(ErrorDoc {
                error: refusal.message(repo_of(&auth)),
            }),
        ),
    }
}

/// A refused login as an answer: its status, `Retry-After` when it is the limit, and `body` (the form or JSON).
fn refused(refusal: &Refusal, body: impl IntoResponse) -> Response {
    let mut response = (refusal.status(), body).into_response();
    if let Some(secs) = refusal.retry_after() {
        response.headers_mut().insert(header::RETRY_AFTER, secs.into());
    }
    response
}
