//! Configuration of a `type: nats` sink.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct NatsSinkConfig {
    /// `nats://host:4222`, several separated by commas.
    pub url: String,
}

impl NatsSinkConfig {
    /// Broker-specific checks, as `(path below this sink, message)`; empty when valid.
    pub fn validate(&self) -> Vec<(String, String)> {
        Vec::new()
    }
}
