//! The event model: one Fondo event, parsed once, with its original bytes kept.
//!
//! Parsing never rejects an event for an *unknown* type (new Fondo types are kept and routed like any
//! other); it rejects only what cannot be an event at all: bytes that are not JSON, a body that is not
//! an object, a body without a determinable type, or a `current`/`previous` that is not an object.

mod ack;
mod id;
mod node;

use std::fmt;
use std::sync::{Arc, OnceLock};
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use serde_json::Value;

pub use ack::{AckHandle, AckReceiver, AckStatus};
pub use id::{
    bytes_content_key, canonical_json, content_key, message_id, mint_occurrence_id,
    node_content_key,
};
pub use node::Node;

/// The entities of Fondo's event types (the part before the dot), heartbeat aside.
pub const ENTITIES: &[&str] = &[
    "account",
    "client",
    "cashTransaction",
    "fundTransaction",
    "order",
    "journey",
    "instrument",
];

/// Every event type the Fondo Partner API reference lists.
pub const KNOWN_EVENT_TYPES: &[&str] = &[
    "heartbeat",
    "account.create",
    "account.update",
    "account.delete",
    "client.update",
    "client.delete",
    "cashTransaction.create",
    "cashTransaction.update",
    "cashTransaction.delete",
    "fundTransaction.create",
    "fundTransaction.update",
    "fundTransaction.delete",
    "order.create",
    "order.update",
    "order.delete",
    "instrument.reloaded",
    "journey.update",
    "journey.delete",
];

/// A longer occurrence id is replaced by a hash of it (a spool record holds 255 bytes).
const MAX_ID_LEN: usize = 128;

/// `id`, or `h:` and its XXH3-128 when longer than [`MAX_ID_LEN`]: still one id per occurrence,
/// short enough for a spool record, an AMQP short string and a header.
fn bounded_id(id: &str) -> Arc<str> {
    if id.len() <= MAX_ID_LEN {
        Arc::from(id)
    } else {
        Arc::from(format!(
            "h:{:032x}",
            xxhash_rust::xxh3::xxh3_128(id.as_bytes())
        ))
    }
}

/// The longest event type we accept; anything longer is not a Fondo event type.
const MAX_EVENT_TYPE_LEN: usize = 128;

/// An event type such as `order.update`, split into entity (`order`) and action (`update`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EventType {
    full: Arc<str>,
    dot: Option<usize>,
}

impl EventType {
    /// Validates and splits an event type. Unknown types are accepted; only syntactically impossible
    /// ones (empty, too long, control characters or whitespace) are refused.
    pub fn parse(s: &str) -> Result<Self, ParseError> {
        if s.is_empty() {
            return Err(ParseError::InvalidEventType("empty".into()));
        }
        if s.len() > MAX_EVENT_TYPE_LEN {
            return Err(ParseError::InvalidEventType(format!(
                "longer than {MAX_EVENT_TYPE_LEN} bytes"
            )));
        }
        if s.chars().any(|c| c.is_control() || c.is_whitespace()) {
            return Err(ParseError::InvalidEventType(
                "contains whitespace or control characters".into(),
            ));
        }
        Ok(Self {
            full: Arc::from(s),
            dot: s.find('.'),
        })
    }

    pub fn as_str(&self) -> &str {
        &self.full
    }

    /// `order` for `order.update`; the whole type when it has no dot (`heartbeat`).
    pub fn entity(&self) -> &str {
        match self.dot {
            Some(i) => &self.full[..i],
            None => &self.full,
        }
    }

    /// `update` for `order.update`; empty when the type has no dot.
    pub fn action(&self) -> &str {
        match self.dot {
            Some(i) => &self.full[i + 1..],
            None => "",
        }
    }

    pub fn is_heartbeat(&self) -> bool {
        &*self.full == "heartbeat"
    }

    pub fn is_known(&self) -> bool {
        KNOWN_EVENT_TYPES.contains(&self.as_str())
    }
}

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.full)
    }
}

/// Why bytes could not become an [`Event`]. The message never contains payload content.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum ParseError {
    #[error("body of {size} bytes exceeds the limit of {limit} bytes")]
    TooLarge { size: usize, limit: usize },
    #[error("body is not valid JSON: {0}")]
    Malformed(String),
    #[error("body is JSON but not an object")]
    NotAnObject,
    #[error("no event type: the body has no string `eventType` and no type header was given")]
    MissingEventType,
    #[error("invalid event type: {0}")]
    InvalidEventType(String),
    #[error("`{field}` must be a JSON object or null")]
    FieldNotObject { field: &'static str },
    #[error("event id pointer {pointer} does not point at a string or number")]
    BadEventId { pointer: String },
}

impl ParseError {
    /// A short stable label for metrics and dead-letter reasons.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::TooLarge { .. } => "too_large",
            Self::Malformed(_) => "malformed_json",
            Self::NotAnObject => "not_an_object",
            Self::MissingEventType => "missing_event_type",
            Self::InvalidEventType(_) => "invalid_event_type",
            Self::FieldNotObject { .. } => "field_not_object",
            Self::BadEventId { .. } => "bad_event_id",
        }
    }
}

/// How events are parsed: limits and where the id and type come from.
#[derive(Debug, Clone)]
pub struct ParseOptions {
    pub max_bytes: usize,
    /// JSON pointer to an occurrence id Fondo provides (e.g. `/eventId`); absent or missing: a
    /// new occurrence id is minted.
    pub id_pointer: Option<String>,
    /// What [`Event::content_key`] hashes.
    pub content_key: ContentKey,
}

impl Default for ParseOptions {
    fn default() -> Self {
        Self {
            max_bytes: 1024 * 1024,
            id_pointer: None,
            content_key: ContentKey::Canonical,
        }
    }
}

/// What an event's content key is a hash of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContentKey {
    /// The event type and the canonical body (keys sorted, no whitespace): equal for the stream's
    /// and the webhook's copy of one change however each is formatted. Needed to pair the two
    /// sources.
    Canonical,
    /// The event type and the body's bytes as received: equal for a webhook delivery and its
    /// retries (the same bytes, signed again), which is all a single source compares. Saves
    /// writing the canonical form of every body.
    Bytes,
}

impl ContentKey {
    /// The key pairing needs when both sources are on, the cheaper one otherwise.
    pub fn for_pairing(pairs_sources: bool) -> Self {
        if pairs_sources {
            Self::Canonical
        } else {
            Self::Bytes
        }
    }
}

/// Facts about an event that the transport knows and the body may not.
#[derive(Debug, Clone, Default)]
pub struct ParseContext<'a> {
    /// The client id of the WebSocket stream the event came from.
    pub client_id: Option<&'a str>,
    /// The event type from a configured header, used when the body has no `eventType`.
    pub type_hint: Option<&'a str>,
    /// The occurrence id this copy is known to carry (a dead letter's id when it is replayed),
    /// preferred over the pointer and over minting.
    pub id_hint: Option<&'a str>,
}

/// One Fondo event.
#[derive(Debug, Clone)]
pub struct Event {
    pub event_type: EventType,
    pub client_id: Option<Arc<str>>,
    /// The occurrence id (see [`id`]): minted at parse unless the transport or the body gave one;
    /// the dispatcher's identity step may replace it with the id of the occurrence this copy
    /// pairs with or retries.
    pub event_id: Arc<str>,
    /// Where `event_id` came from.
    pub id_origin: IdOrigin,
    /// Hash of the event type and the canonical body: copies with equal keys *could* be one
    /// occurrence (see [`id`]); never an identity on its own.
    pub content_key: u128,
    /// Published after a later change of its object had been published (both-sources mode: a
    /// change the stream lost, carried by its webhook). Set by the identity step.
    pub late: bool,
    /// Set by the identity step with a shared store: this process publishes the occurrence and
    /// tells the other replicas when it is finished.
    pub done_mark: Option<DoneMark>,
    /// The original bytes, published verbatim unless a route transforms them.
    pub raw: Bytes,
    /// `ref` or `id` of `current`, else of `previous` (the default ordering key).
    object_ref: Option<Arc<str>>,
    /// The parsed body as a `Value`, built on first use (see [`Event::body`]).
    body: OnceLock<Value>,
}

/// What the owner of an occurrence marks when it is finished (see `dispatch::redis_store`).
#[derive(Debug, Clone)]
pub struct DoneMark {
    /// The occurrence's content key (the delivery's entry names it).
    pub content_key: u128,
    /// The webhook delivery it came with, whose entry says "done" for its retries.
    pub delivery: Option<Arc<str>>,
}

impl Event {
    /// Parses a WebSocket frame or webhook body once.
    ///
    /// The body is read through a borrowed [`Node`] tree (no `Value`): type, `current`/`previous`
    /// shape, client id, object ref and event id all come from it, and it is dropped before this
    /// returns. Routes that look inside the body get a `Value` lazily from [`Event::body`].
    pub fn parse(
        raw: Bytes,
        opts: &ParseOptions,
        ctx: &ParseContext<'_>,
    ) -> Result<Self, ParseError> {
        Self::parse_from(raw, None, opts, ctx)
    }

    /// [`Event::parse`] of text already known to be UTF-8 (a WebSocket text frame, which the
    /// WebSocket library validated), copied into the event's own bytes. The copy lets the
    /// caller's buffer go: a frame that stayed referenced would keep the library from reusing its
    /// read buffer, so it would read one frame per system call.
    pub fn parse_text(
        text: &str,
        opts: &ParseOptions,
        ctx: &ParseContext<'_>,
    ) -> Result<Self, ParseError> {
        Self::parse_from(
            Bytes::copy_from_slice(text.as_bytes()),
            Some(text),
            opts,
            ctx,
        )
    }

    /// `text`, when given, holds the same bytes as `raw`, known to be UTF-8.
    fn parse_from(
        raw: Bytes,
        text: Option<&str>,
        opts: &ParseOptions,
        ctx: &ParseContext<'_>,
    ) -> Result<Self, ParseError> {
        if raw.len() > opts.max_bytes {
            return Err(ParseError::TooLarge {
                size: raw.len(),
                limit: opts.max_bytes,
            });
        }
        // serde_json refuses nesting deeper than 128 levels, so hostile depth cannot overflow the stack.
        let parsed = match text {
            Some(t) => Node::parse_str(t),
            None => Node::parse(&raw),
        };
        let body = parsed.map_err(|e| ParseError::Malformed(strip_payload(&e)))?;
        if !body.is_object() {
            return Err(ParseError::NotAnObject);
        }
        let type_str = match body.get("eventType") {
            Some(Node::String(s)) => s.as_ref(),
            Some(_) => {
                return Err(ParseError::InvalidEventType(
                    "`eventType` is not a string".into(),
                ));
            }
            None => ctx.type_hint.ok_or(ParseError::MissingEventType)?,
        };
        let event_type = EventType::parse(type_str)?;
        for field in ["current", "previous"] {
            match body.get(field) {
                None | Some(Node::Null) | Some(Node::Object(_)) => {}
                Some(_) => {
                    return Err(ParseError::FieldNotObject { field });
                }
            }
        }
        let client_id = ctx
            .client_id
            .map(Arc::from)
            .or_else(|| body_client_id(&body).map(Arc::from));
        let minted = || (Arc::from(mint_occurrence_id()), IdOrigin::Minted);
        let (event_id, id_origin): (Arc<str>, IdOrigin) = match (&opts.id_pointer, ctx.id_hint) {
            (_, Some(id)) if !id.is_empty() => (bounded_id(id), IdOrigin::Given),
            (Some(ptr), _) => match body.pointer(ptr) {
                Some(Node::String(s)) if !s.is_empty() => (bounded_id(s), IdOrigin::Body),
                Some(Node::Number(n)) => (Arc::from(n.to_string()), IdOrigin::Body),
                None | Some(Node::Null) => minted(),
                Some(_) => {
                    return Err(ParseError::BadEventId {
                        pointer: ptr.clone(),
                    });
                }
            },
            _ => minted(),
        };
        let content_key = match opts.content_key {
            ContentKey::Canonical => node_content_key(event_type.as_str(), &body, raw.len()),
            ContentKey::Bytes => bytes_content_key(event_type.as_str(), &raw),
        };
        let object_ref = node_object_ref(&body);
        drop(body);
        Ok(Self {
            event_type,
            client_id,
            event_id,
            id_origin,
            content_key,
            late: false,
            done_mark: None,
            raw,
            object_ref,
            body: OnceLock::new(),
        })
    }

    /// The parsed body. Built from [`Event::raw`] on first call and kept. It is built from the
    /// same [`Node`] view that [`Event::parse`] read (not by `serde_json::from_slice::<Value>`,
    /// which gives a key such as `$serde_json::private::RawValue` a private meaning when
    /// serde_json's `raw_value` feature is on), so it is always the object `parse` saw.
    pub fn body(&self) -> &Value {
        self.body.get_or_init(|| {
            Node::parse(&self.raw)
                .ok()
                .and_then(|n| serde_json::to_value(&n).ok())
                .unwrap_or_else(|| Value::Object(Default::default()))
        })
    }

    pub fn current(&self) -> Option<&Value> {
        self.body().get("current").filter(|v| !v.is_null())
    }

    pub fn previous(&self) -> Option<&Value> {
        self.body().get("previous").filter(|v| !v.is_null())
    }

    /// The id of the object the event is about: `ref` or `id` of `current`, else of `previous`.
    pub fn object_ref(&self) -> Option<&str> {
        self.object_ref.as_deref()
    }
}

fn node_object_ref(body: &Node<'_>) -> Option<Arc<str>> {
    let objs = [body.get("current"), body.get("previous")];
    for obj in objs.into_iter().flatten().filter(|o| !o.is_null()) {
        for field in ["ref", "id"] {
            match obj.get(field) {
                Some(Node::String(s)) if !s.is_empty() => return Some(Arc::from(s.as_ref())),
                Some(Node::Number(n)) => return Some(Arc::from(n.to_string())),
                _ => {}
            }
        }
    }
    None
}

fn body_client_id<'b>(body: &'b Node<'_>) -> Option<&'b str> {
    ["/clientId", "/current/clientId", "/previous/clientId"]
        .iter()
        .find_map(|p| body.pointer(p).and_then(Node::as_str))
        .filter(|s| !s.is_empty())
}

/// serde_json's messages name a position and a category, never content; keep just that.
fn strip_payload(e: &serde_json::Error) -> String {
    let what = match e.classify() {
        serde_json::error::Category::Io => "I/O error",
        serde_json::error::Category::Syntax => "syntax error",
        serde_json::error::Category::Data => "data error",
        serde_json::error::Category::Eof => "unexpected end of input",
    };
    let detail = e.to_string();
    if detail.contains("recursion limit") {
        format!(
            "nesting too deep at line {} column {}",
            e.line(),
            e.column()
        )
    } else if detail.contains("invalid unicode") || detail.contains("UTF-8") {
        format!("invalid UTF-8 at line {} column {}", e.line(), e.column())
    } else {
        format!("{what} at line {} column {}", e.line(), e.column())
    }
}

/// Where an event's occurrence id came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdOrigin {
    /// Minted at parse: this copy is a new occurrence unless the identity step pairs it.
    Minted,
    /// Read from the body (`event.id_pointer`): Fondo's own occurrence id.
    Body,
    /// Given by the transport: a webhook delivery id, a spool record's id, a dead letter's id.
    Given,
}

/// Where an event came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SourceKind {
    WebSocket,
    Webhook,
    Replay,
}

impl SourceKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::WebSocket => "websocket",
            Self::Webhook => "webhook",
            Self::Replay => "replay",
        }
    }
}

impl fmt::Display for SourceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A W3C trace context carried from the source into every published message.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TraceContext {
    pub traceparent: Option<String>,
    pub tracestate: Option<String>,
}

/// An event on its way through the bridge, with the handle that acknowledges it to its source.
#[derive(Debug)]
pub struct Envelope {
    pub event: Arc<Event>,
    pub ack: AckHandle,
    pub source: SourceKind,
    pub received_at: Instant,
    pub received_wall: SystemTime,
    pub trace: TraceContext,
}

impl Envelope {
    pub fn new(event: Event, ack: AckHandle, source: SourceKind) -> Self {
        Self {
            event: Arc::new(event),
            ack,
            source,
            received_at: Instant::now(),
            received_wall: SystemTime::now(),
            trace: TraceContext::default(),
        }
    }
}

#[cfg(test)]
mod tests;
