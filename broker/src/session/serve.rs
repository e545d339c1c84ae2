//! A live session's loop: one `select!` over the outbound queue (written in batches, one
//! flush per wake-up) and inbound frames. Shutdown and the session's timer (keepalive and
//! token expiry) reach it through its queue too: `Node::begin_shutdown` closes every
//! registered connection with 1012, and the node's ticker ([`super::tick`]) wakes a
//! session whose deadline passed, so a connection keeps no timer of its own and a
//! wake-up takes no lock shared with others.

use std::collections::VecDeque;
use std::future::Future;
use std::task::Poll;

use futures_util::FutureExt;

use super::park::{BUSY_WITHIN_MS, STAY_AWAKE_MS, Served};
use super::{Exit, Session};
use crate::outbound::Next;
use crate::protocol::{CloseCode, Disconnect, EncodedFrame};
use crate::transport::Transport;

/// Frames already read that a session handles after the one it woke for, before it
/// writes the answers (bounded, so one busy client cannot hold its task forever).
const READ_AHEAD: u32 = 16;

/// What woke a session's loop.
enum Woke {
    Queue(Next),
    Inbound(crate::transport::Inbound),
    /// Nothing: the session may park.
    Idle,
}

/// What the session's timer asks for.
enum Timer {
    Idle,
    Ping,
    End(Exit),
}

impl Session {
    /// Serves requests, writes queued frames and keeps the connection alive until it ends,
    /// or until it has nothing to do and may park (then it is called again once woken).
    pub(super) async fn serve<T: Transport>(&mut self, transport: &mut T) -> Served {
        let mut batch = VecDeque::new();
        let gather = transport.gathers();
        let parks = transport.parks();
        self.set_timer();
        // Set when the session decided to close (too many violations): what is queued,
        // the last answer included, is written first; nothing more is read.
        let mut closing = false;
        loop {
            // What woke the session is handled after the `select!`, once its futures are
            // gone: a write or a ping then does not keep room beside them in every
            // connection's task.
            let may_park = parks && !closing && !self.busy;
            let woke = tokio::select! {
                biased;
                next = self.handle.outbound.next_batch_gathered(&mut batch, gather) => Woke::Queue(next),
                inbound = transport.recv(), if !closing => Woke::Inbound(inbound),
                // Polled last: ready only when neither of the others is.
                () = std::future::ready(()), if may_park => Woke::Idle,
            };
            match woke {
                Woke::Queue(Next::Frames { probe }) => {
                    let written = self.write_batch(transport, &mut batch).await;
                    if let Err(exit) = self.after_write(written, &mut batch, probe) {
                        return Served::Exit(exit);
                    }
                }
                Woke::Idle => return Served::Park,
                Woke::Queue(Next::Close(d)) => return Served::Exit(Exit::Disconnect(d)),
                Woke::Inbound(inbound) => {
                    self.awaiting_pong_since_ms = 0;
                    // Then the frames the same read brought, before the next write: their
                    // answers leave in one batch. A read that brought one frame says
                    // traffic is light: what it publishes is written directly to idle
                    // subscribers' sockets (see `outbound`), no task woken for each. A
                    // large channel's fan-out is deferred either way, and so is every
                    // quiet channel's when the read brought several frames: written once
                    // the read is handled, several publications in one write each.
                    let flush = crate::outbound::FlushGuard;
                    let mut next = Some(inbound);
                    let mut more = READ_AHEAD;
                    let mut first = true;
                    while let Some(inbound) = next.take() {
                        if more > 0 {
                            more -= 1;
                            next = transport.recv().now_or_never();
                        }
                        let alone = std::mem::take(&mut first) && next.is_none();
                        let handled = match self.on_inbound_maybe_direct(inbound, alone) {
                            // A plugin chain runs first, on a plugin thread; boxed, so only
                            // such requests pay for its state.
                            Ok(Some(deferred)) => {
                                // (The deferred list is the thread's: flushed before any wait.)
                                crate::outbound::flush_deferred();
                                Box::pin(self.finish_deferred(deferred)).await
                            }
                            other => other.map(|_| ()),
                        };
                        match handled {
                            Ok(()) => {}
                            Err(Exit::Disconnect(d)) => {
                                closing = true;
                                self.handle.outbound.close(d);
                                break;
                            }
                            Err(exit) => return Served::Exit(exit),
                        }
                    }
                    drop(flush);
                }
                Woke::Queue(Next::Timer) => {
                    match self.on_timer() {
                        Timer::Idle => {}
                        Timer::Ping => {
                            if let Err(exit) = self.ping(transport).await {
                                return Served::Exit(exit);
                            }
                        }
                        Timer::End(exit) => return Served::Exit(exit),
                    }
                    self.set_timer();
                }
            }
        }
    }

    /// Writes a batch. Most writes finish at once (the socket has room); only a write that
    /// has to wait arms the stall timeout and watches for a slow-consumer abort, in a boxed
    /// future, so neither costs anything on the fast path nor in every connection's task.
    async fn write_batch<T: Transport>(
        &self,
        transport: &mut T,
        batch: &mut VecDeque<EncodedFrame>,
    ) -> Result<(), Exit> {
        let mut send = std::pin::pin!(transport.send(batch));
        let first = std::future::poll_fn(|cx| Poll::Ready(send.as_mut().poll(cx))).await;
        let result = match first {
            Poll::Ready(result) => result,
            Poll::Pending => {
                let stuck_limit =
                    self.node.settings.ping_interval + self.node.settings.pong_timeout;
                let outbound = &self.handle.outbound;
                let waited = Box::pin(async move {
                    tokio::select! {
                        r = tokio::time::timeout(stuck_limit, send) => r.map_err(|_| Exit::Gone("write stalled")),
                        _ = outbound.aborted() => {
                            let reason = outbound.abort_reason();
                            Err(Exit::Disconnect(reason.expect("aborted() resolves once there is a reason")))
                        }
                    }
                });
                waited.await?
            }
        };
        result.map_err(|_| Exit::Gone("write failed"))
    }

    /// [`Session::on_inbound`]; with direct writes allowed when the frame came `alone`, and
    /// fan-outs deferred otherwise (a large channel's either way; see `outbound`).
    fn on_inbound_maybe_direct(
        &mut self,
        inbound: crate::transport::Inbound,
        alone: bool,
    ) -> Result<Option<super::requests::Deferred>, Exit> {
        let own: *const crate::outbound::Outbound = &self.handle.outbound;
        if alone {
            crate::outbound::direct_writes(own, || self.on_inbound(inbound))
        } else {
            crate::outbound::deferring(own, || self.on_inbound(inbound))
        }
    }

    /// Asks the node's ticker to wake this session at its next deadline: a ping, a pong
    /// overdue, the token's expiry, or the end of a busy session's stay awake.
    pub(super) fn set_timer(&self) {
        let mut at = self.next_ping_ms.min(self.expires_at_ms);
        if let Some(pong_due) = self.pong_due_ms() {
            at = at.min(pong_due);
        }
        if self.busy {
            at = at.min(self.last_resumed_ms + STAY_AWAKE_MS);
        }
        self.handle.outbound.set_timer(at);
    }

    /// When the outstanding ping's pong is overdue, if one is outstanding.
    fn pong_due_ms(&self) -> Option<u64> {
        (self.awaiting_pong_since_ms != 0).then(|| {
            self.awaiting_pong_since_ms + crate::clock::duration_ms(self.node.settings.pong_timeout)
        })
    }

    /// A parked session was woken: two wake-ups in a short while make it busy, and it
    /// keeps its task for a while (see `park`).
    pub(super) fn resumed(&mut self) {
        // (At least 1: 0 says "never".)
        let now = crate::clock::now_ms().max(1);
        if self.last_resumed_ms != 0 && now - self.last_resumed_ms < BUSY_WITHIN_MS {
            self.busy = true;
            self.set_timer();
        }
        self.last_resumed_ms = now;
    }

    /// After a batch was written: records the publish latency probe and gives a burst's
    /// buffer back. (Synchronous on purpose: an async helper here would sit in every
    /// connection's task state.)
    fn after_write(
        &self,
        written: Result<(), Exit>,
        batch: &mut VecDeque<EncodedFrame>,
        probe: Option<std::time::Instant>,
    ) -> Result<(), Exit> {
        if let (Ok(()), Some(accepted_at)) = (&written, probe) {
            self.node
                .metrics
                .publish_latency
                .observe(accepted_at.elapsed().as_secs_f64());
        }
        // The buffer goes with the batch: a connection with nothing to send holds none
        // (see `Outbound::next_batch`).
        *batch = VecDeque::new();
        written
    }

    /// The session's one timer fired: token expiry, keepalive timeout, or time to ping.
    fn on_timer(&mut self) -> Timer {
        let now = crate::clock::now_ms();
        if self.busy && now >= self.last_resumed_ms + STAY_AWAKE_MS {
            // May park again (`set_timer` follows).
            self.busy = false;
        }
        if now >= self.expires_at_ms {
            self.handle.outbound.close(Disconnect::new(
                CloseCode::TokenExpired,
                "the token expired; send refresh with a new token before exp, or reconnect with one",
            ));
            self.expires_at_ms = u64::MAX;
        }
        if self.pong_due_ms().is_some_and(|due| now >= due) {
            return Timer::End(Exit::Gone("keepalive timeout"));
        }
        if now >= self.next_ping_ms {
            return Timer::Ping;
        }
        Timer::Idle
    }

    /// Sends a keepalive ping. A client whose socket takes not even a ping is not
    /// reading. The wait is boxed: it happens once per ping interval, and inline it would
    /// sit in every connection's task state.
    async fn ping<T: Transport>(&mut self, transport: &mut T) -> Result<(), Exit> {
        let now = crate::clock::now_ms().max(1);
        let pong_timeout = self.node.settings.pong_timeout;
        match Box::pin(tokio::time::timeout(pong_timeout, transport.ping())).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return Err(Exit::Gone("write failed")),
            Err(_) => return Err(Exit::Gone("keepalive timeout")),
        }
        if self.awaiting_pong_since_ms == 0 {
            self.awaiting_pong_since_ms = now;
        }
        self.next_ping_ms = now + crate::clock::duration_ms(self.node.settings.ping_interval);
        Ok(())
    }
}
