//! The admin server: `/metrics` (Prometheus), `/healthz` (alive), `/readyz` (sources connected and
//! sinks healthy; the body says what is not).

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;

use crate::dispatch::Dispatcher;
use crate::metrics::Metrics;
use crate::sources::Readiness;

/// How long `/readyz` waits for one sink's health check.
const SINK_CHECK_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Clone)]
pub struct AdminState {
    pub metrics: Arc<Metrics>,
    pub readiness: Arc<Readiness>,
    pub dispatcher: Dispatcher,
}

pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { (StatusCode::OK, "ok\n") }))
        .route("/readyz", get(readyz))
        .with_state(state)
}

async fn metrics(State(s): State<AdminState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        s.metrics.encode(),
    )
}

async fn readyz(State(s): State<AdminState>) -> impl IntoResponse {
    let mut lines = Vec::new();
    let mut ready = !s.dispatcher.is_closed();
    if !ready {
        lines.push("bridge: shutting down".to_owned());
    }
    let sources = s.readiness.snapshot();
    if sources.is_empty() {
        // Sources register as they start; none yet means nothing is accepting events.
        ready = false;
        lines.push("sources: none accepting yet".to_owned());
    }
    for (part, state) in sources {
        match state {
            Ok(()) => lines.push(format!("{part}: ok")),
            Err(e) => {
                ready = false;
                lines.push(format!("{part}: {e}"));
            }
        }
    }
    // The shared identity store is reported but does not make the bridge unready: without it
    // events are still delivered (a possible duplicate each, counted), and taking every replica
    // out of the webhook Service would refuse them all instead.
    match s.dispatcher.shared_store_health() {
        Some(Ok(())) => lines.push("dedupe_store: ok".to_owned()),
        Some(Err(e)) => lines.push(format!("dedupe_store: {e}")),
        None => {}
    }
    // Every sink at once: one slow broker must not make the probe wait for the others.
    let mut sinks: Vec<_> = s.dispatcher.sinks().cloned().collect();
    sinks.sort_by(|a, b| a.name().cmp(b.name()));
    let checks = futures::future::join_all(sinks.iter().map(|sink| async move {
        tokio::time::timeout(SINK_CHECK_TIMEOUT, sink.healthcheck()).await
    }))
    .await;
    for (sink, check) in sinks.iter().zip(checks) {
        match check {
            Ok(Ok(())) => lines.push(format!("sink:{}: ok", sink.name())),
            Ok(Err(e)) => {
                ready = false;
                lines.push(format!("sink:{}: {}", sink.name(), e.reason()));
            }
            Err(_) => {
                ready = false;
                lines.push(format!("sink:{}: health check timed out", sink.name()));
            }
        }
    }
    let code = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, lines.join("\n") + "\n")
}
