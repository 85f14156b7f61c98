//! What [`Spool::open`](super::Spool::open) does with the files it finds: scan each segment's
//! good prefix, cut and quarantine a bad tail, apply the release records and `.live` files, and
//! delete the segments with nothing live left (see "Recovery" in the [`crate::spool`] docs).

use std::fs::{self, File, OpenOptions};
use std::io::{BufReader, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use super::format::{MAGIC_LEN, Rec, RecordError, format_of, read_full, read_record};
use super::segment::{
    LIVE_SUFFIX, Segment, live_path, read_live_set, sync_dir, word_bit, write_live_set,
};
use super::{RecoveryReport, SpoolError, io_err};
use crate::metrics::{Metrics, SourceReasonLabels};

/// Scans the directory: every segment's good prefix, truncating and quarantining bad tails, then
/// applies the release records of all segments and deletes the segments with nothing live left.
/// Returns the kept segments, oldest first, the id the next segment takes, and the report.
pub(super) fn recover(
    dir: &Path,
    metrics: &Metrics,
) -> Result<(Vec<Segment>, u64, RecoveryReport), SpoolError> {
    let mut report = RecoveryReport::default();
    let found = list_segments(dir, &mut report)?;
    let mut next_id = 0u64;
    let mut segments: Vec<Segment> = Vec::new();
    let mut released = Vec::new();
    for (first_id, path) in found {
        report.segments += 1;
        let scan = scan_segment(&path, first_id)?;
        cut_bad_tail(dir, &path, &scan, metrics, &mut report)?;
        // A segment without event records still took its first id: no later one may reuse its name.
        next_id = next_id.max(first_id + scan.count.max(1));
        segments.push(load_segment(path, first_id, &scan));
        released.extend(scan.releases);
    }
    apply_releases(&mut segments, released);
    save_live_sets_of_kept(dir, &mut segments);
    let kept = delete_fully_released(segments, &mut report);
    sync_dir(dir);
    Ok((kept, next_id, report))
}

/// The segment files in `dir` by first id, sorted; counts the other files in `report` and
/// deletes `.live` files whose segment is gone.
fn list_segments(
    dir: &Path,
    report: &mut RecoveryReport,
) -> Result<Vec<(u64, PathBuf)>, SpoolError> {
    let mut found = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_err("listing the spool directory", dir))? {
        let entry = entry.map_err(io_err("listing the spool directory", dir))?;
        let path = entry.path();
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if let Some(seg_name) = name.strip_suffix(LIVE_SUFFIX) {
            // A live-set file whose segment is gone has no use; one with a segment is read later.
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
    Ok(found)
}

/// When the scan found a bad tail: counts it, copies it to `quarantine/`, logs it and cuts it
/// off the segment (fsynced).
fn cut_bad_tail(
    dir: &Path,
    path: &Path,
    scan: &Scan,
    metrics: &Metrics,
    report: &mut RecoveryReport,
) -> Result<(), SpoolError> {
    let Some((offset, why)) = scan.bad_tail else {
        return Ok(());
    };
    report.corrupt_segments += 1;
    let file_len = fs::metadata(path)
        .map_err(io_err("reading a spool segment", path))?
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
    let quarantined = quarantine_tail(dir, path, offset);
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
        .open(path)
        .map_err(io_err("truncating a spool segment", path))?;
    f.set_len(offset)
        .map_err(io_err("truncating a spool segment", path))?;
    f.sync_all()
        .map_err(io_err("truncating a spool segment", path))?;
    Ok(())
}

/// The scanned segment with its live set: the records its `.live` file shows live, or all of
/// them without a valid one (release records are applied later, across segments).
fn load_segment(path: PathBuf, first_id: u64, scan: &Scan) -> Segment {
    let mut seg = Segment::new(path, first_id, scan.count, scan.good_bytes, false);
    seg.has_releases = scan.has_releases;
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
    seg
}

/// Clears the live bits of the ids the release records name; `segments` is sorted by first id.
fn apply_releases(segments: &mut [Segment], released: Vec<u64>) {
    for id in released {
        let i = segments.partition_point(|s| s.first_id <= id);
        if let Some(seg) = i.checked_sub(1).and_then(|i| segments.get_mut(i))
            && seg.holds(id)
        {
            seg.clear_live(id - seg.first_id);
        }
    }
}

/// Segments with nothing live left are about to be deleted. Release records in them may be all
/// that remembers releases of kept segments: writes those segments' live sets first.
fn save_live_sets_of_kept(dir: &Path, segments: &mut [Segment]) {
    if !segments.iter().any(|s| s.live_count == 0 && s.has_releases) {
        return;
    }
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

/// Deletes the segments with nothing live left and counts the rest in `report`; returns the kept
/// ones.
fn delete_fully_released(segments: Vec<Segment>, report: &mut RecoveryReport) -> Vec<Segment> {
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
    kept
}

/// What scanning a segment found.
struct Scan {
    /// Event records in the good prefix.
    count: u64,
    /// Bytes of the good prefix, magic included.
    good_bytes: u64,
    /// Where the good prefix ends and why, when something follows it.
    bad_tail: Option<(u64, &'static str)>,
    /// Ids named by the release records of the good prefix.
    releases: Vec<u64>,
    /// The good prefix holds release records.
    has_releases: bool,
}

/// Reads a segment's records until the first that does not check out (or its end): the good
/// prefix, where it ends and why, and the ids its release records name.
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
