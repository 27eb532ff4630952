//! Asking git whether a username and password may read the config repo: `git ls-remote` with the password
//! handed to git's askpass (this `sdp`, run by git) over a unix socket that lives for one attempt.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

use super::new_token;

/// The environment variable that makes `sdp` answer git's password prompt (see `askpass_main`).
pub const ASKPASS_ENV: &str = "SDP_ASKPASS_SOCKET";
/// How long one `git ls-remote` may take.
const CHECK_TIMEOUT: Duration = Duration::from_secs(20);

/// Why a login failed.
#[derive(Debug, PartialEq, Eq)]
pub enum LoginError {
    /// The repo said no: wrong username or password, or no access to the repo.
    Rejected(String),
    /// The repo could not be asked (network, TLS, timeout): nothing is known about the credentials.
    Unavailable(String),
}

/// `git ls-remote` of `repo` as `user`: `Ok` when the repo lets them read it.
pub async fn check_credentials(
    repo: &str,
    user: &str,
    password: &str,
    run_dir: &Path,
    askpass: &Path,
) -> Result<(), LoginError> {
    let token = new_token().map_err(|e| LoginError::Unavailable(format!("{e:#}")))?;
    // A short name: a unix socket path has room for about 100 bytes.
    let socket = run_dir.join(format!("askpass-{}.sock", &token[..16]));
    let listener = tokio::net::UnixListener::bind(&socket)
        .map_err(|e| LoginError::Unavailable(format!("cannot listen on {}: {e}", socket.display())))?;
    let (user_answer, password_answer) = (user.to_string(), password.to_string());
    // Answers git's prompts: "Username for '…': " and "Password for '…': ", a few times at most.
    let answering = tokio::spawn(async move {
        for _ in 0..4 {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let (read, mut write) = stream.into_split();
            let mut prompt = String::new();
            if BufReader::new(read.take(4096)).read_line(&mut prompt).await.is_err() {
                continue;
            }
            let answer = if prompt.trim_start().to_lowercase().starts_with("username") {
                &user_answer
            } else {
                &password_answer
            };
            let _ = write.write_all(format!("{answer}\n").as_bytes()).await;
        }
    });
    let child = tokio::process::Command::new("git")
        .args([
            "-c",
            "credential.helper=",
            "-c",
            "core.askPass=",
            "ls-remote",
            "--heads",
            "--",
        ])
        .arg(repo)
        .env("GIT_ASKPASS", askpass)
        .env(ASKPASS_ENV, &socket)
        .env("GIT_TERMINAL_PROMPT", "0")
        // The service account's own git config (a url.insteadOf, a credential helper, an include) must not
        // change whom a login is checked against or with which credentials.
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env_remove("SSH_ASKPASS")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn();
    let result = match child {
        Err(e) => Err(LoginError::Unavailable(format!("cannot run git: {e}"))),
        Ok(child) => match tokio::time::timeout(CHECK_TIMEOUT, child.wait_with_output()).await {
            Err(_) => Err(LoginError::Unavailable(format!(
                "{repo} did not answer within {} s",
                CHECK_TIMEOUT.as_secs()
            ))),
            Ok(Err(e)) => Err(LoginError::Unavailable(format!("git failed: {e}"))),
            Ok(Ok(out)) if out.status.success() => Ok(()),
            Ok(Ok(out)) => Err(classify(&String::from_utf8_lossy(&out.stderr), password)),
        },
    };
    answering.abort();
    let _ = std::fs::remove_file(&socket);
    result
}

/// What git's complaint means: the credentials were refused, or the repo could not be asked. The message is
/// git's last line, with the password cut out should git ever echo it.
fn classify(stderr: &str, password: &str) -> LoginError {
    let line = stderr
        .lines()
        .map(str::trim)
        .rfind(|l| !l.is_empty())
        .unwrap_or("git ls-remote failed")
        .replace(password, "***");
    let line = line.strip_prefix("fatal: ").unwrap_or(&line).to_string();
    let lower = stderr.to_lowercase();
    let refused = [
        "authentication failed",
        "could not read username",
        "could not read password",
        "the requested url returned error: 401",
        "the requested url returned error: 403",
        "the requested url returned error: 404",
        "' not found",
    ];
    if refused.iter().any(|r| lower.contains(r)) {
        LoginError::Rejected(line)
    } else {
        LoginError::Unavailable(line)
    }
}

/// Git's askpass, when git runs `sdp PROMPT` with `SDP_ASKPASS_SOCKET` set: sends the prompt to the server that
/// started git and prints its answer. Returns `None` when this process is not an askpass call.
pub fn askpass_main() -> Option<std::process::ExitCode> {
    use std::io::{BufRead, Write};
    let socket = std::env::var_os(ASKPASS_ENV)?;
    let prompt = std::env::args().nth(1).unwrap_or_default();
    let answer = (|| -> std::io::Result<String> {
        let mut stream = std::os::unix::net::UnixStream::connect(&socket)?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        stream.write_all(format!("{}\n", prompt.replace('\n', " ")).as_bytes())?;
        let mut line = String::new();
        std::io::BufReader::new(stream).read_line(&mut line)?;
        Ok(line)
    })();
    match answer {
        Ok(line) if !line.is_empty() => {
            print!("{line}");
            Some(std::process::ExitCode::SUCCESS)
        }
        _ => {
            eprintln!("sdp: no answer for git's prompt (the login attempt is over)");
            Some(std::process::ExitCode::FAILURE)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn git_complaints_are_told_apart() {
        let refused = "remote: denied\nfatal: Authentication failed for 'https://bitbucket.example/scm/x.git/'\n";
        assert!(matches!(classify(refused, "pw"), LoginError::Rejected(m) if m.starts_with("Authentication failed")));
        let down = "fatal: unable to access 'https://bitbucket.example/x.git/': Could not resolve host: x\n";
        assert!(matches!(classify(down, "pw"), LoginError::Unavailable(_)));
        let echoed = "fatal: Authentication failed for 'https://ann:s3cret@host/x.git'";
        assert!(matches!(classify(echoed, "s3cret"), LoginError::Rejected(m) if !m.contains("s3cret")));
    }
}
