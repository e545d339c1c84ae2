//! Every open connection on this node, for operator actions (disconnect a user, the
//! per-connection admin view) and sampled queue metrics. Not on the message path.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;

use crate::hub::ConnHandle;
use crate::protocol::Disconnect;

const SHARDS: usize = 16;

#[derive(Default)]
pub struct Registry {
    shards: [Mutex<HashMap<u64, Arc<ConnHandle>>>; SHARDS],
}

impl Registry {
    fn shard(&self, key: u64) -> &Mutex<HashMap<u64, Arc<ConnHandle>>> {
        &self.shards[(key as usize) % SHARDS]
    }

    pub fn insert(&self, peer: Arc<ConnHandle>) {
        self.shard(peer.key).lock().insert(peer.key, peer);
    }

    pub fn remove(&self, key: u64) {
        self.shard(key).lock().remove(&key);
    }

    /// Wakes every connection whose timer is due at `now_ms` (see `session::tick`). The
    /// due ones are copied out first (a leaf lock: the wake-up takes the queue's lock).
    pub fn tick(&self, now_ms: u64) {
        for p in self.copy_out(|p| p.outbound.is_due(now_ms)) {
            p.outbound.tick(now_ms);
        }
    }

    /// Every peer (optionally only one user's), collected without holding a lock afterwards.
    pub fn peers(&self, user: Option<&str>) -> Vec<Arc<ConnHandle>> {
        let mut out = self.copy_out(|p| user.is_none_or(|u| &*p.user == u));
        out.sort_by_key(|p| p.key);
        out
    }

    /// The handles `keep` picks, one shard lock at a time, none held afterwards.
    fn copy_out(&self, mut keep: impl FnMut(&ConnHandle) -> bool) -> Vec<Arc<ConnHandle>> {
        let mut out = Vec::new();
        for shard in &self.shards {
            let shard = shard.lock();
            out.extend(shard.values().filter(|p| keep(p)).cloned());
        }
        out
    }

    /// Asks every connection of `user` to close; returns how many.
    pub fn disconnect_user(&self, user: &str, disconnect: &Disconnect) -> usize {
        let peers = self.peers(Some(user));
        for p in &peers {
            p.outbound.close(disconnect.clone());
        }
        peers.len()
    }

    /// Asks every connection to close, each with a `disconnect` of its own (shutdown:
    /// each gets its own reconnect delay); returns how many.
    pub fn close_all(&self, disconnect: impl Fn() -> Disconnect) -> usize {
        let peers = self.peers(None);
        for p in &peers {
            p.outbound.close(disconnect());
        }
        peers.len()
    }

    /// (frames queued in all connections, the longest queue).
    pub fn queue_depths(&self) -> (usize, usize) {
        let (mut sum, mut max) = (0, 0);
        for shard in &self.shards {
            for p in shard.lock().values() {
                let d = p.outbound.depth();
                sum += d;
                max = max.max(d);
            }
        }
        (sum, max)
    }
}
