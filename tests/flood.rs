//! The webhook port under a flood, before any signature can be checked. The real binary runs as
//! a child process (so its memory and file descriptors are its own, read from `/proc/<pid>`),
//! delivering to a real NATS JetStream (`FONDO_BRIDGE_TEST_NATS`); the flood is written as raw
//! bytes on TCP sockets (HTTP/1.1, and HTTP/2 with prior knowledge framed by hand), so no client
//! library smooths it out:
//!
//! - `flood_keeps_memory_bounded_and_genuine_webhooks_through`: 10 h2c connections of 200
//!   streams each, then 200 h2c connections of 32 streams with 1 KiB bodies, then 2 000 HTTP/1.1
//!   connections; every request with a well-formed but forged signature and a body whose last
//!   byte never comes (1 MiB, the largest allowed, unless said otherwise). In each phase the
//!   bridge's peak RSS stays under a stated bound, it never holds more connections than its
//!   limit, every flood connection is closed by the bridge, and genuine webhooks (HTTP/1.1 and
//!   h2c) sent once the flood has taken the body budget get their 200 and are in the stream.
//! - `body_budget_refuses_with_503_and_gives_back`: the budget's rules one by one, with no
//!   timing in play.
//! - `idle_and_stalled_connections_are_closed`: silent, idle keep-alive, idle HTTP/2 (GOAWAY)
//!   and stalled-body connections are closed by the bridge.
//!
//! File descriptors: the flood needs about 2 100 in this process (and the bridge inherits the
//! limit). When the soft limit is lower, the test raises it to the hard limit with `prlimit(1)`
//! on its own pid (the crate forbids the `unsafe` a direct `setrlimit` would need), and fails
//! with an explanation when even the hard limit is too low.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use async_nats::jetstream;
use base64::Engine as _;
use fondo_bridge::config::REQUEST_ALLOWANCE_BYTES;
use fondo_bridge::simulator::webhook_sender::sign_standard;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::net::tcp::OwnedReadHalf;

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const PATH: &str = "/fondo/webhooks/callback";
const KIB: usize = 1024;
const MIB: usize = 1024 * 1024;
/// What every flood request declares: the largest body the bridge allows (`max_body_bytes`).
const FLOOD_BODY: usize = MIB;
/// Written in every flood body: must never show up in the bridge's logs.
const FLOOD_MARKER: &str = "FLOOD-PAYLOAD-MARKER";

// The flood.
const H1_CONNECTIONS: usize = 2000;
const H2_CONNECTIONS: usize = 10;
const H2_STREAMS: u32 = 200;
/// The cheap variant: many connections, every stream within the limit, small bodies (the budget
/// must bound the number of requests in progress, not only their bytes).
const H2_SMALL_CONNECTIONS: usize = 200;
const H2_SMALL_BODY: usize = KIB;

// The bridge under test: shipped defaults, except a connection limit below the flood's size (so
// the limit is reached), a backlog that queues the whole flood, and short timeouts (so the test
// sees connections closed without waiting for production's).
const MAX_CONNECTIONS: usize = 512;
const LISTEN_BACKLOG: usize = 2048;
const HEADER_READ_TIMEOUT_MS: u64 = 3000;
const REQUEST_TIMEOUT_MS: u64 = 10_000;
const IDLE_TIMEOUT_MS: u64 = 3000;
/// `sources.webhook.limits` defaults the bound below relies on.
const BODY_BUDGET: usize = 64 * MIB;
const H2_MAX_STREAMS: u32 = 32;
const H2_STREAM_WINDOW: u32 = 64 * 1024;

/// What one open connection may cost the bridge beyond the body budget: hyper's HTTP/1.1 read
/// buffer (it grows up to 128 KiB while a body streams through it), its buffers and protocol
/// state otherwise (measured on the debug build: 12 KiB silent, 38 KiB with a partial HTTP/1.1
/// head, 45 KiB for an idle HTTP/2 connection), the task.
const PER_CONNECTION: usize = 192 * KIB;
/// Allocator slack: freed memory mimalloc keeps for reuse, thread caches, the metrics registry.
const SLACK: usize = 64 * MIB;

/// How long any one phase may take before the test fails (generous: a debug build on 2 shared
/// cores, with other test binaries running).
const PHASE: Duration = Duration::from_secs(90);

// ---------- the bridge as a child process ----------

struct Bridge {
    child: Child,
    webhook: u16,
    admin: u16,
    stream: String,
    nats: String,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Bridge {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `limits` is the YAML of `sources.webhook.limits`.
fn start_bridge(nats: &str, limits: &str) -> Bridge {
    let dir = tempfile::tempdir().unwrap();
    let webhook = common::free_port();
    let admin = common::free_port();
    let name = common::unique("flood").replace('-', "_");
    let stream = name.to_uppercase();
    let cfg = format!(
        r#"
sources:
  webhook:
    listen: 127.0.0.1:{webhook}
    signature: {{ scheme: standard-webhooks }}
    header_read_timeout_ms: {HEADER_READ_TIMEOUT_MS}
    request_timeout_ms: {REQUEST_TIMEOUT_MS}
    ack_timeout_ms: 20000
    limits: {limits}
sinks:
  nats:
    type: nats
    url: "{nats}"
    streams: [{{ name: {stream}, subjects: ["{name}.>"], storage: memory }}]
routes:
  - {{ name: all, match: ["*"], to: [{{ sink: nats, topic: "{name}.{{entity}}" }}] }}
event: {{ id_header: webhook-id }}
dead_letter: {{ fallback_file: {dir}/dead-letter.jsonl }}
admin: {{ listen: 127.0.0.1:{admin} }}
"#,
        dir = dir.path().display(),
    );
    let path = dir.path().join("bridge.yaml");
    std::fs::write(&path, cfg).unwrap();
    let log = dir.path().join("bridge.log");
    let child = Command::new(env!("CARGO_BIN_EXE_fondo-bridge"))
        .args(["run", "--config"])
        .arg(&path)
        .env(
            "FONDO_BRIDGE__SOURCES__WEBHOOK__SIGNATURE__SECRETS",
            format!("[\"{SECRET}\"]"),
        )
        .env(
            "RUST_LOG",
            std::env::var("FLOOD_BRIDGE_LOG").unwrap_or_else(|_| "info".into()),
        )
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let bridge = Bridge {
        child,
        webhook,
        admin,
        stream,
        nats: nats.to_owned(),
        log,
        _dir: dir,
    };
    wait_ready(&bridge);
    bridge
}

fn wait_ready(b: &Bridge) {
    let deadline = Instant::now() + PHASE;
    while Instant::now() < deadline {
        if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", b.admin)) {
            use std::io::{Read, Write};
            let _ = s.write_all(b"GET /readyz HTTP/1.0\r\n\r\n");
            let mut buf = String::new();
            let _ = s.read_to_string(&mut buf);
            if buf.starts_with("HTTP/1.0 200") || buf.starts_with("HTTP/1.1 200") {
                return;
            }
        }
        // Poll interval of this blocking wait (its failure message carries the bridge's log).
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!(
        "bridge not ready on admin port {}; its log:\n{}",
        b.admin,
        std::fs::read_to_string(&b.log).unwrap_or_default()
    );
}

impl Bridge {
    fn url(&self) -> String {
        format!("http://127.0.0.1:{}{PATH}", self.webhook)
    }

    fn addr(&self) -> std::net::SocketAddr {
        ([127, 0, 0, 1], self.webhook).into()
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The sum of a metric's series whose line contains every one of `parts`.
    async fn metric(&self, name: &str, parts: &[&str]) -> f64 {
        let text = reqwest::get(format!("http://127.0.0.1:{}/metrics", self.admin))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines()
            .filter(|l| l.starts_with(name) && parts.iter().all(|p| l.contains(p)))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    async fn budget_refusals(&self) -> f64 {
        self.metric(
            "fondo_bridge_rejected_total",
            &["source=\"webhook\"", "reason=\"body_budget\""],
        )
        .await
    }

    /// Messages in the test's JetStream stream.
    async fn stored(&self) -> u64 {
        let js = jetstream::new(async_nats::connect(&self.nats).await.unwrap());
        let mut stream = js.get_stream(&self.stream).await.unwrap();
        stream.info().await.unwrap().state.messages
    }

    async fn delete_stream(&self) {
        let js = jetstream::new(async_nats::connect(&self.nats).await.unwrap());
        let _ = js.delete_stream(&self.stream).await;
    }
}

// ---------- this process's file descriptors ----------

/// `(soft, hard)` open-file limits of a process.
fn nofile(pid: u32) -> (u64, u64) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    let nums: Vec<u64> = line
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    (nums[0], nums[1])
}

/// Makes sure this process (and so the bridge it starts) may open `needed` files.
fn ensure_fd_limit(needed: u64) {
    let pid = std::process::id();
    let (soft, hard) = nofile(pid);
    if soft >= needed {
        return;
    }
    assert!(
        hard >= needed,
        "the flood needs {needed} open files but the hard limit is {hard}: raise it (`ulimit -Hn`, or LimitNOFILE / the container's nofile ulimit) and run again"
    );
    let ok = Command::new("prlimit")
        .args([
            "--pid",
            &pid.to_string(),
            &format!("--nofile={hard}:{hard}"),
        ])
        .status()
        .is_ok_and(|s| s.success());
    let (soft, _) = nofile(pid);
    assert!(
        ok && soft >= needed,
        "the flood needs {needed} open files; the soft limit is {soft} and `prlimit --pid {pid} --nofile={hard}:{hard}` did not raise it: run `ulimit -n {hard}` before cargo test"
    );
}

// ---------- the bridge's memory and descriptors ----------

fn vm_rss(pid: u32) -> usize {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<usize>().ok())
        .map_or(0, |kib| kib * KIB)
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

/// Samples the bridge's RSS and open descriptors every 20 ms on its own thread (so a busy test
/// runtime cannot skip the peak), until stopped.
struct Sampler {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<(usize, usize)>,
}

impl Sampler {
    fn start(pid: u32) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let s = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let (mut rss, mut fds) = (0, 0);
            while !s.load(Ordering::Relaxed) {
                rss = rss.max(vm_rss(pid));
                fds = fds.max(open_fds(pid));
                // The sampling interval.
                std::thread::sleep(Duration::from_millis(20));
            }
            (rss, fds)
        });
        Self { stop, thread }
    }

    /// `(peak RSS bytes, peak open descriptors)`.
    fn stop(self) -> (usize, usize) {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap()
    }
}

// ---------- requests ----------

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// A well-formed Standard Webhooks signature that is not the right one.
fn forged_signature() -> String {
    format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode([0x42u8; 32])
    )
}

fn flood_body() -> Arc<Vec<u8>> {
    let mut body =
        format!(r#"{{"eventType":"order.update","note":"{FLOOD_MARKER}","pad":""#).into_bytes();
    body.resize(FLOOD_BODY - 2, b'x');
    body.extend_from_slice(br#""}"#);
    Arc::new(body)
}

fn order(id: &str) -> Vec<u8> {
    format!(r#"{{"eventType":"order.update","current":{{"id":"{id}","clientId":"c-flood"}}}}"#)
        .into_bytes()
}

/// An HTTP/1.1 request head with Standard Webhooks headers.
fn h1_head(id: &str, signature: &str, content_length: usize, extra: &str) -> Vec<u8> {
    format!(
        "POST {PATH} HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\ncontent-length: {content_length}\r\nwebhook-id: {id}\r\nwebhook-timestamp: {ts}\r\nwebhook-signature: {signature}\r\n{extra}\r\n",
        ts = now()
    )
    .into_bytes()
}

fn signed_h1(id: &str, body: &[u8], extra: &str) -> Vec<u8> {
    let mut req = h1_head(
        id,
        &sign_standard(SECRET, id, now(), body),
        body.len(),
        extra,
    );
    req.extend_from_slice(body);
    req
}

/// An HTTP/1.1 answer read off a socket.
#[derive(Debug, Default, Clone)]
struct Answer {
    status: u16,
    retry_after: Option<u64>,
    close: bool,
}

/// Parses the first complete response head in `buf`, if there is one.
fn parse_answer(buf: &[u8]) -> Option<(Answer, usize)> {
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
    let mut lines = head.lines();
    let status = lines.next()?.split_whitespace().nth(1)?.parse().ok()?;
    let mut a = Answer {
        status,
        ..Answer::default()
    };
    let mut len = 0;
    for l in lines {
        if let Some(v) = l.strip_prefix("retry-after:") {
            a.retry_after = v.trim().parse().ok();
        }
        if let Some(v) = l.strip_prefix("connection:") {
            a.close = v.trim() == "close";
        }
        if let Some(v) = l.strip_prefix("content-length:") {
            len = v.trim().parse().unwrap_or(0);
        }
    }
    (buf.len() >= end + len).then_some((a, end + len))
}

/// Reads one answer; `None` when the connection ended first.
async fn read_answer(rd: &mut OwnedReadHalf, buf: &mut Vec<u8>) -> Option<Answer> {
    let mut chunk = [0u8; 4096];
    loop {
        if let Some((a, used)) = parse_answer(buf) {
            buf.drain(..used);
            return Some(a);
        }
        match rd.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// Reads until the server closes the connection (end of stream or reset), for at most `within`.
/// `true` when it closed.
async fn closed_within(rd: &mut OwnedReadHalf, within: Duration) -> bool {
    let mut chunk = [0u8; 4096];
    let wait = async {
        loop {
            match rd.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(within, wait).await.is_ok()
}

/// What happened to one HTTP/1.1 flood connection.
#[derive(Debug, Default)]
struct H1Outcome {
    connected: bool,
    answer: Option<Answer>,
    /// The bridge closed the connection (end of stream or reset) before the test gave up.
    closed: bool,
}

/// One HTTP/1.1 flood connection: the head of a 1 MiB forged request and all of its body but the
/// last byte, then silence, until the bridge answers and closes.
async fn h1_staller(addr: std::net::SocketAddr, i: usize, body: Arc<Vec<u8>>) -> H1Outcome {
    let mut out = H1Outcome::default();
    let Ok(Ok(s)) = tokio::time::timeout(PHASE, TcpStream::connect(addr)).await else {
        return out;
    };
    out.connected = true;
    let (mut rd, mut wr) = s.into_split();
    let head = h1_head(
        &format!("flood-h1-{i}"),
        &forged_signature(),
        FLOOD_BODY,
        "",
    );
    // Written alongside the reads: the bridge may answer before taking the body.
    let writer = tokio::spawn(async move {
        if wr.write_all(&head).await.is_ok() {
            let _ = wr.write_all(&body[..FLOOD_BODY - 1]).await;
        }
        // Kept open: the last byte never comes.
        wr
    });
    let mut buf = Vec::new();
    let answer = tokio::time::timeout(PHASE, read_answer(&mut rd, &mut buf)).await;
    match answer {
        Ok(Some(a)) => {
            out.answer = Some(a);
            out.closed = closed_within(&mut rd, PHASE).await;
        }
        // Closed (or reset) without an answer we could read.
        Ok(None) => out.closed = true,
        Err(_) => {}
    }
    let _wr = writer.await;
    out
}

// ---------- HTTP/2 with prior knowledge, by hand ----------

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const WINDOW_UPDATE: u8 = 0x8;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const ACK: u8 = 0x1;
const REFUSED_STREAM: u32 = 0x7;
const SETTINGS_MAX_CONCURRENT_STREAMS: u16 = 0x3;
const SETTINGS_INITIAL_WINDOW_SIZE: u16 = 0x4;
/// The protocol's initial windows, before any SETTINGS or WINDOW_UPDATE.
const H2_DEFAULT_WINDOW: i64 = 65_535;
const MAX_FRAME: usize = 16 * 1024;

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(9 + payload.len());
    f.extend_from_slice(&(payload.len() as u32).to_be_bytes()[1..]);
    f.push(kind);
    f.push(flags);
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// HPACK: an integer with a 7-bit prefix (string lengths, no Huffman).
fn hpack_len(out: &mut Vec<u8>, mut n: usize) {
    if n < 127 {
        out.push(n as u8);
        return;
    }
    out.push(127);
    n -= 127;
    while n >= 128 {
        out.push((n % 128 + 128) as u8);
        n /= 128;
    }
    out.push(n as u8);
}

/// HPACK: a literal header field without indexing, new name.
fn hpack(headers: &[(&str, &str)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, value) in headers {
        out.push(0);
        hpack_len(&mut out, name.len());
        out.extend_from_slice(name.as_bytes());
        hpack_len(&mut out, value.len());
        out.extend_from_slice(value.as_bytes());
    }
    out
}

fn h2_request_headers(id: &str, signature: &str, content_length: usize) -> Vec<u8> {
    let ts = now().to_string();
    let len = content_length.to_string();
    hpack(&[
        (":method", "POST"),
        (":scheme", "http"),
        (":path", PATH),
        (":authority", "127.0.0.1"),
        ("content-type", "application/json"),
        ("content-length", &len),
        ("webhook-id", id),
        ("webhook-timestamp", &ts),
        ("webhook-signature", signature),
    ])
}

struct Frame {
    kind: u8,
    flags: u8,
    stream: u32,
    payload: Vec<u8>,
}

/// Reads one frame; `None` at end of stream or on an error.
async fn read_frame(rd: &mut OwnedReadHalf, buf: &mut Vec<u8>) -> Option<Frame> {
    let mut chunk = vec![0u8; 64 * KIB];
    loop {
        if buf.len() >= 9 {
            let len = u32::from_be_bytes([0, buf[0], buf[1], buf[2]]) as usize;
            if buf.len() >= 9 + len {
                let f = Frame {
                    kind: buf[3],
                    flags: buf[4],
                    stream: u32::from_be_bytes([buf[5], buf[6], buf[7], buf[8]]) & 0x7fff_ffff,
                    payload: buf[9..9 + len].to_vec(),
                };
                buf.drain(..9 + len);
                return Some(f);
            }
        }
        match rd.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// What happened on one h2c flood connection.
#[derive(Debug, Default)]
struct H2Outcome {
    /// The server's SETTINGS, as sent.
    max_concurrent_streams: Option<u32>,
    initial_window: Option<u32>,
    /// Streams refused with `REFUSED_STREAM` (over the stream limit).
    refused: u32,
    /// Streams the bridge answered (a response HEADERS frame: 503 for want of budget, 408 for
    /// a body that never finished).
    answered: u32,
    /// Streams reset with another error code, by code.
    resets: std::collections::BTreeMap<u32, u32>,
    /// GOAWAY received, and its error code.
    goaway: Option<u32>,
    /// The last GOAWAY's last stream id: streams above it were not processed (a client retries
    /// them on a new connection).
    last_stream: Option<u32>,
    /// Streams that ended without an answer or a reset.
    unanswered: Vec<u32>,
    /// The bridge closed the connection before the test gave up.
    closed: bool,
    /// Body bytes sent, over all streams.
    sent: usize,
}

/// Per stream: body bytes sent and the window left; `None` once the stream is over.
type Streams = HashMap<u32, Option<(usize, i64)>>;

/// An HTTP/2 client with prior knowledge that follows flow control (so the bridge cannot tell it
/// from a real one) but never ends a body: `streams` requests with a forged signature and a
/// `Content-Length` of `declared`, each sent up to its last byte, as fast as the windows allow;
/// then it waits for the bridge to close the connection. With `streams == 0` it only opens the
/// connection and waits.
async fn h2_flood(
    addr: std::net::SocketAddr,
    conn: usize,
    streams: u32,
    declared: usize,
) -> H2Outcome {
    let mut out = H2Outcome::default();
    let s = TcpStream::connect(addr).await.unwrap();
    let (mut rd, mut wr) = s.into_split();
    let mut setup = PREFACE.to_vec();
    setup.extend(frame(SETTINGS, 0, 0, &[]));
    wr.write_all(&setup).await.unwrap();
    let mut buf = Vec::new();
    // The server's SETTINGS first, acknowledged before any request.
    let mut stream_window = H2_DEFAULT_WINDOW;
    loop {
        let Some(f) = read_frame(&mut rd, &mut buf).await else {
            out.closed = true;
            return out;
        };
        if f.kind == SETTINGS && f.flags & ACK == 0 {
            for p in f.payload.chunks_exact(6) {
                let id = u16::from_be_bytes([p[0], p[1]]);
                let v = u32_at(p, 2);
                match id {
                    SETTINGS_MAX_CONCURRENT_STREAMS => out.max_concurrent_streams = Some(v),
                    SETTINGS_INITIAL_WINDOW_SIZE => {
                        out.initial_window = Some(v);
                        stream_window = i64::from(v);
                    }
                    _ => {}
                }
            }
            wr.write_all(&frame(SETTINGS, ACK, 0, &[])).await.unwrap();
            break;
        }
    }
    let body = flood_body();
    let signature = forged_signature();
    let mut open: Streams = HashMap::new();
    let mut requests = Vec::new();
    for n in 0..streams {
        let id = 2 * n + 1;
        let block = h2_request_headers(&format!("flood-h2-{conn}-{id}"), &signature, declared);
        requests.extend(frame(HEADERS, END_HEADERS, id, &block));
        open.insert(id, Some((0, stream_window)));
    }
    wr.write_all(&requests).await.unwrap();
    let mut conn_window = H2_DEFAULT_WINDOW;
    let deadline = tokio::time::Instant::now() + PHASE;
    loop {
        // Send what the windows allow.
        let mut batch = Vec::new();
        for (&id, state) in open.iter_mut() {
            let Some((sent, window)) = state else {
                continue;
            };
            let left = declared - 1 - *sent;
            let n = left
                .min(MAX_FRAME)
                .min(*window as usize)
                .min(conn_window.max(0) as usize);
            if n > 0 {
                batch.extend(frame(DATA, 0, id, &body[*sent..*sent + n]));
                *sent += n;
                *window -= n as i64;
                conn_window -= n as i64;
                out.sent += n;
            }
        }
        if !batch.is_empty() && wr.write_all(&batch).await.is_err() {
            out.closed = true;
            break;
        }
        let next = tokio::time::timeout_at(deadline, read_frame(&mut rd, &mut buf)).await;
        let f = match next {
            Err(_) => break,
            Ok(None) => {
                out.closed = true;
                break;
            }
            Ok(Some(f)) => f,
        };
        match f.kind {
            WINDOW_UPDATE if f.payload.len() == 4 => {
                let inc = i64::from(u32_at(&f.payload, 0) & 0x7fff_ffff);
                if f.stream == 0 {
                    conn_window += inc;
                } else if let Some(Some((_, w))) = open.get_mut(&f.stream) {
                    *w += inc;
                }
            }
            RST_STREAM if f.payload.len() == 4 => {
                // A reset after the answer (the body was not wanted) is no news.
                if let Some(Some(_)) = open.insert(f.stream, None) {
                    match u32_at(&f.payload, 0) {
                        REFUSED_STREAM => out.refused += 1,
                        code => *out.resets.entry(code).or_default() += 1,
                    }
                }
            }
            HEADERS => {
                out.answered += 1;
                open.insert(f.stream, None);
            }
            GOAWAY if f.payload.len() >= 8 => {
                out.goaway = Some(u32_at(&f.payload, 4));
                out.last_stream = Some(u32_at(&f.payload, 0) & 0x7fff_ffff);
            }
            PING if f.flags & ACK == 0 => {
                let _ = wr.write_all(&frame(PING, ACK, 0, &f.payload)).await;
            }
            SETTINGS if f.flags & ACK == 0 => {
                let _ = wr.write_all(&frame(SETTINGS, ACK, 0, &[])).await;
            }
            _ => {}
        }
    }
    drop(wr);
    out.unanswered = open
        .iter()
        .filter(|(_, s)| s.is_some())
        .map(|(id, _)| *id)
        .collect();
    out.unanswered.sort_unstable();
    out
}

// ---------- genuine webhooks ----------

/// Delivers one signed webhook as Fondo does: on 503 it waits `Retry-After` and sends the same
/// delivery again, until 200. Returns the 503s it got. Every 503 must carry `Retry-After`.
async fn deliver_like_fondo(client: &reqwest::Client, url: &str, id: &str) -> u32 {
    let body = order(id);
    let deadline = Instant::now() + PHASE;
    let mut refused = 0;
    loop {
        assert!(
            Instant::now() < deadline,
            "genuine webhook {id} not delivered within {PHASE:?} ({refused} times 503)"
        );
        let ts = now();
        let sent = client
            .post(url)
            .header("content-type", "application/json")
            .header("webhook-id", id)
            .header("webhook-timestamp", ts.to_string())
            .header("webhook-signature", sign_standard(SECRET, id, ts, &body))
            .body(body.clone())
            .send()
            .await;
        let r = match sent {
            Ok(r) => r,
            Err(e) => {
                // A connection closed under it: Fondo retries, so does this.
                eprintln!("genuine webhook {id}: {e}; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        match r.status().as_u16() {
            200 => return refused,
            503 => {
                refused += 1;
                let after: u64 = r
                    .headers()
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse().ok())
                    .expect("a 503 carries Retry-After");
                tokio::time::sleep(Duration::from_secs(after)).await;
            }
            other => panic!("genuine webhook {id} answered {other}"),
        }
    }
}

fn limits_yaml() -> String {
    format!(
        "{{ max_connections: {MAX_CONNECTIONS}, listen_backlog: {LISTEN_BACKLOG}, idle_timeout_ms: {IDLE_TIMEOUT_MS} }}"
    )
}

// ---------- the flood ----------

/// Which flood a phase sends.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Flood {
    /// `H2_CONNECTIONS` h2c connections of `H2_STREAMS` streams each, 1 MiB bodies.
    H2c,
    /// `H2_SMALL_CONNECTIONS` h2c connections of as many streams as allowed, 1 KiB bodies.
    H2cSmall,
    /// `H1_CONNECTIONS` HTTP/1.1 connections, 1 MiB bodies.
    Http1,
}

impl Flood {
    /// `(connections, streams each, declared body)` of an h2c flood.
    fn h2(self) -> (usize, u32, usize) {
        match self {
            Self::H2c => (H2_CONNECTIONS, H2_STREAMS, FLOOD_BODY),
            Self::H2cSmall => (H2_SMALL_CONNECTIONS, H2_MAX_STREAMS, H2_SMALL_BODY),
            Self::Http1 => (0, 0, 0),
        }
    }
}

/// What the test and the bridge share across phases.
struct Rig {
    bridge: Bridge,
    h1: reqwest::Client,
    h2: reqwest::Client,
    /// RSS and open descriptors before any flood.
    baseline_rss: usize,
    baseline_fds: usize,
}

impl Rig {
    /// The RSS the bridge must stay under: what it had before the flood, plus what the limits
    /// let a flood pin (the body budget, which also covers each request's head and state, and
    /// every allowed connection's own buffers and state), plus allocator slack. Without the
    /// limits, the same floods took the same debug build to 1.3 GiB (h2c) and 2.8 GiB (HTTP/1.1).
    fn bound(&self) -> usize {
        self.baseline_rss + BODY_BUDGET + MAX_CONNECTIONS * PER_CONNECTION + SLACK
    }
}

/// One flood, measured: the genuine webhooks go once the flood has exhausted the body budget
/// (stalled bodies hold it and later requests are refused), and must get their 200 as Fondo
/// would (retrying on 503 after `Retry-After`).
async fn flood_phase(rig: &Rig, flood: Flood) {
    let bridge = &rig.bridge;
    let pid = bridge.child.id();
    let refusals_before = bridge.budget_refusals().await;
    let sampler = Sampler::start(pid);
    let started = Instant::now();
    let addr = bridge.addr();
    let body = flood_body();
    let (h2_connections, h2_streams, h2_declared) = flood.h2();
    let h2_tasks: Vec<_> = (0..h2_connections)
        .map(|c| tokio::spawn(h2_flood(addr, c, h2_streams, h2_declared)))
        .collect();
    let h1_tasks: Vec<_> = match flood {
        Flood::Http1 => (0..H1_CONNECTIONS)
            .map(|i| tokio::spawn(h1_staller(addr, i, Arc::clone(&body))))
            .collect(),
        _ => Vec::new(),
    };
    common::eventually_async("the flood exhausts the body budget", PHASE, || async {
        bridge.budget_refusals().await > refusals_before
    })
    .await;
    let genuine_start = started.elapsed();
    let url = bridge.url();
    let (id_h1, id_h2) = (
        format!("genuine-h1-{flood:?}"),
        format!("genuine-h2-{flood:?}"),
    );
    let (refused_h1, refused_h2) = tokio::join!(
        deliver_like_fondo(&rig.h1, &url, &id_h1),
        deliver_like_fondo(&rig.h2, &url, &id_h2),
    );
    let genuine_done = started.elapsed();
    // Every flood connection ends: closed by the bridge (asserted below).
    let mut h1_out = Vec::new();
    for t in h1_tasks {
        h1_out.push(t.await.unwrap());
    }
    let mut h2_out = Vec::new();
    for t in h2_tasks {
        h2_out.push(t.await.unwrap());
    }
    let flood_over = started.elapsed();
    let (peak_rss, peak_fds) = sampler.stop();
    // The "1 s after" RSS figure: a second for the bridge to release the flood's memory.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after_rss = vm_rss(pid);

    let mut statuses: HashMap<u16, usize> = HashMap::new();
    for a in h1_out.iter().filter_map(|o| o.answer.as_ref()) {
        *statuses.entry(a.status).or_default() += 1;
    }
    let unanswered = h1_out.iter().filter(|o| o.answer.is_none()).count();
    let refused_streams: u32 = h2_out.iter().map(|o| o.refused).sum();
    let answered_streams: u32 = h2_out.iter().map(|o| o.answered).sum();
    let h2_sent: usize = h2_out.iter().map(|o| o.sent).sum();
    let bound = rig.bound();
    let mb = |b: usize| b as f64 / MIB as f64;
    eprintln!(
        "FLOOD {flood:?}: rss baseline {:.1} MiB, peak {:.1} MiB, 1 s after {:.1} MiB, bound {:.1} MiB; \
         fds baseline {}, peak {peak_fds}; \
         http1 answers {statuses:?}, {unanswered} closed unanswered; \
         h2c {refused_streams} streams refused, {answered_streams} answered, {:.1} MiB of body sent; \
         genuine sent at {genuine_start:?}, delivered at {genuine_done:?} after {refused_h1} + {refused_h2} 503s; \
         flood connections all closed by {flood_over:?}",
        mb(rig.baseline_rss),
        mb(peak_rss),
        mb(after_rss),
        mb(bound),
        rig.baseline_fds,
        mb(h2_sent),
    );

    // Memory: bounded by the limits, not by what the flood declared (2 000 × 1 MiB on
    // HTTP/1.1 or h2c, 6 400 requests on h2c).
    assert!(
        peak_rss < bound,
        "{flood:?}: peak RSS {:.1} MiB is over the bound {:.1} MiB",
        mb(peak_rss),
        mb(bound)
    );
    // Connections: never more accepted than the limit (the rest waited in the backlog); a few
    // descriptors more for the admin port the test polls.
    assert!(
        peak_fds <= rig.baseline_fds + MAX_CONNECTIONS + 8,
        "{flood:?}: peak {peak_fds} open descriptors: more than the {MAX_CONNECTIONS} connection limit over the baseline {}",
        rig.baseline_fds
    );
    // HTTP/1.1: every flood connection was queued, was closed by the bridge, and what it heard
    // was a refusal: 503 with Retry-After (no budget) or 408 (the body never finished).
    for o in &h1_out {
        assert!(o.connected, "every flood connection was queued: {o:?}");
        assert!(o.closed, "a flood connection was left open: {o:?}");
        if let Some(a) = &o.answer {
            assert!(
                a.status == 503 || a.status == 408,
                "a forged request was answered {a:?}"
            );
            assert!(
                a.close,
                "a refused HTTP/1.1 request closes its connection: {a:?}"
            );
            if a.status == 503 {
                assert_eq!(a.retry_after, Some(1), "503 carries Retry-After: {a:?}");
            }
        }
    }
    // HTTP/2: the advertised limits are the configured ones, streams over the limit were
    // refused, every admitted stream was answered (503 or 408), and each connection was closed
    // with GOAWAY once idle.
    for o in &h2_out {
        assert_eq!(o.max_concurrent_streams, Some(H2_MAX_STREAMS), "{o:?}");
        assert_eq!(o.initial_window, Some(H2_STREAM_WINDOW), "{o:?}");
        assert_eq!(
            o.refused + o.answered,
            h2_streams,
            "every stream ended: {o:?}"
        );
        assert!(
            o.refused >= h2_streams.saturating_sub(H2_MAX_STREAMS),
            "streams over the limit are refused: {o:?}"
        );
        assert_eq!(
            o.goaway,
            Some(0),
            "idle connection closed with GOAWAY(NO_ERROR): {o:?}"
        );
        assert!(o.closed, "{o:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flood_keeps_memory_bounded_and_genuine_webhooks_through() {
    let Some(nats) = common::broker("NATS") else {
        return;
    };
    ensure_fd_limit((H1_CONNECTIONS + H2_CONNECTIONS + 256) as u64);
    let bridge = start_bridge(&nats, &limits_yaml());
    let pid = bridge.child.id();
    let h1 = reqwest::Client::builder().http1_only().build().unwrap();
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    // Warm up (first request, first publish), then the baseline.
    assert_eq!(
        deliver_like_fondo(&h1, &bridge.url(), "genuine-warm-up").await,
        0
    );
    // Settles after the warm-up before the baseline RSS and fd counts are taken.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rig = Rig {
        baseline_rss: vm_rss(pid),
        baseline_fds: open_fds(pid),
        bridge,
        h1,
        h2,
    };
    flood_phase(&rig, Flood::Http1).await;
    flood_phase(&rig, Flood::H2c).await;
    flood_phase(&rig, Flood::H2cSmall).await;
    let bridge = &rig.bridge;
    // The genuine webhooks are in the stream: the warm-up and two per phase.
    assert_eq!(bridge.stored().await, 7);
    // The refusals were logged; no body was.
    let log = bridge.log_text();
    assert!(log.contains("body budget"), "the refusal is logged");
    assert!(
        !log.contains(FLOOD_MARKER),
        "a request body reached the log"
    );
    bridge.delete_stream().await;
}

// ---------- the budget's rules ----------

/// A connection that sent a request head with `Expect: 100-continue`: hyper answers 100 only
/// when the handler starts reading the body, which is after the budget covered it, so the 100
/// is the proof that the reservation is held.
async fn reserve_with_expect(
    addr: std::net::SocketAddr,
    id: &str,
) -> (OwnedReadHalf, tokio::net::tcp::OwnedWriteHalf) {
    let s = TcpStream::connect(addr).await.unwrap();
    let (mut rd, mut wr) = s.into_split();
    let head = h1_head(
        id,
        &forged_signature(),
        FLOOD_BODY,
        "expect: 100-continue\r\n",
    );
    wr.write_all(&head).await.unwrap();
    let mut buf = Vec::new();
    let a = tokio::time::timeout(PHASE, read_answer(&mut rd, &mut buf))
        .await
        .unwrap()
        .expect("an answer");
    assert_eq!(a.status, 100, "the body is wanted: its bytes are reserved");
    (rd, wr)
}

async fn exchange(addr: std::net::SocketAddr, request: &[u8]) -> Option<Answer> {
    let s = TcpStream::connect(addr).await.unwrap();
    let (mut rd, mut wr) = s.into_split();
    let request = request.to_vec();
    let writer = tokio::spawn(async move {
        let _ = wr.write_all(&request).await;
        wr
    });
    let mut buf = Vec::new();
    let a = tokio::time::timeout(PHASE, read_answer(&mut rd, &mut buf))
        .await
        .unwrap();
    let _ = writer.await;
    a
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn body_budget_refuses_with_503_and_gives_back() {
    let Some(nats) = common::broker("NATS") else {
        return;
    };
    // Room for two requests with bodies of the largest size (each also counts a 16 KiB
    // allowance for its head and state).
    let budget = 2 * (FLOOD_BODY + REQUEST_ALLOWANCE_BYTES);
    let bridge = start_bridge(&nats, &format!("{{ body_budget_bytes: {budget} }}"));
    let addr = bridge.addr();
    let small = order("budget-small");

    // Two 1 MiB reservations take the whole budget.
    let (mut rd_a, mut wr_a) = reserve_with_expect(addr, "budget-a").await;
    let (_rd_b, _wr_b) = reserve_with_expect(addr, "budget-b").await;

    // Now even a small genuine webhook is refused, at once, with Retry-After and Connection: close.
    let a = exchange(addr, &signed_h1("budget-small", &small, ""))
        .await
        .unwrap();
    assert_eq!(a.status, 503, "{a:?}");
    assert_eq!(a.retry_after, Some(1));
    assert!(a.close);
    // So is a chunked body (no Content-Length): refused at the chunk the budget cannot cover.
    let mut chunked = format!(
        "POST {PATH} HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\nwebhook-id: budget-chunked\r\nwebhook-timestamp: {}\r\nwebhook-signature: {}\r\n\r\n",
        now(),
        forged_signature()
    )
    .into_bytes();
    chunked.extend_from_slice(format!("{:x}\r\n", small.len()).as_bytes());
    chunked.extend_from_slice(&small);
    chunked.extend_from_slice(b"\r\n0\r\n\r\n");
    let a = exchange(addr, &chunked).await.unwrap();
    assert_eq!(a.status, 503, "{a:?}");
    assert_eq!(a.retry_after, Some(1));
    // A body over max_body_bytes is still 413, whatever the budget.
    let a = exchange(
        addr,
        &h1_head("budget-big", &forged_signature(), FLOOD_BODY + 1, ""),
    )
    .await
    .unwrap();
    assert_eq!(a.status, 413, "{a:?}");
    assert_eq!(bridge.budget_refusals().await, 2.0);

    // A's body arrives in full: its forged signature is refused (401), and its reservation is
    // given back as it is answered.
    wr_a.write_all(&flood_body()).await.unwrap();
    let mut buf = Vec::new();
    let a = read_answer(&mut rd_a, &mut buf).await.unwrap();
    assert_eq!(a.status, 401, "{a:?}");
    // The genuine webhook now fits.
    let a = exchange(addr, &signed_h1("budget-small", &small, ""))
        .await
        .unwrap();
    assert_eq!(a.status, 200, "{a:?}");
    assert_eq!(bridge.stored().await, 1);
    bridge.delete_stream().await;
}

// ---------- the connection limit ----------

/// The accept queue of the listening socket on 127.0.0.1:`port` (`/proc/net/tcp`, column
/// `rx_queue` of a socket in state LISTEN).
fn accept_queue(port: u16) -> Option<u64> {
    let table = std::fs::read_to_string("/proc/net/tcp").ok()?;
    let local = format!("0100007F:{port:04X}");
    table.lines().skip(1).find_map(|l| {
        let cols: Vec<&str> = l.split_whitespace().collect();
        if cols.get(1) != Some(&local.as_str()) || cols.get(3) != Some(&"0A") {
            return None;
        }
        let (_, rx) = cols.get(4)?.split_once(':')?;
        u64::from_str_radix(rx, 16).ok()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_limit_wait_in_the_backlog() {
    let Some(nats) = common::broker("NATS") else {
        return;
    };
    let bridge = start_bridge(&nats, "{ max_connections: 2 }");
    let addr = bridge.addr();
    // Two connections in a request each: the limit is reached.
    let (held_rd, held_wr) = reserve_with_expect(addr, "limit-a").await;
    let (_rd_b, _wr_b) = reserve_with_expect(addr, "limit-b").await;
    // A third, with a genuine webhook, is queued by the kernel and not accepted.
    let third = TcpStream::connect(addr).await.unwrap();
    let (mut rd, mut wr) = third.into_split();
    wr.write_all(&signed_h1("limit-genuine", &order("limit-genuine"), ""))
        .await
        .unwrap();
    common::eventually_async(
        "the third connection waits in the accept queue",
        PHASE,
        || async { accept_queue(bridge.webhook) == Some(1) },
    )
    .await;
    let mut buf = Vec::new();
    let early = tokio::time::timeout(Duration::from_secs(1), read_answer(&mut rd, &mut buf)).await;
    assert!(early.is_err(), "answered while at the limit: {early:?}");
    assert_eq!(
        accept_queue(bridge.webhook),
        Some(1),
        "still queued, not accepted"
    );
    // One of the two ends: the queued connection is served.
    drop((held_rd, held_wr));
    let a = tokio::time::timeout(PHASE, read_answer(&mut rd, &mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(a.status, 200, "{a:?}");
    assert_eq!(bridge.stored().await, 1);
    assert!(
        bridge.log_text().contains("connection limit reached"),
        "the limit is logged"
    );
    bridge.delete_stream().await;
}

// ---------- idle and stalled connections ----------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_and_stalled_connections_are_closed() {
    let Some(nats) = common::broker("NATS") else {
        return;
    };
    let bridge = start_bridge(&nats, &limits_yaml());
    let addr = bridge.addr();
    // Each is closed within its timeout plus this margin (a busy machine).
    let margin = Duration::from_secs(30);

    // Silent: connected, nothing sent (the first bytes' deadline, header_read_timeout_ms).
    let silent = TcpStream::connect(addr).await.unwrap();
    // Keep-alive: one genuine request answered 200, then nothing (header_read_timeout_ms on
    // HTTP/1.1, idle_timeout_ms).
    let keep_alive = TcpStream::connect(addr).await.unwrap();
    let (mut ka_rd, mut ka_wr) = keep_alive.into_split();
    ka_wr
        .write_all(&signed_h1("idle-keep-alive", &order("idle-keep-alive"), ""))
        .await
        .unwrap();
    let mut buf = Vec::new();
    let a = read_answer(&mut ka_rd, &mut buf).await.unwrap();
    assert_eq!(a.status, 200, "{a:?}");
    assert!(!a.close, "kept alive");
    // Stalled: a request whose body stops short (request_timeout_ms, then 408).
    let stalled = TcpStream::connect(addr).await.unwrap();
    let (mut st_rd, mut st_wr) = stalled.into_split();
    st_wr
        .write_all(&h1_head("idle-stalled", &forged_signature(), 1000, ""))
        .await
        .unwrap();
    st_wr.write_all(&[b' '; 10]).await.unwrap();
    // HTTP/2: one with no stream at all that answers the server's PINGs as clients do, and one
    // after a request was answered that never acknowledges the PING following the GOAWAY
    // (idle_timeout_ms, GOAWAY, then dropped after header_read_timeout_ms).
    let h2_empty = tokio::spawn(h2_flood(addr, 0, 0, 0));
    let h2_used = tokio::spawn(async move {
        let s = TcpStream::connect(addr).await.unwrap();
        let (mut rd, mut wr) = s.into_split();
        let mut out = PREFACE.to_vec();
        out.extend(frame(SETTINGS, 0, 0, &[]));
        let body = order("idle-h2");
        let block = h2_request_headers("idle-h2", &forged_signature(), body.len());
        out.extend(frame(HEADERS, END_HEADERS, 1, &block));
        out.extend(frame(DATA, END_STREAM, 1, &body));
        wr.write_all(&out).await.unwrap();
        let mut buf = Vec::new();
        let (mut answered, mut goaway) = (false, None);
        while let Some(f) = read_frame(&mut rd, &mut buf).await {
            match f.kind {
                HEADERS if f.stream == 1 => answered = true,
                GOAWAY if f.payload.len() >= 8 => goaway = Some(u32_at(&f.payload, 4)),
                SETTINGS if f.flags & ACK == 0 => {
                    let _ = wr.write_all(&frame(SETTINGS, ACK, 0, &[])).await;
                }
                _ => {}
            }
        }
        (answered, goaway)
    });

    let (mut silent_rd, _silent_wr) = silent.into_split();
    let header_read = Duration::from_millis(HEADER_READ_TIMEOUT_MS) + margin;
    assert!(
        closed_within(&mut silent_rd, header_read).await,
        "silent connection closed"
    );
    assert!(
        closed_within(&mut ka_rd, header_read).await,
        "idle keep-alive connection closed"
    );
    let a = tokio::time::timeout(
        Duration::from_millis(REQUEST_TIMEOUT_MS) + margin,
        read_answer(&mut st_rd, &mut buf),
    )
    .await
    .expect("the stalled body is answered")
    .unwrap();
    assert_eq!(a.status, 408, "{a:?}");
    assert!(
        closed_within(&mut st_rd, margin).await,
        "stalled connection closed"
    );
    let idle = Duration::from_millis(IDLE_TIMEOUT_MS) + margin;
    let empty = tokio::time::timeout(idle, h2_empty).await.unwrap().unwrap();
    assert!(empty.closed, "idle h2c connection closed: {empty:?}");
    assert_eq!(empty.goaway, Some(0), "with GOAWAY(NO_ERROR): {empty:?}");
    let (answered, goaway) = tokio::time::timeout(idle + header_read, h2_used)
        .await
        .expect("an idle HTTP/2 connection that ignores the GOAWAY is closed")
        .unwrap();
    assert!(answered, "the h2c request was answered");
    assert_eq!(
        goaway,
        Some(0),
        "then the idle connection got GOAWAY(NO_ERROR)"
    );
    drop(st_wr);
    bridge.delete_stream().await;
}
