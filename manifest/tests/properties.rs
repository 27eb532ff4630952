//! Properties over many generated inputs: a valid Sandbox written out loads back equal, and the loader never
//! panics, whatever it is given.

use std::collections::BTreeMap;
use std::path::Path;

use proptest::prelude::*;
use sdp_manifest::{
    API_VERSION, GatewaySpec, Kind, Metadata, Parsed, Resources, Route, Sandbox, SandboxSpec, ServiceSpec,
};

fn label() -> impl Strategy<Value = String> {
    "[a-z][a-z0-9-]{0,18}[a-z0-9]"
}

fn branch() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("develop".to_string()),
        "(feature|fix|release)/[a-z0-9][a-z0-9._-]{0,20}[a-z0-9]"
    ]
    .prop_filter("git rules", |b| sdp_manifest::rules::branch(b).is_ok())
}

fn env_map() -> impl Strategy<Value = BTreeMap<String, String>> {
    prop::collection::btree_map("[A-Z][A-Z0-9_]{0,10}", "[ -~]{0,20}", 0..4).prop_filter(
        "no secret-looking names",
        |m| {
            m.keys()
                .all(|k| sdp_manifest::rules::plain_variable_not_secret(k).is_ok())
        },
    )
}

fn service() -> impl Strategy<Value = ServiceSpec> {
    (
        branch(),
        prop::collection::vec(label(), 0..3),
        env_map(),
        prop::option::of(1024u32..=65535),
        prop::option::of((prop::option::of(1u32..=64), prop::option::of(6u32..4096))),
        prop::option::of("/[a-z0-9/_.-]{0,20}"),
        prop::option::of("[0-9a-f]{40}"),
    )
        .prop_map(
            |(branch, environments, env, port, res, health_path, commit)| ServiceSpec {
                branch,
                commit,
                environments,
                env: env.into_iter().collect(),
                port,
                resources: res.map(|(quarters, mib)| Resources {
                    cpus: quarters.map(|q| f64::from(q) / 4.0),
                    memory: mib.map(|m| format!("{m}Mi")),
                }),
                health_path,
                build: None,
            },
        )
}

fn sandbox() -> impl Strategy<Value = Sandbox> {
    (
        label(),
        prop::option::of("[a-z]{1,10}"),
        (branch(), prop::option::of("[0-9a-f]{40}")),
        prop::option::of(1024u32..=65535),
        prop::collection::btree_map("[a-z][a-z0-9]{0,12}", service(), 0..5),
        prop::collection::btree_map("[a-z][a-z0-9]{0,12}", 0..3usize, 0..5),
        any::<bool>(),
        prop::option::of((1u32..400, prop::sample::select(vec!["m", "h", "d", "w"]))),
        any::<bool>(),
    )
        .prop_map(
            |(name, owner, gw, gw_port, services, routes, suspend, expire, template)| {
                let mut services = services;
                services.remove("gateway");
                let routes = routes
                    .into_iter()
                    .map(|(svc, pick)| {
                        let route = match pick {
                            0 if services.contains_key(&svc) => Route::Sandbox,
                            2 => Route::Url(format!("http://10.1.2.3:{}/{svc}", 9000 + svc.len())),
                            _ => Route::Ocp,
                        };
                        (svc, route)
                    })
                    .collect();
                let template = template && gw_port.is_none() && services.values().all(|s| s.port.is_none());
                Sandbox {
                    api_version: API_VERSION.to_string(),
                    kind: if template { Kind::SandboxTemplate } else { Kind::Sandbox },
                    metadata: Metadata {
                        name,
                        owner,
                        annotations: BTreeMap::new(),
                    },
                    spec: SandboxSpec {
                        gateway: GatewaySpec {
                            branch: gw.0,
                            commit: gw.1,
                            port: gw_port,
                            environments: Vec::new(),
                            env: Default::default(),
                        },
                        services,
                        routes,
                        suspend,
                        expire_after: expire.map(|(n, unit)| format!("{n}{unit}")),
                    },
                }
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn a_valid_sandbox_written_out_loads_back_equal(sb in sandbox()) {
        let text = serde_saphyr::to_string(&sb).unwrap();
        let (parsed, problems) = sdp_manifest::parse_str(Path::new("gen.yaml"), &text);
        prop_assert!(problems.is_empty(), "{:?}\n{}", problems, text);
        prop_assert_eq!(parsed.len(), 1);
        let back = match &parsed[0] {
            Parsed::Sandbox(o) | Parsed::Template(o) => o.value.clone(),
            Parsed::Environment(_) | Parsed::SandboxSet(_) => panic!("another kind came back"),
        };
        prop_assert_eq!(back, sb);
    }

    #[test]
    fn the_loader_never_panics_on_any_text(text in any::<String>()) {
        let _ = sdp_manifest::parse_str(Path::new("any.yaml"), &text);
    }

    #[test]
    fn the_loader_never_panics_on_yaml_like_text(
        text in prop::collection::vec(
            prop_oneof![
                Just("apiVersion: sdp/v1\n"), Just("kind: Sandbox\n"), Just("kind: Environment\n"), Just("---\n"),
                Just("metadata:\n"), Just("  name: x\n"), Just("spec:\n"), Just("  gateway: {branch: a}\n"),
                Just("  services:\n"), Just("    a: &x {branch: b, port: 9001}\n"), Just("    b: *x\n"), Just("- "),
                Just("\t"), Just(": "), Just("{"), Just("}"), Just("["), Just("]"), Just("'"), Just("\""), Just("|\n"),
                Just("<<: *x\n"), Just("...\n"), Just("%YAML 1.2\n"), Just("!!str "), Just("#c\n"), Just("  "),
                Just("\n"), Just("é"), Just("\u{feff}"),
            ],
            0..40,
        ).prop_map(|parts| parts.concat())
    ) {
        let _ = sdp_manifest::parse_str(Path::new("yamlish.yaml"), &text);
    }
}
