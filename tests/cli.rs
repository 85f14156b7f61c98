//! The command line, run as a user would: the real binary.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_fondo-bridge"))
}

fn root() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn check_accepts_every_example_config() {
    for f in ["demo", "kafka", "rabbitmq", "nats", "production"] {
        let out = bin()
            .args(["check", "--config"])
            .arg(root().join(format!("config/{f}.yaml")))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{f}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(String::from_utf8_lossy(&out.stdout).contains("valid"));
    }
}

#[test]
fn check_lists_every_problem_and_fails() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("bad.yaml");
    std::fs::write(
        &f,
        r#"
sources:
  webhook: { path: no-slash, signature: { scheme: none } }
sinks:
  files: { type: file, dir: /tmp/x }
routes:
  - name: r
    match: ["order.*"]
    to: [{ sink: nowhere, topic: "x.{foo}" }]
dead_letter: { sink: missing }
delivery: { max_attempts: 0 }
"#,
    )
    .unwrap();
    let out = bin().args(["check", "--config"]).arg(&f).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    for want in [
        "routes[0].to[0].sink",
        "routes[0].to[0].topic: unknown placeholder {foo}",
        "dead_letter.sink",
        "delivery.max_attempts",
        "sources.webhook.path",
        "sources.webhook.signature",
    ] {
        assert!(err.contains(want), "missing {want:?} in:\n{err}");
    }
}

#[test]
fn check_reports_a_missing_file_clearly() {
    let out = bin()
        .args(["check", "--config", "/nonexistent/fondo.yaml"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/fondo.yaml"));
}

#[test]
fn route_prints_destinations_and_redacts() {
    let out = bin()
        .args(["route", "--config"])
        .arg(root().join("config/demo.yaml"))
        .arg("--event")
        .arg(root().join("tests/fixtures/fondo/account.update.json"))
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("topic:   fondo.account"), "{text}");
    assert!(text.contains("topic:   analytics.account.update"), "{text}");
    assert!(text.contains("key:     160367146695159"), "{text}");
    let analytics = text.split("analytics.account.update").nth(1).unwrap();
    assert!(
        !analytics.contains("197001010003"),
        "ssn redacted on the analytics route"
    );
}

#[test]
fn route_explains_unparseable_and_typeless_bodies() {
    let out = bin()
        .args(["route", "--config"])
        .arg(root().join("config/demo.yaml"))
        .arg("--event")
        .arg(root().join("tests/fixtures/fondo/webhook-body-without-type.json"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("no event type"));
    let out = bin()
        .args(["route", "--config"])
        .arg(root().join("config/demo.yaml"))
        .arg("--event")
        .arg(root().join("tests/fixtures/fondo/webhook-body-without-type.json"))
        .args(["--type", "account.update"])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("fondo.account"));
}

#[test]
fn help_explains_each_command() {
    let out = bin().arg("--help").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    for cmd in ["run", "check", "route"] {
        assert!(text.contains(cmd), "{text}");
    }
}
