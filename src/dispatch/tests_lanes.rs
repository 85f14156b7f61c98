//! Lanes on a sink that places messages in an order it keeps (as Kafka's idempotent producer
//! does): a key's messages are pipelined, and a failure of placed messages (a replaced producer,
//! a message that timed out) never reorders a key silently.

use super::tests::{event, rig_dyn as rig, route};
use super::*;
use crate::event::AckReceiver;
use crate::sinks::{Placement, Sink, SinkStatus};
use async_trait::async_trait;
use std::collections::VecDeque;
use tokio::sync::oneshot;

type Outcome = oneshot::Sender<Result<(), SinkError>>;

/// A broker log behind an ordered client: `publish_placed` appends to one queue in call order,
/// with the client's generation, and resolves when the test confirms or fails it. Confirms go in
/// queue order, like a partition's.
#[derive(Default)]
struct OrderedSink {
    state: std::sync::Mutex<LogState>,
}

#[derive(Default)]
struct LogState {
    generation: u64,
    pending: VecDeque<(Message, Outcome)>,
    delivered: Vec<Message>,
    /// The most messages of one key pending at once.
    most_per_key: usize,
    refused_for_generation: usize,
}

impl OrderedSink {
    fn state(&self) -> std::sync::MutexGuard<'_, LogState> {
        self.state.lock().unwrap()
    }

    fn pending(&self) -> usize {
        self.state().pending.len()
    }

    /// Confirms everything pending, in order.
    fn confirm_all(&self) {
        let mut st = self.state();
        while let Some((m, tx)) = st.pending.pop_front() {
            st.delivered.push(m);
            let _ = tx.send(Ok(()));
        }
    }

    /// The client is replaced: everything pending fails (retriable), the generation moves on.
    fn replace_client(&self) {
        let mut st = self.state();
        st.generation += 1;
        for (_, tx) in st.pending.drain(..) {
            let _ = tx.send(Err(SinkError::Retriable("purged".into())));
        }
    }

    /// The oldest pending message times out; the rest stay.
    fn time_out_first(&self) {
        if let Some((_, tx)) = self.state().pending.pop_front() {
            let _ = tx.send(Err(SinkError::Retriable("timed out".into())));
        }
    }

    fn delivered_of(&self, key: &str) -> Vec<u64> {
        self.state()
            .delivered
            .iter()
            .filter(|m| m.key.as_deref() == Some(key))
            .map(super::tests::seq_of)
            .collect()
    }
}

#[async_trait]
impl Sink for OrderedSink {
    fn name(&self) -> &str {
        "log"
    }
    fn system(&self) -> &'static str {
        "test"
    }
    async fn publish(&self, msg: &Message) -> Result<(), SinkError> {
        self.publish_placed(msg, &Placement::ALONE).await
    }
    async fn publish_placed(
        &self,
        msg: &Message,
        placement: &Placement<'_>,
    ) -> Result<(), SinkError> {
        let rx = {
            let mut st = self.state();
            if placement.after.is_some_and(|g| g != st.generation) {
                st.refused_for_generation += 1;
                return Err(SinkError::Retriable("client replaced".into()));
            }
            let (tx, rx) = oneshot::channel();
            st.pending.push_back((msg.clone(), tx));
            let n = st.pending.iter().filter(|(m, _)| m.key == msg.key).count();
            st.most_per_key = st.most_per_key.max(n);
            (placement.placed)(st.generation);
            rx
        };
        rx.await
            .unwrap_or_else(|_| Err(SinkError::Retriable("gone".into())))
    }
    async fn healthcheck(&self) -> Result<(), SinkError> {
        Ok(())
    }
    fn status(&self) -> SinkStatus {
        SinkStatus::Connected
    }
    async fn close(&self, _deadline: Instant) -> Result<(), SinkError> {
        Ok(())
    }
}

/// Confirms what is pending until every ack resolved; all must be delivered.
async fn settle(sink: &OrderedSink, rxs: Vec<AckReceiver>) {
    let all = async {
        for rx in rxs {
            assert_eq!(rx.wait().await, AckStatus::Delivered);
        }
    };
    tokio::pin!(all);
    loop {
        sink.confirm_all();
        tokio::select! {
            () = &mut all => return,
            () = tokio::time::sleep(Duration::from_millis(2)) => {}
        }
    }
}

/// Waits until `n` messages are pending on the sink.
async fn until_pending(sink: &OrderedSink, n: usize) {
    let t0 = Instant::now();
    while sink.pending() < n {
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "only {} of {n} messages were placed",
            sink.pending()
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

fn inversions(d: &Dispatcher) -> u64 {
    d.metrics()
        .order_inversions
        .get_or_create(&crate::metrics::SinkLabels { sink: "log".into() })
        .get()
}

const KEYS: [&str; 3] = ["k1", "k2", "k3"];

/// A dispatcher with one catch-all route to an [`OrderedSink`].
fn log_rig(max_attempts: u32) -> (Arc<OrderedSink>, super::tests::Rig) {
    let sink = Arc::new(OrderedSink::default());
    let rig = rig(
        vec![route("all", &["*"], "log", "t")],
        vec![("log", sink.clone() as DynSink)],
        None,
        max_attempts,
        1000,
    );
    (sink, rig)
}

/// Each key's 20 messages were delivered once each, in order.
fn assert_each_key_in_order(sink: &OrderedSink) {
    for key in KEYS {
        assert_eq!(
            sink.delivered_of(key),
            (0..20).collect::<Vec<u64>>(),
            "{key}: each message once, in order"
        );
    }
}

async fn submit_rounds(d: &Dispatcher, rounds: std::ops::Range<u32>) -> Vec<AckReceiver> {
    let mut rxs = Vec::new();
    for seq in rounds {
        for key in KEYS {
            rxs.push(super::tests::send(d, event("order.update", key, seq)).await);
        }
    }
    rxs
}

#[tokio::test]
async fn a_placing_sink_gets_a_keys_messages_before_their_confirms_and_keeps_their_order() {
    let (sink, rig) = log_rig(5);
    let rxs = submit_rounds(&rig.d, 0..20).await;
    // Nothing is confirmed yet, and every message is already with the sink.
    until_pending(&sink, 60).await;
    settle(&sink, rxs).await;
    assert_each_key_in_order(&sink);
    assert_eq!(
        sink.state().most_per_key,
        20,
        "a key's 20 messages were in flight at once"
    );
    assert_eq!(inversions(&rig.d), 0);
}

#[tokio::test]
async fn a_replaced_client_fails_what_it_held_and_the_retries_keep_each_keys_order() {
    let (sink, rig) = log_rig(10);
    // Ten of each key placed and unconfirmed when the client is replaced; ten more arrive after.
    let mut rxs = submit_rounds(&rig.d, 0..10).await;
    until_pending(&sink, 30).await;
    sink.replace_client();
    rxs.extend(submit_rounds(&rig.d, 10..20).await);
    settle(&sink, rxs).await;
    assert_each_key_in_order(&sink);
    assert_eq!(inversions(&rig.d), 0);
}

#[tokio::test]
async fn a_message_that_failed_after_a_later_one_was_confirmed_is_counted_as_an_inversion() {
    let (sink, rig) = log_rig(5);
    let mut rxs = Vec::new();
    for seq in 0..5 {
        rxs.push(super::tests::send(&rig.d, event("order.update", "k1", seq)).await);
    }
    until_pending(&sink, 5).await;
    // The oldest times out in the client; the four after it are confirmed before its retry.
    sink.time_out_first();
    sink.confirm_all();
    settle(&sink, rxs).await;
    assert_eq!(sink.delivered_of("k1"), vec![1, 2, 3, 4, 0]);
    assert_eq!(
        inversions(&rig.d),
        1,
        "the inversion is counted, not hidden"
    );
}

#[tokio::test]
async fn a_key_whose_messages_go_to_two_topics_waits_for_each_confirm_between_them() {
    let sink = Arc::new(OrderedSink::default());
    let mut r = route("all", &["order.update"], "log", "t");
    let other = route("other", &["order.create"], "log", "u");
    r.name = "updates".into();
    let rig = rig(
        vec![r, other],
        vec![("log", sink.clone() as DynSink)],
        None,
        5,
        1000,
    );
    let mut rxs = Vec::new();
    rxs.push(super::tests::send(&rig.d, event("order.create", "k1", 0)).await);
    rxs.push(super::tests::send(&rig.d, event("order.update", "k1", 1)).await);
    until_pending(&sink, 1).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(
        sink.pending(),
        1,
        "the update (another topic) waits for the create's confirm"
    );
    settle(&sink, rxs).await;
    assert_eq!(sink.delivered_of("k1"), vec![0, 1]);
}
