//! Files the agent reads and writes where someone else has a say: worktrees hold what a branch pusher committed
//! (symlinks included) and, for the gateway, what its container wrote. Nothing here follows a symlink, reads
//! without a size cap, or blocks on a FIFO; writes go through a fresh temp file and a rename.

use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context, Result, bail};

/// Opens for reading without following a symlink at the last component, and without blocking on a FIFO.
pub fn open_no_follow(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
}

/// Refuses `rel` under `root` when any part of it is a symlink (a part that does not exist yet is fine).
pub fn no_links(root: &Path, rel: &Path) -> Result<()> {
    let mut at = root.to_path_buf();
    for part in rel.components() {
        at.push(part);
        match std::fs::symlink_metadata(&at) {
            Ok(meta) if meta.file_type().is_symlink() => bail!(
                "{} is a symbolic link in the branch: SDP does not follow links out of a worktree",
                at.strip_prefix(root).unwrap_or(&at).display()
            ),
            Ok(_) => {}
            Err(_) => return Ok(()),
        }
    }
    Ok(())
}

/// `openat(2)` of `name` in the directory `dir`, never following a symlink at `name`.
fn open_at(dir: &OwnedFd, name: &std::ffi::OsStr, flags: libc::c_int, mode: libc::c_uint) -> std::io::Result<OwnedFd> {
    use std::os::unix::ffi::OsStrExt;
    let name =
        std::ffi::CString::new(name.as_bytes()).map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    // SAFETY: `dir` is an open descriptor and `name` a NUL-terminated string that outlive the call.
    let fd = unsafe {
        libc::openat(
            dir.as_raw_fd(),
            name.as_ptr(),
            flags | libc::O_NOFOLLOW | libc::O_CLOEXEC,
            mode,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` was just opened and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The folder `rel` beneath `root`, opened one part at a time from `root`'s descriptor, never through a symlink.
/// What the agent then reads or writes there is reached through this descriptor, not by path: a container that
/// swaps a folder of its worktree for a link to the VM, between a check and a write, cannot redirect either.
pub fn open_dir_beneath(root: &Path, rel: &Path) -> Result<OwnedFd> {
    let mut dir: OwnedFd = std::fs::File::open(root)
        .with_context(|| format!("cannot open {}", root.display()))?
        .into();
    for part in rel.components() {
        let std::path::Component::Normal(name) = part else {
            bail!("{} is not a plain relative path", rel.display());
        };
        dir = open_at(&dir, name, libc::O_RDONLY | libc::O_DIRECTORY, 0).map_err(|e| {
            let at = root.join(rel);
            match e.raw_os_error() {
                Some(libc::ELOOP) | Some(libc::ENOTDIR) => anyhow::anyhow!(
                    "{} is a symbolic link or not a folder in the worktree: SDP does not follow links out of a \
                     worktree",
                    rel.display()
                ),
                _ => anyhow::anyhow!("cannot open {}: {e}", at.display()),
            }
        })?;
    }
    Ok(dir)
}

/// Splits a file's relative path into its folder and its name.
fn parent_and_name(rel: &Path) -> Result<(&Path, &std::ffi::OsStr)> {
    let name = rel
        .file_name()
        .with_context(|| format!("{} names no file", rel.display()))?;
    Ok((rel.parent().unwrap_or(Path::new("")), name))
}

/// Reads `rel` under `root` as text: reached without following any symlink, a regular file, at most `max`
/// bytes.
pub fn read_capped(root: &Path, rel: &Path, max: u64) -> Result<String> {
    let (folder, name) = parent_and_name(rel)?;
    let dir = open_dir_beneath(root, folder)?;
    let path = root.join(rel);
    let file = open_at(&dir, name, libc::O_RDONLY | libc::O_NONBLOCK, 0).map_err(|e| read_error(&path, e))?;
    read_open(std::fs::File::from(file), &path, max)
}

/// Writes `rel` under `root` through a fresh temp file and a rename in its folder, the folder reached without
/// following any symlink (see [`open_dir_beneath`]): a reader sees the old file or the new one, a symlink at the
/// file's name is replaced, and no swap of a folder on the way redirects the write.
pub fn write_beneath(root: &Path, rel: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    use std::os::unix::ffi::OsStrExt;
    static N: AtomicU64 = AtomicU64::new(0);
    let (folder, name) = parent_and_name(rel)?;
    let dir = open_dir_beneath(root, folder)?;
    let path = root.join(rel);
    let tmp = format!(
        ".{}.sdp-tmp-{}-{}",
        name.to_string_lossy(),
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    );
    let tmp = std::ffi::OsStr::new(&tmp);
    let file = open_at(&dir, tmp, libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL, 0o644)
        .with_context(|| format!("cannot write beside {}", path.display()))?;
    let mut file = std::fs::File::from(file);
    let c = |s: &std::ffi::OsStr| std::ffi::CString::new(s.as_bytes()).expect("no NUL in a path part");
    let (tmp_c, name_c) = (c(tmp), c(name));
    let written = file.write_all(bytes).and_then(|_| file.sync_data());
    // SAFETY: both names are NUL-terminated strings and `dir` an open descriptor, all outliving the calls.
    let renamed = written.and_then(|_| {
        let r = unsafe { libc::renameat(dir.as_raw_fd(), tmp_c.as_ptr(), dir.as_raw_fd(), name_c.as_ptr()) };
        if r == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    });
    if let Err(e) = renamed {
        // SAFETY: as above.
        unsafe { libc::unlinkat(dir.as_raw_fd(), tmp_c.as_ptr(), 0) };
        return Err(e).with_context(|| format!("cannot replace {}", path.display()));
    }
    Ok(())
}

fn read_error(path: &Path, e: std::io::Error) -> anyhow::Error {
    if e.raw_os_error() == Some(libc::ELOOP) {
        anyhow::anyhow!("{} is a symbolic link, which is not followed", path.display())
    } else {
        anyhow::anyhow!("cannot read {}: {e}", path.display())
    }
}

/// Reads a regular file of at most `max` bytes as text, without following a link at its last component or
/// blocking on a FIFO. No error holds a byte of the file.
pub fn read_regular(path: &Path, max: u64) -> Result<String> {
    let file = open_no_follow(path).map_err(|e| read_error(path, e))?;
    read_open(file, path, max)
}

/// Reads an open file as `read_regular` does.
fn read_open(file: std::fs::File, path: &Path, max: u64) -> Result<String> {
    let failed = |e: std::io::Error| read_error(path, e);
    let meta = file.metadata().map_err(failed)?;
    if !meta.is_file() {
        bail!("{} is not a regular file", path.display());
    }
    let too_large = || anyhow::anyhow!("{} is larger than {max} bytes", path.display());
    if meta.len() > max {
        return Err(too_large());
    }
    let mut bytes = Vec::new();
    // One byte more than allowed: a file that grew since it was measured is refused, not cut.
    file.take(max + 1).read_to_end(&mut bytes).map_err(failed)?;
    if bytes.len() as u64 > max {
        return Err(too_large());
    }
    String::from_utf8(bytes).map_err(|_| anyhow::anyhow!("{} is not UTF-8 text", path.display()))
}

/// Writes through a fresh temp file (created exclusively, never through a link) and a rename in the same
/// directory: a reader sees the old file or the new one, and a symlink planted at either name is replaced, not
/// followed.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    static N: AtomicU64 = AtomicU64::new(0);
    let dir = path.parent().context("a file path has a parent")?;
    let tmp = dir.join(format!(
        ".{}.sdp-tmp-{}-{}",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("file"),
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&tmp)
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    let written = file.write_all(bytes).and_then(|_| file.sync_data());
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(e).with_context(|| format!("cannot write {}", tmp.display()));
    }
    std::fs::rename(&tmp, path).with_context(|| format!("cannot replace {}", path.display()))?;
    Ok(())
}

/// Makes the file a read-only mount lands on inside the worktree (a read-only bind mount cannot get one made by
/// Docker), unless the branch has it. Nothing is followed: a branch whose path holds a symlink is refused, so a
/// pushed `conf -> /etc` cannot make the agent create files outside the worktree.
pub fn mount_point_in(worktree: &Path, rel: &str) -> Result<()> {
    let mut at = worktree.to_path_buf();
    let parts: Vec<&str> = rel.split('/').collect();
    for (i, part) in parts.iter().enumerate() {
        at.push(part);
        let last = i + 1 == parts.len();
        match std::fs::symlink_metadata(&at) {
            Ok(meta) if meta.file_type().is_symlink() => {
                bail!(
                    "the branch has a symbolic link at {rel} (at `{part}`): an Environment file cannot be mounted there"
                )
            }
            Ok(meta) if last && meta.is_dir() => {
                bail!("the branch has a directory at {rel}: a file cannot be mounted there")
            }
            Ok(meta) if !last && !meta.is_dir() => bail!("the branch has a file at `{part}` of {rel}"),
            Ok(_) => {}
            Err(_) if last => {
                std::fs::OpenOptions::new().write(true).create_new(true).open(&at)?;
            }
            Err(_) => std::fs::create_dir(&at)?,
        }
    }
    Ok(())
}

/// The most entries `link_leaving` looks at: a tree larger than this is refused rather than walked for ever.
const MAX_ENTRIES: usize = 500_000;

/// The first symlink under `root` (its `.git` aside) that resolves outside it: `go build` follows links, and a
/// pushed `z.go -> /etc/sdp/agent-token` would put the file's first word into the build's error.
pub fn link_leaving(root: &Path) -> Result<Option<PathBuf>> {
    let real_root = root.canonicalize()?;
    let mut pending = vec![root.to_path_buf()];
    let mut seen = 0usize;
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let entry = entry?;
            seen += 1;
            if seen > MAX_ENTRIES {
                bail!("the worktree has more than {MAX_ENTRIES} files");
            }
            let path = entry.path();
            let kind = entry.file_type()?;
            if kind.is_symlink() {
                // A dangling link leads nowhere; one that resolves must stay inside.
                if let Ok(target) = path.canonicalize()
                    && !target.starts_with(&real_root)
                {
                    return Ok(Some(path.strip_prefix(root).unwrap_or(&path).to_path_buf()));
                }
            } else if kind.is_dir() && !(dir == root && entry.file_name() == ".git") {
                pending.push(path);
            }
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_folder_swapped_for_a_link_redirects_neither_a_write_nor_a_read() {
        let tmp = tempfile::tempdir().unwrap();
        let (worktree, outside) = (tmp.path().join("worktree"), tmp.path().join("outside"));
        let rel = Path::new("application/config/production/config.php");
        std::fs::create_dir_all(worktree.join("application/config/production")).unwrap();
        std::fs::create_dir_all(outside.join("production")).unwrap();
        std::fs::write(outside.join("production/config.php"), "<?php // the VM's\n").unwrap();
        write_beneath(&worktree, rel, b"<?php // first\n").unwrap();
        assert_eq!(read_capped(&worktree, rel, 1024).unwrap(), "<?php // first\n");
        // What a container does between the agent's check and its write: the folder becomes a link to the VM.
        std::fs::rename(worktree.join("application/config"), tmp.path().join("moved")).unwrap();
        std::os::unix::fs::symlink(&outside, worktree.join("application/config")).unwrap();
        let e = write_beneath(&worktree, rel, b"<?php // patched\n").unwrap_err();
        assert!(e.to_string().contains("symbolic link"), "{e:#}");
        assert!(
            read_capped(&worktree, rel, 1024).is_err(),
            "a read is not redirected either"
        );
        assert_eq!(
            std::fs::read_to_string(outside.join("production/config.php")).unwrap(),
            "<?php // the VM's\n"
        );
        let stray: Vec<_> = std::fs::read_dir(outside.join("production")).unwrap().collect();
        assert_eq!(stray.len(), 1, "no temp file outside either");
        // A link at the file's own name is replaced, not followed.
        std::fs::remove_file(worktree.join("application/config")).unwrap();
        std::fs::rename(tmp.path().join("moved"), worktree.join("application/config")).unwrap();
        let file = worktree.join(rel);
        std::fs::remove_file(&file).unwrap();
        std::os::unix::fs::symlink(outside.join("production/config.php"), &file).unwrap();
        assert!(read_capped(&worktree, rel, 1024).is_err(), "a link is not read through");
        write_beneath(&worktree, rel, b"<?php // patched\n").unwrap();
        assert!(!std::fs::symlink_metadata(&file).unwrap().file_type().is_symlink());
        assert_eq!(
            std::fs::read_to_string(outside.join("production/config.php")).unwrap(),
            "<?php // the VM's\n"
        );
    }

    #[test]
    fn links_planted_by_a_branch_are_never_followed() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("worktree");
        let outside = tmp.path().join("authorized_keys");
        std::fs::write(&outside, "keep me\n").unwrap();
        std::fs::create_dir_all(root.join("application/config/production")).unwrap();
        let conf = root.join("application/config/production");
        // A tracked symlink at the temp name and at the file itself: writes replace them, never follow.
        std::os::unix::fs::symlink(&outside, conf.join(".config.php.sdp-tmp")).unwrap();
        std::os::unix::fs::symlink(&outside, conf.join("config.php")).unwrap();
        write_atomically(&conf.join("config.php"), b"<?php\n").unwrap();
        assert_eq!(std::fs::read_to_string(&outside).unwrap(), "keep me\n");
        assert!(
            !std::fs::symlink_metadata(conf.join("config.php"))
                .unwrap()
                .file_type()
                .is_symlink()
        );

        // A linked folder on the way, or a link as the file: refused before any read.
        std::os::unix::fs::symlink(tmp.path(), root.join("linked")).unwrap();
        assert!(no_links(&root, Path::new("linked/authorized_keys")).is_err());
        std::os::unix::fs::symlink("/dev/zero", root.join("zero.php")).unwrap();
        assert!(read_capped(&root, Path::new("zero.php"), 1 << 20).is_err());
        std::fs::write(root.join("big.php"), vec![b'x'; 2048]).unwrap();
        assert!(read_capped(&root, Path::new("big.php"), 1024).is_err());
        assert_eq!(
            read_capped(&root, Path::new("application/config/production/config.php"), 1024).unwrap(),
            "<?php\n"
        );

        // Links that leave the tree are found; links inside it and dangling ones are not.
        std::fs::create_dir_all(root.join("src")).unwrap();
        std::os::unix::fs::symlink("../application", root.join("src/inside")).unwrap();
        std::os::unix::fs::symlink("/nowhere/at/all", root.join("src/dangling")).unwrap();
        let found = link_leaving(&root).unwrap().unwrap();
        assert!(["linked", "zero.php"].contains(&found.to_str().unwrap()), "{found:?}");
        std::fs::remove_file(root.join("linked")).unwrap();
        std::fs::remove_file(root.join("zero.php")).unwrap();
        std::fs::remove_file(conf.join(".config.php.sdp-tmp")).unwrap();
        assert_eq!(link_leaving(&root).unwrap(), None);
        std::os::unix::fs::symlink("/etc/hostname", root.join("src/z.go")).unwrap();
        assert_eq!(link_leaving(&root).unwrap(), Some(PathBuf::from("src/z.go")));
    }
}
