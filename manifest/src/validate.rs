//! Semantic checks: what the types cannot say. Per object here; across objects in `repo.rs`.

use crate::load::Source;
use crate::model::{Environment, Route, Sandbox, SandboxSet};
use crate::problem::Problem;
use crate::rules::{self, Broken};

fn push(out: &mut Vec<Problem>, source: &Source, path: &[&str], key: bool, result: Result<(), Broken>) {
    if let Err(b) = result {
        let p = if key {
            source.problem_at_key(path, b.message)
        } else {
            source.problem_at(path, b.message)
        };
        out.push(Problem { hint: b.hint, ..p });
    }
}

/// Checks of a Sandbox or SandboxTemplate that need nothing but the object itself.
pub(crate) fn sandbox(sb: &Sandbox, src: &Source, out: &mut Vec<Problem>) {
    let what = if sb.kind == crate::Kind::Sandbox {
        "sandbox name"
    } else {
        "template name"
    };
    push(
        out,
        src,
        &["metadata", "name"],
        false,
        rules::object_name(what, &sb.metadata.name),
    );
    let spec = &sb.spec;
    push(
        out,
        src,
        &["spec", "gateway", "branch"],
        false,
        rules::branch(&spec.gateway.branch),
    );
    if let Some(commit) = &spec.gateway.commit {
        push(
            out,
            src,
            &["spec", "gateway", "commit"],
            false,
            rules::commit_id(commit),
        );
    }
    if let Some(port) = spec.gateway.port {
        push(out, src, &["spec", "gateway", "port"], false, rules::port(port));
    }
    environments_and_env(
        &["spec", "gateway"],
        &spec.gateway.environments,
        &spec.gateway.env,
        src,
        out,
    );
    for (name, svc) in &spec.services {
        let at = |field: &'static str| ["spec", "services", name.as_str(), field];
        push(out, src, &["spec", "services", name], true, rules::service_name(name));
        push(out, src, &at("branch"), false, rules::branch(&svc.branch));
        if let Some(commit) = &svc.commit {
            push(out, src, &at("commit"), false, rules::commit_id(commit));
        }
        if let Some(port) = svc.port {
            push(out, src, &at("port"), false, rules::port(port));
        }
        environments_and_env(
            &["spec", "services", name.as_str()],
            &svc.environments,
            &svc.env,
            src,
            out,
        );
        if let Some(build) = &svc.build {
            if let Some(package) = &build.package {
                let path = ["spec", "services", name.as_str(), "build", "package"];
                push(out, src, &path, false, rules::go_package(package));
            }
            for (i, tag) in build.tags.iter().enumerate() {
                let i = i.to_string();
                let path = ["spec", "services", name.as_str(), "build", "tags", i.as_str()];
                push(out, src, &path, false, rules::build_tag(tag));
            }
            if let Some(flags) = &build.ldflags {
                let path = ["spec", "services", name.as_str(), "build", "ldflags"];
                push(out, src, &path, false, rules::ldflags(flags));
            }
        }
        if let Some(path) = &svc.health_path {
            push(out, src, &at("healthPath"), false, rules::health_path(path));
        }
        if let Some(res) = &svc.resources {
            if let Some(cpus) = res.cpus {
                let path = ["spec", "services", name.as_str(), "resources", "cpus"];
                push(out, src, &path, false, rules::cpus(cpus));
            }
            if let Some(mem) = &res.memory {
                let path = ["spec", "services", name.as_str(), "resources", "memory"];
                push(out, src, &path, false, rules::memory_bytes(mem).map(drop));
            }
        }
    }
    for (name, route) in &spec.routes {
        let path = ["spec", "routes", name.as_str()];
        push(out, src, &path, true, rules::service_name(name));
        match route {
            Route::Sandbox if !spec.services.contains_key(name) => {
                let p = src
                    .problem_at(
                        &path,
                        format!("route `{name}: sandbox` points at a service this sandbox does not run"),
                    )
                    .hint(format!("add `{name}` under spec.services, or route it to `ocp`"));
                out.push(p);
            }
            Route::Url(url) => push(out, src, &path, false, rules::route_url(url)),
            _ => {}
        }
    }
    if let Some(expire) = &spec.expire_after {
        push(
            out,
            src,
            &["spec", "expireAfter"],
            false,
            rules::duration_secs(expire).map(drop),
        );
    }
}

/// The `environments` and `env` of a service or of the gateway, at `at`.
fn environments_and_env(at: &[&str], environments: &[String], env: &crate::Vars, src: &Source, out: &mut Vec<Problem>) {
    for (i, name) in environments.iter().enumerate() {
        let i = i.to_string();
        let path = [at, &["environments", i.as_str()]].concat();
        push(out, src, &path, false, rules::object_name("environment name", name));
    }
    for var in env.keys() {
        let path = [at, &["env", var.as_str()]].concat();
        push(out, src, &path, true, rules::env_var_name(var));
        push(out, src, &path, true, rules::plain_variable_not_secret(var));
    }
}

/// Checks of an Environment that need nothing but the object itself.
pub(crate) fn environment(env: &Environment, src: &Source, out: &mut Vec<Problem>) {
    push(
        out,
        src,
        &["metadata", "name"],
        false,
        rules::object_name("environment name", &env.metadata.name),
    );
    let spec = &env.spec;
    for var in spec.variables.keys() {
        let path = ["spec", "variables", var.as_str()];
        push(out, src, &path, true, rules::env_var_name(var));
        push(out, src, &path, true, rules::plain_variable_not_secret(var));
    }
    for (var, secret) in &spec.secrets {
        push(out, src, &["spec", "secrets", var], true, rules::env_var_name(var));
        push(
            out,
            src,
            &["spec", "secrets", var, "file"],
            false,
            rules::secret_file(&secret.file),
        );
        if spec.variables.contains_key(var) {
            let p = src
                .problem_at_key(
                    &["spec", "secrets", var],
                    format!("`{var}` is both a variable and a secret"),
                )
                .hint("keep one of them");
            out.push(p);
        }
    }
    for file in spec.files.keys() {
        push(out, src, &["spec", "files", file], true, rules::relative_file(file));
    }
}

/// Checks of a SandboxSet that need nothing but the object itself (its template and service are checked across
/// objects, in `repo.rs`).
pub(crate) fn sandbox_set(set: &SandboxSet, src: &Source, out: &mut Vec<Problem>) {
    push(
        out,
        src,
        &["metadata", "name"],
        false,
        rules::object_name("set name", &set.metadata.name),
    );
    let spec = &set.spec;
    push(
        out,
        src,
        &["spec", "template"],
        false,
        rules::object_name("template name", &spec.template),
    );
    push(
        out,
        src,
        &["spec", "service"],
        false,
        rules::service_name(&spec.service),
    );
    push(
        out,
        src,
        &["spec", "branches"],
        false,
        rules::branch_pattern(&spec.branches),
    );
    // A set name too long for a prefix is fine when `namePrefix` is given.
    let prefix_at: &[&str] = if spec.name_prefix.is_some() {
        &["spec", "namePrefix"]
    } else {
        &["metadata", "name"]
    };
    push(out, src, prefix_at, false, rules::name_prefix(set.name_prefix()));
    if let Some(max) = spec.max {
        push(out, src, &["spec", "max"], false, rules::set_max(max));
    }
    if let Some(expire) = &spec.expire_after {
        push(
            out,
            src,
            &["spec", "expireAfter"],
            false,
            rules::duration_secs(expire).map(drop),
        );
    }
}
