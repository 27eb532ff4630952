//! `sdp plan`: the PR check. Validates a config repo's working tree, compiles and plans it as the reconciler
//! would (`preview.rs`) against what a running reconciler sees, or an empty world, and prints per sandbox what
//! would happen and why. Exit 0: nothing would change; 2: something would; 1: invalid input, or no plan could be
//! made (a reconciler that cannot be reached, a login needed), so that a CI step tells the three apart.

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Result, bail};
use sdp_dashboard::docs::{self, ActualDoc, PortDoc};
use sdp_manifest::{ConfigSet, Kind};
use sdp_protocol::Role;
use serde::Serialize;

use super::client::{Server, get_doc};
use crate::desired::{Clock, Settings};
use crate::preview::{Inputs, Port, Preview, preview};

/// `sdp plan --format json`: stable for bots (fields in this order, sandboxes by name, actions in plan order).
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct PlanDoc {
    /// The reconciler planned against; `None`: an empty world (no agent reports, no ports given out yet).
    server: Option<String>,
    /// The config commit that reconciler follows now.
    config_commit: Option<String>,
    /// Whether anything would change: the exit code is 2 when it would.
    changes: bool,
    sandboxes: Vec<SandboxPlan>,
    /// Branches that match a SandboxSet but make no sandbox, with the reason.
    skipped: Vec<docs::SkippedDoc>,
    ports: PortChanges,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct SandboxPlan {
    name: String,
    /// `added`, `removed`, `changed` or `unchanged` in git.
    change: &'static str,
    /// The SandboxSet that makes this sandbox from a branch.
    generated_by: Option<String>,
    mode: Option<docs::Mode>,
    held: Option<String>,
    actions: Vec<ActionPlan>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ActionPlan {
    role: Role,
    resource: String,
    /// `ensureNetwork`, `deployService`, `deployGateway`, `setRoutes`, `stop`, `removeContainer`…
    action: &'static str,
    reason: docs::Reason,
    /// The step as the reconciler's events and log say it.
    says: String,
}

#[derive(Serialize)]
struct PortChanges {
    added: Vec<PortDoc>,
    removed: Vec<PortDoc>,
}

/// Problems of the input, for `--format json`.
#[derive(Serialize)]
struct InvalidDoc<'a> {
    valid: bool,
    problems: &'a [sdp_manifest::Problem],
}

pub fn run(path: &Path, server: Option<&Server>, json: bool) -> Result<ExitCode> {
    match plan(path, server, json) {
        Ok(code) => Ok(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            eprintln!("no plan was made");
            Ok(ExitCode::from(1))
        }
    }
}

fn plan(path: &Path, server: Option<&Server>, json: bool) -> Result<ExitCode> {
    if !Kind::ALL.iter().any(|k| path.join(k.folder()).is_dir()) {
        bail!(
            "{} is not a config repo: it has none of sandboxes/, templates/, environments/",
            path.display()
        );
    }
    let set = ConfigSet::load_repo(path).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
    if !set.is_valid() {
        if json {
            let doc = InvalidDoc {
                valid: false,
                problems: &set.problems,
            };
            println!("{}", serde_json::to_string_pretty(&doc)?);
        }
        super::print_problems(&set.problems);
        eprintln!("{} problem(s): nothing was planned", set.problems.len());
        return Ok(ExitCode::from(1));
    }
    let (inputs, commit) = match server {
        Some(server) => {
            let doc: ActualDoc = get_doc(server, "/api/v1/actual")?;
            let commit = doc.config_commit.clone();
            (Inputs::from(doc), Some(commit))
        }
        None => (
            Inputs {
                clock: Clock {
                    now: crate::hub::now_ms() / 1000,
                    ..Clock::default()
                },
                ..Inputs::default()
            },
            None,
        ),
    };
    let sandboxes: Vec<_> = set.sandboxes.iter().map(|o| Arc::new(o.value.clone())).collect();
    let environments: Vec<_> = set.environments.iter().map(|o| o.value.clone()).collect();
    // The sets' sandboxes, made as the reconciler makes them: from the branches it last listed.
    let sets: Vec<_> = set.sets.iter().map(|o| o.value.clone()).collect();
    let templates: Vec<_> = set.templates.iter().map(|o| o.value.clone()).collect();
    let generated = crate::sets::generate(&sets, &templates, &inputs.branches, &sandboxes);
    let sandboxes = crate::sets::with_generated(&sandboxes, &generated);
    let preview = preview(&sandboxes, &environments, &inputs);
    let mut doc = document(&preview, server.map(|s| s.server.clone()), commit);
    for sb in &mut doc.sandboxes {
        sb.generated_by = sandboxes
            .iter()
            .find(|s| s.metadata.name == sb.name)
            .and_then(|s| crate::sets::generated_by(s))
            .map(str::to_string);
    }
    doc.skipped = generated
        .skipped
        .into_iter()
        .map(|s| docs::SkippedDoc {
            set: s.set,
            branch: s.branch,
            reason: s.reason,
        })
        .collect();
    if json {
        println!("{}", serde_json::to_string_pretty(&doc)?);
    } else {
        print!("{}", text(&doc, &inputs.settings, &inputs.actual_roles()));
    }
    Ok(if doc.changes {
        ExitCode::from(2)
    } else {
        ExitCode::SUCCESS
    })
}

impl Inputs {
    /// The roles that reported anything (for the header of the text).
    fn actual_roles(&self) -> Vec<Role> {
        [Role::Micro, Role::Gateway]
            .into_iter()
            .filter(|r| *self.actual.of(*r) != sdp_protocol::ActualState::default())
            .collect()
    }
}

fn document(preview: &Preview, server: Option<String>, config_commit: Option<String>) -> PlanDoc {
    let port = |(sandbox, service, port): &Port| PortDoc {
        sandbox: sandbox.clone(),
        service: service.clone(),
        port: *port,
        since: None,
    };
    PlanDoc {
        server,
        config_commit,
        changes: preview.changes_anything(),
        sandboxes: preview
            .sandboxes
            .iter()
            .map(|s| SandboxPlan {
                name: s.name.clone(),
                change: s.change.as_str(),
                generated_by: None,
                mode: s.mode.clone(),
                held: s.held.clone(),
                actions: s
                    .steps
                    .iter()
                    .map(|step| ActionPlan {
                        role: step.role,
                        resource: step.resource.clone(),
                        action: crate::controller::kind(&step.action),
                        reason: step.reason.clone(),
                        says: step.to_string(),
                    })
                    .collect(),
            })
            .collect(),
        skipped: Vec::new(),
        ports: PortChanges {
            added: preview.ports_added.iter().map(port).collect(),
            removed: preview.ports_removed.iter().map(port).collect(),
        },
    }
}

fn text(doc: &PlanDoc, settings: &Settings, reported: &[Role]) -> String {
    let mut out = String::new();
    match (&doc.server, &doc.config_commit) {
        (Some(server), commit) => {
            let roles: Vec<String> = reported.iter().map(|r| r.to_string()).collect();
            out.push_str(&format!(
                "Planned against the reconciler at {server} (config commit {}; reports from: {}).\n",
                commit.as_deref().map_or("none", crate::plan::short),
                if roles.is_empty() {
                    "no agent".to_string()
                } else {
                    roles.join(", ")
                }
            ));
        }
        (None, _) => out.push_str(&format!(
            "Planned against an empty world: no --server was given, so nothing counts as running and no port as \
             given out (ports come from the default ranges {}-{} for gateways, {}-{} for services).\n",
            settings.gateway_ports.start(),
            settings.gateway_ports.end(),
            settings.service_ports.start(),
            settings.service_ports.end()
        )),
    }
    let mut quiet = 0;
    for sb in &doc.sandboxes {
        if sb.actions.is_empty() && sb.held.is_none() && sb.change == "unchanged" {
            quiet += 1;
            continue;
        }
        let mode = match &sb.mode {
            Some(docs::Mode::Suspended(why)) => format!(", suspended: {why}"),
            _ => String::new(),
        };
        let made = sb
            .generated_by
            .as_ref()
            .map(|set| format!(", made by set {set}"))
            .unwrap_or_default();
        out.push_str(&format!("\nsandbox {} ({}{mode}{made})\n", sb.name, sb.change));
        if let Some(why) = &sb.held {
            out.push_str(&format!("  held, nothing is done to it: {why}\n"));
        } else if sb.actions.is_empty() {
            out.push_str("  no action\n");
        }
        for a in &sb.actions {
            out.push_str(&format!("  {}\n", a.says));
        }
    }
    if !doc.skipped.is_empty() {
        out.push_str("\nskipped branches\n");
        for s in &doc.skipped {
            out.push_str(&format!("  set {}, branch {}: {}\n", s.set, s.branch, s.reason));
        }
    }
    if !doc.ports.added.is_empty() || !doc.ports.removed.is_empty() {
        out.push_str("\nports\n");
        for (sign, list) in [("+", &doc.ports.added), ("-", &doc.ports.removed)] {
            for p in list {
                out.push_str(&format!("  {sign} {} {}/{}\n", p.port, p.sandbox, p.service));
            }
        }
    }
    if quiet > 0 {
        out.push_str(&format!("\n{quiet} sandbox(es) unchanged, nothing to do\n"));
    }
    let actions: usize = doc.sandboxes.iter().map(|s| s.actions.len()).sum();
    out.push_str(&if doc.changes {
        format!("\n{actions} action(s) would run (exit 2)\n")
    } else {
        "\nnothing would change (exit 0)\n".to_string()
    });
    out
}
