use super::*;
use crate::config::Config;
use crate::event::{ParseContext, ParseOptions};

fn ev(s: &str) -> Event {
    Event::parse(
        Bytes::from(s.to_owned()),
        &ParseOptions::default(),
        &ParseContext {
            client_id: Some("c-1"),
            ..Default::default()
        },
    )
    .unwrap()
}

fn cfg(yaml: &str) -> Config {
    Config::from_str_with_env(yaml, "yaml", Vec::new()).unwrap()
}

const BASE: &str = r#"
sources: { webhook: { signature: { scheme: none, insecure: true } } }
sinks:
  a: { type: file, dir: /tmp/a }
  b: { type: file, dir: /tmp/b }
"#;

fn router(routes: &str) -> Router {
    Router::compile(&cfg(&format!("{BASE}{routes}"))).unwrap()
}

const ACCOUNT: &str = include_str!("../../tests/fixtures/fondo/account.update.json");
const ORDER: &str = include_str!("../../tests/fixtures/fondo/order.create.json");

#[test]
fn globs() {
    let g = |p: &str, s: &str| Glob::parse(p).unwrap().matches(s);
    assert!(g("order.*", "order.create"));
    assert!(!g("order.*", "orders.create"));
    assert!(g("*.delete", "cashTransaction.delete"));
    assert!(!g("*.delete", "order.update"));
    assert!(g("*", "journey.update"));
    assert!(!g("*", "heartbeat"), "* never matches heartbeat");
    assert!(g("heartbeat", "heartbeat"));
    assert!(g("*Transaction.*", "fundTransaction.create"));
    assert!(g("order.create", "order.create"));
    assert!(!g("order.create", "order.created"));
    assert!(g("a*b*c", "aXXbYYc"));
    assert!(!g("a*b*c", "aXXbYY"));
    assert!(Glob::parse("").is_err());
}

#[test]
fn templates_render_every_placeholder() {
    let e = ev(ORDER);
    let t = |s: &str| Template::parse(s).unwrap().render(&e);
    assert_eq!(t("fondo.{entity}").unwrap(), "fondo.order");
    assert_eq!(t("{event_type}/{action}").unwrap(), "order.create/create");
    assert_eq!(t("{client_id}").unwrap(), "c-1");
    assert_eq!(t("k-{/current/id}").unwrap(), "k-ord_01HZX3K9V2Q7");
    assert_eq!(t("{/current/amount}").unwrap(), "500.0");
    assert_eq!(t("plain").unwrap(), "plain");
    assert!(t("{/current/nope}").unwrap_err().contains("/current/nope"));
    assert!(t("{/current}").unwrap_err().contains("object"));
    assert!(t("{/current/tradeDate}").is_err(), "null does not render");
}

#[test]
fn template_syntax_errors() {
    assert_eq!(
        Template::parse("x.{foo}").unwrap_err(),
        TemplateError::UnknownPlaceholder("foo".into())
    );
    assert!(matches!(
        Template::parse("x.{entity"),
        Err(TemplateError::Unclosed(_))
    ));
    assert!(matches!(
        Template::parse("x}"),
        Err(TemplateError::StrayClose(_))
    ));
    assert_eq!(Template::parse("").unwrap_err(), TemplateError::Empty);
}

#[test]
fn routes_fan_out_and_filter() {
    let r = router(
        r#"
routes:
  - name: orders
    match: ["order.*"]
    to:
      - { sink: a, topic: "fondo.order", key: "{/current/id}" }
      - { sink: b, topic: "fondo.order.{action}", headers: { x-kind: "{entity}" } }
  - name: isk-accounts
    match: ["account.*"]
    where: { "/current/accountType": "isk" }
    to: [{ sink: b, topic: "account.{action}" }]
  - name: pension-accounts
    match: ["account.*"]
    where: { "/current/accountType": "pension" }
    to: [{ sink: b, topic: "pension" }]
"#,
    );
    let out = r.route(&ev(ORDER));
    assert_eq!(out.destinations.len(), 2);
    assert_eq!(out.destinations[0].topic, "fondo.order");
    assert_eq!(out.destinations[0].key.as_deref(), Some("ord_01HZX3K9V2Q7"));
    assert_eq!(out.destinations[1].topic, "fondo.order.create");
    assert_eq!(
        out.destinations[1].headers,
        vec![("x-kind".to_string(), "order".to_string())]
    );
    assert_eq!(
        &out.destinations[0].body[..],
        ORDER.as_bytes(),
        "verbatim body"
    );

    let out = r.route(&ev(ACCOUNT));
    assert_eq!(out.destinations.len(), 1);
    assert_eq!(out.destinations[0].topic, "account.update");
    assert_eq!(
        out.destinations[0].key.as_deref(),
        Some("160367146695159"),
        "default key = ref"
    );
    assert_eq!(out.filtered_by, vec![Arc::<str>::from("pension-accounts")]);

    let out = r.route(&ev(
        r#"{"eventType":"journey.update","current":{"id":"j"}}"#,
    ));
    assert!(out.is_unmatched());
    let out = r.route(&ev(r#"{"eventType":"brand.new","current":{"id":"j"}}"#));
    assert!(out.is_unmatched(), "unknown types route like any other");
}

#[test]
fn unknown_types_match_globs() {
    let r = router(
        "routes:\n  - { name: all, match: [\"*\"], to: [{ sink: a, topic: \"{entity}\" }] }\n",
    );
    let out = r.route(&ev(
        r#"{"eventType":"portfolio.rebalance","current":{"id":"p"}}"#,
    ));
    assert_eq!(out.destinations[0].topic, "portfolio");
    assert!(r.route(&ev(r#"{"eventType":"heartbeat"}"#)).is_unmatched());
}

#[test]
fn heartbeat_only_when_asked() {
    let r = router("routes:\n  - { name: hb, match: [heartbeat], to: [{ sink: a, topic: hb }] }\n");
    assert_eq!(
        r.route(&ev(r#"{"eventType":"heartbeat"}"#))
            .destinations
            .len(),
        1
    );
}

#[test]
fn redaction_removes_personal_numbers_per_route() {
    let r = router(
        r#"
routes:
  - name: analytics
    match: ["account.*"]
    redact: ["/current/owner/ssn", "/previous/owner/ssn", "/current/bankAccounts/0/iban", "/nope/x"]
    to: [{ sink: a, topic: "analytics" }]
  - name: ledger
    match: ["account.*"]
    to: [{ sink: b, topic: "ledger" }]
"#,
    );
    let out = r.route(&ev(ACCOUNT));
    let redacted = std::str::from_utf8(&out.destinations[0].body).unwrap();
    assert!(!redacted.contains("197001010003"), "ssn removed");
    assert!(
        !redacted.contains("SE7280000810340009783242"),
        "iban removed"
    );
    assert!(redacted.contains("Ben Rangel"), "the rest kept");
    let full = std::str::from_utf8(&out.destinations[1].body).unwrap();
    assert!(full.contains("197001010003"), "other routes untouched");
}

#[test]
fn unrenderable_template_is_a_failure_for_that_destination_only() {
    let r = router(
        r#"
routes:
  - name: r
    match: ["*"]
    to:
      - { sink: a, topic: "t.{/current/missing}" }
      - { sink: b, topic: "ok" }
"#,
    );
    let out = r.route(&ev(ORDER));
    assert_eq!(out.destinations.len(), 1);
    assert_eq!(out.failures.len(), 1);
    assert!(out.failures[0].reason.contains("/current/missing"));
    assert!(!out.is_unmatched());
}

#[test]
fn compile_reports_every_problem_with_paths() {
    let mut c = cfg(&format!("{BASE}routes: []\n"));
    c.routes = serde_yaml_routes(
        r#"
- name: dup
  match: ["order.*"]
  to: [{ sink: nope, topic: "x.{foo}" }]
- name: dup
  match: []
  to: []
"#,
    );
    let errs = Router::compile(&c).unwrap_err();
    let paths: Vec<&str> = errs.iter().map(|e| e.path.as_str()).collect();
    assert!(paths.contains(&"routes[0].to[0].sink"), "{paths:?}");
    assert!(paths.contains(&"routes[0].to[0].topic"), "{paths:?}");
    assert!(paths.contains(&"routes[1].name"), "{paths:?}");
    assert!(paths.contains(&"routes[1].match"), "{paths:?}");
    assert!(paths.contains(&"routes[1].to"), "{paths:?}");
    let topic = errs
        .iter()
        .find(|e| e.path == "routes[0].to[0].topic")
        .unwrap();
    assert!(
        topic.message.contains("unknown placeholder {foo}"),
        "{}",
        topic.message
    );
}

fn serde_yaml_routes(y: &str) -> Vec<crate::config::RouteConfig> {
    use figment::providers::Format;
    figment::Figment::from(figment::providers::Yaml::string(&format!(
        "routes:\n{}",
        indent(y)
    )))
    .extract_inner("routes")
    .unwrap()
}

fn indent(s: &str) -> String {
    s.lines().map(|l| format!("  {l}\n")).collect()
}

#[test]
fn thousand_routes_use_the_type_index() {
    let mut routes = String::from("routes:\n");
    for i in 0..1000 {
        routes.push_str(&format!(
            "  - {{ name: r{i}, match: [\"journey.{i}\"], to: [{{ sink: a, topic: t{i} }}] }}\n"
        ));
    }
    routes.push_str("  - { name: orders, match: [\"order.*\"], to: [{ sink: a, topic: o }] }\n");
    let r = router(&routes);
    assert_eq!(r.route_count(), 1001);
    assert_eq!(r.by_type["order.create"], vec![1000]);
    assert_eq!(r.route(&ev(ORDER)).destinations[0].topic, "o");
}

/// `where` filters compare a body value with the configured one as `Value == Value` would,
/// through the borrowed body view: scalars, arrays, objects (in any key order), and no coercion.
#[test]
fn filter_equality_matches_value_equality() {
    let body =
        r#"{"current":{"n":1,"f":1.5,"s":"isk","b":true,"z":null,"a":[1,"x"],"o":{"y":2,"x":1}}}"#;
    let node = Node::parse(body.as_bytes()).unwrap();
    let value: Value = serde_json::from_str(body).unwrap();
    for (ptr, want) in [
        ("/current/n", serde_json::json!(1)),
        ("/current/n", serde_json::json!(1.0)),
        ("/current/n", serde_json::json!("1")),
        ("/current/f", serde_json::json!(1.5)),
        ("/current/s", serde_json::json!("isk")),
        ("/current/s", serde_json::json!("ISK")),
        ("/current/b", serde_json::json!(true)),
        ("/current/z", serde_json::json!(null)),
        ("/current/a", serde_json::json!([1, "x"])),
        ("/current/a", serde_json::json!(["x", 1])),
        ("/current/o", serde_json::json!({"x": 1, "y": 2})),
        ("/current/o", serde_json::json!({"x": 1})),
    ] {
        let by_value = value.pointer(ptr) == Some(&want);
        let by_node = node
            .pointer(ptr)
            .is_some_and(|n| super::node_eq_value(n, &want));
        assert_eq!(by_node, by_value, "{ptr} == {want}");
    }
}
