//! Repositories and worktrees on the node, through the git CLI.
//!
//! Each sandbox gets its own worktree of each service's repository, so two sandboxes run two branches of one
//! repo. A deploy checks out an exact commit (detached, forced: what the branch says is what runs). Credentials
//! for fetching come from a file named in the agent's config, in git's own credential format (`username=...` and
//! `password=...` lines). git reads it through a helper that only answers `get`, so the password is never on a
//! command line, in a child's environment or in a log, and a failed login never edits the operator's file (as
//! git's `store` helper would, by erasing the entry).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

/// One repository clone configured on the node.
#[derive(Clone)]
pub struct Repo {
    pub path: PathBuf,
    pub credentials: Option<PathBuf>,
}

impl Repo {
    fn git(&self, dir: &Path) -> Command {
        let mut cmd = Command::new("git");
        cmd.arg("-C").arg(dir);
        // No hook and no fsmonitor ever runs: a branch or a container must not make the agent run a program.
        cmd.args(["-c", "core.hooksPath=/dev/null", "-c", "core.fsmonitor=false"]);
        // Never prompt: an agent has no terminal.
        cmd.env("GIT_TERMINAL_PROMPT", "0").env("GIT_ASKPASS", "true");
        // A branch's .lfsconfig could name a server of its own, which git-lfs would give the service credential.
        cmd.env("GIT_LFS_SKIP_SMUDGE", "1");
        if let Some(file) = &self.credentials {
            // The path is checked to hold no single quote when the config is read.
            let helper = format!("!f() {{ test \"$1\" = get && cat '{}'; }}; f", file.display());
            cmd.arg("-c").arg("credential.helper=");
            cmd.arg("-c").arg(format!("credential.helper={helper}"));
        }
        cmd
    }

    fn run(&self, dir: &Path, args: &[&str]) -> Result<String> {
        let out = self
            .git(dir)
            .args(args)
            .output()
            .context("cannot run git: is it installed and on PATH?")?;
        if !out.status.success() {
            bail!(
                "git {} failed: {}",
                args.join(" "),
                sdp_protocol::scrub(&String::from_utf8_lossy(&out.stderr))
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// Fetches every branch of `origin`.
    pub fn fetch(&self) -> Result<()> {
        if !self.path.exists() {
            bail!(
                "repository {} is not on this node: clone it there first",
                self.path.display()
            );
        }
        self.run(&self.path, &["fetch", "--quiet", "--prune", "origin"])?;
        Ok(())
    }

    /// The last part of `origin`'s URL without `.git`: `account` for `https://host/scm/cc/account.git`.
    pub fn origin_name(&self) -> Option<String> {
        let url = self.run(&self.path, &["config", "--get", "remote.origin.url"]).ok()?;
        let last = url.trim_end_matches('/').rsplit(['/', ':']).next()?;
        Some(last.trim_end_matches(".git").to_string())
    }

    /// Where `origin/<branch>` points after the last fetch.
    pub fn head(&self, branch: &str) -> Result<String> {
        let refname = format!("refs/remotes/origin/{branch}");
        self.run(&self.path, &["rev-parse", "--verify", "-q", &refname])
            .with_context(|| format!("branch {branch} is not on origin of {}", self.path.display()))
    }

    /// How many branches `origin` has: proves the URL and the credentials.
    pub fn ls_remote(&self) -> Result<usize> {
        Ok(self.branches()?.len())
    }

    /// The branches of `origin` with their commits, as `git ls-remote --heads` lists them.
    pub fn branches(&self) -> Result<Vec<(String, String)>> {
        let out = self.run(&self.path, &["ls-remote", "--heads", "origin"])?;
        Ok(out
            .lines()
            .filter_map(|l| l.split_once('\t'))
            .filter_map(|(commit, r)| {
                r.strip_prefix("refs/heads/")
                    .map(|b| (b.to_string(), commit.to_string()))
            })
            .collect())
    }

    /// The worktree's administrative dir in the repository (`.git/worktrees/<id>`), found from the repository's
    /// side: its `gitdir` file names `<dir>/.git`. The `.git` file inside the worktree is never read, since the
    /// worktree is mounted into a container that could rewrite it to point git at a config of its own.
    fn admin_dir(&self, dir: &Path) -> Option<PathBuf> {
        let common = self
            .run(&self.path, &["rev-parse", "--path-format=absolute", "--git-common-dir"])
            .ok()?;
        let wanted = [Some(dir.to_path_buf()), dir.canonicalize().ok()].map(|d| d.map(|d| d.join(".git")));
        std::fs::read_dir(Path::new(&common).join("worktrees"))
            .ok()?
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .find(|admin| {
                std::fs::read_to_string(admin.join("gitdir"))
                    .is_ok_and(|g| wanted.iter().flatten().any(|w| Path::new(g.trim()) == w.as_path()))
            })
    }

    /// Checks out `commit` into the worktree at `dir`, creating it if needed. Local changes are discarded: the
    /// worktree holds exactly the commit. git runs with the repository's own paths (`--git-dir`, `--work-tree`),
    /// never what the worktree holds.
    pub fn checkout(&self, dir: &Path, commit: &str) -> Result<()> {
        if let Some(admin) = self.admin_dir(dir).filter(|_| dir.is_dir()) {
            let git_dir = format!("--git-dir={}", admin.display());
            let work_tree = format!("--work-tree={}", dir.display());
            self.run(
                dir,
                &[
                    &git_dir, &work_tree, "checkout", "--quiet", "--detach", "--force", commit,
                ],
            )?;
            self.run(dir, &[&git_dir, &work_tree, "clean", "-fdxq"])?;
            // The worktree's own pointer back, as git wrote it, for people who run git in it by hand.
            let pointer = format!("gitdir: {}\n", admin.display());
            let current = crate::files::read_capped(dir, Path::new(".git"), 4096).ok();
            if current.as_deref() != Some(pointer.as_str()) {
                crate::files::write_atomically(&dir.join(".git"), pointer.as_bytes())?;
            }
        } else {
            if let Some(parent) = dir.parent() {
                std::fs::create_dir_all(parent)?;
            }
            // A directory git does not know as a worktree (its registration lost, or left half-made) is replaced.
            if dir.exists() {
                std::fs::remove_dir_all(dir).with_context(|| format!("cannot replace {}", dir.display()))?;
            }
            // A stale registration of a worktree whose directory is gone blocks a new one.
            let _ = self.run(&self.path, &["worktree", "prune"]);
            let target = dir.to_string_lossy().into_owned();
            self.run(
                &self.path,
                &["worktree", "add", "--quiet", "--detach", "--force", &target, commit],
            )?;
        }
        Ok(())
    }

    /// Removes a worktree and its registration.
    pub fn remove_worktree(&self, dir: &Path) -> Result<()> {
        if dir.exists() {
            let target = dir.to_string_lossy().into_owned();
            if self
                .run(&self.path, &["worktree", "remove", "--force", &target])
                .is_err()
            {
                std::fs::remove_dir_all(dir).with_context(|| format!("cannot remove {}", dir.display()))?;
            }
        }
        let _ = self.run(&self.path, &["worktree", "prune"]);
        Ok(())
    }

    /// The content of `path` at `commit`.
    pub fn show(&self, commit: &str, path: &Path) -> Result<String> {
        let spec = format!("{commit}:{}", path.display());
        self.run(&self.path, &["show", &spec])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn git(dir: &Path, args: &[&str]) -> String {
        let out = Command::new("git")
            .arg("-C")
            .arg(dir)
            .args(args)
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_AUTHOR_NAME", "t")
            .env("GIT_AUTHOR_EMAIL", "t@e")
            .env("GIT_COMMITTER_NAME", "t")
            .env("GIT_COMMITTER_EMAIL", "t@e")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "git {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    #[test]
    fn a_container_that_rewrites_the_worktrees_git_file_cannot_make_the_agent_run_anything() {
        let tmp = tempfile::tempdir().unwrap();
        let work = tmp.path().join("work");
        std::fs::create_dir_all(&work).unwrap();
        git(&work, &["init", "-q", "-b", "main"]);
        std::fs::write(work.join("main.go"), "package main\n").unwrap();
        git(&work, &["add", "-A"]);
        git(&work, &["commit", "-qm", "one"]);
        let first = git(&work, &["rev-parse", "HEAD"]);
        let clone = tmp.path().join("clone");
        git(
            tmp.path(),
            &["clone", "-q", work.to_str().unwrap(), clone.to_str().unwrap()],
        );
        let repo = Repo {
            path: clone.clone(),
            credentials: None,
        };
        let dir = tmp.path().join("worktrees/box/account");
        repo.checkout(&dir, &first).unwrap();

        // What a container with the worktree mounted read-write could do: point `.git` at a git dir of its own
        // whose config runs a program on any git command (fsmonitor) and whose hooks run on checkout.
        let marker = tmp.path().join("ran-on-the-host");
        let evil = dir.join("evil-git");
        git(tmp.path(), &["init", "-q", "--bare", evil.to_str().unwrap()]);
        let command = format!("touch {}", marker.display());
        git(&evil, &["config", "core.fsmonitor", &command]);
        git(&evil, &["config", "core.worktree", dir.to_str().unwrap()]);
        let hook = evil.join("hooks/post-checkout");
        std::fs::write(&hook, format!("#!/bin/sh\n{command}\n")).unwrap();
        std::fs::set_permissions(&hook, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        std::fs::write(dir.join(".git"), format!("gitdir: {}\n", evil.display())).unwrap();

        // A push, and the agent checks the new commit out.
        std::fs::write(work.join("main.go"), "package main\n\nfunc main() {}\n").unwrap();
        git(&work, &["commit", "-qam", "two"]);
        let second = git(&work, &["rev-parse", "HEAD"]);
        repo.fetch().unwrap();
        repo.checkout(&dir, &second).unwrap();
        assert!(!marker.exists(), "a program of the container's ran as the agent");
        assert_eq!(
            std::fs::read_to_string(dir.join("main.go")).unwrap(),
            "package main\n\nfunc main() {}\n",
            "the worktree holds the new commit"
        );
        assert!(
            !evil.exists(),
            "what the container left in the worktree is cleaned away"
        );
        let pointer = std::fs::read_to_string(dir.join(".git")).unwrap();
        assert!(
            pointer.starts_with("gitdir: ") && pointer.contains("worktrees"),
            "{pointer}"
        );
        assert_eq!(
            git(&dir, &["rev-parse", "HEAD"]),
            second,
            "git in the worktree by hand works again"
        );
    }
}
