//! What the spool's handles and its writer thread share: the segments and their live sets, the
//! space accounting behind `max_bytes`, the queued releases, and the deletion of retired segments.

use std::collections::BTreeMap;
use std::fs;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use super::format::{HEADER, MAGIC_LEN};
use super::segment::{Segment, live_path, sync_dir, write_live_set};
use crate::metrics::Metrics;

/// What an append reserves, besides its own size, for its id in a release record: 8 bytes, plus a
/// release record header and a segment magic in case it is written alone.
pub(super) const RELEASE_SLOT: u64 = 8 + HEADER as u64 + MAGIC_LEN;
/// The shortest wait before queued releases are committed on their own. Releases ride along with
/// the next commit of appends, which costs them nothing; this is how long they wait for one before
/// they pay for an fsync of their own. Releasing later is safe (a crash replays a delivered event,
/// a duplicate under the same occurrence id), and a stream of 100 events/s that committed every
/// release on its own spent one fsync per event on releases alone (~250 µs of CPU each).
pub(super) const MIN_RELEASE_WINDOW: Duration = Duration::from_secs(1);

/// A fully released segment taken out of the spool, for the writer to delete.
#[derive(Debug)]
struct Doomed {
    path: PathBuf,
    bytes: u64,
    first_id: u64,
    has_releases: bool,
}

#[derive(Debug, Default)]
pub(super) struct State {
    pub(super) segments: BTreeMap<u64, Segment>,
    /// Bytes on disk, plus bytes reserved by appends not yet written, plus the release slots of
    /// records whose release is not written yet (see "Bounded" in the module docs).
    pub(super) used: u64,
    /// Bytes of segment files on disk.
    pub(super) disk: u64,
    /// Records not released.
    pub(super) live: u64,
    /// Appends waiting for space.
    pub(super) waiting: usize,
    /// Fully released segments taken out of `segments`, for the writer to delete; their bytes
    /// are still in `used` and `disk`.
    doomed: Vec<Doomed>,
    /// Released ids not yet written in a release record.
    pub(super) pending: Vec<u64>,
    /// When the oldest of `pending` was released.
    pub(super) pending_since: Option<Instant>,
    /// Why the last write failed, while the writer holds appends it could not write yet.
    pub(super) write_error: Option<String>,
}

impl State {
    /// Whether released records still have space to give back: releases not yet written, or
    /// retired segments not yet deleted. A full spool with none of either stays full.
    #[cfg(test)]
    pub(super) fn freeing(&self) -> bool {
        !self.pending.is_empty() || !self.doomed.is_empty()
    }
}

pub(super) struct Shared {
    pub(super) dir: PathBuf,
    pub(super) max_bytes: u64,
    pub(super) segment_bytes: u64,
    /// How long a group commit may wait for more appends (`group_commit_ms`).
    pub(super) group_commit: Duration,
    /// How long queued releases wait for appends to ride along with before they are committed on
    /// their own: `group_commit`, at least [`MIN_RELEASE_WINDOW`].
    pub(super) release_window: Duration,
    pub(super) state: Mutex<State>,
    pub(super) space: Notify,
    pub(super) metrics: Arc<Metrics>,
}

impl Shared {
    pub(super) fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves counters at worst slightly off; keep going.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn publish_gauges(&self, st: &State) {
        self.metrics
            .spool_events
            .set(i64::try_from(st.live).unwrap_or(i64::MAX));
        self.metrics
            .spool_bytes
            .set(i64::try_from(st.disk).unwrap_or(i64::MAX));
    }

    /// An append was handed to the writer; an idle writer's progress clock starts now. Counted
    /// after the hand-over (nothing to undo if the caller gives up waiting), so the writer may
    /// count it done first: the gauge can dip below zero for a moment.
    pub(super) fn queued(&self) {
        if self.metrics.spool_writer_pending.inc() <= 0 {
            self.metrics.spool_writer_progress.set(unix_seconds());
        }
    }

    /// The writer answered `appends` appends (committed or failed): progress.
    pub(super) fn progressed(&self, appends: usize) {
        self.metrics.spool_writer_progress.set(unix_seconds());
        self.metrics
            .spool_writer_pending
            .dec_by(i64::try_from(appends).unwrap_or(i64::MAX));
    }

    /// Takes a fully released, inactive segment out of the spool and hands its file to the writer
    /// thread for deletion ([`Shared::bury`]); its bytes are freed once the file is gone.
    pub(super) fn retire(&self, st: &mut State, first_id: u64) {
        if let Some(seg) = st.segments.remove(&first_id) {
            st.doomed.push(Doomed {
                path: seg.path,
                bytes: seg.bytes,
                first_id: seg.first_id,
                has_releases: seg.has_releases,
            });
        }
    }

    /// Deletes the retired segments' files and frees their bytes. The writer thread's work: the
    /// deletions run outside the lock. A retired segment's release records may name records of
    /// older segments still on disk: their `.live` files are written first.
    pub(super) fn bury(&self) {
        let doomed = std::mem::take(&mut self.lock().doomed);
        if doomed.is_empty() {
            return;
        }
        if let Some(limit) = doomed
            .iter()
            .filter(|d| d.has_releases)
            .map(|d| d.first_id)
            .max()
        {
            self.save_live_sets(limit);
        }
        let mut freed = 0u64;
        for d in doomed {
            if let Err(e) = fs::remove_file(&d.path)
                && e.kind() != std::io::ErrorKind::NotFound
            {
                tracing::warn!(path = %d.path.display(), error = %e,
                        "could not delete a released spool segment; its records may be replayed after a restart");
            }
            // Its live-set file, if it has one.
            let _ = fs::remove_file(live_path(&d.path));
            freed += d.bytes;
        }
        let mut st = self.lock();
        st.used = st.used.saturating_sub(freed);
        st.disk = st.disk.saturating_sub(freed);
        self.publish_gauges(&st);
        drop(st);
        self.space.notify_waiters();
    }

    /// Writes (fsynced, directory too) the `.live` file of every inactive segment older than
    /// `limit` whose releases its `.live` file does not show yet.
    fn save_live_sets(&self, limit: u64) {
        let stale: Vec<_> = {
            let st = self.lock();
            st.segments
                .range(..limit)
                .map(|(_, s)| s)
                .filter(|s| !s.active && s.released_gen != s.live_file_gen)
                .map(|s| {
                    (
                        s.first_id,
                        s.path.clone(),
                        s.count,
                        s.live.clone(),
                        s.released_gen,
                    )
                })
                .collect()
        };
        let mut saved = Vec::new();
        for (first_id, path, count, live, generation) in stale {
            match write_live_set(&path, count, &live) {
                Ok(()) => saved.push((first_id, generation)),
                Err(e) => tracing::warn!(path = %path.display(), error = %e,
                    "cannot record a spool segment's live set before deleting a newer segment; \
                     some of its released records may be replayed after a crash"),
            }
        }
        if saved.is_empty() {
            return;
        }
        sync_dir(&self.dir);
        let mut st = self.lock();
        for (first_id, generation) in saved {
            if let Some(s) = st.segments.get_mut(&first_id) {
                s.live_file_gen = generation;
            }
        }
    }
}

fn unix_seconds() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}
