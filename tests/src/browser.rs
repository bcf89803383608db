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
    /// Chromium's profile directory, removed when the browser is dropped.
    profile: PathBuf,
}

impl Browser {
    /// Starts chromedriver and a headless Chromium with WebGPU enabled.
    pub fn start() -> Result<Browser, String> {
        Self::start_with(true)
    }

    /// Starts chromedriver and a headless Chromium, with or without WebGPU (headless Chromium
    /// on Linux exposes it only with `--enable-unsafe-webgpu`).
    pub fn start_with(webgpu: bool) -> Result<Browser, String> {
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
        let mut b = Browser { driver, base, session: String::new(), profile: profile.clone() };
        let started = Instant::now();
        while b.http("GET", "/status", None).map(|v| v["value"]["ready"] != json!(true)).unwrap_or(true) {
            if started.elapsed() > Duration::from_secs(20) {
                return Err("chromedriver did not become ready in 20 s".into());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let mut args = vec![
            "--headless=new".to_string(),
            "--no-sandbox".into(),
            "--no-first-run".into(),
            "--disable-background-networking".into(),
            "--disable-component-update".into(),
            "--disable-sync".into(),
            "--disable-dev-shm-usage".into(),
            "--window-size=1200,900".into(),
            format!("--user-data-dir={}", profile.display()),
        ];
        if webgpu {
            args.push("--enable-unsafe-webgpu".into());
        }
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium().to_string_lossy(),
                "args": args,
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

    /// Picks the file at `path` in the page's file input `css` (as a user choosing it).
    pub fn upload(&self, css: &str, path: &std::path::Path) -> Result<(), String> {
        let found = json!({"using": "css selector", "value": css});
        let v = self.http("POST", &self.session_path("/element"), Some(found))?;
        let el = v["value"].as_object().and_then(|o| o.values().next()).and_then(Value::as_str);
        let el = el.ok_or_else(|| format!("no element {css}: {v}"))?.to_string();
        let text = json!({"text": path.to_string_lossy()});
        self.http("POST", &self.session_path(&format!("/element/{el}/value")), Some(text)).map(|_| ())
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

    /// The current page's visible text (empty if it cannot be read), for failure messages.
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
        // The profile (50 to 70 MB) would pile up in the temporary directory run after run.
        // Chromium may still be writing it for a moment after the session ends.
        if std::env::var_os("AIT_KEEP_TEST_DIRS").is_none() {
            for _ in 0..10 {
                if std::fs::remove_dir_all(&self.profile).is_ok() || !self.profile.exists() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    }
}

/// The built app: `$AIT_WEB_DIR`, else the workspace's `dist/`.
pub fn web_dir() -> PathBuf {
    let dir = std::env::var_os("AIT_WEB_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../dist")));
    assert!(dir.join("index.html").is_file(), "{} has no app: run `trunk build --release`", dir.display());
    dir
}

/// `layers` as `--blocks` and the page's `?seed=` take them.
pub fn blocks(layers: &std::ops::Range<usize>) -> String {
    format!("{}..{}", layers.start, layers.end)
}

/// The app's page on `relay`'s HTTP server, with `query`. The tab audits nothing unless
/// `query` sets `audit=` (its default audits a random share of sessions, as paid sessions
/// on other servers, which would make the tests' payments vary from run to run).
pub fn page(relay: &crate::procs::Relay, query: &str) -> String {
    let base = relay.http.as_deref().expect("relay without http");
    let audits = query.split('&').any(|p| p.starts_with("audit="));
    match (audits, query.is_empty()) {
        (true, _) => format!("{base}/?{query}"),
        (false, true) => format!("{base}/?audit=0"),
        (false, false) => format!("{base}/?{query}&audit=0"),
    }
}

/// Waits until the page is connected to its relay; returns the connection line.
pub fn connected(b: &Browser) -> String {
    b.wait_for(
        "the page to join the swarm",
        "const c = document.getElementById('conn'); \
         if (!c) return null; \
         if (c.dataset.state === 'error') return 'ERROR ' + c.innerText; \
         return c.dataset.state === 'connected' ? c.innerText : null;",
        Duration::from_secs(60),
    )
    .map(|v| v.as_str().unwrap_or_default().to_string())
    .map(|s| {
        assert!(!s.starts_with("ERROR"), "page could not connect: {s}");
        s
    })
    .unwrap_or_else(|e| panic!("{e}; page says:\n{}", b.page_text()))
}

/// Waits until the tab serves blocks; returns its peer id (from the circuit address it shows).
pub fn seeding(b: &Browser) -> String {
    let v = b
        .wait_for(
            "the tab to serve its blocks",
            "const s = document.getElementById('seed-state'); \
             if (!s) return null; \
             if (s.dataset.state === 'error') return 'ERROR ' + s.innerText; \
             return s.dataset.state === 'serving' ? s.innerText : null;",
            Duration::from_secs(300),
        )
        .unwrap_or_else(|e| panic!("{e}; page:\n{}", b.page_text()));
    let text = v.as_str().unwrap_or_default().to_string();
    assert!(!text.starts_with("ERROR"), "the tab could not seed: {text}");
    assert!(text.contains("p2p-circuit"), "{text}");
    text.rsplit("/p2p/").next().unwrap_or_default().trim().to_string()
}

/// Types `text` into the chat page and sends it; waits for the answer. Returns the answer
/// (or `ERROR <message>`) and when its first token arrived (ms after navigation start).
pub fn ask(b: &Browser, text: &str, limit: Duration) -> (String, f64) {
    b.exec(
        "const t = document.getElementById('prompt'); t.value = arguments[0]; \
         t.dispatchEvent(new Event('input', {bubbles: true})); document.getElementById('send').click();",
        json!([text]),
    )
    .expect("send the prompt");
    let answer = b
        .wait_for(
            "the answer",
            "const n = document.getElementById('chat-notice'); \
             if (n.dataset.state === 'error') return 'ERROR ' + n.innerText; \
             if (n.dataset.state !== 'idle') return null; \
             const a = document.querySelectorAll('.msg.assistant'); \
             return a.length ? a[a.length - 1].innerText : null;",
            limit,
        )
        .unwrap_or_else(|e| panic!("{e}; page:\n{}", b.page_text()));
    let first = b
        .exec("return Number(document.getElementById('chat-notice').dataset.firstTokenMs)", json!([]))
        .ok()
        .and_then(|v| v.as_f64())
        .unwrap_or(0.0);
    (answer.as_str().unwrap_or_default().to_string(), first)
}

/// Waits until the model picker offers a model whose every block is served.
pub fn model_ready(b: &Browser) {
    b.wait_for(
        "the model picker to offer a fully served model",
        "const c = document.querySelector('.coverage'); return c && c.innerText.includes('covering all');",
        Duration::from_secs(60),
    )
    .unwrap_or_else(|e| panic!("{e}; page:\n{}", b.page_text()));
}
