//! A config repo, or a set of files, read as a whole: every object, and every problem within and across files.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use crate::load::{self, MAX_FILE_BYTES, Object, Parsed, Source};
use crate::locate::Pos;
use crate::model::{Environment, Kind, Sandbox, SandboxSet};
use crate::problem::{ObjectRef, Problem};

/// One file to read, with the kind its folder is meant for when it comes from a config repo's layout.
#[derive(Clone, Debug)]
pub struct InputFile {
    /// The path shown in problems (relative to where the user stands, when possible).
    pub label: PathBuf,
    /// `Some(kind)` when the file sits in that kind's folder of a config repo.
    pub folder: Option<Kind>,
    pub text: String,
}

/// Everything read from a config repo or a set of files.
#[derive(Clone, Debug, Default)]
pub struct ConfigSet {
    pub sandboxes: Vec<Object<Sandbox>>,
    pub templates: Vec<Object<Sandbox>>,
    pub environments: Vec<Object<Environment>>,
    pub sets: Vec<Object<SandboxSet>>,
    pub problems: Vec<Problem>,
    /// What was not checked, and why (e.g. references, when single files were read).
    pub notes: Vec<String>,
}

impl ConfigSet {
    /// Reads a config repo: every `.yaml`/`.yml` file under `sandboxes/`, `templates/` and `environments/`.
    /// References between objects are checked, and each object must sit in its kind's folder.
    pub fn load_repo(root: &Path) -> io::Result<ConfigSet> {
        let (inputs, unreadable) = repo_inputs(root)?;
        let mut set = ConfigSet::from_inputs(inputs, true);
        set.problems.splice(0..0, unreadable);
        Ok(set)
    }

    /// Reads the given paths: a directory that looks like a config repo is read as one; files are read as they
    /// are, and references to objects outside them are then not checked (a note says so). Everything is checked
    /// across objects once, as one set.
    pub fn load_paths(paths: &[PathBuf]) -> ConfigSet {
        let mut inputs = Vec::new();
        let mut unreadable = Vec::new();
        let mut single_files = false;
        for path in paths {
            if path.is_dir() {
                match repo_inputs(path) {
                    Ok((found, problems)) => {
                        inputs.extend(found);
                        unreadable.extend(problems);
                    }
                    Err(e) => unreadable.push(Problem::new(display_path(path), Pos::new(1, 1), e.to_string())),
                }
            } else {
                single_files = true;
                let label = display_path(path);
                match read_capped(path) {
                    Ok(text) => inputs.push(InputFile {
                        label,
                        folder: None,
                        text,
                    }),
                    Err(message) => unreadable.push(Problem::new(label, Pos::new(1, 1), message)),
                }
            }
        }
        let mut set = ConfigSet::from_inputs(inputs, !single_files);
        set.problems.splice(0..0, unreadable);
        if single_files {
            set.notes.push(
                "references to environments were not checked for single files: validate the repo root to check them"
                    .into(),
            );
        }
        set
    }

    /// Reads files already in memory. `repo` says whether they form a whole config repo, so that references
    /// can be checked.
    pub fn from_inputs(inputs: Vec<InputFile>, repo: bool) -> ConfigSet {
        let mut set = ConfigSet::default();
        for input in inputs {
            let (parsed, problems) = load::parse_str(&input.label, &input.text);
            set.problems.extend(problems);
            for item in parsed {
                if let Some(folder) = input.folder {
                    let kind = item.object_ref().kind;
                    if kind != folder {
                        let p = item
                            .source()
                            .problem_at(&["kind"], format!("a {kind} in {}/", folder.folder()))
                            .hint(format!("move it to {}/", kind.folder()))
                            .about(Some(item.object_ref()));
                        set.problems.push(p);
                        continue;
                    }
                }
                match item {
                    Parsed::Sandbox(o) => set.sandboxes.push(o),
                    Parsed::Template(o) => set.templates.push(o),
                    Parsed::Environment(o) => set.environments.push(o),
                    Parsed::SandboxSet(o) => set.sets.push(o),
                }
            }
        }
        set.check_across(repo);
        set
    }

    /// No problem anywhere.
    pub fn is_valid(&self) -> bool {
        self.problems.is_empty()
    }

    /// The problems that belong to one object.
    pub fn problems_of<'a>(&'a self, object: &'a ObjectRef) -> impl Iterator<Item = &'a Problem> + 'a {
        self.problems.iter().filter(move |p| p.object.as_ref() == Some(object))
    }

    /// Where an object was read from.
    pub fn source_of(&self, kind: Kind, name: &str) -> Option<&Source> {
        let sandboxes = match kind {
            Kind::Sandbox => &self.sandboxes,
            Kind::SandboxTemplate => &self.templates,
            Kind::Environment => {
                return self
                    .environments
                    .iter()
                    .find(|o| o.value.metadata.name == name)
                    .map(|o| &o.source);
            }
            Kind::SandboxSet => {
                return self
                    .sets
                    .iter()
                    .find(|o| o.value.metadata.name == name)
                    .map(|o| &o.source);
            }
        };
        sandboxes
            .iter()
            .find(|o| o.value.metadata.name == name)
            .map(|o| &o.source)
    }

    /// Checks across objects: duplicate names, ports claimed twice, and (for a whole repo) references.
    /// Objects that fail them are taken out of the lists, as objects that fail their own checks are.
    fn check_across(&mut self, check_references: bool) {
        let mut problems = Vec::new();
        dedupe(&mut self.sandboxes, Kind::Sandbox, &mut problems);
        dedupe(&mut self.templates, Kind::SandboxTemplate, &mut problems);
        dedupe(&mut self.environments, Kind::Environment, &mut problems);
        dedupe(&mut self.sets, Kind::SandboxSet, &mut problems);

        // Each port's first claim: who, and where it is written.
        let mut claimed: BTreeMap<u32, (String, PathBuf, Pos)> = BTreeMap::new();
        let mut refused: Vec<String> = Vec::new();
        for sb in &self.sandboxes {
            let name = &sb.value.metadata.name;
            let spec = &sb.value.spec;
            let gateway = spec
                .gateway
                .port
                .map(|p| (p, "gateway".to_string(), vec!["spec", "gateway", "port"]));
            let services = spec.services.iter().filter_map(|(svc, s)| {
                s.port.map(|p| {
                    (
                        p,
                        format!("service {svc}"),
                        vec!["spec", "services", svc.as_str(), "port"],
                    )
                })
            });
            for (port, who, path) in gateway.into_iter().chain(services) {
                match claimed.get(&port) {
                    Some((first, first_file, first_at)) => {
                        let p = sb
                            .source
                            .problem_at(&path, format!("port {port} is already claimed by {first}"))
                            .hint(format!(
                                "claimed at {}:{}; pick another port or leave `port` out to have one allocated",
                                first_file.display(),
                                first_at.line
                            ))
                            .about(Some(ObjectRef {
                                kind: Kind::Sandbox,
                                name: name.clone(),
                            }));
                        problems.push(p);
                        refused.push(name.clone());
                    }
                    None => {
                        let owner = format!("sandbox {name}, {who}");
                        claimed.insert(port, (owner, sb.source.file.clone(), sb.source.pos(&path)));
                    }
                }
            }
        }
        self.sandboxes.retain(|o| !refused.contains(&o.value.metadata.name));

        let mut refused_templates = Vec::new();
        for t in &self.templates {
            let spec = &t.value.spec;
            let gateway = spec.gateway.port.map(|_| vec!["spec", "gateway", "port"]);
            let services = spec
                .services
                .iter()
                .filter(|(_, s)| s.port.is_some())
                .map(|(svc, _)| vec!["spec", "services", svc.as_str(), "port"]);
            for path in gateway.into_iter().chain(services) {
                let p = t
                    .source
                    .problem_at(&path, "a template pins a port")
                    .hint("every sandbox made from this template would claim the same port: leave `port` out")
                    .about(Some(ObjectRef {
                        kind: Kind::SandboxTemplate,
                        name: t.value.metadata.name.clone(),
                    }));
                problems.push(p);
                refused_templates.push(t.value.metadata.name.clone());
            }
        }
        self.templates
            .retain(|o| !refused_templates.contains(&o.value.metadata.name));

        if check_references {
            let known: Vec<&str> = self
                .environments
                .iter()
                .map(|e| e.value.metadata.name.as_str())
                .collect();
            let mut broken_refs = Vec::new();
            for (kind, list) in [
                (Kind::Sandbox, &self.sandboxes),
                (Kind::SandboxTemplate, &self.templates),
            ] {
                for sb in list {
                    let spec = &sb.value.spec;
                    let users = spec
                        .services
                        .iter()
                        .map(|(svc, s)| (vec!["spec", "services", svc.as_str()], &s.environments))
                        .chain([(vec!["spec", "gateway"], &spec.gateway.environments)]);
                    for (at, environments) in users {
                        for (i, env) in environments.iter().enumerate() {
                            if known.contains(&env.as_str()) {
                                continue;
                            }
                            let i = i.to_string();
                            let path = [at.as_slice(), &["environments", i.as_str()]].concat();
                            let hint = if known.is_empty() {
                                "add it under environments/".to_string()
                            } else {
                                format!("known environments: {}", known.join(", "))
                            };
                            let object = ObjectRef {
                                kind,
                                name: sb.value.metadata.name.clone(),
                            };
                            problems.push(
                                sb.source
                                    .problem_at(&path, format!("environment `{env}` does not exist"))
                                    .hint(hint)
                                    .about(Some(object.clone())),
                            );
                            broken_refs.push(object);
                        }
                    }
                }
            }
            let broken = |kind: Kind, o: &Object<Sandbox>| {
                broken_refs.contains(&ObjectRef {
                    kind,
                    name: o.value.metadata.name.clone(),
                })
            };
            self.sandboxes.retain(|o| !broken(Kind::Sandbox, o));
            self.templates.retain(|o| !broken(Kind::SandboxTemplate, o));
        }
        self.check_sets(check_references, &mut problems);
        self.problems.extend(problems);
    }

    /// Checks of SandboxSets across objects: two sets never share a name prefix (their sandboxes could share
    /// names) and, for a whole repo, each set's template exists and runs its service.
    fn check_sets(&mut self, check_references: bool, problems: &mut Vec<Problem>) {
        let mut refused = Vec::new();
        let mut prefixes: BTreeMap<String, String> = BTreeMap::new();
        for o in &self.sets {
            let set = &o.value;
            let name = &set.metadata.name;
            let about = Some(ObjectRef {
                kind: Kind::SandboxSet,
                name: name.clone(),
            });
            if let Some(first) = prefixes.get(set.name_prefix()) {
                let at: &[&str] = if set.spec.name_prefix.is_some() {
                    &["spec", "namePrefix"]
                } else {
                    &["metadata", "name"]
                };
                problems.push(
                    o.source
                        .problem_at(
                            at,
                            format!("name prefix `{}` is already set {first}'s", set.name_prefix()),
                        )
                        .hint("give each set its own `namePrefix`, so that their sandboxes never share a name")
                        .about(about.clone()),
                );
                refused.push(name.clone());
                continue;
            }
            prefixes.insert(set.name_prefix().to_string(), name.clone());
            if !check_references {
                continue;
            }
            let template = self
                .templates
                .iter()
                .find(|t| t.value.metadata.name == set.spec.template);
            match template {
                None => {
                    let known: Vec<&str> = self.templates.iter().map(|t| t.value.metadata.name.as_str()).collect();
                    let hint = if known.is_empty() {
                        "add it under templates/".to_string()
                    } else {
                        format!("known templates: {}", known.join(", "))
                    };
                    problems.push(
                        o.source
                            .problem_at(
                                &["spec", "template"],
                                format!("template `{}` does not exist", set.spec.template),
                            )
                            .hint(hint)
                            .about(about),
                    );
                    refused.push(name.clone());
                }
                Some(t) if !t.value.spec.services.contains_key(&set.spec.service) => {
                    let services: Vec<&str> = t.value.spec.services.keys().map(String::as_str).collect();
                    problems.push(
                        o.source
                            .problem_at(
                                &["spec", "service"],
                                format!(
                                    "service `{}` is not in template `{}`",
                                    set.spec.service, set.spec.template
                                ),
                            )
                            .hint(format!("the template runs: {}", services.join(", ")))
                            .about(about),
                    );
                    refused.push(name.clone());
                }
                Some(_) => {}
            }
        }
        self.sets.retain(|o| !refused.contains(&o.value.metadata.name));
    }
}

trait Named {
    fn name(&self) -> &str;
}

impl Named for Sandbox {
    fn name(&self) -> &str {
        &self.metadata.name
    }
}

impl Named for SandboxSet {
    fn name(&self) -> &str {
        &self.metadata.name
    }
}

impl Named for Environment {
    fn name(&self) -> &str {
        &self.metadata.name
    }
}

/// Keeps the first object of each name and reports every later one.
fn dedupe<T: Named>(list: &mut Vec<Object<T>>, kind: Kind, problems: &mut Vec<Problem>) {
    let mut first: BTreeMap<String, (PathBuf, Pos)> = BTreeMap::new();
    list.retain(|o| {
        let name = o.value.name().to_string();
        match first.get(&name) {
            Some((file, pos)) => {
                let p = o
                    .source
                    .problem_at(&["metadata", "name"], format!("{kind} `{name}` is defined twice"))
                    .hint(format!(
                        "first defined at {}:{}:{}",
                        file.display(),
                        pos.line,
                        pos.column
                    ))
                    .about(Some(ObjectRef {
                        kind,
                        name: name.clone(),
                    }));
                problems.push(p);
                false
            }
            None => {
                first.insert(name, (o.source.file.clone(), o.source.pos(&["metadata", "name"])));
                true
            }
        }
    });
}

/// The manifest files of a config repo, and a problem for each one that cannot be read.
fn repo_inputs(root: &Path) -> io::Result<(Vec<InputFile>, Vec<Problem>)> {
    let mut inputs = Vec::new();
    let mut unreadable = Vec::new();
    let mut found_any_folder = false;
    for kind in Kind::ALL {
        let dir = root.join(kind.folder());
        if !dir.is_dir() {
            continue;
        }
        found_any_folder = true;
        let mut files = Vec::new();
        collect_yaml(&dir, &mut files)?;
        files.sort();
        for file in files {
            let label = display_path(&file);
            match read_capped(&file) {
                Ok(text) => inputs.push(InputFile {
                    label,
                    folder: Some(kind),
                    text,
                }),
                Err(message) => unreadable.push(Problem::new(label, Pos::new(1, 1), message)),
            }
        }
    }
    if !found_any_folder {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!(
                "{} is not a config repo: it has none of sandboxes/, templates/, environments/, sandboxsets/",
                root.display()
            ),
        ));
    }
    Ok((inputs, unreadable))
}

fn collect_yaml(dir: &Path, out: &mut Vec<PathBuf>) -> io::Result<()> {
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        if name.to_string_lossy().starts_with('.') {
            continue;
        }
        // Symlinks are not followed: a config repo holds its manifests itself.
        let kind = entry.file_type()?;
        let path = entry.path();
        if kind.is_dir() {
            collect_yaml(&path, out)?;
        } else if kind.is_file() && matches!(path.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")) {
            out.push(path);
        }
    }
    Ok(())
}

/// Reads a manifest file, refusing one over the size limit before reading it.
pub fn read_capped(path: &Path) -> Result<String, String> {
    let meta = fs::metadata(path).map_err(|e| format!("cannot read: {e}"))?;
    if meta.len() > MAX_FILE_BYTES as u64 {
        return Err(format!(
            "file is {} bytes, over the limit of {MAX_FILE_BYTES} bytes for a manifest",
            meta.len()
        ));
    }
    let bytes = fs::read(path).map_err(|e| format!("cannot read: {e}"))?;
    String::from_utf8(bytes).map_err(|e| {
        format!(
            "file is not UTF-8 (first bad byte at offset {})",
            e.utf8_error().valid_up_to()
        )
    })
}

fn display_path(path: &Path) -> PathBuf {
    path.strip_prefix("./").unwrap_or(path).to_path_buf()
}
