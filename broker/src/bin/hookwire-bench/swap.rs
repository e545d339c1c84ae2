//! Plugin hot reload under load (`pairs --swap-plugin FILE`): while the pairs publish,
//! rewrite a plugin module as a new version and time each write → swap, as seen in the
//! broker's `GET /admin/plugins`.
//!
//! A new version is the original module plus a custom section naming the swap, so the
//! code is the same and the sha256 is new: the broker compiles and swaps it like any
//! other change.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use hookwire::plugins::engine::sha256_hex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How to swap, from the command line.
#[derive(Clone)]
pub struct SwapPlan {
    pub file: PathBuf,
    pub swaps: usize,
    /// `host:port` of the broker's admin listener.
    pub admin: String,
    pub admin_key: String,
}

/// Longest wait for one swap to show.
const SWAP_WAIT: Duration = Duration::from_secs(60);
const POLL: Duration = Duration::from_millis(2);

impl SwapPlan {
    pub fn new(file: PathBuf, swaps: usize, admin_url: &str) -> anyhow::Result<Self> {
        let admin = admin_url
            .strip_prefix("http://")
            .context("--admin-url must start with http://")?
            .trim_end_matches('/')
            .to_string();
        let admin_key = std::env::var("HOOKWIRE_ADMIN_KEY")
            .context("--swap-plugin polls GET /admin/plugins: set HOOKWIRE_ADMIN_KEY")?;
        Ok(Self {
            file,
            swaps: swaps.max(1),
            admin,
            admin_key,
        })
    }

    /// Swaps evenly through `run` (which starts now); answers each swap's write → seen
    /// time in milliseconds. The original module is back in place when it returns.
    pub async fn run(&self, run: Duration) -> anyhow::Result<Vec<f64>> {
        let original = std::fs::read(&self.file)
            .with_context(|| format!("reading {}", self.file.display()))?;
        let start = Instant::now();
        let mut took = Vec::with_capacity(self.swaps);
        for i in 1..=self.swaps {
            let at = start + run.mul_f64(i as f64 / (self.swaps + 1) as f64);
            tokio::time::sleep_until(at.into()).await;
            let module = with_custom_section(&original, &format!("swap {i} at {:?}", at));
            let sha = sha256_hex(&module);
            let written = write_atomically(&self.file, &module)?;
            self.wait_for(&sha, written).await?;
            took.push(written.elapsed().as_secs_f64() * 1e3);
        }
        write_atomically(&self.file, &original)?;
        Ok(took)
    }

    async fn wait_for(&self, sha: &str, since: Instant) -> anyhow::Result<()> {
        loop {
            if self.admin_plugins().await?.contains(sha) {
                return Ok(());
            }
            if since.elapsed() > SWAP_WAIT {
                anyhow::bail!(
                    "the broker did not load the rewritten {} within {SWAP_WAIT:?}; is plugins.watch on and is it that broker's plugin directory?",
                    self.file.display()
                );
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// The body of `GET /admin/plugins` (HTTP/1.1 by hand: one request, then close).
    async fn admin_plugins(&self) -> anyhow::Result<String> {
        let mut stream = tokio::net::TcpStream::connect(&self.admin)
            .await
            .with_context(|| format!("connecting to the admin listener {}", self.admin))?;
        let request = format!(
            "GET /admin/plugins HTTP/1.1\r\nHost: {}\r\nAuthorization: apikey {}\r\nConnection: close\r\n\r\n",
            self.admin, self.admin_key
        );
        stream.write_all(request.as_bytes()).await?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await?;
        let text = String::from_utf8_lossy(&response).into_owned();
        if !text.starts_with("HTTP/1.1 200") {
            let status = text.lines().next().unwrap_or_default();
            anyhow::bail!("GET /admin/plugins answered {status:?}; check HOOKWIRE_ADMIN_KEY");
        }
        Ok(text)
    }
}

/// `module` with a custom section `hookwire-bench` holding `note` appended (valid at
/// the end of a core module and of a component alike).
fn with_custom_section(module: &[u8], note: &str) -> Vec<u8> {
    let name = b"hookwire-bench";
    let mut body = Vec::new();
    leb128(&mut body, name.len());
    body.extend_from_slice(name);
    body.extend_from_slice(note.as_bytes());
    let mut out = module.to_vec();
    out.push(0);
    leb128(&mut out, body.len());
    out.extend_from_slice(&body);
    out
}

fn leb128(out: &mut Vec<u8>, mut n: usize) {
    loop {
        let byte = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

/// Writes beside `path` and renames over it, so the watcher never reads half a file;
/// answers when the rename was done.
fn write_atomically(path: &Path, bytes: &[u8]) -> anyhow::Result<Instant> {
    let name = path
        .file_name()
        .context("--swap-plugin must name a file")?
        .to_string_lossy();
    let tmp = path.with_file_name(format!(".{name}.swap"));
    std::fs::write(&tmp, bytes).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("replacing {}", path.display()))?;
    Ok(Instant::now())
}
