//! The admin server: `/metrics` (Prometheus), `/healthz` (alive) and `/readyz` (ready for work).
//!
//! - `/healthz` is 200 unless the process is stuck: the runtime's watchdog task has not ticked for
//!   `admin.stuck_after_ms` (a task blocks the runtime's threads, or they starve), or the spool
//!   writer thread has had appends waiting that long without committing anything (a hung disk).
//!   A process whose runtime is stuck entirely does not answer at all, which a probe counts as a
//!   failure too. A spool that is full, or a broker that is down, is not a stuck process: the
//!   bridge is waiting for room, and a restart would not help.
//! - `/readyz` is 200 when every source accepts events and every sink is connected; the body
//!   lists each part and, for those that are not ready, why. It reads only state the sources and
//!   sinks keep anyway (no broker round trip per probe), and says what is wrong in fixed phrases:
//!   no broker address, no credentials.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use tokio_util::sync::CancellationToken;

use crate::dispatch::Dispatcher;
use crate::metrics::Metrics;
use crate::sources::Readiness;

/// How often the runtime watchdog ticks, at most.
const WATCHDOG_TICK: Duration = Duration::from_secs(1);

#[derive(Clone)]
pub struct AdminState {
    pub metrics: Arc<Metrics>,
    pub readiness: Arc<Readiness>,
    pub dispatcher: Dispatcher,
    pub liveness: Arc<Liveness>,
}

/// What `/healthz` judges: the runtime watchdog's last tick and the spool writer's progress.
#[derive(Debug)]
pub struct Liveness {
    origin: Instant,
    /// Milliseconds from `origin` to the watchdog's last tick.
    last_tick_ms: AtomicU64,
    stuck_after: Duration,
}

impl Liveness {
    pub fn new(stuck_after: Duration) -> Self {
        Self {
            origin: Instant::now(),
            last_tick_ms: AtomicU64::new(0),
            stuck_after,
        }
    }

    /// How often the watchdog ticks: well within `stuck_after`.
    fn tick_every(&self) -> Duration {
        (self.stuck_after / 4).clamp(Duration::from_millis(10), WATCHDOG_TICK)
    }

    /// Records a tick of the watchdog at `now`.
    pub fn tick(&self, now: Instant) {
        let ms = u64::try_from(now.saturating_duration_since(self.origin).as_millis())
            .unwrap_or(u64::MAX);
        self.last_tick_ms.fetch_max(ms, Ordering::Relaxed);
    }

    /// `Err` when the watchdog has not ticked for longer than `stuck_after` at `now`.
    pub fn check_runtime(&self, now: Instant) -> Result<(), String> {
        let last = self.origin + Duration::from_millis(self.last_tick_ms.load(Ordering::Relaxed));
        let silent = now.saturating_duration_since(last);
        if silent > self.stuck_after {
            return Err(format!(
                "runtime: the watchdog task has not run for {:.1} s",
                silent.as_secs_f64()
            ));
        }
        Ok(())
    }

    /// `Err` when the spool writer has had `pending` appends and made no progress since
    /// `progress` (Unix seconds) for longer than `stuck_after` at `now` (Unix seconds).
    pub fn check_spool_writer(&self, pending: i64, progress: f64, now: f64) -> Result<(), String> {
        let silent = now - progress;
        if pending > 0 && silent > self.stuck_after.as_secs_f64() {
            return Err(format!(
                "spool writer: {pending} append(s) waiting, nothing committed for {silent:.1} s"
            ));
        }
        Ok(())
    }
}

/// Ticks `liveness` on the runtime until `stop` is cancelled. Runs as an ordinary task, so it
/// ticks only while the runtime schedules tasks.
pub async fn watchdog(liveness: Arc<Liveness>, stop: CancellationToken) {
    let mut every = tokio::time::interval(liveness.tick_every());
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = every.tick() => liveness.tick(Instant::now()),
        }
    }
}

pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
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

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

async fn healthz(State(s): State<AdminState>) -> impl IntoResponse {
    let problems: Vec<String> = [
        s.liveness.check_runtime(Instant::now()),
        s.liveness.check_spool_writer(
            s.metrics.spool_writer_pending.get(),
            s.metrics.spool_writer_progress.get(),
            unix_now(),
        ),
    ]
    .into_iter()
    .filter_map(Result::err)
    .collect();
    if problems.is_empty() {
        (StatusCode::OK, "ok\n".to_owned())
    } else {
        tracing::error!(problems = %problems.join("; "), "health check failed: the bridge is stuck");
        (StatusCode::SERVICE_UNAVAILABLE, problems.join("\n") + "\n")
    }
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
    let mut sinks: Vec<_> = s.dispatcher.sinks().collect();
    sinks.sort_by(|a, b| a.name().cmp(b.name()));
    for sink in sinks {
        let status = sink.status();
        ready &= status.is_connected();
        lines.push(format!("sink:{}: {status}", sink.name()));
    }
    let code = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, lines.join("\n") + "\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runtime_is_stuck_only_after_the_watchdog_is_silent_too_long() {
        let l = Liveness::new(Duration::from_secs(10));
        let t0 = l.origin;
        l.tick(t0);
        assert!(l.check_runtime(t0 + Duration::from_secs(10)).is_ok());
        let err = l.check_runtime(t0 + Duration::from_secs(11)).unwrap_err();
        assert!(err.contains("runtime"), "{err}");
        l.tick(t0 + Duration::from_secs(11));
        assert!(l.check_runtime(t0 + Duration::from_secs(12)).is_ok());
        // A late tick never moves the clock back.
        l.tick(t0 + Duration::from_secs(5));
        assert!(l.check_runtime(t0 + Duration::from_secs(20)).is_ok());
    }

    #[test]
    fn spool_writer_is_stuck_only_with_work_waiting() {
        let l = Liveness::new(Duration::from_secs(30));
        // Idle for an hour: not stuck.
        assert!(l.check_spool_writer(0, 1000.0, 4600.0).is_ok());
        // Work waiting, progress within the limit.
        assert!(l.check_spool_writer(5, 1000.0, 1030.0).is_ok());
        // Work waiting, no progress for longer.
        let err = l.check_spool_writer(5, 1000.0, 1031.0).unwrap_err();
        assert!(
            err.contains("spool writer") && err.contains("5 append"),
            "{err}"
        );
    }

    /// The watchdog itself: a runtime whose only thread is blocked does not tick, and the check
    /// (made from another thread, as a probe would wait and time out) sees it.
    #[test]
    fn a_blocked_runtime_stops_the_watchdog() {
        let l = Arc::new(Liveness::new(Duration::from_millis(300)));
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let stop = CancellationToken::new();
        let (l2, s2) = (Arc::clone(&l), stop.clone());
        let runner = std::thread::spawn(move || {
            rt.block_on(async move {
                let dog = tokio::spawn(watchdog(l2, s2));
                // Healthy: the watchdog ticks while the runtime is free.
                tokio::time::sleep(Duration::from_millis(500)).await;
                // Then a task blocks the runtime's only thread.
                std::thread::sleep(Duration::from_millis(1500));
                tokio::time::sleep(Duration::from_millis(100)).await;
                dog.abort();
            });
        });
        std::thread::sleep(Duration::from_millis(400));
        assert!(l.check_runtime(Instant::now()).is_ok(), "ticks while free");
        std::thread::sleep(Duration::from_millis(1200));
        let err = l.check_runtime(Instant::now()).unwrap_err();
        assert!(err.contains("has not run"), "{err}");
        runner.join().unwrap();
        stop.cancel();
    }
}
