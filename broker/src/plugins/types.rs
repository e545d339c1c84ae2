//! What the plugin runtime's parts share: its error type, plugin identity and limits,
//! and the hooks.

use serde::{Deserialize, Serialize};

/// What can go wrong loading or calling a plugin. Call failures (`Trap` … `BadOutput`)
/// replace the instance and follow the plugin's `on_error` policy.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read {path}: {message}")]
    Read { path: String, message: String },
    #[error("not a WebAssembly component this broker can compile: {0}")]
    Compile(String),
    #[error("not a plugin component: {0}")]
    NotComponent(String),
    #[error(
        "its sha256 is {actual}, but the config pins {pinned}; put the pinned file in place, or change sha256 in [plugins.modules] to deploy this one"
    )]
    Pinned { actual: String, pinned: String },
    #[error(
        "imports {import}, which the broker does not provide ({why}); remove that dependency from the plugin"
    )]
    Import { import: String, why: &'static str },
    #[error("does not fit the hookwire:plugin contract (0.2.0, or the 0.1.0 `plugin` world): {0}")]
    Exports(String),
    #[error("init failed: {0}")]
    Init(String),
    #[error(
        "calls itself {declared:?}, but the config loads it as {configured:?}; name the module {declared:?}, or set its `file` to run it under another name"
    )]
    Name {
        declared: String,
        configured: String,
    },
    #[error("the config binds it to hook(s) {0} that it does not implement")]
    Hooks(String),
    #[error("plugin engine: {0}")]
    Engine(String),
    #[error("trapped: {0}")]
    Trap(String),
    #[error("ran past its {ms} ms deadline")]
    Timeout { ms: u64 },
    #[error("went over its memory cap of {mib} MiB")]
    MemoryExceeded { mib: usize },
    #[error("answered {bytes} bytes, over its output cap of {max}")]
    OutputTooLarge { bytes: usize, max: usize },
    #[error("gave an answer the broker cannot use: {0}")]
    BadOutput(String),
}

impl Error {
    /// The `kind` label of `hookwire_plugin_errors_total`.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Timeout { .. } => "timeout",
            Self::MemoryExceeded { .. } => "memory",
            Self::OutputTooLarge { .. } | Self::BadOutput(_) => "output",
            Self::Trap(_) => "trap",
            _ => "load",
        }
    }
}

/// Which version of which plugin: tags every log line, metric and audit record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginId {
    pub name: String,
    pub version: String,
    pub sha256: String,
}

/// Hard limits of one plugin's instances.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginLimits {
    pub timeout_ms: u64,
    pub memory_bytes: usize,
    pub max_output_bytes: usize,
}

/// The hooks. In the config they are spelled by their labels (`plugins.modules.NAME.hooks`);
/// in the contract each is an interface, `on-LABEL`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Hook {
    Connect,
    Subscribe,
    Unsubscribe,
    Publish,
    Refresh,
    History,
    Disconnect,
}

impl Hook {
    pub const ALL: [Hook; 7] = [
        Self::Connect,
        Self::Subscribe,
        Self::Unsubscribe,
        Self::Publish,
        Self::Refresh,
        Self::History,
        Self::Disconnect,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Self::Connect => "connect",
            Self::Subscribe => "subscribe",
            Self::Unsubscribe => "unsubscribe",
            Self::Publish => "publish",
            Self::Refresh => "refresh",
            Self::History => "history",
            Self::Disconnect => "disconnect",
        }
    }

    /// The hook a label names (`None`: not a hook this broker knows).
    pub fn from_label(label: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|h| h.label() == label)
    }

    pub(super) fn index(self) -> usize {
        self as usize
    }
}

/// A set of hooks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HookSet(u8);

impl HookSet {
    pub fn contains(self, hook: Hook) -> bool {
        self.0 & (1 << hook.index()) != 0
    }

    pub fn with(self, hook: Hook) -> Self {
        Self(self.0 | (1 << hook.index()))
    }

    /// The hooks in the set, in [`Hook::ALL`] order.
    pub fn iter(self) -> impl Iterator<Item = Hook> {
        Hook::ALL.into_iter().filter(move |h| self.contains(*h))
    }

    /// Their labels, in [`Hook::ALL`] order.
    pub fn names(self) -> Vec<&'static str> {
        self.iter().map(Hook::label).collect()
    }
}

impl FromIterator<Hook> for HookSet {
    fn from_iter<I: IntoIterator<Item = Hook>>(hooks: I) -> Self {
        hooks.into_iter().fold(Self::default(), Self::with)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_config_spells_each_hook_as_its_label() {
        for hook in Hook::ALL {
            let quoted = format!("{:?}", hook.label());
            assert_eq!(serde_json::to_string(&hook).unwrap(), quoted);
            assert_eq!(serde_json::from_str::<Hook>(&quoted).unwrap(), hook);
        }
    }
}

/// A failed load, kept for `/admin/plugins` until that plugin loads again.
#[derive(Debug, Clone, Serialize)]
pub struct Failure {
    pub name: String,
    pub file: String,
    pub error: String,
    pub at_ms: u64,
}

/// What a reload did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ReloadReport {
    pub generation: u64,
    pub changed: Vec<String>,
    pub unchanged: Vec<String>,
    pub failed: Vec<Failure>,
    /// `.wasm` files in `plugins.dir` that no module loads (each with a hint).
    pub ignored: Vec<String>,
    /// Time spent reading, compiling, instantiating and initialising, in milliseconds.
    pub took_ms: f64,
}
