use super::*;

fn parse(yaml: &str) -> Result<Config, ConfigError> {
    Config::from_str_with_env(yaml, "yaml", Vec::new())
}

#[test]
fn production_example_documents_the_architecture_shape() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/production.yaml");
    let c = Config::load_with_env(&path, Vec::new()).unwrap();
    assert_eq!(c.sinks.len(), 4);
    assert_eq!(c.routes.len(), 3);
    assert_eq!(c.delivery.max_attempts, 12);
    assert_eq!(c.unmatched, Unmatched::DeadLetter);
}

#[test]
fn toml_works_too() {
    let c = Config::from_str_with_env(
        r#"
[sources.webhook.signature]
scheme = "none"
insecure = true
[sinks.files]
type = "file"
dir = "/tmp/x"
[[routes]]
name = "all"
match = ["*"]
to = [{ sink = "files", topic = "fondo.{entity}" }]
"#,
        "toml",
        Vec::new(),
    )
    .unwrap();
    assert_eq!(c.routes[0].to[0].topic, "fondo.{entity}");
}

#[test]
fn unknown_keys_are_errors_with_their_path() {
    let err = parse(
        "sources: { webhook: { signature: { scheme: none, insecure: true } } }\ndelivery: { max_atempts: 3 }\n",
    )
    .unwrap_err();
    let text = err.to_string();
    assert!(text.contains("max_atempts"), "{text}");
    assert!(text.contains("delivery"), "{text}");
}

#[test]
fn environment_overrides_the_file() {
    let yaml = "sources: { webhook: { signature: { scheme: none, insecure: true } } }\ndelivery: { max_attempts: 3 }\n";
    let env = vec![
        (
            "FONDO_BRIDGE__DELIVERY__MAX_ATTEMPTS".to_string(),
            "7".to_string(),
        ),
        (
            "FONDO_BRIDGE__ADMIN__LISTEN".to_string(),
            "127.0.0.1:9999".to_string(),
        ),
        (
            "FONDO_BRIDGE_PORT".to_string(),
            "tcp://10.0.0.1:80".to_string(),
        ),
        ("OTHER".to_string(), "x".to_string()),
    ];
    let c = Config::from_str_with_env(yaml, "yaml", env).unwrap();
    assert_eq!(c.delivery.max_attempts, 7);
    assert_eq!(c.admin.listen, Some("127.0.0.1:9999".parse().unwrap()));
}

#[test]
fn secrets_never_print() {
    let s = Secret("whsec_abc".into());
    assert!(!format!("{s:?}").contains("abc"));
    let yaml = "sources: { websocket: { url: 'ws://x', client_ids: [c], token: sekrit } }\n";
    let c = parse(yaml).unwrap();
    assert!(!format!("{c:?}").contains("sekrit"));
}

#[test]
fn secrets_from_files() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("token");
    std::fs::write(&f, "tok-123\n").unwrap();
    let s = read_secret(None, Some(&f)).unwrap().unwrap();
    assert_eq!(s.expose(), "tok-123");
    assert!(read_secret(None, Some(&dir.path().join("missing"))).is_err());
}

#[test]
fn none_scheme_needs_insecure() {
    let err = parse("sources: { webhook: { signature: { scheme: none } } }\n").unwrap_err();
    assert!(err.to_string().contains("insecure: true"));
}

#[test]
fn no_source_is_an_error() {
    let err = parse("sinks: {}\n").unwrap_err();
    assert!(err.to_string().contains("sources"), "{err}");
}

/// An all-digit password from the environment is taken as its exact text (leading zero kept), and
/// a secret the file gives as a number is its text too: no parse error that would print it.
#[test]
fn numeric_secrets_are_text_and_never_echoed() {
    let yaml = r#"
sources:
  webhook: { listen: 127.0.0.1:0, signature: { scheme: standard-webhooks, secrets: [74312095] } }
sinks:
  r: { type: rabbitmq, url: "amqp://guest@127.0.0.1:5672/%2f", exchange: fondo }
routes:
  - { name: all, match: ["*"], to: [{ sink: r, topic: x }] }
dead_letter: { fallback_file: /tmp/dl.jsonl }
"#;
    let env = vec![(
        "FONDO_BRIDGE__SINKS__R__PASSWORD".to_owned(),
        "0048151623".to_owned(),
    )];
    let c = Config::from_str_with_env(yaml, "yaml", env).unwrap();
    let Some(SinkConfig::Rabbitmq(r)) = c.sinks.get("r") else {
        panic!("rabbitmq sink")
    };
    assert_eq!(r.password.as_ref().map(Secret::expose), Some("0048151623"));
    let Some(SignatureConfig::StandardWebhooks { secrets, .. }) =
        c.sources.webhook.as_ref().map(|w| &w.signature)
    else {
        panic!("standard webhooks")
    };
    assert_eq!(secrets[0].expose(), "74312095");
    // A config that fails elsewhere names the problem, never the secret's value.
    let bad = yaml.replace("topic: x", "topic: \"{nope}\"");
    let env = vec![(
        "FONDO_BRIDGE__SINKS__R__PASSWORD".to_owned(),
        "0048151623".to_owned(),
    )];
    let e = crate::plan::Plan::from_str_with_env(&bad, "yaml", env).unwrap_err();
    let text = format!("{e} {e:?}");
    assert!(!text.contains("48151623"), "{text}");
    assert!(!text.contains("74312095"), "{text}");
}

/// Keys renamed so one concept has one name keep working under their old names for a release,
/// each with a notice that names the new key; the new names give no notice.
#[test]
fn old_key_names_still_work_with_a_notice() {
    let old = r#"
sources: { webhook: { signature: { scheme: none, insecure: true } } }
sinks:
  rmq: { type: rabbitmq, url: "amqp://127.0.0.1:5672/%2f", exchange: x, reconnect_delay_initial_ms: 7, reconnect_delay_max_ms: 70 }
  bus: { type: nats, url: "nats://127.0.0.1:4222", ack_timeout_ms: 1234, reconnect_delay_max_ms: 99 }
dedupe: { ttl_s: 600 }
"#;
    let c = parse(old).unwrap();
    let Some(SinkConfig::Rabbitmq(r)) = c.sinks.get("rmq") else {
        panic!("rabbitmq sink")
    };
    assert_eq!((r.reconnect_initial_ms, r.reconnect_max_ms), (7, 70));
    let Some(SinkConfig::Nats(n)) = c.sinks.get("bus") else {
        panic!("nats sink")
    };
    assert_eq!((n.confirm_timeout_ms, n.reconnect_max_ms), (1234, 99));
    assert_eq!(c.dedupe.retry_horizon_s, 600);
    let mut notices = c.renamed.clone();
    notices.sort();
    assert_eq!(notices.len(), 5, "{notices:#?}");
    for (key, new) in [
        ("sinks.bus.ack_timeout_ms", "confirm_timeout_ms"),
        ("sinks.bus.reconnect_delay_max_ms", "reconnect_max_ms"),
        (
            "sinks.rmq.reconnect_delay_initial_ms",
            "reconnect_initial_ms",
        ),
        ("sinks.rmq.reconnect_delay_max_ms", "reconnect_max_ms"),
        ("dedupe.ttl_s", "retry_horizon_s"),
    ] {
        assert!(
            notices
                .iter()
                .any(|n| n.starts_with(key) && n.contains(new)),
            "{key} -> {new} missing in {notices:#?}"
        );
    }
    let new = old
        .replace("reconnect_delay_initial_ms", "reconnect_initial_ms")
        .replace("reconnect_delay_max_ms", "reconnect_max_ms")
        .replace("ack_timeout_ms", "confirm_timeout_ms")
        .replace("ttl_s", "retry_horizon_s");
    assert!(parse(&new).unwrap().renamed.is_empty());
    // Both names at once: which one was meant is unknown, so it is a problem.
    let both = old.replace("exchange: x,", "exchange: x, reconnect_max_ms: 5,");
    let problems = parse(&both).unwrap_err().problems();
    assert!(
        problems
            .iter()
            .any(|p| p.starts_with("sinks.rmq.reconnect_delay_max_ms") && p.contains("keep only")),
        "{problems:?}"
    );
}
