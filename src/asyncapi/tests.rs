#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde_json::{Value, json};

use super::*;

const CONFIG: &str = r#"
sources:
  websocket:
    url: ws://127.0.0.1:1
    client_ids: [c1, c2]
    token: t
sinks:
  kafka: { type: kafka, brokers: "k1:9092,k2:9092" }
  rabbit: { type: rabbitmq, url: "amqp://fondo:hunter2@rabbitmq:5672/%2fprod", exchange: fondo }
  nats: { type: nats, url: "nats://nats:4222" }
  files: { type: file, dir: /tmp/out }
routes:
  - name: orders
    match: ["order.*"]
    to:
      - { sink: kafka, topic: "fondo.order", key: "{/current/id}" }
      - { sink: nats, topic: "fondo.{entity}.{action}.{/current/accountRef}" }
  - name: accounts
    match: ["account.update"]
    where: { "/current/accountType": "isk" }
    redact: ["/current/owner/ssn"]
    to: [{ sink: rabbit, topic: "account.{action}", headers: { x-client: "{client_id}", x-kind: "{entity}" } }]
  - name: all
    match: ["*"]
    to: [{ sink: files, topic: "fondo.{event_type}" }]
"#;

fn doc(text: &str) -> Value {
    let plan = Plan::from_str_with_env(text, "yaml", Vec::<(String, String)>::new()).unwrap();
    serde_json::to_value(document(&plan).unwrap()).unwrap()
}

#[test]
fn a_channel_per_destination_and_a_send_operation_each() {
    let d = doc(CONFIG);
    assert_eq!(d["asyncapi"], "3.0.0");
    let channels = d["channels"].as_object().unwrap();
    let ids: Vec<&str> = channels.keys().map(String::as_str).collect();
    assert_eq!(
        ids,
        [
            "accounts-rabbit",
            "all-files",
            "orders-kafka",
            "orders-nats"
        ]
    );
    for id in ids {
        let op = &d["operations"][format!("send-{id}")];
        assert_eq!(op["action"], "send");
        assert_eq!(op["channel"]["$ref"], format!("#/channels/{id}"));
        let n = channels[id]["messages"].as_object().unwrap().len();
        assert_eq!(op["messages"].as_array().unwrap().len(), n, "{id}");
    }
    let servers = d["servers"].as_object().unwrap();
    assert_eq!(servers.len(), 4);
}

#[test]
fn addresses_are_templates_with_their_parameters() {
    let d = doc(CONFIG);
    let nats = &d["channels"]["orders-nats"];
    assert_eq!(
        nats["address"],
        "fondo.{entity}.{action}.{current_accountRef}"
    );
    // `order.*` may match an action Fondo adds later: examples, not an enum.
    assert_eq!(nats["parameters"]["entity"]["examples"], json!(["order"]));
    assert_eq!(
        nats["parameters"]["action"]["examples"],
        json!(["create", "delete", "update"])
    );
    assert_eq!(
        nats["parameters"]["current_accountRef"]["location"],
        "$message.payload#/current/accountRef"
    );
    // A literal address has no parameters.
    assert!(d["channels"]["orders-kafka"].get("parameters").is_none());
    // `*` can match types added later: examples, not an enum, and a generic message.
    let all = &d["channels"]["all-files"];
    assert!(all["parameters"]["event_type"].get("enum").is_none());
    assert!(
        all["parameters"]["event_type"]["examples"]
            .as_array()
            .unwrap()
            .len()
            > 10
    );
    assert!(all["messages"].get("other").is_some());
    assert!(
        all["messages"].get("heartbeat").is_none(),
        "`*` never matches heartbeat"
    );
}

#[test]
fn messages_per_event_type_with_payload_refs() {
    let d = doc(CONFIG);
    let msgs = d["channels"]["orders-kafka"]["messages"]
        .as_object()
        .unwrap();
    let names: Vec<&str> = msgs.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        ["order_create", "order_delete", "order_update", "other"]
    );
    assert_eq!(
        msgs["other"]["payload"]["$ref"],
        "#/components/schemas/fondoEvent"
    );
    let m = &msgs["order_update"];
    assert_eq!(m["name"], "order.update");
    assert_eq!(m["payload"]["$ref"], "#/components/schemas/order.update");
    assert_eq!(
        m["headers"]["properties"]["fondo-event-type"]["const"],
        "order.update"
    );
    assert_eq!(
        m["headers"]["properties"]["fondo-source"]["enum"],
        json!(["websocket", "replay"])
    );
    let schemas = d["components"]["schemas"].as_object().unwrap();
    for s in [
        "order",
        "order.update",
        "account",
        "account.update",
        "fondoEvent",
    ] {
        assert!(schemas.contains_key(s), "{s}");
    }
    assert!(!schemas.contains_key("heartbeat"), "only what is published");
}

#[test]
fn broker_bindings() {
    let d = doc(CONFIG);
    let kafka = &d["channels"]["orders-kafka"]["messages"]["order_create"];
    assert_eq!(kafka["bindings"]["kafka"]["key"]["type"], "string");
    assert!(
        kafka["bindings"]["kafka"]["key"]["description"]
            .as_str()
            .unwrap()
            .contains("{/current/id}")
    );
    let rabbit = &d["channels"]["accounts-rabbit"];
    assert_eq!(rabbit["bindings"]["amqp"]["is"], "routingKey");
    assert_eq!(rabbit["bindings"]["amqp"]["exchange"]["name"], "fondo");
    assert_eq!(rabbit["bindings"]["amqp"]["exchange"]["vhost"], "/prod");
    assert_eq!(
        rabbit["messages"]["account_update"]["bindings"]["amqp"]["messageType"],
        "account.update"
    );
    assert_eq!(
        d["operations"]["send-accounts-rabbit"]["bindings"]["amqp"]["deliveryMode"],
        2
    );
    let nats = &d["channels"]["orders-nats"]["messages"]["order_create"]["headers"];
    assert!(
        nats["required"]
            .as_array()
            .unwrap()
            .contains(&json!("Nats-Msg-Id"))
    );
    assert_eq!(nats["properties"]["fondo-key"]["type"], "string");
}

#[test]
fn route_headers_filters_and_redaction_shape_the_message() {
    let d = doc(CONFIG);
    let m = &d["channels"]["accounts-rabbit"]["messages"]["account_update"];
    let h = &m["headers"];
    assert!(
        h["required"]
            .as_array()
            .unwrap()
            .contains(&json!("x-client"))
    );
    assert_eq!(h["properties"]["x-kind"]["const"], "account");
    assert_eq!(h["properties"]["x-client"]["type"], "string");
    let all = m["payload"]["allOf"].as_array().unwrap();
    assert_eq!(all[0]["$ref"], "#/components/schemas/account.update");
    assert_eq!(
        all[1],
        json!({ "properties": { "current": { "properties": { "accountType": { "const": "isk" } }, "required": ["accountType"] } }, "required": ["current"] })
    );
    assert_eq!(
        all[2],
        json!({ "properties": { "current": { "properties": { "owner": { "properties": { "ssn": false } } } } } })
    );
}

#[test]
fn no_credentials_in_the_document() {
    let d = doc(CONFIG);
    let text = serde_json::to_string(&d).unwrap();
    assert!(!text.contains("hunter2"));
    assert!(!text.contains("fondo:"));
    assert_eq!(d["servers"]["rabbit"]["host"], "rabbitmq:5672");
    assert_eq!(d["servers"]["rabbit"]["protocol"], "amqp");
    assert_eq!(d["servers"]["kafka"]["host"], "k1:9092,k2:9092");
}

#[test]
fn event_type_header_makes_event_type_optional() {
    let with_header = r#"
sources:
  webhook:
    listen: 127.0.0.1:0
    signature: { scheme: none, insecure: true }
    event_type_header: x-fondo-type
sinks: { files: { type: file, dir: /tmp/out } }
routes: [{ name: hb, match: ["heartbeat", "account.update"], to: [{ sink: files, topic: "t.{event_type}" }] }]
"#;
    let d = doc(with_header);
    let s = &d["components"]["schemas"];
    assert_eq!(s["account.update"]["required"], json!(["current"]));
    assert_eq!(s["heartbeat"]["required"], json!(["eventType"]));
    let msgs = d["channels"]["hb-files"]["messages"].as_object().unwrap();
    assert!(msgs.contains_key("heartbeat"));
    assert!(!msgs.contains_key("other"), "literal known globs only");
    assert_eq!(
        d["channels"]["hb-files"]["parameters"]["event_type"]["enum"],
        json!(["account.update", "heartbeat"])
    );
    assert_eq!(
        d["channels"]["hb-files"]["messages"]["heartbeat"]["headers"]["properties"]["fondo-source"]
            ["enum"],
        json!(["webhook", "replay"])
    );
}

#[test]
fn url_and_vhost_parsing() {
    assert_eq!(
        split_url("amqps://u:p@h:5671/%2f?heartbeat=10"),
        ("amqps", "h:5671", "/%2f?heartbeat=10")
    );
    assert_eq!(split_url("nats://n:4222"), ("nats", "n:4222", ""));
    assert_eq!(vhost("/%2f?heartbeat=10"), "/");
    assert_eq!(vhost(""), "/");
    assert_eq!(vhost("/prod"), "prod");
    assert_eq!(vhost("/%2Fa%zz"), "/a%zz");
    assert_eq!(identifier("a.b c"), "a_b_c");
    assert_eq!(pointer_parameter("/current/ref"), "current_ref");
}

#[test]
fn dead_letters_get_their_own_channel() {
    let text = format!("{CONFIG}\ndead_letter: {{ sink: kafka, topic: fondo.dead-letter }}\n");
    let d = doc(&text);
    let ch = &d["channels"]["dead-letters"];
    assert_eq!(ch["address"], "fondo.dead-letter");
    assert_eq!(ch["servers"][0]["$ref"], "#/servers/kafka");
    let m = &ch["messages"]["deadLetter"];
    assert_eq!(m["payload"]["$ref"], "#/components/schemas/deadLetter");
    assert_eq!(
        m["headers"]["properties"]["fondo-dead-letter-reason"]["enum"]
            .as_array()
            .unwrap()
            .len(),
        6
    );
    assert_eq!(m["bindings"]["kafka"]["key"]["type"], "string");
    assert!(d["components"]["schemas"]["deadLetter"].is_object());
    assert_eq!(
        d["operations"]["send-dead-letters"]["channel"]["$ref"],
        "#/channels/dead-letters"
    );
    // Without a dead-letter sink there is only the local fallback file: nothing published.
    assert!(doc(CONFIG)["channels"].get("dead-letters").is_none());
}

#[test]
fn cloudevents_destinations_describe_their_attributes() {
    let yaml = r#"
sources: { websocket: { url: "ws://127.0.0.1:1/x", client_ids: [c1], token: t } }
sinks:
  k: { type: kafka, brokers: "127.0.0.1:9092" }
  n: { type: nats, url: "nats://127.0.0.1:4222" }
routes:
  - name: r
    match: ["order.create"]
    to:
      - { sink: k, topic: "bin", format: cloudevents-binary }
      - { sink: n, topic: "str", format: cloudevents-structured, cloudevents: { type: "com.x.{entity}" } }
dead_letter: { fallback_file: /tmp/x.jsonl }
"#;
    let doc = doc(yaml);
    let msgs: Vec<&serde_json::Value> = doc["channels"]
        .as_object()
        .into_iter()
        .flat_map(|c| c.values())
        .flat_map(|ch| {
            ch["messages"]
                .as_object()
                .into_iter()
                .flat_map(|m| m.values())
        })
        .collect();
    let bin = msgs
        .iter()
        .find(|m| m["headers"]["properties"].get("ce_id").is_some())
        .expect("a Kafka binary message with ce_ headers");
    let required = bin["headers"]["required"].to_string();
    for h in [
        "ce_specversion",
        "ce_id",
        "ce_source",
        "ce_type",
        "ce_time",
        "content-type",
    ] {
        assert!(required.contains(h), "{h} required: {required}");
    }
    assert_eq!(
        bin["headers"]["properties"]["ce_type"]["const"],
        "se.fondo.order.create"
    );
    let st = msgs
        .iter()
        .find(|m| m["contentType"] == crate::cloudevents::STRUCTURED_CONTENT_TYPE)
        .expect("a structured message");
    assert_eq!(st["payload"]["properties"]["type"]["const"], "com.x.order");
    assert!(st["payload"]["properties"]["data"].is_object());
    assert_eq!(
        st["headers"]["properties"]["Content-Type"]["const"],
        crate::cloudevents::STRUCTURED_CONTENT_TYPE
    );
}
