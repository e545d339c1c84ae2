//! A namespace's JetStream stream as the channel links read it: opened (its epoch and
//! last sequence), one channel's subject read from a sequence on, and whether a sequence
//! is still stored. Reads use a short-lived ephemeral consumer each.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, pull};
use async_nats::jetstream::stream::Stream;
use bytes::Bytes;
use futures_util::StreamExt;

use super::{Cluster, epoch_of};

/// The namespace's stream, its epoch and its last sequence.
pub(super) async fn open_stream(
    cluster: &Cluster,
    ns: &str,
) -> anyhow::Result<(Stream, Arc<str>, u64)> {
    if cluster.epoch(ns).is_none() {
        anyhow::bail!("the JetStream streams are not set up yet");
    }
    let stream = cluster.js.get_stream(cluster.subjects.stream(ns)).await?;
    let info = stream.get_info().await?;
    Ok((stream, epoch_of(&info), info.state.last_sequence))
}

/// Reads the subject's messages (from `start`, or all the stream keeps) in order.
pub(super) async fn read(
    cluster: &Cluster,
    stream: &Stream,
    subject: String,
    start: Option<u64>,
) -> anyhow::Result<Vec<(u64, Bytes)>> {
    cluster.metrics.stream_reads.inc();
    let deliver_policy = match start {
        Some(start_sequence) => DeliverPolicy::ByStartSequence { start_sequence },
        None => DeliverPolicy::All,
    };
    // A plain ephemeral consumer, deleted once read: every consumer of a stream costs
    // the server work on each message stored, so none is left behind.
    let consumer = stream
        .create_consumer(pull::Config {
            filter_subject: subject,
            deliver_policy,
            ack_policy: AckPolicy::None,
            inactive_threshold: Duration::from_secs(5),
            memory_storage: true,
            ..Default::default()
        })
        .await?;
    let name = consumer.cached_info().name.clone();
    let mut out = Vec::new();
    let read = async {
        if consumer.cached_info().num_pending == 0 {
            return anyhow::Ok(());
        }
        let mut messages = consumer.messages().await?;
        loop {
            let next = tokio::time::timeout(cluster.timeout(), messages.next()).await;
            let Some(message) =
                next.map_err(|_| anyhow::anyhow!("reading the stream timed out"))?
            else {
                return Ok(());
            };
            let message = message.map_err(|e| anyhow::anyhow!("{e}"))?;
            let info = message.info().map_err(|e| anyhow::anyhow!("{e}"))?;
            let (seq, pending) = (info.stream_sequence, info.pending);
            out.push((seq, message.payload.clone()));
            if pending == 0 {
                return Ok(());
            }
        }
    }
    .await;
    let _ = stream.delete_consumer(&name).await;
    read?;
    Ok(out)
}

/// Whether the stream still has the channel's publication `seq` (checked after a read:
/// retention only drops the oldest, so what follows it is all there too).
pub(super) async fn still_stored(stream: &Stream, seq: u64, subject: &str) -> bool {
    if seq == 0 {
        return false;
    }
    match stream.get_raw_message(seq).await {
        Ok(message) => message.subject.as_str() == subject,
        Err(_) => false,
    }
}
