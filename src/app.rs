//! Builds the bridge from config (sinks, router, dispatcher, sources, admin server) and owns the
//! ordered shutdown: stop intake, drain in-flight events under a deadline, close the sinks.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admin;
use crate::config::{Config, SinkConfig};
use crate::dispatch::Dispatcher;
use crate::event::ParseOptions;
use crate::metrics::Metrics;
use crate::plan::Plan;
use crate::sinks::deferred::{Connect, DeferredSink, RetryConnect};
use crate::sinks::{DynSink, SinkError};
use crate::sources::Readiness;

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("sink {name} ({kind}) could not start: {error}")]
    Sink {
        name: String,
        kind: &'static str,
        error: SinkError,
    },
    #[error("routing table: {0}")]
    Routes(String),
    #[error("dedupe store: {0}")]
    Store(String),
    #[error("source {0} could not start: {1}")]
    Source(&'static str, String),
    #[error("cannot listen on {addr}: {error}")]
    Listen {
        addr: SocketAddr,
        error: std::io::Error,
    },
    #[error(
        "{0} event(s) were still in flight at the drain deadline; they stay unacknowledged (spooled or un-answered) and will be delivered again"
    )]
    DrainTimeout(usize),
}

/// Connects one configured sink.
async fn connect_sink(name: &str, sc: &SinkConfig) -> Result<DynSink, SinkError> {
    let sink: DynSink = match sc {
        SinkConfig::File(f) => Arc::new(crate::sinks::file::FileSink::new(name, f)?),
        #[cfg(feature = "kafka")]
        SinkConfig::Kafka(k) => Arc::new(crate::sinks::kafka::KafkaSink::connect(name, k).await?),
        #[cfg(feature = "rabbitmq")]
        SinkConfig::Rabbitmq(r) => {
            Arc::new(crate::sinks::rabbitmq::RabbitMqSink::connect(name, r).await?)
        }
        #[cfg(feature = "nats")]
        SinkConfig::Nats(n) => Arc::new(crate::sinks::nats::NatsSink::connect(name, n).await?),
        #[allow(unreachable_patterns)]
        other => {
            return Err(SinkError::Fatal(format!(
                "this build has no {} support",
                other.type_name()
            )));
        }
    };
    Ok(sink)
}

/// How a broker sink that cannot connect at start keeps trying: the sink's own reconnect
/// settings. `None` for sinks without a broker (a file sink that cannot start is configuration).
fn retry_connect(sc: &SinkConfig) -> Option<RetryConnect> {
    let ms = Duration::from_millis;
    match sc {
        SinkConfig::File(_) => None,
        SinkConfig::Kafka(k) => Some(RetryConnect {
            wait: ms(k.connect_timeout_ms),
            initial: ms(500),
            max: Duration::from_secs(30),
        }),
        SinkConfig::Rabbitmq(r) => Some(RetryConnect {
            wait: ms(r.reconnect_wait_ms),
            initial: ms(r.reconnect_initial_ms.max(1)),
            max: ms(r.reconnect_max_ms.max(1)),
        }),
        SinkConfig::Nats(n) => Some(RetryConnect {
            wait: ms(n.reconnect_wait_ms),
            initial: ms(100),
            max: ms(n.reconnect_max_ms.max(100)),
        }),
    }
}

/// Starts every configured sink; the first failure stops with a clear error. For commands that
/// need the brokers now (`dlq replay`).
pub async fn build_sinks(cfg: &Config) -> Result<HashMap<String, DynSink>, AppError> {
    let mut sinks: HashMap<String, DynSink> = HashMap::new();
    for (name, sc) in &cfg.sinks {
        let sink = connect_sink(name, sc)
            .await
            .map_err(|error| AppError::Sink {
                name: name.clone(),
                kind: sc.type_name(),
                error,
            })?;
        tracing::info!(sink = %name, kind = sc.type_name(), "sink ready");
        sinks.insert(name.clone(), sink);
    }
    Ok(sinks)
}

/// Starts every configured sink for the bridge, all at once (start-up waits for the slowest, not
/// the sum). A broker that cannot be reached, or is not ready (a RabbitMQ exchange not declared
/// yet), does not stop start-up: its sink connects in the background ([`DeferredSink`]) while the
/// sources run. A configuration error (invalid URL, unreadable TLS or secret file, refused
/// credentials) stops start-up with a clear error.
pub async fn start_sinks(cfg: &Config) -> Result<HashMap<String, DynSink>, AppError> {
    let attempts = futures::future::join_all(
        cfg.sinks
            .iter()
            .map(|(name, sc)| async move { (name, sc, connect_sink(name, sc).await) }),
    )
    .await;
    let mut sinks: HashMap<String, DynSink> = HashMap::new();
    for (name, sc, attempt) in attempts {
        let sink = match (attempt, retry_connect(sc)) {
            (Ok(sink), _) => {
                tracing::info!(sink = %name, kind = sc.type_name(), "sink ready");
                sink
            }
            (Err(error @ SinkError::Retriable(_)), Some(retry)) => {
                tracing::warn!(sink = %name, kind = sc.type_name(), error = %error.reason(),
                    "sink cannot connect yet; starting without it and connecting in the background \
                     (webhooks that need it get 503, WebSocket events are spooled and wait for it)");
                let (n, c) = (name.clone(), sc.clone());
                let connect: Connect = Box::new(move || {
                    let (n, c) = (n.clone(), c.clone());
                    Box::pin(async move { connect_sink(&n, &c).await })
                });
                DeferredSink::start(name, sc.type_name(), retry, &error, connect)
            }
            (Err(error), _) => {
                return Err(AppError::Sink {
                    name: name.clone(),
                    kind: sc.type_name(),
                    error,
                });
            }
        };
        sinks.insert(name.clone(), sink);
    }
    Ok(sinks)
}

/// A running bridge.
pub struct Bridge {
    pub dispatcher: Dispatcher,
    pub metrics: Arc<Metrics>,
    pub readiness: Arc<Readiness>,
    pub admin_addr: Option<SocketAddr>,
    pub webhook_addr: Option<SocketAddr>,
    cfg: Config,
    tasks: TaskTracker,
    intake: CancellationToken,
}

/// Where the webhook replay cache is kept across a clean restart (`dedupe.snapshot_file`), when
/// the webhook source is on.
fn identity_snapshot_path(cfg: &Config) -> Option<std::path::PathBuf> {
    if cfg.dedupe.store != crate::config::DedupeStore::Memory {
        // The shared store outlives a restart itself.
        return None;
    }
    cfg.sources
        .webhook
        .as_ref()
        .and(cfg.dedupe.snapshot_file.clone())
}

/// Keeps identity state on Redis when `dedupe.store: redis` (connections are made on first use:
/// an unreachable Redis does not keep the bridge from starting).
fn attach_shared_store(
    cfg: &Config,
    dispatcher: &Dispatcher,
    metrics: &Arc<Metrics>,
) -> Result<(), AppError> {
    if cfg.dedupe.store != crate::config::DedupeStore::Redis {
        return Ok(());
    }
    #[cfg(feature = "redis")]
    {
        let store = crate::dispatch::redis_store::RedisStore::new(
            &cfg.dedupe.redis,
            crate::dispatch::IdentityConfig::from_config(cfg),
            Arc::clone(metrics),
        )
        .map_err(|e| AppError::Store(e.to_string()))?;
        tracing::info!(prefix = %cfg.dedupe.redis.prefix, owner = store.owner(),
            "identity state is shared on Redis");
        dispatcher.use_shared_store(store);
        Ok(())
    }
    #[cfg(not(feature = "redis"))]
    {
        let _ = (dispatcher, metrics);
        Err(AppError::Store(
            "dedupe.store: redis needs a build with the `redis` feature".into(),
        ))
    }
}

impl Bridge {
    /// Builds and starts everything `cfg` describes (its routing table is compiled here; see
    /// [`Bridge::start_plan`]).
    pub async fn start(cfg: Config) -> Result<Self, AppError> {
        let plan = Plan::new(cfg).map_err(|e| AppError::Routes(e.problems().join("; ")))?;
        Self::start_plan(plan).await
    }

    /// Builds and starts everything the plan describes. Sources start last, once every sink is
    /// connected or connecting in the background (see [`start_sinks`]).
    pub async fn start_plan(plan: Plan) -> Result<Self, AppError> {
        let metrics = Arc::new(Metrics::new());
        let readiness = Arc::new(Readiness::default());
        let tasks = TaskTracker::new();
        let intake = CancellationToken::new();
        let sinks = start_sinks(plan.config()).await?;
        let dead_letters = plan.dead_letter_writer(plan.dead_letter_sink(&sinks), &metrics);
        let dispatcher = plan.dispatcher(sinks, dead_letters, &metrics);
        let parse = plan.parse_options();
        let cfg = plan.into_config();
        attach_shared_store(&cfg, &dispatcher, &metrics)?;
        if let Some(path) = identity_snapshot_path(&cfg) {
            match dispatcher.load_identity(&path) {
                Ok(n) => tracing::info!(path = %path.display(), deliveries = n,
                    "webhook deliveries of the last run remembered again (their retries are recognised)"),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => tracing::warn!(path = %path.display(), error = %e,
                    "cannot read the identity snapshot; retries of earlier deliveries will be published again"),
            }
        }
        let mut admin_addr = None;
        if let Some(addr) = cfg.admin.listen {
            let liveness = Arc::new(admin::Liveness::new(Duration::from_millis(
                cfg.admin.stuck_after_ms,
            )));
            tasks.spawn(admin::watchdog(Arc::clone(&liveness), intake.clone()));
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|error| AppError::Listen { addr, error })?;
            admin_addr = listener.local_addr().ok();
            let app = admin::router(admin::AdminState {
                metrics: Arc::clone(&metrics),
                readiness: Arc::clone(&readiness),
                dispatcher: dispatcher.clone(),
                liveness,
            });
            // The admin server outlives intake: probes keep answering while the bridge drains.
            let stop = intake.clone();
            tasks.spawn(async move {
                let serve = axum::serve(listener, app).with_graceful_shutdown(async move {
                    stop.cancelled().await;
                    // Keep answering probes a little into the drain.
                    tokio::time::sleep(Duration::from_millis(200)).await;
                });
                if let Err(e) = serve.await {
                    tracing::error!(error = %e, "admin server failed");
                }
            });
            tracing::info!(addr = ?admin_addr, "admin server listening (/metrics, /healthz, /readyz)");
        }

        let mut bridge = Self {
            dispatcher,
            metrics,
            readiness,
            admin_addr,
            webhook_addr: None,
            cfg,
            tasks,
            intake,
        };
        if let Err(e) = bridge.start_sources(parse).await {
            // Stops what did start (the admin server, the watchdog).
            bridge.intake.cancel();
            return Err(e);
        }
        Ok(bridge)
    }

    async fn start_sources(&mut self, parse: ParseOptions) -> Result<(), AppError> {
        sources::start(self, parse).await
    }

    /// Reloads the routing table from `path` on SIGHUP and whenever the file's content changes
    /// (polled, so Kubernetes ConfigMap symlink swaps are seen). A new table is validated in full
    /// and swapped atomically; an invalid one is rejected with a log line and a metric, and the old
    /// one keeps running. Changes outside `routes`/`unmatched` are reported as needing a restart.
    pub fn watch_config(&self, path: std::path::PathBuf, poll: Duration) {
        let dispatcher = self.dispatcher.clone();
        let metrics = Arc::clone(&self.metrics);
        let stop = self.intake.clone();
        let running = self.cfg.clone();
        self.tasks.spawn(async move {
            reload::watch(path, poll, running, dispatcher, metrics, stop).await;
        });
    }

    /// The config the bridge runs with.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// Stops intake, drains in-flight events until the configured deadline, closes the sinks.
    /// `Err(DrainTimeout)` when events were left: they were not acknowledged, so nothing is lost.
    pub async fn shutdown(self) -> Result<(), AppError> {
        let deadline = Instant::now() + Duration::from_millis(self.cfg.delivery.drain_timeout_ms);
        tracing::info!(
            in_flight = self.dispatcher.in_flight(),
            "shutting down: intake stopped, draining"
        );
        self.intake.cancel();
        let left = self.dispatcher.drain(deadline).await;
        if let Some(path) = identity_snapshot_path(&self.cfg) {
            let saved = path
                .parent()
                .map_or(Ok(()), crate::private_fs::create_dir_all)
                .and_then(|()| self.dispatcher.save_identity(&path));
            match saved {
                Ok(n) => {
                    tracing::info!(path = %path.display(), deliveries = n, "webhook deliveries saved for the next start")
                }
                Err(e) => tracing::warn!(path = %path.display(), error = %e,
                    "cannot save the identity snapshot; after the restart, retries of deliveries made now will be published again"),
            }
        }
        self.dispatcher.shutdown(deadline).await;
        self.tasks.close();
        let rest = deadline.saturating_duration_since(Instant::now()) + Duration::from_millis(500);
        if tokio::time::timeout(rest, self.tasks.wait()).await.is_err() {
            tracing::warn!("some source tasks did not stop before the deadline");
        }
        if left > 0 {
            tracing::error!(left, "drain deadline reached with events in flight");
            return Err(AppError::DrainTimeout(left));
        }
        tracing::info!("drained; all sinks closed");
        Ok(())
    }
}

mod reload {
    use super::*;
    use sha2::Digest as _;

    fn digest(path: &std::path::Path) -> Option<Vec<u8>> {
        std::fs::read(path)
            .ok()
            .map(|b| sha2::Sha256::digest(&b).to_vec())
    }

    pub(super) async fn watch(
        path: std::path::PathBuf,
        poll: Duration,
        running: Config,
        dispatcher: Dispatcher,
        metrics: Arc<Metrics>,
        stop: CancellationToken,
    ) {
        #[cfg(unix)]
        let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
        let mut last = digest(&path);
        let mut tick = tokio::time::interval(poll.max(Duration::from_millis(50)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            #[cfg(unix)]
            let hup_recv = async {
                match hup.as_mut() {
                    Some(h) => {
                        h.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            #[cfg(not(unix))]
            let hup_recv = std::future::pending::<()>();
            let forced = tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => false,
                _ = hup_recv => true,
            };
            let now = digest(&path);
            if !forced && now == last {
                continue;
            }
            last = now;
            reload_once(&path, &running, &dispatcher, &metrics, forced);
        }
    }

    /// One reload attempt; returns whether a new table was swapped in.
    pub(crate) fn reload_once(
        path: &std::path::Path,
        running: &Config,
        dispatcher: &Dispatcher,
        metrics: &Metrics,
        forced: bool,
    ) -> bool {
        let trigger = if forced { "SIGHUP" } else { "file change" };
        let plan = match Plan::load(path) {
            Ok(p) => p,
            Err(e) => {
                metrics.reload_failures.inc();
                tracing::error!(
                    %trigger,
                    path = %path.display(),
                    problems = %e.problems().join("; "),
                    "routing reload rejected: the new config is invalid; the previous routes keep running"
                );
                return false;
            }
        };
        let missing: Vec<String> = plan
            .router()
            .sinks()
            .iter()
            .filter(|s| !running.sinks.contains_key(&***s))
            .map(|s| format!("no sink named {s:?} is running"))
            .collect();
        if !missing.is_empty() {
            metrics.reload_failures.inc();
            tracing::error!(
                %trigger,
                problems = %missing.join("; "),
                "routing reload rejected (routes may only use sinks that are running); the previous routes keep running"
            );
            return false;
        }
        let cfg = plan.config();
        let router = plan.router().clone();
        let mut restart = Vec::new();
        if cfg.sources != running.sources {
            restart.push("sources");
        }
        if cfg.sinks != running.sinks {
            restart.push("sinks");
        }
        if cfg.dead_letter != running.dead_letter {
            restart.push("dead_letter");
        }
        if cfg.delivery != running.delivery {
            restart.push("delivery");
        }
        if cfg.spool != running.spool
            || cfg.admin != running.admin
            || cfg.telemetry != running.telemetry
        {
            restart.push("spool/admin/telemetry");
        }
        if !restart.is_empty() {
            tracing::warn!(
                sections = %restart.join(", "),
                "config changes outside the routing table need a restart to take effect"
            );
        }
        let n = router.route_count();
        dispatcher.swap_router(router);
        metrics.reloads.inc();
        tracing::info!(%trigger, routes = n, "routing table reloaded");
        true
    }
}

/// With several replicas (the Helm chart's StatefulSet), each takes the client ids whose index `i`
/// satisfies `i % FONDO_BRIDGE_REPLICAS == ordinal`, the ordinal being the number after the last `-`
/// of `FONDO_BRIDGE_POD_NAME`: every stream has exactly one consumer.
fn shard(
    mut ws: crate::config::WebSocketSourceConfig,
) -> Result<crate::config::WebSocketSourceConfig, AppError> {
    let replicas = std::env::var("FONDO_BRIDGE_REPLICAS").ok();
    let pod = std::env::var("FONDO_BRIDGE_POD_NAME").ok();
    let Some((ordinal, replicas)) = shard_of(replicas.as_deref(), pod.as_deref())
        .map_err(|e| AppError::Source("websocket", e))?
    else {
        return Ok(ws);
    };
    let all = std::mem::take(&mut ws.client_ids);
    ws.client_ids = all
        .into_iter()
        .enumerate()
        .filter(|(i, _)| i % replicas == ordinal)
        .map(|(_, c)| c)
        .collect();
    tracing::info!(replicas, ordinal, client_ids = ?ws.client_ids, "WebSocket client ids sharded across replicas");
    Ok(ws)
}

/// `(ordinal, replicas)` when this replica reads a share of the client ids; `None` when it reads
/// them all (no `FONDO_BRIDGE_REPLICAS`, or 1). Inconsistent values are refused: a silently wrong
/// share would leave streams unread or read twice.
fn shard_of(replicas: Option<&str>, pod: Option<&str>) -> Result<Option<(usize, usize)>, String> {
    let pod = pod.map(str::trim).filter(|p| !p.is_empty());
    let Some(raw) = replicas.map(str::trim).filter(|v| !v.is_empty()) else {
        return match pod {
            None => Ok(None),
            Some(pod) => Err(format!(
                "FONDO_BRIDGE_POD_NAME={pod:?} is set but FONDO_BRIDGE_REPLICAS is not: set both (the Helm chart does) or neither"
            )),
        };
    };
    let replicas: usize =
        raw.parse().ok().filter(|n| *n >= 1).ok_or_else(|| {
            format!("FONDO_BRIDGE_REPLICAS must be a whole number >= 1, not {raw:?}")
        })?;
    if replicas == 1 {
        return Ok(None);
    }
    let pod = pod.ok_or_else(|| {
        format!(
            "FONDO_BRIDGE_REPLICAS={replicas} needs FONDO_BRIDGE_POD_NAME (a StatefulSet pod name ending in -<ordinal>)"
        )
    })?;
    let ordinal: usize = pod
        .rsplit('-')
        .next()
        .and_then(|o| o.parse().ok())
        .ok_or_else(|| {
            format!(
                "FONDO_BRIDGE_POD_NAME {pod:?} does not end in -<ordinal> (a StatefulSet pod name)"
            )
        })?;
    if ordinal >= replicas {
        return Err(format!(
            "pod ordinal {ordinal} (from FONDO_BRIDGE_POD_NAME {pod:?}) is not below FONDO_BRIDGE_REPLICAS={replicas}: \
             update FONDO_BRIDGE_REPLICAS with the replica count, or some streams would be read twice"
        ));
    }
    Ok(Some((ordinal, replicas)))
}

#[cfg(test)]
mod shard_tests {
    use super::shard_of;

    #[test]
    fn unset_or_one_replica_reads_everything() {
        assert_eq!(shard_of(None, None), Ok(None));
        assert_eq!(shard_of(Some(" "), None), Ok(None));
        assert_eq!(shard_of(Some("1"), None), Ok(None));
    }

    #[test]
    fn ordinal_and_replicas_from_the_statefulset() {
        assert_eq!(
            shard_of(Some("3"), Some("fondo-bridge-2")),
            Ok(Some((2, 3)))
        );
        assert_eq!(
            shard_of(Some("2"), Some("fondo-bridge-0")),
            Ok(Some((0, 2)))
        );
    }

    #[test]
    fn inconsistent_values_are_refused_with_the_reason() {
        for (replicas, pod, says) in [
            (None, Some("fondo-bridge-3"), "FONDO_BRIDGE_REPLICAS is not"),
            (Some("two"), Some("b-0"), "whole number"),
            (Some("0"), Some("b-0"), "whole number"),
            (Some("3"), None, "needs FONDO_BRIDGE_POD_NAME"),
            (Some("3"), Some("bridge"), "does not end in -<ordinal>"),
            (Some("3"), Some("fondo-bridge-3"), "is not below"),
        ] {
            let err = shard_of(replicas, pod).expect_err("refused");
            assert!(err.contains(says), "{replicas:?} {pod:?}: {err}");
        }
    }
}

/// Starting the sources lives apart so each source's wiring stays in one place.
mod sources {
    use super::*;
    use crate::sources::webhook::WebhookSource;

    pub(super) async fn start(bridge: &mut Bridge, parse: ParseOptions) -> Result<(), AppError> {
        let ws = match bridge.cfg.sources.websocket.clone() {
            Some(ws) => Some(shard(ws)?),
            None => None,
        };
        if ws.as_ref().is_some_and(|ws| ws.client_ids.is_empty()) {
            // More replicas than streams: this one takes webhooks only (and pairs them with the
            // streams the other replicas read, through the shared store).
            tracing::info!("no WebSocket stream is this replica's; it serves webhooks only");
        }
        if let Some(ws) = ws.filter(|ws| !ws.client_ids.is_empty()) {
            let source = crate::sources::websocket::WebSocketSource::new(
                ws,
                bridge.cfg.spool.clone(),
                parse,
                bridge.dispatcher.clone(),
                Arc::clone(&bridge.readiness),
            )
            .map_err(|e| AppError::Source("websocket", e.to_string()))?;
            let stop = bridge.intake.clone();
            bridge.tasks.spawn(async move {
                if let Err(e) = source.run(stop).await {
                    tracing::error!(error = %e, "websocket source failed");
                }
            });
        }
        if let Some(wh) = bridge.cfg.sources.webhook.clone() {
            let source = WebhookSource::new(
                wh.clone(),
                bridge.cfg.event.clone(),
                bridge.dispatcher.clone(),
                Arc::clone(&bridge.readiness),
            )
            .map_err(|e| AppError::Source("webhook", e.to_string()))?;
            let listener = tokio::net::TcpListener::bind(wh.listen)
                .await
                .map_err(|error| AppError::Listen {
                    addr: wh.listen,
                    error,
                })?;
            bridge.webhook_addr = listener.local_addr().ok();
            let stop = bridge.intake.clone();
            bridge.tasks.spawn(async move {
                if let Err(e) = source.run(listener, stop).await {
                    tracing::error!(error = %e, "webhook source failed");
                }
            });
        }
        Ok(())
    }
}
