//! Pacing for the group commits of the spool and the file sink.
//!
//! Each writer thread takes every write queued for it, writes them, and fsyncs once for the batch.
//! When fsyncs are cheap the batches stay small: a profile of WebSocket → file at 15k events/s
//! showed about one fsync per 4 events, and the kernel's work for them (virtio notifications,
//! journal commits, the wake-ups of the threads that wait on them) as most of the bridge's CPU.
//! [`CommitPacer`] lets a batch grow while writes keep arriving:
//!
//! - after a quiet period (no commit started within `min_interval`) a write is committed at once;
//! - otherwise the writer looks again every [`POLL`] and commits as soon as a look finds nothing
//!   new (the writers upstream are waiting for this commit, as closed-loop clients such as webhook
//!   senders do), or the batch is full, or `min_interval` has passed since the previous commit
//!   started (a steady stream: at most one commit per `min_interval`).
//!
//! So pacing adds at most `min_interval` to a commit, and about one [`POLL`] when nothing else is
//! coming.

use std::time::{Duration, Instant};

/// How often a writer looks for more writes while it lets a batch grow.
pub const POLL: Duration = Duration::from_micros(200);

/// Decides when a writer thread's next group commit starts (see the module docs).
#[derive(Debug)]
pub struct CommitPacer {
    min_interval: Duration,
    last_start: Option<Instant>,
}

impl CommitPacer {
    pub fn new(min_interval: Duration) -> Self {
        Self {
            min_interval,
            last_start: None,
        }
    }

    /// Lets the next batch grow, then counts a commit as started. `drain` moves what has arrived
    /// into the caller's batch and returns the batch's size and whether it is full. Blocks: this
    /// is for writer threads, not async tasks.
    pub fn gather(&mut self, mut drain: impl FnMut() -> (usize, bool)) {
        let (mut size, mut full) = drain();
        let due = self.last_start.map(|t| t + self.min_interval);
        loop {
            let now = Instant::now();
            let left = due.map_or(Duration::ZERO, |d| d.saturating_duration_since(now));
            if full || left.is_zero() {
                break;
            }
            std::thread::sleep(left.min(POLL));
            let before = size;
            (size, full) = drain();
            if size == before {
                break;
            }
        }
        self.last_start = Some(Instant::now());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn the_first_commit_and_one_after_a_quiet_period_take_what_is_there() {
        let mut p = CommitPacer::new(MS * 10_000);
        let mut looks = 0;
        p.gather(|| {
            looks += 1;
            (1 + looks, false)
        });
        assert_eq!(looks, 1, "the first commit does not wait");
        p.last_start = Some(Instant::now() - MS * 20_000);
        p.gather(|| {
            looks += 1;
            (1 + looks, false)
        });
        assert_eq!(
            looks, 2,
            "nor does one after a quiet period, however much keeps arriving"
        );
    }

    #[test]
    fn a_batch_grows_while_writes_arrive_and_goes_when_they_stop() {
        let mut p = CommitPacer::new(MS * 10_000);
        p.gather(|| (1, false));
        // Three looks find more, the fourth finds nothing new: commit then, long before the
        // interval (10 s) is over.
        let sizes = [5, 9, 12, 12, 40];
        let mut looks = 0;
        p.gather(|| {
            looks += 1;
            (sizes[looks - 1], false)
        });
        assert_eq!(looks, 4);
    }

    #[test]
    fn a_full_batch_goes_at_once() {
        let mut p = CommitPacer::new(MS * 10_000);
        p.gather(|| (1, false));
        let mut looks = 0;
        p.gather(|| {
            looks += 1;
            (looks * 10, looks == 3)
        });
        assert_eq!(looks, 3);
    }

    #[test]
    fn a_steady_stream_commits_once_per_interval() {
        let mut p = CommitPacer::new(20 * MS);
        p.gather(|| (1, false));
        let t = Instant::now();
        let mut n = 0;
        p.gather(|| {
            n += 1;
            (n, false)
        });
        // Something new at every look: it waits for the interval (a sleep never returns early).
        assert!(t.elapsed() >= 15 * MS, "{:?}", t.elapsed());
        assert!(n > 1);
    }

    #[test]
    fn zero_interval_never_waits() {
        let mut p = CommitPacer::new(Duration::ZERO);
        let mut looks = 0;
        for _ in 0..3 {
            p.gather(|| {
                looks += 1;
                (looks, false)
            });
        }
        assert_eq!(looks, 3);
    }
}
