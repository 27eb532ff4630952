//! What `sdp apply`, `sdp diff` and `sdp delete` do to the config repo's files, as pure functions: where an
//! object goes, the files' text before and after, a unified diff and a short summary in the domain's words.

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Path, PathBuf};

use sdp_manifest::{ConfigSet, Environment, InputFile, Kind, ObjectRef, Parsed, Sandbox};

/// One file of the config repo, relative to its root, before and after a change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileChange {
    pub path: PathBuf,
    /// `None`: the file does not exist yet.
    pub before: Option<String>,
    /// `None`: the file is removed.
    pub after: Option<String>,
}

impl FileChange {
    pub fn is_noop(&self) -> bool {
        self.before == self.after
    }

    /// A unified diff with `a/` and `b/` headers, as git shows it.
    pub fn unified_diff(&self) -> String {
        let before = self.before.as_deref().unwrap_or("");
        let after = self.after.as_deref().unwrap_or("");
        let path = self.path.display();
        let a = if self.before.is_some() {
            format!("a/{path}")
        } else {
            "/dev/null".into()
        };
        let b = if self.after.is_some() {
            format!("b/{path}")
        } else {
            "/dev/null".into()
        };
        similar::TextDiff::from_lines(before, after)
            .unified_diff()
            .context_radius(3)
            .header(&a, &b)
            .to_string()
    }
}

/// The repo as the change finds it: its files by path relative to the root, and what they hold.
pub struct RepoState {
    pub files: BTreeMap<PathBuf, String>,
    pub set: ConfigSet,
}

impl RepoState {
    /// Reads files given relative to the repo root. Labels in problems are `label_root` joined with the path.
    pub fn new(files: BTreeMap<PathBuf, String>, label_root: &Path) -> RepoState {
        let set = ConfigSet::from_inputs(inputs(&files, label_root, &BTreeMap::new()), true);
        RepoState { files, set }
    }

    /// The set of objects after `changes`, with problems labelled with the paths users know: a file that the
    /// change replaces whole by the user's file keeps the user's file name, so lines match what they wrote.
    pub fn after(
        &self,
        changes: &[FileChange],
        label_root: &Path,
        user_labels: &BTreeMap<PathBuf, PathBuf>,
    ) -> ConfigSet {
        let mut files = self.files.clone();
        for c in changes {
            match &c.after {
                Some(text) => files.insert(c.path.clone(), text.clone()),
                None => files.remove(&c.path),
            };
        }
        // Changed files are read last, so that a name or port they claim twice is reported in them, not in the
        // object that had it first.
        let (changed, unchanged): (Vec<InputFile>, Vec<InputFile>) =
            inputs(&files, label_root, user_labels).into_iter().partition(|i| {
                changes
                    .iter()
                    .any(|c| label_root.join(&c.path) == i.label || user_labels.get(&c.path) == Some(&i.label))
            });
        ConfigSet::from_inputs(unchanged.into_iter().chain(changed).collect(), true)
    }

    /// Where an object currently lives: its file and its document's byte range there.
    pub fn locate(&self, object: &ObjectRef, label_root: &Path) -> Option<(PathBuf, Range<usize>)> {
        let source = self.set.source_of(object.kind, &object.name)?;
        let rel = source
            .file
            .strip_prefix(label_root)
            .unwrap_or(&source.file)
            .to_path_buf();
        Some((rel, source.bytes.clone()))
    }
}

fn inputs(
    files: &BTreeMap<PathBuf, String>,
    label_root: &Path,
    user_labels: &BTreeMap<PathBuf, PathBuf>,
) -> Vec<InputFile> {
    files
        .iter()
        .filter_map(|(rel, text)| {
            let folder = Kind::ALL.into_iter().find(|k| rel.starts_with(k.folder()))?;
            let label = user_labels.get(rel).cloned().unwrap_or_else(|| label_root.join(rel));
            Some(InputFile {
                label,
                folder: Some(folder),
                text: text.clone(),
            })
        })
        .collect()
}

pub fn with_final_newline(mut s: String) -> String {
    if !s.ends_with('\n') {
        s.push('\n');
    }
    s
}

/// How many documents with content a text holds.
fn document_count(text: &str) -> usize {
    sdp_manifest::split_documents(text)
        .iter()
        .filter(|d| d.has_content)
        .count()
}

/// A document to put into a file: the byte range it replaces (`None`: it is added), and its text.
type DocEdit = (Option<Range<usize>>, String);

/// The file changes that put `incoming` (the objects read from the user's file `incoming_text`) into the repo.
/// An object that exists is replaced where it is; a new one goes to `<folder>/<name>.yaml`. A file that held
/// only the object takes the user's document as written, comments included.
pub fn apply_changes(repo: &RepoState, label_root: &Path, incoming: &[Parsed], incoming_text: &str) -> Vec<FileChange> {
    let whole_file = incoming.len() == 1;
    let mut edits: BTreeMap<PathBuf, Vec<DocEdit>> = BTreeMap::new();
    for item in incoming {
        let object = item.object_ref();
        let doc_text = if whole_file {
            incoming_text.to_string()
        } else {
            item.source().text.clone()
        };
        let doc_text = with_final_newline(doc_text);
        let (path, range) = match repo.locate(&object, label_root) {
            Some((path, range)) => (path, Some(range)),
            None => (
                PathBuf::from(object.kind.folder()).join(format!("{}.yaml", object.name)),
                None,
            ),
        };
        edits.entry(path).or_default().push((range, doc_text));
    }
    edits
        .into_iter()
        .map(|(path, edits)| edit_file(repo.files.get(&path).cloned(), path, edits))
        .collect()
}

fn edit_file(before: Option<String>, path: PathBuf, mut edits: Vec<DocEdit>) -> FileChange {
    let Some(original) = before.clone() else {
        let docs: Vec<String> = edits.into_iter().map(|(_, t)| t).collect();
        return FileChange {
            path,
            before,
            after: Some(join_documents(docs)),
        };
    };
    // A file that holds only this object is replaced whole by what the user wrote.
    if document_count(&original) == 1 && edits.len() == 1 && edits[0].0.is_some() {
        let after = edits.pop().map(|(_, t)| t);
        return FileChange { path, before, after };
    }
    let mut text = original;
    edits.sort_by_key(|(r, _)| std::cmp::Reverse(r.as_ref().map(|r| r.start)));
    let mut appended = Vec::new();
    for (range, doc) in edits {
        match range {
            Some(r) => {
                let marker = text[r.clone()].starts_with("---");
                let doc = if marker && !doc.starts_with("---") {
                    format!("---\n{doc}")
                } else {
                    doc
                };
                text.replace_range(r, &doc);
            }
            None => appended.push(doc),
        }
    }
    for doc in appended {
        text = with_final_newline(text);
        text.push_str(if doc.starts_with("---") { "" } else { "---\n" });
        text.push_str(&doc);
    }
    FileChange {
        path,
        before,
        after: Some(text),
    }
}

fn join_documents(docs: Vec<String>) -> String {
    let mut out = String::new();
    for (i, doc) in docs.into_iter().enumerate() {
        if i > 0 && !doc.starts_with("---") {
            out.push_str("---\n");
        }
        out.push_str(&doc);
    }
    out
}

/// The file change that removes an object from the repo: its whole file, or its document in a shared file.
pub fn delete_change(repo: &RepoState, label_root: &Path, object: &ObjectRef) -> Option<FileChange> {
    let (path, range) = repo.locate(object, label_root)?;
    let before = repo.files.get(&path)?.clone();
    if document_count(&before) == 1 {
        return Some(FileChange {
            path,
            before: Some(before),
            after: None,
        });
    }
    let mut after = before.clone();
    after.replace_range(range, "");
    Some(FileChange {
        path,
        before: Some(before),
        after: Some(after),
    })
}

/// Sets `metadata.annotations.<key>` of an object to `value` by editing its file's text: only the annotation's
/// value is replaced, or one line (or an `annotations:` block of two) is inserted; every other byte stays. This is
/// how `sdp restart` asks for a new container: through git, like every other change.
pub fn annotate(
    repo: &RepoState,
    label_root: &Path,
    object: &ObjectRef,
    key: &str,
    value: &str,
) -> Result<FileChange, String> {
    let (path, _) = repo
        .locate(object, label_root)
        .ok_or_else(|| format!("{object} is not in the config repo's HEAD"))?;
    let source = repo
        .set
        .source_of(object.kind, &object.name)
        .ok_or_else(|| format!("{object} is not in the config repo's HEAD"))?;
    let before = repo.files.get(&path).ok_or("the object's file is not in HEAD")?.clone();
    let quoted = format!("\"{}\"", value.replace('\\', "\\\\").replace('"', "\\\""));
    let index = &source.index;
    let line_start = |line: u64| -> usize {
        before
            .split_inclusive('\n')
            .take(line.saturating_sub(1) as usize)
            .map(str::len)
            .sum()
    };
    let flow = "metadata is written in flow style ({...}): add the annotation by hand, or write metadata as a block";
    let mut after = before.clone();
    if let Some(place) = index.get(&["metadata", "annotations", key]) {
        after.replace_range(place.value_bytes.clone(), &quoted);
    } else if let Some(annotations) = index.get(&["metadata", "annotations"]) {
        // Insert before the first existing annotation, at its indentation.
        let annotations_map = match object.kind {
            Kind::Environment => None,
            _ => repo
                .set
                .sandboxes
                .iter()
                .chain(&repo.set.templates)
                .find(|o| o.value.metadata.name == object.name)
                .map(|o| o.value.metadata.annotations.clone()),
        };
        let first = annotations_map
            .and_then(|m| {
                m.keys()
                    .find_map(|k| index.get(&["metadata", "annotations", k]).and_then(|p| p.key))
            })
            .filter(|pos| pos.line > annotations.value.line || annotations.key.is_some_and(|k| pos.line > k.line))
            .ok_or(flow)?;
        let at = line_start(first.line);
        let indent = " ".repeat(first.column.saturating_sub(1) as usize);
        after.insert_str(at, &format!("{indent}{key}: {quoted}\n"));
    } else {
        let name = index.get(&["metadata", "name"]).and_then(|p| p.key).ok_or(flow)?;
        let metadata = index.get(&["metadata"]).and_then(|p| p.key).ok_or(flow)?;
        if name.line == metadata.line {
            return Err(flow.into());
        }
        let at = line_start(name.line + 1);
        let indent = " ".repeat(name.column.saturating_sub(1) as usize);
        let block = format!("{indent}annotations:\n{indent}  {key}: {quoted}\n");
        // The name's line may be the file's last, without a newline.
        if at > after.len() || (at == after.len() && !after.ends_with('\n')) {
            after.push('\n');
            after.push_str(&block);
        } else {
            after.insert_str(at, &block);
        }
    }
    Ok(FileChange {
        path,
        before: Some(before),
        after: Some(after),
    })
}

/// What changes for users, in a few lines: services added, removed or moved to another branch, routes changed.
pub fn summarize(before: &ConfigSet, after: &ConfigSet, objects: &[ObjectRef]) -> Vec<String> {
    let mut lines = Vec::new();
    for object in objects {
        match object.kind {
            Kind::Sandbox | Kind::SandboxTemplate => {
                let find = |set: &ConfigSet| {
                    let list = if object.kind == Kind::Sandbox {
                        &set.sandboxes
                    } else {
                        &set.templates
                    };
                    list.iter()
                        .find(|o| o.value.metadata.name == object.name)
                        .map(|o| o.value.clone())
                };
                sandbox_summary(object, find(before).as_ref(), find(after).as_ref(), &mut lines);
            }
            Kind::Environment => {
                let find = |set: &ConfigSet| {
                    set.environments
                        .iter()
                        .find(|o| o.value.metadata.name == object.name)
                        .map(|o| o.value.clone())
                };
                environment_summary(object, find(before).as_ref(), find(after).as_ref(), &mut lines);
            }
            Kind::SandboxSet => {
                let find = |set: &ConfigSet| {
                    set.sets
                        .iter()
                        .find(|o| o.value.metadata.name == object.name)
                        .map(|o| o.value.clone())
                };
                match (find(before), find(after)) {
                    (None, Some(s)) => lines.push(format!(
                        "set {}: a sandbox per branch {} of {} from template {}",
                        object.name, s.spec.branches, s.spec.service, s.spec.template
                    )),
                    (Some(_), None) => lines.push(format!(
                        "set {}: removed, and with it every sandbox it made",
                        object.name
                    )),
                    (Some(a), Some(b)) if a != b => lines.push(format!("set {}: changed", object.name)),
                    _ => {}
                }
            }
        }
    }
    lines
}

fn sandbox_summary(object: &ObjectRef, before: Option<&Sandbox>, after: Option<&Sandbox>, out: &mut Vec<String>) {
    let (b, a) = match (before, after) {
        (None, None) => return,
        (None, Some(a)) => {
            let services: Vec<&str> = a.spec.services.keys().map(String::as_str).collect();
            out.push(format!(
                "{object}: created, gateway on {}, services: {}",
                a.spec.gateway.branch,
                list(&services)
            ));
            return;
        }
        (Some(_), None) => {
            out.push(format!(
                "{object}: deleted; its containers, network and worktrees will be removed"
            ));
            return;
        }
        (Some(b), Some(a)) => (&b.spec, &a.spec),
    };
    let start = out.len();
    if b.gateway.branch != a.gateway.branch {
        out.push(format!(
            "{object}: gateway moves from {} to {}",
            b.gateway.branch, a.gateway.branch
        ));
    }
    if b.gateway.port != a.gateway.port {
        out.push(format!(
            "{object}: gateway port {} -> {}",
            port(b.gateway.port),
            port(a.gateway.port)
        ));
    }
    pin_summary(
        object,
        "gateway",
        b.gateway.commit.as_deref(),
        a.gateway.commit.as_deref(),
        &a.gateway.branch,
        out,
    );
    for (name, svc) in &a.services {
        if let Some(old) = b.services.get(name) {
            let what = format!("service {name}");
            pin_summary(
                object,
                &what,
                old.commit.as_deref(),
                svc.commit.as_deref(),
                &svc.branch,
                out,
            );
        }
        let pin_only = |old: &sdp_manifest::ServiceSpec| {
            let mut old = old.clone();
            old.commit = svc.commit.clone();
            old == *svc
        };
        match b.services.get(name) {
            None => out.push(format!("{object}: service {name} added on {}", svc.branch)),
            Some(old) if old.commit != svc.commit && pin_only(old) => {}
            Some(old) if old.branch != svc.branch => out.push(format!(
                "{object}: service {name} moves from {} to {}",
                old.branch, svc.branch
            )),
            Some(old) if old != svc => out.push(format!("{object}: service {name} settings changed")),
            Some(_) => {}
        }
    }
    for name in b.services.keys().filter(|n| !a.services.contains_key(*n)) {
        out.push(format!("{object}: service {name} removed"));
    }
    let names: std::collections::BTreeSet<&String> = b.routes.keys().chain(a.routes.keys()).collect();
    for name in names {
        let old = b.routes.get(name).map(|r| r.as_str()).unwrap_or("ocp");
        let new = a.routes.get(name).map(|r| r.as_str()).unwrap_or("ocp");
        if old != new {
            out.push(format!("{object}: route {name} {old} -> {new}"));
        }
    }
    if b.suspend != a.suspend {
        out.push(format!("{object}: {}", if a.suspend { "suspended" } else { "resumed" }));
    }
    if b.expire_after != a.expire_after {
        let show = |v: &Option<String>| v.clone().unwrap_or_else(|| "never".into());
        out.push(format!(
            "{object}: expireAfter {} -> {}",
            show(&b.expire_after),
            show(&a.expire_after)
        ));
    }
    if out.len() == start && before != after {
        out.push(format!("{object}: metadata or comments changed"));
    }
}

/// A pin set, moved or taken away.
fn pin_summary(
    object: &ObjectRef,
    what: &str,
    before: Option<&str>,
    after: Option<&str>,
    branch: &str,
    out: &mut Vec<String>,
) {
    match (before, after) {
        (None, Some(c)) => out.push(format!("{object}: {what} pinned to {}", crate::plan::short(c))),
        (Some(old), Some(c)) if old != c => out.push(format!(
            "{object}: {what} pin moves from {} to {}",
            crate::plan::short(old),
            crate::plan::short(c)
        )),
        (Some(_), None) => out.push(format!("{object}: {what} unpinned: follows {branch} again")),
        _ => {}
    }
}

fn environment_summary(
    object: &ObjectRef,
    before: Option<&Environment>,
    after: Option<&Environment>,
    out: &mut Vec<String>,
) {
    match (before, after) {
        (None, Some(_)) => out.push(format!("{object}: created")),
        (Some(_), None) => out.push(format!("{object}: deleted")),
        (Some(b), Some(a)) => {
            // Names only: values of variables are plain, but secrets are only ever named.
            let keys = |m: &std::collections::BTreeMap<String, String>| m.keys().cloned().collect::<Vec<_>>();
            let changed = |what: &str, old: Vec<String>, new: Vec<String>, out: &mut Vec<String>| {
                let added: Vec<&str> = new.iter().filter(|k| !old.contains(k)).map(String::as_str).collect();
                let removed: Vec<&str> = old.iter().filter(|k| !new.contains(k)).map(String::as_str).collect();
                if !added.is_empty() {
                    out.push(format!("{object}: {what} added: {}", list(&added)));
                }
                if !removed.is_empty() {
                    out.push(format!("{object}: {what} removed: {}", list(&removed)));
                }
            };
            changed("variables", keys(&b.spec.variables), keys(&a.spec.variables), out);
            let secrets = |e: &Environment| e.spec.secrets.keys().cloned().collect::<Vec<_>>();
            changed("secrets", secrets(b), secrets(a), out);
            let edited: Vec<&str> = a
                .spec
                .variables
                .iter()
                .filter(|(k, v)| b.spec.variables.get(*k).is_some_and(|old| old != *v))
                .map(|(k, _)| k.as_str())
                .collect();
            if !edited.is_empty() {
                out.push(format!("{object}: variables changed: {}", list(&edited)));
            }
        }
        (None, None) => {}
    }
}

fn list(items: &[&str]) -> String {
    if items.is_empty() {
        "none".into()
    } else {
        items.join(", ")
    }
}

fn port(p: Option<u32>) -> String {
    p.map(|p| p.to_string()).unwrap_or_else(|| "allocated".into())
}

/// The text of a new Sandbox made from a template's document: `kind` and `metadata.name` replaced where they
/// stand, the schema comment pointed at the Sandbox schema, every other byte kept.
pub fn from_template(template: &sdp_manifest::Source, name: &str) -> Option<String> {
    let base = template.bytes.start;
    let kind = template.index.get(&["kind"])?.value_bytes.clone();
    let old_name = template.index.get(&["metadata", "name"])?.value_bytes.clone();
    let mut edits = [(kind, "Sandbox"), (old_name, name)];
    edits.sort_by_key(|(r, _)| std::cmp::Reverse(r.start));
    let mut text = template.text.clone();
    for (range, new) in edits {
        let local = range.start.checked_sub(base)?..range.end.checked_sub(base)?;
        text.get(local.clone())?;
        text.replace_range(local, new);
    }
    let lines: Vec<String> = text
        .split_inclusive('\n')
        .map(|line| {
            if line.trim_start().starts_with("# yaml-language-server:") {
                line.replace("sandboxtemplate.json", "sandbox.json")
            } else {
                line.to_string()
            }
        })
        .collect();
    Some(lines.concat())
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "apiVersion: sdp/v1\nkind: Sandbox\nmetadata: {name: a}\nspec: {gateway: {branch: main}}\n";
    const ENV: &str = "# shared\napiVersion: sdp/v1\nkind: Environment\nmetadata: {name: e}\n";

    fn repo(files: &[(&str, &str)]) -> RepoState {
        let files = files.iter().map(|(p, t)| (PathBuf::from(p), t.to_string())).collect();
        RepoState::new(files, Path::new(""))
    }

    fn incoming(text: &str) -> Vec<Parsed> {
        let (parsed, problems) = sdp_manifest::parse_str(Path::new("in.yaml"), text);
        assert!(problems.is_empty(), "{problems:?}");
        parsed
    }

    #[test]
    fn annotate_changes_only_the_annotation() {
        let object = ObjectRef {
            kind: Kind::Sandbox,
            name: "a".into(),
        };
        let block = "# keep me\napiVersion: sdp/v1\nkind: Sandbox\nmetadata:\n  name: a  # the name\n  owner: ann\nspec:\n  gateway: {branch: main}\n";
        let state = repo(&[("sandboxes/a.yaml", block)]);
        let first = annotate(
            &state,
            Path::new(""),
            &object,
            "sdp/restartedAt",
            "2026-11-25T10:00:00Z",
        )
        .unwrap();
        let text = first.after.unwrap();
        assert_eq!(
            text,
            block.replace(
                "  name: a  # the name\n",
                "  name: a  # the name\n  annotations:\n    sdp/restartedAt: \"2026-11-25T10:00:00Z\"\n"
            )
        );
        // Again: the value is replaced in place.
        let state = repo(&[("sandboxes/a.yaml", &text)]);
        let second = annotate(
            &state,
            Path::new(""),
            &object,
            "sdp/restartedAt",
            "2026-11-26T00:00:00Z",
        )
        .unwrap();
        assert_eq!(
            second.after.unwrap(),
            text.replace("2026-11-25T10:00:00Z", "2026-11-26T00:00:00Z")
        );
        // Another key goes beside the first, at its indentation.
        let third = annotate(&state, Path::new(""), &object, "sdp/restartedAt.account", "x").unwrap();
        let third = third.after.unwrap();
        assert!(
            third.contains("  annotations:\n    sdp/restartedAt.account: \"x\"\n    sdp/restartedAt:"),
            "{third}"
        );
        let reread = repo(&[("sandboxes/a.yaml", &third)]);
        assert!(reread.set.is_valid(), "{:?}", reread.set.problems);
        assert_eq!(reread.set.sandboxes[0].value.metadata.annotations.len(), 2);
        // Flow-style metadata is refused with a way out.
        let flow = repo(&[("sandboxes/a.yaml", A)]);
        let err = annotate(&flow, Path::new(""), &object, "sdp/restartedAt", "x").unwrap_err();
        assert!(err.contains("flow style"), "{err}");
    }

    #[test]
    fn an_object_in_a_shared_file_is_replaced_in_place_and_its_neighbours_keep_every_byte() {
        let shared = format!(
            "# two sandboxes\n{A}---\n# b's comment\n{}",
            A.replace("name: a", "name: b")
        );
        let state = repo(&[("sandboxes/both.yaml", &shared)]);
        let new_b = A.replace("name: a", "name: b").replace("main", "develop");
        let changes = apply_changes(&state, Path::new(""), &incoming(&new_b), &new_b);
        assert_eq!(changes.len(), 1);
        assert_eq!(changes[0].path, PathBuf::from("sandboxes/both.yaml"));
        let expected = format!("# two sandboxes\n{A}---\n{new_b}");
        assert_eq!(changes[0].after.as_deref(), Some(expected.as_str()));
    }

    #[test]
    fn several_objects_go_to_their_own_places_by_kind() {
        let state = repo(&[("environments/e.yaml", ENV)]);
        let text = format!(
            "{}---\n{}",
            A,
            ENV.replace("# shared\n", "").replace("name: e}", "name: e, owner: x}")
        );
        let changes = apply_changes(&state, Path::new(""), &incoming(&text), &text);
        let paths: Vec<_> = changes.iter().map(|c| c.path.display().to_string()).collect();
        assert_eq!(paths, ["environments/e.yaml", "sandboxes/a.yaml"]);
        assert!(changes[0].after.as_deref().unwrap().contains("owner: x"));
        assert_eq!(changes[1].before, None);
        assert!(
            changes[1]
                .after
                .as_deref()
                .unwrap()
                .starts_with("apiVersion: sdp/v1\nkind: Sandbox")
        );
    }

    #[test]
    fn deleting_from_a_shared_file_keeps_the_rest_and_a_lone_object_removes_its_file() {
        let shared = format!("{A}---\n{}", A.replace("name: a", "name: b"));
        let state = repo(&[
            ("sandboxes/both.yaml", &shared),
            ("sandboxes/c.yaml", &A.replace("name: a", "name: c")),
        ]);
        let b = ObjectRef {
            kind: Kind::Sandbox,
            name: "b".into(),
        };
        let change = delete_change(&state, Path::new(""), &b).unwrap();
        assert_eq!(change.after.as_deref(), Some(A));
        let c = ObjectRef {
            kind: Kind::Sandbox,
            name: "c".into(),
        };
        assert_eq!(delete_change(&state, Path::new(""), &c).unwrap().after, None);
        let missing = ObjectRef {
            kind: Kind::Sandbox,
            name: "zz".into(),
        };
        assert!(delete_change(&state, Path::new(""), &missing).is_none());
    }

    #[test]
    fn a_template_becomes_a_sandbox_with_only_kind_name_and_schema_changed() {
        let template = "# yaml-language-server: $schema=../schemas/sandboxtemplate.json\n# keep me\napiVersion: sdp/v1\nkind: SandboxTemplate   # the kind\nmetadata:\n  name: \"qa-default\"\nspec:\n  gateway: {branch: develop}  # gw\n";
        let (parsed, problems) = sdp_manifest::parse_str(Path::new("t.yaml"), template);
        assert!(problems.is_empty(), "{problems:?}");
        let text = from_template(parsed[0].source(), "my-box").unwrap();
        let expected = "# yaml-language-server: $schema=../schemas/sandbox.json\n# keep me\napiVersion: sdp/v1\nkind: Sandbox   # the kind\nmetadata:\n  name: my-box\nspec:\n  gateway: {branch: develop}  # gw\n";
        assert_eq!(text, expected);
    }

    #[test]
    fn the_summary_speaks_of_services_branches_and_routes() {
        let before = repo(&[(
            "sandboxes/a.yaml",
            "apiVersion: sdp/v1\nkind: Sandbox\nmetadata: {name: a}\nspec:\n  gateway: {branch: main}\n  services:\n    x: {branch: one}\n    y: {branch: one}\n  routes: {x: sandbox}\n",
        )]);
        let after = repo(&[(
            "sandboxes/a.yaml",
            "apiVersion: sdp/v1\nkind: Sandbox\nmetadata: {name: a}\nspec:\n  gateway: {branch: main}\n  services:\n    x: {branch: two}\n    z: {branch: one}\n  routes: {x: ocp}\n  suspend: true\n",
        )]);
        let a = ObjectRef {
            kind: Kind::Sandbox,
            name: "a".into(),
        };
        let lines = summarize(&before.set, &after.set, &[a]);
        assert_eq!(
            lines,
            [
                "Sandbox a: service x moves from one to two",
                "Sandbox a: service z added on one",
                "Sandbox a: service y removed",
                "Sandbox a: route x sandbox -> ocp",
                "Sandbox a: suspended",
            ]
        );
    }
}
