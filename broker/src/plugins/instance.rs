//! Warm instances of one plugin version, and one call into an instance with its limits
//! applied and its failure classified.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use parking_lot::Mutex;
use wasmtime::Store;

use super::contract::{Bindings, Linked, PluginInfo};
use super::host::{Shared, StoreData};
use super::types::{Error, PluginId, PluginLimits};

/// An instance ready for calls, with the store it lives in.
pub struct Warm {
    pub store: Store<StoreData>,
    pub bindings: Bindings,
    /// The largest memory's size once `init` returned.
    baseline: usize,
}

impl Warm {
    /// Whether the instance has used half of the memory it had left after `init`: a
    /// guest that leaks (a garbage-collected language's bindings, a cache without a
    /// bound) is retired between calls, before an event meets its memory cap.
    fn worn(&self) -> bool {
        let limiter = &self.store.data().limiter;
        let headroom = limiter.max_bytes.saturating_sub(self.baseline);
        limiter.largest.saturating_sub(self.baseline) > headroom / 2
    }
}

/// The instances of one plugin version. A call takes an idle instance (or makes one),
/// and gives it back unless the call failed: after a trap an instance can never be
/// entered again, and after a timeout or a memory overrun its state is suspect.
pub struct Pool {
    pre: Linked,
    id: Arc<PluginId>,
    limits: PluginLimits,
    /// The plugin's configuration, JSON text, given to `init` of every new instance.
    config: String,
    idle: Mutex<Vec<Warm>>,
    /// Idle instances kept at most; more are made under load and dropped after.
    keep: usize,
    /// What every instance of this version shares (log gate, state, metrics).
    shared: Shared,
    retired: AtomicU64,
}

impl Pool {
    /// Makes the first instance: `info`, then `init` with the configuration; the pool
    /// keeps the instance. The plugin goes by `name`, its module's name in the config
    /// (what `info` answers, unless the config runs it under a name of its own), with
    /// the version `info` gives.
    pub fn start(
        pre: Linked,
        shared: Shared,
        name: &str,
        sha256: String,
        limits: PluginLimits,
        config: String,
        keep: usize,
    ) -> Result<(Self, PluginInfo), Error> {
        let provisional = Arc::new(PluginId {
            name: name.to_string(),
            version: "?".into(),
            sha256: sha256.clone(),
        });
        let mut warm = instantiate(&pre, &provisional, &limits, &shared)?;
        let info = guarded(&mut warm, &limits, |w| w.bindings.info(&mut w.store))?
            .map_err(Error::Exports)?;
        let id = Arc::new(PluginId {
            name: name.to_string(),
            version: info.version.clone(),
            sha256,
        });
        warm.store.data_mut().plugin = id.clone();
        init(&mut warm, &limits, &config)?;
        let pool = Self {
            pre,
            id,
            limits,
            config,
            idle: Mutex::new(vec![warm]),
            keep: keep.max(1),
            shared,
            retired: AtomicU64::new(0),
        };
        Ok((pool, info))
    }

    /// Instantiates once and asks `info`, without `init` (for `plugin inspect`).
    pub fn probe(pre: &Linked, limits: &PluginLimits) -> Result<PluginInfo, Error> {
        let id = Arc::new(PluginId {
            name: "?".into(),
            version: "?".into(),
            sha256: String::new(),
        });
        let mut warm = instantiate(pre, &id, limits, &Shared::default())?;
        guarded(&mut warm, limits, |w| w.bindings.info(&mut w.store))?.map_err(Error::Exports)
    }

    pub fn id(&self) -> &Arc<PluginId> {
        &self.id
    }

    /// Runs `f` on an instance under the plugin's limits; also answers the CPU time the
    /// call used as its deadline saw it (zero for a call within one 1 ms tick; making
    /// an instance, when none was idle, not counted).
    pub fn call<R>(
        &self,
        f: impl FnOnce(&mut Warm) -> wasmtime::Result<R>,
    ) -> (Result<R, Error>, std::time::Duration) {
        let taken = self.idle.lock().pop();
        let mut warm = match taken {
            Some(warm) => warm,
            None => match self.fresh() {
                Ok(warm) => warm,
                Err(e) => return (Err(e), std::time::Duration::ZERO),
            },
        };
        let result = guarded(&mut warm, &self.limits, f);
        let took = warm.store.data().deadline.used;
        if result.is_ok() {
            if warm.worn() {
                self.retired.fetch_add(1, Relaxed);
                tracing::debug!(
                    plugin = %self.id.name, version = self.id.version.as_str(),
                    memory_bytes = warm.store.data().limiter.largest,
                    "Plugin instance retired: it used half of its memory headroom"
                );
                return (result, took);
            }
            let mut idle = self.idle.lock();
            if idle.len() < self.keep {
                idle.push(warm);
            }
        }
        (result, took)
    }

    /// Instances retired for their memory so far.
    pub fn retired(&self) -> u64 {
        self.retired.load(Relaxed)
    }

    fn fresh(&self) -> Result<Warm, Error> {
        let mut warm = instantiate(&self.pre, &self.id, &self.limits, &self.shared)?;
        init(&mut warm, &self.limits, &self.config)?;
        Ok(warm)
    }
}

fn instantiate(
    pre: &Linked,
    id: &Arc<PluginId>,
    limits: &PluginLimits,
    shared: &Shared,
) -> Result<Warm, Error> {
    let mut store = Store::new(pre.engine(), StoreData::new(id.clone(), limits, shared));
    store.limiter(|data| &mut data.limiter);
    store.epoch_deadline_callback(|mut cx| Ok(cx.data_mut().deadline.on_tick()));
    // A new store's deadline is "now": set it before anything runs (start functions).
    store.set_epoch_deadline(1);
    store.data_mut().begin_call();
    let bindings = pre
        .instantiate(&mut store)
        .map_err(|e| classify(e, &store, limits, "instantiating"))?;
    Ok(Warm {
        store,
        bindings,
        baseline: 0,
    })
}

/// `init` with the configuration; the memory it leaves is the instance's baseline.
fn init(warm: &mut Warm, limits: &PluginLimits, config: &str) -> Result<(), Error> {
    let answer = guarded(warm, limits, |w| w.bindings.init(&mut w.store, config))?;
    warm.baseline = warm.store.data().limiter.largest;
    answer.map_err(Error::Init)
}

/// One call with a fresh deadline; a failure is classified from what the store saw.
fn guarded<R>(
    warm: &mut Warm,
    limits: &PluginLimits,
    f: impl FnOnce(&mut Warm) -> wasmtime::Result<R>,
) -> Result<R, Error> {
    // One tick away; see `deadline` for how the CPU-time deadline is kept from there.
    warm.store.set_epoch_deadline(1);
    warm.store.data_mut().begin_call();
    f(warm).map_err(|e| classify(e, &warm.store, limits, "calling"))
}

fn classify(
    e: wasmtime::Error,
    store: &Store<StoreData>,
    limits: &PluginLimits,
    doing: &str,
) -> Error {
    if store.data().limiter.refused {
        return Error::MemoryExceeded {
            mib: limits.memory_bytes >> 20,
        };
    }
    if store.data().deadline.expired {
        return Error::Timeout {
            ms: limits.timeout_ms,
        };
    }
    match e.downcast_ref::<wasmtime::Trap>() {
        Some(wasmtime::Trap::Interrupt) => Error::Timeout {
            ms: limits.timeout_ms,
        },
        Some(wasmtime::Trap::StackOverflow) => Error::Trap("stack overflow".into()),
        Some(trap) => Error::Trap(trap.to_string()),
        None => Error::Trap(format!("{doing}: {e:#}")),
    }
}
