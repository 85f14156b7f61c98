//! Event parsing: the bytes of a WebSocket frame or webhook body through `Event::parse`, the one
//! entry point both sources use, with the contexts they use; dead-lettering what does not parse.
//!
//! Properties checked beyond "no panic, no hang, no unbounded allocation":
//! - an event's type is valid and splits back into entity and action;
//! - the content-hash event id is stable: re-parsing the canonical JSON of a parsed body yields
//!   the same canonical JSON and the same id (so the same event, however formatted, dedupes);
//! - with an id hint the id is the hint; with a type hint only a body without `eventType` uses it;
//! - a body that does not parse is kept byte for byte by its dead letter.
#![no_main]

use bytes::Bytes;
use fondo_bridge::dlq::DeadLetter;
use fondo_bridge::event::{
    Event, ParseContext, ParseOptions, SourceKind, TraceContext, canonical_json, content_key,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let raw = Bytes::copy_from_slice(data);
    let opts = ParseOptions {
        max_bytes: 1024 * 1024,
        id_pointer: None,
        ..ParseOptions::default()
    };
    // As the WebSocket source parses: a client id, nothing else.
    let ws = ParseContext {
        client_id: Some("c1"),
        ..Default::default()
    };
    match Event::parse(raw.clone(), &opts, &ws) {
        Ok(e) => check_event(&e, data),
        Err(err) => {
            // What the sources do with it: a dead letter that keeps the raw bytes.
            let dl = DeadLetter::unparseable(
                data,
                "fuzz".into(),
                Some("c1"),
                SourceKind::WebSocket,
                std::time::SystemTime::UNIX_EPOCH,
                &TraceContext::default(),
                format!("{} ({err})", err.kind()),
            );
            assert_eq!(dl.body_bytes(), data, "dead letter must keep the raw bytes");
            let line = serde_json::to_string(&dl).expect("dead letter serialises");
            let back: DeadLetter = serde_json::from_str(&line).expect("dead letter reads back");
            assert_eq!(back.body_bytes(), data);
        }
    }
    // As the webhook source parses with a type header and an id header configured.
    let wh = ParseContext {
        client_id: None,
        type_hint: Some("account.update"),
        id_hint: Some("msg_1"),
    };
    if let Ok(e) = Event::parse(raw.clone(), &opts, &wh) {
        assert_eq!(&*e.event_id, "msg_1");
        let body_type = e.body().get("eventType").and_then(|v| v.as_str());
        assert_eq!(e.event_type.as_str(), body_type.unwrap_or("account.update"));
        check_event(&e, data);
    }
    // With an id pointer.
    let ptr = ParseOptions {
        max_bytes: 1024 * 1024,
        id_pointer: Some("/current/id".into()),
        ..ParseOptions::default()
    };
    if let Ok(e) = Event::parse(raw, &ptr, &ParseContext::default()) {
        check_event(&e, data);
    }
});

fn check_event(e: &Event, data: &[u8]) {
    assert_eq!(e.raw.as_ref(), data, "the original bytes are kept");
    assert!(!e.event_id.is_empty());
    let t = e.event_type.as_str();
    assert!(!t.is_empty() && t.len() <= 128);
    assert!(!t.chars().any(|c| c.is_control() || c.is_whitespace()));
    match t.find('.') {
        Some(i) => {
            assert_eq!(e.event_type.entity(), &t[..i]);
            assert_eq!(e.event_type.action(), &t[i + 1..]);
        }
        None => {
            assert_eq!(e.event_type.entity(), t);
            assert_eq!(e.event_type.action(), "");
        }
    }
    assert!(e.body().is_object());
    let _ = e.object_ref();
    let _ = (e.current(), e.previous());
    // Canonical JSON is a fixed point, and so is the content id.
    let canon = canonical_json(e.body());
    let again: serde_json::Value =
        serde_json::from_slice(&canon).expect("canonical JSON parses again");
    assert_eq!(
        canonical_json(&again),
        canon,
        "canonical JSON is not a fixed point"
    );
    assert_eq!(content_key(t, &again), content_key(t, e.body()));
    let node = fondo_bridge::event::Node::parse(data).expect("parsed once already");
    assert_eq!(
        fondo_bridge::event::node_content_key(t, &node, data.len()),
        content_key(t, e.body()),
        "Node and Value ids differ"
    );
}
