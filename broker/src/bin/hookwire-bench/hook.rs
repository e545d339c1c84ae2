//! `hook`: the time a namespace's publish chain adds to one publication, in process.
//!
//! Loads the plugins of a broker config exactly as `hookwire serve` does and runs the
//! pipeline's plugin step (build the publication state, run the chain, serialise the
//! added `meta`) over a payload of the given size, timing every call.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use serde_json::json;
use serde_json::value::RawValue;

use hookwire::config::{Config, EnvOverrides};
use hookwire::metrics::Metrics;
use hookwire::plugins::{PluginConn, Plugins, PublicationState, PublishSource};
use hookwire::transport::TransportKind;

use crate::common::print_json;
use crate::publisher::padding;
use crate::stats::now_us;

#[derive(Args, Clone)]
pub struct HookArgs {
    /// Broker config whose plugins and namespace chains to load (`HOOKWIRE_*`
    /// overrides apply, as for `hookwire serve`).
    #[arg(long, default_value = "config/bench-plugins.toml")]
    pub config: PathBuf,
    /// Namespaces whose publish chain to time, one after the other.
    #[arg(long = "namespace", required = true, num_args = 1..)]
    pub namespaces: Vec<String>,
    /// Payload size in bytes: `{"t":<µs>,"p":"xxx…"}`.
    #[arg(long, default_value_t = 200)]
    pub payload: usize,
    /// Timed calls per namespace (after as many untimed warm-up calls, up to 10,000).
    #[arg(long, default_value_t = 200_000)]
    pub calls: usize,
    /// Upper bound of the timed phase per namespace, in seconds.
    #[arg(long, default_value_t = 30)]
    pub max_secs: u64,
}

// Long on purpose (bench code, not the broker): a scenario reads top to bottom as its
// phases (connect, warm up, measure, report); splitting it would scatter one run.
pub fn run(a: HookArgs) -> anyhow::Result<()> {
    let loaded = Config::load(&a.config, false, &EnvOverrides::from_process())
        .with_context(|| format!("loading {}", a.config.display()))?;
    let plugins = Plugins::start(&loaded.config, Arc::new(Metrics::new()))?;
    let data = payload(a.payload);
    let conn = Arc::new(PluginConn {
        id: 1,
        claim_index: Default::default(),
        client: "bench-client".into(),
        user: "bench-user".into(),
        claims: r#"{"sub":"bench-user","name":"Bench User","exp":4102444800}"#.into(),
        transport: TransportKind::WebSocket,
        remote: "127.0.0.1:40000".into(),
        meta: "{}".into(),
    });
    println!(
        "hook: payload {} B, {} timed calls per namespace (≤ {} s), one thread",
        data.get().len(),
        a.calls,
        a.max_secs
    );
    for ns in &a.namespaces {
        if !plugins.publishes_through(ns) {
            anyhow::bail!(
                "namespace {ns:?} has no publish chain in {}",
                a.config.display()
            );
        }
        let chain: Vec<String> = plugins
            .set()
            .chain(ns)
            .iter()
            .map(|p| format!("{}@{}", p.id.name, p.id.version))
            .collect();
        let channel = format!("{ns}:bench");
        let once = || -> anyhow::Result<Duration> {
            let started = Instant::now();
            let state = PublicationState {
                source: PublishSource::Client,
                channels: vec![channel.clone()],
                user: Some(conn.user.clone()),
                data: data.clone(),
                meta: Vec::new(),
                connection: Some(conn.clone()),
            };
            let (state, emits) = plugins
                .on_publish(ns, state, &|_| Ok(()))
                .map_err(|r| anyhow::anyhow!("the chain refused the bench payload: {r:?}"))?;
            let meta = state.meta_json();
            let took = started.elapsed();
            std::hint::black_box((state, emits, meta));
            Ok(took)
        };
        for _ in 0..a.calls.min(10_000) {
            once()?;
        }
        let deadline = Instant::now() + Duration::from_secs(a.max_secs);
        let mut ns_each: Vec<u64> = Vec::with_capacity(a.calls);
        while ns_each.len() < a.calls && Instant::now() < deadline {
            ns_each.push(once()?.as_nanos() as u64);
        }
        ns_each.sort_unstable();
        let q = |p: f64| ns_each[((ns_each.len() - 1) as f64 * p).round() as usize] as f64 / 1e3;
        let mean = ns_each.iter().sum::<u64>() as f64 / ns_each.len() as f64 / 1e3;
        println!(
            "{ns:<10} [{}]: {} calls; µs per publication: p50 {:.2}, p90 {:.2}, p99 {:.2}, p99.9 {:.2}, max {:.1}, mean {:.2}",
            chain.join(", "),
            ns_each.len(),
            q(0.5),
            q(0.9),
            q(0.99),
            q(0.999),
            q(1.0),
            mean
        );
        print_json(&json!({
            "scenario": "hook",
            "namespace": ns,
            "chain": chain,
            "payload": data.get().len(),
            "calls": ns_each.len(),
            "p50_us": q(0.5),
            "p90_us": q(0.9),
            "p99_us": q(0.99),
            "p999_us": q(0.999),
            "max_us": q(1.0),
            "mean_us": mean,
        }));
    }
    Ok(())
}

/// The publishers' payload (`{"t":<µs>,"p":"xxx…"}`) of `size` bytes.
fn payload(size: usize) -> Box<RawValue> {
    let text = format!(r#"{{"t":{},"p":"{}"}}"#, now_us(), padding(size));
    RawValue::from_string(text).expect("valid JSON")
}
