use super::*;
use crate::config::NamespaceConfig;
use crate::history::MemoryHistory;
use crate::outbound::Next;
use crate::outbound::Outbound;
use std::collections::VecDeque;

fn ns(history: usize, join_leave: bool) -> Namespace {
    Namespace {
        name: "chat".into(),
        config: NamespaceConfig {
            history_size: history,
            history_ttl_secs: 60,
            join_leave,
            ..NamespaceConfig::default()
        },
    }
}

fn peer(key: u64) -> Arc<ConnHandle> {
    Arc::new(ConnHandle {
        key,
        client: crate::hub::ClientId::new(&format!("c-{key}")).unwrap(),
        user: format!("u{key}").into(),
        info: None,
        outbound: Outbound::new(4, 1 << 20),
        datagrams: None,
        transport: crate::transport::TransportKind::Memory,
        remote_ip: [127, 0, 0, 1].into(),
        remote_port: 1,
        connected_at_ms: 0,
    })
}

/// Subscribes the way a session does: the `subscribed` reply queued under the lock.
fn join(
    hub: &Hub,
    ns: &Namespace,
    ch: &ChannelName,
    p: &Arc<ConnHandle>,
) -> Result<(), SubscribeError> {
    hub.subscribe(ns, ch, p, None, true, |j| {
        let r = protocol::Recovery {
            offset: j.position.as_ref().map_or(0, |p| p.offset),
            epoch: j.position.as_ref().map_or("", |p| &p.epoch),
            recovered: j.recovered,
            publications: &j.publications,
            next: j.next,
        };
        p.outbound
            .push(protocol::subscribed_reply(Some(1), ch.as_str(), &r));
    })
    .map(|_| ())
}

async fn drain(p: &ConnHandle) -> Vec<serde_json::Value> {
    let mut batch = VecDeque::new();
    match p.outbound.next_batch(&mut batch).await {
        Next::Frames { .. } => batch
            .iter()
            .map(|f| serde_json::from_str(f.as_str()).unwrap())
            .collect(),
        Next::Close(d) => vec![serde_json::json!({"close": d.code.code()})],
        Next::Timer => unreachable!("these handles never set a timer"),
    }
}

/// Publishes `data` to `ch` as `user` (accepted now).
fn publish(
    hub: &Hub,
    ns: &Namespace,
    ch: &ChannelName,
    user: Option<&str>,
    data: &RawValue,
) -> Published {
    hub.publish(
        ns,
        NewPublication {
            channel: ch,
            user,
            data,
            meta: None,
            probe: Some(std::time::Instant::now()),
        },
    )
}

fn data() -> Box<RawValue> {
    RawValue::from_string("{\"n\":1}".into()).unwrap()
}

#[tokio::test]
async fn fan_out_shares_one_encoding_and_keeps_order() {
    let hub = Hub::new(Arc::new(MemoryHistory::new()));
    let ns = ns(10, false);
    let ch = ChannelName::parse("chat:a").unwrap();
    let (a, b) = (peer(1), peer(2));
    join(&hub, &ns, &ch, &a).unwrap();
    join(&hub, &ns, &ch, &b).unwrap();
    assert_eq!(drain(&a).await[0]["type"], "subscribed");
    drain(&b).await;
    let d = data();
    for _ in 0..2 {
        let p = publish(&hub, &ns, &ch, Some("u1"), &d);
        assert_eq!(p.delivered, 2);
    }
    let got = drain(&a).await;
    assert_eq!(got[0]["offset"], 1);
    assert_eq!(got[1]["offset"], 2);
    assert_eq!(drain(&b).await.len(), 2);
}

#[tokio::test]
async fn slow_consumer_overflows_without_touching_others() {
    let hub = Hub::new(Arc::new(MemoryHistory::new()));
    let ns = ns(0, false);
    let ch = ChannelName::parse("chat:a").unwrap();
    let (slow, fast) = (peer(1), peer(2));
    join(&hub, &ns, &ch, &slow).unwrap();
    join(&hub, &ns, &ch, &fast).unwrap();
    let d = data();
    let mut overflowed = 0;
    for _ in 0..8 {
        drain(&fast).await;
        overflowed += publish(&hub, &ns, &ch, None, &d).overflowed;
    }
    assert_eq!(overflowed, 1);
    assert_eq!(drain(&slow).await[0]["close"], 4009);
}

#[tokio::test]
async fn join_and_leave_go_to_the_others() {
    let hub = Hub::new(Arc::new(MemoryHistory::new()));
    let ns = ns(0, true);
    let ch = ChannelName::parse("chat:a").unwrap();
    let (a, b) = (peer(1), peer(2));
    join(&hub, &ns, &ch, &a).unwrap();
    drain(&a).await;
    join(&hub, &ns, &ch, &b).unwrap();
    assert_eq!(drain(&a).await[0]["type"], "join");
    assert_eq!(hub.presence(&ch).0.len(), 2);
    assert!(hub.unsubscribe(&ns, &ch, &b));
    let leave = &drain(&a).await[0];
    assert_eq!(leave["type"], "leave");
    assert_eq!(leave["user"], "u2");
    assert!(matches!(
        hub.subscribe(&ns, &ch, &a, None, true, |_| {}),
        Err(SubscribeError::AlreadySubscribed(_))
    ));
}

#[tokio::test]
async fn subscribers_keep_the_hubs_copy_of_a_channels_name() {
    let (hub, ns) = (Hub::new(Arc::new(MemoryHistory::new())), ns(0, false));
    let first = ChannelName::parse("chat:room").unwrap();
    let second = ChannelName::parse("chat:room").unwrap();
    let a = hub
        .subscribe(&ns, &first, &peer(1), None, true, |_| {})
        .unwrap();
    let b = hub
        .subscribe(&ns, &second, &peer(2), None, true, |_| {})
        .unwrap();
    assert_eq!(a, second);
    assert!(
        a.shares_with(&b),
        "one allocation for the name, not one per subscriber"
    );
}

#[tokio::test]
async fn large_answers_are_cut_and_say_more() {
    let hub = Hub::new(Arc::new(MemoryHistory::new())).with_max_reply_bytes(4_096);
    let ns = ns(100, false);
    let ch = ChannelName::parse("chat:a").unwrap();
    let peers: Vec<_> = (1..=100).map(peer).collect();
    for p in &peers {
        join(&hub, &ns, &ch, p).unwrap();
    }
    let (clients, more) = hub.presence(&ch);
    assert!(more && clients.len() < 100 && !clients.is_empty());
    let d = serde_json::value::to_raw_value(&"z".repeat(1_000)).unwrap();
    for _ in 0..10 {
        publish(&hub, &ns, &ch, None, &d);
    }
    let epoch = hub.position(&ns, &ch).unwrap().epoch.to_string();
    let from = StreamPosition { offset: 0, epoch };
    let late = peer(500);
    hub.subscribe(&ns, &ch, &late, Some(&from), true, |j| {
        assert!(j.recovered);
        assert_eq!(
            j.publications.len(),
            3,
            "4 KiB holds three 1 KiB publications"
        );
        assert_eq!(j.next, Some(3));
    })
    .unwrap();
    // Without a reply to page into, every recovered publication is queued.
    let quiet = peer(501);
    hub.subscribe(&ns, &ch, &quiet, Some(&from), false, |j| {
        assert_eq!((j.publications.len(), j.next), (10, None));
    })
    .unwrap();
}

#[tokio::test]
async fn a_large_quiet_channel_defers_its_fan_out_to_the_end_of_the_request() {
    let hub = Hub::new(Arc::new(MemoryHistory::new()));
    let ns = ns(0, false);
    let ch = ChannelName::parse("chat:big").unwrap();
    let peers: Vec<_> = (1..=load::DIRECT_MAX_SUBSCRIBERS as u64 + 1)
        .map(peer)
        .collect();
    for p in &peers {
        join(&hub, &ns, &ch, p).unwrap();
        drain(p).await;
    }
    let publisher = &peers[0];
    let d = data();
    // Inside the publishing session's request every subscriber has it queued, nobody
    // is woken yet; once the request is handled, each writer is (these test handles
    // have no socket to write to directly).
    let published = crate::outbound::direct_writes(&publisher.outbound, || {
        let published = publish(&hub, &ns, &ch, Some("u1"), &d);
        assert!(peers.iter().all(|p| p.outbound.depth() == 1));
        published
    });
    assert_eq!(published.delivered, peers.len());
    for p in &peers {
        let got = tokio::time::timeout(std::time::Duration::from_secs(5), drain(p))
            .await
            .expect("a deferred writer was never woken");
        assert_eq!(got.len(), 1);
        assert_eq!(got[0]["type"], "message");
    }
}

#[tokio::test]
async fn a_read_of_several_frames_defers_a_small_channels_fan_out_to_its_end() {
    let hub = Hub::new(Arc::new(MemoryHistory::new()));
    let ns = ns(0, false);
    let ch = ChannelName::parse("chat:room").unwrap();
    let peers: Vec<_> = (1..=3).map(peer).collect();
    for p in &peers {
        join(&hub, &ns, &ch, p).unwrap();
        drain(p).await;
    }
    let publisher = &peers[0];
    let d = data();
    // A parked writer's waker counts its wake-ups.
    struct Count(std::sync::atomic::AtomicUsize);
    impl std::task::Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }
    let woken = Arc::new(Count(Default::default()));
    assert!(
        !peers[1]
            .outbound
            .park(&std::task::Waker::from(woken.clone()))
    );
    // Two publications in one read (deferring mode): queued for the others, who are
    // not woken until the read's flush; the publisher's own copy goes to its writer.
    crate::outbound::deferring(&publisher.outbound, || {
        publish(&hub, &ns, &ch, Some("u1"), &d);
        publish(&hub, &ns, &ch, Some("u1"), &d);
    });
    assert!(peers.iter().all(|p| p.outbound.depth() == 2));
    assert_eq!(woken.0.load(std::sync::atomic::Ordering::SeqCst), 0);
    crate::outbound::flush_deferred();
    assert_eq!(
        woken.0.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "woken once"
    );
    for p in &peers {
        let got = tokio::time::timeout(std::time::Duration::from_secs(5), drain(p))
            .await
            .expect("a deferred writer was never woken");
        assert_eq!(got.len(), 2);
    }
}
