//! `hookwire plugin inspect` and `hookwire plugin test`: a plugin's facts, and its
//! decisions over recorded events, without a broker. Both use the broker's own engine,
//! import policy and chain code.

use std::collections::BTreeMap;
use std::io::{BufRead, Write};
use std::path::Path;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{Value, json};

use super::config::OnError;
use super::engine::{EngineSettings, PluginEngine, sha256_hex};
use super::host::{PluginConn, PublicationState, PublishSource};
use super::imports::{ImportUse, import_use};
use super::instance::Pool;
use super::runtime::Plugins;
use super::settings::{ModuleSettings, PluginsSettings};
use super::types::{Error, PluginLimits};
use crate::metrics::Metrics;
use crate::transport::TransportKind;

/// What `inspect` reports.
#[derive(Debug, Serialize)]
pub struct Inspection {
    pub file: String,
    pub sha256: String,
    pub size: u64,
    /// The world the component fits, when it does.
    pub world: Option<&'static str>,
    pub name: Option<String>,
    pub version: Option<String>,
    pub hooks: Vec<&'static str>,
    pub imports: Vec<Import>,
    pub exports: Vec<String>,
    /// Why the broker would refuse to load it, if it would.
    pub refused: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct Import {
    pub name: String,
    pub served: &'static str,
}

/// A small engine of the default limits, without a compile cache.
fn engine_settings() -> EngineSettings {
    EngineSettings {
        max_instances: 16,
        max_memory_bytes: 32 << 20,
        max_stack_bytes: 512 << 10,
        cache_dir: None,
    }
}

fn default_limits() -> PluginLimits {
    PluginLimits {
        timeout_ms: 10,
        memory_bytes: 32 << 20,
        max_output_bytes: 65_536,
    }
}

fn read(path: &Path) -> Result<Vec<u8>, Error> {
    std::fs::read(path).map_err(|e| Error::Read {
        path: path.display().to_string(),
        message: e.to_string(),
    })
}

/// Reads and compiles the plugin; when the broker would load it, asks its `info`.
pub fn inspect(path: &Path) -> Result<Inspection, Error> {
    let bytes = read(path)?;
    let sha256 = sha256_hex(&bytes);
    let facts = |imports: Vec<(String, ImportUse)>, exports, refused| Inspection {
        file: path.display().to_string(),
        sha256: sha256.clone(),
        size: bytes.len() as u64,
        world: None,
        name: None,
        version: None,
        hooks: Vec::new(),
        imports: imports
            .into_iter()
            .map(|(name, served)| Import {
                name,
                served: served.label(),
            })
            .collect(),
        exports,
        refused,
    };
    // Refused before compiling (not a component, a refused import): one line, at once.
    if let Err(refused) = super::precheck::precheck(&bytes) {
        let imports = super::precheck::top_level_imports(&bytes)
            .unwrap_or_default()
            .into_iter()
            .map(|name| {
                let served = import_use(&name);
                (name, served)
            })
            .collect();
        return Ok(facts(imports, Vec::new(), Some(refused.to_string())));
    }
    let engine = PluginEngine::new(&engine_settings(), None)?;
    let component = engine.compile(&bytes, &sha256)?;
    let (imports, exports) = engine.describe(&component);
    let mut out = facts(imports, exports, None);
    // Linked from the compiled component above: one compile (the cache is off here).
    match super::load::link_compiled(&engine, &component) {
        Ok(pre) => match Pool::probe(&pre, &default_limits()) {
            Ok(info) => {
                out.world = Some(match info.contract {
                    "0.1.0" => "hookwire:plugin/plugin@0.1.0 (the legacy contract)",
                    _ => "hookwire:plugin@0.2.0",
                });
                out.name = Some(info.name);
                out.version = Some(info.version);
                out.hooks = info.hooks.names();
            }
            Err(e) => out.refused = Some(format!("its `info` call failed: {e}")),
        },
        Err(e) => out.refused = Some(e.to_string()),
    }
    Ok(out)
}

/// One recorded event (a line of the events file).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Event {
    hook: String,
    #[serde(default)]
    channel: Option<String>,
    #[serde(default)]
    data: Option<Value>,
    /// `client` (default), `api` or `nats`.
    #[serde(default)]
    source: Option<String>,
    #[serde(default)]
    user: Option<String>,
    #[serde(default)]
    claims: Option<Value>,
    #[serde(default)]
    meta: Option<Value>,
    #[serde(default)]
    reason: Option<String>,
    /// A decision (`allow`, `modify`, `refuse`) or an object of fields the outcome
    /// must have: `decision`, `reason_contains`, `data`, `meta` (a subset),
    /// `channels`, `emit_channels`.
    #[serde(default)]
    expect: Option<Value>,
}

/// Why `plugin test` could not run (as opposed to an unmet expectation).
#[derive(Debug, thiserror::Error)]
pub enum TestError {
    #[error("{0}")]
    Plugin(#[from] Error),
    #[error("cannot read the events file {path}: {message}")]
    Events { path: String, message: String },
    #[error("events file line {line}: {message}")]
    Line { line: usize, message: String },
    #[error("--config is not a JSON object: {0}")]
    Config(String),
    #[error("{0}")]
    Load(String),
}

/// Replays `events` through the plugin, writing one JSON line per event to `out`.
/// Returns how many `expect`s were not met.
pub fn test(
    plugin: &Path,
    events: &Path,
    config: Option<&str>,
    out: &mut impl Write,
) -> Result<usize, TestError> {
    let config_json = config_object(config)?;
    let parsed = read_events(events)?;
    let info = inspect(plugin)?;
    let Some(name) = info.name else {
        return Err(TestError::Load(
            info.refused
                .unwrap_or_else(|| "the plugin cannot be loaded".into()),
        ));
    };
    let plugins = replay_plugins(plugin, &name, config_json, &parsed)?;
    Ok(replay(&plugins, parsed, out))
}

/// Replays `events` through `namespace`'s chain as `config` sets it up (and the
/// connection chain for connect and disconnect events); events of other namespaces are
/// refused, so a capture of one namespace is not run through another's chain by mistake.
pub fn test_chain(
    config: &crate::config::Config,
    namespace: &str,
    events: &Path,
    out: &mut impl Write,
) -> Result<usize, TestError> {
    if !config.namespaces.contains_key(namespace) {
        return Err(TestError::Load(format!(
            "the config has no namespace {namespace:?}"
        )));
    }
    let parsed = read_events(events)?;
    if let Some((line, e)) = parsed.iter().find(|(_, e)| {
        e.channel
            .as_deref()
            .is_some_and(|c| namespace_of(c) != namespace)
    }) {
        return Err(TestError::Line {
            line: *line,
            message: format!(
                "channel {:?} is not in namespace {namespace:?}",
                e.channel.as_deref().unwrap_or("")
            ),
        });
    }
    let settings = PluginsSettings::from_config(config).ok_or_else(|| {
        TestError::Load("the config loads no plugins (plugins.enabled, plugins.modules)".into())
    })?;
    let plugins = Plugins::with_settings(settings, Arc::new(Metrics::new()))
        .map_err(|e| TestError::Load(format!("{e:#}")))?;
    Ok(replay(&plugins, parsed, out))
}

/// Runs each event, checks its `expect`, writes one JSON line each; answers how many
/// `expect`s were not met.
fn replay(plugins: &Plugins, parsed: Vec<(usize, Event)>, out: &mut impl Write) -> usize {
    let mut unmet = 0;
    for (line, event) in parsed {
        let mut outcome = run(plugins, &event);
        if let Some(expect) = &event.expect {
            match check(expect, &outcome) {
                Ok(()) => outcome["expect"] = json!("met"),
                Err(why) => {
                    unmet += 1;
                    outcome["expect"] = json!(format!("NOT MET: {why}"));
                }
            }
        }
        let mut record = json!({"line": line});
        if let (Some(r), Value::Object(o)) = (record.as_object_mut(), outcome) {
            r.extend(o);
        }
        let _ = writeln!(out, "{record}");
    }
    unmet
}

/// `--config`, checked to be a JSON object (`{}` without one).
fn config_object(config: Option<&str>) -> Result<String, TestError> {
    let Some(text) = config else {
        return Ok("{}".to_string());
    };
    let v: Value = serde_json::from_str(text).map_err(|e| TestError::Config(e.to_string()))?;
    if !v.is_object() {
        return Err(TestError::Config(format!("got {v}")));
    }
    Ok(v.to_string())
}

/// The events file: one JSON event per line (blank lines and `//` comments skipped),
/// each with its line number.
fn read_events(events: &Path) -> Result<Vec<(usize, Event)>, TestError> {
    let file = std::fs::File::open(events).map_err(|e| TestError::Events {
        path: events.display().to_string(),
        message: e.to_string(),
    })?;
    let mut parsed = Vec::new();
    for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line.map_err(|e| TestError::Events {
            path: events.display().to_string(),
            message: e.to_string(),
        })?;
        if line.trim().is_empty() || line.trim_start().starts_with("//") {
            continue;
        }
        let event: Event = serde_json::from_str(&line).map_err(|e| TestError::Line {
            line: i + 1,
            message: e.to_string(),
        })?;
        if !["connect", "subscribe", "publish", "disconnect"].contains(&event.hook.as_str()) {
            return Err(TestError::Line {
                line: i + 1,
                message: format!(
                    "hook {:?}: use connect, subscribe, publish or disconnect",
                    event.hook
                ),
            });
        }
        parsed.push((i + 1, event));
    }
    Ok(parsed)
}

/// A plugin runtime with only this plugin, bound to connections and to every namespace
/// the events name.
fn replay_plugins(
    plugin: &Path,
    name: &str,
    config_json: String,
    parsed: &[(usize, Event)],
) -> Result<Arc<Plugins>, TestError> {
    let namespaces: BTreeMap<String, Vec<String>> = parsed
        .iter()
        .filter_map(|(_, e)| e.channel.as_deref())
        .map(|c| (namespace_of(c).to_string(), vec![name.to_string()]))
        .collect();
    let module = ModuleSettings {
        name: name.to_string(),
        file: plugin.to_path_buf(),
        hooks: None,
        limits: default_limits(),
        on_error: OnError::Reject,
        config: config_json,
        instances: 1,
        sha256: None,
        state: Default::default(),
        inline_max_cpu_ms: 0,
    };
    let settings = PluginsSettings {
        dir: plugin.parent().map(Path::to_path_buf).unwrap_or_default(),
        watch: false,
        audit_file: None,
        engine: engine_settings(),
        threads: 1,
        queue: 16,
        modules: BTreeMap::from([(name.to_string(), module)]),
        rollouts: BTreeMap::new(),
        connection: vec![name.to_string()],
        namespaces,
    };
    Plugins::with_settings(settings, Arc::new(Metrics::new()))
        .map_err(|e| TestError::Load(e.to_string()))
}

fn namespace_of(channel: &str) -> &str {
    channel.split_once(':').map_or("", |(ns, _)| ns)
}

fn conn_of(event: &Event) -> PluginConn {
    PluginConn {
        id: 1,
        claim_index: Default::default(),
        client: "c-replay".into(),
        user: event.user.clone().unwrap_or_default().into(),
        claims: event
            .claims
            .clone()
            .unwrap_or_else(|| json!({"sub": event.user.clone().unwrap_or_default()}))
            .to_string()
            .into(),
        transport: TransportKind::WebSocket,
        remote: "127.0.0.1:1".into(),
        meta: event
            .meta
            .clone()
            .unwrap_or_else(|| json!({}))
            .to_string()
            .into(),
    }
}

fn run(plugins: &Plugins, event: &Event) -> Value {
    let channel = event.channel.clone().unwrap_or_default();
    match event.hook.as_str() {
        "connect" => {
            let mut conn = conn_of(event);
            match plugins.on_connect(&mut conn) {
                Ok(()) => json!({"hook": "connect", "decision": "allow",
                    "meta": serde_json::from_str::<Value>(&conn.meta).unwrap_or(Value::Null)}),
                Err(r) => json!({"hook": "connect", "decision": "refuse", "reason": r.message}),
            }
        }
        "subscribe" => {
            match plugins.on_subscribe(namespace_of(&channel), &conn_of(event), &channel) {
                Ok(()) => json!({"hook": "subscribe", "channel": channel, "decision": "allow"}),
                Err(r) => {
                    json!({"hook": "subscribe", "channel": channel, "decision": "refuse", "reason": r.message})
                }
            }
        }
        "disconnect" => {
            plugins.on_disconnect(&conn_of(event), event.reason.as_deref().unwrap_or("closed"));
            json!({"hook": "disconnect", "decision": "notified"})
        }
        _ => {
            let source = match event.source.as_deref() {
                Some("api") => PublishSource::Api,
                Some("nats") => PublishSource::Nats,
                _ => PublishSource::Client,
            };
            let data = event.data.clone().unwrap_or(Value::Null);
            let state = PublicationState {
                source,
                channels: vec![channel.clone()],
                user: event
                    .user
                    .as_deref()
                    .filter(|_| source != PublishSource::Api)
                    .map(Into::into),
                data: serde_json::value::to_raw_value(&data).expect("a Value serializes"),
                meta: Vec::new(),
                connection: (source == PublishSource::Client).then(|| Arc::new(conn_of(event))),
            };
            let valid = |c: &str| {
                crate::channel::ChannelName::parse(c)
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            };
            match plugins.on_publish(namespace_of(&channel), state, &valid) {
                Err(r) => {
                    json!({"hook": "publish", "channel": channel, "decision": "refuse", "reason": r.message})
                }
                Ok((after, emits)) => {
                    let new_data: Value =
                        serde_json::from_str(after.data.get()).unwrap_or(Value::Null);
                    let meta: Value = after
                        .meta_json()
                        .and_then(|m| serde_json::from_str(m.get()).ok())
                        .unwrap_or_else(|| json!({}));
                    let changed = new_data != data
                        || !after.meta.is_empty()
                        || after.channels != [channel.clone()]
                        || !emits.is_empty();
                    let emit: Vec<Value> = emits
                        .iter()
                        .map(|e| json!({
                            "channel": e.channel,
                            "data": serde_json::from_str::<Value>(e.data.get()).unwrap_or(Value::Null),
                            "meta": e.meta.as_deref().map(RawValue::get).and_then(|m| serde_json::from_str::<Value>(m).ok()),
                        }))
                        .collect();
                    json!({"hook": "publish", "channel": channel,
                        "decision": if changed { "modify" } else { "allow" },
                        "channels": after.channels, "data": new_data, "meta": meta, "emit": emit})
                }
            }
        }
    }
}

fn check(expect: &Value, outcome: &Value) -> Result<(), String> {
    let want = match expect {
        Value::String(d) => json!({"decision": d}),
        other => other.clone(),
    };
    let Some(want) = want.as_object() else {
        return Err("expect must be a decision or an object".into());
    };
    for (key, value) in want {
        match key.as_str() {
            "decision" | "data" | "channels" => {
                if outcome.get(key) != Some(value) {
                    return Err(format!(
                        "{key} is {}, expected {value}",
                        outcome.get(key).unwrap_or(&Value::Null)
                    ));
                }
            }
            "reason_contains" => {
                let reason = outcome.get("reason").and_then(Value::as_str).unwrap_or("");
                let needle = value.as_str().unwrap_or("");
                if !reason.contains(needle) {
                    return Err(format!("reason {reason:?} does not contain {needle:?}"));
                }
            }
            "meta" => {
                let have = outcome.get("meta").cloned().unwrap_or_default();
                for (k, v) in value.as_object().into_iter().flatten() {
                    if have.get(k) != Some(v) {
                        return Err(format!(
                            "meta.{k} is {}, expected {v}",
                            have.get(k).unwrap_or(&Value::Null)
                        ));
                    }
                }
            }
            "emit_channels" => {
                let have: Vec<&Value> = outcome
                    .get("emit")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter_map(|e| e.get("channel"))
                    .collect();
                let want: Vec<&Value> = value.as_array().into_iter().flatten().collect();
                if have != want {
                    return Err(format!("emitted to {have:?}, expected {want:?}"));
                }
            }
            other => return Err(format!("unknown expect field {other:?}")),
        }
    }
    Ok(())
}
