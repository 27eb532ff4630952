//! `sdp login` / `sdp logout`: a session with a reconciler that needs a login, for the commands that read its
//! API (`get`, `logs`, `apply --wait`). The password goes to the reconciler once and is forgotten; what is kept
//! is the session token, per server, in `~/.config/sdp/sessions.json` (mode 0600), until it expires (12 h) or
//! `sdp logout`.

use std::collections::BTreeMap;
use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;
use std::process::{Command, ExitCode, Stdio};

use anyhow::{Context, Result, bail};
use sdp_dashboard::docs::{ErrorDoc, LoginDoc, LoginRequest};
use serde::{Deserialize, Serialize};

use super::client::{Server, agent};

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Saved {
    token: String,
    user: String,
    /// Unix seconds.
    expires: u64,
}

fn sessions_file() -> Option<PathBuf> {
    let config = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))?;
    Some(config.join("sdp/sessions.json"))
}

fn key(server: &Server) -> String {
    server.server.trim_end_matches('/').to_string()
}

fn now() -> u64 {
    crate::hub::now_ms() / 1000
}

fn load() -> BTreeMap<String, Saved> {
    sessions_file()
        .and_then(|f| std::fs::read_to_string(f).ok())
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default()
}

fn save(sessions: &BTreeMap<String, Saved>) -> Result<PathBuf> {
    let file = sessions_file().context("neither XDG_CONFIG_HOME nor HOME is set: nowhere to keep the session")?;
    let dir = file.parent().expect("the file is in a directory");
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let tmp = file.with_extension("json.tmp");
    {
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut f = options
            .open(&tmp)
            .with_context(|| format!("cannot write {}", tmp.display()))?;
        f.write_all(serde_json::to_string_pretty(sessions)?.as_bytes())?;
    }
    std::fs::rename(&tmp, &file).with_context(|| format!("cannot write {}", file.display()))?;
    Ok(file)
}

/// The session token for `server`, when `sdp login` made one that has not expired.
pub fn bearer(server: &Server) -> Option<String> {
    load()
        .remove(&key(server))
        .filter(|s| s.expires > now())
        .map(|s| s.token)
}

fn ask(prompt: &str, hidden: bool) -> Result<String> {
    let mut err = std::io::stderr();
    write!(err, "{prompt}")?;
    err.flush()?;
    let stty = |arg: &str| {
        let _ = Command::new("stty").arg(arg).stdin(Stdio::inherit()).status();
    };
    if hidden {
        stty("-echo");
    }
    let mut line = String::new();
    let read = std::io::stdin().lock().read_line(&mut line);
    if hidden {
        stty("echo");
        writeln!(err)?;
    }
    read.context("cannot read the answer")?;
    Ok(line.trim_end_matches(['\n', '\r']).to_string())
}

/// `sdp login`: asks for the username and password (or reads the password from stdin), logs in, keeps the token.
pub fn run_login(server: &Server, username: Option<String>, password_stdin: bool) -> Result<ExitCode> {
    let terminal = std::io::stdin().is_terminal();
    let username = match username {
        Some(u) => u,
        None if terminal && !password_stdin => ask("Bitbucket username: ", false)?,
        None => bail!("give --username when the password comes from stdin"),
    };
    let password = if password_stdin {
        let mut line = String::new();
        std::io::stdin()
            .lock()
            .read_line(&mut line)
            .context("cannot read the password from stdin")?;
        line.trim_end_matches(['\n', '\r']).to_string()
    } else if terminal {
        ask(&format!("Bitbucket password for {username}: "), true)?
    } else {
        bail!("no terminal to ask the password on: pipe it in with --password-stdin");
    };
    let url = format!("{}/api/v1/login", key(server));
    let mut response = agent()
        .post(&url)
        .header("Content-Type", "application/json")
        .send(serde_json::to_string(&LoginRequest {
            username: username.clone(),
            password,
        })?)
        .with_context(|| format!("cannot reach the reconciler at {}", server.server))?;
    let status = response.status().as_u16();
    let text = response.body_mut().read_to_string().unwrap_or_default();
    if status != 200 {
        match serde_json::from_str::<ErrorDoc>(&text) {
            Ok(e) => bail!("{}", e.error),
            Err(_) => bail!("{text}"),
        }
    }
    let doc: LoginDoc = serde_json::from_str(&text).context("the reconciler sent no token")?;
    let mut sessions = load();
    sessions.retain(|_, s| s.expires > now());
    sessions.insert(
        key(server),
        Saved {
            token: doc.token,
            user: username.clone(),
            expires: now() + doc.expires_in_secs,
        },
    );
    let file = save(&sessions)?;
    println!(
        "logged in to {} as {username} for {} h (session kept in {})",
        key(server),
        doc.expires_in_secs / 3600,
        file.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// `sdp logout`: ends the session on the reconciler and forgets it here.
pub fn run_logout(server: &Server) -> Result<ExitCode> {
    let mut sessions = load();
    let Some(saved) = sessions.remove(&key(server)) else {
        println!("not logged in to {}", key(server));
        return Ok(ExitCode::SUCCESS);
    };
    // The server may be gone; the local session is forgotten all the same.
    let ended = agent()
        .post(format!("{}/logout", key(server)))
        .header("Authorization", &format!("Bearer {}", saved.token))
        .send_empty();
    save(&sessions)?;
    match ended {
        Ok(_) => println!("logged out of {}", key(server)),
        Err(e) => println!(
            "forgot the session for {} (the reconciler did not answer: {e})",
            key(server)
        ),
    }
    Ok(ExitCode::SUCCESS)
}
