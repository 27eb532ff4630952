//! From the text of a file to typed objects and located problems.
//!
//! A file may hold several documents. Each is read on its own, so one broken document does not hide the problems
//! of the others; it is read from the file's full text with every other document blanked out (each byte turned
//! into a space), so that lines, columns and byte offsets stay those of the file.

use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

use crate::locate::{Index, Pos};
use crate::model::{API_VERSION, Environment, INLINE_SECRET, Kind, Sandbox, SandboxSet};
use crate::problem::{ObjectRef, Problem};
use crate::validate;

/// Files larger than this are refused unread: a manifest is a few kilobytes.
pub const MAX_FILE_BYTES: usize = 256 * 1024;

/// Where one document of a file stands, and its own text.
#[derive(Clone, Debug)]
pub struct Source {
    pub file: PathBuf,
    /// 1-based lines of the document, end exclusive.
    pub lines: Range<u64>,
    /// Byte range of the document in its file, document marker (`---`) included.
    pub bytes: Range<usize>,
    /// The document's own text, as written, comments included.
    pub text: String,
    pub index: Index,
}

impl Source {
    /// A problem at the value of `path` in this document.
    pub fn problem_at(&self, path: &[&str], message: impl Into<String>) -> Problem {
        Problem::new(self.file.clone(), self.index.value_pos(path), message)
    }

    /// A problem at the key of `path` in this document.
    pub fn problem_at_key(&self, path: &[&str], message: impl Into<String>) -> Problem {
        Problem::new(self.file.clone(), self.index.key_pos(path), message)
    }

    pub fn pos(&self, path: &[&str]) -> Pos {
        self.index.value_pos(path)
    }
}

/// A typed object with the place it was read from.
#[derive(Clone, Debug)]
pub struct Object<T> {
    pub value: T,
    pub source: Source,
}

/// One document, read.
#[derive(Clone, Debug)]
pub enum Parsed {
    Sandbox(Object<Sandbox>),
    Template(Object<Sandbox>),
    Environment(Object<Environment>),
    SandboxSet(Object<SandboxSet>),
}

impl Parsed {
    pub fn object_ref(&self) -> ObjectRef {
        let (kind, name) = match self {
            Parsed::Sandbox(o) => (Kind::Sandbox, &o.value.metadata.name),
            Parsed::Template(o) => (Kind::SandboxTemplate, &o.value.metadata.name),
            Parsed::Environment(o) => (Kind::Environment, &o.value.metadata.name),
            Parsed::SandboxSet(o) => (Kind::SandboxSet, &o.value.metadata.name),
        };
        ObjectRef {
            kind,
            name: name.clone(),
        }
    }

    pub fn source(&self) -> &Source {
        match self {
            Parsed::Sandbox(o) | Parsed::Template(o) => &o.source,
            Parsed::Environment(o) => &o.source,
            Parsed::SandboxSet(o) => &o.source,
        }
    }
}

/// A document's place in its file, found from its markers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DocSpan {
    pub lines: Range<u64>,
    pub bytes: Range<usize>,
    /// Whether the document holds anything but blank lines, comments and markers.
    pub has_content: bool,
}

fn is_marker(line: &str, marker: &str) -> bool {
    line.strip_prefix(marker)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with([' ', '\t', '\r', '#']))
}

/// Splits a file into its documents. In YAML a `---` or `...` at the start of a line is always a marker, even
/// inside a block scalar, so the split by lines is exact.
pub fn split_documents(text: &str) -> Vec<DocSpan> {
    let mut docs = Vec::new();
    let mut current: Option<DocSpan> = None;
    let mut offset = 0;
    for (i, line) in text.split_inclusive('\n').enumerate() {
        let n = i as u64 + 1;
        let bare = line.trim_end_matches(['\n', '\r']);
        let start_marker = is_marker(bare, "---");
        if start_marker && let Some(done) = current.take() {
            docs.push(done);
        }
        let doc = current.get_or_insert(DocSpan {
            lines: n..n,
            bytes: offset..offset,
            has_content: false,
        });
        doc.lines.end = n + 1;
        doc.bytes.end = offset + line.len();
        let content = if start_marker { bare[3..].trim() } else { bare.trim() };
        if !content.is_empty() && !content.starts_with('#') && !is_marker(bare, "...") {
            doc.has_content = true;
        }
        if is_marker(bare, "...") {
            docs.extend(current.take());
        }
        offset += line.len();
    }
    docs.extend(current);
    docs
}

fn blank_outside(text: &str, keep: &Range<usize>) -> String {
    let bytes: Vec<u8> = text
        .bytes()
        .enumerate()
        .map(|(i, b)| if keep.contains(&i) || b == b'\n' { b } else { b' ' })
        .collect();
    // Only whole bytes of other documents were replaced by ASCII spaces, and document boundaries fall on line
    // starts, so the result is valid UTF-8.
    String::from_utf8(bytes).unwrap_or_default()
}

fn options() -> serde_saphyr::Options {
    let mut budget = serde_saphyr::Budget::default();
    budget.max_events = 50_000;
    budget.max_aliases = 100;
    budget.max_anchors = 100;
    budget.max_nodes = 20_000;
    budget.max_depth = 32;
    budget.max_documents = 1;
    budget.max_total_scalar_bytes = MAX_FILE_BYTES;
    budget.max_recorded_anchor_events = 10_000;
    budget.max_recorded_anchor_bytes = MAX_FILE_BYTES;
    let mut aliases = serde_saphyr::options::AliasLimits::default();
    aliases.max_total_replayed_events = 10_000;
    aliases.max_replay_stack_depth = 8;
    aliases.max_alias_expansions_per_anchor = 100;
    serde_saphyr::options! {
        budget: Some(budget),
        alias_limits: aliases,
        strict_booleans: true,
        with_snippet: false,
    }
}

/// A serde or parser error as a problem. Its text never carries a scalar's value (snippets are off), so an
/// inline secret is not repeated.
fn yaml_problem(file: &Path, err: &serde_saphyr::Error) -> Problem {
    let pos = err
        .location()
        .map(|l| Pos::new(l.line().max(1), l.column().max(1)))
        .unwrap_or(Pos::new(1, 1));
    let mut message = err.to_string();
    if let Some(at) = message.rfind(" at line ") {
        message.truncate(at);
    }
    // The parser's advice is for programs that embed it, not for whoever wrote the file.
    if let Some(at) = message.find(", set DuplicateKeyPolicy") {
        message.truncate(at);
    }
    let mut problem = Problem::new(file, pos, message.clone());
    if message.contains(INLINE_SECRET) {
        problem = problem.hint("write `{ file: /etc/sdp/secrets/<name> }` and put the value in that file on the VM");
    } else if message.starts_with("unknown field") {
        problem = problem.hint("check the spelling; schemas/ lists every field of each kind");
    } else if message.contains("budget breached") || message.contains("replay") {
        problem.message = "the document is too large or expands too many aliases (a YAML bomb is refused)".into();
        problem = problem.hint("write the values out; a manifest needs few or no anchors");
    } else if message.starts_with("duplicate mapping key") {
        problem = problem.hint("a key is given once in a mapping: keep the one you mean");
    } else if message
        .split(|c: char| !c.is_ascii_alphanumeric())
        .any(|w| w == "tab" || w == "tabs")
    {
        problem = problem.hint("YAML indents with spaces, never tabs");
    }
    problem
}

fn tab_problems(file: &Path, text: &str, lines: &Range<u64>) -> Vec<Problem> {
    text.lines()
        .enumerate()
        .map(|(i, l)| (i as u64 + 1, l))
        .filter(|(n, _)| lines.contains(n))
        .filter_map(|(n, line)| {
            let indent_end = line.find(|c| c != ' ' && c != '\t').unwrap_or(line.len());
            let col = line[..indent_end].find('\t')?;
            Some(
                Problem::new(file, Pos::new(n, col as u64 + 1), "tab character in indentation")
                    .hint("YAML indents with spaces, never tabs"),
            )
        })
        .collect()
}

fn deserialize<T: DeserializeOwned>(file: &Path, blanked: &str) -> Result<T, Problem> {
    serde_saphyr::from_str_with_options(blanked, options()).map_err(|e| yaml_problem(file, &e))
}

fn header_str<'a>(header: &'a serde_json::Value, key: &str) -> Option<&'a str> {
    header.get(key).and_then(|v| v.as_str())
}

/// Reads every document of one file. Returns the objects that parsed and passed their own checks, and every
/// problem found. Checks across objects (duplicates, ports, references) are the config set's.
pub fn parse_str(file: &Path, text: &str) -> (Vec<Parsed>, Vec<Problem>) {
    let mut parsed = Vec::new();
    let mut problems = Vec::new();
    if text.len() > MAX_FILE_BYTES {
        // The reconciler hands over an oversized blob unread, as a stand-in just over the limit: no byte count.
        let message = format!("file is over the limit of {MAX_FILE_BYTES} bytes for a manifest");
        problems.push(Problem::new(file, Pos::new(1, 1), message));
        return (parsed, problems);
    }
    let docs: Vec<DocSpan> = split_documents(text).into_iter().filter(|d| d.has_content).collect();
    if docs.len() > 64 {
        let message = format!("file holds {} documents; at most 64 are read from one file", docs.len());
        problems.push(Problem::new(file, Pos::new(1, 1), message));
        return (parsed, problems);
    }
    for doc in docs {
        let tabs = tab_problems(file, text, &doc.lines);
        if !tabs.is_empty() {
            problems.extend(tabs);
            continue;
        }
        let blanked = blank_outside(text, &doc.bytes);
        let header: serde_json::Value = match deserialize(file, &blanked) {
            Ok(v) => v,
            Err(p) => {
                problems.push(p);
                continue;
            }
        };
        let source = Source {
            file: file.to_path_buf(),
            lines: doc.lines.clone(),
            bytes: doc.bytes.clone(),
            text: text[doc.bytes.clone()].to_string(),
            index: Index::build(&blanked),
        };
        if !header.is_object() {
            problems.push(
                source
                    .problem_at(&[], "a manifest must be a mapping")
                    .hint("start with `apiVersion: sdp/v1`, `kind:`, `metadata:` and `spec:`"),
            );
            continue;
        }
        let name = header
            .get("metadata")
            .and_then(|m| m.get("name"))
            .and_then(|n| n.as_str());
        let kind = match header_str(&header, "kind") {
            None => {
                problems.push(
                    source.problem_at(&["kind"], "missing or non-text `kind`").hint(
                        "write `kind: Sandbox`, `kind: SandboxTemplate`, `kind: Environment` or `kind: SandboxSet`",
                    ),
                );
                continue;
            }
            Some(k) => {
                match Kind::parse(k) {
                    Some(kind) => kind,
                    None => {
                        let close = Kind::ALL.into_iter().find(|c| c.as_str().eq_ignore_ascii_case(k));
                        let hint = match close {
                        Some(c) => format!("did you mean `{c}`? (kinds are case-sensitive)"),
                        None => "write `kind: Sandbox`, `kind: SandboxTemplate`, `kind: Environment` or `kind: SandboxSet`".into(),
                    };
                        problems.push(source.problem_at(&["kind"], format!("unknown kind `{k}`")).hint(hint));
                        continue;
                    }
                }
            }
        };
        let object = name.map(|n| ObjectRef {
            kind,
            name: n.to_string(),
        });
        let before = problems.len();
        match header_str(&header, "apiVersion") {
            Some(API_VERSION) => {}
            Some(other) => problems.push(
                source
                    .problem_at(&["apiVersion"], format!("unsupported apiVersion `{other}`"))
                    .hint(format!("this version of SDP reads `apiVersion: {API_VERSION}`"))
                    .about(object.clone()),
            ),
            None => problems.push(
                source
                    .problem_at(&["apiVersion"], "missing or non-text `apiVersion`")
                    .hint(format!("write `apiVersion: {API_VERSION}`"))
                    .about(object.clone()),
            ),
        }
        let item = match kind {
            Kind::Sandbox | Kind::SandboxTemplate => match deserialize::<Sandbox>(file, &blanked) {
                Ok(value) => {
                    validate::sandbox(&value, &source, &mut problems);
                    let obj = Object { value, source };
                    Some(if kind == Kind::Sandbox {
                        Parsed::Sandbox(obj)
                    } else {
                        Parsed::Template(obj)
                    })
                }
                Err(p) => {
                    problems.push(p);
                    None
                }
            },
            Kind::Environment => match deserialize::<Environment>(file, &blanked) {
                Ok(value) => {
                    validate::environment(&value, &source, &mut problems);
                    Some(Parsed::Environment(Object { value, source }))
                }
                Err(p) => {
                    problems.push(p);
                    None
                }
            },
            Kind::SandboxSet => match deserialize::<SandboxSet>(file, &blanked) {
                Ok(value) => {
                    validate::sandbox_set(&value, &source, &mut problems);
                    Some(Parsed::SandboxSet(Object { value, source }))
                }
                Err(p) => {
                    problems.push(p);
                    None
                }
            },
        };
        for p in &mut problems[before..] {
            if p.object.is_none() {
                p.object = object.clone();
            }
        }
        if problems.len() == before {
            parsed.extend(item);
        }
    }
    (parsed, problems)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_on_markers_and_skips_empty_documents() {
        let text = "# head\n---\na: 1\n---\n# only a comment\n--- \nb: 2\n...\n";
        let docs = split_documents(text);
        let with_content: Vec<_> = docs.iter().filter(|d| d.has_content).collect();
        assert_eq!(with_content.len(), 2);
        assert_eq!(with_content[0].lines, 2..4);
        assert_eq!(&text[with_content[1].bytes.clone()], "--- \nb: 2\n...\n");
    }

    #[test]
    fn a_marker_needs_a_separator_after_it() {
        let docs = split_documents("a: |\n  ---x\n----\n");
        assert_eq!(docs.len(), 1);
    }
}
