//! Debian's headless Chromium, driven by `tests/browser/drive.mjs` (playwright-core,
//! installed by `tests/run`), one command per line.

use std::process::Stdio;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

use super::wait::WAIT;

pub struct Browser {
    child: Child,
    stdin: ChildStdin,
    answers: Lines<BufReader<ChildStdout>>,
}

const DRIVER_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/browser");

impl Browser {
    /// Starts Chromium with one empty page. Fails with what to install when it cannot.
    pub async fn start() -> Self {
        let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
        assert!(
            std::path::Path::new(&chromium).exists(),
            "no Chromium at {chromium}: run tests/run (it installs Debian's chromium), or apt-get install chromium"
        );
        assert!(
            std::path::Path::new(DRIVER_DIR)
                .join("node_modules/playwright-core")
                .exists(),
            "playwright-core is not installed: run tests/run, or (cd tests/browser && npm ci)"
        );
        let mut child = Command::new("node")
            .arg("drive.mjs")
            .current_dir(DRIVER_DIR)
            .env("CHROMIUM", &chromium)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("start node (Node.js is needed for the browser tests)");
        let stdin = child.stdin.take().unwrap();
        let answers = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut browser = Self {
            child,
            stdin,
            answers,
        };
        let ready = browser.answer(WAIT * 3).await;
        assert_eq!(ready, Ok(json!("ready")), "Chromium did not start");
        browser
    }

    async fn answer(&mut self, within: std::time::Duration) -> Result<Value, String> {
        let line = tokio::time::timeout(within, self.answers.next_line())
            .await
            .expect("the browser driver did not answer in time")
            .expect("read from the browser driver")
            .expect("the browser driver ended");
        let v: Value = serde_json::from_str(&line).unwrap();
        match v["ok"].as_bool() {
            Some(true) => Ok(v["value"].clone()),
            _ => Err(v["error"].as_str().unwrap_or("").to_string()),
        }
    }

    /// Sends a command and waits for its answer.
    pub async fn command(&mut self, command: Value) -> Result<Value, String> {
        let timeout = command["timeout_ms"].as_u64().unwrap_or(10_000);
        let line = format!("{command}\n");
        self.stdin.write_all(line.as_bytes()).await.unwrap();
        self.answer(std::time::Duration::from_millis(timeout) + WAIT)
            .await
    }

    pub async fn open(&mut self, url: &str) {
        self.command(json!({"cmd": "open", "url": url}))
            .await
            .unwrap_or_else(|e| panic!("cannot open {url}: {e}"));
    }

    /// Waits until `expr` is truthy in the page; returns its value.
    pub async fn wait(&mut self, expr: &str) -> Value {
        self.wait_for(expr, 10_000).await
    }

    pub async fn wait_for(&mut self, expr: &str, timeout_ms: u64) -> Value {
        match self
            .command(json!({"cmd": "wait", "expr": expr, "timeout_ms": timeout_ms}))
            .await
        {
            Ok(v) => v,
            Err(e) => {
                let state = self.eval("JSON.stringify(window.hookwireDemo)").await;
                panic!("page never got to `{expr}`: {e}\npage state: {state}")
            }
        }
    }

    pub async fn eval(&mut self, expr: &str) -> Value {
        self.command(json!({"cmd": "eval", "expr": expr}))
            .await
            .unwrap_or_else(|e| panic!("eval {expr}: {e}"))
    }

    /// Types into the demo's message box and submits.
    pub async fn send(&mut self, text: &str) {
        self.command(json!({"cmd": "send", "text": text}))
            .await
            .unwrap();
    }

    /// Types into the demo's message box without submitting.
    pub async fn type_text(&mut self, text: &str) {
        self.command(json!({"cmd": "type", "text": text}))
            .await
            .unwrap();
    }

    pub async fn screenshot(&mut self, path: &std::path::Path) {
        self.command(json!({"cmd": "screenshot", "path": path}))
            .await
            .unwrap();
    }

    pub async fn quit(mut self) {
        let _ = self.stdin.write_all(b"{\"cmd\":\"quit\"}\n").await;
        let _ = tokio::time::timeout(WAIT, self.child.wait()).await;
    }
}
