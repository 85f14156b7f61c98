//! The durable local spool for the WebSocket source.
//!
//! Fondo's WebSocket stream has no acknowledgements: an event read from the socket and then lost in a
//! crash is gone for good. So every event is appended here, and made durable with `fsync`, *before*
//! it counts as received; it is released when its destinations delivered or dead-lettered it. On
//! start the source replays every record that was not released, each with the occurrence id it was
//! spooled with, so a replay republishes an event under the same id.
//!
//! # On disk
//!
//! A directory of append-only segment files named `<first record id, 20 digits>.seg`. Each file
//! starts with an 8-byte magic, then records, all framed alike:
//!
//! ```text
//! u32 LE  body length
//! u32 LE  CRC32 of (id field bytes ++ body)
//! u64 LE  id field
//! body
//! ```
//!
//! Segments written by this build start with `FBSPOOL2` and hold two kinds of record:
//!
//! - **event record**: the id field is the record id (below 2^63, strictly increasing and
//!   contiguous within a segment); body: `u16 LE client id length, client id (UTF-8), u8 occurrence
//!   id length, occurrence id (UTF-8), payload (the frame's bytes)`.
//! - **release record**: the id field has its top bit set, and its other bits are the id the next
//!   event record of the segment would take (its position in the id sequence, checked on
//!   recovery like an event record's id); body: the ids of released event records, `u64 LE` each, at
//!   most 4096 per record (larger sets are split). A release record only names records that were
//!   durable before it, so always records of its own or of older segments.
//!
//! Segments written by older builds start with `FBSPOOL1`: event records only, with the body `u16
//! LE client id length, client id, payload`. They are recovered and replayed like the others, with no
//! occurrence id (`occurrence_id: None`); this build never appends to them (a recovered segment is
//! never appended to) and writes only `FBSPOOL2` segments.
//!
//! Next to a segment there may be a `<segment>.live` file: `FBLIVE01`, u64 LE record count, the
//! bitmap of records still live (u64 LE words), CRC32 LE of all that; written to a temporary name,
//! fsynced and renamed.
//!
//! # Writing
//!
//! One writer thread owns the active segment. Appends queue up while it is busy; it takes every
//! queued append (up to a batch limit), writes them with one `write`, and `fsync`s once for the whole
//! batch (group commit). While appends keep arriving, a batch waits for them, up to
//! `group_commit_ms` after the previous commit started ([`crate::group_commit::CommitPacer`]); a
//! batch of [`Pace::Patient`] appends (the WebSocket source, which reads on meanwhile) waits for
//! that whole interval under a steady stream. An append resolves only after the fsync of its
//! batch. When the active segment reaches
//! `segment_bytes` it is sealed and a new one is started with the next append.
//!
//! # Failed writes
//!
//! A batch whose `write` or `fsync` fails (a full disk, an I/O error) is not failed back to its
//! appenders: the writer cuts the bytes it wrote off the segment again (`set_len`, so a full disk
//! gets them back and the file ends on a whole record), seals the segment, and keeps the batch.
//! It writes it again, into a new segment, after a backoff (50 ms doubling to 1 s) or at once
//! when deleting released segments freed space; appends queued meanwhile join the batch behind
//! it, so records keep the order they were appended in. Releases keep working meanwhile: they are
//! what frees a full disk. [`Spool::write_error`] says why while a batch waits, so a source can
//! stop taking new events (the WebSocket source stops reading). Only when the spool is closed
//! with a batch still waiting do its appends fail ([`SpoolError::WriteFailed`]).
//!
//! # Releasing
//!
//! [`Spool::release`] runs where the dispatcher acknowledges, on an async worker, so it never waits
//! for the filesystem: it clears the record's bit in its segment's in-memory bitmap and queues the
//! id for the writer thread. The writer writes the queued ids as release records in front of the
//! next batch of appends, in the same `write` and the same `fsync`: while appends flow, releases
//! cost no fsync of their own. A release does not wake the writer: a writer with live records
//! waits at most one release window before it looks for queued releases. When releases are queued
//! and no append comes, the writer commits them on their own once the oldest has waited the
//! release window (`group_commit_ms`, at least 1 s), so an idle stream's releases become durable
//! too. At 100 events/s, a window of a few milliseconds cost an fsync per event for releases
//! alone; with 1 s they ride along with the next event's commit. A queued id whose segment is
//! already gone is dropped: a deleted segment's records cannot come back.
//!
//! A segment file is deleted when all its event records are released: by the writer thread. Its
//! bytes count against `max_bytes` until the file is gone. Its release records may be all that
//! remembers releases of records in *older* segments that are still on disk, so before such a
//! segment is deleted the writer writes (and fsyncs) the `.live` file of every older segment with
//! releases its `.live` file does not show yet. A live set only shrinks (a segment is never
//! appended to once sealed or recovered), so a `.live` file stays a safe over-estimate for as long
//! as its segment exists.
//!
//! On a clean close (the last [`Spool`] clone dropped) the writer deletes every segment with nothing
//! live left (after those `.live` files), and writes the `.live` file of every other one. Releases
//! still queued then need no release record: the `.live` files hold them.
//!
//! # What a restart replays
//!
//! Recovery scans every segment, collects the released ids of the release records of all segments,
//! and replays a record iff no release record names it and, when its segment has a valid `.live`
//! file (matching CRC and record count), that file shows it live. So:
//!
//! - after a clean close: exactly the records not released;
//! - after a crash (`kill -9`, power loss): the records not released, plus the releases that were
//!   not durable yet. Those are the releases queued since the last commit (at most the release
//!   window, `group_commit_ms` but at least 1 s, while nothing is appended; the time until the
//!   next group commit while appends flow), plus those of a commit whose `fsync` had not
//!   returned: duplicates under the same occurrence id, never a loss. A release only counts once [`Spool::release`] returned, so an event being
//!   delivered at the crash is replayed too. Rarer extras: the releases recorded in a segment that
//!   was deleted when the `.live` file of an older segment could not be written (logged).
//!
//! Why release records and not a rewritten bitmap: a release record is appended to the file the
//! writer fsyncs anyway, so under load a release costs 8 bytes in a write that happens regardless,
//! and no extra fsync; rewriting `.live` files on every commit would cost a file write, an fsync and
//! a rename per touched segment per commit. `.live` files are written only when something would be
//! forgotten otherwise (a segment with release records deleted) and on a clean close.
//! Duplicates are allowed (downstream dedupes on the occurrence id), loss is not: every path above
//! errs towards replaying a released record, never towards dropping a live one.
//!
//! # Bounded
//!
//! The bytes of all segment files plus the appends not yet written never exceed `max_bytes`: an
//! append waits for space (the source stops reading its socket meanwhile). Nothing is dropped.
//! Release records count too, yet never wait for space (waiting for space to record the releases
//! that free space could deadlock a full spool): each append reserves, besides its own size, a
//! 32-byte slot for the release record entry it will need (8 bytes for its id, and room for a
//! release record header and a segment magic should it be written alone). Writing a release
//! record spends the slots of the ids in it; an id dropped because its segment is gone frees its
//! slot. So release records always fit in what was reserved, and a full spool whose records are
//! released frees space as before: a fully released segment goes whatever release records it
//! holds (the active one as soon as an append waits for space).
//!
//! # Recovery
//!
//! On open every segment is scanned. A short record (torn write) or a record whose CRC or id does
//! not check out ends the segment's good prefix, for release records as for event records; the rest
//! of the file is copied to `quarantine/` for inspection, logged, counted, and cut off the segment.
//! The good prefix is replayed (less what is released). Segments with nothing live left are then
//! deleted, after the `.live` files of the other segments whose live sets release records shrank.

mod format;
mod recovery;
mod replay;
mod segment;
mod state;
mod writer;

#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::{Notify, mpsc, oneshot};

use crate::config::SpoolConfig;
use crate::group_commit::Pace;
use crate::metrics::Metrics;

pub use replay::Replay;

use format::{HEADER, MAGIC_LEN};
use recovery::recover;
use state::{MIN_RELEASE_WINDOW, RELEASE_SLOT, Shared, State};
use writer::{Cmd, QUEUE, Writer};

/// The longest occurrence id.
pub const MAX_OCCURRENCE_ID: usize = 255;

/// What can go wrong with the spool.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    /// A filesystem operation failed.
    #[error("spool I/O error {context} ({path}): {source}")]
    Io {
        /// What was being done.
        context: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// A record that could never fit, even in an empty spool.
    #[error("record of {size} bytes can never fit in a spool of max_bytes {max}")]
    TooLarge {
        /// The record's size on disk.
        size: u64,
        /// The configured limit.
        max: u64,
    },
    /// The client id is longer than a record can hold.
    #[error("client id longer than 65535 bytes")]
    ClientIdTooLong,
    /// The occurrence id is longer than a record can hold.
    #[error("occurrence id longer than 255 bytes")]
    OccurrenceIdTooLong,
    /// The writer thread is gone (it hit an error it could not recover from, or the spool closed).
    #[error("the spool writer has stopped")]
    Closed,
    /// The spool closed while the record's batch still waited to be written again after failed
    /// writes; the record is not durable.
    #[error("spool write failed: {0}")]
    WriteFailed(String),
}

fn io_err<'a>(
    context: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> SpoolError + 'a {
    move |source| SpoolError::Io {
        context,
        path: path.to_path_buf(),
        source,
    }
}

/// One spooled event, as replayed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpoolRecord {
    /// The record id, to [`Spool::release`] it.
    pub id: u64,
    /// The client id of the stream the event came from.
    pub client_id: String,
    /// The occurrence id the event was spooled with; `None` for a record written by an older build
    /// (an `FBSPOOL1` segment).
    pub occurrence_id: Option<String>,
    /// The frame's bytes, exactly as read.
    pub payload: Bytes,
}

/// What [`Spool::open`] found on disk.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Segment files found.
    pub segments: usize,
    /// Good records found that are not released: all of them will be replayed.
    pub records: u64,
    /// Good records that release records or a segment's `.live` file mark released: not replayed.
    pub released: u64,
    /// Segments whose tail was corrupt or truncated.
    pub corrupt_segments: usize,
    /// Bytes cut off those segments (copied to `quarantine/`).
    pub discarded_bytes: u64,
    /// Files in the directory that are not segments and were left alone.
    pub ignored_files: usize,
}

/// The durable spool. Cheap to clone; every clone appends to and releases from the same files.
/// The writer thread stops when the last clone is dropped, and that drop waits for it: on the way
/// out it deletes every segment with nothing live left, so a clean shutdown replays nothing that
/// was delivered.
#[derive(Clone)]
pub struct Spool {
    shared: Arc<Shared>,
    // Dropped before `_writer`: the last clone's drop closes the queue, then joins the writer.
    tx: mpsc::Sender<Cmd>,
    _writer: Arc<WriterThread>,
}

/// Joins the writer thread when the last [`Spool`] clone is dropped.
struct WriterThread(Mutex<Option<std::thread::JoinHandle<()>>>);

impl Drop for WriterThread {
    fn drop(&mut self) {
        let handle = self.0.get_mut().ok().and_then(Option::take);
        if let Some(h) = handle
            && h.join().is_err()
        {
            tracing::error!("the spool writer thread panicked");
        }
    }
}

impl std::fmt::Debug for Spool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Spool")
            .field("dir", &self.shared.dir)
            .field("max_bytes", &self.shared.max_bytes)
            .finish()
    }
}

/// An append that was queued and is waiting for its group commit.
#[derive(Debug)]
pub struct PendingAppend {
    rx: oneshot::Receiver<Result<u64, SpoolError>>,
}

impl PendingAppend {
    /// Resolves with the record id once the record is on disk and fsynced. While the spool
    /// cannot write this waits (see "Failed writes" in the module docs); it fails only when the
    /// spool closes first.
    pub async fn wait(self) -> Result<u64, SpoolError> {
        self.rx.await.unwrap_or(Err(SpoolError::Closed))
    }

    /// [`PendingAppend::wait`] without giving the append up, for a `select!` that may drop the
    /// wait. Not to be called again once it returned.
    pub async fn durable(&mut self) -> Result<u64, SpoolError> {
        (&mut self.rx).await.unwrap_or(Err(SpoolError::Closed))
    }
}

/// Decrements the waiting count when an append stops waiting for space.
struct Waiting<'a>(&'a Shared);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        let mut st = self.0.lock();
        st.waiting = st.waiting.saturating_sub(1);
    }
}

impl Spool {
    /// Opens (creating if needed) the spool in `cfg.dir`, recovers what is there and starts the
    /// writer thread. Records found are live until released; [`Spool::replay`] yields them.
    pub fn open(
        cfg: &SpoolConfig,
        metrics: Arc<Metrics>,
    ) -> Result<(Self, RecoveryReport), SpoolError> {
        let dir = cfg.dir.clone();
        crate::private_fs::create_dir_all(&dir)
            .map_err(io_err("creating the spool directory", &dir))?;
        let (segments, next_id, report) = recover(&dir, &metrics)?;
        let mut st = State::default();
        for seg in segments {
            // Every live record will want its id in a release record.
            st.used += seg.bytes + RELEASE_SLOT * seg.live_count;
            st.disk += seg.bytes;
            st.live += seg.live_count;
            st.segments.insert(seg.first_id, seg);
        }
        let group_commit = Duration::from_millis(cfg.group_commit_ms);
        metrics
            .spool_max_bytes
            .set(i64::try_from(cfg.max_bytes.max(1)).unwrap_or(i64::MAX));
        let shared = Arc::new(Shared {
            dir: dir.clone(),
            max_bytes: cfg.max_bytes.max(1),
            segment_bytes: cfg.segment_bytes.max(4096),
            group_commit,
            release_window: group_commit.max(MIN_RELEASE_WINDOW),
            state: Mutex::new(st),
            space: Notify::new(),
            metrics,
        });
        {
            let st = shared.lock();
            shared.publish_gauges(&st);
        }
        // The writer waits for appends with a deadline while releases are queued: a timer of its
        // own, on its own thread.
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .map_err(io_err("starting the spool writer's timer", &dir))?;
        let (tx, rx) = mpsc::channel(QUEUE);
        let writer = Writer::new(Arc::clone(&shared), next_id);
        let handle = std::thread::Builder::new()
            .name("spool-writer".into())
            .spawn(move || writer.run(rx, &rt))
            .map_err(io_err("starting the spool writer thread", &dir))?;
        if report.records > 0 || report.corrupt_segments > 0 {
            tracing::info!(
                dir = %dir.display(),
                segments = report.segments,
                records = report.records,
                released = report.released,
                corrupt_segments = report.corrupt_segments,
                discarded_bytes = report.discarded_bytes,
                "spool recovered; unreleased records will be replayed"
            );
        }
        Ok((
            Self {
                shared,
                tx,
                _writer: Arc::new(WriterThread(Mutex::new(Some(handle)))),
            },
            report,
        ))
    }

    /// The size an event record takes on disk.
    pub fn record_size(client_id: &str, occurrence_id: &str, payload: &[u8]) -> u64 {
        (HEADER + 2 + client_id.len() + 1 + occurrence_id.len() + payload.len()) as u64
    }

    /// Appends a record and waits until it is durable; returns its id.
    pub async fn append(
        &self,
        client_id: &str,
        occurrence_id: &str,
        payload: Bytes,
    ) -> Result<u64, SpoolError> {
        self.begin_append(client_id, occurrence_id, payload, Pace::Prompt)
            .await?
            .wait()
            .await
    }

    /// Like [`Spool::begin_append`], for a caller that does not wait for the commit to go on (the
    /// WebSocket source, which publishes the event meanwhile and releases it once both are
    /// done): the batch waits up to [`crate::group_commit::BACKGROUND`] for more appends, even
    /// after a quiet period, so a slow stream shares its fsyncs too.
    pub async fn begin_background_append(
        &self,
        client_id: &str,
        occurrence_id: &str,
        payload: Bytes,
    ) -> Result<PendingAppend, SpoolError> {
        self.queue_append(client_id, occurrence_id, payload, Pace::Patient, true)
            .await
    }

    /// Waits for space (backpressure), then queues the record for the next group commit. The
    /// returned [`PendingAppend`] resolves after the fsync; appends queued from one task are
    /// written in the order they were queued. `pace` says whether the caller waits for this
    /// commit before it appends more ([`Pace::Prompt`]) or keeps appending ([`Pace::Patient`]).
    /// `occurrence_id` (at most 255 bytes) comes back with the record on replay.
    pub async fn begin_append(
        &self,
        client_id: &str,
        occurrence_id: &str,
        payload: Bytes,
        pace: Pace,
    ) -> Result<PendingAppend, SpoolError> {
        self.queue_append(client_id, occurrence_id, payload, pace, false)
            .await
    }

    async fn queue_append(
        &self,
        client_id: &str,
        occurrence_id: &str,
        payload: Bytes,
        pace: Pace,
        background: bool,
    ) -> Result<PendingAppend, SpoolError> {
        if client_id.len() > usize::from(u16::MAX) {
            return Err(SpoolError::ClientIdTooLong);
        }
        if occurrence_id.len() > MAX_OCCURRENCE_ID {
            return Err(SpoolError::OccurrenceIdTooLong);
        }
        let size = Self::record_size(client_id, occurrence_id, &payload);
        self.reserve(size).await?;
        let (reply, rx) = oneshot::channel();
        let cmd = Cmd::Append {
            client_id: client_id.to_owned(),
            occurrence_id: occurrence_id.to_owned(),
            payload,
            pace,
            background,
            reply,
        };
        if self.tx.send(cmd).await.is_err() {
            let mut st = self.shared.lock();
            st.used = st.used.saturating_sub(size + RELEASE_SLOT);
            return Err(SpoolError::Closed);
        }
        self.shared.queued();
        Ok(PendingAppend { rx })
    }

    /// Reserves the record's bytes and its release slot.
    async fn reserve(&self, size: u64) -> Result<(), SpoolError> {
        let max = self.shared.max_bytes;
        let take = size + RELEASE_SLOT;
        // Room for the record, its release slot and, should it start a new segment, the
        // segment's magic.
        let need = take + MAGIC_LEN;
        if need > max {
            return Err(SpoolError::TooLarge { size, max });
        }
        let mut waiting: Option<Waiting<'_>> = None;
        loop {
            // Fast path without registering for a wake-up.
            {
                let mut st = self.shared.lock();
                if st.used + need <= max {
                    st.used += take;
                    return Ok(());
                }
            }
            let notified = self.shared.space.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                // Checked again now that a release cannot slip by unnoticed.
                let mut st = self.shared.lock();
                if st.used + need <= max {
                    st.used += take;
                    return Ok(());
                }
                if waiting.is_none() {
                    st.waiting += 1;
                    drop(st);
                    waiting = Some(Waiting(&self.shared));
                    tracing::debug!(max_bytes = max, "spool full; waiting for released events");
                }
            }
            // The active segment may be fully released yet still count; ask the writer to retire it.
            let _ = self.tx.try_send(Cmd::Maintain);
            notified.await;
        }
    }

    /// Releases a record: its destinations delivered, dead-lettered or rejected it. Releasing an
    /// unknown or already released id does nothing. Never waits for the filesystem: the release
    /// is recorded on disk by the writer thread with its next commit (see the module docs).
    pub fn release(&self, id: u64) {
        let mut st = self.shared.lock();
        let Some((&first, seg)) = st.segments.range_mut(..=id).next_back() else {
            return;
        };
        if !seg.holds(id) || !seg.clear_live(id - seg.first_id) {
            return;
        }
        let empty = seg.live_count == 0;
        let active = seg.active;
        // The writer retires a fully released active segment only when its space is wanted.
        let big = seg.bytes >= self.shared.segment_bytes / 4;
        let retire_active = empty && active && (big || st.waiting > 0);
        st.live = st.live.saturating_sub(1);
        if st.pending.is_empty() {
            st.pending_since = Some(Instant::now());
        }
        st.pending.push(id);
        if empty && !active {
            self.shared.retire(&mut st, first);
        }
        self.shared.publish_gauges(&st);
        drop(st);
        if (empty && !active) || retire_active {
            // The writer deletes a retired segment, or retires the active one. The release itself
            // needs no wake-up: it rides along with the next append, and a writer with live
            // records looks for queued releases at least once per release window. A full queue
            // means the writer is busy and looks after its batch anyway; a writer that is gone
            // leaves the files for the next start (replayed, not lost).
            let _ = self.tx.try_send(Cmd::Maintain);
        }
    }

    /// Records not yet released.
    pub fn live_records(&self) -> u64 {
        self.shared.lock().live
    }

    /// Bytes of segment files on disk.
    pub fn disk_bytes(&self) -> u64 {
        self.shared.lock().disk
    }

    /// Segment files on disk.
    pub fn segment_count(&self) -> usize {
        self.shared.lock().segments.len()
    }

    /// Why the spool cannot write, while appends wait for it to write again: `None` when the last
    /// write succeeded. See "Failed writes" in the module docs.
    pub fn write_error(&self) -> Option<String> {
        self.shared.lock().write_error.clone()
    }

    /// Appends waiting for space right now.
    pub fn waiting_for_space(&self) -> usize {
        self.shared.lock().waiting
    }

    /// The spool directory.
    pub fn dir(&self) -> &Path {
        &self.shared.dir
    }

    /// The records recovered by [`Spool::open`] that are not released yet, oldest first, read from
    /// disk lazily (memory stays bounded however large the spool). Blocking file reads: this is
    /// for start-up, before the source connects.
    pub fn replay(&self) -> Replay {
        let st = self.shared.lock();
        let segments = st
            .segments
            .values()
            .filter(|s| s.recovered)
            .map(|s| (s.first_id, s.path.clone()))
            .collect::<Vec<_>>();
        Replay {
            shared: Arc::clone(&self.shared),
            segments: segments.into_iter(),
            current: None,
        }
    }
}
