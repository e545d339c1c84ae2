//! The glue between the generated `Guest` trait and [`Plugin`]: [`export!`]
//! implements the generated exports with `Adapter<P>`, which keeps the plugin value
//! in a per-plugin slot that the macro declares.

use std::cell::RefCell;
use std::marker::PhantomData;
use std::thread::LocalKey;

use crate::bindings::exports::hookwire::plugin::{
    lifecycle, on_connect, on_disconnect, on_history, on_publish, on_refresh, on_subscribe,
    on_unsubscribe,
};
use crate::bindings::hookwire::plugin::types::{self as wit, PublishDecision};
use crate::{
    ConnectDecision, Connection, Decision, HistoryDecision, HistoryEntry, Plugin, Publication,
    RefreshDecision, Value,
};

/// A plugin type with its state slot; implemented by [`export!`](crate::export).
///
/// A `thread_local` rather than a `static`: it needs no `Sync` (the plugin may
/// hold `Rc`s), and on `wasm32-wasip2`, which has one thread, it is a plain global.
pub trait Exported: Plugin {
    fn state() -> &'static LocalKey<RefCell<Option<Self>>>;
}

/// Implements the generated exports for the plugin `P`.
pub struct Adapter<P>(PhantomData<P>);

impl<P: Exported> Adapter<P> {
    fn with_plugin<R>(hook: impl FnOnce(&mut P) -> R) -> R {
        P::state().with_borrow_mut(|slot| {
            let plugin = slot
                .as_mut()
                .expect("the broker calls hooks only after a successful init");
            hook(plugin)
        })
    }
}

impl<P: Exported> lifecycle::Guest for Adapter<P> {
    fn info() -> lifecycle::PluginInfo {
        lifecycle::PluginInfo {
            name: P::NAME.to_owned(),
            version: P::VERSION.to_owned(),
            hooks: Some(P::HOOKS.names()),
        }
    }

    fn init(config: String) -> Result<(), String> {
        install_panic_hook();
        let config = parse_config_text(&config)?;
        let plugin = P::init(config)?;
        P::state().set(Some(plugin));
        Ok(())
    }
}

impl<P: Exported> on_connect::Guest for Adapter<P> {
    fn on_connect(conn: wit::Connection) -> ConnectDecision {
        let conn = Connection::from(conn);
        Self::with_plugin(|plugin| plugin.on_connect(&conn))
    }
}

impl<P: Exported> on_subscribe::Guest for Adapter<P> {
    fn on_subscribe(conn: wit::Connection, channel: String) -> Decision {
        let conn = Connection::from(conn);
        Self::with_plugin(|plugin| plugin.on_subscribe(&conn, &channel))
    }
}

impl<P: Exported> on_unsubscribe::Guest for Adapter<P> {
    fn on_unsubscribe(conn: wit::Connection, channel: String, reason: String) {
        let conn = Connection::from(conn);
        Self::with_plugin(|plugin| plugin.on_unsubscribe(&conn, &channel, &reason));
    }
}

impl<P: Exported> on_publish::Guest for Adapter<P> {
    fn on_publish(publication: &wit::Publication) -> PublishDecision {
        let mut publication = Publication::from_host(publication);
        let decision = Self::with_plugin(|plugin| plugin.on_publish(&mut publication));
        publication.finish(decision)
    }
}

impl<P: Exported> on_refresh::Guest for Adapter<P> {
    fn on_refresh(conn: wit::Connection, claims: String) -> RefreshDecision {
        let conn = Connection::from(conn);
        let claims: Value = serde_json::from_str(&claims).unwrap_or_default();
        Self::with_plugin(|plugin| plugin.on_refresh(&conn, &claims))
    }
}

impl<P: Exported> on_history::Guest for Adapter<P> {
    fn on_history(
        conn: wit::Connection,
        channel: String,
        entries: Vec<HistoryEntry>,
    ) -> HistoryDecision {
        let conn = Connection::from(conn);
        Self::with_plugin(|plugin| plugin.on_history(&conn, &channel, &entries))
    }
}

impl<P: Exported> on_disconnect::Guest for Adapter<P> {
    fn on_disconnect(conn: wit::Connection, reason: String) {
        let conn = Connection::from(conn);
        Self::with_plugin(|plugin| plugin.on_disconnect(&conn, &reason));
    }
}

/// The broker passes `{}` when it has no configuration; an empty text is read the
/// same way so a hand-written test harness need not care.
fn parse_config_text(text: &str) -> Result<Value, String> {
    if text.trim().is_empty() {
        return Ok(Value::Object(Default::default()));
    }
    serde_json::from_str(text).map_err(|e| format!("config is not valid JSON: {e}"))
}

/// Sends panic messages to the broker's log: a panic traps the instance, and
/// without this the reason would only reach the (empty) sandbox's stderr.
#[cfg(target_arch = "wasm32")]
fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        let payload = info.payload();
        let message = (payload.downcast_ref::<&str>().copied())
            .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
            .unwrap_or("a panic without a message");
        let at = info
            .location()
            .map(|at| format!(" at {}:{}", at.file(), at.line()))
            .unwrap_or_default();
        crate::log::log(
            crate::log::Level::Error,
            &format!("panicked{at}: {message}"),
        );
    }));
}

/// Native builds are tests: the test harness's own hook reports panics.
#[cfg(not(target_arch = "wasm32"))]
fn install_panic_hook() {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_config_reads_as_an_empty_object() {
        assert_eq!(parse_config_text("").unwrap(), serde_json::json!({}));
        assert_eq!(
            parse_config_text(" {\"a\": 1} ").unwrap(),
            serde_json::json!({"a": 1})
        );
        let err = parse_config_text("{nope").unwrap_err();
        assert!(err.starts_with("config is not valid JSON"), "{err}");
    }
}
