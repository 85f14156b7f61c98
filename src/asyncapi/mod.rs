//! The AsyncAPI 3.0 document of what a config publishes (`fondo-bridge asyncapi`).
//!
//! - **Servers**: one per sink a route sends to (the broker's host, never its credentials).
//! - **Channels**: one per route destination. The address is the destination's topic template
//!   (Kafka topic, AMQP routing key, NATS subject, file name); each placeholder is a parameter
//!   (`{entity}`, `{action}`, `{event_type}`, `{client_id}`, and a JSON pointer such as
//!   `{/current/ref}` as `{current_ref}`, with its location in the payload).
//! - **Messages**: per channel, one per event type its route can match ([`message::message_for`]):
//!   the payload schema of that type ([`schema`]) narrowed by the route's `where` filter and
//!   redaction, the headers the bridge sets, the key and the broker's bindings. A CloudEvents
//!   destination's message has the attribute headers (binary) or the event format around the
//!   payload (structured), from `cloudevents.rs`.
//! - **Operations**: one `send` per channel.
//! - **Dead letters**: with a `dead_letter.sink`, a channel for its topic, whose message is the
//!   dead-letter record (`crate::dlq::DeadLetter`).
//!
//! The document is built from a [`Plan`], so the config is known to be valid.

mod cloudevents;
mod dead_letter;
mod message;
pub mod schema;

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;
use serde_json::{Map, Value, json};

use crate::config::{Config, DestinationConfig, RouteConfig, SinkConfig};
use crate::plan::Plan;
use crate::router::{Glob, Template, TemplateError, TemplatePart};
use schema::SchemaOptions;

pub use message::message_for;

/// The AsyncAPI version the document follows.
pub const ASYNCAPI_VERSION: &str = "3.0.0";

/// Why a document could not be built (only for a config no [`Plan`] would accept).
#[derive(Debug, thiserror::Error)]
pub enum AsyncApiError {
    #[error("{path}: {source}")]
    Template { path: String, source: TemplateError },
    #[error("{path}: no sink named {sink:?}")]
    NoSink { path: String, sink: String },
}

/// The document, its top-level keys in the order the specification lists them.
#[derive(Debug, Clone, Serialize)]
pub struct Document {
    pub asyncapi: &'static str,
    pub info: Value,
    #[serde(rename = "defaultContentType")]
    pub default_content_type: &'static str,
    pub servers: Map<String, Value>,
    pub channels: Map<String, Value>,
    pub operations: Map<String, Value>,
    pub components: Value,
}

/// One route destination, with what its messages are built from.
#[derive(Debug, Clone, Copy)]
pub struct DestinationView<'a> {
    pub config: &'a Config,
    pub route: &'a RouteConfig,
    pub destination: &'a DestinationConfig,
    pub sink: &'a SinkConfig,
    pub schemas: SchemaOptions,
}

/// Builds the document of what `plan` publishes.
pub fn document(plan: &Plan) -> Result<Document, AsyncApiError> {
    let cfg = plan.config();
    let opts = SchemaOptions {
        event_type_required: cfg
            .sources
            .webhook
            .as_ref()
            .is_none_or(|w| w.event_type_header.is_none()),
    };
    let mut parts = Parts::default();
    for (i, route) in cfg.routes.iter().enumerate() {
        let (types, other) = routed_types(cfg, route);
        for (j, dest) in route.to.iter().enumerate() {
            let at = format!("routes[{i}].to[{j}]");
            let sink = cfg
                .sinks
                .get(&dest.sink)
                .ok_or_else(|| AsyncApiError::NoSink {
                    path: format!("{at}.sink"),
                    sink: dest.sink.clone(),
                })?;
            let view = DestinationView {
                config: cfg,
                route,
                destination: dest,
                sink,
                schemas: opts,
            };
            let server_id = parts.server(&dest.sink, sink);
            let id = parts.channel_id(&format!("{}-{}", route.name, dest.sink));
            let ch = channel(&view, &server_id, &types, other, &at)?;
            let op = operation(&view, &id, message_refs(&id, &ch));
            parts.add(id, ch, op);
            parts.described.extend(types.iter().cloned());
            if other {
                parts
                    .described
                    .insert(schema::OTHER_EVENT_SCHEMA.to_owned());
            }
        }
    }
    if let Some((sink_name, sink)) = cfg
        .dead_letter
        .sink
        .as_ref()
        .and_then(|n| cfg.sinks.get_key_value(n))
    {
        let server_id = parts.server(sink_name, sink);
        let id = parts.channel_id(dead_letter::CHANNEL);
        let ch = dead_letter::channel(cfg, sink_name, sink, &server_id)?;
        let op = dead_letter::operation(sink_name, sink, &id);
        parts.add(id, ch, op);
        parts.described.insert(dead_letter::SCHEMA.to_owned());
    }
    Ok(Document {
        asyncapi: ASYNCAPI_VERSION,
        info: info(cfg),
        default_content_type: "application/json",
        servers: parts.servers,
        channels: parts.channels,
        operations: parts.operations,
        components: json!({ "schemas": component_schemas(&parts.described, opts) }),
    })
}

/// The maps of the document while it is built, and the payload schemas its messages refer to.
#[derive(Default)]
struct Parts {
    servers: Map<String, Value>,
    channels: Map<String, Value>,
    operations: Map<String, Value>,
    described: BTreeSet<String>,
}

impl Parts {
    /// The server id of a sink, adding its server on first use.
    fn server(&mut self, name: &str, sink: &SinkConfig) -> String {
        let id = identifier(name);
        self.servers
            .entry(id.clone())
            .or_insert_with(|| server(name, sink));
        id
    }

    /// An id for a new channel, from `name`, unique in the document.
    fn channel_id(&self, name: &str) -> String {
        let base = identifier(name);
        let mut id = base.clone();
        let mut n = 1;
        while self.channels.contains_key(&id) {
            n += 1;
            id = format!("{base}-{n}");
        }
        id
    }

    fn add(&mut self, id: String, channel: Value, operation: Value) {
        self.operations.insert(format!("send-{id}"), operation);
        self.channels.insert(id, channel);
    }
}

/// References to every message of a channel, for its operation.
fn message_refs(id: &str, channel: &Value) -> Vec<Value> {
    channel["messages"]
        .as_object()
        .map(|m| {
            m.keys()
                .map(|k| json!({ "$ref": format!("#/channels/{id}/messages/{k}") }))
                .collect()
        })
        .unwrap_or_default()
}

/// The known event types a route's globs match, and whether they can match others too (a
/// wildcard, or a type this build does not know).
pub fn routed_types(cfg: &Config, route: &RouteConfig) -> (Vec<String>, bool) {
    let gap = cfg.sources.websocket.as_ref().is_some_and(|w| w.gap_marker);
    let candidates = crate::event::KNOWN_EVENT_TYPES
        .iter()
        .copied()
        .chain(gap.then_some(schema::GAP_MARKER_TYPE));
    let globs: Vec<Glob> = route
        .matches
        .iter()
        .filter_map(|m| Glob::parse(m).ok())
        .collect();
    let types = candidates
        .filter(|t| globs.iter().any(|g| g.matches(t)))
        .map(str::to_owned)
        .collect();
    let other = route
        .matches
        .iter()
        .any(|m| m.contains(['*', '?']) || !schema::is_described(m));
    (types, other)
}

fn info(cfg: &Config) -> Value {
    let sources: Vec<&str> = [
        cfg.sources
            .websocket
            .as_ref()
            .map(|_| "the WebSocket stream"),
        cfg.sources.webhook.as_ref().map(|_| "signed webhooks"),
    ]
    .into_iter()
    .flatten()
    .collect();
    json!({
        "title": "fondo-bridge",
        "version": env!("CARGO_PKG_VERSION"),
        "description": format!(
            "The Fondo Partner API events fondo-bridge publishes under this config, from {}. \
             Bodies are Fondo's own, published verbatim unless a route redacts fields. \
             Delivery is at least once and in order per message key; `fondo-event-id` identifies one \
             occurrence of a change across its copies.",
            if sources.is_empty() { "no source (dead-letter replays only)".to_owned() } else { sources.join(" and ") }
        ),
    })
}

/// A name usable as an AsyncAPI map key (`[A-Za-z0-9_-]`).
fn identifier(s: &str) -> String {
    let id: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if id.is_empty() { "_".to_owned() } else { id }
}

/// `scheme://user:secret@host:port/path` → (`scheme`, `host:port`, `/path`), without credentials.
fn split_url(url: &str) -> (&str, &str, &str) {
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    let (authority, path) = rest.find('/').map_or((rest, ""), |i| rest.split_at(i));
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    (scheme, host, path)
}

fn server(name: &str, sink: &SinkConfig) -> Value {
    match sink {
        SinkConfig::Kafka(k) => json!({
            "host": k.brokers,
            "protocol": "kafka",
            "description": format!("Sink `{name}`: the Kafka cluster (bootstrap servers); the bridge's idempotent producer waits for acks=all."),
        }),
        SinkConfig::Rabbitmq(r) => {
            let (scheme, host, path) = split_url(&r.url);
            let mut s = json!({
                "host": host,
                "protocol": if scheme.is_empty() { "amqp" } else { scheme },
                "protocolVersion": "0-9-1",
                "description": format!("Sink `{name}`: RabbitMQ, exchange `{}`, publisher confirms and mandatory publishing.", r.exchange),
            });
            if !path.is_empty() {
                s["pathname"] = json!(path);
            }
            s
        }
        SinkConfig::Nats(n) => {
            let urls = n.urls();
            let first = urls.first().copied().unwrap_or_default();
            let (_, host, _) = split_url(first);
            json!({
                "host": host,
                "protocol": "nats",
                "description": format!(
                    "Sink `{name}`: NATS ({}), {} server URL(s).",
                    match n.mode {
                        crate::config::nats::NatsMode::Jetstream => "JetStream: each message confirmed by its stream",
                        crate::config::nats::NatsMode::Core => "core NATS: at most once",
                    },
                    urls.len()
                ),
            })
        }
        SinkConfig::File(f) => json!({
            "host": "localhost",
            "protocol": "file",
            "pathname": f.dir.display().to_string(),
            "description": format!("Sink `{name}`: JSON-lines files, one per topic (`<topic>.jsonl`), each line `{{topic, key, event_id, headers, payload_json}}`."),
        }),
    }
}

fn channel(
    view: &DestinationView<'_>,
    server_id: &str,
    types: &[String],
    other: bool,
    at: &str,
) -> Result<Value, AsyncApiError> {
    let topic =
        Template::parse(&view.destination.topic).map_err(|source| AsyncApiError::Template {
            path: format!("{at}.topic"),
            source,
        })?;
    let (address, parameters) = address(&topic, view.config, types, other);
    let mut messages = Map::new();
    for t in types {
        messages.insert(identifier(t), message_for(view, Some(t)));
    }
    if other {
        messages.insert("other".into(), message_for(view, None));
    }
    let what = address_kind(view.sink);
    let mut ch = json!({
        "address": address,
        "title": format!("{} → {}", view.route.name, view.destination.sink),
        "description": format!(
            "Route `{}` (match {}) → sink `{}`. The address is the {what}, rendered per event from `{}`.",
            view.route.name,
            view.route.matches.iter().map(|m| format!("`{m}`")).collect::<Vec<_>>().join(", "),
            view.destination.sink,
            view.destination.topic,
        ),
        "servers": [{ "$ref": format!("#/servers/{server_id}") }],
        "messages": messages,
    });
    if !parameters.is_empty() {
        ch["parameters"] = Value::Object(parameters);
    }
    if let Some(b) = channel_bindings(view.sink, &topic) {
        ch["bindings"] = b;
    }
    Ok(ch)
}

/// What a channel address is on this sink.
fn address_kind(sink: &SinkConfig) -> &'static str {
    match sink {
        SinkConfig::Kafka(_) => "Kafka topic",
        SinkConfig::Rabbitmq(_) => "AMQP routing key",
        SinkConfig::Nats(_) => "NATS subject",
        SinkConfig::File(_) => "file name (without `.jsonl`)",
    }
}

/// The channel address (pointers renamed to parameter names) and its parameters.
fn address(
    topic: &Template,
    cfg: &Config,
    types: &[String],
    other: bool,
) -> (String, Map<String, Value>) {
    let mut address = String::new();
    let mut params = Map::new();
    let values = |f: fn(&str) -> &str| -> Vec<String> {
        let set: BTreeSet<String> = types.iter().map(|t| f(t).to_owned()).collect();
        set.into_iter().collect()
    };
    fn entity(t: &str) -> &str {
        t.split_once('.').map_or(t, |(e, _)| e)
    }
    fn action(t: &str) -> &str {
        t.split_once('.').map_or("", |(_, a)| a)
    }
    for part in topic.parts() {
        let (name, param) = match part {
            TemplatePart::Literal(l) => {
                address.push_str(l);
                continue;
            }
            TemplatePart::Entity => (
                "entity".to_owned(),
                listed(
                    "The entity part of the event type (`order` of `order.update`).",
                    values(entity),
                    other,
                    None,
                ),
            ),
            TemplatePart::Action => (
                "action".to_owned(),
                listed(
                    "The action part of the event type (`update` of `order.update`).",
                    values(action),
                    other,
                    None,
                ),
            ),
            TemplatePart::EventType => (
                "event_type".to_owned(),
                listed(
                    "The event type.",
                    values(|t| t),
                    other,
                    Some("$message.header#/fondo-event-type"),
                ),
            ),
            TemplatePart::ClientId => ("client_id".to_owned(), client_id_parameter(cfg)),
            TemplatePart::Pointer(ptr) => (
                pointer_parameter(ptr),
                json!({
                    "description": format!("The value at JSON pointer `{ptr}` of the body."),
                    "location": format!("$message.payload#{ptr}"),
                }),
            ),
        };
        address.push('{');
        address.push_str(&name);
        address.push('}');
        params.entry(name).or_insert(param);
    }
    (address, params)
}

fn client_id_parameter(cfg: &Config) -> Value {
    let mut p = json!({
        "description": "The Fondo client id: the stream's, or the body's `clientId` for a webhook.",
        "location": "$message.header#/fondo-client-id",
    });
    if let Some(w) = cfg
        .sources
        .websocket
        .as_ref()
        .filter(|w| !w.client_ids.is_empty())
    {
        p["examples"] = json!(w.client_ids);
    }
    p
}

/// A parameter whose values are the routed types' (an `enum` when the route can match no other).
fn listed(description: &str, values: Vec<String>, other: bool, location: Option<&str>) -> Value {
    let mut p = json!({ "description": description });
    if !values.is_empty() {
        p[if other { "examples" } else { "enum" }] = json!(values);
    }
    if let Some(l) = location {
        p["location"] = json!(l);
    }
    p
}

/// `/current/ref` → `current_ref`.
fn pointer_parameter(pointer: &str) -> String {
    identifier(pointer.trim_start_matches('/').replace('/', "_").as_str())
}

fn channel_bindings(sink: &SinkConfig, topic: &Template) -> Option<Value> {
    match sink {
        SinkConfig::Kafka(k) => {
            let mut b = json!({ "bindingVersion": "0.5.0" });
            let literal: Option<String> = topic
                .parts()
                .map(|p| match p {
                    TemplatePart::Literal(l) => Some(l),
                    _ => None,
                })
                .collect();
            if let Some(t) =
                literal.and_then(|name| k.create_topics.iter().find(|t| t.name == name))
            {
                if let Some(n) = t.partitions {
                    b["partitions"] = json!(n);
                }
                if let Some(n) = t.replication {
                    b["replicas"] = json!(n);
                }
            }
            Some(json!({ "kafka": b }))
        }
        SinkConfig::Rabbitmq(r) => {
            let (_, _, path) = split_url(&r.url);
            let mut exchange = json!({ "name": r.exchange, "vhost": vhost(path) });
            if r.exchange.is_empty() {
                exchange["type"] = json!("default");
            } else if let Some(d) = r.declare.as_ref().and_then(|d| d.exchange.as_ref()) {
                exchange["type"] = serde_json::to_value(d.kind).unwrap_or(Value::Null);
                exchange["durable"] = json!(d.durable);
            }
            Some(
                json!({ "amqp": { "is": "routingKey", "exchange": exchange, "bindingVersion": "0.3.0" } }),
            )
        }
        SinkConfig::Nats(_) | SinkConfig::File(_) => None,
    }
}

/// The vhost of an AMQP URL's path: percent-decoded, `/` when there is none.
fn vhost(path: &str) -> String {
    let p = path.strip_prefix('/').unwrap_or(path);
    let p = p.split(['?', '#']).next().unwrap_or_default();
    if p.is_empty() {
        return "/".to_owned();
    }
    let bytes = p.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok());
        match (bytes[i], hex.and_then(|h| u8::from_str_radix(h, 16).ok())) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn operation(view: &DestinationView<'_>, channel_id: &str, messages: Vec<Value>) -> Value {
    let mut op = json!({
        "action": "send",
        "channel": { "$ref": format!("#/channels/{channel_id}") },
        "title": format!("Publish route `{}` to sink `{}`", view.route.name, view.destination.sink),
        "summary": "Each event the route matches, once every earlier event with the same key was confirmed (at least once, in order per key).",
        "messages": messages,
    });
    if let SinkConfig::Rabbitmq(_) = view.sink {
        op["bindings"] =
            json!({ "amqp": { "deliveryMode": 2, "mandatory": true, "bindingVersion": "0.3.0" } });
    }
    op
}

/// The payload schemas of the event types described, and the object schemas they refer to.
fn component_schemas(described: &BTreeSet<String>, opts: SchemaOptions) -> BTreeMap<String, Value> {
    let mut out = BTreeMap::new();
    for t in described {
        if t == dead_letter::SCHEMA {
            out.insert(t.clone(), dead_letter::schema());
            continue;
        }
        if t == schema::OTHER_EVENT_SCHEMA {
            out.insert(t.clone(), schema::other_event(opts));
            continue;
        }
        out.insert(t.clone(), schema::event_schema(t, opts));
        if let Some(entity) = schema::referenced_entity(t)
            && let Some(s) = schema::object_schema(entity)
        {
            out.insert(entity.to_owned(), s);
        }
    }
    out
}

#[cfg(test)]
mod tests;
