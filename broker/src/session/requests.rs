//! Requests of an authenticated session, one handler per kind. Handlers never await:
//! hub and pipeline calls are synchronous, and every reply is queued on the connection's
//! own outbound queue, in request order. The one exception is a request that must run a
//! plugin chain (a subscribe or publish in a namespace with one): its handler answers a
//! [`Deferred`], which the session awaits (the chain runs on a plugin thread, see
//! `plugins::threads`) before it reads its next frame, so replies stay in order.

use std::sync::Arc;

use serde::Serialize;

use super::hooked::HookedRead;
use super::{Exit, Session, refused_frame};
use crate::access;
use crate::auth::{self, Claims};
use crate::channel::ChannelName;
use crate::channel::Namespace;
use crate::hub::{ConnHandle, Joined};
use crate::plugins::capture::Seen;
use crate::plugins::{Hook, PluginConn};
use crate::protocol::{
    self, CloseCode, Disconnect, ErrorCode, ErrorReply, Recovery, Request, RequestBody,
    StreamPosition,
};
use crate::publish::{self, Pending, PublishRequest, Source, Step};
use crate::reads;
use crate::sequencer::PresenceList;
use crate::transport::Inbound;
use futures_util::future::BoxFuture;

/// A request waiting for a plugin chain (see the module doc).
pub(super) enum Deferred {
    Subscribe {
        id: Option<u64>,
        channel: ChannelName,
        ns: Arc<Namespace>,
        recover: Option<StreamPosition>,
        conn: Arc<PluginConn>,
    },
    Publish {
        id: Option<u64>,
        pending: Box<Pending>,
    },
    /// A verified token waiting for the `refresh` chain.
    Refresh {
        id: Option<u64>,
        claims: Box<Claims>,
        claims_json: Arc<str>,
        conn: Arc<PluginConn>,
    },
    /// A `history` read waiting for the `history` chain.
    History {
        id: Option<u64>,
        read: Box<HookedRead>,
    },
    /// The channel's log must load on this node first (a cluster link), then `then`.
    Prepare {
        id: Option<u64>,
        wait: BoxFuture<'static, Result<(), ErrorReply>>,
        then: Box<AfterPrepare>,
    },
}

/// What waits for [`Deferred::Prepare`].
pub(super) enum AfterPrepare {
    Join {
        channel: ChannelName,
        ns: Arc<Namespace>,
        recover: Option<StreamPosition>,
    },
    History {
        channel: ChannelName,
        ns: Arc<Namespace>,
        limit: Option<usize>,
        since: Option<StreamPosition>,
    },
}

#[derive(Serialize)]
struct Channel<'a> {
    channel: &'a str,
}

/// The `published` reply.
fn published_frame(id: Option<u64>, accepted: &publish::Accepted) -> protocol::EncodedFrame {
    protocol::published_reply(id, accepted.channel.as_str(), accepted.offset)
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
    /// One inbound item of a live session. `Err(Exit::Disconnect)`: close after what is
    /// queued (too many violations); any other `Err`: end now; `Ok(Some(_))`: a plugin
    /// chain must run first ([`Session::finish_deferred`]).
    pub(super) fn on_inbound(&mut self, inbound: Inbound) -> Result<Option<Deferred>, Exit> {
        match inbound {
            Inbound::Text(text) => self.handle_text(super::utf8_text(&text)?),
            // Binary frames and pings are frames too: a flood of them is limited like text.
            Inbound::Binary => {
                if self.frame_allowed(None)? {
                    self.reply_error(None, ErrorReply::new(
                        ErrorCode::BadRequest,
                        "binary frames are not part of protocol v1; send each frame as a JSON text frame",
                    ));
                }
                Ok(None)
            }
            Inbound::Activity => self.frame_allowed(None).map(|_| None),
            Inbound::Closed => Err(Exit::Gone("closed by client")),
            refused @ (Inbound::TooLarge | Inbound::Invalid(..)) => Err(refused_frame(refused)),
        }
    }

    /// Handles one text frame; `Err` when the connection must close (too many
    /// violations); `Ok(Some(_))` when a plugin chain must run first.
    fn handle_text(&mut self, text: &str) -> Result<Option<Deferred>, Exit> {
        let parsed = protocol::parse_request(text);
        let kind = parsed.as_ref().map_or("other", |r| r.body.kind());
        self.node.metrics.frame_received(kind);
        let id = match &parsed {
            Ok(r) => r.id,
            Err(e) => e.id,
        };
        if !self.frame_allowed(id)? {
            return Ok(None);
        }
        let result = match parsed {
            Ok(req) => self.handle(req),
            Err(e) => Err(ErrorReply::new(ErrorCode::BadRequest, e.message)),
        };
        match result {
            Ok(deferred) => Ok(deferred),
            Err(err) => self.answer_error(id, err).map(|()| None),
        }
    }

    /// Checks the connection's frame limiter; over it, answers `rate_limited` and counts
    /// a violation (`Ok(false)`: the frame is dropped).
    fn frame_allowed(&mut self, id: Option<u64>) -> Result<bool, Exit> {
        let limits = &self.node.rate_limits;
        let Some(Err(e)) = self.frames.as_ref().map(|limiter| limiter.check(limits)) else {
            return Ok(true);
        };
        self.node.metrics.rate_limited(e.limit);
        self.reply_error(id, e.to_reply());
        self.count_violation()?;
        Ok(false)
    }

    /// Replies with the error; `Err` when the connection must close (too many violations).
    fn answer_error(&mut self, id: Option<u64>, err: ErrorReply) -> Result<(), Exit> {
        let limited = err.code == ErrorCode::RateLimited;
        self.reply_error(id, err);
        if limited {
            self.count_violation()?;
        }
        Ok(())
    }

    /// Runs a deferred request's plugin chain on a plugin thread and answers it.
    pub(super) async fn finish_deferred(&mut self, deferred: Deferred) -> Result<(), Exit> {
        let (id, result) = match deferred {
            Deferred::Subscribe {
                id,
                channel,
                ns,
                recover,
                conn,
            } => {
                let name = channel.clone();
                let namespace = ns.name.clone();
                let verdict = self
                    .node
                    .plugins
                    .offload(Hook::Subscribe, move |plugins| {
                        plugins.on_subscribe(&namespace, &conn, name.as_str())
                    })
                    .await;
                let result = match verdict {
                    Ok(Ok(())) => self.prepared_join(id, channel, ns, recover).await,
                    Ok(Err(refusal)) => Err(refusal.into()),
                    Err(_) => Err(publish::overloaded()),
                };
                (id, result)
            }
            Deferred::Publish { id, pending } => {
                let result = self.node.pipeline.finish(*pending).await;
                (id, result.map(|outcome| self.answer_published(id, outcome)))
            }
            Deferred::Refresh {
                id,
                claims,
                claims_json,
                conn,
            } => {
                let result = self.finish_refresh(id, *claims, claims_json, conn).await;
                (id, result)
            }
            Deferred::History { id, read } => (id, self.finish_history(id, *read).await),
            Deferred::Prepare { id, wait, then } => {
                let result = match wait.await {
                    Ok(()) => self.after_prepare(id, *then),
                    Err(e) => Err(e),
                };
                (id, result)
            }
        };
        match result {
            Ok(()) => Ok(()),
            Err(err) => self.answer_error(id, err),
        }
    }

    /// A subscribe the plugins allowed: waits for the channel's log when it must load
    /// first, then joins.
    async fn prepared_join(
        &mut self,
        id: Option<u64>,
        channel: ChannelName,
        ns: Arc<Namespace>,
        recover: Option<StreamPosition>,
    ) -> Result<(), ErrorReply> {
        if let Some(wait) = self.node.log.prepare(&ns, &channel) {
            wait.await?;
        }
        self.join(id, channel, ns, recover.as_ref())
    }

    fn after_prepare(&mut self, id: Option<u64>, then: AfterPrepare) -> Result<(), ErrorReply> {
        match then {
            AfterPrepare::Join {
                channel,
                ns,
                recover,
            } => self.join(id, channel, ns, recover.as_ref()),
            AfterPrepare::History {
                channel,
                ns,
                limit,
                since,
            } => self.read_history(id, &channel, &ns, limit, since.as_ref()),
        }
    }

    /// Counts a `rate_limited` answer; too many within the window close the connection.
    fn count_violation(&mut self) -> Result<(), Exit> {
        let limits = &self.node.rate_limits;
        let now = crate::clock::now_ms();
        if now.saturating_sub(self.violations_since_ms) > limits.violation_window_ms {
            self.violations = 0;
            self.violations_since_ms = now;
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
    fn handle(&mut self, req: Request) -> Result<Option<Deferred>, ErrorReply> {
        let id = req.id;
        let done = match req.body {
            RequestBody::Connect { .. } => {
                Err(ErrorReply::new(ErrorCode::BadRequest, "already connected"))
            }
            RequestBody::Subscribe { channel, recover } => {
                return self.subscribe(id, &channel, recover);
            }
            RequestBody::Unsubscribe { channel } => self.unsubscribe(id, &channel),
            RequestBody::Publish { channel, data, key } => {
                return self.publish(id, &channel, data, key.as_deref());
            }
            RequestBody::History {
                channel,
                limit,
                since,
            } => return self.history(id, &channel, limit, since),
            RequestBody::Presence { channel } => self.presence(id, &channel),
            RequestBody::Refresh { token } => return self.refresh(id, &token),
            RequestBody::Ping => {
                #[derive(Serialize)]
                struct Empty {}
                self.reply(id, "pong", Empty {});
                Ok(())
            }
        };
        done.map(|()| None)
    }

    fn subscribe(
        &mut self,
        id: Option<u64>,
        channel: &str,
        recover: Option<StreamPosition>,
    ) -> Result<Option<Deferred>, ErrorReply> {
        self.check_subscribe_rate()?;
        let (channel, ns) = access::resolve(&self.node.namespaces, channel)?;
        access::can_subscribe(&ns, &channel, &self.claims)?;
        if let Some(conn) = &self.plugin_conn {
            self.node.plugins.capture.event(Seen {
                hook: "subscribe",
                namespace: &ns.name,
                channel: channel.as_str(),
                source: "client",
                user: Some(&conn.user),
                claims: Some(&conn.claims),
                data: None,
            });
        }
        if let Some(conn) = &self.plugin_conn
            && self.node.plugins.subscribes_through(&ns.name)
        {
            return Ok(Some(Deferred::Subscribe {
                id,
                channel,
                ns,
                recover,
                conn: conn.clone(),
            }));
        }
        if let Some(wait) = self.node.log.prepare(&ns, &channel) {
            let then = AfterPrepare::Join {
                channel,
                ns,
                recover,
            };
            return Ok(Some(Deferred::Prepare {
                id,
                wait,
                then: Box::new(then),
            }));
        }
        self.join(id, channel, ns, recover.as_ref()).map(|()| None)
    }

    /// The part of a subscribe after the plugins allowed it.
    fn join(
        &mut self,
        id: Option<u64>,
        channel: ChannelName,
        ns: Arc<Namespace>,
        recover: Option<&StreamPosition>,
    ) -> Result<(), ErrorReply> {
        if self.subscriptions.contains(&channel) {
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
        // A namespace whose reads go through a `history` chain serves no recovery
        // inline (the chain runs off this thread): `recovered: false` tells the client
        // to read `history`, which the chain filters.
        let recover = recover.filter(|_| self.history_hooked(&ns).is_none());
        let handle = &self.handle;
        // With an id the recovery goes into one reply, so it is paged.
        let paged = id.is_some();
        // The hub's copy of the name is kept: the one parsed from the request goes.
        let kept = self
            .node
            .hub
            .subscribe(&ns, &channel, handle, recover, paged, |joined| {
                queue_joined(handle, id, &channel, joined)
            })
            .map_err(|e| ErrorReply::new(ErrorCode::BadRequest, e.to_string()))?;
        self.subscriptions.insert(kept, ns);
        Ok(())
    }

    fn unsubscribe(&mut self, id: Option<u64>, channel: &str) -> Result<(), ErrorReply> {
        self.check_subscribe_rate()?;
        let (channel, ns) = access::resolve(&self.node.namespaces, channel)?;
        if self.subscriptions.remove(&channel).is_some() {
            self.node.hub.unsubscribe(&ns, &channel, &self.handle);
            self.notify_unsubscribed(&ns, &channel, "client");
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
    ) -> Result<Option<Deferred>, ErrorReply> {
        let step = self.node.pipeline.start(PublishRequest {
            source: Source::Client {
                client: &self.handle.client,
                claims: &self.claims,
                user: &self.handle.user,
                conn: self.plugin_conn.as_ref(),
            },
            channel,
            data,
            key,
        })?;
        match step {
            Step::Done(outcome) => {
                self.answer_published(id, outcome);
                Ok(None)
            }
            Step::Plugins(pending) => Ok(Some(Deferred::Publish { id, pending })),
        }
    }

    /// Answers a publish: now, or (a cluster's log) once it is stored, from a task of its
    /// own so the session goes on reading meanwhile. Such a `published` (or `unavailable`)
    /// may come after replies to later requests: clients match replies by `id`.
    fn answer_published(&self, id: Option<u64>, outcome: publish::Outcome) {
        match outcome {
            publish::Outcome::Now(accepted) => {
                if id.is_some() {
                    self.node.metrics.published_sent();
                    self.push(published_frame(id, &accepted));
                }
            }
            publish::Outcome::Later(later) => {
                let handle = self.handle.clone();
                let metrics = self.node.metrics.clone();
                self.node.tasks.spawn(async move {
                    let frame = match later.await {
                        Ok(_) if id.is_none() => return,
                        Ok(accepted) => {
                            metrics.published_sent();
                            published_frame(id, &accepted)
                        }
                        Err(err) => {
                            metrics.frames_sent("error", 1);
                            protocol::error_reply(id, &err)
                        }
                    };
                    handle.outbound.push(frame);
                });
            }
        }
    }

    fn history(
        &self,
        id: Option<u64>,
        channel: &str,
        limit: Option<usize>,
        since: Option<StreamPosition>,
    ) -> Result<Option<Deferred>, ErrorReply> {
        let (channel, ns) = access::resolve(&self.node.namespaces, channel)?;
        access::can_subscribe(&ns, &channel, &self.claims)?;
        if let Some(conn) = self.history_hooked(&ns) {
            let read = HookedRead {
                channel,
                ns,
                limit,
                since,
                conn,
            };
            return Ok(Some(Deferred::History {
                id,
                read: Box::new(read),
            }));
        }
        if let Some(wait) = self.node.log.prepare(&ns, &channel) {
            let then = AfterPrepare::History {
                channel,
                ns,
                limit,
                since,
            };
            return Ok(Some(Deferred::Prepare {
                id,
                wait,
                then: Box::new(then),
            }));
        }
        self.read_history(id, &channel, &ns, limit, since.as_ref())
            .map(|()| None)
    }

    fn read_history(
        &self,
        id: Option<u64>,
        channel: &ChannelName,
        ns: &Namespace,
        limit: Option<usize>,
        since: Option<&StreamPosition>,
    ) -> Result<(), ErrorReply> {
        let reply = reads::history(&self.node.hub, ns, channel, id, limit, since)?;
        if id.is_some() {
            self.push(reply);
        }
        Ok(())
    }

    fn presence(&self, id: Option<u64>, channel: &str) -> Result<(), ErrorReply> {
        let (channel, ns) = access::resolve(&self.node.namespaces, channel)?;
        access::can_subscribe(&ns, &channel, &self.claims)?;
        reads::presence_enabled(&ns)?;
        if id.is_none() {
            return Ok(());
        }
        match self.node.presence.list(&channel) {
            PresenceList::Now(members) => {
                self.node.metrics.frames_sent("presence", 1);
                self.push(reads::presence_reply(&channel, id, &members));
            }
            PresenceList::Later(later) => {
                // Other nodes answer: from a task of its own, the session reads on.
                let handle = self.handle.clone();
                let metrics = self.node.metrics.clone();
                self.node.tasks.spawn(async move {
                    let members = later.await;
                    metrics.frames_sent("presence", 1);
                    handle
                        .outbound
                        .push(reads::presence_reply(&channel, id, &members));
                });
            }
        }
        Ok(())
    }

    fn refresh(&mut self, id: Option<u64>, token: &str) -> Result<Option<Deferred>, ErrorReply> {
        let claims = self.node.authenticate(token).map_err(|e| e.to_reply())?;
        if claims.sub != self.claims.sub {
            let e = auth::Error::SubMismatch {
                current: self.claims.sub.to_string(),
                new: claims.sub.to_string(),
            };
            return Err(e.to_reply());
        }
        if let Some(conn) = self.refresh_hooked() {
            return Ok(Some(Deferred::Refresh {
                id,
                claims: Box::new(claims),
                claims_json: auth::claims_json(token).into(),
                conn,
            }));
        }
        // Plugins see the claims as JSON text: made only when plugins are loaded.
        let claims_json = self
            .plugin_conn
            .is_some()
            .then(|| auth::claims_json(token).into());
        self.take_refresh(id, claims, claims_json, None);
        Ok(None)
    }

    /// After a refresh: leaves every channel the new token no longer allows, telling the
    /// client why with an `unsubscribed` push.
    pub(super) fn drop_disallowed_subscriptions(&mut self) {
        let refused: Vec<(ChannelName, String)> = self
            .subscriptions
            .iter()
            .filter_map(|(channel, ns)| {
                access::can_subscribe(ns, channel, &self.claims)
                    .err()
                    .map(|e| (channel.clone(), e.message))
            })
            .collect();
        for (channel, why) in refused {
            let Some(ns) = self.subscriptions.remove(&channel) else {
                continue;
            };
            self.node.hub.unsubscribe(&ns, &channel, &self.handle);
            self.notify_unsubscribed(&ns, &channel, "permission");
            #[derive(Serialize)]
            struct Unsubscribed<'a> {
                #[serde(rename = "type")]
                kind: &'static str,
                channel: &'a str,
                reason: String,
            }
            self.node.metrics.frames_sent("unsubscribed", 1);
            self.push(protocol::encode(&Unsubscribed {
                kind: "unsubscribed",
                channel: channel.as_str(),
                reason: format!("the refreshed token no longer allows this channel: {why}"),
            }));
        }
    }

    /// Subscribes and unsubscribes are limited per connection: each one can send every
    /// member of a channel a `join` or `leave`.
    fn check_subscribe_rate(&self) -> Result<(), ErrorReply> {
        match &self.subscribes {
            Some(limiter) => limiter.check(&self.node.rate_limits).map_err(|e| {
                self.node.metrics.rate_limited(e.limit);
                e.to_reply()
            }),
            None => Ok(()),
        }
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
