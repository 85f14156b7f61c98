//! The routing table: pure and synchronous, compiled once from validated config.
//!
//! `route(&Event)` answers which destinations an event goes to, with topic, key, headers and body
//! rendered. A template that cannot be rendered for an event does not stop the other destinations:
//! it comes back as a [`RenderFailure`] so the dispatcher dead-letters that one destination.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::sync::Arc;

use bytes::Bytes;
use serde_json::Value;

use crate::cloudevents::{self, Mode};
use crate::config::{Config, DestinationConfig, MessageFormat, RouteConfig, Unmatched};
use crate::event::{Event, Node};

/// A piece of a template.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    Entity,
    Action,
    EventType,
    ClientId,
    Pointer(String),
}

/// One piece of a [`Template`], as [`Template::parts`] shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TemplatePart<'a> {
    Literal(&'a str),
    Entity,
    Action,
    EventType,
    ClientId,
    /// A JSON pointer into the body, such as `/current/ref`.
    Pointer(&'a str),
}

/// A compiled `{placeholder}` template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    source: String,
    segments: Vec<Segment>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    #[error(
        "unknown placeholder {{{0}}}: use {{entity}}, {{action}}, {{event_type}}, {{client_id}} or a JSON pointer like {{/current/ref}}"
    )]
    UnknownPlaceholder(String),
    #[error("unclosed `{{` at byte {0}")]
    Unclosed(usize),
    #[error("stray `}}` at byte {0}")]
    StrayClose(usize),
    #[error("template is empty")]
    Empty,
}

impl Template {
    pub fn parse(s: &str) -> Result<Self, TemplateError> {
        if s.is_empty() {
            return Err(TemplateError::Empty);
        }
        let mut segments = Vec::new();
        let mut lit = String::new();
        let mut rest = s;
        let mut offset = 0;
        while let Some(i) = rest.find(['{', '}']) {
            if rest.as_bytes()[i] == b'}' {
                return Err(TemplateError::StrayClose(offset + i));
            }
            lit.push_str(&rest[..i]);
            let after = &rest[i + 1..];
            let end = after.find('}').ok_or(TemplateError::Unclosed(offset + i))?;
            let name = &after[..end];
            let seg = match name {
                "entity" => Segment::Entity,
                "action" => Segment::Action,
                "event_type" => Segment::EventType,
                "client_id" => Segment::ClientId,
                p if p.starts_with('/') => Segment::Pointer(p.to_owned()),
                other => return Err(TemplateError::UnknownPlaceholder(other.to_owned())),
            };
            if !lit.is_empty() {
                segments.push(Segment::Literal(std::mem::take(&mut lit)));
            }
            segments.push(seg);
            let consumed = i + 1 + end + 1;
            offset += consumed;
            rest = &rest[consumed..];
        }
        lit.push_str(rest);
        if !lit.is_empty() {
            segments.push(Segment::Literal(lit));
        }
        Ok(Self {
            source: s.to_owned(),
            segments,
        })
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    /// The template's pieces in order, for describing it (the AsyncAPI document).
    pub fn parts(&self) -> impl Iterator<Item = TemplatePart<'_>> {
        self.segments.iter().map(|s| match s {
            Segment::Literal(l) => TemplatePart::Literal(l),
            Segment::Entity => TemplatePart::Entity,
            Segment::Action => TemplatePart::Action,
            Segment::EventType => TemplatePart::EventType,
            Segment::ClientId => TemplatePart::ClientId,
            Segment::Pointer(p) => TemplatePart::Pointer(p),
        })
    }

    /// Renders for an event, or says which placeholder had no usable value.
    pub fn render(&self, event: &Event) -> Result<String, String> {
        self.render_with(event, &BodyView::new(event))
    }

    /// [`Template::render`] reading JSON pointers through `view`, which parses the body at most
    /// once for all the templates and filters of one event.
    fn render_with(&self, event: &Event, view: &BodyView<'_>) -> Result<String, String> {
        let mut out = String::with_capacity(self.source.len() + 16);
        for seg in &self.segments {
            match seg {
                Segment::Literal(l) => out.push_str(l),
                Segment::Entity => out.push_str(event.event_type.entity()),
                Segment::Action => out.push_str(event.event_type.action()),
                Segment::EventType => out.push_str(event.event_type.as_str()),
                Segment::ClientId => match &event.client_id {
                    Some(c) => out.push_str(c),
                    None => return Err("{client_id}: the event has no client id".into()),
                },
                Segment::Pointer(p) => match view.pointer(p) {
                    Some(Node::String(s)) if !s.is_empty() => out.push_str(s),
                    Some(Node::Number(n)) => {
                        let _ = write!(out, "{n}");
                    }
                    Some(Node::Bool(b)) => {
                        let _ = write!(out, "{b}");
                    }
                    Some(Node::Null) | None => {
                        return Err(format!("{{{p}}}: no value at this pointer"));
                    }
                    Some(_) => {
                        return Err(format!(
                            "{{{p}}}: the value is an object, array or empty string"
                        ));
                    }
                },
            }
        }
        Ok(out)
    }
}

/// An event type glob ([`wildcard_match`]: `*` any run, `?` one character); a pattern other than
/// `heartbeat` itself never matches `heartbeat`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Glob {
    pattern: String,
}

impl Glob {
    pub fn parse(s: &str) -> Result<Self, String> {
        if s.is_empty() {
            return Err("empty pattern".into());
        }
        if s.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err("pattern contains whitespace".into());
        }
        Ok(Self {
            pattern: s.to_owned(),
        })
    }

    pub fn matches(&self, event_type: &str) -> bool {
        if event_type == "heartbeat" && self.pattern != "heartbeat" {
            return false;
        }
        wildcard_match(&self.pattern, event_type)
    }
}

/// Whether `text` matches `pattern`, where `*` matches any run of characters (none included) and
/// `?` exactly one. The one wildcard rule of the bridge: route `match` globs and the `dlq` filters.
/// Iterative with single-star backtracking: linear in practice.
pub fn wildcard_match(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let s: Vec<char> = text.chars().collect();
    let (mut pi, mut si) = (0, 0);
    let (mut star, mut mark) = (None, 0);
    while si < s.len() {
        if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = si;
            pi += 1;
        } else if pi < p.len() && (p[pi] == '?' || p[pi] == s[si]) {
            pi += 1;
            si += 1;
        } else if let Some(st) = star {
            pi = st + 1;
            mark += 1;
            si = mark;
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == '*' {
        pi += 1;
    }
    pi == p.len()
}

#[derive(Debug)]
struct CompiledDestination {
    sink: Arc<str>,
    topic: Template,
    key: Option<Template>,
    headers: Vec<(String, Template)>,
    cloudevents: Option<CompiledCloudEvents>,
}

/// A CloudEvents destination's mode and its `source` and `type` templates.
#[derive(Debug)]
struct CompiledCloudEvents {
    mode: Mode,
    /// `None`: the default, which depends on whether the event has a client id.
    source: Option<Template>,
    event_type: Template,
}

impl CompiledCloudEvents {
    fn render(&self, event: &Event, view: &BodyView<'_>) -> Result<cloudevents::Rendered, String> {
        let source = match (&self.source, &event.client_id) {
            (Some(t), _) => t
                .render_with(event, view)
                .map_err(|e| format!("cloudevents.source: {e}"))?,
            (None, Some(c)) => format!("fondo:client/{c}"),
            (None, None) => cloudevents::SOURCE_WITHOUT_CLIENT.to_owned(),
        };
        let event_type = self
            .event_type
            .render_with(event, view)
            .map_err(|e| format!("cloudevents.type: {e}"))?;
        Ok(cloudevents::Rendered {
            mode: self.mode,
            source,
            event_type,
        })
    }
}

#[derive(Debug)]
struct CompiledRoute {
    name: Arc<str>,
    globs: Vec<Glob>,
    filter: Vec<(String, Value)>,
    redact: Vec<String>,
    to: Vec<CompiledDestination>,
}

impl CompiledRoute {
    fn matches_type(&self, t: &str) -> bool {
        self.globs.iter().any(|g| g.matches(t))
    }

    fn passes_filter(&self, view: &BodyView<'_>) -> bool {
        self.filter
            .iter()
            .all(|(ptr, want)| view.pointer(ptr).is_some_and(|n| node_eq_value(n, want)))
    }
}

/// The body of one event as a borrowed [`Node`], parsed on the first JSON-pointer lookup and
/// shared by every filter and template of that event (no `serde_json::Value` is built; redaction,
/// which edits the body, uses [`Event::body`]).
struct BodyView<'a> {
    raw: &'a [u8],
    node: std::cell::OnceCell<Option<Node<'a>>>,
}

impl<'a> BodyView<'a> {
    fn new(event: &'a Event) -> Self {
        Self {
            raw: &event.raw,
            node: std::cell::OnceCell::new(),
        }
    }

    fn pointer(&self, p: &str) -> Option<&Node<'a>> {
        // The raw bytes parsed as a Node once already (in `Event::parse`), so this cannot fail.
        self.node
            .get_or_init(|| Node::parse(self.raw).ok())
            .as_ref()
            .and_then(|n| n.pointer(p))
    }
}

/// JSON equality of a body value and a configured filter value, as `Value == Value` decides it.
fn node_eq_value(n: &Node<'_>, v: &Value) -> bool {
    match (n, v) {
        (Node::Null, Value::Null) => true,
        (Node::Bool(a), Value::Bool(b)) => a == b,
        (Node::Number(a), Value::Number(b)) => a == b,
        (Node::String(a), Value::String(b)) => a.as_ref() == b.as_str(),
        (Node::Array(a), Value::Array(b)) => {
            a.len() == b.len() && a.iter().zip(b).all(|(x, y)| node_eq_value(x, y))
        }
        // Both sorted by key bytewise with unique keys, so equal maps line up entry by entry.
        (Node::Object(a), Value::Object(b)) => {
            a.len() == b.len()
                && a.iter()
                    .zip(b)
                    .all(|((ka, va), (kb, vb))| ka.as_ref() == kb.as_str() && node_eq_value(va, vb))
        }
        _ => false,
    }
}

/// A message ready for a sink, before the dispatcher adds the `fondo-*` headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Destination {
    pub route: Arc<str>,
    pub sink: Arc<str>,
    pub topic: String,
    pub key: Option<String>,
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
    /// A CloudEvents destination's mode, `source` and `type`.
    pub cloudevents: Option<cloudevents::Rendered>,
}

/// A destination that could not be rendered for this event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenderFailure {
    pub route: Arc<str>,
    pub sink: Arc<str>,
    pub reason: String,
    /// The body as the route would have published it (redacted when the route redacts): what
    /// its dead letter keeps.
    pub body: Bytes,
}

/// Where one event goes.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Routed {
    pub destinations: Vec<Destination>,
    pub failures: Vec<RenderFailure>,
    /// Routes whose type matched but whose `where` filter excluded the event.
    pub filtered_by: Vec<Arc<str>>,
}

impl Routed {
    /// No route took the event (neither a destination nor a render failure).
    pub fn is_unmatched(&self) -> bool {
        self.destinations.is_empty() && self.failures.is_empty()
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{path}: {message}")]
pub struct CompileError {
    pub path: String,
    pub message: String,
}

/// The compiled routing table. Cheap to clone (the table is shared).
#[derive(Debug, Clone)]
pub struct Router {
    routes: Arc<[CompiledRoute]>,
    /// For every known event type, the indices of the routes whose globs match it: matching costs
    /// one hash look-up however many routes there are.
    by_type: Arc<HashMap<String, Vec<usize>, foldhash::fast::RandomState>>,
    unmatched: Unmatched,
}

impl Router {
    /// Compiles the routes of a config. Collects every problem rather than stopping at the first.
    pub fn compile(cfg: &Config) -> Result<Self, Vec<CompileError>> {
        Self::compile_routes(&cfg.routes, cfg.unmatched, |name| {
            cfg.sinks.contains_key(name)
        })
    }

    pub fn compile_routes(
        routes: &[RouteConfig],
        unmatched: Unmatched,
        sink_exists: impl Fn(&str) -> bool,
    ) -> Result<Self, Vec<CompileError>> {
        let mut errors = Vec::new();
        let mut names = BTreeMap::new();
        let mut err = |path: String, message: String| errors.push(CompileError { path, message });
        let compiled: Vec<CompiledRoute> = routes
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let at = format!("routes[{i}]");
                if r.name.trim().is_empty() {
                    err(format!("{at}.name"), "must not be empty".into());
                } else if let Some(prev) = names.insert(r.name.clone(), i) {
                    err(
                        format!("{at}.name"),
                        format!("duplicate route name {:?} (also routes[{prev}])", r.name),
                    );
                }
                compile_route(r, &at, &sink_exists, &mut err)
            })
            .collect();
        if !errors.is_empty() {
            return Err(errors);
        }
        let by_type = index_by_type(&compiled);
        Ok(Self {
            routes: compiled.into(),
            by_type: Arc::new(by_type),
            unmatched,
        })
    }

    pub fn unmatched_policy(&self) -> Unmatched {
        self.unmatched
    }

    pub fn route_count(&self) -> usize {
        self.routes.len()
    }

    /// The sinks the routes publish to (each once, in route order).
    pub fn sinks(&self) -> Vec<Arc<str>> {
        let mut seen: Vec<Arc<str>> = Vec::new();
        for d in self.routes.iter().flat_map(|r| &r.to) {
            if !seen.contains(&d.sink) {
                seen.push(Arc::clone(&d.sink));
            }
        }
        seen
    }

    /// Where an event goes. Pure: no I/O, no clock.
    pub fn route(&self, event: &Event) -> Routed {
        let t = event.event_type.as_str();
        let mut out = Routed::default();
        let view = BodyView::new(event);
        let mut visit = |r: &CompiledRoute| {
            if !r.passes_filter(&view) {
                out.filtered_by.push(Arc::clone(&r.name));
                return;
            }
            let body = if r.redact.is_empty() {
                event.raw.clone()
            } else {
                redact(event.body(), &r.redact)
            };
            for d in &r.to {
                match render_destination(d, event, &view) {
                    Ok(rendered) => out.destinations.push(Destination {
                        route: Arc::clone(&r.name),
                        sink: Arc::clone(&d.sink),
                        topic: rendered.topic,
                        key: rendered.key,
                        headers: rendered.headers,
                        body: body.clone(),
                        cloudevents: rendered.cloudevents,
                    }),
                    Err(reason) => out.failures.push(RenderFailure {
                        route: Arc::clone(&r.name),
                        sink: Arc::clone(&d.sink),
                        reason,
                        body: body.clone(),
                    }),
                }
            }
        };
        match self.by_type.get(t) {
            Some(idx) => idx.iter().for_each(|&i| visit(&self.routes[i])),
            None => self
                .routes
                .iter()
                .filter(|r| r.matches_type(t))
                .for_each(&mut visit),
        }
        out
    }
}

/// One route's globs, filter, redactions and destinations; problems go to `err`.
fn compile_route(
    r: &RouteConfig,
    at: &str,
    sink_exists: &impl Fn(&str) -> bool,
    err: &mut impl FnMut(String, String),
) -> CompiledRoute {
    if r.matches.is_empty() {
        err(format!("{at}.match"), "needs at least one pattern".into());
    }
    let mut globs = Vec::new();
    for (j, m) in r.matches.iter().enumerate() {
        match Glob::parse(m) {
            Ok(g) => globs.push(g),
            Err(e) => err(format!("{at}.match[{j}]"), e),
        }
    }
    let mut filter = Vec::new();
    for (ptr, v) in &r.filter {
        if !ptr.starts_with('/') {
            err(
                format!("{at}.where.{ptr:?}"),
                "must be a JSON pointer starting with `/`".into(),
            );
        }
        filter.push((ptr.clone(), v.clone()));
    }
    for (j, ptr) in r.redact.iter().enumerate() {
        if !ptr.starts_with('/') || ptr.len() < 2 {
            err(
                format!("{at}.redact[{j}]"),
                "must be a JSON pointer like /current/owner/ssn".into(),
            );
        }
    }
    if r.to.is_empty() {
        err(format!("{at}.to"), "needs at least one destination".into());
    }
    let to =
        r.to.iter()
            .enumerate()
            .filter_map(|(j, d)| compile_destination(d, &format!("{at}.to[{j}]"), sink_exists, err))
            .collect();
    CompiledRoute {
        name: Arc::from(r.name.as_str()),
        globs,
        filter,
        redact: r.redact.clone(),
        to,
    }
}

/// For every known event type, the indices of the routes whose globs match it.
fn index_by_type(
    routes: &[CompiledRoute],
) -> HashMap<String, Vec<usize>, foldhash::fast::RandomState> {
    crate::event::KNOWN_EVENT_TYPES
        .iter()
        .map(|t| {
            let idx = routes
                .iter()
                .enumerate()
                .filter(|(_, r)| r.matches_type(t))
                .map(|(i, _)| i)
                .collect();
            ((*t).to_owned(), idx)
        })
        .collect()
}

fn compile_destination(
    d: &DestinationConfig,
    at: &str,
    sink_exists: &impl Fn(&str) -> bool,
    err: &mut impl FnMut(String, String),
) -> Option<CompiledDestination> {
    let mut ok = true;
    if !sink_exists(&d.sink) {
        err(
            format!("{at}.sink"),
            format!("no sink named {:?} in `sinks`", d.sink),
        );
        ok = false;
    }
    let topic = Template::parse(&d.topic)
        .map_err(|e| {
            err(format!("{at}.topic"), e.to_string());
            ok = false;
        })
        .ok();
    let key = match &d.key {
        None => None,
        Some(k) => match Template::parse(k) {
            Ok(t) => Some(t),
            Err(e) => {
                err(format!("{at}.key"), e.to_string());
                ok = false;
                None
            }
        },
    };
    let mut headers = Vec::new();
    for (name, v) in &d.headers {
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_graphic() && b != b':') {
            err(
                format!("{at}.headers.{name:?}"),
                "invalid header name".into(),
            );
            ok = false;
        }
        match Template::parse(v) {
            Ok(t) => headers.push((name.clone(), t)),
            Err(e) => {
                err(format!("{at}.headers.{name}"), e.to_string());
                ok = false;
            }
        }
    }
    let cloudevents = compile_cloudevents(d, at, err)
        .map_err(|()| ok = false)
        .ok();
    match (ok, topic, cloudevents) {
        (true, Some(topic), Some(cloudevents)) => Some(CompiledDestination {
            sink: Arc::from(d.sink.as_str()),
            topic,
            key,
            headers,
            cloudevents,
        }),
        _ => None,
    }
}

/// A destination's `format` and `cloudevents` templates; `Err` after reporting a problem.
fn compile_cloudevents(
    d: &DestinationConfig,
    at: &str,
    err: &mut impl FnMut(String, String),
) -> Result<Option<CompiledCloudEvents>, ()> {
    let mode = match d.format {
        MessageFormat::Raw => {
            if d.cloudevents.is_some() {
                err(
                    format!("{at}.cloudevents"),
                    "applies only with `format: cloudevents-binary` or `cloudevents-structured`"
                        .into(),
                );
                return Err(());
            }
            return Ok(None);
        }
        MessageFormat::CloudeventsBinary => Mode::Binary,
        MessageFormat::CloudeventsStructured => Mode::Structured,
    };
    let templates = d.cloudevents.clone().unwrap_or_default();
    let mut parse = |name: &str, t: &str| {
        Template::parse(t).map_err(|e| err(format!("{at}.cloudevents.{name}"), e.to_string()))
    };
    let source = templates.source.map(|s| parse("source", &s)).transpose();
    let event_type = parse(
        "type",
        templates
            .event_type
            .as_deref()
            .unwrap_or(cloudevents::DEFAULT_TYPE_TEMPLATE),
    );
    Ok(Some(CompiledCloudEvents {
        mode,
        source: source?,
        event_type: event_type?,
    }))
}

/// One destination rendered for one event.
struct Rendered {
    topic: String,
    key: Option<String>,
    headers: Vec<(String, String)>,
    cloudevents: Option<cloudevents::Rendered>,
}

fn render_destination(
    d: &CompiledDestination,
    event: &Event,
    view: &BodyView<'_>,
) -> Result<Rendered, String> {
    let topic = d
        .topic
        .render_with(event, view)
        .map_err(|e| format!("topic: {e}"))?;
    let key = match &d.key {
        Some(k) => Some(
            k.render_with(event, view)
                .map_err(|e| format!("key: {e}"))?,
        ),
        None => event.object_ref().map(str::to_owned),
    };
    let mut headers = Vec::with_capacity(d.headers.len());
    for (name, t) in &d.headers {
        headers.push((
            name.clone(),
            t.render_with(event, view)
                .map_err(|e| format!("header {name}: {e}"))?,
        ));
    }
    let cloudevents = match &d.cloudevents {
        Some(ce) => Some(ce.render(event, view)?),
        None => None,
    };
    Ok(Rendered {
        topic,
        key,
        headers,
        cloudevents,
    })
}

/// The body with the given JSON pointers removed, re-serialised.
fn redact(body: &Value, pointers: &[String]) -> Bytes {
    let mut v = body.clone();
    for p in pointers {
        remove_pointer(&mut v, p);
    }
    Bytes::from(serde_json::to_vec(&v).unwrap_or_default())
}

fn remove_pointer(v: &mut Value, pointer: &str) {
    let Some((parent, last)) = pointer.rsplit_once('/') else {
        return;
    };
    let last = last.replace("~1", "/").replace("~0", "~");
    let target = if parent.is_empty() {
        Some(v)
    } else {
        v.pointer_mut(parent)
    };
    match target {
        Some(Value::Object(m)) => {
            m.remove(&last);
        }
        Some(Value::Array(a)) => {
            if let Ok(i) = last.parse::<usize>()
                && i < a.len()
            {
                a.remove(i);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests;
