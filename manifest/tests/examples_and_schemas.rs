//! The examples are a valid config repo, and the committed JSON Schemas are current and accept them, as checked
//! by an independent validator (Python's jsonschema).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use sdp_manifest::{ConfigSet, Kind};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

#[test]
fn the_examples_are_a_valid_config_repo() {
    let set = ConfigSet::load_repo(&root().join("examples")).unwrap();
    assert!(set.problems.is_empty(), "{:#?}", set.problems);
    let names = |list: &[sdp_manifest::Object<sdp_manifest::Sandbox>]| {
        list.iter().map(|o| o.value.metadata.name.clone()).collect::<Vec<_>>()
    };
    assert_eq!(names(&set.sandboxes), ["qa-login-error"]);
    assert_eq!(names(&set.templates), ["account-testing", "qa-default"]);
    assert_eq!(set.environments.len(), 2);
    assert_eq!(set.sets.len(), 1);
    assert_eq!(set.sets[0].value.spec.template, "account-testing");
    let qa = &set.sandboxes[0].value.spec;
    assert_eq!(qa.services["account"].branch, "feature/login-error");
    assert_eq!(qa.routes["account"], sdp_manifest::Route::Sandbox);
}

#[test]
fn every_example_names_its_schema_for_editors() {
    for kind in Kind::ALL {
        let dir = root().join("examples").join(kind.folder());
        for entry in fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let first = fs::read_to_string(&path)
                .unwrap()
                .lines()
                .next()
                .unwrap_or("")
                .to_string();
            let want = format!("# yaml-language-server: $schema=../../schemas/{}", kind.schema_file());
            assert_eq!(first, want, "{}", path.display());
        }
    }
}

#[test]
fn the_committed_schemas_are_current() {
    for (file, text) in sdp_manifest::schemas() {
        let path = root().join("schemas").join(file);
        let committed = fs::read_to_string(&path).unwrap_or_default();
        assert!(
            committed == text,
            "{} is stale: regenerate with `cargo run -p sdp-reconciler -- schema --out schemas`",
            path.display()
        );
    }
}

/// Each example as JSON, plus documents that the schemas must refuse, checked by Python's jsonschema.
#[test]
fn an_independent_validator_accepts_the_examples_and_refuses_broken_ones() {
    let dir = tempfile::tempdir().unwrap();
    let mut cases = Vec::new();
    let set = ConfigSet::load_repo(&root().join("examples")).unwrap();
    let mut n = 0;
    let mut add = |kind: Kind, value: serde_json::Value, valid: bool| {
        n += 1;
        let path = dir.path().join(format!("{n}.json"));
        fs::write(&path, serde_json::to_string(&value).unwrap()).unwrap();
        cases.push(serde_json::json!({
            "schema": root().join("schemas").join(kind.schema_file()),
            "doc": path,
            "valid": valid,
        }));
    };
    for o in &set.sandboxes {
        let text = fs::read_to_string(&o.source.file).unwrap();
        add(Kind::Sandbox, serde_saphyr::from_str(&text).unwrap(), true);
    }
    for o in &set.templates {
        let text = fs::read_to_string(&o.source.file).unwrap();
        add(Kind::SandboxTemplate, serde_saphyr::from_str(&text).unwrap(), true);
    }
    for o in &set.environments {
        let text = fs::read_to_string(&o.source.file).unwrap();
        add(Kind::Environment, serde_saphyr::from_str(&text).unwrap(), true);
    }
    for o in &set.sets {
        let text = fs::read_to_string(&o.source.file).unwrap();
        add(Kind::SandboxSet, serde_saphyr::from_str(&text).unwrap(), true);
    }
    let set_doc = serde_json::json!({
        "apiVersion": "sdp/v1", "kind": "SandboxSet", "metadata": {"name": "s"},
        "spec": {"template": "t", "service": "account", "branches": "feature/*", "max": 2}
    });
    add(Kind::SandboxSet, set_doc.clone(), true);
    let mut over_cap = set_doc.clone();
    over_cap["spec"]["max"] = serde_json::json!(51);
    add(Kind::SandboxSet, over_cap, false);
    let mut no_template = set_doc;
    no_template["spec"].as_object_mut().unwrap().remove("template");
    add(Kind::SandboxSet, no_template, false);
    let good = serde_json::json!({
        "apiVersion": "sdp/v1", "kind": "Sandbox", "metadata": {"name": "x"},
        "spec": {"gateway": {"branch": "main"}, "routes": {"a": "ocp", "b": "http://10.0.0.1:81"}}
    });
    add(Kind::Sandbox, good.clone(), true);
    let mut unknown_field = good.clone();
    unknown_field["spec"]["gatway"] = serde_json::json!({});
    add(Kind::Sandbox, unknown_field, false);
    let mut wrong_kind = good.clone();
    wrong_kind["kind"] = serde_json::json!("SandboxTemplate");
    add(Kind::Sandbox, wrong_kind, false);
    let mut quote_in_route = good.clone();
    quote_in_route["spec"]["routes"]["a"] = serde_json::json!("http://x'y");
    add(Kind::Sandbox, quote_in_route, false);
    let mut pinned = good.clone();
    pinned["spec"]["gateway"]["commit"] = serde_json::json!("0123456789abcdef0123456789abcdef01234567");
    add(Kind::Sandbox, pinned.clone(), true);
    let mut short_pin = pinned;
    short_pin["spec"]["gateway"]["commit"] = serde_json::json!("0123456");
    add(Kind::Sandbox, short_pin, false);
    add(
        Kind::Environment,
        serde_json::json!({"apiVersion": "sdp/v1", "kind": "Environment", "metadata": {"name": "e"},
                           "spec": {"secrets": {"A": "inline"}}}),
        false,
    );
    let cases_file = dir.path().join("cases.json");
    fs::write(&cases_file, serde_json::to_string(&cases).unwrap()).unwrap();
    let script = r#"
import json, sys
try:
    import jsonschema
except ImportError:
    sys.exit("Python's jsonschema is missing: pip install jsonschema (.ci/run installs it)")
bad = []
for case in json.load(open(sys.argv[1])):
    schema = json.load(open(case["schema"]))
    doc = json.load(open(case["doc"]))
    jsonschema.Draft7Validator.check_schema(schema)
    errors = list(jsonschema.Draft7Validator(schema).iter_errors(doc))
    if bool(errors) == case["valid"]:
        bad.append((case, [e.message for e in errors]))
for b in bad:
    print("MISMATCH", b)
print("checked", sum(1 for _ in json.load(open(sys.argv[1]))))
sys.exit(1 if bad else 0)
"#;
    let out = Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(&cases_file)
        .output()
        .expect("python3 runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains(&format!("checked {n}")), "{stdout}");
}
