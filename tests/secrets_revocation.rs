//! Revoking the webhook secrets by emptying `secrets_file`, on the real binary: the very request
//! that was accepted before (same id, timestamp and signature) is refused with 401 once the bridge
//! has re-read the file, an error is logged, `/readyz` reports it; a file with a secret again is
//! accepted again.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
#[path = "reliability/support.rs"]
mod support;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use fondo_bridge::simulator::webhook_sender::Signer;
use support::*;

/// How long the bridge may take to see a changed secrets file (it polls every 10 s).
const RELOAD: Duration = Duration::from_secs(25);

/// A signed request, kept so that it can be sent again byte for byte.
struct Signed {
    body: String,
    headers: Vec<(String, String)>,
}

fn signed(id: &str) -> Signed {
    let body = format!(r#"{{"eventType":"order.update","current":{{"id":"{id}"}}}}"#);
    let ts = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let headers = Signer::standard(WEBHOOK_SECRET)
        .unwrap()
        .headers(id, ts, body.as_bytes())
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap().to_owned()))
        .collect();
    Signed { body, headers }
}

async fn send(port: u16, req: &Signed) -> u16 {
    let mut r = reqwest::Client::new()
        .post(format!("http://127.0.0.1:{port}/fondo/webhooks/callback"))
        .header("content-type", "application/json")
        .body(req.body.clone());
    for (k, v) in &req.headers {
        r = r.header(k, v);
    }
    r.send().await.unwrap().status().as_u16()
}

/// Sends fresh signed requests until one gets `want`.
async fn answers(port: u16, want: u16, tag: &str) {
    let deadline = Instant::now() + RELOAD;
    for n in 0.. {
        let got = send(port, &signed(&format!("msg_{tag}_{n}"))).await;
        if got == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "webhooks still get {got} (wanted {want}) {RELOAD:?} after the change"
        );
        // Paces the probes: each poll is a fresh signed request to the bridge.
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn readyz(admin: u16) -> (u16, String) {
    let raw = http_get(admin, "/readyz").unwrap_or_default();
    let status = raw
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (
        status,
        raw.split("\r\n\r\n").nth(1).unwrap_or_default().to_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_emptied_secrets_file_revokes_and_a_refilled_one_restores() {
    let dir = tempfile::tempdir().unwrap();
    let secrets = dir.path().join("webhook-secrets");
    std::fs::write(&secrets, format!("{WEBHOOK_SECRET}\n")).unwrap();
    let (webhook, admin) = (free_port(), free_port());
    let config = format!(
        r#"
sources:
  webhook:
    listen: 127.0.0.1:{webhook}
    signature: {{ scheme: standard-webhooks, secrets_file: {secrets} }}
sinks:
  files: {{ type: file, dir: {dir}/out, fsync: never }}
routes:
  - {{ name: all, match: ["*"], to: [{{ sink: files, topic: "fondo.{{entity}}" }}] }}
dead_letter: {{ fallback_file: {dir}/dead-letter.jsonl }}
admin: {{ listen: 127.0.0.1:{admin} }}
"#,
        secrets = secrets.display(),
        dir = dir.path().display()
    );
    let bridge = tokio::task::block_in_place(|| BridgeProc::start(dir.path(), admin, &config, &[]));

    let first = signed("msg_before");
    assert_eq!(send(webhook, &first).await, 200, "accepted with the secret");
    assert_eq!(readyz(admin).0, 200);

    // Emptied: every secret revoked.
    std::fs::write(&secrets, "").unwrap();
    answers(webhook, 401, "emptied").await;
    assert_eq!(
        send(webhook, &first).await,
        401,
        "the request accepted before is refused now"
    );
    let (status, body) = readyz(admin);
    assert_eq!(status, 503, "{body}");
    assert!(
        body.lines()
            .any(|l| l.starts_with("webhook:secrets:") && !l.ends_with(": ok")),
        "{body}"
    );
    let log = bridge.log_text();
    assert!(
        log.contains("ERROR") && log.contains("every secret is revoked"),
        "the revocation is logged as an error:\n{log}"
    );
    assert!(
        !log.contains(WEBHOOK_SECRET.trim_start_matches("whsec_")),
        "no secret in the log"
    );

    // Refilled: accepted again.
    std::fs::write(&secrets, format!("# rotated back\n{WEBHOOK_SECRET}\n")).unwrap();
    answers(webhook, 200, "refilled").await;
    let (status, body) = readyz(admin);
    assert_eq!(status, 200, "{body}");
    assert!(!body.contains("webhook:secrets"), "{body}");
}
