//! Channel reads that clients (`history`, `presence`) and the server API
//! (`GET /api/history`, `GET /api/presence`) both make: one check and one reply each, so
//! the two answer alike.

use crate::channel::{ChannelName, Namespace};
use crate::history::{Page, Query};
use crate::hub::Hub;
use crate::protocol::{self, EncodedFrame, ErrorCode, ErrorReply, Recovery, StreamPosition};
use crate::sequencer::Members;

/// Publications a `history` read returns when it names no `limit`.
pub const DEFAULT_HISTORY_LIMIT: usize = 100;

/// Reads a channel's history and encodes the `history` reply (`id` `None`: the API's
/// object). A namespace without history answers offset 0 and an empty epoch. The
/// publications are cut at `limits.max_reply_bytes` (the reply then says where to go on).
pub fn history(
    hub: &Hub,
    ns: &Namespace,
    channel: &ChannelName,
    id: Option<u64>,
    limit: Option<usize>,
    since: Option<&StreamPosition>,
) -> Result<EncodedFrame, ErrorReply> {
    let page = history_page(hub, ns, channel, limit, since)?;
    Ok(history_reply(id, channel, page.as_ref()))
}

/// Reads a page of a channel's history (`None`: the namespace keeps none).
pub fn history_page(
    hub: &Hub,
    ns: &Namespace,
    channel: &ChannelName,
    limit: Option<usize>,
    since: Option<&StreamPosition>,
) -> Result<Option<Page>, ErrorReply> {
    let limit = limit.unwrap_or(DEFAULT_HISTORY_LIMIT);
    let max_bytes = hub.max_reply_bytes();
    let query = match since {
        Some(since) => Query::Since {
            since,
            limit,
            max_bytes,
        },
        None => Query::Latest { limit, max_bytes },
    };
    hub.history_read(ns, channel, query)
        .map_err(|e| ErrorReply::new(ErrorCode::NotFound, e.to_string()))
}

/// The `history` reply for a page (`None`: offset 0 and an empty epoch).
pub fn history_reply(id: Option<u64>, channel: &ChannelName, page: Option<&Page>) -> EncodedFrame {
    let recovery = match page {
        Some(p) => Recovery {
            offset: p.position.offset,
            epoch: &p.position.epoch,
            recovered: false,
            publications: &p.publications,
            next: p.next,
        },
        None => Recovery {
            offset: 0,
            epoch: "",
            recovered: false,
            publications: &[],
            next: None,
        },
    };
    protocol::history_reply(id, channel.as_str(), &recovery)
}

/// `not_found` when the namespace does not keep presence.
pub fn presence_enabled(ns: &Namespace) -> Result<(), ErrorReply> {
    if !ns.config.presence {
        return Err(ErrorReply::new(
            ErrorCode::NotFound,
            format!("presence is not enabled in namespace {:?}", ns.name),
        ));
    }
    Ok(())
}

/// Encodes the `presence` reply (cut at `limits.max_reply_bytes`, then with
/// `"more": true`; `id` `None`: the API's object).
pub fn presence_reply(channel: &ChannelName, id: Option<u64>, members: &Members) -> EncodedFrame {
    protocol::presence_reply(id, channel.as_str(), &members.0, members.1)
}
