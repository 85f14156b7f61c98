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
//! cost no fsync of their own. When releases are queued and no append comes, the writer commits
//! them on their own once the oldest has waited `group_commit_ms` (at least 1 ms), so an idle
//! stream's releases become durable too. A queued id whose segment is already gone is dropped: a
//! deleted segment's records cannot come back.
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
//!   not durable yet. Those are the releases of about one commit window: the ones queued since the
//!   last commit (at most `group_commit_ms`, at least 1 ms, while nothing is appended; the time
//!   until the next group commit while appends flow), plus those of a commit whose `fsync` had not
//!   returned. A release only counts once [`Spool::release`] returned, so an event being
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

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::{Notify, mpsc, oneshot};

use crate::config::SpoolConfig;
use crate::group_commit::{CommitPacer, Gathered, Pace};
use crate::metrics::{Metrics, SourceReasonLabels};

/// The magic at the start of every segment file this build writes.
const MAGIC: &[u8; 8] = b"FBSPOOL2";
/// The magic of segments written by older builds: no occurrence ids, no release records.
const MAGIC_V1: &[u8; 8] = b"FBSPOOL1";
/// Bytes of a segment's magic.
const MAGIC_LEN: u64 = 8;
/// Bytes of a record's header: length, CRC, id.
const HEADER: usize = 16;
/// No record body is ever this large; a length beyond it is corruption.
const MAX_RECORD_BODY: usize = 256 * 1024 * 1024;
/// The most appends one group commit takes.
const MAX_BATCH_RECORDS: usize = 4096;
/// The most bytes one group commit writes.
const MAX_BATCH_BYTES: usize = 8 * 1024 * 1024;
/// Appends queued for the writer before `append` waits.
const QUEUE: usize = 8192;
/// Set in the id field of a release record, never in an event record's id.
const RELEASE_FLAG: u64 = 1 << 63;
/// The most ids one release record holds.
const MAX_RELEASE_IDS: usize = 4096;
/// What an append reserves, besides its own size, for its id in a release record: 8 bytes, plus a
/// release record header and a segment magic in case it is written alone.
const RELEASE_SLOT: u64 = 8 + HEADER as u64 + MAGIC_LEN;
/// The shortest wait before queued releases are committed on their own.
const MIN_RELEASE_WINDOW: Duration = Duration::from_millis(1);
/// The longest occurrence id.
pub const MAX_OCCURRENCE_ID: usize = 255;

/// Which build wrote a segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    /// `FBSPOOL1`: event records without occurrence ids, no release records.
    V1,
    /// `FBSPOOL2`: event records with occurrence ids, release records.
    V2,
}

fn format_of(magic: &[u8; 8]) -> Option<Format> {
    if magic == MAGIC {
        Some(Format::V2)
    } else if magic == MAGIC_V1 {
        Some(Format::V1)
    } else {
        None
    }
}

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

#[derive(Debug)]
struct Segment {
    path: PathBuf,
    first_id: u64,
    /// Event records in the segment (ids `first_id .. first_id + count`).
    count: u64,
    /// One bit per record: still live (not released).
    live: Vec<u64>,
    live_count: u64,
    /// Bytes of the file (magic and records).
    bytes: u64,
    /// The writer appends to it.
    active: bool,
    /// Found on open: its live records are what `replay` yields.
    recovered: bool,
    /// Holds release records (which may name records of older segments).
    has_releases: bool,
    /// Bumped by every release of one of its records.
    released_gen: u64,
    /// `released_gen` when its `.live` file was last written: when they differ, some of its
    /// releases are only in release records (or not durable yet).
    live_file_gen: u64,
}

impl Segment {
    fn new(path: PathBuf, first_id: u64, count: u64, bytes: u64, active: bool) -> Self {
        Self {
            path,
            first_id,
            count,
            live: Vec::new(),
            live_count: 0,
            bytes,
            active,
            recovered: !active,
            has_releases: false,
            released_gen: 0,
            live_file_gen: 0,
        }
    }

    fn set_live(&mut self, idx: u64) {
        let (w, b) = ((idx / 64) as usize, idx % 64);
        if self.live.len() <= w {
            self.live.resize(w + 1, 0);
        }
        self.live[w] |= 1 << b;
        self.live_count += 1;
    }

    /// Clears a live bit; `false` when it was not set (already released, unknown id).
    fn clear_live(&mut self, idx: u64) -> bool {
        let (w, b) = ((idx / 64) as usize, idx % 64);
        match self.live.get_mut(w) {
            Some(word) if *word & (1 << b) != 0 => {
                *word &= !(1 << b);
                self.live_count -= 1;
                self.released_gen += 1;
                true
            }
            _ => false,
        }
    }

    fn is_live(&self, idx: u64) -> bool {
        let (w, b) = ((idx / 64) as usize, idx % 64);
        self.live.get(w).is_some_and(|word| word & (1 << b) != 0)
    }

    fn holds(&self, id: u64) -> bool {
        id >= self.first_id && id < self.first_id + self.count
    }
}

/// A fully released segment taken out of the spool, for the writer to delete.
#[derive(Debug)]
struct Doomed {
    path: PathBuf,
    bytes: u64,
    first_id: u64,
    has_releases: bool,
}

#[derive(Debug, Default)]
struct State {
    segments: BTreeMap<u64, Segment>,
    /// Bytes on disk, plus bytes reserved by appends not yet written, plus the release slots of
    /// records whose release is not written yet (see "Bounded" in the module docs).
    used: u64,
    /// Bytes of segment files on disk.
    disk: u64,
    /// Records not released.
    live: u64,
    /// Appends waiting for space.
    waiting: usize,
    /// Fully released segments taken out of `segments`, for the writer to delete; their bytes
    /// are still in `used` and `disk`.
    doomed: Vec<Doomed>,
    /// Released ids not yet written in a release record.
    pending: Vec<u64>,
    /// When the oldest of `pending` was released.
    pending_since: Option<Instant>,
    /// Why the last write failed, while the writer holds appends it could not write yet.
    write_error: Option<String>,
}

struct Shared {
    dir: PathBuf,
    max_bytes: u64,
    segment_bytes: u64,
    /// How long a group commit may wait for more appends (`group_commit_ms`).
    group_commit: Duration,
    /// How long queued releases wait for appends to ride along with before they are committed on
    /// their own: `group_commit`, at least [`MIN_RELEASE_WINDOW`].
    release_window: Duration,
    state: Mutex<State>,
    space: Notify,
    metrics: Arc<Metrics>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves counters at worst slightly off; keep going.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn publish_gauges(&self, st: &State) {
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
    fn queued(&self) {
        if self.metrics.spool_writer_pending.inc() <= 0 {
            self.metrics.spool_writer_progress.set(unix_seconds());
        }
    }

    /// The writer answered `appends` appends (committed or failed): progress.
    fn progressed(&self, appends: usize) {
        self.metrics.spool_writer_progress.set(unix_seconds());
        self.metrics
            .spool_writer_pending
            .dec_by(i64::try_from(appends).unwrap_or(i64::MAX));
    }

    /// Takes a fully released, inactive segment out of the spool and hands its file to the writer
    /// thread for deletion ([`Shared::bury`]); its bytes are freed once the file is gone.
    fn retire(&self, st: &mut State, first_id: u64) {
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
    fn bury(&self) {
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
            if let Err(e) = fs::remove_file(&d.path) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    tracing::warn!(path = %d.path.display(), error = %e,
                        "could not delete a released spool segment; its records may be replayed after a restart");
                }
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

enum Cmd {
    Append {
        client_id: String,
        occurrence_id: String,
        payload: Bytes,
        pace: Pace,
        reply: oneshot::Sender<Result<u64, SpoolError>>,
    },
    /// Something was released: releases are queued for a release record, or a segment may be
    /// retired; or an append waits for space.
    Maintain,
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
        if let Some(h) = handle {
            if h.join().is_err() {
                tracing::error!("the spool writer thread panicked");
            }
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
        let writer = Writer {
            shared: Arc::clone(&shared),
            next_id,
            active: None,
        };
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
        st.live = st.live.saturating_sub(1);
        let first_pending = st.pending.is_empty();
        if first_pending {
            st.pending_since = Some(Instant::now());
        }
        st.pending.push(id);
        if empty && !active {
            self.shared.retire(&mut st, first);
        }
        self.shared.publish_gauges(&st);
        drop(st);
        if empty || first_pending {
            // The writer records the release, deletes a retired segment, or retires the active
            // one if its space is wanted. A full queue means the writer is busy and looks at the
            // queued releases after its batch anyway; a writer that is gone leaves the files for
            // the next start (replayed, not lost).
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

fn unix_seconds() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Iterator over the unreleased records recovered on open. See [`Spool::replay`].
pub struct Replay {
    shared: Arc<Shared>,
    segments: std::vec::IntoIter<(u64, PathBuf)>,
    current: Option<(PathBuf, Format, BufReader<File>)>,
}

impl Iterator for Replay {
    type Item = Result<SpoolRecord, SpoolError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if self.current.is_none() {
                let (_, path) = self.segments.next()?;
                let file = match File::open(&path) {
                    Ok(f) => f,
                    // Released and deleted meanwhile.
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(e) => return Some(Err(io_err("opening a spool segment", &path)(e))),
                };
                let mut r = BufReader::with_capacity(256 * 1024, file);
                let mut magic = [0u8; 8];
                if let Err(e) = r.read_exact(&mut magic) {
                    return Some(Err(io_err("reading a spool segment", &path)(e)));
                }
                let Some(format) = format_of(&magic) else {
                    tracing::error!(path = %path.display(),
                        "spool segment changed on disk after recovery (bad magic); skipping it");
                    continue;
                };
                self.current = Some((path, format, r));
            }
            let Some((path, format, reader)) = self.current.as_mut() else {
                continue;
            };
            match read_record(reader, *format) {
                Ok(Some((Rec::Event(rec), _))) => {
                    let live = {
                        let st = self.shared.lock();
                        st.segments
                            .range(..=rec.id)
                            .next_back()
                            .is_some_and(|(_, s)| s.holds(rec.id) && s.is_live(rec.id - s.first_id))
                    };
                    if live {
                        return Some(Ok(rec));
                    }
                }
                // Applied on open.
                Ok(Some((Rec::Release { .. }, _))) => {}
                // The good prefix ends where recovery cut the file; anything else is new damage.
                Ok(None) | Err(RecordError::Truncated) => self.current = None,
                Err(RecordError::Corrupt(why)) => {
                    tracing::error!(path = %path.display(), reason = why,
                        "spool segment changed on disk after recovery; skipping its rest");
                    self.current = None;
                }
                Err(RecordError::Io(e)) => {
                    let path = path.clone();
                    self.current = None;
                    return Some(Err(io_err("reading a spool segment", &path)(e)));
                }
            }
        }
    }
}

enum RecordError {
    Truncated,
    Corrupt(&'static str),
    Io(std::io::Error),
}

/// A record read from a segment.
enum Rec {
    Event(SpoolRecord),
    Release {
        /// The id the next event record of the segment takes (the id field without its flag).
        at: u64,
        /// The released ids.
        ids: Vec<u64>,
    },
}

/// Reads one record and the bytes it takes; `Ok(None)` at a clean end of file.
fn read_record(r: &mut impl Read, format: Format) -> Result<Option<(Rec, u64)>, RecordError> {
    let mut header = [0u8; HEADER];
    match read_full(r, &mut header).map_err(RecordError::Io)? {
        0 => return Ok(None),
        n if n < HEADER => return Err(RecordError::Truncated),
        _ => {}
    }
    let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
    let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
    let id_bytes = [
        header[8], header[9], header[10], header[11], header[12], header[13], header[14],
        header[15],
    ];
    if !(2..=MAX_RECORD_BODY).contains(&len) {
        return Err(RecordError::Corrupt("impossible record length"));
    }
    let mut body = vec![0u8; len];
    if read_full(r, &mut body).map_err(RecordError::Io)? < len {
        return Err(RecordError::Truncated);
    }
    let mut h = crc32fast::Hasher::new();
    h.update(&id_bytes);
    h.update(&body);
    if h.finalize() != crc {
        return Err(RecordError::Corrupt("CRC mismatch"));
    }
    let id = u64::from_le_bytes(id_bytes);
    let size = (HEADER + len) as u64;
    if format == Format::V2 && id & RELEASE_FLAG != 0 {
        if len % 8 != 0 {
            return Err(RecordError::Corrupt(
                "release record length is not a multiple of 8",
            ));
        }
        let ids = body
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
            .collect();
        return Ok(Some((
            Rec::Release {
                at: id & !RELEASE_FLAG,
                ids,
            },
            size,
        )));
    }
    let clen = usize::from(u16::from_le_bytes([body[0], body[1]]));
    let mut at = 2 + clen;
    if at > len {
        return Err(RecordError::Corrupt("client id overruns the record"));
    }
    let client_id = std::str::from_utf8(&body[2..at])
        .map_err(|_| RecordError::Corrupt("client id is not UTF-8"))?
        .to_owned();
    let occurrence_id = match format {
        Format::V1 => None,
        Format::V2 => {
            let Some(&olen) = body.get(at) else {
                return Err(RecordError::Corrupt("occurrence id overruns the record"));
            };
            let start = at + 1;
            at = start + usize::from(olen);
            if at > len {
                return Err(RecordError::Corrupt("occurrence id overruns the record"));
            }
            Some(
                std::str::from_utf8(&body[start..at])
                    .map_err(|_| RecordError::Corrupt("occurrence id is not UTF-8"))?
                    .to_owned(),
            )
        }
    };
    let payload = Bytes::from(body).slice(at..);
    Ok(Some((
        Rec::Event(SpoolRecord {
            id,
            client_id,
            occurrence_id,
            payload,
        }),
        size,
    )))
}

/// Reads until `buf` is full or end of file; returns how much was read.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Encodes an `FBSPOOL2` event record.
fn encode_record(buf: &mut Vec<u8>, id: u64, client_id: &str, occurrence_id: &str, payload: &[u8]) {
    let len = 2 + client_id.len() + 1 + occurrence_id.len() + payload.len();
    let id_bytes = id.to_le_bytes();
    let clen = (client_id.len() as u16).to_le_bytes();
    let olen = [occurrence_id.len() as u8];
    let mut h = crc32fast::Hasher::new();
    h.update(&id_bytes);
    h.update(&clen);
    h.update(client_id.as_bytes());
    h.update(&olen);
    h.update(occurrence_id.as_bytes());
    h.update(payload);
    buf.extend_from_slice(&(len as u32).to_le_bytes());
    buf.extend_from_slice(&h.finalize().to_le_bytes());
    buf.extend_from_slice(&id_bytes);
    buf.extend_from_slice(&clen);
    buf.extend_from_slice(client_id.as_bytes());
    buf.extend_from_slice(&olen);
    buf.extend_from_slice(occurrence_id.as_bytes());
    buf.extend_from_slice(payload);
}

/// Encodes release records for `ids` (at most [`MAX_RELEASE_IDS`] each) at position `at` (the id
/// the segment's next event record takes).
fn encode_releases(buf: &mut Vec<u8>, at: u64, ids: &[u64]) {
    let id_bytes = (RELEASE_FLAG | at).to_le_bytes();
    for chunk in ids.chunks(MAX_RELEASE_IDS) {
        let start = buf.len();
        buf.extend_from_slice(&((8 * chunk.len()) as u32).to_le_bytes());
        buf.extend_from_slice(&[0; 4]);
        buf.extend_from_slice(&id_bytes);
        for id in chunk {
            buf.extend_from_slice(&id.to_le_bytes());
        }
        let mut h = crc32fast::Hasher::new();
        h.update(&id_bytes);
        h.update(&buf[start + HEADER..]);
        buf[start + 4..start + 8].copy_from_slice(&h.finalize().to_le_bytes());
    }
}

fn segment_path(dir: &Path, first_id: u64) -> PathBuf {
    dir.join(format!("{first_id:020}.seg"))
}

/// A segment's live-set file: `<segment file name>.live`.
const LIVE_SUFFIX: &str = ".live";
/// The magic at the start of a live-set file.
const LIVE_MAGIC: &[u8; 8] = b"FBLIVE01";

fn live_path(segment: &Path) -> PathBuf {
    let mut name = segment.as_os_str().to_owned();
    name.push(LIVE_SUFFIX);
    PathBuf::from(name)
}

fn word_bit(words: &[u64], idx: u64) -> bool {
    words
        .get((idx / 64) as usize)
        .is_some_and(|w| w & (1 << (idx % 64)) != 0)
}

/// Writes a segment's live set durably: `LIVE_MAGIC`, u64 LE record count, u64 LE words, CRC32 LE
/// of all that. Written to a temporary name, fsynced, then renamed (the caller syncs the directory).
fn write_live_set(segment: &Path, count: u64, live: &[u64]) -> std::io::Result<()> {
    let words = count.div_ceil(64) as usize;
    let mut buf = Vec::with_capacity(16 + 8 * words + 4);
    buf.extend_from_slice(LIVE_MAGIC);
    buf.extend_from_slice(&count.to_le_bytes());
    for i in 0..words {
        buf.extend_from_slice(&live.get(i).copied().unwrap_or(0).to_le_bytes());
    }
    let crc = crc32fast::hash(&buf);
    buf.extend_from_slice(&crc.to_le_bytes());
    let path = live_path(segment);
    let mut tmp = path.clone().into_os_string();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let mut f = crate::private_fs::options()
        .create(true)
        .truncate(true)
        .write(true)
        .open(&tmp)?;
    f.write_all(&buf)?;
    f.sync_all()?;
    fs::rename(&tmp, &path)
}

/// Reads a live-set file for a segment of `count` records; `None` when it is missing, damaged, or
/// written for a different record count (then every record is live, less what release records
/// release).
fn read_live_set(path: &Path, count: u64) -> Option<Vec<u64>> {
    let buf = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e,
                "cannot read a spool live-set file; replaying the whole segment");
            return None;
        }
    };
    let words = count.div_ceil(64) as usize;
    let body_len = 16 + 8 * words;
    let valid = buf.len() == body_len + 4
        && buf.starts_with(LIVE_MAGIC)
        && buf[8..16] == count.to_le_bytes()
        && buf[body_len..] == crc32fast::hash(&buf[..body_len]).to_le_bytes();
    if !valid {
        tracing::warn!(path = %path.display(),
            "spool live-set file is damaged or does not match its segment; replaying the whole segment");
        return None;
    }
    Some(
        buf[16..body_len]
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
            .collect(),
    )
}

fn sync_dir(dir: &Path) {
    // Makes a created or deleted file name durable; not supported everywhere, so best effort.
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

/// Scans the directory: every segment's good prefix, truncating and quarantining bad tails, then
/// applies the release records of all segments and deletes the segments with nothing live left.
fn recover(
    dir: &Path,
    metrics: &Metrics,
) -> Result<(Vec<Segment>, u64, RecoveryReport), SpoolError> {
    let mut report = RecoveryReport::default();
    let mut found = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_err("listing the spool directory", dir))? {
        let entry = entry.map_err(io_err("listing the spool directory", dir))?;
        let path = entry.path();
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if let Some(seg_name) = name.strip_suffix(LIVE_SUFFIX) {
            // A live-set file whose segment is gone has no use; one with a segment is read below.
            if !dir.join(seg_name).is_file() {
                let _ = fs::remove_file(&path);
            }
            continue;
        }
        match name
            .strip_suffix(".seg")
            .and_then(|n| n.parse::<u64>().ok())
        {
            Some(first) if path.is_file() => found.push((first, path)),
            _ => {
                if path.is_file() {
                    report.ignored_files += 1;
                }
            }
        }
    }
    found.sort();
    let mut next_id = 0u64;
    let mut segments: Vec<Segment> = Vec::new();
    let mut released = Vec::new();
    for (first_id, path) in found {
        report.segments += 1;
        let scan = scan_segment(&path, first_id)?;
        if let Some((offset, why)) = scan.bad_tail {
            report.corrupt_segments += 1;
            let file_len = fs::metadata(&path)
                .map_err(io_err("reading a spool segment", &path))?
                .len();
            let cut = file_len.saturating_sub(offset);
            report.discarded_bytes += cut;
            metrics
                .rejected
                .get_or_create(&SourceReasonLabels {
                    source: "websocket".into(),
                    reason: "spool_corrupt".into(),
                })
                .inc();
            let quarantined = quarantine_tail(dir, &path, offset);
            tracing::error!(
                path = %path.display(),
                offset,
                discarded_bytes = cut,
                good_records = scan.count,
                reason = why,
                quarantined = %quarantined.as_deref().map(Path::display).map(|d| d.to_string()).unwrap_or_else(|| "no".into()),
                "spool segment has a corrupt or truncated tail; keeping the good prefix"
            );
            let f = OpenOptions::new()
                .write(true)
                .open(&path)
                .map_err(io_err("truncating a spool segment", &path))?;
            f.set_len(offset)
                .map_err(io_err("truncating a spool segment", &path))?;
            f.sync_all()
                .map_err(io_err("truncating a spool segment", &path))?;
        }
        // A segment without event records still took its first id: no later one may reuse its name.
        next_id = next_id.max(first_id + scan.count.max(1));
        let mut seg = Segment::new(path, first_id, scan.count, scan.good_bytes, false);
        seg.has_releases = scan.has_releases;
        released.extend(scan.releases);
        // The live set of the last clean close or deletion: a safe over-estimate. Its record count
        // must match the good prefix (a segment cut since has fewer records).
        match read_live_set(&live_path(&seg.path), scan.count) {
            Some(words) => {
                for i in (0..scan.count).filter(|&i| word_bit(&words, i)) {
                    seg.set_live(i);
                }
            }
            None => {
                for i in 0..scan.count {
                    seg.set_live(i);
                }
            }
        }
        segments.push(seg);
    }
    // What the release records say; `segments` is sorted by first id.
    for id in released {
        let i = segments.partition_point(|s| s.first_id <= id);
        if let Some(seg) = i.checked_sub(1).and_then(|i| segments.get_mut(i)) {
            if seg.holds(id) {
                seg.clear_live(id - seg.first_id);
            }
        }
    }
    // Segments with nothing live left are deleted. Release records in them may be all that
    // remembers releases of kept segments: write those segments' live sets first.
    if segments.iter().any(|s| s.live_count == 0 && s.has_releases) {
        let mut wrote = false;
        for seg in segments
            .iter_mut()
            .filter(|s| s.live_count > 0 && s.released_gen != s.live_file_gen)
        {
            match write_live_set(&seg.path, seg.count, &seg.live) {
                Ok(()) => {
                    seg.live_file_gen = seg.released_gen;
                    wrote = true;
                }
                Err(e) => tracing::warn!(path = %seg.path.display(), error = %e,
                    "cannot record a spool segment's live set; some of its released records may be replayed after a crash"),
            }
        }
        if wrote {
            sync_dir(dir);
        }
    }
    let mut kept = Vec::new();
    for seg in segments {
        report.released += seg.count - seg.live_count;
        if seg.live_count == 0 {
            // Nothing to replay: remove it (a fresh, fully torn or fully released segment).
            let _ = fs::remove_file(&seg.path);
            let _ = fs::remove_file(live_path(&seg.path));
            continue;
        }
        report.records += seg.live_count;
        kept.push(seg);
    }
    sync_dir(dir);
    Ok((kept, next_id, report))
}

struct Scan {
    /// Event records in the good prefix.
    count: u64,
    good_bytes: u64,
    bad_tail: Option<(u64, &'static str)>,
    /// Ids named by the release records of the good prefix.
    releases: Vec<u64>,
    has_releases: bool,
}

fn scan_segment(path: &Path, first_id: u64) -> Result<Scan, SpoolError> {
    let file = File::open(path).map_err(io_err("opening a spool segment", path))?;
    let mut r = BufReader::with_capacity(256 * 1024, file);
    let mut magic = [0u8; 8];
    let n = read_full(&mut r, &mut magic).map_err(io_err("reading a spool segment", path))?;
    let mut scan = Scan {
        count: 0,
        good_bytes: 0,
        bad_tail: None,
        releases: Vec::new(),
        has_releases: false,
    };
    let format = match format_of(&magic) {
        Some(f) if n == magic.len() => f,
        _ => {
            scan.bad_tail = (n > 0).then_some((0, "not a spool segment (bad magic)"));
            return Ok(scan);
        }
    };
    scan.good_bytes = MAGIC_LEN;
    loop {
        let bad = match read_record(&mut r, format) {
            Ok(None) => return Ok(scan),
            Ok(Some((Rec::Event(rec), size))) => {
                if rec.id == first_id + scan.count {
                    scan.good_bytes += size;
                    scan.count += 1;
                    continue;
                }
                "record id out of sequence"
            }
            Ok(Some((Rec::Release { at, ids }, size))) => {
                if at == first_id + scan.count {
                    scan.good_bytes += size;
                    scan.releases.extend(ids);
                    scan.has_releases = true;
                    continue;
                }
                "release record out of sequence"
            }
            Err(RecordError::Truncated) => "truncated record (torn write)",
            Err(RecordError::Corrupt(why)) => why,
            Err(RecordError::Io(e)) => return Err(io_err("reading a spool segment", path)(e)),
        };
        scan.bad_tail = Some((scan.good_bytes, bad));
        return Ok(scan);
    }
}

/// Copies the bytes from `offset` on into `quarantine/<name>.<offset>.bad`; best effort.
fn quarantine_tail(dir: &Path, path: &Path, offset: u64) -> Option<PathBuf> {
    let qdir = dir.join("quarantine");
    let name = path.file_name()?.to_string_lossy().into_owned();
    let target = qdir.join(format!("{name}.{offset}.bad"));
    let copy = || -> std::io::Result<()> {
        crate::private_fs::create_dir_all(&qdir)?;
        let mut src = File::open(path)?;
        src.seek(SeekFrom::Start(offset))?;
        let mut dst = crate::private_fs::options()
            .create(true)
            .truncate(true)
            .write(true)
            .open(&target)?;
        std::io::copy(&mut src, &mut dst)?;
        dst.sync_all()?;
        sync_dir(&qdir);
        Ok(())
    };
    match copy() {
        Ok(()) => Some(target),
        Err(e) => {
            tracing::warn!(path = %target.display(), error = %e, "could not quarantine a corrupt spool tail");
            None
        }
    }
}

/// A queued append: client id, occurrence id, payload, where to send the id.
type BatchItem = (
    String,
    String,
    Bytes,
    oneshot::Sender<Result<u64, SpoolError>>,
);

/// The first wait before a failed batch is written again.
const RETRY_INITIAL: Duration = Duration::from_millis(50);
/// The longest wait between attempts: how late the spool notices room that something else freed
/// (its own deleted segments wake it at once).
const RETRY_MAX: Duration = Duration::from_secs(1);

/// A batch that could not be written, waiting for its next attempt.
struct Retry {
    at: Instant,
    delay: Duration,
    attempts: u32,
}

impl Retry {
    fn new() -> Self {
        Self {
            at: Instant::now(),
            delay: RETRY_INITIAL,
            attempts: 0,
        }
    }

    fn failed(&mut self) {
        self.attempts = self.attempts.saturating_add(1);
        self.at = Instant::now() + self.delay;
        self.delay = (self.delay * 2).min(RETRY_MAX);
    }
}

struct ActiveFile {
    first_id: u64,
    file: File,
    path: PathBuf,
}

struct Writer {
    shared: Arc<Shared>,
    next_id: u64,
    active: Option<ActiveFile>,
}

impl Writer {
    fn run(mut self, mut rx: mpsc::Receiver<Cmd>, rt: &tokio::runtime::Runtime) {
        let mut batch = Vec::with_capacity(256);
        let mut buf = Vec::with_capacity(1024 * 1024);
        let mut pacer = CommitPacer::new(self.shared.group_commit);
        // Set while a batch could not be written: it is kept and written again at `retry.at`.
        let mut retry: Option<Retry> = None;
        loop {
            // Wait for appends; while releases are queued, only until they are due; while a
            // failed batch waits, only until its next attempt (its releases go with it).
            let due = match &retry {
                Some(r) => Some(r.at),
                None => self.releases_due(),
            };
            let cmd = match due {
                None => match rt.block_on(rx.recv()) {
                    Some(cmd) => Some(cmd),
                    None => break,
                },
                Some(due) => {
                    let due = tokio::time::Instant::from_std(due);
                    // The timer is made inside the runtime, which drives it.
                    match rt.block_on(async { tokio::time::timeout_at(due, rx.recv()).await }) {
                        Ok(Some(cmd)) => Some(cmd),
                        Ok(None) => break,
                        Err(_) => None,
                    }
                }
            };
            let mut bytes = 0usize;
            let mut patient = true;
            let push = |cmd: Cmd, batch: &mut Vec<_>, bytes: &mut usize, patient: &mut bool| {
                if let Cmd::Append {
                    client_id,
                    occurrence_id,
                    payload,
                    pace,
                    reply,
                } = cmd
                {
                    *bytes += payload.len() + HEADER;
                    *patient &= pace == Pace::Patient;
                    batch.push((client_id, occurrence_id, payload, reply));
                }
            };
            if let Some(cmd) = cmd {
                push(cmd, &mut batch, &mut bytes, &mut patient);
                let mut drain = || {
                    while batch.len() < MAX_BATCH_RECORDS && bytes < MAX_BATCH_BYTES {
                        match rx.try_recv() {
                            Ok(cmd) => push(cmd, &mut batch, &mut bytes, &mut patient),
                            Err(_) => break,
                        }
                    }
                    Gathered {
                        size: batch.len(),
                        full: batch.len() >= MAX_BATCH_RECORDS || bytes >= MAX_BATCH_BYTES,
                        patient,
                    }
                };
                // Under load the batch takes what keeps arriving: fewer, larger fsyncs. Not
                // while writes fail: the failed batch waits for space, not for company.
                if drain().size > 0 && retry.is_none() {
                    pacer.gather(drain);
                }
            }
            let disk_before = self.shared.lock().disk;
            self.maintain();
            if let Some(r) = &mut retry {
                // Deleted segments may have made the room the failed batch needs: try now.
                if self.shared.lock().disk < disk_before {
                    r.at = Instant::now();
                }
                if Instant::now() < r.at {
                    continue;
                }
            }
            // Releases ride along with appends (or with the next attempt after a failed write);
            // without appends they go once due.
            let releases = if !batch.is_empty()
                || retry.is_some()
                || self.releases_due().is_some_and(|d| d <= Instant::now())
            {
                self.take_releases()
            } else {
                Vec::new()
            };
            if batch.is_empty() && releases.is_empty() {
                // A failed write of releases alone whose releases are all gone: nothing to retry.
                if retry.take().is_some() {
                    self.shared.lock().write_error = None;
                }
                continue;
            }
            let appends = batch.len();
            match self.write_batch(&mut batch, releases, &mut buf) {
                Ok(()) => {
                    self.shared.progressed(appends);
                    if let Some(r) = retry.take() {
                        self.shared.lock().write_error = None;
                        tracing::info!(
                            failed_attempts = r.attempts,
                            "spool writes work again; the appends that waited are durable"
                        );
                    }
                }
                Err(e) => {
                    // Alive, not stuck: the writer keeps trying (readiness says the spool
                    // cannot write; a restart would not give the disk room).
                    self.shared.progressed(0);
                    let r = retry.get_or_insert_with(Retry::new);
                    r.failed();
                    if r.attempts.is_power_of_two() {
                        tracing::error!(error = %e, failed_attempts = r.attempts,
                            appends_waiting = batch.len(),
                            "spool write failed; its appends are kept and written again, in order, before any later one");
                    }
                    self.shared.lock().write_error = Some(e);
                }
            }
        }
        if !batch.is_empty() {
            // Closed while writes failed: nothing of the batch is on disk (or it was cut off).
            tracing::error!(
                appends = batch.len(),
                "spool closed while its writes were failing; these appends are not durable"
            );
            self.fail(
                &mut batch,
                "the spool closed while its writes were failing",
                true,
            );
        }
        // Every clone is gone, so nothing more is appended or released: delete the segments with
        // nothing live left (the active one too) and leave the rest, durable, for the next start.
        // For every other one, record which records are still live, so the next start replays
        // only those (queued releases included: they need no release record).
        {
            let mut st = self.shared.lock();
            let empty: Vec<u64> = st
                .segments
                .values()
                .filter(|s| s.live_count == 0)
                .map(|s| s.first_id)
                .collect();
            for first in empty {
                self.shared.retire(&mut st, first);
            }
            let mut wrote = false;
            for seg in st.segments.values_mut() {
                match write_live_set(&seg.path, seg.count, &seg.live) {
                    Ok(()) => {
                        wrote = true;
                        seg.live_file_gen = seg.released_gen;
                    }
                    Err(e) => tracing::warn!(path = %seg.path.display(), error = %e,
                        "cannot record a spool segment's live set; the whole segment will be replayed"),
                }
            }
            if wrote {
                sync_dir(&self.shared.dir);
            }
        }
        self.active = None;
        self.shared.bury();
    }

    /// When the queued releases must be committed, with or without appends.
    fn releases_due(&self) -> Option<Instant> {
        self.shared
            .lock()
            .pending_since
            .map(|t| t + self.shared.release_window)
    }

    /// Takes the queued releases, less those whose segment is gone (their slots are freed).
    fn take_releases(&self) -> Vec<u64> {
        let mut st = self.shared.lock();
        st.pending_since = None;
        let mut ids = std::mem::take(&mut st.pending);
        let queued = ids.len();
        ids.retain(|&id| {
            st.segments
                .range(..=id)
                .next_back()
                .is_some_and(|(_, s)| s.holds(id))
        });
        let dropped = (queued - ids.len()) as u64;
        if dropped > 0 {
            st.used = st.used.saturating_sub(RELEASE_SLOT * dropped);
            drop(st);
            self.shared.space.notify_waiters();
        }
        ids
    }

    /// Puts releases that could not be written back in the queue; their slots stay reserved.
    fn requeue_releases(&self, ids: Vec<u64>) {
        if ids.is_empty() {
            return;
        }
        let mut st = self.shared.lock();
        st.pending.extend(ids);
        st.pending_since.get_or_insert_with(Instant::now);
    }

    /// Stops appending to the active segment. One without event records took no id of its own:
    /// the next segment must not reuse its name.
    fn drop_active(&mut self) {
        if let Some(a) = self.active.take() {
            if self.next_id == a.first_id {
                self.next_id += 1;
            }
        }
    }

    /// Retires the active segment when all its records are released and its space is wanted,
    /// then deletes every retired segment's file.
    fn maintain(&mut self) {
        let mut retired = false;
        if let Some(active) = &self.active {
            let mut st = self.shared.lock();
            let waiting = st.waiting > 0;
            if let Some(seg) = st.segments.get_mut(&active.first_id) {
                let wanted = waiting || seg.bytes >= self.shared.segment_bytes / 4;
                // Release records alone do not keep a segment: they can go too.
                if seg.live_count == 0 && seg.bytes > MAGIC_LEN && wanted {
                    seg.active = false;
                    let first = active.first_id;
                    self.shared.retire(&mut st, first);
                    retired = true;
                }
            }
        }
        if retired {
            self.drop_active();
        }
        self.shared.bury();
    }

    fn open_segment(&mut self) -> Result<(), SpoolError> {
        let first_id = self.next_id;
        let path = segment_path(&self.shared.dir, first_id);
        let mut file = crate::private_fs::options()
            .create(true)
            .truncate(true)
            .write(true)
            .open(&path)
            .map_err(io_err("creating a spool segment", &path))?;
        if let Err(e) = file.write_all(MAGIC) {
            // A segment without its magic would be quarantined as garbage on the next start.
            drop(file);
            let _ = fs::remove_file(&path);
            return Err(io_err("writing a spool segment", &path)(e));
        }
        sync_dir(&self.shared.dir);
        let mut st = self.shared.lock();
        st.segments.insert(
            first_id,
            Segment::new(path.clone(), first_id, 0, MAGIC_LEN, true),
        );
        st.used += MAGIC_LEN;
        st.disk += MAGIC_LEN;
        drop(st);
        self.active = Some(ActiveFile {
            first_id,
            file,
            path,
        });
        Ok(())
    }

    /// Writes `releases` as release records, then the batch's event records, with one write and
    /// one fsync. On failure nothing is answered: the batch stays in `batch` for the next attempt,
    /// the releases are queued again, and the segment is sealed with the failed bytes cut off.
    fn write_batch(
        &mut self,
        batch: &mut Vec<BatchItem>,
        releases: Vec<u64>,
        buf: &mut Vec<u8>,
    ) -> Result<(), String> {
        if self.active.is_none() {
            if let Err(e) = self.open_segment() {
                self.requeue_releases(releases);
                return Err(e.to_string());
            }
        }
        let Some(active) = self.active.as_mut() else {
            self.requeue_releases(releases);
            return Err("no active spool segment".into());
        };
        buf.clear();
        encode_releases(buf, self.next_id, &releases);
        let release_bytes = buf.len() as u64;
        let first = self.next_id;
        for (client_id, occurrence_id, payload, _) in batch.iter() {
            encode_record(buf, self.next_id, client_id, occurrence_id, payload);
            self.next_id += 1;
        }
        let n = self.next_id - first;
        let first_id = active.first_id;
        let len_before = self
            .shared
            .lock()
            .segments
            .get(&first_id)
            .map_or(MAGIC_LEN, |s| s.bytes);
        let written = active
            .file
            .write_all(buf)
            .and_then(|()| active.file.sync_data());
        let path = active.path.clone();
        if let Err(e) = written {
            // The file may hold part of the batch. Cut it off: a full disk gets that space back,
            // and a crash finds whole records only. Then the segment is sealed (after a failed
            // fsync its cached pages cannot be trusted) and the next attempt starts a new one.
            let cut = active
                .file
                .set_len(len_before)
                .and_then(|()| active.file.sync_data());
            let torn = match cut {
                Ok(()) => 0,
                Err(cut_err) => {
                    tracing::warn!(path = %path.display(), error = %cut_err,
                        "cannot cut a failed spool write off its segment; recovery cuts it after a restart");
                    buf.len() as u64
                }
            };
            let mut st = self.shared.lock();
            if let Some(seg) = st.segments.get_mut(&first_id) {
                seg.bytes += torn;
                seg.active = false;
                // Ids of the failed batch belong to no segment's range.
                seg.count = first - seg.first_id;
                // What was not cut may hold (part of) release records.
                seg.has_releases |= torn > 0 && !releases.is_empty();
            }
            // The batch keeps its reservation for the next attempt; bytes left on disk are extra.
            st.disk += torn;
            st.used += torn;
            if st
                .segments
                .get(&first_id)
                .is_some_and(|s| s.live_count == 0)
            {
                self.shared.retire(&mut st, first_id);
            }
            drop(st);
            self.drop_active();
            self.requeue_releases(releases);
            self.shared.bury();
            return Err(format!("writing {}: {e}", path.display()));
        }
        let mut st = self.shared.lock();
        let seal = if let Some(seg) = st.segments.get_mut(&first_id) {
            for i in 0..n {
                seg.set_live(first - seg.first_id + i);
            }
            seg.count += n;
            seg.bytes += buf.len() as u64;
            seg.has_releases |= !releases.is_empty();
            seg.bytes >= self.shared.segment_bytes
        } else {
            false
        };
        st.disk += buf.len() as u64;
        st.live += n;
        // Reserved sizes equal encoded sizes, so `used` already covers the event records;
        // the release records are paid for by the slots of the ids in them.
        let slots = RELEASE_SLOT * releases.len() as u64;
        st.used = (st.used + release_bytes).saturating_sub(slots);
        self.shared.publish_gauges(&st);
        if seal {
            if let Some(seg) = st.segments.get_mut(&first_id) {
                seg.active = false;
            }
            let empty = st
                .segments
                .get(&first_id)
                .is_some_and(|s| s.live_count == 0);
            if empty {
                self.shared.retire(&mut st, first_id);
            }
        }
        drop(st);
        if seal {
            self.drop_active();
        }
        for (i, (_, _, _, reply)) in batch.drain(..).enumerate() {
            let _ = reply.send(Ok(first + i as u64));
        }
        self.shared.bury();
        if slots > release_bytes {
            self.shared.space.notify_waiters();
        }
        Ok(())
    }

    /// Fails a batch's appends and frees their release slots (and, with `unreserve`, their
    /// reserved bytes: nothing of them reached the disk).
    fn fail(&self, batch: &mut Vec<BatchItem>, why: &str, unreserve: bool) {
        let mut st = self.shared.lock();
        for (client_id, occurrence_id, payload, reply) in batch.drain(..) {
            let mut free = RELEASE_SLOT;
            if unreserve {
                free += Spool::record_size(&client_id, &occurrence_id, &payload);
            }
            st.used = st.used.saturating_sub(free);
            let _ = reply.send(Err(SpoolError::WriteFailed(why.to_owned())));
        }
        drop(st);
        self.shared.space.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use std::time::Duration;

    use super::*;

    fn cfg(dir: &Path, max_bytes: u64, segment_bytes: u64) -> SpoolConfig {
        SpoolConfig {
            enabled: true,
            dir: dir.to_path_buf(),
            max_bytes,
            segment_bytes,
            ..SpoolConfig::default()
        }
    }

    /// A spool whose queued releases are never committed on their own during a test: only a
    /// clean close (the `.live` files) or an append records them.
    fn cfg_lazy_releases(dir: &Path, max_bytes: u64, segment_bytes: u64) -> SpoolConfig {
        SpoolConfig {
            group_commit_ms: 600_000,
            ..cfg(dir, max_bytes, segment_bytes)
        }
    }

    fn open(c: &SpoolConfig) -> (Spool, RecoveryReport) {
        Spool::open(c, Arc::new(Metrics::new())).unwrap()
    }

    fn payload(i: usize, len: usize) -> Bytes {
        let mut v = format!("{{\"n\":{i},\"pad\":\"").into_bytes();
        v.resize(len.saturating_sub(2).max(v.len()), b'x');
        v.extend_from_slice(b"\"}");
        Bytes::from(v)
    }

    fn seg_files(dir: &Path) -> Vec<PathBuf> {
        let mut v: Vec<_> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "seg"))
            .collect();
        v.sort();
        v
    }

    #[tokio::test]
    async fn append_then_reopen_replays_everything_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let c = cfg(dir.path(), 1 << 30, 64 * 1024);
        let (s, report) = open(&c);
        assert_eq!(report, RecoveryReport::default());
        let mut ids = Vec::new();
        for i in 0..500 {
            ids.push(s.append("c1", "o", payload(i, 300)).await.unwrap());
        }
        assert!(ids.windows(2).all(|w| w[1] == w[0] + 1));
        assert_eq!(s.live_records(), 500);
        assert!(s.segment_count() > 1, "expected several segments");
        drop(s);

        let (s, report) = open(&c);
        assert_eq!(report.records, 500);
        assert_eq!(report.corrupt_segments, 0);
        let got: Vec<_> = s.replay().map(Result::unwrap).collect();
        assert_eq!(got.len(), 500);
        for (i, r) in got.iter().enumerate() {
            assert_eq!(r.client_id, "c1");
            assert_eq!(r.payload, payload(i, 300));
        }
        // New appends get ids after the recovered ones.
        let id = s.append("c2", "o", payload(9, 50)).await.unwrap();
        assert!(id > got.last().unwrap().id);
    }

    #[tokio::test]
    async fn concurrent_appends_are_group_committed() {
        let dir = tempfile::tempdir().unwrap();
        let (s, _) = open(&cfg(dir.path(), 1 << 30, 1 << 20));
        let mut pending = Vec::new();
        for i in 0..2000 {
            pending.push(
                s.begin_append("c", "o", payload(i, 1000), Pace::Prompt)
                    .await
                    .unwrap(),
            );
        }
        let mut ids = Vec::new();
        for p in pending {
            ids.push(p.wait().await.unwrap());
        }
        // Queued in order, so ids are in order.
        assert!(ids.windows(2).all(|w| w[1] == w[0] + 1));
        assert_eq!(s.live_records(), 2000);
    }

    #[tokio::test]
    async fn release_deletes_fully_released_segments_only() {
        let dir = tempfile::tempdir().unwrap();
        let c = cfg(dir.path(), 1 << 30, 4096);
        let (s, _) = open(&c);
        let mut ids = Vec::new();
        for i in 0..100 {
            ids.push(s.append("c", "o", payload(i, 500)).await.unwrap());
        }
        let before = seg_files(dir.path()).len();
        assert!(before >= 10, "{before} segments");
        // Release all but the first record: the first segment must stay, later sealed ones go.
        for &id in ids.iter().skip(1).rev() {
            s.release(id);
        }
        s.release(ids[50]); // double release is harmless
        assert_eq!(s.live_records(), 1);
        // The writer thread deletes them (a release never waits for the filesystem).
        let after = files_eventually(dir.path(), 2).await;
        assert!(after[0].ends_with(format!("{:020}.seg", ids[0])));
        s.release(ids[0]);
        assert_eq!(s.live_records(), 0);
        // Only the active segment (if any) may remain; it is retired when space is wanted.
        files_eventually(dir.path(), 1).await;
        // A clean close deletes what has nothing live left, the active segment too: nothing
        // delivered is replayed after a clean restart.
        drop(s);
        assert_eq!(seg_files(dir.path()), Vec::<PathBuf>::new());
        let (s, report) = open(&c);
        assert_eq!(report.records, 0);
        drop(s);
    }

    /// Opens a spool, appends `n` records of `size` bytes, releases those `release` picks (from
    /// the last to the first, so out of order) and closes it cleanly; returns the ids.
    async fn fill_and_release(
        c: &SpoolConfig,
        n: u64,
        size: usize,
        release: impl Fn(u64) -> bool,
    ) -> Vec<u64> {
        let (s, _) = open(c);
        let mut ids = Vec::new();
        for i in 0..n {
            ids.push(s.append("c", "o", payload(i as usize, size)).await.unwrap());
        }
        for (i, &id) in ids.iter().enumerate().rev() {
            if release(i as u64) {
                s.release(id);
            }
        }
        drop(s);
        ids
    }

    /// Waits up to 5 s until at most `n` segment files remain; returns them.
    async fn files_eventually(dir: &Path, n: usize) -> Vec<PathBuf> {
        let t = std::time::Instant::now();
        loop {
            let files = seg_files(dir);
            if files.len() <= n || t.elapsed() > Duration::from_secs(5) {
                assert!(files.len() <= n, "{files:?}");
                return files;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[tokio::test]
    async fn a_clean_close_keeps_segments_with_live_records() {
        let dir = tempfile::tempdir().unwrap();
        let c = cfg(dir.path(), 1 << 30, 4096);
        // Every record but the last is released: only the last one's segment must survive.
        fill_and_release(&c, 40, 500, |i| i < 39).await;
        let (s, report) = open(&c);
        let got: Vec<_> = s.replay().map(Result::unwrap).collect();
        assert!(
            got.iter().any(|r| r.payload == payload(39, 500)),
            "the unreleased record is replayed"
        );
        assert_eq!(report.segments, 1, "fully released segments are gone");
        drop(s);
    }

    #[tokio::test]
    async fn partially_released_segment_is_replayed_whole_after_restart() {
        let dir = tempfile::tempdir().unwrap();
        let c = cfg_lazy_releases(dir.path(), 1 << 30, 1 << 20);
        fill_and_release(&c, 10, 100, |i| i < 5).await;
        // A crash before the releases were committed leaves neither a live-set file nor a release
        // record: every record comes back.
        let seg = seg_files(dir.path()).pop().unwrap();
        fs::remove_file(live_path(&seg)).unwrap();
        let (s, report) = open(&c);
        assert_eq!(
            report.records, 10,
            "without a live set every record is replayed"
        );
        assert_eq!(report.released, 0);
        let got: Vec<_> = s.replay().map(Result::unwrap).collect();
        assert_eq!(got.len(), 10);
        // Within this process, replay skips released records.
        s.release(got[0].id);
        assert_eq!(s.replay().count(), 9);
    }

    #[tokio::test]
    async fn a_clean_close_replays_only_what_was_not_released() {
        let dir = tempfile::tempdir().unwrap();
        // Releases are recorded only by the clean close here (see the crash copy below).
        let c = cfg_lazy_releases(dir.path(), 1 << 30, 1 << 20);
        // Every third one kept.
        fill_and_release(&c, 100, 100, |i| i % 3 != 0).await;
        let (s, report) = open(&c);
        assert_eq!((report.records, report.released), (34, 66));
        let got: Vec<_> = s.replay().map(Result::unwrap).collect();
        let want: Vec<_> = (0..100)
            .filter(|i| i % 3 == 0)
            .map(|i| payload(i, 100))
            .collect();
        assert_eq!(
            got.iter().map(|r| r.payload.clone()).collect::<Vec<_>>(),
            want
        );
        // The live set only shrinks: release more, close, and only the rest comes back.
        for r in &got[..30] {
            s.release(r.id);
        }
        // A crash now, before those releases are committed, would leave the segment with the live
        // set of the last close: a copy of the directory is that crash. Everything live then comes
        // back (and what was released since, as duplicates); nothing is lost.
        let crashed = tempfile::tempdir().unwrap();
        for e in fs::read_dir(dir.path()).unwrap() {
            let e = e.unwrap();
            fs::copy(e.path(), crashed.path().join(e.file_name())).unwrap();
        }
        {
            let (c2, report) = open(&cfg_lazy_releases(crashed.path(), 1 << 30, 1 << 20));
            assert_eq!((report.records, report.released), (34, 66));
            let back: Vec<_> = c2.replay().map(|r| r.unwrap().payload).collect();
            assert_eq!(back, want);
        }
        drop(s);
        let (s, report) = open(&c);
        assert_eq!((report.records, report.released), (4, 96));
        let left: Vec<_> = s.replay().map(|r| r.unwrap().payload).collect();
        assert_eq!(left, want[30..].to_vec());
        for r in s.replay() {
            s.release(r.unwrap().id);
        }
        drop(s);
        assert_eq!(
            fs::read_dir(dir.path()).unwrap().count(),
            0,
            "a fully released spool leaves no segment and no live-set file"
        );
    }

    #[tokio::test]
    async fn a_damaged_or_mismatched_live_set_replays_the_whole_segment() {
        let dir = tempfile::tempdir().unwrap();
        let c = cfg_lazy_releases(dir.path(), 1 << 30, 1 << 20);
        fill_and_release(&c, 10, 100, |i| i < 9).await;
        let seg = seg_files(dir.path()).pop().unwrap();
        let live = live_path(&seg);
        let good = fs::read(&live).unwrap();
        // A flipped bit (CRC), and a live set written for another record count.
        let mut flipped = good.clone();
        flipped[16] ^= 1;
        let mut other_count = good.clone();
        other_count[8] = 11;
        for bad in [flipped, other_count] {
            fs::write(&live, &bad).unwrap();
            let (s, report) = open(&c);
            assert_eq!((report.records, report.released), (10, 0));
            drop(s);
            // Closing again wrote a fresh, correct live set (all 10 live): damage it again.
        }
    }

    #[tokio::test]
    async fn truncated_tail_is_cut_and_quarantined() {
        let dir = tempfile::tempdir().unwrap();
        let c = cfg(dir.path(), 1 << 30, 1 << 20);
        let (s, _) = open(&c);
        for i in 0..20 {
            s.append("c", "o", payload(i, 200)).await.unwrap();
        }
        drop(s);
        let seg = seg_files(dir.path()).pop().unwrap();
        let len = fs::metadata(&seg).unwrap().len();
        // A torn write: the last record is half there.
        let f = OpenOptions::new().write(true).open(&seg).unwrap();
        f.set_len(len - 100).unwrap();
        drop(f);

        let metrics = Arc::new(Metrics::new());
        let (s, report) = Spool::open(&c, metrics.clone()).unwrap();
        assert_eq!(report.records, 19);
        assert_eq!(report.corrupt_segments, 1);
        assert!(report.discarded_bytes > 0);
        assert!(metrics.encode().contains("spool_corrupt"));
        let q: Vec<_> = fs::read_dir(dir.path().join("quarantine"))
            .unwrap()
            .collect();
        assert_eq!(q.len(), 1);
        let got: Vec<_> = s.replay().map(Result::unwrap).collect();
        assert_eq!(got.len(), 19);
        assert_eq!(got[18].payload, payload(18, 200));
        // The segment was cut to its good prefix: appending after recovery is clean.
        s.append("c", "o", payload(99, 200)).await.unwrap();
        drop(s);
        let (_s, report) = open(&c);
        assert_eq!(report.records, 20);
        assert_eq!(report.corrupt_segments, 0);
    }

    #[tokio::test]
    async fn bad_crc_keeps_the_good_prefix_and_later_segments() {
        let dir = tempfile::tempdir().unwrap();
        let c = cfg(dir.path(), 1 << 30, 4096);
        let (s, _) = open(&c);
        for i in 0..60 {
            s.append("c", "o", payload(i, 300)).await.unwrap();
        }
        drop(s);
        let segs = seg_files(dir.path());
        assert!(segs.len() >= 3);
        // Flip a byte in the middle of the first segment's third record's payload.
        let mut bytes = fs::read(&segs[0]).unwrap();
        let rec = Spool::record_size("c", "o", &payload(0, 300)) as usize;
        let at = MAGIC.len() + 2 * rec + HEADER + 10;
        bytes[at] ^= 0xff;
        fs::write(&segs[0], &bytes).unwrap();

        let (s, report) = open(&c);
        assert_eq!(report.corrupt_segments, 1);
        let got: Vec<_> = s.replay().map(Result::unwrap).collect();
        // Two good records from the first segment, then every record of the later segments.
        assert_eq!(got[0].payload, payload(0, 300));
        assert_eq!(got[1].payload, payload(1, 300));
        assert!(got.iter().all(|r| r.payload != payload(2, 300)));
        assert_eq!(got.last().unwrap().payload, payload(59, 300));
        assert!(got.windows(2).all(|w| w[0].id < w[1].id));
    }

    #[tokio::test]
    async fn garbage_file_named_like_a_segment_is_quarantined() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(
            dir.path().join(format!("{:020}.seg", 7)),
            b"hello, not a spool",
        )
        .unwrap();
        fs::write(dir.path().join("README"), b"ignored").unwrap();
        let (s, report) = open(&cfg(dir.path(), 1 << 30, 4096));
        assert_eq!(report.corrupt_segments, 1);
        assert_eq!(report.ignored_files, 1);
        assert_eq!(s.replay().count(), 0);
        let id = s.append("c", "o", payload(0, 10)).await.unwrap();
        assert!(id >= 7);
    }

    #[tokio::test]
    async fn full_spool_blocks_until_space_frees() {
        let dir = tempfile::tempdir().unwrap();
        // What a record takes of max_bytes: its size and its release slot.
        let size = Spool::record_size("c", "o", &payload(0, 1000)) + RELEASE_SLOT;
        // Room for about 10 records.
        let (s, _) = open(&cfg(dir.path(), size * 10 + 100, 4096));
        let mut ids = Vec::new();
        loop {
            match tokio::time::timeout(
                Duration::from_millis(200),
                s.append("c", "o", payload(0, 1000)),
            )
            .await
            {
                Ok(r) => ids.push(r.unwrap()),
                Err(_) => break,
            }
            assert!(ids.len() <= 10, "spool did not block");
        }
        assert!(ids.len() >= 8, "{} fit", ids.len());
        assert!(s.disk_bytes() <= size * 10 + 100);
        let blocked = {
            let s = s.clone();
            tokio::spawn(async move { s.append("c", "o", payload(1, 1000)).await })
        };
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(
            !blocked.is_finished(),
            "append must wait while the spool is full"
        );
        assert_eq!(s.waiting_for_space(), 1);
        for id in ids {
            s.release(id);
        }
        let id = tokio::time::timeout(Duration::from_secs(5), blocked)
            .await
            .expect("append still blocked after release")
            .unwrap()
            .unwrap();
        assert!(id > 0);
        assert_eq!(s.live_records(), 1);
    }

    #[tokio::test]
    async fn full_with_one_active_segment_does_not_deadlock() {
        // Segment larger than the spool: all records sit in the active segment, so space frees only
        // when the writer retires it.
        let dir = tempfile::tempdir().unwrap();
        let size = Spool::record_size("c", "o", &payload(0, 1000)) + RELEASE_SLOT;
        let (s, _) = open(&cfg(dir.path(), size * 5 + 100, 1 << 20));
        let mut ids = Vec::new();
        for _ in 0..5 {
            ids.push(s.append("c", "o", payload(0, 1000)).await.unwrap());
        }
        for id in ids {
            s.release(id);
        }
        for i in 0..20 {
            let id =
                tokio::time::timeout(Duration::from_secs(5), s.append("c", "o", payload(i, 1000)))
                    .await
                    .expect("deadlocked on a released active segment")
                    .unwrap();
            s.release(id);
        }
    }

    #[tokio::test]
    async fn record_that_can_never_fit_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (s, _) = open(&cfg(dir.path(), 1000, 4096));
        let err = s.append("c", "o", payload(0, 5000)).await.unwrap_err();
        assert!(matches!(err, SpoolError::TooLarge { .. }), "{err}");
    }
    fn occ(i: usize) -> String {
        format!("occ-{i:04}")
    }

    /// Copies the spool directory while the spool is open: what a `kill -9` leaves.
    fn crash_copy(dir: &Path) -> tempfile::TempDir {
        let crashed = tempfile::tempdir().unwrap();
        for e in fs::read_dir(dir).unwrap() {
            let e = e.unwrap();
            if e.path().is_file() {
                fs::copy(e.path(), crashed.path().join(e.file_name())).unwrap();
            }
        }
        crashed
    }

    /// (id, occurrence id, payload) of every replayed record.
    fn replayed(s: &Spool) -> Vec<(u64, Option<String>, Bytes)> {
        s.replay()
            .map(|r| {
                let r = r.unwrap();
                (r.id, r.occurrence_id, r.payload)
            })
            .collect()
    }

    /// Waits up to 5 s for `cond`.
    async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
        let t = std::time::Instant::now();
        while !cond() {
            assert!(
                t.elapsed() < Duration::from_secs(5),
                "timed out waiting: {what}"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    fn has_release_records(s: &Spool) -> bool {
        s.shared.lock().segments.values().any(|s| s.has_releases)
    }

    #[tokio::test]
    async fn occurrence_ids_round_trip_in_fbspool2_segments() {
        let dir = tempfile::tempdir().unwrap();
        let c = cfg(dir.path(), 1 << 30, 4096);
        let (s, _) = open(&c);
        let mut ids = Vec::new();
        for i in 0..30 {
            let client = format!("c{}", i % 3);
            ids.push(s.append(&client, &occ(i), payload(i, 300)).await.unwrap());
        }
        let longest = "x".repeat(MAX_OCCURRENCE_ID);
        let id_long = s.append("c", &longest, payload(98, 10)).await.unwrap();
        let id_empty = s.append("c", "", payload(99, 10)).await.unwrap();
        let err = s
            .append("c", &"x".repeat(256), payload(0, 10))
            .await
            .unwrap_err();
        assert!(matches!(err, SpoolError::OccurrenceIdTooLong), "{err}");
        // 128 two-byte characters: 256 bytes.
        let err = s
            .begin_append("c", &"é".repeat(128), payload(0, 10), Pace::Patient)
            .await
            .unwrap_err();
        assert!(matches!(err, SpoolError::OccurrenceIdTooLong), "{err}");
        assert_eq!(s.live_records(), 32);
        drop(s);
        let segs = seg_files(dir.path());
        assert!(segs.len() > 1);
        for seg in &segs {
            assert_eq!(&fs::read(seg).unwrap()[..8], b"FBSPOOL2");
        }
        let (s, report) = open(&c);
        assert_eq!((report.records, report.corrupt_segments), (32, 0));
        let got: Vec<_> = s.replay().map(Result::unwrap).collect();
        assert_eq!(got.len(), 32);
        for (i, r) in got[..30].iter().enumerate() {
            assert_eq!(r.id, ids[i]);
            assert_eq!(r.client_id, format!("c{}", i % 3));
            assert_eq!(r.occurrence_id.as_deref(), Some(occ(i).as_str()));
            assert_eq!(r.payload, payload(i, 300));
        }
        assert_eq!(
            (got[30].id, got[30].occurrence_id.as_deref()),
            (id_long, Some(longest.as_str()))
        );
        assert_eq!(
            (got[31].id, got[31].occurrence_id.as_deref()),
            (id_empty, Some(""))
        );
        assert_eq!(got[31].payload, payload(99, 10));
    }

    /// An `FBSPOOL1` event record, as older builds wrote it.
    fn v1_record(buf: &mut Vec<u8>, id: u64, client_id: &str, payload: &[u8]) {
        let mut body = (client_id.len() as u16).to_le_bytes().to_vec();
        body.extend_from_slice(client_id.as_bytes());
        body.extend_from_slice(payload);
        let mut h = crc32fast::Hasher::new();
        h.update(&id.to_le_bytes());
        h.update(&body);
        buf.extend_from_slice(&(body.len() as u32).to_le_bytes());
        buf.extend_from_slice(&h.finalize().to_le_bytes());
        buf.extend_from_slice(&id.to_le_bytes());
        buf.extend_from_slice(&body);
    }

    #[tokio::test]
    async fn an_fbspool1_segment_still_replays_without_occurrence_ids() {
        let dir = tempfile::tempdir().unwrap();
        let mut old = b"FBSPOOL1".to_vec();
        for i in 0..5u64 {
            v1_record(&mut old, 100 + i, "old", &payload(i as usize, 200));
        }
        let old_path = segment_path(dir.path(), 100);
        fs::write(&old_path, &old).unwrap();
        let c = cfg(dir.path(), 1 << 30, 1 << 20);
        let (s, report) = open(&c);
        assert_eq!((report.records, report.corrupt_segments), (5, 0));
        let got: Vec<_> = s.replay().map(Result::unwrap).collect();
        assert_eq!(got.len(), 5);
        for (i, r) in got.iter().enumerate() {
            assert_eq!(r.id, 100 + i as u64);
            assert_eq!(r.client_id, "old");
            assert_eq!(r.occurrence_id, None);
            assert_eq!(r.payload, payload(i, 200));
        }
        // New records go to a new FBSPOOL2 segment, after the old ids.
        let id = s.append("new", "occ-new", payload(7, 50)).await.unwrap();
        assert_eq!(id, 105);
        assert_eq!(
            fs::read(&old_path).unwrap(),
            old,
            "an FBSPOOL1 segment is never appended to"
        );
        assert_eq!(
            &fs::read(segment_path(dir.path(), 105)).unwrap()[..8],
            MAGIC
        );
        // Releases of old records go into release records of the new segment: after a crash
        // they are not replayed.
        s.release(100);
        s.release(102);
        let id2 = s.append("new", "occ-new-2", payload(8, 50)).await.unwrap();
        let crashed = crash_copy(dir.path());
        let (s2, report) = open(&cfg(crashed.path(), 1 << 30, 1 << 20));
        assert_eq!((report.records, report.released), (5, 2));
        let back: Vec<_> = replayed(&s2)
            .into_iter()
            .map(|(id, occ, _)| (id, occ))
            .collect();
        assert_eq!(
            back,
            vec![
                (101, None),
                (103, None),
                (104, None),
                (105, Some("occ-new".to_owned())),
                (id2, Some("occ-new-2".to_owned())),
            ]
        );
    }

    #[tokio::test]
    async fn a_crash_replays_only_live_records_when_releases_rode_along_with_an_append() {
        let dir = tempfile::tempdir().unwrap();
        let c = cfg(dir.path(), 1 << 30, 16 * 1024);
        let (s, _) = open(&c);
        let n = 300;
        let mut ids = Vec::new();
        for i in 0..n {
            ids.push(s.append("c", &occ(i), payload(i, 200)).await.unwrap());
        }
        assert!(s.segment_count() > 2);
        let keep = |i: usize| i % 7 == 3;
        // Out of order, as deliveries finish.
        for i in (0..n).rev().filter(|&i| !keep(i)) {
            s.release(ids[i]);
        }
        // The next append's commit carries the releases.
        let last = s.append("c", &occ(n), payload(n, 200)).await.unwrap();
        let crashed = crash_copy(dir.path());
        let (s2, report) = open(&cfg(crashed.path(), 1 << 30, 16 * 1024));
        let want: Vec<_> = (0..n)
            .filter(|&i| keep(i))
            .map(|i| (ids[i], Some(occ(i)), payload(i, 200)))
            .chain(std::iter::once((last, Some(occ(n)), payload(n, 200))))
            .collect();
        assert_eq!(report.records, want.len() as u64);
        assert_eq!(
            report.released,
            (n - (0..n).filter(|&i| keep(i)).count()) as u64
        );
        assert_eq!(replayed(&s2), want);
    }

    #[tokio::test]
    async fn releases_of_an_idle_spool_become_durable_within_a_commit_window() {
        // 0 ms commits at once when appends come, but waits 1 ms for releases.
        for group_commit_ms in [0, 5] {
            let dir = tempfile::tempdir().unwrap();
            let c = SpoolConfig {
                group_commit_ms,
                ..cfg(dir.path(), 1 << 30, 1 << 20)
            };
            let (s, _) = open(&c);
            let mut ids = Vec::new();
            for i in 0..50 {
                ids.push(s.append("c", &occ(i), payload(i, 100)).await.unwrap());
            }
            for (i, &id) in ids.iter().enumerate() {
                if i % 5 != 0 {
                    s.release(id);
                }
            }
            // No more appends: the writer commits the releases on their own.
            tokio::time::sleep(Duration::from_millis(100)).await;
            let crashed = crash_copy(dir.path());
            let (s2, report) = open(&cfg(crashed.path(), 1 << 30, 1 << 20));
            assert_eq!(
                (report.records, report.released),
                (10, 40),
                "group_commit_ms {group_commit_ms}"
            );
            let want: Vec<_> = (0..50)
                .filter(|i| i % 5 == 0)
                .map(|i| (ids[i], Some(occ(i)), payload(i, 100)))
                .collect();
            assert_eq!(replayed(&s2), want);
        }
    }

    #[tokio::test]
    async fn deleting_a_segment_keeps_the_releases_it_recorded_for_older_segments() {
        let dir = tempfile::tempdir().unwrap();
        // About 8 records a segment.
        let c = cfg(dir.path(), 1 << 30, 4096);
        let (s, _) = open(&c);
        let mut ids = Vec::new();
        for i in 0..40 {
            ids.push(s.append("c", &occ(i), payload(i, 500)).await.unwrap());
        }
        let oldest = seg_files(dir.path())[0].clone();
        assert!(oldest.ends_with(format!("{:020}.seg", ids[0])));
        // Release all of the oldest segment but its first record; nothing is appended, so the
        // release record is committed on its own, in a newer segment.
        let first_seg_len = s.shared.lock().segments.values().next().unwrap().count as usize;
        assert!((4..40).contains(&first_seg_len), "{first_seg_len}");
        for &id in &ids[1..first_seg_len] {
            s.release(id);
        }
        eventually("the release record is written", || has_release_records(&s)).await;
        let holder = {
            let st = s.shared.lock();
            st.segments
                .values()
                .find(|seg| seg.has_releases)
                .unwrap()
                .first_id
        };
        assert!(holder > ids[0]);
        // More appends, then release everything but the first record: every segment but the
        // oldest goes, the one holding that release record too.
        for i in 40..60 {
            ids.push(s.append("c", &occ(i), payload(i, 500)).await.unwrap());
        }
        for &id in &ids[first_seg_len..] {
            s.release(id);
        }
        let left = files_eventually(dir.path(), 1).await;
        assert_eq!(left, vec![oldest.clone()]);
        assert!(
            live_path(&oldest).exists(),
            "the oldest segment's live set is saved before a segment with its releases goes"
        );
        // Whatever is still queued is committed (or dropped, its segment being gone).
        tokio::time::sleep(Duration::from_millis(100)).await;
        let crashed = crash_copy(dir.path());
        let (s2, report) = open(&cfg(crashed.path(), 1 << 30, 4096));
        assert_eq!(report.records, 1);
        assert_eq!(replayed(&s2), vec![(ids[0], Some(occ(0)), payload(0, 500))]);
    }

    #[tokio::test]
    async fn a_torn_release_record_at_the_tail_is_cut_like_any_torn_record() {
        let dir = tempfile::tempdir().unwrap();
        let c = cfg(dir.path(), 1 << 30, 1 << 20);
        let (s, _) = open(&c);
        let mut ids = Vec::new();
        for i in 0..10 {
            ids.push(s.append("c", &occ(i), payload(i, 200)).await.unwrap());
        }
        for &id in &ids[..5] {
            s.release(id);
        }
        eventually("the release record is written", || has_release_records(&s)).await;
        let intact = crash_copy(dir.path());
        let seg = seg_files(intact.path()).pop().unwrap();
        let len = fs::metadata(&seg).unwrap().len();
        let rec = Spool::record_size("c", &occ(0), &payload(0, 200));
        assert_eq!(
            len,
            MAGIC_LEN + 10 * rec + HEADER as u64 + 5 * 8,
            "the release record is the segment's tail"
        );
        let torn = tempfile::tempdir().unwrap();
        let torn_seg = torn.path().join(seg.file_name().unwrap());
        fs::copy(&seg, &torn_seg).unwrap();
        {
            let (s2, report) = open(&cfg(intact.path(), 1 << 30, 1 << 20));
            assert_eq!((report.records, report.released), (5, 5));
            assert_eq!(report.corrupt_segments, 0);
            let back: Vec<_> = replayed(&s2).into_iter().map(|r| r.0).collect();
            assert_eq!(back, ids[5..].to_vec());
        }
        // Cut inside the release record: it is lost (its releases come back as duplicates), the
        // event records before it are kept.
        let f = OpenOptions::new().write(true).open(&torn_seg).unwrap();
        f.set_len(len - 20).unwrap();
        drop(f);
        let c2 = cfg(torn.path(), 1 << 30, 1 << 20);
        let (s2, report) = open(&c2);
        assert_eq!(report.corrupt_segments, 1);
        assert_eq!(report.discarded_bytes, HEADER as u64 + 5 * 8 - 20);
        assert_eq!((report.records, report.released), (10, 0));
        let want: Vec<_> = (0..10)
            .map(|i| (ids[i], Some(occ(i)), payload(i, 200)))
            .collect();
        assert_eq!(replayed(&s2), want);
        assert_eq!(fs::metadata(&torn_seg).unwrap().len(), MAGIC_LEN + 10 * rec);
        // Recovery goes on as usual: new appends, releases, a clean reopen.
        let id = s2.append("c", &occ(10), payload(10, 200)).await.unwrap();
        assert!(id > ids[9]);
        for &id in &ids[..5] {
            s2.release(id);
        }
        drop(s2);
        let (s3, report) = open(&c2);
        assert_eq!((report.records, report.corrupt_segments), (6, 0));
        drop(s3);
    }

    #[tokio::test]
    async fn a_full_spool_whose_records_are_released_keeps_accepting_appends() {
        let dir = tempfile::tempdir().unwrap();
        let size = Spool::record_size("c", &occ(0), &payload(0, 1000)) + RELEASE_SLOT;
        // The pinned record keeps its segment (4 records of 4096 bytes) on disk: room for about
        // 6 more.
        let max = size * 10 + 100;
        let c = cfg(dir.path(), max, 4096);
        let (s, _) = open(&c);
        // One record stays live throughout.
        let pinned = s.append("c", &occ(0), payload(0, 1000)).await.unwrap();
        let mut n = 1;
        let mut appended = 0;
        for round in 0..10 {
            let mut ids = Vec::new();
            loop {
                let id = occ(n);
                let append = s.append("c", &id, payload(n, 1000));
                match tokio::time::timeout(Duration::from_millis(100), append).await {
                    Ok(r) => ids.push(r.unwrap()),
                    Err(_) => break,
                }
                n += 1;
                assert!(s.disk_bytes() <= max, "{} > {max}", s.disk_bytes());
                assert!(ids.len() <= 10, "the spool did not fill up");
            }
            assert!(ids.len() >= 3, "round {round}: only {} fit", ids.len());
            appended += ids.len();
            // Release all but the pinned one, out of order: the release records must not keep
            // the spool full.
            for id in ids.into_iter().rev() {
                s.release(id);
            }
        }
        assert!(appended >= 30);
        assert_eq!(s.live_records(), 1);
        tokio::time::sleep(Duration::from_millis(100)).await;
        let crashed = crash_copy(dir.path());
        let (s2, _) = open(&cfg(crashed.path(), max, 4096));
        let back: Vec<_> = replayed(&s2).into_iter().map(|r| r.0).collect();
        assert_eq!(back, vec![pinned]);
    }
}
