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
//!
//! A large channel's fan-out in direct mode is deferred instead ([`Outbound::push_deferred`]),
//! and so is any quiet channel's while a session handles a read that brought several
//! frames ([`deferring`] mode; [`deferral`] says which): under the channel's lock each
//! frame is only set aside (in the thread's list, when the queue is empty: no allocation,
//! no wake-up) or queued behind one, and once the pushing session's request
//! ([`direct_writes`]) or read ([`flush_deferred`]) is handled, no lock held any more,
//! the thread writes each such queue to its socket itself, in order and in as few writes
//! as it can (the read's frames in one per subscriber), waking the writer only for what
//! the socket did not take.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use futures_util::task::AtomicWaker;
use parking_lot::Mutex;

use crate::clamp_u32;
use crate::protocol::{CloseCode, Disconnect, EncodedFrame};
use crate::transport::{Direct, DirectWrite};

mod mode;
pub use mode::{
    DirectMode, FlushGuard, HasOutbound, deferral, deferring, direct_writes, flush_deferred,
    without_direct_writes,
};

pub struct Outbound {
    state: Mutex<State>,
    /// The writer, while it waits in [`Outbound::next_batch`] or [`Outbound::aborted`]
    /// (one at a time: both are the session's).
    writer: AtomicWaker,
    /// The bounds, as `u32` (this sits in every connection; the config's bounds fit).
    limit: u32,
    limit_bytes: u32,
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
    bytes: u32,
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
    /// A frame for this queue was set aside on a thread's deferred list, ahead of
    /// `frames` ([`Outbound::push_deferred`]): the writer takes nothing (but its timer)
    /// until that thread's flush, which writes it first and wakes the writer if need be.
    deferred: bool,
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

/// Whether a push must wake the writer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wake {
    No,
    /// The frame is the first in the queue.
    First,
    /// The queue passed its bound and is closing.
    Closing,
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
                deferred: false,
            }),
            writer: AtomicWaker::new(),
            limit: clamp_u32(limit),
            limit_bytes: clamp_u32(limit_bytes),
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

    /// Queues a frame of a fan-out the pushing thread may defer ([`deferral`] says
    /// when), without waking the writer: when the queue is empty,
    /// the frame is set aside with `holder` (this queue's owner) on the thread's list;
    /// when the thread flushes ([`flush_deferred`]) it writes the frame and whatever
    /// queued behind it to the socket itself, or wakes the writer.
    pub fn push_deferred(
        &self,
        frame: EncodedFrame,
        probe: Option<Instant>,
        holder: impl FnOnce() -> Arc<dyn HasOutbound>,
    ) -> Push {
        let mut state = self.state.lock();
        if state.closing.is_some() {
            return Push::Closed;
        }
        if self.direct.is_some()
            && !state.deferred
            && state.frames.is_empty()
            && !state.writer_holds
            && !state.unfinished
        {
            state.deferred = true;
            if probe.is_some() {
                state.probe = probe;
            }
            drop(state);
            mode::defer(holder(), Some(frame));
            return Push::Queued;
        }
        // Behind a frame set aside (by this thread or another), or for a writer at work.
        let (pushed, wake) = self.queue(&mut state, frame, probe);
        drop(state);
        match wake {
            Wake::No => {}
            Wake::First => mode::defer(holder(), None),
            Wake::Closing => self.writer.wake(),
        }
        pushed
    }

    /// Writes what is queued to the socket now, as far as it takes it, from the calling
    /// thread (a session just past its handshake, which parks without a task when its
    /// `connected` went out at once); the writer is woken for anything left.
    pub fn write_now(&self) {
        self.flush_or_wake(None);
    }

    /// A deferred queue's flush: `first` (the frame set aside, if any), then what is
    /// queued, as far as the socket takes it now, in order and in as few writes as it
    /// can; the writer is woken for anything left (or when it holds a batch itself).
    fn flush_or_wake(&self, first: Option<EncodedFrame>) {
        let mut state = self.state.lock();
        if let Some(frame) = first {
            state.deferred = false;
            // The common case, one frame for an idle connection: written without a queue.
            if let Some((socket, latency)) = &self.direct
                && state.frames.is_empty()
                && state.closing.is_none()
            {
                match socket.try_write(&frame) {
                    Direct::Written => {
                        let probe = state.probe.take();
                        drop(state);
                        observe_written(latency, probe);
                        return;
                    }
                    Direct::Begun => {
                        state.unfinished = true;
                        drop(state);
                        self.writer.wake();
                        return;
                    }
                    Direct::Not => {}
                }
            }
            if !self.put_back(&mut state, frame) {
                drop(state);
                self.writer.wake();
                return;
            }
        } else if state.deferred {
            // A frame was set aside since this queue was listed: nothing may pass it,
            // and the thread holding it flushes the queue (and wakes the writer).
            return;
        }
        if state.frames.is_empty() && !state.unfinished {
            // The writer took them meanwhile (or the queue was closed and emptied).
            if state.closing.is_some() {
                drop(state);
                self.writer.wake();
            }
            return;
        }
        if let Some((socket, latency)) = &self.direct
            && !state.writer_holds
            && !state.unfinished
            && state.closing.is_none()
        {
            if socket.try_write_queued(&mut state.frames) == Direct::Begun {
                state.unfinished = true;
            }
            state.bytes = state
                .frames
                .iter()
                .fold(0, |sum, f| sum.saturating_add(clamp_u32(f.len())));
            self.depth.store(state.frames.len(), Ordering::Relaxed);
            if state.frames.is_empty() && !state.unfinished {
                // Everything went: no buffer kept, and the probed publication's
                // latency is recorded here.
                state.frames = VecDeque::new();
                let probe = state.probe.take();
                drop(state);
                observe_written(latency, probe);
                return;
            }
        }
        drop(state);
        self.writer.wake();
    }

    /// A deferred queue that the thread's flush did not reach (it panicked on an earlier
    /// one): the frame set aside goes to the front of the queue, and the writer is woken
    /// for it and what queued behind it, so the connection is not left stalled.
    fn release_deferred(&self, first: Option<EncodedFrame>) {
        let mut state = self.state.lock();
        if let Some(frame) = first {
            state.deferred = false;
            self.put_back(&mut state, frame);
        }
        drop(state);
        self.writer.wake();
    }

    /// Puts a frame that was set aside back at the front of the queue; `false` (the
    /// frame dropped) once the queue was cut off meanwhile, which drops what was queued.
    fn put_back(&self, state: &mut State, frame: EncodedFrame) -> bool {
        if state.closing.as_deref().map(|d| d.code) == Some(CloseCode::SlowConsumer) {
            return false;
        }
        state.bytes = state.bytes.saturating_add(clamp_u32(frame.len()));
        state.frames.push_front(frame);
        self.depth.store(state.frames.len(), Ordering::Relaxed);
        true
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
            && !state.deferred
            && mode::may_write_directly(self)
        {
            match socket.try_write(&frame) {
                Direct::Written => {
                    drop(state);
                    observe_written(latency, probe);
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
        let (pushed, wake) = self.queue(&mut state, frame, probe);
        drop(state);
        if wake != Wake::No {
            self.writer.wake();
        }
        pushed
    }

    /// Queues `frame`, or closes the queue past its bound; says whether the writer must
    /// be woken (once the lock is let go): for the close, or for a first frame.
    #[inline]
    fn queue(
        &self,
        state: &mut State,
        frame: EncodedFrame,
        probe: Option<Instant>,
    ) -> (Push, Wake) {
        let over_bytes = !state.frames.is_empty()
            && state.bytes as usize + frame.len() > self.limit_bytes as usize;
        if state.frames.len() >= self.limit as usize || over_bytes {
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
            return (Push::Overflow, Wake::Closing);
        }
        // Behind a frame set aside, the flushing thread wakes the writer if need be.
        let was_empty = state.frames.is_empty() && !state.deferred;
        // (Within `limit_bytes`, a u32, plus one frame: frames are far smaller.)
        state.bytes = state.bytes.saturating_add(clamp_u32(frame.len()));
        state.frames.push_back(frame);
        if probe.is_some() {
            state.probe = probe;
        }
        self.depth.store(state.frames.len(), Ordering::Relaxed);
        let wake = if was_empty { Wake::First } else { Wake::No };
        (Push::Queued, wake)
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
        if state.deferred {
            // Nothing may pass the frame set aside; its flush wakes the writer.
            return None;
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

    /// For a writer that parks (its session gives its task up while idle): `waker` is
    /// woken by the next push, close or timer. Says whether there is work already (then
    /// it must not park). Registered before the look, so a push in between is not missed.
    pub fn park(&self, waker: &Waker) -> bool {
        self.writer.register(waker);
        self.has_work()
    }

    fn has_work(&self) -> bool {
        let state = self.state.lock();
        state.timer_due
            || (!state.deferred
                && (!state.frames.is_empty() || state.unfinished || state.closing.is_some()))
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

/// A directly written publication's end-to-end latency, when it was the probed one.
fn observe_written(latency: &prometheus::Histogram, probe: Option<Instant>) {
    if let Some(accepted_at) = probe {
        latency.observe(accepted_at.elapsed().as_secs_f64());
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
mod tests;
