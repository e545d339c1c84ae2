//! The import policy: how the host serves each import a plugin component may have
//! (provided, random numbers, inert stubs, or refused), and why a refused one is.

/// How the host serves one import of a component.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImportUse {
    /// A `hookwire:plugin` interface: the real thing.
    Provided,
    /// Randomness (`wasi:random/*`): served for real; it grants no access to anything.
    Random,
    /// A WASI interface a language's standard library imports whether or not the plugin
    /// uses it: linked to functions that trap when called (no capability behind them).
    Inert,
    /// Anything else: the component is refused.
    Refused,
}

impl ImportUse {
    pub fn label(self) -> &'static str {
        match self {
            Self::Provided => "provided",
            Self::Random => "provided (random numbers)",
            Self::Inert => "inert (traps if called: no capability)",
            Self::Refused => "refused (not provided)",
        }
    }
}

/// WASI interfaces that toolchains import for their standard library (stdio, exit,
/// environment, clocks, random, the preopens list). They get trapping stubs: a plugin
/// that really calls one fails that call, by design. Sockets, HTTP and everything not
/// listed are refused at load.
const INERT_WASI: &[&str] = &[
    "wasi:cli/environment",
    "wasi:cli/exit",
    "wasi:cli/stdin",
    "wasi:cli/stdout",
    "wasi:cli/stderr",
    "wasi:cli/terminal-input",
    "wasi:cli/terminal-output",
    "wasi:cli/terminal-stdin",
    "wasi:cli/terminal-stdout",
    "wasi:cli/terminal-stderr",
    "wasi:io/error",
    "wasi:io/poll",
    "wasi:io/streams",
    "wasi:clocks/wall-clock",
    "wasi:clocks/monotonic-clock",
    "wasi:filesystem/types",
    "wasi:filesystem/preopens",
];

/// How the host serves the import named `name` (e.g. `wasi:cli/exit@0.2.3`).
pub fn import_use(name: &str) -> ImportUse {
    let unversioned = name.split('@').next().unwrap_or(name);
    if unversioned.starts_with("hookwire:plugin/") {
        ImportUse::Provided
    } else if matches!(
        unversioned,
        "wasi:random/random" | "wasi:random/insecure" | "wasi:random/insecure-seed"
    ) {
        ImportUse::Random
    } else if INERT_WASI.contains(&unversioned) {
        ImportUse::Inert
    } else {
        ImportUse::Refused
    }
}

/// Why an import is refused, in words an operator can act on.
pub fn refusal_reason(name: &str) -> &'static str {
    if name.starts_with("wasi:sockets/") || name.starts_with("wasi:http/") {
        "plugins get no network access"
    } else if name.starts_with("wasi:") {
        "this WASI interface is not part of the plugin sandbox"
    } else {
        "plugins may import only hookwire:plugin interfaces"
    }
}
