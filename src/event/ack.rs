//! End-to-end acknowledgement: one handle per event, cloned once per destination.
//!
//! Every clone records a status; the statuses merge (worst wins) and when the last clone is dropped
//! the source learns the merged result. A clone dropped without a status counts as [`AckStatus::Retry`],
//! so a bug that forgets to finish a destination can only cause a redelivery, never a loss.

use std::fmt;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU8, Ordering};

use tokio::sync::oneshot;

/// What became of an event, as its source needs to know it. Ordered from best to worst.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u8)]
pub enum AckStatus {
    /// Every destination confirmed it or durably dead-lettered it: the source may forget it.
    Delivered = 0,
    /// Permanently refused and not stored anywhere: the source must not redeliver it.
    Rejected = 1,
    /// Not finished: the source must keep it and deliver it again.
    Retry = 2,
}

impl AckStatus {
    fn from_u8(v: u8) -> Self {
        match v {
            0 => Self::Delivered,
            1 => Self::Rejected,
            _ => Self::Retry,
        }
    }
}

/// Who learns the merged status when the last handle is gone.
enum Notify {
    /// A source waiting on an [`AckReceiver`].
    Channel(oneshot::Sender<AckStatus>),
    /// A function run by whoever drops the last handle (no task, no channel).
    Callback(Box<dyn FnOnce(AckStatus) + Send>),
}

struct Shared {
    merged: AtomicU8,
    notify: Mutex<Option<Notify>>,
}

impl Drop for Shared {
    fn drop(&mut self) {
        let status = AckStatus::from_u8(self.merged.load(Ordering::Acquire));
        let notify = match self.notify.get_mut() {
            Ok(n) => n.take(),
            Err(poisoned) => poisoned.into_inner().take(),
        };
        match notify {
            // The source may have stopped waiting (shutdown); nothing to do then.
            Some(Notify::Channel(tx)) => {
                let _ = tx.send(status);
            }
            Some(Notify::Callback(f)) => f(status),
            None => {}
        }
    }
}

/// One destination's share of an event's acknowledgement.
pub struct AckHandle {
    shared: Arc<Shared>,
    status: Option<AckStatus>,
    /// A handle that was split into others contributes nothing when dropped.
    neutral: bool,
}

impl fmt::Debug for AckHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AckHandle")
            .field("status", &self.status)
            .field("neutral", &self.neutral)
            .finish()
    }
}

/// The source's side: resolves once, when every handle is gone.
pub struct AckReceiver(oneshot::Receiver<AckStatus>);

impl AckReceiver {
    /// Waits for the merged status. A vanished sender (cannot happen, but) counts as `Retry`.
    pub async fn wait(self) -> AckStatus {
        self.0.await.unwrap_or(AckStatus::Retry)
    }

    /// Non-blocking check, for tests and polling sources.
    pub fn try_status(&mut self) -> Option<AckStatus> {
        match self.0.try_recv() {
            Ok(s) => Some(s),
            Err(oneshot::error::TryRecvError::Empty) => None,
            Err(oneshot::error::TryRecvError::Closed) => Some(AckStatus::Retry),
        }
    }
}

impl std::future::Future for AckReceiver {
    type Output = AckStatus;
    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        std::pin::Pin::new(&mut self.0)
            .poll(cx)
            .map(|r| r.unwrap_or(AckStatus::Retry))
    }
}

impl AckHandle {
    /// A new handle and the receiver its source waits on.
    pub fn new() -> (Self, AckReceiver) {
        let (tx, rx) = oneshot::channel();
        (Self::with_notify(Notify::Channel(tx)), AckReceiver(rx))
    }

    /// A handle whose merged status is handed to `f` when the last of its parts is dropped, in
    /// the dropping task, with the same rules as [`AckHandle::new`]. `f` must not block.
    pub fn on_done(f: impl FnOnce(AckStatus) + Send + 'static) -> Self {
        Self::with_notify(Notify::Callback(Box::new(f)))
    }

    fn with_notify(notify: Notify) -> Self {
        Self {
            shared: Arc::new(Shared {
                merged: AtomicU8::new(AckStatus::Delivered as u8),
                notify: Mutex::new(Some(notify)),
            }),
            status: None,
            neutral: false,
        }
    }

    /// Splits this handle into `n` handles, one per destination. With `n == 0` the event has no
    /// destination: this counts as delivered (the caller decided so, e.g. a dropped unmatched event).
    pub fn split(mut self, n: usize) -> Vec<AckHandle> {
        if n == 0 {
            self.status = Some(AckStatus::Delivered);
            return Vec::new();
        }
        let handles = (0..n)
            .map(|_| AckHandle {
                shared: Arc::clone(&self.shared),
                status: None,
                neutral: false,
            })
            .collect();
        self.neutral = true;
        handles
    }

    /// Records this destination's outcome and releases the handle.
    pub fn finish(mut self, status: AckStatus) {
        self.status = Some(status);
    }
}

impl Drop for AckHandle {
    fn drop(&mut self) {
        if self.neutral {
            return;
        }
        let status = self.status.unwrap_or(AckStatus::Retry);
        self.shared.merged.fetch_max(status as u8, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn single_handle_delivers() {
        let (h, rx) = AckHandle::new();
        h.finish(AckStatus::Delivered);
        assert_eq!(rx.wait().await, AckStatus::Delivered);
    }

    #[tokio::test]
    async fn dropped_without_status_is_retry() {
        let (h, rx) = AckHandle::new();
        drop(h);
        assert_eq!(rx.wait().await, AckStatus::Retry);
    }

    #[tokio::test]
    async fn fan_out_resolves_only_after_last_and_worst_wins() {
        let (h, mut rx) = AckHandle::new();
        let mut parts = h.split(3);
        let c = parts.pop().unwrap();
        let b = parts.pop().unwrap();
        let a = parts.pop().unwrap();
        a.finish(AckStatus::Delivered);
        assert_eq!(
            rx.try_status(),
            None,
            "resolved before all destinations ended"
        );
        b.finish(AckStatus::Rejected);
        assert_eq!(
            rx.try_status(),
            None,
            "resolved before all destinations ended"
        );
        c.finish(AckStatus::Delivered);
        assert_eq!(rx.wait().await, AckStatus::Rejected);
    }

    #[tokio::test]
    async fn retry_beats_rejected_and_delivered() {
        let (h, rx) = AckHandle::new();
        let mut parts = h.split(3);
        parts.pop().unwrap().finish(AckStatus::Rejected);
        parts.pop().unwrap().finish(AckStatus::Delivered);
        drop(parts); // the third never got a status
        assert_eq!(rx.wait().await, AckStatus::Retry);
    }

    #[tokio::test]
    async fn split_into_zero_is_delivered() {
        let (h, rx) = AckHandle::new();
        assert!(h.split(0).is_empty());
        assert_eq!(rx.wait().await, AckStatus::Delivered);
    }

    #[test]
    fn callback_gets_the_merged_status_once_after_the_last_part() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s2 = Arc::clone(&seen);
        let h = AckHandle::on_done(move |st| s2.lock().unwrap().push(st));
        let mut parts = h.split(2);
        parts.pop().unwrap().finish(AckStatus::Delivered);
        assert!(seen.lock().unwrap().is_empty(), "ran before the last part");
        drop(parts); // the other part never got a status
        assert_eq!(*seen.lock().unwrap(), vec![AckStatus::Retry]);
    }

    #[tokio::test]
    async fn split_all_delivered() {
        let (h, rx) = AckHandle::new();
        for p in h.split(5) {
            p.finish(AckStatus::Delivered);
        }
        assert_eq!(rx.wait().await, AckStatus::Delivered);
    }

    #[tokio::test]
    async fn handles_finish_on_other_tasks() {
        let (h, rx) = AckHandle::new();
        let tasks: Vec<_> = h
            .split(8)
            .into_iter()
            .map(|p| tokio::spawn(async move { p.finish(AckStatus::Delivered) }))
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(rx.wait().await, AckStatus::Delivered);
    }
}
