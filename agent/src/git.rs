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
        // Never prompt: an agent has no terminal.
        cmd.env("GIT_TERMINAL_PROMPT", "0").env("GIT_ASKPASS", "true");
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

    /// Checks out `commit` into the worktree at `dir`, creating it if needed. Local changes are discarded: the
    /// worktree holds exactly the commit.
    pub fn checkout(&self, dir: &Path, commit: &str) -> Result<()> {
        if dir.join(".git").exists() {
            self.run(dir, &["checkout", "--quiet", "--detach", "--force", commit])?;
            self.run(dir, &["clean", "-fdxq"])?;
        } else {
            if let Some(parent) = dir.parent() {
                std::fs::create_dir_all(parent)?;
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
