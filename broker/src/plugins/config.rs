//! `[plugins]` and `[plugins.modules.NAME]`: the plugin part of the config file, and its
//! validation. The root `crate::config::Config` holds a [`PluginsConfig`] and calls
//! [`PluginsConfig::validate`]; nothing here reads the rest of the config.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::validation::Problems;

use super::types::Hook;

/// What happens to an event when a plugin fails (trap, deadline, memory cap, bad answer).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnError {
    /// Refuse the event (fail closed).
    #[default]
    Reject,
    /// Carry on as if the plugin had allowed it (fail open).
    Allow,
}

/// `[plugins]`: WebAssembly plugins, their limits and where they run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PluginsConfig {
    /// Whether plugins load at all.
    pub enabled: bool,
    /// Where plugin modules are loaded from and watched: in a file, relative to the file
    /// (`Config::load` resolves it); `HOOKWIRE_PLUGINS_DIR` and the embedded default,
    /// relative to the working directory.
    pub dir: String,
    /// Compiled modules, by sha256: native code, so a private directory (0700, the
    /// broker's user, not a symlink; otherwise refused) outside `dir`, its entries tagged
    /// with a key in `<cache_dir>.key` (empty: `$XDG_CACHE_HOME/hookwire/plugins`, else
    /// `$HOME/.cache/hookwire/plugins`; `off`: no cache).
    pub cache_dir: String,
    /// Reload when a `.wasm` file in `dir` changes.
    pub watch: bool,
    /// Append-only JSONL audit trail of plugin decisions (empty: the `audit` log target only).
    pub audit_file: String,
    /// Deadline of one hook call, in milliseconds of CPU time (checked every 1 ms
    /// epoch tick; preempted time does not count; 10× this in wall time stops a call
    /// regardless).
    pub timeout_ms: u64,
    /// Memory cap of one plugin instance, in MiB.
    pub memory_mib: u32,
    /// Largest answer of one hook call (new data, meta, channels, emitted publications), in bytes.
    pub max_output_bytes: usize,
    /// `reject` (fail closed) or `allow` (fail open).
    pub on_error: OnError,
    /// Warm instances kept per plugin (0: one per CPU).
    pub instances: usize,
    /// Keys one plugin's shared `state` may hold (every instance and version of it).
    pub state_max_keys: usize,
    /// Bytes (keys and values) one plugin's shared `state` may hold.
    pub state_max_bytes: usize,
    /// Instances that may exist at once over every plugin (the pooling allocator's slots).
    pub max_instances: u32,
    /// Threads that run the hook calls of connections, off the async workers (0: one
    /// per CPU).
    pub threads: usize,
    /// Hook calls that may wait for a plugin thread; one more is refused `unavailable`.
    pub queue: usize,
    /// A publish chain whose plugins have kept every call under this much CPU time (in
    /// ms, as the call deadline measures it: 1 ms ticks) runs on the connection's own
    /// thread, saving two thread hand-offs per publication; a plugin with one call over
    /// it runs on the plugin threads from then on (until it is reloaded), so at most one
    /// call per version (bounded by its deadline) holds a connection thread. 0: always
    /// on the plugin threads.
    pub inline_max_cpu_ms: u64,
    /// WebAssembly stack of one call, in KiB.
    pub max_stack_kib: usize,
    /// Plugins whose `connect` and `disconnect` hooks run, in order.
    pub connection: Vec<String>,
    /// The plugins, by name (each binds to namespaces through `namespaces.NAME.plugins`).
    pub modules: BTreeMap<String, PluginModuleConfig>,
}

/// `[plugins.modules.NAME]`: one plugin.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PluginModuleConfig {
    /// The module, relative to `plugins.dir` (empty: `NAME.wasm`, which must hold the
    /// plugin called NAME; another file may run a plugin under a name of its own).
    pub file: String,
    /// Hooks to call: any of `connect`, `subscribe`, `unsubscribe`, `publish`,
    /// `refresh`, `history`, `disconnect` (empty: every hook the plugin implements). A
    /// misspelt hook fails the parse, naming the key, the value and the ones allowed.
    pub hooks: Vec<Hook>,
    /// Overrides `plugins.on_error`.
    pub on_error: Option<OnError>,
    /// Overrides `plugins.timeout_ms` (0: inherit).
    pub timeout_ms: u64,
    /// Overrides `plugins.memory_mib` (0: inherit).
    pub memory_mib: u32,
    /// Overrides `plugins.state_max_keys` (0: inherit).
    pub state_max_keys: usize,
    /// Overrides `plugins.state_max_bytes` (0: inherit).
    pub state_max_bytes: usize,
    /// Pins the module: the file's SHA-256 (64 hex digits, as `hookwire plugin inspect`
    /// prints it) must be this, or it is refused (a reload keeps the running version).
    /// Empty: any file.
    pub sha256: String,
    /// The plugin's own configuration, given to its `init` as JSON.
    pub config: toml::Table,
    /// A new version taking a stable share of the events (by connection or channel):
    /// `canary = { file = "x-v2.wasm", percent = 10 }`.
    pub canary: Option<CanaryConfig>,
    /// A new version run on a copy of each event, its answer compared with the live
    /// version's and never applied: `shadow = "x-v2.wasm"` (or a table like `canary`'s
    /// without `percent` and `by`).
    pub shadow: Option<ShadowConfig>,
}

/// What a canary's share is stable by.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CanaryBy {
    /// Every event of a connection goes to the same version (events without a
    /// connection, such as server-API publications, go by channel).
    #[default]
    Connection,
    /// Every event of a channel goes to the same version (connect and disconnect, which
    /// have no channel, go by connection).
    Channel,
}

/// `[plugins.modules.NAME.canary]`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CanaryConfig {
    /// The new version's module, relative to `plugins.dir`.
    pub file: String,
    /// Percent of events (0 to 100) the new version handles.
    pub percent: u8,
    pub by: CanaryBy,
    /// Pins the new version's file, as `sha256` does the module's.
    pub sha256: String,
    /// The new version's `init` configuration (absent: the module's).
    pub config: Option<toml::Table>,
}

/// `[plugins.modules.NAME] shadow`: a file name, or a table.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ShadowConfig {
    File(String),
    Version(ShadowVersion),
}

/// `[plugins.modules.NAME.shadow]` as a table.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ShadowVersion {
    pub file: String,
    pub sha256: String,
    pub config: Option<toml::Table>,
}

impl ShadowConfig {
    /// The table form (a bare file name is a table with only `file`).
    pub fn version(&self) -> ShadowVersion {
        match self {
            Self::File(file) => ShadowVersion {
                file: file.clone(),
                ..ShadowVersion::default()
            },
            Self::Version(v) => v.clone(),
        }
    }
}

impl Default for PluginsConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            dir: "plugins/dist".into(),
            cache_dir: String::new(),
            watch: true,
            audit_file: String::new(),
            timeout_ms: 10,
            memory_mib: 32,
            max_output_bytes: 65_536,
            on_error: OnError::Reject,
            instances: 0,
            state_max_keys: 10_000,
            state_max_bytes: 1 << 20,
            max_instances: 256,
            threads: 0,
            queue: 1024,
            inline_max_cpu_ms: 1,
            max_stack_kib: 512,
            connection: Vec::new(),
            modules: BTreeMap::new(),
        }
    }
}

impl PluginsConfig {
    /// Adds every problem of `[plugins]` to `errs`, each naming the key, the value and
    /// what is allowed. `bindings` are the namespaces' plugin lists
    /// (`namespaces.NAME.plugins`): namespace name → plugin names.
    pub fn validate<'a>(
        &self,
        bindings: impl IntoIterator<Item = (&'a str, &'a [String])>,
        errs: &mut Problems,
    ) {
        let p = self;
        errs.range("plugins.timeout_ms", p.timeout_ms, 1, 10_000);
        errs.range("plugins.memory_mib", u64::from(p.memory_mib), 1, 4_096);
        errs.range(
            "plugins.max_output_bytes",
            p.max_output_bytes as u64,
            64,
            64 << 20,
        );
        errs.range(
            "plugins.max_instances",
            u64::from(p.max_instances),
            8,
            100_000,
        );
        errs.range("plugins.threads", p.threads as u64, 0, 1_024);
        errs.range(
            "plugins.state_max_keys",
            p.state_max_keys as u64,
            1,
            10_000_000,
        );
        errs.range(
            "plugins.state_max_bytes",
            p.state_max_bytes as u64,
            1_024,
            1 << 32,
        );
        errs.range("plugins.queue", p.queue as u64, 1, 1_000_000);
        errs.range("plugins.inline_max_cpu_ms", p.inline_max_cpu_ms, 0, 10_000);
        errs.range("plugins.max_stack_kib", p.max_stack_kib as u64, 64, 65_536);
        for (name, m) in &p.modules {
            m.validate(&format!("plugins.modules.{name}"), name, errs);
        }
        let bound = p
            .connection
            .iter()
            .map(|n| ("plugins.connection".to_string(), n))
            .chain(bindings.into_iter().flat_map(|(ns, names)| {
                names
                    .iter()
                    .map(move |n| (format!("namespaces.{ns}.plugins"), n))
            }));
        for (key, name) in bound {
            if !p.modules.contains_key(name) {
                errs.push(format!(
                    "{key} names plugin {name:?}, which has no [plugins.modules.{name}] section"
                ));
            }
        }
    }
}

impl PluginModuleConfig {
    /// The problems of `[plugins.modules.NAME]` (`key`).
    fn validate(&self, key: &str, name: &str, errs: &mut Problems) {
        if name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            errs.push(format!("{key}: a plugin name is 1 or more of a-z 0-9 -"));
        }
        if self.timeout_ms > 0 {
            errs.range(&format!("{key}.timeout_ms"), self.timeout_ms, 1, 10_000);
        }
        if self.memory_mib > 0 {
            errs.range(
                &format!("{key}.memory_mib"),
                u64::from(self.memory_mib),
                1,
                4_096,
            );
        }
        check_file(&format!("{key}.file"), &self.file, errs);
        check_pin(&format!("{key}.sha256"), &self.sha256, errs);
        if let Some(canary) = &self.canary {
            let key = format!("{key}.canary");
            if canary.file.is_empty() {
                errs.push(format!("{key}.file: the new version's file is required"));
            }
            check_file(&format!("{key}.file"), &canary.file, errs);
            check_pin(&format!("{key}.sha256"), &canary.sha256, errs);
            errs.range(&format!("{key}.percent"), canary.percent.into(), 0, 100);
        }
        if let Some(shadow) = &self.shadow {
            let v = shadow.version();
            if v.file.is_empty() {
                errs.push(format!(
                    "{key}.shadow: the shadow version's file is required"
                ));
            }
            check_file(&format!("{key}.shadow.file"), &v.file, errs);
            check_pin(&format!("{key}.shadow.sha256"), &v.sha256, errs);
        }
    }
}

fn check_file(key: &str, file: &str, errs: &mut Problems) {
    if file.contains("..") {
        errs.push(format!("{key} = {file:?}: must stay inside plugins.dir"));
    }
}

fn check_pin(key: &str, pin: &str, errs: &mut Problems) {
    if !pin.is_empty() && (pin.len() != 64 || !pin.bytes().all(|b| b.is_ascii_hexdigit())) {
        errs.push(format!(
            "{key} = {pin:?}: must be 64 hex digits (hookwire plugin inspect prints the file's), or empty"
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize)]
    struct Root {
        plugins: PluginsConfig,
    }

    fn parse(text: &str) -> Result<PluginsConfig, String> {
        // As `Config::load` does: the file as a table first, then the typed config.
        let table: toml::Table = toml::from_str(text).map_err(|e| e.to_string())?;
        table
            .try_into::<Root>()
            .map(|r| r.plugins)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn a_pin_must_be_a_sha256() {
        let check = |pin: &str| {
            let p = parse(&format!("[plugins.modules.x]\nsha256 = \"{pin}\"\n")).unwrap();
            let mut errs = Problems::default();
            p.modules["x"].validate("plugins.modules.x", "x", &mut errs);
            errs.into_result()
        };
        assert!(check(&"ab".repeat(32)).is_ok());
        assert!(check("").is_ok());
        let e = check("abc").unwrap_err().join("\n");
        assert!(
            e.contains("plugins.modules.x.sha256") && e.contains("64 hex digits"),
            "{e}"
        );
    }

    #[test]
    fn canary_and_shadow_are_read_and_checked() {
        let p = parse(
            "[plugins.modules.x]\ncanary = { file = \"x-v2.wasm\", percent = 10, by = \"channel\" }\nshadow = \"x-v3.wasm\"\n",
        )
        .unwrap();
        let x = &p.modules["x"];
        let canary = x.canary.as_ref().unwrap();
        assert_eq!((canary.file.as_str(), canary.percent), ("x-v2.wasm", 10));
        assert_eq!(canary.by, CanaryBy::Channel);
        assert_eq!(x.shadow.as_ref().unwrap().version().file, "x-v3.wasm");
        let p = parse("[plugins.modules.x]\nshadow = { file = \"y.wasm\", config = { a = 1 } }\n")
            .unwrap();
        let shadow = p.modules["x"].shadow.as_ref().unwrap().version();
        assert_eq!(shadow.file, "y.wasm");
        assert!(shadow.config.is_some());

        let p = parse(
            "[plugins.modules.x]\ncanary = { file = \"../x.wasm\", percent = 101 }\nshadow = { sha256 = \"no\" }\n",
        )
        .unwrap();
        let mut errs = Problems::default();
        p.modules["x"].validate("plugins.modules.x", "x", &mut errs);
        let e = errs.into_result().unwrap_err().join("\n");
        for part in [
            "plugins.modules.x.canary.file = \"../x.wasm\": must stay inside plugins.dir",
            "plugins.modules.x.canary.percent",
            "plugins.modules.x.shadow: the shadow version's file is required",
            "plugins.modules.x.shadow.sha256",
        ] {
            assert!(e.contains(part), "{part:?} not in {e}");
        }
    }

    #[test]
    fn hooks_are_read_and_written_as_their_names() {
        let p = parse("[plugins.modules.x]\nhooks = [\"connect\", \"publish\"]\n").unwrap();
        assert_eq!(p.modules["x"].hooks, [Hook::Connect, Hook::Publish]);
        let text = toml::to_string(&p.modules["x"]).unwrap();
        assert!(text.contains(r#"hooks = ["connect", "publish"]"#), "{text}");
    }

    #[test]
    fn a_misspelt_hook_names_the_key_the_value_and_the_allowed_ones() {
        let e = parse("[plugins.modules.x]\nhooks = [\"conect\"]\n").unwrap_err();
        for part in [
            "plugins.modules.x.hooks",
            "conect",
            "connect",
            "subscribe",
            "publish",
            "disconnect",
        ] {
            assert!(e.contains(part), "{part:?} not in {e:?}");
        }
    }

    #[test]
    fn validation_names_unknown_plugins_bound_anywhere() {
        let p = PluginsConfig {
            connection: vec!["gone".into()],
            modules: BTreeMap::from([("ok".into(), PluginModuleConfig::default())]),
            ..PluginsConfig::default()
        };
        let chat = vec!["ok".to_string(), "missing".to_string()];
        let mut errs = Problems::default();
        p.validate([("chat", chat.as_slice())], &mut errs);
        assert_eq!(
            errs.into_result().unwrap_err(),
            [
                "plugins.connection names plugin \"gone\", which has no [plugins.modules.gone] section",
                "namespaces.chat.plugins names plugin \"missing\", which has no [plugins.modules.missing] section",
            ]
        );
    }
}
