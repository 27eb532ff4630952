//! `sdp snapshot`, `sdp rollback`, `sdp pin`, `sdp unpin` and `sdp clone`: commits that pin what runs, record it
//! as a template, bring it back, or copy a sandbox.
//!
//! Each works out its file change from the config repo's HEAD (the text edits are `crate::pins`), then ends as
//! `sdp apply` does: the whole repo validated with the change, the diff shown, exactly that file committed (and
//! pushed, and followed with `--wait`); anything refused leaves the repo as it was.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Result, bail};
use sdp_dashboard::docs::SandboxDoc;
use sdp_manifest::{Kind, ObjectRef, Sandbox, rules};
use sdp_protocol::{GATEWAY, labels};

use super::CommitArgs;
use super::client::{self, Server};
use super::gitops::{self, Plan, Repo};
use crate::change::{self, FileChange};

/// `--wait` and how long, when the command asks for it.
pub type Wait<'a> = Option<(&'a Server, Duration)>;

fn refuse(b: rules::Broken) -> anyhow::Error {
    anyhow::anyhow!("{}{}", b.message, b.hint.map(|h| format!("; {h}")).unwrap_or_default())
}

fn sandbox_ref(name: &str) -> ObjectRef {
    ObjectRef {
        kind: Kind::Sandbox,
        name: name.to_string(),
    }
}

/// A valid sandbox of the repo's HEAD.
fn current<'a>(repo: &'a Repo, name: &str) -> Result<&'a Sandbox> {
    match repo.state.set.sandboxes.iter().find(|o| o.value.metadata.name == name) {
        Some(o) => Ok(&o.value),
        None => bail!("sandbox {name} is not in the config repo's HEAD (or it is invalid: run `sdp validate`)"),
    }
}

/// The file of an object and its text in HEAD.
fn file_of(repo: &Repo, object: &ObjectRef) -> Result<(PathBuf, String)> {
    let Some((path, _)) = repo.state.locate(object, &repo.label_root) else {
        bail!("{object} is not in the config repo's HEAD");
    };
    let Some(text) = repo.state.files.get(&path) else {
        bail!("{object}'s file is not in the config repo's HEAD");
    };
    Ok((path, text.clone()))
}

/// The commit each container of a sandbox runs (label `sdp.commit`), by service (`gateway` for the gateway), as the
/// reconciler reports it; every container of its desired state must run one.
fn deployed_commits(server: &Server, sandbox: &str) -> Result<(SandboxDoc, BTreeMap<String, String>)> {
    let doc: SandboxDoc = client::get_doc(server, &format!("/api/v1/sandboxes/{sandbox}"))?;
    let Some(desired) = &doc.desired else {
        let why = doc
            .held
            .clone()
            .or_else(|| doc.config_errors.as_ref().map(|e| e.join("; ")))
            .unwrap_or_else(|| "it is not in the config commit it follows".into());
        bail!(
            "the reconciler at {} deploys nothing for sandbox {sandbox}: {why}",
            server.server
        );
    };
    let mut out = BTreeMap::new();
    let containers = desired
        .services
        .iter()
        .map(|(k, d)| (k.as_str(), d))
        .chain([(GATEWAY, &desired.gateway)]);
    for (service, want) in containers {
        let running = doc.actual.containers.iter().find(|c| c.name == want.container);
        let commit = running.and_then(|c| c.labels.get(labels::COMMIT));
        match commit {
            Some(c) if rules::commit_id(c).is_ok() => {
                out.insert(service.to_string(), c.to_string());
            }
            _ => bail!(
                "{service} of sandbox {sandbox} runs no container with a commit yet: wait until `sdp get sandbox \
                 {sandbox}` shows its COMMIT, then try again"
            ),
        }
    }
    Ok((doc, out))
}

/// Validates the repo with `changes`, shows the diff and commits it; the end of every command here.
fn finish(
    repo: &Repo,
    changes: Vec<FileChange>,
    object: ObjectRef,
    notes: Vec<String>,
    what: &str,
    args: &CommitArgs,
    wait: Wait,
) -> Result<ExitCode> {
    let changes: Vec<FileChange> = changes.into_iter().filter(|c| !c.is_noop()).collect();
    let sandboxes: Vec<String> = [&object]
        .into_iter()
        .filter(|o| o.kind == Kind::Sandbox)
        .map(|o| o.name.clone())
        .collect();
    if changes.is_empty() {
        for note in &notes {
            println!("* {note}");
        }
        println!("{object}: unchanged");
        return match wait {
            Some((server, limit)) => client::wait_for_sync(server, &sandboxes, "", limit),
            None => Ok(ExitCode::SUCCESS),
        };
    }
    let after = repo.state.after(&changes, &repo.label_root, &BTreeMap::new());
    let problems = gitops::new_problems(&repo.state.set, &after);
    if !problems.is_empty() {
        super::print_problems(&problems);
        eprintln!(
            "{what} refused: the repo would have {} problem(s); nothing was changed",
            problems.len()
        );
        return Ok(ExitCode::from(1));
    }
    let mut summary = change::summarize(&repo.state.set, &after, std::slice::from_ref(&object));
    summary.extend(notes);
    let plan = Plan {
        changes,
        objects: vec![object],
        problems,
        summary,
    };
    gitops::show(&plan);
    let message = args.message.as_deref().unwrap_or(what);
    let code = gitops::commit(repo, &plan.changes, message, args.push, None)?;
    let Some((server, limit)) = wait else { return Ok(code) };
    if code != ExitCode::SUCCESS {
        return Ok(code);
    }
    let head = repo.git.head_commit()?.map(|(id, _, _)| id).unwrap_or_default();
    if args.push {
        client::fetch_now(server);
    }
    client::wait_for_sync(server, &sandboxes, &head, limit)
}

/// `sdp pin SANDBOX SERVICE[=COMMIT]`: without COMMIT, the one the service runs now, as the reconciler reports it.
pub fn pin(server: &Server, sandbox: &str, target: &str, args: &CommitArgs, wait: Wait) -> Result<ExitCode> {
    let (service, commit) = match target.split_once('=') {
        Some((svc, commit)) => (svc, Some(commit.to_string())),
        None => (target, None),
    };
    let repo = gitops::open(&args.repo)?;
    let sb = current(&repo, sandbox)?;
    has_container(sb, service)?;
    let commit = match commit {
        Some(c) => {
            rules::commit_id(&c).map_err(refuse)?;
            c
        }
        None => {
            let (_, deployed) = deployed_commits(server, sandbox)?;
            match deployed.get(service) {
                Some(c) => c.clone(),
                None => bail!(
                    "the reconciler at {} does not deploy {service} in sandbox {sandbox} yet: name the commit, as \
                     {service}=COMMIT",
                    server.server
                ),
            }
        }
    };
    let object = sandbox_ref(sandbox);
    let (path, before) = file_of(&repo, &object)?;
    let after = crate::pins::pin(&before, sandbox, service, Some(&commit)).map_err(anyhow::Error::msg)?;
    let change = FileChange {
        path,
        before: Some(before),
        after: Some(after),
    };
    let what = format!("pin {sandbox}/{service} to {}", crate::plan::short(&commit));
    finish(&repo, vec![change], object, Vec::new(), &what, args, wait)
}

/// `sdp unpin SANDBOX SERVICE`: the service follows its branch's head again.
pub fn unpin(sandbox: &str, service: &str, args: &CommitArgs, wait: Wait) -> Result<ExitCode> {
    let repo = gitops::open(&args.repo)?;
    let sb = current(&repo, sandbox)?;
    has_container(sb, service)?;
    let object = sandbox_ref(sandbox);
    let (path, before) = file_of(&repo, &object)?;
    let after = crate::pins::pin(&before, sandbox, service, None).map_err(anyhow::Error::msg)?;
    let change = FileChange {
        path,
        before: Some(before),
        after: Some(after),
    };
    let what = format!("unpin {sandbox}/{service}");
    finish(&repo, vec![change], object, Vec::new(), &what, args, wait)
}

fn has_container(sb: &Sandbox, service: &str) -> Result<()> {
    if service == GATEWAY || sb.spec.services.contains_key(service) {
        return Ok(());
    }
    let known: Vec<&str> = sb.spec.services.keys().map(String::as_str).chain([GATEWAY]).collect();
    bail!(
        "sandbox {} has no service {service}; it has: {}",
        sb.metadata.name,
        known.join(", ")
    )
}

/// `sdp snapshot SANDBOX NAME`: `templates/NAME.yaml` with every container pinned to the commit it runs.
pub fn snapshot(server: &Server, sandbox: &str, name: &str, args: &CommitArgs) -> Result<ExitCode> {
    rules::object_name("template name", name).map_err(refuse)?;
    let repo = gitops::open(&args.repo)?;
    let sb = current(&repo, sandbox)?;
    let template = ObjectRef {
        kind: Kind::SandboxTemplate,
        name: name.to_string(),
    };
    let path = PathBuf::from(Kind::SandboxTemplate.folder()).join(format!("{name}.yaml"));
    if let Some((existing, _)) = repo.state.locate(&template, &repo.label_root) {
        bail!(
            "template {name} already exists in {}: pick another name, or `sdp delete template {name}` first",
            existing.display()
        );
    }
    if repo.state.files.contains_key(&path) || repo.git.root().join(&path).exists() {
        bail!("{} already exists: pick another name", path.display());
    }
    let (doc, deployed) = deployed_commits(server, sandbox)?;
    // The snapshot takes the manifest from this repo and the commits from the reconciler: both must speak of the
    // same containers on the same branches.
    if let Some(desired) = &doc.desired {
        let theirs: Vec<(&str, &str)> = desired
            .services
            .iter()
            .map(|(k, d)| (k.as_str(), d.branch.as_str()))
            .chain([(GATEWAY, desired.gateway.branch.as_str())])
            .collect();
        let ours: Vec<(&str, &str)> = sb
            .spec
            .services
            .iter()
            .map(|(k, s)| (k.as_str(), s.branch.as_str()))
            .chain([(GATEWAY, sb.spec.gateway.branch.as_str())])
            .collect();
        if theirs != ours {
            let show = |v: &[(&str, &str)]| {
                v.iter()
                    .map(|(s, b)| format!("{s} on {b}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            bail!(
                "sandbox {sandbox} in this repo ({}) is not what the reconciler deploys ({}, config commit {}): pull, \
                 or wait until the reconciler has read your last commit",
                show(&ours),
                show(&theirs),
                crate::plan::short(&doc.config_commit)
            );
        }
    }
    let taken = format!(
        "as deployed at {} (config commit {})",
        gitops::utc_now(),
        crate::plan::short(&doc.config_commit)
    );
    let text = crate::pins::snapshot(sb, name, &deployed, &taken).map_err(anyhow::Error::msg)?;
    let change = FileChange {
        path,
        before: None,
        after: Some(text),
    };
    let what = format!("snapshot {sandbox} as template {name}");
    finish(&repo, vec![change], template, Vec::new(), &what, args, None)
}

/// `sdp rollback SANDBOX --to NAME`: the snapshot's branches and pins written into the sandbox's own file.
pub fn rollback(sandbox: &str, to: &str, args: &CommitArgs, wait: Wait) -> Result<ExitCode> {
    let repo = gitops::open(&args.repo)?;
    let sb = current(&repo, sandbox)?;
    let Some(snapshot) = repo.state.set.templates.iter().find(|t| t.value.metadata.name == to) else {
        let known: Vec<&str> = repo
            .state
            .set
            .templates
            .iter()
            .map(|t| t.value.metadata.name.as_str())
            .collect();
        bail!(
            "no valid template {to} in the config repo's HEAD (known: {})",
            known.join(", ")
        );
    };
    let object = sandbox_ref(sandbox);
    let (path, before) = file_of(&repo, &object)?;
    let (after, notes) = crate::pins::rollback(&before, sandbox, sb, &snapshot.value).map_err(anyhow::Error::msg)?;
    let change = FileChange {
        path,
        before: Some(before),
        after: Some(after),
    };
    let what = format!("rollback {sandbox} to {to}");
    finish(&repo, vec![change], object, notes, &what, args, wait)
}

/// `sdp clone SRC DST`: `sandboxes/DST.yaml`, SRC's document with the name changed and explicit ports dropped.
pub fn clone(src: &str, dst: &str, args: &CommitArgs, wait: Wait) -> Result<ExitCode> {
    rules::object_name("sandbox name", dst).map_err(refuse)?;
    let repo = gitops::open(&args.repo)?;
    current(&repo, src)?;
    let object = sandbox_ref(dst);
    if let Some((existing, _)) = repo.state.locate(&object, &repo.label_root) {
        bail!("sandbox {dst} already exists in {}", existing.display());
    }
    let path = PathBuf::from(Kind::Sandbox.folder()).join(format!("{dst}.yaml"));
    if repo.state.files.contains_key(&path) || repo.git.root().join(&path).exists() {
        bail!("{} already exists: pick another name", path.display());
    }
    let Some(source) = repo.state.set.source_of(Kind::Sandbox, src) else {
        bail!("sandbox {src} is not in the config repo's HEAD");
    };
    let text = crate::pins::clone(source, src, dst).map_err(anyhow::Error::msg)?;
    let change = FileChange {
        path,
        before: None,
        after: Some(change::with_final_newline(text)),
    };
    let what = format!("clone {src} as {dst}");
    finish(&repo, vec![change], object, Vec::new(), &what, args, wait)
}
