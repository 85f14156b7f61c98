//! The `nats` sink: JetStream publishes confirmed by their PubAck (default), or core NATS (at most
//! once, only when asked for explicitly).
//!
//! The route's topic is the subject. Every message carries the dispatcher's headers (`fondo-event-id`,
//! `fondo-event-type`, `fondo-client-id`, `fondo-source`, `traceparent`, route headers), the key as
//! `fondo-key`, a CloudEvents destination's headers ([`crate::cloudevents`]), and in JetStream mode `Nats-Msg-Id` = the message id (unique per occurrence and
//! destination, see `event::message_id`), so the stream's duplicate window drops a replay of one
//! occurrence to one subject, while one event fanned out to two subjects of one stream is stored
//! twice. A duplicate PubAck is a confirmed delivery (the stream holds the message) and is counted
//! in `fondo_bridge_broker_duplicates_total{sink}`.
//!
//! Publishes pipeline: each call sends at once and then waits for its own PubAck, with at most
//! `max_in_flight` waiting at a time. When the connection drops, publishes still waiting for a PubAck
//! fail as retriable straight away (the dispatcher retries them; `Nats-Msg-Id` absorbs the duplicates
//! when the first attempt was stored after all), and new publishes wait up to `reconnect_wait_ms` for
//! the client to reconnect (it keeps trying forever, backing off up to `reconnect_max_ms`).
//!
//! Errors are classified from the client's error kinds and the JetStream API error codes: no stream
//! capturing the subject, a message too large, an invalid subject or header are fatal; timeouts,
//! lost connections, storage limits and an unavailable JetStream are retriable.

pub mod reader;

use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use async_nats::jetstream::context::{
    CreateStreamErrorKind, GetStreamByNameErrorKind, PublishErrorKind as JsPublishErrorKind,
};
use async_nats::jetstream::{self, ErrorCode};
use async_nats::{
    ConnectErrorKind, ConnectOptions, HeaderMap, HeaderName, HeaderValue, PublishErrorKind,
    ServerAddr,
};
use async_trait::async_trait;
use bytes::Bytes;
use tokio::sync::{Semaphore, watch};
use tracing::{debug, info, warn};

use super::{Message, Sink, SinkError, SinkStatus};
use crate::cloudevents::{Mode, percent_encode};
use crate::config::nats::{
    NatsMode, NatsSinkConfig, NatsStorage, check_publish_subject, redact_url,
};
use crate::config::read_secret;

/// The header carrying the message key.
pub const KEY_HEADER: &str = super::headers::KEY;

/// The largest `max_in_flight` honoured (the window is a semaphore).
const MAX_WINDOW: usize = 1 << 20;

/// What the connection is doing, as reported by the client's events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ConnState {
    /// Bumped on every disconnect: a publish sent in an older generation lost its PubAck.
    generation: u64,
    connected: bool,
}

/// A NATS sink. Build it with [`NatsSink::connect`].
pub struct NatsSink {
    name: String,
    mode: NatsMode,
    client: async_nats::Client,
    js: jetstream::Context,
    /// The in-flight window: one permit per publish between send and PubAck.
    window: Arc<Semaphore>,
    window_size: u32,
    conn: watch::Receiver<ConnState>,
    ack_timeout: Duration,
    reconnect_wait: Duration,
    closed: AtomicBool,
    /// The servers, without credentials, for messages.
    servers: String,
    /// Duplicate PubAcks (`fondo_bridge_broker_duplicates_total`), once the dispatcher attached it.
    duplicates: std::sync::OnceLock<prometheus_client::metrics::counter::Counter>,
}

impl std::fmt::Debug for NatsSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsSink")
            .field("name", &self.name)
            .field("mode", &self.mode)
            .field("servers", &self.servers)
            .finish_non_exhaustive()
    }
}

impl NatsSink {
    /// Connects to the configured servers (one round over the list, each bounded by
    /// `connect_timeout_ms`; no endless retry at start), checks that JetStream answers (JetStream
    /// mode) and creates the configured `streams` that are missing.
    ///
    /// Errors: an unreachable server or a timeout is [`SinkError::Retriable`]; refused credentials,
    /// TLS failures, an invalid config, unreadable secret files and a server without JetStream are
    /// [`SinkError::Fatal`]. Messages never contain passwords.
    pub async fn connect(name: &str, cfg: &NatsSinkConfig) -> Result<NatsSink, SinkError> {
        let (addrs, servers) = server_addrs(cfg)?;
        let ack_timeout = Duration::from_millis(cfg.confirm_timeout_ms);
        let (state_tx, state_rx) = watch::channel(ConnState {
            generation: 0,
            connected: false,
        });
        let state_tx = Arc::new(state_tx);
        let opts = connect_options(name, cfg, Arc::clone(&state_tx)).await?;
        let client = open_client(opts, addrs, &servers, cfg).await?;
        if client.connection_state() == async_nats::connection::State::Connected {
            state_tx.send_modify(|s| {
                if s.generation == 0 {
                    s.connected = true;
                }
            });
        }

        let window_size = cfg.max_in_flight.clamp(1, MAX_WINDOW);
        let builder = jetstream::ContextBuilder::new()
            .timeout(ack_timeout)
            .ack_timeout(ack_timeout)
            // The sink's own window is the bound; the context's must never be the one that blocks,
            // also while abandoned acks of a dropped connection still hold its permits.
            .max_ack_inflight(window_size.saturating_mul(4))
            .backpressure_on_inflight(true);
        let js = builder.build(client.clone());

        let sink = NatsSink {
            name: name.to_owned(),
            mode: cfg.mode,
            client,
            js,
            window: Arc::new(Semaphore::new(window_size)),
            // `window_size` is at most MAX_WINDOW, so it fits.
            window_size: u32::try_from(window_size).unwrap_or(u32::MAX),
            conn: state_rx,
            ack_timeout,
            reconnect_wait: Duration::from_millis(cfg.reconnect_wait_ms),
            closed: AtomicBool::new(false),
            servers,
            duplicates: std::sync::OnceLock::new(),
        };
        sink.prepare(cfg).await?;
        info!(
            sink = %sink.name,
            servers = %sink.servers,
            mode = ?cfg.mode,
            max_in_flight = window_size,
            "NATS sink connected"
        );
        Ok(sink)
    }

    /// Readies the connected sink for its mode: core mode only warns that it is at most once;
    /// JetStream mode checks that JetStream answers and creates the missing `streams`.
    async fn prepare(&self, cfg: &NatsSinkConfig) -> Result<(), SinkError> {
        match cfg.mode {
            NatsMode::Core => {
                warn!(
                    sink = %self.name,
                    servers = %self.servers,
                    "NATS sink in core mode: publishes are AT MOST ONCE (no broker confirmation; \
                     messages are lost without a subscriber or when the connection drops)"
                );
            }
            NatsMode::Jetstream => {
                self.check_jetstream().await?;
                self.ensure_streams(cfg).await?;
            }
        }
        Ok(())
    }

    /// The underlying client (for tests and diagnostics).
    pub fn client(&self) -> &async_nats::Client {
        &self.client
    }

    /// Asks the JetStream API for the account info (raw, so that any server version's answer
    /// parses): no responders means JetStream is off; an API error in the answer is reported.
    async fn check_jetstream(&self) -> Result<(), SinkError> {
        use async_nats::client::RequestErrorKind;
        let request = self.client.request("$JS.API.INFO".to_owned(), Bytes::new());
        let reply = match tokio::time::timeout(self.ack_timeout, request).await {
            Ok(Ok(reply)) => reply,
            Ok(Err(e)) if e.kind() == RequestErrorKind::NoResponders => {
                return Err(SinkError::Fatal(format!(
                    "JetStream is not enabled on NATS {} (no responders to the JetStream API); \
                     enable it, or use `mode: core` if at-most-once is acceptable",
                    self.servers
                )));
            }
            Ok(Err(e)) => {
                return Err(SinkError::Retriable(format!(
                    "JetStream on NATS {} did not answer: {e}",
                    self.servers
                )));
            }
            Err(_) => {
                return Err(SinkError::Retriable(format!(
                    "JetStream on NATS {} did not answer within {} ms",
                    self.servers,
                    self.ack_timeout.as_millis()
                )));
            }
        };
        let body: serde_json::Value = serde_json::from_slice(&reply.payload)
            .map_err(|e| SinkError::Retriable(format!("unreadable JetStream account info: {e}")))?;
        match body.get("error") {
            None => Ok(()),
            Some(err) => {
                let code = err
                    .get("code")
                    .and_then(serde_json::Value::as_u64)
                    .unwrap_or(0);
                let description = err
                    .get("description")
                    .and_then(serde_json::Value::as_str)
                    .unwrap_or("unknown error");
                let reason = format!(
                    "JetStream on NATS {} refused this account: {description} (code {code})",
                    self.servers
                );
                // "JetStream not enabled for account" comes as 503 but is configuration.
                if description.contains("not enabled") || (400..500).contains(&code) {
                    Err(SinkError::Fatal(reason))
                } else {
                    Err(SinkError::Retriable(reason))
                }
            }
        }
    }

    async fn ensure_streams(&self, cfg: &NatsSinkConfig) -> Result<(), SinkError> {
        for s in &cfg.streams {
            let config = jetstream::stream::Config {
                name: s.name.clone(),
                subjects: s.subjects.clone(),
                storage: match s.storage {
                    NatsStorage::File => jetstream::stream::StorageType::File,
                    NatsStorage::Memory => jetstream::stream::StorageType::Memory,
                },
                num_replicas: s.replicas,
                max_age: Duration::from_millis(s.max_age_ms),
                duplicate_window: Duration::from_millis(s.duplicate_window_ms),
                ..Default::default()
            };
            let stream = self.js.get_or_create_stream(config).await.map_err(|e| {
                let reason = format!("cannot get or create JetStream stream {:?}: {e}", s.name);
                match e.kind() {
                    CreateStreamErrorKind::TimedOut
                    | CreateStreamErrorKind::JetStreamUnavailable => SinkError::Retriable(reason),
                    CreateStreamErrorKind::JetStream(api) if api.code() >= 500 => {
                        SinkError::Retriable(reason)
                    }
                    _ => SinkError::Fatal(reason),
                }
            })?;
            let existing = &stream.cached_info().config;
            if existing.subjects != s.subjects
                || existing.duplicate_window != Duration::from_millis(s.duplicate_window_ms)
            {
                warn!(
                    sink = %self.name,
                    stream = %s.name,
                    existing_subjects = ?existing.subjects,
                    configured_subjects = ?s.subjects,
                    existing_duplicate_window_ms = existing.duplicate_window.as_millis() as u64,
                    "JetStream stream exists with a different configuration; left unchanged"
                );
            } else {
                info!(sink = %self.name, stream = %s.name, "JetStream stream ready");
            }
        }
        Ok(())
    }

    /// Waits (bounded) until the connection is up; returns its generation.
    async fn wait_connected(&self) -> Result<u64, SinkError> {
        let mut rx = self.conn.clone();
        match tokio::time::timeout(self.reconnect_wait, rx.wait_for(|s| s.connected)).await {
            Ok(Ok(s)) => Ok(s.generation),
            Ok(Err(_)) => Err(SinkError::Retriable(format!(
                "NATS connection to {} is closed",
                self.servers
            ))),
            Err(_) => Err(SinkError::Retriable(format!(
                "not connected to NATS {} (reconnecting) for {} ms",
                self.servers,
                self.reconnect_wait.as_millis()
            ))),
        }
    }

    /// Resolves when the connection of `generation` has been lost.
    async fn connection_lost(&self, generation: u64) {
        let mut rx = self.conn.clone();
        let _ = rx.wait_for(|s| s.generation != generation).await;
    }

    async fn publish_jetstream(
        &self,
        subject: String,
        headers: HeaderMap,
        msg: &Message,
        generation: u64,
    ) -> Result<(), SinkError> {
        let publish = jetstream::message::PublishMessage::build()
            .payload(msg.body().into_owned())
            .headers(headers);
        let send_and_ack = async {
            // First await: queued for sending; second: the stream's PubAck.
            let ack = self.js.send_publish(subject.clone(), publish).await?;
            ack.await
        };
        let result = tokio::select! {
            r = send_and_ack => r,
            () = self.connection_lost(generation) => {
                return Err(SinkError::Retriable(format!(
                    "connection to NATS lost before the PubAck for subject {subject} arrived"
                )));
            }
        };
        match result {
            Ok(ack) => {
                if ack.duplicate {
                    if let Some(c) = self.duplicates.get() {
                        c.inc();
                    }
                    debug!(
                        sink = %self.name,
                        subject = %subject,
                        event_id = %msg.event_id,
                        stream = %ack.stream,
                        "JetStream dropped a duplicate (Nats-Msg-Id seen in the duplicate window)"
                    );
                }
                Ok(())
            }
            Err(e) => Err(self.classify_publish(&subject, &e).await),
        }
    }

    async fn classify_publish(
        &self,
        subject: &str,
        e: &async_nats::jetstream::context::PublishError,
    ) -> SinkError {
        match e.kind() {
            JsPublishErrorKind::StreamNotFound => self.confirm_no_stream(subject).await,
            JsPublishErrorKind::TimedOut => SinkError::Retriable(format!(
                "no PubAck for subject {subject} within {} ms",
                self.ack_timeout.as_millis()
            )),
            JsPublishErrorKind::BrokenPipe => SinkError::Retriable(format!(
                "connection to NATS lost before the PubAck for subject {subject} arrived"
            )),
            JsPublishErrorKind::MaxAckPending => {
                SinkError::Retriable("too many PubAcks pending".into())
            }
            JsPublishErrorKind::MaxPayloadExceeded => SinkError::Fatal(format!(
                "message for subject {subject} exceeds the server's max_payload: {e}"
            )),
            JsPublishErrorKind::WrongLastMessageId | JsPublishErrorKind::WrongLastSequence => {
                SinkError::Fatal(format!(
                    "JetStream refused the message for subject {subject}: {e}"
                ))
            }
            JsPublishErrorKind::Other => classify_other(subject, e),
        }
    }

    /// "No responders" to a JetStream publish means no stream captures the subject, or JetStream
    /// itself is not answering (starting, or leader moving). Asks the API which one.
    async fn confirm_no_stream(&self, subject: &str) -> SinkError {
        let lookup =
            tokio::time::timeout(self.ack_timeout, self.js.stream_by_subject(subject)).await;
        match lookup {
            Ok(Err(e)) if e.kind() == GetStreamByNameErrorKind::NotFound => {
                SinkError::Fatal(format!("no JetStream stream captures subject {subject}"))
            }
            Ok(Err(e)) => match e.kind() {
                GetStreamByNameErrorKind::JetStream(api) if api.code() == 404 => {
                    SinkError::Fatal(format!("no JetStream stream captures subject {subject}"))
                }
                _ => SinkError::Retriable(format!(
                    "no responders for subject {subject} and the JetStream API is not answering: {e}"
                )),
            },
            Ok(Ok(stream)) => SinkError::Retriable(format!(
                "no responders for subject {subject}, although stream {stream} captures it now"
            )),
            Err(_) => SinkError::Retriable(format!(
                "no responders for subject {subject} and the JetStream API did not answer"
            )),
        }
    }

    async fn publish_core(
        &self,
        subject: String,
        headers: HeaderMap,
        msg: &Message,
    ) -> Result<(), SinkError> {
        self.client
            .publish_with_headers(subject.clone(), headers, msg.body().into_owned())
            .await
            .map_err(|e| match e.kind() {
                PublishErrorKind::MaxPayloadExceeded => SinkError::Fatal(format!(
                    "message for subject {subject} exceeds the server's max_payload: {e}"
                )),
                PublishErrorKind::InvalidSubject => {
                    SinkError::Fatal(format!("invalid NATS subject {subject:?}: {e}"))
                }
                PublishErrorKind::Send => {
                    SinkError::Retriable(format!("cannot send to NATS (subject {subject}): {e}"))
                }
            })?;
        // Core NATS confirms nothing; this only waits until the bytes were handed to the socket.
        match tokio::time::timeout(self.ack_timeout, self.client.flush()).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(SinkError::Retriable(format!("flush to NATS failed: {e}"))),
            Err(_) => Err(SinkError::Retriable(format!(
                "flush to NATS took more than {} ms",
                self.ack_timeout.as_millis()
            ))),
        }
    }
}

#[async_trait]
impl Sink for NatsSink {
    fn name(&self) -> &str {
        &self.name
    }

    fn system(&self) -> &'static str {
        "nats"
    }

    fn count_broker_duplicates(&self, counter: prometheus_client::metrics::counter::Counter) {
        let _ = self.duplicates.set(counter);
    }

    async fn publish(&self, msg: &Message) -> Result<(), SinkError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(SinkError::Retriable(format!(
                "NATS sink {} is closed",
                self.name
            )));
        }
        check_publish_subject(&msg.topic).map_err(|e| {
            SinkError::Fatal(format!("{:?} is not a valid NATS subject: {e}", msg.topic))
        })?;
        let headers = build_headers(msg, self.mode == NatsMode::Jetstream)?;
        let subject = msg.topic.clone();

        let _permit = self
            .window
            .acquire()
            .await
            .map_err(|_| SinkError::Retriable(format!("NATS sink {} is closed", self.name)))?;
        let generation = self.wait_connected().await?;
        match self.mode {
            NatsMode::Jetstream => {
                self.publish_jetstream(subject, headers, msg, generation)
                    .await
            }
            NatsMode::Core => self.publish_core(subject, headers, msg).await,
        }
    }

    async fn healthcheck(&self) -> Result<(), SinkError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(SinkError::Retriable(format!(
                "NATS sink {} is closed",
                self.name
            )));
        }
        let ours = *self.conn.borrow();
        if !ours.connected
            || self.client.connection_state() != async_nats::connection::State::Connected
        {
            return Err(SinkError::Retriable(format!(
                "not connected to NATS {} (reconnecting)",
                self.servers
            )));
        }
        match self.mode {
            NatsMode::Jetstream => self.check_jetstream().await,
            NatsMode::Core => {
                match tokio::time::timeout(self.ack_timeout, self.client.flush()).await {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(e)) => Err(SinkError::Retriable(format!("flush to NATS failed: {e}"))),
                    Err(_) => Err(SinkError::Retriable("flush to NATS timed out".into())),
                }
            }
        }
    }

    fn status(&self) -> SinkStatus {
        if self.closed.load(Ordering::Acquire) {
            return SinkStatus::Closed;
        }
        if self.conn.borrow().connected {
            SinkStatus::Connected
        } else {
            SinkStatus::NotConnected {
                why: "connection lost, reconnecting",
            }
        }
    }

    async fn close(&self, deadline: Instant) -> Result<(), SinkError> {
        self.closed.store(true, Ordering::Release);
        let left = deadline.saturating_duration_since(Instant::now());
        // Every permit back means nothing is waiting for a PubAck any more.
        let drained = tokio::time::timeout(left, self.window.acquire_many(self.window_size)).await;
        let left = deadline.saturating_duration_since(Instant::now());
        let flushed = tokio::time::timeout(left, self.client.flush()).await;
        if let Err(e) = self.client.drain().await {
            debug!(sink = %self.name, error = %e, "NATS drain failed (connection already closed)");
        }
        self.window.close();
        match (drained, flushed) {
            (Ok(_), Ok(Ok(()))) => {
                info!(sink = %self.name, "NATS sink closed");
                Ok(())
            }
            (Err(_), _) => {
                let waiting = self.window_size as usize - self.window.available_permits();
                Err(SinkError::Retriable(format!(
                    "NATS sink {} closed with {waiting} publish(es) still waiting for a PubAck at the deadline",
                    self.name
                )))
            }
            (_, Ok(Err(e))) => Err(SinkError::Retriable(format!(
                "NATS sink {}: final flush failed: {e}",
                self.name
            ))),
            (_, Err(_)) => Err(SinkError::Retriable(format!(
                "NATS sink {}: final flush did not finish before the deadline",
                self.name
            ))),
        }
    }
}

/// Validates the config and parses its server URLs; also returns the servers without
/// credentials, for messages.
fn server_addrs(cfg: &NatsSinkConfig) -> Result<(Vec<ServerAddr>, String), SinkError> {
    let problems = cfg.validate();
    if !problems.is_empty() {
        let list: Vec<String> = problems.iter().map(|(p, m)| format!("{p}: {m}")).collect();
        return Err(SinkError::Fatal(format!(
            "invalid NATS sink config: {}",
            list.join("; ")
        )));
    }
    let urls = cfg.urls();
    if urls.is_empty() {
        return Err(SinkError::Fatal(
            "invalid NATS sink config: url: must list at least one server".into(),
        ));
    }
    let servers = urls
        .iter()
        .map(|u| redact_url(u))
        .collect::<Vec<_>>()
        .join(",");
    let mut addrs = Vec::with_capacity(urls.len());
    for u in &urls {
        let addr = ServerAddr::from_str(u).map_err(|e| {
            SinkError::Fatal(format!("invalid NATS server URL {}: {e}", redact_url(u)))
        })?;
        addrs.push(addr);
    }
    Ok((addrs, servers))
}

/// The client's options: timeouts, endless reconnects with back-off, connection events reported
/// into `state_tx`, credentials and TLS.
async fn connect_options(
    name: &str,
    cfg: &NatsSinkConfig,
    state_tx: Arc<watch::Sender<ConnState>>,
) -> Result<ConnectOptions, SinkError> {
    let delay_max = Duration::from_millis(cfg.reconnect_max_ms);
    let sink_name = name.to_owned();
    let opts = ConnectOptions::new()
        .name(format!("fondo-bridge/{name}"))
        .connection_timeout(Duration::from_millis(cfg.connect_timeout_ms))
        .ping_interval(Duration::from_millis(cfg.ping_interval_ms))
        .max_reconnects(None)
        .reconnect_delay_callback(move |attempts| reconnect_delay(attempts, delay_max))
        .event_callback(move |event| {
            let tx = Arc::clone(&state_tx);
            let sink = sink_name.clone();
            async move { on_event(&sink, &tx, event) }
        });
    let opts = apply_credentials(opts, cfg).await?;
    match &cfg.tls {
        Some(tls) => apply_tls(opts, tls),
        None => Ok(opts),
    }
}

/// One round over the servers. The client bounds each server by `connection_timeout`; this bounds
/// the whole round.
async fn open_client(
    opts: ConnectOptions,
    addrs: Vec<ServerAddr>,
    servers: &str,
    cfg: &NatsSinkConfig,
) -> Result<async_nats::Client, SinkError> {
    let whole = Duration::from_millis(cfg.connect_timeout_ms)
        .saturating_mul(u32::try_from(addrs.len()).unwrap_or(u32::MAX))
        .saturating_add(Duration::from_millis(cfg.reconnect_max_ms).saturating_mul(2))
        .saturating_add(Duration::from_secs(1));
    match tokio::time::timeout(whole, opts.connect(addrs)).await {
        Ok(Ok(c)) => Ok(c),
        Ok(Err(e)) => Err(classify_connect(&e, servers, cfg.connect_timeout_ms)),
        Err(_) => Err(SinkError::Retriable(format!(
            "cannot connect to NATS {servers}: no answer within {} ms",
            whole.as_millis()
        ))),
    }
}

/// Applies the configured credentials (at most one method; validated before).
async fn apply_credentials(
    mut opts: ConnectOptions,
    cfg: &NatsSinkConfig,
) -> Result<ConnectOptions, SinkError> {
    let unreadable = |what: &str, path: Option<&std::path::Path>, e: std::io::Error| {
        SinkError::Fatal(format!(
            "cannot read NATS {what} file {}: {e}",
            path.map(|p| p.display().to_string()).unwrap_or_default()
        ))
    };
    if let Some(user) = &cfg.user {
        let password = read_secret(cfg.password.as_ref(), cfg.password_file.as_deref())
            .map_err(|e| unreadable("password", cfg.password_file.as_deref(), e))?
            .ok_or_else(|| SinkError::Fatal("NATS `user` needs a password".into()))?;
        opts = opts.user_and_password(user.clone(), password.expose().to_owned());
    }
    if let Some(token) = read_secret(cfg.token.as_ref(), cfg.token_file.as_deref())
        .map_err(|e| unreadable("token", cfg.token_file.as_deref(), e))?
    {
        opts = opts.token(token.expose().to_owned());
    }
    if let Some(seed) = read_secret(cfg.nkey_seed.as_ref(), cfg.nkey_seed_file.as_deref())
        .map_err(|e| unreadable("nkey seed", cfg.nkey_seed_file.as_deref(), e))?
    {
        // Checked here because the client would panic on a malformed seed only when signing.
        if let Err(e) = nkey_seed_ok(seed.expose()) {
            return Err(SinkError::Fatal(format!("invalid NATS nkey seed: {e}")));
        }
        opts = opts.nkey(seed.expose().to_owned());
    }
    if let Some(path) = &cfg.creds_file {
        opts = opts
            .credentials_file(path)
            .await
            .map_err(|e| unreadable("creds", Some(path), e))?;
    }
    Ok(opts)
}

/// Requires TLS with the configured CA, client certificate and handshake order (files checked
/// first, see [`check_tls_files`]).
fn apply_tls(
    mut opts: ConnectOptions,
    tls: &crate::config::nats::NatsTlsConfig,
) -> Result<ConnectOptions, SinkError> {
    check_tls_files(tls)?;
    opts = opts.require_tls(true);
    if let Some(ca) = &tls.ca_file {
        opts = opts.add_root_certificates(ca.clone());
    }
    if let (Some(cert), Some(key)) = (&tls.cert_file, &tls.key_file) {
        opts = opts.add_client_certificate(cert.clone(), key.clone());
    }
    if tls.handshake_first {
        opts = opts.tls_first();
    }
    Ok(opts)
}

/// The client reads the TLS files only once a server answers; read them now, so a missing or
/// non-PEM file fails the start whether or not the server is reachable yet.
fn check_tls_files(tls: &crate::config::nats::NatsTlsConfig) -> Result<(), SinkError> {
    for (what, path) in [
        ("ca_file", &tls.ca_file),
        ("cert_file", &tls.cert_file),
        ("key_file", &tls.key_file),
    ] {
        let Some(path) = path else { continue };
        let text = std::fs::read(path).map_err(|e| {
            SinkError::Fatal(format!(
                "cannot read NATS tls.{what} {}: {e}",
                path.display()
            ))
        })?;
        if !text.windows(11).any(|w| w == b"-----BEGIN ") {
            return Err(SinkError::Fatal(format!(
                "NATS tls.{what} {} is not PEM (no -----BEGIN line)",
                path.display()
            )));
        }
    }
    Ok(())
}

/// A cheap shape check of an NKey seed (the client parses it when the server asks for a signature).
fn nkey_seed_ok(seed: &str) -> Result<(), String> {
    let s = seed.trim();
    if s.len() < 32 || !s.starts_with('S') || !s.chars().all(|c| c.is_ascii_alphanumeric()) {
        return Err("expected a base32 seed starting with `S` (e.g. `SUA...`)".into());
    }
    Ok(())
}

/// Reconnect back-off: immediately, then [`crate::backoff`] from 50 ms up to `max`.
fn reconnect_delay(attempts: usize, max: Duration) -> Duration {
    if attempts <= 1 {
        return Duration::ZERO;
    }
    crate::backoff::Backoff::nth(Duration::from_millis(50), max, attempts - 2)
}

fn on_event(sink: &str, tx: &watch::Sender<ConnState>, event: async_nats::Event) {
    use async_nats::Event;
    match event {
        Event::Connected => {
            tx.send_modify(|s| s.connected = true);
            info!(sink = %sink, "NATS connection (re)established");
        }
        Event::Disconnected => {
            tx.send_modify(|s| {
                s.generation += 1;
                s.connected = false;
            });
            warn!(sink = %sink, "NATS connection lost; reconnecting");
        }
        Event::Closed => {
            tx.send_modify(|s| {
                s.generation += 1;
                s.connected = false;
            });
            info!(sink = %sink, "NATS connection closed");
        }
        Event::LameDuckMode => {
            warn!(sink = %sink, "NATS server entered lame duck mode; will reconnect elsewhere");
        }
        Event::SlowConsumer(sid) => debug!(sink = %sink, sid, "NATS slow consumer"),
        Event::ServerError(e) => warn!(sink = %sink, error = %e, "NATS server error"),
        Event::ClientError(e) => debug!(sink = %sink, error = %e, "NATS client error"),
        other => debug!(sink = %sink, event = %other, "NATS event"),
    }
}

/// The bridge's own header names, built once (no validation or copy per message).
fn known_header(name: &str) -> Option<HeaderName> {
    use crate::sinks::headers as h;
    const KNOWN: [(&str, HeaderName); 6] = [
        (h::EVENT_ID, HeaderName::from_static(h::EVENT_ID)),
        (h::EVENT_TYPE, HeaderName::from_static(h::EVENT_TYPE)),
        (h::CLIENT_ID, HeaderName::from_static(h::CLIENT_ID)),
        (h::SOURCE, HeaderName::from_static(h::SOURCE)),
        (h::TRACEPARENT, HeaderName::from_static(h::TRACEPARENT)),
        (h::TRACESTATE, HeaderName::from_static(h::TRACESTATE)),
    ];
    KNOWN
        .iter()
        .find(|(k, _)| *k == name)
        .map(|(_, n)| n.clone())
}

/// The message's headers, `fondo-key`, a CloudEvent's headers and (JetStream) `Nats-Msg-Id`,
/// validated (no panics on bad input: the client asserts on names with `:` or control characters
/// and values with CR/LF).
fn build_headers(msg: &Message, jetstream: bool) -> Result<HeaderMap, SinkError> {
    let mut h = HeaderMap::new();
    let value = |name: &str, v: &str| {
        HeaderValue::from_str(v).map_err(|_| {
            SinkError::Fatal(format!(
                "header {name} has a value with CR or LF, not allowed in NATS"
            ))
        })
    };
    for (k, v) in &msg.headers {
        let name = match known_header(k) {
            Some(n) => n,
            None => HeaderName::from_str(k).map_err(|_| {
                SinkError::Fatal(format!(
                    "header name {k:?} is not valid in NATS (no `:`, spaces, control or non-ASCII)"
                ))
            })?,
        };
        h.append(name, value(k, v)?);
    }
    if let Some(key) = &msg.key {
        h.insert(KEY_HEADER, value(KEY_HEADER, key)?);
    }
    // A CloudEvent as the NATS binding says: in binary mode each attribute `x`, and
    // `datacontenttype` too, as the header `ce-x` with a percent-encoded value (§3.1.3); in
    // structured mode `Content-Type: application/cloudevents+json` tells the mode (§3).
    if let Some(ce) = msg.cloudevent.as_deref() {
        match ce.mode {
            Mode::Binary => {
                for (name, v) in ce.attributes() {
                    h.insert(
                        format!("ce-{name}").as_str(),
                        value(name, &percent_encode(v))?,
                    );
                }
                h.insert("ce-datacontenttype", ce.content_type());
            }
            Mode::Structured => h.insert("Content-Type", ce.content_type()),
        }
    }
    if jetstream {
        if msg.message_id.is_empty() {
            return Err(SinkError::Fatal(
                "empty message id: cannot set Nats-Msg-Id".into(),
            ));
        }
        h.insert(
            async_nats::header::NATS_MESSAGE_ID,
            value("Nats-Msg-Id", &msg.message_id)?,
        );
    }
    Ok(h)
}

fn classify_connect(e: &async_nats::ConnectError, servers: &str, timeout_ms: u64) -> SinkError {
    match e.kind() {
        ConnectErrorKind::Authentication | ConnectErrorKind::AuthorizationViolation => {
            SinkError::Fatal(format!(
                "NATS {servers} refused the credentials ({e}): check user/password, token, nkey or creds file"
            ))
        }
        ConnectErrorKind::Tls => SinkError::Fatal(format!("TLS with NATS {servers} failed: {e}")),
        ConnectErrorKind::ServerParse => {
            SinkError::Fatal(format!("invalid NATS server address {servers}: {e}"))
        }
        ConnectErrorKind::TimedOut => SinkError::Retriable(format!(
            "cannot connect to NATS {servers}: timed out after {timeout_ms} ms"
        )),
        ConnectErrorKind::Dns | ConnectErrorKind::Io | ConnectErrorKind::MaxReconnects => {
            SinkError::Retriable(format!("cannot connect to NATS {servers}: {e}"))
        }
    }
}

/// A publish failure of kind `Other`: a JetStream API error in the PubAck, or a local problem.
fn classify_other(subject: &str, e: &async_nats::jetstream::context::PublishError) -> SinkError {
    use std::error::Error as _;
    let api = e
        .source()
        .and_then(|s| s.downcast_ref::<async_nats::jetstream::Error>());
    let Some(api) = api else {
        return SinkError::Retriable(format!("JetStream publish to {subject} failed: {e}"));
    };
    let code = api.error_code();
    let reason = format!("JetStream refused the message for subject {subject}: {api}");
    if code == ErrorCode::STREAM_NOT_FOUND {
        return SinkError::Fatal(format!("no JetStream stream captures subject {subject}"));
    }
    if [
        ErrorCode::STREAM_MESSAGE_EXCEEDS_MAXIMUM,
        ErrorCode::STREAM_HEADER_EXCEEDS_MAXIMUM,
        ErrorCode::STREAM_SEALED,
    ]
    .contains(&code)
    {
        return SinkError::Fatal(reason);
    }
    if [
        ErrorCode::STORAGE_RESOURCES_EXCEEDED,
        ErrorCode::MEMORY_RESOURCES_EXCEEDED,
        ErrorCode::INSUFFICIENT_RESOURCES,
        ErrorCode::ACCOUNT_RESOURCES_EXCEEDED,
        ErrorCode::STREAM_STORE_FAILED,
        ErrorCode::CLUSTER_NOT_AVAILABLE,
    ]
    .contains(&code)
        || api.code() >= 500
    {
        return SinkError::Retriable(reason);
    }
    if (400..500).contains(&api.code()) {
        return SinkError::Fatal(reason);
    }
    SinkError::Retriable(reason)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(headers: Vec<(&str, &str)>, key: Option<&str>) -> Message {
        Message {
            topic: "fondo.order.update".into(),
            key: key.map(Into::into),
            headers: headers
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
            payload: Bytes::from_static(b"{}"),
            event_id: Arc::from("ev-1"),
            message_id: Arc::from("ev-1"),
            payload_is_json: true,
            pace: crate::group_commit::Pace::Prompt,
            cloudevent: None,
        }
    }

    #[test]
    fn headers_are_mapped() {
        let h = build_headers(
            &msg(
                vec![("fondo-event-id", "ev-1"), ("traceparent", "00-ab-cd-01")],
                Some("k1"),
            ),
            true,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(h.get("fondo-event-id").map(|v| v.as_str()), Some("ev-1"));
        assert_eq!(
            h.get("traceparent").map(|v| v.as_str()),
            Some("00-ab-cd-01")
        );
        assert_eq!(h.get(KEY_HEADER).map(|v| v.as_str()), Some("k1"));
        assert_eq!(h.get("Nats-Msg-Id").map(|v| v.as_str()), Some("ev-1"));
        let core = build_headers(&msg(vec![], None), false).unwrap_or_else(|e| panic!("{e}"));
        assert!(core.get("Nats-Msg-Id").is_none());
    }

    #[test]
    fn bad_headers_are_fatal_not_panics() {
        for (k, v) in [("a:b", "x"), ("a b", "x"), ("ok", "line\r\nbreak")] {
            let r = build_headers(&msg(vec![(k, v)], None), true);
            assert!(matches!(r, Err(SinkError::Fatal(_))), "{k:?}: {r:?}");
        }
        let r = build_headers(&msg(vec![], Some("a\nb")), true);
        assert!(matches!(r, Err(SinkError::Fatal(_))));
    }

    #[test]
    fn backoff() {
        let max = Duration::from_secs(2);
        assert_eq!(reconnect_delay(1, max), Duration::ZERO);
        let ms = Duration::from_millis;
        let within = |d: Duration, lo: Duration, hi: Duration| d >= lo && d <= hi;
        assert!(within(reconnect_delay(2, max), ms(25), ms(50)));
        assert!(within(reconnect_delay(3, max), ms(50), ms(100)));
        assert!(within(reconnect_delay(100, max), max / 2, max));
    }
}
