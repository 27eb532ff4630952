//! SandboxSets: a sandbox per branch. From the sets and templates of a snapshot and the branches the agents last
//! listed, the sandboxes the sets make, which compile then treats like the repo's own. Pure: the reconciler and
//! `sdp plan` (with the branch lists from `/api/v1/actual`) make the same ones.
//!
//! - A set's branches are the names of its service's repository that match its pattern, taken in name order
//!   (byte order, so the same list always gives the same sandboxes); past the cap, a branch is skipped with the
//!   reason, as is one whose name is taken.
//! - A sandbox is the template with the set's service on the branch (unpinned), named `<prefix>-<slug>`, with
//!   annotations `sdp/generatedBy` and `sdp/branch`, and `expireAfter` from the set (none with `keepIdle`).
//! - A repository whose branches were never listed makes nothing yet; the last list is kept when listing fails,
//!   so an error never removes a sandbox.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use sdp_manifest::rules::{self, MAX_NAME_LEN};
use sdp_manifest::{Kind, Sandbox, SandboxSet};
use serde::{Deserialize, Serialize};

/// Annotation of a generated sandbox: the set that made it.
pub const GENERATED_BY: &str = "sdp/generatedBy";
/// Annotation of a generated sandbox: the branch it was made for.
pub const BRANCH: &str = "sdp/branch";

/// Branch names by repository (the service's name), as the agents last listed them.
pub type Branches = BTreeMap<String, Vec<String>>;

/// A branch that matches a set's pattern but has no sandbox.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Skipped {
    pub set: String,
    pub branch: String,
    pub reason: String,
}

/// What the sets make.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Generated {
    /// The sandboxes, by set then branch name.
    pub sandboxes: Vec<Arc<Sandbox>>,
    pub skipped: Vec<Skipped>,
    /// Sets that make nothing now, and why (their repository's branches were never listed).
    pub waiting: BTreeMap<String, String>,
}

/// Whether `branch` matches `pattern`, where `*` stands for any characters (none included, `/` included).
pub fn matches(pattern: &str, branch: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    let [first, middle @ .., last] = parts.as_slice() else {
        return pattern == branch;
    };
    if parts.len() == 1 {
        return pattern == branch;
    }
    let Some(mut rest) = branch.strip_prefix(first) else {
        return false;
    };
    for part in middle {
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

/// The name of the sandbox a set with `prefix` and `pattern` makes for `branch`: `<prefix>-<slug>`, where the
/// slug is the branch without the pattern's text before its first `*` (`feature/login` of `feature/*` gives
/// `login`). When the slug is not that text exactly (upper case, `/`, `_`, `--`…) or the name would pass 40
/// characters, the slug is cut to fit and followed by `--` and 8 hex digits of a hash of the whole branch name:
/// a name without a hash never holds `--` after the prefix, so the two forms never meet, and the hash keeps
/// branches that slug alike apart. Always a DNS label of at most 40 characters when `prefix` is one of at most
/// 24; the same for the same input.
pub fn sandbox_name(prefix: &str, pattern: &str, branch: &str) -> String {
    let literal = pattern.split('*').next().unwrap_or("");
    let rest = match branch.strip_prefix(literal) {
        Some(rest) if pattern.contains('*') && !rest.is_empty() => rest,
        _ => branch,
    };
    let slug = slug(rest);
    let plain = format!("{prefix}-{slug}");
    if slug == rest && !slug.is_empty() && plain.len() <= MAX_NAME_LEN {
        return plain;
    }
    let hash = format!("{:08x}", fnv32(branch));
    let room = MAX_NAME_LEN.saturating_sub(prefix.len() + 1 + 2 + hash.len());
    let cut = slug[..slug.len().min(room)].trim_end_matches('-');
    if cut.is_empty() {
        format!("{prefix}--{hash}")
    } else {
        format!("{prefix}-{cut}--{hash}")
    }
}

/// Lowercase ASCII letters and digits kept, every other run of characters one `-`, none at either end.
fn slug(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_ascii_alphanumeric() {
            out.push(c.to_ascii_lowercase());
        } else if !out.is_empty() && !out.ends_with('-') {
            out.push('-');
        }
    }
    out.trim_end_matches('-').to_string()
}

/// FNV-1a, 32 bits: written out so that names stay the same across Rust releases.
fn fnv32(text: &str) -> u32 {
    text.bytes()
        .fold(0x811c_9dc5_u32, |h, b| (h ^ u32::from(b)).wrapping_mul(0x0100_0193))
}

/// The sandboxes `sets` make from `templates` with the branches `branches` lists; `repo` are the config repo's
/// own sandboxes, whose names a set never takes.
pub fn generate(sets: &[SandboxSet], templates: &[Sandbox], branches: &Branches, repo: &[Arc<Sandbox>]) -> Generated {
    let mut out = Generated::default();
    let mut taken: BTreeSet<String> = repo.iter().map(|s| s.metadata.name.clone()).collect();
    let mut sets: Vec<&SandboxSet> = sets.iter().collect();
    sets.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    for set in sets {
        let set_name = &set.metadata.name;
        let spec = &set.spec;
        let Some(template) = templates.iter().find(|t| t.metadata.name == spec.template) else {
            out.waiting.insert(
                set_name.clone(),
                format!("template {} is not in the config repo", spec.template),
            );
            continue;
        };
        let Some(listed) = branches.get(&spec.service) else {
            out.waiting.insert(
                set_name.clone(),
                format!("the branches of {} have not been listed yet", spec.service),
            );
            continue;
        };
        let matching: BTreeSet<&str> = listed
            .iter()
            .map(String::as_str)
            .filter(|b| matches(&spec.branches, b))
            .collect();
        let mut made = 0;
        for branch in matching {
            let skip = |reason: String| Skipped {
                set: set_name.clone(),
                branch: branch.to_string(),
                reason,
            };
            if let Err(e) = rules::branch(branch) {
                out.skipped.push(skip(e.message));
                continue;
            }
            let name = sandbox_name(set.name_prefix(), &spec.branches, branch);
            if taken.contains(&name) {
                out.skipped
                    .push(skip(format!("sandbox name {name} is taken by another sandbox")));
                continue;
            }
            if made >= set.max() {
                out.skipped.push(skip(format!(
                    "over the cap of {} sandboxes (max): branches are taken in name order",
                    set.max()
                )));
                continue;
            }
            made += 1;
            taken.insert(name.clone());
            out.sandboxes
                .push(Arc::new(from_template(set, template, &name, branch)));
        }
    }
    out
}

/// The template as a sandbox named `name`, with the set's service on `branch`.
fn from_template(set: &SandboxSet, template: &Sandbox, name: &str, branch: &str) -> Sandbox {
    let mut sb = template.clone();
    sb.kind = Kind::Sandbox;
    sb.metadata.name = name.to_string();
    if set.metadata.owner.is_some() {
        sb.metadata.owner = set.metadata.owner.clone();
    }
    let annotations = &mut sb.metadata.annotations;
    annotations.insert(GENERATED_BY.to_string(), set.metadata.name.clone());
    annotations.insert(BRANCH.to_string(), branch.to_string());
    if let Some(service) = sb.spec.services.get_mut(&set.spec.service) {
        service.branch = branch.to_string();
        service.commit = None;
    }
    sb.spec.expire_after = if set.spec.keep_idle {
        None
    } else {
        set.spec.expire_after.clone().or(sb.spec.expire_after)
    };
    sb
}

/// The set that made `sandbox`, when a set did.
pub fn generated_by(sandbox: &Sandbox) -> Option<&str> {
    sandbox.metadata.annotations.get(GENERATED_BY).map(String::as_str)
}

/// The config repo's sandboxes followed by the generated ones: what compile reads.
pub fn with_generated(repo: &[Arc<Sandbox>], generated: &Generated) -> Vec<Arc<Sandbox>> {
    repo.iter().chain(&generated.sandboxes).cloned().collect()
}

/// The repositories whose branches the sets need.
pub fn repositories(sets: &[SandboxSet]) -> BTreeSet<String> {
    sets.iter().map(|s| s.spec.service.clone()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn star_matches_any_run_of_characters() {
        assert!(matches("feature/*", "feature/a"));
        assert!(matches("feature/*", "feature/a/b"));
        assert!(matches("feature/*", "feature/"));
        assert!(!matches("feature/*", "features/a"));
        assert!(!matches("feature/*", "xfeature/a"));
        assert!(matches("*-rc", "release-1-rc"));
        assert!(matches("a*b*c", "abc"));
        assert!(!matches("a*b*c", "acb"));
        assert!(matches("main", "main"));
        assert!(!matches("main", "main2"));
        assert!(matches("*", "anything/at/all"));
    }
}
