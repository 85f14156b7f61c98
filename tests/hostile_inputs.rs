//! Hostile input (issue #11): a named, table-driven corpus sent to **both** sources of a real
//! bridge (real dispatcher, real router, dead letters to a JSON-lines file, a recording test sink).
//!
//! - Body cases (malformed and truncated JSON, wrong types, huge numbers, deep nesting, giant
//!   strings, invalid UTF-8, NUL bytes, BOM, duplicate keys, unknown or missing types, non-object
//!   top levels, template-looking types...) go to the webhook source as correctly signed HTTP/1.1
//!   requests on 127.0.0.1 *and* to the WebSocket source as text frames from a test-local
//!   WebSocket server playing Fondo.
//! - Webhook transport cases: signature edge cases, header injection (CR/LF, NUL, obs-fold,
//!   non-ASCII, huge and duplicate headers), content types, sizes, methods and paths; written as
//!   raw bytes on a TCP socket, so nothing is "fixed" by an HTTP client library on the way.
//! - WebSocket transport cases: binary, fragmented, invalid-UTF-8 and oversized frames, close and
//!   ping frames.
//!
//! For every case: the bridge answers (no panic, the next case is served), the outcome is the
//! expected one (an HTTP status, a dead letter with a readable reason and the raw bytes kept, a
//! reconnect), and exactly the expected messages are published (topic and verbatim payload);
//! totals are checked again at the end, after a valid event proves the bridge is still alive.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::io::{Read as _, Seek as _, SeekFrom};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use fondo_bridge::config::{
    DestinationConfig, EventConfig, RouteConfig, SpoolConfig, WebSocketSourceConfig,
    WebhookSourceConfig,
};
use fondo_bridge::dispatch::Dispatcher;
use fondo_bridge::dlq::DeadLetter;
use fondo_bridge::event::ParseOptions;
use fondo_bridge::metrics::Metrics;
use fondo_bridge::simulator::webhook_sender::sign_standard;
use fondo_bridge::sinks::DynSink;
use fondo_bridge::sinks::testing::{Faults, TestSink};
use fondo_bridge::sources::Readiness;
use fondo_bridge::sources::webhook::WebhookSource;
use fondo_bridge::sources::websocket::{WebSocketSource, WebSocketStats};
use futures::{SinkExt as _, StreamExt as _};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_util::sync::CancellationToken;

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
/// A second, rotated-in secret: signatures made with it pass too.
const SECRET_2: &str = "whsec_c2Vjb25kLXNlY3JldC1mb3Itcm90YXRpb24=";
const PATH: &str = "/fondo/webhooks/callback";
const CLIENT: &str = "c-hostile";
/// Body / frame limit of both sources: a 10 MB string fits, 13 MB does not.
const LIMIT: usize = 12 * 1024 * 1024;
const MB: usize = 1024 * 1024;
/// How long one case may take to show its outcome (generous: debug build, 2 shared cores).
const CASE_TIMEOUT: Duration = Duration::from_secs(30);

// ---------- expectations ----------

/// What a case must lead to.
#[derive(Debug, Clone, Copy)]
enum Expect {
    /// An event: published to exactly these topics with the body verbatim (webhook: `200
    /// delivered`); when `Some(needle)`, one destination could not be rendered and was
    /// dead-lettered (`reason_kind: render`) with a reason containing the needle.
    Routed(&'static [&'static str], Option<&'static str>),
    /// Authentic but not an event: dead-lettered raw (`reason_kind: unparseable`) with a reason
    /// containing the needle; webhook: `200 dead_lettered`. Nothing published.
    DeadLetter(&'static str),
    /// Webhook: refused with this HTTP status; nothing published or dead-lettered.
    Refused(u16),
    /// Webhook: refused with one of these statuses, or the connection closed without an answer
    /// (for what hyper refuses at the protocol level); nothing published or dead-lettered.
    RefusedAny(&'static [u16]),
    /// A heartbeat: acknowledged, feeds the watchdog, nothing published or dead-lettered.
    Ignored,
    /// WebSocket: the frame breaks the protocol or the hard size limit; the connection is dropped
    /// and re-established; nothing published or dead-lettered.
    Reconnect,
}

impl Expect {
    fn published(self) -> usize {
        match self {
            Self::Routed(t, _) => t.len(),
            _ => 0,
        }
    }
    fn dead_letters(self) -> usize {
        match self {
            Self::Routed(_, Some(_)) | Self::DeadLetter(_) => 1,
            _ => 0,
        }
    }
}

/// A body sent to both sources.
struct BodyCase {
    name: &'static str,
    body: Vec<u8>,
    webhook: Expect,
    ws: Expect,
}

fn both(name: &'static str, body: impl Into<Vec<u8>>, e: Expect) -> BodyCase {
    BodyCase {
        name,
        body: body.into(),
        webhook: e,
        ws: e,
    }
}

fn each(name: &'static str, body: impl Into<Vec<u8>>, webhook: Expect, ws: Expect) -> BodyCase {
    BodyCase {
        name,
        body: body.into(),
        webhook,
        ws,
    }
}

/// A valid event of `event_type`, unique per `tag` (so content-hash ids never collide).
fn ev(event_type: &str, tag: &str) -> String {
    format!(
        r#"{{"eventType":"{event_type}","current":{{"id":"{tag}","clientId":"{CLIENT}","amount":500.0}}}}"#
    )
}

/// A valid order event whose `current` holds `extra` (raw JSON) as `x`.
fn with_x(tag: &str, extra: &str) -> String {
    format!(r#"{{"eventType":"order.update","current":{{"id":"{tag}","x":{extra}}}}}"#)
}

const MALFORMED: Expect = Expect::DeadLetter("not valid JSON");
const NOT_OBJECT: Expect = Expect::DeadLetter("not an object");
const ORDER: Expect = Expect::Routed(&["fondo.order"], None);

fn body_cases() -> Vec<BodyCase> {
    let fixture = std::fs::read("tests/fixtures/fondo/order.create.json").unwrap();
    let account = std::fs::read("tests/fixtures/fondo/account.update.json").unwrap();
    let cash = std::fs::read("tests/fixtures/fondo/cashTransaction.delete.json").unwrap();
    let heartbeat = std::fs::read("tests/fixtures/fondo/heartbeat.json").unwrap();
    let no_type = std::fs::read("tests/fixtures/fondo/webhook-body-without-type.json").unwrap();
    let half = fixture[..fixture.len() / 2].to_vec();
    let mut invalid_utf8 = br#"{"eventType":"order.create","current":{"name":""#.to_vec();
    invalid_utf8.extend_from_slice(&[0xff, 0xfe, 0xc3]);
    invalid_utf8.extend_from_slice(br#""}}"#);
    let mut overlong_utf8 = br#"{"eventType":"order.create","current":{"name":""#.to_vec();
    overlong_utf8.extend_from_slice(&[0xc0, 0xaf]); // an overlong '/'
    overlong_utf8.extend_from_slice(br#""}}"#);
    let mut raw_nul = br#"{"eventType":"order.create","current":{"id":"a"#.to_vec();
    raw_nul.push(0);
    raw_nul.extend_from_slice(br#"b"}}"#);
    let mut nul_after = ev("order.create", "nul-after").into_bytes();
    nul_after.push(0);
    let mut bom = vec![0xef, 0xbb, 0xbf];
    bom.extend_from_slice(ev("order.create", "bom").as_bytes());
    let utf16: Vec<u8> = ev("order.create", "utf16")
        .encode_utf16()
        .flat_map(u16::to_le_bytes)
        .collect();
    let deep_arrays = format!(
        r#"{{"eventType":"order.create","current":{{"id":"deep","x":{}{}}}}}"#,
        "[".repeat(10_000),
        "]".repeat(10_000)
    );
    let deep_objects = format!(
        r#"{{"eventType":"order.create","current":{}1{}}}"#,
        r#"{"a":"#.repeat(10_000),
        "}".repeat(10_000)
    );
    let nested_100 = with_x(
        "nested-100",
        &format!("{}1{}", "[".repeat(100), "]".repeat(100)),
    );
    let giant_10mb = with_x("giant-10mb", &format!("\"{}\"", "a".repeat(10 * MB)));
    let giant_13mb = with_x("giant-13mb", &format!("\"{}\"", "b".repeat(13 * MB)));
    let giant_key = format!(
        r#"{{"eventType":"order.update","current":{{"id":"giant-key","{}":1}}}}"#,
        "k".repeat(MB)
    );
    let many_keys = {
        let keys: Vec<String> = (0..100_000).map(|i| format!(r#""k{i}":{i}"#)).collect();
        with_x("many-keys", &format!("{{{}}}", keys.join(",")))
    };
    let long_array = with_x("long-array", &format!("[{}0]", "0,".repeat(500_000)));
    let long_type = format!(r#"{{"eventType":"{}.create"}}"#, "x".repeat(200));

    vec![
        // -- valid baselines: the corpus does not refuse what is fine --
        both("fixture order.create", fixture.clone(), ORDER),
        both(
            "fixture account.update",
            account,
            Expect::Routed(&["fondo.account"], None),
        ),
        both(
            "fixture cashTransaction.delete",
            cash,
            Expect::Routed(&["fondo.cashTransaction"], None),
        ),
        both("heartbeat", heartbeat, Expect::Ignored),
        // -- malformed and truncated JSON --
        both("truncated fixture (first half)", half, MALFORMED),
        both("truncated to one brace", "{", MALFORMED),
        both("not JSON at all", "hello, Fondo", MALFORMED),
        both(
            "unterminated string",
            r#"{"eventType":"order.create"#,
            MALFORMED,
        ),
        both(
            "trailing garbage",
            format!("{} xyz", ev("order.create", "trail")),
            MALFORMED,
        ),
        both(
            "two objects back to back",
            format!(
                "{}{}",
                ev("order.create", "two-a"),
                ev("order.create", "two-b")
            ),
            MALFORMED,
        ),
        both(
            "trailing comma",
            r#"{"eventType":"order.create","current":{"id":"tc",},}"#,
            MALFORMED,
        ),
        both(
            "single quotes",
            r#"{'eventType':'order.create'}"#,
            MALFORMED,
        ),
        both(
            "comment",
            r#"{"eventType":"order.create" /* hi */}"#,
            MALFORMED,
        ),
        both("NaN literal", with_x("nan", "NaN"), MALFORMED),
        both("Infinity literal", with_x("inf", "Infinity"), MALFORMED),
        both("unquoted key", r#"{eventType:"order.create"}"#, MALFORMED),
        both("empty body", "", MALFORMED),
        both("whitespace only", " \n\t\r\n ", MALFORMED),
        // -- top level not an object --
        both("top-level array", "[1,2,3]", NOT_OBJECT),
        both(
            "top-level array of events",
            format!("[{}]", ev("order.create", "in-array")),
            NOT_OBJECT,
        ),
        both("top-level string", r#""order.create""#, NOT_OBJECT),
        both("top-level number", "42", NOT_OBJECT),
        both("top-level true", "true", NOT_OBJECT),
        both("top-level null", "null", NOT_OBJECT),
        // -- wrong types --
        both(
            "eventType a number",
            r#"{"eventType":42,"current":{"id":"t1"}}"#,
            Expect::DeadLetter("is not a string"),
        ),
        both(
            "eventType null",
            r#"{"eventType":null,"current":{"id":"t2"}}"#,
            Expect::DeadLetter("is not a string"),
        ),
        both(
            "eventType an array",
            r#"{"eventType":["order.create"],"current":{"id":"t3"}}"#,
            Expect::DeadLetter("is not a string"),
        ),
        both(
            "eventType an object",
            r#"{"eventType":{"entity":"order"},"current":{"id":"t4"}}"#,
            Expect::DeadLetter("is not a string"),
        ),
        both(
            "current a string",
            r#"{"eventType":"order.update","current":"ord_1"}"#,
            Expect::DeadLetter("`current` must be a JSON object"),
        ),
        both(
            "current an array",
            r#"{"eventType":"order.update","current":[{"id":"x"}]}"#,
            Expect::DeadLetter("`current` must be a JSON object"),
        ),
        both(
            "previous a number",
            r#"{"eventType":"order.update","current":{"id":"p1"},"previous":7}"#,
            Expect::DeadLetter("`previous` must be a JSON object"),
        ),
        both(
            "current null is allowed",
            r#"{"eventType":"order.delete","current":null,"previous":{"id":"cn"}}"#,
            ORDER,
        ),
        // -- event types --
        both(
            "missing eventType",
            no_type,
            Expect::DeadLetter("no event type"),
        ),
        both(
            "eventType empty",
            r#"{"eventType":"","current":{"id":"e1"}}"#,
            Expect::DeadLetter("empty"),
        ),
        both(
            "eventType with a space",
            r#"{"eventType":"order create","current":{"id":"e2"}}"#,
            Expect::DeadLetter("whitespace or control"),
        ),
        both(
            "eventType with an escaped NUL",
            r#"{"eventType":"order.create\u0000","current":{"id":"e3"}}"#,
            Expect::DeadLetter("whitespace or control"),
        ),
        both(
            "eventType with an escaped newline",
            r#"{"eventType":"order.create\nx-evil: 1","current":{"id":"e4"}}"#,
            Expect::DeadLetter("whitespace or control"),
        ),
        both(
            "eventType 200 characters",
            long_type,
            Expect::DeadLetter("longer than"),
        ),
        both(
            "unknown event type is kept and routed",
            ev("portfolio.rebalance", "unknown"),
            Expect::Routed(&["fondo.portfolio"], None),
        ),
        both(
            "event type without a dot",
            ev("somethingnew", "nodot"),
            Expect::Routed(&["fondo.somethingnew"], None),
        ),
        both(
            "event type with a path",
            ev("../../etc/passwd", "traversal"),
            Expect::Routed(&["fondo."], None),
        ),
        both(
            "event type that looks like a template",
            ev("{entity}.{/current/id}", "tmpl"),
            Expect::Routed(&["fondo.{entity}"], None),
        ),
        both(
            "non-ASCII event type",
            ev("ordér.skapad", "nonascii"),
            Expect::Routed(&["fondo.ordér"], None),
        ),
        // -- a second route keys on /current/id: what it cannot render is dead-lettered --
        both(
            "routing field an object",
            r#"{"eventType":"keyed.create","current":{"id":{"nested":1}}}"#,
            Expect::Routed(&["fondo.keyed"], Some("object, array or empty string")),
        ),
        both(
            "routing field missing",
            r#"{"eventType":"keyed.create","current":{"ref":"no-id"}}"#,
            Expect::Routed(&["fondo.keyed"], Some("no value at this pointer")),
        ),
        both(
            "routing field a huge number",
            r#"{"eventType":"keyed.create","current":{"id":18446744073709551617}}"#,
            Expect::Routed(&["fondo.keyed", "keyed.create"], None),
        ),
        // -- numbers --
        both(
            "number 1e400 (overflows f64)",
            with_x("big-exp", "1e400"),
            MALFORMED,
        ),
        both("number -1e400", with_x("neg-big-exp", "-1e400"), MALFORMED),
        both(
            "number 2^64+1",
            with_x("u64-plus-1", "18446744073709551617"),
            ORDER,
        ),
        both("number -0", with_x("minus-zero", "-0"), ORDER),
        both(
            "number 1e-400 (underflows)",
            with_x("tiny", "1e-400"),
            ORDER,
        ),
        both(
            "number with 300 digits",
            with_x("digits", &"9".repeat(300)),
            ORDER,
        ),
        both(
            "number with a leading zero",
            with_x("lead0", "0123"),
            MALFORMED,
        ),
        both("number with a plus sign", with_x("plus", "+1"), MALFORMED),
        // -- nesting --
        both(
            "deep nesting: 10k arrays",
            deep_arrays,
            Expect::DeadLetter("nesting too deep"),
        ),
        both(
            "deep nesting: 10k objects",
            deep_objects,
            Expect::DeadLetter("nesting too deep"),
        ),
        both("nesting 100 (under the limit)", nested_100, ORDER),
        // -- sizes --
        both("10 MB string within the limit", giant_10mb, ORDER),
        each(
            "13 MB string over the limit",
            giant_13mb,
            Expect::Refused(413),
            Expect::DeadLetter("exceeds max_frame_bytes"),
        ),
        both("1 MB key", giant_key, ORDER),
        both("100k keys", many_keys, ORDER),
        both("500k-element array", long_array, ORDER),
        // -- encodings, NUL, BOM --
        each(
            "invalid UTF-8 in a string",
            invalid_utf8,
            MALFORMED,
            Expect::Reconnect,
        ),
        each(
            "overlong UTF-8 encoding",
            overlong_utf8,
            MALFORMED,
            Expect::Reconnect,
        ),
        both(
            "lone surrogate escape",
            with_x("surrogate", r#""\ud800""#),
            MALFORMED,
        ),
        both(
            "escaped surrogate pair",
            with_x("emoji", r#""\ud83d\ude00""#),
            ORDER,
        ),
        both("raw NUL inside a string", raw_nul, MALFORMED),
        both("NUL after the object", nul_after, MALFORMED),
        both(
            "escaped NUL in a data field",
            with_x("esc-nul", r#""a\u0000b""#),
            ORDER,
        ),
        both("UTF-8 byte order mark", bom, MALFORMED),
        both("UTF-16LE body", utf16, MALFORMED),
        // -- duplicate keys: the last one wins (the body is published verbatim) --
        both(
            "duplicate eventType, last wins",
            r#"{"eventType":"order.create","current":{"id":"dup1"},"eventType":"account.delete"}"#,
            Expect::Routed(&["fondo.account"], None),
        ),
        both(
            "duplicate current",
            r#"{"eventType":"order.update","current":"not an object","current":{"id":"dup2"}}"#,
            ORDER,
        ),
        both(
            "eventType last and padded with whitespace",
            "\n\n  { \"current\" : { \"id\" : \"ws\" } , \"eventType\" : \"order.update\" }  \n",
            ORDER,
        ),
    ]
}

// ---------- the bridge ----------

struct Rig {
    dispatcher: Dispatcher,
    sink: Arc<TestSink>,
    dl_file: PathBuf,
    /// How far the dead-letter file has been read.
    dl_offset: u64,
}

fn rig(dir: &Path) -> Rig {
    let dl_file = dir.join("dead-letter.jsonl");
    let dest = |topic: &str, key: Option<&str>| DestinationConfig {
        sink: "t".into(),
        topic: topic.into(),
        key: key.map(Into::into),
        headers: BTreeMap::new(),
        ..Default::default()
    };
    let routes = vec![
        RouteConfig {
            name: "all".into(),
            matches: vec!["*".into()],
            filter: BTreeMap::new(),
            redact: vec![],
            to: vec![dest("fondo.{entity}", None)],
        },
        RouteConfig {
            name: "keyed".into(),
            matches: vec!["keyed.*".into()],
            filter: BTreeMap::new(),
            redact: vec![],
            to: vec![dest("keyed.{action}", Some("{/current/id}"))],
        },
    ];
    let sink = Arc::new(TestSink::new("t", Faults::default()));
    let dispatcher = common::rig::DispatcherRig::new(&dl_file)
        .sink("t", sink.clone() as DynSink)
        .routes(routes)
        .max_attempts(3)
        .start(&Arc::new(Metrics::new()));
    Rig {
        dispatcher,
        sink,
        dl_file,
        dl_offset: 0,
    }
}

impl Rig {
    fn published(&self) -> usize {
        self.sink.delivered().len()
    }

    /// Dead letters written since the last call (the file is read incrementally: some are 13 MB).
    fn new_dead_letters(&mut self) -> Vec<DeadLetter> {
        let Ok(mut f) = std::fs::File::open(&self.dl_file) else {
            return vec![];
        };
        f.seek(SeekFrom::Start(self.dl_offset)).unwrap();
        let mut text = String::new();
        f.read_to_string(&mut text).unwrap();
        // Only whole lines: a line being written is read next time.
        let Some(end) = text.rfind('\n') else {
            return vec![];
        };
        self.dl_offset += end as u64 + 1;
        text[..end]
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str::<DeadLetter>(l).expect("dead-letter line parses"))
            .collect()
    }

    /// Waits for a case's messages and dead letters, then checks them against `expect`.
    async fn check(&mut self, what: &str, body: &[u8], expect: Expect, published_before: usize) {
        let want_pub = published_before + expect.published();
        let want_dl = expect.dead_letters();
        let mut dls = Vec::new();
        let t0 = Instant::now();
        loop {
            dls.extend(self.new_dead_letters());
            if self.published() >= want_pub && dls.len() >= want_dl {
                break;
            }
            assert!(
                t0.elapsed() < CASE_TIMEOUT,
                "{what}: timed out: published {} of {want_pub}, dead letters {} of {want_dl}",
                self.published(),
                dls.len()
            );
            // This wait's poll interval (it gathers dead letters as it polls, and its
            // message names the counts reached, so it is not `common::eventually`).
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let delivered = self.sink.delivered();
        assert_eq!(
            delivered.len(),
            want_pub,
            "{what}: published {} messages, expected {}",
            delivered.len() - published_before,
            expect.published()
        );
        assert_eq!(dls.len(), want_dl, "{what}: dead letters {dls:?}");
        let new = &delivered[published_before..];
        if let Expect::Routed(topics, _) = expect {
            let mut got: Vec<&str> = new.iter().map(|m| m.topic.as_str()).collect();
            let mut want = topics.to_vec();
            got.sort_unstable();
            want.sort_unstable();
            assert_eq!(got, want, "{what}: topics");
            for m in new {
                assert!(m.payload.as_ref() == body, "{what}: payload not verbatim");
            }
        }
        for d in &dls {
            let (kind, needle) = match expect {
                Expect::Routed(_, Some(n)) => ("render", n),
                Expect::DeadLetter(n) => ("unparseable", n),
                _ => unreachable!(),
            };
            assert_eq!(d.reason_kind.as_str(), kind, "{what}: {d:?}");
            assert!(
                d.reason.contains(needle),
                "{what}: dead-letter reason {:?} does not say {needle:?}",
                d.reason
            );
            assert!(
                !d.reason.is_empty() && d.reason.len() < 300,
                "{what}: reason should be short and readable: {:?}",
                d.reason
            );
            assert!(
                d.body_bytes() == body,
                "{what}: dead letter must keep the raw body"
            );
        }
    }
}

// ---------- a raw HTTP/1.1 client ----------

/// A request head as raw bytes: header values are bytes, so CR, LF, NUL and non-ASCII can be sent.
fn head(method: &str, path: &str, headers: &[(String, Vec<u8>)], body_len: usize) -> Vec<u8> {
    let mut h = format!("{method} {path} HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: close\r\n")
        .into_bytes();
    for (k, v) in headers {
        h.extend_from_slice(k.as_bytes());
        h.extend_from_slice(b": ");
        h.extend_from_slice(v);
        h.extend_from_slice(b"\r\n");
    }
    if !headers
        .iter()
        .any(|(k, _)| k.eq_ignore_ascii_case("content-length"))
    {
        h.extend_from_slice(format!("content-length: {body_len}\r\n").as_bytes());
    }
    h.extend_from_slice(b"\r\n");
    h
}

/// Sends raw bytes and reads the answer: `(status, body)`, or `None` when the server closed the
/// connection without an answer.
async fn raw_exchange(addr: SocketAddr, request: Vec<u8>) -> Option<(u16, String)> {
    let s = TcpStream::connect(addr).await.unwrap();
    let (mut rd, mut wr) = s.into_split();
    // Written concurrently: the server may answer (413) before the body is sent.
    let writer = tokio::spawn(async move {
        let _ = wr.write_all(&request).await;
        wr
    });
    let read = async {
        let mut buf = Vec::new();
        let mut chunk = vec![0u8; 64 * 1024];
        loop {
            match rd.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let headers = String::from_utf8_lossy(&buf[..i]).to_ascii_lowercase();
                let len = headers
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse::<usize>().ok())
                    .unwrap_or(0);
                if buf.len() >= i + 4 + len {
                    break;
                }
            }
        }
        buf
    };
    let buf = tokio::time::timeout(CASE_TIMEOUT, read)
        .await
        .expect("the webhook source must answer or close, not hang");
    writer.abort();
    let text = String::from_utf8_lossy(&buf);
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Some((status, body))
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

type Headers = Vec<(String, Vec<u8>)>;

/// Correctly signed Standard Webhooks headers for `body`.
fn signed(id: &str, body: &[u8]) -> Headers {
    let ts = now();
    vec![
        ("content-type".into(), b"application/json".to_vec()),
        ("webhook-id".into(), id.as_bytes().to_vec()),
        ("webhook-timestamp".into(), ts.to_string().into_bytes()),
        (
            "webhook-signature".into(),
            sign_standard(SECRET, id, ts, body).into_bytes(),
        ),
    ]
}

fn set(mut h: Headers, name: &str, value: impl Into<Vec<u8>>) -> Headers {
    let v = value.into();
    match h.iter_mut().find(|(k, _)| k == name) {
        Some(e) => e.1 = v,
        None => h.push((name.into(), v)),
    }
    h
}

fn without(h: Headers, name: &str) -> Headers {
    h.into_iter().filter(|(k, _)| k != name).collect()
}

fn plus(mut h: Headers, name: &str, value: impl Into<Vec<u8>>) -> Headers {
    h.push((name.into(), value.into()));
    h
}

fn sig_of(h: &Headers) -> String {
    let v = &h.iter().find(|(k, _)| k == "webhook-signature").unwrap().1;
    String::from_utf8(v.clone()).unwrap()
}

/// A webhook-only case: exact request bytes.
struct WebCase {
    name: &'static str,
    request: Vec<u8>,
    body: Vec<u8>,
    expect: Expect,
}

fn post(name: &'static str, headers: Headers, body: Vec<u8>, expect: Expect) -> WebCase {
    let mut request = head("POST", PATH, &headers, body.len());
    request.extend_from_slice(&body);
    WebCase {
        name,
        request,
        body,
        expect,
    }
}

const UNAUTHORIZED: Expect = Expect::Refused(401);

fn webhook_cases() -> Vec<WebCase> {
    let mut cases = Vec::new();
    let mut n = 0;
    let mut next = |tag: &str| {
        n += 1;
        let id = format!("msg_hostile_{tag}_{n}");
        let body = ev("order.update", &id).into_bytes();
        (id, body)
    };
    let ts = now();

    // -- signature edge cases --
    let (id, b) = next("empty");
    cases.push(post(
        "empty signature",
        set(signed(&id, &b), "webhook-signature", ""),
        b,
        UNAUTHORIZED,
    ));
    let (id, b) = next("v1only");
    cases.push(post(
        "signature `v1,` only",
        set(signed(&id, &b), "webhook-signature", "v1,"),
        b,
        UNAUTHORIZED,
    ));
    let (id, b) = next("v2");
    let h = signed(&id, &b);
    let v2 = sig_of(&h).replacen("v1,", "v2,", 1);
    cases.push(post(
        "valid tag under version v2",
        set(h, "webhook-signature", v2),
        b,
        UNAUTHORIZED,
    ));
    let (id, b) = next("upper");
    let h = signed(&id, &b);
    let upper = sig_of(&h).replacen("v1,", "V1,", 1);
    cases.push(post(
        "valid tag under `V1,`",
        set(h, "webhook-signature", upper),
        b,
        UNAUTHORIZED,
    ));
    let (id, b) = next("noprefix");
    let h = signed(&id, &b);
    let bare = sig_of(&h).replacen("v1,", "", 1);
    cases.push(post(
        "valid tag without the version prefix",
        set(h, "webhook-signature", bare),
        b,
        UNAUTHORIZED,
    ));
    let (id, b) = next("garbage");
    cases.push(post(
        "base64 garbage",
        set(
            signed(&id, &b),
            "webhook-signature",
            "v1,!!!!not*base64$$$$",
        ),
        b,
        UNAUTHORIZED,
    ));
    let (id, b) = next("short");
    cases.push(post(
        "tag of the wrong length",
        set(
            signed(&id, &b),
            "webhook-signature",
            "v1,AAAAAAAAAAAAAAAAAAAAAA==",
        ),
        b,
        UNAUTHORIZED,
    ));
    let (id, b) = next("unpadded");
    let h = signed(&id, &b);
    let unpadded = sig_of(&h).trim_end_matches('=').to_owned();
    cases.push(post(
        "valid tag without base64 padding",
        set(h, "webhook-signature", unpadded),
        b,
        UNAUTHORIZED,
    ));
    let (id, b) = next("otherid");
    let other = sign_standard(SECRET, "msg_someone_else", ts, &b);
    cases.push(post(
        "signature for another id",
        set(signed(&id, &b), "webhook-signature", other),
        b,
        UNAUTHORIZED,
    ));
    let (id, b) = next("otherbody");
    let other = sign_standard(SECRET, &id, ts, br#"{"eventType":"order.delete"}"#);
    cases.push(post(
        "signature for another body",
        set(signed(&id, &b), "webhook-signature", other),
        b,
        UNAUTHORIZED,
    ));
    let (id, b) = next("future");
    let far = ts + 365 * 24 * 3600;
    cases.push(post(
        "timestamp a year in the future (signed)",
        set(
            set(
                signed(&id, &b),
                "webhook-signature",
                sign_standard(SECRET, &id, far, &b),
            ),
            "webhook-timestamp",
            far.to_string(),
        ),
        b,
        UNAUTHORIZED,
    ));
    let (id, b) = next("past");
    cases.push(post(
        "timestamp 0 (signed)",
        set(
            set(
                signed(&id, &b),
                "webhook-signature",
                sign_standard(SECRET, &id, 0, &b),
            ),
            "webhook-timestamp",
            "0",
        ),
        b,
        UNAUTHORIZED,
    ));
    for (name, value) in [
        ("timestamp non-numeric", "soon"),
        ("timestamp negative", "-1700000000"),
        ("timestamp with a plus sign", "+1700000000"),
        ("timestamp 19 digits (overflow)", "9999999999999999999"),
        ("timestamp fractional", "1700000000.5"),
        ("timestamp in milliseconds", "1700000000000"),
    ] {
        let (id, b) = next("ts");
        cases.push(post(
            name,
            set(signed(&id, &b), "webhook-timestamp", value),
            b,
            UNAUTHORIZED,
        ));
    }
    let (id, b) = next("multi");
    let h = signed(&id, &b);
    let several = format!(
        "v1,Ceo5qEr07ixe2NLpvHk3FH9bwy/WavXrAFQ/9tdO6mc= v2,xyz v1,!! {}",
        sig_of(&h)
    );
    cases.push(post(
        "several signatures, one valid",
        set(h, "webhook-signature", several),
        b.clone(),
        ORDER,
    ));
    let (id, b) = next("rotated");
    let rotated = sign_standard(SECRET_2, &id, ts, &b);
    cases.push(post(
        "signed with the second (rotated) secret",
        set(
            set(signed(&id, &b), "webhook-signature", rotated),
            "webhook-timestamp",
            ts.to_string(),
        ),
        b,
        ORDER,
    ));
    let (id, b) = next("thirtythree");
    let h = signed(&id, &b);
    let mut many = vec!["v1,Ceo5qEr07ixe2NLpvHk3FH9bwy/WavXrAFQ/9tdO6mc="; 32].join(" ");
    many.push(' ');
    many.push_str(&sig_of(&h));
    cases.push(post(
        "valid signature after 32 invalid ones (bounded work)",
        set(h, "webhook-signature", many),
        b,
        UNAUTHORIZED,
    ));
    let (id, b) = next("tabs");
    let h = signed(&id, &b);
    let tabbed = format!("v1,AAAA\t{}", sig_of(&h));
    cases.push(post(
        "signatures separated by a tab",
        set(h, "webhook-signature", tabbed),
        b,
        UNAUTHORIZED,
    ));
    let (id, b) = next("dupsig");
    let h = signed(&id, &b);
    let good = sig_of(&h);
    cases.push(post(
        "duplicate signature headers (one valid)",
        plus(h, "webhook-signature", good.into_bytes()),
        b,
        UNAUTHORIZED,
    ));
    let (id, b) = next("dupid");
    cases.push(post(
        "duplicate webhook-id headers",
        plus(signed(&id, &b), "webhook-id", "msg_other"),
        b,
        UNAUTHORIZED,
    ));
    let (id, b) = next("dupts");
    cases.push(post(
        "duplicate webhook-timestamp headers",
        plus(signed(&id, &b), "webhook-timestamp", ts.to_string()),
        b,
        UNAUTHORIZED,
    ));
    let (id, b) = next("noid");
    cases.push(post(
        "missing webhook-id",
        without(signed(&id, &b), "webhook-id"),
        b,
        UNAUTHORIZED,
    ));
    let (id, b) = next("nosig");
    cases.push(post(
        "missing webhook-signature",
        without(signed(&id, &b), "webhook-signature"),
        b,
        UNAUTHORIZED,
    ));
    let (id, b) = next("nots");
    cases.push(post(
        "missing webhook-timestamp",
        without(signed(&id, &b), "webhook-timestamp"),
        b,
        UNAUTHORIZED,
    ));
    let long_id = format!("msg_{}", "x".repeat(300));
    let b = ev("order.update", "long-id").into_bytes();
    cases.push(post(
        "webhook-id of 304 characters (signed)",
        signed(&long_id, &b),
        b,
        UNAUTHORIZED,
    ));
    let (id, mut b) = next("tampered");
    let h = signed(&id, &b);
    b.extend_from_slice(b"\n");
    cases.push(post("body with an added newline", h, b, UNAUTHORIZED));

    // -- header injection and hostile header values --
    let (id, b) = next("crlf");
    let h = signed(&id, &b);
    let injected = format!("v1,AAAA\r\nwebhook-signature: {}", sig_of(&h));
    cases.push(post(
        "CRLF in the signature value smuggles a second signature header",
        set(h, "webhook-signature", injected),
        b,
        UNAUTHORIZED,
    ));
    let (id, b) = next("crlfid");
    cases.push(post(
        "CRLF in webhook-id smuggles an event-type header",
        set(
            signed(&id, &b),
            "webhook-id",
            format!("{id}\r\nx-fondo-event-type: account.delete"),
        ),
        b,
        // The id header is now what the signature was made for: it verifies, and the smuggled
        // header is an ordinary (unconfigured) header: the event is the body's, nothing else.
        ORDER,
    ));
    let (id, b) = next("lf");
    let h = signed(&id, &b);
    let lf = format!("v1,AAAA\nwebhook-signature: {}", sig_of(&h));
    cases.push(post(
        "bare LF in the signature value",
        set(h, "webhook-signature", lf),
        b,
        // httparse takes a bare LF as a line end: a second signature header, refused.
        UNAUTHORIZED,
    ));
    let (id, b) = next("cr");
    cases.push(post(
        "bare CR in webhook-id",
        set(signed(&id, &b), "webhook-id", format!("{id}\rx")),
        b,
        Expect::Refused(400),
    ));
    let (id, b) = next("fold");
    let h = signed(&id, &b);
    let folded = format!("v1,AAAA\r\n {}", sig_of(&h));
    cases.push(post(
        "obs-fold continuation line in the signature",
        set(h, "webhook-signature", folded),
        b,
        Expect::Refused(400),
    ));
    let (id, b) = next("nul");
    cases.push(post(
        "NUL byte in webhook-id",
        set(signed(&id, &b), "webhook-id", format!("{id}\0x")),
        b,
        Expect::Refused(400),
    ));
    let (id, b) = next("latin1");
    let mut latin = id.clone().into_bytes();
    latin.extend_from_slice(&[0xe9, 0xff]);
    cases.push(post(
        "non-ASCII bytes in webhook-id",
        set(signed(&id, &b), "webhook-id", latin),
        b,
        UNAUTHORIZED,
    ));
    let (id, b) = next("bigsig");
    let h = signed(&id, &b);
    let huge = format!("v1,{} {}", "A".repeat(70_000), sig_of(&h));
    cases.push(post(
        "70 KB junk signature entry before a valid one",
        set(h, "webhook-signature", huge),
        b,
        ORDER,
    ));
    let (id, b) = next("hugehdr");
    cases.push(post(
        "1 MB header value",
        plus(signed(&id, &b), "x-padding", "p".repeat(MB)),
        b,
        Expect::RefusedAny(&[431, 400]),
    ));
    let (id, b) = next("trace");
    cases.push(post(
        "hostile traceparent is ignored",
        plus(signed(&id, &b), "traceparent", "00-zzzz-'\"<script>-01"),
        b,
        ORDER,
    ));

    // -- content types --
    let (id, b) = next("noct");
    cases.push(post(
        "no content type",
        without(signed(&id, &b), "content-type"),
        b,
        Expect::Refused(415),
    ));
    for (name, ct, expect) in [
        (
            "content type text/plain",
            "text/plain",
            Expect::Refused(415),
        ),
        (
            "content type application/jsonp",
            "application/jsonp",
            Expect::Refused(415),
        ),
        (
            "content type application/x-www-form-urlencoded",
            "application/x-www-form-urlencoded",
            Expect::Refused(415),
        ),
        ("content type empty", "", Expect::Refused(415)),
        ("content type +json alone", "+json", Expect::Refused(415)),
        ("content type upper case", "APPLICATION/JSON", ORDER),
        (
            "content type with charset",
            "application/json; charset=utf-8",
            ORDER,
        ),
        (
            "content type cloudevents+json",
            "application/cloudevents+json",
            ORDER,
        ),
    ] {
        let (id, b) = next("ct");
        cases.push(post(
            name,
            set(signed(&id, &b), "content-type", ct),
            b,
            expect,
        ));
    }
    let (id, b) = next("ct8bit");
    cases.push(post(
        "content type with non-ASCII bytes",
        set(
            signed(&id, &b),
            "content-type",
            b"application/json; x=\xe9".to_vec(),
        ),
        b,
        Expect::Refused(415),
    ));
    let (id, b) = next("ctdup");
    cases.push(post(
        "two content types, text/plain first",
        plus(
            set(signed(&id, &b), "content-type", "text/plain"),
            "content-type",
            "application/json",
        ),
        b,
        Expect::Refused(415),
    ));

    // -- sizes, framing, methods, paths --
    let (id, b) = next("declared");
    cases.push(post(
        "declared Content-Length over the limit",
        plus(signed(&id, &b), "content-length", (LIMIT + 1).to_string()),
        Vec::new(),
        Expect::Refused(413),
    ));
    let (id, b) = next("twolengths");
    let h = plus(
        plus(signed(&id, &b), "content-length", b.len().to_string()),
        "content-length",
        (b.len() + 1).to_string(),
    );
    cases.push(post(
        "two different Content-Length headers",
        h,
        b,
        Expect::Refused(400),
    ));
    let (id, b) = next("cl-te");
    let h = plus(
        plus(signed(&id, &b), "transfer-encoding", "chunked"),
        "content-length",
        "4",
    );
    let mut chunked = format!("{:x}\r\n", b.len()).into_bytes();
    chunked.extend_from_slice(&b);
    chunked.extend_from_slice(b"\r\n0\r\n\r\n");
    // hyper follows RFC 9112 section 6.3: Transfer-Encoding wins over Content-Length (and the
    // connection is closed after the answer). The body read is the chunked one, which is what was
    // signed, so it is delivered; a proxy in front that read Content-Length instead would have
    // forwarded different bytes, and then the signature would not match.
    cases.push(WebCase {
        body: b.clone(),
        ..post(
            "Content-Length and Transfer-Encoding together (smuggling)",
            h,
            chunked,
            ORDER,
        )
    });
    let b = ev("order.update", "get").into_bytes();
    let mut request = head("GET", PATH, &signed("msg_get", &b), b.len());
    request.extend_from_slice(&b);
    cases.push(WebCase {
        name: "GET instead of POST",
        request,
        body: b,
        expect: Expect::Refused(405),
    });
    let b = ev("order.update", "path").into_bytes();
    let mut request = head(
        "POST",
        "/fondo/webhooks/callback/../../admin",
        &signed("msg_path", &b),
        b.len(),
    );
    request.extend_from_slice(&b);
    cases.push(WebCase {
        name: "dot-dot path",
        request,
        body: b,
        expect: Expect::Refused(404),
    });
    let b = ev("order.update", "beyond").into_bytes();
    let big = {
        let mut v = b.clone();
        v.resize(2 * LIMIT + MB, b' ');
        v
    };
    cases.push(post(
        "25 MB body, signed (beyond the limit)",
        signed("msg_beyond", &big),
        big,
        Expect::Refused(413),
    ));
    cases
}

// ---------- a test-local Fondo WebSocket stream ----------

/// Plays Fondo: accepts the bridge's connection and sends whatever the test asks, frame by frame.
struct FakeFondo {
    addr: SocketAddr,
    /// The current connection's outbox.
    current: Arc<Mutex<Option<mpsc::UnboundedSender<Message>>>>,
    connections: Arc<AtomicUsize>,
    stop: CancellationToken,
}

impl FakeFondo {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let current: Arc<Mutex<Option<mpsc::UnboundedSender<Message>>>> = Arc::default();
        let connections = Arc::new(AtomicUsize::new(0));
        let stop = CancellationToken::new();
        let (c, n, s) = (current.clone(), connections.clone(), stop.clone());
        tokio::spawn(async move {
            loop {
                let tcp = tokio::select! {
                    _ = s.cancelled() => return,
                    r = listener.accept() => match r { Ok((t, _)) => t, Err(_) => continue },
                };
                let Ok(ws) = tokio_tungstenite::accept_async(tcp).await else {
                    continue;
                };
                let (tx, mut rx) = mpsc::unbounded_channel::<Message>();
                *c.lock().unwrap() = Some(tx);
                n.fetch_add(1, Ordering::SeqCst);
                let s = s.clone();
                tokio::spawn(async move {
                    let (mut out, mut inc) = ws.split();
                    // Reads (and so answers pings and notices the end) while sending.
                    let ended = CancellationToken::new();
                    let reader = {
                        let ended = ended.clone();
                        tokio::spawn(async move {
                            while let Some(Ok(_)) = inc.next().await {}
                            ended.cancel();
                        })
                    };
                    loop {
                        tokio::select! {
                            biased;
                            _ = s.cancelled() => break,
                            _ = ended.cancelled() => break,
                            m = rx.recv() => match m {
                                Some(m) => if out.send(m).await.is_err() { break },
                                None => break,
                            },
                        }
                    }
                    reader.abort();
                });
            }
        });
        Self {
            addr,
            current,
            connections,
            stop,
        }
    }

    fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    fn send(&self, m: Message) {
        let tx = self.current.lock().unwrap().clone();
        tx.expect("the bridge is connected")
            .send(m)
            .expect("connection open");
    }
}

/// A text frame with arbitrary bytes: invalid UTF-8 goes out as it is (a protocol violation).
fn text_frame(bytes: &[u8]) -> Message {
    match std::str::from_utf8(bytes) {
        Ok(s) => Message::text(s),
        Err(_) => Message::Frame(Frame::message(
            Bytes::copy_from_slice(bytes),
            OpCode::Data(Data::Text),
            true,
        )),
    }
}

struct WsBridge {
    rig: Rig,
    fondo: FakeFondo,
    stats: Arc<WebSocketStats>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), fondo_bridge::sources::websocket::WebSocketError>>,
}

async fn ws_bridge(dir: &Path) -> WsBridge {
    let rig = rig(dir);
    let fondo = FakeFondo::start().await;
    let cfg: WebSocketSourceConfig = serde_json::from_value(serde_json::json!({
        "url": format!("http://{}", fondo.addr),
        "client_ids": [CLIENT],
        "token": "t",
        "heartbeat_timeout_ms": 0,
        "ping_interval_ms": 0,
        "connect_timeout_ms": 2000,
        "reconnect_initial_ms": 10,
        "reconnect_max_ms": 50,
        "max_frame_bytes": LIMIT,
    }))
    .unwrap();
    let spool = SpoolConfig {
        enabled: true,
        dir: dir.join("spool"),
        max_bytes: 512 * MB as u64,
        segment_bytes: 4 * MB as u64,
        ..SpoolConfig::default()
    };
    let src = WebSocketSource::new(
        cfg,
        spool,
        ParseOptions::default(),
        rig.dispatcher.clone(),
        Arc::new(Readiness::default()),
    )
    .unwrap();
    let stats = src.stats();
    let stop = CancellationToken::new();
    let task = tokio::spawn(src.run(stop.clone()));
    common::eventually("the bridge to connect", CASE_TIMEOUT, || {
        fondo.connections() > 0
    })
    .await;
    WsBridge {
        rig,
        fondo,
        stats,
        stop,
        task,
    }
}

impl WsBridge {
    /// Sends one frame and checks the outcome.
    async fn case(&mut self, what: &str, frame: Message, body: &[u8], expect: Expect) {
        let published = self.rig.published();
        let connections = self.fondo.connections();
        let heartbeats = self.stats.heartbeats.load(Ordering::SeqCst);
        let dead = self.stats.dead_lettered.load(Ordering::SeqCst);
        self.fondo.send(frame);
        match expect {
            Expect::Reconnect => {
                common::eventually(&format!("{what}: a reconnect"), CASE_TIMEOUT, || {
                    self.fondo.connections() != connections
                })
                .await;
            }
            Expect::Ignored => {
                common::eventually(
                    &format!("{what}: the frame to be seen as a heartbeat"),
                    CASE_TIMEOUT,
                    || self.stats.heartbeats.load(Ordering::SeqCst) != heartbeats,
                )
                .await;
            }
            Expect::DeadLetter(_) => {
                common::eventually(&format!("{what}: a dead letter"), CASE_TIMEOUT, || {
                    self.stats.dead_lettered.load(Ordering::SeqCst) != dead
                })
                .await;
            }
            Expect::Routed(..) => {}
            Expect::Refused(_) | Expect::RefusedAny(_) => unreachable!("webhook only"),
        }
        self.rig.check(what, body, expect, published).await;
        if !matches!(expect, Expect::Reconnect) {
            assert_eq!(
                self.fondo.connections(),
                connections,
                "{what}: the connection must survive"
            );
        }
    }
}

// ---------- the tests ----------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_corpus_to_the_webhook_source() {
    let dir = tempfile::tempdir().unwrap();
    let mut rig = rig(dir.path());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    // From JSON, as the config file gives it: fields added later keep their defaults.
    let wh: WebhookSourceConfig = serde_json::from_value(serde_json::json!({
        "listen": addr,
        "path": PATH,
        "signature": {
            "scheme": "standard-webhooks",
            "secrets": [SECRET, SECRET_2],
            "tolerance_s": 300,
        },
        "max_body_bytes": LIMIT,
        "request_timeout_ms": 20_000,
        "ack_timeout_ms": 20_000,
    }))
    .unwrap();
    let source = WebhookSource::new(
        wh,
        EventConfig {
            id_pointer: None,
            id_header: Some("webhook-id".into()),
        },
        rig.dispatcher.clone(),
        Arc::new(Readiness::default()),
    )
    .unwrap();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(source.run(listener, shutdown.clone()));

    let mut expected_published = 0;
    let mut expected_dead = 0;
    let run = async |rig: &mut Rig, name: &str, request: Vec<u8>, body: &[u8], e: Expect| {
        let before = rig.published();
        let answer = raw_exchange(addr, request).await;
        match (e, &answer) {
            (Expect::Routed(..) | Expect::Ignored, Some((200, b))) => {
                assert_eq!(b, r#"{"status":"delivered"}"#, "{name}");
            }
            (Expect::DeadLetter(_), Some((200, b))) => {
                assert_eq!(b, r#"{"status":"dead_lettered"}"#, "{name}");
            }
            (Expect::Refused(s), Some((got, b))) => {
                assert_eq!(*got, s, "{name}: {b}");
                assert!(b.is_empty() || b.starts_with(r#"{"error":"#), "{name}: {b}");
            }
            (Expect::RefusedAny(allowed), None) => {
                eprintln!("{name}: connection closed without an answer (allowed: {allowed:?})");
            }
            (Expect::RefusedAny(allowed), Some((got, _))) => {
                assert!(allowed.contains(got), "{name}: got {got}, want {allowed:?}");
            }
            _ => panic!("{name}: answer {answer:?}, expected {e:?}"),
        }
        eprintln!(
            "webhook  {name:<60} -> {}",
            answer.as_ref().map_or(0, |a| a.0)
        );
        rig.check(&format!("webhook: {name}"), body, e, before)
            .await;
    };

    let bodies = body_cases();
    let n_bodies = bodies.len();
    for (i, c) in bodies.into_iter().enumerate() {
        let id = format!("msg_body_{i}");
        let mut request = head("POST", PATH, &signed(&id, &c.body), c.body.len());
        request.extend_from_slice(&c.body);
        expected_published += c.webhook.published();
        expected_dead += c.webhook.dead_letters();
        run(&mut rig, c.name, request, &c.body, c.webhook).await;
    }
    let transport = webhook_cases();
    let n_transport = transport.len();
    for c in transport {
        expected_published += c.expect.published();
        expected_dead += c.expect.dead_letters();
        run(&mut rig, c.name, c.request, &c.body, c.expect).await;
    }

    // Liveness: a valid event after the corpus is still delivered.
    let live = ev("order.create", "webhook-alive").into_bytes();
    let mut request = head("POST", PATH, &signed("msg_alive", &live), live.len());
    request.extend_from_slice(&live);
    run(&mut rig, "liveness", request, &live, ORDER).await;
    expected_published += 1;

    // A quiet spell: a stray late publish or dead letter would show in the totals below.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(rig.published(), expected_published, "total published");
    let all = fondo_bridge::dlq::read_fallback_file(&rig.dl_file).unwrap();
    assert!(
        all.1.is_empty(),
        "unreadable dead-letter lines: {:?}",
        all.1
    );
    assert_eq!(all.0.len(), expected_dead, "total dead letters");
    assert!(
        !task.is_finished(),
        "the webhook server must still be running"
    );
    eprintln!(
        "webhook: {n_bodies} body cases + {n_transport} transport cases; {expected_published} published, {expected_dead} dead-lettered"
    );
    assert!(n_bodies + n_transport >= 50);
    shutdown.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(30), task).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_corpus_to_the_websocket_source() {
    let dir = tempfile::tempdir().unwrap();
    let mut b = ws_bridge(dir.path()).await;
    let mut expected_published = 0;
    let mut expected_dead = 0;

    let bodies = body_cases();
    let n_bodies = bodies.len();
    for c in bodies {
        expected_published += c.ws.published();
        expected_dead += c.ws.dead_letters();
        b.case(c.name, text_frame(&c.body), &c.body, c.ws).await;
        eprintln!("websocket {:<60} -> {:?}", c.name, c.ws);
    }

    // Frames that only a WebSocket can carry.
    let bin = ev("order.create", "as-binary").into_bytes();
    let frag = ev("order.create", "fragmented").into_bytes();
    let (a, z) = frag.split_at(frag.len() / 2);
    let beyond = {
        let mut v = ev("order.create", "beyond").into_bytes();
        v.resize(2 * LIMIT + MB, b' ');
        v
    };
    let mut frames = 0;
    let mut frame_case = async |b: &mut WsBridge, what: &str, m: Message, body: &[u8], e| {
        frames += 1;
        expected_published += Expect::published(e);
        expected_dead += Expect::dead_letters(e);
        b.case(what, m, body, e).await;
        eprintln!("websocket {what:<60} -> {e:?}");
    };
    frame_case(
        &mut b,
        "binary frame holding a valid event",
        Message::binary(bin.clone()),
        &bin,
        Expect::DeadLetter("binary frame"),
    )
    .await;
    frame_case(
        &mut b,
        "ping frame",
        Message::Ping(Bytes::from_static(b"p")),
        b"",
        Expect::Routed(&[], None),
    )
    .await;
    frame_case(
        &mut b,
        "unsolicited pong frame",
        Message::Pong(Bytes::from_static(b"p")),
        b"",
        Expect::Routed(&[], None),
    )
    .await;
    // A message split over a text frame and a continuation frame is one event.
    b.fondo.send(Message::Frame(Frame::message(
        Bytes::copy_from_slice(a),
        OpCode::Data(Data::Text),
        false,
    )));
    frame_case(
        &mut b,
        "event fragmented over two frames",
        Message::Frame(Frame::message(
            Bytes::copy_from_slice(z),
            OpCode::Data(Data::Continue),
            true,
        )),
        &frag,
        ORDER,
    )
    .await;
    frame_case(
        &mut b,
        "continuation frame without a start",
        Message::Frame(Frame::message(
            Bytes::from_static(b"{}"),
            OpCode::Data(Data::Continue),
            true,
        )),
        b"",
        Expect::Reconnect,
    )
    .await;
    frame_case(
        &mut b,
        "25 MB frame (beyond the hard limit)",
        Message::text(String::from_utf8(beyond).unwrap()),
        b"",
        Expect::Reconnect,
    )
    .await;
    frame_case(
        &mut b,
        "close frame",
        Message::Close(None),
        b"",
        Expect::Reconnect,
    )
    .await;

    // Liveness: a valid event after the corpus is still delivered.
    let live = ev("order.create", "ws-alive").into_bytes();
    b.case("liveness", text_frame(&live), &live, ORDER).await;
    expected_published += 1;

    // A quiet spell: a stray late publish or dead letter would show in the totals below.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(b.rig.published(), expected_published, "total published");
    let all = fondo_bridge::dlq::read_fallback_file(&b.rig.dl_file).unwrap();
    assert!(
        all.1.is_empty(),
        "unreadable dead-letter lines: {:?}",
        all.1
    );
    assert_eq!(all.0.len(), expected_dead, "total dead letters");
    assert!(
        all.0.iter().all(|d| d.client_id.as_deref() == Some(CLIENT)),
        "dead letters name the stream's client id"
    );
    assert!(
        !b.task.is_finished(),
        "the WebSocket source must still be running"
    );
    eprintln!(
        "websocket: {n_bodies} body cases + {frames} frame cases; {expected_published} published, {expected_dead} dead-lettered, {} connections",
        b.fondo.connections()
    );
    b.stop.cancel();
    b.fondo.stop.cancel();
    tokio::time::timeout(Duration::from_secs(30), b.task)
        .await
        .expect("source stops")
        .unwrap()
        .unwrap();
}
