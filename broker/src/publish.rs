//! The publish pipeline: every publication, from a client, the server API or (later) NATS
//! ingress, goes through [`Pipeline::publish`]: name → namespace → permission → rate
//! limits → hooks (plugins) → idempotency → hub.
//!
//! Plugins run once per publication, never per delivery; a namespace without a publish
//! chain pays one lookup.

mod dedup;
mod outcome;
mod probe;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use serde_json::value::RawValue;

use crate::access;
use crate::auth::Claims;
use crate::channel::{ChannelName, Namespace, Namespaces};
use crate::config::Config;
use crate::hub::{NewPublication, Published};
use crate::limits::{Exceeded, RateLimits};
use crate::metrics::{Metrics, PublicationSource};
use crate::plugins::capture::Seen;
use crate::plugins::{
    Emit, Hook, PluginConn, Plugins, PublicationState, PublishChain, PublishSource,
};
use crate::protocol::{ErrorCode, ErrorReply, now_ms};
use crate::sequencer::{Sequencer, Sequencing};
use dedup::{Dedup, Once, Publisher};
use outcome::Sequenced;
pub use outcome::{Accepted, Outcome};
pub use probe::{LATENCY_SAMPLE_EVERY, latency_probe};
use std::time::Instant;

/// Where a publication comes from. Client publications are checked against the token;
/// server-side sources are trusted.
#[derive(Clone, Copy, Debug)]
pub enum Source<'a> {
    Client {
        client: &'a str,
        claims: &'a Claims,
        /// The user id, shared (the per-user limiter's key).
        user: &'a Arc<str>,
        /// The connection as plugins see it (when plugins are on).
        conn: Option<&'a Arc<PluginConn>>,
    },
    Api,
    /// NATS ingress (`<prefix>.api.publish`): trusted like the server API.
    Nats,
}

impl Source<'_> {
    /// The `source` label this publication is counted under.
    pub fn metric(&self) -> PublicationSource {
        match self {
            Self::Client { .. } => PublicationSource::Client,
            Self::Api => PublicationSource::Api,
            Self::Nats => PublicationSource::Nats,
        }
    }

    /// The scope of this source's idempotency keys.
    fn publisher(&self) -> Publisher {
        match self {
            Self::Client { user, .. } => Publisher::User(Arc::clone(user)),
            Self::Api | Self::Nats => Publisher::Api,
        }
    }

    pub fn user(&self) -> Option<&str> {
        match self {
            Self::Client { claims, .. } => Some(&claims.sub),
            Self::Api | Self::Nats => None,
        }
    }
}

pub struct PublishRequest<'a> {
    pub source: Source<'a>,
    pub channel: &'a str,
    pub data: &'a RawValue,
    /// Idempotency key: a repeat within the window is not delivered again.
    pub key: Option<&'a str>,
}

/// What [`Pipeline::start`] did.
pub enum Step {
    /// Published (no publish chain in the namespace), or sent to the log.
    Done(Outcome),
    /// Checked; the namespace's publish chain is to run: await [`Pipeline::finish`].
    Plugins(Box<Pending>),
}

/// A checked publication waiting for its publish chain: owned, so the chain can run on
/// a plugin thread.
pub struct Pending {
    state: PublicationState,
    rest: Rest,
}

/// What publishing needs after the chain.
struct Rest {
    user: Option<String>,
    key: Option<String>,
    publisher: Publisher,
    source: PublicationSource,
    channel: ChannelName,
    /// The namespace `channel` resolved to.
    ns: Arc<Namespace>,
    probe: Option<Instant>,
}

/// The answer to a publish once the node is draining.
pub fn draining() -> ErrorReply {
    ErrorReply::new(
        ErrorCode::Unavailable,
        "this node is shutting down and takes no more publications; publish again after reconnecting (to another node or this one once it is back)",
    )
}

/// The answer when the plugin threads' queue is full.
pub fn overloaded() -> ErrorReply {
    ErrorReply::new(
        ErrorCode::Unavailable,
        "the plugin threads are overloaded (plugins.queue calls are waiting); retry shortly",
    )
}

pub struct Pipeline {
    log: Arc<dyn Sequencer>,
    namespaces: Arc<Namespaces>,
    limits: Arc<RateLimits>,
    metrics: Arc<Metrics>,
    plugins: Arc<Plugins>,
    dedup: Dedup,
    /// Set when the node's shutdown begins: publishes are refused from then on (their
    /// deliveries would be dropped with the connections).
    draining: Arc<AtomicBool>,
    /// The largest `message` frame a volatile namespace takes (`quic.max_datagram_bytes`).
    max_datagram_bytes: usize,
}

impl Pipeline {
    pub fn new(
        log: Arc<dyn Sequencer>,
        namespaces: Arc<Namespaces>,
        limits: Arc<RateLimits>,
        metrics: Arc<Metrics>,
        plugins: Arc<Plugins>,
        config: &Config,
        draining: Arc<AtomicBool>,
    ) -> Self {
        let settings = &config.limits;
        Self {
            log,
            namespaces,
            limits,
            metrics,
            plugins,
            dedup: Dedup::new(settings.dedup_window_ms, settings.dedup_max_keys),
            draining,
            max_datagram_bytes: config.quic.max_datagram_bytes,
        }
    }

    /// Publishes, running the namespace's publish chain (if any) here, on the calling
    /// thread: for tools and tests. Connections and the HTTP API use
    /// [`Pipeline::start`] and [`Pipeline::finish`], which run plugins on the plugin
    /// threads.
    pub fn publish(&self, req: PublishRequest<'_>) -> Result<Outcome, ErrorReply> {
        match self.start(req)? {
            Step::Done(outcome) => Ok(outcome),
            Step::Plugins(pending) => {
                let valid = |c: &str| self.valid_channel(c);
                let answer =
                    self.plugins
                        .on_publish(&pending.rest.ns.name, pending.state, &valid)?;
                self.complete(pending.rest, answer)
            }
        }
    }

    /// [`Pipeline::start`] then, for a namespace with a publish chain,
    /// [`Pipeline::finish`], then the log's acknowledgement.
    pub async fn publish_async(&self, req: PublishRequest<'_>) -> Result<Accepted, ErrorReply> {
        match self.start(req)? {
            Step::Done(outcome) => outcome.wait().await,
            Step::Plugins(pending) => self.finish(*pending).await?.wait().await,
        }
    }

    /// Checks and, for a namespace without a publish chain, publishes (synchronous, the
    /// fast path). A namespace with a chain answers [`Step::Plugins`]: the caller awaits
    /// [`Pipeline::finish`].
    pub fn start(&self, req: PublishRequest<'_>) -> Result<Step, ErrorReply> {
        if self.draining.load(Ordering::Relaxed) {
            return Err(draining());
        }
        let probe = latency_probe();
        let (channel, ns) = access::resolve(&self.namespaces, req.channel)?;
        if let Source::Client { claims, user, .. } = req.source {
            access::can_publish(&ns, &channel, claims)?;
            self.limits
                .check_user_publish(user)
                .map_err(|e| self.limited(&e))?;
        }
        self.limits
            .check_channel_publish(&ns, &channel)
            .map_err(|e| self.limited(&e))?;
        if ns.volatile() {
            self.fits_a_datagram(&channel, &req)?;
        }
        self.plugins.capture.event(Seen {
            hook: "publish",
            namespace: &ns.name,
            channel: channel.as_str(),
            source: req.source.metric().label(),
            user: req.source.user(),
            claims: match req.source {
                Source::Client { conn, .. } => conn.map(|c| &*c.claims),
                Source::Api | Source::Nats => None,
            },
            data: Some(req.data),
        });
        let chain = self.plugins.publish_chain(&ns.name);
        if chain != PublishChain::None {
            // A repeat is answered before the chain: the plugins see a publication once.
            if let Some(offset) = self.repeat_of(&req, &ns, &channel) {
                return Ok(Step::Done(Outcome::Now(Accepted {
                    channel,
                    offset,
                    duplicate: true,
                    delivered: 0,
                })));
            }
            let pending = Pending {
                state: plugin_state(&req, &channel),
                rest: Rest {
                    user: req.source.user().map(str::to_string),
                    key: req.key.map(str::to_string),
                    publisher: req.source.publisher(),
                    source: req.source.metric(),
                    channel,
                    ns,
                    probe,
                },
            };
            // A chain of plugins that have all stayed fast runs here, like a publication
            // without plugins: no hand-off to a plugin thread and back.
            if chain == PublishChain::Inline {
                return self.run_chain(pending).map(Step::Done);
            }
            return Ok(Step::Plugins(Box::new(pending)));
        }
        let publication = NewPublication {
            channel: &channel,
            user: req.source.user(),
            data: req.data,
            meta: None,
            probe,
        };
        let publisher = req.source.publisher();
        let sequenced = self.sequence(&ns, publication, req.key, req.source.metric(), &publisher);
        Ok(Step::Done(sequenced.accepted(channel)))
    }

    /// Hands one publication to the log, through the idempotency window unless the log
    /// keeps keys itself, and counts it.
    fn sequence(
        &self,
        ns: &Arc<Namespace>,
        publication: NewPublication<'_>,
        key: Option<&str>,
        source: PublicationSource,
        publisher: &Publisher,
    ) -> Sequenced {
        let channel = publication.channel;
        if let Some(key) = key
            && self.log.keeps_keys(ns)
        {
            let id = dedup::message_id(publisher, channel, key);
            return self.counted(self.log.publish(ns, publication, Some(&id)), source);
        }
        let mut later = None;
        let (published, duplicate) = self.once(key, source, publisher, channel, || {
            match self.log.publish(ns, publication, None) {
                Sequencing::Done(published) => published,
                // A log that does not keep keys answers at once (`Sequencer::keeps_keys`);
                // should one not, its answer is still given, only without the window.
                Sequencing::Later(f) => {
                    later = Some(f);
                    Published::repeat(0)
                }
            }
        });
        match later {
            // Counted by `once` already.
            Some(f) => Sequenced::Later(f),
            None => Sequenced::Now {
                offset: published.offset,
                duplicate,
                delivered: published.delivered,
            },
        }
    }

    /// Counts a publication the log answers later once it answers.
    fn counted(&self, sequencing: Sequencing, source: PublicationSource) -> Sequenced {
        match sequencing {
            Sequencing::Done(published) => {
                self.metrics.publication(source, published.delivered as u64);
                Sequenced::Now {
                    offset: published.offset,
                    duplicate: false,
                    delivered: published.delivered,
                }
            }
            Sequencing::Later(f) => {
                let metrics = self.metrics.clone();
                Sequenced::Later(Box::pin(async move {
                    let acked = f.await?;
                    if !acked.duplicate {
                        // Deliveries are counted where they happen, on each node.
                        metrics.publication(source, 0);
                    }
                    Ok(acked)
                }))
            }
        }
    }

    /// Runs the publish chain on a plugin thread (the caller's thread is free meanwhile;
    /// no lock is held), then publishes what it answered. A full plugin queue answers
    /// `unavailable`.
    pub async fn finish(&self, pending: Pending) -> Result<Outcome, ErrorReply> {
        let Pending { state, rest } = pending;
        let ns = rest.ns.clone();
        let namespaces = self.namespaces.clone();
        let answer = self
            .plugins
            .offload(Hook::Publish, move |plugins| {
                let valid = |c: &str| {
                    access::resolve(&namespaces, c)
                        .map(|_| ())
                        .map_err(|e| e.message)
                };
                plugins.on_publish(&ns.name, state, &valid)
            })
            .await
            .map_err(|_| overloaded())??;
        self.complete(rest, answer)
    }

    /// Runs the publish chain on this thread, then publishes what it answered.
    fn run_chain(&self, pending: Pending) -> Result<Outcome, ErrorReply> {
        let Pending { state, rest } = pending;
        let answer = self
            .plugins
            .on_publish(&rest.ns.name, state, &|c| self.valid_channel(c))?;
        self.complete(rest, answer)
    }

    fn valid_channel(&self, c: &str) -> Result<(), String> {
        access::resolve(&self.namespaces, c)
            .map(|_| ())
            .map_err(|e| e.message)
    }

    /// After the publish chain: every target channel and every emitted publication goes
    /// to the hub. An idempotency key covers all of it.
    fn complete(
        &self,
        rest: Rest,
        (state, emits): (PublicationState, Vec<Emit>),
    ) -> Result<Outcome, ErrorReply> {
        let Rest {
            user,
            key,
            publisher,
            source,
            channel,
            ns,
            probe,
        } = rest;
        let meta = state.meta_json();
        let targets = match state.channels.as_slice() {
            // Not rerouted: the channel as resolved before the chain.
            [only] if only.as_str() == channel.as_str() => vec![(channel.clone(), ns)],
            channels => channels
                .iter()
                .map(|c| access::resolve(&self.namespaces, c))
                .collect::<Result<Vec<_>, _>>()?,
        };
        let extra = emits
            .iter()
            .map(|e| access::resolve(&self.namespaces, &e.channel).map(|t| (t, e)))
            .collect::<Result<Vec<_>, _>>()?;
        let user = user.as_deref();
        // The key covers the first target; the others and the emitted publications are
        // published once with it (a repeat of the key was answered before the chain).
        let mut results = Vec::with_capacity(targets.len());
        for (i, (target, target_ns)) in targets.iter().enumerate() {
            let publication = NewPublication {
                channel: target,
                user,
                data: &state.data,
                meta: meta.as_deref(),
                probe,
            };
            let key = if i == 0 { key.as_deref() } else { None };
            let result = self.sequence(target_ns, publication, key, source, &publisher);
            if let Sequenced::Now {
                duplicate: true, ..
            } = result
            {
                // The same key raced this publish past the check before the chain.
                return Ok(result.accepted(channel));
            }
            results.push(result);
        }
        for ((target, target_ns), emit) in &extra {
            let publication = NewPublication {
                channel: target,
                user: None,
                data: &emit.data,
                meta: emit.meta.as_deref(),
                probe,
            };
            results.push(self.sequence(
                target_ns,
                publication,
                None,
                PublicationSource::Plugin,
                &publisher,
            ));
        }
        let first = targets.into_iter().next().map_or(channel, |(c, _)| c);
        Ok(Sequenced::all(results, first))
    }

    /// Runs `publish` unless the idempotency key was seen from this publisher on
    /// `channel` within the window, and counts what it delivered. Returns whether it was a
    /// repeat.
    fn once(
        &self,
        key: Option<&str>,
        source: PublicationSource,
        publisher: &Publisher,
        channel: &ChannelName,
        publish: impl FnOnce() -> Published,
    ) -> (Published, bool) {
        let (published, duplicate) = match key {
            None => (publish(), false),
            Some(key) => {
                let (once, evicted) = self.dedup.once(publisher, channel, key, now_ms(), publish);
                if evicted > 0 {
                    self.metrics.dedup_evicted(evicted as u64);
                }
                match once {
                    Once::Published(p) => (p, false),
                    Once::Repeat(offset) => (Published::repeat(offset), true),
                }
            }
        };
        if !duplicate {
            self.metrics.publication(source, published.delivered as u64);
        }
        (published, duplicate)
    }

    /// The first offset of a repeated key, checked before the plugins run (a log that
    /// keeps keys itself answers repeats when they reach it).
    fn repeat_of(
        &self,
        req: &PublishRequest<'_>,
        ns: &Namespace,
        channel: &ChannelName,
    ) -> Option<u64> {
        let key = req.key?;
        if self.log.keeps_keys(ns) {
            return None;
        }
        self.dedup
            .seen(&req.source.publisher(), channel, key, now_ms())
    }

    /// A volatile publication travels as one datagram: its `message` frame (the data,
    /// the channel, the user and about 100 bytes of frame) must fit
    /// `quic.max_datagram_bytes`.
    fn fits_a_datagram(
        &self,
        channel: &ChannelName,
        req: &PublishRequest<'_>,
    ) -> Result<(), ErrorReply> {
        const FRAME_BYTES: usize = 100;
        let size = req.data.get().len()
            + channel.as_str().len()
            + req.source.user().map_or(0, str::len)
            + FRAME_BYTES;
        if size <= self.max_datagram_bytes {
            return Ok(());
        }
        Err(ErrorReply::new(
            ErrorCode::TooLarge,
            format!(
                "channel {channel} is volatile: its publications travel as datagrams of at most {} bytes, and this one would be about {size}; send less data, or publish into a namespace without `volatile`",
                self.max_datagram_bytes
            ),
        ))
    }

    fn limited(&self, e: &Exceeded) -> ErrorReply {
        self.metrics.rate_limited(e.limit);
        e.to_reply()
    }

    /// Forgets idempotency keys older than the window.
    pub fn sweep(&self, now_ms: u64) {
        self.dedup.sweep(now_ms);
    }
}

/// What the publish chain's plugins are given: the request as a publication to one channel.
fn plugin_state(req: &PublishRequest<'_>, channel: &ChannelName) -> PublicationState {
    let (user, connection) = match req.source {
        Source::Client { user, conn, .. } => (Some(user.clone()), conn.cloned()),
        Source::Api | Source::Nats => (None, None),
    };
    PublicationState {
        source: match req.source {
            Source::Client { .. } => PublishSource::Client,
            Source::Api => PublishSource::Api,
            Source::Nats => PublishSource::Nats,
        },
        channels: vec![channel.as_str().to_string()],
        user,
        data: req.data.to_owned(),
        meta: Vec::new(),
        connection,
    }
}

#[cfg(test)]
mod tests;
