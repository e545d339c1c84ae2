//! A worker process (`hookwire-bench worker`): opens its share of the clients and
//! serves the coordinator's commands (see `ipc`).
//!
//! One thread, one current-thread runtime: the bench shares two cores with the broker,
//! so it avoids work-stealing and cross-thread wake-ups, and the counters can be plain
//! `Rc<RefCell<…>>` touched by every subscriber task of the `LocalSet`.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::io::Write;
use std::net::Ipv4Addr;
use std::process::ExitCode;
use std::rc::Rc;
use std::time::Duration;

use anyhow::{Context, bail};
use futures_util::StreamExt;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::client::{self, Dial};
use crate::ipc::{Command, Event, Failures, PublishTotals, PublisherSpec, RecvReport, WorkerSpec};
use crate::publisher::{PubCmd, publisher_task};
use crate::stats::RecvStats;

/// A worker never outlives this, even if the coordinator hangs without closing stdin.
const MAX_LIFETIME: Duration = Duration::from_secs(3 * 3600);
/// Slack on top of a run's duration for the publishers' own drain timeouts.
const RUN_SLACK: Duration = Duration::from_secs(30);

pub fn main() -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            emit(&Event::Fatal {
                message: format!("worker runtime: {e}"),
            });
            return ExitCode::FAILURE;
        }
    };
    let local = tokio::task::LocalSet::new();
    match local.block_on(&runtime, run()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            emit(&Event::Fatal {
                message: format!("{e:#}"),
            });
            ExitCode::FAILURE
        }
    }
}

fn hex(text: &str) -> anyhow::Result<Vec<u8>> {
    (0..text.len())
        .step_by(2)
        .map(|i| {
            let pair = text.get(i..i + 2).context("odd-length hex")?;
            u8::from_str_radix(pair, 16).context("not hex")
        })
        .collect()
}

/// One event line on stdout (the coordinator reads them; diagnostics go to stderr).
pub fn emit(event: &Event) {
    let mut out = std::io::stdout().lock();
    let line = serde_json::to_string(event).expect("events serialize");
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

enum Role {
    Subscriber { conn: usize },
    Publisher(PublisherSpec),
}

struct Job {
    /// Global client number: names the user and picks the source address.
    client: usize,
    channel: String,
    role: Role,
}

fn jobs(spec: &WorkerSpec) -> Vec<Job> {
    let mut jobs = Vec::new();
    let mut client = spec.first_client;
    for p in &spec.publishers {
        jobs.push(Job {
            client,
            channel: p.channel.clone(),
            role: Role::Publisher(p.clone()),
        });
        client += 1;
    }
    let mut conn = 0;
    for g in &spec.subscribers {
        for _ in 0..g.count {
            jobs.push(Job {
                client,
                channel: g.channel.clone(),
                role: Role::Subscriber { conn },
            });
            client += 1;
            conn += 1;
        }
    }
    jobs
}

// Long on purpose (bench code, not the broker): a scenario reads top to bottom as its
// phases (connect, warm up, measure, report); splitting it would scatter one run.
async fn run() -> anyhow::Result<()> {
    let deadline = Instant::now() + MAX_LIFETIME;
    let mut stdin = BufReader::new(tokio::io::stdin()).lines();
    let first = stdin
        .next_line()
        .await
        .context("reading the worker spec")?
        .context("stdin closed before the worker spec")?;
    let spec: WorkerSpec = serde_json::from_str(&first).context("parsing the worker spec")?;
    if spec.source_ips.is_empty() {
        bail!("the worker spec has no source addresses");
    }

    let dial = Dial {
        broker: spec.broker,
        url: spec.url.clone(),
        secret: spec.secret.clone().into_bytes(),
        config: WebSocketConfig::default()
            .read_buffer_size(spec.read_buffer)
            .write_buffer_size(16 << 10)
            .max_message_size(Some(1 << 20))
            .max_frame_size(Some(1 << 20)),
        timeout: Duration::from_millis(spec.connect_timeout_ms),
        wt: match &spec.webtransport {
            Some((url, hash)) => Some(client::WtDial::new(url, hex(hash)?)?),
            None => None,
        },
    };
    if spec.soak.is_some() {
        return crate::soak_worker::run(spec, stdin, dial, deadline).await;
    }
    let sub_count: usize = spec.subscribers.iter().map(|g| g.count).sum();
    let stats = Rc::new(RefCell::new(RecvStats::new(sub_count)));
    let closed = Rc::new(RefCell::new(BTreeMap::<String, u64>::new()));

    // Open every client, at most `connect_concurrency` at a time. Subscribers start
    // reading as soon as they are subscribed.
    let started = Instant::now();
    let mut failed = Failures::default();
    let mut publishers: Vec<mpsc::UnboundedSender<PubCmd>> = Vec::new();
    let mut subscribers = 0;
    let ips: &[Ipv4Addr] = &spec.source_ips;
    let run_id = &spec.run_id;
    let publish_dial = match &spec.publish_url {
        // Always WebSocket: `--publish-url` is a ws:// URL, also with `--transport
        // webtransport` (subscribers over WebTransport, publishers over WebSocket).
        Some(url) => Dial {
            broker: crate::common::loopback_target(url)?,
            url: url.clone(),
            wt: None,
            ..dial.clone()
        },
        None => dial.clone(),
    };
    let (dial, publish_dial) = (&dial, &publish_dial);
    let mut attempts = futures_util::stream::iter(jobs(&spec))
        .map(|job| async move {
            let source = ips[job.client % ips.len()];
            let sub = format!("bench-{run_id}-{}", job.client);
            let subscribe = matches!(job.role, Role::Subscriber { .. });
            let to = if subscribe { dial } else { publish_dial };
            let result = client::open(to, source, &sub, &job.channel, subscribe).await;
            (job, result)
        })
        .buffer_unordered(spec.connect_concurrency.max(1));
    while let Some((job, result)) = attempts.next().await {
        match (result, job.role) {
            (Ok(ws), Role::Subscriber { conn }) => {
                subscribers += 1;
                stats.borrow_mut().mark_connected(conn);
                tokio::task::spawn_local(client::subscriber_loop(
                    ws,
                    conn,
                    stats.clone(),
                    closed.clone(),
                ));
            }
            (Ok(ws), Role::Publisher(p)) => {
                let (tx, rx) = mpsc::unbounded_channel();
                tokio::task::spawn_local(publisher_task(ws, p, rx));
                publishers.push(tx);
            }
            (Err(e), _) => failed.add(e.class, || e.message),
        }
    }
    drop(attempts);
    emit(&Event::Ready {
        subscribers,
        publishers: publishers.len(),
        failed,
        elapsed_ms: started.elapsed().as_millis() as u64,
    });

    loop {
        let line = match tokio::time::timeout_at(deadline, stdin.next_line()).await {
            Err(_) => bail!("worker lifetime of {MAX_LIFETIME:?} reached"),
            Ok(Err(e)) => bail!("reading a command: {e}"),
            // The coordinator is gone: nothing left to do.
            Ok(Ok(None)) => return Ok(()),
            Ok(Ok(Some(line))) => line,
        };
        let command: Command = serde_json::from_str(&line).context("parsing a command")?;
        match command {
            Command::Run { duration_ms } => {
                let duration = Duration::from_millis(duration_ms);
                let totals = ask_publishers(&publishers, duration + RUN_SLACK, |reply| {
                    PubCmd::Run { duration, reply }
                })
                .await;
                emit(&Event::Published(totals));
            }
            Command::PublishOnce => {
                let totals =
                    ask_publishers(&publishers, RUN_SLACK, |reply| PubCmd::Once { reply }).await;
                emit(&Event::Published(totals));
            }
            Command::Report { reset } => {
                let report = report(&stats.borrow(), &closed.borrow());
                if reset {
                    stats.borrow_mut().reset();
                }
                emit(&Event::Report(report));
            }
            Command::Exit => {
                emit(&Event::Bye);
                return Ok(());
            }
            other => bail!("only a soak worker can {other:?}"),
        }
    }
}

/// Sends one command to every publisher (they run concurrently) and sums their answers.
async fn ask_publishers(
    publishers: &[mpsc::UnboundedSender<PubCmd>],
    timeout: Duration,
    command: impl Fn(oneshot::Sender<PublishTotals>) -> PubCmd,
) -> PublishTotals {
    let mut waiting = Vec::with_capacity(publishers.len());
    for p in publishers {
        let (tx, rx) = oneshot::channel();
        if p.send(command(tx)).is_ok() {
            waiting.push(rx);
        }
    }
    let deadline = Instant::now() + timeout;
    let mut totals = PublishTotals::default();
    for rx in waiting {
        match tokio::time::timeout_at(deadline, rx).await {
            Ok(Ok(t)) => totals.merge(&t),
            // A publisher that did not answer in time or died counts as broken.
            _ => totals.broken += 1,
        }
    }
    totals
}

fn report(stats: &RecvStats, closed: &BTreeMap<String, u64>) -> RecvReport {
    let (min_per_conn, max_per_conn) = stats.per_conn_range();
    RecvReport {
        received: stats.received,
        other: stats.other,
        first_us: stats.first_us,
        last_us: stats.last_us,
        latency: stats.latency.to_sparse(),
        min_per_conn,
        max_per_conn,
        closed: closed.clone(),
    }
}
