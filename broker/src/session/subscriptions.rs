//! A session's subscriptions: one inline, a short vector while there are few, a hash
//! map past [`FEW`]. Most clients hold a handful of channels, and for them a map's table (about
//! 110 bytes for one channel) was an idle connection's largest allocation after its
//! session; the vector holds exactly what it has. Lookups happen at subscribe and
//! unsubscribe only, never per message.

use std::collections::HashMap;
use std::sync::Arc;

use crate::channel::{ChannelName, Namespace};

/// Subscriptions kept in the vector; one more moves them into a map.
const FEW: usize = 16;

type Entry = (ChannelName, Arc<Namespace>);

pub(super) enum Subscriptions {
    /// One channel, inline (an idle client's common case: no allocation at all).
    One(Entry),
    Few(Vec<Entry>),
    // Boxed: the enum stays a vector's size in every session (the map alone is 48 bytes).
    #[allow(clippy::box_collection)]
    Many(Box<HashMap<ChannelName, Arc<Namespace>>>),
}

impl Default for Subscriptions {
    fn default() -> Self {
        Self::Few(Vec::new())
    }
}

impl Subscriptions {
    pub fn contains(&self, channel: &ChannelName) -> bool {
        match self {
            Self::One((c, _)) => c == channel,
            Self::Few(few) => few.iter().any(|(c, _)| c == channel),
            Self::Many(many) => many.contains_key(channel),
        }
    }

    pub fn len(&self) -> usize {
        match self {
            Self::One(_) => 1,
            Self::Few(few) => few.len(),
            Self::Many(many) => many.len(),
        }
    }

    /// Adds a channel the session is not subscribed to ([`Subscriptions::contains`]).
    pub fn insert(&mut self, channel: ChannelName, ns: Arc<Namespace>) {
        match self {
            Self::Few(few) if few.is_empty() => *self = Self::One((channel, ns)),
            Self::One(_) => {
                let Self::One(first) = std::mem::take(self) else {
                    unreachable!("matched above")
                };
                *self = Self::Few(vec![first, (channel, ns)]);
            }
            Self::Few(few) if few.len() < FEW => {
                // Room for exactly one more: subscribing is rare, memory is per connection.
                few.reserve_exact(1);
                few.push((channel, ns));
            }
            Self::Few(few) => {
                let mut many: HashMap<_, _> = std::mem::take(few).into_iter().collect();
                many.insert(channel, ns);
                *self = Self::Many(Box::new(many));
            }
            Self::Many(many) => {
                many.insert(channel, ns);
            }
        }
    }

    pub fn remove(&mut self, channel: &ChannelName) -> Option<Arc<Namespace>> {
        match self {
            Self::One((c, _)) if c == channel => match std::mem::take(self) {
                Self::One((_, ns)) => Some(ns),
                _ => unreachable!("matched above"),
            },
            Self::One(_) => None,
            Self::Few(few) => {
                let at = few.iter().position(|(c, _)| c == channel)?;
                let (_, ns) = few.swap_remove(at);
                if few.is_empty() {
                    // An idle connection that left its channels holds no buffer.
                    *few = Vec::new();
                }
                Some(ns)
            }
            Self::Many(many) => many.remove(channel),
        }
    }

    pub fn iter(&self) -> Box<dyn Iterator<Item = (&ChannelName, &Arc<Namespace>)> + '_> {
        match self {
            Self::One((c, ns)) => Box::new(std::iter::once((c, ns))),
            Self::Few(few) => Box::new(few.iter().map(|(c, ns)| (c, ns))),
            Self::Many(many) => Box::new(many.iter()),
        }
    }

    /// Takes every subscription out.
    pub fn take_all(&mut self) -> Vec<Entry> {
        match std::mem::take(self) {
            Self::One(one) => vec![one],
            Self::Few(few) => few,
            Self::Many(many) => many.into_iter().collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(i: usize) -> ChannelName {
        ChannelName::parse(&format!("chat:c{i}")).unwrap()
    }

    #[test]
    fn few_and_many_answer_alike() {
        let ns = Arc::new(Namespace {
            name: "chat".into(),
            config: Default::default(),
        });
        let mut subs = Subscriptions::default();
        for i in 0..40 {
            assert!(!subs.contains(&name(i)));
            subs.insert(name(i), ns.clone());
            assert!(subs.contains(&name(i)));
            assert_eq!(subs.len(), i + 1);
            assert_eq!(matches!(subs, Subscriptions::Many(_)), i >= FEW);
            assert_eq!(matches!(subs, Subscriptions::One(_)), i == 0);
        }
        assert_eq!(subs.iter().count(), 40);
        assert!(subs.remove(&name(3)).is_some());
        assert!(subs.remove(&name(3)).is_none());
        assert_eq!(subs.take_all().len(), 39);
        assert_eq!(subs.len(), 0);
        // One channel is kept inline; a second moves both into a vector.
        subs.insert(name(1), ns.clone());
        assert!(matches!(subs, Subscriptions::One(_)));
        subs.insert(name(2), ns);
        assert!(matches!(&subs, Subscriptions::Few(few) if few.len() == 2));
        assert!(subs.remove(&name(1)).is_some() && subs.contains(&name(2)));
        assert!(subs.remove(&name(2)).is_some() && subs.len() == 0);
    }
}
