//! CloudEvents 1.0 on the brokers, for destinations with `format: cloudevents-binary` or
//! `cloudevents-structured`.
//!
//! The router renders a destination's `source` and `type`; the dispatcher adds the occurrence's
//! other attributes ([`CloudEvent`]) to the message; each sink writes them the way its broker's
//! CloudEvents protocol binding says, at publish time:
//!
//! | broker   | binary mode: attribute `x` as        | `datacontenttype` as        | binding |
//! |----------|--------------------------------------|-----------------------------|---------|
//! | Kafka    | record header `ce_x`                 | header `content-type`       | kafka-protocol-binding.md §3.2.3, §3.2.1 |
//! | RabbitMQ | AMQP header `cloudEvents_x`          | property `content_type`     | amqp-protocol-binding.md §3.1.3.1, §3.1.1 |
//! | NATS     | header `ce-x`, percent-encoded value | header `ce-datacontenttype` | nats-protocol-binding.md §3.1.3 |
//! | file     | header `ce-x` (the HTTP binding's names) | header `content-type`   | http-protocol-binding.md §3.1.3 |
//!
//! (All in <https://github.com/cloudevents/spec/tree/main/cloudevents/bindings>.) RabbitMQ
//! speaks AMQP 0-9-1, for which the CloudEvents project publishes no binding; RabbitMQ maps an
//! AMQP 1.0 message's application-properties to 0-9-1 headers, so the AMQP binding's names are
//! what a consumer on either protocol sees. The binding's preferred `_` separator is used (JMS
//! selectors cannot name `:`).
//!
//! In structured mode the body is the JSON event format with the (redacted) Fondo body as `data`,
//! and the content type is `application/cloudevents+json; charset=UTF-8` (the Kafka header
//! `content-type`, the AMQP `content_type`, the NATS header `Content-Type`).
//!
//! The dead letter of a CloudEvents message keeps the Fondo body, as for every message: a replay
//! routes it again, and the route makes the CloudEvent again.

use std::borrow::Cow;
use std::sync::Arc;

use bytes::Bytes;

/// `specversion` of every event.
pub const SPEC_VERSION: &str = "1.0";
/// `datacontenttype`: Fondo bodies are JSON.
pub const DATA_CONTENT_TYPE: &str = "application/json";
/// The content type of a structured-mode message (the JSON event format).
pub const STRUCTURED_CONTENT_TYPE: &str = "application/cloudevents+json; charset=UTF-8";

/// The default `source` of an event with a client id: `fondo:client/{client_id}`.
pub const DEFAULT_SOURCE_TEMPLATE: &str = "fondo:client/{client_id}";
/// The default `source` of an event without one (a webhook that did not name its client).
pub const SOURCE_WITHOUT_CLIENT: &str = "fondo:partner";
/// The default `type`.
pub const DEFAULT_TYPE_TEMPLATE: &str = "se.fondo.{event_type}";

/// How the attributes travel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// In the broker's headers; the body is the event's data as is.
    Binary,
    /// In the body: the JSON event format.
    Structured,
}

/// What the router rendered for one destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    pub mode: Mode,
    pub source: String,
    pub event_type: String,
}

/// One occurrence's CloudEvent on one destination: the attributes and the mode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloudEvent {
    pub mode: Mode,
    /// The occurrence id: the same on every destination and every retry of one change.
    pub id: Arc<str>,
    pub source: String,
    pub event_type: String,
    /// The object's `ref` (or `id`), when the body has one.
    pub subject: Option<String>,
    /// When the bridge received the event, RFC 3339 in UTC.
    pub time: String,
    /// The message key (the partitioning extension), when the message has one.
    pub partition_key: Option<String>,
    /// The distributed-tracing extension.
    pub traceparent: Option<String>,
    pub tracestate: Option<String>,
}

impl CloudEvent {
    /// Every attribute but `datacontenttype` (the bindings carry it in a content-type field of
    /// their own), as (name, value), in the order of the spec.
    pub fn attributes(&self) -> impl Iterator<Item = (&'static str, &str)> {
        [
            ("specversion", Some(SPEC_VERSION)),
            ("id", Some(&*self.id)),
            ("source", Some(self.source.as_str())),
            ("type", Some(self.event_type.as_str())),
            ("subject", self.subject.as_deref()),
            ("time", Some(self.time.as_str())),
            ("partitionkey", self.partition_key.as_deref()),
            ("traceparent", self.traceparent.as_deref()),
            ("tracestate", self.tracestate.as_deref()),
        ]
        .into_iter()
        .filter_map(|(k, v)| v.map(|v| (k, v)))
    }

    /// The content type the message declares: the data's in binary mode, the event format's in
    /// structured mode.
    pub fn content_type(&self) -> &'static str {
        match self.mode {
            Mode::Binary => DATA_CONTENT_TYPE,
            Mode::Structured => STRUCTURED_CONTENT_TYPE,
        }
    }

    /// The message body: `data` itself in binary mode; in structured mode the JSON event format
    /// with `data` embedded byte for byte (it is one JSON document: the parser accepted it or
    /// serde_json wrote it).
    pub fn body<'a>(&self, data: &'a Bytes) -> Cow<'a, Bytes> {
        match self.mode {
            Mode::Binary => Cow::Borrowed(data),
            Mode::Structured => Cow::Owned(self.structured(data)),
        }
    }

    fn structured(&self, data: &[u8]) -> Bytes {
        let mut out = Vec::with_capacity(data.len() + 320);
        out.push(b'{');
        for (name, value) in self.attributes() {
            push_member(&mut out, name, value);
        }
        push_member(&mut out, "datacontenttype", DATA_CONTENT_TYPE);
        out.extend_from_slice(b"\"data\":");
        out.extend_from_slice(data);
        out.push(b'}');
        Bytes::from(out)
    }
}

/// `"name":"value",` with the value escaped as JSON.
fn push_member(out: &mut Vec<u8>, name: &str, value: &str) {
    out.push(b'"');
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b"\":");
    // Writing a string into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, value);
    out.push(b',');
}

/// A header value as the NATS binding (§3.1.3.2) writes it: space, `"`, `%` and everything
/// outside printable ASCII percent-encoded, UTF-8 byte by byte, upper-case hex.
pub fn percent_encode(value: &str) -> Cow<'_, str> {
    let plain = |b: u8| (0x21..=0x7e).contains(&b) && b != b'"' && b != b'%';
    if value.bytes().all(plain) {
        return Cow::Borrowed(value);
    }
    let mut out = String::with_capacity(value.len() + 16);
    for b in value.bytes() {
        if plain(b) {
            out.push(char::from(b));
        } else {
            out.push('%');
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 0xf)]));
        }
    }
    Cow::Owned(out)
}

const HEX: &[u8; 16] = b"0123456789ABCDEF";

#[cfg(test)]
mod tests {
    use super::*;

    fn event(mode: Mode) -> CloudEvent {
        CloudEvent {
            mode,
            id: Arc::from("occ-1"),
            source: "fondo:client/c1".into(),
            event_type: "se.fondo.order.create".into(),
            subject: Some("O-1".into()),
            time: "2026-12-07T09:00:00.123Z".into(),
            partition_key: None,
            traceparent: Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into()),
            tracestate: None,
        }
    }

    #[test]
    fn structured_body_is_the_json_event_format_with_data_embedded() {
        let data = Bytes::from_static(br#"{"eventType":"order.create","current":{"ref":"O-1"}}"#);
        let body = event(Mode::Structured).body(&data).into_owned();
        let v: serde_json::Value =
            serde_json::from_slice(&body).unwrap_or_else(|e| panic!("not JSON: {e}"));
        assert_eq!(v["specversion"], "1.0");
        assert_eq!(v["id"], "occ-1");
        assert_eq!(v["type"], "se.fondo.order.create");
        assert_eq!(v["subject"], "O-1");
        assert_eq!(v["datacontenttype"], "application/json");
        assert_eq!(v["data"]["current"]["ref"], "O-1");
        assert!(
            v.get("partitionkey").is_none(),
            "absent attributes are left out"
        );
        assert!(
            v["traceparent"]
                .as_str()
                .is_some_and(|t| t.starts_with("00-"))
        );
    }

    #[test]
    fn binary_body_is_the_data_itself() {
        let data = Bytes::from_static(b"{}");
        let e = event(Mode::Binary);
        assert!(matches!(e.body(&data), Cow::Borrowed(b) if b == &data));
        assert_eq!(e.content_type(), DATA_CONTENT_TYPE);
        let names: Vec<_> = e.attributes().map(|(k, _)| k).collect();
        assert_eq!(
            names,
            [
                "specversion",
                "id",
                "source",
                "type",
                "subject",
                "time",
                "traceparent"
            ]
        );
    }

    #[test]
    fn attribute_strings_are_escaped_in_the_envelope() {
        let mut e = event(Mode::Structured);
        e.subject = Some("a\"b\\c\n".into());
        let body = e.body(&Bytes::from_static(b"1")).into_owned();
        let v: serde_json::Value =
            serde_json::from_slice(&body).unwrap_or_else(|e| panic!("not JSON: {e}"));
        assert_eq!(v["subject"], "a\"b\\c\n");
    }

    #[test]
    fn nats_values_are_percent_encoded_as_the_binding_says() {
        // The binding's own example.
        assert_eq!(
            percent_encode("Euro \u{20AC} \u{1F600}"),
            "Euro%20%E2%82%AC%20%F0%9F%98%80"
        );
        assert_eq!(percent_encode("a%\"b"), "a%25%22b");
        assert!(matches!(
            percent_encode("fondo:client/c-1"),
            Cow::Borrowed(_)
        ));
    }
}
