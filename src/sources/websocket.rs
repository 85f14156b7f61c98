//! The WebSocket source: one connection per configured client id to
//! `{url}/v2/partner/client/{client_id}/subscribe`, with every event spooled durably before it
//! counts as received.
//!
//! - **Connecting**: `http(s)://` base URLs become `ws(s)://`; `wss` uses rustls with the system's
//!   root certificates. The Bearer token comes from `token_file` (re-read on every reconnect, so a
//!   rotated secret is picked up) or `token`.
//! - **Reconnecting**: [`crate::backoff`] from `reconnect_initial_ms` up to `reconnect_max_ms`,
//!   reset once a connection stayed up `stable_after_ms`. A refused token (HTTP
//!   401/403) is logged as such and retried only every `auth_retry_ms` (30 s by default), never in a
//!   tight loop.
//! - **Watchdog**: when neither an event nor a heartbeat arrived within `heartbeat_timeout_ms` the
//!   connection is presumed dead and replaced. WebSocket pings go out every `ping_interval_ms`.
//! - **Gaps**: Fondo does not replay what it sent while we were disconnected. Every gap (from, to,
//!   seconds) is logged and counted (`websocket_gaps`, `websocket_gap_seconds`), `websocket_connected`
//!   tracks the state, readiness `websocket:<client_id>` says since when it is disconnected, and with
//!   `gap_marker` a `bridge.gap` event is published after each reconnect.
//! - **Frames**: text frames are parsed once; heartbeats only feed the watchdog (never spooled or
//!   published). Frames that are not events (not JSON, no type, binary frames, larger than
//!   `max_frame_bytes`) are dead-lettered raw with the reason, and the connection keeps going.
//!   Frames beyond twice `max_frame_bytes` are refused by the WebSocket layer before they are read
//!   into memory; that ends the connection (logged and counted as `rejected{reason=frame_too_large}`)
//!   and the source reconnects.
//! - **Durability**: each event is appended to the [`Spool`] (group-committed fsync) before it is
//!   submitted (with `spool.publish_while_committing` and the WebSocket source alone, it is
//!   submitted while the append commits in the background, and counts as received at once; see
//!   [`Ctx::submitter`] for what a crash can lose then); its record is released when the dispatcher acknowledges it `Delivered` or
//!   `Rejected`, and resubmitted after a backoff on `Retry`. On start, before connecting, every
//!   unreleased record is replayed (a record that no longer parses is dead-lettered, and released
//!   only once its dead letter is written). When the spool is full the source stops reading the
//!   socket until space frees (TCP backpressure reaches Fondo); nothing is dropped.
//! - **Full disk**: when the spool cannot write, it keeps the appends it could not write and
//!   writes them again, in order, once it can; the reader makes its next event durable before it
//!   reads on (readiness `spool` says why meanwhile). So per stream at most [`PIPELINE`] + 1
//!   events are read and not yet durable at any moment, and none of them has been handed to the
//!   dispatcher unless `spool.publish_while_committing` is on (an event is submitted, and counted as received, only once it is durable; only a
//!   shutdown that finds the spool still failing after its grace hands the rest on unprotected).
//! - **Retries**: an event acknowledged `Retry` waits for its resubmission outside the
//!   dispatcher's `max_in_flight`; new events wait (and the reader pauses once its pipeline is
//!   full) while [`MAX_RETRY_WAITING`] events do, so a long outage holds a bounded number of
//!   events in memory.
//! - **Spool disabled** (`spool.enabled: false`): events go straight to the dispatcher. **A crash
//!   or `kill -9` then loses every event that was read but not yet delivered**, because Fondo's
//!   stream has no acknowledgements and does not redeliver.
//! - **Shutdown**: a close frame is sent and reading stops; events already read are submitted if the
//!   dispatcher still takes them, and otherwise stay in the spool for the next start.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use futures::{SinkExt as _, StreamExt as _};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::Readiness;
use crate::config::{SpoolConfig, WebSocketSourceConfig};
use crate::dispatch::{Dispatcher, Identity};
use crate::dlq::{DeadLetter, rfc3339};
use crate::event::{
    AckHandle, AckStatus, ContentKey, Envelope, Event, ParseContext, ParseOptions, SourceKind,
    TraceContext,
};
use crate::group_commit::Pace;
use crate::metrics::{ClientLabels, SourceReasonLabels};
use crate::spool::{PendingAppend, Spool, SpoolError};
use crate::timers;

/// Why the WebSocket source could not be built or run.
#[derive(Debug, thiserror::Error)]
pub enum WebSocketError {
    /// The base URL is not a usable `ws`, `wss`, `http` or `https` URL.
    #[error("sources.websocket.url {url:?}: {why}")]
    BadUrl {
        /// The configured URL.
        url: String,
        /// What is wrong with it.
        why: &'static str,
    },
    /// No client id configured.
    #[error("sources.websocket.client_ids is empty")]
    NoClientIds,
    /// A client id that cannot be a URL path segment.
    #[error(
        "sources.websocket.client_ids: {0:?} is not a valid client id (empty, or contains '/', '?', '#', '%' or whitespace)"
    )]
    BadClientId(String),
    /// Neither `token` nor `token_file` is set.
    #[error("sources.websocket: neither token nor token_file is set")]
    NoToken,
    /// The spool could not be opened.
    #[error("spool: {0}")]
    Spool(#[from] SpoolError),
}

/// Counters of what the source did, for tests and diagnostics. Shared: keep the `Arc` from
/// [`WebSocketSource::stats`] to watch a running source.
#[derive(Debug, Default)]
pub struct WebSocketStats {
    /// Connection attempts (handshakes started).
    pub connect_attempts: AtomicU64,
    /// Connections established.
    pub connections: AtomicU64,
    /// Handshakes refused with 401/403.
    pub auth_failures: AtomicU64,
    /// Connections replaced because no event or heartbeat arrived in time.
    pub watchdog_timeouts: AtomicU64,
    /// Gaps: reconnects after a connection was lost.
    pub gaps: AtomicU64,
    /// Frames read from sockets (all kinds).
    pub frames: AtomicU64,
    /// Events received: spooled (or, with the spool off, handed on).
    pub events: AtomicU64,
    /// Heartbeats received.
    pub heartbeats: AtomicU64,
    /// Frames dead-lettered as not being events.
    pub dead_lettered: AtomicU64,
    /// Frames refused by the WebSocket layer for exceeding the hard size limit.
    pub refused_too_large: AtomicU64,
    /// Spool records replayed on start.
    pub replayed: AtomicU64,
    /// Events acknowledged (delivered, dead-lettered or rejected) and released.
    pub acknowledged: AtomicU64,
    /// Events resubmitted after a `Retry` acknowledgement.
    pub resubmitted: AtomicU64,
    /// Events acknowledged `Retry` that wait for their resubmission now (a gauge): held in memory
    /// and in the spool, outside the dispatcher's `max_in_flight`. New events wait while
    /// [`MAX_RETRY_WAITING`] do.
    pub retry_waiting: AtomicU64,
    /// The most events that ever waited for a resubmission at once.
    pub retry_waiting_peak: AtomicU64,
}

impl WebSocketStats {
    fn inc(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }
}

/// The WebSocket source. Build with [`WebSocketSource::new`], run with [`WebSocketSource::run`].
pub struct WebSocketSource {
    cfg: WebSocketSourceConfig,
    base: String,
    parse: ParseOptions,
    dispatcher: Dispatcher,
    readiness: Arc<Readiness>,
    spool: Option<Spool>,
    /// `spool.publish_while_committing`.
    publish_while_committing: bool,
    stats: Arc<WebSocketStats>,
}

impl std::fmt::Debug for WebSocketSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebSocketSource")
            .field("base", &self.base)
            .field("client_ids", &self.cfg.client_ids)
            .field("spool", &self.spool)
            .finish()
    }
}

/// `http(s)`→`ws(s)`, no trailing slash.
fn ws_base(url: &str) -> Result<String, WebSocketError> {
    let bad = |why| WebSocketError::BadUrl {
        url: url.to_owned(),
        why,
    };
    let trimmed = url.trim().trim_end_matches('/');
    let (scheme, rest) = trimmed
        .split_once("://")
        .ok_or_else(|| bad("no scheme (expected ws://, wss://, http:// or https://)"))?;
    let scheme = match scheme.to_ascii_lowercase().as_str() {
        "ws" | "http" => "ws",
        "wss" | "https" => "wss",
        _ => return Err(bad("unsupported scheme (expected ws, wss, http or https)")),
    };
    if rest.is_empty() || rest.starts_with('/') {
        return Err(bad("no host"));
    }
    if rest.contains(['?', '#']) {
        return Err(bad("must not have a query or fragment"));
    }
    Ok(format!("{scheme}://{rest}"))
}

fn valid_client_id(id: &str) -> bool {
    !id.is_empty()
        && !id
            .chars()
            .any(|c| matches!(c, '/' | '?' | '#' | '%') || c.is_whitespace() || c.is_control())
}

impl WebSocketSource {
    /// Validates the config and opens the spool (when enabled). Nothing connects until [`run`].
    ///
    /// [`run`]: WebSocketSource::run
    pub fn new(
        cfg: WebSocketSourceConfig,
        spool: SpoolConfig,
        parse: ParseOptions,
        dispatcher: Dispatcher,
        readiness: Arc<Readiness>,
    ) -> Result<Self, WebSocketError> {
        let base = ws_base(&cfg.url)?;
        if cfg.client_ids.is_empty() {
            return Err(WebSocketError::NoClientIds);
        }
        if let Some(bad) = cfg.client_ids.iter().find(|c| !valid_client_id(c)) {
            return Err(WebSocketError::BadClientId(bad.clone()));
        }
        if cfg.token.is_none() && cfg.token_file.is_none() {
            return Err(WebSocketError::NoToken);
        }
        let publish_while_committing = spool.publish_while_committing;
        let spool = if spool.enabled {
            let (s, _report) = Spool::open(&spool, Arc::clone(dispatcher.metrics()))?;
            Some(s)
        } else {
            tracing::warn!(
                "spool disabled: a crash or kill -9 loses WebSocket events that were read but not yet delivered"
            );
            None
        };
        for id in &cfg.client_ids {
            readiness.set(
                format!("websocket:{id}"),
                Err(format!(
                    "disconnected since {} (not connected yet)",
                    rfc3339(SystemTime::now())
                )),
            );
        }
        Ok(Self {
            cfg,
            base,
            parse,
            dispatcher,
            readiness,
            spool,
            publish_while_committing,
            stats: Arc::new(WebSocketStats::default()),
        })
    }

    /// The source's counters; stays valid after [`WebSocketSource::run`] took the source.
    pub fn stats(&self) -> Arc<WebSocketStats> {
        Arc::clone(&self.stats)
    }

    /// The URL the stream of `client_id` is read from.
    pub fn stream_url(&self, client_id: &str) -> String {
        format!("{}/v2/partner/client/{client_id}/subscribe", self.base)
    }

    /// Replays the spool, then reads every client id's stream until `shutdown` is cancelled.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), WebSocketError> {
        let shutdown = shutdown.child_token();
        let max = self.cfg.max_frame_bytes.max(1);
        let parse = ParseOptions {
            max_bytes: max,
            content_key: ContentKey::for_pairing(self.dispatcher.pairs_sources()),
            ..self.parse.clone()
        };
        let background_commits = self.publish_while_committing && !self.dispatcher.pairs_sources();
        let ctx = Arc::new(Ctx {
            cfg: self.cfg,
            base: self.base,
            parse,
            dispatcher: self.dispatcher,
            readiness: self.readiness,
            spool: self.spool,
            stats: self.stats,
            acks: TaskTracker::new(),
            spool_failing: AtomicBool::new(false),
            background_commits,
            retry_room: tokio::sync::Notify::new(),
            shutdown_deadline: std::sync::OnceLock::new(),
            shutdown: shutdown.clone(),
        });
        // Dropping this future (an aborted task) stops the connections too.
        let _stop_on_drop = shutdown.drop_guard();
        ctx.replay().await;
        let streams = TaskTracker::new();
        for client_id in ctx.cfg.client_ids.clone() {
            let (tx, rx) = mpsc::channel(PIPELINE);
            let submitter = tokio::spawn(Arc::clone(&ctx).submitter(rx));
            let c = Arc::clone(&ctx);
            streams.spawn(async move {
                c.stream(&client_id, tx).await;
                // The reader is done (its sender dropped): let the submitter finish what was read.
                let _ = submitter.await;
                c.readiness.set(
                    format!("websocket:{client_id}"),
                    Err("stopped (shutting down)".into()),
                );
            });
        }
        streams.close();
        streams.wait().await;
        ctx.acks.close();
        Ok(())
    }
}

/// Events read but not yet submitted, per stream (beyond this the reader waits).
pub const PIPELINE: usize = 1024;
/// Events acknowledged `Retry` that may wait for their resubmission before new events wait: a
/// resubmission holds no in-flight permit while it waits, so this is what bounds them. With the
/// events already in the dispatcher all turning into retries, the source holds at most this plus
/// `delivery.max_in_flight` events outside its read pipeline. 1024 events of a few KiB are a few
/// MiB; retries only pile up while destinations fail, when taking more events would not deliver
/// them any sooner.
pub const MAX_RETRY_WAITING: usize = 1024;
/// The readiness entry that reports failing spool writes.
const SPOOL_READY: &str = "spool";
/// First delay before resubmitting an event acknowledged `Retry`.
const RETRY_INITIAL: Duration = Duration::from_millis(500);
/// Longest delay between resubmissions.
const RETRY_MAX: Duration = Duration::from_secs(30);
/// How long shutdown waits to hand events already read to the dispatcher.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);
/// Processing a frame that took longer than this was our own backpressure (spool or dispatcher
/// full), not the server's silence: the watchdog restarts its clock.
const BLOCKED: Duration = Duration::from_millis(50);

/// An event read from the socket, on its way to the dispatcher.
struct Item {
    event: Event,
    pending: Option<Pending>,
    /// When the frame was read: receive→ack latency counts from here, spool wait included.
    read_at: Instant,
}

/// Where an event's spool record stands when it is queued for submission.
enum Pending {
    /// Queued for the next group commit.
    Append(PendingAppend),
    /// Already on disk (appended while the reader waited for the spool to write again).
    Durable(u64),
    /// Queued for a background commit: the event is published meanwhile.
    Background(PendingAppend),
}

/// The spool record an event releases once it is delivered.
#[derive(Clone)]
enum Record {
    /// None: the spool is off, or the append failed (shutting down while the spool cannot write).
    None,
    /// This record, already durable.
    Known(u64),
    /// A record still being committed while the event is published.
    Later(Arc<Release>),
}

/// An event published while its spool append commits: its record is released once it is both
/// durable and delivered, whichever comes second.
#[derive(Default)]
struct Release(std::sync::Mutex<ReleaseState>);

#[derive(Default)]
struct ReleaseState {
    id: Option<u64>,
    delivered: bool,
}

impl Release {
    fn lock(&self) -> std::sync::MutexGuard<'_, ReleaseState> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The record is durable as `id`.
    fn durable(&self, spool: &Spool, id: u64) {
        let mut st = self.lock();
        st.id = Some(id);
        if st.delivered {
            spool.release(id);
        }
    }

    /// The event was delivered (or dead-lettered, or rejected).
    fn delivered(&self, spool: &Spool) {
        let mut st = self.lock();
        st.delivered = true;
        if let Some(id) = st.id {
            spool.release(id);
        }
    }
}

struct Ctx {
    cfg: WebSocketSourceConfig,
    base: String,
    parse: ParseOptions,
    dispatcher: Dispatcher,
    readiness: Arc<Readiness>,
    spool: Option<Spool>,
    stats: Arc<WebSocketStats>,
    acks: TaskTracker,
    /// Set when a spool append failed (a full disk, an I/O error): the reader stops reading and
    /// makes its next event durable first, retrying until the spool writes again.
    spool_failing: AtomicBool,
    /// With `spool.publish_while_committing` and one source, events are published while their
    /// spool appends commit in the background (see [`Ctx::submitter`]); otherwise only once
    /// durable.
    background_commits: bool,
    /// Signalled when an event waiting for its resubmission was handed on.
    retry_room: tokio::sync::Notify,
    /// Set on first use after shutdown began: when waiting for the spool ends.
    shutdown_deadline: std::sync::OnceLock<tokio::time::Instant>,
    shutdown: CancellationToken,
}

/// How a connection attempt ended.
enum ConnectError {
    /// 401/403: the token was refused.
    Auth(u16),
    /// No token could be read.
    Token(String),
    /// Anything else: DNS, TCP, TLS, HTTP status, timeout.
    Other(String),
}

/// How a connected session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    Shutdown,
    Closed,
    Error,
    Watchdog,
}

/// One client id's stream across reconnects.
struct Link<'a> {
    client_id: &'a str,
    url: String,
    labels: ClientLabels,
    /// Its readiness entry, `websocket:<client_id>`.
    ready_key: String,
    backoff: crate::backoff::Backoff,
    /// The delay before the next attempt when the token is refused or unreadable.
    auth_retry: Duration,
    /// How long a connection must stay up for the backoff to start over.
    stable: Duration,
    /// Set when a connection was lost; the next successful connect closes the gap.
    lost: Option<(Instant, SystemTime)>,
}

type WsStream =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

impl Ctx {
    fn metrics_labels(client_id: &str) -> ClientLabels {
        ClientLabels {
            client_id: client_id.to_owned(),
        }
    }

    /// Submits every unreleased spool record, oldest first, before any connection is made.
    async fn replay(self: &Arc<Self>) {
        let Some(spool) = &self.spool else {
            return;
        };
        let mut n = 0u64;
        let started = Instant::now();
        for rec in spool.replay() {
            if self.shutdown.is_cancelled() {
                break;
            }
            let rec = match rec {
                Ok(r) => r,
                Err(e) => {
                    tracing::error!(error = %e, "reading the spool for replay failed; skipping the rest of that segment");
                    continue;
                }
            };
            // The occurrence id it was spooled with, so the replay is published under the same id
            // (and the same broker message ids). A record from a build before occurrence ids has
            // none and gets a new one. Replays are not identified again: they never pair.
            let ctx = ParseContext {
                client_id: Some(&rec.client_id),
                id_hint: rec.occurrence_id.as_deref(),
                ..Default::default()
            };
            match Event::parse(rec.payload.clone(), &self.parse, &ctx) {
                Ok(event) => {
                    self.room_for_new().await;
                    if self
                        .submit(event, Record::Known(rec.id), Instant::now())
                        .await
                        .is_err()
                    {
                        tracing::warn!(
                            "dispatcher closed during spool replay; the rest stays spooled"
                        );
                        return;
                    }
                    n += 1;
                    WebSocketStats::inc(&self.stats.replayed);
                }
                Err(e) => {
                    // It parsed when it was spooled; a changed parse config could refuse it now.
                    // Released only once its dead letter is written; otherwise it stays in the
                    // spool and is replayed on the next start.
                    let written = self
                        .try_dead_letter(
                            &rec.client_id,
                            &rec.payload,
                            format!("spooled frame no longer parses: {e}"),
                        )
                        .await;
                    if written {
                        spool.release(rec.id);
                    } else {
                        tracing::error!(
                            record = rec.id,
                            "a spooled frame that no longer parses could be dead-lettered nowhere; it stays in the spool"
                        );
                    }
                }
            }
        }
        if n > 0 {
            tracing::info!(
                events = n,
                ms = started.elapsed().as_millis() as u64,
                "replayed unreleased events from the spool"
            );
        }
    }

    /// Hands an event to the dispatcher and tracks its acknowledgement.
    async fn submit(
        self: &Arc<Self>,
        event: Event,
        id: Record,
        read_at: Instant,
    ) -> Result<(), ()> {
        self.submit_tracked(Arc::new(event), id, RETRY_INITIAL, read_at)
            .await
    }

    /// Submits with an acknowledgement that settles the event where the dispatcher finishes it
    /// (no task per event): `Delivered`/`Rejected` release its spool record, `Retry` resubmits it
    /// after `delay`, doubling up to `RETRY_MAX`. `read_at` (when the frame was read) is where
    /// its receive→ack latency starts, also for a resubmission.
    async fn submit_tracked(
        self: &Arc<Self>,
        event: Arc<Event>,
        id: Record,
        delay: Duration,
        read_at: Instant,
    ) -> Result<(), ()> {
        let this = Arc::clone(self);
        let ev = Arc::clone(&event);
        let ack = AckHandle::on_done(move |status| this.settle(ev, id, status, delay, read_at));
        let env = Envelope {
            event,
            ack,
            source: SourceKind::WebSocket,
            received_at: read_at,
            received_wall: SystemTime::now(),
            trace: TraceContext::default(),
        };
        // A refused envelope drops its handle unfinished, which settles it as `Retry`; with the
        // dispatcher closed that keeps it in the spool for the next start.
        self.dispatcher.submit(env).await.map_err(|_| ())
    }

    fn settle(
        self: Arc<Self>,
        event: Arc<Event>,
        id: Record,
        status: AckStatus,
        delay: Duration,
        read_at: Instant,
    ) {
        match status {
            AckStatus::Delivered | AckStatus::Rejected => {
                if let Some(spool) = &self.spool {
                    match id {
                        Record::None => {}
                        Record::Known(id) => spool.release(id),
                        Record::Later(r) => r.delivered(spool),
                    }
                }
                WebSocketStats::inc(&self.stats.acknowledged);
            }
            AckStatus::Retry => {
                if self.dispatcher.is_closed() {
                    // Stays in the spool (if any) for the next start.
                    return;
                }
                tracing::debug!(event_id = %event.event_id, delay_ms = delay.as_millis() as u64,
                    "event not delivered yet; resubmitting after a delay");
                // Counted until it is handed on: new events wait while too many wait here.
                let waiting = self.stats.retry_waiting.fetch_add(1, Ordering::AcqRel) + 1;
                self.stats
                    .retry_waiting_peak
                    .fetch_max(waiting, Ordering::AcqRel);
                let this = Arc::clone(&self);
                self.acks.spawn(async move {
                    tokio::time::sleep(delay).await;
                    let next = (delay * 2).min(RETRY_MAX);
                    let handed_on = this.submit_tracked(event, id, next, read_at).await.is_ok();
                    this.stats.retry_waiting.fetch_sub(1, Ordering::AcqRel);
                    this.retry_room.notify_waiters();
                    if handed_on {
                        WebSocketStats::inc(&this.stats.resubmitted);
                    }
                });
            }
        }
    }

    /// Waits while [`MAX_RETRY_WAITING`] events wait for their resubmission: a new event is
    /// taken in only when there is room (the reader pauses once its pipeline is full). Returns
    /// at once when shutting down.
    async fn room_for_new(&self) {
        let limit = MAX_RETRY_WAITING as u64;
        loop {
            let room = self.retry_room.notified();
            tokio::pin!(room);
            room.as_mut().enable();
            if self.stats.retry_waiting.load(Ordering::Acquire) < limit
                || self.shutdown.is_cancelled()
            {
                return;
            }
            tokio::select! {
                () = room => {}
                () = self.shutdown.cancelled() => return,
            }
        }
    }

    /// Awaits each read event's spool append in order, identifies it, then submits it.
    ///
    /// Identity comes after the append is durable: with both sources on, the stream's copy is
    /// entered in the pairing table only once a crash can no longer lose it, so a webhook copy
    /// that pairs with it (and is then not published by its own replica) always has a copy that
    /// will be. A copy whose occurrence another replica delivered is released without
    /// publishing. Events are identified one at a time, in the stream's order.
    ///
    /// With `spool.publish_while_committing` and one source (no pairing), an event is published
    /// while its append commits in the
    /// background ([`Spool::begin_background_append`]): a commit may then wait up to
    /// [`crate::group_commit::BACKGROUND`] for more events without delaying anything, so a slow
    /// stream shares its fsyncs. Its record is released once it is both durable and delivered
    /// ([`Release`]); commits finish in order, so this task follows them oldest first. What a
    /// crash can lose is what it could lose before, events read and not yet durable, less those
    /// the broker already confirmed: the commit window is longer, but an event the broker
    /// confirms within it is safe there.
    async fn submitter(self: Arc<Self>, mut rx: mpsc::Receiver<Item>) {
        let mut abandoned = 0u64;
        let mut grace: Option<tokio::time::Instant> = None;
        // Background appends of published events, oldest first.
        let mut committing: std::collections::VecDeque<(PendingAppend, Arc<Release>)> =
            std::collections::VecDeque::new();
        loop {
            let item = tokio::select! {
                biased;
                r = async { committing.front_mut().map(|(p, _)| p)?.durable().await.ok() }, if !committing.is_empty() => {
                    if let Some((_, release)) = committing.pop_front() {
                        self.committed(r, &release);
                    }
                    continue;
                }
                item = rx.recv() => match item {
                    Some(item) => item,
                    None => break,
                },
            };
            let id = match item.pending {
                Some(Pending::Background(p)) => {
                    let release = Arc::new(Release::default());
                    committing.push_back((p, Arc::clone(&release)));
                    Record::Later(release)
                }
                Some(Pending::Append(p)) => match self.appended(p).await {
                    Ok(id) => Record::Known(id),
                    Err(e) => {
                        // Shutting down while the spool cannot write (or it closed): read, and
                        // Fondo will not send it again, so it is delivered now if the dispatcher
                        // still takes it, but not crash-safe.
                        self.spool_failed(&e);
                        tracing::error!(error = %e, event_id = %item.event.event_id,
                            "spool append failed; the event is handed on without crash protection");
                        Record::None
                    }
                },
                Some(Pending::Durable(id)) => Record::Known(id),
                None => Record::None,
            };
            WebSocketStats::inc(&self.stats.events);
            let read_at = item.read_at;
            let mut event = item.event;
            if self
                .dispatcher
                .identify(&mut event, SourceKind::WebSocket, None)
                .await
                == Identity::Covered
            {
                self.dispatcher.covered(SourceKind::WebSocket);
                if let Some(spool) = &self.spool {
                    match id {
                        Record::None => {}
                        Record::Known(id) => spool.release(id),
                        Record::Later(r) => r.delivered(spool),
                    }
                }
                WebSocketStats::inc(&self.stats.acknowledged);
                continue;
            }
            if self.shutdown.is_cancelled() {
                let deadline =
                    *grace.get_or_insert_with(|| tokio::time::Instant::now() + SHUTDOWN_GRACE);
                match tokio::time::timeout_at(deadline, self.submit(event, id, read_at)).await {
                    Ok(Ok(())) => {}
                    _ => abandoned += 1,
                }
                continue;
            }
            self.room_for_new().await;
            if self.submit(event, id, read_at).await.is_err() {
                abandoned += 1;
            }
        }
        // The reader is done: wait for the commits still going (up to the shutdown grace when
        // the spool cannot write), so delivered events are released, not replayed.
        for (p, release) in committing {
            let r = self.appended(p).await;
            self.committed(r.ok(), &release);
        }
        if abandoned > 0 {
            if self.spool.is_some() {
                tracing::info!(
                    events = abandoned,
                    "events read but not handed on before shutdown stay in the spool"
                );
            } else {
                tracing::error!(
                    events = abandoned,
                    "events read but not handed on before shutdown are lost (spool disabled)"
                );
            }
        }
    }

    /// Dead-letters a frame that is not an event; the connection goes on.
    async fn dead_letter(&self, client_id: &str, raw: &[u8], reason: String) {
        if !self.try_dead_letter(client_id, raw, reason).await {
            tracing::error!(
                client_id,
                "a frame that is not an event could be dead-lettered nowhere; it is lost (Fondo does not redeliver)"
            );
        }
    }

    /// Dead-letters bytes that are not an event; `true` when the dead letter was written.
    async fn try_dead_letter(&self, client_id: &str, raw: &[u8], reason: String) -> bool {
        // Minted, never a hash of the bytes: two frames with the same bytes are two dead letters.
        let id = format!("unparseable:{}", crate::event::mint_occurrence_id());
        tracing::warn!(client_id, bytes = raw.len(), reason = %reason, "WebSocket frame is not an event; dead-lettering it");
        let dl = DeadLetter::unparseable(
            raw,
            id,
            Some(client_id),
            SourceKind::WebSocket,
            SystemTime::now(),
            &TraceContext::default(),
            reason,
        );
        match self.dispatcher.dead_letter_unparseable(dl).await {
            AckStatus::Delivered | AckStatus::Rejected => {
                WebSocketStats::inc(&self.stats.dead_lettered);
                true
            }
            AckStatus::Retry => false,
        }
    }

    fn token(&self) -> Result<String, String> {
        if let Some(path) = &self.cfg.token_file {
            return match std::fs::read_to_string(path) {
                Ok(t) if !t.trim().is_empty() => Ok(t.trim().to_owned()),
                Ok(_) => Err(format!("token file {} is empty", path.display())),
                Err(e) => Err(format!("cannot read token file {}: {e}", path.display())),
            };
        }
        match &self.cfg.token {
            Some(t) if !t.expose().trim().is_empty() => Ok(t.expose().trim().to_owned()),
            _ => Err("token is empty".into()),
        }
    }

    /// The hard limit given to the WebSocket layer: frames up to it are read and, above
    /// `max_frame_bytes`, dead-lettered; beyond it the connection is dropped unread.
    fn hard_limit(&self) -> usize {
        let max = self.cfg.max_frame_bytes.max(1);
        max.saturating_mul(2).max(max.saturating_add(64 * 1024))
    }

    async fn connect(&self, client_id: &str) -> Result<WsStream, ConnectError> {
        let token = self.token().map_err(ConnectError::Token)?;
        let url = format!("{}/v2/partner/client/{client_id}/subscribe", self.base);
        let mut req = url
            .as_str()
            .into_client_request()
            .map_err(|e| ConnectError::Other(format!("bad request URL: {e}")))?;
        let auth =
            tungstenite::http::HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| {
                ConnectError::Token("token contains characters not allowed in a header".into())
            })?;
        req.headers_mut().insert("authorization", auth);
        let hard = self.hard_limit();
        let ws_cfg = WebSocketConfig::default()
            .max_message_size(Some(hard))
            .max_frame_size(Some(hard));
        let timeout = Duration::from_millis(self.cfg.connect_timeout_ms.max(1));
        // In its own task: a TLS setup panic (e.g. no rustls crypto provider) must not take the
        // source down with it.
        let attempt = tokio::spawn(async move {
            tokio::time::timeout(
                timeout,
                tokio_tungstenite::connect_async_tls_with_config(req, Some(ws_cfg), true, None),
            )
            .await
        });
        match attempt.await {
            Ok(Ok(Ok((ws, _resp)))) => Ok(ws),
            Ok(Ok(Err(tungstenite::Error::Http(resp)))) => {
                let status = resp.status().as_u16();
                if status == 401 || status == 403 {
                    Err(ConnectError::Auth(status))
                } else {
                    Err(ConnectError::Other(format!(
                        "handshake refused with HTTP {status}"
                    )))
                }
            }
            Ok(Ok(Err(e))) => Err(ConnectError::Other(e.to_string())),
            Ok(Err(_)) => Err(ConnectError::Other(format!(
                "no connection within {} ms",
                timeout.as_millis()
            ))),
            Err(e) if e.is_panic() => Err(ConnectError::Other(
                "TLS setup panicked: most likely no rustls CryptoProvider is installed for this \
                 process (install one at start-up, e.g. aws_lc_rs::default_provider().install_default())"
                    .into(),
            )),
            Err(e) => Err(ConnectError::Other(format!(
                "connection attempt failed: {e}"
            ))),
        }
    }

    /// Connects, reads, reconnects, until shutdown.
    async fn stream(self: &Arc<Self>, client_id: &str, tx: mpsc::Sender<Item>) {
        let mut link = self.link(client_id);
        self.set_connected(&link, false);
        loop {
            if self.shutdown.is_cancelled() {
                return;
            }
            WebSocketStats::inc(&self.stats.connect_attempts);
            let delay = match self.connect(client_id).await {
                Ok(ws) => match self.connected(&mut link, ws, &tx).await {
                    Some(delay) => delay,
                    None => return,
                },
                Err(e) => self.connect_failed(&mut link, e),
            };
            tokio::select! {
                _ = self.shutdown.cancelled() => return,
                _ = tokio::time::sleep(delay) => {}
            }
        }
    }

    fn link<'a>(&self, client_id: &'a str) -> Link<'a> {
        let initial = Duration::from_millis(self.cfg.reconnect_initial_ms.max(1));
        let max = Duration::from_millis(self.cfg.reconnect_max_ms.max(1)).max(initial);
        Link {
            client_id,
            url: format!("{}/v2/partner/client/{client_id}/subscribe", self.base),
            labels: Self::metrics_labels(client_id),
            ready_key: format!("websocket:{client_id}"),
            backoff: crate::backoff::Backoff::new(initial, max),
            auth_retry: Duration::from_millis(self.cfg.auth_retry_ms),
            stable: Duration::from_millis(self.cfg.stable_after_ms),
            lost: None,
        }
    }

    fn set_connected(&self, link: &Link<'_>, up: bool) {
        let metrics = self.dispatcher.metrics();
        metrics
            .ws_connected
            .get_or_create(&link.labels)
            .set(i64::from(up));
    }

    /// One connection's life: closes the gap before it, reads until the connection ends, and marks
    /// the stream down. Returns the delay before the next attempt, `None` on shutdown.
    async fn connected(
        &self,
        link: &mut Link<'_>,
        ws: WsStream,
        tx: &mpsc::Sender<Item>,
    ) -> Option<Duration> {
        let client_id = link.client_id;
        let connected_at = Instant::now();
        WebSocketStats::inc(&self.stats.connections);
        self.set_connected(link, true);
        self.readiness.set(link.ready_key.clone(), Ok(()));
        match link.lost.take() {
            Some((since, since_wall)) => self.close_gap(link, since, since_wall, tx).await,
            None => tracing::info!(client_id, url = link.url, "WebSocket connected"),
        }
        let end = self.session(client_id, ws, tx).await;
        self.set_connected(link, false);
        let now_wall = SystemTime::now();
        self.readiness.set(
            link.ready_key.clone(),
            Err(format!("disconnected since {}", rfc3339(now_wall))),
        );
        if end == End::Shutdown {
            return None;
        }
        link.lost = Some((Instant::now(), now_wall));
        if connected_at.elapsed() >= link.stable {
            link.backoff.reset();
        }
        tracing::warn!(client_id, reason = ?end, up_secs = connected_at.elapsed().as_secs_f64(),
            "WebSocket disconnected; reconnecting");
        Some(link.backoff.next_delay())
    }

    /// A reconnect closed the gap since `since`: counts and logs it, and publishes a gap marker
    /// when configured.
    async fn close_gap(
        &self,
        link: &Link<'_>,
        since: Instant,
        since_wall: SystemTime,
        tx: &mpsc::Sender<Item>,
    ) {
        let client_id = link.client_id;
        let secs = since.elapsed().as_secs_f64();
        let to = SystemTime::now();
        let metrics = self.dispatcher.metrics();
        metrics.ws_gaps.get_or_create(&link.labels).inc();
        metrics
            .ws_gap_seconds
            .get_or_create(&link.labels)
            .inc_by(secs);
        WebSocketStats::inc(&self.stats.gaps);
        tracing::warn!(
            client_id,
            from = %rfc3339(since_wall),
            to = %rfc3339(to),
            seconds = secs,
            "WebSocket gap closed: events Fondo sent meanwhile are not replayed by Fondo"
        );
        if self.cfg.gap_marker {
            self.gap_marker(client_id, since_wall, to, secs, tx).await;
        }
    }

    /// A connection attempt failed: marks the stream down and says why. Returns the delay before
    /// the next attempt: slow (`auth_retry_ms`) when the token is the problem.
    fn connect_failed(&self, link: &mut Link<'_>, e: ConnectError) -> Duration {
        let (client_id, url, auth_retry) = (link.client_id, &link.url, link.auth_retry);
        match e {
            ConnectError::Auth(status) => {
                WebSocketStats::inc(&self.stats.auth_failures);
                self.mark_down(
                    &link.ready_key,
                    &link.lost,
                    &format!("token refused (HTTP {status})"),
                );
                tracing::error!(
                    client_id,
                    url,
                    status,
                    retry_in_secs = auth_retry.as_secs_f64(),
                    "Fondo refused the token (HTTP {status}); check sources.websocket.token/token_file; retrying slowly"
                );
                auth_retry
            }
            ConnectError::Token(why) => {
                self.mark_down(&link.ready_key, &link.lost, &why);
                tracing::error!(client_id, reason = %why, retry_in_secs = auth_retry.as_secs_f64(),
                    "no usable WebSocket token; retrying slowly");
                auth_retry
            }
            ConnectError::Other(why) => {
                let d = link.backoff.next_delay();
                self.mark_down(&link.ready_key, &link.lost, &why);
                tracing::warn!(client_id, url, error = %why, retry_in_ms = d.as_millis() as u64,
                    "WebSocket connection failed");
                d
            }
        }
    }

    fn mark_down(&self, key: &str, lost: &Option<(Instant, SystemTime)>, why: &str) {
        let since = lost
            .map(|(_, w)| rfc3339(w))
            .unwrap_or_else(|| "start (never connected)".into());
        self.readiness.set(
            key.to_owned(),
            Err(format!("disconnected since {since}: {why}")),
        );
    }

    async fn gap_marker(
        &self,
        client_id: &str,
        from: SystemTime,
        to: SystemTime,
        secs: f64,
        tx: &mpsc::Sender<Item>,
    ) {
        // `eventType` first, as in Fondo's own frames.
        let Ok(cid) = serde_json::to_string(client_id) else {
            return;
        };
        let raw = format!(
            r#"{{"eventType":"bridge.gap","clientId":{cid},"from":"{}","to":"{}","seconds":{secs:.3}}}"#,
            rfc3339(from),
            rfc3339(to),
        );
        let ctx = ParseContext {
            client_id: Some(client_id),
            ..Default::default()
        };
        if let Ok(event) = Event::parse(Bytes::from(raw), &self.parse, &ctx) {
            self.enqueue(client_id, event, tx).await;
        }
    }

    /// Spools an event (waiting for space when the spool is full) and queues it for submission.
    /// The spool record holds the id minted at parse; the submitter identifies the event once its
    /// record is durable (see [`Ctx::submitter`]).
    async fn enqueue(&self, client_id: &str, event: Event, tx: &mpsc::Sender<Item>) -> bool {
        let read_at = Instant::now();
        let pending = match &self.spool {
            Some(spool) if self.spool_paused(spool) => {
                // `None` when shutting down: handed on unprotected, for the drain to deliver.
                self.append_until_durable(spool, client_id, &event)
                    .await
                    .map(Pending::Durable)
            }
            Some(spool) => {
                let queued = if self.background_commits {
                    // Published while it commits: the spool lets the batch grow for a while.
                    spool
                        .begin_background_append(client_id, &event.event_id, event.raw.clone())
                        .await
                        .map(Pending::Background)
                } else {
                    // The source reads on while its events commit: the spool may let a batch grow.
                    spool
                        .begin_append(client_id, &event.event_id, event.raw.clone(), Pace::Patient)
                        .await
                        .map(Pending::Append)
                };
                queued
                    .inspect_err(|e| {
                        tracing::error!(client_id, error = %e,
                            "cannot spool an event; it is delivered without crash protection");
                    })
                    .ok()
            }
            None => None,
        };
        tx.send(Item {
            event,
            pending,
            read_at,
        })
        .await
        .is_ok()
    }

    /// Records that the spool could not write: `/readyz` says so, a counter counts it, and the
    /// reader stops reading until [`Ctx::append_until_durable`] succeeds.
    fn spool_failed(&self, e: &SpoolError) {
        self.spool_failing.store(true, Ordering::Release);
        self.readiness.set(
            SPOOL_READY.to_owned(),
            Err(format!("spool writes failing: {e}")),
        );
        self.dispatcher
            .metrics()
            .rejected
            .get_or_create(&SourceReasonLabels {
                source: "websocket".into(),
                reason: "spool_write_failed".into(),
            })
            .inc();
    }

    /// Whether the reader must make its next event durable before it reads on: a spool append
    /// failed here, or the spool holds appends it could not write yet.
    fn spool_paused(&self, spool: &Spool) -> bool {
        self.spool_failing.load(Ordering::Acquire) || spool.write_error().is_some()
    }

    /// While the spool cannot write, the reader appends its next event and waits for it to be
    /// durable: nothing further is read (paused reads, TCP backpressure to Fondo) until it is. The
    /// spool keeps the appends it could not write, in order, and writes them again as soon as it
    /// can, so the events read before (at most [`PIPELINE`] queued plus this one) become durable
    /// first, in the order they were read. Meanwhile delivered events are released and their
    /// segments deleted, which frees the disk they held. `None` only when shutting down.
    async fn append_until_durable(
        &self,
        spool: &Spool,
        client_id: &str,
        event: &Event,
    ) -> Option<u64> {
        let mut delay = Duration::from_millis(50);
        let mut tries = 0u32;
        loop {
            if let Some(why) = spool.write_error() {
                self.spool_failed(&SpoolError::WriteFailed(why));
            }
            let appended = match spool
                .begin_append(client_id, &event.event_id, event.raw.clone(), Pace::Prompt)
                .await
            {
                Ok(p) => tokio::select! {
                    r = p.wait() => r,
                    () = self.shutdown.cancelled() => return None,
                },
                Err(e) => Err(e),
            };
            match appended {
                Ok(id) => {
                    self.spool_failing.store(false, Ordering::Release);
                    self.readiness.set(SPOOL_READY.to_owned(), Ok(()));
                    tracing::info!(tries, "spool writes work again; reading resumes");
                    return Some(id);
                }
                Err(e) => {
                    tries += 1;
                    self.spool_failed(&e);
                    if tries.is_power_of_two() {
                        tracing::error!(error = %e, tries,
                            "spool still cannot write; reading stays paused");
                    }
                }
            }
            tokio::select! {
                () = self.shutdown.cancelled() => return None,
                () = tokio::time::sleep(delay) => {}
            }
            delay = (delay * 2).min(Duration::from_secs(5));
        }
    }

    /// A background append finished: durable as `id`, or (`None`) failed, and then the event,
    /// published already, has no crash protection.
    fn committed(&self, id: Option<u64>, release: &Release) {
        match (id, &self.spool) {
            (Some(id), Some(spool)) => release.durable(spool, id),
            _ => {
                self.spool_failed(&SpoolError::WriteFailed(
                    "a background spool append failed".into(),
                ));
                tracing::error!(
                    "spool append failed; the event was handed on without crash protection"
                );
            }
        }
    }

    /// Waits for a queued spool append to be durable. While the spool cannot write this waits
    /// too (the reader has paused); once shutdown began it waits until the shutdown grace ends,
    /// then gives up: the event is handed on without crash protection.
    async fn appended(&self, p: PendingAppend) -> Result<u64, SpoolError> {
        tokio::select! {
            r = p.wait() => r,
            () = async {
                self.shutdown.cancelled().await;
                tokio::time::sleep_until(self.shutdown_deadline()).await;
            } => Err(SpoolError::WriteFailed(
                "shutting down while the spool cannot write".into(),
            )),
        }
    }

    /// When shutdown stops waiting for the spool: [`SHUTDOWN_GRACE`] after it was first asked.
    fn shutdown_deadline(&self) -> tokio::time::Instant {
        *self
            .shutdown_deadline
            .get_or_init(|| tokio::time::Instant::now() + SHUTDOWN_GRACE)
    }

    /// Reads one connection until it ends.
    async fn session(&self, client_id: &str, ws: WsStream, tx: &mpsc::Sender<Item>) -> End {
        let (mut sink, mut stream) = ws.split();
        let watchdog = (self.cfg.heartbeat_timeout_ms > 0)
            .then(|| Duration::from_millis(self.cfg.heartbeat_timeout_ms));
        let mut ping = self.ping_timer();
        let mut last_activity = tokio::time::Instant::now();
        let ctx = ParseContext {
            client_id: Some(client_id),
            ..Default::default()
        };
        loop {
            let deadline = watchdog.map(|w| last_activity + w);
            tokio::select! {
                biased;
                _ = self.shutdown.cancelled() => {
                    let close = sink.send(Message::Close(Some(CloseFrame {
                        code: CloseCode::Away,
                        reason: Utf8Bytes::from_static("bridge shutting down"),
                    })));
                    let _ = tokio::time::timeout(Duration::from_secs(1), close).await;
                    return End::Shutdown;
                }
                msg = stream.next() => {
                    let started = tokio::time::Instant::now();
                    let activity = match self.received(client_id, msg, &ctx, tx).await {
                        Ok(activity) => activity,
                        Err(end) => return end,
                    };
                    let now = tokio::time::Instant::now();
                    if activity || now - started > BLOCKED {
                        last_activity = now;
                    }
                }
                () = timers::tick(ping.as_mut()) => {
                    if let Err(e) = sink.send(Message::Ping(Bytes::new())).await {
                        tracing::warn!(client_id, error = %e, "WebSocket ping failed");
                        return End::Error;
                    }
                }
                () = timers::sleep_until(deadline) => {
                    WebSocketStats::inc(&self.stats.watchdog_timeouts);
                    tracing::warn!(client_id, timeout_ms = self.cfg.heartbeat_timeout_ms,
                        "no event or heartbeat within the heartbeat timeout; reconnecting");
                    let _ = tokio::time::timeout(Duration::from_millis(500), sink.close()).await;
                    return End::Watchdog;
                }
            }
        }
    }

    /// The timer for WebSocket pings, every `ping_interval_ms` from one interval after now; none
    /// when pings are off.
    fn ping_timer(&self) -> Option<tokio::time::Interval> {
        let every = (self.cfg.ping_interval_ms > 0)
            .then(|| Duration::from_millis(self.cfg.ping_interval_ms))?;
        let mut i = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Some(i)
    }

    /// Handles what one read from the socket gave. `Ok(true)` for an event or heartbeat (watchdog
    /// food), `Ok(false)` for anything else the connection goes on after, `Err` with how the
    /// session ends otherwise.
    async fn received(
        &self,
        client_id: &str,
        msg: Option<Result<Message, tungstenite::Error>>,
        ctx: &ParseContext<'_>,
        tx: &mpsc::Sender<Item>,
    ) -> Result<bool, End> {
        match msg {
            None => {
                tracing::debug!(client_id, "server closed the TCP connection");
                Err(End::Closed)
            }
            Some(Err(tungstenite::Error::Capacity(e))) => {
                WebSocketStats::inc(&self.stats.refused_too_large);
                let m = self.dispatcher.metrics();
                m.rejected
                    .get_or_create(&SourceReasonLabels {
                        source: "websocket".into(),
                        reason: "frame_too_large".into(),
                    })
                    .inc();
                tracing::error!(client_id, error = %e, hard_limit = self.hard_limit(),
                    "WebSocket frame beyond the hard size limit refused unread; the connection cannot continue, reconnecting");
                Err(End::Error)
            }
            Some(Err(e)) => {
                tracing::warn!(client_id, error = %e, "WebSocket read failed");
                Err(End::Error)
            }
            Some(Ok(Message::Text(text))) => {
                WebSocketStats::inc(&self.stats.frames);
                self.frame(client_id, text, ctx, tx)
                    .await
                    .ok_or(End::Shutdown)
            }
            Some(Ok(Message::Binary(b))) => {
                WebSocketStats::inc(&self.stats.frames);
                self.dead_letter(
                    client_id,
                    &b,
                    format!(
                        "binary frame of {} bytes; the Fondo stream sends JSON text frames",
                        b.len()
                    ),
                )
                .await;
                Ok(false)
            }
            Some(Ok(Message::Close(frame))) => {
                tracing::info!(client_id, code = ?frame.as_ref().map(|f| f.code), "server closed the WebSocket");
                Err(End::Closed)
            }
            Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => Ok(false),
        }
    }

    /// Handles one text frame. `Some(true)` when it was an event or heartbeat (watchdog food),
    /// `None` when the pipeline is gone (shutting down).
    ///
    /// The event gets a copy of the frame's bytes, and the frame is dropped when this returns,
    /// before the next read: a frame kept alive pins the WebSocket library's read buffer, and it
    /// then reads one frame per system call (a profile showed one `recvfrom`, a fresh buffer and
    /// its zeroing per event).
    async fn frame(
        &self,
        client_id: &str,
        text: Utf8Bytes,
        ctx: &ParseContext<'_>,
        tx: &mpsc::Sender<Item>,
    ) -> Option<bool> {
        let max = self.cfg.max_frame_bytes.max(1);
        if text.len() > max {
            self.dead_letter(
                client_id,
                text.as_bytes(),
                format!(
                    "frame of {} bytes exceeds max_frame_bytes {max}",
                    text.len()
                ),
            )
            .await;
            return Some(false);
        }
        match Event::parse_text(text.as_str(), &self.parse, ctx) {
            Ok(event) if event.event_type.is_heartbeat() => {
                WebSocketStats::inc(&self.stats.heartbeats);
                Some(true)
            }
            Ok(event) => {
                if self.enqueue(client_id, event, tx).await {
                    Some(true)
                } else {
                    None
                }
            }
            Err(e) => {
                self.dead_letter(client_id, text.as_bytes(), format!("{} ({e})", e.kind()))
                    .await;
                Some(false)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn base_urls() {
        assert_eq!(
            ws_base("https://api.fondo.se").unwrap(),
            "wss://api.fondo.se"
        );
        assert_eq!(ws_base("http://127.0.0.1:9/").unwrap(), "ws://127.0.0.1:9");
        assert_eq!(
            ws_base("https://docs.fondo.se/_mock/openapi/api_3.0.3").unwrap(),
            "wss://docs.fondo.se/_mock/openapi/api_3.0.3"
        );
        assert_eq!(ws_base("WSS://x").unwrap(), "wss://x");
        assert!(ws_base("ftp://x").is_err());
        assert!(ws_base("api.fondo.se").is_err());
        assert!(ws_base("https://").is_err());
        assert!(ws_base("https://x?a=b").is_err());
    }

    #[tokio::test]
    async fn a_published_event_is_released_once_durable_and_delivered_in_either_order() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = SpoolConfig {
            dir: dir.path().to_path_buf(),
            ..SpoolConfig::default()
        };
        let (spool, _) = Spool::open(&cfg, Arc::new(crate::metrics::Metrics::new())).unwrap();
        let a = spool
            .append("c", "a", Bytes::from_static(b"{}"))
            .await
            .unwrap();
        let b = spool
            .append("c", "b", Bytes::from_static(b"{}"))
            .await
            .unwrap();
        assert_eq!(spool.live_records(), 2);
        // Delivered before its record is durable: released only once it is.
        let first = Release::default();
        first.delivered(&spool);
        assert_eq!(spool.live_records(), 2);
        first.durable(&spool, a);
        assert_eq!(spool.live_records(), 1);
        // Durable first: released on delivery.
        let second = Release::default();
        second.durable(&spool, b);
        assert_eq!(spool.live_records(), 1);
        second.delivered(&spool);
        assert_eq!(spool.live_records(), 0);
    }

    #[test]
    fn client_ids() {
        assert!(valid_client_id("49ad7378-121c-4a53-9894-dfd14a7b4877"));
        assert!(!valid_client_id(""));
        assert!(!valid_client_id("a/b"));
        assert!(!valid_client_id("a b"));
        assert!(!valid_client_id("a?b"));
    }
}
