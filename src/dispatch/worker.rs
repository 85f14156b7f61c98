//! One sink's worker: the per-key lanes that keep each key's messages in order on the sink.
//!
//! - **A lane per key** (by hash: two keys that collide share a lane, which keeps both orders).
//!   The key's messages start one after another; messages without a key start at once.
//! - **When the next one starts**: after the previous one's confirm, or, on a sink that places
//!   messages in an order it keeps ([`crate::sinks::Sink::publish_placed`]; Kafka), as soon as the
//!   previous one is placed and the next goes to the same topic. Then several messages of one key
//!   are in flight, in the broker's order.
//! - **When one of them fails**: no new message of the lane starts until every failed one is
//!   settled, and a failed message retries only after every earlier message of its lane is
//!   settled (delivered or dead-lettered). So retries land in the key's order too.
//! - **What that cannot undo**: a later message the broker confirmed before an earlier one failed
//!   (on Kafka: the earlier one timed out in librdkafka's queue, `message.timeout.ms`, and the
//!   later one went out). When the earlier one is then delivered by a retry, the lane counts an
//!   order inversion (`fondo_bridge_order_inversions_total`) and logs it.

use std::collections::{HashMap, VecDeque};
use std::hash::BuildHasher as _;
use std::sync::Arc;

use futures::StreamExt as _;
use futures::stream::FuturesUnordered;
use prometheus_client::metrics::counter::Counter;
use tokio::sync::{mpsc, oneshot};

use super::{Delivery, Job, Series, Shared, deliver};
use crate::metrics::{SinkLabels, SinkRouteLabels};
use crate::sinks::DynSink;

/// What a delivery tells its lane while it runs.
pub(super) enum LaneEvent {
    /// Placed in the sink's order `generation`: the lane may start its next message.
    Placed { key: u64, seq: u64, generation: u64 },
    /// Failed and will retry; `turn` is sent when every earlier message of the lane is settled.
    Faltered {
        key: u64,
        seq: u64,
        turn: oneshot::Sender<()>,
    },
}

/// A delivery's place in its lane.
pub(super) struct Ticket {
    pub key: u64,
    pub seq: u64,
    /// The order the lane's previous, unsettled, message was placed in.
    pub after: Option<u64>,
    pub events: mpsc::UnboundedSender<LaneEvent>,
}

impl Ticket {
    /// Tells the lane the message was placed (the first placement only counts).
    pub fn placed(&self, generation: u64) {
        let _ = self.events.send(LaneEvent::Placed {
            key: self.key,
            seq: self.seq,
            generation,
        });
    }

    /// Waits until every earlier message of the lane is settled. A lane that is gone (the worker
    /// stopped) does not hold the retry back.
    pub async fn wait_turn(&self) {
        let (turn, rx) = oneshot::channel();
        if self
            .events
            .send(LaneEvent::Faltered {
                key: self.key,
                seq: self.seq,
                turn,
            })
            .is_ok()
        {
            let _ = rx.await;
        }
    }
}

/// How a delivery ended.
pub(super) struct Finished {
    /// Its lane and place in it; `None` for a message without a key.
    pub lane: Option<(u64, u64)>,
    pub delivered: bool,
    pub attempts: u32,
}

/// A started message of a lane.
struct Slot {
    seq: u64,
    /// The topic, by hash: pipelining only holds within one topic.
    topic: u64,
    /// The order it was placed in, once it was.
    placed: Option<u64>,
    /// Failed at least once and not settled yet.
    faltered: bool,
    /// Waiting for its turn to retry.
    turn: Option<oneshot::Sender<()>>,
    /// Settled: `Some(true)` delivered, `Some(false)` dead-lettered or given back.
    settled: Option<bool>,
}

/// One key's messages: those waiting to start, and those started, in order.
#[derive(Default)]
struct Lane {
    waiting: VecDeque<Job>,
    started: VecDeque<Slot>,
}

impl Lane {
    /// Whether the next waiting message (on `topic`) may start, and after which order.
    fn may_start(&self, topic: u64) -> Option<Option<u64>> {
        let Some(last) = self.started.back() else {
            return Some(None);
        };
        if last.topic != topic || self.started.iter().any(|s| s.faltered) {
            return None;
        }
        last.placed.map(Some)
    }

    fn slot(&mut self, seq: u64) -> Option<&mut Slot> {
        self.started.iter_mut().rev().find(|s| s.seq == seq)
    }

    /// Drops the settled slots at the front and gives the new front its turn.
    fn advance(&mut self) {
        while self.started.front().is_some_and(|s| s.settled.is_some()) {
            self.started.pop_front();
        }
        if let Some(turn) = self.started.front_mut().and_then(|s| s.turn.take()) {
            let _ = turn.send(());
        }
    }
}

/// What starting a delivery needs: the sink, its metric series, and the lanes' event channel.
struct Starter {
    sink: DynSink,
    shared: Arc<Shared>,
    hasher: foldhash::fast::RandomState,
    latency: crate::metrics::Latency,
    /// This sink's series per route, resolved once per route rather than once per message.
    published: HashMap<Arc<str>, Counter, foldhash::fast::RandomState>,
    next_seq: u64,
    events: mpsc::UnboundedSender<LaneEvent>,
}

impl Starter {
    fn start(&mut self, job: Job, ticket: Option<Ticket>) -> Delivery {
        let (sink, shared) = (&self.sink, &self.shared);
        let counter = self
            .published
            .entry(Arc::clone(&job.route))
            .or_insert_with(|| {
                shared
                    .metrics
                    .published
                    .get_or_create(&SinkRouteLabels {
                        sink: sink.name().into(),
                        route: job.route.to_string(),
                    })
                    .clone()
            })
            .clone();
        let series = Series {
            published: counter,
            latency: self.latency.clone(),
        };
        Box::pin(deliver(
            Arc::clone(sink),
            job,
            Arc::clone(shared),
            series,
            ticket,
        ))
    }

    /// Starts the lane's waiting messages while it may.
    fn pump(&mut self, lane: &mut Lane, key: u64, running: &mut FuturesUnordered<Delivery>) {
        while let Some(job) = lane.waiting.front() {
            let topic = self.hasher.hash_one(job.msg.topic.as_str());
            let Some(after) = lane.may_start(topic) else {
                break;
            };
            let Some(job) = lane.waiting.pop_front() else {
                break;
            };
            self.next_seq += 1;
            let seq = self.next_seq;
            lane.started.push_back(Slot {
                seq,
                topic,
                placed: None,
                faltered: false,
                turn: None,
                settled: None,
            });
            let ticket = Ticket {
                key,
                seq,
                after,
                events: self.events.clone(),
            };
            running.push(self.start(job, Some(ticket)));
        }
    }
}

pub(super) async fn run_worker(
    sink: DynSink,
    mut rx: mpsc::UnboundedReceiver<Job>,
    shared: Arc<Shared>,
) {
    let (events_tx, mut events) = mpsc::unbounded_channel::<LaneEvent>();
    let inversions = shared
        .metrics
        .order_inversions
        .get_or_create(&SinkLabels {
            sink: sink.name().into(),
        })
        .clone();
    let mut starter = Starter {
        latency: shared.metrics.publish_latency_of(sink.name()),
        sink: Arc::clone(&sink),
        shared,
        hasher: foldhash::fast::RandomState::default(),
        published: HashMap::default(),
        next_seq: 0,
        events: events_tx,
    };
    // Keys by hash: two keys that collide are merely kept in order together, and no key is copied
    // per message.
    let mut lanes: HashMap<u64, Lane, foldhash::fast::RandomState> = HashMap::default();
    let mut running: FuturesUnordered<Delivery> = FuturesUnordered::new();
    let mut open = true;
    loop {
        tokio::select! {
            biased;
            Some(done) = running.next(), if !running.is_empty() => {
                let Some((key, seq)) = done.lane else { continue };
                let Some(lane) = lanes.get_mut(&key) else { continue };
                let later_delivered = lane
                    .started
                    .iter()
                    .any(|s| s.seq > seq && s.settled == Some(true));
                if let Some(slot) = lane.slot(seq) {
                    slot.settled = Some(done.delivered);
                    slot.faltered = false;
                }
                if done.delivered && done.attempts > 1 && later_delivered {
                    inversions.inc();
                    tracing::warn!(
                        sink = sink.name(),
                        attempts = done.attempts,
                        "a message was delivered by a retry after a later message of its key \
                         (it failed after the later one was placed); the key's order is \
                         inverted on the broker once"
                    );
                }
                lane.advance();
                starter.pump(lane, key, &mut running);
                if lane.started.is_empty() && lane.waiting.is_empty() {
                    lanes.remove(&key);
                }
            }
            Some(event) = events.recv(), if !running.is_empty() => match event {
                LaneEvent::Placed { key, seq, generation } => {
                    if let Some(lane) = lanes.get_mut(&key) {
                        if let Some(slot) = lane.slot(seq) {
                            slot.placed = Some(generation);
                        }
                        starter.pump(lane, key, &mut running);
                    }
                }
                LaneEvent::Faltered { key, seq, turn } => {
                    let Some(lane) = lanes.get_mut(&key) else {
                        let _ = turn.send(());
                        continue;
                    };
                    let first = lane.started.front().is_some_and(|s| s.seq == seq);
                    match lane.slot(seq) {
                        Some(slot) => {
                            slot.faltered = true;
                            if first {
                                let _ = turn.send(());
                            } else {
                                slot.turn = Some(turn);
                            }
                        }
                        None => {
                            let _ = turn.send(());
                        }
                    }
                }
            },
            job = rx.recv(), if open => match job {
                Some(job) => match job.msg.key.as_deref().map(|k| starter.hasher.hash_one(k)) {
                    Some(key) => {
                        let lane = lanes.entry(key).or_default();
                        lane.waiting.push_back(job);
                        starter.pump(lane, key, &mut running);
                    }
                    None => running.push(starter.start(job, None)),
                },
                None => open = false,
            },
            else => break,
        }
    }
}
