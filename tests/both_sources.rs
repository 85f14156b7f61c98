//! Both sources on at once, the lossless mode of the architecture (guarantee 3): the simulator
//! streams events over the WebSocket while its webhook sender POSTs every streamed event, signed,
//! to the same bridge. The whole bridge runs as `run` builds it (config file, app wiring, spool,
//! file sink); every event must be published exactly once, though each arrived twice.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::time::{Duration, Instant};

use fondo_bridge::app::Bridge;
use fondo_bridge::config::Config;
use fondo_bridge::metrics::SourceLabels;
use fondo_bridge::simulator::stream::{StreamConfig, start};
use fondo_bridge::simulator::webhook_sender::{
    Outgoing, SendReport, SenderOptions, Signer, WebhookSender,
};
use fondo_bridge::sinks::file::FileRecord;

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const CLIENT: &str = "49ad7378-121c-4a53-9894-dfd14a7b4877";
const EVENTS: u64 = 1500;

fn counter(bridge: &Bridge, family: &str, source: &str) -> u64 {
    let l = SourceLabels {
        source: source.into(),
    };
    match family {
        "received" => bridge.metrics.received.get_or_create(&l).get(),
        "deduplicated" => bridge.metrics.deduplicated.get_or_create(&l).get(),
        other => panic!("{other}"),
    }
}

/// Every line of every topic file the file sink wrote.
fn published(dir: &std::path::Path) -> Vec<FileRecord> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in entries {
        let path = e.unwrap().path();
        if path.extension().is_some_and(|x| x == "jsonl") {
            for line in std::fs::read_to_string(&path).unwrap().lines() {
                out.push(serde_json::from_str(line).unwrap());
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_sources_on_every_simulator_event_is_published_once() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let (_, sim) = start(StreamConfig {
        rate: 1500.0,
        count: Some(EVENTS),
        objects: 40,
        heartbeat: None,
        client_ids: vec![CLIENT.into()],
        record: true,
        ..StreamConfig::default()
    })
    .await
    .unwrap();

    let yaml = format!(
        r#"
sources:
  websocket:
    url: {url}
    client_ids: ["{CLIENT}"]
    token: sim-token
    heartbeat_timeout_ms: 60000
    reconnect_initial_ms: 10
    reconnect_max_ms: 100
  webhook:
    listen: 127.0.0.1:0
    signature: {{ scheme: standard-webhooks, secrets: ["{SECRET}"] }}
sinks:
  files: {{ type: file, dir: {out}, fsync: never }}
routes:
  - {{ name: all, match: ["*"], to: [{{ sink: files, topic: "fondo.{{entity}}" }}] }}
dead_letter: {{ fallback_file: {dir}/dead-letter.jsonl }}
spool: {{ dir: {dir}/spool }}
"#,
        url = sim.base_url(),
        out = out.display(),
        dir = dir.path().display()
    );
    let path = dir.path().join("bridge.yaml");
    std::fs::write(&path, yaml).unwrap();
    let cfg = match Config::load(&path) {
        Ok(c) => c,
        Err(e) => panic!("config: {:?}", e.problems()),
    };
    let bridge = Bridge::start(cfg).await.expect("bridge starts");
    let url = format!(
        "http://{}/fondo/webhooks/callback",
        bridge.webhook_addr.unwrap()
    );
    let mut opts = SenderOptions::new(url, Signer::standard(SECRET).unwrap());
    opts.concurrency = 16;
    opts.max_attempts = 10;
    opts.backoff_initial = Duration::from_millis(50);
    opts.backoff_max = Duration::from_millis(500);
    let sender = std::sync::Arc::new(WebhookSender::new(opts).unwrap());

    // The webhook sender mirrors the stream: every event the simulator has streamed is POSTed as
    // soon as it is seen, so the two copies of an event race each other into the bridge.
    let t0 = Instant::now();
    let mut mirrored = 0usize;
    let mut batches: Vec<tokio::task::JoinHandle<SendReport>> = Vec::new();
    while (mirrored as u64) < EVENTS {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "the simulator streamed only {mirrored} of {EVENTS} events"
        );
        let sent = sim.sent_events(CLIENT);
        if sent.len() > mirrored {
            let batch: Vec<Outgoing> = sent[mirrored..]
                .iter()
                .enumerate()
                .map(|(i, body)| Outgoing::new(format!("msg_{}", mirrored + i), body.clone()))
                .collect();
            mirrored = sent.len();
            let sender = sender.clone();
            batches.push(tokio::spawn(
                async move { sender.send_all(batch, None).await },
            ));
        }
        // This mirroring loop's interval: it forwards what the simulator has sent so far.
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (mut posted, mut acknowledged) = (0, 0);
    for b in batches {
        let r = b.await.unwrap();
        posted += r.sent;
        acknowledged += r.acknowledged;
    }
    assert_eq!(posted as u64, EVENTS);
    assert_eq!(acknowledged as u64, EVENTS, "every webhook answered 2xx");

    // Wait until the WebSocket copies are all in as well (received counts every copy).
    let t1 = Instant::now();
    while counter(&bridge, "received", "websocket") < EVENTS {
        assert!(
            t1.elapsed() < Duration::from_secs(60),
            "websocket copies received: {}",
            counter(&bridge, "received", "websocket")
        );
        // Poll interval (the failure message reports the count reached).
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let received_ws = counter(&bridge, "received", "websocket");
    let received_wh = counter(&bridge, "received", "webhook");
    let dedup =
        counter(&bridge, "deduplicated", "websocket") + counter(&bridge, "deduplicated", "webhook");
    let bridge_paired = ["websocket", "webhook"]
        .iter()
        .map(|s| {
            bridge
                .metrics
                .identity_paired
                .get_or_create(&SourceLabels {
                    source: (*s).into(),
                })
                .get()
        })
        .sum::<u64>();
    bridge.shutdown().await.expect("drained");

    // What the simulator streamed: every body is distinct (the generator numbers each change).
    let streamed = sim.sent_events(CLIENT);
    assert_eq!(streamed.len() as u64, EVENTS);
    let expected: HashMap<Vec<u8>, usize> = streamed.iter().map(|b| (b.to_vec(), 0)).collect();
    assert_eq!(
        expected.len() as u64,
        EVENTS,
        "simulator events are distinct"
    );

    let dead_letters = dir.path().join("dead-letter.jsonl");
    assert!(
        !dead_letters.exists(),
        "dead-lettered: {}",
        std::fs::read_to_string(&dead_letters)
            .unwrap_or_default()
            .lines()
            .take(3)
            .collect::<Vec<_>>()
            .join("\n")
    );
    let records = published(&out);
    let mut seen = expected.clone();
    let mut ids = std::collections::HashSet::new();
    for r in &records {
        match seen.get_mut(&r.payload_bytes()) {
            Some(n) => *n += 1,
            None => panic!(
                "published an event the simulator never sent: {}",
                r.event_id
            ),
        }
        ids.insert(r.event_id.clone());
    }
    assert_eq!(ids.len(), records.len(), "one occurrence id per change");
    let twice: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    let never: Vec<_> = seen.iter().filter(|(_, n)| **n == 0).collect();
    assert!(twice.is_empty(), "published more than once: {twice:?}");
    assert!(never.is_empty(), "never published: {} events", never.len());
    assert_eq!(
        records.len() as u64,
        EVENTS,
        "one record per simulator event"
    );
    // Each event really came in twice, once per source; the second copy was deduplicated.
    assert_eq!(received_ws, EVENTS);
    assert_eq!(received_wh, EVENTS);
    assert_eq!(
        dedup, EVENTS,
        "one copy per event acknowledged as its twin's"
    );
    assert_eq!(
        bridge_paired, EVENTS,
        "every copy from the later source paired with the earlier one"
    );
    eprintln!(
        "both sources: {EVENTS} events streamed and POSTed, {} published, {dedup} deduplicated",
        records.len()
    );
    sim.stop().await;
}
