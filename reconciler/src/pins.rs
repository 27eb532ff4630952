//! Pins, snapshots, rollbacks and clones as pure functions over manifest text: what `sdp pin`, `sdp unpin`,
//! `sdp rollback`, `sdp snapshot` and `sdp clone` write into the config repo.
//!
//! An edit of an existing file changes only the bytes it must (a value replaced, one `commit:` line inserted or
//! removed, an entry of a `{...}` mapping added or dropped); comments and layout stay. Each edit re-reads the
//! document, so that the next one finds its places in the text as it now is.

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::Path;

use sdp_manifest::{Index, Kind, Metadata, Pos, Sandbox, Source};
use sdp_protocol::GATEWAY;

/// The mapping of a service, or of the gateway (`gateway`: no service may have that name).
fn container_path(service: &str) -> Vec<&str> {
    if service == GATEWAY {
        vec!["spec", "gateway"]
    } else {
        vec!["spec", "services", service]
    }
}

/// The document of `kind` and `name` in a file's text, read again.
fn document(text: &str, kind: Kind, name: &str) -> Result<Source, String> {
    let (parsed, _) = sdp_manifest::parse_str(Path::new("manifest.yaml"), text);
    parsed
        .into_iter()
        .map(|p| (p.object_ref(), p.source().clone()))
        .find(|(o, _)| o.kind == kind && o.name == name)
        .map(|(_, source)| source)
        .ok_or_else(|| format!("{kind} {name} cannot be read from its file"))
}

/// The byte offset of a 1-based line and column (in characters) of `text`.
fn offset(text: &str, pos: Pos) -> usize {
    let start: usize = text
        .split_inclusive('\n')
        .take(pos.line.saturating_sub(1) as usize)
        .map(str::len)
        .sum();
    let line = &text[start.min(text.len())..];
    let column = line
        .char_indices()
        .nth(pos.column.saturating_sub(1) as usize)
        .map_or(line.len(), |(i, _)| i);
    start + column
}

/// The byte range of the line that holds `at`, its newline included.
fn line_of(text: &str, at: usize) -> Range<usize> {
    let start = text[..at].rfind('\n').map_or(0, |i| i + 1);
    let end = text[at..].find('\n').map_or(text.len(), |i| at + i + 1);
    start..end
}

/// Whether the mapping at `path` is written in flow style (`{branch: main, port: 9001}`).
fn is_flow(text: &str, index: &Index, path: &[&str]) -> bool {
    index
        .get(path)
        .is_some_and(|p| text[p.value_bytes.start..].starts_with('{'))
}

/// A scalar as YAML writes it when it needs no quotes (commit ids, branch names, service names): quoted only when
/// it could be read as something else.
fn scalar(value: &str) -> String {
    let plain = !value.is_empty()
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'))
        // A commit id of digits and one `e` reads as a number otherwise.
        && value.parse::<f64>().is_err()
        && !value.chars().all(|c| c.is_ascii_digit() || c == '.')
        && !matches!(value, "true" | "false" | "null" | "yes" | "no" | "on" | "off" | "~");
    if plain {
        value.to_string()
    } else {
        format!("\"{}\"", value.replace('\\', "\\\\").replace('"', "\\\""))
    }
}

/// Sets `key` of the mapping at `path` to `value` (`None`: removes it) in the document `kind`/`name` of `text`.
/// A new key goes right after `after` (a key the mapping always has), on its own line at its indentation, or as
/// the next entry of a flow mapping.
pub fn set_key(
    text: &str,
    kind: Kind,
    name: &str,
    path: &[&str],
    key: &str,
    value: Option<&str>,
    after: &str,
) -> Result<String, String> {
    let source = document(text, kind, name)?;
    let index = &source.index;
    if index.get(path).is_none() {
        return Err(format!("{kind} {name} has no `{}`", path.join(".")));
    }
    let flow = is_flow(text, index, path);
    let at: Vec<&str> = path.iter().copied().chain([key]).collect();
    let mut out = text.to_string();
    match (index.get(&at), value) {
        (Some(place), Some(v)) => out.replace_range(place.value_bytes.clone(), &scalar(v)),
        (Some(place), None) => {
            let key_at = offset(text, place.key.ok_or("a key without a place")?);
            let cut = if flow {
                // The entry and the comma that separates it from its neighbour.
                let before = text[..key_at].trim_end();
                match before.strip_suffix(',') {
                    Some(rest) => rest.len()..place.value_bytes.end,
                    None => {
                        let rest = &text[place.value_bytes.end..];
                        let skip = rest.len() - rest.trim_start().len();
                        match rest.trim_start().strip_prefix(',') {
                            Some(after_comma) => {
                                let end = text.len() - after_comma.trim_start().len();
                                key_at..end
                            }
                            None => key_at..place.value_bytes.end + skip,
                        }
                    }
                }
            } else {
                line_of(text, key_at)
            };
            out.replace_range(cut, "");
        }
        (None, Some(v)) => {
            let anchor_path: Vec<&str> = path.iter().copied().chain([after]).collect();
            let anchor = index
                .get(&anchor_path)
                .ok_or_else(|| format!("{kind} {name} has no `{}`", anchor_path.join(".")))?;
            if flow {
                out.insert_str(anchor.value_bytes.end, &format!(", {key}: {}", scalar(v)));
            } else {
                let anchor_key = anchor.key.ok_or("a key without a place")?;
                let indent = " ".repeat(anchor_key.column.saturating_sub(1) as usize);
                let line = line_of(text, anchor.value_bytes.end.saturating_sub(1));
                let entry = format!("{indent}{key}: {}\n", scalar(v));
                if line.end == text.len() && !text.ends_with('\n') {
                    out.push('\n');
                    out.push_str(entry.trim_end_matches('\n'));
                } else {
                    out.insert_str(line.end, &entry);
                }
            }
        }
        (None, None) => {}
    }
    Ok(out)
}

/// Pins `service` (or `gateway`) of sandbox `name` to `commit`, or unpins it (`None`).
pub fn pin(text: &str, name: &str, service: &str, commit: Option<&str>) -> Result<String, String> {
    set_key(
        text,
        Kind::Sandbox,
        name,
        &container_path(service),
        "commit",
        commit,
        "branch",
    )
}

/// A container's branch and pin.
type At<'a> = (&'a str, Option<&'a String>);

/// Writes a snapshot's branches and pins into sandbox `name`'s file: each container the snapshot and the sandbox
/// share gets the snapshot's branch and commit (a container the snapshot does not pin is unpinned). Also says
/// what it left alone.
pub fn rollback(
    text: &str,
    name: &str,
    current: &Sandbox,
    snapshot: &Sandbox,
) -> Result<(String, Vec<String>), String> {
    let mut out = text.to_string();
    let mut notes = Vec::new();
    // Each container both have: (service, its branch and pin now, the snapshot's).
    let mut pairs: Vec<(&str, At, At)> = vec![(
        GATEWAY,
        (&current.spec.gateway.branch, current.spec.gateway.commit.as_ref()),
        (&snapshot.spec.gateway.branch, snapshot.spec.gateway.commit.as_ref()),
    )];
    for (svc, spec) in &current.spec.services {
        match snapshot.spec.services.get(svc) {
            Some(then) => pairs.push((
                svc,
                (&spec.branch, spec.commit.as_ref()),
                (&then.branch, then.commit.as_ref()),
            )),
            None => notes.push(format!(
                "service {svc} is not in snapshot {}: left as it is",
                snapshot.metadata.name
            )),
        }
    }
    for svc in snapshot.spec.services.keys() {
        if !current.spec.services.contains_key(svc) {
            notes.push(format!(
                "service {svc} of snapshot {} is not in sandbox {name}: not added",
                snapshot.metadata.name
            ));
        }
    }
    for (svc, (branch, commit), (then_branch, then_commit)) in pairs {
        if branch != then_branch {
            out = set_key(
                &out,
                Kind::Sandbox,
                name,
                &container_path(svc),
                "branch",
                Some(then_branch),
                "branch",
            )?;
        }
        if commit != then_commit {
            out = pin(&out, name, svc, then_commit.map(String::as_str))?;
        }
    }
    Ok((out, notes))
}

/// A snapshot of `sandbox` as template `name`: its branches, environments, env, routes, build and resources as
/// committed, each container pinned to the commit in `deployed` (by service, `gateway` for the gateway). Ports are
/// left out (a template never claims one: each sandbox made from it gets its own), and so are restart stamps and
/// `suspend`.
pub fn snapshot(
    sandbox: &Sandbox,
    name: &str,
    deployed: &BTreeMap<String, String>,
    taken: &str,
) -> Result<String, String> {
    let mut t = sandbox.clone();
    t.kind = Kind::SandboxTemplate;
    let owner = sandbox.metadata.owner.clone();
    let annotations: BTreeMap<String, String> = sandbox
        .metadata
        .annotations
        .iter()
        .filter(|(k, _)| !k.starts_with(crate::desired::RESTART_ANNOTATION))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    t.metadata = Metadata {
        name: name.to_string(),
        owner,
        annotations,
    };
    t.spec.suspend = false;
    let pinned = |service: &str| {
        deployed
            .get(service)
            .cloned()
            .ok_or_else(|| format!("{service} of sandbox {} has no deployed commit", sandbox.metadata.name))
    };
    t.spec.gateway.port = None;
    t.spec.gateway.commit = Some(pinned(GATEWAY)?);
    for (svc, spec) in t.spec.services.iter_mut() {
        spec.port = None;
        spec.commit = Some(pinned(svc)?);
    }
    let yaml = serde_saphyr::to_string(&t).map_err(|e| format!("cannot write the snapshot: {e}"))?;
    Ok(format!(
        "# Snapshot of sandbox {} {taken}: every container pinned to the commit it ran.\n\
         # Recreate it with `sdp new sandbox NAME --from-template {name}`, or go back to it with\n\
         # `sdp rollback {} --to {name}`.\n{yaml}",
        sandbox.metadata.name, sandbox.metadata.name
    ))
}

/// The text of sandbox `dst`, a copy of the document `source` of another sandbox: the name changed and every
/// explicit port dropped (the reconciler allocates new ones), everything else as written.
pub fn clone(source: &Source, src: &str, dst: &str) -> Result<String, String> {
    let mut text = source.text.clone();
    // The document alone, without the marker that separated it from the one before.
    if let Some(rest) = text.strip_prefix("---\n") {
        text = rest.to_string();
    }
    let doc = document(&text, Kind::Sandbox, src)?;
    let name_at = doc
        .index
        .get(&["metadata", "name"])
        .ok_or("the sandbox has no metadata.name")?
        .value_bytes
        .clone();
    text.replace_range(name_at, &scalar(dst));
    let current = {
        let (parsed, _) = sdp_manifest::parse_str(Path::new("clone.yaml"), &text);
        match parsed.into_iter().next() {
            Some(sdp_manifest::Parsed::Sandbox(o)) => o.value,
            _ => return Err(format!("the copy of {src} cannot be read")),
        }
    };
    if current.spec.gateway.port.is_some() {
        text = set_key(&text, Kind::Sandbox, dst, &["spec", "gateway"], "port", None, "branch")?;
    }
    for (svc, spec) in &current.spec.services {
        if spec.port.is_some() {
            text = set_key(
                &text,
                Kind::Sandbox,
                dst,
                &["spec", "services", svc],
                "port",
                None,
                "branch",
            )?;
        }
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    const BLOCK: &str = "# keep me\napiVersion: sdp/v1\nkind: Sandbox\nmetadata:\n  name: a\nspec:\n  gateway:\n    branch: develop   # gw\n    port: 8081\n  services:\n    account:\n      branch: feature/x  # the fix\n      port: 9001\n    payment: {branch: main, port: 9002}\n";
    const PIN: &str = "0123456789abcdef0123456789abcdef01234567";

    fn sandbox(text: &str, name: &str) -> Sandbox {
        let (parsed, problems) = sdp_manifest::parse_str(Path::new("t.yaml"), text);
        assert!(problems.is_empty(), "{problems:?}\n{text}");
        parsed
            .into_iter()
            .find_map(|p| match p {
                sdp_manifest::Parsed::Sandbox(o) | sdp_manifest::Parsed::Template(o)
                    if o.value.metadata.name == name =>
                {
                    Some(o.value)
                }
                _ => None,
            })
            .unwrap()
    }

    #[test]
    fn a_pin_is_one_line_after_the_branch_or_one_flow_entry_and_unpinning_takes_exactly_it_away() {
        let pinned = pin(BLOCK, "a", "account", Some(PIN)).unwrap();
        assert_eq!(
            pinned,
            BLOCK.replace(
                "      branch: feature/x  # the fix\n",
                &format!("      branch: feature/x  # the fix\n      commit: {PIN}\n")
            )
        );
        assert_eq!(
            sandbox(&pinned, "a").spec.services["account"].commit.as_deref(),
            Some(PIN)
        );
        // Again with another commit: the value is replaced where it is.
        let other = "fedcba9876543210fedcba9876543210fedcba98";
        let repinned = pin(&pinned, "a", "account", Some(other)).unwrap();
        assert_eq!(repinned, pinned.replace(PIN, other));
        assert_eq!(pin(&pinned, "a", "account", None).unwrap(), BLOCK);

        let flow = pin(BLOCK, "a", "payment", Some(PIN)).unwrap();
        assert_eq!(
            flow,
            BLOCK.replace(
                "{branch: main, port: 9002}",
                &format!("{{branch: main, commit: {PIN}, port: 9002}}")
            )
        );
        assert_eq!(pin(&flow, "a", "payment", None).unwrap(), BLOCK);
        // A pin that is the last entry of a flow mapping goes with its comma.
        let last = BLOCK.replace(
            "{branch: main, port: 9002}",
            &format!("{{port: 9002, branch: main, commit: {PIN}}}"),
        );
        assert_eq!(
            pin(&last, "a", "payment", None).unwrap(),
            BLOCK.replace("{branch: main, port: 9002}", "{port: 9002, branch: main}")
        );
        let first = BLOCK.replace(
            "{branch: main, port: 9002}",
            &format!("{{commit: {PIN}, branch: main}}"),
        );
        assert_eq!(
            pin(&first, "a", "payment", None).unwrap(),
            BLOCK.replace("{branch: main, port: 9002}", "{branch: main}")
        );

        let gateway = pin(BLOCK, "a", GATEWAY, Some(PIN)).unwrap();
        assert!(gateway.contains(&format!(
            "    branch: develop   # gw\n    commit: {PIN}\n    port: 8081\n"
        )));
        assert_eq!(sandbox(&gateway, "a").spec.gateway.commit.as_deref(), Some(PIN));

        let err = pin(BLOCK, "a", "nope", Some(PIN)).unwrap_err();
        assert!(err.contains("has no `spec.services.nope`"), "{err}");
        // Unpinning what is not pinned changes nothing.
        assert_eq!(pin(BLOCK, "a", "account", None).unwrap(), BLOCK);
    }

    #[test]
    fn a_commit_id_that_yaml_would_read_as_a_number_is_quoted() {
        let digits = "1234567890123456789012345678901234567890";
        let float = "1234567890e12345678901234567890123456789";
        for id in [digits, float] {
            let text = pin(BLOCK, "a", "account", Some(id)).unwrap();
            assert!(text.contains(&format!("commit: \"{id}\"")), "{text}");
            assert_eq!(sandbox(&text, "a").spec.services["account"].commit.as_deref(), Some(id));
        }
    }

    #[test]
    fn a_pin_in_a_file_of_several_documents_touches_only_its_own() {
        let two = format!(
            "{BLOCK}---\n{}",
            BLOCK.replace("name: a", "name: b").replace("# keep me\n", "")
        );
        let pinned = pin(&two, "b", "account", Some(PIN)).unwrap();
        let (first, second) = pinned.split_once("---\n").unwrap();
        assert_eq!(first, BLOCK);
        assert!(
            second.contains(&format!("# the fix\n      commit: {PIN}\n")),
            "{second}"
        );
        // The last line without a newline.
        let bare = "apiVersion: sdp/v1\nkind: Sandbox\nmetadata: {name: c}\nspec:\n  gateway:\n    branch: main";
        assert_eq!(
            pin(bare, "c", GATEWAY, Some(PIN)).unwrap(),
            format!("{bare}\n    commit: {PIN}")
        );
    }

    #[test]
    fn a_rollback_writes_the_snapshots_branches_and_pins_and_says_what_it_left() {
        let current = sandbox(BLOCK, "a");
        let mut then = current.clone();
        then.metadata.name = "before".into();
        then.spec.gateway.commit = Some(PIN.into());
        let account = then.spec.services.get_mut("account").unwrap();
        account.commit = Some(PIN.into());
        account.branch = "feature/old".into();
        then.spec.services.remove("payment");
        let (text, notes) = rollback(BLOCK, "a", &current, &then).unwrap();
        assert_eq!(
            text,
            BLOCK
                .replace("develop   # gw\n", &format!("develop   # gw\n    commit: {PIN}\n"))
                .replace(
                    "feature/x  # the fix\n",
                    &format!("feature/old  # the fix\n      commit: {PIN}\n")
                )
        );
        assert_eq!(notes, ["service payment is not in snapshot before: left as it is"]);
    }

    #[test]
    fn a_snapshot_pins_what_runs_and_claims_no_port() {
        let current = sandbox(BLOCK, "a");
        let deployed: BTreeMap<String, String> = [("account", PIN), ("payment", PIN), (GATEWAY, PIN)]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let text = snapshot(&current, "a-before", &deployed, "at 2026-11-25T10:00:00Z").unwrap();
        let t = sandbox(&text, "a-before");
        assert_eq!(t.kind, Kind::SandboxTemplate);
        assert_eq!(t.spec.gateway.commit.as_deref(), Some(PIN));
        assert!(
            t.spec
                .services
                .values()
                .all(|s| s.port.is_none() && s.commit.as_deref() == Some(PIN))
        );
        assert_eq!(t.spec.services["account"].branch, "feature/x");
        let missing = snapshot(&current, "x", &BTreeMap::new(), "now").unwrap_err();
        assert!(missing.contains("has no deployed commit"), "{missing}");
    }

    #[test]
    fn a_clone_drops_explicit_ports_and_keeps_everything_else() {
        let (parsed, _) = sdp_manifest::parse_str(Path::new("t.yaml"), BLOCK);
        let text = clone(parsed[0].source(), "a", "b").unwrap();
        assert_eq!(
            text,
            BLOCK
                .replace("name: a", "name: b")
                .replace("    port: 8081\n", "")
                .replace("      port: 9001\n", "")
                .replace("{branch: main, port: 9002}", "{branch: main}")
        );
    }
}
