//! Tests of the spool as a whole: appends, releases, closes, crashes (copies of the directory
//! taken while it is open) and damaged files, checked through what a reopened spool replays.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs::{self, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use super::format::{HEADER, MAGIC, MAGIC_LEN};
use super::segment::{live_path, segment_path};
use super::state::RELEASE_SLOT;
use super::{MAX_OCCURRENCE_ID, RecoveryReport, Spool, SpoolError};
use crate::config::SpoolConfig;
use crate::group_commit::Pace;
use crate::metrics::Metrics;

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
    while let Some(id) = append_unless_full(&s, "o", payload(0, 1000)).await {
        ids.push(id);
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
        let id = tokio::time::timeout(Duration::from_secs(5), s.append("c", "o", payload(i, 1000)))
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

/// Appends, or gives up (`None`) once the append waits for space that nothing is about to free:
/// the spool is full. Told by the spool's own state, not by a timeout, so neither a slow fsync
/// nor releases still being written on a loaded machine are taken for a full spool.
async fn append_unless_full(s: &Spool, occurrence: &str, payload: Bytes) -> Option<u64> {
    let append = s.append("c", occurrence, payload);
    tokio::pin!(append);
    loop {
        tokio::select! {
            r = &mut append => return Some(r.unwrap()),
            () = tokio::time::sleep(Duration::from_millis(2)) => {
                if s.waiting_for_space() > 0 && !s.shared.lock().freeing() {
                    return None;
                }
            }
        }
    }
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
async fn releases_of_an_idle_spool_become_durable_within_the_release_window() {
    // 0 ms commits at once when appends come, but releases wait the release window (1 s) for an
    // append to ride along with before they are committed on their own.
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
        // Within the window nothing is committed yet: a crash now replays the released records
        // too (duplicates, never a loss).
        tokio::time::sleep(Duration::from_millis(100)).await;
        let early = crash_copy(dir.path());
        let (_s1, report) = open(&cfg(early.path(), 1 << 30, 1 << 20));
        assert_eq!((report.records, report.released), (50, 0));
        // No more appends: the writer commits the releases on their own.
        tokio::time::sleep(Duration::from_millis(1300)).await;
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
        if round > 0 {
            // Right after the releases: this append may wait while they are written and their
            // segments deleted, but it must go through without any further release.
            let occurrence = occ(n);
            let first = s.append("c", &occurrence, payload(n, 1000));
            let id = tokio::time::timeout(Duration::from_secs(10), first)
                .await
                .unwrap_or_else(|_| panic!("round {round}: no room after the releases"))
                .unwrap();
            ids.push(id);
            n += 1;
        }
        while let Some(id) = append_unless_full(&s, &occ(n), payload(n, 1000)).await {
            ids.push(id);
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

#[tokio::test]
async fn background_appends_are_durable_when_they_resolve_and_not_before_their_commit() {
    let dir = tempfile::tempdir().unwrap();
    let c = cfg(dir.path(), 1 << 30, 1 << 20);
    let (s, _) = open(&c);
    let mut pending = Vec::new();
    for i in 0..20 {
        pending.push(
            s.begin_background_append("c", &occ(i), payload(i, 100))
                .await
                .unwrap(),
        );
    }
    // The batch waits for company (BACKGROUND, 50 ms): a crash right now finds none of it, which
    // is what a crash can lose of a published event the broker has not confirmed yet.
    let before = crash_copy(dir.path());
    let (_s0, report) = open(&cfg(before.path(), 1 << 30, 1 << 20));
    assert_eq!(report.records, 0);
    let mut ids = Vec::new();
    for p in pending {
        ids.push(p.wait().await.unwrap());
    }
    // Resolved means fsynced: a crash now replays every one, in order, with its occurrence id.
    let crashed = crash_copy(dir.path());
    let (s2, report) = open(&cfg(crashed.path(), 1 << 30, 1 << 20));
    assert_eq!(report.records, 20);
    let want: Vec<_> = (0..20)
        .map(|i| (ids[i], Some(occ(i)), payload(i, 100)))
        .collect();
    assert_eq!(replayed(&s2), want);
}
