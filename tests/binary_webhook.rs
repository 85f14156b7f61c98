//! The real binary, run as in production: signed webhooks in, files out, SIGTERM in the middle.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashSet;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fondo_bridge::simulator::generator::Generator;
use fondo_bridge::simulator::webhook_sender::{Outgoing, SenderOptions, Signer, WebhookSender};
use fondo_bridge::sinks::file::FileRecord;

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

struct Running {
    child: Child,
    webhook: u16,
    admin: u16,
    out: tempfile::TempDir,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
    }
}

fn config_text(
    webhook: u16,
    admin: u16,
    dir: &std::path::Path,
    fsync: &str,
    topic: &str,
) -> String {
    format!(
        r#"
sources:
  webhook:
    listen: 127.0.0.1:{webhook}
    signature: {{ scheme: standard-webhooks }}
sinks:
  files: {{ type: file, dir: {dir}/out, fsync: {fsync} }}
routes:
  - {{ name: all, match: ["*"], to: [{{ sink: files, topic: "{topic}" }}] }}
event: {{ id_header: webhook-id }}
dead_letter: {{ fallback_file: {dir}/dead-letter.jsonl }}
admin: {{ listen: 127.0.0.1:{admin} }}
delivery: {{ drain_timeout_ms: 10000 }}
"#,
        dir = dir.display(),
    )
}

fn start(latency_free: bool) -> Running {
    let out = tempfile::tempdir().unwrap();
    let webhook = common::free_port();
    let admin = common::free_port();
    let cfg = config_text(
        webhook,
        admin,
        out.path(),
        if latency_free { "never" } else { "batch" },
        "fondo.{entity}",
    );
    let path = out.path().join("bridge.yaml");
    std::fs::write(&path, cfg).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_fondo-bridge"))
        .args(["run", "--config"])
        .arg(&path)
        .env(
            "FONDO_BRIDGE__SOURCES__WEBHOOK__SIGNATURE__SECRETS",
            format!("[\"{SECRET}\"]"),
        )
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let r = Running {
        child,
        webhook,
        admin,
        out,
    };
    wait_ready(r.admin);
    r
}

fn wait_ready(admin: u16) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", admin)) {
            use std::io::{Read, Write};
            let _ = s.write_all(b"GET /readyz HTTP/1.0\r\n\r\n");
            let mut buf = String::new();
            let _ = s.read_to_string(&mut buf);
            if buf.starts_with("HTTP/1.0 200") || buf.starts_with("HTTP/1.1 200") {
                return;
            }
        }
        // Poll interval of this blocking wait (a plain fn, called from `start`).
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("bridge not ready on admin port {admin}");
}

fn records(dir: &std::path::Path) -> Vec<FileRecord> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in rd {
        let text = std::fs::read_to_string(e.unwrap().path()).unwrap();
        for line in text.lines() {
            out.push(serde_json::from_str(line).unwrap());
        }
    }
    out
}

fn outgoing(n: usize) -> Vec<Outgoing> {
    let mut g = Generator::new(7, "49ad7378-121c-4a53-9894-dfd14a7b4877", 50, 1024);
    (0..n)
        .map(|i| Outgoing::new(format!("msg_{i:05}"), g.next_event()))
        .collect()
}

fn sender(port: u16, attempts: u32) -> WebhookSender {
    let mut o = SenderOptions::new(
        format!("http://127.0.0.1:{port}/fondo/webhooks/callback"),
        Signer::standard(SECRET).unwrap(),
    );
    o.concurrency = 8;
    o.max_attempts = attempts;
    o.backoff_initial = Duration::from_millis(20);
    o.backoff_max = Duration::from_millis(200);
    o.request_timeout = Duration::from_secs(15);
    WebhookSender::new(o).unwrap()
}

fn sigterm(child: &Child) {
    let ok = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_webhook_is_on_disk_and_sigterm_exits_zero() {
    let mut bridge = start(false);
    let events = outgoing(400);
    let s = sender(bridge.webhook, 1);
    let send = tokio::spawn(async move { s.send_all(events, Some(2000.0)).await });
    let admin = bridge.admin;
    common::eventually_async(
        "the first webhooks to be published",
        Duration::from_secs(30),
        || async move { metric(admin, "fondo_bridge_published_total").await > 0.0 },
    )
    .await;
    sigterm(&bridge.child);
    let report = send.await.unwrap();
    let status = tokio::task::spawn_blocking(move || {
        let st = bridge.child.wait().unwrap();
        (st, bridge)
    })
    .await
    .unwrap();
    let (st, bridge) = status;
    assert_eq!(st.code(), Some(0), "clean drain exits 0");
    let acked: HashSet<String> = report
        .deliveries
        .iter()
        .filter(|d| d.acknowledged)
        .map(|d| d.id.clone())
        .collect();
    let stored: HashSet<String> = records(&bridge.out.path().join("out"))
        .into_iter()
        .map(|r| r.event_id)
        .collect();
    assert!(
        !acked.is_empty(),
        "some events were acknowledged before SIGTERM"
    );
    assert!(
        acked.len() < 400,
        "SIGTERM landed mid-stream (else the test proves nothing): {} acked",
        acked.len()
    );
    let missing: Vec<_> = acked.difference(&stored).collect();
    assert!(
        missing.is_empty(),
        "acknowledged but not stored: {missing:?}"
    );
    // What was refused during shutdown got a non-2xx (503 or a closed connection), so Fondo retries.
    for d in report.deliveries.iter().filter(|d| !d.acknowledged) {
        assert!(d.statuses.iter().all(|s| *s == 0 || *s == 503), "{d:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_arrive_once_with_original_bytes_and_metrics_match() {
    let bridge = start(true);
    let events = outgoing(200);
    let bodies: std::collections::HashMap<String, bytes::Bytes> = events
        .iter()
        .map(|o| (o.id.clone(), o.body.clone()))
        .collect();
    let s = sender(bridge.webhook, 5);
    let mut report = s.send_all(events.clone(), None).await;
    assert_eq!(report.acknowledged, 200, "{}", report.summary());
    // Redeliver everything: deduplicated, not published again.
    report = s.send_all(events, None).await;
    assert_eq!(report.acknowledged, 200);
    let recs = records(&bridge.out.path().join("out"));
    assert_eq!(recs.len(), 200, "each event published once");
    for r in &recs {
        assert_eq!(
            r.payload_bytes(),
            bodies[&r.event_id].to_vec(),
            "original bytes"
        );
        assert!(
            r.payload_json.is_some(),
            "a compact JSON body is embedded as JSON, not escaped into a string"
        );
        assert_eq!(
            r.headers.get("fondo-source").map(String::as_str),
            Some("webhook")
        );
    }
    let metrics = reqwest::get(format!("http://127.0.0.1:{}/metrics", bridge.admin))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let value = |name: &str| -> f64 {
        metrics
            .lines()
            .filter(|l| l.starts_with(name))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    assert_eq!(
        value("fondo_bridge_received_total{source=\"webhook\"}"),
        400.0
    );
    assert_eq!(value("fondo_bridge_published_total"), 200.0);
    assert_eq!(value("fondo_bridge_deduplicated_total"), 200.0);
    assert_eq!(value("fondo_bridge_in_flight"), 0.0);
}

async fn metric(admin: u16, name: &str) -> f64 {
    let text = reqwest::get(format!("http://127.0.0.1:{admin}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

async fn wait_metric(admin: u16, name: &str, want: f64) {
    common::eventually_async(
        &format!("{name} to reach {want}"),
        Duration::from_secs(30),
        || async move { metric(admin, name).await == want },
    )
    .await;
}

fn sighup(child: &Child) {
    let ok = Command::new("kill")
        .args(["-HUP", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routing_reloads_on_sighup_and_rejects_an_invalid_file() {
    let bridge = start(true);
    let cfg_path = bridge.out.path().join("bridge.yaml");
    let events = outgoing(300);
    let s = sender(bridge.webhook, 5);
    // Phase 1 on the original table, with events still flowing while the file is swapped.
    let first: Vec<_> = events[..100].to_vec();
    let r = s.send_all(first, None).await;
    assert_eq!(r.acknowledged, 100);
    std::fs::write(
        &cfg_path,
        config_text(
            bridge.webhook,
            bridge.admin,
            bridge.out.path(),
            "never",
            "v2.{entity}",
        ),
    )
    .unwrap();
    let flowing = {
        let s = sender(bridge.webhook, 5);
        let ev: Vec<_> = events[100..200].to_vec();
        tokio::spawn(async move { s.send_all(ev, Some(2000.0)).await })
    };
    sighup(&bridge.child);
    wait_metric(bridge.admin, "fondo_bridge_routing_reloads_total", 1.0).await;
    assert_eq!(flowing.await.unwrap().acknowledged, 100);
    // An invalid file: rejected, the v2 table keeps running.
    std::fs::write(
        &cfg_path,
        config_text(
            bridge.webhook,
            bridge.admin,
            bridge.out.path(),
            "never",
            "v3.{nope}",
        ),
    )
    .unwrap();
    sighup(&bridge.child);
    wait_metric(
        bridge.admin,
        "fondo_bridge_routing_reload_failures_total",
        1.0,
    )
    .await;
    let r = s.send_all(events[200..].to_vec(), None).await;
    assert_eq!(r.acknowledged, 100);

    let recs = records(&bridge.out.path().join("out"));
    assert_eq!(recs.len(), 300, "no event lost or duplicated by the swaps");
    let ids: HashSet<&str> = recs.iter().map(|r| r.event_id.as_str()).collect();
    assert_eq!(ids.len(), 300);
    for r in &recs {
        let n: usize = r.event_id[4..].parse().unwrap();
        if n < 100 {
            assert!(
                r.topic.starts_with("fondo."),
                "{} went to {}",
                r.event_id,
                r.topic
            );
        } else if n >= 200 {
            assert!(
                r.topic.starts_with("v2."),
                "{} went to {}",
                r.event_id,
                r.topic
            );
        } else {
            assert!(r.topic.starts_with("fondo.") || r.topic.starts_with("v2."));
        }
        assert!(!r.topic.starts_with("v3."));
    }
}
