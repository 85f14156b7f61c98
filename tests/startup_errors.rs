//! The real binary, started as an operator would. A configuration the broker refuses (wrong
//! credentials), or one that cannot work whatever the broker does (an invalid URL, a missing TLS
//! file), must make it exit non-zero on its own, name the sink and the reason, keep the secret out
//! of its output, and never panic. A broker that is merely not there yet (nothing listens, the
//! exchange is not declared) must not: the bridge starts, reports `/readyz` 503 naming the sink
//! (without the broker's address or credentials) and connects in the background
//! (`tests/broker_down.rs` follows such a start through to delivery). The sink-level tests
//! (`sink_rabbitmq.rs`, `sink_nats.rs`) check each error's class and wording; this file checks
//! what the operator sees.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::Read;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a refused start may take before the test calls it a hang.
const WITHIN: Duration = Duration::from_secs(30);

/// Writes the config (a webhook source, `sinks`, one route to `sink`) and starts `fondo-bridge
/// run` with it; returns the child, its admin port and the temporary directory.
fn spawn(sinks: &str, sink: &str) -> (Child, u16, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let admin = common::free_port();
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
        dir = dir.path().display(),
    );
    let path = dir.path().join("bridge.yaml");
    std::fs::write(&path, cfg).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_fondo-bridge"))
        .args(["run", "--config"])
        .arg(&path)
        .env("RUST_LOG", "info")
        .env_remove("RUST_BACKTRACE")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    (child, admin, dir)
}

fn stderr_of(child: &mut Child) -> String {
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    err
}

/// A plain HTTP/1.0 GET on the admin port: (status, body).
fn admin_get(port: u16, path: &str) -> Option<(u16, String)> {
    use std::io::Write as _;
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
    s.write_all(format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes())
        .ok()?;
    let mut raw = String::new();
    s.read_to_string(&mut raw).ok()?;
    let status = raw.split(' ').nth(1)?.parse().ok()?;
    Some((status, raw.split("\r\n\r\n").nth(1)?.to_owned()))
}

/// Starts the bridge with a broker that is not there yet: it must keep running, answer
/// `/healthz` 200 and `/readyz` 503 with a line for `sink` that says it is not connected. Returns
/// that `/readyz` body and the log, after stopping the bridge.
fn starts_not_ready(sinks: &str, sink: &str) -> (String, String) {
    let (mut child, admin, _dir) = spawn(sinks, sink);
    let started = Instant::now();
    let ready = loop {
        if let Some(st) = child.try_wait().unwrap() {
            panic!(
                "the bridge exited ({st}) instead of starting without its broker:\n{}",
                stderr_of(&mut child)
            );
        }
        let health = admin_get(admin, "/healthz");
        let ready = admin_get(admin, "/readyz");
        if let (Some((200, _)), Some((503, body))) = (&health, &ready)
            && body
                .lines()
                .any(|l| l.starts_with(&format!("sink:{sink}:")))
        {
            break body.clone();
        }
        assert!(
            started.elapsed() < WITHIN,
            "not up and reporting the sink within {WITHIN:?}: healthz {health:?}, readyz {ready:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    // Still running a while later: no exit after a few background attempts either.
    std::thread::sleep(Duration::from_secs(2));
    assert!(child.try_wait().unwrap().is_none(), "still running");
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let st = child.wait().unwrap();
    let log = stderr_of(&mut child);
    assert!(!log.contains("panicked"), "no panic: {log}");
    assert_eq!(st.code(), Some(0), "a clean stop: {log}");
    (ready, log)
}

/// Runs `fondo-bridge run` with `sinks` as the config's sink section and one route to `sink`;
/// returns its exit code and stderr. Fails the test if it is still running after [`WITHIN`].
fn run_until_exit(sinks: &str, sink: &str) -> (Option<i32>, String) {
    let (mut child, _admin, _dir) = spawn(sinks, sink);
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
    let err = stderr_of(&mut child);
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
fn rabbitmq_missing_exchange_starts_not_ready_naming_the_sink() {
    let Some(url) = common::broker("AMQP") else {
        return;
    };
    let parsed: lapin::uri::AMQPUri = url.parse().unwrap();
    let password = format!(":{}@", parsed.authority.userinfo.password);
    let exchange = common::unique("fb-no-such-exchange");
    let sinks = format!(
        "  rabbit: {{ type: rabbitmq, url: \"{url}\", exchange: {exchange}, reconnect_max_ms: 500 }}"
    );
    let (ready, log) = starts_not_ready(&sinks, "rabbit");
    assert!(ready.contains("sink:rabbit: not connected"), "{ready}");
    assert!(
        !ready.contains(&parsed.authority.host) && !ready.contains(&password),
        "no address or credentials in /readyz: {ready}"
    );
    // The log names the exchange and why; never the password.
    assert!(
        log.contains(&exchange) && log.contains("does not exist"),
        "{log}"
    );
    assert!(!log.contains(&password), "{log}");
}

#[test]
fn nats_unreachable_server_starts_not_ready_naming_the_sink() {
    // No broker needed: nobody listens on this port.
    let port = common::free_port();
    let dead = format!("nats://127.0.0.1:{port}");
    let sinks = format!("  nats: {{ type: nats, url: \"{dead}\", reconnect_max_ms: 500 }}");
    let (ready, log) = starts_not_ready(&sinks, "nats");
    assert!(ready.contains("sink:nats: not connected"), "{ready}");
    assert!(
        !ready.contains(&port.to_string()),
        "no address in /readyz: {ready}"
    );
    assert!(log.contains("cannot connect to NATS"), "{log}");
    assert!(
        log.contains("sink still cannot connect"),
        "attempts go on: {log}"
    );
}

#[test]
fn nats_missing_tls_file_exits_even_while_the_server_is_unreachable() {
    let dead = format!("tls://127.0.0.1:{}", common::free_port());
    let sinks = format!(
        "  nats: {{ type: nats, url: \"{dead}\", tls: {{ ca_file: /nonexistent/fondo-ca.pem }} }}"
    );
    let (code, stderr) = run_until_exit(&sinks, "nats");
    assert_clear_failure(
        code,
        &stderr,
        &["nats", "tls.ca_file", "/nonexistent/fondo-ca.pem"],
        None,
    );
}

#[test]
fn invalid_broker_urls_exit_non_zero_naming_the_sink() {
    for (sinks, sink, wants) in [
        (
            "  nats: { type: nats, url: \"nats://127.0.0.1:notaport\" }",
            "nats",
            "nats",
        ),
        (
            "  rabbit: { type: rabbitmq, url: \"amqp://127.0.0.1:notaport/%2f\", exchange: x }",
            "rabbit",
            "rabbit",
        ),
    ] {
        let (code, stderr) = run_until_exit(sinks, sink);
        assert_clear_failure(code, &stderr, &[wants, "notaport"], None);
    }
}
