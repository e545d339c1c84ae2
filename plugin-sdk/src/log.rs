//! Writing to the broker's log.
//!
//! Lines are tagged by the broker with the plugin's name and version; it may
//! truncate long lines and rate-limit chatty plugins. In a native build (`cargo
//! test`) lines go to stderr, which the test harness captures.
//!
//! ```
//! use hookwire_plugin::log;
//!
//! let channel = "chat:lobby";
//! log::info!("refused a publication to {channel}");
//! log::log(log::Level::Debug, "a line without formatting");
//! ```

/// How important a line is.
pub use crate::bindings::hookwire::plugin::host::LogLevel as Level;

/// Writes `message` to the broker's log at `level`.
pub fn log(level: Level, message: &str) {
    #[cfg(target_arch = "wasm32")]
    crate::bindings::hookwire::plugin::host::log(level, message);
    #[cfg(not(target_arch = "wasm32"))]
    eprintln!("[{}] {message}", level_name(level));
}

#[cfg(not(target_arch = "wasm32"))]
fn level_name(level: Level) -> &'static str {
    match level {
        Level::Trace => "trace",
        Level::Debug => "debug",
        Level::Info => "info",
        Level::Warn => "warn",
        Level::Error => "error",
    }
}

#[doc(hidden)]
#[macro_export]
macro_rules! __log_at {
    ($level:ident, $($arg:tt)+) => {
        $crate::log::log($crate::log::Level::$level, &::std::format!($($arg)+))
    };
}

/// Logs at trace level, with `format!` arguments.
#[doc(hidden)]
#[macro_export]
macro_rules! __log_trace {
    ($($arg:tt)+) => { $crate::__log_at!(Trace, $($arg)+) };
}

/// Logs at debug level, with `format!` arguments.
#[doc(hidden)]
#[macro_export]
macro_rules! __log_debug {
    ($($arg:tt)+) => { $crate::__log_at!(Debug, $($arg)+) };
}

/// Logs at info level, with `format!` arguments.
#[doc(hidden)]
#[macro_export]
macro_rules! __log_info {
    ($($arg:tt)+) => { $crate::__log_at!(Info, $($arg)+) };
}

/// Logs at warn level, with `format!` arguments.
#[doc(hidden)]
#[macro_export]
macro_rules! __log_warn {
    ($($arg:tt)+) => { $crate::__log_at!(Warn, $($arg)+) };
}

/// Logs at error level, with `format!` arguments.
#[doc(hidden)]
#[macro_export]
macro_rules! __log_error {
    ($($arg:tt)+) => { $crate::__log_at!(Error, $($arg)+) };
}

// `#[macro_export]` puts macros at the crate root; these give them their place.
#[doc(inline)]
pub use crate::{
    __log_debug as debug, __log_error as error, __log_info as info, __log_trace as trace,
    __log_warn as warn,
};
