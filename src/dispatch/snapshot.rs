//! The webhook replay cache across a clean restart.
//!
//! On shutdown, after the drain, every remembered webhook delivery whose occurrence was delivered
//! is written to one JSON-lines file (private, written to a temporary file, fsynced and renamed
//! into place); on start the file is read back, and entries past the replay cache's time to live
//! are skipped. So a retry of a delivery the previous process delivered is recognised after a
//! rolling restart too. After a crash the file holds what the last clean shutdown saved (older
//! entries, still valid for their time); deliveries since then are forgotten and their retries
//! are published again: a duplicate, never a loss. Unpaired cross-source occurrences are not kept.

use std::io::Write as _;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};

/// One remembered delivery. Times are Unix milliseconds, so the file means the same whenever it
/// is read.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct Entry {
    /// The delivery id.
    pub d: String,
    /// The occurrence id.
    pub o: String,
    /// The content key of the delivery's body, 32 hex digits.
    pub k: String,
    /// When the delivery was first seen.
    pub seen_ms: u64,
    /// When its occurrence was delivered.
    pub delivered_ms: u64,
}

/// Converts between `Instant` and Unix milliseconds around one reading of both clocks.
pub(super) struct Clock {
    now: Instant,
    unix_ms: u64,
}

impl Clock {
    pub fn now() -> Self {
        Self {
            now: Instant::now(),
            unix_ms: SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
        }
    }

    pub fn to_unix_ms(&self, at: Instant) -> u64 {
        let ago = self.now.saturating_duration_since(at).as_millis() as u64;
        self.unix_ms.saturating_sub(ago)
    }

    /// `None` when the time lies so far back that this process's clock cannot express it.
    pub fn to_instant(&self, unix_ms: u64) -> Option<Instant> {
        let ago = Duration::from_millis(self.unix_ms.saturating_sub(unix_ms));
        self.now.checked_sub(ago)
    }
}

/// Writes `entries` to `path` atomically, readable by the owner only.
pub(super) fn write(path: &Path, entries: &[Entry]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let mut f = std::io::BufWriter::new(opts.open(&tmp)?);
    for e in entries {
        serde_json::to_writer(&mut f, e)?;
        f.write_all(b"\n")?;
    }
    let f = f
        .into_inner()
        .map_err(std::io::IntoInnerError::into_error)?;
    f.sync_data()?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent()
        && let Ok(d) = std::fs::File::open(dir)
    {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Reads the entries of `path`, oldest delivery first; lines that do not parse are skipped and
/// counted in the second value.
pub(super) fn read(path: &Path) -> std::io::Result<(Vec<Entry>, usize)> {
    let text = std::fs::read_to_string(path)?;
    let mut bad = 0;
    let mut out: Vec<Entry> = text
        .lines()
        .filter_map(|l| {
            let e = serde_json::from_str(l).ok();
            bad += usize::from(e.is_none());
            e
        })
        .collect();
    out.sort_by_key(|e| e.delivered_ms);
    Ok((out, bad))
}

pub(super) fn arc(s: String) -> Arc<str> {
    Arc::from(s)
}
