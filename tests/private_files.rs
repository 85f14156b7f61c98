//! Files that hold events carry personal data: every file and directory the bridge creates for
//! them (spool segments and live sets, file-sink topics, the dead-letter fallback, the identity
//! snapshot) is readable by the bridge's user only. The whole bridge runs from a config file, fed
//! by the simulated stream and a webhook, and the tree it wrote is checked afterwards.
#![cfg(unix)]
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::time::Duration;

use fondo_bridge::app::Bridge;
use fondo_bridge::config::Config;
use fondo_bridge::simulator::stream::{StreamConfig, start};
use fondo_bridge::simulator::webhook_sender::{Outgoing, SenderOptions, Signer, WebhookSender};

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const CLIENT: &str = "49ad7378-121c-4a53-9894-dfd14a7b4877";

fn walk(dir: &Path, out: &mut Vec<(std::path::PathBuf, u32, bool)>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let meta = e.metadata().unwrap();
        let mode = meta.permissions().mode() & 0o777;
        out.push((e.path(), mode, meta.is_dir()));
        if meta.is_dir() {
            walk(&e.path(), out);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_file_holding_events_is_private() {
    let (_, sim) = start(StreamConfig {
        rate: 2000.0,
        count: Some(300),
        malformed_every: Some(50),
        heartbeat: None,
        client_ids: vec![CLIENT.into()],
        ..StreamConfig::default()
    })
    .await
    .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("var");
    let yaml = format!(
        r#"
sources:
  websocket: {{ url: "{url}", client_ids: ["{CLIENT}"], token: sim-token, heartbeat_timeout_ms: 60000 }}
  webhook: {{ listen: 127.0.0.1:0, signature: {{ scheme: standard-webhooks, secrets: ["{SECRET}"] }} }}
sinks:
  files: {{ type: file, dir: {root}/out }}
routes:
  - {{ name: orders, match: ["order.*"], to: [{{ sink: files, topic: "fondo.{{entity}}" }}] }}
unmatched: dead_letter
dead_letter: {{ fallback_file: {root}/dl/dead-letter.jsonl }}
spool: {{ dir: {root}/spool }}
dedupe: {{ snapshot_file: {root}/state/identity.jsonl }}
admin: {{ listen: null }}
"#,
        url = sim.base_url(),
        root = root.display()
    );
    let path = tmp.path().join("bridge.yaml");
    std::fs::write(&path, yaml).unwrap();
    let cfg = Config::load(&path).unwrap_or_else(|e| panic!("{:?}", e.problems()));
    let bridge = Bridge::start(cfg).await.expect("bridge starts");
    let sender = WebhookSender::new(SenderOptions::new(
        format!(
            "http://{}/fondo/webhooks/callback",
            bridge.webhook_addr.unwrap()
        ),
        Signer::standard(SECRET).unwrap(),
    ))
    .unwrap();
    let body = r#"{"eventType":"order.create","current":{"id":"o-1","amount":5}}"#;
    assert!(
        sender
            .send(&Outgoing::new("msg_1", body))
            .await
            .acknowledged
    );
    common::eventually(
        "the stream to arrive (300 events delivered)",
        Duration::from_secs(30),
        || bridge.metrics.delivered_total() >= 300,
    )
    .await;
    // While it runs (the spool's segments exist) and after a clean shutdown (which deletes the
    // released segments and writes the identity snapshot).
    let mut found = Vec::new();
    walk(&root, &mut found);
    bridge.shutdown().await.expect("drained");
    sim.stop().await;
    walk(&root, &mut found);
    let files: Vec<_> = found.iter().filter(|(_, _, dir)| !dir).collect();
    for want in ["fondo.order.jsonl", "dead-letter.jsonl", "identity.jsonl"] {
        assert!(
            files.iter().any(|(p, _, _)| p.ends_with(want)),
            "{want} was written: {found:?}"
        );
    }
    assert!(
        files
            .iter()
            .any(|(p, _, _)| p.extension().is_some_and(|x| x == "seg")),
        "the spool wrote its files: {found:?}"
    );
    let open: Vec<_> = found
        .iter()
        .filter(|(_, mode, _)| mode & 0o077 != 0)
        .collect();
    assert!(open.is_empty(), "readable by others: {open:?}");
}
