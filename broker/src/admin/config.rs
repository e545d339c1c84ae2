//! `[api]`: the server API's limits, with their validation.

use serde::{Deserialize, Serialize};

use crate::validation::Problems;

/// `[api]`: the server API's limits.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ApiConfig {
    /// Largest request body of the server API, in bytes.
    pub max_body_bytes: usize,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            max_body_bytes: 1 << 20,
        }
    }
}

impl ApiConfig {
    pub fn validate(&self, p: &mut Problems) {
        p.range(
            "api.max_body_bytes",
            self.max_body_bytes as u64,
            1024,
            64 << 20,
        );
    }
}
