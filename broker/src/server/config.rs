//! `[shutdown]`: how long a drain may take, with its validation.

use serde::{Deserialize, Serialize};

use crate::validation::Problems;

/// `[shutdown]`: how long a drain may take.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ShutdownConfig {
    /// Time allowed from SIGTERM to exit.
    pub drain_ms: u64,
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        Self { drain_ms: 10_000 }
    }
}

impl ShutdownConfig {
    pub fn validate(&self, p: &mut Problems) {
        p.range("shutdown.drain_ms", self.drain_ms, 0, 600_000);
    }
}
