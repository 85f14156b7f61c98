//! The writer thread: it owns the active segment, group-commits appends together with the queued
//! releases, keeps a batch whose write failed and writes it again, and on close leaves the
//! segments for the next start (see "Writing", "Failed writes" and "Releasing" in the
//! [`crate::spool`] docs).

use std::fs::{self, File};
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};

use super::format::{HEADER, MAGIC, MAGIC_LEN, encode_record, encode_releases};
use super::segment::{Segment, segment_path, sync_dir, write_live_set};
use super::state::{RELEASE_SLOT, Shared};
use super::{Spool, SpoolError, io_err};
use crate::group_commit::{CommitPacer, Gathered, Pace};

/// The most appends one group commit takes.
const MAX_BATCH_RECORDS: usize = 4096;
/// The most bytes one group commit writes.
const MAX_BATCH_BYTES: usize = 8 * 1024 * 1024;
/// Appends queued for the writer before `append` waits.
pub(super) const QUEUE: usize = 8192;

/// What a [`Spool`] handle asks of the writer thread.
pub(super) enum Cmd {
    /// Write an event record with the next group commit; answer with its id once it is fsynced.
    Append {
        client_id: String,
        occurrence_id: String,
        payload: Bytes,
        pace: Pace,
        /// Nobody waits for this commit ([`Spool::begin_background_append`]).
        background: bool,
        reply: oneshot::Sender<Result<u64, SpoolError>>,
    },
    /// Something was released: releases are queued for a release record, or a segment may be
    /// retired; or an append waits for space.
    Maintain,
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

/// Where a batch's bytes went: what the bookkeeping after its write needs.
struct Placed {
    /// The first id of the segment written to.
    segment: u64,
    /// The id of the batch's first event record.
    first: u64,
    /// Event records in the batch.
    records: u64,
    /// The segment's length before the write: where a failed write is cut off.
    len_before: u64,
    /// Bytes written: release records, then event records.
    bytes: u64,
    /// The batch starts with release records.
    has_releases: bool,
}

/// The segment the writer appends to.
struct ActiveFile {
    first_id: u64,
    file: File,
    path: PathBuf,
}

/// The writer thread's state: the active segment and the id the next event record takes.
pub(super) struct Writer {
    shared: Arc<Shared>,
    next_id: u64,
    active: Option<ActiveFile>,
}

impl Writer {
    /// A writer whose first segment will take `next_id`, the id after every recovered one.
    pub(super) fn new(shared: Arc<Shared>, next_id: u64) -> Self {
        Self {
            shared,
            next_id,
            active: None,
        }
    }

    /// The writer thread, until the last [`Spool`] clone is gone: wait for appends, gather a
    /// batch, retire and delete released segments, then write the batch with the releases due.
    pub(super) fn run(mut self, mut rx: mpsc::Receiver<Cmd>, rt: &tokio::runtime::Runtime) {
        let mut batch = Vec::with_capacity(256);
        let mut buf = Vec::with_capacity(1024 * 1024);
        let mut pacer = CommitPacer::new(self.shared.group_commit);
        // Set while a batch could not be written: it is kept and written again at `retry.at`.
        let mut retry: Option<Retry> = None;
        loop {
            match self.wait(&mut rx, rt, retry.as_ref()) {
                Woken::Cmd(cmd) => gather(cmd, &mut rx, &mut batch, &mut pacer, retry.is_some()),
                Woken::Due => {}
                Woken::Closed => break,
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
            let releases = self.releases_to_write(!batch.is_empty() || retry.is_some());
            if batch.is_empty() && releases.is_empty() {
                // A failed write of releases alone whose releases are all gone: nothing to retry.
                if retry.take().is_some() {
                    self.shared.lock().write_error = None;
                }
                continue;
            }
            let appends = batch.len();
            let written = self.write_batch(&mut batch, releases, &mut buf);
            self.record_outcome(written, appends, batch.len(), &mut retry);
        }
        self.fail_unwritten(&mut batch);
        self.leave_for_next_start();
    }

    /// Waits for the next command: while releases are queued, only until they are due; while a
    /// failed batch waits, only until its next attempt (its releases go with it); while records
    /// are live, at most one release window, to find releases queued meanwhile ([`Spool::release`]
    /// does not wake the writer for them: they ride along with the next append).
    fn wait(
        &self,
        rx: &mut mpsc::Receiver<Cmd>,
        rt: &tokio::runtime::Runtime,
        retry: Option<&Retry>,
    ) -> Woken {
        let due = match retry {
            Some(r) => Some(r.at),
            None => self.releases_due().or_else(|| {
                (self.shared.lock().live > 0).then(|| Instant::now() + self.shared.release_window)
            }),
        };
        match due {
            None => match rt.block_on(rx.recv()) {
                Some(cmd) => Woken::Cmd(cmd),
                None => Woken::Closed,
            },
            Some(due) => {
                let due = tokio::time::Instant::from_std(due);
                // The timer is made inside the runtime, which drives it.
                match rt.block_on(async { tokio::time::timeout_at(due, rx.recv()).await }) {
                    Ok(Some(cmd)) => Woken::Cmd(cmd),
                    Ok(None) => Woken::Closed,
                    Err(_) => Woken::Due,
                }
            }
        }
    }

    /// The queued releases to write now. They ride along with appends (or with the next attempt
    /// after a failed write), which `riding` says are written now; without appends they go once
    /// due.
    fn releases_to_write(&self, riding: bool) -> Vec<u64> {
        if riding || self.releases_due().is_some_and(|d| d <= Instant::now()) {
            self.take_releases()
        } else {
            Vec::new()
        }
    }

    /// Counts a write attempt of `appends` appends as progress and keeps the retry state and
    /// [`Spool::write_error`] up to date; `waiting` is how many appends a failed attempt kept.
    fn record_outcome(
        &self,
        written: Result<(), String>,
        appends: usize,
        waiting: usize,
        retry: &mut Option<Retry>,
    ) {
        match written {
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
                        appends_waiting = waiting,
                        "spool write failed; its appends are kept and written again, in order, before any later one");
                }
                self.shared.lock().write_error = Some(e);
            }
        }
    }

    /// Fails the appends of a batch still waiting to be written again when the spool closes.
    fn fail_unwritten(&self, batch: &mut Vec<BatchItem>) {
        if batch.is_empty() {
            return;
        }
        // Closed while writes failed: nothing of the batch is on disk (or it was cut off).
        tracing::error!(
            appends = batch.len(),
            "spool closed while its writes were failing; these appends are not durable"
        );
        self.fail(
            batch,
            "the spool closed while its writes were failing",
            true,
        );
    }

    /// Every clone is gone, so nothing more is appended or released: deletes the segments with
    /// nothing live left (the active one too) and leaves the rest, durable, for the next start.
    /// For every other one, records which records are still live, so the next start replays
    /// only those (queued releases included: they need no release record).
    fn leave_for_next_start(&mut self) {
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
        if let Some(a) = self.active.take()
            && self.next_id == a.first_id
        {
            self.next_id += 1;
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
        if self.active.is_none()
            && let Err(e) = self.open_segment()
        {
            self.requeue_releases(releases);
            return Err(e.to_string());
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
        let segment = active.first_id;
        let placed = Placed {
            segment,
            first,
            records: self.next_id - first,
            len_before: self
                .shared
                .lock()
                .segments
                .get(&segment)
                .map_or(MAGIC_LEN, |s| s.bytes),
            bytes: buf.len() as u64,
            has_releases: !releases.is_empty(),
        };
        let written = active
            .file
            .write_all(buf)
            .and_then(|()| active.file.sync_data());
        if let Err(e) = written {
            let path = active.path.clone();
            let torn = cut_failed_write(active, &placed);
            self.seal_after_failed_write(&placed, torn);
            self.requeue_releases(releases);
            self.shared.bury();
            return Err(format!("writing {}: {e}", path.display()));
        }
        // Reserved sizes equal encoded sizes, so `used` already covers the event records;
        // the release records are paid for by the slots of the ids in them.
        let slots = RELEASE_SLOT * releases.len() as u64;
        self.account_written(&placed, release_bytes, slots);
        // The spool writes again: say so before anyone whose append was written hears of it.
        self.shared.lock().write_error = None;
        for (i, (_, _, _, reply)) in batch.drain(..).enumerate() {
            let _ = reply.send(Ok(first + i as u64));
        }
        self.shared.bury();
        if slots > release_bytes {
            self.shared.space.notify_waiters();
        }
        Ok(())
    }

    /// Seals the segment of a failed write, `torn` bytes of which could not be cut off (after a
    /// failed fsync its cached pages cannot be trusted), so the next attempt starts a new one.
    fn seal_after_failed_write(&mut self, placed: &Placed, torn: u64) {
        let first_id = placed.segment;
        let mut st = self.shared.lock();
        if let Some(seg) = st.segments.get_mut(&first_id) {
            seg.bytes += torn;
            seg.active = false;
            // Ids of the failed batch belong to no segment's range.
            seg.count = placed.first - seg.first_id;
            // What was not cut may hold (part of) release records.
            seg.has_releases |= torn > 0 && placed.has_releases;
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
    }

    /// Counts a written batch: its records live in their segment, its bytes on disk, and the
    /// release `slots` spent on `release_bytes` of release records. Seals the segment once it
    /// reaches `segment_bytes`.
    fn account_written(&mut self, placed: &Placed, release_bytes: u64, slots: u64) {
        let first_id = placed.segment;
        let n = placed.records;
        let mut st = self.shared.lock();
        let seal = if let Some(seg) = st.segments.get_mut(&first_id) {
            for i in 0..n {
                seg.set_live(placed.first - seg.first_id + i);
            }
            seg.count += n;
            seg.bytes += placed.bytes;
            seg.has_releases |= placed.has_releases;
            seg.bytes >= self.shared.segment_bytes
        } else {
            false
        };
        st.disk += placed.bytes;
        st.live += n;
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

/// After a failed write or fsync the file may hold part of the batch. Cuts it off: a full disk
/// gets that space back, and a crash finds whole records only. Returns the bytes of the batch
/// left on disk: none, or all of them when the cut failed too.
fn cut_failed_write(active: &mut ActiveFile, placed: &Placed) -> u64 {
    let cut = active
        .file
        .set_len(placed.len_before)
        .and_then(|()| active.file.sync_data());
    match cut {
        Ok(()) => 0,
        Err(cut_err) => {
            tracing::warn!(path = %active.path.display(), error = %cut_err,
                "cannot cut a failed spool write off its segment; recovery cuts it after a restart");
            placed.bytes
        }
    }
}

/// What ended the writer's wait.
enum Woken {
    /// A command arrived.
    Cmd(Cmd),
    /// The deadline passed first: queued releases are due, or a failed batch's next attempt.
    Due,
    /// Every [`Spool`] clone is gone.
    Closed,
}

/// Takes `first` and whatever else is queued into `batch`, up to the batch limits. Under load
/// the batch takes what keeps arriving: fewer, larger fsyncs. Not while writes fail
/// (`retrying`): the failed batch waits for space, not for company.
fn gather(
    first: Cmd,
    rx: &mut mpsc::Receiver<Cmd>,
    batch: &mut Vec<BatchItem>,
    pacer: &mut CommitPacer,
    retrying: bool,
) {
    // Of the appends taken now, not of those a failed batch already holds.
    let mut bytes = 0usize;
    // Every append taken is patient; every one is a background append.
    let mut kind = (true, true);
    push(first, batch, &mut bytes, &mut kind);
    let background = std::cell::Cell::new(true);
    let mut drain = || {
        while batch.len() < MAX_BATCH_RECORDS && bytes < MAX_BATCH_BYTES {
            match rx.try_recv() {
                Ok(cmd) => push(cmd, batch, &mut bytes, &mut kind),
                Err(_) => break,
            }
        }
        background.set(kind.1);
        Gathered {
            size: batch.len(),
            full: batch.len() >= MAX_BATCH_RECORDS || bytes >= MAX_BATCH_BYTES,
            patient: kind.0,
        }
    };
    if drain().size > 0 && !retrying {
        if background.get() {
            pacer.gather_background(drain);
        } else {
            pacer.gather(drain);
        }
    }
}

/// Adds an append to `batch`, counting its bytes and whether every append taken is patient and
/// a background one (`kind`); [`Cmd::Maintain`] adds nothing.
fn push(cmd: Cmd, batch: &mut Vec<BatchItem>, bytes: &mut usize, kind: &mut (bool, bool)) {
    if let Cmd::Append {
        client_id,
        occurrence_id,
        payload,
        pace,
        background,
        reply,
    } = cmd
    {
        *bytes += payload.len() + HEADER;
        kind.0 &= pace == Pace::Patient || background;
        kind.1 &= background;
        batch.push((client_id, occurrence_id, payload, reply));
    }
}
