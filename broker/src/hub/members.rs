//! Who is where: a channel's members (presence) and the channels of this node, read
//! under the shard locks the hub's delivery takes.

use std::sync::Arc;

use indexmap::IndexMap;

use super::{ConnHandle, Hub};
use crate::channel::ChannelName;
use crate::protocol::PresenceEntry;

impl Hub {
    /// Whether the channel has subscribers on this node.
    pub fn has_subscribers(&self, channel: &ChannelName) -> bool {
        self.shard(channel).lock().channels.contains_key(channel)
    }

    /// Who is subscribed to the channel on this node, cut at `limits.max_reply_bytes`
    /// (the flag says whether it was).
    pub fn presence(&self, channel: &ChannelName) -> (Vec<PresenceEntry>, bool) {
        let shard = self.shard(channel).lock();
        let Some(subs) = shard.channels.get(channel) else {
            return (Vec::new(), false);
        };
        let mut entries = Vec::new();
        let mut used = 0usize;
        for p in subs.values() {
            let info = p.info_or_empty();
            // The entry's JSON: its strings and about 40 bytes of keys and punctuation.
            let bytes = p.client.len() + p.user.len() + info.get().len() + 40;
            if !entries.is_empty() && used + bytes > self.max_reply_bytes {
                return (entries, true);
            }
            used += bytes;
            entries.push(PresenceEntry {
                client: p.client.to_string(),
                user: p.user.to_string(),
                info: info.to_owned(),
            });
        }
        (entries, false)
    }

    /// The channels a peer is subscribed to (an operator view: scans every shard).
    pub fn channels_of(&self, key: u64) -> Vec<ChannelName> {
        self.scan(|channel, subs| subs.contains_key(&key).then(|| channel.clone()))
    }

    /// Every channel with subscribers on this node, with their counts.
    pub fn channels(&self) -> Vec<(ChannelName, usize)> {
        self.scan(|channel, subs| Some((channel.clone(), subs.len())))
    }

    /// Visits every channel, one shard lock at a time; returns what `pick` kept, sorted.
    fn scan<T: Ord>(
        &self,
        mut pick: impl FnMut(&ChannelName, &IndexMap<u64, Arc<ConnHandle>>) -> Option<T>,
    ) -> Vec<T> {
        let mut out = Vec::new();
        for shard in self.shards.iter() {
            let shard = shard.lock();
            out.extend(shard.channels.iter().filter_map(|(c, subs)| pick(c, subs)));
        }
        out.sort();
        out
    }
}
