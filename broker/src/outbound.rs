//! A connection's bounded outbound queue: many producers (hub, own session), one writer.
//!
//! Producers never wait: `push` is a short lock, a `VecDeque` push and, only when the
//! queue was empty, one wake-up of the writer (an `AtomicWaker`: the writer's waker sits
//! in one slot, not in a waiter list it would join and leave at every wait). The writer
//! takes the whole queue, buffer and all, in one lock ([`Outbound::next_batch`]) and
//! writes the batch with one flush; the buffer is freed once written, so an idle
//! connection holds none (one allocation per batch, not per frame). A queue that passes
//! its bound, in frames or in bytes, marks the connection a slow consumer: queued frames
//! are dropped and the writer is told to close with 4009, and nobody else waits for it.
//! The byte bound counts what waits behind the batch being written, so one connection
//! holds at most that batch plus the bound (a frame larger than the bound is still queued
//! when nothing else is, so a large reply reaches a client that reads).
//!
//! Direct writes: a frame pushed while the pushing thread is in [`direct_writes`] mode
//! (a session handling a read that brought one frame: traffic is light) goes straight
//! to the socket when the queue is empty, the writer holds no batch and the socket takes
//! it ([`DirectWrite`]): no wake-up of the connection's task, no second thread. Under
//! load the pushes queue as above, so the writer gathers many frames into one write.

use std::cell::Cell;
use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Instant;

use futures_util::task::AtomicWaker;
use parking_lot::Mutex;

use crate::protocol::{CloseCode, Disconnect, EncodedFrame};
use crate::transport::{Direct, DirectWrite};

thread_local! {
    /// Whether pushes from this thread may write directly (see [`direct_writes`]): the
    /// address of the one queue excluded (the session's own), or `None` when they may not.
    static DIRECT: Cell<Option<usize>> = const { Cell::new(None) };
}

/// Runs `f` with direct writes allowed for the pushes it makes on this thread, except to
/// `own`: the session's own queue, which its writer is about to write in one batch with
/// the replies. `f` must not await (the mode belongs to the thread, not to a task).
pub fn direct_writes<R>(own: *const Outbound, f: impl FnOnce() -> R) -> R {
    // Only its address is kept, to compare: it is never read through.
    with_direct(Some(own as usize), f)
}

/// Runs `f` with direct writes off for the pushes it makes on this thread (a busy
/// channel's fan-out, see `hub::load`).
pub fn without_direct_writes<R>(f: impl FnOnce() -> R) -> R {
    with_direct(None, f)
}

fn with_direct<R>(mode: Option<usize>, f: impl FnOnce() -> R) -> R {
    struct Restore(Option<usize>);
    impl Drop for Restore {
        fn drop(&mut self) {
            DIRECT.set(self.0);
        }
    }
    let _restore = Restore(DIRECT.replace(mode));
    f()
}

pub struct Outbound {
    state: Mutex<State>,
    /// The writer, while it waits in [`Outbound::next_batch`] or [`Outbound::aborted`]
    /// (one at a time: both are the session's).
    writer: AtomicWaker,
    limit: usize,
    limit_bytes: usize,
    /// Frames queued now (for metrics and the admin view; updated under the lock).
    depth: AtomicUsize,
    /// When the writer's timer is due ([`crate::clock`] milliseconds; `u64::MAX`: not
    /// set): the node's ticker wakes it then ([`Outbound::tick`]), so a connection keeps
    /// no timer of its own.
    due_ms: AtomicU64,
    /// The socket, for direct writes (WebSocket), and where a directly written
    /// publication's latency is recorded.
    direct: Option<(Arc<dyn DirectWrite>, prometheus::Histogram)>,
}

struct State {
    frames: VecDeque<EncodedFrame>,
    /// Bytes of `frames`.
    bytes: usize,
    /// Boxed: set once, at the end, and its room sat in every connection.
    closing: Option<Box<Disconnect>>,
    /// When the newest probed publication among `frames` was accepted (see `push_probed`).
    probe: Option<Instant>,
    /// The writer took frames and may not have written them all yet: no direct write
    /// may pass them. Cleared when it next looks and finds nothing.
    writer_holds: bool,
    /// A direct write left part of a frame unwritten: the writer must finish it.
    unfinished: bool,
    /// The ticker found the timer due; the writer gets [`Next::Timer`] next.
    timer_due: bool,
}

/// What happened to a pushed frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Push {
    Queued,
    /// The queue passed its bound: the connection is now closing with 4009.
    Overflow,
    /// The connection is already closing; the frame was dropped.
    Closed,
}

/// What the writer gets next.
#[derive(Debug)]
pub enum Next {
    /// `batch` now holds frames to write, in order; `probe` is set when one of them is a
    /// publication whose end-to-end latency should be recorded once the batch is written.
    Frames { probe: Option<Instant> },
    /// Everything queued before the close was handed out; close with this.
    Close(Disconnect),
    /// The timer set with [`Outbound::set_timer`] is due (it is cleared: set it again).
    Timer,
}

impl Outbound {
    pub fn new(limit: usize, limit_bytes: usize) -> Self {
        Self {
            state: Mutex::new(State {
                frames: VecDeque::new(),
                bytes: 0,
                closing: None,
                probe: None,
                writer_holds: false,
                unfinished: false,
                timer_due: false,
            }),
            writer: AtomicWaker::new(),
            limit,
            limit_bytes,
            depth: AtomicUsize::new(0),
            due_ms: AtomicU64::new(u64::MAX),
            direct: None,
        }
    }

    /// Lets pushes in [`direct_writes`] mode write to `socket` themselves; a publication
    /// written so records its latency in `latency`.
    pub fn with_direct(
        mut self,
        socket: Option<Arc<dyn DirectWrite>>,
        latency: &prometheus::Histogram,
    ) -> Self {
        self.direct = socket.map(|s| (s, latency.clone()));
        self
    }

    /// Queues a frame. Never blocks beyond a short uncontended lock.
    pub fn push(&self, frame: EncodedFrame) -> Push {
        self.push_inner(frame, None)
    }

    /// Queues a publication accepted at `accepted_at` and asks the writer to report when
    /// it is written (the hub probes the last subscriber of each publication).
    pub fn push_probed(&self, frame: EncodedFrame, accepted_at: Instant) -> Push {
        self.push_inner(frame, Some(accepted_at))
    }

    fn push_inner(&self, frame: EncodedFrame, probe: Option<Instant>) -> Push {
        let mut state = self.state.lock();
        if state.closing.is_some() {
            return Push::Closed;
        }
        if let Some((socket, latency)) = &self.direct
            && state.frames.is_empty()
            && !state.writer_holds
            && !state.unfinished
            && DIRECT
                .get()
                .is_some_and(|own| own != self as *const Outbound as usize)
        {
            match socket.try_write(&frame) {
                Direct::Written => {
                    drop(state);
                    if let Some(accepted_at) = probe {
                        latency.observe(accepted_at.elapsed().as_secs_f64());
                    }
                    return Push::Queued;
                }
                Direct::Begun => {
                    // The rest waits in the socket's writer; the session finishes it.
                    state.unfinished = true;
                    drop(state);
                    self.writer.wake();
                    return Push::Queued;
                }
                Direct::Not => {}
            }
        }
        let over_bytes = !state.frames.is_empty() && state.bytes + frame.len() > self.limit_bytes;
        if state.frames.len() >= self.limit || over_bytes {
            let what = if over_bytes {
                format!("{} bytes", self.limit_bytes)
            } else {
                format!("{} frames", self.limit)
            };
            state.frames = VecDeque::new();
            state.bytes = 0;
            state.closing = Some(Box::new(Disconnect::new(
                CloseCode::SlowConsumer,
                format!(
                    "slow consumer: more than {what} were waiting to be sent; read faster, then reconnect and recover"
                ),
            )));
            self.depth.store(0, Ordering::Relaxed);
            drop(state);
            self.writer.wake();
            return Push::Overflow;
        }
        let was_empty = state.frames.is_empty();
        state.bytes += frame.len();
        state.frames.push_back(frame);
        if probe.is_some() {
            state.probe = probe;
        }
        self.depth.store(state.frames.len(), Ordering::Relaxed);
        drop(state);
        if was_empty {
            self.writer.wake();
        }
        Push::Queued
    }

    /// Asks the writer to close after what is queued now has been sent. The first close wins.
    pub fn close(&self, disconnect: Disconnect) {
        let mut state = self.state.lock();
        if state.closing.is_none() {
            state.closing = Some(Box::new(disconnect));
        }
        drop(state);
        self.writer.wake();
    }

    /// True once a close was asked for (by [`Outbound::close`] or an overflow).
    pub fn is_closing(&self) -> bool {
        self.state.lock().closing.is_some()
    }

    /// Asks for [`Next::Timer`] once [`crate::clock`] reads `at_ms` (replacing the time
    /// set before).
    pub fn set_timer(&self, at_ms: u64) {
        self.due_ms.store(at_ms, Ordering::Relaxed);
    }

    /// The ticker's look at this connection: when its timer is due, it is cleared and
    /// the writer woken for [`Next::Timer`]. Returns whether it was due.
    pub fn tick(&self, now_ms: u64) -> bool {
        let due = self.due_ms.load(Ordering::Relaxed);
        // Cleared only if the writer set no other time meanwhile.
        if due > now_ms
            || self
                .due_ms
                .compare_exchange(due, u64::MAX, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            return false;
        }
        self.state.lock().timer_due = true;
        self.writer.wake();
        true
    }

    /// Whether the timer is due at `now_ms`.
    pub fn is_due(&self, now_ms: u64) -> bool {
        self.due_ms.load(Ordering::Relaxed) <= now_ms
    }

    /// Frames queued now.
    pub fn depth(&self) -> usize {
        self.depth.load(Ordering::Relaxed)
    }

    /// Waits for work. `batch` must be empty; on [`Next::Frames`] it holds the queued
    /// frames, in the queue's own buffer (the queue starts again with none).
    pub async fn next_batch(&self, batch: &mut VecDeque<EncodedFrame>) -> Next {
        self.next_batch_gathered(batch, false).await
    }

    /// [`Outbound::next_batch`]; with `gather`, once frames are there the writer first
    /// lets the scheduler run one turn, so a fan-out in progress adds its frames to the
    /// same batch (for transports where each write costs a packet: QUIC).
    pub async fn next_batch_gathered(
        &self,
        batch: &mut VecDeque<EncodedFrame>,
        gather: bool,
    ) -> Next {
        debug_assert!(batch.is_empty());
        let _waiting = Waiting(&self.writer);
        if gather {
            std::future::poll_fn(|cx| self.poll_until(cx, || self.has_work().then_some(()))).await;
            tokio::task::yield_now().await;
        }
        std::future::poll_fn(|cx| self.poll_until(cx, || self.take(batch))).await
    }

    /// Resolves once the queue overflowed (slow consumer): a write in progress should be
    /// abandoned, since the client is not reading.
    pub async fn aborted(&self) {
        let _waiting = Waiting(&self.writer);
        std::future::poll_fn(|cx| self.poll_until(cx, || self.abort_reason().map(|_| ()))).await
    }

    /// `found`'s answer once it has one. The writer's waker is registered before the
    /// second look, so a push in between is not missed (pushes wake after their lock);
    /// a [`Waiting`] guard takes it out when the wait ends or is dropped, so the
    /// session's own pushes (its replies) do not wake it.
    fn poll_until<T>(&self, cx: &mut Context<'_>, mut found: impl FnMut() -> Option<T>) -> Poll<T> {
        if let Some(t) = found() {
            return Poll::Ready(t);
        }
        self.writer.register(cx.waker());
        match found() {
            Some(t) => Poll::Ready(t),
            None => Poll::Pending,
        }
    }

    /// The queued frames, moved into `batch`, or the close once everything before it
    /// was handed out; `None` while there is neither.
    fn take(&self, batch: &mut VecDeque<EncodedFrame>) -> Option<Next> {
        let mut state = self.state.lock();
        // First, so a connection that always has frames waiting still pings and still
        // notices its token expire.
        if std::mem::take(&mut state.timer_due) {
            return Some(Next::Timer);
        }
        let unfinished = std::mem::take(&mut state.unfinished);
        state.writer_holds = unfinished || !state.frames.is_empty();
        if state.writer_holds {
            // (An empty batch when only a direct write's rest is left: writing it
            // finishes that first.)
            // The writer takes the buffer itself and the queue starts again with none, so a
            // connection with nothing to send holds none (one allocation per batch).
            *batch = std::mem::take(&mut state.frames);
            state.bytes = 0;
            self.depth.store(0, Ordering::Relaxed);
            return Some(Next::Frames {
                probe: state.probe.take(),
            });
        }
        state.closing.as_deref().cloned().map(Next::Close)
    }

    fn has_work(&self) -> bool {
        let state = self.state.lock();
        !state.frames.is_empty() || state.unfinished || state.closing.is_some() || state.timer_due
    }

    /// The slow-consumer disconnect, once the queue overflowed.
    pub fn abort_reason(&self) -> Option<Disconnect> {
        let state = self.state.lock();
        state
            .closing
            .as_deref()
            .filter(|d| d.code == CloseCode::SlowConsumer)
            .cloned()
    }
}

/// Takes the writer's waker out when a wait ends, however it ends.
struct Waiting<'a>(&'a AtomicWaker);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.take();
    }
}

#[cfg(test)]
mod tests {
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
}
