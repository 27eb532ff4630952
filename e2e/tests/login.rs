//! The dashboard's login through a real `sdp serve`, checked by a real `git ls-remote` against a git smart-HTTP
//! server with basic auth on 127.0.0.1 (the Bitbucket of the test), under the production base path: pages send a
//! browser to the login form and the API answers 401 until then; a wrong password is refused, a right one opens a
//! 12-hour HttpOnly SameSite=Strict session that survives a restart; logout ends it; repeated failures are
//! limited per username and per address; the password is in no log, page, answer or file; the CLI logs in and
//! out; and the service account's own git credentials are never borrowed for a login.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};
use std::time::Duration;

use sdp_e2e::*;

const BASE: &str = "/sandbox/credit-card";
const USER: &str = "ann";
const PASSWORD: &str = "Bitbucket-Pa55word";
const WRONG: &str = "Wrong-Pa55word";

struct Answer {
    status: u16,
    location: String,
    set_cookie: String,
    retry_after: String,
    cache_control: String,
    body: String,
}

fn client() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(0)
        .build()
        .into()
}

fn answer(mut r: ureq::http::Response<ureq::Body>) -> Answer {
    let header = |name: &str| {
        r.headers()
            .get(name)
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default()
    };
    let (location, set_cookie) = (header("location"), header("set-cookie"));
    let (retry_after, cache_control) = (header("retry-after"), header("cache-control"));
    Answer {
        status: r.status().as_u16(),
        location,
        set_cookie,
        retry_after,
        cache_control,
        body: r.body_mut().read_to_string().unwrap(),
    }
}

fn get(url: &str, cookie: Option<&str>) -> Answer {
    let mut request = client().get(url);
    if let Some(c) = cookie {
        request = request.header("Cookie", c);
    }
    answer(request.call().unwrap())
}

/// GET with `Authorization: Bearer TOKEN`, as the CLI sends its session.
fn get_as(url: &str, token: &str) -> Answer {
    answer(
        client()
            .get(url)
            .header("Authorization", &format!("Bearer {token}"))
            .call()
            .unwrap(),
    )
}

fn post_login(api: &str, user: &str, password: &str, next: &str) -> Answer {
    let r = client()
        .post(format!("{api}/login"))
        .send_form([("username", user), ("password", password), ("next", next)])
        .unwrap();
    answer(r)
}

/// `sdp_session=…` out of a Set-Cookie header.
fn cookie_of(set_cookie: &str) -> String {
    set_cookie.split(';').next().unwrap().to_string()
}

/// A server whose logins are checked against the test's Bitbucket, and whose service account has a git
/// credential store holding the right password for it, and a `url.insteadOf` that sends the login URL to the
/// repository on disk, where no password is asked: a login must never succeed through either.
fn server() -> (Cluster, GitServer, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let (bitbucket, url) = login_server(dir.path(), USER, PASSWORD);
    let cluster = Cluster::start_with(BASE, &["--login-repo".to_string(), url.clone()]);
    let store = cluster.path().join("git-credentials");
    std::fs::write(
        &store,
        format!("http://{USER}:{PASSWORD}@127.0.0.1:{}\n", bitbucket.port),
    )
    .unwrap();
    std::fs::write(
        cluster.path().join("gitconfig"),
        format!(
            "[credential]\n\thelper = store --file {}\n[url \"file://{}\"]\n\tinsteadOf = {url}\n",
            store.display(),
            dir.path().join("bitbucket/config.git").display()
        ),
    )
    .unwrap();
    let healthz = format!("{}/healthz", cluster.api);
    wait_for("sdp serve to answer", Duration::from_secs(30), || {
        get_text(&healthz).map_err(|e| format!("{e}\n{}", cluster.serve.output()))
    });
    (cluster, bitbucket, dir)
}

#[test]
fn login_logout_and_the_limit_on_failures() {
    let (mut cluster, _bitbucket, _dir) = server();
    let api = cluster.api.clone();

    // Before a login: pages go to the form (remembering where the reader was going), the API says 401.
    let r = get(&format!("{api}/sandboxes/qa?x=1"), None);
    assert_eq!(r.status, 303);
    assert_eq!(r.location, format!("{BASE}/login?next={BASE}/sandboxes/qa%3Fx%3D1"));
    let r = get(&format!("{api}/api/v1/sandboxes"), None);
    assert_eq!(r.status, 401);
    assert!(r.body.contains("log in first"), "{}", r.body);
    // What `sdp plan` reads is behind the same login.
    assert_eq!(get(&format!("{api}/api/v1/actual"), None).status, 401);
    for open in ["/healthz", "/metrics", "/static/sdp.css", "/static/sdp.js", "/login"] {
        assert_eq!(get(&format!("{api}{open}"), None).status, 200, "{open} needs no login");
    }
    let form = get(&format!("{api}/login"), None).body;
    assert!(form.contains(&format!("action=\"{BASE}/login\"")) && form.contains("type=\"password\""));
    assert!(!form.contains("<nav"), "no links that would only lead back to the form");

    // A wrong password: refused by the git server, the name kept in the form, no session, no password echoed.
    // The service account's credential store holds the right password: it must not have been used.
    let r = post_login(&api, USER, WRONG, &format!("{BASE}/nodes"));
    assert_eq!(r.status, 401, "{}", r.body);
    assert!(r.body.contains("Wrong username or password"), "{}", r.body);
    assert!(r.body.contains("value=\"ann\""));
    assert!(!r.body.contains(WRONG) && r.set_cookie.is_empty());

    // The right one: a session cookie, then where the reader was going.
    let r = post_login(&api, USER, PASSWORD, &format!("{BASE}/nodes"));
    assert_eq!(r.status, 303, "{}", r.body);
    assert_eq!(r.location, format!("{BASE}/nodes"));
    for attribute in ["HttpOnly", "SameSite=Strict", "Max-Age=43200", &format!("Path={BASE}")] {
        assert!(
            r.set_cookie.contains(attribute),
            "{attribute} missing: {}",
            r.set_cookie
        );
    }
    let cookie = cookie_of(&r.set_cookie);
    let page = get(&api, Some(&cookie));
    assert_eq!(page.status, 200);
    assert!(page.body.contains("<span>ann</span>") && page.body.contains("Log out"));
    // `{base}/` is served as it is, not redirected: nginx sends `{base}` there, so a redirect back would loop.
    assert_eq!(get(&format!("{api}/"), Some(&cookie)).status, 200);
    let r = get(&format!("{api}/api/v1/sandboxes"), Some(&cookie));
    assert_eq!(r.status, 200);
    assert_eq!(r.cache_control, "private, no-store");
    assert_eq!(
        get(&format!("{api}/login"), Some(&cookie)).status,
        303,
        "already logged in"
    );

    // A restart of the reconciler logs nobody out (the store keeps sessions by the hash of their token: the
    // token itself is in no file).
    let token = cookie.trim_start_matches("sdp_session=").to_string();
    cluster.restart_serve();
    wait_for("sdp serve to answer again", Duration::from_secs(30), || {
        get_text(&format!("{api}/healthz")).map_err(|e| format!("{e}\n{}", cluster.serve.output()))
    });
    assert_eq!(get(&format!("{api}/api/v1/sandboxes"), Some(&cookie)).status, 200);
    let out = std::process::Command::new("grep")
        .args(["-rl", &token])
        .arg(cluster.path().join("data"))
        .output()
        .unwrap();
    assert!(out.stdout.is_empty(), "a session token on disk");

    // `next` never leaves this server.
    let r = post_login(&api, USER, PASSWORD, "https://evil.example/");
    assert_eq!((r.status, r.location.as_str()), (303, format!("{BASE}/").as_str()));
    // A tab that browsers drop from a Location would make it `//evil.example/`.
    let tabbed = post_login(&api, USER, PASSWORD, &format!("{BASE}/\t/evil.example/"));
    assert_eq!(tabbed.location, format!("{BASE}/"));

    // Over https (as nginx says in X-Forwarded-Proto) the cookie is Secure; over plain http it cannot be.
    assert!(!r.set_cookie.contains("Secure"));
    let r = answer(
        client()
            .post(format!("{api}/login"))
            .header("X-Forwarded-Proto", "https")
            .send_form([("username", USER), ("password", PASSWORD)])
            .unwrap(),
    );
    assert!(r.set_cookie.contains("; Secure"), "{}", r.set_cookie);

    // The CLI's login: the same check, the token for an Authorization header.
    let r = answer(
        client()
            .post(format!("{api}/api/v1/login"))
            .header("Content-Type", "application/json")
            .send(format!("{{\"username\":\"{USER}\",\"password\":\"{PASSWORD}\"}}"))
            .unwrap(),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let token: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    let r = get_as(&format!("{api}/api/v1/nodes"), token["token"].as_str().unwrap());
    assert_eq!(r.status, 200, "{}", r.body);

    // Logout ends the session on the server, not only in the browser.
    let r = answer(
        client()
            .post(format!("{api}/logout"))
            .header("Cookie", &cookie)
            .send_empty()
            .unwrap(),
    );
    assert_eq!((r.status, r.location.as_str()), (303, format!("{BASE}/login").as_str()));
    assert!(r.set_cookie.contains("Max-Age=0"), "{}", r.set_cookie);
    assert_eq!(get(&format!("{api}/api/v1/sandboxes"), Some(&cookie)).status, 401);

    // The CLI: `sdp get` says to log in; `sdp login --password-stdin` keeps a token (never the password) in a
    // 0600 file; `sdp get` then reads; `sdp logout` ends the session on the server as well.
    let home = cluster.path().join("home");
    let sdp = |args: &[&str], stdin: &str| -> (i32, String) {
        let mut child = Command::new(binaries().join("sdp"))
            .args(args)
            .args(["--server", &api])
            .env("XDG_CONFIG_HOME", &home)
            .env("GIT_AUTHOR_NAME", "Ann Tester")
            .env("GIT_AUTHOR_EMAIL", "ann@example.com")
            .env("GIT_COMMITTER_NAME", "Ann Tester")
            .env("GIT_COMMITTER_EMAIL", "ann@example.com")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
        let out = child.wait_with_output().unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.code().unwrap_or(-1), text)
    };
    let (code, out) = sdp(&["get", "sandboxes"], "");
    assert!(code == 2 && out.contains("log in first"), "{code} {out}");
    // `apply --wait` commits, then stops at once instead of waiting out its minutes for a login.
    let manifest = cluster.path().join("qa-cli.yaml");
    std::fs::write(
        &manifest,
        sandbox_manifest("qa-cli", &[("account", "main", cluster.service_port())], ""),
    )
    .unwrap();
    let config = cluster.config.to_str().unwrap().to_string();
    let started = std::time::Instant::now();
    let (code, out) = sdp(
        &[
            "apply",
            "-f",
            manifest.to_str().unwrap(),
            "--repo",
            &config,
            "--wait",
            "--wait-secs",
            "120",
        ],
        "",
    );
    assert!(code == 2 && out.contains("sdp login --server"), "{code} {out}");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(60),
        "it did not wait for nothing"
    );
    let (code, out) = sdp(
        &["login", "--username", USER, "--password-stdin"],
        &format!("{WRONG}\n"),
    );
    assert!(code == 2 && out.contains("Wrong username or password"), "{code} {out}");
    let (code, out) = sdp(
        &["login", "--username", USER, "--password-stdin"],
        &format!("{PASSWORD}\n"),
    );
    assert_eq!(code, 0, "{out}");
    let file = home.join("sdp/sessions.json");
    let saved = std::fs::read_to_string(&file).unwrap();
    assert!(saved.contains("token") && !saved.contains(PASSWORD), "{saved}");
    assert_eq!(std::fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o600);
    let (code, out) = sdp(&["get", "sandboxes"], "");
    assert_eq!(code, 0, "{out}");
    let token = serde_json::from_str::<serde_json::Value>(&saved).unwrap()[api.as_str()]["token"]
        .as_str()
        .unwrap()
        .to_string();
    let (code, out) = sdp(&["logout"], "");
    assert!(code == 0 && out.contains("logged out"), "{out}");
    assert_eq!(
        get_as(&format!("{api}/api/v1/nodes"), &token).status,
        401,
        "the session ended on the server"
    );
    assert!(sdp(&["get", "sandboxes"], "").1.contains("log in first"));

    // Three failures within 15 minutes: the fourth attempt from that address is refused before git is asked,
    // even with the right password and another spelling of the name; another user is not held up, nor the same
    // user from another machine.
    for _ in 0..3 {
        assert_eq!(post_login(&api, USER, WRONG, "").status, 401);
    }
    let r = post_login(&api, "ANN", PASSWORD, "");
    assert_eq!(r.status, 429, "{}", r.body);
    assert!(r.body.contains("Too many failed logins"), "{}", r.body);
    let retry: u64 = r.retry_after.parse().expect("a Retry-After in seconds");
    assert!((800..=900).contains(&retry), "{retry}");
    assert_eq!(post_login(&api, "bob", WRONG, "").status, 401);
    // The address as nginx on this machine reports it.
    let from = |address: &str, user: &str, password: &str| {
        let r = client()
            .post(format!("{api}/login"))
            .header("X-Forwarded-For", address)
            .send_form([("username", user), ("password", password)])
            .unwrap();
        answer(r).status
    };
    assert_eq!(
        from("10.0.0.20", USER, PASSWORD),
        303,
        "ann from her own machine is not held up"
    );
    // One address trying many names is held up too.
    for i in 0..10 {
        assert_eq!(from("10.0.0.9", &format!("user{i}"), WRONG), 401);
    }
    assert_eq!(from("10.0.0.9", "user10", WRONG), 429);
    assert_eq!(
        from("10.0.0.10", "user11", WRONG),
        401,
        "another address is not held up"
    );

    // The password is in no log line (of either run) and no file the server wrote; the askpass sockets are gone.
    let log = ["serve-1.log", "serve-2.log"]
        .map(|f| std::fs::read_to_string(cluster.path().join(f)).unwrap())
        .join("\n");
    assert!(log.contains("logged in") && log.contains("login refused"), "{log}");
    for secret in [PASSWORD, WRONG] {
        assert!(!log.contains(secret), "a password in the log:\n{log}");
        let out = std::process::Command::new("grep")
            .args(["-rl", secret])
            .arg(cluster.path().join("data"))
            .output()
            .unwrap();
        assert!(out.stdout.is_empty(), "{}", String::from_utf8_lossy(&out.stdout));
    }
    // Counted for the operator (since the restart).
    let metrics = get(&format!("{api}/metrics"), None).body;
    for line in [
        "sdp_logins_total{outcome=\"succeeded\"} 6",
        "sdp_logins_total{outcome=\"rejected\"} 16",
        "sdp_logins_total{outcome=\"limited\"} 2",
    ] {
        assert!(metrics.contains(line), "{line} missing:\n{metrics}");
    }
    let sockets = std::fs::read_dir(cluster.path().join("data/run")).unwrap().count();
    assert_eq!(sockets, 0, "askpass sockets left behind");
}

#[test]
fn an_unreachable_repo_says_so_and_does_not_count_as_a_failure() {
    let closed = free_port();
    let cluster = Cluster::start_with(
        "",
        &[
            "--login-repo".to_string(),
            format!("http://127.0.0.1:{closed}/config.git"),
        ],
    );
    let api = cluster.api.clone();
    wait_for("sdp serve to answer", Duration::from_secs(30), || {
        get_text(&format!("{api}/healthz")).map_err(|e| format!("{e}\n{}", cluster.serve.output()))
    });
    for _ in 0..4 {
        let r = post_login(&api, USER, PASSWORD, "");
        assert_eq!(r.status, 503, "{}", r.body);
        assert!(r.body.contains("Cannot check the login right now"), "{}", r.body);
    }
}
