//! The real binary, started as an operator would, against a broker that refuses it: it must exit
//! non-zero on its own, name the sink and the broker's reason, keep the secret out of its output,
//! and never panic. The sink-level tests (`sink_rabbitmq.rs`, `sink_nats.rs`) check each error's
//! class and wording; this file checks what the operator sees: the process's exit and its stderr.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// How long a refused start may take before the test calls it a hang.
const WITHIN: Duration = Duration::from_secs(30);

/// Runs `fondo-bridge run` with `sinks` as the config's sink section and one route to `sink`;
/// returns its exit code and stderr. Fails the test if it is still running after [`WITHIN`].
fn run_until_exit(sinks: &str, sink: &str) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = format!(
        r#"
sources:
  webhook:
    listen: 127.0.0.1:{webhook}
    signature: {{ scheme: standard-webhooks, secrets: ["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"] }}
sinks:
{sinks}
routes:
  - {{ name: all, match: ["*"], to: [{{ sink: {sink}, topic: "fondo.{{entity}}" }}] }}
dead_letter: {{ fallback_file: {dir}/dead-letter.jsonl }}
admin: {{ listen: 127.0.0.1:{admin} }}
"#,
        webhook = common::free_port(),
        admin = common::free_port(),
        dir = dir.path().display(),
    );
    let path = dir.path().join("bridge.yaml");
    std::fs::write(&path, cfg).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_fondo-bridge"))
        .args(["run", "--config"])
        .arg(&path)
        .env("RUST_LOG", "info")
        .env_remove("RUST_BACKTRACE")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    let exited = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break Some(st);
        }
        if started.elapsed() > WITHIN {
            let _ = child.kill();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    let Some(status) = exited else {
        panic!("still running after {WITHIN:?} instead of exiting; stderr:\n{err}");
    };
    (status.code(), err)
}

/// `secret`: a password of the config that must not show in the output.
fn assert_clear_failure(code: Option<i32>, stderr: &str, wants: &[&str], secret: Option<&str>) {
    eprintln!("exit {code:?}, stderr:\n{stderr}");
    assert!(
        matches!(code, Some(c) if c != 0),
        "exit code must be non-zero (and not a signal): {code:?}"
    );
    assert!(!stderr.contains("panicked"), "no panic: {stderr}");
    assert!(
        !stderr.contains('\u{1b}'),
        "no colour escape codes when stderr is not a terminal: {stderr}"
    );
    for w in wants {
        assert!(stderr.contains(w), "stderr must mention {w:?}:\n{stderr}");
    }
    if let Some(secret) = secret {
        assert!(
            !stderr.contains(secret),
            "the secret must not appear:\n{stderr}"
        );
    }
}

#[test]
fn rabbitmq_wrong_credentials_exit_non_zero_with_the_reason() {
    let Some(url) = common::broker("AMQP") else {
        return;
    };
    let parsed: lapin::uri::AMQPUri = url.parse().unwrap();
    let (host, port) = (&parsed.authority.host, parsed.authority.port);
    let secret = "not-the-guest-password";
    let sinks = format!(
        "  rabbit: {{ type: rabbitmq, url: \"amqp://guest:{secret}@{host}:{port}/%2f\", exchange: amq.topic }}"
    );
    let (code, stderr) = run_until_exit(&sinks, "rabbit");
    assert_clear_failure(
        code,
        &stderr,
        &["rabbit", "rabbitmq", "ACCESS_REFUSED"],
        Some(secret),
    );
}

#[test]
fn rabbitmq_missing_exchange_exits_non_zero_naming_it() {
    let Some(url) = common::broker("AMQP") else {
        return;
    };
    let parsed: lapin::uri::AMQPUri = url.parse().unwrap();
    // The password as it would appear in the URL (here it may equal the user name).
    let password = format!(":{}@", parsed.authority.userinfo.password);
    let exchange = common::unique("fb-no-such-exchange");
    let sinks = format!("  rabbit: {{ type: rabbitmq, url: \"{url}\", exchange: {exchange} }}");
    let (code, stderr) = run_until_exit(&sinks, "rabbit");
    assert_clear_failure(
        code,
        &stderr,
        &["rabbit", &exchange, "does not exist"],
        Some(&password),
    );
}

#[test]
fn nats_unreachable_server_exits_non_zero_naming_it() {
    // No broker needed: nobody listens on this port.
    let dead = format!("nats://127.0.0.1:{}", common::free_port());
    let sinks = format!("  nats: {{ type: nats, url: \"{dead}\" }}");
    let (code, stderr) = run_until_exit(&sinks, "nats");
    assert_clear_failure(
        code,
        &stderr,
        &["nats", "cannot connect to NATS", &dead],
        None,
    );
}
