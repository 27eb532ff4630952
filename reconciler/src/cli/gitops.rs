//! `sdp diff`, `sdp apply` and `sdp delete`: the everyday way to change the config repo.
//!
//! All three read the repo as HEAD holds it, work out the file changes in memory (`change.rs`), and validate the
//! whole repo as it would be after them. Apply and delete then write and commit exactly those files, or, when
//! anything is refused, leave the repo as it was: no commit and no changed file.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use sdp_manifest::{ConfigSet, Kind, ObjectRef, Parsed, Problem};

use super::CommitArgs;
use crate::change::{self, FileChange, RepoState};
use crate::git::Git;

/// The config repo, read from its HEAD commit.
pub(super) struct Repo {
    pub(super) git: Git,
    /// What problems are labelled with: the repo path as the user gave it.
    pub(super) label_root: PathBuf,
    pub(super) state: RepoState,
}

pub(super) fn open(dir: &Path) -> Result<Repo> {
    let git = Git::open(dir)?;
    let folders: Vec<&str> = Kind::ALL.iter().map(|k| k.folder()).collect();
    let mut files = BTreeMap::new();
    for (rel, bytes) in git.head_files(&folders)? {
        let is_yaml = matches!(rel.extension().and_then(|e| e.to_str()), Some("yaml" | "yml"));
        if is_yaml {
            files.insert(rel, String::from_utf8_lossy(&bytes).into_owned());
        }
    }
    if files.is_empty() && !folders.iter().any(|f| dir.join(f).is_dir()) {
        bail!(
            "{} is not a config repo: it has none of sandboxes/, templates/, environments/ (use --repo DIR)",
            dir.display()
        );
    }
    let label_root = if dir == Path::new(".") {
        PathBuf::new()
    } else {
        dir.to_path_buf()
    };
    let state = RepoState::new(files, &label_root);
    Ok(Repo { git, label_root, state })
}

/// The objects of the user's file, or its problems printed and `None`.
fn read_incoming(file: &Path) -> Result<Option<(String, Vec<Parsed>)>> {
    let text = sdp_manifest::read_capped(file).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
    let (parsed, problems) = sdp_manifest::parse_str(file, &text);
    if !problems.is_empty() {
        super::print_problems(&problems);
        eprintln!("{}: {} problem(s); nothing was changed", file.display(), problems.len());
        return Ok(None);
    }
    if parsed.is_empty() {
        bail!("{} holds no manifest", file.display());
    }
    Ok(Some((text, parsed)))
}

/// The problems the change brings: those of the repo after it that the repo did not have before.
pub(super) fn new_problems(before: &ConfigSet, after: &ConfigSet) -> Vec<Problem> {
    after
        .problems
        .iter()
        .filter(|p| !before.problems.contains(p))
        .cloned()
        .collect()
}

/// A file that the change replaces whole by the user's own file keeps the user's name in problems.
fn user_labels(changes: &[FileChange], file: &Path, text: &str) -> BTreeMap<PathBuf, PathBuf> {
    let own = change::with_final_newline(text.to_string());
    changes
        .iter()
        .filter(|c| c.after.as_deref() == Some(own.as_str()))
        .map(|c| (c.path.clone(), file.to_path_buf()))
        .collect()
}

pub(super) struct Plan {
    pub(super) changes: Vec<FileChange>,
    pub(super) objects: Vec<ObjectRef>,
    pub(super) problems: Vec<Problem>,
    pub(super) summary: Vec<String>,
}

fn plan_apply(repo: &Repo, file: &Path, text: &str, incoming: &[Parsed]) -> Plan {
    let changes: Vec<FileChange> = change::apply_changes(&repo.state, &repo.label_root, incoming, text)
        .into_iter()
        .filter(|c| !c.is_noop())
        .collect();
    let objects: Vec<ObjectRef> = incoming.iter().map(Parsed::object_ref).collect();
    let after = repo
        .state
        .after(&changes, &repo.label_root, &user_labels(&changes, file, text));
    let problems = new_problems(&repo.state.set, &after);
    let summary = change::summarize(&repo.state.set, &after, &objects);
    Plan {
        changes,
        objects,
        problems,
        summary,
    }
}

pub(super) fn show(plan: &Plan) {
    for c in &plan.changes {
        print!("{}", c.unified_diff());
    }
    for line in &plan.summary {
        println!("* {line}");
    }
}

/// What the user's file would do to the repo.
enum Prepared {
    /// The file itself has problems (printed).
    Broken,
    /// Every object is already as written (said).
    Unchanged,
    Changes(Box<(Repo, Plan)>),
}

fn prepare(repo_dir: &Path, file: &Path) -> Result<Prepared> {
    let Some((text, incoming)) = read_incoming(file)? else {
        return Ok(Prepared::Broken);
    };
    let repo = open(repo_dir)?;
    let plan = plan_apply(&repo, file, &text, &incoming);
    if plan.changes.is_empty() {
        for o in &plan.objects {
            println!("{o}: unchanged");
        }
        return Ok(Prepared::Unchanged);
    }
    Ok(Prepared::Changes(Box::new((repo, plan))))
}

pub fn diff(repo_dir: &Path, file: &Path) -> Result<ExitCode> {
    let plan = match prepare(repo_dir, file)? {
        Prepared::Broken => return Ok(ExitCode::from(2)),
        Prepared::Unchanged => return Ok(ExitCode::SUCCESS),
        Prepared::Changes(prepared) => prepared.1,
    };
    show(&plan);
    if !plan.problems.is_empty() {
        super::print_problems(&plan.problems);
        let n = plan.problems.len();
        eprintln!("apply would refuse this: {n} problem(s) with the file in place");
    }
    Ok(ExitCode::from(1))
}

pub fn apply(
    file: &Path,
    args: &CommitArgs,
    wait: Option<(&super::client::Server, std::time::Duration)>,
) -> Result<ExitCode> {
    let (repo, plan) = match prepare(&args.repo, file)? {
        Prepared::Broken => return Ok(ExitCode::from(1)),
        Prepared::Unchanged => {
            // Nothing to commit; with --wait, still report where the sandbox stands.
            if let Some((server, limit)) = wait {
                let names = incoming_names(file)?;
                return super::client::wait_for_sync(server, &names, "", limit);
            }
            return Ok(ExitCode::SUCCESS);
        }
        Prepared::Changes(prepared) => *prepared,
    };
    if !plan.problems.is_empty() {
        super::print_problems(&plan.problems);
        let n = plan.problems.len();
        eprintln!("apply refused: {n} problem(s) with the file in place; nothing was changed");
        return Ok(ExitCode::from(1));
    }
    show(&plan);
    let default = format!("apply {}", describe(&plan.objects));
    let message = args.message.as_deref().unwrap_or(&default);
    let code = commit(&repo, &plan.changes, message, args.push, Some(file))?;
    let Some((server, limit)) = wait else { return Ok(code) };
    if code != ExitCode::SUCCESS {
        return Ok(code);
    }
    let sandboxes: Vec<String> = plan
        .objects
        .iter()
        .filter(|o| o.kind == Kind::Sandbox)
        .map(|o| o.name.clone())
        .collect();
    let head = repo.git.head_commit()?.map(|(id, _, _)| id).unwrap_or_default();
    if args.push {
        super::client::fetch_now(server);
    }
    super::client::wait_for_sync(server, &sandboxes, &head, limit)
}

pub fn delete(kind: Kind, name: &str, args: &CommitArgs) -> Result<ExitCode> {
    let repo = open(&args.repo)?;
    let object = ObjectRef {
        kind,
        name: name.to_string(),
    };
    let Some(change) = change::delete_change(&repo.state, &repo.label_root, &object) else {
        bail!("{object} is not in the config repo's HEAD");
    };
    let changes = vec![change];
    let after = repo.state.after(&changes, &repo.label_root, &BTreeMap::new());
    let problems = new_problems(&repo.state.set, &after);
    if !problems.is_empty() {
        super::print_problems(&problems);
        eprintln!(
            "delete refused: the repo would have {} problem(s) without {object}; nothing was changed",
            problems.len()
        );
        return Ok(ExitCode::from(1));
    }
    let plan = Plan {
        summary: change::summarize(&repo.state.set, &after, std::slice::from_ref(&object)),
        objects: vec![object.clone()],
        changes,
        problems,
    };
    show(&plan);
    let default = format!("delete {}", describe(&plan.objects));
    let message = args.message.as_deref().unwrap_or(&default);
    commit(&repo, &plan.changes, message, args.push, None)
}

/// The sandboxes a file holds, for `--wait` when the file is already as committed.
fn incoming_names(file: &Path) -> Result<Vec<String>> {
    let text = sdp_manifest::read_capped(file).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
    let (parsed, _) = sdp_manifest::parse_str(file, &text);
    Ok(parsed
        .iter()
        .map(|p| p.object_ref())
        .filter(|o| o.kind == Kind::Sandbox)
        .map(|o| o.name)
        .collect())
}

/// `sdp restart SANDBOX[/SERVICE]`: commits a restart stamp into the sandbox's metadata (as `kubectl rollout
/// restart` does); the stamp is part of the spec hash, so the plan replaces that container, or all of them.
pub fn restart(target: &str, args: &CommitArgs) -> Result<ExitCode> {
    let (sandbox, service) = match target.split_once('/') {
        Some((sb, svc)) => (sb, Some(svc)),
        None => (target, None),
    };
    let repo = open(&args.repo)?;
    let object = ObjectRef {
        kind: Kind::Sandbox,
        name: sandbox.to_string(),
    };
    let Some(current) = repo
        .state
        .set
        .sandboxes
        .iter()
        .find(|o| o.value.metadata.name == sandbox)
    else {
        bail!("sandbox {sandbox} is not in the config repo's HEAD (or it is invalid: run `sdp validate`)");
    };
    let key = match service {
        None => crate::desired::RESTART_ANNOTATION.to_string(),
        Some(svc) if svc == sdp_protocol::GATEWAY || current.value.spec.services.contains_key(svc) => {
            format!("{}{svc}", crate::desired::RESTART_SERVICE_PREFIX)
        }
        Some(svc) => bail!(
            "sandbox {sandbox} has no service {svc}; its services are: {}",
            current
                .value
                .spec
                .services
                .keys()
                .cloned()
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let change =
        change::annotate(&repo.state, &repo.label_root, &object, &key, &utc_now()).map_err(anyhow::Error::msg)?;
    let changes = vec![change];
    let after = repo.state.after(&changes, &repo.label_root, &BTreeMap::new());
    let problems = new_problems(&repo.state.set, &after);
    if !problems.is_empty() {
        super::print_problems(&problems);
        eprintln!("restart refused: {} problem(s); nothing was changed", problems.len());
        return Ok(ExitCode::from(1));
    }
    let what = match service {
        Some(svc) => format!("{sandbox}/{svc}"),
        None => sandbox.to_string(),
    };
    let plan = Plan {
        summary: vec![format!("restart {what}: its container(s) will be replaced")],
        objects: vec![object],
        changes,
        problems,
    };
    show(&plan);
    let default = format!("restart {what}");
    let message = args.message.as_deref().unwrap_or(&default);
    commit(&repo, &plan.changes, message, args.push, None)
}

/// Now as `2026-11-25T10:00:00Z`.
pub(super) fn utc_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    sdp_protocol::rfc3339(secs)
}

pub(super) fn describe(objects: &[ObjectRef]) -> String {
    let names: Vec<String> = objects
        .iter()
        .map(|o| format!("{} {}", o.kind.as_str().to_lowercase(), o.name))
        .collect();
    names.join(", ")
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (fs::canonicalize(a), fs::canonicalize(b)) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

/// Writes the changes, commits exactly those files, and pushes if asked. Anything that fails before the commit
/// is made puts every file back as it was on disk.
pub(super) fn commit(
    repo: &Repo,
    changes: &[FileChange],
    message: &str,
    push: bool,
    user_file: Option<&Path>,
) -> Result<ExitCode> {
    let root = repo.git.root();
    for c in changes {
        let on_disk = root.join(&c.path);
        let is_users_file = user_file.is_some_and(|f| same_file(f, &on_disk));
        if !is_users_file && repo.git.is_dirty(&c.path)? {
            bail!(
                "{} has uncommitted changes that this would overwrite; commit or stash them first. Nothing was changed.",
                on_disk.display()
            );
        }
    }
    let who = repo.git.identity()?;
    if push {
        let upstream = repo.git.upstream()?;
        let behind = repo.git.behind_upstream()?;
        if behind > 0 {
            bail!(
                "your branch is {behind} commit(s) behind {upstream}; run `git pull --rebase` first. Nothing was changed."
            );
        }
    }
    let saved: Vec<(PathBuf, Option<Vec<u8>>)> = changes
        .iter()
        .map(|c| (root.join(&c.path), fs::read(root.join(&c.path)).ok()))
        .collect();
    let restore = || {
        for (path, content) in &saved {
            let _ = match content {
                Some(bytes) => fs::write(path, bytes),
                None => fs::remove_file(path),
            };
        }
    };
    let written = changes.iter().try_for_each(|c| write_change(root, c));
    let paths: Vec<PathBuf> = changes.iter().map(|c| c.path.clone()).collect();
    let id = match written.and_then(|()| repo.git.commit_paths(&paths, message)) {
        Ok(id) => id,
        Err(e) => {
            restore();
            return Err(e.context("nothing was committed and the files are as they were"));
        }
    };
    println!("committed {id} as {who}: {message}");
    if push {
        if let Err(e) = repo.git.push() {
            eprintln!("error: {e:#}");
            eprintln!("the commit {id} is kept locally; push it with `git push` once the cause above is fixed");
            return Ok(ExitCode::from(1));
        }
        println!("pushed {id}");
    }
    Ok(ExitCode::SUCCESS)
}

/// Writes one file atomically (a temporary file renamed over it), or removes it.
fn write_change(root: &Path, change: &FileChange) -> Result<()> {
    let path = root.join(&change.path);
    let Some(text) = &change.after else {
        return fs::remove_file(&path).with_context(|| format!("cannot remove {}", path.display()));
    };
    let dir = path.parent().unwrap_or(root);
    fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let tmp = dir.join(format!(
        ".{}.sdp-tmp",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("manifest")
    ));
    let mut f = fs::File::create(&tmp).with_context(|| format!("cannot write {}", tmp.display()))?;
    f.write_all(text.as_bytes())
        .and_then(|()| f.sync_all())
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    fs::rename(&tmp, &path).with_context(|| format!("cannot write {}", path.display()))
}

/// `sdp suspend`, `sdp resume`, `sdp route` and `sdp branch`: sets a few values of one sandbox's spec in its file
/// (`edit.rs`: only their bytes change), validates the whole repo with the change, shows the diff and commits
/// like `apply`. Refused, changing nothing: an unknown sandbox or service, a result that does not validate or
/// does not read back as asked, a file with uncommitted changes.
pub fn edit(
    sandbox: &str,
    edits: &[crate::edit::SpecEdit],
    verb: &str,
    args: &CommitArgs,
    wait: Option<(&super::client::Server, std::time::Duration)>,
) -> Result<ExitCode> {
    let repo = open(&args.repo)?;
    let object = crate::edit::sandbox_ref(sandbox);
    let change =
        crate::edit::edit_sandbox(&repo.state, &repo.label_root, sandbox, edits).map_err(anyhow::Error::msg)?;
    if change.is_noop() {
        println!("{object}: unchanged (already as asked)");
        if let Some((server, limit)) = wait {
            return super::client::wait_for_sync(server, &[sandbox.to_string()], "", limit);
        }
        return Ok(ExitCode::SUCCESS);
    }
    let changes = vec![change];
    let after = repo.state.after(&changes, &repo.label_root, &BTreeMap::new());
    let mut problems = new_problems(&repo.state.set, &after);
    if problems.is_empty() {
        let reread = after.sandboxes.iter().find(|o| o.value.metadata.name == sandbox);
        for e in edits {
            if !reread.is_some_and(|o| e.holds(&o.value)) {
                let file = repo.label_root.join(&changes[0].path);
                problems.push(Problem::new(
                    file,
                    sdp_manifest::Pos::new(1, 1),
                    format!("after the edit the file does not read back as `{e}`; make this change by hand"),
                ));
            }
        }
    }
    if !problems.is_empty() {
        super::print_problems(&problems);
        eprintln!(
            "{verb} refused: {} problem(s) with the change; nothing was changed",
            problems.len()
        );
        return Ok(ExitCode::from(1));
    }
    let plan = Plan {
        summary: change::summarize(&repo.state.set, &after, std::slice::from_ref(&object)),
        objects: vec![object],
        changes,
        problems,
    };
    show(&plan);
    let default = format!("{verb} {sandbox}");
    let message = args.message.as_deref().unwrap_or(&default);
    let code = commit(&repo, &plan.changes, message, args.push, None)?;
    let Some((server, limit)) = wait else { return Ok(code) };
    if code != ExitCode::SUCCESS {
        return Ok(code);
    }
    let head = repo.git.head_commit()?.map(|(id, _, _)| id).unwrap_or_default();
    if args.push {
        super::client::fetch_now(server);
    }
    super::client::wait_for_sync(server, &[sandbox.to_string()], &head, limit)
}
