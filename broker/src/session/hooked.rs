//! The session's requests that wait for the hooks 0.2.0 added: a token refresh through
//! the `refresh` chain, a `history` read through the `history` chain, and the
//! `unsubscribe` notification. Like a subscribe's, each chain runs on a plugin thread.

use std::sync::Arc;

use serde::Serialize;

use super::Session;
use crate::auth::Claims;
use crate::channel::{ChannelName, Namespace};
use crate::plugins::{Hook, PluginConn};
use crate::protocol::{ErrorReply, StreamPosition};
use crate::publish;
use crate::reads;

impl Session {
    /// Whether a refresh must wait for the connection plugins' `refresh` hooks.
    pub(super) fn refresh_hooked(&self) -> Option<Arc<PluginConn>> {
        let conn = self.plugin_conn.as_ref()?;
        self.node
            .plugins
            .connection_has(Hook::Refresh)
            .then(|| conn.clone())
    }

    /// Runs the refresh chain, then takes the token (or answers the refusal).
    pub(super) async fn finish_refresh(
        &mut self,
        id: Option<u64>,
        claims: Claims,
        claims_json: Arc<str>,
        conn: Arc<PluginConn>,
    ) -> Result<(), ErrorReply> {
        let json = claims_json.clone();
        let verdict = self
            .node
            .plugins
            .offload(Hook::Refresh, move |plugins| {
                plugins.on_refresh(&conn, &json)
            })
            .await;
        match verdict {
            Ok(Ok(meta)) => {
                self.take_refresh(id, claims, Some(claims_json), meta);
                Ok(())
            }
            Ok(Err(refusal)) => Err(refusal.into()),
            Err(_) => Err(publish::overloaded()),
        }
    }

    /// Takes a verified (and, with plugins, allowed) token: the new expiry, claims and
    /// plugin view (its claims as JSON text, given whenever plugins are loaded; `meta`
    /// when a `refresh` hook replaced it), and leaves the channels it no longer allows.
    pub(super) fn take_refresh(
        &mut self,
        id: Option<u64>,
        claims: Claims,
        claims_json: Option<Arc<str>>,
        meta: Option<Arc<str>>,
    ) {
        self.expires_at_ms = super::expiry_ms(claims.exp);
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
        self.drop_disallowed_subscriptions();
        if let (Some(conn), Some(claims_json)) = (&mut self.plugin_conn, claims_json) {
            let mut refreshed = conn.with_claims(claims_json);
            if let Some(meta) = meta {
                refreshed.meta = meta;
            }
            *conn = Arc::new(refreshed);
        }
        tracing::debug!(client = %self.handle.client, user = %self.handle.user, "Token refreshed");
    }

    /// Whether `history` reads of `ns` go through a `history` chain.
    pub(super) fn history_hooked(&self, ns: &Namespace) -> Option<Arc<PluginConn>> {
        let conn = self.plugin_conn.as_ref()?;
        self.node
            .plugins
            .chain_has(&ns.name, Hook::History)
            .then(|| conn.clone())
    }

    /// Reads a page of history, runs the history chain over it, and answers.
    pub(super) async fn finish_history(
        &mut self,
        id: Option<u64>,
        read: HookedRead,
    ) -> Result<(), ErrorReply> {
        let HookedRead {
            channel,
            ns,
            limit,
            since,
            conn,
        } = read;
        if let Some(wait) = self.node.log.prepare(&ns, &channel) {
            wait.await?;
        }
        let page = reads::history_page(&self.node.hub, &ns, &channel, limit, since.as_ref())?;
        let Some(mut page) = page else {
            self.push(reads::history_reply(id, &channel, None));
            return Ok(());
        };
        let frames = std::mem::take(&mut page.publications);
        let (namespace, name) = (ns.name.clone(), channel.clone());
        let verdict = self
            .node
            .plugins
            .offload(Hook::History, move |plugins| {
                plugins.on_history(&namespace, &conn, name.as_str(), frames)
            })
            .await;
        match verdict {
            Ok(Ok(frames)) => {
                page.publications = frames;
                if id.is_some() {
                    self.push(reads::history_reply(id, &channel, Some(&page)));
                }
                Ok(())
            }
            Ok(Err(refusal)) => Err(refusal.into()),
            Err(_) => Err(publish::overloaded()),
        }
    }

    /// Tells the namespace's `unsubscribe` hooks that a subscription ended (on a plugin
    /// thread, not awaited: a notification never holds the connection up).
    pub(super) fn notify_unsubscribed(&self, ns: &Namespace, channel: &ChannelName, reason: &str) {
        let Some(conn) = &self.plugin_conn else {
            return;
        };
        if !self.node.plugins.chain_has(&ns.name, Hook::Unsubscribe) {
            return;
        }
        let plugins = self.node.plugins.clone();
        let (conn, namespace) = (conn.clone(), ns.name.clone());
        let (channel, reason) = (channel.as_str().to_string(), reason.to_string());
        tokio::spawn(async move {
            let call = move |p: &crate::plugins::Plugins| {
                p.on_unsubscribe(&namespace, &conn, &channel, &reason)
            };
            // A full plugin queue skips the notification (counted by `offload`).
            let _ = plugins.offload(Hook::Unsubscribe, call).await;
        });
    }
}

/// A `history` read waiting for its chain.
pub(super) struct HookedRead {
    pub channel: ChannelName,
    pub ns: Arc<Namespace>,
    pub limit: Option<usize>,
    pub since: Option<StreamPosition>,
    pub conn: Arc<PluginConn>,
}
