//! The records `tests/spool.rs` writes, shared with its child process (`tests/bin/spool_child.rs`),
//! which appends them until it is killed: the same spool settings and bodies on both sides.

use std::path::Path;

use bytes::Bytes;
use fondo_bridge::config::SpoolConfig;

/// A spool in `dir` with segments of `segment_bytes` and room for a GiB.
pub fn cfg(dir: &Path, segment_bytes: u64) -> SpoolConfig {
    SpoolConfig {
        enabled: true,
        dir: dir.to_path_buf(),
        max_bytes: 1 << 30,
        segment_bytes,
        ..SpoolConfig::default()
    }
}

/// Record `n`'s body: an event of about 1.2 KiB whose `/current/seq` is `n`.
pub fn body(n: u64) -> Bytes {
    let mut s = format!(
        "{{\"eventType\":\"order.update\",\"current\":{{\"id\":\"o{n}\",\"seq\":{n}}},\"pad\":\""
    );
    while s.len() < 1200 {
        s.push('p');
    }
    s.push_str("\"}");
    Bytes::from(s)
}

/// The occurrence id record `n` is spooled with (fixed width: every record has the same size).
pub fn occ(n: u64) -> String {
    format!("occ-{n:012}")
}
