//! `sdp new sandbox NAME --from-template TEMPLATE`: a template cloned by copying its file.

use std::fs;
use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use sdp_manifest::{ConfigSet, Kind, rules};

use crate::change;

pub fn run(repo: &Path, name: &str, template: &str) -> Result<ExitCode> {
    if let Err(b) = rules::object_name("sandbox name", name) {
        bail!("{}{}", b.message, b.hint.map(|h| format!("; {h}")).unwrap_or_default());
    }
    let set =
        ConfigSet::load_repo(repo).with_context(|| format!("cannot read the config repo at {}", repo.display()))?;
    let Some(tpl) = set.templates.iter().find(|t| t.value.metadata.name == template) else {
        let reasons: Vec<String> = set
            .problems
            .iter()
            .filter(|p| {
                p.object
                    .as_ref()
                    .is_some_and(|o| o.kind == Kind::SandboxTemplate && o.name == template)
            })
            .map(|p| p.to_string())
            .collect();
        if !reasons.is_empty() {
            bail!("template `{template}` has problems:\n{}", reasons.join("\n"));
        }
        let known: Vec<&str> = set.templates.iter().map(|t| t.value.metadata.name.as_str()).collect();
        bail!(
            "no template `{template}` in {}/templates (known: {})",
            repo.display(),
            known.join(", ")
        );
    };
    if let Some(existing) = set.source_of(Kind::Sandbox, name) {
        bail!("sandbox `{name}` already exists in {}", existing.file.display());
    }
    let target = repo.join(Kind::Sandbox.folder()).join(format!("{name}.yaml"));
    if target.exists() {
        bail!("{} already exists", target.display());
    }
    let Some(text) = change::from_template(&tpl.source, name) else {
        bail!("cannot find `kind` and `metadata.name` in template `{template}` to rewrite them");
    };
    let (_, problems) = sdp_manifest::parse_str(&target, &text);
    if !problems.is_empty() {
        super::print_problems(&problems);
        bail!("the copy of `{template}` would not be valid; nothing was written");
    }
    fs::create_dir_all(target.parent().unwrap_or(repo))?;
    fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&target)
        .and_then(|mut f| std::io::Write::write_all(&mut f, text.as_bytes()))
        .with_context(|| format!("cannot write {}", target.display()))?;
    println!("wrote {} from template {template}", target.display());
    println!("edit it, then commit it with: sdp apply -f {}", target.display());
    Ok(ExitCode::SUCCESS)
}
