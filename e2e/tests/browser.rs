//! The dashboard in a real browser: headless Chromium (Debian's chromium and chromium-driver) driven over
//! WebDriver. A reader opens a sandbox page under the production base path, is sent to the login form, logs in
//! with the username and password the git server (basic auth, 127.0.0.1) accepts, lands on the sandbox, opens
//! a service's log, and sees a line appear that the service printed after the page had loaded, then a new commit
//! of the service appear in its status, both without a reload. The screenshot is kept in `target/test-artifacts/`.

use std::time::Duration;

use sdp_e2e::webdriver::Browser;
use sdp_e2e::*;

const BASE: &str = "/sandbox/credit-card";
const USER: &str = "qa.tester";
const PASSWORD: &str = "Br0wser-Pa55word";
/// A file that makes the test service answer its health path with 503.
const UNHEALTHY: &str = "package main\n\nimport \"net/http\"\n\nfunc init() {\n\thttp.HandleFunc(\"/healthz\", \
                         func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(503) })\n}\n";

#[test]
fn a_reader_logs_in_and_sees_a_new_log_line_arrive() {
    let bitbucket_dir = tempfile::tempdir().unwrap();
    let (_bitbucket, login_url) = login_server(bitbucket_dir.path(), USER, PASSWORD);
    let name = format!("web-{}", suffix());
    let _cleanup = DockerCleanup { sandbox: name.clone() };
    let mut cluster = Cluster::start_with(BASE, &["--login-repo".to_string(), login_url]);
    cluster.log_in(USER, PASSWORD);
    let account = ServiceRepo::new(cluster.path(), "account", "main");
    let yaml = cluster.agent_yaml(
        "micro-web",
        "micro",
        &[("account", &account.clone)],
        "containerPort: 8080\n",
    );
    cluster.start_agent(&yaml, "micro-web");
    let port = cluster.service_port();
    cluster.commit(
        &format!("sandboxes/{name}.yaml"),
        &sandbox_manifest(&name, &[("account", "main", port)], "").replace(
            &format!("port: {port}\n"),
            &format!("port: {port}\n      healthPath: /healthz\n"),
        ),
        "a sandbox to look at",
    );
    wait_for("the service to answer", Duration::from_secs(120), || {
        answers(port, "account")().map_err(|e| format!("{e}\n{}", cluster.logs()))
    });

    let browser = Browser::start(cluster.path());
    let page = format!("{}/sandboxes/{name}", cluster.api);
    browser.goto(&page).unwrap();
    // Not logged in: the login form, which remembers the sandbox.
    let at = browser.current_url().unwrap();
    assert!(at.contains(&format!("{BASE}/login?next=")), "{at}");
    browser.type_into("#username", USER).unwrap();
    browser.type_into("#password", PASSWORD).unwrap();
    browser.click("form.login button").unwrap();
    wait_for("the sandbox page after the login", Duration::from_secs(30), || {
        let url = browser.current_url()?;
        let title = browser.text("h1")?;
        if url == page && title == format!("Sandbox {name}") {
            Ok(())
        } else {
            Err(format!("{url}: {title}"))
        }
    });
    assert_eq!(browser.text("header form.who span").unwrap(), USER);
    // The summary names the commit that last changed this sandbox's file.
    let commit = git(&cluster.config, &["rev-parse", "HEAD"]);
    let summary = browser.text("[data-live=\"summary\"]").unwrap();
    assert!(
        summary.contains(&format!("last changed in {}", &commit[..12])),
        "{summary}"
    );

    // Open the service's log; mark the page so a reload would show.
    browser.click("details[data-logs=\"account\"] summary").unwrap();
    browser
        .execute("window.sdpTestMark = 'same page'; return null;")
        .unwrap();
    let line = format!("/after-load-{}", suffix());
    std::thread::sleep(Duration::from_millis(500));
    // The service prints each request it serves: this line is made now, after the page loaded.
    get_text(&format!("http://127.0.0.1:{port}{line}")).unwrap();
    let log = "details[data-logs=\"account\"] .log";
    let shown = wait_for("the new line in the page", Duration::from_secs(30), || {
        let text = browser.text(log)?;
        if text.contains(&line) {
            Ok(text)
        } else {
            Err(format!("the log shows: {text:?}\n{}", cluster.logs()))
        }
    });
    assert!(shown.contains(&format!("GET {line}")), "{shown}");
    assert_eq!(
        browser.execute("return window.sdpTestMark || null;").unwrap(),
        serde_json::json!("same page"),
        "the line arrived without a reload"
    );

    // A status change shows up too: a push to the service's branch is deployed, and the services table of the
    // open page shows the new commit (the page refreshes its live parts when the reconciler says something
    // changed), still without a reload.
    // The new commit also answers its health path with 503: the agent's probe says so on the page.
    wait_for("the probe's first answer on the page", Duration::from_secs(30), || {
        let services = browser.text("[data-live=\"services\"]")?;
        services.contains("health: HTTP 200").then_some(()).ok_or(services)
    });
    let pushed = account.push("main", "health.go", UNHEALTHY);
    wait_for("the new commit on the open page", Duration::from_secs(120), || {
        let services = browser.text("[data-live=\"services\"]")?;
        if services.contains(&pushed[..12]) && services.contains("health: HTTP 503") {
            Ok(())
        } else {
            Err(format!("the page shows: {services}\n{}", cluster.logs()))
        }
    });
    assert_eq!(
        browser.execute("return window.sdpTestMark || null;").unwrap(),
        serde_json::json!("same page"),
        "the status arrived without a reload"
    );

    browser
        .execute("document.querySelector('details[data-logs=\"account\"]').scrollIntoView(); return null;")
        .unwrap();
    let shot = binaries()
        .parent()
        .unwrap()
        .join("test-artifacts/dashboard-sandbox.png");
    browser.screenshot(&shot).unwrap();
    let png = std::fs::read(&shot).unwrap();
    assert!(png.starts_with(b"\x89PNG") && png.len() > 10_000, "a real screenshot");
    eprintln!("screenshot: {}", shot.display());

    // Log out: the next page asks for the login again. A live update of the page that went out meanwhile finds the
    // session ended and goes to the login form too, with the page to come back to (`/login?next=...`).
    browser.click("header form.who button").unwrap();
    wait_for("the login form after logging out", Duration::from_secs(10), || {
        let url = browser.current_url()?;
        let path = url.split('?').next().unwrap_or_default();
        if path.ends_with(&format!("{BASE}/login")) {
            Ok(())
        } else {
            Err(url)
        }
    });
    browser.goto(&page).unwrap();
    assert!(browser.current_url().unwrap().contains("/login?next="));
}
