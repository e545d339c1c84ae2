//! Broker and bench resource use, read from `/proc` (no `unsafe`, no libc).
//!
//! CPU is `utime + stime` from `/proc/<pid>/stat` (all threads of the process), in clock
//! ticks; memory is `VmRSS` from `/proc/<pid>/status`. The bench's own CPU is the
//! coordinator plus every worker process, so the cost of generating load is visible
//! beside the broker's on the same two cores.

use std::time::Instant;

/// `VmRSS` of a process, in KiB.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// `utime + stime` of a process (`"self"` or a pid), in clock ticks.
fn cpu_ticks(pid: &str) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces; fields after its ')' are plain.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state); utime and stime are fields 14 and 15.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// Clock ticks per second (`getconf CLK_TCK`; 100 on every mainstream Linux).
pub fn clock_ticks_per_sec() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse::<f64>().ok())
        .filter(|v| *v > 0.0)
        .unwrap_or(100.0)
}

/// CPU counters of the broker and the bench at one moment.
#[derive(Clone, Debug)]
pub struct CpuSample {
    at: Instant,
    broker: Option<u64>,
    bench: u64,
}

/// Samples the broker (when its pid is known) and the bench (this process + `workers`).
pub fn sample(broker: Option<u32>, workers: &[u32]) -> CpuSample {
    let bench = cpu_ticks("self").unwrap_or(0)
        + workers
            .iter()
            .filter_map(|p| cpu_ticks(&p.to_string()))
            .sum::<u64>();
    CpuSample {
        at: Instant::now(),
        broker: broker.and_then(|p| cpu_ticks(&p.to_string())),
        bench,
    }
}

/// CPU use between two samples, as a percentage of one core (200 % = both of two cores).
#[derive(Clone, Debug, serde::Serialize)]
pub struct CpuUsage {
    pub wall_s: f64,
    pub broker_pct: Option<f64>,
    pub bench_pct: f64,
}

pub fn usage(a: &CpuSample, b: &CpuSample, ticks_per_sec: f64) -> CpuUsage {
    let wall = b.at.duration_since(a.at).as_secs_f64().max(1e-6);
    let pct = |ticks: u64| round1(ticks as f64 / ticks_per_sec / wall * 100.0);
    CpuUsage {
        wall_s: round3(wall),
        broker_pct: match (a.broker, b.broker) {
            (Some(x), Some(y)) => Some(pct(y.saturating_sub(x))),
            _ => None,
        },
        bench_pct: pct(b.bench.saturating_sub(a.bench)),
    }
}

pub fn round1(v: f64) -> f64 {
    (v * 10.0).round() / 10.0
}

pub fn round3(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let me = std::process::id();
        assert!(rss_kib(me).unwrap() > 0);
        assert!(cpu_ticks("self").is_some());
        assert!(cpu_ticks(&me.to_string()).is_some());
    }
}
