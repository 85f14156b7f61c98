//! The webhook source's HTTP server: a hand-written accept loop over hyper-util's automatic
//! HTTP/1.1 + HTTP/2 connection builder, plain or TLS (rustls, ring provider), with graceful
//! shutdown.
//!
//! `axum::serve` would be shorter, but it exposes neither hyper's header-read timeout nor TLS, so
//! the loop lives here:
//! - **Plain TCP**: HTTP/1.1, and HTTP/2 with prior knowledge (h2c), told apart by the first bytes.
//! - **TLS**: the version is negotiated by ALPN (`h2`, `http/1.1`); a client that offers no ALPN
//!   gets the same first-bytes detection as plain TCP.
//! - **Slow clients** (slowloris): the TLS handshake, the connection's first bytes (until the
//!   HTTP/2 preface is complete or the bytes cannot be one) and every HTTP/1.1 request head must
//!   arrive within `header_read_timeout_ms`, or the connection is closed. Bodies are bounded by the
//!   handler's own `request_timeout_ms`.
//! - **Many clients** (before any signature can be checked): at most `max_connections` are served
//!   at once; at the limit the loop stops accepting and new connections wait in the listen backlog
//!   (`listen_backlog`). A connection with no request in flight for `idle_timeout_ms` is asked to
//!   finish. HTTP/2 allows `http2_max_concurrent_streams` streams per connection (more are
//!   refused with `REFUSED_STREAM`, which clients retry) and small flow-control windows, so a
//!   stalled body pins little; HTTP/1.1 request heads are limited to 128 KiB (hyper's read
//!   buffer) and HTTP/2 header lists to 16 KiB. Body bytes are bounded by the handler's budget
//!   (see the parent module).
//! - **Shutdown**: the listener is closed first; open connections are told to finish (HTTP/1.1
//!   completes the request in flight then closes, HTTP/2 sends GOAWAY), and whatever is still open
//!   at the deadline is dropped.

use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::time::Sleep;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::TlsServerConfig;

/// Why the TLS configuration cannot be used. Every variant names the file at fault.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("sources.webhook.tls: cannot read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The error.
        source: io::Error,
    },
    /// The certificate file holds no usable `CERTIFICATE` block.
    #[error("sources.webhook.tls.cert_file {path}: {reason}")]
    Cert {
        /// The file.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// The key file holds no usable private key.
    #[error("sources.webhook.tls.key_file {path}: {reason}")]
    Key {
        /// The file.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// rustls refused the pair (most often: the key does not belong to the certificate).
    #[error(
        "sources.webhook.tls: certificate {cert} and key {key} cannot be used together: {reason}"
    )]
    Pair {
        /// The certificate file.
        cert: String,
        /// The key file.
        key: String,
        /// rustls' reason.
        reason: String,
    },
}

/// The ALPN protocols offered, in order of preference.
const ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

fn read_file(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.display().to_string(),
        source,
    })
}

/// Reads the certificate chain and key and builds a rustls acceptor on the ring provider (the
/// process-wide default provider is not relied upon) with ALPN `h2` and `http/1.1`.
pub fn load_tls(cfg: &TlsServerConfig) -> Result<TlsAcceptor, TlsError> {
    let cert_path = cfg.cert_file.display().to_string();
    let key_path = cfg.key_file.display().to_string();
    let cert_pem = read_file(&cfg.cert_file)?;
    let certs = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Cert {
            path: cert_path.clone(),
            reason: format!("not valid PEM: {e}"),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Cert {
            path: cert_path,
            reason: "no CERTIFICATE block found".into(),
        });
    }
    let key_pem = read_file(&cfg.key_file)?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| TlsError::Key {
        path: key_path.clone(),
        reason: match e {
            rustls::pki_types::pem::Error::NoItemsFound => {
                "no PRIVATE KEY block found (PKCS#8, PKCS#1 or SEC1)".into()
            }
            other => format!("not valid PEM: {other}"),
        },
    })?;
    let pair = |reason: String| TlsError::Pair {
        cert: cert_path.clone(),
        key: key_path.clone(),
        reason,
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| pair(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| pair(e.to_string()))?;
    config.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Connection-level limits (see `WebhookSourceConfig`).
pub(super) struct Limits {
    pub max_connections: usize,
    pub idle_timeout: Duration,
    pub http2_max_concurrent_streams: u32,
    pub http2_stream_window: u32,
    pub http2_connection_window: u32,
}

/// How the server loop behaves.
pub(super) struct ServeOptions {
    pub tls: Option<TlsAcceptor>,
    pub header_read_timeout: Duration,
    /// How long open connections may take to finish once shutdown started.
    pub grace: Duration,
    pub limits: Limits,
}

/// hyper's HTTP/1.1 read buffer (default ~400 KiB), and so the longest request head: every
/// open connection may hold this much (128 MiB at 1024 connections, for as long as
/// `header_read_timeout_ms` lets a head take). Room for a signature header with many entries;
/// a webhook's headers take a few hundred bytes.
const HTTP1_MAX_BUF_BYTES: usize = 128 * 1024;
/// HTTP/2's header list limit, per stream (hyper's default, set here so it stays put: a
/// connection has up to `http2_max_concurrent_streams` of them).
const HTTP2_MAX_HEADER_LIST_BYTES: u32 = 16 * 1024;
/// How often "connection limit reached" may be logged.
const LIMIT_LOG_EVERY: Duration = Duration::from_secs(10);

/// Listens again, with `backlog`, on a socket that is already listening: the kernel then only
/// changes the length of its accept queue (Linux, the BSDs), so the address and the connections
/// already queued stay. `tokio::net::TcpListener::bind` always uses 128.
#[cfg(unix)]
pub(super) fn with_backlog(listener: TcpListener, backlog: u32) -> io::Result<TcpListener> {
    let fd = std::os::fd::OwnedFd::from(listener.into_std()?);
    // `TcpSocket` is made from a std `TcpStream`, the type its constructor takes; the descriptor
    // stays the listening socket it was.
    tokio::net::TcpSocket::from_std_stream(std::net::TcpStream::from(fd)).listen(backlog)
}

/// Elsewhere the listener keeps the backlog it was bound with.
#[cfg(not(unix))]
pub(super) fn with_backlog(listener: TcpListener, _backlog: u32) -> io::Result<TcpListener> {
    Ok(listener)
}

/// Serves `router` on `listener` until `shutdown` resolves, then drains (see the module doc).
/// Returns once every connection has closed or the grace period is over.
pub(super) async fn serve(
    listener: TcpListener,
    router: Router,
    opts: ServeOptions,
    shutdown: impl Future<Output = ()>,
) {
    let mut gate = Gate::new(opts.limits.max_connections);
    let connections = Connections::new(router, &opts);
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        // A free slot first: at the limit nothing is accepted, and new connections wait in the
        // listen backlog instead of each becoming a task.
        let Some(slot) = gate.slot(shutdown.as_mut()).await else {
            break;
        };
        let accepted = tokio::select! {
            biased;
            () = shutdown.as_mut() => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => connections.spawn(stream, peer, slot),
            Err(e) => gate.accept_failed(&e).await,
        }
    }
    drop(listener);
    connections.drain(opts.grace).await;
}

/// Admission: at most `max_connections` served at once, and when the limit and accept errors
/// were last logged.
struct Gate {
    slots: Arc<Semaphore>,
    max_connections: usize,
    last_limit_log: Option<Instant>,
    last_accept_error: Option<Instant>,
}

impl Gate {
    fn new(max_connections: usize) -> Self {
        let max_connections = max_connections.max(1);
        Self {
            slots: Arc::new(Semaphore::new(max_connections)),
            max_connections,
            last_limit_log: None,
            last_accept_error: None,
        }
    }

    /// A free connection slot, waiting for one at the limit (logged at most every
    /// [`LIMIT_LOG_EVERY`]); `None` when shutdown comes first.
    async fn slot(
        &mut self,
        shutdown: Pin<&mut impl Future<Output = ()>>,
    ) -> Option<OwnedSemaphorePermit> {
        if let Ok(slot) = Arc::clone(&self.slots).try_acquire_owned() {
            return Some(slot);
        }
        if self
            .last_limit_log
            .is_none_or(|t| t.elapsed() > LIMIT_LOG_EVERY)
        {
            tracing::warn!(
                max_connections = self.max_connections,
                "webhook server: connection limit reached; new connections wait in the listen backlog"
            );
            self.last_limit_log = Some(Instant::now());
        }
        tokio::select! {
            biased;
            () = shutdown => None,
            slot = Arc::clone(&self.slots).acquire_owned() => slot.ok(),
        }
    }

    /// After a failed accept: an error of that one connection is passed over; anything else (out
    /// of file descriptors and the like) is said (at most every 10 s) and backed off from, so the
    /// loop does not spin.
    async fn accept_failed(&mut self, e: &io::Error) {
        if is_connection_error(e) {
            return;
        }
        if self
            .last_accept_error
            .is_none_or(|t| t.elapsed() > Duration::from_secs(10))
        {
            tracing::error!(error = %e, "webhook server: accept failed");
            self.last_accept_error = Some(Instant::now());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The connections being served, and the signals that end them.
struct Connections {
    tracker: TaskTracker,
    /// What every connection is served with (its `draining` token is cancelled when shutdown
    /// starts: open connections are told to finish).
    conn: Conn,
    /// Cancelled at the end of the grace period: connections still open are dropped.
    hard_stop: CancellationToken,
}

impl Connections {
    fn new(router: Router, opts: &ServeOptions) -> Self {
        Self {
            tracker: TaskTracker::new(),
            conn: Conn {
                builder: Arc::new(builder(opts.header_read_timeout, &opts.limits)),
                router,
                tls: opts.tls.clone(),
                header_read_timeout: opts.header_read_timeout,
                idle_timeout: opts.limits.idle_timeout,
                draining: CancellationToken::new(),
            },
            hard_stop: CancellationToken::new(),
        }
    }

    /// Serves an accepted connection in a task of its own, which holds `slot` until it ends.
    fn spawn(&self, stream: TcpStream, peer: SocketAddr, slot: OwnedSemaphorePermit) {
        // Nagle only delays the short answers.
        let _ = stream.set_nodelay(true);
        // Tracked from the moment of accept, so a connection still in its TLS handshake when
        // shutdown starts is waited for (and told to finish) like the others.
        let conn = self.conn.clone();
        let hard_stop = self.hard_stop.clone();
        self.tracker.spawn(async move {
            let _slot = slot;
            tokio::select! {
                () = conn.run(stream) => {}
                () = hard_stop.cancelled() => {
                    tracing::debug!(%peer, "webhook connection dropped at the shutdown deadline");
                }
            }
        });
    }

    /// Tells the open connections to finish, waits up to `grace` for them, then drops the rest.
    async fn drain(self, grace: Duration) {
        self.conn.draining.cancel();
        self.tracker.close();
        tracing::debug!(
            open = self.tracker.len(),
            "webhook server: listener closed, draining connections"
        );
        if tokio::time::timeout(grace, self.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                "webhook source: connections still open at the shutdown deadline; closing them"
            );
        }
        self.hard_stop.cancel();
    }
}

fn builder(header_read_timeout: Duration, limits: &Limits) -> auto::Builder<TokioExecutor> {
    let mut b = auto::Builder::new(TokioExecutor::new());
    b.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(header_read_timeout)
        .keep_alive(true)
        .max_buf_size(HTTP1_MAX_BUF_BYTES);
    b.http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.http2_max_concurrent_streams.max(1))
        .initial_stream_window_size(limits.http2_stream_window)
        .initial_connection_window_size(limits.http2_connection_window)
        .adaptive_window(false)
        .max_header_list_size(HTTP2_MAX_HEADER_LIST_BYTES);
    b
}

/// One accepted connection, before its protocol is known.
#[derive(Clone)]
struct Conn {
    builder: Arc<auto::Builder<TokioExecutor>>,
    router: Router,
    tls: Option<TlsAcceptor>,
    header_read_timeout: Duration,
    idle_timeout: Duration,
    draining: CancellationToken,
}

impl Conn {
    async fn run(self, stream: TcpStream) {
        let Some(tls) = &self.tls else {
            let io = FirstBytesDeadline::new(stream, self.header_read_timeout);
            return self.serve(io).await;
        };
        let handshake = tokio::time::timeout(self.header_read_timeout, tls.accept(stream)).await;
        let stream = match handshake {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "webhook TLS handshake failed");
                return;
            }
            Err(_) => {
                tracing::debug!("webhook TLS handshake did not finish in time");
                return;
            }
        };
        let io = FirstBytesDeadline::new(stream, self.header_read_timeout);
        self.serve(io).await;
    }

    /// Serves the connection until it ends; asks it to finish (HTTP/1.1: after the request in
    /// flight; HTTP/2: GOAWAY) when shutdown starts or when no request was in flight for
    /// `idle_timeout`. An idle connection asked to finish that then has no request in flight for
    /// `header_read_timeout` more and is still open (an HTTP/2 client that never acknowledges the
    /// PING following the GOAWAY) is dropped; requests it started meanwhile are answered first.
    async fn serve<I>(self, io: FirstBytesDeadline<I>)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (in_flight, mut activity) = watch::channel(0usize);
        let in_flight = Arc::new(in_flight);
        let router = self.router.layer(axum::middleware::from_fn(
            move |req: axum::extract::Request, next: axum::middleware::Next| {
                let request = InFlight::start(Arc::clone(&in_flight));
                async move {
                    let response = next.run(req).await;
                    drop(request);
                    response
                }
            },
        ));
        let conn = self
            .builder
            .serve_connection(TokioIo::new(io), TowerToHyperService::new(router));
        let mut conn = std::pin::pin!(conn);
        let mut state = ConnState::Serving;
        let ended = loop {
            // What `idle_for` waits for: a first idle period, then, once asked to finish, a
            // second one before the connection is dropped.
            let idle_wait = match state {
                ConnState::Serving => Some(self.idle_timeout),
                ConnState::ClosingIdle => Some(self.header_read_timeout),
                ConnState::Draining => None,
            };
            tokio::select! {
                ended = conn.as_mut() => break ended,
                () = self.draining.cancelled(), if state == ConnState::Serving => {
                    conn.as_mut().graceful_shutdown();
                    state = ConnState::Draining;
                }
                () = idle_for(&mut activity, idle_wait.unwrap_or_default()), if idle_wait.is_some() => {
                    if state == ConnState::ClosingIdle {
                        tracing::debug!("idle webhook connection did not finish in time; dropping it");
                        return;
                    }
                    tracing::debug!("webhook connection idle; closing it");
                    conn.as_mut().graceful_shutdown();
                    state = ConnState::ClosingIdle;
                }
            }
        };
        if let Err(e) = ended {
            // Resets, timeouts and clients that went away: routine, not worth more than debug.
            tracing::debug!(error = %e, "webhook connection ended with an error");
        }
    }
}

/// One request in flight on a connection; counted from its head to its answer.
struct InFlight(Arc<watch::Sender<usize>>);

impl InFlight {
    fn start(count: Arc<watch::Sender<usize>>) -> Self {
        count.send_modify(|n| *n += 1);
        Self(count)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n = n.saturating_sub(1));
    }
}

/// Where a connection is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ConnState {
    Serving,
    /// Asked to finish because the server is shutting down.
    Draining,
    /// Asked to finish because it was idle.
    ClosingIdle,
}

/// Resolves once no request has been in flight for `idle`.
async fn idle_for(activity: &mut watch::Receiver<usize>, idle: Duration) {
    loop {
        if activity.wait_for(|n| *n == 0).await.is_err() {
            // The connection's service is gone, so is the connection: nothing to time out.
            return std::future::pending().await;
        }
        tokio::select! {
            () = tokio::time::sleep(idle) => return,
            changed = activity.changed() => {
                if changed.is_err() {
                    return std::future::pending().await;
                }
            }
        }
    }
}

fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

/// The HTTP/2 connection preface (RFC 9113 §3.4).
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Bounds the time to a connection's first bytes. hyper's header-read timeout only starts once
/// the HTTP/1.1 parser runs, and hyper-util's protocol detection before it waits for as long as
/// the client likes; this closes that gap. The deadline holds until the bytes read either are a
/// whole HTTP/2 preface or cannot be one (for HTTP/1.1 that is the request's second byte), after
/// which hyper's own timers take over.
struct FirstBytesDeadline<I> {
    io: I,
    /// Preface bytes matched so far.
    matched: usize,
    /// `None` once the first bytes are in.
    deadline: Option<Pin<Box<Sleep>>>,
}

impl<I> FirstBytesDeadline<I> {
    fn new(io: I, timeout: Duration) -> Self {
        Self {
            io,
            matched: 0,
            deadline: Some(Box::pin(tokio::time::sleep(timeout))),
        }
    }

    fn observe(&mut self, new: &[u8]) {
        if new.is_empty() {
            // End of stream: nothing more to wait for.
            self.deadline = None;
            return;
        }
        for b in new {
            if H2_PREFACE.get(self.matched) != Some(b) {
                self.deadline = None;
                return;
            }
            self.matched += 1;
            if self.matched == H2_PREFACE.len() {
                self.deadline = None;
                return;
            }
        }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for FirstBytesDeadline<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.io).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if this.deadline.is_some() {
                    let new = buf.filled().get(before..).unwrap_or_default();
                    this.observe(new);
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                let expired = this
                    .deadline
                    .as_mut()
                    .is_some_and(|d| d.as_mut().poll(cx).is_ready());
                if expired {
                    this.deadline = None;
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "the connection's first bytes did not arrive in time",
                    )));
                }
                Poll::Pending
            }
        }
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for FirstBytesDeadline<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    #[tokio::test]
    async fn first_bytes_deadline_ends_silence_and_then_lets_go() {
        // Silent client: timed out.
        let (mut client, server) = tokio::io::duplex(64);
        let mut io = FirstBytesDeadline::new(server, Duration::from_millis(50));
        let mut buf = [0u8; 8];
        let e = io.read(&mut buf).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        // HTTP/1.1: released at the first byte that is not the preface's.
        let mut io = FirstBytesDeadline::new(tokio::io::duplex(64).1, Duration::from_millis(50));
        io.observe(b"PO");
        assert!(io.deadline.is_none());
        // A preface trickled byte by byte stays under the deadline until complete.
        let mut io2 = FirstBytesDeadline::new(tokio::io::duplex(64).1, Duration::from_secs(1));
        for b in H2_PREFACE.iter().take(23) {
            io2.observe(&[*b]);
            assert!(io2.deadline.is_some());
        }
        io2.observe(&H2_PREFACE[23..]);
        assert!(io2.deadline.is_none());
        // Once released, a quiet connection is not timed out by the wrapper.
        let (mut client2, server2) = tokio::io::duplex(64);
        let mut io3 = FirstBytesDeadline::new(server2, Duration::from_millis(20));
        client2.write_all(b"GET").await.unwrap();
        let n = io3.read(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"GET");
        let quiet = tokio::time::timeout(Duration::from_millis(100), io3.read(&mut buf)).await;
        assert!(quiet.is_err(), "no error after the first bytes");
        client.shutdown().await.unwrap();
    }
}
