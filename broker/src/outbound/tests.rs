//! Ring 1: the queue, its wake-ups, its bounds, and direct and deferred writes.

use super::*;

fn frame(s: &str) -> EncodedFrame {
    crate::protocol::encode(&s)
}

#[tokio::test]
async fn batches_in_order() {
    let q = Outbound::new(8, 1 << 20);
    for i in 0..3 {
        assert_eq!(q.push(frame(&i.to_string())), Push::Queued);
    }
    let mut batch = VecDeque::new();
    assert!(matches!(
        q.next_batch(&mut batch).await,
        Next::Frames { .. }
    ));
    let got: Vec<_> = batch.iter().map(|f| f.as_str().to_string()).collect();
    assert_eq!(got, vec!["\"0\"", "\"1\"", "\"2\""]);
}

#[tokio::test]
async fn a_gathered_batch_takes_what_arrives_during_one_scheduler_turn() {
    let q = Outbound::new(8, 1 << 20);
    q.push(frame("a"));
    let mut batch = VecDeque::new();
    // The writer yields once it sees a frame; the second one arrives meanwhile.
    let (next, _) = tokio::join!(q.next_batch_gathered(&mut batch, true), async {
        q.push(frame("b"))
    });
    assert!(matches!(next, Next::Frames { .. }));
    assert_eq!(batch.len(), 2);
}

#[tokio::test]
async fn overflow_closes_with_4009_and_drops_the_queue() {
    let q = Outbound::new(2, 1 << 20);
    q.push(frame("a"));
    q.push(frame("b"));
    assert_eq!(q.push(frame("c")), Push::Overflow);
    assert_eq!(q.push(frame("d")), Push::Closed);
    let mut batch = VecDeque::new();
    match q.next_batch(&mut batch).await {
        Next::Close(d) => assert_eq!(d.code, CloseCode::SlowConsumer),
        other => panic!("unexpected {other:?}"),
    }
    assert!(batch.is_empty());
}

#[tokio::test]
async fn overflow_by_bytes_but_one_large_frame_still_goes() {
    let q = Outbound::new(100, 10);
    // Larger than the bound, but alone: a client that reads gets it.
    assert_eq!(q.push(frame("a large reply")), Push::Queued);
    let mut batch = VecDeque::new();
    q.next_batch(&mut batch).await;
    batch.clear();
    assert_eq!(q.push(frame("abc")), Push::Queued);
    assert_eq!(q.push(frame("defg")), Push::Overflow);
    match q.next_batch(&mut batch).await {
        Next::Close(d) => {
            assert_eq!(d.code, CloseCode::SlowConsumer);
            assert!(d.reason.contains("10 bytes"), "{}", d.reason);
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[tokio::test]
async fn close_flushes_what_was_queued_first() {
    let q = Outbound::new(8, 1 << 20);
    q.push(frame("a"));
    q.close(Disconnect::new(CloseCode::Restart, "bye"));
    let mut batch = VecDeque::new();
    assert!(matches!(
        q.next_batch(&mut batch).await,
        Next::Frames { .. }
    ));
    batch.clear();
    assert!(matches!(q.next_batch(&mut batch).await, Next::Close(_)));
}

/// A socket that takes what it is told to, and notes what it took.
struct FakeSocket {
    answer: parking_lot::Mutex<Direct>,
    took: parking_lot::Mutex<Vec<String>>,
}

impl DirectWrite for FakeSocket {
    fn try_write(&self, frame: &EncodedFrame) -> Direct {
        let answer = *self.answer.lock();
        if answer != Direct::Not {
            self.took.lock().push(frame.as_str().to_string());
        }
        answer
    }

    /// One write of every frame (noted joined by `+`), or of part of the first.
    fn try_write_queued(&self, frames: &mut VecDeque<EncodedFrame>) -> Direct {
        let answer = *self.answer.lock();
        let took: Vec<String> = match answer {
            Direct::Written => frames.drain(..).map(|f| f.as_str().to_string()).collect(),
            Direct::Begun => frames
                .pop_front()
                .map(|f| f.as_str().to_string())
                .into_iter()
                .collect(),
            Direct::Not => return Direct::Not,
        };
        self.took.lock().push(took.join("+"));
        answer
    }
}

fn direct_queue(answer: Direct) -> (Outbound, Arc<FakeSocket>) {
    let socket = Arc::new(FakeSocket {
        answer: parking_lot::Mutex::new(answer),
        took: Default::default(),
    });
    let latency =
        prometheus::Histogram::with_opts(prometheus::HistogramOpts::new("t", "t")).unwrap();
    let q = Outbound::new(8, 1 << 20).with_direct(Some(socket.clone()), &latency);
    (q, socket)
}

#[tokio::test]
async fn only_pushes_in_direct_mode_write_directly() {
    let (q, socket) = direct_queue(Direct::Written);
    assert_eq!(q.push(frame("queued")), Push::Queued);
    assert_eq!(q.depth(), 1);
    let mut batch = VecDeque::new();
    q.next_batch(&mut batch).await;
    batch.clear();
    // The writer looks again and finds nothing: it holds no batch any more.
    assert!(q.take(&mut batch).is_none());
    let other = Outbound::new(8, 1 << 20);
    assert_eq!(
        direct_writes(&other, || q.push(frame("direct"))),
        Push::Queued
    );
    assert_eq!(q.depth(), 0, "written directly, not queued");
    assert_eq!(*socket.took.lock(), ["\"direct\""]);
    // A busy channel's fan-out inside a session's direct mode queues.
    direct_writes(&other, || without_direct_writes(|| q.push(frame("busy"))));
    assert_eq!(q.depth(), 1);
    batch.clear();
    q.next_batch(&mut batch).await;
    batch.clear();
    assert!(q.take(&mut batch).is_none());
    // So does a push to the session's own queue: its writer writes it with the replies.
    direct_writes(&q, || q.push(frame("own")));
    assert_eq!(q.depth(), 1);
}

#[tokio::test]
async fn a_direct_write_never_passes_queued_frames_or_a_batch_being_written() {
    let (q, socket) = direct_queue(Direct::Written);
    let other = Outbound::new(8, 1 << 20);
    q.push(frame("1"));
    // Frames are queued: the next one queues behind them.
    direct_writes(&other, || q.push(frame("2")));
    let mut batch = VecDeque::new();
    q.next_batch(&mut batch).await;
    assert_eq!(batch.len(), 2);
    // The writer holds "1" and "2", maybe not written yet: "3" queues too.
    direct_writes(&other, || q.push(frame("3")));
    assert!(socket.took.lock().is_empty());
    batch.clear();
    q.next_batch(&mut batch).await;
    assert_eq!(batch.pop_front().unwrap().as_str(), "\"3\"");
    assert!(q.take(&mut batch).is_none());
    direct_writes(&other, || q.push(frame("4")));
    assert_eq!(*socket.took.lock(), ["\"4\""]);
}

#[tokio::test]
async fn a_direct_write_begun_wakes_the_writer_to_finish_it() {
    let (q, socket) = direct_queue(Direct::Begun);
    let q = Arc::new(q);
    let writer = {
        let q = q.clone();
        tokio::spawn(async move {
            let mut batch = VecDeque::new();
            let next = q.next_batch(&mut batch).await;
            (matches!(next, Next::Frames { .. }), batch.len())
        })
    };
    tokio::task::yield_now().await;
    let other = Outbound::new(8, 1 << 20);
    direct_writes(&other, || q.push(frame("half")));
    // Nothing more goes directly until the writer finished it.
    *socket.answer.lock() = Direct::Written;
    direct_writes(&other, || q.push(frame("next")));
    assert_eq!(*socket.took.lock(), ["\"half\""]);
    let (frames, queued) = tokio::time::timeout(std::time::Duration::from_secs(5), writer)
        .await
        .unwrap()
        .unwrap();
    assert!(frames);
    assert_eq!(
        queued, 1,
        "the frame pushed after the partial one was queued"
    );
}

#[tokio::test]
async fn the_writer_takes_the_queues_buffer_so_an_idle_queue_holds_none() {
    let q = Outbound::new(8, 1 << 20);
    q.push(frame("a"));
    q.push(frame("b"));
    let mut batch = VecDeque::new();
    q.next_batch(&mut batch).await;
    assert_eq!(batch.len(), 2);
    assert_eq!(q.state.lock().frames.capacity(), 0);
}

#[tokio::test]
async fn wakes_a_waiting_writer() {
    let q = std::sync::Arc::new(Outbound::new(8, 1 << 20));
    let q2 = q.clone();
    let waiter = tokio::spawn(async move {
        let mut batch = VecDeque::new();
        q2.next_batch(&mut batch).await;
        batch.len()
    });
    tokio::task::yield_now().await;
    q.push(frame("x"));
    let n = tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(n, 1);
}

#[tokio::test]
async fn the_timer_wakes_the_writer_once_due_even_with_frames_waiting() {
    let q = std::sync::Arc::new(Outbound::new(8, 1 << 20));
    assert!(!q.tick(1_000), "no timer set: never due");
    q.set_timer(500);
    assert!(!q.tick(499), "not due yet");
    let q2 = q.clone();
    let waiter = tokio::spawn(async move {
        let mut batch = VecDeque::new();
        matches!(q2.next_batch(&mut batch).await, Next::Timer)
    });
    tokio::task::yield_now().await;
    q.push(frame("x"));
    q.push(frame("y"));
    // The writer may have taken the frames already; the timer still comes next.
    assert!(q.tick(500));
    assert!(!q.tick(501), "a tick clears the timer: it fires once");
    let mut batch = VecDeque::new();
    let mut timer = tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
        .await
        .unwrap()
        .unwrap();
    while !timer {
        timer = matches!(q.next_batch(&mut batch).await, Next::Timer);
    }
    assert!(!q.is_due(u64::MAX - 1), "cleared until set again");
}

/// A queue's holder for deferred pushes (the hub's `ConnHandle` in the broker).
struct Holder(Outbound);

impl HasOutbound for Holder {
    fn outbound(&self) -> &Outbound {
        &self.0
    }
}

fn direct_holder(answer: Direct) -> (Arc<Holder>, Arc<FakeSocket>) {
    let (q, socket) = direct_queue(answer);
    (Arc::new(Holder(q)), socket)
}

fn push_deferred(h: &Arc<Holder>, text: &str) -> Push {
    let holder = || Arc::clone(h) as Arc<dyn HasOutbound>;
    h.0.push_deferred(frame(text), None, holder)
}

/// Whether the writer was woken: a registered waker counts its wake-ups.
fn waiting_writer(q: &Outbound) -> Arc<std::sync::atomic::AtomicUsize> {
    struct Count(Arc<std::sync::atomic::AtomicUsize>);
    impl std::task::Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }
    let woken = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let waker = std::task::Waker::from(Arc::new(Count(woken.clone())));
    q.writer.register(&waker);
    woken
}

#[test]
fn a_deferred_fan_out_is_written_in_order_when_the_request_is_handled_and_wakes_nobody() {
    let (h, socket) = direct_holder(Direct::Written);
    let woken = waiting_writer(&h.0);
    let own = Outbound::new(8, 1 << 20);
    direct_writes(&own, || {
        assert_eq!(push_deferred(&h, "a"), Push::Queued);
        assert_eq!(push_deferred(&h, "b"), Push::Queued);
        // Under the channel's lock nothing is written and nobody is woken: the first
        // frame is set aside (no queue allocated), the second queues behind it.
        assert_eq!(h.0.depth(), 1);
        assert!(socket.took.lock().is_empty());
        // The writer takes nothing ahead of the frame set aside.
        assert!(h.0.take(&mut VecDeque::new()).is_none());
        assert!(!h.0.has_work(), "a parked writer stays parked");
    });
    assert_eq!(*socket.took.lock(), ["\"a\"+\"b\""], "one write, in order");
    assert_eq!(h.0.depth(), 0);
    assert_eq!(woken.load(Ordering::SeqCst), 0, "the writer slept through");
    // One frame alone is written as it is.
    direct_writes(&own, || push_deferred(&h, "c"));
    assert_eq!(socket.took.lock().last().unwrap(), "\"c\"");
    assert!(h.0.state.lock().frames.capacity() == 0, "no queue kept");
}

#[test]
fn deferring_mode_defers_without_direct_writes_and_writes_once_at_the_flush() {
    let (h, socket) = direct_holder(Direct::Written);
    let (small, small_socket) = direct_queue(Direct::Written);
    let own = Outbound::new(8, 1 << 20);
    // A read that brought several frames: two publications to a large channel, one to a
    // small one.
    deferring(&own, || {
        push_deferred(&h, "1");
        small.push(frame("s"));
    });
    deferring(&own, || push_deferred(&h, "2"));
    assert!(
        socket.took.lock().is_empty(),
        "nothing written before the flush"
    );
    assert!(small_socket.took.lock().is_empty(), "no direct write");
    assert_eq!(small.depth(), 1, "queued for its writer, which gathers");
    flush_deferred();
    assert_eq!(*socket.took.lock(), ["\"1\"+\"2\""]);
    assert_eq!(h.0.depth(), 0);
}

#[test]
fn a_frame_set_aside_goes_before_what_another_thread_pushes_meanwhile() {
    let (h, socket) = direct_holder(Direct::Written);
    let woken = waiting_writer(&h.0);
    let own = Outbound::new(8, 1 << 20);
    deferring(&own, || push_deferred(&h, "first"));
    // Another publishing thread, in direct mode: it must not write past "first".
    let h2 = h.clone();
    std::thread::spawn(move || {
        let other = Outbound::new(8, 1 << 20);
        direct_writes(&other, || h2.0.push(frame("second")));
        direct_writes(&other, || push_deferred(&h2, "third"));
    })
    .join()
    .unwrap();
    assert!(socket.took.lock().is_empty());
    assert_eq!(h.0.depth(), 2);
    assert_eq!(
        woken.load(Ordering::SeqCst),
        0,
        "the flush wakes if need be"
    );
    flush_deferred();
    assert_eq!(*socket.took.lock(), ["\"first\"+\"second\"+\"third\""]);
    assert_eq!(woken.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn a_queue_cut_off_while_a_frame_is_set_aside_closes_and_drops_it() {
    let (h, socket) = direct_holder(Direct::Written);
    let own = Outbound::new(8, 1 << 20);
    deferring(&own, || push_deferred(&h, "aside"));
    // The writer still gets its timer.
    h.0.set_timer(10);
    assert!(h.0.tick(10));
    assert!(matches!(h.0.take(&mut VecDeque::new()), Some(Next::Timer)));
    // More than its 8 frames queue behind: a slow consumer.
    let overflowed = (0..9)
        .map(|i| h.0.push(frame(&i.to_string())))
        .filter(|p| *p == Push::Overflow)
        .count();
    assert_eq!(overflowed, 1);
    flush_deferred();
    assert!(
        socket.took.lock().is_empty(),
        "nothing goes to a slow consumer"
    );
    let mut batch = VecDeque::new();
    assert!(matches!(h.0.next_batch(&mut batch).await, Next::Close(_)));
}

#[tokio::test]
async fn a_close_waits_for_the_frame_set_aside() {
    let (h, socket) = direct_holder(Direct::Written);
    let own = Outbound::new(8, 1 << 20);
    deferring(&own, || push_deferred(&h, "last"));
    h.0.close(Disconnect::new(CloseCode::Normal, "bye"));
    assert!(
        h.0.take(&mut VecDeque::new()).is_none(),
        "not before the frame"
    );
    flush_deferred();
    assert!(
        socket.took.lock().is_empty(),
        "a closing queue is left to its writer"
    );
    let mut batch = VecDeque::new();
    assert!(matches!(
        h.0.next_batch(&mut batch).await,
        Next::Frames { .. }
    ));
    assert_eq!(batch.pop_front().unwrap().as_str(), "\"last\"");
    assert!(matches!(h.0.next_batch(&mut batch).await, Next::Close(_)));
}

#[test]
fn what_the_socket_does_not_take_is_left_to_the_writer() {
    // Full socket: both frames stay queued, in order, and the writer is woken.
    let (h, socket) = direct_holder(Direct::Not);
    let woken = waiting_writer(&h.0);
    let own = Outbound::new(8, 1 << 20);
    direct_writes(&own, || {
        push_deferred(&h, "a");
        push_deferred(&h, "b");
    });
    assert!(socket.took.lock().is_empty());
    assert_eq!(h.0.depth(), 2);
    assert_eq!(woken.load(Ordering::SeqCst), 1);
    // Part of the first frame went: the writer must finish it, then send the second.
    let (h, socket) = direct_holder(Direct::Begun);
    let woken = waiting_writer(&h.0);
    direct_writes(&own, || {
        push_deferred(&h, "a");
        push_deferred(&h, "b");
    });
    assert_eq!(*socket.took.lock(), ["\"a\""]);
    assert_eq!(h.0.depth(), 1);
    assert!(h.0.state.lock().unfinished);
    assert_eq!(woken.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_deferred_flush_never_passes_a_batch_the_writer_holds() {
    let (h, socket) = direct_holder(Direct::Written);
    h.0.push(frame("first"));
    let mut batch = VecDeque::new();
    h.0.next_batch(&mut batch).await;
    // The writer holds "first", not written yet: "second" must wait for it.
    let woken = waiting_writer(&h.0);
    let own = Outbound::new(8, 1 << 20);
    direct_writes(&own, || push_deferred(&h, "second"));
    assert!(socket.took.lock().is_empty());
    assert_eq!(h.0.depth(), 1);
    assert_eq!(woken.load(Ordering::SeqCst), 1);
}

/// A queue listed for its writer (it held a batch) and then given a frame to set aside
/// in the same read: the listed flush must not write what queued behind that frame.
#[tokio::test]
async fn a_queue_listed_before_a_frame_was_set_aside_waits_for_that_frame() {
    let (h, socket) = direct_holder(Direct::Written);
    h.0.push(frame("0"));
    let mut batch = VecDeque::new();
    h.0.next_batch(&mut batch).await;
    let own = Outbound::new(8, 1 << 20);
    deferring(&own, || {
        // The writer holds "0": "1" queues and the queue is listed without a frame.
        push_deferred(&h, "1");
        // The writer writes both batches and finds nothing more.
        batch.clear();
        assert!(matches!(h.0.take(&mut batch), Some(Next::Frames { .. })));
        batch.clear();
        assert!(h.0.take(&mut batch).is_none());
        // Now the queue is empty and idle: "2" is set aside, "3" queues behind it.
        push_deferred(&h, "2");
        push_deferred(&h, "3");
    });
    flush_deferred();
    assert_eq!(*socket.took.lock(), ["\"2\"+\"3\""]);
}

#[test]
fn a_panicking_request_still_flushes_what_it_deferred() {
    let (h, socket) = direct_holder(Direct::Written);
    let own = Outbound::new(8, 1 << 20);
    let h2 = h.clone();
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        direct_writes(&own, || {
            push_deferred(&h2, "a");
            panic!("a handler failed");
        })
    }));
    assert!(r.is_err());
    assert_eq!(*socket.took.lock(), ["\"a\""]);
}

/// A holder whose queue cannot be reached: the flush panics on it.
struct Unreachable;

impl HasOutbound for Unreachable {
    fn outbound(&self) -> &Outbound {
        panic!("a flush that fails on one queue");
    }
}

#[test]
fn a_flush_that_panics_on_one_queue_still_hands_the_others_to_their_writers() {
    let (h, socket) = direct_holder(Direct::Written);
    let woken = waiting_writer(&h.0);
    let own = Outbound::new(8, 1 << 20);
    let broken = Arc::new(Unreachable);
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        deferring(&own, || {
            super::mode::defer(broken.clone(), Some(frame("lost")));
            push_deferred(&h, "first");
            h.0.push(frame("second"));
        });
        flush_deferred();
    }));
    assert!(r.is_err(), "the flush at the end of the read panicked");
    assert!(socket.took.lock().is_empty(), "not written by the flush");
    assert_eq!(woken.load(Ordering::SeqCst), 1, "its writer was woken");
    let mut batch = VecDeque::new();
    assert!(
        h.0.take(&mut batch).is_some(),
        "the writer finds the frames"
    );
    let texts: Vec<&str> = batch.iter().map(|f| f.as_str()).collect();
    assert_eq!(texts, ["\"first\"", "\"second\""], "in order");
}
