//! Repositories and worktrees on the node, through the git CLI.
//!
//! Each sandbox gets its own worktree of each service's repository, so two sandboxes run two branches of one
//! repo. A deploy checks out an exact commit (detached, forced: what the branch says is what runs). Credentials
//! for fetching come from a file named in the agent's config, in git's own credential format (`username=...` and
//! `password=...` lines). git reads it through a helper that only answers `get`, so the password is never on a
//! command line, in a child's environment or in a log, and a failed login never edits the operator's file (as
//! git's `store` helper would, by erasing the entry).
//!
//! git runs through `command`: off the async threads, and killed with its helpers when it outlives its
//! deadline (a network one for fetch and ls-remote, a shorter one for everything on the node's own disk).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use tokio::process::Command;

use crate::command::{self, Deadlines};

/// One repository clone configured on the node.
#[derive(Clone)]
pub struct Repo {
    pub path: PathBuf,
    pub credentials: Option<PathBuf>,
    pub deadlines: Deadlines,
}

impl Repo {
    pub fn new(path: PathBuf, credentials: Option<PathBuf>) -> Repo {
        Repo {
            path,
            credentials,
            deadlines: Deadlines::default(),
        }
    }

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

    /// Runs git on the node's disk: its stdout, or an error with its stderr.
    async fn run(&self, dir: &Path, args: &[&str]) -> Result<String> {
        self.run_within(dir, args, self.deadlines.local_git).await
    }

    async fn run_within(&self, dir: &Path, args: &[&str], limit: std::time::Duration) -> Result<String> {
        let mut cmd = self.git(dir);
        cmd.args(args);
        // Named by its subcommand and repository when it times out; by its whole command line when it fails.
        let verb = args.iter().find(|a| !a.starts_with('-')).copied().unwrap_or("");
        let out = command::output(cmd, &format!("git {verb} of {}", self.path.display()), limit).await?;
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
    pub async fn fetch(&self) -> Result<()> {
        if !self.path.exists() {
            bail!(
                "repository {} is not on this node: clone it there first",
                self.path.display()
            );
        }
        self.run_within(
            &self.path,
            &["fetch", "--quiet", "--prune", "origin"],
            self.deadlines.network_git,
        )
        .await?;
        Ok(())
    }

    /// The last part of `origin`'s URL without `.git`: `account` for `https://host/scm/cc/account.git`.
    pub async fn origin_name(&self) -> Option<String> {
        let url = self
            .run(&self.path, &["config", "--get", "remote.origin.url"])
            .await
            .ok()?;
        let last = url.trim_end_matches('/').rsplit(['/', ':']).next()?;
        Some(last.trim_end_matches(".git").to_string())
    }

    /// Where `origin/<branch>` points after the last fetch.
    pub async fn head(&self, branch: &str) -> Result<String> {
        let refname = format!("refs/remotes/origin/{branch}");
        self.run(&self.path, &["rev-parse", "--verify", "-q", &refname])
            .await
            .with_context(|| format!("branch {branch} is not on origin of {}", self.path.display()))
    }

    /// Makes sure `commit` is in the repository, for a deploy pinned to it: the fetch of the branches brings
    /// every commit on them, but a pin may name one that is on no branch (a pull request's ref, a branch since
    /// force-pushed or deleted), so a commit still missing is asked of `origin` by its id. One that origin does
    /// not have either is an error that says so.
    pub async fn ensure_commit(&self, commit: &str) -> Result<()> {
        let object = format!("{commit}^{{commit}}");
        let present = ["cat-file", "-e", object.as_str()];
        if self.run(&self.path, &present).await.is_ok() {
            return Ok(());
        }
        let fetched = self
            .run_within(
                &self.path,
                &["fetch", "--quiet", "origin", commit],
                self.deadlines.network_git,
            )
            .await;
        if self.run(&self.path, &present).await.is_ok() {
            return Ok(());
        }
        let why = fetched.err().map(|e| format!(" ({e:#})")).unwrap_or_default();
        bail!(
            "commit {commit} is neither in {} nor on its origin{why}: pin a commit of this repository, or remove \
             the pin to follow the branch",
            self.path.display()
        )
    }

    /// How many branches `origin` has: proves the URL and the credentials.
    pub async fn ls_remote(&self) -> Result<usize> {
        Ok(self.branches().await?.len())
    }

    /// The branches of `origin` with their commits, as `git ls-remote --heads` lists them.
    pub async fn branches(&self) -> Result<Vec<(String, String)>> {
        let out = self
            .run_within(
                &self.path,
                &["ls-remote", "--heads", "origin"],
                self.deadlines.network_git,
            )
            .await?;
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
    async fn admin_dir(&self, dir: &Path) -> Option<PathBuf> {
        let common = self
            .run(&self.path, &["rev-parse", "--path-format=absolute", "--git-common-dir"])
            .await
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

    /// Removes the `index.lock` that a git killed mid-checkout (by a deadline, a stop, or a crash of the node) left
    /// in the administrative dir of a worktree under `owned`: the agent's own worktrees, where no git of anyone
    /// else runs, and where a stale lock would fail every later checkout. Called at start, before any git runs.
    /// Says which locks it removed.
    pub async fn clear_stale_locks(&self, owned: &Path) -> Vec<PathBuf> {
        let Ok(common) = self
            .run(&self.path, &["rev-parse", "--path-format=absolute", "--git-common-dir"])
            .await
        else {
            return Vec::new();
        };
        let owned = owned.canonicalize().unwrap_or_else(|_| owned.to_path_buf());
        let Ok(entries) = std::fs::read_dir(Path::new(&common).join("worktrees")) else {
            return Vec::new();
        };
        let mut removed = Vec::new();
        for admin in entries.filter_map(|e| e.ok()).map(|e| e.path()) {
            let lock = admin.join("index.lock");
            let ours =
                std::fs::read_to_string(admin.join("gitdir")).is_ok_and(|g| Path::new(g.trim()).starts_with(&owned));
            if ours
                && std::fs::symlink_metadata(&lock).is_ok_and(|m| m.is_file())
                && std::fs::remove_file(&lock).is_ok()
            {
                removed.push(lock);
            }
        }
        removed
    }

    /// Checks out `commit` into the worktree at `dir`, creating it if needed. Local changes are discarded: the
    /// worktree holds exactly the commit. git runs with the repository's own paths (`--git-dir`, `--work-tree`),
    /// never what the worktree holds.
    pub async fn checkout(&self, dir: &Path, commit: &str) -> Result<()> {
        if let Some(admin) = self.admin_dir(dir).await.filter(|_| dir.is_dir()) {
            let git_dir = format!("--git-dir={}", admin.display());
            let work_tree = format!("--work-tree={}", dir.display());
            self.run(
                dir,
                &[
                    &git_dir, &work_tree, "checkout", "--quiet", "--detach", "--force", commit,
                ],
            )
            .await?;
            self.run(dir, &[&git_dir, &work_tree, "clean", "-fdxq"]).await?;
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
                remove_dir_all(dir)
                    .await
                    .with_context(|| format!("cannot replace {}", dir.display()))?;
            }
            // A stale registration of a worktree whose directory is gone blocks a new one.
            let _ = self.run(&self.path, &["worktree", "prune"]).await;
            let target = dir.to_string_lossy().into_owned();
            self.run(
                &self.path,
                &["worktree", "add", "--quiet", "--detach", "--force", &target, commit],
            )
            .await?;
        }
        Ok(())
    }

    /// Removes a worktree and its registration.
    pub async fn remove_worktree(&self, dir: &Path) -> Result<()> {
        if dir.exists() {
            let target = dir.to_string_lossy().into_owned();
            if self
                .run(&self.path, &["worktree", "remove", "--force", &target])
                .await
                .is_err()
            {
                remove_dir_all(dir)
                    .await
                    .with_context(|| format!("cannot remove {}", dir.display()))?;
            }
        }
        let _ = self.run(&self.path, &["worktree", "prune"]).await;
        Ok(())
    }

    /// The content of `path` at `commit`.
    pub async fn show(&self, commit: &str, path: &Path) -> Result<String> {
        let spec = format!("{commit}:{}", path.display());
        self.run(&self.path, &["show", &spec]).await
    }
}

/// Removes a directory tree (a worktree with its `vendor/` can hold many thousand files) off the async threads.
async fn remove_dir_all(dir: &Path) -> std::io::Result<()> {
    let dir = dir.to_path_buf();
    tokio::task::spawn_blocking(move || std::fs::remove_dir_all(dir))
        .await
        .unwrap_or_else(|e| Err(std::io::Error::other(e)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn git(dir: &Path, args: &[&str]) -> String {
        let out = std::process::Command::new("git")
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

    /// A repository `work` with one commit (`first`), and the agent's clone of it, in `tmp`.
    fn one_commit() -> (tempfile::TempDir, PathBuf, PathBuf, String) {
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
        (tmp, work, clone, first)
    }

    #[tokio::test]
    async fn an_index_lock_left_by_a_killed_checkout_is_cleared_at_start_in_the_agents_worktrees_only() {
        let (tmp, _work, clone, first) = one_commit();
        let repo = Repo::new(clone.clone(), None);
        let owned = tmp.path().join("data/worktrees");
        let ours = owned.join("box/account");
        repo.checkout(&ours, &first).await.unwrap();
        // Someone else's worktree of the same clone, outside the agent's data dir.
        let theirs = tmp.path().join("by-hand");
        git(
            &clone,
            &["worktree", "add", "-q", "--detach", theirs.to_str().unwrap(), &first],
        );
        let admin = |dir: &Path| {
            let pointer = std::fs::read_to_string(dir.join(".git")).unwrap();
            PathBuf::from(pointer.trim().strip_prefix("gitdir: ").unwrap())
        };
        for dir in [&ours, &theirs] {
            std::fs::write(admin(dir).join("index.lock"), "").unwrap();
        }
        assert!(
            repo.checkout(&ours, &first).await.is_err(),
            "a stale lock fails every checkout"
        );

        let removed = repo.clear_stale_locks(&owned).await;
        assert_eq!(removed, [admin(&ours).join("index.lock")]);
        assert!(
            admin(&theirs).join("index.lock").exists(),
            "a lock in a worktree not the agent's stays"
        );
        repo.checkout(&ours, &first).await.unwrap();
    }

    #[tokio::test]
    async fn a_container_that_rewrites_the_worktrees_git_file_cannot_make_the_agent_run_anything() {
        let (tmp, work, clone, first) = one_commit();
        let repo = Repo::new(clone.clone(), None);
        let dir = tmp.path().join("worktrees/box/account");
        repo.checkout(&dir, &first).await.unwrap();

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
        repo.fetch().await.unwrap();
        repo.checkout(&dir, &second).await.unwrap();
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

    #[tokio::test]
    async fn a_pinned_commit_on_no_branch_is_fetched_by_its_id_and_one_that_does_not_exist_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let work = tmp.path().join("work");
        std::fs::create_dir_all(&work).unwrap();
        git(&work, &["init", "-q", "-b", "main"]);
        std::fs::write(work.join("main.go"), "package main\n").unwrap();
        git(&work, &["add", "-A"]);
        git(&work, &["commit", "-qm", "one"]);
        let clone = tmp.path().join("clone");
        git(
            tmp.path(),
            &["clone", "-q", work.to_str().unwrap(), clone.to_str().unwrap()],
        );
        // A commit that only a pull request's ref holds: no branch of origin leads to it.
        std::fs::write(work.join("main.go"), "package main // pr\n").unwrap();
        git(&work, &["commit", "-qam", "pr"]);
        let pr = git(&work, &["rev-parse", "HEAD"]);
        git(&work, &["update-ref", "refs/pull/1/from", &pr]);
        git(&work, &["reset", "-q", "--hard", "HEAD~1"]);

        let repo = Repo::new(clone.clone(), None);
        repo.fetch().await.unwrap();
        repo.ensure_commit(&pr).await.unwrap();
        let dir = tmp.path().join("worktrees/box/account");
        repo.checkout(&dir, &pr).await.unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.join("main.go")).unwrap(),
            "package main // pr\n"
        );

        let missing = "0123456789abcdef0123456789abcdef01234567";
        let error = repo.ensure_commit(missing).await.unwrap_err().to_string();
        assert!(
            error.starts_with(&format!(
                "commit {missing} is neither in {} nor on its origin",
                clone.display()
            )),
            "{error}"
        );
        assert!(error.ends_with("or remove the pin to follow the branch"), "{error}");
    }

    #[tokio::test]
    async fn a_fetch_from_a_remote_that_never_answers_is_killed_with_its_helpers() {
        use crate::command::tests::{assert_gone, pid_in};
        let tmp = tempfile::tempdir().unwrap();
        let origin = tmp.path().join("origin.git");
        git(tmp.path(), &["init", "-q", "--bare", origin.to_str().unwrap()]);
        let clone = tmp.path().join("clone");
        git(
            tmp.path(),
            &["clone", "-q", origin.to_str().unwrap(), clone.to_str().unwrap()],
        );
        // The remote's side of the fetch, as a stuck server behaves: it starts a child and answers nothing.
        let (pid, child_pid) = (tmp.path().join("upload-pack.pid"), tmp.path().join("child.pid"));
        let upload_pack = tmp.path().join("hang.sh");
        std::fs::write(
            &upload_pack,
            format!(
                "#!/bin/sh\necho $$ > {}\nsleep 600 &\necho $! > {}\nwait\n",
                pid.display(),
                child_pid.display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&upload_pack, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        git(
            &clone,
            &["config", "remote.origin.uploadpack", upload_pack.to_str().unwrap()],
        );

        let mut repo = Repo::new(clone.clone(), None);
        repo.deadlines.network_git = std::time::Duration::from_millis(1500);
        let error = repo.fetch().await.unwrap_err();
        assert_eq!(
            error.to_string(),
            format!("git fetch of {} took longer than 1500 ms: killed", clone.display())
        );
        assert_gone(pid_in(&pid).await, "the remote's upload-pack").await;
        assert_gone(pid_in(&child_pid).await, "the upload-pack's child").await;
    }
}
