//! One JSON Schema per kind, generated from the types, so editors validate and complete manifests while people
//! type. `schemas/` in the repo holds them; a test fails when they are stale.

use schemars::{JsonSchema, Schema};
use serde_json::{Value, json};

use crate::model::{API_VERSION, Environment, Kind, Sandbox, SandboxSet};

fn for_type<T: JsonSchema>(kind: Kind) -> Schema {
    let mut schema = schemars::generate::SchemaSettings::draft07()
        .into_generator()
        .into_root_schema_for::<T>();
    let title = match kind {
        Kind::Sandbox => "SDP Sandbox",
        Kind::SandboxTemplate => "SDP SandboxTemplate",
        Kind::Environment => "SDP Environment",
        Kind::SandboxSet => "SDP SandboxSet",
    };
    schema.insert("title".into(), json!(title));
    if let Some(Value::Object(props)) = schema.get_mut("properties") {
        props.insert("kind".into(), json!({ "const": kind.as_str() }));
        props.insert("apiVersion".into(), json!({ "const": API_VERSION }));
    }
    // `kind` is pinned above, so the shared enum definition is no longer referenced.
    if let Some(Value::Object(defs)) = schema.get_mut("definitions") {
        defs.remove("Kind");
    }
    schema
}

/// The schema of one kind.
pub fn schema_json(kind: Kind) -> Schema {
    match kind {
        Kind::Sandbox | Kind::SandboxTemplate => for_type::<Sandbox>(kind),
        Kind::Environment => for_type::<Environment>(kind),
        Kind::SandboxSet => for_type::<SandboxSet>(kind),
    }
}

/// Every schema with its file name under `schemas/`, pretty-printed with a final newline.
pub fn schemas() -> Vec<(&'static str, String)> {
    Kind::ALL
        .into_iter()
        .map(|kind| {
            let text = serde_json::to_string_pretty(&schema_json(kind)).unwrap_or_default();
            (kind.schema_file(), text + "\n")
        })
        .collect()
}
