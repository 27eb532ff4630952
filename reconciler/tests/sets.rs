//! SandboxSets as pure functions: the names they give, the branches they take, the cap, and the sandboxes they
//! make from the examples' set and template, compiled as the controller compiles them.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;

mod common;

use proptest::prelude::*;
use sdp_manifest::{ConfigSet, Environment, Sandbox, SandboxSet, rules};
use sdp_reconciler::desired::{Allocations, Clock, Mode, Settings, compile};
use sdp_reconciler::preview::{Change, Inputs, preview};
use sdp_reconciler::sets::{BRANCH, Branches, GENERATED_BY, generate, matches, sandbox_name, with_generated};

struct Repo {
    sandboxes: Vec<Arc<Sandbox>>,
    templates: Vec<Sandbox>,
    environments: Vec<Environment>,
    sets: Vec<SandboxSet>,
}

/// The examples: qa-login-error, the account-testing template and the account-features set (prefix `acct`,
/// `feature/*`, max 5, expireAfter 3d).
fn examples() -> Repo {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let set = ConfigSet::load_repo(&root).unwrap();
    assert!(set.is_valid(), "{:?}", set.problems);
    Repo {
        sandboxes: set.sandboxes.into_iter().map(|o| Arc::new(o.value)).collect(),
        templates: set.templates.into_iter().map(|o| o.value).collect(),
        environments: set.environments.into_iter().map(|o| o.value).collect(),
        sets: set.sets.into_iter().map(|o| o.value).collect(),
    }
}

fn branches(list: &[&str]) -> Branches {
    [("account".to_string(), list.iter().map(|b| b.to_string()).collect())].into()
}

fn names(list: &[Arc<Sandbox>]) -> Vec<&str> {
    list.iter().map(|s| s.metadata.name.as_str()).collect()
}

#[test]
fn a_plain_branch_keeps_its_name_and_others_get_a_hash() {
    assert_eq!(
        sandbox_name("acct", "feature/*", "feature/login-error"),
        "acct-login-error"
    );
    assert_eq!(sandbox_name("acct", "feature/*", "feature/b2"), "acct-b2");
    // Upper case, `/`, `_` and `--` are not in a DNS label: the slug is followed by a hash of the branch.
    let upper = sandbox_name("acct", "feature/*", "feature/Login");
    let lower = sandbox_name("acct", "feature/*", "feature/login");
    assert_eq!(lower, "acct-login");
    assert!(
        upper.starts_with("acct-login--") && upper.len() == "acct-login--".len() + 8,
        "{upper}"
    );
    let a = sandbox_name("acct", "feature/*", "feature/a_b");
    let b = sandbox_name("acct", "feature/*", "feature/a.b");
    assert_ne!(a, b);
    assert_ne!(a, sandbox_name("acct", "feature/*", "feature/a-b"));
    // Too long: cut, with the hash.
    let long = sandbox_name("acct", "feature/*", &format!("feature/{}", "x".repeat(60)));
    assert_eq!(long.len(), 40, "{long}");
    // A pattern without `*` names by the whole branch.
    assert_eq!(sandbox_name("rel", "main", "main"), "rel-main");
}

fn branch_name() -> impl Strategy<Value = String> {
    prop_oneof![
        "feature/[a-z0-9-]{1,50}",
        "feature/[A-Za-z0-9._/-]{1,60}",
        "[a-zA-Z0-9._-]{1,20}/[a-zA-Z0-9._-]{1,20}",
    ]
}

proptest! {
    #[test]
    fn names_are_stable_short_dns_labels_and_distinct(
        prefix in "[a-z]([a-z0-9-]{0,22}[a-z0-9])?",
        a in branch_name(),
        b in branch_name(),
    ) {
        let name_a = sandbox_name(&prefix, "feature/*", &a);
        prop_assert_eq!(&name_a, &sandbox_name(&prefix, "feature/*", &a));
        prop_assert!(rules::object_name("sandbox name", &name_a).is_ok(), "{}", name_a);
        prop_assert!(name_a.len() <= 40);
        let head = format!("{prefix}-");
        prop_assert!(name_a.starts_with(&head));
        if a != b {
            prop_assert_ne!(name_a, sandbox_name(&prefix, "feature/*", &b));
        }
    }
}

#[test]
fn only_star_is_a_wildcard() {
    assert!(matches("feature/*", "feature/x/y"));
    assert!(!matches("feature/*", "hotfix/x"));
    assert!(!matches("feature/?", "feature/a"));
    assert!(matches("feature/?", "feature/?"));
    assert!(matches("*-rc", "v1-rc"));
}

#[test]
fn the_set_makes_the_template_with_the_service_on_each_matching_branch() {
    let repo = examples();
    let generated = generate(
        &repo.sets,
        &repo.templates,
        &branches(&["develop", "feature/login-error", "feature/b", "hotfix/x"]),
        &repo.sandboxes,
    );
    assert_eq!(names(&generated.sandboxes), ["acct-b", "acct-login-error"]);
    assert!(generated.skipped.is_empty());
    let template = repo
        .templates
        .iter()
        .find(|t| t.metadata.name == "account-testing")
        .unwrap();
    let sb = &generated.sandboxes[1];
    assert_eq!(sb.kind, sdp_manifest::Kind::Sandbox);
    assert_eq!(sb.spec.services["account"].branch, "feature/login-error");
    assert_eq!(sb.spec.gateway, template.spec.gateway);
    assert_eq!(sb.spec.routes, template.spec.routes);
    assert_eq!(sb.spec.expire_after.as_deref(), Some("3d"));
    assert_eq!(sb.metadata.annotations[GENERATED_BY], "account-features");
    assert_eq!(sb.metadata.annotations[BRANCH], "feature/login-error");
    assert_eq!(sb.metadata.owner.as_deref(), Some("backend"));

    // Compiled with the repo's own: the generated sandboxes deploy the branch, on ports of their own.
    let all = with_generated(&repo.sandboxes, &generated);
    let desired = compile(
        &all,
        &repo.environments,
        &Arc::new(Allocations::default()),
        &Settings::default(),
        &Clock::default(),
    );
    assert!(desired.held.is_empty(), "{:?}", desired.held);
    let d = &desired.sandboxes["acct-login-error"];
    assert_eq!(d.mode, Mode::Active);
    assert_eq!(d.services["account"].branch, "feature/login-error");
    assert_eq!(d.services["account"].container, "sandbox-acct-login-error-account");
    let ports: BTreeSet<u16> = desired.allocations.ports.values().copied().collect();
    assert_eq!(ports.len(), desired.allocations.ports.len(), "every port once");
}

#[test]
fn the_cap_takes_branches_in_name_order_and_lists_the_rest_as_skipped() {
    let mut repo = examples();
    repo.sets[0].spec.max = Some(2);
    let generated = generate(
        &repo.sets,
        &repo.templates,
        &branches(&["feature/c", "feature/a", "feature/b"]),
        &repo.sandboxes,
    );
    assert_eq!(names(&generated.sandboxes), ["acct-a", "acct-b"]);
    assert_eq!(generated.skipped.len(), 1);
    assert_eq!(generated.skipped[0].branch, "feature/c");
    assert!(
        generated.skipped[0].reason.contains("over the cap of 2"),
        "{:?}",
        generated.skipped
    );
}

#[test]
fn a_name_taken_by_the_repo_is_skipped_and_does_not_count_against_the_cap() {
    let mut repo = examples();
    repo.sets[0].spec.max = Some(1);
    repo.sets[0].spec.name_prefix = Some("qa".into());
    let generated = generate(
        &repo.sets,
        &repo.templates,
        &branches(&["feature/login-error", "feature/z"]),
        &repo.sandboxes,
    );
    assert_eq!(names(&generated.sandboxes), ["qa-z"]);
    assert_eq!(generated.skipped.len(), 1);
    assert!(generated.skipped[0].reason.contains("taken"));
}

#[test]
fn keep_idle_never_expires_and_a_repo_never_listed_makes_nothing() {
    let mut repo = examples();
    repo.sets[0].spec.keep_idle = true;
    let generated = generate(&repo.sets, &repo.templates, &branches(&["feature/a"]), &repo.sandboxes);
    assert_eq!(generated.sandboxes[0].spec.expire_after, None);

    let generated = generate(&repo.sets, &repo.templates, &Branches::new(), &repo.sandboxes);
    assert!(generated.sandboxes.is_empty());
    assert!(generated.waiting["account-features"].contains("not been listed"));
}

#[test]
fn idle_past_expire_after_suspends_a_generated_sandbox() {
    let repo = examples();
    let generated = generate(&repo.sets, &repo.templates, &branches(&["feature/a"]), &repo.sandboxes);
    let all = with_generated(&repo.sandboxes, &generated);
    let clock = Clock {
        now: 10 * 86400,
        last_activity: [("acct-a".to_string(), 6 * 86400)].into(),
    };
    let desired = compile(
        &all,
        &repo.environments,
        &Arc::new(Allocations::default()),
        &Settings::default(),
        &clock,
    );
    assert!(matches!(desired.sandboxes["acct-a"].mode, Mode::Suspended(_)));
}

#[test]
fn a_gone_branch_takes_its_sandbox_out_of_the_plan() {
    let repo = examples();
    let before = with_generated(
        &repo.sandboxes,
        &generate(
            &repo.sets,
            &repo.templates,
            &branches(&["feature/a", "feature/b"]),
            &repo.sandboxes,
        ),
    );
    let after = with_generated(
        &repo.sandboxes,
        &generate(&repo.sets, &repo.templates, &branches(&["feature/b"]), &repo.sandboxes),
    );
    let inputs = Inputs {
        current: before,
        ..Inputs::default()
    };
    let p = preview(&after, &repo.environments, &inputs);
    let change = |name: &str| p.sandboxes.iter().find(|s| s.name == name).unwrap().change;
    assert_eq!(change("acct-a"), Change::Removed);
    assert_eq!(change("acct-b"), Change::Unchanged);
}

fn desired_names(c: &sdp_reconciler::controller::Controller) -> Vec<String> {
    c.world().desired.sandboxes.keys().cloned().collect()
}

#[tokio::test]
async fn the_controller_remakes_the_sets_when_branches_change_and_keeps_them_when_listing_fails() {
    use sdp_reconciler::controller::Controller;
    use sdp_reconciler::hub::Hub;
    use sdp_reconciler::source::{Origin, Source};
    use sdp_reconciler::store::Store;
    use std::time::Duration;

    let repo = common::repo::Repo::new();
    let data = tempfile::tempdir().unwrap();
    let start = || {
        let (tx, _rx) = tokio::sync::mpsc::channel(16);
        let hub = Arc::new(Hub::new("test-token-0123456789abcdef".into(), tx));
        let store = Store::open(data.path()).unwrap();
        Controller::new(hub, store, Settings::default(), Duration::from_secs(3600)).unwrap()
    };
    let controller = start();
    let mut source = Source::new(Origin::Local(repo.dir.clone()));
    controller.set_snapshot(source.refresh().unwrap().unwrap());
    // Never listed: the set makes nothing yet.
    assert_eq!(desired_names(&controller), ["qa-login-error"]);

    controller.set_branches(
        "account",
        vec!["feature/b".into(), "develop".into(), "feature/a".into()],
    );
    assert_eq!(desired_names(&controller), ["acct-a", "acct-b", "qa-login-error"]);
    assert_eq!(
        controller.world().desired.sandboxes["acct-a"].services["account"].branch,
        "feature/a"
    );

    // No agent serves the repository: the listing fails, and the last list stands.
    controller.list_branches().await;
    assert_eq!(desired_names(&controller), ["acct-a", "acct-b", "qa-login-error"]);

    // A set that stops validating, or whose template is deleted, keeps its last valid spec and its sandboxes.
    let set_file = "sandboxsets/account-features.yaml";
    let good = std::fs::read_to_string(repo.dir.join(set_file)).unwrap();
    repo.write(set_file, &good.replace("max: 5", "max: 500"));
    repo.git(&["rm", "-q", "templates/account-testing.yaml"]);
    repo.git(&["commit", "-qam", "a typo, a template gone"]);
    let snapshot = source.refresh().unwrap().unwrap();
    assert!(!snapshot.problems.is_empty());
    controller.set_snapshot(snapshot);
    assert_eq!(desired_names(&controller), ["acct-a", "acct-b", "qa-login-error"]);

    // feature/a deleted: its sandbox leaves the desired state (its pass removes it); feature/b's stays.
    controller.set_branches("account", vec!["develop".into(), "feature/b".into()]);
    assert_eq!(desired_names(&controller), ["acct-b", "qa-login-error"]);

    // The list is stored: a restarted reconciler makes the same sandboxes before any listing.
    drop(controller);
    repo.write(set_file, &good);
    repo.git(&["checkout", "-q", "HEAD~1", "--", "templates/account-testing.yaml"]);
    repo.git(&["commit", "-qam", "fixed"]);
    let controller = start();
    let mut source = Source::new(Origin::Local(repo.dir.clone()));
    controller.set_snapshot(source.refresh().unwrap().unwrap());
    assert_eq!(desired_names(&controller), ["acct-b", "qa-login-error"]);
}
