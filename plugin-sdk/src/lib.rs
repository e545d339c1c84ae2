#![doc = include_str!("../README.md")]
//!
//! # Layout
//!
//! * [`Plugin`] (this file): the trait a plugin implements, and [`export!`].
//! * [`Connection`] (`connection.rs`): a client connection as hooks see it.
//! * [`Publication`] (`publication.rs`): a publication being processed, and the
//!   [`Edits`] a hook makes to it.
//! * `decision.rs`: constructors and checks on [`Decision`] and [`ConnectDecision`].
//! * [`log`] and [`time`]: the host's log and clocks (stand-ins when run natively).
//! * [`state`] and [`metrics`]: state shared by the plugin's instances, and metrics
//!   on the broker's `/metrics` (in-memory stand-ins when run natively).
//! * `hooks.rs`: [`Hooks`], the set of hooks a plugin implements.
//! * [`text`]: chat-text helpers (`@mentions`).
//! * `export.rs`: the glue between the generated component bindings and [`Plugin`].

mod connection;
mod decision;
mod export;
mod hooks;
pub mod log;
pub mod metrics;
mod publication;
pub mod state;
pub mod text;
pub mod time;

pub use connection::Connection;
pub use publication::{Edits, Emitted, Publication};
pub use serde_json::{self, Value, json};

pub use bindings::hookwire::plugin::types::{
    ConnectDecision, Decision, EntryEdit, HistoryDecision, HistoryEntry, PublishSource,
    RefreshDecision, Refusal, Transport,
};
pub use hooks::Hooks;

/// Bindings generated from the crate's own copy of `wit/hookwire.wit` (so the crate
/// can be published on its own; a test keeps the copy equal to the repository's, the
/// single source of truth for the contract). Plugin authors use the types
/// re-exported at the crate root instead.
#[doc(hidden)]
#[allow(unsafe_code, missing_docs, clippy::all)]
pub mod bindings {
    wit_bindgen::generate!({
        world: "plugin",
        path: "wit",
        // `export!` is expanded in the plugin's crate, not here.
        pub_export_macro: true,
        // Plugin tests compare decisions with `assert_eq!`.
        additional_derives: [PartialEq],
    });
}

/// A Hookwire plugin: its identity, its configuration and its hooks.
///
/// The broker creates the plugin with [`Plugin::init`] once per instance and keeps
/// it between calls, so fields are a fine place for parsed configuration and
/// per-instance state. Instances do not share state, and an instance that fails
/// (a panic, a timeout, too much memory) is thrown away and a fresh one is made.
///
/// Every hook has a default that lets everything through, but the broker calls only
/// the hooks named in [`Plugin::HOOKS`]: declare each hook you override. (The crate
/// exports every hook interface of the contract and names these in `plugin-info`.)
pub trait Plugin: Sized + 'static {
    /// Short name, `[a-z0-9-]`, used in logs, metrics and the audit trail.
    const NAME: &'static str;
    /// Semver; `env!("CARGO_PKG_VERSION")` keeps it in step with the crate.
    const VERSION: &'static str;
    /// The hooks the broker calls, e.g. `Hooks::PUBLISH.union(Hooks::SUBSCRIBE)`.
    const HOOKS: Hooks;

    /// Creates the plugin from its configuration (`{}` when the broker config gives
    /// none). An error aborts the load, and the broker reports the message.
    fn init(config: Value) -> Result<Self, String>;

    /// A client has authenticated and is about to get `connected`.
    fn on_connect(&mut self, conn: &Connection) -> ConnectDecision {
        let _ = conn;
        ConnectDecision::Accept
    }

    /// A connection asks to subscribe to `channel`; the broker's own permission
    /// checks have passed.
    fn on_subscribe(&mut self, conn: &Connection, channel: &str) -> Decision {
        let _ = (conn, channel);
        Decision::Allow
    }

    /// A subscription ended while the connection stays: the client unsubscribed
    /// (`reason` "client") or the broker removed it ("permission"). It cannot stop
    /// anything.
    fn on_unsubscribe(&mut self, conn: &Connection, channel: &str, reason: &str) {
        let _ = (conn, channel, reason);
    }

    /// A publication is about to be routed. Changes made through `publication`
    /// (`set_data`, `add_meta`, `emit`, ...) are sent back with an allow; a refusal
    /// drops them.
    fn on_publish(&mut self, publication: &mut Publication) -> Decision {
        let _ = publication;
        Decision::Allow
    }

    /// The client sent a new token (same `sub`), already verified: `conn` is the
    /// connection as it is, `claims` the new token's claims. Allow it, refuse it (the
    /// connection keeps its current token), or replace the metadata this plugin gave.
    fn on_refresh(&mut self, conn: &Connection, claims: &Value) -> RefreshDecision {
        let _ = (conn, claims);
        RefreshDecision::Allow
    }

    /// A client is about to read `entries` of `channel`'s history (a `history`
    /// request; in a namespace with this hook a recovering subscribe answers
    /// `recovered: false` instead, so the client reads history through it). Keep, drop
    /// or rewrite each for this reader, or refuse.
    fn on_history(
        &mut self,
        conn: &Connection,
        channel: &str,
        entries: &[HistoryEntry],
    ) -> HistoryDecision {
        let _ = (conn, channel, entries);
        HistoryDecision::Allow
    }

    /// A connection has gone away; `reason` says why. It cannot stop anything.
    fn on_disconnect(&mut self, conn: &Connection, reason: &str) {
        let _ = (conn, reason);
    }
}

/// Deserializes a plugin's configuration into `T`, with an error message fit for
/// [`Plugin::init`] (the broker shows it when the load fails).
///
/// ```
/// #[derive(Debug, serde::Deserialize)]
/// struct Config {
///     #[serde(default)]
///     words: Vec<String>,
/// }
/// let config: Config = hookwire_plugin::parse_config(serde_json::json!({})).unwrap();
/// assert!(config.words.is_empty());
/// let err = hookwire_plugin::parse_config::<Config>(serde_json::json!({"words": 1}));
/// assert!(err.unwrap_err().starts_with("invalid config: "));
/// ```
pub fn parse_config<T: serde::de::DeserializeOwned>(config: Value) -> Result<T, String> {
    serde_json::from_value(config).map_err(|e| format!("invalid config: {e}"))
}

/// What most plugins need: `use hookwire_plugin::prelude::*;`.
pub mod prelude {
    pub use crate::{
        ConnectDecision, Connection, Decision, EntryEdit, HistoryDecision, HistoryEntry, Hooks,
        Plugin, Publication, PublishSource, RefreshDecision, Transport, Value, export, json,
        parse_config,
    };
}

/// Makes a type implementing [`Plugin`] the plugin of this component.
///
/// Use it once, in the plugin's `lib.rs`. It exports the contract's functions; the
/// plugin value made by [`Plugin::init`] lives in the instance until the broker
/// drops it. A native build (`cargo test`) exports nothing.
#[macro_export]
macro_rules! export {
    ($plugin:ty) => {
        // The generated exports are `unsafe extern "C"` functions with fixed symbol
        // names; the plugin's own code stays free of `unsafe`.
        #[allow(unsafe_code)]
        const _: () = {
            ::std::thread_local! {
                static STATE: ::core::cell::RefCell<::core::option::Option<$plugin>> =
                    const { ::core::cell::RefCell::new(::core::option::Option::None) };
            }
            impl $crate::__private::Exported for $plugin {
                fn state() -> &'static ::std::thread::LocalKey<
                    ::core::cell::RefCell<::core::option::Option<Self>>,
                > {
                    &STATE
                }
            }
            // The generated macro takes an identifier, not a generic path. Native
            // builds export nothing: the symbol names are not linkable there.
            #[cfg(target_arch = "wasm32")]
            type HookwireAdapter = $crate::__private::Adapter<$plugin>;
            #[cfg(target_arch = "wasm32")]
    $crate::bindings::export!(HookwireAdapter with_types_in $crate::bindings);
        };
    };
}

#[doc(hidden)]
pub mod __private {
    pub use crate::export::{Adapter, Exported};
}

#[cfg(test)]
mod wit_copy {
    #[test]
    fn the_crates_wit_is_the_repositorys() {
        assert!(
            include_str!("../wit/hookwire.wit") == include_str!("../../wit/hookwire.wit"),
            "plugin-sdk/wit/hookwire.wit differs from wit/hookwire.wit: copy it over"
        );
    }
}
