//! Configuration of a `type: rabbitmq` sink.
//!
//! ```yaml
//! sinks:
//!   rabbit:
//!     type: rabbitmq
//!     url: "amqp://bridge@rabbitmq:5672/%2f"   # amqps:// for TLS; the vhost is the path (%2f = "/")
//!     exchange: fondo                          # the route's topic is the routing key
//!     password_file: /run/secrets/rabbitmq-password   # replaces the URL's password (or `password`)
//!     tls: { ca_file: /etc/rabbitmq/ca.pem }   # optional, with amqps://
//!     max_in_flight: 1024                      # publishes waiting for their confirm at once
//!     confirm_timeout_ms: 30000
//!     reconnect_wait_ms: 5000
//!     declare:                                 # optional topology, off by default
//!       exchange: { type: topic, durable: true }
//!       dead_letter_exchange: { name: fondo.dlx, type: fanout, queue: fondo.dead }
//!       queues:
//!         - { name: fondo.orders, type: quorum, bindings: ["fondo.order.#"] }
//! ```
//!
//! Without `declare`, the exchange must exist already (it is checked with a passive declare at
//! start, so a typo fails the start instead of every publish).

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::Secret;

/// The longest AMQP short string (exchange, queue, routing key, header name), in bytes.
pub const AMQP_SHORTSTR_MAX: usize = 255;

/// A `type: rabbitmq` sink: AMQP 0-9-1 with publisher confirms and mandatory publishing.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RabbitMqSinkConfig {
    /// `amqp://user:pass@host:5672/%2f` or `amqps://...`; the path is the vhost (`%2f` is `/`).
    /// URL query options (`heartbeat`, `frame_max`, `channel_max`) are honoured.
    pub url: String,
    /// The exchange messages are published to; the route's topic is the routing key. `""` is the
    /// default exchange (the routing key is then a queue name).
    pub exchange: String,
    /// User name; overrides the one in the URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Password; overrides the URL's. Prefer `password_file` or the environment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<Secret>,
    /// File holding the password (trimmed); read again on every reconnect, so rotation works.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_file: Option<PathBuf>,
    /// TLS settings for `amqps://` (default: the platform's trust store).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<RabbitMqTlsConfig>,
    /// How long one connection attempt (TCP, TLS, AMQP handshake, topology) may take.
    #[serde(default = "default_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    /// How long a publish waits for the broker's confirm before failing (retriable).
    #[serde(default = "default_confirm_timeout_ms")]
    pub confirm_timeout_ms: u64,
    /// Publishes waiting for their confirm at once (the confirm window); more wait for a slot.
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight: usize,
    /// While the connection is down, how long a new publish waits for it before failing (retriable).
    #[serde(default = "default_reconnect_wait_ms")]
    pub reconnect_wait_ms: u64,
    /// The first pause before reconnecting; doubles (with jitter) on every failed attempt. Old
    /// name: `reconnect_delay_initial_ms`.
    #[serde(default = "default_reconnect_initial_ms")]
    pub reconnect_initial_ms: u64,
    /// The longest pause between two reconnect attempts (attempts never stop). Old name:
    /// `reconnect_delay_max_ms`.
    #[serde(default = "default_reconnect_max_ms")]
    pub reconnect_max_ms: u64,
    /// AMQP heartbeat in seconds, to find dead connections (a `heartbeat` in the URL wins).
    #[serde(default = "default_heartbeat_s")]
    pub heartbeat_s: u16,
    /// Larger payloads are rejected as fatal before publishing (RabbitMQ's `max_message_size`
    /// closes the channel, failing every message in flight with it).
    #[serde(default = "default_max_message_bytes")]
    pub max_message_bytes: usize,
    /// Topology to declare at start and after every reconnect; off by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub declare: Option<RabbitMqTopology>,
}

/// TLS towards the broker (with an `amqps://` URL).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RabbitMqTlsConfig {
    /// PEM file of the CA(s) that signed the broker's certificate; default: the system roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// Client certificate (PEM) for mutual TLS; needs `key_file`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_file: Option<PathBuf>,
    /// Client private key (PKCS#8 PEM) for mutual TLS; needs `cert_file`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_file: Option<PathBuf>,
}

/// What the sink declares (idempotently) at start and after each reconnect.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RabbitMqTopology {
    /// Declare the sink's `exchange` itself; absent: it must exist (checked passively).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exchange: Option<ExchangeDeclaration>,
    /// A dead-letter exchange for consumers: queues with `dead_letter: true` (the default) send
    /// rejected and expired messages to it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_letter_exchange: Option<DeadLetterExchange>,
    /// Queues to declare and bind to the sink's exchange.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub queues: Vec<QueueDeclaration>,
}

/// How the sink's exchange is declared.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ExchangeDeclaration {
    #[serde(default, rename = "type")]
    pub kind: ExchangeType,
    #[serde(default = "yes")]
    pub durable: bool,
}

impl Default for ExchangeDeclaration {
    fn default() -> Self {
        Self {
            kind: ExchangeType::Topic,
            durable: true,
        }
    }
}

/// An AMQP exchange type.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ExchangeType {
    #[default]
    Topic,
    Direct,
    Fanout,
    Headers,
}

/// A dead-letter exchange for consumers of the declared queues.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DeadLetterExchange {
    pub name: String,
    #[serde(default = "fanout", rename = "type")]
    pub kind: ExchangeType,
    /// A durable queue bound to it (with `#`, which matches everything on topic and fanout
    /// exchanges), so dead letters are kept; absent: none is declared.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<String>,
}

/// A queue bound to the sink's exchange.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct QueueDeclaration {
    pub name: String,
    /// `classic` (default), `quorum` or `stream` (`x-queue-type`).
    #[serde(default, rename = "type")]
    pub kind: QueueType,
    #[serde(default = "yes")]
    pub durable: bool,
    /// Binding keys from the sink's exchange, e.g. `fondo.order.#`.
    #[serde(default)]
    pub bindings: Vec<String>,
    /// Send the queue's rejected and expired messages to `dead_letter_exchange` (when declared).
    #[serde(default = "yes")]
    pub dead_letter: bool,
    /// Further queue arguments (`x-max-length`, `x-message-ttl`, `x-delivery-limit`, ...): strings,
    /// integers and booleans.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub arguments: BTreeMap<String, serde_json::Value>,
}

/// A RabbitMQ queue type.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum QueueType {
    #[default]
    Classic,
    Quorum,
    Stream,
}

impl ExchangeType {
    /// The AMQP name of the type.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Topic => "topic",
            Self::Direct => "direct",
            Self::Fanout => "fanout",
            Self::Headers => "headers",
        }
    }
}

impl QueueType {
    /// The `x-queue-type` value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Classic => "classic",
            Self::Quorum => "quorum",
            Self::Stream => "stream",
        }
    }
}

fn yes() -> bool {
    true
}
fn fanout() -> ExchangeType {
    ExchangeType::Fanout
}
fn default_connect_timeout_ms() -> u64 {
    10_000
}
fn default_confirm_timeout_ms() -> u64 {
    30_000
}
fn default_max_in_flight() -> usize {
    1024
}
fn default_reconnect_wait_ms() -> u64 {
    5_000
}
fn default_reconnect_initial_ms() -> u64 {
    100
}
fn default_reconnect_max_ms() -> u64 {
    10_000
}
fn default_heartbeat_s() -> u16 {
    10
}
fn default_max_message_bytes() -> usize {
    128 * 1024 * 1024
}

/// The largest `max_in_flight` accepted (the window is a semaphore).
pub const MAX_IN_FLIGHT: usize = 1 << 20;

/// `url` with its password replaced by `***`, for messages and logs.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let (authority_end, _) = rest
        .char_indices()
        .find(|(_, c)| matches!(c, '/' | '?' | '#'))
        .unwrap_or((rest.len(), ' '));
    let (authority, tail) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split_once(':').map_or(userinfo, |(u, _)| u);
            if userinfo.contains(':') {
                format!("{scheme}://{user}:***@{host}{tail}")
            } else {
                format!("{scheme}://{user}@{host}{tail}")
            }
        }
        None => url.to_owned(),
    }
}

/// Checks an AMQP exchange or queue name: at most 255 bytes, no control characters.
fn check_name(name: &str) -> Result<(), String> {
    if name.len() > AMQP_SHORTSTR_MAX {
        return Err(format!("longer than {AMQP_SHORTSTR_MAX} bytes"));
    }
    if name.chars().any(char::is_control) {
        return Err("must not contain control characters".into());
    }
    Ok(())
}

impl RabbitMqSinkConfig {
    /// Broker-specific checks, as `(path below this sink, message)`; empty when valid. One list of checks, a few lines each, in the order of the keys: longer than most
    /// functions on purpose, since splitting it would scatter the checks of one section.
    pub fn validate(&self) -> Vec<(String, String)> {
        let mut p: Vec<(String, String)> = Vec::new();
        let mut add = |path: &str, msg: String| p.push((path.to_owned(), msg));

        #[cfg(feature = "rabbitmq")]
        if let Err(e) = self.url.parse::<lapin::uri::AMQPUri>() {
            add(
                "url",
                format!("not a valid AMQP URL ({}): {e}", redact_url(&self.url)),
            );
        }
        if let Err(e) = check_name(&self.exchange) {
            add("exchange", e);
        }
        if self.password.is_some() && self.password_file.is_some() {
            add(
                "password_file",
                "set either `password` or `password_file`, not both".into(),
            );
        }
        if let Some(tls) = &self.tls {
            if !self.url.starts_with("amqps://") {
                add("tls", "TLS settings need an amqps:// URL".into());
            }
            if tls.cert_file.is_some() != tls.key_file.is_some() {
                add(
                    "tls",
                    "`cert_file` and `key_file` go together (mutual TLS)".into(),
                );
            }
        }
        for (field, v) in [
            ("connect_timeout_ms", self.connect_timeout_ms),
            ("confirm_timeout_ms", self.confirm_timeout_ms),
            ("reconnect_initial_ms", self.reconnect_initial_ms),
            ("reconnect_max_ms", self.reconnect_max_ms),
        ] {
            if v == 0 {
                add(field, "must be greater than 0".into());
            }
        }
        if self.reconnect_initial_ms > self.reconnect_max_ms {
            add(
                "reconnect_initial_ms",
                "must not exceed `reconnect_max_ms`".into(),
            );
        }
        if self.max_in_flight == 0 || self.max_in_flight > MAX_IN_FLIGHT {
            add(
                "max_in_flight",
                format!("must be between 1 and {MAX_IN_FLIGHT}"),
            );
        }
        if self.max_message_bytes == 0 {
            add("max_message_bytes", "must be greater than 0".into());
        }

        if let Some(d) = &self.declare {
            let reserved = self.exchange.is_empty() || self.exchange.starts_with("amq.");
            if d.exchange.is_some() && reserved {
                add(
                    "declare.exchange",
                    format!(
                        "the exchange {:?} is predefined by RabbitMQ and cannot be declared; remove `declare.exchange`",
                        self.exchange
                    ),
                );
            }
            if let Some(dlx) = &d.dead_letter_exchange {
                if dlx.name.is_empty() {
                    add(
                        "declare.dead_letter_exchange.name",
                        "must not be empty".into(),
                    );
                } else if let Err(e) = check_name(&dlx.name) {
                    add("declare.dead_letter_exchange.name", e);
                } else if dlx.name == self.exchange {
                    add(
                        "declare.dead_letter_exchange.name",
                        "must differ from the sink's exchange".into(),
                    );
                } else if dlx.name.starts_with("amq.") {
                    add(
                        "declare.dead_letter_exchange.name",
                        "names starting with `amq.` are reserved".into(),
                    );
                }
                if let Some(q) = &dlx.queue {
                    if q.is_empty() {
                        add(
                            "declare.dead_letter_exchange.queue",
                            "must not be empty".into(),
                        );
                    } else if let Err(e) = check_name(q) {
                        add("declare.dead_letter_exchange.queue", e);
                    }
                }
            }
            let mut seen = BTreeSet::new();
            if let Some(q) = d
                .dead_letter_exchange
                .as_ref()
                .and_then(|x| x.queue.as_ref())
            {
                seen.insert(q.as_str());
            }
            for (i, q) in d.queues.iter().enumerate() {
                let at = format!("declare.queues[{i}]");
                if q.name.is_empty() {
                    add(&format!("{at}.name"), "must not be empty".into());
                } else if let Err(e) = check_name(&q.name) {
                    add(&format!("{at}.name"), e);
                } else if q.name.starts_with("amq.") {
                    add(
                        &format!("{at}.name"),
                        "names starting with `amq.` are reserved".into(),
                    );
                } else if !seen.insert(q.name.as_str()) {
                    add(
                        &format!("{at}.name"),
                        format!("queue {:?} is declared twice", q.name),
                    );
                }
                if matches!(q.kind, QueueType::Quorum | QueueType::Stream) && !q.durable {
                    add(
                        &format!("{at}.durable"),
                        format!("{} queues are always durable", q.kind.as_str()),
                    );
                }
                if self.exchange.is_empty() && !q.bindings.is_empty() {
                    add(
                        &format!("{at}.bindings"),
                        "the default exchange (\"\") cannot be bound; it routes by queue name"
                            .into(),
                    );
                }
                for (j, b) in q.bindings.iter().enumerate() {
                    if b.len() > AMQP_SHORTSTR_MAX {
                        add(
                            &format!("{at}.bindings[{j}]"),
                            format!("longer than {AMQP_SHORTSTR_MAX} bytes"),
                        );
                    }
                }
                for (k, v) in &q.arguments {
                    let path = format!("{at}.arguments.{k}");
                    if k.is_empty() || k.len() > AMQP_SHORTSTR_MAX {
                        add(&path, "argument names are 1 to 255 bytes".into());
                    }
                    if k == "x-queue-type" {
                        add(&path, "set the queue type with `type`".into());
                    }
                    match v {
                        serde_json::Value::String(_) | serde_json::Value::Bool(_) => {}
                        serde_json::Value::Number(n) if n.is_i64() || n.is_u64() => {}
                        _ => add(&path, "must be a string, an integer or a boolean".into()),
                    }
                }
            }
        }
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> RabbitMqSinkConfig {
        serde_json::from_value(serde_json::json!({
            "url": "amqp://guest:guest@127.0.0.1:5672/%2f",
            "exchange": "fondo"
        }))
        .unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn defaults_are_valid() {
        let c = base();
        assert_eq!(c.max_in_flight, 1024);
        assert_eq!(c.heartbeat_s, 10);
        assert!(c.declare.is_none());
        assert!(c.validate().is_empty(), "{:?}", c.validate());
    }

    #[test]
    fn redacts_password_only() {
        assert_eq!(
            redact_url("amqp://bridge:s3cr@t@rabbit:5672/%2f"),
            "amqp://bridge:***@rabbit:5672/%2f"
        );
        assert_eq!(
            redact_url("amqps://bridge@rabbit/vh?heartbeat=5"),
            "amqps://bridge@rabbit/vh?heartbeat=5"
        );
        assert_eq!(redact_url("amqp://rabbit:5672"), "amqp://rabbit:5672");
    }

    #[test]
    fn topology_parses_and_validates() {
        let c: RabbitMqSinkConfig = serde_json::from_value(serde_json::json!({
            "url": "amqp://rabbit/%2f",
            "exchange": "fondo",
            "declare": {
                "exchange": { "type": "topic" },
                "dead_letter_exchange": { "name": "fondo.dlx", "queue": "fondo.dead" },
                "queues": [
                    { "name": "fondo.orders", "type": "quorum", "bindings": ["fondo.order.#"],
                      "arguments": { "x-delivery-limit": 5 } },
                    { "name": "fondo.orders", "durable": false, "type": "stream",
                      "arguments": { "x-bad": 1.5 } }
                ]
            }
        }))
        .unwrap_or_else(|e| panic!("{e}"));
        let d = c.declare.as_ref().unwrap_or_else(|| panic!("declare"));
        assert_eq!(d.exchange.as_ref().map(|e| e.durable), Some(true));
        assert_eq!(
            d.dead_letter_exchange.as_ref().map(|x| x.kind),
            Some(ExchangeType::Fanout)
        );
        let problems: Vec<String> = c.validate().into_iter().map(|(p, _)| p).collect();
        assert_eq!(
            problems,
            vec![
                "declare.queues[1].name",
                "declare.queues[1].durable",
                "declare.queues[1].arguments.x-bad"
            ]
        );
    }

    #[test]
    fn rejects_unknown_fields_and_bad_values() {
        let e = serde_json::from_value::<RabbitMqSinkConfig>(serde_json::json!({
            "url": "amqp://rabbit", "exchange": "x", "exchang_type": "topic"
        }));
        assert!(e.is_err());
        let mut c = base();
        c.exchange = "bad\nname".into();
        c.max_in_flight = 0;
        c.url = "amqp://rabbit:notaport/".into();
        let problems: Vec<String> = c.validate().into_iter().map(|(p, _)| p).collect();
        assert!(problems.contains(&"exchange".to_owned()), "{problems:?}");
        assert!(
            problems.contains(&"max_in_flight".to_owned()),
            "{problems:?}"
        );
        #[cfg(feature = "rabbitmq")]
        assert!(problems.contains(&"url".to_owned()), "{problems:?}");
        let mut c = base();
        c.exchange = "amq.topic".into();
        c.declare = Some(RabbitMqTopology {
            exchange: Some(ExchangeDeclaration::default()),
            ..Default::default()
        });
        assert_eq!(c.validate().len(), 1);
    }
}
