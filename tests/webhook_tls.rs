//! The webhook source over TLS: a self-signed certificate made here (rcgen), real HTTPS on
//! 127.0.0.1 with HTTP/1.1 and HTTP/2 negotiated by ALPN, refusals of plain HTTP and of broken
//! certificate files, the handshake deadline, and the graceful drain over TLS.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fondo_bridge::config::{
    Config, EventConfig, Secret, SignatureConfig, TlsServerConfig, WebhookSourceConfig,
};
use fondo_bridge::dispatch::Dispatcher;
use fondo_bridge::metrics::Metrics;
use fondo_bridge::simulator::webhook_sender::Signer;
use fondo_bridge::sinks::DynSink;
use fondo_bridge::sinks::testing::{Faults, TestSink};
use fondo_bridge::sources::Readiness;
use fondo_bridge::sources::webhook::{WebhookError, WebhookSource};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const PATH: &str = "/fondo/webhooks/callback";

/// A self-signed certificate for `localhost` and 127.0.0.1, written as PEM files.
struct Pki {
    cert_pem: String,
    cert_file: PathBuf,
    key_file: PathBuf,
}

fn pki(dir: &Path, name: &str) -> Pki {
    let ck =
        rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    let cert_pem = ck.cert.pem();
    let cert_file = dir.join(format!("{name}.crt"));
    let key_file = dir.join(format!("{name}.key"));
    std::fs::write(&cert_file, &cert_pem).unwrap();
    std::fs::write(&key_file, ck.signing_key.serialize_pem()).unwrap();
    Pki {
        cert_pem,
        cert_file,
        key_file,
    }
}

fn dispatcher(sink: Arc<TestSink>, dir: &Path) -> Dispatcher {
    common::rig::DispatcherRig::new(dir.join("dead-letter.jsonl"))
        .sink("s", sink as DynSink)
        .route_all("s", "fondo.{entity}")
        .start(&Arc::new(Metrics::new()))
}

fn webhook_cfg(addr: SocketAddr, tls: Option<TlsServerConfig>) -> WebhookSourceConfig {
    WebhookSourceConfig {
        listen: addr,
        path: PATH.into(),
        signature: SignatureConfig::StandardWebhooks {
            secrets: vec![Secret(SECRET.into())],
            secrets_file: None,
            tolerance_s: 300,
        },
        max_body_bytes: 1024 * 1024,
        event_type_header: None,
        request_timeout_ms: 5_000,
        ack_timeout_ms: 5_000,
        header_read_timeout_ms: 1_000,
        tls,
        limits: Default::default(),
    }
}

struct Rig {
    addr: SocketAddr,
    sink: Arc<TestSink>,
    pki: Pki,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), WebhookError>>,
    readiness: Arc<Readiness>,
    _dir: tempfile::TempDir,
}

async fn rig(faults: Faults) -> Rig {
    let dir = tempfile::tempdir().unwrap();
    let pki = pki(dir.path(), "server");
    let sink = Arc::new(TestSink::new("s", faults));
    let d = dispatcher(sink.clone(), dir.path());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let tls = TlsServerConfig {
        cert_file: pki.cert_file.clone(),
        key_file: pki.key_file.clone(),
    };
    let readiness = Arc::new(Readiness::default());
    let source = WebhookSource::new(
        webhook_cfg(addr, Some(tls)),
        EventConfig {
            id_pointer: None,
            id_header: Some("webhook-id".into()),
        },
        d,
        readiness.clone(),
    )
    .unwrap();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(source.run(listener, shutdown.clone()));
    Rig {
        addr,
        sink,
        pki,
        shutdown,
        task,
        readiness,
        _dir: dir,
    }
}

impl Rig {
    fn url(&self) -> String {
        format!("https://localhost:{}{PATH}", self.addr.port())
    }

    /// A client that trusts only this rig's certificate and resolves `localhost` to the rig.
    fn client(&self, http1_only: bool) -> reqwest::Client {
        let cert = reqwest::Certificate::from_pem(self.pki.cert_pem.as_bytes()).unwrap();
        let mut b = reqwest::Client::builder()
            .no_proxy()
            .tls_certs_only([cert])
            .resolve("localhost", self.addr);
        if http1_only {
            b = b.http1_only();
        }
        b.build().unwrap()
    }
}

fn order(id: &str) -> Vec<u8> {
    format!(r#"{{"eventType":"order.update","current":{{"id":"{id}","clientId":"c1"}}}}"#)
        .into_bytes()
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

async fn post_signed(
    client: &reqwest::Client,
    url: &str,
    id: &str,
    body: Vec<u8>,
) -> reqwest::Result<reqwest::Response> {
    let signer = Signer::standard(SECRET).unwrap();
    let mut req = client
        .post(url)
        .header("content-type", "application/json")
        .body(body.clone());
    for (k, v) in signer.headers(id, now(), &body) {
        req = req.header(k, v);
    }
    req.send().await
}

fn delivered_ids(sink: &TestSink) -> Vec<String> {
    sink.delivered()
        .iter()
        .filter_map(|m| m.header("fondo-event-id").map(str::to_owned))
        .collect()
}

#[tokio::test]
async fn https_http1_and_http2_by_alpn_are_delivered_and_answered_2xx() {
    let r = rig(Faults::default()).await;

    let h1 = r.client(true);
    let resp = post_signed(&h1, &r.url(), "msg_tls_h1", order("t1"))
        .await
        .expect("HTTPS over HTTP/1.1");
    assert_eq!(resp.version(), reqwest::Version::HTTP_11);
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(resp.text().await.unwrap(), r#"{"status":"delivered"}"#);

    // reqwest offers h2 and http/1.1 by ALPN; the server picks h2.
    let h2 = r.client(false);
    let resp = post_signed(&h2, &r.url(), "msg_tls_h2", order("t2"))
        .await
        .expect("HTTPS over HTTP/2");
    assert_eq!(resp.version(), reqwest::Version::HTTP_2);
    assert_eq!(resp.status().as_u16(), 200);

    // Keep-alive over TLS: a second request on the same client and connection.
    let resp = post_signed(&h1, &r.url(), "msg_tls_h1b", order("t3"))
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    // A retry over the other protocol is deduplicated, not published again.
    let resp = post_signed(&h2, &r.url(), "msg_tls_h1", order("t1"))
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);

    let mut ids = delivered_ids(&r.sink);
    ids.sort();
    assert_eq!(ids, ["msg_tls_h1", "msg_tls_h1b", "msg_tls_h2"]);
    // Bad signatures are still refused over TLS.
    let resp = h2
        .post(r.url())
        .header("content-type", "application/json")
        .header("webhook-id", "msg_forged")
        .header("webhook-timestamp", now().to_string())
        .header("webhook-signature", "v1,AAAA")
        .body(order("f"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 401);
    assert_eq!(r.sink.delivered().len(), 3);
}

#[tokio::test]
async fn plain_http_to_the_tls_port_fails_and_nothing_is_published() {
    let r = rig(Faults::default()).await;
    let plain = reqwest::Client::builder().no_proxy().build().unwrap();
    let url = format!("http://127.0.0.1:{}{PATH}", r.addr.port());
    match post_signed(&plain, &url, "msg_plain", order("p")).await {
        Ok(resp) => panic!("plain HTTP was answered: {}", resp.status()),
        Err(e) => assert!(!e.is_status(), "{e}"),
    }
    // The same on a raw socket: whatever comes back is not an HTTP answer.
    let mut s = TcpStream::connect(r.addr).await.unwrap();
    s.write_all(
        b"POST /fondo/webhooks/callback HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\n\r\n{}",
    )
    .await
    .unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf))
        .await
        .expect("the server closes the connection");
    assert!(!buf.starts_with(b"HTTP/"), "{buf:?}");
    assert!(r.sink.delivered().is_empty());
    // HTTPS still works after the garbage.
    let resp = post_signed(&r.client(true), &r.url(), "msg_after", order("a"))
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
}

#[tokio::test]
async fn a_client_that_never_starts_the_handshake_is_cut_off() {
    let r = rig(Faults::default()).await;
    let mut s = TcpStream::connect(r.addr).await.unwrap();
    let t0 = Instant::now();
    let mut buf = [0u8; 64];
    // Configured header_read_timeout_ms: 1000. Generous slack for a loaded 2-core machine.
    let n = tokio::time::timeout(Duration::from_secs(6), s.read(&mut buf))
        .await
        .expect("closed by the server within timeout + slack");
    assert!(matches!(n, Ok(0) | Err(_)), "{n:?}");
    let waited = t0.elapsed();
    assert!(
        waited >= Duration::from_millis(900),
        "closed by the timeout, not at once: {waited:?}"
    );
    eprintln!("silent TLS client closed after {waited:?} (timeout 1 s)");
}

#[tokio::test]
async fn shutdown_over_tls_finishes_in_flight_and_stops_accepting() {
    let r = rig(Faults {
        latency: Duration::from_millis(500),
        ..Faults::default()
    })
    .await;
    common::eventually(
        "the webhook source to report readiness",
        Duration::from_secs(30),
        || r.readiness.snapshot().contains_key("webhook"),
    )
    .await;
    let client = r.client(false);
    let in_flight = {
        let (client, url) = (client.clone(), r.url());
        tokio::spawn(async move {
            post_signed(&client, &url, "msg_drain", order("d"))
                .await
                .map(|r| r.status().as_u16())
        })
    };
    common::eventually(
        "the in-flight request to reach the sink",
        Duration::from_secs(30),
        || r.sink.calls() > 0,
    )
    .await;
    r.shutdown.cancel();
    assert_eq!(
        in_flight
            .await
            .unwrap()
            .expect("in-flight request answered"),
        200
    );
    let done = tokio::time::timeout(Duration::from_secs(8), r.task).await;
    assert!(matches!(done, Ok(Ok(Ok(())))), "run() returned cleanly");
    assert!(TcpStream::connect(r.addr).await.is_err(), "listener closed");
    assert_eq!(delivered_ids(&r.sink), ["msg_drain"]);
}

async fn start_error(tls: TlsServerConfig) -> String {
    let dir = tempfile::tempdir().unwrap();
    let sink = Arc::new(TestSink::new("s", Faults::default()));
    let d = dispatcher(sink, dir.path());
    let addr: SocketAddr = "127.0.0.1:0".parse().unwrap();
    match WebhookSource::new(
        webhook_cfg(addr, Some(tls)),
        EventConfig::default(),
        d,
        Arc::new(Readiness::default()),
    ) {
        Ok(_) => panic!("started with a broken TLS config"),
        Err(e) => e.to_string(),
    }
}

#[tokio::test]
async fn unusable_certificate_or_key_files_are_clear_start_errors() {
    let dir = tempfile::tempdir().unwrap();
    let good = pki(dir.path(), "good");
    let other = pki(dir.path(), "other");
    let missing = dir.path().join("nope.crt");

    let e = start_error(TlsServerConfig {
        cert_file: missing.clone(),
        key_file: good.key_file.clone(),
    })
    .await;
    assert!(e.contains(&missing.display().to_string()), "{e}");
    assert!(e.contains("cannot read"), "{e}");

    let e = start_error(TlsServerConfig {
        cert_file: good.cert_file.clone(),
        key_file: dir.path().join("nope.key"),
    })
    .await;
    assert!(e.contains("nope.key") && e.contains("cannot read"), "{e}");

    // A key file given as the certificate: no CERTIFICATE block.
    let e = start_error(TlsServerConfig {
        cert_file: good.key_file.clone(),
        key_file: good.key_file.clone(),
    })
    .await;
    assert!(
        e.contains("cert_file") && e.contains("no CERTIFICATE"),
        "{e}"
    );

    // A certificate given as the key: no private key.
    let e = start_error(TlsServerConfig {
        cert_file: good.cert_file.clone(),
        key_file: good.cert_file.clone(),
    })
    .await;
    assert!(
        e.contains("key_file") && e.contains("no PRIVATE KEY"),
        "{e}"
    );

    // A key that belongs to another certificate.
    let e = start_error(TlsServerConfig {
        cert_file: good.cert_file.clone(),
        key_file: other.key_file.clone(),
    })
    .await;
    assert!(
        e.contains(&good.cert_file.display().to_string())
            && e.contains(&other.key_file.display().to_string())
            && e.contains("cannot be used together"),
        "{e}"
    );
}

/// The whole bridge refuses to start, naming the file, when the config points at a missing key.
#[tokio::test]
async fn bridge_start_fails_on_a_missing_key_file() {
    let dir = tempfile::tempdir().unwrap();
    let good = pki(dir.path(), "good");
    let yaml = format!(
        r#"
sources:
  webhook:
    listen: 127.0.0.1:0
    signature: {{ scheme: standard-webhooks, secrets: ["{SECRET}"] }}
    tls: {{ cert_file: {cert}, key_file: {dir}/missing.key }}
sinks:
  files: {{ type: file, dir: {dir}/out, fsync: never }}
routes:
  - {{ name: all, match: ["*"], to: [{{ sink: files, topic: "fondo.{{entity}}" }}] }}
dead_letter: {{ fallback_file: {dir}/dead-letter.jsonl }}
spool: {{ enabled: false }}
"#,
        cert = good.cert_file.display(),
        dir = dir.path().display()
    );
    let path = dir.path().join("bridge.yaml");
    std::fs::write(&path, yaml).unwrap();
    let cfg = match Config::load(&path) {
        Ok(c) => c,
        Err(e) => panic!("config: {:?}", e.problems()),
    };
    match fondo_bridge::app::Bridge::start(cfg).await {
        Ok(_) => panic!("bridge started without its key"),
        Err(e) => {
            let msg = e.to_string();
            assert!(msg.contains("missing.key"), "{msg}");
        }
    }
}
