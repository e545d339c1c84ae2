//! The `metrics` interface: counters and histograms a plugin defines, registered on the
//! broker's `/metrics` as `hookwire_plugin_<plugin>_<name>` with a `version` label. The
//! definitions belong to the plugin (every instance and version shares them) and are
//! bounded: metrics per plugin, labels per metric, label-value sets per metric.

use std::collections::HashSet;
use std::sync::Arc;

use parking_lot::Mutex;
use prometheus::{CounterVec, HistogramOpts, HistogramVec, Opts};

use super::host::StoreData;
use super::host::wit_metrics::Host;
use crate::metrics::Metrics;

/// Metrics one plugin may define.
pub const MAX_METRICS: usize = 16;
/// Labels one metric may have (besides `version`).
pub const MAX_LABELS: usize = 3;
/// Label-value sets one metric may have.
pub const MAX_SERIES: usize = 32;
/// Longest metric or label name, in bytes.
const NAME_MAX: usize = 48;

/// One plugin's metrics.
#[derive(Default)]
pub struct PluginMetrics {
    /// `hookwire_plugin_<plugin>_`, the plugin's name with `-` as `_`.
    prefix: String,
    /// Where definitions are registered (`None` in tools without `/metrics`).
    registry: Option<Arc<Metrics>>,
    defs: Mutex<Vec<Def>>,
}

struct Def {
    name: String,
    labels: Vec<String>,
    family: Family,
    series: HashSet<Vec<String>>,
}

#[derive(Clone)]
enum Family {
    Counter(CounterVec),
    Histogram(HistogramVec, Vec<f64>),
}

impl PluginMetrics {
    pub fn new(plugin: &str, registry: Option<Arc<Metrics>>) -> Self {
        Self {
            prefix: format!("hookwire_plugin_{}_", plugin.replace('-', "_")),
            registry,
            defs: Mutex::default(),
        }
    }

    /// Defines a metric, or finds the one this plugin defined the same way.
    pub fn define(
        &self,
        name: &str,
        help: &str,
        labels: Vec<String>,
        buckets: Option<Vec<f64>>,
    ) -> Result<u32, String> {
        check_name(name, "metric")?;
        for label in &labels {
            check_name(label, "label")?;
            if label == "version" {
                return Err("the label `version` is the broker's; name yours otherwise".into());
            }
        }
        if labels.len() > MAX_LABELS {
            return Err(format!("a metric may have at most {MAX_LABELS} labels"));
        }
        let mut defs = self.defs.lock();
        if let Some(i) = defs.iter().position(|d| d.name == name) {
            let d = &defs[i];
            let same = d.labels == labels
                && match (&d.family, &buckets) {
                    (Family::Counter(_), None) => true,
                    (Family::Histogram(_, b), Some(want)) => want.is_empty() || b == want,
                    _ => false,
                };
            return if same {
                Ok(i as u32)
            } else {
                Err(format!(
                    "metric {name} is already defined with other labels or kind"
                ))
            };
        }
        if defs.len() >= MAX_METRICS {
            return Err(format!("a plugin may define at most {MAX_METRICS} metrics"));
        }
        let full = format!("{}{name}", self.prefix);
        let mut names: Vec<&str> = labels.iter().map(String::as_str).collect();
        names.push("version");
        let family = match buckets {
            None => Family::Counter(
                CounterVec::new(Opts::new(&full, help), &names).map_err(|e| e.to_string())?,
            ),
            Some(buckets) => {
                let buckets = if buckets.is_empty() {
                    prometheus::DEFAULT_BUCKETS.to_vec()
                } else {
                    buckets
                };
                let opts = HistogramOpts::new(&full, help).buckets(buckets.clone());
                let vec = HistogramVec::new(opts, &names).map_err(|e| e.to_string())?;
                Family::Histogram(vec, buckets)
            }
        };
        if let Some(registry) = &self.registry {
            let collector: Box<dyn prometheus::core::Collector> = match &family {
                Family::Counter(c) => Box::new(c.clone()),
                Family::Histogram(h, _) => Box::new(h.clone()),
            };
            registry.try_register(collector)?;
        }
        defs.push(Def {
            name: name.to_string(),
            labels,
            family,
            series: HashSet::new(),
        });
        Ok(defs.len() as u32 - 1)
    }

    /// Adds to a counter (`histogram` false) or observes in a histogram.
    pub fn record(
        &self,
        metric: u32,
        labels: Vec<String>,
        version: &str,
        value: f64,
        histogram: bool,
    ) -> Result<(), String> {
        let mut defs = self.defs.lock();
        let def = defs
            .get_mut(metric as usize)
            .ok_or_else(|| format!("no metric {metric}: define it first"))?;
        if labels.len() != def.labels.len() {
            return Err(format!(
                "metric {} takes {} label value(s), not {}",
                def.name,
                def.labels.len(),
                labels.len()
            ));
        }
        if !def.series.contains(&labels) {
            if def.series.len() >= MAX_SERIES {
                return Err(format!(
                    "metric {} has {MAX_SERIES} label-value sets, its bound; this one is dropped",
                    def.name
                ));
            }
            def.series.insert(labels.clone());
        }
        let mut values: Vec<&str> = labels.iter().map(String::as_str).collect();
        values.push(version);
        match (&def.family, histogram) {
            (Family::Counter(c), false) if value >= 0.0 && value.is_finite() => {
                c.with_label_values(&values).inc_by(value)
            }
            (Family::Counter(_), false) => {
                return Err(format!("a counter only grows: cannot add {value}"));
            }
            (Family::Histogram(h, _), true) => h.with_label_values(&values).observe(value),
            _ => {
                return Err(format!(
                    "metric {} is a {}",
                    def.name,
                    if histogram { "counter" } else { "histogram" }
                ));
            }
        }
        Ok(())
    }
}

fn check_name(name: &str, what: &str) -> Result<(), String> {
    let good = name.len() <= NAME_MAX
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if good {
        Ok(())
    } else {
        Err(format!(
            "{what} name {name:?} must be [a-z][a-z0-9_]*, at most {NAME_MAX} bytes"
        ))
    }
}

impl Host for StoreData {
    fn define_counter(
        &mut self,
        name: String,
        help: String,
        labels: Vec<String>,
    ) -> wasmtime::Result<Result<u32, String>> {
        Ok(self.metrics.define(&name, &help, labels, None))
    }

    fn define_histogram(
        &mut self,
        name: String,
        help: String,
        labels: Vec<String>,
        buckets: Vec<f64>,
    ) -> wasmtime::Result<Result<u32, String>> {
        Ok(self.metrics.define(&name, &help, labels, Some(buckets)))
    }

    fn add(
        &mut self,
        metric: u32,
        labels: Vec<String>,
        value: f64,
    ) -> wasmtime::Result<Result<(), String>> {
        Ok(self.record_metric(metric, labels, value, false))
    }

    fn observe(
        &mut self,
        metric: u32,
        labels: Vec<String>,
        value: f64,
    ) -> wasmtime::Result<Result<(), String>> {
        Ok(self.record_metric(metric, labels, value, true))
    }
}

impl StoreData {
    /// One value for a metric of this instance's plugin, labelled with its version.
    fn record_metric(
        &self,
        metric: u32,
        labels: Vec<String>,
        value: f64,
        histogram: bool,
    ) -> Result<(), String> {
        let version = &self.plugin.version;
        self.metrics
            .record(metric, labels, version, value, histogram)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_are_defined_once_bounded_and_exported() {
        let registry = Arc::new(Metrics::new());
        let m = PluginMetrics::new("notify-once", Some(registry.clone()));
        let sent = m
            .define("sent_total", "Sent.", vec!["kind".into()], None)
            .unwrap();
        assert_eq!(
            m.define("sent_total", "Sent.", vec!["kind".into()], None),
            Ok(sent)
        );
        assert!(m.define("sent_total", "Sent.", vec![], None).is_err());
        assert!(m.define("Bad-Name", "x", vec![], None).is_err());
        assert!(m.define("v", "x", vec!["version".into()], None).is_err());
        m.record(sent, vec!["mention".into()], "1.0.0", 2.0, false)
            .unwrap();
        assert!(m.record(sent, vec![], "1.0.0", 1.0, false).is_err());
        assert!(
            m.record(sent, vec!["x".into()], "1.0.0", -1.0, false)
                .is_err()
        );
        assert!(
            m.record(sent, vec!["x".into()], "1.0.0", 1.0, true)
                .is_err()
        );
        for i in 0..MAX_SERIES {
            let _ = m.record(sent, vec![format!("k{i}")], "1.0.0", 1.0, false);
        }
        assert!(
            m.record(sent, vec!["over".into()], "1.0.0", 1.0, false)
                .is_err()
        );
        let text = registry.render();
        assert!(
            text.contains(
                r#"hookwire_plugin_notify_once_sent_total{kind="mention",version="1.0.0"} 2"#
            ),
            "{text}"
        );
        let h = m
            .define("size", "Sizes.", vec![], Some(vec![1.0, 10.0]))
            .unwrap();
        m.record(h, vec![], "1.0.0", 5.0, true).unwrap();
        assert!(
            registry
                .render()
                .contains("hookwire_plugin_notify_once_size_bucket")
        );
        for i in 2..MAX_METRICS {
            m.define(&format!("m{i}"), "x", vec![], None).unwrap();
        }
        assert!(m.define("one_more", "x", vec![], None).is_err());
    }
}
