//! The operator's files in deploy/: the systemd units verify, the nginx blocks pass `nginx -t`, every `sdp` and
//! `sdp-agent` command the runbook tells an operator to type is one the binaries accept, and the release build
//! makes static binaries whose --version names the version and commit.

use std::path::{Path, PathBuf};
use std::process::Command;

use sdp_e2e::*;

fn deploy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

fn read(path: &str) -> String {
    std::fs::read_to_string(deploy().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// `Key=value` lines of a unit, by section.
fn unit(text: &str) -> Vec<(String, String, String)> {
    let mut section = String::new();
    let mut out = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        if let Some(s) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = s.to_string();
        } else if let Some((k, v)) = line.split_once('=') {
            out.push((section.clone(), k.to_string(), v.to_string()));
        } else {
            panic!("not a unit line: {line}");
        }
    }
    out
}

fn has(unit: &[(String, String, String)], section: &str, key: &str, value: &str) -> bool {
    unit.iter()
        .any(|(s, k, v)| s == section && k == key && v.contains(value))
}

#[test]
fn the_systemd_units_say_what_the_runbook_promises_and_verify() {
    let bins = binaries();
    let reconciler = read("systemd/sdp-reconciler.service");
    let agent = read("systemd/sdp-agent@.service");
    for (name, text) in [("reconciler", &reconciler), ("agent", &agent)] {
        let u = unit(text);
        for (key, value) in [
            ("Restart", "always"),
            ("RestartSec", "2"),
            ("MemoryMax", "M"),
            ("ReadWritePaths", "-/var/lib/"),
        ] {
            assert!(has(&u, "Service", key, value), "{name}: {key}={value}");
        }
        assert!(
            has(&u, "Service", "EnvironmentFile", "-/etc/sdp/"),
            "{name}: an environment file to override"
        );
        assert!(has(&u, "Install", "WantedBy", "multi-user.target"));
    }
    let a = unit(&agent);
    assert!(
        has(&a, "Unit", "After", "docker.service"),
        "the agent starts after docker"
    );
    assert!(has(&a, "Service", "SupplementaryGroups", "docker"));

    // systemd's own check, where systemd is there; any complaint fails the test.
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
    {
        let dir = tempfile::tempdir().unwrap();
        let r = reconciler.replace("/usr/local/bin/sdp ", &format!("{} ", bins.join("sdp").display()));
        let g = agent.replace(
            "/usr/local/bin/sdp-agent ",
            &format!("{} ", bins.join("sdp-agent").display()),
        );
        std::fs::write(dir.path().join("sdp-reconciler.service"), r).unwrap();
        std::fs::write(dir.path().join("sdp-agent@.service"), g).unwrap();
        for name in ["sdp-reconciler.service", "sdp-agent@micro.service"] {
            let out = Command::new("systemd-analyze")
                .arg("verify")
                .arg(dir.path().join(name))
                .output()
                .unwrap();
            let said = String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
            assert!(
                out.status.success() && said.trim().is_empty(),
                "systemd-analyze verify {name}:\n{said}"
            );
        }
    }
}

#[test]
fn nginx_accepts_the_location_blocks() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        deploy().join("nginx/sdp-locations.conf"),
        dir.path().join("sdp-locations.conf"),
    )
    .unwrap();
    let conf = format!(
        "pid {0}/nginx.pid;\nerror_log {0}/error.log;\nevents {{}}\nhttp {{\n  access_log off;\n  \
         client_body_temp_path {0}/body;\n  proxy_temp_path {0}/proxy;\n  fastcgi_temp_path {0}/fastcgi;\n  \
         uwsgi_temp_path {0}/uwsgi;\n  scgi_temp_path {0}/scgi;\n  server {{\n    listen 127.0.0.1:8443;\n    \
         include {0}/sdp-locations.conf;\n  }}\n}}\n",
        dir.path().display()
    );
    std::fs::write(dir.path().join("nginx.conf"), conf).unwrap();
    let out = Command::new("nginx")
        .arg("-t")
        .arg("-p")
        .arg(dir.path())
        .arg("-c")
        .arg(dir.path().join("nginx.conf"))
        .output()
        .expect("nginx is installed (.ci/run installs nginx-light)");
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "nginx -t:\n{said}");
    assert!(said.contains("test is successful"), "{said}");
}

/// The `sdp`/`sdp-agent` invocations in the runbook's command blocks: the program, its subcommand words and the
/// flags used.
fn runbook_commands(text: &str) -> Vec<(String, Vec<String>, Vec<String>)> {
    let mut out = Vec::new();
    let mut in_block = false;
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with("```") {
            in_block = !in_block;
            continue;
        }
        // Inline commands in backticks count too.
        let candidates: Vec<String> = if in_block {
            vec![line.to_string()]
        } else {
            line.split('`').skip(1).step_by(2).map(str::to_string).collect()
        };
        for cmd in candidates {
            let cmd = cmd.split(" #").next().unwrap_or("").to_string();
            let words: Vec<&str> = cmd.split_whitespace().collect();
            // A program in command position: first, after sudo (and its `-u USER`), or after && ; |.
            let program_at = |i: usize| {
                let name = words[i].rsplit('/').next().unwrap_or(words[i]);
                let starts = i == 0
                    || matches!(words[i - 1], "sudo" | "&&" | ";" | "|")
                    || (i >= 2 && words[i - 2] == "-u" && words.first() == Some(&"sudo"));
                (name == "sdp" || name == "sdp-agent") && starts
            };
            if let Some(at) = (0..words.len()).find(|i| program_at(*i)) {
                out.push(parse(&words[at..]));
            }
        }
    }
    out
}

fn parse(words: &[&str]) -> (String, Vec<String>, Vec<String>) {
    let program = words[0].rsplit('/').next().unwrap().to_string();
    let mut sub = Vec::new();
    let mut flags = Vec::new();
    let mut skip_value = false;
    for w in &words[1..] {
        if w.starts_with("--") {
            flags.push(w.split('=').next().unwrap().to_string());
            skip_value = !w.contains('=') && *w != "--version" && *w != "--help" && *w != "--down";
        } else if w.starts_with('-') && w.len() == 2 {
            flags.push(w.to_string());
            skip_value = false;
        } else if skip_value {
            skip_value = false;
        } else if flags.is_empty() && !w.contains('/') && !w.contains('.') && !w.contains('&') {
            sub.push(w.to_string());
        }
    }
    (program, sub, flags)
}

#[test]
fn every_command_in_the_runbook_is_one_the_binaries_accept() {
    let bins = binaries();
    let commands = runbook_commands(&read("RUNBOOK.md"));
    assert!(commands.len() >= 8, "found only {commands:?}");
    for (program, sub, flags) in &commands {
        let mut cmd = Command::new(bins.join(program));
        // Subcommand words that are not subcommands (a sandbox name) end the path.
        let mut path = Vec::new();
        for word in sub {
            let probe = Command::new(bins.join(program))
                .args(&path)
                .arg(word)
                .arg("--help")
                .output()
                .unwrap();
            if probe.status.success() {
                path.push(word.clone());
            } else {
                break;
            }
        }
        let help = cmd.args(&path).arg("--help").output().unwrap();
        let text = String::from_utf8_lossy(&help.stdout).to_string();
        assert!(help.status.success(), "{program} {path:?} --help failed");
        for flag in flags {
            if flag == "--help" || flag == "--version" || flag == "-h" || flag == "-V" {
                continue;
            }
            assert!(
                text.contains(flag.as_str()),
                "`{program} {}` has no {flag}:\n{text}",
                path.join(" ")
            );
        }
    }
}

#[test]
fn the_release_build_makes_static_binaries_with_version_and_commit() {
    let out = tempfile::tempdir().unwrap();
    run(Command::new("bash")
        .arg(deploy().join("build-release.sh"))
        .arg(out.path()));
    let commit = run(Command::new("git").args(["rev-parse", "--short=12", "HEAD"]));
    for bin in ["sdp", "sdp-agent"] {
        let path = out.path().join(bin);
        let version = run(Command::new(&path).arg("--version"));
        assert!(
            version.starts_with(&format!("{bin} {}", env!("CARGO_PKG_VERSION"))),
            "{version}"
        );
        assert!(version.contains(&commit), "{version} does not name commit {commit}");
        // Statically linked: no PT_INTERP program header, so no dynamic loader and no dependency on the VM's libc.
        let elf = std::fs::read(&path).unwrap();
        assert_eq!(&elf[..4], b"\x7fELF");
        let u16_at = |o: usize| u16::from_le_bytes([elf[o], elf[o + 1]]) as usize;
        let phoff = u64::from_le_bytes(elf[32..40].try_into().unwrap()) as usize;
        let (size, count) = (u16_at(54), u16_at(56));
        let interp = (0..count).any(|i| {
            let at = phoff + i * size;
            u32::from_le_bytes(elf[at..at + 4].try_into().unwrap()) == 3
        });
        assert!(!interp, "{bin} asks for a dynamic loader");
    }
    // The reconciler runs on jemalloc with the options `sdp_reconciler::global_allocator!` sets (its memory target
    // depends on them): jemalloc says which it read when asked for its statistics at exit.
    let stats = Command::new(out.path().join("sdp"))
        .arg("--version")
        .env("_RJEM_MALLOC_CONF", "stats_print:true")
        .output()
        .unwrap();
    let stats = String::from_utf8_lossy(&stats.stderr).to_string() + &String::from_utf8_lossy(&stats.stdout);
    for option in [
        "opt.narenas: 1",
        "opt.tcache: false",
        "opt.dirty_decay_ms: 0",
        "opt.muzzy_decay_ms: 0",
    ] {
        assert!(stats.contains(option), "sdp's allocator lacks {option}:\n{stats}");
    }
    assert!(out.path().join("RUNBOOK.md").exists() && out.path().join("systemd/sdp-reconciler.service").exists());
}
