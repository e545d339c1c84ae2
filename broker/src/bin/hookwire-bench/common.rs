//! What every scenario shares: the target, the plan of which worker holds which
//! clients, bringing the fleet up (with loud reporting of connection caps), merging the
//! workers' counters, and printing.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::{Value, json};

use crate::fleet::Fleet;
use crate::ipc::{Event, Failures, Group, PublisherSpec, RecvReport, WorkerSpec, min_nonzero};
use crate::procfs;
use crate::stats::Histogram;

/// Options every scenario takes.
#[derive(clap::Args, Clone, Debug)]
pub struct Common {
    /// The broker's WebSocket URL; only 127.0.0.0/8 (or localhost) is accepted.
    #[arg(long, default_value = "ws://127.0.0.1:8080/ws")]
    pub url: String,
    /// Where publishers connect, when not to --url: another node of a cluster (the
    /// subscribers stay on --url), to measure cross-node delivery. Publishers given it
    /// speak WebSocket whatever --transport says.
    #[arg(long)]
    pub publish_url: Option<String>,
    /// HS256 secret the broker verifies tokens with (prefer the environment variable:
    /// argv is visible to every user of the machine).
    #[arg(long, env = "HOOKWIRE_JWT_SECRET", hide_env_values = true)]
    pub secret: String,
    /// The broker's process id, to read its RSS (/proc/PID/status) and CPU
    /// (/proc/PID/stat). Without it only the bench's own numbers are reported.
    #[arg(long)]
    pub broker_pid: Option<u32>,
    /// Worker processes the clients are spread over (each may hold up to the hard
    /// open-files limit, 20,000 here, minus a few).
    #[arg(long, default_value_t = 4)]
    pub workers: usize,
    /// Source addresses 127.0.0.2, 127.0.0.3, … clients bind to, so the ~28k ephemeral
    /// ports of one address are not the cap.
    #[arg(long, default_value_t = 8)]
    pub source_ips: usize,
    /// Connection attempts in flight per worker.
    #[arg(long, default_value_t = 100)]
    pub connect_concurrency: usize,
    /// Seconds one attempt (TCP, upgrade, connect, subscribe) may take.
    #[arg(long, default_value_t = 15)]
    pub connect_timeout: u64,
    /// Client read buffer in bytes, allocated per connection. tungstenite zeroes the
    /// free part before every read, so a large buffer costs CPU when batches are small.
    #[arg(long, default_value_t = 4096)]
    pub read_buffer: usize,
    /// Namespace of the bench channels; it must allow client publishes.
    #[arg(long, default_value = "chat")]
    pub namespace: String,
    /// What every client speaks: `websocket` (to --url) or `webtransport` (to
    /// --quic-url, trusting the certificate the broker serves at /dev/cert-hash on
    /// --url's listener, so the broker runs with --dev; or give --cert-hash).
    #[arg(long, value_enum, default_value = "websocket")]
    pub transport: BenchTransport,
    #[arg(long, default_value = "https://127.0.0.1:4433/wt")]
    pub quic_url: String,
    /// SHA-256 of the QUIC listener's certificate, hex (default: from /dev/cert-hash).
    #[arg(long)]
    pub cert_hash: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum BenchTransport {
    Websocket,
    Webtransport,
}

/// A resolved target plus run-wide settings.
pub struct Ctx {
    pub common: Common,
    pub broker: SocketAddr,
    /// (URL, certificate SHA-256 hex) with `--transport webtransport`.
    pub webtransport: Option<(String, String)>,
    pub run_id: String,
    pub ticks: f64,
}

/// Parses `ws://host:port/path` and refuses anything outside 127.0.0.0/8.
pub fn loopback_target(url: &str) -> anyhow::Result<SocketAddr> {
    let rest = url.strip_prefix("ws://").context(
        "--url must start with ws:// (the bench speaks plain WebSocket to a local broker)",
    )?;
    let authority = rest.split('/').next().unwrap_or("");
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) => (h, p.parse::<u16>().context("--url has a bad port")?),
        None => (authority, 80),
    };
    let ip: Ipv4Addr = if host == "localhost" {
        Ipv4Addr::LOCALHOST
    } else {
        host.parse()
            .with_context(|| format!("--url host {host:?} is not an IPv4 address"))?
    };
    if !ip.is_loopback() {
        bail!("--url must point into 127.0.0.0/8; the bench never sends traffic off this machine");
    }
    Ok(SocketAddr::new(ip.into(), port))
}

/// The QUIC listener's certificate hash from `GET /dev/cert-hash` (a `--dev` broker).
fn dev_cert_hash(broker: SocketAddr) -> anyhow::Result<String> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(broker)?;
    stream.set_read_timeout(Some(std::time::Duration::from_secs(5)))?;
    stream.write_all(b"GET /dev/cert-hash HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let body = response.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    let v: serde_json::Value = serde_json::from_str(body).with_context(|| {
        format!(
            "GET /dev/cert-hash answered {body:?}: run the broker with --dev, or give --cert-hash"
        )
    })?;
    v["hash"]
        .as_str()
        .map(str::to_string)
        .context("GET /dev/cert-hash has no hash (is the QUIC listener on?)")
}

impl Ctx {
    pub fn new(common: Common) -> anyhow::Result<Ctx> {
        let broker = loopback_target(&common.url)?;
        if let Some(url) = &common.publish_url {
            loopback_target(url)?;
        }
        if common.secret.len() < 32 {
            bail!("the secret must be at least 32 bytes (the broker refuses shorter ones)");
        }
        if common.workers == 0 || common.source_ips == 0 || common.source_ips > 250 {
            bail!("--workers must be at least 1 and --source-ips between 1 and 250");
        }
        if common.broker_pid.is_none() {
            eprintln!("note: without --broker-pid the broker's RSS and CPU are not measured");
        }
        let webtransport = match common.transport {
            BenchTransport::Websocket => None,
            BenchTransport::Webtransport => {
                let url: url::Url = common.quic_url.parse().context("--quic-url")?;
                let loopback = matches!(url.host(), Some(url::Host::Ipv4(ip)) if ip.is_loopback());
                if url.scheme() != "https" || !loopback {
                    bail!("--quic-url must be https://127.x.x.x:PORT/wt (a local broker)");
                }
                let hash = match &common.cert_hash {
                    Some(hash) => hash.clone(),
                    None => dev_cert_hash(broker)?,
                };
                Some((common.quic_url.clone(), hash))
            }
        };
        let run_id = format!("{:08x}", rand::random::<u32>());
        Ok(Ctx {
            common,
            broker,
            webtransport,
            run_id,
            ticks: procfs::clock_ticks_per_sec(),
        })
    }

    pub fn channel(&self, name: &str) -> String {
        format!("{}:bench-{}-{name}", self.common.namespace, self.run_id)
    }

    pub fn source_ips(&self) -> Vec<Ipv4Addr> {
        (0..self.common.source_ips)
            .map(|k| Ipv4Addr::new(127, 0, 0, 2 + k as u8))
            .collect()
    }

    /// One spec per worker from its subscribers and publishers.
    pub fn specs(&self, plan: Vec<(Vec<Group>, Vec<PublisherSpec>)>) -> Vec<WorkerSpec> {
        let mut first_client = 0;
        plan.into_iter()
            .enumerate()
            .map(|(index, (subscribers, publishers))| {
                let clients = publishers.len() + subscribers.iter().map(|g| g.count).sum::<usize>();
                let spec = WorkerSpec {
                    index,
                    run_id: self.run_id.clone(),
                    url: self.common.url.clone(),
                    broker: self.broker,
                    publish_url: self.common.publish_url.clone(),
                    secret: self.common.secret.clone(),
                    source_ips: self.source_ips(),
                    subscribers,
                    publishers,
                    connect_concurrency: self.common.connect_concurrency,
                    connect_timeout_ms: self.common.connect_timeout * 1000,
                    read_buffer: self.common.read_buffer,
                    webtransport: self.webtransport.clone(),
                    first_client,
                    soak: None,
                };
                first_client += clients;
                spec
            })
            .collect()
    }

    pub fn rss(&self) -> Option<u64> {
        self.common.broker_pid.and_then(procfs::rss_kib)
    }

    pub fn cpu(&self, fleet: &Fleet) -> procfs::CpuSample {
        procfs::sample(self.common.broker_pid, &fleet.pids())
    }
}

/// `n` split into `parts` nearly equal shares.
pub fn split(n: usize, parts: usize) -> Vec<usize> {
    (0..parts)
        .map(|i| n / parts + usize::from(i < n % parts))
        .collect()
}

/// What connecting the whole fleet gave.
pub struct Setup {
    pub subscribers: usize,
    pub publishers: usize,
    pub failed: Failures,
    pub secs: f64,
    /// CPU while the clients connected.
    pub cpu: procfs::CpuUsage,
}

impl Setup {
    pub fn json(&self) -> Value {
        json!({
            "subscribers_connected": self.subscribers,
            "publishers_connected": self.publishers,
            "connect_failed": self.failed.total(),
            "connect_failures": self.failed.counts,
            "connect_secs": procfs::round3(self.secs),
            "connect_cpu": self.cpu,
        })
    }
}

/// Starts the workers, waits until every one finished connecting, and says loudly
/// which caps were hit.
pub async fn bring_up(ctx: &Ctx, specs: &[WorkerSpec]) -> anyhow::Result<(Fleet, Setup)> {
    let started = Instant::now();
    let wanted_subs: usize = specs
        .iter()
        .flat_map(|s| &s.subscribers)
        .map(|g| g.count)
        .sum();
    let wanted_pubs: usize = specs.iter().map(|s| s.publishers.len()).sum();
    let mut fleet = Fleet::spawn(specs).await?;
    let cpu_start = ctx.cpu(&fleet);
    // Bound: every attempt ends within the connect timeout, `concurrency` at a time.
    let most = specs
        .iter()
        .map(|s| s.publishers.len() + s.subscribers.iter().map(|g| g.count).sum::<usize>())
        .max()
        .unwrap_or(0);
    let waves = most.div_ceil(ctx.common.connect_concurrency.max(1)) as u64 + 1;
    let deadline = tokio::time::Instant::now()
        + Duration::from_secs(ctx.common.connect_timeout * waves.min(20) + 60);
    let mut setup = Setup {
        subscribers: 0,
        publishers: 0,
        failed: Failures::default(),
        secs: 0.0,
        cpu: procfs::usage(&cpu_start, &cpu_start, ctx.ticks),
    };
    for i in 0..fleet.len() {
        match fleet.recv(i, deadline).await? {
            Event::Ready {
                subscribers,
                publishers,
                failed,
                ..
            } => {
                setup.subscribers += subscribers;
                setup.publishers += publishers;
                setup.failed.merge(&failed);
            }
            other => bail!("worker {i}: expected ready, got {other:?}"),
        }
    }
    setup.secs = started.elapsed().as_secs_f64();
    setup.cpu = procfs::usage(&cpu_start, &ctx.cpu(&fleet), ctx.ticks);
    println!(
        "setup: {}/{} subscribers and {}/{} publishers connected in {:.1} s ({} worker processes, {} source addresses)",
        setup.subscribers,
        wanted_subs,
        setup.publishers,
        wanted_pubs,
        setup.secs,
        fleet.len(),
        ctx.common.source_ips
    );
    print_cpu("connecting", &setup.cpu);
    if setup.failed.total() > 0 {
        println!(
            "CAP HIT: {} clients could not connect:",
            setup.failed.total()
        );
        for (class, n) in &setup.failed.counts {
            let sample = setup.failed.samples.get(class).map_or("", String::as_str);
            println!("  {class:>14}: {n:>7}   e.g. {sample}");
        }
    }
    Ok((fleet, setup))
}

/// The workers' subscriber counters, summed.
pub struct Received {
    pub received: u64,
    pub other: u64,
    pub first_us: u64,
    pub last_us: u64,
    pub latency: Histogram,
    pub min_per_conn: u64,
    pub max_per_conn: u64,
    pub closed: std::collections::BTreeMap<String, u64>,
}

pub fn merge(reports: &[RecvReport]) -> Received {
    let mut r = Received {
        received: 0,
        other: 0,
        first_us: 0,
        last_us: 0,
        latency: Histogram::default(),
        min_per_conn: u64::MAX,
        max_per_conn: 0,
        closed: Default::default(),
    };
    for rep in reports {
        r.received += rep.received;
        r.other += rep.other;
        r.first_us = min_nonzero(r.first_us, rep.first_us);
        r.last_us = r.last_us.max(rep.last_us);
        r.latency.merge(&rep.latency);
        r.min_per_conn = r.min_per_conn.min(rep.min_per_conn);
        r.max_per_conn = r.max_per_conn.max(rep.max_per_conn);
        for (k, v) in &rep.closed {
            *r.closed.entry(k.clone()).or_default() += v;
        }
    }
    if reports.is_empty() {
        r.min_per_conn = 0;
    }
    r
}

impl Received {
    /// Latency percentiles in µs, for the JSON line.
    pub fn latency_json(&self) -> Value {
        let h = &self.latency;
        json!({
            "count": h.total(),
            "p50_us": h.quantile(0.5),
            "p99_us": h.quantile(0.99),
            "p999_us": h.quantile(0.999),
            "max_us": h.max(),
        })
    }

    pub fn latency_line(&self) -> String {
        let h = &self.latency;
        let ms = |us: u64| us as f64 / 1000.0;
        format!(
            "p50 {:.2} ms   p99 {:.2} ms   p99.9 {:.2} ms   max {:.2} ms",
            ms(h.quantile(0.5)),
            ms(h.quantile(0.99)),
            ms(h.quantile(0.999)),
            ms(h.max())
        )
    }
}

/// Polls the subscribers until `expected` messages arrived, nothing arrived for 3 s, or
/// `max_wait` passed, whichever is first.
pub async fn drain(
    fleet: &mut Fleet,
    which: &[usize],
    expected: u64,
    max_wait: Duration,
) -> anyhow::Result<Received> {
    let deadline = Instant::now() + max_wait;
    let mut last_total = u64::MAX;
    let mut last_progress = Instant::now();
    loop {
        let merged = merge(&fleet.report(which, false).await?);
        let now = Instant::now();
        if merged.received != last_total {
            last_total = merged.received;
            last_progress = now;
        }
        if merged.received >= expected
            || now >= deadline
            || now.duration_since(last_progress) > Duration::from_secs(3)
        {
            return Ok(merged);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

pub fn print_cpu(label: &str, cpu: &procfs::CpuUsage) {
    let broker = cpu
        .broker_pct
        .map_or_else(|| "n/a".to_string(), |p| format!("{p:.1} %"));
    println!(
        "cpu ({label}, {:.1} s, % of one core): broker {broker}   bench {:.1} % (coordinator + workers)",
        cpu.wall_s, cpu.bench_pct
    );
}

/// The last line of every scenario: all numbers, one JSON object.
pub fn print_json(value: &Value) {
    println!("{value}");
}
