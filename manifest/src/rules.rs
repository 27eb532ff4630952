//! The rules that a single value must follow, as pure predicates. Each returns what is wrong and a hint.

/// What is wrong with a value, and what to do instead.
#[derive(Debug, PartialEq, Eq)]
pub struct Broken {
    pub message: String,
    pub hint: Option<String>,
}

fn broken(message: impl Into<String>, hint: impl Into<String>) -> Broken {
    Broken {
        message: message.into(),
        hint: Some(hint.into()),
    }
}

pub const MAX_NAME_LEN: usize = 40;
pub const MIN_PORT: u32 = 1024;
pub const MAX_PORT: u32 = 65535;
/// Docker refuses memory limits under 6 MB.
const MIN_MEMORY_BYTES: u64 = 6 * 1024 * 1024;

fn is_dns_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

/// Object names: DNS labels of at most 40 characters, since container, network and URL names derive from them.
pub fn object_name(what: &str, name: &str) -> Result<(), Broken> {
    if is_dns_label(name) && name.len() <= MAX_NAME_LEN {
        return Ok(());
    }
    let suggestion = suggest_label(name);
    let hint = match suggestion {
        Some(s) if s != name => format!("use lowercase letters, digits and '-', e.g. `{s}`"),
        _ => "use 1 to 40 lowercase letters, digits and '-', starting and ending with a letter or digit".into(),
    };
    Err(broken(
        format!("{what} `{name}` is not a DNS label of at most {MAX_NAME_LEN} characters"),
        hint,
    ))
}

/// Service names: DNS labels of at most 30 characters (they become `sandbox-{sandbox}-{service}` and the
/// gateway's `{service}_url` key); `gateway` is the sandbox's own gateway container.
pub fn service_name(name: &str) -> Result<(), Broken> {
    if name == "gateway" {
        return Err(broken(
            "`gateway` cannot be a service name: it is the sandbox's own gateway container",
            "the gateway is configured under spec.gateway",
        ));
    }
    if is_dns_label(name) && name.len() <= 30 {
        return Ok(());
    }
    Err(broken(
        format!("service name `{name}` is not a DNS label of at most 30 characters"),
        "use lowercase letters, digits and '-', as in the gateway's `<service>_url` keys",
    ))
}

fn suggest_label(name: &str) -> Option<String> {
    let mut out = String::new();
    for c in name.chars() {
        match c {
            'a'..='z' | '0'..='9' => out.push(c),
            'A'..='Z' => out.push(c.to_ascii_lowercase()),
            _ if !out.ends_with('-') && !out.is_empty() => out.push('-'),
            _ => {}
        }
    }
    let out: String = out.trim_matches('-').chars().take(MAX_NAME_LEN).collect();
    let out = out.trim_end_matches('-').to_string();
    (!out.is_empty()).then_some(out)
}

/// Branch names as `git check-ref-format --branch` accepts them, and never starting with `-` (it would read
/// as an option on a git command line).
pub fn branch(name: &str) -> Result<(), Broken> {
    let hint = "use a branch name git accepts, such as `feature/login-error`";
    let why = if name.is_empty() {
        Some("is empty")
    } else if name.starts_with('-') {
        Some("starts with '-'")
    } else if name.chars().any(|c| c.is_ascii_control() || c == ' ' || c == '\u{7f}') {
        Some("contains whitespace or a control character")
    } else if name
        .chars()
        .any(|c| matches!(c, '~' | '^' | ':' | '?' | '*' | '[' | '\\'))
    {
        Some("contains one of ~ ^ : ? * [ \\")
    } else if name.contains("..") {
        Some("contains '..'")
    } else if name.contains("@{") || name == "@" {
        Some("contains '@{' or is '@'")
    } else if name.starts_with('/') || name.ends_with('/') || name.contains("//") {
        Some("has an empty path component")
    } else if name.ends_with('.') || name.ends_with(".lock") {
        Some("ends with '.' or '.lock'")
    } else if name
        .split('/')
        .any(|part| part.starts_with('.') || part.ends_with(".lock"))
    {
        Some("has a path component starting with '.' or ending with '.lock'")
    } else {
        None
    };
    match why {
        None => Ok(()),
        Some(why) => Err(broken(format!("branch `{name}` {why}"), hint)),
    }
}

/// The longest `namePrefix` of a SandboxSet: room is left in the 40 characters of a sandbox name for `-`, a few
/// characters of the branch and `--` with an 8-digit hash.
pub const MAX_NAME_PREFIX_LEN: usize = 24;
/// The most sandboxes one SandboxSet may make.
pub const MAX_SET_SIZE: u32 = 50;

/// A SandboxSet's branch pattern: a branch name in which `*` stands for any characters (the only wildcard).
pub fn branch_pattern(pattern: &str) -> Result<(), Broken> {
    let hint = "write a branch name with `*` for any characters, such as `feature/*`";
    if let Some(c) = pattern.chars().find(|c| matches!(c, '?' | '[' | ']' | '{' | '}' | '!')) {
        return Err(broken(
            format!("branch pattern `{pattern}` uses `{c}`: only `*` is a wildcard"),
            hint,
        ));
    }
    // Every `*` stands for at least one character of a valid branch name.
    let example = pattern.replace('*', "x");
    branch(&example).map_err(|_| {
        broken(
            format!("branch pattern `{pattern}` cannot match a valid branch name"),
            hint,
        )
    })
}

/// A SandboxSet's cap: 1 to 50 sandboxes.
pub fn set_max(max: u32) -> Result<(), Broken> {
    if (1..=MAX_SET_SIZE).contains(&max) {
        return Ok(());
    }
    Err(broken(
        format!("max {max} is outside 1-{MAX_SET_SIZE}"),
        "a set makes at least one and at most 50 sandboxes",
    ))
}

/// A SandboxSet's name prefix: a DNS label of at most 24 characters.
pub fn name_prefix(prefix: &str) -> Result<(), Broken> {
    if is_dns_label(prefix) && prefix.len() <= MAX_NAME_PREFIX_LEN {
        return Ok(());
    }
    Err(broken(
        format!("name prefix `{prefix}` is not a DNS label of at most {MAX_NAME_PREFIX_LEN} characters"),
        "generated sandboxes are named `<prefix>-<branch>` within 40 characters: set a short `namePrefix` such as \
         `feat`",
    ))
}

/// A pinned commit: a full commit id as git prints it, 40 lowercase hex digits. A short id could become ambiguous
/// as the repository grows, and a branch or tag name would move.
pub fn commit_id(id: &str) -> Result<(), Broken> {
    if id.len() == 40 && id.bytes().all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c)) {
        return Ok(());
    }
    let shown: String = id
        .chars()
        .take(60)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect();
    Err(broken(
        format!("commit `{shown}` is not a full commit id (40 lowercase hex digits)"),
        "write the whole id as `git rev-parse <commit>` prints it, or leave `commit` out to follow the branch",
    ))
}

/// Explicit host ports.
pub fn port(port: u32) -> Result<(), Broken> {
    if (MIN_PORT..=MAX_PORT).contains(&port) {
        return Ok(());
    }
    Err(broken(
        format!("port {port} is out of range {MIN_PORT}-{MAX_PORT}"),
        "leave `port` out to have one allocated, or pick an unprivileged port",
    ))
}

/// A health check path: an absolute HTTP path, written into a request line and a container label as it is.
pub fn health_path(path: &str) -> Result<(), Broken> {
    let hint = "write an absolute path such as /healthz";
    if !path.starts_with('/') {
        return Err(broken(format!("health path `{path}` does not start with `/`"), hint));
    }
    if path.len() > 200 {
        return Err(broken("the health path is longer than 200 characters", hint));
    }
    if path
        .chars()
        .any(|c| c.is_whitespace() || c.is_control() || !c.is_ascii())
    {
        return Err(broken(
            format!(
                "health path `{}` contains a space, a control or a non-ASCII character",
                path.escape_default()
            ),
            hint,
        ));
    }
    Ok(())
}

/// Route URLs end up inside a single-quoted PHP string in config.php: only plain http(s) URLs with nothing
/// that could leave the string or be interpolated.
pub fn route_url(url: &str) -> Result<(), Broken> {
    let hint = "write `sandbox`, `ocp`, or a plain URL such as http://172.18.136.92:9105";
    if let Some(c) = url
        .chars()
        .find(|c| matches!(c, '\'' | '"' | '\\' | '$' | '`') || c.is_whitespace() || c.is_control())
    {
        let shown: String = url.chars().map(|c| if c.is_control() { '?' } else { c }).collect();
        return Err(broken(
            format!("route URL `{shown}` contains {c:?}, which is not allowed"),
            hint,
        ));
    }
    let rest = url.strip_prefix("http://").or_else(|| url.strip_prefix("https://"));
    let Some(rest) = rest else {
        return Err(broken(
            format!("route `{url}` is neither `sandbox`, `ocp` nor an http(s) URL"),
            hint,
        ));
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    if authority.contains('@') {
        return Err(broken(
            format!("route URL `{url}` carries credentials"),
            "credentials never go into routes",
        ));
    }
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || authority.starts_with('[') => (h, Some(p)),
        _ => (authority, None),
    };
    let host_ok = !host.is_empty()
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '[' | ']' | ':'));
    if !host_ok {
        return Err(broken(format!("route URL `{url}` has no valid host"), hint));
    }
    if let Some(p) = port
        && !p.parse::<u16>().is_ok_and(|p| p > 0)
    {
        return Err(broken(format!("route URL `{url}` has an invalid port `{p}`"), hint));
    }
    Ok(())
}

/// Environment variable names as POSIX shells accept them.
pub fn env_var_name(name: &str) -> Result<(), Broken> {
    let mut chars = name.chars();
    let ok = chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
    if ok {
        return Ok(());
    }
    Err(broken(
        format!("`{name}` is not a valid environment variable name"),
        "use letters, digits and '_', not starting with a digit",
    ))
}

/// A plain variable whose name says it holds a secret. Its value would sit in git, in clear.
pub fn plain_variable_not_secret(name: &str) -> Result<(), Broken> {
    let upper = name.to_ascii_uppercase();
    let secretish = ["PASSWORD", "PASSWD", "SECRET", "TOKEN", "PRIVATE_KEY", "API_KEY"];
    if secretish
        .iter()
        .any(|s| upper == *s || upper.ends_with(&format!("_{s}")))
    {
        return Err(broken(
            format!("`{name}` looks like a secret, written as a plain value in the config repo"),
            "put it under an Environment's `secrets` as `{ file: /etc/sdp/secrets/<name> }` on the VM",
        ));
    }
    Ok(())
}

/// Secret files are read by the agent on the VM: an absolute path.
pub fn secret_file(path: &str) -> Result<(), Broken> {
    if path.starts_with('/') && !path.contains("/../") && !path.ends_with("/..") && !path.chars().any(char::is_control)
    {
        return Ok(());
    }
    Err(broken(
        format!("secret file `{path}` is not an absolute path"),
        "write the absolute path of the file on the VM, e.g. /etc/sdp/secrets/account-db-password",
    ))
}

/// Files that an Environment writes into a worktree: relative paths that stay inside it.
pub fn relative_file(path: &str) -> Result<(), Broken> {
    let ok = !path.is_empty()
        && !path.starts_with('/')
        && !path.contains('\\')
        && !path.chars().any(char::is_control)
        && path
            .split('/')
            .all(|part| !part.is_empty() && part != "." && part != "..");
    if ok {
        return Ok(());
    }
    Err(broken(
        format!("file path `{path}` is not a plain relative path inside the worktree"),
        "write a relative path without `..`, e.g. config/app.yaml",
    ))
}

/// The main package of a Go build: `.` or a relative path inside the repository (`./cmd/account`).
pub fn go_package(package: &str) -> Result<(), Broken> {
    let inner = package.strip_prefix("./").unwrap_or(package);
    let ok = package == "."
        || (package.starts_with("./")
            && inner.split('/').all(|part| {
                !part.is_empty()
                    && part != "."
                    && part != ".."
                    && part
                        .bytes()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'-' | b'.'))
            }));
    if ok {
        return Ok(());
    }
    Err(broken(
        format!("build package `{package}` is not `.` or a `./` path inside the repository"),
        "write the main package's directory, e.g. ./cmd/account",
    ))
}

/// A Go build tag: letters, digits, `_` and `.`.
pub fn build_tag(tag: &str) -> Result<(), Broken> {
    if !tag.is_empty()
        && tag
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.'))
    {
        return Ok(());
    }
    Err(broken(
        format!("build tag `{tag}` is not a Go build tag"),
        "use letters, digits, `_` and `.`, e.g. netgo",
    ))
}

/// Linker flags: `-s`, `-w` and `-X importpath.name=value` only. Any other flag of Go's linker could name a
/// program for the VM to run (`-extld`, `-linkmode=external`) or a file to read.
pub fn ldflags(flags: &str) -> Result<(), Broken> {
    let hint = "only -s, -w and -X importpath.name=value are allowed (other linker flags can run programs on the VM)";
    let mut words = flags.split_whitespace();
    while let Some(word) = words.next() {
        let assignment = match word {
            "-s" | "-w" => continue,
            "-X" => words.next(),
            w => w.strip_prefix("-X="),
        };
        let Some(assignment) = assignment else {
            return Err(broken(format!("linker flag `{word}` is not allowed"), hint));
        };
        let Some((name, value)) = assignment.split_once('=') else {
            return Err(broken(format!("`-X {assignment}` is not importpath.name=value"), hint));
        };
        let name_ok = name.contains('.')
            && !name.starts_with('-')
            && name
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'/' | b'-'));
        let value_ok = !value
            .chars()
            .any(|c| c.is_control() || matches!(c, '\'' | '"' | '\\' | '`'));
        if !name_ok || !value_ok {
            return Err(broken(format!("`-X {assignment}` is not importpath.name=value"), hint));
        }
    }
    Ok(())
}

/// Durations such as `90m`, `36h`, `14d`, `2w` or `1d12h`, in seconds.
pub fn duration_secs(text: &str) -> Result<u64, Broken> {
    let bad = || {
        broken(
            format!("`{text}` is not a duration"),
            "write a number with a unit, s m h d w, such as 14d or 1d12h",
        )
    };
    let mut total: u64 = 0;
    let mut digits = String::new();
    for c in text.chars() {
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        let unit = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86_400,
            'w' => 604_800,
            _ => return Err(bad()),
        };
        let n: u64 = digits.parse().map_err(|_| bad())?;
        total = n.checked_mul(unit).and_then(|v| total.checked_add(v)).ok_or_else(bad)?;
        digits.clear();
    }
    if !digits.is_empty() || total == 0 {
        return Err(bad());
    }
    Ok(total)
}

/// Memory quantities such as `512Mi`, `1Gi`, `500M` or plain bytes, in bytes.
pub fn memory_bytes(text: &str) -> Result<u64, Broken> {
    let hint = "write bytes or a number with Ki, Mi, Gi (or K, M, G), such as 512Mi";
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (num, unit) = text.split_at(split);
    let factor: u64 = match unit {
        "" => 1,
        "K" | "k" => 1000,
        "M" => 1000_u64.pow(2),
        "G" => 1000_u64.pow(3),
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        _ => return Err(broken(format!("`{text}` is not a memory quantity"), hint)),
    };
    let bytes = num
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(factor))
        .ok_or_else(|| broken(format!("`{text}` is not a memory quantity"), hint))?;
    if bytes < MIN_MEMORY_BYTES {
        return Err(broken(
            format!("memory `{text}` is below Docker's minimum of 6 MiB"),
            hint,
        ));
    }
    Ok(bytes)
}

/// CPU limits in cores.
pub fn cpus(cpus: f64) -> Result<(), Broken> {
    if (0.01..=256.0).contains(&cpus) {
        return Ok(());
    }
    Err(broken(
        format!("cpus {cpus} is out of range"),
        "write a number of cores between 0.01 and 256, e.g. 0.5",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_builds_take_a_package_in_the_repo_tags_and_only_harmless_linker_flags() {
        for ok in [".", "./cmd/account", "./cmd/card-limit", "./services/v2.1/api"] {
            assert!(go_package(ok).is_ok(), "{ok} refused");
        }
        for bad in [
            "",
            "cmd/x",
            "./",
            "./../x",
            "./a/../../b",
            "/abs",
            "./a b",
            "./a;b",
            "-o",
            "./-x/../y",
        ] {
            assert!(go_package(bad).is_err(), "{bad:?} accepted");
        }
        assert!(build_tag("netgo").is_ok() && build_tag("osusergo").is_ok());
        assert!(build_tag("a,b").is_err() && build_tag("").is_err() && build_tag("-x").is_err());
        for ok in [
            "",
            "-s -w",
            "-X main.version=1.2.3",
            "-X=main.commit=abc -s",
            "-X example.com/a/b.v=x-y_z",
        ] {
            assert!(ldflags(ok).is_ok(), "{ok:?} refused");
        }
        for bad in [
            "-extld=/bin/sh",
            "-linkmode=external -extld sh",
            "-X",
            "-X main.version",
            "-X -extld=sh",
            "-X main.v='x'",
            "-s -r /tmp",
            "-H windows",
        ] {
            let err = ldflags(bad).unwrap_err();
            assert!(err.hint.unwrap().contains("-s, -w and -X"), "{bad:?}");
        }
    }

    #[test]
    fn names_must_be_short_lowercase_dns_labels() {
        assert!(object_name("sandbox", "qa-login-error").is_ok());
        assert!(object_name("sandbox", "a").is_ok());
        for bad in ["", "../x", "QA", "-a", "a-", "a_b", &"a".repeat(41)] {
            assert!(object_name("sandbox", bad).is_err(), "{bad:?} accepted");
        }
        let hint = object_name("sandbox", "QA_Login").unwrap_err().hint.unwrap();
        assert!(hint.contains("`qa-login`"), "{hint}");
    }

    #[test]
    fn branches_follow_git_rules() {
        for ok in ["develop", "feature/login-error", "release-1.2", "a/b/c", "fix@x"] {
            assert!(branch(ok).is_ok(), "{ok} refused");
        }
        for bad in [
            "", "-x", "a..b", "a b", "a:b", "a/", "/a", "a//b", "a.lock", "x/.y", "@", "a@{b", "a.", "a~1",
        ] {
            assert!(branch(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn pinned_commits_are_full_lowercase_ids() {
        assert!(commit_id("0123456789abcdef0123456789abcdef01234567").is_ok());
        for bad in [
            "",
            "0123456",
            "0123456789ABCDEF0123456789ABCDEF01234567",
            "0123456789abcdef0123456789abcdef0123456",
            "0123456789abcdef0123456789abcdef012345678",
            "0123456789abcdef0123456789abcdef0123456g",
            "main",
            "--upload-pack=x",
            "0123456789abcdef0123456789abcdef0123456\n",
        ] {
            let err = commit_id(bad).unwrap_err();
            assert!(err.message.contains("40 lowercase hex"), "{bad:?}: {}", err.message);
        }
    }

    #[test]
    fn health_paths_are_absolute_and_plain() {
        assert!(health_path("/healthz").is_ok());
        assert!(health_path("/status?full=1").is_ok());
        for bad in ["healthz", "/a b", "/a\r\nHost: x", "/é", ""] {
            assert!(health_path(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn route_urls_cannot_leave_a_php_string() {
        assert!(route_url("http://172.18.136.92:9105").is_ok());
        assert!(route_url("https://account.ocp.example/api/v1").is_ok());
        for bad in [
            "http://x'.die()",
            "http://x\\",
            "http://$x",
            "http://a b",
            "ftp://x",
            "http://",
            "http://u:p@host",
            "http://host:99999",
            "sandbx",
        ] {
            assert!(route_url(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn durations_and_quantities_parse() {
        assert_eq!(duration_secs("14d").unwrap(), 14 * 86_400);
        assert_eq!(duration_secs("1d12h").unwrap(), 36 * 3600);
        for bad in ["", "14", "d", "1x", "0d", "99999999999999999999w"] {
            assert!(duration_secs(bad).is_err(), "{bad:?} accepted");
        }
        assert_eq!(memory_bytes("512Mi").unwrap(), 512 << 20);
        assert_eq!(memory_bytes("1G").unwrap(), 1_000_000_000);
        for bad in ["", "Mi", "12XB", "1Ki", "-5Mi"] {
            assert!(memory_bytes(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn secretish_variable_names_are_refused() {
        assert!(plain_variable_not_secret("DB_PASSWORD").is_err());
        assert!(plain_variable_not_secret("api_token").is_err());
        assert!(plain_variable_not_secret("TOKEN_TTL").is_ok());
        assert!(plain_variable_not_secret("LOG_LEVEL").is_ok());
    }
}
