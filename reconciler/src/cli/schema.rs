//! `sdp schema`: the JSON Schema of each kind, for editors and for other validators.

use std::fs;
use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, Result};

pub fn run(out: &Path) -> Result<ExitCode> {
    fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    for (file, text) in sdp_manifest::schemas() {
        let path = out.join(file);
        fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
        println!("wrote {}", path.display());
    }
    Ok(ExitCode::SUCCESS)
}
