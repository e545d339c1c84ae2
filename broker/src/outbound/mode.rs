//! The thread's modes for pushes ([`direct_writes`], [`deferring`], and a busy channel's
//! [`without_direct_writes`]) and its list of deferred queues ([`flush_deferred`]); see
//! the parent module's doc.

use std::cell::{Cell, RefCell};
use std::sync::Arc;

use super::Outbound;
use crate::protocol::EncodedFrame;

thread_local! {
    /// This thread's mode (see [`direct_writes`] and [`deferring`]), or `None` when its
    /// pushes may neither write directly nor defer.
    static MODE: Cell<Option<Mode>> = const { Cell::new(None) };
    /// Queues that [`Outbound::push_deferred`] filled or set a frame aside for, without
    /// waking their writer: this thread writes them (or wakes their writer) at
    /// [`flush_deferred`]. Its room is kept between flushes, up to [`DEFERRED_KEPT`].
    static DEFERRED: RefCell<Vec<Deferred>> = const { RefCell::new(Vec::new()) };
}

/// The deferred list's room kept between flushes, in entries (a larger fan-out's list is
/// given back: its cost is spread over that many deliveries).
const DEFERRED_KEPT: usize = 1_024;

/// A thread's mode: the address of the session's own queue (never deferred to nor
/// written directly: its writer sends it with the replies), and whether pushes may
/// write directly (a read that brought one frame) or only defer.
#[derive(Debug, Clone, Copy)]
struct Mode {
    own: usize,
    direct: bool,
}

/// A queue on a thread's deferred list, with the frame set aside for it (`None`: the
/// frames are in the queue).
struct Deferred {
    holder: Arc<dyn HasOutbound>,
    frame: Option<EncodedFrame>,
}

/// What holds a connection's [`Outbound`] (its handle), kept until a deferred flush.
pub trait HasOutbound: Send + Sync {
    fn outbound(&self) -> &Outbound;
}

/// This thread's mode when its pushes to a channel may be deferred
/// ([`Outbound::push_deferred`]): a large channel's in either mode, and any channel's in
/// [`deferring`] mode (a read that brought several frames: each subscriber then gets the
/// read's frames in one write, and no writer is woken for them). Read before the
/// fan-out, which may turn direct writes off.
pub fn deferral(large: bool) -> Option<DirectMode> {
    MODE.get()
        .filter(|mode| large || !mode.direct)
        .map(|mode| DirectMode(mode.own))
}

/// See [`deferral`]: the address of the session's own queue.
#[derive(Debug, Clone, Copy)]
pub struct DirectMode(usize);

impl DirectMode {
    /// Whether a push to `outbound` may be deferred: any queue but the session's own
    /// (which its writer sends in one batch with the replies).
    pub fn may_defer(self, outbound: &Outbound) -> bool {
        self.0 != outbound as *const Outbound as usize
    }
}

/// Runs `f` with direct writes allowed for the pushes it makes on this thread, except to
/// `own`: the session's own queue, which its writer is about to write in one batch with
/// the replies. `f` must not await (the mode belongs to the thread, not to a task).
pub fn direct_writes<R>(own: *const Outbound, f: impl FnOnce() -> R) -> R {
    // What `f` deferred is flushed however `f` ends.
    let _flush = FlushGuard;
    // Only its address is kept, to compare: it is never read through.
    with_mode(
        Some(Mode {
            own: own as usize,
            direct: true,
        }),
        f,
    )
}

/// Runs `f` with every quiet channel's fan-out deferred ([`Outbound::push_deferred`];
/// a busy channel's is queued for its writers) and no direct writes: a session handling
/// a read that brought several frames, whose fan-outs then leave in one write per
/// subscriber at the flush. Unlike [`direct_writes`], nothing is flushed when `f` returns:
/// the caller calls [`flush_deferred`] once the read is handled, and before it awaits
/// anything (the list belongs to the thread). `f` must not await.
pub fn deferring<R>(own: *const Outbound, f: impl FnOnce() -> R) -> R {
    with_mode(
        Some(Mode {
            own: own as usize,
            direct: false,
        }),
        f,
    )
}

/// Flushes what this thread deferred ([`flush_deferred`]) when dropped, however the
/// scope it guards ends (a writer is never left asleep over frames queued for it).
pub struct FlushGuard;

impl Drop for FlushGuard {
    fn drop(&mut self) {
        flush_deferred();
    }
}

/// Writes (or hands to their writers) the queues this thread deferred.
pub fn flush_deferred() {
    /// The entries a panicking flush did not reach, released to their writers as the
    /// panic unwinds (a normal flush leaves none).
    struct Rest<'a>(std::vec::Drain<'a, Deferred>);
    impl Drop for Rest<'_> {
        fn drop(&mut self) {
            for Deferred { holder, frame } in self.0.by_ref() {
                holder.outbound().release_deferred(frame);
            }
        }
    }
    let mut list = DEFERRED.take();
    let mut rest = Rest(list.drain(..));
    for Deferred { holder, frame } in rest.0.by_ref() {
        holder.outbound().flush_or_wake(frame);
    }
    drop(rest);
    if list.capacity() <= DEFERRED_KEPT {
        DEFERRED.with_borrow_mut(|kept| {
            if kept.capacity() == 0 {
                *kept = list;
            }
        });
    }
}

/// Runs `f` with direct writes off for the pushes it makes on this thread (a busy
/// channel's fan-out, see `hub::load`).
pub fn without_direct_writes<R>(f: impl FnOnce() -> R) -> R {
    with_mode(None, f)
}

fn with_mode<R>(mode: Option<Mode>, f: impl FnOnce() -> R) -> R {
    struct Restore(Option<Mode>);
    impl Drop for Restore {
        fn drop(&mut self) {
            MODE.set(self.0);
        }
    }
    let _restore = Restore(MODE.replace(mode));
    f()
}

/// Puts `holder`'s queue on this thread's deferred list, with the frame set aside for it
/// (`None`: its frames are in the queue).
pub(super) fn defer(holder: Arc<dyn HasOutbound>, frame: Option<EncodedFrame>) {
    DEFERRED.with_borrow_mut(|d| d.push(Deferred { holder, frame }));
}

/// Whether a push from this thread to `queue` may write directly ([`direct_writes`]
/// mode, and not the session's own queue).
pub(super) fn may_write_directly(queue: &Outbound) -> bool {
    MODE.get()
        .is_some_and(|mode| mode.direct && mode.own != queue as *const Outbound as usize)
}
