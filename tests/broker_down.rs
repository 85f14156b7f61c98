//! A broker that is not there when the bridge starts: the real `fondo-bridge` binary must start
//! anyway, read and spool the WebSocket stream, answer webhooks 503 with `Retry-After`, report
//! `/readyz` 503 naming the sink (without its address), and connect in the background; once the
//! broker is there, everything spooled arrives (checked by an independent consumer against what
//! the simulator sent) and `/readyz` is 200.
//!
//! - NATS: the test's own `nats-server`, stopped before the bridge starts and started later on
//!   the same port (its JetStream stream kept on disk).
//! - RabbitMQ (`FONDO_BRIDGE_TEST_AMQP`): an exchange that does not exist at start, declared by
//!   the test later.
//!
//! The delivery policy allows only 3 attempts with short backoff: were the waiting events
//! publishing (and failing) meanwhile, they would be dead-lettered within a second and the checks
//! below would find them missing from the stream.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
#[path = "reliability/support.rs"]
mod support;

use std::time::{Duration, Instant};

use fondo_bridge::simulator::stream::{self, SimHandle, StreamConfig};
use fondo_bridge::simulator::webhook_sender::Signer;
use support::*;

fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

async fn sim(rate: f64, count: u64) -> SimHandle {
    let cfg = StreamConfig {
        rate,
        count: Some(count),
        objects: 50,
        heartbeat: Some(Duration::from_millis(1000)),
        client_ids: vec![CID.to_owned()],
        record: true,
        ..StreamConfig::default()
    };
    let (_, h) = stream::start(cfg).await.expect("simulator starts");
    h
}

/// Few attempts, short backoff: an event that kept failing while the broker is away would be
/// dead-lettered quickly.
const STRICT_DELIVERY: &str =
    "{ max_attempts: 3, backoff_initial_ms: 50, backoff_max_ms: 200, drain_timeout_ms: 5000 }";

/// `GET path` on the admin port: (status, body).
fn admin_get(port: u16, path: &str) -> (u16, String) {
    let raw = http_get(port, path).unwrap_or_default();
    let status = raw
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = raw.split("\r\n\r\n").nth(1).unwrap_or_default().to_owned();
    (status, body)
}

async fn readyz_becomes(admin: u16, want: u16, within: Duration) -> String {
    let deadline = Instant::now() + within;
    loop {
        let (status, body) = blocking(|| admin_get(admin, "/readyz"));
        if status == want {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "/readyz stayed {status} (wanted {want}) for {within:?}:\n{body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Posts one signed webhook; returns the status and the `Retry-After` header.
async fn post_webhook(port: u16, id: &str) -> (u16, Option<String>) {
    let body = r#"{"eventType":"order.update","current":{"id":"o-webhook-1","status":"open"}}"#;
    let signer = Signer::standard(WEBHOOK_SECRET).unwrap();
    let ts = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let mut req = reqwest::Client::new()
        .post(format!("http://127.0.0.1:{port}/fondo/webhooks/callback"))
        .header("content-type", "application/json")
        .body(body);
    for (k, v) in signer.headers(id, ts, body.as_bytes()) {
        req = req.header(k, v);
    }
    let r = req.send().await.unwrap();
    let retry_after = r
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    (r.status().as_u16(), retry_after)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_down_at_start_the_stream_is_spooled_and_delivered_once_nats_is_up() {
    let Some(mut nats) = blocking(NatsServer::start) else {
        return;
    };
    let url = nats.url();
    nats_stream(&url, "DOWN", "fondo.events").await;
    blocking(|| nats.stop());
    assert!(!accepts(nats.port), "nothing listens on the NATS port now");

    const COUNT: u64 = 600;
    let sim = sim(100.0, COUNT).await;
    let dir = tempfile::tempdir().unwrap();
    let webhook = free_port();
    let mut cfg = ConfigBuilder::new(
        dir.path(),
        free_port(),
        &format!(
            "{{ type: nats, url: \"{url}\", connect_timeout_ms: 1000, reconnect_wait_ms: 500, reconnect_max_ms: 300 }}"
        ),
    );
    cfg.ws = Some(sim.base_url());
    cfg.webhook = Some(webhook);
    cfg.delivery = STRICT_DELIVERY.into();
    let secrets = format!("[\"{WEBHOOK_SECRET}\"]");
    // `start` waits for /healthz 200: the bridge is up although its only broker is not.
    let bridge = blocking(|| {
        BridgeProc::start(
            dir.path(),
            cfg.admin,
            &cfg.render(),
            &[WS_TOKEN_ENV, (WEBHOOK_SECRETS_ENV, &secrets)],
        )
    });
    let admin = bridge.admin;

    // The stream is read and spooled meanwhile, for seconds: longer than the 3 attempts of the
    // delivery policy would last.
    common::eventually(
        "events spooled while NATS is down",
        Duration::from_secs(30),
        || bridge.metric("fondo_bridge_spool_events").unwrap_or(0.0) >= 300.0,
    )
    .await;

    // Readiness names the sink, and neither its address nor its port.
    let body = readyz_becomes(admin, 503, Duration::from_secs(5)).await;
    let line = body
        .lines()
        .find(|l| l.starts_with("sink:main:"))
        .unwrap_or_else(|| panic!("/readyz names the sink: {body}"));
    assert!(line.contains("not connected"), "{body}");
    assert!(
        !body.contains("127.0.0.1") && !body.contains(&nats.port.to_string()),
        "/readyz shows no broker address: {body}"
    );

    // A webhook whose route needs the sink is refused for now, with Retry-After.
    let (status, retry_after) = post_webhook(webhook, "msg_down_1").await;
    assert_eq!(status, 503, "webhook while the sink is not connected");
    assert!(
        retry_after
            .as_deref()
            .is_some_and(|v| v.parse::<u64>().is_ok()),
        "Retry-After: {retry_after:?}"
    );
    let spooled_while_down = bridge.metric("fondo_bridge_spool_events").unwrap_or(0.0);

    // The broker comes up on the same port.
    blocking(|| nats.spawn());
    let body = readyz_becomes(admin, 200, Duration::from_secs(30)).await;
    assert!(body.contains("sink:main: ok"), "{body}");
    let (status, _) = post_webhook(webhook, "msg_down_2").await;
    assert_eq!(status, 200, "webhook once the sink is connected");

    // Everything the simulator sent is in the stream, nothing dead-lettered.
    common::eventually(
        "the simulator to finish sending",
        Duration::from_secs(60),
        || sim.events_sent() >= COUNT,
    )
    .await;
    let sent = sim.sent_events(CID);
    let got = nats_collect(&url, "DOWN", Duration::from_secs(60), Want::of(&sent, &[])).await;
    let dead = fallback_bodies(&dir.path().join("dead-letter.jsonl"));
    let t = tally(&sent, &got, &dead);
    eprintln!(
        "BROKER-DOWN nats: sent={} delivered={} duplicated={} lost={} dead_lettered={} spooled_while_down={spooled_while_down} state: {}",
        t.sent,
        t.delivered,
        t.duplicated,
        t.lost,
        t.dead_lettered,
        nats_stream_state(&url, "DOWN").await
    );
    assert_eq!(t.sent, COUNT as usize);
    assert_eq!(t.lost, 0, "lost: {:?}", t.lost_indexes);
    assert_eq!(t.dead_lettered, 0, "nothing dead-lettered while waiting");
    assert_eq!(t.delivered, t.sent);
    assert_eq!(t.order_violations, 0);
    assert_eq!(t.corrupted, 0);
    // The webhook accepted after the connection is there too.
    assert!(
        got.iter()
            .any(|b| std::str::from_utf8(b).is_ok_and(|s| s.contains("o-webhook-1"))),
        "the webhook answered 200 is in the stream"
    );
    // The spool empties.
    wait_idle(&bridge, Duration::from_secs(30)).await;
    assert!(
        bridge
            .log_text()
            .contains("sink cannot connect yet; starting without it"),
        "the start says why the sink is not connected"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_exchange_missing_at_start_is_used_once_declared() {
    let Some(url) = common::broker("AMQP") else {
        return;
    };
    let exchange = common::unique("fb-later-x");
    let queue = common::unique("fb-later-q");

    const COUNT: u64 = 400;
    let sim = sim(100.0, COUNT).await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = ConfigBuilder::new(
        dir.path(),
        free_port(),
        &format!(
            "{{ type: rabbitmq, url: \"{url}\", exchange: {exchange}, reconnect_wait_ms: 500, reconnect_initial_ms: 100, reconnect_max_ms: 300 }}"
        ),
    );
    cfg.ws = Some(sim.base_url());
    cfg.delivery = STRICT_DELIVERY.into();
    let bridge =
        blocking(|| BridgeProc::start(dir.path(), cfg.admin, &cfg.render(), &[WS_TOKEN_ENV]));
    let admin = bridge.admin;

    common::eventually(
        "events spooled while the exchange is missing",
        Duration::from_secs(30),
        || bridge.metric("fondo_bridge_spool_events").unwrap_or(0.0) >= 250.0,
    )
    .await;
    let body = readyz_becomes(admin, 503, Duration::from_secs(5)).await;
    assert!(
        body.lines()
            .any(|l| l.starts_with("sink:main:") && l.contains("not connected")),
        "{body}"
    );
    assert!(!body.contains("guest"), "no credentials in /readyz: {body}");
    assert!(
        bridge.log_text().contains(&exchange) && bridge.log_text().contains("does not exist"),
        "the log says which exchange is missing"
    );

    // The exchange's owner declares it (and a queue bound to it) now.
    rabbit_topology(&url, &exchange, &queue, "#").await;
    readyz_becomes(admin, 200, Duration::from_secs(30)).await;

    common::eventually(
        "the simulator to finish sending",
        Duration::from_secs(60),
        || sim.events_sent() >= COUNT,
    )
    .await;
    let sent = sim.sent_events(CID);
    let got = rabbit_collect(&url, &queue, Duration::from_secs(60), Want::of(&sent, &[])).await;
    let dead = fallback_bodies(&dir.path().join("dead-letter.jsonl"));
    let t = tally(&sent, &got, &dead);
    eprintln!(
        "BROKER-DOWN rabbitmq: sent={} delivered={} duplicated={} lost={} dead_lettered={}",
        t.sent, t.delivered, t.duplicated, t.lost, t.dead_lettered
    );
    assert_eq!(t.sent, COUNT as usize);
    assert_eq!(t.lost, 0, "lost: {:?}", t.lost_indexes);
    assert_eq!(t.dead_lettered, 0);
    assert_eq!(t.delivered, COUNT as usize);
    assert_eq!(t.order_violations, 0);
    wait_idle(&bridge, Duration::from_secs(30)).await;
}
