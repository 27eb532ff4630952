//! `sdp validate`: every problem of a config repo or of single files, as text or JSON.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use sdp_manifest::ConfigSet;

pub fn run(paths: &[PathBuf], json: bool) -> Result<ExitCode> {
    let set = ConfigSet::load_paths(paths);
    if json {
        let answer = serde_json::json!({
            "valid": set.is_valid(),
            "problems": set.problems,
            "notes": set.notes,
            "objects": {
                "sandboxes": set.sandboxes.len(),
                "templates": set.templates.len(),
                "environments": set.environments.len(),
            },
        });
        println!("{}", serde_json::to_string_pretty(&answer)?);
    } else {
        super::print_problems(&set.problems);
        for note in &set.notes {
            eprintln!("note: {note}");
        }
        if set.is_valid() {
            println!(
                "valid: {} sandboxes, {} templates, {} environments",
                set.sandboxes.len(),
                set.templates.len(),
                set.environments.len()
            );
        } else {
            let mut files: Vec<_> = set.problems.iter().map(|p| &p.file).collect();
            files.sort();
            files.dedup();
            eprintln!("{} problem(s) in {} file(s)", set.problems.len(), files.len());
        }
    }
    Ok(if set.is_valid() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
