//! Requests of an authenticated session, one handler per kind. Handlers never await:
//! hub, pipeline and plugin calls are synchronous, and every reply is queued on the
//! connection's own outbound queue, in request order.

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::time::Instant;

use super::{Exit, Session, expiry_instant};
use crate::access;
use crate::auth;
use crate::channel::ChannelName;
use crate::hub::{ConnHandle, Joined};
use crate::protocol::{
    self, CloseCode, Disconnect, ErrorCode, ErrorReply, Recovery, Request, RequestBody,
    StreamPosition,
};
use crate::publish::{PublishRequest, Source};
use crate::reads;

#[derive(Serialize)]
struct Channel<'a> {
    channel: &'a str,
}

/// Queues what a subscribe answers (under the channel's lock): the `subscribed` reply, or
/// without an id no success reply (protocol v1) but still the recovered publications, all
/// of them, as the `message` pushes they are stored as.
fn queue_joined(handle: &ConnHandle, id: Option<u64>, channel: &ChannelName, joined: Joined) {
    if id.is_none() {
        for publication in joined.publications {
            handle.outbound.push(publication);
        }
        return;
    }
    let recovery = Recovery {
        offset: joined.position.as_ref().map_or(0, |p| p.offset),
        epoch: joined.position.as_ref().map_or("", |p| &p.epoch),
        recovered: joined.recovered,
        publications: &joined.publications,
        next: joined.next,
    };
    let reply = protocol::subscribed_reply(id, channel.as_str(), &recovery);
    handle.outbound.push(reply);
}

impl Session {
    /// Handles one text frame; `Err` when the connection must close (too many violations).
    pub(super) fn handle_text(&mut self, text: &str) -> Result<(), Exit> {
        let parsed = protocol::parse_request(text);
        let kind = parsed.as_ref().map_or("other", |r| r.body.kind());
        self.node.metrics.frame_received(kind);
        let id = match &parsed {
            Ok(r) => r.id,
            Err(e) => e.id,
        };
        let result = match &self.frames {
            Some(limiter) => limiter.check().map_err(|e| {
                self.node.metrics.rate_limited(e.limit);
                e.to_reply()
            }),
            None => Ok(()),
        }
        .and_then(|()| match parsed {
            Ok(req) => self.handle(req),
            Err(e) => Err(ErrorReply::new(ErrorCode::BadRequest, e.message)),
        });
        let Err(err) = result else { return Ok(()) };
        let limited = err.code == ErrorCode::RateLimited;
        self.reply_error(id, err);
        if limited {
            self.count_violation()?;
        }
        Ok(())
    }

    /// Counts a `rate_limited` answer; too many within the window close the connection.
    fn count_violation(&mut self) -> Result<(), Exit> {
        let limits = &self.node.rate_limits;
        let now = Instant::now();
        if now.duration_since(self.violations_since)
            > Duration::from_millis(limits.violation_window_ms)
        {
            self.violations = 0;
            self.violations_since = now;
        }
        self.violations += 1;
        if self.violations >= limits.max_violations {
            return Err(Exit::Disconnect(Disconnect::new(
                CloseCode::RateLimited,
                format!(
                    "{} rate-limit violations within {} ms; reconnect later and stay under the limits",
                    self.violations, limits.violation_window_ms
                ),
            )));
        }
        Ok(())
    }

    /// Handles one request; success replies are queued by each handler (only when the
    /// frame had an id).
    fn handle(&mut self, req: Request) -> Result<(), ErrorReply> {
        let id = req.id;
        match req.body {
            RequestBody::Connect { .. } => {
                Err(ErrorReply::new(ErrorCode::BadRequest, "already connected"))
            }
            RequestBody::Subscribe { channel, recover } => {
                self.subscribe(id, &channel, recover.as_ref())
            }
            RequestBody::Unsubscribe { channel } => self.unsubscribe(id, &channel),
            RequestBody::Publish { channel, data, key } => {
                self.publish(id, &channel, &data, key.as_deref())
            }
            RequestBody::History {
                channel,
                limit,
                since,
            } => self.history(id, &channel, limit, since.as_ref()),
            RequestBody::Presence { channel } => self.presence(id, &channel),
            RequestBody::Refresh { token } => self.refresh(id, &token),
            RequestBody::Ping => {
                #[derive(Serialize)]
                struct Empty {}
                self.reply(id, "pong", Empty {});
                Ok(())
            }
        }
    }

    fn subscribe(
        &mut self,
        id: Option<u64>,
        channel: &str,
        recover: Option<&StreamPosition>,
    ) -> Result<(), ErrorReply> {
        let (channel, ns) = access::resolve(&self.node.namespaces, channel)?;
        access::can_subscribe(&ns, &channel, &self.claims)?;
        if let Some(conn) = &self.plugin_conn {
            self.node
                .plugins
                .on_subscribe(&ns.name, conn, channel.as_str())?;
        }
        if self.subscriptions.contains_key(&channel) {
            return Err(ErrorReply::new(
                ErrorCode::BadRequest,
                format!("already subscribed to {channel}"),
            ));
        }
        if self.subscriptions.len() >= self.node.settings.max_subscriptions {
            return Err(ErrorReply::new(
                ErrorCode::Forbidden,
                format!(
                    "this connection already has {} subscriptions, the limit (limits.max_subscriptions); unsubscribe first",
                    self.subscriptions.len()
                ),
            ));
        }
        let handle = &self.handle;
        // With an id the recovery goes into one reply, so it is paged.
        let paged = id.is_some();
        self.node
            .hub
            .subscribe(&ns, &channel, handle, recover, paged, |joined| {
                queue_joined(handle, id, &channel, joined)
            })
            .map_err(|e| ErrorReply::new(ErrorCode::BadRequest, e.to_string()))?;
        self.subscriptions.insert(channel, ns);
        Ok(())
    }

    fn unsubscribe(&mut self, id: Option<u64>, channel: &str) -> Result<(), ErrorReply> {
        let (channel, ns) = access::resolve(&self.node.namespaces, channel)?;
        if self.subscriptions.remove(&channel).is_some() {
            self.node.hub.unsubscribe(&ns, &channel, &self.handle);
        }
        self.reply_channel(id, "unsubscribed", &channel);
        Ok(())
    }

    fn publish(
        &mut self,
        id: Option<u64>,
        channel: &str,
        data: &serde_json::value::RawValue,
        key: Option<&str>,
    ) -> Result<(), ErrorReply> {
        let accepted = self.node.pipeline.publish(PublishRequest {
            source: Source::Client {
                client: &self.handle.client,
                claims: &self.claims,
                user: &self.user,
                conn: self.plugin_conn.as_ref(),
            },
            channel,
            data,
            key,
        })?;
        #[derive(Serialize)]
        struct Published<'a> {
            channel: &'a str,
            offset: u64,
        }
        self.reply(
            id,
            "published",
            Published {
                channel: accepted.channel.as_str(),
                offset: accepted.offset,
            },
        );
        Ok(())
    }

    fn history(
        &self,
        id: Option<u64>,
        channel: &str,
        limit: Option<usize>,
        since: Option<&StreamPosition>,
    ) -> Result<(), ErrorReply> {
        let (channel, ns) = access::resolve(&self.node.namespaces, channel)?;
        access::can_subscribe(&ns, &channel, &self.claims)?;
        let reply = reads::history(&self.node.hub, &ns, &channel, id, limit, since)?;
        if id.is_some() {
            self.push(reply);
        }
        Ok(())
    }

    fn presence(&self, id: Option<u64>, channel: &str) -> Result<(), ErrorReply> {
        let (channel, ns) = access::resolve(&self.node.namespaces, channel)?;
        access::can_subscribe(&ns, &channel, &self.claims)?;
        let reply = reads::presence(&self.node.hub, &ns, &channel, id)?;
        if id.is_some() {
            self.node.metrics.frames_sent("presence", 1);
            self.push(reply);
        }
        Ok(())
    }

    fn refresh(&mut self, id: Option<u64>, token: &str) -> Result<(), ErrorReply> {
        let claims = self.node.authenticate(token).map_err(|e| e.to_reply())?;
        if claims.sub != self.claims.sub {
            let e = auth::Error::SubMismatch {
                current: self.claims.sub.clone(),
                new: claims.sub,
            };
            return Err(e.to_reply());
        }
        self.expires_at = expiry_instant(claims.exp);
        #[derive(Serialize)]
        struct Refreshed {
            expires: u64,
        }
        self.reply(
            id,
            "refreshed",
            Refreshed {
                expires: claims.exp,
            },
        );
        self.claims = claims;
        if let Some(conn) = &mut self.plugin_conn {
            *conn = Arc::new(conn.with_claims(auth::claims_json(token).into()));
        }
        tracing::debug!(client = %self.handle.client, user = %self.handle.user, "Token refreshed");
        Ok(())
    }

    fn reply_channel(&self, id: Option<u64>, kind: &'static str, channel: &ChannelName) {
        self.reply(
            id,
            kind,
            Channel {
                channel: channel.as_str(),
            },
        );
    }
}
