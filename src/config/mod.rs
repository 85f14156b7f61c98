//! Configuration: defaults, then one YAML or TOML file, then `FONDO_BRIDGE__SECTION__KEY` variables,
//! layered by figment. Unknown keys are errors. After parsing, one validation pass reports every
//! problem with its path (`routes[2].to[0].topic: unknown placeholder {foo}`).

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Format, Serialized, Toml, Yaml};
use serde::{Deserialize, Serialize};

pub mod kafka;
pub mod nats;
pub mod rabbitmq;

pub use kafka::KafkaSinkConfig;
pub use nats::NatsSinkConfig;
pub use rabbitmq::RabbitMqSinkConfig;

/// The prefix of environment overrides; sections are separated by a double underscore.
pub const ENV_PREFIX: &str = "FONDO_BRIDGE__";

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub sources: SourcesConfig,
    #[serde(default)]
    pub sinks: BTreeMap<String, SinkConfig>,
    #[serde(default)]
    pub routes: Vec<RouteConfig>,
    #[serde(default)]
    pub unmatched: Unmatched,
    #[serde(default)]
    pub dead_letter: DeadLetterConfig,
    #[serde(default)]
    pub delivery: DeliveryConfig,
    #[serde(default)]
    pub event: EventConfig,
    #[serde(default)]
    pub spool: SpoolConfig,
    #[serde(default)]
    pub admin: AdminConfig,
    #[serde(default)]
    pub telemetry: TelemetryConfig,
    #[serde(default)]
    pub dedupe: DedupeConfig,
    /// Keys this file gives under a name of the previous release (they still work): one notice
    /// each, naming the new key.
    #[serde(skip)]
    pub renamed: Vec<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SourcesConfig {
    pub websocket: Option<WebSocketSourceConfig>,
    pub webhook: Option<WebhookSourceConfig>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct WebSocketSourceConfig {
    /// Base URL; `/v2/partner/client/{client_id}/subscribe` is appended. `ws`, `wss`, `http(s)`.
    pub url: String,
    pub client_ids: Vec<String>,
    /// Bearer token; prefer `token_file` or the environment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<Secret>,
    /// Re-read on every reconnect, so a rotated secret is picked up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
    #[serde(default = "default_heartbeat_timeout_ms")]
    pub heartbeat_timeout_ms: u64,
    #[serde(default = "default_ping_interval_ms")]
    pub ping_interval_ms: u64,
    #[serde(default = "default_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    #[serde(default = "default_reconnect_initial_ms")]
    pub reconnect_initial_ms: u64,
    #[serde(default = "default_reconnect_max_ms")]
    pub reconnect_max_ms: u64,
    /// Frames larger than this are refused (and dead-lettered as too large).
    #[serde(default = "default_max_frame_bytes")]
    pub max_frame_bytes: usize,
    /// Publish a `bridge.gap` marker event after each reconnect.
    #[serde(default)]
    pub gap_marker: bool,
    /// Wait this long before retrying after Fondo refused the token (HTTP 401/403): a wrong token
    /// must never cause a tight reconnect loop.
    #[serde(default = "default_auth_retry_ms")]
    pub auth_retry_ms: u64,
    /// A connection that stayed up this long resets the reconnect backoff to its initial delay.
    #[serde(default = "default_stable_after_ms")]
    pub stable_after_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct WebhookSourceConfig {
    #[serde(default = "default_webhook_listen")]
    pub listen: SocketAddr,
    #[serde(default = "default_webhook_path")]
    pub path: String,
    pub signature: SignatureConfig,
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: usize,
    /// Header carrying the event type when the body has no `eventType`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_type_header: Option<String>,
    /// How long a request may take to arrive in full before it is answered 408.
    #[serde(default = "default_request_timeout_ms")]
    pub request_timeout_ms: u64,
    /// How long the webhook waits for delivery before answering 503 (the sender retries).
    #[serde(default = "default_ack_timeout_ms")]
    pub ack_timeout_ms: u64,
    /// How long a client may take to send a request's headers (HTTP/1.1), the connection's first
    /// bytes, and the TLS handshake, before the connection is closed (slowloris). It also closes
    /// HTTP/1.1 keep-alive connections idle this long.
    #[serde(default = "default_header_read_timeout_ms")]
    pub header_read_timeout_ms: u64,
    /// Serve HTTPS (HTTP/1.1 and HTTP/2 by ALPN) for setups without an ingress.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsServerConfig>,
    /// How much the port gives clients before their signature can be checked: connections,
    /// HTTP/2 streams and windows, idle time, body bytes in memory.
    #[serde(default)]
    pub limits: WebhookLimits,
}

/// The webhook port's resource limits (`sources.webhook.limits`). Every default is safe for the
/// chart's 1 GiB memory limit; the comment on each default function says why that number.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct WebhookLimits {
    /// Connections served at once. At the limit no more are accepted: new ones wait in the
    /// listen backlog until an open one closes. Bounds the memory that connections themselves
    /// hold (buffers, HTTP/2 state, one task each) whatever a client does before its signature
    /// is checked.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Connections the kernel may queue for the bridge (the `listen(2)` backlog); the kernel caps
    /// it at `net.core.somaxconn`.
    #[serde(default = "default_listen_backlog")]
    pub listen_backlog: u32,
    /// Request bytes held in memory at once, over all connections and streams. A request
    /// reserves its `Content-Length` (a body without one: each chunk as it arrives) plus a fixed
    /// 16 KiB for its head and state ([`REQUEST_ALLOWANCE_BYTES`]) before its body is read, and
    /// keeps the reservation until it is answered; when the budget cannot cover it, it is
    /// answered 503 with `Retry-After` at once. At least `sources.webhook.max_body_bytes` + 16 KiB.
    #[serde(default = "default_body_budget_bytes")]
    pub body_budget_bytes: usize,
    /// A connection with no request in flight for this long is closed (HTTP/2: GOAWAY). HTTP/1.1
    /// connections are also closed after `sources.webhook.header_read_timeout_ms` without a new request.
    #[serde(default = "default_idle_timeout_ms")]
    pub idle_timeout_ms: u64,
    /// HTTP/2 streams (requests) one connection may have open at once; more are refused.
    #[serde(default = "default_http2_max_concurrent_streams")]
    pub http2_max_concurrent_streams: u32,
    /// HTTP/2 flow-control window of each stream: how many body bytes a client may send on one
    /// request before the bridge has read them.
    #[serde(default = "default_http2_stream_window_bytes")]
    pub http2_stream_window_bytes: u32,
    /// HTTP/2 flow-control window of each connection: the same, over all of its streams.
    #[serde(default = "default_http2_connection_window_bytes")]
    pub http2_connection_window_bytes: u32,
}

impl Default for WebhookLimits {
    fn default() -> Self {
        Self {
            max_connections: default_max_connections(),
            listen_backlog: default_listen_backlog(),
            body_budget_bytes: default_body_budget_bytes(),
            idle_timeout_ms: default_idle_timeout_ms(),
            http2_max_concurrent_streams: default_http2_max_concurrent_streams(),
            http2_stream_window_bytes: default_http2_stream_window_bytes(),
            http2_connection_window_bytes: default_http2_connection_window_bytes(),
        }
    }
}

/// What each webhook request in progress is charged from `body_budget_bytes` besides its body:
/// its HTTP/2 header list (limited to 16 KiB; an HTTP/1.1 head lives in its connection's read
/// buffer, bounded per connection) and its state in the server (about 9 KiB measured). So the budget also bounds how many requests can be in progress
/// at once (4 096 with the default budget and empty bodies), whatever the connections and streams.
pub const REQUEST_ALLOWANCE_BYTES: usize = 16 * 1024;

/// The largest HTTP/2 flow-control window (RFC 9113 §6.9.1).
const MAX_HTTP2_WINDOW: u32 = (1 << 31) - 1;

impl WebhookSourceConfig {
    /// What is wrong with the connection and memory limits, as `(key, problem)`.
    pub fn limit_problems(&self) -> Vec<(&'static str, String)> {
        let mut p = Vec::new();
        if self.limits.max_connections == 0 {
            p.push(("limits.max_connections", "must be at least 1".into()));
        }
        if !(1..=65_535).contains(&self.limits.listen_backlog) {
            p.push((
                "limits.listen_backlog",
                "must be between 1 and 65535".into(),
            ));
        }
        if u32::try_from(self.max_body_bytes).is_err() {
            p.push(("max_body_bytes", format!("must be at most {}", u32::MAX)));
        }
        let largest = self.max_body_bytes.saturating_add(REQUEST_ALLOWANCE_BYTES);
        if self.limits.body_budget_bytes < largest {
            p.push((
                "limits.body_budget_bytes",
                format!(
                    "must be at least max_body_bytes + {REQUEST_ALLOWANCE_BYTES} ({largest}), or a request with a body of the largest allowed size could never be read"
                ),
            ));
        }
        if self.limits.body_budget_bytes > tokio::sync::Semaphore::MAX_PERMITS {
            p.push((
                "limits.body_budget_bytes",
                format!("must be at most {}", tokio::sync::Semaphore::MAX_PERMITS),
            ));
        }
        if self.limits.idle_timeout_ms == 0 {
            p.push((
                "limits.idle_timeout_ms",
                "must be at least 1 (idle connections would stay open forever)".into(),
            ));
        }
        if self.limits.http2_max_concurrent_streams == 0 {
            p.push((
                "limits.http2_max_concurrent_streams",
                "must be at least 1".into(),
            ));
        }
        if !(1024..=MAX_HTTP2_WINDOW).contains(&self.limits.http2_stream_window_bytes) {
            p.push((
                "limits.http2_stream_window_bytes",
                format!("must be between 1024 and {MAX_HTTP2_WINDOW}"),
            ));
        }
        if !(65_535..=MAX_HTTP2_WINDOW).contains(&self.limits.http2_connection_window_bytes) {
            p.push((
                "limits.http2_connection_window_bytes",
                format!(
                    "must be between 65535 (the protocol's initial window) and {MAX_HTTP2_WINDOW}"
                ),
            ));
        }
        p
    }
}

/// The webhook server's certificate: PEM files, read once at start.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TlsServerConfig {
    /// The certificate chain, leaf first (`CERTIFICATE` blocks).
    pub cert_file: PathBuf,
    /// The private key of the leaf (PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, tag = "scheme", rename_all = "kebab-case")]
pub enum SignatureConfig {
    /// Standard Webhooks: `webhook-id`, `webhook-timestamp`, `webhook-signature: v1,<base64>`.
    StandardWebhooks {
        #[serde(default)]
        secrets: Vec<Secret>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        secrets_file: Option<PathBuf>,
        #[serde(default = "default_tolerance_s")]
        tolerance_s: u64,
    },
    /// A plain HMAC in a header.
    Hmac {
        header: String,
        #[serde(default)]
        algorithm: HmacAlgorithm,
        #[serde(default)]
        encoding: SignatureEncoding,
        #[serde(default)]
        prefix: String,
        /// `{body}` or `{timestamp}.{body}`.
        #[serde(default = "default_signed_content")]
        signed_content: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        timestamp_header: Option<String>,
        #[serde(default)]
        secrets: Vec<Secret>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        secrets_file: Option<PathBuf>,
        #[serde(default = "default_tolerance_s")]
        tolerance_s: u64,
    },
    /// No verification: only with `insecure: true`, and warned about at start.
    None {
        #[serde(default)]
        insecure: bool,
    },
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum HmacAlgorithm {
    #[default]
    Sha256,
    Sha512,
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum SignatureEncoding {
    #[default]
    Hex,
    Base64,
}

/// A secret value: never printed by `Debug`, and never echoed by a parse error. A value the
/// config layers read as a number or a boolean (an all-digit password in the environment) is taken
/// as its text, not refused with a message that would show it.
#[derive(Clone, Serialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(pub String);

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Secret;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a secret string")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Secret, E> {
                Ok(Secret(v.to_owned()))
            }
            fn visit_string<E: serde::de::Error>(self, v: String) -> Result<Secret, E> {
                Ok(Secret(v))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Secret, E> {
                Ok(Secret(v.to_string()))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Secret, E> {
                Ok(Secret(v.to_string()))
            }
            fn visit_u128<E: serde::de::Error>(self, v: u128) -> Result<Secret, E> {
                Ok(Secret(v.to_string()))
            }
            fn visit_i128<E: serde::de::Error>(self, v: i128) -> Result<Secret, E> {
                Ok(Secret(v.to_string()))
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Secret, E> {
                Ok(Secret(v.to_string()))
            }
            fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<Secret, E> {
                Ok(Secret(v.to_string()))
            }
            fn visit_char<E: serde::de::Error>(self, v: char) -> Result<Secret, E> {
                Ok(Secret(v.to_string()))
            }
        }
        d.deserialize_any(V)
    }
}

/// Keys whose environment values are taken as text, exactly (a password `0123` stays `0123`).
const SECRET_KEYS: &[&str] = &["token", "password", "nkey_seed"];

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum SinkConfig {
    File(FileSinkConfig),
    Kafka(KafkaSinkConfig),
    Rabbitmq(RabbitMqSinkConfig),
    Nats(NatsSinkConfig),
}

impl SinkConfig {
    pub fn type_name(&self) -> &'static str {
        match self {
            Self::File(_) => "file",
            Self::Kafka(_) => "kafka",
            Self::Rabbitmq(_) => "rabbitmq",
            Self::Nats(_) => "nats",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FileSinkConfig {
    pub dir: PathBuf,
    #[serde(default)]
    pub fsync: FsyncPolicy,
    /// With `fsync: interval`, how often.
    #[serde(default = "default_fsync_interval_ms")]
    pub fsync_interval_ms: u64,
    /// With `fsync: batch`, how long a group commit may wait for more writes: while writes keep
    /// arriving, each file is fsynced at most once per this interval; after a quiet period the
    /// batch is committed at once, and so is a batch holding a webhook's event once nothing more
    /// is coming (its sender waits for the answer). 0: commit as soon as the writer is free.
    #[serde(default = "default_group_commit_ms")]
    pub group_commit_ms: u64,
}

/// When the file sink makes writes durable before confirming them.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum FsyncPolicy {
    /// Group commit: a batch of writes shares one fsync, and each is confirmed after it.
    #[default]
    Batch,
    /// Confirm after the write; fsync on a timer (a crash can lose the last interval).
    Interval,
    /// Never fsync (tests, demos).
    Never,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    pub name: String,
    /// Event type globs: `order.*`, `*.delete`, `*` (which never matches `heartbeat`).
    #[serde(rename = "match")]
    pub matches: Vec<String>,
    /// JSON pointer → value; every one must be equal for the route to apply.
    #[serde(default, rename = "where")]
    pub filter: BTreeMap<String, serde_json::Value>,
    /// JSON pointers removed from the body before publishing.
    #[serde(default)]
    pub redact: Vec<String>,
    pub to: Vec<DestinationConfig>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DestinationConfig {
    pub sink: String,
    pub topic: String,
    /// Message key template; default: the object's `ref`/`id`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// How the message carries the event: the body as Fondo sent it, or a CloudEvent.
    #[serde(default, skip_serializing_if = "MessageFormat::is_raw")]
    pub format: MessageFormat,
    /// The CloudEvents `source` and `type` templates; only with a `cloudevents-*` format.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cloudevents: Option<CloudEventsConfig>,
}

/// A destination's message format.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum MessageFormat {
    /// The body as Fondo sent it (redacted when the route redacts), with the `fondo-*` headers.
    #[default]
    Raw,
    /// CloudEvents binary content mode: the body as in `raw`, the attributes in headers named as
    /// the broker's CloudEvents protocol binding says.
    CloudeventsBinary,
    /// CloudEvents structured content mode: the body is the JSON event format
    /// (`application/cloudevents+json`) with the Fondo body as `data`.
    CloudeventsStructured,
}

impl MessageFormat {
    pub fn is_raw(&self) -> bool {
        matches!(self, Self::Raw)
    }
}

/// Templates (the placeholders of `topic`) for the CloudEvents attributes the config may set.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct CloudEventsConfig {
    /// Default: `fondo:client/{client_id}`, or `fondo:partner` for an event without a client id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// Default: `se.fondo.{event_type}`.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub event_type: Option<String>,
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Unmatched {
    #[default]
    DeadLetter,
    Drop,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DeadLetterConfig {
    /// The sink dead letters go to; without one, only the fallback file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sink: Option<String>,
    #[serde(default = "default_dead_letter_topic")]
    pub topic: String,
    #[serde(default = "default_fallback_file")]
    pub fallback_file: PathBuf,
    /// Attempts at the dead-letter sink before falling back to the file.
    #[serde(default = "default_dead_letter_attempts")]
    pub max_attempts: u32,
    /// The most bytes the fallback file may hold. A dead letter that would take it past this is
    /// not written: the event stays unacknowledged (webhook 503, WebSocket event kept in the
    /// spool) until the file is emptied (`dlq` tools) or the dead-letter sink is back.
    #[serde(default = "default_fallback_max_bytes")]
    pub fallback_max_bytes: u64,
}

impl Default for DeadLetterConfig {
    fn default() -> Self {
        Self {
            sink: None,
            topic: default_dead_letter_topic(),
            fallback_file: default_fallback_file(),
            max_attempts: default_dead_letter_attempts(),
            fallback_max_bytes: default_fallback_max_bytes(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DeliveryConfig {
    /// Attempts per destination before the event is dead-lettered.
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    #[serde(default = "default_backoff_initial_ms")]
    pub backoff_initial_ms: u64,
    #[serde(default = "default_backoff_max_ms")]
    pub backoff_max_ms: u64,
    /// Give up (dead-letter) after this long even with attempts left; 0 = no limit.
    #[serde(default)]
    pub max_elapsed_ms: u64,
    /// Events inside the bridge at once; when full, sources are slowed down.
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight: usize,
    /// How long shutdown waits for in-flight events before giving up.
    #[serde(default = "default_drain_timeout_ms")]
    pub drain_timeout_ms: u64,
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        Self {
            max_attempts: default_max_attempts(),
            backoff_initial_ms: default_backoff_initial_ms(),
            backoff_max_ms: default_backoff_max_ms(),
            max_elapsed_ms: 0,
            max_in_flight: default_max_in_flight(),
            drain_timeout_ms: default_drain_timeout_ms(),
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct EventConfig {
    /// JSON pointer to an id Fondo provides; without it the id is a content hash.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id_pointer: Option<String>,
    /// The webhook header that carries the delivery id (the same on every retry of a delivery).
    /// Standard Webhooks always uses its signed `webhook-id`; under `hmac` no header is covered
    /// by the signature, so none may be named; with `none` (insecure) any header may.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id_header: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SpoolConfig {
    #[serde(default = "default_true")]
    pub enabled: bool,
    #[serde(default = "default_spool_dir")]
    pub dir: PathBuf,
    #[serde(default = "default_spool_max_bytes")]
    pub max_bytes: u64,
    #[serde(default = "default_spool_segment_bytes")]
    pub segment_bytes: u64,
    /// How long a group commit (fsync) of the spool may wait for more appends: while appends keep
    /// arriving, the spool fsyncs at most once per this interval; after a quiet period it commits
    /// at once (see `group_commit.rs`). 0: commit as soon as the writer is free.
    #[serde(default = "default_group_commit_ms")]
    pub group_commit_ms: u64,
    /// With the WebSocket source alone (no webhook pairing): publish each event while its spool
    /// append commits, instead of after. Its commit then waits up to 50 ms for more events, so a
    /// slow stream shares one fsync among many events (at 100 events/s about a sixth of the CPU
    /// per event is saved, see docs/benchmarks.md). The price is what a crash can lose: events read
    /// in the last 50 ms plus one fsync that the broker had not confirmed yet (about 5 ms when
    /// off); and when the spool's disk fills, the events of the batch that failed were already
    /// handed on without a record. Off by default: then no event is handed on before it is durable.
    #[serde(default)]
    pub publish_while_committing: bool,
}

impl Default for SpoolConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            dir: default_spool_dir(),
            max_bytes: default_spool_max_bytes(),
            segment_bytes: default_spool_segment_bytes(),
            group_commit_ms: default_group_commit_ms(),
            publish_while_committing: false,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// `/metrics`, `/healthz`, `/readyz`; `null` turns the admin server off. Loopback by default:
    /// in a container or a pod, set an address the probes and the scraper reach (the Helm chart
    /// sets `0.0.0.0:9090`).
    #[serde(default = "default_admin_listen")]
    pub listen: Option<SocketAddr>,
    /// `/healthz` fails when the runtime or the spool writer made no progress for this long.
    #[serde(default = "default_stuck_after_ms")]
    pub stuck_after_ms: u64,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            listen: default_admin_listen(),
            stuck_after_ms: default_stuck_after_ms(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TelemetryConfig {
    /// OTLP endpoint for traces (`http://collector:4317` for gRPC, `http://collector:4318` for
    /// HTTP, where `/v1/traces` is appended). Unset: `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` or
    /// `OTEL_EXPORTER_OTLP_ENDPOINT`; none of them set means no trace export at all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub otlp_endpoint: Option<String>,
    /// `grpc` or `http` (protobuf). Unset: `OTEL_EXPORTER_OTLP_TRACES_PROTOCOL` /
    /// `OTEL_EXPORTER_OTLP_PROTOCOL`, else gRPC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<OtlpProtocol>,
    /// Extra headers (or gRPC metadata) on every export, e.g. an API key. Never logged.
    /// `OTEL_EXPORTER_OTLP_HEADERS` adds to them.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, Secret>,
    /// Fraction of new traces sampled (0.0..=1.0); an incoming `traceparent`'s decision is kept.
    /// Unset: `OTEL_TRACES_SAMPLER`/`OTEL_TRACES_SAMPLER_ARG`, else every trace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sampling_ratio: Option<f64>,
    #[serde(default)]
    pub log_format: LogFormat,
    #[serde(default = "default_log_level")]
    pub log_level: String,
    /// `service.name` of exported spans; `OTEL_SERVICE_NAME` wins when set.
    #[serde(default = "default_service_name")]
    pub service_name: String,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            otlp_endpoint: None,
            protocol: None,
            headers: BTreeMap::new(),
            sampling_ratio: None,
            log_format: LogFormat::default(),
            log_level: default_log_level(),
            service_name: default_service_name(),
        }
    }
}

/// How spans are exported over OTLP.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum OtlpProtocol {
    /// OTLP/gRPC (port 4317 by convention).
    Grpc,
    /// OTLP/HTTP with protobuf bodies (port 4318 by convention).
    #[serde(alias = "http/protobuf")]
    Http,
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DedupeConfig {
    /// How long Fondo may keep retrying one webhook delivery. A delivery id is remembered for the
    /// signature tolerance plus this, so every retry of it is recognised. (`ttl_s` is the old name.)
    #[serde(default = "default_retry_horizon_s")]
    pub retry_horizon_s: u64,
    /// Both sources on: how long an occurrence seen on one source waits for its copy from the
    /// other. Default 10 min: a webhook normally trails the stream by well under a second, but a
    /// delivery the bridge refused with 503 (broker trouble, which delays the stream copy too) comes
    /// back on Fondo's retry schedule, whose first retries fall within minutes. A copy later than
    /// the window is published again (a duplicate), never dropped.
    #[serde(default = "default_pair_window_ms")]
    pub pair_window_ms: u64,
    /// The most entries each identity table holds (delivery ids, unpaired occurrences, delivered
    /// occurrences); the oldest is forgotten first.
    #[serde(default = "default_dedupe_capacity")]
    pub capacity: u64,
    /// Where the webhook replay cache is saved on a clean shutdown and read back on start, so
    /// Fondo's retries that straddle a rolling restart are recognised. Unset: kept in memory only.
    /// Put it on the pod's volume (the chart uses the spool's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_file: Option<PathBuf>,
    /// Where the webhook replay cache and the cross-source pairing table live: `memory` (this
    /// process only; right for one replica) or `redis` (shared by every replica; see `redis`).
    #[serde(default)]
    pub store: DedupeStore,
    /// The shared store, with `store: redis`.
    #[serde(default)]
    pub redis: RedisStoreConfig,
}

/// Where identity state is kept.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DedupeStore {
    /// In this process: retries and copies that reach another replica are published again.
    #[default]
    Memory,
    /// On Redis, shared by every replica.
    Redis,
}

/// The Redis that holds identity state shared by replicas (`dedupe.store: redis`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RedisStoreConfig {
    /// `redis://host:6379/0`, `rediss://` for TLS, or `redis+unix:///path`. Put no password
    /// here: use `password` (from the environment or a Secret).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Overrides the URL's password. Prefer `FONDO_BRIDGE__DEDUPE__REDIS__PASSWORD`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<Secret>,
    /// Overrides the URL's user name (Redis ACL users).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// Every key starts with this and `:`, so several bridges (or environments) can share one
    /// Redis.
    #[serde(default = "default_redis_prefix")]
    pub prefix: String,
    /// How long one lookup may take before the event is published without it (a possible
    /// duplicate, counted in `fondo_bridge_dedupe_store_errors_total`). Default 250 ms: a
    /// lookup on a healthy Redis takes well under a millisecond, and a webhook's whole answer
    /// must stay far inside Fondo's timeout.
    #[serde(default = "default_redis_timeout_ms")]
    pub timeout_ms: u64,
    /// How long a copy whose occurrence another replica owns waits for that replica to finish
    /// it (then it is acknowledged without publishing). Past this it is published itself (a
    /// possible duplicate, never a loss). Default 2 s: the owner normally finishes within a
    /// broker round trip, and a WebSocket stream waits this long at most.
    #[serde(default = "default_redis_owner_wait_ms")]
    pub owner_wait_ms: u64,
    /// Connections to Redis. On each, whatever lookups and done marks queued while its last
    /// pipeline was out go as the next one (one pipeline in flight per connection); more help
    /// only when one connection's round trips are the bottleneck.
    #[serde(default = "default_redis_connections")]
    pub connections: usize,
}

impl Default for RedisStoreConfig {
    fn default() -> Self {
        Self {
            url: None,
            password: None,
            username: None,
            prefix: default_redis_prefix(),
            timeout_ms: default_redis_timeout_ms(),
            owner_wait_ms: default_redis_owner_wait_ms(),
            connections: default_redis_connections(),
        }
    }
}

fn default_redis_prefix() -> String {
    "fondo-bridge".into()
}
fn default_redis_timeout_ms() -> u64 {
    250
}
fn default_redis_owner_wait_ms() -> u64 {
    2_000
}
fn default_redis_connections() -> usize {
    1
}

impl Default for DedupeConfig {
    fn default() -> Self {
        Self {
            retry_horizon_s: default_retry_horizon_s(),
            pair_window_ms: default_pair_window_ms(),
            capacity: default_dedupe_capacity(),
            snapshot_file: None,
            store: DedupeStore::default(),
            redis: RedisStoreConfig::default(),
        }
    }
}

fn default_true() -> bool {
    true
}
fn default_heartbeat_timeout_ms() -> u64 {
    30_000
}
fn default_ping_interval_ms() -> u64 {
    10_000
}
fn default_connect_timeout_ms() -> u64 {
    10_000
}
fn default_reconnect_initial_ms() -> u64 {
    250
}
fn default_reconnect_max_ms() -> u64 {
    30_000
}
fn default_max_frame_bytes() -> usize {
    1024 * 1024
}
fn default_auth_retry_ms() -> u64 {
    30_000
}
fn default_stable_after_ms() -> u64 {
    60_000
}
fn default_webhook_listen() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 8080))
}
fn default_webhook_path() -> String {
    "/fondo/webhooks/callback".into()
}
fn default_max_body_bytes() -> usize {
    1024 * 1024
}
fn default_header_read_timeout_ms() -> u64 {
    10_000
}

/// 1024 connections cost the bridge about 45 MiB at most (12 KiB for a silent one, 38 KiB with a
/// partial HTTP/1.1 head, 45 KiB for an idle HTTP/2 one: buffers, protocol state and a task each,
/// measured); Fondo, or an ingress in front of the bridge, needs a few dozen.
fn default_max_connections() -> usize {
    1024
}
/// Room for a burst of new connections to wait while the connection limit is reached, instead of
/// their SYNs being dropped and retried seconds later; queued connections cost kernel memory only.
fn default_listen_backlog() -> u32 {
    1024
}
/// 63 requests with bodies of the largest allowed size (1 MiB) at once, or 4 096 requests with
/// Fondo's usual bodies of a few KiB: far more than Fondo sends concurrently, and a small share of
/// the chart's 1 GiB memory limit, which must also hold the events in delivery and the
/// connections.
fn default_body_budget_bytes() -> usize {
    64 * 1024 * 1024
}
/// Long enough for a sender's pooled connection to be reused between deliveries, short enough that
/// idle connections do not sit on the connection limit.
fn default_idle_timeout_ms() -> u64 {
    30_000
}
/// Enough for an ingress multiplexing Fondo's deliveries (hyper's default is 200); the total is
/// `max_connections` times this, so it bounds the requests (and tasks) in flight.
fn default_http2_max_concurrent_streams() -> u32 {
    32
}
/// The HTTP/2 protocol's own default (64 KiB - 1 would do as well): a stalled stream pins at most
/// this much, and a reading stream gets a window update as soon as its bytes are consumed.
fn default_http2_stream_window_bytes() -> u32 {
    64 * 1024
}
/// A quarter of hyper's default: bounds the body bytes buffered per connection before the
/// handlers read them, while still letting several streams send at once.
fn default_http2_connection_window_bytes() -> u32 {
    256 * 1024
}

fn default_request_timeout_ms() -> u64 {
    10_000
}
fn default_ack_timeout_ms() -> u64 {
    25_000
}
fn default_tolerance_s() -> u64 {
    300
}
fn default_signed_content() -> String {
    "{body}".into()
}
fn default_fsync_interval_ms() -> u64 {
    100
}
fn default_dead_letter_topic() -> String {
    "fondo.dead-letter".into()
}
fn default_fallback_file() -> PathBuf {
    PathBuf::from("/var/lib/fondo-bridge/dead-letter.jsonl")
}
fn default_dead_letter_attempts() -> u32 {
    3
}
/// 512 MiB. The fallback file shares its volume with the spool (both under
/// `/var/lib/fondo-bridge`): with the spool's default `max_bytes` of 1 GiB the two stay within
/// 1.5 GiB of the chart's 2 GiB volume, so a dead-letter sink that stays down cannot fill the disk
/// the spool needs. At a few KiB per dead letter it still holds on the order of 100 000 of them.
pub fn default_fallback_max_bytes() -> u64 {
    512 * 1024 * 1024
}
fn default_max_attempts() -> u32 {
    12
}
fn default_backoff_initial_ms() -> u64 {
    100
}
fn default_backoff_max_ms() -> u64 {
    30_000
}
fn default_max_in_flight() -> usize {
    10_000
}
fn default_drain_timeout_ms() -> u64 {
    20_000
}
fn default_spool_dir() -> PathBuf {
    PathBuf::from("/var/lib/fondo-bridge/spool")
}
fn default_spool_max_bytes() -> u64 {
    1024 * 1024 * 1024
}
/// 5 ms: at most 200 group commits a second under a steady stream, and at most 5 ms added to one
/// commit. Measured on WebSocket → file (docs/benchmarks.md): 0 ms gave one fsync per 4 events.
fn default_group_commit_ms() -> u64 {
    5
}

fn default_spool_segment_bytes() -> u64 {
    16 * 1024 * 1024
}
fn default_admin_listen() -> Option<SocketAddr> {
    Some(SocketAddr::from(([127, 0, 0, 1], 9090)))
}
fn default_stuck_after_ms() -> u64 {
    30_000
}
fn default_log_level() -> String {
    "info".into()
}
fn default_service_name() -> String {
    "fondo-bridge".into()
}
fn default_retry_horizon_s() -> u64 {
    24 * 3600
}
fn default_pair_window_ms() -> u64 {
    10 * 60 * 1000
}
fn default_dedupe_capacity() -> u64 {
    1_000_000
}

/// One problem in a configuration, with where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub path: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config: {0}")]
    Load(String),
    #[error("config has {} problem(s):\n{}", .0.len(), .0.iter().map(|p| format!("  - {p}")).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<Problem>),
}

impl ConfigError {
    pub fn problems(&self) -> Vec<String> {
        match self {
            Self::Load(m) => vec![m.clone()],
            Self::Invalid(p) => p.iter().map(ToString::to_string).collect(),
        }
    }
}

impl Config {
    /// Loads `path` (YAML or TOML by extension) layered under the environment, and checks each
    /// section. The routing table is checked when it is compiled: [`crate::plan::Plan::load`]
    /// does both, and is what the commands use.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        Self::load_with_env(path, std::env::vars())
    }

    /// Like [`Config::load`], with the environment given (tests).
    pub fn load_with_env(
        path: &Path,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let cfg = Self::read_with_env(path, env)?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Parses config text of the given format (`yaml`, `yml` or `toml`), with environment
    /// overrides, and checks each section.
    pub fn from_str_with_env(
        text: &str,
        format: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let cfg = Self::parse_with_env(text, format, env)?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Reads and parses `path` without the semantic checks ([`Config::problems`]).
    pub fn read_with_env(
        path: &Path,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let ext = path
            .extension()
            .and_then(|e| e.to_str())
            .unwrap_or_default()
            .to_ascii_lowercase();
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError::Load(format!("{}: {e}", path.display())))?;
        Self::parse_with_env(&text, &ext, env)
    }

    /// Parses config text without the semantic checks: only what does not fit the types fails.
    pub fn parse_with_env(
        text: &str,
        format: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let user = match format {
            "yaml" | "yml" => Figment::from(Yaml::string(text)),
            "toml" => Figment::from(Toml::string(text)),
            other => {
                return Err(ConfigError::Load(format!(
                    "unsupported config format {other:?}: use .yaml, .yml or .toml"
                )));
            }
        };
        let mut given: figment::value::Dict = user
            .merge(Serialized::defaults(env_layer(env)))
            .extract()
            .map_err(invalid)?;
        let renamed = rename_old_keys(&mut given)?;
        let fig = Figment::from(Serialized::defaults(Config::default()))
            .merge(Serialized::defaults(given));
        let mut cfg: Self = fig.extract().map_err(invalid)?;
        cfg.renamed = renamed;
        Ok(cfg)
    }

    /// Every problem of the sections at once (the routing table's are found by compiling it).
    pub fn problems(&self) -> Vec<Problem> {
        validate::validate(self)
    }

    /// [`Config::problems`] as a result.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let problems = self.problems();
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid(problems))
        }
    }
}

/// Keys renamed so that one concept has one name in every section: (sink type, old, new). The
/// old names keep working, with a notice, for one release ([`rename_old_keys`]).
const RENAMED_SINK_KEYS: &[(&str, &str, &str)] = &[
    (
        "rabbitmq",
        "reconnect_delay_initial_ms",
        "reconnect_initial_ms",
    ),
    ("rabbitmq", "reconnect_delay_max_ms", "reconnect_max_ms"),
    ("nats", "reconnect_delay_max_ms", "reconnect_max_ms"),
    ("nats", "ack_timeout_ms", "confirm_timeout_ms"),
];

/// Figment's errors as problems with their paths.
fn invalid(e: figment::Error) -> ConfigError {
    ConfigError::Invalid(
        e.into_iter()
            .map(|e| Problem {
                path: if e.path.is_empty() {
                    "(root)".into()
                } else {
                    e.path.join(".")
                },
                message: e.kind.to_string(),
            })
            .collect(),
    )
}

/// Moves keys given under their old names (see [`RENAMED_SINK_KEYS`], and `dedupe.ttl_s`) to
/// their new ones, in what the file and the environment give, before the defaults are laid
/// under it. Returns a notice per moved key; a key given under both names is a problem.
fn rename_old_keys(given: &mut figment::value::Dict) -> Result<Vec<String>, ConfigError> {
    let mut notices = Vec::new();
    let mut problems = Vec::new();
    let mut rename = |section: &mut figment::value::Dict, path: &str, from: &str, to: &str| {
        let Some(v) = section.remove(from) else {
            return;
        };
        if section.contains_key(to) {
            problems.push(Problem {
                path: format!("{path}.{from}"),
                message: format!("the old name of `{to}`, which is given too: keep only `{to}`"),
            });
            return;
        }
        section.insert(to.to_owned(), v);
        notices.push(format!(
            "{path}.{from} is now called `{to}`; the old name works until the next release"
        ));
    };
    if let Some(figment::value::Value::Dict(_, dedupe)) = given.get_mut("dedupe") {
        rename(dedupe, "dedupe", "ttl_s", "retry_horizon_s");
    }
    if let Some(figment::value::Value::Dict(_, sinks)) = given.get_mut("sinks") {
        for (name, sink) in sinks.iter_mut() {
            let figment::value::Value::Dict(_, keys) = sink else {
                continue;
            };
            let kind = keys.get("type").and_then(|t| t.as_str()).map(str::to_owned);
            for (ty, from, to) in RENAMED_SINK_KEYS {
                if kind.as_deref() == Some(*ty) {
                    rename(keys, &format!("sinks.{name}"), from, to);
                }
            }
        }
    }
    if problems.is_empty() {
        Ok(notices)
    } else {
        Err(ConfigError::Invalid(problems))
    }
}

/// `FONDO_BRIDGE__SINKS__KAFKA__BROKERS=x` becomes `{sinks: {kafka: {brokers: "x"}}}`. Keys are
/// lowercased; values are parsed like figment's own `Env` provider does (numbers, booleans, arrays).
fn env_layer(env: impl IntoIterator<Item = (String, String)>) -> figment::value::Dict {
    use figment::value::{Dict, Value};
    let mut root = Dict::new();
    for (k, v) in env {
        let Some(rest) = k.strip_prefix(ENV_PREFIX) else {
            continue;
        };
        let parts: Vec<String> = rest
            .split("__")
            .filter(|p| !p.is_empty())
            .map(str::to_ascii_lowercase)
            .collect();
        let Some((last, parents)) = parts.split_last() else {
            continue;
        };
        let value: Value = if SECRET_KEYS.contains(&last.as_str()) {
            Value::from(v.clone())
        } else {
            v.parse().unwrap_or_else(|_| Value::from(v.clone()))
        };
        insert_path(&mut root, parents, last, value);
    }
    root
}

fn insert_path(
    dict: &mut figment::value::Dict,
    parents: &[String],
    last: &str,
    value: figment::value::Value,
) {
    use figment::value::{Dict, Value};
    match parents.split_first() {
        None => {
            dict.insert(last.to_owned(), value);
        }
        Some((first, rest)) => {
            let entry = dict
                .entry(first.clone())
                .or_insert_with(|| Value::from(Dict::new()));
            if !matches!(entry, Value::Dict(..)) {
                *entry = Value::from(Dict::new());
            }
            if let Value::Dict(_, d) = entry {
                insert_path(d, rest, last, value);
            }
        }
    }
}

/// Reads a secret from its inline value or its file (trimmed), whichever is set.
pub fn read_secret(
    inline: Option<&Secret>,
    file: Option<&Path>,
) -> std::io::Result<Option<Secret>> {
    if let Some(f) = file {
        let s = std::fs::read_to_string(f)?;
        return Ok(Some(Secret(s.trim().to_owned())));
    }
    Ok(inline.cloned())
}

mod validate;

#[cfg(test)]
mod tests;
