//! `fondo-bridge route`: where one event would go under a config, without running anything.

use std::process::ExitCode;

use anyhow::Context as _;
use bytes::Bytes;

use fondo_bridge::event::{Event, ParseContext, ParseOptions};
use fondo_bridge::router::{Destination, Router};

pub fn route(
    config: &std::path::Path,
    event: &std::path::Path,
    client_id: Option<&str>,
    event_type: Option<&str>,
) -> anyhow::Result<ExitCode> {
    let plan = match super::load(config) {
        Ok(p) => p,
        Err(code) => return Ok(code),
    };
    let (cfg, router) = (plan.config(), plan.router());
    let raw = std::fs::read(event).with_context(|| format!("reading {}", event.display()))?;
    let opts = ParseOptions {
        id_pointer: cfg.event.id_pointer.clone(),
        ..ParseOptions::default()
    };
    let ctx = ParseContext {
        client_id,
        type_hint: event_type,
        id_hint: None,
    };
    let ev = match Event::parse(Bytes::from(raw), &opts, &ctx) {
        Ok(ev) => ev,
        Err(e) => {
            println!("not an event: {e}");
            println!("-> dead letter (reason: unparseable)");
            return Ok(ExitCode::from(1));
        }
    };
    println!(
        "event {} (type {}, entity {}, action {}, client {})",
        ev.event_id,
        ev.event_type,
        ev.event_type.entity(),
        ev.event_type.action(),
        ev.client_id.as_deref().unwrap_or("-")
    );
    let routed = router.route(&ev);
    for f in &routed.filtered_by {
        println!("route {f}: type matches, excluded by its `where` filter");
    }
    if routed.is_unmatched() {
        print_unmatched(&ev, router);
    }
    for d in &routed.destinations {
        print_destination(d, &ev);
    }
    for f in &routed.failures {
        println!(
            "-> route {} → sink {}: cannot render ({}) → dead letter",
            f.route, f.sink, f.reason
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// What happens to an event no route takes.
fn print_unmatched(ev: &Event, router: &Router) {
    if ev.event_type.is_heartbeat() {
        println!("-> heartbeat: feeds the WebSocket watchdog, not published");
    } else {
        println!(
            "-> unmatched: {}",
            match router.unmatched_policy() {
                fondo_bridge::config::Unmatched::DeadLetter => "dead-lettered",
                fondo_bridge::config::Unmatched::Drop => "dropped (counted)",
            }
        );
    }
}

/// One destination: where the message goes and what it carries.
fn print_destination(d: &Destination, ev: &Event) {
    println!("-> route {} → sink {}", d.route, d.sink);
    println!("   topic:   {}", d.topic);
    println!("   key:     {}", d.key.as_deref().unwrap_or("(none)"));
    for (k, v) in &d.headers {
        println!("   header:  {k}: {v}");
    }
    if let Some(ce) = &d.cloudevents {
        let mode = match ce.mode {
            fondo_bridge::cloudevents::Mode::Binary => "binary",
            fondo_bridge::cloudevents::Mode::Structured => "structured",
        };
        println!(
            "   cloudevent ({mode}): source {}, type {}, subject {}",
            ce.source,
            ce.event_type,
            ev.object_ref().unwrap_or("(none)")
        );
    }
    println!("   body:    {}", String::from_utf8_lossy(&d.body));
}
