//! Dispatch: from an [`Envelope`] to every destination, at least once, in order per key.
//!
//! - A global semaphore bounds the events inside the bridge (`delivery.max_in_flight`); a source
//!   that submits while it is full waits (`submit`) or is told to come back later (`try_submit`).
//! - Each sink has one worker task. Events with the same key go to a sink one after another; events
//!   with different keys (or none) are published concurrently, so the sink pipelines.
//! - A retriable failure is retried with exponential backoff and jitter, holding back only the
//!   events of its own key; a fatal failure, or running out of attempts, writes a dead letter.
//! - The source's ack resolves when every destination delivered or durably dead-lettered the event;
//!   a dead letter that could be written nowhere leaves the event unacknowledged (`Retry`).
//! - Identity ([`identity`]): before an event is spooled or submitted, [`Dispatcher::identify`]
//!   decides which occurrence it is (a new change, a webhook retry, or the other source's copy of
//!   a change). Copies of one occurrence are published once: occurrence ids are remembered only
//!   after their delivery was confirmed, and a copy that arrives while its occurrence is in flight
//!   waits for that outcome. Content alone never makes an event a duplicate.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_util::task::TaskTracker;
use tracing::Instrument as _;

use crate::cloudevents::CloudEvent;
use crate::config::{Config, Unmatched};
use crate::dlq::{DeadLetter, DeadLetterWriter, Failures, IntendedDestination, ReasonKind};
use crate::event::{AckHandle, AckStatus, Envelope, Event, IdOrigin, SourceKind, TraceContext};
use crate::group_commit::Pace;
use crate::metrics::{
    Latency, Metrics, SinkLabels, SinkRouteLabels, SourceLabels, SourceReasonLabels,
};
use crate::router::{Destination, Router};
use crate::sinks::{DynSink, Message, Placement, SinkError, headers};
use crate::telemetry::trace::{EventSpan, Outcome, propagation, publish_span, with_trace};
use prometheus_client::metrics::counter::Counter;

/// How failed publishes are retried.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    pub max_attempts: u32,
    pub initial: Duration,
    pub max: Duration,
    /// Dead-letter after this long even with attempts left.
    pub max_elapsed: Option<Duration>,
}

impl RetryPolicy {
    pub fn from_config(cfg: &Config) -> Self {
        let d = &cfg.delivery;
        Self {
            max_attempts: d.max_attempts.max(1),
            initial: Duration::from_millis(d.backoff_initial_ms.max(1)),
            max: Duration::from_millis(d.backoff_max_ms.max(d.backoff_initial_ms.max(1))),
            max_elapsed: (d.max_elapsed_ms > 0).then(|| Duration::from_millis(d.max_elapsed_ms)),
        }
    }

    fn backoff(&self) -> impl Iterator<Item = Duration> + Send + use<> {
        crate::backoff::Backoff::new(self.initial, self.max)
    }
}

/// Why a submit did not happen; the envelope comes back so the source still owns it.
#[derive(Debug)]
pub enum SubmitError {
    /// `max_in_flight` events are inside the bridge (only from `try_submit`).
    Full(Envelope),
    /// The bridge is shutting down and takes no new events.
    Closed(Envelope),
}

/// What a dispatcher is built from.
pub struct DispatcherParts {
    pub router: Router,
    pub sinks: HashMap<String, DynSink>,
    pub dead_letters: Arc<DeadLetterWriter>,
    pub policy: RetryPolicy,
    pub max_in_flight: usize,
    pub identity: IdentityConfig,
    pub metrics: Arc<Metrics>,
}

/// The dispatcher: cheap to clone, shared by every source.
#[derive(Clone)]
pub struct Dispatcher {
    inner: Arc<Inner>,
}

struct Inner {
    router: ArcSwap<Router>,
    workers: ArcSwap<Workers>,
    sinks: HashMap<Arc<str>, DynSink>,
    permits: Arc<Semaphore>,
    max_in_flight: usize,
    closed: AtomicBool,
    shared: Arc<Shared>,
    tasks: TaskTracker,
    /// Occurrence ids in flight (with the copies that wait for their outcome) and delivered lately.
    ids: std::sync::Mutex<dedupe::Ids<Parked>>,
    /// Which occurrence a copy belongs to: webhook retries and cross-source pairing, in this
    /// process or shared by every replica.
    identities: IdentityStore,
}

/// What [`Dispatcher::identify`] decided for a copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub enum Identity {
    /// Submit it (its id is set).
    Publish,
    /// Another replica delivered (or dead-lettered) its occurrence: acknowledge it as delivered
    /// without submitting it ([`Dispatcher::covered`] counts it).
    Covered,
}

/// Each sink's worker queue, looked up once per destination (foldhash: no SipHash per message).
type Workers = HashMap<Arc<str>, mpsc::UnboundedSender<Job>, foldhash::fast::RandomState>;

/// What every delivery needs, shared by the workers.
struct Shared {
    policy: RetryPolicy,
    dead_letters: Arc<DeadLetterWriter>,
    metrics: Arc<Metrics>,
}

/// Held while an event is inside the bridge: releases its in-flight slot and records its latency.
struct InFlight {
    _permit: OwnedSemaphorePermit,
    metrics: Arc<Metrics>,
    received_at: Instant,
    source: SourceKind,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.metrics.in_flight.dec();
        self.metrics
            .receive_to_ack_of(self.source)
            .observe(self.received_at.elapsed());
    }
}

/// An admitted event not routed yet: holds its in-flight slot and its span.
struct Parked {
    env: Envelope,
    in_flight: InFlight,
    span: Arc<EventSpan>,
}

/// The parts of an envelope every destination's dead letter needs.
struct EventCtx {
    event: Arc<Event>,
    source: SourceKind,
    received_wall: SystemTime,
    /// The event span's W3C context when traces are exported, else the incoming one unchanged.
    trace: TraceContext,
    span: Arc<EventSpan>,
    _in_flight: InFlight,
}

impl EventCtx {
    /// `body`: what the destination would have published (a redacting route's redacted body);
    /// `None` for the original bytes.
    fn dead_letter(
        &self,
        destination: IntendedDestination,
        body: Option<&[u8]>,
        kind: ReasonKind,
        reason: String,
        failures: &Failures,
    ) -> DeadLetter {
        DeadLetter::for_event_body(
            &self.event,
            body.unwrap_or(&self.event.raw),
            self.source,
            self.received_wall,
            &self.trace,
            destination,
            kind,
            reason,
            failures,
        )
    }
}

struct Job {
    msg: Message,
    route: Arc<str>,
    ack: AckHandle,
    ctx: Arc<EventCtx>,
}

/// A delivery in flight; resolves to how it ended and its place in its key's lane.
type Delivery = Pin<Box<dyn Future<Output = worker::Finished> + Send>>;

impl Dispatcher {
    /// Starts one worker per sink. Must be called inside a Tokio runtime.
    pub fn start(parts: DispatcherParts) -> Self {
        let shared = Arc::new(Shared {
            policy: parts.policy,
            dead_letters: parts.dead_letters,
            metrics: parts.metrics,
        });
        let tasks = TaskTracker::new();
        let mut workers = Workers::default();
        let mut sinks = HashMap::new();
        for (name, sink) in parts.sinks {
            let name: Arc<str> = Arc::from(name);
            sink.count_broker_duplicates(
                shared
                    .metrics
                    .broker_duplicates
                    .get_or_create(&SinkLabels {
                        sink: name.to_string(),
                    })
                    .clone(),
            );
            let (tx, rx) = mpsc::unbounded_channel();
            tasks.spawn(worker::run_worker(
                Arc::clone(&sink),
                rx,
                Arc::clone(&shared),
            ));
            workers.insert(Arc::clone(&name), tx);
            sinks.insert(name, sink);
        }
        let max = parts.max_in_flight.max(1);
        // A delivered occurrence is remembered as long as a copy of it may still come: a webhook
        // retry (the replay cache's time) or the other source's copy (the pair window).
        let remember = parts.identity.replay_ttl.max(parts.identity.pair_window);
        let capacity = parts.identity.capacity as u64;
        let identities = IdentityStore::new(parts.identity, Arc::clone(&shared.metrics));
        Self {
            inner: Arc::new(Inner {
                router: ArcSwap::from_pointee(parts.router),
                workers: ArcSwap::from_pointee(workers),
                sinks,
                permits: Arc::new(Semaphore::new(max)),
                max_in_flight: max,
                closed: AtomicBool::new(false),
                shared,
                tasks,
                ids: std::sync::Mutex::new(dedupe::Ids::new(remember, capacity)),
                identities,
            }),
        }
    }

    /// Whether copies from the WebSocket stream pair with webhook copies (both sources on).
    pub fn pairs_sources(&self) -> bool {
        self.inner.identities.config().pair_sources
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.inner.shared.metrics
    }

    pub fn dead_letters(&self) -> &Arc<DeadLetterWriter> {
        &self.inner.shared.dead_letters
    }

    pub fn sinks(&self) -> impl Iterator<Item = &DynSink> {
        self.inner.sinks.values()
    }

    /// The routing table in use now.
    pub fn router(&self) -> Arc<Router> {
        self.inner.router.load_full()
    }

    /// Swaps the routing table atomically: events already routed finish on the old one.
    pub fn swap_router(&self, router: Router) {
        self.inner.router.store(Arc::new(router));
    }

    /// Keeps identity state in the shared store from now on (call it once, before sources start).
    #[cfg(feature = "redis")]
    pub fn use_shared_store(&self, store: Arc<redis_store::RedisStore>) {
        self.inner.identities.share(store);
    }

    /// The shared store's state, when one is used: `Err` says since when it fails.
    pub fn shared_store_health(&self) -> Option<Result<(), String>> {
        self.inner.identities.health()
    }

    /// Decides which occurrence `event` is, from `source` and (webhooks) its signed delivery id,
    /// and gives it that occurrence's id. Call it once per copy, before the copy is submitted; a
    /// spool replay keeps the id it was spooled with and is not identified again.
    ///
    /// With the shared store a copy whose occurrence another replica owns waits (at most
    /// `dedupe.redis.owner_wait_ms`) for that replica to finish it, and is then
    /// [`Identity::Covered`]. A store that fails or is slow makes the copy a new occurrence.
    pub async fn identify(
        &self,
        event: &mut Event,
        source: SourceKind,
        delivery_id: Option<&str>,
    ) -> Identity {
        if event.id_origin == IdOrigin::Body {
            // Fondo's own occurrence id: every copy carries it already.
            return Identity::Publish;
        }
        if delivery_id.is_none() && !self.inner.identities.config().pair_sources {
            // One source and no delivery id: the copy is a new occurrence, nothing to look up.
            return Identity::Publish;
        }
        let copy = identity::Copy {
            source,
            content_key: event.content_key,
            object: event.object_ref(),
            delivery_id,
            id: &event.event_id,
        };
        let store = &self.inner.identities;
        let Some(found) = store.resolve(copy).await else {
            return Identity::Publish;
        };
        Self::adopt(event, &found.resolved);
        if found.owner_elsewhere
            && (found.done || store.await_owner(&event.event_id, delivery_id).await)
        {
            if let Some(d) = delivery_id.filter(|_| !found.done) {
                // This delivery's own entry may point at the other replica's occurrence: say it
                // is done (still naming that replica), for its next retry.
                store.mark_done(Mark {
                    occurrence: Arc::clone(&event.event_id),
                    content_key: event.content_key,
                    delivery: Some(Arc::from(d)),
                    owner: Some(found.owner),
                });
            }
            return Identity::Covered;
        }
        if store.is_shared() {
            // Published here: this process marks it done when it is.
            event.done_mark = Some(crate::event::DoneMark {
                content_key: event.content_key,
                delivery: delivery_id.map(Arc::from),
            });
        }
        Identity::Publish
    }

    fn adopt(event: &mut Event, r: &identity::Resolved) {
        event.late = r.late;
        if r.how != Resolution::New {
            event.event_id = Arc::clone(&r.id);
            event.id_origin = IdOrigin::Given;
        }
    }

    /// Counts a copy acknowledged as [`Identity::Covered`].
    pub fn covered(&self, source: SourceKind) {
        let m = &self.inner.shared.metrics;
        m.identity_covered
            .get_or_create(&SourceLabels {
                source: source.as_str().into(),
            })
            .inc();
        m.deduplicated_from(source).inc();
        m.acked_as(source, AckStatus::Delivered).inc();
    }

    /// Saves the webhook deliveries whose occurrence was delivered (see [`snapshot`]); call it
    /// after the drain. Returns how many were saved.
    pub fn save_identity(&self, path: &std::path::Path) -> std::io::Result<usize> {
        let clock = snapshot::Clock::now();
        let entries: Vec<snapshot::Entry> = {
            let deliveries = self.inner.identities.memory().deliveries(Instant::now());
            let ids = self.ids();
            deliveries
                .into_iter()
                .filter_map(|d| {
                    let delivered = ids.delivered_at(&d.occurrence)?;
                    Some(snapshot::Entry {
                        d: d.id.to_string(),
                        o: d.occurrence.to_string(),
                        k: format!("{:032x}", d.content_key),
                        seen_ms: clock.to_unix_ms(d.seen),
                        delivered_ms: clock.to_unix_ms(delivered),
                    })
                })
                .collect()
        };
        snapshot::write(path, &entries)?;
        Ok(entries.len())
    }

    /// Restores what [`Dispatcher::save_identity`] saved; call it before any source starts.
    /// Returns how many deliveries are remembered again.
    pub fn load_identity(&self, path: &std::path::Path) -> std::io::Result<usize> {
        let (entries, bad) = snapshot::read(path)?;
        if bad > 0 {
            tracing::warn!(path = %path.display(), lines = bad, "identity snapshot lines that do not parse were skipped");
        }
        let clock = snapshot::Clock::now();
        let mut n = 0;
        for e in entries {
            let (Some(seen), Some(delivered), Ok(content_key)) = (
                clock.to_instant(e.seen_ms),
                clock.to_instant(e.delivered_ms),
                u128::from_str_radix(&e.k, 16),
            ) else {
                continue;
            };
            let occurrence = snapshot::arc(e.o);
            self.ids()
                .restore_delivered(Arc::clone(&occurrence), delivered);
            self.inner
                .identities
                .memory()
                .restore_delivery(identity::Delivery {
                    id: snapshot::arc(e.d),
                    occurrence,
                    content_key,
                    seen,
                });
            n += 1;
        }
        Ok(n)
    }

    /// Unpaired occurrences waiting for their copy from the other source.
    pub fn unpaired(&self) -> usize {
        self.inner.identities.memory().unpaired()
    }

    /// Events inside the bridge now.
    pub fn in_flight(&self) -> usize {
        self.inner.max_in_flight - self.inner.permits.available_permits()
    }

    pub fn is_closed(&self) -> bool {
        self.inner.closed.load(Ordering::Acquire)
    }

    /// Hands an event to the bridge, waiting while `max_in_flight` events are inside (backpressure).
    pub async fn submit(&self, env: Envelope) -> Result<(), SubmitError> {
        if self.is_closed() {
            return Err(SubmitError::Closed(env));
        }
        let Ok(permit) = Arc::clone(&self.inner.permits).acquire_owned().await else {
            return Err(SubmitError::Closed(env));
        };
        self.admit(env, permit);
        Ok(())
    }

    /// Like [`Dispatcher::submit`] but never waits: `Full` when the bridge is at capacity.
    pub fn try_submit(&self, env: Envelope) -> Result<(), SubmitError> {
        if self.is_closed() {
            return Err(SubmitError::Closed(env));
        }
        match Arc::clone(&self.inner.permits).try_acquire_owned() {
            Ok(permit) => {
                self.admit(env, permit);
                Ok(())
            }
            Err(tokio::sync::TryAcquireError::NoPermits) => Err(SubmitError::Full(env)),
            Err(tokio::sync::TryAcquireError::Closed) => Err(SubmitError::Closed(env)),
        }
    }

    /// Dead-letters bytes that never became an event, and tells the source what to answer:
    /// `Delivered` once the dead letter is durable, `Retry` when it could be written nowhere.
    pub async fn dead_letter_unparseable(&self, dl: DeadLetter) -> AckStatus {
        self.inner
            .shared
            .metrics
            .rejected
            .get_or_create(&SourceReasonLabels {
                source: dl.source.clone(),
                reason: "unparseable".into(),
            })
            .inc();
        let span = tracing::info_span!(
            target: "fondo_bridge::dispatch",
            "dead_letter",
            fondo.reason_kind = dl.reason_kind.as_str(),
            fondo.source = %dl.source,
            fondo.event_id = %dl.event_id,
            fondo.written = tracing::field::Empty,
            otel.status_code = "error",
        );
        if !span.is_disabled() {
            let incoming = TraceContext {
                traceparent: dl.traceparent.clone(),
                tracestate: None,
            };
            if let Some(parent) = propagation::extract(&incoming) {
                let _ = tracing_opentelemetry::OpenTelemetrySpanExt::set_parent(&span, parent);
            }
        }
        let written = self
            .inner
            .shared
            .dead_letters
            .write(&dl)
            .instrument(span.clone())
            .await
            .is_ok();
        span.record("fondo.written", written);
        if written {
            AckStatus::Delivered
        } else {
            AckStatus::Retry
        }
    }

    fn admit(&self, env: Envelope, permit: OwnedSemaphorePermit) {
        let span = Arc::new(EventSpan::start(&env));
        let m = &self.inner.shared.metrics;
        m.received_from(env.source).inc();
        m.in_flight.inc();
        let in_flight = InFlight {
            _permit: permit,
            metrics: Arc::clone(m),
            received_at: env.received_at,
            source: env.source,
        };
        self.admit_tracked(Parked {
            env,
            in_flight,
            span,
        });
    }

    /// Publishes an event unless its occurrence was delivered already (then it is acknowledged as
    /// a copy of it) or is in flight now (then it waits for that outcome, parked without a task).
    /// The id is an occurrence id ([`Dispatcher::identify`]), never the content: a body that repeats
    /// a delivered one is published again.
    fn admit_tracked(&self, p: Parked) {
        let id = Arc::clone(&p.env.event.event_id);
        let admitted = {
            // A poisoned table is still consistent: every update is a single map or queue step.
            let mut ids = self.ids();
            ids.admit(&id, p, Instant::now())
        };
        let p = match admitted {
            dedupe::Admission::Publish(p) => p,
            dedupe::Admission::Duplicate(p) => {
                self.deduplicated(p.env, p.in_flight, &p.span);
                return;
            }
            dedupe::Admission::Parked => return,
        };
        let Parked {
            env,
            in_flight,
            span,
        } = p;
        let Envelope {
            event,
            ack,
            source,
            received_at,
            received_wall,
            trace,
        } = env;
        let this = self.clone();
        let span2 = Arc::clone(&span);
        let done_mark = event.done_mark.clone();
        // Runs where the last destination finishes: remembers a delivered id, acknowledges the
        // source, then settles the twins that waited: duplicates when delivered, otherwise the
        // first of them becomes the new attempt and the rest wait for it.
        //
        // A delivered id is remembered only where another copy of its occurrence can still come:
        // a webhook retry, a twin from the other source, a dead letter replayed again. A copy from
        // the stream alone has none (the stream has no retries and its ids are minted at parse;
        // a spool replay comes only after a restart, which this memory does not survive), and
        // remembering it held up to `dedupe.capacity` ids for nothing: 50 MiB after 25 s at
        // 10 000 events/s.
        let remember = source != SourceKind::WebSocket || this.pairs_sources();
        let tracked = AckHandle::on_done(move |status| {
            let delivered = status == AckStatus::Delivered;
            if let Some(mark) = done_mark
                && status != AckStatus::Retry
            {
                this.mark_done(&id, mark);
            }
            let twins = this
                .ids()
                .settle(&id, delivered && remember, Instant::now());
            this.count_ack(source, status);
            span2.finish(status);
            ack.finish(status);
            for twin in twins {
                if status == AckStatus::Delivered {
                    this.deduplicated(twin.env, twin.in_flight, &twin.span);
                } else {
                    this.admit_tracked(twin);
                }
            }
        });
        self.route(
            Envelope {
                event,
                ack: tracked,
                source,
                received_at,
                received_wall,
                trace,
            },
            in_flight,
            span,
        );
    }

    /// Tells the other replicas that this process finished an occurrence (shared store).
    fn mark_done(&self, id: &Arc<str>, mark: crate::event::DoneMark) {
        self.inner.identities.mark_done(Mark {
            occurrence: Arc::clone(id),
            content_key: mark.content_key,
            delivery: mark.delivery,
            owner: None,
        });
    }

    fn ids(&self) -> std::sync::MutexGuard<'_, dedupe::Ids<Parked>> {
        self.inner
            .ids
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn deduplicated(&self, env: Envelope, in_flight: InFlight, span: &EventSpan) {
        if let Some(mark) = &env.event.done_mark
            && mark.delivery.is_some()
        {
            // The occurrence is done; this copy's own delivery id says so too, for its
            // retries on other replicas.
            self.mark_done(&env.event.event_id, mark.clone());
        }
        let m = &self.inner.shared.metrics;
        m.deduplicated_from(env.source).inc();
        tracing::debug!(event_id = %env.event.event_id, source = %env.source, "another copy of an occurrence already delivered: not published again");
        span.mark(Outcome::Duplicate);
        span.finish(AckStatus::Delivered);
        self.count_ack(env.source, AckStatus::Delivered);
        env.ack.finish(AckStatus::Delivered);
        drop(in_flight);
    }

    fn count_ack(&self, source: SourceKind, status: AckStatus) {
        let m = &self.inner.shared.metrics;
        m.acked_as(source, status).inc();
        if status == AckStatus::Delivered {
            m.count_delivered();
        }
    }

    /// Hands each destination of an event to its sink's worker; what cannot go anywhere (no
    /// route, a destination that cannot be rendered, a sink that is not running) is dead-lettered.
    fn route(&self, env: Envelope, in_flight: InFlight, span: Arc<EventSpan>) {
        let router = self.inner.router.load();
        let routed = router.route(&env.event);
        if !routed.filtered_by.is_empty() {
            let m = &self.inner.shared.metrics;
            m.filtered.inc_by(routed.filtered_by.len() as u64);
        }
        let ctx = Arc::new(EventCtx {
            event: Arc::clone(&env.event),
            source: env.source,
            received_wall: env.received_wall,
            trace: span.trace_context(&env.trace),
            span,
            _in_flight: in_flight,
        });
        if routed.is_unmatched() {
            self.unmatched(env, ctx, &routed.filtered_by, router.unmatched_policy());
            return;
        }
        let mut acks = env
            .ack
            .split(routed.destinations.len() + routed.failures.len());
        for f in routed.failures {
            let Some(ack) = acks.pop() else { break };
            let dest = IntendedDestination {
                route: Some(f.route.to_string()),
                sink: Some(f.sink.to_string()),
                topic: None,
                key: None,
            };
            self.spawn_dead_letter(
                ack,
                Arc::clone(&ctx),
                (dest, Some(f.body)),
                ReasonKind::Render,
                f.reason,
                Failures::default(),
            );
        }
        let workers = self.inner.workers.load();
        for d in routed.destinations {
            let Some(ack) = acks.pop() else { break };
            let route = Arc::clone(&d.route);
            let (msg, sink_name) = build_message(d, &ctx);
            let job = Job {
                msg,
                route,
                ack,
                ctx: Arc::clone(&ctx),
            };
            match workers.get(&sink_name) {
                Some(tx) => {
                    if let Err(mpsc::error::SendError(job)) = tx.send(job) {
                        // Workers are gone (shutdown): the source must keep the event.
                        job.ack.finish(AckStatus::Retry);
                    }
                }
                None => self.no_sink(job, &sink_name),
            }
        }
    }

    /// An event no route took: a heartbeat is done with; anything else is dropped or
    /// dead-lettered as `unmatched` says.
    fn unmatched(
        &self,
        env: Envelope,
        ctx: Arc<EventCtx>,
        filtered_by: &[Arc<str>],
        policy: Unmatched,
    ) {
        if env.event.event_type.is_heartbeat() {
            env.ack.finish(AckStatus::Delivered);
            return;
        }
        let m = &self.inner.shared.metrics;
        m.unmatched.inc();
        match policy {
            Unmatched::Drop => {
                m.dropped_unmatched.inc();
                ctx.span.mark(Outcome::Dropped);
                env.ack.finish(AckStatus::Delivered);
            }
            Unmatched::DeadLetter => {
                let reason = if filtered_by.is_empty() {
                    format!("no route matches event type {}", env.event.event_type)
                } else {
                    format!(
                        "every route matching {} filtered it out ({})",
                        env.event.event_type,
                        filtered_by.join(", ")
                    )
                };
                self.spawn_dead_letter(
                    env.ack,
                    ctx,
                    (IntendedDestination::default(), None),
                    ReasonKind::Unmatched,
                    reason,
                    Failures::default(),
                );
            }
        }
    }

    /// A destination whose sink has no worker (it is not running): dead-lettered.
    fn no_sink(&self, job: Job, sink_name: &str) {
        let dest = IntendedDestination {
            route: Some(job.route.to_string()),
            sink: Some(sink_name.to_owned()),
            topic: Some(job.msg.topic.clone()),
            key: job.msg.key.clone(),
        };
        self.spawn_dead_letter(
            job.ack,
            job.ctx,
            (dest, Some(job.msg.payload.clone())),
            ReasonKind::NoSink,
            format!("sink {sink_name} is not running"),
            Failures::default(),
        );
    }

    /// `dest`: where the event was going, and the body it would have had there (`None`: the
    /// original bytes).
    fn spawn_dead_letter(
        &self,
        ack: AckHandle,
        ctx: Arc<EventCtx>,
        dest: (IntendedDestination, Option<bytes::Bytes>),
        kind: ReasonKind,
        reason: String,
        failures: Failures,
    ) {
        let shared = Arc::clone(&self.inner.shared);
        self.inner.tasks.spawn(async move {
            let status = write_dead_letter(&shared, &ctx, dest, kind, reason, &failures).await;
            ack.finish(status);
        });
    }

    /// Stops intake and waits until every event inside the bridge is acknowledged, or `deadline`.
    /// Returns how many events were still in flight (0 when drained).
    pub async fn drain(&self, deadline: Instant) -> usize {
        self.inner.closed.store(true, Ordering::Release);
        loop {
            let left = self.in_flight();
            if left == 0 || Instant::now() >= deadline {
                return left;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// After [`Dispatcher::drain`]: ends the workers and waits for them, then closes every sink.
    pub async fn shutdown(&self, deadline: Instant) {
        self.inner.closed.store(true, Ordering::Release);
        self.inner.workers.store(Arc::new(Workers::default()));
        self.inner.tasks.close();
        let left = deadline.saturating_duration_since(Instant::now());
        if tokio::time::timeout(left, self.inner.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!("dispatch workers still busy at the shutdown deadline");
        }
        for sink in self.inner.sinks.values() {
            if let Err(e) = sink.close(deadline).await {
                tracing::warn!(sink = sink.name(), error = %e, "sink did not close cleanly");
            }
        }
    }
}

fn build_message(d: Destination, ctx: &EventCtx) -> (Message, Arc<str>) {
    let e = &ctx.event;
    let mut h = Vec::with_capacity(6 + d.headers.len());
    // `to_owned` of the `str`, not `to_string`: for an `Arc<str>` that goes through `fmt`.
    h.push((headers::EVENT_ID.to_owned(), (*e.event_id).to_owned()));
    h.push((
        headers::EVENT_TYPE.to_owned(),
        e.event_type.as_str().to_owned(),
    ));
    if let Some(c) = &e.client_id {
        h.push((headers::CLIENT_ID.to_owned(), (**c).to_owned()));
    }
    h.push((headers::SOURCE.to_owned(), ctx.source.as_str().to_owned()));
    if e.late {
        h.push((headers::LATE.to_owned(), "true".to_owned()));
    }
    if let Some(tp) = &ctx.trace.traceparent {
        h.push((headers::TRACEPARENT.to_owned(), tp.clone()));
    }
    if let Some(ts) = &ctx.trace.tracestate {
        h.push((headers::TRACESTATE.to_owned(), ts.clone()));
    }
    h.extend(d.headers);
    let message_id = Arc::from(crate::event::message_id(&e.event_id, &d.route, &d.topic));
    let cloudevent = d.cloudevents.map(|ce| {
        Arc::new(CloudEvent {
            mode: ce.mode,
            id: Arc::clone(&e.event_id),
            source: ce.source,
            event_type: ce.event_type,
            subject: e.object_ref().map(str::to_owned),
            time: humantime::format_rfc3339_millis(ctx.received_wall).to_string(),
            partition_key: d.key.clone(),
            traceparent: ctx.trace.traceparent.clone(),
            tracestate: ctx.trace.tracestate.clone(),
        })
    });
    (
        Message {
            message_id,
            topic: d.topic,
            key: d.key,
            headers: h,
            payload: d.body,
            event_id: Arc::clone(&e.event_id),
            // The parser accepted the original bytes; a redacted body is serde_json's output.
            payload_is_json: true,
            // The WebSocket source reads on while its (spooled) events are delivered; a webhook
            // sender and a replay wait for each answer.
            pace: match ctx.source {
                SourceKind::WebSocket => Pace::Patient,
                SourceKind::Webhook | SourceKind::Replay => Pace::Prompt,
            },
            cloudevent,
        },
        d.sink,
    )
}

/// The metric series one delivery updates.
struct Series {
    published: Counter,
    latency: Latency,
}

/// Publishes one job with retries, in its key's lane (`ticket`): a retry waits until the lane's
/// earlier messages are settled.
async fn deliver(
    sink: DynSink,
    job: Job,
    shared: Arc<Shared>,
    series: Series,
    ticket: Option<worker::Ticket>,
) -> worker::Finished {
    let Job {
        msg,
        route,
        ack,
        ctx,
    } = job;
    let one = Publication {
        sink: &sink,
        route: &route,
        msg: &msg,
        ctx: &ctx,
    };
    let lane = ticket.as_ref().map(|t| (t.key, t.seq));
    let placed_once = AtomicBool::new(false);
    let on_placed = |generation: u64| {
        if let Some(t) = &ticket
            && !placed_once.swap(true, Ordering::Relaxed)
        {
            t.placed(generation);
        }
    };
    let mut after = ticket.as_ref().and_then(|t| t.after);
    // Whether every earlier message of the lane is settled (so a retry needs no turn).
    let mut in_turn = ticket.is_none();
    let policy = &shared.policy;
    let started = Instant::now();
    let mut backoff = policy.backoff();
    let mut failures = Failures::default();
    let (kind, reason) = loop {
        failures.attempts += 1;
        let t0 = Instant::now();
        let placement = Placement {
            after,
            placed: &on_placed,
        };
        match one.attempt(failures.attempts, &placement).await {
            Ok(()) => {
                series.latency.observe(t0.elapsed());
                series.published.inc();
                ack.finish(AckStatus::Delivered);
                return worker::Finished {
                    lane,
                    delivered: true,
                    attempts: failures.attempts,
                };
            }
            Err(SinkError::Fatal(r)) => {
                failures.record(&r);
                tracing::warn!(
                    sink = sink.name(), route = %route, topic = %msg.topic,
                    event_id = %msg.event_id, error = %r,
                    "publish refused permanently; dead-lettering"
                );
                break (ReasonKind::Fatal, r);
            }
            Err(SinkError::Retriable(r)) => {
                failures.record(&r);
                let out_of_time = policy
                    .max_elapsed
                    .is_some_and(|max| started.elapsed() >= max);
                if failures.attempts >= policy.max_attempts || out_of_time {
                    tracing::warn!(
                        sink = sink.name(), route = %route, topic = %msg.topic,
                        event_id = %msg.event_id, attempts = failures.attempts, error = %r,
                        "publish still failing after the last attempt; dead-lettering"
                    );
                    break (
                        ReasonKind::Exhausted,
                        format!("gave up after {} attempts: {r}", failures.attempts),
                    );
                }
                if !in_turn {
                    if let Some(t) = &ticket {
                        t.wait_turn().await;
                    }
                    in_turn = true;
                    after = None;
                }
                let delay = backoff.next().unwrap_or(policy.max);
                one.pause(&shared.metrics, failures.attempts, delay, &r)
                    .await;
            }
        }
    };
    let dest = IntendedDestination {
        route: Some(route.to_string()),
        sink: Some(sink.name().to_owned()),
        topic: Some(msg.topic.clone()),
        key: msg.key.clone(),
    };
    let status = write_dead_letter(
        &shared,
        &ctx,
        (dest, Some(msg.payload.clone())),
        kind,
        reason,
        &failures,
    )
    .await;
    ack.finish(status);
    worker::Finished {
        lane,
        delivered: false,
        attempts: failures.attempts,
    }
}

/// One message on its way to one sink: what each attempt and each pause between attempts needs.
struct Publication<'a> {
    sink: &'a DynSink,
    route: &'a Arc<str>,
    msg: &'a Message,
    ctx: &'a EventCtx,
}

impl Publication<'_> {
    /// One publish, inside its `publish` span (marked with the error when it fails).
    async fn attempt(&self, attempt: u32, placement: &Placement<'_>) -> Result<(), SinkError> {
        let span = publish_span(
            &self.ctx.span,
            self.sink.system(),
            self.sink.name(),
            self.route,
            self.msg,
            attempt,
        );
        // A copy only when the publish span is exported and its context goes into the headers.
        let traced = with_trace(&span, self.msg);
        let result = self
            .sink
            .publish_placed(traced.as_ref().unwrap_or(self.msg), placement)
            .instrument(span.clone())
            .await;
        if let Err(e) = &result {
            span.record("otel.status_code", "error");
            span.record(
                "error.type",
                if e.is_retriable() {
                    "retriable"
                } else {
                    "fatal"
                },
            );
            span.record("otel.status_description", e.reason());
        }
        result
    }

    /// Counts a retry and waits `delay` inside a `retry` span.
    async fn pause(&self, metrics: &Metrics, attempt: u32, delay: Duration, reason: &str) {
        let sink = self.sink.name();
        metrics
            .retried
            .get_or_create(&SinkRouteLabels {
                sink: sink.into(),
                route: self.route.to_string(),
            })
            .inc();
        tracing::debug!(
            sink, topic = %self.msg.topic, event_id = %self.msg.event_id,
            attempt, error = %reason, "publish failed; retrying"
        );
        let retry = tracing::info_span!(
            target: "fondo_bridge::dispatch",
            parent: self.ctx.span.span(),
            "retry",
            fondo.sink = sink,
            fondo.route = %self.route,
            fondo.attempt = attempt,
            fondo.delay_ms = delay.as_millis() as u64,
            "error.type" = "retriable",
            fondo.error = %reason,
        );
        tokio::time::sleep(delay).instrument(retry).await;
    }
}

/// Writes one dead letter inside a `dead_letter` span; `Retry` when it could be written nowhere.
async fn write_dead_letter(
    shared: &Shared,
    ctx: &EventCtx,
    (dest, body): (IntendedDestination, Option<bytes::Bytes>),
    kind: ReasonKind,
    reason: String,
    failures: &Failures,
) -> AckStatus {
    let span = tracing::info_span!(
        target: "fondo_bridge::dispatch",
        parent: ctx.span.span(),
        "dead_letter",
        fondo.reason_kind = kind.as_str(),
        fondo.reason = %reason,
        fondo.route = dest.route.as_deref(),
        fondo.sink = dest.sink.as_deref(),
        fondo.topic = dest.topic.as_deref(),
        fondo.attempts = failures.attempts,
        fondo.written = tracing::field::Empty,
        otel.status_code = "error",
    );
    ctx.span.mark(Outcome::DeadLettered);
    let dl = ctx.dead_letter(dest, body.as_deref(), kind, reason, failures);
    let written = shared
        .dead_letters
        .write(&dl)
        .instrument(span.clone())
        .await
        .is_ok();
    span.record("fondo.written", written);
    if written {
        AckStatus::Delivered
    } else {
        AckStatus::Retry
    }
}

mod dedupe;
pub mod identity;
#[cfg(feature = "redis")]
mod redis_batch;
#[cfg(feature = "redis")]
pub mod redis_store;
mod snapshot;
pub mod store;
mod worker;

pub use identity::{IdentityConfig, Resolution};
use store::{IdentityStore, Mark};

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_lanes;
