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
//!
//! That last rule is for writers that wait for their commit before they send more ([`Pace::Prompt`]).
//! A writer that keeps sending while earlier writes commit ([`Pace::Patient`]: the WebSocket
//! source, which reads on while its events are spooled and delivered) gains nothing from it. For
//! such a stream a look that finds nothing new usually means only that the writer upstream did not
//! get the CPU in time, and every extra commit costs fsyncs and the wake-ups around them. A batch
//! of patient writes therefore waits out `min_interval` in one sleep. On one CPU that halved the
//! commits of the WebSocket → file path and raised its throughput by about a fifth
//! (`docs/benchmarks.md`).

use std::time::{Duration, Instant};

/// How often a writer looks for more writes while it lets a batch grow.
pub const POLL: Duration = Duration::from_micros(200);

/// How long a batch of background writes waits for company ([`CommitPacer::gather_background`]):
/// at most 20 commits a second however slow or fast they arrive. An fsync costs about 250 µs of
/// CPU on a virtual disk, so at 100 events/s a commit per event was 2.5 % of a core on its own.
pub const BACKGROUND: Duration = Duration::from_millis(50);

/// Whether the writers of a batch wait for its commit before they send more.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Pace {
    /// Someone waits for this commit to send more (a webhook sender holding its request open, a
    /// caller awaiting each append): commit as soon as nothing else is coming.
    #[default]
    Prompt,
    /// The writer keeps sending while this commits (the WebSocket source): the batch may wait
    /// for the whole `min_interval`.
    Patient,
}

/// What a writer's `drain` has gathered so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gathered {
    /// Writes in the batch.
    pub size: usize,
    /// The batch can take no more.
    pub full: bool,
    /// Every write in the batch is [`Pace::Patient`].
    pub patient: bool,
}

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
    /// into the caller's batch and says what the batch holds. Blocks: this is for writer threads,
    /// not async tasks.
    pub fn gather(&mut self, mut drain: impl FnMut() -> Gathered) {
        let mut batch = drain();
        let due = self.last_start.map(|t| t + self.min_interval);
        loop {
            let now = Instant::now();
            let left = due.map_or(Duration::ZERO, |d| d.saturating_duration_since(now));
            if batch.full || left.is_zero() {
                break;
            }
            if batch.patient {
                // Nobody waits on this commit: one sleep instead of a look every POLL.
                std::thread::sleep(left);
                batch = drain();
                continue;
            }
            std::thread::sleep(left.min(POLL));
            let before = batch.size;
            batch = drain();
            if batch.size == before {
                break;
            }
        }
        self.last_start = Some(Instant::now());
    }

    /// Lets a batch of background writes grow for `max(min_interval, BACKGROUND)` from now: no
    /// one waits on this commit to go on (the WebSocket source publishes its events while they
    /// commit), so a quiet period does not commit at once and even a slow stream shares its
    /// fsyncs. Goes early only when the batch is full.
    pub fn gather_background(&mut self, mut drain: impl FnMut() -> Gathered) {
        let due = Instant::now() + self.min_interval.max(BACKGROUND);
        let mut batch = drain();
        loop {
            let left = due.saturating_duration_since(Instant::now());
            if batch.full || left.is_zero() {
                break;
            }
            std::thread::sleep(left);
            batch = drain();
        }
        self.last_start = Some(Instant::now());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    /// A batch of prompt writes.
    fn prompt(size: usize, full: bool) -> Gathered {
        Gathered {
            size,
            full,
            patient: false,
        }
    }

    #[test]
    fn the_first_commit_and_one_after_a_quiet_period_take_what_is_there() {
        let mut p = CommitPacer::new(MS * 10_000);
        let mut looks = 0;
        p.gather(|| {
            looks += 1;
            prompt(1 + looks, false)
        });
        assert_eq!(looks, 1, "the first commit does not wait");
        p.last_start = Some(Instant::now() - MS * 20_000);
        p.gather(|| {
            looks += 1;
            prompt(1 + looks, false)
        });
        assert_eq!(
            looks, 2,
            "nor does one after a quiet period, however much keeps arriving"
        );
    }

    #[test]
    fn a_batch_grows_while_writes_arrive_and_goes_when_they_stop() {
        let mut p = CommitPacer::new(MS * 10_000);
        p.gather(|| prompt(1, false));
        // Three looks find more, the fourth finds nothing new: commit then, long before the
        // interval (10 s) is over.
        let sizes = [5, 9, 12, 12, 40];
        let mut looks = 0;
        p.gather(|| {
            looks += 1;
            prompt(sizes[looks - 1], false)
        });
        assert_eq!(looks, 4);
    }

    #[test]
    fn a_full_batch_goes_at_once() {
        let mut p = CommitPacer::new(MS * 10_000);
        p.gather(|| prompt(1, false));
        let mut looks = 0;
        p.gather(|| {
            looks += 1;
            prompt(looks * 10, looks == 3)
        });
        assert_eq!(looks, 3);
    }

    #[test]
    fn a_steady_stream_commits_once_per_interval() {
        let mut p = CommitPacer::new(20 * MS);
        p.gather(|| prompt(1, false));
        let t = Instant::now();
        let mut n = 0;
        p.gather(|| {
            n += 1;
            prompt(n, false)
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
                prompt(looks, false)
            });
        }
        assert_eq!(looks, 3);
    }

    #[test]
    fn a_patient_batch_waits_out_the_interval_in_one_sleep() {
        let mut p = CommitPacer::new(20 * MS);
        p.gather(|| prompt(1, false));
        let t = Instant::now();
        let mut looks = 0;
        p.gather(|| {
            looks += 1;
            // Nothing new at any look: a prompt batch would go after one POLL.
            Gathered {
                size: 3,
                full: false,
                patient: true,
            }
        });
        assert!(t.elapsed() >= 15 * MS, "{:?}", t.elapsed());
        assert_eq!(looks, 2, "one look before the sleep and one after it");
    }

    #[test]
    fn a_background_batch_waits_even_after_a_quiet_period_unless_full() {
        let mut p = CommitPacer::new(MS);
        let t = Instant::now();
        let mut looks = 0;
        p.gather_background(|| {
            looks += 1;
            prompt(1, false)
        });
        assert!(t.elapsed() >= BACKGROUND - MS, "{:?}", t.elapsed());
        assert_eq!(looks, 2, "one look before the sleep and one after it");
        let t = Instant::now();
        p.gather_background(|| prompt(4096, true));
        assert!(t.elapsed() < BACKGROUND, "a full batch goes at once");
    }

    #[test]
    fn a_patient_batch_still_goes_when_full_or_after_a_quiet_period() {
        let mut p = CommitPacer::new(MS * 10_000);
        let patient = |full| Gathered {
            size: 7,
            full,
            patient: true,
        };
        let t = Instant::now();
        p.gather(|| patient(false));
        p.gather(|| patient(true));
        assert!(
            t.elapsed() < MS * 5_000,
            "the first commit and a full batch do not wait: {:?}",
            t.elapsed()
        );
    }
}
