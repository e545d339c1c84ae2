//! The four scenarios. Each prints a human-readable summary, then one JSON line with
//! every number (so README figures can be copied from it).
//!
//! Publishers of `fanout` and `broadcast` get a worker process of their own: stamping
//! and sending should not queue behind thousands of receiving sockets in the same event
//! loop, or the measured latency would include the bench's own backlog.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::json;

use crate::common::{Ctx, bring_up, drain, print_cpu, print_json, split};
use crate::ipc::{Command, Group, PublishTotals, PublisherSpec};
use crate::procfs::{self, round1, round3};
use crate::swap::SwapPlan;

/// How long subscribers get to receive what was published before the rest counts as lost.
const DRAIN_MAX: Duration = Duration::from_secs(30);
/// Pause after connecting, so the broker has finished the setup work.
const SETTLE: Duration = Duration::from_secs(1);

#[derive(clap::Args, Debug)]
pub struct IdleArgs {
    /// Connections to open and hold (each connected and subscribed).
    #[arg(long, default_value_t = 1000)]
    pub connections: usize,
    /// Channels the connections are spread over (round robin).
    #[arg(long, default_value_t = 100)]
    pub channels: usize,
    /// Seconds to wait after connecting before reading the broker's RSS.
    #[arg(long, default_value_t = 3)]
    pub settle: u64,
    /// Seconds to hold the idle connections while measuring CPU.
    #[arg(long, default_value_t = 5)]
    pub hold: u64,
}

#[derive(clap::Args, Debug)]
pub struct FanoutArgs {
    /// Subscribers of the one channel.
    #[arg(long, default_value_t = 10_000)]
    pub subscribers: usize,
    /// Publishes per second; 0 = flat out, bounded by --window unanswered publishes.
    #[arg(long, default_value_t = 0.0)]
    pub rate: f64,
    /// Size of each message's `data` in bytes.
    #[arg(long, default_value_t = 100)]
    pub payload: usize,
    /// Seconds to publish.
    #[arg(long, default_value_t = 10)]
    pub duration: u64,
    /// Publishes sent and not yet answered, at most.
    #[arg(long, default_value_t = 16)]
    pub window: usize,
}

#[derive(clap::Args, Debug)]
pub struct BroadcastArgs {
    /// Idle subscribers of the one channel.
    #[arg(long, default_value_t = 10_000)]
    pub subscribers: usize,
    /// Messages to send, one at a time, each measured on its own.
    #[arg(long, default_value_t = 5)]
    pub rounds: usize,
    /// Size of the message's `data` in bytes.
    #[arg(long, default_value_t = 100)]
    pub payload: usize,
    /// Pause between rounds, in milliseconds.
    #[arg(long, default_value_t = 1000)]
    pub gap_ms: u64,
}

#[derive(clap::Args, Debug)]
pub struct PairsArgs {
    /// Publisher/subscriber pairs, each on a channel of its own.
    #[arg(long, default_value_t = 1000)]
    pub pairs: usize,
    /// Total publishes per second over all pairs; 0 = flat out, each publisher bounded
    /// by --window unanswered publishes.
    #[arg(long, default_value_t = 0.0)]
    pub rate: f64,
    #[arg(long, default_value_t = 100)]
    pub payload: usize,
    #[arg(long, default_value_t = 10)]
    pub duration: u64,
    #[arg(long, default_value_t = 8)]
    pub window: usize,
    /// Hot reload under load: rewrite this plugin module (same code, new sha256)
    /// --swaps times, evenly through the run, timing each write until GET
    /// /admin/plugins shows it (needs HOOKWIRE_ADMIN_KEY and a watched plugin dir).
    #[arg(long)]
    pub swap_plugin: Option<std::path::PathBuf>,
    #[arg(long, default_value_t = 5)]
    pub swaps: usize,
    /// The broker's admin listener, for --swap-plugin.
    #[arg(long, default_value = "http://127.0.0.1:19090")]
    pub admin_url: String,
}

fn rate_label(rate: f64, window: usize) -> String {
    if rate > 0.0 {
        format!("{rate} msg/s")
    } else {
        format!("flat out (window {window})")
    }
}

fn print_publish(t: &PublishTotals, secs: f64) {
    println!(
        "published:  {} acked ({:.1}/s over {:.2} s), {} errors, {} unanswered, {} broken publishers, window full {} times",
        t.acked,
        t.acked as f64 / secs,
        secs,
        t.errors,
        t.unanswered,
        t.broken,
        t.window_full
    );
    if let Some(e) = &t.first_error {
        println!("  first error: {e}");
    }
}

/// Seconds between two µs timestamps (at least 1 µs).
fn secs_between(from_us: u64, to_us: u64) -> f64 {
    (to_us.saturating_sub(from_us)).max(1) as f64 / 1e6
}

pub async fn idle(ctx: Ctx, a: IdleArgs) -> anyhow::Result<()> {
    let w = ctx.common.workers;
    let channels = a.channels.max(1);
    println!(
        "idle: {} connections over {} channels, {} workers",
        a.connections, channels, w
    );
    let rss_before = ctx.rss();
    // Connection i subscribes to channel i % channels; worker k holds a contiguous range.
    let mut start = 0;
    let plan = split(a.connections, w)
        .into_iter()
        .map(|share| {
            let mut counts = BTreeMap::<usize, usize>::new();
            for i in start..start + share {
                *counts.entry(i % channels).or_default() += 1;
            }
            start += share;
            let groups = counts
                .into_iter()
                .map(|(c, count)| Group {
                    channel: ctx.channel(&format!("idle-{c}")),
                    count,
                })
                .collect();
            (groups, Vec::new())
        })
        .collect();
    let (fleet, setup) = bring_up(&ctx, &ctx.specs(plan)).await?;

    tokio::time::sleep(Duration::from_secs(a.settle)).await;
    let rss_after = ctx.rss();
    let cpu0 = ctx.cpu(&fleet);
    tokio::time::sleep(Duration::from_secs(a.hold)).await;
    let hold_cpu = procfs::usage(&cpu0, &ctx.cpu(&fleet), ctx.ticks);
    let rss_end = ctx.rss();
    fleet.shutdown().await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let rss_closed = ctx.rss();

    let per_conn = match (rss_before, rss_after) {
        (Some(b), Some(a)) if setup.subscribers > 0 => Some(round3(
            a.saturating_sub(b) as f64 / setup.subscribers as f64,
        )),
        _ => None,
    };
    let kib = |v: Option<u64>| v.map_or_else(|| "n/a".to_string(), |v| format!("{v} KiB"));
    println!(
        "broker rss: before {}, after {} (+{} s), end of hold {}, 3 s after closing {}",
        kib(rss_before),
        kib(rss_after),
        a.settle,
        kib(rss_end),
        kib(rss_closed)
    );
    match per_conn {
        Some(p) => println!(
            "broker rss per connection: {p:.2} KiB  ((after - before) / {} connected)",
            setup.subscribers
        ),
        None => println!("broker rss per connection: n/a (needs --broker-pid)"),
    }
    print_cpu("holding idle", &hold_cpu);
    print_json(&json!({
        "scenario": "idle",
        "connections": a.connections,
        "channels": channels,
        "workers": w,
        "source_ips": ctx.common.source_ips,
        "setup": setup.json(),
        "broker_rss_before_kib": rss_before,
        "broker_rss_after_kib": rss_after,
        "broker_rss_end_kib": rss_end,
        "broker_rss_after_close_kib": rss_closed,
        "broker_rss_per_conn_kib": per_conn,
        "hold_cpu": hold_cpu,
    }));
    Ok(())
}

/// Plan for one channel: `subscribers` over the workers, plus a publisher worker.
fn one_channel_plan(
    ctx: &Ctx,
    channel: &str,
    subscribers: usize,
    publisher: PublisherSpec,
) -> Vec<(Vec<Group>, Vec<PublisherSpec>)> {
    let mut plan: Vec<_> = split(subscribers, ctx.common.workers)
        .into_iter()
        .map(|count| {
            let groups = vec![Group {
                channel: channel.to_string(),
                count,
            }];
            (groups, Vec::new())
        })
        .collect();
    plan.push((Vec::new(), vec![publisher]));
    plan
}

pub async fn fanout(ctx: Ctx, a: FanoutArgs) -> anyhow::Result<()> {
    let channel = ctx.channel("fanout");
    println!(
        "fanout: {} subscribers on {channel}, 1 publisher, {}, payload {} B, {} s",
        a.subscribers,
        rate_label(a.rate, a.window),
        a.payload,
        a.duration
    );
    let publisher = PublisherSpec {
        channel: channel.clone(),
        rate: a.rate,
        window: a.window,
        payload: a.payload,
    };
    let plan = one_channel_plan(&ctx, &channel, a.subscribers, publisher);
    let (mut fleet, setup) = bring_up(&ctx, &ctx.specs(plan)).await?;
    let subs: Vec<usize> = (0..ctx.common.workers).collect();
    let pub_worker = ctx.common.workers;
    tokio::time::sleep(SETTLE).await;
    fleet.report(&subs, true).await?;

    let cpu0 = ctx.cpu(&fleet);
    let run = Command::Run {
        duration_ms: a.duration * 1000,
    };
    let limit = Duration::from_secs(a.duration + 60);
    let t = fleet.publish(&[pub_worker], &run, limit).await?;
    let cpu = procfs::usage(&cpu0, &ctx.cpu(&fleet), ctx.ticks);
    let expected = t.acked * setup.subscribers as u64;
    let r = drain(&mut fleet, &subs, expected, DRAIN_MAX).await?;
    let rss = ctx.rss();
    fleet.shutdown().await;

    let pub_secs = secs_between(t.started_us, t.stopped_us);
    let delivery_secs = secs_between(t.started_us, r.last_us);
    let lost = expected.saturating_sub(r.received);
    print_publish(&t, pub_secs);
    println!(
        "delivered:  {} of {} expected ({} subscribers x {} acked); lost {}; other frames {}",
        r.received, expected, setup.subscribers, t.acked, lost, r.other
    );
    println!(
        "throughput: {:.0} deliveries/s (first publish to last delivery, {:.2} s)",
        r.received as f64 / delivery_secs,
        delivery_secs
    );
    println!("latency:    {}", r.latency_line());
    println!(
        "per subscriber: min {} max {} messages; connections closed during the run: {:?}",
        r.min_per_conn, r.max_per_conn, r.closed
    );
    print_cpu("publishing", &cpu);
    print_json(&json!({
        "scenario": "fanout",
        "subscribers": a.subscribers,
        "rate_target": a.rate,
        "window": a.window,
        "payload": a.payload,
        "duration_s": a.duration,
        "workers": ctx.common.workers,
        "setup": setup.json(),
        "published": t.acked,
        "publish_errors": t.errors,
        "publish_unanswered": t.unanswered,
        "window_full": t.window_full,
        "publishes_per_s": round1(t.acked as f64 / pub_secs),
        "expected_deliveries": expected,
        "received": r.received,
        "lost": lost,
        "deliveries_per_s": round1(r.received as f64 / delivery_secs),
        "latency": r.latency_json(),
        "min_per_subscriber": r.min_per_conn,
        "max_per_subscriber": r.max_per_conn,
        "closed_during_run": r.closed,
        "cpu": cpu,
        "broker_rss_kib": rss,
    }));
    Ok(())
}

// Long on purpose (bench code, not the broker): a scenario reads top to bottom as its
// phases (connect, warm up, measure, report); splitting it would scatter one run.
pub async fn broadcast(ctx: Ctx, a: BroadcastArgs) -> anyhow::Result<()> {
    let channel = ctx.channel("broadcast");
    println!(
        "broadcast: 1 message at a time to {} idle subscribers on {channel}, {} rounds, payload {} B",
        a.subscribers, a.rounds, a.payload
    );
    let publisher = PublisherSpec {
        channel: channel.clone(),
        rate: 0.0,
        window: 1,
        payload: a.payload,
    };
    let plan = one_channel_plan(&ctx, &channel, a.subscribers, publisher);
    let (mut fleet, setup) = bring_up(&ctx, &ctx.specs(plan)).await?;
    let subs: Vec<usize> = (0..ctx.common.workers).collect();
    let pub_worker = ctx.common.workers;
    tokio::time::sleep(SETTLE).await;

    let cpu0 = ctx.cpu(&fleet);
    let mut rounds = Vec::new();
    for round in 1..=a.rounds {
        fleet.report(&subs, true).await?;
        let t = fleet
            .publish(
                &[pub_worker],
                &Command::PublishOnce,
                Duration::from_secs(30),
            )
            .await?;
        if t.acked == 0 {
            println!(
                "round {round}: the publish was not acknowledged ({})",
                t.first_error.as_deref().unwrap_or("no answer")
            );
            rounds.push(json!({"round": round, "acked": false}));
            continue;
        }
        let r = drain(
            &mut fleet,
            &subs,
            setup.subscribers as u64,
            Duration::from_secs(10),
        )
        .await?;
        let ms = |us: u64| round3(us.saturating_sub(t.stamp_us) as f64 / 1000.0);
        let (first, last) = (ms(r.first_us), ms(r.last_us));
        println!(
            "round {round}: {}/{} received, first {first:.2} ms, last {last:.2} ms, p50 {:.2} ms, p99 {:.2} ms",
            r.received,
            setup.subscribers,
            r.latency.quantile(0.5) as f64 / 1000.0,
            r.latency.quantile(0.99) as f64 / 1000.0
        );
        if r.other > 0 || !r.closed.is_empty() {
            println!(
                "  also: {} other frames (joins, leaves, …); connections closed so far: {:?}",
                r.other, r.closed
            );
        }
        rounds.push(json!({
            "round": round,
            "acked": true,
            "other_frames": r.other,
            "closed": r.closed,
            "received": r.received,
            "lost": (setup.subscribers as u64).saturating_sub(r.received),
            "first_ms": first,
            "last_ms": last,
            "latency": r.latency_json(),
        }));
        tokio::time::sleep(Duration::from_millis(a.gap_ms)).await;
    }
    let cpu = procfs::usage(&cpu0, &ctx.cpu(&fleet), ctx.ticks);
    let rss = ctx.rss();
    fleet.shutdown().await;
    print_cpu("all rounds, mostly idle", &cpu);
    print_json(&json!({
        "scenario": "broadcast",
        "subscribers": a.subscribers,
        "payload": a.payload,
        "workers": ctx.common.workers,
        "setup": setup.json(),
        "rounds": rounds,
        "cpu": cpu,
        "broker_rss_kib": rss,
    }));
    Ok(())
}

// Long on purpose (bench code, not the broker): a scenario reads top to bottom as its
// phases (connect, warm up, measure, report); splitting it would scatter one run.
pub async fn pairs(ctx: Ctx, a: PairsArgs) -> anyhow::Result<()> {
    let w = ctx.common.workers;
    let pairs = a.pairs.max(1);
    println!(
        "pairs: {pairs} publisher/subscriber pairs, one channel each, {}, payload {} B, {} s",
        rate_label(a.rate, a.window),
        a.payload,
        a.duration
    );
    // Pair i: subscriber on worker i % w, publisher on the next worker, so that with
    // more than one worker every message crosses processes.
    let mut plan: Vec<(Vec<Group>, Vec<PublisherSpec>)> = vec![(Vec::new(), Vec::new()); w];
    for i in 0..pairs {
        let channel = ctx.channel(&format!("pair-{i}"));
        plan[i % w].0.push(Group {
            channel: channel.clone(),
            count: 1,
        });
        plan[(i + 1) % w].1.push(PublisherSpec {
            channel,
            rate: a.rate / pairs as f64,
            window: a.window,
            payload: a.payload,
        });
    }
    let swap = a
        .swap_plugin
        .clone()
        .map(|file| SwapPlan::new(file, a.swaps, &a.admin_url))
        .transpose()?;
    let (mut fleet, setup) = bring_up(&ctx, &ctx.specs(plan)).await?;
    let all: Vec<usize> = (0..w).collect();
    tokio::time::sleep(SETTLE).await;
    fleet.report(&all, true).await?;

    let cpu0 = ctx.cpu(&fleet);
    let run = Command::Run {
        duration_ms: a.duration * 1000,
    };
    let publishing = fleet.publish(&all, &run, Duration::from_secs(a.duration + 60));
    let (t, swaps) = match &swap {
        Some(plan) => {
            let (t, swaps) = tokio::join!(publishing, plan.run(Duration::from_secs(a.duration)));
            (t?, Some(swaps?))
        }
        None => (publishing.await?, None),
    };
    let cpu = procfs::usage(&cpu0, &ctx.cpu(&fleet), ctx.ticks);
    // With every client connected each acked publish has exactly one subscriber.
    let complete = setup.failed.total() == 0;
    let r = drain(&mut fleet, &all, t.acked, DRAIN_MAX).await?;
    let rss = ctx.rss();
    fleet.shutdown().await;

    let pub_secs = secs_between(t.started_us, t.stopped_us);
    let lost = complete.then(|| t.acked.saturating_sub(r.received));
    print_publish(&t, pub_secs);
    println!(
        "delivered:  {} ({:.0}/s); lost {}",
        r.received,
        r.received as f64 / secs_between(t.started_us, r.last_us),
        lost.map_or_else(
            || "unknown (not every client connected)".to_string(),
            |l| l.to_string()
        )
    );
    println!("latency:    {}", r.latency_line());
    println!(
        "per subscriber: min {} max {} messages; connections closed during the run: {:?}",
        r.min_per_conn, r.max_per_conn, r.closed
    );
    print_cpu("publishing", &cpu);
    if let Some(ms) = &swaps {
        let shown: Vec<String> = ms.iter().map(|m| format!("{m:.0}")).collect();
        println!(
            "plugin swaps: {} during the run; write → loaded (ms): {}",
            ms.len(),
            shown.join(", ")
        );
    }
    print_json(&json!({
        "scenario": "pairs",
        "swap_ms": swaps,
        "pairs": pairs,
        "rate_target": a.rate,
        "window": a.window,
        "payload": a.payload,
        "duration_s": a.duration,
        "workers": w,
        "setup": setup.json(),
        "published": t.acked,
        "publish_errors": t.errors,
        "publish_unanswered": t.unanswered,
        "window_full": t.window_full,
        "publishes_per_s": round1(t.acked as f64 / pub_secs),
        "received": r.received,
        "lost": lost,
        "deliveries_per_s": round1(r.received as f64 / secs_between(t.started_us, r.last_us)),
        "latency": r.latency_json(),
        "min_per_subscriber": r.min_per_conn,
        "max_per_subscriber": r.max_per_conn,
        "closed_during_run": r.closed,
        "cpu": cpu,
        "broker_rss_kib": rss,
    }));
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn split_is_even_and_complete() {
        let parts = super::split(10, 4);
        assert_eq!(parts, vec![3, 3, 2, 2]);
        assert_eq!(parts.iter().sum::<usize>(), 10);
        assert_eq!(super::split(0, 3), vec![0, 0, 0]);
    }
}
