//! The durable local spool for the WebSocket source.
//!
//! Fondo's WebSocket stream has no acknowledgements: an event read from the socket and then lost in a
//! crash is gone for good. So every event is appended here, and made durable with `fsync`, *before*
//! it counts as received; it is released when its destinations delivered or dead-lettered it. On
//! start the source replays every record that was not released.
//!
//! # On disk
//!
//! A directory of append-only segment files named `<first record id, 20 digits>.seg`. Each file
//! starts with the 8-byte magic `FBSPOOL1`, then records:
//!
//! ```text
//! u32 LE  body length
//! u32 LE  CRC32 of (id bytes ++ body)
//! u64 LE  record id (strictly increasing, contiguous within a segment)
//! body:   u16 LE client id length, client id (UTF-8), payload (the frame's bytes)
//! ```
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
//! # Releasing
//!
//! Released ids are kept in memory (a bitmap per segment). A segment file is deleted when all
//! its records are released: by the writer thread, so that a release (which runs where the
//! dispatcher acknowledges, on an async worker) never waits for the filesystem. Its bytes count
//! against `max_bytes` until the file is gone.
//!
//! On a clean close (the last [`Spool`] clone dropped) the writer deletes every segment with nothing
//! live left, and writes for each other one a `<segment>.live` file: its record count and the
//! bitmap of records still live, with a CRC, fsynced. The next start replays only those. The live
//! set only shrinks after that (a recovered segment is never appended to), so the file stays a safe
//! over-estimate until the segment is deleted with it. A missing, damaged or mismatched `.live`
//! file means every record of the segment is replayed: after a crash every record of a surviving
//! segment is replayed, also the released ones. Duplicates are allowed (downstream dedupes on the
//! event id), loss is not.
//!
//! # Bounded
//!
//! The bytes of all segment files plus the appends not yet written never exceed `max_bytes`: an
//! append waits for space (the source stops reading its socket meanwhile). Nothing is dropped.
//!
//! # Recovery
//!
//! On open every segment is scanned. A short record (torn write) or a record whose CRC or id does not
//! check out ends the segment's good prefix; the rest of the file is copied to `quarantine/` for
//! inspection, logged, counted, and cut off the segment. The good prefix is replayed.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use tokio::sync::{Notify, mpsc, oneshot};

use crate::config::SpoolConfig;
use crate::group_commit::{CommitPacer, Gathered, Pace};
use crate::metrics::{Metrics, SourceReasonLabels};

/// The magic at the start of every segment file.
const MAGIC: &[u8; 8] = b"FBSPOOL1";
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
    /// The writer thread is gone (it hit an error it could not recover from, or the spool closed).
    #[error("the spool writer has stopped")]
    Closed,
    /// The write or fsync of a batch failed; the record is not durable.
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
    /// The frame's bytes, exactly as read.
    pub payload: Bytes,
}

/// What [`Spool::open`] found on disk.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Segment files found.
    pub segments: usize,
    /// Good records found that were not released at the last clean close: all of them will be
    /// replayed. After a crash that is every good record.
    pub records: u64,
    /// Good records that a segment's `.live` file (written at the last clean close) marks
    /// released: not replayed.
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
    /// Records in the segment (ids `first_id .. first_id + count`).
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
}

impl Segment {
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
                true
            }
            _ => false,
        }
    }

    fn is_live(&self, idx: u64) -> bool {
        let (w, b) = ((idx / 64) as usize, idx % 64);
        self.live.get(w).is_some_and(|word| word & (1 << b) != 0)
    }
}

#[derive(Debug, Default)]
struct State {
    segments: BTreeMap<u64, Segment>,
    /// Bytes on disk plus bytes reserved by appends not yet written.
    used: u64,
    /// Bytes of segment files on disk.
    disk: u64,
    /// Records not released.
    live: u64,
    /// Appends waiting for space.
    waiting: usize,
    /// Fully released segments taken out of `segments`, for the writer to delete; their bytes
    /// are still in `used` and `disk`.
    doomed: Vec<(PathBuf, u64)>,
}

struct Shared {
    dir: PathBuf,
    max_bytes: u64,
    segment_bytes: u64,
    /// How long a group commit may wait for more appends (`group_commit_ms`).
    group_commit: std::time::Duration,
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

    /// Takes a fully released, inactive segment out of the spool and hands its file to the writer
    /// thread for deletion ([`Shared::bury`]); its bytes are freed once the file is gone.
    fn retire(&self, st: &mut State, first_id: u64) {
        if let Some(seg) = st.segments.remove(&first_id) {
            st.doomed.push((seg.path, seg.bytes));
        }
    }

    /// Deletes the retired segments' files and frees their bytes. The writer thread's work: the
    /// deletions run outside the lock.
    fn bury(&self) {
        let doomed = std::mem::take(&mut self.lock().doomed);
        if doomed.is_empty() {
            return;
        }
        let mut freed = 0u64;
        for (path, bytes) in doomed {
            if let Err(e) = fs::remove_file(&path) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    tracing::warn!(path = %path.display(), error = %e,
                        "could not delete a released spool segment; its records may be replayed after a restart");
                }
            }
            // Its live-set file, if the segment was recovered with one.
            let _ = fs::remove_file(live_path(&path));
            freed += bytes;
        }
        let mut st = self.lock();
        st.used = st.used.saturating_sub(freed);
        st.disk = st.disk.saturating_sub(freed);
        self.publish_gauges(&st);
        drop(st);
        self.space.notify_waiters();
    }
}

enum Cmd {
    Append {
        client_id: String,
        payload: Bytes,
        pace: Pace,
        reply: oneshot::Sender<Result<u64, SpoolError>>,
    },
    /// Something was released: check whether the active segment can be retired.
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
    /// Resolves with the record id once the record is on disk and fsynced.
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
        fs::create_dir_all(&dir).map_err(io_err("creating the spool directory", &dir))?;
        let (segments, next_id, report) = recover(&dir, &metrics)?;
        let mut st = State::default();
        for seg in segments {
            st.used += seg.bytes;
            st.disk += seg.bytes;
            st.live += seg.live_count;
            st.segments.insert(seg.first_id, seg);
        }
        let shared = Arc::new(Shared {
            dir: dir.clone(),
            max_bytes: cfg.max_bytes.max(1),
            segment_bytes: cfg.segment_bytes.max(4096),
            group_commit: std::time::Duration::from_millis(cfg.group_commit_ms),
            state: Mutex::new(st),
            space: Notify::new(),
            metrics,
        });
        {
            let st = shared.lock();
            shared.publish_gauges(&st);
        }
        let (tx, rx) = mpsc::channel(QUEUE);
        let writer = Writer {
            shared: Arc::clone(&shared),
            next_id,
            active: None,
        };
        let handle = std::thread::Builder::new()
            .name("spool-writer".into())
            .spawn(move || writer.run(rx))
            .map_err(io_err("starting the spool writer thread", &dir))?;
        if report.records > 0 || report.corrupt_segments > 0 {
            tracing::info!(
                dir = %dir.display(),
                segments = report.segments,
                records = report.records,
                released_at_last_close = report.released,
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

    /// The size a record takes on disk.
    pub fn record_size(client_id: &str, payload: &[u8]) -> u64 {
        (HEADER + 2 + client_id.len() + payload.len()) as u64
    }

    /// Appends a record and waits until it is durable; returns its id.
    pub async fn append(&self, client_id: &str, payload: Bytes) -> Result<u64, SpoolError> {
        self.begin_append(client_id, payload, Pace::Prompt)
            .await?
            .wait()
            .await
    }

    /// Waits for space (backpressure), then queues the record for the next group commit. The
    /// returned [`PendingAppend`] resolves after the fsync; appends queued from one task are
    /// written in the order they were queued. `pace` says whether the caller waits for this
    /// commit before it appends more ([`Pace::Prompt`]) or keeps appending ([`Pace::Patient`]).
    pub async fn begin_append(
        &self,
        client_id: &str,
        payload: Bytes,
        pace: Pace,
    ) -> Result<PendingAppend, SpoolError> {
        if client_id.len() > usize::from(u16::MAX) {
            return Err(SpoolError::ClientIdTooLong);
        }
        let size = Self::record_size(client_id, &payload);
        self.reserve(size).await?;
        let (reply, rx) = oneshot::channel();
        let cmd = Cmd::Append {
            client_id: client_id.to_owned(),
            payload,
            pace,
            reply,
        };
        if self.tx.send(cmd).await.is_err() {
            let mut st = self.shared.lock();
            st.used = st.used.saturating_sub(size);
            return Err(SpoolError::Closed);
        }
        Ok(PendingAppend { rx })
    }

    async fn reserve(&self, size: u64) -> Result<(), SpoolError> {
        let max = self.shared.max_bytes;
        if size + MAGIC.len() as u64 > max {
            return Err(SpoolError::TooLarge { size, max });
        }
        // Room for the record and, should it start a new segment, the segment's magic.
        let need = size + MAGIC.len() as u64;
        let mut waiting: Option<Waiting<'_>> = None;
        loop {
            // Fast path without registering for a wake-up.
            {
                let mut st = self.shared.lock();
                if st.used + need <= max {
                    st.used += size;
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
                    st.used += size;
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
    /// unknown or already released id does nothing.
    pub fn release(&self, id: u64) {
        let mut st = self.shared.lock();
        let Some((&first, seg)) = st.segments.range_mut(..=id).next_back() else {
            return;
        };
        if id >= seg.first_id + seg.count || !seg.clear_live(id - seg.first_id) {
            return;
        }
        let empty = seg.live_count == 0;
        let active = seg.active;
        st.live = st.live.saturating_sub(1);
        if empty && !active {
            self.shared.retire(&mut st, first);
        }
        self.shared.publish_gauges(&st);
        drop(st);
        if empty {
            // The writer deletes a retired segment, or retires the active one if its space is
            // wanted. A full queue means the writer is busy and maintains after its batch anyway;
            // a writer that is gone leaves the files for the next start (replayed, not lost).
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

/// Iterator over the unreleased records recovered on open. See [`Spool::replay`].
pub struct Replay {
    shared: Arc<Shared>,
    segments: std::vec::IntoIter<(u64, PathBuf)>,
    current: Option<(PathBuf, BufReader<File>)>,
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
                self.current = Some((path, r));
            }
            let Some((path, reader)) = self.current.as_mut() else {
                continue;
            };
            match read_record(reader) {
                Ok(Some(rec)) => {
                    let live = {
                        let st = self.shared.lock();
                        st.segments
                            .range(..=rec.id)
                            .next_back()
                            .is_some_and(|(_, s)| {
                                rec.id < s.first_id + s.count && s.is_live(rec.id - s.first_id)
                            })
                    };
                    if live {
                        return Some(Ok(rec));
                    }
                }
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

/// Reads one record; `Ok(None)` at a clean end of file.
fn read_record(r: &mut impl Read) -> Result<Option<SpoolRecord>, RecordError> {
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
    let clen = usize::from(u16::from_le_bytes([body[0], body[1]]));
    if 2 + clen > len {
        return Err(RecordError::Corrupt("client id overruns the record"));
    }
    let client_id = std::str::from_utf8(&body[2..2 + clen])
        .map_err(|_| RecordError::Corrupt("client id is not UTF-8"))?
        .to_owned();
    let payload = Bytes::from(body).slice(2 + clen..);
    Ok(Some(SpoolRecord {
        id: u64::from_le_bytes(id_bytes),
        client_id,
        payload,
    }))
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

fn encode_record(buf: &mut Vec<u8>, id: u64, client_id: &str, payload: &[u8]) {
    let len = 2 + client_id.len() + payload.len();
    let id_bytes = id.to_le_bytes();
    let clen = (client_id.len() as u16).to_le_bytes();
    let mut h = crc32fast::Hasher::new();
    h.update(&id_bytes);
    h.update(&clen);
    h.update(client_id.as_bytes());
    h.update(payload);
    buf.extend_from_slice(&(len as u32).to_le_bytes());
    buf.extend_from_slice(&h.finalize().to_le_bytes());
    buf.extend_from_slice(&id_bytes);
    buf.extend_from_slice(&clen);
    buf.extend_from_slice(client_id.as_bytes());
    buf.extend_from_slice(payload);
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
/// of all that. Written to a temporary name, fsynced, then renamed.
fn write_live_set(seg: &Segment) -> std::io::Result<()> {
    let words = seg.count.div_ceil(64) as usize;
    let mut buf = Vec::with_capacity(16 + 8 * words + 4);
    buf.extend_from_slice(LIVE_MAGIC);
    buf.extend_from_slice(&seg.count.to_le_bytes());
    for i in 0..words {
        buf.extend_from_slice(&seg.live.get(i).copied().unwrap_or(0).to_le_bytes());
    }
    let crc = crc32fast::hash(&buf);
    buf.extend_from_slice(&crc.to_le_bytes());
    let path = live_path(&seg.path);
    let mut tmp = path.clone().into_os_string();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let mut f = File::create(&tmp)?;
    f.write_all(&buf)?;
    f.sync_all()?;
    fs::rename(&tmp, &path)
}

/// Reads a live-set file for a segment of `count` records; `None` when it is missing, damaged, or
/// written for a different record count (then every record is replayed).
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

/// Scans the directory: every segment's good prefix, truncating and quarantining bad tails.
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
    let mut segments = Vec::new();
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
        next_id = next_id.max(first_id + scan.count);
        let mut seg = Segment {
            path,
            first_id,
            count: scan.count,
            live: Vec::new(),
            live_count: 0,
            bytes: scan.good_bytes,
            active: false,
            recovered: true,
        };
        // The live set of the last clean close, unless the segment was cut since.
        let live = if scan.bad_tail.is_none() {
            read_live_set(&live_path(&seg.path), scan.count)
        } else {
            None
        };
        match live {
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
        report.released += scan.count - seg.live_count;
        if seg.live_count == 0 {
            // Nothing to replay: remove it (a fresh, fully torn or fully released segment).
            let _ = fs::remove_file(&seg.path);
            let _ = fs::remove_file(live_path(&seg.path));
            continue;
        }
        report.records += seg.live_count;
        segments.push(seg);
    }
    sync_dir(dir);
    Ok((segments, next_id, report))
}

struct Scan {
    count: u64,
    good_bytes: u64,
    bad_tail: Option<(u64, &'static str)>,
}

fn scan_segment(path: &Path, first_id: u64) -> Result<Scan, SpoolError> {
    let file = File::open(path).map_err(io_err("opening a spool segment", path))?;
    let mut r = BufReader::with_capacity(256 * 1024, file);
    let mut magic = [0u8; 8];
    let n = read_full(&mut r, &mut magic).map_err(io_err("reading a spool segment", path))?;
    if n < MAGIC.len() || &magic != MAGIC {
        return Ok(Scan {
            count: 0,
            good_bytes: 0,
            bad_tail: (n > 0).then_some((0, "not a spool segment (bad magic)")),
        });
    }
    let mut offset = MAGIC.len() as u64;
    let mut count = 0u64;
    loop {
        match read_record(&mut r) {
            Ok(None) => {
                return Ok(Scan {
                    count,
                    good_bytes: offset,
                    bad_tail: None,
                });
            }
            Ok(Some(rec)) => {
                if rec.id != first_id + count {
                    return Ok(Scan {
                        count,
                        good_bytes: offset,
                        bad_tail: Some((offset, "record id out of sequence")),
                    });
                }
                offset += Spool::record_size(&rec.client_id, &rec.payload);
                count += 1;
            }
            Err(RecordError::Truncated) => {
                return Ok(Scan {
                    count,
                    good_bytes: offset,
                    bad_tail: Some((offset, "truncated record (torn write)")),
                });
            }
            Err(RecordError::Corrupt(why)) => {
                return Ok(Scan {
                    count,
                    good_bytes: offset,
                    bad_tail: Some((offset, why)),
                });
            }
            Err(RecordError::Io(e)) => return Err(io_err("reading a spool segment", path)(e)),
        }
    }
}

/// Copies the bytes from `offset` on into `quarantine/<name>.<offset>.bad`; best effort.
fn quarantine_tail(dir: &Path, path: &Path, offset: u64) -> Option<PathBuf> {
    let qdir = dir.join("quarantine");
    let name = path.file_name()?.to_string_lossy().into_owned();
    let target = qdir.join(format!("{name}.{offset}.bad"));
    let copy = || -> std::io::Result<()> {
        fs::create_dir_all(&qdir)?;
        let mut src = File::open(path)?;
        src.seek(SeekFrom::Start(offset))?;
        let mut dst = File::create(&target)?;
        std::io::copy(&mut src, &mut dst)?;
        dst.sync_all()
    };
    match copy() {
        Ok(()) => Some(target),
        Err(e) => {
            tracing::warn!(path = %target.display(), error = %e, "could not quarantine a corrupt spool tail");
            None
        }
    }
}

/// A queued append: client id, payload, where to send the id.
type BatchItem = (String, Bytes, oneshot::Sender<Result<u64, SpoolError>>);

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
    fn run(mut self, mut rx: mpsc::Receiver<Cmd>) {
        let mut batch = Vec::with_capacity(256);
        let mut buf = Vec::with_capacity(1024 * 1024);
        let mut pacer = CommitPacer::new(self.shared.group_commit);
        while let Some(cmd) = rx.blocking_recv() {
            let mut bytes = 0usize;
            let mut patient = true;
            let push = |cmd: Cmd, batch: &mut Vec<_>, bytes: &mut usize, patient: &mut bool| {
                if let Cmd::Append {
                    client_id,
                    payload,
                    pace,
                    reply,
                } = cmd
                {
                    *bytes += payload.len() + HEADER;
                    *patient &= pace == Pace::Patient;
                    batch.push((client_id, payload, reply));
                }
            };
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
            if drain().size > 0 {
                // Under load the batch takes what keeps arriving: fewer, larger fsyncs.
                pacer.gather(drain);
            }
            self.maintain();
            if !batch.is_empty() {
                self.write_batch(&mut batch, &mut buf);
            }
        }
        // Every clone is gone, so nothing more is appended or released: delete the segments with
        // nothing live left (the active one too) and leave the rest, durable, for the next start.
        // For every other one, record which records are still live, so the next start replays
        // only those.
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
            for seg in st.segments.values() {
                match write_live_set(seg) {
                    Ok(()) => wrote = true,
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

    /// Retires the active segment when all its records are released and its space is wanted,
    /// then deletes every retired segment's file.
    fn maintain(&mut self) {
        if let Some(active) = &self.active {
            let mut st = self.shared.lock();
            let waiting = st.waiting > 0;
            if let Some(seg) = st.segments.get_mut(&active.first_id) {
                let wanted = waiting || seg.bytes >= self.shared.segment_bytes / 4;
                if seg.live_count == 0 && seg.count > 0 && wanted {
                    seg.active = false;
                    let first = active.first_id;
                    self.active = None;
                    self.shared.retire(&mut st, first);
                }
            }
        }
        self.shared.bury();
    }

    fn open_segment(&mut self) -> Result<(), SpoolError> {
        let first_id = self.next_id;
        let path = segment_path(&self.shared.dir, first_id);
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .open(&path)
            .map_err(io_err("creating a spool segment", &path))?;
        file.write_all(MAGIC)
            .map_err(io_err("writing a spool segment", &path))?;
        sync_dir(&self.shared.dir);
        let mut st = self.shared.lock();
        st.segments.insert(
            first_id,
            Segment {
                path: path.clone(),
                first_id,
                count: 0,
                live: Vec::new(),
                live_count: 0,
                bytes: MAGIC.len() as u64,
                active: true,
                recovered: false,
            },
        );
        st.used += MAGIC.len() as u64;
        st.disk += MAGIC.len() as u64;
        drop(st);
        self.active = Some(ActiveFile {
            first_id,
            file,
            path,
        });
        Ok(())
    }

    fn write_batch(&mut self, batch: &mut Vec<BatchItem>, buf: &mut Vec<u8>) {
        if self.active.is_none() {
            if let Err(e) = self.open_segment() {
                tracing::error!(error = %e, "cannot create a spool segment; appends fail");
                self.fail(batch, &e.to_string(), true);
                return;
            }
        }
        let Some(active) = self.active.as_mut() else {
            return;
        };
        buf.clear();
        let first = self.next_id;
        for (client_id, payload, _) in batch.iter() {
            encode_record(buf, self.next_id, client_id, payload);
            self.next_id += 1;
        }
        let n = self.next_id - first;
        let written = active
            .file
            .write_all(buf)
            .and_then(|()| active.file.sync_data());
        let mut st = self.shared.lock();
        match written {
            Ok(()) => {
                let seal = if let Some(seg) = st.segments.get_mut(&active.first_id) {
                    for i in 0..n {
                        seg.set_live(first - seg.first_id + i);
                    }
                    seg.count += n;
                    seg.bytes += buf.len() as u64;
                    seg.bytes >= self.shared.segment_bytes
                } else {
                    false
                };
                st.disk += buf.len() as u64;
                st.live += n;
                // Reserved sizes equal encoded sizes, so `used` already covers these bytes.
                self.shared.publish_gauges(&st);
                if seal {
                    if let Some(seg) = st.segments.get_mut(&active.first_id) {
                        seg.active = false;
                    }
                    let first_id = active.first_id;
                    let empty = st
                        .segments
                        .get(&first_id)
                        .is_some_and(|s| s.live_count == 0);
                    if empty {
                        self.shared.retire(&mut st, first_id);
                    }
                    self.active = None;
                }
                drop(st);
                for (i, (_, _, reply)) in batch.drain(..).enumerate() {
                    let _ = reply.send(Ok(first + i as u64));
                }
                self.shared.bury();
            }
            Err(e) => {
                let path = active.path.clone();
                tracing::error!(path = %path.display(), error = %e,
                    "spool write or fsync failed; the batch is not durable, starting a new segment");
                // The file may hold part of the batch: count the bytes as used by the segment (it is
                // deleted once its earlier records are released; recovery cuts the torn part).
                let len = buf.len() as u64;
                if let Some(seg) = st.segments.get_mut(&active.first_id) {
                    seg.bytes += len;
                    seg.active = false;
                    // Ids of the failed batch belong to no segment's range.
                    seg.count = first - seg.first_id;
                }
                st.disk += len;
                let first_id = active.first_id;
                if st
                    .segments
                    .get(&first_id)
                    .is_some_and(|s| s.live_count == 0)
                {
                    self.shared.retire(&mut st, first_id);
                }
                drop(st);
                self.active = None;
                // Their reserved bytes stay counted: they are part of the segment's file now.
                self.fail(batch, &e.to_string(), false);
                self.shared.bury();
            }
        }
    }

    fn fail(&self, batch: &mut Vec<BatchItem>, why: &str, unreserve: bool) {
        let mut st = self.shared.lock();
        for (client_id, payload, reply) in batch.drain(..) {
            if unreserve {
                st.used = st
                    .used
                    .saturating_sub(Spool::record_size(&client_id, &payload));
            }
            let _ = reply.send(Err(SpoolError::WriteFailed(why.to_owned())));
        }
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
            ids.push(s.append("c1", payload(i, 300)).await.unwrap());
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
        let id = s.append("c2", payload(9, 50)).await.unwrap();
        assert!(id > got.last().unwrap().id);
    }

    #[tokio::test]
    async fn concurrent_appends_are_group_committed() {
        let dir = tempfile::tempdir().unwrap();
        let (s, _) = open(&cfg(dir.path(), 1 << 30, 1 << 20));
        let mut pending = Vec::new();
        for i in 0..2000 {
            pending.push(
                s.begin_append("c", payload(i, 1000), Pace::Prompt)
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
            ids.push(s.append("c", payload(i, 500)).await.unwrap());
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
            ids.push(s.append("c", payload(i as usize, size)).await.unwrap());
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
        let c = cfg(dir.path(), 1 << 30, 1 << 20);
        fill_and_release(&c, 10, 100, |i| i < 5).await;
        // A crash leaves no live-set file: every record comes back.
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
        let c = cfg(dir.path(), 1 << 30, 1 << 20);
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
        // A crash now would leave the segment with the live set of the last close: a copy of the
        // directory is that crash. Everything live then comes back (and what was released since,
        // as duplicates); nothing is lost.
        let crashed = tempfile::tempdir().unwrap();
        for e in fs::read_dir(dir.path()).unwrap() {
            let e = e.unwrap();
            fs::copy(e.path(), crashed.path().join(e.file_name())).unwrap();
        }
        {
            let (c2, report) = open(&cfg(crashed.path(), 1 << 30, 1 << 20));
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
        let c = cfg(dir.path(), 1 << 30, 1 << 20);
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
            s.append("c", payload(i, 200)).await.unwrap();
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
        s.append("c", payload(99, 200)).await.unwrap();
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
            s.append("c", payload(i, 300)).await.unwrap();
        }
        drop(s);
        let segs = seg_files(dir.path());
        assert!(segs.len() >= 3);
        // Flip a byte in the middle of the first segment's third record's payload.
        let mut bytes = fs::read(&segs[0]).unwrap();
        let rec = HEADER + 2 + 1 + 300;
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
        let id = s.append("c", payload(0, 10)).await.unwrap();
        assert!(id >= 7);
    }

    #[tokio::test]
    async fn full_spool_blocks_until_space_frees() {
        let dir = tempfile::tempdir().unwrap();
        let size = Spool::record_size("c", &payload(0, 1000));
        // Room for about 10 records.
        let (s, _) = open(&cfg(dir.path(), size * 10 + 100, 4096));
        let mut ids = Vec::new();
        loop {
            match tokio::time::timeout(Duration::from_millis(200), s.append("c", payload(0, 1000)))
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
            tokio::spawn(async move { s.append("c", payload(1, 1000)).await })
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
        let size = Spool::record_size("c", &payload(0, 1000));
        let (s, _) = open(&cfg(dir.path(), size * 5 + 100, 1 << 20));
        let mut ids = Vec::new();
        for _ in 0..5 {
            ids.push(s.append("c", payload(0, 1000)).await.unwrap());
        }
        for id in ids {
            s.release(id);
        }
        for i in 0..20 {
            let id = tokio::time::timeout(Duration::from_secs(5), s.append("c", payload(i, 1000)))
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
        let err = s.append("c", payload(0, 5000)).await.unwrap_err();
        assert!(matches!(err, SpoolError::TooLarge { .. }), "{err}");
    }
}
