//! The iterator that yields, at start-up, the recovered records that are still live.

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::PathBuf;
use std::sync::Arc;

use super::format::{Format, Rec, RecordError, format_of, read_record};
use super::state::Shared;
use super::{SpoolError, SpoolRecord, io_err};

/// Iterator over the unreleased records recovered on open. See
/// [`Spool::replay`](super::Spool::replay).
pub struct Replay {
    pub(super) shared: Arc<Shared>,
    pub(super) segments: std::vec::IntoIter<(u64, PathBuf)>,
    pub(super) current: Option<(PathBuf, Format, BufReader<File>)>,
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
