//! Property tests: any interleaving of publications, recoveries (paged `since` reads),
//! time passing, sweeps and cap evictions gives a recovering client either exactly the
//! publications it missed, in order, or an explicit error; never a silent gap.

use proptest::prelude::*;

use super::{HistoryConfig, HistoryPolicy, HistoryStore, MemoryHistory, Query};
use crate::channel::ChannelName;
use crate::protocol::{StreamPosition, encode};

const POLICY: HistoryPolicy = HistoryPolicy {
    size: 6,
    ttl_ms: 2_000,
};
const IDLE_TTL_MS: u64 = 5_000;

#[derive(Clone, Debug)]
enum Op {
    /// Publish `size` bytes (about) to channel `channel`.
    Publish {
        channel: usize,
        size: usize,
    },
    /// Client `client` recovers (if it has a position) or joins; pages `page_bytes` at a time.
    Recover {
        client: usize,
        page_bytes: usize,
    },
    Advance {
        ms: u64,
    },
    Sweep,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..4usize, 1..6_000usize).prop_map(|(channel, size)| Op::Publish { channel, size }),
        3 => (0..6usize, 1..20_000usize)
            .prop_map(|(client, page_bytes)| Op::Recover { client, page_bytes }),
        2 => (1..3_000u64).prop_map(|ms| Op::Advance { ms }),
        1 => Just(Op::Sweep),
    ]
}

/// Three channels of one shard (so they evict each other) and one elsewhere.
fn channels() -> Vec<ChannelName> {
    let named = |i: usize| ChannelName::parse(&format!("chat:p{i}")).unwrap();
    let shard = |c: &ChannelName| c.shard(64);
    let first = named(0);
    let mut same: Vec<ChannelName> = (1..)
        .map(named)
        .filter(|c| shard(c) == shard(&first))
        .take(2)
        .collect();
    let other = (1..)
        .map(named)
        .find(|c| shard(c) != shard(&first))
        .unwrap();
    same.insert(0, first);
    same.push(other);
    same
}

/// Every publication made: (channel, epoch, offset, unique id).
type Log = Vec<(usize, String, u64, u64)>;

struct Client {
    channel: usize,
    at: Option<StreamPosition>,
}

/// Reads every page after `from`; `None` if the store refused (explicitly).
fn recover_all(
    h: &MemoryHistory,
    channel: &ChannelName,
    now: u64,
    from: &StreamPosition,
    page_bytes: usize,
) -> Option<(Vec<u64>, StreamPosition)> {
    let mut at = from.clone();
    let mut got = Vec::new();
    loop {
        let q = Query::Since {
            since: &at,
            limit: usize::MAX,
            max_bytes: page_bytes,
        };
        let page = h.read(channel, POLICY, now, q).ok()?;
        got.extend(page.publications.iter().map(|f| id_of(f.as_str())));
        match page.next {
            Some(next) => at.offset = next,
            None => {
                let top = StreamPosition {
                    offset: page.position.offset,
                    epoch: page.position.epoch.to_string(),
                };
                return Some((got, top));
            }
        }
    }
}

/// The id a publication frame was encoded from (`"<id>:<padding>"`).
fn id_of(frame: &str) -> u64 {
    let s = frame.trim_matches('"');
    s.split(':').next().unwrap().parse().unwrap()
}

fn run(ops: &[Op]) -> Result<(), TestCaseError> {
    // 2 streams and 16 KiB per shard: the three channels of one shard evict each other.
    let config = HistoryConfig {
        max_streams: 128,
        max_bytes: 1 << 20,
        ..HistoryConfig::default()
    };
    let h = MemoryHistory::from_config(&config);
    let chans = channels();
    let mut log: Log = Vec::new();
    let mut clients: Vec<Client> = (0..6)
        .map(|i| Client {
            channel: i % chans.len(),
            at: None,
        })
        .collect();
    let mut now = 1_000u64;
    let mut next_id = 0u64;
    for op in ops {
        match *op {
            Op::Publish { channel, size } => {
                next_id += 1;
                let body = format!("{next_id}:{}", "x".repeat(size));
                let (pos, _) = h.append(&chans[channel], POLICY, now, &mut |_| encode(&body));
                log.push((channel, pos.epoch.to_string(), pos.offset, next_id));
            }
            Op::Recover { client, page_bytes } => {
                let c = &mut clients[client];
                let name = &chans[c.channel];
                let Some(from) = c.at.clone() else {
                    let p = h.position(name);
                    c.at = Some(StreamPosition {
                        offset: p.offset,
                        epoch: p.epoch.to_string(),
                    });
                    continue;
                };
                match recover_all(&h, name, now, &from, page_bytes) {
                    Some((got, top)) => {
                        let missed: Vec<u64> = log
                            .iter()
                            .filter(|(ch, e, o, _)| {
                                *ch == c.channel && *e == from.epoch && *o > from.offset
                            })
                            .map(|entry| entry.3)
                            .collect();
                        prop_assert_eq!(got, missed, "recovery from {:?} had a gap", from);
                        c.at = Some(top);
                    }
                    // An explicit refusal: the client reloads state and starts over.
                    None => c.at = None,
                }
            }
            Op::Advance { ms } => now += ms,
            Op::Sweep => {
                h.sweep(now, IDLE_TTL_MS);
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn recovery_is_exact_or_refused(ops in proptest::collection::vec(op(), 1..120)) {
        run(&ops)?;
    }
}
