//! `soak`: many connections held for minutes while publications flow to many channels;
//! every `--churn-every-secs` a fraction of them disconnect, reconnect and resubscribe
//! with `recover`, and every recovery is checked for exactness (see `soak_track`). The
//! broker's RSS is sampled throughout: it must come back to the level after the first
//! churn cycle.
//!
//! History grows until every channel holds its namespace's `history_size` publications:
//! for `history_size / (publish_rate / channels)` seconds (`chat`: 100 / 0.5 = 200 s at
//! 500/s over 1000 channels). The RSS check is meaningful only when that is shorter than
//! `--churn-every-secs`; otherwise it measures history filling up, not a leak.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::bail;
use serde_json::json;
use tokio::time::Instant;

use crate::common::{Ctx, bring_up, print_cpu, print_json, split};
use crate::fleet::Fleet;
use crate::ipc::{
    ChurnReport, Command, Event, Group, PublishTotals, PublisherSpec, SoakReport, SoakRole,
    WorkerSpec,
};
use crate::procfs;
use crate::stats::Histogram;

/// After the publishers stop, time for the last publications to arrive.
const DRAIN: Duration = Duration::from_secs(5);
/// RSS at the end may exceed the level after the first churn cycle by this much.
const RSS_TOLERANCE: f64 = 0.10;

#[derive(clap::Args, Debug)]
pub struct SoakArgs {
    /// Subscriber connections held (each subscribed to one channel).
    #[arg(long, default_value_t = 19_000)]
    pub connections: usize,
    /// Channels the connections are spread over (round robin) and publications go to.
    #[arg(long, default_value_t = 1000)]
    pub channels: usize,
    /// Seconds to hold the connections while publishing and churning.
    #[arg(long, default_value_t = 600)]
    pub duration_secs: u64,
    /// Seconds between churn cycles.
    #[arg(long, default_value_t = 60)]
    pub churn_every_secs: u64,
    /// Share of the connections that disconnect and reconnect (with recovery) per cycle.
    #[arg(long, default_value_t = 0.1)]
    pub churn_fraction: f64,
    /// Publications per second in total, round robin over the channels.
    #[arg(long, default_value_t = 500.0)]
    pub publish_rate: f64,
    /// Size of each publication's `data` in bytes (`{"t":…,"text":"xx…"}`).
    #[arg(long, default_value_t = 100)]
    pub payload: usize,
    /// Publisher connections (in a worker process of their own), channels split evenly.
    #[arg(long, default_value_t = 2)]
    pub publishers: usize,
    /// Unanswered publishes per publisher connection, at most.
    #[arg(long, default_value_t = 64)]
    pub window: usize,
    /// Milliseconds a churned connection stays away before reconnecting (the longer,
    /// the more publications its recovery must return; paged past
    /// limits.max_reply_bytes).
    #[arg(long, default_value_t = 0)]
    pub offline_ms: u64,
    /// Seconds between RSS samples.
    #[arg(long, default_value_t = 10)]
    pub sample_secs: u64,
}

/// Subscriber workers (connection i on channel i % channels) plus one publisher worker.
fn soak_specs(ctx: &Ctx, a: &SoakArgs) -> Vec<WorkerSpec> {
    let w = ctx.common.workers;
    let channels: Vec<String> = (0..a.channels.max(1))
        .map(|c| ctx.channel(&format!("soak-{c}")))
        .collect();
    let mut start = 0;
    let mut plan: Vec<(Vec<Group>, Vec<_>)> = split(a.connections, w)
        .into_iter()
        .map(|share| {
            let mut counts = BTreeMap::<usize, usize>::new();
            for i in start..start + share {
                *counts.entry(i % channels.len()).or_default() += 1;
            }
            start += share;
            let groups = counts
                .into_iter()
                .map(|(c, count)| Group {
                    channel: channels[c].clone(),
                    count,
                })
                .collect();
            (groups, Vec::new())
        })
        .collect();
    plan.push((Vec::new(), Vec::new()));
    let mut specs = ctx.specs(plan);
    let p = a.publishers.clamp(1, channels.len());
    let lists: Vec<Vec<String>> = (0..p)
        .map(|k| channels.iter().skip(k).step_by(p).cloned().collect())
        .collect();
    for s in &mut specs[..w] {
        s.soak = Some(SoakRole::Subscribers);
    }
    // What the set-up line counts; the soak publisher takes its lists from the role.
    specs[w].publishers = lists
        .iter()
        .map(|list| PublisherSpec {
            channel: list[0].clone(),
            rate: a.publish_rate / p as f64,
            window: a.window,
            payload: a.payload,
        })
        .collect();
    specs[w].soak = Some(SoakRole::Publisher {
        channels: lists,
        rate: a.publish_rate / p as f64,
        window: a.window,
        payload: a.payload,
    });
    specs
}

/// What happened while the connections were held.
#[derive(Default)]
struct Timeline {
    /// (seconds since the start of the run, broker RSS in KiB).
    rss: Vec<(u64, Option<u64>)>,
    churns: Vec<ChurnReport>,
    rss_after_first_churn: Option<u64>,
}

/// Samples RSS and churns on schedule until `duration` has passed.
async fn hold(
    fleet: &mut Fleet,
    ctx: &Ctx,
    a: &SoakArgs,
    subs: &[usize],
) -> anyhow::Result<Timeline> {
    let mut tl = Timeline::default();
    let start = Instant::now();
    let end = start + Duration::from_secs(a.duration_secs);
    let every = Duration::from_secs(a.churn_every_secs.max(1));
    let sample = Duration::from_secs(a.sample_secs.max(1));
    let (mut next_churn, mut next_sample) = (start + every, start);
    let mut cycle = 0;
    loop {
        let next = next_churn.min(next_sample);
        if next >= end {
            break;
        }
        tokio::time::sleep_until(next).await;
        if Instant::now() >= next_churn {
            let churn = Command::Churn {
                fraction: a.churn_fraction,
                cycle,
                offline_ms: a.offline_ms,
            };
            let mut report = ChurnReport::default();
            for ev in fleet.ask(subs, &churn, Duration::from_secs(300)).await? {
                match ev {
                    Event::Churned(r) => report.merge(&r),
                    other => bail!("expected a churn report, got {other:?}"),
                }
            }
            print_churn(start.elapsed().as_secs(), cycle, &report);
            if cycle == 0 {
                tl.rss_after_first_churn = ctx.rss();
            }
            tl.churns.push(report);
            cycle += 1;
            next_churn += every;
        }
        if Instant::now() >= next_sample {
            tl.rss.push((start.elapsed().as_secs(), ctx.rss()));
            next_sample += sample;
        }
    }
    tokio::time::sleep_until(end).await;
    Ok(tl)
}

fn print_churn(at: u64, cycle: u64, r: &ChurnReport) {
    println!(
        "churn {} at {at} s: {} disconnected, {} reconnected ({} failed), recovered {} / not {}, paged {}, slowest {} ms",
        cycle + 1,
        r.churned,
        r.reconnected,
        r.failed.total(),
        r.recovered,
        r.not_recovered,
        r.paged,
        r.max_ms
    );
}

// Long on purpose (bench code, not the broker): a scenario reads top to bottom as its
// phases (connect, publish and churn, drain, check, report).
pub async fn soak(ctx: Ctx, a: SoakArgs) -> anyhow::Result<()> {
    let w = ctx.common.workers;
    println!(
        "soak: {} connections over {} channels for {} s, {:.0} % churn every {} s, {} publications/s, payload {} B, {} workers",
        a.connections,
        a.channels,
        a.duration_secs,
        a.churn_fraction * 100.0,
        a.churn_every_secs,
        a.publish_rate,
        a.payload,
        w
    );
    let rss_before = ctx.rss();
    let (mut fleet, setup) = bring_up(&ctx, &soak_specs(&ctx, &a)).await?;
    let subs: Vec<usize> = (0..w).collect();
    let rss_connected = ctx.rss();
    let cpu0 = ctx.cpu(&fleet);
    fleet
        .send(
            w,
            &Command::Run {
                duration_ms: a.duration_secs * 1000,
            },
        )
        .await?;
    let tl = hold(&mut fleet, &ctx, &a, &subs).await?;
    let (totals, tops) = match fleet
        .recv(w, Instant::now() + Duration::from_secs(120))
        .await?
    {
        Event::SoakPublished { totals, tops } => (totals, tops),
        other => bail!("expected the publishers' totals, got {other:?}"),
    };
    let cpu = procfs::usage(&cpu0, &ctx.cpu(&fleet), ctx.ticks);
    tokio::time::sleep(DRAIN).await;
    let mut report = SoakReport::default();
    let mut latency = Histogram::default();
    for ev in fleet
        .ask(&subs, &Command::SoakFinal { tops }, Duration::from_secs(60))
        .await?
    {
        match ev {
            Event::SoakReport(r) => {
                report.merge(&r);
                latency.merge(&r.latency);
            }
            other => bail!("expected a soak report, got {other:?}"),
        }
    }
    let rss_end = ctx.rss();
    fleet.shutdown().await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let rss_closed = ctx.rss();

    let mut churn = ChurnReport::default();
    tl.churns.iter().for_each(|c| churn.merge(c));
    let errors = setup.failed.total()
        + churn.failed.total()
        + report.unexpected_closes.values().sum::<u64>();
    let rss_growth = match (tl.rss_after_first_churn, rss_end) {
        (Some(first), Some(end)) if first > 0 => Some(end as f64 / first as f64 - 1.0),
        _ => None,
    };
    let rss_ok = rss_growth.map(|g| g <= RSS_TOLERANCE);
    let pass = errors == 0
        && report.recoveries_not_exact == 0
        && report.missing == 0
        && report.duplicates == 0
        && totals.errors == 0
        && totals.unanswered == 0
        && rss_ok != Some(false);
    let out = Outcome {
        a: &a,
        ctx: &ctx,
        tl: &tl,
        churn: &churn,
        report: &report,
        totals: &totals,
        latency: &latency,
        errors,
        rss: [rss_before, rss_connected, rss_end, rss_closed],
        rss_growth,
        pass,
    };
    out.print(&cpu);
    print_json(&out.json(&setup.json(), &cpu));
    Ok(())
}

/// Everything the summary prints.
struct Outcome<'a> {
    a: &'a SoakArgs,
    ctx: &'a Ctx,
    tl: &'a Timeline,
    churn: &'a ChurnReport,
    report: &'a SoakReport,
    totals: &'a PublishTotals,
    latency: &'a Histogram,
    errors: u64,
    /// Before connecting, connected, end of the run (still connected), 3 s after closing.
    rss: [Option<u64>; 4],
    rss_growth: Option<f64>,
    pass: bool,
}

fn mib(kib: Option<u64>) -> String {
    kib.map_or_else(|| "n/a".into(), |k| format!("{:.1} MiB", k as f64 / 1024.0))
}

impl Outcome<'_> {
    fn print(&self, cpu: &procfs::CpuUsage) {
        let (r, t, c) = (self.report, self.totals, self.churn);
        let series: Vec<String> = self
            .tl
            .rss
            .iter()
            .map(|(s, k)| format!("{s}s:{}", k.map_or(0, |k| k / 1024)))
            .collect();
        println!("broker rss series (MiB): {}", series.join(" "));
        println!(
            "broker rss: before {}, connected {}, after the first churn {}, end {} ({}), 3 s after closing {}",
            mib(self.rss[0]),
            mib(self.rss[1]),
            mib(self.tl.rss_after_first_churn),
            mib(self.rss[2]),
            self.rss_growth.map_or_else(
                || "n/a".into(),
                |g| format!(
                    "{:+.1} % vs after the first churn, limit +{:.0} %",
                    g * 100.0,
                    RSS_TOLERANCE * 100.0
                )
            ),
            mib(self.rss[3])
        );
        println!(
            "churn: {} cycles, {} disconnects, {} reconnected, {} failed {:?}; replies recovered {} / not {}, paged {}",
            self.tl.churns.len(),
            c.churned,
            c.reconnected,
            c.failed.total(),
            c.failed.counts,
            c.recovered,
            c.not_recovered,
            c.paged
        );
        println!(
            "recoveries: {} attempted, {} exact, {} not exact",
            r.recoveries, r.recoveries_exact, r.recoveries_not_exact
        );
        println!(
            "connection errors beyond the churned ones: {} (unexpected closes {:?})",
            self.errors, r.unexpected_closes
        );
        println!(
            "published: {} sent, {} acked, {} errors, {} unanswered, window full {} times",
            t.sent, t.acked, t.errors, t.unanswered, t.window_full
        );
        if let Some(e) = &t.first_error {
            println!("  first error: {e}");
        }
        println!(
            "delivered: {} of {} expected to the {} connections alive at the end; lost {}, duplicates {}",
            r.received, r.expected, r.alive, r.missing, r.duplicates
        );
        let ms = |us: u64| us as f64 / 1000.0;
        let h = self.latency;
        println!(
            "live latency: p50 {:.2} ms  p99 {:.2} ms  max {:.2} ms",
            ms(h.quantile(0.5)),
            ms(h.quantile(0.99)),
            ms(h.max())
        );
        print_cpu("publishing and churning", cpu);
        println!("soak: {}", if self.pass { "PASS" } else { "FAIL" });
    }

    fn json(&self, setup: &serde_json::Value, cpu: &procfs::CpuUsage) -> serde_json::Value {
        let (a, r, t, c) = (self.a, self.report, self.totals, self.churn);
        let mut v = json!({
            "scenario": "soak",
            "pass": self.pass,
            "connections": a.connections,
            "channels": a.channels,
            "duration_s": a.duration_secs,
            "churn_every_s": a.churn_every_secs,
            "churn_fraction": a.churn_fraction,
            "publish_rate": a.publish_rate,
            "payload": a.payload,
            "workers": self.ctx.common.workers,
            "setup": setup,
            "broker_rss_series_kib": self.tl.rss,
            "broker_rss_before_kib": self.rss[0],
            "broker_rss_connected_kib": self.rss[1],
            "broker_rss_after_first_churn_kib": self.tl.rss_after_first_churn,
            "broker_rss_end_kib": self.rss[2],
            "broker_rss_after_close_kib": self.rss[3],
            "broker_rss_growth": self.rss_growth.map(procfs::round3),
            "cpu": cpu,
        });
        let checks = json!({
            "churn_cycles": self.tl.churns.len(),
            "churned": c.churned,
            "reconnected": c.reconnected,
            "reconnect_failures": c.failed.counts,
            "replies_recovered": c.recovered,
            "replies_not_recovered": c.not_recovered,
            "replies_paged": c.paged,
            "reconnect_max_ms": c.max_ms,
            "recoveries": r.recoveries,
            "recoveries_exact": r.recoveries_exact,
            "recoveries_not_exact": r.recoveries_not_exact,
            "connection_errors": self.errors,
            "unexpected_closes": r.unexpected_closes,
            "published_sent": t.sent,
            "published_acked": t.acked,
            "publish_errors": t.errors,
            "publish_unanswered": t.unanswered,
            "expected_deliveries": r.expected,
            "received": r.received,
            "lost": r.missing,
            "duplicates": r.duplicates,
            "alive_at_end": r.alive,
            "latency_p50_us": self.latency.quantile(0.5),
            "latency_p99_us": self.latency.quantile(0.99),
            "latency_max_us": self.latency.max(),
        });
        // Two objects: one json! of every field passes the macro recursion limit.
        if let (Some(m), serde_json::Value::Object(more)) = (v.as_object_mut(), checks) {
            m.extend(more);
        }
        v
    }
}
