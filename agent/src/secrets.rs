//! Secret values, read on the VM at deploy time from the agent's secrets directory (`secretsDir`, default
//! `/etc/sdp/secrets`) and sent nowhere but into the container's environment.
//!
//! A config-repo committer names the file; the operator decides what may be read. So a file is read only when it
//! is inside the secrets directory (no `..`, no symlink out of it), is a regular file (not a FIFO that would hang
//! the agent, not `/dev/zero`), and is at most `MAX_SECRET_BYTES`. The value never appears in an error: a
//! message names the variable and the file, never a byte of what is in it.

use std::path::{Component, Path};

use anyhow::{Context, Result, bail};

/// The largest secret value read: a password, a key, a certificate.
pub const MAX_SECRET_BYTES: u64 = 64 * 1024;

/// Reads the secret `name` from `file`, which must lie inside `dir`. Blocking: call it off the async threads.
pub fn read(dir: &Path, name: &str, file: &str) -> Result<String> {
    let path = Path::new(file);
    let plain = path.is_absolute()
        && path
            .components()
            .all(|c| matches!(c, Component::RootDir | Component::Normal(_)));
    if !plain || !path.starts_with(dir) {
        bail!(
            "the secret {name} names {file}, outside this node's secrets directory {}: secrets are read only from \
             there (set `secretsDir:` in the agent's config)",
            dir.display()
        );
    }
    // Each directory on the way must be a real one: a symlinked folder could lead out of the directory.
    let (Ok(real_dir), Some(parent)) = (dir.canonicalize(), path.parent()) else {
        bail!("the secrets directory {} does not exist on this node", dir.display());
    };
    match parent.canonicalize() {
        Ok(real) if real.starts_with(&real_dir) => {}
        _ => bail!("the secret {name}: {file} is not inside {} on this node", dir.display()),
    }
    let text = crate::files::read_regular(path, MAX_SECRET_BYTES)
        .with_context(|| format!("cannot read the secret {name} from {file}"))?;
    let value = text.trim_end_matches(['\n', '\r']);
    // Docker and runc refuse such a variable, and their error message would carry the value.
    if value.contains('\0') {
        bail!("the secret {name}: {file} holds a NUL byte, which an environment variable cannot");
    }
    Ok(value.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup() -> (tempfile::TempDir, std::path::PathBuf) {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("secrets");
        std::fs::create_dir_all(dir.join("team")).unwrap();
        std::fs::write(dir.join("db"), "s3cret-value\n").unwrap();
        std::fs::write(dir.join("team/key"), "k").unwrap();
        (tmp, dir)
    }

    #[test]
    fn a_secret_inside_the_directory_is_read_without_its_newline() {
        let (_tmp, dir) = setup();
        let file = dir.join("db");
        assert_eq!(
            read(&dir, "DB_PASSWORD", file.to_str().unwrap()).unwrap(),
            "s3cret-value"
        );
        let nested = dir.join("team/key");
        assert_eq!(read(&dir, "KEY", nested.to_str().unwrap()).unwrap(), "k");
    }

    #[test]
    fn files_outside_the_directory_links_devices_fifos_and_huge_files_are_refused_without_their_bytes() {
        let (tmp, dir) = setup();
        let outside = tmp.path().join("agent-token");
        std::fs::write(&outside, "the-agent-token").unwrap();
        std::os::unix::fs::symlink(&outside, dir.join("link")).unwrap();
        std::os::unix::fs::symlink(tmp.path(), dir.join("linked-dir")).unwrap();
        let fifo = dir.join("fifo");
        assert!(
            std::process::Command::new("mkfifo")
                .arg(&fifo)
                .status()
                .unwrap()
                .success()
        );
        std::fs::write(dir.join("big"), vec![b'x'; MAX_SECRET_BYTES as usize + 1]).unwrap();
        std::fs::write(dir.join("nul"), b"before\0the-hidden-part").unwrap();
        let cases = [
            outside.to_str().unwrap().to_string(),
            format!("{}/../agent-token", dir.display()),
            dir.join("link").display().to_string(),
            dir.join("linked-dir/agent-token").display().to_string(),
            fifo.display().to_string(),
            dir.join("big").display().to_string(),
            dir.join("nul").display().to_string(),
            "/dev/zero".into(),
            "/proc/self/environ".into(),
            "relative/path".into(),
            dir.join("team").display().to_string(),
        ];
        for file in cases {
            let started = std::time::Instant::now();
            let err = format!("{:#}", read(&dir, "X", &file).unwrap_err());
            assert!(started.elapsed() < std::time::Duration::from_secs(5), "{file} hung");
            for leaked in ["the-agent-token", "the-hidden-part", "xxxx"] {
                assert!(!err.contains(leaked), "{file}: {err}");
            }
            assert!(err.contains("secret X"), "{file}: {err}");
        }
    }
}
