//! Reads a file sink's topic file back: what `dlq list`/`dlq replay` read dead letters with.

use std::path::Path;

use super::{FileRecord, topic_file};

/// The payloads of `topic`'s file under `dir` (none when it does not exist), and how many lines
/// were not records of this sink (each reported on stderr with its line number).
pub fn read(dir: &Path, topic: &str) -> Result<(Vec<Vec<u8>>, usize), String> {
    let path = topic_file(dir, topic);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };
    let mut payloads = Vec::new();
    let mut bad = 0;
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<FileRecord>(line) {
            Ok(r) => payloads.push(r.payload_bytes()),
            Err(e) => {
                eprintln!(
                    "warning: {}:{}: not a file-sink record: {e}",
                    path.display(),
                    i + 1
                );
                bad += 1;
            }
        }
    }
    Ok((payloads, bad))
}
