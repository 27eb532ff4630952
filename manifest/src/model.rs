//! The manifest types as users write them in the config repo.
//!
//! These are plain data: every rule that needs more than a type (names, branches, URLs, ports, durations)
//! lives in `validate.rs`, so that an error can point at the exact `file:line:column` of the bad value.

use std::collections::BTreeMap;
use std::fmt;

use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The only `apiVersion` this build understands.
pub const API_VERSION: &str = "sdp/v1";

/// What a document declares itself to be.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema)]
pub enum Kind {
    /// A sandbox that the reconciler deploys.
    Sandbox,
    /// A sandbox spec that is never deployed; `sdp new sandbox --from-template` copies it.
    SandboxTemplate,
    /// Variables, secret file references and files that services pull in by name.
    Environment,
    /// A sandbox per branch of a service repo whose name matches a pattern, made from a template.
    SandboxSet,
}

impl Kind {
    pub const ALL: [Kind; 4] = [
        Kind::Sandbox,
        Kind::SandboxTemplate,
        Kind::Environment,
        Kind::SandboxSet,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Sandbox => "Sandbox",
            Kind::SandboxTemplate => "SandboxTemplate",
            Kind::Environment => "Environment",
            Kind::SandboxSet => "SandboxSet",
        }
    }

    pub fn parse(s: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// The folder of a config repo where objects of this kind live.
    pub fn folder(self) -> &'static str {
        match self {
            Kind::Sandbox => "sandboxes",
            Kind::SandboxTemplate => "templates",
            Kind::Environment => "environments",
            Kind::SandboxSet => "sandboxsets",
        }
    }

    /// The file name of this kind's JSON Schema under `schemas/`.
    pub fn schema_file(self) -> &'static str {
        match self {
            Kind::Sandbox => "sandbox.json",
            Kind::SandboxTemplate => "sandboxtemplate.json",
            Kind::Environment => "environment.json",
            Kind::SandboxSet => "sandboxset.json",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Name and bookkeeping of an object.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Metadata {
    /// DNS label of 1 to 40 characters (lowercase letters, digits, `-`): container, network and URL names derive
    /// from it.
    pub name: String,
    /// Who looks after this object. Informational: the audit trail uses the commit author.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// Free-form notes, and stamps that SDP's CLI writes (such as a restart request).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// A `Sandbox` or a `SandboxTemplate`: one document with the same shape for both kinds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Sandbox {
    /// Always `sdp/v1`.
    pub api_version: String,
    /// `Sandbox` or `SandboxTemplate`.
    pub kind: Kind,
    pub metadata: Metadata,
    pub spec: SandboxSpec,
}

/// What a sandbox runs and where its gateway sends each service.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SandboxSpec {
    /// The sandbox's own API gateway (erangel).
    pub gateway: GatewaySpec,
    /// The microservices this sandbox runs, by service name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub services: BTreeMap<String, ServiceSpec>,
    /// Where this sandbox's gateway sends each service: `sandbox`, `ocp` (the default for any service not
    /// listed) or an explicit `http(s)://` URL.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub routes: BTreeMap<String, Route>,
    /// `true` stops the containers but keeps configuration and ports.
    #[serde(default, skip_serializing_if = "is_false")]
    pub suspend: bool,
    /// Idle time before the sandbox is suspended, then removed after the retention period: `90m`, `36h`,
    /// `14d`, `2w`, or combinations such as `1d12h`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expire_after: Option<String>,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// The gateway of one sandbox.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GatewaySpec {
    /// Branch of the gateway repository to run.
    pub branch: String,
    /// A pin: the full commit id (40 lowercase hex digits) to run instead of the branch's head. Pushes to the
    /// branch do not move a pinned gateway; the commit need not be on the branch, only in the repository.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[0-9a-f]{40}$"))]
    pub commit: Option<String>,
    /// Host port of the gateway. Allocated from the gateway range when absent, then kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u32>,
    /// Environments merged in order; `env` goes on top (as for a service).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub environments: Vec<String>,
    /// Plain environment variables of the gateway container.
    #[serde(default, skip_serializing_if = "Vars::is_empty")]
    pub env: Vars,
}

/// One microservice of a sandbox.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServiceSpec {
    /// Branch of the service's repository to build and run.
    pub branch: String,
    /// A pin: the full commit id (40 lowercase hex digits) to build and run instead of the branch's head. Pushes
    /// to the branch do not move a pinned service; the commit need not be on the branch, only in the repository.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[0-9a-f]{40}$"))]
    pub commit: Option<String>,
    /// Environments merged in order; `env` goes on top.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub environments: Vec<String>,
    /// Plain environment variables. Secret values never go here: use an Environment's `secrets` with a file
    /// reference.
    #[serde(default, skip_serializing_if = "Vars::is_empty")]
    pub env: Vars,
    /// Host port of the service. Allocated from the service range when absent, then kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<Resources>,
    /// An HTTP path the agent GETs on the service's published port every 15 s, such as `/healthz`: an answer
    /// below 400 is healthy; anything else (or none within 2 s) makes the sandbox Degraded. Without it, health comes from
    /// the container's state and restarts alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_path: Option<String>,
    /// How the agent builds the service: the package (`./cmd/account`), build tags and linker flags.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build: Option<Build>,
}

/// Plain environment variables, in name order: a map in YAML and JSON, a sorted list in memory. A service has a
/// handful; as a `BTreeMap`, even one variable took a 540-byte node, and 1,000 sandboxes of 10 services hold
/// 10,000 of them (5 MB of the reconciler's 40 MB).
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Vars(Vec<(String, String)>);

impl Vars {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn get(&self, name: &str) -> Option<&String> {
        self.find(name).ok().map(|i| &self.0[i].1)
    }

    /// Sets `name` to `value`, keeping the name order; the value it had, if any.
    pub fn insert(&mut self, name: String, value: String) -> Option<String> {
        match self.find(&name) {
            Ok(i) => Some(std::mem::replace(&mut self.0[i].1, value)),
            Err(i) => {
                self.0.insert(i, (name, value));
                None
            }
        }
    }

    pub fn iter(&self) -> impl ExactSizeIterator<Item = (&String, &String)> {
        self.0.iter().map(|(k, v)| (k, v))
    }

    pub fn keys(&self) -> impl ExactSizeIterator<Item = &String> {
        self.0.iter().map(|(k, _)| k)
    }

    fn find(&self, name: &str) -> Result<usize, usize> {
        self.0.binary_search_by(|(k, _)| k.as_str().cmp(name))
    }
}

/// A later value of a name wins, as in a map.
impl FromIterator<(String, String)> for Vars {
    fn from_iter<I: IntoIterator<Item = (String, String)>>(iter: I) -> Self {
        Vars(by_name_last_wins(iter.into_iter().collect(), |(name, _)| name.as_str()))
    }
}

/// `entries` sorted by name, keeping of a name given more than once the entry given last, as a map does. Sorted
/// once: inserting each into a sorted list is quadratic for names given in reverse order, and the names may come
/// from a hostile writer (a container's labels, a manifest). The sort is stable, so the entry given last of equal
/// names stays last and is the one kept.
pub fn by_name_last_wins<T>(mut entries: Vec<T>, name: impl Fn(&T) -> &str) -> Vec<T> {
    entries.sort_by(|a, b| name(a).cmp(name(b)));
    let mut kept: Vec<T> = Vec::with_capacity(entries.len());
    for entry in entries {
        match kept.last_mut() {
            Some(last) if name(last) == name(&entry) => *last = entry,
            _ => kept.push(entry),
        }
    }
    kept
}

impl<const N: usize> From<[(String, String); N]> for Vars {
    fn from(vars: [(String, String); N]) -> Self {
        vars.into_iter().collect()
    }
}

impl<'a> IntoIterator for &'a Vars {
    type Item = (&'a String, &'a String);
    type IntoIter = std::iter::Map<std::slice::Iter<'a, (String, String)>, fn(&'a (String, String)) -> Self::Item>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.iter().map(|(k, v)| (k, v))
    }
}

impl Serialize for Vars {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.iter())
    }
}

/// A name given twice is refused, as YAML says a mapping's keys are unique (a `BTreeMap` kept the last silently).
impl<'de> Deserialize<'de> for Vars {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = Vars;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a map of variable names to string values")
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Vars, A::Error> {
                let mut vars: Vec<(String, String)> = Vec::with_capacity(map.size_hint().unwrap_or(0).min(64));
                while let Some((name, value)) = map.next_entry::<String, String>()? {
                    vars.push((name, value));
                }
                vars.sort_by(|a, b| a.0.cmp(&b.0));
                if let Some(twice) = vars.windows(2).find(|w| w[0].0 == w[1].0) {
                    return Err(serde::de::Error::custom(format_args!(
                        "variable {} is given twice",
                        twice[0].0
                    )));
                }
                vars.shrink_to_fit();
                Ok(Vars(vars))
            }
        }
        deserializer.deserialize_map(Visitor)
    }
}

impl JsonSchema for Vars {
    fn inline_schema() -> bool {
        true
    }

    fn schema_name() -> std::borrow::Cow<'static, str> {
        <BTreeMap<String, String>>::schema_name()
    }

    fn json_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
        <BTreeMap<String, String>>::json_schema(generator)
    }
}

/// How `go build` is run for a service. Only what a team needs and what cannot run a program on the VM: a package
/// inside the repository, build tags, and the linker flags `-s`, `-w` and `-X importpath.name=value`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Build {
    /// The main package, relative to the repository root: `.` (the default) or `./cmd/<name>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub package: Option<String>,
    /// Build tags (`go build -tags`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    /// Linker flags (`go build -ldflags`): `-s`, `-w` and `-X importpath.name=value` only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ldflags: Option<String>,
}

/// CPU and memory limits of a container.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Resources {
    /// CPU limit in cores, such as `0.5` or `2`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpus: Option<f64>,
    /// Memory limit: bytes, or a number with `Ki`, `Mi`, `Gi` (powers of 1024) or `K`, `M`, `G` (powers of 1000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<String>,
}

/// Where a sandbox's gateway sends one service.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Route {
    /// To this sandbox's own container of the service.
    Sandbox,
    /// To the shared OpenShift environment, at the URL the gateway branch's own config.php holds.
    Ocp,
    /// To an explicit URL (checked by validation: plain `http(s)://`, nothing that could leave a PHP string).
    Url(String),
}

impl Route {
    pub fn as_str(&self) -> &str {
        match self {
            Route::Sandbox => "sandbox",
            Route::Ocp => "ocp",
            Route::Url(url) => url,
        }
    }
}

impl fmt::Display for Route {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<&str> for Route {
    fn from(s: &str) -> Route {
        match s {
            "sandbox" => Route::Sandbox,
            "ocp" => Route::Ocp,
            url => Route::Url(url.to_string()),
        }
    }
}

impl Serialize for Route {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Route {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        Ok(Route::from(s.as_str()))
    }
}

impl JsonSchema for Route {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Route".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "`sandbox`, `ocp`, or a plain http(s) URL without quotes, backslashes, whitespace or `$`",
            "anyOf": [
                { "enum": ["sandbox", "ocp"] },
                { "type": "string", "pattern": "^https?://[^\\s'\"\\\\$]+$" }
            ]
        })
    }
}

/// A sandbox per branch: for every branch of `service`'s repository whose name matches `branches`, a sandbox made
/// from `template` with that service on that branch. The sandboxes are not files in the repo: the reconciler makes
/// them from the branches the agents list, and removes one when its branch is gone.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SandboxSet {
    /// Always `sdp/v1`.
    pub api_version: String,
    /// Always `SandboxSet`.
    pub kind: Kind,
    pub metadata: Metadata,
    pub spec: SandboxSetSpec,
}

/// What a SandboxSet makes, and how many.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SandboxSetSpec {
    /// The SandboxTemplate each sandbox is made from.
    pub template: String,
    /// The service (and repository) whose branches make sandboxes; it must be one of the template's services.
    pub service: String,
    /// The branches that make a sandbox: a branch name where `*` stands for any characters, `/` included, such
    /// as `feature/*`. No other wildcard.
    pub branches: String,
    /// The first part of each sandbox's name (`<namePrefix>-<branch slug>`): a DNS label of at most 24
    /// characters. The set's own name when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[a-z0-9]([a-z0-9-]{0,22}[a-z0-9])?$"))]
    pub name_prefix: Option<String>,
    /// At most this many sandboxes, 1 to 50 (10 when absent): the branches are taken in name order (byte order),
    /// and the ones past the cap are listed as skipped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 50))]
    pub max: Option<u32>,
    /// Idle time before a generated sandbox is suspended (as a sandbox's `expireAfter`); the template's when
    /// absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expire_after: Option<String>,
    /// `true`: a generated sandbox never expires; it runs until its branch is deleted.
    #[serde(default, skip_serializing_if = "is_false")]
    pub keep_idle: bool,
}

impl SandboxSet {
    /// The cap when `max` is absent.
    pub const DEFAULT_MAX: u32 = 10;

    /// The first part of each generated sandbox's name.
    pub fn name_prefix(&self) -> &str {
        self.spec.name_prefix.as_deref().unwrap_or(&self.metadata.name)
    }

    /// How many sandboxes the set makes at most.
    pub fn max(&self) -> usize {
        self.spec.max.unwrap_or(Self::DEFAULT_MAX) as usize
    }
}

/// Variables, secret file references and files shared by the services that name this environment.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Environment {
    /// Always `sdp/v1`.
    pub api_version: String,
    /// Always `Environment`.
    pub kind: Kind,
    pub metadata: Metadata,
    #[serde(default)]
    pub spec: EnvironmentSpec,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EnvironmentSpec {
    /// Plain environment variables.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub variables: BTreeMap<String, String>,
    /// Secret environment variables, each a reference to a file on the VM that the agent reads at deploy time.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub secrets: BTreeMap<String, SecretRef>,
    /// Files by relative path and content: the agent writes them under its data dir at each deploy and mounts
    /// each read-only into the container at that path under the working directory (the worktree's mount).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub files: BTreeMap<String, String>,
}

/// Where the value of a secret lives on the VM. The value itself never enters the config repo.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SecretRef {
    /// Absolute path of the file on the VM that holds the value.
    pub file: String,
}

impl<'de> Deserialize<'de> for SecretRef {
    /// A plain string here is an inline secret value. It is refused with a message that never repeats it.
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase", deny_unknown_fields)]
        struct FileRef {
            file: String,
        }

        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = SecretRef;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a file reference such as { file: /etc/sdp/secrets/name }")
            }

            fn visit_str<E: serde::de::Error>(self, _: &str) -> Result<SecretRef, E> {
                Err(E::custom(INLINE_SECRET))
            }

            fn visit_i64<E: serde::de::Error>(self, _: i64) -> Result<SecretRef, E> {
                Err(E::custom(INLINE_SECRET))
            }

            fn visit_u64<E: serde::de::Error>(self, _: u64) -> Result<SecretRef, E> {
                Err(E::custom(INLINE_SECRET))
            }

            fn visit_f64<E: serde::de::Error>(self, _: f64) -> Result<SecretRef, E> {
                Err(E::custom(INLINE_SECRET))
            }

            fn visit_bool<E: serde::de::Error>(self, _: bool) -> Result<SecretRef, E> {
                Err(E::custom(INLINE_SECRET))
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<SecretRef, A::Error> {
                let r = FileRef::deserialize(serde::de::value::MapAccessDeserializer::new(map))?;
                Ok(SecretRef { file: r.file })
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

/// The message for a secret written inline. It must never contain the value.
pub(crate) const INLINE_SECRET: &str = "secret value written inline; secret values never go into the config repo";

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    proptest! {
        /// Whatever the order and repeats, the same as inserting each into a map: sorted, the last value kept.
        #[test]
        fn entries_by_name_are_what_a_map_keeps(entries in prop::collection::vec(("[a-d]{0,2}", 0u8..4), 0..24)) {
            let map: BTreeMap<String, u8> = entries.iter().cloned().collect();
            let kept = by_name_last_wins(entries, |(name, _)| name.as_str());
            prop_assert_eq!(kept, map.into_iter().collect::<Vec<_>>());
        }
    }
}
