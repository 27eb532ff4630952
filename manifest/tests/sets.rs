//! SandboxSet manifests: what a set must say to be valid, alone and against the templates of its repo.

use std::path::PathBuf;

use sdp_manifest::{ConfigSet, InputFile, Kind};

const TEMPLATE: &str = "apiVersion: sdp/v1
kind: SandboxTemplate
metadata: { name: account-testing }
spec:
  gateway: { branch: develop }
  services:
    account: { branch: develop }
  routes: { account: sandbox }
";

fn set_yaml(spec: &str) -> String {
    format!("apiVersion: sdp/v1\nkind: SandboxSet\nmetadata:\n  name: account-features\nspec:\n{spec}")
}

fn repo(sets: &[&str]) -> ConfigSet {
    let mut inputs = vec![InputFile {
        label: PathBuf::from("templates/account-testing.yaml"),
        folder: Some(Kind::SandboxTemplate),
        text: TEMPLATE.into(),
    }];
    for (i, text) in sets.iter().enumerate() {
        inputs.push(InputFile {
            label: PathBuf::from(format!("sandboxsets/{i}.yaml")),
            folder: Some(Kind::SandboxSet),
            text: text.to_string(),
        });
    }
    ConfigSet::from_inputs(inputs, true)
}

/// The problems as `file:line:column: message` first lines.
fn problems(set: &ConfigSet) -> Vec<String> {
    set.problems
        .iter()
        .map(|p| p.to_string().lines().next().unwrap().to_string())
        .collect()
}

const GOOD: &str = "  template: account-testing\n  service: account\n  branches: feature/*\n";

#[test]
fn a_set_over_a_template_and_its_service_is_valid() {
    let set = repo(&[&set_yaml(&format!(
        "{GOOD}  max: 50\n  expireAfter: 3d\n  keepIdle: true\n"
    ))]);
    assert!(set.problems.is_empty(), "{:#?}", set.problems);
    assert_eq!(set.sets.len(), 1);
    let s = &set.sets[0].value;
    assert_eq!(
        (s.name_prefix(), s.max(), s.spec.keep_idle),
        ("account-features", 50, true)
    );
}

#[test]
fn the_template_must_exist_and_run_the_service() {
    let set = repo(&[&set_yaml(
        "  template: nope\n  service: account\n  branches: feature/*\n",
    )]);
    assert_eq!(
        problems(&set),
        ["sandboxsets/0.yaml:6:13: template `nope` does not exist"]
    );
    assert!(set.sets.is_empty());
    let set = repo(&[&set_yaml(
        "  template: account-testing\n  service: payment\n  branches: feature/*\n",
    )]);
    assert_eq!(
        problems(&set),
        ["sandboxsets/0.yaml:7:12: service `payment` is not in template `account-testing`"]
    );
    assert!(set.sets.is_empty());
}

#[test]
fn only_star_is_a_wildcard_and_the_rest_must_be_a_branch_name() {
    for (pattern, column) in [("feature/?", 13), ("feature/[ab]", 13), ("feature//*", 13), ("-x*", 13)] {
        let spec = format!("  template: account-testing\n  service: account\n  branches: \"{pattern}\"\n");
        let set = repo(&[&set_yaml(&spec)]);
        let found = problems(&set);
        assert_eq!(found.len(), 1, "{pattern}: {found:?}");
        assert!(
            found[0].starts_with(&format!("sandboxsets/0.yaml:8:{column}: branch pattern")),
            "{pattern}: {found:?}"
        );
    }
    for pattern in ["feature/*", "*", "release-*-rc", "main"] {
        let spec = format!("  template: account-testing\n  service: account\n  branches: \"{pattern}\"\n");
        assert!(repo(&[&set_yaml(&spec)]).problems.is_empty(), "{pattern}");
    }
}

#[test]
fn the_cap_is_one_to_fifty() {
    for (max, ok) in [(0, false), (1, true), (50, true), (51, false)] {
        let set = repo(&[&set_yaml(&format!("{GOOD}  max: {max}\n"))]);
        assert_eq!(set.problems.is_empty(), ok, "max {max}: {:?}", problems(&set));
    }
}

#[test]
fn the_name_prefix_is_a_short_dns_label() {
    let long = "a".repeat(25);
    let set = repo(&[&set_yaml(&format!("{GOOD}  namePrefix: {long}\n"))]);
    assert_eq!(
        problems(&set),
        [format!(
            "sandboxsets/0.yaml:9:15: name prefix `{long}` is not a DNS label of at most 24 characters"
        )]
    );
    let set = repo(&[&set_yaml(&format!("{GOOD}  namePrefix: Feat\n"))]);
    assert_eq!(problems(&set).len(), 1);
    // A set whose own name is too long for a prefix needs `namePrefix`.
    let text = format!(
        "apiVersion: sdp/v1\nkind: SandboxSet\nmetadata:\n  name: {}\nspec:\n{GOOD}",
        "b".repeat(30)
    );
    assert_eq!(problems(&repo(&[&text])).len(), 1);
    let text = format!("{text}  namePrefix: b\n");
    assert!(repo(&[&text]).problems.is_empty());
}

#[test]
fn two_sets_never_share_a_name_prefix() {
    let other = "apiVersion: sdp/v1\nkind: SandboxSet\nmetadata:\n  name: other\nspec:\n".to_string()
        + GOOD
        + "  namePrefix: account-features\n";
    let set = repo(&[&set_yaml(GOOD), &other]);
    assert_eq!(
        problems(&set),
        ["sandboxsets/1.yaml:9:15: name prefix `account-features` is already set account-features's"]
    );
    assert_eq!(set.sets.len(), 1);
}
