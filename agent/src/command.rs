//! Every program the agent runs (git, `go build`, composer, `php -l`, `docker exec`) runs through here: on
//! tokio's process reactor, never on a thread that the connection's reports and heartbeats need, in a process
//! group of its own, and within a deadline. A program that outlives its deadline is killed with its whole group
//! (git's `git-remote-http` and credential helper, go's compiler and linker, composer's children), and the action
//! fails with an error that says what took too long.

use std::process::{ExitStatus, Output, Stdio};
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::io::AsyncReadExt;

/// How long each kind of program may run. A deadline is not a performance target: it is there so that a hung
/// program (a remote that stops answering, a `docker exec` into a wedged container) ends as an error instead of
/// holding its sandbox, and its repository's lock, for ever. Each figure is several times what the slowest
/// healthy run on a VM takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Deadlines {
    /// git over the network (fetch, ls-remote): a large first fetch through the company proxy takes a minute or
    /// two; a remote that sends nothing for 5 minutes is not going to.
    pub network_git: Duration,
    /// git on the node's own disk (rev-parse, checkout, worktree add and remove, show): seconds, even for a
    /// large worktree on a slow disk.
    pub local_git: Duration,
    /// `go build` and `composer install`: a cold build of a large service without a warm cache takes minutes.
    pub build: Duration,
    /// `php -l`, the gateway's reload, `go version`: each answers within a second when it works.
    pub short: Duration,
}

/// The deadlines the agent runs with. Not an operator setting: tests give shorter ones to the code they test.
pub const DEADLINES: Deadlines = Deadlines {
    network_git: Duration::from_secs(5 * 60),
    local_git: Duration::from_secs(2 * 60),
    build: Duration::from_secs(20 * 60),
    short: Duration::from_secs(60),
};

impl Default for Deadlines {
    fn default() -> Deadlines {
        DEADLINES
    }
}

/// A duration as an error message says it: `5 min`, `60 s`, `300 ms`.
pub fn human(d: Duration) -> String {
    match (d.as_secs(), d.subsec_millis()) {
        (s, 0) if s >= 60 && s % 60 == 0 => format!("{} min", s / 60),
        (s, 0) => format!("{s} s"),
        _ => format!("{} ms", d.as_millis()),
    }
}

/// A running program, leader of its own process group. Dropped before it was reaped (its action aborted with
/// the connection), it is killed with its group.
pub struct Child {
    child: tokio::process::Child,
    /// The group's id (the leader's pid) while the leader is not reaped, so that it cannot name another group.
    group: Option<i32>,
    what: String,
}

impl Child {
    /// Starts `cmd` in a process group of its own, reading nothing from the agent's stdin. `what` names it in
    /// errors: `git fetch of /home/app/AppGolang/account`.
    pub fn spawn(mut cmd: tokio::process::Command, what: &str) -> Result<Child> {
        cmd.process_group(0).stdin(Stdio::null()).kill_on_drop(true);
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot run {what}: is it installed and on PATH?"))?;
        let group = child.id().and_then(|pid| i32::try_from(pid).ok());
        Ok(Child {
            child,
            group,
            what: what.to_string(),
        })
    }

    pub fn stdout(&mut self) -> Option<tokio::process::ChildStdout> {
        self.child.stdout.take()
    }

    pub fn stderr(&mut self) -> Option<tokio::process::ChildStderr> {
        self.child.stderr.take()
    }

    /// Waits for the program's end within `limit`; past it, kills its group and says so.
    pub async fn wait(&mut self, limit: Duration) -> Result<ExitStatus> {
        match tokio::time::timeout(limit, self.child.wait()).await {
            Ok(status) => {
                self.group = None;
                Ok(status?)
            }
            Err(_) => Err(self.killed(limit).await),
        }
    }

    /// Kills the group and reaps the leader; the error to report.
    async fn killed(&mut self, limit: Duration) -> anyhow::Error {
        self.kill_group();
        let _ = self.child.kill().await;
        self.group = None;
        anyhow::anyhow!("{} took longer than {}: killed", self.what, human(limit))
    }

    fn kill_group(&self) {
        if let Some(group) = self.group {
            // SAFETY: killpg has no memory effects; the group is ours (its leader is not reaped yet).
            unsafe {
                libc::killpg(group, libc::SIGKILL);
            }
        }
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        self.kill_group();
    }
}

/// Runs `cmd` to its end within `limit` and collects its output, like `Command::output`. Past the deadline the
/// program and its group are killed, and the error says `<what> took longer than <limit>: killed`.
pub async fn output(mut cmd: tokio::process::Command, what: &str, limit: Duration) -> Result<Output> {
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = Child::spawn(cmd, what)?;
    let (read_out, read_err) = (read_all(child.stdout()), read_all(child.stderr()));
    // The pipes are read to their end too: a child of the program that keeps them open counts as running.
    let all = async { tokio::join!(child.child.wait(), read_out, read_err) };
    match tokio::time::timeout(limit, all).await {
        Ok((status, stdout, stderr)) => {
            child.group = None;
            Ok(Output {
                status: status.with_context(|| format!("cannot wait for {what}"))?,
                stdout,
                stderr,
            })
        }
        Err(_) => Err(child.killed(limit).await),
    }
}

async fn read_all(pipe: Option<impl tokio::io::AsyncRead + Unpin>) -> Vec<u8> {
    let mut bytes = Vec::new();
    if let Some(mut pipe) = pipe {
        let _ = pipe.read_to_end(&mut bytes).await;
    }
    bytes
}

#[cfg(test)]
pub mod tests {
    use super::*;

    /// Whether a process is gone: no /proc entry, or a zombie nobody reaped yet (a container's init may not).
    pub fn gone(pid: i32) -> bool {
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Err(_) => true,
            // The state follows the command name in parentheses, which may itself hold spaces or parentheses.
            Ok(stat) => stat
                .rsplit_once(')')
                .is_some_and(|(_, rest)| rest.trim_start().starts_with(['Z', 'X'])),
        }
    }

    /// Waits (up to a deadline that only detects a hang) for a pid to be written to `file` by a test's script.
    pub async fn pid_in(file: &std::path::Path) -> i32 {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(pid) = std::fs::read_to_string(file).ok().and_then(|t| t.trim().parse().ok()) {
                return pid;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{} was never written",
                file.display()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits (up to a deadline that only detects a hang) for a process to be gone.
    pub async fn assert_gone(pid: i32, what: &str) {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while !gone(pid) {
            assert!(
                std::time::Instant::now() < deadline,
                "{what} (pid {pid}) is still running"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[test]
    fn durations_read_as_an_operator_says_them() {
        assert_eq!(human(DEADLINES.network_git), "5 min");
        assert_eq!(human(Duration::from_secs(60)), "1 min");
        assert_eq!(human(Duration::from_secs(45)), "45 s");
        assert_eq!(human(Duration::from_millis(300)), "300 ms");
    }

    #[tokio::test]
    async fn a_program_past_its_deadline_is_killed_with_its_children() {
        let tmp = tempfile::tempdir().unwrap();
        let (leader, grandchild) = (tmp.path().join("leader"), tmp.path().join("grandchild"));
        let mut cmd = tokio::process::Command::new("sh");
        // The shell forks a sleep (a child of its own, as git forks git-remote-http) and waits for it.
        cmd.arg("-c").arg(format!(
            "echo $$ > {}; sleep 600 & echo $! > {}; wait",
            leader.display(),
            grandchild.display()
        ));
        let error = output(cmd, "the hanging program", Duration::from_millis(500))
            .await
            .unwrap_err();
        assert_eq!(error.to_string(), "the hanging program took longer than 500 ms: killed");
        let (leader, grandchild) = (pid_in(&leader).await, pid_in(&grandchild).await);
        assert_gone(leader, "the program").await;
        assert_gone(grandchild, "the program's child").await;
    }

    #[tokio::test]
    async fn a_program_within_its_deadline_gives_its_output_and_status() {
        let mut cmd = tokio::process::Command::new("sh");
        cmd.args(["-c", "echo out; echo err >&2; exit 3"]);
        let out = output(cmd, "sh", Duration::from_secs(60)).await.unwrap();
        assert_eq!(out.status.code(), Some(3));
        assert_eq!(out.stdout, b"out\n");
        assert_eq!(out.stderr, b"err\n");
    }

    #[tokio::test]
    async fn a_dropped_program_is_killed_with_its_children() {
        let tmp = tempfile::tempdir().unwrap();
        let grandchild = tmp.path().join("grandchild");
        let mut cmd = tokio::process::Command::new("sh");
        cmd.arg("-c")
            .arg(format!("sleep 600 & echo $! > {}; wait", grandchild.display()));
        let child = Child::spawn(cmd, "sh").unwrap();
        let pid = pid_in(&grandchild).await;
        drop(child);
        assert_gone(pid, "the dropped program's child").await;
    }
}
