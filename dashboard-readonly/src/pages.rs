//! The pages. Each reads documents from the `View` and renders them; the parts that change carry `data-live`
//! and are refreshed in place by the page's script.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use sdp_protocol::labels;

use crate::docs::{DesiredContainer, SandboxSummary, word};
use crate::html::{badge, esc, page, page_with, short, t, table, time, write_table};
use crate::{Ctx, Filter, Viewer};

fn not_found(ctx: &Ctx, viewer: &Viewer, what: &str) -> Response {
    let body = format!("<h1>Not found</h1><p>{}</p>", esc(what));
    (StatusCode::NOT_FOUND, Html(page(&ctx.base, viewer, "Not found", &body))).into_response()
}

/// `/`: every sandbox with its sync status, health, gateway URL, owner and last change. Written as one string, a
/// row at a time: with 1,000 sandboxes the page is 600 KB, and its rows, table and body are not held beside it.
pub async fn overview(viewer: Viewer, State(ctx): State<Ctx>) -> Html<String> {
    let sandboxes = ctx.view.sandboxes();
    let source = ctx
        .view
        .source_error()
        .map(|e| format!("<p class=\"error\" role=\"alert\">Config repo: {}</p>\n", esc(&e)))
        .unwrap_or_default();
    let base = esc(&ctx.base);
    let row = |sb: &SandboxSummary| {
        let name = esc(&sb.name);
        [
            format!("<a href=\"{base}/sandboxes/{name}\">{name}</a>"),
            badge(&sb.sync),
            badge(&sb.health),
            match &sb.gateway_url {
                Some(url) => format!("<code>{}</code>", esc(url)),
                None => "<span class=\"muted\">-</span>".into(),
            },
            t(sb.owner.as_deref()),
            format!(
                "<code>{}</code> {}<br><span class=\"muted\">{}</span>",
                short(Some(&sb.last_commit)),
                esc(&sb.last_author),
                time(Some(sb.last_time.saturating_mul(1000)))
            ),
            sb.error
                .as_deref()
                .map(|e| format!("<span class=\"error\">{}</span>", esc(e)))
                .unwrap_or_default(),
        ]
    };
    // About what a row takes (the error aside), so that the page is made in one piece.
    let body_len = source.len() + sandboxes.len() * 640;
    Html(page_with(&ctx.base, &viewer, "Sandboxes", body_len, |out| {
        out.push_str(&source);
        if sandboxes.is_empty() {
            out.push_str(
                "<h1>Sandboxes</h1><p>No sandbox yet: commit one to the config repo's <code>sandboxes/</code> \
                 (<code>sdp apply -f sandbox.yaml</code>).</p>",
            );
            return;
        }
        out.push_str("<h1>Sandboxes</h1>\n<div data-live=\"sandboxes\">");
        write_table(
            out,
            &[
                "Sandbox",
                "Sync",
                "Health",
                "Gateway URL (for the app)",
                "Owner",
                "Last change",
                "Error",
            ],
            sandboxes.iter().map(row),
        );
        out.push_str("</div>");
    }))
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
    let status = &sb.status;
    let changed = match &sb.last_change {
        None => String::new(),
        Some(change) => format!(
            " &nbsp; last changed in <code>{}</code> by {} at {}",
            short(Some(&change.commit)),
            esc(&change.author),
            time(Some(change.time.saturating_mul(1000)))
        ),
    };
    let mut body = format!(
        "<h1>Sandbox {}</h1>\n<div data-live=\"summary\"><p>{} {} &nbsp; gateway: <code>{}</code> &nbsp; config \
         <code>{}</code> by {}{changed}</p>",
        esc(&name),
        badge(&status.sync),
        badge(&status.health),
        t(sb.gateway_url.as_deref()),
        short(Some(&sb.config_commit)),
        esc(&sb.config_author),
    );
    if let Some(set) = &sb.generated_by {
        body.push_str(&format!(
            "<p>Made by SandboxSet <code>{}</code> from a branch: it is no file in the config repo, and goes when \
             its branch does.</p>",
            esc(set)
        ));
    }
    for (label, msg) in [
        ("Held", sb.held.clone()),
        ("Config errors", sb.config_errors.as_ref().map(|e| e.join("\n"))),
        ("Last error", status.last_error.clone()),
    ] {
        if let Some(msg) = msg {
            body.push_str(&format!(
                "<p><strong>{label}:</strong> <span class=\"error\">{}</span></p>",
                esc(&msg)
            ));
        }
    }
    body.push_str("</div>\n");

    let containers = &sb.actual.containers;
    let deployments = &sb.deployments;
    let desired = sb.desired.as_ref();
    let mut services: Vec<(&str, &DesiredContainer)> = desired
        .map(|d| d.services.iter().map(|(k, v)| (k.as_str(), v)).collect())
        .unwrap_or_default();
    if let Some(d) = desired {
        services.push(("gateway", &d.gateway));
    }
    let rows: Vec<Vec<String>> = services
        .iter()
        .map(|(svc, d)| {
            let c = containers.iter().find(|c| c.name == d.container);
            let last = deployments.iter().find(|dep| dep.service == *svc);
            vec![
                esc(svc),
                esc(&d.branch),
                c.map_or("-".into(), |c| {
                    format!("<code>{}</code>", short(c.labels.get(labels::COMMIT)))
                }),
                d.commit.as_deref().map_or("-".into(), |pin| {
                    format!("<code title=\"{}\">{}</code>", esc(pin), short(Some(pin)))
                }),
                c.map_or("<span class=\"badge missing\">missing</span>".into(), |c| {
                    match &c.probe {
                        None => badge(&c.state),
                        Some(probe) => {
                            let class = if probe.ok { "yes" } else { "NO" };
                            format!(
                                "{} <span class=\"{class}\" title=\"health path\">health: {}</span>",
                                badge(&c.state),
                                esc(&probe.detail)
                            )
                        }
                    }
                }),
                d.host_port.to_string(),
                last.map_or("-".into(), |dep| {
                    format!(
                        "<a href=\"{}/deployments/{}\">#{}</a> {}",
                        esc(&ctx.base),
                        dep.id,
                        dep.id,
                        badge(&dep.state)
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
                "Pinned to",
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

    let live = sb.actual.routes.as_ref();
    let defaults = sb.actual.route_defaults.as_ref();
    let no_routes = Default::default();
    let wanted = desired.map_or(&no_routes, |d| &d.routes);
    let mut keys: Vec<&String> = wanted.keys().collect();
    if let Some(d) = defaults {
        keys.extend(d.keys().filter(|k| !wanted.contains_key(*k)));
    }
    let route_rows: Vec<Vec<String>> = keys
        .iter()
        .map(|k| {
            let target = wanted.get(*k).or_else(|| defaults.and_then(|d| d.get(*k)));
            let kind = if wanted.contains_key(*k) {
                "sandbox / URL"
            } else {
                "OCP"
            };
            let now = live.and_then(|l| l.get(*k));
            let matches = match now {
                None => "unknown",
                Some(now) if Some(now) == target => "yes",
                Some(_) => "NO",
            };
            vec![
                esc(k),
                format!("{kind}: <code>{}</code>", t(target.map(String::as_str))),
                format!("<code>{}</code>", t(now.map(String::as_str))),
                format!("<span class=\"{matches}\">{matches}</span>"),
            ]
        })
        .collect();
    body.push_str(&format!(
        "<h2>Routes</h2>\n<div data-live=\"routes\">{}</div>",
        table(&["Service", "Target", "Live config.php value", "Match"], &route_rows)
    ));

    let drift = if status.pending.is_empty() {
        "<p class=\"muted\">None: the VMs are as git says.</p>".to_string()
    } else {
        let items: String = status
            .pending
            .iter()
            .map(|p| {
                format!(
                    "<li>{} <code>{}</code> on {} <span class=\"muted\">({})</span></li>",
                    esc(&p.action.kind),
                    esc(&p.resource),
                    esc(&word(&p.role)),
                    esc(&p.reason.kind())
                )
            })
            .collect();
        format!("<ul>{items}</ul>")
    };
    body.push_str(&format!(
        "<h2>Drift (the pending plan)</h2>\n<div data-live=\"drift\">{drift}</div>"
    ));

    let events: Vec<Vec<String>> = sb
        .events
        .iter()
        .take(20)
        .map(|e| vec![time(Some(e.at_ms)), esc(&e.message)])
        .collect();
    body.push_str(&format!(
        "<h2>Recent events</h2>\n<div data-live=\"events\">{}</div>",
        table(&["When", "What"], &events)
    ));
    body.push_str(&commands(&name, desired));
    body.push_str(&format!(
        "<h2>Manifest as committed</h2>\n<pre>{}</pre>",
        t(sb.manifest.as_deref())
    ));
    Html(page(&ctx.base, &viewer, &format!("Sandbox {name}"), &body)).into_response()
}

/// "Change it": for each thing a user may want to change, the command that commits it, as text to copy (the page
/// stays read-only: every change is a commit).
fn commands(name: &str, desired: Option<&crate::docs::DesiredSandbox>) -> String {
    let mut rows: Vec<(String, String)> = Vec::new();
    let mut row = |what: String, command: String| rows.push((what, command));
    match desired.map(|d| &d.mode) {
        Some(crate::docs::Mode::Suspended(why)) if why == "suspend: true" => {
            row("Start it again".into(), format!("sdp resume {name}"));
        }
        Some(crate::docs::Mode::Suspended(_)) => row(
            "Wake it (any change to its file counts as activity for expireAfter)".into(),
            format!("sdp restart {name}"),
        ),
        _ => row(
            "Stop its containers, keeping its ports and settings".into(),
            format!("sdp suspend {name}"),
        ),
    }
    if let Some(d) = desired {
        let gateway = "gateway".to_string();
        for (svc, c) in d.services.iter().chain(std::iter::once((&gateway, &d.gateway))) {
            row(
                format!("Run {svc} from another branch (now {})", c.branch),
                format!("sdp branch {name} {svc}=BRANCH"),
            );
        }
        for (svc, c) in &d.services {
            // A route to the sandbox's own container is its URL on the micro VM: its host port.
            let own = d
                .routes
                .get(svc)
                .is_some_and(|url| url.ends_with(&format!(":{}", c.host_port)));
            if own {
                row(
                    format!("Send the gateway's {svc} calls to OCP"),
                    format!("sdp route {name} {svc}=ocp"),
                );
            } else {
                row(
                    format!("Send the gateway's {svc} calls to this sandbox's container"),
                    format!("sdp route {name} {svc}=sandbox"),
                );
            }
        }
        row(
            "Send another service's calls to a URL".into(),
            format!("sdp route {name} SERVICE=http://HOST:PORT"),
        );
        for svc in d.services.keys().chain(std::iter::once(&gateway)) {
            row(
                format!("Replace the {svc} container"),
                format!("sdp restart {name}/{svc}"),
            );
            row(format!("Follow {svc}'s output"), format!("sdp logs {name}/{svc} -f"));
        }
    }
    row(
        "Anything else: edit its file, then commit it".into(),
        format!("sdp apply -f sandboxes/{name}.yaml"),
    );
    row("Remove it".into(), format!("sdp delete sandbox {name}"));
    let rows: Vec<Vec<String>> = rows
        .into_iter()
        .map(|(what, command)| vec![esc(&what), format!("<code class=\"cmd\">{}</code>", esc(&command))])
        .collect();
    format!(
        "<h2>Change it</h2>\n<p class=\"muted\">Every change is a commit to the config repo. Run these in your clone \
         of it; add <code>--push</code> to push the commit and <code>--wait</code> to follow it until it is synced. \
         <code>sdp plan</code> shows what a change would do before it is merged.</p>\n{}",
        table(&["To", "Run"], &rows)
    )
}

/// `/deployments`: the audit trail, filterable by sandbox, service, author and state.
pub async fn history(viewer: Viewer, State(ctx): State<Ctx>, Query(filter): Query<Filter>) -> Html<String> {
    let rows: Vec<Vec<String>> = ctx
        .view
        .deployments(&filter)
        .iter()
        .map(|d| {
            vec![
                format!("<a href=\"{}/deployments/{}\">#{}</a>", esc(&ctx.base), d.id, d.id),
                esc(&d.sandbox),
                esc(&d.service),
                esc(&d.branch),
                format!("<code>{}</code>", short(d.commit.as_deref())),
                esc(&d.config_author),
                time(Some(d.started_ms)),
                badge(&d.state),
                esc(&d.reason),
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
    let stages: Vec<Vec<String>> = d
        .stages
        .iter()
        .map(|s| {
            vec![
                esc(&word(&s.stage)),
                badge(&s.state),
                format!("{:.1} s", s.elapsed_ms as f64 / 1000.0),
            ]
        })
        .collect();
    let body = format!(
        "<h1>Deployment #{id}</h1>\n<div data-live=\"deployment\"><p>{} {} / {} on <code>{}</code> at <code>{}</code> \
         &nbsp; reason: {} &nbsp; triggered by: {} &nbsp; config <code>{}</code> by {} &nbsp; environments: {}</p>{}\
         <h2>Stages</h2>{}</div>\n<h2>Log</h2>\n<div id=\"log\" data-id=\"{id}\" role=\"log\" aria-live=\"polite\"></div>",
        badge(&d.state),
        esc(&d.sandbox),
        esc(&d.service),
        esc(&d.branch),
        short(d.commit.as_deref()),
        esc(&d.reason),
        esc(&d.trigger),
        short(Some(&d.config_commit)),
        esc(&d.config_author),
        esc(&d.environments.join(", ")),
        d.error
            .as_deref()
            .map(|e| format!("<p class=\"error\">{}</p>", esc(e)))
            .unwrap_or_default(),
        table(&["Stage", "State", "Duration"], &stages),
    );
    Html(page(&ctx.base, &viewer, &format!("Deployment #{id}"), &body)).into_response()
}

/// `/nodes`: the agents, their last heartbeat, images, repositories and branch heads.
pub async fn nodes(viewer: Viewer, State(ctx): State<Ctx>) -> Html<String> {
    let rows: Vec<Vec<String>> = ctx
        .view
        .nodes()
        .iter()
        .map(|n| {
            let node = &n.node;
            let heads = n
                .heads
                .iter()
                .map(|h| {
                    format!(
                        "{} <code>{}</code> {}",
                        esc(&h.repo),
                        esc(&h.branch),
                        short(Some(&h.commit))
                    )
                })
                .collect::<Vec<_>>()
                .join("<br>");
            let unreadable = node
                .unreadable
                .as_ref()
                .map(|u| {
                    format!(
                        "<br><span class=\"error\">its last frame could not be read ({}): {}</span>",
                        time(Some(u.at_ms)),
                        esc(&u.reason)
                    )
                })
                .unwrap_or_default();
            vec![
                format!("{}{unreadable}", esc(&node.node)),
                esc(&word(&node.role)),
                esc(&node.address),
                time(Some(node.last_seen_ms)),
                esc(&node.images.join(", ")),
                node.repos
                    .iter()
                    .map(|r| {
                        format!(
                            "<details data-branches=\"{}\"><summary>{}</summary><span class=\"muted\">listing…</span></details>",
                            esc(r),
                            esc(r)
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
