//! Per-event traces: the event span from admission to acknowledgement, one span per publish
//! attempt, and W3C Trace Context in and out of [`TraceContext`].
//!
//! Dispatch opens these spans and hands their context on in the message headers. They keep the
//! target `fondo_bridge::dispatch`, as do the retry and dead-letter spans dispatch opens itself:
//! the log layer leaves spans of that target out (see `PER_EVENT_SPANS`).

use std::sync::atomic::{AtomicU8, Ordering};

use tracing::Span;

use crate::event::{AckStatus, Envelope, TraceContext};
use crate::sinks::{Message, headers};

/// What happened to an event besides its acknowledgement status (recorded as `fondo.outcome`).
#[derive(Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Outcome {
    Plain = 0,
    Dropped = 1,
    Duplicate = 2,
    DeadLettered = 3,
}

/// The span of one event from admission to its final acknowledgement. It ends when the last
/// holder drops it: the acknowledgement waiter and every destination's delivery.
pub(crate) struct EventSpan {
    span: Span,
    outcome: AtomicU8,
}

impl EventSpan {
    /// Opens the event span, continuing an incoming W3C `traceparent` when there is one.
    /// Heartbeats get no span.
    pub(crate) fn start(env: &Envelope) -> Self {
        let span = if env.event.event_type.is_heartbeat() {
            Span::none()
        } else {
            let span = tracing::info_span!(
                target: "fondo_bridge::dispatch",
                "event",
                otel.name = %format_args!("process {}", env.event.event_type),
                otel.kind = "consumer",
                fondo.source = env.source.as_str(),
                fondo.client_id = env.event.client_id.as_deref(),
                fondo.event_type = %env.event.event_type,
                fondo.event_id = %env.event.event_id,
                fondo.outcome = tracing::field::Empty,
            );
            if !span.is_disabled()
                && let Some(parent) = propagation::extract(&env.trace)
            {
                // Fails only when no OpenTelemetry layer is installed: nothing to continue.
                let _ = tracing_opentelemetry::OpenTelemetrySpanExt::set_parent(&span, parent);
            }
            span
        };
        Self {
            span,
            outcome: AtomicU8::new(Outcome::Plain as u8),
        }
    }

    pub(crate) fn span(&self) -> &Span {
        &self.span
    }

    /// Notes something worth reporting in `fondo.outcome`; the most notable wins.
    pub(crate) fn mark(&self, o: Outcome) {
        self.outcome.fetch_max(o as u8, Ordering::AcqRel);
    }

    /// Records the final outcome once the event is acknowledged (or handed back to the source).
    pub(crate) fn finish(&self, status: AckStatus) {
        let outcome = match (status, self.outcome.load(Ordering::Acquire)) {
            (AckStatus::Retry, _) => "retry",
            (AckStatus::Rejected, _) => "rejected",
            (AckStatus::Delivered, 3) => "dead_lettered",
            (AckStatus::Delivered, 2) => "duplicate",
            (AckStatus::Delivered, 1) => "dropped",
            (AckStatus::Delivered, _) => "delivered",
        };
        self.span.record("fondo.outcome", outcome);
    }

    /// The W3C context to hand on: this span's when it is exported, else `incoming` unchanged.
    pub(crate) fn trace_context(&self, incoming: &TraceContext) -> TraceContext {
        propagation::current(&self.span).unwrap_or_else(|| incoming.clone())
    }
}

/// One span per publish attempt, child of the event span, with the OpenTelemetry messaging
/// attributes.
pub(crate) fn publish_span(
    parent: &EventSpan,
    system: &'static str,
    sink: &str,
    route: &str,
    msg: &Message,
    attempt: u32,
) -> Span {
    tracing::info_span!(
        target: "fondo_bridge::dispatch",
        parent: parent.span(),
        "publish",
        otel.name = %format_args!("send {}", msg.topic),
        otel.kind = "producer",
        messaging.system = system,
        messaging.destination.name = %msg.topic,
        "messaging.operation.type" = "send",
        messaging.operation.name = "publish",
        messaging.message.id = %msg.event_id,
        messaging.kafka.message.key = msg.key.as_deref().filter(|_| system == "kafka"),
        fondo.sink = sink,
        fondo.route = route,
        fondo.attempt = attempt,
        otel.status_code = tracing::field::Empty,
        otel.status_description = tracing::field::Empty,
        "error.type" = tracing::field::Empty,
    )
}

/// The message with its `traceparent`/`tracestate` replaced by the publish span's context, so a
/// consumer continues this trace; `None` without trace export, when the headers stay as they are
/// (the incoming context, passed through) and the message is published without a copy.
pub(crate) fn with_trace(span: &Span, msg: &Message) -> Option<Message> {
    let tc = propagation::current(span)?;
    let mut msg = msg.clone();
    msg.headers.retain(|(k, _)| {
        !k.eq_ignore_ascii_case(headers::TRACEPARENT)
            && !k.eq_ignore_ascii_case(headers::TRACESTATE)
    });
    if let Some(tp) = tc.traceparent {
        msg.headers.push((headers::TRACEPARENT.to_owned(), tp));
    }
    if let Some(ts) = tc.tracestate {
        msg.headers.push((headers::TRACESTATE.to_owned(), ts));
    }
    Some(msg)
}

/// W3C Trace Context in and out of [`TraceContext`].
pub(crate) mod propagation {
    use std::collections::HashMap;

    use opentelemetry::propagation::TextMapPropagator as _;
    use opentelemetry::trace::TraceContextExt as _;
    use opentelemetry_sdk::propagation::TraceContextPropagator;
    use tracing_opentelemetry::OpenTelemetrySpanExt as _;

    use crate::event::TraceContext;
    use crate::sinks::headers;

    /// The remote parent an incoming `traceparent` describes; `None` when absent or invalid.
    pub(crate) fn extract(trace: &TraceContext) -> Option<opentelemetry::Context> {
        let tp = trace.traceparent.as_deref()?;
        let mut carrier = HashMap::with_capacity(2);
        carrier.insert(headers::TRACEPARENT.to_owned(), tp.to_owned());
        if let Some(ts) = &trace.tracestate {
            carrier.insert(headers::TRACESTATE.to_owned(), ts.clone());
        }
        let cx = TraceContextPropagator::new().extract(&carrier);
        cx.span().span_context().is_valid().then_some(cx)
    }

    /// The span's own context as W3C headers; `None` when it is not exported (no OpenTelemetry
    /// layer, or the span is disabled).
    pub(crate) fn current(span: &tracing::Span) -> Option<TraceContext> {
        if span.is_disabled() {
            return None;
        }
        let cx = span.context();
        if !cx.span().span_context().is_valid() {
            return None;
        }
        let mut carrier: HashMap<String, String> = HashMap::with_capacity(2);
        TraceContextPropagator::new().inject_context(&cx, &mut carrier);
        Some(TraceContext {
            traceparent: carrier.remove(headers::TRACEPARENT),
            tracestate: carrier
                .remove(headers::TRACESTATE)
                .filter(|s| !s.is_empty()),
        })
    }
}
