//! `soak` bookkeeping on the worker side: for each subscriber, the offsets of its channel
//! it has seen, so every recovery can be checked for exactness (no gap, no duplicate
//! between what it saw before the disconnect and after).
//!
//! On one node offsets are consecutive, and one connection receives its channel's
//! publications in order, so a subscriber only needs the last offset it saw: the next one
//! must be `last + 1`; a smaller one is a duplicate, a larger one a gap.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::ipc::SoakReport;
use crate::stats::{Histogram, find_stamp};

const MESSAGE_PREFIX: &[u8] = br#"{"type":"message","#;
const OFFSET: &[u8] = br#""offset":"#;

/// The first `"offset":` number of a frame (a `message` push names its own first).
pub fn offset_of(frame: &[u8]) -> Option<u64> {
    let at = frame.windows(OFFSET.len()).position(|w| w == OFFSET)? + OFFSET.len();
    let digits: Vec<u8> = frame[at..]
        .iter()
        .take_while(|b| b.is_ascii_digit())
        .copied()
        .collect();
    std::str::from_utf8(&digits).ok()?.parse().ok()
}

/// One subscriber's view of its channel.
#[derive(Debug)]
pub struct Track {
    pub channel: String,
    pub epoch: String,
    /// Offset the first subscription started at (the channel's top then).
    start: u64,
    /// Last offset received in sequence.
    pub last: u64,
    received: u64,
    duplicates: u64,
    missing: u64,
    /// The current episode (since the last reconnect) is a recovery, and it went wrong.
    recovering: bool,
    bad: bool,
    alive: bool,
}

/// What the `subscribed` reply of a recovery said, as far as the bookkeeping goes.
pub struct Resubscribed {
    pub recovered: bool,
    pub more: bool,
    /// The stream's top when the subscription started.
    pub top: u64,
    pub next_offset: u64,
    pub epoch: String,
}

impl Resubscribed {
    pub fn parse(reply: &Value) -> Resubscribed {
        Resubscribed {
            recovered: reply["recovered"].as_bool().unwrap_or(false),
            more: reply["more"].as_bool().unwrap_or(false),
            top: reply["offset"].as_u64().unwrap_or(0),
            next_offset: reply["next_offset"].as_u64().unwrap_or(0),
            epoch: reply["epoch"].as_str().unwrap_or("").to_string(),
        }
    }
}

/// The offsets of a reply's `publications`.
pub fn publication_offsets(reply: &Value) -> Vec<u64> {
    reply["publications"]
        .as_array()
        .map(|pubs| pubs.iter().filter_map(|p| p["offset"].as_u64()).collect())
        .unwrap_or_default()
}

/// Every subscriber of one worker.
#[derive(Default)]
pub struct SoakState {
    pub tracks: Vec<Track>,
    latency: Histogram,
    unexpected: BTreeMap<String, u64>,
    recoveries: u64,
    exact: u64,
    not_exact: u64,
}

impl SoakState {
    /// A subscriber that just subscribed (without recovery) at `top` of `epoch`.
    pub fn add(&mut self, channel: String, epoch: String, top: u64) -> usize {
        self.tracks.push(Track {
            channel,
            epoch,
            start: top,
            last: top,
            received: 0,
            duplicates: 0,
            missing: 0,
            recovering: false,
            bad: false,
            alive: true,
        });
        self.tracks.len() - 1
    }

    /// A pushed frame: `message`s are checked and timed, anything else is ignored.
    pub fn on_push(&mut self, i: usize, frame: &[u8], now_us: u64) {
        if !frame.starts_with(MESSAGE_PREFIX) {
            return;
        }
        if let Some(offset) = offset_of(frame) {
            self.on_offset(i, offset);
        }
        if let Some(t) = find_stamp(&frame[MESSAGE_PREFIX.len()..]) {
            self.latency.record(now_us.saturating_sub(t));
        }
    }

    pub fn on_offset(&mut self, i: usize, offset: u64) {
        let t = &mut self.tracks[i];
        if offset <= t.last {
            t.duplicates += 1;
            t.bad = true;
            return;
        }
        if offset > t.last + 1 {
            t.missing += offset - t.last - 1;
            t.bad = true;
        }
        t.last = offset;
        t.received += 1;
    }

    /// Up to `top` everything must have arrived: the rest is missing.
    pub fn expect_up_to(&mut self, i: usize, top: u64) {
        let t = &mut self.tracks[i];
        if t.last < top {
            t.missing += top - t.last;
            t.last = top;
            t.bad = true;
        }
    }

    /// Ends the current episode (a recovery is judged now) and starts a recovery.
    pub fn begin_recovery(&mut self, i: usize) {
        self.end_episode(i);
        self.recoveries += 1;
        let t = &mut self.tracks[i];
        t.recovering = true;
        t.bad = false;
    }

    fn end_episode(&mut self, i: usize) {
        let t = &mut self.tracks[i];
        if t.recovering {
            if t.bad {
                self.not_exact += 1;
            } else {
                self.exact += 1;
            }
        }
        t.recovering = false;
    }

    /// The `subscribed` reply of a recovery (its first page of publications applied).
    pub fn resubscribed(&mut self, i: usize, r: &Resubscribed, offsets: &[u64]) {
        if !r.recovered || r.epoch != self.tracks[i].epoch {
            // Not recovered (or a new stream): whatever was missed is lost; go on from the
            // new top of the (possibly new) epoch.
            let t = &mut self.tracks[i];
            t.bad = true;
            if r.epoch == t.epoch {
                t.missing += r.top.saturating_sub(t.last);
            }
            t.epoch.clone_from(&r.epoch);
            t.last = r.top;
            return;
        }
        for &o in offsets {
            self.on_offset(i, o);
        }
        if !r.more {
            self.expect_up_to(i, r.top);
        }
    }

    pub fn mark_bad(&mut self, i: usize) {
        self.tracks[i].bad = true;
    }

    pub fn closed_unexpectedly(&mut self, i: usize, cause: String) {
        self.tracks[i].alive = false;
        self.tracks[i].bad = true;
        *self.unexpected.entry(cause).or_default() += 1;
    }

    pub fn lost(&mut self, i: usize) {
        self.tracks[i].alive = false;
        self.tracks[i].bad = true;
    }

    /// Checks every live subscriber against its channel's final top and sums up.
    pub fn finish(&mut self, tops: &BTreeMap<String, u64>) -> SoakReport {
        let mut r = SoakReport::default();
        for i in 0..self.tracks.len() {
            if self.tracks[i].alive {
                let top = tops.get(&self.tracks[i].channel).copied().unwrap_or(0);
                self.expect_up_to(i, top);
            }
            self.end_episode(i);
            let t = &self.tracks[i];
            if t.alive {
                r.alive += 1;
                r.expected += t.last.saturating_sub(t.start);
                r.received += t.received;
                r.duplicates += t.duplicates;
                r.missing += t.missing;
            }
        }
        r.recoveries = self.recoveries;
        r.recoveries_exact = self.exact;
        r.recoveries_not_exact = self.not_exact;
        r.unexpected_closes = self.unexpected.clone();
        r.latency = self.latency.to_sparse();
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> SoakState {
        let mut s = SoakState::default();
        s.add("chat:a".into(), "e1".into(), 0);
        s
    }

    fn tops(top: u64) -> BTreeMap<String, u64> {
        [("chat:a".to_string(), top)].into_iter().collect()
    }

    fn resub(recovered: bool, top: u64, more: bool) -> Resubscribed {
        Resubscribed {
            recovered,
            more,
            top,
            next_offset: 0,
            epoch: "e1".into(),
        }
    }

    #[test]
    fn reads_the_offset_of_a_push() {
        let f = br#"{"type":"message","channel":"chat:a","offset":42,"ts":1,"data":{"t":5}}"#;
        assert_eq!(offset_of(f), Some(42));
        let mut s = state();
        s.on_push(0, f, 10);
        assert_eq!(s.tracks[0].last, 42);
    }

    #[test]
    fn an_exact_recovery_counts_as_exact() {
        let mut s = state();
        s.on_offset(0, 1);
        s.on_offset(0, 2);
        s.begin_recovery(0);
        s.resubscribed(0, &resub(true, 4, false), &[3, 4]);
        s.on_offset(0, 5);
        let r = s.finish(&tops(5));
        assert_eq!(
            (r.recoveries, r.recoveries_exact, r.recoveries_not_exact),
            (1, 1, 0)
        );
        assert_eq!(
            (r.expected, r.received, r.missing, r.duplicates),
            (5, 5, 0, 0)
        );
    }

    #[test]
    fn gaps_duplicates_and_refusals_are_not_exact() {
        let mut s = state();
        s.on_offset(0, 1);
        s.begin_recovery(0);
        // The reply skips offset 2 and repeats 1.
        s.resubscribed(0, &resub(true, 3, false), &[1, 3]);
        s.begin_recovery(0);
        s.resubscribed(0, &resub(false, 6, false), &[]);
        let r = s.finish(&tops(7));
        assert_eq!(
            (r.recoveries, r.recoveries_exact, r.recoveries_not_exact),
            (2, 0, 2)
        );
        // 2 skipped, 4..=6 not recovered, 7 never arrived.
        assert_eq!((r.missing, r.duplicates), (5, 1));
    }
}
