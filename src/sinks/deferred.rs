//! A sink whose broker could not be reached when the bridge started. It stands in for the real
//! sink from the start, so the bridge runs (the WebSocket stream is read and spooled, webhooks are
//! answered) while the broker comes up, and it connects in the background:
//!
//! - **Connecting**: the sink's own `connect` is tried again with exponential backoff and jitter
//!   ([`crate::backoff`]) until it succeeds or the sink is closed; every failed attempt is logged with its
//!   reason. A refusal that looks like configuration (credentials, TLS) is retried too: the broker
//!   answered, so it may be fixed on its side, and exiting would lose the stream meanwhile.
//! - **Publishing before the connection**: a message from the WebSocket source
//!   ([`Pace::Patient`]: it is spooled, and the source reads on) waits for the connection without
//!   a limit and costs no delivery attempt, so everything spooled meanwhile is delivered once the
//!   broker is there. The in-flight limit (`delivery.max_in_flight`) bounds how many wait; beyond
//!   it the source pauses reading. Any other message (a dead letter, a replay; webhooks are
//!   refused earlier with 503) waits up to the sink's `reconnect_wait` and then fails as
//!   retriable, like a publish on a connection that dropped.
//! - **Connected**: every call goes to the real sink; its status, health check and close are the
//!   real sink's.
//! - **Status**: `not connected: cannot connect yet, retrying` (or `refused by the broker,
//!   retrying`), without the broker's address; the log holds the full reason.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock, Weak};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use prometheus_client::metrics::counter::Counter;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::{DynSink, Message, Placement, Sink, SinkError, SinkStatus};
use crate::group_commit::Pace;

/// One connection attempt.
pub type Connect =
    Box<dyn Fn() -> Pin<Box<dyn Future<Output = Result<DynSink, SinkError>> + Send>> + Send + Sync>;

/// How a deferred sink keeps trying, and how long a prompt publish waits for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryConnect {
    /// How long a publish that is not [`Pace::Patient`] waits for the connection.
    pub wait: Duration,
    /// The first pause between attempts; doubles (with jitter) up to `max`.
    pub initial: Duration,
    pub max: Duration,
}

/// Where the background connection stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Connecting { why: &'static str },
    Ready,
    Closed,
}

const UNREACHABLE: &str = "cannot connect yet, retrying";
const REFUSED: &str = "refused by the broker, retrying";

fn why(e: &SinkError) -> &'static str {
    if e.is_retriable() {
        UNREACHABLE
    } else {
        REFUSED
    }
}

/// A sink that connects in the background. Build it with [`DeferredSink::start`].
pub struct DeferredSink {
    name: String,
    system: &'static str,
    wait: Duration,
    /// Set once, when the connection succeeds.
    inner: OnceLock<DynSink>,
    phase: watch::Sender<Phase>,
    duplicates: OnceLock<Counter>,
    stop: CancellationToken,
}

impl std::fmt::Debug for DeferredSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeferredSink")
            .field("name", &self.name)
            .field("system", &self.system)
            .field("phase", &*self.phase.borrow())
            .finish_non_exhaustive()
    }
}

impl DeferredSink {
    /// Starts connecting in the background; `first` is why the attempt made at start failed.
    /// Must be called inside a Tokio runtime.
    pub fn start(
        name: &str,
        system: &'static str,
        retry: RetryConnect,
        first: &SinkError,
        connect: Connect,
    ) -> Arc<Self> {
        let (phase, _) = watch::channel(Phase::Connecting { why: why(first) });
        let sink = Arc::new(Self {
            name: name.to_owned(),
            system,
            wait: retry.wait,
            inner: OnceLock::new(),
            phase,
            duplicates: OnceLock::new(),
            stop: CancellationToken::new(),
        });
        tokio::spawn(keep_connecting(
            Arc::downgrade(&sink),
            sink.stop.clone(),
            retry,
            connect,
        ));
        sink
    }

    /// The real sink, once connected; waits for it as `pace` allows.
    async fn connected(&self, pace: Pace) -> Result<&DynSink, SinkError> {
        if let Some(s) = self.inner.get() {
            return Ok(s);
        }
        let mut rx = self.phase.subscribe();
        let settled = rx.wait_for(|p| !matches!(p, Phase::Connecting { .. }));
        let waited = match pace {
            Pace::Patient => Ok(settled.await),
            Pace::Prompt => tokio::time::timeout(self.wait, settled).await,
        };
        match waited {
            Ok(Ok(p)) if *p == Phase::Ready => {
                drop(p);
                self.inner.get().ok_or_else(|| self.closed())
            }
            Ok(_) => Err(self.closed()),
            Err(_) => Err(SinkError::Retriable(format!(
                "sink {} is not connected yet (waited {} ms)",
                self.name,
                self.wait.as_millis()
            ))),
        }
    }

    fn closed(&self) -> SinkError {
        SinkError::Retriable(format!("sink {} is closed", self.name))
    }

    /// Takes the connected sink; false when this sink was closed meanwhile.
    fn connect_with(&self, sink: DynSink) -> bool {
        if let Some(c) = self.duplicates.get() {
            sink.count_broker_duplicates(c.clone());
        }
        let _ = self.inner.set(sink);
        self.phase.send_if_modified(|p| {
            if *p == Phase::Closed {
                false
            } else {
                *p = Phase::Ready;
                true
            }
        })
    }
}

/// Tries `connect` with backoff until it succeeds, the sink is closed or dropped.
async fn keep_connecting(
    sink: Weak<DeferredSink>,
    stop: CancellationToken,
    retry: RetryConnect,
    connect: Connect,
) {
    let started = Instant::now();
    let mut delays = crate::backoff::Backoff::new(retry.initial, retry.max);
    // The attempt made at start counts as the first.
    let mut attempts = 1u32;
    loop {
        let delay = delays.next_delay();
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(delay) => {}
        }
        attempts += 1;
        let result = tokio::select! {
            () = stop.cancelled() => return,
            r = connect() => r,
        };
        let Some(this) = sink.upgrade() else {
            return;
        };
        match result {
            Ok(real) => {
                if this.connect_with(Arc::clone(&real)) {
                    tracing::info!(
                        sink = %this.name,
                        kind = this.system,
                        attempts,
                        waited_ms = started.elapsed().as_millis() as u64,
                        "sink connected; what waited for it is delivered now"
                    );
                } else {
                    // Closed while the last attempt ran.
                    let _ = real.close(Instant::now() + Duration::from_secs(1)).await;
                }
                return;
            }
            Err(e) => {
                tracing::warn!(
                    sink = %this.name,
                    kind = this.system,
                    attempts,
                    error = %e.reason(),
                    class = if e.is_retriable() { "unreachable" } else { "refused" },
                    "sink still cannot connect; retrying in the background"
                );
                this.phase.send_if_modified(|p| match p {
                    Phase::Connecting { why: w } if *w != why(&e) => {
                        *w = why(&e);
                        true
                    }
                    _ => false,
                });
            }
        }
    }
}

#[async_trait]
impl Sink for DeferredSink {
    fn name(&self) -> &str {
        &self.name
    }

    fn system(&self) -> &'static str {
        self.system
    }

    async fn publish(&self, msg: &Message) -> Result<(), SinkError> {
        self.connected(msg.pace).await?.publish(msg).await
    }

    async fn publish_placed(
        &self,
        msg: &Message,
        placement: &Placement<'_>,
    ) -> Result<(), SinkError> {
        self.connected(msg.pace)
            .await?
            .publish_placed(msg, placement)
            .await
    }

    async fn healthcheck(&self) -> Result<(), SinkError> {
        match self.inner.get() {
            Some(s) => s.healthcheck().await,
            None => Err(SinkError::Retriable(self.status().to_string())),
        }
    }

    async fn close(&self, deadline: Instant) -> Result<(), SinkError> {
        self.stop.cancel();
        self.phase.send_if_modified(|p| {
            if matches!(p, Phase::Connecting { .. }) {
                *p = Phase::Closed;
                true
            } else {
                false
            }
        });
        match self.inner.get() {
            Some(s) => s.close(deadline).await,
            None => Ok(()),
        }
    }

    fn status(&self) -> SinkStatus {
        match (self.inner.get(), *self.phase.borrow()) {
            (Some(s), _) => s.status(),
            (None, Phase::Connecting { why }) => SinkStatus::NotConnected { why },
            (None, _) => SinkStatus::Closed,
        }
    }

    fn count_broker_duplicates(&self, counter: Counter) {
        let _ = self.duplicates.set(counter.clone());
        if let Some(s) = self.inner.get() {
            s.count_broker_duplicates(counter);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sinks::testing::{Faults, TestSink};
    use std::sync::atomic::{AtomicU32, Ordering};

    fn retry() -> RetryConnect {
        RetryConnect {
            wait: Duration::from_millis(50),
            initial: Duration::from_millis(10),
            max: Duration::from_millis(20),
        }
    }

    fn message(pace: Pace) -> Message {
        Message {
            topic: "t".into(),
            key: None,
            headers: Vec::new(),
            payload: bytes::Bytes::from_static(b"{}"),
            event_id: Arc::from("e"),
            message_id: Arc::from("m"),
            payload_is_json: true,
            pace,
            cloudevent: None,
        }
    }

    /// A connect that fails until `up` says so, counting its attempts.
    fn flaky(
        up: Arc<std::sync::atomic::AtomicBool>,
        tries: Arc<AtomicU32>,
        real: DynSink,
    ) -> Connect {
        Box::new(move || {
            let (up, tries, real) = (Arc::clone(&up), Arc::clone(&tries), Arc::clone(&real));
            Box::pin(async move {
                tries.fetch_add(1, Ordering::SeqCst);
                if up.load(Ordering::SeqCst) {
                    Ok(real)
                } else {
                    Err(SinkError::Retriable("connection refused".into()))
                }
            })
        })
    }

    #[tokio::test]
    async fn patient_publishes_wait_for_the_connection_prompt_ones_do_not() {
        let up = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let tries = Arc::new(AtomicU32::new(0));
        let memory = Arc::new(TestSink::new("bus", Faults::default()));
        let real: DynSink = memory.clone();
        let first = SinkError::Retriable("connection refused".into());
        let sink = DeferredSink::start(
            "bus",
            "nats",
            retry(),
            &first,
            flaky(Arc::clone(&up), Arc::clone(&tries), real),
        );
        assert_eq!(sink.status(), SinkStatus::NotConnected { why: UNREACHABLE });
        assert!(sink.healthcheck().await.is_err());

        // A prompt publish gives up after `wait`, as retriable.
        let err = sink.publish(&message(Pace::Prompt)).await.unwrap_err();
        assert!(err.is_retriable(), "{err}");
        assert!(err.reason().contains("not connected yet"), "{err}");

        // A patient one waits; it is delivered once the broker is there.
        let s2 = Arc::clone(&sink);
        let patient = tokio::spawn(async move { s2.publish(&message(Pace::Patient)).await });
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(
            !patient.is_finished(),
            "a patient publish waits for the connection"
        );
        assert!(
            tries.load(Ordering::SeqCst) >= 2,
            "attempts go on in the background"
        );
        up.store(true, Ordering::SeqCst);
        tokio::time::timeout(Duration::from_secs(5), patient)
            .await
            .expect("delivered once connected")
            .unwrap()
            .expect("published");
        assert_eq!(memory.delivered().len(), 1);
        assert_eq!(sink.status(), SinkStatus::Connected);
        let attempts = tries.load(Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(
            tries.load(Ordering::SeqCst),
            attempts,
            "no attempts once connected"
        );
        sink.publish(&message(Pace::Prompt)).await.unwrap();
        assert_eq!(memory.delivered().len(), 2);
    }

    #[tokio::test]
    async fn close_wakes_waiting_publishes_and_stops_the_attempts() {
        let up = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let tries = Arc::new(AtomicU32::new(0));
        let real: DynSink = Arc::new(TestSink::new("bus", Faults::default()));
        let first = SinkError::Fatal("refused the credentials".into());
        let sink = DeferredSink::start(
            "bus",
            "nats",
            retry(),
            &first,
            flaky(up, Arc::clone(&tries), real),
        );
        assert_eq!(sink.status(), SinkStatus::NotConnected { why: REFUSED });
        let s2 = Arc::clone(&sink);
        let patient = tokio::spawn(async move { s2.publish(&message(Pace::Patient)).await });
        tokio::time::sleep(Duration::from_millis(50)).await;
        sink.close(Instant::now() + Duration::from_secs(1))
            .await
            .unwrap();
        let r = tokio::time::timeout(Duration::from_secs(5), patient)
            .await
            .expect("woken by close")
            .unwrap();
        assert!(r.unwrap_err().is_retriable());
        assert_eq!(sink.status(), SinkStatus::Closed);
        let n = tries.load(Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(tries.load(Ordering::SeqCst), n, "no attempts after close");
    }
}
