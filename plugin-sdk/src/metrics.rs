//! Metrics on the broker's `/metrics`, named `hookwire_plugin_<plugin>_<name>` with a
//! `version` label beside your own labels. Define them in `init` (every instance does;
//! a second definition of the same metric finds the first) and keep the handle.
//!
//! Bounded by the broker: 16 metrics per plugin, 3 labels per metric, 32 label-value
//! sets per metric; a value for a further set is refused. Keep label values to a few
//! known words (a kind, an outcome), never user names or channel names. In a native
//! build (`cargo test`) definitions are checked for form and values are dropped.
//!
//! ```
//! use hookwire_plugin::metrics::Counter;
//!
//! let sent = Counter::define("notified_total", "Notifications sent.", &["kind"]).unwrap();
//! sent.add(&["mention"], 1.0);
//! ```

/// A counter: it only grows.
#[derive(Debug, Clone, Copy)]
pub struct Counter(u32);

/// A histogram of observed values.
#[derive(Debug, Clone, Copy)]
pub struct Histogram(u32);

fn strings(labels: &[&str]) -> Vec<String> {
    labels.iter().map(|l| (*l).to_string()).collect()
}

impl Counter {
    /// Defines (or finds) the counter `name` (`[a-z][a-z0-9_]*`) with these label names.
    pub fn define(name: &str, help: &str, labels: &[&str]) -> Result<Self, String> {
        #[cfg(target_arch = "wasm32")]
        return crate::bindings::hookwire::plugin::metrics::define_counter(
            name,
            help,
            &strings(labels),
        )
        .map(Self);
        #[cfg(not(target_arch = "wasm32"))]
        return native::check(name, help, &strings(labels)).map(Self);
    }

    /// Adds `value` for these label values (one per label name, in order). Errors
    /// (a wrong count of values, a set over the bound) are answered, not raised.
    pub fn add(&self, labels: &[&str], value: f64) -> Result<(), String> {
        #[cfg(target_arch = "wasm32")]
        return crate::bindings::hookwire::plugin::metrics::add(self.0, &strings(labels), value);
        #[cfg(not(target_arch = "wasm32"))]
        return native::value(self.0, &strings(labels), value);
    }
}

impl Histogram {
    /// Defines (or finds) the histogram `name` with these bucket upper bounds
    /// (ascending; empty: Prometheus' defaults).
    pub fn define(
        name: &str,
        help: &str,
        labels: &[&str],
        buckets: &[f64],
    ) -> Result<Self, String> {
        #[cfg(target_arch = "wasm32")]
        return crate::bindings::hookwire::plugin::metrics::define_histogram(
            name,
            help,
            &strings(labels),
            buckets,
        )
        .map(Self);
        #[cfg(not(target_arch = "wasm32"))]
        return native::check(name, help, &strings(labels))
            .and_then(|id| native::buckets(buckets).map(|()| Self(id)));
    }

    /// Records one observation for these label values.
    pub fn observe(&self, labels: &[&str], value: f64) -> Result<(), String> {
        #[cfg(target_arch = "wasm32")]
        return crate::bindings::hookwire::plugin::metrics::observe(
            self.0,
            &strings(labels),
            value,
        );
        #[cfg(not(target_arch = "wasm32"))]
        return native::value(self.0, &strings(labels), value);
    }
}

#[cfg(not(target_arch = "wasm32"))]
mod native {
    fn good(name: &str) -> bool {
        name.len() <= 48
            && name.starts_with(|c: char| c.is_ascii_lowercase())
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
    }

    pub fn check(name: &str, _help: &str, labels: &[String]) -> Result<u32, String> {
        if !good(name) || !labels.iter().all(|l| good(l) && l != "version") || labels.len() > 3 {
            return Err(format!("bad metric definition: {name} {labels:?}"));
        }
        Ok(0)
    }

    pub fn buckets(buckets: &[f64]) -> Result<(), String> {
        if buckets.windows(2).all(|w| w[0] < w[1]) {
            Ok(())
        } else {
            Err(format!("buckets must ascend: {buckets:?}"))
        }
    }

    pub fn value(_metric: u32, _labels: &[String], value: f64) -> Result<(), String> {
        if value.is_finite() {
            Ok(())
        } else {
            Err(format!("not a number: {value}"))
        }
    }
}
