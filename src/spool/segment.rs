//! A segment as the spool tracks it in memory (its id range and live bitmap), the names of its
//! files, and its `.live` file: the durable copy of the live bitmap.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

#[derive(Debug)]
pub(super) struct Segment {
    pub(super) path: PathBuf,
    pub(super) first_id: u64,
    /// Event records in the segment (ids `first_id .. first_id + count`).
    pub(super) count: u64,
    /// One bit per record: still live (not released).
    pub(super) live: Vec<u64>,
    pub(super) live_count: u64,
    /// Bytes of the file (magic and records).
    pub(super) bytes: u64,
    /// The writer appends to it.
    pub(super) active: bool,
    /// Found on open: its live records are what `replay` yields.
    pub(super) recovered: bool,
    /// Holds release records (which may name records of older segments).
    pub(super) has_releases: bool,
    /// Bumped by every release of one of its records.
    pub(super) released_gen: u64,
    /// `released_gen` when its `.live` file was last written: when they differ, some of its
    /// releases are only in release records (or not durable yet).
    pub(super) live_file_gen: u64,
}

impl Segment {
    pub(super) fn new(path: PathBuf, first_id: u64, count: u64, bytes: u64, active: bool) -> Self {
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

    pub(super) fn set_live(&mut self, idx: u64) {
        let (w, b) = ((idx / 64) as usize, idx % 64);
        if self.live.len() <= w {
            self.live.resize(w + 1, 0);
        }
        self.live[w] |= 1 << b;
        self.live_count += 1;
    }

    /// Clears a live bit; `false` when it was not set (already released, unknown id).
    pub(super) fn clear_live(&mut self, idx: u64) -> bool {
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

    pub(super) fn is_live(&self, idx: u64) -> bool {
        let (w, b) = ((idx / 64) as usize, idx % 64);
        self.live.get(w).is_some_and(|word| word & (1 << b) != 0)
    }

    pub(super) fn holds(&self, id: u64) -> bool {
        id >= self.first_id && id < self.first_id + self.count
    }
}

pub(super) fn segment_path(dir: &Path, first_id: u64) -> PathBuf {
    dir.join(format!("{first_id:020}.seg"))
}

/// A segment's live-set file: `<segment file name>.live`.
pub(super) const LIVE_SUFFIX: &str = ".live";
/// The magic at the start of a live-set file.
const LIVE_MAGIC: &[u8; 8] = b"FBLIVE01";

pub(super) fn live_path(segment: &Path) -> PathBuf {
    let mut name = segment.as_os_str().to_owned();
    name.push(LIVE_SUFFIX);
    PathBuf::from(name)
}

pub(super) fn word_bit(words: &[u64], idx: u64) -> bool {
    words
        .get((idx / 64) as usize)
        .is_some_and(|w| w & (1 << (idx % 64)) != 0)
}

/// Writes a segment's live set durably: `LIVE_MAGIC`, u64 LE record count, u64 LE words, CRC32 LE
/// of all that. Written to a temporary name, fsynced, then renamed (the caller syncs the directory).
pub(super) fn write_live_set(segment: &Path, count: u64, live: &[u64]) -> std::io::Result<()> {
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
pub(super) fn read_live_set(path: &Path, count: u64) -> Option<Vec<u64>> {
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

pub(super) fn sync_dir(dir: &Path) {
    // Makes a created or deleted file name durable; not supported everywhere, so best effort.
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}
