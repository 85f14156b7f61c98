//! `fondo-bridge asyncapi`, checked by the official AsyncAPI parser (`@asyncapi/parser`, run by
//! node from `tests/asyncapi/`): every example config's document parses without an error or a
//! warning, the Fondo samples validate against their schemas, and every message the demo writes
//! (dead letters included) validates against the message of its channel and event type.
//!
//! Needs node and `npm ci --prefix tests/asyncapi` (scripts/test.sh and scripts/setup.sh run it).
//! Without them the tests fail under `CI=true` and skip loudly elsewhere.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn tools() -> PathBuf {
    root().join("tests/asyncapi")
}

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_fondo-bridge"))
}

/// Whether node and the validator's packages are there; under `CI=true` they must be.
fn validator_ready() -> bool {
    let node = Command::new("node").arg("--version").output();
    let parser = tools().join("node_modules/@asyncapi/parser/package.json");
    let missing = match node {
        Ok(o) if o.status.success() && parser.exists() => return true,
        Ok(o) if o.status.success() => format!("{} is missing", parser.display()),
        _ => "node is not installed".to_owned(),
    };
    let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
    assert!(
        !ci,
        "{missing} and CI=true: run `npm ci --prefix tests/asyncapi` (scripts/test.sh does)"
    );
    eprintln!(
        "\n!!! SKIPPING: {missing}, so the AsyncAPI documents cannot be checked by the official parser.\n!!! Install node and run `npm ci --prefix tests/asyncapi` (scripts/test.sh does).\n"
    );
    false
}

/// Runs `validate.mjs` and returns its JSON summary; panics with its output when it fails.
fn validate(args: &[&std::ffi::OsStr]) -> serde_json::Value {
    let out = Command::new("node")
        .arg(tools().join("validate.mjs"))
        .args(args)
        .current_dir(tools())
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(
        out.status.success(),
        "validate.mjs {args:?} failed:\n{stderr}\n{stdout}"
    );
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

/// Writes the document of `config` to `dir/<stem>.<format>` and returns its path.
fn document(config: &Path, format: &str, dir: &Path) -> PathBuf {
    let out: Output = bin()
        .args(["asyncapi", "--format", format, "--config"])
        .arg(config)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}: {}",
        config.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let stem = config.file_stem().unwrap().to_string_lossy();
    let path = dir.join(format!("{stem}.{format}"));
    std::fs::write(&path, &out.stdout).unwrap();
    path
}

fn example_configs() -> Vec<PathBuf> {
    let mut configs: Vec<PathBuf> = std::fs::read_dir(root().join("config"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    configs.sort();
    configs
}

#[test]
fn every_example_config_gives_a_valid_document() {
    if !validator_ready() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let configs = example_configs();
    assert!(configs.len() >= 5, "{configs:?}");
    let mut docs = Vec::new();
    for c in configs.iter().chain([&tools().join("all-events.yaml")]) {
        docs.push(document(c, "yaml", dir.path()).into_os_string());
        docs.push(document(c, "json", dir.path()).into_os_string());
    }
    let args: Vec<&std::ffi::OsStr> = std::iter::once("document".as_ref())
        .chain(docs.iter().map(|d| d.as_os_str()))
        .collect();
    let summary = validate(&args);
    assert_eq!(summary["documents"], docs.len());
    assert_eq!(summary["failed"], 0);
    assert_eq!(summary["warnings"], 0, "{summary}");
}

#[test]
fn every_fondo_sample_validates_against_its_schema() {
    if !validator_ready() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let doc = document(&tools().join("all-events.yaml"), "json", dir.path());
    let mut pairs = Vec::new();
    for e in std::fs::read_dir(root().join("tests/fixtures/fondo")).unwrap() {
        let path = e.unwrap().path();
        let stem = path.file_stem().unwrap().to_string_lossy().into_owned();
        // The webhook sample without `eventType` is an account whose type came in a header.
        let ty = if stem == "webhook-body-without-type" {
            "account.update".to_owned()
        } else {
            stem
        };
        pairs.push(format!("{ty}={}", path.display()));
    }
    pairs.sort();
    assert!(pairs.len() >= 5, "{pairs:?}");
    let mut args: Vec<&std::ffi::OsStr> = vec!["samples".as_ref(), doc.as_os_str()];
    args.extend(pairs.iter().map(std::ffi::OsStr::new));
    let summary = validate(&args);
    assert_eq!(summary["samples"], pairs.len());
    assert_eq!(summary["failed"], 0);
}

#[test]
fn every_message_the_demo_writes_validates() {
    if !validator_ready() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("demo-out");
    let count = 3000;
    // Malformed frames and an event type no schema describes come with `--malformed-every`:
    // the dead-letter channel and the channels' `other` messages are checked too.
    let demo = bin()
        .args(["demo", "--rate", "0", "--count", &count.to_string()])
        .args(["--malformed-every", "97", "--out"])
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        demo.status.success(),
        "demo: {}",
        String::from_utf8_lossy(&demo.stderr)
    );
    let doc = document(&root().join("config/demo.yaml"), "json", dir.path());
    let summary = validate(&["messages".as_ref(), doc.as_os_str(), out.as_os_str()]);
    eprintln!("demo messages validated: {summary}");
    assert_eq!(summary["failed"], 0);
    // Every event lands in `fondo.{entity}`; ISK account events also in the analytics topics.
    let per_entity = summary["byChannel"]["per-entity-files"].as_u64().unwrap();
    assert!(per_entity >= count, "{summary}");
    assert!(
        summary["byChannel"]["accounts-for-analytics-files"]
            .as_u64()
            .unwrap()
            > 0
    );
    assert!(
        summary["byChannel"]["dead-letters"].as_u64().unwrap() > 0,
        "{summary}"
    );
    let types = summary["byType"].as_object().unwrap();
    for t in fondo_bridge::event::KNOWN_EVENT_TYPES {
        if *t != "heartbeat" {
            assert!(types.contains_key(*t), "the demo wrote no {t}: {summary}");
        }
    }
}
