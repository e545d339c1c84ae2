//! The per-call deadline, counted in CPU time.
//!
//! The engine's ticker advances the epoch every millisecond. A call starts with its
//! deadline one tick away, so a call that ends within the tick (nearly all) costs
//! nothing here. A longer call reaches the deadline callback once per tick, which reads
//! the thread's CPU clock: the call is stopped when it has run on a CPU for the
//! plugin's `timeout_ms`. Time the thread spent preempted does not count, so a busy
//! host does not cut calls short and make fail-closed plugins refuse at random; a
//! starved call is still stopped after [`WALL_FACTOR`] times the deadline in wall time.

use std::time::Duration;

use wasmtime::UpdateDeadline;

/// The epoch ticker's period: a call's deadline is checked this often.
pub const TICK: Duration = Duration::from_millis(1);

/// Wall-time cap of a call, as a multiple of its CPU deadline.
pub const WALL_FACTOR: u32 = 10;

/// The deadline state of one instance's current call.
#[derive(Debug)]
pub struct Deadline {
    cpu_budget: Duration,
    /// Thread CPU time at the first tick of the call.
    first_tick_cpu: Option<Duration>,
    ticks: u32,
    /// Set when the callback stopped the call.
    pub expired: bool,
    /// CPU the call had used at its last tick (zero for a call within one tick).
    pub used: Duration,
}

impl Deadline {
    pub fn new(timeout_ms: u64) -> Self {
        Self {
            cpu_budget: Duration::from_millis(timeout_ms.max(1)),
            first_tick_cpu: None,
            ticks: 0,
            expired: false,
            used: Duration::ZERO,
        }
    }

    /// Before each call (with the store's epoch deadline set one tick away).
    pub fn begin(&mut self) {
        self.first_tick_cpu = None;
        self.ticks = 0;
        self.expired = false;
        self.used = Duration::ZERO;
    }

    /// The epoch reached the deadline during the call: go on for one more tick, or stop.
    pub fn on_tick(&mut self) -> UpdateDeadline {
        self.ticks += 1;
        let now = thread_cpu();
        let first = *self.first_tick_cpu.get_or_insert(now);
        // Up to one tick of CPU went by before the first callback.
        let used = now.saturating_sub(first) + TICK;
        self.used = used;
        let wall = TICK * self.ticks;
        if used >= self.cpu_budget || wall >= self.cpu_budget * WALL_FACTOR {
            self.expired = true;
            return UpdateDeadline::Interrupt;
        }
        UpdateDeadline::Continue(1)
    }
}

/// CPU time of the calling thread.
fn thread_cpu() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_busy_call_is_stopped_after_its_cpu_budget() {
        let mut d = Deadline::new(3);
        d.begin();
        let start = std::time::Instant::now();
        let mut ticks = 0;
        loop {
            // Spin for a tick of CPU, as a looping plugin would.
            let t = std::time::Instant::now();
            while t.elapsed() < TICK {}
            ticks += 1;
            if matches!(d.on_tick(), UpdateDeadline::Interrupt) {
                break;
            }
            assert!(ticks < 100, "never stopped");
        }
        assert!(d.expired);
        assert!(
            start.elapsed() >= Duration::from_millis(2),
            "{:?}",
            start.elapsed()
        );
    }

    #[test]
    fn an_idle_thread_runs_to_the_wall_cap() {
        let mut d = Deadline::new(2);
        d.begin();
        let mut ticks = 0;
        // No CPU used between ticks (a preempted call): only the wall cap stops it.
        while matches!(d.on_tick(), UpdateDeadline::Continue(1)) {
            ticks += 1;
        }
        assert_eq!(ticks + 1, 2 * WALL_FACTOR);
        d.begin();
        assert!(!d.expired);
    }
}
