//! The `rabbitmq` sink: AMQP 0-9-1 (lapin) with publisher confirms and `mandatory` publishing.
//!
//! Every message goes to the configured exchange with the route's topic as routing key, persistent
//! (`delivery_mode` 2), `content_type: application/json`, `message_id` = the message id (unique per occurrence and destination), the AMQP
//! `type` = the event type, and the dispatcher's headers (`fondo-event-id`, `fondo-event-type`,
//! `fondo-client-id`, `fondo-source`, `traceparent`, route headers) plus the key as `fondo-key`.
//! A CloudEvents destination adds its attributes and content type ([`crate::cloudevents`]).
//!
//! # Delivery
//!
//! A publish resolves only on the broker's confirm. A nack is [`SinkError::Retriable`]. A message
//! the broker returns as unroutable (no queue bound for its routing key) is [`SinkError::Fatal`],
//! so a missing binding dead-letters events instead of losing them silently.
//!
//! Publishes pipeline: one task per connection (the *pump*) owns the channel's publishing side. It
//! hands each message to lapin at once and keeps up to `max_in_flight` of them waiting for their
//! confirms; callers wait only for their own. One task publishing keeps lapin's delivery tags in
//! step with the order frames go out (lapin assigns the tag and queues the frames in two steps, so
//! publishes racing on several threads could swap them), and lets the pump match returned messages
//! to publishes itself: lapin attaches a returned message to whichever confirm it completes next, which under
//! RabbitMQ's `multiple` acks is not necessarily the returned message's own. The pump therefore
//! collects every returned message (keyed by `message_id` and routing key) from all confirms lapin
//! has completed so far before it reports any publish as delivered.
//!
//! # Reconnect
//!
//! A supervisor task watches the connection (lapin's events, a status check every second, and the
//! pump's own errors; the AMQP heartbeat, `heartbeat_s`, finds silent network cuts). When the
//! connection or channel dies, every publish still waiting for its confirm fails at once as
//! retriable (the dispatcher retries it, so a message the broker stored before the cut may arrive
//! twice: at least once), the health check reports the sink unhealthy, and the supervisor
//! reconnects with [`crate::backoff`] (`reconnect_initial_ms` up to
//! `reconnect_max_ms`, never giving up), re-reading `password_file` and re-declaring the
//! configured topology each time. Publishes arriving meanwhile wait up to `reconnect_wait_ms` for
//! the new connection, then fail as retriable, so the dispatcher backs off instead of spinning.
//! While the broker blocks the connection (memory or disk alarm), publishes likewise wait up to
//! `reconnect_wait_ms` for it to unblock rather than piling up in the client, and the health check
//! reports the alarm.

pub mod reader;

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::FuturesUnordered;
use futures::{FutureExt as _, StreamExt as _};
use lapin::options::{
    BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::protocol::{AMQPErrorKind, AMQPHardError, AMQPSoftError};
use lapin::tcp::{OwnedIdentity, OwnedTLSConfig};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::uri::AMQPUri;
use lapin::{
    BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, ErrorKind,
    ExchangeKind, PublisherConfirm,
};
use tokio::sync::{Semaphore, mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::{Message, Sink, SinkError, SinkStatus, headers};
use crate::cloudevents::Mode;
use crate::config::rabbitmq::{
    AMQP_SHORTSTR_MAX, DeadLetterExchange, ExchangeDeclaration, ExchangeType, MAX_IN_FLIGHT,
    QueueDeclaration, QueueType, RabbitMqSinkConfig, redact_url,
};
use crate::config::read_secret;

/// The header carrying the message key.
pub const KEY_HEADER: &str = super::headers::KEY;

/// The `content_type` of every published message.
pub const CONTENT_TYPE: &str = "application/json";

/// AMQP `delivery_mode` for persistent messages.
const PERSISTENT: u8 = 2;

/// How often the supervisor checks the connection and channel state between events.
const STATUS_CHECK_EVERY: Duration = Duration::from_secs(1);

/// A RabbitMQ sink. Build it with [`RabbitMqSink::connect`].
pub struct RabbitMqSink {
    shared: Arc<Shared>,
    supervisor: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for RabbitMqSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RabbitMqSink")
            .field("name", &self.shared.name)
            .field("target", &self.shared.target)
            .field("exchange", &self.shared.cfg.exchange)
            .finish_non_exhaustive()
    }
}

/// State shared by the sink handle, the supervisor and publishes.
struct Shared {
    name: String,
    cfg: RabbitMqSinkConfig,
    /// The URL without its password, for messages.
    target: String,
    state: watch::Sender<LinkState>,
    /// The confirm window: one permit per publish between hand-over and confirm.
    window: Semaphore,
    window_size: u32,
    closing: AtomicBool,
    shutdown: CancellationToken,
    confirm_timeout: Duration,
    reconnect_wait: Duration,
    next_link_id: AtomicU64,
}

/// Where the sink's connection stands.
#[derive(Clone)]
enum LinkState {
    Up(Arc<Link>),
    /// Not connected; the reason, for errors and the health check.
    Down(String),
    Closed,
}

/// One connection and its publishing channel. Replaced as a whole on reconnect.
struct Link {
    id: u64,
    conn: Connection,
    channel: Channel,
    jobs: mpsc::UnboundedSender<Job>,
    /// Cancelled when the connection or channel is found dead.
    dead: CancellationToken,
    reason: Mutex<Option<String>>,
    /// Set while the broker blocks publishing (memory or disk alarm).
    blocked: Mutex<Option<String>>,
}

impl Link {
    /// Marks the link dead (the first reason wins); the pump fails its waiting publishes.
    fn kill(&self, reason: String) {
        {
            let mut r = lock(&self.reason);
            if r.is_none() {
                *r = Some(reason);
            }
        }
        self.dead.cancel();
    }

    fn death_reason(&self) -> String {
        lock(&self.reason)
            .clone()
            .unwrap_or_else(|| "connection closed".to_owned())
    }

    fn alive(&self) -> bool {
        !self.dead.is_cancelled()
            && self.conn.status().connected()
            && self.channel.status().connected()
    }
}

/// A message handed to the pump.
struct Job {
    routing_key: ShortString,
    payload: Bytes,
    properties: BasicProperties,
    /// `(message_id, routing_key)`, to recognise the message when the broker returns it.
    ident: (String, String),
    reply: oneshot::Sender<Result<(), SinkError>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl RabbitMqSink {
    /// Connects, opens a confirm-mode channel, declares the configured topology (or checks that
    /// the exchange exists, passively), and starts the background reconnect supervisor.
    ///
    /// Errors name the cause: an invalid config or URL, refused credentials (`ACCESS_REFUSED`), a
    /// missing vhost or one the user may not use, unreadable secret or TLS files, a topology that
    /// contradicts what exists are [`SinkError::Fatal`]; an unreachable broker, a timeout and an
    /// exchange that does not exist (yet; checked passively, without `declare`) are
    /// [`SinkError::Retriable`]. Messages never contain the password.
    pub async fn connect(name: &str, cfg: &RabbitMqSinkConfig) -> Result<RabbitMqSink, SinkError> {
        let problems = cfg.validate();
        if !problems.is_empty() {
            let list: Vec<String> = problems.iter().map(|(p, m)| format!("{p}: {m}")).collect();
            return Err(SinkError::Fatal(format!(
                "invalid RabbitMQ sink config: {}",
                list.join("; ")
            )));
        }
        let target = redact_url(&cfg.url);
        let window_size = u32::try_from(cfg.max_in_flight.clamp(1, MAX_IN_FLIGHT)).unwrap_or(1024);
        let (state, _) = watch::channel(LinkState::Down("connecting".to_owned()));
        let shared = Arc::new(Shared {
            name: name.to_owned(),
            cfg: cfg.clone(),
            target,
            state,
            window: Semaphore::new(window_size as usize),
            window_size,
            closing: AtomicBool::new(false),
            shutdown: CancellationToken::new(),
            confirm_timeout: Duration::from_millis(cfg.confirm_timeout_ms),
            reconnect_wait: Duration::from_millis(cfg.reconnect_wait_ms),
            next_link_id: AtomicU64::new(1),
        });

        let link = establish(&shared).await?;
        info!(
            sink = %name,
            target = %shared.target,
            exchange = %cfg.exchange,
            declared = cfg.declare.is_some(),
            max_in_flight = window_size,
            "RabbitMQ sink connected (publisher confirms, mandatory)"
        );
        shared.state.send_replace(LinkState::Up(link.clone()));
        let supervisor = tokio::spawn(supervise(shared.clone(), link));
        Ok(RabbitMqSink {
            shared,
            supervisor: Mutex::new(Some(supervisor)),
        })
    }

    /// Waits (at most `reconnect_wait_ms`) for a live connection.
    async fn live_link(&self) -> Result<Arc<Link>, SinkError> {
        let s = &self.shared;
        let mut rx = s.state.subscribe();
        let deadline = tokio::time::Instant::now() + s.reconnect_wait;
        loop {
            let reason = match &*rx.borrow_and_update() {
                LinkState::Up(l) if !l.dead.is_cancelled() => return Ok(l.clone()),
                LinkState::Up(l) => l.death_reason(),
                LinkState::Down(r) => r.clone(),
                LinkState::Closed => return Err(self.closed_error()),
            };
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Err(self.closed_error()),
                Err(_) => {
                    return Err(SinkError::Retriable(format!(
                        "not connected to RabbitMQ at {} (waited {} ms for the reconnect): {reason}",
                        s.target, s.cfg.reconnect_wait_ms
                    )));
                }
            }
        }
    }

    /// While the broker blocks the connection (memory or disk alarm) it reads nothing more, so
    /// messages handed over would only pile up in the client: wait (at most `reconnect_wait_ms`)
    /// for the alarm to clear instead.
    async fn wait_unblocked(&self, link: &Link) -> Result<(), SinkError> {
        let s = &self.shared;
        let deadline = Instant::now() + s.reconnect_wait;
        loop {
            let reason = match lock(&link.blocked).as_deref() {
                None => return Ok(()),
                Some(r) => r.to_owned(),
            };
            if link.dead.is_cancelled() || Instant::now() >= deadline {
                return Err(SinkError::Retriable(format!(
                    "RabbitMQ at {} blocks publishing: {reason}",
                    s.target
                )));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn closed_error(&self) -> SinkError {
        SinkError::Retriable(format!("RabbitMQ sink {} is closed", self.shared.name))
    }

    /// The AMQP properties of `msg`; fatal when a value cannot be carried by AMQP.
    fn properties(&self, msg: &Message) -> Result<BasicProperties, SinkError> {
        let message_id = ShortString::try_new(msg.message_id.as_ref()).map_err(|_| {
            SinkError::Fatal(format!(
                "the message id is {} bytes long; an AMQP message_id holds at most {AMQP_SHORTSTR_MAX}",
                msg.message_id.len()
            ))
        })?;
        let mut table = FieldTable::default();
        for (k, v) in &msg.headers {
            let name = ShortString::try_new(k.as_str()).map_err(|_| {
                SinkError::Fatal(format!(
                    "header name {:?}... is longer than {AMQP_SHORTSTR_MAX} bytes",
                    k.chars().take(40).collect::<String>()
                ))
            })?;
            table.insert(name, AMQPValue::LongString(LongString::from(v.as_str())));
        }
        if let Some(key) = &msg.key {
            table.insert(
                ShortString::from(KEY_HEADER),
                AMQPValue::LongString(LongString::from(key.as_str())),
            );
        }
        // A CloudEvent as the AMQP binding names it: attribute `x` as the application property
        // (for AMQP 0-9-1: the header) `cloudEvents_x` in binary mode (§3.1.3.1), the content
        // type in the `content_type` property in both modes (§3.1.1, §3.2.1).
        let mut content_type = CONTENT_TYPE;
        if let Some(ce) = msg.cloudevent.as_deref() {
            if ce.mode == Mode::Binary {
                for (name, value) in ce.attributes() {
                    table.insert(
                        ShortString::from(format!("cloudEvents_{name}")),
                        AMQPValue::LongString(LongString::from(value)),
                    );
                }
            }
            content_type = ce.content_type();
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let mut props = BasicProperties::default()
            .with_content_type(ShortString::from(content_type))
            .with_delivery_mode(PERSISTENT)
            .with_message_id(message_id)
            .with_timestamp(now)
            .with_app_id(ShortString::from("fondo-bridge"))
            .with_headers(table);
        if let Some(t) = msg
            .header(headers::EVENT_TYPE)
            .and_then(|t| ShortString::try_new(t).ok())
        {
            props = props.with_type(t);
        }
        Ok(props)
    }
}

impl Drop for RabbitMqSink {
    fn drop(&mut self) {
        self.shared.shutdown.cancel();
    }
}

#[async_trait]
impl Sink for RabbitMqSink {
    fn name(&self) -> &str {
        &self.shared.name
    }

    fn system(&self) -> &'static str {
        "rabbitmq"
    }

    async fn publish(&self, msg: &Message) -> Result<(), SinkError> {
        let s = &self.shared;
        if s.closing.load(Ordering::Acquire) {
            return Err(self.closed_error());
        }
        let routing_key = ShortString::try_new(msg.topic.as_str()).map_err(|_| {
            SinkError::Fatal(format!(
                "routing key {:?}... is longer than {AMQP_SHORTSTR_MAX} bytes",
                msg.topic.chars().take(40).collect::<String>()
            ))
        })?;
        let body = msg.body().into_owned();
        if body.len() > s.cfg.max_message_bytes {
            return Err(SinkError::Fatal(format!(
                "message of {} bytes exceeds max_message_bytes ({})",
                body.len(),
                s.cfg.max_message_bytes
            )));
        }
        let properties = self.properties(msg)?;

        let _permit = s.window.acquire().await.map_err(|_| self.closed_error())?;
        if s.closing.load(Ordering::Acquire) {
            return Err(self.closed_error());
        }
        let link = self.live_link().await?;
        self.wait_unblocked(&link).await?;

        let (reply, confirmed) = oneshot::channel();
        let job = Job {
            routing_key,
            payload: body,
            properties,
            ident: (msg.message_id.to_string(), msg.topic.clone()),
            reply,
        };
        if link.jobs.send(job).is_err() {
            return Err(SinkError::Retriable(format!(
                "connection to RabbitMQ at {} lost: {}",
                s.target,
                link.death_reason()
            )));
        }
        match tokio::time::timeout(s.confirm_timeout, confirmed).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(SinkError::Retriable(format!(
                "connection to RabbitMQ at {} lost before the broker confirmed the message: {}",
                s.target,
                link.death_reason()
            ))),
            Err(_) => Err(SinkError::Retriable(format!(
                "RabbitMQ at {} did not confirm the message within {} ms{}",
                s.target,
                s.cfg.confirm_timeout_ms,
                lock(&link.blocked)
                    .as_deref()
                    .map(|r| format!(" (the broker blocks publishing: {r})"))
                    .unwrap_or_default()
            ))),
        }
    }

    async fn healthcheck(&self) -> Result<(), SinkError> {
        let s = &self.shared;
        let state = s.state.borrow().clone();
        match state {
            LinkState::Up(link) if link.alive() => match lock(&link.blocked).as_deref() {
                Some(reason) => Err(SinkError::Retriable(format!(
                    "RabbitMQ at {} blocks publishing: {reason}",
                    s.target
                ))),
                None => Ok(()),
            },
            LinkState::Up(link) => Err(SinkError::Retriable(format!(
                "connection to RabbitMQ at {} lost, reconnecting: {}",
                s.target,
                link.death_reason()
            ))),
            LinkState::Down(reason) => Err(SinkError::Retriable(format!(
                "not connected to RabbitMQ at {}, reconnecting: {reason}",
                s.target
            ))),
            LinkState::Closed => Err(self.closed_error()),
        }
    }

    fn status(&self) -> SinkStatus {
        match &*self.shared.state.borrow() {
            LinkState::Up(link) if link.alive() => {
                if lock(&link.blocked).is_some() {
                    SinkStatus::NotConnected {
                        why: "the broker blocks publishing (resource alarm)",
                    }
                } else {
                    SinkStatus::Connected
                }
            }
            LinkState::Up(_) | LinkState::Down(_) => SinkStatus::NotConnected {
                why: "connection lost, reconnecting",
            },
            LinkState::Closed => SinkStatus::Closed,
        }
    }

    async fn close(&self, deadline: Instant) -> Result<(), SinkError> {
        let s = &self.shared;
        s.closing.store(true, Ordering::Release);
        let deadline = tokio::time::Instant::from_std(deadline);
        // Every permit back means nothing is waiting for a confirm any more.
        let drained = tokio::time::timeout_at(deadline, s.window.acquire_many(s.window_size))
            .await
            .map(|r| r.is_ok())
            .unwrap_or(false);
        let unconfirmed = if drained {
            0
        } else {
            (s.window_size as usize).saturating_sub(s.window.available_permits())
        };
        s.window.close();
        s.shutdown.cancel();
        let previous = s.state.send_replace(LinkState::Closed);
        if let LinkState::Up(link) = previous {
            if link.conn.status().connected() {
                let closing = link
                    .conn
                    .close(200, ShortString::from("fondo-bridge closing"));
                if tokio::time::timeout_at(deadline, closing).await.is_err() {
                    debug!(sink = %s.name, "RabbitMQ connection close timed out");
                }
            }
            link.kill("sink closed".to_owned());
        }
        let handle = lock(&self.supervisor).take();
        if let Some(handle) = handle {
            let _ = tokio::time::timeout_at(deadline, handle).await;
        }
        if unconfirmed > 0 {
            warn!(sink = %s.name, unconfirmed, "RabbitMQ sink closed with publishes still unconfirmed");
            return Err(SinkError::Retriable(format!(
                "{unconfirmed} publish(es) were still waiting for RabbitMQ's confirm at the close deadline"
            )));
        }
        info!(sink = %s.name, "RabbitMQ sink closed");
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Connecting

/// The URI to connect to: the configured URL with the user, password (file re-read every time)
/// and heartbeat applied.
fn resolve_uri(cfg: &RabbitMqSinkConfig, target: &str) -> Result<AMQPUri, SinkError> {
    let mut uri: AMQPUri = cfg
        .url
        .parse()
        .map_err(|e| SinkError::Fatal(format!("invalid AMQP URL {target}: {e}")))?;
    if let Some(user) = &cfg.user {
        uri.authority.userinfo.username = user.clone();
    }
    let secret = read_secret(cfg.password.as_ref(), cfg.password_file.as_deref()).map_err(|e| {
        SinkError::Fatal(format!(
            "cannot read password_file {}: {e}",
            cfg.password_file
                .as_deref()
                .map(|p| p.display().to_string())
                .unwrap_or_default()
        ))
    })?;
    if let Some(secret) = secret {
        uri.authority.userinfo.password = secret.expose().to_owned();
    }
    if uri.query.heartbeat.is_none() {
        uri.query.heartbeat = Some(cfg.heartbeat_s);
    }
    if uri.query.connection_timeout.is_none() {
        uri.query.connection_timeout = Some(cfg.connect_timeout_ms);
    }
    Ok(uri)
}

fn tls_config(cfg: &RabbitMqSinkConfig) -> Result<OwnedTLSConfig, SinkError> {
    let mut tls = OwnedTLSConfig::default();
    let Some(t) = &cfg.tls else {
        return Ok(tls);
    };
    let read = |p: &std::path::Path, what: &str| {
        std::fs::read(p)
            .map_err(|e| SinkError::Fatal(format!("cannot read tls.{what} {}: {e}", p.display())))
    };
    if let Some(ca) = &t.ca_file {
        let pem = read(ca, "ca_file")?;
        tls.cert_chain = Some(String::from_utf8(pem).map_err(|_| {
            SinkError::Fatal(format!("tls.ca_file {} is not PEM text", ca.display()))
        })?);
    }
    if let (Some(cert), Some(key)) = (&t.cert_file, &t.key_file) {
        tls.identity = Some(OwnedIdentity::PKCS8 {
            pem: read(cert, "cert_file")?,
            key: read(key, "key_file")?,
        });
    }
    Ok(tls)
}

/// Turns a connection error into a clear sink error.
fn connect_error(e: &lapin::Error, uri: &AMQPUri, target: &str) -> SinkError {
    let user = &uri.authority.userinfo.username;
    let vhost = &uri.vhost;
    match e.kind() {
        ErrorKind::ProtocolError(amqp) => {
            let text = amqp.get_message().as_str();
            match amqp.kind() {
                AMQPErrorKind::Soft(AMQPSoftError::ACCESSREFUSED) if text.contains("vhost") => {
                    SinkError::Fatal(format!(
                        "RabbitMQ at {target}: user {user:?} may not use vhost {vhost:?} (ACCESS_REFUSED: {text})"
                    ))
                }
                AMQPErrorKind::Soft(AMQPSoftError::ACCESSREFUSED) => SinkError::Fatal(format!(
                    "RabbitMQ at {target} refused the credentials of user {user:?} (ACCESS_REFUSED: {text})"
                )),
                AMQPErrorKind::Hard(AMQPHardError::NOTALLOWED) => SinkError::Fatal(format!(
                    "RabbitMQ at {target}: vhost {vhost:?} does not exist or user {user:?} may not use it (NOT_ALLOWED: {text})"
                )),
                AMQPErrorKind::Hard(AMQPHardError::CONNECTIONFORCED) => {
                    SinkError::Retriable(format!(
                        "RabbitMQ at {target} closed the connection (CONNECTION_FORCED: {text})"
                    ))
                }
                _ => SinkError::Fatal(format!(
                    "RabbitMQ at {target} rejected the connection ({} {text})",
                    amqp.get_id()
                )),
            }
        }
        ErrorKind::IOError(io) => {
            let tls = matches!(uri.scheme, lapin::uri::AMQPScheme::AMQPS);
            let hint = match io.kind() {
                std::io::ErrorKind::InvalidData | std::io::ErrorKind::Other if tls => {
                    "TLS handshake failed (does the port speak TLS? is the server certificate trusted, see tls.ca_file?)"
                }
                std::io::ErrorKind::ConnectionRefused => {
                    "nothing listens there (connection refused)"
                }
                std::io::ErrorKind::TimedOut => "timed out",
                std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::UnexpectedEof => {
                    "the server closed the connection during the handshake (wrong port or protocol, TLS mismatch, or refused credentials)"
                }
                _ => "I/O error",
            };
            SinkError::Retriable(format!(
                "cannot connect to RabbitMQ at {target}: {hint}: {io}"
            ))
        }
        ErrorKind::AuthProviderError(m) => SinkError::Fatal(format!(
            "RabbitMQ at {target}: authentication failed for user {user:?}: {m}"
        )),
        ErrorKind::InvalidProtocolVersion(_) | ErrorKind::ParsingError(_) => SinkError::Fatal(
            format!("the server at {target} does not speak AMQP 0-9-1: {e}"),
        ),
        _ => SinkError::Retriable(format!("cannot connect to RabbitMQ at {target}: {e}")),
    }
}

/// Turns an error while declaring or checking topology into a clear sink error.
fn topology_error(e: &lapin::Error, what: &str, target: &str) -> SinkError {
    match e.kind() {
        ErrorKind::ProtocolError(amqp) => {
            let text = amqp.get_message().as_str();
            match amqp.kind() {
                AMQPErrorKind::Soft(AMQPSoftError::NOTFOUND) => SinkError::Fatal(format!(
                    "RabbitMQ at {target}: {what} does not exist (NOT_FOUND: {text}); create it, or let the sink declare it with `declare`"
                )),
                AMQPErrorKind::Soft(AMQPSoftError::PRECONDITIONFAILED) => {
                    SinkError::Fatal(format!(
                        "RabbitMQ at {target}: {what} exists with different settings (PRECONDITION_FAILED: {text})"
                    ))
                }
                AMQPErrorKind::Soft(AMQPSoftError::ACCESSREFUSED) => SinkError::Fatal(format!(
                    "RabbitMQ at {target}: not permitted to use {what} (ACCESS_REFUSED: {text})"
                )),
                _ => SinkError::Fatal(format!(
                    "RabbitMQ at {target}: {what} failed ({} {text})",
                    amqp.get_id()
                )),
            }
        }
        _ => SinkError::Retriable(format!("RabbitMQ at {target}: {what} failed: {e}")),
    }
}

fn is_not_found(e: &lapin::Error) -> bool {
    matches!(e.kind(), ErrorKind::ProtocolError(amqp)
        if matches!(amqp.kind(), AMQPErrorKind::Soft(AMQPSoftError::NOTFOUND)))
}

fn exchange_kind(t: ExchangeType) -> ExchangeKind {
    match t {
        ExchangeType::Topic => ExchangeKind::Topic,
        ExchangeType::Direct => ExchangeKind::Direct,
        ExchangeType::Fanout => ExchangeKind::Fanout,
        ExchangeType::Headers => ExchangeKind::Headers,
    }
}

fn short(s: &str) -> Result<ShortString, SinkError> {
    ShortString::try_new(s)
        .map_err(|_| SinkError::Fatal(format!("name longer than {AMQP_SHORTSTR_MAX} bytes")))
}

fn queue_arguments(
    q: &crate::config::rabbitmq::QueueDeclaration,
    dlx: Option<&str>,
) -> Result<FieldTable, SinkError> {
    let mut args = FieldTable::default();
    if q.kind != QueueType::Classic {
        args.insert(
            ShortString::from("x-queue-type"),
            AMQPValue::LongString(LongString::from(q.kind.as_str())),
        );
    }
    if let (true, Some(dlx)) = (q.dead_letter, dlx) {
        args.insert(
            ShortString::from("x-dead-letter-exchange"),
            AMQPValue::LongString(LongString::from(dlx)),
        );
    }
    for (k, v) in &q.arguments {
        let value = match v {
            serde_json::Value::String(s) => AMQPValue::LongString(LongString::from(s.as_str())),
            serde_json::Value::Bool(b) => AMQPValue::Boolean(*b),
            serde_json::Value::Number(n) => match n.as_i64() {
                Some(i) => AMQPValue::LongLongInt(i),
                None => {
                    return Err(SinkError::Fatal(format!(
                        "queue {}: argument {k} is not a 64-bit integer",
                        q.name
                    )));
                }
            },
            _ => {
                return Err(SinkError::Fatal(format!(
                    "queue {}: argument {k} must be a string, an integer or a boolean",
                    q.name
                )));
            }
        };
        args.insert(short(k)?, value);
    }
    Ok(args)
}

/// Declares the configured topology, or checks passively that the exchange exists.
async fn declare_topology(
    channel: &Channel,
    cfg: &RabbitMqSinkConfig,
    target: &str,
) -> Result<(), SinkError> {
    let declarer = Declarer { channel, target };
    let exchange = short(&cfg.exchange)?;
    let topo = cfg.declare.as_ref();
    match topo.and_then(|t| t.exchange.as_ref()) {
        Some(decl) => declarer.exchange(&cfg.exchange, decl).await?,
        // The default exchange always exists and cannot be declared, not even passively.
        None if cfg.exchange.is_empty() => {}
        None => declarer.check_exchange(&cfg.exchange).await?,
    }
    let Some(topo) = topo else {
        return Ok(());
    };
    let dlx_name = topo.dead_letter_exchange.as_ref().map(|d| d.name.as_str());
    if let Some(dlx) = &topo.dead_letter_exchange {
        declarer.dead_letter(dlx).await?;
    }
    for q in &topo.queues {
        declarer.queue(q, &exchange, dlx_name).await?;
    }
    Ok(())
}

/// What every step of [`declare_topology`] shares: the channel it declares on and the target its
/// errors name.
struct Declarer<'a> {
    channel: &'a Channel,
    target: &'a str,
}

impl Declarer<'_> {
    /// Declares the sink's exchange as configured.
    async fn exchange(&self, name: &str, decl: &ExchangeDeclaration) -> Result<(), SinkError> {
        let options = ExchangeDeclareOptions {
            durable: decl.durable,
            ..ExchangeDeclareOptions::default()
        };
        self.channel
            .exchange_declare(
                short(name)?,
                exchange_kind(decl.kind),
                options,
                FieldTable::default(),
            )
            .await
            .map_err(|e| topology_error(&e, &format!("declaring exchange {name:?}"), self.target))
    }

    /// Checks passively that the sink's exchange, declared by someone else, exists.
    async fn check_exchange(&self, name: &str) -> Result<(), SinkError> {
        let options = ExchangeDeclareOptions {
            passive: true,
            ..ExchangeDeclareOptions::default()
        };
        self.channel
            .exchange_declare(
                short(name)?,
                ExchangeKind::Topic,
                options,
                FieldTable::default(),
            )
            .await
            .map_err(|e| {
                let err = topology_error(&e, &format!("the exchange {name:?}"), self.target);
                // Not declared by its owner yet: worth trying again (at start too).
                match err {
                    SinkError::Fatal(reason) if is_not_found(&e) => SinkError::Retriable(reason),
                    other => other,
                }
            })
    }

    /// Declares the dead-letter exchange and, when configured, its queue bound with `#`.
    async fn dead_letter(&self, dlx: &DeadLetterExchange) -> Result<(), SinkError> {
        let options = ExchangeDeclareOptions {
            durable: true,
            ..ExchangeDeclareOptions::default()
        };
        self.channel
            .exchange_declare(
                short(&dlx.name)?,
                exchange_kind(dlx.kind),
                options,
                FieldTable::default(),
            )
            .await
            .map_err(|e| {
                topology_error(
                    &e,
                    &format!("declaring dead-letter exchange {:?}", dlx.name),
                    self.target,
                )
            })?;
        let Some(q) = &dlx.queue else {
            return Ok(());
        };
        let options = QueueDeclareOptions {
            durable: true,
            ..QueueDeclareOptions::default()
        };
        self.channel
            .queue_declare(short(q)?, options, FieldTable::default())
            .await
            .map_err(|e| {
                topology_error(
                    &e,
                    &format!("declaring dead-letter queue {q:?}"),
                    self.target,
                )
            })?;
        self.channel
            .queue_bind(
                short(q)?,
                short(&dlx.name)?,
                ShortString::from("#"),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(|e| {
                topology_error(&e, &format!("binding dead-letter queue {q:?}"), self.target)
            })
    }

    /// Declares one queue and binds it to `exchange` with each of its binding keys.
    async fn queue(
        &self,
        q: &QueueDeclaration,
        exchange: &ShortString,
        dlx_name: Option<&str>,
    ) -> Result<(), SinkError> {
        let options = QueueDeclareOptions {
            durable: q.durable,
            ..QueueDeclareOptions::default()
        };
        self.channel
            .queue_declare(short(&q.name)?, options, queue_arguments(q, dlx_name)?)
            .await
            .map_err(|e| {
                topology_error(&e, &format!("declaring queue {:?}", q.name), self.target)
            })?;
        for b in &q.bindings {
            self.channel
                .queue_bind(
                    short(&q.name)?,
                    exchange.clone(),
                    short(b)?,
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await
                .map_err(|e| {
                    topology_error(
                        &e,
                        &format!("binding queue {:?} with {b:?}", q.name),
                        self.target,
                    )
                })?;
        }
        Ok(())
    }
}

/// One connection attempt: connect, channel, topology, confirm mode; then the pump and the
/// connection watcher start. Bounded by `connect_timeout_ms`.
async fn establish(shared: &Arc<Shared>) -> Result<Arc<Link>, SinkError> {
    let cfg = &shared.cfg;
    let target = shared.target.as_str();
    let attempt = async {
        let uri = resolve_uri(cfg, target)?;
        let tls = tls_config(cfg)?;
        let runtime = lapin::runtime::default_runtime()
            .map_err(|e| SinkError::Fatal(format!("no async runtime for lapin: {e}")))?;
        let props = ConnectionProperties::default().with_connection_name(LongString::from(
            format!("fondo-bridge sink {}", shared.name),
        ));
        let conn = Connection::connect_uri_with_config(uri.clone(), props, tls, runtime)
            .await
            .map_err(|e| connect_error(&e, &uri, target))?;
        let events: EventStream = Box::pin(conn.events_listener());
        let setup = async {
            let channel = conn
                .create_channel()
                .await
                .map_err(|e| connect_error(&e, &uri, target))?;
            declare_topology(&channel, cfg, target).await?;
            channel
                .confirm_select(ConfirmSelectOptions::default())
                .await
                .map_err(|e| topology_error(&e, "enabling publisher confirms", target))?;
            Ok::<_, SinkError>(channel)
        };
        match setup.await {
            Ok(channel) => Ok((conn, channel, events)),
            Err(e) => {
                let _ = tokio::time::timeout(
                    Duration::from_secs(1),
                    conn.close(200, ShortString::from("fondo-bridge: setup failed")),
                )
                .await;
                Err(e)
            }
        }
    };
    let (conn, channel, events) =
        match tokio::time::timeout(Duration::from_millis(cfg.connect_timeout_ms), attempt).await {
            Ok(r) => r?,
            Err(_) => {
                return Err(SinkError::Retriable(format!(
                    "connecting to RabbitMQ at {target} timed out after {} ms",
                    cfg.connect_timeout_ms
                )));
            }
        };

    let exchange = short(&cfg.exchange)?;
    let (jobs, rx) = mpsc::unbounded_channel();
    let link = Arc::new(Link {
        id: shared.next_link_id.fetch_add(1, Ordering::Relaxed),
        conn,
        channel,
        jobs,
        dead: CancellationToken::new(),
        reason: Mutex::new(None),
        blocked: Mutex::new(None),
    });
    tokio::spawn(pump(link.clone(), exchange, rx, shared.name.clone()));
    tokio::spawn(watch_link(link.clone(), events, shared.name.clone()));
    Ok(link)
}

/// lapin's connection events.
type EventStream = Pin<Box<dyn futures::Stream<Item = lapin::Event> + Send>>;

/// Kills the link when lapin reports an error or the connection or channel stops being open;
/// tracks the broker's blocked/unblocked notifications.
async fn watch_link(link: Arc<Link>, mut events: EventStream, sink: String) {
    let mut tick = tokio::time::interval(STATUS_CHECK_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = link.dead.cancelled() => return,
            ev = events.next() => match ev {
                Some(lapin::Event::Error(e)) => {
                    link.kill(format!("connection error: {e}"));
                    return;
                }
                Some(lapin::Event::ConnectionBlocked(reason)) => {
                    warn!(sink = %sink, %reason, "RabbitMQ blocks publishing (resource alarm)");
                    *lock(&link.blocked) = Some(reason);
                }
                Some(lapin::Event::ConnectionUnblocked) => {
                    info!(sink = %sink, "RabbitMQ unblocked publishing");
                    *lock(&link.blocked) = None;
                }
                Some(_) => {}
                None => {
                    link.kill("connection closed".to_owned());
                    return;
                }
            },
            _ = tick.tick() => {
                if !link.conn.status().connected() {
                    link.kill("the connection is no longer open".to_owned());
                    return;
                }
                if !link.channel.status().connected() {
                    link.kill("the channel is no longer open".to_owned());
                    return;
                }
            }
        }
    }
}

/// Publishes the link state, unless the sink is closed already (closed stays closed).
fn set_state(shared: &Shared, new: LinkState) {
    shared.state.send_if_modified(|s| {
        if matches!(s, LinkState::Closed) {
            false
        } else {
            *s = new;
            true
        }
    });
}

/// Reconnects whenever the current link dies, with exponential backoff and jitter, until the sink
/// is closed or dropped.
async fn supervise(shared: Arc<Shared>, mut link: Arc<Link>) {
    let initial = Duration::from_millis(shared.cfg.reconnect_initial_ms.max(1));
    let max = Duration::from_millis(shared.cfg.reconnect_max_ms.max(1));
    'outer: loop {
        tokio::select! {
            _ = shared.shutdown.cancelled() => break,
            _ = link.dead.cancelled() => {}
        }
        let reason = link.death_reason();
        let lost_at = Instant::now();
        warn!(sink = %shared.name, link = link.id, %reason, "RabbitMQ connection lost; reconnecting");
        set_state(&shared, LinkState::Down(reason));
        let old = link.clone();
        tokio::spawn(async move {
            if old.conn.status().connected() {
                let _ = tokio::time::timeout(
                    Duration::from_secs(2),
                    old.conn
                        .close(200, ShortString::from("fondo-bridge: reconnecting")),
                )
                .await;
            }
        });

        let mut backoff = crate::backoff::Backoff::new(initial, max);
        let mut attempts = 0u32;
        loop {
            let pause = backoff.next_delay();
            tokio::select! {
                _ = shared.shutdown.cancelled() => break 'outer,
                _ = tokio::time::sleep(pause) => {}
            }
            attempts += 1;
            let attempt = tokio::select! {
                _ = shared.shutdown.cancelled() => break 'outer,
                r = establish(&shared) => r,
            };
            match attempt {
                Ok(new) => {
                    info!(
                        sink = %shared.name,
                        link = new.id,
                        attempts,
                        down_ms = lost_at.elapsed().as_millis() as u64,
                        "RabbitMQ connection re-established"
                    );
                    if shared.shutdown.is_cancelled() {
                        new.kill("sink closed".to_owned());
                        break 'outer;
                    }
                    set_state(&shared, LinkState::Up(new.clone()));
                    link = new;
                    break;
                }
                Err(e) => {
                    warn!(
                        sink = %shared.name,
                        attempts,
                        error = %e.reason(),
                        "RabbitMQ reconnect failed"
                    );
                    set_state(&shared, LinkState::Down(e.reason().to_owned()));
                }
            }
        }
    }
    // Shut down: the current link stops; publishes still waiting fail as retriable.
    if let LinkState::Up(l) = shared.state.borrow().clone() {
        l.kill("sink closed".to_owned());
    }
    link.kill("sink closed".to_owned());
    shared.state.send_replace(LinkState::Closed);
    debug!(sink = %shared.name, "RabbitMQ supervisor stopped");
}

// ---------------------------------------------------------------------------------------------
// The pump

type SendFuture = Pin<Box<dyn Future<Output = (u64, lapin::Result<PublisherConfirm>)> + Send>>;
type ConfirmFuture = Pin<Box<dyn Future<Output = (u64, lapin::Result<Confirmation>)> + Send>>;

/// A publish handed to lapin, waiting for its confirm.
struct Waiter {
    ident: (String, String),
    reply: oneshot::Sender<Result<(), SinkError>>,
}

/// The identity of a returned message: `(message_id, routing_key)`.
fn returned_ident(m: &lapin::message::BasicReturnMessage) -> (String, String) {
    (
        m.delivery
            .properties
            .message_id()
            .as_ref()
            .map(|s| s.as_str().to_owned())
            .unwrap_or_default(),
        m.delivery.routing_key.as_str().to_owned(),
    )
}

struct Pump {
    link: Arc<Link>,
    exchange: ShortString,
    sink: String,
    seq: u64,
    sends: FuturesUnordered<SendFuture>,
    confirms: FuturesUnordered<ConfirmFuture>,
    waiting: HashMap<u64, Waiter>,
    /// Returned messages not yet matched to their publish, counted by identity.
    returned: HashMap<(String, String), usize>,
}

/// Owns the publishing side of one channel: hands messages to lapin in order and settles their
/// confirms (see the module documentation). Ends when the link dies, failing what is waiting.
async fn pump(
    link: Arc<Link>,
    exchange: ShortString,
    mut rx: mpsc::UnboundedReceiver<Job>,
    sink: String,
) {
    let mut p = Pump {
        link,
        exchange,
        sink,
        seq: 0,
        sends: FuturesUnordered::new(),
        confirms: FuturesUnordered::new(),
        waiting: HashMap::new(),
        returned: HashMap::new(),
    };
    let dead = p.link.dead.clone();
    loop {
        tokio::select! {
            biased;
            _ = dead.cancelled() => break,
            Some(first) = p.confirms.next(), if !p.confirms.is_empty() => p.settle(first),
            Some(sent) = p.sends.next(), if !p.sends.is_empty() => p.sent(sent),
            job = rx.recv() => match job {
                Some(job) => p.start(job).await,
                None => break,
            },
        }
    }
    // Confirms that arrived before the link died still count; the rest fail below.
    if let Some(Some(first)) = p.confirms.next().now_or_never() {
        p.settle(first);
    }
    let reason = p.link.death_reason();
    p.link.kill(reason.clone());
    rx.close();
    let err = SinkError::Retriable(format!(
        "connection to RabbitMQ lost before the broker confirmed the message: {reason}"
    ));
    for (_, w) in p.waiting.drain() {
        let _ = w.reply.send(Err(err.clone()));
    }
    while let Ok(job) = rx.try_recv() {
        let _ = job.reply.send(Err(err.clone()));
    }
    debug!(sink = %p.sink, link = p.link.id, "RabbitMQ pump stopped");
}

impl Pump {
    /// Hands one message to lapin. The first poll of `basic_publish` assigns the delivery tag and
    /// queues the frames in one go, so tags follow the order of this single task's calls; the
    /// rest (waiting for the socket write) continues in `sends`.
    async fn start(&mut self, job: Job) {
        let Job {
            routing_key,
            payload,
            properties,
            ident,
            reply,
        } = job;
        if reply.is_closed() {
            return; // the caller gave up (timeout) before it was sent
        }
        self.seq += 1;
        let seq = self.seq;
        let channel = self.link.channel.clone();
        let exchange = self.exchange.clone();
        let mut fut: SendFuture = Box::pin(async move {
            let options = BasicPublishOptions {
                mandatory: true,
                immediate: false,
            };
            let r = channel
                .basic_publish(exchange, routing_key, options, &payload, properties)
                .await;
            (seq, r)
        });
        self.waiting.insert(seq, Waiter { ident, reply });
        match futures::poll!(fut.as_mut()) {
            std::task::Poll::Ready(sent) => self.sent(sent),
            std::task::Poll::Pending => self.sends.push(fut),
        }
    }

    /// A message's frames were written: now wait for its confirm.
    fn sent(&mut self, (seq, r): (u64, lapin::Result<PublisherConfirm>)) {
        match r {
            Ok(confirm) => self
                .confirms
                .push(Box::pin(async move { (seq, confirm.await) })),
            Err(e) => {
                if let Some(w) = self.waiting.remove(&seq) {
                    let _ = w.reply.send(Err(SinkError::Retriable(format!(
                        "publishing to RabbitMQ failed: {e}"
                    ))));
                }
                self.link.kill(format!("publish failed: {e}"));
            }
        }
    }

    /// Settles every confirm lapin has completed so far, starting with `first`.
    fn settle(&mut self, first: (u64, lapin::Result<Confirmation>)) {
        // Barrier: lapin completes the confirms of one ack frame while holding the channel's
        // acknowledgement lock, and `wait_for_confirms` takes that lock on its first poll. Once
        // it returns, every completion lapin has started is finished, and so is every
        // returned-message hand-out that belongs to the confirms in hand.
        let _ = self.link.channel.wait_for_confirms().now_or_never();
        let mut ready = Vec::with_capacity(self.confirms.len() + 1);
        ready.push(first);
        loop {
            let mut progressed = false;
            while let Some(Some(sent)) = self.sends.next().now_or_never() {
                progressed = true;
                self.sent(sent);
            }
            while let Some(Some(done)) = self.confirms.next().now_or_never() {
                progressed = true;
                ready.push(done);
            }
            if !progressed {
                break;
            }
        }
        // First record every returned message, whichever confirm lapin attached it to ...
        for (_, r) in &ready {
            if let Ok(Confirmation::Ack(Some(m)) | Confirmation::Nack(Some(m))) = r {
                *self.returned.entry(returned_ident(m)).or_default() += 1;
            }
        }
        // ... then decide each publish by its own identity.
        for (seq, r) in ready {
            let Some(w) = self.waiting.remove(&seq) else {
                continue;
            };
            let was_returned = self.take_returned(&w.ident);
            let outcome = match r {
                Ok(Confirmation::Ack(_)) if was_returned => Err(SinkError::Fatal(format!(
                    "unroutable: no queue bound to exchange {:?} for routing key {:?} (the broker returned the message)",
                    self.exchange.as_str(),
                    w.ident.1
                ))),
                Ok(Confirmation::Ack(_)) => Ok(()),
                Ok(Confirmation::Nack(_)) => Err(SinkError::Retriable(
                    "RabbitMQ nacked the message (it could not store it)".to_owned(),
                )),
                Ok(Confirmation::NotRequested) => Err(SinkError::Retriable(
                    "the channel is not in confirm mode; no confirm for the message".to_owned(),
                )),
                Err(e) => {
                    self.link.kill(format!("confirm failed: {e}"));
                    Err(SinkError::Retriable(format!(
                        "connection to RabbitMQ lost before the broker confirmed the message: {e}"
                    )))
                }
            };
            if let Err(e) = &outcome {
                debug!(sink = %self.sink, error = %e, "RabbitMQ publish not delivered");
            }
            let _ = w.reply.send(outcome);
        }
    }

    fn take_returned(&mut self, ident: &(String, String)) -> bool {
        match self.returned.get_mut(ident) {
            Some(n) if *n > 1 => {
                *n -= 1;
                true
            }
            Some(_) => {
                self.returned.remove(ident);
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::rabbitmq::QueueDeclaration;

    #[test]
    fn queue_arguments_carry_type_dlx_and_extras() {
        let q: QueueDeclaration = serde_json::from_value(serde_json::json!({
            "name": "q", "type": "quorum", "arguments": { "x-delivery-limit": 5, "x-overflow": "reject-publish" }
        }))
        .unwrap_or_else(|e| panic!("{e}"));
        let args = queue_arguments(&q, Some("dlx")).unwrap_or_else(|e| panic!("{e}"));
        let m = args.inner();
        assert_eq!(
            m.get("x-queue-type"),
            Some(&AMQPValue::LongString("quorum".into()))
        );
        assert_eq!(
            m.get("x-dead-letter-exchange"),
            Some(&AMQPValue::LongString("dlx".into()))
        );
        assert_eq!(m.get("x-delivery-limit"), Some(&AMQPValue::LongLongInt(5)));
    }

    #[test]
    fn uri_gets_password_file_and_heartbeat() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let pw = dir.path().join("pw");
        std::fs::write(&pw, "s3cret\n").unwrap_or_else(|e| panic!("{e}"));
        let cfg: RabbitMqSinkConfig = serde_json::from_value(serde_json::json!({
            "url": "amqp://bridge:old@rabbit:5673/vh", "exchange": "x",
            "password_file": pw, "heartbeat_s": 7
        }))
        .unwrap_or_else(|e| panic!("{e}"));
        let uri = resolve_uri(&cfg, "t").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(uri.authority.userinfo.password, "s3cret");
        assert_eq!(uri.authority.userinfo.username, "bridge");
        assert_eq!(uri.authority.port, 5673);
        assert_eq!(uri.vhost, "vh");
        assert_eq!(uri.query.heartbeat, Some(7));
    }
}
