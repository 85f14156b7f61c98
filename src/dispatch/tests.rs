use super::*;
use crate::config::{Config, DestinationConfig, RouteConfig};
use crate::event::{ParseContext, ParseOptions};
use crate::sinks::testing::{Faults, TestSink};
use bytes::Bytes;
use std::collections::BTreeMap;

pub(super) struct Rig {
    pub(super) d: Dispatcher,
    dl_file: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

pub(super) fn route(name: &str, matches: &[&str], sink: &str, topic: &str) -> RouteConfig {
    RouteConfig {
        name: name.into(),
        matches: matches.iter().map(|s| s.to_string()).collect(),
        filter: BTreeMap::new(),
        redact: vec![],
        to: vec![DestinationConfig {
            sink: sink.into(),
            topic: topic.into(),
            key: None,
            headers: BTreeMap::new(),
            ..Default::default()
        }],
    }
}

fn rig(
    routes: Vec<RouteConfig>,
    sinks: Vec<(&str, Arc<TestSink>)>,
    dl_sink: Option<Arc<TestSink>>,
    max_attempts: u32,
    max_in_flight: usize,
) -> Rig {
    let sinks = sinks.into_iter().map(|(n, s)| (n, s as DynSink)).collect();
    rig_dyn(routes, sinks, dl_sink, max_attempts, max_in_flight)
}

/// [`rig`] with any sinks.
pub(super) fn rig_dyn(
    routes: Vec<RouteConfig>,
    sinks: Vec<(&str, DynSink)>,
    dl_sink: Option<Arc<TestSink>>,
    max_attempts: u32,
    max_in_flight: usize,
) -> Rig {
    let identity = crate::dispatch::IdentityConfig {
        capacity: 10_000,
        ..Default::default()
    };
    rig_with_identity(
        routes,
        sinks,
        dl_sink,
        max_attempts,
        max_in_flight,
        identity,
    )
}

/// One catch-all route to `sink` (named "s", topic "t"), keeping identities as `identity` says.
fn catch_all_rig(sink: &Arc<TestSink>, identity: crate::dispatch::IdentityConfig) -> Rig {
    rig_with_identity(
        vec![route("r", &["*"], "s", "t")],
        vec![("s", sink.clone() as DynSink)],
        None,
        2,
        100,
        identity,
    )
}

fn rig_with_identity(
    routes: Vec<RouteConfig>,
    sinks: Vec<(&str, DynSink)>,
    dl_sink: Option<Arc<TestSink>>,
    max_attempts: u32,
    max_in_flight: usize,
    identity: crate::dispatch::IdentityConfig,
) -> Rig {
    let dir = tempfile::tempdir().unwrap();
    let dl_file = dir.path().join("dead-letter.jsonl");
    let names: Vec<String> = sinks.iter().map(|(n, _)| n.to_string()).collect();
    let router = Router::compile_routes(&routes, Unmatched::DeadLetter, |s| {
        names.iter().any(|n| n == s)
    })
    .unwrap();
    let metrics = Arc::new(Metrics::new());
    let dls = Arc::new(DeadLetterWriter::new(
        dl_sink.map(|s| s as DynSink),
        "fondo.dead-letter".into(),
        1,
        dl_file.clone(),
        metrics.clone(),
    ));
    let mut cfg = Config::default();
    cfg.delivery.max_attempts = max_attempts;
    cfg.delivery.backoff_initial_ms = 1;
    cfg.delivery.backoff_max_ms = 5;
    let d = Dispatcher::start(DispatcherParts {
        router,
        sinks: sinks.into_iter().map(|(n, s)| (n.to_string(), s)).collect(),
        dead_letters: dls,
        policy: RetryPolicy::from_config(&cfg),
        max_in_flight,
        identity,
        metrics,
    });
    Rig {
        d,
        dl_file,
        _dir: dir,
    }
}

/// A copy of the occurrence `occ` (as a webhook retry or a paired copy carries it).
fn copy_of(occ: &str, t: &str, id: &str, seq: u32) -> Event {
    let raw = format!(r#"{{"eventType":"{t}","current":{{"id":"{id}","seq":{seq}}}}}"#);
    Event::parse(
        Bytes::from(raw),
        &ParseOptions::default(),
        &ParseContext {
            client_id: Some("c1"),
            id_hint: Some(occ),
            ..Default::default()
        },
    )
    .unwrap()
}

pub(super) fn event(t: &str, id: &str, seq: u32) -> Event {
    let raw = format!(r#"{{"eventType":"{t}","current":{{"id":"{id}","seq":{seq}}}}}"#);
    Event::parse(
        Bytes::from(raw),
        &ParseOptions::default(),
        &ParseContext {
            client_id: Some("c1"),
            ..Default::default()
        },
    )
    .unwrap()
}

pub(super) async fn send(d: &Dispatcher, e: Event) -> crate::event::AckReceiver {
    send_from(d, e, SourceKind::WebSocket).await
}

async fn send_from(d: &Dispatcher, e: Event, source: SourceKind) -> crate::event::AckReceiver {
    let (ack, rx) = AckHandle::new();
    d.submit(Envelope::new(e, ack, source))
        .await
        .map_err(|_| "submit failed")
        .unwrap();
    rx
}

/// A copy of an occurrence that was delivered before: a webhook retry, the source that repeats.
async fn resend(d: &Dispatcher, e: Event) -> crate::event::AckReceiver {
    send_from(d, e, SourceKind::Webhook).await
}

pub(super) fn seq_of(m: &Message) -> u64 {
    let v: serde_json::Value = serde_json::from_slice(&m.payload).unwrap();
    v.pointer("/current/seq").unwrap().as_u64().unwrap()
}

#[tokio::test]
async fn delivers_to_every_destination_with_headers() {
    let a = Arc::new(TestSink::new("a", Faults::default()));
    let b = Arc::new(TestSink::new("b", Faults::default()));
    let mut r = route("orders", &["order.*"], "a", "fondo.{entity}");
    r.to.push(DestinationConfig {
        sink: "b".into(),
        topic: "x.{action}".into(),
        key: Some("{client_id}".into()),
        headers: BTreeMap::from([("x-team".into(), "ledger".into())]),
        ..Default::default()
    });
    let rig = rig(
        vec![r],
        vec![("a", a.clone()), ("b", b.clone())],
        None,
        3,
        100,
    );
    let e = event("order.update", "o1", 1);
    let id = e.event_id.clone();
    let rx = send(&rig.d, e).await;
    assert_eq!(rx.wait().await, AckStatus::Delivered);
    let ma = &a.delivered()[0];
    assert_eq!(ma.topic, "fondo.order");
    assert_eq!(
        ma.key.as_deref(),
        Some("o1"),
        "default key is the object id"
    );
    assert_eq!(ma.header("fondo-event-id"), Some(&*id));
    assert_eq!(ma.header("fondo-event-type"), Some("order.update"));
    assert_eq!(ma.header("fondo-client-id"), Some("c1"));
    assert_eq!(ma.header("fondo-source"), Some("websocket"));
    let mb = &b.delivered()[0];
    assert_eq!(mb.topic, "x.update");
    assert_eq!(mb.key.as_deref(), Some("c1"));
    assert_eq!(mb.header("x-team"), Some("ledger"));
    assert_eq!(rig.d.in_flight(), 0);
}

#[tokio::test]
async fn websocket_events_are_patient_and_webhook_and_replayed_ones_prompt() {
    let s = Arc::new(TestSink::new("a", Faults::default()));
    let rig = rig(
        vec![route("all", &["*"], "a", "t")],
        vec![("a", s.clone())],
        None,
        3,
        100,
    );
    let sources = [
        (SourceKind::WebSocket, Pace::Patient),
        (SourceKind::Webhook, Pace::Prompt),
        (SourceKind::Replay, Pace::Prompt),
    ];
    for (i, (source, _)) in sources.iter().enumerate() {
        let (ack, rx) = AckHandle::new();
        let e = event("order.update", &format!("o{i}"), 1);
        rig.d
            .submit(Envelope::new(e, ack, *source))
            .await
            .map_err(|_| "submit failed")
            .unwrap();
        assert_eq!(rx.wait().await, AckStatus::Delivered);
    }
    let delivered = s.delivered();
    assert_eq!(delivered.len(), sources.len());
    for (m, (source, pace)) in delivered.iter().zip(sources) {
        assert_eq!(m.header("fondo-source"), Some(source.as_str()));
        assert_eq!(m.pace, pace, "{source:?}");
    }
}

#[tokio::test]
async fn order_per_key_is_kept_though_the_first_failed_twice() {
    let s = Arc::new(TestSink::new(
        "s",
        Faults {
            fail_first: 2,
            latency: Duration::from_millis(1),
            ..Faults::default()
        },
    ));
    let rig = rig(
        vec![route("all", &["*"], "s", "t")],
        vec![("s", s.clone())],
        None,
        5,
        1000,
    );
    let mut rxs = Vec::new();
    for seq in 0..20u32 {
        for key in ["k1", "k2", "k3"] {
            rxs.push(send(&rig.d, event("order.update", key, seq)).await);
        }
    }
    for rx in rxs {
        assert_eq!(rx.wait().await, AckStatus::Delivered);
    }
    let got = s.delivered();
    assert_eq!(got.len(), 60);
    for key in ["k1", "k2", "k3"] {
        let seqs: Vec<u64> = got
            .iter()
            .filter(|m| m.key.as_deref() == Some(key))
            .map(seq_of)
            .collect();
        assert_eq!(seqs, (0..20).collect::<Vec<u64>>(), "order of {key}");
    }
    assert_eq!(s.calls(), 180, "each message failed twice then succeeded");
    assert!(
        s.max_concurrent() > 1,
        "different keys publish concurrently"
    );
}

#[tokio::test]
async fn fatal_and_exhausted_failures_are_dead_lettered_and_acknowledged() {
    let s = Arc::new(TestSink::new(
        "s",
        Faults {
            fatal_topics: vec!["missing".into()],
            ..Faults::default()
        },
    ));
    let down = Arc::new(TestSink::new(
        "down",
        Faults {
            down: true,
            ..Faults::default()
        },
    ));
    let dl = Arc::new(TestSink::new("dl", Faults::default()));
    let routes = vec![
        route("to-missing", &["order.*"], "s", "missing"),
        route("to-down", &["account.*"], "down", "acc"),
    ];
    let rig = rig(
        routes,
        vec![("s", s.clone()), ("down", down.clone()), ("dl", dl.clone())],
        Some(dl.clone()),
        3,
        100,
    );
    assert_eq!(
        send(&rig.d, event("order.create", "o1", 1))
            .await
            .wait()
            .await,
        AckStatus::Delivered
    );
    assert_eq!(
        send(&rig.d, event("account.update", "a1", 1))
            .await
            .wait()
            .await,
        AckStatus::Delivered
    );
    assert_eq!(down.calls(), 3, "max_attempts respected");
    let dls: Vec<DeadLetter> = dl
        .delivered()
        .iter()
        .map(|m| serde_json::from_slice(&m.payload).unwrap())
        .collect();
    assert_eq!(dls.len(), 2);
    let fatal = dls
        .iter()
        .find(|d| d.reason_kind == ReasonKind::Fatal)
        .unwrap();
    assert!(fatal.reason.contains("missing"));
    assert_eq!(fatal.destination.topic.as_deref(), Some("missing"));
    assert_eq!(fatal.attempts, 1);
    let ex = dls
        .iter()
        .find(|d| d.reason_kind == ReasonKind::Exhausted)
        .unwrap();
    assert_eq!(ex.attempts, 3);
    assert!(ex.first_error.is_some() && ex.last_error.is_some());
    assert_eq!(ex.event_type.as_deref(), Some("account.update"));
    assert!(
        ex.body.as_deref().unwrap().contains("\"a1\""),
        "original body kept"
    );
}

#[tokio::test]
async fn unmatched_events_are_dead_lettered_and_heartbeats_ignored() {
    let s = Arc::new(TestSink::new("s", Faults::default()));
    let rig = rig(
        vec![route("orders", &["order.*"], "s", "t")],
        vec![("s", s.clone())],
        None,
        2,
        10,
    );
    assert_eq!(
        send(&rig.d, event("journey.update", "j1", 1))
            .await
            .wait()
            .await,
        AckStatus::Delivered
    );
    assert_eq!(
        send(&rig.d, event("heartbeat", "h", 1)).await.wait().await,
        AckStatus::Delivered
    );
    let (dls, bad) = crate::dlq::read_fallback_file(&rig.dl_file).unwrap();
    assert!(bad.is_empty());
    assert_eq!(dls.len(), 1, "only the journey event, not the heartbeat");
    assert_eq!(dls[0].reason_kind, ReasonKind::Unmatched);
    assert_eq!(rig.d.metrics().unmatched.get(), 1);
    assert!(s.delivered().is_empty());
}

#[tokio::test]
async fn failed_dead_letter_leaves_the_event_unacknowledged() {
    let down = Arc::new(TestSink::new(
        "down",
        Faults {
            down: true,
            ..Faults::default()
        },
    ));
    let mut rig = rig(
        vec![route("r", &["*"], "down", "t")],
        vec![("down", down.clone())],
        Some(down.clone()),
        2,
        10,
    );
    // Make the fallback file impossible: its parent is a regular file.
    let blocker = rig._dir.path().join("blocker");
    std::fs::write(&blocker, b"x").unwrap();
    rig.dl_file = blocker.join("dl.jsonl");
    let metrics = rig.d.metrics().clone();
    let dls = Arc::new(DeadLetterWriter::new(
        Some(down.clone() as DynSink),
        "dl".into(),
        1,
        rig.dl_file.clone(),
        metrics.clone(),
    ));
    let router = Router::compile_routes(
        &[route("r", &["*"], "down", "t")],
        Unmatched::DeadLetter,
        |_| true,
    )
    .unwrap();
    let mut cfg = Config::default();
    cfg.delivery.max_attempts = 2;
    cfg.delivery.backoff_initial_ms = 1;
    let d = Dispatcher::start(DispatcherParts {
        router,
        sinks: HashMap::from([("down".to_string(), down.clone() as DynSink)]),
        dead_letters: dls,
        policy: RetryPolicy::from_config(&cfg),
        max_in_flight: 10,
        identity: crate::dispatch::IdentityConfig::default(),
        metrics,
    });
    assert_eq!(
        send(&d, event("order.create", "o1", 1)).await.wait().await,
        AckStatus::Retry
    );
}

#[tokio::test]
async fn ack_waits_for_every_destination() {
    let fast = Arc::new(TestSink::new("fast", Faults::default()));
    let hung = Arc::new(TestSink::new(
        "hung",
        Faults {
            hang: true,
            ..Faults::default()
        },
    ));
    let mut r = route("r", &["*"], "fast", "t");
    r.to.push(DestinationConfig {
        sink: "hung".into(),
        topic: "t".into(),
        key: None,
        headers: BTreeMap::new(),
        ..Default::default()
    });
    let rig = rig(
        vec![r],
        vec![("fast", fast.clone()), ("hung", hung.clone())],
        None,
        2,
        10,
    );
    let mut rx = send(&rig.d, event("order.create", "o1", 1)).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(fast.delivered().len(), 1);
    assert_eq!(
        rx.try_status(),
        None,
        "acknowledged before the hung destination ended"
    );
    hung.recover();
    assert_eq!(rx.wait().await, AckStatus::Delivered);
    assert_eq!(hung.delivered().len(), 1);
}

#[tokio::test]
#[allow(clippy::async_yields_async)] // the task returns the ack receiver to wait on later
async fn a_stalled_sink_blocks_the_producer_at_max_in_flight() {
    let hung = Arc::new(TestSink::new(
        "hung",
        Faults {
            hang: true,
            ..Faults::default()
        },
    ));
    let rig = rig(
        vec![route("r", &["*"], "hung", "t")],
        vec![("hung", hung.clone())],
        None,
        2,
        16,
    );
    let mut rxs = Vec::new();
    for i in 0..16 {
        rxs.push(send(&rig.d, event("order.create", &format!("o{i}"), 1)).await);
    }
    assert_eq!(rig.d.in_flight(), 16);
    // The 17th neither fits with try_submit nor completes a blocking submit.
    let (ack, _rx) = AckHandle::new();
    assert!(matches!(
        rig.d.try_submit(Envelope::new(
            event("order.create", "x", 1),
            ack,
            SourceKind::Webhook
        )),
        Err(SubmitError::Full(_))
    ));
    let d2 = rig.d.clone();
    let blocked = tokio::spawn(async move { send(&d2, event("order.create", "y", 1)).await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        !blocked.is_finished(),
        "producer must block while the bridge is full"
    );
    hung.recover();
    let rx = blocked.await.unwrap();
    assert_eq!(rx.wait().await, AckStatus::Delivered);
    for rx in rxs {
        assert_eq!(rx.wait().await, AckStatus::Delivered);
    }
    assert_eq!(hung.delivered().len(), 17);
}

/// The guard against content-as-identity: bodies that repeat (A B A B, and one body 31 times), from
/// either source, each identified as the sources do it and never retried, are all published. Any
/// path that acknowledges an event because its content was seen before fails this test.
#[tokio::test]
async fn repeated_bodies_are_published_every_time() {
    for pair_sources in [false, true] {
        let sink = Arc::new(TestSink::new("s", Faults::default()));
        let mut rig = rig(
            vec![route("r", &["*"], "s", "t")],
            vec![("s", sink.clone())],
            None,
            2,
            100,
        );
        if pair_sources {
            rig = catch_all_rig(
                &sink,
                crate::dispatch::IdentityConfig {
                    pair_sources: true,
                    ..Default::default()
                },
            );
        }
        let bodies: Vec<Event> = [1, 2, 1, 2]
            .iter()
            .map(|s| event("account.update", "a1", *s))
            .chain((0..31).map(|_| event("x.unknown", "z", 0)))
            .collect();
        let mut n = 0;
        for source in [SourceKind::WebSocket, SourceKind::Webhook] {
            for (i, e) in bodies.iter().enumerate() {
                let mut e = e.clone();
                e.event_id = Arc::from(crate::event::mint_occurrence_id());
                // Each webhook copy is its own delivery, as Fondo sends distinct changes.
                let delivery = format!("msg_{source}_{i}");
                let d = (source == SourceKind::Webhook).then_some(delivery.as_str());
                let _ = rig.d.identify(&mut e, source, d).await;
                let (ack, rx) = AckHandle::new();
                rig.d.submit(Envelope::new(e, ack, source)).await.unwrap();
                assert_eq!(rx.wait().await, AckStatus::Delivered);
                n += 1;
            }
        }
        // With pairing on, a webhook copy within the window is the stream's copy of the same
        // change: the stream brought 35 changes and the webhooks the same 35.
        let expected = if pair_sources { n / 2 } else { n };
        assert_eq!(
            sink.delivered().len(),
            expected,
            "pair_sources={pair_sources}: a repeated body was acknowledged without being published"
        );
    }
}

#[tokio::test]
async fn copies_of_one_occurrence_are_published_once() {
    let slow = Arc::new(TestSink::new(
        "s",
        Faults {
            latency: Duration::from_millis(50),
            ..Faults::default()
        },
    ));
    let rig = rig(
        vec![route("r", &["*"], "s", "t")],
        vec![("s", slow.clone())],
        None,
        2,
        100,
    );
    // Concurrently: the second waits for the first's outcome.
    let a = resend(&rig.d, copy_of("occ-1", "order.create", "o1", 1)).await;
    let b = resend(&rig.d, copy_of("occ-1", "order.create", "o1", 1)).await;
    assert_eq!(a.wait().await, AckStatus::Delivered);
    assert_eq!(b.wait().await, AckStatus::Delivered);
    // Sequentially, after delivery.
    assert_eq!(
        resend(&rig.d, copy_of("occ-1", "order.create", "o1", 1))
            .await
            .wait()
            .await,
        AckStatus::Delivered
    );
    assert_eq!(slow.delivered().len(), 1);
    assert_eq!(
        rig.d
            .metrics()
            .deduplicated
            .get_or_create(&rig.d.metrics().source("webhook"))
            .get(),
        2
    );
}

#[tokio::test]
async fn a_failed_first_copy_lets_the_duplicate_through() {
    let s = Arc::new(TestSink::new(
        "s",
        Faults {
            down: true,
            latency: Duration::from_millis(30),
            ..Faults::default()
        },
    ));
    // No dead-letter file possible: the first copy ends as Retry.
    let rig = rig(
        vec![route("r", &["*"], "s", "t")],
        vec![("s", s.clone())],
        Some(s.clone()),
        1,
        100,
    );
    let blocker = rig._dir.path().join("dead-letter.jsonl");
    std::fs::create_dir_all(&blocker).unwrap(); // a directory where the file should be
    let a = send(&rig.d, copy_of("occ-1", "order.create", "o1", 1)).await;
    let b = send(&rig.d, copy_of("occ-1", "order.create", "o1", 1)).await;
    assert_eq!(a.wait().await, AckStatus::Retry);
    s.recover();
    assert_eq!(
        b.wait().await,
        AckStatus::Delivered,
        "the duplicate is a genuine retry"
    );
    assert_eq!(s.delivered().len(), 1);
}

#[tokio::test]
async fn drain_waits_for_in_flight_and_closes_intake() {
    let slow = Arc::new(TestSink::new(
        "s",
        Faults {
            latency: Duration::from_millis(100),
            ..Faults::default()
        },
    ));
    let rig = rig(
        vec![route("r", &["*"], "s", "t")],
        vec![("s", slow.clone())],
        None,
        2,
        100,
    );
    let rx = send(&rig.d, event("order.create", "o1", 1)).await;
    let left = rig.d.drain(Instant::now() + Duration::from_secs(5)).await;
    assert_eq!(left, 0);
    assert_eq!(rx.wait().await, AckStatus::Delivered);
    let (ack, _rx) = AckHandle::new();
    assert!(matches!(
        rig.d
            .submit(Envelope::new(
                event("order.create", "o2", 1),
                ack,
                SourceKind::WebSocket
            ))
            .await,
        Err(SubmitError::Closed(_))
    ));
    rig.d
        .shutdown(Instant::now() + Duration::from_secs(5))
        .await;
}

/// With the dedupe memory full, the newest delivered ids are still remembered: a redelivery of a
/// recent webhook delivery is not published again. (A cache with an admission policy, such as moka's
/// TinyLFU, may refuse a new, once-seen key when full; the dispatcher forgets the oldest first.)
#[tokio::test]
async fn a_full_occurrence_table_still_remembers_the_newest_ids() {
    let sink = Arc::new(TestSink::new("s", Faults::default()));
    let rig = catch_all_rig(
        &sink,
        crate::dispatch::IdentityConfig {
            capacity: 16,
            ..Default::default()
        },
    );
    for i in 0..300 {
        let ack = resend(
            &rig.d,
            copy_of(&format!("occ-{i}"), "order.create", &format!("o{i}"), 1),
        )
        .await;
        assert_eq!(ack.wait().await, AckStatus::Delivered);
    }
    assert_eq!(sink.delivered().len(), 300);
    for i in 296..300 {
        let ack = resend(
            &rig.d,
            copy_of(&format!("occ-{i}"), "order.create", &format!("o{i}"), 1),
        )
        .await;
        assert_eq!(ack.wait().await, AckStatus::Delivered);
    }
    assert_eq!(
        sink.delivered().len(),
        300,
        "a redelivered recent event was published again"
    );
}

/// A route that redacts a personal number dead-letters its redacted body: the number reaches
/// neither the sink nor the dead letter, whether the publish failed or the key could not be
/// rendered. An unmatched event has no route to redact for and keeps its bytes.
#[tokio::test]
async fn a_redacting_routes_dead_letters_hold_no_redacted_field() {
    let sink = Arc::new(TestSink::new(
        "s",
        Faults {
            fatal_topics: vec!["refused".into()],
            ..Faults::default()
        },
    ));
    let mut refused = route("refused", &["account.*"], "s", "refused");
    refused.redact = vec!["/current/ssn".into()];
    let mut unrenderable = route("unrenderable", &["account.*"], "s", "ok");
    unrenderable.redact = vec!["/current/ssn".into()];
    unrenderable.to[0].key = Some("{/current/missing}".into());
    let rig = rig(
        vec![refused, unrenderable],
        vec![("s", sink.clone())],
        None,
        1,
        100,
    );
    for raw in [
        r#"{"eventType":"account.update","current":{"id":"a1","ssn":"19121212-1212"}}"#,
        r#"{"eventType":"nobody.routes","current":{"id":"x","ssn":"19121212-1212"}}"#,
    ] {
        let ev = Event::parse(
            Bytes::from(raw),
            &ParseOptions::default(),
            &ParseContext::default(),
        )
        .unwrap();
        let (ack, rx) = AckHandle::new();
        rig.d
            .submit(Envelope::new(ev, ack, SourceKind::Webhook))
            .await
            .unwrap();
        assert_eq!(rx.wait().await, AckStatus::Delivered);
    }
    let (dls, bad) = crate::dlq::read_fallback_file(&rig.dl_file).unwrap();
    assert!(bad.is_empty(), "{bad:?}");
    assert_eq!(dls.len(), 3, "{dls:?}");
    for d in &dls {
        let body = String::from_utf8(d.body_bytes()).unwrap();
        match d.destination.route.as_deref() {
            Some("refused" | "unrenderable") => {
                assert!(!body.contains("19121212"), "{body}");
                assert!(
                    body.contains("\"a1\""),
                    "the rest of the body is kept: {body}"
                );
            }
            _ => assert!(
                body.contains("19121212"),
                "unmatched keeps its bytes: {body}"
            ),
        }
    }
    assert!(
        sink.delivered().is_empty(),
        "nothing was published: the refused topic fails, the other cannot render"
    );
}

#[tokio::test]
async fn cloudevents_destinations_carry_the_occurrence_and_its_trace_context() {
    let s = Arc::new(TestSink::new("a", Faults::default()));
    let mut r = route("ce", &["order.*"], "a", "bin");
    r.to[0].format = crate::config::MessageFormat::CloudeventsBinary;
    r.to.push(DestinationConfig {
        sink: "a".into(),
        topic: "str".into(),
        format: crate::config::MessageFormat::CloudeventsStructured,
        cloudevents: Some(crate::config::CloudEventsConfig {
            source: Some("urn:x:{client_id}".into()),
            event_type: Some("com.example.{entity}".into()),
        }),
        ..Default::default()
    });
    r.to.push(DestinationConfig {
        sink: "a".into(),
        topic: "raw".into(),
        ..Default::default()
    });
    let rig = rig(vec![r], vec![("a", s.clone())], None, 3, 100);
    let e = event("order.update", "o1", 1);
    let id = e.event_id.clone();
    let tp = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let (ack, rx) = AckHandle::new();
    let mut env = Envelope::new(e, ack, SourceKind::Webhook);
    env.trace = TraceContext {
        traceparent: Some(tp.into()),
        tracestate: Some("vendor=1".into()),
    };
    let received = env.received_wall;
    rig.d
        .submit(env)
        .await
        .map_err(|_| "submit failed")
        .unwrap();
    assert_eq!(rx.wait().await, AckStatus::Delivered);
    let by_topic = |t: &str| {
        s.delivered()
            .into_iter()
            .find(|m| m.topic == t)
            .unwrap_or_else(|| panic!("nothing on {t}"))
    };
    let bin = by_topic("bin");
    let ce = bin.cloudevent.as_deref().expect("a CloudEvent");
    assert_eq!(ce.mode, crate::cloudevents::Mode::Binary);
    assert_eq!(ce.id, id);
    assert_eq!(ce.source, "fondo:client/c1");
    assert_eq!(ce.event_type, "se.fondo.order.update");
    assert_eq!(ce.subject.as_deref(), Some("o1"));
    assert_eq!(ce.partition_key.as_deref(), Some("o1"));
    assert_eq!(ce.traceparent.as_deref(), Some(tp));
    assert_eq!(ce.tracestate.as_deref(), Some("vendor=1"));
    assert_eq!(
        ce.time,
        humantime::format_rfc3339_millis(received).to_string()
    );
    assert_eq!(
        bin.body().as_ref(),
        &bin.payload,
        "binary: the body is the data"
    );

    let st = by_topic("str");
    let ce = st.cloudevent.as_deref().expect("a CloudEvent");
    assert_eq!(
        (ce.source.as_str(), ce.event_type.as_str()),
        ("urn:x:c1", "com.example.order")
    );
    let envelope: serde_json::Value = serde_json::from_slice(&st.body()).unwrap();
    assert_eq!(envelope["traceparent"], tp);
    assert_eq!(envelope["data"]["current"]["id"], "o1");
    assert_eq!(
        st.payload, bin.payload,
        "the message keeps the Fondo body, for its dead letter"
    );
    assert!(by_topic("raw").cloudevent.is_none(), "raw stays raw");
}

#[test]
fn cloudevents_templates_are_checked_and_need_a_cloudevents_format() {
    let mut r = route("ce", &["*"], "a", "t");
    r.to[0].cloudevents = Some(crate::config::CloudEventsConfig {
        source: Some("x".into()),
        event_type: None,
    });
    let errs =
        Router::compile_routes(&[r.clone()], Unmatched::DeadLetter, |_| true).expect_err("refused");
    assert!(
        errs.iter()
            .any(|e| e.path == "routes[0].to[0].cloudevents" && e.message.contains("format")),
        "{errs:?}"
    );
    r.to[0].format = crate::config::MessageFormat::CloudeventsBinary;
    r.to[0].cloudevents = Some(crate::config::CloudEventsConfig {
        source: Some("{nope}".into()),
        event_type: Some("a{".into()),
    });
    let errs = Router::compile_routes(&[r], Unmatched::DeadLetter, |_| true).expect_err("refused");
    let paths: Vec<&str> = errs.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "routes[0].to[0].cloudevents.source",
            "routes[0].to[0].cloudevents.type"
        ]
    );
}

/// A delivered id is remembered only where another copy of its occurrence can come. From the
/// stream alone none can: 500 delivered stream events leave nothing behind, while 500 webhook
/// deliveries, or stream events while both sources pair, are each remembered (and a later copy
/// of them is acknowledged without a second publish).
#[tokio::test]
async fn delivered_ids_are_remembered_only_where_a_copy_can_follow() {
    for (pair_sources, source, remembered) in [
        (false, SourceKind::WebSocket, 0),
        (false, SourceKind::Webhook, 500),
        (true, SourceKind::WebSocket, 500),
    ] {
        let sink = Arc::new(TestSink::new("s", Faults::default()));
        let rig = catch_all_rig(
            &sink,
            crate::dispatch::IdentityConfig {
                pair_sources,
                capacity: 10_000,
                ..Default::default()
            },
        );
        let case = format!("pair_sources={pair_sources}, {source}");
        for i in 0..500 {
            let e = copy_of(&format!("occ-{i}"), "order.create", "o1", i);
            assert_eq!(
                send_from(&rig.d, e, source).await.wait().await,
                AckStatus::Delivered
            );
        }
        assert_eq!(rig.d.ids().remembered(), remembered, "{case}");
        // A copy of the last occurrence: a duplicate where it was remembered, published otherwise.
        let again = copy_of("occ-499", "order.create", "o1", 499);
        assert_eq!(
            send_from(&rig.d, again, source).await.wait().await,
            AckStatus::Delivered
        );
        let published = if remembered == 0 { 501 } else { 500 };
        assert_eq!(sink.delivered().len(), published, "{case}");
    }
}
