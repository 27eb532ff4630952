//! The pages. Each reads documents from the `View` and renders them; the parts that change carry `data-live`
//! and are refreshed in place by the page's script.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use serde_json::Value;

use crate::html::{badge, esc, page, short, t, table, text, time};
use crate::{Ctx, Filter, Viewer};

fn not_found(ctx: &Ctx, viewer: &Viewer, what: &str) -> Response {
    let body = format!("<h1>Not found</h1><p>{}</p>", esc(what));
    (StatusCode::NOT_FOUND, Html(page(&ctx.base, viewer, "Not found", &body))).into_response()
}

fn list(v: &Value) -> Vec<Value> {
    v.as_array().cloned().unwrap_or_default()
}

/// `/`: every sandbox with its sync status, health, gateway URL, owner and last change.
pub async fn overview(viewer: Viewer, State(ctx): State<Ctx>) -> Html<String> {
    let sandboxes = ctx.view.sandboxes();
    let rows: Vec<Vec<String>> = list(&sandboxes)
        .iter()
        .map(|sb| {
            let name = text(&sb["name"]);
            vec![
                format!(
                    "<a href=\"{}/sandboxes/{}\">{}</a>",
                    esc(&ctx.base),
                    esc(&name),
                    esc(&name)
                ),
                badge(&sb["sync"]),
                badge(&sb["health"]),
                match sb["gatewayUrl"].as_str() {
                    Some(url) => format!("<code>{}</code>", esc(url)),
                    None => "<span class=\"muted\">-</span>".into(),
                },
                t(&sb["owner"]),
                format!(
                    "<code>{}</code> {}<br><span class=\"muted\">{}</span>",
                    short(&sb["lastCommit"]),
                    t(&sb["lastAuthor"]),
                    time(&sb["lastTime"].as_u64().map(|s| s * 1000).into())
                ),
                sb["error"]
                    .as_str()
                    .map(|e| format!("<span class=\"error\">{}</span>", esc(e)))
                    .unwrap_or_default(),
            ]
        })
        .collect();
    let source = ctx
        .view
        .source_error()
        .map(|e| format!("<p class=\"error\" role=\"alert\">Config repo: {}</p>\n", esc(&e)))
        .unwrap_or_default();
    let body = if rows.is_empty() {
        "<h1>Sandboxes</h1><p>No sandbox yet: commit one to the config repo's <code>sandboxes/</code> \
         (<code>sdp apply -f sandbox.yaml</code>).</p>"
            .to_string()
    } else {
        format!(
            "<h1>Sandboxes</h1>\n<div data-live=\"sandboxes\">{}</div>",
            table(
                &[
                    "Sandbox",
                    "Sync",
                    "Health",
                    "Gateway URL (for the app)",
                    "Owner",
                    "Last change",
                    "Error"
                ],
                &rows
            )
        )
    };
    Html(page(&ctx.base, &viewer, "Sandboxes", &format!("{source}{body}")))
}

/// `/sandboxes/{name}`: services, routes, drift, the manifest as committed, deployments and events.
pub async fn sandbox(viewer: Viewer, State(ctx): State<Ctx>, Path(name): Path<String>) -> Response {
    let Some(sb) = ctx.view.sandbox(&name) else {
        return not_found(
            &ctx,
            &viewer,
            &format!("No sandbox {name} in the config repo or on the VMs."),
        );
    };
    let status = &sb["status"];
    let change = &sb["lastChange"];
    let changed = if change.is_null() {
        String::new()
    } else {
        format!(
            " &nbsp; last changed in <code>{}</code> by {} at {}",
            short(&change["commit"]),
            t(&change["author"]),
            time(&change["time"].as_u64().map(|s| s * 1000).into())
        )
    };
    let mut body = format!(
        "<h1>Sandbox {}</h1>\n<div data-live=\"summary\"><p>{} {} &nbsp; gateway: <code>{}</code> &nbsp; config \
         <code>{}</code> by {}{changed}</p>",
        esc(&name),
        badge(&status["sync"]),
        badge(&status["health"]),
        t(&sb["gatewayUrl"]),
        short(&sb["configCommit"]),
        t(&sb["configAuthor"]),
    );
    for (label, v) in [
        ("Held", &sb["held"]),
        ("Config errors", &sb["configErrors"]),
        ("Last error", &status["lastError"]),
    ] {
        if !v.is_null() {
            let msg = match v {
                Value::Array(items) => items.iter().map(text).collect::<Vec<_>>().join("\n"),
                other => text(other),
            };
            body.push_str(&format!(
                "<p><strong>{label}:</strong> <span class=\"error\">{}</span></p>",
                esc(&msg)
            ));
        }
    }
    body.push_str("</div>\n");

    let containers = list(&sb["actual"]["containers"]);
    let deployments = list(&sb["deployments"]);
    let desired = &sb["desired"];
    let mut services: Vec<(String, Value)> = desired["services"]
        .as_object()
        .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
        .unwrap_or_default();
    if !desired["gateway"].is_null() {
        services.push(("gateway".into(), desired["gateway"].clone()));
    }
    let rows: Vec<Vec<String>> = services
        .iter()
        .map(|(svc, d)| {
            let c = containers.iter().find(|c| c["name"] == d["container"]);
            let last = deployments.iter().find(|dep| dep["service"].as_str() == Some(svc));
            vec![
                esc(svc),
                t(&d["branch"]),
                c.map_or("-".into(), |c| {
                    format!("<code>{}</code>", short(&c["labels"]["sdp.commit"]))
                }),
                c.map_or("<span class=\"badge missing\">missing</span>".into(), |c| {
                    let probe = &c["probe"];
                    if probe.is_null() {
                        badge(&c["state"])
                    } else {
                        let class = if probe["ok"] == true { "yes" } else { "NO" };
                        format!(
                            "{} <span class=\"{class}\" title=\"health path\">health: {}</span>",
                            badge(&c["state"]),
                            t(&probe["detail"])
                        )
                    }
                }),
                t(&d["hostPort"]),
                last.map_or("-".into(), |dep| {
                    format!(
                        "<a href=\"{}/deployments/{}\">#{}</a> {}",
                        esc(&ctx.base),
                        t(&dep["id"]),
                        t(&dep["id"]),
                        badge(&dep["state"])
                    )
                }),
            ]
        })
        .collect();
    body.push_str(&format!(
        "<h2>Services</h2>\n<div data-live=\"services\">{}</div>",
        table(
            &[
                "Service",
                "Branch",
                "Deployed commit",
                "Container",
                "Port",
                "Last deployment"
            ],
            &rows
        )
    ));

    // Each container's output, followed live once opened (the agents stream it; the reconciler keeps the tail).
    let logs: String = services
        .iter()
        .map(|(svc, _)| {
            format!(
                "<details class=\"logs\" data-logs=\"{svc}\" data-sandbox=\"{sandbox}\"><summary>{svc}</summary>\
                 <div class=\"log\" role=\"log\" aria-live=\"polite\"></div></details>\n",
                svc = esc(svc),
                sandbox = esc(&name),
            )
        })
        .collect();
    body.push_str(&format!("<h2>Container logs</h2>\n{logs}"));

    let live = &sb["actual"]["routes"];
    let defaults = &sb["actual"]["routeDefaults"];
    let wanted = desired["routes"].as_object().cloned().unwrap_or_default();
    let mut keys: Vec<String> = wanted.keys().cloned().collect();
    if let Some(d) = defaults.as_object() {
        keys.extend(d.keys().filter(|k| !wanted.contains_key(*k)).cloned());
    }
    let route_rows: Vec<Vec<String>> = keys
        .iter()
        .map(|k| {
            let target = wanted.get(k).cloned().unwrap_or_else(|| defaults[k.as_str()].clone());
            let kind = if wanted.contains_key(k) { "sandbox / URL" } else { "OCP" };
            let now = &live[k.as_str()];
            let matches = if now.is_null() {
                "unknown"
            } else if *now == target {
                "yes"
            } else {
                "NO"
            };
            vec![
                esc(k),
                format!("{kind}: <code>{}</code>", t(&target)),
                format!("<code>{}</code>", t(now)),
                format!("<span class=\"{matches}\">{matches}</span>"),
            ]
        })
        .collect();
    body.push_str(&format!(
        "<h2>Routes</h2>\n<div data-live=\"routes\">{}</div>",
        table(&["Service", "Target", "Live config.php value", "Match"], &route_rows)
    ));

    let pending = list(&status["pending"]);
    let drift = if pending.is_empty() {
        "<p class=\"muted\">None: the VMs are as git says.</p>".to_string()
    } else {
        let items: String = pending
            .iter()
            .map(|p| {
                format!(
                    "<li>{} <code>{}</code> on {} <span class=\"muted\">({})</span></li>",
                    t(&p["action"]["kind"]),
                    t(&p["resource"]),
                    t(&p["role"]),
                    t(&p["reason"]["kind"])
                )
            })
            .collect();
        format!("<ul>{items}</ul>")
    };
    body.push_str(&format!(
        "<h2>Drift (the pending plan)</h2>\n<div data-live=\"drift\">{drift}</div>"
    ));

    let events: Vec<Vec<String>> = list(&sb["events"])
        .iter()
        .take(20)
        .map(|e| vec![time(&e["atMs"]), t(&e["message"])])
        .collect();
    body.push_str(&format!(
        "<h2>Recent events</h2>\n<div data-live=\"events\">{}</div>",
        table(&["When", "What"], &events)
    ));
    body.push_str(&format!(
        "<h2>Manifest as committed</h2>\n<pre>{}</pre>",
        t(&sb["manifest"])
    ));
    Html(page(&ctx.base, &viewer, &format!("Sandbox {name}"), &body)).into_response()
}

/// `/deployments`: the audit trail, filterable by sandbox, service, author and state.
pub async fn history(viewer: Viewer, State(ctx): State<Ctx>, Query(filter): Query<Filter>) -> Html<String> {
    let list_ = ctx.view.deployments(&filter);
    let rows: Vec<Vec<String>> = list(&list_)
        .iter()
        .map(|d| {
            vec![
                format!(
                    "<a href=\"{}/deployments/{}\">#{}</a>",
                    esc(&ctx.base),
                    t(&d["id"]),
                    t(&d["id"])
                ),
                t(&d["sandbox"]),
                t(&d["service"]),
                t(&d["branch"]),
                format!("<code>{}</code>", short(&d["commit"])),
                t(&d["configAuthor"]),
                time(&d["startedMs"]),
                badge(&d["state"]),
                t(&d["reason"]),
            ]
        })
        .collect();
    let value = |v: &Option<String>| esc(v.as_deref().unwrap_or(""));
    let states = ["", "running", "succeeded", "failed"]
        .iter()
        .map(|s| {
            let selected = if filter.state.as_deref().unwrap_or("") == *s {
                " selected"
            } else {
                ""
            };
            format!(
                "<option value=\"{s}\"{selected}>{}</option>",
                if s.is_empty() { "any state" } else { s }
            )
        })
        .collect::<String>();
    let body = format!(
        "<h1>History</h1>\n<form class=\"filters\" method=\"get\">\
         <label>Sandbox <input name=\"sandbox\" value=\"{}\"></label>\
         <label>Service <input name=\"service\" value=\"{}\"></label>\
         <label>Author <input name=\"author\" value=\"{}\"></label>\
         <label>State <select name=\"state\">{states}</select></label><button>Filter</button></form>\n\
         <div data-live=\"history\">{}</div>",
        value(&filter.sandbox),
        value(&filter.service),
        value(&filter.author),
        table(
            &[
                "#",
                "Sandbox",
                "Service",
                "Branch",
                "Commit",
                "Config author",
                "Started",
                "State",
                "Reason"
            ],
            &rows
        )
    );
    Html(page(&ctx.base, &viewer, "History", &body))
}

/// `/deployments/{id}`: the stage timeline with durations and the live log.
pub async fn deployment(viewer: Viewer, State(ctx): State<Ctx>, Path(id): Path<u64>) -> Response {
    let Some(d) = ctx.view.deployment(id) else {
        return not_found(&ctx, &viewer, &format!("No deployment {id}."));
    };
    let stages: Vec<Vec<String>> = list(&d["stages"])
        .iter()
        .map(|s| {
            let ms = s["elapsedMs"].as_u64().unwrap_or(0);
            vec![
                t(&s["stage"]),
                badge(&s["state"]),
                format!("{:.1} s", ms as f64 / 1000.0),
            ]
        })
        .collect();
    let body = format!(
        "<h1>Deployment #{id}</h1>\n<div data-live=\"deployment\"><p>{} {} / {} on <code>{}</code> at <code>{}</code> \
         &nbsp; reason: {} &nbsp; triggered by: {} &nbsp; config <code>{}</code> by {} &nbsp; environments: {}</p>{}\
         <h2>Stages</h2>{}</div>\n<h2>Log</h2>\n<div id=\"log\" data-id=\"{id}\" role=\"log\" aria-live=\"polite\"></div>",
        badge(&d["state"]),
        t(&d["sandbox"]),
        t(&d["service"]),
        t(&d["branch"]),
        short(&d["commit"]),
        t(&d["reason"]),
        t(&d["trigger"]),
        short(&d["configCommit"]),
        t(&d["configAuthor"]),
        esc(&list(&d["environments"]).iter().map(text).collect::<Vec<_>>().join(", ")),
        d["error"]
            .as_str()
            .map(|e| format!("<p class=\"error\">{}</p>", esc(e)))
            .unwrap_or_default(),
        table(&["Stage", "State", "Duration"], &stages),
    );
    Html(page(&ctx.base, &viewer, &format!("Deployment #{id}"), &body)).into_response()
}

/// `/nodes`: the agents, their last heartbeat, images, repositories and branch heads.
pub async fn nodes(viewer: Viewer, State(ctx): State<Ctx>) -> Html<String> {
    let nodes = ctx.view.nodes();
    let rows: Vec<Vec<String>> = list(&nodes)
        .iter()
        .map(|n| {
            let node = &n["node"];
            let heads = list(&n["heads"])
                .iter()
                .map(|h| {
                    format!(
                        "{} <code>{}</code> {}",
                        t(&h["repo"]),
                        t(&h["branch"]),
                        short(&h["commit"])
                    )
                })
                .collect::<Vec<_>>()
                .join("<br>");
            vec![
                t(&node["node"]),
                t(&node["role"]),
                t(&node["address"]),
                time(&node["lastSeenMs"]),
                esc(&list(&node["images"]).iter().map(text).collect::<Vec<_>>().join(", ")),
                list(&node["repos"])
                    .iter()
                    .map(|r| {
                        format!(
                            "<details data-branches=\"{}\"><summary>{}</summary><span class=\"muted\">listing…</span></details>",
                            t(r),
                            t(r)
                        )
                    })
                    .collect::<String>(),
                heads,
            ]
        })
        .collect();
    let body = format!(
        "<h1>Nodes</h1>\n<div data-live=\"nodes\">{}</div>",
        table(
            &[
                "Node",
                "Role",
                "Address",
                "Last heartbeat",
                "Images",
                "Repositories",
                "Deployed branch heads"
            ],
            &rows
        )
    );
    Html(page(&ctx.base, &viewer, "Nodes", &body))
}
