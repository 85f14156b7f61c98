//! Where events go. One file per broker, each behind its cargo feature, all behind one trait.
//!
//! A sink decides from its broker's own error codes whether a failure is worth retrying
//! ([`SinkError::Retriable`]) or never will succeed ([`SinkError::Fatal`], which dead-letters the
//! event with the reason). A sink pipelines: `publish` is called concurrently for many messages and
//! must not serialise them behind one another.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use bytes::Bytes;

use crate::cloudevents::CloudEvent;
use crate::group_commit::Pace;

pub mod deferred;
pub mod file;
#[cfg(feature = "kafka")]
pub mod kafka;
#[cfg(feature = "nats")]
pub mod nats;
#[cfg(feature = "rabbitmq")]
pub mod rabbitmq;

pub mod testing;

/// Header names every published message carries.
pub mod headers {
    pub const EVENT_ID: &str = "fondo-event-id";
    pub const EVENT_TYPE: &str = "fondo-event-type";
    pub const CLIENT_ID: &str = "fondo-client-id";
    pub const SOURCE: &str = "fondo-source";
    /// `true` on a change published after a later change of its object had been published (both
    /// sources on: the stream lost it and its webhook brought it).
    pub const LATE: &str = "fondo-late";
    pub const REPLAYED_AT: &str = "fondo-replayed-at";
    /// The message key, on brokers without a key of their own (RabbitMQ, NATS).
    pub const KEY: &str = "fondo-key";
    /// On a dead letter: why (`unparseable`, `unmatched`, `render`, `fatal`, `exhausted`, `no_sink`).
    pub const DEAD_LETTER_REASON: &str = "fondo-dead-letter-reason";
    pub const TRACEPARENT: &str = "traceparent";
    pub const TRACESTATE: &str = "tracestate";
}

/// One message for one destination, rendered by the router.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Kafka topic, AMQP routing key, NATS subject, or file name stem.
    pub topic: String,
    /// Kafka message key; carried as a header elsewhere.
    pub key: Option<String>,
    /// `fondo-*` headers, `traceparent`, then the route's own headers.
    pub headers: Vec<(String, String)>,
    pub payload: Bytes,
    /// The occurrence id (`fondo-event-id`): the same on every destination of one change, so
    /// consumers can correlate its copies across topics.
    pub event_id: Arc<str>,
    /// Unique per occurrence and destination (AMQP `message_id`, `Nats-Msg-Id`): the broker
    /// collapses only a replay of one occurrence to one destination, never a fan-out.
    pub message_id: Arc<str>,
    /// `payload` is known to be one valid JSON document: the parser accepted it, or serde_json
    /// wrote it. Lets the file sink embed it as JSON instead of escaping it into a string.
    /// `false` promises nothing (the payload may still be JSON).
    pub payload_is_json: bool,
    /// Whether the source waits for this confirmation before it takes more: [`Pace::Prompt`]
    /// (a webhook sender holds its request open) or [`Pace::Patient`] (the WebSocket source reads
    /// on while its spooled events are delivered). A sink that group-commits (the file sink) may
    /// let a batch of patient messages wait for its whole interval; brokers ignore it.
    pub pace: Pace,
    /// A CloudEvents destination's event: the sink writes its attributes as its broker's binding
    /// says ([`crate::cloudevents`]). `None`: the message is published as it is.
    pub cloudevent: Option<Arc<CloudEvent>>,
}

impl Message {
    /// What goes on the wire as the message body: `payload`, or in CloudEvents structured mode
    /// the event format around it. `payload` itself stays the Fondo body (what a dead letter
    /// keeps).
    pub fn body(&self) -> Cow<'_, Bytes> {
        match &self.cloudevent {
            Some(ce) => ce.body(&self.payload),
            None => Cow::Borrowed(&self.payload),
        }
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Why a publish failed. The message is safe to log: no payload content.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum SinkError {
    /// Worth trying again: broker down, timeout, queue full, leader moving, nack.
    #[error("retriable: {0}")]
    Retriable(String),
    /// Will never succeed as configured: unknown topic, unroutable, unauthorised, too large.
    #[error("fatal: {0}")]
    Fatal(String),
}

impl SinkError {
    pub fn is_retriable(&self) -> bool {
        matches!(self, Self::Retriable(_))
    }

    pub fn reason(&self) -> &str {
        match self {
            Self::Retriable(r) | Self::Fatal(r) => r,
        }
    }
}

/// Where a sink's connection stands, as the sink itself last saw it: reading it costs no broker
/// round trip. The reason is a fixed phrase, so it never carries a broker address or a secret
/// (the logs have the details).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SinkStatus {
    Connected,
    /// Not connected (yet, or any more); `why` says which way in a few words.
    NotConnected {
        why: &'static str,
    },
    /// Closed by the shutdown.
    Closed,
}

impl SinkStatus {
    pub fn is_connected(&self) -> bool {
        matches!(self, Self::Connected)
    }
}

impl std::fmt::Display for SinkStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Connected => f.write_str("ok"),
            Self::NotConnected { why } => write!(f, "not connected: {why}"),
            Self::Closed => f.write_str("closed"),
        }
    }
}

/// What [`Sink::publish_placed`] is told about the message's place in the broker's order.
pub struct Placement<'a> {
    /// The order (for Kafka, the producer) the key's previous, still unconfirmed, message was
    /// placed in; `None` when nothing of the key is in flight before this message.
    pub after: Option<u64>,
    /// Called once, with the order the message was placed in.
    pub placed: &'a (dyn Fn(u64) + Send + Sync),
}

impl Placement<'_> {
    /// A message with nothing of its key in flight before it, whose placement nobody waits for.
    pub const ALONE: Placement<'static> = Placement {
        after: None,
        placed: &nobody_waits,
    };
}

fn nobody_waits(_: u64) {}

/// A destination broker.
#[async_trait]
pub trait Sink: Send + Sync + 'static {
    /// The sink's configured name (`sinks.<name>`).
    fn name(&self) -> &str;

    /// The broker family, for telemetry (`kafka`, `rabbitmq`, `nats`, `file`).
    fn system(&self) -> &'static str;

    /// Publishes one message and resolves when the broker has confirmed it durably.
    async fn publish(&self, msg: &Message) -> Result<(), SinkError>;

    /// [`Sink::publish`] for a message whose key may have earlier messages still unconfirmed on
    /// this sink. A sink that keeps the order of what it was handed, across its client's retries,
    /// calls `placement.placed` once the message holds its place in that order (Kafka: enqueued
    /// on the idempotent producer, which keeps a partition's order across retries); the dispatcher
    /// then starts the key's next message without waiting for this one's confirm, passing the
    /// order it was placed in as `placement.after`. When the sink's order has changed since (a
    /// new producer), the sink must not place the message: it fails it as retriable, and the
    /// dispatcher retries it after the key's earlier messages are settled.
    ///
    /// A sink that cannot promise an order leaves this as it is: `placed` is never called, and a
    /// key's next message waits for the confirm.
    async fn publish_placed(
        &self,
        msg: &Message,
        _placement: &Placement<'_>,
    ) -> Result<(), SinkError> {
        self.publish(msg).await
    }

    /// Whether the broker is reachable and accepting; `Err` explains why not. Asks the broker.
    async fn healthcheck(&self) -> Result<(), SinkError>;

    /// The connection state the sink tracks anyway (no broker round trip), for `/readyz` and for
    /// refusing webhooks early. Sinks without a connection are always [`SinkStatus::Connected`].
    fn status(&self) -> SinkStatus {
        SinkStatus::Connected
    }

    /// Flushes what is in flight and closes, giving up at `deadline`.
    async fn close(&self, deadline: Instant) -> Result<(), SinkError>;

    /// Hands the sink the counter of publishes its broker collapsed as a repeat of a message id
    /// it already holds (a replayed occurrence). Brokers without message-id deduplication ignore it.
    fn count_broker_duplicates(&self, _counter: prometheus_client::metrics::counter::Counter) {}
}

pub type DynSink = Arc<dyn Sink>;
