//! Template rendering and routing: fuzzed topic/key/header templates, `where` filters and
//! redaction pointers compiled into a `Router` and applied to a fuzzed event.
//!
//! Input: one line of tab-separated fields (`topic \t key \t header \t redact \t glob`), a newline,
//! then the event body (seeds: the Fondo fixtures behind such a line).
//!
//! Properties beyond "no panic": a template without braces renders to itself; a template that
//! parses renders or says why not; routing yields a destination or a render failure for every
//! destination of every matching route; redacted bodies are JSON; the file sink's file name for
//! any rendered topic stays inside its directory.
#![no_main]

use std::collections::BTreeMap;
use std::path::Path;

use bytes::Bytes;
use fondo_bridge::config::{
    CloudEventsConfig, DestinationConfig, MessageFormat, RouteConfig, Unmatched,
};
use fondo_bridge::event::{Event, ParseContext, ParseOptions};
use fondo_bridge::router::{Router, Template};
use fondo_bridge::sinks::file::topic_file;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (head, body) = match data.iter().position(|b| *b == b'\n') {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &b"{}"[..]),
    };
    let head = String::from_utf8_lossy(head);
    let mut f = head.split('\t');
    let topic = f.next().unwrap_or_default().to_owned();
    let key = f.next().filter(|s| !s.is_empty()).map(str::to_owned);
    let header = f.next().filter(|s| !s.is_empty()).map(str::to_owned);
    let redact = f.next().filter(|s| !s.is_empty()).map(str::to_owned);
    let glob = f.next().filter(|s| !s.is_empty()).unwrap_or("*").to_owned();

    let ctx = ParseContext {
        client_id: Some("c1"),
        ..Default::default()
    };
    let Ok(event) = Event::parse(Bytes::copy_from_slice(body), &ParseOptions::default(), &ctx)
    else {
        return;
    };

    // Templates on their own.
    for src in [Some(&topic), key.as_ref(), header.as_ref()]
        .into_iter()
        .flatten()
    {
        if let Ok(t) = Template::parse(src) {
            assert_eq!(t.source(), src);
            match t.render(&event) {
                Ok(s) => {
                    if !src.contains(['{', '}']) {
                        assert_eq!(&s, src, "a literal renders to itself");
                    }
                    let dir = Path::new("/out");
                    let file = topic_file(dir, &s);
                    assert_eq!(
                        file.parent(),
                        Some(dir),
                        "topic {s:?} escapes the directory"
                    );
                    let name = file
                        .file_name()
                        .and_then(|n| n.to_str())
                        .unwrap_or_default();
                    assert!(!name.starts_with('.'), "hidden file for topic {s:?}");
                }
                Err(why) => assert!(!why.is_empty()),
            }
        }
    }

    // The same through a compiled routing table, as the dispatcher uses it.
    let mut headers = BTreeMap::new();
    if let Some(h) = &header {
        headers.insert("x-fuzz".to_owned(), h.clone());
    }
    let mut filter = BTreeMap::new();
    if let Some(r) = &redact {
        // Reuse the pointer as a `where` filter on a second route: exercises pointer look-ups.
        filter.insert(r.clone(), serde_json::Value::Bool(true));
    }
    let dest = DestinationConfig {
        sink: "s".into(),
        topic: topic.clone(),
        key: key.clone(),
        headers,
        ..Default::default()
    };
    // The same templates as a CloudEvent's `type` and `source`, in structured mode.
    let cloudevent = DestinationConfig {
        format: MessageFormat::CloudeventsStructured,
        cloudevents: Some(CloudEventsConfig {
            source: key.clone(),
            event_type: Some(topic.clone()),
        }),
        ..dest.clone()
    };
    let routes = vec![
        RouteConfig {
            name: "fuzz".into(),
            matches: vec![glob.clone()],
            filter: BTreeMap::new(),
            redact: redact.iter().cloned().collect(),
            to: vec![dest.clone(), cloudevent],
        },
        RouteConfig {
            name: "filtered".into(),
            matches: vec![glob],
            filter,
            redact: vec![],
            to: vec![dest],
        },
    ];
    let Ok(router) = Router::compile_routes(&routes, Unmatched::DeadLetter, |s| s == "s") else {
        return;
    };
    let routed = router.route(&event);
    let of = |route: &str| {
        routed
            .destinations
            .iter()
            .filter(|d| d.route.as_ref() == route)
            .count()
            + routed
                .failures
                .iter()
                .filter(|f| f.route.as_ref() == route)
                .count()
    };
    // Every destination of a route that takes the event is either rendered or a failure.
    assert!(matches!(of("fuzz"), 0 | 2), "{routed:?}");
    assert!(matches!(of("filtered"), 0 | 1), "{routed:?}");
    for d in &routed.destinations {
        if d.route.as_ref() == "fuzz" && redact.is_some() {
            serde_json::from_slice::<serde_json::Value>(&d.body).expect("redacted body is JSON");
        } else {
            assert_eq!(d.body, event.raw, "unredacted bodies are verbatim");
        }
        let file = topic_file(Path::new("/out"), &d.topic);
        assert_eq!(file.parent(), Some(Path::new("/out")));
    }
    for f in &routed.failures {
        assert!(!f.reason.is_empty());
    }
});
