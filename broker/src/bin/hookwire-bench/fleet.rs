//! The coordinator's side of the worker processes: spawn, command, collect, shut down.
//!
//! Workers are started through `sh -c 'ulimit -n <hard>; exec …'`: the workspace forbids
//! `unsafe`, so the bench cannot call `setrlimit` itself, but a shell can raise the soft
//! open-files limit to the hard one for the process it then becomes.

use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout};
use tokio::time::Instant;

use crate::ipc::{Command, Event, PublishTotals, RecvReport, WorkerSpec};

/// Raises the soft `nofile` limit to the hard one, then becomes the worker.
const LAUNCHER: &str = r#"ulimit -n "$(ulimit -H -n)" 2>/dev/null; exec "$0" worker"#;
/// Writing to a worker's stdin never waits longer than this.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

struct Worker {
    pid: u32,
    child: Child,
    stdin: ChildStdin,
    lines: Lines<BufReader<ChildStdout>>,
}

pub struct Fleet {
    workers: Vec<Worker>,
}

impl Fleet {
    /// Starts one worker per spec and hands each its spec.
    pub async fn spawn(specs: &[WorkerSpec]) -> anyhow::Result<Fleet> {
        let exe = std::env::current_exe().context("locating the bench executable")?;
        let mut workers = Vec::with_capacity(specs.len());
        for spec in specs {
            let mut child = tokio::process::Command::new("sh")
                .arg("-c")
                .arg(LAUNCHER)
                .arg(&exe)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .kill_on_drop(true)
                .spawn()
                .context("starting a worker process")?;
            let pid = child.id().context("worker pid")?;
            let mut stdin = child.stdin.take().context("worker stdin")?;
            let stdout = child.stdout.take().context("worker stdout")?;
            let mut line = serde_json::to_string(spec)?;
            line.push('\n');
            // The worker reads its spec first thing; a spec larger than the pipe buffer
            // completes as it reads.
            tokio::time::timeout(WRITE_TIMEOUT, stdin.write_all(line.as_bytes()))
                .await
                .context("a worker did not take its spec in time")?
                .context("sending a worker its spec")?;
            workers.push(Worker {
                pid,
                child,
                stdin,
                lines: BufReader::new(stdout).lines(),
            });
        }
        Ok(Fleet { workers })
    }

    pub fn len(&self) -> usize {
        self.workers.len()
    }

    pub fn pids(&self) -> Vec<u32> {
        self.workers.iter().map(|w| w.pid).collect()
    }

    pub async fn send(&mut self, index: usize, command: &Command) -> anyhow::Result<()> {
        let mut line = serde_json::to_string(command)?;
        line.push('\n');
        let write = self.workers[index].stdin.write_all(line.as_bytes());
        tokio::time::timeout(WRITE_TIMEOUT, write)
            .await
            .with_context(|| format!("worker {index} did not read its command in time"))?
            .with_context(|| format!("worker {index} is gone (writing a command)"))
    }

    /// The next event of worker `index`, by `deadline`.
    pub async fn recv(&mut self, index: usize, deadline: Instant) -> anyhow::Result<Event> {
        let next = self.workers[index].lines.next_line();
        let line = match tokio::time::timeout_at(deadline, next).await {
            Err(_) => bail!("worker {index} did not answer in time"),
            Ok(Err(e)) => bail!("worker {index}: reading its output: {e}"),
            Ok(Ok(None)) => bail!("worker {index} exited unexpectedly (see its stderr above)"),
            Ok(Ok(Some(line))) => line,
        };
        let event: Event = serde_json::from_str(&line)
            .with_context(|| format!("worker {index} sent something unexpected: {line}"))?;
        if let Event::Fatal { message } = event {
            bail!("worker {index} failed: {message}");
        }
        Ok(event)
    }

    /// Sends `command` to the workers in `which` (all start at once), then collects one
    /// event from each within `timeout`.
    pub async fn ask(
        &mut self,
        which: &[usize],
        command: &Command,
        timeout: Duration,
    ) -> anyhow::Result<Vec<Event>> {
        for &i in which {
            self.send(i, command).await?;
        }
        let deadline = Instant::now() + timeout;
        let mut events = Vec::with_capacity(which.len());
        for &i in which {
            events.push(self.recv(i, deadline).await?);
        }
        Ok(events)
    }

    /// `Run` or `PublishOnce` on `which`, summed.
    pub async fn publish(
        &mut self,
        which: &[usize],
        command: &Command,
        timeout: Duration,
    ) -> anyhow::Result<PublishTotals> {
        let mut totals = PublishTotals::default();
        for event in self.ask(which, command, timeout).await? {
            match event {
                Event::Published(t) => totals.merge(&t),
                other => return Err(anyhow!("expected a publish result, got {other:?}")),
            }
        }
        Ok(totals)
    }

    /// Subscriber counters of `which`.
    pub async fn report(
        &mut self,
        which: &[usize],
        reset: bool,
    ) -> anyhow::Result<Vec<RecvReport>> {
        let events = self
            .ask(which, &Command::Report { reset }, Duration::from_secs(30))
            .await?;
        events
            .into_iter()
            .map(|e| match e {
                Event::Report(r) => Ok(r),
                other => Err(anyhow!("expected a report, got {other:?}")),
            })
            .collect()
    }

    /// Asks every worker to exit, waits a little, then kills what is left.
    pub async fn shutdown(mut self) {
        for i in 0..self.workers.len() {
            let _ = self.send(i, &Command::Exit).await;
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        for w in &mut self.workers {
            if tokio::time::timeout_at(deadline, w.child.wait())
                .await
                .is_err()
            {
                let _ = w.child.kill().await;
            }
        }
    }
}
