//! The model on `/metrics` text captured from a running demo (`fondo-bridge demo --admin ADDR
//! --rate 500 --malformed-every 50 --drop-every 1500`), two scrapes a second apart.

use super::*;

const FIRST: &str = include_str!("../../tests/fixtures/top/demo-metrics-1.txt");
const SECOND: &str = include_str!("../../tests/fixtures/top/demo-metrics-2.txt");
const DEMO_CLIENT: &str = "49ad7378-121c-4a53-9894-dfd14a7b4877";

fn scrape(text: &str, ready: bool) -> Result<Scrape, TopError> {
    Ok(Scrape {
        metrics: text.to_owned(),
        readiness: Some(Readiness {
            ready,
            lines: vec!["websocket: ok".into(), "sink:files: connected".into()],
        }),
    })
}

#[test]
fn figures_of_a_running_demo() {
    let f = Figures::parse(FIRST);
    let files = f.published[&("files".to_owned(), "per-entity".to_owned())];
    assert!(files > 0.0, "{f:?}");
    assert!(f.received["websocket"] >= files);
    assert!(f.dead_lettered["unparseable"] > 0.0, "{f:?}");
    let stream = &f.streams[DEMO_CLIENT];
    assert!(stream.connected && stream.gaps > 0.0, "{stream:?}");
    assert_eq!(f.spool_max_bytes, Some(1024.0 * 1024.0 * 1024.0));
    assert!(f.spool_bytes.is_some_and(|b| b > 0.0));
    assert!(f.start_time.is_some_and(|t| t > 1.7e9));
    assert_eq!(f.version.as_deref(), Some(env!("CARGO_PKG_VERSION")));
    // Families top does not show are not mistaken for ones it does.
    assert!(f.published.keys().all(|(sink, _)| sink == "files"));
}

#[test]
fn rates_are_counter_deltas_over_the_time_between_scrapes() {
    let (a, b) = (Figures::parse(FIRST), Figures::parse(SECOND));
    let t0 = Instant::now();
    let start = b.start_time.unwrap_or_default();
    let mut model = Model::default();
    model.update(t0, start + 10.0, scrape(FIRST, true));
    let first = model.view().unwrap().clone();
    assert!(
        first.sinks.iter().all(|r| r.events.per_sec.is_none()),
        "no rate from one scrape"
    );

    model.update(
        t0 + Duration::from_millis(500),
        start + 10.5,
        scrape(SECOND, true),
    );
    let view = model.view().unwrap();
    let key = ("files".to_owned(), "per-entity".to_owned());
    let delta = b.published[&key] - a.published[&key];
    assert!(delta > 0.0, "the two captures are a second apart");
    let route = view
        .routes
        .iter()
        .find(|r| r.name == "per-entity" && r.sink.as_deref() == Some("files"))
        .unwrap();
    assert_eq!(route.events.total, b.published[&key]);
    assert_eq!(route.events.per_sec, Some(delta / 0.5));
    // The sink's line sums its routes.
    let sink_delta: f64 = b.published.values().sum::<f64>() - a.published.values().sum::<f64>();
    let sink = view.sinks.iter().find(|r| r.name == "files").unwrap();
    assert_eq!(sink.events.total, b.published.values().sum::<f64>());
    assert_eq!(sink.events.per_sec, Some(sink_delta / 0.5));
    assert_eq!(view.sinks.len(), 1);
    assert_eq!(view.routes.len(), b.published.len());
    let received = view.sources.iter().find(|r| r.name == "websocket").unwrap();
    assert_eq!(
        received.events.per_sec,
        Some((b.received["websocket"] - a.received["websocket"]) / 0.5)
    );
    assert_eq!(view.streams[0].client_id, DEMO_CLIENT);
    assert!(view.streams[0].connected);
    assert_eq!(view.uptime, Some(Duration::from_secs_f64(10.5)));
    assert!(view.dead_letters.total > 0.0);
    assert!(
        view.dead_letter_reasons
            .iter()
            .any(|(r, _)| r == "unparseable")
    );
    let spool = view.spool.unwrap();
    assert!(
        spool.percent().is_some_and(|p| p > 0.0 && p < 100.0),
        "{spool:?}"
    );
}

#[test]
fn a_counter_that_went_down_was_reset_and_counts_from_zero() {
    assert_eq!(count(5.0, Some((100.0, 1.0))).per_sec, Some(5.0));
    assert_eq!(count(150.0, Some((100.0, 2.0))).per_sec, Some(25.0));
    assert_eq!(count(150.0, None).per_sec, None);
    // Two scrapes at the same instant give no rate rather than infinity.
    assert_eq!(count(150.0, Some((100.0, 0.0))).per_sec, None);
}

#[test]
fn an_unreachable_endpoint_keeps_the_last_view_and_says_why() {
    let mut model = Model::default();
    let t0 = Instant::now();
    model.update(
        t0,
        0.0,
        Err(TopError::Unreachable {
            url: "http://127.0.0.1:9/metrics".into(),
            reason: "connection refused".into(),
        }),
    );
    assert!(model.view().is_none());
    assert!(model.error().unwrap().contains("connection refused"));

    model.update(t0, 0.0, scrape(FIRST, false));
    assert!(model.error().is_none());
    assert_eq!(model.last_ok(), Some(t0));
    let readiness = model.view().unwrap().readiness.clone().unwrap();
    assert!(!readiness.ready);

    let t1 = t0 + Duration::from_secs(1);
    model.update(
        t1,
        0.0,
        Err(TopError::Status {
            url: "http://127.0.0.1:9/metrics".into(),
            status: 500,
        }),
    );
    assert!(model.view().is_some(), "the last figures stay on screen");
    assert!(model.error().unwrap().contains("HTTP 500"));
    assert_eq!(model.last_ok(), Some(t0));
}

#[test]
fn a_bridge_without_a_spool_shows_none() {
    let text =
        "fondo_bridge_spool_bytes 0\nfondo_bridge_spool_events 0\nfondo_bridge_spool_max_bytes 0\n";
    assert_eq!(spool_use(&Figures::parse(text)), None);
    let half = SpoolUse {
        events: 3.0,
        bytes: 50.0,
        max_bytes: Some(200.0),
    };
    assert_eq!(half.percent(), Some(25.0));
}

#[test]
fn admin_urls_must_be_http() {
    for bad in ["127.0.0.1:9090", "ftp://127.0.0.1:9090", "not a url"] {
        let err = Scraper::new(bad, Duration::from_secs(1)).unwrap_err();
        assert!(matches!(err, TopError::Url { .. }), "{bad}: {err}");
    }
    assert!(Scraper::new("http://127.0.0.1:9090", Duration::from_secs(1)).is_ok());
}

#[tokio::test]
async fn nothing_listening_is_an_error_naming_the_url() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
        .port();
    let scraper =
        Scraper::new(&format!("http://127.0.0.1:{port}"), Duration::from_secs(2)).unwrap();
    let err = scraper.scrape().await.unwrap_err();
    assert!(matches!(err, TopError::Unreachable { .. }), "{err}");
    assert!(
        err.to_string()
            .contains(&format!("127.0.0.1:{port}/metrics")),
        "{err}"
    );
}

/// A real admin server (the bridge's own router on an ephemeral port) scraped end to end.
#[tokio::test]
async fn scrapes_a_real_admin_server() {
    let metrics = std::sync::Arc::new(crate::metrics::Metrics::new());
    metrics
        .published
        .get_or_create(&crate::metrics::SinkRouteLabels {
            sink: "files".into(),
            route: "r".into(),
        })
        .inc_by(7);
    let publish = metrics.publish_latency_of("files");
    for ms in 1..=100 {
        publish.observe(Duration::from_millis(ms));
    }
    metrics
        .receive_to_ack_of(crate::event::SourceKind::WebSocket)
        .observe(Duration::from_millis(40));
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let m = std::sync::Arc::clone(&metrics);
            async move { m.encode() }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    let scraper = Scraper::new(&format!("http://{addr}"), Duration::from_secs(2)).unwrap();
    let scrape = scraper.scrape().await.unwrap();
    // No /readyz here: 404 leaves readiness unknown.
    assert_eq!(scrape.readiness, None);
    let f = Figures::parse(&scrape.metrics);
    assert_eq!(f.published[&("files".to_owned(), "r".to_owned())], 7.0);
    // The exact p99s (HdrHistogram, within 0.1 %), shown per sink and per source.
    assert!((f.publish_p99["files"] - 0.099).abs() < 0.0001, "{f:?}");
    assert!((f.receive_p99["websocket"] - 0.040).abs() < 0.0001, "{f:?}");
    assert!(
        !f.receive_p99.contains_key("webhook"),
        "no values, no series"
    );
    let view = View::new(&f, None, None, 0.0);
    let sink = view.sinks.iter().find(|r| r.name == "files").unwrap();
    assert!(sink.p99_ms.is_some_and(|ms| (ms - 99.0).abs() < 0.1));
    server.abort();
}
