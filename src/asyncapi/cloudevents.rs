//! What a CloudEvents destination (`format: cloudevents-binary | cloudevents-structured`) adds to
//! its messages: the attribute headers as the broker's binding names them (binary mode), or the
//! JSON event format around the payload (structured mode). See [`crate::cloudevents`].

use serde_json::{Map, Value, json};

use super::DestinationView;
use super::message::template_schema;
use crate::cloudevents as ce;
use crate::config::{MessageFormat, SinkConfig};

/// The `contentType` of the destination's messages.
pub(super) fn content_type(view: &DestinationView<'_>) -> &'static str {
    match view.destination.format {
        MessageFormat::CloudeventsStructured => ce::STRUCTURED_CONTENT_TYPE,
        MessageFormat::Raw | MessageFormat::CloudeventsBinary => ce::DATA_CONTENT_TYPE,
    }
}

/// The attribute headers (binary mode) and the content-type header the sink sets.
pub(super) fn headers(
    view: &DestinationView<'_>,
    event_type: Option<&str>,
    props: &mut Map<String, Value>,
    required: &mut Vec<String>,
) {
    let format = view.destination.format;
    if format == MessageFormat::Raw {
        return;
    }
    let content_type_header = match view.sink {
        SinkConfig::Kafka(_) | SinkConfig::File(_) => Some("content-type"),
        SinkConfig::Nats(_) if format == MessageFormat::CloudeventsStructured => {
            Some("Content-Type")
        }
        // AMQP carries it in the `content_type` property (the message's contentType).
        SinkConfig::Nats(_) | SinkConfig::Rabbitmq(_) => None,
    };
    if let Some(h) = content_type_header {
        props.insert(h.into(), json!({ "const": content_type(view) }));
        required.push(h.into());
    }
    if format != MessageFormat::CloudeventsBinary {
        return;
    }
    let prefix = match view.sink {
        SinkConfig::Kafka(_) => "ce_",
        SinkConfig::Rabbitmq(_) => "cloudEvents_",
        SinkConfig::Nats(_) | SinkConfig::File(_) => "ce-",
    };
    for (name, schema, needed) in attributes(view, event_type) {
        let header = format!("{prefix}{name}");
        if needed {
            required.push(header.clone());
        }
        props.insert(header, schema);
    }
    if let SinkConfig::Nats(_) = view.sink {
        props.insert(
            "ce-datacontenttype".into(),
            json!({ "const": ce::DATA_CONTENT_TYPE }),
        );
        required.push("ce-datacontenttype".into());
    }
}

/// In structured mode, the JSON event format with `payload` as `data`; else `payload` itself.
pub(super) fn payload(
    view: &DestinationView<'_>,
    event_type: Option<&str>,
    payload: Value,
) -> Value {
    if view.destination.format != MessageFormat::CloudeventsStructured {
        return payload;
    }
    let mut props = Map::new();
    let mut required = vec!["datacontenttype".to_owned(), "data".to_owned()];
    for (name, schema, needed) in attributes(view, event_type) {
        if needed {
            required.push(name.to_owned());
        }
        props.insert(name.into(), schema);
    }
    props.insert(
        "datacontenttype".into(),
        json!({ "const": ce::DATA_CONTENT_TYPE }),
    );
    props.insert("data".into(), payload);
    json!({
        "type": "object",
        "description": "A CloudEvent 1.0 in the JSON event format; `data` is the Fondo body.",
        "properties": props,
        "required": required,
    })
}

/// Each attribute but `datacontenttype`: its name, its schema, whether every event has it.
fn attributes(
    view: &DestinationView<'_>,
    event_type: Option<&str>,
) -> Vec<(&'static str, Value, bool)> {
    let templates = view.destination.cloudevents.clone().unwrap_or_default();
    let source = match &templates.source {
        Some(t) => template_schema(t, event_type, "The CloudEvents source"),
        None => json!({
            "type": "string",
            "description": format!(
                "`fondo:client/{{client_id}}`, or `{}` for an event without a client id.",
                ce::SOURCE_WITHOUT_CLIENT
            ),
        }),
    };
    let ty = templates
        .event_type
        .as_deref()
        .unwrap_or(ce::DEFAULT_TYPE_TEMPLATE);
    let string = |d: &str| json!({ "type": "string", "description": d });
    vec![
        ("specversion", json!({ "const": ce::SPEC_VERSION }), true),
        (
            "id",
            string("The occurrence id, as the `fondo-event-id` header."),
            true,
        ),
        ("source", source, true),
        (
            "type",
            template_schema(ty, event_type, "The CloudEvents type"),
            true,
        ),
        (
            "subject",
            string("The object's `ref` or `id`, when the body has one."),
            false,
        ),
        (
            "time",
            json!({ "type": "string", "format": "date-time", "description": "When the bridge received the event." }),
            true,
        ),
        (
            "partitionkey",
            string("The message key (the partitioning extension)."),
            false,
        ),
        (
            "traceparent",
            string("The distributed-tracing extension: W3C trace context of the event's trace."),
            false,
        ),
        (
            "tracestate",
            string("The distributed-tracing extension: W3C trace state."),
            false,
        ),
    ]
}
