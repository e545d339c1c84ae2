//! The 0.1.0 contract (`wit/0.1.0/`): plugins built against it keep loading. Its host
//! interfaces are served by the 0.2.0 implementations, and its answers are converted
//! to 0.2.0 types (a refusal without a code), so the rest of the runtime knows one
//! contract.

use wasmtime::component::Resource;

pub use super::host::PublicationResource;
use super::host::{
    self, ConnectDecision, Connection, Decision, ExtraPublication, MetaField, PublishDecision,
    PublishEdit, PublishSource, StoreData, WitRefusal,
};
use super::types::{Hook, HookSet};

// Generated code has `unsafe` blocks of its own (see `host`).
#[allow(unsafe_code)]
mod bindings {
    wasmtime::component::bindgen!({
        world: "plugin",
        path: "../wit/0.1.0",
        imports: { default: trappable },
        with: {
            "hookwire:plugin/types.publication": super::PublicationResource,
        },
    });
}

pub use bindings::Plugin as LegacyBindings;
pub use bindings::PluginPre as LegacyPre;
pub use bindings::exports::hookwire::plugin::hooks::HookSet as LegacyHooks;
use bindings::hookwire::plugin::host::{Host, LogLevel};
use bindings::hookwire::plugin::types as v1;

/// The export that marks a 0.1.0 component.
pub const EXPORT: &str = "hookwire:plugin/hooks@0.1.0";

/// The hooks a 0.1.0 `hook-set` names.
pub fn hooks(set: LegacyHooks) -> HookSet {
    [
        (LegacyHooks::CONNECT, Hook::Connect),
        (LegacyHooks::SUBSCRIBE, Hook::Subscribe),
        (LegacyHooks::PUBLISH, Hook::Publish),
        (LegacyHooks::DISCONNECT, Hook::Disconnect),
    ]
    .into_iter()
    .filter(|(flag, _)| set.contains(*flag))
    .map(|(_, hook)| hook)
    .collect()
}

fn refusal(reason: String) -> WitRefusal {
    WitRefusal { reason, code: None }
}

pub fn connection(c: &Connection) -> v1::Connection {
    use host::Transport;
    v1::Connection {
        id: c.id,
        client: c.client.clone(),
        user: c.user.clone(),
        claims: c.claims.clone(),
        transport: match c.transport {
            Transport::Websocket => v1::Transport::Websocket,
            Transport::Webtransport => v1::Transport::Webtransport,
            Transport::Other => v1::Transport::Other,
        },
        remote_addr: c.remote_addr.clone(),
        meta: c.meta.clone(),
    }
}

pub fn connect_decision(d: v1::ConnectDecision) -> ConnectDecision {
    match d {
        v1::ConnectDecision::Accept => ConnectDecision::Accept,
        v1::ConnectDecision::AcceptWithMeta(meta) => ConnectDecision::AcceptWithMeta(meta),
        v1::ConnectDecision::Refuse(reason) => ConnectDecision::Refuse(refusal(reason)),
    }
}

pub fn decision(d: v1::Decision) -> Decision {
    match d {
        v1::Decision::Allow => Decision::Allow,
        v1::Decision::Refuse(reason) => Decision::Refuse(refusal(reason)),
    }
}

fn meta_fields(fields: Vec<v1::MetaField>) -> Vec<MetaField> {
    fields
        .into_iter()
        .map(|f| MetaField {
            key: f.key,
            value: f.value,
        })
        .collect()
}

pub fn publish_decision(d: v1::PublishDecision) -> PublishDecision {
    match d {
        v1::PublishDecision::Allow => PublishDecision::Allow,
        v1::PublishDecision::Refuse(reason) => PublishDecision::Refuse(refusal(reason)),
        v1::PublishDecision::Modify(edit) => PublishDecision::Modify(PublishEdit {
            data: edit.data,
            add_meta: meta_fields(edit.add_meta),
            set_channels: edit.set_channels,
            add_channels: edit.add_channels,
            emit: (edit.emit.into_iter())
                .map(|e| ExtraPublication {
                    channel: e.channel,
                    data: e.data,
                    meta: meta_fields(e.meta),
                })
                .collect(),
        }),
    }
}

impl Host for StoreData {
    fn log(&mut self, level: LogLevel, message: String) -> wasmtime::Result<()> {
        use host::LogLevel as L;
        let level = match level {
            LogLevel::Trace => L::Trace,
            LogLevel::Debug => L::Debug,
            LogLevel::Info => L::Info,
            LogLevel::Warn => L::Warn,
            LogLevel::Error => L::Error,
        };
        host::HostApi::log(self, level, message)
    }

    fn now_unix_nanos(&mut self) -> wasmtime::Result<u64> {
        host::HostApi::now_unix_nanos(self)
    }

    fn monotonic_nanos(&mut self) -> wasmtime::Result<u64> {
        host::HostApi::monotonic_nanos(self)
    }
}

impl v1::Host for StoreData {}

type Handle = Resource<PublicationResource>;

impl v1::HostPublication for StoreData {
    fn source(&mut self, h: Handle) -> wasmtime::Result<v1::PublishSource> {
        Ok(match host::HostPublication::source(self, h)? {
            PublishSource::Client => v1::PublishSource::Client,
            PublishSource::Nats => v1::PublishSource::Nats,
            // 0.1.0 has no `other`: a source it cannot name is not a client's.
            PublishSource::Api | PublishSource::Other => v1::PublishSource::Api,
        })
    }

    fn channels(&mut self, h: Handle) -> wasmtime::Result<Vec<String>> {
        host::HostPublication::channels(self, h)
    }

    fn user(&mut self, h: Handle) -> wasmtime::Result<Option<String>> {
        host::HostPublication::user(self, h)
    }

    fn data_len(&mut self, h: Handle) -> wasmtime::Result<u64> {
        host::HostPublication::data_len(self, h)
    }

    fn data(&mut self, h: Handle) -> wasmtime::Result<Vec<u8>> {
        host::HostPublication::data(self, h)
    }

    fn data_range(&mut self, h: Handle, offset: u64, len: u64) -> wasmtime::Result<Vec<u8>> {
        host::HostPublication::data_range(self, h, offset, len)
    }

    fn meta(&mut self, h: Handle) -> wasmtime::Result<String> {
        host::HostPublication::meta(self, h)
    }

    fn connection(&mut self, h: Handle) -> wasmtime::Result<Option<v1::Connection>> {
        Ok(host::HostPublication::connection(self, h)?.map(|c| connection(&c)))
    }

    fn claim(&mut self, h: Handle, name: String) -> wasmtime::Result<Option<String>> {
        host::HostPublication::claim(self, h, name)
    }

    fn drop(&mut self, _: Handle) -> wasmtime::Result<()> {
        Ok(())
    }
}
