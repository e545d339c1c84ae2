//! Handshake slots: sockets accepted whose upgrade and `connect` are not done yet, per node
//! (`connections.max_handshakes`) and per source IP (`connections.max_handshakes_per_ip`).
//!
//! Over its IP's limit a new socket is not closed at once: up to as many again wait, in
//! order, for a slot of that IP to come free (until the handshake deadline), so a burst
//! from one address (a NAT reconnecting after a deploy, a load generator) is served a
//! little later instead of refused. A waiting socket holds its task and counts toward the
//! node's limit; it reads nothing. Past the waiting room, or the node's limit, the socket
//! is closed at once.

use std::collections::VecDeque;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::sync::oneshot;
use tokio::time::Instant;

use super::{ConnectionLimits, Exceeded, take_slot};
use crate::metrics::Limit;

/// One source IP's handshakes: running, and waiting for one of those to end.
#[derive(Debug, Default)]
pub(super) struct IpHandshakes {
    running: u32,
    /// Told `()` when a running slot is handed to them.
    waiting: VecDeque<oneshot::Sender<()>>,
}

/// A connection's slot among the handshakes in progress (TCP accepted, upgrade and
/// `connect` not yet done); given back on drop, that is when `connect` succeeded or the
/// connection ended (to the IP's next waiting socket, if any).
#[derive(Debug)]
pub struct HandshakePermit {
    limits: Arc<ConnectionLimits>,
    ip: IpAddr,
}

/// A socket let in: with a slot now, or waiting for its IP's next one.
#[derive(Debug)]
pub enum Admission {
    Now(HandshakePermit),
    Waiting(WaitingHandshake),
}

/// A socket waiting for a handshake slot of its IP; dropped, it gives its place up.
#[derive(Debug)]
pub struct WaitingHandshake {
    limits: Arc<ConnectionLimits>,
    ip: IpAddr,
    handed: oneshot::Receiver<()>,
    /// It became a permit (nothing to give up).
    admitted: bool,
}

impl Admission {
    /// The slot: now, or once one of the IP's handshakes ends; `None` when `deadline`
    /// passes first (the socket is then closed, as a stalled handshake would be).
    pub async fn slot(self, deadline: Instant) -> Option<HandshakePermit> {
        match self {
            Self::Now(permit) => Some(permit),
            Self::Waiting(waiting) => waiting.wait(deadline).await,
        }
    }
}

impl WaitingHandshake {
    async fn wait(mut self, deadline: Instant) -> Option<HandshakePermit> {
        match tokio::time::timeout_at(deadline, &mut self.handed).await {
            Ok(Ok(())) => {
                self.admitted = true;
                Some(self.permit())
            }
            // Dropped here: the place is given up.
            _ => None,
        }
    }

    fn permit(&self) -> HandshakePermit {
        HandshakePermit {
            limits: self.limits.clone(),
            ip: self.ip,
        }
    }
}

impl ConnectionLimits {
    /// Lets a socket in at accept (with a slot, or to wait for its IP's next), or says
    /// which handshake limit is full: a client that opens sockets and never finishes the
    /// upgrade holds at most this many tasks.
    pub fn begin_handshake(self: &Arc<Self>, ip: IpAddr) -> Result<Admission, Exceeded> {
        take_slot(&self.handshakes, self.config.max_handshakes, |max| {
            Exceeded {
                limit: Limit::NodeHandshakes,
                message: format!("this node already has {max} handshakes in progress"),
            }
        })?;
        let mut by_ip = self.handshakes_by_ip.lock();
        let entry = by_ip.entry(ip).or_default();
        let max = self.config.max_handshakes_per_ip.get();
        if max.is_none_or(|max| entry.running < max.get()) {
            entry.running += 1;
            return Ok(Admission::Now(HandshakePermit {
                limits: self.clone(),
                ip,
            }));
        }
        let max = max.expect("checked above").get() as usize;
        entry.waiting.retain(|w| !w.is_closed());
        if entry.waiting.len() >= max {
            drop(by_ip);
            self.handshakes.fetch_sub(1, Ordering::AcqRel);
            return Err(Exceeded {
                limit: Limit::IpHandshakes,
                message: format!("{ip} already has {max} handshakes in progress and {max} waiting"),
            });
        }
        let (tx, rx) = oneshot::channel();
        entry.waiting.push_back(tx);
        Ok(Admission::Waiting(WaitingHandshake {
            limits: self.clone(),
            ip,
            handed: rx,
            admitted: false,
        }))
    }

    /// Handshakes in progress on this node, with the sockets waiting for one.
    pub fn handshakes(&self) -> u32 {
        self.handshakes.load(Ordering::Relaxed)
    }

    /// Handshakes running, and sockets waiting for a slot of their IP (a sample).
    pub fn handshake_states(&self) -> (u32, u32) {
        let running = self
            .handshakes_by_ip
            .lock()
            .values()
            .map(|e| e.running)
            .sum::<u32>();
        (running, self.handshakes().saturating_sub(running))
    }
}

impl Drop for WaitingHandshake {
    fn drop(&mut self) {
        if self.admitted {
            return;
        }
        // Under the map's lock, so a slot is either handed over before (and passed on
        // from here) or never.
        let handed = {
            let _map = self.limits.handshakes_by_ip.lock();
            let handed = self.handed.try_recv().is_ok();
            self.handed.close();
            handed
        };
        if handed {
            drop(self.permit());
        } else {
            self.limits.handshakes.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

impl Drop for HandshakePermit {
    fn drop(&mut self) {
        self.limits.handshakes.fetch_sub(1, Ordering::AcqRel);
        let mut by_ip = self.limits.handshakes_by_ip.lock();
        let Some(entry) = by_ip.get_mut(&self.ip) else {
            return;
        };
        // The slot goes to the longest waiting socket still waiting.
        while let Some(next) = entry.waiting.pop_front() {
            if next.send(()).is_ok() {
                return;
            }
        }
        entry.running -= 1;
        if entry.running == 0 {
            by_ip.remove(&self.ip);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::ConnectionsConfig;
    use crate::rate::Cap;
    use std::time::Duration;

    fn limits(node: u32, per_ip: u32) -> Arc<ConnectionLimits> {
        ConnectionLimits::new(&ConnectionsConfig {
            max_handshakes: Cap::new(node),
            max_handshakes_per_ip: Cap::new(per_ip),
            ..ConnectionsConfig::default()
        })
    }

    fn now(a: Admission) -> HandshakePermit {
        match a {
            Admission::Now(p) => p,
            Admission::Waiting(_) => panic!("waiting"),
        }
    }

    fn waiting(a: Admission) -> WaitingHandshake {
        match a {
            Admission::Waiting(w) => w,
            Admission::Now(_) => panic!("not waiting"),
        }
    }

    #[test]
    fn slots_are_capped_per_node_and_come_back_on_drop() {
        let limits = limits(3, 2);
        let a: IpAddr = "127.0.0.1".parse().unwrap();
        let b: IpAddr = "127.0.0.2".parse().unwrap();
        let a1 = now(limits.begin_handshake(a).unwrap());
        let _a2 = now(limits.begin_handshake(a).unwrap());
        let _b1 = now(limits.begin_handshake(b).unwrap());
        let refused = limits.begin_handshake(b).unwrap_err();
        assert_eq!(refused.limit, Limit::NodeHandshakes);
        assert_eq!(limits.handshakes(), 3);
        drop(a1);
        assert_eq!(limits.handshakes(), 2);
        assert!(limits.begin_handshake(b).is_ok());
        assert!(limits.handshakes_by_ip.lock().len() <= 2);
    }

    #[tokio::test(start_paused = true)]
    async fn over_its_ip_limit_a_socket_waits_in_order_then_is_refused() {
        let limits = limits(100, 1);
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let running = now(limits.begin_handshake(ip).unwrap());
        let first = waiting(limits.begin_handshake(ip).unwrap());
        // One waits per running slot; the next is refused.
        let refused = limits.begin_handshake(ip).unwrap_err();
        assert_eq!(refused.limit, Limit::IpHandshakes);
        assert_eq!(limits.handshakes(), 2);
        let deadline = Instant::now() + Duration::from_secs(5);
        let waiter = tokio::spawn(Admission::Waiting(first).slot(deadline));
        tokio::task::yield_now().await;
        drop(running);
        let handed = waiter
            .await
            .unwrap()
            .expect("the freed slot is handed over");
        assert_eq!(limits.handshakes(), 1);
        // A second waiter gives up at its deadline; nothing is left counted.
        let late = waiting(limits.begin_handshake(ip).unwrap());
        assert_eq!(limits.handshakes(), 2);
        let gave_up = Admission::Waiting(late)
            .slot(Instant::now() + Duration::from_secs(1))
            .await;
        assert!(gave_up.is_none());
        assert_eq!(limits.handshakes(), 1);
        drop(handed);
        assert_eq!(limits.handshakes(), 0);
        assert!(limits.handshakes_by_ip.lock().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiter_that_gave_up_is_skipped_and_one_dropped_after_a_hand_over_passes_it_on() {
        let limits = limits(100, 1);
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let running = now(limits.begin_handshake(ip).unwrap());
        let gone = waiting(limits.begin_handshake(ip).unwrap());
        // Its task ended (the node stopping) before its deadline: the place is given up.
        drop(gone);
        assert_eq!(limits.handshakes(), 1);
        let next = waiting(limits.begin_handshake(ip).unwrap());
        drop(running);
        let deadline = Instant::now() + Duration::from_secs(1);
        let permit = Admission::Waiting(next)
            .slot(deadline)
            .await
            .expect("the slot skips the closed waiter");
        // Handed a slot, then dropped before taking it: the slot goes back.
        let late = waiting(limits.begin_handshake(ip).unwrap());
        drop(permit);
        assert_eq!(limits.handshakes(), 1);
        drop(late);
        assert_eq!(limits.handshakes(), 0);
        assert!(limits.handshakes_by_ip.lock().is_empty());
    }
}
