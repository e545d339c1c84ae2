//! The one wasmtime `Engine` of the process, its epoch ticker, compilation with an
//! on-disk cache keyed by the module's sha256 (entries verified before use: see
//! `cache`), and the import policy.

use std::hash::{Hash, Hasher};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};
use wasmtime::component::types::ComponentItem;
use wasmtime::component::{Component, Linker};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

use super::cache::{CompileCache, Rejected};
use super::deadline::TICK;
use super::host::{PluginBindings, Shared, StoreData};
use super::imports::{ImportUse, import_use, refusal_reason};
use super::legacy::LegacyBindings;
use super::plugin_metrics::PluginMetrics;
use super::state::{StateLimits, StateStore};
use super::types::Error;
use crate::metrics::Metrics;

/// How long a compile-cache entry no loaded plugin uses is kept.
pub const CACHE_KEEP: Duration = Duration::from_secs(24 * 3600);

/// Engine-wide settings (per-plugin limits live in `PluginLimits`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineSettings {
    /// Instances that may exist at once, over every plugin and version (pool slots).
    pub max_instances: u32,
    /// The largest memory cap of any plugin, in bytes (the pool's per-memory bound).
    pub max_memory_bytes: usize,
    /// Wasm stack per call, in bytes.
    pub max_stack_bytes: usize,
    /// Where compiled modules are cached (`None`: no cache).
    pub cache_dir: Option<PathBuf>,
}

/// The compiler and runtime shared by every plugin.
pub struct PluginEngine {
    pub engine: Engine,
    pub linker: Linker<StoreData>,
    /// `None`: no cache configured, or its directory was refused.
    cache: Option<CompileCache>,
    /// Counts rejected cache entries (none in tools that run without metrics).
    metrics: Option<Arc<Metrics>>,
    /// Part of every cache file name: artifacts of another wasmtime build or other
    /// settings are never loaded.
    compat: String,
    /// Each plugin's state and metrics, by name: they outlive its versions.
    owned: parking_lot::Mutex<std::collections::HashMap<String, Shared>>,
}

impl PluginEngine {
    pub fn new(
        settings: &EngineSettings,
        metrics: Option<Arc<Metrics>>,
    ) -> Result<Arc<Self>, Error> {
        let slots = settings.max_instances.max(8);
        let mut pool = PoolingAllocationConfig::default();
        // A component made by a language toolchain has a few core instances (the
        // program, the WASI adapter, shims), each maybe with a memory and a table.
        pool.total_component_instances(slots)
            .total_core_instances(slots * 8)
            .total_memories(slots * 2)
            .total_tables(slots * 4)
            .max_memories_per_module(2)
            .max_tables_per_module(4)
            .max_memory_size(settings.max_memory_bytes)
            .max_component_instance_size(1 << 20)
            .max_core_instance_size(1 << 20);
        let mut config = Config::new();
        config
            .wasm_component_model(true)
            .epoch_interruption(true)
            .max_wasm_stack(settings.max_stack_bytes)
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        let engine = Engine::new(&config).map_err(|e| Error::Engine(format!("{e:#}")))?;
        let mut linker = Linker::new(&engine);
        PluginBindings::add_to_linker::<StoreData, wasmtime::component::HasSelf<StoreData>>(
            &mut linker,
            |data| data,
        )
        .map_err(|e| Error::Engine(format!("{e:#}")))?;
        LegacyBindings::add_to_linker::<StoreData, wasmtime::component::HasSelf<StoreData>>(
            &mut linker,
            |data| data,
        )
        .map_err(|e| Error::Engine(format!("{e:#}")))?;
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        let compat = format!("{:016x}", hasher.finish());
        let cache = settings.cache_dir.as_deref().and_then(CompileCache::open);
        let engine_ticker = engine.clone();
        std::thread::Builder::new()
            .name("plugin-epoch".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(TICK);
                    engine_ticker.increment_epoch();
                }
            })
            .map_err(|e| Error::Engine(format!("cannot start the epoch ticker: {e}")))?;
        Ok(Arc::new(Self {
            engine,
            linker,
            cache,
            metrics,
            compat,
            owned: Default::default(),
        }))
    }

    /// What the instances of a new version of plugin `name` share: a new log gate, and
    /// the plugin's state (with these bounds) and metrics, made on its first load.
    pub fn shared(&self, name: &str, limits: StateLimits) -> Shared {
        let mut owned = self.owned.lock();
        let plugin = owned.entry(name.to_string()).or_insert_with(|| Shared {
            log: Default::default(),
            state: Arc::new(StateStore::new(limits)),
            metrics: Arc::new(PluginMetrics::new(name, self.metrics.clone())),
        });
        plugin.state.set_limits(limits);
        Shared {
            log: Default::default(),
            ..plugin.clone()
        }
    }

    /// Compiles `bytes` (a component), from the cache when this exact module was
    /// compiled before by this build and the entry's tag verifies; a rejected entry is
    /// counted, logged and replaced.
    pub fn compile(&self, bytes: &[u8], sha256: &str) -> Result<Component, Error> {
        // Refused in microseconds, before hundreds of milliseconds of compiling.
        super::precheck::precheck(bytes)?;
        let Some(cache) = &self.cache else {
            return Component::new(&self.engine, bytes).map_err(|e| compile_error(&e));
        };
        let name = format!("{sha256}-{}.cwasm", self.compat);
        match cache.load(&name) {
            Ok(Some(artifact)) => match deserialize(&self.engine, &artifact) {
                Ok(component) => return Ok(component),
                Err(e) => self.rejected(cache, &name, Rejected::Incompatible, &e.to_string()),
            },
            Ok(None) => {}
            Err(reason) => self.rejected(cache, &name, reason, "the entry was not used"),
        }
        let artifact = self
            .engine
            .precompile_component(bytes)
            .map_err(|e| compile_error(&e))?;
        if let Err(e) = cache.store(&name, &artifact) {
            tracing::warn!(dir = %cache.dir().display(), error = %e, "Cannot write the plugin cache; compiling without it");
        }
        deserialize(&self.engine, &artifact)
    }

    fn rejected(&self, cache: &CompileCache, name: &str, reason: Rejected, detail: &str) {
        tracing::warn!(
            dir = %cache.dir().display(), entry = name, reason = reason.label(), detail,
            "Rejected a plugin cache entry; recompiling and replacing it"
        );
        if let Some(metrics) = &self.metrics {
            metrics.plugin_cache_rejected(reason.label());
        }
    }

    /// Removes cache entries that no module in `in_use` (sha256s) needs and that were
    /// written more than [`CACHE_KEEP`] ago, and leftovers of interrupted writes. Every
    /// new plugin version adds an entry (tens of MB for a large module), so without this
    /// the directory only grows; a replaced version stays a while, so rolling back to it
    /// loads from the cache. Entries of other builds (another `compat`) age out alike.
    /// Answers how many files it removed.
    pub fn prune_cache(&self, in_use: &[&str]) -> usize {
        let Some(dir) = self.cache.as_ref().map(CompileCache::dir) else {
            return 0;
        };
        let Ok(entries) = std::fs::read_dir(dir) else {
            return 0;
        };
        let mut removed = 0;
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let ours = name.ends_with(".cwasm") || name.contains(".tmp");
            let needed = in_use
                .iter()
                .any(|sha| name == format!("{sha}-{}.cwasm", self.compat));
            let old = entry
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age > CACHE_KEEP);
            if ours && !needed && old && std::fs::remove_file(entry.path()).is_ok() {
                removed += 1;
            }
        }
        if removed > 0 {
            tracing::info!(dir = %dir.display(), removed, "Pruned the plugin compile cache");
        }
        removed
    }

    /// Checks every import against the policy and links the inert ones. Returns a
    /// linker for this component.
    pub fn link(&self, component: &Component) -> Result<Linker<StoreData>, Error> {
        let ty = component.component_type();
        for (name, _) in ty.imports(&self.engine) {
            if import_use(name) == ImportUse::Refused {
                return Err(Error::Import {
                    import: name.to_string(),
                    why: refusal_reason(name),
                });
            }
        }
        let mut linker = self.linker.clone();
        for (name, _) in ty.imports(&self.engine) {
            if import_use(name) == ImportUse::Random {
                define_random(&mut linker, name).map_err(|e| Error::Engine(format!("{e:#}")))?;
            }
        }
        linker
            .define_unknown_imports_as_traps(component)
            .map_err(|e| Error::Engine(format!("{e:#}")))?;
        Ok(linker)
    }

    /// Every import and export of a component, with how the host serves each import.
    pub fn describe(&self, component: &Component) -> (Vec<(String, ImportUse)>, Vec<String>) {
        let ty = component.component_type();
        let imports = ty
            .imports(&self.engine)
            .map(|(name, _)| (name.to_string(), import_use(name)))
            .collect();
        let mut exports = Vec::new();
        for (name, item) in ty.exports(&self.engine) {
            match item.ty {
                ComponentItem::ComponentInstance(instance) => {
                    for (func, item) in instance.exports(&self.engine) {
                        if matches!(item.ty, ComponentItem::ComponentFunc(_)) {
                            exports.push(format!("{name}#{func}"));
                        }
                    }
                }
                _ => exports.push(name.to_string()),
            }
        }
        (imports, exports)
    }
}

/// `wasi:random/*` (Rust's `HashMap` seeds itself from `insecure-seed`, for one).
fn define_random(linker: &mut Linker<StoreData>, name: &str) -> wasmtime::Result<()> {
    use rand::Rng;
    let mut instance = linker.instance(name)?;
    let bytes = |_: wasmtime::StoreContextMut<'_, StoreData>, (len,): (u64,)| {
        let len = usize::try_from(len).unwrap_or(usize::MAX).min(1 << 20);
        let mut out = vec![0u8; len];
        rand::rng().fill(&mut out[..]);
        Ok((out,))
    };
    let u64 =
        |_: wasmtime::StoreContextMut<'_, StoreData>, (): ()| Ok((rand::rng().random::<u64>(),));
    match name.split('@').next().unwrap_or(name) {
        "wasi:random/random" => {
            instance.func_wrap("get-random-bytes", bytes)?;
            instance.func_wrap("get-random-u64", u64)?;
        }
        "wasi:random/insecure" => {
            instance.func_wrap("get-insecure-random-bytes", bytes)?;
            instance.func_wrap("get-insecure-random-u64", u64)?;
        }
        _ => {
            instance.func_wrap(
                "insecure-seed",
                |_: wasmtime::StoreContextMut<'_, StoreData>, (): ()| {
                    let mut rng = rand::rng();
                    Ok(((rng.random::<u64>(), rng.random::<u64>()),))
                },
            )?;
        }
    }
    Ok(())
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    let mut out = String::with_capacity(64);
    for b in digest {
        use std::fmt::Write;
        let _ = write!(out, "{b:02x}");
    }
    out
}

/// A compile error on one line (wasmtime's are several, with their causes).
fn compile_error(e: &wasmtime::Error) -> Error {
    Error::Compile(super::precheck::one_line(&format!("{e:#}")))
}

/// Turns an artifact this process compiled, or whose cache tag verified, into a component.
#[allow(unsafe_code)]
fn deserialize(engine: &Engine, artifact: &[u8]) -> Result<Component, Error> {
    // SAFETY: deserializing runs native code from `artifact`, so it must be an artifact
    // wasmtime produced for this engine. It is either the output of
    // `precompile_component` in this process or a cache entry whose HMAC tag (keyed by a
    // secret kept outside the cache directory, over the entry's name and bytes) verified
    // in `CompileCache::load`, so the broker wrote it; wasmtime also checks the header
    // and version before using it.
    unsafe { Component::deserialize(engine, artifact) }
        .map_err(|e| Error::Compile(format!("{e:#}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cache_keeps_what_is_in_use_or_recent() {
        let dir = tempfile::tempdir().unwrap();
        let engine = PluginEngine::new(
            &EngineSettings {
                max_instances: 4,
                max_memory_bytes: 1 << 20,
                max_stack_bytes: 256 << 10,
                cache_dir: Some(dir.path().to_path_buf()),
            },
            None,
        )
        .unwrap();
        let compat = engine.compat.clone();
        let long_ago = std::time::SystemTime::now() - CACHE_KEEP - Duration::from_secs(60);
        let file = |name: &str, old: bool| {
            let path = dir.path().join(name);
            std::fs::write(&path, b"x").unwrap();
            if old {
                let f = std::fs::File::options().write(true).open(&path).unwrap();
                f.set_modified(long_ago).unwrap();
            }
            name.to_string()
        };
        let in_use_old = file(&format!("aaa-{compat}.cwasm"), true);
        let unused_new = file(&format!("bbb-{compat}.cwasm"), false);
        let unused_old = file(&format!("ccc-{compat}.cwasm"), true);
        let other_build_old = file("aaa-0123456789abcdef.cwasm", true);
        let leftover_old = file(&format!("ddd-{compat}.tmp123"), true);
        let not_ours = file("notes.txt", true);
        assert_eq!(engine.prune_cache(&["aaa"]), 3);
        let left: Vec<bool> = [
            &in_use_old,
            &unused_new,
            &unused_old,
            &other_build_old,
            &leftover_old,
            &not_ours,
        ]
        .iter()
        .map(|n| dir.path().join(n).exists())
        .collect();
        assert_eq!(left, [true, true, false, false, false, true]);
    }

    #[test]
    fn import_policy() {
        assert_eq!(
            import_use("hookwire:plugin/host@0.1.0"),
            ImportUse::Provided
        );
        assert_eq!(
            import_use("hookwire:plugin/types@0.1.0"),
            ImportUse::Provided
        );
        assert_eq!(import_use("wasi:cli/environment@0.2.3"), ImportUse::Inert);
        assert_eq!(import_use("wasi:io/streams@0.2.6"), ImportUse::Inert);
        assert_eq!(
            import_use("wasi:random/insecure-seed@0.2.6"),
            ImportUse::Random
        );
        assert_eq!(import_use("wasi:sockets/tcp@0.2.3"), ImportUse::Refused);
        assert_eq!(
            import_use("wasi:http/outgoing-handler@0.2.3"),
            ImportUse::Refused
        );
        assert_eq!(import_use("evil:net/dial"), ImportUse::Refused);
        assert_eq!(
            refusal_reason("wasi:sockets/tcp@0.2.3"),
            "plugins get no network access"
        );
    }
}
