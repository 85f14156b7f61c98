//! Configuration of a `type: kafka` sink.
//!
//! ```yaml
//! sinks:
//!   kafka:
//!     type: kafka
//!     brokers: "kafka-1:9092,kafka-2:9092"
//!     options:                          # any librdkafka producer option, passed through
//!       security.protocol: SASL_SSL
//!       sasl.mechanisms: SCRAM-SHA-512
//!       sasl.username: fondo-bridge
//!       ssl.ca.location: /etc/kafka/ca.pem
//!     sasl_password_file: /run/secrets/kafka-password   # or sasl_password (from the environment)
//!     connect_timeout_ms: 10000         # the start-up check that the cluster answers
//!     max_in_flight: 1024               # messages waiting for their delivery report at once
//!     create_topics:                    # optional, created at start when missing (off by default)
//!       - { name: fondo.order, partitions: 6, replication: 3, retention_ms: 604800000 }
//! ```
//!
//! Defaults for at-least-once delivery: `acks=all`, `enable.idempotence=true`, and a bounded
//! producer queue (`queue.buffering.max.messages=100000`, `queue.buffering.max.kbytes=65536`).
//! The options that decide delivery are validated, never silently overridden: `acks` other than
//! `all`/`-1` and `enable.idempotence=false` are errors unless `accept_at_most_once: true`.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::Secret;

/// A `type: kafka` sink: an idempotent rdkafka producer, each publish confirmed by `acks=all`.
#[derive(Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct KafkaSinkConfig {
    /// Bootstrap servers, `host:port[,host:port]`.
    pub brokers: String,
    /// Any librdkafka producer option, passed through (`security.protocol`, `sasl.*`, `ssl.*`, ...).
    /// Options that decide delivery (`acks`, `enable.idempotence`) are validated, not overridden.
    #[serde(default)]
    pub options: BTreeMap<String, String>,
    /// The SASL password (librdkafka `sasl.password`); prefer `sasl_password_file` or the
    /// environment (`FONDO_BRIDGE__SINKS__<NAME>__SASL_PASSWORD`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sasl_password: Option<Secret>,
    /// A file holding the SASL password (trimmed), read at start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sasl_password_file: Option<PathBuf>,
    /// The explicit acknowledgement that `acks` other than `all`, or `enable.idempotence=false`,
    /// can lose, duplicate or reorder messages. Off by default.
    #[serde(default)]
    pub accept_at_most_once: bool,
    /// How long the start-up check (metadata from the bootstrap servers, topic creation) may take
    /// before the sink fails to start.
    #[serde(default = "default_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    /// Messages waiting for their delivery report at once (the confirm window, as the RabbitMQ
    /// and NATS sinks have it); a publish beyond it waits. Within librdkafka's own queue bound.
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight: usize,
    /// Topics created at start when missing, through the admin API. Empty (off) by default.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub create_topics: Vec<KafkaTopicConfig>,
}

/// A topic the sink creates at start when it does not exist yet.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct KafkaTopicConfig {
    /// Topic name: letters, digits, `.`, `_`, `-`, at most 249 characters.
    pub name: String,
    /// Partition count; the broker's default when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partitions: Option<i32>,
    /// Replication factor; the broker's default when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replication: Option<i32>,
    /// Topic `retention.ms` (`-1`: forever); the broker's default when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention_ms: Option<i64>,
    /// Further topic configs (`cleanup.policy`, `min.insync.replicas`, ...).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub config: BTreeMap<String, String>,
}

fn default_connect_timeout_ms() -> u64 {
    10_000
}

fn default_max_in_flight() -> usize {
    1024
}

/// The largest `max_in_flight` accepted (the window is a semaphore).
const MAX_IN_FLIGHT: usize = 1 << 20;

impl Default for KafkaSinkConfig {
    fn default() -> Self {
        Self {
            brokers: String::new(),
            options: BTreeMap::new(),
            sasl_password: None,
            sasl_password_file: None,
            accept_at_most_once: false,
            connect_timeout_ms: default_connect_timeout_ms(),
            max_in_flight: default_max_in_flight(),
            create_topics: Vec::new(),
        }
    }
}

/// Whether a librdkafka option holds a secret, so its value is never printed.
pub fn is_secret_option(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    [
        "password",
        "secret",
        "jaas",
        "oauthbearer.config",
        "key.pem",
        "token",
    ]
    .iter()
    .any(|s| k.contains(s))
}

impl fmt::Debug for KafkaSinkConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let options: BTreeMap<&str, &str> = self
            .options
            .iter()
            .map(|(k, v)| {
                let v = if is_secret_option(k) {
                    "***"
                } else {
                    v.as_str()
                };
                (k.as_str(), v)
            })
            .collect();
        f.debug_struct("KafkaSinkConfig")
            .field("brokers", &self.brokers)
            .field("options", &options)
            .field("sasl_password", &self.sasl_password)
            .field("sasl_password_file", &self.sasl_password_file)
            .field("accept_at_most_once", &self.accept_at_most_once)
            .field("connect_timeout_ms", &self.connect_timeout_ms)
            .field("max_in_flight", &self.max_in_flight)
            .field("create_topics", &self.create_topics)
            .finish()
    }
}

/// Whether a librdkafka boolean value means true (librdkafka accepts these spellings).
fn truthy(v: &str) -> Option<bool> {
    match v.trim().to_ascii_lowercase().as_str() {
        "true" | "t" | "1" | "yes" | "y" | "on" => Some(true),
        "false" | "f" | "0" | "no" | "n" | "off" => Some(false),
        _ => None,
    }
}

/// Whether `name` is a legal Kafka topic name.
pub fn valid_topic_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 249
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-'))
}

impl KafkaSinkConfig {
    /// Broker-specific checks, as `(path below this sink, message)`; empty when valid. One list of checks, a few lines each, in the order of the keys: longer than most
    /// functions on purpose, since splitting it would scatter the checks of one section.
    pub fn validate(&self) -> Vec<(String, String)> {
        let mut p: Vec<(String, String)> = Vec::new();
        let hint = "remove it (the default is at-least-once, in order per key) or set \
             `accept_at_most_once: true` to accept that";
        for (key, value) in &self.options {
            let path = format!("options.{key}");
            match key.as_str() {
                "acks" | "request.required.acks" => {
                    let v = value.trim().to_ascii_lowercase();
                    if v != "all" && v != "-1" && !self.accept_at_most_once {
                        p.push((
                            path,
                            format!(
                                "{key}={value} does not wait for every in-sync replica, so \
                                 confirmed messages can be lost; {hint}"
                            ),
                        ));
                    }
                }
                "enable.idempotence" => match truthy(value) {
                    Some(true) => {}
                    Some(false) if self.accept_at_most_once => {}
                    Some(false) => p.push((
                        path,
                        format!(
                            "enable.idempotence=false lets retries duplicate and reorder \
                             messages within a partition; {hint}"
                        ),
                    )),
                    None => p.push((path, format!("not a boolean: {value:?}"))),
                },
                "delivery.report.only.error" if truthy(value) != Some(false) => p.push((
                    path,
                    "the sink needs a delivery report for every message to confirm it; \
                     remove this option"
                        .into(),
                )),
                "bootstrap.servers" | "metadata.broker.list" => p.push((
                    path,
                    "set the bootstrap servers with `brokers`, not in `options`".into(),
                )),
                "transactional.id" => p.push((
                    path,
                    "transactions are not used by this sink (the idempotent producer gives \
                     at-least-once in order); remove this option"
                        .into(),
                )),
                "sasl.password"
                    if self.sasl_password.is_some() || self.sasl_password_file.is_some() =>
                {
                    p.push((
                        path,
                        "set the SASL password once: `sasl_password`, `sasl_password_file` or \
                         this option"
                            .into(),
                    ))
                }
                _ => {}
            }
            if let Some(msg) = check_librdkafka_option(key, value) {
                p.push((format!("options.{key}"), msg));
            }
        }
        if self.sasl_password.is_some() && self.sasl_password_file.is_some() {
            p.push((
                "sasl_password_file".into(),
                "set either `sasl_password` or `sasl_password_file`, not both".into(),
            ));
        }
        if self.connect_timeout_ms == 0 {
            p.push(("connect_timeout_ms".into(), "must be greater than 0".into()));
        }
        if self.max_in_flight == 0 || self.max_in_flight > MAX_IN_FLIGHT {
            p.push((
                "max_in_flight".into(),
                format!("must be between 1 and {MAX_IN_FLIGHT}"),
            ));
        }
        let mut seen = BTreeSet::new();
        for (i, t) in self.create_topics.iter().enumerate() {
            let at = format!("create_topics[{i}]");
            if !valid_topic_name(&t.name) {
                p.push((
                    format!("{at}.name"),
                    format!(
                        "{:?} is not a legal Kafka topic name (letters, digits, `.`, `_`, `-`, \
                         at most 249)",
                        t.name
                    ),
                ));
            }
            if !seen.insert(t.name.as_str()) {
                p.push((
                    format!("{at}.name"),
                    format!("topic {:?} listed twice", t.name),
                ));
            }
            if t.partitions.is_some_and(|n| n < 1) {
                p.push((format!("{at}.partitions"), "must be at least 1".into()));
            }
            if t.replication.is_some_and(|n| n < 1) {
                p.push((format!("{at}.replication"), "must be at least 1".into()));
            }
            if t.retention_ms.is_some_and(|n| n < -1) {
                p.push((
                    format!("{at}.retention_ms"),
                    "must be -1 (forever) or a duration in milliseconds".into(),
                ));
            }
            if t.retention_ms.is_some() && t.config.contains_key("retention.ms") {
                p.push((
                    format!("{at}.config.retention.ms"),
                    "set either `retention_ms` or `config.retention.ms`, not both".into(),
                ));
            }
        }
        p
    }
}

/// Whether librdkafka knows `key` and accepts `value` for it; `Some(reason)` when not. The value
/// of a secret option never appears in the reason.
#[cfg(feature = "kafka")]
fn check_librdkafka_option(key: &str, value: &str) -> Option<String> {
    use rdkafka::ClientConfig;
    use rdkafka::error::KafkaError;
    use rdkafka::types::RDKafkaConfRes;

    match ClientConfig::new().set(key, value).create_native_config() {
        Ok(_) => None,
        Err(KafkaError::ClientConfig(RDKafkaConfRes::RD_KAFKA_CONF_UNKNOWN, ..)) => {
            Some(format!("unknown librdkafka option {key:?}"))
        }
        Err(KafkaError::ClientConfig(_, desc, ..)) => {
            let desc = if is_secret_option(key) && !value.is_empty() {
                desc.replace(value, "***")
            } else {
                desc
            };
            Some(format!(
                "invalid value for librdkafka option {key:?}: {desc}"
            ))
        }
        Err(e) => Some(format!("librdkafka rejected option {key:?}: {e}")),
    }
}

#[cfg(not(feature = "kafka"))]
fn check_librdkafka_option(_key: &str, _value: &str) -> Option<String> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(options: &[(&str, &str)]) -> KafkaSinkConfig {
        KafkaSinkConfig {
            brokers: "127.0.0.1:9092".into(),
            options: options
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            ..KafkaSinkConfig::default()
        }
    }

    fn paths(c: &KafkaSinkConfig) -> Vec<String> {
        c.validate().into_iter().map(|(p, _)| p).collect()
    }

    #[test]
    fn defaults_are_valid() {
        assert!(cfg(&[]).validate().is_empty());
        assert!(
            cfg(&[
                ("acks", "all"),
                ("enable.idempotence", "true"),
                ("linger.ms", "10")
            ])
            .validate()
            .is_empty()
        );
    }

    #[test]
    fn the_confirm_window_is_bounded() {
        for (n, ok) in [
            (0, false),
            (1, true),
            (1024, true),
            (MAX_IN_FLIGHT + 1, false),
        ] {
            let c = KafkaSinkConfig {
                max_in_flight: n,
                ..cfg(&[])
            };
            assert_eq!(paths(&c).is_empty(), ok, "{n}: {:?}", c.validate());
            if !ok {
                assert_eq!(paths(&c), ["max_in_flight"]);
            }
        }
    }

    #[test]
    fn delivery_settings_need_the_opt_out() {
        let c = cfg(&[("acks", "0"), ("enable.idempotence", "false")]);
        assert_eq!(
            paths(&c),
            vec!["options.acks", "options.enable.idempotence"]
        );
        let msgs = c.validate();
        assert!(msgs[0].1.contains("acks=0"), "{}", msgs[0].1);
        assert!(msgs[0].1.contains("accept_at_most_once"), "{}", msgs[0].1);
        assert_eq!(
            paths(&cfg(&[("request.required.acks", "1")])),
            vec!["options.request.required.acks"]
        );
        let mut ok = c.clone();
        ok.accept_at_most_once = true;
        assert!(ok.validate().is_empty(), "{:?}", ok.validate());
    }

    #[test]
    fn options_that_break_confirmation_are_rejected() {
        assert_eq!(
            paths(&cfg(&[("delivery.report.only.error", "true")])).len(),
            1
        );
        assert_eq!(paths(&cfg(&[("bootstrap.servers", "x:1")])).len(), 1);
        assert_eq!(paths(&cfg(&[("transactional.id", "x")])).len(), 1);
    }

    #[cfg(feature = "kafka")]
    #[test]
    fn unknown_and_invalid_librdkafka_options() {
        let v = cfg(&[("no.such.option", "1")]).validate();
        assert_eq!(v.len(), 1);
        assert_eq!(v[0].0, "options.no.such.option");
        assert!(v[0].1.contains("unknown librdkafka option"), "{}", v[0].1);
        let v = cfg(&[("linger.ms", "soon")]).validate();
        assert_eq!(v.len(), 1, "{v:?}");
        assert!(v[0].1.contains("linger.ms"), "{}", v[0].1);
    }

    #[test]
    fn topics_are_checked() {
        let mut c = cfg(&[]);
        c.create_topics = vec![
            KafkaTopicConfig {
                name: "ok.topic".into(),
                partitions: Some(3),
                replication: Some(1),
                retention_ms: Some(-1),
                config: BTreeMap::new(),
            },
            KafkaTopicConfig {
                name: "bad/topic".into(),
                partitions: Some(0),
                replication: Some(0),
                retention_ms: None,
                config: BTreeMap::new(),
            },
        ];
        assert_eq!(
            paths(&c),
            vec![
                "create_topics[1].name",
                "create_topics[1].partitions",
                "create_topics[1].replication"
            ]
        );
    }

    #[test]
    fn secrets_stay_out_of_debug() {
        let mut c = cfg(&[("sasl.password", "hunter2"), ("sasl.username", "u")]);
        c.sasl_password = Some(Secret("hunter3".into()));
        let d = format!("{c:?}");
        assert!(!d.contains("hunter2") && !d.contains("hunter3"), "{d}");
        assert!(d.contains("sasl.username"));
    }

    #[test]
    fn yaml_shape() {
        let c: KafkaSinkConfig = serde_yaml_like(
            r#"{"brokers":"k:9092","options":{"linger.ms":"5"},"accept_at_most_once":false,
                "create_topics":[{"name":"t","partitions":3,"replication":1,"retention_ms":1000}]}"#,
        );
        assert_eq!(c.create_topics[0].partitions, Some(3));
        assert_eq!(c.connect_timeout_ms, 10_000);
        assert_eq!(c.max_in_flight, 1024);
        assert!(serde_json::from_str::<KafkaSinkConfig>(r#"{"brokers":"k","nope":1}"#).is_err());
    }

    fn serde_yaml_like(s: &str) -> KafkaSinkConfig {
        serde_json::from_str(s).unwrap_or_else(|e| panic!("{e}"))
    }
}
