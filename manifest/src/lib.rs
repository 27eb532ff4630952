//! SDP's manifests: the kinds users write into the config repo, how they are read, and what makes them valid.
//!
//! - `model`: the types (`Sandbox`, `SandboxTemplate` as a `Sandbox` of that kind, `Environment`, `Route`).
//! - `load`: a file's text to typed objects, one document at a time, with `file:line:column` problems.
//! - `validate` and `rules`: the checks that types cannot express.
//! - `repo`: a whole config repo or set of files, with the checks across objects.
//! - `schema`: the JSON Schema of each kind.

mod load;
mod locate;
mod model;
mod problem;
mod repo;
pub mod rules;
mod schema;
mod validate;

pub use load::{DocSpan, MAX_FILE_BYTES, Object, Parsed, Source, parse_str, split_documents};
pub use locate::{Index, Place, Pos};
pub use model::*;
pub use problem::{ObjectRef, Problem};
pub use repo::{ConfigSet, InputFile, read_capped};
pub use schema::{schema_json, schemas};
