//! The simulated Fondo WebSocket stream: `GET /v2/partner/client/{client_id}/subscribe` with Bearer
//! auth, streaming realistic events from a [`Generator`] plus `heartbeat` frames, with optional faults.
//!
//! - Each client id has its own generator (seeded from the seed and the client id), kept across
//!   connections: a reconnecting client continues where the last connection stopped, so a test can
//!   check that everything sent arrived, in order per object.
//! - Faults: drop the connection every N events (abruptly, after flushing what was sent), no
//!   heartbeats, a malformed frame every N events (cycling through not-JSON, a binary frame, an
//!   oversized frame, an unknown event type and a body without `eventType`), and a stall (no frames
//!   at all, the TCP connection kept open) after N events on a connection.
//! - [`start`] runs it in-process for tests and records what was sent; [`run_stream`] runs it for
//!   the `fondo-bridge simulate` command until cancelled.
//!
//! Throughput: frames are fed in batches and flushed once per batch, so one connection on loopback
//! carries well over 100k events/s with the default event size.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::{SinkExt as _, StreamExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::StatusCode;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
use tokio_util::sync::CancellationToken;

use super::generator::{Generator, heartbeat};

/// Options of `fondo-bridge simulate`: a simulated Fondo WebSocket stream.
#[derive(Debug, Clone, clap::Args)]
pub struct SimulateArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8765")]
    pub listen: SocketAddr,
    /// Bearer token clients must present (anything else gets HTTP 401).
    #[arg(long, env = "FONDO_SIM_TOKEN", default_value = "sim-token")]
    pub token: String,
    /// Also accept the token as a query parameter (`?token=...` or `?access_token=...`), for
    /// WebSocket clients that cannot send headers. The `Authorization` header still works.
    #[arg(long)]
    pub query_token: bool,
    /// BENCHMARKS ONLY: no authentication at all; any client that knows the path is served.
    /// Never point anything but a benchmark at a simulator started with it.
    #[arg(long, conflicts_with = "query_token")]
    pub open: bool,
    /// Add the send time (Unix nanoseconds) to each event body as a top-level field
    /// `"benchSentNs"`, so a consumer of the broker can compute send-to-visible latency.
    #[arg(long)]
    pub stamp: bool,
    /// Seed for the event generator: the same seed gives the same events.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Events per second per connection; 0 = as fast as possible.
    #[arg(long, default_value_t = 100.0)]
    pub rate: f64,
    /// Stop generating events after this many per client id (heartbeats go on).
    #[arg(long)]
    pub count: Option<u64>,
    /// Objects alive at once per client id (more objects = fewer events per object).
    #[arg(long, default_value_t = 1000)]
    pub objects: usize,
    /// Pad event bodies to about this many bytes (0 = natural size, ~300-1200 bytes).
    #[arg(long, default_value_t = 0)]
    pub payload_bytes: usize,
    /// Heartbeat interval in milliseconds; 0 = no heartbeats.
    #[arg(long, default_value_t = 5000)]
    pub heartbeat_ms: u64,
    /// Fault: close the TCP connection abruptly after every N events on it.
    #[arg(long)]
    pub drop_every: Option<u64>,
    /// Fault: send a malformed frame after every N events.
    #[arg(long)]
    pub malformed_every: Option<u64>,
    /// Size of the oversized malformed frame.
    #[arg(long, default_value_t = 1536 * 1024)]
    pub oversized_bytes: usize,
    /// Fault: after N events on a connection, send nothing at all (no events, no heartbeats).
    #[arg(long)]
    pub stall_after: Option<u64>,
    /// How long a stall lasts in milliseconds; 0 = until the client goes away.
    #[arg(long, default_value_t = 0)]
    pub stall_ms: u64,
    /// Accept only these client ids (repeatable); none = any.
    #[arg(long = "client-id")]
    pub client_ids: Vec<String>,
}

/// How the simulated stream behaves. See [`SimulateArgs`] for the meaning of each field.
#[derive(Debug, Clone)]
pub struct StreamConfig {
    /// Address to listen on; port 0 picks a free port.
    pub listen: SocketAddr,
    /// Bearer token clients must present.
    pub token: String,
    /// How a client may present the token (or that it need not).
    pub auth: StreamAuth,
    /// Add `"benchSentNs": <send time in Unix nanoseconds>` to each event body.
    pub stamp: bool,
    /// Generator seed.
    pub seed: u64,
    /// Events per second per connection; 0 = as fast as possible.
    pub rate: f64,
    /// Events per client id before only heartbeats are sent.
    pub count: Option<u64>,
    /// Objects alive at once per client id.
    pub objects: usize,
    /// Pad bodies to about this many bytes (0 = no padding).
    pub payload_bytes: usize,
    /// Heartbeat interval; `None` = no heartbeats.
    pub heartbeat: Option<Duration>,
    /// Close the connection abruptly after every N events on it.
    pub drop_every: Option<u64>,
    /// A malformed frame after every N events.
    pub malformed_every: Option<u64>,
    /// Size of the oversized malformed frame.
    pub oversized_bytes: usize,
    /// Stop sending anything after N events on a connection.
    pub stall_after: Option<u64>,
    /// How long a stall lasts; `None` = until the client goes away.
    pub stall: Option<Duration>,
    /// Accepted client ids; empty = any.
    pub client_ids: Vec<String>,
    /// Keep every event and malformed frame sent, for tests (costs memory).
    pub record: bool,
    /// When not empty, every client id is sent exactly these bodies, in order, instead of generated
    /// events (then `count` defaults to their number): scripted histories such as a state that
    /// flips back and forth, whose bodies repeat.
    pub script: Arc<Vec<Bytes>>,
}

impl Default for StreamConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            token: "sim-token".into(),
            auth: StreamAuth::Header,
            stamp: false,
            seed: 1,
            rate: 0.0,
            count: None,
            objects: 100,
            payload_bytes: 0,
            heartbeat: Some(Duration::from_secs(5)),
            drop_every: None,
            malformed_every: None,
            oversized_bytes: 1536 * 1024,
            stall_after: None,
            stall: None,
            client_ids: Vec::new(),
            record: true,
            script: Arc::default(),
        }
    }
}

impl From<&SimulateArgs> for StreamConfig {
    fn from(a: &SimulateArgs) -> Self {
        Self {
            listen: a.listen,
            token: a.token.clone(),
            auth: if a.open {
                StreamAuth::Open
            } else if a.query_token {
                StreamAuth::HeaderOrQuery
            } else {
                StreamAuth::Header
            },
            stamp: a.stamp,
            seed: a.seed,
            rate: a.rate.max(0.0),
            count: a.count,
            objects: a.objects.max(1),
            payload_bytes: a.payload_bytes,
            heartbeat: (a.heartbeat_ms > 0).then(|| Duration::from_millis(a.heartbeat_ms)),
            drop_every: a.drop_every.filter(|n| *n > 0),
            malformed_every: a.malformed_every.filter(|n| *n > 0),
            oversized_bytes: a.oversized_bytes,
            stall_after: a.stall_after,
            stall: (a.stall_ms > 0).then(|| Duration::from_millis(a.stall_ms)),
            client_ids: a.client_ids.clone(),
            record: false,
            script: Arc::default(),
        }
    }
}

/// How clients authenticate to the simulated stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StreamAuth {
    /// `Authorization: Bearer <token>`, as Fondo requires.
    #[default]
    Header,
    /// The header, or the token as the query parameter `token` or `access_token`.
    HeaderOrQuery,
    /// No authentication: for benchmarks of clients that can send neither.
    Open,
}

/// The name of the field [`StreamConfig::stamp`] adds to each event body.
pub const STAMP_FIELD: &str = "benchSentNs";

/// Why the simulator could not run.
#[derive(Debug, thiserror::Error)]
pub enum SimulatorError {
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

/// The kinds of malformed frame the simulator sends, in the order it cycles through them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MalformedKind {
    /// A text frame that is not JSON.
    NotJson,
    /// A binary frame (Fondo sends text frames).
    Binary,
    /// A text frame larger than the configured `oversized_bytes`.
    Oversized,
    /// A well-formed event of a type not in the reference (a valid event: it is routed, not refused).
    UnknownType,
    /// A JSON object without `eventType`.
    MissingType,
}

const MALFORMED_CYCLE: [MalformedKind; 5] = [
    MalformedKind::NotJson,
    MalformedKind::Binary,
    MalformedKind::Oversized,
    MalformedKind::UnknownType,
    MalformedKind::MissingType,
];

/// A malformed frame that was sent.
#[derive(Debug, Clone)]
pub struct MalformedFrame {
    /// Which kind.
    pub kind: MalformedKind,
    /// The client id of the stream it was sent on.
    pub client_id: String,
    /// Its bytes.
    pub body: Bytes,
}

/// One WebSocket handshake attempt the simulator saw.
#[derive(Debug, Clone)]
pub struct Handshake {
    /// When the request arrived.
    pub at: Instant,
    /// The client id from the path, when the path matched.
    pub client_id: Option<String>,
    /// The HTTP status answered: 101 (upgraded), 401 (token), 404 (path or client id).
    pub status: u16,
}

struct ClientState {
    generator: Generator,
    /// Events generated for this client id so far (across connections).
    generated: u64,
}

struct Shared {
    cfg: StreamConfig,
    token: Mutex<String>,
    clients: Mutex<HashMap<String, Arc<tokio::sync::Mutex<ClientState>>>>,
    kick: Notify,
    paused: AtomicBool,
    events_sent: AtomicU64,
    heartbeats_sent: AtomicU64,
    malformed_sent: AtomicU64,
    connections: AtomicU64,
    open_connections: AtomicU64,
    sent: Mutex<HashMap<String, Vec<Bytes>>>,
    malformed: Mutex<Vec<MalformedFrame>>,
    handshakes: Mutex<Vec<Handshake>>,
    /// Per client id, how many events it had been sent when each of its connections ended.
    connection_ends: Mutex<HashMap<String, Vec<usize>>>,
}

impl Shared {
    fn client(&self, client_id: &str) -> Arc<tokio::sync::Mutex<ClientState>> {
        let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        Arc::clone(clients.entry(client_id.to_owned()).or_insert_with(|| {
            // Distinct, stable streams per client id under one seed.
            let h = client_id.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
                (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
            });
            Arc::new(tokio::sync::Mutex::new(ClientState {
                generator: Generator::new(
                    self.cfg.seed ^ h,
                    client_id,
                    self.cfg.objects,
                    self.cfg.payload_bytes,
                ),
                generated: 0,
            }))
        }))
    }

    fn record_handshake(&self, client_id: Option<String>, status: u16) {
        if let Ok(mut h) = self.handshakes.lock() {
            h.push(Handshake {
                at: Instant::now(),
                client_id,
                status,
            });
        }
    }
}

/// A running simulator started with [`start`].
pub struct SimHandle {
    addr: SocketAddr,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
    task: JoinHandle<()>,
}

impl SimHandle {
    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `ws://<addr>`: the base URL a WebSocket source is configured with.
    pub fn base_url(&self) -> String {
        format!("ws://{}", self.addr)
    }

    /// Every event body sent on `client_id`'s stream, in order (only with `record`).
    pub fn sent_events(&self, client_id: &str) -> Vec<Bytes> {
        self.shared
            .sent
            .lock()
            .map(|s| s.get(client_id).cloned().unwrap_or_default())
            .unwrap_or_default()
    }

    /// For each of `client_id`'s connections that has ended, in order, how many events the
    /// stream had been sent by then (only with `record`): the events a connection killed
    /// mid-stream carried last end just before its entry.
    pub fn connection_ends(&self, client_id: &str) -> Vec<usize> {
        self.shared
            .connection_ends
            .lock()
            .map(|e| e.get(client_id).cloned().unwrap_or_default())
            .unwrap_or_default()
    }

    /// Events sent on all streams.
    pub fn events_sent(&self) -> u64 {
        self.shared.events_sent.load(Ordering::SeqCst)
    }

    /// Heartbeats sent on all streams.
    pub fn heartbeats_sent(&self) -> u64 {
        self.shared.heartbeats_sent.load(Ordering::SeqCst)
    }

    /// Malformed frames sent (with their bytes only with `record`).
    pub fn malformed(&self) -> Vec<MalformedFrame> {
        self.shared
            .malformed
            .lock()
            .map(|m| m.clone())
            .unwrap_or_default()
    }

    /// Malformed frames sent, counted.
    pub fn malformed_sent(&self) -> u64 {
        self.shared.malformed_sent.load(Ordering::SeqCst)
    }

    /// Every handshake attempt, in order.
    pub fn handshakes(&self) -> Vec<Handshake> {
        self.shared
            .handshakes
            .lock()
            .map(|h| h.clone())
            .unwrap_or_default()
    }

    /// Connections upgraded so far.
    pub fn connections(&self) -> u64 {
        self.shared.connections.load(Ordering::SeqCst)
    }

    /// Connections open now.
    pub fn open_connections(&self) -> u64 {
        self.shared.open_connections.load(Ordering::SeqCst)
    }

    /// Changes the accepted token (for tests of a rotated or fixed token).
    pub fn set_token(&self, token: &str) {
        if let Ok(mut t) = self.shared.token.lock() {
            *t = token.to_owned();
        }
    }

    /// Drops every open connection now, abruptly.
    pub fn kick(&self) {
        self.shared.kick.notify_waiters();
    }

    /// Pauses or resumes event generation; heartbeats go on.
    pub fn set_paused(&self, paused: bool) {
        self.shared.paused.store(paused, Ordering::SeqCst);
    }

    /// Stops accepting, closes every connection with a close frame, and waits for the listener.
    pub async fn stop(self) {
        self.shutdown.cancel();
        let _ = self.task.await;
    }
}

/// Starts the simulator in the background; returns its address and a handle.
pub async fn start(cfg: StreamConfig) -> Result<(SocketAddr, SimHandle), SimulatorError> {
    let listener = TcpListener::bind(cfg.listen)
        .await
        .map_err(|source| SimulatorError::Bind {
            addr: cfg.listen,
            source,
        })?;
    let addr = listener
        .local_addr()
        .map_err(|source| SimulatorError::Bind {
            addr: cfg.listen,
            source,
        })?;
    let shared = Arc::new(Shared {
        token: Mutex::new(cfg.token.clone()),
        cfg,
        clients: Mutex::new(HashMap::new()),
        kick: Notify::new(),
        paused: AtomicBool::new(false),
        events_sent: AtomicU64::new(0),
        heartbeats_sent: AtomicU64::new(0),
        malformed_sent: AtomicU64::new(0),
        connections: AtomicU64::new(0),
        open_connections: AtomicU64::new(0),
        sent: Mutex::new(HashMap::new()),
        malformed: Mutex::new(Vec::new()),
        handshakes: Mutex::new(Vec::new()),
        connection_ends: Mutex::new(HashMap::new()),
    });
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(accept_loop(listener, Arc::clone(&shared), shutdown.clone()));
    Ok((
        addr,
        SimHandle {
            addr,
            shared,
            shutdown,
            task,
        },
    ))
}

/// Runs the simulator until `shutdown` is cancelled, logging throughput every 5 seconds.
pub async fn run_stream(
    args: SimulateArgs,
    shutdown: CancellationToken,
) -> Result<(), SimulatorError> {
    let cfg = StreamConfig::from(&args);
    if cfg.auth == StreamAuth::Open {
        tracing::warn!(
            "simulator started with --open: NO AUTHENTICATION, any client is served; for benchmarks only"
        );
    }
    let (addr, handle) = start(cfg).await?;
    tracing::info!(
        %addr,
        path = "/v2/partner/client/{client_id}/subscribe",
        rate = args.rate,
        seed = args.seed,
        "simulated Fondo WebSocket stream listening"
    );
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    tick.tick().await;
    let mut last = (Instant::now(), 0u64);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tick.tick() => {
                let sent = handle.events_sent();
                let secs = last.0.elapsed().as_secs_f64().max(1e-9);
                tracing::info!(
                    events_sent = sent,
                    events_per_sec = ((sent - last.1) as f64 / secs).round(),
                    heartbeats = handle.heartbeats_sent(),
                    malformed = handle.malformed_sent(),
                    open_connections = handle.open_connections(),
                    "simulator"
                );
                last = (Instant::now(), sent);
            }
        }
    }
    handle.stop().await;
    Ok(())
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>, shutdown: CancellationToken) {
    let conns = tokio_util::task::TaskTracker::new();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((tcp, peer)) => {
                    let _ = tcp.set_nodelay(true);
                    conns.spawn(connection(tcp, peer, Arc::clone(&shared), shutdown.clone()));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "simulator accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }
    conns.close();
    let _ = tokio::time::timeout(Duration::from_secs(5), conns.wait()).await;
}

/// `/v2/partner/client/{client_id}/subscribe` → the client id.
fn client_id_from_path(path: &str) -> Option<&str> {
    let id = path
        .strip_prefix("/v2/partner/client/")?
        .strip_suffix("/subscribe")?;
    (!id.is_empty() && !id.contains('/')).then_some(id)
}

/// Whether the handshake `req` presents `token` the way `auth` accepts.
fn authorized(auth: StreamAuth, token: &str, req: &Request) -> bool {
    let header_ok = || {
        req.headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .is_some_and(|t| t == token)
    };
    let query_ok = || {
        req.uri().query().is_some_and(|q| {
            q.split('&').any(|pair| {
                let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                (k == "token" || k == "access_token") && percent_decoded(v) == token
            })
        })
    };
    match auth {
        StreamAuth::Open => true,
        StreamAuth::Header => header_ok(),
        StreamAuth::HeaderOrQuery => header_ok() || query_ok(),
    }
}

/// `%XX` escapes and `+` of a query value decoded (invalid escapes are kept as they are).
fn percent_decoded(v: &str) -> String {
    let b = v.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                let hex = std::str::from_utf8(&b[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(x) => {
                        out.push(x);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn reject(status: StatusCode, why: &str) -> ErrorResponse {
    let mut r = ErrorResponse::new(Some(why.to_owned()));
    *r.status_mut() = status;
    r
}

// The handshake callback's error type is tungstenite's, not ours to shrink.
#[allow(clippy::result_large_err)]
async fn connection(
    tcp: TcpStream,
    peer: SocketAddr,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
) {
    let chosen: Arc<Mutex<Option<String>>> = Arc::new(Mutex::new(None));
    let cb_shared = Arc::clone(&shared);
    let cb_chosen = Arc::clone(&chosen);
    let callback = move |req: &Request, resp: Response| -> Result<Response, ErrorResponse> {
        let Some(id) = client_id_from_path(req.uri().path()) else {
            cb_shared.record_handshake(None, 404);
            return Err(reject(StatusCode::NOT_FOUND, "no such path"));
        };
        if !cb_shared.cfg.client_ids.is_empty() && !cb_shared.cfg.client_ids.iter().any(|c| c == id)
        {
            cb_shared.record_handshake(Some(id.to_owned()), 404);
            return Err(reject(StatusCode::NOT_FOUND, "unknown client"));
        }
        let token = cb_shared
            .token
            .lock()
            .map(|t| t.clone())
            .unwrap_or_default();
        if !authorized(cb_shared.cfg.auth, &token, req) {
            cb_shared.record_handshake(Some(id.to_owned()), 401);
            return Err(reject(StatusCode::UNAUTHORIZED, "invalid token"));
        }
        cb_shared.record_handshake(Some(id.to_owned()), 101);
        if let Ok(mut c) = cb_chosen.lock() {
            *c = Some(id.to_owned());
        }
        Ok(resp)
    };
    let config = WebSocketConfig::default().write_buffer_size(256 * 1024);
    let handshake = tokio_tungstenite::accept_hdr_async_with_config(tcp, callback, Some(config));
    let ws = match tokio::time::timeout(Duration::from_secs(10), handshake).await {
        Ok(Ok(ws)) => ws,
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "simulator handshake refused or failed");
            return;
        }
        Err(_) => return,
    };
    let Some(client_id) = chosen.lock().ok().and_then(|c| c.clone()) else {
        return;
    };
    shared.connections.fetch_add(1, Ordering::SeqCst);
    shared.open_connections.fetch_add(1, Ordering::SeqCst);
    tracing::debug!(%peer, client_id, "simulator connection open");
    let why = serve(ws, &client_id, &shared, &shutdown).await;
    if shared.cfg.record {
        let sent = shared
            .sent
            .lock()
            .map(|s| s.get(&client_id).map_or(0, Vec::len))
            .unwrap_or(0);
        if let Ok(mut ends) = shared.connection_ends.lock() {
            ends.entry(client_id.clone()).or_default().push(sent);
        }
    }
    shared.open_connections.fetch_sub(1, Ordering::SeqCst);
    tracing::debug!(%peer, client_id, why, "simulator connection closed");
}

type Ws = tokio_tungstenite::WebSocketStream<TcpStream>;

/// How many events one batch feeds before flushing.
const BATCH: u64 = 512;

/// Feeds one connection until it ends; returns why it ended.
async fn serve(
    ws: Ws,
    client_id: &str,
    shared: &Shared,
    shutdown: &CancellationToken,
) -> &'static str {
    let cfg = &shared.cfg;
    let (tx, mut rx) = ws.split();
    let mut feeder = Feeder {
        tx,
        client_id,
        client: shared.client(client_id),
        shared,
        on_conn: 0,
        stalled_until: None,
        allowance: 0.0,
        last_refill: Instant::now(),
    };
    let mut heartbeat_tick = cfg.heartbeat.map(|d| {
        let mut i = tokio::time::interval_at(tokio::time::Instant::now() + d, d);
        i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        i
    });
    // Rate limiting: a token bucket refilled every few milliseconds.
    let limited = cfg.rate > 0.0;
    let mut rate_tick = tokio::time::interval(Duration::from_millis(5));
    rate_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let kicked = shared.kick.notified();
    tokio::pin!(kicked);
    loop {
        let stalled = feeder.stalled();
        let stall_end = feeder.stalled_until.flatten();
        let can_send = !stalled && !feeder.exhausted() && !shared.paused.load(Ordering::Relaxed);
        let step: Result<(), &'static str> = tokio::select! {
            biased;
            _ = shutdown.cancelled() => {
                feeder.say_goodbye().await;
                Err("shutdown")
            }
            _ = &mut kicked => Err("kicked"),
            m = rx.next() => match m {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => Err("client closed"),
                Some(Ok(_)) => Ok(()),
            },
            _ = crate::timers::tick(heartbeat_tick.as_mut()), if !stalled => feeder.heartbeat().await,
            _ = crate::timers::sleep_until(stall_end) => Ok(()),
            _ = rate_tick.tick(), if limited && can_send => match feeder.refill() {
                0 => Ok(()),
                n => feeder.feed(n).await,
            },
            _ = std::future::ready(()), if !limited && can_send => {
                let fed = feeder.feed(BATCH).await;
                if fed.is_ok() {
                    // Let the runtime breathe between batches at full speed.
                    tokio::task::yield_now().await;
                }
                fed
            }
            // Nothing to send (paused, stalled or done): wake up now and then to re-check.
            _ = tokio::time::sleep(Duration::from_millis(20)), if !can_send => Ok(()),
        };
        if let Err(why) = step {
            return why;
        }
    }
}

/// One connection's sending side, shared by the branches of [`serve`]'s loop.
struct Feeder<'a> {
    tx: WsTx,
    client_id: &'a str,
    client: Arc<tokio::sync::Mutex<ClientState>>,
    shared: &'a Shared,
    /// Events sent on this connection.
    on_conn: u64,
    /// `Some(Some(t))`: stalled until `t`; `Some(None)`: stalled until the client goes away.
    stalled_until: Option<Option<tokio::time::Instant>>,
    /// The rate limit's token bucket: events that may be sent now, and when it was last refilled.
    allowance: f64,
    last_refill: Instant,
}

impl Feeder<'_> {
    /// Whether the connection is stalled; a stall whose time is up ends here.
    fn stalled(&mut self) -> bool {
        match self.stalled_until {
            Some(Some(t)) if tokio::time::Instant::now() >= t => {
                self.stalled_until = None;
                false
            }
            Some(_) => true,
            None => false,
        }
    }

    /// Whether the client has had the configured `count` of events.
    fn exhausted(&self) -> bool {
        self.shared.cfg.count.is_some_and(|c| {
            self.client
                .try_lock()
                .map(|s| s.generated >= c)
                .unwrap_or(false)
        })
    }

    async fn say_goodbye(&mut self) {
        let _ = self
            .tx
            .send(Message::Close(Some(CloseFrame {
                code: CloseCode::Away,
                reason: Utf8Bytes::from_static("simulator stopping"),
            })))
            .await;
    }

    async fn heartbeat(&mut self) -> Result<(), &'static str> {
        let frame = Utf8Bytes::from_static(r#"{"eventType":"heartbeat"}"#);
        if self.tx.send(Message::Text(frame)).await.is_err() {
            return Err("write failed");
        }
        debug_assert_eq!(&heartbeat()[..], br#"{"eventType":"heartbeat"}"#);
        self.shared.heartbeats_sent.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Refills the token bucket for the time since the last refill (holding at most a second's
    /// worth, and at least one event) and takes the whole events out of it.
    fn refill(&mut self) -> u64 {
        let rate = self.shared.cfg.rate;
        let now = Instant::now();
        self.allowance = (self.allowance
            + rate * now.duration_since(self.last_refill).as_secs_f64())
        .min(rate.max(1.0));
        self.last_refill = now;
        let n = self.allowance.floor() as u64;
        if n > 0 {
            self.allowance -= n as f64;
        }
        n
    }

    /// Sends up to `n` events; a configured fault drops the connection or starts a stall.
    async fn feed(&mut self, n: u64) -> Result<(), &'static str> {
        let next = send_batch(
            &mut self.tx,
            self.client_id,
            &self.client,
            self.shared,
            n,
            &mut self.on_conn,
        )
        .await;
        match next {
            Ok(Next::Continue) => Ok(()),
            Ok(Next::Drop) => Err("dropped (fault)"),
            Ok(Next::Stall) => {
                let stall = self.shared.cfg.stall;
                self.stalled_until = Some(stall.map(|d| tokio::time::Instant::now() + d));
                Ok(())
            }
            Err(()) => Err("write failed"),
        }
    }
}

enum Next {
    Continue,
    Drop,
    Stall,
}

type WsTx = futures::stream::SplitSink<Ws, Message>;

/// Feeds up to `n` events (and any malformed frames due), then flushes.
async fn send_batch(
    tx: &mut WsTx,
    client_id: &str,
    client: &tokio::sync::Mutex<ClientState>,
    shared: &Shared,
    n: u64,
    on_conn: &mut u64,
) -> Result<Next, ()> {
    let cfg = &shared.cfg;
    let mut next = Next::Continue;
    let mut state = client.lock().await;
    let mut recorded = Vec::new();
    let mut sent = 0u64;
    for _ in 0..n {
        let limit = cfg
            .count
            .or((!cfg.script.is_empty()).then_some(cfg.script.len() as u64));
        if limit.is_some_and(|c| state.generated >= c) {
            break;
        }
        let mut body = if cfg.script.is_empty() {
            state.generator.next_event()
        } else {
            cfg.script[(state.generated % cfg.script.len() as u64) as usize].clone()
        };
        if cfg.stamp {
            body = stamped(&body, unix_nanos());
        }
        state.generated += 1;
        *on_conn += 1;
        let text = Utf8Bytes::try_from(body.clone()).map_err(|_| ())?;
        tx.feed(Message::Text(text)).await.map_err(|_| ())?;
        sent += 1;
        if cfg.record {
            recorded.push(body);
        }
        if let Some(every) = cfg.malformed_every
            && state.generated % every == 0
        {
            let k = shared.malformed_sent.fetch_add(1, Ordering::Relaxed);
            let (kind, msg, bytes) = malformed_frame(k, cfg.oversized_bytes);
            tx.feed(msg).await.map_err(|_| ())?;
            if cfg.record
                && let Ok(mut m) = shared.malformed.lock()
            {
                m.push(MalformedFrame {
                    kind,
                    client_id: client_id.to_owned(),
                    body: bytes,
                });
            }
        }
        if cfg.drop_every.is_some_and(|d| (*on_conn).is_multiple_of(d)) {
            next = Next::Drop;
            break;
        }
        if cfg.stall_after.is_some_and(|s| *on_conn == s) {
            next = Next::Stall;
            break;
        }
    }
    drop(state);
    if cfg.record
        && !recorded.is_empty()
        && let Ok(mut s) = shared.sent.lock()
    {
        s.entry(client_id.to_owned()).or_default().extend(recorded);
    }
    let flushed = tx.flush().await;
    shared.events_sent.fetch_add(sent, Ordering::Relaxed);
    flushed.map_err(|_| ())?;
    Ok(next)
}

/// The current time in Unix nanoseconds (0 before 1970).
fn unix_nanos() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

/// `body` (a JSON object) with `"benchSentNs": ns` as its first field; a body that is not an
/// object is returned as it is.
fn stamped(body: &[u8], ns: u128) -> Bytes {
    let Some(rest) = body.strip_prefix(b"{") else {
        return Bytes::copy_from_slice(body);
    };
    let empty = rest.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'}');
    let mut out = Vec::with_capacity(body.len() + 40);
    out.extend_from_slice(format!("{{\"{STAMP_FIELD}\":{ns}").as_bytes());
    if !empty {
        out.push(b',');
    }
    out.extend_from_slice(rest);
    Bytes::from(out)
}

fn malformed_frame(k: u64, oversized: usize) -> (MalformedKind, Message, Bytes) {
    let kind = MALFORMED_CYCLE[(k % MALFORMED_CYCLE.len() as u64) as usize];
    match kind {
        MalformedKind::NotJson => {
            let b = Bytes::from(format!(
                "{{\"eventType\":\"order.update\",\"current\":{{ not json {k}"
            ));
            let t = Utf8Bytes::try_from(b.clone()).unwrap_or_else(|_| Utf8Bytes::from_static("x"));
            (kind, Message::Text(t), b)
        }
        MalformedKind::Binary => {
            let b = Bytes::from(format!(
                "{{\"eventType\":\"order.update\",\"n\":{k}}}\u{0}\u{1}"
            ));
            (kind, Message::Binary(b.clone()), b)
        }
        MalformedKind::Oversized => {
            let head = format!("{{\"eventType\":\"order.update\",\"n\":{k},\"padding\":\"");
            let mut s = String::with_capacity(oversized + 4);
            s.push_str(&head);
            while s.len() + 2 < oversized {
                s.push('z');
            }
            s.push_str("\"}");
            let b = Bytes::from(s);
            let t = Utf8Bytes::try_from(b.clone()).unwrap_or_else(|_| Utf8Bytes::from_static("x"));
            (kind, Message::Text(t), b)
        }
        MalformedKind::UnknownType => {
            let b = Bytes::from(format!(
                "{{\"eventType\":\"portfolio.rebalanced\",\"current\":{{\"id\":\"pf_{k}\",\"seq\":1}}}}"
            ));
            let t = Utf8Bytes::try_from(b.clone()).unwrap_or_else(|_| Utf8Bytes::from_static("x"));
            (kind, Message::Text(t), b)
        }
        MalformedKind::MissingType => {
            let b = Bytes::from(format!("{{\"current\":{{\"id\":\"mt_{k}\",\"seq\":1}}}}"));
            let t = Utf8Bytes::try_from(b.clone()).unwrap_or_else(|_| Utf8Bytes::from_static("x"));
            (kind, Message::Text(t), b)
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn path_parsing() {
        assert_eq!(
            client_id_from_path("/v2/partner/client/abc/subscribe"),
            Some("abc")
        );
        assert_eq!(client_id_from_path("/v2/partner/client//subscribe"), None);
        assert_eq!(
            client_id_from_path("/v2/partner/client/a/b/subscribe"),
            None
        );
        assert_eq!(client_id_from_path("/other"), None);
    }

    #[test]
    fn stamp_is_a_first_top_level_field() {
        let s = stamped(br#"{"eventType":"order.create","current":{"id":"o1"}}"#, 42);
        let v: serde_json::Value = serde_json::from_slice(&s).unwrap();
        assert_eq!(v[STAMP_FIELD], 42);
        assert_eq!(v["eventType"], "order.create");
        assert_eq!(v["current"]["id"], "o1");
        let e: serde_json::Value = serde_json::from_slice(&stamped(b"{ }", 7)).unwrap();
        assert_eq!(e, serde_json::json!({ STAMP_FIELD: 7 }));
        assert_eq!(&stamped(b"[1]", 7)[..], b"[1]");
    }

    #[test]
    fn query_values_are_percent_decoded() {
        assert_eq!(percent_decoded("a%2Fb+c%zz%4"), "a/b c%zz%4");
        assert_eq!(percent_decoded("%C3%A9"), "é");
    }

    /// Connects to `url` (with `bearer` as `Authorization` when given): the handshake's HTTP
    /// status (101 when upgraded) and, when upgraded, the first event frame.
    async fn connect(url: &str, bearer: Option<&str>) -> (u16, Option<serde_json::Value>) {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
        let mut req = url.into_client_request().unwrap();
        if let Some(t) = bearer {
            req.headers_mut()
                .insert("authorization", format!("Bearer {t}").parse().unwrap());
        }
        match tokio_tungstenite::connect_async(req).await {
            Ok((mut ws, resp)) => {
                let first = tokio::time::timeout(Duration::from_secs(10), ws.next())
                    .await
                    .unwrap()
                    .unwrap()
                    .unwrap();
                let v = serde_json::from_slice(first.into_data().as_ref()).unwrap();
                (resp.status().as_u16(), Some(v))
            }
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
                (resp.status().as_u16(), None)
            }
            Err(e) => panic!("connect {url}: {e}"),
        }
    }

    async fn sim(auth: StreamAuth, stamp: bool) -> SimHandle {
        let (_, h) = start(StreamConfig {
            token: "t0k/en".into(),
            auth,
            stamp,
            count: Some(5),
            heartbeat: None,
            ..StreamConfig::default()
        })
        .await
        .unwrap();
        h
    }

    /// The stream URL of a fresh client id (each client id gets its own `count` events).
    fn url(h: &SimHandle, query: &str) -> String {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let id = NEXT.fetch_add(1, Ordering::Relaxed);
        format!("{}/v2/partner/client/c{id}/subscribe{query}", h.base_url())
    }

    #[tokio::test]
    async fn header_only_by_default_query_token_and_open_on_request() {
        let strict = sim(StreamAuth::default(), false).await;
        assert_eq!(connect(&url(&strict, ""), Some("t0k/en")).await.0, 101);
        let q = url(&strict, "?token=t0k%2Fen");
        assert_eq!(connect(&q, None).await.0, 401);
        assert_eq!(connect(&url(&strict, ""), None).await.0, 401);
        assert_eq!(connect(&url(&strict, ""), Some("wrong")).await.0, 401);
        strict.stop().await;

        let query = sim(StreamAuth::HeaderOrQuery, false).await;
        let (status, first) = connect(&url(&query, "?x=1&token=t0k%2Fen"), None).await;
        assert_eq!(status, 101);
        // Without stamping, bodies are exactly the generator's.
        assert!(first.unwrap().get(STAMP_FIELD).is_none());
        let q = url(&query, "?access_token=t0k/en");
        assert_eq!(connect(&q, None).await.0, 101);
        assert_eq!(connect(&url(&query, ""), Some("t0k/en")).await.0, 101);
        let q = url(&query, "?token=wrong");
        assert_eq!(connect(&q, None).await.0, 401);
        assert_eq!(connect(&url(&query, ""), None).await.0, 401);
        query.stop().await;

        let open = sim(StreamAuth::Open, true).await;
        let before = unix_nanos();
        let (status, first) = connect(&url(&open, ""), None).await;
        assert_eq!(status, 101);
        let first = first.unwrap();
        let sent = first[STAMP_FIELD].as_u64().unwrap();
        assert!(u128::from(sent) >= before && u128::from(sent) <= unix_nanos());
        assert!(first["eventType"].is_string());
        // Paths are still checked.
        let elsewhere = format!("{}/elsewhere", open.base_url());
        assert_eq!(connect(&elsewhere, None).await.0, 404);
        open.stop().await;
    }

    #[test]
    fn malformed_cycle_covers_every_kind() {
        let kinds: Vec<_> = (0..5).map(|k| malformed_frame(k, 1000).0).collect();
        assert_eq!(kinds, MALFORMED_CYCLE);
        let (_, _, big) = malformed_frame(2, 5000);
        assert!(big.len() >= 5000);
    }
}
