//! Which contract a component fits, and calls into it. A 0.2.0 component exports
//! `lifecycle` and the hook interfaces it implements, each looked up on its own; a
//! 0.1.0 component exports the legacy `hooks` interface (see `legacy`). Callers see
//! one set of 0.2.0 types either way.

use wasmtime::Store;
use wasmtime::component::{InstancePre, Resource};

use super::host::exported::{
    lifecycle, on_connect, on_disconnect, on_history, on_publish, on_refresh, on_subscribe,
    on_unsubscribe,
};
use super::host::{
    ConnectDecision, Connection, Decision, HistoryDecision, HistoryEntry, PublicationResource,
    PublishDecision, RefreshDecision, StoreData,
};
use super::legacy::{self, LegacyBindings, LegacyPre};
use super::types::{Error, Hook, HookSet};

/// The export that marks a 0.2.0 component.
const LIFECYCLE: &str = "hookwire:plugin/lifecycle@0.2.0";

/// Who a plugin is and what the broker may call.
#[derive(Debug, Clone)]
pub struct PluginInfo {
    pub name: String,
    pub version: String,
    /// The hooks it implements (exported, and named in `plugin-info.hooks` when given).
    pub hooks: HookSet,
    /// `0.2.0`, or `0.1.0` for a legacy component.
    pub contract: &'static str,
}

/// The interface name of a hook in the 0.2.0 contract.
pub fn interface(hook: Hook) -> String {
    format!("hookwire:plugin/on-{}@0.2.0", hook.label())
}

/// A compiled, linked component, ready to instantiate.
pub enum Linked {
    Current(Box<CurrentPre>),
    Legacy(LegacyPre<StoreData>),
}

pub struct CurrentPre {
    pre: InstancePre<StoreData>,
    lifecycle: lifecycle::GuestIndices,
    connect: Option<on_connect::GuestIndices>,
    subscribe: Option<on_subscribe::GuestIndices>,
    unsubscribe: Option<on_unsubscribe::GuestIndices>,
    publish: Option<on_publish::GuestIndices>,
    refresh: Option<on_refresh::GuestIndices>,
    history: Option<on_history::GuestIndices>,
    disconnect: Option<on_disconnect::GuestIndices>,
}

/// One instance's exports.
pub enum Bindings {
    Current(Box<Current>),
    Legacy(LegacyBindings),
}

pub struct Current {
    lifecycle: lifecycle::Guest,
    connect: Option<on_connect::Guest>,
    subscribe: Option<on_subscribe::Guest>,
    unsubscribe: Option<on_unsubscribe::Guest>,
    publish: Option<on_publish::Guest>,
    refresh: Option<on_refresh::Guest>,
    history: Option<on_history::Guest>,
    disconnect: Option<on_disconnect::Guest>,
}

/// A hook interface's indices: `None` when the component does not export it, an error
/// when it exports it with other types.
fn optional<T>(
    pre: &InstancePre<StoreData>,
    hook: Hook,
    new: impl FnOnce(&InstancePre<StoreData>) -> wasmtime::Result<T>,
) -> Result<Option<T>, Error> {
    let name = interface(hook);
    if pre.component().get_export_index(None, &name).is_none() {
        return Ok(None);
    }
    new(pre)
        .map(Some)
        .map_err(|e| Error::Exports(format!("{name}: {e:#}")))
}

fn load<I, G>(
    indices: &Option<I>,
    load: impl FnOnce(&I) -> wasmtime::Result<G>,
) -> wasmtime::Result<Option<G>> {
    indices.as_ref().map(load).transpose()
}

impl Linked {
    pub fn new(pre: InstancePre<StoreData>) -> Result<Self, Error> {
        let component = pre.component();
        if component.get_export_index(None, LIFECYCLE).is_some() {
            let exports = |e: wasmtime::Error| Error::Exports(format!("{e:#}"));
            return Ok(Self::Current(Box::new(CurrentPre {
                lifecycle: lifecycle::GuestIndices::new(&pre).map_err(exports)?,
                connect: optional(&pre, Hook::Connect, on_connect::GuestIndices::new)?,
                subscribe: optional(&pre, Hook::Subscribe, on_subscribe::GuestIndices::new)?,
                unsubscribe: optional(&pre, Hook::Unsubscribe, on_unsubscribe::GuestIndices::new)?,
                publish: optional(&pre, Hook::Publish, on_publish::GuestIndices::new)?,
                refresh: optional(&pre, Hook::Refresh, on_refresh::GuestIndices::new)?,
                history: optional(&pre, Hook::History, on_history::GuestIndices::new)?,
                disconnect: optional(&pre, Hook::Disconnect, on_disconnect::GuestIndices::new)?,
                pre,
            })));
        }
        if component.get_export_index(None, legacy::EXPORT).is_some() {
            return LegacyPre::new(pre)
                .map(Self::Legacy)
                .map_err(|e| Error::Exports(format!("{e:#}")));
        }
        Err(Error::Exports(format!(
            "it exports neither {LIFECYCLE} nor {}; build it against wit/hookwire.wit",
            legacy::EXPORT
        )))
    }

    pub fn engine(&self) -> &wasmtime::Engine {
        match self {
            Self::Current(c) => c.pre.engine(),
            Self::Legacy(l) => l.engine(),
        }
    }

    pub fn instantiate(&self, store: &mut Store<StoreData>) -> wasmtime::Result<Bindings> {
        let c = match self {
            Self::Legacy(l) => return l.instantiate(store).map(Bindings::Legacy),
            Self::Current(c) => c,
        };
        let instance = c.pre.instantiate(&mut *store)?;
        let s = &mut *store;
        Ok(Bindings::Current(Box::new(Current {
            lifecycle: c.lifecycle.load(&mut *s, &instance)?,
            connect: load(&c.connect, |i| i.load(&mut *s, &instance))?,
            subscribe: load(&c.subscribe, |i| i.load(&mut *s, &instance))?,
            unsubscribe: load(&c.unsubscribe, |i| i.load(&mut *s, &instance))?,
            publish: load(&c.publish, |i| i.load(&mut *s, &instance))?,
            refresh: load(&c.refresh, |i| i.load(&mut *s, &instance))?,
            history: load(&c.history, |i| i.load(&mut *s, &instance))?,
            disconnect: load(&c.disconnect, |i| i.load(&mut *s, &instance))?,
        })))
    }
}

fn missing(hook: Hook) -> wasmtime::Error {
    wasmtime::Error::msg(format!("the plugin does not export {}", interface(hook)))
}

impl Current {
    fn exported(&self) -> HookSet {
        let present = [
            (Hook::Connect, self.connect.is_some()),
            (Hook::Subscribe, self.subscribe.is_some()),
            (Hook::Unsubscribe, self.unsubscribe.is_some()),
            (Hook::Publish, self.publish.is_some()),
            (Hook::Refresh, self.refresh.is_some()),
            (Hook::History, self.history.is_some()),
            (Hook::Disconnect, self.disconnect.is_some()),
        ];
        present
            .into_iter()
            .filter(|(_, p)| *p)
            .map(|(h, _)| h)
            .collect()
    }
}

impl Bindings {
    /// `info`; the inner error says why the answer does not fit what the component
    /// exports.
    pub fn info(
        &self,
        store: &mut Store<StoreData>,
    ) -> wasmtime::Result<Result<PluginInfo, String>> {
        let c = match self {
            Self::Legacy(l) => {
                let info = l.hookwire_plugin_hooks().call_info(store)?;
                return Ok(Ok(PluginInfo {
                    name: info.name,
                    version: info.version,
                    hooks: legacy::hooks(info.hooks),
                    contract: "0.1.0",
                }));
            }
            Self::Current(c) => c,
        };
        let info = c.lifecycle.call_info(store)?;
        let exported = c.exported();
        let hooks = match info.hooks {
            None => exported,
            Some(names) => {
                let named: HookSet = names.iter().filter_map(|n| Hook::from_label(n)).collect();
                if let Some(h) = named.iter().find(|h| !exported.contains(*h)) {
                    return Ok(Err(format!(
                        "plugin-info.hooks names {:?}, but the component does not export {}",
                        h.label(),
                        interface(h)
                    )));
                }
                named
            }
        };
        Ok(Ok(PluginInfo {
            name: info.name,
            version: info.version,
            hooks,
            contract: "0.2.0",
        }))
    }

    pub fn init(
        &self,
        store: &mut Store<StoreData>,
        config: &str,
    ) -> wasmtime::Result<Result<(), String>> {
        match self {
            Self::Current(c) => c.lifecycle.call_init(store, &config.to_string()),
            Self::Legacy(l) => l
                .hookwire_plugin_hooks()
                .call_init(store, &config.to_string()),
        }
    }

    pub fn on_connect(
        &self,
        store: &mut Store<StoreData>,
        conn: &Connection,
    ) -> wasmtime::Result<ConnectDecision> {
        match self {
            Self::Current(c) => (c.connect.as_ref().ok_or_else(|| missing(Hook::Connect))?)
                .call_on_connect(store, conn),
            Self::Legacy(l) => l
                .hookwire_plugin_hooks()
                .call_on_connect(store, &legacy::connection(conn))
                .map(legacy::connect_decision),
        }
    }

    pub fn on_subscribe(
        &self,
        store: &mut Store<StoreData>,
        conn: &Connection,
        channel: &str,
    ) -> wasmtime::Result<Decision> {
        match self {
            Self::Current(c) => (c
                .subscribe
                .as_ref()
                .ok_or_else(|| missing(Hook::Subscribe))?)
            .call_on_subscribe(store, conn, channel),
            Self::Legacy(l) => l
                .hookwire_plugin_hooks()
                .call_on_subscribe(store, &legacy::connection(conn), channel)
                .map(legacy::decision),
        }
    }

    pub fn on_publish(
        &self,
        store: &mut Store<StoreData>,
        publication: Resource<PublicationResource>,
    ) -> wasmtime::Result<PublishDecision> {
        match self {
            Self::Current(c) => (c.publish.as_ref().ok_or_else(|| missing(Hook::Publish))?)
                .call_on_publish(store, publication),
            Self::Legacy(l) => l
                .hookwire_plugin_hooks()
                .call_on_publish(store, publication)
                .map(legacy::publish_decision),
        }
    }

    pub fn on_disconnect(
        &self,
        store: &mut Store<StoreData>,
        conn: &Connection,
        reason: &str,
    ) -> wasmtime::Result<()> {
        match self {
            Self::Current(c) => (c.disconnect.as_ref())
                .ok_or_else(|| missing(Hook::Disconnect))?
                .call_on_disconnect(store, conn, reason),
            Self::Legacy(l) => l.hookwire_plugin_hooks().call_on_disconnect(
                store,
                &legacy::connection(conn),
                reason,
            ),
        }
    }

    fn current(&self, hook: Hook) -> wasmtime::Result<&Current> {
        match self {
            Self::Current(c) => Ok(c),
            Self::Legacy(_) => Err(missing(hook)),
        }
    }

    pub fn on_unsubscribe(
        &self,
        store: &mut Store<StoreData>,
        conn: &Connection,
        channel: &str,
        reason: &str,
    ) -> wasmtime::Result<()> {
        let c = self.current(Hook::Unsubscribe)?;
        (c.unsubscribe
            .as_ref()
            .ok_or_else(|| missing(Hook::Unsubscribe))?)
        .call_on_unsubscribe(store, conn, channel, reason)
    }

    pub fn on_refresh(
        &self,
        store: &mut Store<StoreData>,
        conn: &Connection,
        claims: &str,
    ) -> wasmtime::Result<RefreshDecision> {
        let c = self.current(Hook::Refresh)?;
        (c.refresh.as_ref().ok_or_else(|| missing(Hook::Refresh))?).call_on_refresh(
            store,
            conn,
            &claims.to_string(),
        )
    }

    pub fn on_history(
        &self,
        store: &mut Store<StoreData>,
        conn: &Connection,
        channel: &str,
        entries: &[HistoryEntry],
    ) -> wasmtime::Result<HistoryDecision> {
        let c = self.current(Hook::History)?;
        (c.history.as_ref().ok_or_else(|| missing(Hook::History))?)
            .call_on_history(store, conn, channel, entries)
    }
}
