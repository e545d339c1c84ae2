//! A real `nats-server` with JetStream for cluster tests: on a free loopback port, its
//! store in the test's own directory; killed when dropped. `tests/run` installs it (the
//! Debian package `nats-server`).

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::wait::WAIT;

pub struct TestNats {
    child: Option<Child>,
    pub port: u16,
    store: tempfile::TempDir,
    /// What nats-server wrote to stderr, shown when a test fails.
    logs: Arc<Mutex<Vec<String>>>,
}

/// Where nats-server is: `NATS_SERVER`, the Debian package's path, or `PATH`.
fn binary() -> PathBuf {
    if let Ok(path) = std::env::var("NATS_SERVER") {
        return path.into();
    }
    for path in ["/usr/sbin/nats-server", "/usr/bin/nats-server"] {
        if std::path::Path::new(path).exists() {
            return path.into();
        }
    }
    "nats-server".into()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl TestNats {
    /// Starts nats-server with JetStream and waits until it accepts clients.
    pub fn start() -> Self {
        let mut nats = Self {
            child: None,
            port: free_port(),
            store: tempfile::tempdir().unwrap(),
            logs: Arc::default(),
        };
        nats.restart();
        nats
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Starts it (again) on the same port with the same store.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "nats-server is running");
        let mut child = Command::new(binary())
            .args(["-a", "127.0.0.1", "-p", &self.port.to_string(), "-js", "-sd"])
            .arg(self.store.path())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start nats-server ({e}); install it: apt-get install nats-server (tests/run does)")
            });
        let (tx, rx) = std::sync::mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        let logs = self.logs.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if line.contains("Server is ready") {
                    let _ = tx.send(());
                }
                logs.lock().unwrap().push(line);
            }
        });
        rx.recv_timeout(WAIT)
            .expect("nats-server did not say it is ready");
        self.child = Some(child);
    }

    /// `kill -9`.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// A plain NATS client of this server.
    pub async fn client(&self) -> async_nats::Client {
        tokio::time::timeout(Duration::from_secs(10), async_nats::connect(self.url()))
            .await
            .expect("connect to nats-server in time")
            .expect("connect to nats-server")
    }
}

impl Drop for TestNats {
    fn drop(&mut self) {
        // A failing test shows what nats-server said.
        if std::thread::panicking() {
            for line in self.logs.lock().unwrap().iter() {
                eprintln!("nats-server :{}: {line}", self.port);
            }
        }
        self.kill();
    }
}
