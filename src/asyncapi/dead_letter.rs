//! The dead-letter channel: `dead_letter.topic` on `dead_letter.sink`, carrying one
//! [`DeadLetter`](crate::dlq::DeadLetter) record per message (as `DeadLetterWriter` publishes it).

use serde_json::{Value, json};

use super::message::NATS_MSG_ID;
use super::{AsyncApiError, address, address_kind, channel_bindings};
use crate::config::nats::NatsMode;
use crate::config::{Config, SinkConfig};
use crate::dlq::ReasonKind;
use crate::router::Template;
use crate::sinks::headers;

/// The channel's id (unless a route's channel has it already).
pub const CHANNEL: &str = "dead-letters";
/// The `components.schemas` key of the dead-letter record.
pub const SCHEMA: &str = "deadLetter";

pub fn channel(
    cfg: &Config,
    sink_name: &str,
    sink: &SinkConfig,
    server_id: &str,
) -> Result<Value, AsyncApiError> {
    let topic =
        Template::parse(&cfg.dead_letter.topic).map_err(|source| AsyncApiError::Template {
            path: "dead_letter.topic".into(),
            source,
        })?;
    let (address, parameters) = address(&topic, cfg, &[], true);
    let mut ch = json!({
        "address": address,
        "title": format!("dead letters → {sink_name}"),
        "description": format!(
            "Events that could not be delivered (unparseable, unmatched, a template that cannot be rendered, \
             refused by a broker, or out of attempts), one record each with the original body. The address is \
             the {}. When the sink fails too, they go to the local fallback file instead.",
            address_kind(sink)
        ),
        "servers": [{ "$ref": format!("#/servers/{server_id}") }],
        "messages": { "deadLetter": message(sink) },
    });
    if !parameters.is_empty() {
        ch["parameters"] = Value::Object(parameters);
    }
    if let Some(b) = channel_bindings(sink, &topic) {
        ch["bindings"] = b;
    }
    Ok(ch)
}

pub fn operation(sink_name: &str, sink: &SinkConfig, channel_id: &str) -> Value {
    let mut op = json!({
        "action": "send",
        "channel": { "$ref": format!("#/channels/{channel_id}") },
        "title": format!("Publish dead letters to sink `{sink_name}`"),
        "messages": [{ "$ref": format!("#/channels/{channel_id}/messages/deadLetter") }],
    });
    if let SinkConfig::Rabbitmq(_) = sink {
        op["bindings"] =
            json!({ "amqp": { "deliveryMode": 2, "mandatory": true, "bindingVersion": "0.3.0" } });
    }
    op
}

fn message(sink: &SinkConfig) -> Value {
    let string = |d: &str| json!({ "type": "string", "description": d });
    let key = string("The event id of the dead letter.");
    let mut props = json!({
        (headers::EVENT_ID): string("The event's occurrence id."),
        (headers::SOURCE): { "enum": ["websocket", "webhook", "replay"] },
        (headers::DEAD_LETTER_REASON): { "enum": reason_kinds() },
        (headers::EVENT_TYPE): string("The event type, when the body had one."),
        (headers::CLIENT_ID): string("The Fondo client id, when known."),
        (headers::TRACEPARENT): string("W3C trace context."),
    });
    let mut required = vec![
        headers::EVENT_ID,
        headers::SOURCE,
        headers::DEAD_LETTER_REASON,
    ];
    match sink {
        SinkConfig::Rabbitmq(_) | SinkConfig::Nats(_) => {
            props[headers::KEY] = key.clone();
            required.push(headers::KEY);
        }
        SinkConfig::Kafka(_) | SinkConfig::File(_) => {}
    }
    if let SinkConfig::Nats(n) = sink
        && n.mode == NatsMode::Jetstream
    {
        props[NATS_MSG_ID] = string("Stable per event, route and sink.");
        required.push(NATS_MSG_ID);
    }
    let mut m = json!({
        "name": "deadLetter",
        "title": "A dead letter",
        "contentType": "application/json",
        "headers": { "type": "object", "properties": props, "required": required },
        "payload": { "$ref": format!("#/components/schemas/{SCHEMA}") },
        "correlationId": { "location": format!("$message.header#/{}", headers::EVENT_ID) },
    });
    if let SinkConfig::Kafka(_) = sink {
        m["bindings"] = json!({ "kafka": { "key": key, "bindingVersion": "0.5.0" } });
    }
    m
}

fn reason_kinds() -> Vec<&'static str> {
    ReasonKind::ALL.iter().map(|k| k.as_str()).collect()
}

/// The schema of [`crate::dlq::DeadLetter`] as serde writes it.
pub fn schema() -> Value {
    let s = |d: &str| json!({ "type": "string", "description": d });
    json!({
        "type": "object",
        "description": "One dead letter: the event, where it was meant to go, why it could not, and its original body.",
        "properties": {
            "event_id": s("The event's occurrence id."),
            "event_type": s("The event type, when the body had one."),
            "client_id": s("The Fondo client id, when known."),
            "source": { "enum": ["websocket", "webhook", "replay"] },
            "destination": {
                "type": "object",
                "description": "Where the event was meant to go (empty when no route matched).",
                "properties": {
                    "route": s("Route name."), "sink": s("Sink name."),
                    "topic": s("Rendered topic."), "key": s("Rendered key."),
                },
                "additionalProperties": false,
            },
            "reason_kind": { "enum": reason_kinds() },
            "reason": s("What went wrong, in words (never payload content)."),
            "attempts": { "type": "integer", "minimum": 0 },
            "first_error": s("The first delivery error."),
            "last_error": s("The last delivery error."),
            "received_at": s("RFC 3339."),
            "first_failed_at": s("RFC 3339."),
            "last_failed_at": s("RFC 3339."),
            "dead_lettered_at": s("RFC 3339."),
            "traceparent": s("W3C trace context."),
            "body": s("The original body (as the route would have published it), when UTF-8."),
            "body_base64": s("The original body, base64, when it is not UTF-8."),
        },
        "required": ["event_id", "source", "destination", "reason_kind", "reason", "attempts", "received_at", "dead_lettered_at"],
        "additionalProperties": false,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use crate::dlq::{DeadLetter, IntendedDestination};

    fn record(full: bool) -> DeadLetter {
        let some = |s: &str| full.then(|| s.to_owned());
        DeadLetter {
            event_id: "e1".into(),
            event_type: some("order.update"),
            client_id: some("c"),
            source: "websocket".into(),
            destination: IntendedDestination {
                route: some("r"),
                sink: some("s"),
                topic: some("t"),
                key: some("k"),
            },
            reason_kind: ReasonKind::Exhausted,
            reason: "x".into(),
            attempts: 3,
            first_error: some("a"),
            last_error: some("b"),
            received_at: "2026-01-01T00:00:00.000Z".into(),
            first_failed_at: some("2026-01-01T00:00:00.000Z"),
            last_failed_at: some("2026-01-01T00:00:00.000Z"),
            dead_lettered_at: "2026-01-01T00:00:00.000Z".into(),
            traceparent: some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
            body: some("{}"),
            body_base64: some("e30="),
        }
    }

    /// The schema names exactly the fields serde writes, and requires those always written.
    #[test]
    fn schema_matches_the_record() {
        let s = schema();
        let props: Vec<&String> = s["properties"].as_object().unwrap().keys().collect();
        let full = serde_json::to_value(record(true)).unwrap();
        let written: Vec<&String> = full.as_object().unwrap().keys().collect();
        assert_eq!(props, written);
        let minimal = serde_json::to_value(record(false)).unwrap();
        let mut always: Vec<&str> = minimal
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        let mut required: Vec<&str> = s["required"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        always.sort_unstable();
        required.sort_unstable();
        assert_eq!(required, always);
        let dest: Vec<&String> = s["properties"]["destination"]["properties"]
            .as_object()
            .unwrap()
            .keys()
            .collect();
        let written_dest: Vec<&String> = full["destination"].as_object().unwrap().keys().collect();
        assert_eq!(dest, written_dest);
    }
}
