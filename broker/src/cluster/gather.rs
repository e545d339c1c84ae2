//! What nodes say to each other beside publications: heartbeats (who is alive), questions
//! every node answers (presence, channels, disconnect a user), revocations in a KV
//! bucket, and NATS ingress.
//!
//! A question goes to `P.q.<what>` with an inbox to answer to; the asker waits for as
//! many answers as nodes it heard from within `cluster.node_timeout_ms` (itself
//! included), at most `cluster.gather_timeout_ms`. A node that died answers nothing, so
//! its clients are gone from presence as soon as it is.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::kv;
use async_nats::jetstream::stream;
use bytes::Bytes;
use futures_util::StreamExt;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::{Cluster, subjects};
use crate::channel::ChannelName;
use crate::node::Node;
use crate::protocol::{CloseCode, Disconnect, PresenceEntry};
use crate::publish::{PublishRequest, Source, Step};
use crate::sequencer::{Members, PresenceList};

/// Who is alive.
pub(super) struct Gather {
    me: String,
    nodes: Mutex<HashMap<String, Instant>>,
    revocations: std::sync::OnceLock<kv::Store>,
}

impl Gather {
    pub(super) fn new(me: &str) -> Self {
        let mut nodes = HashMap::new();
        nodes.insert(me.to_string(), Instant::now());
        Self {
            me: me.to_string(),
            nodes: Mutex::new(nodes),
            revocations: std::sync::OnceLock::new(),
        }
    }

    /// Nodes heard from within `timeout` (this one always).
    fn alive(&self, timeout: Duration) -> usize {
        let mut nodes = self.nodes.lock();
        nodes.retain(|name, seen| *name == self.me || seen.elapsed() < timeout);
        nodes.len()
    }
}

pub(super) fn start(cluster: &Arc<Cluster>) {
    tokio::spawn(heartbeats(cluster.clone()));
    tokio::spawn(listen_nodes(cluster.clone()));
    tokio::spawn(answer_questions(cluster.clone()));
    tokio::spawn(ingress(cluster.clone()));
}

async fn heartbeats(cluster: Arc<Cluster>) {
    let timeout = Duration::from_millis(cluster.config.node_timeout_ms);
    let mut tick = tokio::time::interval(timeout / 3);
    loop {
        tokio::select! {
            _ = cluster.stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let name = Bytes::from(cluster.name.clone());
        let _ = cluster
            .control
            .publish(cluster.subjects.nodes(), name)
            .await;
        let alive = cluster.gather.alive(timeout);
        cluster.metrics.nodes.set(alive as i64);
    }
}

async fn listen_nodes(cluster: Arc<Cluster>) {
    let Ok(mut sub) = cluster.control.subscribe(cluster.subjects.nodes()).await else {
        return;
    };
    loop {
        let msg = tokio::select! {
            _ = cluster.stop.cancelled() => return,
            m = sub.next() => match m { Some(m) => m, None => return },
        };
        if let Ok(name) = std::str::from_utf8(&msg.payload) {
            let mut nodes = cluster.gather.nodes.lock();
            if !nodes.contains_key(name) {
                tracing::info!(node = name, "A cluster node joined");
            }
            nodes.insert(name.to_string(), Instant::now());
        }
    }
}

/// Asks every node; returns their answers (this node's included).
async fn ask(cluster: &Cluster, what: &str, body: Bytes) -> Vec<Bytes> {
    let expected = cluster
        .gather
        .alive(Duration::from_millis(cluster.config.node_timeout_ms));
    let inbox = cluster.control.new_inbox();
    let Ok(mut answers) = cluster.control.subscribe(inbox.clone()).await else {
        return Vec::new();
    };
    let question = cluster.subjects.question(what);
    if cluster
        .control
        .publish_with_reply(question, inbox, body)
        .await
        .is_err()
    {
        return Vec::new();
    }
    let mut out = Vec::new();
    let deadline =
        tokio::time::Instant::now() + Duration::from_millis(cluster.config.gather_timeout_ms);
    while out.len() < expected {
        match tokio::time::timeout_at(deadline, answers.next()).await {
            Ok(Some(msg)) => out.push(msg.payload),
            _ => break,
        }
    }
    let _ = answers.unsubscribe().await;
    out
}

#[derive(Serialize, Deserialize)]
struct PresenceAnswer {
    clients: Vec<PresenceEntry>,
    more: bool,
}

#[derive(Serialize, Deserialize)]
struct UserQuestion {
    user: String,
    reason: String,
}

/// The cluster's presence of a channel, cut at `limits.max_reply_bytes`.
pub(super) fn presence(cluster: &Cluster, channel: &ChannelName) -> PresenceList {
    let (Some(cluster), Some(node)) = (cluster.this(), cluster.node()) else {
        return PresenceList::Now((Vec::new(), false));
    };
    let channel = channel.clone();
    PresenceList::Later(Box::pin(async move {
        if cluster.not_ready().is_some() {
            // Only this node can be asked.
            return node.hub.presence(&channel);
        }
        let answers = ask(
            &cluster,
            "presence",
            Bytes::from(channel.as_str().to_string()),
        )
        .await;
        let max = node.hub.max_reply_bytes();
        let mut members: Members = (Vec::new(), false);
        let mut used = 0usize;
        for answer in answers {
            let Ok(a) = serde_json::from_slice::<PresenceAnswer>(&answer) else {
                continue;
            };
            members.1 |= a.more;
            for entry in a.clients {
                let bytes = entry.client.len() + entry.user.len() + entry.info.get().len() + 40;
                if !members.0.is_empty() && used + bytes > max {
                    members.1 = true;
                    break;
                }
                used += bytes;
                members.0.push(entry);
            }
        }
        members
    }))
}

/// Every channel with subscribers on any node, with the cluster's counts.
pub async fn channels(cluster: &Cluster) -> Vec<(String, usize)> {
    let mut counts: HashMap<String, usize> = HashMap::new();
    for answer in ask(cluster, "channels", Bytes::new()).await {
        let Ok(list) = serde_json::from_slice::<Vec<(String, usize)>>(&answer) else {
            continue;
        };
        for (channel, n) in list {
            *counts.entry(channel).or_default() += n;
        }
    }
    let mut list: Vec<_> = counts.into_iter().collect();
    list.sort();
    list
}

/// Closes the user's connections on every node with 4003; returns how many.
pub async fn disconnect(cluster: &Cluster, user: &str, reason: &str) -> usize {
    let question = UserQuestion {
        user: user.to_string(),
        reason: reason.to_string(),
    };
    let body = Bytes::from(serde_json::to_vec(&question).expect("serializes"));
    ask(cluster, "disconnect", body)
        .await
        .iter()
        .filter_map(|a| std::str::from_utf8(a).ok()?.parse::<usize>().ok())
        .sum()
}

async fn answer_questions(cluster: Arc<Cluster>) {
    let subject = cluster.subjects.question("*");
    let Ok(mut sub) = cluster.control.subscribe(subject).await else {
        return;
    };
    loop {
        let msg = tokio::select! {
            _ = cluster.stop.cancelled() => return,
            m = sub.next() => match m { Some(m) => m, None => return },
        };
        let (Some(reply), Some(node)) = (msg.reply.clone(), cluster.node()) else {
            continue;
        };
        let what = msg.subject.rsplit('.').next().unwrap_or_default();
        let answer = match what {
            "presence" => {
                let Some(channel) = std::str::from_utf8(&msg.payload)
                    .ok()
                    .and_then(|c| ChannelName::parse(c).ok())
                else {
                    continue;
                };
                let (clients, more) = node.hub.presence(&channel);
                serde_json::to_vec(&PresenceAnswer { clients, more })
            }
            "channels" => {
                let list: Vec<(String, usize)> = node
                    .hub
                    .channels()
                    .into_iter()
                    .map(|(c, n)| (c.as_str().to_string(), n))
                    .collect();
                serde_json::to_vec(&list)
            }
            "disconnect" => {
                let Ok(q) = serde_json::from_slice::<UserQuestion>(&msg.payload) else {
                    continue;
                };
                let n = close_user(&node, &q.user, q.reason);
                Ok(n.to_string().into_bytes())
            }
            _ => continue,
        };
        if let Ok(answer) = answer {
            let _ = cluster.control.publish(reply, Bytes::from(answer)).await;
        }
    }
}

fn close_user(node: &Node, user: &str, reason: String) -> usize {
    let n = node
        .registry
        .disconnect_user(user, &Disconnect::new(CloseCode::Forbidden, reason));
    if n > 0 {
        tracing::info!(
            user,
            connections = n,
            "Closed a user's connections for the cluster"
        );
    }
    n
}

/// Makes the revocation bucket (by hand: the client's bucket call needs a newer server
/// than nats-server 2.9) and starts applying it.
pub(super) async fn setup_revocations(cluster: &Cluster) -> anyhow::Result<()> {
    let bucket = cluster.subjects.revocations_bucket();
    let config = stream::Config {
        name: format!("KV_{bucket}"),
        subjects: vec![format!("$KV.{bucket}.>")],
        max_messages_per_subject: 1,
        allow_rollup: true,
        deny_delete: true,
        allow_direct: true,
        discard: stream::DiscardPolicy::New,
        storage: cluster.storage(),
        num_replicas: cluster.config.replicas as usize,
        ..Default::default()
    };
    cluster.js.get_or_create_stream(config).await?;
    if cluster.gather.revocations.get().is_some() {
        return Ok(());
    }
    let store = cluster.js.get_key_value(bucket).await?;
    let mut watch = store.watch_with_history(">").await?;
    if cluster.gather.revocations.set(store).is_err() {
        return Ok(());
    }
    let cluster = cluster.this().expect("started");
    tokio::spawn(async move {
        loop {
            let entry = tokio::select! {
                _ = cluster.stop.cancelled() => return,
                e = watch.next() => match e { Some(Ok(e)) => e, _ => return },
            };
            let (Some(node), Some(user)) = (cluster.node(), subjects::from_kv_key(&entry.key))
            else {
                continue;
            };
            apply_revocation(&node, &user, entry.operation, &entry.value);
        }
    });
    Ok(())
}

#[derive(Serialize, Deserialize)]
struct Revoked {
    revoked_at: u64,
    until: u64,
}

fn apply_revocation(node: &Node, user: &str, op: kv::Operation, value: &[u8]) {
    match op {
        kv::Operation::Put => {
            let Ok(r) = serde_json::from_slice::<Revoked>(value) else {
                return;
            };
            if let Err(e) = node.revocations.revoke(user, r.revoked_at, r.until) {
                tracing::warn!(error = %e, "Cannot save a revocation from the cluster on disk");
            }
            close_user(
                node,
                user,
                "the token was revoked by an operator".to_string(),
            );
        }
        kv::Operation::Delete | kv::Operation::Purge => {
            let _ = node.revocations.lift(user);
        }
    }
}

/// Stores a revocation for every node (and every node restarted later).
pub async fn revoke(
    cluster: &Cluster,
    user: &str,
    revoked_at: u64,
    until: u64,
) -> anyhow::Result<()> {
    let store = cluster
        .gather
        .revocations
        .get()
        .ok_or_else(|| anyhow::anyhow!("the cluster's revocation bucket is not set up yet"))?;
    let value = serde_json::to_vec(&Revoked { revoked_at, until })?;
    store.put(subjects::kv_key(user), value.into()).await?;
    Ok(())
}

/// Lifts a revocation on every node.
pub async fn unrevoke(cluster: &Cluster, user: &str) -> anyhow::Result<()> {
    let store = cluster
        .gather
        .revocations
        .get()
        .ok_or_else(|| anyhow::anyhow!("the cluster's revocation bucket is not set up yet"))?;
    store.delete(subjects::kv_key(user)).await?;
    Ok(())
}

#[derive(Deserialize)]
struct IngressBody {
    channel: String,
    data: Box<RawValue>,
    #[serde(default)]
    key: Option<String>,
}

/// NATS ingress (server-api.md): `P.api.publish`, one node of the queue group each.
async fn ingress(cluster: Arc<Cluster>) {
    let Ok(mut sub) = cluster
        .control
        .queue_subscribe(cluster.subjects.ingress(), "hookwire".to_string())
        .await
    else {
        return;
    };
    loop {
        let msg = tokio::select! {
            _ = cluster.stop.cancelled() => return,
            m = sub.next() => match m { Some(m) => m, None => return },
        };
        let Some(node) = cluster.node() else {
            continue;
        };
        let answer = publish_ingress(&node, &msg.payload);
        let reply = msg.reply.clone();
        let control = cluster.control.clone();
        tokio::spawn(async move {
            let body = match answer.await {
                Ok(accepted) => serde_json::json!({"channel": accepted.0, "offset": accepted.1}),
                Err(e) => serde_json::json!({"code": e.code.as_str(), "message": e.message}),
            };
            if let Some(reply) = reply {
                let bytes = Bytes::from(serde_json::to_vec(&body).expect("serializes"));
                let _ = control.publish(reply, bytes).await;
            }
        });
    }
}

/// Starts an ingress publication in arrival order (so one NATS client's publications
/// are stored in its order) and returns its answer to await.
fn publish_ingress(
    node: &Arc<Node>,
    payload: &[u8],
) -> futures_util::future::BoxFuture<'static, Result<(String, u64), crate::protocol::ErrorReply>> {
    use crate::protocol::{ErrorCode, ErrorReply};
    let body = match serde_json::from_slice::<IngressBody>(payload) {
        Ok(b) => b,
        Err(e) => {
            let err = ErrorReply::new(
                ErrorCode::BadRequest,
                format!(
                    "the body must be {{\"channel\":\"…\",\"data\":<json>,\"key\":\"optional\"}}: {e}"
                ),
            );
            return Box::pin(async move { Err(err) });
        }
    };
    let checked = crate::protocol::check_depth(body.data.get()).and_then(|()| {
        body.key
            .as_deref()
            .map_or(Ok(()), crate::protocol::check_key)
    });
    if let Err(message) = checked {
        let err = ErrorReply::new(ErrorCode::BadRequest, message);
        return Box::pin(async move { Err(err) });
    }
    let step = node.pipeline.start(PublishRequest {
        source: Source::Nats,
        channel: &body.channel,
        data: &body.data,
        key: body.key.as_deref(),
    });
    let node = node.clone();
    Box::pin(async move {
        let outcome = match step? {
            Step::Done(outcome) => outcome,
            Step::Plugins(pending) => node.pipeline.finish(*pending).await?,
        };
        let accepted = outcome.wait().await?;
        Ok((accepted.channel.as_str().to_string(), accepted.offset))
    })
}
