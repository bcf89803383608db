//! A headless Chromium driven over WebDriver (Debian's `chromium` and `chromedriver`), for the
//! browser tests: plain W3C WebDriver over HTTP, no browser download.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// The Chromium binary: `$AIT_CHROMIUM`, else `/usr/bin/chromium`.
pub fn chromium() -> PathBuf {
    std::env::var_os("AIT_CHROMIUM").map(PathBuf::from).unwrap_or_else(|| "/usr/bin/chromium".into())
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("free port")
}

/// A chromedriver process with one browser session.
pub struct Browser {
    driver: Child,
    base: String,
    session: String,
    _profile: PathBuf,
}

impl Browser {
    /// Starts chromedriver and a headless Chromium with WebGPU enabled.
    pub fn start() -> Result<Browser, String> {
        let port = free_port();
        let driver_bin = std::env::var("AIT_CHROMEDRIVER").unwrap_or_else(|_| "/usr/bin/chromedriver".into());
        let driver = Command::new(&driver_bin)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("{driver_bin}: {e} (apt-get install chromium-driver)"))?;
        let base = format!("http://127.0.0.1:{port}");
        let profile = crate::procs::temp_dir("chromium-profile");
        let mut b = Browser { driver, base, session: String::new(), _profile: profile.clone() };
        let started = Instant::now();
        while b.http("GET", "/status", None).map(|v| v["value"]["ready"] != json!(true)).unwrap_or(true) {
            if started.elapsed() > Duration::from_secs(20) {
                return Err("chromedriver did not become ready in 20 s".into());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium().to_string_lossy(),
                "args": ["--headless=new", "--no-sandbox", "--enable-unsafe-webgpu", "--no-first-run",
                         "--disable-background-networking", "--disable-component-update", "--disable-sync",
                         "--disable-dev-shm-usage", "--window-size=1200,900",
                         format!("--user-data-dir={}", profile.display())],
            }
        }}});
        let v = b.http("POST", "/session", Some(caps))?;
        b.session = v["value"]["sessionId"].as_str().ok_or_else(|| format!("no session: {v}"))?.to_string();
        Ok(b)
    }

    fn http(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value, String> {
        let url = format!("{}{path}", self.base);
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(120)))
            .build()
            .into();
        let resp = match (method, body) {
            ("GET", _) => agent.get(&url).call(),
            ("DELETE", _) => agent.delete(&url).call(),
            (_, Some(b)) => agent.post(&url).send_json(b),
            (_, None) => agent.post(&url).send_json(json!({})),
        };
        let mut resp = resp.map_err(|e| format!("{method} {path}: {e}"))?;
        let status = resp.status();
        let v: Value = resp.body_mut().read_json().map_err(|e| format!("{method} {path}: {e}"))?;
        if !status.is_success() {
            return Err(format!("{method} {path}: {status} {}", v["value"]));
        }
        Ok(v)
    }

    fn session_path(&self, rest: &str) -> String {
        format!("/session/{}{rest}", self.session)
    }

    /// Opens `url` in the current window.
    pub fn goto(&self, url: &str) -> Result<(), String> {
        self.http("POST", &self.session_path("/url"), Some(json!({"url": url}))).map(|_| ())
    }

    /// Runs `script` (a function body; `arguments` holds `args`) and returns its value.
    pub fn exec(&self, script: &str, args: Value) -> Result<Value, String> {
        let v =
            self.http("POST", &self.session_path("/execute/sync"), Some(json!({"script": script, "args": args})))?;
        Ok(v["value"].clone())
    }

    /// Polls `script` every 200 ms until it returns something other than null/false, or
    /// `limit` passes.
    pub fn wait_for(&self, what: &str, script: &str, limit: Duration) -> Result<Value, String> {
        let started = Instant::now();
        loop {
            let v = self.exec(script, json!([]))?;
            if !v.is_null() && v != json!(false) {
                return Ok(v);
            }
            if started.elapsed() > limit {
                return Err(format!("timed out after {limit:?} waiting for {what}"));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Opens a new tab, makes it current and returns its handle.
    pub fn new_tab(&self) -> Result<String, String> {
        let v = self.http("POST", &self.session_path("/window/new"), Some(json!({"type": "tab"})))?;
        let h = v["value"]["handle"].as_str().ok_or("no handle")?.to_string();
        self.switch_to(&h)?;
        Ok(h)
    }

    /// Makes window `handle` current.
    pub fn switch_to(&self, handle: &str) -> Result<(), String> {
        self.http("POST", &self.session_path("/window"), Some(json!({"handle": handle}))).map(|_| ())
    }

    /// The current window's handle.
    pub fn current(&self) -> Result<String, String> {
        Ok(self.http("GET", &self.session_path("/window"), None)?["value"].as_str().unwrap_or_default().to_string())
    }

    /// Closes the current window (tab).
    pub fn close_tab(&self) -> Result<(), String> {
        self.http("DELETE", &self.session_path("/window"), None).map(|_| ())
    }

    /// The browser's console log, if the driver keeps it.
    pub fn page_text(&self) -> String {
        self.exec("return document.body ? document.body.innerText : ''", json!([]))
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default()
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let _ = self.http("DELETE", &self.session_path(""), None);
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}
