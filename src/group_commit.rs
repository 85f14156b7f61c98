//! Pacing for the group commits of the spool and the file sink.
//!
//! Each writer thread takes every write queued for it, writes them, and fsyncs once for the batch.
//! When fsyncs are cheap the batches stay small: a profile of WebSocket → file at 15k events/s
//! showed about one fsync per 4 events, and the kernel's work for them (virtio notifications,
//! journal commits, the wake-ups of the threads that wait on them) as most of the bridge's CPU.
//! [`CommitPacer`] spaces the commits out instead: a commit starts no sooner than `min_interval`
//! after the previous one started, and what arrives meanwhile joins it. After a quiet period a
//! write is committed at once, so pacing adds latency only under load, and at most `min_interval`.

use std::time::{Duration, Instant};

/// Spaces group commits at least `min_interval` apart (see the module docs).
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

    /// How long a commit that wants to start at `now` must wait.
    pub fn delay(&self, now: Instant) -> Duration {
        self.last_start.map_or(Duration::ZERO, |last| {
            (last + self.min_interval).saturating_duration_since(now)
        })
    }

    /// Blocks (this is for writer threads, not async tasks) until `min_interval` has passed since
    /// the previous commit started, then counts a new commit as started.
    pub fn wait_turn(&mut self) {
        let wait = self.delay(Instant::now());
        if !wait.is_zero() {
            std::thread::sleep(wait);
        }
        self.last_start = Some(Instant::now());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn only_a_commit_within_the_interval_of_the_previous_one_waits() {
        let mut p = CommitPacer::new(2 * MS);
        let t0 = Instant::now();
        assert_eq!(p.delay(t0), Duration::ZERO, "the first commit");
        p.last_start = Some(t0);
        assert_eq!(p.delay(t0), 2 * MS);
        assert_eq!(p.delay(t0 + MS / 2), 2 * MS - MS / 2);
        assert_eq!(p.delay(t0 + 2 * MS), Duration::ZERO);
        assert_eq!(
            p.delay(t0 + 50 * MS),
            Duration::ZERO,
            "after a quiet period"
        );
        assert_eq!(CommitPacer::new(Duration::ZERO).delay(t0), Duration::ZERO);
    }

    #[test]
    fn back_to_back_commits_are_spaced_by_the_interval() {
        let mut p = CommitPacer::new(10 * MS);
        let t = Instant::now();
        for _ in 0..4 {
            p.wait_turn();
        }
        // Three gaps of at least the interval; a sleep never returns early.
        assert!(t.elapsed() >= 30 * MS, "{:?}", t.elapsed());
    }
}
