//! Configuration of a `type: rabbitmq` sink.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RabbitMqSinkConfig {
    /// `amqp://user:pass@host:5672/%2f` or `amqps://...`.
    pub url: String,
    /// The exchange messages are published to; the route's topic is the routing key.
    pub exchange: String,
}

impl RabbitMqSinkConfig {
    /// Broker-specific checks, as `(path below this sink, message)`; empty when valid.
    pub fn validate(&self) -> Vec<(String, String)> {
        Vec::new()
    }
}
