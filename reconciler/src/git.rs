//! The user's own git, for the commands that write the config repo (`sdp apply`, `delete`, `new`).
//!
//! These run the `git` CLI on purpose: a commit must carry the user's identity and a push must use the user's
//! credential helpers, SSH keys and hooks, exactly as if they had typed the commands themselves.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};

/// One commit: the API's type, as the dashboard shows a change.
pub use sdp_dashboard::docs::Change;

/// A git work tree.
pub struct Git {
    root: PathBuf,
}

impl Git {
    /// The config repo at `dir`, which must be inside a git work tree.
    pub fn open(dir: &Path) -> Result<Git> {
        let out = Command::new("git")
            .arg("-C")
            .arg(dir)
            .args(["rev-parse", "--show-toplevel"])
            .output()
            .context("cannot run git: is it installed and on PATH?")?;
        if !out.status.success() {
            bail!(
                "{} is not inside a git repository: the config repo must be a git clone",
                dir.display()
            );
        }
        // Commands run from `dir` itself, so paths are relative to the config repo even when it is a folder of a
        // larger git repository (as `examples/` is in SDP's own).
        Ok(Git {
            root: dir.to_path_buf(),
        })
    }

    /// A repository at `dir` without checks: a bare mirror the reconciler keeps of a remote config repo.
    pub fn at(dir: &Path) -> Git {
        Git {
            root: dir.to_path_buf(),
        }
    }

    /// Makes or refreshes a bare mirror of `url` at `dir`: every branch of the remote, HEAD following the
    /// remote's default branch. Credentials come from the operator's git configuration (a credential helper or
    /// `~/.git-credentials`), never from SDP's command line.
    pub fn mirror(url: &str, dir: &Path) -> Result<Git> {
        if !dir.join("HEAD").is_file() {
            let out = Command::new("git")
                .args(["clone", "--bare", "--quiet", "--", url])
                .arg(dir)
                .env("GIT_TERMINAL_PROMPT", "0")
                .output()
                .context("cannot run git: is it installed and on PATH?")?;
            if !out.status.success() {
                bail!(
                    "cannot clone the config repo: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            }
        }
        let git = Git::at(dir);
        git.command()
            .env("GIT_TERMINAL_PROMPT", "0")
            .args(["fetch", "--quiet", "--prune", "origin", "+refs/heads/*:refs/heads/*"])
            .output()
            .context("cannot run git")
            .and_then(|out| {
                if out.status.success() {
                    Ok(())
                } else {
                    bail!(
                        "cannot fetch the config repo: {}",
                        String::from_utf8_lossy(&out.stderr).trim()
                    )
                }
            })?;
        Ok(git)
    }

    /// HEAD's commit id, author (`Name <email>`) and commit time (unix seconds); `None` before the first commit.
    pub fn head_commit(&self) -> Result<Option<(String, String, u64)>> {
        if !self.has_head() {
            return Ok(None);
        }
        let out = self.run(&["log", "-1", "--format=%H%x00%an <%ae>%x00%ct", "HEAD"])?;
        let mut parts = out.trim_end().split('\0');
        let (Some(id), Some(author), Some(time)) = (parts.next(), parts.next(), parts.next()) else {
            bail!("unexpected answer from git log: {out}");
        };
        Ok(Some((id.to_string(), author.to_string(), time.parse().unwrap_or(0))))
    }

    /// The commits that touched files under `dirs`, oldest first, each with the files it touched: those after
    /// `since` up to `until` (a commit id), or all of `until`'s history without `since` (or when git no longer
    /// knows it).
    pub fn changes(&self, since: Option<&str>, until: &str, dirs: &[&str]) -> Result<Vec<(Change, Vec<PathBuf>)>> {
        let range = match since {
            Some(s) if self.run(&["cat-file", "-e", &format!("{s}^{{commit}}")]).is_ok() => format!("{s}..{until}"),
            _ => until.to_string(),
        };
        let mut args = vec![
            "log",
            "--reverse",
            "--no-renames",
            "--name-only",
            "--format=%x01%H%x00%an <%ae>%x00%ct",
            &range,
            "--",
        ];
        args.extend(dirs);
        let out = self.run(&args)?;
        let mut commits = Vec::new();
        for record in out.split('\u{1}').filter(|r| !r.trim().is_empty()) {
            let mut lines = record.lines();
            let mut head = lines.next().unwrap_or_default().split('\0');
            let (Some(commit), Some(author), Some(time)) = (head.next(), head.next(), head.next()) else {
                bail!("unexpected answer from git log: {record}");
            };
            let change = Change {
                commit: commit.to_string(),
                author: author.to_string(),
                time: time.trim().parse().unwrap_or(0),
            };
            let files = lines.filter(|l| !l.is_empty()).map(PathBuf::from).collect();
            commits.push((change, files));
        }
        Ok(commits)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn command(&self) -> Command {
        let mut cmd = Command::new("git");
        cmd.arg("-C").arg(&self.root);
        cmd
    }

    /// Runs git and returns its standard output; a failure carries git's own message.
    fn run(&self, args: &[&str]) -> Result<String> {
        let out = self.command().args(args).output().context("cannot run git")?;
        if !out.status.success() {
            bail!(
                "git {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Whether HEAD points at a commit (a new repository has none).
    pub fn has_head(&self) -> bool {
        self.run(&["rev-parse", "--verify", "-q", "HEAD"]).is_ok()
    }

    /// The files under `dirs` in HEAD, with their content, as paths relative to the work tree.
    pub fn head_files(&self, dirs: &[&str]) -> Result<Vec<(PathBuf, Vec<u8>)>> {
        if !self.has_head() {
            return Ok(Vec::new());
        }
        self.files_at("HEAD", dirs)
    }

    /// The files under `dirs` in `commit` (an id, or a name git resolves), with their content, as paths relative to
    /// the work tree.
    pub fn files_at(&self, commit: &str, dirs: &[&str]) -> Result<Vec<(PathBuf, Vec<u8>)>> {
        let mut args = vec!["ls-tree", "-r", "-z", "-l", commit, "--"];
        args.extend(dirs);
        let listing = self.run(&args)?;
        let mut wanted = Vec::new();
        // Blobs over the manifest limit are never read (a 300 MB file in a small repo took the reconciler to 1 GB):
        // each stands as a file just over the limit, which the loader refuses as too large, naming it.
        let mut oversized = Vec::new();
        for entry in listing.split('\0').filter(|e| !e.is_empty()) {
            // "<mode> <type> <object>\t<path>"; only regular files count, as on disk.
            let Some((meta, path)) = entry.split_once('\t') else {
                continue;
            };
            let mut parts = meta.split_whitespace();
            let (mode, kind, object, size) = (parts.next(), parts.next(), parts.next(), parts.next());
            if kind != Some("blob") || !matches!(mode, Some("100644" | "100755")) {
                continue;
            }
            let size: u64 = size.and_then(|s| s.parse().ok()).unwrap_or(u64::MAX);
            if size > sdp_manifest::MAX_FILE_BYTES as u64 {
                oversized.push(PathBuf::from(path));
                continue;
            }
            if let Some(object) = object {
                wanted.push((PathBuf::from(path), object.to_string()));
            }
        }
        // One `cat-file --batch` for all blobs, not one process per file.
        let mut child = self
            .command()
            .args(["cat-file", "--batch"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("cannot run git")?;
        let request: String = wanted.iter().map(|(_, object)| format!("{object}\n")).collect();
        let mut stdin = child.stdin.take().context("git cat-file has no stdin")?;
        // Written from a thread: git may fill its output pipe before it has read all of the request.
        let writer = std::thread::spawn(move || stdin.write_all(request.as_bytes()));
        let out = child.wait_with_output().context("cannot run git")?;
        let _ = writer.join();
        if !out.status.success() {
            bail!(
                "git cat-file --batch failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        let mut files = Vec::new();
        let mut rest = out.stdout.as_slice();
        for (path, object) in wanted {
            // "<object> blob <size>\n<content>\n"
            let header_end = rest
                .iter()
                .position(|b| *b == b'\n')
                .context("short answer from git cat-file")?;
            let header = String::from_utf8_lossy(&rest[..header_end]).into_owned();
            let size: usize = match header.split(' ').collect::<Vec<_>>().as_slice() {
                [id, "blob", size] if *id == object => size.parse().context("bad size from git cat-file")?,
                _ => bail!("unexpected answer from git cat-file for {}: {header}", path.display()),
            };
            let body = rest
                .get(header_end + 1..header_end + 1 + size)
                .context("short answer from git cat-file")?;
            files.push((path, body.to_vec()));
            rest = rest.get(header_end + 2 + size..).unwrap_or_default();
        }
        files.extend(
            oversized
                .into_iter()
                .map(|path| (path, vec![b'#'; sdp_manifest::MAX_FILE_BYTES + 1])),
        );
        Ok(files)
    }

    /// Whether `rel` differs from HEAD in the index or the work tree (untracked counts).
    pub fn is_dirty(&self, rel: &Path) -> Result<bool> {
        let rel = rel.to_string_lossy();
        let out = self.run(&["status", "--porcelain", "--untracked-files=all", "--", &rel])?;
        Ok(!out.trim().is_empty())
    }

    /// The identity a commit would carry, or a clear error when git has none.
    pub fn identity(&self) -> Result<String> {
        let ident = self.run(&["var", "GIT_AUTHOR_IDENT"]).map_err(|_| {
            anyhow::anyhow!(
                "git has no identity to commit with; set yours once with:\n  git config --global user.name \"Your Name\"\n  git config --global user.email you@example.com"
            )
        })?;
        // "Name <email> 1700000000 +0000": the time is not part of who.
        let who = ident.trim().rsplitn(3, ' ').nth(2).unwrap_or(ident.trim()).to_string();
        Ok(who)
    }

    /// Commits exactly `paths` (their work-tree state, additions and removals), nothing else the user staged.
    pub fn commit_paths(&self, paths: &[PathBuf], message: &str) -> Result<String> {
        let names: Vec<String> = paths.iter().map(|p| p.to_string_lossy().into_owned()).collect();
        let mut add = vec!["add", "-A", "--"];
        add.extend(names.iter().map(String::as_str));
        self.run(&add)?;
        let mut commit = vec!["commit", "-q", "-m", message, "--only", "--"];
        commit.extend(names.iter().map(String::as_str));
        if let Err(e) = self.run(&commit) {
            // Leave the index as it was for these paths.
            let mut reset = vec!["reset", "-q", "--"];
            reset.extend(names.iter().map(String::as_str));
            let _ = self.run(&reset);
            return Err(e);
        }
        Ok(self.run(&["rev-parse", "--short", "HEAD"])?.trim().to_string())
    }

    /// The upstream of the current branch, such as `origin/main`.
    pub fn upstream(&self) -> Result<String> {
        self.run(&["rev-parse", "--abbrev-ref", "--symbolic-full-name", "@{upstream}"])
            .map(|s| s.trim().to_string())
            .map_err(|_| {
                anyhow::anyhow!(
                    "the current branch has no upstream to push to; set one with: git push -u origin <branch>"
                )
            })
    }

    /// Follows the current branch's upstream, for a config repo clone on the reconciler's VM: fetches it and
    /// fast-forwards to it. A local commit is never discarded: a clone that has commits of its own and is also
    /// behind has diverged, which is an error for a person to resolve. No upstream: nothing to do. Hooks are off
    /// and git never prompts (the operator's credential helper answers, or the fetch fails).
    pub fn follow_upstream(&self) -> Result<()> {
        if self
            .run(&["rev-parse", "--abbrev-ref", "--symbolic-full-name", "@{upstream}"])
            .is_err()
        {
            return Ok(());
        }
        let quiet = |args: &[&str]| -> Result<String> {
            let out = self
                .command()
                .args(["-c", "core.hooksPath=/dev/null", "-c", "core.fsmonitor=false"])
                .args(args)
                .env("GIT_TERMINAL_PROMPT", "0")
                .stdin(Stdio::null())
                .output()
                .context("cannot run git")?;
            if !out.status.success() {
                bail!(
                    "git {} failed: {}",
                    args.join(" "),
                    sdp_protocol::scrub(&String::from_utf8_lossy(&out.stderr))
                );
            }
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        };
        quiet(&["fetch", "--quiet"]).context("cannot fetch the config repo's upstream")?;
        let counts = quiet(&["rev-list", "--left-right", "--count", "HEAD...@{upstream}"])?;
        let mut counts = counts.split_whitespace().map(|n| n.parse::<usize>().unwrap_or(0));
        let (ahead, behind) = (counts.next().unwrap_or(0), counts.next().unwrap_or(0));
        match (ahead, behind) {
            (_, 0) => Ok(()),
            (0, _) => quiet(&["merge", "--ff-only", "--quiet", "@{upstream}"])
                .map(drop)
                .context("cannot fast-forward the config repo clone to its upstream"),
            (ahead, behind) => bail!(
                "the config repo clone at {} has diverged from its upstream: {ahead} local commit(s) are not \
                 upstream and {behind} upstream commit(s) are not here. SDP never discards a local commit and goes \
                 on with the local HEAD; push or rebase them by hand (git -C {} pull --rebase && git push)",
                self.root.display(),
                self.root.display()
            ),
        }
    }

    /// Fetches the upstream and says how many commits the local branch is behind it.
    pub fn behind_upstream(&self) -> Result<usize> {
        self.interactive(&["fetch", "--quiet"])
            .context("cannot fetch the upstream before pushing")?;
        let count = self.run(&["rev-list", "--count", "HEAD..@{upstream}"])?;
        Ok(count.trim().parse().unwrap_or(0))
    }

    /// Pushes the current branch to its upstream with the user's own credentials.
    pub fn push(&self) -> Result<()> {
        self.interactive(&["push", "--quiet"])
    }

    /// Runs git with the terminal attached, so credential prompts reach the user; the output is theirs to see.
    fn interactive(&self, args: &[&str]) -> Result<()> {
        let status = self
            .command()
            .args(args)
            .stdin(Stdio::inherit())
            .stdout(Stdio::inherit())
            .stderr(Stdio::inherit())
            .status()
            .context("cannot run git")?;
        if !status.success() {
            bail!("git {} failed (its message is above)", args.join(" "));
        }
        Ok(())
    }
}
