//! One message of one channel: what a route destination publishes for one event type.
//!
//! [`message_for`] is the one place a destination's message is described: its payload (the event
//! type's schema narrowed by the route), the headers the dispatcher and the sink set, the message
//! key and the broker's message bindings.

use serde_json::{Map, Value, json};

use super::DestinationView;
use super::cloudevents;
use super::schema::{self, schema_ref};
use crate::config::SinkConfig;
use crate::config::nats::NatsMode;
use crate::router::{Template, TemplatePart};
use crate::sinks::headers;

/// The header JetStream deduplicates on (set by the NATS sink in JetStream mode).
pub(super) const NATS_MSG_ID: &str = "Nats-Msg-Id";

/// The message `view`'s destination publishes for `event_type`; `None`: for the event types no
/// schema describes (a route glob may match types Fondo adds later).
pub fn message_for(view: &DestinationView<'_>, event_type: Option<&str>) -> Value {
    let name = event_type.unwrap_or("other");
    let mut m = json!({
        "name": name,
        "title": match event_type {
            Some(t) => format!("Fondo `{t}` event"),
            None => "Any other Fondo event type".to_owned(),
        },
        "description": sink_notes(view),
        "contentType": cloudevents::content_type(view),
        "headers": headers_schema(view, event_type),
        "payload": cloudevents::payload(view, event_type, payload(view, event_type)),
        "correlationId": {
            "description": "The occurrence id: the same on every copy of one change, on every destination.",
            "location": format!("$message.header#/{}", headers::EVENT_ID),
        },
    });
    if let Some(b) = bindings(view, event_type) {
        m["bindings"] = b;
    }
    m
}

fn sink_notes(view: &DestinationView<'_>) -> String {
    let body = "The body is Fondo's, verbatim (re-serialised when the route redacts fields).";
    let broker = match view.sink {
        SinkConfig::Kafka(_) => {
            "Kafka record: the key is the message key (see the binding), every header below is a record header."
                .to_owned()
        }
        SinkConfig::Rabbitmq(r) => format!(
            "AMQP message to exchange `{}` with the address as routing key: persistent (delivery mode 2), \
             content type application/json, `message_id` unique per occurrence and destination, `type` the \
             event type, the key in the `{}` header.",
            r.exchange,
            headers::KEY
        ),
        SinkConfig::Nats(n) => match n.mode {
            NatsMode::Jetstream => format!(
                "NATS message on the address as subject, stored by the JetStream stream capturing it; the key in \
                 the `{}` header, `{NATS_MSG_ID}` unique per occurrence and destination (the stream's duplicate \
                 window drops replays).",
                headers::KEY
            ),
            NatsMode::Core => format!(
                "Core NATS message on the address as subject (at most once); the key in the `{}` header.",
                headers::KEY
            ),
        },
        SinkConfig::File(_) => {
            "One line of `<address>.jsonl`: `{topic, key, event_id, headers, payload_json}`.".to_owned()
        }
    };
    format!("{body} {broker}")
}

/// The headers every message of this destination carries (required) or may carry.
fn headers_schema(view: &DestinationView<'_>, event_type: Option<&str>) -> Value {
    let mut props = Map::new();
    let mut required = vec![headers::EVENT_ID, headers::EVENT_TYPE, headers::SOURCE];
    let string = |d: &str| json!({ "type": "string", "description": d });
    props.insert(headers::EVENT_ID.into(), json!({
        "type": "string", "minLength": 1,
        "description": "The occurrence id: one change of one object, the same on all its copies and destinations.",
    }));
    props.insert(
        headers::EVENT_TYPE.into(),
        match event_type {
            Some(t) => json!({ "const": t, "description": "The event type." }),
            None => string("The event type."),
        },
    );
    props.insert(
        headers::CLIENT_ID.into(),
        string("The Fondo client id: the stream's, or the body's `clientId` (webhooks)."),
    );
    let cfg = view.config;
    let sources: Vec<&str> = [
        cfg.sources.websocket.as_ref().map(|_| "websocket"),
        cfg.sources.webhook.as_ref().map(|_| "webhook"),
        Some("replay"),
    ]
    .into_iter()
    .flatten()
    .collect();
    props.insert(headers::SOURCE.into(), json!({
        "enum": sources,
        "description": "Where the event came in; `replay`: published again by `fondo-bridge dlq replay`.",
    }));
    props.insert(headers::LATE.into(), json!({
        "const": "true",
        "description": "A change published after a later change of its object (the stream lost it, its webhook brought it).",
    }));
    props.insert(
        headers::REPLAYED_AT.into(),
        string("When `fondo-bridge dlq replay` published this dead letter again (RFC 3339)."),
    );
    props.insert(
        headers::TRACEPARENT.into(),
        json!({
            "type": "string",
            "pattern": "^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$",
            "description": "W3C trace context of the event's trace.",
        }),
    );
    props.insert(
        headers::TRACESTATE.into(),
        string("W3C trace state, with `traceparent`."),
    );
    sink_headers(view, event_type, &mut props, &mut required);
    let mut required: Vec<String> = required.into_iter().map(str::to_owned).collect();
    cloudevents::headers(view, event_type, &mut props, &mut required);
    let mut out = json!({ "type": "object", "properties": props });
    for (name, template) in &view.destination.headers {
        out["properties"][name] = template_schema(template, event_type, "A header of the route");
        required.push(name.clone());
    }
    out["required"] = json!(required);
    out
}

/// The headers a sink adds: the key where the broker has no key of its own, JetStream's message id.
fn sink_headers(
    view: &DestinationView<'_>,
    event_type: Option<&str>,
    props: &mut Map<String, Value>,
    required: &mut Vec<&'static str>,
) {
    match view.sink {
        SinkConfig::Rabbitmq(_) | SinkConfig::Nats(_) => {
            if let Some(k) = key_schema(view, event_type) {
                props.insert(headers::KEY.into(), k);
                if view.destination.key.is_some() {
                    required.push(headers::KEY);
                }
            }
        }
        SinkConfig::Kafka(_) | SinkConfig::File(_) => {}
    }
    if let SinkConfig::Nats(n) = view.sink
        && n.mode == NatsMode::Jetstream
    {
        props.insert(
            NATS_MSG_ID.into(),
            json!({ "type": "string", "description": "Unique per occurrence and destination." }),
        );
        required.push(NATS_MSG_ID);
    }
}

/// The message key: the destination's `key` template, or by default the object's `ref`/`id`.
/// `None` when the event has no key (no object, no template).
fn key_schema(view: &DestinationView<'_>, event_type: Option<&str>) -> Option<Value> {
    match &view.destination.key {
        Some(k) => Some(template_schema(k, event_type, "The message key")),
        None => {
            let has_object = event_type.is_none_or(|t| schema::referenced_entity(t).is_some());
            has_object.then(|| {
                json!({
                    "type": "string",
                    "description": "The object's `ref` or `id` (of `current`, else `previous`): events of one object stay in order. No key when the body has neither.",
                })
            })
        }
    }
}

/// The schema of a rendered template: its value when the event type alone decides it, else a
/// string described by the template.
pub(super) fn template_schema(template: &str, event_type: Option<&str>, what: &str) -> Value {
    let rendered = Template::parse(template)
        .ok()
        .and_then(|t| event_type.and_then(|et| render_static(&t, et)));
    match rendered {
        Some(v) => json!({ "const": v, "description": format!("{what}, from `{template}`.") }),
        None => {
            json!({ "type": "string", "description": format!("{what}, rendered from `{template}` per event.") })
        }
    }
}

/// A template rendered from the event type alone; `None` when it reads the client id or the body.
fn render_static(t: &Template, event_type: &str) -> Option<String> {
    let (entity, action) = event_type.split_once('.').unwrap_or((event_type, ""));
    t.parts()
        .map(|p| match p {
            TemplatePart::Literal(l) => Some(l),
            TemplatePart::Entity => Some(entity),
            TemplatePart::Action => Some(action),
            TemplatePart::EventType => Some(event_type),
            TemplatePart::ClientId | TemplatePart::Pointer(_) => None,
        })
        .collect()
}

/// The event type's schema, narrowed by the route: its `where` filter holds, redacted fields are
/// absent.
fn payload(view: &DestinationView<'_>, event_type: Option<&str>) -> Value {
    let base = schema_ref(event_type.unwrap_or(schema::OTHER_EVENT_SCHEMA));
    let route = view.route;
    let mut all = vec![base.clone()];
    for (pointer, value) in &route.filter {
        all.push(at_pointer(pointer, json!({ "const": value }), true));
    }
    for pointer in &route.redact {
        all.push(at_pointer(pointer, Value::Bool(false), false));
    }
    if all.len() == 1 {
        base
    } else {
        json!({ "allOf": all })
    }
}

/// A schema saying `leaf` of the value at `pointer` (and, with `require`, that it is there).
fn at_pointer(pointer: &str, leaf: Value, require: bool) -> Value {
    let tokens: Vec<String> = pointer
        .split('/')
        .skip(1)
        .map(|t| t.replace("~1", "/").replace("~0", "~"))
        .collect();
    tokens.iter().rev().fold(leaf, |inner, token| {
        let mut s = json!({ "properties": { token.as_str(): inner } });
        if require {
            s["required"] = json!([token]);
        }
        s
    })
}

fn bindings(view: &DestinationView<'_>, event_type: Option<&str>) -> Option<Value> {
    match view.sink {
        SinkConfig::Kafka(_) => {
            let mut k = json!({ "bindingVersion": "0.5.0" });
            if let Some(key) = key_schema(view, event_type) {
                k["key"] = key;
            }
            Some(json!({ "kafka": k }))
        }
        SinkConfig::Rabbitmq(_) => {
            let mut a = json!({ "bindingVersion": "0.3.0" });
            if let Some(t) = event_type {
                a["messageType"] = json!(t);
            }
            Some(json!({ "amqp": a }))
        }
        SinkConfig::Nats(_) | SinkConfig::File(_) => None,
    }
}
