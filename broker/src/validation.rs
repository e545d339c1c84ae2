//! Config validation: every section checks itself into one [`Problems`] list, so a bad
//! config is reported whole, each problem naming the key, the value and what is allowed.

use crate::rate::Rate;

#[derive(Debug, Default)]
pub struct Problems(Vec<String>);

impl Problems {
    pub fn push(&mut self, problem: impl Into<String>) {
        self.0.push(problem.into());
    }

    /// `key = value: must be min to max` unless `min <= value <= max`.
    pub fn range(&mut self, key: &str, value: u64, min: u64, max: u64) {
        if value < min || value > max {
            self.push(format!("{key} = {value}: must be {min} to {max}"));
        }
    }

    /// A rate's burst must reach the rate when the limit is on. `key` is the stem:
    /// `rate_limits.user_publishes` for `…_per_sec` and `…_burst`.
    pub fn rate_and_burst(&mut self, key: &str, rate: Rate, burst: u32) {
        if let Some(rate) = rate.get()
            && burst < rate.get()
        {
            self.push(format!(
                "{key}_burst = {burst}: must be at least {key}_per_sec ({rate}) when the limit is on"
            ));
        }
    }

    pub fn into_result(self) -> Result<(), Vec<String>> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(self.0)
        }
    }
}
