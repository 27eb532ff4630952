//! What `sdp suspend`, `sdp resume`, `sdp route` and `sdp branch` do to a sandbox's file, as a pure function: the
//! bytes of the one value each sets are replaced where they stand, or one line (a small block when its parent is
//! missing) is inserted; every other byte of the file, comments and layout included, stays as it was.

use std::ops::Range;
use std::path::Path;

use sdp_manifest::{Kind, ObjectRef, Route, Sandbox};

use crate::change::{FileChange, RepoState};

/// One value of a sandbox's spec to set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SpecEdit {
    /// `spec.suspend`.
    Suspend(bool),
    /// `spec.routes.<service>`: `sandbox`, `ocp` or a URL.
    Route { service: String, target: String },
    /// `spec.services.<service>.branch`, or `spec.gateway.branch` for the service `gateway`.
    Branch { service: String, branch: String },
}

impl SpecEdit {
    /// Whether `sandbox` holds what this edit sets (read back after the edit, so that a value that YAML would
    /// read as something else is caught before anything is written).
    pub fn holds(&self, sandbox: &Sandbox) -> bool {
        let spec = &sandbox.spec;
        match self {
            SpecEdit::Suspend(on) => spec.suspend == *on,
            SpecEdit::Route { service, target } => {
                let now = spec.routes.get(service).map_or("ocp", Route::as_str);
                now == target
            }
            SpecEdit::Branch { service, branch } if service == sdp_protocol::GATEWAY => &spec.gateway.branch == branch,
            SpecEdit::Branch { service, branch } => spec.services.get(service).is_some_and(|s| &s.branch == branch),
        }
    }
}

impl std::fmt::Display for SpecEdit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SpecEdit::Suspend(on) => write!(f, "spec.suspend: {on}"),
            SpecEdit::Route { service, target } => write!(f, "spec.routes.{service}: {target}"),
            SpecEdit::Branch { service, branch } if service == sdp_protocol::GATEWAY => {
                write!(f, "spec.gateway.branch: {branch}")
            }
            SpecEdit::Branch { service, branch } => write!(f, "spec.services.{service}.branch: {branch}"),
        }
    }
}

/// A change to the file's text: the bytes of `range` become `text` (an empty range inserts).
struct Splice {
    range: Range<usize>,
    text: String,
}

/// The file change that sets `edits` in sandbox `name`; an edit that is already as asked changes nothing (the
/// answer is then a no-op). Refused, with what to do instead: an unknown sandbox or service, and a spec or routes
/// map written in flow style (`{...}`) that a new line cannot go into.
pub fn edit_sandbox(repo: &RepoState, label_root: &Path, name: &str, edits: &[SpecEdit]) -> Result<FileChange, String> {
    let Some(object) = repo.set.sandboxes.iter().find(|o| o.value.metadata.name == name) else {
        return Err(format!(
            "sandbox {name} is not in the config repo's HEAD (or it is invalid: run `sdp validate`)"
        ));
    };
    let sandbox = &object.value;
    let source = &object.source;
    let path = source
        .file
        .strip_prefix(label_root)
        .unwrap_or(&source.file)
        .to_path_buf();
    let before = repo
        .files
        .get(&path)
        .ok_or_else(|| format!("{} is not in the config repo's HEAD", path.display()))?
        .clone();
    let index = &source.index;
    let doc_end = source.bytes.end.min(before.len());
    let spec_key = index
        .get(&["spec"])
        .and_then(|p| p.key)
        .ok_or("the sandbox has no spec")?;
    let first_child = index
        .get(&["spec", "gateway"])
        .and_then(|p| p.key)
        .ok_or("the sandbox has no spec.gateway")?;
    let spec_flow = "spec is written in flow style ({...}): make this change by hand, or write spec as a block";
    // Where a new key of spec goes: after the last line of spec's block, at its children's indentation.
    let spec_indent = (first_child.column.saturating_sub(1)) as usize;
    let step = spec_indent
        .saturating_sub(spec_key.column.saturating_sub(1) as usize)
        .max(1);
    let spec_end = || -> Result<usize, String> {
        if first_child.line == spec_key.line {
            return Err(spec_flow.into());
        }
        Ok(block_end(&before, doc_end, spec_key.line, spec_key.column))
    };

    let mut splices: Vec<Splice> = Vec::new();
    let mut new_routes: Vec<(String, String)> = Vec::new();
    for edit in edits {
        if edit.holds(sandbox) {
            continue;
        }
        match edit {
            SpecEdit::Suspend(on) => match index.get(&["spec", "suspend"]) {
                Some(place) => splices.push(Splice {
                    range: place.value_bytes.clone(),
                    text: on.to_string(),
                }),
                None => splices.push(Splice {
                    range: spec_end().map(|at| at..at)?,
                    text: format!("{}suspend: {on}\n", " ".repeat(spec_indent)),
                }),
            },
            SpecEdit::Branch { service, branch } => {
                let at: Vec<&str> = if service == sdp_protocol::GATEWAY {
                    vec!["spec", "gateway", "branch"]
                } else if sandbox.spec.services.contains_key(service) {
                    vec!["spec", "services", service, "branch"]
                } else {
                    return Err(unknown_service(name, sandbox, service));
                };
                let place = index
                    .get(&at)
                    .ok_or_else(|| format!("{} is not where the file can be edited", at.join(".")))?;
                splices.push(Splice {
                    range: place.value_bytes.clone(),
                    text: scalar(branch, &before[place.value_bytes.clone()]),
                });
            }
            SpecEdit::Route { service, target } => match index.get(&["spec", "routes", service]) {
                Some(place) => splices.push(Splice {
                    range: place.value_bytes.clone(),
                    text: scalar(target, &before[place.value_bytes.clone()]),
                }),
                None => new_routes.push((service.clone(), target.clone())),
            },
        }
    }
    if !new_routes.is_empty() {
        splices.push(route_lines(
            &before,
            doc_end,
            sandbox,
            index,
            &new_routes,
            spec_indent,
            step,
            spec_end,
        )?);
    }
    for s in &mut splices {
        keep_comment_column(&before, s);
    }
    let mut after = before.clone();
    // From the end of the file backwards, so that each range still means what it meant in `before`.
    splices.sort_by_key(|s| std::cmp::Reverse((s.range.start, s.range.end)));
    for s in splices {
        if s.range.is_empty() && s.range.start == after.len() && !after.is_empty() && !after.ends_with('\n') {
            after.push('\n');
            after.push_str(&s.text);
        } else {
            after.replace_range(s.range, &s.text);
        }
    }
    Ok(FileChange {
        path,
        before: Some(before),
        after: Some(after),
    })
}

/// The insertion of the routes that the file does not name yet: lines at the end of `routes:`, or a new
/// `routes:` block at the end of spec.
#[allow(clippy::too_many_arguments)]
fn route_lines(
    text: &str,
    doc_end: usize,
    sandbox: &Sandbox,
    index: &sdp_manifest::Index,
    routes: &[(String, String)],
    spec_indent: usize,
    step: usize,
    spec_end: impl Fn() -> Result<usize, String>,
) -> Result<Splice, String> {
    let line = |indent: usize, service: &str, target: &str| {
        format!("{}{service}: {}\n", " ".repeat(indent), scalar(target, ""))
    };
    let Some(block) = index.get(&["spec", "routes"]) else {
        let mut lines = format!("{}routes:\n", " ".repeat(spec_indent));
        for (service, target) in routes {
            lines.push_str(&line(spec_indent + step, service, target));
        }
        let at = spec_end()?;
        return Ok(Splice {
            range: at..at,
            text: lines,
        });
    };
    let key = block.key.ok_or("spec.routes has no key")?;
    if block.value.line == key.line {
        return Err(
            "routes is written in flow style ({...}): add the route by hand, or write routes as a block".into(),
        );
    }
    // At the indentation of the routes already there.
    let indent = sandbox
        .spec
        .routes
        .keys()
        .find_map(|k| index.get(&["spec", "routes", k]).and_then(|p| p.key))
        .map_or(spec_indent + step, |pos| pos.column.saturating_sub(1) as usize);
    let at = block_end(text, doc_end, key.line, key.column);
    let lines: String = routes.iter().map(|(s, t)| line(indent, s, t)).collect();
    Ok(Splice {
        range: at..at,
        text: lines,
    })
}

/// A value replaced by one of another length moves the comment after it: the spaces between are made up
/// again (at least one), so that a column of comments stays a column.
fn keep_comment_column(text: &str, splice: &mut Splice) {
    if splice.range.is_empty() {
        return;
    }
    let rest = &text[splice.range.end..];
    let spaces = rest.len() - rest.trim_start_matches(' ').len();
    if spaces == 0 || !rest[spaces..].starts_with('#') {
        return;
    }
    let old_len = splice.range.len() + spaces;
    let pad = old_len.saturating_sub(splice.text.chars().count()).max(1);
    splice.text.push_str(&" ".repeat(pad));
    splice.range.end += spaces;
}

fn unknown_service(name: &str, sandbox: &Sandbox, service: &str) -> String {
    let mut known: Vec<&str> = sandbox.spec.services.keys().map(String::as_str).collect();
    known.push(sdp_protocol::GATEWAY);
    format!(
        "sandbox {name} has no service {service}; its services are: {}",
        known.join(", ")
    )
}

/// The byte offset just after the last line of the block that the key on line `key_line` (1-based, at
/// `key_column`) opens: the lines after it that are indented deeper, blank lines and comments between them
/// included, trailing ones not.
fn block_end(text: &str, doc_end: usize, key_line: u64, key_column: u64) -> usize {
    let key_indent = key_column.saturating_sub(1) as usize;
    let mut offset = 0;
    let mut end = None;
    for (i, line) in text.split_inclusive('\n').enumerate() {
        let start = offset;
        offset += line.len();
        let number = i as u64 + 1;
        if number < key_line {
            continue;
        }
        if number == key_line {
            end = Some(offset);
            continue;
        }
        if start >= doc_end {
            break;
        }
        let trimmed = line.trim_start_matches(' ');
        let content = trimmed.trim_end();
        if content.is_empty() || content.starts_with('#') {
            continue;
        }
        if line.len() - trimmed.len() <= key_indent || content.starts_with("---") || content == "..." {
            break;
        }
        end = Some(offset);
    }
    end.unwrap_or(doc_end).min(doc_end)
}

/// A string as a YAML scalar in the style of the token it replaces (`"..."`, `'...'` or plain); plain only when
/// YAML reads it back as the same string.
fn scalar(value: &str, old_token: &str) -> String {
    if old_token.starts_with('\'') && !value.contains('\n') {
        return format!("'{}'", value.replace('\'', "''"));
    }
    if old_token.starts_with('"') || !plain_is_safe(value) {
        return format!("\"{}\"", value.replace('\\', "\\\\").replace('"', "\\\""));
    }
    value.to_string()
}

fn plain_is_safe(value: &str) -> bool {
    let reserved = ["true", "false", "yes", "no", "on", "off", "y", "n", "null", "~"];
    value.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '/' | '.' | '_' | '-' | ':' | '@' | '+'))
        && !value.contains(": ")
        && !reserved.contains(&value.to_ascii_lowercase().as_str())
}

/// The object an edit of sandbox `name` changes.
pub fn sandbox_ref(name: &str) -> ObjectRef {
    ObjectRef {
        kind: Kind::Sandbox,
        name: name.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use super::*;

    const BLOCK: &str = "# yaml-language-server: $schema=../../schemas/sandbox.json\n# QA box\napiVersion: sdp/v1\nkind: Sandbox\nmetadata:\n  name: a\nspec:\n  gateway:\n    branch: develop   # the gateway\n  services:\n    account:\n      branch: \"feature/x\"\n  routes:\n    account: sandbox   # own container\n\n# trailing comment\n";

    fn repo(text: &str) -> RepoState {
        let files = [(PathBuf::from("sandboxes/a.yaml"), text.to_string())]
            .into_iter()
            .collect();
        RepoState::new(files, Path::new(""))
    }

    fn edit(text: &str, edits: &[SpecEdit]) -> Result<String, String> {
        let state = repo(text);
        assert!(state.set.is_valid(), "{:?}", state.set.problems);
        let change = edit_sandbox(&state, Path::new(""), "a", edits)?;
        let after = change.after.unwrap();
        let reread = repo(&after);
        assert!(reread.set.is_valid(), "{after}\n{:?}", reread.set.problems);
        for e in edits {
            assert!(e.holds(&reread.set.sandboxes[0].value), "{e:?} in\n{after}");
        }
        Ok(after)
    }

    fn route(service: &str, target: &str) -> SpecEdit {
        SpecEdit::Route {
            service: service.into(),
            target: target.into(),
        }
    }

    fn branch(service: &str, branch: &str) -> SpecEdit {
        SpecEdit::Branch {
            service: service.into(),
            branch: branch.into(),
        }
    }

    #[test]
    fn suspend_goes_after_the_last_line_of_spec_and_resume_flips_the_value_in_place() {
        let suspended = edit(BLOCK, &[SpecEdit::Suspend(true)]).unwrap();
        assert_eq!(
            suspended,
            BLOCK.replace("own container\n\n", "own container\n  suspend: true\n\n")
        );
        let resumed = edit(&suspended, &[SpecEdit::Suspend(false)]).unwrap();
        assert_eq!(resumed, suspended.replace("suspend: true", "suspend: false"));
        // Already as asked: nothing changes.
        assert_eq!(edit(BLOCK, &[SpecEdit::Suspend(false)]).unwrap(), BLOCK);
    }

    #[test]
    fn a_route_is_replaced_in_place_or_added_at_the_end_of_routes() {
        let after = edit(BLOCK, &[route("account", "ocp"), route("user", "http://10.0.0.1:9105")]).unwrap();
        assert_eq!(
            after,
            BLOCK.replace(
                "    account: sandbox   # own container\n",
                "    account: ocp       # own container\n    user: http://10.0.0.1:9105\n"
            )
        );
        // No routes block yet: one is added at the end of spec.
        let bare = BLOCK.replace("  routes:\n    account: sandbox   # own container\n", "");
        let after = edit(&bare, &[route("account", "sandbox")]).unwrap();
        assert_eq!(
            after,
            bare.replace("\"feature/x\"\n", "\"feature/x\"\n  routes:\n    account: sandbox\n")
        );
    }

    #[test]
    fn a_branch_keeps_its_quotes_and_the_gateway_is_a_service_name() {
        let after = edit(
            BLOCK,
            &[branch("account", "feature/y"), branch("gateway", "release/1.2")],
        )
        .unwrap();
        assert_eq!(
            after,
            BLOCK
                .replace("\"feature/x\"", "\"feature/y\"")
                .replace("branch: develop   #", "branch: release/1.2 #")
        );
        // A branch YAML would read as a number is quoted.
        let after = edit(BLOCK, &[branch("gateway", "1.0")]).unwrap();
        assert!(after.contains("branch: \"1.0\"     # the gateway"), "{after}");
        let err = edit(BLOCK, &[branch("nope", "x")]).unwrap_err();
        assert!(
            err.contains("has no service nope; its services are: account, gateway"),
            "{err}"
        );
    }

    #[test]
    fn flow_style_is_refused_with_a_way_out_and_a_file_without_final_newline_is_mended() {
        let flow = "apiVersion: sdp/v1\nkind: Sandbox\nmetadata: {name: a}\nspec: {gateway: {branch: main}}\n";
        let err = edit(flow, &[SpecEdit::Suspend(true)]).unwrap_err();
        assert!(err.contains("flow style"), "{err}");
        // A value in a flow map is still replaced in place.
        let after = edit(flow, &[branch("gateway", "dev")]).unwrap();
        assert_eq!(after, flow.replace("branch: main", "branch: dev"));
        let routes = BLOCK.replace(
            "  routes:\n    account: sandbox   # own container\n",
            "  routes: {account: sandbox}\n",
        );
        let err = edit(&routes, &[route("user", "http://10.0.0.1:1")]).unwrap_err();
        assert!(err.contains("routes is written in flow style"), "{err}");
        let no_newline = "apiVersion: sdp/v1\nkind: Sandbox\nmetadata:\n  name: a\nspec:\n  gateway:\n    branch: main";
        let after = edit(no_newline, &[SpecEdit::Suspend(true)]).unwrap();
        assert_eq!(after, format!("{no_newline}\n  suspend: true\n"));
    }

    #[test]
    fn in_a_shared_file_only_the_sandboxs_own_document_changes() {
        let other = BLOCK.replace("name: a", "name: b");
        let shared = format!("{BLOCK}---\n{other}");
        let state = RepoState::new(
            [(PathBuf::from("sandboxes/all.yaml"), shared.clone())]
                .into_iter()
                .collect(),
            Path::new(""),
        );
        let change = edit_sandbox(&state, Path::new(""), "a", &[SpecEdit::Suspend(true)]).unwrap();
        let expected = format!(
            "{}---\n{other}",
            BLOCK.replace("own container\n\n", "own container\n  suspend: true\n\n")
        );
        assert_eq!(change.after.unwrap(), expected);
    }
}
