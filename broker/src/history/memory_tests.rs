use super::*;
use crate::protocol::{StreamPosition, encode};

const POLICY: HistoryPolicy = HistoryPolicy {
    size: 3,
    ttl_ms: 1_000,
};
const ALL: usize = usize::MAX;

fn ch() -> ChannelName {
    ChannelName::parse("chat:a").unwrap()
}

fn push(h: &MemoryHistory, now: u64) -> Position {
    h.append(&ch(), POLICY, now, &mut |off| encode(&off)).0
}

fn latest(limit: usize) -> Query<'static> {
    Query::Latest {
        limit,
        max_bytes: ALL,
    }
}

fn since(p: &StreamPosition) -> Query<'_> {
    Query::Since {
        since: p,
        limit: ALL,
        max_bytes: ALL,
    }
}

fn offsets(page: &Page) -> Vec<String> {
    page.publications
        .iter()
        .map(|f| f.as_str().to_string())
        .collect()
}

#[test]
fn offsets_increase_and_size_bounds_history() {
    let h = MemoryHistory::new();
    for i in 1..=5 {
        assert_eq!(push(&h, 10).offset, i);
    }
    let page = h.read(&ch(), POLICY, 10, latest(10)).unwrap();
    assert_eq!(offsets(&page), vec!["3", "4", "5"]);
    let page = h.read(&ch(), POLICY, 10, latest(2)).unwrap();
    assert_eq!(offsets(&page), vec!["4", "5"]);
}

#[test]
fn since_returns_exactly_the_missed_or_refuses() {
    let h = MemoryHistory::new();
    let epoch = push(&h, 10).epoch.to_string();
    push(&h, 10);
    push(&h, 10);
    let at = |offset| StreamPosition {
        offset,
        epoch: epoch.clone(),
    };
    let q = |p: &StreamPosition| h.read(&ch(), POLICY, 10, since(p));
    assert_eq!(offsets(&q(&at(1)).unwrap()), vec!["2", "3"]);
    assert!(q(&at(3)).unwrap().publications.is_empty());
    assert_eq!(offsets(&q(&at(0)).unwrap()), vec!["1", "2", "3"]);
    push(&h, 10); // offset 1 falls out (size 3)
    assert_eq!(
        q(&at(0)).unwrap_err(),
        ReadError::Gone {
            given: 0,
            oldest: 2
        }
    );
    assert_eq!(offsets(&q(&at(1)).unwrap()), vec!["2", "3", "4"]);
    assert!(matches!(q(&at(9)), Err(ReadError::Ahead { .. })));
    let wrong = StreamPosition {
        offset: 1,
        epoch: "nope".into(),
    };
    assert!(matches!(q(&wrong), Err(ReadError::EpochChanged { .. })));
}

#[test]
fn ttl_expires_publications() {
    let h = MemoryHistory::new();
    let epoch = push(&h, 0).epoch.to_string();
    push(&h, 500);
    let page = h.read(&ch(), POLICY, 1_200, latest(10)).unwrap();
    assert_eq!(offsets(&page), vec!["2"]);
    let from = StreamPosition { offset: 0, epoch };
    let err = h.read(&ch(), POLICY, 1_200, since(&from)).unwrap_err();
    assert_eq!(
        err,
        ReadError::Gone {
            given: 0,
            oldest: 2
        }
    );
}

#[test]
fn idle_streams_are_forgotten_with_their_epoch() {
    let h = MemoryHistory::new();
    let first = push(&h, 0).epoch;
    assert_eq!(h.sweep(100, 1_000).streams, 1);
    assert_eq!(h.sweep(5_000, 1_000).streams, 0);
    assert_ne!(push(&h, 5_000).epoch, first);
}

#[test]
fn reads_of_unknown_channels_store_nothing_and_name_the_coming_epoch() {
    let h = MemoryHistory::new();
    let before = h.position(&ch());
    assert_eq!(before.offset, 0);
    let page = h.read(&ch(), POLICY, 10, latest(10)).unwrap();
    assert!(page.publications.is_empty());
    assert_eq!(page.position, before);
    assert_eq!(h.sweep(10, 1_000).streams, 0, "a read created a stream");
    let subscribed_at = StreamPosition {
        offset: 0,
        epoch: before.epoch.to_string(),
    };
    assert!(h.read(&ch(), POLICY, 10, since(&subscribed_at)).is_ok());
    // The first publication gets the epoch the read named: recovery from 0 is exact.
    assert_eq!(push(&h, 20).epoch, before.epoch);
    let page = h.read(&ch(), POLICY, 20, since(&subscribed_at)).unwrap();
    assert_eq!(offsets(&page), vec!["1"]);
}

#[test]
fn the_sweeper_expires_publications_nobody_reads() {
    let h = MemoryHistory::new();
    push(&h, 0);
    push(&h, 0);
    let kept = h.sweep(10, 60_000);
    assert_eq!((kept.streams, kept.publications), (1, 2));
    let kept = h.sweep(5_000, 60_000);
    assert_eq!((kept.streams, kept.publications, kept.bytes), (1, 0, 0));
}

#[test]
fn caps_evict_the_least_recently_published_stream() {
    let config = HistoryConfig {
        max_streams: 64,
        max_bytes: 1 << 20,
        ..HistoryConfig::default()
    };
    let h = MemoryHistory::from_config(&config);
    // Two channels of one shard: the shard's share of 64 streams is 1.
    let names: Vec<ChannelName> = (0..)
        .map(|i| ChannelName::parse(&format!("chat:{i}")).unwrap())
        .filter(|c| locate(c).0 == 0)
        .take(2)
        .collect();
    let put = |c: &ChannelName, now| h.append(c, POLICY, now, &mut |o| encode(&o)).0;
    let old = put(&names[0], 1);
    put(&names[1], 2);
    let stats = h.sweep(3, 60_000);
    assert_eq!((stats.streams, stats.evicted_for_streams), (1, 1));
    let from = StreamPosition {
        offset: old.offset,
        epoch: old.epoch.to_string(),
    };
    let err = h.read(&names[0], POLICY, 3, since(&from)).unwrap_err();
    assert!(matches!(err, ReadError::EpochChanged { .. }), "{err:?}");
}

#[test]
fn a_byte_cap_keeps_the_newest_publications_of_a_lone_stream() {
    let config = HistoryConfig {
        max_bytes: 1 << 20, // 16 KiB per shard
        ..HistoryConfig::default()
    };
    let h = MemoryHistory::from_config(&config);
    let policy = HistoryPolicy {
        size: 100,
        ttl_ms: 60_000,
    };
    let big = "x".repeat(5_000);
    for _ in 0..10 {
        h.append(&ch(), policy, 1, &mut |_| encode(&big));
    }
    let stats = h.sweep(2, 60_000);
    assert!(stats.bytes <= 16 << 10, "{stats:?}");
    assert_eq!(stats.evicted_for_bytes, 7);
}

#[test]
fn pages_are_cut_at_max_bytes_and_say_where_to_go_on() {
    let h = MemoryHistory::new();
    let epoch = push(&h, 10).epoch.to_string();
    push(&h, 10);
    push(&h, 10);
    let from = StreamPosition { offset: 0, epoch };
    let q = Query::Since {
        since: &from,
        limit: ALL,
        max_bytes: 2,
    };
    let page = h.read(&ch(), POLICY, 10, q).unwrap();
    assert_eq!(
        (offsets(&page), page.next),
        (vec!["1".into(), "2".into()], Some(2))
    );
    let q = Query::Latest {
        limit: 3,
        max_bytes: 0,
    };
    let page = h.read(&ch(), POLICY, 10, q).unwrap();
    assert_eq!((offsets(&page), page.next), (vec!["1".into()], Some(1)));
    let page = h.read(&ch(), POLICY, 10, latest(2)).unwrap();
    assert_eq!(page.next, None);
}

fn sequenced(offset: u64) -> Sequenced {
    Sequenced {
        epoch: Arc::from("js1"),
        offset,
        ts_ms: 10,
        frame: encode(&offset),
    }
}

#[test]
fn a_replica_takes_skipping_offsets_and_recovers_exactly_above_its_floor() {
    let h = MemoryHistory::replica(&HistoryConfig::default());
    // Loaded: the stream kept 7 and 9 of this channel; it had sequence 12 when read.
    let restored = Restored {
        epoch: Arc::from("js1"),
        floor: 5,
        top: 12,
        publications: vec![sequenced(7), sequenced(9)],
    };
    h.restore(&ch(), POLICY, 10, restored);
    assert_eq!(h.position(&ch()).offset, 12);
    h.insert(&ch(), POLICY, 10, sequenced(20));
    h.insert(&ch(), POLICY, 10, sequenced(20)); // a repeat changes nothing
    h.insert(&ch(), POLICY, 10, sequenced(31));
    let at = |offset| StreamPosition {
        offset,
        epoch: "js1".into(),
    };
    // Offsets skip numbers: from 9 the next are 20 and 31, exactly.
    let page = h.read(&ch(), POLICY, 10, since(&at(9))).unwrap();
    assert_eq!(offsets(&page), vec!["20", "31"]);
    let page = h.read(&ch(), POLICY, 10, since(&at(12))).unwrap();
    assert_eq!(offsets(&page), vec!["20", "31"]);
    // The size bound (3) dropped 7: recovering from before it may have missed it.
    assert!(matches!(
        h.read(&ch(), POLICY, 10, since(&at(6))),
        Err(ReadError::Gone { .. })
    ));
    // Below the loaded floor, too.
    assert!(matches!(
        h.read(&ch(), POLICY, 10, since(&at(4))),
        Err(ReadError::Gone { .. })
    ));
    // A replica is never forgotten by the sweeper, only by its link.
    h.sweep(10_000_000, 1);
    assert_eq!(h.position(&ch()).offset, 31);
    h.forget(&ch());
    assert_ne!(&*h.position(&ch()).epoch, "js1");
}
