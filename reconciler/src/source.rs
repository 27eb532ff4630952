//! The config repo as the reconciler sees it: the committed content at HEAD, read into a snapshot.
//!
//! A local path is read in place (only what is committed counts: work-tree edits are ignored); a URL is mirrored
//! into the data dir and fetched. When a sandbox's file becomes invalid, the sandbox keeps its last valid spec and
//! carries the error, so a typo never takes a running sandbox down.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Result;
use sdp_manifest::{Environment, Kind, Problem, Sandbox, SandboxSet};

use crate::change::RepoState;
use crate::git::{Change, Git};

/// Where the config repo is.
#[derive(Clone, Debug)]
pub enum Origin {
    Local(PathBuf),
    /// A remote URL and the bare mirror kept of it.
    Remote {
        url: String,
        mirror: PathBuf,
    },
}

impl Origin {
    /// `PATH_OR_URL` as given to `sdp serve --repo`.
    pub fn parse(repo: &str, data: &Path) -> Origin {
        let is_url = repo.contains("://") || (repo.contains('@') && repo.contains(':') && !Path::new(repo).exists());
        if is_url {
            Origin::Remote {
                url: repo.to_string(),
                mirror: data.join("config.git"),
            }
        } else {
            Origin::Local(PathBuf::from(repo))
        }
    }

    /// What to show users: a URL without any credentials in it.
    pub fn display(&self) -> String {
        match self {
            Origin::Local(p) => p.display().to_string(),
            Origin::Remote { url, .. } => redact_url(url),
        }
    }
}

/// A URL's scheme, userinfo (when there is one), host and path (after the first `/`, when there is one).
fn url_parts(url: &str) -> Option<(&str, Option<&str>, &str, Option<&str>)> {
    let (scheme, rest) = url.split_once("://")?;
    let (authority, path) = rest.split_once('/').map_or((rest, None), |(a, p)| (a, Some(p)));
    let (userinfo, host) = authority
        .rsplit_once('@')
        .map_or((None, authority), |(u, h)| (Some(u), h));
    Some((scheme, userinfo, host, path))
}

fn join_url(scheme: &str, userinfo: Option<&str>, host: &str, path: Option<&str>) -> String {
    let userinfo = userinfo.map(|u| format!("{u}@")).unwrap_or_default();
    let path = path.map(|p| format!("/{p}")).unwrap_or_default();
    format!("{scheme}://{userinfo}{host}{path}")
}

/// `https://user:secret@host/x` → `https://user:***@host/x`.
pub fn redact_url(url: &str) -> String {
    match url_parts(url) {
        Some((scheme, Some(userinfo), host, path)) => {
            let user = userinfo.split(':').next().unwrap_or("");
            join_url(scheme, Some(&format!("{user}:***")), host, path)
        }
        _ => url.to_string(),
    }
}

/// `https://user:secret@host/x` → `https://host/x`: a URL that carries no one's credentials.
pub fn without_userinfo(url: &str) -> String {
    match url_parts(url) {
        Some((scheme, _, host, path)) => join_url(scheme, None, host, path),
        None => url.to_string(),
    }
}

/// The config repo at one commit.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub commit: String,
    pub author: String,
    /// Commit time, unix seconds.
    pub time: u64,
    /// The sandboxes to run: the valid ones, and the broken ones at their last valid spec. A sandbox whose spec is
    /// the same as in the previous snapshot is the same `Arc`, so that compile sees at a glance what did not change.
    pub sandboxes: Vec<Arc<Sandbox>>,
    pub environments: Vec<Environment>,
    /// The SandboxSets and the templates they make sandboxes from (a broken one at its last valid spec, so that a
    /// typo never takes its sandboxes down).
    pub sets: Vec<SandboxSet>,
    pub templates: Vec<Sandbox>,
    /// Each sandbox's document as committed (its last valid one when it is broken now).
    pub manifests: BTreeMap<String, Manifest>,
    /// Problems of each sandbox, as `file:line:column: message`. A sandbox listed here and in `sandboxes` runs
    /// its last valid spec; one listed only here never had a valid one.
    pub errors: BTreeMap<String, Vec<String>>,
    /// Every problem in the repo.
    pub problems: Vec<Problem>,
    /// The last commit that changed each sandbox's file, by sandbox name.
    pub changes: BTreeMap<String, Change>,
}

/// A sandbox's document as committed, kept deflated: it is read only when a page or `sdp get` shows that sandbox,
/// and 1,000 sandboxes' documents are a megabyte of YAML held for it (a fifth of that deflated). Shared with the
/// snapshot before when the text is the same.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Manifest(Arc<[u8]>);

impl Manifest {
    pub fn new(text: &str) -> Manifest {
        use std::io::Write;
        let mut deflated = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
        deflated
            .write_all(text.as_bytes())
            .expect("writing to a Vec cannot fail");
        Manifest(deflated.finish().expect("writing to a Vec cannot fail").into())
    }

    /// The document's text.
    pub fn text(&self) -> String {
        use std::io::Read;
        let mut text = String::new();
        flate2::read::DeflateDecoder::new(&self.0[..])
            .read_to_string(&mut text)
            .expect("what `new` deflated inflates to the text it was");
        text
    }

    /// Whether the document's text is `text`.
    pub fn is(&self, text: &str) -> bool {
        self.text() == text
    }

    /// The bytes it holds.
    pub fn deflated_len(&self) -> usize {
        self.0.len()
    }
}

/// Reads snapshots, remembering the last valid spec of every object.
pub struct Source {
    origin: Origin,
    /// The last snapshot, shared with the controller that runs it (1,000 sandboxes are about 10 MB parsed: one
    /// copy, not two).
    last: Option<Arc<Snapshot>>,
    /// File each sandbox and environment was last read from, to tell a broken file from a deleted object.
    files_of: BTreeMap<(Kind, String), PathBuf>,
    /// The last commit that changed each file, brought up to date from the commits since the last snapshot.
    changed: BTreeMap<PathBuf, Change>,
}

impl Source {
    pub fn new(origin: Origin) -> Source {
        Source {
            origin,
            last: None,
            files_of: BTreeMap::new(),
            changed: BTreeMap::new(),
        }
    }

    pub fn origin(&self) -> &Origin {
        &self.origin
    }

    /// A local clone with an upstream: fetch it and fast-forward (see `Git::follow_upstream`). Blocking. A remote
    /// origin is fetched by `refresh` itself.
    pub fn follow_upstream(&self) -> Result<()> {
        match &self.origin {
            Origin::Local(path) => Git::open(path)?.follow_upstream(),
            Origin::Remote { .. } => Ok(()),
        }
    }

    /// Fetches (for a remote) and reads HEAD. `None` when HEAD has not moved since the last snapshot. Blocking:
    /// run it off the async threads.
    pub fn refresh(&mut self) -> Result<Option<Arc<Snapshot>>> {
        let git = match &self.origin {
            Origin::Local(path) => Git::open(path)?,
            Origin::Remote { url, mirror } => Git::mirror(url, mirror).map_err(|e| {
                // git may echo the URL; never show its password.
                anyhow::anyhow!(
                    "{}",
                    sdp_protocol::scrub(&e.to_string().replace(url.as_str(), &redact_url(url)))
                )
            })?,
        };
        let (commit, author, time) = git.head_commit()?.unwrap_or_default();
        if self.last.as_ref().is_some_and(|l| l.commit == commit) {
            return Ok(None);
        }
        let folders: Vec<&str> = Kind::ALL.iter().map(|k| k.folder()).collect();
        // The files and history of that commit, by its id: HEAD may move meanwhile (a commit being made, a
        // rebase), and a snapshot is one commit's, never one commit's id with the next one's files.
        let files = match commit.as_str() {
            "" => Vec::new(),
            commit => git.files_at(commit, &folders)?,
        };
        let files: BTreeMap<PathBuf, String> = files
            .into_iter()
            .filter(|(rel, _)| matches!(rel.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")))
            .map(|(rel, bytes)| (rel, String::from_utf8_lossy(&bytes).into_owned()))
            .collect();
        // Who last changed each file: the whole history once, then the commits since the last snapshot. Without
        // it the dashboard shows HEAD's commit; it is never a reason to refuse the new specs.
        let since = self.last.as_ref().map(|l| l.commit.clone()).filter(|c| !c.is_empty());
        let changes = match commit.as_str() {
            "" => Ok(Vec::new()),
            until => git.changes(since.as_deref(), until, &folders),
        };
        match changes {
            Ok(commits) => {
                for (change, paths) in commits {
                    for path in paths {
                        self.changed.insert(path, change.clone());
                    }
                }
            }
            Err(e) => tracing::warn!("cannot read who changed which sandbox: {e:#}"),
        }
        let present: Vec<PathBuf> = files.keys().cloned().collect();
        self.changed.retain(|path, _| present.binary_search(path).is_ok());
        let mut snapshot = self.read(commit, author, time, files);
        for sb in &snapshot.sandboxes {
            let name = &sb.metadata.name;
            if let Some(change) = self
                .files_of
                .get(&(Kind::Sandbox, name.clone()))
                .and_then(|f| self.changed.get(f))
            {
                snapshot.changes.insert(name.clone(), change.clone());
            }
        }
        let snapshot = Arc::new(snapshot);
        self.last = Some(snapshot.clone());
        Ok(Some(snapshot))
    }

    /// Builds a snapshot from files at a commit; pure apart from what it remembers of the previous one.
    pub fn read(&mut self, commit: String, author: String, time: u64, files: BTreeMap<PathBuf, String>) -> Snapshot {
        let state = RepoState::new(files, Path::new(""));
        let set = &state.set;
        let mut snap = Snapshot {
            commit,
            author,
            time,
            problems: set.problems.clone(),
            ..Snapshot::default()
        };
        let previous = self.last.take().unwrap_or_default();

        // Problems by the object they belong to, and by file for those that belong to none (a YAML error).
        let mut by_object: BTreeMap<(Kind, String), Vec<String>> = BTreeMap::new();
        let mut by_file: BTreeMap<PathBuf, Vec<String>> = BTreeMap::new();
        for p in &set.problems {
            let text = p.to_string().lines().next().unwrap_or_default().to_string();
            match &p.object {
                Some(o) => by_object.entry((o.kind, o.name.clone())).or_default().push(text),
                None => by_file.entry(p.file.clone()).or_default().push(text),
            }
        }
        let broken = |kind: Kind, name: &str, files_of: &BTreeMap<(Kind, String), PathBuf>| -> Vec<String> {
            let mut out = by_object.get(&(kind, name.to_string())).cloned().unwrap_or_default();
            if let Some(file) = files_of.get(&(kind, name.to_string())) {
                out.extend(by_file.get(file).cloned().unwrap_or_default());
            }
            out
        };

        let mut files_of = BTreeMap::new();
        let before: BTreeMap<&str, &Arc<Sandbox>> = previous
            .sandboxes
            .iter()
            .map(|sb| (sb.metadata.name.as_str(), sb))
            .collect();
        for o in &set.sandboxes {
            let name = o.value.metadata.name.clone();
            files_of.insert((Kind::Sandbox, name.clone()), o.source.file.clone());
            let kept = previous.manifests.get(&name).filter(|m| m.is(&o.source.text));
            snap.manifests.insert(
                name.clone(),
                kept.map_or_else(|| Manifest::new(&o.source.text), Manifest::clone),
            );
            let same = before.get(name.as_str()).filter(|sb| sb.as_ref() == &o.value);
            snap.sandboxes
                .push(same.map_or_else(|| Arc::new(o.value.clone()), |sb| Arc::clone(sb)));
        }
        for o in &set.environments {
            files_of.insert(
                (Kind::Environment, o.value.metadata.name.clone()),
                o.source.file.clone(),
            );
            snap.environments.push(o.value.clone());
        }
        // Sandboxes and environments that were valid and are broken now keep their last valid spec.
        for sb in &previous.sandboxes {
            let name = &sb.metadata.name;
            if files_of.contains_key(&(Kind::Sandbox, name.clone())) {
                continue;
            }
            let errors = broken(Kind::Sandbox, name, &self.files_of);
            if !errors.is_empty() {
                if let Some(file) = self.files_of.get(&(Kind::Sandbox, name.clone())) {
                    files_of.insert((Kind::Sandbox, name.clone()), file.clone());
                }
                if let Some(text) = previous.manifests.get(name) {
                    snap.manifests.insert(name.clone(), text.clone());
                }
                snap.sandboxes.push(sb.clone());
                snap.errors.insert(name.clone(), errors);
            }
        }
        for env in &previous.environments {
            let name = &env.metadata.name;
            if files_of.contains_key(&(Kind::Environment, name.clone())) {
                continue;
            }
            if !broken(Kind::Environment, name, &self.files_of).is_empty() {
                if let Some(file) = self.files_of.get(&(Kind::Environment, name.clone())) {
                    files_of.insert((Kind::Environment, name.clone()), file.clone());
                }
                snap.environments.push(env.clone());
            }
        }
        for o in &set.templates {
            files_of.insert(
                (Kind::SandboxTemplate, o.value.metadata.name.clone()),
                o.source.file.clone(),
            );
            snap.templates.push(o.value.clone());
        }
        for o in &set.sets {
            files_of.insert((Kind::SandboxSet, o.value.metadata.name.clone()), o.source.file.clone());
            snap.sets.push(o.value.clone());
        }
        // A broken template or set keeps its last valid spec, as an environment does.
        for t in &previous.templates {
            let key = (Kind::SandboxTemplate, t.metadata.name.clone());
            if !files_of.contains_key(&key) && !broken(key.0, &key.1, &self.files_of).is_empty() {
                if let Some(file) = self.files_of.get(&key) {
                    files_of.insert(key.clone(), file.clone());
                }
                snap.templates.push(t.clone());
            }
        }
        for s in &previous.sets {
            let key = (Kind::SandboxSet, s.metadata.name.clone());
            if !files_of.contains_key(&key) && !broken(key.0, &key.1, &self.files_of).is_empty() {
                if let Some(file) = self.files_of.get(&key) {
                    files_of.insert(key.clone(), file.clone());
                }
                snap.sets.push(s.clone());
            }
        }
        // A template deleted while a set still names it is kept too: the set is refused, not its sandboxes.
        for s in &snap.sets {
            let name = &s.spec.template;
            if snap.templates.iter().any(|t| &t.metadata.name == name) {
                continue;
            }
            if let Some(t) = previous.templates.iter().find(|t| &t.metadata.name == name) {
                snap.templates.push(t.clone());
            }
        }
        // Sandboxes that never had a valid spec still show their problems.
        for ((kind, name), errors) in &by_object {
            if *kind == Kind::Sandbox && !snap.errors.contains_key(name) {
                snap.errors.insert(name.clone(), errors.clone());
            }
        }
        self.files_of = files_of;
        snap
    }
}

#[cfg(test)]
mod tests {
    use super::Manifest;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn a_manifest_gives_back_the_text_it_was_made_of(text in "\\PC*") {
            let kept = Manifest::new(&text);
            prop_assert_eq!(kept.text(), text.clone());
            prop_assert!(kept.is(&text));
            let other = format!("{text}#");
            prop_assert!(!kept.is(&other));
        }
    }

    #[test]
    fn a_manifest_is_held_in_a_fraction_of_its_text() {
        let mut text =
            String::from("apiVersion: sdp/v1\nkind: Sandbox\nmetadata:\n  name: qa-login\nspec:\n  services:\n");
        for svc in 0..10 {
            text.push_str(&format!(
                "    svc{svc}:\n      branch: feature/login-error\n      environments: [shared-dev]\n      env: {{ LOG_LEVEL: debug }}\n"
            ));
        }
        let kept = Manifest::new(&text);
        assert_eq!(kept.text(), text);
        assert!(
            kept.deflated_len() * 4 < text.len(),
            "{} bytes of {}",
            kept.deflated_len(),
            text.len()
        );
    }
}
