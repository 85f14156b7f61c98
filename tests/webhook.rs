//! Black-box tests of the webhook source: real HTTP on 127.0.0.1, a real dispatcher, a
//! fault-injecting sink, signatures made by an HMAC implemented here (not the crate's).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use base64::Engine as _;
use fondo_bridge::config::{
    EventConfig, HmacAlgorithm, Secret, SignatureConfig, SignatureEncoding, WebhookSourceConfig,
};
use fondo_bridge::dispatch::Dispatcher;
use fondo_bridge::dlq::read_fallback_file;
use fondo_bridge::metrics::Metrics;
use fondo_bridge::simulator::webhook_sender::{
    Outgoing, SenderOptions, Signer, WebhookSender, sign_standard,
};
use fondo_bridge::sinks::DynSink;
use fondo_bridge::sinks::testing::{Faults, TestSink};
use fondo_bridge::sources::Readiness;
use fondo_bridge::sources::webhook::{WebhookError, WebhookSource};
use sha2::Digest;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const PATH: &str = "/fondo/webhooks/callback";

// ---------- an independent HMAC (RFC 2104) over sha2's plain digests ----------

fn hmac<D: Digest>(block: usize, key: &[u8], msg: &[&[u8]]) -> Vec<u8> {
    let mut k = if key.len() > block {
        D::digest(key).to_vec()
    } else {
        key.to_vec()
    };
    k.resize(block, 0);
    let mut inner = D::new();
    inner.update(k.iter().map(|b| b ^ 0x36).collect::<Vec<u8>>());
    for m in msg {
        inner.update(m);
    }
    let ih = inner.finalize();
    let mut outer = D::new();
    outer.update(k.iter().map(|b| b ^ 0x5c).collect::<Vec<u8>>());
    outer.update(ih);
    outer.finalize().to_vec()
}

fn b64(b: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(b)
}

/// `v1,<base64>` for Standard Webhooks, computed here.
fn my_standard_sig(secret: &str, id: &str, ts: &str, body: &[u8]) -> String {
    let key = base64::engine::general_purpose::STANDARD
        .decode(secret.trim_start_matches("whsec_"))
        .unwrap();
    let tag = hmac::<sha2::Sha256>(64, &key, &[id.as_bytes(), b".", ts.as_bytes(), b".", body]);
    format!("v1,{}", b64(&tag))
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn std_headers(id: &str, ts: i64, body: &[u8]) -> Vec<(String, String)> {
    vec![
        ("content-type".into(), "application/json".into()),
        ("webhook-id".into(), id.into()),
        ("webhook-timestamp".into(), ts.to_string()),
        (
            "webhook-signature".into(),
            my_standard_sig(SECRET, id, &ts.to_string(), body),
        ),
    ]
}

fn order(id: &str, seq: u32) -> Vec<u8> {
    format!(
        r#"{{"eventType":"order.update","current":{{"id":"{id}","seq":{seq},"clientId":"c1"}},"previous":{{"id":"{id}","seq":{}}}}}"#,
        seq.saturating_sub(1)
    )
    .into_bytes()
}

// ---------- the rig ----------

struct Opts {
    faults: Faults,
    max_attempts: u32,
    max_in_flight: usize,
    ack_timeout_ms: u64,
    request_timeout_ms: u64,
    header_read_timeout_ms: u64,
    max_body_bytes: usize,
    signature: SignatureConfig,
    id_header: Option<String>,
    type_header: Option<String>,
}

impl Default for Opts {
    fn default() -> Self {
        Self {
            faults: Faults::default(),
            max_attempts: 3,
            max_in_flight: 1000,
            ack_timeout_ms: 5_000,
            request_timeout_ms: 5_000,
            header_read_timeout_ms: 10_000,
            max_body_bytes: 1024 * 1024,
            signature: SignatureConfig::StandardWebhooks {
                secrets: vec![
                    Secret("whsec_b2xkLXNlY3JldC1iZWluZy1yb3RhdGVkLW91dA==".into()),
                    Secret(SECRET.into()),
                ],
                secrets_file: None,
                tolerance_s: 300,
            },
            id_header: Some("webhook-id".into()),
            type_header: None,
        }
    }
}

struct Bridge {
    url: String,
    addr: SocketAddr,
    sink: Arc<TestSink>,
    dispatcher: Dispatcher,
    readiness: Arc<Readiness>,
    dl_file: PathBuf,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), WebhookError>>,
    client: reqwest::Client,
    _dir: tempfile::TempDir,
}

async fn bridge(o: Opts) -> Bridge {
    let dir = tempfile::tempdir().unwrap();
    let dl_file = dir.path().join("dead-letter.jsonl");
    let sink = Arc::new(TestSink::new("s", o.faults));
    let dispatcher = common::rig::DispatcherRig::new(&dl_file)
        .sink("s", sink.clone() as DynSink)
        .route_all("s", "fondo.{entity}")
        .max_attempts(o.max_attempts)
        .max_in_flight(o.max_in_flight)
        .start(&Arc::new(Metrics::new()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let wh = WebhookSourceConfig {
        listen: addr,
        path: PATH.into(),
        signature: o.signature,
        max_body_bytes: o.max_body_bytes,
        event_type_header: o.type_header,
        request_timeout_ms: o.request_timeout_ms,
        ack_timeout_ms: o.ack_timeout_ms,
        header_read_timeout_ms: o.header_read_timeout_ms,
        tls: None,
        limits: Default::default(),
    };
    let readiness = Arc::new(Readiness::default());
    let source = WebhookSource::new(
        wh,
        EventConfig {
            id_pointer: None,
            id_header: o.id_header,
        },
        dispatcher.clone(),
        readiness.clone(),
    )
    .unwrap();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(source.run(listener, shutdown.clone()));
    common::eventually(
        "the webhook source to report readiness",
        Duration::from_secs(30),
        || readiness.snapshot().contains_key("webhook"),
    )
    .await;
    Bridge {
        url: format!("http://{addr}{PATH}"),
        addr,
        sink,
        dispatcher,
        readiness,
        dl_file,
        shutdown,
        task,
        client: reqwest::Client::builder().no_proxy().build().unwrap(),
        _dir: dir,
    }
}

struct Answer {
    status: u16,
    body: String,
    headers: reqwest::header::HeaderMap,
}

impl Bridge {
    async fn post(&self, headers: &[(String, String)], body: Vec<u8>) -> Answer {
        let mut h = reqwest::header::HeaderMap::new();
        for (k, v) in headers {
            h.append(
                reqwest::header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                reqwest::header::HeaderValue::from_str(v).unwrap(),
            );
        }
        let r = self
            .client
            .post(&self.url)
            .headers(h)
            .body(body)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let headers = r.headers().clone();
        let body = r.text().await.unwrap();
        Answer {
            status,
            body,
            headers,
        }
    }

    async fn post_signed(&self, id: &str, body: Vec<u8>) -> Answer {
        let h = std_headers(id, now(), &body);
        self.post(&h, body).await
    }

    fn dead_letters(&self) -> Vec<fondo_bridge::dlq::DeadLetter> {
        if !self.dl_file.exists() {
            return vec![];
        }
        read_fallback_file(&self.dl_file).unwrap().0
    }

    fn sender(&self, max_attempts: u32) -> WebhookSender {
        let mut o = SenderOptions::new(self.url.clone(), Signer::standard(SECRET).unwrap());
        o.max_attempts = max_attempts;
        o.backoff_initial = Duration::from_millis(50);
        o.backoff_max = Duration::from_millis(200);
        o.concurrency = 8;
        WebhookSender::new(o).unwrap()
    }
}

fn rejected(b: &Bridge, reason: &str) -> u64 {
    use fondo_bridge::metrics::SourceReasonLabels;
    b.dispatcher
        .metrics()
        .rejected
        .get_or_create(&SourceReasonLabels {
            source: "webhook".into(),
            reason: reason.into(),
        })
        .get()
}

// ---------- signatures ----------

#[test]
fn independent_hmac_reproduces_the_reference_vector() {
    let sig = my_standard_sig(
        SECRET,
        "msg_p5jXN8AQM9LWM0D4loKWxJek",
        "1614265330",
        br#"{"test": 2432232314}"#,
    );
    assert_eq!(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    assert_eq!(
        sign_standard(
            SECRET,
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            br#"{"test": 2432232314}"#
        ),
        sig
    );
}

#[tokio::test]
async fn standard_webhooks_signed_elsewhere_verify_and_publish_with_trace() {
    let b = bridge(Opts::default()).await;
    assert_eq!(b.readiness.snapshot().get("webhook"), Some(&Ok(())));
    let body = order("o1", 1);
    let mut h = std_headers("msg_trace_1", now(), &body);
    let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    h.push(("traceparent".into(), tp.into()));
    h.push(("tracestate".into(), "vendor=abc".into()));
    let a = b.post(&h, body.clone()).await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.body, r#"{"status":"delivered"}"#);
    let d = b.sink.delivered();
    assert_eq!(d.len(), 1);
    assert_eq!(d[0].payload.as_ref(), body.as_slice(), "published verbatim");
    assert_eq!(d[0].topic, "fondo.order");
    assert_eq!(d[0].header("fondo-event-id"), Some("msg_trace_1"));
    assert_eq!(d[0].header("fondo-source"), Some("webhook"));
    assert_eq!(d[0].header("traceparent"), Some(tp));
    assert_eq!(d[0].header("tracestate"), Some("vendor=abc"));
    // The reference test's multi-signature header: any one valid entry passes.
    let body = order("o2", 1);
    let ts = now();
    let good = my_standard_sig(SECRET, "msg_multi", &ts.to_string(), &body);
    let sig = format!(
        "v1,Ceo5qEr07ixe2NLpvHk3FH9bwy/WavXrAFQ/9tdO6mc= v2,Ceo5qEr07ixe2NLpvHk3FH9bwy/WavXrAFQ/9tdO6mc= {good}"
    );
    let h = vec![
        ("content-type".into(), "application/json".into()),
        ("webhook-id".into(), "msg_multi".into()),
        ("webhook-timestamp".into(), ts.to_string()),
        ("webhook-signature".into(), sig),
    ];
    assert_eq!(b.post(&h, body).await.status, 200);
    assert_eq!(b.sink.delivered().len(), 2);
}

#[tokio::test]
async fn hmac_scheme_signed_elsewhere_verifies() {
    for (alg, enc, prefix, with_ts) in [
        (
            HmacAlgorithm::Sha256,
            SignatureEncoding::Hex,
            "sha256=",
            false,
        ),
        (HmacAlgorithm::Sha512, SignatureEncoding::Base64, "", true),
    ] {
        let b = bridge(Opts {
            signature: SignatureConfig::Hmac {
                header: "x-fondo-signature".into(),
                algorithm: alg,
                encoding: enc,
                prefix: prefix.into(),
                signed_content: if with_ts {
                    "{timestamp}.{body}"
                } else {
                    "{body}"
                }
                .into(),
                timestamp_header: with_ts.then(|| "x-fondo-timestamp".into()),
                secrets: vec![Secret("the-shared-secret".into())],
                secrets_file: None,
                tolerance_s: 300,
            },
            id_header: None,
            ..Opts::default()
        })
        .await;
        let body = order("h1", 1);
        let ts = now().to_string();
        let mut content: Vec<&[u8]> = vec![];
        if with_ts {
            content.extend([ts.as_bytes(), b"."]);
        }
        content.push(&body);
        let tag = match alg {
            HmacAlgorithm::Sha256 => hmac::<sha2::Sha256>(64, b"the-shared-secret", &content),
            HmacAlgorithm::Sha512 => hmac::<sha2::Sha512>(128, b"the-shared-secret", &content),
        };
        let tag = match enc {
            SignatureEncoding::Hex => hex::encode(tag),
            SignatureEncoding::Base64 => b64(&tag),
        };
        let mut h = vec![
            ("content-type".to_string(), "application/json".to_string()),
            ("x-fondo-signature".into(), format!("{prefix}{tag}")),
        ];
        if with_ts {
            h.push(("x-fondo-timestamp".into(), ts.clone()));
        }
        let a = b.post(&h, body.clone()).await;
        assert_eq!(a.status, 200, "{alg:?}: {}", a.body);
        // Tampered: one byte of the body changed.
        let mut tampered = body.clone();
        let i = tampered.iter().position(|c| *c == b'1').unwrap();
        tampered[i] = b'2';
        assert_eq!(b.post(&h, tampered).await.status, 401);
        let d = b.sink.delivered();
        assert_eq!(d.len(), 1);
        // Without an id header the id is the content hash, as on the WebSocket.
        assert_eq!(d[0].header("fondo-event-id").unwrap().len(), 32);
    }
}

#[tokio::test]
async fn bad_signatures_are_401_and_nothing_is_routed() {
    let b = bridge(Opts::default()).await;
    let body = order("x1", 1);
    let ts = now();
    let good = std_headers("msg_bad_1", ts, &body);
    let with = |name: &str, value: String| -> Vec<(String, String)> {
        good.iter()
            .map(|(k, v)| {
                if k == name {
                    (k.clone(), value.clone())
                } else {
                    (k.clone(), v.clone())
                }
            })
            .collect()
    };
    let without = |name: &str| -> Vec<(String, String)> {
        good.iter().filter(|(k, _)| k != name).cloned().collect()
    };
    let dup = |name: &str| -> Vec<(String, String)> {
        let mut h = good.clone();
        let v = good.iter().find(|(k, _)| k == name).unwrap().1.clone();
        h.push((name.into(), v));
        h
    };
    let wrong_secret = {
        let key = b"a completely different secret";
        let tag = hmac::<sha2::Sha256>(
            64,
            key,
            &[b"msg_bad_1.", ts.to_string().as_bytes(), b".", &body],
        );
        format!("v1,{}", b64(&tag))
    };
    let old = ts - 301;
    let future = ts + 301;
    let mut tampered = body.clone();
    tampered.extend_from_slice(b" ");
    #[allow(clippy::type_complexity)] // (case name, headers, body): read inline below
    let cases: Vec<(&str, Vec<(String, String)>, Vec<u8>)> = vec![
        ("tampered body", good.clone(), tampered),
        (
            "wrong secret",
            with("webhook-signature", wrong_secret),
            body.clone(),
        ),
        (
            "old timestamp",
            std_headers("msg_bad_1", old, &body),
            body.clone(),
        ),
        (
            "future timestamp",
            std_headers("msg_bad_1", future, &body),
            body.clone(),
        ),
        (
            "signed timestamp replaced",
            with("webhook-timestamp", (ts - 1).to_string()),
            body.clone(),
        ),
        ("missing id", without("webhook-id"), body.clone()),
        (
            "missing timestamp",
            without("webhook-timestamp"),
            body.clone(),
        ),
        (
            "missing signature",
            without("webhook-signature"),
            body.clone(),
        ),
        ("duplicated id", dup("webhook-id"), body.clone()),
        (
            "duplicated timestamp",
            dup("webhook-timestamp"),
            body.clone(),
        ),
        (
            "duplicated signature",
            dup("webhook-signature"),
            body.clone(),
        ),
        (
            "signature for another id",
            with("webhook-id", "msg_other".into()),
            body.clone(),
        ),
        (
            "garbage signature",
            with("webhook-signature", "v1,not base64 at all".into()),
            body.clone(),
        ),
        (
            "non-numeric timestamp",
            with("webhook-timestamp", "hello".into()),
            body.clone(),
        ),
    ];
    for (what, h, body) in cases {
        let a = b.post(&h, body).await;
        assert_eq!(a.status, 401, "{what}: {}", a.body);
        assert_eq!(a.body, r#"{"error":"invalid signature"}"#, "{what}");
    }
    assert!(b.sink.delivered().is_empty());
    assert_eq!(b.sink.calls(), 0);
    assert!(b.dead_letters().is_empty(), "nothing dead-lettered either");
    assert_eq!(rejected(&b, "signature_mismatch"), 5);
    assert_eq!(rejected(&b, "signature_duplicate_header"), 3);
    assert_eq!(rejected(&b, "signature_timestamp"), 2);
    // The untampered request still passes.
    assert_eq!(b.post(&good, body).await.status, 200);
}

// ---------- at-least-once ----------

#[tokio::test]
async fn sink_down_then_recovers_sender_retries_published_once() {
    let b = bridge(Opts {
        faults: Faults {
            down: true,
            ..Faults::default()
        },
        max_attempts: 100_000,
        ack_timeout_ms: 200,
        ..Opts::default()
    })
    .await;
    // A direct request first: 503 with Retry-After.
    let a = b.post_signed("msg_direct", order("r0", 1)).await;
    assert_eq!(a.status, 503);
    assert!(a.headers.contains_key("retry-after"));
    let sender = b.sender(30);
    let out = Outgoing::new("msg_recover_1", order("r1", 1));
    let sink = b.sink.clone();
    let recover = tokio::spawn(async move {
        // Keeps the sink down long enough for the sender to be answered 503 and retry.
        tokio::time::sleep(Duration::from_millis(900)).await;
        sink.recover();
    });
    let d = sender.send(&out).await;
    recover.await.unwrap();
    assert!(d.acknowledged, "{d:?}");
    assert!(d.attempts >= 2, "{d:?}");
    assert!(
        d.statuses[..d.statuses.len() - 1].iter().all(|s| *s == 503),
        "{d:?}"
    );
    assert_eq!(*d.statuses.last().unwrap(), 200);
    let published: Vec<_> = b
        .sink
        .delivered()
        .into_iter()
        .filter(|m| m.header("fondo-event-id") == Some("msg_recover_1"))
        .collect();
    assert_eq!(published.len(), 1, "published exactly once");
    // The first direct request's event was delivered too once the sink recovered (it stayed in
    // flight); its redelivery is answered 200 without a second publish.
    assert_eq!(
        b.post_signed("msg_direct", order("r0", 1)).await.status,
        200
    );
    let n = b
        .sink
        .delivered()
        .iter()
        .filter(|m| m.header("fondo-event-id") == Some("msg_direct"))
        .count();
    assert_eq!(n, 1);
}

#[tokio::test]
async fn sink_never_recovers_event_dead_lettered_and_answered_2xx() {
    let b = bridge(Opts {
        faults: Faults {
            down: true,
            ..Faults::default()
        },
        max_attempts: 3,
        ..Opts::default()
    })
    .await;
    let a = b.post_signed("msg_doomed", order("d1", 1)).await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert!(b.sink.delivered().is_empty());
    assert_eq!(b.sink.calls(), 3);
    let dl = b.dead_letters();
    assert_eq!(dl.len(), 1);
    assert_eq!(dl[0].event_id, "msg_doomed");
    assert_eq!(dl[0].attempts, 3);
    assert_eq!(dl[0].body_bytes(), order("d1", 1));
}

#[tokio::test]
async fn same_event_five_times_sequential_and_concurrent_published_once() {
    let b = bridge(Opts {
        faults: Faults {
            latency: Duration::from_millis(100),
            ..Faults::default()
        },
        ..Opts::default()
    })
    .await;
    let body = order("dup1", 1);
    for _ in 0..5 {
        let a = b.post_signed("msg_dup_seq", body.clone()).await;
        assert_eq!(a.status, 200);
    }
    let body = order("dup2", 1);
    let answers =
        futures::future::join_all((0..5).map(|_| b.post_signed("msg_dup_conc", body.clone())))
            .await;
    assert!(answers.iter().all(|a| a.status == 200));
    let count = |id: &str| {
        b.sink
            .delivered()
            .iter()
            .filter(|m| m.header("fondo-event-id") == Some(id))
            .count()
    };
    assert_eq!(count("msg_dup_seq"), 1);
    assert_eq!(count("msg_dup_conc"), 1);
    assert_eq!(b.sink.delivered().len(), 2);
}

#[tokio::test]
async fn overloaded_bridge_answers_503_with_retry_after() {
    let b = bridge(Opts {
        faults: Faults {
            hang: true,
            ..Faults::default()
        },
        max_in_flight: 1,
        ack_timeout_ms: 3_000,
        ..Opts::default()
    })
    .await;
    let first = {
        let url = b.url.clone();
        let body = order("busy1", 1);
        let h = std_headers("msg_busy_1", now(), &body);
        let client = b.client.clone();
        tokio::spawn(async move {
            let mut req = client.post(url).body(body);
            for (k, v) in h {
                req = req.header(k, v);
            }
            req.send().await.unwrap().status().as_u16()
        })
    };
    common::eventually(
        "the first request to be in flight",
        Duration::from_secs(30),
        || b.dispatcher.in_flight() > 0,
    )
    .await;
    let a = b.post_signed("msg_busy_2", order("busy2", 1)).await;
    assert_eq!(a.status, 503);
    assert_eq!(a.headers.get("retry-after").unwrap(), "1");
    assert_eq!(a.body, r#"{"error":"overloaded"}"#);
    b.sink.recover();
    assert_eq!(first.await.unwrap(), 200);
    assert_eq!(
        b.post_signed("msg_busy_2", order("busy2", 1)).await.status,
        200
    );
}

// ---------- unparseable but authentic ----------

#[tokio::test]
async fn authentic_unparseable_bodies_are_dead_lettered_and_answered_2xx() {
    let b = bridge(Opts::default()).await;
    let mut invalid_utf8 = br#"{"eventType":"order.create","current":{"name":""#.to_vec();
    invalid_utf8.extend_from_slice(&[0xff, 0xfe, 0xc3]);
    invalid_utf8.extend_from_slice(br#""}}"#);
    let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000)).into_bytes();
    let deep_obj = format!(
        r#"{{"eventType":"order.create","current":{}1{}}}"#,
        r#"{"a":"#.repeat(10_000),
        "}".repeat(10_000)
    )
    .into_bytes();
    let no_type = std::fs::read("tests/fixtures/fondo/webhook-body-without-type.json").unwrap();
    let cases = [
        ("msg_utf8", invalid_utf8.clone()),
        ("msg_deep", deep),
        ("msg_deep_obj", deep_obj),
        ("msg_notype", no_type),
        ("msg_array", b"[1,2,3]".to_vec()),
        ("msg_empty", Vec::new()),
    ];
    for (id, body) in &cases {
        let a = b.post_signed(id, body.clone()).await;
        assert_eq!(a.status, 200, "{id}: {}", a.body);
        assert_eq!(a.body, r#"{"status":"dead_lettered"}"#, "{id}");
    }
    assert!(b.sink.delivered().is_empty());
    let dl = b.dead_letters();
    assert_eq!(dl.len(), cases.len());
    for ((id, body), d) in cases.iter().zip(&dl) {
        assert_eq!(d.event_id, *id);
        assert_eq!(d.source, "webhook");
        assert_eq!(&d.body_bytes(), body, "kept raw");
    }
    assert!(dl[0].body_base64.is_some(), "invalid UTF-8 kept as base64");
    assert!(dl[3].reason.contains("no event type"), "{}", dl[3].reason);
    // The server is still fine.
    assert_eq!(b.post_signed("msg_after", order("ok", 1)).await.status, 200);
}

#[tokio::test]
async fn event_type_from_header_when_the_body_has_none() {
    let b = bridge(Opts {
        type_header: Some("x-fondo-event-type".into()),
        ..Opts::default()
    })
    .await;
    let body = std::fs::read("tests/fixtures/fondo/webhook-body-without-type.json").unwrap();
    let mut h = std_headers("msg_typed", now(), &body);
    h.push(("x-fondo-event-type".into(), "account.update".into()));
    let a = b.post(&h, body).await;
    assert_eq!(a.status, 200, "{}", a.body);
    let d = b.sink.delivered();
    assert_eq!(d.len(), 1);
    assert_eq!(d[0].header("fondo-event-type"), Some("account.update"));
    assert_eq!(d[0].topic, "fondo.account");
}

// ---------- hostile input ----------

fn rss_kb() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

fn raw_head(b: &Bridge, id: &str, body_for_sig: &[u8], extra: &str) -> String {
    let ts = now();
    format!(
        "POST {PATH} HTTP/1.1\r\nhost: {}\r\ncontent-type: application/json\r\nwebhook-id: {id}\r\nwebhook-timestamp: {ts}\r\nwebhook-signature: {}\r\n{extra}\r\n",
        b.addr,
        my_standard_sig(SECRET, id, &ts.to_string(), body_for_sig)
    )
}

async fn read_status(reader: &mut (impl AsyncReadExt + Unpin)) -> Option<u16> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    loop {
        let n = reader.read(&mut chunk).await.ok()?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
        if buf.windows(4).any(|w| w == b"\r\n\r\n") {
            break;
        }
    }
    let line = String::from_utf8_lossy(&buf);
    line.split_whitespace().nth(1)?.parse().ok()
}

#[tokio::test]
async fn hundred_megabyte_body_is_refused_early_without_buffering() {
    const HUNDRED_MB: u64 = 100 * 1024 * 1024;
    let b = bridge(Opts::default()).await;
    let rss_before = rss_kb();

    // 1. Declared by Content-Length: answered before a byte of the body is sent.
    let mut s = TcpStream::connect(b.addr).await.unwrap();
    let head = raw_head(
        &b,
        "msg_big_1",
        b"",
        &format!("content-length: {HUNDRED_MB}\r\n"),
    );
    s.write_all(head.as_bytes()).await.unwrap();
    let status = tokio::time::timeout(Duration::from_secs(5), read_status(&mut s))
        .await
        .unwrap();
    assert_eq!(status, Some(413));

    // 2. Chunked, no length: the server stops reading at the limit; the answer arrives long
    //    before the client could have sent 100 MB.
    let s = TcpStream::connect(b.addr).await.unwrap();
    let (mut rd, mut wr) = s.into_split();
    let head = raw_head(&b, "msg_big_2", b"", "transfer-encoding: chunked\r\n");
    wr.write_all(head.as_bytes()).await.unwrap();
    let sent = Arc::new(AtomicU64::new(0));
    let writer = {
        let sent = sent.clone();
        tokio::spawn(async move {
            let chunk = vec![b' '; 64 * 1024];
            let frame_head = format!("{:x}\r\n", chunk.len());
            while sent.load(Ordering::SeqCst) < HUNDRED_MB {
                if wr.write_all(frame_head.as_bytes()).await.is_err()
                    || wr.write_all(&chunk).await.is_err()
                    || wr.write_all(b"\r\n").await.is_err()
                {
                    return;
                }
                sent.fetch_add(chunk.len() as u64, Ordering::SeqCst);
            }
            let _ = wr.write_all(b"0\r\n\r\n").await;
        })
    };
    let status = tokio::time::timeout(Duration::from_secs(30), read_status(&mut rd))
        .await
        .unwrap();
    let sent_at_answer = sent.load(Ordering::SeqCst);
    assert_eq!(status, Some(413));
    assert!(
        sent_at_answer < 20 * 1024 * 1024,
        "answer came after {sent_at_answer} bytes"
    );
    writer.abort();
    let rss_after = rss_kb();
    eprintln!(
        "100 MB chunked body: answered 413 after {} KiB sent; RSS {} -> {} KiB",
        sent_at_answer / 1024,
        rss_before,
        rss_after
    );
    assert!(
        rss_after.saturating_sub(rss_before) < 64 * 1024,
        "RSS grew by {} KiB",
        rss_after.saturating_sub(rss_before)
    );
    assert!(b.sink.delivered().is_empty());
    assert_eq!(rejected(&b, "too_large"), 2);
    assert_eq!(b.post_signed("msg_small", order("s1", 1)).await.status, 200);
}

#[tokio::test]
async fn slow_body_times_out_with_408() {
    let b = bridge(Opts {
        request_timeout_ms: 500,
        ..Opts::default()
    })
    .await;
    let body = order("slow", 1);
    let mut s = TcpStream::connect(b.addr).await.unwrap();
    let head = raw_head(
        &b,
        "msg_slow",
        &body,
        &format!("content-length: {}\r\n", body.len()),
    );
    s.write_all(head.as_bytes()).await.unwrap();
    let t0 = Instant::now();
    // A slowloris: one byte now and then, never the whole body in time.
    let (mut rd, mut wr) = s.into_split();
    let trickle = {
        let body = body.clone();
        tokio::spawn(async move {
            for byte in body {
                if wr.write_all(&[byte]).await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    let status = tokio::time::timeout(Duration::from_secs(5), read_status(&mut rd))
        .await
        .unwrap();
    assert_eq!(status, Some(408));
    let took = t0.elapsed();
    assert!(took < Duration::from_secs(2), "took {took:?}");
    trickle.abort();
    assert!(b.sink.delivered().is_empty());
    assert_eq!(rejected(&b, "timeout"), 1);
}

#[tokio::test]
async fn ten_thousand_headers_are_refused_and_the_server_survives() {
    let b = bridge(Opts::default()).await;
    let mut s = TcpStream::connect(b.addr).await.unwrap();
    let mut head = format!(
        "POST {PATH} HTTP/1.1\r\nhost: {}\r\ncontent-type: application/json\r\n",
        b.addr
    );
    for i in 0..10_000 {
        head.push_str(&format!("x-h-{i}: v\r\n"));
    }
    head.push_str("content-length: 2\r\n\r\n{}");
    let _ = s.write_all(head.as_bytes()).await;
    let status = tokio::time::timeout(Duration::from_secs(5), read_status(&mut s))
        .await
        .unwrap();
    // hyper answers 431 (or just closes): never a 2xx, never a crash.
    assert!(matches!(status, Some(431) | None), "{status:?}");
    assert_eq!(b.post_signed("msg_alive", order("a1", 1)).await.status, 200);
}

#[tokio::test]
async fn content_type_method_path_and_declared_size() {
    let b = bridge(Opts::default()).await;
    let body = order("ct", 1);
    let mut h = std_headers("msg_ct", now(), &body);
    h[0].1 = "text/plain".into();
    let a = b.post(&h, body.clone()).await;
    assert_eq!(a.status, 415);
    let a = b.post(&h[1..], body.clone()).await;
    assert_eq!(a.status, 415, "no content type");
    let r = b.client.get(&b.url).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 405);
    let r = b
        .client
        .post(format!("http://{}/other", b.addr))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 404);
    // Over the limit by one byte, and well-signed: 413.
    let big = vec![b' '; 1024 * 1024 + 1];
    let h = std_headers("msg_big", now(), &big);
    assert_eq!(b.post(&h, big).await.status, 413);
    // Exactly the limit is accepted (trailing whitespace is valid JSON).
    let mut exact = order("exact", 1);
    exact.resize(1024 * 1024, b' ');
    let h = std_headers("msg_exact", now(), &exact);
    assert_eq!(b.post(&h, exact).await.status, 200);
    assert_eq!(b.sink.delivered().len(), 1);
    assert!(
        b.sink
            .delivered()
            .iter()
            .all(|m| m.header("fondo-event-id") == Some("msg_exact"))
    );
}

// ---------- lifecycle ----------

#[tokio::test]
async fn graceful_shutdown_finishes_in_flight_and_refuses_new() {
    let b = bridge(Opts {
        faults: Faults {
            latency: Duration::from_millis(500),
            ..Faults::default()
        },
        ..Opts::default()
    })
    .await;
    let in_flight = {
        let url = b.url.clone();
        let body = order("g1", 1);
        let h = std_headers("msg_graceful", now(), &body);
        let client = b.client.clone();
        tokio::spawn(async move {
            let mut req = client.post(url).body(body);
            for (k, v) in h {
                req = req.header(k, v);
            }
            req.send().await.unwrap().status().as_u16()
        })
    };
    common::eventually(
        "the first request to be in flight",
        Duration::from_secs(30),
        || b.dispatcher.in_flight() > 0,
    )
    .await;
    b.shutdown.cancel();
    common::eventually(
        "the webhook source to report not ready after shutdown",
        Duration::from_secs(30),
        || {
            b.readiness
                .snapshot()
                .get("webhook")
                .is_some_and(|r| r.is_err())
        },
    )
    .await;
    // A new request: refused (connection refused, or 503 on a connection still open).
    let fresh = reqwest::Client::builder().no_proxy().build().unwrap();
    let body = order("g2", 1);
    let mut req = fresh.post(&b.url).body(body.clone());
    for (k, v) in std_headers("msg_after_shutdown", now(), &body) {
        req = req.header(k, v);
    }
    match req.send().await {
        Ok(r) => assert_eq!(r.status().as_u16(), 503),
        Err(e) => assert!(e.is_connect() || e.is_request(), "{e}"),
    }
    assert_eq!(in_flight.await.unwrap(), 200, "in-flight request finished");
    let r = tokio::time::timeout(Duration::from_secs(5), b.task).await;
    assert!(matches!(r, Ok(Ok(Ok(())))), "run() returned cleanly");
    assert_eq!(b.sink.delivered().len(), 1);
}

#[tokio::test]
async fn simulator_sends_generated_events_all_acknowledged() {
    let b = bridge(Opts::default()).await;
    let sender = b.sender(3);
    let mut g = fondo_bridge::simulator::generator::Generator::new(7, "c1", 50, 0);
    let events: Vec<Outgoing> = (0..300)
        .map(|i| Outgoing::new(format!("msg_gen_{i}"), g.next_event()))
        .collect();
    let report = sender.send_all(events, None).await;
    assert_eq!(report.sent, 300);
    assert_eq!(report.acknowledged, 300, "{}", report.summary());
    assert_eq!(report.attempts, 300);
    assert_eq!(b.sink.delivered().len(), 300);
    eprintln!("simulator over loopback: {}", report.summary());
}

#[tokio::test]
async fn http2_prior_knowledge_is_served() {
    let b = bridge(Opts::default()).await;
    let client = reqwest::Client::builder()
        .no_proxy()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let body = order("h2", 1);
    let mut req = client.post(&b.url).body(body.clone());
    for (k, v) in std_headers("msg_h2", now(), &body) {
        req = req.header(k, v);
    }
    let r = req.send().await.expect("h2c request");
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(b.sink.delivered().len(), 1);
}

// ---------- slow clients (slowloris) ----------

/// Reads one whole HTTP/1.1 response (head and `content-length` body); returns its status.
async fn read_response(s: &mut TcpStream) -> u16 {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map_or(0, |v| v.trim().parse().unwrap());
            if buf.len() >= end + 4 + len {
                return head.split_whitespace().nth(1).unwrap().parse().unwrap();
            }
        }
        let n = s.read(&mut chunk).await.unwrap();
        assert!(n > 0, "closed mid-response");
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Reads until the server closes the connection; returns how long that took and what was read.
async fn until_closed(s: &mut TcpStream, limit: Duration) -> (Duration, Vec<u8>) {
    let t0 = Instant::now();
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout(limit.saturating_sub(t0.elapsed()), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (t0.elapsed(), got),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) => panic!("connection still open after {limit:?}"),
        }
    }
}

#[tokio::test]
async fn headers_trickled_a_byte_a_second_are_cut_off_at_the_header_read_timeout() {
    let b = bridge(Opts {
        header_read_timeout_ms: 1_000,
        ..Opts::default()
    })
    .await;
    let s = TcpStream::connect(b.addr).await.unwrap();
    let (mut rd, mut wr) = s.into_split();
    let t0 = Instant::now();
    wr.write_all(format!("POST {PATH} HTTP/1.1\r\nHost: x\r\n").as_bytes())
        .await
        .unwrap();
    // One header byte per second, for up to 30 s; stops when the server has closed.
    let trickle = tokio::spawn(async move {
        let mut sent = 0usize;
        for byte in b"x-slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaa".iter() {
            tokio::time::sleep(Duration::from_secs(1)).await;
            if wr.write_all(&[*byte]).await.is_err() {
                break;
            }
            sent += 1;
        }
        sent
    });
    let mut got = Vec::new();
    let mut buf = [0u8; 256];
    let closed = loop {
        match tokio::time::timeout(Duration::from_secs(10), rd.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break t0.elapsed(),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) => panic!("the slow client still held the connection after 10 s"),
        }
    };
    trickle.abort();
    // Timeout 1 s; the slack is for a loaded 2-core machine, not a performance claim.
    assert!(
        closed >= Duration::from_millis(900) && closed < Duration::from_secs(4),
        "closed after {closed:?}"
    );
    assert!(
        !got.starts_with(b"HTTP/1.1 2"),
        "{:?}",
        String::from_utf8_lossy(&got)
    );
    assert!(b.sink.delivered().is_empty());
    eprintln!(
        "slow headers cut off after {closed:?} (header_read_timeout 1 s); answer: {:?}",
        String::from_utf8_lossy(&got)
    );
    // The server is unharmed.
    assert_eq!(
        b.post_signed("msg_after_slow", order("s1", 1)).await.status,
        200
    );
}

#[tokio::test]
async fn a_connection_that_sends_nothing_or_half_an_h2_preface_is_closed() {
    let b = bridge(Opts {
        header_read_timeout_ms: 1_000,
        ..Opts::default()
    })
    .await;
    let mut silent = TcpStream::connect(b.addr).await.unwrap();
    let mut half = TcpStream::connect(b.addr).await.unwrap();
    half.write_all(b"PRI * HTTP/2.0\r\n").await.unwrap();
    let ((t_silent, _), (t_half, _)) = tokio::join!(
        until_closed(&mut silent, Duration::from_secs(10)),
        until_closed(&mut half, Duration::from_secs(10)),
    );
    for t in [t_silent, t_half] {
        assert!(
            t >= Duration::from_millis(900) && t < Duration::from_secs(4),
            "closed after {t:?}"
        );
    }
    assert_eq!(
        b.post_signed("msg_after_silent", order("s2", 1))
            .await
            .status,
        200
    );
}

#[tokio::test]
async fn an_idle_keep_alive_connection_serves_requests_until_the_header_timeout() {
    let b = bridge(Opts {
        header_read_timeout_ms: 1_000,
        ..Opts::default()
    })
    .await;
    let mut s = TcpStream::connect(b.addr).await.unwrap();
    let body = order("ka", 1);
    for (i, pause) in [0u64, 300, 300].into_iter().enumerate() {
        // Idle on the open connection, but less than the header read timeout.
        tokio::time::sleep(Duration::from_millis(pause)).await;
        let cl = format!("content-length: {}\r\n", body.len());
        let head = raw_head(&b, &format!("msg_ka_{i}"), &body, &cl);
        s.write_all(head.as_bytes()).await.unwrap();
        s.write_all(&body).await.unwrap();
        assert_eq!(read_response(&mut s).await, 200, "request {i}");
    }
    // Then idle past the timeout: hyper closes the keep-alive connection.
    let (idle, _) = until_closed(&mut s, Duration::from_secs(10)).await;
    assert!(idle < Duration::from_secs(4), "closed after {idle:?} idle");
    assert_eq!(b.sink.delivered().len(), 3);
}
