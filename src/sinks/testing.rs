//! A fault-injecting sink for tests and demos of failure: it can fail retriably N times per
//! message, fail fatally for chosen topics, hang, or be slow, and records what it delivered.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use tokio::sync::Notify;

use super::{Message, Sink, SinkError};

/// How a [`TestSink`] misbehaves.
#[derive(Debug, Default, Clone)]
pub struct Faults {
    /// Fail each message this many times (retriably) before accepting it.
    pub fail_first: usize,
    /// Fail every message on these topics fatally.
    pub fatal_topics: Vec<String>,
    /// Fail every publish retriably (a broker that is down) until `recover()` is called.
    pub down: bool,
    /// Delay each publish this long.
    pub latency: Duration,
    /// Never complete a publish until `recover()` is called.
    pub hang: bool,
}

/// A sink that keeps what it delivered in memory.
pub struct TestSink {
    name: String,
    faults: Mutex<Faults>,
    attempts: Mutex<HashMap<String, usize>>,
    delivered: Mutex<Vec<Message>>,
    calls: AtomicUsize,
    concurrent: AtomicUsize,
    max_concurrent: AtomicUsize,
    recovered: AtomicBool,
    wake: Notify,
}

impl TestSink {
    pub fn new(name: &str, faults: Faults) -> Self {
        Self {
            name: name.to_owned(),
            faults: Mutex::new(faults),
            attempts: Mutex::new(HashMap::new()),
            delivered: Mutex::new(Vec::new()),
            calls: AtomicUsize::new(0),
            concurrent: AtomicUsize::new(0),
            max_concurrent: AtomicUsize::new(0),
            recovered: AtomicBool::new(false),
            wake: Notify::new(),
        }
    }

    /// Ends `down` and `hang`.
    pub fn recover(&self) {
        self.recovered.store(true, Ordering::SeqCst);
        if let Ok(mut f) = self.faults.lock() {
            f.down = false;
            f.hang = false;
        }
        self.wake.notify_waiters();
    }

    pub fn delivered(&self) -> Vec<Message> {
        self.delivered.lock().map(|d| d.clone()).unwrap_or_default()
    }

    /// Publish calls so far, successful or not.
    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    /// The most publishes that were in progress at once.
    pub fn max_concurrent(&self) -> usize {
        self.max_concurrent.load(Ordering::SeqCst)
    }

    fn faults(&self) -> Faults {
        self.faults.lock().map(|f| f.clone()).unwrap_or_default()
    }
}

struct InFlight<'a>(&'a AtomicUsize);
impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

#[async_trait]
impl Sink for TestSink {
    fn name(&self) -> &str {
        &self.name
    }

    fn system(&self) -> &'static str {
        "test"
    }

    async fn publish(&self, msg: &Message) -> Result<(), SinkError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let now = self.concurrent.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_concurrent.fetch_max(now, Ordering::SeqCst);
        let _guard = InFlight(&self.concurrent);
        let f = self.faults();
        if f.hang {
            while !self.recovered.load(Ordering::SeqCst) {
                let notified = self.wake.notified();
                if self.recovered.load(Ordering::SeqCst) {
                    break;
                }
                notified.await;
            }
        }
        if !f.latency.is_zero() {
            tokio::time::sleep(f.latency).await;
        }
        if f.down {
            return Err(SinkError::Retriable("test sink is down".into()));
        }
        if f.fatal_topics.contains(&msg.topic) {
            return Err(SinkError::Fatal(format!(
                "topic {} does not exist",
                msg.topic
            )));
        }
        if f.fail_first > 0 {
            let mut a = self
                .attempts
                .lock()
                .map_err(|_| SinkError::Fatal("poisoned".into()))?;
            let n = a.entry(msg.event_id.to_string() + &msg.topic).or_insert(0);
            *n += 1;
            if *n <= f.fail_first {
                return Err(SinkError::Retriable(format!("injected failure {n}")));
            }
        }
        self.delivered
            .lock()
            .map_err(|_| SinkError::Fatal("poisoned".into()))?
            .push(msg.clone());
        Ok(())
    }

    async fn healthcheck(&self) -> Result<(), SinkError> {
        if self.faults().down {
            Err(SinkError::Retriable("test sink is down".into()))
        } else {
            Ok(())
        }
    }

    async fn close(&self, _deadline: Instant) -> Result<(), SinkError> {
        Ok(())
    }
}
