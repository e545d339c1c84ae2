//! What a publish answers: the log's acceptance, now or once stored.

use futures_util::future::BoxFuture;

use crate::channel::ChannelName;
use crate::protocol::ErrorReply;
use crate::sequencer::Acked;

/// A publish handed to the channel's log: accepted now, or once the log stored it (a
/// cluster's JetStream acknowledgement).
pub enum Outcome {
    Now(Accepted),
    Later(BoxFuture<'static, Result<Accepted, ErrorReply>>),
}

impl Outcome {
    /// Waits for the log, when it has not answered yet.
    pub async fn wait(self) -> Result<Accepted, ErrorReply> {
        match self {
            Self::Now(accepted) => Ok(accepted),
            Self::Later(later) => later.await,
        }
    }
}

/// A successful publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    pub channel: ChannelName,
    pub offset: u64,
    /// True when the key was seen within the window: nothing was delivered this time.
    pub duplicate: bool,
    pub delivered: usize,
}

/// One publication handed to the log (see [`Outcome`], which carries the channel).
pub(super) enum Sequenced {
    Now {
        offset: u64,
        duplicate: bool,
        delivered: usize,
    },
    Later(BoxFuture<'static, Result<Acked, ErrorReply>>),
}

impl Sequenced {
    /// The answer to a publish that became this one publication (the fast path: no
    /// list to build).
    pub(super) fn accepted(self, channel: ChannelName) -> Outcome {
        match self {
            Sequenced::Now {
                offset,
                duplicate,
                delivered,
            } => Outcome::Now(Accepted {
                channel,
                offset,
                duplicate,
                delivered,
            }),
            Sequenced::Later(f) => Outcome::Later(Box::pin(async move {
                let acked = f.await?;
                Ok(Accepted {
                    channel,
                    offset: acked.offset,
                    duplicate: acked.duplicate,
                    delivered: 0,
                })
            })),
        }
    }

    /// The answer to a publish that became these publications: the first one's offset,
    /// every delivery counted, once every one of them is stored.
    pub(super) fn all(results: Vec<Sequenced>, channel: ChannelName) -> Outcome {
        let mut now = Accepted {
            channel,
            offset: 0,
            duplicate: false,
            delivered: 0,
        };
        let mut later = Vec::new();
        for (i, r) in results.into_iter().enumerate() {
            match r {
                Sequenced::Now {
                    offset,
                    duplicate,
                    delivered,
                } => {
                    if i == 0 {
                        now.offset = offset;
                        now.duplicate = duplicate;
                    }
                    now.delivered += delivered;
                }
                Sequenced::Later(f) => later.push((i, f)),
            }
        }
        if later.is_empty() {
            return Outcome::Now(now);
        }
        Outcome::Later(Box::pin(async move {
            let mut accepted = now;
            for (i, f) in later {
                let acked = f.await?;
                if i == 0 {
                    accepted.offset = acked.offset;
                    accepted.duplicate = acked.duplicate;
                }
            }
            Ok(accepted)
        }))
    }
}
