//! Parking: a live session with nothing to do gives its task up, so an idle connection
//! holds no task (the task's state was the largest thing per connection).
//!
//! When the serve loop finds nothing to read and nothing queued, [`Live::run`] hands the
//! session to [`park`]: the session and its transport move into a small [`Parked`] record
//! whose waker is registered with the socket (readable) and with the outbound queue
//! (a push, a close, the ticker's timer), and the task ends. The first wake-up spawns a
//! new task on the node's tracker that carries on where the loop stopped. Direct writes
//! to an idle subscriber's socket (see `outbound`) need no task at all, so a parked
//! subscriber of a quiet channel stays parked while it receives.
//!
//! A session resumed twice within [`BUSY_WITHIN_MS`] is busy: it keeps its task for
//! [`STAY_AWAKE_MS`] (its timer then clears that), so steady traffic does not pay a
//! park and a spawn per message.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::task::{Context, Wake, Waker};

use parking_lot::Mutex;
use tokio_util::task::task_tracker::TaskTrackerToken;

use super::{Exit, Session, finish};
use crate::limits::ConnectionPermit;
use crate::node::Node;
use crate::plugins::Hook;
use crate::transport::Transport;

/// Two resumptions closer than this make a session busy.
pub(super) const BUSY_WITHIN_MS: u64 = 100;
/// How long a busy session keeps its task.
pub(super) const STAY_AWAKE_MS: u64 = 1_000;

/// A session past its handshake, with what it needs until its end: what a task runs,
/// and what a parked connection keeps.
pub(super) struct Live<T> {
    pub node: Arc<Node>,
    pub transport: T,
    pub session: Box<Session>,
    /// The connection's place in `connections.max` and `max_per_ip`, given back at the end.
    pub _admitted: Option<ConnectionPermit>,
}

/// What the serve loop ended with.
pub(super) enum Served {
    Exit(Exit),
    /// Nothing to read, nothing queued: the session may give its task up.
    Park,
}

impl<T: Transport + 'static> Live<T> {
    /// Starts serving a session just past its handshake: its queued `connected` is
    /// written at once and the session parks, without a task, while the client has not
    /// sent more (it usually waits for that answer); otherwise a task of its own serves it.
    pub(super) fn start(mut self) {
        if self.transport.parks() {
            // (`serve` sets it each time it starts; a session parked before it ever
            // served needs it for its first ping.)
            self.session.set_timer();
            self.session.handle.outbound.write_now();
            match park(self) {
                None => return,
                Some(live) => self = live,
            }
        }
        let tasks = self.node.tasks.clone();
        tasks.spawn(self.run());
    }

    /// Serves the session until it ends or parks, then (at its end) cleans up, says
    /// goodbye and closes. An async block, not an async fn: see `session::run`.
    // Deliberately not `async fn`: the state's size.
    #[allow(clippy::manual_async_fn)]
    pub(super) fn run(mut self) -> impl Future<Output = ()> + Send + 'static {
        async move {
            let exit = loop {
                match self.session.serve(&mut self.transport).await {
                    Served::Exit(exit) => break exit,
                    Served::Park => match park(self) {
                        Some(woken) => self = woken,
                        // Parked: a wake-up carries on in a new task.
                        None => return,
                    },
                }
            };
            let exit = Box::pin(leave(&self.node, &mut self.session, exit)).await;
            Box::pin(finish(&self.node, &mut self.transport, exit)).await;
            // (Looked up, not kept: a parked session's record stays small.)
            let kind = self.transport.kind().as_str();
            self.node
                .metrics
                .connections
                .with_label_values(&[kind])
                .dec();
        }
    }
}

/// A parked session, until a wake-up takes it (the state says who has it).
struct Parked<T> {
    state: AtomicU8,
    live: Mutex<Option<Live<T>>>,
    /// Counts as a task on the node's tracker, so a drain waits for parked sessions too.
    _tracked: TaskTrackerToken,
}

/// Registering; a wake-up now leaves the session to the parking task.
const PARKING: u8 = 0;
/// In `live`; the first wake-up takes it.
const PARKED: u8 = 1;
/// Woken (a later wake-up does nothing).
const WOKEN: u8 = 2;

/// Parks `live`, or gives it back when something is there already (or came while it was
/// parking): then the caller carries on in its task.
fn park<T: Transport + 'static>(mut live: Live<T>) -> Option<Live<T>> {
    let parked = Arc::new(Parked {
        state: AtomicU8::new(PARKING),
        live: Mutex::new(None),
        _tracked: live.node.tasks.token(),
    });
    // Parking runs on the node's runtime: a wake-up from any thread spawns there.
    live.node
        .runtime
        .get_or_init(tokio::runtime::Handle::current);
    let waker = Waker::from(parked.clone());
    if live
        .transport
        .poll_park(&mut Context::from_waker(&waker))
        .is_ready()
        || live.session.handle.outbound.park(&waker)
    {
        return Some(live);
    }
    let gauge = live.node.metrics.connections_parked.clone();
    gauge.inc();
    *parked.live.lock() = Some(live);
    match parked
        .state
        .compare_exchange(PARKING, PARKED, Ordering::AcqRel, Ordering::Acquire)
    {
        Ok(_) => None,
        // Woken while registering: the wake-up left it here.
        Err(_) => {
            gauge.dec();
            parked.live.lock().take()
        }
    }
}

impl<T: Transport + 'static> Wake for Parked<T> {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        if self.state.swap(WOKEN, Ordering::AcqRel) != PARKED {
            return;
        }
        // Taken in its own statement: the lock is not held through the spawn.
        let live = self.live.lock().take();
        if let Some(mut live) = live {
            live.node.metrics.connections_parked.dec();
            live.session.resumed();
            let node = Arc::clone(&live.node);
            let runtime = node.runtime.get().expect("set before the session parked");
            // From any thread (a plugin thread's push, the ticker): on the node's runtime.
            // A runtime shutting down drops the session, which closes the socket.
            runtime.spawn(node.tasks.track_future(live.run()));
        }
    }
}

/// After the serve loop: leaves every channel, unregisters, tells the disconnect plugins,
/// logs. (Boxed by the caller: once per connection, and inline its state would sit in
/// every connection's task.)
async fn leave(node: &Node, session: &mut Session, exit: Exit) -> Exit {
    session.leave_all();
    node.registry.remove(session.handle.key);
    let lived_ms = crate::clock::now_ms().saturating_sub(session.started_ms);
    let (code, reason) = match &exit {
        Exit::Disconnect(d) => (d.code.code(), d.reason.to_string()),
        Exit::Close(code, reason) => (code.code(), reason.clone()),
        Exit::Gone(why) => (1000, why.to_string()),
    };
    if let Some(view) = &session.plugin_conn
        && node.plugins.connection_has(Hook::Disconnect)
    {
        let (view, why) = (view.clone(), reason.clone());
        // On a plugin thread; a full queue skips the notification (counted).
        let _ = node
            .plugins
            .offload(Hook::Disconnect, move |plugins| {
                plugins.on_disconnect(&view, &why);
            })
            .await;
    }
    tracing::info!(
        client = %session.handle.client,
        user = &*session.handle.user,
        code,
        reason = reason.as_str(),
        secs = lived_ms / 1000,
        "Disconnected"
    );
    node.metrics
        .connection_duration
        .observe(lived_ms as f64 / 1000.0);
    exit
}

#[cfg(test)]
mod tests {
    /// What an idle WebSocket connection keeps instead of a task (plus the `Arc`'s two
    /// counts), and its session (boxed): `cargo test --release --lib -- --nocapture
    /// parked_session` prints them.
    #[test]
    fn a_parked_session_is_small() {
        let size = std::mem::size_of::<super::Parked<crate::transport::ws::WsTransport>>();
        println!("parked WebSocket session: {size} bytes");
        // 168 in a release build; a debug build's socket is 8 bytes larger.
        assert!(size <= 176, "a parked session grew to {size} bytes");
        let size = std::mem::size_of::<super::Session>();
        println!(
            "session: {size} bytes (claims {}, subscriptions {}, user permit {}, limiter {})",
            std::mem::size_of::<crate::auth::Claims>(),
            std::mem::size_of::<super::super::subscriptions::Subscriptions>(),
            std::mem::size_of::<crate::limits::UserPermit>(),
            std::mem::size_of::<Option<crate::limits::ConnectionLimiter>>()
        );
        assert!(size <= 248, "the session grew to {size} bytes");
        let size = std::mem::size_of::<crate::hub::ConnHandle>();
        println!("connection handle: {size} bytes");
        assert!(size <= 248, "the connection handle grew to {size} bytes");
    }
}
