//! The corpus of broken manifests: each file says on its first line where its problem is and what the message
//! says (`# expect: LINE:COLUMN text`), and must be refused with exactly that.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Instant;

use sdp_manifest::{ConfigSet, InputFile, Kind};

fn example_environments() -> Vec<InputFile> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/environments");
    let mut files: Vec<PathBuf> = fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    files
        .into_iter()
        .map(|p| InputFile {
            text: fs::read_to_string(&p).unwrap(),
            label: p,
            folder: Some(Kind::Environment),
        })
        .collect()
}

struct Expect {
    line: u64,
    column: u64,
    text: String,
}

fn expectation(text: &str) -> Expect {
    let first = text.lines().next().unwrap();
    let rest = first
        .strip_prefix("# expect: ")
        .expect("fixture starts with `# expect: LINE:COLUMN text`");
    let (pos, text) = rest.split_once(' ').unwrap();
    let (line, column) = pos.split_once(':').unwrap();
    Expect {
        line: line.parse().unwrap(),
        column: column.parse().unwrap(),
        text: text.trim().to_string(),
    }
}

#[test]
fn every_broken_manifest_is_refused_at_its_place() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/broken");
    let mut files: Vec<PathBuf> = fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    assert!(files.len() >= 25, "the corpus has {} files", files.len());
    let mut slowest = (0.0, PathBuf::new());
    let mut misses = Vec::new();
    for file in &files {
        let text = fs::read_to_string(file).unwrap();
        let expect = expectation(&text);
        let mut inputs = example_environments();
        inputs.push(InputFile {
            label: file.clone(),
            folder: None,
            text: text.clone(),
        });
        let started = Instant::now();
        let set = ConfigSet::from_inputs(inputs, true);
        let took = started.elapsed().as_secs_f64();
        if took > slowest.0 {
            slowest = (took, file.clone());
        }
        let ours: Vec<_> = set.problems.iter().filter(|p| &p.file == file).collect();
        assert!(
            set.problems.iter().all(|p| &p.file == file),
            "{}: problems outside the fixture: {:#?}",
            file.display(),
            set.problems
        );
        let found = ours
            .iter()
            .any(|p| p.line == expect.line && p.column == expect.column && p.message.contains(&expect.text));
        if !found {
            misses.push(format!(
                "{}: expected a problem at {}:{} containing {:?}, got:\n{}",
                file.display(),
                expect.line,
                expect.column,
                expect.text,
                ours.iter().map(|p| p.to_string()).collect::<Vec<_>>().join("\n")
            ));
        }
        // A refused object is not handed on: fewer objects come out of the fixture than it holds.
        let documents = sdp_manifest::split_documents(&text)
            .iter()
            .filter(|d| d.has_content)
            .count();
        let handed_on = set.sandboxes.len() + set.templates.len() + set.environments.len() - 2;
        assert!(
            handed_on < documents,
            "{}: {handed_on} of {documents} objects handed on",
            file.display()
        );
    }
    assert!(misses.is_empty(), "{}", misses.join("\n\n"));
    eprintln!(
        "{} broken manifests refused; slowest {:.1} ms ({})",
        files.len(),
        slowest.0 * 1e3,
        slowest.1.display()
    );
}

#[test]
fn an_inline_secret_is_never_repeated() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/broken/29-secret-inline.yaml");
    let text = fs::read_to_string(&path).unwrap();
    let (_, problems) = sdp_manifest::parse_str(&path, &text);
    let all = format!("{problems:?} {}", serde_json::to_string(&problems).unwrap());
    assert!(!problems.is_empty());
    assert!(!all.contains("hunter2"), "{all}");
}

#[test]
fn an_oversized_file_is_refused_unread() {
    let text = format!(
        "apiVersion: sdp/v1\nkind: Sandbox\n# {}\n",
        "x".repeat(sdp_manifest::MAX_FILE_BYTES)
    );
    let (parsed, problems) = sdp_manifest::parse_str(Path::new("big.yaml"), &text);
    assert!(parsed.is_empty());
    assert_eq!(problems.len(), 1);
    assert!(problems[0].message.contains("over the limit"), "{}", problems[0]);
}

#[test]
fn one_broken_document_does_not_hide_the_others() {
    let text = "apiVersion: sdp/v1\nkind: Sandbox\nmetadata: {name: a}\nspec: {gateway: {branch: x}, bogus: 1}\n---\n\
                apiVersion: sdp/v1\nkind: Sandbox\nmetadata: {name: B}\nspec: {gateway: {branch: x}}\n---\n\
                apiVersion: sdp/v1\nkind: Environment\nmetadata: {name: fine}\n";
    let (parsed, problems) = sdp_manifest::parse_str(Path::new("multi.yaml"), text);
    let lines: Vec<u64> = problems.iter().map(|p| p.line).collect();
    assert_eq!(lines, vec![4, 8], "{problems:#?}");
    assert_eq!(parsed.len(), 1);
    assert_eq!(parsed[0].object_ref().name, "fine");
}

#[test]
fn a_key_given_twice_is_named_with_advice_for_the_writer() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/broken/50-env-variable-twice.yaml");
    let text = fs::read_to_string(&path).unwrap();
    let (_, problems) = sdp_manifest::parse_str(&path, &text);
    assert_eq!(problems.len(), 1, "{problems:#?}");
    let p = &problems[0];
    assert_eq!(p.message, "duplicate mapping key: LOG_LEVEL");
    // The parser's text ends in "if acceptable", which once earned the advice about tabs.
    assert_eq!(
        p.hint.as_deref(),
        Some("a key is given once in a mapping: keep the one you mean"),
        "{p}"
    );
}
