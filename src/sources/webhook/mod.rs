//! The webhook source: Fondo POSTs signed JSON events; we answer 2xx only once every destination
//! delivered or dead-lettered the event (at-least-once, guarantee 1 of the architecture).
//!
//! Per request, in order, cheapest refusal first:
//! 1. shutting down → `503` with `Retry-After` (and `Connection: close` on HTTP/1.1);
//! 2. content type not JSON → `415`;
//! 3. `Content-Length` over `max_body_bytes` → `413` before a byte of the body is read;
//! 4. signature headers missing, repeated, malformed, or timestamp outside the tolerance → `401`
//!    (also before the body is read; every request, while the secrets file holds no secret);
//! 5. the request's bytes are reserved from the shared budget (`limits.body_budget_bytes`): a
//!    fixed allowance for its head and state ([`REQUEST_ALLOWANCE_BYTES`]) and its whole
//!    `Content-Length` up front, or each chunk as it arrives when no length is given. When the
//!    budget cannot cover them the request is answered `503` with `Retry-After` at once (and, on
//!    HTTP/1.1, the connection closed, its body unread); the reservation is held until the
//!    request is answered. Forged requests that stall their bodies can so hold at most the
//!    budget, whatever the number of connections and streams;
//! 6. the body is read as a stream with a running size limit (`413`, memory stays bounded by
//!    `max_body_bytes` whatever the sender claims) and a deadline (`408` when it has not arrived
//!    within `request_timeout_ms` of the request's start: slow senders cannot hold a handler);
//! 7. the signature is verified over the body → `401` on mismatch (the fact is logged, never the
//!    body); only a [`signature::Payload<signature::Verified>`] goes further;
//! 8. the body is parsed into an [`Event`]; a body that cannot be parsed (not JSON, no event type,
//!    too deep…) is authentic, so it is dead-lettered raw and answered `200` (`503` when the dead
//!    letter could be written nowhere), so a poison message is not retried forever;
//! 9. a sink the event's routes need is not connected (still connecting since start, or its
//!    connection dropped) → `503` + `Retry-After`;
//! 10. the event is submitted without waiting (`503` + `Retry-After` when the bridge is full or
//!     closed) and the answer waits for its acknowledgement for up to `ack_timeout_ms`: `200`
//!     when delivered or dead-lettered, `503` when not (yet); the sender's retry of the same
//!     event is deduplicated by the dispatcher, and waits for the first copy's outcome if that is
//!     still in flight.
//!
//! Answers are short JSON (`{"error":"invalid signature"}`), never internals.
//!
//! HTTP/1.1 with keep-alive and HTTP/2 are served, in plain text (HTTP/2 with prior knowledge,
//! h2c) or, with a `tls` section, over TLS (rustls on the ring provider, HTTP/2 by ALPN). Slow
//! clients are cut off, and the number of connections, HTTP/2 streams and idle time are bounded:
//! see [`server`] for those limits, the header-read timeout and the shutdown drain.

pub mod server;
pub mod signature;

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, Version, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use bytes::{Bytes, BytesMut};
use futures::StreamExt as _;
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::config::{EventConfig, REQUEST_ALLOWANCE_BYTES, SignatureConfig, WebhookSourceConfig};
use crate::dispatch::{Dispatcher, Identity, SubmitError};
use crate::dlq::DeadLetter;
use crate::event::{
    AckHandle, AckReceiver, AckStatus, ContentKey, Envelope, Event, ParseContext, ParseError,
    ParseOptions, SourceKind, TraceContext,
};
use crate::metrics::SourceReasonLabels;
use crate::sources::Readiness;

use signature::{Payload, Reloaded, SecretError, SignatureError, Verified, Verifier, unix_now};

/// The readiness key that reports revoked secrets.
const SECRETS_READINESS_KEY: &str = "webhook:secrets";
/// The readiness key of this source.
pub const READINESS_KEY: &str = "webhook";

/// `Retry-After` when the bridge is at capacity: room frees up quickly.
const RETRY_AFTER_FULL_S: u64 = 1;
/// `Retry-After` when delivery is slow or failing, or the bridge is stopping.
const RETRY_AFTER_S: u64 = 5;
/// How often `secrets_file` is checked for a rotated secret.
const SECRETS_POLL: Duration = Duration::from_secs(10);
/// The longest `traceparent` / `tracestate` we carry along.
const MAX_TRACEPARENT_LEN: usize = 128;
const MAX_TRACESTATE_LEN: usize = 512;

/// Why the webhook source could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    /// The signature secrets could not be loaded.
    #[error(transparent)]
    Secrets(#[from] SecretError),
    /// The configuration cannot be served as it is.
    #[error("sources.webhook: {0}")]
    Config(String),
    /// The TLS certificate or key cannot be used.
    #[error(transparent)]
    Tls(#[from] server::TlsError),
    /// The listener failed.
    #[error("webhook server: {0}")]
    Io(#[from] std::io::Error),
}

/// The webhook source. Build it with [`WebhookSource::new`], serve it with [`WebhookSource::run`]
/// (or mount [`WebhookSource::router`] yourself).
pub struct WebhookSource {
    shared: Arc<Shared>,
    tls: Option<tokio_rustls::TlsAcceptor>,
}

impl std::fmt::Debug for WebhookSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookSource")
            .field("path", &self.shared.cfg.path)
            .field("verifier", &*self.shared.verifier.load())
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

struct Shared {
    cfg: WebhookSourceConfig,
    verifier: ArcSwap<Verifier>,
    dispatcher: Dispatcher,
    readiness: Arc<Readiness>,
    parse: ParseOptions,
    id_header: Option<HeaderName>,
    type_header: Option<HeaderName>,
    /// Cancelled when shutdown starts: new requests are answered 503.
    closing: CancellationToken,
    request_timeout: Duration,
    ack_timeout: Duration,
    header_read_timeout: Duration,
    /// Unix second of the last logged signature refusal.
    last_refusal_log: AtomicI64,
    /// Request body bytes that may be held at once.
    body_budget: BodyBudget,
    /// Unix second of the last logged refusal for want of body budget.
    last_budget_log: AtomicI64,
    /// How often `secrets_file` is checked for changes.
    secrets_poll: Duration,
    /// The secrets file as it was when the secrets in use were read.
    secrets_stamp: FileStamp,
}

impl WebhookSource {
    /// Loads the secrets and the TLS certificate, and checks what config validation cannot
    /// (header names, path). Every error names what is at fault (for TLS, the file).
    pub fn new(
        cfg: WebhookSourceConfig,
        event: EventConfig,
        dispatcher: Dispatcher,
        readiness: Arc<Readiness>,
    ) -> Result<Self, WebhookError> {
        if let SignatureConfig::None { insecure: false } = cfg.signature {
            return Err(WebhookError::Config(
                "signature scheme `none` needs `insecure: true`".into(),
            ));
        }
        check_path(&cfg.path)?;
        if cfg.max_body_bytes == 0 {
            return Err(WebhookError::Config(
                "max_body_bytes must be at least 1".into(),
            ));
        }
        if let Some((key, problem)) = cfg.limit_problems().into_iter().next() {
            return Err(WebhookError::Config(format!("{key}: {problem}")));
        }
        // Stamped before reading, so a change made while reading is picked up by the next poll.
        let secrets_stamp = secrets_file(&cfg.signature).and_then(file_stamp);
        let verifier = Verifier::from_config(&cfg.signature)?;
        if verifier.is_insecure() {
            tracing::warn!(
                "webhook signature scheme is `none` (insecure: true): anyone who can reach {} can inject events; never run this in production",
                cfg.listen
            );
        }
        if matches!(cfg.signature, SignatureConfig::Hmac { .. }) && event.id_header.is_some() {
            return Err(WebhookError::Config(
                "event.id_header cannot be used with the hmac scheme: its signature does not cover headers".into(),
            ));
        }
        let id_header = optional_header(event.id_header.as_deref(), "event.id_header")?;
        let type_header = optional_header(cfg.event_type_header.as_deref(), "event_type_header")?;
        let parse = ParseOptions {
            max_bytes: cfg.max_body_bytes,
            id_pointer: event.id_pointer.clone(),
            content_key: ContentKey::for_pairing(dispatcher.pairs_sources()),
        };
        let request_timeout = Duration::from_millis(cfg.request_timeout_ms.max(1));
        let ack_timeout = Duration::from_millis(cfg.ack_timeout_ms.max(1));
        let header_read_timeout = Duration::from_millis(cfg.header_read_timeout_ms.max(1));
        let tls = cfg.tls.as_ref().map(server::load_tls).transpose()?;
        let body_budget = BodyBudget::new(cfg.limits.body_budget_bytes);
        Ok(Self {
            tls,
            shared: Arc::new(Shared {
                cfg,
                verifier: ArcSwap::from_pointee(verifier),
                dispatcher,
                readiness,
                parse,
                id_header,
                type_header,
                closing: CancellationToken::new(),
                request_timeout,
                ack_timeout,
                header_read_timeout,
                last_refusal_log: AtomicI64::new(0),
                body_budget,
                last_budget_log: AtomicI64::new(0),
                secrets_poll: SECRETS_POLL,
                secrets_stamp,
            }),
        })
    }

    /// The HTTP routes: `POST <path>`; other methods get 405, other paths 404.
    pub fn router(&self) -> Router {
        Router::new()
            .route(
                &self.shared.cfg.path,
                post(receive).fallback(|| async {
                    reply(
                        StatusCode::METHOD_NOT_ALLOWED,
                        r#"{"error":"method not allowed"}"#,
                    )
                }),
            )
            .fallback(|| async { reply(StatusCode::NOT_FOUND, r#"{"error":"not found"}"#) })
            .with_state(Arc::clone(&self.shared))
    }

    /// Serves on `listener` until `shutdown` is cancelled, then stops accepting, answers 503 to
    /// requests that still arrive on open connections, and lets in-flight requests finish (for up
    /// to `request_timeout_ms + ack_timeout_ms` and a second). Readiness `webhook` is `Ok` while
    /// listening. Serves HTTPS when the config has a `tls` section.
    pub async fn run(
        self,
        listener: TcpListener,
        shutdown: CancellationToken,
    ) -> Result<(), WebhookError> {
        let shared = Arc::clone(&self.shared);
        let listener = server::with_backlog(listener, shared.cfg.limits.listen_backlog)?;
        let addr = listener.local_addr()?;
        let router = self.router();
        if let Some(file) = secrets_file(&shared.cfg.signature) {
            tokio::spawn(reload_secrets(
                Arc::clone(&shared),
                file.to_path_buf(),
                shared.closing.clone(),
            ));
        }
        shared.readiness.set(READINESS_KEY, Ok(()));
        tracing::info!(
            %addr,
            path = %shared.cfg.path,
            tls = self.tls.is_some(),
            scheme = shared.verifier.load().scheme_name(),
            secrets = shared.verifier.load().secret_count(),
            max_connections = shared.cfg.limits.max_connections,
            body_budget_bytes = shared.cfg.limits.body_budget_bytes,
            "webhook source listening"
        );
        let signal = {
            let shared = Arc::clone(&shared);
            async move {
                shutdown.cancelled().await;
                shared.closing.cancel();
                shared
                    .readiness
                    .set(READINESS_KEY, Err("shutting down".into()));
                tracing::info!("webhook source: shutdown started, no new requests");
            }
        };
        let opts = server::ServeOptions {
            tls: self.tls,
            header_read_timeout: shared.header_read_timeout,
            grace: shared.request_timeout + shared.ack_timeout + Duration::from_secs(1),
            limits: server::Limits {
                max_connections: shared.cfg.limits.max_connections,
                idle_timeout: Duration::from_millis(shared.cfg.limits.idle_timeout_ms.max(1)),
                http2_max_concurrent_streams: shared.cfg.limits.http2_max_concurrent_streams,
                http2_stream_window: shared.cfg.limits.http2_stream_window_bytes,
                http2_connection_window: shared.cfg.limits.http2_connection_window_bytes,
            },
        };
        server::serve(listener, router, opts, signal).await;
        shared.closing.cancel();
        shared.readiness.set(READINESS_KEY, Err("stopped".into()));
        tracing::info!("webhook source stopped");
        Ok(())
    }
}

fn check_path(path: &str) -> Result<(), WebhookError> {
    if !path.starts_with('/') {
        return Err(WebhookError::Config("path must start with `/`".into()));
    }
    let bad_segment = path
        .split('/')
        .any(|seg| seg.starts_with(':') || seg.starts_with('*'));
    if bad_segment || path.contains(['{', '}']) || path.chars().any(char::is_whitespace) {
        return Err(WebhookError::Config(format!(
            "path {path:?} must be a literal path (no `{{…}}`, `:x` or `*x` segments, no spaces)"
        )));
    }
    Ok(())
}

fn optional_header(name: Option<&str>, what: &str) -> Result<Option<HeaderName>, WebhookError> {
    name.map(|n| {
        HeaderName::from_bytes(n.trim().as_bytes())
            .map_err(|_| WebhookError::Config(format!("{what}: {n:?} is not a header name")))
    })
    .transpose()
}

fn secrets_file(sig: &SignatureConfig) -> Option<&std::path::Path> {
    match sig {
        SignatureConfig::StandardWebhooks { secrets_file, .. }
        | SignatureConfig::Hmac { secrets_file, .. } => secrets_file.as_deref(),
        SignatureConfig::None { .. } => None,
    }
}

/// What tells a changed file: modification time and length.
type FileStamp = Option<(Option<SystemTime>, u64)>;

fn file_stamp(f: &std::path::Path) -> FileStamp {
    std::fs::metadata(f)
        .ok()
        .map(|m| (m.modified().ok(), m.len()))
}

/// Picks up a rotated `secrets_file` (Kubernetes updates mounted secrets in place). A file that
/// holds no secret (emptied, or gone) revokes the file's secrets: every webhook gets 401, an
/// error is logged and readiness `webhook:secrets` says so until a secret is back. A file that
/// cannot be read otherwise, or holds a malformed secret, keeps the secrets in use, with an error.
async fn reload_secrets(shared: Arc<Shared>, file: std::path::PathBuf, stop: CancellationToken) {
    let mut last = shared.secrets_stamp;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(shared.secrets_poll) => {}
        }
        let now = file_stamp(&file);
        if now == last {
            continue;
        }
        last = now;
        match Verifier::reload(&shared.cfg.signature) {
            Ok(Reloaded::Secrets(v)) => {
                tracing::info!(
                    secrets = v.secret_count(),
                    "webhook secrets file changed; secrets reloaded"
                );
                shared.verifier.store(Arc::new(v));
                shared.readiness.remove(SECRETS_READINESS_KEY);
            }
            Ok(Reloaded::Revoked(v)) => {
                tracing::error!(
                    file = %file.display(),
                    "webhook secrets file holds no secret: every secret is revoked and every webhook is refused (401) until it holds one again"
                );
                shared.verifier.store(Arc::new(v));
                shared.readiness.set(
                    SECRETS_READINESS_KEY,
                    Err(
                        "no secret active (the secrets file holds none): every webhook is refused"
                            .into(),
                    ),
                );
            }
            Err(e) => {
                tracing::error!(error = %e, "webhook secrets file changed but cannot be used; keeping the secrets in use");
            }
        }
    }
}

/// A short JSON answer.
fn reply(status: StatusCode, body: &'static str) -> Response {
    (
        status,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body,
    )
        .into_response()
}

/// A 503 telling the sender when to come back.
fn unavailable(body: &'static str, retry_after_s: u64, close: bool) -> Response {
    let mut r = reply(StatusCode::SERVICE_UNAVAILABLE, body);
    r.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(retry_after_s));
    if close {
        r.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    r
}

impl Shared {
    fn count_rejected(&self, reason: &str) {
        self.dispatcher
            .metrics()
            .rejected
            .get_or_create(&SourceReasonLabels {
                source: SourceKind::Webhook.as_str().into(),
                reason: reason.into(),
            })
            .inc();
    }

    fn unauthorized(&self, e: SignatureError) -> Response {
        self.count_rejected(e.kind());
        // At most one warning per second, so a flood of forged requests cannot flood the logs;
        // the metric counts every one.
        let now = unix_now();
        let last = self.last_refusal_log.swap(now, Ordering::Relaxed);
        if last != now {
            tracing::warn!(reason = %e, "webhook refused: invalid signature");
        } else {
            tracing::debug!(reason = %e, "webhook refused: invalid signature");
        }
        reply(StatusCode::UNAUTHORIZED, r#"{"error":"invalid signature"}"#)
    }

    /// 503 for a request whose body the budget cannot cover. HTTP/1.1 closes the connection: its
    /// body was not read, and the slot is better given to another client.
    fn over_budget(&self, http1: bool) -> Response {
        self.count_rejected("body_budget");
        let now = unix_now();
        let last = self.last_budget_log.swap(now, Ordering::Relaxed);
        if last != now {
            tracing::warn!(
                body_budget_bytes = self.cfg.limits.body_budget_bytes,
                "webhook refused with 503: the body budget is taken by requests in progress"
            );
        }
        unavailable(r#"{"error":"overloaded"}"#, RETRY_AFTER_FULL_S, http1)
    }
}

/// The request bytes the source may hold at once, as semaphore permits (one per byte): each
/// request in progress holds [`REQUEST_ALLOWANCE_BYTES`] for its head and state plus its body.
struct BodyBudget(Arc<Semaphore>);

/// A request's share of the [`BodyBudget`]; given back when dropped.
struct Reservation {
    permit: OwnedSemaphorePermit,
    /// Body bytes covered.
    body: usize,
}

impl BodyBudget {
    fn new(bytes: usize) -> Self {
        Self(Arc::new(Semaphore::new(bytes.min(Semaphore::MAX_PERMITS))))
    }

    fn take(&self, bytes: usize) -> Option<OwnedSemaphorePermit> {
        let n = u32::try_from(bytes).ok()?;
        Arc::clone(&self.0).try_acquire_many_owned(n).ok()
    }

    /// Admits a request with `body` bytes of body, without waiting; `None` when the budget cannot
    /// cover it now.
    fn admit(&self, body: usize) -> Option<Reservation> {
        let permit = self.take(REQUEST_ALLOWANCE_BYTES.checked_add(body)?)?;
        Some(Reservation { permit, body })
    }

    /// Covers `more` body bytes of `r` too, without waiting; `false` when the budget cannot.
    fn grow(&self, r: &mut Reservation, more: usize) -> bool {
        if more == 0 {
            return true;
        }
        let Some(permit) = self.take(more) else {
            return false;
        };
        r.permit.merge(permit);
        r.body += more;
        true
    }
}

async fn receive(State(s): State<Arc<Shared>>, req: Request) -> Response {
    let started = Instant::now();
    let received_wall = SystemTime::now();
    let (parts, body) = req.into_parts();
    let http1 = parts.version <= Version::HTTP_11;
    let head = match s.admit_head(&parts.headers, http1) {
        Ok(head) => head,
        Err(refused) => return refused,
    };
    // Held until the answer is returned (dropped with this function's locals).
    let Some(mut reservation) = s.body_budget.admit(head.capacity) else {
        return s.over_budget(http1);
    };
    let body = match s
        .read_body_in_time(body, head.capacity, &mut reservation, started, http1)
        .await
    {
        Ok(body) => body,
        Err(refused) => return refused,
    };
    let verified = match head
        .verifier
        .verify(&parts.headers, Payload::new(body), unix_now())
    {
        Ok(v) => v,
        Err(e) => return s.unauthorized(e),
    };
    let type_hint = s
        .type_header
        .as_ref()
        .and_then(|h| single_value(&parts.headers, h).ok().flatten());
    let trace = trace_context(&parts.headers);
    // The delivery id: the signed `webhook-id` (Standard Webhooks), else the configured header
    // (only allowed where no signature could cover it: scheme `none`).
    let delivery = verified.webhook_id().map(str::to_owned);
    let hints = Hints {
        id: delivery.as_deref().or(head.id_hint),
        event_type: type_hint,
        trace,
        started,
        received_wall,
    };
    deliver(&s, verified, hints).await
}

/// A request whose head was accepted, and what reading and verifying its body take.
struct Head<'h> {
    /// The verifier as it was when the head was checked; the body is verified with the same one.
    verifier: Arc<Verifier>,
    /// The configured id header's value.
    id_hint: Option<&'h str>,
    /// The body bytes to reserve and allocate at once: its `Content-Length`, at most
    /// `max_body_bytes`.
    capacity: usize,
}

impl Shared {
    /// Checks a request's head before any of its body is read: not shutting down, JSON, a
    /// declared length within `max_body_bytes`, the signature headers present and in time. The
    /// refusal to answer otherwise.
    // The error is the answer itself, built once on a refusal: boxing it would gain nothing.
    #[allow(clippy::result_large_err)]
    fn admit_head<'h>(&self, headers: &'h HeaderMap, http1: bool) -> Result<Head<'h>, Response> {
        if self.closing.is_cancelled() {
            self.count_rejected("shutting_down");
            return Err(unavailable(
                r#"{"error":"shutting down"}"#,
                RETRY_AFTER_S,
                http1,
            ));
        }
        if !is_json(headers.get(header::CONTENT_TYPE)) {
            self.count_rejected("content_type");
            return Err(reply(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                r#"{"error":"content type must be application/json"}"#,
            ));
        }
        let max = self.cfg.max_body_bytes;
        let declared = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        if declared.is_some_and(|len| len > max as u64) {
            self.count_rejected("too_large");
            return Err(too_large());
        }
        let verifier = self.verifier.load_full();
        if let Err(e) = verifier.check_headers(headers, unix_now()) {
            return Err(self.unauthorized(e));
        }
        let id_hint = match &self.id_header {
            Some(h) => single_value(headers, h)
                .map_err(|()| self.unauthorized(SignatureError::DuplicateHeader("id")))?,
            None => None,
        };
        Ok(Head {
            verifier,
            id_hint,
            capacity: declared.map_or(0, |d| usize::try_from(d).unwrap_or(max).min(max)),
        })
    }

    /// Reads the body within what is left of `request_timeout_ms`, with the limits of
    /// [`read_body`]. The refusal to answer when it is too large, over the budget, aborted or
    /// late (HTTP/1.1 then closes the connection).
    async fn read_body_in_time(
        &self,
        body: Body,
        capacity: usize,
        reservation: &mut Reservation,
        started: Instant,
        http1: bool,
    ) -> Result<Bytes, Response> {
        let left = self.request_timeout.saturating_sub(started.elapsed());
        let limits = BodyLimits {
            max: self.cfg.max_body_bytes,
            capacity,
            budget: &self.body_budget,
        };
        let read = read_body(body, limits, reservation);
        match tokio::time::timeout(left, read).await {
            Ok(Ok(b)) => Ok(b),
            Ok(Err(BodyError::OverBudget)) => Err(self.over_budget(http1)),
            Ok(Err(BodyError::TooLarge)) => {
                self.count_rejected("too_large");
                Err(too_large())
            }
            Ok(Err(BodyError::Aborted)) => {
                self.count_rejected("body_aborted");
                Err(reply(
                    StatusCode::BAD_REQUEST,
                    r#"{"error":"body could not be read"}"#,
                ))
            }
            Err(_) => {
                self.count_rejected("timeout");
                tracing::debug!("webhook body did not arrive in time");
                let mut r = reply(
                    StatusCode::REQUEST_TIMEOUT,
                    r#"{"error":"request body did not arrive in time"}"#,
                );
                if http1 {
                    r.headers_mut()
                        .insert(header::CONNECTION, HeaderValue::from_static("close"));
                }
                Err(r)
            }
        }
    }
}

/// What the transport tells about an event.
struct Hints<'h> {
    id: Option<&'h str>,
    event_type: Option<&'h str>,
    trace: TraceContext,
    started: Instant,
    received_wall: SystemTime,
}

async fn deliver(s: &Shared, payload: Payload<Verified>, hints: Hints<'_>) -> Response {
    let raw = payload.into_body();
    let ctx = ParseContext {
        client_id: None,
        type_hint: hints.event_type,
        id_hint: hints.id,
    };
    let mut event = match Event::parse(raw.clone(), &s.parse, &ctx) {
        Ok(e) => e,
        Err(e) => return dead_letter_raw(s, &raw, &hints, &e).await,
    };
    if let Some(sink) = unconnected_sink(&s.dispatcher, &event) {
        s.count_rejected("sink_not_connected");
        tracing::debug!(sink = %sink, "webhook refused: a sink its routes need is not connected");
        return unavailable(
            r#"{"error":"destination not connected"}"#,
            RETRY_AFTER_S,
            false,
        );
    }
    // A retry of this delivery, or the stream's copy of this change, gives the occurrence's id.
    if s.dispatcher
        .identify(&mut event, SourceKind::Webhook, hints.id)
        .await
        == Identity::Covered
    {
        // Another replica delivered this occurrence.
        s.dispatcher.covered(SourceKind::Webhook);
        return reply(StatusCode::OK, r#"{"status":"delivered"}"#);
    }
    let (ack, rx) = AckHandle::new();
    let mut env = Envelope::new(event, ack, SourceKind::Webhook);
    env.received_at = hints.started;
    env.received_wall = hints.received_wall;
    env.trace = hints.trace;
    match s.dispatcher.try_submit(env) {
        Ok(()) => {}
        Err(SubmitError::Full(_)) => {
            s.count_rejected("overloaded");
            return unavailable(r#"{"error":"overloaded"}"#, RETRY_AFTER_FULL_S, false);
        }
        Err(SubmitError::Closed(_)) => {
            s.count_rejected("shutting_down");
            return unavailable(r#"{"error":"shutting down"}"#, RETRY_AFTER_S, false);
        }
    }
    answer_when_acknowledged(s, rx, hints.started).await
}

/// An authentic body that is not an event: dead-lettered raw, and answered 200 once that is
/// written, 503 (send it again) when it could not be within `ack_timeout_ms`.
async fn dead_letter_raw(s: &Shared, raw: &Bytes, hints: &Hints<'_>, e: &ParseError) -> Response {
    let id = hints
        .id
        .filter(|i| !i.is_empty())
        .map_or_else(raw_id, str::to_owned);
    tracing::warn!(event_id = %id, reason = e.kind(), "authentic webhook body cannot be parsed; dead-lettering it raw");
    let dl = DeadLetter::unparseable(
        raw,
        id,
        None,
        SourceKind::Webhook,
        hints.received_wall,
        &hints.trace,
        e.to_string(),
    );
    let written =
        tokio::time::timeout(s.ack_timeout, s.dispatcher.dead_letter_unparseable(dl)).await;
    match written {
        Ok(AckStatus::Delivered) => reply(StatusCode::OK, r#"{"status":"dead_lettered"}"#),
        _ => unavailable(
            r#"{"error":"temporarily unavailable"}"#,
            RETRY_AFTER_S,
            false,
        ),
    }
}

/// The answer for a submitted event: its acknowledgement, if it comes within what is left of
/// `ack_timeout_ms`.
async fn answer_when_acknowledged(s: &Shared, rx: AckReceiver, started: Instant) -> Response {
    let left = s.ack_timeout.saturating_sub(started.elapsed());
    match tokio::time::timeout(left, rx.wait()).await {
        Ok(AckStatus::Delivered) => reply(StatusCode::OK, r#"{"status":"delivered"}"#),
        Ok(AckStatus::Rejected) => reply(
            StatusCode::UNPROCESSABLE_ENTITY,
            r#"{"error":"event refused"}"#,
        ),
        Ok(AckStatus::Retry) => {
            unavailable(r#"{"error":"not delivered yet"}"#, RETRY_AFTER_S, false)
        }
        Err(_) => {
            s.count_rejected("ack_timeout");
            unavailable(r#"{"error":"not delivered yet"}"#, RETRY_AFTER_S, false)
        }
    }
}

/// A sink this event's routes need that is not connected (one that is still connecting since
/// start, or lost its connection): answering 503 at once lets the sender retry later, rather than
/// wait `ack_timeout_ms` for a delivery that cannot happen yet. Routes the event only when some
/// sink is down.
fn unconnected_sink(dispatcher: &Dispatcher, event: &Event) -> Option<Arc<str>> {
    let down: Vec<&str> = dispatcher
        .sinks()
        .filter(|s| !s.status().is_connected())
        .map(|s| s.name())
        .collect();
    if down.is_empty() {
        return None;
    }
    dispatcher
        .router()
        .route(event)
        .destinations
        .into_iter()
        .map(|d| d.sink)
        .find(|sink| down.contains(&sink.as_ref()))
}

fn too_large() -> Response {
    reply(
        StatusCode::PAYLOAD_TOO_LARGE,
        r#"{"error":"body too large"}"#,
    )
}

/// An id for a body that never became an event and came without a delivery id: minted, never a
/// hash of the bytes, so two such bodies that happen to be equal are two dead letters.
fn raw_id() -> String {
    format!("raw-{}", crate::event::mint_occurrence_id())
}

/// `application/json`, or any `…/…+json`, with or without parameters.
fn is_json(ct: Option<&HeaderValue>) -> bool {
    let Some(ct) = ct.and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let essence = ct.split(';').next().unwrap_or_default().trim();
    essence.eq_ignore_ascii_case("application/json")
        || (essence.contains('/')
            && essence.len() > 5
            && essence
                .get(essence.len() - 5..)
                .is_some_and(|s| s.eq_ignore_ascii_case("+json")))
}

/// The header's value when it appears once; `None` when absent; `Err` when repeated.
fn single_value<'h>(headers: &'h HeaderMap, name: &HeaderName) -> Result<Option<&'h str>, ()> {
    let mut it = headers.get_all(name).iter();
    let Some(first) = it.next() else {
        return Ok(None);
    };
    if it.next().is_some() {
        return Err(());
    }
    Ok(first.to_str().ok().map(str::trim).filter(|v| !v.is_empty()))
}

/// W3C trace context from the request; malformed or oversized values are dropped.
fn trace_context(headers: &HeaderMap) -> TraceContext {
    let traceparent = single_value(headers, &HeaderName::from_static("traceparent"))
        .ok()
        .flatten()
        .filter(|v| v.len() <= MAX_TRACEPARENT_LEN && is_traceparent(v))
        .map(str::to_owned);
    let states: Vec<&str> = headers
        .get_all("tracestate")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .collect();
    let tracestate = Some(states.join(","))
        .filter(|s| !s.is_empty() && s.len() <= MAX_TRACESTATE_LEN && traceparent.is_some());
    TraceContext {
        traceparent,
        tracestate,
    }
}

/// `version-traceid-parentid-flags`, lowercase hex fields of 2, 32, 16 and 2 characters.
fn is_traceparent(v: &str) -> bool {
    let parts: Vec<&str> = v.split('-').collect();
    parts.len() >= 4
        && [2usize, 32, 16, 2]
            .iter()
            .zip(&parts)
            .all(|(len, p)| p.len() == *len && p.bytes().all(|b| b.is_ascii_hexdigit()))
        && parts[0] != "ff"
        && parts[1].bytes().any(|b| b != b'0')
        && parts[2].bytes().any(|b| b != b'0')
}

enum BodyError {
    TooLarge,
    Aborted,
    OverBudget,
}

/// What a body may take.
struct BodyLimits<'b> {
    /// The largest body allowed (`max_body_bytes`).
    max: usize,
    /// The bytes to allocate for it at once (its `Content-Length`, already reserved).
    capacity: usize,
    /// Where bytes beyond those already reserved are taken from.
    budget: &'b BodyBudget,
}

/// Reads a body as it arrives, refusing it as soon as it passes `limits.max`: memory never exceeds
/// that (plus one frame) whatever the sender sends. Bytes beyond those in `reservation` are
/// reserved from the budget before they are kept.
async fn read_body(
    body: Body,
    limits: BodyLimits<'_>,
    reservation: &mut Reservation,
) -> Result<Bytes, BodyError> {
    let mut stream = body.into_data_stream();
    let mut first: Option<Bytes> = None;
    let mut buf: Option<BytesMut> = None;
    let mut len = 0usize;
    let capacity = limits.capacity;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|_| BodyError::Aborted)?;
        len = len.saturating_add(chunk.len());
        if len > limits.max {
            return Err(BodyError::TooLarge);
        }
        let short = len.saturating_sub(reservation.body);
        if !limits.budget.grow(reservation, short) {
            return Err(BodyError::OverBudget);
        }
        match (&mut first, &mut buf) {
            (None, None) => first = Some(chunk),
            (Some(f), None) => {
                let mut b = BytesMut::with_capacity(capacity.max(len));
                b.extend_from_slice(f);
                b.extend_from_slice(&chunk);
                buf = Some(b);
                first = None;
            }
            (_, Some(b)) => b.extend_from_slice(&chunk),
        }
    }
    Ok(match (first, buf) {
        (_, Some(b)) => b.freeze(),
        (Some(f), None) => f,
        (None, None) => Bytes::new(),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn json_content_types() {
        let ok = [
            "application/json",
            "application/json; charset=utf-8",
            "Application/JSON",
            "application/cloudevents+json",
        ];
        for ct in ok {
            assert!(is_json(Some(&HeaderValue::from_static(ct))), "{ct}");
        }
        let bad = ["text/plain", "application/xml", "json", "+json", ""];
        for ct in bad {
            assert!(!is_json(Some(&HeaderValue::from_static(ct))), "{ct}");
        }
        assert!(!is_json(None));
    }

    #[test]
    fn paths() {
        assert!(check_path("/fondo/webhooks/callback").is_ok());
        for p in ["fondo", "/a/{id}", "/a/:id", "/a/*rest", "/a b"] {
            assert!(check_path(p).is_err(), "{p}");
        }
    }

    #[test]
    fn trace_headers() {
        let mut h = HeaderMap::new();
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        h.insert("traceparent", HeaderValue::from_static(tp));
        h.append(
            "tracestate",
            HeaderValue::from_static("rojo=00f067aa0ba902b7"),
        );
        h.append("tracestate", HeaderValue::from_static("congo=t61rcWkgMzE"));
        let t = trace_context(&h);
        assert_eq!(t.traceparent.as_deref(), Some(tp));
        assert_eq!(
            t.tracestate.as_deref(),
            Some("rojo=00f067aa0ba902b7,congo=t61rcWkgMzE")
        );
        h.insert("traceparent", HeaderValue::from_static("garbage"));
        assert_eq!(trace_context(&h), TraceContext::default());
        h.insert(
            "traceparent",
            HeaderValue::from_static("00-00000000000000000000000000000000-00f067aa0ba902b7-01"),
        );
        assert_eq!(trace_context(&h).traceparent, None);
    }

    #[test]
    fn raw_ids_are_unique() {
        assert_ne!(raw_id(), raw_id());
    }

    #[tokio::test]
    async fn rotated_secrets_file_is_picked_up() {
        use crate::config::{Config, Unmatched};
        use crate::dispatch::{DispatcherParts, RetryPolicy};
        use crate::dlq::DeadLetterWriter;
        use crate::metrics::Metrics;
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("secrets");
        let a = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let b = "whsec_c2Vjb25kLXNlY3JldC1mb3Itcm90YXRpb24=";
        std::fs::write(&file, format!("{a}\n")).unwrap();
        let cfg: WebhookSourceConfig = serde_json::from_value(serde_json::json!({
            "signature": {"scheme": "standard-webhooks", "secrets_file": file}
        }))
        .unwrap();
        let metrics = Arc::new(Metrics::new());
        let dispatcher = Dispatcher::start(DispatcherParts {
            router: crate::router::Router::compile_routes(&[], Unmatched::Drop, |_| false).unwrap(),
            sinks: std::collections::HashMap::new(),
            dead_letters: Arc::new(DeadLetterWriter::new(
                None,
                "dl".into(),
                1,
                dir.path().join("dl.jsonl"),
                metrics.clone(),
            )),
            policy: RetryPolicy::from_config(&Config::default()),
            max_in_flight: 10,
            identity: crate::dispatch::IdentityConfig::default(),
            metrics,
        });
        let mut source = WebhookSource::new(
            cfg,
            EventConfig::default(),
            dispatcher,
            Arc::new(Readiness::default()),
        )
        .unwrap();
        Arc::get_mut(&mut source.shared).unwrap().secrets_poll = Duration::from_millis(20);
        let shared = Arc::clone(&source.shared);
        let stop = CancellationToken::new();
        let task = tokio::spawn(reload_secrets(
            Arc::clone(&shared),
            file.clone(),
            stop.clone(),
        ));
        assert_eq!(shared.verifier.load().secret_count(), 1);
        std::fs::write(&file, format!("{b}\n{a}\n")).unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while shared.verifier.load().secret_count() != 2 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(shared.verifier.load().secret_count(), 2);
        // A broken file keeps the secrets in use.
        std::fs::write(&file, "whsec_!!! not base64\n").unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(shared.verifier.load().secret_count(), 2);
        stop.cancel();
        task.await.unwrap();
    }

    fn chunks(n: usize, size: usize) -> Body {
        let chunks: Vec<Result<Bytes, std::io::Error>> =
            (0..n).map(|_| Ok(Bytes::from(vec![b'a'; size]))).collect();
        Body::from_stream(futures::stream::iter(chunks))
    }

    fn limits(max: usize, budget: &BodyBudget) -> BodyLimits<'_> {
        BodyLimits {
            max,
            capacity: 0,
            budget,
        }
    }

    #[tokio::test]
    async fn body_limit_streams() {
        let budget = BodyBudget::new(1 << 20);
        let mut r = budget.admit(0).unwrap();
        assert!(matches!(
            read_body(chunks(10, 100), limits(999, &budget), &mut r).await,
            Err(BodyError::TooLarge)
        ));
        let mut r = budget.admit(0).unwrap();
        let b = read_body(chunks(10, 100), limits(1000, &budget), &mut r)
            .await
            .ok()
            .unwrap();
        assert_eq!(b.len(), 1000);
        assert_eq!(
            r.body, 1000,
            "a body without a length is reserved as it arrives"
        );
        assert_eq!(r.permit.num_permits(), REQUEST_ALLOWANCE_BYTES + 1000);
    }

    #[tokio::test]
    async fn body_budget_refuses_and_gives_back() {
        let a = REQUEST_ALLOWANCE_BYTES;
        let budget = BodyBudget::new(2 * a + 1500);
        let held = budget.admit(1000).unwrap();
        // A declared length the budget cannot cover now.
        assert!(budget.admit(600).is_none());
        // A body without a length: refused at the chunk that would pass the budget.
        let mut other = budget.admit(0).unwrap();
        assert!(matches!(
            read_body(chunks(6, 100), limits(1000, &budget), &mut other).await,
            Err(BodyError::OverBudget)
        ));
        assert_eq!(other.body, 500);
        // Every request counts its allowance: none is left for a third, even with no body.
        assert!(budget.admit(0).is_none());
        drop(other);
        drop(held);
        // Everything was given back.
        let mut all = budget.admit(1500 + a).unwrap();
        assert!(budget.grow(&mut all, 0));
        assert!(!budget.grow(&mut all, 1));
        assert!(budget.admit(0).is_none());
        drop(all);
        assert!(budget.admit(1500 + a).is_some());
    }
}
