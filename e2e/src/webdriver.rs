//! A small W3C WebDriver client over HTTP (ureq), enough for the dashboard's browser test: Debian's
//! `chromedriver` driving headless `chromium` on 127.0.0.1. Commands: navigate, find by CSS, click, type, read
//! text, run a script, take a screenshot. Every call answers `Err` with the driver's own message.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use base64::Engine;
use serde_json::{Value, json};

use crate::{Process, free_port, wait_for};

/// The key under which WebDriver names an element.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// A headless Chromium session; the browser and its driver stop when this is dropped.
pub struct Browser {
    session: String,
    agent: ureq::Agent,
    _driver: Process,
}

impl Browser {
    /// Starts `chromedriver` on a free port (its log in `dir`) and opens a headless session.
    pub fn start(dir: &Path) -> Browser {
        let port = free_port();
        let driver = Process::spawn(
            Command::new("chromedriver").arg(format!("--port={port}")),
            dir.join("chromedriver.log"),
        );
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(60)))
            .build()
            .into();
        let root = format!("http://127.0.0.1:{port}");
        wait_for("chromedriver to answer", Duration::from_secs(20), || {
            call(&agent, "GET", &format!("{root}/status"), None)
        });
        let caps = json!({ "capabilities": { "alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                // Root in CI has no user namespace for Chromium's sandbox; /dev/shm may be small in containers.
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                         "--window-size=1280,900"],
            },
        }}});
        let answer = call(&agent, "POST", &format!("{root}/session"), Some(caps))
            .unwrap_or_else(|e| panic!("chromium did not start: {e}"));
        let id = answer["sessionId"].as_str().expect("a session id").to_string();
        Browser {
            session: format!("{root}/session/{id}"),
            agent,
            _driver: driver,
        }
    }

    fn cmd(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value, String> {
        call(&self.agent, method, &format!("{}{path}", self.session), body)
    }

    pub fn goto(&self, url: &str) -> Result<(), String> {
        self.cmd("POST", "/url", Some(json!({ "url": url }))).map(drop)
    }

    pub fn current_url(&self) -> Result<String, String> {
        Ok(self.cmd("GET", "/url", None)?.as_str().unwrap_or_default().to_string())
    }

    /// The first element that matches a CSS selector.
    pub fn find(&self, css: &str) -> Result<String, String> {
        let found = self.cmd(
            "POST",
            "/element",
            Some(json!({ "using": "css selector", "value": css })),
        )?;
        found[ELEMENT]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| format!("no element id for {css}: {found}"))
    }

    pub fn click(&self, css: &str) -> Result<(), String> {
        let id = self.find(css)?;
        self.cmd("POST", &format!("/element/{id}/click"), Some(json!({})))
            .map(drop)
    }

    pub fn type_into(&self, css: &str, text: &str) -> Result<(), String> {
        let id = self.find(css)?;
        self.cmd("POST", &format!("/element/{id}/value"), Some(json!({ "text": text })))
            .map(drop)
    }

    /// The rendered text of the first element that matches.
    pub fn text(&self, css: &str) -> Result<String, String> {
        let id = self.find(css)?;
        Ok(self
            .cmd("GET", &format!("/element/{id}/text"), None)?
            .as_str()
            .unwrap_or_default()
            .to_string())
    }

    /// Runs a script in the page (`return …` gives its value).
    pub fn execute(&self, script: &str) -> Result<Value, String> {
        self.cmd("POST", "/execute/sync", Some(json!({ "script": script, "args": [] })))
    }

    /// Saves a PNG of the viewport.
    pub fn screenshot(&self, path: &Path) -> Result<(), String> {
        let b64 = self.cmd("GET", "/screenshot", None)?;
        let png = base64::engine::general_purpose::STANDARD
            .decode(b64.as_str().unwrap_or_default())
            .map_err(|e| e.to_string())?;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
        }
        std::fs::write(path, png).map_err(|e| e.to_string())
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.cmd("DELETE", "", None);
    }
}

/// One WebDriver request: its `value`, or the driver's error and message.
fn call(agent: &ureq::Agent, method: &str, url: &str, body: Option<Value>) -> Result<Value, String> {
    let response = match (method, body) {
        ("GET", _) => agent.get(url).call(),
        ("DELETE", _) => agent.delete(url).call(),
        (_, body) => agent
            .post(url)
            .header("Content-Type", "application/json")
            .send(body.unwrap_or(json!({})).to_string()),
    };
    let mut response = response.map_err(|e| format!("{method} {url}: {e}"))?;
    let text = response.body_mut().read_to_string().map_err(|e| e.to_string())?;
    let doc: Value = serde_json::from_str(&text).map_err(|e| format!("{method} {url}: {e}: {text}"))?;
    let value = doc.get("value").cloned().unwrap_or(Value::Null);
    if let Some(error) = value.get("error").and_then(Value::as_str) {
        return Err(format!(
            "{method} {url}: {error}: {}",
            value["message"].as_str().unwrap_or_default()
        ));
    }
    Ok(value)
}
