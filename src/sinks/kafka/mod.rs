//! The `kafka` sink: an idempotent rdkafka [`FutureProducer`], every publish confirmed by the
//! broker (`acks=all`) before it resolves.
//!
//! - **Pipelined**: `publish` enqueues the record on librdkafka's producer queue and awaits its
//!   delivery report; many publishes are in flight at once and librdkafka batches them.
//! - **Backpressure**: when the (bounded) producer queue is full, `publish` waits and enqueues
//!   again; it does not fail.
//! - **Classification**: librdkafka's error codes decide [`SinkError::Retriable`] (broker down,
//!   timeouts, leader moving, ...) or [`SinkError::Fatal`] (message too large, unknown topic or
//!   partition, authorization, ...). Every reason names the topic and never contains payload bytes.
//! - **Start-up check**: [`KafkaSink::connect`] fails clearly on an unknown or invalid librdkafka
//!   option, on a cluster that does not answer within `connect_timeout_ms`, and on security settings
//!   the cluster refuses; it creates the configured topics when asked to.
//! - **Recovery**: when the idempotent producer hits a fatal error (e.g. after broker data loss), the
//!   publishes it failed are retriable and a new producer replaces it. The same happens when it is
//!   stuck: a broker that lost its producer state (e.g. restarted empty) may answer every produce
//!   with `UNKNOWN_PRODUCER_ID`, and librdkafka then bumps the epoch locally and retries forever
//!   without a new producer id and without failing anything. The sink sees that in librdkafka's
//!   statistics (the epoch climbing, no new producer id), purges the stuck producer (its messages
//!   fail as retriable) and creates a new one, which asks the broker for a new producer id.
//!
//! Message mapping: `msg.topic` is the Kafka topic, `msg.key` the key, `msg.headers` (all of them,
//! in order) the record headers, `msg.payload` the value, verbatim; a CloudEvents destination adds
//! its headers or makes the value the event format ([`crate::cloudevents`]).

pub mod reader;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use async_trait::async_trait;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::ClientContext;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer, PurgeConfig};
use rdkafka::statistics::Statistics;
use rdkafka::types::{RDKafkaConfRes, RDKafkaErrorCode};

use super::{Message, Placement, Sink, SinkError, SinkStatus};
use crate::cloudevents::Mode;
use crate::config::KafkaSinkConfig;
use crate::config::kafka::{is_secret_option, valid_topic_name};

/// librdkafka options the sink sets unless `options` sets them (validated there).
const DEFAULT_OPTIONS: &[(&str, &str)] = &[
    ("acks", "all"),
    ("enable.idempotence", "true"),
    ("queue.buffering.max.messages", "100000"),
    ("queue.buffering.max.kbytes", "65536"),
    // Statistics drive the stuck-producer detection (see [`IdempotenceWatch`]).
    ("statistics.interval.ms", "1000"),
];

/// Local epoch bumps without a new producer id, within [`STUCK_WINDOW`], that mark an idempotent
/// producer as stuck. A healthy producer bumps its epoch rarely (once per lost producer state); a
/// stuck one bumps it tens of times a second.
const STUCK_EPOCH_BUMPS: i64 = 16;
const STUCK_WINDOW: Duration = Duration::from_secs(60);

/// How often a publish awaiting its delivery report checks whether its producer is stuck.
const STUCK_CHECK_EVERY: Duration = Duration::from_millis(500);

/// The first and longest pause of a publish waiting for room in a full producer queue.
const QUEUE_FULL_WAIT_MIN: Duration = Duration::from_millis(2);
const QUEUE_FULL_WAIT_MAX: Duration = Duration::from_millis(100);

/// How long a health check waits for the cluster's metadata, at most.
const HEALTHCHECK_TIMEOUT: Duration = Duration::from_secs(5);

/// What the librdkafka callbacks saw, shared by every producer this sink creates.
#[derive(Default)]
struct Shared {
    /// The last client-level error (connection refused, SSL handshake, SASL authentication, ...)
    /// and when it happened. "All brokers down" does not replace a more specific cause.
    last_error: Mutex<ErrorState>,
    /// The last statistics (only with `statistics.interval.ms` > 0).
    statistics: Mutex<Option<Statistics>>,
}

impl Shared {
    fn last_error(&self) -> Option<String> {
        let g = self.last_error.lock().ok()?;
        let (at, _, text) = g.kept.as_ref()?;
        Some(format!("{text} ({:.1}s ago)", at.elapsed().as_secs_f64()))
    }

    /// The code and text of the error [`Shared::last_error`] describes.
    fn last_kept(&self) -> Option<(RDKafkaErrorCode, String)> {
        let g = self.last_error.lock().ok()?;
        g.kept.as_ref().map(|(_, code, text)| (*code, text.clone()))
    }

    /// Records `text`; false when it repeats the previous error (librdkafka may report twice).
    fn record_error(&self, code: RDKafkaErrorCode, text: String) -> bool {
        let Ok(mut g) = self.last_error.lock() else {
            return true;
        };
        if g.seen == text {
            return false;
        }
        g.seen.clone_from(&text);
        match &g.kept {
            Some((at, prev_code, _))
                if code == RDKafkaErrorCode::AllBrokersDown
                    && *prev_code != RDKafkaErrorCode::AllBrokersDown
                    && at.elapsed() < Duration::from_secs(60) => {}
            _ => g.kept = Some((Instant::now(), code, text)),
        }
        true
    }
}

#[derive(Default)]
struct ErrorState {
    /// The error reported last, to log a repeated report once.
    seen: String,
    /// The error kept for start-up and health reasons.
    kept: Option<(Instant, RDKafkaErrorCode, String)>,
}

/// Watches one idempotent producer's statistics for the local-epoch-bump loop librdkafka enters
/// when the broker keeps answering `UNKNOWN_PRODUCER_ID` (it never turns into a fatal error).
#[derive(Default)]
struct IdempotenceWatch {
    /// (producer id, producer id assignments, epoch, when) at the start of the current window.
    base: Mutex<Option<(i64, i64, i64, Instant)>>,
    /// Why the producer is considered stuck, once it is.
    stuck: Mutex<Option<String>>,
}

impl IdempotenceWatch {
    /// Takes in one statistics report; the reason when the producer just became stuck.
    fn observe(&self, eos: &rdkafka::statistics::ExactlyOnceSemantics) -> Option<String> {
        if eos.producer_id < 0 || eos.producer_epoch < 0 {
            return None;
        }
        let mut base = self.base.lock().ok()?;
        let now = Instant::now();
        let current = (eos.producer_id, eos.epoch_cnt, eos.producer_epoch, now);
        let Some((pid, cnt, epoch, since)) = *base else {
            *base = Some(current);
            return None;
        };
        if pid != eos.producer_id
            || cnt != eos.epoch_cnt
            || eos.producer_epoch < epoch
            || since.elapsed() > STUCK_WINDOW
        {
            *base = Some(current);
            return None;
        }
        let bumps = eos.producer_epoch - epoch;
        if bumps < STUCK_EPOCH_BUMPS {
            return None;
        }
        let mut stuck = self.stuck.lock().ok()?;
        if stuck.is_some() {
            return None;
        }
        let reason = format!(
            "idempotent producer id {pid} bumped its epoch {bumps} times in {:.1}s without a new \
             producer id (the broker keeps answering UNKNOWN_PRODUCER_ID: it lost its producer state)",
            since.elapsed().as_secs_f64()
        );
        *stuck = Some(reason.clone());
        Some(reason)
    }

    fn stuck(&self) -> Option<String> {
        self.stuck.lock().ok().and_then(|g| g.clone())
    }
}

/// Routes librdkafka's logs and errors to `tracing` and remembers the last error.
struct Context {
    sink: Arc<str>,
    shared: Arc<Shared>,
    /// The producer's own watch (a fresh, unused one for the admin client).
    watch: Arc<IdempotenceWatch>,
}

impl ClientContext for Context {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        let sink = &*self.sink;
        match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error => {
                tracing::error!(target: "librdkafka", sink, facility = fac, "{log_message}")
            }
            RDKafkaLogLevel::Warning => {
                tracing::warn!(target: "librdkafka", sink, facility = fac, "{log_message}")
            }
            RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
                tracing::info!(target: "librdkafka", sink, facility = fac, "{log_message}")
            }
            RDKafkaLogLevel::Debug => {
                tracing::debug!(target: "librdkafka", sink, facility = fac, "{log_message}")
            }
        }
    }

    fn stats(&self, statistics: Statistics) {
        if let Some(reason) = statistics.eos.as_ref().and_then(|e| self.watch.observe(e)) {
            tracing::warn!(target: "librdkafka", sink = &*self.sink, "{reason}");
        }
        if let Ok(mut g) = self.shared.statistics.lock() {
            *g = Some(statistics);
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        let code = error.rdkafka_error_code().unwrap_or(RDKafkaErrorCode::Fail);
        if self.shared.record_error(code, format!("{error}: {reason}")) {
            tracing::warn!(target: "librdkafka", sink = &*self.sink, %error, "{reason}");
        }
    }
}

type Producer_ = FutureProducer<Context>;

/// The producer in use and the watch its statistics feed.
struct Active {
    producer: Producer_,
    watch: Arc<IdempotenceWatch>,
    /// Which producer of this sink it is (0 for the first, then one more per replacement): the
    /// order a message is placed in ([`Placement`]).
    generation: u64,
}

impl Active {
    /// Why this producer cannot deliver any more: a fatal error, or stuck (see [`IdempotenceWatch`]).
    fn unusable(&self) -> Option<String> {
        match self.producer.client().fatal_error() {
            Some((code, reason)) => Some(format!("fatal error {code:?}: {reason}")),
            None => self.watch.stuck(),
        }
    }
}

/// A Kafka destination. Cheap to share (`Arc`); `publish` may be called concurrently.
pub struct KafkaSink {
    name: Arc<str>,
    brokers: String,
    client_config: ClientConfig,
    shared: Arc<Shared>,
    producer: ArcSwap<Active>,
    /// Serialises replacing a producer that hit a fatal error or is stuck.
    recreate: Mutex<()>,
    /// How many producers were replaced after a fatal error or being stuck.
    replaced: AtomicU64,
    closed: AtomicBool,
    /// The confirm window: one permit per message waiting for its delivery report.
    window: tokio::sync::Semaphore,
    /// How long a health check waits: `connect_timeout_ms`, at most [`HEALTHCHECK_TIMEOUT`].
    health_timeout: Duration,
}

/// What an rdkafka error means for the message that met it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    Retriable,
    Fatal,
}

/// Whether an error code can ever succeed for this message as configured.
fn classify(code: RDKafkaErrorCode) -> Class {
    use RDKafkaErrorCode as E;
    match code {
        E::MessageSizeTooLarge
        | E::InvalidMessageSize
        | E::MessageBatchTooLarge
        | E::UnknownTopicOrPartition
        | E::UnknownTopic
        | E::UnknownPartition
        | E::InvalidTopic
        | E::TopicAuthorizationFailed
        | E::ClusterAuthorizationFailed
        | E::TransactionalIdAuthorizationFailed
        | E::InvalidRequiredAcks
        | E::InvalidRecord
        | E::InvalidTimestamp
        | E::UnsupportedForMessageFormat
        | E::UnsupportedCompressionType
        | E::PolicyViolation
        | E::InvalidArgument => Class::Fatal,
        _ => Class::Retriable,
    }
}

/// Whether a client-level error says a listener answered but refused our security settings (a
/// TLS or SASL failure, or a connection dropped in the TLS or SASL handshake or at the first
/// request, which librdkafka reports as a transport failure naming the state): configuration, not
/// a cluster that is down. A connection refused, a name that does not resolve, no answer at all:
/// not up yet.
fn is_config_refusal(code: RDKafkaErrorCode, text: &str) -> bool {
    use RDKafkaErrorCode as E;
    matches!(
        code,
        E::SSL
            | E::Authentication
            | E::SaslAuthenticationFailed
            | E::UnsupportedSASLMechanism
            | E::IllegalSASLState
    ) || [
        "in state SSL_HANDSHAKE",
        "in state AUTH",
        "incorrect security.protocol",
    ]
    .iter()
    .any(|state| text.contains(state))
}

/// A reason for `code` on `topic`, with a hint where one helps.
fn describe(code: RDKafkaErrorCode, topic: &str) -> String {
    use RDKafkaErrorCode as E;
    let hint = match code {
        E::UnknownTopicOrPartition | E::UnknownTopic | E::UnknownPartition => {
            "; the topic or partition does not exist (create it, or list it in `create_topics`)"
        }
        E::TopicAuthorizationFailed | E::ClusterAuthorizationFailed => {
            "; the configured principal may not write there (check the ACLs)"
        }
        E::MessageSizeTooLarge | E::InvalidMessageSize | E::MessageBatchTooLarge => {
            "; the message exceeds `message.max.bytes` or the topic's `max.message.bytes`"
        }
        E::MessageTimedOut => "; not confirmed within `message.timeout.ms`",
        _ => "",
    };
    format!("kafka topic {topic:?}: {code}{hint}")
}

/// An rdkafka error as a [`SinkError`] for a message to `topic`.
fn to_sink_error(err: &KafkaError, topic: &str) -> SinkError {
    match err.rdkafka_error_code() {
        Some(code) => {
            let reason = describe(code, topic);
            match classify(code) {
                Class::Fatal => SinkError::Fatal(reason),
                Class::Retriable => SinkError::Retriable(reason),
            }
        }
        None => SinkError::Retriable(format!("kafka topic {topic:?}: {err}")),
    }
}

/// An rdkafka configuration or client-creation error, without secret option values.
fn config_error(err: KafkaError, client_config: &ClientConfig) -> String {
    match err {
        KafkaError::ClientConfig(RDKafkaConfRes::RD_KAFKA_CONF_UNKNOWN, _, key, _) => {
            format!("unknown librdkafka option {key:?}")
        }
        KafkaError::ClientConfig(_, desc, key, _) => {
            format!(
                "invalid librdkafka option {key:?}: {}",
                redact(&desc, client_config)
            )
        }
        other => redact(&other.to_string(), client_config),
    }
}

/// `text` with every secret option's value replaced by `***`.
fn redact(text: &str, client_config: &ClientConfig) -> String {
    let mut out = text.to_owned();
    // `config_map` masks rdkafka's own list of sensitive keys; `get` gives the values to mask.
    for k in client_config.config_map().keys() {
        if let Some(v) = client_config
            .get(k)
            .filter(|v| is_secret_option(k) && !v.is_empty())
        {
            out = out.replace(v, "***");
        }
    }
    out
}

/// `path: message; path: message` from a list of problems.
fn join_problems(problems: &[(String, String)]) -> String {
    problems
        .iter()
        .map(|(p, m)| format!("{p}: {m}"))
        .collect::<Vec<_>>()
        .join("; ")
}

impl KafkaSink {
    /// Builds the producer from `cfg`, checks that the cluster answers within
    /// `cfg.connect_timeout_ms` and creates `cfg.create_topics`. Fails with a reason naming the
    /// problem: [`SinkError::Fatal`] for an invalid config, an unknown or invalid librdkafka
    /// option, an unreadable password file, a TLS or SASL failure, a topic that cannot be
    /// created; [`SinkError::Retriable`] for a cluster that does not answer (with the last client
    /// error seen, e.g. connection refused).
    pub async fn connect(name: &str, cfg: &KafkaSinkConfig) -> Result<KafkaSink, SinkError> {
        let problems = cfg.validate();
        if !problems.is_empty() {
            return Err(SinkError::Fatal(format!(
                "kafka sink {name:?}: invalid config: {}",
                join_problems(&problems)
            )));
        }
        if cfg.brokers.trim().is_empty() {
            return Err(SinkError::Fatal(format!(
                "kafka sink {name:?}: `brokers` must list at least one host:port"
            )));
        }
        let client_config = client_config(name, cfg)?;
        let name: Arc<str> = Arc::from(name);
        let shared = Arc::new(Shared::default());
        let producer = Arc::new(create_producer(&name, &client_config, &shared, 0)?);
        watch_for_stuck(&producer);
        let timeout = Duration::from_millis(cfg.connect_timeout_ms.max(1));
        let sink = KafkaSink {
            name: name.clone(),
            brokers: cfg.brokers.clone(),
            client_config,
            shared,
            producer: ArcSwap::new(producer),
            recreate: Mutex::new(()),
            replaced: AtomicU64::new(0),
            closed: AtomicBool::new(false),
            window: tokio::sync::Semaphore::new(cfg.max_in_flight.max(1)),
            health_timeout: timeout.min(HEALTHCHECK_TIMEOUT),
        };
        let brokers = sink.metadata_check(timeout).await.map_err(|e| {
            let reason = format!(
                "kafka sink {name:?}: cannot reach the cluster at {:?} within {timeout:?}: {}",
                cfg.brokers,
                e.reason()
            );
            // TLS and SASL failures are configuration; anything else (refused, unresolvable, no
            // answer) may be a cluster that is not up yet.
            if sink
                .shared
                .last_kept()
                .is_some_and(|(code, text)| is_config_refusal(code, &text))
            {
                SinkError::Fatal(reason)
            } else {
                SinkError::Retriable(reason)
            }
        })?;
        tracing::info!(sink = &*name, brokers = %cfg.brokers, cluster_brokers = brokers, "kafka sink connected");
        if cfg.accept_at_most_once {
            tracing::warn!(
                sink = &*name,
                "accept_at_most_once is set: messages may be lost, duplicated or reordered"
            );
        }
        if !cfg.create_topics.is_empty() {
            sink.create_topics(cfg, timeout).await?;
        }
        Ok(sink)
    }

    /// The sink's configured bootstrap servers.
    pub fn brokers(&self) -> &str {
        &self.brokers
    }

    /// Messages enqueued on the producer and not yet confirmed or failed.
    pub fn in_flight(&self) -> usize {
        usize::try_from(self.producer.load().producer.in_flight_count()).unwrap_or(0)
    }

    /// How many times the producer was replaced after a fatal error or being stuck (idempotence
    /// state lost).
    pub fn producers_replaced(&self) -> u64 {
        self.replaced.load(Ordering::Relaxed)
    }

    /// The last librdkafka statistics (every second by default; none when `options` sets
    /// `statistics.interval.ms` to 0, which also turns off the stuck-producer detection).
    pub fn statistics(&self) -> Option<Statistics> {
        self.shared.statistics.lock().ok().and_then(|g| g.clone())
    }

    /// Fetches the cluster's metadata; the number of brokers on success.
    async fn metadata_check(&self, timeout: Duration) -> Result<usize, SinkError> {
        let active = self.producer.load_full();
        let fetched = tokio::task::spawn_blocking(move || {
            active
                .producer
                .client()
                .fetch_metadata(None, timeout)
                .map(|m| m.brokers().len())
        })
        .await
        .map_err(|e| SinkError::Retriable(format!("metadata fetch task failed: {e}")))?;
        match fetched {
            Ok(n) if n > 0 => Ok(n),
            Ok(_) => Err(SinkError::Retriable("the cluster lists no brokers".into())),
            Err(e) => {
                let protocol = self
                    .client_config
                    .get("security.protocol")
                    .unwrap_or("plaintext");
                let last = match self.shared.last_error() {
                    Some(l) => format!("; last client error: {l}"),
                    None => format!(
                        "; no client error was reported, so the connection may hang in a \
                         handshake the listener does not speak: check that \
                         security.protocol={protocol} matches it"
                    ),
                };
                Err(SinkError::Retriable(format!(
                    "{}{last}",
                    redact(&e.to_string(), &self.client_config)
                )))
            }
        }
    }

    async fn create_topics(
        &self,
        cfg: &KafkaSinkConfig,
        timeout: Duration,
    ) -> Result<(), SinkError> {
        let name = &*self.name;
        let admin: AdminClient<Context> = self
            .client_config
            .create_with_context(Context {
                sink: self.name.clone(),
                shared: self.shared.clone(),
                watch: Arc::default(),
            })
            .map_err(|e| {
                SinkError::Fatal(format!(
                    "kafka sink {name:?}: cannot create the admin client: {}",
                    config_error(e, &self.client_config)
                ))
            })?;
        let retention: Vec<Option<String>> = cfg
            .create_topics
            .iter()
            .map(|t| t.retention_ms.map(|r| r.to_string()))
            .collect();
        let new_topics: Vec<NewTopic<'_>> = cfg
            .create_topics
            .iter()
            .zip(&retention)
            .map(|(t, r)| {
                let mut nt = NewTopic::new(
                    &t.name,
                    t.partitions.unwrap_or(-1),
                    TopicReplication::Fixed(t.replication.unwrap_or(-1)),
                );
                if let Some(r) = r {
                    nt = nt.set("retention.ms", r);
                }
                for (k, v) in &t.config {
                    nt = nt.set(k, v);
                }
                nt
            })
            .collect();
        let opts = AdminOptions::new()
            .request_timeout(Some(timeout))
            .operation_timeout(Some(timeout));
        let results = admin.create_topics(&new_topics, &opts).await.map_err(|e| {
            SinkError::Fatal(format!(
                "kafka sink {name:?}: creating topics failed: {}",
                redact(&e.to_string(), &self.client_config)
            ))
        })?;
        let mut failed = Vec::new();
        for r in results {
            match r {
                Ok(topic) => tracing::info!(sink = name, topic, "kafka topic created"),
                Err((topic, RDKafkaErrorCode::TopicAlreadyExists)) => {
                    tracing::info!(sink = name, topic, "kafka topic already exists")
                }
                Err((topic, code)) => failed.push(format!("{topic:?}: {code}")),
            }
        }
        if failed.is_empty() {
            Ok(())
        } else {
            Err(SinkError::Fatal(format!(
                "kafka sink {name:?}: cannot create topics: {}",
                failed.join("; ")
            )))
        }
    }

    /// When `failed` cannot deliver any more (fatal error, or stuck): replaces it with a new
    /// producer, once, and purges it so that the publishes still waiting on it fail (retriable)
    /// and are retried on the new one.
    fn recover(&self, failed: &Arc<Active>) {
        let Some(reason) = failed.unusable() else {
            return;
        };
        let Ok(_guard) = self.recreate.lock() else {
            return;
        };
        if !Arc::ptr_eq(&self.producer.load(), failed) {
            return; // another publish replaced it already
        }
        tracing::error!(
            sink = &*self.name,
            reason,
            in_flight = failed.producer.in_flight_count(),
            "kafka producer cannot deliver any more; replacing it"
        );
        let generation = failed.generation + 1;
        match create_producer(&self.name, &self.client_config, &self.shared, generation) {
            Ok(p) => {
                let p = Arc::new(p);
                watch_for_stuck(&p);
                self.producer.store(p);
                self.replaced.fetch_add(1, Ordering::Relaxed);
                // Fail what the old producer still holds: the dispatcher retries it on the new one.
                failed
                    .producer
                    .purge(PurgeConfig::default().queue().inflight().non_blocking());
            }
            Err(e) => {
                tracing::error!(sink = &*self.name, error = %e, "cannot create a new kafka producer")
            }
        }
    }

    /// Hands `record` to `active`'s queue, waiting with back-off while the queue is full; a fatal
    /// error replaces the producer.
    async fn enqueue(
        &self,
        active: &Arc<Active>,
        mut record: FutureRecord<'_, str, [u8]>,
        msg: &Message,
    ) -> Result<DeliveryFuture, SinkError> {
        let topic = msg.topic.as_str();
        let mut wait = QUEUE_FULL_WAIT_MIN;
        let mut waited_since: Option<Instant> = None;
        loop {
            match active.producer.send_result(record) {
                Ok(delivery) => return Ok(delivery),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    if self.closed.load(Ordering::Acquire) {
                        return Err(SinkError::Retriable(format!(
                            "kafka topic {topic:?}: the sink closed while the producer queue was full"
                        )));
                    }
                    if waited_since.is_none() {
                        waited_since = Some(Instant::now());
                        tracing::trace!(
                            sink = &*self.name,
                            topic,
                            "kafka producer queue full; waiting"
                        );
                    }
                    record = r;
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(QUEUE_FULL_WAIT_MAX);
                }
                Err((e, _)) => {
                    let err = to_sink_error(&e, topic);
                    if e.rdkafka_error_code() == Some(RDKafkaErrorCode::Fatal) {
                        self.recover(active);
                    }
                    tracing::debug!(sink = &*self.name, topic, event_id = &*msg.event_id, error = %err, "kafka enqueue failed");
                    return Err(err);
                }
            }
        }
    }

    /// Waits for the delivery report of a record sent on `active`.
    ///
    /// A stuck producer is purged by its watcher (`watch_for_stuck`): `delivery` then resolves
    /// with a purge error and the producer is replaced here. No timer per message.
    async fn delivered(
        &self,
        active: &Arc<Active>,
        delivery: DeliveryFuture,
        msg: &Message,
    ) -> Result<(), SinkError> {
        let topic = msg.topic.as_str();
        match delivery.await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err((e, _))) => {
                let mut err = to_sink_error(&e, topic);
                if let Some(why) = active.unusable() {
                    // The idempotent producer is unusable; a new one will take the retry.
                    self.recover(active);
                    err = SinkError::Retriable(format!(
                        "{}; the idempotent producer was replaced ({why})",
                        err.reason()
                    ));
                }
                tracing::debug!(sink = &*self.name, topic, event_id = &*msg.event_id, error = %err, "kafka delivery failed");
                Err(err)
            }
            Err(_canceled) => Err(SinkError::Retriable(format!(
                "kafka topic {topic:?}: the producer went away before confirming the message"
            ))),
        }
    }
}

/// The librdkafka configuration for `cfg`: defaults, then `options`, then servers and password.
fn client_config(name: &str, cfg: &KafkaSinkConfig) -> Result<ClientConfig, SinkError> {
    let mut cc = ClientConfig::new();
    cc.set("client.id", format!("fondo-bridge-{name}"));
    for (k, v) in DEFAULT_OPTIONS {
        cc.set(*k, *v);
    }
    for (k, v) in &cfg.options {
        cc.set(k, v);
    }
    cc.set("bootstrap.servers", cfg.brokers.trim());
    let password = crate::config::read_secret(
        cfg.sasl_password.as_ref(),
        cfg.sasl_password_file.as_deref(),
    )
    .map_err(|e| {
        let file = cfg
            .sasl_password_file
            .as_deref()
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        SinkError::Fatal(format!(
            "kafka sink {name:?}: cannot read sasl_password_file {file}: {e}"
        ))
    })?;
    if let Some(p) = password {
        cc.set("sasl.password", p.expose());
    }
    cc.set_log_level(RDKafkaLogLevel::Info);
    Ok(cc)
}

/// Purges `active` once its statistics show it stuck, so that every publish waiting on it gets
/// its delivery report (a purge error) and replaces the producer; ends with the producer. One
/// task per producer rather than a timer per message.
fn watch_for_stuck(active: &Arc<Active>) {
    let Ok(rt) = tokio::runtime::Handle::try_current() else {
        // Without a runtime (never in the bridge), the health check still replaces it.
        return;
    };
    let weak = Arc::downgrade(active);
    rt.spawn(async move {
        let mut check = tokio::time::interval(STUCK_CHECK_EVERY);
        check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            check.tick().await;
            let Some(active) = weak.upgrade() else { return };
            if active.watch.stuck().is_some() {
                active
                    .producer
                    .purge(PurgeConfig::default().queue().inflight().non_blocking());
                return;
            }
        }
    });
}

fn create_producer(
    name: &Arc<str>,
    client_config: &ClientConfig,
    shared: &Arc<Shared>,
    generation: u64,
) -> Result<Active, SinkError> {
    let watch = Arc::new(IdempotenceWatch::default());
    client_config
        .create_with_context(Context {
            sink: name.clone(),
            shared: shared.clone(),
            watch: watch.clone(),
        })
        .map(|producer| Active {
            producer,
            watch,
            generation,
        })
        .map_err(|e| {
            SinkError::Fatal(format!(
                "kafka sink {name:?}: cannot create the producer: {}",
                config_error(e, client_config)
            ))
        })
}

/// The message's headers in order, then a CloudEvent's as the Kafka binding names them: each
/// attribute `x` as `ce_x` in binary mode (§3.2.3), and the content type as `content-type` in
/// both modes (§3.2.1, §3.1.1).
fn record_headers(msg: &Message) -> OwnedHeaders {
    let ce = msg.cloudevent.as_deref();
    let ce_count = ce.map_or(0, |_| 10);
    let mut h = OwnedHeaders::new_with_capacity(msg.headers.len() + ce_count);
    for (k, v) in &msg.headers {
        h = h.insert(Header {
            key: k.as_str(),
            value: Some(v.as_str()),
        });
    }
    if let Some(ce) = ce {
        if ce.mode == Mode::Binary {
            for (name, value) in ce.attributes() {
                h = h.insert(Header {
                    key: &format!("ce_{name}"),
                    value: Some(value),
                });
            }
        }
        h = h.insert(Header {
            key: "content-type",
            value: Some(ce.content_type()),
        });
    }
    h
}

#[async_trait]
impl Sink for KafkaSink {
    fn name(&self) -> &str {
        &self.name
    }

    fn system(&self) -> &'static str {
        "kafka"
    }

    async fn publish(&self, msg: &Message) -> Result<(), SinkError> {
        self.publish_placed(msg, &Placement::ALONE).await
    }

    /// Placed once librdkafka holds the record: the idempotent producer keeps a partition's order
    /// across its retries, and a key always maps to the same partition. A record whose key's
    /// earlier records went to a producer that was replaced since is not placed (retriable): the
    /// old producer's records fail, and the dispatcher retries them first.
    async fn publish_placed(
        &self,
        msg: &Message,
        placement: &Placement<'_>,
    ) -> Result<(), SinkError> {
        let topic = msg.topic.as_str();
        if self.closed.load(Ordering::Acquire) {
            return Err(SinkError::Retriable(format!(
                "kafka topic {topic:?}: the sink is closed"
            )));
        }
        if !valid_topic_name(topic) {
            return Err(SinkError::Fatal(format!(
                "kafka topic {topic:?} is not a legal topic name (letters, digits, `.`, `_`, `-`, at most 249)"
            )));
        }
        let headers = record_headers(msg);
        let body = msg.body();
        let mut record = FutureRecord::<str, [u8]>::to(topic)
            .payload(body.as_ref().as_ref())
            .headers(headers);
        if let Some(key) = &msg.key {
            record = record.key(key.as_str());
        }

        // Held until the delivery report: at most `max_in_flight` messages awaiting one.
        let _permit = self.window.acquire().await.map_err(|_| {
            SinkError::Retriable(format!("kafka topic {topic:?}: the sink is closed"))
        })?;
        let mut active = self.producer.load_full();
        if active.unusable().is_some() {
            self.recover(&active);
            active = self.producer.load_full();
        }
        if placement.after.is_some_and(|g| g != active.generation) {
            return Err(SinkError::Retriable(format!(
                "kafka topic {topic:?}: the producer holding this key's earlier messages was \
                 replaced; this one waits for them"
            )));
        }
        let delivery = self.enqueue(&active, record, msg).await?;
        (placement.placed)(active.generation);
        self.delivered(&active, delivery, msg).await
    }

    async fn healthcheck(&self) -> Result<(), SinkError> {
        let active = self.producer.load_full();
        if let Some(why) = active.unusable() {
            // Replaced here too, so that an idle sink recovers before the next publish.
            self.recover(&active);
            return Err(SinkError::Retriable(format!(
                "kafka producer could not deliver any more and was replaced: {why}"
            )));
        }
        self.metadata_check(self.health_timeout)
            .await
            .map(|_| ())
            .map_err(|e| {
                SinkError::Retriable(format!(
                    "kafka cluster at {:?} does not answer within {:?}: {}",
                    self.brokers,
                    self.health_timeout,
                    e.reason()
                ))
            })
    }

    /// From librdkafka's last statistics (every second by default): connected while some broker
    /// connection (bootstrap or learned) is up. Without statistics (`statistics.interval.ms: 0`, or none yet) only a
    /// producer that cannot deliver any more counts as not connected.
    fn status(&self) -> SinkStatus {
        if self.closed.load(Ordering::Acquire) {
            return SinkStatus::Closed;
        }
        if self.producer.load().unusable().is_some() {
            return SinkStatus::NotConnected {
                why: "the producer failed and is being replaced",
            };
        }
        let up = self.shared.statistics.lock().ok().and_then(|g| {
            g.as_ref().map(|st| {
                st.brokers.values().any(|b| {
                    // Bootstrap ("configured") or learned; librdkafka's own internal and logical
                    // brokers say UP without a connection.
                    matches!(b.source.as_str(), "configured" | "learned") && b.state == "UP"
                })
            })
        });
        match up {
            Some(false) => SinkStatus::NotConnected {
                why: "no broker connection is up, reconnecting",
            },
            Some(true) | None => SinkStatus::Connected,
        }
    }

    async fn close(&self, deadline: Instant) -> Result<(), SinkError> {
        self.closed.store(true, Ordering::Release);
        // Publishes waiting for a window slot fail (retriable) rather than wait for nothing.
        self.window.close();
        let active = self.producer.load_full();
        let timeout = deadline.saturating_duration_since(Instant::now());
        let flushed = tokio::task::spawn_blocking(move || {
            let r = active.producer.flush(timeout);
            (r, active.producer.in_flight_count())
        })
        .await
        .map_err(|e| SinkError::Retriable(format!("kafka flush task failed: {e}")))?;
        match flushed {
            (Ok(()), _) => {
                tracing::info!(sink = &*self.name, "kafka sink flushed");
                Ok(())
            }
            (Err(e), left) => Err(SinkError::Retriable(format!(
                "kafka sink {:?}: {left} messages unconfirmed at the close deadline: {e}",
                &*self.name
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification() {
        use RDKafkaErrorCode as E;
        for c in [
            E::MessageSizeTooLarge,
            E::UnknownTopicOrPartition,
            E::UnknownTopic,
            E::UnknownPartition,
            E::TopicAuthorizationFailed,
            E::ClusterAuthorizationFailed,
        ] {
            assert_eq!(classify(c), Class::Fatal, "{c:?}");
        }
        for c in [
            E::MessageTimedOut,
            E::NotLeaderForPartition,
            E::RequestTimedOut,
            E::NotEnoughReplicas,
            E::AllBrokersDown,
            E::BrokerTransportFailure,
            E::QueueFull,
            E::Fatal,
        ] {
            assert_eq!(classify(c), Class::Retriable, "{c:?}");
        }
        let e = to_sink_error(&KafkaError::MessageProduction(E::UnknownTopic), "fondo.x");
        assert!(!e.is_retriable());
        assert!(e.reason().contains("\"fondo.x\""), "{}", e.reason());
    }

    #[test]
    fn secrets_are_redacted() {
        let mut cc = ClientConfig::new();
        cc.set("sasl.password", "hunter2");
        assert_eq!(redact("bad hunter2 value", &cc), "bad *** value");
    }

    fn cfg(brokers: &str, options: &[(&str, &str)]) -> KafkaSinkConfig {
        KafkaSinkConfig {
            brokers: brokers.into(),
            options: options
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            connect_timeout_ms: 1500,
            ..KafkaSinkConfig::default()
        }
    }

    async fn connect_err(c: &KafkaSinkConfig) -> SinkError {
        match KafkaSink::connect("t", c).await {
            Ok(_) => panic!("connect succeeded"),
            Err(e) => {
                eprintln!("connect error: {e}");
                e
            }
        }
    }

    #[tokio::test]
    async fn unknown_option_fails_at_connect() {
        let e = connect_err(&cfg("127.0.0.1:1", &[("no.such.option", "x")])).await;
        assert!(!e.is_retriable());
        assert!(e.reason().contains("no.such.option"), "{}", e.reason());
    }

    #[tokio::test]
    async fn at_most_once_fails_at_connect() {
        let e = connect_err(&cfg("127.0.0.1:1", &[("acks", "0")])).await;
        assert!(e.reason().contains("acks=0"), "{}", e.reason());
        assert!(e.reason().contains("accept_at_most_once"), "{}", e.reason());
    }

    #[tokio::test]
    async fn conflicting_security_settings_fail_at_connect() {
        // SASL without a mechanism librdkafka knows.
        let e = connect_err(&cfg(
            "127.0.0.1:1",
            &[
                ("security.protocol", "SASL_SSL"),
                ("sasl.mechanisms", "NOPE"),
                ("sasl.password", "hunter2"),
            ],
        ))
        .await;
        assert!(!e.is_retriable());
        assert!(!e.reason().contains("hunter2"), "{}", e.reason());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn unreachable_bootstrap_fails_at_connect() {
        let started = Instant::now();
        let e = connect_err(&cfg("127.0.0.1:1", &[])).await;
        // Nothing listens: the cluster may not be up yet, so the bridge starts and keeps trying.
        assert!(e.is_retriable());
        assert!(e.reason().contains("cannot reach"), "{}", e.reason());
        assert!(e.reason().contains("127.0.0.1:1"), "{}", e.reason());
        assert!(started.elapsed() < Duration::from_secs(10));
    }

    /// A TLS client against a plaintext listener is configuration: fatal, not "not up yet".
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn tls_against_a_plaintext_listener_is_fatal_at_connect() {
        let mock = rdkafka::mocking::MockCluster::new(1).unwrap();
        let e = connect_err(&cfg(
            &mock.bootstrap_servers(),
            &[("security.protocol", "SSL")],
        ))
        .await;
        assert!(!e.is_retriable(), "{}", e.reason());
        assert!(e.reason().contains("cannot reach"), "{}", e.reason());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn status_follows_the_broker_connection() {
        let mock = rdkafka::mocking::MockCluster::new(1).unwrap();
        mock.create_topic("t", 1, 1).unwrap();
        let sink = KafkaSink::connect(
            "t",
            &cfg(
                &mock.bootstrap_servers(),
                &[("statistics.interval.ms", "100")],
            ),
        )
        .await
        .unwrap();
        let becomes = |want: bool| {
            let sink = &sink;
            async move {
                let deadline = Instant::now() + Duration::from_secs(15);
                while sink.status().is_connected() != want {
                    assert!(Instant::now() < deadline, "status {:?}", sink.status());
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        };
        becomes(true).await;
        mock.broker_down(1).unwrap();
        becomes(false).await;
        mock.broker_up(1).unwrap();
        let t = Instant::now();
        becomes(true).await;
        eprintln!("idle producer up again after {:?}", t.elapsed());
    }
}
