//! The checks that need the routing table, and the example configs as a whole.

use super::Plan;
use crate::config::ConfigError;

fn parse(yaml: &str) -> Result<Plan, ConfigError> {
    Plan::from_str_with_env(yaml, "yaml", Vec::new())
}

#[test]
fn every_example_config_parses() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
        if !matches!(ext, "yaml" | "yml" | "toml") {
            continue;
        }
        let has_webhook = std::fs::read_to_string(&path).unwrap().contains("webhook:");
        let env: Vec<(String, String)> = if !has_webhook {
            Vec::new()
        } else {
            vec![(
                "FONDO_BRIDGE__SOURCES__WEBHOOK__SIGNATURE__SECRETS".to_string(),
                "[\"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\"]".to_string(),
            )]
        };
        Plan::load_with_env(&path, env).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        n += 1;
    }
    assert!(n >= 5, "expected the example configs, found {n}");
}

#[test]
fn five_mistakes_are_all_reported() {
    let err = parse(
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
    .unwrap_err();
    let problems = err.problems();
    let want = [
        "routes[0].to[0].sink",
        "routes[0].to[0].topic: unknown placeholder {foo}",
        "dead_letter.sink",
        "delivery.max_attempts",
        "sources.webhook.path",
        "sources.webhook.signature",
    ];
    for w in want {
        assert!(
            problems.iter().any(|p| p.contains(w)),
            "missing {w:?} in {problems:#?}"
        );
    }
    assert!(problems.len() >= 6);
}

#[test]
fn nats_subjects_are_validated_at_load() {
    let err = parse(
        r#"
sources: { webhook: { signature: { scheme: none, insecure: true } } }
sinks: { nats: { type: nats, url: "nats://127.0.0.1:4222" } }
routes:
  - { name: r, match: ["*"], to: [{ sink: nats, topic: "fondo bad.{entity}" }] }
dead_letter: { sink: nats, topic: "dl.>" }
"#,
    )
    .unwrap_err();
    let problems = err.problems();
    assert!(
        problems
            .iter()
            .any(|p| p.starts_with("routes[0].to[0].topic")),
        "{problems:?}"
    );
    assert!(
        problems.iter().any(|p| p.starts_with("dead_letter.topic")),
        "{problems:?}"
    );
}
